//! Fleet jobs: one command rolled out to every device of a fleet, at a rate (devices per
//! minute), stopped when the share of failed jobs crosses a threshold after a minimum sample,
//! cancellable, with progress counted per state. Each device gets an ordinary job, so offline
//! devices, retries and expiry work as for one device; the scheduler tick advances rollouts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::{JobService, Result, check_method, invalid};
use crate::devices::registry::{DeviceFilter, RegistryError};
use crate::model::{FleetId, FleetJob, FleetJobId, Job, JobId, JobState, RolloutState, now_ms};

/// A command for a whole fleet.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFleetJob {
    pub method: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Json,
    #[serde(default)]
    pub two_way: bool,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Devices started per minute; 0 (the default) starts all at once.
    #[serde(default)]
    pub per_minute: u32,
    /// Stop the rollout when this percentage of finished jobs failed or expired...
    #[serde(default)]
    pub abort_failure_pct: Option<u8>,
    /// ...once at least this many jobs have finished (default 10).
    #[serde(default)]
    pub abort_min_sample: Option<u32>,
}

/// A fleet job with its progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FleetJobView {
    #[serde(flatten)]
    pub job: FleetJob,
    /// Jobs per state; `pending` counts devices not started yet.
    pub progress: BTreeMap<String, u32>,
}

impl JobService {
    pub async fn create_fleet_job(&self, fleet: FleetId, new: NewFleetJob) -> Result<FleetJobView> {
        self.registry.fleet(fleet)?;
        let method = check_method(&new.method)?;
        if new.abort_failure_pct.is_some_and(|p| p == 0 || p > 100) {
            return Err(invalid("abort_failure_pct", "must be 1 to 100"));
        }
        let ttl = self.check_ttl(new.ttl_secs)?;
        let filter = DeviceFilter {
            fleet_id: Some(fleet),
            ..Default::default()
        };
        let devices = self.registry.device_ids(&filter, true)?;
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
            created_at: now_ms(),
            devices,
            launched: 0,
            note: None,
        };
        self.store.put_fleet_job(&fj)?;
        self.advance(fj.id)?;
        self.store.commit().await?;
        self.fleet_job(fj.id)
    }

    pub fn fleet_job(&self, id: FleetJobId) -> Result<FleetJobView> {
        let job = self
            .store
            .get_fleet_job(id)?
            .ok_or(RegistryError::NotFound("fleet job"))?;
        let mut progress = BTreeMap::new();
        for j in self.store.fleet_job_children(id)? {
            *progress
                .entry(format!("{:?}", j.state).to_lowercase())
                .or_insert(0) += 1;
        }
        progress.insert(
            "pending".into(),
            (job.devices.len() as u32).saturating_sub(job.launched),
        );
        Ok(FleetJobView { job, progress })
    }

    pub fn fleet_jobs_of(&self, fleet: FleetId) -> Result<Vec<FleetJobView>> {
        self.registry.fleet(fleet)?;
        let mut out = Vec::new();
        for fj in self.store.fleet_jobs()?.into_iter().rev() {
            if fj.fleet_id == fleet {
                out.push(self.fleet_job(fj.id)?);
            }
        }
        Ok(out)
    }

    /// Stops a rollout: no more devices start, and jobs not yet sent are cancelled.
    pub async fn cancel_fleet_job(&self, id: FleetJobId) -> Result<FleetJobView> {
        let mut fj = self
            .store
            .get_fleet_job(id)?
            .ok_or(RegistryError::NotFound("fleet job"))?;
        if fj.state == RolloutState::Running {
            fj.state = RolloutState::Cancelled;
            fj.note = Some("cancelled by an operator".into());
            self.store.put_fleet_job(&fj)?;
            self.cancel_queued_children(id, "the fleet job was cancelled")?;
            self.store.commit().await?;
        }
        self.fleet_job(id)
    }

    fn cancel_queued_children(&self, id: FleetJobId, why: &str) -> Result<()> {
        for mut j in self.store.fleet_job_children(id)? {
            if j.state == JobState::Queued {
                j.transition(JobState::Cancelled, Some(why.into()));
                self.save(&j)?;
            }
        }
        Ok(())
    }

    /// Starts the devices a rollout's rate allows by now, and checks its abort threshold and
    /// completion. Called at creation and by the scheduler tick.
    pub(super) fn advance(&self, id: FleetJobId) -> Result<()> {
        let Some(mut fj) = self.store.get_fleet_job(id)? else {
            return Ok(());
        };
        if fj.state != RolloutState::Running {
            return Ok(());
        }
        let children = self.store.fleet_job_children(id)?;
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
            return self.cancel_queued_children(id, "the fleet job was aborted");
        }
        let total = fj.devices.len() as u32;
        let allowed = if fj.per_minute == 0 {
            total
        } else {
            // The first device at once, then evenly at the rate.
            let elapsed = (now_ms() - fj.created_at).max(0) as u64;
            (1 + elapsed * u64::from(fj.per_minute) / 60_000).min(u64::from(total)) as u32
        };
        while fj.launched < allowed {
            let device = fj.devices[fj.launched as usize];
            fj.launched += 1;
            let now = now_ms();
            let mut job = Job {
                id: JobId::new(),
                device_id: device,
                method: fj.method.clone(),
                params: fj.params.clone(),
                two_way: fj.two_way,
                state: JobState::Queued,
                created_at: now,
                expires_at: now + fj.ttl_secs as i64 * 1000,
                rpc_id: None,
                attempts: 0,
                next_attempt_at: None,
                result: None,
                idempotency_key: None,
                fleet_job_id: Some(id),
                history: Vec::new(),
            };
            let queued = self.store.device_jobs(device, true)?.len();
            if queued >= self.cfg.max_queued_per_device {
                job.transition(
                    JobState::Failed,
                    Some("the device's job queue is full".into()),
                );
            } else {
                job.transition(JobState::Queued, None);
            }
            self.save(&job)?;
            self.store.add_fleet_job_child(id, job.id)?;
            if job.state == JobState::Queued {
                self.dispatch(device)?;
            }
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

    /// Advances every running rollout (scheduler tick).
    pub(super) fn advance_all(&self) -> Result<()> {
        for fj in self.store.fleet_jobs()? {
            if fj.state == RolloutState::Running {
                self.advance(fj.id)?;
            }
        }
        Ok(())
    }
}
