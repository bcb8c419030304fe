//! REST routes for device conditions: list them (server-wide, per fleet or workspace, or per
//! device; open, closed or both; by severity and name), read one, acknowledge one, close one.
//! Lists hold only what the caller may see; the authorization layer checks the single ones.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::authz::{Caller, Condition as ConditionObj, Device, On, Operator, Viewer};
use super::error::{ApiError, ApiQuery, ErrorBody};
use super::registry::Page;
use super::{ApiResult, page_limit};
use crate::auth::Principal;
use crate::conditions::ConditionQuery;
use crate::conditions::ConditionView;
use crate::model::{Cursor, DeviceId, FleetId, Severity, WorkspaceId};
use crate::services::Services;

type S = State<Arc<Services>>;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(list_conditions))
        .routes(routes!(device_conditions))
        .routes(routes!(get_condition))
        .routes(routes!(acknowledge_condition))
        .routes(routes!(close_condition))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListConditions {
    device_id: Option<DeviceId>,
    fleet_id: Option<FleetId>,
    workspace_id: Option<WorkspaceId>,
    /// `open` (the default), `closed` or `all`.
    #[param(pattern = "^(open|closed|all)$")]
    state: Option<String>,
    /// Comma-separated severities: `critical,major,minor,warning,info`.
    #[param(
        pattern = "^,*((critical|major|minor|warning|info)(,+(critical|major|minor|warning|info))*)?,*$"
    )]
    severity: Option<String>,
    /// Exact condition name.
    name: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    cursor: Option<String>,
}

impl ListConditions {
    fn query(&self) -> ApiResult<ConditionQuery> {
        let open = match self.state.as_deref().unwrap_or("open") {
            "open" => Some(true),
            "closed" => Some(false),
            "all" => None,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    "state must be open, closed or all",
                ));
            }
        };
        let severities = match &self.severity {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .filter(|x| !x.is_empty())
                .map(|x| x.parse::<Severity>())
                .collect::<Result<_, _>>()
                .map_err(|e| ApiError::bad_request("invalid_query", format!("severity: {e}")))?,
        };
        Ok(ConditionQuery {
            device: self.device_id,
            fleet: self.fleet_id,
            workspace: self.workspace_id,
            open,
            severities,
            name: self.name.clone(),
            before: self.cursor.clone().map(Cursor::new),
        })
    }
}

async fn listing(
    s: &Services,
    who: &Principal,
    q: ConditionQuery,
    limit: Option<usize>,
) -> ApiResult<Page<ConditionView>> {
    let limit = page_limit(limit)?;
    let (items, next) = s
        .conditions
        .list(&q, limit, &|c| {
            who.admin || who.sees_fleet(c.workspace_id, c.fleet_id)
        })
        .await?;
    Ok(Page {
        items: items.iter().map(ConditionView::from).collect(),
        next_cursor: next.map(|c| c.to_string()),
    })
}

/// List conditions
///
/// Returns device conditions (alarms) newest first, a page at a time; pass `next_cursor` as
/// `cursor` for older ones. By default only open conditions; `state` selects `closed` or `all`.
/// Filter by `device_id`, `fleet_id`, `workspace_id`, `severity` (comma-separated) and exact
/// `name`. Any authenticated caller may list; only conditions of devices in fleets they can see are
/// returned. Errors: 400 `invalid_query` (bad `state` or `severity`), 400 `invalid_cursor`, 400
/// `invalid_limit`.
#[utoipa::path(get, path = "/conditions", tag = "conditions", params(ListConditions),
    responses((status = 200, body = Page<ConditionView>), (status = 400, body = ErrorBody)))]
async fn list_conditions(
    State(s): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListConditions>,
) -> ApiResult<Json<Page<ConditionView>>> {
    let who = caller.filters().clone();
    let query = q.query()?;
    let s2 = s.clone();
    // A filter that matches little may walk much of the history: off the async workers.
    let page = crate::workers::on_blocking_pool(move || async move {
        listing(&s2, &who, query, q.limit).await
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(page))
}

/// List a device's conditions
///
/// Returns the device's conditions newest first, a page at a time, with the same filters and paging
/// as `GET /conditions` (open ones by default). Needs the viewer role on the device's fleet.
/// Errors: 400 `invalid_query`, 400 `invalid_cursor`, 400 `invalid_limit`.
#[utoipa::path(get, path = "/devices/{id}/conditions", tag = "conditions",
    params(("id" = String, Path, description = "device id"), ListConditions),
    responses((status = 200, body = Page<ConditionView>), (status = 404, body = ErrorBody)))]
async fn device_conditions(
    State(s): S,
    Extension(who): Extension<Principal>,
    On(id, _): On<Device, Viewer>,
    ApiQuery(q): ApiQuery<ListConditions>,
) -> ApiResult<Json<Page<ConditionView>>> {
    s.registry.device_record(id).await?;
    let mut query = q.query()?;
    query.device = Some(id);
    Ok(Json(listing(&s, &who, query, q.limit).await?))
}

/// Get a condition
///
/// Returns one condition. Needs the viewer role on the fleet of the device that reported it.
#[utoipa::path(get, path = "/conditions/{id}", tag = "conditions",
    params(("id" = String, Path, description = "condition id")),
    responses((status = 200, body = ConditionView), (status = 404, body = ErrorBody)))]
async fn get_condition(
    State(s): S,
    On(id, _): On<ConditionObj, Viewer>,
) -> ApiResult<Json<ConditionView>> {
    Ok(Json(s.conditions.get(id).await?.into()))
}

/// Acknowledge a condition
///
/// Marks a condition as seen by the caller; it stays open until it is closed. Acknowledging again
/// keeps the first acknowledgement. Publishes a `condition` event. Returns the condition. Needs the
/// operator role on the device's fleet.
#[utoipa::path(post, path = "/conditions/{id}/acknowledge", tag = "conditions",
    params(("id" = String, Path, description = "condition id")),
    responses((status = 200, body = ConditionView), (status = 404, body = ErrorBody)))]
async fn acknowledge_condition(
    State(s): S,
    Extension(who): Extension<Principal>,
    On(id, _): On<ConditionObj, Operator>,
) -> ApiResult<Json<ConditionView>> {
    Ok(Json(s.conditions.acknowledge(id, &who.name).await?.into()))
}

/// Close a condition
///
/// Closes an open condition in the caller's name; the device may open it again later. Publishes a
/// `condition` event. Returns the closed condition. Needs the operator role on the device's fleet.
/// Errors: 409 `conflict` (the condition is already closed).
#[utoipa::path(post, path = "/conditions/{id}/close", tag = "conditions",
    params(("id" = String, Path, description = "condition id")),
    responses((status = 200, body = ConditionView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn close_condition(
    State(s): S,
    Extension(who): Extension<Principal>,
    On(id, _): On<ConditionObj, Operator>,
) -> ApiResult<Json<ConditionView>> {
    Ok(Json(s.conditions.close(id, &who.name).await?.into()))
}
