//! Rate limits: a token bucket, and a table of buckets keyed by client address for connection
//! attempts. Transport-neutral; MQTT and HTTP apply them and choose the answer (reason code or
//! backpressure).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second up to `burst`. A zero rate means unlimited.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_rate(f64::from(rate), burst)
    }

    /// A bucket refilled at `rate` tokens per second, which may be below one.
    pub fn with_rate(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst).max(rate).max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    pub fn unlimited(&self) -> bool {
        self.rate == 0.0
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&mut self, now: Instant) -> bool {
        if self.unlimited() {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one token, possibly going into debt, and returns how long to wait before the
    /// taken token is really there (zero when it was). Used for backpressure.
    pub fn take_or_wait(&mut self) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        self.refill(Instant::now());
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    fn full(&self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + dt * self.rate >= self.burst
    }
}

/// Buckets per key (a client IP), bounded: full buckets are forgotten when the table grows.
pub struct KeyedLimiter<K> {
    /// Tokens per second; 0 is unlimited.
    rate: f64,
    burst: u32,
    max_keys: usize,
    map: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_rate(f64::from(rate), burst)
    }

    /// `per_minute` tokens a minute per key (sign-in attempts, where a second is too coarse).
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self::with_rate(f64::from(per_minute) / 60.0, burst)
    }

    fn with_rate(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst,
            max_keys: 100_000,
            map: Mutex::default(),
        }
    }

    /// Whether `key` may act now; takes a token when it may.
    pub fn allow(&self, key: &K) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max_keys && !map.contains_key(key) {
            // A full bucket is the same as no bucket: dropping those loses nothing.
            map.retain(|_, b| !b.full(now));
            if map.len() >= self.max_keys {
                // Still full of active keys: refuse newcomers rather than grow without bound.
                return false;
            }
        }
        map.entry(key.clone())
            .or_insert_with(|| TokenBucket::with_rate(self.rate, self.burst))
            .try_take_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 5);
        // The burst is at least the rate.
        let t0 = Instant::now();
        let n = (0..20).filter(|_| b.try_take_at(t0)).count();
        assert_eq!(n, 10);
        assert!(!b.try_take_at(t0));
        assert!(b.try_take_at(t0 + Duration::from_millis(100)));
        assert!(!b.try_take_at(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn zero_rate_is_unlimited_and_debt_becomes_a_wait() {
        let mut u = TokenBucket::new(0, 0);
        assert!((0..1000).all(|_| u.try_take()));
        let mut b = TokenBucket::new(100, 100);
        for _ in 0..100 {
            assert_eq!(b.take_or_wait(), Duration::ZERO);
        }
        let w = b.take_or_wait();
        assert!(
            w > Duration::ZERO && w <= Duration::from_millis(11),
            "{w:?}"
        );
    }

    #[test]
    fn keyed_limiter_counts_each_key_apart() {
        let l = KeyedLimiter::new(1, 2);
        assert!(l.allow(&"a") && l.allow(&"a"));
        assert!(!l.allow(&"a"));
        assert!(l.allow(&"b"));
    }
}
