//! Jobs: `jobs` holds `device ‖ job → record` (job ids are time-ordered, so one device's jobs
//! are in creation order), `job_devices` maps `job → device`, `jobs_active` lists jobs not yet
//! finished (what the scheduler walks), `job_keys` maps `device ‖ idempotency key → job`, and
//! `rpc_seq` holds each device's last RPC request id. Fleet jobs live in `fleet_jobs`, their
//! device jobs in `fleet_job_children` and their idempotency keys in `fleet_job_keys`.

use sled::Transactional;

use super::codec::{concat, decode_json, encode_json};
use super::{Db, Result, StoreError};
use crate::model::{DeviceId, Job, JobId};

impl Db {
    /// Writes a job and keeps the active list and the idempotency index in step.
    pub fn put_job(&self, job: &Job) -> Result<()> {
        let t = self.trees();
        let key = concat(&[job.device_id.as_bytes(), job.id.as_bytes()]);
        let idem = job
            .idempotency_key
            .as_ref()
            .map(|k| concat(&[job.device_id.as_bytes(), k.as_bytes()]));
        (&t.jobs, &t.job_devices, &t.jobs_active, &t.job_keys)
            .transaction(|(jobs, devices, active, keys)| {
                jobs.insert(key.as_slice(), encode_json(job))?;
                devices.insert(job.id.as_bytes(), job.device_id.as_bytes())?;
                if job.state.is_terminal() {
                    active.remove(job.id.as_bytes())?;
                } else {
                    active.insert(job.id.as_bytes(), job.device_id.as_bytes())?;
                }
                if let Some(k) = &idem {
                    keys.insert(k.as_slice(), job.id.as_bytes())?;
                }
                Ok(())
            })
            .map_err(StoreError::from)
    }

    /// Writes many new jobs of one fleet job at once: one transaction for the jobs and their
    /// indexes, and the fleet job's child list, instead of one transaction per job (fan-out to
    /// thousands of devices is dominated by per-transaction cost otherwise).
    pub fn put_fleet_children(&self, fj: crate::model::FleetJobId, batch: &[Job]) -> Result<()> {
        let t = self.trees();
        (
            &t.jobs,
            &t.job_devices,
            &t.jobs_active,
            &t.fleet_job_children,
        )
            .transaction(|(jobs, devices, active, children)| {
                for job in batch {
                    let key = concat(&[job.device_id.as_bytes(), job.id.as_bytes()]);
                    jobs.insert(key, encode_json(job))?;
                    devices.insert(job.id.as_bytes(), job.device_id.as_bytes())?;
                    if job.state.is_terminal() {
                        active.remove(job.id.as_bytes())?;
                    } else {
                        active.insert(job.id.as_bytes(), job.device_id.as_bytes())?;
                    }
                    children.insert(concat(&[fj.as_bytes(), job.id.as_bytes()]), &[])?;
                }
                Ok(())
            })
            .map_err(StoreError::from)
    }

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

    /// The next RPC request id of a device (1, 2, ... wrapping within 31 bits).
    pub fn next_rpc_id(&self, device: DeviceId) -> Result<u32> {
        let v = self
            .trees()
            .rpc_seq
            .update_and_fetch(device.as_bytes(), |old| {
                let n = old
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, u32::from_be_bytes);
                let next = if n >= i32::MAX as u32 { 1 } else { n + 1 };
                Some(next.to_be_bytes().to_vec())
            })?
            .ok_or_else(|| StoreError::Corrupt {
                tree: "rpc_seq",
                detail: "no value".into(),
            })?;
        Ok(<[u8; 4]>::try_from(&v[..]).map_or(1, u32::from_be_bytes))
    }

    /// Removes every job of a deleted device.
    pub fn delete_device_jobs(&self, device: DeviceId) -> Result<()> {
        let t = self.trees();
        for j in self.device_jobs(device, false)? {
            t.jobs
                .remove(concat(&[device.as_bytes(), j.id.as_bytes()]))?;
            t.job_devices.remove(j.id.as_bytes())?;
            t.jobs_active.remove(j.id.as_bytes())?;
            if let Some(k) = &j.idempotency_key {
                t.job_keys
                    .remove(concat(&[device.as_bytes(), k.as_bytes()]))?;
            }
        }
        t.rpc_seq.remove(device.as_bytes())?;
        Ok(())
    }
}

impl Db {
    /// Writes a fleet job and, in the same transaction, its idempotency key
    /// (`fleet ‖ key → fleet job` in `fleet_job_keys`), so a key never outlives or predates
    /// its rollout.
    pub fn put_fleet_job(&self, fj: &crate::model::FleetJob) -> Result<()> {
        let t = self.trees();
        let idem = fj
            .idempotency_key
            .as_ref()
            .map(|k| concat(&[fj.fleet_id.as_bytes(), k.as_bytes()]));
        (&t.fleet_jobs, &t.fleet_job_keys)
            .transaction(|(jobs, keys)| {
                jobs.insert(fj.id.as_bytes(), encode_json(fj))?;
                if let Some(k) = &idem {
                    keys.insert(k.as_slice(), fj.id.as_bytes())?;
                }
                Ok(())
            })
            .map_err(StoreError::from)
    }

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

    /// Records that `job` belongs to fleet job `fj`.
    pub fn add_fleet_job_child(&self, fj: crate::model::FleetJobId, job: JobId) -> Result<()> {
        self.trees()
            .fleet_job_children
            .insert(concat(&[fj.as_bytes(), job.as_bytes()]), &[])?;
        Ok(())
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
