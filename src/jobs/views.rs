//! Jobs as the API shows them, apart from the stored records (`model::Job`): a stored field can
//! be renamed or reshaped with a migration of the store alone, and an API field without one.
//! Today the two spell every field alike; `views_match_the_records_today` says so, and is the
//! test to change when they are meant to differ.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{
    DeviceId, FleetId, FleetJob, FleetJobId, Job, JobId, JobState, JobTransition, Millis,
    RolloutState, Schedule, ScheduleId, TargetFilter, Trigger, Window,
};

/// One timestamped step of a job's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = JobTransition)]
pub struct TransitionView {
    pub state: JobState,
    /// When the job entered the state, ms since the epoch.
    pub at: Millis,
    /// Why, when there is more to say (a failure reason, who cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A command to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = Job)]
pub struct JobView {
    pub id: JobId,
    pub device_id: DeviceId,
    /// The RPC method the device receives.
    pub method: String,
    /// The RPC params the device receives: any JSON value, `null` when none were given.
    pub params: serde_json::Value,
    /// Two-way jobs succeed when the device replies; one-way jobs when it acknowledges.
    pub two_way: bool,
    pub state: JobState,
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// When an undelivered job expires, ms since the epoch.
    pub expires_at: Millis,
    /// The request id on the device's RPC topic, from the latest send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_id: Option<u32>,
    /// Sends so far.
    pub attempts: u32,
    /// When a queued job may be sent again (after a failed attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Millis>,
    /// The device's reply to a two-way job: its JSON, or the text it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// A repeated create with the same key returns this job instead of queueing another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The fleet job this job is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_job_id: Option<FleetJobId>,
    /// Every state the job went through, oldest first.
    pub history: Vec<TransitionView>,
}

impl From<&JobTransition> for TransitionView {
    fn from(t: &JobTransition) -> Self {
        Self {
            state: t.state,
            at: t.at,
            note: t.note.clone(),
        }
    }
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        Self {
            id: j.id,
            device_id: j.device_id,
            method: j.method.clone(),
            params: j.params.clone(),
            two_way: j.two_way,
            state: j.state,
            created_at: j.created_at,
            expires_at: j.expires_at,
            rpc_id: j.rpc_id,
            attempts: j.attempts,
            next_attempt_at: j.next_attempt_at,
            result: j.result.clone(),
            idempotency_key: j.idempotency_key.clone(),
            fleet_job_id: j.fleet_job_id,
            history: j.history.iter().map(TransitionView::from).collect(),
        }
    }
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        Self::from(&j)
    }
}

/// A fleet rollout as the API shows it (the stored record is `model::FleetJob`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = FleetJob)]
pub struct RolloutView {
    pub id: FleetJobId,
    pub fleet_id: FleetId,
    pub method: String,
    /// The command's parameters as given: any JSON value, `null` when none were given.
    pub params: serde_json::Value,
    /// Each device's job succeeds on its reply rather than on its acknowledgement.
    pub two_way: bool,
    /// Seconds each device's job may wait for delivery.
    pub ttl_secs: u64,
    /// Devices started per minute; 0 starts all at once.
    pub per_minute: u32,
    /// Abort when this share (percent) of finished jobs failed or expired...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_failure_pct: Option<u8>,
    /// ...once at least this many have finished.
    pub abort_min_sample: u32,
    pub state: RolloutState,
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// Devices of the fleet when the rollout started, in the order they get the job.
    pub devices: Vec<DeviceId>,
    /// Devices that have been given their job.
    pub launched: u32,
    /// A note on the rollout: why it was aborted or cancelled, or that no device matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The filter that chose `devices` among the fleet's, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TargetFilter>,
    /// Devices start only inside this window; outside it the rollout waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The schedule that started this rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<ScheduleId>,
    /// Pacing: when the current run of starts began (reset when a window closes), and how
    /// many devices had started by then. The rate applies from there, so a window that
    /// reopens does not release a burst for the time it was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paced_from: Option<Millis>,
    #[serde(default)]
    pub paced_base: u32,
    /// Makes a repeated create (by a client, or by a schedule's run repeated after a crash)
    /// return this rollout instead of starting another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl From<&FleetJob> for RolloutView {
    fn from(r: &FleetJob) -> Self {
        Self {
            id: r.id,
            fleet_id: r.fleet_id,
            method: r.method.clone(),
            params: r.params.clone(),
            two_way: r.two_way,
            ttl_secs: r.ttl_secs,
            per_minute: r.per_minute,
            abort_failure_pct: r.abort_failure_pct,
            abort_min_sample: r.abort_min_sample,
            state: r.state,
            created_at: r.created_at,
            devices: r.devices.clone(),
            launched: r.launched,
            note: r.note.clone(),
            filter: r.filter.clone(),
            window: r.window.clone(),
            schedule_id: r.schedule_id,
            paced_from: r.paced_from,
            paced_base: r.paced_base,
            idempotency_key: r.idempotency_key.clone(),
        }
    }
}

/// A schedule as the API shows it (the stored record is `model::Schedule`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = Schedule)]
pub struct ScheduleView {
    pub id: ScheduleId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<FleetId>,
    pub method: String,
    /// The command's parameters as given: any JSON value, `null` when none were given.
    pub params: serde_json::Value,
    pub two_way: bool,
    /// Seconds each job may wait for delivery (the server default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Fleet schedules: devices started per minute (0 = all at once).
    #[serde(default)]
    pub per_minute: u32,
    /// Fleet schedules: abort the rollout when this share (percent) of finished jobs failed or
    /// expired...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_failure_pct: Option<u8>,
    /// ...once at least this many have finished (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_min_sample: Option<u32>,
    /// Fleet schedules: which devices of the fleet get the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TargetFilter>,
    pub trigger: Trigger,
    /// Runs happen only inside this window: a run due outside it waits for the window to
    /// open, and a fleet rollout starts devices only while it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// A disabled schedule does not fire.
    pub enabled: bool,
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// When it fires next (none: a one-shot that has run, or disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<Millis>,
    /// When it last fired, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<Millis>,
    /// What the last run created (a job or fleet job id), or why it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Times it has fired.
    pub runs: u32,
}

impl From<&Schedule> for ScheduleView {
    fn from(r: &Schedule) -> Self {
        Self {
            id: r.id,
            name: r.name.clone(),
            device_id: r.device_id,
            fleet_id: r.fleet_id,
            method: r.method.clone(),
            params: r.params.clone(),
            two_way: r.two_way,
            ttl_secs: r.ttl_secs,
            per_minute: r.per_minute,
            abort_failure_pct: r.abort_failure_pct,
            abort_min_sample: r.abort_min_sample,
            filter: r.filter.clone(),
            trigger: r.trigger.clone(),
            window: r.window.clone(),
            enabled: r.enabled,
            created_at: r.created_at,
            next_run_at: r.next_run_at,
            last_run_at: r.last_run_at,
            last_result: r.last_result.clone(),
            runs: r.runs,
        }
    }
}

impl From<Schedule> for ScheduleView {
    fn from(r: Schedule) -> Self {
        Self::from(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn views_match_the_records_today() {
        let mut job = Job {
            id: JobId::new(),
            device_id: DeviceId::new(),
            method: "reboot".into(),
            params: json!({"delay": 5}),
            two_way: true,
            state: JobState::Queued,
            created_at: 1,
            expires_at: 2,
            rpc_id: Some(7),
            attempts: 1,
            next_attempt_at: Some(3),
            result: Some(json!("ok")),
            idempotency_key: Some("k".into()),
            fleet_job_id: Some(FleetJobId::new()),
            history: Vec::new(),
        };
        job.transition(JobState::Sent, Some("request id 7".into()));
        job.transition(JobState::Succeeded, None);
        let record = serde_json::to_value(&job).expect("record");
        let view = serde_json::to_value(JobView::from(&job)).expect("view");
        assert_eq!(record, view);
        let bare = Job {
            rpc_id: None,
            next_attempt_at: None,
            result: None,
            idempotency_key: None,
            fleet_job_id: None,
            ..job
        };
        assert_eq!(
            serde_json::to_value(&bare).expect("record"),
            serde_json::to_value(JobView::from(&bare)).expect("view")
        );
    }

    /// Every field of a rollout and of a schedule set, then the optional ones left out: the
    /// view spells each as the record does.
    #[test]
    fn rollout_and_schedule_views_match_their_records_today() {
        let (d, f, s) = (DeviceId::new(), FleetId::new(), ScheduleId::new());
        let rollout = json!({
            "id": FleetJobId::new(), "fleet_id": f, "method": "reboot", "params": {"a": 1},
            "two_way": true, "ttl_secs": 60, "per_minute": 10, "abort_failure_pct": 20,
            "abort_min_sample": 5, "state": "running", "created_at": 1, "devices": [d],
            "launched": 1, "note": "n", "filter": {"label": "x"},
            "window": {"start": "01:00", "end": "02:00", "tz": "UTC", "days": ["mon"]},
            "schedule_id": s, "paced_from": 3, "paced_base": 1, "idempotency_key": "k",
        });
        let schedule = json!({
            "id": s, "name": "nightly", "device_id": d, "fleet_id": f, "method": "m",
            "params": null, "two_way": false, "ttl_secs": 30, "per_minute": 0,
            "abort_failure_pct": 50, "abort_min_sample": 10, "filter": {"tag": "t"},
            "trigger": {"cron": {"expr": "@daily", "tz": "UTC"}},
            "window": {"start": "01:00", "end": "02:00", "tz": "UTC", "days": ["mon"]},
            "enabled": true, "created_at": 1, "next_run_at": 2, "last_run_at": 1,
            "last_result": "r", "runs": 4,
        });
        for (full, optional) in [
            (
                rollout,
                &[
                    "abort_failure_pct",
                    "note",
                    "filter",
                    "window",
                    "schedule_id",
                    "paced_from",
                    "idempotency_key",
                ][..],
            ),
            (
                schedule,
                &[
                    "device_id",
                    "fleet_id",
                    "ttl_secs",
                    "abort_failure_pct",
                    "abort_min_sample",
                    "filter",
                    "window",
                    "next_run_at",
                    "last_run_at",
                    "last_result",
                ][..],
            ),
        ] {
            let mut bare = full.clone();
            for k in optional {
                bare.as_object_mut().expect("object").remove(*k);
            }
            for v in [full, bare] {
                let (record, view) = if v.get("trigger").is_some() {
                    let r: Schedule = serde_json::from_value(v.clone()).expect("schedule");
                    (json!(r), json!(ScheduleView::from(&r)))
                } else {
                    let r: FleetJob = serde_json::from_value(v.clone()).expect("rollout");
                    (json!(r), json!(RolloutView::from(&r)))
                };
                assert_eq!(record, view);
                assert_eq!(record, v, "the record keeps every field given");
            }
        }
    }
}
