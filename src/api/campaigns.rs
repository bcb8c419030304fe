//! REST routes for OTA campaigns: create (a draft), dry run, approve, start, pause, resume,
//! cancel, install (download-only campaigns), delete a draft, the emergency stop, and the
//! views: a campaign with its progress, its devices, and a device's OTA timeline. A campaign is
//! its fleet's: viewers read it, operators run it, and its approval is a workspace admin's
//! (another than the one who created it).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ApiResult;
use super::authz::{Action, Admin, Caller, Campaign, Device, On, Operator, ServerAdmin, Viewer};
use super::error::{ApiJson, ApiQuery, ErrorBody};
use super::registry::Page;
use crate::audit::operator;
use crate::model::{CampaignId, Cursor, FleetId, OtaState, Role};
use crate::ota::{CampaignView, DeviceUpdateView, DryRun, NewCampaign};
use crate::services::Services;

type S = State<Arc<Services>>;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(list_campaigns, create_campaign))
        .routes(routes!(dry_run))
        .routes(routes!(get_campaign, delete_campaign))
        .routes(routes!(approve_campaign))
        .routes(routes!(start_campaign))
        .routes(routes!(pause_campaign))
        .routes(routes!(resume_campaign))
        .routes(routes!(cancel_campaign))
        .routes(routes!(install_campaign))
        .routes(routes!(stop_all))
        .routes(routes!(campaign_devices))
        .routes(routes!(device_ota))
}

/// Which campaigns to list.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CampaignFilter {
    /// Only this fleet's campaigns.
    #[serde(default)]
    pub fleet_id: Option<FleetId>,
}

/// Which devices of a campaign to list.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceStateFilter {
    /// Only devices in this state.
    #[serde(default)]
    #[param(value_type = Option<OtaState>)]
    pub state: Option<OtaState>,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[param(value_type = Option<uuid::Uuid>)]
    pub cursor: Option<String>,
}

/// The campaigns the emergency stop paused.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Stopped {
    pub paused: Vec<CampaignId>,
}

/// List campaigns
///
/// Campaigns the caller sees (viewer role on their fleet), newest first, each with its
/// progress: devices per state, its waves, and up to 50 devices that failed with their reason.
#[utoipa::path(get, path = "/campaigns", tag = "ota", params(CampaignFilter),
    responses((status = 200, body = Vec<CampaignView>), (status = 404, body = ErrorBody)))]
async fn list_campaigns(
    State(s): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<CampaignFilter>,
) -> ApiResult<axum::Json<Vec<CampaignView>>> {
    if let Some(f) = q.fleet_id {
        caller.require(Action::Fleet(f, Role::Viewer)).await?;
    }
    let who = caller.filters().clone();
    let mut fleets = super::auth::SeenFleets::new(&s, &who);
    let mut out = Vec::new();
    for c in s.campaigns.list(q.fleet_id).await? {
        if fleets.sees(c.fleet_id).await {
            out.push(c);
        }
    }
    Ok(axum::Json(out))
}

/// Create a campaign
///
/// Creates a campaign as a draft: nothing is sent until it starts (`POST
/// /campaigns/{id}/start`), and, when it needs approval (`require_approval`, or `[ota]
/// require_approval`), until another admin approved it. Its targets are the enabled devices of
/// the fleet that pass `filter` (or are in `device_ids`), fixed when it starts. Needs the
/// operator role on the fleet. Recorded in the audit log (`campaign_created`). Errors: 404
/// (fleet, package), 422 `invalid_field` (a rule out of range, a package of another fleet, a
/// window that does not parse, a rollback with no other target package).
#[utoipa::path(post, path = "/campaigns", tag = "ota", request_body = NewCampaign,
    responses((status = 201, body = CampaignView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn create_campaign(
    State(s): S,
    caller: Caller,
    ApiJson(new): ApiJson<NewCampaign>,
) -> ApiResult<(StatusCode, axum::Json<CampaignView>)> {
    caller
        .require(Action::Fleet(new.fleet_id, Role::Operator))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(s.campaigns.create(new, &operator()).await?),
    ))
}

/// Dry-run a campaign
///
/// What a campaign with this body would do, without storing or sending anything: its targets
/// (and how many already run the package's version), its waves, the first devices in the order
/// they would start, when the last device would start under the rate, the soak times and the
/// window, and notes (a closed window, a risky checksum algorithm, a device busy in another
/// campaign). Needs the operator role on the fleet.
#[utoipa::path(post, path = "/campaigns/dry-run", tag = "ota", request_body = NewCampaign,
    responses((status = 200, body = DryRun), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn dry_run(
    State(s): S,
    caller: Caller,
    ApiJson(new): ApiJson<NewCampaign>,
) -> ApiResult<axum::Json<DryRun>> {
    caller
        .require(Action::Fleet(new.fleet_id, Role::Operator))
        .await?;
    Ok(axum::Json(s.campaigns.dry_run(new, &operator()).await?))
}

/// Get a campaign
///
/// One campaign with its progress. Needs the viewer role on its fleet.
#[utoipa::path(get, path = "/campaigns/{id}", tag = "ota",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody)))]
async fn get_campaign(
    State(s): S,
    On(id, _): On<Campaign, Viewer>,
) -> ApiResult<axum::Json<CampaignView>> {
    Ok(axum::Json(s.campaigns.get(id).await?))
}

/// Delete a draft campaign
///
/// Only a draft is deleted; a campaign that started is kept as history (cancel it instead).
/// Needs the operator role on its fleet. Errors: 409 (not a draft).
#[utoipa::path(delete, path = "/campaigns/{id}", tag = "ota",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_campaign(State(s): S, On(id, _): On<Campaign, Operator>) -> ApiResult<StatusCode> {
    s.campaigns.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Approve a campaign
///
/// Approves a draft that needs approval. The approver is an admin of the fleet's workspace
/// other than the user who created the campaign (403 otherwise). Recorded in the audit log
/// (`campaign_approved`). Errors: 409 (not a draft, or no approval needed).
#[utoipa::path(post, path = "/campaigns/{id}/approve", tag = "ota",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn approve_campaign(
    State(s): S,
    On(id, _): On<Campaign, Admin>,
) -> ApiResult<axum::Json<CampaignView>> {
    Ok(axum::Json(s.campaigns.approve(id, &operator()).await?))
}

/// Start a campaign
///
/// Starts a draft: its targets and waves are fixed, and its first wave starts. A device may be
/// in one running campaign of each type. Needs the operator role on its fleet. Recorded in the
/// audit log (`campaign_started`). Errors: 409 (not a draft, approval missing, a target busy in
/// another campaign).
#[utoipa::path(post, path = "/campaigns/{id}/start", tag = "ota",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn start_campaign(
    State(s): S,
    On(id, _): On<Campaign, Operator>,
) -> ApiResult<axum::Json<CampaignView>> {
    Ok(axum::Json(s.campaigns.start(id, &operator()).await?))
}

/// Pause a campaign
///
/// No more devices start; devices already updating go on and are followed (their deadlines
/// still apply). Needs the operator role on its fleet. Errors: 409 (not running).
#[utoipa::path(post, path = "/campaigns/{id}/pause", tag = "ota",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn pause_campaign(
    State(s): S,
    On(id, _): On<Campaign, Operator>,
) -> ApiResult<axum::Json<CampaignView>> {
    Ok(axum::Json(s.campaigns.pause(id, &operator()).await?))
}

/// Resume a campaign
///
/// Resumes a paused campaign. After the error threshold paused it, the threshold counts the
/// devices that finish from now on; after a wave ended below its success gate, the next wave
/// starts. Needs the operator role on its fleet. Errors: 409 (not paused).
#[utoipa::path(post, path = "/campaigns/{id}/resume", tag = "ota",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn resume_campaign(
    State(s): S,
    On(id, _): On<Campaign, Operator>,
) -> ApiResult<axum::Json<CampaignView>> {
    Ok(axum::Json(s.campaigns.resume(id, &operator()).await?))
}

/// Cancel a campaign
///
/// Devices not told of the package yet are cancelled; devices already updating are followed
/// until they finish. Needs the operator role on its fleet. Errors: 409 (already finished).
#[utoipa::path(post, path = "/campaigns/{id}/cancel", tag = "ota",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn cancel_campaign(
    State(s): S,
    On(id, _): On<Campaign, Operator>,
) -> ApiResult<axum::Json<CampaignView>> {
    Ok(axum::Json(s.campaigns.cancel(id, &operator()).await?))
}

/// Send a download-only campaign's install command
///
/// Devices that downloaded the package get the install command (an RPC `fw_install`, or
/// `sw_install`, with the title and version, and their `fw_download_only` attribute set to
/// `false`); devices that finish their download later get it then. Needs the operator role on
/// its fleet. Errors: 409 (not a download-only campaign, already sent, finished).
#[utoipa::path(post, path = "/campaigns/{id}/install", tag = "ota",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn install_campaign(
    State(s): S,
    On(id, _): On<Campaign, Operator>,
) -> ApiResult<axum::Json<CampaignView>> {
    Ok(axum::Json(s.campaigns.install(id, &operator()).await?))
}

/// Emergency stop
///
/// Pauses every running campaign at once (devices already updating go on). Server admins only.
/// Recorded in the audit log (`campaigns_stopped`).
#[utoipa::path(post, path = "/campaigns/stop", tag = "ota",
    responses((status = 200, body = Stopped), (status = 403, body = ErrorBody)))]
async fn stop_all(State(s): S, _: ServerAdmin) -> ApiResult<axum::Json<Stopped>> {
    Ok(axum::Json(Stopped {
        paused: s.campaigns.stop_all(&operator()).await?,
    }))
}

/// List a campaign's devices
///
/// Each device's update, in device id order: its name, wave, state, attempts, deadline, the
/// version it last reported, its error and its timeline. Filter by `state`; pass the page's
/// `next_cursor` as `cursor` for the next page. Needs the viewer role on the fleet. Errors: 400
/// `invalid_cursor`, 400 `invalid_limit`, 404.
#[utoipa::path(get, path = "/campaigns/{id}/devices", tag = "ota",
    params(("id" = String, Path, description = "campaign id"), DeviceStateFilter),
    responses((status = 200, body = Page<DeviceUpdateView>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn campaign_devices(
    State(s): S,
    On(id, _): On<Campaign, Viewer>,
    ApiQuery(q): ApiQuery<DeviceStateFilter>,
) -> ApiResult<axum::Json<Page<DeviceUpdateView>>> {
    let limit = super::page_limit(q.limit)?;
    let cursor = q.cursor.filter(|c| !c.is_empty()).map(Cursor::new);
    let p = s
        .campaigns
        .devices(id, q.state, cursor.as_ref(), limit)
        .await?;
    Ok(axum::Json(super::registry::page(p, |v| v)))
}

/// A device's OTA timeline
///
/// The device's update in every campaign that targeted it, newest first, each with every
/// transition it went through. Needs the viewer role on the device's fleet.
#[utoipa::path(get, path = "/devices/{id}/ota", tag = "ota",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<DeviceUpdateView>), (status = 404, body = ErrorBody)))]
async fn device_ota(
    State(s): S,
    On(id, _): On<Device, Viewer>,
) -> ApiResult<axum::Json<Vec<DeviceUpdateView>>> {
    Ok(axum::Json(s.campaigns.device_history(id).await?))
}
