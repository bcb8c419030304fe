//! REST routes for firmware and software packages: upload (the raw file as the body, streamed
//! to disk), list, show, download (with `Range`, for devices and tools that resume) and delete.
//! A package for one fleet is that fleet's: its viewers read it, its workspace admins upload and
//! delete it. A package for any fleet is read by every signed-in user and managed by server
//! admins.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ApiResult;
use super::authz::{Action, Caller, Fleet as FleetObject, On, Operator};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::model::{Package, PackageId, Role};
use crate::ota::{NewPackage, PackageFilter, PackageView};
use crate::services::Services;

type S = State<Arc<Services>>;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(list_packages, upload_package))
        .routes(routes!(get_package, delete_package))
        .routes(routes!(download_package))
        .routes(routes!(set_manifest))
        .routes(routes!(assign_fleet_package, unassign_fleet_package))
}

/// Which package a fleet's devices are to have.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetTarget {
    /// A package for this fleet or for every fleet.
    pub package_id: PackageId,
}

/// Which target a fleet drops.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TargetKind {
    /// `firmware` (default) or `software`.
    #[serde(default, rename = "type")]
    #[param(rename = "type", value_type = Option<crate::model::PackageKind>)]
    pub kind: Option<crate::model::PackageKind>,
}

/// Assign a package to a fleet
///
/// Makes the package the target of every device of the fleet, and of devices that join it
/// later: the fleet's shared attributes `fw_title`, `fw_version`, `fw_size`,
/// `fw_checksum_algorithm` and `fw_checksum` (`sw_*` for software) are set in one write and
/// pushed to the fleet's connected devices in one message, as ThingsBoard devices expect; a
/// device that has its own value of a key keeps it. Devices then fetch the package over MQTT
/// (`v2/fw/request/...`) or HTTP (`GET /api/v1/{token}/firmware`). Needs the operator role on
/// the fleet. Recorded in the audit log (`package_assigned`). Errors: 404 (fleet or package),
/// 422 `invalid_field` (a package of another fleet).
#[utoipa::path(put, path = "/fleets/{id}/packages", tag = "ota",
    params(("id" = String, Path, description = "fleet id")), request_body = FleetTarget,
    responses((status = 200, body = PackageView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn assign_fleet_package(
    State(s): S,
    On(fleet, _): On<FleetObject, Operator>,
    ApiJson(t): ApiJson<FleetTarget>,
) -> ApiResult<axum::Json<PackageView>> {
    let p = s.packages.record(t.package_id).await?;
    if p.fleet_id.is_some_and(|f| f != fleet) {
        return Err(crate::error::Error::invalid(
            "package_id",
            "the package belongs to another fleet",
        )
        .into());
    }
    s.attributes
        .set_fleet(fleet, crate::ota::PackageService::target_attributes(&p))
        .await?;
    s.audit.record(
        crate::audit::Entry::new(
            crate::model::AuditKind::PackageAssigned,
            crate::audit::operator(),
        )
        .fleet(fleet)
        .detail(format!("{} {} {}", p.kind.as_str(), p.title, p.version)),
    );
    tracing::info!(%fleet, package = %p.id, title = %p.title, version = %p.version, "package assigned to a fleet");
    Ok(axum::Json(PackageView::from(&p)))
}

/// Unassign a fleet's package
///
/// Deletes the fleet's target attributes of one type (`fw_*` by default, `sw_*` with
/// `type=software`); devices are told the keys were deleted. Needs the operator role on the
/// fleet. Recorded in the audit log (`package_unassigned`).
#[utoipa::path(delete, path = "/fleets/{id}/packages", tag = "ota",
    params(("id" = String, Path, description = "fleet id"), TargetKind),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn unassign_fleet_package(
    State(s): S,
    On(fleet, _): On<FleetObject, Operator>,
    ApiQuery(k): ApiQuery<TargetKind>,
) -> ApiResult<StatusCode> {
    let kind = k.kind.unwrap_or(crate::model::PackageKind::Firmware);
    s.attributes
        .delete_fleet(fleet, &crate::ota::PackageService::target_keys(kind))
        .await?;
    s.audit.record(
        crate::audit::Entry::new(
            crate::model::AuditKind::PackageUnassigned,
            crate::audit::operator(),
        )
        .fleet(fleet)
        .detail(kind.as_str()),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Checks that the caller may `role` the package: `role` on its fleet, or, for a package of
/// every fleet, anyone signed in to read and a server admin to change. 404 when the caller
/// does not see it.
async fn check(caller: &Caller, p: &Package, role: Role) -> ApiResult<()> {
    let res = match p.fleet_id {
        Some(f) => caller.require(Action::Fleet(f, role)).await,
        None if role == Role::Viewer => {
            caller.filters();
            Ok(())
        }
        None => caller.require(Action::Server).await,
    };
    res.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            ApiError::not_found("package")
        } else {
            e
        }
    })
}

/// Upload a package
///
/// Stores a firmware or software package, streamed to disk and hashed on the way, never held
/// whole in memory. The body is either the file itself (any content type) or a
/// `multipart/form-data` form whose file part is named `file` (or is the first part with a
/// file name), as `curl -F file=@fw.bin` and browsers send it. Title, version, type, fleet,
/// checksum algorithm and file name are query parameters, or, in a form, text fields before
/// the file part (a field given both ways must agree); a form's file name is the default
/// `file_name`. The SHA-256 is always computed; the checksum devices verify (`fw_checksum`)
/// uses `checksum_algorithm` (SHA256 by default) and is written as ThingsBoard devices expect.
/// Answers once the file and its record are durable. A package for a fleet needs the admin
/// role on the fleet's workspace; a package for every fleet needs a server admin. Recorded in
/// the audit log (`package_uploaded`). Errors: 400 `invalid_query` (a parameter of the wrong
/// form), 409 `name_taken` (the type, title and version exist), 413 `payload_too_large` (over
/// `ota.max_package_mb`), 422 `invalid_field` (title, version, algorithm, file name, an empty
/// or broken-off body, a form without a file part or with an unknown field).
#[utoipa::path(post, path = "/packages", tag = "ota", params(NewPackage),
    request_body(content(
        (Vec<u8> = "application/octet-stream"),
        (UploadForm = "multipart/form-data")),
        description = "the package file, alone or as the `file` part of a form"),
    responses((status = 201, body = PackageView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn upload_package(
    State(s): S,
    caller: Caller,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match upload(&s, &caller, query, &headers, body).await {
        Ok(view) => (StatusCode::CREATED, axum::Json(view)).into_response(),
        Err(e) => {
            // A refusal may come before the body was read through: the connection cannot be
            // used for another request, and the client is told so rather than finding out.
            let mut r = e.into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    }
}

/// A package upload as a form (documentation only: the form is read as a stream). Text fields
/// named as the query parameters may come before the file part; the document shows the file
/// alone, as ThingsBoard's upload takes it.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct UploadForm {
    /// The package file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// The form fields that describe the package (the query parameters' names).
const FORM_FIELDS: [&str; 6] = [
    "title",
    "version",
    "type",
    "fleet_id",
    "checksum_algorithm",
    "file_name",
];
/// Longest text field of an upload form, in bytes.
const MAX_FORM_FIELD: usize = 1024;

async fn upload(
    s: &Services,
    caller: &Caller,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<PackageView> {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
        .map(|v| {
            multer::parse_boundary(v).map_err(|e| {
                ApiError::bad_request("invalid_body", format!("a form without a boundary: {e}"))
            })
        })
        .transpose()?;
    let by = caller.principal.name.clone();
    let Some(boundary) = boundary else {
        let new = parse_new(query.as_deref().unwrap_or(""))?;
        authorize(s, caller, &new).await?;
        return Ok(s.packages.upload(new, body.into_data_stream(), &by).await?);
    };
    let mut form = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut fields: Vec<(String, String)> = Vec::new();
    let file = loop {
        let field = form.next_field().await.map_err(form_error)?;
        let Some(mut field) = field else {
            return Err(form_invalid(
                "file",
                "the form has no file part (name it `file`)",
            ));
        };
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" || field.file_name().is_some() {
            break field;
        }
        if !FORM_FIELDS.contains(&name.as_str()) || fields.len() >= FORM_FIELDS.len() {
            return Err(form_invalid(
                "form",
                format!(
                    "unknown or repeated form field `{name}`; before the file part come only {}",
                    FORM_FIELDS.join(", ")
                ),
            ));
        }
        let mut text = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(form_error)? {
            text.extend_from_slice(&chunk);
            if text.len() > MAX_FORM_FIELD {
                return Err(form_invalid(
                    "form",
                    format!("form field `{name}` is over {MAX_FORM_FIELD} bytes"),
                ));
            }
        }
        let text = String::from_utf8(text)
            .map_err(|_| form_invalid("form", format!("form field `{name}` is not UTF-8")))?;
        fields.push((name, text));
    };
    // The query and the form's fields together; one given both ways must agree.
    let mut pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    for (k, v) in fields {
        match pairs.iter().find(|(q, _)| *q == k) {
            Some((_, qv)) if *qv != v => {
                return Err(form_invalid(
                    "form",
                    format!("`{k}` differs between the query and the form"),
                ));
            }
            Some(_) => {}
            None => pairs.push((k, v)),
        }
    }
    if !pairs.iter().any(|(k, _)| k == "file_name")
        && let Some(name) = file.file_name()
    {
        // Browsers send the path's last part; some send a path.
        let name = name.rsplit(['/', '\\']).next().unwrap_or(name).to_string();
        pairs.push(("file_name".into(), name));
    }
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let new = parse_new(&query)?;
    authorize(s, caller, &new).await?;
    Ok(s.packages.upload(new, file, &by).await?)
}

/// The package description from a query string.
fn parse_new(query: &str) -> ApiResult<NewPackage> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_query", "a malformed query"))?;
    axum::extract::Query::<NewPackage>::try_from_uri(&uri)
        .map(|axum::extract::Query(n)| n)
        .map_err(ApiError::from)
}

/// Checks the caller's role for the package's scope and the refusals that need no byte of the
/// file, before the file is read.
async fn authorize(s: &Services, caller: &Caller, new: &NewPackage) -> ApiResult<()> {
    match new.fleet_id {
        Some(f) => caller.require(Action::Fleet(f, Role::Admin)).await?,
        None => caller.require(Action::Server).await?,
    }
    s.packages.check_new(new).await?;
    Ok(())
}

fn form_invalid(field: &'static str, m: impl Into<String>) -> ApiError {
    crate::error::Error::invalid(field, m).into()
}

/// A form that cannot be read: over the size the parser allows, or malformed.
fn form_error(e: multer::Error) -> ApiError {
    form_invalid("form", format!("the form cannot be read: {e}"))
}

/// List packages
///
/// Returns the packages the caller may read, newest first: those of the fleets they see and
/// those for every fleet. Filter by `type`, `fleet_id` (that fleet's and those for every
/// fleet) and `title`.
#[utoipa::path(get, path = "/packages", tag = "ota", params(PackageFilter),
    responses((status = 200, body = Vec<PackageView>)))]
async fn list_packages(
    State(s): S,
    caller: Caller,
    ApiQuery(f): ApiQuery<PackageFilter>,
) -> ApiResult<axum::Json<Vec<PackageView>>> {
    let who = caller.filters().clone();
    let mut fleets = super::auth::SeenFleets::new(&s, &who);
    for p in s.packages.list(&f, |_| true).await? {
        if let Some(fl) = p.fleet_id {
            fleets.sees(fl).await;
        }
    }
    let list = s
        .packages
        .list(&f, |p| {
            p.fleet_id.is_none_or(|fl| fleets.known(fl) == Some(true))
        })
        .await?;
    Ok(axum::Json(list))
}

/// Get a package
///
/// Returns a package's metadata: size, SHA-256 and the checksum devices verify. Needs the
/// viewer role on its fleet (any signed-in user for a package of every fleet).
#[utoipa::path(get, path = "/packages/{id}", tag = "ota",
    params(("id" = String, Path, description = "package id")),
    responses((status = 200, body = PackageView), (status = 404, body = ErrorBody)))]
async fn get_package(
    State(s): S,
    caller: Caller,
    ApiPath(id): ApiPath<PackageId>,
) -> ApiResult<axum::Json<PackageView>> {
    let p = s.packages.record(id).await?;
    check(&caller, &p, Role::Viewer).await?;
    Ok(axum::Json(PackageView::from(&p)))
}

/// Replace a package's manifest with one signed offline
///
/// Takes a manifest signed by a key listed in `[ota] manifest_keys` (see `corral firmware
/// sign`), so the signing key never has to be on the server. Refused with 422 `invalid_field`
/// unless the signature verifies with that key (`signature`) and the manifest describes this
/// package: its title, version, type, size and SHA-256 (`manifest`). Devices get it with the
/// package's other shared attributes from then on. Needs the admin role on the package's
/// fleet's workspace (a server admin for a package of every fleet). Recorded in the audit log
/// (`package_manifest_set`).
#[utoipa::path(put, path = "/packages/{id}/manifest", tag = "ota",
    params(("id" = String, Path, description = "package id")),
    request_body = crate::model::SignedManifest,
    responses((status = 200, body = PackageView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn set_manifest(
    State(s): S,
    caller: Caller,
    ApiPath(id): ApiPath<PackageId>,
    ApiJson(m): ApiJson<crate::model::SignedManifest>,
) -> ApiResult<axum::Json<PackageView>> {
    let p = s.packages.record(id).await?;
    check(&caller, &p, Role::Admin).await?;
    let p = s
        .packages
        .set_manifest(id, m, &crate::audit::operator())
        .await?;
    Ok(axum::Json(PackageView::from(&p)))
}

/// Delete a package
///
/// Deletes a package and, unless another package has the same bytes, its file. Refused (409)
/// while a fleet's target names it or a campaign that has not finished (a draft included)
/// installs it or would roll back to it. Needs the admin role on its fleet (a server admin for
/// a package of every fleet). Recorded in the audit log (`package_deleted`).
#[utoipa::path(delete, path = "/packages/{id}", tag = "ota",
    params(("id" = String, Path, description = "package id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_package(
    State(s): S,
    caller: Caller,
    ApiPath(id): ApiPath<PackageId>,
) -> ApiResult<StatusCode> {
    let p = s.packages.record(id).await?;
    check(&caller, &p, Role::Admin).await?;
    // A campaign that has not finished (a draft included) still needs its package, and so
    // does one that would roll back to it.
    if let Some(c) = s.campaigns.using_package(id).await? {
        return Err(crate::error::Error::conflict(format!(
            "campaign {c} uses this package: finish, cancel or delete it first"
        ))
        .into());
    }
    s.packages.delete(id, &caller.principal.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a package's file
///
/// Streams the file, with `Content-Disposition` naming it and its SHA-256 in `x-sha256`. A
/// single `Range: bytes=first-last` (or `first-`, or `-suffix`) gets 206 with that part, so a
/// download can resume; a range past the end gets 416. Needs the viewer role on its fleet (any
/// signed-in user for a package of every fleet).
#[utoipa::path(get, path = "/packages/{id}/file", tag = "ota",
    params(("id" = String, Path, description = "package id")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
async fn download_package(
    State(s): S,
    caller: Caller,
    ApiPath(id): ApiPath<PackageId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = s.packages.record(id).await?;
    check(&caller, &p, Role::Viewer).await?;
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => match parse_range(v.to_str().unwrap_or(""), p.size) {
            Some(r) => Some(r),
            None => {
                let mut e = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!("the file has {} bytes; ask for one range inside it", p.size),
                )
                .into_response();
                e.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{}", p.size))
                        .map_err(ApiError::internal)?,
                );
                return Ok(e);
            }
        },
    };
    let (start, end) = range.unwrap_or((0, p.size.saturating_sub(1)));
    let len = if p.size == 0 { 0 } else { end - start + 1 };
    let body = Body::from_stream(s.packages.read(&p, start, len).await?);
    let mut r = Response::new(body);
    *r.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = r.headers_mut();
    let hv = |s: String| HeaderValue::from_str(&s).map_err(ApiError::internal);
    h.insert(header::CONTENT_TYPE, hv(p.content_type.clone())?);
    h.insert(header::CONTENT_LENGTH, hv(len.to_string())?);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_DISPOSITION,
        hv(format!("attachment; filename=\"{}\"", p.file_name))?,
    );
    h.insert("x-sha256", hv(p.sha256.clone())?);
    if range.is_some() {
        h.insert(
            header::CONTENT_RANGE,
            hv(format!("bytes {start}-{end}/{}", p.size))?,
        );
    }
    Ok(r)
}

/// The first and last byte of a single `bytes=` range within `size` bytes; `None` when it is
/// not one satisfiable range.
pub(super) fn parse_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        // The last `b` bytes.
        let n: u64 = b.parse().ok().filter(|n| *n > 0)?;
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            size - 1
        } else {
            b.parse::<u64>().ok()?.min(size - 1)
        };
        (start, end)
    };
    (start <= end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-200", 100), Some((0, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("bytes=0-1,4-5", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
