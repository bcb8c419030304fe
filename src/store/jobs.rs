//! Jobs: `jobs` holds `device ‖ job → record` (job ids are time-ordered, so one device's jobs
//! are in creation order), `job_devices` maps `job → device`, `jobs_active` lists jobs not yet
//! finished (what the scheduler walks), `job_keys` maps `device ‖ idempotency key → job`, and
//! `rpc_seq` holds each device's last RPC request id. Fleet jobs live in `fleet_jobs`, their
//! device jobs in `fleet_job_children` and their idempotency keys in `fleet_job_keys`. Every
//! write to these trees is a logged unit of work (see `logged`); reads go straight to sled.

use super::codec::{concat, decode_json, encode_json};
use super::{Db, Mark, Result, Store, StoreError};
use crate::model::{DeviceId, Job, JobId};

/// A job-area write of the store's own (a deleted device's jobs), as one unit of work
/// (`Store::write_logged`); services write through `ports::JobStore`.
impl Store {
    /// Removes every job of a deleted device.
    pub fn delete_device_jobs(&self, device: DeviceId) -> Result<Mark> {
        Ok(self.write_logged(|w| w.delete_device_jobs(device))?.1)
    }
}

impl Db {
    pub fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let t = self.trees();
        let Some(dev) = t.job_devices.get(id.as_bytes())? else {
            return Ok(None);
        };
        match t.jobs.get(concat(&[&dev, id.as_bytes()]))? {
            None => Ok(None),
            Some(v) => decode_json("jobs", &v).map(Some),
        }
    }

    /// A device's jobs in creation order (oldest first), optionally only unfinished ones.
    pub fn device_jobs(&self, device: DeviceId, active_only: bool) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        for kv in self.trees().jobs.scan_prefix(device.as_bytes()) {
            let j: Job = decode_json("jobs", &kv?.1)?;
            if !active_only || !j.state.is_terminal() {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// Every unfinished job's id and device.
    pub fn active_jobs(&self) -> Result<Vec<(JobId, DeviceId)>> {
        self.trees()
            .jobs_active
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                match (JobId::from_slice(&k), DeviceId::from_slice(&v)) {
                    (Some(j), Some(d)) => Ok((j, d)),
                    _ => Err(StoreError::Corrupt {
                        tree: "jobs_active",
                        detail: "bad entry".into(),
                    }),
                }
            })
            .collect()
    }

    pub fn job_by_key(&self, device: DeviceId, key: &str) -> Result<Option<Job>> {
        match self
            .trees()
            .job_keys
            .get(concat(&[device.as_bytes(), key.as_bytes()]))?
            .and_then(|v| JobId::from_slice(&v))
        {
            Some(id) => self.get_job(id),
            None => Ok(None),
        }
    }
}

impl Db {
    /// The fleet job created with this idempotency key for this fleet, if any.
    pub fn fleet_job_by_key(
        &self,
        fleet: crate::model::FleetId,
        key: &str,
    ) -> Result<Option<crate::model::FleetJob>> {
        let t = self.trees();
        let Some(id) = t
            .fleet_job_keys
            .get(concat(&[fleet.as_bytes(), key.as_bytes()]))?
        else {
            return Ok(None);
        };
        match crate::model::FleetJobId::from_slice(&id) {
            Some(id) => self.get_fleet_job(id),
            None => Ok(None),
        }
    }

    pub fn get_fleet_job(
        &self,
        id: crate::model::FleetJobId,
    ) -> Result<Option<crate::model::FleetJob>> {
        match self.trees().fleet_jobs.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => decode_json("fleet_jobs", &v).map(Some),
        }
    }

    /// Every fleet job, oldest first.
    pub fn fleet_jobs(&self) -> Result<Vec<crate::model::FleetJob>> {
        self.trees()
            .fleet_jobs
            .iter()
            .map(|kv| decode_json("fleet_jobs", &kv?.1))
            .collect()
    }

    /// The jobs of a fleet job.
    pub fn fleet_job_children(&self, fj: crate::model::FleetJobId) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        for kv in self.trees().fleet_job_children.scan_prefix(fj.as_bytes()) {
            let (k, _) = kv?;
            if let Some(id) = JobId::from_slice(&k[16..])
                && let Some(j) = self.get_job(id)?
            {
                out.push(j);
            }
        }
        Ok(out)
    }
}

impl Db {
    pub fn put_schedule(&self, s: &crate::model::Schedule) -> Result<()> {
        self.trees()
            .schedules
            .insert(s.id.as_bytes(), encode_json(s))?;
        Ok(())
    }

    pub fn get_schedule(
        &self,
        id: crate::model::ScheduleId,
    ) -> Result<Option<crate::model::Schedule>> {
        match self.trees().schedules.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => decode_json("schedules", &v).map(Some),
        }
    }

    /// Every schedule, oldest first.
    pub fn schedules(&self) -> Result<Vec<crate::model::Schedule>> {
        self.trees()
            .schedules
            .iter()
            .map(|kv| decode_json("schedules", &kv?.1))
            .collect()
    }

    pub fn delete_schedule(&self, id: crate::model::ScheduleId) -> Result<bool> {
        Ok(self.trees().schedules.remove(id.as_bytes())?.is_some())
    }
}
