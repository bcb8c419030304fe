//! OTA campaigns as operators see them: what a campaign is asked to do (`NewCampaign`, checked
//! here with every default resolved into the stored `CampaignPolicy`), the dry run that shows
//! its targets, waves and estimated duration before anything is sent, the approval step, the
//! operator's actions (start, pause, resume, cancel, install, the emergency stop) and the views
//! of a campaign, its devices and a device's OTA timeline. What happens to devices once a
//! campaign runs is `engine`'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::engine::{Engine, State};
use super::packages::PackageService;
use crate::audit::{AuditLog, Entry};
use crate::config::OtaConfig;
use crate::devices::attributes::AttributeService;
use crate::devices::registry::DeviceFilter;
use crate::devices::{Presence, Registry};
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::jobs::JobService;
use crate::jobs::schedule::WindowSpec;
use crate::metrics::Metrics;
use crate::model::{
    AuditKind, Campaign, CampaignId, CampaignPolicy, CampaignState, Cursor, DeviceId, DeviceUpdate,
    FleetId, InstallMode, Millis, OnFailure, OtaState, OtaTransition, Package, PackageId,
    PackageKind, Page, TargetFilter, WaveSize, Window, now_ms,
};
use crate::store::ports::{CampaignStore, TelemetryStore};

/// Longest campaign name, in characters.
pub const MAX_NAME: usize = 128;
/// Most waves a campaign may have.
pub const MAX_WAVES: usize = 100;

/// A campaign to create (or to dry-run). Every field but `name`, `package_id` and `fleet_id`
/// has a default.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    /// 1 to 128 characters.
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    pub package_id: PackageId,
    pub fleet_id: FleetId,
    /// Only the fleet's devices that match (every enabled device of the fleet when absent).
    #[serde(default)]
    pub filter: Option<TargetFilter>,
    /// Only these devices of the fleet.
    #[serde(default)]
    #[schema(max_items = 100000)]
    pub device_ids: Option<Vec<DeviceId>>,
    /// The waves in order, each `{"devices": N}` or `{"percent": P}` of the targets (its own
    /// size, not a running total); devices left over form one more wave. Empty: one wave.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub waves: Vec<WaveSize>,
    /// Devices started per minute; 0 (the default): a whole wave at once.
    #[serde(default)]
    #[schema(maximum = 100000)]
    pub per_minute: u32,
    /// Exponential rate: multiply the rate by this (1 to 10, default 1: constant)...
    #[serde(default)]
    pub rate_factor: Option<f64>,
    /// ...each time this many more devices have updated (default 10).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub rate_step: Option<u32>,
    /// The rate's ceiling, devices per minute (default 1000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub max_per_minute: Option<u32>,
    /// A wave passes its gate when this percentage (1 to 100, default 100) of its devices
    /// have updated...
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub success_pct: Option<u8>,
    /// ...and the next wave starts this many seconds after that (default 0).
    #[serde(default)]
    #[schema(maximum = 2592000)]
    pub soak_secs: Option<u64>,
    /// Pause (or abort) when this percentage (1 to 100) of the finished devices failed or
    /// timed out...
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub failure_pct: Option<u8>,
    /// ...once at least this many have finished (default 10, or every target when fewer).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub min_sample: Option<u32>,
    /// What the error threshold does (default `pause`).
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// Seconds a device of a started wave may stay offline before it times out (default a day).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub start_timeout_secs: Option<u64>,
    /// Seconds from being told of the package to having downloaded it (default 3600).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub download_timeout_secs: Option<u64>,
    /// Seconds from downloaded to reporting `UPDATED` (default 1800).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub install_timeout_secs: Option<u64>,
    /// Seconds from `UPDATED` to reporting the new version after reconnecting (default 900).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub confirm_timeout_secs: Option<u64>,
    /// Retries after a failure the device reports (default 2, at most 10).
    #[serde(default)]
    #[schema(maximum = 10)]
    pub retries_failed: Option<u32>,
    /// Retries after a timeout (default 1, at most 10).
    #[serde(default)]
    #[schema(maximum = 10)]
    pub retries_timed_out: Option<u32>,
    /// Seconds before the first retry, doubling for each next one (default 60).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub retry_backoff_secs: Option<u64>,
    /// Count a device as updated only once it reports the target version from a session
    /// opened after it said `UPDATED` (default `true`).
    #[serde(default)]
    pub require_reconnect: Option<bool>,
    #[serde(default)]
    pub install: InstallMode,
    /// Devices start only inside this maintenance window.
    #[serde(default)]
    pub window: Option<Window>,
    /// Make the package the fleet's target when the campaign completes (default: when the
    /// campaign covers the whole fleet, with no filter and no device list).
    #[serde(default)]
    pub assign_fleet: Option<bool>,
    /// On abort, start a campaign back to the fleet's target package of when this campaign
    /// was created (`true`), for the devices this one reached.
    #[serde(default)]
    pub rollback: bool,
    /// Needs another admin's approval before it starts (always, when `[ota] require_approval`
    /// is on).
    #[serde(default)]
    pub require_approval: Option<bool>,
}

/// A campaign with its progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CampaignView {
    pub id: CampaignId,
    pub name: String,
    pub package_id: PackageId,
    #[serde(rename = "type")]
    pub kind: PackageKind,
    /// The package's title and version.
    pub title: String,
    pub version: String,
    pub fleet_id: FleetId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TargetFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ids: Option<Vec<DeviceId>>,
    pub policy: CampaignPolicy,
    pub state: CampaignState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub approval_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<Millis>,
    pub created_by: String,
    pub created_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<CampaignId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_requested_at: Option<Millis>,
    /// Devices targeted (fixed when it starts).
    pub targets: u32,
    /// Devices per state (states without devices left out).
    pub counts: BTreeMap<OtaState, u32>,
    /// Each wave: its size, whether it started, and its devices per state.
    pub waves: Vec<WaveView>,
    /// Up to 50 devices that failed or timed out, with their reason.
    pub failing: Vec<FailingDevice>,
}

/// One wave of a campaign.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WaveView {
    /// From 0.
    pub index: u32,
    pub devices: u32,
    pub started: bool,
    pub updated: u32,
    /// Failed or timed out for good.
    pub failed: u32,
    /// Still to finish.
    pub open: u32,
}

/// A device that failed or timed out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FailingDevice {
    pub device_id: DeviceId,
    pub state: OtaState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One device in one campaign: the API's form of a device update.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceUpdateView {
    pub campaign_id: CampaignId,
    pub campaign_name: String,
    pub device_id: DeviceId,
    /// The device's name (absent once the device is deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// The package's type, title and version.
    #[serde(rename = "type")]
    pub kind: PackageKind,
    pub title: String,
    pub version: String,
    pub wave: u32,
    pub state: OtaState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Millis>,
    /// The version the device last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every transition, oldest first.
    pub timeline: Vec<OtaTransition>,
}

/// What a campaign would do, before anything is sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    pub targets: u32,
    /// Targets that already report the package's version (they count as updated at once).
    pub already_updated: u32,
    /// Devices per wave.
    pub waves: Vec<u32>,
    /// The first targets (up to 100), in the order they would start.
    pub devices: Vec<DeviceId>,
    /// When the last device would be told of the package, under the rate, the soak times and
    /// the window, if every wave passed its gate as soon as it started (devices' own download
    /// and install time not included); absent when there is no target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_last_start_at: Option<Millis>,
    /// What the operator should know: a closed window, a risky checksum algorithm, ...
    pub notes: Vec<String>,
}

pub struct CampaignService {
    pub(super) store: Arc<dyn CampaignStore>,
    pub(super) telemetry: Arc<dyn TelemetryStore>,
    pub(super) packages: Arc<PackageService>,
    pub(super) attributes: Arc<AttributeService>,
    pub(super) jobs: Arc<JobService>,
    pub(super) registry: Arc<Registry>,
    pub(super) presence: Arc<Presence>,
    pub(super) events: EventBus,
    pub(super) audit: Arc<AuditLog>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) cfg: OtaConfig,
    pub(super) engine: Engine,
}

fn invalid(field: &'static str, m: impl Into<String>) -> Error {
    Error::invalid(field, m)
}

impl CampaignService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn CampaignStore>,
        telemetry: Arc<dyn TelemetryStore>,
        packages: Arc<PackageService>,
        attributes: Arc<AttributeService>,
        jobs: Arc<JobService>,
        registry: Arc<Registry>,
        presence: Arc<Presence>,
        events: EventBus,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
        cfg: OtaConfig,
    ) -> Self {
        Self {
            store,
            telemetry,
            packages,
            attributes,
            jobs,
            registry,
            presence,
            events,
            audit,
            metrics,
            cfg,
            engine: Engine::default(),
        }
    }

    /// Checks a new campaign and resolves its policy; returns the campaign (not stored) and
    /// its package.
    async fn check(&self, new: NewCampaign, by: &str) -> Result<(Campaign, Package)> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control)
        {
            return Err(invalid(
                "name",
                "must be 1 to 128 characters, without control characters",
            ));
        }
        self.registry.fleet(new.fleet_id).await?;
        let package = self.packages.record(new.package_id).await?;
        if package.fleet_id.is_some_and(|f| f != new.fleet_id) {
            return Err(invalid(
                "package_id",
                "the package belongs to another fleet",
            ));
        }
        if new.waves.len() > MAX_WAVES {
            return Err(invalid("waves", "at most 100 waves"));
        }
        for w in &new.waves {
            match *w {
                WaveSize::Devices(0) => {
                    return Err(invalid("waves", "a wave has 1 device or more"));
                }
                WaveSize::Percent(p) if p == 0 || p > 100 => {
                    return Err(invalid("waves", "a percentage is 1 to 100"));
                }
                _ => {}
            }
        }
        let pct = |v: Option<u8>, field: &'static str, default: u8| match v {
            Some(p) if p == 0 || p > 100 => Err(invalid(field, "must be 1 to 100")),
            Some(p) => Ok(p),
            None => Ok(default),
        };
        let secs = |v: Option<u64>, field: &'static str, default: u64| match v {
            Some(s) if s == 0 || s > 365 * 86_400 => Err(invalid(field, "must be 1 s to 365 days")),
            Some(s) => Ok(s),
            None => Ok(default),
        };
        let rate_factor = new.rate_factor.unwrap_or(1.0);
        if !(1.0..=10.0).contains(&rate_factor) {
            return Err(invalid("rate_factor", "must be 1 to 10"));
        }
        if new.per_minute > 100_000 {
            return Err(invalid("per_minute", "at most 100000"));
        }
        let max_per_minute = new.max_per_minute.unwrap_or(1000);
        if max_per_minute == 0 || max_per_minute > 100_000 {
            return Err(invalid("max_per_minute", "must be 1 to 100000"));
        }
        let retries = |v: Option<u32>, field: &'static str, default: u32| match v {
            Some(n) if n > 10 => Err(invalid(field, "at most 10")),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        if new.soak_secs.is_some_and(|s| s > 30 * 86_400) {
            return Err(invalid("soak_secs", "at most 30 days"));
        }
        if new.retry_backoff_secs.is_some_and(|s| s == 0 || s > 86_400) {
            return Err(invalid("retry_backoff_secs", "must be 1 s to a day"));
        }
        if new.rate_step == Some(0) {
            return Err(invalid("rate_step", "must be 1 or more"));
        }
        if new.min_sample == Some(0) {
            return Err(invalid("min_sample", "must be 1 or more"));
        }
        if let Some(w) = &new.window {
            WindowSpec::parse(w)?;
        }
        if let Some(ids) = &new.device_ids {
            if ids.is_empty() || ids.len() > 100_000 {
                return Err(invalid("device_ids", "1 to 100000 devices"));
            }
            for &d in ids {
                let dev = self
                    .registry
                    .device_record(d)
                    .await
                    .map_err(|_| invalid("device_ids", format!("device {d} does not exist")))?;
                if dev.fleet_id != new.fleet_id {
                    return Err(invalid(
                        "device_ids",
                        format!("device {d} is not in the campaign's fleet"),
                    ));
                }
            }
        }
        let filter = new.filter.filter(|f| !f.is_empty());
        let whole_fleet = filter.is_none() && new.device_ids.is_none();
        let rollback_package_id = if new.rollback {
            let current = self
                .packages
                .fleet_target(new.fleet_id, package.kind)
                .await?;
            match current {
                Some(p) if p.id != package.id => Some(p.id),
                _ => {
                    return Err(invalid(
                        "rollback",
                        "the fleet has no other target package to roll back to",
                    ));
                }
            }
        } else {
            None
        };
        let policy = CampaignPolicy {
            waves: new.waves,
            per_minute: new.per_minute,
            rate_factor,
            rate_step: new.rate_step.unwrap_or(10),
            max_per_minute,
            success_pct: pct(new.success_pct, "success_pct", 100)?,
            soak_secs: new.soak_secs.unwrap_or(0),
            failure_pct: new
                .failure_pct
                .map(|p| pct(Some(p), "failure_pct", 0))
                .transpose()?,
            min_sample: new.min_sample.unwrap_or(10),
            on_failure: new.on_failure.unwrap_or_default(),
            start_timeout_secs: secs(new.start_timeout_secs, "start_timeout_secs", 86_400)?,
            download_timeout_secs: secs(new.download_timeout_secs, "download_timeout_secs", 3600)?,
            install_timeout_secs: secs(new.install_timeout_secs, "install_timeout_secs", 1800)?,
            confirm_timeout_secs: secs(new.confirm_timeout_secs, "confirm_timeout_secs", 900)?,
            retries_failed: retries(new.retries_failed, "retries_failed", 2)?,
            retries_timed_out: retries(new.retries_timed_out, "retries_timed_out", 1)?,
            retry_backoff_secs: new.retry_backoff_secs.unwrap_or(60),
            require_reconnect: new.require_reconnect.unwrap_or(true),
            install: new.install,
            window: new.window,
            assign_fleet: new.assign_fleet.unwrap_or(whole_fleet),
            rollback_package_id,
        };
        let c = Campaign {
            id: CampaignId::new(),
            name: name.to_string(),
            package_id: package.id,
            kind: package.kind,
            fleet_id: new.fleet_id,
            filter,
            device_ids: new.device_ids,
            policy,
            state: CampaignState::Draft,
            note: None,
            // `[ota] require_approval` binds every campaign; a campaign may ask for it anyway.
            approval_required: self.cfg.require_approval || new.require_approval.unwrap_or(false),
            approved_by: None,
            approved_at: None,
            created_by: by.to_string(),
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
            targets: 0,
            wave_ends: Vec::new(),
            waves_started: 0,
            wave_started_at: None,
            gate_met_at: None,
            rollback_of: None,
            install_requested_at: None,
            resumed_at: None,
        };
        Ok((c, package))
    }

    /// Creates a campaign (a draft: nothing is sent until it starts).
    pub async fn create(&self, new: NewCampaign, by: &str) -> Result<CampaignView> {
        self.create_as(new, by, None).await
    }

    /// Creates a campaign, the rollback of `rollback_of` if given: marked as one from its
    /// first write, so no reader sees it unmarked.
    pub(super) async fn create_as(
        &self,
        new: NewCampaign,
        by: &str,
        rollback_of: Option<CampaignId>,
    ) -> Result<CampaignView> {
        let (mut c, package) = self.check(new, by).await?;
        c.rollback_of = rollback_of;
        self.store.put_campaign(&c).await?;
        self.audit.record(
            Entry::new(AuditKind::CampaignCreated, by)
                .fleet(c.fleet_id)
                .detail(format!(
                    "{} ({} {} {})",
                    c.name,
                    package.kind.as_str(),
                    package.title,
                    package.version
                )),
        );
        self.store.commit().await?;
        self.view(&c, &package, &[]).await
    }

    /// What a campaign would do: its targets, waves and estimated duration. Nothing is stored
    /// or sent.
    pub async fn dry_run(&self, new: NewCampaign, by: &str) -> Result<DryRun> {
        let (c, package) = self.check(new, by).await?;
        let targets = self.targets(&c).await?;
        let ends = wave_ends(&c.policy.waves, targets.len() as u32);
        let mut already = 0;
        for &d in &targets {
            if self.reports_target(d, &package).await? {
                already += 1;
            }
        }
        let mut notes = Vec::new();
        if !matches!(
            package.checksum_algorithm,
            crate::model::ChecksumAlgorithm::Sha256
                | crate::model::ChecksumAlgorithm::Sha384
                | crate::model::ChecksumAlgorithm::Sha512
                | crate::model::ChecksumAlgorithm::Md5
        ) {
            notes.push(format!(
                "the package's checksum algorithm {} fails verification in the ThingsBoard SDK for about 1 image in 256",
                package.checksum_algorithm.as_str()
            ));
        }
        let now = now_ms();
        if let Some(w) = &c.policy.window
            && !WindowSpec::parse(w)?.contains(now)
        {
            notes.push("the maintenance window is closed now: devices start when it opens".into());
        }
        if targets.is_empty() {
            notes.push("no enabled device of the fleet matches".into());
        }
        let busy = {
            let st = self.engine.state.lock().await;
            self.busy_target(&st, &c, &targets)
        };
        if let Some(busy) = busy {
            notes.push(format!(
                "device {} is in running campaign {}: the start would be refused",
                busy.0, busy.1
            ));
        }
        Ok(DryRun {
            targets: targets.len() as u32,
            already_updated: already,
            waves: ends
                .iter()
                .scan(0, |prev, &e| {
                    let n = e - *prev;
                    *prev = e;
                    Some(n)
                })
                .collect(),
            devices: targets.iter().take(100).copied().collect(),
            estimated_last_start_at: estimate(&c.policy, &ends, now)?,
            notes,
        })
    }

    /// The devices a campaign targets now: enabled devices of its fleet that pass its filter
    /// (or are in its list), in id order.
    pub(super) async fn targets(&self, c: &Campaign) -> Result<Vec<DeviceId>> {
        let all = self
            .registry
            .device_ids(
                &DeviceFilter {
                    fleet_id: Some(c.fleet_id),
                    ..Default::default()
                },
                true,
            )
            .await?;
        let mut out = Vec::new();
        for d in all {
            if let Some(ids) = &c.device_ids
                && !ids.contains(&d)
            {
                continue;
            }
            if let Some(f) = &c.filter
                && !self.jobs.matches(d, c.fleet_id, f).await?
            {
                continue;
            }
            out.push(d);
        }
        Ok(out)
    }

    /// Whether a device reports the package's title and version (client attributes or its
    /// latest telemetry).
    pub(super) async fn reports_target(&self, d: DeviceId, p: &Package) -> Result<bool> {
        let [mut title, mut version] = self.reported_at(d, p.kind).await?;
        // What was heard may be newer than what the store has yet (a report on its way to
        // disk); what the store has may be newer than what was heard (a report that came while
        // no campaign followed the device, such as its boot report after it failed one). The
        // newer of the two counts.
        let heard = self
            .engine
            .heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(d, p.kind))
            .cloned();
        if let Some(h) = heard {
            if h.title.is_some() && h.at >= title.0 {
                title = (h.at, h.title);
            }
            if h.version.is_some() && h.at >= version.0 {
                version = (h.at, h.version);
            }
        }
        Ok(version
            .1
            .as_deref()
            .is_some_and(|v| super::engine::same_version(v, &p.version))
            && title.1.is_none_or(|t| t == p.title))
    }

    /// The title and version a device last reported for `kind` (`current_fw_title`,
    /// `current_fw_version`), from its telemetry or its client attributes, whichever is newer,
    /// each with the time it was reported at.
    async fn reported_at(
        &self,
        d: DeviceId,
        kind: PackageKind,
    ) -> Result<[(Millis, Option<String>); 2]> {
        let keys = [
            format!("current_{}_title", kind.prefix()),
            format!("current_{}_version", kind.prefix()),
        ];
        let mut best: [(Millis, Option<String>); 2] = [(i64::MIN, None), (i64::MIN, None)];
        for (k, p) in self
            .telemetry
            .latest(d, crate::model::DEFAULT_TAG, Some(&keys))
            .await?
        {
            let i = usize::from(k == keys[1]);
            if p.ts >= best[i].0 {
                best[i] = (
                    p.ts,
                    Some(text(&crate::devices::attributes::to_json(&p.value))),
                );
            }
        }
        let attrs = self.attributes.client_values(d, &keys).await?;
        for (k, (ts, v)) in attrs {
            let i = usize::from(k == keys[1]);
            if ts >= best[i].0 {
                best[i] = (ts, Some(text(&v)));
            }
        }
        Ok(best)
    }

    /// A target that is in another campaign of the same type that has not finished.
    fn busy_target(
        &self,
        st: &State,
        c: &Campaign,
        targets: &[DeviceId],
    ) -> Option<(DeviceId, CampaignId)> {
        let active = self.engine.active.read().unwrap_or_else(|p| p.into_inner());
        targets.iter().find_map(|d| {
            active
                .get(&(*d, c.kind))
                .filter(|other| **other != c.id && st.running(**other))
                .map(|other| (*d, *other))
        })
    }

    /// A campaign not finished (a draft included) that installs or would roll back to
    /// package `id`.
    pub async fn using_package(&self, id: PackageId) -> Result<Option<CampaignId>> {
        Ok(self
            .store
            .campaigns()
            .await?
            .into_iter()
            .find(|c| {
                !c.state.is_final()
                    && (c.package_id == id || c.policy.rollback_package_id == Some(id))
            })
            .map(|c| c.id))
    }

    pub async fn record(&self, id: CampaignId) -> Result<Campaign> {
        self.store
            .get_campaign(id)
            .await?
            .ok_or(Error::NotFound("campaign"))
    }

    /// Approves a campaign that needs it: `by` must be an admin (the caller checks) other than
    /// its creator.
    pub async fn approve(&self, id: CampaignId, by: &str) -> Result<CampaignView> {
        let _g = self.engine.state.lock().await;
        let mut c = self.record(id).await?;
        if c.state != CampaignState::Draft {
            return Err(Error::conflict(format!(
                "the campaign is {}: only a draft is approved",
                c.state.as_str()
            )));
        }
        if !c.approval_required {
            return Err(Error::conflict("the campaign needs no approval"));
        }
        if c.created_by == by {
            return Err(Error::forbidden(
                "a campaign is approved by an admin other than the one who created it",
            ));
        }
        c.approved_by = Some(by.to_string());
        c.approved_at = Some(now_ms());
        self.store.put_campaign(&c).await?;
        self.audit.record(
            Entry::new(AuditKind::CampaignApproved, by)
                .fleet(c.fleet_id)
                .detail(c.name.clone()),
        );
        self.store.commit().await?;
        self.events.publish(crate::events::Event::Campaign {
            campaign_id: c.id,
            fleet_id: c.fleet_id,
            state: c.state,
            note: Some(format!("approved by {by}")),
        });
        drop(_g);
        self.get(id).await
    }

    /// Starts a draft: its targets and waves are fixed, every target gets its entry, and the
    /// first wave starts.
    pub async fn start(&self, id: CampaignId, by: &str) -> Result<CampaignView> {
        {
            let mut st = self.engine.state.lock().await;
            let mut c = self.record(id).await?;
            if c.state != CampaignState::Draft {
                return Err(Error::conflict(format!(
                    "the campaign is {}: only a draft starts",
                    c.state.as_str()
                )));
            }
            if c.approval_required && c.approved_by.is_none() {
                return Err(Error::conflict(
                    "the campaign needs the approval of another admin before it starts",
                ));
            }
            let package = self.packages.record(c.package_id).await?;
            self.packages.check_manifest(&package)?;
            let targets = self.targets(&c).await?;
            if let Some((d, other)) = self.busy_target(&st, &c, &targets) {
                return Err(Error::conflict(format!(
                    "device {d} is in running campaign {other}: one campaign of a type per device at a time"
                )));
            }
            c.targets = targets.len() as u32;
            c.wave_ends = wave_ends(&c.policy.waves, c.targets);
            c.state = CampaignState::Running;
            c.started_at = Some(now_ms());
            let mut updates = Vec::with_capacity(targets.len());
            let mut wave = 0;
            for (i, d) in targets.into_iter().enumerate() {
                while c.wave_ends.get(wave).is_some_and(|&e| i as u32 >= e) {
                    wave += 1;
                }
                updates.push(DeviceUpdate {
                    campaign_id: c.id,
                    device_id: d,
                    wave: wave as u32,
                    state: OtaState::Pending,
                    attempts: 0,
                    deadline: None,
                    retry_at: None,
                    claimed_at: None,
                    connected_at: None,
                    reported_version: None,
                    error: None,
                    timeline: vec![OtaTransition {
                        at: now_ms(),
                        state: OtaState::Pending,
                        detail: Some(format!("wave {}", wave + 1)),
                    }],
                });
            }
            self.store.put_device_updates(&updates).await?;
            self.store.put_campaign(&c).await?;
            self.audit.record(
                Entry::new(AuditKind::CampaignStarted, by)
                    .fleet(c.fleet_id)
                    .detail(format!("{} ({} devices)", c.name, c.targets)),
            );
            self.store.commit().await?;
            st.load(c, package, updates, &self.engine.active);
        }
        self.tick().await?;
        self.get(id).await
    }

    /// Pauses a running campaign: no device starts until it resumes.
    pub async fn pause(&self, id: CampaignId, by: &str) -> Result<CampaignView> {
        self.set_state(id, by, CampaignState::Paused, AuditKind::CampaignPaused)
            .await?;
        self.get(id).await
    }

    /// Resumes a paused campaign. A campaign paused at a success gate goes on to its next wave.
    pub async fn resume(&self, id: CampaignId, by: &str) -> Result<CampaignView> {
        self.set_state(id, by, CampaignState::Running, AuditKind::CampaignResumed)
            .await?;
        self.tick().await?;
        self.get(id).await
    }

    /// Cancels a campaign: devices not yet told stop here; devices already updating are
    /// followed until they finish.
    pub async fn cancel(&self, id: CampaignId, by: &str) -> Result<CampaignView> {
        self.set_state(
            id,
            by,
            CampaignState::Cancelled,
            AuditKind::CampaignCancelled,
        )
        .await?;
        self.get(id).await
    }

    /// The emergency stop: pauses every running campaign. Returns the campaigns it paused.
    pub async fn stop_all(&self, by: &str) -> Result<Vec<CampaignId>> {
        let paused = self.engine_stop_all(by).await?;
        self.audit.record(
            Entry::new(AuditKind::CampaignsStopped, by)
                .detail(format!("{} campaigns paused", paused.len())),
        );
        self.store.commit().await?;
        Ok(paused)
    }

    /// Sends the install command of a download-only campaign to its downloaded devices (and
    /// to devices that finish their download later).
    pub async fn install(&self, id: CampaignId, by: &str) -> Result<CampaignView> {
        self.engine_install(id).await?;
        self.audit
            .record(Entry::new(AuditKind::CampaignInstall, by).detail(id.to_string()));
        self.store.commit().await?;
        self.get(id).await
    }

    /// Deletes a draft (a started campaign is history: cancel it instead).
    pub async fn delete(&self, id: CampaignId) -> Result<()> {
        let _g = self.engine.state.lock().await;
        let c = self.record(id).await?;
        if c.state != CampaignState::Draft {
            return Err(Error::conflict(
                "only a draft is deleted; cancel a started campaign",
            ));
        }
        self.store.delete_campaign(id).await?;
        Ok(self.store.commit().await?)
    }

    /// A campaign with its progress.
    pub async fn get(&self, id: CampaignId) -> Result<CampaignView> {
        if let Some((c, p, devices)) = self.engine.snapshot(id).await {
            return self.view(&c, &p, &devices).await;
        }
        let c = self.record(id).await?;
        let p = self.packages.record(c.package_id).await?;
        let devices = self.store.device_updates(id).await?;
        self.view(&c, &p, &devices).await
    }

    /// Campaigns, newest first, of one fleet or of all.
    pub async fn list(&self, fleet: Option<FleetId>) -> Result<Vec<CampaignView>> {
        let mut out = Vec::new();
        for c in self.store.campaigns().await?.into_iter().rev() {
            if fleet.is_some_and(|f| f != c.fleet_id) {
                continue;
            }
            out.push(self.get(c.id).await?);
        }
        Ok(out)
    }

    /// A campaign's devices, optionally in one state.
    /// One page of a campaign's devices (in `state`, if given), in device id order: at most
    /// `limit`, after the device `after` (the previous page's cursor), each with its name.
    pub async fn devices(
        &self,
        id: CampaignId,
        state: Option<OtaState>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<DeviceUpdateView>> {
        let after: Option<DeviceId> = after
            .map(|c| c.as_str().parse().map_err(|_| Error::BadCursor))
            .transpose()?;
        let (c, p, mut devices) = match self.engine.snapshot(id).await {
            Some(s) => s,
            None => {
                let c = self.record(id).await?;
                let p = self.packages.record(c.package_id).await?;
                let d = self.store.device_updates(id).await?;
                (c, p, d)
            }
        };
        devices.retain(|u| {
            state.is_none_or(|s| s == u.state) && after.is_none_or(|a| u.device_id > a)
        });
        devices.sort_unstable_by_key(|u| u.device_id);
        let more = devices.len() > limit;
        devices.truncate(limit);
        let mut items = Vec::with_capacity(devices.len());
        for u in &devices {
            let mut v = update_view(&c, &p, u);
            v.device_name = self.device_name(u.device_id).await;
            items.push(v);
        }
        Ok(Page {
            next_cursor: more
                .then(|| devices.last().map(|u| Cursor::new(u.device_id.to_string())))
                .flatten(),
            items,
        })
    }

    /// A device's name; `None` once it is deleted.
    async fn device_name(&self, id: DeviceId) -> Option<String> {
        self.registry.device_record(id).await.ok().map(|d| d.name)
    }

    /// A device's OTA timeline: its entry in every campaign that targeted it, newest first.
    pub async fn device_history(&self, device: DeviceId) -> Result<Vec<DeviceUpdateView>> {
        let name = self.registry.device_record(device).await?.name;
        let mut out = Vec::new();
        for c in self.store.campaigns().await?.into_iter().rev() {
            if c.state == CampaignState::Draft {
                continue;
            }
            let u = match self.engine.device(c.id, device).await {
                Some(u) => Some(u),
                None => self.store.device_update(c.id, device).await?,
            };
            if let Some(u) = u {
                let p = self.packages.record(c.package_id).await?;
                let mut v = update_view(&c, &p, &u);
                v.device_name = Some(name.clone());
                out.push(v);
            }
        }
        Ok(out)
    }

    async fn view(
        &self,
        c: &Campaign,
        p: &Package,
        devices: &[DeviceUpdate],
    ) -> Result<CampaignView> {
        let mut counts = BTreeMap::new();
        let mut waves: Vec<WaveView> = c
            .wave_ends
            .iter()
            .enumerate()
            .scan(0, |prev, (i, &e)| {
                let n = e - *prev;
                *prev = e;
                Some(WaveView {
                    index: i as u32,
                    devices: n,
                    started: (i as u32) < c.waves_started,
                    updated: 0,
                    failed: 0,
                    open: 0,
                })
            })
            .collect();
        let mut failing = Vec::new();
        for u in devices {
            *counts.entry(u.state).or_insert(0) += 1;
            if let Some(w) = waves.get_mut(u.wave as usize) {
                match u.state {
                    OtaState::Updated => w.updated += 1,
                    OtaState::Failed | OtaState::TimedOut => w.failed += 1,
                    OtaState::Cancelled => {}
                    _ => w.open += 1,
                }
            }
            if matches!(u.state, OtaState::Failed | OtaState::TimedOut) && failing.len() < 50 {
                failing.push(FailingDevice {
                    device_id: u.device_id,
                    state: u.state,
                    attempts: u.attempts,
                    error: u.error.clone(),
                });
            }
        }
        Ok(CampaignView {
            id: c.id,
            name: c.name.clone(),
            package_id: c.package_id,
            kind: c.kind,
            title: p.title.clone(),
            version: p.version.clone(),
            fleet_id: c.fleet_id,
            filter: c.filter.clone(),
            device_ids: c.device_ids.clone(),
            policy: c.policy.clone(),
            state: c.state,
            note: c.note.clone(),
            approval_required: c.approval_required,
            approved_by: c.approved_by.clone(),
            approved_at: c.approved_at,
            created_by: c.created_by.clone(),
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            rollback_of: c.rollback_of,
            install_requested_at: c.install_requested_at,
            targets: c.targets,
            counts,
            waves,
            failing,
        })
    }
}

fn update_view(c: &Campaign, p: &Package, u: &DeviceUpdate) -> DeviceUpdateView {
    DeviceUpdateView {
        campaign_id: c.id,
        campaign_name: c.name.clone(),
        device_id: u.device_id,
        device_name: None,
        kind: p.kind,
        title: p.title.clone(),
        version: p.version.clone(),
        wave: u.wave,
        state: u.state,
        attempts: u.attempts,
        deadline: u.deadline,
        retry_at: u.retry_at,
        reported_version: u.reported_version.clone(),
        error: u.error.clone(),
        timeline: u.timeline.clone(),
    }
}

/// A JSON value as text: strings as they are, anything else as JSON.
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The cumulative device counts at the end of each wave for `targets` devices: each wave's
/// own size (a percentage rounded up), capped at what is left; what is left after the last
/// forms one more wave.
pub fn wave_ends(waves: &[WaveSize], targets: u32) -> Vec<u32> {
    let mut ends = Vec::new();
    let mut at = 0u32;
    for w in waves {
        if at >= targets {
            break;
        }
        let n = match *w {
            WaveSize::Devices(n) => n,
            WaveSize::Percent(p) => (u64::from(targets) * u64::from(p)).div_ceil(100) as u32,
        };
        at = at.saturating_add(n.max(1)).min(targets);
        ends.push(at);
    }
    if at < targets || ends.is_empty() {
        ends.push(targets);
    }
    ends
}

/// When the last device would start under the policy's rate, soak times and window, if each
/// wave passed its gate as soon as it started.
fn estimate(p: &CampaignPolicy, ends: &[u32], now: Millis) -> Result<Option<Millis>> {
    let total = ends.last().copied().unwrap_or(0);
    if total == 0 {
        return Ok(None);
    }
    let window = p.window.as_ref().map(WindowSpec::parse).transpose()?;
    let mut t = now;
    let mut started = 0u32;
    let mut credit = 1.0f64;
    for (i, &end) in ends.iter().enumerate() {
        if i > 0 {
            t += (p.soak_secs * 1000) as i64;
        }
        while started < end {
            // Minute by minute: inside the window, the minute's rate starts devices.
            if let Some(w) = &window
                && !w.contains(t)
            {
                match w.next_open(t) {
                    Some(open) => t = open,
                    None => return Ok(None),
                }
            }
            if p.per_minute == 0 {
                started = end;
                break;
            }
            let rate = rate_at(p, started);
            let n = (credit as u32).min(end - started);
            started += n;
            credit -= f64::from(n);
            if started < end {
                // Time until the next device at this rate.
                let need = 1.0 - credit.fract().max(0.0);
                let ms = (need * 60_000.0 / rate).ceil().max(1.0);
                t += ms as i64;
                credit += ms * rate / 60_000.0;
            }
        }
    }
    Ok(Some(t))
}

/// Devices per minute once `updated` devices have updated.
pub(super) fn rate_at(p: &CampaignPolicy, updated: u32) -> f64 {
    let steps = updated / p.rate_step.max(1);
    let rate = f64::from(p.per_minute) * p.rate_factor.powi(steps.min(64) as i32);
    rate.min(f64::from(p.max_per_minute)).max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_resolve_to_cumulative_ends() {
        assert_eq!(wave_ends(&[], 10), vec![10]);
        assert_eq!(wave_ends(&[], 0), vec![0]);
        assert_eq!(
            wave_ends(&[WaveSize::Devices(2), WaveSize::Percent(50)], 10),
            vec![2, 7, 10]
        );
        // A percentage rounds up; a wave never goes past the targets.
        assert_eq!(
            wave_ends(&[WaveSize::Percent(10), WaveSize::Devices(100)], 15),
            vec![2, 15]
        );
        assert_eq!(wave_ends(&[WaveSize::Percent(100)], 7), vec![7]);
    }

    fn policy() -> CampaignPolicy {
        CampaignPolicy {
            waves: vec![],
            per_minute: 60,
            rate_factor: 1.0,
            rate_step: 10,
            max_per_minute: 1000,
            success_pct: 100,
            soak_secs: 0,
            failure_pct: None,
            min_sample: 10,
            on_failure: OnFailure::Pause,
            start_timeout_secs: 1,
            download_timeout_secs: 1,
            install_timeout_secs: 1,
            confirm_timeout_secs: 1,
            retries_failed: 0,
            retries_timed_out: 0,
            retry_backoff_secs: 1,
            require_reconnect: true,
            install: InstallMode::Immediate,
            window: None,
            assign_fleet: false,
            rollback_package_id: None,
        }
    }

    #[test]
    fn the_estimate_follows_the_rate_and_the_soak() {
        let p = policy();
        // 61 devices at 60 a minute: the first at once, the 61st a minute later.
        let t = estimate(&p, &[61], 0).expect("estimate").expect("a time");
        assert!((59_000..=61_000).contains(&t), "{t}");
        let p = CampaignPolicy {
            soak_secs: 600,
            per_minute: 0,
            ..policy()
        };
        assert_eq!(
            estimate(&p, &[5, 10, 20], 0).expect("estimate"),
            Some(1_200_000)
        );
        assert_eq!(estimate(&p, &[0], 0).expect("estimate"), None);
    }

    #[test]
    fn the_exponential_rate_grows_with_updates_up_to_its_ceiling() {
        let p = CampaignPolicy {
            per_minute: 10,
            rate_factor: 2.0,
            rate_step: 5,
            max_per_minute: 50,
            ..policy()
        };
        assert_eq!(rate_at(&p, 0), 10.0);
        assert_eq!(rate_at(&p, 5), 20.0);
        assert_eq!(rate_at(&p, 12), 40.0);
        assert_eq!(rate_at(&p, 100), 50.0);
    }
}
