//! Delivery: one task per integration reads the head of its queue, POSTs it as one signed JSON
//! batch and removes it on 2xx. Retryable failures (network, timeout, 408, 429, 5xx) back off
//! exponentially, or as long as the receiver's `Retry-After` asks, and hold the queue (never
//! skipping ahead, so order holds); other 4xx answers
//! move the batch to the dead-letter store (or are retried, per integration). The task also
//! enforces the queue's caps and raises and clears its alarm. The task is woken by the store on
//! every enqueue: no polling on the hot path.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::events::{Event, EventBus};
use crate::metrics::{IntegrationLabel, Metrics};
use crate::model::{ClientErrorPolicy, Integration, IntegrationId, Millis, now_ms};
use crate::store::ports::{IntegrationStore, QueueEntry, QueueStats};

/// Header carrying the Unix time (seconds) the request was signed at.
pub const TIMESTAMP_HEADER: &str = "X-Corral-Timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub const SIGNATURE_HEADER: &str = "X-Corral-Signature";
/// The entry's idempotency key, on single-entry batches (every entry also has `id`).
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// The signature header value for `body` signed at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The request body: a JSON array of the entries' events, each with its `id` first.
pub fn body_of(entries: &[QueueEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.event.len() + 32).sum::<usize>() + 2);
    out.push(b'[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Keys are hex: no escaping needed.
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(e.key.as_bytes());
        out.push(b'"');
        match e.event.strip_prefix(b"{") {
            Some(rest) if rest.trim_ascii_start() != b"}" => {
                out.push(b',');
                out.extend_from_slice(rest);
            }
            _ => out.push(b'}'),
        }
    }
    out.push(b']');
    out
}

/// The longest `Retry-After` honoured: a receiver asking for more gets retried after an hour
/// anyway, so a typo on its side cannot park the queue for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How one attempt went.
#[derive(Debug)]
pub(super) enum Outcome {
    Delivered,
    /// Try again later (network error, timeout, 408, 429, 5xx), after the receiver's
    /// `Retry-After` when it gave one.
    Retry(String, Option<Duration>),
    /// The receiver refused the batch for good (other 4xx).
    Refused(String),
}

/// Builds the HTTP client of an integration: its timeout, and its CA or the system roots.
pub(super) fn client_for(i: &Integration) -> Result<reqwest::Client, String> {
    crate::pki::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_millis(i.timeout_ms))
        .connect_timeout(Duration::from_millis(i.timeout_ms))
        // A redirect would resend the signed body somewhere the operator did not configure.
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &i.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("ca_pem: {e}"))?;
        if certs.is_empty() {
            return Err("ca_pem: no certificate found".into());
        }
        b = b.tls_certs_only(certs);
    }
    b.build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

pub(super) async fn post(
    client: &reqwest::Client,
    i: &Integration,
    entries: &[QueueEntry],
) -> Outcome {
    let body = body_of(entries);
    let ts = (now_ms() / 1000).to_string();
    let sig = sign(i.signing_secret.0.as_bytes(), &ts, &body);
    let mut req = client
        .post(&i.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(TIMESTAMP_HEADER, ts)
        .header(SIGNATURE_HEADER, sig);
    if let (Some(name), Some(value)) = (&i.auth_header_name, &i.auth_header_value) {
        req = req.header(name.as_str(), value.0.as_str());
    }
    if let [one] = entries {
        req = req.header(IDEMPOTENCY_HEADER, one.key.as_str());
    }
    match req.body(body).send().await {
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            Outcome::Retry(format!("{kind}: {}", e.without_url()), None)
        }
        Ok(resp) => {
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, std::time::SystemTime::now()));
            // Drain a little of the body so the connection can be reused.
            let _ = resp.bytes().await;
            match classify(status, i.on_client_error) {
                // Only 429 and 503 define Retry-After (RFC 9110 §10.2.3).
                Outcome::Retry(m, None)
                    if status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE =>
                {
                    Outcome::Retry(m, retry_after)
                }
                o => o,
            }
        }
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date, as a delay from `now` (a date in the
/// past is no delay), capped at [`MAX_RETRY_AFTER`]. `None` when it is neither.
fn retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        httpdate::parse_http_date(v)
            .ok()?
            .duration_since(now)
            .unwrap_or_default()
    };
    Some(d.min(MAX_RETRY_AFTER))
}

fn classify(status: StatusCode, policy: ClientErrorPolicy) -> Outcome {
    let msg = || format!("HTTP {status}");
    if status.is_success() {
        Outcome::Delivered
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Retry(msg(), None)
    } else if status.is_client_error() && policy == ClientErrorPolicy::DeadLetter {
        Outcome::Refused(msg())
    } else {
        // 1xx/3xx (redirects are not followed) and, by choice, 4xx: wait and retry.
        Outcome::Retry(msg(), None)
    }
}

/// What an integration's status shows besides its queue counters.
#[derive(Default)]
pub(super) struct Health {
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub last_delivery_at: Option<Millis>,
    pub next_attempt_at: Option<Millis>,
    pub alarm_since: Option<Millis>,
    pub delivering: bool,
    /// Entries delivered per wall-clock second, for the last minute.
    pub per_second: VecDeque<(i64, u64)>,
}

/// One integration's delivery state, shared by its task and the service.
pub(super) struct Worker {
    pub id: IntegrationId,
    pub cfg: RwLock<Arc<Integration>>,
    /// Woken on pause, resume and update.
    pub control: Notify,
    pub health: Mutex<Health>,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dropped: AtomicU64,
}

impl Worker {
    pub fn new(i: Integration) -> Self {
        Self {
            id: i.id,
            cfg: RwLock::new(Arc::new(i)),
            control: Notify::new(),
            health: Mutex::default(),
            delivered: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn cfg(&self) -> Arc<Integration> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries delivered per second over the last minute.
    pub fn rate(&self) -> f64 {
        let now = now_ms() / 1000;
        let h = self.health();
        let n: u64 = h
            .per_second
            .iter()
            .filter(|(s, _)| now - s < 60)
            .map(|(_, n)| n)
            .sum();
        n as f64 / 60.0
    }
}

/// Everything a delivery task needs.
pub(super) struct Ctx {
    pub worker: Arc<Worker>,
    pub store: Arc<dyn IntegrationStore>,
    pub stats: Arc<QueueStats>,
    pub metrics: Arc<Metrics>,
    pub events: EventBus,
    /// Each batch sent is a run of the integration's worker.
    pub report: crate::workers::Report,
}

impl Ctx {
    fn label(&self) -> IntegrationLabel {
        IntegrationLabel {
            integration: self.worker.id.to_string(),
        }
    }

    /// Applies the caps: drops the oldest entries past `max_bytes` or `max_age_secs`, raising
    /// the alarm when anything is dropped; clears it once the queue is back under 90 % of both.
    pub async fn enforce_caps(&self, cfg: &Integration) {
        let bytes = self.stats.bytes.load(Ordering::Relaxed);
        let oldest = self.store.queue_oldest(self.worker.id).await.ok().flatten();
        let now = now_ms();
        let max_age_ms = (cfg.max_age_secs as i64).saturating_mul(1000);
        let too_old = oldest.is_some_and(|t| now - t > max_age_ms);
        if bytes > cfg.max_bytes || too_old {
            match self
                .store
                .queue_drop_oldest(self.worker.id, cfg.max_bytes, now - max_age_ms)
                .await
            {
                Ok(m) if m.entries > 0 => self.dropped(m.entries, "queue cap reached"),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(integration = %self.worker.id, error = %e, "cannot apply the queue cap")
                }
            }
        }
        let alarm = self.worker.health().alarm_since.is_some();
        if alarm {
            let bytes = self.stats.bytes.load(Ordering::Relaxed);
            let age = self
                .store
                .queue_oldest(self.worker.id)
                .await
                .ok()
                .flatten()
                .map_or(0, |t| now - t);
            if bytes <= cfg.max_bytes / 10 * 9 && age <= max_age_ms / 10 * 9 {
                self.worker.health().alarm_since = None;
                self.metrics
                    .integration_alarm
                    .get_or_create(&self.label())
                    .set(0);
                tracing::info!(integration = %self.worker.id, "integration queue back under its caps; alarm cleared");
                self.events.publish(Event::IntegrationAlarm {
                    integration_id: self.worker.id,
                    raised: false,
                    dropped: 0,
                });
            }
        }
        self.gauges().await;
    }

    /// Counts entries dropped by a cap and raises the alarm: a drop is never silent.
    fn dropped(&self, n: u64, why: &'static str) {
        self.worker.dropped.fetch_add(n, Ordering::Relaxed);
        self.metrics
            .integration_dropped
            .get_or_create(&self.label())
            .inc_by(n);
        self.metrics
            .integration_alarm
            .get_or_create(&self.label())
            .set(1);
        self.worker.health().alarm_since.get_or_insert_with(now_ms);
        tracing::warn!(integration = %self.worker.id, dropped = n, reason = why, "integration entries dropped; alarm raised");
        self.events.publish(Event::IntegrationAlarm {
            integration_id: self.worker.id,
            raised: true,
            dropped: n,
        });
    }

    async fn gauges(&self) {
        let l = self.label();
        let m = &self.metrics;
        m.integration_queue_depth
            .get_or_create(&l)
            .set(self.stats.depth.load(Ordering::Relaxed) as i64);
        m.integration_queue_bytes
            .get_or_create(&l)
            .set(self.stats.bytes.load(Ordering::Relaxed) as i64);
        m.integration_dead_letters
            .get_or_create(&l)
            .set(self.stats.dead.load(Ordering::Relaxed) as i64);
        let age = self
            .store
            .queue_oldest(self.worker.id)
            .await
            .ok()
            .flatten()
            .map_or(0, |t| (now_ms() - t).max(0) / 1000);
        m.integration_oldest_age_seconds.get_or_create(&l).set(age);
    }

    fn record_delivered(&self, entries: &[QueueEntry]) {
        let now = now_ms();
        let n = entries.len() as u64;
        self.worker.delivered.fetch_add(n, Ordering::Relaxed);
        self.metrics
            .integration_delivered
            .get_or_create(&self.label())
            .inc_by(n);
        for e in entries {
            self.metrics
                .integration_delivery_seconds
                .observe((now - e.enqueued_at).max(0) as f64 / 1000.0);
        }
        let mut h = self.worker.health();
        h.last_delivery_at = Some(now);
        h.next_attempt_at = None;
        let sec = now / 1000;
        match h.per_second.back_mut() {
            Some((s, c)) if *s == sec => *c += n,
            _ => h.per_second.push_back((sec, n)),
        }
        while h.per_second.len() > 60 {
            h.per_second.pop_front();
        }
    }

    fn record_failure(&self, msg: &str) {
        self.worker.failed_attempts.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .integration_failed_attempts
            .get_or_create(&self.label())
            .inc();
        let mut h = self.worker.health();
        h.last_error = Some(msg.to_string());
        h.last_error_at = Some(now_ms());
    }
}

/// How often an idle or paused queue re-checks its age cap and refreshes its gauges.
const IDLE_TICK: Duration = Duration::from_secs(30);

/// The delivery loop of one integration; ends when its queue is deleted (the service aborts it
/// at shutdown).
pub(super) async fn run(ctx: Ctx) {
    let w = ctx.worker.clone();
    let mut backoff: Option<Duration> = None;
    let mut client: Option<(Millis, reqwest::Client)> = None;
    loop {
        if ctx.store.queue_stats(w.id).is_none() {
            return; // deleted
        }
        let cfg = w.cfg();
        ctx.enforce_caps(&cfg).await;
        let depth = ctx.stats.depth.load(Ordering::Relaxed);
        if cfg.paused || depth == 0 {
            // Idle or paused: wake on an enqueue (caps hold while paused too), on an operator's
            // action, and now and then for the age cap and the gauges.
            tokio::select! {
                _ = ctx.stats.notify.notified() => {}
                _ = w.control.notified() => {}
                _ = tokio::time::sleep(IDLE_TICK) => {}
            }
            continue;
        }
        // Batching: give a small batch up to `max_wait_ms` after its oldest entry to fill up.
        if cfg.max_wait_ms > 0 && depth < cfg.max_items as u64 {
            let oldest = ctx
                .store
                .queue_oldest(w.id)
                .await
                .ok()
                .flatten()
                .unwrap_or(0);
            let left =
                (oldest + cfg.max_wait_ms as i64 - now_ms()).clamp(0, cfg.max_wait_ms as i64);
            let deadline = Instant::now() + Duration::from_millis(left as u64);
            while ctx.stats.depth.load(Ordering::Relaxed) < cfg.max_items as u64 {
                tokio::select! {
                    _ = ctx.stats.notify.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = w.control.notified() => break,
                }
            }
        }
        let entries = match ctx.store.queue_head(w.id, cfg.max_items as usize).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(integration = %w.id, error = %e, "cannot read the integration queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if entries.is_empty() {
            // The counter ran ahead of the queue (entries dropped by a cap in between): wait
            // for the next entry rather than spin.
            tokio::select! {
                _ = ctx.stats.notify.notified() => {}
                _ = w.control.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        // The client is rebuilt when the integration changes (timeout, CA).
        let http = match &client {
            Some((at, c)) if *at == cfg.updated_at => c.clone(),
            _ => match client_for(&cfg) {
                Ok(c) => {
                    client = Some((cfg.updated_at, c.clone()));
                    c
                }
                Err(e) => {
                    ctx.record_failure(&e);
                    wait_backoff(&ctx, &cfg, &mut backoff, None).await;
                    continue;
                }
            },
        };
        w.health().delivering = true;
        let started = ctx.report.started();
        let outcome = {
            let mut attempt = pin!(post(&http, &cfg, &entries));
            // Caps hold while a slow request is out, too.
            loop {
                tokio::select! {
                    o = &mut attempt => break o,
                    _ = ctx.stats.notify.notified() => ctx.enforce_caps(&cfg).await,
                }
            }
        };
        w.health().delivering = false;
        ctx.report.finished(
            started,
            &match &outcome {
                Outcome::Delivered => Ok(()),
                Outcome::Refused(m) | Outcome::Retry(m, _) => Err(m.clone()),
            },
        );
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        match outcome {
            Outcome::Delivered => {
                if let Err(e) = ctx.store.queue_remove(w.id, &seqs).await {
                    tracing::error!(integration = %w.id, error = %e, "cannot remove delivered entries; they will be sent again");
                }
                ctx.record_delivered(&entries);
                backoff = None;
            }
            Outcome::Refused(msg) => {
                ctx.record_failure(&msg);
                tracing::warn!(integration = %w.id, entries = entries.len(), error = %msg, "the receiver refused a batch; moved to the dead letters");
                match ctx
                    .store
                    .dead_letter(w.id, &entries, &msg, cfg.dead_letter_max)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => ctx.dropped(n, "dead-letter cap reached"),
                    Err(e) => {
                        tracing::error!(integration = %w.id, error = %e, "cannot store dead letters")
                    }
                }
                backoff = None;
            }
            Outcome::Retry(msg, after) => {
                ctx.record_failure(&msg);
                tracing::debug!(integration = %w.id, error = %msg, retry_after = ?after, "delivery failed; retrying");
                wait_backoff(&ctx, &cfg, &mut backoff, after).await;
            }
        }
    }
}

/// Waits the next backoff delay (doubling from `retry_initial_ms` up to `retry_max_ms`), or the
/// receiver's `Retry-After` instead when it gave one (at least `retry_initial_ms`, so `0` cannot
/// make a busy loop), still enforcing caps on enqueue and ending early on pause, resume or
/// update.
async fn wait_backoff(
    ctx: &Ctx,
    cfg: &Integration,
    backoff: &mut Option<Duration>,
    retry_after: Option<Duration>,
) {
    let initial = Duration::from_millis(cfg.retry_initial_ms);
    let max = Duration::from_millis(cfg.retry_max_ms).max(initial);
    let next = backoff.map_or(initial, |b| (b * 2).min(max));
    *backoff = Some(next);
    let delay = retry_after.map_or(next, |d| d.max(initial));
    ctx.worker.health().next_attempt_at = Some(now_ms() + delay.as_millis() as i64);
    let deadline = Instant::now() + delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = ctx.stats.notify.notified() => ctx.enforce_caps(cfg).await,
            _ = ctx.worker.control.notified() => {
                // An operator acted (resume, update): try again now.
                *backoff = None;
                break;
            }
        }
    }
    ctx.worker.health().next_attempt_at = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HMAC-SHA256 as RFC 2104 defines it, from the SHA-256 of another crate: what a receiver
    /// would compute.
    fn reference_hmac(key: &[u8], data: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key);
        let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(data)
            .finalize();
        let outer = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        outer.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            reference_hmac(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = br#"[{"id":"0000000000000001"}]"#;
        assert_eq!(
            sign(b"s3cret", "1700000000", body),
            format!(
                "sha256={}",
                reference_hmac(b"s3cret", b"1700000000.[{\"id\":\"0000000000000001\"}]")
            )
        );
    }

    #[test]
    fn body_puts_the_key_first_in_every_event() {
        let e = |seq: u64, ev: &[u8]| QueueEntry {
            seq,
            key: format!("{seq:016x}"),
            enqueued_at: 0,
            event: ev.to_vec(),
            size: 0,
        };
        let body = body_of(&[e(1, br#"{"kind":"data","v":1}"#), e(2, b"{}")]);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!([
                {"id": "0000000000000001", "kind": "data", "v": 1},
                {"id": "0000000000000002"}
            ])
        );
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_capped() {
        let now = httpdate::parse_http_date("Tue, 24 Nov 2026 12:00:00 GMT").expect("date");
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Tue, 24 Nov 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Tue, 24 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: retry now"
        );
        assert_eq!(retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn statuses_are_classified() {
        let p = ClientErrorPolicy::DeadLetter;
        assert!(matches!(classify(StatusCode::OK, p), Outcome::Delivered));
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, p),
            Outcome::Delivered
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, p),
            Outcome::Retry(..)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, p),
            Outcome::Retry(..)
        ));
        assert!(matches!(
            classify(StatusCode::REQUEST_TIMEOUT, p),
            Outcome::Retry(..)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, p),
            Outcome::Refused(_)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, ClientErrorPolicy::Retry),
            Outcome::Retry(..)
        ));
        assert!(matches!(classify(StatusCode::FOUND, p), Outcome::Retry(..)));
    }
}
