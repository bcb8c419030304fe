//! Wiring and lifecycle: builds `Services` from a `Config`, starts every listener on sockets the
//! caller bound (so tests use `127.0.0.1:0`), and shuts down in order: stop accepting, let
//! in-flight writes finish, flush, exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, Readiness};
use crate::auth::Bootstrap;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::mqtt::{self, MqttListeners, MqttServerHandle};
use crate::pki::{Pki, PkiInit};
use crate::services::Services;
use crate::store::{Store, StoreOptions};

/// Sockets for every listener, bound before the app starts.
pub struct Listeners {
    pub mqtt_tls: std::net::TcpListener,
    pub mqtt_plain: Option<std::net::TcpListener>,
    pub http: std::net::TcpListener,
    pub https: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config`, naming the one that fails.
    pub fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let bind = |what: &str, addr: &str| {
            listen(addr).with_context(|| {
                format!("cannot listen on {addr} for {what} (is another process using it?)")
            })
        };
        Ok(Listeners {
            mqtt_tls: bind("MQTT over TLS", &config.mqtt.tls_listen)?,
            mqtt_plain: match config.mqtt.plain_enabled {
                true => Some(bind("plain MQTT", &config.mqtt.plain_listen)?),
                false => None,
            },
            http: bind("HTTP", &config.http.listen)?,
            https: match config.https.enabled {
                true => Some(bind("HTTPS", &config.https.listen)?),
                false => None,
            },
        })
    }
}

/// Connections the kernel queues for `accept` per listener. std binds with 128, which a
/// reconnect storm or a flood of idle sockets fills, making honest devices wait for their
/// SYN to be retried (seconds). The kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Binds a listening socket with `BACKLOG` (and address reuse, as std does).
fn listen(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Where a running app listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub mqtt_tls: SocketAddr,
    pub mqtt_plain: Option<SocketAddr>,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
}

/// Logs, once a minute and only when something changed, how many device sessions are open and
/// how many opened and closed since `seen` (the totals at the previous call); returns the totals.
/// Each connect and disconnect is logged at debug level only: a fleet reconnecting at once would
/// otherwise bury everything else.
fn log_connections(metrics: &crate::metrics::Metrics, seen: (u64, u64)) -> (u64, u64) {
    let now = (
        metrics.device_connects.get(),
        metrics.device_disconnects.get(),
    );
    if now != seen {
        tracing::info!(
            open = now.0.saturating_sub(now.1),
            connected = now.0 - seen.0,
            disconnected = now.1 - seen.1,
            "device sessions in the last minute"
        );
    }
    now
}

/// A running Corral.
pub struct App {
    pub services: Arc<Services>,
    pub addrs: Addrs,
    /// What happened to the admin key at start; `Generated` carries the key to show once.
    pub bootstrap: Bootstrap,
    /// While no user exists: the one-time token of the first-run setup link (shown once).
    pub setup_token: Option<String>,
    pub pki_init: PkiInit,
    /// The storage engine: the services see only its ports; the app opens and closes it.
    store: Store,
    ready: Arc<Readiness>,
    mqtt: MqttServerHandle,
    /// HTTP listeners and periodic work, all ending when `shutdown` flips.
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

/// Opens the data directory: store and PKI. Shared by `serve` and `init`.
pub async fn open_state(
    config: &Config,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Store, Pki, PkiInit)> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the data directory {} (is the volume mounted and writable?)",
            dir.display()
        )
    })?;
    restrict_dir(dir)?;
    let store_path = dir.join("store");
    let accept = config.accept_data_loss;
    let ca = dir.join("pki").join("ca.pem");
    let presence = crate::store::guard::presence(&store_path);
    // The store and the CA belong together: either without the other means a directory that
    // has lost something, and starting would silently replace it.
    if presence == crate::store::guard::Presence::New && ca.exists() && !accept {
        return Err(crate::store::StoreError::Damaged {
            path: store_path,
            what: format!(
                "there is no store, but {} is there, so this data directory was in use",
                ca.display()
            ),
        }
        .into());
    }
    let store = Store::open(
        &store_path,
        StoreOptions {
            cache_capacity_bytes: config.store.cache_capacity_mb << 20,
            group_commit_delay: Duration::from_millis(config.store.group_commit_delay_ms),
            min_free_bytes: config.store.min_free_mb << 20,
            accept_data_loss: accept,
            ..Default::default()
        },
        metrics,
    )?;
    if presence == crate::store::guard::Presence::Existing && !ca.exists() {
        if !accept {
            anyhow::bail!(
                "the data directory {} holds a store but no CA ({} is missing). A new CA would \
                 make every certificate issued to devices useless.\n\
                 Nothing was changed. Restore pki/ from a backup (`corral restore`), or start with \
                 `corral serve --accept-data-loss` to make a new CA.",
                dir.display(),
                ca.display()
            );
        }
        tracing::warn!(missing = %ca.display(), "making a new CA (--accept-data-loss): certificates issued by the old one no longer work");
    }
    let (pki, init) = Pki::load_or_init(dir, &config.pki)?;
    Ok((store, pki, init))
}

/// Keeps the data directory private to the service user: it holds keys and device data.
fn restrict_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    }
    Ok(())
}

impl App {
    /// Starts Corral on pre-bound listeners. Must run inside a multi-thread tokio runtime.
    pub async fn start(config: Config, listeners: Listeners) -> anyhow::Result<App> {
        let metrics = Arc::new(Metrics::new());
        let (store, pki, pki_init) = open_state(&config, metrics.clone()).await?;
        let admin_key = config.admin_key_secret().map_err(anyhow::Error::msg)?;
        let services = Arc::new(Services::new(config, store.ports(), pki, metrics));
        let bootstrap = services.auth.bootstrap(admin_key.as_deref()).await?;
        let setup_token = services.auth.issue_setup_token().await?;
        // The device listener's trust (revocation list, manufacturer CAs) before it accepts.
        services.credentials.refresh_trust().await?;
        // Integrations route and deliver before the first device message is accepted.
        let integrations = services.integrations.start().await?;
        if integrations > 0 {
            tracing::info!(integrations, "integration delivery started");
        }
        // Jobs that were being sent when the last run ended go back to their queues.
        let requeued = services.jobs.recover().await?;
        if requeued > 0 {
            tracing::info!(
                jobs = requeued,
                "jobs in flight at the last stop are queued again"
            );
        }
        let signed = services.packages.sign_unsigned().await?;
        if signed > 0 {
            tracing::info!(packages = signed, "package manifests signed");
        }
        // Campaigns resume where the last commit left them, before devices connect.
        let campaigns = services.campaigns.recover().await?;
        if campaigns > 0 {
            tracing::info!(campaigns, "OTA campaigns resumed");
        }

        let addrs = Addrs {
            mqtt_tls: listeners.mqtt_tls.local_addr()?,
            mqtt_plain: listeners
                .mqtt_plain
                .as_ref()
                .map(|l| l.local_addr())
                .transpose()?,
            http: listeners.http.local_addr()?,
            https: listeners
                .https
                .as_ref()
                .map(|l| l.local_addr())
                .transpose()?,
        };
        let mqtt = mqtt::start(
            services.clone(),
            MqttListeners {
                tls: listeners.mqtt_tls,
                plain: listeners.mqtt_plain,
            },
        )?;

        let ready = Arc::new(Readiness::default());
        let router = api::router(services.clone(), ready.clone(), addrs.https);
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let to_tokio = |l: std::net::TcpListener| -> anyhow::Result<tokio::net::TcpListener> {
            l.set_nonblocking(true)?;
            Ok(tokio::net::TcpListener::from_std(l)?)
        };
        tasks.push(tokio::spawn(api::serve(
            to_tokio(listeners.http)?,
            router.clone(),
            services.clone(),
            None,
            rx.clone(),
        )));
        if let Some(l) = listeners.https {
            let tls = services.pki.server_config(&[b"h2", b"http/1.1"])?;
            tasks.push(tokio::spawn(api::serve(
                to_tokio(l)?,
                router,
                services.clone(),
                Some(tls),
                rx,
            )));
        }
        start_workers(&services);
        ready.set(true);
        Ok(App {
            services,
            addrs,
            bootstrap,
            setup_token,
            pki_init,
            store,
            ready,
            mqtt,
            tasks,
            shutdown,
        })
    }

    /// The storage engine itself, for tests and benchmarks that set up data below the
    /// services (services and transports see only its ports).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The whole HTTP surface without a socket, for in-process calls (tests).
    pub fn router(&self) -> axum::Router {
        crate::api::router(self.services.clone(), self.ready.clone(), None)
    }

    /// Graceful stop: refuse new work, let in-flight device writes finish and become durable,
    /// flush the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.ready.set(false);
        self.services.events.stop();
        let _ = self.shutdown.send(true);
        self.mqtt.stop().await;
        for t in self.tasks {
            let _ = t.await;
        }
        self.services.workers.stop().await;
        self.store.commit().await?;
        self.store.close_clean().await?;
        Ok(())
    }
}

/// The server's background work, each a named worker (`workers`).
fn start_workers(services: &Arc<Services>) {
    let w = &services.workers;
    let s = services.clone();
    w.every(
        "activity",
        "writes connected devices' last activity, logs the connection summary, removes expired UI sessions",
        Duration::from_secs(60),
        Duration::ZERO,
        {
            let seen = Arc::new(std::sync::Mutex::new((0, 0)));
            move || {
                let (s, seen) = (s.clone(), seen.clone());
                async move {
                    s.registry.persist_activity();
                    {
                        let mut last = seen.lock().unwrap_or_else(|p| p.into_inner());
                        *last = log_connections(&s.metrics, *last);
                    }
                    s.auth
                        .sweep_sessions()
                        .await
                        .map(drop)
                        .map_err(|e| format!("cannot sweep expired sessions: {e}"))
                }
            }
        },
    );
    let s = services.clone();
    w.every(
        "credential-sweep",
        "closes sessions whose credential expired or left its grace period; samples the message rate",
        Duration::from_secs(5),
        Duration::ZERO,
        move || {
            let s = s.clone();
            async move {
                s.credentials.sweep_expired().await;
                // The overview's message rate covers the last minute whenever it is read, not
                // the time since the previous read: sample it steadily.
                s.metrics.recent_message_rate();
                Ok(())
            }
        },
    );
    let s = services.clone();
    w.every(
        "job-scheduler",
        "expires jobs, retries sends, requeues sends that lost their session, fires schedules, advances rollouts",
        Duration::from_secs(1),
        Duration::ZERO,
        move || {
            let s = s.clone();
            async move {
                s.jobs.tick().await;
                Ok(())
            }
        },
    );
    let s = services.clone();
    let every = Duration::from_secs(services.config.retention.sweep_interval_secs);
    w.every(
        "retention",
        "deletes telemetry older than each workspace keeps",
        every,
        every,
        move || {
            let s = s.clone();
            async move {
                s.data
                    .retention_sweep(&s.registry, s.config.retention.default_days)
                    .await
                    .map(drop)
                    .map_err(|e| format!("retention sweep failed: {e}"))
            }
        },
    );
    let s = services.clone();
    w.spawn(
        "job-sends",
        "records how request sends went and devices' replies, and sends devices their next jobs",
        move |mut stop, report| async move {
            loop {
                let batch = tokio::select! {
                    b = s.jobs.next_send_work() => b,
                    _ = stop.changed() => break,
                };
                let s = s.clone();
                let _ = report
                    .run(|| async move {
                        let worker = s.clone();
                        let answers = crate::workers::on_blocking_pool(move || async move {
                            worker.jobs.do_send_work(batch).await
                        })
                        .await
                        .map_err(|e| format!("the run panicked: {e}"))?
                        .map_err(|e| format!("cannot record job sends: {e}"))?;
                        // Replies are answered (PUBACK, HTTP 200) once durable; the next run
                        // does not wait for that sync.
                        if !answers.is_empty() {
                            tokio::spawn(async move {
                                let durable = s.jobs.durable(answers.mark).await;
                                answers.answer(&durable);
                            });
                        }
                        Ok(())
                    })
                    .await;
            }
            // Outcomes reported before the stop are recorded, so a clean shutdown sends none
            // of those requests again; replies still waiting are refused (sent again).
            let mut rest = s.jobs.take_send_work();
            let replies = std::mem::take(&mut rest.replies);
            s.jobs.refuse_replies(crate::jobs::SendWork {
                replies,
                ..Default::default()
            });
            if !rest.outcomes.is_empty() {
                rest.devices.clear();
                let s = s.clone();
                let res = crate::workers::on_blocking_pool(move || async move {
                    s.jobs.do_send_work(rest).await
                })
                .await;
                if let Ok(Err(e)) = res {
                    tracing::error!(error = %e, "cannot record job sends at shutdown");
                }
            }
        },
    );
    let s = services.clone();
    w.spawn(
        "ota-campaigns",
        "applies devices' OTA reports; times out, retries and starts devices, waves and gates of running campaigns",
        move |mut stop, report| async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    batch = s.campaigns.next_reports() => {
                        let s = s.clone();
                        let _ = report
                            .run(|| async move {
                                s.campaigns
                                    .apply(batch)
                                    .await
                                    .map_err(|e| format!("cannot apply OTA reports: {e}"))
                            })
                            .await;
                    }
                    _ = tick.tick() => {
                        let s = s.clone();
                        let _ = report
                            .run(|| async move {
                                s.campaigns
                                    .tick()
                                    .await
                                    .map_err(|e| format!("cannot advance campaigns: {e}"))
                            })
                            .await;
                    }
                    _ = stop.changed() => break,
                }
            }
        },
    );
    let s = services.clone();
    w.spawn(
        "message-rates",
        "counts each fleet's telemetry messages per minute over the last hour (the overview's sparklines)",
        move |stop, _report| {
            let data = s.clone();
            s.message_rates.clone().run(
                s.registry.clone(),
                move || data.data.take_stored_counts(),
                stop,
            )
        },
    );
    let s = services.clone();
    w.spawn(
        "backups",
        "writes scheduled snapshots ([backup] interval_hours)",
        move |stop, report| crate::backups::schedule(s, stop, report),
    );
}
