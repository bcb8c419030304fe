//! The integration area's storage: integrations, their durable delivery queues and dead
//! letters.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{Cursor, DeadLetter, Durable, Enqueue, Moved, Page, QueueEntry, QueueStats, Result};
use crate::model::{Integration, IntegrationId, Millis};

pub trait IntegrationStore: Durable {
    fn put_integration(&self, i: &Integration) -> Result<()>;
    fn get_integration(&self, id: IntegrationId) -> Result<Option<Integration>>;
    fn list_integrations(&self) -> Result<Vec<Integration>>;
    /// Deletes an integration with its queue and dead letters, durably.
    fn delete_integration(&self, id: IntegrationId) -> BoxFuture<'_, Result<()>>;

    /// Adds entries to integration queues in order with device data, without waiting;
    /// durable at the next commit.
    fn enqueue_later(&self, q: Enqueue);
    /// Live counters of an integration's queue (`None` for an unknown integration).
    fn queue_stats(&self, id: IntegrationId) -> Option<Arc<QueueStats>>;
    /// Up to `max` entries from the head of the queue, oldest first.
    fn queue_head(&self, id: IntegrationId, max: usize) -> Result<Vec<QueueEntry>>;
    /// When the oldest entry was queued.
    fn queue_oldest(&self, id: IntegrationId) -> Result<Option<Millis>>;
    /// Removes delivered entries.
    fn queue_remove(&self, id: IntegrationId, seqs: &[u64]) -> Result<Moved>;
    /// Drops the oldest entries while the queue is over `max_bytes` (and older than
    /// `min_enqueued_at`).
    fn queue_drop_oldest(
        &self,
        id: IntegrationId,
        max_bytes: u64,
        min_enqueued_at: Millis,
    ) -> Result<Moved>;
    /// Moves entries to the dead letters with `reason`, keeping at most `dead_max`.
    fn dead_letter(
        &self,
        id: IntegrationId,
        entries: &[QueueEntry],
        reason: &str,
        dead_max: u64,
    ) -> Result<u64>;
    fn dead_letters(
        &self,
        id: IntegrationId,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<DeadLetter>>;
    /// Moves the dead letters back to the tail of the queue, durably.
    fn requeue_dead(&self, id: IntegrationId) -> BoxFuture<'_, Result<Moved>>;
    /// Deletes the dead letters; returns how many there were.
    fn dead_delete(&self, id: IntegrationId) -> Result<u64>;
}
