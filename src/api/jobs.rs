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
use super::authz::{
    Action, Caller, Device, Fleet, FleetJob, Job as JobObj, On, Operator, Schedule as ScheduleObj,
    Viewer,
};
use super::error::{ApiJson, ApiQuery, ErrorBody};
use crate::jobs::NewJob;
use crate::jobs::fleet::{FleetJobView, NewFleetJob};
use crate::jobs::schedule::NewSchedule;
use crate::jobs::views::{JobView, ScheduleView};
use crate::model::Role;
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

/// Create a schedule
///
/// Creates a schedule that sends a command when its trigger fires: once at a time (`at`, ms since
/// the epoch) or on a cron expression in a time zone, optionally only inside a maintenance window.
/// It targets exactly one of `device_id` (a job for the device) or `fleet_id` (a fleet rollout,
/// with an optional filter, pacing and abort threshold). Needs the operator role on the target's
/// fleet. Errors: 404 `not_found` (the device or fleet), 422 `invalid_field` (both or neither
/// target, a trigger time in the past, a bad cron expression, time zone or window, rollout settings
/// on a device schedule).
#[utoipa::path(post, path = "/schedules", tag = "jobs", request_body = NewSchedule,
    responses((status = 201, body = ScheduleView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_schedule(
    State(s): S,
    caller: Caller,
    ApiJson(body): ApiJson<NewSchedule>,
) -> ApiResult<(StatusCode, axum::Json<ScheduleView>)> {
    // Exactly one target is valid; with neither, the service refuses the body (422).
    match (body.device_id, body.fleet_id) {
        (Some(d), _) => caller.require(Action::Device(d, Role::Operator)).await?,
        (None, Some(f)) => caller.require(Action::Fleet(f, Role::Operator)).await?,
        (None, None) => {}
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(s.jobs.create_schedule(body).await?.into()),
    ))
}

/// List schedules
///
/// Returns every schedule the caller can see, newest first: those of devices and fleets in fleets
/// they can see. Any authenticated caller.
#[utoipa::path(get, path = "/schedules", tag = "jobs",
    responses((status = 200, body = Vec<ScheduleView>)))]
async fn list_schedules(State(s): S, caller: Caller) -> ApiResult<axum::Json<Vec<ScheduleView>>> {
    let who = caller.filters();
    let mut v = Vec::new();
    for sc in s.jobs.schedules().await? {
        let sees = match (sc.device_id, sc.fleet_id) {
            (Some(d), _) => s.sees_device(who, d).await,
            (_, Some(f)) => s.sees_fleet(who, f).await,
            _ => who.admin,
        };
        if sees {
            v.push(ScheduleView::from(&sc));
        }
    }
    Ok(axum::Json(v))
}

/// Get a schedule
///
/// Returns one schedule with its next run time, last run and last result. Needs the viewer role on
/// the fleet of its device or fleet.
#[utoipa::path(get, path = "/schedules/{id}", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody)))]
async fn get_schedule(
    State(s): S,
    On(id, _): On<ScheduleObj, Viewer>,
) -> ApiResult<axum::Json<ScheduleView>> {
    Ok(axum::Json(s.jobs.schedule(id).await?.into()))
}

/// Delete a schedule
///
/// Deletes a schedule: it fires no more. Jobs and rollouts it already created are not affected.
/// Needs the operator role on the fleet of its device or fleet.
#[utoipa::path(delete, path = "/schedules/{id}", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_schedule(
    State(s): S,
    On(id, _): On<ScheduleObj, Operator>,
) -> ApiResult<StatusCode> {
    s.jobs.delete_schedule(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run a schedule now
///
/// Fires the schedule at once, whatever its trigger, window or enabled flag say, and returns it;
/// its next planned run is unchanged. `last_result` names the job or fleet job created, or starts
/// with `error:` when it could not be created (the request still succeeds). A fleet rollout started
/// this way ignores the schedule's window. Needs the operator role on the fleet of its device or
/// fleet.
#[utoipa::path(post, path = "/schedules/{id}/run", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = ScheduleView, description = "`last_result` names the job created"),
        (status = 404, body = ErrorBody)))]
async fn run_schedule(
    State(s): S,
    On(id, _): On<ScheduleObj, Operator>,
) -> ApiResult<axum::Json<ScheduleView>> {
    Ok(axum::Json(s.jobs.run_schedule_now(id).await?.into()))
}

/// Enable a schedule
///
/// Enables a schedule and computes its next run from now (held back to its window's opening).
/// Returns the schedule. Needs the operator role on the fleet of its device or fleet.
#[utoipa::path(post, path = "/schedules/{id}/enable", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody)))]
async fn enable_schedule(
    State(s): S,
    On(id, _): On<ScheduleObj, Operator>,
) -> ApiResult<axum::Json<ScheduleView>> {
    Ok(axum::Json(
        s.jobs.set_schedule_enabled(id, true).await?.into(),
    ))
}

/// Disable a schedule
///
/// Disables a schedule: it does not fire until it is enabled again (`next_run_at` is cleared).
/// Returns the schedule. Needs the operator role on the fleet of its device or fleet.
#[utoipa::path(post, path = "/schedules/{id}/disable", tag = "jobs",
    params(("id" = String, Path, description = "schedule id")),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody)))]
async fn disable_schedule(
    State(s): S,
    On(id, _): On<ScheduleObj, Operator>,
) -> ApiResult<axum::Json<ScheduleView>> {
    Ok(axum::Json(
        s.jobs.set_schedule_enabled(id, false).await?.into(),
    ))
}

/// Roll a command out to a fleet
///
/// Starts a rollout: a job with the command for every enabled device of the fleet that matches
/// `filter`, started `per_minute` devices a minute (all at once when 0) and only inside `window`
/// when one is given. The rollout aborts when `abort_failure_pct` of finished jobs failed or
/// expired, once `abort_min_sample` have finished. A repeated create with the same
/// `idempotency_key` returns the first rollout. Returns the rollout with its progress. Needs the
/// operator role on the fleet. Errors: 422 `invalid_field` (method, TTL, abort percentage, window,
/// idempotency key).
#[utoipa::path(post, path = "/fleets/{id}/jobs", tag = "jobs",
    params(("id" = String, Path, description = "fleet id")), request_body = NewFleetJob,
    responses((status = 201, body = FleetJobView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_fleet_job(
    State(s): S,
    On(id, _): On<Fleet, Operator>,
    ApiJson(body): ApiJson<NewFleetJob>,
) -> ApiResult<(StatusCode, axum::Json<FleetJobView>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.jobs.create_fleet_job(id, body).await?),
    ))
}

/// List a fleet's rollouts
///
/// Returns the fleet's rollouts, newest first, each with its progress (jobs per state, and
/// `pending` for devices not started yet). Needs the viewer role on the fleet.
#[utoipa::path(get, path = "/fleets/{id}/jobs", tag = "jobs",
    params(("id" = String, Path, description = "fleet id")),
    responses((status = 200, body = Vec<FleetJobView>), (status = 404, body = ErrorBody)))]
async fn list_fleet_jobs(
    State(s): S,
    On(id, _): On<Fleet, Viewer>,
) -> ApiResult<axum::Json<Vec<FleetJobView>>> {
    Ok(axum::Json(s.jobs.fleet_jobs_of(id).await?))
}

/// Get a rollout
///
/// Returns one rollout with its progress: jobs per state, and `pending` for devices not started
/// yet. Needs the viewer role on the fleet.
#[utoipa::path(get, path = "/fleet-jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "fleet job id")),
    responses((status = 200, body = FleetJobView), (status = 404, body = ErrorBody)))]
async fn get_fleet_job(
    State(s): S,
    On(id, _): On<FleetJob, Viewer>,
) -> ApiResult<axum::Json<FleetJobView>> {
    Ok(axum::Json(s.jobs.fleet_job(id).await?))
}

/// Cancel a rollout
///
/// Cancels a running rollout: no more devices start, and its jobs not yet sent are cancelled; jobs
/// already sent run to their end. A rollout that is no longer running is returned unchanged. Needs
/// the operator role on the fleet.
#[utoipa::path(post, path = "/fleet-jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "fleet job id")),
    responses((status = 200, body = FleetJobView), (status = 404, body = ErrorBody)))]
async fn cancel_fleet_job(
    State(s): S,
    On(id, _): On<FleetJob, Operator>,
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

/// Send a command to a device
///
/// Queues a command (a ThingsBoard server-side RPC) for the device and sends it if the device is
/// connected; jobs go out one at a time, in order, and wait up to `ttl_secs` for delivery. A
/// two-way job succeeds when the device replies, a one-way job when it acknowledges. With `wait_ms`
/// the call waits (at most 300000 ms) for the job to finish and returns it as it stands then. A
/// repeated create with the same `idempotency_key` returns the first job. Needs the operator role
/// on the device's fleet. Errors: 409 `queue_full` (the device has too many unfinished jobs), 422
/// `invalid_field` (method 1 to 256 characters, TTL 1 s to 365 days, idempotency key 1 to 128
/// characters).
#[utoipa::path(post, path = "/devices/{id}/jobs", tag = "jobs",
    params(("id" = String, Path, description = "device id"), WaitParams), request_body = NewJob,
    responses((status = 201, body = JobView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "queue_full"), (status = 422, body = ErrorBody)))]
async fn create_job(
    State(s): S,
    On(id, _): On<Device, Operator>,
    ApiQuery(q): ApiQuery<WaitParams>,
    ApiJson(body): ApiJson<NewJob>,
) -> ApiResult<(StatusCode, axum::Json<JobView>)> {
    let job = s.jobs.create(id, body).await?;
    let job = match q.wait_ms.filter(|w| *w > 0) {
        Some(w) => {
            s.jobs
                .wait(job.id, Duration::from_millis(w).min(MAX_WAIT))
                .await?
        }
        None => job,
    };
    Ok((StatusCode::CREATED, axum::Json(job.into())))
}

/// List a device's jobs
///
/// Returns every job of the device, newest first, each with its state and history. Needs the viewer
/// role on the device's fleet.
#[utoipa::path(get, path = "/devices/{id}/jobs", tag = "jobs",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<JobView>), (status = 404, body = ErrorBody)))]
async fn list_jobs(
    State(s): S,
    On(id, _): On<Device, Viewer>,
) -> ApiResult<axum::Json<Vec<JobView>>> {
    Ok(axum::Json(
        s.jobs.list(id).await?.iter().map(JobView::from).collect(),
    ))
}

/// Get a job
///
/// Returns one job with its state, result and history. With `wait_ms` the call waits (at most
/// 300000 ms) for the job to finish and returns it as it stands then. Needs the viewer role on the
/// device's fleet.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id"), WaitParams),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(s): S,
    On(id, _): On<JobObj, Viewer>,
    ApiQuery(q): ApiQuery<WaitParams>,
) -> ApiResult<axum::Json<JobView>> {
    let job = match q.wait_ms.filter(|w| *w > 0) {
        Some(w) => {
            s.jobs
                .wait(id, Duration::from_millis(w).min(MAX_WAIT))
                .await?
        }
        None => s.jobs.get(id).await?,
    };
    Ok(axum::Json(job.into()))
}

/// Cancel a job
///
/// Cancels a job that has not finished; the device's next queued job is sent. A finished job is
/// returned unchanged. Needs the operator role on the device's fleet.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
async fn cancel_job(
    State(s): S,
    On(id, _): On<JobObj, Operator>,
) -> ApiResult<axum::Json<JobView>> {
    Ok(axum::Json(s.jobs.cancel(id).await?.into()))
}
