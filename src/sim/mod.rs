//! `corral simulate`: virtual devices for demos, tests and benchmarks. N MQTT connections (rumqttc)
//! each with its own credentials, pipelined QoS 1 publishes of ThingsBoard telemetry, an optional
//! per-device rate, and a summary of what the server acknowledged and how long each PUBACK
//! took (`latency`). Runs against Corral or any
//! MQTT broker, over TLS or plain TCP, and stops by itself after `--duration`. With `--ota` the
//! devices are OTA-capable instead (`ota`): they update when a campaign or their fleet's target
//! tells them to, some with faults. With `--sub-devices N` each connection is a gateway
//! speaking for N sub-devices over ThingsBoard's gateway API: it connects them, then each of
//! its messages carries one reading of every sub-device. Faulty clients (`--fault-bad-token`,
//! `--fault-twins`, `--fault-flap`, `--clock-drift-ms`) show what an operator sees of them; the
//! report counts what they saw.

mod latency;
pub mod ota;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::ClientArgs;

#[derive(Args, Clone)]
pub struct SimulateArgs {
    /// MQTT server host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// MQTT server port.
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// CA certificate for TLS; without it the connection is plain TCP.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Number of device connections.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// File of access tokens, one per line (one per connection).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Create this many devices in --fleet over the REST API first and use their tokens.
    #[arg(long)]
    pub create: Option<usize>,
    /// Fleet (id or name) for --create.
    #[arg(long)]
    pub fleet: Option<String>,
    /// Connect with usernames sim-0, sim-1, ... (for brokers without Corral's credentials).
    #[arg(long)]
    pub anonymous: bool,
    /// Messages per second per device; 0 publishes as fast as acknowledgements allow. Devices
    /// are spread evenly over the period, as a fleet is, not all in the same instant.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// QoS 1 publishes each connection keeps in flight.
    #[arg(long, default_value_t = 16)]
    pub inflight: u16,
    /// Seconds to publish for, after every connection is up.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Most connections opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Each connection is a gateway speaking for this many sub-devices (the gateway API): it
    /// connects them (`v1/gateway/connect`), then each of its messages
    /// (`v1/gateway/telemetry`) carries a reading of every one. With --create, the devices
    /// are created as gateways.
    #[arg(long, default_value_t = 0)]
    pub sub_devices: usize,
    /// Fault: this many more connections log in with a wrong token, again every second; each
    /// refusal is counted (`faults.bad_token_refused`).
    #[arg(long, default_value_t = 0)]
    pub fault_bad_token: usize,
    /// Fault: this many more devices are each used by two clients at once that keep throwing
    /// each other out (their tokens are the last ones given, after the connections').
    #[arg(long, default_value_t = 0)]
    pub fault_twins: usize,
    /// Fault: this many of the connections (the last ones) drop and reconnect every
    /// --flap-secs, sending meanwhile.
    #[arg(long, default_value_t = 0)]
    pub fault_flap: usize,
    /// Seconds a flapping connection stays up.
    #[arg(long, default_value_t = 2.0)]
    pub flap_secs: f64,
    /// Milliseconds added to the clock of the devices' own timestamps: telemetry then carries
    /// `ts` (a drifting clock: negative is behind).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub clock_drift_ms: i64,
    /// OTA-capable devices (ThingsBoard OTA protocol) instead of telemetry publishers: they
    /// report the version they run and update when told to, for `--duration` seconds.
    #[arg(long)]
    pub ota: bool,
    /// The firmware title the OTA devices run.
    #[arg(long, default_value = "sim-fw")]
    pub ota_title: String,
    /// The firmware version the OTA devices run at first.
    #[arg(long, default_value = "0.0.0")]
    pub ota_version: String,
    /// Bytes per chunk the OTA devices ask for.
    #[arg(long, default_value_t = 16384)]
    pub chunk_size: usize,
    /// Milliseconds an OTA device takes to reboot after an update.
    #[arg(long, default_value_t = 500)]
    pub reboot_ms: u64,
    /// This many OTA devices (the first ones) go silent after downloading...
    #[arg(long, default_value_t = 0)]
    pub fault_silent: usize,
    /// ...the next ones reboot into the old version and claim UPDATED...
    #[arg(long, default_value_t = 0)]
    pub fault_rollback: usize,
    /// ...the next ones drop their connection mid-download once...
    #[arg(long, default_value_t = 0)]
    pub fault_drop: usize,
    /// ...and the next ones get a corrupted chunk in their first download.
    #[arg(long, default_value_t = 0)]
    pub fault_corrupt: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl SimulateArgs {
    /// The fault of OTA device `i`.
    pub fn fault_of(&self, i: usize) -> ota::Fault {
        let mut at = 0;
        for (n, f) in [
            (self.fault_silent, ota::Fault::Silent),
            (self.fault_rollback, ota::Fault::Rollback),
            (self.fault_drop, ota::Fault::Drop),
            (self.fault_corrupt, ota::Fault::Corrupt),
        ] {
            at += n;
            if i < at {
                return f;
            }
        }
        ota::Fault::None
    }
}

/// What an OTA run ended with.
#[derive(Debug, Clone, Serialize)]
pub struct OtaReport {
    pub devices: usize,
    /// Devices per version they run at the end.
    pub running: std::collections::BTreeMap<String, usize>,
    pub boots: u64,
    pub downloads: u64,
    pub updates: u64,
}

/// The TLS client configuration trusting `--ca`; `None` (plain TCP) without it.
fn tls_config(a: &SimulateArgs) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    a.ca.as_ref()
        .map(|p| {
            let pem = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Ok(Arc::new(crate::pki::client_config_trusting(&pem)?))
        })
        .transpose()
}

/// Runs OTA devices for `--duration` seconds and reports what they run at the end.
pub async fn simulate_ota(a: SimulateArgs) -> anyhow::Result<OtaReport> {
    crate::pki::install_crypto_provider();
    let users = usernames(&a).await?;
    let tls = tls_config(&a)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut devices = Vec::new();
    for (i, token) in users.into_iter().enumerate() {
        let status = Arc::new(ota::OtaStatus::default());
        let dev = ota::OtaDevice {
            host: a.host.clone(),
            port: a.port,
            tls: tls.clone(),
            token,
            title: a.ota_title.clone(),
            version: a.ota_version.clone(),
            chunk_size: a.chunk_size.max(1),
            fault: a.fault_of(i),
            reboot: Duration::from_millis(a.reboot_ms),
        };
        let task = tokio::spawn(dev.run(status.clone(), stop_rx.clone()));
        devices.push((status, task));
    }
    tokio::time::sleep(Duration::from_secs(a.duration)).await;
    let _ = stop_tx.send(true);
    let mut report = OtaReport {
        devices: devices.len(),
        running: Default::default(),
        boots: 0,
        downloads: 0,
        updates: 0,
    };
    for (status, task) in devices {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        let v = status
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        *report.running.entry(v).or_default() += 1;
        report.boots += u64::from(status.boots.load(Ordering::Relaxed));
        report.downloads += u64::from(status.downloads.load(Ordering::Relaxed));
        report.updates += u64::from(status.updates.load(Ordering::Relaxed));
    }
    Ok(report)
}

/// What a run achieved.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub connections_requested: usize,
    pub connections_up: usize,
    pub connect_failures: u64,
    /// Seconds from the first connect to the last CONNACK (or failure): a reconnect storm's
    /// length when `--connect-concurrency` is the number of connections.
    pub connect_seconds: f64,
    pub published: u64,
    pub acked: u64,
    pub seconds: f64,
    pub acked_per_sec: f64,
    /// PUBACK latency (from the publish leaving the client to its PUBACK) over the measured
    /// window: median, 99th percentile, in milliseconds (within 5 %).
    pub puback_p50_ms: Option<f64>,
    pub puback_p99_ms: Option<f64>,
    /// What the faulty clients saw.
    pub faults: FaultReport,
}

/// What the faulty clients saw over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultReport {
    /// Logins with a wrong token that the server refused.
    pub bad_token_refused: u64,
    /// Sessions of twin clients that ended because the other twin logged in.
    pub twin_sessions_lost: u64,
    /// Reconnects of flapping connections.
    pub flaps: u64,
}

#[derive(Default)]
struct Counters {
    up: AtomicU64,
    connect_failures: AtomicU64,
    published: AtomicU64,
    acked: AtomicU64,
    /// PUBACK latencies of publishes sent while measuring.
    latency: latency::Histogram,
    bad_token_refused: AtomicU64,
    twin_sessions_lost: AtomicU64,
    flaps: AtomicU64,
}

pub async fn run(a: SimulateArgs) -> anyhow::Result<ExitCode> {
    if a.ota {
        let report = simulate_ota(a).await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let report = simulate(a).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(if report.connections_up == report.connections_requested {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Credentials for each connection, in order.
async fn usernames(a: &SimulateArgs) -> anyhow::Result<Vec<String>> {
    if a.anonymous {
        return Ok((0..a.connections + a.fault_twins)
            .map(|i| format!("sim-{i}"))
            .collect());
    }
    let mut tokens: Vec<String> = match &a.tokens {
        Some(p) if p.exists() => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
    if let Some(n) = a.create {
        let fleet = a.fleet.clone().context("--create needs --fleet")?;
        let created = create_devices(&a.client, &fleet, n, a.sub_devices > 0).await?;
        if let Some(p) = &a.tokens {
            let mut all = tokens.clone();
            all.extend(created.iter().cloned());
            std::fs::write(p, all.join("\n") + "\n")?;
        }
        tokens.extend(created);
    }
    let need = a.connections + a.fault_twins;
    anyhow::ensure!(
        tokens.len() >= need,
        "{need} connections (with the twins) need as many tokens; have {} (use --tokens, --create or --anonymous)",
        tokens.len()
    );
    tokens.truncate(need);
    Ok(tokens)
}

async fn create_devices(
    client: &ClientArgs,
    fleet: &str,
    n: usize,
    gateways: bool,
) -> anyhow::Result<Vec<String>> {
    let api = crate::client::ApiClient::from_args(client)?;
    let fleet_id = if uuid::Uuid::parse_str(fleet).is_ok() {
        fleet.to_string()
    } else {
        let page: crate::api::Page<serde_json::Value> = api
            .get(
                "/fleets",
                &[("name", fleet.to_string()), ("limit", "1000".into())],
            )
            .await?;
        page.items
            .iter()
            .find(|f| {
                f["name"]
                    .as_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case(fleet))
            })
            .and_then(|f| f["id"].as_str().map(String::from))
            .with_context(|| format!("no fleet named \"{fleet}\""))?
    };
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let sem = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (api, sem, fleet_id) = (api.clone(), sem.clone(), fleet_id.clone());
        let name = format!("sim-{run_id}-{i}");
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            let d: crate::api::CreatedDevice = api
                .post(
                    "/devices",
                    &serde_json::json!({"fleet_id": fleet_id, "name": name, "gateway": gateways}),
                )
                .await?;
            d.credentials
                .token
                .ok_or_else(|| anyhow::anyhow!("the server returned no access token"))
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Runs the simulation and returns its report.
pub async fn simulate(a: SimulateArgs) -> anyhow::Result<SimReport> {
    crate::pki::install_crypto_provider();
    let mut users = usernames(&a).await?;
    let twins = users.split_off(users.len().min(a.connections));
    let tls = tls_config(&a)?;
    let counters = Arc::new(Counters::default());
    let connect_gate = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let (start_tx, start_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(users.len());
    let n_devices = users.len().max(1);
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    for (i, user) in users.into_iter().enumerate() {
        let mut opts = MqttOptions::new(
            format!("sim-{i}-{}", std::process::id()),
            a.host.clone(),
            a.port,
        );
        opts.set_credentials(user, "");
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_inflight(a.inflight.max(1));
        opts.set_clean_session(true);
        if let Some(cfg) = &tls {
            opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(cfg.clone())));
        }
        let flap = (i + a.fault_flap >= n_devices && a.fault_flap > 0)
            .then(|| Duration::from_secs_f64(a.flap_secs.max(0.1)));
        let ctx = DeviceTask {
            flap,
            drift_ms: a.clock_drift_ms,
            counters: counters.clone(),
            gate: connect_gate.clone(),
            start: start_rx.clone(),
            stop: stop_rx.clone(),
            rate: a.rate,
            phase: i as f64 / n_devices as f64,
            inflight: a.inflight.max(1) as usize,
            subs: (0..a.sub_devices)
                .map(|j| format!("sim-{run_id}-gw{i}-{j}"))
                .collect(),
        };
        tasks.push(tokio::spawn(ctx.run(opts, i)));
    }
    // The faulty clients: not counted in the connections or the acknowledgements.
    let options = |id: String, user: String| {
        let mut o = MqttOptions::new(id, a.host.clone(), a.port);
        o.set_credentials(user, "");
        o.set_keep_alive(Duration::from_secs(30));
        if let Some(cfg) = &tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(cfg.clone())));
        }
        o
    };
    let mut fault_tasks = Vec::new();
    for k in 0..a.fault_bad_token {
        let o = options(
            format!("sim-bad-{k}-{}", std::process::id()),
            format!("wrong-{}", uuid::Uuid::new_v4().simple()),
        );
        fault_tasks.push(tokio::spawn(bad_token(
            o,
            counters.clone(),
            stop_rx.clone(),
        )));
    }
    for (k, token) in twins.iter().enumerate() {
        for side in 0..2 {
            let o = options(format!("sim-twin-{k}-{side}"), token.clone());
            fault_tasks.push(tokio::spawn(twin(o, counters.clone(), stop_rx.clone())));
        }
    }
    // Wait until every connection is up or has failed, bounded in time.
    let ramp_start = Instant::now();
    let ramp_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done =
            counters.up.load(Ordering::Relaxed) + counters.connect_failures.load(Ordering::Relaxed);
        if done as usize >= tasks.len() || Instant::now() > ramp_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_seconds = ramp_start.elapsed().as_secs_f64();
    let acked_before = counters.acked.load(Ordering::Relaxed);
    let started = Instant::now();
    let _ = start_tx.send(true);
    tokio::time::sleep(Duration::from_secs(a.duration)).await;
    let acked = counters.acked.load(Ordering::Relaxed) - acked_before;
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for t in tasks.into_iter().chain(fault_tasks) {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(SimReport {
        connections_requested: a.connections,
        connections_up: counters.up.load(Ordering::Relaxed) as usize,
        connect_failures: counters.connect_failures.load(Ordering::Relaxed),
        connect_seconds,
        published: counters.published.load(Ordering::Relaxed),
        acked,
        seconds,
        acked_per_sec: acked as f64 / seconds,
        puback_p50_ms: counters.latency.quantile_ms(0.5),
        puback_p99_ms: counters.latency.quantile_ms(0.99),
        faults: FaultReport {
            bad_token_refused: counters.bad_token_refused.load(Ordering::Relaxed),
            twin_sessions_lost: counters.twin_sessions_lost.load(Ordering::Relaxed),
            flaps: counters.flaps.load(Ordering::Relaxed),
        },
    })
}

struct DeviceTask {
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    start: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
    rate: f64,
    /// Where in the period this device sends, as a fraction of it (0..1).
    phase: f64,
    inflight: usize,
    /// The names of the sub-devices this connection speaks for as a gateway (none: a device).
    subs: Vec<String>,
    /// A flapping connection: dropped and made again after this long up.
    flap: Option<Duration>,
    /// Telemetry carries the device's own `ts`, this far off the real clock (0: none).
    drift_ms: i64,
}

/// A client with a wrong token, logging in every second until `stop`; counts refusals.
async fn bad_token(
    opts: MqttOptions,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let (_client, mut el) = AsyncClient::new(opts.clone(), 4);
        let refused = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), el.poll()) => {
                !matches!(r, Ok(Ok(Event::Incoming(Packet::ConnAck(ref a)))) if a.code == rumqttc::ConnectReturnCode::Success)
            }
            _ = stop.wait_for(|s| *s) => return,
        };
        if refused {
            counters.bad_token_refused.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One of two clients sharing a device's token: it logs in, sends, and when the other one's
/// login throws it out, counts the loss and logs in again, until `stop`.
async fn twin(
    opts: MqttOptions,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let (client, mut el) = AsyncClient::new(opts.clone(), 4);
        let mut up = false;
        let ended = async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        up = true;
                        let _ = client.try_publish(
                            crate::devices::protocol::TELEMETRY_TOPIC,
                            QoS::AtLeastOnce,
                            false,
                            r#"{"twin":1}"#,
                        );
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        tokio::select! {
            _ = ended => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if up {
            counters.twin_sessions_lost.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

impl DeviceTask {
    /// Publishes `v1/gateway/connect` for each sub-device and waits for every PUBACK (30 s at
    /// most); false when they do not all come.
    async fn connect_subs(
        &self,
        client: &AsyncClient,
        eventloop: &mut rumqttc::EventLoop,
        i: usize,
    ) -> bool {
        let all = async {
            let mut acked = 0;
            let mut queued = 0;
            while acked < self.subs.len() {
                // Keep the client's request queue short: queue while there is room.
                while queued < self.subs.len() && queued - acked < self.inflight {
                    let body = serde_json::json!({"device": self.subs[queued], "type": "sim"});
                    if client
                        .try_publish(
                            "v1/gateway/connect",
                            QoS::AtLeastOnce,
                            false,
                            body.to_string(),
                        )
                        .is_err()
                    {
                        break;
                    }
                    queued += 1;
                }
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(connection = i, error = %e, "gateway lost while connecting sub-devices");
                        return false;
                    }
                }
            }
            true
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .unwrap_or(false)
    }

    async fn run(mut self, opts: MqttOptions, i: usize) {
        let (client, mut eventloop) = AsyncClient::new(opts, self.inflight * 2);
        // Ramp-up: hold a permit until CONNACK so connects are spread out.
        {
            let _permit = self.gate.acquire().await;
            loop {
                match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => {
                        tracing::warn!(connection = i, error = %e, "connect failed");
                        self.counters
                            .connect_failures
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        self.counters
                            .connect_failures
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        // A gateway connects its sub-devices first, each acknowledged, so that the measured
        // window counts telemetry only.
        if !self.subs.is_empty() && !self.connect_subs(&client, &mut eventloop, i).await {
            self.counters
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.up.fetch_add(1, Ordering::Relaxed);
        let counters = self.counters.clone();
        let mut stop = self.stop.clone();
        let stopping = self.stop.clone();
        let measuring = self.start.clone();
        let flapping = self.flap.is_some();
        let poller = tokio::spawn(async move {
            // When each publish in flight left, by packet id (at most `inflight` of them).
            let mut sent: std::collections::HashMap<u16, Instant> = Default::default();
            loop {
                let mut pause = false;
                tokio::select! {
                    ev = eventloop.poll() => match ev {
                        Ok(Event::Outgoing(rumqttc::Outgoing::Publish(id))) => {
                            let measured = *measuring.borrow() && !*stopping.borrow();
                            if measured {
                                sent.insert(id, Instant::now());
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            counters.acked.fetch_add(1, Ordering::Relaxed);
                            if let Some(at) = sent.remove(&ack.pkid) {
                                counters.latency.record(at.elapsed());
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let stopped = *stopping.borrow();
                            // A flapping connection was dropped on purpose: the next poll
                            // connects again (rumqttc reconnects), after a pause.
                            if flapping && !stopped {
                                counters.flaps.fetch_add(1, Ordering::Relaxed);
                                sent.clear();
                                pause = true;
                            } else {
                                if !stopped {
                                    tracing::warn!(connection = i, error = %e, "connection lost");
                                }
                                return;
                            }
                        }
                    },
                    _ = stop.wait_for(|s| *s) => return,
                }
                if pause {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        });
        let _ = self.start.wait_for(|s| *s).await;
        // Devices in phase would all send in the same instant every period: a burst of
        // thousands of messages a second apart measures how a server drains bursts, not its
        // steady rate or latency. Real fleets are spread over the period; so are these.
        if self.rate > 0.0 && self.phase > 0.0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(self.phase / self.rate)) => {},
                _ = self.stop.wait_for(|s| *s) => {},
            }
        }
        let mut tick = (self.rate > 0.0).then(|| {
            let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut n: u64 = 0;
        let mut up_since = Instant::now();
        while !*self.stop.borrow() {
            if let Some(f) = self.flap
                && up_since.elapsed() >= f
            {
                let _ = client.disconnect().await;
                up_since = Instant::now();
            }
            if let Some(t) = tick.as_mut() {
                tokio::select! {
                    _ = t.tick() => {},
                    _ = self.stop.wait_for(|s| *s) => break,
                }
            }
            n += 1;
            let mut reading = format!(
                r#"{{"seq":{n},"temperature":{}.5,"ok":true}}"#,
                20 + (n % 10)
            );
            if self.drift_ms != 0 {
                // The device's own clock, off by the drift.
                let ts = (crate::model::now_ms() + self.drift_ms).max(0);
                reading = format!(r#"{{"ts":{ts},"values":{reading}}}"#);
            }
            let (topic, payload) = if self.subs.is_empty() {
                (crate::devices::protocol::TELEMETRY_TOPIC, reading)
            } else {
                let parts: Vec<String> = self
                    .subs
                    .iter()
                    .map(|s| format!("{}:[{reading}]", serde_json::Value::from(s.as_str())))
                    .collect();
                ("v1/gateway/telemetry", format!("{{{}}}", parts.join(",")))
            };
            let publish = client.publish(topic, QoS::AtLeastOnce, false, payload);
            tokio::select! {
                r = publish => if r.is_err() { break },
                _ = self.stop.wait_for(|s| *s) => break,
            }
            self.counters.published.fetch_add(1, Ordering::Relaxed);
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    }
}
