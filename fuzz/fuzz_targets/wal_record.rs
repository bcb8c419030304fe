//! Fuzz target `wal_record`: arbitrary bytes through `corral::fuzzing::wal_record` (what it checks is
//! documented there); its corpus is `fuzz/corpus/wal_record/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::wal_record(data));
