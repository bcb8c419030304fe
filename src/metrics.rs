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

/// Label set for per-integration metrics: the integration's id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct IntegrationLabel {
    pub integration: String,
}

/// Label set for per-kind metrics (audit record kinds).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Label set for per-worker metrics: the worker's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}

/// Label set for per-severity metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SeverityLabel {
    pub severity: &'static str,
}

/// Label set of per-route HTTP metrics: the route template (`/api/v1/devices/{id}`, or
/// `unmatched`), so that the label's values are as few as the routes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
    pub method: &'static str,
}

/// `RouteLabel` with the response's status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RouteStatusLabel {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

/// Label set of per-state job counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Label set of a campaign's devices per update state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OtaLabel {
    pub campaign: String,
    pub state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// All metrics Corral exports.
pub struct Metrics {
    registry: Registry,
    pub connections: Family<TransportLabel, Gauge>,
    pub connects_refused: Family<ReasonLabel, Counter>,
    /// Device sessions opened and closed, for the connection summary in the log.
    pub device_connects: Counter,
    pub device_disconnects: Counter,
    pub messages_in: Family<TransportLabel, Counter>,
    pub bytes_in: Family<TransportLabel, Counter>,
    pub points_stored: Counter,
    /// Device messages refused, by reason: MQTT refusals (`bad_payload`, `rate_exceeded`, ...)
    /// and, on every transport, the telemetry key caps (`too_many_keys`, `key_quota_exceeded`).
    pub publish_rejected: Family<ReasonLabel, Counter>,
    pub store_flushes: Counter,
    pub store_commits: Counter,
    pub store_flush_seconds: Histogram,
    pub store_flush_batch: Histogram,
    pub http_requests: Counter,
    /// HTTP responses by route, method and status.
    pub http_responses: Family<RouteStatusLabel, Counter>,
    /// Time to the response's head by route and method (a streamed body may take longer).
    pub http_request_seconds: HistogramFamily<RouteLabel>,
    /// Unfinished jobs by state (`queued`, `sent`, `delivered`), counted when scraped.
    pub jobs_unfinished: Family<StateLabel, Gauge>,
    /// Devices of each campaign with work left, by update state.
    pub ota_devices: Family<OtaLabel, Gauge>,
    pub worker_runs: Family<WorkerLabel, Counter>,
    pub worker_failures: Family<WorkerLabel, Counter>,
    pub worker_seconds: Family<WorkerLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub worker_running: Family<WorkerLabel, Gauge>,
    /// HTTP and HTTPS connections open, set when metrics are scraped.
    pub http_connections: Gauge,
    /// Device messages received and not yet answered, set when metrics are scraped.
    pub messages_in_flight: Gauge,
    /// Device messages received and waiting for room, set when metrics are scraped.
    pub messages_waiting: Gauge,
    /// Times a device connection stopped being read because `limits.messages_in_flight`
    /// messages were already waiting.
    pub ingest_read_pauses: Counter,
    /// HTTP connections closed at accept because a connection cap was reached.
    pub http_connections_refused: Family<ReasonLabel, Counter>,
    /// HTTP connections closed by a deadline (header, body, idle).
    pub http_timeouts: Family<ReasonLabel, Counter>,
    /// Audit records not written because their client address was over its rate.
    pub audit_suppressed: Family<KindLabel, Counter>,
    /// Device messages stored (telemetry, any transport), for the message rate.
    pub telemetry_messages: Counter,
    /// Samples of `telemetry_messages` over the last minute, for `recent_message_rate`.
    rate_samples: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, u64)>>,
    pub integration_queue_depth: Family<IntegrationLabel, Gauge>,
    pub integration_queue_bytes: Family<IntegrationLabel, Gauge>,
    pub integration_oldest_age_seconds: Family<IntegrationLabel, Gauge>,
    pub integration_delivered: Family<IntegrationLabel, Counter>,
    pub integration_failed_attempts: Family<IntegrationLabel, Counter>,
    pub integration_dropped: Family<IntegrationLabel, Counter>,
    pub integration_dead_letters: Family<IntegrationLabel, Gauge>,
    pub integration_alarm: Family<IntegrationLabel, Gauge>,
    pub integration_delivery_seconds: Histogram,
    /// Open device conditions per severity, counted when metrics are scraped.
    pub conditions_open: Family<SeverityLabel, Gauge>,
    /// The process, read from `/proc/self` when metrics are scraped.
    process_rss_bytes: Gauge,
    process_cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    process_open_fds: Gauge,
    /// Bytes the store takes on disk, set when metrics are scraped.
    pub store_size_bytes: Gauge,
}

/// Label set of the build-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BuildLabel {
    pub version: &'static str,
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
        let device_connects = Counter::default();
        registry.register(
            "device_connects",
            "Device sessions opened",
            device_connects.clone(),
        );
        let device_disconnects = Counter::default();
        registry.register(
            "device_disconnects",
            "Device sessions closed",
            device_disconnects.clone(),
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
        let store_commits = Counter::default();
        registry.register(
            "store_commits",
            "Flushes of the embedded database that make registry, job and audit writes durable",
            store_commits.clone(),
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
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "HTTP and HTTPS connections open",
            http_connections.clone(),
        );
        let messages_in_flight = Gauge::default();
        registry.register(
            "messages_in_flight",
            "Device messages received and not yet answered",
            messages_in_flight.clone(),
        );
        let messages_waiting = Gauge::default();
        registry.register(
            "messages_waiting",
            "Device messages received and waiting for room (limits.messages_in_flight)",
            messages_waiting.clone(),
        );
        let ingest_read_pauses = Counter::default();
        registry.register(
            "ingest_read_pauses",
            "Times a device connection stopped being read because too many messages were in flight",
            ingest_read_pauses.clone(),
        );
        let http_connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at accept by a connection cap (reason: total, per_address)",
            http_connections_refused.clone(),
        );
        let http_timeouts = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "http_timeouts",
            "HTTP connections closed or requests ended by a deadline (reason: header, body, idle, tls_handshake)",
            http_timeouts.clone(),
        );
        let audit_suppressed = Family::<KindLabel, Counter>::default();
        registry.register(
            "audit_suppressed",
            "Audit records of unauthenticated clients not written: their address was over its rate",
            audit_suppressed.clone(),
        );
        let telemetry_messages = Counter::default();
        registry.register(
            "telemetry_messages",
            "Device telemetry messages stored",
            telemetry_messages.clone(),
        );
        let integration_queue_depth = Family::<IntegrationLabel, Gauge>::default();
        registry.register(
            "integration_queue_depth",
            "Entries waiting in an integration's queue",
            integration_queue_depth.clone(),
        );
        let integration_queue_bytes = Family::<IntegrationLabel, Gauge>::default();
        registry.register(
            "integration_queue_bytes",
            "Bytes held by an integration's queue",
            integration_queue_bytes.clone(),
        );
        let integration_oldest_age_seconds = Family::<IntegrationLabel, Gauge>::default();
        registry.register(
            "integration_oldest_age_seconds",
            "Age of the oldest entry of an integration's queue",
            integration_oldest_age_seconds.clone(),
        );
        let integration_delivered = Family::<IntegrationLabel, Counter>::default();
        registry.register(
            "integration_delivered",
            "Entries an integration's receiver accepted",
            integration_delivered.clone(),
        );
        let integration_failed_attempts = Family::<IntegrationLabel, Counter>::default();
        registry.register(
            "integration_failed_attempts",
            "Delivery attempts that failed (network, timeout, non-2xx)",
            integration_failed_attempts.clone(),
        );
        let integration_dropped = Family::<IntegrationLabel, Counter>::default();
        registry.register(
            "integration_dropped",
            "Entries dropped by an integration's queue or dead-letter caps",
            integration_dropped.clone(),
        );
        let integration_dead_letters = Family::<IntegrationLabel, Gauge>::default();
        registry.register(
            "integration_dead_letters",
            "Entries in an integration's dead-letter store",
            integration_dead_letters.clone(),
        );
        let integration_alarm = Family::<IntegrationLabel, Gauge>::default();
        registry.register(
            "integration_alarm",
            "1 while an integration's queue alarm is raised (entries were dropped)",
            integration_alarm.clone(),
        );
        let integration_delivery_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
        ]);
        registry.register(
            "integration_delivery_seconds",
            "Time from queueing to the receiver's 2xx, per entry",
            integration_delivery_seconds.clone(),
        );
        let conditions_open = Family::<SeverityLabel, Gauge>::default();
        registry.register(
            "conditions_open",
            "Device conditions open now, per severity",
            conditions_open.clone(),
        );
        let process_rss_bytes = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            process_rss_bytes.clone(),
        );
        let process_cpu_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "process_cpu_seconds",
            "CPU time the server process has used (user and system)",
            process_cpu_seconds.clone(),
        );
        let process_open_fds = Gauge::default();
        registry.register(
            "process_open_fds",
            "Open file descriptors of the server process (sockets included)",
            process_open_fds.clone(),
        );
        let http_responses = Family::<RouteStatusLabel, Counter>::default();
        registry.register(
            "http_responses",
            "HTTP responses by route template, method and status code",
            http_responses.clone(),
        );
        let http_request_seconds: HistogramFamily<RouteLabel> =
            Family::new_with_constructor(http_latency_histogram);
        registry.register(
            "http_request_seconds",
            "Seconds from an HTTP request to its response's head, by route template and method",
            http_request_seconds.clone(),
        );
        let jobs_unfinished = Family::<StateLabel, Gauge>::default();
        registry.register(
            "jobs_unfinished",
            "Jobs not finished yet, by state (queued, sent, delivered)",
            jobs_unfinished.clone(),
        );
        let ota_devices = Family::<OtaLabel, Gauge>::default();
        registry.register(
            "ota_devices",
            "Devices of each OTA campaign still running, by update state",
            ota_devices.clone(),
        );
        let worker_runs = Family::<WorkerLabel, Counter>::default();
        registry.register(
            "worker_runs",
            "Runs of a background worker (scheduler, retention, sweeps, backups)",
            worker_runs.clone(),
        );
        let worker_failures = Family::<WorkerLabel, Counter>::default();
        registry.register(
            "worker_failures",
            "Runs of a background worker that ended in an error",
            worker_failures.clone(),
        );
        let worker_seconds =
            Family::<WorkerLabel, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "worker_seconds",
            "Seconds spent in a background worker's runs",
            worker_seconds.clone(),
        );
        let worker_running = Family::<WorkerLabel, Gauge>::default();
        registry.register(
            "worker_running",
            "1 while a background worker is in a run",
            worker_running.clone(),
        );
        let store_size_bytes = Gauge::default();
        registry.register(
            "store_size_bytes",
            "Bytes the store takes on disk",
            store_size_bytes.clone(),
        );
        let build_info = Family::<BuildLabel, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the label names the running version",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Self {
            device_connects,
            device_disconnects,
            process_rss_bytes,
            process_cpu_seconds,
            process_open_fds,
            store_size_bytes,
            conditions_open,
            telemetry_messages,
            rate_samples: Default::default(),
            integration_queue_depth,
            integration_queue_bytes,
            integration_oldest_age_seconds,
            integration_delivered,
            integration_failed_attempts,
            integration_dropped,
            integration_dead_letters,
            integration_alarm,
            integration_delivery_seconds,
            registry,
            connections,
            connects_refused,
            messages_in,
            bytes_in,
            points_stored,
            publish_rejected,
            store_flushes,
            store_commits,
            store_flush_seconds,
            store_flush_batch,
            http_requests,
            http_responses,
            http_request_seconds,
            jobs_unfinished,
            ota_devices,
            worker_runs,
            worker_failures,
            worker_seconds,
            worker_running,
            http_connections,
            messages_in_flight,
            messages_waiting,
            ingest_read_pauses,
            http_connections_refused,
            http_timeouts,
            audit_suppressed,
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

    /// Reads the process's resident memory, CPU time and open files from `/proc/self` (Linux;
    /// elsewhere they stay 0).
    pub fn sample_process(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
            if let Some(kib) = kib {
                self.process_rss_bytes.set(kib * 1024);
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which may hold spaces: utime and stime are the
            // 12th and 13th, in USER_HZ ticks (100 per second on Linux).
            let ticks: Option<u64> = stat.rsplit_once(')').and_then(|(_, rest)| {
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            });
            if let Some(t) = ticks {
                self.process_cpu_seconds.set(t as f64 / 100.0);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.process_open_fds.set(fds.count() as i64);
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
