//! Fuzz target `csr`: certificate signing requests through `corral::fuzzing::csr`, signed by a
//! CA made once per process in a temporary directory; its corpus is `fuzz/corpus/csr/`.
#![no_main]

use std::sync::OnceLock;

/// libFuzzer calls the target once per input; the CA is made once.
static PKI: OnceLock<corral::pki::Pki> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let pki = PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("corral-fuzz-csr-{}", std::process::id()));
        corral::fuzzing::test_pki(&dir)
    });
    corral::fuzzing::csr(pki, data);
});
