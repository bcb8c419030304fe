//! Retention: telemetry older than a workspace's `retention_days` (or the configured default)
//! is deleted by a periodic sweep, with its rollups, and a series left without points leaves
//! the device's directory (so it no longer lists or counts against the key cap); and disk
//! usage per workspace (points and an estimate of bytes, read from the rollups rather than the
//! points) and for the store.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::devices::Registry;
use crate::devices::registry::DeviceFilter;
use crate::error::Error;
use crate::model::{DeviceId, Millis, WorkspaceId, now_ms};
use crate::store::ports::TelemetryStore;

const DAY_MS: Millis = 86_400_000;
/// Rough bytes one stored point takes: key (device, tag, key, ts) and value, with sled's
/// overhead. Reported as an estimate.
const BYTES_PER_POINT: u64 = 64;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SweepReport {
    pub workspaces: usize,
    pub devices: usize,
    pub points_deleted: u64,
    /// Series left without points, removed from their device's keys.
    pub series_emptied: u64,
    pub took_ms: u64,
}

/// Telemetry held by one workspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceUsage {
    pub workspace_id: WorkspaceId,
    pub devices: usize,
    pub series: usize,
    pub points: u64,
    /// Points × an average record size; the store's real size includes its own overhead.
    pub estimated_bytes: u64,
    pub retention_days: Option<u32>,
}

async fn devices_of(registry: &Registry, ws: WorkspaceId) -> Result<Vec<DeviceId>, Error> {
    let filter = DeviceFilter {
        workspace_id: Some(ws),
        ..Default::default()
    };
    registry.device_ids(&filter, false).await
}

/// Deletes what every workspace's retention no longer keeps. Blocking: run it off the async
/// threads.
pub async fn sweep(
    store: &dyn TelemetryStore,
    registry: &Registry,
    default_days: u32,
) -> Result<SweepReport, Error> {
    let started = std::time::Instant::now();
    let mut report = SweepReport::default();
    let mut after = None;
    loop {
        let page = registry.list_workspaces(None, after.as_ref(), 1000).await?;
        for ws in &page.items {
            let days = ws.retention_days.unwrap_or(default_days);
            if days == 0 {
                continue;
            }
            report.workspaces += 1;
            let cutoff = now_ms() - i64::from(days) * DAY_MS;
            for d in devices_of(registry, ws.id).await? {
                report.devices += 1;
                for s in store.device_series(d).await? {
                    report.points_deleted += store
                        .delete_series_before(d, &s.tag, &s.key, cutoff)
                        .await?;
                    if store.series_is_empty(d, &s.tag, &s.key).await? {
                        // Checked again on the writer thread, where no point can slip in.
                        store.forget_series_if_empty(d, &s.tag, &s.key);
                        report.series_emptied += 1;
                    }
                }
            }
        }
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    report.took_ms = started.elapsed().as_millis() as u64;
    if report.points_deleted > 0 {
        tracing::info!(
            points = report.points_deleted,
            ms = report.took_ms,
            "retention sweep"
        );
    }
    Ok(report)
}

/// Telemetry held by a workspace.
pub async fn usage(
    store: &dyn TelemetryStore,
    registry: &Registry,
    ws: WorkspaceId,
) -> Result<WorkspaceUsage, Error> {
    let w = registry.workspace(ws).await?;
    let mut u = WorkspaceUsage {
        workspace_id: ws,
        retention_days: w.retention_days,
        ..Default::default()
    };
    for d in devices_of(registry, ws).await? {
        u.devices += 1;
        for s in store.device_series(d).await? {
            u.series += 1;
            u.points += store.series_points(d, &s.tag, &s.key).await?;
        }
    }
    u.estimated_bytes = u.points * BYTES_PER_POINT;
    Ok(u)
}
