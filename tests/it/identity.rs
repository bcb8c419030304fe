//! Device identity over real TLS with real clients (rumqttc, MQTT 3.1.1 and 5): every way in
//! (access token, MQTT basic, Corral-issued certificates, CSRs with EC and RSA keys,
//! registered self-signed certificates and public keys, manufacturer CAs with just-in-time
//! registration) and their refusals (unknown, revoked, expired, wrong password, wrong CA);
//! revocation, disabling and rotation of a connected device; session takeover; isolation of
//! a device to its own topics; message and connection rate limits; the audit log.

use crate::common;

use std::time::Duration;

use common::mqtt::{next, next_v3, next_v5, spawn_v3, spawn_v5, tls_with_cert};
use common::{TestApp, eventually};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as V5Code, DisconnectReasonCode, Packet as V5Packet, PubAckReason,
    SubscribeReasonCode,
};
use rumqttc::{ConnectReturnCode, Packet, QoS};
use serde_json::{Value, json};

/// A workspace and fleet; returns the fleet id.
async fn fleet(t: &TestApp, name: &str) -> String {
    let ws: Value = t
        .api
        .post("/workspaces", &json!({"name": format!("ws-{name}")}))
        .await
        .expect("ws");
    let f: Value = t
        .api
        .post("/fleets", &json!({"workspace_id": ws["id"], "name": name}))
        .await
        .expect("fleet");
    f["id"].as_str().expect("id").to_string()
}

/// Creates a device with the given first credential; returns the whole response.
async fn device(t: &TestApp, fleet_id: &str, name: &str, creds: Value) -> Value {
    t.api
        .post(
            "/devices",
            &json!({"fleet_id": fleet_id, "name": name, "credentials": creds}),
        )
        .await
        .expect("device")
}

/// A request as the admin: (status, body), through the harness's one raw client.
async fn call(t: &TestApp, method: &str, path: &str, body: Value) -> (u16, Value) {
    common::call(&t.http_base(), &t.admin_key, method, path, Some(body)).await
}

fn self_signed(cn: &str, days: i64) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
    let cert = p.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

/// A manufacturer CA: (CA PEM, issuer).
fn manufacturer_ca(cn: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).expect("ca");
    let pem = cert.pem();
    (
        pem.clone(),
        Issuer::from_ca_cert_pem(&pem, key).expect("issuer"),
    )
}

fn signed_by(issuer: &Issuer<'static, KeyPair>, cn: &str) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// MQTT 5 options presenting a client certificate, no username.
fn cert_v5(t: &TestApp, client_id: &str, cert: &str, key: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", t.mqtt_port());
    o.set_transport(tls_with_cert(&t.ca_pem, cert, key));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Connects over MQTT 5 and returns the CONNACK code, or None when the connection failed
/// before a CONNACK (a TLS refusal).
async fn connack_v5(opts: rumqttc::v5::MqttOptions) -> Option<V5Code> {
    let (_c, mut rx) = spawn_v5(opts);
    match next(&mut rx).await {
        Ok(V5Packet::ConnAck(a)) => Some(a.code),
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => Some(code),
        Err(_) => None,
        Ok(other) => panic!("unexpected {other:?}"),
    }
}

async fn publish_ok_v5(c: &rumqttc::v5::AsyncClient, rx: &mut Rx5, payload: Value) {
    c.publish(
        "v1/devices/me/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        payload.to_string(),
    )
    .await
    .expect("publish");
    match next_v5(rx).await {
        Ok(V5Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Waits for the server's DISCONNECT and returns its reason code.
async fn server_disconnect(rx: &mut Rx5) -> DisconnectReasonCode {
    loop {
        match next_v5(rx).await {
            Ok(V5Packet::Disconnect(d)) => return d.reason_code,
            Err(rumqttc::v5::ConnectionError::MqttState(
                rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
            )) => return reason_code,
            Ok(_) => continue,
            Err(e) => panic!("closed without DISCONNECT: {e:?}"),
        }
    }
}

type Rx5 = tokio::sync::mpsc::UnboundedReceiver<Result<V5Packet, rumqttc::v5::ConnectionError>>;

async fn audit(t: &TestApp, query: &str) -> Vec<Value> {
    // Audit records are written by the store's writer thread; they are visible at once after
    // it ran, which `eventually` allows for.
    let (s, body) = call(t, "GET", &format!("/audit?{query}"), Value::Null).await;
    assert_eq!(s, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn certificates_from_corral_csrs_registered_and_refused() {
    let t = TestApp::start().await;
    let f = fleet(&t, "certs").await;

    // Corral's CA issues the key and certificate.
    let d = device(&t, &f, "issued-1", json!({"type": "issued_certificate"})).await;
    let b = &d["credentials"]["bundle"];
    let (cert, key) = (
        b["certificate_pem"].as_str().expect("cert"),
        b["private_key_pem"].as_str().expect("key"),
    );
    assert_eq!(b["ca_pem"].as_str(), Some(t.ca_pem.as_str()));
    assert_eq!(d["credentials"]["credential"]["type"], "certificate");
    assert!(d["credentials"].get("token").is_none());
    let (c, mut rx) = spawn_v5(cert_v5(&t, "", cert, key));
    assert!(
        matches!(next_v5(&mut rx).await, Ok(V5Packet::ConnAck(a)) if a.code == V5Code::Success)
    );
    publish_ok_v5(&c, &mut rx, json!({"t": 1})).await;
    let id = d["device"]["id"].as_str().expect("id");
    let latest: Value = t
        .api
        .get(&format!("/devices/{id}/telemetry/latest"), &[])
        .await
        .expect("latest");
    assert_eq!(latest["data"]["t"]["value"], 1, "{latest}");

    // A device that keeps its key sends a CSR (EC here).
    let d2 = device(&t, &f, "csr-ec", json!({"type": "access_token"})).await;
    let id2 = d2["device"]["id"].as_str().expect("id");
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, "anything");
    // A CA flag asked for in the CSR is not granted.
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = p.serialize_request(&key).expect("csr").pem().expect("pem");
    let (s, signed) = call(
        &t,
        "POST",
        &format!("/devices/{id2}/csr"),
        json!({"csr_pem": csr}),
    )
    .await;
    assert_eq!(s, 201, "{signed}");
    let cert_pem = signed["bundle"]["certificate_pem"].as_str().expect("cert");
    assert!(signed["bundle"].get("private_key_pem").is_none());
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateDer| d.to_vec())
        .expect("der");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("x509");
    assert!(!parsed.is_ca(), "a CSR must never yield a CA certificate");
    assert_eq!(
        parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok()),
        Some("csr-ec")
    );
    assert_eq!(
        connack_v5(cert_v5(&t, "", cert_pem, &key.serialize_pem())).await,
        Some(V5Code::Success)
    );

    // RSA CSRs too (openssl makes the key: ring cannot generate RSA keys).
    if let Some((csr, key)) = openssl_rsa_csr(t.dir.path()) {
        let (s, signed) = call(
            &t,
            "POST",
            &format!("/devices/{id2}/credentials"),
            json!({"type": "csr", "csr_pem": csr}),
        )
        .await;
        assert_eq!(s, 201, "{signed}");
        let cert = signed["bundle"]["certificate_pem"].as_str().expect("cert");
        assert_eq!(
            connack_v5(cert_v5(&t, "", cert, &key)).await,
            Some(V5Code::Success)
        );
    } else {
        eprintln!("openssl not found: RSA CSR not tested");
    }

    // A garbage CSR is a precise 422.
    let (s, e) = call(
        &t,
        "POST",
        &format!("/devices/{id2}/csr"),
        json!({"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----"}),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["error"]["code"], "invalid_field");

    // A registered self-signed certificate (a secure element's) works; an unregistered one
    // and one from an unknown CA are refused with 0x87.
    let (ss_cert, ss_key) = self_signed("se-1", 365);
    device(
        &t,
        &f,
        "se-1",
        json!({"type": "x509_certificate", "certificate_pem": ss_cert}),
    )
    .await;
    assert_eq!(
        connack_v5(cert_v5(&t, "", &ss_cert, &ss_key)).await,
        Some(V5Code::Success)
    );
    let (other_cert, other_key) = self_signed("nobody", 365);
    assert_eq!(
        connack_v5(cert_v5(&t, "", &other_cert, &other_key)).await,
        Some(V5Code::NotAuthorized)
    );
    let (_, foreign_ca) = manufacturer_ca("Unknown Vendor CA");
    let (fc, fk) = signed_by(&foreign_ca, "stranger");
    assert_eq!(
        connack_v5(cert_v5(&t, "", &fc, &fk)).await,
        Some(V5Code::NotAuthorized)
    );
    // The same certificate cannot belong to two devices.
    let (s, e) = call(
        &t,
        "POST",
        "/devices",
        json!({"fleet_id": f, "name": "se-dup", "credentials": {"type": "x509_certificate", "certificate_pem": ss_cert}}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("credential_taken"))
    );

    // A bare public key matches any certificate carrying it.
    let pk = KeyPair::generate().expect("key");
    device(
        &t,
        &f,
        "pk-1",
        json!({"type": "public_key", "public_key_pem": pk.public_key_pem()}),
    )
    .await;
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, "pk-1");
    let pk_cert = p.self_signed(&pk).expect("cert").pem();
    assert_eq!(
        connack_v5(cert_v5(&t, "", &pk_cert, &pk.serialize_pem())).await,
        Some(V5Code::Success)
    );

    // An expired certificate cannot be registered, and one that expires is refused.
    let (old, _) = self_signed("old", -1);
    let (s, e) = call(
        &t,
        "POST",
        "/devices",
        json!({"fleet_id": f, "name": "old", "credentials": {"type": "x509_certificate", "certificate_pem": old}}),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    let refused = audit(&t, "kind=auth_failed").await;
    assert!(
        refused.iter().any(|e| e["detail"] == "unknown certificate"),
        "{refused:?}"
    );
}

/// An RSA key and CSR made by the openssl command, if there is one.
fn openssl_rsa_csr(dir: &std::path::Path) -> Option<(String, String)> {
    let key = dir.join("rsa.key");
    let csr = dir.join("rsa.csr");
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=rsa-dev",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| {
        (
            std::fs::read_to_string(&csr).expect("csr"),
            std::fs::read_to_string(&key).expect("key"),
        )
    })
}

#[tokio::test]
async fn manufacturer_ca_devices_join_on_first_connect() {
    let t = TestApp::start().await;
    let f = fleet(&t, "vendor").await;
    let (ca_pem, ca) = manufacturer_ca("Acme Devices CA");
    let (s, reg) = call(
        &t,
        "POST",
        &format!("/fleets/{f}/cas"),
        json!({"certificate_pem": ca_pem, "name": "Acme"}),
    )
    .await;
    assert_eq!(s, 201, "{reg}");
    // A leaf certificate is not a CA.
    let (leaf, _) = self_signed("leaf", 30);
    let (s, e) = call(
        &t,
        "POST",
        &format!("/fleets/{f}/cas"),
        json!({"certificate_pem": leaf}),
    )
    .await;
    assert_eq!(s, 422, "{e}");

    let (cert, key) = signed_by(&ca, "sensor-42");
    assert_eq!(
        connack_v5(cert_v5(&t, "", &cert, &key)).await,
        Some(V5Code::Success)
    );
    let page: Value = t
        .api
        .get("/devices", &[("fleet_id", f.clone())])
        .await
        .expect("list");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["name"], "sensor-42");
    let id = items[0]["id"].as_str().expect("id").to_string();
    // The second connect finds the registered certificate instead of creating again.
    assert_eq!(
        connack_v5(cert_v5(&t, "", &cert, &key)).await,
        Some(V5Code::Success)
    );
    let creds: Value = t
        .api
        .get(&format!("/devices/{id}/credentials"), &[])
        .await
        .expect("creds");
    assert_eq!(creds.as_array().map(Vec::len), Some(1));
    assert_eq!(creds[0]["certificate"]["origin"], "manufacturer_ca");
    let joined = eventually(5, || async {
        let a = audit(&t, &format!("device_id={id}&kind=device_created_jit")).await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert!(
        joined[0]["detail"]
            .as_str()
            .expect("detail")
            .contains("Acme")
    );

    // Removing the CA stops new devices from joining; the fleet cannot be deleted while a
    // CA is registered on it.
    let ca_id = reg["id"].as_str().expect("ca id");
    let (s, e) = call(&t, "DELETE", &format!("/fleets/{f}"), Value::Null).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("not_empty")));
    let (s, _) = call(
        &t,
        "DELETE",
        &format!("/fleets/{f}/cas/{ca_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 204);
    let (cert2, key2) = signed_by(&ca, "sensor-43");
    assert_eq!(
        connack_v5(cert_v5(&t, "", &cert2, &key2)).await,
        Some(V5Code::NotAuthorized)
    );
}

#[tokio::test]
async fn mqtt_basic_credentials_follow_thingsboard_matching() {
    let t = TestApp::start().await;
    let f = fleet(&t, "basic").await;
    device(
        &t,
        &f,
        "b1",
        json!({"type": "mqtt_basic", "client_id": "c1", "username": "u1", "password": "p1"}),
    )
    .await;
    device(
        &t,
        &f,
        "b2",
        json!({"type": "mqtt_basic", "username": "u2", "password": "p2"}),
    )
    .await;
    device(
        &t,
        &f,
        "b3",
        json!({"type": "mqtt_basic", "client_id": "c3"}),
    )
    .await;

    let v5 = |cid: &str, user: Option<&str>, pass: Option<&str>| {
        let mut o = rumqttc::v5::MqttOptions::new(cid, "127.0.0.1", t.mqtt_port());
        if let Some(u) = user {
            o.set_credentials(u, pass.unwrap_or_default());
        }
        o.set_transport(t.tls());
        o
    };
    assert_eq!(
        connack_v5(v5("c1", Some("u1"), Some("p1"))).await,
        Some(V5Code::Success)
    );
    assert_eq!(
        connack_v5(v5("c1", Some("u1"), Some("wrong"))).await,
        Some(V5Code::NotAuthorized)
    );
    // Username-only credentials: any client id.
    assert_eq!(
        connack_v5(v5("any", Some("u2"), Some("p2"))).await,
        Some(V5Code::Success)
    );
    // Client-id-only credentials.
    assert_eq!(
        connack_v5(v5("c3", None, None)).await,
        Some(V5Code::Success)
    );
    assert_eq!(
        connack_v5(v5("c4", None, None)).await,
        Some(V5Code::ClientIdentifierNotValid)
    );
    // MQTT 3.1.1: a wrong password is "not authorized" (5).
    let (_c, mut rx) = spawn_v3(t.v3_options("c1", "u1", "nope"));
    match next(&mut rx).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("{other:?}"),
    }
    let failures = eventually(5, || async {
        let a = audit(&t, "kind=auth_failed").await;
        a.iter()
            .any(|e| e["detail"] == "wrong password")
            .then_some(a)
    })
    .await;
    // No secret appears in the audit log.
    let text = serde_json::to_string(&failures).expect("json");
    assert!(
        !text.contains("nope") && !text.contains("wrong\""),
        "{text}"
    );
    // Basic credentials need an identifier; "provision" is reserved.
    let d = device(&t, &f, "b5", json!({"type": "access_token"})).await;
    let id = d["device"]["id"].as_str().expect("id");
    for bad in [
        json!({"type": "mqtt_basic", "password": "x"}),
        json!({"type": "mqtt_basic", "username": "provision"}),
        json!({"type": "mqtt_basic", "username": "has space"}),
    ] {
        let (s, e) = call(&t, "POST", &format!("/devices/{id}/credentials"), bad).await;
        assert_eq!(s, 422, "{e}");
    }
}

#[tokio::test]
async fn revoked_disabled_and_rotated_credentials_end_their_sessions() {
    let t = TestApp::start().await;
    let f = fleet(&t, "life").await;

    // A connected device with a Corral certificate is revoked: DISCONNECT 0x87 within 5 s,
    // and the certificate no longer passes the TLS handshake (the CRL was reloaded).
    let d = device(&t, &f, "cert-dev", json!({"type": "issued_certificate"})).await;
    let id = d["device"]["id"].as_str().expect("id").to_string();
    let cred = d["credentials"]["credential"]["id"]
        .as_str()
        .expect("cred")
        .to_string();
    let b = &d["credentials"]["bundle"];
    let (cert, key) = (
        b["certificate_pem"].as_str().expect("cert").to_string(),
        b["private_key_pem"].as_str().expect("key").to_string(),
    );
    let (_c, mut rx) = spawn_v5(cert_v5(&t, "", &cert, &key));
    assert!(matches!(next_v5(&mut rx).await, Ok(V5Packet::ConnAck(_))));
    let (s, v) = call(
        &t,
        "POST",
        &format!("/devices/{id}/credentials/{cred}/revoke"),
        Value::Null,
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("revoked")));
    let started = std::time::Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(5), server_disconnect(&mut rx))
        .await
        .expect("DISCONNECT within 5 s");
    assert_eq!(reason, DisconnectReasonCode::NotAuthorized);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(connack_v5(cert_v5(&t, "", &cert, &key)).await, None);
    let crl = reqwest::get(format!("{}/api/v1/crl.pem", t.http_base()))
        .await
        .expect("crl")
        .text()
        .await
        .expect("text");
    assert!(crl.contains("BEGIN X509 CRL"), "{crl}");

    // A token device connected over 3.1.1 is disabled: closed, and refused afterwards.
    let d = device(&t, &f, "tok-dev", json!({"type": "access_token"})).await;
    let id = d["device"]["id"].as_str().expect("id").to_string();
    let token = d["credentials"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let (_c, mut rx) = spawn_v3(t.v3_options("", &token, ""));
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::ConnAck(_))));
    let (s, _) = call(
        &t,
        "PATCH",
        &format!("/devices/{id}"),
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(s, 200);
    match tokio::time::timeout(Duration::from_secs(5), next_v3(&mut rx)).await {
        Ok(Err(_)) => {}
        other => panic!("expected the connection to close within 5 s, got {other:?}"),
    }
    let mut o = t.v5_options("", &token, "");
    o.set_credentials(token.clone(), "");
    assert_eq!(connack_v5(o).await, Some(V5Code::NotAuthorized));
    call(
        &t,
        "PATCH",
        &format!("/devices/{id}"),
        json!({"enabled": true}),
    )
    .await;

    // Rotation: the old token keeps working during the grace period; rotating with no grace
    // ends it (and its session) at once.
    let creds: Value = t
        .api
        .get(&format!("/devices/{id}/credentials"), &[])
        .await
        .expect("creds");
    let old = creds[0]["id"].as_str().expect("id").to_string();
    let (s, rotated) = call(
        &t,
        "POST",
        &format!("/devices/{id}/credentials/{old}/rotate"),
        json!({"grace_secs": 3600}),
    )
    .await;
    assert_eq!(s, 201, "{rotated}");
    let new_token = rotated["token"].as_str().expect("token").to_string();
    let new_id = rotated["credential"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let v5 = |tok: &str| {
        let mut o = rumqttc::v5::MqttOptions::new("", "127.0.0.1", t.mqtt_port());
        o.set_credentials(tok, "");
        o.set_transport(t.tls());
        o
    };
    assert_eq!(connack_v5(v5(&token)).await, Some(V5Code::Success));
    assert_eq!(connack_v5(v5(&new_token)).await, Some(V5Code::Success));
    let (s, _) = call(
        &t,
        "POST",
        &format!("/devices/{id}/credentials/{new_id}/rotate"),
        json!({"grace_secs": 0}),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(
        connack_v5(v5(&new_token)).await,
        Some(V5Code::NotAuthorized)
    );
    let list: Value = t
        .api
        .get(&format!("/devices/{id}/credentials"), &[])
        .await
        .expect("creds");
    let statuses: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["expiring", "expired", "active"], "{list}");
    // Basic credentials are rotated by adding and revoking: a precise 422.
    let (s, e) = call(
        &t,
        "POST",
        &format!("/devices/{id}/credentials"),
        json!({"type": "mqtt_basic", "username": "life-u"}),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    let basic = e["credential"]["id"].as_str().expect("id");
    let (s, e) = call(
        &t,
        "POST",
        &format!("/devices/{id}/credentials/{basic}/rotate"),
        Value::Null,
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("unsupported")));

    let kinds: Vec<String> = audit(&t, &format!("device_id={id}"))
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    for k in [
        "credential_issued",
        "device_disabled",
        "credential_rotated",
        "auth_failed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn one_session_per_device_and_only_its_own_topics() {
    let t = TestApp::start().await;
    let f = fleet(&t, "iso").await;
    let d = device(&t, &f, "iso-1", json!({"type": "access_token"})).await;
    let token = d["credentials"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let id = d["device"]["id"].as_str().expect("id").to_string();

    let (c1, mut rx1) = spawn_v5(t.v5_options("", &token, ""));
    assert!(matches!(next_v5(&mut rx1).await, Ok(V5Packet::ConnAck(_))));
    // Another device's topic, the gateway API and wildcards: PUBACK 0x87, nothing stored.
    for topic in [
        "v1/devices/other/telemetry",
        "v1/gateway/telemetry",
        "/provision/request",
    ] {
        c1.publish(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"x":1}"#,
        )
        .await
        .expect("publish");
        match next_v5(&mut rx1).await {
            Ok(V5Packet::PubAck(a)) => assert_eq!(a.reason, PubAckReason::NotAuthorized, "{topic}"),
            other => panic!("{topic}: {other:?}"),
        }
    }
    c1.subscribe(
        "v1/devices/other/attributes",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    )
    .await
    .expect("sub");
    match next_v5(&mut rx1).await {
        Ok(V5Packet::SubAck(a)) => {
            assert_eq!(a.return_codes, [SubscribeReasonCode::NotAuthorized])
        }
        other => panic!("{other:?}"),
    }
    let stored: Value = t
        .api
        .get(&format!("/devices/{id}/telemetry/latest"), &[])
        .await
        .expect("latest");
    assert!(
        stored["data"].as_object().is_none_or(|m| m.is_empty()),
        "{stored}"
    );

    // getSessionLimits is answered on the RPC response topic (the SDK sizes itself by it).
    c1.subscribe(
        "v1/devices/me/rpc/response/+",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    )
    .await
    .expect("sub");
    assert!(matches!(next_v5(&mut rx1).await, Ok(V5Packet::SubAck(_))));
    c1.publish(
        "v1/devices/me/rpc/request/1",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        r#"{"method":"getSessionLimits","params":{"timeout":5000}}"#,
    )
    .await
    .expect("publish");
    let limits = loop {
        match next_v5(&mut rx1).await {
            Ok(V5Packet::Publish(p)) => break p,
            Ok(V5Packet::PubAck(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(&limits.topic[..], b"v1/devices/me/rpc/response/1");
    let body: Value = serde_json::from_slice(&limits.payload).expect("json");
    assert_eq!(body["maxPayloadSize"], 65536);
    assert!(body["rateLimits"]["messages"].is_string(), "{body}");

    // A second connection as the same device takes over: the first gets DISCONNECT 0x8E.
    let (_c2, mut rx2) = spawn_v5(t.v5_options("", &token, ""));
    assert!(matches!(next_v5(&mut rx2).await, Ok(V5Packet::ConnAck(_))));
    assert_eq!(
        server_disconnect(&mut rx1).await,
        DisconnectReasonCode::SessionTakenOver
    );

    // MQTT 3.1.1 has no negative PUBACK: reaching for another device's topic ends the session.
    let (c3, mut rx3) = spawn_v3(t.v3_options("", &token, ""));
    assert!(matches!(next_v3(&mut rx3).await, Ok(Packet::ConnAck(_))));
    c3.publish(
        "v1/devices/other/telemetry",
        QoS::AtLeastOnce,
        false,
        r#"{"x":1}"#,
    )
    .await
    .expect("publish");
    assert!(next_v3(&mut rx3).await.is_err());
}

#[tokio::test]
async fn message_and_connection_rates_are_limited_without_losing_acknowledged_data() {
    let t = TestApp::start_with(|c| {
        c.limits.device_messages_per_sec = 5;
        c.limits.device_message_burst = 5;
        c.limits.ip_connects_per_sec = 1;
        c.limits.ip_connect_burst = 3;
    })
    .await;
    let f = fleet(&t, "rate").await;
    let d = device(&t, &f, "fast", json!({"type": "access_token"})).await;
    let token = d["credentials"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let id = d["device"]["id"].as_str().expect("id").to_string();
    let (c, mut rx) = spawn_v5(t.v5_options("", &token, ""));
    assert!(matches!(next_v5(&mut rx).await, Ok(V5Packet::ConnAck(_))));
    for i in 0..20 {
        c.publish(
            "v1/devices/me/telemetry",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            json!({"ts": 1_700_000_000_000i64 + i, "values": {"n": i}}).to_string(),
        )
        .await
        .expect("publish");
    }
    let (mut ok, mut over) = (0, 0);
    while ok + over < 20 {
        match next_v5(&mut rx).await {
            Ok(V5Packet::PubAck(a)) if a.reason == PubAckReason::Success => ok += 1,
            Ok(V5Packet::PubAck(a)) if a.reason == PubAckReason::QuotaExceeded => over += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(over > 0 && ok >= 5, "ok {ok}, over {over}");
    // Every acknowledged message is stored; nothing refused is.
    let page = t
        .telemetry(
            &id,
            &[
                ("from", "1700000000000".into()),
                ("to", "1700000000100".into()),
                ("limit", "100".into()),
            ],
        )
        .await;
    assert_eq!(
        page["data"]["n"].as_array().map(Vec::len),
        Some(ok),
        "{page}"
    );

    // The HTTP device API has the same per-device rate: 429 over it, and only what got a 200
    // is stored.
    let http = reqwest::Client::new();
    let (mut ok_http, mut limited) = (0usize, 0usize);
    for i in 0..20i64 {
        let r = http
            .post(format!("{}/api/v1/{token}/telemetry", t.http_base()))
            .json(&json!({"ts": 1_700_000_001_000i64 + i, "values": {"h": i}}))
            .send()
            .await
            .expect("post");
        match r.status().as_u16() {
            200 => ok_http += 1,
            429 => {
                assert_eq!(
                    r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
                    Some("1")
                );
                limited += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(
        limited > 0 && ok_http >= 5,
        "ok {ok_http}, limited {limited}"
    );
    let page = t
        .telemetry(
            &id,
            &[
                ("from", "1700000001000".into()),
                ("to", "1700000001100".into()),
                ("keys", "h".into()),
            ],
        )
        .await;
    assert_eq!(
        page["data"]["h"].as_array().map(Vec::len),
        Some(ok_http),
        "{page}"
    );

    // Connection rate per address: the burst (3, one used above) then 0x9F.
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(connack_v5(t.v5_options("", &token, "")).await);
    }
    assert_eq!(
        codes,
        [
            Some(V5Code::Success),
            Some(V5Code::Success),
            Some(V5Code::ConnectionRateExceeded)
        ]
    );
}

#[tokio::test]
async fn http_provisioning_answers_in_thingsboard_shapes() {
    let t = TestApp::start().await;
    let f = fleet(&t, "prov").await;
    let (s, p) = call(
        &t,
        "PUT",
        &format!("/fleets/{f}/provisioning"),
        json!({"strategy": "allow_create_new_devices"}),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    let (key, secret) = (
        p["key"].as_str().expect("key"),
        p["secret"].as_str().expect("secret"),
    );
    let (s, view) = call(&t, "GET", &format!("/fleets/{f}/provisioning"), Value::Null).await;
    assert_eq!(s, 200);
    assert!(
        view.get("secret").is_none() && view.get("secret_hash").is_none(),
        "{view}"
    );

    let provision = |body: Value| {
        let url = format!("{}/api/v1/provision", t.http_base());
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("json")
        }
    };
    let ok = provision(
        json!({"deviceName": "p-1", "provisionDeviceKey": key, "provisionDeviceSecret": secret}),
    )
    .await;
    assert_eq!(ok["status"], "SUCCESS", "{ok}");
    assert_eq!(ok["credentialsType"], "ACCESS_TOKEN");
    let token = ok["credentialsValue"].as_str().expect("token");
    assert_eq!(
        connack_v5({
            let mut o = rumqttc::v5::MqttOptions::new("", "127.0.0.1", t.mqtt_port());
            o.set_credentials(token, "");
            o.set_transport(t.tls());
            o
        })
        .await,
        Some(V5Code::Success)
    );
    let dup = provision(
        json!({"deviceName": "p-1", "provisionDeviceKey": key, "provisionDeviceSecret": secret}),
    )
    .await;
    assert_eq!(
        dup,
        json!({"status": "FAILURE", "errorMsg": "Failed to provision device!"})
    );
    let bad = provision(json!({"deviceName": "p-2", "provisionDeviceKey": key, "provisionDeviceSecret": "wrong-secret"})).await;
    assert_eq!(
        bad,
        json!({"status": "NOT_FOUND", "errorMsg": "Provision data was not found!"})
    );
    let basic = provision(
        json!({"deviceName": "p-3", "provisionDeviceKey": key, "provisionDeviceSecret": secret,
        "credentialsType": "MQTT_BASIC", "clientId": "pc", "username": "pu", "password": "pp"}),
    )
    .await;
    assert_eq!(
        basic["credentialsValue"],
        json!({"clientId": "pc", "userName": "pu", "password": "pp"})
    );
    let failed = eventually(5, || async {
        let a = audit(&t, "kind=provision_failed").await;
        (a.len() >= 2).then_some(a)
    })
    .await;
    assert!(failed.iter().all(|e| e["peer"].is_string()), "{failed:?}");
}

#[tokio::test]
async fn client_id_policy_binds_the_client_id_to_the_certificate() {
    let t = TestApp::start_with(|c| {
        c.mqtt.client_id_policy = corral::config::ClientIdPolicy::CertificateCn;
    })
    .await;
    let f = fleet(&t, "policy").await;
    let d = device(&t, &f, "pol-1", json!({"type": "issued_certificate"})).await;
    let b = &d["credentials"]["bundle"];
    let (cert, key) = (
        b["certificate_pem"].as_str().expect("cert"),
        b["private_key_pem"].as_str().expect("key"),
    );
    // Issued certificates carry the device name as their common name.
    assert_eq!(
        connack_v5(cert_v5(&t, "pol-1", cert, key)).await,
        Some(V5Code::Success)
    );
    assert_eq!(
        connack_v5(cert_v5(&t, "someone-else", cert, key)).await,
        Some(V5Code::ClientIdentifierNotValid)
    );
    // Token logins have no certificate to bind to.
    let d = device(&t, &f, "pol-2", json!({"type": "access_token"})).await;
    let token = d["credentials"]["token"].as_str().expect("token");
    assert_eq!(
        connack_v5(t.v5_options("anything", token, "")).await,
        Some(V5Code::Success)
    );
    let refused = eventually(5, || async {
        let a = audit(&t, "kind=auth_failed").await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(
        refused[0]["detail"],
        "client id does not match the device identity"
    );
}

#[tokio::test]
async fn a_registered_certificate_stops_working_when_it_expires() {
    let t = TestApp::start().await;
    let f = fleet(&t, "expiry").await;
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, "short-lived");
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::seconds(3);
    let cert = p.self_signed(&key).expect("cert").pem();
    device(
        &t,
        &f,
        "short-lived",
        json!({"type": "x509_certificate", "certificate_pem": cert}),
    )
    .await;
    assert_eq!(
        connack_v5(cert_v5(&t, "", &cert, &key.serialize_pem())).await,
        Some(V5Code::Success)
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Refused in the handshake or at CONNECT, never accepted.
    let code = connack_v5(cert_v5(&t, "", &cert, &key.serialize_pem())).await;
    assert!(
        matches!(code, None | Some(V5Code::NotAuthorized)),
        "{code:?}"
    );
}
