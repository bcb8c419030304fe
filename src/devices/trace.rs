//! The connection trace: what happened to a device's connections, so that an operator can see
//! why one cannot connect. Each device keeps a bounded ring of its recent protocol events
//! (connected, refused and why, taken over, closed by the server and why, a publish refused),
//! and refusals that name no device yet (an unknown token, an unregistered certificate) go to a
//! server-wide ring, each with what identifies the attempt without a secret: the source
//! address, the client id, a prefix of the token's SHA-256, the certificate's fingerprint and
//! subject. Memory is bounded: `PER_DEVICE` events per device for at most `DEVICES` devices,
//! and `FAILURES` unattributed refusals. Kept in memory only: a trace is for the moment.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{DeviceId, Millis, now_ms};

/// Events kept per device.
pub const PER_DEVICE: usize = 32;
/// Devices with a ring at once; past it, the rings of devices quiet the longest go.
const DEVICES: usize = 100_000;
/// Refusals that name no device, kept server-wide.
pub const FAILURES: usize = 1000;
/// Takeovers of one device's session within `TAKEOVER_WINDOW_MS` that mean two clients share
/// its identity (each logging in throws the other out): a condition is opened.
pub const TAKEOVERS: usize = 5;
pub const TAKEOVER_WINDOW_MS: Millis = 60_000;

/// One protocol event of a connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TraceEvent {
    /// When, ms since the epoch.
    pub at: Millis,
    /// `connected`, `refused`, `taken_over`, `closed`, `disconnected`, `publish_refused`.
    pub event: String,
    /// The device, when the attempt names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// `mqtt`, `mqtt_plain`, `http`, `gateway`...
    pub transport: String,
    /// The source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The first 12 hex digits of the SHA-256 of the username (an access token is a
    /// username): enough to tell tokens apart, never the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256_prefix: Option<String>,
    /// The client certificate's SHA-256 fingerprint (hex) and subject, when one was presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
    /// A stable reason code (`bad_credentials`, `device_disabled`, `credential_revoked`,
    /// `session_taken_over`, `not_authorized`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What a person reads.
    pub detail: String,
}

impl TraceEvent {
    pub fn new(event: &str, transport: &str, detail: impl Into<String>) -> Self {
        Self {
            at: now_ms(),
            event: event.into(),
            transport: transport.into(),
            detail: detail.into(),
            ..Default::default()
        }
    }
}

/// Which unattributed refusals to return.
#[derive(Debug, Clone, Default)]
pub struct FailureFilter {
    pub peer: Option<String>,
    pub client_id: Option<String>,
    pub token_sha256_prefix: Option<String>,
    pub cert_fingerprint: Option<String>,
}

impl FailureFilter {
    fn matches(&self, e: &TraceEvent) -> bool {
        let is = |want: &Option<String>, have: &Option<String>, prefix: bool| {
            want.as_deref().is_none_or(|w| {
                have.as_deref().is_some_and(|h| {
                    if prefix {
                        h.starts_with(&w.to_ascii_lowercase()) || w.starts_with(h)
                    } else {
                        h == w || h.split(':').next() == Some(w)
                    }
                })
            })
        };
        is(&self.peer, &e.peer, false)
            && is(&self.client_id, &e.client_id, false)
            && is(&self.token_sha256_prefix, &e.token_sha256_prefix, true)
            && is(&self.cert_fingerprint, &e.cert_fingerprint, true)
    }
}

#[derive(Default)]
struct Inner {
    rings: HashMap<DeviceId, (Millis, VecDeque<TraceEvent>)>,
    failures: VecDeque<TraceEvent>,
    /// Recent takeover times per device (at most `TAKEOVERS`, pruned to the window).
    takeovers: HashMap<DeviceId, VecDeque<Millis>>,
}

/// Every device's recent connection events and the server's unattributed refusals.
#[derive(Default)]
pub struct ConnectionTrace {
    inner: Mutex<Inner>,
}

impl ConnectionTrace {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event: in its device's ring, or with the unattributed refusals.
    pub fn record(&self, e: TraceEvent) {
        let mut g = self.lock();
        match e.device_id {
            Some(d) => {
                if g.rings.len() >= DEVICES && !g.rings.contains_key(&d) {
                    // Forget the tenth of the rings quiet the longest (rarely: 100,000 devices).
                    let mut by_age: Vec<(Millis, DeviceId)> =
                        g.rings.iter().map(|(id, (t, _))| (*t, *id)).collect();
                    by_age.sort_unstable();
                    for (_, id) in by_age.into_iter().take(DEVICES / 10) {
                        g.rings.remove(&id);
                    }
                }
                let (last, ring) = g.rings.entry(d).or_default();
                *last = e.at;
                if ring.len() >= PER_DEVICE {
                    ring.pop_front();
                }
                ring.push_back(e);
            }
            None => {
                if g.failures.len() >= FAILURES {
                    g.failures.pop_front();
                }
                g.failures.push_back(e);
            }
        }
    }

    /// Notes that a new session of `device` took over an older one at `now`; true when that
    /// makes `TAKEOVERS` within the window (once per burst: the count starts again after).
    pub fn takeover(&self, device: DeviceId, now: Millis) -> bool {
        let mut g = self.lock();
        if g.takeovers.len() > DEVICES {
            g.takeovers
                .retain(|_, t| t.back().is_some_and(|l| now - l < TAKEOVER_WINDOW_MS));
        }
        let times = g.takeovers.entry(device).or_default();
        times.retain(|t| now - t < TAKEOVER_WINDOW_MS);
        times.push_back(now);
        if times.len() >= TAKEOVERS {
            times.clear();
            return true;
        }
        false
    }

    /// A device's recent events, newest first.
    pub fn of_device(&self, d: DeviceId) -> Vec<TraceEvent> {
        self.lock()
            .rings
            .get(&d)
            .map(|(_, r)| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// The unattributed refusals that match, newest first, at most `limit`.
    pub fn failures(&self, f: &FailureFilter, limit: usize) -> Vec<TraceEvent> {
        self.lock()
            .failures
            .iter()
            .rev()
            .filter(|e| f.matches(e))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// The first 12 hex digits of the SHA-256 of a username: how a trace names a token.
pub fn token_prefix(username: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(username.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_bounded_and_failures_filter_by_what_names_an_attempt() {
        let t = ConnectionTrace::default();
        let d = DeviceId::new();
        for i in 0..(PER_DEVICE + 5) {
            let mut e = TraceEvent::new("connected", "mqtt", format!("n{i}"));
            e.device_id = Some(d);
            t.record(e);
        }
        let ring = t.of_device(d);
        assert_eq!(ring.len(), PER_DEVICE);
        assert_eq!(
            ring[0].detail,
            format!("n{}", PER_DEVICE + 4),
            "newest first"
        );
        for i in 0..(FAILURES + 3) {
            let mut e = TraceEvent::new("refused", "mqtt", "unknown token");
            e.peer = Some(format!("10.0.0.{}:5000", i % 3));
            e.token_sha256_prefix = Some(token_prefix(&format!("tok-{i}")));
            t.record(e);
        }
        let all = t.failures(&FailureFilter::default(), usize::MAX);
        assert_eq!(all.len(), FAILURES);
        let by_ip = FailureFilter {
            peer: Some("10.0.0.1".into()),
            ..Default::default()
        };
        assert!(t.failures(&by_ip, 5).iter().all(|e| {
            e.peer
                .as_deref()
                .is_some_and(|p| p.starts_with("10.0.0.1:"))
        }));
        let by_token = FailureFilter {
            token_sha256_prefix: Some(
                token_prefix(&format!("tok-{}", FAILURES + 2))[..6].to_string(),
            ),
            ..Default::default()
        };
        assert_eq!(t.failures(&by_token, 10).len(), 1);
        assert_eq!(token_prefix("x").len(), 12);

        // Five takeovers within a minute, once; slower ones never.
        let fought = DeviceId::new();
        let hits: Vec<bool> = (0..7)
            .map(|i| t.takeover(fought, 1_000 + i * 1_000))
            .collect();
        assert_eq!(hits, [false, false, false, false, true, false, false]);
        let calm = DeviceId::new();
        assert!((0..10).all(|i| !t.takeover(calm, i * TAKEOVER_WINDOW_MS / 4)));
    }
}
