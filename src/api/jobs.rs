//! REST routes for jobs: send a command to a device (optionally waiting for its outcome),
//! list a device's jobs, read one, cancel one; roll a command out to a fleet, follow its
//! progress, cancel it; schedule commands (at a time or on cron, in a window), run one now.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ApiResult;
use super::error::{ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::jobs::NewJob;
use crate::jobs::fleet::{FleetJobView, NewFleetJob};
use crate::jobs::schedule::NewSchedule;
use crate::model::{DeviceId, FleetId, FleetJobId, Job, JobId, Schedule, ScheduleId};
use crate::services::Services;

type S = State<Arc<Services>>;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs, create_job))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(list_fleet_jobs, create_fleet_job))
        .routes(routes!(get_fleet_job))
        .routes(routes!(cancel_fleet_job))
        .routes(routes!(list_schedules, create_schedule))
        .routes(routes!(get_schedule, delete_schedule))
        .routes(routes!(run_schedule))
        .routes(routes!(enable_schedule))
        .routes(routes!(disable_schedule))
}

#[utoipa::path(post, path = "/schedules", tag = "jobs", request_body = NewSchedule,
    responses((status = 201, body = Schedule), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_schedule(
    State(s): S,
    ApiJson(body): ApiJson<NewSchedule>,
) -> ApiResult<(StatusCode, axum::Json<Schedule>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.jobs.create_schedule(body).await?),
    ))
}

#[utoipa::path(get, path = "/schedules", tag = "jobs",
    responses((status = 200, body = Vec<Schedule>)))]
async fn list_schedules(
    State(s): S,
    axum::Extension(who): axum::Extension<crate::auth::Principal>,
) -> ApiResult<axum::Json<Vec<Schedule>>> {
    let mut v = s.jobs.schedules()?;
    v.retain(|sc| match (sc.device_id, sc.fleet_id) {
        (Some(d), _) => s.sees_device(&who, d),
        (_, Some(f)) => s.sees_fleet(&who, f),
        _ => who.admin,
    });
    Ok(axum::Json(v))
}

#[utoipa::path(get, path = "/schedules/{id}", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = ErrorBody)))]
async fn get_schedule(
    State(s): S,
    ApiPath(id): ApiPath<ScheduleId>,
) -> ApiResult<axum::Json<Schedule>> {
    Ok(axum::Json(s.jobs.schedule(id)?))
}

#[utoipa::path(delete, path = "/schedules/{id}", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_schedule(State(s): S, ApiPath(id): ApiPath<ScheduleId>) -> ApiResult<StatusCode> {
    s.jobs.delete_schedule(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/schedules/{id}/run", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule, description = "`last_result` names the job created"),
        (status = 404, body = ErrorBody)))]
async fn run_schedule(
    State(s): S,
    ApiPath(id): ApiPath<ScheduleId>,
) -> ApiResult<axum::Json<Schedule>> {
    Ok(axum::Json(s.jobs.run_schedule_now(id).await?))
}

#[utoipa::path(post, path = "/schedules/{id}/enable", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = ErrorBody)))]
async fn enable_schedule(
    State(s): S,
    ApiPath(id): ApiPath<ScheduleId>,
) -> ApiResult<axum::Json<Schedule>> {
    Ok(axum::Json(s.jobs.set_schedule_enabled(id, true).await?))
}

#[utoipa::path(post, path = "/schedules/{id}/disable", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = ErrorBody)))]
async fn disable_schedule(
    State(s): S,
    ApiPath(id): ApiPath<ScheduleId>,
) -> ApiResult<axum::Json<Schedule>> {
    Ok(axum::Json(s.jobs.set_schedule_enabled(id, false).await?))
}

#[utoipa::path(post, path = "/fleets/{id}/jobs", tag = "jobs",
    params(("id" = String, Path, description = "fleet id")), request_body = NewFleetJob,
    responses((status = 201, body = FleetJobView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_fleet_job(
    State(s): S,
    ApiPath(id): ApiPath<FleetId>,
    ApiJson(body): ApiJson<NewFleetJob>,
) -> ApiResult<(StatusCode, axum::Json<FleetJobView>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.jobs.create_fleet_job(id, body).await?),
    ))
}

#[utoipa::path(get, path = "/fleets/{id}/jobs", tag = "jobs",
    params(("id" = String, Path, description = "fleet id")),
    responses((status = 200, body = Vec<FleetJobView>), (status = 404, body = ErrorBody)))]
async fn list_fleet_jobs(
    State(s): S,
    ApiPath(id): ApiPath<FleetId>,
) -> ApiResult<axum::Json<Vec<FleetJobView>>> {
    Ok(axum::Json(s.jobs.fleet_jobs_of(id)?))
}

#[utoipa::path(get, path = "/fleet-jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "fleet job id")),
    responses((status = 200, body = FleetJobView), (status = 404, body = ErrorBody)))]
async fn get_fleet_job(
    State(s): S,
    ApiPath(id): ApiPath<FleetJobId>,
) -> ApiResult<axum::Json<FleetJobView>> {
    Ok(axum::Json(s.jobs.fleet_job(id)?))
}

#[utoipa::path(post, path = "/fleet-jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "fleet job id")),
    responses((status = 200, body = FleetJobView), (status = 404, body = ErrorBody)))]
async fn cancel_fleet_job(
    State(s): S,
    ApiPath(id): ApiPath<FleetJobId>,
) -> ApiResult<axum::Json<FleetJobView>> {
    Ok(axum::Json(s.jobs.cancel_fleet_job(id).await?))
}

/// Longest an operator call may wait for a job's outcome.
const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Wait up to this many ms for the job to finish (succeeded, failed, expired); the job is
    /// returned as it stands then. 0 or absent: return at once.
    wait_ms: Option<u64>,
}

#[utoipa::path(post, path = "/devices/{id}/jobs", tag = "jobs",
    params(("id" = String, Path, description = "device id"), WaitParams), request_body = NewJob,
    responses((status = 201, body = Job), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "queue_full"), (status = 422, body = ErrorBody)))]
async fn create_job(
    State(s): S,
    ApiPath(id): ApiPath<DeviceId>,
    ApiQuery(q): ApiQuery<WaitParams>,
    ApiJson(body): ApiJson<NewJob>,
) -> ApiResult<(StatusCode, axum::Json<Job>)> {
    let job = s.jobs.create(id, body).await?;
    let job = match q.wait_ms.filter(|w| *w > 0) {
        Some(w) => {
            s.jobs
                .wait(job.id, Duration::from_millis(w).min(MAX_WAIT))
                .await?
        }
        None => job,
    };
    Ok((StatusCode::CREATED, axum::Json(job)))
}

#[utoipa::path(get, path = "/devices/{id}/jobs", tag = "jobs",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<Job>), (status = 404, body = ErrorBody)))]
async fn list_jobs(State(s): S, ApiPath(id): ApiPath<DeviceId>) -> ApiResult<axum::Json<Vec<Job>>> {
    Ok(axum::Json(s.jobs.list(id)?))
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id"), WaitParams),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(s): S,
    ApiPath(id): ApiPath<JobId>,
    ApiQuery(q): ApiQuery<WaitParams>,
) -> ApiResult<axum::Json<Job>> {
    Ok(axum::Json(match q.wait_ms.filter(|w| *w > 0) {
        Some(w) => {
            s.jobs
                .wait(id, Duration::from_millis(w).min(MAX_WAIT))
                .await?
        }
        None => s.jobs.get(id)?,
    }))
}

#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn cancel_job(State(s): S, ApiPath(id): ApiPath<JobId>) -> ApiResult<axum::Json<Job>> {
    Ok(axum::Json(s.jobs.cancel(id).await?))
}
