//! Safe exposure by default: over plain HTTP the web UI, sign-in and the admin API are served
//! only to the clients `http.admin` names (this machine by default); others are redirected to
//! HTTPS (the UI) or refused with 403 `https_required` (the API), while the device API,
//! provisioning, health, metrics and the CA stay on plain HTTP. A session is bound to the
//! transport it was made over, and the Bearer scheme is case-insensitive.
//!
//! A client that is not on this machine is played two ways: with `http.admin = "none"`, which
//! treats every plain-HTTP client (127.0.0.1 included) as one; and, when this machine has a
//! non-loopback address, by connecting to that address for real with the default policy.

use crate::common;

use std::net::{IpAddr, SocketAddr};

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn https_client(t: &TestApp) -> (reqwest::Client, String) {
    let https = t.app().addrs.https.expect("https listener");
    let c = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(t.ca_pem.as_bytes()).expect("ca"))
        // The server certificate names localhost.
        .resolve(
            "localhost",
            SocketAddr::new([127, 0, 0, 1].into(), https.port()),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    (c, format!("https://localhost:{}", https.port()))
}

/// This machine's address on its default route, if it has one that is not loopback.
fn non_loopback_address() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route and the local address.
    s.connect("198.51.100.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Checks what a client that plain HTTP must not serve the admin surface to gets, at `base`.
async fn assert_sent_to_https(t: &TestApp, base: &str, host_for_https: &str) {
    let c = no_redirects();
    let https_port = t.app().addrs.https.expect("https").port();
    // The UI: a redirect to the same page on the HTTPS port of the same host name.
    for path in ["/", "/ui/app.js?v=2"] {
        let r = c.get(format!("{base}{path}")).send().await.expect("ui");
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT, "{path}");
        assert_eq!(
            r.headers()["location"],
            format!("https://{host_for_https}:{https_port}{path}").as_str(),
            "{path}"
        );
    }
    // The admin API, sign-in and the API document: 403 naming the HTTPS address, whatever the
    // credentials (a valid key included).
    for (method, path) in [
        ("GET", "/api/v1/workspaces"),
        ("POST", "/api/v1/auth/login"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/docs"),
    ] {
        let r = c
            .request(method.parse().expect("method"), format!("{base}{path}"))
            .bearer_auth(&t.admin_key)
            .json(&json!({"username": "a", "password": "b"}))
            .send()
            .await
            .expect("api");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["code"], "https_required", "{v}");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(
            msg.contains(&format!("https://{host_for_https}:{https_port}{path}")),
            "{msg}"
        );
    }
    // Devices, health, metrics and the CA stay on plain HTTP.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/ca.pem",
        "/api/v1/crl.pem",
    ] {
        let r = c.get(format!("{base}{path}")).send().await.expect("public");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let (_, token) = t.device(&format!("dev-{}", rand::random::<u32>())).await;
    let r = c
        .post(format!("{base}/api/v1/{token}/telemetry"))
        .json(&json!({"t": 1}))
        .send()
        .await
        .expect("device");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .post(format!("{base}/api/v1/provision"))
        .json(&json!({"provisionDeviceKey": "k", "provisionDeviceSecret": "s"}))
        .send()
        .await
        .expect("provision");
    assert_eq!(r.status(), StatusCode::OK);
    // HTTPS serves everything.
    let (h, https) = https_client(t);
    let r = h.get(format!("{https}/")).send().await.expect("https ui");
    assert_eq!(r.status(), StatusCode::OK);
    let r = h
        .get(format!("{https}/api/v1/workspaces"))
        .bearer_auth(&t.admin_key)
        .send()
        .await
        .expect("https api");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn with_admin_none_plain_http_sends_everyone_to_https() {
    let t = TestApp::start_with(|c| c.http.admin = corral::config::PlainHttpAdmin::None).await;
    let base = t.http_base();
    let c = no_redirects();
    let r = c.get(format!("{base}/")).send().await.expect("ui");
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        r.headers()["location"],
        format!(
            "https://127.0.0.1:{}/",
            t.app().addrs.https.expect("https").port()
        )
        .as_str()
    );
    let r = c
        .get(format!("{base}/api/v1/workspaces"))
        .bearer_auth(&t.admin_key)
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "https_required", "{v}");
    for path in ["/healthz", "/metrics", "/api/v1/ca.pem"] {
        let r = c.get(format!("{base}{path}")).send().await.expect("public");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // Without HTTPS there is nowhere to send them: 403 that says so, for the UI too.
    let t2 = TestApp::start_with(|c| {
        c.http.admin = corral::config::PlainHttpAdmin::None;
        c.https.enabled = false;
    })
    .await;
    let r = c
        .get(format!("{}/", t2.http_base()))
        .send()
        .await
        .expect("ui");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "https_required");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("HTTPS is disabled")),
        "{v}"
    );
}

#[tokio::test]
async fn by_default_only_this_machine_gets_the_admin_surface_over_plain_http() {
    let t = TestApp::start_with(|c| {
        c.http.listen = "0.0.0.0:0".into();
        c.https.listen = "0.0.0.0:0".into();
    })
    .await;
    let port = t.app().addrs.http.port();
    // From this machine (127.0.0.1, and 127.0.0.2: every loopback address is this machine):
    // served as before.
    for local in ["127.0.0.1", "127.0.0.2"] {
        let c = reqwest::Client::builder()
            .local_address(local.parse::<IpAddr>().expect("ip"))
            .build()
            .expect("client");
        let r = c
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect("ui");
        assert_eq!(r.status(), StatusCode::OK, "{local}");
        let r = c
            .get(format!("http://127.0.0.1:{port}/api/v1/workspaces"))
            .bearer_auth(&t.admin_key)
            .send()
            .await
            .expect("api");
        assert_eq!(r.status(), StatusCode::OK, "{local}");
    }
    // From another machine: this machine's own network address is not loopback, so a client
    // connecting to it is treated as remote.
    match non_loopback_address() {
        Some(ip) => {
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            assert_sent_to_https(&t, &format!("http://{host}:{port}"), &host).await;
        }
        None => eprintln!(
            "no non-loopback address on this machine: the remote client is covered by \
             with_admin_none_plain_http_sends_everyone_to_https only"
        ),
    }
}

#[tokio::test]
async fn a_session_is_accepted_only_over_the_transport_it_was_made_over() {
    let t = TestApp::start().await;
    let (s, u) = common::call(
        &t.http_base(),
        &t.admin_key,
        "POST",
        "/users",
        Some(json!({"username": "ana", "password": "a long enough secret", "admin": true})),
    )
    .await;
    assert_eq!(s, 201, "{u}");
    let (h, https) = https_client(&t);
    let http = no_redirects();
    let plain = t.http_base();
    let creds = json!({"username": "ana", "password": "a long enough secret"});
    let cookie_of = |r: &reqwest::Response| -> String {
        let c = r.headers()["set-cookie"].to_str().expect("cookie");
        c.split(';').next().expect("pair").to_string()
    };
    let r = h
        .post(format!("{https}/api/v1/auth/login"))
        .json(&creds)
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK);
    let over_tls = cookie_of(&r);
    assert!(over_tls.starts_with("__Host-corral_session="), "{over_tls}");
    let r = http
        .post(format!("{plain}/api/v1/auth/login"))
        .json(&creds)
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK);
    let over_plain = cookie_of(&r);
    assert!(over_plain.starts_with("corral_session="), "{over_plain}");
    let value = |c: &str| c.split_once('=').expect("pair").1.to_string();
    let me = |client: &reqwest::Client, base: &str, cookie: String| {
        client
            .get(format!("{base}/api/v1/auth/me"))
            .header("cookie", cookie)
            .send()
    };
    // Each works on its own transport...
    assert_eq!(
        me(&h, &https, over_tls.clone()).await.expect("me").status(),
        StatusCode::OK
    );
    assert_eq!(
        me(&http, &plain, over_plain.clone())
            .await
            .expect("me")
            .status(),
        StatusCode::OK
    );
    // ...and on the other one under either cookie name, it opens nothing.
    for name in ["__Host-corral_session", "corral_session"] {
        let r = me(&http, &plain, format!("{name}={}", value(&over_tls)))
            .await
            .expect("me");
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "HTTPS session over HTTP as {name}"
        );
        let r = me(&h, &https, format!("{name}={}", value(&over_plain)))
            .await
            .expect("me");
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "HTTP session over HTTPS as {name}"
        );
    }
    // Refused on the wrong transport does not end it on its own.
    assert_eq!(
        me(&h, &https, over_tls).await.expect("me").status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let t = TestApp::start().await;
    let c = reqwest::Client::new();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = c
            .get(format!("{}/api/v1/workspaces", t.http_base()))
            .header("authorization", format!("{scheme} {}", t.admin_key))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
    // Another scheme is not a key.
    let r = c
        .get(format!("{}/api/v1/workspaces", t.http_base()))
        .header("authorization", format!("Basic {}", t.admin_key))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
