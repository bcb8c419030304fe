//! The ThingsBoard gateway API against the real `App` over MQTT 5 and TLS: a gateway creates
//! its sub-devices on first sight (in the fleet its `type` maps to, or its own), their telemetry
//! and attributes are stored with one aggregate PUBACK, attribute pushes and jobs reach them
//! through the gateway's session (and jobs wait while the gateway is away), attribute requests
//! are answered in ThingsBoard's shapes, the gateway's RPC replies are never echoed back, and a
//! gateway acts only on its own sub-devices, up to its cap, with precise reason codes.

use crate::common;

use std::time::Duration;

use common::TestApp;
use common::mqtt::{next_v5, spawn_v5};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, ConnectionError};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

type Rx = UnboundedReceiver<Result<Packet, ConnectionError>>;

async fn call(t: &TestApp, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::call(&t.http_base(), &t.admin_key, method, path, body).await
}

/// Publishes at QoS 1 and returns the PUBACK's reason (other packets before it are kept in
/// `seen`).
async fn publish(
    c: &AsyncClient,
    rx: &mut Rx,
    topic: &str,
    body: Value,
    seen: &mut Vec<Packet>,
) -> PubAckReason {
    c.publish(topic, QoS::AtLeastOnce, false, body.to_string())
        .await
        .expect("publish");
    loop {
        match next_v5(rx).await {
            Ok(Packet::PubAck(a)) => return a.reason,
            Ok(p) => seen.push(p),
            Err(e) => panic!("connection ended: {e:?}"),
        }
    }
}

/// The next publish on `topic` (from `seen` first), as JSON.
async fn message_on(rx: &mut Rx, topic: &str, seen: &mut Vec<Packet>) -> Value {
    let matches = |p: &Packet| matches!(p, Packet::Publish(m) if m.topic == topic.as_bytes());
    if let Some(i) = seen.iter().position(matches) {
        let Packet::Publish(m) = seen.remove(i) else {
            unreachable!()
        };
        return serde_json::from_slice(&m.payload).expect("json");
    }
    loop {
        match next_v5(rx).await {
            Ok(Packet::Publish(m)) if m.topic == topic.as_bytes() => {
                return serde_json::from_slice(&m.payload).expect("json");
            }
            Ok(p) => seen.push(p),
            Err(e) => panic!("connection ended: {e:?}"),
        }
    }
}

async fn connect(t: &TestApp, id: &str, token: &str) -> (AsyncClient, Rx) {
    let (c, mut rx) = spawn_v5(t.v5_options(id, token, ""));
    assert!(matches!(next_v5(&mut rx).await, Ok(Packet::ConnAck(_))));
    for f in [
        "v1/gateway/attributes",
        "v1/gateway/rpc",
        "v1/gateway/attributes/response",
    ] {
        c.subscribe(f, QoS::AtLeastOnce).await.expect("subscribe");
        match next_v5(&mut rx).await {
            Ok(Packet::SubAck(a)) => assert_eq!(
                a.return_codes,
                vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                    QoS::AtLeastOnce
                )],
                "{f}"
            ),
            other => panic!("{other:?}"),
        }
    }
    (c, rx)
}

async fn device_named(t: &TestApp, ws: &str, name: &str) -> Option<Value> {
    let (_, page) = call(
        t,
        "GET",
        &format!("/devices?workspace_id={ws}&name={name}"),
        None,
    )
    .await;
    page["items"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_speaks_for_its_own_sub_devices_only() {
    let t = TestApp::start_with(|c| c.limits.gateway_sub_devices = 3).await;
    let (_, ws) = call(&t, "POST", "/workspaces", Some(json!({"name": "plant"}))).await;
    let ws = ws["id"].as_str().expect("ws").to_string();
    let fleet = |name: &'static str| {
        let (t, ws) = (&t, ws.clone());
        async move {
            let (_, f) = call(
                t,
                "POST",
                "/fleets",
                Some(json!({"workspace_id": ws, "name": name})),
            )
            .await;
            f["id"].as_str().expect("fleet").to_string()
        }
    };
    let (edge, thermo) = (fleet("edge").await, fleet("thermometers").await);
    let device = |name: &'static str, extra: Value| {
        let (t, edge) = (&t, edge.clone());
        async move {
            let mut body = json!({"fleet_id": edge, "name": name});
            body.as_object_mut()
                .expect("obj")
                .extend(extra.as_object().cloned().unwrap_or_default());
            let (s, d) = call(t, "POST", "/devices", Some(body)).await;
            assert_eq!(s, 201, "{d}");
            (
                d["device"]["id"].as_str().expect("id").to_string(),
                d["credentials"]["token"]
                    .as_str()
                    .expect("token")
                    .to_string(),
                d["device"].clone(),
            )
        }
    };
    // A mapping to a fleet of another workspace is refused, naming the field.
    let (_, other_ws) = call(&t, "POST", "/workspaces", Some(json!({"name": "else"}))).await;
    let (_, foreign) = call(
        &t,
        "POST",
        "/fleets",
        Some(json!({"workspace_id": other_ws["id"], "name": "f"})),
    )
    .await;
    let (s, e) = call(
        &t,
        "POST",
        "/devices",
        Some(json!({"fleet_id": edge, "name": "bad-gw", "gateway": true,
            "gateway_type_fleets": {"Thermometer": foreign["id"]}})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("invalid_field")),
        "{e}"
    );

    let (gw, gw_token, gw_view) = device(
        "gw",
        json!({"gateway": true,
        "gateway_type_fleets": {"Thermometer": thermo}}),
    )
    .await;
    assert_eq!(gw_view["gateway"]["role"], "gateway", "{gw_view}");
    let (_, gw2_token, _) = device("gw2", json!({"gateway": true})).await;
    let (_, direct_token, _) = device("direct", json!({})).await;

    let (c, mut rx) = connect(&t, "gw", &gw_token).await;
    let mut seen = Vec::new();
    // connect: created in the fleet its type maps to, online, linked to the gateway.
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/connect",
            json!({"device": "SN-001", "type": "Thermometer"}),
            &mut seen
        )
        .await,
        PubAckReason::Success
    );
    let sn1 = device_named(&t, &ws, "SN-001").await.expect("created");
    assert_eq!(sn1["fleet_id"], thermo.as_str());
    assert_eq!(sn1["status"], "online");
    assert_eq!(
        sn1["gateway"],
        json!({"role": "sub_device", "gateway_id": gw, "device_type": "Thermometer"})
    );
    let sn1_id = sn1["id"].as_str().expect("id").to_string();

    // Telemetry of two devices in one message: one PUBACK once both are stored; the new one
    // joins the gateway's fleet. Array items may carry metadata, which is not stored.
    let ts = corral::model::now_ms() - 1000;
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/telemetry",
            json!({
                "SN-001": [{"ts": ts, "values": {"temperature": 21.5},
                            "metadata": {"connector": "c", "receivedTs": 1, "publishedTs": 2}}],
                "SN-002": [{"humidity": 40}],
            }),
            &mut seen
        )
        .await,
        PubAckReason::Success
    );
    let t1 = t
        .telemetry(&sn1_id, &[("keys", "temperature,metadata".into())])
        .await;
    assert_eq!(t1["data"]["temperature"][0]["value"], 21.5, "{t1}");
    assert_eq!(t1["data"]["temperature"][0]["ts"], ts);
    assert!(
        t1["data"]
            .get("metadata")
            .is_none_or(|m| m.as_array().is_some_and(Vec::is_empty)),
        "{t1}"
    );
    let sn2 = device_named(&t, &ws, "SN-002").await.expect("created");
    assert_eq!(sn2["fleet_id"], edge.as_str());
    assert_eq!(sn2["gateway"]["device_type"], "default");
    let sn2_id = sn2["id"].as_str().expect("id").to_string();
    let t2 = t.telemetry(&sn2_id, &[("keys", "humidity".into())]).await;
    assert_eq!(t2["data"]["humidity"][0]["value"], 40, "{t2}");

    // Client attributes.
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/attributes",
            json!({"SN-001": {"model": "T1000"}}),
            &mut seen
        )
        .await,
        PubAckReason::Success
    );
    let (_, a) = call(&t, "GET", &format!("/devices/{sn1_id}/attributes"), None).await;
    assert_eq!(a["client"]["model"]["value"], "T1000", "{a}");

    // A shared attribute set by an operator reaches the gateway in the gateway's shape.
    let (s, _) = call(
        &t,
        "PUT",
        &format!("/devices/{sn1_id}/attributes/shared"),
        Some(json!({"firmwareVersion": "2.0"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        message_on(&mut rx, "v1/gateway/attributes", &mut seen).await,
        json!({"device": "SN-001", "data": {"firmwareVersion": "2.0"}})
    );

    // Attribute requests: one name → `value`; several → `values` with those set.
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/attributes/request",
            json!({"id": 1, "device": "SN-001", "client": false, "key": "firmwareVersion"}),
            &mut seen
        )
        .await,
        PubAckReason::Success
    );
    assert_eq!(
        message_on(&mut rx, "v1/gateway/attributes/response", &mut seen).await,
        json!({"id": 1, "device": "SN-001", "value": "2.0"})
    );
    publish(
        &c,
        &mut rx,
        "v1/gateway/attributes/request",
        json!({"id": 2, "device": "SN-001", "client": true, "keys": ["model", "missing"]}),
        &mut seen,
    )
    .await;
    assert_eq!(
        message_on(&mut rx, "v1/gateway/attributes/response", &mut seen).await,
        json!({"id": 2, "device": "SN-001", "values": {"model": "T1000"}})
    );

    // A two-way job to a sub-device goes through the gateway and completes on its reply.
    let waiter = {
        let (base, key, id) = (t.http_base(), t.admin_key.clone(), sn1_id.clone());
        tokio::spawn(async move {
            common::call(
                &base,
                &key,
                "POST",
                &format!("/devices/{id}/jobs?wait_ms=10000"),
                Some(json!({"method": "echo", "params": {"x": 1}, "two_way": true})),
            )
            .await
        })
    };
    let req = message_on(&mut rx, "v1/gateway/rpc", &mut seen).await;
    assert_eq!(req["device"], "SN-001");
    assert_eq!(req["data"]["method"], "echo");
    assert_eq!(req["data"]["params"], json!({"x": 1}));
    let rpc_id = req["data"]["id"].as_u64().expect("id");
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/rpc",
            json!({"device": "SN-001", "id": rpc_id, "data": {"x": 1}}),
            &mut seen
        )
        .await,
        PubAckReason::Success
    );
    let (s, job) = waiter.await.expect("join");
    assert_eq!(
        (s, job["state"].as_str()),
        (201, Some("succeeded")),
        "{job}"
    );
    assert_eq!(job["result"], json!({"x": 1}));
    // The gateway's own reply is not echoed back to it.
    let echoed = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Packet::Publish(m)) = next_v5(&mut rx).await
                && m.topic == b"v1/gateway/rpc".as_slice()
            {
                return m;
            }
        }
    })
    .await;
    assert!(echoed.is_err(), "the reply came back: {echoed:?}");

    // Refusals, each with its code; nothing stored or created.
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/telemetry",
            json!({"direct": [{"x": 1}]}),
            &mut seen
        )
        .await,
        PubAckReason::NotAuthorized,
        "a directly connected device is not the gateway's"
    );
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/telemetry",
            json!({"SN-001": {"x": 1}}),
            &mut seen
        )
        .await,
        PubAckReason::PayloadFormatInvalid
    );
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/connect",
            json!({"device": "SN-003"}),
            &mut seen
        )
        .await,
        PubAckReason::Success
    );
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/connect",
            json!({"device": "SN-004"}),
            &mut seen
        )
        .await,
        PubAckReason::QuotaExceeded,
        "past limits.gateway_sub_devices (3)"
    );
    assert!(device_named(&t, &ws, "SN-004").await.is_none());
    // The cap is on new devices: those it has keep working.
    assert_eq!(
        publish(
            &c,
            &mut rx,
            "v1/gateway/telemetry",
            json!({"SN-003": [{"x": 1}]}),
            &mut seen
        )
        .await,
        PubAckReason::Success
    );

    // The list filtered by gateway: its sub-devices, whatever their fleet.
    let (_, subs) = call(
        &t,
        "GET",
        &format!("/devices?gateway_id={gw}&sort=name"),
        None,
    )
    .await;
    let names: Vec<&str> = subs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["SN-001", "SN-002", "SN-003"], "{subs}");

    // Another gateway cannot act on this one's sub-devices; a device that is not a gateway
    // cannot use the gateway API.
    let (c2, mut rx2) = connect(&t, "gw2", &gw2_token).await;
    let mut seen2 = Vec::new();
    assert_eq!(
        publish(
            &c2,
            &mut rx2,
            "v1/gateway/telemetry",
            json!({"SN-001": [{"x": 9}]}),
            &mut seen2
        )
        .await,
        PubAckReason::NotAuthorized
    );
    let (c3, mut rx3) = spawn_v5(t.v5_options("direct", &direct_token, ""));
    assert!(matches!(next_v5(&mut rx3).await, Ok(Packet::ConnAck(_))));
    assert_eq!(
        publish(
            &c3,
            &mut rx3,
            "v1/gateway/telemetry",
            json!({"x": [{"x": 1}]}),
            &mut Vec::new()
        )
        .await,
        PubAckReason::NotAuthorized
    );
    let x = t.telemetry(&sn1_id, &[("keys", "x".into())]).await;
    assert!(
        x["data"]
            .get("x")
            .is_none_or(|v| v.as_array().is_some_and(Vec::is_empty)),
        "{x}"
    );

    // An operator deletes a connected sub-device: its gateway is told, as ThingsBoard does.
    let sn3 = device_named(&t, &ws, "SN-003").await.expect("sn3");
    let (s, _) = call(
        &t,
        "DELETE",
        &format!("/devices/{}", sn3["id"].as_str().expect("id")),
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        message_on(&mut rx, "v1/gateway/disconnect", &mut seen).await,
        json!({"device": "SN-003", "reason": "device_deleted"})
    );

    // disconnect: that sub-device goes offline; the gateway's end takes the rest with it.
    publish(
        &c,
        &mut rx,
        "v1/gateway/disconnect",
        json!({"device": "SN-002"}),
        &mut seen,
    )
    .await;
    assert_eq!(
        device_named(&t, &ws, "SN-002").await.expect("sn2")["status"],
        "offline"
    );
    assert_eq!(
        device_named(&t, &ws, "SN-001").await.expect("sn1")["status"],
        "online"
    );
    c.disconnect().await.expect("disconnect");
    common::eventually(10, || async {
        (device_named(&t, &ws, "SN-001").await?["status"] == "offline").then_some(())
    })
    .await;

    // A job and a shared attribute change made while the gateway is away wait, and go out
    // when it is back.
    let (s, job) = call(
        &t,
        "POST",
        &format!("/devices/{sn1_id}/jobs"),
        Some(json!({"method": "later"})),
    )
    .await;
    assert_eq!((s, job["state"].as_str()), (201, Some("queued")), "{job}");
    let (s, _) = call(
        &t,
        "PUT",
        &format!("/devices/{sn1_id}/attributes/shared"),
        Some(json!({"interval": 30})),
    )
    .await;
    assert_eq!(s, 200);
    let (c, mut rx) = connect(&t, "gw", &gw_token).await;
    let mut seen = Vec::new();
    publish(
        &c,
        &mut rx,
        "v1/gateway/connect",
        json!({"device": "SN-001"}),
        &mut seen,
    )
    .await;
    let req = message_on(&mut rx, "v1/gateway/rpc", &mut seen).await;
    assert_eq!(
        (req["device"].as_str(), req["data"]["method"].as_str()),
        (Some("SN-001"), Some("later"))
    );
    assert_eq!(
        message_on(&mut rx, "v1/gateway/attributes", &mut seen).await,
        json!({"device": "SN-001", "data": {"interval": 30}}),
        "only what changed while it was away"
    );
}
