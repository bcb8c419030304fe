//! Fleet jobs: one command rolled out to every device of a fleet, at a rate (devices per
//! minute), stopped when the share of failed jobs crosses a threshold after a minimum sample,
//! cancellable, with progress counted per state. Each device gets an ordinary job, so offline
//! devices, retries and expiry work as for one device; the scheduler tick advances rollouts.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::ToSchema;

use serde_json::json;

use super::schedule::WindowSpec;
use super::{JobService, Result, check_method, invalid};
use crate::devices::attributes;
use crate::devices::registry::DeviceFilter;
use crate::devices::sessions::SessionCommand;
use crate::error::Error;
use crate::model::{
    AttributeOwner, DeviceId, FleetId, FleetJob, FleetJobId, Job, JobState, RolloutState,
    ScheduleId, TargetFilter, Window,
};
use crate::store::ports::Scope;

/// The client attribute ThingsBoard OTA clients report their firmware version in.
pub const FIRMWARE_ATTRIBUTE: &str = "current_fw_version";

/// Attribute equality as an operator means it: numbers compare by value (1 equals 1.0).
fn same_value(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

/// A command for a whole fleet.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFleetJob {
    /// The RPC method: 1 to 256 characters after trimming; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,254}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub method: String,
    /// The command's parameters: any JSON value (`null` when absent).
    #[serde(default)]
    pub params: Json,
    #[serde(default)]
    pub two_way: bool,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub ttl_secs: Option<u64>,
    /// Devices started per minute; 0 (the default) starts all at once.
    #[serde(default)]
    pub per_minute: u32,
    /// Stop the rollout when this percentage of finished jobs failed or expired...
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub abort_failure_pct: Option<u8>,
    /// ...once at least this many jobs have finished (default 10).
    #[serde(default)]
    pub abort_min_sample: Option<u32>,
    /// Only the fleet's devices that match (all of fleet when absent).
    #[serde(default)]
    pub filter: Option<TargetFilter>,
    /// Start devices only inside this maintenance window.
    #[serde(default)]
    pub window: Option<Window>,
    /// A repeated create with the same key (per fleet) returns the first rollout.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub idempotency_key: Option<String>,
}

/// A fleet job with its progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FleetJobView {
    #[serde(flatten)]
    pub job: super::views::RolloutView,
    /// Jobs per state; `pending` counts devices not started yet.
    pub progress: RolloutProgress,
}

/// A rollout's jobs per state (states without jobs left out), and the devices not started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutProgress {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cancelled: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delivered: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expired: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: u32,
    /// Devices the rollout has not started yet (its pace or window holds them).
    pub pending: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queued: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sent: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub succeeded: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RolloutProgress {
    /// The jobs in `state`.
    pub fn of(&self, state: JobState) -> u32 {
        match state {
            JobState::Queued => self.queued,
            JobState::Sent => self.sent,
            JobState::Delivered => self.delivered,
            JobState::Succeeded => self.succeeded,
            JobState::Failed => self.failed,
            JobState::Expired => self.expired,
            JobState::Cancelled => self.cancelled,
        }
    }

    fn count(&mut self, state: JobState) {
        let n = match state {
            JobState::Queued => &mut self.queued,
            JobState::Sent => &mut self.sent,
            JobState::Delivered => &mut self.delivered,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Failed => &mut self.failed,
            JobState::Expired => &mut self.expired,
            JobState::Cancelled => &mut self.cancelled,
        };
        *n += 1;
    }
}

impl JobService {
    pub async fn create_fleet_job(&self, fleet: FleetId, new: NewFleetJob) -> Result<FleetJobView> {
        let fj = self.create_fleet_job_sync(fleet, new, None, None).await?;
        self.store.sync_logged().await?;
        self.fleet_job(fj.id).await
    }

    /// Checks and stores a rollout and starts its first devices (durable at the next commit).
    /// `schedule` and `schedule_window` come from a schedule that fired.
    pub(crate) async fn create_fleet_job_sync(
        &self,
        fleet: FleetId,
        new: NewFleetJob,
        schedule: Option<ScheduleId>,
        schedule_window: Option<Window>,
    ) -> Result<FleetJob> {
        self.registry.fleet(fleet).await?;
        let method = check_method(&new.method)?;
        // The whole request is checked before a repeated key returns the first rollout: an
        // invalid request is refused whatever its key.
        if new.abort_failure_pct.is_some_and(|p| p == 0 || p > 100) {
            return Err(invalid("abort_failure_pct", "must be 1 to 100"));
        }
        let ttl = self.check_ttl(new.ttl_secs)?;
        let window = new.window.or(schedule_window);
        if let Some(w) = &window {
            WindowSpec::parse(w)?;
        }
        if let Some(k) = &new.idempotency_key {
            if k.is_empty() || k.chars().count() > 128 {
                return Err(invalid("idempotency_key", "must be 1 to 128 characters"));
            }
            if let Some(fj) = self.store.fleet_job_by_key(fleet, k).await? {
                return Ok(fj);
            }
        }
        let filter = new.filter.filter(|f| !f.is_empty());
        let all = self
            .registry
            .device_ids(
                &DeviceFilter {
                    fleet_id: Some(fleet),
                    ..Default::default()
                },
                true,
            )
            .await?;
        let devices = match &filter {
            None => all,
            Some(f) => {
                let mut v = Vec::new();
                for d in all {
                    if self.matches(d, fleet, f).await? {
                        v.push(d);
                    }
                }
                v
            }
        };
        let fj = FleetJob {
            id: FleetJobId::new(),
            fleet_id: fleet,
            method,
            params: new.params,
            two_way: new.two_way,
            ttl_secs: ttl,
            per_minute: new.per_minute,
            abort_failure_pct: new.abort_failure_pct,
            abort_min_sample: new.abort_min_sample.unwrap_or(10).max(1),
            state: RolloutState::Running,
            created_at: self.now(),
            devices,
            launched: 0,
            note: None,
            filter,
            window,
            schedule_id: schedule,
            paced_from: None,
            paced_base: 0,
            idempotency_key: new.idempotency_key,
        };
        let fj = FleetJob {
            note: fj
                .devices
                .is_empty()
                .then(|| "no enabled device of the fleet matches".to_string()),
            ..fj
        };
        self.store.put_fleet_job(&fj)?;
        self.advance(fj.id).await?;
        Ok(fj)
    }

    /// The value a rollout filter sees for attribute `key` of a device: its own (client,
    /// shared, server), else its fleet's shared default.
    async fn target_attribute(
        &self,
        device: DeviceId,
        fleet: FleetId,
        key: &str,
    ) -> Result<Option<Json>> {
        let k = [key.to_string()];
        let owners = [
            (AttributeOwner::Device(device), Scope::Client),
            (AttributeOwner::Device(device), Scope::Shared),
            (AttributeOwner::Device(device), Scope::Server),
            (AttributeOwner::Fleet(fleet), Scope::Shared),
        ];
        for (owner, scope) in owners {
            if let Some((_, _, v)) = self
                .attributes
                .get_attributes(owner, scope, Some(&k))
                .await?
                .pop()
            {
                return Ok(Some(attributes::to_json(&v)));
            }
        }
        Ok(None)
    }

    /// Whether a device passes a fleet job's filter.
    pub(crate) async fn matches(
        &self,
        device: DeviceId,
        fleet: FleetId,
        f: &TargetFilter,
    ) -> Result<bool> {
        if let Some(label) = &f.label
            && &self.registry.device_record(device).await?.label != label
        {
            return Ok(false);
        }
        if let Some(tag) = &f.tag
            && !self
                .series
                .device_series(device)
                .await?
                .iter()
                .any(|s| &s.tag == tag)
        {
            return Ok(false);
        }
        for (k, want) in &f.attributes {
            if !self
                .target_attribute(device, fleet, k)
                .await?
                .is_some_and(|v| same_value(&v, want))
            {
                return Ok(false);
            }
        }
        if f.firmware_version.is_some() || f.firmware_version_not.is_some() {
            let fw = self
                .target_attribute(device, fleet, FIRMWARE_ATTRIBUTE)
                .await?;
            let fw = fw.as_ref().and_then(Json::as_str);
            if let Some(v) = &f.firmware_version
                && fw != Some(v.as_str())
            {
                return Ok(false);
            }
            if let Some(v) = &f.firmware_version_not
                && fw == Some(v.as_str())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A rollout's record without its progress (what authorization needs: its fleet).
    pub async fn fleet_job_record(&self, id: FleetJobId) -> Result<FleetJob> {
        self.store
            .get_fleet_job(id)
            .await?
            .ok_or(Error::NotFound("fleet job"))
    }

    pub async fn fleet_job(&self, id: FleetJobId) -> Result<FleetJobView> {
        let job = self
            .store
            .get_fleet_job(id)
            .await?
            .ok_or(Error::NotFound("fleet job"))?;
        let mut progress = RolloutProgress {
            pending: (job.devices.len() as u32).saturating_sub(job.launched),
            ..Default::default()
        };
        for j in self.store.fleet_job_children(id).await? {
            progress.count(j.state);
        }
        Ok(FleetJobView {
            job: (&job).into(),
            progress,
        })
    }

    pub async fn fleet_jobs_of(&self, fleet: FleetId) -> Result<Vec<FleetJobView>> {
        self.registry.fleet(fleet).await?;
        let mut out = Vec::new();
        for fj in self.store.fleet_jobs().await?.into_iter().rev() {
            if fj.fleet_id == fleet {
                out.push(self.fleet_job(fj.id).await?);
            }
        }
        Ok(out)
    }

    /// Stops a rollout: no more devices start, and jobs not yet sent are cancelled.
    pub async fn cancel_fleet_job(&self, id: FleetJobId) -> Result<FleetJobView> {
        let mut fj = self
            .store
            .get_fleet_job(id)
            .await?
            .ok_or(Error::NotFound("fleet job"))?;
        if fj.state == RolloutState::Running {
            fj.state = RolloutState::Cancelled;
            fj.note = Some("cancelled by an operator".into());
            self.store.put_fleet_job(&fj)?;
            self.cancel_queued_children(id, "the fleet job was cancelled")
                .await?;
            self.store.sync_logged().await?;
        }
        self.fleet_job(id).await
    }

    async fn cancel_queued_children(&self, id: FleetJobId, why: &str) -> Result<()> {
        for mut j in self.store.fleet_job_children(id).await? {
            if j.state == JobState::Queued {
                j.transition(JobState::Cancelled, Some(why.into()));
                self.save(&j)?;
            }
        }
        Ok(())
    }

    /// Starts the devices a rollout's rate allows by now, and checks its abort threshold and
    /// completion. Called at creation and by the scheduler tick.
    pub(super) async fn advance(&self, id: FleetJobId) -> Result<()> {
        let Some(mut fj) = self.store.get_fleet_job(id).await? else {
            return Ok(());
        };
        if fj.state != RolloutState::Running {
            return Ok(());
        }
        let children = self.store.fleet_job_children(id).await?;
        let finished: Vec<&Job> = children.iter().filter(|j| j.state.is_terminal()).collect();
        let bad = finished
            .iter()
            .filter(|j| matches!(j.state, JobState::Failed | JobState::Expired))
            .count();
        if let Some(pct) = fj.abort_failure_pct
            && finished.len() as u32 >= fj.abort_min_sample
            && bad * 100 >= usize::from(pct) * finished.len()
        {
            fj.state = RolloutState::Aborted;
            fj.note = Some(format!(
                "{bad} of {} finished jobs failed or expired (threshold {pct} %)",
                finished.len()
            ));
            self.store.put_fleet_job(&fj)?;
            return self
                .cancel_queued_children(id, "the fleet job was aborted")
                .await;
        }
        let total = fj.devices.len() as u32;
        let now = self.now();
        if let Some(w) = &fj.window
            && !WindowSpec::parse(w)?.contains(now)
        {
            // Closed: nothing starts, and the pace restarts when it opens.
            if fj.paced_from.take().is_some() {
                self.store.put_fleet_job(&fj)?;
            }
            return Ok(());
        }
        let from = *fj.paced_from.get_or_insert(now);
        if fj.paced_from == Some(now) {
            fj.paced_base = fj.launched;
        }
        let allowed = if fj.per_minute == 0 {
            total
        } else {
            // The first device at once, then evenly at the rate.
            let elapsed = (now - from).max(0) as u64;
            (u64::from(fj.paced_base) + 1 + elapsed * u64::from(fj.per_minute) / 60_000)
                .min(u64::from(total)) as u32
        };
        if fj.launched < allowed {
            let start = fj.launched as usize;
            self.launch(&fj, &fj.devices[start..allowed as usize])
                .await?;
            fj.launched = allowed;
        }
        if fj.launched == total
            && children.len() as u32 == total
            && finished.len() == children.len()
        {
            fj.state = RolloutState::Completed;
        }
        self.store.put_fleet_job(&fj)?;
        Ok(())
    }

    /// Gives `devices` their jobs in one batch. A device that is online with nothing else
    /// in its queue gets its request right away; the others queue as usual. Writing all jobs
    /// in one transaction, rather than one per job, is what makes fan-out to thousands of
    /// devices fast (see BENCHMARKS.md).
    async fn launch(&self, fj: &FleetJob, devices: &[DeviceId]) -> Result<()> {
        let _guard = self.dispatching.lock().await;
        let mut send = Vec::new();
        // Read before the unit of work, which only collects writes.
        let mut queued = Vec::with_capacity(devices.len());
        for &device in devices {
            queued.push(self.store.device_jobs(device, true).await?.len());
        }
        // One unit of work for the whole launch: the jobs, their request ids and the child
        // list are applied together and logged as one record, so the first request waits for
        // one log sync (not a database flush) before it goes out.
        let (mut batch, write) = self.store.write_logged(|w| {
            let mut batch = Vec::with_capacity(devices.len());
            for (&device, &queued) in devices.iter().zip(&queued) {
                let mut job = self.new_job(
                    device,
                    fj.method.clone(),
                    fj.params.clone(),
                    fj.two_way,
                    fj.ttl_secs,
                );
                job.fleet_job_id = Some(fj.id);
                if queued >= self.cfg.max_queued_per_device {
                    job.transition(
                        JobState::Failed,
                        Some("the device's job queue is full".into()),
                    );
                } else {
                    job.transition(JobState::Queued, None);
                    if queued == 0 && self.sessions.is_connected(device) {
                        let rpc_id = w.next_rpc_id(device)?;
                        job.rpc_id = Some(rpc_id);
                        job.attempts = 1;
                        job.transition(JobState::Sent, Some(format!("request id {rpc_id}")));
                        send.push(batch.len());
                    }
                }
                w.put_job(&job);
                w.add_fleet_job_child(fj.id, job.id);
                batch.push(job);
            }
            Ok(batch)
        })?;
        for job in &batch {
            self.noted(job);
            self.announce(job);
        }
        let payload = json!({"method": fj.method, "params": fj.params})
            .to_string()
            .into_bytes();
        for i in send {
            let job = &mut batch[i];
            let (device, rpc_id) = (job.device_id, job.rpc_id.unwrap_or_default());
            let sent = self.sessions.send(
                device,
                SessionCommand::Rpc {
                    job: job.id,
                    rpc_id,
                    payload: payload.clone(),
                    write,
                },
            );
            if sent == 0 {
                // Gone since the check: back in the queue, the attempt does not count.
                job.attempts = 0;
                job.transition(JobState::Queued, Some("device offline".into()));
                self.save(job)?;
            }
        }
        Ok(())
    }

    /// Advances every running rollout (scheduler tick).
    /// Advances the running rollouts that need it (scheduler tick): those still starting
    /// devices, and those whose children changed since the last tick.
    pub(super) async fn advance_all(&self) -> Result<()> {
        let all = !self
            .rollouts_checked
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        let changed = std::mem::take(
            &mut *self
                .changed_rollouts
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for fj in self.store.fleet_jobs().await? {
            let starting = (fj.launched as usize) < fj.devices.len();
            if fj.state == RolloutState::Running && (all || starting || changed.contains(&fj.id)) {
                self.advance(fj.id).await?;
            }
        }
        Ok(())
    }
}
