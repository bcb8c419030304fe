//! REST route for online backups: `GET /api/v1/backup` streams a backup of the running server
//! (store, the log needed to reach its point in time, PKI and configuration; see
//! `store::backup`) as a tar download. Server administrators only; devices keep publishing
//! while it runs. The body is produced on a blocking thread and handed over in chunks, so a
//! store of any size streams in bounded memory, and a client that goes away stops the copy.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::services::Services;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new().routes(routes!(backup))
}

/// Chunks of the backup in flight between the copy and the connection.
const IN_FLIGHT: usize = 8;
/// Bytes gathered before a chunk is handed over.
const CHUNK: usize = 256 << 10;

/// `Write` into a bounded channel of body chunks; fails once the receiver (the connection) is
/// gone, which stops the copy.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Download a backup
///
/// Streams a consistent backup of the running server as a tar file: the store, the log needed to
/// reach its point in time, the PKI and the configuration. Devices keep publishing while it runs.
/// If the backup fails midway the download ends in an error rather than a short file; check a saved
/// backup with `corral backup verify FILE`. Needs a server admin.
#[utoipa::path(get, path = "/backup", tag = "backup",
    responses((status = 200, content_type = "application/x-tar",
        description = "a consistent backup of the running server, streamed; check it with `corral backup verify FILE`")))]
async fn backup(State(s): State<Arc<Services>>, _: super::authz::ServerAdmin) -> Response {
    let extras = match crate::backups::extras(&s) {
        Ok(e) => e,
        Err(e) => return super::ApiError::internal(e).into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let writer = ChannelWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(CHUNK),
    };
    let s = s.clone();
    tokio::spawn(async move {
        match crate::backups::write(&s, extras, writer).await {
            Ok(m) => tracing::info!(
                trees = m.trees.len(),
                log_segments = m.wal.len(),
                took_ms = m.finished_at - m.started_at,
                "backup written"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "backup not finished");
                // The client sees the body end in an error, not a short file that looks whole.
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let mut r = Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"corral-{stamp}.backup.tar\""
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
