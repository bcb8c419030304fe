//! The overview route (`/overview`): the dashboard's numbers over what the caller sees
//! (devices online and offline, the message rate, open conditions, unfinished jobs,
//! integrations' health) and fleet health: per fleet, its devices online, offline, silent and
//! disabled, its open conditions by severity, its running rollouts and campaigns with their
//! progress, and its messages per minute over the last hour (`devices::rates`). One pass over
//! the devices and one over the open conditions answer it, so a page asks once instead of once
//! per fleet.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json_;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::authz::Caller;
use super::error::{ApiError, ApiQuery, ErrorBody};
use super::{ApiResult, auth::SeenFleets};
use crate::conditions::ConditionQuery;
use crate::devices::registry::DeviceStatus;
use crate::model::{
    CampaignState, DeviceId, FleetId, OtaState, RolloutState, Severity, WorkspaceId,
};
use crate::services::Services;

type S = State<Arc<Services>>;

/// Fleets the overview details; past this many, the rest are counted in the totals only.
pub const MAX_FLEETS: usize = 200;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new().routes(routes!(overview))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OverviewParams {
    /// Minutes without a message after which a device counts as silent (default 60).
    #[param(minimum = 1, maximum = 5_256_000)]
    silent_mins: Option<u64>,
}

/// The dashboard's numbers, over what the caller sees.
#[derive(Serialize, ToSchema)]
pub struct Overview {
    /// Devices the caller can see.
    devices: DeviceCounts,
    /// Telemetry messages stored per second, over the last minute (server-wide).
    messages_per_sec: f64,
    /// Telemetry messages per minute over the last hour in the fleets the caller sees, oldest
    /// first (60 values; the last is the current minute, still counting).
    messages_per_minute: Vec<u64>,
    /// Device conditions (alarms) open now.
    open_conditions: u64,
    /// Jobs not finished yet.
    running_jobs: u64,
    /// Webhook integrations and their health (server admins only): `id`, `name`, `state`
    /// (`alarm` while entries are being dropped), `queue_depth`, `oldest_age_secs`,
    /// `dead_letters`, `last_error`.
    #[schema(value_type = Vec<Object>)]
    integrations: Vec<Json_>,
    /// The silence threshold the `silent` counts use, in minutes.
    silent_mins: u64,
    /// Health of each fleet the caller sees, by workspace then fleet name (at most 200).
    fleets: Vec<FleetHealth>,
    /// More fleets than `fleets` lists exist; the totals count them all.
    fleets_truncated: bool,
}

#[derive(Serialize, ToSchema, Default)]
pub struct DeviceCounts {
    total: u64,
    /// Devices with at least one open connection now.
    online: u64,
    offline: u64,
    /// Devices without a message for `silent_mins` or more (never-heard devices included).
    silent: u64,
}

/// One fleet's health.
#[derive(Serialize, ToSchema)]
pub struct FleetHealth {
    workspace_id: WorkspaceId,
    workspace: String,
    fleet_id: FleetId,
    fleet: String,
    devices: DeviceCounts,
    disabled: u64,
    /// Open conditions by severity (`critical`, `major`, `minor`, `warning`, `info`; absent
    /// severities left out).
    conditions: BTreeMap<Severity, u64>,
    /// Rollouts and campaigns running or paused in the fleet, with their progress.
    work: Vec<RunningWork>,
    /// Telemetry messages per minute over the last hour, oldest first (60 values; the last is
    /// the current minute).
    messages_per_minute: Vec<u32>,
}

/// A rollout (a command to a fleet) or an OTA campaign that has not finished.
#[derive(Serialize, ToSchema)]
pub struct RunningWork {
    /// `rollout` or `campaign`.
    kind: &'static str,
    id: String,
    /// The campaign's name, or the rollout's method.
    name: String,
    /// `running`, `paused`, or `draft` (a campaign waiting to start).
    state: String,
    /// Devices targeted.
    total: u32,
    /// Devices finished (succeeded, failed or otherwise done).
    done: u32,
    /// Devices that failed (or timed out).
    failed: u32,
}

#[derive(Default)]
struct FleetTally {
    counts: DeviceCounts,
    disabled: u64,
    conditions: BTreeMap<Severity, u64>,
}

/// Get the dashboard overview
///
/// Returns the dashboard's numbers over what the caller can see: devices (total, online,
/// offline, silent), open conditions and unfinished jobs, plus the server-wide rate of stored
/// telemetry messages and the messages per minute of the last hour in the fleets the caller
/// sees. Server admins also get each integration's health. `fleets` gives each visible fleet's
/// health (at most 200, by workspace and fleet name): its devices online, offline, silent and
/// disabled, its open conditions by severity, its rollouts and campaigns that have not
/// finished, with their progress, and its messages per minute over the last hour. A device is silent when nothing was
/// heard from it for `silent_mins` minutes (default 60). Any authenticated caller. Errors: 400
/// `invalid_query` (`silent_mins` outside 1 to 5,256,000, ten years).
#[utoipa::path(get, path = "/overview", tag = "overview", params(OverviewParams),
    responses((status = 200, body = Overview), (status = 400, body = ErrorBody)))]
async fn overview(
    State(s): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<OverviewParams>,
) -> ApiResult<Json<Overview>> {
    let silent_mins = q.silent_mins.unwrap_or(60);
    let silent_since = super::registry::silent_since(silent_mins)?;
    let p = caller.filters().clone();
    let s2 = s.clone();
    let p2 = p.clone();
    // The last hour's message rates: each fleet's, and their sum over the fleets the caller
    // sees (those past the 200 detailed included).
    let rates: HashMap<FleetId, Vec<u32>> = s
        .message_rates
        .last_hour(crate::model::now_ms())
        .into_iter()
        .filter(|r| p.admin || p.sees_fleet(r.workspace_id, r.fleet_id))
        .map(|r| (r.fleet_id, r.per_minute))
        .collect();
    let mut messages_per_minute = vec![0u64; crate::devices::rates::MINUTES];
    for series in rates.values() {
        for (sum, n) in messages_per_minute.iter_mut().zip(series) {
            *sum += u64::from(*n);
        }
    }
    let (totals, fleets, truncated, running, conditions) =
        crate::workers::on_blocking_pool(move || async move {
            let mut totals = DeviceCounts::default();
            let mut per_fleet: HashMap<FleetId, FleetTally> = HashMap::new();
            let mut placed: HashMap<DeviceId, FleetId> = HashMap::new();
            let all = s2
                .registry
                .all_devices_where(&Default::default(), |d| {
                    p2.admin || p2.sees_fleet(d.workspace_id, d.fleet_id)
                })
                .await?;
            for d in &all {
                let online = d.status == DeviceStatus::Online;
                let silent = d.last_activity_at.is_none_or(|t| t < silent_since);
                let t = per_fleet.entry(d.fleet_id).or_default();
                for c in [&mut totals, &mut t.counts] {
                    c.total += 1;
                    c.online += u64::from(online);
                    c.offline += u64::from(!online);
                    c.silent += u64::from(silent);
                }
                t.disabled += u64::from(!d.enabled);
                placed.insert(d.id, d.fleet_id);
            }
            drop(all);
            // Open conditions, each counted in its device's current fleet.
            let (open, _) = s2
                .conditions
                .list(
                    &ConditionQuery {
                        open: Some(true),
                        ..Default::default()
                    },
                    usize::MAX,
                    &|c| p2.admin || p2.sees_fleet(c.workspace_id, c.fleet_id),
                )
                .await?;
            let conditions = open.len() as u64;
            for c in &open {
                if let Some(f) = placed.get(&c.device_id) {
                    *per_fleet
                        .entry(*f)
                        .or_default()
                        .conditions
                        .entry(c.severity)
                        .or_default() += 1;
                }
            }
            let mut running = 0u64;
            for (_, d) in s2.jobs.unfinished().await.map_err(ApiError::internal)? {
                running += u64::from(placed.contains_key(&d));
            }
            // Name and order the fleets; detail at most MAX_FLEETS of them.
            let mut fleets = Vec::new();
            let mut ws_names: HashMap<WorkspaceId, String> = HashMap::new();
            for (fid, tally) in per_fleet {
                let Ok(f) = s2.registry.fleet(fid).await else {
                    continue;
                };
                if let std::collections::hash_map::Entry::Vacant(e) = ws_names.entry(f.workspace_id)
                {
                    let n = s2.registry.workspace(f.workspace_id).await.map(|w| w.name);
                    e.insert(n.unwrap_or_default());
                }
                fleets.push((f, tally));
            }
            // Fleets without devices are healthy by definition but still shown, so that
            // every fleet the caller sees has a row.
            let mut seen = SeenFleets::new(&s2, &p2);
            let listed = s2
                .registry
                .list_fleets(None, None, None, usize::MAX)
                .await?
                .items;
            for f in listed {
                if fleets.iter().any(|(g, _)| g.id == f.id) || !seen.sees(f.id).await {
                    continue;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = ws_names.entry(f.workspace_id)
                {
                    let n = s2.registry.workspace(f.workspace_id).await.map(|w| w.name);
                    e.insert(n.unwrap_or_default());
                }
                fleets.push((f, FleetTally::default()));
            }
            fleets.sort_by(|(a, _), (b, _)| {
                (
                    ws_names[&a.workspace_id].to_lowercase(),
                    a.name.to_lowercase(),
                )
                    .cmp(&(
                        ws_names[&b.workspace_id].to_lowercase(),
                        b.name.to_lowercase(),
                    ))
            });
            let truncated = fleets.len() > MAX_FLEETS;
            fleets.truncate(MAX_FLEETS);
            let mut out = Vec::with_capacity(fleets.len());
            for (f, t) in fleets {
                let mut work = Vec::new();
                for r in s2.jobs.fleet_jobs_of(f.id).await? {
                    if r.job.state != RolloutState::Running {
                        continue;
                    }
                    let pr = &r.progress;
                    let total = r.job.devices.len() as u32;
                    let failed = pr.failed + pr.expired;
                    work.push(RunningWork {
                        kind: "rollout",
                        id: r.job.id.to_string(),
                        name: r.job.method.clone(),
                        state: "running".into(),
                        total,
                        done: pr.succeeded + pr.delivered + failed + pr.cancelled,
                        failed,
                    });
                }
                for c in s2.campaigns.list(Some(f.id)).await? {
                    if c.state.is_final() {
                        continue;
                    }
                    let count = |st: OtaState| c.counts.get(&st).copied().unwrap_or(0);
                    work.push(RunningWork {
                        kind: "campaign",
                        id: c.id.to_string(),
                        name: c.name.clone(),
                        state: match c.state {
                            CampaignState::Paused => "paused",
                            CampaignState::Draft => "draft",
                            _ => "running",
                        }
                        .into(),
                        total: c.targets,
                        done: OtaState::ALL
                            .iter()
                            .filter(|s| s.is_final())
                            .map(|s| count(*s))
                            .sum(),
                        failed: count(OtaState::Failed) + count(OtaState::TimedOut),
                    });
                }
                out.push(FleetHealth {
                    workspace: ws_names[&f.workspace_id].clone(),
                    workspace_id: f.workspace_id,
                    fleet_id: f.id,
                    fleet: f.name,
                    devices: t.counts,
                    disabled: t.disabled,
                    conditions: t.conditions,
                    work,
                    messages_per_minute: Vec::new(),
                });
            }
            ApiResult::Ok((totals, out, truncated, running, conditions))
        })
        .await
        .map_err(ApiError::internal)??;
    let mut fleets = fleets;
    for f in &mut fleets {
        f.messages_per_minute = rates
            .get(&f.fleet_id)
            .cloned()
            .unwrap_or_else(|| vec![0; crate::devices::rates::MINUTES]);
    }
    Ok(Json(Overview {
        devices: totals,
        messages_per_sec: s.metrics.recent_message_rate(),
        messages_per_minute,
        open_conditions: conditions,
        running_jobs: running,
        integrations: if p.admin {
            s.integrations
                .list()
                .await
                .map_err(ApiError::from)?
                .into_iter()
                .map(|i| {
                    let st = &i.status;
                    serde_json::json!({
                        "id": i.id, "name": i.name,
                        "state": if st.alarm { "alarm" } else { st.state.as_str() },
                        "queue_depth": st.queue_depth,
                        "oldest_age_secs": st.oldest_age_ms.map(|ms| ms / 1000),
                        "dead_letters": st.dead_letters,
                        "last_error": st.last_error,
                    })
                })
                .collect()
        } else {
            Vec::new()
        },
        silent_mins,
        fleets,
        fleets_truncated: truncated,
    }))
}
