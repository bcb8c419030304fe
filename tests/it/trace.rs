//! The connection trace against the real `App` over MQTT 5 and TLS: why a device cannot
//! connect shows up within a second, with the right reason, and never a secret. An unknown
//! token and an unregistered client certificate land with the server's unattributed refusals
//! (found by the token's hash prefix, the certificate's fingerprint, the address); a revoked
//! credential on its device's trace; so do connects, a takeover, and a refused publish.

use crate::common;

use common::TestApp;
use common::mqtt::{next_v5, spawn_v5, tls_with_cert};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use serde_json::{Value, json};

type V5Rx = tokio::sync::mpsc::UnboundedReceiver<Result<Packet, rumqttc::v5::ConnectionError>>;

async fn get(t: &TestApp, path: &str) -> Value {
    let (s, v) = common::call(&t.http_base(), &t.admin_key, "GET", path, None).await;
    assert_eq!(s, 200, "{path}: {v}");
    v
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Waits (1 s at most) for an event of `path` that `f` accepts.
async fn event(t: &TestApp, path: &str, f: impl Fn(&Value) -> bool) -> Value {
    common::eventually(1, || {
        let f = &f;
        async move {
            get(t, path)
                .await
                .as_array()
                .and_then(|a| a.iter().find(|e| f(e)).cloned())
        }
    })
    .await
}

/// Connects with `opts` and returns the CONNACK's outcome: Ok for success, else the error.
async fn connect(opts: rumqttc::v5::MqttOptions) -> (rumqttc::v5::AsyncClient, V5Rx, bool) {
    let (c, mut rx) = spawn_v5(opts);
    let ok = matches!(next_v5(&mut rx).await, Ok(Packet::ConnAck(a)) if a.code == rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success);
    (c, rx, ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_a_device_cannot_connect_shows_up_in_the_trace() {
    let t = TestApp::start().await;

    // An unknown token: unattributed, found by its hash prefix; the token itself nowhere.
    let unknown = "no-such-token-7f3a9c";
    let (_, _, ok) = connect(t.v5_options("probe-1", unknown, "")).await;
    assert!(!ok);
    let prefix = &sha256_hex(unknown)[..8];
    let e = event(
        &t,
        &format!("/connection-failures?token_sha256_prefix={prefix}"),
        |_| true,
    )
    .await;
    assert_eq!(e["event"], "refused");
    assert_eq!(e["client_id"], "probe-1");
    assert!(
        e["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{e}"
    );
    assert!(
        e["reason"].is_string() && e.get("device_id").is_none(),
        "{e}"
    );
    let all = get(&t, "/connection-failures").await.to_string();
    assert!(!all.contains(unknown), "the token is never shown");
    // By address too.
    let e = event(
        &t,
        "/connection-failures?peer=127.0.0.1&client_id=probe-1",
        |_| true,
    )
    .await;
    assert_eq!(e["token_sha256_prefix"].as_str().map(str::len), Some(12));

    // An unregistered client certificate (no username): its fingerprint and subject.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "stranger-cam");
    let cert = p.self_signed(&key).expect("cert");
    let mut o = t.v5_options("cam", "", "");
    o.set_credentials("", "");
    o.set_transport(tls_with_cert(&t.ca_pem, &cert.pem(), &key.serialize_pem()));
    let (_, _, ok) = connect(o).await;
    assert!(!ok);
    let e = event(&t, "/connection-failures?client_id=cam", |e| {
        e["cert_subject"].is_string()
    })
    .await;
    assert!(
        e["cert_subject"]
            .as_str()
            .is_some_and(|s| s.contains("stranger-cam")),
        "{e}"
    );
    let fp = e["cert_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    event(
        &t,
        &format!("/connection-failures?cert_fingerprint={}", &fp[..10]),
        |_| true,
    )
    .await;

    // A device connects, then a second session takes over: both on its trace.
    let (dev, token) = t.device("traced").await;
    let id = dev["id"].as_str().expect("id").to_string();
    let (c1, mut rx1, ok) = connect(t.v5_options("first", &token, "")).await;
    assert!(ok);
    event(&t, &format!("/devices/{id}/trace"), |e| {
        e["event"] == "connected" && e["client_id"] == "first"
    })
    .await;
    let (c2, mut rx2, ok) = connect(t.v5_options("second", &token, "")).await;
    assert!(ok);
    event(&t, &format!("/devices/{id}/trace"), |e| {
        e["event"] == "closed" && e["reason"] == "session_taken_over"
    })
    .await;
    let e = event(&t, &format!("/devices/{id}/trace"), |e| {
        e["client_id"] == "second"
    })
    .await;
    assert!(
        e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("took over 1")),
        "{e}"
    );
    drop((c1, &mut rx1));

    // A publish to another device's topic: refused, on the trace with its topic and size.
    c2.publish(
        "v1/devices/other/telemetry",
        QoS::AtLeastOnce,
        false,
        r#"{"a":1}"#,
    )
    .await
    .expect("publish");
    loop {
        match next_v5(&mut rx2).await {
            Ok(Packet::PubAck(a)) => {
                assert_eq!(a.reason, PubAckReason::NotAuthorized);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    let e = event(&t, &format!("/devices/{id}/trace"), |e| {
        e["event"] == "publish_refused"
    })
    .await;
    assert_eq!(e["reason"], "not_authorized");
    assert!(
        e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("v1/devices/other/telemetry (7 bytes)")),
        "{e}"
    );

    // Its credential revoked: the session is closed and the next attempt, refused, is on the
    // device's trace with its reason.
    let creds = get(&t, &format!("/devices/{id}/credentials")).await;
    let cred = creds[0]["id"].as_str().expect("credential").to_string();
    let (s, _) = common::call(
        &t.http_base(),
        &t.admin_key,
        "POST",
        &format!("/devices/{id}/credentials/{cred}/revoke"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200);
    event(&t, &format!("/devices/{id}/trace"), |e| {
        e["event"] == "closed" && e["reason"] == "credential_revoked"
    })
    .await;
    let (_, _, ok) = connect(t.v5_options("again", &token, "")).await;
    assert!(!ok);
    let e = event(&t, &format!("/devices/{id}/trace"), |e| {
        e["event"] == "refused" && e["client_id"] == "again"
    })
    .await;
    assert!(e["reason"].is_string() && e["detail"].is_string(), "{e}");
    assert!(
        !get(&t, &format!("/devices/{id}/trace"))
            .await
            .to_string()
            .contains(&token)
    );
}

/// Two clients with one identity keep throwing each other out: after five takeovers within a
/// minute the device has an open `session_takeovers` condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_fighting_over_one_identity_raise_a_condition() {
    let t = TestApp::start().await;
    let (dev, token) = t.device("cloned").await;
    let id = dev["id"].as_str().expect("id").to_string();
    let mut held = Vec::new();
    for i in 0..6 {
        let (c, rx, ok) = connect(t.v5_options(&format!("twin-{}", i % 2), &token, "")).await;
        assert!(ok);
        held.push((c, rx));
    }
    let c = common::eventually(5, || {
        let t = &t;
        let id = id.clone();
        async move {
            let all = get(t, &format!("/devices/{id}/conditions")).await;
            let list = all
                .as_array()
                .cloned()
                .or_else(|| all["items"].as_array().cloned())?;
            list.into_iter()
                .find(|c| c["name"] == "session_takeovers" && c["state"] != "closed")
        }
    })
    .await;
    assert_eq!(c["severity"], "major", "{c}");
}
