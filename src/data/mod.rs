//! The data service: ingesting device telemetry (parse, check the key caps, store, make
//! durable, announce) and reading it back (raw ranges, latest values, tags); aggregation is in
//! `aggregate`, the key caps in `keys`. Reads here are blocking: REST handlers call them on
//! blocking threads.

pub mod aggregate;
pub mod clock;
pub mod counts;
pub mod export;
pub mod keys;
pub mod retention;
pub mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::devices::protocol::{self, PayloadError, Telemetry};
use crate::events::{Event, EventBus};
use crate::integrations::Router;
use crate::metrics::{Metrics, ReasonLabel};
use crate::model::{DEFAULT_TAG, DeviceId, Millis, Point, now_ms};
use crate::store::ports::{PointsOp, RawPage, RawQuery, SeriesKey, StoreError, TelemetryStore};
use keys::{GateError, KeyGate, KeyRefusal};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// Over a key cap: nothing of the message is stored.
    #[error(transparent)]
    Keys(#[from] KeyRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// As the domain error: a refused payload or key is invalid input (nothing of the message
/// was stored); a store failure keeps its kind (a full disk, say).
impl From<IngestError> for crate::error::Error {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Store(e) => Self::Store(e),
            other => Self::invalid("payload", other.to_string()),
        }
    }
}

impl From<GateError> for IngestError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Refused(r) => IngestError::Keys(r),
            GateError::Store(e) => IngestError::Store(e),
        }
    }
}

/// Whether the caller needs the data on disk before it answers (QoS 1, HTTP 200) or not (QoS 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Durable,
    BestEffort,
}

#[derive(Clone)]
pub struct DataService {
    store: Arc<dyn TelemetryStore>,
    events: EventBus,
    metrics: Arc<Metrics>,
    /// Integration queues a message goes to, resolved before it is logged.
    router: Arc<Router>,
    keys: KeyGate,
    /// Timestamps for points sent without `ts`, strictly increasing per device.
    clock: Arc<clock::DeviceClock>,
    /// Messages stored per device since the overview's rates last took them.
    counts: Arc<counts::StoredCounts>,
}

/// Disk used by the whole store.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoreUsage {
    /// The database (sled) on disk.
    pub store_bytes: u64,
    /// The write-ahead log not yet checkpointed.
    pub wal_bytes: u64,
    /// Version of the store's on-disk layout.
    pub schema_version: u32,
}

impl DataService {
    /// Deletes what each workspace no longer keeps (blocking: call it off the async threads).
    pub async fn retention_sweep(
        &self,
        registry: &crate::devices::Registry,
        default_days: u32,
    ) -> Result<retention::SweepReport, crate::error::Error> {
        retention::sweep(&*self.store, registry, default_days).await
    }

    /// A workspace's telemetry usage (blocking).
    pub async fn workspace_usage(
        &self,
        registry: &crate::devices::Registry,
        id: crate::model::WorkspaceId,
    ) -> Result<retention::WorkspaceUsage, crate::error::Error> {
        retention::usage(&*self.store, registry, id).await
    }

    /// Disk used by the store and its log (blocking: it walks the files).
    pub async fn store_usage(&self) -> Result<StoreUsage, crate::error::Error> {
        let f = self.store.footprint().await?;
        Ok(StoreUsage {
            store_bytes: f.store_bytes,
            wal_bytes: f.wal_bytes,
            schema_version: f.schema_version,
        })
    }

    /// The store's size on disk (for the metrics).
    pub async fn store_size(&self) -> Result<u64, StoreError> {
        Ok(self.store.footprint().await?.store_bytes)
    }

    /// Streams an export in bounded memory (see `export`).
    pub fn export(
        &self,
        spec: export::ExportSpec,
    ) -> tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>> {
        export::spawn(self.store.clone(), spec)
    }

    pub fn new(
        store: Arc<dyn TelemetryStore>,
        events: EventBus,
        metrics: Arc<Metrics>,
        router: Arc<Router>,
        keys: KeyGate,
    ) -> Self {
        Self {
            store,
            events,
            metrics,
            router,
            keys,
            clock: Arc::default(),
            counts: Arc::default(),
        }
    }

    /// The telemetry messages stored per device since the last call (exact, for the
    /// overview's message rates).
    pub fn take_stored_counts(&self) -> Vec<(DeviceId, u32)> {
        self.counts.take()
    }

    /// Parses and stores a telemetry payload of `device`. With `Durability::Durable` it returns
    /// only once the data is on disk. A payload error stores nothing.
    pub async fn ingest_telemetry(
        &self,
        device: DeviceId,
        payload: &[u8],
        durability: Durability,
    ) -> Result<usize, IngestError> {
        let telemetry = Self::parse_telemetry(payload)?;
        self.store_telemetry(device, telemetry, durability).await
    }

    /// Parses a telemetry payload (thingsboard-device-api.md §4). Points without `ts` get the
    /// server's time when they are stored (`clock`). Transports parse first and then drop the
    /// payload before waiting for the store: a payload often shares, and would pin, a whole
    /// network read buffer.
    pub fn parse_telemetry(payload: &[u8]) -> Result<Telemetry, PayloadError> {
        protocol::parse_telemetry(payload, clock::SERVER_TIME)
    }

    /// Stores parsed telemetry under the default tag; see `ingest_telemetry`.
    pub async fn store_telemetry(
        &self,
        device: DeviceId,
        telemetry: Telemetry,
        durability: Durability,
    ) -> Result<usize, IngestError> {
        self.store_tagged(device, DEFAULT_TAG, telemetry, durability)
            .await
    }

    /// Stores parsed telemetry under `tag` (already checked with `protocol::check_tag`).
    pub async fn store_tagged(
        &self,
        device: DeviceId,
        tag: &str,
        mut telemetry: Telemetry,
        durability: Durability,
    ) -> Result<usize, IngestError> {
        if telemetry.is_empty() {
            return Ok(0);
        }
        // One stamp per message, strictly after the device's last one: every acknowledged
        // message is kept, and the items of one message share their instant.
        if telemetry.iter().any(|(ts, _)| *ts == clock::SERVER_TIME) {
            let ts = self.clock.stamp(device, now_ms());
            for (t, _) in telemetry
                .iter_mut()
                .filter(|(t, _)| *t == clock::SERVER_TIME)
            {
                *t = ts;
            }
        }
        // Held until the points are stored, when the store's series count includes them.
        let _reservation = self
            .keys
            .admit(&*self.store, device, tag, &telemetry)
            .await
            .map_err(IngestError::from)
            .inspect_err(|e| {
                if let IngestError::Keys(r) = e {
                    // Counted here, once for every transport.
                    self.metrics
                        .publish_rejected
                        .get_or_create(&ReasonLabel { reason: r.code() })
                        .inc();
                    tracing::info!(device = %device, error = %r, "telemetry refused by a key cap");
                }
            })?;
        // The matching integrations' queue entries go into the same logged record, so an
        // acknowledged message is in its queues whenever it is in the store.
        let queue = self.router.data(device, tag, &telemetry).await;
        // Logged and applied on the store's writer thread: no runtime thread blocks on disk.
        let op = PointsOp {
            device,
            tag: tag.into(),
            points: telemetry,
        };
        let n = self
            .store
            .append_points(op, queue, durability == Durability::Durable)
            .await?;
        self.metrics.points_stored.inc_by(n as u64);
        self.metrics.telemetry_messages.inc();
        self.counts.add(device);
        self.events.publish(Event::TelemetryStored {
            device_id: device,
            tag: tag.into(),
            values: n,
        });
        Ok(n)
    }

    pub async fn raw(
        &self,
        device: DeviceId,
        q: &RawQuery,
    ) -> Result<RawPage, crate::error::Error> {
        Ok(self.store.raw(device, q).await?)
    }

    pub async fn latest(
        &self,
        device: DeviceId,
        tag: &str,
        keys: Option<&[String]>,
    ) -> Result<Vec<(String, Point)>, crate::error::Error> {
        Ok(self.store.latest(device, tag, keys).await?)
    }

    pub async fn series(&self, device: DeviceId) -> Result<Vec<SeriesKey>, crate::error::Error> {
        Ok(self.store.device_series(device).await?)
    }

    /// The tags of the given devices with their keys, merged and sorted. Linear in the
    /// series read (each merged into ordered sets); `Err(TooMany)` once more than `max`
    /// distinct keys are found, so a request's work and answer stay bounded.
    pub async fn tags(
        &self,
        devices: &[DeviceId],
        max: usize,
    ) -> Result<BTreeMap<String, Vec<String>>, TagsError> {
        let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut n = 0;
        for d in devices {
            for s in self.store.device_series(*d).await? {
                if sets.entry(s.tag).or_default().insert(s.key) {
                    n += 1;
                    if n > max {
                        return Err(TagsError::TooMany(max));
                    }
                }
            }
        }
        Ok(sets
            .into_iter()
            .map(|(tag, keys)| (tag, keys.into_iter().collect()))
            .collect())
    }

    /// The keys of one tag across the given devices, sorted, at most `max` of them.
    pub async fn tag_keys(
        &self,
        devices: &[DeviceId],
        tag: &str,
        max: usize,
    ) -> Result<Vec<String>, TagsError> {
        let mut keys = BTreeSet::new();
        for d in devices {
            for k in self.store.tag_keys(*d, tag).await? {
                if keys.insert(k) && keys.len() > max {
                    return Err(TagsError::TooMany(max));
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Aggregates; see `aggregate::aggregate`. `keys` defaults to every key of the tag.
    pub async fn aggregate(
        &self,
        devices: &[DeviceId],
        tag: &str,
        keys: Option<Vec<String>>,
        bounds: &[Millis],
        from: Millis,
        to: Millis,
    ) -> Result<BTreeMap<String, Vec<aggregate::Bucket>>, aggregate::AggError> {
        let buckets = bounds.len().saturating_sub(1).max(1);
        // The answer holds keys × buckets cells: refuse before reading what it cannot hold.
        let max_keys = aggregate::MAX_CELLS / buckets;
        let keys = match keys {
            Some(mut k) => {
                k.sort();
                k.dedup();
                k
            }
            None => self
                .tag_keys(devices, tag, max_keys)
                .await
                .map_err(|e| match e {
                    TagsError::TooMany(_) => aggregate::AggError::TooManySeries {
                        keys: None,
                        buckets,
                    },
                    TagsError::Store(e) => aggregate::AggError::Store(e),
                })?,
        };
        if keys.len() > max_keys {
            return Err(aggregate::AggError::TooManySeries {
                keys: Some(keys.len()),
                buckets,
            });
        }
        aggregate::aggregate(&*self.store, devices, tag, &keys, bounds, from, to).await
    }
}

/// Why a tag listing was not answered.
#[derive(Debug, thiserror::Error)]
pub enum TagsError {
    #[error("more than {0} distinct keys; list one tag at a time (tag=)")]
    TooMany(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Default time window of a raw query when `from` is not given: the last 24 hours.
pub const DEFAULT_WINDOW_MS: Millis = 24 * 3600 * 1000;
