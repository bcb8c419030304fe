//! Device attributes, ThingsBoard's three scopes (§5.4): client attributes reported by the
//! device, shared attributes (desired configuration) set by operators for a device or as a
//! fleet default, and server attributes the device never sees. Shared changes are pushed to
//! the device's sessions (changed keys only, or `{"deleted":[...]}`), kept for HTTP long-polls
//! in a per-device mailbox, and announced on the event bus.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use utoipa::ToSchema;

use super::protocol::{self, ATTRIBUTES_TOPIC, AttributeRequest};
use super::registry::{DeviceFilter, Registry};
use super::sessions::{SessionCommand, Sessions, Subscription};
use crate::error::Error;
use crate::events::{Event, EventBus};
use crate::model::{AttributeOwner, DeviceId, FleetId, Millis, Value, now_ms};
use crate::store::ports::{AttributeStore, Scope};

type Result<T> = std::result::Result<T, Error>;

/// One attribute value with the time it was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttrValue {
    pub value: Value,
    pub ts: Millis,
}

/// A device's attributes by scope; `shared` is the effective value (the fleet's default unless
/// the device has its own).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeviceAttributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<BTreeMap<String, AttrValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<BTreeMap<String, AttrValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<BTreeMap<String, AttrValue>>,
}

/// JSON of a typed value, as a device receives it.
pub fn to_json(v: &Value) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

fn as_map(list: Vec<(String, Millis, Value)>) -> BTreeMap<String, AttrValue> {
    list.into_iter()
        .map(|(k, ts, value)| (k, AttrValue { value, ts }))
        .collect()
}

pub struct AttributeService {
    store: Arc<dyn AttributeStore>,
    registry: Arc<Registry>,
    sessions: Arc<Sessions>,
    events: EventBus,
    mailboxes: Mailboxes,
}

/// Shared-attribute updates kept for devices that long-poll over HTTP: the SDK polls again
/// 0.1 s after each answer, and an update made between two polls must wait for the next one
/// instead of being lost. A device's box exists while it polls and for a while after.
#[derive(Default)]
struct Mailboxes {
    map: std::sync::Mutex<std::collections::HashMap<DeviceId, Mailbox>>,
}

struct Mailbox {
    updates: std::collections::VecDeque<Json>,
    last_poll: std::time::Instant,
    notify: Arc<tokio::sync::Notify>,
}

/// How long a box outlives a device's last poll.
const MAILBOX_IDLE: std::time::Duration = std::time::Duration::from_secs(120);
/// Updates a box holds; the oldest go first.
const MAILBOX_MAX: usize = 100;

impl Mailboxes {
    fn put(&self, device: DeviceId, update: &Json) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(&device) {
            if b.last_poll.elapsed() > MAILBOX_IDLE {
                map.remove(&device);
                return;
            }
            if b.updates.len() == MAILBOX_MAX {
                b.updates.pop_front();
            }
            b.updates.push_back(update.clone());
            b.notify.notify_one();
        }
    }

    /// The next update for `device`, or the notifier to wait on.
    fn take(&self, device: DeviceId) -> std::result::Result<Json, Arc<tokio::sync::Notify>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Forget boxes of devices that stopped polling.
        if map.len() > 1024 {
            map.retain(|_, b| b.last_poll.elapsed() <= MAILBOX_IDLE);
        }
        let b = map.entry(device).or_insert_with(|| Mailbox {
            updates: Default::default(),
            last_poll: std::time::Instant::now(),
            notify: Default::default(),
        });
        b.last_poll = std::time::Instant::now();
        b.updates.pop_front().ok_or_else(|| b.notify.clone())
    }
}

/// Validates operator-supplied attributes (a JSON object) into typed values.
pub fn parse_body(body: Map<String, Json>) -> Result<Vec<(String, Value)>> {
    // Devices ask for shared keys as a comma-joined list (ThingsBoard §5.4), and deletes name
    // keys the same way: a key with a comma could be set but never asked for or deleted.
    if let Some(k) = body.keys().find(|k| k.contains(',')) {
        return Err(Error::Invalid {
            field: "attributes",
            message: format!("key {k:?} contains a comma: keys are listed comma-separated"),
        });
    }
    // What an operator sets reaches devices with the JSON type it was given: a version such
    // as "2.0" must not turn into the number 2.0 (the SDK compares versions as sent).
    protocol::parse_values_as_sent(body).map_err(|e| Error::Invalid {
        field: "attributes",
        message: e.to_string(),
    })
}

impl AttributeService {
    pub fn new(
        store: Arc<dyn AttributeStore>,
        registry: Arc<Registry>,
        sessions: Arc<Sessions>,
        events: EventBus,
    ) -> Self {
        Self {
            store,
            registry,
            sessions,
            events,
            mailboxes: Mailboxes::default(),
        }
    }

    /// Long-poll for the next shared-attribute update of a device (HTTP device API): at once
    /// if one is waiting, else when one comes, else `None` after `wait`.
    pub async fn next_update(&self, device: DeviceId, wait: std::time::Duration) -> Option<Json> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notify = match self.mailboxes.take(device) {
                Ok(u) => return Some(u),
                Err(n) => n,
            };
            if tokio::time::timeout_at(deadline, notify.notified())
                .await
                .is_err()
            {
                // A last look: an update may have landed as the time ran out.
                return self.mailboxes.take(device).ok();
            }
        }
    }

    /// Client attributes reported by a device; durable when this returns.
    pub async fn report(&self, device: DeviceId, values: Vec<(String, Value)>) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.store
            .put_attributes(
                AttributeOwner::Device(device),
                Scope::Client,
                &values,
                now_ms(),
            )
            .await?;
        // Published before the commit: integrations queue the report through the bus tap, and
        // the commit below makes their entries durable with the attributes.
        self.events.publish(Event::ClientAttributes {
            device_id: device,
            values: Json::Object(
                values
                    .iter()
                    .map(|(k, v)| (k.clone(), to_json(v)))
                    .collect(),
            ),
        });
        self.store.commit().await?;
        Ok(())
    }

    /// Sets shared or server attributes of a device (operators); shared ones are pushed.
    pub async fn set(
        &self,
        device: DeviceId,
        scope: Scope,
        values: Vec<(String, Value)>,
    ) -> Result<()> {
        self.registry.device_record(device).await?;
        if scope == Scope::Client {
            return Err(Error::Invalid {
                field: "scope",
                message: "client attributes are reported by the device".into(),
            });
        }
        self.store
            .put_attributes(AttributeOwner::Device(device), scope, &values, now_ms())
            .await?;
        self.store.commit().await?;
        if scope == Scope::Shared && !values.is_empty() {
            let update: Map<String, Json> = values
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect();
            self.push(device, Json::Object(update));
        }
        Ok(())
    }

    /// Deletes attributes of a device. A deleted shared key that has a fleet default falls
    /// back to it, which is what the device is told.
    pub async fn delete(&self, device: DeviceId, scope: Scope, keys: &[String]) -> Result<()> {
        let dev = self.registry.device_record(device).await?;
        let gone = self
            .store
            .delete_attributes(AttributeOwner::Device(device), scope, keys)
            .await?;
        self.store.commit().await?;
        if scope == Scope::Shared && !gone.is_empty() {
            self.push_fallback(device, dev.fleet_id, &gone).await?;
        }
        Ok(())
    }

    /// Sets the same shared attributes on many devices in one commit, and pushes them to
    /// each (an OTA campaign telling a batch of devices of their package).
    pub async fn set_shared_many(
        &self,
        devices: &[DeviceId],
        values: &[(String, Value)],
    ) -> Result<()> {
        let now = now_ms();
        for &d in devices {
            self.store
                .put_attributes(AttributeOwner::Device(d), Scope::Shared, values, now)
                .await?;
        }
        self.store.commit().await?;
        let update: Map<String, Json> = values
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect();
        for &d in devices {
            self.push(d, Json::Object(update.clone()));
        }
        Ok(())
    }

    /// Deletes the devices' own values of shared `keys` in one commit; each device is told
    /// what now applies (its fleet's value, or that the key is gone).
    pub async fn drop_shared_many(&self, devices: &[DeviceId], keys: &[String]) -> Result<()> {
        let mut gone_of = Vec::with_capacity(devices.len());
        for &d in devices {
            let gone = self
                .store
                .delete_attributes(AttributeOwner::Device(d), Scope::Shared, keys)
                .await?;
            gone_of.push((d, gone));
        }
        self.store.commit().await?;
        for (d, gone) in gone_of {
            if gone.is_empty() {
                continue;
            }
            let Ok(dev) = self.registry.device_record(d).await else {
                continue;
            };
            self.push_fallback(d, dev.fleet_id, &gone).await?;
        }
        Ok(())
    }

    /// Tells a device whose own shared `gone` keys were deleted what applies now.
    async fn push_fallback(&self, device: DeviceId, fleet: FleetId, gone: &[String]) -> Result<()> {
        let defaults = self
            .store
            .get_attributes(AttributeOwner::Fleet(fleet), Scope::Shared, Some(gone))
            .await?;
        let mut fallback = Map::new();
        for (k, _, v) in &defaults {
            fallback.insert(k.clone(), to_json(v));
        }
        let deleted: Vec<&String> = gone.iter().filter(|k| !fallback.contains_key(*k)).collect();
        if !fallback.is_empty() {
            self.push(device, Json::Object(fallback));
        }
        if !deleted.is_empty() {
            self.push(device, serde_json::json!({ "deleted": deleted }));
        }
        Ok(())
    }

    /// A device's client attributes `keys` with when each was reported.
    pub async fn client_values(
        &self,
        device: DeviceId,
        keys: &[String],
    ) -> Result<Vec<(String, (Millis, Json))>> {
        Ok(self
            .store
            .get_attributes(AttributeOwner::Device(device), Scope::Client, Some(keys))
            .await?
            .into_iter()
            .map(|(k, ts, v)| (k, (ts, to_json(&v))))
            .collect())
    }

    /// Sets fleet defaults of shared attributes; devices without their own value are told.
    pub async fn set_fleet(&self, fleet: FleetId, values: Vec<(String, Value)>) -> Result<()> {
        self.registry.fleet(fleet).await?;
        self.store
            .put_attributes(
                AttributeOwner::Fleet(fleet),
                Scope::Shared,
                &values,
                now_ms(),
            )
            .await?;
        self.store.commit().await?;
        let keys: Vec<String> = values.iter().map(|(k, _)| k.clone()).collect();
        for d in self.fleet_devices(fleet).await? {
            let own: Vec<String> = self
                .store
                .get_attributes(AttributeOwner::Device(d), Scope::Shared, Some(&keys))
                .await?
                .into_iter()
                .map(|(k, _, _)| k)
                .collect();
            let update: Map<String, Json> = values
                .iter()
                .filter(|(k, _)| !own.contains(k))
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect();
            if !update.is_empty() {
                self.push(d, Json::Object(update));
            }
        }
        Ok(())
    }

    pub async fn delete_fleet(&self, fleet: FleetId, keys: &[String]) -> Result<()> {
        self.registry.fleet(fleet).await?;
        let gone = self
            .store
            .delete_attributes(AttributeOwner::Fleet(fleet), Scope::Shared, keys)
            .await?;
        self.store.commit().await?;
        if gone.is_empty() {
            return Ok(());
        }
        for d in self.fleet_devices(fleet).await? {
            let own: Vec<String> = self
                .store
                .get_attributes(AttributeOwner::Device(d), Scope::Shared, Some(&gone))
                .await?
                .into_iter()
                .map(|(k, _, _)| k)
                .collect();
            let deleted: Vec<&String> = gone.iter().filter(|k| !own.contains(k)).collect();
            if !deleted.is_empty() {
                self.push(d, serde_json::json!({ "deleted": deleted }));
            }
        }
        Ok(())
    }

    pub async fn fleet_defaults(&self, fleet: FleetId) -> Result<BTreeMap<String, AttrValue>> {
        self.registry.fleet(fleet).await?;
        Ok(as_map(
            self.store
                .get_attributes(AttributeOwner::Fleet(fleet), Scope::Shared, None)
                .await?,
        ))
    }

    /// Effective shared attributes: the fleet's defaults overlaid by the device's own.
    /// A device's effective shared values of `keys` (its own, else its fleet's default), as
    /// JSON: what the device itself would be told.
    pub async fn shared_values(
        &self,
        device: DeviceId,
        fleet: FleetId,
        keys: &[String],
    ) -> Result<BTreeMap<String, Json>> {
        Ok(self
            .effective_shared(device, fleet, Some(keys))
            .await?
            .into_iter()
            .map(|(k, a)| (k, to_json(&a.value)))
            .collect())
    }

    /// The device's effective shared attributes set after `since` (ms): what a device that was
    /// away since then has not been told (a gateway's sub-device is told on its return).
    pub async fn shared_changed_since(
        &self,
        device: DeviceId,
        fleet: FleetId,
        since: Millis,
    ) -> Result<Map<String, Json>> {
        Ok(self
            .effective_shared(device, fleet, None)
            .await?
            .into_iter()
            .filter(|(_, a)| a.ts > since)
            .map(|(k, a)| (k, to_json(&a.value)))
            .collect())
    }

    async fn effective_shared(
        &self,
        device: DeviceId,
        fleet: FleetId,
        keys: Option<&[String]>,
    ) -> Result<BTreeMap<String, AttrValue>> {
        let mut out = as_map(
            self.store
                .get_attributes(AttributeOwner::Fleet(fleet), Scope::Shared, keys)
                .await?,
        );
        out.extend(as_map(
            self.store
                .get_attributes(AttributeOwner::Device(device), Scope::Shared, keys)
                .await?,
        ));
        Ok(out)
    }

    /// A device's attributes, all scopes or one.
    pub async fn get(&self, device: DeviceId, scope: Option<Scope>) -> Result<DeviceAttributes> {
        let dev = self.registry.device_record(device).await?;
        let want = |s: Scope| scope.is_none_or(|x| x == s);
        let mut out = DeviceAttributes::default();
        if want(Scope::Client) {
            out.client = Some(as_map(
                self.store
                    .get_attributes(AttributeOwner::Device(device), Scope::Client, None)
                    .await?,
            ));
        }
        if want(Scope::Shared) {
            out.shared = Some(self.effective_shared(device, dev.fleet_id, None).await?);
        }
        if want(Scope::Server) {
            out.server = Some(as_map(
                self.store
                    .get_attributes(AttributeOwner::Device(device), Scope::Server, None)
                    .await?,
            ));
        }
        Ok(out)
    }

    /// Answers a device's attribute request with ThingsBoard's semantics (§5.4): the asked
    /// keys of each asked scope (everything when nothing is asked); a scope appears only if
    /// something in it was found; missing keys are left out.
    pub async fn request(&self, device: DeviceId, req: &AttributeRequest) -> Result<Json> {
        let dev = self.registry.device_record(device).await?;
        let all = req.client.is_none() && req.shared.is_none();
        let mut out = Map::new();
        let to_obj = |m: BTreeMap<String, AttrValue>| -> Json {
            Json::Object(m.into_iter().map(|(k, a)| (k, to_json(&a.value))).collect())
        };
        if all || req.client.is_some() {
            let client = as_map(
                self.store
                    .get_attributes(
                        AttributeOwner::Device(device),
                        Scope::Client,
                        req.client.as_deref(),
                    )
                    .await?,
            );
            if !client.is_empty() {
                out.insert("client".into(), to_obj(client));
            }
        }
        if all || req.shared.is_some() {
            let shared = self
                .effective_shared(device, dev.fleet_id, req.shared.as_deref())
                .await?;
            if !shared.is_empty() {
                out.insert("shared".into(), to_obj(shared));
            }
        }
        Ok(Json::Object(out))
    }

    /// Sends an update to the device's sessions subscribed to the attributes topic, and to
    /// HTTP long-polls.
    fn push(&self, device: DeviceId, update: Json) {
        let payload = update.to_string().into_bytes();
        self.sessions.send(
            device,
            SessionCommand::Push {
                topic: ATTRIBUTES_TOPIC,
                payload: payload.clone(),
                needs: Some(Subscription::Attributes),
            },
        );
        self.mailboxes.put(device, &update);
        self.events.publish(Event::SharedAttributes {
            device_id: device,
            update,
        });
    }

    async fn fleet_devices(&self, fleet: FleetId) -> Result<Vec<DeviceId>> {
        let filter = DeviceFilter {
            fleet_id: Some(fleet),
            ..Default::default()
        };
        self.registry.device_ids(&filter, false).await
    }
}
