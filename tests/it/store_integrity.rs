//! The store refuses to lie, on the real binary: a truncated, bit-flipped, emptied or missing
//! store, a missing CA and a write-ahead log damaged in the middle are refused with a non-zero
//! exit and a message that says what to do; `--accept-data-loss` goes on with what is left; a
//! snapshot file a failed start left behind is cleaned up; a torn log tail after `kill -9` is
//! normal and replays; and device data is refused, not half-stored, when free space runs low.

use crate::common;

use std::path::Path;

use common::device_data::{BASE_TS, make_device, stored_longs};
use common::server::{Server, refused_start};
use serde_json::{Value, json};

fn key() -> String {
    corral::auth::new_api_key()
}

/// Posts `seq` values `range` through the HTTP device API; returns the HTTP statuses.
async fn publish(srv: &Server, token: &str, range: std::ops::Range<i64>) -> Vec<u16> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for seq in range {
        let r = http
            .post(format!("{}/api/v1/{token}/telemetry", srv.base()))
            .json(&json!({"ts": BASE_TS + seq, "values": {"seq": seq}}))
            .send()
            .await
            .expect("post");
        out.push(r.status().as_u16());
    }
    out
}

/// How many `seq` points the device has.
async fn stored(srv: &Server, key: &str, device: &str) -> usize {
    stored_longs(&srv.base(), key, device, "seq").await.len()
}

/// A data directory whose store holds one device with 200 acknowledged points, stopped cleanly.
/// Returns (device id, token).
async fn populated(data: &Path, key: &str) -> (String, String) {
    let mut srv = Server::spawn(data, key);
    let (device, token) = make_device(&srv.base(), key).await;
    assert!(
        publish(&srv, &token, 0..200)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    assert!(srv.terminate().success(), "clean stop");
    (device, token)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn flip(path: &Path, at_fraction: f64, bytes: usize) {
    let mut b = std::fs::read(path).expect("read");
    let at = (b.len() as f64 * at_fraction) as usize;
    for x in b.iter_mut().skip(at).take(bytes) {
        *x ^= 0x5a;
    }
    std::fs::write(path, b).expect("write");
}

/// Asserts a refusal that names the problem and both ways out.
fn assert_refused(data: &Path, key: &str, what: &str) {
    let (code, err) = refused_start(data, key, &[], &[]);
    assert_eq!(code, Some(1), "{what}: exit code; stderr:\n{err}");
    assert!(err.contains("damaged or missing"), "{what}: {err}");
    assert!(err.contains("--accept-data-loss"), "{what}: {err}");
    assert!(err.contains("corral restore"), "{what}: {err}");
    assert!(
        !err.contains("corral is running"),
        "{what}: it must not have served: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_missing_stores_are_refused_and_accept_data_loss_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key();
    let good = dir.path().join("good");
    let (device, _) = populated(&good, &key).await;
    let db_len = std::fs::metadata(good.join("store/db")).expect("db").len();

    // Each case starts from a copy of the same good directory.
    type Damage = fn(&Path, u64);
    let cases: &[(&str, Damage)] = &[
        ("truncated to half", |d, len| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("store/db"))
                .expect("open")
                .set_len(len / 2)
                .expect("truncate");
        }),
        ("truncated to nothing", |d, _| {
            std::fs::write(d.join("store/db"), b"").expect("empty");
        }),
        ("bytes flipped in the middle", |d, _| {
            for f in [0.45, 0.5, 0.55, 0.6] {
                flip(&d.join("store/db"), f, 16);
            }
        }),
        ("one byte flipped at a quarter", |d, _| {
            flip(&d.join("store/db"), 0.25, 1)
        }),
        ("store deleted, PKI and log kept", |d, _| {
            std::fs::remove_dir_all(d.join("store")).expect("rm");
        }),
        ("store and its records deleted, PKI kept", |d, _| {
            std::fs::remove_dir_all(d.join("store")).expect("rm");
            std::fs::remove_dir_all(d.join("store.wal")).expect("rm");
            std::fs::remove_file(d.join("store.state")).expect("rm");
        }),
    ];
    for (i, (what, damage)) in cases.iter().enumerate() {
        let data = dir.path().join(format!("case{i}"));
        copy_dir(&good, &data);
        damage(&data, db_len);
        assert_refused(&data, &key, what);
        // Refusing changed nothing: a second start is refused the same way.
        assert_refused(&data, &key, what);
    }

    // A missing CA is refused too: a new one would strand every device certificate.
    let data = dir.path().join("no-pki");
    copy_dir(&good, &data);
    std::fs::remove_dir_all(data.join("pki")).expect("rm pki");
    let (code, err) = refused_start(&data, &key, &[], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no CA") && err.contains("--accept-data-loss"),
        "{err}"
    );
    assert!(!data.join("pki/ca.pem").exists(), "no CA was made");

    // The good directory itself still opens, with everything in it.
    let srv = Server::spawn(&good, &key);
    assert_eq!(stored(&srv, &key, &device).await, 200);
    drop(srv);

    // --accept-data-loss goes on with what is left and says so; the next plain start is
    // accepted (the damage is now the store's accepted state).
    let data = dir.path().join("case0");
    let mut srv = Server::spawn_args(&data, &key, &["--accept-data-loss"], &[]);
    assert!(
        srv.startup_logs
            .iter()
            .any(|l| l.contains("--accept-data-loss") && l.contains("WARN")),
        "{:#?}",
        srv.startup_logs
    );
    let left = stored(&srv, &key, &device).await;
    assert!(srv.terminate().success());
    let srv = Server::spawn(&data, &key);
    assert_eq!(stored(&srv, &key, &device).await, left);
    drop(srv);

    // A store that cannot be read at all is set aside, never deleted.
    let data = dir.path().join("case1");
    let srv = Server::spawn_args(&data, &key, &["--accept-data-loss"], &[]);
    let aside: Vec<_> = std::fs::read_dir(&data)
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged store is kept aside");
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_left_by_a_failed_start_is_cleaned_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key();
    let data = dir.path().join("data");
    let (device, _) = populated(&data, &key).await;
    // What a start that ran out of disk space while writing its snapshot leaves behind.
    std::fs::write(data.join("store/snap.00000000DEADBEEF.generating"), b"").expect("write");
    let srv = Server::spawn(&data, &key);
    assert_eq!(stored(&srv, &key, &device).await, 200);
    assert!(!data.join("store/snap.00000000DEADBEEF.generating").exists());
}

/// The newest WAL segment of a data directory.
fn last_segment(data: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(data.join("store.wal"))
        .expect("wal")
        .flatten()
        .map(|e| e.path())
        // A segment holds a 24-byte header before its records.
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 24).unwrap_or(false))
        .collect();
    segs.sort();
    segs.pop().expect("a segment with records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_replays_and_damage_inside_the_log_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key();
    let data = dir.path().join("data");
    let mut srv = Server::spawn(&data, &key);
    let (device, token) = make_device(&srv.base(), &key).await;
    assert!(
        publish(&srv, &token, 0..300)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    srv.kill9();
    let seg = last_segment(&data);
    let backup = dir.path().join("killed");
    copy_dir(&data, &backup);

    // A record cut short at the end is what a crash leaves: it was never acknowledged.
    let len = std::fs::metadata(&seg).expect("seg").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(len - 5)
        .expect("tear");
    let mut srv = Server::spawn(&data, &key);
    let n = stored(&srv, &key, &device).await;
    assert!(n >= 299, "every whole record replays ({n})");
    assert!(srv.terminate().success());

    // Damage in the middle: acknowledged records follow it, so the start is refused.
    let data = dir.path().join("flipped");
    copy_dir(&backup, &data);
    flip(&last_segment(&data), 0.5, 8);
    let (code, err) = refused_start(&data, &key, &[], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("write-ahead log is damaged"), "{err}");
    // Salvage: every readable record around the damage, the segment copied aside first.
    let srv = Server::spawn_args(&data, &key, &["--accept-data-loss"], &[]);
    assert!(stored(&srv, &key, &device).await >= 299);
    assert!(
        std::fs::read_dir(&data)
            .expect("list")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("damaged-")),
        "the damaged segment is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_data_is_refused_whole_when_free_space_runs_low() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let free_mib = fs2::available_space(&data).expect("statvfs") >> 20;
    // A reserve above what is free, but under twice it: the start (which needs half) succeeds,
    // and every device write is then refused.
    let reserve = (free_mib + free_mib / 3 + 64).to_string();
    let mut srv = Server::spawn_with(&data, &key, &[("CORRAL_STORE__MIN_FREE_MB", &reserve)]);
    let (device, token) = make_device(&srv.base(), &key).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/{token}/telemetry", srv.base()))
        .json(&json!({"ts": BASE_TS, "values": {"seq": 0}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 507);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|m| m.contains("not stored") && m.contains("min_free_mb")),
        "{body}"
    );

    assert_eq!(
        stored(&srv, &key, &device).await,
        0,
        "refused means not stored"
    );
    assert!(srv.terminate().success());

    // With room again (a smaller reserve), the same device is accepted.
    let srv = Server::spawn(&data, &key);
    assert_eq!(publish(&srv, &token, 0..5).await, vec![200; 5]);
    assert_eq!(stored(&srv, &key, &device).await, 5);
}

/// A whole WAL record in the format of segments without a salt, built the way a device could
/// build it, every byte ASCII so that it fits in a JSON string value.
fn forged_record() -> Vec<u8> {
    for attempt in 0u32.. {
        let mut payload = vec![1u8]; // record type: points
        payload.extend_from_slice(&[0x41; 16]); // a device id
        payload.push(7);
        payload.extend_from_slice(b"default");
        payload.extend_from_slice(&1u32.to_be_bytes());
        payload.extend_from_slice(&1_000_000i64.to_be_bytes());
        payload.extend_from_slice(&1u32.to_be_bytes());
        let key = format!("k{attempt}");
        payload.push(key.len() as u8);
        payload.extend_from_slice(key.as_bytes());
        payload.extend_from_slice(&9u32.to_be_bytes());
        payload.push(1); // a long
        payload.extend_from_slice(&100i64.to_be_bytes());
        let mut rec = (payload.len() as u32).to_be_bytes().to_vec();
        rec.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        rec.extend_from_slice(&payload);
        if rec.iter().all(|b| b.is_ascii()) {
            return rec;
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_forged_in_a_value_and_torn_by_a_crash_does_not_stop_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key();
    let data = dir.path().join("data");
    let mut srv = Server::spawn(&data, &key);
    let (device, token) = make_device(&srv.base(), &key).await;
    assert!(publish(&srv, &token, 0..20).await.iter().all(|s| *s == 200));
    // The forgery, with more text after it so that the record carrying it can be torn after it.
    let forged = forged_record();
    let text = format!(
        "{}{}",
        String::from_utf8(forged.clone()).expect("ascii"),
        "z".repeat(64)
    );
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/{token}/telemetry", srv.base()))
        .json(&json!({"ts": BASE_TS + 100, "values": {"note": text}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    srv.kill9();

    // The crash tore the carrying record just after the forgery.
    let seg = last_segment(&data);
    let bytes = std::fs::read(&seg).expect("read");
    let at = bytes
        .windows(forged.len())
        .rposition(|w| w == forged.as_slice())
        .expect("the forgery is in the log");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len((at + forged.len() + 5) as u64)
        .expect("tear");

    // A torn tail, nothing more: the start goes on and every earlier record is there.
    let srv = Server::spawn(&data, &key);
    assert_eq!(stored(&srv, &key, &device).await, 20);
}
