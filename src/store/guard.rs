//! Guards around sled that make the store refuse to lie: the files a failed start leaves behind,
//! free space, another process holding the store, and the integrity record `store.state`.
//!
//! sled alone cannot tell a damaged store from a good one: given a truncated or bit-flipped log
//! it recovers up to the damage and silently drops the rest, and given an empty directory it
//! makes a new store. So every flush Corral makes first bumps a *generation* counter inside the
//! store (`meta`), and `store.state` beside it records, atomically, the newest generation known
//! to be on disk, and whether the last stop was clean (with record counts per tree). On open:
//! - the store holds a generation ≥ the record: good; an unclean stop replays the WAL;
//! - the store holds less: flushed data is gone (damage), and Corral refuses to start;
//! - no store, but a record, a log or a PKI beside it: missing, refused too.
//!
//! The record never runs ahead of the store: it is written only after the flush that made its
//! generation durable.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Version of the `store.state` format.
const FORMAT: u32 = 1;

/// What `store.state` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreState {
    pub format: u32,
    /// The store's flush generation known to be on disk when this was written.
    pub generation: u64,
    /// True only when written by a clean stop; false from the moment a server opens the store.
    pub clean: bool,
    /// Records per tree at the clean stop (empty otherwise).
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    /// When this was written, in Unix milliseconds.
    pub written_at: i64,
}

impl StoreState {
    pub fn new(generation: u64, clean: bool, counts: BTreeMap<String, u64>) -> Self {
        Self {
            format: FORMAT,
            generation,
            clean,
            counts,
            written_at: crate::model::now_ms(),
        }
    }
}

/// `store.state` beside the store directory.
pub fn state_path(store: &Path) -> PathBuf {
    store.with_extension("state")
}

/// The write-ahead log directory beside the store directory.
pub fn wal_path(store: &Path) -> PathBuf {
    store.with_extension("wal")
}

/// Reads the integrity record; `Ok(None)` when there is none (a new store, or one written by a
/// Corral that did not keep it yet). A record that exists but cannot be read is damage.
pub fn read_state(store: &Path) -> Result<Option<StoreState>, String> {
    let path = state_path(store);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<StoreState>(&bytes)
            .map(Some)
            .map_err(|e| format!("{} cannot be read ({e})", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{} cannot be read ({e})", path.display())),
    }
}

/// Writes the record atomically: a temporary file, synced, renamed over the old one, and the
/// directory synced, so a crash leaves either the old record or the new one, never a torn one.
pub fn write_state(store: &Path, state: &StoreState) -> std::io::Result<()> {
    let path = state_path(store);
    let tmp = path.with_extension("state.tmp");
    let body = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Makes what sled's `flush` wrote durable. sled writes its log file with `sync_file_range`,
/// which makes neither newly allocated blocks nor the file size durable and never flushes the
/// disk's write cache, and writes blob files (values too large for its log) with no sync at
/// all: after a power cut, a "flushed" store can come back empty, or older than `store.state`
/// says (which Corral then rightly calls damaged), and a checkpoint that deleted the WAL after
/// such a flush loses acknowledged data. So after every flush: each blob not yet synced (first,
/// so that this sync never makes a pointer durable before its blob), the blob directory, the
/// log file `db` and the store directory.
/// `synced` holds the names of blobs already synced; it becomes the names present now.
pub fn sync_sled(store: &Path, synced: &mut HashSet<OsString>) -> std::io::Result<()> {
    let blobs = store.join("blobs");
    match std::fs::read_dir(&blobs) {
        Ok(entries) => {
            let mut present = HashSet::new();
            for e in entries {
                let e = e?;
                let name = e.file_name();
                if !synced.contains(&name) {
                    match File::open(e.path()) {
                        Ok(f) => f.sync_all()?,
                        // sled removed it since the listing: nothing to make durable.
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(err) => return Err(err),
                    }
                }
                present.insert(name);
            }
            File::open(&blobs)?.sync_all()?;
            *synced = present;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    File::open(store.join("db"))?.sync_all()?;
    File::open(store)?.sync_all()
}

/// Bytes free for an unprivileged writer on the file system that holds `path` (or its nearest
/// existing ancestor, before the store exists).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            return fs2::available_space(p);
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return fs2::available_space(Path::new(".")),
        }
    }
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Checks made before sled touches anything: no other process holds the store, enough space to
/// open it, and no snapshot file a failed start left half-written.
pub fn preflight(store: &Path, min_free_to_start: u64) -> Result<(), StoreError> {
    let db_file = store.join("db");
    if db_file.exists() {
        // sled locks `db` for as long as it is open; probing that lock tells a second server on
        // the same directory apart before anything below deletes files it may be writing.
        use fs2::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_file)
            .map_err(|e| StoreError::Open {
                path: store.to_path_buf(),
                source: sled::Error::Io(e),
            })?;
        // sled's IO threads let go of the file a moment after its last handle is dropped (a
        // restore that loads a store and then opens it, a restart in the same process): wait a
        // little before calling it a second server, which holds the lock for as long as it runs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while f.try_lock_exclusive().is_err() {
            if std::time::Instant::now() >= deadline {
                return Err(StoreError::InUse {
                    path: store.to_path_buf(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = FileExt::unlock(&f);
    }
    // sled writes a snapshot to `snap.<lsn>.generating` and renames it when complete. A start
    // that failed midway (a full disk) leaves the partial file, and every later start then
    // fails on it. It is never the only copy of anything: the log it summarises is still there.
    if let Ok(entries) = std::fs::read_dir(store) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snap.") && name.ends_with(".generating") {
                tracing::warn!(file = %e.path().display(), "removing a snapshot file an interrupted start left half-written");
                std::fs::remove_file(e.path()).map_err(|err| StoreError::Open {
                    path: store.to_path_buf(),
                    source: sled::Error::Io(err),
                })?;
            }
        }
    }
    let free = free_bytes(store).map_err(|e| StoreError::Open {
        path: store.to_path_buf(),
        source: sled::Error::Io(e),
    })?;
    if free < min_free_to_start {
        return Err(StoreError::DiskLow {
            path: store.to_path_buf(),
            free_mib: mib(free),
            need_mib: mib(min_free_to_start),
        });
    }
    Ok(())
}

/// What is on disk where the store should be.
#[derive(Debug, PartialEq, Eq)]
pub enum Presence {
    /// Nothing: a first start.
    New,
    /// A sled store.
    Existing,
    /// No usable store, but traces of one: the reason.
    Missing(String),
}

/// Tells a first start from a store that has gone missing.
pub fn presence(store: &Path) -> Presence {
    let conf = store.join("conf").exists();
    let db = std::fs::metadata(store.join("db")).map(|m| m.len()).ok();
    if conf {
        return match db {
            Some(n) if n > 0 => Presence::Existing,
            Some(_) => Presence::Missing(format!("{} is empty", store.join("db").display())),
            None => Presence::Missing(format!("{} is missing", store.join("db").display())),
        };
    }
    let state = state_path(store);
    let wal = wal_path(store);
    if state.exists() {
        return Presence::Missing(format!(
            "there is no store at {}, but its integrity record {} is there",
            store.display(),
            state.display()
        ));
    }
    if wal.exists() {
        return Presence::Missing(format!(
            "there is no store at {}, but its write-ahead log {} is there",
            store.display(),
            wal.display()
        ));
    }
    Presence::New
}

/// Compares what the store holds with its integrity record. `Err` names the damage.
pub fn verify(
    state: &StoreState,
    generation: u64,
    counts: impl FnOnce() -> BTreeMap<String, u64>,
) -> Result<Verdict, String> {
    if generation < state.generation {
        return Err(format!(
            "the store holds flush generation {generation}, but generation {} was on disk before: \
             data written to disk is missing (a truncated, damaged or replaced store file)",
            state.generation
        ));
    }
    if !state.clean {
        return Ok(Verdict::Recovering);
    }
    if generation > state.generation {
        // Written after the clean record: nothing lost, but not the state the record describes.
        return Ok(Verdict::Recovering);
    }
    let now = counts();
    let mut diffs = Vec::new();
    for (tree, want) in &state.counts {
        let got = now.get(tree).copied().unwrap_or(0);
        if got != *want {
            diffs.push(format!("{tree}: {got} records, {want} at the clean stop"));
        }
    }
    if diffs.is_empty() {
        Ok(Verdict::Clean)
    } else {
        Err(format!(
            "the store does not hold what it held at its clean stop ({})",
            diffs.join("; ")
        ))
    }
}

/// How the last run ended, as far as the store can tell.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// An unclean stop (a crash, `kill -9`, power loss): the WAL replays what sled had not yet.
    Recovering,
}

/// Moves damaged files aside (never deletes them) into `damaged-<time>/` in the data directory,
/// for `--accept-data-loss`. Returns the directory.
pub fn set_aside(store: &Path, what: &[&Path]) -> std::io::Result<PathBuf> {
    let parent = store.parent().unwrap_or(Path::new("."));
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let dir = parent.join(format!("damaged-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    for p in what {
        if p.exists()
            && let Some(name) = p.file_name()
        {
            std::fs::rename(p, dir.join(name))?;
        }
    }
    Ok(dir)
}

/// Copies files aside (the WAL segments salvage reads past) into `damaged-<time>/`.
pub fn copy_aside(store: &Path, files: &[PathBuf]) -> std::io::Result<PathBuf> {
    let parent = store.parent().unwrap_or(Path::new("."));
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let dir = parent.join(format!("damaged-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    for p in files {
        if let Some(name) = p.file_name() {
            std::fs::copy(p, dir.join(name))?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        assert_eq!(read_state(&store), Ok(None));
        let s = StoreState::new(7, true, BTreeMap::from([("devices".into(), 3)]));
        write_state(&store, &s).expect("write");
        assert_eq!(read_state(&store), Ok(Some(s)));
        assert!(!dir.path().join("store.state.tmp").exists());
        std::fs::write(state_path(&store), b"{\"format\":1,").expect("tear");
        assert!(read_state(&store).is_err(), "a torn record is damage");
    }

    #[test]
    fn verdicts() {
        let counts = || BTreeMap::from([("devices".to_string(), 3)]);
        let clean = StoreState::new(7, true, counts());
        assert_eq!(verify(&clean, 7, counts), Ok(Verdict::Clean));
        assert_eq!(verify(&clean, 9, counts), Ok(Verdict::Recovering));
        assert!(verify(&clean, 6, counts).is_err(), "older than the record");
        assert!(
            verify(&clean, 7, || BTreeMap::from([("devices".to_string(), 2)])).is_err(),
            "a tree lost records"
        );
        let unclean = StoreState::new(7, false, BTreeMap::new());
        assert_eq!(verify(&unclean, 8, counts), Ok(Verdict::Recovering));
        assert!(verify(&unclean, 0, counts).is_err());
    }

    #[test]
    fn presence_tells_new_from_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        assert_eq!(presence(&store), Presence::New);
        std::fs::create_dir_all(wal_path(&store)).expect("wal");
        assert!(matches!(presence(&store), Presence::Missing(_)));
        std::fs::create_dir_all(&store).expect("store");
        std::fs::write(store.join("conf"), b"x").expect("conf");
        std::fs::write(store.join("db"), b"").expect("db");
        assert!(matches!(presence(&store), Presence::Missing(m) if m.contains("empty")));
        std::fs::write(store.join("db"), b"x").expect("db");
        assert_eq!(presence(&store), Presence::Existing);
    }

    #[test]
    fn preflight_removes_half_written_snapshots_and_checks_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).expect("store");
        std::fs::write(store.join("snap.00000000001A2B3C.generating"), b"").expect("snap");
        std::fs::write(store.join("snap.00000000001A2B3C"), b"keep").expect("snap");
        preflight(&store, 0).expect("preflight");
        assert!(!store.join("snap.00000000001A2B3C.generating").exists());
        assert!(store.join("snap.00000000001A2B3C").exists());
        let err = preflight(&store, u64::MAX).expect_err("no disk is that big");
        assert!(matches!(err, StoreError::DiskLow { .. }), "{err}");
    }
}
