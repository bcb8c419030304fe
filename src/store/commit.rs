//! Group commit: one task flushes sled for every writer waiting at that moment, so durable
//! acknowledgements cost one fsync per batch rather than one per message (DESIGN.md §3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{Result, StoreError};
use crate::metrics::Metrics;

type Waiter = oneshot::Sender<std::result::Result<(), String>>;

pub(super) struct Committer {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl Committer {
    pub(super) fn spawn(db: sled::Db, delay: Duration, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(db, rx, delay, metrics));
        Self { tx }
    }

    /// Resolves once a flush that started after this call has completed. A writer calls it
    /// after its write, so the flush covers the write.
    pub(super) async fn commit(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Sled(sled::Error::ReportableBug(e))),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

async fn run(
    db: sled::Db,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    delay: Duration,
    m: Arc<Metrics>,
) {
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        waiters.push(first);
        // Everything already queued was written before it was queued, so this flush covers it.
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let started = Instant::now();
        let res = db.flush_async().await.map(drop).map_err(|e| e.to_string());
        m.store_flushes.inc();
        m.store_flush_seconds
            .observe(started.elapsed().as_secs_f64());
        m.store_flush_batch.observe(waiters.len() as f64);
        if let Err(e) = &res {
            tracing::error!(error = %e, "store flush failed; writers are told their data is not durable");
        }
        for w in waiters.drain(..) {
            let _ = w.send(res.clone());
        }
    }
}
