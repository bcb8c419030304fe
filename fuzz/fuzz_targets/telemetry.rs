//! Fuzz target `telemetry`: arbitrary bytes through `corral::fuzzing::telemetry` (what it checks is
//! documented there); its corpus is `fuzz/corpus/telemetry/`, replayed by `tests/it/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::telemetry(data));
