//! Rate limits: a token bucket, a table of buckets keyed by client address for connection
//! attempts, and a cap on connections open at once (overall and per address). Transport-neutral;
//! MQTT and HTTP apply them and choose the answer (reason code, backpressure or a closed socket).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
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

/// Connections open at once, overall and per key (a client address). 0 disables either cap.
pub struct ConnectionCap<K: Eq + Hash> {
    max_total: usize,
    max_per_key: usize,
    open: Mutex<OpenCount<K>>,
}

struct OpenCount<K> {
    total: usize,
    /// Only keys with at least one open connection: the table is as large as the set of
    /// connections, which the total cap bounds.
    per_key: HashMap<K, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    Total,
    PerKey,
}

/// One open connection; closing it (dropping this) frees its place.
pub struct ConnectionPermit<K: Eq + Hash> {
    cap: Arc<ConnectionCap<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> ConnectionCap<K> {
    pub fn new(max_total: usize, max_per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_key,
            open: Mutex::new(OpenCount {
                total: 0,
                per_key: HashMap::new(),
            }),
        })
    }

    /// Takes a place for a new connection from `key`, or says which cap it would exceed.
    pub fn try_open(self: &Arc<Self>, key: K) -> Result<ConnectionPermit<K>, CapExceeded> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if self.max_total != 0 && open.total >= self.max_total {
            return Err(CapExceeded::Total);
        }
        let n = open.per_key.get(&key).copied().unwrap_or(0);
        if self.max_per_key != 0 && n >= self.max_per_key {
            return Err(CapExceeded::PerKey);
        }
        open.total += 1;
        open.per_key.insert(key.clone(), n + 1);
        Ok(ConnectionPermit {
            cap: self.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl<K: Eq + Hash> Drop for ConnectionPermit<K> {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.per_key.remove(&self.key);
            }
        }
    }
}

/// Admission control for device messages: how many are handled at once, across every
/// connection and transport, so that the store's work and its replies stay bounded however
/// many devices send. Past it, a message waits for room; the MQTT transport then stops reading
/// that connection (`mqtt::admission`). Waiters are served first come, first served (tokio's
/// semaphore is fair), so no connection is starved while others are read.
#[derive(Debug, Clone)]
pub struct InFlight {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
    /// Messages waiting for room now.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

/// One admitted message; dropping it lets the next one in.
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>);

impl InFlight {
    /// At most `limit` messages at once; 0 means no limit.
    pub fn new(limit: u32) -> Self {
        let limit = match limit {
            0 => tokio::sync::Semaphore::MAX_PERMITS,
            n => n as usize,
        };
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            waiting: Arc::default(),
        }
    }

    /// Waits for room for one more message.
    pub async fn admit(&self) -> Admitted {
        use std::sync::atomic::Ordering;
        /// Counts the wait out however it ends (admitted, or the connection gone).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        // The semaphore is never closed, so acquiring fails only if it were.
        Admitted(self.permits.clone().acquire_owned().await.ok())
    }

    /// Messages waiting for room now: under overload, at most one per MQTT connection (the
    /// connection is not read while it waits) and one per HTTP request.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Room for one more message now, without waiting.
    pub fn try_admit(&self) -> Option<Admitted> {
        self.permits
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| Admitted(Some(p)))
    }

    /// Messages admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_flight_admits_up_to_its_limit_then_in_arrival_order() {
        let gate = InFlight::new(2);
        let a = gate.admit().await;
        let _b = gate.admit().await;
        assert_eq!(gate.in_flight(), 2);
        assert!(gate.try_admit().is_none());
        // Two waiters queue; the first to ask is the first let in.
        let (g1, g2) = (gate.clone(), gate.clone());
        let first = tokio::spawn(async move { g1.admit().await });
        tokio::task::yield_now().await;
        let second = tokio::spawn(async move { g2.admit().await });
        tokio::task::yield_now().await;
        drop(a);
        let admitted = first.await.expect("first waiter");
        assert!(!second.is_finished());
        drop(admitted);
        let _c = second.await.expect("second waiter");
        assert_eq!(gate.in_flight(), 2);
        // No limit: never waits.
        let open = InFlight::new(0);
        let held: Vec<_> = (0..10_000)
            .map(|_| open.try_admit().expect("room"))
            .collect();
        assert_eq!(open.in_flight(), held.len());
    }

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

    #[test]
    fn connection_cap_counts_per_key_and_overall_and_frees_on_drop() {
        let cap = ConnectionCap::new(3, 2);
        let a1 = cap.try_open("a").expect("first");
        let _a2 = cap.try_open("a").expect("second");
        assert_eq!(cap.try_open("a").err(), Some(CapExceeded::PerKey));
        let _b1 = cap.try_open("b").expect("another key");
        assert_eq!(cap.try_open("c").err(), Some(CapExceeded::Total));
        drop(a1);
        assert_eq!(cap.open(), 2);
        let _c1 = cap.try_open("c").expect("a place was freed");
        let unlimited = ConnectionCap::new(0, 0);
        let all: Vec<_> = (0..100).map(|_| unlimited.try_open(1)).collect();
        assert!(all.iter().all(Result::is_ok));
    }
}
