//! The device-data write pipeline and group commit (DESIGN.md §3):
//!
//! ```text
//! callers ──ops──▶ writer thread: log to WAL, apply to sled ──batches──▶ flusher: fdatasync WAL ──▶ replies
//!                        └──commits──▶ committer: sled flush ──▶ replies
//! ```
//!
//! Callers never block a runtime thread on disk: they queue an op and await its reply. The
//! flusher drains every batch written so far before each sync, so one `fdatasync` covers
//! everything waiting, and a reply says "durable" only for records written before that sync
//! started. While one sync runs, the writer keeps logging and applying the next batch. Every
//! `store::StoreOptions::checkpoint_bytes` of log (64 MiB), the writer starts a new segment,
//! and the committer flushes sled and drops the old segments that hold no point still waiting
//! in memory (the writer's next groups write those a few at a time). Registry commits and
//! checkpoint flushes (sled flushes, seconds after many writes) run on the committer thread, so
//! device data and logged writes never queue behind one.

use std::fs::File;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::integrations::{Enqueue, StagedQueue};
use super::wal::{PointsOp, Wal};
use super::{Db, Result, StoreError};
use crate::metrics::Metrics;

type Reply = oneshot::Sender<Result<usize>>;

enum Job {
    /// Log and apply; reply once durable (`durable`) or once applied.
    Points {
        op: PointsOp,
        /// Integration queue entries logged and applied with the points.
        queue: Option<Enqueue>,
        reply: Reply,
        durable: bool,
    },
    /// Flush sled and drop the log written so far.
    Checkpoint(oneshot::Sender<Result<()>>),
    /// Flush sled: makes registry writes made on other threads durable. Passed through the
    /// writer (so the bookkeeping queued before it is applied first) to the committer thread,
    /// which runs one flush at a time.
    Commit(oneshot::Sender<Result<()>>),
    /// Wakes the writer to run the bookkeeping queued in `Pipeline::later`.
    Wake,
    /// Starts a new segment and keeps it, and every later one, from checkpoints until the pin
    /// `id` is dropped (an online backup reads them). Replies with the new segment's number.
    Pin(u64, oneshot::Sender<Result<u64>>),
    /// Starts a new segment, so the ones before it are complete; replies with its number.
    Rotate(oneshot::Sender<Result<u64>>),
}

/// Bookkeeping applied on the writer thread, durable at the next checkpoint or `commit`.
type Later = Box<dyn FnOnce(&Db) + Send>;

/// Durable replies waiting for the sync of the segment their records went to.
struct Batch {
    file: Arc<File>,
    waiting: Vec<(Reply, Result<usize>)>,
    /// Logged registry writes (first, last) in the segment, durable with the sync.
    logged: Option<(u64, u64)>,
}

/// Jobs queued before callers feel backpressure.
const QUEUE: usize = 16_384;
/// Jobs handled before the batch is handed to the flusher, bounding latency under load.
const MAX_BATCH: usize = 4_096;

pub(super) struct Pipeline {
    tx: mpsc::Sender<Job>,
    /// The writer thread, joined by `close`.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Log segments kept for readers: pin id → first segment needed. Shared with the log.
    pins: super::wal::Pins,
    next_pin: std::sync::atomic::AtomicU64,
    /// Unbounded on purpose: it grows with connection churn (two entries per connection), not
    /// with message rate, and must not be dropped when the data queue is full.
    later: Arc<Mutex<Vec<Later>>>,
}

impl Pipeline {
    pub(super) fn spawn(
        db: Arc<Db>,
        wal: Wal,
        delay: Duration,
        min_free: u64,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let (batches_tx, batches_rx) = std_mpsc::channel::<Batch>();
        let later = Arc::new(Mutex::new(Vec::new()));
        let writer_later = later.clone();
        let commits = metrics.store_commits.clone();
        let flusher_db = db.clone();
        let pins = wal.pins();
        // sled flushes run on their own thread, one at a time (concurrent sled flushes can
        // stall each other), so the writer keeps logging while one runs: a flush can take
        // seconds after many registry writes, and logged writes must not wait behind it.
        let (commit_tx, commit_rx) = std_mpsc::channel::<ToCommitter>();
        let committer_db = db.clone();
        let committer = std::thread::Builder::new()
            .name("store-committer".into())
            .spawn(move || commit_loop(&committer_db, commit_rx, &commits))?;
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                write_loop(
                    &db,
                    wal,
                    rx,
                    &writer_later,
                    batches_tx,
                    min_free,
                    &commit_tx,
                );
                // The committer lets go of the database before `close` returns.
                drop(commit_tx);
                let _ = committer.join();
            })?;
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flush_loop(batches_rx, delay, &metrics, &flusher_db))?;
        Ok(Self {
            tx,
            writer: Some(writer),
            later,
            pins,
            next_pin: Default::default(),
        })
    }

    /// Stops the writer (it checkpoints and lets go of the database) and waits for it.
    pub(super) fn close(mut self) {
        let writer = self.writer.take();
        drop(self);
        if let Some(w) = writer {
            let _ = w.join();
        }
    }

    /// Pins the log from a new segment on; returns the pin id and that segment's number.
    pub(super) async fn pin(&self) -> Result<(u64, u64)> {
        let id = self
            .next_pin
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seq = self.request(|reply| Job::Pin(id, reply)).await?;
        Ok((id, seq))
    }

    pub(super) fn unpin(&self, id: u64) {
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub(super) async fn rotate(&self) -> Result<u64> {
        self.request(Job::Rotate).await
    }

    pub(super) async fn points(
        &self,
        op: PointsOp,
        queue: Option<Enqueue>,
        durable: bool,
    ) -> Result<usize> {
        self.request(|reply| Job::Points {
            op,
            queue,
            reply,
            durable,
        })
        .await
    }

    /// Queues the job `make` builds around a reply channel and waits for the reply.
    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `f` without waiting, in order with other bookkeeping.
    pub(super) fn apply_later(&self, f: impl FnOnce(&Db) + Send + 'static) {
        self.later
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
        // A full data queue means the writer is busy and will see the bookkeeping anyway.
        let _ = self.tx.try_send(Job::Wake);
    }

    pub(super) async fn commit(&self) -> Result<()> {
        self.request(Job::Commit).await
    }

    /// Wakes the writer to log the registry writes queued in `Db::logged`.
    pub(super) fn wake(&self) {
        // A full data queue means the writer is busy and will see them anyway.
        let _ = self.tx.try_send(Job::Wake);
    }

    pub(super) async fn checkpoint(&self) -> Result<()> {
        self.request(Job::Checkpoint).await
    }
}

/// Device data refused because free space is below `min_free`; `None` when there is room (or
/// no reserve is configured). A statvfs per batch costs microseconds.
fn disk_low(db: &Db, min_free: u64) -> Option<(u64, u64)> {
    if min_free == 0 {
        return None;
    }
    match super::guard::free_bytes(db.path()) {
        Ok(free) if free < min_free => Some((free >> 20, min_free >> 20)),
        _ => None,
    }
}

fn write_loop(
    db: &Db,
    mut wal: Wal,
    mut rx: mpsc::Receiver<Job>,
    later: &Mutex<Vec<Later>>,
    batches: std_mpsc::Sender<Batch>,
    min_free: u64,
    committer: &std_mpsc::Sender<ToCommitter>,
) {
    let mut buf = Vec::with_capacity(1 << 16);
    let mut was_low = false;
    // Set when sled failed to take writes the log holds: see below.
    let mut behind: Option<String> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        buf.clear();
        let t0 = Instant::now();
        let mut took = GroupTimes::default();
        let mut staged = super::telemetry::Staged::default();
        let mut queued = StagedQueue::default();
        // (reply, values staged or the error staging them, waits for durability, values logged)
        let mut done: Vec<(Reply, Result<usize>, bool, usize)> = Vec::with_capacity(jobs.len());
        let mut checkpoints = Vec::new();
        let mut commits = Vec::new();
        // Points whose records are in `buf`, applied only once the log has them.
        let mut logged = Vec::new();
        let low = jobs
            .iter()
            .any(|j| matches!(j, Job::Points { .. }))
            .then(|| disk_low(db, min_free))
            .flatten();
        match (low, was_low) {
            (Some((free, need)), false) => tracing::error!(
                free_mib = free,
                need_mib = need,
                "free disk space is below store.min_free_mb: device data is refused until space is freed"
            ),
            (None, true) => tracing::info!(
                "free disk space is back above store.min_free_mb: device data is accepted again"
            ),
            _ => {}
        }
        was_low = low.is_some();
        for job in jobs {
            match job {
                Job::Points {
                    op,
                    queue,
                    reply,
                    durable,
                } => {
                    if behind.is_some() {
                        let _ = reply.send(Err(StoreError::DiskFull {
                            path: db.path().to_path_buf(),
                        }));
                        continue;
                    }
                    if let Some((free_mib, need_mib)) = low {
                        let _ = reply.send(Err(StoreError::DiskLow {
                            path: db.path().to_path_buf(),
                            free_mib,
                            need_mib,
                        }));
                        continue;
                    }
                    // The sequence number is taken here, in log order, and written into the
                    // record, so that replay re-creates exactly the same queue keys.
                    let seq = queue.as_ref().map(|_| db.take_seq());
                    op.encode_with(seq.zip(queue.as_ref()), &mut buf);
                    logged.push((op, queue, seq, reply, durable));
                }
                Job::Checkpoint(reply) => checkpoints.push(reply),
                Job::Commit(reply) => commits.push(reply),
                Job::Wake => {}
                // A reader of the segments from here on reads sled for what came before, so
                // points waiting in memory go into sled first.
                Job::Pin(id, reply) => {
                    let _ = reply.send(db.settle_all().and_then(|()| wal.rotate_pinned(Some(id))));
                }
                Job::Rotate(reply) => {
                    let _ = reply.send(db.settle_all().and_then(|()| wal.rotate_pinned(None)));
                }
            }
        }
        took.jobs = t0.elapsed();
        // Logged registry writes are applied already; the log makes them durable.
        let mut logged_writes = db.logged.drain_into(&mut buf);
        // Log before applying: a write the log refused (a full disk) is answered with an error
        // and must not reach sled, or a device told "not stored" would find it stored and its
        // retry would store it twice.
        if !buf.is_empty()
            && let Err(e) = wal.append(&mut buf)
        {
            tracing::error!(error = %e, "cannot append to the write-ahead log; the writes are refused");
            for (_, _, _, reply, _) in logged.drain(..) {
                let _ = reply.send(Err(StoreError::Flush(e.to_string())));
            }
            if let Some((first, last)) = logged_writes.take() {
                // They are in sled already: a flush makes them durable without the log.
                let (tx, rx) = oneshot::channel();
                let _ = committer.send(ToCommitter::Flush(vec![tx]));
                let flushed = rx.blocking_recv().unwrap_or(Err(StoreError::Closed));
                match flushed {
                    Ok(()) => db.logged.marks().durable(last),
                    Err(f) => db
                        .logged
                        .marks()
                        .failed(first, last, format!("{e}; then {f}")),
                }
            }
        }
        took.log = t0.elapsed();
        // Waiting points remember the segment that logged them (see `Wal::begin_checkpoint`).
        db.logging_to(wal.seq());
        for (op, queue, seq, reply, durable) in logged {
            if let (Some(seq), Some(q)) = (seq, &queue) {
                db.stage_queue(&mut queued, seq, q);
            }
            let res = op.stage(db, &mut staged);
            let values = op.points.iter().map(|(_, v)| v.len()).sum::<usize>();
            done.push((reply, res, durable, values));
        }
        // Queue entries first: bookkeeping below may enqueue too, under later sequence numbers,
        // and a queue's reader must never see a later entry before an earlier one.
        let queue_applied = db.apply_queue(queued);
        let pending = std::mem::take(&mut *later.lock().unwrap_or_else(|p| p.into_inner()));
        for f in pending {
            f(db);
        }
        took.stage = t0.elapsed();
        // One atomic sled batch for the whole group: per-batch overhead dominates small writes.
        let mut applied = queue_applied.and(db.apply_points(staged));
        took.apply = t0.elapsed();
        if applied.is_ok()
            && let Some((_, Err(e), _, _)) = done.iter().find(|(_, r, _, _)| r.is_err())
        {
            applied = Err(StoreError::Flush(e.to_string()));
        }
        if applied.is_ok()
            && behind.is_none()
            && let Some(e) = db.pending_failure()
        {
            // A reader wrote a device's waiting points and sled refused them.
            applied = Err(StoreError::Flush(e));
        }
        if let Err(e) = &applied {
            // sled could not take writes the log already holds (typically a full disk). sled
            // may keep part of them and write it out later, so refusing them now could store
            // what a device was told was not stored. The log is the durability point: they are
            // acknowledged once it is synced, and sled gets them from the log at the next
            // start. Until then no checkpoint may drop the log, and new data is refused.
            if behind.is_none() {
                tracing::error!(error = %e, "the store cannot write (is the disk full?): device data is refused and the write-ahead log is kept until corral restarts with free space; nothing acknowledged is lost");
            }
            behind = Some(e.to_string());
        }
        let done_len = done.len();
        let done: Vec<_> = done
            .into_iter()
            .map(|(reply, res, durable, values)| match &applied {
                Ok(()) => (reply, res, durable),
                Err(_) => (reply, Ok(values), durable),
            })
            .collect();
        let mut waiting = Vec::new();
        for (reply, res, durable) in done {
            if durable {
                waiting.push((reply, res));
            } else {
                let _ = reply.send(res);
            }
        }
        if (!waiting.is_empty() || logged_writes.is_some())
            && batches
                .send(Batch {
                    file: wal.current(),
                    waiting,
                    logged: logged_writes,
                })
                .is_err()
        {
            return;
        }
        if !commits.is_empty() {
            // The bookkeeping above is applied, so the flush covers it.
            let _ = committer.send(ToCommitter::Flush(commits));
        }
        if let Some(e) = &behind {
            for reply in checkpoints.drain(..) {
                let _ = reply.send(Err(StoreError::Flush(format!(
                    "no checkpoint while the store is behind its log ({e})"
                ))));
            }
        }
        took.report(t0.elapsed(), done_len);
        if behind.is_none() && (!checkpoints.is_empty() || wal.bytes >= wal.checkpoint_bytes) {
            let started = Instant::now();
            // One asked for (a clean stop, a test) leaves nothing to replay: every waiting
            // point goes to sled first. One that the log's size calls for keeps the segments
            // of points still waiting (see `Wal::begin_checkpoint`).
            let begun = if checkpoints.is_empty() {
                Ok(())
            } else {
                db.settle_all()
            }
            .and_then(|()| wal.begin_checkpoint(db));
            if started.elapsed() >= GroupTimes::SLOW {
                tracing::warn!(
                    took_ms = started.elapsed().as_millis(),
                    "a store checkpoint took long; device messages waited behind it"
                );
            }
            match begun {
                Ok(tail) => {
                    // The sled flush and the segments' deletion are the committer's; the
                    // replies wait for them.
                    let _ = committer.send(ToCommitter::Checkpoint(tail, checkpoints));
                }
                Err(e) => {
                    tracing::error!(error = %e, "checkpoint failed; the log keeps growing until one succeeds");
                    for reply in checkpoints {
                        let _ = reply.send(Err(StoreError::Flush(e.to_string())));
                    }
                }
            }
        }
    }
    // Senders are gone (shutdown): leave sled complete so the next start replays nothing.
    if behind.is_some() {
        return;
    }
    if let Err(e) = wal.checkpoint(db) {
        tracing::warn!(error = %e, "final checkpoint failed; the log will be replayed at next start");
    }
}

/// When each part of a writer group ended, from the group's start: a group that holds device
/// data for long is logged with where the time went.
#[derive(Default)]
struct GroupTimes {
    jobs: Duration,
    log: Duration,
    stage: Duration,
    apply: Duration,
}

impl GroupTimes {
    /// A group this long delays every device message behind it by as much.
    const SLOW: Duration = Duration::from_millis(500);

    fn report(&self, total: Duration, messages: usize) {
        if total >= Self::SLOW {
            let ms = |d: Duration| d.as_millis();
            tracing::warn!(
                total_ms = ms(total),
                messages,
                read_jobs_ms = ms(self.jobs),
                log_append_ms = ms(self.log.saturating_sub(self.jobs)),
                stage_ms = ms(self.stage.saturating_sub(self.log)),
                apply_ms = ms(self.apply.saturating_sub(self.stage)),
                after_ms = ms(total.saturating_sub(self.apply)),
                "a store writer group took long; device messages waited behind it"
            );
        }
    }
}

/// Work for the committer thread.
enum ToCommitter {
    /// Commits waiting for a sled flush.
    Flush(Vec<Committed>),
    /// A checkpoint's flush and deletion of the older segments, and who waits for it.
    Checkpoint(super::wal::CheckpointTail, Vec<Committed>),
}

/// A commit's reply: answered once a sled flush that began after the request was applied.
type Committed = oneshot::Sender<Result<()>>;

/// Flushes sled for the commits and checkpoints queued behind the writer: one flush answers
/// every commit waiting when it starts, and lets each checkpoint drop its older segments.
fn commit_loop(
    db: &Db,
    rx: std_mpsc::Receiver<ToCommitter>,
    flushes: &prometheus_client::metrics::counter::Counter,
) {
    while let Ok(first) = rx.recv() {
        let mut waiting = Vec::new();
        let mut tails = Vec::new();
        let mut take = |job| match job {
            ToCommitter::Flush(w) => waiting.extend(w),
            ToCommitter::Checkpoint(tail, w) => tails.push((tail, w)),
        };
        take(first);
        while let Ok(more) = rx.try_recv() {
            take(more);
        }
        let res = db.flush_now();
        flushes.inc();
        // In the order they were begun: each deletes only segments older than its own start.
        for (tail, replies) in tails {
            let done = tail.finish(shared(&res));
            if let Err(e) = &done {
                tracing::error!(error = %e, "checkpoint failed; the log keeps growing until one succeeds");
            }
            for reply in replies {
                let _ = reply.send(shared(&done));
            }
        }
        for reply in waiting {
            let _ = reply.send(shared(&res));
        }
    }
}

/// One outcome told to several waiters (a store error is not `Clone`).
fn shared(res: &Result<()>) -> Result<()> {
    res.as_ref()
        .map(drop)
        .map_err(|e| StoreError::Flush(e.to_string()))
}

fn flush_loop(rx: std_mpsc::Receiver<Batch>, delay: Duration, m: &Metrics, db: &Db) {
    while let Ok(first) = rx.recv() {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut batches = vec![first];
        // Everything already written is covered by the sync that starts now.
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let started = Instant::now();
        let mut synced: Vec<*const File> = Vec::new();
        let mut result: std::result::Result<(), String> = Ok(());
        for b in &batches {
            let ptr = Arc::as_ptr(&b.file);
            if !synced.contains(&ptr) {
                synced.push(ptr);
                if let Err(e) = b.file.sync_data() {
                    result = Err(e.to_string());
                }
            }
        }
        let n: usize = batches.iter().map(|b| b.waiting.len()).sum();
        m.store_flushes.inc();
        m.store_flush_seconds
            .observe(started.elapsed().as_secs_f64());
        m.store_flush_batch.observe(n as f64);
        if let Err(e) = &result {
            tracing::error!(error = %e, "log sync failed; writers are told their data is not durable");
        }
        for b in batches {
            if let Some((first, last)) = b.logged {
                match &result {
                    Ok(()) => db.logged.marks().durable(last),
                    Err(e) => db.logged.marks().failed(first, last, e.clone()),
                }
            }
            for (reply, res) in b.waiting {
                let out = match (&result, res) {
                    (Ok(()), r) => r,
                    (Err(e), _) => Err(StoreError::Flush(e.clone())),
                };
                let _ = reply.send(out);
            }
        }
    }
}
