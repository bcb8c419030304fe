//! The audit log cannot be flushed by clients without credentials: unknown device tokens (HTTP
//! device API and MQTT), throttled sign-ins and refused provisioning write at most a burst of
//! records per client address and kind, so the trail of real actions stays in the bounded log.
//! Against the real binary, with the smallest log Corral allows.

use crate::common;

use std::time::{Duration, Instant};

use common::call;
use common::mqtt::{next_v3, spawn_v3};
use common::server::Server;
use common::tls_transport;
use serde_json::{Value, json};

async fn audit_kind(base: &str, key: &str, kind: &str) -> Vec<Value> {
    let (s, v) = call(
        base,
        key,
        "GET",
        &format!("/audit?kind={kind}&limit=1000"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_failures_leaves_the_real_actions_in_the_audit_log() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    // 100 records at most; the log is trimmed to that every 1024 records.
    let srv = Server::spawn_with(
        &dir.path().join("data"),
        &key,
        &[("CORRAL_AUDIT__MAX_ENTRIES", "100")],
    );
    let base = srv.base();
    let started = Instant::now();
    // A real action before the flood.
    let (s, before) = call(
        &base,
        &key,
        "POST",
        "/workspaces",
        Some(json!({"name": "before"})),
    )
    .await;
    assert_eq!(s, 201, "{before}");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    // 1,100 unknown device tokens over HTTP: enough, unbounded, to trim the log once.
    for i in 0..1100 {
        let r = http
            .post(format!("{base}/api/v1/unknownToken{i:08}/telemetry"))
            .header("content-type", "application/json")
            .body("{\"t\":1}")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
    }
    // Unknown tokens over MQTT, from the same address.
    for i in 0..30 {
        let mut o = rumqttc::MqttOptions::new(format!("c{i}"), "127.0.0.1", srv.mqtt_tls.port());
        o.set_credentials(format!("unknownMqttToken{i}"), "");
        o.set_transport(tls_transport(&srv.ca_pem()));
        let (_c, mut rx) = spawn_v3(o);
        assert!(
            next_v3(&mut rx).await.is_err(),
            "an unknown token was accepted"
        );
    }
    // Sign-ins past the throttle.
    for _ in 0..60 {
        let r = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"username": "nobody", "password": "wrong password"}))
            .send()
            .await
            .expect("send");
        assert!(matches!(r.status().as_u16(), 401 | 429));
    }
    // Provisioning with a key that does not exist.
    for _ in 0..60 {
        let r = http
            .post(format!("{base}/api/v1/provision"))
            .json(&json!({"provisionDeviceKey": "nope", "provisionDeviceSecret": "nope"}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }
    // A real action after the flood.
    let (s, after) = call(
        &base,
        &key,
        "POST",
        "/workspaces",
        Some(json!({"name": "after"})),
    )
    .await;
    assert_eq!(s, 201, "{after}");
    // Records of unauthenticated clients are written without a commit of their own: they show
    // up a moment later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A burst of 20 per address and kind, then one a second.
    let bound = 20 + started.elapsed().as_secs() as usize + 1;
    for kind in ["auth_failed", "login_throttled", "provision_failed"] {
        let n = audit_kind(&base, &key, kind).await.len();
        assert!(n >= 1 && n <= bound, "{n} {kind} records (at most {bound})");
    }
    let changes = audit_kind(&base, &key, "api_change").await;
    let details: Vec<&str> = changes
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert_eq!(
        details
            .iter()
            .filter(|d| d.starts_with("POST /api/v1/workspaces"))
            .count(),
        2,
        "both workspace creations are in the log: {details:?}"
    );
    let m = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains("corral_audit_suppressed_total{kind=\"auth_failed\"}"),
        "{m}"
    );
}
