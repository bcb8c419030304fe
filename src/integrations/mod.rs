//! The integrations service: webhooks fed from durable queues. It owns the rules (validation,
//! names, secrets that never leave the server), keeps the routing snapshot current, runs one
//! delivery task per integration and reports their status. Queue storage is the store's;
//! routing is in `routing`, sending in `delivery`.

pub mod delivery;
pub mod routing;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use utoipa::ToSchema;

use crate::devices::protocol;
use crate::error::{Conflict, Error};
use crate::events::EventBus;
use crate::metrics::{IntegrationLabel, Metrics};
use crate::model::{
    ClientErrorPolicy, EventKind, FleetId, Integration, IntegrationId, Millis, Secret, WorkspaceId,
    now_ms,
};
use crate::store::ports::{Cursor, Enqueue, IntegrationStore, QueueStats, RegistryStore};
use crate::workers::Workers;
use delivery::Worker;
pub use routing::Router;

type Result<T> = std::result::Result<T, Error>;

/// A header sent with every request (e.g. `Authorization: Bearer ...`); the value is a secret.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthHeader {
    pub name: String,
    pub value: String,
}

/// An integration to create. Absent settings take the documented defaults.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIntegration {
    /// 1 to 128 characters after trimming surrounding whitespace; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    /// `http://` or `https://` URL the batches are POSTed to.
    #[schema(pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: String,
    /// Only devices of this workspace.
    pub workspace_id: Option<WorkspaceId>,
    /// Only devices of these fleets (empty: all).
    #[serde(default)]
    pub fleet_ids: Vec<FleetId>,
    /// Only telemetry under these tags (empty: all). Other kinds of events are not tagged.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only these kinds of events (empty: all).
    #[serde(default)]
    pub kinds: Vec<EventKind>,
    pub auth_header: Option<AuthHeader>,
    /// HMAC-SHA256 key for `X-Corral-Signature`; generated (and returned once) when absent.
    #[schema(min_length = 16, max_length = 512)]
    pub signing_secret: Option<String>,
    /// Entries per request (1 to 1000, default 100).
    #[schema(minimum = 1, maximum = 1000)]
    pub max_items: Option<u32>,
    /// How long a batch smaller than `max_items` may wait to fill up (0 to 60000 ms, default 0).
    #[schema(minimum = 0, maximum = 60000)]
    pub max_wait_ms: Option<u64>,
    /// Request timeout (100 to 120000 ms, default 10000).
    #[schema(minimum = 100, maximum = 120000)]
    pub timeout_ms: Option<u64>,
    /// PEM CA certificate(s) to trust instead of the system roots.
    pub ca_pem: Option<String>,
    pub on_client_error: Option<ClientErrorPolicy>,
    /// First retry delay (10 to 60000 ms, default 500); doubles on each failure.
    #[schema(minimum = 10, maximum = 60000)]
    pub retry_initial_ms: Option<u64>,
    /// Longest retry delay (default 60000 ms, at most an hour).
    #[schema(minimum = 10, maximum = 3600000)]
    pub retry_max_ms: Option<u64>,
    /// Queue cap in bytes (at least 1024, default 256 MiB).
    #[schema(minimum = 1024, maximum = 1125899906842624_i64)]
    pub max_bytes: Option<u64>,
    /// Queue cap in age (default 7 days).
    #[schema(minimum = 1, maximum = 315360000)]
    pub max_age_secs: Option<u64>,
    /// Dead letters kept (1 to 1,000,000, default 10,000).
    #[schema(minimum = 1, maximum = 1000000)]
    pub dead_letter_max: Option<u64>,
    /// Create it paused: entries queue up, nothing is sent.
    #[serde(default)]
    pub paused: bool,
}

/// Changes to an integration; absent fields stay as they are. `null` clears an optional
/// setting (`workspace_id`, `auth_header`, `ca_pem`).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntegrationPatch {
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: Option<String>,
    #[schema(pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub workspace_id: Option<Option<WorkspaceId>>,
    pub fleet_ids: Option<Vec<FleetId>>,
    pub tags: Option<Vec<String>>,
    pub kinds: Option<Vec<EventKind>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<AuthHeader>)]
    pub auth_header: Option<Option<AuthHeader>>,
    #[schema(min_length = 16, max_length = 512)]
    pub signing_secret: Option<String>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_items: Option<u32>,
    #[schema(minimum = 0, maximum = 60000)]
    pub max_wait_ms: Option<u64>,
    #[schema(minimum = 100, maximum = 120000)]
    pub timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub ca_pem: Option<Option<String>>,
    pub on_client_error: Option<ClientErrorPolicy>,
    #[schema(minimum = 10, maximum = 60000)]
    pub retry_initial_ms: Option<u64>,
    #[schema(minimum = 10, maximum = 3600000)]
    pub retry_max_ms: Option<u64>,
    #[schema(minimum = 1024, maximum = 1125899906842624_i64)]
    pub max_bytes: Option<u64>,
    #[schema(minimum = 1, maximum = 315360000)]
    pub max_age_secs: Option<u64>,
    #[schema(minimum = 1, maximum = 1000000)]
    pub dead_letter_max: Option<u64>,
}

fn double_option<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// What an integration's delivery is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationState {
    /// Stopped by an operator; events still queue.
    Paused,
    /// Nothing queued.
    Idle,
    /// Sending what is queued.
    Delivering,
    /// The last attempt failed; the next one waits out its backoff.
    Retrying,
}

impl IntegrationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Idle => "idle",
            Self::Delivering => "delivering",
            Self::Retrying => "retrying",
        }
    }
}

/// Live state of an integration.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IntegrationStatus {
    pub state: IntegrationState,
    pub queue_depth: u64,
    pub queue_bytes: u64,
    /// Age of the oldest queued entry.
    pub oldest_age_ms: Option<Millis>,
    /// Entries delivered since the server started.
    pub delivered_total: u64,
    /// Entries delivered per second over the last minute.
    pub delivered_per_sec: f64,
    pub failed_attempts: u64,
    /// Entries dropped by the caps since the server started.
    pub dropped_total: u64,
    pub dead_letters: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub last_delivery_at: Option<Millis>,
    pub next_attempt_at: Option<Millis>,
    /// Raised when entries were dropped; cleared once the queue is under 90 % of its caps.
    pub alarm: bool,
    pub alarm_since: Option<Millis>,
}

/// An integration as the API shows it: no secret, ever.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IntegrationView {
    pub id: IntegrationId,
    pub name: String,
    pub url: String,
    pub workspace_id: Option<WorkspaceId>,
    pub fleet_ids: Vec<FleetId>,
    pub tags: Vec<String>,
    pub kinds: Vec<EventKind>,
    /// Name of the auth header; its value is write-only.
    pub auth_header_name: Option<String>,
    pub max_items: u32,
    pub max_wait_ms: u64,
    pub timeout_ms: u64,
    /// Whether a CA replaces the system roots (the PEM itself is not repeated).
    pub custom_ca: bool,
    pub on_client_error: ClientErrorPolicy,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub max_bytes: u64,
    pub max_age_secs: u64,
    pub dead_letter_max: u64,
    pub paused: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub status: IntegrationStatus,
}

/// The answer to a create: the integration, and the signing secret when Corral generated it
/// (shown this once only).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedIntegration {
    pub integration: IntegrationView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

/// One dead letter as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// The idempotency key the entry was (and will again be) delivered with.
    pub id: String,
    pub seq: u64,
    pub queued_at: Millis,
    pub dead_at: Millis,
    pub reason: String,
    #[schema(value_type = Object)]
    pub event: Json,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterView>,
    pub next_cursor: Option<String>,
}

struct Running {
    worker: Arc<Worker>,
}

/// The name of an integration's delivery worker in `GET /api/v1/workers` and `/metrics`.
fn worker_name(id: IntegrationId) -> String {
    format!("integration-{id}")
}

pub struct IntegrationService {
    store: Arc<dyn IntegrationStore>,
    /// For checking that an integration names workspaces and fleets that exist.
    registry: Arc<dyn RegistryStore>,
    router: Arc<Router>,
    events: EventBus,
    metrics: Arc<Metrics>,
    workers: Mutex<HashMap<IntegrationId, Running>>,
    /// Where the committer and each integration's delivery run, as named workers.
    background: Arc<Workers>,
    /// Serializes creates, updates and deletes (name checks and the routing snapshot).
    changing: tokio::sync::Mutex<()>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

const DEFAULT_MAX_BYTES: u64 = 256 << 20;
const DEFAULT_MAX_AGE_SECS: u64 = 7 * 86_400;

impl IntegrationService {
    pub fn new(
        store: Arc<dyn IntegrationStore>,
        registry: Arc<dyn RegistryStore>,
        router: Arc<Router>,
        events: EventBus,
        metrics: Arc<Metrics>,
        background: Arc<Workers>,
    ) -> Self {
        Self {
            store,
            registry,
            router,
            events,
            metrics,
            workers: Mutex::default(),
            background,
            changing: tokio::sync::Mutex::new(()),
        }
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<IntegrationId, Running>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the integrations, routes to them and starts their delivery workers (before
    /// devices are accepted). Returns how many there are. The workers stop with the others.
    pub async fn start(&self) -> Result<usize> {
        let (store, wanted) = (self.store.clone(), self.router.commit_wanted.clone());
        self.background.spawn(
            "integration-commits",
            "makes events queued for integrations durable: one commit for everything queued meanwhile",
            |mut stop, report| async move {
                loop {
                    tokio::select! {
                        _ = wanted.notified() => {}
                        _ = stop.changed() => break,
                    }
                    let _ = report
                        .run(|| async {
                            store.commit().await.map_err(|e| {
                                format!("cannot commit integration queue entries: {e}")
                            })
                        })
                        .await;
                }
            },
        );
        if let Some(mut tapped) = self.router.take_tapped() {
            let router = self.router.clone();
            self.background.spawn(
                "integration-events",
                "queues connectivity, client attribute, condition and job result events for the integrations they go to",
                |mut stop, report| async move {
                    loop {
                        let e = tokio::select! {
                            e = tapped.recv() => e,
                            _ = stop.changed() => break,
                        };
                        let Some(e) = e else { break };
                        let router = router.clone();
                        let _ = report
                            .run(|| async move {
                                router.route_event(&e).await;
                                Ok(())
                            })
                            .await;
                    }
                    // What was published before the stop is queued, for the last commit.
                    while let Ok(e) = tapped.try_recv() {
                        router.route_event(&e).await;
                    }
                },
            );
        }
        let list = self.store.list_integrations().await?;
        self.router.set(&list);
        let n = list.len();
        for i in list {
            self.spawn(i);
        }
        Ok(n)
    }

    fn spawn(&self, i: Integration) {
        let Some(stats) = self.store.queue_stats(i.id) else {
            return;
        };
        let worker = Arc::new(Worker::new(i));
        let (store, metrics, events) = (
            self.store.clone(),
            self.metrics.clone(),
            self.events.clone(),
        );
        self.workers().insert(
            worker.id,
            Running {
                worker: worker.clone(),
            },
        );
        self.background.spawn_removable(
            &worker_name(worker.id),
            "delivers an integration's queued events to its receiver (named by the integration's id)",
            |report| {
                delivery::run(delivery::Ctx {
                    worker,
                    store,
                    stats,
                    metrics,
                    events,
                    report,
                })
            },
        );
    }

    async fn refresh_routes(&self) -> Result<()> {
        self.router.set(&self.store.list_integrations().await?);
        Ok(())
    }

    async fn record(&self, id: IntegrationId) -> Result<Integration> {
        self.store
            .get_integration(id)
            .await?
            .ok_or(Error::NotFound("integration"))
    }

    async fn check_name_free(&self, name: &str, except: Option<IntegrationId>) -> Result<()> {
        let taken = self
            .store
            .list_integrations()
            .await?
            .iter()
            .any(|i| Some(i.id) != except && i.name.eq_ignore_ascii_case(name));
        if taken {
            return Err(Conflict::NameTaken {
                kind: "integration",
                name: name.to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Checks every setting of `i`.
    async fn validate(&self, i: &mut Integration) -> Result<()> {
        i.name =
            crate::names::check(&i.name, crate::names::MAX_NAME).map_err(|m| invalid("name", m))?;
        let url = reqwest::Url::parse(&i.url).map_err(|e| invalid("url", e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(
                "url",
                "must be an http:// or https:// URL with a host",
            ));
        }
        if let Some(ws) = i.workspace_id
            && self.registry.get_workspace(ws).await?.is_none()
        {
            return Err(Error::NotFound("workspace"));
        }
        for f in &i.fleet_ids {
            let fleet = self
                .registry
                .get_fleet(*f)
                .await?
                .ok_or(Error::NotFound("fleet"))?;
            if i.workspace_id.is_some_and(|w| w != fleet.workspace_id) {
                return Err(invalid(
                    "fleet_ids",
                    "a fleet is outside the integration's workspace",
                ));
            }
        }
        for t in &i.tags {
            protocol::check_tag(t).map_err(|e| invalid("tags", e.to_string()))?;
        }
        i.kinds.sort_by_key(|k| k.as_str());
        i.kinds.dedup();
        if let Some(name) = &i.auth_header_name {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid("auth_header", "not a valid header name"))?;
        }
        if let Some(v) = &i.auth_header_value {
            reqwest::header::HeaderValue::from_str(&v.0)
                .map_err(|_| invalid("auth_header", "not a valid header value"))?;
        }
        if !(16..=512).contains(&i.signing_secret.0.chars().count()) {
            return Err(invalid("signing_secret", "must be 16 to 512 characters"));
        }
        let range = |field, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(invalid(field, format!("must be {lo} to {hi}")))
            } else {
                Ok(())
            }
        };
        range("max_items", i.max_items as u64, 1, 1000)?;
        range("max_wait_ms", i.max_wait_ms, 0, 60_000)?;
        range("timeout_ms", i.timeout_ms, 100, 120_000)?;
        range("retry_initial_ms", i.retry_initial_ms, 10, 60_000)?;
        range(
            "retry_max_ms",
            i.retry_max_ms,
            i.retry_initial_ms,
            3_600_000,
        )?;
        range("max_bytes", i.max_bytes, 1024, 1 << 50)?;
        range("max_age_secs", i.max_age_secs, 1, 10 * 365 * 86_400)?;
        range("dead_letter_max", i.dead_letter_max, 1, 1_000_000)?;
        delivery::client_for(i).map_err(|e| invalid("ca_pem", e))?;
        Ok(())
    }

    pub async fn create(&self, new: NewIntegration) -> Result<CreatedIntegration> {
        let _guard = self.changing.lock().await;
        let generated = new.signing_secret.is_none().then(new_secret);
        let now = now_ms();
        let (auth_header_name, auth_header_value) = match new.auth_header {
            Some(h) => (Some(h.name), Some(Secret(h.value))),
            None => (None, None),
        };
        let mut i = Integration {
            id: IntegrationId::new(),
            name: new.name,
            url: new.url,
            workspace_id: new.workspace_id,
            fleet_ids: new.fleet_ids,
            tags: new.tags,
            kinds: new.kinds,
            auth_header_name,
            auth_header_value,
            signing_secret: Secret(
                new.signing_secret
                    .or_else(|| generated.clone())
                    .unwrap_or_default(),
            ),
            max_items: new.max_items.unwrap_or(100),
            max_wait_ms: new.max_wait_ms.unwrap_or(0),
            timeout_ms: new.timeout_ms.unwrap_or(10_000),
            ca_pem: new.ca_pem,
            on_client_error: new.on_client_error.unwrap_or_default(),
            retry_initial_ms: new.retry_initial_ms.unwrap_or(500),
            retry_max_ms: new.retry_max_ms.unwrap_or(60_000),
            max_bytes: new.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            max_age_secs: new.max_age_secs.unwrap_or(DEFAULT_MAX_AGE_SECS),
            dead_letter_max: new.dead_letter_max.unwrap_or(10_000),
            paused: new.paused,
            created_at: now,
            updated_at: now,
        };
        self.validate(&mut i).await?;
        self.check_name_free(&i.name, None).await?;
        self.store.put_integration(&i).await?;
        self.store.commit().await?;
        self.refresh_routes().await?;
        tracing::info!(integration = %i.id, name = %i.name, "integration created");
        self.spawn(i.clone());
        Ok(CreatedIntegration {
            integration: self.view(i).await,
            signing_secret: generated,
        })
    }

    pub async fn update(&self, id: IntegrationId, p: IntegrationPatch) -> Result<IntegrationView> {
        let _guard = self.changing.lock().await;
        let mut i = self.record(id).await?;
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = p.$f { i.$f = v; })* };
        }
        set!(
            name,
            url,
            workspace_id,
            fleet_ids,
            tags,
            kinds,
            max_items,
            max_wait_ms,
            timeout_ms,
            ca_pem,
            on_client_error,
            retry_initial_ms,
            retry_max_ms,
            max_bytes,
            max_age_secs,
            dead_letter_max
        );
        if let Some(h) = p.auth_header {
            (i.auth_header_name, i.auth_header_value) = match h {
                Some(h) => (Some(h.name), Some(Secret(h.value))),
                None => (None, None),
            };
        }
        if let Some(s) = p.signing_secret {
            i.signing_secret = Secret(s);
        }
        i.updated_at = now_ms().max(i.updated_at + 1);
        self.validate(&mut i).await?;
        self.check_name_free(&i.name, Some(id)).await?;
        self.save(i).await
    }

    /// Stores a changed integration and hands it to its delivery task.
    async fn save(&self, i: Integration) -> Result<IntegrationView> {
        self.store.put_integration(&i).await?;
        self.store.commit().await?;
        self.refresh_routes().await?;
        if let Some(r) = self.workers().get(&i.id) {
            *r.worker.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(i.clone());
            r.worker.control.notify_one();
        }
        Ok(self.view(i).await)
    }

    pub async fn set_paused(&self, id: IntegrationId, paused: bool) -> Result<IntegrationView> {
        let _guard = self.changing.lock().await;
        let mut i = self.record(id).await?;
        i.paused = paused;
        i.updated_at = now_ms().max(i.updated_at + 1);
        tracing::info!(integration = %id, paused, "integration paused or resumed");
        self.save(i).await
    }

    pub async fn delete(&self, id: IntegrationId) -> Result<()> {
        let _guard = self.changing.lock().await;
        self.record(id).await?;
        self.store.delete_integration(id).await?;
        self.refresh_routes().await?;
        self.workers().remove(&id);
        self.background.remove(&worker_name(id));
        let label = IntegrationLabel {
            integration: id.to_string(),
        };
        let m = &self.metrics;
        m.integration_queue_depth.remove(&label);
        m.integration_queue_bytes.remove(&label);
        m.integration_oldest_age_seconds.remove(&label);
        m.integration_dead_letters.remove(&label);
        m.integration_alarm.remove(&label);
        tracing::info!(integration = %id, "integration deleted");
        Ok(())
    }

    pub async fn get(&self, id: IntegrationId) -> Result<IntegrationView> {
        Ok(self.view(self.record(id).await?).await)
    }

    pub async fn list(&self) -> Result<Vec<IntegrationView>> {
        let mut out = Vec::new();
        for i in self.store.list_integrations().await? {
            out.push(self.view(i).await);
        }
        Ok(out)
    }

    /// The live status of one integration (the CLI resolves names to ids before asking).
    pub async fn status(&self, id: IntegrationId) -> Result<IntegrationStatus> {
        let i = self.record(id).await?;
        Ok(self.status_of(&i).await)
    }

    async fn status_of(&self, i: &Integration) -> IntegrationStatus {
        let stats = self.store.queue_stats(i.id);
        let load = |f: fn(&QueueStats) -> u64| stats.as_deref().map_or(0, f);
        let oldest = self.store.queue_oldest(i.id).await.ok().flatten();
        let workers = self.workers();
        let w = workers.get(&i.id).map(|r| r.worker.clone());
        drop(workers);
        let (health, delivered, failed, dropped, rate) = match &w {
            Some(w) => {
                let h = w.health();
                (
                    (
                        h.last_error.clone(),
                        h.last_error_at,
                        h.last_delivery_at,
                        h.next_attempt_at,
                        h.alarm_since,
                        h.delivering,
                    ),
                    w.delivered.load(Ordering::Relaxed),
                    w.failed_attempts.load(Ordering::Relaxed),
                    w.dropped.load(Ordering::Relaxed),
                    {
                        drop(h);
                        w.rate()
                    },
                )
            }
            None => ((None, None, None, None, None, false), 0, 0, 0, 0.0),
        };
        let (last_error, last_error_at, last_delivery_at, next_attempt_at, alarm_since, busy) =
            health;
        let depth = load(|s| s.depth.load(Ordering::Relaxed));
        let state = if i.paused {
            IntegrationState::Paused
        } else if next_attempt_at.is_some() {
            IntegrationState::Retrying
        } else if busy || depth > 0 {
            IntegrationState::Delivering
        } else {
            IntegrationState::Idle
        };
        IntegrationStatus {
            state,
            queue_depth: depth,
            queue_bytes: load(|s| s.bytes.load(Ordering::Relaxed)),
            oldest_age_ms: oldest.map(|t| (now_ms() - t).max(0)),
            delivered_total: delivered,
            delivered_per_sec: rate,
            failed_attempts: failed,
            dropped_total: dropped,
            dead_letters: load(|s| s.dead.load(Ordering::Relaxed)),
            last_error,
            last_error_at,
            last_delivery_at,
            next_attempt_at,
            alarm: alarm_since.is_some(),
            alarm_since,
        }
    }

    async fn view(&self, i: Integration) -> IntegrationView {
        let status = self.status_of(&i).await;
        IntegrationView {
            id: i.id,
            name: i.name,
            url: i.url,
            workspace_id: i.workspace_id,
            fleet_ids: i.fleet_ids,
            tags: i.tags,
            kinds: i.kinds,
            auth_header_name: i.auth_header_name,
            max_items: i.max_items,
            max_wait_ms: i.max_wait_ms,
            timeout_ms: i.timeout_ms,
            custom_ca: i.ca_pem.is_some(),
            on_client_error: i.on_client_error,
            retry_initial_ms: i.retry_initial_ms,
            retry_max_ms: i.retry_max_ms,
            max_bytes: i.max_bytes,
            max_age_secs: i.max_age_secs,
            dead_letter_max: i.dead_letter_max,
            paused: i.paused,
            created_at: i.created_at,
            updated_at: i.updated_at,
            status,
        }
    }

    /// Queues a test event for this integration only (whatever its filters), through the same
    /// queue and delivery as real events. Returns once it is durable.
    pub async fn send_test(&self, id: IntegrationId) -> Result<()> {
        let i = self.record(id).await?;
        let event = json!({
            "kind": "test",
            "ts": now_ms(),
            "integration_id": i.id,
            "message": "test event from Corral",
        });
        self.store.enqueue_later(Enqueue {
            integrations: vec![id],
            event: serde_json::to_vec(&event).unwrap_or_default(),
        });
        self.store.commit().await?;
        Ok(())
    }

    pub async fn dead_letters(
        &self,
        id: IntegrationId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage> {
        self.record(id).await?;
        let cursor = cursor.map(Cursor::new);
        let page = self.store.dead_letters(id, cursor.as_ref(), limit).await?;
        let items = page
            .items
            .into_iter()
            .map(|d| DeadLetterView {
                id: d.entry.key,
                seq: d.entry.seq,
                queued_at: d.entry.enqueued_at,
                dead_at: d.dead_at,
                reason: d.reason,
                event: serde_json::from_slice(&d.entry.event).unwrap_or(Json::Null),
            })
            .collect();
        Ok(DeadLetterPage {
            items,
            next_cursor: page.next_cursor.map(|c| c.to_string()),
        })
    }

    /// Moves every dead letter back to the tail of the queue (original order, original keys).
    pub async fn replay_dead_letters(&self, id: IntegrationId) -> Result<u64> {
        self.record(id).await?;
        let moved = self.store.requeue_dead(id).await?;
        tracing::info!(integration = %id, entries = moved.entries, "dead letters replayed");
        Ok(moved.entries)
    }

    pub async fn delete_dead_letters(&self, id: IntegrationId) -> Result<u64> {
        self.record(id).await?;
        let n = self.store.dead_delete(id).await?;
        self.store.commit().await?;
        Ok(n)
    }
}

/// A fresh signing secret: 32 random bytes, hex.
fn new_secret() -> String {
    let b: [u8; 32] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}
