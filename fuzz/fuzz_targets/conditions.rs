//! Fuzz target `conditions`: arbitrary bytes through `corral::fuzzing::conditions` (what it checks is
//! documented there); its corpus is `fuzz/corpus/conditions/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::conditions(data));
