//! The only module that touches sled. It exposes a narrow typed API in domain types
//! (registry records, telemetry points), the group-commit durability point, and the
//! schema version with its migrations. A second engine must be possible by changing only this
//! module.

mod attributes;
mod codec;
mod commit;
mod conditions;
mod connections;
mod credentials;
mod integrations;
mod jobs;
mod registry;
mod telemetry;
mod users;
mod wal;

use std::path::{Path, PathBuf};

use sled::Transactional;
use std::sync::Arc;
use std::time::Duration;

pub use attributes::Scope;
pub use conditions::{CLOSED_CONDITIONS_KEPT, ConditionScan};
pub use credentials::{CredentialClash, CredentialKey};
pub use integrations::{DeadLetter, Enqueue, Moved, QueueEntry, QueueStats};
pub use registry::{DeviceClash, NameClash, Page};
pub use telemetry::{Agg, HOUR_MS, RawPage, RawQuery, SeriesKey, hour_of};
pub use wal::{Points, PointsOp};

use crate::metrics::Metrics;

/// Current on-disk schema. Bump it and add a step to `migrate` when the layout changes.
pub const SCHEMA_VERSION: u32 = 4;

/// Store failures. A store error is never "not found": lookups return `Option`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error(
        "the store at {path} has schema version {found}, newer than this binary understands ({SCHEMA_VERSION}); run a newer corral"
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("write-ahead log at {path}: {source}")]
    Wal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("flush to disk failed: {0}")]
    Flush(String),
    #[error("the store is shutting down")]
    Closed,
    /// Aborts a transaction whose unique value is taken; mapped back to a result by the caller.
    #[error("a unique value is already taken")]
    Clash(registry::DeviceClash),
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Handle to the embedded store; cheap to clone. Reads and registry writes go straight to `Db`
/// (through `Deref`) and are made durable with `commit`; device data goes through the
/// write-ahead-logged pipeline (`append_points`).
#[derive(Clone)]
pub struct Store {
    db: Arc<Db>,
    pipeline: Arc<commit::Pipeline>,
}

/// The opened database: every tree, and the typed operations on them (in `registry` and
/// `telemetry`). Write jobs of the pipeline receive a `&Db`.
pub struct Db {
    db: sled::Db,
    path: PathBuf,
    trees: Trees,
    /// Series known to be in the `series` directory, so that ingest skips the lookup. Only the
    /// writer thread (and replay) touches it; bounded by `SERIES_CACHE_MAX`.
    /// Maps each to the timestamp of its newest point, which decides whether a point extends
    /// its hour's rollup or makes it dirty.
    known_series: std::sync::Mutex<std::collections::HashMap<Vec<u8>, telemetry::LastPoint>>,
    /// Series per device, for the key cap (see `telemetry::SeriesCounts`).
    series_counts: telemetry::SeriesCounts,
    /// The integration queues' sequence counter and live counters.
    queues: integrations::Queues,
}

impl std::ops::Deref for Store {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

/// Every tree, opened once.
struct Trees {
    meta: sled::Tree,
    workspaces: sled::Tree,
    workspace_names: sled::Tree,
    fleets: sled::Tree,
    fleet_names: sled::Tree,
    devices: sled::Tree,
    device_names: sled::Tree,
    fleet_devices: sled::Tree,
    credentials: sled::Tree,
    cred_index: sled::Tree,
    fleet_provisioning: sled::Tree,
    provision_keys: sled::Tree,
    fleet_cas: sled::Tree,
    audit: sled::Tree,
    api_keys: sled::Tree,
    api_key_hashes: sled::Tree,
    ts: sled::Tree,
    series: sled::Tree,
    rollup_h: sled::Tree,
    attributes: sled::Tree,
    jobs: sled::Tree,
    job_devices: sled::Tree,
    jobs_active: sled::Tree,
    job_keys: sled::Tree,
    rpc_seq: sled::Tree,
    fleet_jobs: sled::Tree,
    fleet_job_children: sled::Tree,
    fleet_job_keys: sled::Tree,
    schedules: sled::Tree,
    users: sled::Tree,
    user_names: sled::Tree,
    sessions: sled::Tree,
    connections: sled::Tree,
    conditions: sled::Tree,
    device_conditions: sled::Tree,
    conditions_open: sled::Tree,
    integrations: sled::Tree,
    int_queue: sled::Tree,
    int_dead: sled::Tree,
}

/// Options for opening the store.
pub struct StoreOptions {
    pub cache_capacity_bytes: u64,
    pub group_commit_delay: Duration,
}

impl Store {
    /// Opens the store in `path`, creating it only when the directory holds no store yet.
    /// Starts the writer and flusher threads.
    pub fn open(path: &Path, opts: StoreOptions, metrics: Arc<Metrics>) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        // A directory that exists but lacks sled's `conf` file, or an unreadable one, must not be
        // silently replaced by an empty store: sled would create one, so check first.
        if path.exists() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| open_err(sled::Error::Io(e)))?
                .count();
            if entries > 0 && !path.join("conf").exists() {
                return Err(open_err(sled::Error::Unsupported(
                    "the directory is not empty and holds no Corral store".into(),
                )));
            }
        }
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_capacity_bytes)
            // Durability comes from our group commit, never from a timer.
            .flush_every_ms(None)
            .open()
            .map_err(open_err)?;
        let t = |name: &str| db.open_tree(name).map_err(open_err);
        let trees = Trees {
            meta: t("meta")?,
            workspaces: t("workspaces")?,
            workspace_names: t("workspace_names")?,
            fleets: t("fleets")?,
            fleet_names: t("fleet_names")?,
            devices: t("devices")?,
            device_names: t("device_names")?,
            fleet_devices: t("fleet_devices")?,
            credentials: t("credentials")?,
            cred_index: t("cred_index")?,
            fleet_provisioning: t("fleet_provisioning")?,
            provision_keys: t("provision_keys")?,
            fleet_cas: t("fleet_cas")?,
            audit: t("audit")?,
            api_keys: t("api_keys")?,
            api_key_hashes: t("api_key_hashes")?,
            ts: t("ts")?,
            series: t("series")?,
            rollup_h: t("rollup_h")?,
            attributes: t("attributes")?,
            jobs: t("jobs")?,
            job_devices: t("job_devices")?,
            jobs_active: t("jobs_active")?,
            job_keys: t("job_keys")?,
            rpc_seq: t("rpc_seq")?,
            fleet_jobs: t("fleet_jobs")?,
            fleet_job_children: t("fleet_job_children")?,
            fleet_job_keys: t("fleet_job_keys")?,
            schedules: t("schedules")?,
            users: t("users")?,
            user_names: t("user_names")?,
            sessions: t("sessions")?,
            connections: t("connections")?,
            conditions: t("conditions")?,
            device_conditions: t("device_conditions")?,
            conditions_open: t("conditions_open")?,
            integrations: t("integrations")?,
            int_queue: t("int_queue")?,
            int_dead: t("int_dead")?,
        };
        migrate(path, &db, &trees)?;
        db.flush().map_err(open_err)?;
        let db = Arc::new(Db {
            db,
            path: path.to_path_buf(),
            trees,
            known_series: Default::default(),
            series_counts: Default::default(),
            queues: Default::default(),
        });
        db.init_queues()?;
        let (wal, replayed) = wal::Wal::open_and_replay(&path.with_extension("wal"), &db)?;
        db.count_series()?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "replayed the write-ahead log after an unclean stop"
            );
        }
        let pipeline = commit::Pipeline::spawn(db.clone(), wal, opts.group_commit_delay, metrics)
            .map_err(|e| open_err(sled::Error::Io(e)))?;
        Ok(Store {
            db,
            pipeline: Arc::new(pipeline),
        })
    }

    /// Logs and stores telemetry points of one device. With `durable`, returns once the write is
    /// on disk (group commit); otherwise once it is applied, durable with the next sync.
    pub async fn append_points(&self, op: PointsOp, durable: bool) -> Result<usize> {
        self.pipeline.points(op, None, durable).await
    }

    /// As `append_points`, and adds `queue` to integration queues in the same logged record:
    /// the entries are durable exactly when the points are.
    pub async fn append_points_queued(
        &self,
        op: PointsOp,
        queue: Option<Enqueue>,
        durable: bool,
    ) -> Result<usize> {
        self.pipeline.points(op, queue, durable).await
    }

    /// Adds entries to integration queues on the writer thread, in order with device data,
    /// without waiting; durable at the next `commit`.
    pub fn enqueue_later(&self, q: Enqueue) {
        self.apply_later(move |db| {
            if let Err(e) = db.enqueue_now(&q) {
                tracing::error!(error = %e, "integration queue entry not stored");
            }
        })
    }

    /// Runs `f` on the writer thread (ordered with queue writes) and makes the result durable.
    async fn on_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.apply_later(move |db| {
            let _ = tx.send(f(db));
        });
        let out = rx.await.map_err(|_| StoreError::Closed)??;
        self.commit().await?;
        Ok(out)
    }

    /// Moves an integration's dead letters back to the tail of its queue.
    pub async fn requeue_dead(&self, id: crate::model::IntegrationId) -> Result<Moved> {
        self.on_writer(move |db| db.requeue_dead(id)).await
    }

    /// Deletes an integration, its queue and its dead letters.
    pub async fn delete_integration(&self, id: crate::model::IntegrationId) -> Result<()> {
        self.on_writer(move |db| db.remove_integration(id)).await
    }

    /// Applies bookkeeping `f` on the writer thread, in order, without waiting; durable at the
    /// next checkpoint or `commit`.
    pub fn apply_later(&self, f: impl FnOnce(&Db) + Send + 'static) {
        self.pipeline.apply_later(f)
    }

    /// Makes every registry write made before this call durable (a sled flush; device data has
    /// its own log and does not need this).
    pub async fn commit(&self) -> Result<()> {
        self.pipeline.commit().await
    }

    /// Flushes sled and truncates the write-ahead log (at shutdown, so the next start has
    /// nothing to replay).
    pub async fn checkpoint(&self) -> Result<()> {
        self.pipeline.checkpoint().await
    }
}

impl Db {
    /// Flushes synchronously; used at shutdown after the listeners have stopped.
    pub fn flush_now(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// The schema version recorded in the store.
    pub fn schema_version(&self) -> Result<u32> {
        read_version(&self.trees.meta).map(|v| v.unwrap_or(0))
    }

    fn trees(&self) -> &Trees {
        &self.trees
    }
}

const VERSION_KEY: &[u8] = b"schema_version";

fn read_version(meta: &sled::Tree) -> Result<Option<u32>> {
    match meta.get(VERSION_KEY)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                tree: "meta",
                detail: "schema_version is not 4 bytes".into(),
            })?;
            Ok(Some(u32::from_be_bytes(b)))
        }
    }
}

/// Brings the store to `SCHEMA_VERSION`, one step function per version.
fn migrate(path: &Path, db: &sled::Db, trees: &Trees) -> Result<()> {
    let meta = &trees.meta;
    let mut version = read_version(meta)?.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
        });
    }
    while version < SCHEMA_VERSION {
        match version {
            // 0 → 1: a new store; nothing to convert.
            0 => {}
            // 1 → 2: access tokens become one kind of credential among several.
            1 => migrate_tokens_to_credentials(db, trees)?,
            // 2 → 3: hourly rollups, built from the points already stored.
            2 => build_rollups(trees)?,
            // 3 → 4: integration trees (created empty on open) and WAL record type 2. Nothing
            // to convert; the bump makes an older binary refuse the store instead of taking
            // type-2 records for a torn log tail and dropping them.
            3 => {}
            _ => unreachable_version(version)?,
        }
        version += 1;
        meta.insert(VERSION_KEY, &version.to_be_bytes())?;
    }
    Ok(())
}

/// Version 1 kept device tokens in `device_tokens` (device ‖ hash → record) with a `tokens`
/// index; version 2 keeps every credential kind in `credentials` with one `cred_index`.
fn migrate_tokens_to_credentials(db: &sled::Db, trees: &Trees) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct V1Token {
        device_id: crate::model::DeviceId,
        token_sha256: [u8; 32],
        hint: String,
        created_at: crate::model::Millis,
    }
    let old = db.open_tree("device_tokens")?;
    let mut creds = Vec::new();
    for kv in old.iter() {
        let t: V1Token = codec::decode_json("device_tokens", &kv?.1)?;
        let mut c = crate::model::Credential::new(
            t.device_id,
            crate::model::CredentialSecret::AccessToken {
                token_sha256: t.token_sha256,
                hint: t.hint,
            },
            t.created_at,
        );
        c.created_at = t.created_at;
        creds.push(c);
    }
    (&trees.credentials, &trees.cred_index)
        .transaction(|(c, i)| credentials::insert_credentials(c, i, &creds))
        .map_err(StoreError::from)?;
    db.drop_tree("device_tokens")?;
    db.drop_tree("tokens")?;
    Ok(())
}

/// Builds `rollup_h` from every stored point (a one-time scan when upgrading).
fn build_rollups(trees: &Trees) -> Result<()> {
    let mut current: Option<(Vec<u8>, telemetry::Agg)> = None;
    let mut batch = sled::Batch::default();
    for kv in trees.ts.iter() {
        let (k, v) = kv?;
        let Some(split) = k.len().checked_sub(8) else {
            continue;
        };
        let ts = codec::ts_from(&k[split..]).unwrap_or_default();
        let mut bucket = k[..split].to_vec();
        bucket.extend_from_slice(&codec::ts_bytes(telemetry::hour_of(ts)));
        if current.as_ref().is_some_and(|(b, _)| *b != bucket)
            && let Some((b, agg)) = current.take()
        {
            batch.insert(b, &agg.encode()[..]);
        }
        current
            .get_or_insert_with(|| (bucket, telemetry::Agg::default()))
            .1
            .add(&codec::decode_value(&v)?);
    }
    if let Some((b, agg)) = current {
        batch.insert(b, &agg.encode()[..]);
    }
    trees.rollup_h.apply_batch(batch)?;
    Ok(())
}

fn unreachable_version(v: u32) -> Result<()> {
    Err(StoreError::Corrupt {
        tree: "meta",
        detail: format!("no migration from version {v}"),
    })
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    pub fn open_temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            &dir.path().join("db"),
            StoreOptions {
                cache_capacity_bytes: 8 << 20,
                group_commit_delay: Duration::ZERO,
            },
            Arc::new(Metrics::new()),
        )
        .expect("open");
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_store_records_schema_version_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let opts = || StoreOptions {
            cache_capacity_bytes: 1 << 20,
            group_commit_delay: Duration::ZERO,
        };
        {
            let s = Store::open(&path, opts(), Arc::new(Metrics::new())).expect("open");
            assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
            s.commit().await.expect("commit");
        }
        // The writer thread checkpoints and lets go of the database after the last handle is
        // dropped; give it time.
        let mut reopened = None;
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Ok(s) = Store::open(&path, opts(), Arc::new(Metrics::new())) {
                reopened = Some(s);
                break;
            }
        }
        let s = reopened.expect("reopen");
        assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
    }

    #[test]
    fn version_1_tokens_become_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let device = crate::model::DeviceId::new();
        {
            // A version-1 store as the first release wrote it.
            let db = sled::open(&path).expect("sled");
            db.open_tree("meta")
                .expect("meta")
                .insert(VERSION_KEY, &1u32.to_be_bytes())
                .expect("version");
            let hash = [9u8; 32];
            let rec = serde_json::json!({"device_id": device, "token_sha256": hash,
                "hint": "abcd", "created_at": 42});
            let mut key = device.as_bytes().to_vec();
            key.extend_from_slice(&hash);
            db.open_tree("device_tokens")
                .expect("tree")
                .insert(key, serde_json::to_vec(&rec).expect("json"))
                .expect("insert");
            db.open_tree("tokens")
                .expect("tree")
                .insert(hash, device.as_bytes())
                .expect("insert");
            db.flush().expect("flush");
        }
        let s = Store::open(
            &path,
            StoreOptions {
                cache_capacity_bytes: 1 << 20,
                group_commit_delay: Duration::ZERO,
            },
            Arc::new(Metrics::new()),
        )
        .expect("open");
        assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
        let c = s
            .find_credential(CredentialKey::TokenSha256(&[9u8; 32]))
            .expect("find")
            .expect("migrated");
        assert_eq!((c.device_id, c.created_at), (device, 42));
        assert!(matches!(
            c.secret,
            crate::model::CredentialSecret::AccessToken { ref hint, .. } if hint == "abcd"
        ));
        assert!(
            !s.db
                .db
                .tree_names()
                .iter()
                .any(|n| &n[..] == b"device_tokens")
        );
    }

    #[tokio::test]
    async fn version_2_stores_get_rollups_built_from_their_points() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let opts = || StoreOptions {
            cache_capacity_bytes: 1 << 20,
            group_commit_delay: Duration::ZERO,
        };
        let dev = crate::model::DeviceId::new();
        {
            let s = Store::open(&path, opts(), Arc::new(Metrics::new())).expect("open");
            let pts: Vec<_> = (0..500)
                .map(|i| {
                    (
                        i * 37_000,
                        vec![("x".to_string(), crate::model::Value::Long(i % 7))],
                    )
                })
                .collect();
            s.put_points(dev, "default", &pts).expect("put");
            // What a version-2 store looks like: points, no rollups.
            s.db.db
                .open_tree("rollup_h")
                .expect("tree")
                .clear()
                .expect("clear");
            s.trees
                .meta
                .insert(VERSION_KEY, &2u32.to_be_bytes())
                .expect("version");
            s.commit().await.expect("commit");
        }
        let mut reopened = None;
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Ok(s) = Store::open(&path, opts(), Arc::new(Metrics::new())) {
                reopened = Some(s);
                break;
            }
        }
        let s = reopened.expect("reopen");
        assert_eq!(s.schema_version().expect("version"), SCHEMA_VERSION);
        let bounds: Vec<i64> = (0..=6).map(|h| h * HOUR_MS).collect();
        let rolled = s
            .aggregate(dev, "default", "x", &bounds, 0, 6 * HOUR_MS)
            .expect("aggregate");
        let raw = s
            .aggregate_from_raw(dev, "default", "x", &bounds, 0, 6 * HOUR_MS)
            .expect("raw");
        assert_eq!(rolled, raw);
        assert_eq!(rolled.iter().map(|a| a.count).sum::<u64>(), 500);
    }

    #[tokio::test]
    async fn foreign_directory_is_refused_not_recreated() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("precious.txt"), "data").expect("write");
        let err = Store::open(
            dir.path(),
            StoreOptions {
                cache_capacity_bytes: 1 << 20,
                group_commit_delay: Duration::ZERO,
            },
            Arc::new(Metrics::new()),
        )
        .err()
        .expect("refused");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
        assert!(dir.path().join("precious.txt").exists());
    }
}
