//! Logged registry writes: the unit of work for the job area (device jobs, their indexes and
//! request counters, fleet jobs). Such a write is applied to sled and logged to the write-ahead
//! log as one type-3 record; it is durable once the log is synced, at the cost of one
//! `fdatasync` shared with everything else in the group, instead of a sled flush (which costs
//! seconds when a rollout has just written ten thousand jobs).
//!
//! Rules that keep replay exact:
//! - every write to a logged tree goes through `Store::write_logged`, never straight to sled, so
//!   the log holds every change to those trees since the last checkpoint;
//! - a record holds absolute values (a put or a delete per key), never increments;
//! - records are applied and queued under one lock, so their order in the log is the order in
//!   which sled saw them, and replaying the log in order ends in the state the server had.
//!
//! A record is applied to sled before it is logged (callers read their own writes at once) and
//! acknowledged only once logged and synced. Every logged record was applied before it was
//! queued, so a checkpoint's sled flush covers every record in the segments it deletes.
//!
//! Record payload: `3 ‖ n u32 ‖ n × (tree u8 ‖ key_len u32 ‖ key ‖ 0 | 1 ‖ [value_len u32 ‖ value])`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::codec::{concat, encode_json};
use super::{Db, Result, Store, StoreError};
use crate::model::{DeviceId, FleetJob, FleetJobId, Job, JobId};

/// Type byte of a logged-writes record in the write-ahead log.
pub(super) const RECORD_TYPE: u8 = 3;

/// The trees whose writes are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum LoggedTree {
    Jobs = 1,
    JobDevices = 2,
    JobsActive = 3,
    JobKeys = 4,
    RpcSeq = 5,
    FleetJobs = 6,
    FleetJobChildren = 7,
    FleetJobKeys = 8,
}

const TREES: [LoggedTree; 8] = [
    LoggedTree::Jobs,
    LoggedTree::JobDevices,
    LoggedTree::JobsActive,
    LoggedTree::JobKeys,
    LoggedTree::RpcSeq,
    LoggedTree::FleetJobs,
    LoggedTree::FleetJobChildren,
    LoggedTree::FleetJobKeys,
];

impl LoggedTree {
    fn from_u8(b: u8) -> Option<Self> {
        TREES.get((b as usize).checked_sub(1)?).copied()
    }
}

/// One key's new value (`None`: deleted).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TreeWrite {
    pub tree: LoggedTree,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Appends a whole record (length, checksum to be stamped at append, payload) to `out`.
pub(super) fn encode(writes: &[TreeWrite], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]); // length and checksum, filled in below and at append
    out.push(RECORD_TYPE);
    out.extend_from_slice(&(writes.len() as u32).to_be_bytes());
    for w in writes {
        out.push(w.tree as u8);
        out.extend_from_slice(&(w.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&w.key);
        match &w.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    let payload_len = (out.len() - start - 8) as u32;
    out[start..start + 4].copy_from_slice(&payload_len.to_be_bytes());
}

/// Decodes a record payload (type byte included); `None` when it is not a whole, well-formed
/// logged-writes record.
pub(super) fn decode(p: &[u8]) -> Option<Vec<TreeWrite>> {
    let mut pos = 0;
    let take = |pos: &mut usize, n: usize| -> Option<&[u8]> {
        let s = p.get(*pos..pos.checked_add(n)?)?;
        *pos += n;
        Some(s)
    };
    let u32_at = |pos: &mut usize| -> Option<usize> {
        Some(u32::from_be_bytes(take(pos, 4)?.try_into().ok()?) as usize)
    };
    if take(&mut pos, 1)? != [RECORD_TYPE] {
        return None;
    }
    let n = u32_at(&mut pos)?;
    let mut writes = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let tree = LoggedTree::from_u8(take(&mut pos, 1)?[0])?;
        let len = u32_at(&mut pos)?;
        let key = take(&mut pos, len)?.to_vec();
        let value = match take(&mut pos, 1)? {
            [0] => None,
            [1] => {
                let len = u32_at(&mut pos)?;
                Some(take(&mut pos, len)?.to_vec())
            }
            _ => return None,
        };
        writes.push(TreeWrite { tree, key, value });
    }
    (pos == p.len()).then_some(writes)
}

/// Failed ranges remembered for late waiters; older ones are forgotten.
const FAILED_KEPT: usize = 64;

type Waiter = oneshot::Sender<Result<()>>;

/// How far the logged records are durable, and who waits for what. Waiters are kept by mark,
/// so a sync wakes only those it covers: ten thousand sessions waiting for one rollout's
/// record must not all be woken by every later sync.
#[derive(Debug, Default)]
pub(super) struct Marks {
    /// Every record numbered up to this one is durable, except those in `failed`.
    durable: u64,
    /// Records (first, last) that could be neither logged nor flushed, and why.
    failed: VecDeque<(u64, u64, String)>,
    waiters: BTreeMap<u64, Vec<Waiter>>,
}

impl Marks {
    fn outcome(&self, mark: u64) -> Option<Result<()>> {
        if let Some((_, _, e)) = self
            .failed
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&mark))
        {
            return Some(Err(StoreError::Flush(e.clone())));
        }
        (self.durable >= mark).then_some(Ok(()))
    }

    /// Records up to `through` are durable.
    pub(super) fn durable(&mut self, through: u64) {
        self.durable = self.durable.max(through);
        let later = self.waiters.split_off(&(through + 1));
        for (_, ws) in std::mem::replace(&mut self.waiters, later) {
            for w in ws {
                let _ = w.send(Ok(()));
            }
        }
    }

    /// Records `first..=last` are lost from the log and not flushed.
    pub(super) fn failed(&mut self, first: u64, last: u64, why: String) {
        let mut hit = self.waiters.split_off(&first);
        let mut after = hit.split_off(&(last + 1));
        self.waiters.append(&mut after);
        for (_, ws) in hit {
            for w in ws {
                let _ = w.send(Err(StoreError::Flush(why.clone())));
            }
        }
        if self.failed.len() == FAILED_KEPT {
            self.failed.pop_front();
        }
        self.failed.push_back((first, last, why));
    }
}

/// The logged-writes state of an open store.
pub(super) struct Logged {
    /// The number of the last record applied; held while a record is applied and queued.
    order: Mutex<u64>,
    /// Encoded records waiting for the writer thread, in order.
    queue: Mutex<Vec<(u64, Vec<u8>)>>,
    marks: Mutex<Marks>,
}

impl Default for Logged {
    fn default() -> Self {
        Self {
            order: Mutex::new(0),
            queue: Mutex::new(Vec::new()),
            marks: Mutex::new(Marks::default()),
        }
    }
}

impl Logged {
    /// Takes the records queued so far: their numbers (first, last) and their bytes, appended
    /// to `buf`.
    pub(super) fn drain_into(&self, buf: &mut Vec<u8>) -> Option<(u64, u64)> {
        let queued = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        let (first, last) = (queued.first()?.0, queued.last()?.0);
        for (_, bytes) in queued {
            buf.extend_from_slice(&bytes);
        }
        Some((first, last))
    }

    pub(super) fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of the last record applied: every write made before this call is covered.
    fn last(&self) -> u64 {
        *self.order.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A unit of work on the job area: the writes it collects are applied and logged as one record.
pub struct JobWrites<'a> {
    db: &'a Db,
    writes: Vec<TreeWrite>,
    /// Request counters taken in this unit, so two in one unit do not hand out the same id.
    rpc: HashMap<DeviceId, u32>,
}

impl JobWrites<'_> {
    fn put(&mut self, tree: LoggedTree, key: Vec<u8>, value: impl Into<Vec<u8>>) {
        self.writes.push(TreeWrite {
            tree,
            key,
            value: Some(value.into()),
        });
    }

    fn delete(&mut self, tree: LoggedTree, key: Vec<u8>) {
        self.writes.push(TreeWrite {
            tree,
            key,
            value: None,
        });
    }

    /// Writes a job and keeps the active list and the idempotency index in step.
    pub fn put_job(&mut self, job: &Job) {
        let key = concat(&[job.device_id.as_bytes(), job.id.as_bytes()]);
        self.put(LoggedTree::Jobs, key, encode_json(job));
        let (id, dev) = (
            job.id.as_bytes().to_vec(),
            job.device_id.as_bytes().to_vec(),
        );
        self.put(LoggedTree::JobDevices, id.clone(), dev.clone());
        if job.state.is_terminal() {
            self.delete(LoggedTree::JobsActive, id.clone());
        } else {
            self.put(LoggedTree::JobsActive, id.clone(), dev);
        }
        if let Some(k) = &job.idempotency_key {
            let key = concat(&[job.device_id.as_bytes(), k.as_bytes()]);
            self.put(LoggedTree::JobKeys, key, id);
        }
    }

    /// Records that `job` belongs to fleet job `fj`.
    pub fn add_fleet_job_child(&mut self, fj: FleetJobId, job: JobId) {
        let key = concat(&[fj.as_bytes(), job.as_bytes()]);
        self.put(LoggedTree::FleetJobChildren, key, Vec::new());
    }

    /// Writes a fleet job and its idempotency key (`fleet ‖ key → fleet job`), so a key never
    /// outlives or predates its rollout.
    pub fn put_fleet_job(&mut self, fj: &FleetJob) {
        self.put(
            LoggedTree::FleetJobs,
            fj.id.as_bytes().to_vec(),
            encode_json(fj),
        );
        if let Some(k) = &fj.idempotency_key {
            let key = concat(&[fj.fleet_id.as_bytes(), k.as_bytes()]);
            self.put(LoggedTree::FleetJobKeys, key, fj.id.as_bytes().to_vec());
        }
    }

    /// The next RPC request id of a device (1, 2, ... wrapping within 31 bits).
    pub fn next_rpc_id(&mut self, device: DeviceId) -> Result<u32> {
        let n = match self.rpc.get(&device) {
            Some(n) => *n,
            None => self
                .db
                .trees()
                .rpc_seq
                .get(device.as_bytes())?
                .and_then(|b| <[u8; 4]>::try_from(&b[..]).ok())
                .map_or(0, u32::from_be_bytes),
        };
        let next = if n >= i32::MAX as u32 { 1 } else { n + 1 };
        self.rpc.insert(device, next);
        self.put(
            LoggedTree::RpcSeq,
            device.as_bytes().to_vec(),
            next.to_be_bytes().to_vec(),
        );
        Ok(next)
    }

    /// Removes every job of a deleted device, and its request counter.
    pub fn delete_device_jobs(&mut self, device: DeviceId) -> Result<()> {
        for j in self.db.device_jobs(device, false)? {
            let key = concat(&[device.as_bytes(), j.id.as_bytes()]);
            self.delete(LoggedTree::Jobs, key);
            self.delete(LoggedTree::JobDevices, j.id.as_bytes().to_vec());
            self.delete(LoggedTree::JobsActive, j.id.as_bytes().to_vec());
            if let Some(k) = &j.idempotency_key {
                let key = concat(&[device.as_bytes(), k.as_bytes()]);
                self.delete(LoggedTree::JobKeys, key);
            }
        }
        self.rpc.remove(&device);
        self.delete(LoggedTree::RpcSeq, device.as_bytes().to_vec());
        Ok(())
    }
}

impl Db {
    /// Applies logged writes to sled in one transaction (at runtime and at replay).
    pub(super) fn apply_logged(&self, writes: &[TreeWrite]) -> Result<()> {
        use sled::Transactional;
        let t = self.trees();
        let all = [
            &t.jobs,
            &t.job_devices,
            &t.jobs_active,
            &t.job_keys,
            &t.rpc_seq,
            &t.fleet_jobs,
            &t.fleet_job_children,
            &t.fleet_job_keys,
        ];
        // Only the trees the unit touches take part: a transaction's cost grows with them.
        let mut touched: Vec<LoggedTree> = writes.iter().map(|w| w.tree).collect();
        touched.sort_by_key(|t| *t as u8);
        touched.dedup();
        match touched[..] {
            [] => Ok(()),
            [one] => {
                // One tree: a batch is atomic on its own.
                let mut batch = sled::Batch::default();
                for w in writes {
                    match &w.value {
                        Some(v) => batch.insert(w.key.as_slice(), v.as_slice()),
                        None => batch.remove(w.key.as_slice()),
                    }
                }
                Ok(all[one as usize - 1].apply_batch(batch)?)
            }
            _ => {
                let trees: Vec<&sled::Tree> =
                    touched.iter().map(|t| all[*t as usize - 1]).collect();
                trees[..]
                    .transaction(|tx| {
                        for w in writes {
                            let i = touched.iter().position(|t| *t == w.tree).unwrap_or(0);
                            match &w.value {
                                Some(v) => tx[i].insert(w.key.as_slice(), v.as_slice())?,
                                None => tx[i].remove(w.key.as_slice())?,
                            };
                        }
                        Ok(())
                    })
                    .map_err(StoreError::from)
            }
        }
    }
}

/// A promise that some logged writes are durable: `Store::durable` waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Mark(u64);

impl Store {
    /// Runs the unit of work `f` on the job area: its writes are applied at once, as one atomic
    /// sled transaction, and logged as one record. Returns `f`'s value and the mark to wait
    /// for (`durable`) before anyone is told the writes happened.
    pub fn write_logged<T>(
        &self,
        f: impl FnOnce(&mut JobWrites<'_>) -> Result<T>,
    ) -> Result<(T, Mark)> {
        let logged = &self.db.logged;
        let mut order = logged.order.lock().unwrap_or_else(|p| p.into_inner());
        let mut unit = JobWrites {
            db: &self.db,
            writes: Vec::new(),
            rpc: HashMap::new(),
        };
        let value = f(&mut unit)?;
        if unit.writes.is_empty() {
            return Ok((value, Mark(*order)));
        }
        self.db.apply_logged(&unit.writes)?;
        *order += 1;
        let mut bytes = Vec::new();
        encode(&unit.writes, &mut bytes);
        let first_queued = {
            let mut queue = logged.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.push((*order, bytes));
            queue.len() == 1
        };
        let mark = Mark(*order);
        drop(order);
        // The writer takes the whole queue at each wake-up: one wake per batch of records, not
        // one per record (a rollout's acknowledgements come ten thousand at a time).
        if first_queued {
            self.pipeline.wake();
        }
        Ok((value, mark))
    }

    /// The mark covering every logged write made so far.
    pub fn logged_mark(&self) -> Mark {
        Mark(self.db.logged.last())
    }

    /// Waits until the logged writes up to `mark` are durable (an error when they could not
    /// be made so).
    pub async fn durable(&self, mark: Mark) -> Result<()> {
        if mark.0 == 0 {
            return Ok(());
        }
        let rx = {
            let mut m = self.db.logged.marks();
            if let Some(done) = m.outcome(mark.0) {
                return done;
            }
            let (tx, rx) = oneshot::channel();
            m.waiters.entry(mark.0).or_default().push(tx);
            rx
        };
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until every logged write made so far is durable.
    pub async fn sync_logged(&self) -> Result<()> {
        self.durable(self.logged_mark()).await
    }

    /// Every logged write up to the current mark is in sled, about to be flushed: once the
    /// flush succeeds they are durable whatever the log says.
    pub(super) fn covered_by_flush(&self) -> u64 {
        self.db.logged.last()
    }

    pub(super) fn mark_durable(&self, through: u64) {
        self.db.logged.marks().durable(through);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_what_is_not_whole() {
        let writes = vec![
            TreeWrite {
                tree: LoggedTree::Jobs,
                key: b"k1".to_vec(),
                value: Some(b"v1".to_vec()),
            },
            TreeWrite {
                tree: LoggedTree::FleetJobKeys,
                key: b"k2".to_vec(),
                value: None,
            },
            TreeWrite {
                tree: LoggedTree::RpcSeq,
                key: Vec::new(),
                value: Some(Vec::new()),
            },
        ];
        let mut out = Vec::new();
        encode(&writes, &mut out);
        let payload = &out[8..];
        assert_eq!(
            u32::from_be_bytes(out[..4].try_into().expect("len")) as usize,
            payload.len()
        );
        assert_eq!(decode(payload), Some(writes));
        for cut in 0..payload.len() {
            assert_eq!(decode(&payload[..cut]), None, "cut at {cut}");
        }
        let mut bad_tree = payload.to_vec();
        bad_tree[5] = 9;
        assert_eq!(decode(&bad_tree), None);
        let mut longer = payload.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer), None);
    }

    fn job(device: DeviceId) -> Job {
        Job {
            id: JobId::new(),
            device_id: device,
            method: "reboot".into(),
            params: serde_json::json!({}),
            two_way: false,
            state: crate::model::JobState::Queued,
            created_at: 0,
            expires_at: i64::MAX,
            rpc_id: None,
            attempts: 0,
            next_attempt_at: None,
            result: None,
            idempotency_key: Some("k".into()),
            fleet_job_id: None,
            history: Vec::new(),
        }
    }

    fn open(path: &std::path::Path) -> Store {
        for _ in 0..500 {
            if let Ok(s) = Store::open(
                path,
                super::super::StoreOptions {
                    cache_capacity_bytes: 1 << 20,
                    group_commit_delay: std::time::Duration::ZERO,
                    ..Default::default()
                },
                std::sync::Arc::new(crate::metrics::Metrics::new()),
            ) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("store did not open")
    }

    /// Every logged record in the store's write-ahead log.
    fn logged_records(path: &std::path::Path) -> Vec<Vec<TreeWrite>> {
        let mut out = Vec::new();
        let dir = super::super::guard::wal_path(path);
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("wal dir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(f).expect("segment");
            for (start, len) in super::super::wal::fuzzing::scan(&bytes).records {
                if let Some(w) = decode(&bytes[start..start + len]) {
                    out.push(w);
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_unit_of_work_is_one_logged_record_and_durable_once_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let s = open(&path);
        let device = DeviceId::new();
        let mut j = job(device);
        let ((a, b), mark) = s
            .write_logged(|w| {
                let a = w.next_rpc_id(device)?;
                let b = w.next_rpc_id(device)?;
                j.rpc_id = Some(b);
                w.put_job(&j);
                Ok((a, b))
            })
            .expect("write");
        assert_eq!((a, b), (1, 2), "two ids in one unit are distinct");
        // Applied at once: readers see it before it is durable.
        assert_eq!(
            s.get_job(j.id).expect("read").map(|x| x.rpc_id),
            Some(Some(2))
        );
        s.durable(mark).await.expect("durable");
        let records = logged_records(&path);
        assert_eq!(records.len(), 1, "one unit, one record: {records:?}");
        let jobs_key = concat(&[device.as_bytes(), j.id.as_bytes()]);
        assert!(
            records[0]
                .iter()
                .any(|w| w.tree == LoggedTree::Jobs && w.key == jobs_key)
        );
        assert!(
            records[0].iter().any(|w| w.tree == LoggedTree::RpcSeq
                && w.value.as_deref() == Some(&2u32.to_be_bytes()[..]))
        );
        // The next id continues from what is stored.
        let jobs: &dyn crate::store::ports::JobStore = &s;
        assert_eq!(jobs.next_rpc_id(device).expect("next"), 3);
        // Nothing logged: the current mark, already durable.
        let (_, none) = s.write_logged(|_| Ok(())).expect("empty unit");
        s.durable(none).await.expect("durable");
    }

    #[tokio::test]
    async fn replay_applies_logged_records_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let device = DeviceId::new();
        let (first, second) = (job(device), job(device));
        {
            let s = open(&path);
            s.close_clean().await.expect("clean stop");
        }
        // What a crash leaves: records logged but never flushed into sled. The second record
        // finishes the first job and creates another.
        let mut done = first.clone();
        done.state = crate::model::JobState::Succeeded;
        let unit = |jobs: &[&Job]| {
            let s = open(&path);
            let mut w = JobWrites {
                db: &s.db,
                writes: Vec::new(),
                rpc: HashMap::new(),
            };
            for j in jobs {
                w.put_job(j);
            }
            let mut out = Vec::new();
            encode(&w.writes, &mut out);
            drop(w);
            drop(s);
            out
        };
        let mut records = unit(&[&first]);
        records.extend(unit(&[&done, &second]));
        let segment = super::super::wal::fuzzing::segment([7; 16], &records);
        let wal = super::super::guard::wal_path(&path);
        std::fs::write(wal.join(format!("{:020}.wal", 999)), segment).expect("segment");

        let s = open(&path);
        let jobs = s.device_jobs(device, false).expect("jobs");
        let states: Vec<_> = jobs.iter().map(|j| (j.id, j.state)).collect();
        assert_eq!(
            states,
            vec![
                (first.id, crate::model::JobState::Succeeded),
                (second.id, crate::model::JobState::Queued)
            ]
        );
        let active: Vec<_> = s
            .active_jobs()
            .expect("active")
            .into_iter()
            .map(|(j, _)| j)
            .collect();
        assert_eq!(
            active,
            vec![second.id],
            "the finished job left the active list"
        );
    }

    #[test]
    fn a_failed_range_is_reported_even_when_later_records_are_durable() {
        let mut m = Marks::default();
        assert!(m.outcome(1).is_none());
        m.durable(2);
        m.failed(3, 4, "disk full".into());
        m.durable(6);
        assert!(matches!(m.outcome(2), Some(Ok(()))));
        assert!(matches!(m.outcome(3), Some(Err(_))));
        assert!(matches!(m.outcome(5), Some(Ok(()))));
        assert!(m.outcome(7).is_none());
    }

    #[test]
    fn a_sync_wakes_only_the_waiters_it_covers() {
        let mut m = Marks::default();
        let mut wait = |mark: u64| {
            let (tx, rx) = oneshot::channel();
            m.waiters.entry(mark).or_default().push(tx);
            rx
        };
        let (mut w3, mut w5, mut w7) = (wait(3), wait(5), wait(7));
        m.failed(3, 4, "disk full".into());
        assert!(matches!(w3.try_recv(), Ok(Err(_))));
        assert!(w5.try_recv().is_err(), "not yet");
        m.durable(6);
        assert!(matches!(w5.try_recv(), Ok(Ok(()))));
        assert!(
            w7.try_recv().is_err(),
            "7 is not covered by a sync through 6"
        );
        assert_eq!(m.waiters.len(), 1);
    }
}
