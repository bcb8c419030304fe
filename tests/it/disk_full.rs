//! A full disk, for real, on the real binary: the data directory lives on a small file system
//! (CI mounts a tmpfs of a few MiB and names it in `CORRAL_TEST_SMALL_FS`). Checks that nothing
//! acknowledged is lost, nothing refused is stored, SIGTERM on a full disk ends in bounded
//! time, a start attempted while the disk is still full does not brick the store, and the
//! free-space reserve refuses device data before the disk fills.
//!
//! The tests are `#[ignore]`d because they need that file system: `.ci/run` mounts it and runs
//! `cargo test --test it -- --ignored disk_full::`.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::device_data::{BASE_TS, make_device, stored_longs};
use common::server::{Server, refused_start};
use serde_json::json;

/// A directory on the small file system, removed again when dropped: the tests share it and
/// run one at a time (`--test-threads 1`).
struct SmallDir(PathBuf);

impl Drop for SmallDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small_fs(name: &str) -> SmallDir {
    let root = std::env::var_os("CORRAL_TEST_SMALL_FS")
        .expect("CORRAL_TEST_SMALL_FS must name a directory on a small file system (see .ci/run)");
    let dir = Path::new(&root).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir on the small file system");
    SmallDir(dir)
}

/// Takes `mib` of the file system now, to be given back later with `remove_file`.
fn ballast(dir: &Path, name: &str, mib: usize) -> PathBuf {
    let path = dir.join(format!("ballast-{name}"));
    std::fs::write(&path, vec![1u8; mib << 20]).expect("ballast");
    path
}

/// Posts 16 KiB messages, `seq` from `first` on, until `refusals` in a row are refused; returns
/// (acknowledged, refused).
async fn fill(
    srv: &Server,
    token: &str,
    first: i64,
    refusals: usize,
) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let pad = "x".repeat(16 << 10);
    let (mut acked, mut refused) = (BTreeSet::new(), BTreeSet::new());
    let mut in_a_row = 0;
    for seq in first..first + 100_000 {
        let r = http
            .post(format!("{}/api/v1/{token}/telemetry", srv.base()))
            .json(&json!({"ts": BASE_TS + seq, "values": {"seq": seq, "pad": pad}}))
            .send()
            .await
            .expect("post");
        if r.status().is_success() {
            acked.insert(seq);
            in_a_row = 0;
        } else {
            assert!(
                r.status().is_server_error(),
                "a full disk is the server's problem: {}",
                r.status()
            );
            refused.insert(seq);
            in_a_row += 1;
            if in_a_row == refusals {
                break;
            }
        }
    }
    assert!(!acked.is_empty() && !refused.is_empty());
    (acked, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a small file system: CORRAL_TEST_SMALL_FS (see .ci/run)"]
async fn a_full_disk_loses_nothing_acknowledged_and_never_bricks_the_store() {
    let root = small_fs("full");
    let data = root.0.join("data");
    let ballast = [ballast(&root.0, "a", 3), ballast(&root.0, "b", 3)];
    let key = corral::auth::new_api_key();
    // No reserve: the disk really fills.
    let env = [("CORRAL_STORE__MIN_FREE_MB", "0")];
    let mut srv = Server::spawn_with(&data, &key, &env);
    let (device, token) = make_device(&srv.base(), &key).await;
    let (mut acked, mut refused) = fill(&srv, &token, 0, 20).await;

    // SIGTERM on a full disk ends, in bounded time (D5).
    let started = Instant::now();
    let _ = srv.terminate();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "SIGTERM took {:?}",
        started.elapsed()
    );
    starts_while_full(&data, &key, &env);
    std::fs::remove_file(&ballast[0]).expect("free space");
    let mut srv = Server::spawn_with(&data, &key, &env);
    check(&srv, &key, &device, &acked, &refused).await;

    // Full again, then killed (D1's reproducer): the log to replay is on the full disk.
    let next = refused.last().copied().unwrap_or_default() + 1;
    let (more_acked, more_refused) = fill(&srv, &token, next, 20).await;
    acked.extend(more_acked);
    refused.extend(more_refused);
    srv.kill9();
    starts_while_full(&data, &key, &env);
    std::fs::remove_file(&ballast[1]).expect("free space");
    let srv = Server::spawn_with(&data, &key, &env);
    check(&srv, &key, &device, &acked, &refused).await;
}

/// Starts attempted while the disk is full, as a restart policy makes them. Whatever the stop
/// before freed is taken by a filler file first, given back at the end.
fn starts_while_full(data: &Path, key: &str, env: &[(&str, &str)]) {
    let filler = data.with_file_name("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![2u8; 4 << 10];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    }
    // With a reserve configured (as by default): refused, with the reason.
    let (code, err) = refused_start(data, key, &[], &[("CORRAL_STORE__MIN_FREE_MB", "6")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not enough free disk space"), "{err}");
    // Without one: they may fail or even run, but must leave nothing behind that fails the
    // starts after them (sled's half-written snapshot did).
    for _ in 0..2 {
        match Server::start_or_exit(data, key, env) {
            Ok(mut running) => running.kill9(),
            Err((code, log)) => {
                assert_eq!(code, Some(1), "{log}");
                assert!(log.contains("disk space"), "the reason is given: {log}");
            }
        }
    }
    std::fs::remove_file(&filler).expect("remove filler");
}

/// Everything acknowledged is there, and nothing refused.
async fn check(
    srv: &Server,
    key: &str,
    device: &str,
    acked: &BTreeSet<i64>,
    refused: &BTreeSet<i64>,
) {
    let have = stored_longs(&srv.base(), key, device, "seq").await;
    let lost: Vec<_> = acked.difference(&have).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let stored_anyway: Vec<_> = refused.intersection(&have).collect();
    assert!(
        stored_anyway.is_empty(),
        "refused but stored anyway: {stored_anyway:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a small file system: CORRAL_TEST_SMALL_FS (see .ci/run)"]
async fn the_reserve_refuses_device_data_before_the_disk_fills() {
    let root = small_fs("reserve");
    let data = root.0.join("data");
    let key = corral::auth::new_api_key();
    let env = [("CORRAL_STORE__MIN_FREE_MB", "6")];
    let mut srv = Server::spawn_with(&data, &key, &env);
    let (device, token) = make_device(&srv.base(), &key).await;
    let (acked, refused) = fill(&srv, &token, 0, 5).await;
    // Refused early, so the store still had room for a clean stop.
    assert!(
        srv.terminate().success(),
        "a clean stop with the reserve kept"
    );
    let srv = Server::spawn_with(&data, &key, &env);
    let have = stored_longs(&srv.base(), &key, &device, "seq").await;
    assert_eq!(have, acked, "exactly the acknowledged messages");
    assert!(refused.intersection(&have).next().is_none());
}
