//! The telemetry area's storage: points per series (device, tag, key), hourly rollups, and
//! what the engine occupies.

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::{Agg, Durable, Enqueue, Fut, PointsOp, RawPage, RawQuery, Result, SeriesKey};
use crate::model::{DeviceId, Millis, Point, Value};

/// What the store occupies on disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreFootprint {
    pub store_bytes: u64,
    /// The write-ahead log (for an engine that keeps one apart).
    pub wal_bytes: u64,
    pub schema_version: u32,
}

pub trait TelemetryStore: Durable {
    /// Stores one device's points and adds `queue` to integration queues in the same durable
    /// write. With `durable`, resolves once both are on disk; otherwise once applied (durable
    /// with the next sync). Returns the number of values stored.
    fn append_points(
        &self,
        op: PointsOp,
        queue: Option<Enqueue>,
        durable: bool,
    ) -> BoxFuture<'_, Result<usize>>;

    /// The newest point of each key of a tag (only `keys` when given).
    fn latest<'a>(
        &'a self,
        device: DeviceId,
        tag: &'a str,
        keys: Option<&'a [String]>,
    ) -> Fut<'a, Vec<(String, Point)>>;
    /// One page of raw points.
    fn raw<'a>(&'a self, device: DeviceId, q: &'a RawQuery) -> Fut<'a, RawPage>;
    /// Aggregates of one series over the buckets `bounds` delimits within `from..to`.
    fn aggregate<'a>(
        &'a self,
        device: DeviceId,
        tag: &'a str,
        key: &'a str,
        bounds: &'a [Millis],
        from: Millis,
        to: Millis,
    ) -> Fut<'a, Vec<Agg>>;
    /// Points of one series within `from..to`, oldest first, read lazily.
    fn scan_series(
        &self,
        device: DeviceId,
        tag: &str,
        key: &str,
        from: Millis,
        to: Millis,
    ) -> BoxStream<'static, Result<(Millis, Value)>>;

    fn device_series<'a>(&'a self, device: DeviceId) -> Fut<'a, Vec<SeriesKey>>;
    fn tag_keys<'a>(&'a self, device: DeviceId, tag: &'a str) -> Fut<'a, Vec<String>>;
    fn has_series<'a>(&'a self, device: DeviceId, tag: &'a str, key: &'a str) -> Fut<'a, bool>;
    /// How many series the device has (for the per-device key cap).
    fn series_count(&self, device: DeviceId) -> usize;
    fn series_points<'a>(&'a self, device: DeviceId, tag: &'a str, key: &'a str) -> Fut<'a, u64>;
    fn series_is_empty<'a>(&'a self, device: DeviceId, tag: &'a str, key: &'a str)
    -> Fut<'a, bool>;

    /// Deletes a series' points older than `cutoff`; returns how many.
    fn delete_series_before<'a>(
        &'a self,
        device: DeviceId,
        tag: &'a str,
        key: &'a str,
        cutoff: Millis,
    ) -> Fut<'a, u64>;
    /// Forgets a series that has no points left.
    fn forget_series_if_empty(&self, device: DeviceId, tag: &str, key: &str);

    /// What the store occupies (blocking: it may walk files).
    fn footprint(&self) -> Fut<'_, StoreFootprint>;
}
