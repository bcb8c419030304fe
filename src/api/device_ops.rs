//! REST routes for work on many devices at once: bulk actions (`/devices/bulk`) over a list of
//! ids or a filter, each device authorized exactly as its own route would and answered with
//! its own result and audit record; CSV import (`/devices/import`) with a dry run that reports
//! every bad row by line and changes nothing; CSV export (`/devices/export`) of the filtered,
//! sorted table. The rules of each change stay with the services the single-device routes use.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ApiResult;
use super::authz::{Action, Caller};
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::registry::ListDevices;
use crate::audit::{Entry, operator};
use crate::data::table::{DeviceTable, SortKey};
use crate::devices::attributes::parse_body;
use crate::devices::credentials::{CredentialStatus, NewCredential};
use crate::devices::csv;
use crate::devices::import::{self, ImportRow, RowError};
use crate::devices::registry::{DevicePatch, DeviceStatus, NewDevice};
use crate::jobs::NewJob;
use crate::model::{AuditKind, DeviceId, Fleet, FleetId, Role, Scope, WorkspaceId};
use crate::services::Services;

type S = State<Arc<Services>>;

/// Most devices one bulk action changes.
pub const MAX_BULK: usize = 1000;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(bulk_devices))
        .routes(routes!(import_devices))
        .routes(routes!(export_devices))
}

/// What a bulk action does to each device.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BulkAction {
    /// Move to another fleet of the same workspace (operator on both fleets).
    Move { fleet_id: FleetId },
    /// Set the label (operator).
    Label { label: String },
    /// Set shared attributes, pushed to each device (operator).
    SetShared {
        #[schema(value_type = Object)]
        values: Map<String, Json>,
    },
    /// Send a command (a job, as `POST /devices/{id}/jobs`) (operator).
    Command {
        method: String,
        #[serde(default)]
        #[schema(value_type = Object)]
        params: Json,
        #[serde(default)]
        two_way: bool,
        #[serde(default)]
        ttl_secs: Option<u64>,
    },
    /// Enable (operator).
    Enable,
    /// Disable: sessions closed, logins refused (operator).
    Disable,
    /// Delete with everything the device holds (admin).
    Delete,
    /// Revoke every credential that is not revoked yet (operator).
    RevokeCredentials,
}

impl BulkAction {
    fn name(&self) -> &'static str {
        match self {
            Self::Move { .. } => "move",
            Self::Label { .. } => "label",
            Self::SetShared { .. } => "set_shared",
            Self::Command { .. } => "command",
            Self::Enable => "enable",
            Self::Disable => "disable",
            Self::Delete => "delete",
            Self::RevokeCredentials => "revoke_credentials",
        }
    }

    /// The role the single-device route of the same change needs.
    fn role(&self) -> Role {
        match self {
            Self::Delete => Role::Admin,
            _ => Role::Operator,
        }
    }
}

/// Devices chosen by the list's filters (as `GET /devices` takes them).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceSelection {
    pub workspace_id: Option<WorkspaceId>,
    pub fleet_id: Option<FleetId>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    /// Case-insensitive substring of the label.
    pub label: Option<String>,
    pub status: Option<DeviceStatus>,
    pub enabled: Option<bool>,
    /// Silent for at least this many minutes (1 to 5,256,000, ten years).
    #[schema(minimum = 1, maximum = 5_256_000)]
    pub silent_mins: Option<u64>,
    /// Reporting exactly this firmware version.
    pub firmware: Option<String>,
}

impl From<DeviceSelection> for ListDevices {
    fn from(s: DeviceSelection) -> Self {
        ListDevices {
            workspace_id: s.workspace_id,
            fleet_id: s.fleet_id,
            name: s.name,
            label: s.label,
            status: s.status,
            enabled: s.enabled,
            silent_mins: s.silent_mins,
            firmware: s.firmware,
            sort: Some(SortKey::Name),
            ..Default::default()
        }
    }
}

/// A bulk action: what to do, and to which devices (ids or a filter, not both).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    pub action: BulkAction,
    /// The devices by id, at most 1000.
    #[serde(default)]
    pub device_ids: Vec<DeviceId>,
    /// Or every device the caller sees that matches this filter (at most 1000 may match).
    #[serde(default)]
    pub filter: Option<DeviceSelection>,
    /// Check each device (that it exists and the caller may change it) and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// How the action went for one device.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkDeviceResult {
    pub device_id: DeviceId,
    /// The device's name, when the caller sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub ok: bool,
    /// The HTTP status the single-device route would have answered (200 when done).
    pub status: u16,
    /// The error code, when not done (`forbidden`, `not_found`, `name_taken`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The outcome of a bulk action, device by device.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkOutcome {
    pub action: String,
    pub dry_run: bool,
    /// Devices the request named or its filter matched.
    pub matched: usize,
    /// Devices changed (or, in a dry run, that would be).
    pub succeeded: usize,
    pub failed: usize,
    pub results: Vec<BulkDeviceResult>,
}

/// Act on many devices
///
/// Applies one action to each device named in `device_ids` or matched by `filter` (at most
/// 1000): `move` to a fleet, `label`, `set_shared` attributes, send a `command`, `enable`,
/// `disable`, `delete`, `revoke_credentials`. Each device is authorized exactly as its own
/// route would be (the operator role on its fleet, the admin role to delete; a device the
/// caller cannot see is `not_found`) and gets its own result; a refusal or failure for one
/// device does not stop the others. Every change is recorded in the audit log per device
/// (`api_change`, detail `bulk ACTION`), besides the records the change itself makes. With
/// `dry_run` the checks run and nothing changes, so a client can say how many devices an
/// action would affect. When the caller may change none of the devices the answer is the
/// refusal itself: 403 `forbidden`, or 404 `not_found` when they see none. Errors: 422
/// `invalid_field` (neither or both of `device_ids` and `filter`, attributes that cannot be
/// stored), 422 `too_many_devices` (over 1000), 403/404 for a move to a fleet the caller may
/// not use.
#[utoipa::path(post, path = "/devices/bulk", tag = "devices", request_body = BulkRequest,
    responses((status = 200, body = BulkOutcome), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn bulk_devices(
    State(s): S,
    caller: Caller,
    ApiJson(req): ApiJson<BulkRequest>,
) -> ApiResult<axum::Json<BulkOutcome>> {
    let invalid = |m: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            m.to_string(),
        )
    };
    let ids: Vec<DeviceId> = match (&req.filter, req.device_ids.is_empty()) {
        (Some(_), false) => return Err(invalid("give device_ids or a filter, not both")),
        (None, true) => return Err(invalid("name devices in device_ids or give a filter")),
        (None, false) => {
            let mut seen = HashSet::new();
            req.device_ids
                .iter()
                .copied()
                .filter(|d| seen.insert(*d))
                .collect()
        }
        (Some(f), true) => {
            let q = ListDevices::from(f.clone()).table(MAX_BULK)?;
            let who = caller.filters().clone();
            let s2 = s.clone();
            let (total, rows) = crate::workers::on_blocking_pool(move || async move {
                let t = DeviceTable {
                    registry: &s2.registry,
                    data: &s2.data,
                    attributes: &s2.attributes,
                };
                t.matching(&q, |d| who.sees_fleet(d.workspace_id, d.fleet_id))
                    .await
            })
            .await
            .map_err(ApiError::internal)??;
            if total as usize > MAX_BULK {
                return Err(too_many(total as usize));
            }
            rows.into_iter().map(|(v, _)| v.id).collect()
        }
    };
    if ids.len() > MAX_BULK {
        return Err(too_many(ids.len()));
    }
    // What is checked once for all devices, before any changes.
    let shared = match &req.action {
        BulkAction::SetShared { values } => parse_body(values.clone())?,
        _ => Vec::new(),
    };
    if let BulkAction::Move { fleet_id } = &req.action {
        caller
            .require(Action::Fleet(*fleet_id, Role::Operator))
            .await?;
    }
    let role = req.action.role();
    let mut results = Vec::with_capacity(ids.len());
    let mut refusals = Vec::new();
    for id in ids {
        if let Err(e) = caller.require(Action::Device(id, role)).await {
            results.push(failed(id, None, &e));
            refusals.push(e);
            continue;
        }
        let dev = match s.registry.find_device(id).await? {
            Some(d) => d,
            None => {
                let e = ApiError::not_found("device");
                results.push(failed(id, None, &e));
                continue;
            }
        };
        if req.dry_run {
            results.push(done(id, dev.name));
            continue;
        }
        match apply(&s, id, &req.action, &shared).await {
            Ok(()) => {
                s.audit.record(
                    Entry::new(AuditKind::ApiChange, operator())
                        .device(id)
                        .fleet(dev.fleet_id)
                        .detail(format!("bulk {}", req.action.name())),
                );
                results.push(done(id, dev.name));
            }
            Err(e) => results.push(failed(id, Some(dev.name), &e)),
        }
    }
    // A caller who may change none of the devices is refused as the single route would
    // refuse them: 403 when they see at least one, else 404.
    if !results.is_empty() && refusals.len() == results.len() {
        let e = refusals
            .into_iter()
            .find(|e| e.status == StatusCode::FORBIDDEN)
            .unwrap_or_else(|| ApiError::not_found("device"));
        return Err(e);
    }
    let succeeded = results.iter().filter(|r| r.ok).count();
    Ok(axum::Json(BulkOutcome {
        action: req.action.name().to_string(),
        dry_run: req.dry_run,
        matched: results.len(),
        succeeded,
        failed: results.len() - succeeded,
        results,
    }))
}

fn too_many(n: usize) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_many_devices",
        format!("{n} devices: one bulk action changes at most {MAX_BULK}; narrow the filter"),
    )
}

fn done(id: DeviceId, name: String) -> BulkDeviceResult {
    BulkDeviceResult {
        device_id: id,
        name: Some(name),
        ok: true,
        status: 200,
        code: None,
        message: None,
    }
}

fn failed(id: DeviceId, name: Option<String>, e: &ApiError) -> BulkDeviceResult {
    BulkDeviceResult {
        device_id: id,
        name,
        ok: false,
        status: e.status.as_u16(),
        code: Some(e.code.to_string()),
        message: Some(e.message.clone()),
    }
}

/// One device's change, through the service its own route uses.
async fn apply(
    s: &Services,
    id: DeviceId,
    action: &BulkAction,
    shared: &[(String, crate::model::Value)],
) -> ApiResult<()> {
    let patch = |p: DevicePatch| async move { s.registry.update_device(id, p).await.map(drop) };
    match action {
        BulkAction::Move { fleet_id } => {
            patch(DevicePatch {
                fleet_id: Some(*fleet_id),
                ..Default::default()
            })
            .await?
        }
        BulkAction::Label { label } => {
            patch(DevicePatch {
                label: Some(label.clone()),
                ..Default::default()
            })
            .await?
        }
        BulkAction::Enable | BulkAction::Disable => {
            patch(DevicePatch {
                enabled: Some(matches!(action, BulkAction::Enable)),
                ..Default::default()
            })
            .await?
        }
        BulkAction::SetShared { .. } => {
            s.attributes.set(id, Scope::Shared, shared.to_vec()).await?
        }
        BulkAction::Command {
            method,
            params,
            two_way,
            ttl_secs,
        } => {
            s.jobs
                .create(
                    id,
                    NewJob {
                        method: method.clone(),
                        params: params.clone(),
                        two_way: *two_way,
                        ttl_secs: *ttl_secs,
                        idempotency_key: None,
                    },
                )
                .await?;
        }
        BulkAction::Delete => s.registry.delete_device(id).await?,
        BulkAction::RevokeCredentials => {
            for c in s.credentials.list(id).await? {
                if c.status != CredentialStatus::Revoked {
                    s.credentials.revoke(id, c.id).await?;
                }
            }
        }
    }
    Ok(())
}

/// A CSV of devices to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The CSV text: a header line with `name` and any of `label`, `fleet` (a fleet's name or
    /// id), `token` (an access token; generated when no credential is given), `client_id`,
    /// `username` and `password` (MQTT basic credentials), `certificate_pem` (a device
    /// certificate to register, PEM, quoted), `gateway` (`true` for a gateway), `shared:KEY` and `server:KEY`
    /// (attribute values: `true`/`false`, numbers and JSON objects are typed, the rest is
    /// text; an empty cell sets nothing), then one device per line.
    pub csv: String,
    /// The fleet of rows whose `fleet` cell is empty or missing; it also names the workspace.
    #[serde(default)]
    pub fleet_id: Option<FleetId>,
    /// The workspace whose fleets the `fleet` cells name, when there is no `fleet_id`.
    #[serde(default)]
    pub workspace_id: Option<WorkspaceId>,
    /// Check every row and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A device the import created, with its access token (shown only here).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportedDevice {
    pub line: usize,
    pub device_id: DeviceId,
    pub name: String,
    pub fleet_id: FleetId,
    /// The access token, generated or given: shown only in this response.
    pub token: Option<String>,
}

/// What an import found and did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    pub dry_run: bool,
    /// Device rows in the file (the header and blank lines not counted).
    pub rows: usize,
    /// Rows without a problem.
    pub valid: usize,
    /// Every problem, by line (the header is line 1).
    pub errors: Vec<RowError>,
    /// The devices created (none in a dry run).
    pub created: Vec<ImportedDevice>,
}

/// The credential a row gives its device (and the column to blame for it), if any: a token,
/// MQTT basic credentials or a certificate (`import::read` lets a row give one at most).
fn row_credential(row: &ImportRow) -> Option<(&'static str, NewCredential)> {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if !row.token.is_empty() {
        Some((
            "token",
            NewCredential::AccessToken {
                token: Some(row.token.clone()),
            },
        ))
    } else if !row.client_id.is_empty() || !row.username.is_empty() {
        Some((
            if row.username.is_empty() {
                "client_id"
            } else {
                "username"
            },
            NewCredential::MqttBasic {
                client_id: some(&row.client_id),
                username: some(&row.username),
                password: some(&row.password),
            },
        ))
    } else if !row.certificate_pem.is_empty() {
        Some((
            "certificate_pem",
            NewCredential::X509Certificate {
                certificate_pem: row.certificate_pem.clone(),
            },
        ))
    } else {
        None
    }
}

/// A row that passed every check, ready to create.
struct Planned {
    row: ImportRow,
    fleet: FleetId,
    shared: Vec<(String, crate::model::Value)>,
    server: Vec<(String, crate::model::Value)>,
}

/// Import devices from CSV
///
/// Creates a device for each row of a CSV (header: `name`, and any of `label`, `fleet`,
/// `token`, `client_id`, `username`, `password`, `certificate_pem`, `gateway`, `shared:KEY`,
/// `server:KEY`; see the body's `csv`), with its attributes and one credential: the given
/// token, MQTT basic credentials or certificate, else a generated access token returned once. Fleets are named by name or
/// id within the workspace of `fleet_id` (the default fleet of rows without one) or of
/// `workspace_id`. Every row is checked first: its name (valid, not repeated in the file, not
/// taken in the workspace), its fleet (that it exists and the caller holds the operator role
/// on it), its label, credential (valid, one per row, not taken) and attribute values. With `dry_run` the
/// answer lists every bad row with its line and reason, and nothing changes; without it, any bad
/// row refuses the whole import (422 `invalid_rows`, the first problems in the message: run a dry
/// run for the full list), else every device is created. A row that fails while being created
/// (another client took its name meanwhile) is reported in `errors` and the rest go on. At most
/// 10000 rows. Errors: 403/404 for a `fleet_id` the caller may not use or a workspace they do not
/// see, 422 `invalid_field` (neither `fleet_id` nor `workspace_id`, or a fleet of another
/// workspace), 422 `invalid_rows`.
#[utoipa::path(post, path = "/devices/import", tag = "devices", request_body = ImportRequest,
    responses((status = 200, body = ImportReport), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn import_devices(
    State(s): S,
    caller: Caller,
    ApiJson(req): ApiJson<ImportRequest>,
) -> ApiResult<axum::Json<ImportReport>> {
    let invalid = |field: &'static str, m: &str| crate::error::Error::Invalid {
        field,
        message: m.to_string(),
    };
    let ws = match (req.fleet_id, req.workspace_id) {
        (Some(f), w) => {
            caller.require(Action::Fleet(f, Role::Operator)).await?;
            let fleet = s.registry.fleet(f).await?;
            if w.is_some_and(|w| w != fleet.workspace_id) {
                return Err(invalid("fleet_id", "the fleet belongs to another workspace").into());
            }
            fleet.workspace_id
        }
        (None, Some(w)) => {
            let who = caller.filters();
            if !who.sees_workspace(w) {
                return Err(ApiError::not_found("workspace"));
            }
            s.registry.workspace(w).await?;
            w
        }
        (None, None) => {
            return Err(invalid(
                "fleet_id",
                "name a default fleet (fleet_id) or the workspace (workspace_id)",
            )
            .into());
        }
    };
    let (rows, mut errors) = import::read(&req.csv);
    let total_rows = rows.len() + errors.iter().filter(|e| e.line > 1).count();
    let err = |line, column: &str, message: String| RowError {
        line,
        column: column.into(),
        message,
    };
    // The workspace's fleets by id and by name, and whether the caller may add devices to each
    // (asked once per fleet).
    let fleets = s
        .registry
        .list_fleets(Some(ws), None, None, usize::MAX)
        .await?
        .items;
    let by_key: HashMap<String, &Fleet> = fleets
        .iter()
        .flat_map(|f| [(f.id.to_string(), f), (f.name.to_lowercase(), f)])
        .collect();
    let mut allowed: HashMap<FleetId, Option<String>> = HashMap::new();
    let mut names = HashSet::new();
    let mut tokens = HashSet::new();
    let mut plan = Vec::new();
    for row in rows {
        let before = errors.len();
        let fleet = if row.fleet.is_empty() {
            match req.fleet_id {
                Some(f) => by_key.get(&f.to_string()).copied(),
                None => {
                    errors.push(err(
                        row.line,
                        "fleet",
                        "no fleet: fill the fleet column or choose a default fleet".into(),
                    ));
                    None
                }
            }
        } else {
            let f = by_key
                .get(&row.fleet)
                .or_else(|| by_key.get(&row.fleet.to_lowercase()))
                .copied();
            if f.is_none() {
                errors.push(err(
                    row.line,
                    "fleet",
                    format!("no fleet {:?} in this workspace", row.fleet),
                ));
            }
            f
        };
        if let Some(f) = fleet {
            let refusal = match allowed.get(&f.id) {
                Some(r) => r.clone(),
                None => {
                    let r = match caller.require(Action::Fleet(f.id, Role::Operator)).await {
                        Ok(()) => None,
                        Err(e) if e.status == StatusCode::NOT_FOUND => {
                            Some(format!("no fleet {:?} in this workspace", row.fleet))
                        }
                        Err(_) => Some(format!(
                            "adding devices to fleet {:?} needs the operator role on it",
                            f.name
                        )),
                    };
                    allowed.insert(f.id, r.clone());
                    r
                }
            };
            if let Some(m) = refusal {
                errors.push(err(row.line, "fleet", m));
            }
        }
        match crate::names::check(&row.name, crate::names::MAX_NAME) {
            Err(m) => errors.push(err(row.line, "name", m)),
            Ok(n) => {
                if !names.insert(n.to_lowercase()) {
                    errors.push(err(
                        row.line,
                        "name",
                        format!("{n:?} is given on an earlier line"),
                    ));
                } else if s.registry.device_by_name(ws, &n).await?.is_some() {
                    errors.push(err(
                        row.line,
                        "name",
                        format!("a device named {n:?} already exists in this workspace"),
                    ));
                }
            }
        }
        if row.label.chars().count() > 1024 {
            errors.push(err(row.line, "label", "at most 1024 characters".into()));
        }
        if let Some((column, cred)) = row_credential(&row) {
            // The same identity twice in one file is caught here; one another device holds,
            // or an invalid one, by the check.
            let identity = match &cred {
                NewCredential::AccessToken { token } => format!("t:{token:?}"),
                // The password is not part of who the device is: the same login twice clashes.
                NewCredential::MqttBasic {
                    client_id,
                    username,
                    ..
                } => format!("b:{client_id:?}:{username:?}"),
                other => format!("{other:?}"),
            };
            if !tokens.insert(identity) {
                errors.push(err(
                    row.line,
                    column,
                    "the same credential is given on an earlier line".into(),
                ));
            } else if let Err(e) = s.credentials.check_new(&cred).await {
                let m = match e {
                    crate::error::Error::Conflict(_) => {
                        "another device already uses this credential".to_string()
                    }
                    other => other.to_string(),
                };
                errors.push(err(row.line, column, m));
            }
        }
        let mut attrs = |scope: &str, m: &Map<String, Json>| match parse_body(m.clone()) {
            Ok(v) => v,
            Err(e) => {
                errors.push(err(row.line, &format!("{scope}:"), e.to_string()));
                Vec::new()
            }
        };
        let shared = attrs("shared", &row.shared);
        let server = attrs("server", &row.server);
        if errors.len() == before
            && let Some(f) = fleet
        {
            plan.push(Planned {
                fleet: f.id,
                row,
                shared,
                server,
            });
        }
    }
    errors.sort_by_key(|e| e.line);
    let valid = plan.len();
    if req.dry_run {
        return Ok(axum::Json(ImportReport {
            dry_run: true,
            rows: total_rows,
            valid,
            errors,
            created: Vec::new(),
        }));
    }
    if !errors.is_empty() {
        let first: Vec<String> = errors
            .iter()
            .take(5)
            .map(|e| format!("line {}: {}: {}", e.line, e.column, e.message))
            .collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rows",
            format!(
                "{} problem{} in the CSV, nothing imported ({}); a dry run lists them all",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                first.join("; ")
            ),
        ));
    }
    let mut created = Vec::with_capacity(plan.len());
    for p in plan {
        let new = NewDevice {
            fleet_id: p.fleet,
            name: p.row.name.clone(),
            label: p.row.label.clone(),
            credentials: row_credential(&p.row).map(|(_, c)| c),
            gateway: p.row.gateway,
            gateway_type_fleets: None,
        };
        let (dev, cred) = match s.credentials.create_device(new).await {
            Ok(x) => x,
            Err(e) => {
                errors.push(err(p.row.line, "row", e.to_string()));
                continue;
            }
        };
        for (scope, values) in [(Scope::Shared, p.shared), (Scope::Server, p.server)] {
            if !values.is_empty()
                && let Err(e) = s.attributes.set(dev.id, scope, values).await
            {
                errors.push(err(p.row.line, "row", e.to_string()));
            }
        }
        created.push(ImportedDevice {
            line: p.row.line,
            device_id: dev.id,
            name: dev.name,
            fleet_id: dev.fleet_id,
            token: cred.token,
        });
    }
    tracing::info!(devices = created.len(), "devices imported");
    Ok(axum::Json(ImportReport {
        dry_run: false,
        rows: total_rows,
        valid,
        errors,
        created,
    }))
}

/// Export devices as CSV
///
/// Returns the devices the caller sees that match the list's filters (the query parameters of
/// `GET /devices`, in the same order; `limit`, `offset` and `cursor` are checked as there, then
/// ignored: every matching device is exported) as CSV: `name`, `label`, `fleet`, `id`, `status`, `enabled`,
/// `last_activity` (RFC 3339), `firmware_version`, `created_at`, then one column per key in
/// `keys` with its latest value. The first three columns are those an import reads. Cells a
/// spreadsheet would run as formulas are prefixed with `'`. Any authenticated caller. Errors:
/// as `GET /devices`.
#[utoipa::path(get, path = "/devices/export", tag = "devices", params(ListDevices),
    responses((status = 200, description = "the devices as CSV", content_type = "text/csv", body = String),
        (status = 400, body = ErrorBody)))]
async fn export_devices(
    State(s): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListDevices>,
) -> ApiResult<axum::response::Response> {
    let who = caller.filters().clone();
    // Checked as the list checks them, so one query string means the same on both routes.
    super::page_limit(q.limit)?;
    if q.cursor
        .as_deref()
        .is_some_and(|c| c.parse::<uuid::Uuid>().is_err())
    {
        return Err(crate::error::Error::BadCursor.into());
    }
    let mut table = q.table(usize::MAX)?;
    table.offset = 0;
    let text = crate::workers::on_blocking_pool(move || async move {
        let t = DeviceTable {
            registry: &s.registry,
            data: &s.data,
            attributes: &s.attributes,
        };
        let (_, rows) = t
            .matching(&table, |d| who.sees_fleet(d.workspace_id, d.fleet_id))
            .await?;
        let mut fleet_names: HashMap<FleetId, String> = HashMap::new();
        let mut header: Vec<String> = [
            "name",
            "label",
            "fleet",
            "id",
            "status",
            "enabled",
            "last_activity",
            "firmware_version",
            "created_at",
        ]
        .map(String::from)
        .to_vec();
        header.extend(table.keys.iter().cloned());
        let mut out = csv::line(&header);
        for (v, fw) in rows {
            let row = t.row(v, fw, &table.keys).await?;
            let d = &row.device;
            if let std::collections::hash_map::Entry::Vacant(e) = fleet_names.entry(d.fleet_id) {
                let n = s.registry.fleet(d.fleet_id).await.map(|f| f.name);
                e.insert(n.unwrap_or_default());
            }
            let mut cells = vec![
                d.name.clone(),
                d.label.clone(),
                fleet_names[&d.fleet_id].clone(),
                d.id.to_string(),
                match d.status {
                    DeviceStatus::Online => "online".into(),
                    DeviceStatus::Offline => "offline".into(),
                },
                d.enabled.to_string(),
                d.last_activity_at.map(rfc3339).unwrap_or_default(),
                row.firmware_version.clone().unwrap_or_default(),
                rfc3339(d.created_at),
            ];
            for k in &table.keys {
                cells.push(match row.latest.get(k).map(|c| &c.value) {
                    None => String::new(),
                    Some(Json::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                });
            }
            out.push_str(&csv::line(&cells));
        }
        ApiResult::Ok(out)
    })
    .await
    .map_err(ApiError::internal)??;
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            "attachment; filename=\"corral-devices.csv\"",
        )
        .body(axum::body::Body::from(text))
        .map_err(ApiError::internal)
}

fn rfc3339(ts: crate::model::Millis) -> String {
    jiff::Timestamp::from_millisecond(ts)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
