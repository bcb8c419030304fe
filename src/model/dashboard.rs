//! Dashboard records: a workspace's or one fleet's dashboard, its shared time window and its
//! widgets. Plain data; the rules a definition must meet (bounds, devices in scope) are the
//! dashboard service's (`dashboards`), and the widgets' data comes from the telemetry,
//! device and condition APIs, read with the viewer's own rights.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{DashboardId, DeviceId, FleetId, Millis, Severity, WorkspaceId};

/// A dashboard stored on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dashboard {
    pub id: DashboardId,
    pub workspace_id: WorkspaceId,
    /// The fleet it belongs to; absent for a dashboard of the whole workspace (which users
    /// limited to some fleets do not see).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<FleetId>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The time window every chart of the dashboard shares.
    pub window: TimeWindow,
    /// Widgets in reading order.
    pub widgets: Vec<Widget>,
    /// Who created it (a username, or `api-key:NAME`).
    pub created_by: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The time window a dashboard's charts share: the last `last_mins` minutes, updated live.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    /// Minutes back from now, 5 to 525,600 (a year).
    #[schema(minimum = 5, maximum = 525_600)]
    pub last_mins: u32,
}

/// One widget: what it shows (`kind`), its title and its width on the dashboard's grid.
/// Every kind has `title` (up to 100 characters) and `width` (columns of a four-column grid,
/// 1 to 4, default 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Widget {
    /// Time series of several keys of several devices over the dashboard's window.
    Chart {
        title: String,
        #[serde(default = "default_width")]
        width: u8,
        /// 1 to 10 devices.
        devices: Vec<DeviceId>,
        /// 1 to 8 telemetry keys; each device's series of each key is drawn.
        keys: Vec<String>,
        /// Bucket length: a whole number of minutes from `1m` to `1d` (`15m`, `1h`), or
        /// absent to let the window choose (about 120 buckets).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval: Option<String>,
        /// What each bucket shows: `avg` (default), `min`, `max` or `sum`.
        #[serde(default)]
        agg: ChartAgg,
    },
    /// The latest value of one key of one device.
    Value {
        title: String,
        #[serde(default = "default_width")]
        width: u8,
        device_id: DeviceId,
        key: String,
        /// Shown after the value, up to 16 characters.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        unit: String,
    },
    /// The latest value of one key of one device on a dial from `min` to `max`.
    Gauge {
        title: String,
        #[serde(default = "default_width")]
        width: u8,
        device_id: DeviceId,
        key: String,
        min: f64,
        max: f64,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        unit: String,
    },
    /// The dashboard's devices (its fleet's, or its workspace's) with the latest values of
    /// 1 to 10 keys, up to `limit` rows (1 to 200, default 50).
    Table {
        title: String,
        #[serde(default = "default_width")]
        width: u8,
        keys: Vec<String>,
        #[serde(default = "default_rows")]
        limit: u32,
    },
    /// Open conditions of the dashboard's devices, at least `min_severity` (default all).
    Conditions {
        title: String,
        #[serde(default = "default_width")]
        width: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_severity: Option<Severity>,
    },
    /// The dashboard's devices that report a latitude and a longitude, on a world outline
    /// (or the server's map tiles, when `[ui] tile_url` is set).
    Map {
        title: String,
        #[serde(default = "default_width")]
        width: u8,
        /// Key of the latitude (default `latitude`).
        #[serde(default = "default_lat")]
        lat_key: String,
        /// Key of the longitude (default `longitude`).
        #[serde(default = "default_lon")]
        lon_key: String,
    },
}

impl Widget {
    /// The kind's name, as `kind` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Widget::Chart { .. } => "chart",
            Widget::Value { .. } => "value",
            Widget::Gauge { .. } => "gauge",
            Widget::Table { .. } => "table",
            Widget::Conditions { .. } => "conditions",
            Widget::Map { .. } => "map",
        }
    }

    pub fn title(&self) -> &str {
        match self {
            Widget::Chart { title, .. }
            | Widget::Value { title, .. }
            | Widget::Gauge { title, .. }
            | Widget::Table { title, .. }
            | Widget::Conditions { title, .. }
            | Widget::Map { title, .. } => title,
        }
    }

    pub fn width(&self) -> u8 {
        match self {
            Widget::Chart { width, .. }
            | Widget::Value { width, .. }
            | Widget::Gauge { width, .. }
            | Widget::Table { width, .. }
            | Widget::Conditions { width, .. }
            | Widget::Map { width, .. } => *width,
        }
    }
}

fn default_width() -> u8 {
    2
}

fn default_rows() -> u32 {
    50
}

fn default_lat() -> String {
    "latitude".into()
}

fn default_lon() -> String {
    "longitude".into()
}

/// How a chart reduces each bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChartAgg {
    #[default]
    Avg,
    Min,
    Max,
    Sum,
}
