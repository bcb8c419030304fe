//! Fuzz target `config`: arbitrary bytes through `corral::fuzzing::config` (what it checks is
//! documented there); its corpus is `fuzz/corpus/config/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::config(data));
