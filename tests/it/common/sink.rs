//! A real HTTP webhook receiver for integration tests: an axum server on 127.0.0.1:0 that
//! verifies every request's HMAC-SHA256 signature the way docs/integrations.md tells receivers
//! to, records the events it accepts, and can be switched to answer 503 (down), 400 (refusing),
//! or 429 with `Retry-After` once (throttling) before it takes events again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const UP: u8 = 0;
pub const DOWN: u8 = 1;
pub const REFUSING: u8 = 2;
/// Answers the next request `429 Too Many Requests` with `Retry-After: 2`, then goes `UP`.
pub const THROTTLING: u8 = 3;

/// One accepted event with what came with it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub event: Value,
    /// `Idempotency-Key` of the request (single-event batches only).
    pub idempotency_header: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
pub struct SinkState {
    pub mode: AtomicU8,
    /// Signing secret to verify with; requests are checked once it is known.
    pub secret: Mutex<Option<String>>,
    pub received: Mutex<Vec<Received>>,
    pub requests: AtomicU64,
    pub bad_signatures: AtomicU64,
    /// Requests whose body carried more than one event.
    pub batches: AtomicU64,
    /// When each request arrived.
    pub arrivals: Mutex<Vec<std::time::Instant>>,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub state: Arc<SinkState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// HMAC-SHA256 (RFC 2104) from SHA-256, as a receiver in any language would compute it.
pub fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sink {
    pub async fn start() -> Sink {
        let state = Arc::new(SinkState::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sink");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sink { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_mode(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }

    pub fn set_secret(&self, secret: &str) {
        *self.state.secret.lock().expect("lock") = Some(secret.to_string());
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    pub fn bad_signatures(&self) -> u64 {
        self.state.bad_signatures.load(Ordering::SeqCst)
    }
}

async fn receive(State(s): State<Arc<SinkState>>, headers: HeaderMap, body: Bytes) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    s.arrivals
        .lock()
        .expect("lock")
        .push(std::time::Instant::now());
    accept(&s, &headers, &body)
}

fn accept(s: &SinkState, headers: &HeaderMap, body: &Bytes) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // Verify: signature over "timestamp.body" with the shared secret.
    let secret = s.secret.lock().expect("lock").clone();
    if let Some(secret) = secret {
        let ts = header("x-corral-timestamp").unwrap_or_default();
        let mut signed = ts.clone().into_bytes();
        signed.push(b'.');
        signed.extend_from_slice(body);
        let expected = format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), &signed));
        if header("x-corral-signature").as_deref() != Some(expected.as_str()) || ts.is_empty() {
            s.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    match s.mode.load(Ordering::SeqCst) {
        DOWN => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        REFUSING => return StatusCode::BAD_REQUEST.into_response(),
        THROTTLING => {
            s.mode.store(UP, Ordering::SeqCst);
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")]).into_response();
        }
        _ => {}
    }
    let Ok(Value::Array(events)) = serde_json::from_slice::<Value>(body) else {
        return StatusCode::UNPROCESSABLE_ENTITY.into_response();
    };
    if events.len() > 1 {
        s.batches.fetch_add(1, Ordering::SeqCst);
    }
    let idem = header("idempotency-key");
    let auth = header("authorization");
    let mut r = s.received.lock().expect("lock");
    for e in events {
        r.push(Received {
            id: e["id"].as_str().unwrap_or_default().to_string(),
            event: e,
            idempotency_header: idem.clone(),
            auth: auth.clone(),
        });
    }
    StatusCode::NO_CONTENT.into_response()
}
