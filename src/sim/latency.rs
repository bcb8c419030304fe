//! PUBACK latency of the simulated devices: a lock-free histogram with logarithmic buckets
//! (5 % wide, 10 µs to about 10 minutes), so that 100,000 acknowledgements a second from
//! thousands of tasks cost one atomic increment each and percentiles come out within 5 %.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket `i` holds latencies in [FLOOR * GROWTH^i, FLOOR * GROWTH^(i+1)).
const FLOOR_US: f64 = 10.0;
const GROWTH: f64 = 1.05;
const BUCKETS: usize = 370;

pub struct Histogram {
    counts: Vec<AtomicU64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    pub fn record(&self, latency: Duration) {
        let us = latency.as_secs_f64() * 1e6;
        let i = if us <= FLOOR_US {
            0
        } else {
            ((us / FLOOR_US).ln() / GROWTH.ln()) as usize
        };
        self.counts[i.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile (0..=1) in milliseconds: the upper edge of the bucket that holds it.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(FLOOR_US * GROWTH.powi(i as i32 + 1) / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_within_a_bucket_of_the_truth() {
        let h = Histogram::default();
        // 1..=1000 ms, one each: p50 is 500 ms, p99 990 ms.
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile_ms(0.5).expect("p50");
        let p99 = h.quantile_ms(0.99).expect("p99");
        assert!((500.0..=500.0 * GROWTH).contains(&p50), "{p50}");
        assert!((990.0..=990.0 * GROWTH).contains(&p99), "{p99}");
        assert!(Histogram::default().quantile_ms(0.5).is_none());
    }
}
