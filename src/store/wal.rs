//! The write-ahead log of device data. An acknowledged device write is durable once its WAL
//! record is on disk (one `fdatasync` per group of writes, far cheaper than a sled flush); sled is
//! flushed at checkpoints, after which the older segments are deleted. On start, segments left
//! by a crash are replayed into sled.
//!
//! Segment files `NNNNNNNNNNNNNNNNNNNN.wal` start with a header `"corralW2" ‖ salt [u8; 16]` and
//! hold records `len u32 ‖ crc32(salt ‖ payload) u32 ‖ payload`. Only the tail of the last
//! segment can be torn by a crash; replay stops at the first bad record.
//!
//! The salt is random per segment and never leaves the server. Without it a device could put
//! bytes that look like a whole record inside a string value; if a crash then tore the record
//! carrying them, the scan that looks for records after damage would find the forgery, and refuse
//! to start (damage followed by records) or, when salvaging, replay it. A checksum over a salt the
//! device cannot know makes such a forgery a 1-in-2^32 guess per crash. Segments without the
//! header were written before it existed and are read with the plain checksum.
//! A payload starts with its type: 1 = points; 2 = points and the integration queue entries
//! they make (`seq u64 ‖ n u16 ‖ n integration ids ‖ len u32 ‖ event`, then the type-1 body);
//! 3 = logged registry writes of the job area (see `logged`).
//! Type 1 is still written when no integration matches, and logs written before type 2 existed
//! replay unchanged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::codec::{decode_value, encode_value, push_str, read_str};
use super::integrations::Enqueue;
use super::{Db, Result, StoreError};
use crate::model::{DeviceId, IntegrationId, Millis, Value};

/// Points grouped by timestamp, as the data service hands them over.
pub type Points = Vec<(Millis, Vec<(String, Value)>)>;

/// One logged write.
#[derive(Debug, Clone, PartialEq)]
pub struct PointsOp {
    pub device: DeviceId,
    pub tag: String,
    pub points: Points,
}

impl PointsOp {
    /// A type-1 record with the checksum of a segment without header (`salt` `None`).
    #[cfg(test)]
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        self.encode_with(None, out);
        stamp(&mut out[start..], None);
    }

    /// Encodes the record: type 1 (points) without queue entries, type 2 (points and the
    /// integration queue entries they make, under sequence number `seq`) with them.
    pub(super) fn encode_with(&self, queue: Option<(u64, &Enqueue)>, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]); // length and checksum, filled in below
        match queue {
            None => out.push(1), // record type: points
            Some((seq, q)) => {
                out.push(2); // record type: points with queue entries
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&(q.integrations.len() as u16).to_be_bytes());
                for id in &q.integrations {
                    out.extend_from_slice(id.as_bytes());
                }
                out.extend_from_slice(&(q.event.len() as u32).to_be_bytes());
                out.extend_from_slice(&q.event);
            }
        }
        out.extend_from_slice(self.device.as_bytes());
        push_str(out, &self.tag);
        out.extend_from_slice(&(self.points.len() as u32).to_be_bytes());
        for (ts, values) in &self.points {
            out.extend_from_slice(&ts.to_be_bytes());
            out.extend_from_slice(&(values.len() as u32).to_be_bytes());
            for (k, v) in values {
                push_str(out, k);
                let mut enc = Vec::new();
                encode_value(&mut enc, v);
                out.extend_from_slice(&(enc.len() as u32).to_be_bytes());
                out.extend_from_slice(&enc);
            }
        }
        // The checksum is left to `stamp`, at append: it depends on the segment's salt.
        let payload_len = (out.len() - start - 8) as u32;
        out[start..start + 4].copy_from_slice(&payload_len.to_be_bytes());
    }

    #[cfg(test)]
    fn decode(p: &[u8]) -> Option<PointsOp> {
        Self::decode_record(p).map(|(op, _)| op)
    }

    /// Decodes a record of either type; old logs hold only type 1.
    fn decode_record(p: &[u8]) -> Option<(PointsOp, Option<(u64, Enqueue)>)> {
        let mut pos = 0;
        let take = |pos: &mut usize, n: usize| -> Option<&[u8]> {
            let s = p.get(*pos..*pos + n)?;
            *pos += n;
            Some(s)
        };
        let u32_at = |pos: &mut usize| -> Option<u32> {
            Some(u32::from_be_bytes(take(pos, 4)?.try_into().ok()?))
        };
        let queue = match take(&mut pos, 1)? {
            [1] => None,
            [2] => {
                let seq = u64::from_be_bytes(take(&mut pos, 8)?.try_into().ok()?);
                let n = u16::from_be_bytes(take(&mut pos, 2)?.try_into().ok()?);
                let mut integrations = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    integrations.push(IntegrationId::from_slice(take(&mut pos, 16)?)?);
                }
                let len = u32_at(&mut pos)? as usize;
                let event = take(&mut pos, len)?.to_vec();
                Some((
                    seq,
                    Enqueue {
                        integrations,
                        event,
                    },
                ))
            }
            _ => return None,
        };
        let device = DeviceId::from_slice(take(&mut pos, 16)?)?;
        let tag = read_str(p, &mut pos)?.to_string();
        let n = u32_at(&mut pos)?;
        let mut points = Vec::with_capacity(n.min(4096) as usize);
        for _ in 0..n {
            let ts = i64::from_be_bytes(take(&mut pos, 8)?.try_into().ok()?);
            let m = u32_at(&mut pos)?;
            let mut values = Vec::with_capacity(m.min(4096) as usize);
            for _ in 0..m {
                let key = read_str(p, &mut pos)?.to_string();
                let len = u32_at(&mut pos)? as usize;
                values.push((key, decode_value(take(&mut pos, len)?).ok()?));
            }
            points.push((ts, values));
        }
        (pos == p.len()).then_some((
            PointsOp {
                device,
                tag,
                points,
            },
            queue,
        ))
    }

    pub(super) fn stage(&self, db: &Db, staged: &mut super::telemetry::Staged) -> Result<usize> {
        db.stage_points(staged, self.device, &self.tag, &self.points)
    }
}

/// Records replayed per sled batch.
const REPLAY_GROUP: usize = 4096;

/// The first bytes of a segment with a salt; a record length never starts like this (it would
/// be over 1 GB).
const MAGIC: &[u8; 8] = b"corralW2";
/// Header bytes: the magic and the salt.
const HEADER_LEN: usize = 24;

type Salt = [u8; 16];

/// The checksum of a record payload in a segment with `salt` (`None`: a segment without header).
fn checksum(salt: Option<&Salt>, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if let Some(salt) = salt {
        h.update(salt);
    }
    h.update(payload);
    h.finalize()
}

/// Fills in the checksum of every record in `buf` (whole records, as `encode_with` writes them).
pub(super) fn stamp(buf: &mut [u8], salt: Option<&Salt>) {
    let mut pos = 0;
    while pos + 8 <= buf.len() {
        let len = u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        let end = (pos + 8 + len).min(buf.len());
        let crc = checksum(salt, &buf[pos + 8..end]);
        buf[pos + 4..pos + 8].copy_from_slice(&crc.to_be_bytes());
        pos = end;
    }
}

/// Where the whole records of a segment are, and where damage interrupts them.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// (payload offset, payload length) of each readable record, in order.
    records: Vec<(usize, usize)>,
    /// (offset, bytes) of unreadable stretches that readable records follow.
    damaged: Vec<(usize, usize)>,
    /// Offset of an unreadable stretch that runs to the end: a record torn by a crash.
    torn_tail: Option<usize>,
    /// Where the records start: after the header, if the segment has one.
    body: usize,
}

/// The payload length of a whole, checksummed, decodable record at `pos`.
fn record_at(bytes: &[u8], pos: usize, salt: Option<&Salt>) -> Option<usize> {
    let header = bytes.get(pos..pos + 8)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let payload = bytes.get(pos + 8..pos.checked_add(8 + len)?)?;
    // Cheap tests first: resynchronising after damage tries every offset.
    if !matches!(payload.first(), Some(1..=3)) || checksum(salt, payload) != crc {
        return None;
    }
    match payload[0] {
        super::logged::RECORD_TYPE => super::logged::decode(payload).map(|_| len),
        _ => PointsOp::decode_record(payload).map(|_| len),
    }
}

/// Splits a segment into records, telling a torn tail (normal after a crash) from damage
/// followed by records (never normal).
fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan::default();
    let salt: Option<Salt> = if bytes.starts_with(MAGIC) && bytes.len() >= HEADER_LEN {
        bytes[8..HEADER_LEN].try_into().ok()
    } else if MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) && !bytes.is_empty() {
        // A header cut short: the segment was created just before a crash and holds nothing.
        out.torn_tail = Some(0);
        return out;
    } else {
        None
    };
    let salt = salt.as_ref();
    let mut pos = if salt.is_some() { HEADER_LEN } else { 0 };
    out.body = pos;
    while pos < bytes.len() {
        if let Some(len) = record_at(bytes, pos, salt) {
            out.records.push((pos + 8, len));
            pos += 8 + len;
            continue;
        }
        match (pos + 1..bytes.len()).find(|&p| record_at(bytes, p, salt).is_some()) {
            Some(next) => {
                out.damaged.push((pos, next - pos));
                pos = next;
            }
            None => {
                out.torn_tail = Some(pos);
                break;
            }
        }
    }
    out
}

/// Log segments kept for readers (online backups): pin id → first segment number needed.
pub(super) type Pins = Arc<std::sync::Mutex<std::collections::BTreeMap<u64, u64>>>;

/// The open log: the segment being appended to.
pub(super) struct Wal {
    pins: Pins,
    dir: PathBuf,
    seq: u64,
    current: Arc<File>,
    /// The current segment's salt, for the record checksums.
    salt: Salt,
    /// Bytes in the current segment, header included.
    pub(super) bytes: u64,
    /// A failed append could not be cut back off the segment: nothing more may follow it
    /// there (replay would stop at it), so the next append starts a new segment first.
    poisoned: bool,
    /// A checkpoint is due once the current segment holds this many bytes.
    pub(super) checkpoint_bytes: u64,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Existing segments in order.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let seq = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, p));
        }
    }
    out.sort();
    Ok(out)
}

impl Wal {
    /// Replays every segment in `dir` into `db`, makes sled durable, removes the replayed
    /// segments and opens a fresh one. Returns the log and the number of records replayed.
    ///
    /// A record cut short at the end of a segment is what a crash leaves (it was never
    /// acknowledged) and is dropped quietly. An unreadable record *followed by readable ones*
    /// is damage: the records after it may have been acknowledged, so the store refuses to
    /// open, unless `salvage`, which copies the segment aside and replays every readable
    /// record around the damage.
    pub(super) fn open_and_replay(dir: &Path, db: &Db, salvage: bool) -> Result<(Wal, usize)> {
        let io = |e: std::io::Error| StoreError::Wal {
            path: dir.to_path_buf(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let existing = segments(dir).map_err(io)?;
        // Read and check every segment before applying anything, so a refusal changes nothing.
        let mut scanned = Vec::with_capacity(existing.len());
        let mut damaged = Vec::new();
        for (_, path) in &existing {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io)?;
            let scan = scan(&bytes);
            for (offset, skipped) in &scan.damaged {
                damaged.push(format!(
                    "{} has {skipped} unreadable bytes at offset {offset}, followed by readable records",
                    path.display()
                ));
            }
            if let Some(offset) = scan.torn_tail {
                tracing::info!(segment = %path.display(), offset, bytes = bytes.len() - offset, "the write-ahead log ends in a record cut short by a crash; it was never acknowledged");
            }
            scanned.push((bytes, scan));
        }
        if !damaged.is_empty() {
            let what = format!("the write-ahead log is damaged: {}", damaged.join("; "));
            if !salvage {
                return Err(StoreError::Damaged {
                    path: db.path().to_path_buf(),
                    what,
                });
            }
            let files: Vec<PathBuf> = existing.iter().map(|(_, p)| p.clone()).collect();
            let aside = super::guard::copy_aside(db.path(), &files).map_err(io)?;
            tracing::warn!(problem = %what, copied_to = %aside.display(), "replaying every readable record around the damage (--accept-data-loss)");
        }
        let mut replayed = 0;
        // Records are applied in groups, as the writer thread does: a replayed point usually
        // exists already and dirties its hour, which is then recomputed once per group, not
        // once per record.
        let mut staged = super::telemetry::Staged::default();
        let mut in_group = 0;
        for (bytes, scan) in &scanned {
            for &(start, len) in &scan.records {
                let payload = &bytes[start..start + len];
                if payload.first() == Some(&super::logged::RECORD_TYPE) {
                    // Job-area writes: absolute values, replayed in log order.
                    if let Some(writes) = super::logged::decode(payload) {
                        db.apply_logged(&writes)?;
                        replayed += 1;
                    }
                    continue;
                }
                let Some((op, queue)) = PointsOp::decode_record(payload) else {
                    continue;
                };
                // A device deleted after its data was logged must not come back.
                if db.get_device(op.device)?.is_some() {
                    op.stage(db, &mut staged)?;
                    if let Some((seq, q)) = &queue {
                        db.replay_queue(*seq, q)?;
                    }
                    in_group += 1;
                    if in_group == REPLAY_GROUP {
                        db.apply_points(std::mem::take(&mut staged))?;
                        in_group = 0;
                    }
                }
                replayed += 1;
            }
        }
        db.apply_points(staged)?;
        db.settle_all()?;
        db.flush_now()?;
        for (_, path) in &existing {
            std::fs::remove_file(path).map_err(io)?;
        }
        let seq = existing.last().map_or(0, |(s, _)| s + 1);
        let (current, salt) = create_segment(dir, seq).map_err(io)?;
        db.logging_to(seq);
        Ok((
            Wal {
                pins: Default::default(),
                dir: dir.to_path_buf(),
                seq,
                current: Arc::new(current),
                salt,
                bytes: HEADER_LEN as u64,
                poisoned: false,
                checkpoint_bytes: 64 << 20,
            },
            replayed,
        ))
    }

    /// Appends whole records (as `PointsOp::encode_with` writes them), checksummed with the
    /// segment's salt. On failure (a full disk) nothing of `buf` stays in the log: a partial
    /// record left there would hide every later record from replay.
    pub(super) fn append(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        if self.poisoned {
            self.rotate()?;
            self.poisoned = false;
        }
        stamp(buf, Some(&self.salt));
        match (&*self.current).write_all(buf) {
            Ok(()) => {
                self.bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.current.set_len(self.bytes).is_err() {
                    self.poisoned = true;
                }
                Err(e)
            }
        }
    }

    pub(super) fn pins(&self) -> Pins {
        self.pins.clone()
    }

    /// Starts a new segment and, with `pin`, keeps it and the ones after it until unpinned.
    /// Returns its number: every segment before it is complete.
    pub(super) fn rotate_pinned(&mut self, pin: Option<u64>) -> Result<u64> {
        self.rotate().map_err(|e| StoreError::Wal {
            path: self.dir.clone(),
            source: e,
        })?;
        self.poisoned = false;
        if let Some(id) = pin {
            self.pins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, self.seq);
        }
        Ok(self.seq)
    }

    /// The directory of the log's segments.
    pub(super) fn segment_files(dir: &Path, from: u64, to: u64) -> std::io::Result<Vec<PathBuf>> {
        Ok(segments(dir)?
            .into_iter()
            .filter(|(seq, _)| (from..to).contains(seq))
            .map(|(_, p)| p)
            .collect())
    }

    /// Starts a new segment; the older ones stay until the next checkpoint.
    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self.seq + 1;
        let (current, salt) = create_segment(&self.dir, next)?;
        self.current = Arc::new(current);
        self.salt = salt;
        self.seq = next;
        self.bytes = HEADER_LEN as u64;
        Ok(())
    }

    /// The number of the segment being appended to.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// The segment being appended to, for the flusher to sync.
    pub(super) fn current(&self) -> Arc<File> {
        self.current.clone()
    }

    /// Checkpoint: start a new segment, flush sled (which then holds everything the older
    /// segments logged, since every record is applied right after it is appended), delete them.
    pub(super) fn checkpoint(&mut self, db: &Db) -> Result<()> {
        // Everything: this one leaves nothing for the next start to replay.
        db.settle_all()?;
        let tail = self.begin_checkpoint(db)?;
        let flushed = db.flush_now();
        tail.finish(flushed)
    }

    /// The writer's part of a checkpoint: a new segment; segments that hold points still
    /// waiting in memory are kept (a later checkpoint drops them, once the writer's groups have
    /// written those points). What is left (a sled flush, then
    /// deleting the older segments) may run on another thread while the writer goes on: the
    /// new segment holds what comes next.
    pub(super) fn begin_checkpoint(&mut self, db: &Db) -> Result<CheckpointTail> {
        let dir = self.dir.clone();
        self.rotate().map_err(|e| StoreError::Wal {
            path: dir.clone(),
            source: e,
        })?;
        self.poisoned = false;
        db.logging_to(self.seq);
        // Segments holding points still waiting in memory stay until they are in sled.
        let waiting = db.checkpoint_begins(self.seq);
        // Pinned segments stay for their readers; the next start replays them harmlessly.
        let next = self
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .fold(self.seq, |a, b| a.min(*b))
            .min(waiting.unwrap_or(u64::MAX));
        Ok(CheckpointTail { dir, next })
    }
}

/// The rest of a checkpoint begun by `Wal::begin_checkpoint`.
pub(super) struct CheckpointTail {
    dir: PathBuf,
    /// Segments before this one go.
    next: u64,
}

impl CheckpointTail {
    /// Deletes the older segments once `flushed`, a sled flush begun after the checkpoint
    /// began, succeeded; otherwise keeps them (the next start replays them) and says why.
    pub(super) fn finish(self, flushed: Result<()>) -> Result<()> {
        flushed?;
        let io = |e: std::io::Error| StoreError::Wal {
            path: self.dir.clone(),
            source: e,
        };
        for (seq, path) in segments(&self.dir).map_err(io)? {
            if seq < self.next {
                match std::fs::remove_file(&path) {
                    // Another checkpoint's tail (the writer's last one, at shutdown) got there
                    // first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    r => r.map_err(io)?,
                }
            }
        }
        Ok(())
    }
}

/// Creates segment `seq` with its header and a fresh salt. The header reaches the disk with the
/// first records (the flusher syncs the file's data), or not at all, which replay reads as an
/// empty segment.
fn create_segment(dir: &Path, seq: u64) -> std::io::Result<(File, Salt)> {
    let path = segment_path(dir, seq);
    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
    let salt: Salt = rand::random();
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&salt);
    if let Err(e) = f.write_all(&header) {
        // A full disk: leave no file that would read as a torn segment forever.
        drop(f);
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    // Make the new file's directory entry durable, or a crash could lose the whole segment.
    File::open(dir)?.sync_all()?;
    Ok((f, salt))
}

/// Forwarders for `crate::fuzzing`: the fuzz targets and the corpus replay test reach the
/// record decoder and the segment scanner that replay uses, and nothing else of the log.
pub(crate) mod fuzzing {
    use super::{Enqueue, PointsOp};

    pub fn decode_record(p: &[u8]) -> Option<(PointsOp, Option<(u64, Enqueue)>)> {
        PointsOp::decode_record(p)
    }

    /// Whether replay reads `p` as a record payload of any type (points or logged writes).
    pub fn decodes(p: &[u8]) -> bool {
        match p.first() {
            Some(&super::super::logged::RECORD_TYPE) => super::super::logged::decode(p).is_some(),
            _ => PointsOp::decode_record(p).is_some(),
        }
    }

    /// A whole record, length and checksum included, as a segment without header holds it.
    pub fn encode_record(op: &PointsOp, queue: Option<(u64, &Enqueue)>) -> Vec<u8> {
        let mut out = Vec::new();
        op.encode_with(queue, &mut out);
        super::stamp(&mut out, None);
        out
    }

    /// A segment with a header and `salt`, holding `records` (as `encode_record` makes them).
    pub fn segment(salt: [u8; 16], records: &[u8]) -> Vec<u8> {
        let mut out = super::MAGIC.to_vec();
        out.extend_from_slice(&salt);
        let body = out.len();
        out.extend_from_slice(records);
        super::stamp(&mut out[body..], Some(&salt));
        out
    }

    /// (offset, length) stretches of a segment.
    pub type Spans = Vec<(usize, usize)>;

    /// What `scan` finds in a segment.
    pub struct Scanned {
        /// (payload offset, length) of each record.
        pub records: Spans,
        /// Unreadable stretches followed by records.
        pub damaged: Spans,
        /// Where a torn tail starts.
        pub torn_tail: Option<usize>,
        /// Where the records start (after the header).
        pub body: usize,
    }

    pub fn scan(bytes: &[u8]) -> Scanned {
        let s = super::scan(bytes);
        Scanned {
            records: s.records,
            damaged: s.damaged,
            torn_tail: s.torn_tail,
            body: s.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_detect_damage() {
        let op = PointsOp {
            device: DeviceId::new(),
            tag: "default".into(),
            points: vec![
                (
                    5,
                    vec![
                        ("a".into(), Value::Long(1)),
                        ("b".into(), Value::Str("x".into())),
                    ],
                ),
                (
                    -7,
                    vec![("j".into(), Value::Json(serde_json::json!({"k": [1]})))],
                ),
            ],
        };
        let mut buf = Vec::new();
        op.encode(&mut buf);
        let len = u32::from_be_bytes(buf[0..4].try_into().expect("4")) as usize;
        assert_eq!(len + 8, buf.len());
        assert_eq!(
            crc32fast::hash(&buf[8..]),
            u32::from_be_bytes(buf[4..8].try_into().expect("4"))
        );
        assert_eq!(PointsOp::decode(&buf[8..]), Some(op));
        assert_eq!(PointsOp::decode(&buf[8..buf.len() - 1]), None, "truncated");
    }

    #[test]
    fn queue_records_round_trip_and_old_records_still_decode() {
        let op = PointsOp {
            device: DeviceId::new(),
            tag: "hot".into(),
            points: vec![(5, vec![("a".into(), Value::Double(1.5))])],
        };
        let q = Enqueue {
            integrations: vec![IntegrationId::new(), IntegrationId::new()],
            event: br#"{"kind":"data"}"#.to_vec(),
        };
        let mut buf = Vec::new();
        op.encode_with(Some((42, &q)), &mut buf);
        assert_eq!(buf[8], 2, "record type 2");
        assert_eq!(
            PointsOp::decode_record(&buf[8..]),
            Some((op.clone(), Some((42, q))))
        );
        assert_eq!(PointsOp::decode_record(&buf[8..buf.len() - 1]), None);
        // A type-1 record, byte for byte as binaries before integrations wrote it.
        let mut old = vec![1u8];
        old.extend_from_slice(op.device.as_bytes());
        old.extend_from_slice(&[3, b'h', b'o', b't']);
        old.extend_from_slice(&1u32.to_be_bytes());
        old.extend_from_slice(&5i64.to_be_bytes());
        old.extend_from_slice(&1u32.to_be_bytes());
        old.extend_from_slice(&[1, b'a']);
        let mut v = Vec::new();
        encode_value(&mut v, &Value::Double(1.5));
        old.extend_from_slice(&(v.len() as u32).to_be_bytes());
        old.extend_from_slice(&v);
        assert_eq!(PointsOp::decode_record(&old), Some((op.clone(), None)));
        let mut new = Vec::new();
        op.encode(&mut new);
        assert_eq!(
            &new[8..],
            &old[..],
            "without queue entries the old format is written"
        );
    }

    fn records(n: i64) -> Vec<u8> {
        let mut buf = Vec::new();
        for v in 0..n {
            PointsOp {
                device: DeviceId::new(),
                tag: "default".into(),
                points: vec![(v, vec![("t".into(), Value::Long(v))])],
            }
            .encode(&mut buf);
        }
        buf
    }

    #[test]
    fn scan_tells_a_torn_tail_from_damage_followed_by_records() {
        let whole = records(10);
        let one = whole.len() / 10;
        let clean = scan(&whole);
        assert_eq!(clean.records.len(), 10);
        assert_eq!((clean.damaged.len(), clean.torn_tail), (0, None));

        let torn = scan(&whole[..whole.len() - 3]);
        assert_eq!(torn.records.len(), 9);
        assert_eq!(torn.torn_tail, Some(9 * one));
        assert!(torn.damaged.is_empty());

        // Zeros where the file grew but the data never reached the disk: a torn tail too.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 100]);
        assert_eq!(scan(&zeros).torn_tail, Some(whole.len()));

        // Bytes flipped inside the fourth record: the six after it are still found.
        let mut flipped = whole.clone();
        flipped[3 * one + 12] ^= 0xff;
        let s = scan(&flipped);
        assert_eq!(s.records.len(), 9);
        assert_eq!(s.damaged, vec![(3 * one, one)]);
        assert_eq!(s.torn_tail, None);
    }

    #[test]
    fn a_record_forged_inside_a_value_is_not_taken_for_one_after_a_crash() {
        // What a device could hide in a string value: a whole record with a valid plain checksum.
        let mut forged = Vec::new();
        PointsOp {
            device: DeviceId::new(),
            tag: "default".into(),
            points: vec![(1, vec![("x".into(), Value::Long(666))])],
        }
        .encode(&mut forged);
        // The record that carried it, torn by a crash after the forgery: a length the file does
        // not reach, the start of a payload, then the forged bytes.
        let mut carrier = Vec::new();
        carrier.extend_from_slice(&4000u32.to_be_bytes());
        carrier.extend_from_slice(&[0; 4]);
        carrier.extend_from_slice(&[1; 40]);
        carrier.extend_from_slice(&forged);
        carrier.extend_from_slice(&[b'x'; 30]);

        // In a segment with a salt the forgery does not check out: just a torn tail.
        let mut salted = MAGIC.to_vec();
        salted.extend_from_slice(&[7; 16]);
        salted.extend_from_slice(&carrier);
        let s = scan(&salted);
        assert_eq!(s.records, vec![]);
        assert_eq!(s.damaged, vec![]);
        assert_eq!(s.torn_tail, Some(HEADER_LEN));

        // Without the salt (segments from before it) it reads as damage followed by a record:
        // the start refused, or with --accept-data-loss the forgery replayed.
        let plain = scan(&carrier);
        assert_eq!(plain.records.len(), 1);
        assert_eq!(plain.damaged.len(), 1);
    }

    #[test]
    fn salted_segments_hold_records_and_a_torn_header_holds_nothing() {
        let seg = fuzzing::segment([9; 16], &records(5));
        let s = scan(&seg);
        assert_eq!(
            (s.records.len(), s.damaged.len(), s.torn_tail),
            (5, 0, None)
        );
        assert_eq!(s.body, HEADER_LEN);
        // Another salt: not one record checks out.
        let mut other = seg.clone();
        other[8] ^= 1;
        assert_eq!(scan(&other).records, vec![]);
        for cut in [1, 7, 8, 23] {
            let s = scan(&seg[..cut]);
            assert_eq!((s.records.len(), s.torn_tail), (0, Some(0)), "cut at {cut}");
        }
        let s = scan(&seg[..HEADER_LEN]);
        assert_eq!(
            (s.records.len(), s.damaged.len(), s.torn_tail),
            (0, 0, None)
        );
    }

    fn open(path: &Path) -> Option<crate::store::Store> {
        crate::store::Store::open(
            path,
            crate::store::StoreOptions {
                cache_capacity_bytes: 1 << 20,
                group_commit_delay: std::time::Duration::ZERO,
                ..Default::default()
            },
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
        .ok()
    }

    /// The store lets go of sled shortly after its last handle is dropped.
    fn reopen(path: &Path) -> crate::store::Store {
        for _ in 0..500 {
            if let Some(s) = open(path) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("store did not reopen")
    }

    /// A device record of its own workspace and fleet.
    fn device(name: &str) -> crate::model::Device {
        use crate::model::{FleetId, WorkspaceId};
        crate::model::Device {
            id: DeviceId::new(),
            workspace_id: WorkspaceId::new(),
            fleet_id: FleetId::new(),
            name: name.into(),
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

    #[test]
    fn replay_applies_whole_records_skips_deleted_devices_and_stops_at_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let dev = device("d");
        {
            let s = open(&path).expect("open");
            s.create_device(&dev, &[]).expect("create").expect("unique");
            s.flush_now().expect("flush");
        }
        // What a crash leaves: two whole records, one for a device that no longer exists, and a
        // record cut short by the crash.
        let op = |device, v: i64| PointsOp {
            device,
            tag: "default".into(),
            points: vec![(v, vec![("t".into(), Value::Long(v))])],
        };
        let mut buf = Vec::new();
        op(dev.id, 1).encode(&mut buf);
        op(DeviceId::new(), 2).encode(&mut buf);
        op(dev.id, 3).encode(&mut buf);
        let mut torn = Vec::new();
        op(dev.id, 4).encode(&mut torn);
        buf.extend_from_slice(&torn[..torn.len() - 3]);
        let s = reopen(&path);
        drop(s);
        let wal_dir = path.with_extension("wal");
        std::fs::write(wal_dir.join(format!("{:020}.wal", 999)), &buf).expect("write segment");

        let s = reopen(&path);
        let q = crate::store::RawQuery {
            tag: "default".into(),
            keys: None,
            from: 0,
            to: 10,
            descending: false,
            limit: 100,
            after: None,
        };
        let page = s.raw(dev.id, &q).expect("raw");
        let ts: Vec<i64> = page
            .series
            .iter()
            .flat_map(|(_, ps)| ps.iter().map(|p| p.ts))
            .collect();
        assert_eq!(ts, vec![1, 3], "whole records replayed, the torn one not");
        let left: Vec<_> = segments(&wal_dir)
            .expect("list")
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(
            left,
            vec![1000],
            "replayed segments are removed; a fresh one follows them"
        );
    }

    /// Copies a directory tree: what a power cut leaves on disk, taken while the store runs.
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read dir") {
            let e = e.expect("entry");
            let target = to.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy_tree(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).expect("copy");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_keeps_the_log_of_points_still_waiting_in_memory_until_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let opts = crate::store::StoreOptions {
            cache_capacity_bytes: 1 << 20,
            group_commit_delay: std::time::Duration::ZERO,
            // A checkpoint every few records: many of them, each with points of the device
            // still waiting in memory (they wait until 48 have come).
            checkpoint_bytes: 1024,
            ..Default::default()
        };
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let s = crate::store::Store::open(&path, opts.clone(), metrics.clone()).expect("open");
        let dev = device("d");
        s.create_device(&dev, &[]).expect("create").expect("unique");
        let other = device("other");
        s.create_device(&other, &[])
            .expect("create")
            .expect("unique");
        let put = |device, i: i64| {
            let s = &s;
            async move {
                let op = PointsOp {
                    device,
                    tag: "default".into(),
                    points: vec![(1_000 + i, vec![("t".into(), Value::Long(i))])],
                };
                s.append_points_queued(op, None, true)
                    .await
                    .expect("acknowledged");
            }
        };
        let wal_dir = path.with_extension("wal");
        let newest = || {
            segments(&wal_dir)
                .expect("list")
                .last()
                .map(|(seq, _)| *seq)
        };
        // One point of `dev`: it waits in memory (a device's points wait until 48 have come).
        put(dev.id, 0).await;
        let logged_in = newest().expect("a segment");
        // The other device's points until a checkpoint has begun a new segment since.
        let mut i = 0;
        while newest() == Some(logged_in) {
            i += 1;
            assert!(i < 1_000, "no checkpoint");
            put(other.id, i).await;
        }
        // The checkpoint's flush and deletions are done once a commit after it is.
        s.commit().await.expect("commit");
        let image = tempfile::tempdir().expect("tempdir");
        copy_tree(dir.path(), image.path());
        let in_image = i;
        assert!(
            segments(&image.path().join("store.wal"))
                .expect("list")
                .iter()
                .any(|(seq, _)| *seq == logged_in),
            "the segment that logged the waiting point is kept"
        );
        // The writer's next groups write the waiting point, and a later checkpoint drops
        // its segment: the log does not grow for a device that went quiet.
        while segments(&wal_dir)
            .expect("list")
            .iter()
            .any(|(seq, _)| *seq == logged_in)
        {
            i += 1;
            assert!(
                i < 5_000,
                "the segment of a quiet device's point is never dropped"
            );
            put(other.id, i).await;
            s.commit().await.expect("commit");
        }
        drop(s);

        // Every acknowledged point is there after the "power cut": those in sled, and those
        // that were waiting in memory, from the segments the checkpoints kept.
        let r = crate::store::Store::open(&image.path().join("store"), opts, metrics)
            .expect("reopen the image");
        let q = crate::store::RawQuery {
            tag: "default".into(),
            keys: None,
            from: 0,
            to: 10_000,
            descending: false,
            limit: 1_000,
            after: None,
        };
        let values = |d: DeviceId| -> Vec<i64> {
            r.raw(d, &q)
                .expect("raw")
                .series
                .iter()
                .flat_map(|(_, ps)| ps.iter().map(|p| p.ts - 1_000))
                .collect()
        };
        assert_eq!(values(dev.id), vec![0], "the point that waited in memory");
        assert_eq!(values(other.id), (1..=in_image).collect::<Vec<_>>());
    }
}
