//! Device data beyond telemetry ingest, over real TLS MQTT (rumqttc 3.1.1 and 5) and real HTTP:
//! client attributes published by devices (typed, refused when not an object), attribute
//! requests with ThingsBoard's semantics, pushes of shared-attribute changes (device values,
//! fleet defaults, deletions, fall-back to the fleet default) to subscribed sessions only; the
//! ThingsBoard HTTP device API (telemetry in every form and tagged, attributes, long polls, RPC,
//! claiming, 401/403/400/408); and telemetry aggregates (1m/15m/1h/1d buckets in UTC,
//! Europe/Berlin across both DST changes and Asia/Kolkata) checked bucket by bucket against an
//! independent computation in this file (jiff offsets, not Corral's boundary code), for one
//! device and merged across a fleet, with key and tag filters, tag listings and the aggregate
//! error codes; UNSUBSCRIBE stops pushes; multi-hour buckets follow the local clock across DST.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestApp;
use common::mqtt::{spawn_v3, spawn_v5};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as V5Code, Packet as V5Packet, PubAckReason, SubscribeReasonCode as Sub5,
};
use rumqttc::{Packet, QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

type Rx3 = UnboundedReceiver<Result<Packet, rumqttc::ConnectionError>>;
type Rx5 = UnboundedReceiver<Result<V5Packet, rumqttc::v5::ConnectionError>>;
type Client3 = rumqttc::AsyncClient;
type Client5 = rumqttc::v5::AsyncClient;

const ATTRS: &str = "v1/devices/me/attributes";
/// How long a push may take (the brief: within a second).
const PUSH: Duration = Duration::from_secs(1);
/// How long we listen to show that nothing is pushed.
const QUIET: Duration = Duration::from_millis(600);

// ---------------------------------------------------------------------------------------------
// HTTP helpers

struct Http {
    base: String,
    key: String,
    c: reqwest::Client,
}

impl Http {
    fn new(t: &TestApp) -> Self {
        Http {
            base: t.http_base(),
            key: t.admin_key.clone(),
            c: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
        }
    }

    /// An admin REST call under `/api/v1`: (status, JSON body or Null).
    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .c
            .request(
                method.parse().expect("method"),
                format!("{}/api/v1{path}", self.base),
            )
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.admin("GET", path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    async fn put(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.admin("PUT", path, Some(body)).await;
        assert_eq!(s, 200, "PUT {path}: {v}");
        v
    }

    async fn delete(&self, path: &str) {
        let (s, v) = self.admin("DELETE", path, None).await;
        assert_eq!(s, 204, "DELETE {path}: {v}");
    }

    /// A device API call, `/api/v1/{token}{path}`, with a raw body: (status, JSON or Null).
    async fn dev(&self, method: &str, token: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut r = self
            .c
            .request(
                method.parse().expect("method"),
                format!("{}/api/v1/{token}{path}", self.base),
            )
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

/// A second device in the fleet of `first`; returns (id, token).
async fn sibling(h: &Http, first: &Value, name: &str) -> (String, String) {
    let (s, d) = h
        .admin(
            "POST",
            "/devices",
            Some(json!({"fleet_id": first["fleet_id"], "name": name})),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    (
        d["device"]["id"].as_str().expect("id").to_string(),
        d["credentials"]["token"]
            .as_str()
            .expect("token")
            .to_string(),
    )
}

/// `{key: {"value": v, "ts": ..}}` as `{key: v}`.
fn values_of(scope: &Value) -> Value {
    Value::Object(
        scope
            .as_object()
            .expect("scope object")
            .iter()
            .map(|(k, v)| (k.clone(), v["value"].clone()))
            .collect(),
    )
}

fn id_of(d: &Value) -> String {
    d["id"].as_str().expect("id").to_string()
}

// ---------------------------------------------------------------------------------------------
// MQTT helpers

async fn connect5(t: &TestApp, token: &str) -> (Client5, Rx5) {
    let (c, mut rx) = spawn_v5(t.v5_options("", token, ""));
    match recv5(&mut rx, Duration::from_secs(10)).await {
        Some(V5Packet::ConnAck(a)) => assert_eq!(a.code, V5Code::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    (c, rx)
}

async fn connect3(t: &TestApp, token: &str) -> (Client3, Rx3) {
    let (c, mut rx) = spawn_v3(t.v3_options("", token, ""));
    match recv3(&mut rx, Duration::from_secs(10)).await {
        Ok(Some(Packet::ConnAck(a))) => assert_eq!(a.code, rumqttc::ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    (c, rx)
}

/// The next v5 packet other than PINGRESP within `within`; None when nothing came.
async fn recv5(rx: &mut Rx5, within: Duration) -> Option<V5Packet> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return None,
            Ok(None) => panic!("the event loop ended"),
            Ok(Some(Ok(V5Packet::PingResp(_)))) => continue,
            Ok(Some(Ok(p))) => return Some(p),
            Ok(Some(Err(e))) => panic!("connection error: {e:?}"),
        }
    }
}

/// The next v3 packet other than PINGRESP within `within`: Ok(None) when nothing came, Err when
/// the connection ended.
async fn recv3(rx: &mut Rx3, within: Duration) -> Result<Option<Packet>, rumqttc::ConnectionError> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Ok(None),
            Ok(None) => panic!("the event loop ended"),
            Ok(Some(Ok(Packet::PingResp))) => continue,
            Ok(Some(Ok(p))) => return Ok(Some(p)),
            Ok(Some(Err(e))) => return Err(e),
        }
    }
}

async fn sub5(c: &Client5, rx: &mut Rx5, filter: &str) {
    c.subscribe(filter, QoS5::AtLeastOnce)
        .await
        .expect("subscribe");
    match recv5(rx, Duration::from_secs(5)).await {
        Some(V5Packet::SubAck(s)) => {
            assert_eq!(s.return_codes, vec![Sub5::Success(QoS5::AtLeastOnce)])
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn sub3(c: &Client3, rx: &mut Rx3, filter: &str) {
    c.subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    match recv3(rx, Duration::from_secs(5)).await {
        Ok(Some(Packet::SubAck(s))) => assert_eq!(
            s.return_codes,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publishes at QoS 1 and returns the PUBACK reason; a PUBLISH arriving first is a failure.
async fn pub5(c: &Client5, rx: &mut Rx5, topic: &str, payload: impl Into<String>) -> PubAckReason {
    c.publish(topic, QoS5::AtLeastOnce, false, payload.into())
        .await
        .expect("publish");
    match recv5(rx, Duration::from_secs(10)).await {
        Some(V5Packet::PubAck(a)) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn pub3(c: &Client3, rx: &mut Rx3, topic: &str, payload: impl Into<String>) {
    c.publish(topic, QoS::AtLeastOnce, false, payload.into())
        .await
        .expect("publish");
    match recv3(rx, Duration::from_secs(10)).await {
        Ok(Some(Packet::PubAck(_))) => {}
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Sends an attribute request `n` over v5 and returns the response published on
/// `.../attributes/response/{n}` (the request is also acknowledged with success).
async fn request5(c: &Client5, rx: &mut Rx5, n: u64, body: Value) -> Value {
    c.publish(
        format!("v1/devices/me/attributes/request/{n}"),
        QoS5::AtLeastOnce,
        false,
        body.to_string(),
    )
    .await
    .expect("publish");
    let (mut acked, mut reply) = (false, None);
    while !acked || reply.is_none() {
        match recv5(rx, Duration::from_secs(5)).await {
            Some(V5Packet::PubAck(a)) => {
                assert_eq!(a.reason, PubAckReason::Success);
                acked = true;
            }
            Some(V5Packet::Publish(p)) => {
                assert_eq!(
                    String::from_utf8_lossy(&p.topic),
                    format!("v1/devices/me/attributes/response/{n}")
                );
                assert!(reply.is_none(), "one response per request");
                reply = Some(serde_json::from_slice(&p.payload).expect("JSON response"));
            }
            other => panic!("expected the response and a PUBACK, got {other:?}"),
        }
    }
    reply.expect("reply")
}

/// The next attribute push on v5, within a second.
async fn push5(rx: &mut Rx5) -> Value {
    match recv5(rx, PUSH).await {
        Some(V5Packet::Publish(p)) => {
            assert_eq!(String::from_utf8_lossy(&p.topic), ATTRS);
            serde_json::from_slice(&p.payload).expect("JSON push")
        }
        other => panic!("expected an attribute push within 1 s, got {other:?}"),
    }
}

async fn push3(rx: &mut Rx3) -> Value {
    match recv3(rx, PUSH).await {
        Ok(Some(Packet::Publish(p))) => {
            assert_eq!(p.topic, ATTRS);
            serde_json::from_slice(&p.payload).expect("JSON push")
        }
        other => panic!("expected an attribute push within 1 s, got {other:?}"),
    }
}

async fn quiet5(rx: &mut Rx5, what: &str) {
    if let Some(p) = recv5(rx, QUIET).await {
        panic!("{what}: expected nothing, got {p:?}");
    }
}

async fn quiet3(rx: &mut Rx3, what: &str) {
    match recv3(rx, QUIET).await {
        Ok(None) => {}
        other => panic!("{what}: expected nothing, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Attributes over MQTT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_client_attributes_are_stored_typed_and_bad_payloads_refused() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (dev, token) = t.device("attr-dev").await;
    let id = id_of(&dev);

    let (c, mut rx) = connect5(&t, &token).await;
    let body = json!({"serial": "SN1", "nested": {"x": [1, 2]}, "count": "42", "ratio": 0.5,
        "on": false, "whole": 3.0, "gone": null});
    assert_eq!(
        pub5(&c, &mut rx, ATTRS, body.to_string()).await,
        PubAckReason::Success
    );
    // Durable and visible as soon as the PUBACK came.
    let a = h.get(&format!("/devices/{id}/attributes")).await;
    let client = a["client"].as_object().expect("client scope");
    assert_eq!(
        values_of(&a["client"]),
        json!({"serial": "SN1", "nested": {"x": [1, 2]}, "count": 42, "ratio": 0.5,
            "on": false, "whole": 3.0}),
        "typed values; nulls skipped: {a}"
    );
    // Typing is exact: a numeric string becomes a long, 3.0 stays a double.
    assert!(client["count"]["value"].is_i64());
    assert!(client["whole"]["value"].is_f64());
    assert!(client["serial"]["ts"].is_i64());
    assert_eq!(a["shared"], json!({}));
    assert_eq!(a["server"], json!({}));
    let only = h
        .get(&format!("/devices/{id}/attributes?scope=client"))
        .await;
    assert_eq!(only["client"], a["client"]);
    assert!(only.get("shared").is_none() && only.get("server").is_none());

    // A later report updates one key and keeps the others.
    assert_eq!(
        pub5(&c, &mut rx, ATTRS, r#"{"serial":"SN2"}"#).await,
        PubAckReason::Success
    );
    let a2 = h
        .get(&format!("/devices/{id}/attributes?scope=client"))
        .await;
    assert_eq!(a2["client"]["serial"]["value"], "SN2");
    assert_eq!(a2["client"]["count"]["value"], 42);

    // Anything but a JSON object: PUBACK 0x99, the session stays, nothing stored.
    for bad in [
        "[1,2]",
        r#""text""#,
        "42",
        "{not json",
        r#"[{"serial":"SN3"}]"#,
    ] {
        assert_eq!(
            pub5(&c, &mut rx, ATTRS, bad).await,
            PubAckReason::PayloadFormatInvalid,
            "{bad}"
        );
    }
    assert_eq!(
        h.get(&format!("/devices/{id}/attributes?scope=client"))
            .await,
        a2,
        "refused payloads store nothing"
    );
    assert_eq!(
        pub5(&c, &mut rx, ATTRS, r#"{"after":1}"#).await,
        PubAckReason::Success,
        "the v5 session survives bad payloads"
    );
    c.disconnect().await.expect("disconnect");

    // 3.1.1: a bad attribute payload closes the connection, nothing is stored.
    let (c3, mut rx3) = connect3(&t, &token).await;
    pub3(&c3, &mut rx3, ATTRS, r#"{"v3":"ok"}"#).await;
    c3.publish(ATTRS, QoS::AtLeastOnce, false, r#"["v3-bad"]"#)
        .await
        .expect("publish");
    match recv3(&mut rx3, Duration::from_secs(5)).await {
        Err(_) => {}
        other => panic!("expected the server to close the 3.1.1 session, got {other:?}"),
    }
    let a3 = h
        .get(&format!("/devices/{id}/attributes?scope=client"))
        .await;
    let keys: Vec<&String> = a3["client"].as_object().expect("client").keys().collect();
    assert_eq!(
        keys,
        [
            "after", "count", "nested", "on", "ratio", "serial", "v3", "whole"
        ]
    );
    assert_eq!(a3["client"]["v3"]["value"], "ok");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_attribute_requests_follow_thingsboard_semantics() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (dev, token) = t.device("req-dev").await;
    let id = id_of(&dev);
    let (c, mut rx) = connect5(&t, &token).await;
    sub5(&c, &mut rx, "v1/devices/me/attributes/response/+").await;

    // Before anything exists: an empty object, no scope objects.
    assert_eq!(request5(&c, &mut rx, 1, json!({})).await, json!({}));

    assert_eq!(
        pub5(&c, &mut rx, ATTRS, r#"{"a":1,"b":"two","c":true}"#).await,
        PubAckReason::Success
    );
    h.put(
        &format!("/devices/{id}/attributes/shared"),
        json!({"s1": 10, "s2": "x", "s3": {"deep": [1]}}),
    )
    .await;
    h.put(
        &format!("/devices/{id}/attributes/server"),
        json!({"srv": "hidden", "a": "server-a", "s1": "server-s1"}),
    )
    .await;

    let all = json!({"client": {"a": 1, "b": "two", "c": true},
        "shared": {"s1": 10, "s2": "x", "s3": {"deep": [1]}}});
    let cases = [
        // Comma-split keys, both scopes.
        (
            2,
            json!({"clientKeys": "a,b", "sharedKeys": "s1"}),
            json!({"client": {"a": 1, "b": "two"}, "shared": {"s1": 10}}),
        ),
        // `{}` = every client and shared attribute; server ones never.
        (3, json!({}), all.clone()),
        // Empty key lists count as missing.
        (4, json!({"clientKeys": "", "sharedKeys": ""}), all.clone()),
        // Missing keys are omitted, and so is a scope where nothing was found.
        (
            5,
            json!({"clientKeys": "nope", "sharedKeys": "s2,nope"}),
            json!({"shared": {"s2": "x"}}),
        ),
        // Only the asked scope.
        (6, json!({"clientKeys": "a"}), json!({"client": {"a": 1}})),
        (
            7,
            json!({"sharedKeys": "s3"}),
            json!({"shared": {"s3": {"deep": [1]}}}),
        ),
        // Server attributes are invisible, whatever is asked.
        (8, json!({"sharedKeys": "srv"}), json!({})),
        (
            9,
            json!({"clientKeys": "srv,a"}),
            json!({"client": {"a": 1}}),
        ),
        // Large ids are echoed as they are.
        (
            4_294_967_296,
            json!({"sharedKeys": "s1"}),
            json!({"shared": {"s1": 10}}),
        ),
    ];
    for (n, req, want) in cases {
        assert_eq!(request5(&c, &mut rx, n, req.clone()).await, want, "{req}");
    }
    // The same id twice in one session is answered twice (the SDK's counters repeat).
    assert_eq!(
        request5(&c, &mut rx, 2, json!({"sharedKeys": "s2"})).await,
        json!({"shared": {"s2": "x"}})
    );
    assert_eq!(
        request5(&c, &mut rx, 2, json!({"clientKeys": "b"})).await,
        json!({"client": {"b": "two"}})
    );
    // An unreadable request asks for everything, as ThingsBoard treats it.
    assert_eq!(
        request5(&c, &mut rx, 10, json!("garbage")).await,
        all,
        "non-object request"
    );
    // A request id that is not a number is an unknown topic.
    assert_eq!(
        pub5(&c, &mut rx, "v1/devices/me/attributes/request/x", "{}").await,
        PubAckReason::TopicNameInvalid
    );
    c.disconnect().await.expect("disconnect");

    // 3.1.1 gets the same answer on the same topic grammar.
    let (c3, mut rx3) = connect3(&t, &token).await;
    sub3(&c3, &mut rx3, "v1/devices/me/attributes/response/+").await;
    c3.publish(
        "v1/devices/me/attributes/request/1",
        QoS::AtLeastOnce,
        false,
        r#"{"clientKeys":"c","sharedKeys":"s1,s2"}"#,
    )
    .await
    .expect("publish");
    let (mut acked, mut reply) = (false, None);
    while !acked || reply.is_none() {
        match recv3(&mut rx3, Duration::from_secs(5)).await {
            Ok(Some(Packet::PubAck(_))) => acked = true,
            Ok(Some(Packet::Publish(p))) => {
                assert_eq!(p.topic, "v1/devices/me/attributes/response/1");
                reply = Some(serde_json::from_slice::<Value>(&p.payload).expect("JSON"));
            }
            other => panic!("expected the response and a PUBACK, got {other:?}"),
        }
    }
    assert_eq!(
        reply.expect("reply"),
        json!({"client": {"c": true}, "shared": {"s1": 10, "s2": "x"}})
    );
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Shared attribute pushes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_changes_are_pushed_to_subscribed_sessions_only() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (d1, tok1) = t.device("push-1").await;
    let (d2, tok2) = t.device("push-2").await;
    let (id1, id2) = (id_of(&d1), id_of(&d2));

    let (c1, mut rx1) = connect5(&t, &tok1).await;
    sub5(&c1, &mut rx1, ATTRS).await;
    // Device 2 holds other subscriptions, not the attributes topic.
    let (c2, mut rx2) = connect3(&t, &tok2).await;
    sub3(&c2, &mut rx2, "v1/devices/me/rpc/request/+").await;
    sub3(&c2, &mut rx2, "v1/devices/me/attributes/response/+").await;

    let set = h
        .put(
            &format!("/devices/{id1}/attributes/shared"),
            json!({"targetTemp": 26, "mode": "eco"}),
        )
        .await;
    assert_eq!(set["shared"]["targetTemp"]["value"], 26);
    assert_eq!(
        push5(&mut rx1).await,
        json!({"targetTemp": 26, "mode": "eco"})
    );
    // Only the keys of the change, not the whole shared scope.
    h.put(
        &format!("/devices/{id1}/attributes/shared"),
        json!({"mode": "boost"}),
    )
    .await;
    assert_eq!(push5(&mut rx1).await, json!({"mode": "boost"}));
    // Server-scope writes and client reports are never pushed.
    h.put(
        &format!("/devices/{id1}/attributes/server"),
        json!({"internal": 1}),
    )
    .await;
    h.delete(&format!("/devices/{id1}/attributes/server?keys=internal"))
        .await;
    assert_eq!(
        pub5(&c1, &mut rx1, ATTRS, r#"{"reported":1}"#).await,
        PubAckReason::Success
    );
    quiet5(&mut rx1, "server/client attribute changes").await;
    // Deleting a shared key pushes the deletion; deleting one that is not there pushes nothing.
    h.delete(&format!("/devices/{id1}/attributes/shared?keys=mode"))
        .await;
    assert_eq!(push5(&mut rx1).await, json!({"deleted": ["mode"]}));
    h.delete(&format!("/devices/{id1}/attributes/shared?keys=mode,never"))
        .await;
    quiet5(&mut rx1, "deleting absent keys").await;
    let a = h.get(&format!("/devices/{id1}/attributes")).await;
    let shared: Vec<&String> = a["shared"].as_object().expect("shared").keys().collect();
    assert_eq!(shared, ["targetTemp"]);

    // Device 2 is connected but not subscribed to the attributes topic: nothing arrives.
    h.put(
        &format!("/devices/{id2}/attributes/shared"),
        json!({"k": 1}),
    )
    .await;
    quiet3(&mut rx2, "a session not subscribed to attributes").await;
    // Device 1's session sees nothing of device 2's changes.
    quiet5(&mut rx1, "another device's change").await;
    // Once subscribed, device 2 (3.1.1) gets the next change.
    sub3(&c2, &mut rx2, ATTRS).await;
    h.put(
        &format!("/devices/{id2}/attributes/shared"),
        json!({"k": 2.5}),
    )
    .await;
    assert_eq!(push3(&mut rx2).await, json!({"k": 2.5}));

    // Operators cannot write client attributes: the service refuses the scope (422), and a
    // scope that does not exist is a bad request (400).
    let (s, e) = h
        .admin(
            "PUT",
            &format!("/devices/{id1}/attributes/client"),
            Some(json!({"x": 1})),
        )
        .await;
    assert_eq!((s, code(&e)), (422, "invalid_field"), "{e}");
    let (s, e) = h
        .admin(
            "PUT",
            &format!("/devices/{id1}/attributes/bogus"),
            Some(json!({"x": 1})),
        )
        .await;
    assert_eq!((s, code(&e)), (400, "invalid_scope"), "{e}");
    // A key with a comma could never be asked for or deleted (both list keys comma-separated).
    for path in [
        format!("/devices/{id1}/attributes/shared"),
        format!(
            "/fleets/{}/attributes/shared",
            d1["fleet_id"].as_str().expect("fleet")
        ),
    ] {
        let (s, e) = h.admin("PUT", &path, Some(json!({"a,b": 1}))).await;
        assert_eq!((s, code(&e)), (422, "invalid_field"), "{path}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("comma")),
            "{e}"
        );
    }
    let (s, e) = h
        .admin(
            "PUT",
            &format!("/devices/{id1}/attributes/shared"),
            Some(json!([1, 2])),
        )
        .await;
    assert_eq!((s, code(&e)), (400, "invalid_body"), "{e}");
    quiet5(&mut rx1, "refused writes").await;
    let a = h
        .get(&format!("/devices/{id1}/attributes?scope=client"))
        .await;
    assert!(a["client"].get("x").is_none());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_defaults_are_pushed_unless_overridden_and_fall_back_on_delete() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (p_dev, p_tok) = t.device("plain").await;
    let (q_id, q_tok) = sibling(&h, &p_dev, "override").await;
    let p_id = id_of(&p_dev);
    let fleet = p_dev["fleet_id"].as_str().expect("fleet").to_string();

    let (pc, mut prx) = connect5(&t, &p_tok).await;
    sub5(&pc, &mut prx, ATTRS).await;
    let (qc, mut qrx) = connect3(&t, &q_tok).await;
    sub3(&qc, &mut qrx, ATTRS).await;

    // Q has its own value for k.
    h.put(
        &format!("/devices/{q_id}/attributes/shared"),
        json!({"k": "own"}),
    )
    .await;
    assert_eq!(push3(&mut qrx).await, json!({"k": "own"}));
    quiet5(&mut prx, "another device's own value").await;

    // A fleet default reaches devices without their own value; Q only hears about j.
    let defaults = h
        .put(
            &format!("/fleets/{fleet}/attributes/shared"),
            json!({"k": "fleet", "j": 1}),
        )
        .await;
    assert_eq!(defaults["k"]["value"], "fleet");
    assert_eq!(push5(&mut prx).await, json!({"k": "fleet", "j": 1}));
    assert_eq!(push3(&mut qrx).await, json!({"j": 1}));
    quiet3(&mut qrx, "an overridden fleet default").await;

    // Effective values over REST and in attribute requests.
    let pa = h
        .get(&format!("/devices/{p_id}/attributes?scope=shared"))
        .await;
    assert_eq!(pa["shared"]["k"]["value"], "fleet");
    assert_eq!(pa["shared"]["j"]["value"], 1);
    let qa = h
        .get(&format!("/devices/{q_id}/attributes?scope=shared"))
        .await;
    assert_eq!(qa["shared"]["k"]["value"], "own");
    assert_eq!(
        request5(&pc, &mut prx, 1, json!({"sharedKeys": "k,j"})).await,
        json!({"shared": {"k": "fleet", "j": 1}})
    );
    let fa = h.get(&format!("/fleets/{fleet}/attributes/shared")).await;
    assert_eq!(fa["j"]["value"], 1);

    // Deleting Q's own k falls back to the fleet default: Q is told the fleet value.
    h.delete(&format!("/devices/{q_id}/attributes/shared?keys=k"))
        .await;
    assert_eq!(push3(&mut qrx).await, json!({"k": "fleet"}));
    quiet5(&mut prx, "another device's deletion").await;
    let qa = h
        .get(&format!("/devices/{q_id}/attributes?scope=shared"))
        .await;
    assert_eq!(qa["shared"]["k"]["value"], "fleet");

    // A device value set over a default is pushed to that device only.
    h.put(
        &format!("/devices/{p_id}/attributes/shared"),
        json!({"j": 2}),
    )
    .await;
    assert_eq!(push5(&mut prx).await, json!({"j": 2}));
    quiet3(&mut qrx, "another device's value").await;

    // Deleting fleet defaults: devices without their own value hear `deleted`.
    h.delete(&format!("/fleets/{fleet}/attributes/shared?keys=j,k"))
        .await;
    assert_eq!(push5(&mut prx).await, json!({"deleted": ["k"]}));
    assert_eq!(push3(&mut qrx).await, json!({"deleted": ["j", "k"]}));
    let pa = h
        .get(&format!("/devices/{p_id}/attributes?scope=shared"))
        .await;
    let keys: Vec<&String> = pa["shared"].as_object().expect("shared").keys().collect();
    assert_eq!(keys, ["j"]);
    assert_eq!(
        h.get(&format!("/fleets/{fleet}/attributes/shared")).await,
        json!({})
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_from_attributes_stops_pushes() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (dev, token) = t.device("unsub").await;
    let id = id_of(&dev);
    let (c, mut rx) = connect5(&t, &token).await;
    sub5(&c, &mut rx, ATTRS).await;
    h.put(&format!("/devices/{id}/attributes/shared"), json!({"a": 1}))
        .await;
    assert_eq!(push5(&mut rx).await, json!({"a": 1}));
    c.unsubscribe(ATTRS).await.expect("unsubscribe");
    match recv5(&mut rx, Duration::from_secs(5)).await {
        Some(V5Packet::UnsubAck(_)) => {}
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    h.put(&format!("/devices/{id}/attributes/shared"), json!({"a": 2}))
        .await;
    // MQTT-3.10.4-2: after UNSUBSCRIBE the server stops sending on that filter; ThingsBoard
    // unsubscribes the session from attribute updates.
    quiet5(&mut rx, "after UNSUBSCRIBE").await;
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. HTTP device API

/// Every device API endpoint with a body that would succeed: (method, path, body).
fn device_endpoints() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        ("POST", "/telemetry", Some(r#"{"t":1}"#)),
        ("POST", "/telemetry/lab", Some(r#"{"t":1}"#)),
        ("POST", "/attributes", Some(r#"{"a":1}"#)),
        ("GET", "/attributes", None),
        ("GET", "/attributes?clientKeys=a", None),
        ("GET", "/attributes/updates?timeout=1", None),
        ("GET", "/rpc?timeout=1", None),
        ("POST", "/rpc", Some(r#"{"method":"getSessionLimits"}"#)),
        ("POST", "/rpc/5", Some(r#"{"ok":true}"#)),
        ("POST", "/claim", Some(r#"{"secretKey":"s"}"#)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_device_api_telemetry_forms_tags_and_refusals() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (dev, token) = t.device("http-tel").await;
    let id = id_of(&dev);
    let now = corral::model::now_ms();

    // The SDK's connection test posts {}.
    assert_eq!(h.dev("POST", &token, "/telemetry", Some("{}")).await.0, 200);
    // Object form, stamped with the receive time; durable when the 200 comes back.
    assert_eq!(
        h.dev(
            "POST",
            &token,
            "/telemetry",
            Some(r#"{"temp":21.5,"cast":"17","skip":null}"#)
        )
        .await
        .0,
        200
    );
    let latest = h.get(&format!("/devices/{id}/telemetry/latest")).await;
    assert_eq!(latest["data"]["temp"]["value"], json!(21.5));
    assert_eq!(latest["data"]["cast"]["value"], json!(17));
    assert!(latest["data"].get("skip").is_none());
    let ts = latest["data"]["temp"]["ts"].as_i64().expect("ts");
    assert!(
        (now - 1000..=corral::model::now_ms()).contains(&ts),
        "receive time: {ts}"
    );
    // ts/values form and the array form (mixing both).
    let (t1, t2, t3) = (now - 300_000, now - 200_000, now - 100_000);
    let body = json!({"ts": t1, "values": {"hum": 70}}).to_string();
    assert_eq!(
        h.dev("POST", &token, "/telemetry", Some(&body)).await.0,
        200
    );
    let body =
        json!([{"ts": t2, "values": {"hum": 71}}, {"ts": t3, "values": {"hum": 72.5, "on": true}}])
            .to_string();
    assert_eq!(
        h.dev("POST", &token, "/telemetry", Some(&body)).await.0,
        200
    );
    let raw = h
        .get(&format!(
            "/devices/{id}/telemetry?keys=hum,on&from={}",
            now - 3_600_000
        ))
        .await;
    assert_eq!(
        raw["data"]["hum"],
        json!([{"ts": t1, "value": 70}, {"ts": t2, "value": 71}, {"ts": t3, "value": 72.5}])
    );
    assert_eq!(raw["data"]["on"], json!([{"ts": t3, "value": true}]));

    // Tagged telemetry lands under its tag only.
    let body = json!({"ts": t1, "values": {"lux": 300}}).to_string();
    assert_eq!(
        h.dev("POST", &token, "/telemetry/lab-1.a_b", Some(&body))
            .await
            .0,
        200
    );
    let lab = h
        .get(&format!(
            "/devices/{id}/telemetry?tag=lab-1.a_b&from={}",
            now - 3_600_000
        ))
        .await;
    assert_eq!(lab["data"], json!({"lux": [{"ts": t1, "value": 300}]}));

    // Refusals: 400 with a JSON error, nothing stored.
    let long_tag = format!("/telemetry/{}", "x".repeat(65));
    let bad: [(&str, &str); 8] = [
        ("/telemetry/a@b", r#"{"bad_tag":1}"#),
        (&long_tag, r#"{"bad_tag":1}"#),
        ("/telemetry", r#"{"bad_json":"#),
        ("/telemetry", "[1,2]"),
        ("/telemetry", "42"),
        ("/telemetry", r#"{"ts":"x","values":{"bad_ts":1}}"#),
        ("/telemetry", r#"[{"ok_part":1},{"ts":1,"values":[]}]"#),
        ("/telemetry/lab", "not json"),
    ];
    for (path, body) in bad {
        let (s, e) = h.dev("POST", &token, path, Some(body)).await;
        assert_eq!(s, 400, "{path} {body}: {e}");
        assert!(e["error"].is_string(), "{path}: {e}");
    }
    let tags = h.get(&format!("/devices/{id}/tags")).await;
    assert_eq!(
        tags,
        json!({"tags": {"default": ["cast", "hum", "on", "temp"], "lab-1.a_b": ["lux"]}}),
        "refused posts store nothing"
    );

    // Unknown token: 401 on every endpoint.
    for (m, path, body) in device_endpoints() {
        let (s, e) = h.dev(m, "no-such-token", path, body).await;
        assert_eq!(s, 401, "{m} {path}: {e}");
    }
    // A disabled device: 403 on every endpoint; enabled again it works.
    let (s, _) = h
        .admin(
            "PATCH",
            &format!("/devices/{id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200);
    for (m, path, body) in device_endpoints() {
        let (s, e) = h.dev(m, &token, path, body).await;
        assert_eq!(s, 403, "{m} {path}: {e}");
    }
    let (s, _) = h
        .admin(
            "PATCH",
            &format!("/devices/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        h.dev("POST", &token, "/telemetry", Some(r#"{"back":1}"#))
            .await
            .0,
        200
    );
    let tags = h.get(&format!("/devices/{id}/tags")).await;
    assert_eq!(
        tags["tags"]["default"],
        json!(["back", "cast", "hum", "on", "temp"]),
        "nothing was stored while disabled"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_device_api_attributes_and_long_polls() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (dev, token) = t.device("http-attr").await;
    let id = id_of(&dev);

    let body = r#"{"fw":"1.2","n":5,"on":true,"cfg":{"x":1},"none":null}"#;
    assert_eq!(
        h.dev("POST", &token, "/attributes", Some(body)).await.0,
        200
    );
    // Durable at the 200: read back at once.
    let a = h
        .get(&format!("/devices/{id}/attributes?scope=client"))
        .await;
    assert_eq!(
        values_of(&a["client"]),
        json!({"fw": 1.2, "n": 5, "on": true, "cfg": {"x": 1}})
    );
    for bad in ["[1]", "{", "\"s\""] {
        let (s, e) = h.dev("POST", &token, "/attributes", Some(bad)).await;
        assert_eq!(s, 400, "{bad}: {e}");
    }
    assert_eq!(
        h.get(&format!("/devices/{id}/attributes?scope=client"))
            .await,
        a
    );

    h.put(
        &format!("/devices/{id}/attributes/shared"),
        json!({"x": 1, "y": "two", "z": 3.5}),
    )
    .await;
    h.put(
        &format!("/devices/{id}/attributes/server"),
        json!({"secret": 1, "n": 99}),
    )
    .await;
    let all = json!({"client": {"fw": 1.2, "n": 5, "on": true, "cfg": {"x": 1}},
        "shared": {"x": 1, "y": "two", "z": 3.5}});
    let cases = [
        ("?clientKeys=fw,n", json!({"client": {"fw": 1.2, "n": 5}})),
        (
            "?sharedKeys=x&sharedKeys=y",
            json!({"shared": {"x": 1, "y": "two"}}),
        ),
        (
            "?clientKeys=on&sharedKeys=z&clientKeys=fw",
            json!({"client": {"on": true, "fw": 1.2}, "shared": {"z": 3.5}}),
        ),
        (
            "?clientKeys=nope&sharedKeys=x,nope",
            json!({"shared": {"x": 1}}),
        ),
        ("?sharedKeys=secret", json!({})),
        // The SDK's own parameter names are not TB's: everything comes back.
        ("?client_keys=fw&shared_keys=x", all.clone()),
        ("", all.clone()),
        ("?clientKeys=&sharedKeys=", all.clone()),
    ];
    for (q, want) in cases {
        let (s, v) = h.dev("GET", &token, &format!("/attributes{q}"), None).await;
        assert_eq!(s, 200, "{q}");
        assert_eq!(v, want, "{q}");
    }

    // Long poll with nothing happening: 408 after the timeout.
    let start = Instant::now();
    let (s, _) = h
        .dev("GET", &token, "/attributes/updates?timeout=500", None)
        .await;
    let took = start.elapsed();
    assert_eq!(s, 408);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let (s, _) = h
        .dev("GET", &token, "/attributes/updates?timeout=soon", None)
        .await;
    assert_eq!(s, 400);

    // A poll that is waiting when a shared attribute changes returns it at once.
    let poll = |h: &Http| {
        let c = h.c.clone();
        let url = format!("{}/api/v1/{token}/attributes/updates?timeout=5000", h.base);
        tokio::spawn(async move {
            let start = Instant::now();
            let r = c.get(url).send().await.expect("poll");
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body, start.elapsed())
        })
    };
    let p = poll(&h);
    // Time for the poll to be waiting (the device API has no signal for it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.put(&format!("/devices/{id}/attributes/shared"), json!({"x": 2}))
        .await;
    let (s, body, took) = tokio::time::timeout(Duration::from_secs(3), p)
        .await
        .expect("poll answered")
        .expect("task");
    assert_eq!((s, body), (200, json!({"x": 2})));
    assert!(
        took < Duration::from_secs(3),
        "answered by the change, not its timeout: {took:?}"
    );
    // A deletion is delivered the same way; server changes are not.
    let p = poll(&h);
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.put(
        &format!("/devices/{id}/attributes/server"),
        json!({"secret": 2}),
    )
    .await;
    h.delete(&format!("/devices/{id}/attributes/shared?keys=y"))
        .await;
    let (s, body, _) = tokio::time::timeout(Duration::from_secs(3), p)
        .await
        .expect("poll answered")
        .expect("task");
    assert_eq!((s, body), (200, json!({"deleted": ["y"]})));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_device_api_rpc_and_claim() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (dev, token) = t.device("http-rpc").await;
    let id = id_of(&dev);

    let start = Instant::now();
    let (s, _) = h.dev("GET", &token, "/rpc?timeout=300", None).await;
    let took = start.elapsed();
    assert_eq!(s, 408);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );

    let (s, v) = h
        .dev(
            "POST",
            &token,
            "/rpc",
            Some(r#"{"method":"getSessionLimits","params":{"timeout":5000}}"#),
        )
        .await;
    assert_eq!(s, 200);
    let rate = t.config.limits.device_messages_per_sec;
    let limits = json!({"messages": format!("{rate}:1,{}:60", rate * 60),
        "telemetryMessages": format!("{rate}:1,{}:60", rate * 60), "telemetryDataPoints": ""});
    assert_eq!(
        v,
        json!({"maxPayloadSize": t.config.mqtt.max_packet_size,
            "maxInflightMessages": t.config.mqtt.max_inflight,
            "rateLimits": limits, "gatewayRateLimits": limits})
    );
    assert_eq!(v["maxPayloadSize"], 65536);
    let (s, v) = h
        .dev("POST", &token, "/rpc", Some(r#"{"method":"reboot"}"#))
        .await;
    assert_eq!(s, 200);
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("reboot")),
        "{v}"
    );
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
    let (s, v) = h.dev("POST", &token, "/rpc", Some("{}")).await;
    assert_eq!(s, 200);
    assert!(v["error"].is_string(), "{v}");

    assert_eq!(
        h.dev("POST", &token, "/rpc/5", Some(r#"{"result":"ok"}"#))
            .await
            .0,
        200
    );
    assert_eq!(
        h.dev("POST", &token, "/rpc/5", Some("not json")).await.0,
        400
    );
    assert_eq!(h.dev("POST", &token, "/rpc/abc", Some("{}")).await.0, 400);

    let since = corral::model::now_ms();
    assert_eq!(
        h.dev(
            "POST",
            &token,
            "/claim",
            Some(r#"{"secretKey":"s3cr3t","durationMs":60000}"#)
        )
        .await
        .0,
        200
    );
    assert_eq!(h.dev("POST", &token, "/claim", None).await.0, 200);
    assert_eq!(h.dev("POST", &token, "/claim", Some("{oops")).await.0, 400);
    let items = common::eventually(5, || async {
        let v = h
            .get(&format!("/audit?kind=claim_requested&since={since}"))
            .await;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 2).then_some(items)
    })
    .await;
    for it in &items {
        assert_eq!(it["kind"], "claim_requested");
        assert_eq!(it["device_id"], id.as_str());
        assert_eq!(it["fleet_id"], dev["fleet_id"]);
        assert!(
            !it.to_string().contains("s3cr3t"),
            "no secret in the audit log"
        );
    }
    let details: Vec<&str> = items.iter().filter_map(|i| i["detail"].as_str()).collect();
    assert!(
        details.iter().any(|d| d.contains("60000 ms")),
        "{details:?}"
    );
    assert!(details.iter().any(|d| d.contains(" 0 ms")), "{details:?}");
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Aggregation against an independent computation

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// 2026-03-28T16:00:00Z; the data spans 14 hours from here: the UTC, Berlin and Kolkata
/// midnights and Berlin's change to summer time (2026-03-29T01:00Z).
const BASE: i64 = 1_774_713_600_000;
const SPAN: i64 = 14 * HOUR;

/// A stored value as the aggregate sees it: numeric or not.
#[derive(Debug, Clone, Copy, PartialEq)]
enum V {
    Num(f64),
    Other,
}

/// One series: ts → value, last write wins.
type Series = BTreeMap<i64, V>;

/// A small deterministic generator (PCG-style LCG), so that a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A value: mostly longs and doubles, sometimes a string or a boolean.
    fn value(&mut self) -> (Value, V) {
        match self.below(20) {
            0 => (json!("n/a"), V::Other),
            1 => (json!(true), V::Other),
            2..=10 => {
                let i = self.below(1001) as i64 - 500;
                (json!(i), V::Num(i as f64))
            }
            _ => {
                let x = (self.below(2001) as f64 - 1000.0) / 4.0 + 0.125;
                (json!(x), V::Num(x))
            }
        }
    }
}

/// Records `(ts, value)` items into `model` in order and renders them as ThingsBoard
/// telemetry messages of at most `per_msg` items, alternating the payload forms.
fn messages(
    model: &mut Series,
    key: &str,
    items: &[(i64, Value, V)],
    per_msg: usize,
) -> Vec<String> {
    for (ts, _, v) in items {
        model.insert(*ts, *v);
    }
    items
        .chunks(per_msg)
        .enumerate()
        .map(|(i, chunk)| {
            if chunk.len() == 1 && i % 2 == 0 {
                json!({"ts": chunk[0].0, "values": {key: chunk[0].1}}).to_string()
            } else {
                Value::Array(
                    chunk
                        .iter()
                        .map(|(ts, j, _)| json!({"ts": ts, "values": {key: j}}))
                        .collect(),
                )
                .to_string()
            }
        })
        .collect()
}

#[derive(Debug, Default, Clone, Copy)]
struct Exp {
    count: u64,
    numeric: u64,
    sum: f64,
    min: f64,
    max: f64,
}

fn expect_agg(series: &[&Series], lo: i64, hi: i64) -> Exp {
    let mut e = Exp {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        ..Default::default()
    };
    if lo >= hi {
        return e;
    }
    for s in series {
        for (_, v) in s.range(lo..hi) {
            e.count += 1;
            if let V::Num(x) = v {
                e.numeric += 1;
                e.sum += x;
                e.min = e.min.min(*x);
                e.max = e.max.max(*x);
            }
        }
    }
    e
}

/// Milliseconds since local midnight at `ts` in `tz`, from the zone's UTC offset at `ts`.
fn local_ms_of_day(tz: &TimeZone, ts: i64) -> i64 {
    let off = tz
        .to_offset(Timestamp::from_millisecond(ts).expect("ts"))
        .seconds();
    (ts + i64::from(off) * 1000).rem_euclid(DAY)
}

/// Whether the local wall clock at `ts` is a whole multiple of `interval` since local midnight.
fn on_local_grid(tz: &TimeZone, ts: i64, interval: i64) -> bool {
    local_ms_of_day(tz, ts) % interval == 0
}

/// Expected buckets `[start, end)` covering `[from, to]`: for sub-day intervals, a bucket starts
/// at every instant (on the minute) where the local wall clock is a whole multiple of the
/// interval since local midnight, found by scanning minute by minute; for `1d`, at the local
/// midnights of consecutive calendar dates.
fn expected_buckets(tz: &TimeZone, interval: i64, from: i64, to: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    if interval == DAY {
        let mut date = Timestamp::from_millisecond(from)
            .expect("ts")
            .to_zoned(tz.clone())
            .date();
        loop {
            let start = date
                .to_zoned(tz.clone())
                .expect("midnight")
                .timestamp()
                .as_millisecond();
            if start > to {
                break;
            }
            date = date.tomorrow().expect("tomorrow");
            let end = date
                .to_zoned(tz.clone())
                .expect("midnight")
                .timestamp()
                .as_millisecond();
            out.push((start, end));
        }
    } else {
        let mut start = from - from.rem_euclid(MIN);
        while !on_local_grid(tz, start, interval) {
            start -= MIN;
        }
        while start <= to {
            let mut end = start + MIN;
            while !on_local_grid(tz, end, interval) {
                end += MIN;
            }
            out.push((start, end));
            start = end;
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// Compares every bucket of `got` (the API's array for one key) with the model.
fn check_buckets(
    label: &str,
    got: &Value,
    series: &[&Series],
    want: &[(i64, i64)],
    from: i64,
    to: i64,
) {
    let got = got
        .as_array()
        .unwrap_or_else(|| panic!("{label}: no buckets"));
    let bounds: Vec<(i64, i64)> = got
        .iter()
        .map(|b| {
            (
                b["ts"].as_i64().expect("ts"),
                b["end"].as_i64().expect("end"),
            )
        })
        .collect();
    assert_eq!(bounds, want, "{label}: bucket boundaries");
    let mut total = 0;
    for (i, (b, &(s, e))) in got.iter().zip(want).enumerate() {
        let x = expect_agg(series, s.max(from), e.min(to + 1));
        total += x.count;
        let at = format!("{label} bucket {i} [{s}, {e}): {b}");
        assert_eq!(b["count"].as_u64(), Some(x.count), "{at} count");
        assert_eq!(b["numeric"].as_u64(), Some(x.numeric), "{at} numeric");
        if x.numeric == 0 {
            for k in ["avg", "min", "max", "sum"] {
                assert!(b[k].is_null(), "{at} {k} is null without numeric values");
            }
            continue;
        }
        let f = |k: &str| b[k].as_f64().unwrap_or_else(|| panic!("{at} {k}"));
        assert!(close(f("sum"), x.sum), "{at} sum, expected {}", x.sum);
        assert!(close(f("min"), x.min), "{at} min, expected {}", x.min);
        assert!(close(f("max"), x.max), "{at} max, expected {}", x.max);
        let avg = x.sum / x.numeric as f64;
        assert!(close(f("avg"), avg), "{at} avg, expected {avg}");
    }
    assert!(total > 0, "{label}: the range holds data");
}

async fn aggregate(h: &Http, path: &str, q: &[(&str, String)]) -> (u16, Value) {
    let qs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    h.admin("GET", &format!("{path}?{}", qs.join("&")), None)
        .await
}

/// Publishes the main data set of the aggregation test through MQTT 3.1.1, MQTT 5 and HTTP,
/// and returns the model of what the store must hold.
async fn publish_dataset(t: &TestApp, h: &Http, token: &str) -> Series {
    let mut model = Series::new();
    let mut rng = Rng(0x005e_edc0_ffee);
    // Points stay below BASE + SPAN - 1 min; the newest-point replacements come after them.
    let random_ts = |rng: &mut Rng| BASE + rng.below((SPAN - MIN) as u64) as i64;

    // Phase 1 (3.1.1): 180 points in time order, with duplicates at the same ts inside a
    // message (the later item wins) and a dense minute.
    let mut items: Vec<(i64, Value, V)> = (0..170)
        .map(|_| {
            let ts = random_ts(&mut rng);
            let (j, v) = rng.value();
            (ts, j, v)
        })
        .collect();
    for k in 0..10 {
        let (j, v) = rng.value();
        items.push((BASE + 5 * HOUR + 30 * MIN + k * 1000, j, v));
    }
    items.sort_by_key(|i| i.0);
    for i in (0..items.len()).step_by(25) {
        let (j, v) = rng.value();
        items.insert(i + 1, (items[i].0, j, v));
    }
    let (c3, mut rx3) = connect3(t, token).await;
    for m in messages(&mut model, "v", &items, 40) {
        pub3(&c3, &mut rx3, "v1/devices/me/telemetry", m).await;
    }
    c3.disconnect().await.expect("disconnect");

    // Phase 2 (5): 180 points in random order, some at the ts of earlier points.
    let known: Vec<i64> = model.keys().copied().collect();
    let items: Vec<(i64, Value, V)> = (0..180)
        .map(|i| {
            let ts = if i % 6 == 0 {
                known[rng.below(known.len() as u64) as usize]
            } else {
                random_ts(&mut rng)
            };
            let (j, v) = rng.value();
            (ts, j, v)
        })
        .collect();
    let (c5, mut rx5) = connect5(t, token).await;
    for m in messages(&mut model, "v", &items, 30) {
        assert_eq!(
            pub5(&c5, &mut rx5, "v1/devices/me/telemetry", m).await,
            PubAckReason::Success
        );
    }

    // Phase 3 (HTTP): replace 40 existing points, numbers by strings and back.
    let known: Vec<(i64, V)> = model.iter().map(|(k, v)| (*k, *v)).collect();
    let items: Vec<(i64, Value, V)> = (0..40)
        .map(|_| {
            let (ts, old) = known[rng.below(known.len() as u64) as usize];
            match old {
                V::Num(_) => (ts, json!("replaced"), V::Other),
                V::Other => {
                    let x = rng.below(100) as f64 + 0.5;
                    (ts, json!(x), V::Num(x))
                }
            }
        })
        .collect();
    for m in messages(&mut model, "v", &items, 10) {
        assert_eq!(h.dev("POST", token, "/telemetry", Some(&m)).await.0, 200);
    }

    // Phase 4 (5): the newest point replaced at the same millisecond, one message each: an
    // hour-wide maximum traded for a small value, a string for a number and back.
    let t1 = BASE + SPAN - 30_000;
    let steps: [(i64, Value, V); 7] = [
        (t1, json!(100_000.0), V::Num(100_000.0)),
        (t1, json!(2.5), V::Num(2.5)),
        (t1 + 1, json!("x"), V::Other),
        (t1 + 1, json!(-100_000), V::Num(-100_000.0)),
        (t1 + 1, json!(7), V::Num(7.0)),
        (t1 + 2, json!(9), V::Num(9.0)),
        (t1 + 2, json!("y"), V::Other),
    ];
    for step in steps {
        for m in messages(&mut model, "v", std::slice::from_ref(&step), 1) {
            assert_eq!(
                pub5(&c5, &mut rx5, "v1/devices/me/telemetry", m).await,
                PubAckReason::Success
            );
        }
    }
    c5.disconnect().await.expect("disconnect");
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_aggregates_match_an_independent_computation() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (dev, token) = t.device("agg").await;
    let id = id_of(&dev);
    let model = publish_dataset(&t, &h, &token).await;
    assert!(model.len() > 300, "{} distinct points", model.len());
    assert!(model.values().any(|v| *v == V::Other));

    // The raw points read back are the model (last write wins at every ts).
    let mut stored = Series::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!(
            "/devices/{id}/telemetry?keys=v&from={}&to={}&limit=1000",
            BASE - HOUR,
            BASE + SPAN + HOUR
        );
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = h.get(&path).await;
        for p in page["data"]["v"].as_array().cloned().unwrap_or_default() {
            let v = match p["value"].as_f64() {
                Some(x) => V::Num(x),
                None => V::Other,
            };
            stored.insert(p["ts"].as_i64().expect("ts"), v);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let diff: Vec<(i64, Option<&V>, Option<&V>)> = model
        .keys()
        .chain(stored.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|ts| model.get(ts) != stored.get(ts))
        .map(|ts| (*ts, model.get(ts), stored.get(ts)))
        .collect();
    assert!(
        diff.is_empty(),
        "raw points (ts, expected, stored): {diff:?}"
    );

    let zones = ["UTC", "Europe/Berlin", "Asia/Kolkata"];
    let intervals = [("1m", MIN), ("15m", 15 * MIN), ("1h", HOUR), ("1d", DAY)];
    // Range A: edges inside buckets (points outside it must not count); range B: everything.
    let range_a = (BASE + 37 * MIN + 30_000 + 1234, BASE + SPAN - 7 * MIN - 1);
    let range_b = (BASE - HOUR, BASE + SPAN + HOUR);
    let mut checked = 0;
    for tz_name in zones {
        let tz = TimeZone::get(tz_name).expect("tz");
        for (iname, ims) in intervals {
            for (rname, (from, to)) in [("A", range_a), ("B", range_b)] {
                let full = tz_name != "Asia/Kolkata" && (ims == MIN || ims == HOUR);
                if rname == "B" && !full {
                    continue;
                }
                let (s, r) = aggregate(
                    &h,
                    &format!("/devices/{id}/telemetry/aggregate"),
                    &[
                        ("interval", iname.to_string()),
                        ("tz", tz_name.to_string()),
                        ("from", from.to_string()),
                        ("to", to.to_string()),
                        ("keys", "v".to_string()),
                    ],
                )
                .await;
                assert_eq!(s, 200, "{r}");
                assert_eq!(r["interval_ms"], ims);
                assert_eq!(r["tz"], tz_name);
                assert_eq!(r["devices"], 1);
                assert_eq!(r["tag"], "default");
                assert_eq!(r["device_id"], id.as_str());
                let want = expected_buckets(&tz, ims, from, to);
                check_buckets(
                    &format!("{tz_name} {iname} range {rname}"),
                    &r["data"]["v"],
                    &[&model],
                    &want,
                    from,
                    to,
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 16);

    // Hand-derived day boundaries for range A: the Berlin day of 29 March has 23 hours.
    let days = |tz: &str| {
        expected_buckets(&TimeZone::get(tz).expect("tz"), DAY, range_a.0, range_a.1)
            .iter()
            .flat_map(|(s, e)| [*s, *e])
            .collect::<Vec<_>>()
    };
    // 2026-03-28T00:00Z, 2026-03-29T00:00Z, 2026-03-30T00:00Z
    assert_eq!(
        days("UTC"),
        [
            1_774_656_000_000,
            1_774_742_400_000,
            1_774_742_400_000,
            1_774_828_800_000
        ]
    );
    // 2026-03-27T23:00Z, 2026-03-28T23:00Z, 2026-03-29T22:00Z
    assert_eq!(
        days("Europe/Berlin"),
        [
            1_774_652_400_000,
            1_774_738_800_000,
            1_774_738_800_000,
            1_774_821_600_000
        ]
    );
    // 2026-03-27T18:30Z, 2026-03-28T18:30Z, 2026-03-29T18:30Z
    assert_eq!(
        days("Asia/Kolkata"),
        [
            1_774_636_200_000,
            1_774_722_600_000,
            1_774_722_600_000,
            1_774_809_000_000
        ]
    );
    // Kolkata's hours start at half past the UTC hour.
    let k = expected_buckets(
        &TimeZone::get("Asia/Kolkata").expect("tz"),
        HOUR,
        range_a.0,
        range_a.1,
    );
    assert_eq!(k[0].0, BASE + 30 * MIN);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_aggregates_keys_tags_and_errors() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (a_dev, a_tok) = t.device("fleet-a").await;
    let a_id = id_of(&a_dev);
    let (b_id, b_tok) = sibling(&h, &a_dev, "fleet-b").await;
    let fleet = a_dev["fleet_id"].as_str().expect("fleet").to_string();
    // A device in another fleet must not leak into this fleet's aggregate.
    let (_, other_tok) = t.device("elsewhere").await;

    let mut rng = Rng(42);
    let (mut a_t, mut b_t, mut b_u, mut a_lab, mut b_lab_x) = (
        Series::new(),
        Series::new(),
        Series::new(),
        Series::new(),
        Series::new(),
    );
    let mut gen_items = |n: usize, lo: i64, span: i64, scale: f64| -> Vec<(i64, Value, V)> {
        (0..n)
            .map(|_| {
                let ts = lo + rng.below(span as u64) as i64;
                let x = (rng.below(1000) as f64) * scale;
                (ts, json!(x), V::Num(x))
            })
            .collect()
    };
    // Device A: t in [0, 100) over 3 hours (MQTT 5), and t under the tag "lab".
    let a_items = gen_items(80, BASE, 3 * HOUR, 0.1);
    let a_lab_items = gen_items(20, BASE, 3 * HOUR, 1.0);
    // Device B: t in [0, 1000) from 1 h later, u, and x under "lab" (HTTP).
    let b_items = gen_items(80, BASE + HOUR, 3 * HOUR, 1.0);
    let b_u_items = gen_items(30, BASE, 4 * HOUR, 1.0);
    let b_lab_items = gen_items(10, BASE, 4 * HOUR, 1.0);
    let other_items = gen_items(30, BASE, 4 * HOUR, 1000.0);

    let (c, mut rx) = connect5(&t, &a_tok).await;
    for m in messages(&mut a_t, "t", &a_items, 20) {
        assert_eq!(
            pub5(&c, &mut rx, "v1/devices/me/telemetry", m).await,
            PubAckReason::Success
        );
    }
    for m in messages(&mut a_lab, "t", &a_lab_items, 20) {
        assert_eq!(
            pub5(&c, &mut rx, "v1/devices/me/telemetry/lab", m).await,
            PubAckReason::Success
        );
    }
    assert_eq!(
        pub5(&c, &mut rx, "v1/devices/me/telemetry/bad tag", "{}").await,
        PubAckReason::TopicNameInvalid
    );
    c.disconnect().await.expect("disconnect");
    for m in messages(&mut b_t, "t", &b_items, 20) {
        assert_eq!(h.dev("POST", &b_tok, "/telemetry", Some(&m)).await.0, 200);
    }
    for m in messages(&mut b_u, "u", &b_u_items, 20) {
        assert_eq!(h.dev("POST", &b_tok, "/telemetry", Some(&m)).await.0, 200);
    }
    for m in messages(&mut b_lab_x, "x", &b_lab_items, 20) {
        assert_eq!(
            h.dev("POST", &b_tok, "/telemetry/lab", Some(&m)).await.0,
            200
        );
    }
    let mut other = Series::new();
    for m in messages(&mut other, "t", &other_items, 30) {
        assert_eq!(
            h.dev("POST", &other_tok, "/telemetry", Some(&m)).await.0,
            200
        );
    }

    // Tag listings.
    assert_eq!(
        h.get(&format!("/devices/{a_id}/tags")).await,
        json!({"tags": {"default": ["t"], "lab": ["t"]}})
    );
    assert_eq!(
        h.get(&format!("/devices/{b_id}/tags")).await,
        json!({"tags": {"default": ["t", "u"], "lab": ["x"]}})
    );
    assert_eq!(
        h.get(&format!("/fleets/{fleet}/tags")).await,
        json!({"tags": {"default": ["t", "u"], "lab": ["t", "x"]}})
    );

    let (from, to) = (BASE - 10 * MIN, BASE + 4 * HOUR + 10 * MIN);
    let q = |extra: &[(&'static str, &str)]| {
        let mut q = vec![
            ("interval", "15m".to_string()),
            ("from", from.to_string()),
            ("to", to.to_string()),
        ];
        q.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        q
    };
    let utc = TimeZone::UTC;
    let want = expected_buckets(&utc, 15 * MIN, from, to);
    let fleet_path = format!("/fleets/{fleet}/telemetry/aggregate");

    // The fleet merges both devices, key by key; every key of the tag when none is asked.
    let (s, r) = aggregate(&h, &fleet_path, &q(&[])).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["devices"], 2);
    assert_eq!(r["fleet_id"], fleet.as_str());
    assert!(r.get("device_id").is_none());
    let keys: Vec<&String> = r["data"].as_object().expect("data").keys().collect();
    assert_eq!(keys, ["t", "u"]);
    check_buckets("fleet t", &r["data"]["t"], &[&a_t, &b_t], &want, from, to);
    check_buckets("fleet u", &r["data"]["u"], &[&b_u], &want, from, to);
    // Hourly in Kolkata too (half-hour aligned).
    let (s, r) = aggregate(
        &h,
        &fleet_path,
        &[
            ("interval", "1h".to_string()),
            ("tz", "Asia/Kolkata".to_string()),
            ("from", from.to_string()),
            ("to", to.to_string()),
            ("keys", "t".to_string()),
        ],
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let kol = TimeZone::get("Asia/Kolkata").expect("tz");
    check_buckets(
        "fleet t Kolkata 1h",
        &r["data"]["t"],
        &[&a_t, &b_t],
        &expected_buckets(&kol, HOUR, from, to),
        from,
        to,
    );

    // Keys filter: only the asked keys; unknown keys are left out.
    let (s, r) = aggregate(&h, &fleet_path, &q(&[("keys", "u,nope")])).await;
    assert_eq!(s, 200);
    let keys: Vec<&String> = r["data"].as_object().expect("data").keys().collect();
    assert_eq!(keys, ["u"]);
    // Tag filter: only the tag's series, for the fleet and for one device.
    let (s, r) = aggregate(&h, &fleet_path, &q(&[("tag", "lab")])).await;
    assert_eq!(s, 200);
    assert_eq!(r["tag"], "lab");
    let keys: Vec<&String> = r["data"].as_object().expect("data").keys().collect();
    assert_eq!(keys, ["t", "x"]);
    check_buckets("fleet lab t", &r["data"]["t"], &[&a_lab], &want, from, to);
    check_buckets("fleet lab x", &r["data"]["x"], &[&b_lab_x], &want, from, to);
    let (s, r) = aggregate(
        &h,
        &format!("/devices/{a_id}/telemetry/aggregate"),
        &q(&[("tag", "lab")]),
    )
    .await;
    assert_eq!(s, 200);
    check_buckets(
        "device A lab t",
        &r["data"]["t"],
        &[&a_lab],
        &want,
        from,
        to,
    );
    let (s, r) = aggregate(
        &h,
        &format!("/devices/{a_id}/telemetry/aggregate"),
        &q(&[("tag", "nothing-here")]),
    )
    .await;
    assert_eq!((s, &r["data"]), (200, &json!({})));
    // Device B alone, default tag, t only.
    let (s, r) = aggregate(
        &h,
        &format!("/devices/{b_id}/telemetry/aggregate"),
        &q(&[("keys", "t")]),
    )
    .await;
    assert_eq!(s, 200);
    check_buckets("device B t", &r["data"]["t"], &[&b_t], &want, from, to);

    // Errors.
    let dev_path = format!("/devices/{a_id}/telemetry/aggregate");
    let f = from.to_string();
    let tt = to.to_string();
    let errors: [(&[(&str, &str)], &str); 7] = [
        (&[("interval", "30s")], "invalid_interval"),
        (&[("interval", "2d")], "invalid_interval"),
        (&[("interval", "90000")], "invalid_interval"),
        (&[("interval", "fast")], "invalid_interval"),
        (&[("interval", "1h"), ("tz", "Mars/Olympus")], "invalid_tz"),
        (
            &[("interval", "1m"), ("from", "0"), ("to", "2592000000")],
            "too_many_buckets",
        ),
        (
            &[
                ("interval", "1h"),
                ("from", tt.as_str()),
                ("to", f.as_str()),
            ],
            "invalid_range",
        ),
    ];
    for (params, want_code) in errors {
        let mut qv: Vec<(&str, String)> = vec![("from", f.clone()), ("to", tt.clone())];
        for (k, v) in params {
            qv.retain(|(qk, _)| qk != k);
            qv.push((k, v.to_string()));
        }
        for path in [&dev_path, &fleet_path] {
            let (s, e) = aggregate(&h, path, &qv).await;
            assert_eq!((s, code(&e)), (400, want_code), "{path} {params:?}: {e}");
        }
    }
    // A missing interval is a query error; unknown ids are 404.
    let (s, e) = aggregate(&h, &dev_path, &[("from", f.clone())]).await;
    assert_eq!((s, code(&e)), (400, "invalid_query"), "{e}");
    let ghost = "00000000-0000-7000-8000-000000000000";
    let (s, _) = aggregate(&h, &format!("/fleets/{ghost}/telemetry/aggregate"), &q(&[])).await;
    assert_eq!(s, 404);
    let (s, _) = h.admin("GET", &format!("/fleets/{ghost}/tags"), None).await;
    assert_eq!(s, 404);
    t.stop().await;
}

/// Posts a regular series of `v` over HTTP: one point every `step` ms in `[from, to)`, values
/// cycling through longs and doubles; returns its model.
async fn post_regular(h: &Http, token: &str, from: i64, to: i64, step: i64) -> Series {
    let mut model = Series::new();
    let items: Vec<(i64, Value, V)> = (0..)
        .map(|i| from + i * step)
        .take_while(|ts| *ts < to)
        .enumerate()
        .map(|(i, ts)| {
            let i = i as i64;
            if i % 3 == 0 {
                let x = (i % 17 - 8) as f64 + 0.5;
                (ts, json!(x), V::Num(x))
            } else {
                (ts, json!(i % 23 - 11), V::Num((i % 23 - 11) as f64))
            }
        })
        .collect();
    for m in messages(&mut model, "v", &items, 200) {
        assert_eq!(h.dev("POST", token, "/telemetry", Some(&m)).await.0, 200);
    }
    model
}

async fn check_device_aggregate(
    h: &Http,
    id: &str,
    model: &Series,
    tz_name: &str,
    (iname, ims): (&str, i64),
    (from, to): (i64, i64),
) {
    let (s, r) = aggregate(
        h,
        &format!("/devices/{id}/telemetry/aggregate"),
        &[
            ("interval", iname.to_string()),
            ("tz", tz_name.to_string()),
            ("from", from.to_string()),
            ("to", to.to_string()),
        ],
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let tz = TimeZone::get(tz_name).expect("tz");
    check_buckets(
        &format!("{tz_name} {iname} [{from}, {to}]"),
        &r["data"]["v"],
        &[model],
        &expected_buckets(&tz, ims, from, to),
        from,
        to,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berlin_autumn_change_gives_a_25_hour_day() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (dev, token) = t.device("autumn").await;
    let id = id_of(&dev);
    // 2026-10-24T12:00Z to 2026-10-26T12:00Z; summer time ends 2026-10-25T01:00Z.
    let (lo, hi) = (1_792_843_200_000, 1_792_843_200_000 + 2 * DAY);
    let model = post_regular(&h, &token, lo, hi, 5 * MIN + 7_000).await;
    let range = (lo + 1, hi - 1);
    for interval in [("15m", 15 * MIN), ("1h", HOUR), ("1d", DAY)] {
        check_device_aggregate(&h, &id, &model, "Europe/Berlin", interval, range).await;
    }
    // By hand: local midnights 2026-10-24T22:00Z, 2026-10-25T23:00Z (25 h later),
    // 2026-10-26T23:00Z.
    let berlin = TimeZone::get("Europe/Berlin").expect("tz");
    assert_eq!(
        expected_buckets(&berlin, DAY, range.0, range.1),
        [
            (1_792_879_200_000 - DAY, 1_792_879_200_000),
            (1_792_879_200_000, 1_792_969_200_000),
            (1_792_969_200_000, 1_793_055_600_000),
        ]
    );
    // The repeated local hour 02:00-03:00 is two buckets: 00:00Z (CEST) and 01:00Z (CET).
    let hours = expected_buckets(&berlin, HOUR, range.0, range.1);
    assert!(hours.contains(&(1_792_886_400_000, 1_792_890_000_000)));
    assert!(hours.contains(&(1_792_890_000_000, 1_792_890_000_000 + HOUR)));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_hour_buckets_follow_the_local_clock_across_dst() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);
    let (dev, token) = t.device("grid").await;
    let id = id_of(&dev);
    // 2026-03-28T00:00Z to 2026-03-31T00:00Z, across Berlin's change to summer time.
    let (lo, hi) = (1_774_656_000_000, 1_774_915_200_000);
    let model = post_regular(&h, &token, lo, hi, 10 * MIN).await;
    // The same instants must land in the same buckets whatever the query starts with, and
    // 12-hour buckets start at local midnight and noon on every day.
    for from in [lo, 1_774_828_800_000] {
        for interval in [("12h", 12 * HOUR), ("2h", 2 * HOUR)] {
            check_device_aggregate(&h, &id, &model, "Europe/Berlin", interval, (from, hi - 1))
                .await;
        }
    }
    t.stop().await;
}
