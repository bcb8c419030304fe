//! One device connection over MQTT: CONNECT (connection rate, provisioning sessions, the login
//! decision with ThingsBoard's refusal codes of thingsboard-device-api.md §2, the client id
//! policy, taking over an older session), PUBLISH dispatch with PUBACK after the data is
//! durable and reason codes for everything refused (other devices' topics, rate, payload,
//! telemetry key caps),
//! SUBSCRIBE grants confined to the session's own topics, server-initiated close, and
//! presence bookkeeping for the connection's lifetime. A gateway's connection also carries the
//! gateway API (`crate::gateway`): its topics, and its sub-devices' commands in the gateway's
//! shapes. Refused connects and publishes go to the connection trace (`devices::trace`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ntex_bytes::Bytes;
use ntex_mqtt::{Control, QoS, v3, v5};

use crate::data::Durability;
use crate::data::keys::KeyRefusal;
use crate::device_messages::{
    self, Answer, Connect, ConnectRefusal, Kind, Message, Opened, Origin, Refusal,
};
use crate::devices::credentials::Refusal as LoginRefusal;
use crate::devices::presence::Liveness;
use crate::devices::protocol::{self, DeviceTopic, PROVISION_RESPONSE_TOPIC, RPC_RESPONSE_PREFIX};
use crate::devices::sessions::{CloseReason, SessionCommand, SessionSlot, Subscription};
use crate::gateway::{self, Gateway, GatewayAnswer, GatewayRefusal, GatewayTopic};
use crate::jobs::SendOutcome;
use crate::limits::{Admitted, TokenBucket};
use crate::metrics::{ReasonLabel, TransportLabel};
use crate::model::{DeviceId, FleetId};
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
    #[error("publish outside the session's own topics")]
    NotAuthorized,
    #[error("message rate limit exceeded")]
    RateExceeded,
    #[error("telemetry refused: {0}")]
    KeyLimit(String),
    #[error("refused: {0}")]
    Refused(String),
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

/// The authenticated device behind a connection.
pub struct DeviceCtx {
    id: DeviceId,
    fleet_id: FleetId,
    conn: u64,
    live: Arc<Liveness>,
    bucket: Mutex<RateState>,
    subs: Arc<Subscribed>,
    /// The gateway API of a device marked as a gateway: the sub-device sessions it carries.
    gateway: Option<Arc<Gateway>>,
}

/// Message-rate accounting of one device session.
struct RateState {
    bucket: TokenBucket,
    /// Messages refused in a row; far past the burst the device is disconnected (v5 0x96).
    refused_in_a_row: u32,
}

/// State of one accepted connection: a device session, or a provisioning session that may only
/// ask for credentials (§2, §5.9). Dropped when the connection ends, which is when presence is
/// updated: that covers every way a connection can close.
pub struct DeviceSession {
    services: Arc<Services>,
    transport: &'static str,
    peer: Option<SocketAddr>,
    device: Option<DeviceCtx>,
    /// Provisioning requests answered on this session; each costs an argon2 check, so a
    /// session gets a few, not a stream.
    provision_requests: std::sync::atomic::AtomicU32,
}

/// Provisioning requests one session may make (the SDK makes one).
const MAX_PROVISION_REQUESTS: u32 = 3;

impl Drop for DeviceSession {
    fn drop(&mut self) {
        if let Some(d) = &self.device {
            // Sub-devices go offline with their gateway.
            if let Some(g) = &d.gateway {
                g.close_all(&self.services);
            }
            device_messages::close(&self.services, self.transport, d.id, d.conn, self.peer);
        }
    }
}

fn connect_info<'a>(
    io: &ntex_io::IoBoxed,
    username: Option<&'a str>,
    password: Option<&'a [u8]>,
    client_id: &'a str,
) -> Connect<'a> {
    let chain = io
        .query::<ntex_tls::rustls::PeerCertChain<'static>>()
        .as_ref()
        .map(|c| c.0.iter().map(|d| d.clone().into_owned()).collect());
    Connect {
        username,
        password,
        client_id,
        peer: peer_of(io),
        chain,
    }
}

/// Decides a CONNECT: the per-address rate, the provisioning username, the device login and
/// the client id policy. On success the session is registered (taking over an older session
/// of the same device) and its commands are handed to `on_command`'s task.
async fn open_session(
    services: &Arc<Services>,
    transport: &'static str,
    c: Connect<'_>,
) -> Result<(DeviceSession, Option<SessionSlot>), ConnectRefusal> {
    let res = open_session_inner(services, transport, &c).await;
    if let Err(r) = &res {
        trace_refusal(services, transport, &c, r).await;
        services
            .metrics
            .connects_refused
            .get_or_create(&ReasonLabel { reason: r.label() })
            .inc();
        // The username may be a token: log only that one was given, never its value.
        tracing::warn!(
            peer = ?c.peer,
            transport,
            reason = r.label(),
            detail = r.detail(),
            username_given = c.username.is_some(),
            certificate_given = c.chain.is_some(),
            "connection refused"
        );
    }
    res
}

async fn open_session_inner(
    services: &Arc<Services>,
    transport: &'static str,
    c: &Connect<'_>,
) -> Result<(DeviceSession, Option<SessionSlot>), ConnectRefusal> {
    device_messages::admit(services, c.peer)?;
    if device_messages::is_provisioning(c) {
        tracing::info!(peer = %shown(c.peer), transport, "provisioning session opened");
        return Ok((
            DeviceSession {
                services: services.clone(),
                transport,
                peer: c.peer,
                device: None,
                provision_requests: Default::default(),
            },
            None,
        ));
    }
    let Opened { device, slot, live } = device_messages::open(services, transport, c).await?;
    let l = &services.config.limits;
    let gateway = device
        .gateway
        .is_gateway()
        .then(|| Arc::new(Gateway::new(device.clone(), slot.conn, c.peer)));
    Ok((
        DeviceSession {
            services: services.clone(),
            transport,
            peer: c.peer,
            provision_requests: Default::default(),
            device: Some(DeviceCtx {
                id: device.id,
                fleet_id: device.fleet_id,
                conn: slot.conn,
                live,
                subs: Default::default(),
                gateway,
                bucket: Mutex::new(RateState {
                    bucket: TokenBucket::new(l.device_messages_per_sec, l.device_message_burst),
                    refused_in_a_row: 0,
                }),
            }),
        },
        Some(slot),
    ))
}

/// Records a refused connect in the connection trace: on the device's trace when the attempt
/// names one (its token, even revoked), else with the server's unattributed refusals, with what
/// tells the attempt apart and never a secret.
async fn trace_refusal(
    services: &Services,
    transport: &'static str,
    c: &Connect<'_>,
    r: &ConnectRefusal,
) {
    use crate::devices::trace::{TraceEvent, token_prefix};
    let mut e = TraceEvent::new("refused", transport, r.detail());
    e.reason = Some(r.label().into());
    e.peer = c.peer.map(|p| p.to_string());
    e.client_id = (!c.client_id.is_empty()).then(|| c.client_id.to_string());
    e.token_sha256_prefix = c.username.filter(|u| !u.is_empty()).map(token_prefix);
    if let Some(cert) = c.chain.as_ref().and_then(|ch| ch.first())
        && let Ok(info) = crate::pki::describe_cert(cert, crate::model::CertOrigin::Registered)
    {
        e.cert_fingerprint = Some(info.fingerprint);
        e.cert_subject = Some(info.subject);
    }
    if matches!(r, ConnectRefusal::Login(_)) {
        e.device_id = services.credentials.device_named_by(c.username).await;
    }
    services.trace.record(e);
}

/// Records a refused publish on the device's trace (topic and size; never the payload).
fn trace_publish(s: &DeviceSession, topic: &str, size: usize, outcome: &Outcome) {
    let reason = match outcome {
        Outcome::UnknownTopic => "unknown_topic",
        Outcome::NotAuthorized | Outcome::Forbidden(_) => "not_authorized",
        Outcome::Quota(_) => "quota_exceeded",
        Outcome::BadPayload(_) => "bad_payload",
        Outcome::RateExceeded | Outcome::RateAbuse => "rate_exceeded",
        Outcome::KeyLimit(_) => "key_limit",
        Outcome::Storage => "not_stored",
        Outcome::Stored | Outcome::Reply(..) | Outcome::Package(..) => return,
    };
    let Some(d) = &s.device else { return };
    let detail = match outcome {
        Outcome::Forbidden(m) | Outcome::Quota(m) | Outcome::BadPayload(m) => m.clone(),
        Outcome::KeyLimit(r) => r.to_string(),
        _ => String::new(),
    };
    let mut e = crate::devices::trace::TraceEvent::new(
        "publish_refused",
        s.transport,
        format!(
            "{topic} ({size} bytes){}{detail}",
            if detail.is_empty() { "" } else { ": " }
        ),
    );
    e.device_id = Some(d.id);
    e.peer = s.peer.map(|p| p.to_string());
    e.reason = Some(reason.into());
    s.services.trace.record(e);
}

fn peer_of(io: &ntex_io::IoBoxed) -> Option<std::net::SocketAddr> {
    io.query::<ntex_io::types::PeerAddr>().get().map(|p| p.0)
}

/// The server side of one connection, as the command task drives it; implemented for both
/// protocol versions' sinks.
trait DeviceSink: Clone + 'static {
    fn close_for(&self, reason: CloseReason);
    async fn publish(&self, topic: &'static str, payload: Vec<u8>);
    /// Publishes at QoS 1; true once the device's PUBACK (a success, on MQTT 5) arrives.
    async fn publish_acked(&self, topic: String, payload: Vec<u8>) -> bool;
}

impl DeviceSink for v3::MqttSink {
    fn close_for(&self, _: CloseReason) {
        // 3.1.1 has no server DISCONNECT: the connection is closed.
        self.close();
    }
    async fn publish(&self, topic: &'static str, payload: Vec<u8>) {
        let _ = self
            .publish(topic)
            .send_at_most_once(Bytes::from(payload))
            .await;
    }
    async fn publish_acked(&self, topic: String, payload: Vec<u8>) -> bool {
        self.publish(topic)
            .send_at_least_once(Bytes::from(payload))
            .await
            .is_ok()
    }
}

impl DeviceSink for v5::MqttSink {
    fn close_for(&self, reason: CloseReason) {
        use v5::codec::DisconnectReasonCode as D;
        let code = match reason {
            CloseReason::TakenOver => D::SessionTakenOver,
            CloseReason::CredentialRevoked => D::NotAuthorized,
            CloseReason::DeviceDisabled | CloseReason::DeviceDeleted => D::AdministrativeAction,
        };
        let mut pkt = v5::codec::Disconnect::new(code);
        pkt.reason_string = Some(reason.label().into());
        self.close_with_reason(pkt);
    }
    async fn publish(&self, topic: &'static str, payload: Vec<u8>) {
        let _ = self
            .publish(topic)
            .send_at_most_once(Bytes::from(payload))
            .await;
    }
    async fn publish_acked(&self, topic: String, payload: Vec<u8>) -> bool {
        self.publish(topic)
            .send_at_least_once(Bytes::from(payload))
            .await
            .is_ok_and(|ack| ack.reason_code == v5::codec::PublishAckReason::Success)
    }
}

/// What a session has subscribed to, shared with its command task.
#[derive(Debug, Default)]
pub struct Subscribed {
    attributes: std::sync::atomic::AtomicBool,
    /// `v1/devices/me/rpc/request/+`: jobs are sent only to sessions holding it (§3).
    rpc: std::sync::atomic::AtomicBool,
}

impl Subscribed {
    fn has(&self, s: Subscription) -> bool {
        match s {
            Subscription::Attributes => self.attributes.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Runs a session's commands on the connection's own thread until the session ends (its
/// registry entry goes, and with it the sender).
fn spawn_commands(
    mut slot: SessionSlot,
    d: &DeviceCtx,
    sink: impl DeviceSink,
    services: Arc<Services>,
) {
    let (device, subs, gateway) = (d.id, d.subs.clone(), d.gateway.clone());
    ntex_rt::spawn(async move {
        while let Some(cmd) = slot.commands.recv().await {
            match *cmd {
                SessionCommand::Sub { device, name, cmd } => {
                    if let Some(g) = &gateway {
                        Box::pin(sub_command(g, device, &name, *cmd, &sink, &services)).await;
                    }
                }
                SessionCommand::Close(reason) => {
                    tracing::info!(device = %device, reason = reason.label(), "closing the session");
                    let mut e = crate::devices::trace::TraceEvent::new(
                        "closed",
                        "mqtt",
                        "the server closed the session",
                    );
                    e.device_id = Some(device);
                    e.reason = Some(reason.label().into());
                    services.trace.record(e);
                    sink.close_for(reason);
                    return;
                }
                SessionCommand::Push {
                    topic,
                    payload,
                    needs,
                } => {
                    if needs.is_none_or(|n| subs.has(n)) {
                        // Boxed: this task lives as long as the connection, and its state is
                        // as large as the largest future it awaits; idle, it waits on `recv`.
                        Box::pin(sink.publish(topic, payload)).await;
                    }
                }
                SessionCommand::Rpc {
                    job,
                    rpc_id,
                    payload,
                    write,
                } => {
                    if !subs.rpc.load(std::sync::atomic::Ordering::Relaxed) {
                        services.jobs.on_sent(job, SendOutcome::NotSubscribed);
                        continue;
                    }
                    let topic = format!("{}{rpc_id}", protocol::RPC_REQUEST_PREFIX);
                    let jobs = services.clone();
                    let durable = async move { jobs.jobs.durable(write).await };
                    send_job(&sink, &services, job, durable, topic, payload);
                }
            }
        }
    });
}

/// Sends a job's request on `topic` at QoS 1, in its own task (a device that withholds its
/// PUBACK must not hold up a close), once the job's `sent` state and request id are durable
/// (otherwise it is not sent now, and is retried later), and reports the outcome to the jobs
/// service.
/// `durable` is the wait for the job's write (`JobService::durable`).
fn send_job<E: std::fmt::Display>(
    sink: &impl DeviceSink,
    services: &Arc<Services>,
    job: crate::model::JobId,
    durable: impl std::future::Future<Output = Result<(), E>> + 'static,
    topic: String,
    payload: Vec<u8>,
) {
    let (sink, services) = (sink.clone(), services.clone());
    ntex_rt::spawn(async move {
        if let Err(e) = durable.await {
            tracing::error!(job = %job, error = %e, "job not sent: its state is not durable");
            services.jobs.on_sent(job, SendOutcome::NoAck);
            return;
        }
        let acked = ntex_util::time::timeout(
            services.jobs.ack_timeout(),
            sink.publish_acked(topic, payload),
        )
        .await
        .unwrap_or(false);
        let outcome = if acked {
            SendOutcome::Acked
        } else {
            SendOutcome::NoAck
        };
        services.jobs.on_sent(job, outcome);
    });
}

/// Carries a command for sub-device `device` (named `name`) on its gateway's connection, in
/// the gateway API's shapes.
async fn sub_command(
    g: &Arc<Gateway>,
    device: DeviceId,
    name: &str,
    cmd: SessionCommand,
    sink: &impl DeviceSink,
    services: &Arc<Services>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    match cmd {
        SessionCommand::Close(reason) => {
            tracing::info!(gateway = %g.id(), device = %device, reason = reason.label(), "closing a sub-device session");
            g.closed_by_server(services, name, device);
            // Taken over by another session of the gateway: this connection is on its way out.
            if reason != CloseReason::TakenOver {
                let notice = gateway::disconnect_notice(name, reason.label());
                sink.publish(gateway::DISCONNECT_TOPIC, notice.to_string().into_bytes())
                    .await;
            }
        }
        SessionCommand::Push { topic, payload, .. } => {
            if topic == protocol::ATTRIBUTES_TOPIC && g.attributes_subscribed.load(Relaxed) {
                let body = gateway::attributes_push(name, &payload);
                sink.publish(gateway::ATTRIBUTES_TOPIC, body.to_string().into_bytes())
                    .await;
            }
        }
        SessionCommand::Rpc {
            job,
            rpc_id,
            payload,
            write,
        } => {
            if !g.rpc_subscribed.load(Relaxed) {
                services.jobs.on_sent(job, SendOutcome::NotSubscribed);
                return;
            }
            let body = gateway::rpc_request(name, rpc_id, &payload);
            let topic = gateway::RPC_TOPIC.to_string();
            let jobs = services.clone();
            let durable = async move { jobs.jobs.durable(write).await };
            send_job(
                sink,
                services,
                job,
                durable,
                topic,
                body.to_string().into_bytes(),
            );
        }
        // Not nested.
        SessionCommand::Sub { .. } => {}
    }
}

/// How long a provisioning session may stay open: ThingsBoard closes it 60 s after its
/// response (§5.9); the SDK disconnects itself as soon as it has the answer.
const PROVISIONING_SESSION: std::time::Duration = std::time::Duration::from_secs(60);

fn close_provisioning_later(close: impl FnOnce() + 'static) {
    ntex_rt::spawn(async move {
        ntex_util::time::sleep(PROVISIONING_SESSION).await;
        close();
    });
}

pub async fn connect_v3(
    services: &Arc<Services>,
    transport: &'static str,
    c: v3::Connect,
) -> Result<v3::ConnectAck<DeviceSession>, MqttErr> {
    let pkt = c.packet();
    let info = connect_info(
        c.io(),
        pkt.username.as_ref().map(|u| u.as_str()),
        pkt.password.as_deref(),
        &pkt.client_id,
    );
    let res = open_session(services, transport, info).await;
    Ok(match res {
        Ok((s, slot)) => {
            if let (Some(slot), Some(d)) = (slot, &s.device) {
                spawn_commands(slot, d, c.sink(), services.clone());
            } else {
                let sink = c.sink();
                close_provisioning_later(move || sink.close());
            }
            c.ack(s, false)
        }
        Err(ConnectRefusal::RateExceeded) => c.service_unavailable(),
        Err(ConnectRefusal::Login(r)) => match r {
            LoginRefusal::BadUsernameOrPassword(_) => c.bad_username_or_pwd(),
            LoginRefusal::NotAuthorized(_) => c.not_authorized(),
            LoginRefusal::IdentifierRejected(_) => c.identifier_rejected(),
            LoginRefusal::Unavailable => c.service_unavailable(),
        },
    })
}

pub async fn connect_v5(
    services: &Arc<Services>,
    transport: &'static str,
    c: v5::Connect,
) -> Result<v5::ConnectAck<DeviceSession>, MqttErr> {
    use v5::codec::ConnectAckReason as R;
    let pkt = c.packet();
    let info = connect_info(
        c.io(),
        pkt.username.as_ref().map(|u| u.as_str()),
        pkt.password.as_deref(),
        &pkt.client_id,
    );
    let res = open_session(services, transport, info).await;
    Ok(match res {
        Ok((s, slot)) => {
            if let (Some(slot), Some(d)) = (slot, &s.device) {
                spawn_commands(slot, d, c.sink(), services.clone());
            } else {
                let sink = c.sink();
                close_provisioning_later(move || {
                    sink.close_with_reason(v5::codec::Disconnect::new(
                        v5::codec::DisconnectReasonCode::NormalDisconnection,
                    ))
                });
            }
            // The maximum packet size is advertised by ntex-mqtt from the service configuration.
            c.ack(s)
        }
        Err(ConnectRefusal::RateExceeded) => c.failed(R::ConnectionRateExceeded),
        Err(ConnectRefusal::Login(r)) => match r {
            LoginRefusal::BadUsernameOrPassword(_) => c.failed(R::BadUserNameOrPassword),
            LoginRefusal::NotAuthorized(_) => c.failed(R::NotAuthorized),
            LoginRefusal::IdentifierRejected(_) => c.failed(R::ClientIdentifierNotValid),
            LoginRefusal::Unavailable => c.failed(R::ServerUnavailable),
        },
    })
}

/// Outcome of a device publish, before it is mapped to the protocol version's answer.
enum Outcome {
    Stored,
    /// Handled; nothing to store (a provisioning or RPC request), with a reply to send.
    Reply(&'static str, String, Vec<u8>),
    /// A package chunk to send on the topic: its length and its bytes, read from the file as
    /// the connection takes them.
    Package(String, u64, PackagePieces),
    UnknownTopic,
    /// The topic belongs to another device or another kind of session.
    NotAuthorized,
    /// A gateway named a device that is not its own (or a disabled one).
    Forbidden(String),
    /// A gateway named a new device past its cap of sub-devices.
    Quota(String),
    BadPayload(String),
    /// Over the device's message rate: not stored, so the device may send it again.
    RateExceeded,
    /// Far over the rate: end the session (v5 DISCONNECT 0x96).
    RateAbuse,
    /// Over a telemetry key cap (`limits.telemetry_keys_per_*`): nothing stored.
    KeyLimit(KeyRefusal),
    Storage,
}

/// Handles one publish. Takes the payload by value and drops it before any await on the
/// store: the payload shares ntex's read buffer, and holding it while the store works would
/// pin a whole buffer per in-flight message.
async fn handle_publish(
    s: &DeviceSession,
    topic_str: &str,
    payload: Bytes,
    qos: QoS,
    v5: bool,
) -> Outcome {
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
            .inc();
    };
    let topic = DeviceTopic::parse(topic_str);
    let Some(d) = &s.device else {
        // A provisioning session: one kind of message, answered on its response topic.
        if topic != DeviceTopic::ProvisionRequest {
            reject("not_authorized");
            tracing::info!(peer = %shown(s.peer), topic = topic_str, "provisioning session publish refused");
            return Outcome::NotAuthorized;
        }
        let n = s
            .provision_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n >= MAX_PROVISION_REQUESTS {
            reject("rate_exceeded");
            return Outcome::RateAbuse;
        }
        let resp = device_messages::provision(&s.services, &payload, s.peer).await;
        return Outcome::Reply(
            PROVISION_RESPONSE_TOPIC,
            String::new(),
            resp.to_string().into_bytes(),
        );
    };
    d.live.touch();
    if let Some(gt) = GatewayTopic::parse(topic_str) {
        let Some(g) = &d.gateway else {
            reject("not_authorized");
            tracing::warn!(device = %d.id, topic = topic_str, "gateway API publish from a device that is not a gateway refused");
            return Outcome::NotAuthorized;
        };
        return gateway_publish(s, d, g, gt, payload, qos, v5, &reject).await;
    }
    let origin = Origin {
        id: d.id,
        fleet_id: d.fleet_id,
    };
    // Messages that store something count against the device's rate, as ThingsBoard counts
    // them; requests and replies do not. `reply_to` is the response topic of a request.
    let (parsed, reply_to) = match topic {
        DeviceTopic::Telemetry => {
            let kind = Kind::Telemetry {
                tag: crate::model::DEFAULT_TAG.into(),
            };
            (rated_parse(d, s, v5, kind, payload, &reject).await, None)
        }
        DeviceTopic::TaggedTelemetry(tag) => (
            rated_parse(
                d,
                s,
                v5,
                Kind::Telemetry { tag: tag.into() },
                payload,
                &reject,
            )
            .await,
            None,
        ),
        DeviceTopic::Attributes => (
            rated_parse(d, s, v5, Kind::Attributes, payload, &reject).await,
            None,
        ),
        DeviceTopic::Conditions => (
            rated_parse(d, s, v5, Kind::Conditions, payload, &reject).await,
            None,
        ),
        DeviceTopic::Claim => (
            rated_parse(d, s, v5, Kind::Claim, payload, &reject).await,
            None,
        ),
        DeviceTopic::AttributeRequest(id) => (
            Ok(Message::AttributeRequest(
                protocol::parse_attribute_request(&payload),
            )),
            Some((protocol::ATTRIBUTES_RESPONSE_PREFIX, id)),
        ),
        DeviceTopic::RpcResponse(id) => (
            Kind::RpcReply { id }
                .parse(&payload)
                .map_err(|e| refused(d, e, &reject)),
            None,
        ),
        DeviceTopic::RpcRequest(id) => (
            Kind::RpcCall
                .parse(&payload)
                .map_err(|e| refused(d, e, &reject)),
            Some((RPC_RESPONSE_PREFIX, id)),
        ),
        DeviceTopic::PackageChunk {
            kind,
            request,
            chunk,
        } => {
            // A request, not data: no rate is taken. The payload is the chunk size in ASCII
            // decimal, empty for the whole file (thingsboard-ota.md §1.3).
            let size = match std::str::from_utf8(&payload).map(str::trim) {
                Ok("") => Some(0),
                Ok(t) => t.parse::<u64>().ok(),
                Err(_) => None,
            };
            drop(payload);
            let max = u64::from(s.services.config.mqtt.max_packet_size);
            let topic = format!(
                "{}{request}/chunk/{chunk}",
                protocol::package_response_prefix(kind)
            );
            // The response must fit in one packet of `mqtt.max_packet_size` (fixed header,
            // topic and payload): a larger one could not be sent at all. Checked before a byte
            // of the file is read.
            let room = max.saturating_sub(topic.len() as u64 + 7);
            let res = match size {
                Some(size) => {
                    let req = device_messages::PackageRequest {
                        size,
                        chunk,
                        ..Default::default()
                    };
                    device_messages::package_slice(&s.services, origin, kind, req, room).await
                }
                None => Err(device_messages::PackageRefusal::Failure),
            };
            let res = match res {
                Ok(slice) => slice.read(&s.services).await.map(|p| (slice.len, p)),
                Err(e) => Err(e),
            };
            return match res {
                Ok((len, pieces)) => Outcome::Package(topic, len, pieces),
                Err(e) => {
                    tracing::info!(device = %d.id, request, chunk, refusal = e.as_str(), "package request refused");
                    Outcome::Reply(
                        protocol::PACKAGE_ERROR_TOPIC,
                        String::new(),
                        e.as_str().as_bytes().to_vec(),
                    )
                }
            };
        }
        DeviceTopic::ProvisionRequest | DeviceTopic::Foreign => {
            reject("not_authorized");
            tracing::warn!(device = %d.id, topic = topic_str, "publish outside the device's own topics refused");
            return Outcome::NotAuthorized;
        }
        DeviceTopic::Unknown => {
            reject("unknown_topic");
            tracing::debug!(device = %d.id, "publish to an unknown topic");
            return Outcome::UnknownTopic;
        }
    };
    let message = match parsed {
        Ok(m) => m,
        Err(o) => return o,
    };
    // QoS 0 has no acknowledgement to delay; its data rides the next sync.
    let durability = if qos == QoS::AtMostOnce {
        Durability::BestEffort
    } else {
        Durability::Durable
    };
    match device_messages::handle(&s.services, origin, message, durability).await {
        Ok(Answer::Reply(body)) => match reply_to {
            Some((prefix, id)) => {
                Outcome::Reply(prefix, id.to_string(), body.to_string().into_bytes())
            }
            None => Outcome::Stored,
        },
        Ok(Answer::Done | Answer::Ignored) => Outcome::Stored,
        Err(e) => refused(d, e, &reject),
    }
}

/// Handles one gateway API publish (thingsboard-gateway.md §1): parsed and dropped first, as a
/// device's message; messages that store something take one message from the gateway's rate.
#[allow(clippy::too_many_arguments)]
async fn gateway_publish(
    s: &DeviceSession,
    d: &DeviceCtx,
    g: &Arc<Gateway>,
    topic: GatewayTopic,
    payload: Bytes,
    qos: QoS,
    v5: bool,
    reject: &impl Fn(&'static str),
) -> Outcome {
    let wait = if topic.stores() {
        match d.rate(&s.services, v5) {
            Ok(w) => w,
            Err(o) => {
                reject("rate_exceeded");
                return o;
            }
        }
    } else {
        None
    };
    let parsed = gateway::parse(topic, &payload);
    drop(payload);
    if let Some(w) = wait.filter(|w| !w.is_zero()) {
        ntex_util::time::sleep(w).await;
    }
    let durability = if qos == QoS::AtMostOnce {
        Durability::BestEffort
    } else {
        Durability::Durable
    };
    let answer = match parsed {
        Ok(m) => g.handle(&s.services, m, durability).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(GatewayAnswer::Done) => Outcome::Stored,
        Ok(GatewayAnswer::Reply(topic, body)) => {
            Outcome::Reply(topic, String::new(), body.to_string().into_bytes())
        }
        Err(GatewayRefusal::Message(r)) => refused(d, r, reject),
        Err(GatewayRefusal::NotPermitted(m)) => {
            reject("not_authorized");
            tracing::warn!(gateway = %d.id, error = %m, "gateway message refused");
            Outcome::Forbidden(m)
        }
        Err(GatewayRefusal::TooMany(m)) => {
            reject("gateway_sub_devices");
            tracing::warn!(gateway = %d.id, error = %m, "gateway message refused");
            Outcome::Quota(m)
        }
    }
}

/// The answer to a refused message.
fn refused(d: &DeviceCtx, e: Refusal, reject: &impl Fn(&'static str)) -> Outcome {
    match e {
        Refusal::BadTag(_) => {
            reject("bad_tag");
            Outcome::UnknownTopic
        }
        Refusal::BadPayload(m) => {
            reject("bad_payload");
            tracing::debug!(device = %d.id, error = %m, "payload refused");
            Outcome::BadPayload(m)
        }
        // Counted and logged by the data service, for every transport.
        Refusal::KeyLimit(r) => Outcome::KeyLimit(r),
        Refusal::NotStored(e) => {
            reject("storage");
            tracing::error!(device = %d.id, error = %e, "device message not stored");
            Outcome::Storage
        }
    }
}

/// Takes one message from the device's rate (before parsing, so that a flood costs as little
/// as possible), parses the payload and drops it, then waits out any backpressure. The error
/// is the answer to give: over the rate, or a bad payload.
async fn rated_parse(
    d: &DeviceCtx,
    s: &DeviceSession,
    v5: bool,
    kind: Kind,
    payload: Bytes,
    reject: &impl Fn(&'static str),
) -> Result<Message, Outcome> {
    let wait = d
        .rate(&s.services, v5)
        .inspect_err(|_| reject("rate_exceeded"))?;
    let parsed = kind.parse(&payload);
    drop(payload);
    if let Some(w) = wait.filter(|w| !w.is_zero()) {
        ntex_util::time::sleep(w).await;
    }
    parsed.map_err(|e| refused(d, e, reject))
}

/// A package chunk's bytes as they are read from its file.
type PackagePieces = futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// Sends a package chunk's pieces as the payload of a publish already started with its
/// length. Each piece waits for the connection's write buffer to drain (ntex's write
/// backpressure), so a slow device holds a piece or two, not its chunk. A file that cannot be
/// read to the end drops the payload half sent, which ends the connection: the device sees a
/// broken transfer and asks again, never a short chunk it would take as the end of the file.
async fn send_pieces<F, Fut>(topic: &str, mut pieces: PackagePieces, mut send: F)
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<(), ntex_mqtt::error::SendPacketError>>,
{
    use futures_util::StreamExt;
    while let Some(piece) = pieces.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(topic, error = %e, "a package file could not be read to the end; ending the connection");
                return;
            }
        };
        if let Err(e) = send(Bytes::from(Vec::<u8>::from(piece))).await {
            tracing::debug!(topic, error = %e, "package chunk not sent");
            return;
        }
    }
}

/// Publishes a package chunk at QoS 0 (as ThingsBoard does) with its payload streamed from the
/// file; the same for both protocol versions, whose sinks are different types.
macro_rules! send_package {
    ($sink:expr, $topic:expr, $len:expr, $pieces:expr) => {{
        let publish = $sink.publish($topic.as_str());
        // `len` fits a u32: it was checked against `mqtt.max_packet_size`.
        match u32::try_from($len) {
            Ok(0) | Err(_) => {
                let _ = publish.send_at_most_once(Bytes::new()).await;
            }
            Ok(len) => {
                if let Ok(payload) = publish.stream_at_most_once(len).await {
                    send_pieces(&$topic, $pieces, |b| payload.send(b)).await;
                }
            }
        }
    }};
}

pub async fn publish_v3(
    s: &v3::Session<DeviceSession>,
    p: v3::Publish,
    admitted: Admitted,
) -> Result<(), MqttErr> {
    let payload = p.read_all().await.map_err(|_| MqttErr::Protocol)?;
    let (topic, qos) = (p.publish_topic().to_string(), p.qos());
    // The packet shares the read buffer too; the v3 ack needs nothing from it.
    drop(p);
    let size = payload.len();
    let outcome = handle_publish(s, &topic, payload, qos, false).await;
    trace_publish(s, &topic, size, &outcome);
    // The store is done with it: a reply, or a package streamed to a slow device, must not
    // keep other devices' messages waiting.
    drop(admitted);
    match outcome {
        Outcome::Stored => Ok(()),
        Outcome::Reply(prefix, suffix, body) => {
            let topic = format!("{prefix}{suffix}");
            let _ = s
                .sink()
                .publish(topic.as_str())
                .send_at_most_once(Bytes::from(body))
                .await;
            Ok(())
        }
        Outcome::Package(topic, len, pieces) => {
            send_package!(s.sink(), topic, len, pieces);
            Ok(())
        }
        // MQTT 3.1.1 has no negative PUBACK; acknowledging keeps the session usable, as
        // ThingsBoard does, and the message is counted and logged as rejected.
        Outcome::UnknownTopic => Ok(()),
        // Reaching for another device's topics ends the session (MQTT-3.3.5-2 allows either).
        Outcome::NotAuthorized => Err(MqttErr::NotAuthorized),
        // Never acknowledge what was not taken: without a negative PUBACK, the close tells.
        Outcome::Forbidden(m) | Outcome::Quota(m) => Err(MqttErr::Refused(m)),
        // TB closes a 3.1.1 session on a bad payload (§4); the client learns from the close.
        Outcome::BadPayload(e) => Err(MqttErr::BadPayload(e)),
        // Refused as a bad payload is: without a negative PUBACK, only the close tells.
        Outcome::KeyLimit(r) => Err(MqttErr::KeyLimit(r.to_string())),
        // Not reached for 3.1.1 (it waits instead), but never acknowledge unstored data.
        Outcome::RateExceeded | Outcome::RateAbuse => Err(MqttErr::RateExceeded),
        // No PUBACK: the client keeps the message and sends it again after reconnecting.
        Outcome::Storage => Err(MqttErr::Storage),
    }
}

pub async fn publish_v5(
    s: &v5::Session<DeviceSession>,
    p: v5::Publish,
    admitted: Admitted,
) -> Result<v5::PublishAck, MqttErr> {
    use v5::codec::PublishAckReason as R;
    let payload = p.read_all().await.map_err(|_| MqttErr::Protocol)?;
    let (topic, qos) = (p.publish_topic().to_string(), p.qos());
    // The dispatcher matches the ack to the packet id itself: the packet can go.
    drop(p);
    let size = payload.len();
    let outcome = handle_publish(s, &topic, payload, qos, true).await;
    trace_publish(s, &topic, size, &outcome);
    drop(admitted);
    Ok(match outcome {
        Outcome::Stored => v5::PublishAck::new(R::Success),
        Outcome::Reply(prefix, suffix, body) => {
            let topic = format!("{prefix}{suffix}");
            let _ = s
                .sink()
                .publish(topic.as_str())
                .send_at_most_once(Bytes::from(body))
                .await;
            v5::PublishAck::new(R::Success)
        }
        Outcome::Package(topic, len, pieces) => {
            send_package!(s.sink(), topic, len, pieces);
            v5::PublishAck::new(R::Success)
        }
        Outcome::UnknownTopic => {
            v5::PublishAck::new(R::TopicNameInvalid).reason("unknown topic".into())
        }
        Outcome::NotAuthorized => {
            v5::PublishAck::new(R::NotAuthorized).reason("not one of this session's topics".into())
        }
        Outcome::Forbidden(m) => v5::PublishAck::new(R::NotAuthorized).reason(m.into()),
        Outcome::Quota(m) => v5::PublishAck::new(R::QuotaExceeded).reason(m.into()),
        Outcome::BadPayload(e) => v5::PublishAck::new(R::PayloadFormatInvalid).reason(e.into()),
        // 0x99 for too many keys in one message: PUBACK has no "too large" code (0x95 is
        // DISCONNECT only), and the message itself is what must change. 0x97 for the device's
        // cap: a quota, which only an operator (or retention) frees.
        Outcome::KeyLimit(r) => {
            let code = match r {
                KeyRefusal::TooManyInMessage { .. } => R::PayloadFormatInvalid,
                KeyRefusal::DeviceCap { .. } => R::QuotaExceeded,
            };
            v5::PublishAck::new(code).reason(r.to_string().into())
        }
        Outcome::RateExceeded => v5::PublishAck::new(R::QuotaExceeded)
            .reason("message rate limit exceeded; not stored".into()),
        Outcome::RateAbuse => {
            let mut pkt =
                v5::codec::Disconnect::new(v5::codec::DisconnectReasonCode::MessageRateTooHigh);
            pkt.reason_string = Some("message rate far over the limit".into());
            s.sink().close_with_reason(pkt);
            v5::PublishAck::new(R::QuotaExceeded)
        }
        Outcome::Storage => v5::PublishAck::new(R::UnspecifiedError).reason("not stored".into()),
    })
}

/// The QoS granted for a SUBSCRIBE filter: device topics at most QoS 1, as ThingsBoard grants
/// (thingsboard-device-api.md §1); `None` refuses anything else.
fn grant(s: &DeviceSession, filter: &str, requested: QoS) -> Option<QoS> {
    let allowed = match &s.device {
        Some(d) if d.gateway.is_some() && gateway::is_gateway_filter(filter) => {
            let g = d.gateway.as_ref().expect("checked");
            if filter == gateway::ATTRIBUTES_TOPIC {
                g.attributes_subscribed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if filter == gateway::RPC_TOPIC {
                g.rpc_subscribed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                // Jobs waiting for its sub-devices go out now that it listens.
                for sub in g.open_devices() {
                    s.services.jobs.ready(sub);
                }
            }
            true
        }
        Some(d) => {
            let ok = protocol::is_device_filter(filter);
            if ok && filter == protocol::ATTRIBUTES_TOPIC {
                d.subs
                    .attributes
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if ok && filter == protocol::RPC_REQUEST_FILTER {
                d.subs.rpc.store(true, std::sync::atomic::Ordering::Relaxed);
                // Jobs waiting for this device go out now that it listens.
                s.services.jobs.ready(d.id);
            }
            ok
        }
        None => filter == PROVISION_RESPONSE_TOPIC,
    };
    if !allowed {
        tracing::warn!(
            device = ?s.device.as_ref().map(|d| d.id),
            peer = ?s.peer,
            filter,
            "subscription outside the session's own topics refused"
        );
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
    s.touch();
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
        v3::ProtocolMessage::Unsubscribe(u) => {
            s.unsubscribed(u.iter().map(|t| t.as_str()));
            u.ack()
        }
        other => other.ack(),
    })
}

pub async fn protocol_v5(
    s: &v5::Session<DeviceSession>,
    m: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, MqttErr> {
    s.touch();
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
        v5::ProtocolMessage::Unsubscribe(u) => {
            s.unsubscribed(u.iter().map(|t| t.as_str()));
            u.ack()
        }
        v5::ProtocolMessage::Auth(a) => a.ack(v5::codec::Auth::default()),
        other => other.ack(),
    })
}

pub async fn control_v3(
    s: &v3::Session<DeviceSession>,
    c: Control<MqttErr>,
) -> Result<Option<v3::codec::Encoded>, MqttErr> {
    log_stop(s, &c);
    Ok(None)
}

pub async fn control_v5(
    s: &v5::Session<DeviceSession>,
    c: Control<MqttErr>,
) -> Result<Option<v5::codec::Encoded>, MqttErr> {
    log_stop(s, &c);
    Ok(malformed_v5(&c)
        .map(|code| v5::codec::Packet::from(v5::codec::Disconnect::new(code)).into()))
}

/// The DISCONNECT reason for a packet that does not decode. ntex answers these with 0x83
/// (implementation specific); the specification and other brokers say 0x81 (malformed
/// packet): a bad UTF-8 or NUL topic, QoS 3, packet id 0, a duplicated property. Oversized
/// packets keep their 0x95 and protocol violations their own codes.
fn malformed_v5(c: &Control<MqttErr>) -> Option<v5::codec::DisconnectReasonCode> {
    use ntex_mqtt::error::DecodeError;
    match c {
        Control::Stop(ntex_mqtt::Reason::Protocol(e)) => match e.get_ref() {
            ntex_mqtt::MqttProtocolError::Decode(DecodeError::MaxSizeExceeded { .. }) => None,
            ntex_mqtt::MqttProtocolError::Decode(_) => {
                Some(v5::codec::DisconnectReasonCode::MalformedPacket)
            }
            _ => None,
        },
        _ => None,
    }
}

/// An optional value for a log field: the value, or `-` (never `Some(..)`).
fn shown<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn log_stop(s: &DeviceSession, c: &Control<MqttErr>) {
    if let Control::Stop(reason) = c {
        tracing::debug!(device = %shown(s.device.as_ref().map(|d| d.id)), ?reason, "connection stopping");
    }
}

impl DeviceCtx {
    /// Takes one message from the device's rate. MQTT 5: refused over the limit (0x97), and
    /// cut off far beyond it (0x96). MQTT 3.1.1 has no negative PUBACK: the answer is a wait,
    /// during which the in-flight window fills and ntex stops reading from the device.
    fn rate(&self, services: &Services, v5: bool) -> Result<Option<std::time::Duration>, Outcome> {
        let mut r = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        if !v5 {
            return Ok(Some(r.bucket.take_or_wait()));
        }
        if r.bucket.try_take() {
            r.refused_in_a_row = 0;
            return Ok(None);
        }
        r.refused_in_a_row += 1;
        // A device that ignores refusals and keeps sending far beyond its burst is cut off
        // instead of being answered forever.
        let abuse = r.refused_in_a_row > services.config.limits.device_message_burst.max(10) * 10;
        Err(if abuse {
            Outcome::RateAbuse
        } else {
            Outcome::RateExceeded
        })
    }
}

impl DeviceSession {
    /// Forgets subscriptions the device dropped: pushes need them (MQTT-3.10.4-2).
    fn unsubscribed<'a>(&self, filters: impl Iterator<Item = &'a str>) {
        if let Some(d) = &self.device {
            for f in filters {
                if f == protocol::ATTRIBUTES_TOPIC {
                    d.subs
                        .attributes
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                if f == protocol::RPC_REQUEST_FILTER {
                    d.subs
                        .rpc
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(g) = &d.gateway {
                    if f == gateway::ATTRIBUTES_TOPIC {
                        g.attributes_subscribed
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    if f == gateway::RPC_TOPIC {
                        g.rpc_subscribed
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn touch(&self) {
        if let Some(d) = &self.device {
            d.live.touch();
        }
    }
}
