//! Background work, run one way: named workers that stop on one shutdown signal, each with its
//! state (running or idle, runs, failures, last run, last error) kept for `/metrics` and for
//! `GET /api/v1/workers`. A periodic worker (`every`) runs a blocking job on tokio's blocking
//! pool, so a slow store never holds a runtime thread; a long-running one (`spawn`) gets the
//! shutdown signal and a `Report` to record its runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use crate::metrics::{Metrics, WorkerLabel};
use crate::model::{Millis, now_ms};

/// What a worker is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Waiting for its next run.
    Idle,
    /// In a run now.
    Running,
    /// Stopped by the shutdown signal (or its task ended).
    Stopped,
}

/// A worker as `GET /api/v1/workers` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerStatus {
    pub name: String,
    /// What it does.
    pub about: String,
    /// Seconds between runs, for periodic workers.
    pub every_secs: Option<u64>,
    pub state: WorkerState,
    /// Runs finished since the server started.
    pub runs: u64,
    /// Runs that ended in an error.
    pub failures: u64,
    /// When the last run started and how long it took (ms).
    pub last_run_at: Option<Millis>,
    pub last_duration_ms: Option<u64>,
    /// The last error and when it happened (kept after later successes, for the operator).
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
}

type Board = Arc<Mutex<BTreeMap<String, WorkerStatus>>>;

/// Records the runs of one worker.
#[derive(Clone)]
pub struct Report {
    name: String,
    board: Board,
    metrics: Arc<Metrics>,
}

impl Report {
    fn update(&self, f: impl FnOnce(&mut WorkerStatus)) {
        let mut b = self.board.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = b.get_mut(&self.name) {
            f(s);
        }
    }

    fn label(&self) -> WorkerLabel {
        WorkerLabel {
            worker: self.name.clone(),
        }
    }

    /// Runs `run` as one run of this worker: its state, duration and outcome are recorded, and
    /// a failure is logged.
    pub async fn run<F, Fut>(&self, run: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = self.started();
        let res = run().await;
        if let Err(e) = &res {
            tracing::error!(worker = %self.name, error = %e, "background work failed");
        }
        self.finished(started, &res);
        res
    }

    /// A run begins (for workers whose runs are not one future, such as a delivery whose
    /// failure its own log reports): pass the value to `finished`.
    pub fn started(&self) -> Started {
        self.update(|s| {
            s.state = WorkerState::Running;
            s.last_run_at = Some(now_ms());
        });
        self.metrics
            .worker_running
            .get_or_create(&self.label())
            .set(1);
        Started(Instant::now())
    }

    /// A run ends with `res`.
    pub fn finished(&self, started: Started, res: &Result<(), String>) {
        let took = started.0.elapsed();
        self.metrics
            .worker_running
            .get_or_create(&self.label())
            .set(0);
        self.metrics.worker_runs.get_or_create(&self.label()).inc();
        self.metrics
            .worker_seconds
            .get_or_create(&self.label())
            .inc_by(took.as_secs_f64());
        if res.is_err() {
            self.metrics
                .worker_failures
                .get_or_create(&self.label())
                .inc();
        }
        self.update(|s| {
            s.state = WorkerState::Idle;
            s.runs += 1;
            s.last_duration_ms = Some(took.as_millis() as u64);
            if let Err(e) = res {
                s.failures += 1;
                s.last_error = Some(e.clone());
                s.last_error_at = Some(now_ms());
            }
        });
    }

    fn stopped(&self) {
        self.update(|s| s.state = WorkerState::Stopped);
        self.metrics
            .worker_running
            .get_or_create(&self.label())
            .set(0);
    }
}

/// When a run started (`Report::started`).
#[must_use]
pub struct Started(Instant);

/// Runs the future `work` makes on tokio's blocking pool, driving it there: work that blocks
/// on the disk (sled answers the storage ports synchronously) stalls no runtime thread, while
/// an engine that really waits on the network is still awaited.
pub async fn on_blocking_pool<T, Fut>(
    work: impl FnOnce() -> Fut + Send + 'static,
) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    Fut: Future<Output = T>,
{
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || rt.block_on(work())).await
}

/// The server's background workers.
pub struct Workers {
    stop: watch::Sender<bool>,
    /// Running tasks by worker name.
    tasks: Mutex<BTreeMap<String, JoinHandle<()>>>,
    board: Board,
    metrics: Arc<Metrics>,
}

impl Workers {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            stop: watch::Sender::new(false),
            tasks: Mutex::new(BTreeMap::new()),
            board: Default::default(),
            metrics,
        }
    }

    fn register(&self, name: &str, about: &str, every: Option<Duration>) -> Report {
        self.board.lock().unwrap_or_else(|p| p.into_inner()).insert(
            name.to_string(),
            WorkerStatus {
                name: name.to_string(),
                about: about.to_string(),
                every_secs: every.map(|d| d.as_secs()),
                state: WorkerState::Idle,
                runs: 0,
                failures: 0,
                last_run_at: None,
                last_duration_ms: None,
                last_error: None,
                last_error_at: None,
            },
        );
        Report {
            name: name.to_string(),
            board: self.board.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Runs `job` every `period`, the first time after `first`, until the shutdown signal. Each
    /// run is driven on the blocking pool (`on_blocking_pool`), so a sweep that blocks on the
    /// disk stalls no runtime thread. A run in progress finishes before the worker stops.
    pub fn every<F, Fut>(&self, name: &str, about: &str, period: Duration, first: Duration, job: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        let report = self.register(name, about, Some(period));
        let job = Arc::new(job);
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let job = job.clone();
                let _ = report
                    .run(|| async move {
                        on_blocking_pool(move || job())
                            .await
                            .unwrap_or_else(|e| Err(format!("the run panicked: {e}")))
                    })
                    .await;
            }
            report.stopped();
        });
        self.keep(name, task);
    }

    /// Starts a long-running worker: `make` gets the shutdown signal (it returns when that
    /// changes) and the `Report` to record its runs with.
    pub fn spawn<Fut>(
        &self,
        name: &str,
        about: &str,
        make: impl FnOnce(watch::Receiver<bool>, Report) -> Fut,
    ) where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let report = self.register(name, about, None);
        let fut = make(self.stop.subscribe(), report.clone());
        let task = tokio::spawn(async move {
            fut.await;
            report.stopped();
        });
        self.keep(name, task);
    }

    /// Starts a worker that comes and goes at run time (one per integration): `fut` runs
    /// until it ends, `remove` is called with its name, or the shutdown signal, whichever
    /// comes first; a future cancelled at any await point must lose nothing (a delivery
    /// leaves its entries queued). A worker of the same name is replaced.
    pub fn spawn_removable<Fut>(&self, name: &str, about: &str, make: impl FnOnce(Report) -> Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.remove(name);
        let report = self.register(name, about, None);
        let fut = make(report.clone());
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            report.stopped();
        });
        self.keep(name, task);
    }

    /// Stops a worker started by `spawn_removable` and forgets it.
    pub fn remove(&self, name: &str) {
        if let Some(t) = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
        {
            t.abort();
        }
        self.board
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        for family in [&self.metrics.worker_runs, &self.metrics.worker_failures] {
            family.remove(&WorkerLabel {
                worker: name.to_string(),
            });
        }
        self.metrics.worker_seconds.remove(&WorkerLabel {
            worker: name.to_string(),
        });
        self.metrics.worker_running.remove(&WorkerLabel {
            worker: name.to_string(),
        });
    }

    fn keep(&self, name: &str, task: JoinHandle<()>) {
        if let Some(old) = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), task)
        {
            old.abort();
        }
    }

    /// Every worker's state, by name.
    pub fn status(&self) -> Vec<WorkerStatus> {
        self.board
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Signals every worker to stop and waits for them.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks.into_values() {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn workers_run_record_their_state_and_stop_on_one_signal() {
        let metrics = Arc::new(Metrics::new());
        let w = Workers::new(metrics.clone());
        let n = Arc::new(AtomicU32::new(0));
        let seen = n.clone();
        w.every(
            "tick",
            "counts",
            Duration::from_secs(1),
            Duration::ZERO,
            move || {
                let r = match seen.fetch_add(1, Ordering::SeqCst) {
                    1 => Err("the second run fails".into()),
                    _ => Ok(()),
                };
                std::future::ready(r)
            },
        );
        w.spawn(
            "long",
            "waits for the stop",
            |mut stop, report| async move {
                let _ = report.run(|| async { Ok(()) }).await;
                let _ = stop.changed().await;
            },
        );
        for _ in 0..50 {
            if n.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Let the third run's bookkeeping land.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let by_name: BTreeMap<_, _> = w
            .status()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let tick = &by_name["tick"];
        assert!(tick.runs >= 3, "{tick:?}");
        assert_eq!(tick.failures, 1);
        assert_eq!(tick.last_error.as_deref(), Some("the second run fails"));
        assert_eq!(tick.every_secs, Some(1));
        assert_eq!(by_name["long"].runs, 1);
        let text = metrics.render();
        assert!(
            text.contains(r#"corral_worker_failures_total{worker="tick"} 1"#),
            "{text}"
        );
        w.stop().await;
        assert!(w.status().iter().all(|s| s.state == WorkerState::Stopped));
    }
}
