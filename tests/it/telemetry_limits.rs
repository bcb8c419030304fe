//! Telemetry limits against the real App and the real binary, with real clients (rumqttc over
//! TLS, reqwest): the key caps per message and per device (MQTT 5 reason codes, MQTT 3.1.1
//! closes, HTTP 422 codes, metrics, nothing of a refused message stored, the count surviving a
//! crash and freed by retention), heavy queries off the request threads (health and ordinary
//! calls answer while they run, tag listings exact, aggregates bounded), and the refused key and
//! timestamp shapes of D13 with a CSV export that carries no raw control bytes.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::mqtt::{next_v3, next_v5, spawn_v3, spawn_v5};
use common::server::Server;
use common::{TestApp, call, eventually};
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason};
use rumqttc::{Packet, QoS};
use serde_json::{Value, json};

/// `{"<prefix>0":1, ...}` with `n` keys starting at `from`.
fn keys(prefix: &str, from: usize, n: usize) -> Value {
    Value::Object(
        (from..from + n)
            .map(|i| (format!("{prefix}{i}"), json!(i)))
            .collect(),
    )
}

/// A device API telemetry POST: (status, JSON body or Null).
async fn post_telemetry(base: &str, token: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/{token}/telemetry"))
        .timeout(Duration::from_secs(30))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    let s = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The keys a device has under `default`, from the REST tag listing.
async fn listed(base: &str, key: &str, id: &str) -> BTreeSet<String> {
    let (s, v) = call(base, key, "GET", &format!("/devices/{id}/tags"), None).await;
    assert_eq!(s, 200, "{v}");
    v["tags"]["default"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn names(prefix: &str, from: usize, n: usize) -> BTreeSet<String> {
    (from..from + n).map(|i| format!("{prefix}{i}")).collect()
}

/// `corral_messages_rejected_total{reason="<reason>"}`, 0 when absent.
async fn rejected(base: &str, reason: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let line = format!("corral_messages_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Creates a workspace, fleet and device over REST; returns (workspace id, device id, token).
async fn device(base: &str, key: &str, name: &str) -> (String, String, String) {
    let (_, ws) = call(
        base,
        key,
        "POST",
        "/workspaces",
        Some(json!({"name": name})),
    )
    .await;
    let (_, fleet) = call(
        base,
        key,
        "POST",
        "/fleets",
        Some(json!({"workspace_id": ws["id"], "name": "f"})),
    )
    .await;
    let (s, d) = call(
        base,
        key,
        "POST",
        "/devices",
        Some(json!({"fleet_id": fleet["id"], "name": name})),
    )
    .await;
    assert_eq!(s, 201, "{d}");
    let s = |v: &Value| v.as_str().expect("string").to_string();
    (
        s(&ws["id"]),
        s(&d["device"]["id"]),
        s(&d["credentials"]["token"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_refuses_messages_over_the_key_caps_whole() {
    let mut t = TestApp::start_with(|c| {
        c.limits.telemetry_keys_per_message = 5;
        c.limits.telemetry_keys_per_device = 8;
    })
    .await;
    let base = t.http_base();
    let (dev, token) = t.device("capped").await;
    let id = dev["id"].as_str().expect("id").to_string();
    let (client, mut rx) = spawn_v5(t.v5_options("", &token, ""));
    assert!(matches!(next_v5(&mut rx).await, Ok(V5Packet::ConnAck(_))));
    let mut publish = async |body: Value| {
        client
            .publish(
                "v1/devices/me/telemetry",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await
            .expect("publish");
        match next_v5(&mut rx).await {
            Ok(V5Packet::PubAck(a)) => a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    };
    assert_eq!(publish(keys("a", 0, 4)).await, PubAckReason::Success);
    // Six distinct keys in one message: 0x99, nothing of it stored.
    assert_eq!(
        publish(keys("m", 0, 6)).await,
        PubAckReason::PayloadFormatInvalid
    );
    assert_eq!(publish(keys("a", 4, 4)).await, PubAckReason::Success);
    // The device holds 8 keys: a new one is over its quota (0x97), even beside a known key,
    // and in the array form too; the known key's value in that message is not stored either.
    assert_eq!(
        publish(json!({"a0": 99, "new": 1})).await,
        PubAckReason::QuotaExceeded
    );
    assert_eq!(
        publish(json!([{"ts": 1_000, "values": {"a1": 5}}, {"ts": 2_000, "values": {"b": 1}}]))
            .await,
        PubAckReason::QuotaExceeded
    );
    // Keys the device has are always accepted.
    assert_eq!(
        publish(json!({"a0": 7, "a5": 7})).await,
        PubAckReason::Success
    );
    assert_eq!(
        listed(&base, &t.admin_key, &id).await,
        names("a", 0, 8),
        "the refused messages left no key behind"
    );
    let a0: Vec<Value> = t.telemetry(&id, &[]).await["data"]["a0"]
        .as_array()
        .expect("a0")
        .iter()
        .map(|p| p["value"].clone())
        .collect();
    assert_eq!(a0, [json!(0), json!(7)], "99 was refused with its message");

    // MQTT 3.1.1 has no negative PUBACK: the connection is closed, as for a bad payload.
    for body in [json!({"new": 1}), keys("a", 0, 6)] {
        let (c3, mut rx3) = spawn_v3(t.v3_options("", &token, ""));
        assert!(matches!(next_v3(&mut rx3).await, Ok(Packet::ConnAck(_))));
        c3.publish(
            "v1/devices/me/telemetry",
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        )
        .await
        .expect("publish");
        assert!(next_v3(&mut rx3).await.is_err(), "closed after {body}");
    }
    let (c3, mut rx3) = spawn_v3(t.v3_options("", &token, ""));
    assert!(matches!(next_v3(&mut rx3).await, Ok(Packet::ConnAck(_))));
    c3.publish(
        "v1/devices/me/telemetry",
        QoS::AtLeastOnce,
        false,
        r#"{"a1":3}"#,
    )
    .await
    .expect("publish");
    assert!(matches!(next_v3(&mut rx3).await, Ok(Packet::PubAck(_))));
    assert_eq!(listed(&base, &t.admin_key, &id).await, names("a", 0, 8));
    assert_eq!(rejected(&base, "too_many_keys").await, 2);
    assert_eq!(rejected(&base, "key_quota_exceeded").await, 3);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_key_caps_hold_across_a_crash_and_retention_frees_keys() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let key = corral::auth::new_api_key();
    let env = [
        ("CORRAL_LIMITS__TELEMETRY_KEYS_PER_MESSAGE", "2"),
        ("CORRAL_LIMITS__TELEMETRY_KEYS_PER_DEVICE", "3"),
    ];
    let mut srv = Server::spawn_with(&data, &key, &env);
    let base = srv.base();
    let (ws, id, token) = device(&base, &key, "http-capped").await;
    let old = corral::model::now_ms() - 10 * 86_400_000;
    let post = |body: Value| {
        let (base, token) = (base.clone(), token.clone());
        async move { post_telemetry(&base, &token, &body).await }
    };
    assert_eq!(
        post(json!({"ts": old, "values": {"a": 1, "b": 2}})).await.0,
        200
    );
    let (s, e) = post(json!({"x": 1, "y": 2, "z": 3})).await;
    assert_eq!((s, e["code"].as_str()), (422, Some("too_many_keys")), "{e}");
    assert_eq!(post(json!({"c": 1})).await.0, 200);
    let (s, e) = post(json!({"c": 2, "d": 1})).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (422, Some("key_quota_exceeded")),
        "{e}"
    );
    assert!(e["error"].as_str().is_some_and(|m| m.contains("3")), "{e}");
    assert_eq!(post(json!({"c": 3})).await.0, 200);
    assert_eq!(rejected(&base, "too_many_keys").await, 1);
    assert_eq!(rejected(&base, "key_quota_exceeded").await, 1);

    // After a crash the count is rebuilt from the store (and the replayed log).
    srv.kill9();
    let srv = Server::spawn_with(&data, &key, &env);
    let base = srv.base();
    let post = |body: Value| {
        let (base, token) = (base.clone(), token.clone());
        async move { post_telemetry(&base, &token, &body).await }
    };
    let (s, e) = post(json!({"d": 1})).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (422, Some("key_quota_exceeded")),
        "{e}"
    );
    assert_eq!(post(json!({"b": 3})).await.0, 200);
    assert_eq!(
        listed(&base, &key, &id).await,
        BTreeSet::from(["a", "b", "c"].map(String::from))
    );

    // Retention empties "a" (only old points); "b" keeps its new point. "a" stops counting.
    let (s, _) = call(
        &base,
        &key,
        "PATCH",
        &format!("/workspaces/{ws}"),
        Some(json!({"retention_days": 5})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, report) = call(&base, &key, "POST", "/retention/sweep", None).await;
    assert_eq!(
        (s, report["series_emptied"].as_u64()),
        (200, Some(1)),
        "{report}"
    );
    eventually(10, || {
        let accepted = post(json!({"d": 1}));
        async move { (accepted.await.0 == 200).then_some(()) }
    })
    .await;
    assert_eq!(
        listed(&base, &key, &id).await,
        BTreeSet::from(["b", "c", "d"].map(String::from))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_queries_leave_health_and_other_calls_answering() {
    corral::pki::install_crypto_provider();
    const CAP: usize = 20_000;
    const PER_MESSAGE: usize = 5_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn_with(
        &dir.path().join("data"),
        &key,
        &[
            ("CORRAL_LIMITS__TELEMETRY_KEYS_PER_MESSAGE", "5000"),
            ("CORRAL_LIMITS__TELEMETRY_KEYS_PER_DEVICE", "20000"),
            // 5,000 keys a message are about 90 KB of JSON: over the default packet size,
            // which the HTTP device API applies too.
            ("CORRAL_MQTT__MAX_PACKET_SIZE", "262144"),
        ],
    );
    let base = srv.base();
    let (_, id, token) = device(&base, &key, "heavy").await;
    // The device fills its cap, 5,000 keys a message (about 55 KB each).
    for m in 0..CAP / PER_MESSAGE {
        let (s, e) = post_telemetry(&base, &token, &keys("k", m * PER_MESSAGE, PER_MESSAGE)).await;
        assert_eq!(s, 200, "{e}");
    }
    let (s, e) = post_telemetry(&base, &token, &json!({"one_more": 1})).await;
    assert_eq!((s, e["code"].as_str()), (422, Some("key_quota_exceeded")));
    assert_eq!(
        listed(&base, &key, &id).await,
        names("k", 0, CAP),
        "the listing holds every key exactly once"
    );
    // All keys × 25 hourly buckets is over what one answer may hold: refused up front.
    let agg = format!("/devices/{id}/telemetry/aggregate?interval=1h");
    let (s, e) = call(&base, &key, "GET", &agg, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("too_many_series")),
        "{e}"
    );
    let (s, e) = call(&base, &key, "GET", &format!("{agg}&keys=k1,k2"), None).await;
    assert_eq!(
        (s, e["data"].as_object().map(|d| d.len())),
        (200, Some(2)),
        "{e}"
    );

    // Heavy reads in flight, more of them than the server has cores...
    let mut heavy = Vec::new();
    for i in 0..12 {
        let (base, key) = (base.clone(), key.clone());
        let path = match i % 3 {
            0 => format!("/devices/{id}/tags"),
            1 => format!("/devices/{id}/telemetry/latest"),
            _ => format!("/export?device_id={id}&from=0&format=json"),
        };
        heavy.push(tokio::spawn(async move {
            call(&base, &key, "GET", &path, None).await.0
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...while health and an ordinary call answer, within a generous bound.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    for _ in 0..3 {
        let h = quick
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz answers within 5 s while heavy queries run");
        assert_eq!(h.status().as_u16(), 200);
        let d = quick
            .get(format!("{base}/api/v1/devices/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("a device read answers within 5 s while heavy queries run");
        assert_eq!(d.status().as_u16(), 200);
    }
    for h in heavy {
        assert_eq!(h.await.expect("join"), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_keys_and_negative_times_are_refused() {
    let mut t = TestApp::start().await;
    let base = t.http_base();
    let (dev, token) = t.device("shapes").await;
    let id = dev["id"].as_str().expect("id").to_string();
    let (client, mut rx) = spawn_v5(t.v5_options("", &token, ""));
    assert!(matches!(next_v5(&mut rx).await, Ok(V5Packet::ConnAck(_))));
    let bad = [
        json!({"a\u{0}b": 1}),
        json!({"line\nbreak": 1}),
        json!({"\u{1b}[31m": 1}),
        json!({"ts": -1, "values": {"t": 1}}),
        json!([{"ts": 5, "values": {"t": 1}}, {"ts": -1_700_000_000_000i64, "values": {"t": 2}}]),
    ];
    for body in &bad {
        client
            .publish(
                "v1/devices/me/telemetry",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await
            .expect("publish");
        match next_v5(&mut rx).await {
            Ok(V5Packet::PubAck(a)) => {
                assert_eq!(a.reason, PubAckReason::PayloadFormatInvalid, "{body}")
            }
            other => panic!("{other:?}"),
        }
        let (s, e) = post_telemetry(&base, &token, body).await;
        assert_eq!(s, 400, "{body}: {e}");
    }
    let all = t.telemetry(&id, &[("from", "0".into())]).await;
    assert_eq!(
        all["data"],
        json!({}),
        "nothing of a refused message is stored"
    );

    // A string value may hold any character: the CSV export quotes it, and control
    // characters other than line breaks and tabs reach no CSV raw.
    let value = "x\u{0}y\u{1b}[0m,\"q\"\r\nz\u{7f}";
    let (s, _) = post_telemetry(&base, &token, &json!({"note": value})).await;
    assert_eq!(s, 200);
    let csv = reqwest::Client::new()
        .get(format!("{base}/api/v1/export?device_id={id}"))
        .bearer_auth(&t.admin_key)
        .send()
        .await
        .expect("export")
        .bytes()
        .await
        .expect("csv");
    assert!(
        csv.iter()
            .all(|&b| b >= 0x20 && b != 0x7f || b == b'\n' || b == b'\r'),
        "raw control bytes in {csv:?}"
    );
    let text = String::from_utf8(csv.to_vec()).expect("utf8");
    assert!(
        text.contains(",\"x\u{fffd}y\u{fffd}[0m,\"\"q\"\"\r\nz\u{fffd}\"\n"),
        "{text}"
    );
    t.stop().await;
}
