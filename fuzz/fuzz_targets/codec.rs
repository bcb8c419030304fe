//! Fuzz target `codec`: arbitrary bytes through `corral::fuzzing::codec` (what it checks is
//! documented there); its corpus is `fuzz/corpus/codec/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::codec(data));
