//! REST routes reading telemetry back: raw ranges with cursor pagination, latest values,
//! aggregates, tags, exports, retention and usage. Everything that reads the store at size
//! runs on a blocking thread (`blocking`), never on the threads that serve requests, so one
//! heavy query cannot hold up `/healthz` or another client; answers are bounded (pages,
//! `too_many_buckets`, `too_many_series`) or streamed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::authz::{Device, ExportScope, Fleet, InWorkspace, On, ServerAdmin, Viewer};
use super::error::{ApiError, ApiQuery, ErrorBody};
use super::{ApiResult, page_limit};
use crate::data::StoreUsage;
use crate::data::aggregate::{AggError, Bucket, boundaries, parse_interval, parse_tz};
use crate::data::retention::{SweepReport, WorkspaceUsage};
use crate::data::{DEFAULT_WINDOW_MS, TagsError};
use crate::devices::registry::DeviceFilter;
use crate::model::RawQuery;
use crate::model::{DEFAULT_TAG, DeviceId, FleetId, Millis, Point, now_ms};
use crate::services::Services;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new()
        .routes(routes!(get_telemetry))
        .routes(routes!(get_latest))
        .routes(routes!(device_aggregate))
        .routes(routes!(fleet_aggregate))
        .routes(routes!(device_tags))
        .routes(routes!(fleet_tags))
        .routes(routes!(export))
        .routes(routes!(retention_sweep))
        .routes(routes!(workspace_usage))
        .routes(routes!(store_usage))
}

/// Runs `f` on a blocking thread: store reads that grow with the data never run on the
/// threads that serve requests.
async fn blocking<T: Send + 'static, Fut: std::future::Future<Output = ApiResult<T>>>(
    f: impl FnOnce() -> Fut + Send + 'static,
) -> ApiResult<T> {
    crate::workers::on_blocking_pool(f)
        .await
        .map_err(ApiError::internal)?
}

/// Most distinct keys one tag listing answers with: ten devices at the default key cap.
pub const MAX_LISTED_KEYS: usize = 100_000;

/// Run the retention sweep
///
/// Deletes telemetry older than each workspace's retention now, and reports what it deleted. The
/// sweep also runs every `retention.sweep_interval_secs`. Needs a server admin.
#[utoipa::path(post, path = "/retention/sweep", tag = "telemetry",
    responses((status = 200, body = SweepReport)))]
async fn retention_sweep(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
) -> ApiResult<axum::Json<SweepReport>> {
    let r = crate::workers::on_blocking_pool(move || async move {
        s.data
            .retention_sweep(&s.registry, s.config.retention.default_days)
            .await
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(axum::Json(r))
}

/// Get a workspace's telemetry usage
///
/// Returns how much telemetry a workspace holds: devices, series, points, an estimate of their
/// size, and the workspace's retention. Needs the viewer role on the whole workspace.
#[utoipa::path(get, path = "/workspaces/{id}/usage", tag = "telemetry",
    params(("id" = String, Path, description = "workspace id")),
    responses((status = 200, body = WorkspaceUsage), (status = 404, body = ErrorBody)))]
async fn workspace_usage(
    State(s): State<Arc<Services>>,
    InWorkspace(id, _): InWorkspace<Viewer>,
) -> ApiResult<axum::Json<WorkspaceUsage>> {
    let u = crate::workers::on_blocking_pool(move || async move {
        s.data.workspace_usage(&s.registry, id).await
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(axum::Json(u))
}

/// Get the store's disk usage
///
/// Returns the disk space used by the whole store (the database and its write-ahead log not yet
/// checkpointed) and the store's schema version. Needs a server admin.
#[utoipa::path(get, path = "/store/usage", tag = "telemetry",
    responses((status = 200, body = StoreUsage)))]
async fn store_usage(
    State(s): State<Arc<Services>>,
    _: ServerAdmin,
) -> ApiResult<axum::Json<StoreUsage>> {
    // Walks the store's files: off the request threads.
    let usage = blocking(move || async move { Ok(s.data.store_usage().await?) }).await?;
    Ok(axum::Json(usage))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// Comma-separated device ids.
    device_id: Option<String>,
    /// Comma-separated fleet ids: every device of each.
    fleet_id: Option<String>,
    /// Start, inclusive, ms (default: 24 hours before `to`).
    from: Option<Millis>,
    /// End, inclusive, ms (default: now).
    to: Option<Millis>,
    /// Comma-separated tags (default: all).
    tags: Option<String>,
    /// Comma-separated keys (default: all).
    keys: Option<String>,
    /// `csv` (default) or `json`.
    #[param(pattern = "^(csv|json)$")]
    format: Option<String>,
}

/// Export telemetry
///
/// Streams the telemetry of the named devices (`device_id`) and of every device of the named fleets
/// (`fleet_id`) between `from` and `to` (ms since the epoch, inclusive; the last 24 hours by
/// default) as a download: CSV (`device_id,device,tag,key,ts,time,value`) or a JSON array
/// (`format=json`). Filter by `tags` and `keys`; exports of any size are streamed. Server admins
/// may export anything; other callers must name devices or fleets, all of which they can see.
/// Errors: 400 `invalid_format`, 400 `invalid_range` (`from` after `to`), 400 `invalid_id`, 400
/// `invalid_query` (no device or fleet named), 403 `forbidden` (nothing named, for callers who are
/// not server admins), 404 `not_found` (a device or fleet that does not exist or that the caller
/// cannot see).
#[utoipa::path(get, path = "/export", tag = "telemetry", params(ExportParams),
    responses((status = 200, description = "CSV (the default) or a JSON array (`format=json`), streamed",
            content((String = "text/csv"), (Vec<Object> = "application/json"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn export(
    State(s): State<Arc<Services>>,
    _: ExportScope,
    ApiQuery(q): ApiQuery<ExportParams>,
) -> ApiResult<axum::response::Response> {
    use crate::data::export::{ExportSpec, Format};
    let format = Format::parse(q.format.as_deref())
        .ok_or_else(|| ApiError::bad_request("invalid_format", "format is csv or json"))?;
    let to = q.to.unwrap_or_else(now_ms);
    let from = q.from.unwrap_or(to.saturating_sub(DEFAULT_WINDOW_MS));
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_range",
            "from must not be after to",
        ));
    }
    let ids = |v: Option<&str>| -> ApiResult<Vec<uuid::Uuid>> {
        split_keys(v)
            .unwrap_or_default()
            .iter()
            .map(|x| {
                x.parse().map_err(|_| {
                    ApiError::bad_request("invalid_id", format!("\"{x}\" is not an id"))
                })
            })
            .collect()
    };
    if q.device_id.is_none() && q.fleet_id.is_none() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "name devices (device_id) or fleets (fleet_id) to export",
        ));
    }
    let (device_ids, fleet_ids) = (ids(q.device_id.as_deref())?, ids(q.fleet_id.as_deref())?);
    // Whole fleets are read from the registry: off the request threads.
    let s2 = s.clone();
    let devices = blocking(move || async move {
        let mut devices = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for d in device_ids {
            let dev = s2.registry.device_record(DeviceId(d)).await?;
            if seen.insert(dev.id) {
                devices.push((dev.id, dev.name));
            }
        }
        for f in fleet_ids {
            for id in fleet_devices(&s2, FleetId(f)).await? {
                if seen.insert(id) {
                    devices.push((id, s2.registry.device_record(id).await?.name));
                }
            }
        }
        Ok(devices)
    })
    .await?;
    let spec = ExportSpec {
        devices,
        tags: split_keys(q.tags.as_deref()),
        keys: split_keys(q.keys.as_deref()),
        from,
        to,
        format,
    };
    let rx = s.data.export(spec);
    let body = axum::body::Body::from_stream(tokio_stream_of(rx));
    let ext = if format == Format::Csv { "csv" } else { "json" };
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, format.content_type())
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"corral-export.{ext}\""),
        )
        .body(body)
        .map_err(ApiError::internal)
}

/// A receiver as a stream, for a streamed body.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl From<AggError> for ApiError {
    fn from(e: AggError) -> Self {
        let code = match &e {
            AggError::Interval(_) => "invalid_interval",
            AggError::TimeZone(_) => "invalid_tz",
            AggError::TooManyBuckets => "too_many_buckets",
            AggError::TooManySeries { .. } => "too_many_series",
            AggError::Range => "invalid_range",
            AggError::Store(e) => return ApiError::internal(e),
        };
        ApiError::bad_request(code, e.to_string())
    }
}

impl From<TagsError> for ApiError {
    fn from(e: TagsError) -> Self {
        match e {
            TagsError::TooMany(_) => ApiError::bad_request("too_many_series", e.to_string()),
            TagsError::Store(e) => ApiError::internal(e),
        }
    }
}

/// Every device of a fleet (404 when the fleet does not exist).
pub(super) async fn fleet_devices(s: &Services, fleet: FleetId) -> ApiResult<Vec<DeviceId>> {
    s.registry.fleet(fleet).await?;
    let filter = DeviceFilter {
        fleet_id: Some(fleet),
        ..Default::default()
    };
    Ok(s.registry.device_ids(&filter, false).await?)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AggregateParams {
    /// Bucket length: a whole number of minutes from `1m` to `1d` (`15m`, `1h`, `1d`).
    interval: String,
    /// Comma-separated keys; all keys of the tag when absent.
    keys: Option<String>,
    /// Start, inclusive, in ms since the epoch (default: 24 hours before `to`).
    from: Option<Millis>,
    /// End, inclusive, in ms since the epoch (default: now).
    to: Option<Millis>,
    /// IANA time zone for bucket alignment and day boundaries (default `UTC`).
    tz: Option<String>,
    /// Tag (default `default`).
    tag: Option<String>,
}

/// Aggregates per key, buckets in time order (empty buckets included, with count 0).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AggregateResult {
    /// The device aggregated (device aggregates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// The fleet aggregated (fleet aggregates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<FleetId>,
    /// Devices merged into the result.
    pub devices: usize,
    pub tag: String,
    /// Bucket length in ms.
    pub interval_ms: Millis,
    /// Time zone the buckets are aligned in.
    pub tz: String,
    /// Buckets per key, in time order.
    pub data: BTreeMap<String, Vec<Bucket>>,
}

async fn run_aggregate(
    s: &Services,
    devices: &[DeviceId],
    q: AggregateParams,
) -> ApiResult<AggregateResult> {
    let interval = parse_interval(&q.interval)?;
    let tz = parse_tz(q.tz.as_deref())?;
    let to = q.to.unwrap_or_else(now_ms);
    let from = q.from.unwrap_or(to.saturating_sub(DEFAULT_WINDOW_MS));
    let bounds = boundaries(from, to, interval, &tz)?;
    let tag = q.tag.unwrap_or_else(|| DEFAULT_TAG.to_string());
    let data = s
        .data
        .aggregate(
            devices,
            &tag,
            split_keys(q.keys.as_deref()),
            &bounds,
            from,
            to,
        )
        .await?;
    Ok(AggregateResult {
        device_id: None,
        fleet_id: None,
        devices: devices.len(),
        tag,
        interval_ms: interval,
        tz: q.tz.unwrap_or_else(|| "UTC".into()),
        data,
    })
}

/// Aggregate a device's telemetry
///
/// Returns, per key of one tag, time buckets of `interval` between `from` and `to` (the last 24
/// hours by default), aligned in time zone `tz`, each with the count of values and the average,
/// minimum, maximum and sum of the numeric ones. Empty buckets are included. Needs the viewer role
/// on the device's fleet. Errors: 400 `invalid_interval`, 400 `invalid_tz`, 400 `invalid_range`,
/// 400 `too_many_buckets` (over 10000), 400 `too_many_series` (keys × buckets over 100000).
#[utoipa::path(get, path = "/devices/{id}/telemetry/aggregate", tag = "telemetry",
    params(("id" = String, Path, description = "device id"), AggregateParams),
    responses((status = 200, body = AggregateResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn device_aggregate(
    State(s): State<Arc<Services>>,
    On(id, _): On<Device, Viewer>,
    ApiQuery(q): ApiQuery<AggregateParams>,
) -> ApiResult<axum::Json<AggregateResult>> {
    // A long range or many keys cost many sled reads: off the request threads.
    let mut r = blocking(move || async move {
        s.registry.device_record(id).await?;
        run_aggregate(&s, &[id], q).await
    })
    .await?;
    r.device_id = Some(id);
    Ok(axum::Json(r))
}

/// Aggregate a fleet's telemetry
///
/// Aggregates the telemetry of every device of the fleet together, as
/// `GET /devices/{id}/telemetry/aggregate` does for one device: per key, buckets of `interval`
/// between `from` and `to`, aligned in time zone `tz`. Needs the viewer role on the fleet. Errors:
/// 400 `invalid_interval`, 400 `invalid_tz`, 400 `invalid_range`, 400 `too_many_buckets`, 400
/// `too_many_series`.
#[utoipa::path(get, path = "/fleets/{id}/telemetry/aggregate", tag = "telemetry",
    params(("id" = String, Path, description = "fleet id"), AggregateParams),
    responses((status = 200, body = AggregateResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn fleet_aggregate(
    State(s): State<Arc<Services>>,
    On(id, _): On<Fleet, Viewer>,
    ApiQuery(q): ApiQuery<AggregateParams>,
) -> ApiResult<axum::Json<AggregateResult>> {
    let mut r = blocking(move || async move {
        let devices = fleet_devices(&s, id).await?;
        run_aggregate(&s, &devices, q).await
    })
    .await?;
    r.fleet_id = Some(id);
    Ok(axum::Json(r))
}

/// Tags with their keys, sorted.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Tags {
    /// Each tag with its keys.
    pub tags: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TagsParams {
    /// Only this tag (default: every tag).
    tag: Option<String>,
}

/// The tags (or the one named) of `devices` with their keys; at most `MAX_LISTED_KEYS`.
async fn list_tags(s: &Services, devices: &[DeviceId], tag: Option<String>) -> ApiResult<Tags> {
    let tags = match tag {
        None => s.data.tags(devices, MAX_LISTED_KEYS).await?,
        Some(t) => {
            let keys = s.data.tag_keys(devices, &t, MAX_LISTED_KEYS).await?;
            if keys.is_empty() {
                BTreeMap::new()
            } else {
                BTreeMap::from([(t, keys)])
            }
        }
    };
    Ok(Tags { tags })
}

/// List a device's telemetry tags
///
/// Returns the tags the device has sent telemetry under, each with its keys, sorted; `tag` limits
/// the answer to one tag. Needs the viewer role on the device's fleet. Errors: 400
/// `too_many_series` (more than 100000 keys).
#[utoipa::path(get, path = "/devices/{id}/tags", tag = "telemetry",
    params(("id" = String, Path, description = "device id"), TagsParams),
    responses((status = 200, body = Tags), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn device_tags(
    State(s): State<Arc<Services>>,
    On(id, _): On<Device, Viewer>,
    ApiQuery(q): ApiQuery<TagsParams>,
) -> ApiResult<axum::Json<Tags>> {
    let tags = blocking(move || async move {
        s.registry.device_record(id).await?;
        list_tags(&s, &[id], q.tag).await
    })
    .await?;
    Ok(axum::Json(tags))
}

/// List a fleet's telemetry tags
///
/// Returns the tags the fleet's devices have sent telemetry under, each with the union of their
/// keys, sorted; `tag` limits the answer to one tag. Needs the viewer role on the fleet. Errors:
/// 400 `too_many_series` (more than 100000 keys).
#[utoipa::path(get, path = "/fleets/{id}/tags", tag = "telemetry",
    params(("id" = String, Path, description = "fleet id"), TagsParams),
    responses((status = 200, body = Tags), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn fleet_tags(
    State(s): State<Arc<Services>>,
    On(id, _): On<Fleet, Viewer>,
    ApiQuery(q): ApiQuery<TagsParams>,
) -> ApiResult<axum::Json<Tags>> {
    let tags = blocking(move || async move {
        let devices = fleet_devices(&s, id).await?;
        list_tags(&s, &devices, q.tag).await
    })
    .await?;
    Ok(axum::Json(tags))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TelemetryParams {
    /// Comma-separated keys; all keys when absent.
    keys: Option<String>,
    /// Start, inclusive, in ms since the epoch (default: 24 hours before `to`).
    from: Option<Millis>,
    /// End, inclusive, in ms since the epoch (default: now).
    to: Option<Millis>,
    /// Points per page across keys, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `asc` (default) or `desc` by time within each key.
    order: Option<Order>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Tag (default `default`).
    tag: Option<String>,
}

/// Points grouped by key; keys in name order, points by time.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TelemetryPage {
    pub device_id: DeviceId,
    pub tag: String,
    /// Points per key; each point's `ts` is in ms since the epoch.
    pub data: BTreeMap<String, Vec<Point>>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

pub(super) fn split_keys(keys: Option<&str>) -> Option<Vec<String>> {
    keys.map(|k| {
        k.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}

fn encode_cursor(key: &str, ts: Millis) -> String {
    let raw = serde_json::to_vec(&(key, ts)).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(c: &str) -> Result<(String, Millis), ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one this API returned");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| bad())?;
    serde_json::from_slice(&raw).map_err(|_| bad())
}

/// Read a device's telemetry
///
/// Returns raw telemetry points of one tag between `from` and `to` (ms since the epoch, inclusive;
/// the last 24 hours by default), grouped by key, keys in name order and points by time
/// (`order=desc` for newest first). A page holds at most `limit` points across keys; pass
/// `next_cursor` as `cursor` for the next page. Needs the viewer role on the device's fleet.
/// Errors: 400 `invalid_range`, 400 `invalid_cursor`, 400 `invalid_limit`.
#[utoipa::path(get, path = "/devices/{id}/telemetry", tag = "telemetry",
    params(("id" = String, Path, description = "device id"), TelemetryParams),
    responses((status = 200, body = TelemetryPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_telemetry(
    State(s): State<Arc<Services>>,
    On(id, _): On<Device, Viewer>,
    ApiQuery(q): ApiQuery<TelemetryParams>,
) -> ApiResult<axum::Json<TelemetryPage>> {
    let to = q.to.unwrap_or_else(now_ms);
    let from = q.from.unwrap_or(to.saturating_sub(DEFAULT_WINDOW_MS));
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_range",
            "from must not be after to",
        ));
    }
    let tag = q.tag.unwrap_or_else(|| DEFAULT_TAG.to_string());
    let query = RawQuery {
        tag: tag.clone(),
        keys: split_keys(q.keys.as_deref()),
        from,
        to,
        descending: matches!(q.order.unwrap_or_default(), Order::Desc),
        limit: page_limit(q.limit)?,
        after: q
            .cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(decode_cursor)
            .transpose()?,
    };
    // A page holds at most `limit` points, but finding them reads the tag's directory.
    let page = blocking(move || async move {
        s.registry.device_record(id).await?;
        Ok(s.data.raw(id, &query).await?)
    })
    .await?;
    Ok(axum::Json(TelemetryPage {
        device_id: id,
        tag,
        data: page.series.into_iter().collect(),
        next_cursor: page.next.map(|(k, ts)| encode_cursor(&k, ts)),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LatestParams {
    /// Comma-separated keys; all keys when absent.
    keys: Option<String>,
    /// Tag (default `default`).
    tag: Option<String>,
}

/// The latest point of each key.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct LatestValues {
    pub device_id: DeviceId,
    pub tag: String,
    /// The latest point of each key; `ts` is in ms since the epoch.
    pub data: BTreeMap<String, Point>,
}

/// Get a device's latest telemetry
///
/// Returns the latest point of each key of one tag (`default` unless `tag` is given), or of the
/// keys named in `keys`. Needs the viewer role on the device's fleet.
#[utoipa::path(get, path = "/devices/{id}/telemetry/latest", tag = "telemetry",
    params(("id" = String, Path, description = "device id"), LatestParams),
    responses((status = 200, body = LatestValues), (status = 404, body = ErrorBody)))]
async fn get_latest(
    State(s): State<Arc<Services>>,
    On(id, _): On<Device, Viewer>,
    ApiQuery(q): ApiQuery<LatestParams>,
) -> ApiResult<axum::Json<LatestValues>> {
    let tag = q.tag.unwrap_or_else(|| DEFAULT_TAG.to_string());
    let keys = split_keys(q.keys.as_deref());
    let t = tag.clone();
    // One read per key, up to the device's key cap: off the request threads.
    let data = blocking(move || async move {
        s.registry.device_record(id).await?;
        Ok(s.data.latest(id, &t, keys.as_deref()).await?)
    })
    .await?
    .into_iter()
    .collect();
    Ok(axum::Json(LatestValues {
        device_id: id,
        tag,
        data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = encode_cursor("temp,x", -5);
        assert_eq!(
            decode_cursor(&c).expect("valid"),
            ("temp,x".to_string(), -5)
        );
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor("e30").is_err());
    }
}
