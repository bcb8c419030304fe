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
//! - **Waiting for durability is async.** What may wait on the disk (a commit, a logged
//!   write's mark, device data, deleting a device's points, an integration's queue) returns a
//!   future, so a service awaits it off any thread it would stall. Reads are synchronous: the
//!   embedded engine answers them from its page cache. A network engine needs them async too;
//!   the traits are object-safe and ready for that change, which reaches every service's read
//!   path and belongs to the step that adds such an engine.

use futures_util::future::BoxFuture;

mod attributes;
mod conditions;
mod identity;
mod integrations;
mod jobs;
mod operators;
mod registry;
mod telemetry;

pub use attributes::AttributeStore;
pub use conditions::ConditionStore;
pub use identity::IdentityStore;
pub use integrations::IntegrationStore;
pub use jobs::{JobStore, JobWriter};
pub use operators::OperatorStore;
pub use registry::RegistryStore;
pub use telemetry::{StoreFootprint, TelemetryStore};

pub use super::{
    Agg, ConditionScan, CredentialClash, CredentialKey, DeadLetter, DeviceClash, Enqueue, Mark,
    Moved, NameClash, Points, PointsOp, QueueEntry, QueueStats, SeriesKey, StoreError,
};
pub use crate::model::{Cursor, Page, RawPage, RawQuery, Scope};

/// What every port returns.
pub type Result<T> = std::result::Result<T, StoreError>;

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
    fn size_on_disk(&self) -> Result<u64>;
}

pub use super::backup::{BackupError, Extra, Manifest, data_dir_files};
pub use super::guard::free_bytes;
