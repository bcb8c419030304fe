//! The deadlines of one HTTP connection (plain or TLS, HTTP/1.1 or HTTP/2): a request's header
//! must arrive within `http.header_timeout_secs` of its first byte, its body within
//! `http.body_timeout_secs` of the header, and a connection with no request in flight and
//! nothing received for `http.idle_timeout_secs` is closed. A response still being sent (the
//! event stream, a long poll) is a request in flight, so it is never idle.
//!
//! hyper's own `header_read_timeout` is not used: it restarts when a response ends, so it would
//! also close every idle keep-alive connection after the (short) header deadline, and it does
//! not cover HTTP/2. Here the connection's reads and its requests are tracked instead, and a
//! watchdog drops the connection when a deadline passes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::ApiError;
use crate::config::HttpConfig;

/// The three deadlines, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
}

impl Deadlines {
    pub fn of(c: &HttpConfig) -> Self {
        Self {
            header: Duration::from_secs(c.header_timeout_secs),
            body: Duration::from_secs(c.body_timeout_secs),
            idle: Duration::from_secs(c.idle_timeout_secs),
        }
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Header,
    Idle,
}

impl Expired {
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "idle",
        }
    }
}

struct Activity {
    /// Requests whose response has not been sent completely.
    in_flight: u32,
    /// When the first byte of a request header arrived while no request was in flight; None
    /// once the header is complete (HTTP/1.1 only: HTTP/2 frames of an idle connection, pings
    /// and settings, are not request headers).
    head_since: Option<Instant>,
    /// The last byte received, or the end of the last response.
    last: Instant,
    h2: bool,
}

/// What one connection is doing, shared by its reads, its requests and its watchdog.
pub struct Conn {
    activity: Mutex<Activity>,
    /// Wakes the watchdog when a header starts, so it looks at the header deadline.
    head_started: Notify,
}

impl Conn {
    /// A new connection: its first request header is due within the header deadline.
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            activity: Mutex::new(Activity {
                in_flight: 0,
                head_since: Some(now),
                last: now,
                h2: false,
            }),
            head_started: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_read(&self) {
        let now = Instant::now();
        let mut a = self.lock();
        a.last = now;
        if a.in_flight == 0 && !a.h2 && a.head_since.is_none() {
            a.head_since = Some(now);
            drop(a);
            self.head_started.notify_one();
        }
    }

    /// A request's header is complete: it is in flight until its response has been sent
    /// (until the returned guard is dropped).
    pub fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        let mut a = self.lock();
        a.in_flight += 1;
        a.head_since = None;
        a.h2 |= version == Version::HTTP_2;
        InFlight(self.clone())
    }

    /// The deadline that passed, or when to look again.
    fn check(&self, d: &Deadlines, now: Instant) -> Result<Instant, Expired> {
        let a = self.lock();
        if a.in_flight > 0 {
            return Ok(now + d.idle);
        }
        if let Some(t) = a.head_since {
            let due = t + d.header;
            if now >= due {
                return Err(Expired::Header);
            }
            return Ok(due.min(a.last + d.idle));
        }
        let due = a.last + d.idle;
        if now >= due {
            Err(Expired::Idle)
        } else {
            Ok(due)
        }
    }
}

/// Resolves when one of the connection's deadlines passes; the caller then drops the
/// connection.
pub async fn watchdog(conn: Arc<Conn>, d: Deadlines) -> Expired {
    loop {
        match conn.check(&d, Instant::now()) {
            Err(e) => return e,
            Ok(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = conn.head_started.notified() => {}
                }
            }
        }
    }
}

/// A request in flight; dropped when its response body has been sent (or abandoned).
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = self.0.lock();
        a.in_flight = a.in_flight.saturating_sub(1);
        a.last = Instant::now();
    }
}

/// The connection's I/O, noting every read for the deadlines.
pub struct Tracked<T> {
    io: T,
    conn: Arc<Conn>,
}

impl<T> Tracked<T> {
    pub fn new(io: T, conn: Arc<Conn>) -> Self {
        Self { io, conn }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.on_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Set on a request whose body missed its deadline, so that the answer is 408 whatever the
/// handler made of the failed read.
#[derive(Clone)]
pub struct BodyExpired(Arc<AtomicBool>);

/// A request body that fails once the body deadline passes.
struct DeadlineBody<B> {
    inner: B,
    due: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(f.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                if this.due.as_mut().poll(cx).is_ready() {
                    this.expired.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(BodyTimeout.into())))
                } else {
                    Poll::Pending
                }
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Puts the body deadline on a request that has a body.
pub fn with_body_deadline<B>(req: axum::http::Request<B>, within: Duration) -> Request
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    if req.body().is_end_stream() {
        return req.map(Body::new);
    }
    let expired = Arc::new(AtomicBool::new(false));
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(BodyExpired(expired.clone()));
    Request::from_parts(
        parts,
        Body::new(DeadlineBody {
            inner: body,
            due: Box::pin(tokio::time::sleep(within)),
            expired,
        }),
    )
}

/// Answers 408 `body_timeout` (and closes the connection) when the request's body missed its
/// deadline, whatever the handler answered. A layer over the whole router.
pub async fn body_deadline(
    axum::extract::State(s): axum::extract::State<Arc<crate::services::Services>>,
    req: Request,
    next: Next,
) -> Response {
    let expired = req.extensions().get::<BodyExpired>().cloned();
    let version = req.version();
    let r = next.run(req).await;
    match expired {
        Some(BodyExpired(e)) if e.load(Ordering::Relaxed) => {
            s.metrics
                .http_timeouts
                .get_or_create(&crate::metrics::ReasonLabel { reason: "body" })
                .inc();
            let mut r = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time (http.body_timeout_secs)",
            )
            .into_response();
            if version < Version::HTTP_2 {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
        _ => r,
    }
}

/// A response body that keeps its request in flight until it has been sent.
pub struct InFlightBody {
    inner: Body,
    _in_flight: InFlight,
}

impl InFlightBody {
    pub fn new(inner: Body, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Deadlines {
        Deadlines {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }

    #[test]
    fn header_deadline_runs_from_the_first_byte_and_idle_from_the_last() {
        let c = Conn::new();
        let t0 = Instant::now();
        // A fresh connection owes its first header.
        assert_eq!(
            c.check(&d(), t0 + Duration::from_secs(11)),
            Err(Expired::Header)
        );
        let r = c.begin(Version::HTTP_11);
        // In flight: never idle, however long.
        assert!(c.check(&d(), t0 + Duration::from_secs(3600)).is_ok());
        drop(r);
        let t1 = Instant::now();
        // Idle keep-alive: the idle deadline, not the header one.
        assert!(c.check(&d(), t1 + Duration::from_secs(30)).is_ok());
        assert_eq!(
            c.check(&d(), t1 + Duration::from_secs(61)),
            Err(Expired::Idle)
        );
        // A header starts: now it is due within the header deadline.
        c.on_read();
        assert_eq!(
            c.check(&d(), Instant::now() + Duration::from_secs(11)),
            Err(Expired::Header)
        );
    }

    #[test]
    fn http2_connections_have_no_header_deadline_after_the_first_request() {
        let c = Conn::new();
        drop(c.begin(Version::HTTP_2));
        c.on_read(); // a ping
        assert!(
            c.check(&d(), Instant::now() + Duration::from_secs(30))
                .is_ok()
        );
    }
}
