//! The HTTP listener's deadlines, connection caps and body limits, against the real binary with
//! raw TCP sockets: a partial header or a body sent at a byte a second is cut, connections over
//! the per-address cap are closed while other clients are served, the event stream outlives the
//! idle timeout, and oversized bodies get 413 on the REST API and the device API.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::call;
use common::server::Server;
use serde_json::{Value, json};

fn spawn(env: &[(&str, &str)]) -> (tempfile::TempDir, Server, String) {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn_with(&dir.path().join("data"), &key, env);
    (dir, srv, key)
}

/// Reads until the server closes the connection (or resets it), for at most `secs`; what was
/// read, and whether the server closed it.
fn read_until_closed(s: &mut TcpStream, secs: u64) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, false);
            }
            // A reset is a close too.
            Err(_) => return (got, true),
        }
    }
}

/// Sends `head` and `body` on a new connection (from a thread, so that a server that answers
/// before reading everything is still heard) and returns the response text.
fn raw_request(addr: SocketAddr, head: String, body: Vec<u8>) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&body);
    });
    let (got, _) = read_until_closed(&mut s, 20);
    let _ = writer.join();
    String::from_utf8_lossy(&got).into_owned()
}

async fn device_token(base: &str, key: &str) -> String {
    let (_, ws) = call(base, key, "POST", "/workspaces", Some(json!({"name": "w"}))).await;
    let (_, fleet) = call(
        base,
        key,
        "POST",
        "/fleets",
        Some(json!({"workspace_id": ws["id"], "name": "f"})),
    )
    .await;
    let (status, d) = call(
        base,
        key,
        "POST",
        "/devices",
        Some(json!({"fleet_id": fleet["id"], "name": "d"})),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    d["credentials"]["token"]
        .as_str()
        .expect("token")
        .to_string()
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_header_is_closed_by_the_header_deadline() {
    let (_d, srv, _key) = spawn(&[("CORRAL_HTTP__HEADER_TIMEOUT_SECS", "1")]);
    let addr = srv.http;
    tokio::task::spawn_blocking(move || {
        // Half a request, then silence.
        let mut half = TcpStream::connect(addr).expect("connect");
        half.write_all(b"GET /api/v1/workspaces HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        let (got, closed) = read_until_closed(&mut half, 10);
        assert!(closed && got.is_empty(), "the half request is still open");
        // Nothing at all.
        let mut silent = TcpStream::connect(addr).expect("connect");
        assert!(
            read_until_closed(&mut silent, 10).1,
            "a silent connection is still open"
        );
        // A header dripped a byte every 200 ms: the deadline counts from its first byte, so
        // the drip does not keep it alive (it would take 8 s to finish).
        let mut drip = TcpStream::connect(addr).expect("connect");
        let started = Instant::now();
        let mut cut = false;
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaa\r\n\r\n" {
            if drip.write_all(&[*b]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let (got, closed) = read_until_closed(&mut drip, 10);
        assert!(
            (cut || closed) && got.is_empty(),
            "a dripped header was served after {:?}",
            started.elapsed()
        );
    })
    .await
    .expect("probe");
    let m = metrics(&srv.base()).await;
    assert!(
        m.contains("corral_http_timeouts_total{reason=\"header\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_at_a_byte_a_second_is_cut_with_408() {
    let (_d, srv, key) = spawn(&[("CORRAL_HTTP__BODY_TIMEOUT_SECS", "2")]);
    let token = device_token(&srv.base(), &key).await;
    let addr = srv.http;
    let text = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(
            format!(
                "POST /api/v1/{token}/telemetry HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("head");
        let mut w = s.try_clone().expect("clone");
        // One byte a second, for longer than the test waits.
        std::thread::spawn(move || {
            for _ in 0..40 {
                if w.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let (got, closed) = read_until_closed(&mut s, 15);
        assert!(closed, "the slow body's connection is still open");
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .expect("probe");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    // The server is fine and counted it.
    let m = metrics(&srv.base()).await;
    assert!(
        m.contains("corral_http_timeouts_total{reason=\"body\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_are_closed_and_others_are_served() {
    let (_d, srv, _key) = spawn(&[
        ("CORRAL_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "4"),
        ("CORRAL_HTTP__HEADER_TIMEOUT_SECS", "60"),
    ]);
    let addr = srv.http;
    let held = tokio::task::spawn_blocking(move || {
        let mut held: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        // Connections are accepted in order: once this one is refused, the four are held.
        let mut fifth = TcpStream::connect(addr).expect("connect");
        let (got, closed) = read_until_closed(&mut fifth, 10);
        assert!(closed && got.is_empty(), "a fifth connection was kept");
        // The held ones are still open (a request on one of them is answered).
        held[0]
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 256];
        held[0]
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let n = held[0].read(&mut buf).expect("a held connection answers");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held
    })
    .await
    .expect("probe");
    // Another address is served meanwhile: 127.0.0.2 is loopback too, but another client.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let r = other
        .get(format!("{}/metrics", srv.base()))
        .send()
        .await
        .expect("another address is served");
    assert_eq!(r.status(), 200);
    let m = r.text().await.expect("text");
    assert!(
        m.contains("corral_http_connections_refused_total{reason=\"per_address\"} 1"),
        "{m}"
    );
    assert!(m.contains("corral_http_connections 5"), "{m}");
    // Closing the held connections frees their places.
    drop(held);
    common::eventually(10, || async {
        reqwest::get(format!("{}/healthz", srv.base()))
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_outlives_the_idle_timeout_but_idle_keep_alive_is_closed() {
    let (_d, srv, key) = spawn(&[
        ("CORRAL_HTTP__IDLE_TIMEOUT_SECS", "1"),
        ("CORRAL_HTTP__HEADER_TIMEOUT_SECS", "1"),
    ]);
    let token = device_token(&srv.base(), &key).await;
    let mut events = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/events?kinds=telemetry_stored",
            srv.base()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .expect("event stream");
    assert_eq!(events.status(), 200);
    // Well past both deadlines with nothing sent either way.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/{token}/telemetry", srv.base()))
        .header("content-type", "application/json")
        .body(r#"{"t":1}"#)
        .send()
        .await
        .expect("telemetry");
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("telemetry_stored") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("an event within 10 s")
            .expect("the stream is still open")
            .expect("not ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // A keep-alive connection with nothing in flight is closed after the idle timeout.
    let addr = srv.http;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let (got, closed) = read_until_closed(&mut s, 10);
        assert!(got.starts_with(b"HTTP/1.1 200"));
        assert!(closed, "an idle keep-alive connection is still open");
    })
    .await
    .expect("probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_on_the_rest_and_device_apis() {
    let (_d, srv, key) = spawn(&[]);
    let token = device_token(&srv.base(), &key).await;
    let addr = srv.http;
    let post = move |path: String, auth: Option<String>, len: usize| {
        // A JSON string of `len` bytes: well-formed, only too large.
        let mut body = b"{\"name\":\"".to_vec();
        body.resize(len - 2, b'a');
        body.extend_from_slice(b"\"}");
        let auth = auth
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        raw_request(addr, head, body)
    };
    let k = key.clone();
    let (rest, login, device, provision) = tokio::task::spawn_blocking(move || {
        (
            // Over the REST limit (2 MiB).
            post("/api/v1/workspaces".into(), Some(k), (2 << 20) + 1024),
            post("/api/v1/auth/login".into(), None, 70_000),
            // Over mqtt.max_packet_size (64 KiB), which MQTT also refuses.
            post(format!("/api/v1/{token}/telemetry"), None, 70_000),
            post("/api/v1/provision".into(), None, 70_000),
        )
    })
    .await
    .expect("requests");
    for (what, text) in [("REST", &rest), ("sign-in", &login)] {
        assert!(text.starts_with("HTTP/1.1 413"), "{what}: {text}");
        assert!(text.contains("\"payload_too_large\""), "{what}: {text}");
    }
    assert!(device.starts_with("HTTP/1.1 413"), "device API: {device}");
    assert!(device.contains("max_packet_size"), "{device}");
    assert!(
        provision.starts_with("HTTP/1.1 413"),
        "provision: {provision}"
    );
    // Below the limit is still fine.
    let (status, v): (u16, Value) = call(
        &srv.base(),
        &key,
        "POST",
        "/workspaces",
        Some(json!({"name": "a".repeat(50)})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_listener_has_the_same_deadline_and_cap() {
    let t = common::TestApp::start_with(|c| {
        c.http.header_timeout_secs = 1;
        c.http.max_connections_per_address = 2;
    })
    .await;
    let https = t.app().addrs.https.expect("https listener");
    let tls = std::sync::Arc::new(corral::pki::client_config_trusting(&t.ca_pem).expect("tls"));
    tokio::task::spawn_blocking(move || {
        let connect = || {
            let tcp = TcpStream::connect(https).expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let conn = rustls::ClientConnection::new(tls.clone(), name).expect("client");
            rustls::StreamOwned::new(conn, tcp)
        };
        // Half a request over TLS, then silence: closed by the header deadline.
        let mut half = connect();
        half.write_all(b"GET /api/v1/workspaces HTTP/1.1\r\nHost: x\r\n")
            .expect("handshake and write");
        half.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        match half.read(&mut buf) {
            // Closed: an EOF, with or without close_notify, or a reset.
            Ok(0) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "the half request over TLS is still open"
            ),
            Ok(n) => panic!("answered a half request: {:?}", &buf[..n]),
        }
        // Two held connections are the per-address cap: a third is closed before its handshake.
        let mut held: Vec<_> = (0..2).map(|_| connect()).collect();
        for h in &mut held {
            h.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("held");
        }
        let mut third = TcpStream::connect(https).expect("connect");
        assert!(
            read_until_closed(&mut third, 10).1,
            "a third connection was kept"
        );
    })
    .await
    .expect("probe");
}
