//! Integrations (webhooks) against a real HTTP sink started by the test, which verifies every
//! request's signature: filters, the test event, pause and resume, network errors and a changed
//! URL, 4xx → dead letters → replay, queue caps with their alarm, secrets kept out of responses
//! and logs, and, with the real binary, every acknowledged message delivered in order per device
//! across a sink outage and a `kill -9`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use common::mqtt::spawn_v3;
use common::server::Server;
use common::sink::{DOWN, REFUSING, Sink, THROTTLING, UP};
use common::{TestApp, call, eventually, tls_transport};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Value, json};

const SECRET: &str = "integration-test-signing-secret";
const AUTH_VALUE: &str = "Bearer sink-auth-value-42";

async fn status(base: &str, key: &str, id: &str) -> Value {
    let (code, s) = call(
        base,
        key,
        "GET",
        &format!("/integrations/{id}/status"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{s}");
    s
}

/// Connects a v3 device over TLS and waits for its CONNACK.
async fn connect(t: &TestApp, token: &str) -> AsyncClient {
    let (c, mut rx) = spawn_v3(t.v3_options("", token, ""));
    loop {
        match common::mqtt::next_v3(&mut rx).await {
            Ok(Packet::ConnAck(_)) => break,
            Ok(_) => continue,
            Err(e) => panic!("connect failed: {e:?}"),
        }
    }
    // Keep draining the event loop's channel.
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_signed_events_reach_the_sink_and_secrets_stay_inside() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let sink = Sink::start().await;
    sink.set_secret(SECRET);
    let (dev, token) = t.device("hooked").await;
    let (other, other_token) = t.device("elsewhere").await;

    // A: hot data of the first device's fleet only, with an auth header and a given secret.
    let (code, a) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(json!({
            "name": "hot-data",
            "url": sink.url(),
            "fleet_ids": [dev["fleet_id"]],
            "tags": ["hot"],
            "kinds": ["data"],
            "auth_header": {"name": "Authorization", "value": AUTH_VALUE},
            "signing_secret": SECRET,
        })),
    )
    .await;
    assert_eq!(code, 201, "{a}");
    assert!(
        a.get("signing_secret").is_none(),
        "a given secret is not echoed"
    );
    let a_id = a["integration"]["id"].as_str().expect("id").to_string();
    // B: connectivity and attributes of the first device's workspace, secret generated.
    let (code, b) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(json!({
            "name": "presence",
            "url": sink.url(),
            "workspace_id": dev["workspace_id"],
            "kinds": ["connectivity", "attributes", "conditions"],
        })),
    )
    .await;
    assert_eq!(code, 201, "{b}");
    let b_secret = b["signing_secret"]
        .as_str()
        .expect("generated secret, shown once");
    assert_eq!(b_secret.len(), 64);
    let b_id = b["integration"]["id"].as_str().expect("id").to_string();
    // Same-name and bad settings are refused.
    let (code, _) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(json!({"name": "HOT-DATA", "url": sink.url()})),
    )
    .await;
    assert_eq!(code, 409);
    let (code, e) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(json!({"name": "x", "url": "ftp://example.com/"})),
    )
    .await;
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (422, Some("invalid_field"))
    );

    // Both integrations sign with their own secret; the sink checks one at a time, so B is
    // verified separately below (pause it now).
    let (code, _) = call(
        &base,
        &key,
        "POST",
        &format!("/integrations/{b_id}/pause"),
        None,
    )
    .await;
    assert_eq!(code, 200);

    let c = connect(&t, &token).await;
    let c2 = connect(&t, &other_token).await;
    for (topic, v) in [
        ("v1/devices/me/telemetry/hot", 1),
        ("v1/devices/me/telemetry", 2),
        ("v1/devices/me/telemetry/cold", 3),
        ("v1/devices/me/telemetry/hot", 4),
    ] {
        c.publish(topic, QoS::AtLeastOnce, false, json!({"t": v}).to_string())
            .await
            .expect("publish");
    }
    c.publish(
        "v1/devices/me/attributes",
        QoS::AtLeastOnce,
        false,
        json!({"fw": "v1.2"}).to_string(),
    )
    .await
    .expect("publish");
    // Another fleet: not for A.
    c2.publish(
        "v1/devices/me/telemetry/hot",
        QoS::AtLeastOnce,
        false,
        json!({"t": 99}).to_string(),
    )
    .await
    .expect("publish");

    let got = eventually(10, || async {
        let r = sink.received();
        (r.len() >= 2).then_some(r)
    })
    .await;
    let values: Vec<i64> = got
        .iter()
        .map(|r| r.event["points"][0]["values"]["t"].as_i64().expect("t"))
        .collect();
    assert_eq!(
        values,
        vec![1, 4],
        "only hot data of the fleet, in order: {got:?}"
    );
    for r in &got {
        assert_eq!(r.event["kind"], "data");
        assert_eq!(r.event["tag"], "hot");
        assert_eq!(r.event["device_id"], dev["id"]);
        assert_eq!(r.event["device_name"], "hooked");
        assert_eq!(r.event["fleet_id"], dev["fleet_id"]);
        assert_eq!(r.event["workspace_id"], dev["workspace_id"]);
        assert_eq!(r.auth.as_deref(), Some(AUTH_VALUE));
        assert_eq!(r.id.len(), 16);
    }
    assert_ne!(got[0].id, got[1].id);

    // The test event goes through the same queue, whatever the filters.
    let (code, _) = call(
        &base,
        &key,
        "POST",
        &format!("/integrations/{a_id}/test"),
        None,
    )
    .await;
    assert_eq!(code, 202);
    let test = eventually(10, || async {
        sink.received()
            .into_iter()
            .find(|r| r.event["kind"] == "test")
    })
    .await;
    assert_eq!(test.event["integration_id"].as_str(), Some(a_id.as_str()));
    assert_eq!(
        test.idempotency_header.as_deref(),
        Some(test.id.as_str()),
        "a single-event batch carries its key as Idempotency-Key"
    );

    // Pause A: data queues up and nothing is sent; resume delivers it.
    let (code, p) = call(
        &base,
        &key,
        "POST",
        &format!("/integrations/{a_id}/pause"),
        None,
    )
    .await;
    assert_eq!((code, p["paused"].as_bool()), (200, Some(true)));
    c.publish(
        "v1/devices/me/telemetry/hot",
        QoS::AtLeastOnce,
        false,
        json!({"t": 5}).to_string(),
    )
    .await
    .expect("publish");
    let s = eventually(10, || async {
        let s = status(&base, &key, &a_id).await;
        (s["queue_depth"] == 1).then_some(s)
    })
    .await;
    assert_eq!(s["state"], "paused");
    let before = sink.received().len();
    let (code, _) = call(
        &base,
        &key,
        "POST",
        &format!("/integrations/{a_id}/resume"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    eventually(10, || async {
        (sink.received().len() == before + 1).then_some(())
    })
    .await;
    assert_eq!(sink.received()[before].event["points"][0]["values"]["t"], 5);

    // B: switch the sink to B's secret, resume: connected, then the attribute report.
    sink.set_secret(b_secret);
    let before = sink.received().len();
    let (code, _) = call(
        &base,
        &key,
        "POST",
        &format!("/integrations/{b_id}/resume"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let got = eventually(10, || async {
        let r = sink.received();
        (r.len() >= before + 2).then(|| r[before..].to_vec())
    })
    .await;
    assert_eq!(got[0].event["kind"], "connectivity");
    assert_eq!(got[0].event["event"], "connected");
    assert_eq!(got[0].event["device_id"], dev["id"]);
    assert_eq!(got[1].event["kind"], "attributes");
    assert_eq!(got[1].event["values"], json!({"fw": "v1.2"}));
    assert!(got[1].auth.is_none());
    assert!(
        !got.iter().any(|r| r.event["device_id"] == other["id"]),
        "the other device is in another workspace"
    );
    assert_eq!(sink.bad_signatures(), 0, "every request verified");

    // Status and metrics.
    let s = status(&base, &key, &a_id).await;
    assert_eq!(s["delivered_total"], 4);
    assert_eq!(s["queue_depth"], 0);
    assert_eq!(s["alarm"], false);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(&format!(
            "corral_integration_delivered_total{{integration=\"{a_id}\"}} 4"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("corral_integration_delivery_seconds_count"));

    // Secrets never come back: not in list, get, update or status answers.
    let (_, list) = call(&base, &key, "GET", "/integrations", None).await;
    let (_, one) = call(&base, &key, "GET", &format!("/integrations/{a_id}"), None).await;
    let (code, upd) = call(
        &base,
        &key,
        "PATCH",
        &format!("/integrations/{a_id}"),
        Some(json!({"max_items": 10})),
    )
    .await;
    assert_eq!((code, upd["max_items"].as_u64()), (200, Some(10)));
    for body in [&list, &one, &upd] {
        let text = body.to_string();
        assert!(
            !text.contains(SECRET) && !text.contains(b_secret) && !text.contains("sink-auth-value"),
            "{text}"
        );
    }
    assert_eq!(one["auth_header_name"], "Authorization");
    assert_eq!(list["items"].as_array().expect("items").len(), 2);

    // Delete: gone, and its routes too.
    let (code, _) = call(
        &base,
        &key,
        "DELETE",
        &format!("/integrations/{a_id}"),
        None,
    )
    .await;
    assert_eq!(code, 204);
    let (code, _) = call(&base, &key, "GET", &format!("/integrations/{a_id}"), None).await;
    assert_eq!(code, 404);
    drop((c, c2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_errors_retry_until_the_url_is_fixed_and_4xx_goes_to_dead_letters() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let sink = Sink::start().await;
    sink.set_secret(SECRET);
    let (_dev, token) = t.device("dl").await;
    // Nothing listens here: connection refused, retried with backoff.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let (code, i) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(json!({
            "name": "dl",
            "url": format!("http://127.0.0.1:{dead_port}/hook"),
            "kinds": ["data"],
            "signing_secret": SECRET,
            "retry_initial_ms": 20,
            "retry_max_ms": 100,
        })),
    )
    .await;
    assert_eq!(code, 201, "{i}");
    let id = i["integration"]["id"].as_str().expect("id").to_string();
    let c = connect(&t, &token).await;
    for v in 0..3 {
        c.publish(
            "v1/devices/me/telemetry",
            QoS::AtLeastOnce,
            false,
            json!({"v": v}).to_string(),
        )
        .await
        .expect("publish");
    }
    let s = eventually(10, || async {
        let s = status(&base, &key, &id).await;
        (s["failed_attempts"].as_u64() >= Some(2) && s["queue_depth"] == 3).then_some(s)
    })
    .await;
    assert!(
        s["last_error"]
            .as_str()
            .expect("last error")
            .contains("connection"),
        "{s}"
    );
    assert!(s["last_error_at"].is_i64());

    // The receiver refuses (400): the batch moves to the dead letters.
    sink.set_mode(REFUSING);
    let (code, _) = call(
        &base,
        &key,
        "PATCH",
        &format!("/integrations/{id}"),
        Some(json!({"url": sink.url()})),
    )
    .await;
    assert_eq!(code, 200);
    let s = eventually(10, || async {
        let s = status(&base, &key, &id).await;
        (s["dead_letters"] == 3 && s["queue_depth"] == 0).then_some(s)
    })
    .await;
    assert!(
        s["last_error"].as_str().expect("error").contains("400"),
        "{s}"
    );
    let (code, page) = call(
        &base,
        &key,
        "GET",
        &format!("/integrations/{id}/dead-letters?limit=2"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let first: Vec<Value> = page["items"].as_array().expect("items").clone();
    assert_eq!(first.len(), 2);
    let cursor = page["next_cursor"].as_str().expect("more");
    let (_, page2) = call(
        &base,
        &key,
        "GET",
        &format!("/integrations/{id}/dead-letters?limit=2&cursor={cursor}"),
        None,
    )
    .await;
    let all: Vec<Value> = first
        .iter()
        .chain(page2["items"].as_array().expect("items"))
        .cloned()
        .collect();
    assert_eq!(all.len(), 3);
    let ids: Vec<String> = all
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_string())
        .collect();
    let vs: Vec<i64> = all
        .iter()
        .map(|d| d["event"]["points"][0]["values"]["v"].as_i64().expect("v"))
        .collect();
    assert_eq!(vs, vec![0, 1, 2]);
    assert!(all[0]["reason"].as_str().expect("reason").contains("400"));

    // Replay: delivered in the original order with the original ids.
    sink.set_mode(UP);
    let (code, n) = call(
        &base,
        &key,
        "POST",
        &format!("/integrations/{id}/dead-letters/replay"),
        None,
    )
    .await;
    assert_eq!((code, n["count"].as_u64()), (200, Some(3)));
    let got = eventually(10, || async {
        let r = sink.received();
        (r.len() >= 3).then_some(r)
    })
    .await;
    let got_ids: Vec<String> = got.iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        got_ids, ids,
        "replayed in order, with the keys they first had"
    );
    assert_eq!(status(&base, &key, &id).await["dead_letters"], 0);

    // Dead letters can also be deleted.
    sink.set_mode(REFUSING);
    c.publish(
        "v1/devices/me/telemetry",
        QoS::AtLeastOnce,
        false,
        json!({"v": 9}).to_string(),
    )
    .await
    .expect("publish");
    eventually(10, || async {
        (status(&base, &key, &id).await["dead_letters"] == 1).then_some(())
    })
    .await;
    let (code, n) = call(
        &base,
        &key,
        "DELETE",
        &format!("/integrations/{id}/dead-letters"),
        None,
    )
    .await;
    assert_eq!((code, n["count"].as_u64()), (200, Some(1)));

    // A receiver that answers 429 with `Retry-After: 2` is given its two seconds, though the
    // integration's own backoff would retry after 20 ms.
    sink.set_mode(THROTTLING);
    c.publish(
        "v1/devices/me/telemetry",
        QoS::AtLeastOnce,
        false,
        json!({"v": 10}).to_string(),
    )
    .await
    .expect("publish");
    eventually(10, || async {
        sink.received()
            .iter()
            .any(|r| r.event["points"][0]["values"]["v"] == 10)
            .then_some(())
    })
    .await;
    let arrivals = sink.state.arrivals.lock().expect("lock").clone();
    let [.., throttled, retried] = arrivals[..] else {
        panic!("{} requests", arrivals.len())
    };
    assert!(
        retried - throttled >= Duration::from_millis(1900),
        "retried after {:?}",
        retried - throttled
    );
    assert_eq!(sink.bad_signatures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_its_oldest_raises_the_alarm_and_clears_it() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let sink = Sink::start().await;
    sink.set_secret(SECRET);
    sink.set_mode(DOWN);
    let (_dev, token) = t.device("capped").await;
    let (code, i) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(json!({
            "name": "small",
            "url": sink.url(),
            "signing_secret": SECRET,
            "kinds": ["data"],
            "max_bytes": 4096,
            "retry_initial_ms": 20,
            "retry_max_ms": 100,
        })),
    )
    .await;
    assert_eq!(code, 201, "{i}");
    let id = i["integration"]["id"].as_str().expect("id").to_string();
    let mut events = t.app().services.events.subscribe();
    let c = connect(&t, &token).await;
    for v in 0..60 {
        c.publish(
            "v1/devices/me/telemetry",
            QoS::AtLeastOnce,
            false,
            json!({"v": v, "pad": "x".repeat(100)}).to_string(),
        )
        .await
        .expect("publish");
    }
    eventually(10, || async {
        let s = status(&base, &key, &id).await;
        (s["alarm"] == true && s["dropped_total"].as_u64() > Some(0)).then_some(s)
    })
    .await;
    let raised = next_alarm(&mut events, true).await;
    assert!(raised > 0);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(&format!(
            "corral_integration_alarm{{integration=\"{id}\"}} 1"
        )),
        "{metrics}"
    );

    // Wait until all 60 are accounted for (queued or dropped) and the cap has been applied to
    // the last of them: the delivery task trims the queue right after each write, so mid-burst
    // it may briefly hold more than `max_bytes`, never once the writes stop.
    let s = eventually(10, || async {
        let s = status(&base, &key, &id).await;
        (s["queue_depth"].as_u64().expect("depth") + s["dropped_total"].as_u64().expect("dropped")
            == 60
            && s["queue_bytes"].as_u64().expect("bytes") <= 4096)
            .then_some(s)
    })
    .await;
    let kept = s["queue_depth"].as_u64().expect("depth");
    sink.set_mode(UP);
    let s = eventually(10, || async {
        let s = status(&base, &key, &id).await;
        (s["queue_depth"] == 0 && s["alarm"] == false).then_some(s)
    })
    .await;
    assert_eq!(s["delivered_total"].as_u64(), Some(kept));
    // What was kept is the newest, in order.
    let vs: Vec<i64> = sink
        .received()
        .iter()
        .map(|r| r.event["points"][0]["values"]["v"].as_i64().expect("v"))
        .collect();
    let expected: Vec<i64> = (60 - kept as i64..60).collect();
    assert_eq!(vs, expected);
    next_alarm(&mut events, false).await;
}

/// The next alarm event raised (or cleared, with `raised = false`); returns what it dropped.
async fn next_alarm(rx: &mut broadcast::Receiver<corral::events::Event>, raised: bool) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(corral::events::Event::IntegrationAlarm {
                    raised: r, dropped, ..
                }) if r == raised => return dropped,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("event bus closed: {e}"),
            }
        }
    })
    .await
    .expect("alarm event within 10 s")
}

/// Publishes QoS 1 messages `{"n": seq}` pipelined until stopped; records acknowledged seqs.
fn publisher(
    port: u16,
    ca_pem: &str,
    token: &str,
    acked: Arc<Mutex<BTreeSet<i64>>>,
    first: i64,
    count: i64,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new("", "127.0.0.1", port);
    opts.set_credentials(token, "");
    opts.set_transport(tls_transport(ca_pem));
    opts.set_inflight(16);
    let (client, mut el) = AsyncClient::new(opts, 64);
    let order = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    let order_pub = order.clone();
    let publisher = client.clone();
    tokio::spawn(async move {
        for seq in first..first + count {
            order_pub.lock().expect("lock").push_back(seq);
            if publisher
                .publish(
                    "v1/devices/me/telemetry",
                    QoS::AtLeastOnce,
                    false,
                    json!({"n": seq}).to_string(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let task = tokio::spawn(async move {
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
    (client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_is_delivered_in_order_across_an_outage_and_kill_9() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let sink = Sink::start().await;
    sink.set_secret(SECRET);
    sink.set_mode(DOWN);
    // Devices publish faster than the default rate limit; its waits are not what is tested.
    let env = [("CORRAL_LIMITS__DEVICE_MESSAGES_PER_SEC", "0")];
    let mut srv = Server::spawn_with(dir.path(), &key, &env);
    let base = srv.base();
    let (_, ws) = call(
        &base,
        &key,
        "POST",
        "/workspaces",
        Some(json!({"name": "w"})),
    )
    .await;
    let (_, fleet) = call(
        &base,
        &key,
        "POST",
        "/fleets",
        Some(json!({"workspace_id": ws["id"], "name": "f"})),
    )
    .await;
    let mut devices = Vec::new();
    for n in 0..3 {
        let (code, d) = call(
            &base,
            &key,
            "POST",
            "/devices",
            Some(json!({"fleet_id": fleet["id"], "name": format!("d{n}")})),
        )
        .await;
        assert_eq!(code, 201, "{d}");
        devices.push((
            d["device"]["id"].as_str().expect("id").to_string(),
            d["credentials"]["token"]
                .as_str()
                .expect("token")
                .to_string(),
        ));
    }
    let (code, i) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(json!({
            "name": "outage",
            "url": sink.url(),
            "kinds": ["data"],
            "signing_secret": SECRET,
            "auth_header": {"name": "Authorization", "value": AUTH_VALUE},
            "retry_initial_ms": 50,
            "retry_max_ms": 200,
        })),
    )
    .await;
    assert_eq!(code, 201, "{i}");

    // Round 1: the sink is down; devices publish; kill -9 while they do.
    let acked: Vec<Arc<Mutex<BTreeSet<i64>>>> = (0..3).map(|_| Arc::default()).collect();
    let mut clients = Vec::new();
    for (n, (_, token)) in devices.iter().enumerate() {
        clients.push(publisher(
            srv.mqtt_tls.port(),
            &srv.ca_pem(),
            token,
            acked[n].clone(),
            0,
            1_000_000,
        ));
    }
    eventually(30, || async {
        acked
            .iter()
            .all(|a| a.lock().expect("lock").len() >= 200)
            .then_some(())
    })
    .await;
    srv.kill9();
    for (c, task) in clients.drain(..) {
        let _ = c.disconnect().await;
        task.abort();
    }
    let logs: Vec<String> = srv.logs.try_iter().collect();

    // Round 2: restart on the same data; more messages, still during the outage.
    let srv2 = Server::spawn_with(dir.path(), &key, &env);
    assert!(
        srv2.startup_logs
            .iter()
            .any(|l| l.contains("replayed the write-ahead log"))
    );
    for (n, (_, token)) in devices.iter().enumerate() {
        clients.push(publisher(
            srv2.mqtt_tls.port(),
            &srv2.ca_pem(),
            token,
            acked[n].clone(),
            1_000_000,
            100,
        ));
    }
    eventually(30, || async {
        acked
            .iter()
            .all(|a| a.lock().expect("lock").range(1_000_000..).count() == 100)
            .then_some(())
    })
    .await;
    assert!(sink.received().is_empty(), "the sink was down all along");

    // The sink comes back: everything acknowledged arrives.
    sink.set_mode(UP);
    let by_device = eventually(60, || async {
        let got = sink.received();
        let mut by_device: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for r in &got {
            let dev = r.event["device_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let n = r.event["points"][0]["values"]["n"].as_i64().unwrap_or(-1);
            by_device.entry(dev).or_default().push((n, r.id.clone()));
        }
        let complete = devices.iter().enumerate().all(|(k, (id, _))| {
            let seen: BTreeSet<i64> = by_device
                .get(id)
                .map(|v| v.iter().map(|(n, _)| *n).collect())
                .unwrap_or_default();
            acked[k].lock().expect("lock").is_subset(&seen)
        });
        complete.then_some(by_device)
    })
    .await;
    for (dev, got) in &by_device {
        // Duplicates, if any, carry the same idempotency key.
        let mut key_of: HashMap<i64, &str> = HashMap::new();
        for (n, id) in got {
            let k = key_of.entry(*n).or_insert(id);
            assert_eq!(
                *k,
                id.as_str(),
                "device {dev}: message {n} delivered under two keys"
            );
        }
        // Per device, first deliveries come in publish order.
        let mut seen = BTreeSet::new();
        let firsts: Vec<i64> = got
            .iter()
            .filter(|(n, _)| seen.insert(*n))
            .map(|(n, _)| *n)
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "device {dev}: out of order"
        );
    }
    assert_eq!(sink.bad_signatures(), 0);
    assert!(
        sink.received()
            .iter()
            .all(|r| r.auth.as_deref() == Some(AUTH_VALUE))
    );
    let total: usize = acked.iter().map(|a| a.lock().expect("lock").len()).sum();
    eprintln!(
        "{total} acknowledged messages, {} deliveries",
        sink.received().len()
    );
    // No secret reached the log.
    let logs2: Vec<String> = srv2
        .startup_logs
        .iter()
        .cloned()
        .chain(srv2.logs.try_iter())
        .collect();
    for l in logs.iter().chain(&logs2) {
        assert!(
            !l.contains(SECRET) && !l.contains("sink-auth-value"),
            "secret in log: {l}"
        );
    }
    drop(clients);
}

/// Runs the `corral` CLI against `base`: standard output and standard error together.
async fn cli(base: &str, key: &str, args: &[&str]) -> String {
    let (stdout, stderr) = cli_streams(base, key, args).await;
    stdout + &stderr
}

/// Runs the `corral` CLI against `base` (blocking, off the runtime's threads): standard output
/// (under `--json`, the JSON alone) and standard error (the line saying what changed).
async fn cli_streams(base: &str, key: &str, args: &[&str]) -> (String, String) {
    let (base, key) = (base.to_string(), key.to_string());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::server::bin())
            .args(&args)
            .env_clear()
            .env("CORRAL_SERVER", base)
            .env("CORRAL_API_KEY", key)
            .output()
            .expect("run corral")
    })
    .await
    .expect("join");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "corral failed: {stdout}\n{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_integrations() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let (dev, _) = t.device("named").await;
    let sink = Sink::start().await;
    sink.set_secret(SECRET);
    let secret_file = t.dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write");
    let auth_file = t.dir.path().join("auth");
    std::fs::write(&auth_file, AUTH_VALUE).expect("write");
    let secret_path = secret_file.to_str().expect("path");
    let auth_path = auth_file.to_str().expect("path");
    let url = sink.url();
    let (out, said) = cli_streams(
        &base,
        &key,
        &[
            "integration",
            "create",
            "cli-hook",
            "--url",
            &url,
            "--kind",
            "data",
            "--kind",
            "job_results",
            "--signing-secret-file",
            secret_path,
            "--auth-header-name",
            "Authorization",
            "--auth-header-value-file",
            auth_path,
            "--max-items",
            "5",
            "--json",
        ],
    )
    .await;
    assert!(
        !out.contains(SECRET) && !out.contains("sink-auth-value"),
        "{out}"
    );
    assert!(
        said.starts_with("created integration cli-hook (id "),
        "{said}"
    );
    let created: Value = serde_json::from_str(&out).expect("json");
    assert!(created.get("signing_secret").is_none());
    let list = cli(&base, &key, &["integration", "list"]).await;
    assert!(list.contains("cli-hook") && list.contains("idle"), "{list}");
    let shown: Value = serde_json::from_str(
        &cli(&base, &key, &["integration", "show", "cli-hook", "--json"]).await,
    )
    .expect("json");
    assert_eq!(shown["max_items"], 5);
    assert_eq!(shown["kinds"], json!(["data", "job_results"]));
    let (out, _) = cli_streams(
        &base,
        &key,
        &[
            "integration",
            "update",
            "cli-hook",
            "--max-items",
            "7",
            "--workspace",
            "ws-named",
            "--fleet",
            "fleet",
            "--json",
        ],
    )
    .await;
    let updated: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(updated["max_items"], 7);
    // The workspace and the fleet were named, as everywhere in the CLI, and sent as ids.
    assert_eq!(updated["workspace_id"], dev["workspace_id"], "{out}");
    assert_eq!(updated["fleet_ids"], json!([dev["fleet_id"]]), "{out}");
    assert!(
        cli(&base, &key, &["integration", "pause", "cli-hook"])
            .await
            .contains("paused")
    );
    cli(&base, &key, &["integration", "test", "cli-hook"]).await;
    cli(&base, &key, &["integration", "resume", "cli-hook"]).await;
    eventually(10, || async { (sink.received().len() == 1).then_some(()) }).await;
    assert_eq!(sink.received()[0].event["kind"], "test");
    // Refused → dead letter → listed → replayed.
    sink.set_mode(REFUSING);
    cli(&base, &key, &["integration", "test", "cli-hook"]).await;
    let id = shown["id"].as_str().expect("id").to_string();
    eventually(10, || async {
        (status(&base, &key, &id).await["dead_letters"] == 1).then_some(())
    })
    .await;
    let dl = cli(&base, &key, &["integration", "dead-letters", "cli-hook"]).await;
    assert!(dl.contains("HTTP 400") && dl.contains("test"), "{dl}");
    sink.set_mode(UP);
    assert!(
        cli(&base, &key, &["integration", "replay", "cli-hook"])
            .await
            .contains("queued 1 dead letter of integration cli-hook again")
    );
    eventually(10, || async { (sink.received().len() == 2).then_some(()) }).await;
    cli(&base, &key, &["integration", "delete", "cli-hook"]).await;
    assert!(
        !cli(&base, &key, &["integration", "list"])
            .await
            .contains("cli-hook")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_results_and_http_device_data_are_forwarded_and_tls_trust_is_per_integration() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let sink = Sink::start().await;
    sink.set_secret(SECRET);
    let (dev, token) = t.device("http-dev").await;
    let (code, i) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(json!({
            "name": "jobs", "url": sink.url(), "signing_secret": SECRET,
            "kinds": ["data", "job_results"],
        })),
    )
    .await;
    assert_eq!(code, 201, "{i}");
    // Telemetry over the HTTP device API takes the same path as MQTT.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/{token}/telemetry"))
        .json(&json!({"h": 7}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    // A job reaching a final state (here: cancelled while the device is offline).
    let dev_id = dev["id"].as_str().expect("id");
    let (code, job) = call(
        &base,
        &key,
        "POST",
        &format!("/devices/{dev_id}/jobs"),
        Some(json!({"method": "reboot"})),
    )
    .await;
    assert_eq!(code, 201, "{job}");
    let job_id = job["id"].as_str().expect("id");
    let (code, _) = call(&base, &key, "POST", &format!("/jobs/{job_id}/cancel"), None).await;
    assert_eq!(code, 200);
    let got = eventually(10, || async {
        let r = sink.received();
        (r.len() >= 2).then_some(r)
    })
    .await;
    assert_eq!(got[0].event["kind"], "data");
    assert_eq!(got[0].event["points"][0]["values"]["h"], 7);
    assert_eq!(got[1].event["kind"], "job_results");
    assert_eq!(got[1].event["job_id"].as_str(), Some(job_id));
    assert_eq!(got[1].event["method"], "reboot");
    assert_eq!(got[1].event["state"], "cancelled");
    assert_eq!(got.len(), 2, "queued, sent: not final, not forwarded");

    // TLS trust: Corral's own HTTPS listener as the receiver. With its CA given, the handshake
    // succeeds and the answer (401: no API key) is a client error → dead letter. With the
    // system roots, which do not hold that CA, the handshake fails → retried.
    let https = t.app().addrs.https.expect("https listener");
    let url = format!("https://127.0.0.1:{}/api/v1/workspaces", https.port());
    let (code, bad) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(json!({
            "name": "bad-ca", "url": url, "ca_pem": "not a pem",
        })),
    )
    .await;
    assert_eq!(
        (code, bad["error"]["code"].as_str()),
        (422, Some("invalid_field")),
        "{bad}"
    );
    let mut ids = Vec::new();
    for (name, ca) in [("own-ca", Some(t.ca_pem.clone())), ("system-roots", None)] {
        let (code, i) = call(
            &base,
            &key,
            "POST",
            "/integrations",
            Some(json!({
                "name": name, "url": url, "ca_pem": ca, "kinds": ["data"],
                "retry_initial_ms": 20, "retry_max_ms": 100,
            })),
        )
        .await;
        assert_eq!(code, 201, "{i}");
        ids.push(i["integration"]["id"].as_str().expect("id").to_string());
    }
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/{token}/telemetry"))
        .json(&json!({"h": 8}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let own = eventually(10, || async {
        let s = status(&base, &key, &ids[0]).await;
        (s["dead_letters"] == 1).then_some(s)
    })
    .await;
    assert!(
        own["last_error"].as_str().expect("error").contains("401"),
        "{own}"
    );
    let system = eventually(10, || async {
        let s = status(&base, &key, &ids[1]).await;
        (s["failed_attempts"].as_u64() >= Some(2)).then_some(s)
    })
    .await;
    assert_eq!(system["dead_letters"], 0);
    assert_eq!(system["queue_depth"], 1, "kept for a retry: {system}");
}
