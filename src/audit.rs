//! The audit log: credential events (issued, rotated, revoked, refused logins with their
//! reason, devices joining by certificate or provisioning) and administrative changes, kept in
//! the store, newest first, bounded in size. Records that a client without credentials can
//! cause are rate-limited per client address, so that a flood cannot push the trail of real
//! actions out of the bounded log. Records never carry a secret.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::limits::KeyedLimiter;
use crate::metrics::{KindLabel, Metrics};
use crate::model::{AuditEvent, AuditId, AuditKind, CredentialId, DeviceId, FleetId, now_ms};
use crate::store::ports::{Cursor, OperatorStore, Page, StoreError};

tokio::task_local! {
    /// The operator on whose behalf the current API request runs, set by the HTTP layer, so
    /// that records made deep in a service name who acted without every call passing it.
    static ACTOR: String;
}

/// Runs `f` with `actor` as the current operator (see `operator`).
pub async fn with_actor<F: std::future::Future>(actor: String, f: F) -> F::Output {
    ACTOR.scope(actor, f).await
}

/// The operator of the current API request, or `operator` outside one.
pub fn operator() -> String {
    ACTOR
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "operator".to_string())
}

/// Check the size bound once per this many records.
const TRIM_EVERY: u64 = 1024;

/// Records of one kind from one address without credentials: this many at once...
const UNAUTHENTICATED_BURST: u32 = 20;
/// ...then this many a minute (one a second).
const UNAUTHENTICATED_PER_MIN: u32 = 60;

/// Builder-style description of one event.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: AuditKind,
    /// Who: a username, `api-key:NAME`, `device`, ...
    pub actor: String,
    pub device_id: Option<DeviceId>,
    pub fleet_id: Option<FleetId>,
    pub credential_id: Option<CredentialId>,
    pub peer: Option<String>,
    pub detail: String,
}

impl Entry {
    pub fn new(kind: AuditKind, actor: impl Into<String>) -> Self {
        Self {
            kind,
            actor: actor.into(),
            device_id: None,
            fleet_id: None,
            credential_id: None,
            peer: None,
            detail: String::new(),
        }
    }
    pub fn device(mut self, d: DeviceId) -> Self {
        self.device_id = Some(d);
        self
    }
    pub fn fleet(mut self, f: FleetId) -> Self {
        self.fleet_id = Some(f);
        self
    }

    /// The fleet, when there is one.
    pub fn fleet_opt(mut self, f: Option<FleetId>) -> Self {
        self.fleet_id = f.or(self.fleet_id);
        self
    }
    pub fn credential(mut self, c: CredentialId) -> Self {
        self.credential_id = Some(c);
        self
    }
    pub fn peer(mut self, p: Option<std::net::SocketAddr>) -> Self {
        self.peer = p.map(|p| p.to_string());
        self
    }
    pub fn ip(mut self, p: Option<std::net::IpAddr>) -> Self {
        self.peer = p.map(|p| p.to_string());
        self
    }
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }
}

/// Filters of an audit listing.
#[derive(Debug, Clone, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    pub device_id: Option<DeviceId>,
    pub fleet_id: Option<FleetId>,
    /// Event kind, e.g. `auth_failed` (a name no record has matches nothing).
    pub kind: Option<String>,
    /// Who acted (a username, `api-key:NAME`, `device`).
    pub actor: Option<String>,
    /// Only events at or after this time (ms).
    pub since: Option<i64>,
}

pub struct AuditLog {
    store: Arc<dyn OperatorStore>,
    max_entries: usize,
    appended: AtomicU64,
    /// Records of clients without credentials, per address and kind.
    unauthenticated: KeyedLimiter<(IpAddr, AuditKind)>,
    metrics: Option<Arc<Metrics>>,
}

impl AuditLog {
    pub fn new(store: Arc<dyn OperatorStore>, max_entries: usize) -> Self {
        Self {
            store,
            max_entries,
            appended: AtomicU64::new(0),
            unauthenticated: KeyedLimiter::per_minute(
                UNAUTHENTICATED_PER_MIN,
                UNAUTHENTICATED_BURST,
            ),
            metrics: None,
        }
    }

    /// Counts the records `record_unauthenticated` leaves out in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records an event that a client without valid credentials caused (a refused device
    /// credential or API key, a throttled sign-in, a refused setup or provisioning request), at
    /// most a burst of 20 and then one a second per client address and kind; the rest are
    /// counted in `corral_audit_suppressed_total` and not written. Without an address (an
    /// in-process caller) the record is always written. Returns whether it was.
    pub fn record_unauthenticated(&self, e: Entry, peer: Option<IpAddr>) -> bool {
        let allowed = peer.is_none_or(|p| self.unauthenticated.allow(&(p.to_canonical(), e.kind)));
        if allowed {
            self.record(e);
        } else if let Some(m) = &self.metrics {
            m.audit_suppressed
                .get_or_create(&KindLabel {
                    kind: e.kind.as_str(),
                })
                .inc();
        }
        allowed
    }

    /// Records an event. Written by the store's writer thread, so a device connection never
    /// waits for it; durable with the next commit (admin actions commit right after).
    pub fn record(&self, e: Entry) {
        let ev = AuditEvent {
            id: AuditId::new(),
            ts: now_ms(),
            kind: e.kind,
            actor: e.actor,
            device_id: e.device_id,
            fleet_id: e.fleet_id,
            credential_id: e.credential_id,
            peer: e.peer,
            detail: e.detail,
        };
        tracing::info!(
            target: "corral::audit",
            kind = %ev.kind,
            actor = %ev.actor,
            device = ?ev.device_id,
            credential = ?ev.credential_id,
            peer = ?ev.peer,
            detail = %ev.detail,
            "audit"
        );
        let trim = self.appended.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1;
        let max = self.max_entries;
        self.store.append_audit_later(ev, trim.then_some(max));
    }

    /// Newest first; `before` is the cursor of the previous page.
    pub async fn list(
        &self,
        f: &AuditFilter,
        before: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<AuditEvent>, crate::error::Error> {
        self.list_where(f, before, limit, |_| true).await
    }

    /// As `list`, keeping only records `visible` accepts (the caller's).
    pub async fn list_where(
        &self,
        f: &AuditFilter,
        before: Option<&Cursor>,
        limit: usize,
        visible: impl Fn(&AuditEvent) -> bool + Sync,
    ) -> Result<Page<AuditEvent>, crate::error::Error> {
        Ok(self
            .store
            .list_audit(before, limit, &|e| {
                visible(e)
                    && f.device_id.is_none_or(|d| e.device_id == Some(d))
                    && f.actor.as_deref().is_none_or(|a| e.actor == a)
                    && f.fleet_id.is_none_or(|d| e.fleet_id == Some(d))
                    && f.kind.as_deref().is_none_or(|k| e.kind.as_str() == k)
                    && f.since.is_none_or(|s| e.ts >= s)
            })
            .await?)
    }

    /// Makes recorded events durable now (after `record`, for tests and admin actions).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.commit().await
    }
}

// The API's form of an audit record, apart from the stored record (`model::AuditEvent`).
/// One audit record: a credential or administrative event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = AuditEvent)]
pub struct AuditEventView {
    pub id: crate::model::AuditId,
    /// When it happened, ms since the epoch.
    pub ts: crate::model::Millis,
    pub kind: AuditKind,
    /// Who acted: a username (or `api-key:NAME` for the bootstrap key) for API changes and
    /// sign-ins, or e.g. `device`, `provisioning`, `setup`, `anonymous`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<crate::model::DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<crate::model::FleetId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<crate::model::CredentialId>,
    /// Remote address of the device or client, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Human-readable detail; never a secret.
    pub detail: String,
}

impl From<AuditEvent> for AuditEventView {
    fn from(r: AuditEvent) -> Self {
        Self {
            id: r.id,
            ts: r.ts,
            kind: r.kind,
            actor: r.actor,
            device_id: r.device_id,
            fleet_id: r.fleet_id,
            credential_id: r.credential_id,
            peer: r.peer,
            detail: r.detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_matches_the_record_today() {
        let full = AuditEvent {
            id: crate::model::AuditId::new(),
            ts: 7,
            kind: AuditKind::DeviceDeleted,
            actor: "ana".into(),
            device_id: Some(crate::model::DeviceId::new()),
            fleet_id: Some(crate::model::FleetId::new()),
            credential_id: Some(crate::model::CredentialId::new()),
            peer: Some("10.0.0.1".into()),
            detail: "d".into(),
        };
        let bare = AuditEvent {
            device_id: None,
            fleet_id: None,
            credential_id: None,
            peer: None,
            ..full.clone()
        };
        for r in [full, bare] {
            assert_eq!(
                serde_json::json!(r),
                serde_json::json!(AuditEventView::from(r.clone()))
            );
        }
    }
}
