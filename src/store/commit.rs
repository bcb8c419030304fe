//! The write pipeline and group commit (DESIGN.md §3). Device writes are applied by one writer
//! thread and made durable by one flusher thread:
//!
//! ```text
//! callers ──jobs──▶ writer thread (apply to sled) ──applied batches──▶ flusher thread (fsync) ──▶ replies
//! ```
//!
//! Callers never block a runtime thread on sled: they queue a job and await its reply. The
//! flusher drains every batch applied so far before each flush, so one fsync covers everything
//! that was waiting, and a reply says "durable" only for writes applied before that flush
//! started. While one flush runs, the writer keeps applying the next batch.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{Db, Result, StoreError};
use crate::metrics::Metrics;

/// Completes a durable job once the flush covering it has finished.
type Finish = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// A write to apply on the writer thread; returns its completion if it waits for durability.
type Job = Box<dyn FnOnce(&Db) -> Option<Finish> + Send>;

/// Jobs queued before callers feel backpressure.
const QUEUE: usize = 16_384;
/// Jobs applied before the batch is handed to the flusher, bounding latency under load.
const MAX_BATCH: usize = 4_096;

pub(super) struct Pipeline {
    tx: mpsc::Sender<Job>,
}

impl Pipeline {
    pub(super) fn spawn(
        db: Arc<Db>,
        delay: Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let (applied_tx, applied_rx) = std_mpsc::channel::<Vec<Finish>>();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(&writer_db, rx, applied_tx))?;
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flush_loop(&db, applied_rx, delay, &metrics))?;
        Ok(Self { tx })
    }

    /// Applies `write` on the writer thread and returns its result once it is on disk.
    pub(super) async fn durable<R: Send + 'static>(
        &self,
        write: impl FnOnce(&Db) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let res = write(db);
            Some(Box::new(move |flushed: std::result::Result<(), String>| {
                let out = match (res, flushed) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(StoreError::Flush(e)),
                };
                let _ = tx.send(out);
            }))
        });
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Applies `write` on the writer thread and returns once applied; it becomes durable with
    /// the next flush (for QoS 0 data, which has no acknowledgement to hold back).
    pub(super) async fn applied<R: Send + 'static>(
        &self,
        write: impl FnOnce(&Db) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = tx.send(write(db));
            None
        });
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn write_loop(db: &Db, mut rx: mpsc::Receiver<Job>, applied: std_mpsc::Sender<Vec<Finish>>) {
    while let Some(first) = rx.blocking_recv() {
        let mut finishes = Vec::new();
        finishes.extend(first(db));
        let mut n = 1;
        while n < MAX_BATCH {
            let Ok(job) = rx.try_recv() else { break };
            finishes.extend(job(db));
            n += 1;
        }
        if !finishes.is_empty() && applied.send(finishes).is_err() {
            return;
        }
    }
}

fn flush_loop(db: &Db, rx: std_mpsc::Receiver<Vec<Finish>>, delay: Duration, m: &Metrics) {
    while let Ok(first) = rx.recv() {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut waiting = first;
        // Everything already applied is covered by the flush that starts now.
        while let Ok(more) = rx.try_recv() {
            waiting.extend(more);
        }
        let started = Instant::now();
        let res = db.flush().map(drop).map_err(|e| e.to_string());
        m.store_flushes.inc();
        m.store_flush_seconds
            .observe(started.elapsed().as_secs_f64());
        m.store_flush_batch.observe(waiting.len() as f64);
        if let Err(e) = &res {
            tracing::error!(error = %e, "store flush failed; writers are told their data is not durable");
        }
        for finish in waiting {
            finish(res.clone());
        }
    }
}
