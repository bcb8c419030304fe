//! Fuzz target `rpc`: arbitrary bytes through `corral::fuzzing::rpc` (what it checks is
//! documented there); its corpus is `fuzz/corpus/rpc/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::rpc(data));
