//! The only module that touches sled. What the rest of Corral may ask of storage is stated in
//! `ports` (one trait per area, in domain types); `adapters` implements those traits over the
//! typed operations in the per-area files here (`registry`, `telemetry`, `jobs`, ...), the
//! group-commit write pipeline (`commit`, `wal`, `logged`), and the schema version with its
//! migrations. A second engine implements `ports` without any service changing.

mod adapters;
mod attributes;
pub mod backup;
mod campaigns;
// Crate-visible for the `fuzzing` forwarders only; the rest of the crate goes through `ports`.
pub(crate) mod codec;
mod commit;
mod conditions;
mod connections;
mod credentials;
mod dashboards;
pub mod guard;
mod integrations;
mod jobs;
mod logged;
mod packages;
pub mod ports;
mod registry;
mod telemetry;
mod users;
pub(crate) mod wal;

use std::path::{Path, PathBuf};

use sled::Transactional;
use std::sync::Arc;
use std::time::Duration;

pub use crate::model::{Cursor, Page, RawPage, RawQuery, Scope};
pub use conditions::{CLOSED_CONDITIONS_KEPT, ConditionScan};
pub use credentials::{CredentialClash, CredentialKey};
pub use integrations::{DeadLetter, Enqueue, Moved, QueueEntry, QueueStats};
pub use logged::{JobWrites, Mark};
pub use registry::{DeviceClash, NameClash};
pub use telemetry::{Agg, HOUR_MS, SeriesKey, hour_of};
pub use wal::{Points, PointsOp};

use crate::metrics::Metrics;

/// Current on-disk schema. Bump it and add a step to `migrate` when the layout changes.
pub const SCHEMA_VERSION: u32 = 4;

/// Store failures. A store error is never "not found": lookups return `Option`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    /// The store is damaged or missing: opening it would silently lose acknowledged data.
    #[error(
        "the store at {path} is damaged or missing: {what}.\n\
         Nothing was changed. To recover, either\n  \
         - restore the latest backup: `corral restore BACKUP_FILE NEW_DATA_DIR`, then start with \
         data_dir = NEW_DATA_DIR; or\n  \
         - start with `corral serve --accept-data-loss` to go on with what can still be read (a \
         store that cannot be read at all, and damaged log segments, are set aside in a \
         damaged-<time> directory beside the store, never deleted)"
    )]
    Damaged { path: PathBuf, what: String },
    #[error(
        "the disk holding the store at {path} is full (no disk space left); free some space, then start again"
    )]
    DiskFull { path: PathBuf },
    #[error(
        "the store at {path} is in use by another process (is another corral running on this data directory?)"
    )]
    InUse { path: PathBuf },
    /// Free space is below what is kept in reserve; device writes are refused until it returns.
    #[error(
        "not enough free disk space for the store at {path}: {free_mib} MiB free, {need_mib} MiB kept in reserve (store.min_free_mb); free some space"
    )]
    DiskLow {
        path: PathBuf,
        free_mib: u64,
        need_mib: u64,
    },
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
    /// A cursor this store did not hand out.
    #[error("cursor is not one this API returned")]
    BadCursor,
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

impl StoreError {
    /// Whether the error is the file system running out of space (ENOSPC).
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            StoreError::Open {
                source: sled::Error::Io(e),
                ..
            }
            | StoreError::Sled(sled::Error::Io(e))
            | StoreError::Wal { source: e, .. } => e,
            StoreError::DiskFull { .. } => return true,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::StorageFull
    }
}

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
    /// Telemetry writes waiting in memory to reach sled (see `telemetry`).
    pending: telemetry::Pending,
    /// The integration queues' sequence counter and live counters.
    queues: integrations::Queues,
    /// The flush generation last written into `meta` (see `guard`). Locked while it is bumped
    /// and written, so the value in `meta` only ever grows.
    generation: std::sync::Mutex<u64>,
    /// The generation in `store.state` and when it was written.
    state_written: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    /// sled's blob files already fsynced (see `guard::sync_sled`).
    synced_blobs: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
    /// The job area's logged writes (see `logged`).
    logged: logged::Logged,
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
    packages: sled::Tree,
    package_keys: sled::Tree,
    campaigns: sled::Tree,
    ota_devices: sled::Tree,
    dashboards: sled::Tree,
}

/// Options for opening the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub cache_capacity_bytes: u64,
    pub group_commit_delay: Duration,
    /// Free bytes kept in reserve: device writes are refused below it, and a start needs half.
    pub min_free_bytes: u64,
    /// Open a damaged store anyway, keeping what can be read (`serve --accept-data-loss`).
    pub accept_data_loss: bool,
    /// Log bytes between checkpoints (64 MiB; tests take a few KiB to cross many).
    pub checkpoint_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 64 << 20,
            group_commit_delay: Duration::ZERO,
            min_free_bytes: 0,
            accept_data_loss: false,
            checkpoint_bytes: 64 << 20,
        }
    }
}

/// The id a cursor of this store names (its cursors are ids in their text form).
pub(crate) fn cursor_id<T: std::str::FromStr>(c: Option<&Cursor>) -> Result<Option<T>> {
    c.map(|c| c.as_str().parse().map_err(|_| StoreError::BadCursor))
        .transpose()
}

/// The cursor that names `id`.
pub(crate) fn id_cursor(id: impl std::fmt::Display) -> Cursor {
    Cursor::new(id.to_string())
}

impl Store {
    /// Opens the store in `path`, creating it only when there is no trace of one yet.
    /// Refuses a damaged or missing store (`StoreError::Damaged`) unless
    /// `opts.accept_data_loss`; replays the write-ahead log after an unclean stop; starts the
    /// writer and flusher threads.
    pub fn open(path: &Path, opts: StoreOptions, metrics: Arc<Metrics>) -> Result<Store> {
        Self::open_inner(path, opts, metrics).map_err(|e| {
            if e.is_disk_full() {
                StoreError::DiskFull {
                    path: path.to_path_buf(),
                }
            } else {
                e
            }
        })
    }

    fn open_inner(path: &Path, opts: StoreOptions, metrics: Arc<Metrics>) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let damaged = |what: String| StoreError::Damaged {
            path: path.to_path_buf(),
            what,
        };
        // A directory that exists but lacks sled's `conf` file, or an unreadable one, must not be
        // silently replaced by an empty store: sled would create one, so check first.
        if path.exists() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| open_err(sled::Error::Io(e)))?
                .count();
            if entries > 0 && !path.join("conf").exists() && !path.join("db").exists() {
                return Err(open_err(sled::Error::Unsupported(
                    "the directory is not empty and holds no Corral store".into(),
                )));
            }
        }
        guard::preflight(path, opts.min_free_bytes / 2)?;
        let presence = guard::presence(path);
        if let guard::Presence::Missing(what) = &presence {
            if !opts.accept_data_loss {
                return Err(damaged(what.clone()));
            }
            let aside = guard::set_aside(
                path,
                &[path, &guard::wal_path(path), &guard::state_path(path)],
            )
            .map_err(|e| open_err(sled::Error::Io(e)))?;
            tracing::warn!(problem = %what, moved_to = %aside.display(), "starting with a new, empty store (--accept-data-loss)");
        }
        let existed = presence == guard::Presence::Existing;
        let state = match guard::read_state(path) {
            Ok(s) => s,
            Err(what) if opts.accept_data_loss => {
                tracing::warn!(problem = %what, "ignoring an unreadable integrity record (--accept-data-loss)");
                None
            }
            Err(what) => return Err(damaged(what)),
        };
        let db = match open_sled(path, opts.cache_capacity_bytes) {
            Ok(db) => db,
            Err(StoreError::Damaged { what, .. }) if opts.accept_data_loss && existed => {
                let aside = guard::set_aside(path, &[path, &guard::state_path(path)])
                    .map_err(|e| open_err(sled::Error::Io(e)))?;
                tracing::warn!(problem = %what, moved_to = %aside.display(), "the store cannot be read at all; starting with a new, empty one (--accept-data-loss)");
                open_sled(path, opts.cache_capacity_bytes)?
            }
            Err(e) => return Err(e),
        };
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
            packages: t("packages")?,
            package_keys: t("package_keys")?,
            campaigns: t("campaigns")?,
            ota_devices: t("ota_devices")?,
            dashboards: t("dashboards")?,
        };
        let generation = read_generation(&trees.meta)?;
        match &state {
            Some(st) => match guard::verify(st, generation, || trees.counts()) {
                Ok(guard::Verdict::Clean) => {}
                Ok(guard::Verdict::Recovering) => {
                    tracing::info!(
                        "the last stop was not clean: recovering from the write-ahead log"
                    )
                }
                Err(what) if opts.accept_data_loss => {
                    tracing::warn!(problem = %what, "opening a damaged store (--accept-data-loss): what it lost is gone")
                }
                Err(what) => return Err(damaged(what)),
            },
            None if existed => tracing::info!(
                "this store has no integrity record yet (written by an earlier corral); one is kept from now on"
            ),
            None => {}
        }
        let version = read_version(&trees.meta)?;
        let db = Arc::new(Db {
            db,
            path: path.to_path_buf(),
            trees,
            known_series: Default::default(),
            series_counts: Default::default(),
            pending: Default::default(),
            queues: Default::default(),
            generation: std::sync::Mutex::new(
                generation.max(state.as_ref().map_or(0, |s| s.generation)),
            ),
            state_written: std::sync::Mutex::new(None),
            synced_blobs: Default::default(),
            logged: Default::default(),
        });
        if existed && let Some(v) = version.filter(|v| *v < SCHEMA_VERSION) {
            // A failed upgrade must always be able to go back: snapshot first.
            let file = backup::before_migration(&db, v).map_err(|e| StoreError::Damaged {
                path: path.to_path_buf(),
                what: format!(
                    "the snapshot taken before upgrading it from schema {v} failed ({e}); nothing was changed"
                ),
            })?;
            tracing::info!(file = %file.display(), from = v, to = SCHEMA_VERSION, "snapshot taken before the schema migration");
        }
        migrate(path, &db.db, &db.trees)?;
        db.flush_now()?;
        db.init_queues()?;
        let (mut wal, replayed) =
            wal::Wal::open_and_replay(&guard::wal_path(path), &db, opts.accept_data_loss)?;
        wal.checkpoint_bytes = opts.checkpoint_bytes.max(1);
        db.count_series()?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "replayed the write-ahead log after an unclean stop"
            );
        }
        // From here on the record says "not clean" until a clean stop says otherwise.
        let g = *db.generation.lock().unwrap_or_else(|p| p.into_inner());
        db.record_generation(g, true)
            .map_err(|e| open_err(sled::Error::Io(e)))?;
        let pipeline = commit::Pipeline::spawn(
            db.clone(),
            wal,
            opts.group_commit_delay,
            opts.min_free_bytes,
            metrics,
        )
        .map_err(|e| open_err(sled::Error::Io(e)))?;
        Ok(Store {
            db,
            pipeline: Arc::new(pipeline),
        })
    }

    /// Lets go of the store and waits until it is closed (its files free for another open).
    /// Only the last handle can close it: with others alive, `StoreError::Closed`.
    pub fn close(self) -> Result<()> {
        let Store { db, pipeline } = self;
        let pipeline = Arc::try_unwrap(pipeline).map_err(|_| StoreError::Closed)?;
        pipeline.close();
        drop(db);
        Ok(())
    }

    /// Ends a run cleanly: flushes sled, empties the log and records a clean stop (with record
    /// counts) in the integrity record. Call once nothing writes any more.
    pub async fn close_clean(&self) -> Result<()> {
        self.pipeline.checkpoint().await?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.record_clean())
            .await
            .map_err(|_| StoreError::Closed)?
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

    /// Makes every registry write made before this call durable (a sled flush; device data
    /// and the job area have their own log and do not need this).
    pub async fn commit(&self) -> Result<()> {
        // Every logged write up to here is in sled already, so the flush covers it too.
        let covered = self.covered_by_flush();
        self.pipeline.commit().await?;
        self.mark_durable(covered);
        Ok(())
    }

    /// Flushes sled and truncates the write-ahead log (at shutdown, so the next start has
    /// nothing to replay).
    pub async fn checkpoint(&self) -> Result<()> {
        self.pipeline.checkpoint().await
    }
}

/// How often, at most, an ordinary flush rewrites `store.state` (checkpoints and stops always
/// do). The record may lag the store, never lead it, so this only bounds how recent the
/// damage check's reference point is.
const STATE_EVERY: Duration = Duration::from_secs(1);

/// Registry trees whose record counts a clean stop records and the next start checks. Only
/// trees that change through API requests and device provisioning, which have all ended when a
/// clean stop counts, so a late background write can never make a good store look damaged.
const COUNTED_TREES: &[&str] = &[
    "workspaces",
    "fleets",
    "devices",
    "credentials",
    "users",
    "api_keys",
    "integrations",
    "schedules",
];

impl Trees {
    fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        let tree = |name: &str| match name {
            "workspaces" => &self.workspaces,
            "fleets" => &self.fleets,
            "devices" => &self.devices,
            "credentials" => &self.credentials,
            "users" => &self.users,
            "api_keys" => &self.api_keys,
            "integrations" => &self.integrations,
            _ => &self.schedules,
        };
        COUNTED_TREES
            .iter()
            .map(|n| (n.to_string(), tree(n).len() as u64))
            .collect()
    }
}

impl Db {
    /// Makes every write so far durable (a sled flush), under a new generation.
    pub fn flush_now(&self) -> Result<()> {
        let g = {
            let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
            *g += 1;
            self.trees.meta.insert(GENERATION_KEY, &g.to_be_bytes())?;
            *g
        };
        self.db.flush()?;
        self.sync_sled()?;
        // `g` was written before this flush began, so the disk holds at least `g`.
        if let Err(e) = self.record_generation(g, false) {
            tracing::warn!(error = %e, "cannot update the store's integrity record");
        }
        Ok(())
    }

    /// After a sled flush: makes what it wrote durable (sled alone does not, see
    /// `guard::sync_sled`).
    fn sync_sled(&self) -> Result<()> {
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        guard::sync_sled(&self.path, &mut synced).map_err(|e| StoreError::Sled(sled::Error::Io(e)))
    }

    /// Writes `g`, a generation known to be on disk, to `store.state` (as "not clean"):
    /// always with `force`, otherwise at most every `STATE_EVERY`.
    fn record_generation(&self, g: u64, force: bool) -> std::io::Result<()> {
        let mut w = self.state_written.lock().unwrap_or_else(|p| p.into_inner());
        let last = w.map_or(0, |(last, _)| last);
        if let Some((_, at)) = *w
            && !force
            && (g <= last || at.elapsed() < STATE_EVERY)
        {
            return Ok(());
        }
        let g = g.max(last);
        guard::write_state(
            &self.path,
            &guard::StoreState::new(g, false, Default::default()),
        )?;
        *w = Some((g, std::time::Instant::now()));
        Ok(())
    }

    /// Records a clean stop: the generation on disk and the record counts.
    fn record_clean(&self) -> Result<()> {
        let mut w = self.state_written.lock().unwrap_or_else(|p| p.into_inner());
        // Held across the flush: no generation is handed out that this flush might miss.
        let g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        self.db.flush()?;
        self.sync_sled()?;
        let g = *g;
        guard::write_state(
            &self.path,
            &guard::StoreState::new(g, true, self.trees.counts()),
        )
        .map_err(|e| StoreError::Wal {
            path: guard::state_path(&self.path),
            source: e,
        })?;
        *w = Some((g, std::time::Instant::now()));
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
/// The flush generation (u64 BE), bumped before every flush Corral makes (see `guard`).
const GENERATION_KEY: &[u8] = b"flush_generation";

fn read_generation(meta: &sled::Tree) -> Result<u64> {
    match meta.get(GENERATION_KEY)? {
        None => Ok(0),
        Some(v) => {
            let b: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                tree: "meta",
                detail: "flush_generation is not 8 bytes".into(),
            })?;
            Ok(u64::from_be_bytes(b))
        }
    }
}

/// Opens sled, turning the ways it reports damage (errors, and panics on some corruptions)
/// into `StoreError::Damaged`.
fn open_sled(path: &Path, cache: u64) -> Result<sled::Db> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cache)
        // Durability comes from our group commit, never from a timer.
        .flush_every_ms(None);
    guarded_open(path, || config.open())
}

/// Runs sled's `open`, turning the ways it reports a damaged store (corruption errors, I/O
/// errors on unreadable data, and panics: one flipped byte can make sled panic while it reads
/// its log) into `StoreError::Damaged`, so that a damaged store is a clear refusal rather than
/// a crash on every start.
fn guarded_open(path: &Path, open: impl FnOnce() -> sled::Result<sled::Db>) -> Result<sled::Db> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(open));
    let damaged = |what: String| StoreError::Damaged {
        path: path.to_path_buf(),
        what,
    };
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)))) => Err(
            damaged(format!("the storage engine found corrupted data ({e})")),
        ),
        Ok(Err(sled::Error::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Err(damaged(format!(
                "the storage engine found corrupted data ({e})"
            )))
        }
        Ok(Err(e)) => Err(StoreError::Open {
            path: path.to_path_buf(),
            source: e,
        }),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(damaged(format!(
                "the storage engine failed while reading it ({msg})"
            )))
        }
    }
}

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
                ..Default::default()
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

    #[test]
    fn a_panic_inside_sled_on_open_is_a_damaged_store_not_a_crash() {
        let path = Path::new("/nowhere/store");
        let err =
            guarded_open(path, || panic!("tried to serialize Uninitialized")).expect_err("refused");
        assert!(
            matches!(&err, StoreError::Damaged { what, .. } if what.contains("tried to serialize Uninitialized")),
            "{err:?}"
        );
        let err = guarded_open(path, || Err(sled::Error::Corruption { at: None, bt: () }))
            .expect_err("refused");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    }

    /// Single flipped bytes across sled's file: every open returns (a store or a refusal);
    /// none panics past the guard.
    #[test]
    fn flipped_bytes_in_sleds_file_never_crash_the_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        {
            let db = open_sled(&src, 1 << 20).expect("open");
            for i in 0..2000u32 {
                db.insert(i.to_be_bytes(), vec![i as u8; 40])
                    .expect("insert");
            }
            db.flush().expect("flush");
        }
        let len = std::fs::metadata(src.join("db")).expect("db").len();
        for n in 1..32u64 {
            let copy = dir.path().join(format!("copy{n}"));
            std::fs::create_dir_all(&copy).expect("mkdir");
            for e in std::fs::read_dir(&src).expect("list").flatten() {
                if e.path().is_file() {
                    std::fs::copy(e.path(), copy.join(e.file_name())).expect("copy");
                }
            }
            let at = len * n / 32;
            let mut bytes = std::fs::read(copy.join("db")).expect("read");
            bytes[at as usize] ^= 0xff;
            std::fs::write(copy.join("db"), &bytes).expect("write");
            let _ = open_sled(&copy, 1 << 20);
        }
    }

    #[tokio::test]
    async fn new_store_records_schema_version_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let opts = || StoreOptions {
            cache_capacity_bytes: 1 << 20,
            group_commit_delay: Duration::ZERO,
            ..Default::default()
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
                ..Default::default()
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
            ..Default::default()
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
        // The store as it was before the upgrade, kept where a rollback finds it.
        let snaps: Vec<_> = std::fs::read_dir(dir.path().join("backups"))
            .expect("backups")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(snaps.len(), 1, "{snaps:?}");
        assert!(
            snaps[0]
                .to_string_lossy()
                .contains(&format!("pre-migration-v2-to-v{SCHEMA_VERSION}"))
        );
        let snap = backup::check(&snaps[0]).expect("a good backup");
        assert_eq!(snap.manifest.schema_version, 2);
        assert_eq!(snap.manifest.records("ts"), 500);
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
                ..Default::default()
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
