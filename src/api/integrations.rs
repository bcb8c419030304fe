//! REST routes for integrations (webhooks): create, list, read, change, pause, resume and
//! delete them, send a test event, read their status, and list, replay or delete their dead
//! letters. Secrets are accepted, never returned.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::authz::ServerAdmin;
use super::error::{ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::{ApiResult, page_limit};
use crate::integrations::{
    CreatedIntegration, DeadLetterPage, IntegrationPatch, IntegrationStatus, IntegrationView,
    NewIntegration,
};
use crate::model::IntegrationId;
use crate::services::Services;

type S = State<Arc<Services>>;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(list_integrations, create_integration))
        .routes(routes!(
            get_integration,
            update_integration,
            delete_integration
        ))
        .routes(routes!(pause_integration))
        .routes(routes!(resume_integration))
        .routes(routes!(test_integration))
        .routes(routes!(integration_status))
        .routes(routes!(list_dead_letters, delete_dead_letters))
        .routes(routes!(replay_dead_letters))
}

/// Create an integration
///
/// Creates a webhook integration: matching events (filtered by workspace, fleets, tags and kinds)
/// are queued durably and POSTed to `url` in batches signed with HMAC-SHA256
/// (`X-Corral-Signature`). A signing secret left out is generated and returned only in this
/// response; the auth header value is never returned. Delivery starts at once unless `paused`.
/// Needs a server admin. Errors: 404 `not_found` (an unknown workspace or fleet), 409 `name_taken`,
/// 422 `invalid_field` (a setting out of range, a bad URL, header or CA).
#[utoipa::path(post, path = "/integrations", tag = "integrations", request_body = NewIntegration,
    responses((status = 201, body = CreatedIntegration, description = "the signing secret is included once when Corral generated it"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_integration(
    State(s): S,
    _: ServerAdmin,
    ApiJson(body): ApiJson<NewIntegration>,
) -> ApiResult<(StatusCode, axum::Json<CreatedIntegration>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.integrations.create(body).await?),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct IntegrationList {
    pub items: Vec<IntegrationView>,
}

/// List integrations
///
/// Returns every integration with its settings and live status, never a secret. Needs a server
/// admin.
#[utoipa::path(get, path = "/integrations", tag = "integrations",
    responses((status = 200, body = IntegrationList)))]
async fn list_integrations(State(s): S, _: ServerAdmin) -> ApiResult<axum::Json<IntegrationList>> {
    Ok(axum::Json(IntegrationList {
        items: s.integrations.list().await?,
    }))
}

/// Get an integration
///
/// Returns one integration with its settings and live status, never a secret. Needs a server admin.
#[utoipa::path(get, path = "/integrations/{id}", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = IntegrationView), (status = 404, body = ErrorBody)))]
async fn get_integration(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<IntegrationView>> {
    Ok(axum::Json(s.integrations.get(id).await?))
}

/// Update an integration
///
/// Changes an integration's settings; fields left out keep their value, and `null` clears
/// `workspace_id`, `auth_header` or `ca_pem`. The delivery task picks up the change at once; queued
/// entries stay queued. Returns the integration. Needs a server admin. Errors: 404 `not_found` (the
/// integration, or an unknown workspace or fleet), 409 `name_taken`, 422 `invalid_field`.
#[utoipa::path(patch, path = "/integrations/{id}", tag = "integrations",
    params(("id" = String, Path, description = "integration id")), request_body = IntegrationPatch,
    responses((status = 200, body = IntegrationView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_integration(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
    ApiJson(body): ApiJson<IntegrationPatch>,
) -> ApiResult<axum::Json<IntegrationView>> {
    Ok(axum::Json(s.integrations.update(id, body).await?))
}

/// Delete an integration
///
/// Deletes an integration with its queue and dead letters, and stops its delivery; entries not yet
/// delivered are lost. Needs a server admin.
#[utoipa::path(delete, path = "/integrations/{id}", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 204, description = "deleted with its queue and dead letters"), (status = 404, body = ErrorBody)))]
async fn delete_integration(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<StatusCode> {
    s.integrations.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause an integration
///
/// Stops sending: matching events keep queueing (up to the integration's caps) and are delivered
/// after `POST /integrations/{id}/resume`. Returns the integration. Needs a server admin.
#[utoipa::path(post, path = "/integrations/{id}/pause", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = IntegrationView, description = "entries keep queueing; nothing is sent"), (status = 404, body = ErrorBody)))]
async fn pause_integration(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<IntegrationView>> {
    Ok(axum::Json(s.integrations.set_paused(id, true).await?))
}

/// Resume an integration
///
/// Resumes sending from a paused integration's queue, oldest entries first. Returns the
/// integration. Needs a server admin.
#[utoipa::path(post, path = "/integrations/{id}/resume", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = IntegrationView), (status = 404, body = ErrorBody)))]
async fn resume_integration(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<IntegrationView>> {
    Ok(axum::Json(s.integrations.set_paused(id, false).await?))
}

/// Send a test event
///
/// Queues a test event (`kind: test`) for this integration only, whatever its filters, through the
/// same durable queue and delivery as real events; answers once it is queued, not once it is
/// delivered. A paused integration sends it after it is resumed. Needs a server admin.
#[utoipa::path(post, path = "/integrations/{id}/test", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 202, description = "a test event is queued (durably) for this integration"), (status = 404, body = ErrorBody)))]
async fn test_integration(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<StatusCode> {
    s.integrations.send_test(id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Get an integration's status
///
/// Returns the live state of an integration's delivery: `paused`, `idle`, `delivering` or
/// `retrying`, queue depth and size, the age of its oldest entry, delivery counters, the last
/// error, dead letters, and the alarm raised when entries were dropped by the caps. Needs a server
/// admin.
#[utoipa::path(get, path = "/integrations/{id}/status", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = IntegrationStatus), (status = 404, body = ErrorBody)))]
async fn integration_status(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<IntegrationStatus>> {
    Ok(axum::Json(s.integrations.status(id).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Page size (1 to 1000, default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List an integration's dead letters
///
/// Returns the entries moved aside after the receiver refused them (a 4xx answer under the
/// `dead_letter` client-error policy), in queue order, a page at a time; pass `next_cursor` as
/// `cursor` for the next page. Each holds the event, its idempotency key and why it failed. Needs a
/// server admin. Errors: 400 `invalid_limit`, 400 `invalid_cursor` (a cursor this listing did not
/// return).
#[utoipa::path(get, path = "/integrations/{id}/dead-letters", tag = "integrations",
    params(("id" = String, Path, description = "integration id"), DeadLetterParams),
    responses((status = 200, body = DeadLetterPage), (status = 404, body = ErrorBody)))]
async fn list_dead_letters(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
    ApiQuery(q): ApiQuery<DeadLetterParams>,
) -> ApiResult<axum::Json<DeadLetterPage>> {
    let limit = page_limit(q.limit)?;
    Ok(axum::Json(
        s.integrations
            .dead_letters(id, q.cursor.as_deref().filter(|c| !c.is_empty()), limit)
            .await?,
    ))
}

#[derive(Serialize, ToSchema)]
pub struct Count {
    /// How many dead letters were moved or deleted.
    pub count: u64,
}

/// Replay an integration's dead letters
///
/// Moves every dead letter back to the tail of the queue, in order and with their original
/// idempotency keys, so they are delivered again. Returns how many were moved. Needs a server
/// admin.
#[utoipa::path(post, path = "/integrations/{id}/dead-letters/replay", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = Count, description = "dead letters moved back to the tail of the queue, in order, with their original ids"),
        (status = 404, body = ErrorBody)))]
async fn replay_dead_letters(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<Count>> {
    Ok(axum::Json(Count {
        count: s.integrations.replay_dead_letters(id).await?,
    }))
}

/// Delete an integration's dead letters
///
/// Deletes every dead letter of the integration for good. Returns how many were deleted. Needs a
/// server admin.
#[utoipa::path(delete, path = "/integrations/{id}/dead-letters", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = Count), (status = 404, body = ErrorBody)))]
async fn delete_dead_letters(
    State(s): S,
    _: ServerAdmin,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<Count>> {
    Ok(axum::Json(Count {
        count: s.integrations.delete_dead_letters(id).await?,
    }))
}
