//! The devices table: a filtered listing sorted by a column (name, fleet, status, last activity,
//! firmware, creation), cut into pages by offset, with the total count, each row's reported
//! firmware version and chosen latest telemetry values. Filtering and visibility are the
//! registry's (`DeviceFilter`); reading values is the telemetry and attribute services'.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::DataService;
use crate::devices::attributes::{AttributeService, to_json};
use crate::devices::registry::{DeviceFilter, DeviceStatus, DeviceView, Registry};
use crate::error::Error;
use crate::model::{DEFAULT_TAG, Device, DeviceId, FleetId, Millis};

type Result<T> = std::result::Result<T, Error>;

/// The key a device reports its firmware version under (ThingsBoard OTA clients), as
/// telemetry or as a client attribute.
pub const FIRMWARE_KEY: &str = "current_fw_version";

/// Most latest-value columns one request may ask for: each is one read per row.
pub const MAX_KEYS: usize = 10;

/// A column the table sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    Name,
    /// The fleet's name.
    Fleet,
    /// Online before offline (ascending), then by name.
    Status,
    LastActivity,
    /// The reported firmware version; devices that report none come last.
    Firmware,
    /// Creation order, the order of the cursor listing.
    Created,
}

/// What one table page asks for.
#[derive(Debug, Clone)]
pub struct TableQuery {
    pub filter: DeviceFilter,
    /// Only devices reporting exactly this firmware version.
    pub firmware: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    pub offset: usize,
    pub limit: usize,
    /// Latest telemetry keys (default tag) to show per row.
    pub keys: Vec<String>,
}

/// A telemetry value and when it was measured.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LatestCell {
    pub ts: Millis,
    #[schema(value_type = Object)]
    pub value: Json,
}

/// A row of the devices table: the device, the firmware it reports and its chosen latest
/// values.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceRow {
    #[serde(flatten)]
    pub device: DeviceView,
    /// The firmware version the device last reported (`current_fw_version`, telemetry or
    /// client attribute, whichever is newer); absent when it reported none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    /// The latest value of each requested key the device has (keys it lacks are left out);
    /// absent when no `keys` were asked for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latest: BTreeMap<String, LatestCell>,
}

/// A page of the table and how many devices match in all.
#[derive(Debug)]
pub struct TablePage {
    pub total: u64,
    pub items: Vec<DeviceRow>,
}

/// Reads the table over the registry, telemetry and attributes.
pub struct DeviceTable<'a> {
    pub registry: &'a Registry,
    pub data: &'a DataService,
    pub attributes: &'a AttributeService,
}

impl DeviceTable<'_> {
    /// One page of the devices `visible` accepts that match `q`, sorted, with the total.
    /// Linear in the matching devices (plus a firmware read per device when sorting or
    /// filtering by firmware), and a few reads per row of the page.
    pub async fn page(
        &self,
        q: &TableQuery,
        visible: impl Fn(&Device) -> bool + Sync,
    ) -> Result<TablePage> {
        let (total, views) = self.matching(q, visible).await?;
        let rows = views.into_iter().skip(q.offset).take(q.limit);
        let mut items = Vec::with_capacity(q.limit.min(total as usize));
        for (v, fw) in rows {
            items.push(self.row(v, fw, &q.keys).await?);
        }
        Ok(TablePage { total, items })
    }

    /// Every matching device in the table's order, with its firmware when it was read (for
    /// exports and bulk actions over a filter).
    pub async fn matching(
        &self,
        q: &TableQuery,
        visible: impl Fn(&Device) -> bool + Sync,
    ) -> Result<(u64, Vec<(DeviceView, Option<Option<String>>)>)> {
        let views = self.registry.all_devices_where(&q.filter, visible).await?;
        let needs_fw = q.sort == SortKey::Firmware || q.firmware.is_some();
        let mut rows: Vec<(DeviceView, Option<Option<String>>)> = Vec::with_capacity(views.len());
        for v in views {
            if needs_fw {
                let fw = self.firmware(v.id).await?;
                if let Some(want) = &q.firmware
                    && !fw.as_deref().is_some_and(|f| same_version(f, want))
                {
                    continue;
                }
                rows.push((v, Some(fw)));
            } else {
                rows.push((v, None));
            }
        }
        let fleet_names = if q.sort == SortKey::Fleet {
            self.fleet_names(rows.iter().map(|(v, _)| v.fleet_id))
                .await?
        } else {
            HashMap::new()
        };
        sort_rows(&mut rows, q.sort, q.descending, &fleet_names);
        Ok((rows.len() as u64, rows))
    }

    pub async fn row(
        &self,
        device: DeviceView,
        fw: Option<Option<String>>,
        keys: &[String],
    ) -> Result<DeviceRow> {
        let firmware_version = match fw {
            Some(f) => f,
            None => self.firmware(device.id).await?,
        };
        let mut latest = BTreeMap::new();
        if !keys.is_empty() {
            for (k, p) in self.data.latest(device.id, DEFAULT_TAG, Some(keys)).await? {
                latest.insert(
                    k,
                    LatestCell {
                        ts: p.ts,
                        value: to_json(&p.value),
                    },
                );
            }
        }
        Ok(DeviceRow {
            device,
            firmware_version,
            latest,
        })
    }

    /// The firmware version a device last reported, from its telemetry or its client
    /// attributes, whichever is newer.
    pub async fn firmware(&self, d: DeviceId) -> Result<Option<String>> {
        let keys = [FIRMWARE_KEY.to_string()];
        let mut best: Option<(Millis, Json)> = None;
        for (_, p) in self.data.latest(d, DEFAULT_TAG, Some(&keys)).await? {
            best = Some((p.ts, to_json(&p.value)));
        }
        for (_, (ts, v)) in self.attributes.client_values(d, &keys).await? {
            if best.as_ref().is_none_or(|(t, _)| ts >= *t) {
                best = Some((ts, v));
            }
        }
        Ok(best.map(|(_, v)| match v {
            Json::String(s) => s,
            other => other.to_string(),
        }))
    }

    async fn fleet_names(
        &self,
        fleets: impl Iterator<Item = FleetId>,
    ) -> Result<HashMap<FleetId, String>> {
        let mut names = HashMap::new();
        for f in fleets {
            if let std::collections::hash_map::Entry::Vacant(e) = names.entry(f) {
                let name = self
                    .registry
                    .fleet(f)
                    .await
                    .map(|f| f.name.to_lowercase())
                    .unwrap_or_default();
                e.insert(name);
            }
        }
        Ok(names)
    }
}

/// Whether a reported version is `want`: equal, or the same decimal number (ThingsBoard's
/// typing stores `"1.10"` reported as telemetry as the number 1.1).
fn same_version(reported: &str, want: &str) -> bool {
    reported == want
        || matches!(
            (reported.parse::<f64>(), want.parse::<f64>()),
            (Ok(a), Ok(b)) if a == b && a.is_finite()
        )
}

/// Sorts rows by `key`; ties (and devices without a value) fall back to the name, then the
/// id, so pages never overlap. Devices without a value come last in either direction.
fn sort_rows(
    rows: &mut [(DeviceView, Option<Option<String>>)],
    key: SortKey,
    descending: bool,
    fleet_names: &HashMap<FleetId, String>,
) {
    use std::cmp::Ordering;
    let name_then_id = |a: &DeviceView, b: &DeviceView| {
        a.name
            .to_lowercase()
            .cmp(&b.name.to_lowercase())
            .then(a.id.cmp(&b.id))
    };
    // `None` last regardless of direction.
    fn opt<T: Ord>(a: Option<T>, b: Option<T>, descending: bool) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) if descending => b.cmp(&a),
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    let dir = |o: Ordering| if descending { o.reverse() } else { o };
    rows.sort_by(|(a, fa), (b, fb)| {
        let primary = match key {
            SortKey::Name => return dir(name_then_id(a, b)),
            SortKey::Created => return dir(a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id))),
            SortKey::Fleet => dir(fleet_names
                .get(&a.fleet_id)
                .cmp(&fleet_names.get(&b.fleet_id))),
            SortKey::Status => {
                let rank = |s: DeviceStatus| u8::from(s != DeviceStatus::Online);
                dir(rank(a.status).cmp(&rank(b.status)))
            }
            SortKey::LastActivity => opt(a.last_activity_at, b.last_activity_at, descending),
            SortKey::Firmware => opt(
                fa.clone().flatten().map(VersionKey::of),
                fb.clone().flatten().map(VersionKey::of),
                descending,
            ),
        };
        primary.then_with(|| name_then_id(a, b))
    });
}

/// Orders versions by their numeric parts (`1.9` before `1.10`), then as text.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct VersionKey(Vec<(u64, String)>);

impl VersionKey {
    fn of(v: String) -> Self {
        VersionKey(
            v.split(['.', '-', '_'])
                .map(|part| {
                    let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                    (
                        digits.parse().unwrap_or(0),
                        part[digits.len()..].to_string(),
                    )
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WorkspaceId;

    fn view(name: &str, status: DeviceStatus, activity: Option<Millis>) -> DeviceView {
        DeviceView {
            id: DeviceId::new(),
            workspace_id: WorkspaceId::new(),
            fleet_id: FleetId::new(),
            name: name.into(),
            label: String::new(),
            enabled: true,
            status,
            connections: 0,
            created_at: 0,
            updated_at: 0,
            last_connect_at: None,
            last_disconnect_at: None,
            last_activity_at: activity,
            gateway: Default::default(),
        }
    }

    fn names(rows: &[(DeviceView, Option<Option<String>>)]) -> Vec<&str> {
        rows.iter().map(|(v, _)| v.name.as_str()).collect()
    }

    #[test]
    fn sorts_by_each_column_with_missing_values_last() {
        use DeviceStatus::*;
        let mut rows = vec![
            (view("b", Offline, Some(10)), Some(Some("1.10".into()))),
            (view("A", Online, None), Some(None)),
            (view("c", Online, Some(30)), Some(Some("1.9".into()))),
        ];
        let none = HashMap::new();
        sort_rows(&mut rows, SortKey::Name, false, &none);
        assert_eq!(names(&rows), ["A", "b", "c"]);
        sort_rows(&mut rows, SortKey::Name, true, &none);
        assert_eq!(names(&rows), ["c", "b", "A"]);
        sort_rows(&mut rows, SortKey::Status, false, &none);
        assert_eq!(names(&rows), ["A", "c", "b"]);
        sort_rows(&mut rows, SortKey::LastActivity, true, &none);
        assert_eq!(names(&rows), ["c", "b", "A"]);
        sort_rows(&mut rows, SortKey::LastActivity, false, &none);
        assert_eq!(names(&rows), ["b", "c", "A"]);
        sort_rows(&mut rows, SortKey::Firmware, false, &none);
        assert_eq!(names(&rows), ["c", "b", "A"], "1.9 before 1.10, none last");
        sort_rows(&mut rows, SortKey::Firmware, true, &none);
        assert_eq!(names(&rows), ["b", "c", "A"]);
    }

    #[test]
    fn versions_match_as_text_or_as_the_same_number() {
        assert!(same_version("1.1", "1.10"));
        assert!(same_version("v2", "v2"));
        assert!(!same_version("1.10.0", "1.10"));
    }
}
