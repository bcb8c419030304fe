//! MQTT ingest over real TLS with real clients (rumqttc, MQTT 3.1.1 and 5): telemetry in all three
//! payload forms stored and read back over REST, PUBACK semantics, every CONNECT refusal, unknown
//! topics, bad payloads, oversize packets, subscriptions and presence.

use crate::common;

use std::time::Duration;

use common::mqtt::{next, next_v3, next_v5, spawn_v3, spawn_v5};
use common::{TestApp, eventually};
use rumqttc::v5::ConnectionError as V5Error;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, Packet as V5Packet, PubAckReason};
use rumqttc::{ConnectReturnCode, ConnectionError, Packet, QoS};
use serde_json::{Value, json};

fn points(t: &Value, key: &str) -> Vec<Value> {
    t["data"][key].as_array().cloned().unwrap_or_default()
}

/// Queues `count` QoS 1 telemetry messages `{"n": 0}`, `{"n": 1}`, ... back to back.
async fn publish_numbered(client: &rumqttc::AsyncClient, count: i64) {
    for n in 0..count {
        client
            .publish(
                "v1/devices/me/telemetry",
                QoS::AtLeastOnce,
                false,
                json!({"n": n}).to_string(),
            )
            .await
            .expect("publish");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_telemetry_in_all_forms_is_stored_and_read_back() {
    let mut t = TestApp::start().await;
    let (dev, token) = t.device("thermo-1").await;
    let id = dev["id"].as_str().expect("id");
    let (client, mut rx) = spawn_v3(t.v3_options("", &token, ""));
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::ConnAck(_))));

    let now = corral::model::now_ms();
    let payloads = [
        json!({"temperature": 21.5, "enabled": false, "count": 7, "label": "ok", "cast": "42", "gone": null}),
        json!({"ts": now - 60_000, "values": {"humidity": 70}}),
        json!([{"ts": now - 30_000, "values": {"humidity": 71}}, {"nested": {"a": [1, 2]}}]),
    ];
    for p in &payloads {
        client
            .publish(
                "v1/devices/me/telemetry",
                QoS::AtLeastOnce,
                false,
                p.to_string(),
            )
            .await
            .expect("publish");
        assert!(
            matches!(next_v3(&mut rx).await, Ok(Packet::PubAck(_))),
            "PUBACK after durable store"
        );
    }

    let all = t
        .telemetry(id, &[("from", (now - 3_600_000).to_string())])
        .await;
    assert_eq!(points(&all, "temperature")[0]["value"], json!(21.5));
    assert_eq!(points(&all, "enabled")[0]["value"], json!(false));
    assert_eq!(points(&all, "count")[0]["value"], json!(7));
    assert_eq!(points(&all, "label")[0]["value"], json!("ok"));
    assert_eq!(
        points(&all, "cast")[0]["value"],
        json!(42),
        "numeric strings are cast"
    );
    assert!(all["data"].get("gone").is_none(), "nulls are skipped");
    assert_eq!(points(&all, "nested")[0]["value"], json!({"a": [1, 2]}));
    let hum = points(&all, "humidity");
    assert_eq!(hum.len(), 2);
    assert_eq!(
        hum[0],
        json!({"ts": now - 60_000, "value": 70}),
        "device timestamps are kept"
    );
    assert_eq!(hum[1]["ts"], json!(now - 30_000));

    let latest: Value = t
        .api
        .get(
            &format!("/devices/{id}/telemetry/latest"),
            &[("keys", "humidity,count".into())],
        )
        .await
        .expect("latest");
    assert_eq!(latest["data"]["humidity"]["value"], json!(71));
    assert_eq!(latest["data"]["count"]["value"], json!(7));
    assert!(latest["data"].get("temperature").is_none());

    // Pagination with a cursor covers everything exactly once.
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![
            ("from", (now - 3_600_000).to_string()),
            ("limit", "2".to_string()),
        ];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page = t.telemetry(id, &q).await;
        seen += page["data"]
            .as_object()
            .expect("data")
            .values()
            .map(|v| v.as_array().map_or(0, Vec::len))
            .sum::<usize>();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, 8);

    // Presence: online while connected, offline with timestamps afterwards.
    let d: Value = t
        .api
        .get(&format!("/devices/{id}"), &[])
        .await
        .expect("device");
    assert_eq!(d["status"], "online");
    assert!(d["last_connect_at"].is_i64());
    client.disconnect().await.expect("disconnect");
    eventually(10, || async {
        let d: Value = t.api.get(&format!("/devices/{id}"), &[]).await.ok()?;
        (d["status"] == "offline"
            && d["last_disconnect_at"].is_i64()
            && d["last_activity_at"].is_i64())
        .then_some(())
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", t.http_base()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("corral_messages_in_total{transport=\"mqtt-tls\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("corral_store_flushes_total"));
    // The process and the store, measured at the scrape.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(value("corral_process_resident_memory_bytes") > 1e6);
    assert!(value("corral_process_cpu_seconds") > 0.0);
    assert!(value("corral_process_open_fds") >= 3.0);
    assert!(value("corral_store_size_bytes") > 0.0);
    // Sessions opened and closed: the log's per-minute summary counts these.
    assert!(value("corral_device_connects_total") >= 1.0);
    assert!(value("corral_device_disconnects_total") >= 1.0);
    let version = format!(
        "corral_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&version), "{metrics}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_refusals_keep_the_session_and_lose_nothing() {
    let mut t = TestApp::start().await;
    let (dev, token) = t.device("v5-dev").await;
    let id = dev["id"].as_str().expect("id");
    let mut opts = t.v5_options("", &token, "");
    opts.set_max_packet_size(Some(1 << 20));
    let (client, mut rx) = spawn_v5(opts);
    match next_v5(&mut rx).await {
        Ok(V5Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, V5Code::Success);
            let props = ack.properties.expect("properties");
            assert_eq!(
                props.max_packet_size,
                Some(65536),
                "maximum packet size advertised"
            );
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let publish = |topic: &'static str, body: String| {
        let c = client.clone();
        async move {
            c.publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, body)
                .await
                .expect("publish")
        }
    };
    publish("v1/devices/me/telemetry", json!({"a": 1}).to_string()).await;
    match next_v5(&mut rx).await {
        Ok(V5Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::Success),
        other => panic!("{other:?}"),
    }
    publish("v1/devices/me/unknown", json!({"a": 2}).to_string()).await;
    match next_v5(&mut rx).await {
        Ok(V5Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::TopicNameInvalid),
        other => panic!("{other:?}"),
    }
    publish("v1/devices/me/telemetry", "{not json".to_string()).await;
    match next_v5(&mut rx).await {
        Ok(V5Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::PayloadFormatInvalid),
        other => panic!("{other:?}"),
    }
    publish("v1/devices/me/telemetry", json!([1, 2]).to_string()).await;
    match next_v5(&mut rx).await {
        Ok(V5Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::PayloadFormatInvalid),
        other => panic!("{other:?}"),
    }
    // The session is still open and still stores data.
    publish("v1/devices/me/telemetry", json!({"a": 3}).to_string()).await;
    match next_v5(&mut rx).await {
        Ok(V5Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::Success),
        other => panic!("{other:?}"),
    }
    // Subscriptions: the device topics are granted QoS 1, anything else is refused.
    client
        .subscribe(
            "v1/devices/me/rpc/request/+",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .expect("sub");
    match next_v5(&mut rx).await {
        Ok(V5Packet::SubAck(s)) => assert_eq!(
            s.return_codes,
            vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce
            )]
        ),
        other => panic!("{other:?}"),
    }
    client
        .subscribe(
            "v1/devices/other/#",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .expect("sub");
    match next_v5(&mut rx).await {
        Ok(V5Packet::SubAck(s)) => assert_eq!(
            s.return_codes,
            vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::NotAuthorized]
        ),
        other => panic!("{other:?}"),
    }
    // An oversize packet is refused and the connection closed; earlier data stays.
    publish(
        "v1/devices/me/telemetry",
        format!(r#"{{"big":"{}"}}"#, "x".repeat(70_000)),
    )
    .await;
    loop {
        match next(&mut rx).await {
            Ok(V5Packet::Disconnect(d)) => {
                assert_eq!(
                    d.reason_code,
                    rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::PacketTooLarge
                );
                break;
            }
            Err(_) => break,
            Ok(V5Packet::PingResp(_)) => continue,
            Ok(other) => panic!("expected the connection to close, got {other:?}"),
        }
    }
    let data = t.telemetry(id, &[]).await;
    let a: Vec<_> = points(&data, "a")
        .iter()
        .map(|p| p["value"].clone())
        .collect();
    assert_eq!(
        a,
        vec![json!(1), json!(3)],
        "only the accepted publishes are stored"
    );
    assert!(data["data"].get("big").is_none());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_bad_payload_closes_the_session_without_storing() {
    let mut t = TestApp::start().await;
    let (dev, token) = t.device("v3-bad").await;
    let id = dev["id"].as_str().expect("id");
    let (client, mut rx) = spawn_v3(t.v3_options("", &token, ""));
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::ConnAck(_))));
    // Unknown topic on 3.1.1: acknowledged (no negative PUBACK exists), session stays open.
    client
        .publish("v1/devices/me/nowhere", QoS::AtLeastOnce, false, "{}")
        .await
        .expect("publish");
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::PubAck(_))));
    client
        .publish("v1/devices/me/telemetry", QoS::AtLeastOnce, false, "[1,2")
        .await
        .expect("publish");
    assert!(
        next_v3(&mut rx).await.is_err(),
        "the server closes a 3.1.1 session on a bad payload"
    );
    let data = t.telemetry(id, &[]).await;
    assert_eq!(data["data"], json!({}));

    // Oversize on 3.1.1: the connection is closed, what was acknowledged before stays.
    let mut opts = t.v3_options("", &token, "");
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut rx) = spawn_v3(opts);
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::ConnAck(_))));
    client
        .publish(
            "v1/devices/me/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"kept":1}"#,
        )
        .await
        .expect("publish");
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::PubAck(_))));
    let big = format!(r#"{{"big":"{}"}}"#, "x".repeat(70_000));
    client
        .publish("v1/devices/me/telemetry", QoS::AtLeastOnce, false, big)
        .await
        .expect("publish");
    assert!(
        next_v3(&mut rx).await.is_err(),
        "oversize packets close the connection"
    );
    let data = t.telemetry(id, &[]).await;
    assert_eq!(points(&data, "kept").len(), 1);
    assert!(data["data"].get("big").is_none());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_connect_timeout() {
    use tokio::io::AsyncReadExt;
    let mut t = TestApp::start_with(|c| c.mqtt.connect_timeout_secs = 1).await;
    // No TLS handshake at all.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", t.mqtt_port()))
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "server closes a silent connection"
    );
    // TLS done, but no CONNECT.
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        corral::pki::client_config_trusting(&t.ca_pem).expect("tls"),
    ));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", t.mqtt_port()))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "server closes a connection that never sends CONNECT"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refusals_use_thingsboard_codes() {
    let mut t = TestApp::start().await;
    let (dev, token) = t.device("gate").await;

    let v3 = |client_id: &str, user: &str, pass: &str| {
        let (_c, rx) = spawn_v3(t.v3_options(client_id, user, pass));
        rx
    };
    let refused = |r: Result<Packet, ConnectionError>| match r {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refused(next_v3(&mut v3("", "wrong-token", "")).await),
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        refused(next_v3(&mut v3("", "wrong-user", "secret")).await),
        ConnectReturnCode::NotAuthorized
    );
    assert_eq!(
        refused(next_v3(&mut v3("some-client", "", "")).await),
        ConnectReturnCode::BadClientId
    );
    assert_eq!(
        refused(next_v3(&mut v3("", "", "")).await),
        ConnectReturnCode::NotAuthorized
    );

    let v5 = |client_id: &str, user: &str, pass: &str| {
        let (_c, rx) = spawn_v5(t.v5_options(client_id, user, pass));
        rx
    };
    let refused5 = |r: Result<V5Packet, V5Error>| match r {
        Err(V5Error::ConnectionRefused(code)) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refused5(next_v5(&mut v5("", "wrong-token", "")).await),
        V5Code::BadUserNamePassword
    );
    assert_eq!(
        refused5(next_v5(&mut v5("", "wrong-user", "pw")).await),
        V5Code::NotAuthorized
    );
    assert_eq!(
        refused5(next_v5(&mut v5("cid", "", "")).await),
        V5Code::ClientIdentifierNotValid
    );

    // A disabled device is refused; enabled again, it connects (v3 and v5, empty client ids).
    let id = dev["id"].as_str().expect("id");
    let _: Value = t
        .api
        .patch(&format!("/devices/{id}"), &json!({"enabled": false}))
        .await
        .expect("disable");
    assert_eq!(
        refused(next_v3(&mut v3("", &token, "")).await),
        ConnectReturnCode::NotAuthorized
    );
    assert_eq!(
        refused5(next_v5(&mut v5("", &token, "")).await),
        V5Code::NotAuthorized
    );
    let _: Value = t
        .api
        .patch(&format!("/devices/{id}"), &json!({"enabled": true}))
        .await
        .expect("enable");
    assert!(matches!(
        next_v3(&mut v3("", &token, "")).await,
        Ok(Packet::ConnAck(_))
    ));
    assert!(matches!(
        next_v5(&mut v5("", &token, "")).await,
        Ok(V5Packet::ConnAck(_))
    ));

    let metrics = reqwest::get(format!("{}/metrics", t.http_base()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("reason=\"bad_username_or_password\""),
        "{metrics}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_subscriptions_and_tls12_only_clients() {
    let mut t = TestApp::start().await;
    let (_dev, token) = t.device("tls12").await;
    // The ThingsBoard Python SDK offers only TLS 1.2.
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(t.ca_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("tls12")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut opts = t.v3_options("", &token, "");
    opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        std::sync::Arc::new(cfg),
    )));
    let (client, mut rx) = spawn_v3(opts);
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::ConnAck(_))));
    client
        .subscribe("v1/devices/me/attributes", QoS::AtLeastOnce)
        .await
        .expect("sub");
    match next_v3(&mut rx).await {
        Ok(Packet::SubAck(s)) => assert_eq!(
            s.return_codes,
            vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        ),
        other => panic!("{other:?}"),
    }
    client.subscribe("#", QoS::AtLeastOnce).await.expect("sub");
    match next_v3(&mut rx).await {
        Ok(Packet::SubAck(s)) => {
            assert_eq!(s.return_codes, vec![rumqttc::SubscribeReasonCode::Failure])
        }
        other => panic!("{other:?}"),
    }
    t.stop().await;
}

#[tokio::test]
async fn connection_history_records_connects_and_disconnects() {
    let t = TestApp::start().await;
    let (dev, token) = t.device("historian").await;
    let id = dev["id"].as_str().expect("id").to_string();
    for _ in 0..2 {
        let (c, mut rx) = spawn_v3(t.v3_options("h1", &token, ""));
        match next_v3(&mut rx).await {
            Ok(Packet::ConnAck(a)) => assert_eq!(a.code, ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c.disconnect().await.expect("disconnect");
        let _ = next(&mut rx).await;
    }
    let history: Value = eventually(10, || async {
        let v: Value = t
            .api
            .get(&format!("/devices/{id}/connections"), &[])
            .await
            .expect("history");
        (v.as_array().map_or(0, Vec::len) == 4).then_some(v)
    })
    .await;
    let events: Vec<&str> = history
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    // Newest first.
    assert_eq!(
        events,
        ["disconnected", "connected", "disconnected", "connected"]
    );
    for e in history.as_array().expect("list") {
        assert_eq!(e["transport"], "mqtt-tls", "{e}");
        assert!(
            e["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{e}"
        );
    }
}

/// MQTT 5: a packet that does not decode ends the connection with DISCONNECT 0x81 (malformed
/// packet), as the specification and other brokers answer, not 0x83.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_v5_packets_get_disconnect_0x81() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut t = TestApp::start().await;
    let (_dev, token) = t.device("malformed").await;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        corral::pki::client_config_trusting(&t.ca_pem).expect("tls"),
    ));
    // Each bad PUBLISH body: invalid UTF-8 in the topic, a NUL in the topic, packet id 0.
    let bad: [&[u8]; 3] = [
        &[0x32, 9, 0, 3, 0xff, 0xfe, 0xfd, 0, 1, 0, b'1'],
        &[0x32, 9, 0, 3, b'a', 0, b'b', 0, 1, 0, b'1'],
        &[0x32, 7, 0, 1, b'a', 0, 0, 0, b'1'],
    ];
    for publish in bad {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", t.mqtt_port()))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x82, 0, 60, 0, 0, 0];
        connect.extend_from_slice(&(token.len() as u16).to_be_bytes());
        connect.extend_from_slice(token.as_bytes());
        let mut packet = vec![0x10, connect.len() as u8];
        packet.extend_from_slice(&connect);
        tls.write_all(&packet).await.expect("connect");
        let mut connack = [0u8; 2];
        tls.read_exact(&mut connack).await.expect("connack");
        assert_eq!(connack[0], 0x20);
        let mut rest = vec![0u8; connack[1] as usize];
        tls.read_exact(&mut rest).await.expect("connack body");
        assert_eq!(rest[1], 0, "accepted");
        tls.write_all(publish).await.expect("publish");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
        assert!(got.len() >= 3 && got[0] == 0xE0, "a DISCONNECT: {got:02x?}");
        assert_eq!(got[2], 0x81, "malformed packet for {publish:02x?}");
    }
    t.stop().await;
}

/// The overview's message rate is the rate of the last minute, sampled all along: the first
/// view after a burst already shows it (it used to read 0.0 until a second view).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_rate_is_measured_before_anyone_looks() {
    let mut t = TestApp::start().await;
    let (_, token) = t.device("rate-dev").await;
    let http = reqwest::Client::new();
    for i in 0..30 {
        let r = http
            .post(format!("{}/api/v1/{token}/telemetry", t.http_base()))
            .json(&json!({"t": i}))
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success());
    }
    // Two sampling ticks (5 s apart) without a single view in between.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let v: Value = t.api.get("/overview", &[]).await.expect("overview");
    let rate = v["messages_per_sec"].as_f64().expect("rate");
    assert!(rate > 0.0, "first view: {v}");
    t.stop().await;
}

/// Claiming over MQTT (§5.7): the same handling as over HTTP, acknowledged and audited; a
/// payload that is not JSON is refused and leaves no record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_over_mqtt_are_acknowledged_and_audited() {
    let mut t = TestApp::start().await;
    let (dev, token) = t.device("claimer").await;
    let id = dev["id"].as_str().expect("id").to_string();
    let (client, mut rx) = spawn_v5(t.v5_options("", &token, ""));
    match next_v5(&mut rx).await {
        Ok(V5Packet::ConnAck(ack)) => assert_eq!(ack.code, V5Code::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let claim = |body: String| {
        let c = client.clone();
        async move {
            c.publish(
                "v1/devices/me/claim",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                body,
            )
            .await
            .expect("publish")
        }
    };
    claim("{not json".to_string()).await;
    match next_v5(&mut rx).await {
        Ok(V5Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::PayloadFormatInvalid),
        other => panic!("{other:?}"),
    }
    claim(json!({"secretKey": "s3cr3t", "durationMs": 60000}).to_string()).await;
    match next_v5(&mut rx).await {
        Ok(V5Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::Success),
        other => panic!("{other:?}"),
    }
    // The store's writer thread writes audit records after the reply: wait for it.
    let audit: Value = eventually(10, || async {
        let a: Value = t
            .api
            .get(
                "/audit",
                &[
                    ("kind", "claim_requested".to_string()),
                    ("device_id", id.clone()),
                ],
            )
            .await
            .expect("audit");
        (!a["items"].as_array().expect("items").is_empty()).then_some(a)
    })
    .await;
    let items = audit["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{audit}");
    assert_eq!(items[0]["actor"], "device");
    assert!(
        items[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("60000 ms")),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains("s3cr3t"),
        "no secret in the audit"
    );
    t.stop().await;
}

/// 2,000 QoS 1 messages without `ts`, sent back to back by one device (many in the same
/// millisecond): every acknowledged one is stored, at strictly increasing server timestamps.
/// Two messages with the device's own equal `ts` still replace each other (ThingsBoard's rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stamped_points_never_replace_each_other() {
    const N: i64 = 2000;
    let t = TestApp::start().await;
    let (dev, token) = t.device("burst").await;
    let id = dev["id"].as_str().expect("id");
    let mut o = t.v3_options("burst", &token, "");
    o.set_inflight(100);
    let (client, mut rx) = spawn_v3(o);
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::ConnAck(_))));
    let before = corral::model::now_ms();
    let sender = {
        let client = client.clone();
        tokio::spawn(async move { publish_numbered(&client, N).await })
    };
    let mut acked = 0;
    while acked < N {
        if let Ok(Packet::PubAck(_)) = next_v3(&mut rx).await {
            acked += 1;
        }
    }
    sender.await.expect("sender");
    let took = corral::model::now_ms() - before;

    // Every point, read back a page at a time in time order.
    let mut stamps: Vec<(i64, i64)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![
            ("keys", "n".to_string()),
            ("from", (before - 1000).to_string()),
            ("to", (corral::model::now_ms() + 60_000).to_string()),
            ("limit", "1000".into()),
            ("order", "asc".into()),
        ];
        q.extend(cursor.clone().map(|c| ("cursor", c)));
        let page = t.telemetry(id, &q).await;
        for p in points(&page, "n") {
            stamps.push((
                p["ts"].as_i64().expect("ts"),
                p["value"].as_i64().expect("value"),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    // Messages in flight together are stamped in the order they are handled, which may swap
    // neighbours; none is lost and no two share a timestamp.
    let values: std::collections::BTreeSet<i64> = stamps.iter().map(|(_, v)| *v).collect();
    let missing: Vec<i64> = (0..N).filter(|n| !values.contains(n)).collect();
    assert!(
        missing.is_empty() && stamps.len() == N as usize,
        "{} points for {N} acknowledged messages ({took} ms for all of them); missing {missing:?}",
        stamps.len()
    );
    let times: std::collections::BTreeSet<i64> = stamps.iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), N as usize, "one timestamp per message");
    // The overview's message rate counts the whole burst, not what an event reader kept up with.
    let base = t.http_base();
    common::eventually(10, || {
        let (base, key) = (base.clone(), t.admin_key.clone());
        async move {
            let (_, v) = common::call(&base, &key, "GET", "/overview", None).await;
            let sum: u64 = v["messages_per_minute"]
                .as_array()?
                .iter()
                .filter_map(Value::as_u64)
                .sum();
            (sum == N as u64).then_some(())
        }
    })
    .await;

    // The device's own timestamps keep replace-on-same-ts.
    for v in [1, 2] {
        client
            .publish(
                "v1/devices/me/telemetry",
                QoS::AtLeastOnce,
                false,
                json!({"ts": before - 5000, "values": {"own": v}}).to_string(),
            )
            .await
            .expect("publish");
        while !matches!(next_v3(&mut rx).await, Ok(Packet::PubAck(_))) {}
    }
    let page = t
        .telemetry(
            id,
            &[
                ("keys", "own".into()),
                ("from", (before - 10_000).to_string()),
            ],
        )
        .await;
    let own = points(&page, "own");
    assert_eq!(own.len(), 1, "{page}");
    assert_eq!(own[0]["value"], 2);
}

/// Admission control (`limits.messages_in_flight`): devices offering more than the store takes
/// are not read until room frees. The messages taken in never exceed the cap, nobody is
/// disconnected for the overload, and every acknowledged message is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_waits_in_the_devices_and_loses_nothing() {
    const DEVICES: usize = 8;
    const EACH: i64 = 40;
    const CAP: usize = 4;
    let t = TestApp::start_with(|c| {
        c.limits.messages_in_flight = CAP as u32;
        // A slow store: each group commit waits, so the devices offer far more than it takes.
        c.store.group_commit_delay_ms = 20;
    })
    .await;
    let gate = t.app().services.in_flight.clone();
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (gate, watching) = (gate.clone(), watching.clone());
        tokio::spawn(async move {
            let (mut most, mut most_waiting) = (0, 0);
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(gate.in_flight());
                most_waiting = most_waiting.max(gate.waiting());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (most, most_waiting)
        })
    };

    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let (dev, token) = t.device(&format!("flood-{i}")).await;
        let mut o = t.v3_options(&format!("flood-{i}"), &token, "");
        o.set_inflight(EACH as u16);
        let (client, rx) = spawn_v3(o);
        devices.push((dev["id"].as_str().expect("id").to_string(), client, rx));
    }
    let mut runs = Vec::new();
    for (id, client, mut rx) in devices {
        runs.push(tokio::spawn(async move {
            assert!(matches!(next_v3(&mut rx).await, Ok(Packet::ConnAck(_))));
            publish_numbered(&client, EACH).await;
            let mut acked = 0;
            while acked < EACH {
                match next_v3(&mut rx).await {
                    Ok(Packet::PubAck(_)) => acked += 1,
                    Ok(_) => {}
                    Err(e) => {
                        panic!("device {id} lost its connection after {acked} PUBACKs: {e:?}")
                    }
                }
            }
            id
        }));
    }
    let mut ids = Vec::new();
    for r in runs {
        ids.push(r.await.expect("device run"));
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let (most, most_waiting) = watcher.await.expect("watcher");
    assert!(
        most <= CAP,
        "{most} messages in flight at once, over the cap of {CAP}"
    );
    // A connection whose message waits is not read: what waits is one message per device,
    // not the devices' whole in-flight windows (8 x 40 here).
    assert!(
        most_waiting > 0 && most_waiting <= DEVICES,
        "{most_waiting} messages waited at once for {DEVICES} devices"
    );

    let metrics = reqwest::get(format!("{}/metrics", t.http_base()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let pauses: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("corral_ingest_read_pauses_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the pause counter");
    assert!(
        pauses > 0.0,
        "the devices offered more than the cap, so reading paused"
    );

    let now = corral::model::now_ms();
    for id in ids {
        let page = t
            .telemetry(
                &id,
                &[
                    ("keys", "n".to_string()),
                    ("from", (now - 600_000).to_string()),
                    ("to", (now + 60_000).to_string()),
                    ("limit", "1000".into()),
                ],
            )
            .await;
        let mut values: Vec<i64> = points(&page, "n")
            .iter()
            .map(|p| p["value"].as_i64().expect("value"))
            .collect();
        values.sort_unstable();
        assert_eq!(values, (0..EACH).collect::<Vec<_>>(), "device {id}");
    }
}
