//! Device conditions (alarms): what a device says is wrong with it. A device opens a condition
//! by name with a severity and details, updates it, and closes it; operators list them,
//! acknowledge them, and may close one themselves. At most one condition of a name is open per
//! device, so a repeated open (a QoS 1 redelivery, a device re-announcing after a reboot)
//! updates the open one instead of piling up duplicates, and a close of a condition that is not
//! open is a harmless repeat. Reports are durable before the device is answered.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::ToSchema;

use crate::devices::Registry;
use crate::devices::protocol::PayloadError;
use crate::error::Error;
use crate::events::{ConditionChange, Event, EventBus};
use crate::model::{
    Condition, ConditionId, DeviceId, FleetId, Millis, Severity, WorkspaceId, now_ms,
};
use crate::store::ports::{ConditionScan, ConditionStore, Cursor};

type Result<T> = std::result::Result<T, Error>;

/// Longest condition name.
pub const MAX_NAME_LEN: usize = 64;
/// Most conditions in one message.
pub const MAX_REPORTS: usize = 100;
/// Largest `details` of one condition, as JSON: a condition says what is wrong, it is not a
/// data channel, and every device keeps up to 200 closed ones.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// What a device does to a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Open it, or update it when it is already open.
    Open,
    /// Update the open condition (opening it when it is not: the device's view wins).
    Update,
    /// Close it; closing one that is not open changes nothing.
    Close,
}

/// One condition report from a device, on `v1/devices/me/conditions` (MQTT) or
/// `POST /api/v1/{token}/conditions` (HTTP): an object or an array of them.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionReport {
    /// 1 to 64 of `A-Z a-z 0-9 _ - .`.
    pub name: String,
    pub action: Action,
    /// Required to open; an update without one keeps the severity.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Any JSON object; replaces the details held so far.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub details: Option<Json>,
    /// When it happened on the device (milliseconds); now when absent.
    #[serde(default)]
    pub ts: Option<Millis>,
}

/// Checks a condition name: 1 to 64 of `A-Z a-z 0-9 _ - .`.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "name must be 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ - ."
        ));
    }
    Ok(())
}

/// A condition a device reported: open until the device (or an operator) closes it. At most
/// one condition of a name is open per device; opening it again updates it.
// The API's view of a condition; the stored record is `model::Condition`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = Condition)]
pub struct ConditionView {
    pub id: ConditionId,
    pub device_id: DeviceId,
    /// The device's fleet and workspace. Stored as they were at opening; every read replaces
    /// them with the device's current ones, since a device may move to another fleet.
    pub fleet_id: FleetId,
    pub workspace_id: WorkspaceId,
    /// What is wrong, as the device names it (`overheat`, `battery_low`).
    pub name: String,
    pub severity: Severity,
    /// Open until the device or an operator closes it.
    pub open: bool,
    /// Details as the device last sent them.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// When it was opened (the device's time when it gave one).
    pub opened_at: Millis,
    /// Last change, ms since the epoch.
    pub updated_at: Millis,
    /// Opens and updates received while it was open, the first included.
    pub reports: u32,
    /// When it was closed, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Millis>,
    /// `device`, or the operator who closed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// When an operator acknowledged it, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<Millis>,
    /// The operator who acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
}

impl From<&Condition> for ConditionView {
    fn from(r: &Condition) -> Self {
        Self {
            id: r.id,
            device_id: r.device_id,
            fleet_id: r.fleet_id,
            workspace_id: r.workspace_id,
            name: r.name.clone(),
            severity: r.severity,
            open: r.open,
            details: r.details.clone(),
            opened_at: r.opened_at,
            updated_at: r.updated_at,
            reports: r.reports,
            closed_at: r.closed_at,
            closed_by: r.closed_by.clone(),
            acknowledged_at: r.acknowledged_at,
            acknowledged_by: r.acknowledged_by.clone(),
        }
    }
}

impl From<Condition> for ConditionView {
    fn from(r: Condition) -> Self {
        Self::from(&r)
    }
}

/// Parses and checks a device's condition message; the error names what is wrong and is safe
/// to return to the device.
pub fn parse_reports(payload: &[u8]) -> std::result::Result<Vec<ConditionReport>, PayloadError> {
    let bad = |m: String| PayloadError::Condition(m);
    let json: Json =
        serde_json::from_slice(payload).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let items = match json {
        Json::Array(v) => v,
        o @ Json::Object(_) => vec![o],
        _ => return Err(bad("must be an object or an array of objects".into())),
    };
    if items.is_empty() || items.len() > MAX_REPORTS {
        return Err(bad(format!("send 1 to {MAX_REPORTS} conditions at a time")));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let r: ConditionReport = serde_json::from_value(item).map_err(|e| bad(e.to_string()))?;
        check_name(&r.name).map_err(bad)?;
        if r.action == Action::Open && r.severity.is_none() {
            return Err(bad(format!("{}: opening needs a severity", r.name)));
        }
        if let Some(d) = &r.details {
            if !d.is_object() {
                return Err(bad(format!("{}: details must be a JSON object", r.name)));
            }
            let size = serde_json::to_vec(d).map_or(usize::MAX, |v| v.len());
            if size > MAX_DETAILS_BYTES {
                return Err(bad(format!(
                    "{}: details are {size} bytes; at most {MAX_DETAILS_BYTES}",
                    r.name
                )));
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Which conditions a listing shows.
#[derive(Debug, Clone, Default)]
pub struct ConditionQuery {
    pub device: Option<DeviceId>,
    pub fleet: Option<crate::model::FleetId>,
    pub workspace: Option<crate::model::WorkspaceId>,
    /// `Some(true)`: open only; `Some(false)`: closed only; `None`: both.
    pub open: Option<bool>,
    /// Only these severities (all when empty).
    pub severities: Vec<Severity>,
    pub name: Option<String>,
    /// Where the previous page ended.
    pub before: Option<Cursor>,
}

pub struct ConditionService {
    store: std::sync::Arc<dyn ConditionStore>,
    registry: std::sync::Arc<Registry>,
    events: EventBus,
    /// Serializes the read-modify-write of the open index: two sessions of one device (or a
    /// device and an operator) must not both open the same name.
    writing: tokio::sync::Mutex<()>,
}

impl ConditionService {
    pub fn new(
        store: std::sync::Arc<dyn ConditionStore>,
        registry: std::sync::Arc<Registry>,
        events: EventBus,
    ) -> Self {
        Self {
            store,
            registry,
            events,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Applies a device's reports in order and makes them durable; returns the conditions as
    /// they stand afterwards (a close of a condition that was not open returns nothing for it).
    pub async fn report(
        &self,
        device: DeviceId,
        reports: Vec<ConditionReport>,
    ) -> Result<Vec<Condition>> {
        let dev = self.registry.device_record(device).await?;
        let mut out = Vec::with_capacity(reports.len());
        {
            let _w = self.writing.lock().await;
            let now = now_ms();
            let mut closed_any = false;
            for r in reports {
                let at = r.ts.unwrap_or(now);
                let current = self.store.open_condition(device, &r.name).await?;
                // What the event says happened: a repeated open is an update.
                let action = match (r.action, &current) {
                    (Action::Close, _) => ConditionChange::Closed,
                    (_, Some(_)) => ConditionChange::Updated,
                    (_, None) => ConditionChange::Opened,
                };
                let c = match (r.action, current) {
                    (Action::Close, None) => continue,
                    (Action::Close, Some(mut c)) => {
                        c.open = false;
                        c.closed_at = Some(at);
                        c.closed_by = Some("device".into());
                        c.updated_at = at;
                        if let Some(d) = r.details {
                            c.details = d;
                        }
                        closed_any = true;
                        c
                    }
                    (_, Some(mut c)) => {
                        c.severity = r.severity.unwrap_or(c.severity);
                        if let Some(d) = r.details {
                            c.details = d;
                        }
                        c.updated_at = at;
                        c.reports = c.reports.saturating_add(1);
                        c
                    }
                    (_, None) => Condition {
                        id: ConditionId::new(),
                        device_id: device,
                        fleet_id: dev.fleet_id,
                        workspace_id: dev.workspace_id,
                        name: r.name,
                        // An update of a condition that is not open opens it, at `warning`
                        // when the device gave no severity.
                        severity: r.severity.unwrap_or(Severity::Warning),
                        open: true,
                        details: r.details.unwrap_or(Json::Object(Default::default())),
                        opened_at: at,
                        updated_at: at,
                        reports: 1,
                        closed_at: None,
                        closed_by: None,
                        acknowledged_at: None,
                        acknowledged_by: None,
                    },
                };
                self.store.put_condition(&c).await?;
                // Published before the commit: integrations queue the event through the bus
                // tap, and the commit below makes their entries durable with the condition.
                self.events.publish(Event::Condition {
                    device_id: device,
                    action,
                    condition: Box::new(c.clone()),
                });
                out.push(c);
            }
            if closed_any {
                self.store.trim_closed_conditions(device).await?;
            }
        }
        self.store.commit().await?;
        Ok(out)
    }

    pub async fn get(&self, id: ConditionId) -> Result<Condition> {
        let mut c = self
            .store
            .get_condition(id)
            .await?
            .ok_or(Error::NotFound("condition"))?;
        let mut seen = HashMap::new();
        self.learn_fleet(c.device_id, &mut seen).await;
        follow_device(&mut c, &seen);
        Ok(c)
    }

    /// A device may have moved to another fleet since it opened a condition: the condition
    /// follows the device (for filters, visibility and what is shown).
    /// Looks up where `device` is now, once per listing.
    async fn learn_fleet(&self, device: DeviceId, seen: &mut Placements) {
        if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(device) {
            let now = self
                .registry
                .device_record(device)
                .await
                .ok()
                .map(|d| (d.fleet_id, d.workspace_id));
            e.insert(now);
        }
    }

    /// An operator has seen the condition (it stays open until it is closed).
    pub async fn acknowledge(&self, id: ConditionId, by: &str) -> Result<Condition> {
        self.operator_change(id, ConditionChange::Acknowledged, |c, now| {
            if c.acknowledged_at.is_none() {
                c.acknowledged_at = Some(now);
                c.acknowledged_by = Some(by.to_string());
            }
            Ok(())
        })
        .await
    }

    /// An operator closes the condition (the device may open it again).
    pub async fn close(&self, id: ConditionId, by: &str) -> Result<Condition> {
        self.operator_change(id, ConditionChange::Closed, |c, now| {
            if !c.open {
                return Err(Error::conflict("the condition is already closed"));
            }
            c.open = false;
            c.closed_at = Some(now);
            c.closed_by = Some(by.to_string());
            c.updated_at = now;
            Ok(())
        })
        .await
    }

    async fn operator_change(
        &self,
        id: ConditionId,
        action: ConditionChange,
        change: impl FnOnce(&mut Condition, Millis) -> Result<()> + Send,
    ) -> Result<Condition> {
        let c = {
            let _w = self.writing.lock().await;
            let mut c = self
                .store
                .get_condition(id)
                .await?
                .ok_or(Error::NotFound("condition"))?;
            change(&mut c, now_ms())?;
            self.store.put_condition(&c).await?;
            if !c.open {
                self.store.trim_closed_conditions(c.device_id).await?;
            }
            self.events.publish(Event::Condition {
                device_id: c.device_id,
                action,
                condition: Box::new(c.clone()),
            });
            c
        };
        self.store.commit().await?;
        Ok(c)
    }

    /// Conditions newest first that match `q` and that `visible` lets through, at most
    /// `limit`, with the cursor of the next page.
    pub async fn list(
        &self,
        q: &ConditionQuery,
        limit: usize,
        visible: &(dyn Fn(&Condition) -> bool + Sync),
    ) -> Result<(Vec<Condition>, Option<Cursor>)> {
        let scan = ConditionScan {
            device: q.device,
            open_only: q.open == Some(true),
            before: q.before.clone(),
        };
        // The filter needs each device's current fleet, and the scan's filter cannot wait for
        // a lookup: a first scan notes the devices it has not placed yet (rejecting their
        // conditions, so it reads at least as far as a second scan will), they are looked
        // up, and the scan runs again. Two scans at most.
        let mut seen = Placements::new();
        loop {
            let mut unplaced = Vec::new();
            let mut keep = |c: &mut Condition| {
                if !seen.contains_key(&c.device_id) {
                    unplaced.push(c.device_id);
                    return false;
                }
                follow_device(c, &seen);
                q.open.is_none_or(|o| c.open == o)
                    && q.fleet.is_none_or(|f| c.fleet_id == f)
                    && q.workspace.is_none_or(|w| c.workspace_id == w)
                    && (q.severities.is_empty() || q.severities.contains(&c.severity))
                    && q.name.as_ref().is_none_or(|n| &c.name == n)
                    && visible(c)
            };
            let page = self
                .store
                .conditions(scan.clone(), limit, &mut keep)
                .await?;
            if unplaced.is_empty() {
                return Ok(page);
            }
            for d in unplaced {
                self.learn_fleet(d, &mut seen).await;
            }
        }
    }

    /// Open conditions per severity, every severity present (for the metrics scrape: open
    /// conditions are few, and counting them from the store cannot drift from it).
    pub async fn open_by_severity(&self) -> Result<Vec<(Severity, u64)>> {
        let mut counts = [0u64; 5];
        let (open, _) = self
            .store
            .conditions(
                ConditionScan {
                    open_only: true,
                    ..Default::default()
                },
                usize::MAX,
                &mut |_| true,
            )
            .await?;
        for c in open {
            counts[c.severity as usize] += 1;
        }
        Ok([
            Severity::Critical,
            Severity::Major,
            Severity::Minor,
            Severity::Warning,
            Severity::Info,
        ]
        .into_iter()
        .map(|s| (s, counts[s as usize]))
        .collect())
    }

    /// How many conditions are open on devices `visible` lets through.
    /// The device of each open condition (a device once per condition).
    pub async fn open_devices(&self) -> Result<Vec<DeviceId>> {
        Ok(self.store.open_condition_devices().await?)
    }
}

/// Where devices are now (fleet and workspace), `None` for a device that is gone.
type Placements = HashMap<DeviceId, Option<(FleetId, WorkspaceId)>>;

/// A device may have moved to another fleet since it opened a condition: the condition
/// follows the device (for filters, visibility and what is shown).
fn follow_device(c: &mut Condition, seen: &Placements) {
    if let Some(Some((f, w))) = seen.get(&c.device_id) {
        c.fleet_id = *f;
        c.workspace_id = *w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_checked_by_field() {
        let ok = parse_reports(
            br#"[{"name":"overheat","action":"open","severity":"major","details":{"t":91}},
                 {"name":"overheat","action":"close"}]"#,
        )
        .expect("valid");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].severity, Some(Severity::Major));
        let err = |p: &str| parse_reports(p.as_bytes()).expect_err(p).to_string();
        assert!(err(r#"{"name":"x","action":"open"}"#).contains("needs a severity"));
        assert!(err(r#"{"name":"x y","action":"close"}"#).contains("name must be"));
        assert!(err(r#"{"name":"x","action":"explode"}"#).contains("unknown variant"));
        assert!(err(r#"{"name":"x","action":"close","colour":1}"#).contains("unknown field"));
        assert!(
            err(r#"{"name":"x","action":"open","severity":"bad"}"#).contains("unknown variant")
        );
        assert!(err(r#"{"name":"x","action":"close","details":[1]}"#).contains("JSON object"));
        let big = format!(
            r#"{{"name":"x","action":"close","details":{{"log":"{}"}}}}"#,
            "a".repeat(MAX_DETAILS_BYTES)
        );
        assert!(err(&big).contains("at most 16384"));
        assert!(err("[]").contains("1 to 100"));
        assert!(err("7").contains("object or an array"));
        assert!(err("{").contains("not valid JSON"));
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;
    use serde_json::json;

    /// Every optional field set, then left out: the view spells each as the record does.
    #[test]
    fn the_view_matches_the_record_today() {
        let full = Condition {
            id: ConditionId::new(),
            device_id: DeviceId::new(),
            fleet_id: FleetId::new(),
            workspace_id: WorkspaceId::new(),
            name: "overheat".into(),
            severity: Severity::Major,
            open: false,
            details: json!({"t": 90}),
            opened_at: 1,
            updated_at: 2,
            reports: 3,
            closed_at: Some(4),
            closed_by: Some("device".into()),
            acknowledged_at: Some(3),
            acknowledged_by: Some("ops".into()),
        };
        let bare = Condition {
            closed_at: None,
            closed_by: None,
            acknowledged_at: None,
            acknowledged_by: None,
            ..full.clone()
        };
        for c in [full, bare] {
            assert_eq!(json!(c), json!(ConditionView::from(&c)));
        }
    }
}
