//! Operator authentication for `/api/v1`: who is calling (an API key, or a browser session
//! cookie, bound to the transport it was made over, with its CSRF token), an audit record of
//! every change they make; and the sign-in, setup, user and API-key routes. What a
//! caller may do is checked by each handler (`authz`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ApiResult;
use super::authz::{Caller, SelfOrAdmin, ServerAdmin};
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use crate::audit::Entry;
use crate::auth::users::{ApiKeyView, NewApiKey, NewUser, UserPatch};
use crate::auth::{Principal, SignedIn, policy::UserView};
use crate::model::{ApiKeyId, AuditKind, DeviceId, FleetId, UserId};
use crate::services::Services;

type S = State<Arc<Services>>;

/// Whether the request came over TLS (set by the listener): session cookies are then
/// `__Host-` prefixed and `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct Tls(pub bool);

/// Cookie names: `__Host-` requires `Secure`, which browsers accept only over TLS.
const COOKIE_TLS: &str = "__Host-corral_session";
const COOKIE_PLAIN: &str = "corral_session";
const CSRF_HEADER: &str = "x-csrf-token";

fn forbidden(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("your role does not allow this: {what}"),
    )
}

fn peer_of(req_ext: &axum::http::Extensions) -> Option<IpAddr> {
    req_ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// The session cookie of this transport: `__Host-corral_session` over TLS, `corral_session`
/// over plain HTTP (the session itself is also bound to its transport).
fn session_cookie(headers: &HeaderMap, tls: bool) -> Option<String> {
    let name = if tls { COOKIE_TLS } else { COOKIE_PLAIN };
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The key of `Authorization: Bearer <key>`; the scheme name is case-insensitive (RFC 7235
/// §2.1), so `bearer` and `BEARER` work too.
fn bearer_key(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = v.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim().to_string())
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Authenticates every `/api/v1` request (401 without valid credentials), enforces the CSRF
/// token on changes made with a session cookie, and records every change in the audit log.
pub async fn authenticate(State(s): S, mut req: Request, next: Next) -> Response {
    let bearer = bearer_key(req.headers());
    let tls = is_tls(req.extensions());
    let cookie = session_cookie(req.headers(), tls);
    let found = match (&bearer, &cookie) {
        (Some(k), _) => s.auth.principal_for_key(k).await,
        (None, Some(c)) => s.auth.principal_for_session(c, tls).await,
        (None, None) => Ok(None),
    };
    let principal = match found {
        Ok(Some(p)) => p,
        Ok(None) => {
            // Credentials were presented and refused: an authentication event. (A request
            // with none is not an attempt, and is not recorded.)
            let what = if bearer.is_some() {
                "unknown or revoked API key"
            } else {
                "expired or unknown session"
            };
            let peer = peer_of(req.extensions());
            let presented = bearer.is_some() || cookie.is_some();
            if presented {
                s.audit.record_unauthenticated(
                    Entry::new(AuditKind::ApiAuthFailed, "anonymous")
                        .ip(peer)
                        .detail(format!("{what}: {} {}", req.method(), req.uri().path())),
                    peer,
                );
            }
            return ApiError::unauthorized().into_response();
        }
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let method = req.method().clone();
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if changes && let Some((_, csrf)) = &principal.session {
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !constant_eq(given, csrf) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_failed",
                "changes made with a session need the X-CSRF-Token header from sign-in",
            )
            .into_response();
        }
    }
    let peer = peer_of(req.extensions());
    // The full path (the router is nested under /api/v1), for the audit record.
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
    let actor = principal.name.clone();
    req.extensions_mut().insert(principal);
    let resp = crate::audit::with_actor(actor.clone(), next.run(req)).await;
    if changes {
        let status = resp.status();
        let kind = if status.is_success() {
            Some(AuditKind::ApiChange)
        } else if status == StatusCode::FORBIDDEN {
            Some(AuditKind::ApiDenied)
        } else {
            None
        };
        if let Some(kind) = kind {
            s.audit.record(
                Entry::new(kind, actor)
                    .ip(peer)
                    .detail(format!("{method} {path} → {}", status.as_u16())),
            );
        }
    }
    resp
}

impl Services {
    /// Whether the caller sees a device (lists, live events).
    pub(crate) async fn sees_device(&self, p: &Principal, device: DeviceId) -> bool {
        p.admin
            || self
                .registry
                .device_record(device)
                .await
                .is_ok_and(|d| p.sees_fleet(d.workspace_id, d.fleet_id))
    }

    pub(crate) async fn sees_fleet(&self, p: &Principal, fleet: FleetId) -> bool {
        p.admin
            || self
                .registry
                .fleet(fleet)
                .await
                .is_ok_and(|f| p.sees_fleet(f.workspace_id, f.id))
    }
}

/// Whether a caller sees each fleet, asked of the registry once per fleet: a list filters many
/// rows that belong to few fleets.
pub(crate) struct SeenFleets<'a> {
    services: &'a Services,
    who: &'a Principal,
    seen: std::collections::HashMap<FleetId, bool>,
}

impl<'a> SeenFleets<'a> {
    pub(crate) fn new(services: &'a Services, who: &'a Principal) -> Self {
        Self {
            services,
            who,
            seen: Default::default(),
        }
    }

    pub(crate) async fn sees(&mut self, fleet: FleetId) -> bool {
        if let Some(&v) = self.seen.get(&fleet) {
            return v;
        }
        let v = self.services.sees_fleet(self.who, fleet).await;
        self.seen.insert(fleet, v);
        v
    }

    /// What has been asked so far, for a synchronous filter.
    pub(crate) fn known(&self, fleet: FleetId) -> Option<bool> {
        self.seen.get(&fleet).copied()
    }
}

// ---- routes --------------------------------------------------------------------------------

/// Sign-in and setup: no credentials needed (they are the way in).
pub fn public_routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(setup))
        .routes(routes!(status))
}

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(logout))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(delete_api_key))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// Not case-sensitive.
    username: String,
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupBody {
    /// The one-time setup token the server prints at start while no user exists.
    token: String,
    /// 1 to 64 letters, digits or `._-@`.
    username: String,
    /// 10 to 1024 characters.
    password: String,
}

/// Who is signed in, and the CSRF token to send as `X-CSRF-Token` with every change.
#[derive(Serialize, ToSchema)]
pub struct Me {
    user: MeUser,
    /// Send as `X-CSRF-Token` with every change made with the session cookie; absent when calling
    /// with an API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MeUser {
    /// Absent for the bootstrap API key, which belongs to no user.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<UserId>,
    /// The username, or `api-key:NAME` for the bootstrap API key.
    username: String,
    display_name: String,
    /// A server admin, who may do everything.
    admin: bool,
    /// Roles in workspaces (server admins need none).
    grants: Vec<crate::model::Grant>,
}

async fn me_of(s: &Services, p: &Principal) -> Me {
    let display_name = match p.user_id {
        Some(u) => s.auth.user(u).await.ok().map(|u| u.display_name),
        None => None,
    }
    .unwrap_or_default();
    Me {
        user: MeUser {
            id: p.user_id,
            username: p.name.clone(),
            display_name,
            admin: p.admin,
            grants: p.grants.clone(),
        },
        csrf_token: p.session.as_ref().map(|(_, c)| c.clone()),
    }
}

fn cookie_header(value: &str, tls: bool, max_age: Option<u64>) -> HeaderValue {
    let name = if tls { COOKIE_TLS } else { COOKIE_PLAIN };
    let secure = if tls { "; Secure" } else { "" };
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn signed_in(s: &Services, si: SignedIn, tls: bool) -> Response {
    let max = s.config.auth.session_max_hours * 3600;
    let mut r = Json(me_of(s, &si.principal).await).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(&si.cookie, tls, Some(max)),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Sign-in and setup bodies hold a name, a password and a token.
const SIGN_IN_BODY_LIMIT: usize = 65536;

fn is_tls(ext: &axum::http::Extensions) -> bool {
    ext.get::<Tls>().is_some_and(|t| t.0)
}

/// Sign in
///
/// Checks a username and password and starts a browser session: the response sets an HttpOnly,
/// SameSite=Strict session cookie (`__Host-corral_session` over HTTPS, `corral_session` over plain
/// HTTP; a session works only over the transport it was made on) and returns who signed in with the
/// CSRF token to send as `X-CSRF-Token` with every change. Needs no credentials. Attempts are
/// limited per client address and per username. Sign-ins, failures and throttled attempts are
/// recorded in the audit log. Errors: 400 `invalid_body`, 401 `invalid_login` (wrong username or
/// password, or a disabled user), 413 `payload_too_large` (the body is over 64 KiB), 429
/// `too_many_attempts` with `Retry-After`.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginBody, security(()),
    responses((status = 200, body = Me, description = "signed in; the session cookie is set"),
        (status = 401, body = ErrorBody, description = "invalid_login"),
        (status = 429, body = ErrorBody, description = "too_many_attempts")))]
async fn login(State(s): S, req: Request) -> ApiResult<Response> {
    let (peer, tls) = (peer_of(req.extensions()), is_tls(req.extensions()));
    let body = axum::body::to_bytes(req.into_body(), SIGN_IN_BODY_LIMIT)
        .await
        .map_err(|e| ApiError::unreadable_body(e, SIGN_IN_BODY_LIMIT))?;
    let b: LoginBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    let si = s.auth.login(&b.username, &b.password, peer, tls).await?;
    Ok(signed_in(&s, si, tls).await)
}

/// Create the first admin
///
/// Creates the first user, a server admin, with the one-time setup token the server prints at start
/// while no user exists, and signs them in as `POST /auth/login` does (session cookie and CSRF
/// token). Needs no credentials. A refused username or password leaves the token usable for another
/// try. Errors: 400 `invalid_body`, 403 `invalid_setup_token` (wrong, used or expired token, or
/// users already exist), 413 `payload_too_large`, 422 `invalid_field` (username 1 to 64 letters,
/// digits or `._-@`; password 10 to 1024 characters).
#[utoipa::path(post, path = "/auth/setup", tag = "auth", request_body = SetupBody, security(()),
    responses((status = 200, body = Me, description = "the first admin is created and signed in"),
        (status = 403, body = ErrorBody, description = "invalid_setup_token"),
        (status = 422, body = ErrorBody)))]
async fn setup(State(s): S, req: Request) -> ApiResult<Response> {
    let (peer, tls) = (peer_of(req.extensions()), is_tls(req.extensions()));
    let body = axum::body::to_bytes(req.into_body(), SIGN_IN_BODY_LIMIT)
        .await
        .map_err(|e| ApiError::unreadable_body(e, SIGN_IN_BODY_LIMIT))?;
    let b: SetupBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    let si = s
        .auth
        .setup(&b.token, &b.username, &b.password, peer, tls)
        .await?;
    Ok(signed_in(&s, si, tls).await)
}

/// What the sign-in page needs to know before anyone signs in.
#[derive(Serialize, ToSchema)]
struct AuthStatus {
    /// False until the first web UI user is created (with the setup link the server prints at
    /// start, or `corral user create NAME --admin`).
    users_exist: bool,
}

/// Get the sign-in status
///
/// Tells the sign-in page whether any user exists yet; until one does, the first admin is created
/// with `POST /auth/setup`. Needs no credentials.
#[utoipa::path(get, path = "/auth/status", tag = "auth", security(()),
    responses((status = 200, body = AuthStatus, description = "whether any web UI user exists yet")))]
async fn status(State(s): S) -> ApiResult<Json<AuthStatus>> {
    let users_exist = s.auth.users_exist().await?;
    Ok(Json(AuthStatus { users_exist }))
}

/// Get the current caller
///
/// Returns who is calling: the user (or the bootstrap API key, which has no user id), whether they
/// are a server admin, and their grants. For a browser session it also returns the CSRF token to
/// send as `X-CSRF-Token` with every change. Any authenticated caller.
#[utoipa::path(get, path = "/auth/me", tag = "auth", responses((status = 200, body = Me)))]
async fn me(State(s): S, caller: Caller) -> Json<Me> {
    let p = caller.filters().clone();
    Json(me_of(&s, &p).await)
}

/// Sign out
///
/// Ends the caller's browser session on the server and clears the session cookie; the cookie is
/// worthless afterwards. Recorded in the audit log (`logout`). Called with an API key it changes
/// nothing. Any authenticated caller.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses((status = 204, description = "the session is ended server-side and the cookie cleared")))]
async fn logout(State(s): S, caller: Caller, req: Request) -> ApiResult<Response> {
    let p = caller.filters().clone();
    let (peer, tls) = (peer_of(req.extensions()), is_tls(req.extensions()));
    s.auth.logout(&p, peer).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_header("", tls, Some(0)));
    Ok(r)
}

/// List users
///
/// Returns every user with their grants, never a password hash. Needs a server admin.
#[utoipa::path(get, path = "/users", tag = "users", responses((status = 200, body = Vec<UserView>), (status = 403, body = ErrorBody)))]
async fn list_users(
    State(s): S,
    _: ServerAdmin,
    Extension(_p): Extension<Principal>,
) -> ApiResult<Json<Vec<UserView>>> {
    Ok(Json(s.auth.users().await?))
}

/// Create a user
///
/// Creates a user who signs in with a username and password, optionally a server admin, with grants
/// (a role in a workspace, optionally limited to some of its fleets). Recorded in the audit log
/// (`user_created`). Needs a server admin. Errors: 409 `name_taken`, 422 `invalid_field` (username
/// 1 to 64 letters, digits or `._-@`; password 10 to 1024 characters; a grant naming an unknown
/// workspace or a fleet outside it).
#[utoipa::path(post, path = "/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = UserView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_user(
    State(s): S,
    _: ServerAdmin,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.auth.create_user(body, &p.name).await?),
    ))
}

/// Get a user
///
/// Returns one user with their grants. A user may read their own record; server admins read
/// anyone's (others get 403 `forbidden`).
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
async fn get_user(
    State(s): S,
    Extension(_p): Extension<Principal>,
    SelfOrAdmin(id): SelfOrAdmin,
) -> ApiResult<Json<UserView>> {
    Ok(Json(UserView::from(&s.auth.user(id).await?)))
}

/// Update a user
///
/// Changes a user; fields left out keep their value. Users may change their own display name and
/// password; only server admins change `admin`, `enabled` and `grants` (403 `forbidden` otherwise).
/// A new password or disabling the user ends their sessions at once. The last enabled server admin
/// cannot be demoted or disabled (403 `forbidden`). Recorded in the audit log (`user_updated`).
/// Errors: 422 `invalid_field` (password 10 to 1024 characters, a grant naming an unknown workspace
/// or fleet).
#[utoipa::path(patch, path = "/users/{id}", tag = "users", params(("id" = String, Path, description = "user id")),
    request_body = UserPatch,
    responses((status = 200, body = UserView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_user(
    State(s): S,
    Extension(p): Extension<Principal>,
    SelfOrAdmin(id): SelfOrAdmin,
    ApiJson(patch): ApiJson<UserPatch>,
) -> ApiResult<Json<UserView>> {
    if !p.admin && (patch.admin.is_some() || patch.enabled.is_some() || patch.grants.is_some()) {
        return Err(forbidden(
            "only server administrators change roles or enable users",
        ));
    }
    Ok(Json(s.auth.update_user(id, patch, &p.name).await?))
}

/// Delete a user
///
/// Deletes a user with their sessions and API keys. The last enabled server admin cannot be deleted
/// (403 `forbidden`). Recorded in the audit log (`user_deleted`). Needs a server admin.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = String, Path, description = "user id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_user(
    State(s): S,
    _: ServerAdmin,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<UserId>,
) -> ApiResult<StatusCode> {
    s.auth.delete_user(id, &p.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    /// What the key is for, 1 to 128 characters.
    name: String,
}

/// List a user's API keys
///
/// Returns the user's API keys (id, name, creation time), never a secret. Users may list their own
/// keys; server admins anyone's (others get 403 `forbidden`).
#[utoipa::path(get, path = "/users/{id}/api-keys", tag = "users", params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = Vec<ApiKeyView>), (status = 404, body = ErrorBody)))]
async fn list_api_keys(
    State(s): S,
    Extension(_p): Extension<Principal>,
    SelfOrAdmin(id): SelfOrAdmin,
) -> ApiResult<Json<Vec<ApiKeyView>>> {
    Ok(Json(s.auth.api_keys_of(id).await?))
}

/// Create an API key
///
/// Creates an API key for the user; it acts with that user's rights, as
/// `Authorization: Bearer <key>`. The secret is returned only in this response. Recorded in the
/// audit log (`api_key_created`). Users may create their own keys; server admins anyone's (others
/// get 403 `forbidden`). Errors: 422 `invalid_field` (the name is 1 to 128 characters).
#[utoipa::path(post, path = "/users/{id}/api-keys", tag = "users", params(("id" = String, Path, description = "user id")),
    request_body = NewKeyBody,
    responses((status = 201, body = NewApiKey, description = "the secret is shown only here"), (status = 404, body = ErrorBody)))]
async fn create_api_key(
    State(s): S,
    Extension(p): Extension<Principal>,
    SelfOrAdmin(id): SelfOrAdmin,
    ApiJson(b): ApiJson<NewKeyBody>,
) -> ApiResult<(StatusCode, Json<NewApiKey>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.auth.create_api_key(id, &b.name, &p.name).await?),
    ))
}

/// Delete an API key
///
/// Deletes one of the user's API keys: requests made with it are refused from then on. Recorded in
/// the audit log (`api_key_deleted`). Users may delete their own keys; server admins anyone's
/// (others get 403 `forbidden`).
#[utoipa::path(delete, path = "/users/{id}/api-keys/{key_id}", tag = "users",
    params(("id" = String, Path, description = "user id"), ("key_id" = String, Path, description = "API key id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_api_key(
    State(s): S,
    _: SelfOrAdmin,
    Extension(p): Extension<Principal>,
    ApiPath((id, key)): ApiPath<(UserId, ApiKeyId)>,
) -> ApiResult<StatusCode> {
    s.auth.delete_api_key(id, key, &p.name).await?;
    Ok(StatusCode::NO_CONTENT)
}
