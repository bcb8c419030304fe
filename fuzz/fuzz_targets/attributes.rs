//! Fuzz target `attributes`: arbitrary bytes through `corral::fuzzing::attributes` (what it checks is
//! documented there); its corpus is `fuzz/corpus/attributes/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::attributes(data));
