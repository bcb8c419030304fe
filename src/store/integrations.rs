//! Integrations and their durable queues. `integrations` holds `id → record`; `int_queue` holds
//! `integration ‖ seq → entry` (the queue, in sequence order) and `integration → head` (every
//! entry below `head` has left the queue: delivered, dead-lettered or dropped); `int_dead` holds
//! `integration ‖ seq → dead letter`. Sequence numbers come from one global counter, assigned on
//! the writer thread in the order entries are applied, so a queue only ever grows at its tail
//! and its reader never sees a later entry before an earlier one.
//!
//! Telemetry entries are logged in the write-ahead log with the points they describe (record
//! type 2, see `wal`); replay re-inserts them unless they are below their queue's `head`. Other
//! entries are plain sled writes made on the writer thread, durable at the next `commit`.
//! What goes into an entry and who reads it is the integrations service's business.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::codec::{decode_json, encode_json};
use super::{Db, Result, StoreError};
use crate::model::{Integration, IntegrationId, Millis, now_ms};

/// Entries to add to queues: the same event (a JSON object without its `id`) for each
/// integration listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueue {
    pub integrations: Vec<IntegrationId>,
    pub event: Vec<u8>,
}

/// One queued entry as the delivery side reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    pub seq: u64,
    /// The idempotency key: derived from the sequence number it was first queued under, and
    /// kept when a dead letter is replayed.
    pub key: String,
    pub enqueued_at: Millis,
    /// The event, a JSON object without `id`.
    pub event: Vec<u8>,
    /// Bytes the entry occupies (key and value), as counted against `max_bytes`.
    pub size: u64,
}

/// A dead letter: an entry the receiver refused.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub entry: QueueEntry,
    pub dead_at: Millis,
    pub reason: String,
}

/// Live counters of one queue, kept in memory so that enforcing caps and reporting status cost
/// no scans. Initialised from the store on open.
#[derive(Default)]
pub struct QueueStats {
    pub bytes: AtomicU64,
    pub depth: AtomicU64,
    pub dead: AtomicU64,
    pub dead_bytes: AtomicU64,
    /// Woken on every enqueue; the delivery task of the queue waits on it.
    pub notify: tokio::sync::Notify,
}

/// What `requeue_dead` and `drop_oldest` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub entries: u64,
    pub bytes: u64,
}

const SEQ_KEY: &[u8] = b"integration_queue_seq";

pub(super) fn key_for(seq: u64) -> String {
    format!("{seq:016x}")
}

fn qkey(id: IntegrationId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(id.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(16..24)?.try_into().ok()?))
}

fn encode_entry(key: &str, enqueued_at: Millis, event: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + key.len() + event.len());
    v.extend_from_slice(&enqueued_at.to_be_bytes());
    super::codec::push_str(&mut v, key);
    v.extend_from_slice(event);
    v
}

fn decode_entry(seq: u64, v: &[u8]) -> Result<QueueEntry> {
    let bad = || StoreError::Corrupt {
        tree: "int_queue",
        detail: "bad entry".into(),
    };
    let enqueued_at =
        i64::from_be_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let mut pos = 8;
    let key = super::codec::read_str(v, &mut pos)
        .ok_or_else(bad)?
        .to_string();
    Ok(QueueEntry {
        seq,
        key,
        enqueued_at,
        event: v[pos..].to_vec(),
        size: 24 + v.len() as u64,
    })
}

/// Queue entries of one group of writes, applied as one batch.
#[derive(Default)]
pub(super) struct StagedQueue {
    batch: sled::Batch,
    added: Vec<(IntegrationId, u64)>,
    max_seq: Option<u64>,
}

/// The queue state the store keeps in memory: the sequence counter and per-queue counters.
#[derive(Default)]
pub(super) struct Queues {
    /// The next sequence number to assign.
    next_seq: AtomicU64,
    stats: RwLock<HashMap<IntegrationId, Arc<QueueStats>>>,
}

impl Db {
    fn queues(&self) -> &Queues {
        &self.queues
    }

    /// Builds the in-memory counters from the trees (once, at open, before replay).
    pub(super) fn init_queues(&self) -> Result<()> {
        let t = self.trees();
        let mut next = match t.meta.get(SEQ_KEY)? {
            Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
            None => 0,
        };
        let mut stats: HashMap<IntegrationId, Arc<QueueStats>> = HashMap::new();
        for kv in t.integrations.iter() {
            let (k, _) = kv?;
            if let Some(id) = IntegrationId::from_slice(&k) {
                stats.insert(id, Arc::default());
            }
        }
        for kv in t.int_queue.iter() {
            let (k, v) = kv?;
            let Some(id) = k.get(..16).and_then(IntegrationId::from_slice) else {
                continue;
            };
            match seq_of(&k) {
                Some(seq) => {
                    next = next.max(seq + 1);
                    if let Some(s) = stats.get(&id) {
                        s.bytes.fetch_add(24 + v.len() as u64, Ordering::Relaxed);
                        s.depth.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The head mark of a queue.
                None => next = next.max(read_u64(&v)),
            }
        }
        for kv in t.int_dead.iter() {
            let (k, v) = kv?;
            let (Some(id), Some(seq)) =
                (k.get(..16).and_then(IntegrationId::from_slice), seq_of(&k))
            else {
                continue;
            };
            next = next.max(seq + 1);
            if let Some(s) = stats.get(&id) {
                s.dead.fetch_add(1, Ordering::Relaxed);
                s.dead_bytes
                    .fetch_add(24 + v.len() as u64, Ordering::Relaxed);
            }
        }
        self.queues().next_seq.store(next, Ordering::SeqCst);
        *self
            .queues()
            .stats
            .write()
            .unwrap_or_else(|p| p.into_inner()) = stats;
        Ok(())
    }

    /// The counters of an integration's queue; `None` once it is deleted.
    pub fn queue_stats(&self, id: IntegrationId) -> Option<Arc<QueueStats>> {
        self.queues()
            .stats
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Takes the next sequence number (writer thread and replay only).
    pub(super) fn take_seq(&self) -> u64 {
        self.queues().next_seq.fetch_add(1, Ordering::SeqCst)
    }

    /// Adds `q` to the staged queue batch under `seq`, with the key derived from it.
    pub(super) fn stage_queue(&self, staged: &mut StagedQueue, seq: u64, q: &Enqueue) {
        self.stage_entry(staged, seq, &key_for(seq), now_ms(), q);
    }

    fn stage_entry(&self, staged: &mut StagedQueue, seq: u64, key: &str, at: Millis, q: &Enqueue) {
        let value = encode_entry(key, at, &q.event);
        // A deleted integration gets nothing more; deletion runs on the writer thread too, so
        // this check and the batch that follows cannot interleave with it.
        let stats = self
            .queues()
            .stats
            .read()
            .unwrap_or_else(|p| p.into_inner());
        for id in q.integrations.iter().filter(|id| stats.contains_key(id)) {
            staged.batch.insert(&qkey(*id, seq)[..], value.as_slice());
            staged.added.push((*id, 24 + value.len() as u64));
        }
        staged.max_seq = Some(staged.max_seq.map_or(seq, |m| m.max(seq)));
    }

    /// Applies staged entries, counts them and wakes their delivery tasks.
    pub(super) fn apply_queue(&self, staged: StagedQueue) -> Result<()> {
        let Some(max) = staged.max_seq else {
            return Ok(());
        };
        let t = self.trees();
        t.int_queue.apply_batch(staged.batch)?;
        // Keys must never be reused, even once every queue is empty and the store reopens.
        t.meta.insert(SEQ_KEY, &(max + 1).to_be_bytes())?;
        self.count_added(&staged.added);
        Ok(())
    }

    fn count_added(&self, added: &[(IntegrationId, u64)]) {
        let stats = self
            .queues()
            .stats
            .read()
            .unwrap_or_else(|p| p.into_inner());
        for (id, bytes) in added {
            if let Some(s) = stats.get(id) {
                s.bytes.fetch_add(*bytes, Ordering::Relaxed);
                s.depth.fetch_add(1, Ordering::Relaxed);
                s.notify.notify_one();
            }
        }
    }

    /// Enqueues now (on the writer thread, through `Store::enqueue_later`): not logged, durable
    /// at the next `commit`.
    pub(super) fn enqueue_now(&self, q: &Enqueue) -> Result<()> {
        let mut staged = StagedQueue::default();
        let seq = self.take_seq();
        self.stage_queue(&mut staged, seq, q);
        self.apply_queue(staged)
    }

    /// Replays one logged entry: skipped for a deleted integration or one whose queue has
    /// already moved past it.
    pub(super) fn replay_queue(&self, seq: u64, q: &Enqueue) -> Result<()> {
        let t = self.trees();
        let n = &self.queues().next_seq;
        n.fetch_max(seq + 1, Ordering::SeqCst);
        let value = encode_entry(&key_for(seq), now_ms(), &q.event);
        let mut added = Vec::new();
        for id in &q.integrations {
            if t.integrations.get(id.as_bytes())?.is_none() || seq < self.queue_head_mark(*id)? {
                continue;
            }
            let k = qkey(*id, seq);
            if t.int_queue.insert(&k[..], value.as_slice())?.is_none() {
                added.push((*id, 24 + value.len() as u64));
            }
        }
        t.meta
            .insert(SEQ_KEY, &n.load(Ordering::SeqCst).to_be_bytes())?;
        self.count_added(&added);
        Ok(())
    }

    fn queue_head_mark(&self, id: IntegrationId) -> Result<u64> {
        Ok(self
            .trees()
            .int_queue
            .get(id.as_bytes())?
            .map_or(0, |v| read_u64(&v)))
    }

    pub fn put_integration(&self, i: &Integration) -> Result<()> {
        self.trees()
            .integrations
            .insert(i.id.as_bytes(), encode_json(i))?;
        self.queues()
            .stats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(i.id)
            .or_default();
        Ok(())
    }

    pub fn get_integration(&self, id: IntegrationId) -> Result<Option<Integration>> {
        match self.trees().integrations.get(id.as_bytes())? {
            Some(v) => decode_json("integrations", &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every integration, oldest first.
    pub fn list_integrations(&self) -> Result<Vec<Integration>> {
        self.trees()
            .integrations
            .iter()
            .map(|kv| decode_json("integrations", &kv?.1))
            .collect()
    }

    /// Deletes an integration with its queue and dead letters (writer thread only).
    pub(super) fn remove_integration(&self, id: IntegrationId) -> Result<()> {
        let t = self.trees();
        t.integrations.remove(id.as_bytes())?;
        let stats = self
            .queues()
            .stats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        for tree in [&t.int_queue, &t.int_dead] {
            let mut batch = sled::Batch::default();
            for k in tree.scan_prefix(id.as_bytes()).keys() {
                batch.remove(k?);
            }
            tree.apply_batch(batch)?;
        }
        if let Some(s) = stats {
            // Wakes the delivery task, which then finds its queue gone.
            s.notify.notify_one();
        }
        Ok(())
    }

    /// Up to `max` entries from the head of a queue.
    pub fn queue_head(&self, id: IntegrationId, max: usize) -> Result<Vec<QueueEntry>> {
        let mut out = Vec::new();
        for kv in self.trees().int_queue.scan_prefix(id.as_bytes()) {
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else {
                continue; // the head mark
            };
            out.push(decode_entry(seq, &v)?);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// When the oldest entry of a queue was queued.
    pub fn queue_oldest(&self, id: IntegrationId) -> Result<Option<Millis>> {
        Ok(self.queue_head(id, 1)?.first().map(|e| e.enqueued_at))
    }

    /// Removes entries from a queue (delivered, or moved out) and moves its head mark past
    /// them. Returns what was removed; entries already gone count for nothing, so two removers
    /// never count one entry twice.
    pub fn queue_remove(&self, id: IntegrationId, seqs: &[u64]) -> Result<Moved> {
        let t = self.trees();
        let mut moved = Moved::default();
        for seq in seqs {
            if let Some(old) = t.int_queue.remove(&qkey(id, *seq)[..])? {
                moved.entries += 1;
                moved.bytes += 24 + old.len() as u64;
            }
        }
        if let Some(last) = seqs.iter().max() {
            // Written after the removals: a crash in between replays some delivered entries
            // (delivered again, same key) rather than losing undelivered ones.
            let mark = self.queue_head_mark(id)?.max(last + 1);
            if t.integrations.get(id.as_bytes())?.is_some() {
                t.int_queue.insert(id.as_bytes(), &mark.to_be_bytes())?;
            }
        }
        if let Some(s) = self.queue_stats(id) {
            s.bytes.fetch_sub(
                moved.bytes.min(s.bytes.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            s.depth.fetch_sub(
                moved.entries.min(s.depth.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        Ok(moved)
    }

    /// Drops entries from the head of a queue until it holds at most `max_bytes` and nothing
    /// queued before `min_enqueued_at`.
    pub fn queue_drop_oldest(
        &self,
        id: IntegrationId,
        max_bytes: u64,
        min_enqueued_at: Millis,
    ) -> Result<Moved> {
        let Some(stats) = self.queue_stats(id) else {
            return Ok(Moved::default());
        };
        let mut total = Moved::default();
        loop {
            let over = stats
                .bytes
                .load(Ordering::Relaxed)
                .saturating_sub(max_bytes);
            let head = self.queue_head(id, 256)?;
            let mut seqs = Vec::new();
            let mut freed = 0;
            for e in &head {
                if freed >= over && e.enqueued_at >= min_enqueued_at {
                    break;
                }
                freed += e.size;
                seqs.push(e.seq);
            }
            if seqs.is_empty() {
                return Ok(total);
            }
            let m = self.queue_remove(id, &seqs)?;
            total.entries += m.entries;
            total.bytes += m.bytes;
            if seqs.len() < head.len() || head.len() < 256 {
                return Ok(total);
            }
        }
    }

    /// Moves entries to the dead-letter store, dropping its oldest letters past `dead_max`.
    /// Returns how many old letters were dropped.
    pub fn dead_letter(
        &self,
        id: IntegrationId,
        entries: &[QueueEntry],
        reason: &str,
        dead_max: u64,
    ) -> Result<u64> {
        let t = self.trees();
        let stats = self.queue_stats(id);
        let now = now_ms();
        for e in entries {
            let mut v = Vec::with_capacity(10 + reason.len() + e.event.len() + e.key.len());
            v.extend_from_slice(&now.to_be_bytes());
            let r = &reason.as_bytes()[..reason.len().min(1024)];
            v.extend_from_slice(&(r.len() as u16).to_be_bytes());
            v.extend_from_slice(r);
            v.extend_from_slice(&encode_entry(&e.key, e.enqueued_at, &e.event));
            if t.int_dead
                .insert(&qkey(id, e.seq)[..], v.as_slice())?
                .is_none()
                && let Some(s) = &stats
            {
                s.dead.fetch_add(1, Ordering::Relaxed);
                s.dead_bytes
                    .fetch_add(24 + v.len() as u64, Ordering::Relaxed);
            }
        }
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        self.queue_remove(id, &seqs)?;
        let mut dropped = 0;
        if let Some(s) = &stats {
            let over = s.dead.load(Ordering::Relaxed).saturating_sub(dead_max);
            if over > 0 {
                for k in t
                    .int_dead
                    .scan_prefix(id.as_bytes())
                    .keys()
                    .take(over as usize)
                {
                    if let Some(old) = t.int_dead.remove(k?)? {
                        dropped += 1;
                        s.dead.fetch_sub(1, Ordering::Relaxed);
                        s.dead_bytes.fetch_sub(
                            (24 + old.len() as u64).min(s.dead_bytes.load(Ordering::Relaxed)),
                            Ordering::Relaxed,
                        );
                    }
                }
            }
        }
        Ok(dropped)
    }

    /// Dead letters of an integration in the order they were queued, `limit` at a time: the
    /// page after `after` (a cursor this listing handed out), with the next page's cursor.
    pub fn dead_letters(
        &self,
        id: IntegrationId,
        after: Option<&super::Cursor>,
        limit: usize,
    ) -> Result<super::Page<DeadLetter>> {
        let after: Option<u64> = super::cursor_id(after)?;
        let t = self.trees();
        let start = qkey(id, after.map_or(0, |a| a.saturating_add(1)));
        let end = qkey(id, u64::MAX);
        let mut items: Vec<DeadLetter> = Vec::new();
        for kv in t.int_dead.range(&start[..]..=&end[..]) {
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            if items.len() == limit {
                let next = items.last().map(|d| super::id_cursor(d.entry.seq));
                return Ok(super::Page {
                    items,
                    next_cursor: next,
                });
            }
            items.push(decode_dead(seq, &v)?);
        }
        Ok(super::Page {
            items,
            next_cursor: None,
        })
    }

    /// Deletes every dead letter of an integration; returns how many.
    pub fn dead_delete(&self, id: IntegrationId) -> Result<u64> {
        let t = self.trees();
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in t.int_dead.scan_prefix(id.as_bytes()).keys() {
            batch.remove(k?);
            n += 1;
        }
        t.int_dead.apply_batch(batch)?;
        if let Some(s) = self.queue_stats(id) {
            s.dead.store(0, Ordering::Relaxed);
            s.dead_bytes.store(0, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// Moves every dead letter back to the tail of the queue, in their original order, under
    /// new sequence numbers but with their original idempotency keys (writer thread only).
    pub(super) fn requeue_dead(&self, id: IntegrationId) -> Result<Moved> {
        let t = self.trees();
        let mut staged = StagedQueue::default();
        let mut remove = sled::Batch::default();
        let mut moved = Moved::default();
        for kv in t.int_dead.scan_prefix(id.as_bytes()) {
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            let d = decode_dead(seq, &v)?;
            let q = Enqueue {
                integrations: vec![id],
                event: d.entry.event,
            };
            let new_seq = self.take_seq();
            self.stage_entry(&mut staged, new_seq, &d.entry.key, now_ms(), &q);
            remove.remove(k);
            moved.entries += 1;
            moved.bytes += 24 + v.len() as u64;
        }
        self.apply_queue(staged)?;
        t.int_dead.apply_batch(remove)?;
        if let Some(s) = self.queue_stats(id) {
            s.dead.store(0, Ordering::Relaxed);
            s.dead_bytes.store(0, Ordering::Relaxed);
        }
        Ok(moved)
    }
}

fn decode_dead(seq: u64, v: &[u8]) -> Result<DeadLetter> {
    let bad = || StoreError::Corrupt {
        tree: "int_dead",
        detail: "bad dead letter".into(),
    };
    let dead_at = i64::from_be_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let rlen = u16::from_be_bytes(
        v.get(8..10)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let reason = String::from_utf8_lossy(v.get(10..10 + rlen).ok_or_else(bad)?).into_owned();
    let mut entry = decode_entry(seq, &v[10 + rlen..])?;
    entry.size = 24 + v.len() as u64;
    Ok(DeadLetter {
        entry,
        dead_at,
        reason,
    })
}

fn read_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClientErrorPolicy, Device, DeviceId, FleetId, Secret, WorkspaceId};
    use crate::store::{PointsOp, Store, StoreOptions};
    use std::path::Path;

    fn open(path: &Path) -> Option<Store> {
        Store::open(
            path,
            StoreOptions {
                cache_capacity_bytes: 1 << 20,
                group_commit_delay: std::time::Duration::ZERO,
                ..Default::default()
            },
            Arc::new(crate::metrics::Metrics::new()),
        )
        .ok()
    }

    /// The store lets go of sled shortly after its last handle is dropped.
    fn reopen(path: &Path) -> Store {
        for _ in 0..500 {
            if let Some(s) = open(path) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("store did not reopen")
    }

    fn integration() -> Integration {
        Integration {
            id: IntegrationId::new(),
            name: "i".into(),
            url: "http://127.0.0.1:1/".into(),
            workspace_id: None,
            fleet_ids: vec![],
            tags: vec![],
            kinds: vec![],
            auth_header_name: None,
            auth_header_value: None,
            signing_secret: Secret("0123456789abcdef".into()),
            max_items: 100,
            max_wait_ms: 0,
            timeout_ms: 1000,
            ca_pem: None,
            on_client_error: ClientErrorPolicy::DeadLetter,
            retry_initial_ms: 10,
            retry_max_ms: 100,
            max_bytes: 1 << 20,
            max_age_secs: 3600,
            dead_letter_max: 10,
            paused: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn device() -> Device {
        Device {
            id: DeviceId::new(),
            workspace_id: WorkspaceId::new(),
            fleet_id: FleetId::new(),
            name: "d".into(),
            label: String::new(),
            enabled: true,
            created_at: 0,
            updated_at: 0,
            last_connect_at: None,
            last_disconnect_at: None,
            last_activity_at: None,
            provisioned_at: None,
            gateway: Default::default(),
        }
    }

    fn op(device: DeviceId, v: i64) -> PointsOp {
        PointsOp {
            device,
            tag: "default".into(),
            points: vec![(v, vec![("v".into(), crate::model::Value::Long(v))])],
        }
    }

    fn enqueue(ids: &[IntegrationId], v: i64) -> Enqueue {
        Enqueue {
            integrations: ids.to_vec(),
            event: format!("{{\"v\":{v}}}").into_bytes(),
        }
    }

    #[tokio::test]
    async fn keys_are_never_reused_after_the_queues_empty_and_the_store_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let i = integration();
        let dev = device();
        {
            let s = open(&path).expect("open");
            s.put_integration(&i).expect("put");
            for v in 0..3 {
                s.append_points_queued(op(dev.id, v), Some(enqueue(&[i.id], v)), true)
                    .await
                    .expect("append");
            }
            let head = s.queue_head(i.id, 10).expect("head");
            let keys: Vec<&str> = head.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(
                keys,
                ["0000000000000000", "0000000000000001", "0000000000000002"]
            );
            let stats = s.queue_stats(i.id).expect("stats");
            assert_eq!(stats.depth.load(Ordering::Relaxed), 3);
            let seqs: Vec<u64> = head.iter().map(|e| e.seq).collect();
            assert_eq!(s.queue_remove(i.id, &seqs).expect("remove").entries, 3);
            assert_eq!(stats.depth.load(Ordering::Relaxed), 0);
            assert_eq!(stats.bytes.load(Ordering::Relaxed), 0);
            s.commit().await.expect("commit");
        }
        let s = reopen(&path);
        s.append_points_queued(op(dev.id, 9), Some(enqueue(&[i.id], 9)), true)
            .await
            .expect("append");
        let head = s.queue_head(i.id, 10).expect("head");
        assert_eq!(head.len(), 1);
        assert_eq!(head[0].key, "0000000000000003", "the counter carries on");
        assert_eq!(head[0].event, b"{\"v\":9}");
    }

    #[tokio::test]
    async fn replay_restores_logged_entries_once_and_skips_what_left_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let (a, b, gone) = (integration(), integration(), IntegrationId::new());
        let dev = device();
        {
            let s = open(&path).expect("open");
            s.create_device(&dev, &[]).expect("create").expect("unique");
            s.put_integration(&a).expect("put");
            s.put_integration(&b).expect("put");
            // `b` has delivered everything below 11 already.
            s.trees()
                .int_queue
                .insert(b.id.as_bytes(), &11u64.to_be_bytes())
                .expect("mark");
            s.flush_now().expect("flush");
        }
        // What a crash leaves: type-2 records for both integrations and one deleted since,
        // and an old-style type-1 record.
        let mut buf = Vec::new();
        for seq in 10..13u64 {
            op(dev.id, seq as i64).encode_with(
                Some((seq, &enqueue(&[a.id, b.id, gone], seq as i64))),
                &mut buf,
            );
        }
        op(dev.id, 50).encode_with(None, &mut buf);
        // Checksums as in a segment from before segments had a salt (and a header).
        crate::store::wal::stamp(&mut buf, None);
        let s = reopen(&path);
        drop(s);
        let wal_dir = path.with_extension("wal");
        std::fs::write(wal_dir.join(format!("{:020}.wal", 999)), &buf).expect("segment");
        let s = reopen(&path);
        let seqs = |id| -> Vec<u64> {
            s.queue_head(id, 100)
                .expect("head")
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(a.id), vec![10, 11, 12]);
        assert_eq!(
            seqs(b.id),
            vec![11, 12],
            "below the head mark: already delivered"
        );
        assert!(seqs(gone).is_empty(), "a deleted integration gets nothing");
        assert_eq!(
            s.queue_stats(a.id)
                .expect("stats")
                .depth
                .load(Ordering::Relaxed),
            3
        );
        assert_eq!(
            s.queue_head(a.id, 1).expect("head")[0].key,
            "000000000000000a",
            "the key is derived from the logged sequence number"
        );
        // Replaying the same records again (a crash right after replay) adds nothing.
        drop(s);
        std::fs::write(wal_dir.join(format!("{:020}.wal", 2000)), &buf).expect("segment");
        let s = reopen(&path);
        assert_eq!(s.queue_head(a.id, 100).expect("head").len(), 3);
        assert_eq!(
            s.queue_stats(a.id)
                .expect("stats")
                .depth
                .load(Ordering::Relaxed),
            3
        );
        // New entries continue after the highest logged sequence number.
        s.append_points_queued(op(dev.id, 1), Some(enqueue(&[a.id], 1)), true)
            .await
            .expect("append");
        assert_eq!(s.queue_head(a.id, 100).expect("head")[3].seq, 13);
    }

    #[tokio::test]
    async fn caps_dead_letters_and_replay_keep_keys_and_order() {
        let (_dir, s) = crate::store::test_util::open_temp();
        let i = integration();
        s.put_integration(&i).expect("put");
        for v in 0..5 {
            s.append_points_queued(op(DeviceId::new(), v), Some(enqueue(&[i.id], v)), true)
                .await
                .expect("append");
        }
        let stats = s.queue_stats(i.id).expect("stats");
        let per = s.queue_head(i.id, 1).expect("head")[0].size;
        // Keep room for two: the three oldest go.
        let m = s.queue_drop_oldest(i.id, per * 2, 0).expect("drop");
        assert_eq!(m.entries, 3);
        let head = s.queue_head(i.id, 10).expect("head");
        assert_eq!(head.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(stats.bytes.load(Ordering::Relaxed), per * 2);
        // Dead letters keep their keys; replay re-appends them in order under new seqs.
        assert_eq!(s.dead_letter(i.id, &head, "HTTP 400", 10).expect("dead"), 0);
        assert_eq!(stats.depth.load(Ordering::Relaxed), 0);
        assert_eq!(stats.dead.load(Ordering::Relaxed), 2);
        let dead = s.dead_letters(i.id, None, 10).expect("list").items;
        assert_eq!(dead[0].reason, "HTTP 400");
        assert_eq!(dead[1].entry.key, "0000000000000004");
        // A page at a time, through the cursor the listing hands out; no other cursor.
        let first = s.dead_letters(i.id, None, 1).expect("list");
        assert_eq!(first.items.len(), 1);
        let next = first.next_cursor.expect("more");
        let second = s.dead_letters(i.id, Some(&next), 1).expect("list");
        assert_eq!(second.items[0].entry.key, dead[1].entry.key);
        assert!(second.next_cursor.is_none());
        assert!(matches!(
            s.dead_letters(i.id, Some(&super::super::Cursor::new("x")), 1),
            Err(StoreError::BadCursor)
        ));
        assert_eq!(s.requeue_dead(i.id).await.expect("requeue").entries, 2);
        let head = s.queue_head(i.id, 10).expect("head");
        assert_eq!(
            head.iter()
                .map(|e| (e.seq, e.key.as_str()))
                .collect::<Vec<_>>(),
            vec![(5, "0000000000000003"), (6, "0000000000000004")]
        );
        assert_eq!(stats.dead.load(Ordering::Relaxed), 0);
        // The dead-letter store is capped too: the oldest letters go first.
        s.dead_letter(i.id, &head, "HTTP 400", 1).expect("dead");
        let dead = s.dead_letters(i.id, None, 10).expect("list").items;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].entry.key, "0000000000000004");
        s.delete_integration(i.id).await.expect("delete");
        assert!(s.queue_stats(i.id).is_none());
        assert!(
            s.dead_letters(i.id, None, 10)
                .expect("list")
                .items
                .is_empty()
        );
    }
}
