//! REST route for the server's background workers: `GET /api/v1/workers` lists each with its
//! state, runs, failures and last error (server administrators only).

use std::sync::Arc;

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::authz::ServerAdmin;
use super::error::ErrorBody;
use crate::services::Services;
use crate::workers::WorkerStatus;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new().routes(routes!(list_workers))
}

/// List background workers
///
/// Returns every background worker of the server (the job scheduler, retention, the
/// credential and activity sweeps, scheduled backups) with its state (`idle`, `running`,
/// `stopped`), how often it runs, how many runs it finished and how many failed, when the last
/// run started and how long it took, and the last error. The same figures are in `/metrics`
/// (`corral_worker_*`). Needs a server admin.
#[utoipa::path(get, path = "/workers", tag = "server",
    responses((status = 200, body = Vec<WorkerStatus>), (status = 403, body = ErrorBody)))]
async fn list_workers(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
) -> axum::Json<Vec<WorkerStatus>> {
    axum::Json(s.workers.status())
}
