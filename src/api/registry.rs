//! REST routes for workspaces, fleets and devices (`/api/v1/workspaces`, `/fleets`, `/devices`).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::{ApiResult, page_limit};
use crate::auth::Principal;
use crate::devices::credentials::IssuedCredential;
use crate::devices::registry::{
    DeviceFilter, DevicePatch, DeviceStatus, DeviceView, FleetPatch, NewDevice, NewFleet,
    NewWorkspace, WorkspacePatch,
};
use crate::model::{ConnectionEvent, DeviceId, Fleet, FleetId, Workspace, WorkspaceId};
use crate::services::Services;

type S = State<Arc<Services>>;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(list_workspaces, create_workspace))
        .routes(routes!(get_workspace, update_workspace, delete_workspace))
        .routes(routes!(list_fleets, create_fleet))
        .routes(routes!(get_fleet, update_fleet, delete_fleet))
        .routes(routes!(list_devices, create_device))
        .routes(routes!(get_device, update_device, delete_device))
        .routes(routes!(device_connections))
}

/// A page of results in creation order; pass `next_cursor` as `cursor` for the next page.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub(super) fn page<T, U>(p: crate::store::Page<T>, f: impl Fn(T) -> U) -> Page<U> {
    Page {
        items: p.items.into_iter().map(f).collect(),
        next_cursor: p.next_cursor,
    }
}

pub(super) fn cursor<T: std::str::FromStr>(c: Option<&str>) -> Result<Option<T>, ApiError> {
    c.map(|c| {
        c.parse().map_err(|_| {
            ApiError::bad_request("invalid_cursor", "cursor is not one this API returned")
        })
    })
    .transpose()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListWorkspaces {
    /// Case-insensitive substring of the name.
    name: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/workspaces", tag = "workspaces", params(ListWorkspaces),
    responses((status = 200, body = Page<Workspace>), (status = 401, body = ErrorBody)))]
async fn list_workspaces(
    State(s): S,
    Extension(who): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListWorkspaces>,
) -> ApiResult<axum::Json<Page<Workspace>>> {
    let p = s.registry.list_workspaces_where(
        q.name.as_deref(),
        cursor(q.cursor.as_deref())?,
        page_limit(q.limit)?,
        |w| who.sees_workspace(w.id),
    )?;
    Ok(axum::Json(page(p, |w| w)))
}

#[utoipa::path(post, path = "/workspaces", tag = "workspaces", request_body = NewWorkspace,
    responses((status = 201, body = Workspace), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_workspace(
    State(s): S,
    ApiJson(body): ApiJson<NewWorkspace>,
) -> ApiResult<(StatusCode, axum::Json<Workspace>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.registry.create_workspace(body).await?),
    ))
}

#[utoipa::path(get, path = "/workspaces/{id}", tag = "workspaces", params(("id" = String, Path, description = "workspace id")),
    responses((status = 200, body = Workspace), (status = 404, body = ErrorBody)))]
async fn get_workspace(
    State(s): S,
    ApiPath(id): ApiPath<WorkspaceId>,
) -> ApiResult<axum::Json<Workspace>> {
    Ok(axum::Json(s.registry.workspace(id)?))
}

#[utoipa::path(patch, path = "/workspaces/{id}", tag = "workspaces", params(("id" = String, Path, description = "workspace id")),
    request_body = WorkspacePatch,
    responses((status = 200, body = Workspace), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_workspace(
    State(s): S,
    ApiPath(id): ApiPath<WorkspaceId>,
    ApiJson(p): ApiJson<WorkspacePatch>,
) -> ApiResult<axum::Json<Workspace>> {
    Ok(axum::Json(s.registry.update_workspace(id, p).await?))
}

#[utoipa::path(delete, path = "/workspaces/{id}", tag = "workspaces", params(("id" = String, Path, description = "workspace id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "the workspace still has fleets", body = ErrorBody)))]
async fn delete_workspace(State(s): S, ApiPath(id): ApiPath<WorkspaceId>) -> ApiResult<StatusCode> {
    s.registry.delete_workspace(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFleets {
    workspace_id: Option<WorkspaceId>,
    name: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/fleets", tag = "fleets", params(ListFleets),
    responses((status = 200, body = Page<Fleet>)))]
async fn list_fleets(
    State(s): S,
    Extension(who): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListFleets>,
) -> ApiResult<axum::Json<Page<Fleet>>> {
    let p = s.registry.list_fleets_where(
        q.workspace_id,
        q.name.as_deref(),
        cursor(q.cursor.as_deref())?,
        page_limit(q.limit)?,
        |f| who.sees_fleet(f.workspace_id, f.id),
    )?;
    Ok(axum::Json(page(p, |f| f)))
}

#[utoipa::path(post, path = "/fleets", tag = "fleets", request_body = NewFleet,
    responses((status = 201, body = Fleet), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_fleet(
    State(s): S,
    ApiJson(body): ApiJson<NewFleet>,
) -> ApiResult<(StatusCode, axum::Json<Fleet>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.registry.create_fleet(body).await?),
    ))
}

#[utoipa::path(get, path = "/fleets/{id}", tag = "fleets", params(("id" = String, Path, description = "fleet id")),
    responses((status = 200, body = Fleet), (status = 404, body = ErrorBody)))]
async fn get_fleet(State(s): S, ApiPath(id): ApiPath<FleetId>) -> ApiResult<axum::Json<Fleet>> {
    Ok(axum::Json(s.registry.fleet(id)?))
}

#[utoipa::path(patch, path = "/fleets/{id}", tag = "fleets", params(("id" = String, Path, description = "fleet id")),
    request_body = FleetPatch, responses((status = 200, body = Fleet), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_fleet(
    State(s): S,
    ApiPath(id): ApiPath<FleetId>,
    ApiJson(p): ApiJson<FleetPatch>,
) -> ApiResult<axum::Json<Fleet>> {
    Ok(axum::Json(s.registry.update_fleet(id, p).await?))
}

#[utoipa::path(delete, path = "/fleets/{id}", tag = "fleets", params(("id" = String, Path, description = "fleet id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "the fleet still has devices", body = ErrorBody)))]
async fn delete_fleet(State(s): S, ApiPath(id): ApiPath<FleetId>) -> ApiResult<StatusCode> {
    s.registry.delete_fleet(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListDevices {
    workspace_id: Option<WorkspaceId>,
    fleet_id: Option<FleetId>,
    /// Case-insensitive substring of the name.
    name: Option<String>,
    status: Option<DeviceStatus>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/devices", tag = "devices", params(ListDevices),
    responses((status = 200, body = Page<DeviceView>)))]
async fn list_devices(
    State(s): S,
    Extension(who): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListDevices>,
) -> ApiResult<axum::Json<Page<DeviceView>>> {
    let filter = DeviceFilter {
        workspace_id: q.workspace_id,
        fleet_id: q.fleet_id,
        name: q.name,
        status: q.status,
    };
    let p = s.registry.list_devices_where(
        &filter,
        cursor(q.cursor.as_deref())?,
        page_limit(q.limit)?,
        |d| who.sees_fleet(d.workspace_id, d.fleet_id),
    )?;
    Ok(axum::Json(page(p, |d| d)))
}

/// The created device and its first credential. Secrets (token, generated private key) are
/// shown only in this response.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedDevice {
    pub device: DeviceView,
    pub credentials: IssuedCredential,
}

#[utoipa::path(post, path = "/devices", tag = "devices", request_body = NewDevice,
    responses((status = 201, body = CreatedDevice), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_device(
    State(s): S,
    ApiJson(body): ApiJson<NewDevice>,
) -> ApiResult<(StatusCode, axum::Json<CreatedDevice>)> {
    let (device, credentials) = s.credentials.create_device(body).await?;
    tracing::info!(device = %device.id, name = %device.name, "device created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedDevice {
            device,
            credentials,
        }),
    ))
}

#[utoipa::path(get, path = "/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)))]
async fn get_device(
    State(s): S,
    ApiPath(id): ApiPath<DeviceId>,
) -> ApiResult<axum::Json<DeviceView>> {
    Ok(axum::Json(s.registry.device(id)?))
}

#[utoipa::path(get, path = "/devices/{id}/connections", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<ConnectionEvent>, description = "the last 100 connects and disconnects, newest first"),
        (status = 404, body = ErrorBody)))]
async fn device_connections(
    State(s): S,
    ApiPath(id): ApiPath<DeviceId>,
) -> ApiResult<axum::Json<Vec<ConnectionEvent>>> {
    Ok(axum::Json(s.registry.connection_history(id)?))
}

#[utoipa::path(patch, path = "/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")),
    request_body = DevicePatch, responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_device(
    State(s): S,
    ApiPath(id): ApiPath<DeviceId>,
    ApiJson(p): ApiJson<DevicePatch>,
) -> ApiResult<axum::Json<DeviceView>> {
    Ok(axum::Json(s.registry.update_device(id, p).await?))
}

#[utoipa::path(delete, path = "/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_device(State(s): S, ApiPath(id): ApiPath<DeviceId>) -> ApiResult<StatusCode> {
    s.registry.delete_device(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
