//! The storage ports: what each area of Corral needs from storage, stated as one trait per
//! area in the area's own domain types (records from `model`, opaque `Cursor`s, typed keys).
//! Services hold these traits (`Arc<dyn RegistryStore>`, ...), never the engine: `store/`
//! implements each once for sled, and a second engine implements the same traits without any
//! service changing.
//!
//! Three rules shape every trait here:
//! - **No engine vocabulary.** No byte keys, no sled types, no tree names: a key is a record's
//!   id or a typed value (`AttributeOwner`, `CredentialKey`), a page position is the `Cursor`
//!   the engine handed out.
//! - **Durability is explicit.** Writes become durable at the area's unit of work: `commit`
//!   for the registry-like areas (one flush covers every write before it), `write_logged`
//!   returning a `Mark` for the job area, `append_points` for device data. A transport
//!   acknowledges only after the matching await.
//! - **Every storage operation is a future** (`Fut`), reads included: a network engine
//!   answers each after a round trip, and a service awaits it without holding a thread. The
//!   sled engine answers at once (its futures are ready when returned); where its reads may
//!   grow with the data (sweeps, exports, aggregates, dashboards) the services run them on
//!   the blocking pool (`workers::on_blocking_pool`). What stays synchronous is what an engine
//!   keeps in memory whatever it is: live queue counters, the per-device series count of the
//!   key cap, the job log's last mark, and writes handed to the engine to apply in the
//!   background (`*_later`), which never wait.
//! - **Predicates are `Sync`** (`&(dyn Fn(&T) -> bool + Sync)`): a listing's filter may be
//!   applied by an engine while it waits for the next rows.
//! - **The job area's unit of work collects writes** (`JobWriter`) and the engine applies
//!   them atomically; reads it needs come before it, so a network engine sends the writes in
//!   one transaction.

use futures_util::future::BoxFuture;

mod attributes;
mod campaigns;
mod conditions;
mod dashboards;
mod identity;
mod integrations;
mod jobs;
mod operators;
mod packages;
mod registry;
mod telemetry;

pub use attributes::AttributeStore;
pub use campaigns::CampaignStore;
pub use conditions::ConditionStore;
pub use dashboards::DashboardStore;
pub use identity::IdentityStore;
pub use integrations::IntegrationStore;
pub use jobs::{JobStore, JobWriter};
pub use operators::OperatorStore;
pub use packages::PackageStore;
pub use registry::RegistryStore;
pub use telemetry::{StoreFootprint, TelemetryStore};

pub use super::{
    Agg, ConditionScan, CredentialClash, CredentialKey, DeadLetter, DeviceClash, Enqueue, Mark,
    Moved, NameClash, Points, PointsOp, QueueEntry, QueueStats, SeriesKey, StoreError,
};
pub use crate::model::{Cursor, Page, RawPage, RawQuery, Scope};

/// What every port returns.
pub type Result<T> = std::result::Result<T, StoreError>;

/// What a port operation returns: a future of its result, borrowing what it was given.
pub type Fut<'a, T> = BoxFuture<'a, Result<T>>;

/// The unit of work every area shares: one call makes every write of any area made before it
/// durable. Services call it once per operation, after all of the operation's writes and
/// before they answer.
pub trait Durable: Send + Sync {
    /// Makes every write made before this call durable.
    fn commit(&self) -> BoxFuture<'_, Result<()>>;
}

/// Every port of one engine, built once by the app and handed to each service.
#[derive(Clone)]
pub struct Ports {
    pub registry: std::sync::Arc<dyn RegistryStore>,
    pub identity: std::sync::Arc<dyn IdentityStore>,
    pub attributes: std::sync::Arc<dyn AttributeStore>,
    pub telemetry: std::sync::Arc<dyn TelemetryStore>,
    pub jobs: std::sync::Arc<dyn JobStore>,
    pub conditions: std::sync::Arc<dyn ConditionStore>,
    pub integrations: std::sync::Arc<dyn IntegrationStore>,
    pub operators: std::sync::Arc<dyn OperatorStore>,
    pub packages: std::sync::Arc<dyn PackageStore>,
    pub campaigns: std::sync::Arc<dyn CampaignStore>,
    pub dashboards: std::sync::Arc<dyn DashboardStore>,
    pub backup: std::sync::Arc<dyn BackupStore>,
}

/// Online backups of the whole store, taken while it keeps serving.
pub trait BackupStore: Send + Sync {
    /// Writes a consistent copy of the store, with `extras` (files besides it), to `out`.
    fn backup(
        &self,
        extras: Vec<Extra>,
        out: Box<dyn std::io::Write + Send>,
    ) -> BoxFuture<'_, std::result::Result<Manifest, BackupError>>;
    /// Bytes the store occupies on disk (what a backup will roughly take).
    fn size_on_disk(&self) -> Fut<'_, u64>;
}

pub use super::backup::{BackupError, Extra, Manifest, data_dir_files};
pub use super::guard::free_bytes;
