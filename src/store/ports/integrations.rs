//! The integration area's storage: integrations, their durable delivery queues and dead
//! letters.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{
    Cursor, DeadLetter, Durable, Enqueue, Fut, Moved, Page, QueueEntry, QueueStats, Result,
};
use crate::model::{Integration, IntegrationId, Millis};

pub trait IntegrationStore: Durable {
    fn put_integration<'a>(&'a self, i: &'a Integration) -> Fut<'a, ()>;
    fn get_integration<'a>(&'a self, id: IntegrationId) -> Fut<'a, Option<Integration>>;
    fn list_integrations<'a>(&'a self) -> Fut<'a, Vec<Integration>>;
    /// Deletes an integration with its queue and dead letters, durably.
    fn delete_integration(&self, id: IntegrationId) -> BoxFuture<'_, Result<()>>;

    /// Adds entries to integration queues in order with device data, without waiting;
    /// durable at the next commit.
    fn enqueue_later(&self, q: Enqueue);
    /// Live counters of an integration's queue (`None` for an unknown integration).
    fn queue_stats(&self, id: IntegrationId) -> Option<Arc<QueueStats>>;
    /// Up to `max` entries from the head of the queue, oldest first.
    fn queue_head<'a>(&'a self, id: IntegrationId, max: usize) -> Fut<'a, Vec<QueueEntry>>;
    /// When the oldest entry was queued.
    fn queue_oldest<'a>(&'a self, id: IntegrationId) -> Fut<'a, Option<Millis>>;
    /// Removes delivered entries.
    fn queue_remove<'a>(&'a self, id: IntegrationId, seqs: &'a [u64]) -> Fut<'a, Moved>;
    /// Drops the oldest entries while the queue is over `max_bytes` (and older than
    /// `min_enqueued_at`).
    fn queue_drop_oldest<'a>(
        &'a self,
        id: IntegrationId,
        max_bytes: u64,
        min_enqueued_at: Millis,
    ) -> Fut<'a, Moved>;
    /// Moves entries to the dead letters with `reason`, keeping at most `dead_max`.
    fn dead_letter<'a>(
        &'a self,
        id: IntegrationId,
        entries: &'a [QueueEntry],
        reason: &'a str,
        dead_max: u64,
    ) -> Fut<'a, u64>;
    fn dead_letters<'a>(
        &'a self,
        id: IntegrationId,
        after: Option<&'a Cursor>,
        limit: usize,
    ) -> Fut<'a, Page<DeadLetter>>;
    /// Moves the dead letters back to the tail of the queue, durably.
    fn requeue_dead(&self, id: IntegrationId) -> BoxFuture<'_, Result<Moved>>;
    /// Deletes the dead letters; returns how many there were.
    fn dead_delete<'a>(&'a self, id: IntegrationId) -> Fut<'a, u64>;
}
