//! REST routes for device credentials (`/devices/{id}/credentials`, `/devices/{id}/csr`),
//! fleet provisioning keys and manufacturer CAs (`/fleets/{id}/provisioning`, `/fleets/{id}/cas`)
//! and the audit log (`/audit`). ThingsBoard's unauthenticated device provisioning endpoint
//! (`POST /api/v1/provision`) is `provision`, mounted outside the admin routes.

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::authz::{Caller, Device, Fleet, FleetSettings, On, Operator, Viewer};
use super::error::{ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::registry::{Page, page};
use super::{ApiResult, page_limit};
use crate::audit::AuditEventView;
use crate::audit::AuditFilter;
use crate::devices::credentials::{
    CredentialView, IssuedCredential, NewCredential, NewFleetCa, RotateRequest,
};
use crate::devices::provisioning::{ProvisioningSecret, ProvisioningSettings};
use crate::devices::views::FleetCaView;
use crate::model::{
    AuditEvent, CredentialId, Cursor, DeviceId, FleetCaId, FleetId, ProvisioningView,
};
use crate::services::Services;

type S = State<Arc<Services>>;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(list_credentials, add_credential))
        .routes(routes!(delete_credential))
        .routes(routes!(rotate_credential))
        .routes(routes!(revoke_credential))
        .routes(routes!(sign_csr))
        .routes(routes!(
            get_provisioning,
            set_provisioning,
            delete_provisioning
        ))
        .routes(routes!(list_fleet_cas, add_fleet_ca))
        .routes(routes!(delete_fleet_ca))
        .routes(routes!(list_audit))
}

/// List a device's credentials
///
/// Returns every credential of the device, revoked and expired ones included, each with its type,
/// status (`active`, `expiring`, `expired` or `revoked`) and identifying details. Secrets and
/// hashes are never returned. Needs the viewer role on the device's fleet.
#[utoipa::path(get, path = "/devices/{id}/credentials", tag = "credentials",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<CredentialView>), (status = 404, body = ErrorBody)))]
async fn list_credentials(
    State(s): S,
    On(id, _): On<Device, Viewer>,
) -> ApiResult<axum::Json<Vec<CredentialView>>> {
    Ok(axum::Json(s.credentials.list(id).await?))
}

/// Add a credential to a device
///
/// Adds a credential to a device alongside those it has: an access token (given or generated), MQTT
/// basic credentials, a registered certificate or public key, a certificate issued by Corral's CA,
/// or one signed from the device's CSR. Generated secrets (token, private key) are returned only in
/// this response. Recorded in the audit log (`credential_issued`). Needs the operator role on the
/// device's fleet. Errors: 409 `credential_taken` (another device already answers to it), 422
/// `invalid_field`.
#[utoipa::path(post, path = "/devices/{id}/credentials", tag = "credentials",
    params(("id" = String, Path, description = "device id")), request_body = NewCredential,
    responses((status = 201, body = IssuedCredential), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn add_credential(
    State(s): S,
    On(id, _): On<Device, Operator>,
    ApiJson(body): ApiJson<NewCredential>,
) -> ApiResult<(StatusCode, axum::Json<IssuedCredential>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.credentials.add(id, body).await?),
    ))
}

/// Delete a device credential
///
/// Deletes a credential for good, freeing its token, identifiers or certificate for reuse, and
/// closes the device's sessions that logged in with it. Recorded in the audit log
/// (`credential_deleted`). To stop a credential while keeping its record, revoke it instead. Needs
/// the operator role on the device's fleet.
#[utoipa::path(delete, path = "/devices/{id}/credentials/{credential_id}", tag = "credentials",
    params(("id" = String, Path, description = "device id"), ("credential_id" = String, Path, description = "credential id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_credential(
    State(s): S,
    _: On<Device, Operator>,
    ApiPath((id, cid)): ApiPath<(DeviceId, CredentialId)>,
) -> ApiResult<StatusCode> {
    s.credentials.delete(id, cid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate a device credential
///
/// Issues a new credential of the same kind and returns it with its secrets (shown only here). The
/// old credential keeps working for `grace_secs` (the configured default when absent), then
/// expires; with 0 its sessions are closed at once. A CSR-signed certificate needs the device's new
/// `csr_pem`, a registered certificate the new `certificate_pem`; the body may be empty for tokens
/// and issued certificates. Recorded in the audit log (`credential_rotated`). Needs the operator
/// role on the device's fleet. Errors: 400 `invalid_body`, 409 `conflict` (the credential is
/// revoked), 409 `credential_taken`, 422 `invalid_field`, 422 `unsupported` (MQTT basic credentials
/// and public keys: add the new one and revoke the old one).
#[utoipa::path(post, path = "/devices/{id}/credentials/{credential_id}/rotate", tag = "credentials",
    params(("id" = String, Path, description = "device id"), ("credential_id" = String, Path, description = "credential id")),
    request_body = Option<RotateRequest>,
    responses((status = 201, body = IssuedCredential), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn rotate_credential(
    State(s): S,
    _: On<Device, Operator>,
    ApiPath((id, cid)): ApiPath<(DeviceId, CredentialId)>,
    super::error::ApiBytes(body): super::error::ApiBytes,
) -> ApiResult<(StatusCode, axum::Json<IssuedCredential>)> {
    // The body is optional (absent or `null`): a token or an issued certificate needs nothing.
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        let bad = |e: String| super::ApiError::bad_request("invalid_body", e);
        match serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))? {
            serde_json::Value::Null => RotateRequest::default(),
            v @ serde_json::Value::Object(_) => {
                super::json::from_value(v).map_err(|e| bad(e.to_string()))?
            }
            _ => return Err(bad("the body must be a JSON object or null".into())),
        }
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(s.credentials.rotate(id, cid, req).await?),
    ))
}

/// Revoke a device credential
///
/// Revokes a credential now: it can no longer log in, the device's sessions that used it are
/// closed, and a certificate that Corral's CA issued or signed goes on the revocation list
/// (`/api/v1/crl.pem`). The record stays, with status `revoked`; revoking again changes nothing.
/// Recorded in the audit log (`credential_revoked`). Needs the operator role on the device's fleet.
#[utoipa::path(post, path = "/devices/{id}/credentials/{credential_id}/revoke", tag = "credentials",
    params(("id" = String, Path, description = "device id"), ("credential_id" = String, Path, description = "credential id")),
    responses((status = 200, body = CredentialView), (status = 404, body = ErrorBody)))]
async fn revoke_credential(
    State(s): S,
    _: On<Device, Operator>,
    ApiPath((id, cid)): ApiPath<(DeviceId, CredentialId)>,
) -> ApiResult<axum::Json<CredentialView>> {
    Ok(axum::Json(s.credentials.revoke(id, cid).await?))
}

/// A certificate signing request from a device that keeps its key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// The device's PKCS#10 certificate signing request, PEM (EC or RSA key).
    pub csr_pem: String,
    /// Days the certificate is valid, 1 to 36500; the server's default for device certificates when
    /// absent.
    #[serde(default)]
    pub validity_days: Option<u32>,
}

/// Sign a device's certificate request
///
/// Corral's CA signs the device's certificate signing request (PEM, EC or RSA) and adds the
/// certificate as a credential of the device; the device keeps its private key. Returns the
/// certificate and the CA certificate. `validity_days` is 1 to 36500 (the configured default when
/// absent). Recorded in the audit log (`credential_issued`). Needs the operator role on the
/// device's fleet. Errors: 409 `credential_taken`, 422 `invalid_field`.
#[utoipa::path(post, path = "/devices/{id}/csr", tag = "credentials",
    params(("id" = String, Path, description = "device id")), request_body = CsrRequest,
    responses((status = 201, body = IssuedCredential), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn sign_csr(
    State(s): S,
    On(id, _): On<Device, Operator>,
    ApiJson(body): ApiJson<CsrRequest>,
) -> ApiResult<(StatusCode, axum::Json<IssuedCredential>)> {
    let new = NewCredential::Csr {
        csr_pem: body.csr_pem,
        validity_days: body.validity_days,
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(s.credentials.add(id, new).await?),
    ))
}

/// Get a fleet's provisioning key
///
/// Returns the fleet's provisioning key and strategy, never its secret. Needs the admin role on the
/// fleet's whole workspace. Answers 404 `not_found` when the fleet has no provisioning key.
#[utoipa::path(get, path = "/fleets/{id}/provisioning", tag = "provisioning",
    params(("id" = String, Path, description = "fleet id")),
    responses((status = 200, body = ProvisioningView), (status = 404, body = ErrorBody)))]
async fn get_provisioning(
    State(s): S,
    FleetSettings(id): FleetSettings,
) -> ApiResult<axum::Json<ProvisioningView>> {
    Ok(axum::Json(s.provisioning.get(id).await?))
}

/// Set a fleet's provisioning key
///
/// Sets or replaces the key and secret that devices present to provision themselves into this fleet
/// (ThingsBoard device provisioning), with the strategy that decides whether new devices may be
/// created. A key or secret left out is generated (20 characters); given ones are 8 to 256
/// characters. The secret is returned only in this response; a replaced key stops working. Recorded
/// in the audit log (`provisioning_key_set`). Needs the admin role on the fleet's whole workspace.
/// Errors: 409 `conflict` (another fleet uses the key), 422 `invalid_field`.
#[utoipa::path(put, path = "/fleets/{id}/provisioning", tag = "provisioning",
    params(("id" = String, Path, description = "fleet id")), request_body = ProvisioningSettings,
    responses((status = 200, body = ProvisioningSecret), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set_provisioning(
    State(s): S,
    FleetSettings(id): FleetSettings,
    ApiJson(body): ApiJson<ProvisioningSettings>,
) -> ApiResult<axum::Json<ProvisioningSecret>> {
    Ok(axum::Json(s.provisioning.set(id, body).await?))
}

/// Remove a fleet's provisioning key
///
/// Removes the fleet's provisioning key: devices can no longer provision themselves into it.
/// Devices provisioned before keep their credentials. Recorded in the audit log
/// (`provisioning_key_removed`). Needs the admin role on the fleet's whole workspace. Answers 404
/// `not_found` when the fleet has no provisioning key.
#[utoipa::path(delete, path = "/fleets/{id}/provisioning", tag = "provisioning",
    params(("id" = String, Path, description = "fleet id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_provisioning(
    State(s): S,
    FleetSettings(id): FleetSettings,
) -> ApiResult<StatusCode> {
    s.provisioning.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a fleet's manufacturer CAs
///
/// Returns the manufacturer CA certificates registered on the fleet. Needs the viewer role on the
/// fleet.
#[utoipa::path(get, path = "/fleets/{id}/cas", tag = "provisioning",
    params(("id" = String, Path, description = "fleet id")),
    responses((status = 200, body = Vec<FleetCaView>), (status = 404, body = ErrorBody)))]
async fn list_fleet_cas(
    State(s): S,
    On(id, _): On<Fleet, Viewer>,
) -> ApiResult<axum::Json<Vec<FleetCaView>>> {
    let cas = s.credentials.fleet_cas(id).await?;
    Ok(axum::Json(cas.iter().map(FleetCaView::from).collect()))
}

/// Register a manufacturer CA on a fleet
///
/// Registers a CA certificate (PEM) on the fleet: a device presenting a client certificate this CA
/// signed joins the fleet on its first connect. The name defaults to the certificate's subject.
/// Recorded in the audit log (`manufacturer_ca_added`). Needs the admin role on the fleet's whole
/// workspace. Errors: 409 `conflict` (the CA is already registered on a fleet), 422 `invalid_field`
/// (not a CA certificate, unreadable or expired).
#[utoipa::path(post, path = "/fleets/{id}/cas", tag = "provisioning",
    params(("id" = String, Path, description = "fleet id")), request_body = NewFleetCa,
    responses((status = 201, body = FleetCaView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn add_fleet_ca(
    State(s): S,
    FleetSettings(id): FleetSettings,
    ApiJson(body): ApiJson<NewFleetCa>,
) -> ApiResult<(StatusCode, axum::Json<FleetCaView>)> {
    let ca = s.credentials.add_fleet_ca(id, body).await?;
    Ok((StatusCode::CREATED, axum::Json(FleetCaView::from(&ca))))
}

/// Remove a manufacturer CA from a fleet
///
/// Removes a manufacturer CA from the fleet: devices it signed can no longer join the fleet.
/// Devices that already joined keep their certificate credentials. Recorded in the audit log
/// (`manufacturer_ca_removed`). Needs the admin role on the fleet's whole workspace.
#[utoipa::path(delete, path = "/fleets/{id}/cas/{ca_id}", tag = "provisioning",
    params(("id" = String, Path, description = "fleet id"), ("ca_id" = String, Path, description = "CA id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_fleet_ca(
    State(s): S,
    _: FleetSettings,
    ApiPath((id, ca)): ApiPath<(FleetId, FleetCaId)>,
) -> ApiResult<StatusCode> {
    s.credentials.delete_fleet_ca(id, ca).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only records about this device.
    device_id: Option<DeviceId>,
    /// Only records about this fleet.
    fleet_id: Option<FleetId>,
    /// Event kind, e.g. `auth_failed`, `credential_revoked`.
    kind: Option<String>,
    /// Who acted: a username, `api-key:NAME`, `device`.
    actor: Option<String>,
    /// Only events at or after this time (ms since the epoch).
    since: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page (pages go from newest to oldest).
    #[param(value_type = Option<uuid::Uuid>)]
    cursor: Option<String>,
}

/// List audit events
///
/// Returns audit records (credential, device, user and API changes, sign-ins and refused
/// authentications), newest first, a page at a time; pass `next_cursor` as `cursor` for older
/// records. Filter by `device_id`, `fleet_id`, `kind`, `actor` and `since`. Any authenticated
/// caller may list, but only server admins see every record: other users see only records of fleets
/// they hold the admin role on. Errors: 400 `invalid_cursor`, 400 `invalid_limit`.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Page<AuditEventView>)))]
async fn list_audit(
    State(s): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> ApiResult<axum::Json<Page<AuditEventView>>> {
    let who = caller.filters();
    let f = AuditFilter {
        device_id: q.device_id,
        fleet_id: q.fleet_id,
        kind: q.kind,
        actor: q.actor,
        since: q.since,
    };
    // Server admins read everything; others the records of fleets they administer, which
    // their grants name (a workspace-wide grant: every fleet of the workspace).
    let mut administered = std::collections::HashSet::new();
    if !who.admin {
        for g in who
            .grants
            .iter()
            .filter(|g| g.role == crate::model::Role::Admin)
        {
            match &g.fleets {
                Some(fleets) => administered.extend(fleets.iter().copied()),
                None => {
                    let mut after = None;
                    loop {
                        let page = s
                            .registry
                            .list_fleets(Some(g.workspace_id), None, after.as_ref(), 1000)
                            .await?;
                        administered.extend(page.items.iter().map(|f| f.id));
                        match page.next_cursor {
                            Some(c) => after = Some(c),
                            None => break,
                        }
                    }
                }
            }
        }
    }
    let admin_of =
        |e: &AuditEvent| who.admin || e.fleet_id.is_some_and(|f| administered.contains(&f));
    let p = s
        .audit
        .list_where(
            &f,
            q.cursor.map(Cursor::new).as_ref(),
            page_limit(q.limit)?,
            admin_of,
        )
        .await?;
    Ok(axum::Json(page(p, AuditEventView::from)))
}

/// ThingsBoard's HTTP provisioning (§5.9): always 200 with the TB response body, since the
/// SDK raises on an HTTP error status before reading `errorMsg`.
pub async fn provision(
    State(s): S,
    req: axum::extract::Request,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    // Each request costs an argon2 check: the per-address connection rate applies here too.
    if let Some(p) = peer
        && !s.connect_limiter.allow(&p.ip())
    {
        let body = serde_json::json!({"status": "FAILURE", "errorMsg": "Too many requests!"});
        return (StatusCode::TOO_MANY_REQUESTS, axum::Json(body));
    }
    // A provisioning request is a few hundred bytes; the device packet limit applies, as over
    // MQTT.
    let limit = s.config.mqtt.max_packet_size as usize;
    let body = match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => b,
        Err(e) if super::error::is_length_limit(&e) => {
            let msg = format!("Payload too large: the limit is {limit} bytes");
            let body = serde_json::json!({"status": "FAILURE", "errorMsg": msg});
            return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body));
        }
        Err(_) => Default::default(),
    };
    (
        StatusCode::OK,
        axum::Json(s.provisioning.provision(&body, peer).await),
    )
}
