//! Telemetry limits against the real App and the real binary, with real clients (rumqttc over
//! TLS, reqwest): the key caps per message and per device (MQTT 5 reason codes, MQTT 3.1.1
//! closes, HTTP 422 codes, metrics, nothing of a refused message stored, the count surviving a
//! crash and freed by retention), heavy queries off the request threads (health and ordinary
//! calls answer while they run, tag listings exact, aggregates bounded), and the refused key and
//! timestamp shapes of D13 with a CSV export that carries no raw control bytes.

mod common;

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
        .map(|a| a.iter().filter_map(|k| k.as_str().map(String::from)).collect())
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
    let (_, ws) = call(base, key, "POST", "/workspaces", Some(json!({"name": name}))).await;
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
    assert_eq!(all["data"], json!({}), "nothing of a refused message is stored");

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
