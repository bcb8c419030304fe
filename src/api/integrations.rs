//! REST routes for integrations (webhooks): create, list, read, change, pause, resume and
//! delete them, send a test event, read their status, and list, replay or delete their dead
//! letters. Secrets are accepted, never returned.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

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

#[utoipa::path(post, path = "/integrations", tag = "integrations", request_body = NewIntegration,
    responses((status = 201, body = CreatedIntegration, description = "the signing secret is included once when Corral generated it"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_integration(
    State(s): S,
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

#[utoipa::path(get, path = "/integrations", tag = "integrations",
    responses((status = 200, body = IntegrationList)))]
async fn list_integrations(State(s): S) -> ApiResult<axum::Json<IntegrationList>> {
    Ok(axum::Json(IntegrationList {
        items: s.integrations.list()?,
    }))
}

#[utoipa::path(get, path = "/integrations/{id}", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = IntegrationView), (status = 404, body = ErrorBody)))]
async fn get_integration(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<IntegrationView>> {
    Ok(axum::Json(s.integrations.get(id)?))
}

#[utoipa::path(patch, path = "/integrations/{id}", tag = "integrations",
    params(("id" = String, Path, description = "integration id")), request_body = IntegrationPatch,
    responses((status = 200, body = IntegrationView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_integration(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
    ApiJson(body): ApiJson<IntegrationPatch>,
) -> ApiResult<axum::Json<IntegrationView>> {
    Ok(axum::Json(s.integrations.update(id, body).await?))
}

#[utoipa::path(delete, path = "/integrations/{id}", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 204, description = "deleted with its queue and dead letters"), (status = 404, body = ErrorBody)))]
async fn delete_integration(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<StatusCode> {
    s.integrations.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/integrations/{id}/pause", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = IntegrationView, description = "entries keep queueing; nothing is sent"), (status = 404, body = ErrorBody)))]
async fn pause_integration(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<IntegrationView>> {
    Ok(axum::Json(s.integrations.set_paused(id, true).await?))
}

#[utoipa::path(post, path = "/integrations/{id}/resume", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = IntegrationView), (status = 404, body = ErrorBody)))]
async fn resume_integration(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<IntegrationView>> {
    Ok(axum::Json(s.integrations.set_paused(id, false).await?))
}

#[utoipa::path(post, path = "/integrations/{id}/test", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 202, description = "a test event is queued (durably) for this integration"), (status = 404, body = ErrorBody)))]
async fn test_integration(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<StatusCode> {
    s.integrations.send_test(id).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(get, path = "/integrations/{id}/status", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = IntegrationStatus), (status = 404, body = ErrorBody)))]
async fn integration_status(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<IntegrationStatus>> {
    Ok(axum::Json(s.integrations.status(id)?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Page size (1 to 1000, default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/integrations/{id}/dead-letters", tag = "integrations",
    params(("id" = String, Path, description = "integration id"), DeadLetterParams),
    responses((status = 200, body = DeadLetterPage), (status = 404, body = ErrorBody)))]
async fn list_dead_letters(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
    ApiQuery(q): ApiQuery<DeadLetterParams>,
) -> ApiResult<axum::Json<DeadLetterPage>> {
    let limit = page_limit(q.limit)?;
    Ok(axum::Json(s.integrations.dead_letters(
        id,
        q.cursor.as_deref(),
        limit,
    )?))
}

#[derive(Serialize, ToSchema)]
pub struct Count {
    pub count: u64,
}

#[utoipa::path(post, path = "/integrations/{id}/dead-letters/replay", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = Count, description = "dead letters moved back to the tail of the queue, in order, with their original ids"),
        (status = 404, body = ErrorBody)))]
async fn replay_dead_letters(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<Count>> {
    Ok(axum::Json(Count {
        count: s.integrations.replay_dead_letters(id).await?,
    }))
}

#[utoipa::path(delete, path = "/integrations/{id}/dead-letters", tag = "integrations",
    params(("id" = String, Path, description = "integration id")),
    responses((status = 200, body = Count), (status = 404, body = ErrorBody)))]
async fn delete_dead_letters(
    State(s): S,
    ApiPath(id): ApiPath<IntegrationId>,
) -> ApiResult<axum::Json<Count>> {
    Ok(axum::Json(Count {
        count: s.integrations.delete_dead_letters(id).await?,
    }))
}
