//! Fuzz target `certificate`: arbitrary bytes through `corral::fuzzing::certificate` (what it checks is
//! documented there); its corpus is `fuzz/corpus/certificate/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::certificate(data));
