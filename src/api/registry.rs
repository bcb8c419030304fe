//! REST routes for workspaces, fleets and devices (`/api/v1/workspaces`, `/fleets`, `/devices`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::authz::{
    Action, Admin, Caller, DeleteWorkspace, Device, Fleet as FleetObj, FleetSettings, InWorkspace,
    On, Operator, SeesWorkspace, ServerAdmin, Viewer,
};
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::{ApiResult, page_limit};
use crate::data::table::{DeviceRow, DeviceTable, MAX_KEYS, SortKey, TableQuery};
use crate::devices::credentials::IssuedCredential;
use crate::devices::registry::{
    DeviceFilter, DevicePatch, DeviceStatus, DeviceView, FleetPatch, NewDevice, NewFleet,
    NewWorkspace, WorkspacePatch,
};
use crate::devices::views::ConnectionEventView;
use crate::devices::views::{FleetView, WorkspaceView};
use crate::model::{Cursor, FleetId, Role, WorkspaceId};
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
        .routes(routes!(device_trace))
        .routes(routes!(connection_failures))
}

/// A page of results in creation order; pass `next_cursor` as `cursor` for the next page.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// This page's items, at most `limit`.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

pub(super) fn page<T, U>(p: crate::model::Page<T>, f: impl Fn(T) -> U) -> Page<U> {
    Page {
        items: p.items.into_iter().map(f).collect(),
        next_cursor: p.next_cursor.map(|c| c.to_string()),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListWorkspaces {
    /// Case-insensitive substring of the name.
    name: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    cursor: Option<String>,
}

/// List workspaces
///
/// Returns the workspaces the caller can see (server admins: all; other users: those they hold any
/// grant in), a page at a time in creation order. Filter by `name` (case-insensitive substring);
/// pass the page's `next_cursor` as `cursor` for the next page. Any authenticated caller may list.
/// Errors: 400 `invalid_cursor` for a cursor this API did not return, 400 `invalid_limit` for a
/// `limit` outside 1 to 1000.
#[utoipa::path(get, path = "/workspaces", tag = "workspaces", params(ListWorkspaces),
    responses((status = 200, body = Page<WorkspaceView>), (status = 401, body = ErrorBody)))]
async fn list_workspaces(
    State(s): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListWorkspaces>,
) -> ApiResult<axum::Json<Page<WorkspaceView>>> {
    let who = caller.filters();
    let p = s
        .registry
        .list_workspaces_where(
            q.name.as_deref(),
            q.cursor.map(Cursor::new).as_ref(),
            page_limit(q.limit)?,
            |w| who.sees_workspace(w.id),
        )
        .await?;
    Ok(axum::Json(page(p, WorkspaceView::from)))
}

/// Create a workspace
///
/// Creates a workspace and returns it. Names are 1 to 128 printable characters, unique on the
/// server regardless of case; the description holds at most 1024 characters; `retention_days` (1 to
/// 36500) overrides the server's telemetry retention for the workspace. Needs a server admin.
/// Errors: 409 `name_taken`, 422 `invalid_field`.
#[utoipa::path(post, path = "/workspaces", tag = "workspaces", request_body = NewWorkspace,
    responses((status = 201, body = WorkspaceView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_workspace(
    State(s): S,
    _: ServerAdmin,
    ApiJson(body): ApiJson<NewWorkspace>,
) -> ApiResult<(StatusCode, axum::Json<WorkspaceView>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.registry.create_workspace(body).await?.into()),
    ))
}

/// Get a workspace
///
/// Returns one workspace. Any caller with a grant in the workspace (even one limited to some
/// fleets) may read it; to others it answers 404 `not_found`.
#[utoipa::path(get, path = "/workspaces/{id}", tag = "workspaces", params(("id" = String, Path, description = "workspace id")),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody)))]
async fn get_workspace(
    State(s): S,
    SeesWorkspace(id): SeesWorkspace,
) -> ApiResult<axum::Json<WorkspaceView>> {
    Ok(axum::Json(s.registry.workspace(id).await?.into()))
}

/// Update a workspace
///
/// Changes the name, description or telemetry retention of a workspace; fields left out keep their
/// value, and `retention_days: 0` clears the workspace's own retention so the server default
/// applies. Returns the updated workspace. Needs the admin role on the whole workspace. Errors: 409
/// `name_taken` when another workspace has the name, 422 `invalid_field` for a bad name,
/// description or retention.
#[utoipa::path(patch, path = "/workspaces/{id}", tag = "workspaces", params(("id" = String, Path, description = "workspace id")),
    request_body = WorkspacePatch,
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_workspace(
    State(s): S,
    InWorkspace(id, _): InWorkspace<Admin>,
    ApiJson(p): ApiJson<WorkspacePatch>,
) -> ApiResult<axum::Json<WorkspaceView>> {
    Ok(axum::Json(s.registry.update_workspace(id, p).await?.into()))
}

/// Delete a workspace
///
/// Deletes an empty workspace. A workspace that still holds fleets is refused with 409 `not_empty`:
/// delete its fleets first. Needs a server admin (callers who cannot see the workspace get 404
/// `not_found`).
#[utoipa::path(delete, path = "/workspaces/{id}", tag = "workspaces", params(("id" = String, Path, description = "workspace id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "the workspace still has fleets", body = ErrorBody)))]
async fn delete_workspace(
    State(s): S,
    DeleteWorkspace(id): DeleteWorkspace,
) -> ApiResult<StatusCode> {
    s.registry.delete_workspace(id).await?;
    s.dashboards.delete_of(id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFleets {
    /// Only fleets of this workspace.
    workspace_id: Option<WorkspaceId>,
    /// Case-insensitive substring of the name.
    name: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    cursor: Option<String>,
}

/// List fleets
///
/// Returns the fleets the caller can see, a page at a time in creation order: server admins see
/// every fleet, other users the fleets their grants cover. Filter by `workspace_id` and by `name`
/// (case-insensitive substring); pass `next_cursor` as `cursor` for the next page. Any
/// authenticated caller may list. Errors: 400 `invalid_cursor`, 400 `invalid_limit`.
#[utoipa::path(get, path = "/fleets", tag = "fleets", params(ListFleets),
    responses((status = 200, body = Page<FleetView>)))]
async fn list_fleets(
    State(s): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListFleets>,
) -> ApiResult<axum::Json<Page<FleetView>>> {
    let who = caller.filters();
    let p = s
        .registry
        .list_fleets_where(
            q.workspace_id,
            q.name.as_deref(),
            q.cursor.map(Cursor::new).as_ref(),
            page_limit(q.limit)?,
            |f| who.sees_fleet(f.workspace_id, f.id),
        )
        .await?;
    Ok(axum::Json(page(p, FleetView::from)))
}

/// Create a fleet
///
/// Creates a fleet in the workspace named by `workspace_id` and returns it. Fleet names are 1 to
/// 128 printable characters, unique within the workspace regardless of case. Needs the admin role
/// on the whole workspace. Errors: 409 `name_taken`, 422 `invalid_field` (for instance
/// `workspace_id` naming no workspace, or a bad name or description).
#[utoipa::path(post, path = "/fleets", tag = "fleets", request_body = NewFleet,
    responses((status = 201, body = FleetView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_fleet(
    State(s): S,
    caller: Caller,
    ApiJson(body): ApiJson<NewFleet>,
) -> ApiResult<(StatusCode, axum::Json<FleetView>)> {
    caller
        .require(Action::Workspace(body.workspace_id, Role::Admin))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(s.registry.create_fleet(body).await?.into()),
    ))
}

/// Get a fleet
///
/// Returns one fleet. Needs the viewer role on the fleet; a caller who cannot see it gets 404
/// `not_found`.
#[utoipa::path(get, path = "/fleets/{id}", tag = "fleets", params(("id" = String, Path, description = "fleet id")),
    responses((status = 200, body = FleetView), (status = 404, body = ErrorBody)))]
async fn get_fleet(
    State(s): S,
    On(id, _): On<FleetObj, Viewer>,
) -> ApiResult<axum::Json<FleetView>> {
    Ok(axum::Json(s.registry.fleet(id).await?.into()))
}

/// Update a fleet
///
/// Changes the name or description of a fleet; fields left out keep their value. Returns the
/// updated fleet. Needs the admin role on the fleet's whole workspace. Errors: 409 `name_taken`
/// when another fleet of the workspace has the name, 422 `invalid_field` for a bad name or
/// description.
#[utoipa::path(patch, path = "/fleets/{id}", tag = "fleets", params(("id" = String, Path, description = "fleet id")),
    request_body = FleetPatch, responses((status = 200, body = FleetView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_fleet(
    State(s): S,
    FleetSettings(id): FleetSettings,
    ApiJson(p): ApiJson<FleetPatch>,
) -> ApiResult<axum::Json<FleetView>> {
    Ok(axum::Json(s.registry.update_fleet(id, p).await?.into()))
}

/// Delete a fleet
///
/// Deletes an empty fleet, with its provisioning key and its shared attribute defaults. A fleet
/// that still holds devices or manufacturer CAs is refused with 409 `not_empty`: delete or move its
/// devices and remove its CAs first. Needs the admin role on the fleet's whole workspace.
#[utoipa::path(delete, path = "/fleets/{id}", tag = "fleets", params(("id" = String, Path, description = "fleet id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "the fleet still has devices", body = ErrorBody)))]
async fn delete_fleet(State(s): S, FleetSettings(id): FleetSettings) -> ApiResult<StatusCode> {
    let workspace = s.registry.fleet(id).await?.workspace_id;
    s.registry.delete_fleet(id).await?;
    // The fleet's dashboards go with it (the registry knows nothing of dashboards).
    s.dashboards.delete_of(workspace, Some(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams, Clone, Default)]
#[into_params(parameter_in = Query)]
pub struct ListDevices {
    /// Only devices of this workspace.
    pub(super) workspace_id: Option<WorkspaceId>,
    /// Only devices of this fleet.
    pub(super) fleet_id: Option<FleetId>,
    /// Case-insensitive substring of the name.
    pub(super) name: Option<String>,
    /// Only devices that are `online` or `offline` now.
    pub(super) status: Option<DeviceStatus>,
    /// Case-insensitive substring of the label.
    pub(super) label: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) devices.
    pub(super) enabled: Option<bool>,
    /// Only devices silent for at least this many minutes: no message or connection since
    /// (never-heard devices included).
    #[param(minimum = 1, maximum = 5_256_000)]
    pub(super) silent_mins: Option<u64>,
    /// Only devices reporting this firmware version (`current_fw_version`).
    pub(super) firmware: Option<String>,
    /// Only sub-devices of this gateway (the gateway API).
    pub(super) gateway_id: Option<crate::model::DeviceId>,
    /// Sort by `name`, `fleet` (its name), `status`, `last_activity`, `firmware` or `created`;
    /// pages then go by `offset` rather than `cursor`.
    pub(super) sort: Option<SortKey>,
    /// `asc` (default) or `desc`. Devices without a last activity or firmware come last
    /// either way.
    pub(super) order: Option<SortOrder>,
    /// Rows to skip in the sorted list (default 0); not with `cursor`.
    pub(super) offset: Option<usize>,
    /// Comma-separated telemetry keys (at most 10) whose latest values each row carries in
    /// `latest`.
    pub(super) keys: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub(super) limit: Option<usize>,
    /// `next_cursor` of the previous page (creation order only).
    #[param(value_type = Option<uuid::Uuid>)]
    pub(super) cursor: Option<String>,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    Desc,
}

impl ListDevices {
    pub(super) fn filter(&self) -> ApiResult<DeviceFilter> {
        let silent_since = self.silent_mins.map(silent_since).transpose()?;
        Ok(DeviceFilter {
            workspace_id: self.workspace_id,
            fleet_id: self.fleet_id,
            name: self.name.clone(),
            status: self.status,
            label: self.label.clone(),
            enabled: self.enabled,
            silent_since,
            gateway_id: self.gateway_id,
        })
    }

    /// The table query of a sorted listing, an export or a bulk action over a filter.
    pub(super) fn table(&self, limit: usize) -> ApiResult<TableQuery> {
        Ok(TableQuery {
            filter: self.filter()?,
            firmware: self.firmware.clone().filter(|f| !f.is_empty()),
            sort: self.sort.unwrap_or(SortKey::Created),
            descending: self.order == Some(SortOrder::Desc),
            offset: self.offset.unwrap_or(0),
            limit,
            keys: keys(self.keys.as_deref())?,
        })
    }
}

/// Longest silence a filter names, in minutes: ten years.
pub(super) const MAX_SILENT_MINS: u64 = 5_256_000;

/// The time before which a device silent for `mins` minutes was last heard from; 400
/// `invalid_query` outside 1 to `MAX_SILENT_MINS`.
pub(super) fn silent_since(mins: u64) -> ApiResult<crate::model::Millis> {
    if !(1..=MAX_SILENT_MINS).contains(&mins) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("silent_mins must be 1 to {MAX_SILENT_MINS}"),
        ));
    }
    // In range, the product fits an i64 many times over.
    Ok(crate::model::now_ms() - (mins * 60_000) as i64)
}

/// The telemetry keys of a `keys` parameter.
pub(super) fn keys(k: Option<&str>) -> ApiResult<Vec<String>> {
    let keys: Vec<String> = k
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(String::from)
        .collect();
    if keys.len() > MAX_KEYS {
        return Err(ApiError::bad_request(
            "invalid_keys",
            format!("at most {MAX_KEYS} keys"),
        ));
    }
    Ok(keys)
}

/// A page of the devices table.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DevicePage {
    /// This page's devices, at most `limit`.
    pub items: Vec<DeviceRow>,
    /// How many devices match the filters in all (over every page).
    pub total: u64,
    /// Pass as `cursor` to get the next page in creation order; null on the last page and
    /// in a sorted listing (which pages by `offset`).
    pub next_cursor: Option<String>,
}

/// List devices
///
/// Returns the devices the caller can see with their live status, the firmware version each
/// reports and, with `keys`, their latest values of those telemetry keys; `total` counts every
/// matching device. Filter by `workspace_id`, `fleet_id`, `name` and `label` (case-insensitive
/// substrings), `status` (`online` or `offline`), `enabled`, `silent_mins`, `firmware` and
/// `gateway_id` (a gateway's sub-devices). Without `sort` the list is in creation order a page at a time: pass `next_cursor` as
/// `cursor` for the next page. With `sort` (and `order`), pages go by `offset`. Any
/// authenticated caller may list; only devices of fleets they can see are returned. Errors:
/// 400 `invalid_cursor`, 400 `invalid_limit`, 400 `invalid_keys` (more than 10), 400
/// `invalid_query` (a `cursor` with `sort`, `offset` or `firmware`; `silent_mins` outside 1 to 5,256,000).
#[utoipa::path(get, path = "/devices", tag = "devices", params(ListDevices),
    responses((status = 200, body = DevicePage), (status = 400, body = ErrorBody)))]
async fn list_devices(
    State(s): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListDevices>,
) -> ApiResult<axum::Json<DevicePage>> {
    let who = caller.filters().clone();
    let limit = page_limit(q.limit)?;
    let table = q.table(limit)?;
    let sorted = q.sort.is_some() || q.offset.is_some() || table.firmware.is_some();
    if sorted && q.cursor.is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "cursor pages the creation order: use offset with sort, offset or firmware",
        ));
    }
    // A sorted page or a total reads every matching device: off the request threads.
    let page = crate::workers::on_blocking_pool(move || async move {
        let t = DeviceTable {
            registry: &s.registry,
            data: &s.data,
            attributes: &s.attributes,
        };
        let visible = |d: &crate::model::Device| who.sees_fleet(d.workspace_id, d.fleet_id);
        if sorted {
            let p = t.page(&table, visible).await?;
            return ApiResult::Ok(DevicePage {
                items: p.items,
                total: p.total,
                next_cursor: None,
            });
        }
        let p = s
            .registry
            .list_devices_where(
                &table.filter,
                q.cursor.map(Cursor::new).as_ref(),
                limit,
                visible,
            )
            .await?;
        let total = s
            .registry
            .count_devices_where(&table.filter, visible)
            .await?;
        let mut items = Vec::with_capacity(p.items.len());
        for d in p.items {
            items.push(t.row(d, None, &table.keys).await?);
        }
        Ok(DevicePage {
            items,
            total,
            next_cursor: p.next_cursor.map(|c| c.to_string()),
        })
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(axum::Json(page))
}

/// The created device and its first credential. Secrets (token, generated private key) are
/// shown only in this response.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedDevice {
    pub device: DeviceView,
    /// The device's first credential with its secrets, shown only here: the access token, or
    /// the certificate bundle (with the private key when Corral generated it).
    pub credentials: IssuedCredential,
}

/// Create a device
///
/// Creates a device in the fleet named by `fleet_id` together with its first credential: the one
/// given in `credentials`, or a generated access token. The response holds the secrets (token,
/// generated private key) that are shown only this once; issuing the credential is recorded in the
/// audit log (`credential_issued`). Device names are unique within the workspace regardless of
/// case. Needs the operator role on the fleet. Errors: 409 `name_taken`, 409 `credential_taken`
/// (another device already answers to the credential), 422 `invalid_field`.
#[utoipa::path(post, path = "/devices", tag = "devices", request_body = NewDevice,
    responses((status = 201, body = CreatedDevice), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_device(
    State(s): S,
    caller: Caller,
    ApiJson(body): ApiJson<NewDevice>,
) -> ApiResult<(StatusCode, axum::Json<CreatedDevice>)> {
    caller
        .require(Action::Fleet(body.fleet_id, Role::Operator))
        .await?;
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

/// Get a device
///
/// Returns one device with its live status: whether it is online, its open connections and when it
/// last connected, disconnected and was active. Needs the viewer role on the device's fleet.
#[utoipa::path(get, path = "/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)))]
async fn get_device(
    State(s): S,
    On(id, _): On<Device, Viewer>,
) -> ApiResult<axum::Json<DeviceView>> {
    Ok(axum::Json(s.registry.device(id).await?))
}

/// List a device's connection history
///
/// Returns the device's last 100 connects and disconnects, newest first, each with its time, the
/// listener it used and the remote address. Needs the viewer role on the device's fleet.
#[utoipa::path(get, path = "/devices/{id}/connections", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<ConnectionEventView>, description = "the last 100 connects and disconnects, newest first"),
        (status = 404, body = ErrorBody)))]
async fn device_connections(
    State(s): S,
    On(id, _): On<Device, Viewer>,
) -> ApiResult<axum::Json<Vec<ConnectionEventView>>> {
    let history = s.registry.connection_history(id).await?;
    Ok(axum::Json(
        history.iter().map(ConnectionEventView::from).collect(),
    ))
}

/// A device's connection trace
///
/// Returns the device's recent connection events, newest first (at most 32, kept in memory):
/// connects with the login method and client id, refused attempts that named it (a revoked or
/// expired credential, a disabled device) with their reason, sessions the server closed and
/// why (taken over, revoked, disabled), disconnects, and publishes refused with their topic,
/// size and reason. Never a secret or a payload. Needs the viewer role on the device's fleet.
#[utoipa::path(get, path = "/devices/{id}/trace", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<crate::devices::trace::TraceEvent>, description = "recent events, newest first"),
        (status = 404, body = ErrorBody)))]
async fn device_trace(
    State(s): S,
    On(id, _): On<Device, Viewer>,
) -> ApiResult<axum::Json<Vec<crate::devices::trace::TraceEvent>>> {
    Ok(axum::Json(s.trace.of_device(id)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FailureQuery {
    /// Only attempts from this address (`ip` or `ip:port`).
    peer: Option<String>,
    /// Only attempts with this MQTT client id.
    client_id: Option<String>,
    /// Only attempts whose username's SHA-256 (hex) starts with this (`sha256sum` of a token).
    token_sha256_prefix: Option<String>,
    /// Only attempts with a client certificate whose fingerprint starts with this.
    cert_fingerprint: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Refused connections that name no device
///
/// Returns the server's recent refused connects that no device could be found for (an unknown
/// token, an unregistered certificate, a client id nobody has), newest first (the last 1,000 are
/// kept in memory): when, the listener, the source address, the client id, the first 12 hex
/// digits of the username's SHA-256, the client certificate's fingerprint and subject, and the
/// reason. Refusals that name a device are on that device's trace instead. Filter by `peer`,
/// `client_id`, `token_sha256_prefix` and `cert_fingerprint`. Needs a server admin. Errors: 400
/// `invalid_limit`.
#[utoipa::path(get, path = "/connection-failures", tag = "server", params(FailureQuery),
    responses((status = 200, body = Vec<crate::devices::trace::TraceEvent>, description = "refusals, newest first"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn connection_failures(
    State(s): S,
    _: ServerAdmin,
    ApiQuery(q): ApiQuery<FailureQuery>,
) -> ApiResult<axum::Json<Vec<crate::devices::trace::TraceEvent>>> {
    let limit = page_limit(q.limit)?;
    let f = crate::devices::trace::FailureFilter {
        peer: q.peer,
        client_id: q.client_id,
        token_sha256_prefix: q.token_sha256_prefix,
        cert_fingerprint: q.cert_fingerprint,
    };
    Ok(axum::Json(s.trace.failures(&f, limit)))
}

/// Update a device
///
/// Changes a device's name, label or enabled flag, or moves it to another fleet of the same
/// workspace; fields left out keep their value. Disabling a device closes its open sessions at once
/// and refuses its logins until it is enabled again; enabling or disabling is recorded in the audit
/// log (`device_enabled`, `device_disabled`). Returns the updated device. Needs the operator role
/// on the device's fleet. Errors: 409 `name_taken`, 422 `invalid_field` (for instance a `fleet_id`
/// of another workspace).
#[utoipa::path(patch, path = "/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")),
    request_body = DevicePatch, responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_device(
    State(s): S,
    On(id, _): On<Device, Operator>,
    caller: Caller,
    ApiJson(p): ApiJson<DevicePatch>,
) -> ApiResult<axum::Json<DeviceView>> {
    // A move needs the operator role on the fleet it goes to as well, and a fleet the caller
    // cannot see does not exist for them.
    if let Some(dest) = p.fleet_id {
        caller.require(Action::Fleet(dest, Role::Operator)).await?;
    }
    Ok(axum::Json(s.registry.update_device(id, p).await?))
}

/// Delete a device
///
/// Deletes a device with everything it holds: credentials, telemetry, attributes, jobs, connection
/// history and conditions. Its open sessions are closed, and the deletion is recorded in the audit
/// log (`device_deleted`). Cannot be undone. Needs the admin role on the device's fleet.
#[utoipa::path(delete, path = "/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_device(State(s): S, On(id, _): On<Device, Admin>) -> ApiResult<StatusCode> {
    s.registry.delete_device(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
