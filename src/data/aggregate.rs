//! Aggregated telemetry: avg/min/max/sum/count over buckets of 1 minute to 1 day, for one
//! device or merged across a fleet. Buckets start at local midnight in the requested time zone
//! (IANA name, DST-aware: a "1d" bucket is a local calendar day, 23 or 25 hours at the
//! changes); the store answers whole hours from its rollups.

use std::collections::BTreeMap;

use jiff::{Timestamp, ToSpan, tz::TimeZone};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{DeviceId, Millis};
use crate::store::ports::{Agg, StoreError, TelemetryStore};

pub const MINUTE_MS: Millis = 60_000;
pub const DAY_MS: Millis = 86_400_000;
/// Most buckets one query may return.
pub const MAX_BUCKETS: usize = 10_000;
/// Most keys × buckets one answer may hold (about 13 MB of JSON): ten keys at the most
/// buckets, or every key of a device at its default cap over ten buckets.
pub const MAX_CELLS: usize = 100_000;

/// Why an aggregate query was refused; the message is safe to return.
#[derive(Debug, thiserror::Error)]
pub enum AggError {
    #[error("interval: {0}")]
    Interval(String),
    #[error("tz: unknown time zone \"{0}\"")]
    TimeZone(String),
    #[error("the range holds more than {MAX_BUCKETS} buckets; use a longer interval")]
    TooManyBuckets,
    /// Keys (`None`: more than fit) × buckets over `MAX_CELLS`.
    #[error("{} keys × {buckets} buckets is more than {MAX_CELLS} per answer; name fewer keys (keys=) or use a longer interval", keys.map_or_else(|| "so many".to_string(), |k| k.to_string()))]
    TooManySeries { keys: Option<usize>, buckets: usize },
    #[error("from must not be after to")]
    Range,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses an interval: `30m`, `1h`, `1d`, or milliseconds; a whole number of minutes from one
/// minute to one day.
pub fn parse_interval(s: &str) -> Result<Millis, AggError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "ms"),
    };
    let n: Millis = num
        .parse()
        .map_err(|_| AggError::Interval(format!("\"{s}\" is not like 15m, 1h or 1d")))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => MINUTE_MS,
        "h" => 3_600_000,
        "d" => DAY_MS,
        _ => return Err(AggError::Interval(format!("unknown unit \"{unit}\""))),
    };
    let ms = n.saturating_mul(unit_ms);
    if !(MINUTE_MS..=DAY_MS).contains(&ms) || ms % MINUTE_MS != 0 {
        return Err(AggError::Interval(
            "a whole number of minutes from 1m to 1d".into(),
        ));
    }
    Ok(ms)
}

pub fn parse_tz(name: Option<&str>) -> Result<TimeZone, AggError> {
    match name {
        None | Some("") | Some("UTC") => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|_| AggError::TimeZone(n.to_string())),
    }
}

/// Milliseconds since local midnight at `ms`.
fn local_ms_of_day(tz: &TimeZone, ms: Millis) -> Result<Millis, AggError> {
    let off = tz.to_offset(ts(ms)?).seconds() as Millis * 1000;
    Ok((ms + off).rem_euclid(DAY_MS))
}

fn ts(ms: Millis) -> Result<Timestamp, AggError> {
    Timestamp::from_millisecond(ms).map_err(|e| AggError::Interval(format!("time: {e}")))
}

/// The first bucket start after `t`: an instant whose local time of day is a whole number of
/// intervals since local midnight. Within one UTC offset that is arithmetic; when the offset
/// changes on the way, the search restarts at the change.
fn next_start(tz: &TimeZone, t: Millis, interval: Millis) -> Result<Millis, AggError> {
    let mut c = t + 1;
    loop {
        let lod = local_ms_of_day(tz, c)?;
        let rem = lod % interval;
        if rem == 0 {
            return Ok(c);
        }
        // The next grid point of this local day, or the next local midnight if that is sooner
        // (an interval that does not divide a day restarts at midnight).
        let cand = c + (interval - rem).min(DAY_MS - lod);
        let change = tz
            .following(ts(c)?)
            .next()
            .map(|tr| tr.timestamp().as_millisecond())
            .filter(|&x| x <= cand);
        match change {
            // The offset changes first: look again from the change.
            Some(x) if x > c => c = x,
            _ => return Ok(cand),
        }
    }
}

/// Bucket boundaries covering `[from, to]`: a bucket starts wherever the local wall clock in
/// `tz` reads a whole number of intervals since local midnight, so buckets follow the local
/// clock across DST changes (a spring day has 23 one-hour buckets, an autumn day 25; 12-hour
/// buckets start at local midnight and noon) and an instant falls in the same bucket whatever
/// the query's range. `1d` buckets are local calendar days.
pub fn boundaries(
    from: Millis,
    to: Millis,
    interval: Millis,
    tz: &TimeZone,
) -> Result<Vec<Millis>, AggError> {
    if from > to {
        return Err(AggError::Range);
    }
    // Rough count first: refuse before computing millions of boundaries.
    if (to - from) / interval > MAX_BUCKETS as Millis + 2 {
        return Err(AggError::TooManyBuckets);
    }
    let midnight = ts(from)?
        .to_zoned(tz.clone())
        .start_of_day()
        .map_err(|e| AggError::Interval(e.to_string()))?;
    let mut out = Vec::new();
    if interval == DAY_MS {
        let mut day = midnight;
        loop {
            let b = day.timestamp().as_millisecond();
            out.push(b);
            if b > to {
                break;
            }
            day = day
                .checked_add(1.day())
                .map_err(|e| AggError::Interval(e.to_string()))?;
            if out.len() > MAX_BUCKETS + 1 {
                return Err(AggError::TooManyBuckets);
            }
        }
        return Ok(out);
    }
    // The last start at or before `from`: walk forward from local midnight.
    let mut b = midnight.timestamp().as_millisecond();
    loop {
        let n = next_start(tz, b, interval)?;
        if n > from {
            break;
        }
        b = n;
    }
    out.push(b);
    while b <= to {
        b = next_start(tz, b, interval)?;
        out.push(b);
        if out.len() > MAX_BUCKETS + 1 {
            return Err(AggError::TooManyBuckets);
        }
    }
    Ok(out)
}

/// One bucket of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    /// Start of the bucket (ms), inclusive.
    pub ts: Millis,
    /// End of the bucket (ms), exclusive.
    pub end: Millis,
    /// Values of any type in the bucket.
    pub count: u64,
    /// Numeric values; avg, min, max and sum cover these and are null when there are none.
    pub numeric: u64,
    pub avg: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub sum: Option<f64>,
}

fn bucket(ts: Millis, end: Millis, a: &Agg) -> Bucket {
    let some = |v: f64| (a.numeric > 0).then_some(v);
    Bucket {
        ts,
        end,
        count: a.count,
        numeric: a.numeric,
        avg: some(a.sum / a.numeric.max(1) as f64),
        min: some(a.min),
        max: some(a.max),
        sum: some(a.sum),
    }
}

/// Aggregates `keys` of `tag` over the buckets of `bounds`, merged across `devices`. Keys
/// absent everywhere are left out; empty buckets are kept (count 0) so charts see the gaps.
pub async fn aggregate(
    store: &dyn TelemetryStore,
    devices: &[DeviceId],
    tag: &str,
    keys: &[String],
    bounds: &[Millis],
    from: Millis,
    to: Millis,
) -> Result<BTreeMap<String, Vec<Bucket>>, AggError> {
    let mut out = BTreeMap::new();
    for key in keys {
        let mut merged = vec![Agg::default(); bounds.len().saturating_sub(1)];
        let mut any = false;
        for d in devices {
            let aggs = store.aggregate(*d, tag, key, bounds, from, to).await?;
            for (m, a) in merged.iter_mut().zip(&aggs) {
                any |= a.count > 0;
                m.merge(a);
            }
        }
        if any {
            let buckets = bounds
                .windows(2)
                .zip(&merged)
                .map(|(w, a)| bucket(w[0], w[1], a))
                .collect();
            out.insert(key.clone(), buckets);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_whole_minutes_up_to_a_day() {
        assert_eq!(parse_interval("15m").expect("15m"), 15 * MINUTE_MS);
        assert_eq!(parse_interval("1h").expect("1h"), 3_600_000);
        assert_eq!(parse_interval("1d").expect("1d"), DAY_MS);
        assert_eq!(parse_interval("60000").expect("ms"), MINUTE_MS);
        for bad in ["30s", "2d", "0m", "1w", "h", "90000"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn days_follow_the_local_calendar_across_dst() {
        let tz = parse_tz(Some("Europe/Berlin")).expect("tz");
        // 2026-03-28 12:00 UTC to 2026-03-30 12:00 UTC: the night of 29 March has 23 hours.
        let from = 1_774_699_200_000;
        let to = from + 2 * DAY_MS;
        let b = boundaries(from, to, DAY_MS, &tz).expect("bounds");
        let lens: Vec<Millis> = b.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(lens, [DAY_MS, DAY_MS - 3_600_000, DAY_MS]);
        // Local midnight of 28 March in Berlin is 23:00 UTC the day before.
        assert_eq!(b[0] % DAY_MS, DAY_MS - 3_600_000);
        assert!(parse_tz(Some("Mars/Olympus")).is_err());
        let hourly = boundaries(from, from + 3 * 3_600_000, 3_600_000, &TimeZone::UTC).expect("h");
        assert_eq!(hourly.len(), 5);
        assert_eq!(hourly[0], from);
    }
}
