//! The embedded web UI over real HTTP(S): the index and an asset with their cache headers and
//! ETag revalidation, a 404 for an unknown asset, the API left where it was, and the security
//! headers on every response (HSTS only on the HTTPS listener).

use crate::common;

use common::TestApp;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn assert_security_headers(h: &HeaderMap, what: &str) {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("<none>");
    assert_eq!(get("content-security-policy"), CSP, "{what}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
}

#[tokio::test]
async fn index_assets_and_404() {
    let t = TestApp::start().await;
    let c = reqwest::Client::new();
    let base = t.http_base();

    for path in ["/", "/index.html"] {
        let r = c.get(format!("{base}{path}")).send().await.expect("index");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        assert!(r.headers().contains_key("etag"));
        assert_security_headers(r.headers(), path);
        let body = r.text().await.expect("body");
        assert!(body.contains(r#"<script type="module" src="/ui/app.js">"#));
    }

    let r = c
        .get(format!("{base}/ui/app.js"))
        .send()
        .await
        .expect("asset");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    assert_security_headers(r.headers(), "asset");

    // Revalidation: the same ETag gives 304 without a body.
    let r = c
        .get(format!("{base}/ui/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("revalidate");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().expect("etag"), etag);
    assert!(r.bytes().await.expect("body").is_empty());

    let r = c
        .get(format!("{base}/ui/app.css"))
        .send()
        .await
        .expect("css");
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");

    for path in ["/ui/nope.js", "/ui/../Cargo.toml", "/nope"] {
        let r = c.get(format!("{base}{path}")).send().await.expect("404");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_security_headers(r.headers(), path);
    }
}

#[tokio::test]
async fn api_and_device_routes_are_untouched_and_carry_the_headers() {
    let t = TestApp::start().await;
    let c = reqwest::Client::new();
    let base = t.http_base();

    // The admin API still wants its key, and says so with the same headers.
    let r = c
        .get(format!("{base}/api/v1/workspaces"))
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_security_headers(r.headers(), "401");
    let r = c
        .get(format!("{base}/api/v1/workspaces"))
        .bearer_auth(&t.admin_key)
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), StatusCode::OK);
    assert_security_headers(r.headers(), "api");
    assert!(r.headers().get("strict-transport-security").is_none());

    // The device API under /api/v1/{token} is still the device API.
    let (_, token) = t.device("ui-dev").await;
    let r = c
        .post(format!("{base}/api/v1/{token}/telemetry"))
        .body(r#"{"t":1}"#)
        .send()
        .await
        .expect("device api");
    assert_eq!(r.status(), StatusCode::OK);
    assert_security_headers(r.headers(), "device api");

    for path in ["/healthz", "/api/v1/openapi.json", "/api/v1/ca.pem"] {
        let r = c.get(format!("{base}{path}")).send().await.expect("public");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_security_headers(r.headers(), path);
    }
}

#[tokio::test]
async fn hsts_only_over_https() {
    let t = TestApp::start().await;
    let https = t.app().addrs.https.expect("https listener");
    let c = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(t.ca_pem.as_bytes()).expect("ca"))
        // The server certificate names localhost; the listener is on 127.0.0.1 only.
        .resolve("localhost", https)
        .build()
        .expect("client");
    for path in ["/", "/ui/app.js", "/api/v1/workspaces", "/healthz"] {
        let r = c
            .get(format!("https://localhost:{}{path}", https.port()))
            .send()
            .await
            .expect("https");
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=63072000",
            "{path}"
        );
        assert_security_headers(r.headers(), path);
    }
    let r = reqwest::get(format!("{}/", t.http_base()))
        .await
        .expect("http");
    assert!(r.headers().get("strict-transport-security").is_none());
}
