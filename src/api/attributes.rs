//! REST routes for attributes: a device's client, shared and server attributes
//! (`/devices/{id}/attributes`) and a fleet's shared defaults (`/fleets/{id}/attributes/shared`).
//! Operators write shared and server attributes; client attributes come from the device.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ApiResult;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::telemetry::split_keys;
use crate::devices::attributes::{AttrValue, DeviceAttributes, parse_body};
use crate::model::{DeviceId, FleetId};
use crate::services::Services;
use crate::store::Scope;

type S = State<Arc<Services>>;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(get_attributes))
        .routes(routes!(set_attributes, delete_attributes))
        .routes(routes!(
            get_fleet_shared,
            set_fleet_shared,
            delete_fleet_shared
        ))
}

fn scope(s: &str) -> ApiResult<Scope> {
    match s {
        "client" => Ok(Scope::Client),
        "shared" => Ok(Scope::Shared),
        "server" => Ok(Scope::Server),
        _ => Err(ApiError::bad_request(
            "invalid_scope",
            "scope is client, shared or server",
        )),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScopeParams {
    /// `client`, `shared` or `server`; all three when absent.
    scope: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeysParams {
    /// Comma-separated keys to delete.
    keys: String,
}

#[utoipa::path(get, path = "/devices/{id}/attributes", tag = "attributes",
    params(("id" = String, Path, description = "device id"), ScopeParams),
    responses((status = 200, body = DeviceAttributes), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_attributes(
    State(s): S,
    ApiPath(id): ApiPath<DeviceId>,
    ApiQuery(q): ApiQuery<ScopeParams>,
) -> ApiResult<axum::Json<DeviceAttributes>> {
    let sc = q.scope.as_deref().map(scope).transpose()?;
    Ok(axum::Json(s.attributes.get(id, sc)?))
}

#[utoipa::path(put, path = "/devices/{id}/attributes/{scope}", tag = "attributes",
    params(("id" = String, Path, description = "device id"), ("scope" = String, Path, description = "shared or server")),
    request_body = Object,
    responses((status = 200, body = DeviceAttributes), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set_attributes(
    State(s): S,
    ApiPath((id, sc)): ApiPath<(DeviceId, String)>,
    ApiJson(body): ApiJson<Map<String, Json>>,
) -> ApiResult<axum::Json<DeviceAttributes>> {
    let sc = scope(&sc)?;
    s.attributes.set(id, sc, parse_body(body)?).await?;
    Ok(axum::Json(s.attributes.get(id, Some(sc))?))
}

#[utoipa::path(delete, path = "/devices/{id}/attributes/{scope}", tag = "attributes",
    params(("id" = String, Path, description = "device id"), ("scope" = String, Path, description = "client, shared or server"), KeysParams),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_attributes(
    State(s): S,
    ApiPath((id, sc)): ApiPath<(DeviceId, String)>,
    ApiQuery(q): ApiQuery<KeysParams>,
) -> ApiResult<StatusCode> {
    let keys = split_keys(Some(&q.keys)).unwrap_or_default();
    s.attributes.delete(id, scope(&sc)?, &keys).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/fleets/{id}/attributes/shared", tag = "attributes",
    params(("id" = String, Path, description = "fleet id")),
    responses((status = 200, body = BTreeMap<String, AttrValue>), (status = 404, body = ErrorBody)))]
async fn get_fleet_shared(
    State(s): S,
    ApiPath(id): ApiPath<FleetId>,
) -> ApiResult<axum::Json<BTreeMap<String, AttrValue>>> {
    Ok(axum::Json(s.attributes.fleet_defaults(id)?))
}

#[utoipa::path(put, path = "/fleets/{id}/attributes/shared", tag = "attributes",
    params(("id" = String, Path, description = "fleet id")), request_body = Object,
    responses((status = 200, body = BTreeMap<String, AttrValue>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set_fleet_shared(
    State(s): S,
    ApiPath(id): ApiPath<FleetId>,
    ApiJson(body): ApiJson<Map<String, Json>>,
) -> ApiResult<axum::Json<BTreeMap<String, AttrValue>>> {
    s.attributes.set_fleet(id, parse_body(body)?).await?;
    Ok(axum::Json(s.attributes.fleet_defaults(id)?))
}

#[utoipa::path(delete, path = "/fleets/{id}/attributes/shared", tag = "attributes",
    params(("id" = String, Path, description = "fleet id"), KeysParams),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_fleet_shared(
    State(s): S,
    ApiPath(id): ApiPath<FleetId>,
    ApiQuery(q): ApiQuery<KeysParams>,
) -> ApiResult<StatusCode> {
    let keys = split_keys(Some(&q.keys)).unwrap_or_default();
    s.attributes.delete_fleet(id, &keys).await?;
    Ok(StatusCode::NO_CONTENT)
}
