//! Backups of the store: one file holding a consistent point-in-time copy of every tree, the
//! write-ahead log needed to reach that point, and the files the caller adds (the PKI, the
//! configuration); its verification; and restoring it into a new data directory.
//!
//! **Consistency while devices publish.** sled has no snapshots, so the trees are read while
//! writes go on (a *fuzzy* copy, each record whole). The log is pinned before the copy starts
//! and closed after it ends; the file carries every log segment written in between. Restoring
//! loads the trees, then replays those segments exactly as a start after a crash does, so every
//! device write the copy saw half of is completed, and the result is the store as it was when
//! the copy ended. Everything acknowledged before the backup began is in it. Registry records
//! (devices, credentials, users) are copied record by record: one changed by an API call
//! while the copy runs can be copied before or after that call.
//!
//! **Format.** A tar archive (`tar tvf` lists it) of:
//! - `corral-backup/store/<tree in hex>.<n>.kv`: the records of one tree, in chunks of at most
//!   `CHUNK` bytes, each record `key len u32 ‖ key ‖ value len u32 ‖ value`;
//! - `corral-backup/store.wal/<segment>.wal`: log segments, byte for byte;
//! - `corral-backup/files/<path>`: the caller's files (`pki/ca.pem`, `corral.toml`, ...);
//! - `corral-backup/manifest.json`, last: format version, schema version, times, and per tree
//!   and file its record count or size and SHA-256. A file without it did not finish.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Db, Store, StoreError, StoreOptions};

const ROOT: &str = "corral-backup";
const FORMAT: &str = "corral-backup";
const VERSION: u32 = 1;
/// Largest tar entry the writer buffers: a tree is split into entries of this size.
const CHUNK: usize = 4 << 20;

/// What a backup holds, written last into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub corral_version: String,
    pub schema_version: u32,
    /// When the copy started and ended (Unix ms).
    pub started_at: i64,
    pub finished_at: i64,
    /// Tree name (hex) → what was copied of it.
    pub trees: BTreeMap<String, Part>,
    /// Log segment name → its size and digest.
    pub wal: BTreeMap<String, Part>,
    /// Caller's file (relative path) → its size and digest.
    pub files: BTreeMap<String, Part>,
}

/// One tree or file in a backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Tree name, readable (trees only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Records (trees) copied.
    #[serde(default)]
    pub records: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl Manifest {
    /// Records in the tree called `name`.
    pub fn records(&self, name: &str) -> u64 {
        self.trees
            .get(&hex(name.as_bytes()))
            .map_or(0, |p| p.records)
    }
}

/// Backup failures; `Damaged` names what does not check out.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the backup file is damaged or incomplete: {0}")]
    Damaged(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes tar entries, hashing logical files across their chunks.
struct Writer<W: Write> {
    tar: tar::Builder<W>,
    manifest: Manifest,
}

impl<W: Write> Writer<W> {
    fn entry(&mut self, path: &str, data: &[u8]) -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime((crate::model::now_ms() / 1000).max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        self.tar.append_data(&mut h, format!("{ROOT}/{path}"), data)
    }

    /// Streams the file at `path` into the backup as `dir/name`, hashing it on the way; `None`
    /// when it is gone (deleted since it was listed).
    fn stream(&mut self, dir: &str, name: &str, path: &Path) -> std::io::Result<Option<Part>> {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let mut h = tar::Header::new_gnu();
        h.set_size(len);
        h.set_mode(0o600);
        h.set_mtime((crate::model::now_ms() / 1000).max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        let mut reader = Hashing {
            inner: f.take(len),
            sha: Sha256::new(),
        };
        self.tar
            .append_data(&mut h, format!("{ROOT}/{dir}/{name}"), &mut reader)?;
        Ok(Some(Part {
            bytes: len,
            sha256: hex(&reader.sha.finalize()),
            ..Default::default()
        }))
    }

    fn tree(&mut self, name: &[u8], tree: &sled::Tree) -> Result<(), BackupError> {
        let hexname = hex(name);
        let mut part = Part {
            name: String::from_utf8_lossy(name).into_owned(),
            ..Default::default()
        };
        let mut sha = Sha256::new();
        let mut buf = Vec::with_capacity(CHUNK);
        let mut chunk = 0;
        for kv in tree.iter() {
            let (k, v) = kv.map_err(StoreError::from)?;
            buf.extend_from_slice(&(k.len() as u32).to_be_bytes());
            buf.extend_from_slice(&k);
            buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
            buf.extend_from_slice(&v);
            part.records += 1;
            if buf.len() >= CHUNK {
                sha.update(&buf);
                part.bytes += buf.len() as u64;
                self.entry(&format!("store/{hexname}.{chunk:06}.kv"), &buf)?;
                chunk += 1;
                buf.clear();
            }
        }
        if !buf.is_empty() || chunk == 0 {
            sha.update(&buf);
            part.bytes += buf.len() as u64;
            self.entry(&format!("store/{hexname}.{chunk:06}.kv"), &buf)?;
        }
        part.sha256 = hex(&sha.finalize());
        self.manifest.trees.insert(hexname, part);
        Ok(())
    }

    fn file(&mut self, dir: &str, name: &str, data: &[u8]) -> std::io::Result<Part> {
        self.entry(&format!("{dir}/{name}"), data)?;
        Ok(Part {
            bytes: data.len() as u64,
            sha256: hex(&Sha256::digest(data)),
            ..Default::default()
        })
    }
}

/// Files to carry in a backup besides the store.
#[derive(Debug, Clone)]
pub enum Extra {
    /// A small file (a key, the configuration): its path inside the backup and its content.
    Bytes(String, Vec<u8>),
    /// Every regular file directly in a directory (package files), under `<prefix>/`, listed
    /// when the backup writes it, after the store's records (so a file a copied record names is
    /// there: files are in place before their records commit), and streamed from disk.
    Dir(String, PathBuf),
}

/// Reads through `inner`, hashing what passes.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes a backup of `db` to `out`: every tree, then `segments` (log files, read after the
/// trees), then `extras`, then the manifest. Blocking.
fn write(
    db: &Db,
    segments: impl FnOnce() -> Result<Vec<PathBuf>, StoreError>,
    extras: &[Extra],
    out: impl Write,
) -> Result<Manifest, BackupError> {
    let mut w = Writer {
        tar: tar::Builder::new(out),
        manifest: Manifest {
            format: FORMAT.into(),
            version: VERSION,
            corral_version: env!("CARGO_PKG_VERSION").into(),
            schema_version: db.schema_version()?,
            started_at: crate::model::now_ms(),
            finished_at: 0,
            trees: BTreeMap::new(),
            wal: BTreeMap::new(),
            files: BTreeMap::new(),
        },
    };
    for name in db.db.tree_names() {
        let tree = db.db.open_tree(&name).map_err(StoreError::from)?;
        w.tree(&name, &tree)?;
    }
    for path in segments()? {
        let data = std::fs::read(&path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let part = w.file("store.wal", &name, &data)?;
        w.manifest.wal.insert(name, part);
    }
    for extra in extras {
        match extra {
            Extra::Bytes(name, data) => {
                let part = w.file("files", name, data)?;
                w.manifest.files.insert(name.clone(), part);
            }
            Extra::Dir(prefix, dir) => {
                for (name, path) in dir_files(dir)? {
                    let name = format!("{prefix}/{name}");
                    if let Some(part) = w.stream("files", &name, &path)? {
                        w.manifest.files.insert(name, part);
                    }
                }
            }
        }
    }
    w.manifest.finished_at = crate::model::now_ms();
    let manifest = serde_json::to_vec_pretty(&w.manifest).map_err(std::io::Error::other)?;
    w.entry("manifest.json", &manifest)?;
    let mut out = w.tar.into_inner()?;
    out.flush()?;
    Ok(w.manifest)
}

impl Store {
    /// Writes an online backup to `out` while the store keeps taking writes: the log is pinned
    /// first, the trees copied, then the log segments written since are added (see the module
    /// header). Runs the copy on a blocking thread.
    pub async fn backup(
        &self,
        extras: Vec<Extra>,
        out: impl Write + Send + 'static,
    ) -> Result<Manifest, BackupError> {
        let (pin, first) = self.pipeline.pin().await?;
        let store = self.clone();
        let rt = tokio::runtime::Handle::current();
        let res = tokio::task::spawn_blocking(move || {
            let wal_dir = super::guard::wal_path(store.path());
            let segments = || {
                // Closes the segment being written, so every one before it is complete.
                let end = rt.block_on(store.pipeline.rotate())?;
                super::wal::Wal::segment_files(&wal_dir, first, end).map_err(|e| StoreError::Wal {
                    path: wal_dir.clone(),
                    source: e,
                })
            };
            write(&store.db, segments, &extras, out)
        })
        .await;
        self.pipeline.unpin(pin);
        res.map_err(|e| BackupError::Io(std::io::Error::other(e)))?
    }
}

impl Db {
    /// Backup before a schema migration, of a store nothing else writes to yet: the trees and
    /// the log as they are.
    fn backup_offline(&self, extras: &[Extra], out: impl Write) -> Result<Manifest, BackupError> {
        let wal = super::guard::wal_path(&self.path);
        write(
            self,
            || {
                if !wal.exists() {
                    return Ok(Vec::new());
                }
                super::wal::Wal::segment_files(&wal, 0, u64::MAX).map_err(|e| StoreError::Wal {
                    path: wal.clone(),
                    source: e,
                })
            },
            extras,
            out,
        )
    }
}

/// Writes the snapshot taken before a schema migration into `<data dir>/backups`, with the
/// data directory's PKI, so a failed upgrade can be rolled back with `corral restore`.
pub(super) fn before_migration(db: &Db, from: u32) -> Result<PathBuf, BackupError> {
    let data_dir = db.path.parent().unwrap_or(Path::new("."));
    let dir = data_dir.join("backups");
    std::fs::create_dir_all(&dir)?;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let path = dir.join(format!(
        "pre-migration-v{from}-to-v{}-{stamp}.backup.tar",
        super::SCHEMA_VERSION
    ));
    let tmp = path.with_extension("partial");
    let extras = data_dir_files(data_dir)?;
    let file = std::fs::File::create(&tmp)?;
    db.backup_offline(&extras, std::io::BufWriter::new(&file))?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The files of a data directory a backup carries besides the store: the PKI.
pub fn data_dir_files(data_dir: &Path) -> std::io::Result<Vec<Extra>> {
    let mut out = Vec::new();
    for (n, path) in dir_files(&data_dir.join("pki"))? {
        out.push(Extra::Bytes(format!("pki/{n}"), std::fs::read(path)?));
    }
    Ok(out)
}

/// The regular files directly in `dir` (none when it does not exist), by name.
fn dir_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    Ok(out)
}

/// What reading a backup found.
#[derive(Debug)]
pub struct Report {
    pub manifest: Manifest,
    /// Devices in the restored store, once opened (restores only).
    pub devices: Option<u64>,
}

/// Reads a backup through, checking every digest and count against its manifest, and, with
/// `into`, restores it: trees into a new sled store at `into/store`, log segments into
/// `into/store.wal`, files under `into/`. Blocking.
fn read(file: &Path, into: Option<&Path>) -> Result<Report, BackupError> {
    let damaged = |m: String| BackupError::Damaged(m);
    let f = std::fs::File::open(file)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(f));
    let mut loader = match into {
        Some(dir) => Some(Loader::create(&dir.join("store"))?),
        None => None,
    };
    // Logical file → (bytes, running digest, records).
    let mut seen: BTreeMap<String, (u64, Sha256, u64)> = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    let entries = archive
        .entries()
        .map_err(|e| damaged(format!("not a backup archive ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(format!("unreadable entry ({e})")))?;
        let path = entry
            .path()
            .map_err(|e| damaged(format!("bad entry name ({e})")))?
            .to_string_lossy()
            .into_owned();
        let Some(rel) = path.strip_prefix(&format!("{ROOT}/")).map(str::to_string) else {
            return Err(damaged(format!("unexpected entry {path}")));
        };
        if manifest.is_some() {
            return Err(damaged(format!("{rel} follows the manifest")));
        }
        // Files and log segments are copied through, never held whole: a package file may be
        // hundreds of MiB.
        if rel.starts_with("files/") || rel.starts_with("store.wal/") {
            let mut reader = Hashing {
                inner: &mut entry,
                sha: Sha256::new(),
            };
            let copied = match into {
                Some(dir) => {
                    let target = safe_target(&rel)
                        .map(|t| dir.join(t))
                        .ok_or_else(|| damaged(format!("unexpected entry {rel}")))?;
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    copy_private(&target, &mut reader)
                }
                None => std::io::copy(&mut reader, &mut std::io::sink()),
            }
            .map_err(|e| damaged(format!("{rel} cannot be read ({e})")))?;
            if seen.contains_key(&rel) {
                return Err(damaged(format!("{rel} appears twice")));
            }
            seen.insert(rel, (copied, reader.sha, 0));
            continue;
        }
        let mut data = Vec::with_capacity(entry.size().min(CHUNK as u64 * 2) as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| damaged(format!("{rel} cannot be read ({e})")))?;
        if rel == "manifest.json" {
            manifest = Some(
                serde_json::from_slice(&data)
                    .map_err(|e| damaged(format!("the manifest cannot be read ({e})")))?,
            );
            continue;
        }
        // Logical name: trees are split into numbered chunks.
        let (logical, records) = if let Some(kv) = rel.strip_prefix("store/") {
            let tree = kv.split('.').next().unwrap_or_default().to_string();
            let name = unhex(&tree).ok_or_else(|| damaged(format!("bad tree entry {rel}")))?;
            let n = each_record(&data, |k, v| match &mut loader {
                Some(l) => l.insert(&name, k, v),
                None => Ok(()),
            })
            .map_err(|e| match e {
                BackupError::Damaged(m) => damaged(format!("{rel}: {m}")),
                e => e,
            })?;
            (format!("tree:{tree}"), n)
        } else {
            return Err(damaged(format!("unexpected entry {rel}")));
        };
        let e = seen.entry(logical).or_insert_with(|| (0, Sha256::new(), 0));
        e.0 += data.len() as u64;
        e.1.update(&data);
        e.2 += records;
    }
    let manifest = manifest.ok_or_else(|| {
        damaged("it has no manifest: the backup did not finish, or the file was cut short".into())
    })?;
    if manifest.format != FORMAT || manifest.version > VERSION {
        return Err(BackupError::Refused(format!(
            "this file is a {} version {} backup; this corral reads {FORMAT} version {VERSION}",
            manifest.format, manifest.version
        )));
    }
    let mut seen: BTreeMap<String, (u64, String, u64)> = seen
        .into_iter()
        .map(|(k, (n, sha, r))| (k, (n, hex(&sha.finalize()), r)))
        .collect();
    let mut check = |logical: String, part: &Part, what: &str| match seen.remove(&logical) {
        None => Err(damaged(format!("{what} is missing"))),
        Some((bytes, sha, records)) => {
            if bytes != part.bytes || records != part.records {
                Err(damaged(format!(
                    "{what} holds {bytes} bytes and {records} records; the manifest says \
                         {} bytes and {} records",
                    part.bytes, part.records
                )))
            } else if sha != part.sha256 {
                Err(damaged(format!(
                    "{what} has been altered: its SHA-256 differs from the manifest's"
                )))
            } else {
                Ok(())
            }
        }
    };
    for (tree, part) in &manifest.trees {
        check(format!("tree:{tree}"), part, &format!("tree {}", part.name))?;
    }
    for (name, part) in &manifest.wal {
        check(
            format!("store.wal/{name}"),
            part,
            &format!("log segment {name}"),
        )?;
    }
    for (name, part) in &manifest.files {
        check(format!("files/{name}"), part, &format!("file {name}"))?;
    }
    if let Some(extra) = seen.keys().next() {
        return Err(damaged(format!("{extra} is not in the manifest")));
    }
    if let Some(l) = loader {
        l.finish()?;
    }
    Ok(Report {
        manifest,
        devices: None,
    })
}

/// Where a non-tree entry goes inside the restored data directory.
fn safe_target(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    if let Some(seg) = rel.strip_prefix("store.wal/") {
        return Some(Path::new("store.wal").join(seg));
    }
    rel.strip_prefix("files/").map(PathBuf::from)
}

/// Copies `from` into a new file at `path` readable by its owner alone, synced; the bytes
/// copied.
fn copy_private(path: &Path, from: &mut impl Read) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let n = std::io::copy(from, &mut f)?;
    f.sync_all()?;
    Ok(n)
}

/// Calls `f` on each record of a tree chunk; returns how many there were.
fn each_record(
    data: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    let mut pos = 0;
    let mut n = 0;
    let take = |pos: &mut usize| -> Result<&[u8], BackupError> {
        let len = data
            .get(*pos..*pos + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| BackupError::Damaged("a record is cut short".into()))?;
        let s = data
            .get(*pos + 4..*pos + 4 + len)
            .ok_or_else(|| BackupError::Damaged("a record is cut short".into()))?;
        *pos += 4 + len;
        Ok(s)
    };
    while pos < data.len() {
        let k = take(&mut pos)?;
        let v = take(&mut pos)?;
        f(k, v)?;
        n += 1;
    }
    Ok(n)
}

/// Builds a new sled store from a backup's records.
struct Loader {
    db: sled::Db,
    batches: BTreeMap<Vec<u8>, (sled::Batch, usize)>,
}

/// Records per sled batch while restoring.
const LOAD_BATCH: usize = 10_000;

impl Loader {
    fn create(path: &Path) -> Result<Loader, BackupError> {
        if path.exists() {
            return Err(BackupError::Refused(format!(
                "{} already exists",
                path.display()
            )));
        }
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .open()
            .map_err(StoreError::from)?;
        Ok(Loader {
            db,
            batches: BTreeMap::new(),
        })
    }

    fn insert(&mut self, tree: &[u8], k: &[u8], v: &[u8]) -> Result<(), BackupError> {
        let (batch, n) = self.batches.entry(tree.to_vec()).or_default();
        batch.insert(k, v);
        *n += 1;
        if *n >= LOAD_BATCH {
            let (batch, _) = std::mem::take(self.batches.get_mut(tree).expect("just used"));
            self.db
                .open_tree(tree)
                .and_then(|t| t.apply_batch(batch))
                .map_err(StoreError::from)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), BackupError> {
        for (tree, (batch, _)) in std::mem::take(&mut self.batches) {
            self.db
                .open_tree(&tree)
                .and_then(|t| t.apply_batch(batch))
                .map_err(StoreError::from)?;
        }
        self.db.flush().map_err(StoreError::from)?;
        Ok(())
    }
}

/// Checks a backup without restoring it: every digest and count against the manifest.
pub fn check(file: &Path) -> Result<Report, BackupError> {
    read(file, None)
}

/// Restores `file` into `dir` (which must not exist, or be empty): the store, its log and the
/// backup's files, then opens the store once so the log replays, and stops it cleanly. The
/// directory is built beside `dir` and renamed into place only when everything checked out.
pub async fn restore(file: &Path, dir: &Path) -> Result<Report, BackupError> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(BackupError::Refused(format!(
            "{} is not empty; restore into a new directory",
            dir.display()
        )));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let staging = dir.with_file_name(format!(".{name}.restoring"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let res = restore_into(file, &staging).await;
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        return res;
    }
    if dir.exists() {
        std::fs::remove_dir(dir)?;
    }
    std::fs::rename(&staging, dir)?;
    res
}

async fn restore_into(file: &Path, dir: &Path) -> Result<Report, BackupError> {
    let (f, d) = (file.to_path_buf(), dir.to_path_buf());
    let mut report = tokio::task::spawn_blocking(move || read(&f, Some(&d)))
        .await
        .map_err(|e| BackupError::Io(std::io::Error::other(e)))??;
    // Opening replays the log the backup carries, as after a crash.
    let store = Store::open(
        &dir.join("store"),
        StoreOptions {
            cache_capacity_bytes: 64 << 20,
            ..Default::default()
        },
        std::sync::Arc::new(crate::metrics::Metrics::new()),
    )?;
    report.devices = Some(store.trees.devices.len() as u64);
    store.close_clean().await?;
    store.close()?;
    Ok(report)
}

/// Restores `file` into a temporary directory (opening the store, so its log replays) and
/// removes it again: what `backup verify` runs.
pub async fn verify(file: &Path) -> Result<Report, BackupError> {
    let tmp = tempdir_beside(file)?;
    let res = restore(file, &tmp.join("data")).await;
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

/// A fresh directory for `verify`, in the system's temporary directory.
fn tempdir_beside(_file: &Path) -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let p = base.join(format!(
            "corral-verify-{}-{}-{i}",
            std::process::id(),
            crate::model::now_ms()
        ));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    Err(std::io::Error::other("cannot make a temporary directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(b"__sled__default\x00\xff")).as_deref(),
            Some(&b"__sled__default\x00\xff"[..])
        );
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn safe_targets_stay_inside() {
        assert_eq!(
            safe_target("files/pki/ca.pem"),
            Some(PathBuf::from("pki/ca.pem"))
        );
        assert_eq!(
            safe_target("store.wal/00000000000000000001.wal"),
            Some(PathBuf::from("store.wal/00000000000000000001.wal"))
        );
        assert_eq!(safe_target("files/../../etc/passwd"), None);
        assert_eq!(safe_target("/etc/passwd"), None);
        assert_eq!(safe_target("other"), None);
    }
}
