//! The HTTP transport: the REST API under `/api/v1` (axum on hyper), its OpenAPI document
//! generated from the handlers (utoipa; conventions in `openapi`) and the readable reference
//! rendered from it (`reference`, at `/api/docs`), health, readiness and metrics endpoints
//! with per-route HTTP metrics, API-key authentication, the embedded web UI with the security
//! headers of every response (`ui`), and the plain and TLS listeners with their connection caps
//! and deadlines (`conn`).

mod attributes;
pub mod auth;
mod authz;
pub mod backup;
mod campaigns;
mod conditions;
mod conn;
mod credentials;
mod dashboards;
mod device_http;
mod device_ops;
pub mod error;
mod events;
mod exposure;
mod integrations;
mod jobs;
mod json;
mod openapi;
mod overview;
mod packages;
mod reference;
mod registry;
mod telemetry;
pub mod ui;
mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;
pub use registry::{CreatedDevice, Page};
pub use telemetry::{LatestValues, TelemetryPage};

use crate::model::JobState;
use crate::services::Services;

pub type ApiResult<T> = Result<T, ApiError>;

/// Largest page a listing returns.
pub const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

pub fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_PAGE}"),
        )),
    }
}

/// Readiness, flipped by `app` once every listener runs and again at shutdown.
#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The authenticated `/api/v1` routes and their OpenAPI document.
fn api_v1() -> (Router<Arc<Services>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(registry::routes())
        .merge(device_ops::routes())
        .merge(overview::routes())
        .merge(credentials::routes())
        .merge(attributes::routes())
        .merge(jobs::routes())
        .merge(conditions::routes())
        .merge(events::routes())
        .merge(auth::routes())
        .merge(integrations::routes())
        .merge(backup::routes())
        .merge(telemetry::routes())
        .merge(workers::routes())
        .merge(packages::routes())
        .merge(campaigns::routes())
        .merge(dashboards::routes())
        .split_for_parts()
}

/// The OpenAPI document of every `/api/v1` route: the authenticated API, signing in, the
/// device API, provisioning and the CA files.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_v1().1;
    doc.merge(auth::public_routes().split_for_parts().1);
    doc.merge(device_http::routes(0).split_for_parts().1);
    openapi::apply_conventions(&mut doc);
    doc
}

/// Builds the whole HTTP surface without a socket, so tests can call it in-process. `https` is
/// the HTTPS listener's address, where plain HTTP sends the clients `http.admin` does not serve.
pub fn router(
    services: Arc<Services>,
    ready: Arc<Readiness>,
    https: Option<std::net::SocketAddr>,
) -> Router {
    let (api, _) = api_v1();
    let (sign_in, _) = auth::public_routes().split_for_parts();
    let (device_api, _) =
        device_http::routes(services.config.mqtt.max_packet_size as usize).split_for_parts();
    let doc = Arc::new(openapi());
    let exposure = Arc::new(exposure::Exposure::new(
        services.config.http.admin,
        https,
        services
            .config
            .pki
            .hosts
            .first()
            .map_or("localhost", String::as_str),
    ));
    let admin_only = || middleware::from_fn_with_state(exposure.clone(), exposure::admin_api);
    // Each handler checks its own authorization (`authz`); `enforce` refuses a success from
    // one that did not. Authentication wraps everything.
    let api = api
        .route_layer(middleware::from_fn(authz::enforce))
        .layer(middleware::from_fn_with_state(
            services.clone(),
            auth::authenticate,
        ))
        .layer(admin_only());
    let page = axum::body::Bytes::from(reference::render(&doc));
    let openapi = Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || async move { axum::Json(doc.as_ref().clone()) }),
        )
        .route(
            "/api/docs",
            get(move || async move { axum::response::Html(page.clone()) }),
        )
        .route(
            "/api/docs/style.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    reference::STYLE,
                )
            }),
        )
        .layer(admin_only());
    let public = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.get() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
        .route("/metrics", get(metrics))
        .route("/api/v1/ca.pem", get(ca_pem))
        .route("/api/v1/crl.pem", get(crl_pem))
        .route("/api/v1/ota/keys", get(ota_keys))
        // ThingsBoard's device provisioning: authenticated by the fleet's key and secret in
        // the body, not by an API key.
        .route(
            "/api/v1/provision",
            axum::routing::post(credentials::provision),
        );
    Router::new()
        .nest("/api/v1", api)
        .nest("/api/v1", device_api)
        .nest(
            "/api/v1",
            sign_in.with_state(services.clone()).layer(admin_only()),
        )
        .merge(public)
        .merge(openapi)
        .merge(ui::routes().layer(middleware::from_fn_with_state(
            exposure.clone(),
            exposure::web_ui,
        )))
        .route_layer(middleware::from_fn(note_route))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route") })
        .layer(middleware::from_fn_with_state(
            services.clone(),
            count_requests,
        ))
        .layer(middleware::from_fn_with_state(
            services.clone(),
            conn::body_deadline,
        ))
        .layer(middleware::from_fn_with_state(
            ui::content_security_policy(services.config.ui.tile_origin().as_deref()),
            ui::security_headers,
        ))
        .with_state(services)
}

async fn metrics(State(s): State<Arc<Services>>) -> Response {
    s.metrics
        .http_connections
        .set(s.http_connections.open() as i64);
    s.metrics
        .messages_in_flight
        .set(s.in_flight.in_flight() as i64);
    s.metrics.messages_waiting.set(s.in_flight.waiting() as i64);
    match s.conditions.open_by_severity().await {
        Ok(counts) => {
            for (sev, n) in counts {
                s.metrics
                    .conditions_open
                    .get_or_create(&crate::metrics::SeverityLabel {
                        severity: sev.as_str(),
                    })
                    .set(n as i64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count open conditions for the metrics"),
    }
    match s.jobs.unfinished_by_state().await {
        Ok(counts) => {
            for state in [JobState::Queued, JobState::Sent, JobState::Delivered] {
                s.metrics
                    .jobs_unfinished
                    .get_or_create(&crate::metrics::StateLabel {
                        state: state.as_str(),
                    })
                    .set(counts.get(&state).copied().unwrap_or(0) as i64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count unfinished jobs for the metrics"),
    }
    s.metrics.sample_process();
    match s.data.store_size().await {
        Ok(b) => {
            s.metrics.store_size_bytes.set(b as i64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the store's size for the metrics"),
    }
    let mut r = s.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn ca_pem(State(s): State<Arc<Services>>) -> Response {
    let mut r = s.pki.ca_pem().to_string().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    r
}

async fn ota_keys(
    State(s): State<Arc<Services>>,
) -> axum::Json<Vec<crate::ota::manifest::ManifestKeyView>> {
    axum::Json(s.packages.manifest_keys())
}

async fn crl_pem(State(s): State<Arc<Services>>) -> Response {
    let mut r = s.pki.crl_pem().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-crl"),
    );
    r
}

/// The route a request matched, carried on its response from inside the router to
/// `count_requests` outside it (where the route is not known yet).
#[derive(Clone)]
struct MatchedRoute(String);

async fn note_route(path: axum::extract::MatchedPath, req: Request, next: Next) -> Response {
    let route = MatchedRoute(path.as_str().to_string());
    let mut r = next.run(req).await;
    r.extensions_mut().insert(route);
    r
}

/// Counts every request, and its response by route, method and status with the time to the
/// response's head.
async fn count_requests(State(s): State<Arc<Services>>, req: Request, next: Next) -> Response {
    s.metrics.http_requests.inc();
    let started = std::time::Instant::now();
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let r = next.run(req).await;
    let route = r
        .extensions()
        .get::<MatchedRoute>()
        .map_or_else(|| "unmatched".to_string(), |m| m.0.clone());
    s.metrics
        .http_request_seconds
        .get_or_create(&crate::metrics::RouteLabel {
            route: route.clone(),
            method,
        })
        .observe(started.elapsed().as_secs_f64());
    s.metrics
        .http_responses
        .get_or_create(&crate::metrics::RouteStatusLabel {
            route,
            method,
            status: r.status().as_u16(),
        })
        .inc();
    r
}

/// Resolves when the watched flag becomes true (or its sender is gone).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    // Drop the borrow guard inside: it is not `Send`.
    let _ = rx.wait_for(|s| *s).await.map(drop);
}

/// Serves `router` on `listener` until `shutdown` turns true, then lets open requests finish.
/// With `tls`, every connection is a TLS connection (ALPN h2 and http/1.1) and every response
/// carries `Strict-Transport-Security`. Connections over the caps of `[http]` are closed at
/// once; the others get the deadlines of `conn`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    services: Arc<Services>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let router = match acceptor {
        Some(_) => router.layer(middleware::from_fn(ui::hsts)),
        None => router,
    };
    let deadlines = conn::Deadlines::of(&services.config.http);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = until_true(&mut shutdown) => break,
        };
        let permit = match services.http_connections.try_open(peer.ip()) {
            Ok(p) => p,
            Err(over) => {
                let reason = match over {
                    crate::limits::CapExceeded::Total => "total",
                    crate::limits::CapExceeded::PerKey => "per_address",
                };
                services
                    .metrics
                    .http_connections_refused
                    .get_or_create(&crate::metrics::ReasonLabel { reason })
                    .inc();
                tracing::debug!(%peer, reason, "HTTP connection over the cap closed");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let router = router.clone();
        let services = services.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(acc) = acceptor else {
                serve_connection(tcp, peer, false, router, deadlines, watcher, &services).await;
                return;
            };
            match tokio::time::timeout(deadlines.header, acc.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    serve_connection(stream, peer, true, router, deadlines, watcher, &services)
                        .await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    services
                        .metrics
                        .http_timeouts
                        .get_or_create(&crate::metrics::ReasonLabel {
                            reason: "tls_handshake",
                        })
                        .inc();
                }
            }
        });
    }
    // Bounded: clients holding idle keep-alive connections must not block shutdown.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
}

/// Serves one connection until it ends or one of its deadlines passes (then it is dropped).
async fn serve_connection<T>(
    io: T,
    peer: std::net::SocketAddr,
    tls: bool,
    router: Router,
    deadlines: conn::Deadlines,
    watcher: hyper_util::server::graceful::Watcher,
    services: &Services,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = conn::Conn::new();
    let io = TokioIo::new(conn::Tracked::new(io, conn.clone()));
    let requests = conn.clone();
    // The peer address and the transport reach handlers as request extensions (`ConnectInfo`,
    // as axum's own `serve` provides it): set per request, so that no per-connection copy of
    // the router is built.
    let svc = hyper::service::service_fn(move |mut req: axum::http::Request<Incoming>| {
        let in_flight = requests.begin(req.version());
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        req.extensions_mut().insert(auth::Tls(tls));
        let req = conn::with_body_deadline(req, deadlines.body);
        let router = router.clone();
        async move {
            let resp = match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, std::convert::Infallible>(
                resp.map(|b| axum::body::Body::new(conn::InFlightBody::new(b, in_flight))),
            )
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let serving = watcher.watch(builder.serve_connection_with_upgrades(io, svc).into_owned());
    tokio::select! {
        res = serving => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        expired = conn::watchdog(conn, deadlines) => {
            services
                .metrics
                .http_timeouts
                .get_or_create(&crate::metrics::ReasonLabel { reason: expired.as_str() })
                .inc();
            tracing::debug!(%peer, deadline = expired.as_str(), "HTTP connection closed by its deadline");
        }
    }
}
