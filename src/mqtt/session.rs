//! One device connection over MQTT: CONNECT authentication with ThingsBoard's refusal codes
//! (thingsboard-device-api.md §2), PUBLISH dispatch to the data service with PUBACK after the
//! data is durable, SUBSCRIBE grants, and presence bookkeeping for the connection's lifetime.

use std::sync::Arc;

use ntex_bytes::Bytes;
use ntex_mqtt::{Control, QoS, v3, v5};

use crate::data::{DataService, Durability};
use crate::devices::presence::Liveness;
use crate::devices::protocol::{self, DeviceTopic};
use crate::events::Event;
use crate::metrics::{ReasonLabel, TransportLabel};
use crate::model::DeviceId;
use crate::services::Services;

/// Errors that end a connection. The message never carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MqttErr {
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("payload refused: {0}")]
    BadPayload(String),
    #[error("storage failed; the message was not acknowledged")]
    Storage,
    #[error("protocol error")]
    Protocol,
}

impl From<()> for MqttErr {
    fn from(_: ()) -> Self {
        MqttErr::Protocol
    }
}

impl TryFrom<MqttErr> for v5::PublishAck {
    type Error = MqttErr;
    fn try_from(e: MqttErr) -> Result<Self, Self::Error> {
        Err(e)
    }
}

/// State of one authenticated device connection. Dropped when the connection ends, which is
/// when presence is updated: that covers every way a connection can close.
pub struct DeviceSession {
    services: Arc<Services>,
    device_id: DeviceId,
    device_name: String,
    transport: &'static str,
    live: Arc<Liveness>,
}

impl Drop for DeviceSession {
    fn drop(&mut self) {
        self.services.registry.disconnected(self.device_id);
        self.services
            .metrics
            .connections
            .get_or_create(&TransportLabel {
                transport: self.transport,
            })
            .dec();
        self.services.events.publish(Event::DeviceDisconnected {
            device_id: self.device_id,
        });
        tracing::info!(device = %self.device_id, name = %self.device_name, "device disconnected");
    }
}

/// Why a CONNECT was refused; mapped to v3 return codes and v5 reason codes as ThingsBoard does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Unknown token sent without a password (how the SDK sends tokens): v3 4, v5 0x86.
    BadUsernameOrPassword,
    /// Unknown credentials, disabled device: v3 5, v5 0x87.
    NotAuthorized,
    /// Only a client id: v3 2, v5 0x85.
    IdentifierRejected,
    /// The store failed: v3 3, v5 0x88.
    Unavailable,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::BadUsernameOrPassword => "bad_username_or_password",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::IdentifierRejected => "identifier_rejected",
            Refusal::Unavailable => "unavailable",
        }
    }
}

fn authenticate(
    services: &Services,
    username: Option<&str>,
    has_password: bool,
    client_id: &str,
) -> Result<crate::model::Device, Refusal> {
    match username.filter(|u| !u.is_empty()) {
        Some(token) => match services.registry.authenticate_token(token) {
            Ok(Some(dev)) if dev.enabled => Ok(dev),
            Ok(Some(_)) => Err(Refusal::NotAuthorized),
            Ok(None) if has_password => Err(Refusal::NotAuthorized),
            Ok(None) => Err(Refusal::BadUsernameOrPassword),
            Err(e) => {
                tracing::error!(error = %e, "credential lookup failed");
                Err(Refusal::Unavailable)
            }
        },
        None if !client_id.is_empty() => Err(Refusal::IdentifierRejected),
        None => Err(Refusal::NotAuthorized),
    }
}

fn open_session(
    services: &Arc<Services>,
    transport: &'static str,
    username: Option<&str>,
    has_password: bool,
    client_id: &str,
    peer: Option<std::net::SocketAddr>,
) -> Result<DeviceSession, Refusal> {
    match authenticate(services, username, has_password, client_id) {
        Ok(dev) => {
            let live = services.registry.connected(dev.id);
            services
                .metrics
                .connections
                .get_or_create(&TransportLabel { transport })
                .inc();
            services.events.publish(Event::DeviceConnected {
                device_id: dev.id,
                transport,
            });
            tracing::info!(device = %dev.id, name = %dev.name, ?peer, transport, "device connected");
            Ok(DeviceSession {
                services: services.clone(),
                device_id: dev.id,
                device_name: dev.name,
                transport,
                live,
            })
        }
        Err(r) => {
            services
                .metrics
                .connects_refused
                .get_or_create(&ReasonLabel { reason: r.label() })
                .inc();
            // The username may be a token: log only that one was given, never its value.
            tracing::warn!(
                ?peer,
                transport,
                reason = r.label(),
                username_given = username.is_some(),
                "connection refused"
            );
            Err(r)
        }
    }
}

fn peer_of(io: &ntex_io::IoBoxed) -> Option<std::net::SocketAddr> {
    io.query::<ntex_io::types::PeerAddr>().get().map(|p| p.0)
}

pub async fn connect_v3(
    services: &Arc<Services>,
    transport: &'static str,
    c: v3::Connect,
) -> Result<v3::ConnectAck<DeviceSession>, MqttErr> {
    let pkt = c.packet();
    let username = pkt.username.as_ref().map(|u| u.as_str());
    let res = open_session(
        services,
        transport,
        username,
        pkt.password.is_some(),
        &pkt.client_id,
        peer_of(c.io()),
    );
    Ok(match res {
        Ok(s) => c.ack(s, false),
        Err(Refusal::BadUsernameOrPassword) => c.bad_username_or_pwd(),
        Err(Refusal::NotAuthorized) => c.not_authorized(),
        Err(Refusal::IdentifierRejected) => c.identifier_rejected(),
        Err(Refusal::Unavailable) => c.service_unavailable(),
    })
}

pub async fn connect_v5(
    services: &Arc<Services>,
    transport: &'static str,
    c: v5::Connect,
) -> Result<v5::ConnectAck<DeviceSession>, MqttErr> {
    use v5::codec::ConnectAckReason as R;
    let pkt = c.packet();
    let username = pkt.username.as_ref().map(|u| u.as_str());
    let res = open_session(
        services,
        transport,
        username,
        pkt.password.is_some(),
        &pkt.client_id,
        peer_of(c.io()),
    );
    Ok(match res {
        // The maximum packet size is advertised by ntex-mqtt from the service configuration.
        Ok(s) => c.ack(s),
        Err(Refusal::BadUsernameOrPassword) => c.failed(R::BadUserNameOrPassword),
        Err(Refusal::NotAuthorized) => c.failed(R::NotAuthorized),
        Err(Refusal::IdentifierRejected) => c.failed(R::ClientIdentifierNotValid),
        Err(Refusal::Unavailable) => c.failed(R::ServerUnavailable),
    })
}

/// Outcome of a device publish, before it is mapped to the protocol version's answer.
enum Outcome {
    Stored,
    UnknownTopic,
    BadPayload(String),
    Storage,
}

/// Handles one device publish. Takes the payload by value and drops it before any await: the
/// payload shares ntex's read buffer, and holding it while the store works would pin a whole
/// buffer per in-flight message.
async fn handle_publish(
    s: &DeviceSession,
    topic: DeviceTopic,
    payload: Bytes,
    qos: QoS,
) -> Outcome {
    s.live.touch();
    let m = &s.services.metrics;
    let label = TransportLabel {
        transport: s.transport,
    };
    m.messages_in.get_or_create(&label).inc();
    m.bytes_in
        .get_or_create(&label)
        .inc_by(payload.len() as u64);
    let reject = |reason: &'static str| {
        m.publish_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc()
    };
    match topic {
        DeviceTopic::Telemetry => {
            let parsed = DataService::parse_telemetry(&payload);
            drop(payload);
            let telemetry = match parsed {
                Ok(t) => t,
                Err(e) => {
                    reject("bad_payload");
                    tracing::debug!(device = %s.device_id, error = %e, "telemetry refused");
                    return Outcome::BadPayload(e.to_string());
                }
            };
            // QoS 0 has no acknowledgement to delay; its data rides the next sync.
            let durability = if qos == QoS::AtMostOnce {
                Durability::BestEffort
            } else {
                Durability::Durable
            };
            match s
                .services
                .data
                .store_telemetry(s.device_id, telemetry, durability)
                .await
            {
                Ok(_) => Outcome::Stored,
                Err(e) => {
                    reject("storage");
                    tracing::error!(device = %s.device_id, error = %e, "telemetry not stored");
                    Outcome::Storage
                }
            }
        }
        DeviceTopic::Unknown => {
            reject("unknown_topic");
            tracing::debug!(device = %s.device_id, "publish to an unknown topic");
            Outcome::UnknownTopic
        }
    }
}

pub async fn publish_v3(s: &v3::Session<DeviceSession>, p: v3::Publish) -> Result<(), MqttErr> {
    let payload = p.read_all().await.map_err(|_| MqttErr::Protocol)?;
    let (topic, qos) = (DeviceTopic::parse(p.publish_topic()), p.qos());
    // The packet (its topic) shares the read buffer too; the v3 ack needs nothing from it.
    drop(p);
    match handle_publish(s, topic, payload, qos).await {
        Outcome::Stored => Ok(()),
        // MQTT 3.1.1 has no negative PUBACK; acknowledging keeps the session usable, as
        // ThingsBoard does, and the message is counted and logged as rejected.
        Outcome::UnknownTopic => Ok(()),
        // TB closes a 3.1.1 session on a bad payload (§4); the client learns from the close.
        Outcome::BadPayload(e) => Err(MqttErr::BadPayload(e)),
        // No PUBACK: the client keeps the message and sends it again after reconnecting.
        Outcome::Storage => Err(MqttErr::Storage),
    }
}

pub async fn publish_v5(
    s: &v5::Session<DeviceSession>,
    p: v5::Publish,
) -> Result<v5::PublishAck, MqttErr> {
    use v5::codec::PublishAckReason as R;
    let payload = p.read_all().await.map_err(|_| MqttErr::Protocol)?;
    let (topic, qos) = (DeviceTopic::parse(p.publish_topic()), p.qos());
    // The dispatcher matches the ack to the packet id itself: the packet can go.
    drop(p);
    Ok(match handle_publish(s, topic, payload, qos).await {
        Outcome::Stored => v5::PublishAck::new(R::Success),
        Outcome::UnknownTopic => {
            v5::PublishAck::new(R::TopicNameInvalid).reason("unknown topic".into())
        }
        Outcome::BadPayload(e) => v5::PublishAck::new(R::PayloadFormatInvalid).reason(e.into()),
        Outcome::Storage => v5::PublishAck::new(R::UnspecifiedError).reason("not stored".into()),
    })
}

/// The QoS granted for a SUBSCRIBE filter: device topics at most QoS 1, as ThingsBoard grants
/// (thingsboard-device-api.md §1); `None` refuses anything else.
fn grant(s: &DeviceSession, filter: &str, requested: QoS) -> Option<QoS> {
    if !protocol::is_device_filter(filter) {
        tracing::info!(device = %s.device_id, filter, "subscription refused");
        return None;
    }
    Some(if requested == QoS::AtMostOnce {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    })
}

pub async fn protocol_v3(
    s: &v3::Session<DeviceSession>,
    m: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, MqttErr> {
    s.live.touch();
    Ok(match m {
        v3::ProtocolMessage::Subscribe(mut sub) => {
            for mut t in sub.iter_mut() {
                match grant(s, t.topic(), t.qos()) {
                    Some(qos) => t.confirm(qos),
                    None => t.fail(),
                }
            }
            sub.ack()
        }
        other => other.ack(),
    })
}

pub async fn protocol_v5(
    s: &v5::Session<DeviceSession>,
    m: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, MqttErr> {
    s.live.touch();
    Ok(match m {
        v5::ProtocolMessage::Subscribe(mut sub) => {
            for mut t in sub.iter_mut() {
                match grant(s, t.topic(), t.options().qos) {
                    Some(qos) => t.confirm(qos),
                    None => t.fail(v5::codec::SubscribeAckReason::NotAuthorized),
                }
            }
            sub.ack()
        }
        v5::ProtocolMessage::Auth(a) => a.ack(v5::codec::Auth::default()),
        other => other.ack(),
    })
}

pub async fn control_v3(
    s: &v3::Session<DeviceSession>,
    c: Control<MqttErr>,
) -> Result<Option<v3::codec::Encoded>, MqttErr> {
    log_stop(s.device_id, &c);
    Ok(None)
}

pub async fn control_v5(
    s: &v5::Session<DeviceSession>,
    c: Control<MqttErr>,
) -> Result<Option<v5::codec::Encoded>, MqttErr> {
    log_stop(s.device_id, &c);
    Ok(None)
}

fn log_stop(device: DeviceId, c: &Control<MqttErr>) {
    if let Control::Stop(reason) = c {
        tracing::debug!(device = %device, ?reason, "connection stopping");
    }
}
