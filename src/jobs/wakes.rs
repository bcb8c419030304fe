//! When the scheduler next has to look at each unfinished job: its expiry, the end of a retry
//! backoff, or the time a send counts as lost with its session. Kept in memory, ordered by
//! time, and updated on every job write, so a scheduler tick reads only the jobs that are due
//! instead of every unfinished one (10,000 queued jobs for offline devices cost a full read
//! each second otherwise). A full sweep now and then rebuilds it from the store.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::model::{DeviceId, Job, JobId, JobState, Millis};

/// The next time the scheduler has something to do for `job`, as of `now`; `None` when it is
/// finished. `stuck_ms` is how long a send may wait for its transport's report.
pub(super) fn wake_at(job: &Job, now: Millis, stuck_ms: i64) -> Option<Millis> {
    match job.state {
        s if s.is_terminal() => None,
        JobState::Queued => Some(match job.next_attempt_at {
            // A retry waiting out its backoff: send it when the backoff ends.
            Some(t) if t > now => t.min(job.expires_at),
            // Waiting for its device (or behind another job): a connect or the job ahead
            // finishing dispatches it; the scheduler only has to expire it.
            _ => job.expires_at,
        }),
        JobState::Sent => {
            let sent = job.history.last().map_or(now, |t| t.at);
            Some(job.expires_at.min(sent + stuck_ms + 1))
        }
        _ => Some(job.expires_at),
    }
}

#[derive(Default)]
struct Inner {
    by_time: BTreeSet<(Millis, JobId)>,
    of: HashMap<JobId, (Millis, DeviceId)>,
}

/// The wake-up index.
#[derive(Default)]
pub(super) struct Wakes(Mutex<Inner>);

impl Wakes {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records (or drops, for a finished job) when `job` next needs the scheduler.
    pub fn note(&self, job: &Job, now: Millis, stuck_ms: i64) {
        let mut i = self.inner();
        if let Some((t, _)) = i.of.remove(&job.id) {
            i.by_time.remove(&(t, job.id));
        }
        if let Some(t) = wake_at(job, now, stuck_ms) {
            i.by_time.insert((t, job.id));
            i.of.insert(job.id, (t, job.device_id));
        }
    }

    /// Takes every job due at `now` out of the index (the scheduler notes them again after
    /// looking at them).
    pub fn take_due(&self, now: Millis) -> Vec<(JobId, DeviceId)> {
        let mut i = self.inner();
        let mut out = Vec::new();
        while let Some(&(t, id)) = i.by_time.first() {
            if t > now {
                break;
            }
            i.by_time.pop_first();
            if let Some((_, d)) = i.of.remove(&id) {
                out.push((id, d));
            }
        }
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner().of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobTransition;

    fn job(state: JobState, expires_at: Millis, next: Option<Millis>, last: Millis) -> Job {
        Job {
            id: JobId::new(),
            device_id: DeviceId::new(),
            method: "m".into(),
            params: serde_json::Value::Null,
            two_way: false,
            state,
            created_at: 0,
            expires_at,
            attempts: 0,
            rpc_id: None,
            next_attempt_at: next,
            result: None,
            idempotency_key: None,
            fleet_job_id: None,
            history: vec![JobTransition {
                state,
                at: last,
                note: None,
            }],
        }
    }

    #[test]
    fn each_state_wakes_when_the_scheduler_has_work() {
        let now = 1_000;
        assert_eq!(
            wake_at(&job(JobState::Queued, 9_000, None, 0), now, 30),
            Some(9_000)
        );
        assert_eq!(
            wake_at(&job(JobState::Queued, 9_000, Some(2_000), 0), now, 30),
            Some(2_000),
            "a backoff ends before the TTL"
        );
        assert_eq!(
            wake_at(&job(JobState::Queued, 9_000, Some(500), 0), now, 30),
            Some(9_000),
            "a backoff already over: dispatch handles it"
        );
        assert_eq!(
            wake_at(&job(JobState::Sent, 9_000, None, 900), now, 30),
            Some(931)
        );
        assert_eq!(
            wake_at(&job(JobState::Delivered, 9_000, None, 0), now, 30),
            Some(9_000)
        );
        assert_eq!(
            wake_at(&job(JobState::Succeeded, 9_000, None, 0), now, 30),
            None
        );
    }

    #[test]
    fn due_jobs_come_out_in_time_order_once() {
        let w = Wakes::default();
        let a = job(JobState::Queued, 3_000, None, 0);
        let b = job(JobState::Queued, 2_000, None, 0);
        let c = job(JobState::Queued, 5_000, None, 0);
        for j in [&a, &b, &c] {
            w.note(j, 0, 30);
        }
        // A job noted again moves; a finished one leaves.
        w.note(&job(JobState::Succeeded, 0, None, 0), 0, 30);
        let mut c2 = c.clone();
        c2.expires_at = 2_500;
        w.note(&c2, 0, 30);
        assert_eq!(w.len(), 3);
        let due: Vec<JobId> = w.take_due(3_000).into_iter().map(|(id, _)| id).collect();
        assert_eq!(due, vec![b.id, c.id, a.id]);
        assert!(w.take_due(10_000).is_empty());
        assert_eq!(w.len(), 0);
    }
}
