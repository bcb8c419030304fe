//! REST routes for dashboards: list those the caller sees, create, read, replace and delete.
//! A fleet's dashboard is its fleet's (viewers read it, operators and admins edit it); a
//! workspace's dashboard needs a role on the whole workspace, so a user limited to some fleets
//! (a customer) sees only their fleets' dashboards. The definition's rules are the service's
//! (`dashboards`): 422 `invalid_field` naming the widget and field, 400 `invalid_body` for a
//! body that does not parse (an unknown widget kind or field).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ApiResult;
use super::authz::{Action, Caller, Dashboard as DashboardObject, On, Operator, Viewer};
use super::error::{ApiJson, ApiQuery, ErrorBody};
use crate::dashboards::{DashboardSpec, NewDashboard};
use crate::model::{Dashboard, FleetId, Role, WorkspaceId};
use crate::services::Services;

type S = State<Arc<Services>>;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(list_dashboards, create_dashboard))
        .routes(routes!(get_dashboard, update_dashboard, delete_dashboard))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DashboardFilter {
    /// Only this workspace's dashboards (its fleets' included).
    #[serde(default)]
    pub workspace_id: Option<WorkspaceId>,
    /// Only this fleet's dashboards.
    #[serde(default)]
    pub fleet_id: Option<FleetId>,
}

#[derive(Serialize, ToSchema)]
pub struct DashboardList {
    /// By name.
    pub items: Vec<Dashboard>,
    /// The map tile server (`[ui] tile_url`), when the server has one; maps draw the built-in
    /// world outline otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tile_url: Option<String>,
}

/// List dashboards
///
/// Returns the dashboards the caller sees, by name: a fleet's to whoever sees the fleet, a
/// workspace's to whoever holds a role on the whole workspace. Filter by `workspace_id` or
/// `fleet_id`. Carries the map tile server of `[ui] tile_url`, if any.
#[utoipa::path(get, path = "/dashboards", tag = "dashboards", params(DashboardFilter),
    responses((status = 200, body = DashboardList), (status = 400, body = ErrorBody)))]
async fn list_dashboards(
    State(s): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<DashboardFilter>,
) -> ApiResult<axum::Json<DashboardList>> {
    let p = caller.filters();
    let items = s
        .dashboards
        .list(|d| {
            let sees = match d.fleet_id {
                Some(f) => p.sees_fleet(d.workspace_id, f),
                None => p.role_on_workspace(d.workspace_id).is_some(),
            };
            sees && q.workspace_id.is_none_or(|w| w == d.workspace_id)
                && q.fleet_id.is_none_or(|f| Some(f) == d.fleet_id)
        })
        .await?;
    Ok(axum::Json(DashboardList {
        items,
        tile_url: s.config.ui.tile_url.clone(),
    }))
}

/// Create a dashboard
///
/// Creates a dashboard of a workspace, or of one fleet with `fleet_id`. Widgets: `chart`
/// (keys of devices over the dashboard's `window`), `value`, `gauge`, `table`, `conditions`
/// and `map`; every device a widget names must be in the dashboard's workspace (and fleet).
/// Needs the operator role on the fleet (or on the whole workspace). Errors: 400
/// `invalid_body` (an unknown widget kind or field), 404 `not_found` (the workspace or fleet),
/// 422 `invalid_field` (the message names the field, e.g. `widgets[2].keys`), 409 `conflict`
/// (the server's 2000 dashboards are reached).
#[utoipa::path(post, path = "/dashboards", tag = "dashboards", request_body = NewDashboard,
    responses((status = 201, body = Dashboard), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn create_dashboard(
    State(s): S,
    caller: Caller,
    ApiJson(body): ApiJson<NewDashboard>,
) -> ApiResult<(StatusCode, axum::Json<Dashboard>)> {
    match body.fleet_id {
        Some(f) => caller.require(Action::Fleet(f, Role::Operator)).await?,
        None => {
            caller
                .require(Action::Workspace(body.workspace_id, Role::Operator))
                .await?
        }
    }
    let d = s.dashboards.create(body, &caller.principal.name).await?;
    Ok((StatusCode::CREATED, axum::Json(d)))
}

/// Get a dashboard
///
/// Returns a dashboard's definition. Needs the viewer role on its fleet (or workspace).
#[utoipa::path(get, path = "/dashboards/{id}", tag = "dashboards",
    params(("id" = String, Path, description = "dashboard id")),
    responses((status = 200, body = Dashboard), (status = 404, body = ErrorBody)))]
async fn get_dashboard(
    State(s): S,
    On(id, _): On<DashboardObject, Viewer>,
) -> ApiResult<axum::Json<Dashboard>> {
    Ok(axum::Json(s.dashboards.get(id).await?))
}

/// Replace a dashboard
///
/// Replaces a dashboard's name, description, window and widgets as a whole; its workspace and
/// fleet stay. Needs the operator role on its fleet (or workspace). Errors as for creating.
#[utoipa::path(put, path = "/dashboards/{id}", tag = "dashboards",
    params(("id" = String, Path, description = "dashboard id")), request_body = DashboardSpec,
    responses((status = 200, body = Dashboard), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_dashboard(
    State(s): S,
    On(id, _): On<DashboardObject, Operator>,
    ApiJson(body): ApiJson<DashboardSpec>,
) -> ApiResult<axum::Json<Dashboard>> {
    Ok(axum::Json(s.dashboards.update(id, body).await?))
}

/// Delete a dashboard
///
/// Deletes a dashboard (its devices and data are not touched). Needs the operator role on its
/// fleet (or workspace).
#[utoipa::path(delete, path = "/dashboards/{id}", tag = "dashboards",
    params(("id" = String, Path, description = "dashboard id")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)))]
async fn delete_dashboard(
    State(s): S,
    On(id, _): On<DashboardObject, Operator>,
) -> ApiResult<StatusCode> {
    s.dashboards.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
