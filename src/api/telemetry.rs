//! REST routes reading a device's telemetry back: raw ranges with cursor pagination and latest
//! values (`/api/v1/devices/{id}/telemetry`, `/telemetry/latest`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use super::{ApiResult, page_limit};
use crate::data::DEFAULT_WINDOW_MS;
use crate::data::aggregate::{AggError, Bucket, boundaries, parse_interval, parse_tz};
use crate::data::retention::{SweepReport, WorkspaceUsage};
use crate::devices::registry::DeviceFilter;
use crate::model::{DEFAULT_TAG, DeviceId, FleetId, Millis, Point, now_ms};
use crate::services::Services;
use crate::store::RawQuery;

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

/// Runs the retention sweep now (it also runs every `retention.sweep_interval_secs`).
#[utoipa::path(post, path = "/retention/sweep", tag = "telemetry",
    responses((status = 200, body = SweepReport)))]
async fn retention_sweep(State(s): State<Arc<Services>>) -> ApiResult<axum::Json<SweepReport>> {
    let r = tokio::task::spawn_blocking(move || {
        crate::data::retention::sweep(&s.store, &s.registry, s.config.retention.default_days)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(axum::Json(r))
}

#[utoipa::path(get, path = "/workspaces/{id}/usage", tag = "telemetry",
    params(("id" = String, Path, description = "workspace id")),
    responses((status = 200, body = WorkspaceUsage), (status = 404, body = ErrorBody)))]
async fn workspace_usage(
    State(s): State<Arc<Services>>,
    ApiPath(id): ApiPath<crate::model::WorkspaceId>,
) -> ApiResult<axum::Json<WorkspaceUsage>> {
    let u = tokio::task::spawn_blocking(move || {
        crate::data::retention::usage(&s.store, &s.registry, id)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(axum::Json(u))
}

/// Disk used by the whole store.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct StoreUsage {
    /// The database (sled) on disk.
    pub store_bytes: u64,
    /// The write-ahead log not yet checkpointed.
    pub wal_bytes: u64,
    pub schema_version: u32,
}

#[utoipa::path(get, path = "/store/usage", tag = "telemetry",
    responses((status = 200, body = StoreUsage)))]
async fn store_usage(State(s): State<Arc<Services>>) -> ApiResult<axum::Json<StoreUsage>> {
    let wal = s.store.path().with_extension("wal");
    let wal_bytes = std::fs::read_dir(&wal)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    Ok(axum::Json(StoreUsage {
        store_bytes: s.store.size_on_disk()?,
        wal_bytes,
        schema_version: s.store.schema_version()?,
    }))
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
    format: Option<String>,
}

/// Telemetry of devices and fleets as CSV (`device_id,device,tag,key,ts,time,value`) or a JSON
/// array, streamed: any size in constant memory.
#[utoipa::path(get, path = "/export", tag = "telemetry", params(ExportParams),
    responses((status = 200, description = "CSV or JSON, streamed", content_type = "text/csv"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn export(
    State(s): State<Arc<Services>>,
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
    let mut devices = Vec::new();
    for d in ids(q.device_id.as_deref())? {
        let dev = s.registry.device_record(DeviceId(d))?;
        devices.push((dev.id, dev.name));
    }
    for f in ids(q.fleet_id.as_deref())? {
        for id in fleet_devices(&s, FleetId(f))? {
            if !devices.iter().any(|(d, _)| *d == id) {
                devices.push((id, s.registry.device_record(id)?.name));
            }
        }
    }
    if q.device_id.is_none() && q.fleet_id.is_none() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "name devices (device_id) or fleets (fleet_id) to export",
        ));
    }
    let spec = ExportSpec {
        devices,
        tags: split_keys(q.tags.as_deref()),
        keys: split_keys(q.keys.as_deref()),
        from,
        to,
        format,
    };
    let rx = crate::data::export::spawn(s.store.clone(), spec);
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
            AggError::Range => "invalid_range",
            AggError::Store(e) => return ApiError::internal(e),
        };
        ApiError::bad_request(code, e.to_string())
    }
}

/// Every device of a fleet (404 when the fleet does not exist).
pub(super) fn fleet_devices(s: &Services, fleet: FleetId) -> ApiResult<Vec<DeviceId>> {
    s.registry.fleet(fleet)?;
    let filter = DeviceFilter {
        fleet_id: Some(fleet),
        ..Default::default()
    };
    Ok(s.registry.device_ids(&filter, false)?)
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<FleetId>,
    /// Devices merged into the result.
    pub devices: usize,
    pub tag: String,
    pub interval_ms: Millis,
    pub tz: String,
    pub data: BTreeMap<String, Vec<Bucket>>,
}

fn run_aggregate(
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
    let data = s.data.aggregate(
        devices,
        &tag,
        split_keys(q.keys.as_deref()),
        &bounds,
        from,
        to,
    )?;
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

#[utoipa::path(get, path = "/devices/{id}/telemetry/aggregate", tag = "telemetry",
    params(("id" = String, Path, description = "device id"), AggregateParams),
    responses((status = 200, body = AggregateResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn device_aggregate(
    State(s): State<Arc<Services>>,
    ApiPath(id): ApiPath<DeviceId>,
    ApiQuery(q): ApiQuery<AggregateParams>,
) -> ApiResult<axum::Json<AggregateResult>> {
    s.registry.device_record(id)?;
    let s2 = s.clone();
    // A long range costs milliseconds of sled reads: off the async threads.
    let mut r = tokio::task::spawn_blocking(move || run_aggregate(&s2, &[id], q))
        .await
        .map_err(ApiError::internal)??;
    r.device_id = Some(id);
    Ok(axum::Json(r))
}

#[utoipa::path(get, path = "/fleets/{id}/telemetry/aggregate", tag = "telemetry",
    params(("id" = String, Path, description = "fleet id"), AggregateParams),
    responses((status = 200, body = AggregateResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn fleet_aggregate(
    State(s): State<Arc<Services>>,
    ApiPath(id): ApiPath<FleetId>,
    ApiQuery(q): ApiQuery<AggregateParams>,
) -> ApiResult<axum::Json<AggregateResult>> {
    let s2 = s.clone();
    let mut r = tokio::task::spawn_blocking(move || {
        let devices = fleet_devices(&s2, id)?;
        run_aggregate(&s2, &devices, q)
    })
    .await
    .map_err(ApiError::internal)??;
    r.fleet_id = Some(id);
    Ok(axum::Json(r))
}

/// Tags with their keys.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Tags {
    pub tags: BTreeMap<String, Vec<String>>,
}

#[utoipa::path(get, path = "/devices/{id}/tags", tag = "telemetry",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Tags), (status = 404, body = ErrorBody)))]
async fn device_tags(
    State(s): State<Arc<Services>>,
    ApiPath(id): ApiPath<DeviceId>,
) -> ApiResult<axum::Json<Tags>> {
    s.registry.device_record(id)?;
    Ok(axum::Json(Tags {
        tags: s.data.tags(&[id])?,
    }))
}

#[utoipa::path(get, path = "/fleets/{id}/tags", tag = "telemetry",
    params(("id" = String, Path, description = "fleet id")),
    responses((status = 200, body = Tags), (status = 404, body = ErrorBody)))]
async fn fleet_tags(
    State(s): State<Arc<Services>>,
    ApiPath(id): ApiPath<FleetId>,
) -> ApiResult<axum::Json<Tags>> {
    let devices = fleet_devices(&s, id)?;
    Ok(axum::Json(Tags {
        tags: s.data.tags(&devices)?,
    }))
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
    pub data: BTreeMap<String, Vec<Point>>,
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

#[utoipa::path(get, path = "/devices/{id}/telemetry", tag = "telemetry",
    params(("id" = String, Path, description = "device id"), TelemetryParams),
    responses((status = 200, body = TelemetryPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_telemetry(
    State(s): State<Arc<Services>>,
    ApiPath(id): ApiPath<DeviceId>,
    ApiQuery(q): ApiQuery<TelemetryParams>,
) -> ApiResult<axum::Json<TelemetryPage>> {
    s.registry.device_record(id)?;
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
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let page = s.data.raw(id, &query)?;
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
    pub data: BTreeMap<String, Point>,
}

#[utoipa::path(get, path = "/devices/{id}/telemetry/latest", tag = "telemetry",
    params(("id" = String, Path, description = "device id"), LatestParams),
    responses((status = 200, body = LatestValues), (status = 404, body = ErrorBody)))]
async fn get_latest(
    State(s): State<Arc<Services>>,
    ApiPath(id): ApiPath<DeviceId>,
    ApiQuery(q): ApiQuery<LatestParams>,
) -> ApiResult<axum::Json<LatestValues>> {
    s.registry.device_record(id)?;
    let tag = q.tag.unwrap_or_else(|| DEFAULT_TAG.to_string());
    let keys = split_keys(q.keys.as_deref());
    let data = s
        .data
        .latest(id, &tag, keys.as_deref())?
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
