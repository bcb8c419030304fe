//! The MQTT transport (ntex-mqtt, v3.1.1 and v5, over rustls or plain TCP). ntex stays inside
//! this module: it runs its own system thread and per-worker runtimes, and talks to the rest of
//! Corral only through `Services`, which is `Send + Sync`.

mod admission;
mod session;

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use ntex_bytes::BytePageSize;
use ntex_io::IoConfig;
use ntex_mqtt::{MqttError, MqttServer, MqttServiceConfig, v3, v5};
use ntex_service::Service as _;
use ntex_service::cfg::SharedCfg;
use ntex_tls::TlsConfig;
use ntex_tls::rustls::TlsAcceptor;
use ntex_util::time::Seconds;

use crate::services::Services;
use session::MqttErr;

/// Pre-bound sockets for the MQTT listeners (bound by the caller, so tests use port 0).
pub struct MqttListeners {
    pub tls: TcpListener,
    pub plain: Option<TcpListener>,
}

/// A running MQTT server; `stop` drains it.
pub struct MqttServerHandle {
    server: ntex_server::Server<ntex_server::net::Connection>,
    thread: Option<JoinHandle<()>>,
}

impl MqttServerHandle {
    /// Stops accepting, lets in-flight handlers finish (their writes reach the group commit),
    /// and joins the ntex system thread.
    pub async fn stop(mut self) {
        self.server.stop(true).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Starts the MQTT listeners on their own ntex system thread.
pub fn start(
    services: Arc<Services>,
    listeners: MqttListeners,
) -> anyhow::Result<MqttServerHandle> {
    let tls_config = services.pki.device_server_config()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("mqtt-system".into())
        .spawn(move || {
            ntex_rt::System::new("mqtt", ntex_net::DefaultRuntime).block_on(async move {
                match build(services, listeners, tls_config) {
                    Ok(srv) => {
                        let _ = tx.send(Ok(srv.clone()));
                        let _ = srv.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
                ntex_rt::System::current().stop();
            })
        })?;
    let server = rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the MQTT thread ended during start-up"))??;
    Ok(MqttServerHandle {
        server,
        thread: Some(thread),
    })
}

/// The v3.1.1 + v5 protocol service for one listener. A macro rather than a function because
/// the service type is unnameable.
macro_rules! mqtt_service {
    ($services:expr, $transport:expr) => {{
        let (s3, s5) = ($services.clone(), $services.clone());
        MqttServer::new()
            .v3(
                v3::MqttServer::new(admission::Gate::new(&$services, session::publish_v3))
                    .protocol(session::protocol_v3)
                    .control(session::control_v3)
                    .build(async move |c| session::connect_v3(&s3, $transport, c).await),
            )
            .v5(
                v5::MqttServer::new(admission::Gate::new(&$services, session::publish_v5))
                    .protocol(session::protocol_v5)
                    .control(session::control_v5)
                    .build(async move |c| session::connect_v5(&s5, $transport, c).await),
            )
    }};
}

fn shared_cfg(services: &Services) -> SharedCfg {
    let c = &services.config.mqtt;
    SharedCfg::new("mqtt")
        .add(
            MqttServiceConfig::new()
                .set_max_qos(ntex_mqtt::QoS::AtLeastOnce)
                .set_max_size(c.max_packet_size)
                .set_max_receive(c.max_inflight)
                .set_connect_timeout(Seconds(c.connect_timeout_secs))
                .protocol_version_timeout(Seconds(c.connect_timeout_secs)),
        )
        .add(TlsConfig::new().set_handshake_timeout(Seconds(c.connect_timeout_secs)))
        // Device messages are small and most connections idle: small pages keep the memory of
        // 10,000s of connections down (ntex's defaults are 16 KiB writes, 4-64 KiB reads).
        .add(
            IoConfig::new()
                .set_read_size(BytePageSize::Size4, BytePageSize::Size16)
                .set_write_size(BytePageSize::Size4),
        )
        .build()
}

fn build(
    services: Arc<Services>,
    listeners: MqttListeners,
    tls_config: Arc<rustls::ServerConfig>,
) -> anyhow::Result<ntex_server::Server<ntex_server::net::Connection>> {
    let workers = match services.config.mqtt.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let cfg = shared_cfg(&services);
    let tls_services = services.clone();
    let mut builder = ntex_server::net::build()
        .workers(workers)
        .disable_signals()
        .listen("mqtt-tls", listeners.tls, cfg.clone(), async move |_| {
            let s = tls_services.clone();
            TlsAcceptor::new(tls_config.clone())
                .map_err(|e| MqttError::Service(MqttErr::Tls(e.to_string())))
                .and_then(mqtt_service!(s, "mqtt-tls"))
        })?;
    if let Some(plain) = listeners.plain {
        let plain_services = services.clone();
        builder = builder.listen("mqtt-plain", plain, cfg, async move |_| {
            mqtt_service!(plain_services, "mqtt")
        })?;
    }
    Ok(builder.run())
}
