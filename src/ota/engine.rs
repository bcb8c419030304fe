//! What happens to devices while campaigns run: the per-device update state machine (queued →
//! initiated → downloading → downloaded → verified → updating → updated, or failed or timed
//! out), driven by devices' own reports (`fw_state`, `current_fw_*`, `fw_error`, chunk requests,
//! reconnects) and by the clock (per-state deadlines, retries with backoff); and, per campaign,
//! waves, the success gate and soak time, the error threshold, the rate and the maintenance
//! window. Running campaigns live in memory, written through to the store: a tick or a batch
//! of reports is one commit, and a restart reloads them (`recover`), so a `kill -9` resumes
//! where the last commit left off and never starts a wave twice.
//!
//! Device reports reach the engine through a queue, off the transports' path: a device's
//! PUBACK never waits for campaign bookkeeping, and a burst of reports is applied in one
//! commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};

use serde_json::json;

use super::campaigns::{CampaignService, rate_at};
use super::packages::PackageService;
use crate::audit::Entry;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::jobs::NewJob;
use crate::jobs::schedule::WindowSpec;
use crate::model::{
    AuditKind, Campaign, CampaignId, CampaignState, DeviceId, DeviceUpdate, InstallMode, Millis,
    OnFailure, OtaState, OtaTransition, Package, PackageKind, Value, now_ms,
};

/// A device seen over HTTP counts as reachable this long (it polls; it has no session).
const HTTP_REACHABLE_MS: i64 = 10 * 60_000;
/// A device's timeline keeps this many transitions (the first and the newest).
const MAX_TIMELINE: usize = 200;
/// Retries wait at most this long.
const MAX_BACKOFF_MS: i64 = 3_600_000;

/// What a device said or did that an update may care about.
#[derive(Debug, Clone)]
pub struct Report {
    pub device: DeviceId,
    pub at: Millis,
    pub what: What,
}

#[derive(Debug, Clone)]
pub enum What {
    /// It opened a session.
    Connected,
    /// It asked for a chunk of its package.
    Chunk { kind: PackageKind, chunk: u64 },
    /// It reported OTA keys (telemetry or client attributes).
    State {
        kind: PackageKind,
        state: Option<String>,
        title: Option<String>,
        version: Option<String>,
        error: Option<String>,
        /// It has an MQTT session (else it speaks HTTP, and has no reconnect to wait for).
        via_session: bool,
    },
}

/// The engine's state: the campaigns that still have something to do, and the index the
/// transports consult on every message.
#[derive(Default)]
pub struct Engine {
    pub(super) state: tokio::sync::Mutex<State>,
    /// (device, type) → its running campaign: read on every device message, so a device with
    /// no campaign costs one map lookup.
    pub(super) active: RwLock<HashMap<(DeviceId, PackageKind), CampaignId>>,
    reports: Mutex<Vec<Report>>,
    wake: tokio::sync::Notify,
    http_seen: Mutex<HashMap<DeviceId, Millis>>,
    /// The title and version tracked devices last reported, as heard (before the store has
    /// them: a campaign that starts right after a report must not read an older value).
    pub(super) heard: Mutex<HashMap<(DeviceId, PackageKind), Heard>>,
}

/// What a device last said it runs.
#[derive(Debug, Clone, Default)]
pub(super) struct Heard {
    pub title: Option<String>,
    pub version: Option<String>,
    pub at: Millis,
}

#[derive(Default)]
pub struct State {
    live: BTreeMap<CampaignId, Live>,
}

/// A campaign in memory, with its devices.
pub(super) struct Live {
    c: Campaign,
    package: Package,
    devices: BTreeMap<DeviceId, DeviceUpdate>,
    /// Devices the rate lets start now (fractional; not stored: a restart starts one at once).
    credit: f64,
    credit_at: Millis,
    dirty: Vec<DeviceId>,
    campaign_dirty: bool,
    /// Devices that failed for good since the last flush: their own copy of the target keys
    /// goes, so they fall back to the fleet's target (what they run, as a rule) instead of
    /// downloading a package that failed on them again and again.
    untarget: Vec<DeviceId>,
}

impl Live {
    fn new(c: Campaign, package: Package, updates: Vec<DeviceUpdate>) -> Self {
        Self {
            c,
            package,
            devices: updates.into_iter().map(|u| (u.device_id, u)).collect(),
            credit: 1.0,
            credit_at: now_ms(),
            dirty: Vec::new(),
            campaign_dirty: false,
            untarget: Vec::new(),
        }
    }

    /// Whether it still has work: a campaign not finished, or devices still updating.
    fn has_work(&self) -> bool {
        !self.c.state.is_final() || self.devices.values().any(|u| u.state.in_flight())
    }

    fn count(&self, f: impl Fn(&DeviceUpdate) -> bool) -> u32 {
        self.devices.values().filter(|u| f(u)).count() as u32
    }
}

impl State {
    /// Whether campaign `id` is loaded and not finished.
    pub(super) fn running(&self, id: CampaignId) -> bool {
        self.live.get(&id).is_some_and(|l| !l.c.state.is_final())
    }

    /// Takes a started campaign in, and indexes its devices.
    pub(super) fn load(
        &mut self,
        c: Campaign,
        package: Package,
        updates: Vec<DeviceUpdate>,
        active: &RwLock<HashMap<(DeviceId, PackageKind), CampaignId>>,
    ) {
        let live = Live::new(c, package, updates);
        index(&live, active);
        self.live.insert(live.c.id, live);
    }
}

/// Puts a campaign's unfinished devices in the index (and takes its finished ones out).
fn index(l: &Live, active: &RwLock<HashMap<(DeviceId, PackageKind), CampaignId>>) {
    let mut a = active.write().unwrap_or_else(|p| p.into_inner());
    for u in l.devices.values() {
        let key = (u.device_id, l.c.kind);
        let tracked = if l.c.state.is_final() {
            u.state.in_flight()
        } else {
            !u.state.is_final()
        };
        if tracked && !l.c.state.is_final() {
            a.insert(key, l.c.id);
        } else if tracked {
            // A stopped campaign follows its devices still updating, unless a newer campaign
            // took them over.
            a.entry(key).or_insert(l.c.id);
        } else if a.get(&key) == Some(&l.c.id) {
            a.remove(&key);
        }
    }
}

impl Engine {
    pub(super) async fn snapshot(
        &self,
        id: CampaignId,
    ) -> Option<(Campaign, Package, Vec<DeviceUpdate>)> {
        let st = self.state.lock().await;
        st.live.get(&id).map(|l| {
            (
                l.c.clone(),
                l.package.clone(),
                l.devices.values().cloned().collect(),
            )
        })
    }

    pub(super) async fn device(&self, id: CampaignId, d: DeviceId) -> Option<DeviceUpdate> {
        let st = self.state.lock().await;
        st.live.get(&id).and_then(|l| l.devices.get(&d).cloned())
    }

    pub(super) fn tracks(&self, device: DeviceId) -> bool {
        let a = self.active.read().unwrap_or_else(|p| p.into_inner());
        a.contains_key(&(device, PackageKind::Firmware))
            || a.contains_key(&(device, PackageKind::Software))
    }

    fn push(&self, r: Report) {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
        self.wake.notify_one();
    }
}

/// Whether a reported version is `target`. Telemetry follows ThingsBoard's typing, so a
/// ThingsBoard device's `"current_fw_version": "1.10"` is stored (and reported here) as the
/// number 1.1: a version that reads as a number matches a target that reads as the same number.
/// Versions that are not decimal numbers (`v1.10`, `1.10.0`) stay exact.
pub(super) fn same_version(reported: &str, target: &str) -> bool {
    reported == target
        || matches!(
            (reported.parse::<f64>(), target.parse::<f64>()),
            (Ok(a), Ok(b)) if a == b && a.is_finite()
        )
}

/// The OTA keys of one message for one type.
#[derive(Debug, Default)]
struct OtaKeys {
    state: Option<String>,
    title: Option<String>,
    version: Option<String>,
    error: Option<String>,
}

/// The OTA keys of one message for one type: its state, reported title and version, error
/// (`None` when it has none of them).
fn ota_keys<'a>(
    values: impl Iterator<Item = (&'a str, &'a Value)>,
    kind: PackageKind,
) -> Option<OtaKeys> {
    let p = kind.prefix();
    let mut o = OtaKeys::default();
    let text = |v: &Value| match v {
        Value::Str(s) => s.clone(),
        other => crate::devices::attributes::to_json(other).to_string(),
    };
    for (k, v) in values {
        let current = k
            .strip_prefix("current_")
            .and_then(|r| r.strip_prefix(p))
            .and_then(|r| r.strip_prefix('_'));
        let own = k.strip_prefix(p).and_then(|r| r.strip_prefix('_'));
        match (current, own) {
            (Some("title"), _) => o.title = Some(text(v)),
            (Some("version"), _) => o.version = Some(text(v)),
            (_, Some("state")) => o.state = Some(text(v)),
            (_, Some("error")) => o.error = Some(text(v)).filter(|e| !e.is_empty()),
            _ => {}
        }
    }
    (o.state.is_some() || o.title.is_some() || o.version.is_some() || o.error.is_some())
        .then_some(o)
}

impl CampaignService {
    // ---- What transports call, on their own path: cheap, never waiting. ----

    /// Whether a device is in a campaign (one map lookup): only then are its messages
    /// looked at for OTA keys.
    pub fn tracks(&self, device: DeviceId) -> bool {
        self.engine.tracks(device)
    }

    /// A device opened a session.
    pub fn connected(&self, device: DeviceId) {
        if self.engine.tracks(device) {
            self.engine.push(Report {
                device,
                at: now_ms(),
                what: What::Connected,
            });
        }
    }

    /// A device made an HTTP request (it polls: it counts as reachable for a while).
    pub fn http_activity(&self, device: DeviceId) {
        if self.engine.tracks(device) {
            self.engine
                .http_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(device, now_ms());
        }
    }

    /// A device asked for chunk `chunk` of its package.
    pub fn chunk_requested(&self, device: DeviceId, kind: PackageKind, chunk: u64) {
        if self.engine.tracks(device) {
            self.engine.push(Report {
                device,
                at: now_ms(),
                what: What::Chunk { kind, chunk },
            });
        }
    }

    /// Values a device reported (telemetry or client attributes): OTA keys among them are
    /// taken as its update's progress.
    pub fn reported_values<'a>(
        &self,
        device: DeviceId,
        values: impl Iterator<Item = (&'a str, &'a Value)> + Clone,
    ) {
        if !self.engine.tracks(device) {
            return;
        }
        let via_session = self.presence.get(device).is_some();
        for kind in [PackageKind::Firmware, PackageKind::Software] {
            if let Some(OtaKeys {
                state,
                title,
                version,
                error,
            }) = ota_keys(values.clone(), kind)
            {
                if title.is_some() || version.is_some() {
                    let mut h = self.engine.heard.lock().unwrap_or_else(|p| p.into_inner());
                    let e = h.entry((device, kind)).or_default();
                    if title.is_some() {
                        e.title = title.clone();
                    }
                    if version.is_some() {
                        e.version = version.clone();
                    }
                    e.at = now_ms();
                }
                self.engine.push(Report {
                    device,
                    at: now_ms(),
                    what: What::State {
                        kind,
                        state,
                        title,
                        version,
                        error,
                        via_session,
                    },
                });
            }
        }
    }

    // ---- The worker's side. ----

    /// Waits for device reports and takes them all.
    pub async fn next_reports(&self) -> Vec<Report> {
        loop {
            let notified = self.engine.wake.notified();
            let batch = std::mem::take(
                &mut *self
                    .engine
                    .reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if !batch.is_empty() {
                return batch;
            }
            notified.await;
        }
    }

    /// Loads the campaigns that still have work (at start).
    pub async fn recover(&self) -> Result<usize> {
        let mut st = self.engine.state.lock().await;
        let mut n = 0;
        for c in self.store.campaigns().await? {
            if c.state == CampaignState::Draft || st.live.contains_key(&c.id) {
                continue;
            }
            let mut updates = self.store.device_updates(c.id).await?;
            let work = !c.state.is_final() || updates.iter().any(|u| u.state.in_flight());
            if !work {
                continue;
            }
            let package = self.packages.record(c.package_id).await?;
            // A wave recorded as started whose devices' entries did not make it: they start
            // now (the wave is not started again).
            for u in &mut updates {
                if u.state == OtaState::Pending && u.wave < c.waves_started {
                    u.state = OtaState::Queued;
                }
            }
            st.load(c, package, updates, &self.engine.active);
            n += 1;
        }
        drop(st);
        self.publish_metrics().await;
        Ok(n)
    }

    /// Applies device reports (one commit for the batch).
    pub async fn apply(&self, reports: Vec<Report>) -> Result<()> {
        let mut st = self.engine.state.lock().await;
        for r in reports {
            let kinds: Vec<(PackageKind, CampaignId)> = {
                let a = self.engine.active.read().unwrap_or_else(|p| p.into_inner());
                [PackageKind::Firmware, PackageKind::Software]
                    .into_iter()
                    .filter_map(|k| a.get(&(r.device, k)).map(|c| (k, *c)))
                    .collect()
            };
            for (kind, id) in kinds {
                let Some(l) = st.live.get_mut(&id) else {
                    continue;
                };
                self.on_report(l, kind, &r).await?;
            }
        }
        self.flush(&mut st).await
    }

    /// The scheduler's tick: deadlines, retries, thresholds, gates, waves, the rate.
    pub async fn tick(&self) -> Result<()> {
        let mut st = self.engine.state.lock().await;
        let ids: Vec<CampaignId> = st.live.keys().copied().collect();
        let mut rollbacks = Vec::new();
        for id in ids {
            let Some(l) = st.live.get_mut(&id) else {
                continue;
            };
            if let Some(rb) = self.advance(l).await? {
                rollbacks.push(rb);
            }
        }
        self.flush(&mut st).await?;
        drop(st);
        for (of, devices) in rollbacks {
            if let Err(e) = self.start_rollback(of, devices).await {
                tracing::error!(campaign = %of, error = %e, "cannot start the rollback campaign");
            }
        }
        Ok(())
    }

    /// Writes what changed (one commit), updates the index and metrics, and lets go of
    /// campaigns with nothing left to do.
    async fn flush(&self, st: &mut State) -> Result<()> {
        let mut wrote = false;
        for l in st.live.values_mut() {
            if !l.untarget.is_empty() {
                let devices = std::mem::take(&mut l.untarget);
                self.attributes
                    .drop_shared_many(&devices, &PackageService::target_keys(l.package.kind))
                    .await?;
            }
            if !l.dirty.is_empty() {
                l.dirty.sort();
                l.dirty.dedup();
                let updates: Vec<DeviceUpdate> = l
                    .dirty
                    .drain(..)
                    .filter_map(|d| l.devices.get(&d).cloned())
                    .collect();
                self.store.put_device_updates(&updates).await?;
                wrote = true;
                index(l, &self.engine.active);
            }
            if l.campaign_dirty {
                self.store.put_campaign(&l.c).await?;
                l.campaign_dirty = false;
                wrote = true;
                index(l, &self.engine.active);
            }
        }
        if wrote {
            self.store.commit().await?;
        }
        set_metrics(self, st);
        st.live.retain(|_, l| l.has_work());
        // HTTP activity matters only while recent, and only for devices still tracked.
        let now = now_ms();
        self.engine
            .http_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d, t| now - *t < HTTP_REACHABLE_MS && self.engine.tracks(*d));
        // By then the store has what was heard.
        self.engine
            .heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, h| now - h.at < HTTP_REACHABLE_MS);
        Ok(())
    }

    async fn publish_metrics(&self) {
        let st = self.engine.state.lock().await;
        set_metrics(self, &st);
    }

    // ---- The state machine. ----

    fn transition(&self, l: &mut Live, d: DeviceId, state: OtaState, detail: Option<String>) {
        let now = now_ms();
        let Some(u) = l.devices.get_mut(&d) else {
            return;
        };
        u.state = state;
        u.timeline.push(OtaTransition {
            at: now,
            state,
            detail: detail.clone(),
        });
        if u.timeline.len() > MAX_TIMELINE {
            u.timeline.remove(1);
        }
        l.dirty.push(d);
        tracing::debug!(campaign = %l.c.id, device = %d, state = state.as_str(), detail = ?detail, "device update");
        self.events.publish(Event::OtaDevice {
            campaign_id: l.c.id,
            device_id: d,
            state,
            detail,
        });
    }

    fn campaign_changed(&self, l: &mut Live, state: CampaignState, note: Option<String>) {
        l.c.state = state;
        l.c.note = note.clone();
        if state.is_final() {
            l.c.finished_at = Some(now_ms());
        }
        l.campaign_dirty = true;
        tracing::info!(campaign = %l.c.id, name = %l.c.name, state = state.as_str(), note = ?note, "campaign");
        self.events.publish(Event::Campaign {
            campaign_id: l.c.id,
            fleet_id: l.c.fleet_id,
            state,
            note,
        });
    }

    /// A device failed (`Failed`) or ran out of time (`TimedOut`): it retries after a backoff
    /// while it has retries of that kind left and the campaign goes on, else it has failed.
    fn fail(&self, l: &mut Live, d: DeviceId, kind: OtaState, reason: String) {
        let now = now_ms();
        let p = &l.c.policy;
        let cap = if kind == OtaState::TimedOut {
            p.retries_timed_out
        } else {
            p.retries_failed
        };
        let Some(u) = l.devices.get_mut(&d) else {
            return;
        };
        let used = u.attempts.saturating_sub(1);
        u.claimed_at = None;
        u.error = Some(reason.clone());
        let goes_on = matches!(l.c.state, CampaignState::Running | CampaignState::Paused);
        if goes_on && u.attempts > 0 && used < cap {
            let backoff = ((p.retry_backoff_secs * 1000) as i64)
                .saturating_mul(1 << used.min(20))
                .min(MAX_BACKOFF_MS);
            u.retry_at = Some(now + backoff);
            u.deadline = Some(now + backoff + (p.start_timeout_secs * 1000) as i64);
            let what = if kind == OtaState::TimedOut {
                "timed out"
            } else {
                "failed"
            };
            let detail = format!(
                "{what}: {reason}; retry {} of {cap} in {} s",
                used + 1,
                backoff / 1000
            );
            self.transition(l, d, OtaState::Queued, Some(detail));
        } else {
            u.retry_at = None;
            u.deadline = None;
            l.untarget.push(d);
            self.transition(l, d, kind, Some(reason));
        }
    }

    fn set_deadline(l: &mut Live, d: DeviceId, secs: Option<u64>) {
        if let Some(u) = l.devices.get_mut(&d) {
            u.deadline = secs.map(|s| now_ms() + (s * 1000) as i64);
        }
    }

    /// Whether the device's report names the package's title (when it names one) and version.
    fn is_target(l: &Live, title: Option<&str>, version: Option<&str>) -> bool {
        version.is_some_and(|v| same_version(v, &l.package.version))
            && title.is_none_or(|t| t == l.package.title)
    }

    async fn on_report(&self, l: &mut Live, kind: PackageKind, r: &Report) -> Result<()> {
        let d = r.device;
        let Some(u) = l.devices.get(&d).cloned() else {
            return Ok(());
        };
        if u.state.is_final() || u.state == OtaState::Pending {
            return Ok(());
        }
        let p = l.c.policy.clone();
        // A device waiting for a retry that goes on by itself (the ThingsBoard SDK asks again
        // after a failure, and at every boot while its target differs) starts its next attempt
        // now: it counts against the retries, so a device that keeps failing runs out of them.
        let progress = match &r.what {
            What::Chunk { kind: k, .. } => *k == kind,
            What::State { state, .. } => matches!(
                state.as_deref(),
                Some("DOWNLOADING" | "DOWNLOADED" | "VERIFIED" | "UPDATING" | "UPDATED")
            ),
            What::Connected => false,
        };
        let mut u = u;
        if u.state == OtaState::Queued && u.attempts > 0 && progress {
            let cap = p.retries_failed.max(p.retries_timed_out);
            if u.attempts > cap {
                return Ok(());
            }
            if let Some(x) = l.devices.get_mut(&d) {
                x.attempts += 1;
                x.retry_at = None;
                x.claimed_at = None;
            }
            Self::set_deadline(l, d, Some(p.download_timeout_secs));
            let n = u.attempts + 1;
            self.transition(
                l,
                d,
                OtaState::Initiated,
                Some(format!("the device tries again by itself (attempt {n})")),
            );
            u = match l.devices.get(&d) {
                Some(x) => x.clone(),
                None => return Ok(()),
            };
        }
        let working = u.state.in_flight();
        match &r.what {
            What::Connected => {
                if let Some(u) = l.devices.get_mut(&d) {
                    u.connected_at = Some(r.at);
                    l.dirty.push(d);
                }
            }
            What::Chunk { kind: k, chunk } => {
                if *k == kind && u.state == OtaState::Initiated {
                    self.transition(
                        l,
                        d,
                        OtaState::Downloading,
                        Some(format!("asks for chunk {chunk}")),
                    );
                }
            }
            What::State {
                state,
                title,
                version,
                error,
                via_session,
                ..
            } => {
                if let Some(v) = version
                    && let Some(u) = l.devices.get_mut(&d)
                    && u.reported_version.as_ref() != Some(v)
                {
                    u.reported_version = Some(v.clone());
                    l.dirty.push(d);
                }
                let on_target = Self::is_target(l, title.as_deref(), version.as_deref());
                let runs = || {
                    version
                        .clone()
                        .map(|v| match title {
                            Some(t) => format!("{t} {v}"),
                            None => v,
                        })
                        .unwrap_or_else(|| "an unknown version".into())
                };
                // Confirmation: the device said UPDATED earlier, and now reports its version
                // from a new session (or, over HTTP, in a later message).
                if let Some(claimed) = u.claimed_at
                    && version.is_some()
                    && state.as_deref() != Some("UPDATED")
                {
                    let reconnected = !via_session || u.connected_at.is_some_and(|c| c >= claimed);
                    if reconnected {
                        if on_target {
                            if let Some(u) = l.devices.get_mut(&d) {
                                u.deadline = None;
                                u.error = None;
                            }
                            self.transition(
                                l,
                                d,
                                OtaState::Updated,
                                Some(format!("runs {} after reconnecting", runs())),
                            );
                        } else {
                            self.fail(
                                l,
                                d,
                                OtaState::Failed,
                                format!("rolled back: runs {} after reconnecting", runs()),
                            );
                        }
                        return Ok(());
                    }
                }
                match state.as_deref() {
                    Some("DOWNLOADING") if working && u.state < OtaState::Downloading => {
                        self.transition(l, d, OtaState::Downloading, None);
                    }
                    Some("DOWNLOADED") if working && u.state < OtaState::Downloaded => {
                        Self::set_deadline(l, d, self.install_deadline(l));
                        self.transition(l, d, OtaState::Downloaded, None);
                        self.maybe_install(l, d).await?;
                    }
                    Some("VERIFIED") if working && u.state < OtaState::Verified => {
                        if u.state < OtaState::Downloaded {
                            Self::set_deadline(l, d, self.install_deadline(l));
                        }
                        self.transition(l, d, OtaState::Verified, None);
                        self.maybe_install(l, d).await?;
                    }
                    Some("UPDATING") if working && u.state < OtaState::Updating => {
                        self.transition(l, d, OtaState::Updating, None);
                    }
                    Some("UPDATED") if working => {
                        if !on_target {
                            self.fail(
                                l,
                                d,
                                OtaState::Failed,
                                format!("reports UPDATED but runs {}", runs()),
                            );
                        } else if !p.require_reconnect {
                            if let Some(u) = l.devices.get_mut(&d) {
                                u.deadline = None;
                                u.error = None;
                                u.claimed_at = Some(r.at);
                            }
                            self.transition(
                                l,
                                d,
                                OtaState::Updated,
                                Some(format!("reports UPDATED, runs {}", runs())),
                            );
                        } else if u.claimed_at.is_none() {
                            if let Some(u) = l.devices.get_mut(&d) {
                                u.claimed_at = Some(r.at);
                            }
                            Self::set_deadline(l, d, Some(p.confirm_timeout_secs));
                            self.transition(
                                l,
                                d,
                                OtaState::Updating,
                                Some(format!(
                                    "reports UPDATED to {}: waiting for it to reconnect on it",
                                    runs()
                                )),
                            );
                        }
                    }
                    Some("FAILED") if working => {
                        let why = error
                            .clone()
                            .unwrap_or_else(|| "the device reports FAILED".into());
                        self.fail(l, d, OtaState::Failed, why);
                    }
                    _ => {
                        // Not started yet (or told, and not started by the device), and
                        // already on the target: nothing to do. A device told of a version it
                        // runs says nothing more (the ThingsBoard SDK ignores such a target).
                        let not_started = (u.state == OtaState::Queued && u.attempts == 0)
                            || (u.state == OtaState::Initiated
                                && matches!(state.as_deref(), None | Some("IDLE")));
                        if not_started && on_target {
                            Self::set_deadline(l, d, None);
                            self.transition(
                                l,
                                d,
                                OtaState::Updated,
                                Some(format!("already runs {}", runs())),
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The install deadline, unless a download-only campaign waits for its install command.
    fn install_deadline(&self, l: &Live) -> Option<u64> {
        let waiting =
            l.c.policy.install == InstallMode::DownloadOnly && l.c.install_requested_at.is_none();
        (!waiting).then_some(l.c.policy.install_timeout_secs)
    }

    /// Sends the install command to a device of a download-only campaign whose command was
    /// given, once it has the package.
    async fn maybe_install(&self, l: &mut Live, d: DeviceId) -> Result<()> {
        if l.c.policy.install != InstallMode::DownloadOnly || l.c.install_requested_at.is_none() {
            return Ok(());
        }
        let p = l.package.kind.prefix();
        let attempt = l.devices.get(&d).map(|u| u.attempts).unwrap_or(0);
        self.attributes
            .set(
                d,
                crate::store::ports::Scope::Shared,
                vec![(format!("{p}_download_only"), Value::Bool(false))],
            )
            .await?;
        self.jobs
            .create(
                d,
                NewJob {
                    method: format!("{p}_install"),
                    params: json!({"title": l.package.title, "version": l.package.version}),
                    two_way: false,
                    ttl_secs: Some(l.c.policy.install_timeout_secs),
                    idempotency_key: Some(format!("ota-install-{}-{d}-{attempt}", l.c.id)),
                },
            )
            .await?;
        Self::set_deadline(l, d, Some(l.c.policy.install_timeout_secs));
        self.transition(
            l,
            d,
            l.devices
                .get(&d)
                .map(|u| u.state)
                .unwrap_or(OtaState::Verified),
            Some("install command sent".into()),
        );
        Ok(())
    }

    /// One campaign's step. Returns a rollback to start (the campaign and the devices it
    /// reached) when it aborted with one asked for.
    async fn advance(&self, l: &mut Live) -> Result<Option<(CampaignId, Vec<DeviceId>)>> {
        let now = now_ms();
        // Deadlines, whatever the campaign's state: nothing stays in flight for ever.
        let due: Vec<(DeviceId, OtaState, bool)> = l
            .devices
            .values()
            .filter(|u| !u.state.is_final() && u.deadline.is_some_and(|t| t <= now))
            .map(|u| (u.device_id, u.state, u.claimed_at.is_some()))
            .collect();
        for (d, state, claimed) in due {
            let p = &l.c.policy;
            let reason = match state {
                OtaState::Queued => {
                    format!("did not come online within {} s", p.start_timeout_secs)
                }
                OtaState::Initiated | OtaState::Downloading => {
                    format!(
                        "did not download the package within {} s",
                        p.download_timeout_secs
                    )
                }
                _ if claimed => format!(
                    "did not report the new version after reconnecting within {} s",
                    p.confirm_timeout_secs
                ),
                _ => format!("did not report UPDATED within {} s", p.install_timeout_secs),
            };
            // The start deadline is for devices that do not come online. One that is online
            // and only held (a paused campaign, a closed window, the rate) waits on.
            if state == OtaState::Queued
                && (l.c.state != CampaignState::Running || self.reachable(d, now))
            {
                Self::set_deadline(l, d, Some(l.c.policy.start_timeout_secs));
                continue;
            }
            self.fail(l, d, OtaState::TimedOut, reason);
        }
        if l.c.state != CampaignState::Running {
            return Ok(None);
        }
        // The error threshold, over devices finished since the last resume.
        let p = l.c.policy.clone();
        if let Some(pct) = p.failure_pct {
            let since = l.c.started_at.unwrap_or(0).max(l.c.resumed_at.unwrap_or(0));
            let finished_since =
                |u: &DeviceUpdate| u.timeline.last().is_some_and(|t| t.at >= since);
            let finished = l.count(|u| {
                matches!(
                    u.state,
                    OtaState::Updated | OtaState::Failed | OtaState::TimedOut
                ) && finished_since(u)
            });
            let bad = l.count(|u| {
                matches!(u.state, OtaState::Failed | OtaState::TimedOut) && finished_since(u)
            });
            let sample = p.min_sample.min(l.c.targets).max(1);
            if finished >= sample && bad * 100 >= u32::from(pct) * finished {
                let note = format!(
                    "error threshold: {bad} of {finished} finished devices failed or timed out (threshold {pct} %)"
                );
                return Ok(match p.on_failure {
                    OnFailure::Pause => {
                        self.campaign_changed(l, CampaignState::Paused, Some(note));
                        None
                    }
                    OnFailure::Abort => self.abort(l, note),
                });
            }
        }
        // Waves and the success gate.
        let ends = l.c.wave_ends.clone();
        if l.c.waves_started == 0 {
            self.start_wave(l, 0).await?;
        } else {
            let w = l.c.waves_started - 1;
            let from = if w == 0 { 0 } else { ends[w as usize - 1] };
            let size = ends[w as usize] - from;
            let updated = l.count(|u| u.wave == w && u.state == OtaState::Updated);
            let open = l.count(|u| u.wave == w && !u.state.is_final());
            let need = (u64::from(size) * u64::from(p.success_pct)).div_ceil(100) as u32;
            // Met by the wave's devices, or by an operator who resumed the campaign after
            // the wave ended below it.
            if updated >= need || l.c.gate_met_at.is_some() {
                if l.c.gate_met_at.is_none() {
                    l.c.gate_met_at = Some(now);
                    l.campaign_dirty = true;
                }
                let met = l.c.gate_met_at.unwrap_or(now);
                if (l.c.waves_started as usize) < ends.len()
                    && now >= met + (p.soak_secs * 1000) as i64
                {
                    self.start_wave(l, l.c.waves_started).await?;
                }
            } else if open == 0 && (l.c.waves_started as usize) < ends.len() {
                let note = format!(
                    "wave {}: {updated} of {size} devices updated, its gate needs {} %; resume to go on to the next wave",
                    w + 1,
                    p.success_pct
                );
                self.campaign_changed(l, CampaignState::Paused, Some(note));
                return Ok(None);
            }
        }
        // Completion.
        if l.c.waves_started as usize >= ends.len()
            && l.devices.values().all(|u| u.state.is_final())
        {
            let updated = l.count(|u| u.state == OtaState::Updated);
            let failed = l.count(|u| u.state == OtaState::Failed);
            let timed_out = l.count(|u| u.state == OtaState::TimedOut);
            if l.c.policy.assign_fleet {
                self.assign_fleet(l).await?;
            }
            self.campaign_changed(
                l,
                CampaignState::Completed,
                Some(format!(
                    "{updated} updated, {failed} failed, {timed_out} timed out"
                )),
            );
            return Ok(None);
        }
        self.initiate_due(l, now).await?;
        Ok(None)
    }

    /// Stops a campaign for good: devices not told yet are cancelled.
    fn abort(&self, l: &mut Live, note: String) -> Option<(CampaignId, Vec<DeviceId>)> {
        self.campaign_changed(l, CampaignState::Aborted, Some(note));
        self.cancel_waiting(l, "the campaign aborted");
        let reached: Vec<DeviceId> = l
            .devices
            .values()
            .filter(|u| u.attempts > 0)
            .map(|u| u.device_id)
            .collect();
        (l.c.policy.rollback_package_id.is_some() && !reached.is_empty())
            .then_some((l.c.id, reached))
    }

    /// Devices not told of the package yet (pending, queued) are cancelled.
    fn cancel_waiting(&self, l: &mut Live, why: &str) {
        let waiting: Vec<DeviceId> = l
            .devices
            .values()
            .filter(|u| matches!(u.state, OtaState::Pending | OtaState::Queued))
            .map(|u| u.device_id)
            .collect();
        for d in waiting {
            Self::set_deadline(l, d, None);
            if let Some(u) = l.devices.get_mut(&d) {
                u.retry_at = None;
            }
            self.transition(l, d, OtaState::Cancelled, Some(why.into()));
        }
    }

    /// Starts wave `w`: its devices are queued; those that already run the target are done.
    async fn start_wave(&self, l: &mut Live, w: u32) -> Result<()> {
        let now = now_ms();
        l.c.waves_started = w + 1;
        l.c.wave_started_at = Some(now);
        l.c.gate_met_at = None;
        l.campaign_dirty = true;
        let devices: Vec<DeviceId> = l
            .devices
            .values()
            .filter(|u| u.wave == w && u.state == OtaState::Pending)
            .map(|u| u.device_id)
            .collect();
        tracing::info!(campaign = %l.c.id, wave = w + 1, devices = devices.len(), "campaign wave starts");
        for d in devices {
            if self.reports_target(d, &l.package).await? {
                let runs = format!("{} {}", l.package.title, l.package.version);
                self.transition(
                    l,
                    d,
                    OtaState::Updated,
                    Some(format!("already runs {runs}")),
                );
            } else {
                // A device that polls over HTTP has no session to find it by: its last
                // request, if recent, says it is reachable (it asks for its attributes again
                // soon).
                if self.presence.get(d).is_none()
                    && let Ok(dev) = self.registry.device_record(d).await
                    && let Some(seen) = dev.last_activity_at
                    && now - seen < HTTP_REACHABLE_MS
                {
                    self.engine
                        .http_seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(d, seen);
                }
                Self::set_deadline(l, d, Some(l.c.policy.start_timeout_secs));
                self.transition(
                    l,
                    d,
                    OtaState::Queued,
                    Some(format!("wave {} started", w + 1)),
                );
            }
        }
        Ok(())
    }

    fn reachable(&self, d: DeviceId, now: Millis) -> bool {
        self.presence.get(d).is_some()
            || self
                .engine
                .http_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&d)
                .is_some_and(|t| now - t < HTTP_REACHABLE_MS)
    }

    /// Tells the queued devices the rate and the window allow now of the package.
    async fn initiate_due(&self, l: &mut Live, now: Millis) -> Result<()> {
        if let Some(w) = &l.c.policy.window
            && !WindowSpec::parse(w)?.contains(now)
        {
            l.credit = l.credit.min(1.0);
            l.credit_at = now;
            return Ok(());
        }
        let p = &l.c.policy;
        let limit = if p.per_minute == 0 {
            usize::MAX
        } else {
            let updated = l.count(|u| u.state == OtaState::Updated);
            let rate = rate_at(p, updated);
            let elapsed = (now - l.credit_at).max(0) as f64;
            // At most ten seconds' worth banked: a pause or a closed window is no burst after.
            l.credit = (l.credit + elapsed * rate / 60_000.0).min((rate / 6.0).max(1.0));
            l.credit_at = now;
            l.credit.floor() as usize
        };
        if limit == 0 {
            return Ok(());
        }
        let due: Vec<DeviceId> = l
            .devices
            .values()
            .filter(|u| {
                u.state == OtaState::Queued
                    && u.wave < l.c.waves_started
                    && u.retry_at.is_none_or(|t| t <= now)
            })
            .map(|u| u.device_id)
            .filter(|&d| self.reachable(d, now))
            .take(limit)
            .collect();
        // A device may have come to run the target since its wave started (a report that
        // came while it was offline, or one no campaign followed): it is done, not told.
        let mut told = Vec::with_capacity(due.len());
        for d in due {
            if self.reports_target(d, &l.package).await? {
                Self::set_deadline(l, d, None);
                let runs = format!("{} {}", l.package.title, l.package.version);
                self.transition(
                    l,
                    d,
                    OtaState::Updated,
                    Some(format!("already runs {runs}")),
                );
            } else {
                told.push(d);
            }
        }
        let due = told;
        if due.is_empty() {
            return Ok(());
        }
        let p = &l.c.policy;
        if p.per_minute != 0 {
            l.credit -= due.len() as f64;
        }
        let mut values = PackageService::target_attributes(&l.package);
        if l.c.policy.install == InstallMode::DownloadOnly {
            values.push((
                format!("{}_download_only", l.package.kind.prefix()),
                Value::Bool(l.c.install_requested_at.is_none()),
            ));
        }
        self.attributes.set_shared_many(&due, &values).await?;
        let secs = l.c.policy.download_timeout_secs;
        for d in due {
            let attempt = match l.devices.get_mut(&d) {
                Some(u) => {
                    u.attempts += 1;
                    u.retry_at = None;
                    u.claimed_at = None;
                    u.attempts
                }
                None => continue,
            };
            Self::set_deadline(l, d, Some(secs));
            self.transition(
                l,
                d,
                OtaState::Initiated,
                Some(format!("told of the package (attempt {attempt})")),
            );
        }
        Ok(())
    }

    /// The campaign completed: its package becomes the fleet's target, and its devices drop
    /// their own copy of the target keys (they keep the same values, now from the fleet).
    async fn assign_fleet(&self, l: &mut Live) -> Result<()> {
        self.attributes
            .set_fleet(l.c.fleet_id, PackageService::target_attributes(&l.package))
            .await?;
        let devices: Vec<DeviceId> = l.devices.keys().copied().collect();
        self.attributes
            .drop_shared_many(&devices, &PackageService::target_keys(l.package.kind))
            .await?;
        self.audit.record(
            Entry::new(AuditKind::PackageAssigned, format!("campaign:{}", l.c.name))
                .fleet(l.c.fleet_id)
                .detail(format!(
                    "{} {} {}",
                    l.package.kind.as_str(),
                    l.package.title,
                    l.package.version
                )),
        );
        Ok(())
    }

    /// An operator's state change: pause, resume or cancel.
    pub(super) async fn set_state(
        &self,
        id: CampaignId,
        by: &str,
        to: CampaignState,
        audit: AuditKind,
    ) -> Result<()> {
        let mut st = self.engine.state.lock().await;
        let Some(l) = st.live.get_mut(&id).filter(|l| !l.c.state.is_final()) else {
            let c = self.record(id).await?;
            return Err(Error::conflict(format!(
                "the campaign is {}",
                c.state.as_str()
            )));
        };
        let from = l.c.state;
        let ok = match to {
            CampaignState::Paused => from == CampaignState::Running,
            CampaignState::Running => from == CampaignState::Paused,
            CampaignState::Cancelled => true,
            _ => false,
        };
        if !ok {
            return Err(Error::conflict(format!(
                "the campaign is {}",
                from.as_str()
            )));
        }
        match to {
            CampaignState::Running => {
                l.c.resumed_at = Some(now_ms());
                // Paused at a gate that was not met: the operator looked and goes on.
                let w = l.c.waves_started.saturating_sub(1);
                let open = l.count(|u| u.wave == w && !u.state.is_final());
                if open == 0 && l.c.gate_met_at.is_none() {
                    l.c.gate_met_at = Some(now_ms());
                }
                l.credit = 1.0;
                l.credit_at = now_ms();
                self.campaign_changed(l, to, Some(format!("resumed by {by}")));
            }
            CampaignState::Paused => {
                self.campaign_changed(l, to, Some(format!("paused by {by}")));
            }
            _ => {
                self.campaign_changed(l, to, Some(format!("cancelled by {by}")));
                self.cancel_waiting(l, "the campaign was cancelled");
            }
        }
        self.audit.record(
            Entry::new(audit, by)
                .fleet(l.c.fleet_id)
                .detail(l.c.name.clone()),
        );
        self.flush(&mut st).await
    }

    pub(super) async fn engine_stop_all(&self, by: &str) -> Result<Vec<CampaignId>> {
        let mut st = self.engine.state.lock().await;
        let mut out = Vec::new();
        for l in st.live.values_mut() {
            if l.c.state == CampaignState::Running {
                self.campaign_changed(
                    l,
                    CampaignState::Paused,
                    Some(format!("emergency stop by {by}")),
                );
                out.push(l.c.id);
            }
        }
        self.flush(&mut st).await?;
        Ok(out)
    }

    pub(super) async fn engine_install(&self, id: CampaignId) -> Result<()> {
        let mut st = self.engine.state.lock().await;
        let Some(l) = st.live.get_mut(&id).filter(|l| !l.c.state.is_final()) else {
            let c = self.record(id).await?;
            return Err(Error::conflict(format!(
                "the campaign is {}",
                c.state.as_str()
            )));
        };
        if l.c.policy.install != InstallMode::DownloadOnly {
            return Err(Error::conflict(
                "the campaign installs right after the download: it has no install command",
            ));
        }
        if l.c.install_requested_at.is_some() {
            return Err(Error::conflict("the install command was already sent"));
        }
        l.c.install_requested_at = Some(now_ms());
        l.campaign_dirty = true;
        let ready: Vec<DeviceId> = l
            .devices
            .values()
            .filter(|u| matches!(u.state, OtaState::Downloaded | OtaState::Verified))
            .map(|u| u.device_id)
            .collect();
        for d in ready {
            self.maybe_install(l, d).await?;
        }
        self.flush(&mut st).await
    }

    /// Starts the rollback of an aborted campaign: its fleet's former target, for the devices
    /// it reached, in one wave, with the same deadlines.
    async fn start_rollback(&self, of: CampaignId, devices: Vec<DeviceId>) -> Result<()> {
        let c = self.record(of).await?;
        let Some(package) = c.policy.rollback_package_id else {
            return Ok(());
        };
        let p = &c.policy;
        let new = super::campaigns::NewCampaign {
            name: format!("rollback of {}", c.name)
                .chars()
                .take(128)
                .collect(),
            package_id: package,
            fleet_id: c.fleet_id,
            device_ids: Some(devices),
            per_minute: p.per_minute,
            start_timeout_secs: Some(p.start_timeout_secs),
            download_timeout_secs: Some(p.download_timeout_secs),
            install_timeout_secs: Some(p.install_timeout_secs),
            confirm_timeout_secs: Some(p.confirm_timeout_secs),
            retries_failed: Some(p.retries_failed),
            retries_timed_out: Some(p.retries_timed_out),
            retry_backoff_secs: Some(p.retry_backoff_secs),
            require_reconnect: Some(p.require_reconnect),
            assign_fleet: Some(false),
            require_approval: Some(false),
            ..Default::default()
        };
        let by = format!("campaign:{}", c.name);
        let view = self.create_as(new, &by, Some(of)).await?;
        Box::pin(self.start(view.id, &by)).await?;
        Ok(())
    }
}

/// Sets the per-campaign, per-state device gauges.
fn set_metrics(s: &CampaignService, st: &State) {
    for l in st.live.values() {
        let mut counts: HashMap<OtaState, i64> = HashMap::new();
        for u in l.devices.values() {
            *counts.entry(u.state).or_default() += 1;
        }
        for &state in OtaState::ALL {
            s.metrics
                .ota_devices
                .get_or_create(&crate::metrics::OtaLabel {
                    campaign: l.c.id.to_string(),
                    state: state.as_str(),
                })
                .set(counts.get(&state).copied().unwrap_or(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_devices_report_them() {
        assert!(same_version("1.10", "1.10"));
        assert!(
            same_version("1.1", "1.10"),
            "telemetry typed 1.10 as the number 1.1"
        );
        assert!(same_version("2", "2.0"));
        assert!(!same_version("1.10.0", "1.10"));
        assert!(!same_version("v1.10", "1.10"));
        assert!(!same_version("1.2", "1.10"));
    }

    #[test]
    fn ota_keys_are_read_for_their_type_only() {
        let vals = [
            ("fw_state".to_string(), Value::Str("UPDATED".into())),
            ("current_fw_version".to_string(), Value::Double(1.1)),
            ("current_fw_title".to_string(), Value::Str("valve".into())),
            ("fw_error".to_string(), Value::Str(String::new())),
            ("temperature".to_string(), Value::Long(20)),
        ];
        let it = || vals.iter().map(|(k, v)| (k.as_str(), v));
        let fw = ota_keys(it(), PackageKind::Firmware).expect("firmware keys");
        assert_eq!(fw.state.as_deref(), Some("UPDATED"));
        assert_eq!(fw.version.as_deref(), Some("1.1"));
        assert_eq!(fw.title.as_deref(), Some("valve"));
        assert_eq!(fw.error, None, "an empty fw_error is no error");
        assert!(ota_keys(it(), PackageKind::Software).is_none());
    }
}
