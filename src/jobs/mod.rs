//! Jobs: persistent commands to devices (ThingsBoard server-side RPC, §5.5). A job moves
//! queued → sent → delivered → succeeded | failed | expired | cancelled, every step
//! timestamped and stored. Jobs to an offline device wait and are delivered in order when it
//! comes back (also after a restart); a send without PUBACK is retried with backoff; a TTL
//! ends a job that cannot be delivered; a per-device cap refuses new jobs rather than dropping
//! old ones; an idempotency key makes a create safe to repeat. Transports deliver through the
//! session registry (MQTT) or a long poll (HTTP) and report back here. The scheduler `tick`
//! finds due work (expiry, retries, lost sends) through the wake-up index in `wakes`, and runs
//! fleet rollouts (`fleet`) and schedules (`schedule`).

pub mod fleet;
pub mod schedule;
pub mod views;
mod wakes;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value as Json, json};
use utoipa::ToSchema;

pub use crate::config::JobsConfig;
use crate::devices::registry::Registry;
use crate::devices::sessions::{SessionCommand, Sessions};
use crate::error::Error;
use crate::events::{Event, EventBus};
use crate::model::{DeviceId, Job, JobId, JobState};
use crate::store::ports::{AttributeStore, JobStore, Mark, TelemetryStore};

type Result<T> = std::result::Result<T, Error>;

/// A command to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// The RPC method: 1 to 256 characters after trimming; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,254}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub method: String,
    /// The command's parameters: any JSON value (`null` when absent).
    #[serde(default)]
    pub params: Json,
    /// Wait for the device's reply (`rpc/response/{id}`) rather than only its PUBACK.
    #[serde(default)]
    pub two_way: bool,
    /// Seconds the job may wait for delivery (default `jobs.default_ttl_secs`).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub ttl_secs: Option<u64>,
    /// A repeated create with the same key returns the first job.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub idempotency_key: Option<String>,
}

/// How a send went, as the transport reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    Acked,
    NoAck,
    /// The session does not hold the RPC subscription: the job waits for one that does.
    NotSubscribed,
}

/// Work for the `job-sends` worker: what transports reported since its last run.
#[derive(Debug, Default)]
pub struct SendWork {
    /// How sends went, in the order they were reported.
    pub outcomes: Vec<(JobId, SendOutcome)>,
    /// Devices that may take their next job now (one came online or finished a job).
    pub devices: std::collections::BTreeSet<DeviceId>,
    /// Devices' replies to two-way jobs, each with the transport waiting for its answer.
    pub replies: Vec<Reply>,
}

impl SendWork {
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty() && self.devices.is_empty() && self.replies.is_empty()
    }
}

/// A device's reply to request `rpc_id`, waiting to be recorded.
#[derive(Debug)]
pub struct Reply {
    device: DeviceId,
    rpc_id: u32,
    body: Vec<u8>,
    /// Told whether a job waited for the reply, once its result is durable.
    answer: tokio::sync::oneshot::Sender<Result<bool>>,
}

/// What a run of the `job-sends` worker leaves to do once its writes are durable: answer the
/// transports waiting for their devices' replies.
#[derive(Debug, Default)]
pub struct Answers {
    /// The writes the answers wait for.
    pub mark: Mark,
    replies: Vec<(tokio::sync::oneshot::Sender<Result<bool>>, bool)>,
}

impl Answers {
    /// No transport waits for this run.
    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    /// Tells each waiting transport how its reply went: `durable` is the outcome of waiting
    /// for `mark`.
    pub fn answer(self, durable: &Result<()>) {
        for (tx, found) in self.replies {
            let _ = tx.send(match durable {
                Ok(()) => Ok(found),
                Err(e) => Err(Error::Internal(format!("the reply is not durable: {e}"))),
            });
        }
    }

    /// Every reply refused with `why` (the run failed, or the worker stops).
    fn refuse(replies: Vec<Reply>, why: &str) {
        for r in replies {
            let _ = r.answer.send(Err(Error::Internal(why.to_string())));
        }
    }
}

pub struct JobService {
    store: Arc<dyn JobStore>,
    /// Read to match rollout targets by telemetry tag and by attribute.
    series: Arc<dyn TelemetryStore>,
    attributes: Arc<dyn AttributeStore>,
    registry: Arc<Registry>,
    sessions: Arc<Sessions>,
    events: EventBus,
    cfg: JobsConfig,
    /// Serializes the decision of what to send next, so that each device has one job in flight
    /// and jobs go out in order.
    dispatching: tokio::sync::Mutex<()>,
    /// The system clock unless a test set another (`set_clock`).
    clock: std::sync::OnceLock<schedule::Clock>,
    /// Rollouts whose children changed since the scheduler last looked: a fully launched
    /// rollout only needs its abort and completion checks (which read every child) then.
    changed_rollouts: Mutex<std::collections::HashSet<crate::model::FleetJobId>>,
    /// Until the first scheduler pass, every running rollout is checked (a restart may have
    /// left one whose children all finished).
    rollouts_checked: std::sync::atomic::AtomicBool,
    /// When each unfinished job next needs the scheduler.
    wakes: wakes::Wakes,
    /// When the scheduler last read every unfinished job (`i64::MIN`: not yet).
    last_sweep: std::sync::atomic::AtomicI64,
    /// Send outcomes and devices ready for their next job, waiting for the `job-sends` worker.
    pending: Mutex<SendWork>,
    pending_ready: tokio::sync::Notify,
}

/// How often the scheduler reads every unfinished job anyway, rebuilding the wake-up index:
/// a safety net (a wall-clock jump, a write that noted a stale wake), not the way work is found.
const FULL_SWEEP_MS: i64 = 60_000;

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

/// A job's method: trimmed, 1 to 256 characters.
fn check_method(m: &str) -> Result<String> {
    crate::names::check(m, crate::names::MAX_METHOD).map_err(|e| invalid("method", e))
}

/// A device's reply to a two-way job, as the job's result: its JSON, or the text it sent
/// when that is not JSON (devices reply `ok` as often as `"ok"`).
pub fn reply_result(reply: &[u8]) -> Json {
    serde_json::from_slice(reply)
        .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(reply).into_owned()))
}

impl JobService {
    /// A job's lifetime in seconds: the given one or the default, 1 s to 365 days.
    fn check_ttl(&self, ttl: Option<u64>) -> Result<u64> {
        let ttl = ttl.unwrap_or(self.cfg.default_ttl_secs);
        if ttl == 0 || ttl > 365 * 86_400 {
            return Err(invalid("ttl_secs", "must be 1 s to 365 days"));
        }
        Ok(ttl)
    }

    pub fn new(
        ports: &crate::store::ports::Ports,
        registry: Arc<Registry>,
        sessions: Arc<Sessions>,
        events: EventBus,
        cfg: JobsConfig,
    ) -> Self {
        Self {
            store: ports.jobs.clone(),
            series: ports.telemetry.clone(),
            attributes: ports.attributes.clone(),
            registry,
            sessions,
            events,
            cfg,
            dispatching: tokio::sync::Mutex::new(()),
            clock: std::sync::OnceLock::new(),
            changed_rollouts: Mutex::default(),
            rollouts_checked: std::sync::atomic::AtomicBool::new(false),
            wakes: wakes::Wakes::default(),
            last_sweep: std::sync::atomic::AtomicI64::new(i64::MIN),
            pending: Mutex::default(),
            pending_ready: tokio::sync::Notify::new(),
        }
    }

    /// How long a send may wait for its transport's report before it counts as lost with its
    /// session (three acknowledgement timeouts).
    fn stuck_ms(&self) -> i64 {
        self.cfg.ack_timeout_secs.max(1) as i64 * 3000
    }

    /// Keeps the wake-up index in step with a job just written.
    pub(crate) fn noted(&self, job: &Job) {
        self.wakes.note(job, self.now(), self.stuck_ms());
    }

    /// Every unfinished job's id and device.
    pub async fn unfinished(&self) -> Result<Vec<(JobId, DeviceId)>> {
        Ok(self.store.active_jobs().await?)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.ack_timeout_secs.max(1))
    }

    /// How many unfinished jobs are in each state (for the metrics): one read per unfinished
    /// job, which the per-device queue cap bounds.
    pub async fn unfinished_by_state(&self) -> Result<std::collections::BTreeMap<JobState, u64>> {
        let mut counts = std::collections::BTreeMap::new();
        for (id, _) in self.store.active_jobs().await? {
            if let Some(j) = self.store.get_job(id).await? {
                *counts.entry(j.state).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// Stores a job (one unit of work): durable once the returned mark is.
    pub(crate) fn save(&self, job: &Job) -> Result<Mark> {
        let mark = self.store.put_job(job)?;
        self.noted(job);
        self.announce(job);
        Ok(mark)
    }

    /// Tells live views (and HTTP long polls) that a job changed.
    fn announce(&self, job: &Job) {
        if let Some(fj) = job.fleet_job_id {
            self.changed_rollouts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(fj);
        }
        self.events.publish(Event::JobUpdated {
            job_id: job.id,
            device_id: job.device_id,
            state: job.state,
        });
    }

    /// Creates a job for a device and sends it if the device is there.
    pub async fn create(&self, device: DeviceId, new: NewJob) -> Result<Job> {
        let job = self.create_job_sync(device, new).await?;
        self.store.sync_logged().await?;
        self.dispatch(device).await?;
        Ok(job)
    }

    /// Checks and stores a new job (durable at the next commit); does not send it.
    pub(crate) async fn create_job_sync(&self, device: DeviceId, new: NewJob) -> Result<Job> {
        self.registry.device_record(device).await?;
        let method = check_method(&new.method)?;
        // The whole request is checked before a repeated key returns the first job: an invalid
        // request is refused whatever its key.
        let ttl = self.check_ttl(new.ttl_secs)?;
        if let Some(k) = &new.idempotency_key {
            if k.is_empty() || k.chars().count() > 128 {
                return Err(invalid("idempotency_key", "must be 1 to 128 characters"));
            }
            if let Some(j) = self.store.job_by_key(device, k).await? {
                return Ok(j);
            }
        }
        let active = self.store.device_jobs(device, true).await?.len();
        if active >= self.cfg.max_queued_per_device {
            return Err(Error::QueueFull(format!(
                "the device already has {active} unfinished jobs (jobs.max_queued_per_device); \
                 wait for them or cancel some"
            )));
        }
        let mut job = self.new_job(device, method, new.params, new.two_way, ttl);
        job.idempotency_key = new.idempotency_key;
        job.transition(JobState::Queued, None);
        self.save(&job)?;
        Ok(job)
    }

    /// A job record in no state yet.
    fn new_job(
        &self,
        device: DeviceId,
        method: String,
        params: Json,
        two_way: bool,
        ttl_secs: u64,
    ) -> Job {
        let now = self.now();
        Job {
            id: JobId::new(),
            device_id: device,
            method,
            params,
            two_way,
            state: JobState::Queued,
            created_at: now,
            expires_at: now + (ttl_secs as i64) * 1000,
            rpc_id: None,
            attempts: 0,
            next_attempt_at: None,
            result: None,
            idempotency_key: None,
            fleet_job_id: None,
            history: Vec::new(),
        }
    }

    pub async fn get(&self, id: JobId) -> Result<Job> {
        self.store.get_job(id).await?.ok_or(Error::NotFound("job"))
    }

    /// A device's jobs, newest first.
    pub async fn list(&self, device: DeviceId) -> Result<Vec<Job>> {
        self.registry.device_record(device).await?;
        let mut v = self.store.device_jobs(device, false).await?;
        v.reverse();
        Ok(v)
    }

    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        let mut job = self.get(id).await?;
        if !job.state.is_terminal() {
            job.transition(JobState::Cancelled, Some("cancelled by an operator".into()));
            let mark = self.save(&job)?;
            self.store.durable(mark).await?;
            self.dispatch(job.device_id).await?;
        }
        Ok(job)
    }

    /// Waits until a job finishes or `wait` passes; returns it as it stands.
    pub async fn wait(&self, id: JobId, wait: Duration) -> Result<Job> {
        let mut events = self.events.subscribe();
        let job = self.get(id).await?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        let _ = tokio::time::timeout(wait, async {
            loop {
                match events.recv().await {
                    Ok(Event::JobUpdated { job_id, state, .. })
                        if job_id == id && state.is_terminal() =>
                    {
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    _ => {}
                }
            }
        })
        .await;
        self.get(id).await
    }

    /// The device's next job to send, if it is queued: the oldest job not yet delivered goes
    /// first, and until it is delivered (or finished) nothing overtakes it, not even while it
    /// waits out a retry backoff. A head past its TTL expires here.
    async fn head(&self, device: DeviceId, now: i64) -> Result<Option<Job>> {
        let Some(mut job) = self
            .store
            .device_jobs(device, true)
            .await?
            .into_iter()
            .find(|j| j.state != JobState::Delivered)
        else {
            return Ok(None);
        };
        if job.state != JobState::Queued {
            return Ok(None);
        }
        if job.expires_at <= now {
            job.transition(
                JobState::Expired,
                Some("not delivered before its TTL".into()),
            );
            self.save(&job)?;
            return Ok(None);
        }
        Ok(Some(job))
    }

    /// Sends the device's next job when nothing is in flight: one job at a time, in order.
    pub async fn dispatch(&self, device: DeviceId) -> Result<()> {
        let _guard = self.dispatching.lock().await;
        let now = self.now();
        let Some(mut job) = self.head(device, now).await? else {
            return Ok(());
        };
        if job.next_attempt_at.is_some_and(|t| t > now) {
            return Ok(());
        }
        // Offline: the job waits; no request id is used up.
        if !self.sessions.is_connected(device) {
            return Ok(());
        }
        // A job sent before keeps its request id: the earlier request may have reached the
        // device (its PUBACK lost, or the server stopped in flight), and the same id lets the
        // device tell a repeat from a new command.
        let rpc_id = match job.rpc_id {
            Some(id) => id,
            None => self.store.next_rpc_id(device)?,
        };
        let payload = json!({"method": job.method, "params": job.params})
            .to_string()
            .into_bytes();
        job.rpc_id = Some(rpc_id);
        job.attempts += 1;
        job.next_attempt_at = None;
        job.transition(JobState::Sent, Some(format!("request id {rpc_id}")));
        let write = self.save(&job)?;
        let sent = self.sessions.send(
            device,
            SessionCommand::Rpc {
                job: job.id,
                rpc_id,
                payload,
                write,
            },
        );
        if sent == 0 {
            // Offline after all: back in the queue, the attempt does not count.
            job.attempts -= 1;
            job.transition(JobState::Queued, Some("device offline".into()));
            self.save(&job)?;
        }
        Ok(())
    }

    /// A transport's report on a send. It is recorded by the `job-sends` worker, off the
    /// transport's thread and together with the reports that arrive meanwhile: a rollout's
    /// acknowledgements come ten thousand at once, and one unit of work per acknowledgement
    /// cost each its own transaction and log record (see BENCHMARKS.md, fan-out). Until it is
    /// recorded the job stays `sent`, which is what a crash in between leaves too: the request
    /// goes again under the same id.
    pub fn on_sent(&self, id: JobId, outcome: SendOutcome) {
        self.queue_work(|w| w.outcomes.push((id, outcome)));
    }

    /// A device may take its next job (it now listens for requests, or finished one): the
    /// `job-sends` worker sends it, so a transport never waits for the job area (nor for a
    /// rollout being launched) on its own thread.
    pub fn ready(&self, device: DeviceId) {
        self.queue_work(|w| {
            w.devices.insert(device);
        });
    }

    fn queue_work(&self, f: impl FnOnce(&mut SendWork)) {
        f(&mut self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        self.pending_ready.notify_one();
    }

    /// Waits for work for the `job-sends` worker and takes all that is there.
    pub async fn next_send_work(&self) -> SendWork {
        loop {
            let work = self.take_send_work();
            if !work.is_empty() {
                return work;
            }
            self.pending_ready.notified().await;
        }
    }

    /// The work reported so far (at shutdown, what is left to record).
    pub fn take_send_work(&self) -> SendWork {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records send outcomes and replies as one unit of work, then sends each device
    /// concerned its next job. The returned answers are for the transports waiting for their
    /// replies: give them once the returned mark is durable (`Answers::answer`).
    pub async fn do_send_work(&self, work: SendWork) -> Result<Answers> {
        let SendWork {
            outcomes,
            mut devices,
            replies,
        } = work;
        match self.record_send_work(outcomes, replies, &mut devices).await {
            Ok(answers) => {
                // A device whose next job cannot start now is not the batch's failure: the
                // scheduler tries again.
                for d in devices {
                    if let Err(e) = self.dispatch(d).await {
                        tracing::error!(device = %d, error = %e, "cannot send a device's next job");
                    }
                }
                Ok(answers)
            }
            Err((e, replies)) => {
                Answers::refuse(replies, &format!("cannot record the reply: {e}"));
                Err(e)
            }
        }
    }

    /// The replies left unanswered at shutdown are refused: their devices send them again.
    pub fn refuse_replies(&self, work: SendWork) {
        Answers::refuse(work.replies, "the server is stopping");
    }

    async fn record_send_work(
        &self,
        outcomes: Vec<(JobId, SendOutcome)>,
        replies: Vec<Reply>,
        devices: &mut std::collections::BTreeSet<DeviceId>,
    ) -> std::result::Result<Answers, (Error, Vec<Reply>)> {
        // Jobs changed in this run, by id: a reply may follow its own acknowledgement here.
        let mut changed: std::collections::BTreeMap<JobId, (Job, Option<SendOutcome>)> =
            Default::default();
        let mut order = Vec::new();
        for (id, outcome) in outcomes {
            let job = match self.store.get_job(id).await {
                Ok(j) => j,
                Err(e) => return Err((e.into(), replies)),
            };
            let Some(mut job) = job else {
                continue;
            };
            // Cancelled, expired or requeued meanwhile: the report is stale.
            if job.state != JobState::Sent {
                continue;
            }
            self.apply_outcome(&mut job, outcome);
            order.push(id);
            changed.insert(id, (job, Some(outcome)));
        }
        let mut found = Vec::with_capacity(replies.len());
        for r in &replies {
            let stored = match self.store.device_jobs(r.device, true).await {
                Ok(v) => v,
                Err(e) => return Err((e.into(), replies)),
            };
            // The job as this run left it, if it changed here.
            let job = stored
                .into_iter()
                .map(|j| match changed.get(&j.id) {
                    Some((c, _)) => c.clone(),
                    None => j,
                })
                .find(|j| {
                    j.rpc_id == Some(r.rpc_id)
                        && matches!(j.state, JobState::Sent | JobState::Delivered)
                });
            let Some(mut job) = job else {
                found.push(false);
                continue;
            };
            job.result = Some(reply_result(&r.body));
            job.transition(JobState::Succeeded, Some("device replied".into()));
            devices.insert(job.device_id);
            if !changed.contains_key(&job.id) {
                order.push(job.id);
            }
            let outcome = changed.get(&job.id).and_then(|(_, o)| *o);
            changed.insert(job.id, (job, outcome));
            found.push(true);
        }
        let mark = if changed.is_empty() {
            Mark::default()
        } else {
            let written = self.store.write_logged(|w| {
                for id in &order {
                    w.put_job(&changed[id].0);
                }
                Ok(())
            });
            match written {
                Ok(((), mark)) => mark,
                Err(e) => return Err((e.into(), replies)),
            }
        };
        for id in &order {
            let (job, outcome) = &changed[id];
            self.noted(job);
            self.announce(job);
            if *outcome != Some(SendOutcome::NotSubscribed) {
                devices.insert(job.device_id);
            }
        }
        Ok(Answers {
            mark,
            replies: replies
                .into_iter()
                .zip(found)
                .map(|(r, f)| (r.answer, f))
                .collect(),
        })
    }

    /// A send's outcome as a transition of its (sent) job.
    fn apply_outcome(&self, job: &mut Job, outcome: SendOutcome) {
        match outcome {
            SendOutcome::Acked if job.two_way => {
                job.transition(JobState::Delivered, None);
            }
            SendOutcome::Acked => {
                job.transition(JobState::Succeeded, Some("acknowledged".into()));
            }
            SendOutcome::NoAck if job.attempts >= self.cfg.max_attempts => {
                job.transition(
                    JobState::Failed,
                    Some(format!("no acknowledgement after {} sends", job.attempts)),
                );
            }
            SendOutcome::NoAck => {
                // Backoff: 1 s, 2 s, 4 s, ... up to a minute.
                let backoff = 1000i64 << job.attempts.saturating_sub(1).min(6);
                job.next_attempt_at = Some(self.now() + backoff.min(60_000));
                job.transition(
                    JobState::Queued,
                    Some("no acknowledgement; will retry".into()),
                );
            }
            SendOutcome::NotSubscribed => {
                job.attempts = job.attempts.saturating_sub(1);
                job.transition(
                    JobState::Queued,
                    Some("the session holds no RPC subscription".into()),
                );
            }
        }
    }

    /// A device's reply to request `rpc_id` (two-way jobs). False when no job waits for it.
    ///
    /// Returns once the job's success and result are durable, so that the transport
    /// acknowledges the reply (PUBACK, HTTP 200) only then: `Ok(false)` when no job waits for
    /// this reply (a late or repeated one), an error when it could not be stored (the device
    /// sends it again).
    pub async fn on_reply(&self, device: DeviceId, rpc_id: u32, reply: &[u8]) -> Result<bool> {
        // Recorded by the `job-sends` worker with whatever else came meanwhile (a two-way
        // rollout's replies come thousands at once), off the transport's thread.
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.queue_work(|w| {
            w.replies.push(Reply {
                device,
                rpc_id,
                body: reply.to_vec(),
                answer,
            })
        });
        answered
            .await
            .unwrap_or_else(|_| Err(Error::Internal("the reply was not recorded".into())))
    }

    /// The next job for a device that polls over HTTP: handed over as delivered.
    pub async fn take_for_http(&self, device: DeviceId) -> Result<Option<Job>> {
        let _guard = self.dispatching.lock().await;
        let now = self.now();
        let Some(mut job) = self.head(device, now).await? else {
            return Ok(None);
        };
        let rpc_id = self.store.next_rpc_id(device)?;
        job.rpc_id = Some(rpc_id);
        job.attempts += 1;
        job.transition(JobState::Sent, Some(format!("request id {rpc_id} (HTTP)")));
        if job.two_way {
            job.transition(JobState::Delivered, None);
        } else {
            job.transition(JobState::Succeeded, Some("handed over".into()));
        }
        self.save(&job)?;
        Ok(Some(job))
    }

    /// Long-poll for the next job of an HTTP device. The job is handed over (returned) only
    /// once its new state is durable.
    pub async fn next_for_http(&self, device: DeviceId, wait: Duration) -> Result<Option<Job>> {
        let job = self.wait_for_http(device, wait).await?;
        if job.is_some() {
            self.store.sync_logged().await?;
        }
        Ok(job)
    }

    async fn wait_for_http(&self, device: DeviceId, wait: Duration) -> Result<Option<Job>> {
        let mut events = self.events.subscribe();
        if let Some(j) = self.take_for_http(device).await? {
            return Ok(Some(j));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ev = tokio::time::timeout_at(deadline, events.recv()).await;
            match ev {
                Err(_) => return self.take_for_http(device).await,
                Ok(Ok(Event::JobUpdated { device_id, .. })) if device_id == device => {
                    if let Some(j) = self.take_for_http(device).await? {
                        return Ok(Some(j));
                    }
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Waits until the writes marked `write` are durable: a transport calls it before it hands
    /// a request to a device, so that after a crash the job is found as sent, under the
    /// request id the device saw.
    pub async fn durable(&self, write: Mark) -> Result<()> {
        Ok(self.store.durable(write).await?)
    }

    /// After a restart, jobs that were in flight go back to the queue.
    pub async fn recover(&self) -> Result<usize> {
        let mut n = 0;
        for (id, _) in self.store.active_jobs().await? {
            let mut job = self.get(id).await?;
            if job.state == JobState::Sent {
                job.transition(JobState::Queued, Some("in flight at a restart".into()));
                self.save(&job)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Periodic work: expire jobs past their TTL, requeue sends that lost their session, and
    /// send what is due (retries, devices that came back).
    pub async fn tick(&self) {
        if let Err(e) = self.tick_inner().await {
            tracing::error!(error = %e, "job scheduler");
        }
    }

    /// A tick that reads every unfinished job, as the once-a-minute sweep does (the scheduler
    /// benchmark compares it with an ordinary tick).
    pub async fn tick_full(&self) {
        self.last_sweep
            .store(i64::MIN, std::sync::atomic::Ordering::Relaxed);
        self.tick().await;
    }

    async fn tick_inner(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let now = self.now();
        let stuck = self.stuck_ms();
        // Normally only the jobs whose wake-up time has come; every unfinished job on the
        // first pass and then once every `FULL_SWEEP_MS`.
        let last = self.last_sweep.load(Ordering::Relaxed);
        let full = last == i64::MIN || now.saturating_sub(last) >= FULL_SWEEP_MS || now < last;
        let candidates = if full {
            self.last_sweep.store(now, Ordering::Relaxed);
            self.store.active_jobs().await?
        } else {
            self.wakes.take_due(now)
        };
        let mut devices = std::collections::BTreeSet::new();
        for (id, device) in candidates {
            let Some(mut job) = self.store.get_job(id).await? else {
                continue;
            };
            // Whatever happens below, the job is looked at again when it is next due (a
            // transition notes it again through `save`).
            self.noted(&job);
            if job.expires_at <= now && job.state != JobState::Delivered {
                job.transition(
                    JobState::Expired,
                    Some("not delivered before its TTL".into()),
                );
                self.save(&job)?;
            } else if job.state == JobState::Delivered && job.expires_at <= now {
                job.transition(JobState::Failed, Some("no reply before its TTL".into()));
                self.save(&job)?;
            } else if job.state == JobState::Sent
                && job.history.last().is_some_and(|t| now - t.at > stuck)
            {
                // The session ended before the transport could report.
                job.transition(JobState::Queued, Some("the session ended in flight".into()));
                self.save(&job)?;
            }
            devices.insert(device);
        }
        for d in devices {
            self.dispatch(d).await?;
        }
        self.run_due_schedules().await?;
        self.advance_all().await
    }
}
