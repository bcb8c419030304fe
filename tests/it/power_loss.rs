//! Power loss, not only `kill -9`: the real binary runs with its data directory on lazyfs
//! (`tests/power_loss/lazyfs.py`, a FUSE file system that keeps written data in its own page
//! cache until the file is fsynced), devices publish QoS 1 over TLS, and the power is cut: the
//! file system process is killed first, so nothing more becomes durable, then Corral. A Corral
//! started on the backing directory (the "disk", no FUSE) must open the store without calling it
//! damaged and hold every acknowledged message. `kill -9` alone keeps the OS page cache, so it
//! never tests that the `fdatasync`s are the right ones; this does.
//!
//! Ignored by default: it needs root, /dev/fuse, Debian's `fuse` and `libfuse2`, and the Python
//! package `fusepy`. CI runs it with `--ignored` (see `.ci/run`).

use crate::common;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::device_data::{BASE_TS, admin, stored_longs};
use common::server::Server;
use common::tls_transport;
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Value, json};

const DEVICES: usize = 4;
/// Settings for every start: a small free-space reserve (statfs reports the backing disk).
const ENV: &[(&str, &str)] = &[("CORRAL_STORE__MIN_FREE_MB", "1")];

/// A lazyfs mount of `backing` on `at`. Dropping it without a cut still kills and unmounts.
struct Mount {
    fs: Child,
    at: PathBuf,
    cut: bool,
}

fn mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    let needle = format!(" {} fuse", at.display());
    mounts.lines().any(|l| l.contains(&needle))
}

impl Mount {
    fn new(backing: &Path, at: &Path) -> Mount {
        std::fs::create_dir_all(backing).expect("backing dir");
        std::fs::create_dir_all(at).expect("mount point");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/power_loss/lazyfs.py");
        let mut fs = Command::new("python3")
            .arg(&script)
            .arg(backing)
            .arg(at)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("run python3 tests/power_loss/lazyfs.py (needs python3 with fusepy)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !mounted(at) {
            if let Some(status) = fs.try_wait().expect("wait lazyfs") {
                panic!(
                    "lazyfs exited ({status}) before mounting: it needs /dev/fuse, root, Debian's \
                     fuse and libfuse2 and the Python package fusepy"
                );
            }
            assert!(
                Instant::now() < deadline,
                "lazyfs did not mount within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount {
            fs,
            at: at.to_path_buf(),
            cut: false,
        }
    }

    /// The power cut: the file system first (its page cache is gone, nothing more can become
    /// durable), then Corral, then the mount, lazily (Corral may have had requests in flight).
    fn cut(mut self, server: Option<Server>) {
        self.fs.kill().expect("SIGKILL lazyfs");
        self.fs.wait().expect("reap lazyfs");
        if let Some(mut srv) = server {
            srv.kill9();
        }
        let status = Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status()
            .expect("umount");
        assert!(status.success(), "umount -l {}", self.at.display());
        self.cut = true;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.cut {
            let _ = self.fs.kill();
            let _ = self.fs.wait();
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

#[test]
#[ignore = "needs FUSE (root, /dev/fuse, libfuse2, fusepy); CI runs it"]
fn lazyfs_loses_what_was_not_fsynced_and_keeps_what_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
    let m = Mount::new(&disk, &mnt);
    let write = |name: &str, body: &[u8], sync: bool| {
        let mut f = std::fs::File::create(mnt.join(name)).expect("create");
        f.write_all(body).expect("write");
        if sync {
            f.sync_data().expect("fdatasync");
        }
    };
    write("unsynced", b"never synced", false);
    write("synced", b"synced", true);
    write("grown", b"old", true);
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("grown"))
            .expect("open");
        f.write_all(b"+appended, not synced").expect("append");
    }
    std::fs::create_dir(mnt.join("sub")).expect("mkdir");
    write("sub/renamed.tmp", b"synced, then renamed", true);
    std::fs::rename(mnt.join("sub/renamed.tmp"), mnt.join("sub/renamed")).expect("rename");
    // Before the cut, the mount shows everything written.
    assert_eq!(
        std::fs::read(mnt.join("unsynced")).expect("read"),
        b"never synced"
    );
    assert_eq!(
        std::fs::read(mnt.join("grown")).expect("read"),
        b"old+appended, not synced"
    );
    m.cut(None);
    let read = |name: &str| std::fs::read(disk.join(name)).expect("read backing");
    assert_eq!(
        read("unsynced"),
        b"",
        "unsynced data must not survive a cut"
    );
    assert_eq!(read("synced"), b"synced");
    assert_eq!(read("grown"), b"old", "an unsynced append must not survive");
    assert_eq!(read("sub/renamed"), b"synced, then renamed");
}

/// Publishes QoS 1 from `first` on, pipelined, until the connection dies; records which
/// sequence numbers the server acknowledged.
fn publish(
    srv: &Server,
    token: &str,
    first: i64,
    acked: Acked,
) -> [tokio::task::JoinHandle<()>; 2] {
    let mut opts = MqttOptions::new("", "127.0.0.1", srv.mqtt_tls.port());
    opts.set_credentials(token, "");
    opts.set_transport(tls_transport(&srv.ca_pem()));
    opts.set_inflight(16);
    let (client, mut el) = AsyncClient::new(opts, 32);
    let order = Arc::new(Mutex::new(VecDeque::new()));
    let order_pub = order.clone();
    let publisher = tokio::spawn(async move {
        let mut seq = first;
        loop {
            order_pub.lock().expect("lock").push_back(seq);
            let body = json!({"ts": BASE_TS + seq, "values": {"seq": seq}}).to_string();
            if client
                .publish("v1/devices/me/telemetry", QoS::AtLeastOnce, false, body)
                .await
                .is_err()
            {
                return;
            }
            seq += 1;
        }
    });
    let events = tokio::spawn(async move {
        let mut by_pkid: HashMap<u16, i64> = HashMap::new();
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(seq) = order.lock().expect("lock").pop_front() {
                        by_pkid.insert(pkid, seq);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    if let Some(seq) = by_pkid.remove(&a.pkid) {
                        acked.lock().expect("lock").insert(seq);
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    [publisher, events]
}

/// The sequence numbers the server acknowledged, for one device.
type Acked = Arc<Mutex<BTreeSet<i64>>>;

/// How a round ends.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The power goes this long after the devices start publishing.
    MidIngest(Duration),
    /// A clean stop (SIGTERM) while the devices publish, then the power goes at once: the final
    /// checkpoint deleted the log, so the store itself must have been made durable.
    AfterCleanStop(Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs FUSE (root, /dev/fuse, libfuse2, fusepy); CI runs it"]
async fn every_acknowledged_message_survives_a_power_cut() {
    corral::pki::install_crypto_provider();
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
    let key = corral::auth::new_api_key();
    let seed: u64 = rand::random();
    eprintln!("cut schedule seed: {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut jitter =
        |base: u64, spread: u64| Duration::from_millis(base + rng.random_range(0..spread));
    let cuts = [
        // A new store: its first files, the devices just created.
        Cut::MidIngest(jitter(1000, 1000)),
        // Shortly after a start: the WAL replayed and the store flushed moments ago.
        Cut::MidIngest(jitter(100, 200)),
        Cut::AfterCleanStop(jitter(800, 800)),
        Cut::MidIngest(jitter(1500, 1500)),
    ];

    // (id, token, acknowledged seqs) per device
    let mut devices: Vec<(String, String, Acked)> = Vec::new();
    let mut totals = Vec::new();
    for (round, cut) in cuts.iter().enumerate() {
        let m = Mount::new(&disk, &mnt);
        let mut srv = Server::spawn_with(&mnt.join("data"), &key, ENV);
        if devices.is_empty() {
            let api = admin(&srv.base(), &key);
            let ws: Value = api
                .post("/workspaces", &json!({"name": "power"}))
                .await
                .expect("ws");
            let fleet: Value = api
                .post("/fleets", &json!({"workspace_id": ws["id"], "name": "f"}))
                .await
                .expect("fleet");
            for i in 0..DEVICES {
                let d: Value = api
                    .post(
                        "/devices",
                        &json!({"fleet_id": fleet["id"], "name": format!("d{i}")}),
                    )
                    .await
                    .expect("device");
                devices.push((
                    d["device"]["id"].as_str().expect("id").into(),
                    d["credentials"]["token"].as_str().expect("token").into(),
                    Arc::default(),
                ));
            }
        }
        let before: usize = devices
            .iter()
            .map(|d| d.2.lock().expect("lock").len())
            .sum();
        let first = round as i64 * 1_000_000; // keep rounds apart
        let tasks: Vec<_> = devices
            .iter()
            .flat_map(|(_, token, acked)| publish(&srv, token, first, acked.clone()))
            .collect();
        match *cut {
            Cut::MidIngest(after) => {
                tokio::time::sleep(after).await;
                m.cut(Some(srv));
            }
            Cut::AfterCleanStop(after) => {
                tokio::time::sleep(after).await;
                let (status, srv) = tokio::task::spawn_blocking(move || (srv.terminate(), srv))
                    .await
                    .expect("join");
                assert!(status.success(), "clean stop on lazyfs: {status:?}");
                m.cut(Some(srv));
            }
        }
        for t in tasks {
            t.abort();
        }
        let acked: usize = devices
            .iter()
            .map(|d| d.2.lock().expect("lock").len())
            .sum();
        let this_round = acked - before;

        // After the power comes back: Corral on the disk itself.
        let check = match Server::start_or_exit(&disk.join("data"), &key, ENV) {
            Ok(s) => s,
            Err((code, logs)) => panic!(
                "round {round} ({cut:?}): corral refused the store after a power cut (exit \
                 {code:?}):\n{logs}"
            ),
        };
        let damaged: Vec<_> = check
            .startup_logs
            .iter()
            .filter(|l| l.contains("damaged"))
            .collect();
        assert!(damaged.is_empty(), "round {round}: {damaged:?}");
        let mut lost = 0;
        let mut examples = Vec::new();
        for (id, _, acked) in &devices {
            let stored = stored_longs(&check.base(), &key, id, "seq").await;
            let acked = acked.lock().expect("lock").clone();
            let missing: Vec<i64> = acked.difference(&stored).copied().collect();
            lost += missing.len();
            examples.extend(missing.into_iter().take(3));
        }
        eprintln!(
            "round {round} ({cut:?}): {this_round} messages acknowledged, {acked} in all, {lost} lost"
        );
        assert_eq!(
            lost, 0,
            "round {round} ({cut:?}): acknowledged messages lost after a power cut, e.g. {examples:?}"
        );
        assert!(
            round == 1 || this_round > 0,
            "round {round}: nothing was acknowledged before the cut"
        );
        totals.push(this_round);
        let mut check = check;
        let status = tokio::task::spawn_blocking(move || check.terminate())
            .await
            .expect("join");
        assert!(status.success(), "clean stop on the disk: {status:?}");
    }
    eprintln!(
        "{} cuts, acknowledged per cut {totals:?}, none lost, in {:.1} s",
        cuts.len(),
        started.elapsed().as_secs_f64()
    );
}
