//! The ThingsBoard gateway API (`v1/gateway/*`, thingsboard-gateway.md), written once for every
//! transport: a device marked as a gateway speaks for sub-devices that do not connect
//! themselves (equipment behind Modbus, BACnet, BLE). This module owns what the gateway's
//! messages mean: which sub-device each names (found, or created on first sight in the
//! gateway's fleet or the fleet its `type` maps to, up to `limits.gateway_sub_devices`), the
//! rule that a gateway acts only on its own sub-devices, and the sub-devices' sessions. Those
//! live in the gateway's connection: they are registered in the session registry so that
//! attribute pushes and jobs find them, and a transport carries their commands on the
//! gateway's connection (`SessionCommand::Sub`). Each sub-device's message is then handled as
//! any device's (`device_messages::handle`), and the gateway's message is acknowledged once
//! every part of it is done (one aggregate PUBACK).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value as Json, json};

use crate::audit::Entry;
use crate::data::Durability;
use crate::device_messages::{self, Answer, Message, Origin, Refusal};
use crate::devices::presence::Liveness;
use crate::devices::protocol::{self, AttributeRequest};
use crate::error::{Conflict, Error};
use crate::events::Event;
use crate::metrics::TransportLabel;
use crate::model::{AuditKind, Device, DeviceId, GatewayRole};
use crate::services::Services;

/// Where the server pushes shared attribute changes of sub-devices.
pub const ATTRIBUTES_TOPIC: &str = "v1/gateway/attributes";
/// Where the server sends RPC requests to sub-devices, and gateways send their replies.
pub const RPC_TOPIC: &str = "v1/gateway/rpc";
/// Where attribute requests are answered.
pub const ATTRIBUTES_RESPONSE_TOPIC: &str = "v1/gateway/attributes/response";
/// Where the server tells a gateway that it ended a sub-device's session.
pub const DISCONNECT_TOPIC: &str = "v1/gateway/disconnect";
/// The transport name sub-device sessions carry in metrics, events and connection history.
pub const TRANSPORT: &str = "gateway";

/// A gateway API topic a gateway publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayTopic {
    Connect,
    Disconnect,
    Telemetry,
    Attributes,
    AttributeRequest,
    Rpc,
    Claim,
}

impl GatewayTopic {
    /// The gateway API topic `topic` names, if any.
    pub fn parse(topic: &str) -> Option<GatewayTopic> {
        Some(match topic.strip_prefix("v1/gateway/")? {
            "connect" => Self::Connect,
            "disconnect" => Self::Disconnect,
            "telemetry" => Self::Telemetry,
            "attributes" => Self::Attributes,
            "attributes/request" => Self::AttributeRequest,
            "rpc" => Self::Rpc,
            "claim" => Self::Claim,
            _ => return None,
        })
    }

    /// Whether its messages store something (they count against the gateway's rate).
    pub fn stores(self) -> bool {
        matches!(self, Self::Telemetry | Self::Attributes | Self::Claim)
    }
}

/// Whether a gateway may subscribe to `filter` (the server's gateway topics).
pub fn is_gateway_filter(filter: &str) -> bool {
    matches!(
        filter,
        ATTRIBUTES_TOPIC | RPC_TOPIC | ATTRIBUTES_RESPONSE_TOPIC | DISCONNECT_TOPIC
    )
}

/// Why a gateway's message was refused. Nothing of it was stored unless a part of it was
/// handled before (the gateway sends the whole message again; stored parts are idempotent
/// by timestamp, as a device's repeat is).
#[derive(Debug, thiserror::Error)]
pub enum GatewayRefusal {
    /// The message as a sub-device's would be refused.
    #[error(transparent)]
    Message(Refusal),
    /// It names a device that is not this gateway's (another gateway's, a directly
    /// connected one), or a disabled one.
    #[error("{0}")]
    NotPermitted(String),
    /// It names a new device past `limits.gateway_sub_devices`.
    #[error("{0}")]
    TooMany(String),
}

impl From<Refusal> for GatewayRefusal {
    fn from(r: Refusal) -> Self {
        GatewayRefusal::Message(r)
    }
}

fn bad(m: impl Into<String>) -> GatewayRefusal {
    GatewayRefusal::Message(Refusal::BadPayload(m.into()))
}

/// What a gateway message asks, its payload read.
#[derive(Debug)]
pub enum GatewayMessage {
    Connect {
        device: String,
        device_type: Option<String>,
    },
    Disconnect {
        device: String,
    },
    /// Messages of several sub-devices (telemetry, attributes, claims), each handled as that
    /// device's own.
    PerDevice(Vec<(String, Message)>),
    AttributeRequest {
        id: i64,
        device: String,
        /// The names asked for, as asked; one name is answered as `value`.
        keys: Vec<String>,
        client: bool,
    },
    RpcReply {
        device: String,
        id: u64,
        reply: Vec<u8>,
    },
}

fn device_field(v: &Json) -> Result<String, GatewayRefusal> {
    match v.get("device").and_then(Json::as_str).map(str::trim) {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(bad("\"device\" must be a device name")),
    }
}

/// Reads a gateway message's payload (cheap and synchronous: a transport parses and drops the
/// payload before it waits for anything).
pub fn parse(topic: GatewayTopic, payload: &[u8]) -> Result<GatewayMessage, GatewayRefusal> {
    let v: Json = serde_json::from_slice(payload).map_err(|e| bad(format!("not JSON: {e}")))?;
    let per_device = |v: Json| -> Result<Map<String, Json>, GatewayRefusal> {
        match v {
            Json::Object(m) if !m.is_empty() => Ok(m),
            _ => Err(bad("an object keyed by device name")),
        }
    };
    Ok(match topic {
        GatewayTopic::Connect => GatewayMessage::Connect {
            device: device_field(&v)?,
            device_type: v
                .get("type")
                .and_then(Json::as_str)
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from),
        },
        GatewayTopic::Disconnect => GatewayMessage::Disconnect {
            device: device_field(&v)?,
        },
        GatewayTopic::Telemetry => {
            let mut out = Vec::new();
            for (name, items) in per_device(v)? {
                // ThingsBoard skips a device whose value is not an array.
                let Json::Array(mut items) = items else {
                    continue;
                };
                for item in &mut items {
                    // Latency metadata the gateway may add is not telemetry.
                    if let Json::Object(o) = item {
                        o.remove("metadata");
                    }
                }
                let bytes = serde_json::to_vec(&Json::Array(items)).unwrap_or_default();
                let telemetry = device_messages::Kind::Telemetry {
                    tag: crate::model::DEFAULT_TAG.into(),
                }
                .parse(&bytes)
                .map_err(|e| bad(format!("device {name:?}: {e}")))?;
                out.push((name.trim().to_string(), telemetry));
            }
            if out.is_empty() {
                return Err(bad("no device's telemetry is an array"));
            }
            GatewayMessage::PerDevice(out)
        }
        GatewayTopic::Attributes => {
            let mut out = Vec::new();
            for (name, values) in per_device(v)? {
                if !values.is_object() {
                    continue;
                }
                let bytes = serde_json::to_vec(&values).unwrap_or_default();
                let m = device_messages::Kind::Attributes
                    .parse(&bytes)
                    .map_err(|e| bad(format!("device {name:?}: {e}")))?;
                out.push((name.trim().to_string(), m));
            }
            if out.is_empty() {
                return Err(bad("no device's attributes are an object"));
            }
            GatewayMessage::PerDevice(out)
        }
        GatewayTopic::Claim => {
            let mut out = Vec::new();
            for (name, claim) in per_device(v)? {
                let duration_ms = claim.get("durationMs").and_then(Json::as_i64).unwrap_or(0);
                out.push((name.trim().to_string(), Message::Claim { duration_ms }));
            }
            GatewayMessage::PerDevice(out)
        }
        GatewayTopic::AttributeRequest => {
            let id = v
                .get("id")
                .and_then(Json::as_i64)
                .ok_or_else(|| bad("\"id\" must be an integer"))?;
            let keys: Vec<String> = match (v.get("keys"), v.get("key")) {
                (Some(Json::Array(a)), _) => a
                    .iter()
                    .filter_map(Json::as_str)
                    .map(String::from)
                    .collect(),
                (Some(Json::String(s)), _) | (None, Some(Json::String(s))) => {
                    protocol::split_key_list(&[s.as_str()]).unwrap_or_default()
                }
                _ => Vec::new(),
            };
            if keys.is_empty() {
                return Err(bad("\"key\" or \"keys\" must name an attribute"));
            }
            GatewayMessage::AttributeRequest {
                id,
                device: device_field(&v)?,
                keys,
                client: v.get("client").and_then(Json::as_bool).unwrap_or(false),
            }
        }
        GatewayTopic::Rpc => GatewayMessage::RpcReply {
            device: device_field(&v)?,
            id: v
                .get("id")
                .and_then(Json::as_u64)
                .ok_or_else(|| bad("\"id\" must be the request's id"))?,
            reply: serde_json::to_vec(v.get("data").unwrap_or(&Json::Null)).unwrap_or_default(),
        },
    })
}

/// What became of a gateway message.
#[derive(Debug)]
pub enum GatewayAnswer {
    /// Done (durable when asked): acknowledge it.
    Done,
    /// Done, with a message for the gateway on `topic`.
    Reply(&'static str, Json),
}

/// A sub-device session open in the gateway's connection.
struct OpenSub {
    origin: Origin,
    conn: u64,
    live: Arc<Liveness>,
}

/// One gateway connection: the gateway and the sub-device sessions it carries.
pub struct Gateway {
    device: Device,
    conn: u64,
    peer: Option<SocketAddr>,
    open: Mutex<HashMap<Arc<str>, OpenSub>>,
    /// The gateway subscribed to `v1/gateway/attributes`: pushes go out.
    pub attributes_subscribed: AtomicBool,
    /// The gateway subscribed to `v1/gateway/rpc`: jobs go out.
    pub rpc_subscribed: AtomicBool,
}

impl Gateway {
    /// The gateway API of session `conn` of gateway `device`.
    pub fn new(device: Device, conn: u64, peer: Option<SocketAddr>) -> Self {
        Self {
            device,
            conn,
            peer,
            open: Mutex::default(),
            attributes_subscribed: AtomicBool::new(false),
            rpc_subscribed: AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> DeviceId {
        self.device.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, OpenSub>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles one gateway message. `durability` as for a device's message.
    pub async fn handle(
        &self,
        s: &Services,
        message: GatewayMessage,
        durability: Durability,
    ) -> Result<GatewayAnswer, GatewayRefusal> {
        match message {
            GatewayMessage::Connect {
                device,
                device_type,
            } => {
                self.open_sub(s, &device, device_type.as_deref()).await?;
                Ok(GatewayAnswer::Done)
            }
            GatewayMessage::Disconnect { device } => {
                self.close_sub(s, &device);
                Ok(GatewayAnswer::Done)
            }
            GatewayMessage::PerDevice(parts) => {
                // Each device's part on its own (the store commits them together); the
                // message is done when all are, and refused if any is.
                let mut origins = Vec::with_capacity(parts.len());
                for (name, _) in &parts {
                    origins.push(self.open_sub(s, name, None).await?);
                }
                let results = futures_util::future::join_all(
                    parts
                        .into_iter()
                        .zip(origins)
                        .map(|((_, m), o)| device_messages::handle(s, o, m, durability)),
                )
                .await;
                for r in results {
                    r?;
                }
                Ok(GatewayAnswer::Done)
            }
            GatewayMessage::AttributeRequest {
                id,
                device,
                keys,
                client,
            } => {
                let o = self.open_sub(s, &device, None).await?;
                let req = if client {
                    AttributeRequest {
                        client: Some(keys.clone()),
                        shared: None,
                    }
                } else {
                    AttributeRequest {
                        client: None,
                        shared: Some(keys.clone()),
                    }
                };
                let got =
                    match device_messages::handle(s, o, Message::AttributeRequest(req), durability)
                        .await?
                    {
                        Answer::Reply(v) => v,
                        _ => json!({}),
                    };
                let scope = if client { "client" } else { "shared" };
                let values = got.get(scope).cloned().unwrap_or_else(|| json!({}));
                let mut out = json!({"id": id, "device": device});
                // One name asked: `value` (absent when the attribute is not set); several:
                // `values` with those that are (ThingsBoard's answer).
                if keys.len() == 1 {
                    if let Some(v) = values.get(&keys[0]) {
                        out["value"] = v.clone();
                    }
                } else {
                    out["values"] = values;
                }
                Ok(GatewayAnswer::Reply(ATTRIBUTES_RESPONSE_TOPIC, out))
            }
            GatewayMessage::RpcReply { device, id, reply } => {
                let o = self.open_sub(s, &device, None).await?;
                device_messages::handle(s, o, Message::RpcReply { id, reply }, durability).await?;
                Ok(GatewayAnswer::Done)
            }
        }
    }

    /// The sub-device `name` with its session open: found (it must be this gateway's and
    /// enabled) or created, and registered if it is not yet.
    async fn open_sub(
        &self,
        s: &Services,
        name: &str,
        device_type: Option<&str>,
    ) -> Result<Origin, GatewayRefusal> {
        if let Some(o) = self.lock().get(name) {
            o.live.touch();
            return Ok(o.origin);
        }
        let dev = self.sub_device(s, name, device_type).await?;
        let name: Arc<str> = dev.name.as_str().into();
        let origin = Origin::from(&dev);
        let Some(conn) = s
            .sessions
            .register_sub(dev.id, name.clone(), self.device.id, self.conn)
        else {
            // The gateway's own session is gone (it is closing): nothing is taken.
            return Err(
                Refusal::NotStored(Error::Store(crate::store::ports::StoreError::Closed)).into(),
            );
        };
        let live = s.registry.connected(dev.id, TRANSPORT, self.peer);
        let replaced = self
            .lock()
            .insert(name.clone(), OpenSub { origin, conn, live });
        if let Some(old) = replaced {
            // Opened twice at once: the older registration was taken over by this one.
            device_messages::close(s, TRANSPORT, dev.id, old.conn, self.peer);
        }
        s.metrics
            .connections
            .get_or_create(&TransportLabel {
                transport: TRANSPORT,
            })
            .inc();
        s.events.publish(Event::DeviceConnected {
            device_id: dev.id,
            transport: TRANSPORT,
        });
        s.campaigns.connected(dev.id);
        s.metrics.device_connects.inc();
        if self.rpc_subscribed.load(Ordering::Relaxed) {
            s.jobs.ready(dev.id);
        }
        // Shared attributes changed while the sub-device was away (its gateway offline, or
        // the device disconnected) are pushed now, as they would have been.
        if let Some(since) = dev.last_disconnect_at {
            match s
                .attributes
                .shared_changed_since(dev.id, dev.fleet_id, since)
                .await
            {
                Ok(changed) if !changed.is_empty() => {
                    s.sessions.send(
                        dev.id,
                        crate::devices::sessions::SessionCommand::Push {
                            topic: protocol::ATTRIBUTES_TOPIC,
                            payload: Json::Object(changed).to_string().into_bytes(),
                            needs: Some(crate::devices::sessions::Subscription::Attributes),
                        },
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(device = %dev.id, error = %e, "cannot read the shared attributes a sub-device missed")
                }
            }
        }
        tracing::debug!(gateway = %self.device.id, device = %dev.id, name = %dev.name, "sub-device connected");
        Ok(origin)
    }

    /// Finds or creates sub-device `name` (trimmed) of this gateway.
    async fn sub_device(
        &self,
        s: &Services,
        name: &str,
        device_type: Option<&str>,
    ) -> Result<Device, GatewayRefusal> {
        let ws = self.device.workspace_id;
        let lookup = |d: Option<Device>| -> Result<Option<Device>, GatewayRefusal> {
            match d {
                None => Ok(None),
                Some(d) if d.gateway.gateway_of() != Some(self.device.id) => {
                    Err(GatewayRefusal::NotPermitted(format!(
                        "device {:?} is not a sub-device of this gateway",
                        d.name
                    )))
                }
                Some(d) if !d.enabled => Err(GatewayRefusal::NotPermitted(format!(
                    "device {:?} is disabled",
                    d.name
                ))),
                Some(d) => Ok(Some(d)),
            }
        };
        let not_stored = |e: Error| GatewayRefusal::Message(Refusal::NotStored(e));
        if let Some(d) = lookup(
            s.registry
                .device_by_name(ws, name)
                .await
                .map_err(not_stored)?,
        )? {
            return Ok(d);
        }
        let cap = s.config.limits.gateway_sub_devices;
        let gateway = self.device.id;
        let have = s
            .registry
            .count_devices_where(
                &crate::devices::registry::DeviceFilter {
                    workspace_id: Some(ws),
                    ..Default::default()
                },
                |d| d.gateway.gateway_of() == Some(gateway),
            )
            .await
            .map_err(not_stored)?;
        if cap > 0 && have >= u64::from(cap) {
            return Err(GatewayRefusal::TooMany(format!(
                "the gateway has {have} sub-devices, the most it may create \
                 (limits.gateway_sub_devices); {name:?} was not created"
            )));
        }
        let device_type = device_type.unwrap_or("default").to_string();
        let fleet = match &self.device.gateway {
            GatewayRole::Gateway { type_fleets } => type_fleets.get(&device_type).copied(),
            _ => None,
        }
        .unwrap_or(self.device.fleet_id);
        let draft = crate::devices::registry::DeviceDraft {
            fleet_id: fleet,
            name,
            label: "",
            provisioned: false,
            gateway: GatewayRole::SubDevice {
                gateway_id: gateway,
                device_type: device_type.clone(),
            },
        };
        let gw_name = self.device.name.clone();
        let created = s
            .registry
            .create_device(
                draft,
                // No credential: a sub-device is reached only through its gateway.
                |_| Ok(Vec::new()),
                |dev, _| {
                    Some(
                        Entry::new(AuditKind::SubDeviceCreated, format!("gateway:{gw_name}"))
                            .device(dev.id)
                            .fleet(dev.fleet_id)
                            .detail(format!("type {device_type:?}")),
                    )
                },
            )
            .await;
        match created {
            Ok((dev, _)) => Ok(dev),
            // Named by two messages at once: the other one created it.
            Err(Error::Conflict(Conflict::NameTaken { .. })) => lookup(
                s.registry
                    .device_by_name(ws, name)
                    .await
                    .map_err(not_stored)?,
            )?
            .ok_or_else(|| {
                GatewayRefusal::NotPermitted(format!("device {name:?} cannot be created"))
            }),
            Err(e @ Error::Invalid { .. }) => Err(bad(format!("device {name:?}: {e}"))),
            Err(e) => Err(not_stored(e)),
        }
    }

    /// Ends sub-device `name`'s session, if open.
    pub fn close_sub(&self, s: &Services, name: &str) {
        let gone = self.lock().remove(name);
        if let Some(o) = gone {
            device_messages::close(s, TRANSPORT, o.origin.id, o.conn, self.peer);
        }
    }

    /// The server ended sub-device `device`'s session `conn` (taken over, disabled, deleted):
    /// it is forgotten here if it is still that one.
    pub fn closed_by_server(&self, s: &Services, name: &str, device: DeviceId) {
        let gone = {
            let mut open = self.lock();
            match open.get(name) {
                Some(o) if o.origin.id == device => open.remove(name),
                _ => None,
            }
        };
        if let Some(o) = gone {
            device_messages::close(s, TRANSPORT, o.origin.id, o.conn, self.peer);
        }
    }

    /// The sub-devices with a session open.
    pub fn open_devices(&self) -> Vec<DeviceId> {
        self.lock().values().map(|o| o.origin.id).collect()
    }

    /// Ends every sub-device session (the gateway's connection ended).
    pub fn close_all(&self, s: &Services) {
        let all: Vec<OpenSub> = self.lock().drain().map(|(_, o)| o).collect();
        for o in all {
            device_messages::close(s, TRANSPORT, o.origin.id, o.conn, self.peer);
        }
    }
}

/// The server's message to the gateway that it ended sub-device `name`'s session
/// (ThingsBoard's `{"device", "reason"}`; the reason as a label).
pub fn disconnect_notice(name: &str, reason: &str) -> Json {
    json!({"device": name, "reason": reason})
}

/// A shared-attribute push for sub-device `name`, from the device topic's payload.
pub fn attributes_push(name: &str, payload: &[u8]) -> Json {
    let data: Json = serde_json::from_slice(payload).unwrap_or_else(|_| json!({}));
    json!({"device": name, "data": data})
}

/// A server-side RPC request for sub-device `name`: the device topic's `{"method","params"}`
/// with the request id.
pub fn rpc_request(name: &str, rpc_id: u32, payload: &[u8]) -> Json {
    let mut data: Json = serde_json::from_slice(payload).unwrap_or_else(|_| json!({}));
    if let Json::Object(m) = &mut data {
        m.insert("id".into(), json!(rpc_id));
    }
    json!({"device": name, "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_payloads_read_as_thingsboard_writes_them() {
        assert_eq!(
            GatewayTopic::parse("v1/gateway/attributes/request"),
            Some(GatewayTopic::AttributeRequest)
        );
        assert_eq!(GatewayTopic::parse("v1/gateway/other"), None);
        assert_eq!(GatewayTopic::parse("v1/devices/me/telemetry"), None);

        let t = br#"{"Dev A":[{"temperature":42.2}],
            "Dev B":[{"ts":1700000000000,"values":{"h":1},
                      "metadata":{"connector":"c","receivedTs":1,"publishedTs":2}}],
            "Dev C":{"not":"an array"}}"#;
        let GatewayMessage::PerDevice(parts) = parse(GatewayTopic::Telemetry, t).expect("parse")
        else {
            panic!("per device");
        };
        let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Dev A", "Dev B"]);
        let Message::Telemetry { telemetry, .. } = &parts[1].1 else {
            panic!("telemetry");
        };
        assert_eq!(telemetry[0].0, 1_700_000_000_000);
        assert_eq!(telemetry[0].1.len(), 1, "metadata is not stored");
        assert!(parse(GatewayTopic::Telemetry, br#"{"A":{"x":1}}"#).is_err());
        assert!(parse(GatewayTopic::Telemetry, b"[1]").is_err());

        let r = parse(
            GatewayTopic::AttributeRequest,
            br#"{"id":1,"device":"Dev A","client":true,"key":"a"}"#,
        )
        .expect("request");
        assert!(
            matches!(r, GatewayMessage::AttributeRequest { id: 1, client: true, ref keys, .. } if keys == &["a"])
        );
        assert!(
            parse(
                GatewayTopic::AttributeRequest,
                br#"{"device":"A","keys":["a"]}"#
            )
            .is_err()
        );
        let r = parse(
            GatewayTopic::Rpc,
            br#"{"device":"A","id":5,"data":{"ok":1}}"#,
        )
        .expect("rpc");
        assert!(
            matches!(r, GatewayMessage::RpcReply { id: 5, ref reply, .. } if reply == br#"{"ok":1}"#)
        );
        assert!(parse(GatewayTopic::Connect, br#"{"device":"  "}"#).is_err());

        assert_eq!(
            rpc_request("A", 7, br#"{"method":"m","params":{"x":1}}"#),
            json!({"device":"A","data":{"id":7,"method":"m","params":{"x":1}}})
        );
    }
}
