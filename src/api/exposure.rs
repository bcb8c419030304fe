//! What the plain HTTP listener serves to whom (`http.admin`): the web UI, sign-in and the admin
//! REST API carry passwords, API keys and session cookies, so over plain HTTP they are served
//! only to the clients the policy names (by default this machine's: a loopback address). Other
//! clients are sent to the HTTPS listener: the UI by a redirect to the same host name on the
//! HTTPS port, API calls by 403 `https_required` naming the HTTPS address. The device API,
//! provisioning, health, readiness, metrics and the CA certificate and CRL are not behind this.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::Uri;
use axum::http::uri::Authority;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::auth::Tls;
use crate::config::PlainHttpAdmin;

/// The policy and where the HTTPS listener is.
pub struct Exposure {
    policy: PlainHttpAdmin,
    /// The HTTPS listener's port, when it runs.
    https_port: Option<u16>,
    /// The host name of redirects when the request names none (HTTP/1.0).
    default_host: String,
}

impl Exposure {
    pub fn new(policy: PlainHttpAdmin, https: Option<SocketAddr>, default_host: &str) -> Self {
        Self {
            policy,
            https_port: https.map(|a| a.port()),
            default_host: default_host.to_string(),
        }
    }

    /// Whether this request may reach the admin surface: always over TLS; over plain HTTP as
    /// the policy says. A request that came over no socket (in-process) is not a network client.
    fn allows(&self, req: &Request) -> bool {
        if req.extensions().get::<Tls>().is_some_and(|t| t.0) {
            return true;
        }
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let Some(ip) = peer else {
            return true;
        };
        match self.policy {
            PlainHttpAdmin::Any => true,
            // `to_canonical`: an IPv4 client of a dual-stack socket is `::ffff:127.0.0.1`.
            PlainHttpAdmin::Loopback => ip.to_canonical().is_loopback(),
            PlainHttpAdmin::None => false,
        }
    }

    /// `https://HOST:PORT` for this request: the host name it asked for, on the HTTPS port.
    fn https_base(&self, req: &Request) -> Option<String> {
        let port = self.https_port?;
        let asked = req.uri().authority().cloned().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<Authority>().ok())
        });
        let host = asked
            .as_ref()
            .map_or(self.default_host.as_str(), Authority::host);
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Some(if port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{port}")
        })
    }

    /// The request's URI as the client sent it (a nested router sees only its own part).
    fn uri(req: &Request) -> &Uri {
        req.extensions()
            .get::<OriginalUri>()
            .map_or(req.uri(), |u| &u.0)
    }

    fn refusal(&self, req: &Request, what: &str) -> ApiError {
        let message = match self.https_base(req) {
            Some(base) => format!(
                "{what} is served over HTTPS: use {base}{} (over plain HTTP it is served only \
                 as http.admin allows)",
                Self::uri(req).path()
            ),
            None => format!(
                "{what} is not served to this client over plain HTTP, and HTTPS is disabled: \
                 enable [https], or set http.admin = \"any\" on a trusted network"
            ),
        };
        ApiError::new(StatusCode::FORBIDDEN, "https_required", message)
    }
}

/// A layer over the admin REST API, sign-in and the OpenAPI document: 403 `https_required` for
/// clients the policy does not serve over plain HTTP (before any credential is looked at).
pub async fn admin_api(State(e): State<Arc<Exposure>>, req: Request, next: Next) -> Response {
    if e.allows(&req) {
        next.run(req).await
    } else {
        e.refusal(&req, "the admin API").into_response()
    }
}

/// A layer over the web UI: a redirect to the same page on the HTTPS listener for clients the
/// policy does not serve over plain HTTP (403 `https_required` when there is no HTTPS).
pub async fn web_ui(State(e): State<Arc<Exposure>>, req: Request, next: Next) -> Response {
    if e.allows(&req) {
        return next.run(req).await;
    }
    let Some(base) = e.https_base(&req) else {
        return e.refusal(&req, "the web UI").into_response();
    };
    let target = format!(
        "{base}{}",
        Exposure::uri(&req)
            .path_and_query()
            .map_or("/", |p| p.as_str())
    );
    match HeaderValue::from_str(&target) {
        // 307, not 301/308: browsers would keep a permanent redirect after the policy changes.
        Ok(location) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => e.refusal(&req, "the web UI").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, tls: bool, host: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder().uri("/ui/app.js?v=1");
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        let mut r = b.body(axum::body::Body::empty()).expect("request");
        r.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().expect("addr")));
        r.extensions_mut().insert(Tls(tls));
        r
    }

    #[test]
    fn loopback_clients_and_tls_are_served_others_are_sent_to_https() {
        let https: SocketAddr = "0.0.0.0:8443".parse().expect("addr");
        let e = Exposure::new(PlainHttpAdmin::Loopback, Some(https), "localhost");
        for peer in [
            "127.0.0.1:5000",
            "127.0.0.2:5000",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert!(e.allows(&req(peer, false, None)), "{peer}");
        }
        for peer in ["192.0.2.7:5000", "[fd00::7]:5000", "[::ffff:10.0.0.1]:5000"] {
            assert!(!e.allows(&req(peer, false, None)), "{peer}");
            assert!(e.allows(&req(peer, true, None)), "{peer} over TLS");
        }
        let r = req("192.0.2.7:5000", false, Some("corral.lan:8080"));
        assert_eq!(e.https_base(&r).as_deref(), Some("https://corral.lan:8443"));
        let r = req("[fd00::7]:5000", false, Some("[fd00::1]:8080"));
        assert_eq!(e.https_base(&r).as_deref(), Some("https://[fd00::1]:8443"));
        let r = req("192.0.2.7:5000", false, Some("bad host"));
        assert_eq!(e.https_base(&r).as_deref(), Some("https://localhost:8443"));
        let any = Exposure::new(PlainHttpAdmin::Any, None, "localhost");
        assert!(any.allows(&req("192.0.2.7:5000", false, None)));
        let none = Exposure::new(PlainHttpAdmin::None, Some(https), "localhost");
        assert!(!none.allows(&req("127.0.0.1:5000", false, None)));
        assert!(none.allows(&req("127.0.0.1:5000", true, None)));
    }
}
