//! Replays the committed fuzz corpus: every file of `fuzz/corpus/<target>/` goes through the
//! same entry point and checks as the `cargo fuzz` target of that name (`corral::fuzzing`), on
//! the stable toolchain, so CI replays the whole corpus on every run and an input that once
//! found a bug keeps testing its fix.

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs `f` on every file of the target's corpus; a failure names the file.
fn replay(target: &str, f: impl Fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("corpus file");
        // A failed check panics; the file is named, and the other files still run.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: failing inputs {failed:#?}");
    eprintln!("{target}: {} inputs replayed", files.len());
}

macro_rules! replay_targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name), corral::fuzzing::$name);
            }
        )*

        /// The targets replayed here are all of `corral::fuzzing::TARGETS`.
        const REPLAYED: &[&str] = &[$(stringify!($name)),*];
    };
}

replay_targets!(
    topic,
    telemetry,
    attributes,
    conditions,
    rpc,
    wal_record,
    wal_segment,
    codec,
    config,
    certificate,
);

#[test]
fn csr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = corral::fuzzing::test_pki(dir.path());
    replay("csr", |data| corral::fuzzing::csr(&pki, data));
}

#[test]
fn every_target_is_replayed_and_every_corpus_has_a_target() {
    let mut targets: Vec<&str> = corral::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
    let mut replayed = REPLAYED.to_vec();
    targets.sort();
    replayed.sort();
    assert_eq!(targets, replayed);
    let mut dirs: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"))
            .expect("fuzz/corpus")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
    dirs.sort();
    targets.push("csr");
    targets.sort();
    assert_eq!(dirs, targets, "one corpus directory per fuzz target");
    let mut fuzz_targets: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets"))
            .expect("fuzz/fuzz_targets")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .file_stem()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
    fuzz_targets.sort();
    assert_eq!(fuzz_targets, dirs, "one fuzz target per corpus directory");
}
