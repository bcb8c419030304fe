//! Durability of the real binary: every PUBACKed message survives `kill -9` at a random moment,
//! and SIGTERM stops cleanly (exit 0) with acknowledged data on disk.

use crate::common;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::device_data::{BASE_TS, make_device, stored_longs};
use common::server::Server;
use common::tls_transport;
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::json;

/// Publishes QoS 1 messages from `first` on, pipelined, until the connection dies; records which
/// sequence numbers the server acknowledged. Returns the next unused sequence number.
async fn publish_until_killed(
    srv: &Server,
    token: &str,
    first: i64,
    acked: Arc<Mutex<BTreeSet<i64>>>,
) -> (AsyncClient, tokio::task::JoinHandle<i64>) {
    let mut opts = MqttOptions::new("", "127.0.0.1", srv.mqtt_tls.port());
    opts.set_credentials(token, "");
    opts.set_transport(tls_transport(&srv.ca_pem()));
    opts.set_inflight(32);
    let (client, mut el) = AsyncClient::new(opts, 64);
    let publisher = client.clone();
    let order = Arc::new(Mutex::new(VecDeque::new()));
    let order_pub = order.clone();
    // Publisher: keep the request queue full; seqs are queued in the order the loop sends them.
    let pub_task = tokio::spawn(async move {
        let mut seq = first;
        loop {
            order_pub.lock().expect("lock").push_back(seq);
            let body = json!({"ts": BASE_TS + seq, "values": {"seq": seq}}).to_string();
            if publisher
                .publish("v1/devices/me/telemetry", QoS::AtLeastOnce, false, body)
                .await
                .is_err()
            {
                return seq;
            }
            seq += 1;
        }
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
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (client, pub_task)
}

/// After `kill -9` the data comes back through the write-ahead log, not by luck of a flush.
fn assert_replayed(srv: &Server) {
    assert!(
        srv.startup_logs
            .iter()
            .any(|l| l.contains("replayed the write-ahead log")),
        "no WAL replay after kill -9: {:?}",
        srv.startup_logs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_kill_9() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let seed: u64 = rand::random();
    eprintln!("kill schedule seed: {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);

    let mut srv = Server::spawn(dir.path(), &key);
    let (device, token) = make_device(&srv.base(), &key).await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut next = 0i64;
    for round in 0..3 {
        if round > 0 {
            srv = Server::spawn(dir.path(), &key);
            assert_replayed(&srv);
        }
        let before = acked.lock().expect("lock").len();
        let (client, pub_task) = publish_until_killed(&srv, &token, next, acked.clone()).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        srv.kill9();
        let _ = client.disconnect().await;
        pub_task.abort();
        next += 1_000_000; // keep rounds apart
        let now = acked.lock().expect("lock").len();
        assert!(
            now > before,
            "round {round}: nothing was acknowledged before the kill"
        );
    }
    let srv = Server::spawn(dir.path(), &key);
    assert_replayed(&srv);
    let stored = stored_longs(&srv.base(), &key, &device, "seq").await;
    let acked = acked.lock().expect("lock").clone();
    let lost: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost after kill -9, e.g. {lost:?}",
        acked.difference(&stored).count()
    );
    eprintln!(
        "acknowledged {} messages over 3 kills; all stored ({} stored in total)",
        acked.len(),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_keeps_acknowledged_data() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let mut srv = Server::spawn(dir.path(), &key);
    let (device, token) = make_device(&srv.base(), &key).await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let (_client, pub_task) = publish_until_killed(&srv, &token, 0, acked.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = srv.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    pub_task.abort();
    let logs: Vec<String> = srv.logs.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("stopped cleanly")),
        "{logs:?}"
    );
    drop(srv);
    let srv = Server::spawn(dir.path(), &key);
    assert!(
        !srv.startup_logs
            .iter()
            .any(|l| l.contains("replayed the write-ahead log")),
        "a clean stop checkpoints: nothing to replay"
    );
    let stored = stored_longs(&srv.base(), &key, &device, "seq").await;
    let acked = acked.lock().expect("lock").clone();
    assert!(!acked.is_empty());
    assert!(
        acked.is_subset(&stored),
        "acknowledged data missing after SIGTERM"
    );
}

/// A device on `srv` that has asked for its RPC requests (MQTT 3.1.1 over TLS; the SUBACK is
/// the next packet on the channel, or comes after a request already due); with `manual_acks`
/// it never acknowledges what it receives.
async fn rpc_device(
    srv: &Server,
    token: &str,
    client_id: &str,
    manual_acks: bool,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Result<Packet, rumqttc::ConnectionError>>,
) {
    use common::mqtt::{next_v3, spawn_v3};
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", srv.mqtt_tls.port());
    opts.set_credentials(token, "");
    opts.set_transport(tls_transport(&srv.ca_pem()));
    opts.set_manual_acks(manual_acks);
    let (client, mut rx) = spawn_v3(opts);
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::ConnAck(_))));
    client
        .subscribe("v1/devices/me/rpc/request/+", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    (client, rx)
}

/// A device's reply to a two-way command is acknowledged (PUBACK) only once the job's success
/// and result are on disk: `kill -9` right after the PUBACK, and the job is still `succeeded`
/// with the result after the restart. Three rounds, each killed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_command_reply_survives_kill_9() {
    use common::mqtt::next_v3;
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let mut srv = Server::spawn(dir.path(), &key);
    let (device, token) = make_device(&srv.base(), &key).await;
    let mut jobs = Vec::new();
    for round in 0..3 {
        if round > 0 {
            srv = Server::spawn(dir.path(), &key);
        }
        let api = common::device_data::admin(&srv.base(), &key);
        let (client, mut rx) = rpc_device(&srv, &token, &format!("replier-{round}"), false).await;
        assert!(matches!(next_v3(&mut rx).await, Ok(Packet::SubAck(_))));
        let job: serde_json::Value = api
            .post(
                &format!("/devices/{device}/jobs"),
                &json!({"method": "measure", "params": {"round": round}, "two_way": true}),
            )
            .await
            .expect("job");
        let job_id = job["id"].as_str().expect("job id").to_string();
        let request = loop {
            match next_v3(&mut rx).await {
                Ok(Packet::Publish(p)) => break p,
                Ok(_) => continue,
                Err(e) => panic!("connection ended before the command: {e}"),
            }
        };
        let rpc_id = request
            .topic
            .rsplit('/')
            .next()
            .expect("request id")
            .to_string();
        client
            .publish(
                format!("v1/devices/me/rpc/response/{rpc_id}"),
                QoS::AtLeastOnce,
                false,
                json!({"value": round * 10}).to_string(),
            )
            .await
            .expect("reply");
        loop {
            match next_v3(&mut rx).await {
                Ok(Packet::PubAck(_)) => break,
                Ok(_) => continue,
                Err(e) => panic!("connection ended before the reply's PUBACK: {e}"),
            }
        }
        srv.kill9();
        jobs.push((job_id, round));
    }
    let srv = Server::spawn(dir.path(), &key);
    let api = common::device_data::admin(&srv.base(), &key);
    for (id, round) in jobs {
        let job: serde_json::Value = api.get(&format!("/jobs/{id}"), &[]).await.expect("job");
        assert_eq!(job["state"], "succeeded", "round {round}: {job}");
        assert_eq!(job["result"], json!({"value": round * 10}), "round {round}");
    }
}

/// A rollout's request reaches a device only once its job is durable as sent, under the request
/// id the device saw: `kill -9` the moment the device has the request (before it acknowledges),
/// and after the restart the job is there with that id, and the device gets the request again
/// under the same id, then the job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_request_in_flight_at_kill_9_comes_back_under_its_id() {
    use common::mqtt::next_v3;
    corral::pki::install_crypto_provider();
    let request_id = |p: &rumqttc::Publish| -> String {
        p.topic.rsplit('/').next().expect("request id").to_string()
    };
    for round in 0..2 {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = corral::auth::new_api_key();
        let srv = Server::spawn(dir.path(), &key);
        let (device, token) = make_device(&srv.base(), &key).await;
        let api = common::device_data::admin(&srv.base(), &key);
        let dev: serde_json::Value = api
            .get(&format!("/devices/{device}"), &[])
            .await
            .expect("device");
        let fleet = dev["fleet_id"].as_str().expect("fleet").to_string();
        // A device that does not acknowledge: the request stays unacknowledged at the kill.
        let (client, mut rx) = rpc_device(&srv, &token, "deaf", true).await;
        assert!(matches!(next_v3(&mut rx).await, Ok(Packet::SubAck(_))));
        let _: serde_json::Value = api
            .post(
                &format!("/fleets/{fleet}/jobs"),
                &json!({"method": "calibrate", "params": {"round": round}}),
            )
            .await
            .expect("rollout");
        let first = loop {
            match next_v3(&mut rx).await {
                Ok(Packet::Publish(p)) => break request_id(&p),
                Ok(_) => continue,
                Err(e) => panic!("connection ended before the request: {e}"),
            }
        };
        let mut srv = srv;
        srv.kill9();
        drop(client);

        let srv = Server::spawn(dir.path(), &key);
        let api = common::device_data::admin(&srv.base(), &key);
        let jobs: serde_json::Value = api
            .get(&format!("/devices/{device}/jobs"), &[])
            .await
            .expect("jobs");
        let job = jobs
            .as_array()
            .expect("jobs")
            .iter()
            .find(|j| j["method"] == "calibrate")
            .unwrap_or_else(|| panic!("round {round}: the job the device received is gone: {jobs}"))
            .clone();
        assert_eq!(
            job["rpc_id"].to_string(),
            first,
            "round {round}: the job's request id after the restart: {job}"
        );
        let job_id = job["id"].as_str().expect("id").to_string();
        // The device comes back, acknowledging now: the request comes again, same id.
        let (_client, mut rx) = rpc_device(&srv, &token, "back", false).await;
        let again = loop {
            match next_v3(&mut rx).await {
                Ok(Packet::Publish(p)) => break request_id(&p),
                Ok(_) => continue,
                Err(e) => panic!("connection ended before the repeat: {e}"),
            }
        };
        assert_eq!(again, first, "round {round}: the repeat's request id");
        let mut done = false;
        for _ in 0..100 {
            let j: serde_json::Value = api.get(&format!("/jobs/{job_id}"), &[]).await.expect("job");
            if j["state"] == "succeeded" {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            done,
            "round {round}: the job did not complete after the repeat"
        );
    }
}

/// Creating a device is one unit of work: the record, its credential and its audit entry become
/// durable through one flush of the database, and the audit log holds one entry for it. Run on
/// the real services over a store in a temp dir, with no background loops to add flushes.
#[tokio::test]
async fn creating_a_device_costs_one_flush_and_one_audit_entry() {
    use corral::devices::registry::{NewDevice, NewFleet, NewWorkspace};
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = corral::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    config.store.min_free_mb = 16;
    let metrics = Arc::new(corral::metrics::Metrics::new());
    let (store, pki, _) = corral::app::open_state(&config, metrics.clone())
        .await
        .expect("open the data directory");
    let s = corral::services::Services::new(config, store.ports(), pki, metrics.clone());
    let ws = s
        .registry
        .create_workspace(NewWorkspace {
            name: "w".into(),
            description: String::new(),
            retention_days: None,
        })
        .await
        .expect("workspace");
    let fleet = s
        .registry
        .create_fleet(NewFleet {
            workspace_id: ws.id,
            name: "f".into(),
            description: String::new(),
        })
        .await
        .expect("fleet");
    let audit_entries = async || {
        s.audit
            .list(&Default::default(), None, 1000)
            .await
            .expect("audit")
            .items
            .len()
    };
    for i in 0..3 {
        let (flushes, entries) = (metrics.store_commits.get(), audit_entries().await);
        let (dev, issued) = s
            .credentials
            .create_device(NewDevice {
                fleet_id: fleet.id,
                name: format!("d{i}"),
                label: String::new(),
                credentials: None,
                gateway: false,
                gateway_type_fleets: None,
            })
            .await
            .expect("device");
        assert_eq!(metrics.store_commits.get() - flushes, 1, "flushes for {i}");
        assert_eq!(audit_entries().await - entries, 1, "audit entries for {i}");
        let newest = s
            .audit
            .list(&Default::default(), None, 1)
            .await
            .expect("audit");
        assert_eq!(newest.items[0].kind.as_str(), "credential_issued");
        assert_eq!(newest.items[0].device_id, Some(dev.id));
        assert!(issued.token.is_some(), "a generated token is shown once");
    }
}
