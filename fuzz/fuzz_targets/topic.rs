//! Fuzz target `topic`: arbitrary bytes through `corral::fuzzing::topic` (what it checks is
//! documented there); its corpus is `fuzz/corpus/topic/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::topic(data));
