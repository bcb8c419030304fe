//! An OTA-capable virtual device for `corral simulate --ota`, tests and benchmarks. It speaks
//! the ThingsBoard OTA protocol the way firmware built on the ThingsBoard SDK does: it reports
//! `current_fw_title`/`current_fw_version` and `fw_state` as telemetry, takes the `fw_*` shared
//! attributes (pushed, or asked for at boot), downloads the package in chunks over
//! `v2/fw/request/{rid}/chunk/{n}`, verifies its SHA-256, reports `DOWNLOADING` … `UPDATED`,
//! and reboots into the new version (a new session that reports it). A download-only campaign's
//! device waits for the `fw_install` RPC. Faults make it misbehave as real fleets do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};

use crate::devices::protocol::{
    ATTRIBUTES_RESPONSE_FILTER, ATTRIBUTES_TOPIC, RPC_REQUEST_FILTER, TELEMETRY_TOPIC,
};

/// How a simulated device misbehaves during an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Fault {
    #[default]
    None,
    /// Reports `DOWNLOADED`, then never reports again.
    Silent,
    /// Installs, reports `UPDATED`, reboots into the old version and reports `UPDATED` again
    /// (an A/B fallback the device does not admit to).
    Rollback,
    /// Drops its connection halfway through its first download, then reconnects.
    Drop,
    /// Its first download has a corrupted chunk: the checksum fails, it reports `FAILED`.
    Corrupt,
}

/// One simulated OTA device.
#[derive(Clone)]
pub struct OtaDevice {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub token: String,
    /// What it runs at first.
    pub title: String,
    pub version: String,
    /// Bytes per chunk request.
    pub chunk_size: usize,
    pub fault: Fault,
    /// How long a reboot takes.
    pub reboot: Duration,
}

/// What a simulated device has done, for reports and tests.
#[derive(Debug, Default)]
pub struct OtaStatus {
    /// Sessions it opened.
    pub boots: AtomicU32,
    /// Downloads it finished (verified or not).
    pub downloads: AtomicU32,
    /// Updates it installed (and kept).
    pub updates: AtomicU32,
    /// The version it runs now.
    pub running: std::sync::Mutex<String>,
}

/// What the device does next after a session ends.
enum After {
    /// Reboot into this version and report this state.
    Reboot {
        version: String,
        state: &'static str,
    },
    /// Reconnect (the connection dropped), reporting IDLE.
    Reconnect,
    Stop,
}

/// A download in progress.
struct Download {
    rid: u32,
    title: String,
    version: String,
    size: usize,
    checksum: Option<String>,
    next: u32,
    bytes: Vec<u8>,
}

impl OtaDevice {
    /// Runs until `stop` turns true.
    pub async fn run(self, status: Arc<OtaStatus>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut running = self.version.clone();
        *status.running.lock().unwrap_or_else(|p| p.into_inner()) = running.clone();
        let mut report = "IDLE";
        let mut armed = true;
        let mut rid = 0u32;
        while !*stop.borrow() {
            let after = tokio::select! {
                a = self.session(&status, &running, report, &mut armed, &mut rid) => a,
                _ = stop.wait_for(|s| *s) => After::Stop,
            };
            match after {
                After::Stop => break,
                After::Reconnect => {
                    report = "IDLE";
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                After::Reboot { version, state } => {
                    if state == "IDLE" {
                        status.updates.fetch_add(1, Ordering::Relaxed);
                    }
                    running = version;
                    *status.running.lock().unwrap_or_else(|p| p.into_inner()) = running.clone();
                    report = state;
                    tokio::select! {
                        _ = tokio::time::sleep(self.reboot) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            }
        }
    }

    fn options(&self) -> MqttOptions {
        let id = format!("ota-sim-{}", &self.token[..self.token.len().min(12)]);
        let mut o = MqttOptions::new(id, self.host.clone(), self.port);
        o.set_credentials(self.token.clone(), "");
        o.set_keep_alive(Duration::from_secs(30));
        o.set_clean_session(true);
        o.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(cfg) = &self.tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(cfg.clone())));
        }
        o
    }

    /// One session, from connect to disconnect (a reboot, a dropped connection, an error).
    async fn session(
        &self,
        status: &OtaStatus,
        running: &str,
        report: &'static str,
        armed: &mut bool,
        rid: &mut u32,
    ) -> After {
        let (client, mut ev) = AsyncClient::new(self.options(), 64);
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => continue,
                _ => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return After::Reconnect;
                }
            }
        }
        status.boots.fetch_add(1, Ordering::Relaxed);
        for f in [
            ATTRIBUTES_TOPIC,
            ATTRIBUTES_RESPONSE_FILTER,
            "v2/fw/response/+/chunk/+",
            RPC_REQUEST_FILTER,
        ] {
            let _ = client.subscribe(f, QoS::AtLeastOnce).await;
        }
        let pubq = |topic: String, body: Json| {
            let c = client.clone();
            async move {
                let _ = c
                    .publish(topic, QoS::AtLeastOnce, false, body.to_string())
                    .await;
            }
        };
        pubq(
            TELEMETRY_TOPIC.into(),
            json!({"current_fw_title": self.title, "current_fw_version": running, "fw_state": report}),
        )
        .await;
        pubq(
            "v1/devices/me/attributes/request/1".into(),
            json!({"sharedKeys": "fw_title,fw_version,fw_size,fw_checksum,fw_checksum_algorithm,fw_download_only"}),
        )
        .await;
        let mut shared = Map::new();
        let mut dl: Option<Download> = None;
        let mut verified: Option<(String, String)> = None;
        let mut silent = false;
        loop {
            let e = match ev.poll().await {
                Ok(e) => e,
                Err(_) => return After::Reconnect,
            };
            let Event::Incoming(Packet::Publish(m)) = e else {
                continue;
            };
            if silent {
                continue;
            }
            if m.topic.starts_with(ATTRIBUTES_TOPIC) {
                let Ok(Json::Object(mut v)) = serde_json::from_slice::<Json>(&m.payload) else {
                    continue;
                };
                if let Some(Json::Object(s)) = v.remove("shared") {
                    v = s;
                }
                if let Some(Json::Array(gone)) = v.remove("deleted") {
                    for k in gone.iter().filter_map(Json::as_str) {
                        shared.remove(k);
                    }
                }
                shared.extend(v);
                let text = |k: &str| match shared.get(k) {
                    Some(Json::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                    None => None,
                };
                let (Some(title), Some(version)) = (text("fw_title"), text("fw_version")) else {
                    continue;
                };
                if (title == self.title && version == running) || dl.is_some() || verified.is_some()
                {
                    continue;
                }
                let size = shared.get("fw_size").and_then(Json::as_u64).unwrap_or(0) as usize;
                *rid += 1;
                dl = Some(Download {
                    rid: *rid,
                    title,
                    version,
                    size,
                    checksum: text("fw_checksum"),
                    next: 0,
                    bytes: Vec::with_capacity(size),
                });
                pubq(TELEMETRY_TOPIC.into(), json!({"fw_state": "DOWNLOADING"})).await;
                let _ = client
                    .publish(
                        format!("v2/fw/request/{}/chunk/0", *rid),
                        QoS::AtLeastOnce,
                        false,
                        self.chunk_size.to_string(),
                    )
                    .await;
            } else if let Some(rest) = m.topic.strip_prefix("v2/fw/response/") {
                let Some(d) = dl.as_mut() else { continue };
                let mut parts = rest.split('/');
                let (Some(r), Some(_), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                if r.parse::<u32>().ok() != Some(d.rid) || n.parse::<u32>().ok() != Some(d.next) {
                    continue;
                }
                let mut chunk = m.payload.to_vec();
                if self.fault == Fault::Corrupt && *armed && d.next == 0 && !chunk.is_empty() {
                    *armed = false;
                    chunk[0] ^= 0xff;
                }
                d.bytes.extend_from_slice(&chunk);
                d.next += 1;
                if self.fault == Fault::Drop && *armed && d.bytes.len() * 2 >= d.size {
                    *armed = false;
                    // Gone without a DISCONNECT, as a lost link: the client and its
                    // connection are dropped on return.
                    return After::Reconnect;
                }
                if d.bytes.len() < d.size && !chunk.is_empty() {
                    let _ = client
                        .publish(
                            format!("v2/fw/request/{}/chunk/{}", d.rid, d.next),
                            QoS::AtLeastOnce,
                            false,
                            self.chunk_size.to_string(),
                        )
                        .await;
                    continue;
                }
                let Some(d) = dl.take() else { continue };
                status.downloads.fetch_add(1, Ordering::Relaxed);
                pubq(TELEMETRY_TOPIC.into(), json!({"fw_state": "DOWNLOADED"})).await;
                let sha: String = Sha256::digest(&d.bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if d.bytes.len() != d.size || d.checksum.as_deref().is_some_and(|c| c != sha) {
                    pubq(
                        TELEMETRY_TOPIC.into(),
                        json!({"fw_state": "FAILED", "fw_error": "Checksum verification failed!"}),
                    )
                    .await;
                    continue;
                }
                if self.fault == Fault::Silent {
                    silent = true;
                    continue;
                }
                pubq(TELEMETRY_TOPIC.into(), json!({"fw_state": "VERIFIED"})).await;
                if shared.get("fw_download_only") == Some(&Json::Bool(true)) {
                    verified = Some((d.title, d.version));
                    continue;
                }
                return self.install(&client, &mut ev, running, &d.version).await;
            } else if m.topic.starts_with("v1/devices/me/rpc/request/") {
                let Ok(v) = serde_json::from_slice::<Json>(&m.payload) else {
                    continue;
                };
                if v["method"] == "fw_install"
                    && let Some((_, version)) = verified.take()
                {
                    return self.install(&client, &mut ev, running, &version).await;
                }
            }
        }
    }

    /// Installs `version`, reports `UPDATED`, and reboots.
    async fn install(
        &self,
        client: &AsyncClient,
        ev: &mut EventLoop,
        running: &str,
        version: &str,
    ) -> After {
        let send =
            |body: Json| client.publish(TELEMETRY_TOPIC, QoS::AtLeastOnce, false, body.to_string());
        let _ = send(json!({"fw_state": "UPDATING"})).await;
        let _ = send(json!({
            "current_fw_title": self.title, "current_fw_version": version, "fw_state": "UPDATED"
        }))
        .await;
        // Both reports are acknowledged before the reboot: the next two publishes that go out
        // are they, and their PUBACKs are awaited by packet id.
        let mut ids: Vec<u16> = Vec::new();
        let mut acked = 0;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while acked < 2 {
                match ev.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(id))) if ids.len() < 2 => {
                        ids.push(id)
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) if ids.contains(&a.pkid) => acked += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while ev.poll().await.is_ok() {}
        })
        .await;
        if self.fault == Fault::Rollback {
            After::Reboot {
                version: running.to_string(),
                state: "UPDATED",
            }
        } else {
            After::Reboot {
                version: version.to_string(),
                state: "IDLE",
            }
        }
    }
}
