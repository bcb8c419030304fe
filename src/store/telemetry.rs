//! Telemetry time series. Layout: `ts` holds `device ‖ tag ‖ key ‖ ts → value`, so one series
//! is one contiguous, time-ordered range, and its latest point is the last key of that range;
//! `series` holds `device ‖ tag ‖ key → ()`, the directory of a device's series, written only
//! when a series first appears so that ingest costs one write per value.

use super::codec::{decode_value, encode_value, push_str, read_str, ts_bytes, ts_from};
use super::{Db, Result, StoreError};
use crate::model::{DeviceId, Millis, Point, Value};

/// One series of a device: a key under a tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub tag: String,
    pub key: String,
}

/// A raw range query over one tag of one device.
#[derive(Debug, Clone)]
pub struct RawQuery {
    pub tag: String,
    /// Keys to read; `None` reads every key of the tag.
    pub keys: Option<Vec<String>>,
    /// Inclusive range.
    pub from: Millis,
    pub to: Millis,
    pub descending: bool,
    /// Total points in the page, across keys.
    pub limit: usize,
    /// Resume after this (key, ts), as returned in `RawPage::next`.
    pub after: Option<(String, Millis)>,
}

/// Points grouped by key, keys in name order.
#[derive(Debug, Clone, Default)]
pub struct RawPage {
    pub series: Vec<(String, Vec<Point>)>,
    pub next: Option<(String, Millis)>,
}

/// Series remembered as registered; past this the memory is given back and relearnt.
const SERIES_CACHE_MAX: usize = 1 << 20;

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
        let mut batch = sled::Batch::default();
        let n = self.stage_points(&mut batch, device, tag, points)?;
        self.trees().ts.apply_batch(batch)?;
        Ok(n)
    }

    /// Adds points to a batch for the `ts` tree (applied by the caller, so many devices' points
    /// share one atomic sled batch); registers series seen for the first time.
    pub(super) fn stage_points(
        &self,
        batch: &mut sled::Batch,
        device: DeviceId,
        tag: &str,
        points: &[(Millis, Vec<(String, Value)>)],
    ) -> Result<usize> {
        let t = self.trees();
        let mut known = self.known_series.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for (ts, values) in points {
            for (key, value) in values {
                let mut k = series_key(device, tag, key);
                let series_len = k.len();
                // Write the directory entry only the first time a series is seen.
                if !known.contains(&k) {
                    if !t.series.contains_key(&k)? {
                        t.series.insert(k.as_slice(), &[])?;
                    }
                    if known.len() >= SERIES_CACHE_MAX {
                        known.clear();
                    }
                    known.insert(k.clone());
                }
                k.truncate(series_len);
                k.extend_from_slice(&ts_bytes(*ts));
                let mut v = Vec::with_capacity(16);
                encode_value(&mut v, value);
                batch.insert(k, v);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Applies a batch staged with `stage_points`.
    pub(super) fn apply_points(&self, batch: sled::Batch) -> Result<()> {
        self.trees().ts.apply_batch(batch)?;
        Ok(())
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
        let prefix = series_prefix(device, tag);
        let t = self.trees();
        let mut out = Vec::new();
        for kv in t.series.scan_prefix(&prefix) {
            let (series, _) = kv?;
            let mut pos = prefix.len();
            let key = read_str(&series, &mut pos).ok_or_else(|| corrupt("series key"))?;
            if keys.is_some_and(|ks| !ks.iter().any(|x| x == key)) {
                continue;
            }
            if let Some(kv) = t.ts.scan_prefix(&series).next_back() {
                let (k, v) = kv?;
                let ts = ts_from(&k[series.len()..]).ok_or_else(|| corrupt("ts key"))?;
                out.push((
                    key.to_string(),
                    Point {
                        ts,
                        value: decode_value(&v)?,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Raw points in a time range, paginated across keys in key-name order.
    pub fn raw(&self, device: DeviceId, q: &RawQuery) -> Result<RawPage> {
        let mut keys: Vec<String> = self
            .device_series(device)?
            .into_iter()
            .filter(|s| s.tag == q.tag)
            .map(|s| s.key)
            .filter(|k| q.keys.as_ref().is_none_or(|ks| ks.contains(k)))
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

    /// Removes every point and series of a device, in bounded batches.
    pub fn delete_device_telemetry(&self, device: DeviceId) -> Result<()> {
        self.known_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| !k.starts_with(device.as_bytes()));
        for tree in [&self.trees().ts, &self.trees().series] {
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
        Ok(())
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
}
