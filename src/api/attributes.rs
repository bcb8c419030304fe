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
use super::authz::{Device, Fleet, On, Operator, Viewer};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::telemetry::split_keys;
use crate::devices::attributes::{AttrValue, DeviceAttributes, parse_body};
use crate::model::DeviceId;
use crate::model::Scope;
use crate::services::Services;

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
    #[param(pattern = "^(client|shared|server)$")]
    scope: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeysParams {
    /// Comma-separated keys to delete.
    keys: String,
}

/// Get a device's attributes
///
/// Returns the device's attributes by scope, each value with the time (ms since the epoch) it was
/// set: `client` (reported by the device), `shared` (sent to the device; the fleet's defaults
/// overlaid by the device's own values) and `server` (kept on the server). `scope` limits the
/// answer to one scope. Needs the viewer role on the device's fleet. Errors: 400 `invalid_scope`.
#[utoipa::path(get, path = "/devices/{id}/attributes", tag = "attributes",
    params(("id" = String, Path, description = "device id"), ScopeParams),
    responses((status = 200, body = DeviceAttributes), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_attributes(
    State(s): S,
    On(id, _): On<Device, Viewer>,
    ApiQuery(q): ApiQuery<ScopeParams>,
) -> ApiResult<axum::Json<DeviceAttributes>> {
    let sc = q.scope.as_deref().map(scope).transpose()?;
    Ok(axum::Json(s.attributes.get(id, sc).await?))
}

/// Set a device's attributes
///
/// Sets shared or server attributes of a device from a JSON object of keys and values; keys not
/// named keep their value. Shared attributes are pushed to the device's sessions subscribed to
/// attribute updates and to its HTTP long-polls. Returns every attribute of the scope. Needs the
/// operator role on the device's fleet. Errors: 400 `invalid_scope`, 422 `invalid_field` (client
/// attributes, which only the device reports; a key containing a comma; a value that cannot be
/// stored).
#[utoipa::path(put, path = "/devices/{id}/attributes/{scope}", tag = "attributes",
    params(("id" = String, Path, description = "device id"), ("scope" = String, Path, description = "`shared` or `server` (a device writes its own `client` attributes)", pattern = "^(client|shared|server)$")),
    request_body = Object,
    responses((status = 200, body = DeviceAttributes), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set_attributes(
    State(s): S,
    _: On<Device, Operator>,
    ApiPath((id, sc)): ApiPath<(DeviceId, String)>,
    ApiJson(body): ApiJson<Map<String, Json>>,
) -> ApiResult<axum::Json<DeviceAttributes>> {
    let sc = scope(&sc)?;
    s.attributes.set(id, sc, parse_body(body)?).await?;
    Ok(axum::Json(s.attributes.get(id, Some(sc)).await?))
}

/// Delete a device's attributes
///
/// Deletes the named keys (comma-separated in `keys`) from one scope of a device; keys it does not
/// have are ignored. A deleted shared key that the fleet has a default for falls back to that
/// default, and the device is told the new value; other deleted shared keys are announced to the
/// device as deleted. Needs the operator role on the device's fleet. Errors: 400 `invalid_scope`.
#[utoipa::path(delete, path = "/devices/{id}/attributes/{scope}", tag = "attributes",
    params(("id" = String, Path, description = "device id"), ("scope" = String, Path, description = "`client`, `shared` or `server`", pattern = "^(client|shared|server)$"), KeysParams),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_attributes(
    State(s): S,
    _: On<Device, Operator>,
    ApiPath((id, sc)): ApiPath<(DeviceId, String)>,
    ApiQuery(q): ApiQuery<KeysParams>,
) -> ApiResult<StatusCode> {
    let keys = split_keys(Some(&q.keys)).unwrap_or_default();
    s.attributes.delete(id, scope(&sc)?, &keys).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Get a fleet's shared attribute defaults
///
/// Returns the fleet's default shared attributes, each with the time (ms since the epoch) it was
/// set. Every device of the fleet sees these unless it has its own value for the key. Needs the
/// viewer role on the fleet.
#[utoipa::path(get, path = "/fleets/{id}/attributes/shared", tag = "attributes",
    params(("id" = String, Path, description = "fleet id")),
    responses((status = 200, body = BTreeMap<String, AttrValue>), (status = 404, body = ErrorBody)))]
async fn get_fleet_shared(
    State(s): S,
    On(id, _): On<Fleet, Viewer>,
) -> ApiResult<axum::Json<BTreeMap<String, AttrValue>>> {
    Ok(axum::Json(s.attributes.fleet_defaults(id).await?))
}

/// Set a fleet's shared attribute defaults
///
/// Sets default shared attributes for every device of the fleet from a JSON object; keys not named
/// keep their value. Devices without their own value for a key are sent the new default. Returns
/// all the fleet's defaults. Needs the operator role on the fleet. Errors: 422 `invalid_field` (a
/// key containing a comma, a value that cannot be stored).
#[utoipa::path(put, path = "/fleets/{id}/attributes/shared", tag = "attributes",
    params(("id" = String, Path, description = "fleet id")), request_body = Object,
    responses((status = 200, body = BTreeMap<String, AttrValue>), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set_fleet_shared(
    State(s): S,
    On(id, _): On<Fleet, Operator>,
    ApiJson(body): ApiJson<Map<String, Json>>,
) -> ApiResult<axum::Json<BTreeMap<String, AttrValue>>> {
    s.attributes.set_fleet(id, parse_body(body)?).await?;
    Ok(axum::Json(s.attributes.fleet_defaults(id).await?))
}

/// Delete a fleet's shared attribute defaults
///
/// Deletes the named default keys (comma-separated in `keys`) of the fleet; unknown keys are
/// ignored. Devices that have no value of their own for a deleted key are told it was deleted.
/// Needs the operator role on the fleet.
#[utoipa::path(delete, path = "/fleets/{id}/attributes/shared", tag = "attributes",
    params(("id" = String, Path, description = "fleet id"), KeysParams),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_fleet_shared(
    State(s): S,
    On(id, _): On<Fleet, Operator>,
    ApiQuery(q): ApiQuery<KeysParams>,
) -> ApiResult<StatusCode> {
    let keys = split_keys(Some(&q.keys)).unwrap_or_default();
    s.attributes.delete_fleet(id, &keys).await?;
    Ok(StatusCode::NO_CONTENT)
}
