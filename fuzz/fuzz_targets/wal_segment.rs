//! Fuzz target `wal_segment`: arbitrary bytes through `corral::fuzzing::wal_segment` (what it checks is
//! documented there); its corpus is `fuzz/corpus/wal_segment/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::wal_segment(data));
