//! The job area's storage: jobs, fleet jobs (rollouts) and schedules. Job writes are logged:
//! a unit of work (`write_logged`) is applied atomically and made durable as one log record,
//! and the `Mark` it returns is what a caller awaits (`durable`) before anyone is told.

use futures_util::future::BoxFuture;

use super::{Durable, Fut, Mark, Result};
use crate::model::{DeviceId, FleetId, FleetJob, FleetJobId, Job, JobId, Schedule, ScheduleId};

/// The writes of one job unit of work.
pub trait JobWriter {
    fn put_job(&mut self, job: &Job);
    fn add_fleet_job_child(&mut self, fj: FleetJobId, job: JobId);
    fn put_fleet_job(&mut self, fj: &FleetJob);
    /// The next request id of a device (as seen by this unit of work).
    fn next_rpc_id(&mut self, device: DeviceId) -> Result<u32>;
    fn delete_device_jobs(&mut self, device: DeviceId) -> Result<()>;
}

pub trait JobStore: Durable {
    /// Runs `f` as one unit of work on the job area (see `write_logged`).
    fn write_logged_dyn(&self, f: &mut dyn FnMut(&mut dyn JobWriter) -> Result<()>)
    -> Result<Mark>;
    /// The mark covering every logged write made so far.
    fn logged_mark(&self) -> Mark;
    /// Waits until the logged writes up to `mark` are durable.
    fn durable(&self, mark: Mark) -> BoxFuture<'_, Result<()>>;

    fn get_job<'a>(&'a self, id: JobId) -> Fut<'a, Option<Job>>;
    fn device_jobs<'a>(&'a self, device: DeviceId, active_only: bool) -> Fut<'a, Vec<Job>>;
    /// Every job not yet finished, with its device.
    fn active_jobs<'a>(&'a self) -> Fut<'a, Vec<(JobId, DeviceId)>>;
    /// The device's job created with this idempotency key.
    fn job_by_key<'a>(&'a self, device: DeviceId, key: &'a str) -> Fut<'a, Option<Job>>;

    fn fleet_job_by_key<'a>(&'a self, fleet: FleetId, key: &'a str) -> Fut<'a, Option<FleetJob>>;
    fn get_fleet_job<'a>(&'a self, id: FleetJobId) -> Fut<'a, Option<FleetJob>>;
    fn fleet_jobs<'a>(&'a self) -> Fut<'a, Vec<FleetJob>>;
    fn fleet_job_children<'a>(&'a self, fj: FleetJobId) -> Fut<'a, Vec<Job>>;

    fn put_schedule<'a>(&'a self, s: &'a Schedule) -> Fut<'a, ()>;
    fn get_schedule<'a>(&'a self, id: ScheduleId) -> Fut<'a, Option<Schedule>>;
    fn schedules<'a>(&'a self) -> Fut<'a, Vec<Schedule>>;
    fn delete_schedule<'a>(&'a self, id: ScheduleId) -> Fut<'a, bool>;
}

impl dyn JobStore + '_ {
    /// Runs the unit of work `f` on the job area: its writes are applied at once, atomically,
    /// and logged as one record. Returns `f`'s value and the mark to wait for (`durable`)
    /// before anyone is told the writes happened.
    pub fn write_logged<T>(
        &self,
        f: impl FnOnce(&mut dyn JobWriter) -> Result<T>,
    ) -> Result<(T, Mark)> {
        let mut f = Some(f);
        let mut out = None;
        let mark = self.write_logged_dyn(&mut |w| {
            if let Some(f) = f.take() {
                out = Some(f(w)?);
            }
            Ok(())
        })?;
        let out = out.ok_or(super::StoreError::Closed)?;
        Ok((out, mark))
    }

    /// Stores one job as its own unit of work.
    pub fn put_job(&self, job: &Job) -> Result<Mark> {
        Ok(self
            .write_logged(|w| {
                w.put_job(job);
                Ok(())
            })?
            .1)
    }

    /// Stores one fleet job as its own unit of work.
    pub fn put_fleet_job(&self, fj: &FleetJob) -> Result<Mark> {
        Ok(self
            .write_logged(|w| {
                w.put_fleet_job(fj);
                Ok(())
            })?
            .1)
    }

    /// Hands out a device's next request id as its own unit of work.
    pub fn next_rpc_id(&self, device: DeviceId) -> Result<u32> {
        Ok(self.write_logged(|w| w.next_rpc_id(device))?.0)
    }

    /// Waits until every logged write made so far is durable.
    pub async fn sync_logged(&self) -> Result<()> {
        self.durable(self.logged_mark()).await
    }
}
