//! What a device message does, written once for every transport. The MQTT session and the
//! HTTP device API (and later CoAP and the gateway API) only take the framing apart: they name
//! the message (`Kind`, from a topic or a route), hand its payload to `Kind::parse`, and map the
//! `Answer` or `Refusal` to their own reason codes and status codes. Opening and closing a
//! device session is here too: the per-address connect rate, provisioning-session detection,
//! the login, the client-id policy, and the bookkeeping of a session that starts or ends.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use serde_json::{Value as Json, json};

use crate::audit::Entry;
use crate::conditions::ConditionReport;
use crate::config::ClientIdPolicy;
use crate::data::keys::KeyRefusal;
use crate::data::{DataService, Durability, IngestError};
use crate::devices::credentials::{LoginAttempt, PROVISION_USERNAME, Refusal as LoginRefusal};
use crate::devices::presence::Liveness;
use crate::devices::protocol::{self, AttributeRequest, Telemetry};
use crate::devices::sessions::SessionSlot;
use crate::error::Error;
use crate::events::Event;
use crate::metrics::TransportLabel;
use crate::model::{AuditKind, Device, DeviceId, FleetId, Value};
use crate::services::Services;

/// A device message as a transport names it, before its payload is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Telemetry under a tag (`default` for ThingsBoard's own topic and route).
    /// The tag is borrowed for the default topic: no allocation per message there.
    Telemetry { tag: Cow<'static, str> },
    /// Client attributes the device reports.
    Attributes,
    /// Conditions the device opens, updates or closes.
    Conditions,
    /// The device's reply to server-side RPC request `id`.
    RpcReply { id: u64 },
    /// A client-side RPC call.
    RpcCall,
    /// A claiming request.
    Claim,
}

/// A device message with its payload read.
#[derive(Debug)]
pub enum Message {
    Telemetry {
        tag: Cow<'static, str>,
        telemetry: Telemetry,
    },
    Attributes(Vec<(String, Value)>),
    Conditions(Vec<ConditionReport>),
    /// Which attribute values the device asks for (from a payload or a query string).
    AttributeRequest(AttributeRequest),
    /// The reply as sent: JSON, or text a device sent instead.
    RpcReply {
        id: u64,
        reply: Vec<u8>,
    },
    RpcCall(Vec<u8>),
    Claim {
        duration_ms: i64,
    },
}

/// What became of a message the device may be told about.
#[derive(Debug)]
pub enum Answer {
    /// Done, and durable when the transport asked for that: acknowledge it.
    Done,
    /// Done, with a body for the device (a response topic, an HTTP body).
    Reply(Json),
    /// A reply to a request nobody waits for (a late or repeated one): acknowledged all the
    /// same, so the device stops sending it.
    Ignored,
}

/// Why a message was not taken. Nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("invalid tag: {0}")]
    BadTag(String),
    #[error("{0}")]
    BadPayload(String),
    /// Over a key cap.
    #[error(transparent)]
    KeyLimit(KeyRefusal),
    /// The store did not take it (a full disk, a failing store): the device sends it again.
    #[error("not stored: {0}")]
    NotStored(Error),
}

impl Kind {
    /// Reads the payload. Cheap and synchronous, so a transport can parse and drop the payload
    /// before it waits for anything.
    pub fn parse(self, payload: &[u8]) -> Result<Message, Refusal> {
        let bad = |e: protocol::PayloadError| Refusal::BadPayload(e.to_string());
        Ok(match self {
            Kind::Telemetry { tag } => {
                protocol::check_tag(&tag).map_err(|e| Refusal::BadTag(e.to_string()))?;
                Message::Telemetry {
                    tag,
                    telemetry: DataService::parse_telemetry(payload).map_err(bad)?,
                }
            }
            Kind::Attributes => {
                Message::Attributes(protocol::parse_attributes(payload).map_err(bad)?)
            }
            Kind::Conditions => {
                Message::Conditions(crate::conditions::parse_reports(payload).map_err(bad)?)
            }
            Kind::RpcReply { id } => Message::RpcReply {
                id,
                reply: payload.to_vec(),
            },
            Kind::RpcCall => Message::RpcCall(payload.to_vec()),
            Kind::Claim => {
                // Both fields are optional (§5.7); an empty payload is a claim with no secret.
                let v: Json = if payload.is_empty() {
                    json!({})
                } else {
                    serde_json::from_slice(payload)
                        .map_err(|e| Refusal::BadPayload(format!("not JSON: {e}")))?
                };
                Message::Claim {
                    duration_ms: v.get("durationMs").and_then(Json::as_i64).unwrap_or(0),
                }
            }
        })
    }
}

/// The device a message comes from: what handling needs of it.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub id: DeviceId,
    pub fleet_id: FleetId,
}

impl From<&Device> for Origin {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id,
            fleet_id: d.fleet_id,
        }
    }
}

/// Does what a device's message asks. `durability` says whether the transport acknowledges
/// only once the data is on disk (QoS 1, HTTP) or not (QoS 0).
pub async fn handle(
    services: &Services,
    device: Origin,
    message: Message,
    durability: Durability,
) -> Result<Answer, Refusal> {
    let not_stored = |e: Error| Refusal::NotStored(e);
    match message {
        Message::Telemetry { tag, telemetry } => {
            // A device in an OTA campaign reports its update's progress as telemetry
            // (`fw_state`, `current_fw_version`). The campaign hears of it before the store
            // does: a device that disconnects (reboots) right after its report cancels this
            // handler while it waits for the store, and a report heard twice (a retry after a
            // refusal) changes nothing the second time.
            services.campaigns.reported_values(
                device.id,
                telemetry
                    .iter()
                    .flat_map(|(_, vs)| vs.iter().map(|(k, v)| (k.as_str(), v))),
            );
            match services
                .data
                .store_tagged(device.id, &tag, telemetry, durability)
                .await
            {
                Ok(_) => Ok(Answer::Done),
                Err(IngestError::Keys(r)) => Err(Refusal::KeyLimit(r)),
                Err(e) => Err(not_stored(e.into())),
            }
        }
        Message::Attributes(values) => {
            // As for telemetry: the campaign hears of OTA keys whatever becomes of the handler.
            services
                .campaigns
                .reported_values(device.id, values.iter().map(|(k, v)| (k.as_str(), v)));
            services
                .attributes
                .report(device.id, values)
                .await
                .map_err(not_stored)?;
            Ok(Answer::Done)
        }
        Message::Conditions(reports) => {
            let now = services
                .conditions
                .report(device.id, reports)
                .await
                .map_err(not_stored)?;
            Ok(Answer::Reply(json!({ "conditions": now })))
        }
        Message::AttributeRequest(req) => Ok(Answer::Reply(
            services
                .attributes
                .request(device.id, &req)
                .await
                .map_err(not_stored)?,
        )),
        Message::RpcReply { id, reply } => {
            // Acknowledged once the job's result is durable.
            let known = match u32::try_from(id) {
                Ok(id) => services
                    .jobs
                    .on_reply(device.id, id, &reply)
                    .await
                    .map_err(not_stored)?,
                Err(_) => false,
            };
            if known {
                Ok(Answer::Done)
            } else {
                tracing::debug!(device = %device.id, rpc = id, "RPC reply with no pending job");
                Ok(Answer::Ignored)
            }
        }
        Message::RpcCall(payload) => Ok(Answer::Reply(crate::devices::rpc::client_rpc(
            &services.config,
            &payload,
        ))),
        Message::Claim { duration_ms } => {
            services.audit.record(
                Entry::new(AuditKind::ClaimRequested, "device")
                    .device(device.id)
                    .fleet(device.fleet_id)
                    .detail(format!("claim window {duration_ms} ms (0 = default)")),
            );
            Ok(Answer::Done)
        }
    }
}

/// Why a package request gets no bytes: ThingsBoard's error texts, which the MQTT transport
/// publishes on `v2/fw/error` and the HTTP device API maps to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageRefusal {
    /// No package of this type is assigned to the device (HTTP 404).
    NotFound,
    /// The title or version asked for is not the assigned package's (HTTP 400).
    Mismatch,
    /// A chunk larger than the transport may carry.
    PayloadTooLarge,
    /// A malformed request, or the package cannot be read.
    Failure,
}

impl PackageRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "NOT_FOUND",
            Self::Mismatch => "TITLE_OR_VERSION_MISMATCH",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::Failure => "FAILURE",
        }
    }
}

/// What a device asks of a package: chunk `chunk` of `size` bytes (0: the whole file), and,
/// over HTTP, the title and version it believes it was given.
#[derive(Debug, Clone, Default)]
pub struct PackageRequest<'a> {
    pub size: u64,
    pub chunk: u64,
    pub title: Option<&'a str>,
    pub version: Option<&'a str>,
}

/// The part of a package a device asked for, not yet read.
pub struct PackageSlice {
    pub package: crate::model::Package,
    pub start: u64,
    /// 0 past the end of the file.
    pub len: u64,
}

impl PackageSlice {
    /// The slice's bytes, read from the file in pieces as they are sent.
    pub async fn read(
        &self,
        services: &Services,
    ) -> Result<
        futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
        PackageRefusal,
    > {
        services
            .packages
            .read(&self.package, self.start, self.len)
            .await
            .map_err(|e| {
                tracing::error!(package = %self.package.id, error = %e, "cannot read a package chunk");
                PackageRefusal::Failure
            })
    }
}

/// The package of `kind` assigned to a device, by its effective shared attributes
/// (`fw_title` and `fw_version`: its own, or its fleet's), and the part of it the device asks
/// for: at most `max_len` bytes, checked before anything is read (a whole 256 MiB file asked
/// for over MQTT is refused, not loaded). A chunk past the end is empty.
pub async fn package_slice(
    services: &Services,
    origin: Origin,
    kind: crate::model::PackageKind,
    req: PackageRequest<'_>,
    max_len: u64,
) -> Result<PackageSlice, PackageRefusal> {
    if req.size > max_len {
        return Err(PackageRefusal::PayloadTooLarge);
    }
    let keys = [
        format!("{}_title", kind.prefix()),
        format!("{}_version", kind.prefix()),
    ];
    let attrs = services
        .attributes
        .shared_values(origin.id, origin.fleet_id, &keys)
        .await
        .map_err(|e| {
            tracing::error!(device = %origin.id, error = %e, "cannot read the device's package assignment");
            PackageRefusal::Failure
        })?;
    let text = |k: &str| {
        attrs.get(k).map(|v| match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let (Some(title), Some(version)) = (text(&keys[0]), text(&keys[1])) else {
        return Err(PackageRefusal::NotFound);
    };
    if req.title.is_some_and(|t| t != title) || req.version.is_some_and(|v| v != version) {
        return Err(PackageRefusal::Mismatch);
    }
    let package = services
        .packages
        .find(kind, origin.fleet_id, &title, &version)
        .await
        .map_err(|_| PackageRefusal::Failure)?
        .ok_or(PackageRefusal::NotFound)?;
    let (start, len) =
        crate::ota::packages::PackageService::chunk_range(&package, req.size, req.chunk);
    if len > max_len {
        return Err(PackageRefusal::PayloadTooLarge);
    }
    services
        .campaigns
        .chunk_requested(origin.id, kind, req.chunk);
    Ok(PackageSlice {
        package,
        start,
        len,
    })
}

/// A provisioning request (§5.9): the response to send back, success or not.
pub async fn provision(services: &Services, payload: &[u8], peer: Option<SocketAddr>) -> Json {
    services.provisioning.provision(payload, peer).await
}

/// What a device presents when it opens a session, whatever the transport.
pub struct Connect<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub client_id: &'a str,
    pub peer: Option<SocketAddr>,
    /// The client certificate chain, when the transport is TLS with one.
    pub chain: Option<Vec<CertificateDer<'static>>>,
}

/// A session a device opened.
pub struct Opened {
    pub device: Device,
    /// The registration in the session registry: commands for the device arrive through it.
    pub slot: SessionSlot,
    /// The device's presence entry, touched on each message.
    pub live: Arc<Liveness>,
}

/// Why a session was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectRefusal {
    Login(LoginRefusal),
    /// Too many connections from the client's address.
    RateExceeded,
}

impl ConnectRefusal {
    /// The reason's metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ConnectRefusal::Login(r) => r.label(),
            ConnectRefusal::RateExceeded => "connection_rate_exceeded",
        }
    }

    /// What to log (never a secret).
    pub fn detail(&self) -> &'static str {
        match self {
            ConnectRefusal::Login(l) => l.reason(),
            ConnectRefusal::RateExceeded => "too many connections from this address",
        }
    }
}

/// Whether a connect opens a provisioning session: the provisioning username, or (without a
/// username) the provisioning client id and no client certificate.
pub fn is_provisioning(c: &Connect<'_>) -> bool {
    match c.username.filter(|u| !u.is_empty()) {
        Some(u) => u == PROVISION_USERNAME,
        None => c.client_id == PROVISION_USERNAME && c.chain.is_none(),
    }
}

/// Checks the per-address connect rate (every connect, provisioning ones too).
pub fn admit(services: &Services, peer: Option<SocketAddr>) -> Result<(), ConnectRefusal> {
    match peer {
        Some(p) if !services.connect_limiter.allow(&p.ip()) => Err(ConnectRefusal::RateExceeded),
        _ => Ok(()),
    }
}

/// Opens a device session: the login, the client-id policy, then the session is registered
/// (taking over an older session of the same device) and the device is online.
pub async fn open(
    services: &Services,
    transport: &'static str,
    c: &Connect<'_>,
) -> Result<Opened, ConnectRefusal> {
    let login = services
        .credentials
        .login(LoginAttempt {
            username: c.username,
            password: c.password,
            client_id: c.client_id,
            cert_chain: c.chain.clone(),
            peer: c.peer,
        })
        .await
        .map_err(ConnectRefusal::Login)?;
    let policy_ok = match services.config.mqtt.client_id_policy {
        ClientIdPolicy::Any => true,
        ClientIdPolicy::CertificateCn => {
            login.cert_cn.as_deref().is_none_or(|cn| cn == c.client_id)
        }
        ClientIdPolicy::DeviceName => c.client_id == login.device.name,
    };
    if !policy_ok {
        let reason = "client id does not match the device identity";
        services.audit.record(
            Entry::new(AuditKind::AuthFailed, "device")
                .device(login.device.id)
                .credential(login.credential)
                .peer(c.peer)
                .detail(reason),
        );
        return Err(ConnectRefusal::Login(LoginRefusal::IdentifierRejected(
            reason,
        )));
    }
    let device = login.device;
    let (slot, taken) = services
        .sessions
        .register(device.id, Some(login.credential));
    let live = services.registry.connected(device.id, transport, c.peer);
    services
        .metrics
        .connections
        .get_or_create(&TransportLabel { transport })
        .inc();
    services.events.publish(Event::DeviceConnected {
        device_id: device.id,
        transport,
    });
    services.campaigns.connected(device.id);
    services.metrics.device_connects.inc();
    let mut e = crate::devices::trace::TraceEvent::new(
        "connected",
        transport,
        if taken > 0 {
            format!(
                "logged in by {}; took over {taken} older session(s)",
                login.method
            )
        } else {
            format!("logged in by {}", login.method)
        },
    );
    e.device_id = Some(device.id);
    e.peer = c.peer.map(|p| p.to_string());
    e.client_id = (!c.client_id.is_empty()).then(|| c.client_id.to_string());
    services.trace.record(e);
    // Sessions that keep throwing each other out: two clients share one identity (a cloned
    // device, a copied token). Operators are told with a condition on the device.
    if taken > 0 && services.trace.takeover(device.id, crate::model::now_ms()) {
        tracing::warn!(device = %device.id, "repeated session takeovers: two clients seem to share this device's identity");
        let report = crate::conditions::ConditionReport {
            name: "session_takeovers".into(),
            action: crate::conditions::Action::Open,
            severity: Some(crate::model::Severity::Major),
            details: Some(json!({
                "takeovers": crate::devices::trace::TAKEOVERS,
                "within_secs": crate::devices::trace::TAKEOVER_WINDOW_MS / 1000,
                "detail": "two clients seem to share this device's identity: each login throws the other out",
                "last_peer": c.peer.map(|p| p.to_string()),
            })),
            ts: None,
        };
        if let Err(e) = services.conditions.report(device.id, vec![report]).await {
            tracing::error!(device = %device.id, error = %e, "cannot open the session_takeovers condition");
        }
    }
    // Per device at debug: a fleet reconnecting would flood the log; `app` logs a summary.
    tracing::debug!(
        device = %device.id,
        name = %device.name,
        peer = ?c.peer,
        transport,
        method = login.method,
        took_over = taken,
        "device connected"
    );
    Ok(Opened { device, slot, live })
}

/// A device session ended (`conn` is the registration `open` made).
pub fn close(
    services: &Services,
    transport: &'static str,
    device: DeviceId,
    conn: u64,
    peer: Option<SocketAddr>,
) {
    services.sessions.unregister(device, conn);
    services.registry.disconnected(device, transport, peer);
    let mut e =
        crate::devices::trace::TraceEvent::new("disconnected", transport, "the session ended");
    e.device_id = Some(device);
    e.peer = peer.map(|p| p.to_string());
    services.trace.record(e);
    services
        .metrics
        .connections
        .get_or_create(&TransportLabel { transport })
        .dec();
    services
        .events
        .publish(Event::DeviceDisconnected { device_id: device });
    services.metrics.device_disconnects.inc();
    tracing::debug!(device = %device, "device disconnected");
}
