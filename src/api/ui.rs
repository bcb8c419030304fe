//! The embedded admin web UI (`web-ui/` in the repository, compiled into the binary with rust-embed)
//! served at `/` and `/ui/...`, and the security headers every HTTP response carries (UI and API
//! alike). The UI is a hash-routed single page: `index.html` is the only document, so app routes
//! never reach the server. The API it calls lives under `/api/v1` and is not touched here.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

use super::ApiError;

/// The UI's files: plain HTML, JS modules and CSS, no build step.
#[derive(RustEmbed)]
#[folder = "web-ui/"]
struct Assets;

/// Scripts, styles, connections and images only from this origin; no framing, no inline code.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// The policy every response carries: `CONTENT_SECURITY_POLICY`, with the map tile server's
/// origin (`[ui] tile_url`, checked at start) allowed as an image source.
pub fn content_security_policy(tile_origin: Option<&str>) -> HeaderValue {
    let policy = match tile_origin {
        None => CONTENT_SECURITY_POLICY.to_string(),
        Some(o) => CONTENT_SECURITY_POLICY
            .replace("img-src 'self' data:", &format!("img-src 'self' data: {o}")),
    };
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static(CONTENT_SECURITY_POLICY))
}

/// Two years, the preload list's minimum; sent only on the HTTPS listener (RFC 6797 §7.2: a
/// browser ignores it over plain HTTP anyway, and a plain-HTTP LAN deployment must not be pinned).
pub const STRICT_TRANSPORT_SECURITY: &str = "max-age=63072000";

/// Routes of the UI, merged into the public (unauthenticated) part of the router: the assets
/// are the same for everyone, and the data they show comes from the authenticated API.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers, "no-cache")
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // `no-cache` still lets the browser keep the file: it revalidates with the ETag and gets a
    // 304, so an upgraded binary is picked up at once while a reload costs no body.
    serve(&path, &headers, "no-cache")
}

fn serve(path: &str, headers: &HeaderMap, cache: &'static str) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route").into_response();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, cache);
    if matches {
        builder = builder.status(StatusCode::NOT_MODIFIED);
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::NOT_MODIFIED.into_response());
    }
    let mime = file.metadata.mimetype();
    let mime = if mime.starts_with("text/") || mime.ends_with("javascript") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    builder
        .header(header::CONTENT_TYPE, mime)
        .body(Body::from(file.data.into_owned()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Adds the security headers to every response (a layer over the whole router).
pub async fn security_headers(
    axum::extract::State(csp): axum::extract::State<HeaderValue>,
    req: Request,
    next: Next,
) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// Adds `Strict-Transport-Security`: layered only on the HTTPS listener's router.
pub async fn hsts(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    r.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static(STRICT_TRANSPORT_SECURITY),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_app_modules_are_embedded() {
        let index = Assets::get("index.html").expect("index.html");
        let text = String::from_utf8_lossy(&index.data);
        // No inline script or style: the CSP forbids them.
        assert!(!text.contains("<style"));
        assert!(!text.contains("style="));
        for tag in text.split("<script").skip(1) {
            assert!(tag.contains("src="), "inline script in index.html");
        }
        assert!(Assets::get("app.js").is_some());
        assert!(Assets::get("app.css").is_some());
    }
}
