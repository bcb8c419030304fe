//! Online backups on the real binary: ten devices publish QoS 1 over TLS as fast as they can
//! while `corral backup FILE` runs; `corral backup verify` passes; `corral restore` makes a
//! data directory whose store holds every message acknowledged before the backup began, and no
//! half-written one; a truncated or altered file fails `verify` with a clear message. Also the
//! snapshot taken before a schema migration.

use crate::common;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::device_data::{BASE_TS, admin, stored_longs};
use common::server::{Server, bin};
use common::tls_transport;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Value, json};

const DEVICES: usize = 10;

/// Publishes QoS 1 as fast as the window allows until `stop`; records acknowledged seqs.
fn publisher(
    srv: &Server,
    token: &str,
    acked: Arc<Mutex<BTreeSet<i64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let mut opts = MqttOptions::new("", "127.0.0.1", srv.mqtt_tls.port());
    opts.set_credentials(token, "");
    opts.set_transport(tls_transport(&srv.ca_pem()));
    opts.set_inflight(16);
    let (client, mut el) = AsyncClient::new(opts, 32);
    let order = Arc::new(Mutex::new(VecDeque::new()));
    let order_pub = order.clone();
    tokio::spawn(async move {
        let mut seq = 0i64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            order_pub.lock().expect("lock").push_back(seq);
            let body = json!({"ts": BASE_TS + seq, "values": {"seq": seq, "twin": seq}});
            if client
                .publish(
                    "v1/devices/me/telemetry",
                    QoS::AtLeastOnce,
                    false,
                    body.to_string(),
                )
                .await
                .is_err()
            {
                return;
            }
            seq += 1;
        }
        let _ = client.disconnect().await;
    });
    tokio::spawn(async move {
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
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
}

fn corral(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run corral")
}

/// `corral restore FILE DIR`.
fn restore(file: &std::path::Path, dir: &std::path::Path) -> std::process::Output {
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    corral(&["restore", &path(file), &path(dir)], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_ten_devices_publish_restores_everything_acknowledged_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn(&dir.path().join("data"), &key);
    let api = admin(&srv.base(), &key);
    let ws: Value = api
        .post("/workspaces", &json!({"name": "w"}))
        .await
        .expect("ws");
    let fleet: Value = api
        .post("/fleets", &json!({"workspace_id": ws["id"], "name": "f"}))
        .await
        .expect("fleet");
    // A dashboard: its store area is in the backup like every other.
    let dashboard: Value = api
        .post(
            "/dashboards",
            &json!({"workspace_id": ws["id"], "fleet_id": fleet["id"], "name": "kept",
                "widgets": [{"kind": "map", "title": "where"}]}),
        )
        .await
        .expect("dashboard");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut devices = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..DEVICES {
        let d: Value = api
            .post(
                "/devices",
                &json!({"fleet_id": fleet["id"], "name": format!("d{i}")}),
            )
            .await
            .expect("device");
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let token = d["credentials"]["token"].as_str().expect("token");
        tasks.push(publisher(&srv, token, acked.clone(), stop.clone()));
        devices.push((d["device"]["id"].as_str().expect("id").to_string(), acked));
    }
    // Let the publishers get going, then take the backup while they keep going.
    common::eventually(30, || async {
        devices
            .iter()
            .all(|(_, a)| a.lock().expect("lock").len() >= 200)
            .then_some(())
    })
    .await;
    let before: Vec<BTreeSet<i64>> = devices
        .iter()
        .map(|(_, a)| a.lock().expect("lock").clone())
        .collect();
    let file = dir.path().join("b.tar");
    let file_s = file.to_str().expect("utf-8").to_string();
    let base = srv.base();
    let out = tokio::task::spawn_blocking({
        let key = key.clone();
        move || {
            corral(
                &["backup", &file_s],
                &[("CORRAL_SERVER", &base), ("CORRAL_API_KEY", &key)],
            )
        }
    })
    .await
    .expect("join");
    let after: usize = devices
        .iter()
        .map(|(_, a)| a.lock().expect("lock").len())
        .sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    assert!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked_before: usize = before.iter().map(BTreeSet::len).sum();
    assert!(
        after > acked_before,
        "the devices kept publishing during the backup ({acked_before} → {after})"
    );

    let verify = corral(&["backup", "verify", file.to_str().expect("utf-8")], &[]);
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(said.contains(&format!("{DEVICES} devices")), "{said}");

    let restored = dir.path().join("restored");
    let out = restore(&file, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(restored.join("pki/ca.pem")).expect("ca"),
        std::fs::read(dir.path().join("data/pki/ca.pem")).expect("ca"),
        "the same CA, so device certificates keep working"
    );
    drop(srv);
    let srv = Server::spawn(&restored, &key);
    let back: Value = admin(&srv.base(), &key)
        .get(
            &format!("/dashboards/{}", dashboard["id"].as_str().expect("id")),
            &[],
        )
        .await
        .expect("the dashboard is restored");
    assert_eq!(back, dashboard);
    for ((device, _), before) in devices.iter().zip(&before) {
        let seq = stored_longs(&srv.base(), &key, device, "seq").await;
        let twin = stored_longs(&srv.base(), &key, device, "twin").await;
        let missing: Vec<_> = before.difference(&seq).collect();
        assert!(
            missing.is_empty(),
            "acknowledged before the backup, missing: {missing:?}"
        );
        assert_eq!(seq, twin, "no message is half there");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_altered_backups_fail_verify_and_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn(&dir.path().join("data"), &key);
    let api = admin(&srv.base(), &key);
    let _: Value = api
        .post("/workspaces", &json!({"name": "w"}))
        .await
        .expect("ws");
    // A package: its file is carried in the backup, streamed.
    let image: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let http = reqwest::Client::new();
    let package: Value = http
        .post(format!("{}/api/v1/packages", srv.base()))
        .bearer_auth(&key)
        .query(&[("title", "valve-fw"), ("version", "1.0")])
        .body(image.clone())
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let sha = package["sha256"].as_str().expect("sha256").to_string();
    // The REST route is for server administrators only.
    let anon = reqwest::get(format!("{}/api/v1/backup", srv.base()))
        .await
        .expect("get");
    assert_eq!(anon.status().as_u16(), 401);
    let mut bytes = Vec::new();
    api.download("/backup", &[], &mut bytes)
        .await
        .expect("download");
    let good = dir.path().join("good.tar");
    std::fs::write(&good, &bytes).expect("write");
    let verify =
        |p: &std::path::Path| corral(&["backup", "verify", p.to_str().expect("utf-8")], &[]);
    assert!(verify(&good).status.success());

    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let out = verify(&cut);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged or incomplete"), "{err}");

    // A byte of the package file changed: named as what was altered.
    let in_file = bytes
        .windows(image.len().min(64))
        .position(|w| w == &image[1000..1064])
        .expect("the package's bytes are in the backup");
    let mut b = bytes.clone();
    b[in_file + 5] ^= 1;
    let altered_file = dir.path().join("altered-file.tar");
    std::fs::write(&altered_file, &b).expect("write");
    let out = verify(&altered_file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("file packages/{sha} has been altered")),
        "{err}"
    );

    let altered = dir.path().join("altered.tar");
    let mut b = bytes.clone();
    // Inside the first tree's data, past its 512-byte tar header.
    let at = 512 + 10;
    b[at] ^= 0x20;
    std::fs::write(&altered, &b).expect("write");
    let out = verify(&altered);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged or incomplete"), "{err}");

    // Restore refuses a damaged file and leaves nothing behind.
    let target = dir.path().join("restored");
    let out = restore(&cut, &target);
    assert!(!out.status.success());
    assert!(!target.exists());
    // And never writes into a directory that holds something.
    std::fs::create_dir_all(&target).expect("mkdir");
    std::fs::write(target.join("keep"), b"x").expect("write");
    let out = restore(&good, &target);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    // Restored, the server serves the package it holds the record of.
    let restored = dir.path().join("restored-ok");
    let out = restore(&good, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(srv);
    let srv = Server::spawn(&restored, &key);
    let got = http
        .get(format!(
            "{}/api/v1/packages/{}/file",
            srv.base(),
            package["id"].as_str().expect("id")
        ))
        .bearer_auth(&key)
        .send()
        .await
        .expect("download");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.expect("body").to_vec(), image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_snapshots_rotate_and_each_one_restores() {
    let mut t = common::TestApp::start().await;
    let (device, token) = t.device("s1").await;
    let s = t.app().services.clone();
    let dir = t.dir.path().join("snaps");
    let http = reqwest::Client::new();
    let mut taken = Vec::new();
    for i in 0..4i64 {
        let r = http
            .post(format!("{}/api/v1/{token}/telemetry", t.http_base()))
            .json(&json!({"ts": BASE_TS + i, "values": {"seq": i}}))
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success());
        taken.push(
            corral::backups::snapshot(&s, &dir, 2)
                .await
                .expect("snapshot"),
        );
        // Names carry the second they were taken.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.contains(&taken[2]) && left.contains(&taken[3]),
        "the newest two are kept"
    );
    let newest = corral::store::backup::verify(&taken[3])
        .await
        .expect("verify");
    assert_eq!(newest.devices, Some(1));
    assert_eq!(newest.manifest.records("devices"), 1);
    assert!(newest.manifest.files.contains_key("pki/ca.pem"));
    assert!(newest.manifest.files.contains_key("corral.toml"));
    let _ = device;
    t.stop().await;
}
