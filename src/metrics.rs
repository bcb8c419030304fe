//! Process metrics in Prometheus text format. Owns the registry and the counters every layer
//! updates; it depends on nothing else in Corral so that any layer may hold an `Arc<Metrics>`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set for per-transport metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

/// Label set for refusals and errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// All metrics Corral exports.
pub struct Metrics {
    registry: Registry,
    pub connections: Family<TransportLabel, Gauge>,
    pub connects_refused: Family<ReasonLabel, Counter>,
    pub messages_in: Family<TransportLabel, Counter>,
    pub bytes_in: Family<TransportLabel, Counter>,
    pub points_stored: Counter,
    pub publish_rejected: Family<ReasonLabel, Counter>,
    pub store_flushes: Counter,
    pub store_flush_seconds: Histogram,
    pub store_flush_batch: Histogram,
    pub http_requests: Counter,
    /// Device messages stored (telemetry, any transport), for the message rate.
    pub telemetry_messages: Counter,
    /// Samples of `telemetry_messages` over the last minute, for `recent_message_rate`.
    rate_samples: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("corral");
        let connections = Family::<TransportLabel, Gauge>::default();
        registry.register(
            "device_connections",
            "Open device connections",
            connections.clone(),
        );
        let connects_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "device_connects_refused",
            "Device connection attempts refused, by reason",
            connects_refused.clone(),
        );
        let messages_in = Family::<TransportLabel, Counter>::default();
        registry.register(
            "messages_in",
            "Device messages received",
            messages_in.clone(),
        );
        let bytes_in = Family::<TransportLabel, Counter>::default();
        registry.register(
            "bytes_in",
            "Device payload bytes received",
            bytes_in.clone(),
        );
        let points_stored = Counter::default();
        registry.register(
            "telemetry_points_stored",
            "Telemetry points stored",
            points_stored.clone(),
        );
        let publish_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "messages_rejected",
            "Device messages rejected, by reason",
            publish_rejected.clone(),
        );
        let store_flushes = Counter::default();
        registry.register(
            "store_flushes",
            "Group-commit syncs of the write-ahead log",
            store_flushes.clone(),
        );
        let store_flush_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
        ]);
        registry.register(
            "store_flush_seconds",
            "Latency of one group-commit sync of the write-ahead log",
            store_flush_seconds.clone(),
        );
        let store_flush_batch =
            Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]);
        registry.register(
            "store_flush_batch_size",
            "Writers made durable by one flush",
            store_flush_batch.clone(),
        );
        let http_requests = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        let telemetry_messages = Counter::default();
        registry.register(
            "telemetry_messages",
            "Device telemetry messages stored",
            telemetry_messages.clone(),
        );
        Self {
            telemetry_messages,
            rate_samples: Default::default(),
            registry,
            connections,
            connects_refused,
            messages_in,
            bytes_in,
            points_stored,
            publish_rejected,
            store_flushes,
            store_flush_seconds,
            store_flush_batch,
            http_requests,
        }
    }

    /// Telemetry messages stored per second over about the last minute (0 until two samples,
    /// taken when this is called, are a second apart).
    pub fn recent_message_rate(&self) -> f64 {
        let now = std::time::Instant::now();
        let total = self.telemetry_messages.get();
        let mut q = self.rate_samples.lock().unwrap_or_else(|p| p.into_inner());
        while q.len() > 1
            && q.front()
                .is_some_and(|(t, _)| now - *t > std::time::Duration::from_secs(60))
        {
            q.pop_front();
        }
        if q.back()
            .is_none_or(|(t, _)| now - *t >= std::time::Duration::from_secs(2))
        {
            q.push_back((now, total));
        }
        match q.front() {
            Some((t, n)) if now - *t >= std::time::Duration::from_secs(1) => {
                (total - n) as f64 / (now - *t).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
