//! Dashboards: create, change, read, list and delete a workspace's or a fleet's dashboards, and
//! the rules every definition meets before it is stored (bounds on names, widgets, keys and
//! devices; every device named in the dashboard's own workspace or fleet). Who may do what is
//! the transport's (`api::dashboards` checks roles); the widgets' data is read by the viewer
//! through the telemetry, device and condition APIs, with their own rights, so a dashboard
//! never shows more than its viewer could read anyway.

use std::sync::Arc;

use serde::Deserialize;
use utoipa::ToSchema;

use crate::data::aggregate::parse_interval;
use crate::devices::Registry;
use crate::error::{Error, Result};
use crate::model::{
    Dashboard, DashboardId, DeviceId, FleetId, TimeWindow, Widget, WorkspaceId, now_ms,
};
use crate::store::ports::DashboardStore;

/// Widgets one dashboard may hold.
pub const MAX_WIDGETS: usize = 30;
/// Dashboards the server keeps in all (they are listed by reading every one).
pub const MAX_DASHBOARDS: usize = 2000;
const MAX_NAME: usize = 100;
const MAX_DESCRIPTION: usize = 1000;
const MAX_TITLE: usize = 100;
const MAX_UNIT: usize = 16;
const MAX_KEY: usize = 255;
const MAX_CHART_DEVICES: usize = 10;
const MAX_CHART_KEYS: usize = 8;
const MAX_TABLE_KEYS: usize = 10;
const MAX_TABLE_ROWS: u32 = 200;
const MIN_WINDOW_MINS: u32 = 5;
const MAX_WINDOW_MINS: u32 = 525_600;

/// A new dashboard: where it belongs, and its definition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDashboard {
    pub workspace_id: WorkspaceId,
    /// The fleet it belongs to; absent for a dashboard of the whole workspace.
    #[serde(default)]
    pub fleet_id: Option<FleetId>,
    // The definition's fields again rather than a flattened `DashboardSpec`: serde cannot
    // refuse unknown fields through `flatten`, and a misspelt field must be a 400.
    /// 1 to 100 characters.
    pub name: String,
    /// Up to 1000 characters.
    #[serde(default)]
    pub description: String,
    /// The charts' shared window (default the last 60 minutes).
    #[serde(default = "default_window")]
    pub window: TimeWindow,
    /// Up to 30 widgets.
    #[serde(default)]
    pub widgets: Vec<Widget>,
}

/// A dashboard's definition: what a change replaces as a whole.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DashboardSpec {
    /// 1 to 100 characters.
    pub name: String,
    /// Up to 1000 characters.
    #[serde(default)]
    pub description: String,
    /// The charts' shared window (default the last 60 minutes).
    #[serde(default = "default_window")]
    pub window: TimeWindow,
    /// Up to 30 widgets.
    #[serde(default)]
    pub widgets: Vec<Widget>,
}

fn default_window() -> TimeWindow {
    TimeWindow { last_mins: 60 }
}

/// The dashboards service, over its storage port and the registry (for the scope checks).
#[derive(Clone)]
pub struct DashboardService {
    store: Arc<dyn DashboardStore>,
    registry: Arc<Registry>,
}

impl DashboardService {
    pub fn new(store: Arc<dyn DashboardStore>, registry: Arc<Registry>) -> Self {
        Self { store, registry }
    }

    /// Stores a new dashboard after checking its definition; `by` is who creates it.
    pub async fn create(&self, new: NewDashboard, by: &str) -> Result<Dashboard> {
        let spec = DashboardSpec {
            name: new.name,
            description: new.description,
            window: new.window,
            widgets: new.widgets,
        };
        // The caller's role was checked on the fleet (or the workspace): the fleet is compared
        // with the workspace named before that workspace is looked up, so that the answer says
        // nothing of a workspace the caller cannot see.
        match new.fleet_id {
            Some(f) => {
                if self.registry.fleet(f).await?.workspace_id != new.workspace_id {
                    return Err(Error::invalid(
                        "fleet_id",
                        "the fleet is not in the dashboard's workspace",
                    ));
                }
            }
            None => {
                self.registry.workspace(new.workspace_id).await?;
            }
        }
        if self.store.dashboards().await?.len() >= MAX_DASHBOARDS {
            return Err(Error::conflict(format!(
                "the server keeps at most {MAX_DASHBOARDS} dashboards; delete some first"
            )));
        }
        self.check(&spec, new.workspace_id, new.fleet_id).await?;
        let now = now_ms();
        let d = Dashboard {
            id: DashboardId::new(),
            workspace_id: new.workspace_id,
            fleet_id: new.fleet_id,
            name: spec.name.trim().to_string(),
            description: spec.description,
            window: spec.window,
            widgets: spec.widgets,
            created_by: by.to_string(),
            created_at: now,
            updated_at: now,
        };
        self.store.put_dashboard(&d).await?;
        self.store.commit().await?;
        Ok(d)
    }

    /// Replaces a dashboard's definition (its workspace and fleet stay).
    pub async fn update(&self, id: DashboardId, spec: DashboardSpec) -> Result<Dashboard> {
        let mut d = self.get(id).await?;
        self.check(&spec, d.workspace_id, d.fleet_id).await?;
        d.name = spec.name.trim().to_string();
        d.description = spec.description;
        d.window = spec.window;
        d.widgets = spec.widgets;
        d.updated_at = now_ms();
        self.store.put_dashboard(&d).await?;
        self.store.commit().await?;
        Ok(d)
    }

    pub async fn get(&self, id: DashboardId) -> Result<Dashboard> {
        self.store
            .get_dashboard(id)
            .await?
            .ok_or(Error::NotFound("dashboard"))
    }

    /// Every dashboard `keep` accepts, by name.
    pub async fn list(&self, keep: impl Fn(&Dashboard) -> bool) -> Result<Vec<Dashboard>> {
        let mut all: Vec<Dashboard> = self
            .store
            .dashboards()
            .await?
            .into_iter()
            .filter(|d| keep(d))
            .collect();
        all.sort_by_cached_key(|d| (d.name.to_lowercase(), d.id));
        Ok(all)
    }

    /// Deletes the dashboards of a fleet, or of a whole workspace and its fleets, once that
    /// is gone (they would show nothing to no one).
    pub async fn delete_of(&self, workspace: WorkspaceId, fleet: Option<FleetId>) -> Result<()> {
        let mut any = false;
        for d in self.store.dashboards().await? {
            if d.workspace_id == workspace && fleet.is_none_or(|f| d.fleet_id == Some(f)) {
                any |= self.store.delete_dashboard(d.id).await?;
            }
        }
        if any {
            self.store.commit().await?;
        }
        Ok(())
    }

    pub async fn delete(&self, id: DashboardId) -> Result<()> {
        if !self.store.delete_dashboard(id).await? {
            return Err(Error::NotFound("dashboard"));
        }
        self.store.commit().await?;
        Ok(())
    }

    /// The definition's rules; the first broken one is the error, naming the widget and field.
    async fn check(
        &self,
        spec: &DashboardSpec,
        workspace: WorkspaceId,
        fleet: Option<FleetId>,
    ) -> Result<()> {
        check_shape(spec)?;
        for (i, w) in spec.widgets.iter().enumerate() {
            for d in widget_devices(w) {
                self.check_device(i, d, workspace, fleet).await?;
            }
        }
        Ok(())
    }

    /// A widget's device must be in the dashboard's workspace (and fleet, for a fleet's
    /// dashboard): a dashboard shows its own scope, whoever edits it.
    async fn check_device(
        &self,
        i: usize,
        id: DeviceId,
        workspace: WorkspaceId,
        fleet: Option<FleetId>,
    ) -> Result<()> {
        let d = match self.registry.device_record(id).await {
            Ok(d) => Some(d),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let inside =
            d.is_some_and(|d| d.workspace_id == workspace && fleet.is_none_or(|f| f == d.fleet_id));
        if inside {
            Ok(())
        } else {
            let scope = if fleet.is_some() {
                "fleet"
            } else {
                "workspace"
            };
            Err(Error::invalid(
                "widgets",
                format!("widgets[{i}]: device {id} is not a device of the dashboard's {scope}"),
            ))
        }
    }
}

/// The devices a widget names.
fn widget_devices(w: &Widget) -> Vec<DeviceId> {
    match w {
        Widget::Chart { devices, .. } => devices.clone(),
        Widget::Value { device_id, .. } | Widget::Gauge { device_id, .. } => vec![*device_id],
        Widget::Table { .. } | Widget::Conditions { .. } | Widget::Map { .. } => Vec::new(),
    }
}

fn bad(i: usize, field: &str, message: impl std::fmt::Display) -> Error {
    Error::invalid("widgets", format!("widgets[{i}].{field}: {message}"))
}

fn check_key(i: usize, field: &str, k: &str) -> Result<()> {
    if k.is_empty() || k.len() > MAX_KEY || k.chars().any(char::is_control) {
        return Err(bad(
            i,
            field,
            format!("a key is 1 to {MAX_KEY} bytes without control characters"),
        ));
    }
    Ok(())
}

fn check_keys(i: usize, keys: &[String], max: usize) -> Result<()> {
    if keys.is_empty() || keys.len() > max {
        return Err(bad(i, "keys", format!("name 1 to {max} keys")));
    }
    for (j, k) in keys.iter().enumerate() {
        check_key(i, &format!("keys[{j}]"), k)?;
        if keys[..j].contains(k) {
            return Err(bad(
                i,
                &format!("keys[{j}]"),
                format!("{k:?} is named twice"),
            ));
        }
    }
    Ok(())
}

/// The rules that need no lookup.
fn check_shape(spec: &DashboardSpec) -> Result<()> {
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(Error::invalid(
            "name",
            format!("a name is 1 to {MAX_NAME} characters"),
        ));
    }
    if spec.description.chars().count() > MAX_DESCRIPTION {
        return Err(Error::invalid(
            "description",
            format!("at most {MAX_DESCRIPTION} characters"),
        ));
    }
    if !(MIN_WINDOW_MINS..=MAX_WINDOW_MINS).contains(&spec.window.last_mins) {
        return Err(Error::invalid(
            "window",
            format!("last_mins is {MIN_WINDOW_MINS} to {MAX_WINDOW_MINS} minutes"),
        ));
    }
    if spec.widgets.len() > MAX_WIDGETS {
        return Err(Error::invalid(
            "widgets",
            format!("a dashboard holds at most {MAX_WIDGETS} widgets"),
        ));
    }
    for (i, w) in spec.widgets.iter().enumerate() {
        if w.title().chars().count() > MAX_TITLE {
            return Err(bad(i, "title", format!("at most {MAX_TITLE} characters")));
        }
        if !(1..=4).contains(&w.width()) {
            return Err(bad(i, "width", "1 to 4 columns"));
        }
        match w {
            Widget::Chart {
                devices,
                keys,
                interval,
                ..
            } => {
                if devices.is_empty() || devices.len() > MAX_CHART_DEVICES {
                    return Err(bad(
                        i,
                        "devices",
                        format!("name 1 to {MAX_CHART_DEVICES} devices"),
                    ));
                }
                if let Some((j, d)) = devices
                    .iter()
                    .enumerate()
                    .find(|(j, d)| devices[..*j].contains(d))
                {
                    return Err(bad(
                        i,
                        &format!("devices[{j}]"),
                        format!("{d} is named twice"),
                    ));
                }
                check_keys(i, keys, MAX_CHART_KEYS)?;
                if let Some(iv) = interval {
                    parse_interval(iv).map_err(|e| bad(i, "interval", e))?;
                }
            }
            Widget::Value { key, unit, .. } => {
                check_key(i, "key", key)?;
                check_unit(i, unit)?;
            }
            Widget::Gauge {
                key,
                min,
                max,
                unit,
                ..
            } => {
                check_key(i, "key", key)?;
                check_unit(i, unit)?;
                if !min.is_finite() || !max.is_finite() || min >= max {
                    return Err(bad(i, "max", "min and max are numbers with min below max"));
                }
            }
            Widget::Table { keys, limit, .. } => {
                check_keys(i, keys, MAX_TABLE_KEYS)?;
                if !(1..=MAX_TABLE_ROWS).contains(limit) {
                    return Err(bad(i, "limit", format!("1 to {MAX_TABLE_ROWS} rows")));
                }
            }
            Widget::Conditions { .. } => {}
            Widget::Map {
                lat_key, lon_key, ..
            } => {
                check_key(i, "lat_key", lat_key)?;
                check_key(i, "lon_key", lon_key)?;
            }
        }
    }
    Ok(())
}

fn check_unit(i: usize, unit: &str) -> Result<()> {
    if unit.chars().count() > MAX_UNIT || unit.chars().any(char::is_control) {
        return Err(bad(i, "unit", format!("at most {MAX_UNIT} characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(widgets: serde_json::Value) -> DashboardSpec {
        serde_json::from_value(serde_json::json!({"name": "d", "widgets": widgets})).expect("spec")
    }

    fn message(s: &DashboardSpec) -> String {
        check_shape(s).expect_err("refused").to_string()
    }

    #[test]
    fn each_rule_names_its_widget_and_field() {
        let dev = DeviceId::new();
        let ok = spec(serde_json::json!([
            {"kind": "chart", "title": "t", "devices": [dev], "keys": ["a", "b"], "interval": "5m"},
            {"kind": "value", "title": "v", "device_id": dev, "key": "a", "unit": "°C"},
            {"kind": "gauge", "title": "g", "device_id": dev, "key": "a", "min": 0, "max": 10},
            {"kind": "table", "title": "t", "keys": ["a"]},
            {"kind": "conditions", "title": "c", "min_severity": "major"},
            {"kind": "map", "title": "m", "width": 4},
        ]));
        check_shape(&ok).expect("every kind");
        let s = spec(serde_json::json!([
            {"kind": "value", "title": "v", "device_id": dev, "key": "a"},
            {"kind": "chart", "title": "t", "devices": [dev], "keys": ["a", "a"]},
        ]));
        assert_eq!(
            message(&s),
            "widgets: widgets[1].keys[1]: \"a\" is named twice"
        );
        let s = spec(serde_json::json!([
            {"kind": "chart", "title": "t", "devices": [dev], "keys": ["a"], "interval": "7s"},
        ]));
        assert!(
            message(&s).starts_with("widgets: widgets[0].interval:"),
            "{}",
            message(&s)
        );
        let s = spec(serde_json::json!([
            {"kind": "gauge", "title": "g", "device_id": dev, "key": "a", "min": 5, "max": 5},
        ]));
        assert!(message(&s).contains("widgets[0].max"));
        let s = spec(serde_json::json!([{"kind": "map", "title": "m", "width": 5}]));
        assert!(message(&s).contains("widgets[0].width"));
        let s = spec(serde_json::json!([{"kind": "table", "title": "t", "keys": []}]));
        assert!(message(&s).contains("widgets[0].keys"));
    }

    #[test]
    fn unknown_kinds_and_fields_do_not_parse() {
        let bad_kind: std::result::Result<DashboardSpec, _> = serde_json::from_value(
            serde_json::json!({"name": "d", "widgets": [{"kind": "pie", "title": "p"}]}),
        );
        assert!(bad_kind.is_err());
        let extra: std::result::Result<DashboardSpec, _> = serde_json::from_value(
            serde_json::json!({"name": "d", "widgets": [{"kind": "map", "title": "m", "zoom": 3}]}),
        );
        assert!(extra.is_err());
    }
}
