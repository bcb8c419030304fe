//! ThingsBoard's HTTP device API (thingsboard-device-api.md §7) under `/api/v1/{token}`:
//! telemetry (and Corral's tagged form), client attributes, attribute requests, long-polls for
//! shared-attribute updates and server RPC, RPC replies, client RPC, claiming and (Corral's
//! extension) conditions, with
//! ThingsBoard's status codes: 400 bad body, 401 unknown token, 403 disabled device,
//! 408 long-poll timeout, 429 over the device's message rate, 413 for a body over the MQTT
//! packet limit (`mqtt.max_packet_size`: a device may not send over HTTP what MQTT refuses),
//! Corral's 422 with a `code` for telemetry over a key cap, and 507 when free disk space is
//! below the store's reserve (nothing stored). The token authenticates; no API key is involved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::data::Durability;
use crate::data::keys::KeyRefusal;
use crate::device_messages::{self, Answer, Kind, Message, Refusal};
use crate::devices::credentials::{LoginAttempt, Refusal as LoginRefusal};
use crate::devices::protocol::{self, AttributeRequest};
use crate::error::{Error, ErrorKind};
use crate::model::PackageKind;
use crate::model::{DEFAULT_TAG, Device};
use crate::services::Services;

type S = State<Arc<Services>>;

/// Longest long-poll a device may ask for.
const MAX_POLL: Duration = Duration::from_secs(300);
/// Long-poll length when the device gives none.
const DEFAULT_POLL: Duration = Duration::from_secs(30);

/// The device API routes and their OpenAPI document, to be mounted at `/api/v1` outside the
/// admin authentication; bodies over `max_body` bytes are refused with 413.
pub fn routes(max_body: usize) -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(telemetry))
        .routes(routes!(tagged_telemetry))
        .routes(routes!(post_attributes, get_attributes))
        .routes(routes!(attribute_updates))
        .routes(routes!(rpc_poll, client_rpc))
        .routes(routes!(rpc_reply))
        .routes(routes!(claim))
        .routes(routes!(post_conditions))
        .routes(routes!(firmware))
        .routes(routes!(software))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
}

/// The body of a device API error: ThingsBoard's shape, a message and, for telemetry refused
/// over a key cap, a stable code.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeviceApiError {
    pub error: String,
    /// `too_many_keys` or `key_quota_exceeded`, on 422 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The client's address, when the request came over a socket.
struct Peer(Option<SocketAddr>);

impl<St: Send + Sync> axum::extract::FromRequestParts<St> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &St,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// A device's request body, within the route's size limit: 413 past it.
struct DevBody(Bytes);

impl<St: Send + Sync> axum::extract::FromRequest<St> for DevBody {
    type Rejection = DevError;

    async fn from_request(req: axum::extract::Request, state: &St) -> Result<Self, DevError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(DevBody(b)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(DevError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large: over mqtt.max_packet_size".into(),
            )),
            Err(r) => Err(bad(r.body_text())),
        }
    }
}

/// Report conditions
///
/// Corral's extension: the device opens, updates or closes its conditions (alarms) with the
/// payload of the MQTT topic `v1/devices/me/conditions`, and gets its conditions as they now
/// stand.
#[utoipa::path(post, path = "/{token}/conditions", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token.")), request_body(content = serde_json::Value, content_type = "application/json", description = "One condition report or an array of them: `name`, `severity`, `open`, `details`."), responses((status = 200, description = "The device's conditions as they now stand.", body = Object), (status = 400, description = "The request is not what the operation takes.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 413, description = "The body is over `mqtt.max_packet_size`.", body = DeviceApiError), (status = 429, description = "Over the device's message rate; nothing stored. `Retry-After` says when to send again.", body = DeviceApiError), (status = 500, description = "An internal error.", body = DeviceApiError)))]
async fn post_conditions(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    DevBody(body): DevBody,
) -> DevResult<axum::Json<Json>> {
    let dev = device(&s, &token, peer).await?;
    rate(&s, &dev)?;
    match run(&s, &dev, Kind::Conditions, &body)
        .await
        .map_err(refused)?
    {
        Answer::Reply(now) => Ok(axum::Json(now)),
        _ => Err(internal("a condition report has an answer")),
    }
}

/// The query of a package download (ThingsBoard's `DeviceApiController`).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PackageQuery {
    /// The assigned package's title (`fw_title`); another is refused with 400.
    title: Option<String>,
    /// The assigned package's version (`fw_version`); another is refused with 400.
    version: Option<String>,
    /// Chunk size in bytes; 0 (default) is the whole file.
    #[serde(default)]
    size: u64,
    /// Chunk number from 0; past the end answers 200 with an empty body.
    #[serde(default)]
    chunk: u64,
}

/// Download firmware
///
/// ThingsBoard's OTA download: the firmware assigned to the device (its `fw_title` and
/// `fw_version` shared attributes), whole or one chunk. 404 when none is assigned, 400 when
/// `title` or `version` is not the assigned one, 200 with an empty body past the end. Without
/// `size`, one `Range: bytes=...` gets 206 with that part of the file, so a device can resume
/// a download it lost (416 for a range outside the file); the whole file's SHA-256 is in
/// `x-sha256`.
#[utoipa::path(get, path = "/{token}/firmware", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token."), PackageQuery), responses((status = 200, description = "The bytes.", content_type = "application/octet-stream", body = Vec<u8>), (status = 206, description = "The range asked for.", content_type = "application/octet-stream", body = Vec<u8>), (status = 416, description = "A range outside the file.", body = DeviceApiError), (status = 400, description = "Another title or version than the assigned package's, or a bad parameter.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 404, description = "No firmware is assigned to the device.", body = DeviceApiError), (status = 500, description = "An internal error.", body = DeviceApiError)))]
async fn firmware(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
) -> DevResult<Response> {
    let range = headers.get(axum::http::header::RANGE);
    package(&s, peer, &token, q, range, PackageKind::Firmware).await
}

/// Download software
///
/// As `GET /{token}/firmware`, for the software package (`sw_title`, `sw_version`).
#[utoipa::path(get, path = "/{token}/software", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token."), PackageQuery), responses((status = 200, description = "The bytes.", content_type = "application/octet-stream", body = Vec<u8>), (status = 206, description = "The range asked for.", content_type = "application/octet-stream", body = Vec<u8>), (status = 416, description = "A range outside the file.", body = DeviceApiError), (status = 400, description = "Another title or version than the assigned package's, or a bad parameter.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 404, description = "No software is assigned to the device.", body = DeviceApiError), (status = 500, description = "An internal error.", body = DeviceApiError)))]
async fn software(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
) -> DevResult<Response> {
    let range = headers.get(axum::http::header::RANGE);
    package(&s, peer, &token, q, range, PackageKind::Software).await
}

async fn package(
    s: &Services,
    peer: Option<SocketAddr>,
    token: &str,
    q: Option<String>,
    range: Option<&axum::http::HeaderValue>,
    kind: PackageKind,
) -> DevResult<Response> {
    let dev = device(s, token, peer).await?;
    let q: PackageQuery = serde_urlencoded_query(q.as_deref())?;
    let req = device_messages::PackageRequest {
        size: q.size,
        chunk: q.chunk,
        title: q.title.as_deref(),
        version: q.version.as_deref(),
    };
    // Package files are bounded by `ota.max_package_mb`; the body streams from the file, so a
    // whole-file request holds a piece at a time, not the file.
    match device_messages::package_slice(s, (&dev).into(), kind, req, u64::MAX).await {
        Ok(slice) => {
            let p = &slice.package;
            // A Range applies to the whole file (no `size`), as on any plain download.
            let range = match range.filter(|_| q.size == 0) {
                None => None,
                Some(v) => match super::packages::parse_range(v.to_str().unwrap_or(""), p.size) {
                    Some((a, b)) => Some((a, b)),
                    None => {
                        let mut r = DevError(
                            StatusCode::RANGE_NOT_SATISFIABLE,
                            format!("the file has {} bytes; ask for one range inside it", p.size),
                        )
                        .into_response();
                        r.headers_mut().insert(
                            axum::http::header::CONTENT_RANGE,
                            axum::http::HeaderValue::from_str(&format!("bytes */{}", p.size))
                                .map_err(internal)?,
                        );
                        return Ok(r);
                    }
                },
            };
            let (start, len) = match range {
                Some((a, b)) => (a, b - a + 1),
                None => (slice.start, slice.len),
            };
            let stream = s
                .packages
                .read(p, start, len)
                .await
                .map_err(|_| internal(device_messages::PackageRefusal::Failure.as_str()))?;
            let mut r = Response::new(axum::body::Body::from_stream(stream));
            let h = r.headers_mut();
            let name = p.file_name.replace('"', "");
            let hv = |v: String| axum::http::HeaderValue::from_str(&v).map_err(internal);
            h.insert(
                axum::http::header::CONTENT_TYPE,
                hv(p.content_type.clone())?,
            );
            h.insert(
                axum::http::header::CONTENT_DISPOSITION,
                hv(format!("attachment;filename={name}"))?,
            );
            h.insert("x-filename", hv(name)?);
            h.insert(axum::http::header::CONTENT_LENGTH, hv(len.to_string())?);
            h.insert("x-sha256", hv(p.sha256.clone())?);
            if q.size == 0 {
                h.insert(
                    axum::http::header::ACCEPT_RANGES,
                    axum::http::HeaderValue::from_static("bytes"),
                );
            }
            if let Some((a, b)) = range {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                r.headers_mut().insert(
                    axum::http::header::CONTENT_RANGE,
                    hv(format!("bytes {a}-{b}/{}", p.size))?,
                );
            }
            Ok(r)
        }
        Err(device_messages::PackageRefusal::NotFound) => Err(DevError(
            StatusCode::NOT_FOUND,
            format!("no {} is assigned to the device", kind.as_str()),
        )),
        Err(device_messages::PackageRefusal::Mismatch) => Err(bad(
            "title and version must be those of the assigned package",
        )),
        Err(e) => Err(internal(e.as_str())),
    }
}

/// Parses a query string into `T`: 400 with the reason when it does not fit.
fn serde_urlencoded_query<T: serde::de::DeserializeOwned + Default>(
    q: Option<&str>,
) -> DevResult<T> {
    match q {
        None | Some("") => Ok(T::default()),
        Some(q) => axum::extract::Query::<T>::try_from_uri(
            &format!("/?{q}").parse().map_err(|_| bad("bad query"))?,
        )
        .map(|axum::extract::Query(v)| v)
        .map_err(|e| bad(e.body_text())),
    }
}

/// A device API error: status and a short JSON message (never a secret).
struct DevError(StatusCode, String);

impl IntoResponse for DevError {
    fn into_response(self) -> Response {
        let mut r = (self.0, axum::Json(json!({"error": self.1}))).into_response();
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            // The device message rate is per second: the next message fits within one.
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, 1u32.into());
        }
        r
    }
}

type DevResult<T> = Result<T, DevError>;

fn bad(msg: impl Into<String>) -> DevError {
    DevError(StatusCode::BAD_REQUEST, msg.into())
}

/// A refused write: 507 when free space is below the reserve (nothing was stored; send it
/// again later), 500 otherwise.
fn not_stored(e: impl Into<Error>) -> DevError {
    let e = e.into();
    match e.kind() {
        ErrorKind::StorageFull => {
            DevError(StatusCode::INSUFFICIENT_STORAGE, format!("not stored: {e}"))
        }
        _ => internal(e),
    }
}

/// Parses and does a device message; a refusal comes back as is, for the caller to answer.
async fn run(s: &Services, dev: &Device, kind: Kind, body: &[u8]) -> Result<Answer, Refusal> {
    let message = kind.parse(body)?;
    // Waits its turn with MQTT's messages while the store is behind; the wait is bounded by
    // the HTTP connection caps, as every request holds a connection.
    let _admitted = s.in_flight.admit().await;
    device_messages::handle(s, dev.into(), message, Durability::Durable).await
}

/// The device API's answer to a refused message.
fn refused(e: Refusal) -> DevError {
    match e {
        Refusal::BadTag(_) => bad(e.to_string()),
        Refusal::BadPayload(m) => bad(m),
        Refusal::KeyLimit(r) => DevError(StatusCode::UNPROCESSABLE_ENTITY, r.to_string()),
        Refusal::NotStored(e) => not_stored(e),
    }
}

fn internal(e: impl std::fmt::Display) -> DevError {
    tracing::error!(error = %e, "device API request failed");
    DevError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}

/// The device a token belongs to: 401 unknown, 403 disabled or revoked.
async fn device(s: &Services, token: &str, peer: Option<SocketAddr>) -> DevResult<Device> {
    let login = s
        .credentials
        .login(LoginAttempt {
            username: Some(token),
            // The refusal's audit record names the address (and is rate-limited by it).
            peer,
            ..Default::default()
        })
        .await;
    match login {
        Ok(l) if l.method == "access_token" => {
            // An HTTP request is activity: "last seen" moves without a connection to count.
            s.registry.touched(l.device.id);
            s.campaigns.http_activity(l.device.id);
            Ok(l.device)
        }
        Ok(_)
        | Err(LoginRefusal::BadUsernameOrPassword(_) | LoginRefusal::IdentifierRejected(_)) => {
            Err(DevError(StatusCode::UNAUTHORIZED, "unknown token".into()))
        }
        Err(LoginRefusal::NotAuthorized(why)) => Err(DevError(StatusCode::FORBIDDEN, why.into())),
        Err(LoginRefusal::Unavailable) => Err(internal("credential store unavailable")),
    }
}

/// The device's message rate over HTTP: 429 over the limit (the data is not stored; send it
/// again later).
fn rate(s: &Services, dev: &Device) -> DevResult<()> {
    if s.http_device_limiter.allow(&dev.id) {
        Ok(())
    } else {
        Err(DevError(
            StatusCode::TOO_MANY_REQUESTS,
            "message rate limit exceeded; not stored".into(),
        ))
    }
}

/// A telemetry refusal with a stable code beside the message:
/// `{"error": "...", "code": "too_many_keys" | "key_quota_exceeded"}`, or any `DevError`.
struct TelemetryError(Result<KeyRefusal, DevError>);

impl From<DevError> for TelemetryError {
    fn from(e: DevError) -> Self {
        TelemetryError(Err(e))
    }
}

impl IntoResponse for TelemetryError {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(r) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({"error": r.to_string(), "code": r.code()})),
            )
                .into_response(),
            Err(e) => e.into_response(),
        }
    }
}

async fn store(
    s: &Services,
    token: &str,
    peer: Option<SocketAddr>,
    tag: &str,
    body: &[u8],
) -> Result<StatusCode, TelemetryError> {
    let dev = device(s, token, peer).await?;
    rate(s, &dev)?;
    let kind = Kind::Telemetry {
        tag: tag.to_string().into(),
    };
    match run(s, &dev, kind, body).await {
        Ok(_) => Ok(StatusCode::OK),
        Err(Refusal::KeyLimit(r)) => Err(TelemetryError(Ok(r))),
        Err(e) => Err(refused(e).into()),
    }
}

/// Upload telemetry
///
/// ThingsBoard's telemetry upload: `{"key": value, ...}`, `{"ts": ms, "values": {...}}`, or an
/// array of either. A 200 means the points are durable. Stored under the tag `default`.
#[utoipa::path(post, path = "/{token}/telemetry", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token.")), request_body(content = serde_json::Value, content_type = "application/json", description = "Telemetry: values, a timestamped object, or an array of either."), responses((status = 200, description = "Stored durably."), (status = 400, description = "The request is not what the operation takes.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 413, description = "The body is over `mqtt.max_packet_size`.", body = DeviceApiError), (status = 422, description = "Refused over a key cap (`too_many_keys`, `key_quota_exceeded`); nothing stored.", body = DeviceApiError), (status = 429, description = "Over the device's message rate; nothing stored. `Retry-After` says when to send again.", body = DeviceApiError), (status = 500, description = "An internal error.", body = DeviceApiError), (status = 507, description = "Free disk space is below the store's reserve; nothing stored.", body = DeviceApiError)))]
async fn telemetry(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    DevBody(body): DevBody,
) -> Result<StatusCode, TelemetryError> {
    store(&s, &token, peer, DEFAULT_TAG, &body).await
}

/// Upload telemetry under a tag
///
/// Corral's extension: the same bodies as the telemetry upload, stored under `tag` (1 to 64
/// of `A-Z a-z 0-9 _ - .`), so that one device can keep separate series per source.
#[utoipa::path(post, path = "/{token}/telemetry/{tag}", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token."), ("tag" = String, Path, description = "The tag to store under.")), request_body(content = serde_json::Value, content_type = "application/json", description = "Telemetry: values, a timestamped object, or an array of either."), responses((status = 200, description = "Stored durably."), (status = 400, description = "The request is not what the operation takes.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 413, description = "The body is over `mqtt.max_packet_size`.", body = DeviceApiError), (status = 422, description = "Refused over a key cap (`too_many_keys`, `key_quota_exceeded`); nothing stored.", body = DeviceApiError), (status = 429, description = "Over the device's message rate; nothing stored. `Retry-After` says when to send again.", body = DeviceApiError), (status = 500, description = "An internal error.", body = DeviceApiError), (status = 507, description = "Free disk space is below the store's reserve; nothing stored.", body = DeviceApiError)))]
async fn tagged_telemetry(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path((token, tag)): axum::extract::Path<(String, String)>,
    DevBody(body): DevBody,
) -> Result<StatusCode, TelemetryError> {
    store(&s, &token, peer, &tag, &body).await
}

/// Publish client attributes
///
/// The device reports its client-side attributes as a flat JSON object of key and value.
#[utoipa::path(post, path = "/{token}/attributes", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token.")), request_body(content = Object, content_type = "application/json", description = "A JSON object of attribute keys and values."), responses((status = 200, description = "Stored."), (status = 400, description = "The request is not what the operation takes.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 413, description = "The body is over `mqtt.max_packet_size`.", body = DeviceApiError), (status = 429, description = "Over the device's message rate; nothing stored. `Retry-After` says when to send again.", body = DeviceApiError), (status = 500, description = "An internal error.", body = DeviceApiError)))]
async fn post_attributes(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    DevBody(body): DevBody,
) -> DevResult<StatusCode> {
    let dev = device(&s, &token, peer).await?;
    rate(&s, &dev)?;
    run(&s, &dev, Kind::Attributes, &body)
        .await
        .map_err(refused)?;
    Ok(StatusCode::OK)
}

/// `clientKeys`/`sharedKeys`, comma-joined and/or repeated (Spring joins repeats, §7). Other
/// parameters (the SDK's `client_keys`) are ignored, which asks for everything, as in TB.
fn attribute_request(query: Option<&str>) -> AttributeRequest {
    let mut client = Vec::new();
    let mut shared = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "clientKeys" => client.push(v.into_owned()),
            "sharedKeys" => shared.push(v.into_owned()),
            _ => {}
        }
    }
    let list = |v: &[String]| {
        let parts: Vec<&str> = v.iter().map(String::as_str).collect();
        protocol::split_key_list(&parts)
    };
    AttributeRequest {
        client: list(&client),
        shared: list(&shared),
    }
}

/// Request attribute values
///
/// The device's client and shared attribute values, as ThingsBoard returns them:
/// `{"client": {...}, "shared": {...}}`; `clientKeys` and `sharedKeys` select keys (all when
/// both are absent).
#[utoipa::path(get, path = "/{token}/attributes", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token."), ("clientKeys" = Option<String>, Query, description = "Comma-separated client attribute keys."), ("sharedKeys" = Option<String>, Query, description = "Comma-separated shared attribute keys.")), responses((status = 200, description = "The values.", body = Object), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 500, description = "An internal error.", body = DeviceApiError)))]
async fn get_attributes(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
) -> DevResult<axum::Json<Json>> {
    let dev = device(&s, &token, peer).await?;
    let message = Message::AttributeRequest(attribute_request(q.as_deref()));
    match device_messages::handle(&s, (&dev).into(), message, Durability::Durable).await {
        Ok(Answer::Reply(v)) => Ok(axum::Json(v)),
        Ok(_) => Err(internal("an attribute request has an answer")),
        Err(e) => Err(refused(e)),
    }
}

/// The `timeout` parameter of a long-poll, in ms.
fn poll_timeout(query: Option<&str>) -> DevResult<Duration> {
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == "timeout" {
            let ms: u64 = v.parse().map_err(|_| bad("timeout must be milliseconds"))?;
            return Ok(Duration::from_millis(ms).min(MAX_POLL));
        }
    }
    Ok(DEFAULT_POLL)
}

/// Wait for a shared-attribute update
///
/// A long-poll: answers with the next change of the device's shared attributes, or 408 when
/// none arrives within `timeout` milliseconds (default 30 s, at most 300 s).
#[utoipa::path(get, path = "/{token}/attributes/updates", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token."), ("timeout" = Option<u64>, Query, description = "How long to wait, in ms.")), responses((status = 200, description = "The changed attributes.", body = Object), (status = 400, description = "The request is not what the operation takes.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 408, description = "Nothing arrived before the long-poll's timeout.")))]
async fn attribute_updates(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
) -> DevResult<Response> {
    let dev = device(&s, &token, peer).await?;
    let wait = poll_timeout(q.as_deref())?;
    let update = s.attributes.next_update(dev.id, wait).await;
    Ok(match update {
        Some(u) => axum::Json(u).into_response(),
        None => StatusCode::REQUEST_TIMEOUT.into_response(),
    })
}

/// Wait for a command (server-side RPC)
///
/// A long-poll: answers with the device's next job as `{"id", "method", "params"}`, or 408
/// when none arrives within `timeout` milliseconds (default 30 s, at most 300 s). Reply with
/// `POST /{token}/rpc/{id}`.
#[utoipa::path(get, path = "/{token}/rpc", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token."), ("timeout" = Option<u64>, Query, description = "How long to wait, in ms.")), responses((status = 200, description = "The command.", body = Object), (status = 400, description = "The request is not what the operation takes.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 408, description = "Nothing arrived before the long-poll's timeout."), (status = 500, description = "An internal error.", body = DeviceApiError)))]
async fn rpc_poll(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    RawQuery(q): RawQuery,
) -> DevResult<Response> {
    let dev = device(&s, &token, peer).await?;
    let wait = poll_timeout(q.as_deref())?;
    Ok(
        match s.jobs.next_for_http(dev.id, wait).await.map_err(internal)? {
            Some(job) => axum::Json(json!({
                "id": job.rpc_id,
                "method": job.method,
                "params": job.params,
            }))
            .into_response(),
            None => StatusCode::REQUEST_TIMEOUT.into_response(),
        },
    )
}

/// Reply to a command
///
/// The device's reply to the server-side RPC `id`: any JSON. A two-way job succeeds with it;
/// a reply to no pending job is accepted and ignored.
#[utoipa::path(post, path = "/{token}/rpc/{id}", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token."), ("id" = u64, Path, description = "The RPC id the command carried.")), request_body(content = serde_json::Value, content_type = "application/json", description = "The reply: any JSON."), responses((status = 200, description = "Accepted."), (status = 400, description = "The request is not what the operation takes.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 413, description = "The body is over `mqtt.max_packet_size`.", body = DeviceApiError)))]
async fn rpc_reply(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path((token, id)): axum::extract::Path<(String, String)>,
    DevBody(body): DevBody,
) -> DevResult<StatusCode> {
    // Parsed here rather than by `Path<u64>`, whose rejection would be plain text.
    let id: u64 = id.parse().map_err(|_| bad("the RPC id is not a number"))?;
    let dev = device(&s, &token, peer).await?;
    // ThingsBoard's HTTP API takes a JSON reply (MQTT devices may send text).
    serde_json::from_slice::<Json>(&body).map_err(|e| bad(format!("reply is not JSON: {e}")))?;
    // 200 once the job's result is durable (or nobody waits for it).
    run(&s, &dev, Kind::RpcReply { id }, &body)
        .await
        .map_err(refused)?;
    Ok(StatusCode::OK)
}

/// Call the server (client-side RPC)
///
/// ThingsBoard's client-side RPC: `{"method": ..., "params": ...}`; Corral answers
/// `getCurrentTime` and the methods configured under `[rpc]`.
#[utoipa::path(post, path = "/{token}/rpc", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token.")), request_body(content = serde_json::Value, content_type = "application/json", description = "The call: `{\"method\": ..., \"params\": ...}`."), responses((status = 200, description = "The server's answer.", body = Object), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 413, description = "The body is over `mqtt.max_packet_size`.", body = DeviceApiError)))]
async fn client_rpc(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    DevBody(body): DevBody,
) -> DevResult<axum::Json<Json>> {
    let dev = device(&s, &token, peer).await?;
    match run(&s, &dev, Kind::RpcCall, &body).await {
        Ok(Answer::Reply(v)) => Ok(axum::Json(v)),
        Ok(_) => Err(internal("an RPC call has an answer")),
        Err(e) => Err(refused(e)),
    }
}

/// Ask to be claimed
///
/// ThingsBoard's claiming request (`{"secretKey", "durationMs"}`, both optional); recorded in
/// the audit log.
#[utoipa::path(post, path = "/{token}/claim", tag = "device-api", security(()), params(("token" = String, Path, description = "The device's access token.")), request_body(content = serde_json::Value, content_type = "application/json", description = "Optional `secretKey` and `durationMs`."), responses((status = 200, description = "Recorded."), (status = 400, description = "The request is not what the operation takes.", body = DeviceApiError), (status = 401, description = "No device has this access token.", body = DeviceApiError), (status = 403, description = "The device or its credential is disabled or revoked.", body = DeviceApiError), (status = 413, description = "The body is over `mqtt.max_packet_size`.", body = DeviceApiError)))]
async fn claim(
    State(s): S,
    Peer(peer): Peer,
    axum::extract::Path(token): axum::extract::Path<String>,
    DevBody(body): DevBody,
) -> DevResult<StatusCode> {
    let dev = device(&s, &token, peer).await?;
    run(&s, &dev, Kind::Claim, &body).await.map_err(refused)?;
    Ok(StatusCode::OK)
}
