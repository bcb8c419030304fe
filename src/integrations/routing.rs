//! Which integrations an event goes to, and the event as they receive it. The filters of every
//! integration live in an in-memory snapshot (an `Arc` swapped under a lock when integrations
//! change), so routing a device message costs a read lock, one device lookup (a point read, only
//! when some integration exists) and no scans. Queue writes themselves are the store's.

use std::sync::{Arc, RwLock};

use serde_json::{Map, Value as Json, json};

use crate::devices::attributes::to_json;
use crate::events::Event;
use crate::model::{
    Device, DeviceId, EventKind, FleetId, Integration, IntegrationId, Value, WorkspaceId, now_ms,
};
use crate::store::ports::{Enqueue, IntegrationStore, JobStore, Points, RegistryStore};

/// The filters of one integration.
#[derive(Debug, Clone)]
struct Route {
    id: IntegrationId,
    workspace: Option<WorkspaceId>,
    fleets: Vec<FleetId>,
    tags: Vec<String>,
    kinds: Vec<EventKind>,
}

impl Route {
    fn matches(&self, kind: EventKind, dev: &Device, tag: Option<&str>) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && self.workspace.is_none_or(|w| w == dev.workspace_id)
            && (self.fleets.is_empty() || self.fleets.contains(&dev.fleet_id))
            // Tags select data; events of other kinds carry none and pass.
            && (self.tags.is_empty() || tag.is_none_or(|t| self.tags.iter().any(|x| x == t)))
    }
}

/// Routes events to integration queues.
pub struct Router {
    /// Queues are written here; devices and jobs are read to describe an event.
    store: Arc<dyn IntegrationStore>,
    registry: Arc<dyn RegistryStore>,
    jobs: Arc<dyn JobStore>,
    routes: RwLock<Arc<Vec<Route>>>,
    /// Woken after an event is queued outside the logged path: the service's committer then
    /// makes it durable (connectivity and job results have no caller that commits).
    pub(super) commit_wanted: Arc<tokio::sync::Notify>,
    /// Events the bus showed the tap, in order, for the `integration-events` worker, which
    /// reads what describes them (the device, the job) and queues them. The tap itself must
    /// not wait for storage: it runs inside whoever published. Not bounded, so nothing is
    /// lost: each is a small record, and the worker drains them as fast as they come.
    tapped: tokio::sync::mpsc::UnboundedSender<Event>,
    tapped_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Event>>>,
}

impl Router {
    pub fn new(
        registry: Arc<dyn RegistryStore>,
        jobs: Arc<dyn JobStore>,
        store: Arc<dyn IntegrationStore>,
    ) -> Self {
        let (tapped, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            store,
            registry,
            jobs,
            routes: RwLock::new(Arc::new(Vec::new())),
            commit_wanted: Arc::default(),
            tapped,
            tapped_rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    /// Replaces the snapshot (after any integration is created, changed or deleted). Paused
    /// integrations keep receiving: pausing stops delivery, not queueing.
    pub fn set(&self, list: &[Integration]) {
        let routes = list
            .iter()
            .map(|i| Route {
                id: i.id,
                workspace: i.workspace_id,
                fleets: i.fleet_ids.clone(),
                tags: i.tags.clone(),
                kinds: i.kinds.clone(),
            })
            .collect();
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    }

    fn snapshot(&self) -> Arc<Vec<Route>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The device and the integrations an event of `kind` goes to; `None` when there are none.
    async fn targets(
        &self,
        kind: EventKind,
        device: DeviceId,
        tag: Option<&str>,
    ) -> Option<(Device, Vec<IntegrationId>)> {
        let routes = self.snapshot();
        if routes.is_empty() {
            return None;
        }
        let dev = match self.registry.get_device(device).await {
            Ok(Some(d)) => d,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(device = %device, error = %e, "cannot route an event to integrations");
                return None;
            }
        };
        let ids: Vec<IntegrationId> = routes
            .iter()
            .filter(|r| r.matches(kind, &dev, tag))
            .map(|r| r.id)
            .collect();
        (!ids.is_empty()).then_some((dev, ids))
    }

    /// Queue entries for a telemetry message, to be logged with its points.
    pub async fn data(&self, device: DeviceId, tag: &str, points: &Points) -> Option<Enqueue> {
        let (dev, integrations) = self.targets(EventKind::Data, device, Some(tag)).await?;
        let points: Vec<Json> = points
            .iter()
            .map(|(ts, values)| json!({"ts": ts, "values": values_json(values)}))
            .collect();
        let mut extra = Map::new();
        extra.insert("tag".into(), Json::from(tag));
        extra.insert("points".into(), Json::Array(points));
        Some(Enqueue {
            integrations,
            event: event_json(EventKind::Data.as_str(), &dev, extra),
        })
    }

    /// The event bus tap: client attributes, conditions, connectivity and job results. Called
    /// synchronously by `EventBus::publish`, so nothing is lost to a lagging subscriber: the
    /// events integrations take are handed, in order, to `route_event`.
    pub fn on_event(&self, e: &Event) {
        let wanted = match e {
            Event::ClientAttributes { .. }
            | Event::DeviceConnected { .. }
            | Event::DeviceDisconnected { .. }
            | Event::Condition { .. }
            | Event::OtaDevice { .. } => true,
            Event::JobUpdated { state, .. } => state.is_terminal(),
            _ => false,
        };
        if wanted && !self.snapshot().is_empty() {
            let _ = self.tapped.send(e.clone());
        }
    }

    /// The tapped events, once (for the `integration-events` worker).
    pub(super) fn take_tapped(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Event>> {
        self.tapped_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Queues a tapped event for the integrations it goes to; the entries are durable at the
    /// store's next `commit`.
    pub async fn route_event(&self, e: &Event) {
        let (kind, device, extra) = match e {
            Event::ClientAttributes { device_id, values } => {
                let mut m = Map::new();
                m.insert("values".into(), values.clone());
                (EventKind::Attributes, *device_id, m)
            }
            Event::DeviceConnected {
                device_id,
                transport,
            } => {
                let mut m = Map::new();
                m.insert("event".into(), Json::from("connected"));
                m.insert("transport".into(), Json::from(*transport));
                (EventKind::Connectivity, *device_id, m)
            }
            Event::DeviceDisconnected { device_id } => {
                let mut m = Map::new();
                m.insert("event".into(), Json::from("disconnected"));
                (EventKind::Connectivity, *device_id, m)
            }
            Event::Condition {
                device_id,
                action,
                condition,
            } => {
                let mut m = Map::new();
                m.insert("action".into(), Json::from(action.as_str()));
                m.insert("condition".into(), json!(condition));
                (EventKind::Conditions, *device_id, m)
            }
            Event::OtaDevice {
                campaign_id,
                device_id,
                state,
                detail,
            } => {
                let mut m = Map::new();
                m.insert("campaign_id".into(), json!(campaign_id));
                m.insert("state".into(), json!(state));
                m.insert("detail".into(), json!(detail));
                (EventKind::Ota, *device_id, m)
            }
            Event::JobUpdated {
                job_id,
                device_id,
                state,
            } if state.is_terminal() => {
                if self.snapshot().is_empty() {
                    return;
                }
                let job = match self.jobs.get_job(*job_id).await {
                    Ok(Some(j)) => j,
                    _ => return,
                };
                let mut m = Map::new();
                m.insert("job_id".into(), json!(job.id));
                m.insert("method".into(), Json::from(job.method));
                m.insert("state".into(), json!(state));
                m.insert("result".into(), job.result.unwrap_or(Json::Null));
                (EventKind::JobResults, *device_id, m)
            }
            _ => return,
        };
        let Some((dev, integrations)) = self.targets(kind, device, None).await else {
            return;
        };
        self.store.enqueue_later(Enqueue {
            integrations,
            event: event_json(kind.as_str(), &dev, extra),
        });
        self.commit_wanted.notify_one();
    }
}

fn values_json(values: &[(String, Value)]) -> Json {
    Json::Object(
        values
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect(),
    )
}

/// The event object without its `id` (added at delivery from the queue entry's key).
pub fn event_json(kind: &str, dev: &Device, extra: Map<String, Json>) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("kind".into(), Json::from(kind));
    m.insert("device_id".into(), json!(dev.id));
    m.insert("device_name".into(), Json::from(dev.name.as_str()));
    m.insert("fleet_id".into(), json!(dev.fleet_id));
    m.insert("workspace_id".into(), json!(dev.workspace_id));
    m.insert("ts".into(), Json::from(now_ms()));
    m.extend(extra);
    serde_json::to_vec(&Json::Object(m)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Device {
        Device {
            id: DeviceId::new(),
            workspace_id: WorkspaceId::new(),
            fleet_id: FleetId::new(),
            name: "d".into(),
            label: String::new(),
            enabled: true,
            created_at: 0,
            updated_at: 0,
            last_connect_at: None,
            last_disconnect_at: None,
            last_activity_at: None,
            provisioned_at: None,
            gateway: Default::default(),
        }
    }

    #[test]
    fn filters_select_by_kind_workspace_fleet_and_tag() {
        let d = dev();
        let all = Route {
            id: IntegrationId::new(),
            workspace: None,
            fleets: vec![],
            tags: vec![],
            kinds: vec![],
        };
        assert!(all.matches(EventKind::Data, &d, Some("x")));
        let r = Route {
            fleets: vec![d.fleet_id],
            tags: vec!["hot".into()],
            kinds: vec![EventKind::Data, EventKind::Connectivity],
            workspace: Some(d.workspace_id),
            ..all.clone()
        };
        assert!(r.matches(EventKind::Data, &d, Some("hot")));
        assert!(!r.matches(EventKind::Data, &d, Some("cold")));
        assert!(
            r.matches(EventKind::Connectivity, &d, None),
            "tags select data only"
        );
        assert!(!r.matches(EventKind::Attributes, &d, None));
        let other_fleet = Route {
            fleets: vec![FleetId::new()],
            ..all.clone()
        };
        assert!(!other_fleet.matches(EventKind::Data, &d, Some("hot")));
        let other_ws = Route {
            workspace: Some(WorkspaceId::new()),
            ..all
        };
        assert!(!other_ws.matches(EventKind::Data, &d, None));
    }
}
