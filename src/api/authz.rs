//! Typed authorization for `/api/v1`: every handler states the action it performs, beside its
//! route, in one of two ways.
//!
//! - **An extractor** naming the object its path resolves to and the least role it needs on it,
//!   e.g. `On<Device, Operator>` or `FleetSettings`. Extractors run before the body is read, so a
//!   caller without the role is refused (403, or 404 when they cannot see the object) before
//!   any validation of the body, and the handler receives the parsed id.
//! - **An explicit call** on `Caller` where the object is named in the body or the query (the
//!   creates, export), or where the handler filters what it returns to what the caller sees
//!   (`Caller::filters`, for lists and the caller's own session).
//!
//! `enforce` wraps every authenticated route: a handler that answers with a success without
//! having done either is a bug, so its response is replaced with a 500 and logged. The role
//! matrix test (`tests/it/authz.rs`), which calls every route of the OpenAPI document, fails on it.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::auth::Principal;
use crate::error::Error;
use crate::model::{
    ConditionId, DeviceId, FleetId, FleetJobId, JobId, Role, ScheduleId, UserId, WorkspaceId,
};
use crate::services::Services;

/// Set once the handler's authorization was checked (see `enforce`).
#[derive(Clone, Default)]
struct Checked(Arc<AtomicBool>);

fn mark_checked(parts: &Parts) {
    if let Some(c) = parts.extensions.get::<Checked>() {
        c.0.store(true, Ordering::Relaxed);
    }
}

/// Refuses, with a 500, a success from a handler that checked no authorization.
pub async fn enforce(mut req: Request, next: Next) -> Response {
    let checked = Checked::default();
    req.extensions_mut().insert(checked.clone());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    if !checked.0.load(Ordering::Relaxed) && (status.is_success() || status.is_redirection()) {
        tracing::error!(%method, %route, %status, "a route answered without checking authorization; refused");
        return ApiError::internal(format!(
            "{method} {route} checks no authorization (a bug in this server)"
        ))
        .into_response();
    }
    resp
}

fn forbidden(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("your role does not allow this: {what}"),
    )
}

/// The least role an action needs.
pub trait RoleMark: Send + Sync + 'static {
    const ROLE: Role;
}
/// Reading.
pub struct Viewer;
/// Changing devices and their data, sending commands.
pub struct Operator;
/// Settings of a workspace, its fleets and their trust.
pub struct Admin;
impl RoleMark for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl RoleMark for Operator {
    const ROLE: Role = Role::Operator;
}
impl RoleMark for Admin {
    const ROLE: Role = Role::Admin;
}

/// Where an object sits, which decides who may act on it.
pub enum Scope {
    Fleet(WorkspaceId, FleetId),
    /// Objects of a whole workspace (a workspace's dashboards): roles on the workspace, and
    /// invisible to users limited to some of its fleets.
    Workspace(WorkspaceId),
    /// Objects of no fleet (a schedule without target): server admins only.
    Server,
}

/// An object a path's `id` names.
pub trait Object: Send + Sync + 'static {
    type Id: std::str::FromStr + Copy + Send;
    /// What a 404 calls it.
    const WHAT: &'static str;
    fn scope(
        s: &Services,
        id: Self::Id,
    ) -> impl std::future::Future<Output = Result<Scope, Error>> + Send;
}

async fn device_scope(s: &Services, id: DeviceId) -> Result<Scope, Error> {
    let d = s.registry.device_record(id).await?;
    Ok(Scope::Fleet(d.workspace_id, d.fleet_id))
}

async fn fleet_scope(s: &Services, id: FleetId) -> Result<Scope, Error> {
    let f = s.registry.fleet(id).await?;
    Ok(Scope::Fleet(f.workspace_id, f.id))
}

/// A device (`/devices/{id}`…).
pub struct Device;
impl Object for Device {
    type Id = DeviceId;
    const WHAT: &'static str = "device";
    async fn scope(s: &Services, id: DeviceId) -> Result<Scope, Error> {
        device_scope(s, id).await
    }
}

/// A fleet (`/fleets/{id}`…).
pub struct Fleet;
impl Object for Fleet {
    type Id = FleetId;
    const WHAT: &'static str = "fleet";
    async fn scope(s: &Services, id: FleetId) -> Result<Scope, Error> {
        fleet_scope(s, id).await
    }
}

/// A device's job: its device's fleet decides.
pub struct Job;
impl Object for Job {
    type Id = JobId;
    const WHAT: &'static str = "job";
    async fn scope(s: &Services, id: JobId) -> Result<Scope, Error> {
        device_scope(s, s.jobs.get(id).await?.device_id).await
    }
}

/// A fleet rollout: its fleet decides.
pub struct FleetJob;
impl Object for FleetJob {
    type Id = FleetJobId;
    const WHAT: &'static str = "fleet job";
    async fn scope(s: &Services, id: FleetJobId) -> Result<Scope, Error> {
        fleet_scope(s, s.jobs.fleet_job_record(id).await?.fleet_id).await
    }
}

/// An OTA campaign: its fleet decides.
pub struct Campaign;
impl Object for Campaign {
    type Id = crate::model::CampaignId;
    const WHAT: &'static str = "campaign";
    async fn scope(s: &Services, id: crate::model::CampaignId) -> Result<Scope, Error> {
        fleet_scope(s, s.campaigns.record(id).await?.fleet_id).await
    }
}

/// A condition: its device's fleet decides.
pub struct Condition;
impl Object for Condition {
    type Id = ConditionId;
    const WHAT: &'static str = "condition";
    async fn scope(s: &Services, id: ConditionId) -> Result<Scope, Error> {
        device_scope(s, s.conditions.get(id).await?.device_id).await
    }
}

/// A schedule: the fleet of its device or fleet decides.
pub struct Schedule;
impl Object for Schedule {
    type Id = ScheduleId;
    const WHAT: &'static str = "schedule";
    async fn scope(s: &Services, id: ScheduleId) -> Result<Scope, Error> {
        let sc = s.jobs.schedule(id).await?;
        match (sc.device_id, sc.fleet_id) {
            (Some(d), _) => device_scope(s, d).await,
            (_, Some(f)) => fleet_scope(s, f).await,
            _ => Ok(Scope::Server),
        }
    }
}

/// A dashboard: its fleet decides, or for a workspace's dashboard its workspace. The record
/// names both, so no registry lookup is needed.
pub struct Dashboard;
impl Object for Dashboard {
    type Id = crate::model::DashboardId;
    const WHAT: &'static str = "dashboard";
    async fn scope(s: &Services, id: crate::model::DashboardId) -> Result<Scope, Error> {
        let d = s.dashboards.get(id).await?;
        Ok(match d.fleet_id {
            Some(f) => Scope::Fleet(d.workspace_id, f),
            None => Scope::Workspace(d.workspace_id),
        })
    }
}

/// The caller, noting that this request's authorization is being checked.
fn checking(parts: &Parts) -> Result<Principal, ApiError> {
    mark_checked(parts);
    principal(parts)
}

fn principal(parts: &Parts) -> Result<Principal, ApiError> {
    parts
        .extensions
        .get::<Principal>()
        .cloned()
        .ok_or_else(ApiError::unauthorized)
}

/// The path parameter `name`, parsed; 400 `invalid_id` as `ApiPath` answers.
async fn path_id<T: std::str::FromStr>(
    parts: &mut Parts,
    state: &Arc<Services>,
    name: &str,
) -> Result<T, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))?;
    let raw = params
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .ok_or_else(|| ApiError::internal(format!("the route has no `{name}` parameter")))?;
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("Invalid URL: `{name}` is not a valid id: {raw}"),
        )
    })
}

/// The lookup behind a check: 404 when the object does not exist, its own error otherwise (a
/// store failure is a 500, never a "not found").
fn found<T>(r: Result<T, Error>, what: &str) -> Result<T, ApiError> {
    match r {
        Ok(x) => Ok(x),
        Err(Error::NotFound(_)) => Err(ApiError::not_found(what)),
        Err(e) => Err(e.into()),
    }
}

/// The check itself: `role` on the fleet, 404 `what` when the caller cannot see it.
fn fleet_role(
    p: &Principal,
    w: WorkspaceId,
    f: FleetId,
    role: Role,
    what: &str,
) -> Result<(), ApiError> {
    match p.role_on_fleet(w, f) {
        Some(r) if r >= role => Ok(()),
        Some(_) => Err(forbidden(
            &format!("needs the {role:?} role").to_lowercase(),
        )),
        None => Err(ApiError::not_found(what)),
    }
}

/// `role` on a workspace-wide object: 404 `what` to whoever holds no role on the whole
/// workspace (a user limited to some fleets does not see it).
fn workspace_object_role(
    p: &Principal,
    w: WorkspaceId,
    role: Role,
    what: &str,
) -> Result<(), ApiError> {
    match p.role_on_workspace(w) {
        Some(r) if r >= role => Ok(()),
        Some(_) => Err(forbidden(
            &format!("needs the {role:?} role on the workspace").to_lowercase(),
        )),
        None => Err(ApiError::not_found(what)),
    }
}

fn workspace_role(p: &Principal, w: WorkspaceId, role: Role) -> Result<(), ApiError> {
    match p.role_on_workspace(w) {
        Some(r) if r >= role => Ok(()),
        _ if !p.sees_workspace(w) => Err(ApiError::not_found("workspace")),
        _ => Err(forbidden(
            &format!("needs the {role:?} role on the workspace").to_lowercase(),
        )),
    }
}

fn server_admin(p: &Principal) -> Result<(), ApiError> {
    if p.admin {
        Ok(())
    } else {
        Err(forbidden("server administrators only"))
    }
}

/// An action explicitly checked by a handler (`Caller::require`).
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// `role` in a workspace.
    Workspace(WorkspaceId, Role),
    /// `role` on a fleet.
    Fleet(FleetId, Role),
    /// `role` on a device's fleet.
    Device(DeviceId, Role),
    /// Server-wide objects: server administrators.
    Server,
}

/// The authenticated caller, for handlers that check explicitly.
pub struct Caller {
    pub principal: Principal,
    services: Arc<Services>,
    checked: Option<Checked>,
}

impl Caller {
    fn mark(&self) {
        if let Some(c) = &self.checked {
            c.0.store(true, Ordering::Relaxed);
        }
    }

    /// Checks `action`: 403 when the caller sees the object but lacks the role, 404 when they
    /// do not see it (or it does not exist).
    pub async fn require(&self, action: Action) -> Result<(), ApiError> {
        self.mark();
        let (p, s) = (&self.principal, &self.services);
        match action {
            Action::Workspace(w, role) => {
                found(s.registry.workspace(w).await, "workspace")?;
                workspace_role(p, w, role)
            }
            Action::Fleet(f, role) => match found(fleet_scope(s, f).await, "fleet")? {
                Scope::Fleet(w, f) => fleet_role(p, w, f, role, "fleet"),
                Scope::Workspace(w) => workspace_object_role(p, w, role, "fleet"),
                Scope::Server => server_admin(p),
            },
            Action::Device(d, role) => match found(device_scope(s, d).await, "device")? {
                Scope::Fleet(w, f) => fleet_role(p, w, f, role, "device"),
                Scope::Workspace(w) => workspace_object_role(p, w, role, "device"),
                Scope::Server => server_admin(p),
            },
            Action::Server => server_admin(p),
        }
    }

    /// The handler returns only what the caller sees (a list filtered by `principal`, the
    /// caller's own session): any signed-in caller may call it.
    pub fn filters(&self) -> &Principal {
        self.mark();
        &self.principal
    }
}

impl FromRequestParts<Arc<Services>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Services>,
    ) -> Result<Self, ApiError> {
        Ok(Caller {
            principal: principal(parts)?,
            services: state.clone(),
            checked: parts.extensions.get::<Checked>().cloned(),
        })
    }
}

/// The least role `R` on the object `O` that the path's `id` names; yields the id.
pub struct On<O: Object, R: RoleMark>(pub O::Id, pub PhantomData<R>);

impl<O: Object, R: RoleMark> FromRequestParts<Arc<Services>> for On<O, R> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Services>,
    ) -> Result<Self, ApiError> {
        let p = checking(parts)?;
        let id: O::Id = path_id(parts, state, "id").await?;
        match found(O::scope(state, id).await, O::WHAT)? {
            Scope::Fleet(w, f) => fleet_role(&p, w, f, R::ROLE, O::WHAT)?,
            Scope::Workspace(w) => workspace_object_role(&p, w, R::ROLE, O::WHAT)?,
            Scope::Server => server_admin(&p)?,
        }
        Ok(On(id, PhantomData))
    }
}

/// A fleet's settings and trust (provisioning, manufacturer CAs, changes to the fleet): the
/// workspace admin's, and 404 to whoever cannot see the fleet.
pub struct FleetSettings(pub FleetId);

impl FromRequestParts<Arc<Services>> for FleetSettings {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Services>,
    ) -> Result<Self, ApiError> {
        let p = checking(parts)?;
        let id: FleetId = path_id(parts, state, "id").await?;
        let f = found(state.registry.fleet(id).await, "fleet")?;
        if p.role_on_fleet(f.workspace_id, f.id).is_none() {
            return Err(ApiError::not_found("fleet"));
        }
        workspace_role(&p, f.workspace_id, Role::Admin)?;
        Ok(FleetSettings(id))
    }
}

/// The least role `R` in the workspace the path's `id` names.
pub struct InWorkspace<R: RoleMark>(pub WorkspaceId, pub PhantomData<R>);

impl<R: RoleMark> FromRequestParts<Arc<Services>> for InWorkspace<R> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Services>,
    ) -> Result<Self, ApiError> {
        let p = checking(parts)?;
        let id: WorkspaceId = path_id(parts, state, "id").await?;
        found(state.registry.workspace(id).await, "workspace")?;
        workspace_role(&p, id, R::ROLE)?;
        Ok(InWorkspace(id, PhantomData))
    }
}

/// A workspace the caller sees (any grant in it, even one limited to some fleets).
pub struct SeesWorkspace(pub WorkspaceId);

impl FromRequestParts<Arc<Services>> for SeesWorkspace {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Services>,
    ) -> Result<Self, ApiError> {
        let p = checking(parts)?;
        let id: WorkspaceId = path_id(parts, state, "id").await?;
        found(state.registry.workspace(id).await, "workspace")?;
        if !p.sees_workspace(id) {
            return Err(ApiError::not_found("workspace"));
        }
        Ok(SeesWorkspace(id))
    }
}

/// Deleting a workspace: server admins, and 404 to whoever cannot see it.
pub struct DeleteWorkspace(pub WorkspaceId);

impl FromRequestParts<Arc<Services>> for DeleteWorkspace {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Services>,
    ) -> Result<Self, ApiError> {
        let SeesWorkspace(id) = SeesWorkspace::from_request_parts(parts, state).await?;
        server_admin(&principal(parts)?)?;
        Ok(DeleteWorkspace(id))
    }
}

/// Server-wide settings and objects: server administrators.
pub struct ServerAdmin;

impl<S: Send + Sync> FromRequestParts<S> for ServerAdmin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        server_admin(&checking(parts)?)?;
        Ok(ServerAdmin)
    }
}

/// The user the path's `id` names, acted on by themselves or a server admin.
pub struct SelfOrAdmin(pub UserId);

impl FromRequestParts<Arc<Services>> for SelfOrAdmin {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Services>,
    ) -> Result<Self, ApiError> {
        let p = checking(parts)?;
        let id: UserId = path_id(parts, state, "id").await?;
        if p.admin || p.user_id == Some(id) {
            Ok(SelfOrAdmin(id))
        } else {
            Err(forbidden("server administrators only"))
        }
    }
}

/// An export reads what its query names: every device and fleet named must be visible, and a
/// caller who is not a server admin must name some.
pub struct ExportScope;

impl FromRequestParts<Arc<Services>> for ExportScope {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &Arc<Services>) -> Result<Self, ApiError> {
        let p = checking(parts)?;
        if p.admin {
            return Ok(ExportScope);
        }
        let mut named = false;
        let query = parts.uri.query().unwrap_or("");
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            for one in v.split(',').filter(|x| !x.is_empty()) {
                let ok = match &*k {
                    "device_id" => match one.parse() {
                        Ok(d) => s.sees_device(&p, DeviceId(d)).await,
                        Err(_) => false,
                    },
                    "fleet_id" => match one.parse() {
                        Ok(f) => s.sees_fleet(&p, FleetId(f)).await,
                        Err(_) => false,
                    },
                    _ => continue,
                };
                if !ok {
                    return Err(ApiError::not_found(&k.replace("_id", "")));
                }
                named = true;
            }
        }
        if !named {
            return Err(forbidden("name the devices or fleets to export"));
        }
        Ok(ExportScope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt as _;

    #[test]
    fn a_failed_lookup_is_an_error_not_a_missing_object() {
        assert_eq!(found(Ok::<_, Error>(7), "thing").ok(), Some(7));
        let missing = found::<()>(Err(Error::NotFound("thing")), "thing");
        assert_eq!(missing.err().map(|e| e.status), Some(StatusCode::NOT_FOUND));
        let broken = Error::Internal("a damaged record".into());
        let e = found::<()>(Err(broken), "thing").expect_err("an error");
        assert_eq!(
            e.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "a failed lookup is not a 404"
        );
    }

    async fn status(app: &Router, path: &str) -> StatusCode {
        let req = Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .expect("request");
        app.clone().oneshot(req).await.expect("response").status()
    }

    #[tokio::test]
    async fn a_route_that_checks_nothing_cannot_succeed() {
        let admin = Principal {
            user_id: None,
            name: "test".into(),
            admin: true,
            grants: Vec::new(),
            session: None,
        };
        let app = Router::new()
            .route("/unchecked", get(|| async { "data" }))
            .route("/checked", get(|_: ServerAdmin| async { "data" }))
            .route(
                "/refused",
                get(|| async { ApiError::not_found("thing").into_response() }),
            )
            .route_layer(axum::middleware::from_fn(enforce))
            .layer(axum::Extension(admin));
        assert_eq!(
            status(&app, "/unchecked").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(status(&app, "/checked").await, StatusCode::OK);
        // A refusal reveals nothing, checked or not.
        assert_eq!(status(&app, "/refused").await, StatusCode::NOT_FOUND);
    }
}
