//! Jobs (server-side RPC made persistent) with real MQTT clients over TLS and the real binary:
//! one-way jobs succeed on PUBACK, two-way jobs on the device's reply; a device offline at
//! send time receives its queued jobs in order when it subscribes, also after a `kill -9`
//! restart; TTL expiry; retries and failure when a client withholds PUBACK; the queue cap;
//! idempotency keys; cancel; the HTTP device API's RPC long poll.

use crate::common;

use std::time::Duration;

use common::mqtt::{next_v5, spawn_v5};
use common::server::Server;
use common::{TestApp, eventually};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use serde_json::{Value, json};

/// A request with a key: (status, body), through the harness's one raw client.
async fn call(base: &str, key: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    common::call(base, key, method, path, Some(body)).await
}

/// Waits for the next RPC request publish; returns (request id, body).
async fn next_rpc(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<V5Packet, rumqttc::v5::ConnectionError>>,
) -> (u32, Value) {
    loop {
        match next_v5(rx).await {
            Ok(V5Packet::Publish(p)) => {
                let topic = String::from_utf8(p.topic.to_vec()).expect("utf8");
                let id = topic
                    .strip_prefix("v1/devices/me/rpc/request/")
                    .expect("an RPC request topic")
                    .parse()
                    .expect("integer id");
                return (id, serde_json::from_slice(&p.payload).expect("json"));
            }
            Ok(_) => continue,
            Err(e) => panic!("connection ended: {e:?}"),
        }
    }
}

/// A v5 device subscribed to RPC requests.
async fn rpc_device(
    t: &TestApp,
    token: &str,
    manual_acks: bool,
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Result<V5Packet, rumqttc::v5::ConnectionError>>,
) {
    let mut o = t.v5_options("", token, "");
    o.set_manual_acks(manual_acks);
    let (c, mut rx) = spawn_v5(o);
    assert!(matches!(next_v5(&mut rx).await, Ok(V5Packet::ConnAck(_))));
    c.subscribe("v1/devices/me/rpc/request/+", V5QoS::AtLeastOnce)
        .await
        .expect("sub");
    (c, rx)
}

#[tokio::test]
async fn one_way_and_two_way_jobs_and_the_offline_queue() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let (dev, token) = t.device("pump").await;
    let id = dev["id"].as_str().expect("id").to_string();

    // Offline: three jobs wait in order.
    let mut queued = Vec::new();
    for m in ["first", "second", "third"] {
        let (s, j) = call(
            &base,
            &key,
            "POST",
            &format!("/devices/{id}/jobs"),
            json!({"method": m, "params": {"n": m}}),
        )
        .await;
        assert_eq!((s, j["state"].as_str()), (201, Some("queued")), "{j}");
        queued.push(j["id"].as_str().expect("id").to_string());
    }
    let (c, mut rx) = rpc_device(&t, &token, false).await;
    let mut ids = Vec::new();
    for m in ["first", "second", "third"] {
        let (rid, body) = next_rpc(&mut rx).await;
        assert_eq!(body, json!({"method": m, "params": {"n": m}}));
        ids.push(rid);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // One-way jobs succeed once acknowledged, every step kept.
    let done = eventually(5, || async {
        let (_, j) = call(
            &base,
            &key,
            "GET",
            &format!("/jobs/{}", queued[2]),
            Value::Null,
        )
        .await;
        (j["state"] == "succeeded").then_some(j)
    })
    .await;
    let steps: Vec<&str> = done["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["state"].as_str().expect("state"))
        .collect();
    assert_eq!(steps, ["queued", "sent", "succeeded"], "{done}");

    // Two-way, with the operator waiting for the answer.
    let waiter = tokio::spawn({
        let (base, key, id) = (base.clone(), key.clone(), id.clone());
        async move {
            call(
                &base,
                &key,
                "POST",
                &format!("/devices/{id}/jobs?wait_ms=10000"),
                json!({"method": "getTemp", "two_way": true}),
            )
            .await
        }
    });
    let (rid, body) = next_rpc(&mut rx).await;
    assert_eq!(body["method"], "getTemp");
    c.publish(
        format!("v1/devices/me/rpc/response/{rid}"),
        V5QoS::AtLeastOnce,
        false,
        r#"{"temp":21.5}"#,
    )
    .await
    .expect("reply");
    let (s, j) = waiter.await.expect("join");
    assert_eq!(s, 201);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"], json!({"temp": 21.5}));

    // Idempotency, the queue cap, cancel and expiry on an offline device.
    let (other, _) = t.device("offline").await;
    let oid = other["id"].as_str().expect("id").to_string();
    let make = |body: Value| {
        let (base, key, oid) = (base.clone(), key.clone(), oid.clone());
        async move { call(&base, &key, "POST", &format!("/devices/{oid}/jobs"), body).await }
    };
    let (_, a) = make(json!({"method": "m", "idempotency_key": "k1", "ttl_secs": 1})).await;
    let (_, b) = make(json!({"method": "m", "idempotency_key": "k1"})).await;
    assert_eq!(a["id"], b["id"]);
    let (_, c2) = make(json!({"method": "n"})).await;
    let (s, cancelled) = call(
        &base,
        &key,
        "POST",
        &format!("/jobs/{}/cancel", c2["id"].as_str().expect("id")),
        Value::Null,
    )
    .await;
    assert_eq!((s, cancelled["state"].as_str()), (200, Some("cancelled")));
    eventually(5, || async {
        let (_, j) = call(
            &base,
            &key,
            "GET",
            &format!("/jobs/{}", a["id"].as_str().unwrap_or("")),
            Value::Null,
        )
        .await;
        (j["state"] == "expired").then_some(())
    })
    .await;
    for bad in [json!({"method": ""}), json!({"method": "x", "ttl_secs": 0})] {
        let (s, e) = make(bad).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (422, Some("invalid_field"))
        );
    }
    let (s, list) = call(
        &base,
        &key,
        "GET",
        &format!("/devices/{oid}/jobs"),
        Value::Null,
    )
    .await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(2)));
}

#[tokio::test]
async fn withheld_pubacks_are_retried_then_fail_and_the_queue_is_capped() {
    let t = TestApp::start_with(|c| {
        c.jobs.ack_timeout_secs = 1;
        c.jobs.max_attempts = 2;
        c.jobs.max_queued_per_device = 2;
    })
    .await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let (dev, token) = t.device("deaf").await;
    let id = dev["id"].as_str().expect("id").to_string();
    // A client that never acknowledges.
    let (_c, mut rx) = rpc_device(&t, &token, true).await;
    let (_, j) = call(
        &base,
        &key,
        "POST",
        &format!("/devices/{id}/jobs"),
        json!({"method": "reset"}),
    )
    .await;
    let (_, _) = call(
        &base,
        &key,
        "POST",
        &format!("/devices/{id}/jobs"),
        json!({"method": "later"}),
    )
    .await;
    let (s, e) = call(
        &base,
        &key,
        "POST",
        &format!("/devices/{id}/jobs"),
        json!({"method": "more"}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("queue_full")),
        "{e}"
    );
    let (first, _) = next_rpc(&mut rx).await;
    let (second, body) = next_rpc(&mut rx).await;
    assert_eq!(body["method"], "reset", "the retry is the same job");
    // The first request may have reached the device: the retry carries the same id, so the
    // device can tell a repeat from a new command.
    assert_eq!(second, first, "a retry keeps its request id");
    let jid = j["id"].as_str().expect("id").to_string();
    let failed = eventually(15, || async {
        let (_, j) = call(&base, &key, "GET", &format!("/jobs/{jid}"), Value::Null).await;
        (j["state"] == "failed").then_some(j)
    })
    .await;
    assert_eq!(failed["attempts"], 2, "{failed}");
    // The next job goes out after the failed one.
    let (_, body) = next_rpc(&mut rx).await;
    assert_eq!(body["method"], "later");
}

#[tokio::test]
async fn http_devices_take_jobs_by_long_poll_and_reply() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let (dev, token) = t.device("http-dev").await;
    let id = dev["id"].as_str().expect("id").to_string();
    let http = reqwest::Client::new();
    let poll = tokio::spawn({
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let r = http
                .get(format!("{base}/api/v1/{token}/rpc?timeout=10000"))
                .send()
                .await
                .expect("poll");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, j) = call(
        &base,
        &key,
        "POST",
        &format!("/devices/{id}/jobs"),
        json!({"method": "blink", "params": {"times": 3}, "two_way": true}),
    )
    .await;
    let (s, req) = poll.await.expect("join");
    assert_eq!(s, 200, "{req}");
    assert_eq!(
        (req["method"].as_str(), req["params"]["times"].as_i64()),
        (Some("blink"), Some(3))
    );
    let rid = req["id"].as_u64().expect("id");
    let r = http
        .post(format!("{base}/api/v1/{token}/rpc/{rid}"))
        .json(&json!({"ok": true}))
        .send()
        .await
        .expect("reply");
    assert_eq!(r.status(), 200);
    let (_, done) = call(
        &base,
        &key,
        "GET",
        &format!("/jobs/{}?wait_ms=5000", j["id"].as_str().expect("id")),
        Value::Null,
    )
    .await;
    assert_eq!(
        (done["state"].as_str(), &done["result"]),
        (Some("succeeded"), &json!({"ok": true}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_survive_kill_9_and_arrive_in_order() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let data = dir.path().join("data");
    let mut srv = Server::spawn(&data, &key);
    let base = srv.base();
    let (_, ws) = call(&base, &key, "POST", "/workspaces", json!({"name": "w"})).await;
    let (_, fleet) = call(
        &base,
        &key,
        "POST",
        "/fleets",
        json!({"workspace_id": ws["id"], "name": "f"}),
    )
    .await;
    let (_, d) = call(
        &base,
        &key,
        "POST",
        "/devices",
        json!({"fleet_id": fleet["id"], "name": "d"}),
    )
    .await;
    let id = d["device"]["id"].as_str().expect("id").to_string();
    let token = d["credentials"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    for m in ["a", "b", "c"] {
        let (s, _) = call(
            &base,
            &key,
            "POST",
            &format!("/devices/{id}/jobs"),
            json!({"method": m}),
        )
        .await;
        assert_eq!(s, 201);
    }
    srv.kill9();
    let srv = Server::spawn(&data, &key);
    let mut o = rumqttc::v5::MqttOptions::new("", "127.0.0.1", srv.mqtt_tls.port());
    o.set_credentials(token, "");
    o.set_transport(common::tls_transport(&srv.ca_pem()));
    let (c, mut rx) = spawn_v5(o);
    assert!(matches!(next_v5(&mut rx).await, Ok(V5Packet::ConnAck(_))));
    c.subscribe("v1/devices/me/rpc/request/+", V5QoS::AtLeastOnce)
        .await
        .expect("sub");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            next_rpc(&mut rx).await.1["method"]
                .as_str()
                .expect("m")
                .to_string(),
        );
    }
    assert_eq!(got, ["a", "b", "c"]);
}

/// A fleet with `n` devices; returns (fleet id, [(device id, token)]).
async fn fleet_of(t: &TestApp, name: &str, n: usize) -> (String, Vec<(String, String)>) {
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let (_, ws) = call(&base, &key, "POST", "/workspaces", json!({"name": name})).await;
    let (_, fleet) = call(
        &base,
        &key,
        "POST",
        "/fleets",
        json!({"workspace_id": ws["id"], "name": name}),
    )
    .await;
    let mut devices = Vec::new();
    for i in 0..n {
        let (_, d) = call(
            &base,
            &key,
            "POST",
            "/devices",
            json!({"fleet_id": fleet["id"], "name": format!("{name}-{i}")}),
        )
        .await;
        devices.push((
            d["device"]["id"].as_str().expect("id").to_string(),
            d["credentials"]["token"]
                .as_str()
                .expect("token")
                .to_string(),
        ));
    }
    (fleet["id"].as_str().expect("fleet").to_string(), devices)
}

#[tokio::test]
async fn fleet_jobs_roll_out_at_their_rate_and_report_progress() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let (fleet, devices) = fleet_of(&t, "rollout", 4).await;
    let mut sessions = Vec::new();
    for (_, token) in &devices {
        sessions.push(rpc_device(&t, token, false).await);
    }
    // 60 devices a minute: one at once, then one a second.
    let started = std::time::Instant::now();
    let (s, fj) = call(
        &base,
        &key,
        "POST",
        &format!("/fleets/{fleet}/jobs"),
        json!({"method": "reboot", "per_minute": 60, "idempotency_key": "reboot-2026-11"}),
    )
    .await;
    assert_eq!(s, 201, "{fj}");
    assert_eq!(
        (fj["launched"].as_u64(), fj["progress"]["pending"].as_u64()),
        (Some(1), Some(3))
    );
    let fid = fj["id"].as_str().expect("id").to_string();
    for (_, rx) in sessions.iter_mut() {
        assert_eq!(next_rpc(rx).await.1["method"], "reboot");
    }
    // Four devices at one a second take about three seconds, not less.
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let done = eventually(10, || async {
        let (_, v) = call(
            &base,
            &key,
            "GET",
            &format!("/fleet-jobs/{fid}"),
            Value::Null,
        )
        .await;
        (v["state"] == "completed").then_some(v)
    })
    .await;
    assert_eq!(done["progress"]["succeeded"], 4, "{done}");
    // The same key again (a client retrying after a lost answer) returns the first rollout;
    // an empty key is refused by name.
    let (_, again) = call(
        &base,
        &key,
        "POST",
        &format!("/fleets/{fleet}/jobs"),
        json!({"method": "reboot", "idempotency_key": "reboot-2026-11"}),
    )
    .await;
    assert_eq!(again["id"].as_str(), Some(fid.as_str()), "{again}");
    assert_eq!(again["state"], "completed", "{again}");
    let (s, bad) = call(
        &base,
        &key,
        "POST",
        &format!("/fleets/{fleet}/jobs"),
        json!({"method": "reboot", "idempotency_key": ""}),
    )
    .await;
    assert_eq!(
        (s, bad["error"]["code"].as_str()),
        (422, Some("invalid_field")),
        "{bad}"
    );
    assert!(
        bad["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("idempotency_key: ")),
        "{bad}"
    );
    let (_, list) = call(
        &base,
        &key,
        "GET",
        &format!("/fleets/{fleet}/jobs"),
        Value::Null,
    )
    .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn fleet_jobs_abort_past_their_failure_threshold_and_can_be_cancelled() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    // Offline devices: every job expires after its one-second TTL.
    let (fleet, _) = fleet_of(&t, "gone", 8).await;
    let (_, fj) = call(
        &base,
        &key,
        "POST",
        &format!("/fleets/{fleet}/jobs"),
        json!({"method": "update", "ttl_secs": 1, "per_minute": 120,
               "abort_failure_pct": 50, "abort_min_sample": 2}),
    )
    .await;
    let fid = fj["id"].as_str().expect("id").to_string();
    let aborted = eventually(15, || async {
        let (_, v) = call(
            &base,
            &key,
            "GET",
            &format!("/fleet-jobs/{fid}"),
            Value::Null,
        )
        .await;
        (v["state"] == "aborted").then_some(v)
    })
    .await;
    assert!(aborted["launched"].as_u64() < Some(8), "{aborted}");
    assert!(
        aborted["note"]
            .as_str()
            .expect("note")
            .contains("threshold 50"),
        "{aborted}"
    );
    let pending = aborted["progress"]["pending"].as_u64().expect("pending");
    assert!(pending > 0, "{aborted}");

    let (fleet2, _) = fleet_of(&t, "later", 3).await;
    let (_, fj2) = call(
        &base,
        &key,
        "POST",
        &format!("/fleets/{fleet2}/jobs"),
        json!({"method": "m", "per_minute": 1}),
    )
    .await;
    let (s, c) = call(
        &base,
        &key,
        "POST",
        &format!("/fleet-jobs/{}/cancel", fj2["id"].as_str().expect("id")),
        Value::Null,
    )
    .await;
    assert_eq!((s, c["state"].as_str()), (200, Some("cancelled")));
    assert_eq!(c["progress"]["cancelled"], 1, "{c}");
    assert_eq!(c["progress"]["pending"], 2, "{c}");
}

/// Reads server-sent events until one satisfies `want` (bounded by 20 s).
async fn next_sse(
    resp: &mut reqwest::Response,
    buf: &mut String,
    want: impl Fn(&str, &Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut kind = "";
            let mut data = Value::Null;
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                    kind = k.trim();
                } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                    data = serde_json::from_str(d.trim()).expect("event data is JSON");
                }
            }
            if want(kind, &data) {
                return data;
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("an event in time")
            .expect("stream")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn schedules_over_rest_and_job_events_as_a_live_stream() {
    let mut t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let (fleet, devices) = fleet_of(&t, "sched", 2).await;
    let device = devices[0].0.clone();
    // The live stream of job events for one device.
    let mut events = reqwest::Client::new()
        .get(format!(
            "{base}/api/v1/events?kinds=job_updated&device_id={device}"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), 200);
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap_or(""),
        "text/event-stream"
    );
    let unauthenticated = reqwest::get(format!("{base}/api/v1/events"))
        .await
        .expect("get");
    assert_eq!(unauthenticated.status(), 401);

    let (st, s) = call(
        &base,
        &key,
        "POST",
        "/schedules",
        json!({"name": "nightly", "device_id": device, "method": "reboot",
               "trigger": {"cron": {"expr": "0 3 * * *", "tz": "Asia/Kolkata"}},
               "window": {"start": "02:00", "end": "05:00", "tz": "Asia/Kolkata"}}),
    )
    .await;
    assert_eq!(st, 201, "{s}");
    let id = s["id"].as_str().expect("id").to_string();
    // 03:00 in Kolkata is 21:30 UTC.
    let next = s["next_run_at"].as_i64().expect("next run");
    assert_eq!(
        next.rem_euclid(86_400_000),
        (21 * 3600 + 1800) * 1000,
        "{s}"
    );

    // Run now: the job is created and announced on the stream.
    let (st, ran) = call(
        &base,
        &key,
        "POST",
        &format!("/schedules/{id}/run"),
        json!(null),
    )
    .await;
    assert_eq!(st, 200, "{ran}");
    assert_eq!(ran["runs"], 1);
    let job_id = ran["last_result"]
        .as_str()
        .and_then(|r| r.strip_prefix("job "))
        .expect("the job created")
        .to_string();
    let mut buf = String::new();
    let ev = next_sse(&mut events, &mut buf, |kind, d| {
        kind == "job_updated" && d["job_id"] == job_id.as_str()
    })
    .await;
    assert_eq!(ev["state"], "queued", "{ev}");
    // Cancelling it is announced too.
    let (st, _) = call(
        &base,
        &key,
        "POST",
        &format!("/jobs/{job_id}/cancel"),
        json!(null),
    )
    .await;
    assert_eq!(st, 200);
    let ev = next_sse(&mut events, &mut buf, |_, d| {
        d["job_id"] == job_id.as_str() && d["state"] == "cancelled"
    })
    .await;
    assert_eq!(ev["device_id"], device.as_str());

    let (st, list) = call(&base, &key, "GET", "/schedules", json!(null)).await;
    assert_eq!(st, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (st, off) = call(
        &base,
        &key,
        "POST",
        &format!("/schedules/{id}/disable"),
        json!(null),
    )
    .await;
    assert_eq!(
        (st, &off["enabled"], off.get("next_run_at")),
        (200, &json!(false), None)
    );
    let (st, on) = call(
        &base,
        &key,
        "POST",
        &format!("/schedules/{id}/enable"),
        json!(null),
    )
    .await;
    assert_eq!((st, on["next_run_at"].as_i64()), (200, Some(next)));

    // Bad input: precise codes and fields.
    for (body, field) in [
        (
            json!({"name": "x", "method": "m", "trigger": {"cron": {"expr": "0 3 * * *"}}}),
            "device_id",
        ),
        (
            json!({"name": "x", "device_id": device, "fleet_id": fleet, "method": "m",
                "trigger": {"cron": {"expr": "0 3 * * *"}}}),
            "device_id",
        ),
        (
            json!({"name": "x", "device_id": device, "method": "m",
                "trigger": {"cron": {"expr": "0 3 * * 9"}}}),
            "trigger",
        ),
        (
            json!({"name": "x", "fleet_id": fleet, "method": "m", "trigger": {"at": 1}}),
            "trigger",
        ),
        (
            json!({"name": "x", "fleet_id": fleet, "method": "m", "trigger": {"cron": {"expr": "@daily"}},
                "window": {"start": "2:60", "end": "03:00"}}),
            "window.start",
        ),
        (
            json!({"name": "x", "device_id": device, "method": "m", "trigger": {"cron": {"expr": "@daily"}},
                "filter": {"tag": "gps"}}),
            "filter",
        ),
    ] {
        let (st, e) = call(&base, &key, "POST", "/schedules", body.clone()).await;
        assert_eq!(st, 422, "{body} → {e}");
        assert_eq!(e["error"]["code"], "invalid_field", "{body} → {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("{field}: "))),
            "{body} → {e}"
        );
    }
    let (st, e) = call(&base, &key, "POST", "/schedules", json!({"name": "x"})).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{e}"
    );

    // A fleet rollout filtered by label over REST.
    let (st, fj) = call(
        &base,
        &key,
        "POST",
        &format!("/fleets/{fleet}/jobs"),
        json!({"method": "ping", "filter": {"label": "none-has-this"}}),
    )
    .await;
    assert_eq!(st, 201, "{fj}");
    assert_eq!(fj["devices"], json!([]));
    assert_eq!(fj["state"], "completed", "{fj}");
    assert_eq!(fj["note"], "no enabled device of the fleet matches", "{fj}");

    let (st, _) = call(
        &base,
        &key,
        "DELETE",
        &format!("/schedules/{id}"),
        json!(null),
    )
    .await;
    assert_eq!(st, 204);
    let (st, e) = call(&base, &key, "GET", &format!("/schedules/{id}"), json!(null)).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    // An open event stream ends at shutdown instead of holding the server up.
    tokio::time::timeout(Duration::from_secs(8), t.stop())
        .await
        .expect("shutdown is not held up by the open event stream");
    let rest = tokio::time::timeout(Duration::from_secs(5), events.chunk()).await;
    assert!(
        matches!(rest, Ok(Ok(None)) | Ok(Err(_))),
        "the stream ended: {rest:?}"
    );
}

/// The `job-sends` worker's unit of work on real services (no transport, no worker: the test
/// plays both): a device's acknowledgement and its reply recorded in one run leave the job
/// `succeeded` with the reply as its result, after `delivered`; the transport waiting for the
/// reply is told once the run's writes are durable; a reply nobody waits for is answered
/// `false` in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_and_its_reply_are_recorded_in_one_run() {
    use corral::jobs::{NewJob, SendOutcome};
    use corral::model::JobState;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::schedules::services(dir.path(), 1_800_000_000_000).await;
    let (_, devices) = crate::schedules::fleet(&s, 1).await;
    let device = devices[0];
    // Online: its job goes out at once, under request id 1.
    let (mut slot, _) = s.sessions.register(device, None);
    let job = s
        .jobs
        .create(
            device,
            NewJob {
                method: "read".into(),
                params: json!({}),
                two_way: true,
                ttl_secs: None,
                idempotency_key: None,
            },
        )
        .await
        .expect("job");
    let sent = slot
        .commands
        .recv()
        .await
        .expect("a command for the session");
    assert!(
        matches!(
            *sent,
            corral::devices::sessions::SessionCommand::Rpc { rpc_id: 1, .. }
        ),
        "{sent:?}"
    );
    s.jobs.on_sent(job.id, SendOutcome::Acked);
    let (a, b) = (s.clone(), s.clone());
    let reply = tokio::spawn(async move { a.jobs.on_reply(device, 1, br#"{"t": 21.5}"#).await });
    let stray = tokio::spawn(async move { b.jobs.on_reply(device, 99, b"late").await });
    let mut work = corral::jobs::SendWork::default();
    while work.replies.len() < 2 {
        let more = s.jobs.take_send_work();
        work.outcomes.extend(more.outcomes);
        work.replies.extend(more.replies);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(work.outcomes.len(), 1);
    let answers = s.jobs.do_send_work(work).await.expect("one run");
    assert!(
        !reply.is_finished(),
        "answered before its writes are durable"
    );
    let durable = s.jobs.durable(answers.mark).await;
    answers.answer(&durable);
    assert!(reply.await.expect("task").expect("stored"), "a job waited");
    assert!(
        !stray.await.expect("task").expect("answered"),
        "no job waited"
    );
    let done = s.jobs.get(job.id).await.expect("job");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result, Some(json!({"t": 21.5})));
    let states: Vec<JobState> = done.history.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            JobState::Queued,
            JobState::Sent,
            JobState::Delivered,
            JobState::Succeeded
        ]
    );
}
