//! Device conditions with real clients: a device opens, updates and closes conditions over MQTT 5
//! (TLS) and the HTTP device API; bad reports get precise refusals and change nothing;
//! operators list, filter, page, acknowledge and close them over REST; the overview counts
//! them; integrations and the live bus carry them; and an acknowledged open survives `kill -9`
//! of the real binary.

use crate::common;

use std::time::Duration;

use common::mqtt::{next_v5, spawn_v3, spawn_v5};
use common::server::Server;
use common::sink::Sink;
use common::{TestApp, call, eventually, tls_transport};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason};
use rumqttc::{MqttOptions, Packet, QoS};
use serde_json::{Value, json};

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// A device's open conditions over REST.
async fn device_conditions(base: &str, key: &str, device: &str) -> Vec<Value> {
    let (s, v) = call(
        base,
        key,
        "GET",
        &format!("/devices/{device}/conditions"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    items(&v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_open_update_and_close_conditions_and_operators_follow_them() {
    let t = TestApp::start().await;
    let (base, key) = (t.http_base(), t.admin_key.clone());
    let (dev, token) = t.device("boiler").await;
    let id = dev["id"].as_str().expect("id").to_string();
    let mut bus = t.app().services.events.subscribe();

    let (client, mut rx) = spawn_v5(t.v5_options("", &token, ""));
    match next_v5(&mut rx).await {
        Ok(V5Packet::ConnAck(_)) => {}
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let publish = |body: String| {
        let c = client.clone();
        async move {
            c.publish("v1/devices/me/conditions", V5QoS::AtLeastOnce, false, body)
                .await
                .expect("publish")
        }
    };
    let mut puback = async || match next_v5(&mut rx).await {
        Ok(V5Packet::PubAck(a)) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    };

    // Open, then the same name again (a redelivery or an update): one open condition.
    publish(
        json!({"name": "overheat", "action": "open", "severity": "major",
               "details": {"temp": 91}})
        .to_string(),
    )
    .await;
    assert_eq!(puback().await, PubAckReason::Success);
    publish(
        json!({"name": "overheat", "action": "open", "severity": "critical",
               "details": {"temp": 97}})
        .to_string(),
    )
    .await;
    assert_eq!(puback().await, PubAckReason::Success);
    let open = device_conditions(&base, &key, &id).await;
    assert_eq!(open.len(), 1, "{open:?}");
    let c = &open[0];
    assert_eq!(
        (
            c["name"].as_str(),
            c["severity"].as_str(),
            c["open"].as_bool()
        ),
        (Some("overheat"), Some("critical"), Some(true))
    );
    assert_eq!(
        (c["reports"].as_u64(), c["details"]["temp"].as_i64()),
        (Some(2), Some(97))
    );
    assert_eq!(c["fleet_id"], dev["fleet_id"]);
    let overheat = c["id"].as_str().expect("id").to_string();

    // The live bus said so, with the action: the repeated open is an update.
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            if let Ok(corral::events::Event::Condition {
                action, condition, ..
            }) = bus.recv().await
            {
                seen.push((action.as_str(), condition.name.clone(), condition.reports));
            }
        }
        seen
    })
    .await
    .expect("two condition events");
    assert_eq!(
        ev,
        [
            ("opened", "overheat".to_string(), 1),
            ("updated", "overheat".to_string(), 2)
        ]
    );

    // Bad reports: refused with "payload format invalid", and nothing changes.
    for bad in [
        json!({"name": "leak", "action": "open"}).to_string(),
        json!({"name": "no spaces", "action": "open", "severity": "minor"}).to_string(),
        json!({"name": "leak", "action": "open", "severity": "dire"}).to_string(),
        json!({"name": "leak", "action": "open", "severity": "minor", "extra": 1}).to_string(),
        json!({"name": "leak", "action": "open", "severity": "minor", "details": "wet"})
            .to_string(),
        "{not json".to_string(),
        "[]".to_string(),
    ] {
        publish(bad.clone()).await;
        assert_eq!(puback().await, PubAckReason::PayloadFormatInvalid, "{bad}");
    }
    let (_, v) = call(&base, &key, "GET", "/conditions?state=all", None).await;
    assert_eq!(items(&v).len(), 1, "{v}");

    // The HTTP device API speaks the same payload.
    let dev_api = |body: String| {
        let url = format!("{base}/api/v1/{token}/conditions");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .body(body)
                .send()
                .await
                .expect("send");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = dev_api(
        json!([{"name": "battery_low", "action": "open", "severity": "warning",
                "details": {"pct": 9}, "ts": 1_790_000_000_000i64}])
        .to_string(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["conditions"][0]["opened_at"], 1_790_000_000_000i64);
    let (s, v) = dev_api(json!({"name": "battery_low", "action": "open"}).to_string()).await;
    assert_eq!(s, 400);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("opening needs a severity")),
        "{v}"
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/not-a-token/conditions"))
        .body(json!({"name": "x", "action": "close"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);

    // Listing: filters by severity, name and state; bad filters are named.
    let (_, v) = call(
        &base,
        &key,
        "GET",
        "/conditions?severity=warning,info",
        None,
    )
    .await;
    let names: Vec<Value> = items(&v).iter().map(|c| c["name"].clone()).collect();
    assert_eq!(names, [json!("battery_low")], "{v}");
    let (_, v) = call(&base, &key, "GET", "/conditions?name=overheat", None).await;
    assert_eq!(items(&v).len(), 1);
    let (s, v) = call(&base, &key, "GET", "/conditions?severity=dire", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_query")),
        "{v}"
    );
    let (s, v) = call(&base, &key, "GET", "/conditions?state=shut", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_query")),
        "{v}"
    );
    let (_, v) = call(&base, &key, "GET", "/overview", None).await;
    assert_eq!(v["open_conditions"], 2, "{v}");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "corral_conditions_open{severity=\"critical\"} 1",
        "corral_conditions_open{severity=\"warning\"} 1",
        "corral_conditions_open{severity=\"info\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }

    // An operator acknowledges overheat: it stays open.
    let (s, v) = call(
        &base,
        &key,
        "POST",
        &format!("/conditions/{overheat}/acknowledge"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["acknowledged_at"].is_i64() && v["open"] == true, "{v}");
    assert!(v["acknowledged_by"].is_string(), "{v}");

    // The device closes it; a repeated close is acknowledged and changes nothing.
    for _ in 0..2 {
        publish(
            json!({"name": "overheat", "action": "close", "details": {"temp": 60}}).to_string(),
        )
        .await;
        assert_eq!(puback().await, PubAckReason::Success);
    }
    let (_, v) = call(&base, &key, "GET", &format!("/conditions/{overheat}"), None).await;
    assert_eq!(
        (v["open"].as_bool(), v["closed_by"].as_str()),
        (Some(false), Some("device")),
        "{v}"
    );
    assert_eq!(v["details"]["temp"], 60);
    // Opening it again starts a new condition; the closed one is history.
    publish(json!({"name": "overheat", "action": "update", "severity": "minor"}).to_string()).await;
    assert_eq!(puback().await, PubAckReason::Success);
    let (_, v) = call(
        &base,
        &key,
        "GET",
        &format!("/devices/{id}/conditions?state=all"),
        None,
    )
    .await;
    let all = items(&v);
    assert_eq!(all.len(), 3, "{v}");
    assert_ne!(all[0]["id"].as_str(), Some(overheat.as_str()));
    assert_eq!(
        (all[0]["name"].as_str(), all[0]["open"].as_bool()),
        (Some("overheat"), Some(true))
    );

    // An operator closes battery_low; closing it twice is a conflict.
    let battery = items(
        &call(&base, &key, "GET", "/conditions?name=battery_low", None)
            .await
            .1,
    )[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (s, v) = call(
        &base,
        &key,
        "POST",
        &format!("/conditions/{battery}/close"),
        None,
    )
    .await;
    assert_eq!((s, v["open"].as_bool()), (200, Some(false)), "{v}");
    let (s, v) = call(
        &base,
        &key,
        "POST",
        &format!("/conditions/{battery}/close"),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    let (_, v) = call(&base, &key, "GET", "/overview", None).await;
    assert_eq!(v["open_conditions"], 1, "{v}");

    // Paging through the history, newest first.
    let (_, p1) = call(&base, &key, "GET", "/conditions?state=all&limit=2", None).await;
    let cursor = p1["next_cursor"].as_str().expect("more").to_string();
    let (_, p2) = call(
        &base,
        &key,
        "GET",
        &format!("/conditions?state=all&limit=2&cursor={cursor}"),
        None,
    )
    .await;
    let ids: Vec<String> = items(&p1)
        .iter()
        .chain(items(&p2).iter())
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    assert!(p2["next_cursor"].is_null());
    let (s, v) = call(&base, &key, "GET", "/conditions?cursor=nope", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
    let (s, _) = call(
        &base,
        &key,
        "GET",
        &format!("/conditions/{}", uuid::Uuid::nil()),
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Deleting the device deletes its conditions.
    let (s, _) = call(&base, &key, "DELETE", &format!("/devices/{id}"), None).await;
    assert_eq!(s, 204);
    let (_, v) = call(&base, &key, "GET", "/conditions?state=all", None).await;
    assert!(items(&v).is_empty(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_reach_integrations_and_an_acknowledged_open_survives_kill_9() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let mut srv = Server::spawn(dir.path(), &key);
    let base = srv.base();
    let sink = Sink::start().await;
    let secret = "conditions-signing-secret";
    sink.set_secret(secret);
    let (s, i) = call(
        &base,
        &key,
        "POST",
        "/integrations",
        Some(
            json!({"name": "alarms", "url": sink.url(), "kinds": ["conditions"],
                    "signing_secret": secret}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{i}");
    let post = |path: &'static str, body: Value| {
        let base = base.clone();
        let key = key.clone();
        async move {
            let (s, v) = call(&base, &key, "POST", path, Some(body)).await;
            assert!(s == 201 || s == 200, "{path}: {s} {v}");
            v
        }
    };
    let ws = post("/workspaces", json!({"name": "plant"})).await;
    let fleet = post(
        "/fleets",
        json!({"workspace_id": ws["id"], "name": "pumps"}),
    )
    .await;
    let d = post(
        "/devices",
        json!({"fleet_id": fleet["id"], "name": "pump-7"}),
    )
    .await;
    let token = d["credentials"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let device = d["device"]["id"].as_str().expect("id").to_string();

    // MQTT 3.1.1: the PUBACK comes only once the condition is durable.
    let mut o = MqttOptions::new("pump-7", "127.0.0.1", srv.mqtt_tls.port());
    o.set_credentials(&token, "");
    o.set_transport(tls_transport(&srv.ca_pem()));
    let (c, mut rx) = spawn_v3(o);
    loop {
        match common::mqtt::next_v3(&mut rx).await {
            Ok(Packet::ConnAck(_)) => break,
            Ok(_) => continue,
            Err(e) => panic!("connect: {e:?}"),
        }
    }
    c.publish(
        "v1/devices/me/conditions",
        QoS::AtLeastOnce,
        false,
        json!({"name": "pressure_high", "action": "open", "severity": "critical",
               "details": {"bar": 12.5}})
        .to_string(),
    )
    .await
    .expect("publish");
    loop {
        match common::mqtt::next_v3(&mut rx).await {
            Ok(Packet::PubAck(_)) => break,
            Ok(_) => continue,
            Err(e) => panic!("waiting for PUBACK: {e:?}"),
        }
    }
    let got = eventually(10, || async {
        let r = sink.received();
        (!r.is_empty()).then_some(r)
    })
    .await;
    let e = &got[0].event;
    assert_eq!(e["kind"], "conditions", "{e}");
    assert_eq!(e["action"], "opened", "{e}");
    assert_eq!(e["device_id"], device.as_str());
    assert_eq!(e["condition"]["name"], "pressure_high");
    assert_eq!(e["condition"]["severity"], "critical");
    assert_eq!(e["condition"]["details"]["bar"], 12.5);
    assert_eq!(sink.bad_signatures(), 0);

    srv.kill9();
    let srv = Server::spawn(dir.path(), &key);
    let open = device_conditions(&srv.base(), &key, &device).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["name"], "pressure_high");
    assert_eq!(open[0]["open"], true);
}
