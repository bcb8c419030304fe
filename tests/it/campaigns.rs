//! OTA campaigns (issue 15): simulated OTA devices (`corral::sim::ota`, real MQTT over TLS)
//! updated by campaigns with waves, a success gate, deadlines, retries, the error threshold,
//! an abort that rolls back, the approval step, the dry run, a window, download-only installs,
//! pause/resume/cancel and the emergency stop; and a `kill -9` in the middle of a campaign that
//! resumes without starting a wave twice.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::server::Server;
use common::{TestApp, eventually};
use corral::sim::ota::{Fault, OtaDevice, OtaStatus};
use serde_json::{Value, json};

/// A small REST client with one API key.
#[derive(Clone)]
struct Api {
    c: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn new(base: &str, key: &str) -> Self {
        Self {
            c: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: format!("{base}/api/v1"),
            key: key.to_string(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .c
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.base),
            )
            .bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("send");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.send(method, path, body).await;
        assert!((200..300).contains(&s), "{method} {path} → {s} {v}");
        v
    }

    async fn upload(&self, fleet: &str, title: &str, version: &str, data: Vec<u8>) -> String {
        let r = self
            .c
            .post(format!("{}/packages", self.base))
            .bearer_auth(&self.key)
            .query(&[("title", title), ("version", version), ("fleet_id", fleet)])
            .body(data)
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().await.expect("json");
        v["id"].as_str().expect("id").to_string()
    }

    /// A workspace, a fleet and `n` devices; returns the fleet id and the devices' ids and
    /// tokens, in creation order (which is the order campaigns start them in).
    async fn fleet(&self, name: &str, n: usize) -> (String, Vec<(String, String)>) {
        let ws = self
            .ok("POST", "/workspaces", Some(json!({"name": name})))
            .await;
        let fleet = self
            .ok(
                "POST",
                "/fleets",
                Some(json!({"workspace_id": ws["id"], "name": name})),
            )
            .await;
        let mut devices = Vec::new();
        for i in 0..n {
            let d = self
                .ok(
                    "POST",
                    "/devices",
                    Some(json!({"fleet_id": fleet["id"], "name": format!("{name}-{i:02}")})),
                )
                .await;
            devices.push((
                d["device"]["id"].as_str().expect("id").to_string(),
                d["credentials"]["token"]
                    .as_str()
                    .expect("token")
                    .to_string(),
            ));
        }
        (fleet["id"].as_str().expect("fleet").to_string(), devices)
    }

    /// A user with `role` in workspace `ws`, and a client acting as them (an API key of theirs).
    async fn user(&self, name: &str, ws: &Value, role: &str) -> Api {
        let u = self
            .ok(
                "POST",
                "/users",
                Some(json!({"username": name, "password": "long enough password",
                    "grants": [{"workspace_id": ws, "role": role}]})),
            )
            .await;
        let k = self
            .ok(
                "POST",
                &format!("/users/{}/api-keys", u["id"].as_str().expect("id")),
                Some(json!({"name": "k"})),
            )
            .await;
        Api::new(
            self.base.trim_end_matches("/api/v1"),
            k["secret"].as_str().expect("secret"),
        )
    }

    /// Waits up to `secs` for the campaign to satisfy `f`; returns it.
    async fn wait(&self, id: &str, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        self.wait_telling(id, &[], secs, what, f).await
    }

    /// `wait`, and on a timeout also tells the story of the campaigns `also`.
    async fn wait_telling(
        &self,
        id: &str,
        also: &[&str],
        secs: u64,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let c = self.ok("GET", &format!("/campaigns/{id}"), None).await;
            if f(&c) {
                return c;
            }
            if tokio::time::Instant::now() >= deadline {
                // The story first, compact: a failure report is read from its first lines.
                let mut story = String::new();
                for other in [id].into_iter().chain(also.iter().copied()) {
                    story += &self.story(other).await;
                }
                panic!(
                    "{what}: not within {secs} s\n{story}the campaign: {}",
                    serde_json::to_string(&c).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A campaign's state and each device's timeline, a line per device.
    async fn story(&self, id: &str) -> String {
        let c = self.ok("GET", &format!("/campaigns/{id}"), None).await;
        let (_, all) = self
            .send("GET", &format!("/campaigns/{id}/devices?limit=1000"), None)
            .await;
        let mut out = format!(
            "campaign {} ({}): {} {} {}\n",
            c["name"], id, c["state"], c["counts"], c["note"]
        );
        for u in all["items"].as_array().into_iter().flatten() {
            let steps: Vec<String> = u["timeline"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| format!("{}@{} {}", t["state"], t["at"], t["detail"]))
                .collect();
            out += &format!(
                "  {} {} reported {}: {}\n",
                u["device_name"],
                u["state"],
                u["reported_version"],
                steps.join(" | ")
            );
        }
        out
    }
}

/// Deterministic bytes.
fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Simulated OTA devices, one per token, with the given faults; stopped when dropped.
struct Fleet {
    status: Vec<Arc<OtaStatus>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Fleet {
    fn start(
        port: u16,
        ca_pem: &str,
        tokens: &[(String, String)],
        version: impl Fn(usize) -> &'static str,
        fault: impl Fn(usize) -> Fault,
    ) -> Self {
        let tls = Arc::new(corral::pki::client_config_trusting(ca_pem).expect("tls"));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let mut status = Vec::new();
        for (i, (_, token)) in tokens.iter().enumerate() {
            let s = Arc::new(OtaStatus::default());
            let dev = OtaDevice {
                host: "127.0.0.1".into(),
                port,
                tls: Some(tls.clone()),
                token: token.clone(),
                title: "sim-fw".into(),
                version: version(i).into(),
                chunk_size: 16 * 1024,
                fault: fault(i),
                reboot: Duration::from_millis(200),
            };
            tokio::spawn(dev.run(s.clone(), rx.clone()));
            status.push(s);
        }
        Self { status, stop }
    }

    fn running(&self, i: usize) -> String {
        self.status[i]
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn count(c: &Value, state: &str) -> u64 {
    c["counts"][state].as_u64().unwrap_or(0)
}

/// The time of the first transition into `state` in a device's timeline.
fn first(u: &Value, state: &str) -> Option<i64> {
    u["timeline"]
        .as_array()?
        .iter()
        .find(|t| t["state"] == state)
        .and_then(|t| t["at"].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_over_50_devices_goes_wave_by_wave_through_their_faults() {
    let t = TestApp::start().await;
    let api = Api::new(&t.http_base(), &t.admin_key);
    let (fleet, devices) = api.fleet("fifty", 50).await;
    let package = api.upload(&fleet, "sim-fw", "2.0", image(40_000, 7)).await;
    // Wave 2 (devices 5..20) holds every fault: two of each.
    let faults = |i: usize| match i {
        10 | 11 => Fault::Silent,
        12 | 13 => Fault::Rollback,
        14 | 15 => Fault::Drop,
        16 | 17 => Fault::Corrupt,
        _ => Fault::None,
    };
    let sims = Fleet::start(t.mqtt_port(), &t.ca_pem, &devices, |_| "1.0", faults);
    let body = json!({
        "name": "fifty to 2.0", "package_id": package, "fleet_id": fleet,
        "waves": [{"percent": 10}, {"percent": 30}],
        "success_pct": 70, "soak_secs": 1,
        "install_timeout_secs": 4, "confirm_timeout_secs": 15, "download_timeout_secs": 30,
        "retries_failed": 1, "retries_timed_out": 0, "retry_backoff_secs": 1,
    });

    // The dry run: targets, waves, an estimate; nothing is stored.
    let dry = api
        .ok("POST", "/campaigns/dry-run", Some(body.clone()))
        .await;
    assert_eq!(dry["targets"], 50, "{dry}");
    assert_eq!(dry["waves"], json!([5, 15, 30]));
    assert_eq!(dry["already_updated"], 0);
    assert!(dry["estimated_last_start_at"].as_i64().is_some());
    assert_eq!(dry["devices"][0], devices[0].0.as_str());
    let (_, list) = api.send("GET", "/campaigns", None).await;
    assert_eq!(list, json!([]), "a dry run stores nothing");

    let c = api.ok("POST", "/campaigns", Some(body)).await;
    assert_eq!(c["state"], "draft");
    let id = c["id"].as_str().expect("id").to_string();
    let c = api
        .ok("POST", &format!("/campaigns/{id}/start"), None)
        .await;
    assert_eq!(
        (c["state"].as_str(), c["targets"].as_u64()),
        (Some("running"), Some(50))
    );
    let (s, v) = api
        .send("POST", &format!("/campaigns/{id}/start"), None)
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));

    let c = api
        .wait(&id, 120, "the campaign completes", |c| {
            c["state"] == "completed"
        })
        .await;
    assert_eq!(
        (
            count(&c, "updated"),
            count(&c, "failed"),
            count(&c, "timed_out")
        ),
        (46, 2, 2),
        "{c:#}"
    );
    assert_eq!(c["note"], "46 updated, 2 failed, 2 timed out");
    let waves: Vec<(u64, u64, u64)> = c["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .map(|w| {
            (
                w["devices"].as_u64().unwrap_or(0),
                w["updated"].as_u64().unwrap_or(0),
                w["failed"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(waves, [(5, 5, 0), (15, 11, 4), (30, 30, 0)]);
    let failing: Vec<(String, String)> = c["failing"]
        .as_array()
        .expect("failing")
        .iter()
        .map(|f| {
            (
                f["device_id"].as_str().unwrap_or("").to_string(),
                f["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for i in [10, 11] {
        assert!(
            failing.contains(&(devices[i].0.clone(), "timed_out".into())),
            "{failing:?}"
        );
    }
    for i in [12, 13] {
        assert!(
            failing.contains(&(devices[i].0.clone(), "failed".into())),
            "{failing:?}"
        );
    }

    // The devices run what the campaign says they run.
    for i in 0..50 {
        let want = if (10..14).contains(&i) { "1.0" } else { "2.0" };
        assert_eq!(sims.running(i), want, "device {i}");
    }

    let all = api
        .ok("GET", &format!("/campaigns/{id}/devices?limit=1000"), None)
        .await;
    let all = all["items"].as_array().expect("devices");
    let by_id = |i: usize| {
        all.iter()
            .find(|u| u["device_id"] == devices[i].0.as_str())
            .expect("device entry")
    };
    // The gate: no device of wave 3 was told before 11 of wave 2's 15 had updated (70 %).
    let mut wave2_done: Vec<i64> = all
        .iter()
        .filter(|u| u["wave"] == 1 && u["state"] == "updated")
        .filter_map(|u| first(u, "updated"))
        .collect();
    wave2_done.sort();
    let gate = wave2_done[10];
    let wave3_first = all
        .iter()
        .filter(|u| u["wave"] == 2)
        .filter_map(|u| first(u, "initiated"))
        .min()
        .expect("wave 3 started");
    assert!(
        wave3_first >= gate,
        "wave 3 at {wave3_first}, gate met at {gate}"
    );
    // Each wave started once: one "wave N started" per device.
    for u in all {
        let starts = u["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .filter(|t| t["detail"].as_str().is_some_and(|d| d.ends_with("started")))
            .count();
        assert_eq!(starts, 1, "{u:#}");
    }

    // Pages of 7 in device id order, with names, make the whole list; a state filter pages too.
    let mut paged: Vec<Value> = Vec::new();
    let mut cursor = String::new();
    loop {
        let p = api
            .ok(
                "GET",
                &format!("/campaigns/{id}/devices?limit=7&cursor={cursor}"),
                None,
            )
            .await;
        let items = p["items"].as_array().expect("items");
        assert!(items.len() <= 7);
        paged.extend(items.iter().cloned());
        match p["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let ids = |l: &[Value]| -> Vec<String> {
        l.iter()
            .map(|u| u["device_id"].as_str().expect("id").to_string())
            .collect()
    };
    let mut want = ids(all);
    want.sort();
    assert_eq!(ids(&paged), want, "every device once, in id order");
    for u in &paged {
        let i = devices
            .iter()
            .position(|d| u["device_id"] == d.0.as_str())
            .expect("known");
        assert_eq!(u["device_name"], format!("fifty-{i:02}").as_str(), "{u}");
    }
    let failed = api
        .ok(
            "GET",
            &format!("/campaigns/{id}/devices?state=failed&limit=1"),
            None,
        )
        .await;
    assert_eq!(
        failed["items"].as_array().map(Vec::len),
        Some(1),
        "{failed}"
    );
    assert!(
        failed["next_cursor"].is_string(),
        "more failed devices follow"
    );
    for q in ["limit=0", "limit=1001", "cursor=nonsense"] {
        let (status, v) = api
            .send("GET", &format!("/campaigns/{id}/devices?{q}"), None)
            .await;
        assert_eq!(status, 400, "{q}: {v}");
    }
    // A corrupted chunk: FAILED with the device's error, retried, updated on the second try.
    let corrupt = by_id(16);
    assert_eq!(
        (corrupt["state"].as_str(), corrupt["attempts"].as_u64()),
        (Some("updated"), Some(2))
    );
    assert!(
        corrupt["timeline"]
            .to_string()
            .contains("Checksum verification failed!"),
        "{corrupt:#}"
    );
    // A rollback: the device said UPDATED but came back on 1.0; retried once, then failed.
    let rolled = by_id(12);
    assert_eq!(
        (rolled["state"].as_str(), rolled["attempts"].as_u64()),
        (Some("failed"), Some(2))
    );
    assert!(
        rolled["error"]
            .as_str()
            .is_some_and(|e| e.contains("runs sim-fw 1.0")),
        "{rolled:#}"
    );
    // Silent after the download: timed out in `downloaded` (no retries for timeouts here).
    let silent = by_id(10);
    assert!(
        silent["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not report UPDATED")),
        "{silent:#}"
    );
    // A dropped download: the device asked again and updated on its first attempt.
    let dropped = by_id(14);
    assert_eq!(
        (dropped["state"].as_str(), dropped["attempts"].as_u64()),
        (Some("updated"), Some(1))
    );
    // Updated only after reconnecting: the UPDATED report came first.
    let ok = by_id(0);
    let states: Vec<&str> = ok["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect();
    assert_eq!(
        states,
        [
            "pending",
            "queued",
            "initiated",
            "downloading",
            "downloaded",
            "verified",
            "updating",
            "updating",
            "updated"
        ],
        "{ok:#}"
    );
    assert!(ok["timeline"].to_string().contains("after reconnecting"));

    // The device's own OTA timeline, and the package is now the fleet's target.
    let mine = api
        .ok("GET", &format!("/devices/{}/ota", devices[0].0), None)
        .await;
    assert_eq!(
        (mine[0]["campaign_id"].as_str(), mine[0]["state"].as_str()),
        (Some(id.as_str()), Some("updated"))
    );
    let (s, v) = api
        .send("DELETE", &format!("/packages/{package}"), None)
        .await;
    assert_eq!(s, 409, "the fleet's target: {v}");
    // Metrics per campaign and state.
    let metrics = reqwest::get(format!("{}/metrics", t.http_base()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(&format!(
            "corral_ota_devices{{campaign=\"{id}\",state=\"updated\"}} 46"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("ota"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_threshold_pauses_and_an_abort_rolls_back() {
    let t = TestApp::start().await;
    let api = Api::new(&t.http_base(), &t.admin_key);
    let (fleet, devices) = api.fleet("flaky", 6).await;
    let v1 = api.upload(&fleet, "sim-fw", "1.0", image(20_000, 1)).await;
    let v2 = api.upload(&fleet, "sim-fw", "2.0", image(20_000, 2)).await;
    api.ok(
        "PUT",
        &format!("/fleets/{fleet}/packages"),
        Some(json!({"package_id": v1})),
    )
    .await;
    // The first two roll back whatever they are given.
    let sims = Fleet::start(
        t.mqtt_port(),
        &t.ca_pem,
        &devices,
        |_| "1.0",
        |i| {
            if i < 2 { Fault::Rollback } else { Fault::None }
        },
    );

    // Pause: 2 of 2 finished failed (threshold 50 %, sample 2).
    let c = api
        .ok(
            "POST",
            "/campaigns",
            Some(json!({
                "name": "pausing", "package_id": v2, "fleet_id": fleet,
                "waves": [{"devices": 2}], "failure_pct": 50, "min_sample": 2,
                "retries_failed": 0, "confirm_timeout_secs": 20, "assign_fleet": false,
            })),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_string();
    api.ok("POST", &format!("/campaigns/{id}/start"), None)
        .await;
    let c = api
        .wait(&id, 60, "the threshold pauses it", |c| {
            c["state"] == "paused"
        })
        .await;
    assert!(
        c["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("error threshold: 2 of 2")),
        "{c:#}"
    );
    assert_eq!(
        count(&c, "pending"),
        4,
        "the second wave did not start: {c:#}"
    );
    // Resumed, the threshold counts what finishes from now on: the rest update.
    api.ok("POST", &format!("/campaigns/{id}/resume"), None)
        .await;
    let c = api
        .wait(&id, 60, "it completes", |c| c["state"] == "completed")
        .await;
    assert_eq!((count(&c, "updated"), count(&c, "failed")), (4, 2), "{c:#}");
    for i in 2..6 {
        assert_eq!(sims.running(i), "2.0");
    }
    // The two that failed for good no longer have 2.0 as their own target: they are back on
    // the fleet's (1.0, what they run), so they stop fetching 2.0 at every boot.
    for (d, _) in &devices[..2] {
        let a = api
            .ok(
                "GET",
                &format!("/devices/{d}/attributes?scope=shared"),
                None,
            )
            .await;
        assert_eq!(a["shared"]["fw_version"]["value"], "1.0", "{a:#}");
    }

    // Abort with a rollback: back to the fleet's target (1.0) for the devices it reached.
    let v3 = api.upload(&fleet, "sim-fw", "3.0", image(20_000, 3)).await;
    let c = api
        .ok(
            "POST",
            "/campaigns",
            Some(json!({
                "name": "aborting", "package_id": v3, "fleet_id": fleet,
                "waves": [{"devices": 2}], "failure_pct": 50, "min_sample": 2,
                "on_failure": "abort", "rollback": true,
                "retries_failed": 0, "confirm_timeout_secs": 20,
            })),
        )
        .await;
    assert_eq!(c["policy"]["rollback_package_id"], v1.as_str());
    let id = c["id"].as_str().expect("id").to_string();
    api.ok("POST", &format!("/campaigns/{id}/start"), None)
        .await;
    let c = api
        .wait(&id, 60, "the threshold aborts it", |c| {
            c["state"] == "aborted"
        })
        .await;
    assert_eq!(
        (count(&c, "failed"), count(&c, "cancelled")),
        (2, 4),
        "{c:#}"
    );
    // The rollback is created by the same scheduler tick, right after the abort is written.
    let rollback = eventually(10, || async {
        let all = api.ok("GET", "/campaigns", None).await;
        all.as_array()
            .expect("list")
            .iter()
            .find(|x| x["rollback_of"] == id.as_str())
            .cloned()
    })
    .await;
    assert_eq!(rollback["package_id"], v1.as_str());
    assert_eq!(rollback["targets"], 2);
    let rid = rollback["id"].as_str().expect("id").to_string();
    // The two devices run 1.0 already (they rolled back themselves): done at once.
    let rb = api
        .wait_telling(&rid, &[&id], 30, "the rollback completes", |c| {
            c["state"] == "completed"
        })
        .await;
    assert_eq!(count(&rb, "updated"), 2, "{rb:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_window_download_only_and_operator_actions() {
    let t = TestApp::start().await;
    let api = Api::new(&t.http_base(), &t.admin_key);
    let (fleet, devices) = api.fleet("careful", 3).await;
    let (other_fleet, _) = api.fleet("other", 0).await;
    let pkg = api.upload(&fleet, "sim-fw", "2.0", image(30_000, 9)).await;
    let foreign = api
        .upload(&other_fleet, "sim-fw", "9.0", image(10, 9))
        .await;

    // Bad input: each a precise error, nothing created.
    let base = json!({"name": "x", "package_id": pkg, "fleet_id": fleet});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (body, status, field) in [
        (with("failure_pct", json!(0)), 422, Some("failure_pct")),
        (with("waves", json!([{"percent": 0}])), 422, Some("waves")),
        (with("success_pct", json!(101)), 422, Some("success_pct")),
        (with("package_id", json!(foreign)), 422, Some("package_id")),
        (
            with("window", json!({"start": "25:00", "end": "03:00"})),
            422,
            Some("window.start"),
        ),
        (with("rollback", json!(true)), 422, Some("rollback")),
        (with("name", json!("")), 422, Some("name")),
        (with("package_id", json!(uuid::Uuid::nil())), 404, None),
        (with("surprise", json!(1)), 400, None),
    ] {
        let (s, v) = api.send("POST", "/campaigns", Some(body.clone())).await;
        assert_eq!(s, status, "{body} → {v}");
        if let Some(f) = field {
            let m = v["error"]["message"].as_str().unwrap_or("");
            assert!(m.starts_with(&format!("{f}:")), "{body} → {v}");
        }
    }
    assert_eq!(api.ok("GET", "/campaigns", None).await, json!([]));

    // The approval step: the creator cannot approve; another workspace admin can.
    let ws = api.ok("GET", &format!("/fleets/{fleet}"), None).await["workspace_id"].clone();
    let second = api.user("second", &ws, "admin").await;
    // The second admin follows the fleet's campaigns live; an admin of another workspace does
    // not see them.
    let stream = |key: String| {
        let url = format!("{}/api/v1/events?kinds=campaign", t.http_base());
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("events")
        }
    };
    let mut seen = stream(second.key.clone()).await;
    let other_ws =
        api.ok("GET", &format!("/fleets/{other_fleet}"), None).await["workspace_id"].clone();
    let outsider = api.user("outsider", &other_ws, "admin").await;
    let mut unseen = stream(outsider.key.clone()).await;
    let c = api
        .ok(
            "POST",
            "/campaigns",
            Some(
                json!({"name": "needs approval", "package_id": pkg, "fleet_id": fleet,
                "require_approval": true, "install": "download_only"}),
            ),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_string();
    let (s, v) = api
        .send("POST", &format!("/campaigns/{id}/start"), None)
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("approval"))
    );
    let (s, v) = api
        .send("POST", &format!("/campaigns/{id}/approve"), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let c = second
        .ok("POST", &format!("/campaigns/{id}/approve"), None)
        .await;
    assert_eq!(c["approved_by"], "second");
    let mut text = String::new();
    while !text.contains("approved by second") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), seen.chunk())
            .await
            .expect("a campaign event in time")
            .expect("stream")
            .expect("open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("event: campaign") && text.contains(&id),
        "{text}"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let c = unseen.chunk().await.ok().flatten()?;
            if String::from_utf8_lossy(&c).contains("event: campaign") {
                return Some(());
            }
        }
    })
    .await;
    assert!(
        !matches!(nothing, Ok(Some(()))),
        "another workspace's admin saw the campaign"
    );
    let audit = api.ok("GET", "/audit?kind=campaign_approved", None).await;
    assert_eq!(audit["items"][0]["actor"], "second", "{audit}");

    // Download only: the devices download and verify, and wait for the install command.
    let sims = Fleet::start(
        t.mqtt_port(),
        &t.ca_pem,
        &devices,
        |_| "1.0",
        |_| Fault::None,
    );
    api.ok("POST", &format!("/campaigns/{id}/start"), None)
        .await;
    api.wait(&id, 60, "every device verified", |c| {
        count(c, "verified") == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sims.running(0), "1.0", "not installed before the command");
    api.ok("POST", &format!("/campaigns/{id}/install"), None)
        .await;
    let (s, _) = api
        .send("POST", &format!("/campaigns/{id}/install"), None)
        .await;
    assert_eq!(s, 409, "the command is sent once");
    api.wait(&id, 60, "installed", |c| {
        c["state"] == "completed" && count(c, "updated") == 3
    })
    .await;
    assert_eq!(sims.running(2), "2.0");
    let (s, _) = api.send("DELETE", &format!("/campaigns/{id}"), None).await;
    assert_eq!(s, 409, "a started campaign is history");

    // A closed window: queued, nobody told; pause, resume, the emergency stop, cancel.
    let v3 = api.upload(&fleet, "sim-fw", "3.0", image(30_000, 3)).await;
    let now = window_an_hour_from_now();
    let c = api
        .ok(
            "POST",
            "/campaigns",
            Some(
                json!({"name": "tonight", "package_id": v3, "fleet_id": fleet,
                "start_timeout_secs": 1,
                "window": {"start": now.0, "end": now.1}}),
            ),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_string();
    let dry = api
        .ok(
            "POST",
            "/campaigns/dry-run",
            Some(
                json!({"name": "tonight", "package_id": v3, "fleet_id": fleet,
                "window": {"start": now.0, "end": now.1}}),
            ),
        )
        .await;
    assert!(
        dry["notes"].to_string().contains("window is closed"),
        "{dry}"
    );
    let est = dry["estimated_last_start_at"].as_i64().expect("estimate");
    assert!(
        est > corral::model::now_ms() + 30 * 60_000,
        "starts when the window opens: {dry}"
    );
    api.ok("POST", &format!("/campaigns/{id}/start"), None)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = api.ok("GET", &format!("/campaigns/{id}"), None).await;
    assert_eq!(
        count(&c, "queued"),
        3,
        "the window is closed; online devices wait past their 1 s start deadline: {c:#}"
    );
    let c = api
        .ok("POST", &format!("/campaigns/{id}/pause"), None)
        .await;
    assert_eq!(c["state"], "paused");
    let (s, _) = api
        .send("POST", &format!("/campaigns/{id}/pause"), None)
        .await;
    assert_eq!(s, 409);
    api.ok("POST", &format!("/campaigns/{id}/resume"), None)
        .await;
    let stopped = api.ok("POST", "/campaigns/stop", None).await;
    assert_eq!(stopped["paused"], json!([id]));
    let c = api.ok("GET", &format!("/campaigns/{id}"), None).await;
    assert!(
        c["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("emergency stop")),
        "{c}"
    );
    let (s, v) = api.send("DELETE", &format!("/packages/{v3}"), None).await;
    assert_eq!(s, 409, "a running campaign's package stays: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&id)),
        "{v}"
    );
    let c = api
        .ok("POST", &format!("/campaigns/{id}/cancel"), None)
        .await;
    assert_eq!(
        (c["state"].as_str(), count(&c, "cancelled")),
        (Some("cancelled"), 3)
    );
    assert_eq!(sims.running(0), "2.0", "nobody was told of 3.0");
    let (s, v) = api.send("DELETE", &format!("/packages/{v3}"), None).await;
    assert_eq!(s, 204, "its campaign finished: {v}");
}

/// A window of one hour starting an hour from now (UTC), as "HH:MM" strings.
fn window_an_hour_from_now() -> (String, String) {
    let mins = (corral::model::now_ms() / 60_000) % (24 * 60);
    let hm = |m: i64| format!("{:02}:{:02}", (m / 60) % 24, m % 60);
    (hm(mins + 60), hm(mins + 120))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_resumes_after_kill_9_without_starting_a_wave_twice() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let data = dir.path().join("data");
    let mut srv = Server::spawn(&data, &key);
    let api = Api::new(&srv.base(), &key);
    let (fleet, devices) = api.fleet("crash", 4).await;
    let pkg = api.upload(&fleet, "sim-fw", "2.0", image(30_000, 4)).await;
    let sims = Fleet::start(
        srv.mqtt_tls.port(),
        &srv.ca_pem(),
        &devices,
        |_| "1.0",
        |_| Fault::None,
    );
    let c = api
        .ok(
            "POST",
            "/campaigns",
            Some(
                json!({"name": "through a crash", "package_id": pkg, "fleet_id": fleet,
                "waves": [{"devices": 2}], "soak_secs": 4}),
            ),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_string();
    api.ok("POST", &format!("/campaigns/{id}/start"), None)
        .await;
    // Killed while wave 1 soaks.
    api.wait(&id, 60, "wave 1 updated", |c| c["waves"][0]["updated"] == 2)
        .await;
    let (_, w) = api.send("GET", "/workers", None).await;
    eprintln!("WORKERS {w}");
    srv.kill9();
    drop(sims);

    let srv = Server::spawn(&data, &key);
    let api = Api::new(&srv.base(), &key);
    // Wave 1's devices kept their update through the server's crash.
    let sims = Fleet::start(
        srv.mqtt_tls.port(),
        &srv.ca_pem(),
        &devices,
        |i| if i < 2 { "2.0" } else { "1.0" },
        |_| Fault::None,
    );
    let c = api
        .wait(&id, 90, "it completes after the restart", |c| {
            c["state"] == "completed"
        })
        .await;
    assert_eq!(count(&c, "updated"), 4, "{c:#}");
    let all = api
        .ok("GET", &format!("/campaigns/{id}/devices?limit=1000"), None)
        .await;
    for u in all["items"].as_array().expect("devices") {
        let starts = u["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .filter(|t| t["detail"].as_str().is_some_and(|d| d.ends_with("started")))
            .count();
        assert_eq!(starts, 1, "each wave started once: {u:#}");
        assert_eq!(u["attempts"], 1, "{u:#}");
    }
    for i in 0..4 {
        assert_eq!(sims.running(i), "2.0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_dry_runs_creates_starts_and_watches_a_campaign() {
    let t = TestApp::start().await;
    let api = Api::new(&t.http_base(), &t.admin_key);
    let (fleet, devices) = api.fleet("cli-fleet", 3).await;
    let pkg = api.upload(&fleet, "sim-fw", "2.0", image(20_000, 5)).await;
    // A webhook of the `ota` kind: every device transition, delivered from its durable queue.
    let sink = common::sink::Sink::start().await;
    api.ok(
        "POST",
        "/integrations",
        Some(json!({"name": "ota-hook", "url": sink.url(), "kinds": ["ota"]})),
    )
    .await;
    let _sims = Fleet::start(
        t.mqtt_port(),
        &t.ca_pem,
        &devices,
        |_| "1.0",
        |_| Fault::None,
    );
    let run = |args: Vec<String>| {
        let (bin, base, key) = (common::server::bin(), t.http_base(), t.admin_key.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let o = std::process::Command::new(bin)
                    .args(&args)
                    .args(["--server", &base])
                    .env_clear()
                    .env("CORRAL_API_KEY", key)
                    .output()
                    .expect("run corral");
                assert!(
                    o.status.success(),
                    "{args:?}: {}\n{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                String::from_utf8_lossy(&o.stdout).into_owned()
            })
            .await
            .expect("join")
        }
    };
    let spec = |cmd: &str| -> Vec<String> {
        [
            "campaign",
            cmd,
            "--name",
            "by the cli",
            "--package",
            &pkg,
            "--fleet",
            "cli-fleet",
            "--waves",
            "1,50%",
            "--failure-pct",
            "50",
            "--confirm-timeout-secs",
            "30",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let dry = run(spec("dry-run")).await;
    assert!(dry.contains("targets") && dry.contains("1 + 2"), "{dry}");
    let mut create = spec("create");
    create.push("--json".into());
    let created: Value = serde_json::from_str(&run(create).await).expect("json");
    assert_eq!(
        created["waves"].as_array().map(Vec::len),
        Some(0),
        "waves fixed at start"
    );
    assert_eq!(created["policy"]["failure_pct"], 50);
    let id = created["id"].as_str().expect("id").to_string();
    let out = run(vec!["campaign".into(), "start".into(), id.clone()]).await;
    assert!(out.contains("running"), "{out}");
    let watched = run(vec![
        "campaign".into(),
        "watch".into(),
        id.clone(),
        "--timeout".into(),
        "90".into(),
    ])
    .await;
    assert!(
        watched
            .lines()
            .last()
            .is_some_and(|l| l.contains("completed")),
        "{watched}"
    );
    let shown = run(vec!["campaign".into(), "show".into(), id.clone()]).await;
    assert!(shown.contains("updated 3"), "{shown}");
    let list = run(vec!["campaign".into(), "list".into()]).await;
    assert!(
        list.contains("by the cli") && list.contains("completed"),
        "{list}"
    );
    // The webhook got each device's transitions, ending in `updated`, and nothing else.
    let got = common::eventually(30, || {
        let got = sink.received();
        async move {
            let updated = got.iter().filter(|r| r.event["state"] == "updated").count();
            (updated == 3).then_some(got)
        }
    })
    .await;
    assert!(
        got.iter()
            .all(|r| r.event["kind"] == "ota" && r.event["campaign_id"] == id.as_str())
    );
    for (dev, _) in &devices {
        let states: Vec<&str> = got
            .iter()
            .filter(|r| r.event["device_id"] == dev.as_str())
            .filter_map(|r| r.event["state"].as_str())
            .collect();
        assert_eq!(states.last(), Some(&"updated"), "{states:?}");
        assert!(states.contains(&"downloading"), "{states:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_device_is_updated_by_a_campaign() {
    let t = TestApp::start().await;
    let api = Api::new(&t.http_base(), &t.admin_key);
    let (fleet, devices) = api.fleet("http-ota", 1).await;
    let data = image(30_000, 8);
    let pkg = api.upload(&fleet, "poller-fw", "v3", data.clone()).await;
    let token = devices[0].1.clone();
    let dev = |path: &str| format!("{}/api/v1/{token}{path}", t.http_base());
    let http = reqwest::Client::new();
    let report = |body: Value| {
        let (http, url) = (http.clone(), dev("/telemetry"));
        async move {
            let r = http.post(url).json(&body).send().await.expect("telemetry");
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    // The device polls: it is seen over HTTP (it has no session) and reports what it runs.
    report(
        json!({"current_fw_title": "poller-fw", "current_fw_version": "v2", "fw_state": "IDLE"}),
    )
    .await;
    let c = api
        .ok(
            "POST",
            "/campaigns",
            Some(json!({"name": "over http", "package_id": pkg, "fleet_id": fleet})),
        )
        .await;
    let id = c["id"].as_str().expect("id").to_string();
    api.ok("POST", &format!("/campaigns/{id}/start"), None)
        .await;
    api.wait(&id, 30, "the device is told", |c| {
        count(c, "initiated") == 1
    })
    .await;
    let attrs: Value = http
        .get(dev("/attributes?sharedKeys=fw_title,fw_version,fw_size"))
        .send()
        .await
        .expect("attributes")
        .json()
        .await
        .expect("json");
    assert_eq!(attrs["shared"]["fw_version"], "v3", "{attrs}");
    report(json!({"fw_state": "DOWNLOADING"})).await;
    let got = http
        .get(dev("/firmware?title=poller-fw&version=v3"))
        .send()
        .await
        .expect("firmware")
        .bytes()
        .await
        .expect("body");
    assert_eq!(got.to_vec(), data);
    for s in ["DOWNLOADED", "VERIFIED", "UPDATING"] {
        report(json!({"fw_state": s})).await;
    }
    report(
        json!({"current_fw_title": "poller-fw", "current_fw_version": "v3", "fw_state": "UPDATED"}),
    )
    .await;
    let c = api
        .wait(&id, 30, "waiting for the device's next report", |c| {
            count(c, "updating") == 1
        })
        .await;
    assert_eq!(c["state"], "running");
    // No session to reopen: its next report on the new version confirms it.
    report(
        json!({"current_fw_title": "poller-fw", "current_fw_version": "v3", "fw_state": "IDLE"}),
    )
    .await;
    api.wait(&id, 30, "completed", |c| {
        c["state"] == "completed" && count(c, "updated") == 1
    })
    .await;
}

/// A device updated by one campaign goes back to its old version on its own, while no campaign
/// follows it; a campaign to that old version then finds it already there (what it reported
/// last counts, not what a campaign heard before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_back_on_its_old_version_is_already_there_for_the_next_campaign() {
    let t = TestApp::start().await;
    let api = Api::new(&t.http_base(), &t.admin_key);
    let (fleet, devices) = api.fleet("went-back", 1).await;
    let v2 = api.upload(&fleet, "poller-fw", "v2", image(1_000, 2)).await;
    let v3 = api.upload(&fleet, "poller-fw", "v3", image(1_000, 3)).await;
    let token = devices[0].1.clone();
    let url = format!("{}/api/v1/{token}/telemetry", t.http_base());
    let http = reqwest::Client::new();
    let report = |body: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.post(url).json(&body).send().await.expect("telemetry");
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    let campaign = |name: &'static str, pkg: String| {
        let api = &api;
        let fleet = fleet.clone();
        async move {
            let c = api
                .ok(
                    "POST",
                    "/campaigns",
                    Some(json!({"name": name, "package_id": pkg, "fleet_id": fleet,
                        "require_reconnect": false, "assign_fleet": false})),
                )
                .await;
            let id = c["id"].as_str().expect("id").to_string();
            api.ok("POST", &format!("/campaigns/{id}/start"), None)
                .await;
            id
        }
    };
    report(
        json!({"current_fw_title": "poller-fw", "current_fw_version": "v2", "fw_state": "IDLE"}),
    )
    .await;
    let up = campaign("up", v3).await;
    api.wait(&up, 30, "the device is told", |c| {
        count(c, "initiated") == 1
    })
    .await;
    for s in ["DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING"] {
        report(json!({"fw_state": s})).await;
    }
    report(
        json!({"current_fw_title": "poller-fw", "current_fw_version": "v3", "fw_state": "UPDATED"}),
    )
    .await;
    api.wait(&up, 30, "the update completes", |c| {
        c["state"] == "completed" && count(c, "updated") == 1
    })
    .await;
    // Back on v2 by itself: no campaign follows the device now.
    report(
        json!({"current_fw_title": "poller-fw", "current_fw_version": "v2", "fw_state": "IDLE"}),
    )
    .await;
    let down = campaign("down", v2).await;
    let c = api
        .wait(&down, 30, "the device already runs v2", |c| {
            c["state"] == "completed"
        })
        .await;
    assert_eq!(count(&c, "updated"), 1, "{c:#}");
}
