//! Telemetry time series. Layout: `ts` holds `device ‖ tag ‖ key ‖ ts → value`, so one series
//! is one contiguous, time-ordered range, and its latest point is the last key of that range;
//! `series` holds `device ‖ tag ‖ key → ()`, the directory of a device's series, written only
//! when a series first appears so that ingest costs one write per value; `rollup_h` holds
//! `device ‖ tag ‖ key ‖ hour → Agg`, hourly count/sum/min/max maintained on ingest, so that an
//! aggregate over 30 days reads 720 records instead of 43,200 points. How many series each
//! device has is kept in memory (`SeriesCounts`: counted from `series` at open, kept by the
//! writer thread), so that the per-device key cap costs no scan per message.
//!
//! Ingest at many devices: a sled insert copies the leaf it lands in, and with one series per
//! key range, thousands of devices each sending one message put every value of a group in a
//! different, cold leaf (130-190 µs of store CPU per message at 10,000 devices against 7 µs at
//! 10; `benches/store_ingest.rs`). So a device's in-order points and their rollup additions
//! wait in memory (`Pending`, per device) and reach sled together, a device's points as one
//! run of inserts into the same few leaves: once the device has `PENDING_PER_DEVICE` values
//! waiting, some others while `PENDING_TOTAL` wait, a few a group of those logged before the
//! last checkpoint (a checkpoint keeps the log segments of points still waiting), and before a
//! backup pin and a checkpoint asked for (a clean stop). The log already holds them (that is what the
//! acknowledgement waits for), and replay after a crash stages them again. Every read of a device's telemetry first settles
//! that device's waiting writes, under the same lock, so a read never misses an acknowledged
//! point; the layout on disk is unchanged.
//!
//! Rollups stay exact: a point newer than its series' last point adds to its hour; a point at
//! the same millisecond replaces the last one, whose value is remembered, so the hour trades
//! one value for the other (recomputed only if the replaced value was the hour's min or max);
//! any other point (out of order, a replayed log record) marks its hour dirty, and a dirty
//! hour is recomputed from the raw points once the batch is applied.

use std::collections::{HashMap, HashSet};

use super::codec::{decode_value, encode_value, push_str, read_str, ts_bytes, ts_from};
use super::{Db, RawPage, RawQuery, Result, StoreError};
use crate::model::{DeviceId, Millis, Point, Value};

/// One hour, in ms.
pub const HOUR_MS: Millis = 3_600_000;

/// Count, sum, min and max of a set of values. `count` counts every value; the others cover
/// the numeric ones (longs and doubles) only. How many values equal the min and the max is
/// kept too, so that taking a value out (a replaced point) stays exact unless it was the last
/// one at an extreme.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub count: u64,
    pub numeric: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub min_count: u64,
    pub max_count: u64,
}

impl Default for Agg {
    fn default() -> Self {
        Self {
            count: 0,
            numeric: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            min_count: 0,
            max_count: 0,
        }
    }
}

impl Agg {
    pub fn add(&mut self, v: &Value) {
        self.count += 1;
        if let Some(x) = numeric(v) {
            self.add_numeric(x, 1);
        }
    }

    fn add_numeric(&mut self, x: f64, n: u64) {
        self.numeric += n;
        self.sum += x * n as f64;
        self.fold_extremes(x, n, x, n);
    }

    fn fold_extremes(&mut self, min: f64, min_n: u64, max: f64, max_n: u64) {
        if min_n > 0 {
            if min < self.min {
                (self.min, self.min_count) = (min, min_n);
            } else if min == self.min {
                self.min_count += min_n;
            }
        }
        if max_n > 0 {
            if max > self.max {
                (self.max, self.max_count) = (max, max_n);
            } else if max == self.max {
                self.max_count += max_n;
            }
        }
    }

    pub fn merge(&mut self, o: &Agg) {
        self.count += o.count;
        self.numeric += o.numeric;
        self.sum += o.sum;
        self.fold_extremes(o.min, o.min_count, o.max, o.max_count);
    }

    /// Takes one value out (`None`: a non-numeric one). False when the result is unknown
    /// (the value was the last one at the min or the max, or was never in): recompute then.
    fn remove(&mut self, v: Option<f64>) -> bool {
        if self.count == 0 {
            return false;
        }
        self.count -= 1;
        let Some(x) = v else {
            return true;
        };
        if self.numeric == 0 || x < self.min || x > self.max {
            return false;
        }
        self.numeric -= 1;
        self.sum -= x;
        if self.numeric == 0 {
            *self = Agg {
                count: self.count,
                ..Agg::default()
            };
            return true;
        }
        for (extreme, n) in [
            (self.min, &mut self.min_count),
            (self.max, &mut self.max_count),
        ] {
            if x == extreme {
                if *n <= 1 {
                    return false;
                }
                *n -= 1;
            }
        }
        true
    }

    pub(super) fn encode(&self) -> [u8; 56] {
        let mut b = [0u8; 56];
        b[0..8].copy_from_slice(&self.count.to_be_bytes());
        b[8..16].copy_from_slice(&self.numeric.to_be_bytes());
        b[16..24].copy_from_slice(&self.sum.to_be_bytes());
        b[24..32].copy_from_slice(&self.min.to_be_bytes());
        b[32..40].copy_from_slice(&self.max.to_be_bytes());
        b[40..48].copy_from_slice(&self.min_count.to_be_bytes());
        b[48..56].copy_from_slice(&self.max_count.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Agg> {
        let f = |i: usize| -> Result<[u8; 8]> {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| corrupt("rollup"))
        };
        Ok(Agg {
            count: u64::from_be_bytes(f(0)?),
            numeric: u64::from_be_bytes(f(8)?),
            sum: f64::from_be_bytes(f(16)?),
            min: f64::from_be_bytes(f(24)?),
            max: f64::from_be_bytes(f(32)?),
            min_count: u64::from_be_bytes(f(40)?),
            max_count: u64::from_be_bytes(f(48)?),
        })
    }
}

/// Start of the UTC hour holding `ts`.
pub fn hour_of(ts: Millis) -> Millis {
    ts.div_euclid(HOUR_MS) * HOUR_MS
}

/// The newest point of a series, as the writer thread last wrote it.
#[derive(Debug, Clone, Copy)]
pub struct LastPoint {
    ts: Millis,
    /// Its value when numeric (what a replacement at the same millisecond takes out).
    numeric: Option<f64>,
}

fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Long(l) => Some(*l as f64),
        Value::Double(d) if d.is_finite() => Some(*d),
        _ => None,
    }
}

/// How a group changes one hour: values added, and values replaced (taken out after the
/// additions; `None` for a non-numeric value).
#[derive(Debug, Default)]
struct Delta {
    added: Agg,
    removed: Vec<Option<f64>>,
}

/// Writes gathered by the writer thread for one group: the raw points as one sled batch, and
/// the rollup changes they imply.
#[derive(Default)]
pub struct Staged {
    batch: sled::Batch,
    /// Points in `batch`: an empty group touches nothing (see `apply_points`).
    points: usize,
    /// `series ‖ hour` → what the group's points change.
    deltas: HashMap<Vec<u8>, Delta>,
    /// `series ‖ hour` to recompute from raw points after the batch is applied.
    dirty: HashSet<Vec<u8>>,
}

/// One series of a device: a key under a tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub tag: String,
    pub key: String,
}

/// Series remembered as registered; past this the memory is given back and relearnt.
const SERIES_CACHE_MAX: usize = 1 << 20;

/// How many series (keys, across tags) each device has in the `series` directory. Counted once
/// at open, then kept exact by the only places that change the directory: the writer thread
/// registering a series, a device's deletion, and the removal of a series retention emptied.
#[derive(Debug, Default)]
pub struct SeriesCounts(std::sync::Mutex<HashMap<DeviceId, usize>>);

impl SeriesCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, device: DeviceId) {
        *self.lock().entry(device).or_default() += 1;
    }

    fn remove_one(&self, device: DeviceId) {
        let mut m = self.lock();
        if let Some(n) = m.get_mut(&device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&device);
            }
        }
    }
}

/// Values a device may have waiting before they are written to sled.
const PENDING_PER_DEVICE: usize = 48;
/// Values waiting across every device before some are written regardless of their count
/// (`PENDING_SLICE` per group): bounds the memory they take.
const PENDING_TOTAL: usize = 1 << 18;
/// Values written in one sled batch when many devices' waiting writes go at once: sled's
/// batches take a process-wide write lock that every other store access waits behind.
const PENDING_SLICE: usize = 8192;
/// Stale waiting values (see `PendingInner::stale`) a group writes: a few at a time, so that
/// no group holds device messages for long (a value costs up to ~100 µs in sled with 10,000
/// devices), and still done well within a checkpoint interval.
const PENDING_STALE_PER_GROUP: usize = 256;

/// One device's in-order points (sled keys and encoded values) and the rollup additions they
/// make (`series ‖ hour` → values added), not yet in sled.
#[derive(Default)]
struct DeviceWrites {
    points: Vec<(Vec<u8>, Vec<u8>)>,
    rollups: HashMap<Vec<u8>, Agg>,
    /// The log segment that holds the oldest of them: a checkpoint keeps it and every later
    /// one until they are in sled.
    first_segment: u64,
}

/// Telemetry writes waiting in memory (see the module header). One lock: the writer takes
/// it once per group, a reader once per device it reads.
#[derive(Default)]
pub struct Pending {
    inner: std::sync::Mutex<PendingInner>,
    /// Why writing waiting values failed, if it did: the writer then refuses new data and
    /// keeps its log, as for any write sled refused (see `commit::write_loop`).
    failed: std::sync::Mutex<Option<String>>,
}

#[derive(Default)]
struct PendingInner {
    devices: HashMap<DeviceId, DeviceWrites>,
    values: usize,
    /// Devices that reached `PENDING_PER_DEVICE` since the last group was applied.
    due: Vec<DeviceId>,
    /// The log segment the writer appends to now (see `DeviceWrites::first_segment`).
    segment: u64,
    /// Devices whose waiting points were logged before the last checkpoint: they keep old
    /// segments, so each group writes a few of them (`PENDING_STALE_PER_GROUP` values).
    stale: Vec<DeviceId>,
    /// The segment the last checkpoint began; waiting points logged before it are stale.
    checkpointed: u64,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why writing waiting values to sled failed, if it did.
    pub(super) fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn series_prefix(device: DeviceId, tag: &str) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    push_str(&mut k, tag);
    k
}

fn series_key(device: DeviceId, tag: &str, key: &str) -> Vec<u8> {
    let mut k = series_prefix(device, tag);
    push_str(&mut k, key);
    k
}

impl Db {
    /// Writes points of one tag: `(ts, [(key, value)])`. Not durable until the log or a flush
    /// covers it. Returns the number of values written.
    pub fn put_points(
        &self,
        device: DeviceId,
        tag: &str,
        points: &[(Millis, Vec<(String, Value)>)],
    ) -> Result<usize> {
        let mut staged = Staged::default();
        let n = self.stage_points(&mut staged, device, tag, points)?;
        self.apply_points(staged)?;
        Ok(n)
    }

    /// Adds points to a group's batch (applied by the caller, so many devices' points share
    /// one atomic sled batch) and gathers their rollup changes; registers series seen for the
    /// first time.
    pub(super) fn stage_points(
        &self,
        staged: &mut Staged,
        device: DeviceId,
        tag: &str,
        points: &[(Millis, Vec<(String, Value)>)],
    ) -> Result<usize> {
        let t = self.trees();
        let mut known = self.known_series.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        // This message's in-order values, handed to `Pending` at the end (one lock).
        let mut fresh = DeviceWrites::default();
        for (ts, values) in points {
            for (key, value) in values {
                let mut k = series_key(device, tag, key);
                let series_len = k.len();
                let last = match known.get_mut(&k) {
                    Some(last) => last,
                    None => {
                        // First sight in this process: register the series, or learn its
                        // newest point, from sled once the device's waiting writes are in.
                        self.park(device, std::mem::take(&mut fresh));
                        self.settle(device)?;
                        let mut last = LastPoint {
                            ts: Millis::MIN,
                            numeric: None,
                        };
                        if t.series.contains_key(&k)? {
                            if let Some(kv) = t.ts.scan_prefix(&k).next_back() {
                                let (lk, lv) = kv?;
                                last.ts = ts_from(&lk[series_len..]).unwrap_or(Millis::MAX);
                                last.numeric = numeric(&decode_value(&lv)?);
                            }
                        } else {
                            t.series.insert(k.as_slice(), &[])?;
                            self.series_counts.add(device);
                        }
                        if known.len() >= SERIES_CACHE_MAX {
                            known.clear();
                        }
                        known.entry(k.clone()).or_insert(last)
                    }
                };
                let mut bucket = k.clone();
                bucket.extend_from_slice(&ts_bytes(hour_of(*ts)));
                k.truncate(series_len);
                k.extend_from_slice(&ts_bytes(*ts));
                let mut v = Vec::with_capacity(16);
                encode_value(&mut v, value);
                n += 1;
                if *ts > last.ts {
                    *last = LastPoint {
                        ts: *ts,
                        numeric: numeric(value),
                    };
                    fresh.rollups.entry(bucket).or_default().add(value);
                    fresh.points.push((k, v));
                    continue;
                }
                // A replacement or an out-of-order point is judged against what sled holds,
                // so the device's waiting writes go in first.
                self.park(device, std::mem::take(&mut fresh));
                self.settle(device)?;
                if *ts == last.ts {
                    // Replaces the newest point (two messages in one millisecond, or a
                    // re-sent message): trade its value for the new one. The same value, as
                    // in a re-sent message, changes nothing.
                    let new = numeric(value);
                    if new != last.numeric {
                        let d = staged.deltas.entry(bucket).or_default();
                        d.added.add(value);
                        d.removed.push(last.numeric);
                        last.numeric = new;
                    }
                } else {
                    // Out of order: only the raw points can tell what the hour holds.
                    staged.dirty.insert(bucket);
                }
                staged.batch.insert(k, v);
                staged.points += 1;
            }
        }
        self.park(device, fresh);
        Ok(n)
    }

    /// Adds a device's in-order writes to those waiting in memory.
    fn park(&self, device: DeviceId, writes: DeviceWrites) {
        if writes.points.is_empty() {
            return;
        }
        let mut p = self.pending.lock();
        p.values += writes.points.len();
        let segment = p.segment;
        let w = p.devices.entry(device).or_insert_with(|| DeviceWrites {
            first_segment: segment,
            ..Default::default()
        });
        let before = w.points.len();
        w.points.extend(writes.points);
        for (bucket, agg) in writes.rollups {
            w.rollups.entry(bucket).or_default().merge(&agg);
        }
        if before < PENDING_PER_DEVICE && w.points.len() >= PENDING_PER_DEVICE {
            p.due.push(device);
        }
    }

    /// Writes a device's waiting writes to sled, so that reading sled sees every point of it
    /// that was acknowledged. Holds the lock while it writes: a reader that finds nothing
    /// waiting must find it in sled.
    pub(super) fn settle(&self, device: DeviceId) -> Result<()> {
        let mut p = self.pending.lock();
        let Some(w) = p.devices.remove(&device) else {
            return Ok(());
        };
        p.values -= w.points.len();
        self.write_pending(vec![w])
    }

    /// Why writing waiting points to sled failed, if it did (see `Pending::failed`).
    pub(super) fn pending_failure(&self) -> Option<String> {
        self.pending.failure()
    }

    /// Writes every waiting write to sled: before the last checkpoint at shutdown, and before
    /// a backup pins the log from a point on.
    pub(super) fn settle_all(&self) -> Result<()> {
        let mut p = self.pending.lock();
        p.values = 0;
        p.due.clear();
        p.stale.clear();
        // In slices: each sled batch holds sled's process-wide write lock while it applies,
        // and every other read and write of the store, on any thread, waits behind it.
        let mut slice = Vec::new();
        let mut values = 0;
        for (_, w) in p.devices.drain() {
            values += w.points.len();
            slice.push(w);
            if values >= PENDING_SLICE {
                self.write_pending(std::mem::take(&mut slice))?;
                values = 0;
            }
        }
        self.write_pending(slice)
    }

    /// Records which log segment the writer appends to from now on.
    pub(super) fn logging_to(&self, segment: u64) {
        self.pending.lock().segment = segment;
    }

    /// A checkpoint begins segment `segment`: returns the oldest segment still holding a
    /// waiting point, which the checkpoint keeps (with every later one), and marks the devices
    /// whose points were logged before `segment` as stale, for the writer's next groups to
    /// write a few at a time. Writing every waiting point at the checkpoint instead held the
    /// writer, and every device message behind it, for 3-5 s with 10,000 devices.
    pub(super) fn checkpoint_begins(&self, segment: u64) -> Option<u64> {
        let mut p = self.pending.lock();
        p.checkpointed = segment;
        let stale: Vec<DeviceId> = p
            .devices
            .iter()
            .filter(|(_, w)| w.first_segment < segment)
            .map(|(d, _)| *d)
            .collect();
        p.stale = stale;
        p.devices.values().map(|w| w.first_segment).min()
    }

    /// Writes waiting writes: the points in one batch (in key order, so each series' run of
    /// points lands in the same few leaves), then their hours' rollups. Called with the
    /// `Pending` lock held, so no other rollup update of the same hour runs meanwhile. On a
    /// failure the writes stay in the log only, and the writer stops taking data until a
    /// restart replays it (`Pending::failure`).
    fn write_pending(&self, writes: Vec<DeviceWrites>) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let t = self.trees();
        let result: Result<()> = (|| {
            let mut batch = sled::Batch::default();
            let mut deltas: HashMap<Vec<u8>, Agg> = HashMap::new();
            for w in writes {
                for (k, v) in w.points {
                    batch.insert(k, v);
                }
                for (bucket, agg) in w.rollups {
                    deltas.entry(bucket).or_default().merge(&agg);
                }
            }
            t.ts.apply_batch(batch)?;
            let mut rollups = sled::Batch::default();
            for (bucket, delta) in deltas {
                let mut agg = match t.rollup_h.get(&bucket)? {
                    Some(v) => Agg::decode(&v)?,
                    None => Agg::default(),
                };
                agg.merge(&delta);
                rollups.insert(bucket, &agg.encode()[..]);
            }
            t.rollup_h.apply_batch(rollups)?;
            Ok(())
        })();
        if let Err(e) = &result {
            let mut failed = self
                .pending
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            failed.get_or_insert_with(|| e.to_string());
        }
        result
    }

    /// Applies a group staged with `stage_points`: the points, then their rollups; then
    /// writes the waiting writes of devices that have `PENDING_PER_DEVICE` values waiting,
    /// and of some others while `PENDING_TOTAL` wait.
    pub(super) fn apply_points(&self, staged: Staged) -> Result<()> {
        // Rollup updates of the group and of waiting writes must not interleave.
        let mut p = self.pending.lock();
        let ready = std::mem::take(&mut p.due);
        let mut due = Vec::with_capacity(ready.len());
        for d in ready {
            // A reader may have settled it since.
            if let Some(w) = p.devices.remove(&d) {
                p.values -= w.points.len();
                due.push(w);
            }
        }
        // A few stale devices (logged before the last checkpoint), so old segments can go.
        let mut stale_values = 0;
        while stale_values < PENDING_STALE_PER_GROUP {
            let Some(d) = p.stale.pop() else { break };
            let checkpointed = p.checkpointed;
            // Settled since, or waiting again from a later segment: not stale any more.
            if p.devices
                .get(&d)
                .is_some_and(|w| w.first_segment < checkpointed)
                && let Some(w) = p.devices.remove(&d)
            {
                p.values -= w.points.len();
                stale_values += w.points.len();
                due.push(w);
            }
        }
        if p.values >= PENDING_TOTAL {
            // A slice at a time, not everything at once (see `PENDING_SLICE`).
            let mut freed = 0;
            let slice = PENDING_SLICE;
            let some: Vec<DeviceId> = p
                .devices
                .iter()
                .take_while(|(_, w)| {
                    let more = freed < slice;
                    freed += w.points.len();
                    more
                })
                .map(|(d, _)| *d)
                .collect();
            for d in some {
                if let Some(w) = p.devices.remove(&d) {
                    p.values -= w.points.len();
                    due.push(w);
                }
            }
        }
        let written = self.write_pending(due);
        let applied = self.apply_staged(staged);
        drop(p);
        written.and(applied)
    }

    fn apply_staged(&self, staged: Staged) -> Result<()> {
        // Even an empty sled batch takes sled's exclusive write lock and seals a batch in its
        // log; the writer runs a group for every wake-up (a job save, a connection's
        // bookkeeping), most of them without points.
        if staged.points == 0 && staged.deltas.is_empty() && staged.dirty.is_empty() {
            return Ok(());
        }
        let t = self.trees();
        t.ts.apply_batch(staged.batch)?;
        let mut rollups = sled::Batch::default();
        let mut dirty = staged.dirty;
        for (bucket, delta) in staged.deltas {
            if dirty.contains(&bucket) {
                continue;
            }
            let mut agg = match t.rollup_h.get(&bucket)? {
                Some(v) => Agg::decode(&v)?,
                None => Agg::default(),
            };
            agg.merge(&delta.added);
            // A replaced value that was the hour's last one at an extreme leaves it unknown.
            if !delta.removed.iter().all(|v| agg.remove(*v)) {
                dirty.insert(bucket);
                continue;
            }
            rollups.insert(bucket, &agg.encode()[..]);
        }
        for bucket in dirty {
            let series_len = bucket.len() - 8;
            let hour = ts_from(&bucket[series_len..]).ok_or_else(|| corrupt("rollup key"))?;
            let agg = self.raw_agg(&bucket[..series_len], hour, hour + HOUR_MS)?;
            if agg.count == 0 {
                rollups.remove(bucket);
            } else {
                rollups.insert(bucket, &agg.encode()[..]);
            }
        }
        t.rollup_h.apply_batch(rollups)?;
        Ok(())
    }

    /// Aggregates the raw points of one series in `[from, to)`.
    fn raw_agg(&self, series: &[u8], from: Millis, to: Millis) -> Result<Agg> {
        let mut agg = Agg::default();
        if from >= to {
            return Ok(agg);
        }
        let start = [series, &ts_bytes(from)].concat();
        let end = [series, &ts_bytes(to)].concat();
        for kv in self.trees().ts.range(start..end) {
            agg.add(&decode_value(&kv?.1)?);
        }
        Ok(agg)
    }

    /// As `aggregate`, from raw points only (no rollups): the reference the benchmark and the
    /// tests compare the rollups with.
    pub fn aggregate_from_raw(
        &self,
        device: DeviceId,
        tag: &str,
        key: &str,
        bounds: &[Millis],
        from: Millis,
        to: Millis,
    ) -> Result<Vec<Agg>> {
        self.settle(device)?;
        let series = series_key(device, tag, key);
        bounds
            .windows(2)
            .map(|w| self.raw_agg(&series, w[0].max(from), w[1].min(to.saturating_add(1))))
            .collect()
    }

    /// Aggregates of one series over consecutive buckets `[bounds[i], bounds[i+1])`, clipped to
    /// `[from, to]`. Whole UTC hours come from the rollups; the edges from raw points.
    pub fn aggregate(
        &self,
        device: DeviceId,
        tag: &str,
        key: &str,
        bounds: &[Millis],
        from: Millis,
        to: Millis,
    ) -> Result<Vec<Agg>> {
        self.settle(device)?;
        let series = series_key(device, tag, key);
        let t = self.trees();
        let mut out = Vec::with_capacity(bounds.len().saturating_sub(1));
        for w in bounds.windows(2) {
            let s = w[0].max(from);
            let e = w[1].min(to.saturating_add(1));
            let mut agg = Agg::default();
            if s < e {
                let hs = hour_of(s + HOUR_MS - 1);
                let he = hour_of(e);
                if hs < he {
                    agg.merge(&self.raw_agg(&series, s, hs)?);
                    let start = [&series[..], &ts_bytes(hs)].concat();
                    let end = [&series[..], &ts_bytes(he)].concat();
                    for kv in t.rollup_h.range(start..end) {
                        agg.merge(&Agg::decode(&kv?.1)?);
                    }
                    agg.merge(&self.raw_agg(&series, he, e)?);
                } else {
                    agg.merge(&self.raw_agg(&series, s, e)?);
                }
            }
            out.push(agg);
        }
        Ok(out)
    }

    /// Counts every device's series from the directory. Run at open, after the log is
    /// replayed and before the writer thread starts, so nothing registers series meanwhile.
    pub(super) fn count_series(&self) -> Result<()> {
        let mut counts: HashMap<DeviceId, usize> = HashMap::new();
        for kv in self.trees().series.iter().keys() {
            let k = kv?;
            let device = DeviceId::from_slice(k.get(..16).ok_or_else(|| corrupt("series key"))?)
                .ok_or_else(|| corrupt("series key"))?;
            *counts.entry(device).or_default() += 1;
        }
        *self.series_counts.lock() = counts;
        Ok(())
    }

    /// How many series (keys, across its tags) the device has: from memory, no scan.
    pub fn series_count(&self, device: DeviceId) -> usize {
        self.series_counts.lock().get(&device).copied().unwrap_or(0)
    }

    /// Whether the device has this series (one lookup).
    pub fn has_series(&self, device: DeviceId, tag: &str, key: &str) -> Result<bool> {
        Ok(self
            .trees()
            .series
            .contains_key(series_key(device, tag, key))?)
    }

    /// The keys a device has under one tag, in the directory's order (by length, then bytes).
    pub fn tag_keys(&self, device: DeviceId, tag: &str) -> Result<Vec<String>> {
        let prefix = series_prefix(device, tag);
        let mut out = Vec::new();
        for kv in self.trees().series.scan_prefix(&prefix).keys() {
            let k = kv?;
            let mut pos = prefix.len();
            out.push(
                read_str(&k, &mut pos)
                    .ok_or_else(|| corrupt("series key"))?
                    .to_string(),
            );
        }
        Ok(out)
    }

    /// Whether a series holds no point (one seek).
    pub fn series_is_empty(&self, device: DeviceId, tag: &str, key: &str) -> Result<bool> {
        self.settle(device)?;
        let series = series_key(device, tag, key);
        Ok(self
            .trees()
            .ts
            .scan_prefix(&series)
            .next()
            .transpose()?
            .is_none())
    }

    /// Removes a series from the directory once retention has emptied it, so that it no
    /// longer lists or counts against the device's key cap. Must run on the writer thread:
    /// there no point can arrive between the check and the removal, and the writer's memory
    /// of registered series is corrected with it.
    fn forget_series_if_empty(&self, device: DeviceId, tag: &str, key: &str) -> Result<bool> {
        self.settle(device)?;
        let t = self.trees();
        let series = series_key(device, tag, key);
        if t.ts.scan_prefix(&series).next().is_some() || !t.series.contains_key(&series)? {
            return Ok(false);
        }
        let mut rollups = sled::Batch::default();
        for k in t.rollup_h.scan_prefix(&series).keys() {
            rollups.remove(k?);
        }
        t.rollup_h.apply_batch(rollups)?;
        t.series.remove(&series)?;
        self.known_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&series);
        self.series_counts.remove_one(device);
        Ok(true)
    }

    /// Every series (tag, key) a device has.
    pub fn device_series(&self, device: DeviceId) -> Result<Vec<SeriesKey>> {
        let mut out = Vec::new();
        for kv in self.trees().series.scan_prefix(device.as_bytes()) {
            let (k, _) = kv?;
            let mut pos = 16;
            let tag = read_str(&k, &mut pos).ok_or_else(|| corrupt("series key"))?;
            let key = read_str(&k, &mut pos).ok_or_else(|| corrupt("series key"))?;
            out.push(SeriesKey {
                tag: tag.to_string(),
                key: key.to_string(),
            });
        }
        Ok(out)
    }

    /// Latest value of every key of `tag` (or of the requested keys).
    pub fn latest(
        &self,
        device: DeviceId,
        tag: &str,
        keys: Option<&[String]>,
    ) -> Result<Vec<(String, Point)>> {
        self.settle(device)?;
        let t = self.trees();
        // Named keys are looked up one by one; otherwise the tag's directory is read once.
        let keys = match keys {
            Some(ks) => ks
                .iter()
                // Longer keys cannot be stored (and would be cut to another key's name).
                .filter(|k| k.len() <= 255)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .cloned()
                .collect(),
            None => self.tag_keys(device, tag)?,
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let series = series_key(device, tag, &key);
            if let Some(kv) = t.ts.scan_prefix(&series).next_back() {
                let (k, v) = kv?;
                let ts = ts_from(&k[series.len()..]).ok_or_else(|| corrupt("ts key"))?;
                let value = decode_value(&v)?;
                out.push((key, Point { ts, value }));
            }
        }
        Ok(out)
    }

    /// Raw points in a time range, paginated across keys in key-name order.
    pub fn raw(&self, device: DeviceId, q: &RawQuery) -> Result<RawPage> {
        self.settle(device)?;
        let wanted: Option<HashSet<&String>> = q.keys.as_ref().map(|ks| ks.iter().collect());
        let mut keys: Vec<String> = self
            .tag_keys(device, &q.tag)?
            .into_iter()
            .filter(|k| wanted.as_ref().is_none_or(|w| w.contains(k)))
            .collect();
        keys.sort();
        if let Some((after_key, _)) = &q.after {
            keys.retain(|k| k >= after_key);
        }
        let mut page = RawPage::default();
        let mut total = 0usize;
        for key in keys {
            let base = series_key(device, &q.tag, &key);
            let mut lo = q.from;
            let mut hi = q.to;
            if let Some((ak, ats)) = &q.after
                && *ak == key
            {
                if q.descending {
                    hi = hi.min(ats.saturating_sub(1));
                } else {
                    lo = lo.max(ats.saturating_add(1));
                }
            }
            if lo > hi {
                continue;
            }
            let start = [&base[..], &ts_bytes(lo)].concat();
            let end = [&base[..], &ts_bytes(hi)].concat();
            let range = self.trees().ts.range(start..=end);
            let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
                if q.descending {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
            let mut points = Vec::new();
            for kv in iter {
                let (k, v) = kv?;
                let ts = ts_from(&k[base.len()..]).ok_or_else(|| corrupt("ts key"))?;
                if total == q.limit {
                    // One more point exists: resume after the last one returned.
                    let last = points
                        .last()
                        .map(|p: &Point| (key.clone(), p.ts))
                        .or_else(|| {
                            page.series
                                .last()
                                .and_then(|(k, ps)| ps.last().map(|p| (k.clone(), p.ts)))
                        });
                    if !points.is_empty() {
                        page.series.push((key.clone(), points));
                    }
                    page.next = last;
                    return Ok(page);
                }
                points.push(Point {
                    ts,
                    value: decode_value(&v)?,
                });
                total += 1;
            }
            if !points.is_empty() {
                page.series.push((key, points));
            }
        }
        Ok(page)
    }

    /// Points of one series in `[from, to]`, oldest first, read lazily (for streaming export).
    pub fn scan_series(
        &self,
        device: DeviceId,
        tag: &str,
        key: &str,
        from: Millis,
        to: Millis,
    ) -> impl Iterator<Item = Result<(Millis, Value)>> + use<> {
        let base = series_key(device, tag, key);
        let start = [&base[..], &ts_bytes(from)].concat();
        let end = [&base[..], &ts_bytes(to)].concat();
        let n = base.len();
        let unsettled = self.settle(device).err();
        unsettled
            .map(Err)
            .into_iter()
            .chain(self.trees().ts.range(start..=end).map(move |kv| {
                let (k, v) = kv?;
                let ts = ts_from(&k[n..]).ok_or_else(|| corrupt("ts key"))?;
                Ok((ts, decode_value(&v)?))
            }))
    }

    /// Points stored in one series (from the rollups, so without reading the points).
    pub fn series_points(&self, device: DeviceId, tag: &str, key: &str) -> Result<u64> {
        self.settle(device)?;
        let mut n = 0;
        for kv in self
            .trees()
            .rollup_h
            .scan_prefix(series_key(device, tag, key))
        {
            n += Agg::decode(&kv?.1)?.count;
        }
        Ok(n)
    }

    /// Deletes the points of one series older than `cutoff`, in bounded batches, with their
    /// rollups; the hour holding `cutoff` is recomputed from what remains. Returns how many
    /// points went.
    pub fn delete_series_before(
        &self,
        device: DeviceId,
        tag: &str,
        key: &str,
        cutoff: Millis,
    ) -> Result<u64> {
        self.settle(device)?;
        let t = self.trees();
        let base = series_key(device, tag, key);
        let end = [&base[..], &ts_bytes(cutoff)].concat();
        let mut removed = 0u64;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for kv in t.ts.range(base.clone()..end.clone()).take(10_000) {
                batch.remove(kv?.0);
                n += 1;
            }
            if n == 0 {
                break;
            }
            t.ts.apply_batch(batch)?;
            removed += n;
        }
        let hour = hour_of(cutoff);
        let hour_key = [&base[..], &ts_bytes(hour)].concat();
        let mut batch = sled::Batch::default();
        for kv in t.rollup_h.range(base.clone()..hour_key.clone()) {
            batch.remove(kv?.0);
        }
        let agg = self.raw_agg(&base, hour, hour + HOUR_MS)?;
        if agg.count == 0 {
            batch.remove(hour_key);
        } else {
            batch.insert(hour_key, &agg.encode()[..]);
        }
        t.rollup_h.apply_batch(batch)?;
        Ok(removed)
    }

    /// Removes every point and series of a device, in bounded batches.
    pub fn delete_device_telemetry(&self, device: DeviceId) -> Result<()> {
        self.series_counts.lock().remove(&device);
        {
            let mut p = self.pending.lock();
            if let Some(w) = p.devices.remove(&device) {
                p.values -= w.points.len();
            }
        }
        self.known_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with(device.as_bytes()));
        for tree in [
            &self.trees().ts,
            &self.trees().rollup_h,
            &self.trees().series,
        ] {
            loop {
                let mut batch = sled::Batch::default();
                let mut n = 0;
                for kv in tree.scan_prefix(device.as_bytes()).take(10_000) {
                    batch.remove(kv?.0);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                tree.apply_batch(batch)?;
            }
        }
        // A message in flight while the device was deleted may have registered a series
        // meanwhile; the device is gone, so its count goes too.
        self.series_counts.lock().remove(&device);
        Ok(())
    }
}

impl super::Store {
    /// As `Db::delete_device_telemetry`, on a blocking thread: a device can hold millions of
    /// points, and deleting them must not hold up a thread that serves requests.
    pub async fn delete_device_telemetry_off_thread(&self, device: DeviceId) -> Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.delete_device_telemetry(device))
            .await
            // Only a runtime shutting down cancels a blocking task.
            .map_err(|_| StoreError::Closed)?
    }

    /// Queues, on the writer thread, the removal of a series retention has emptied (see
    /// `Db::forget_series_if_empty`); durable with the next checkpoint. Losing it in a crash
    /// only leaves an empty series listed until the next sweep.
    pub fn forget_series_if_empty(&self, device: DeviceId, tag: &str, key: &str) {
        let (tag, key) = (tag.to_string(), key.to_string());
        self.pipeline.apply_later(move |db| {
            if let Err(e) = db.forget_series_if_empty(device, &tag, &key) {
                tracing::error!(device = %device, error = %e, "cannot remove an emptied series");
            }
        });
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt {
        tree: "ts",
        detail: format!("bad {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::open_temp;

    fn q(limit: usize, after: Option<(String, Millis)>, descending: bool) -> RawQuery {
        RawQuery {
            tag: "default".into(),
            keys: None,
            from: 0,
            to: 1000,
            descending,
            limit,
            after,
        }
    }

    #[tokio::test]
    async fn raw_pages_cover_every_point_once() {
        let (_d, s) = open_temp();
        let dev = DeviceId::new();
        let pts: Vec<_> = (0..10)
            .map(|i| {
                (
                    i * 10,
                    vec![
                        ("a".to_string(), Value::Long(i)),
                        ("b".to_string(), Value::Double(i as f64)),
                    ],
                )
            })
            .collect();
        assert_eq!(s.put_points(dev, "default", &pts).expect("put"), 20);
        // Another device's data must not leak in.
        s.put_points(DeviceId::new(), "default", &pts).expect("put");
        for descending in [false, true] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = s.raw(dev, &q(3, after.clone(), descending)).expect("raw");
                for (k, ps) in &page.series {
                    for p in ps {
                        seen.push((k.clone(), p.ts));
                    }
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(seen.len(), 20, "{seen:?}");
            let mut dedup = seen.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), 20);
            let a_ts: Vec<_> = seen
                .iter()
                .filter(|(k, _)| k == "a")
                .map(|(_, t)| *t)
                .collect();
            let mut sorted = a_ts.clone();
            sorted.sort();
            if descending {
                sorted.reverse();
            }
            assert_eq!(a_ts, sorted);
        }
    }

    /// In-order points wait in memory; every read still sees them, a replacement or an
    /// out-of-order point settles them first, and a checkpoint writes them to sled.
    #[tokio::test]
    async fn waiting_points_are_read_as_if_stored() {
        let (_d, s) = open_temp();
        let (dev, other) = (DeviceId::new(), DeviceId::new());
        let put = |d: DeviceId, ts: Millis, v: i64| {
            s.put_points(d, "default", &[(ts, vec![("t".into(), Value::Long(v))])])
                .expect("put")
        };
        let in_sled = |d: DeviceId| s.trees().ts.scan_prefix(d.as_bytes()).count();
        for i in 0..5 {
            put(dev, 1_000 + i, i);
            put(other, 1_000 + i, 10 * i);
        }
        assert_eq!(in_sled(dev), 0, "five in-order points wait in memory");
        let l = s.latest(dev, "default", None).expect("latest");
        assert_eq!(
            l[0].1,
            Point {
                ts: 1_004,
                value: Value::Long(4)
            }
        );
        assert_eq!(in_sled(dev), 5, "a read writes the device's waiting points");
        assert_eq!(in_sled(other), 0, "and only that device's");
        let agg = s
            .aggregate(other, "default", "t", &[0, HOUR_MS], 0, HOUR_MS - 1)
            .expect("aggregate");
        assert_eq!((agg[0].count, agg[0].sum), (5, 100.0));
        // A replacement of a waiting point, then an out-of-order one: exact rollups.
        put(other, 1_005, 7);
        put(other, 1_005, 8);
        put(other, 999, 1);
        assert_eq!(
            s.aggregate(other, "default", "t", &[0, HOUR_MS], 0, HOUR_MS - 1)
                .expect("aggregate"),
            s.aggregate_from_raw(other, "default", "t", &[0, HOUR_MS], 0, HOUR_MS - 1)
                .expect("raw")
        );
        // Past the per-device threshold, a group writes them without any read.
        let third = DeviceId::new();
        for i in 0..PENDING_PER_DEVICE as i64 {
            put(third, 2_000 + i, i);
        }
        assert_eq!(in_sled(third), PENDING_PER_DEVICE);
        put(dev, 2_000, 1);
        assert_eq!(in_sled(dev), 5);
        s.settle_all().expect("settle");
        assert_eq!(in_sled(dev), 6);
        assert_eq!(s.pending.lock().values, 0);
    }

    #[tokio::test]
    async fn latest_only_moves_forward() {
        let (_d, s) = open_temp();
        let dev = DeviceId::new();
        s.put_points(dev, "default", &[(100, vec![("t".into(), Value::Long(1))])])
            .expect("put");
        s.put_points(dev, "default", &[(50, vec![("t".into(), Value::Long(2))])])
            .expect("put");
        let l = s.latest(dev, "default", None).expect("latest");
        assert_eq!(
            l,
            vec![(
                "t".to_string(),
                Point {
                    ts: 100,
                    value: Value::Long(1)
                }
            )]
        );
        s.delete_device_telemetry(dev).expect("delete");
        assert!(s.latest(dev, "default", None).expect("latest").is_empty());
        assert!(
            s.raw(dev, &q(10, None, false))
                .expect("raw")
                .series
                .is_empty()
        );
    }

    #[tokio::test]
    async fn series_counts_follow_the_directory_at_the_default_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let open = || {
            crate::store::Store::open(
                &path,
                crate::store::StoreOptions {
                    cache_capacity_bytes: 8 << 20,
                    group_commit_delay: std::time::Duration::ZERO,
                    ..Default::default()
                },
                std::sync::Arc::new(crate::metrics::Metrics::new()),
            )
        };
        let (dev, other) = (DeviceId::new(), DeviceId::new());
        {
            let s = open().expect("open");
            // 10,000 keys (the default cap) in one tag, two more in another, each written twice.
            for round in 0..2 {
                for chunk in (0..10_000).collect::<Vec<_>>().chunks(2_000) {
                    let values = chunk
                        .iter()
                        .map(|i| (format!("k{i}"), Value::Long(round)))
                        .collect();
                    s.put_points(dev, "default", &[(1000 + round, values)])
                        .expect("put");
                }
            }
            let two = vec![
                ("a".to_string(), Value::Long(1)),
                ("b".into(), Value::Long(2)),
            ];
            s.put_points(dev, "power", &[(5, two.clone())])
                .expect("put");
            s.put_points(other, "default", &[(5, two)]).expect("put");
            assert_eq!(s.series_count(dev), 10_002);
            assert_eq!(s.series_count(other), 2);
            let keys = s.tag_keys(dev, "default").expect("keys");
            assert_eq!(keys.len(), 10_000);
            let distinct: HashSet<&String> = keys.iter().collect();
            assert_eq!(distinct.len(), 10_000);
            assert!(s.has_series(dev, "power", "a").expect("lookup"));
            assert!(!s.has_series(dev, "default", "a").expect("lookup"));
            s.flush_now().expect("flush");
        }
        // Counted again from the directory at open (once the writer thread has let go).
        let mut reopened = None;
        for _ in 0..500 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            if let Ok(s) = open() {
                reopened = Some(s);
                break;
            }
        }
        let s = reopened.expect("reopen");
        assert_eq!(s.series_count(dev), 10_002);
        // A series retention emptied leaves the directory and the count; one with points stays.
        s.delete_series_before(dev, "power", "a", 10)
            .expect("delete");
        s.forget_series_if_empty(dev, "power", "a");
        s.forget_series_if_empty(dev, "power", "b");
        s.commit().await.expect("commit");
        assert_eq!(s.series_count(dev), 10_001);
        assert!(!s.has_series(dev, "power", "a").expect("lookup"));
        assert_eq!(s.tag_keys(dev, "power").expect("keys"), ["b"]);
        // Written again, it is registered (and counted) again.
        s.put_points(dev, "power", &[(20, vec![("a".into(), Value::Long(3))])])
            .expect("put");
        assert_eq!(s.series_count(dev), 10_002);
        s.delete_device_telemetry(dev).expect("delete");
        assert_eq!(s.series_count(dev), 0);
        assert_eq!(s.series_count(other), 2);
    }

    /// What an aggregate must be, computed from the points the test wrote (last write wins).
    fn expected(points: &std::collections::BTreeMap<Millis, f64>, s: Millis, e: Millis) -> Agg {
        let mut a = Agg::default();
        for (_, v) in points.range(s..e) {
            a.add(&Value::Double(*v));
        }
        a
    }

    #[tokio::test]
    async fn rollups_stay_exact_with_out_of_order_and_duplicate_points() {
        let (_d, s) = open_temp();
        let dev = DeviceId::new();
        let mut truth = std::collections::BTreeMap::new();
        let mut put = |ts: Millis, v: f64| {
            s.put_points(
                dev,
                "default",
                &[(ts, vec![("x".into(), Value::Double(v))])],
            )
            .expect("put");
            truth.insert(ts, v);
        };
        // Three hours of 1-minute data, in order.
        for i in 0..180 {
            put(i * 60_000, i as f64);
        }
        // A duplicate of an old point with a new value, an out-of-order point, a re-sent
        // latest point (not an extreme), and then one replacing the hour's maximum.
        put(30 * 60_000, 1000.0);
        put(90 * 60_000 + 1, -5.0);
        put(179 * 60_000, 170.5);
        put(179 * 60_000, 171.0);
        put(179 * 60_000, 7.0);
        let truth = truth;
        for (from, to, step) in [
            (0, 3 * HOUR_MS - 1, HOUR_MS),
            (0, 3 * HOUR_MS - 1, 15 * 60_000),
            (20 * 60_000 + 1, 2 * HOUR_MS + 7, HOUR_MS),
            (0, 3 * HOUR_MS - 1, 3 * HOUR_MS),
        ] {
            let bounds: Vec<Millis> = (0..=(3 * HOUR_MS / step)).map(|i| i * step).collect();
            let got = s
                .aggregate(dev, "default", "x", &bounds, from, to)
                .expect("aggregate");
            for (i, w) in bounds.windows(2).enumerate() {
                let want = expected(&truth, w[0].max(from), w[1].min(to + 1));
                assert_eq!(
                    got[i].count, want.count,
                    "bucket {i} of {from}..{to}/{step}"
                );
                assert!((got[i].sum - want.sum).abs() < 1e-9, "bucket {i}");
                if want.count > 0 {
                    assert_eq!((got[i].min, got[i].max), (want.min, want.max), "bucket {i}");
                }
            }
        }
    }

    #[tokio::test]
    async fn rollups_match_the_raw_points_under_random_replacements() {
        let (_d, s) = open_temp();
        let dev = DeviceId::new();
        let mut truth = std::collections::BTreeMap::new();
        let mut ts: Millis = 0;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // Groups of points, as the writer thread stages them: mostly forward in time, often
        // at the same millisecond, sometimes back; few distinct values, so extremes repeat.
        for _ in 0..300 {
            let mut group = Vec::new();
            for _ in 0..1 + rnd(8) {
                match rnd(10) {
                    0..=4 => ts += 1 + rnd(40_000) as Millis,
                    5..=7 => {}
                    _ => ts = ts.saturating_sub(rnd(200_000) as Millis).max(0),
                }
                let v = rnd(6) as f64;
                group.push((ts, vec![("x".to_string(), Value::Double(v))]));
                truth.insert(ts, v);
            }
            s.put_points(dev, "default", &group).expect("put");
        }
        let end = truth.keys().last().copied().unwrap_or(0) + 1;
        let bounds: Vec<Millis> = (0..=end / HOUR_MS + 1).map(|h| h * HOUR_MS).collect();
        let got = s
            .aggregate(dev, "default", "x", &bounds, 0, end)
            .expect("aggregate");
        for (i, w) in bounds.windows(2).enumerate() {
            let want = expected(&truth, w[0], w[1]);
            assert_eq!(got[i].count, want.count, "hour {i}");
            assert!((got[i].sum - want.sum).abs() < 1e-6, "hour {i}");
            if want.count > 0 {
                assert_eq!((got[i].min, got[i].max), (want.min, want.max), "hour {i}");
            }
        }
    }
}
