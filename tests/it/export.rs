//! Export, retention and usage against the real binary: a large CSV export streams in constant
//! memory (the server's RSS is sampled while the client reads slowly); CSV and JSON rows match
//! what was written, for a device, a fleet and several fleets, with tag and key filters; the
//! retention sweep deletes only what a workspace no longer keeps, rollups included; usage counts
//! the points.

use crate::common;

use std::time::Duration;

use common::server::Server;
use serde_json::{Value, json};

struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.call(reqwest::Method::POST, path, body).await;
        assert!(s < 300, "POST {path}: {s} {v}");
        v
    }

    /// Creates a workspace (with `retention_days`), a fleet and devices; returns (ws, fleet,
    /// [(device id, token)]).
    async fn setup(
        &self,
        name: &str,
        retention: Option<u32>,
        devices: usize,
    ) -> (String, String, Vec<(String, String)>) {
        let ws = self
            .post(
                "/workspaces",
                json!({"name": name, "retention_days": retention}),
            )
            .await;
        let fleet = self
            .post("/fleets", json!({"workspace_id": ws["id"], "name": name}))
            .await;
        let mut out = Vec::new();
        for i in 0..devices {
            let d = self
                .post(
                    "/devices",
                    json!({"fleet_id": fleet["id"], "name": format!("{name}-{i}")}),
                )
                .await;
            out.push((
                d["device"]["id"].as_str().expect("id").to_string(),
                d["credentials"]["token"]
                    .as_str()
                    .expect("token")
                    .to_string(),
            ));
        }
        (
            ws["id"].as_str().expect("ws").to_string(),
            fleet["id"].as_str().expect("fleet").to_string(),
            out,
        )
    }

    /// Sends points through the HTTP device API (durable when it returns).
    async fn send(&self, token: &str, tag: Option<&str>, items: &[Value]) {
        let path = match tag {
            Some(t) => format!("{}/api/v1/{token}/telemetry/{t}", self.base),
            None => format!("{}/api/v1/{token}/telemetry", self.base),
        };
        let r = self
            .http
            .post(path)
            .json(&Value::Array(items.to_vec()))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }

    async fn export(&self, query: &str) -> String {
        let r = self
            .http
            .get(format!("{}/api/v1/export?{query}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("export");
        assert_eq!(r.status(), 200);
        r.text().await.expect("body")
    }
}

/// The next body chunk of a response, bounded in time.
async fn next(r: &mut reqwest::Response) -> Option<bytes::Bytes> {
    tokio::time::timeout(Duration::from_secs(30), r.chunk())
        .await
        .expect("chunk within 30 s")
        .expect("chunk")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00Z

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_in_constant_memory_and_match_what_was_written() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    // A small page cache, so that reading the whole store cannot hide in it. The points are
    // loaded over the HTTP device API 5,000 (about 200 KB) at a time: over the default device
    // payload limit (mqtt.max_packet_size, 64 KiB), so the limit is raised.
    let srv = Server::spawn_with(
        &dir.path().join("data"),
        &key,
        &[
            ("CORRAL_STORE__CACHE_CAPACITY_MB", "4"),
            ("CORRAL_MQTT__MAX_PACKET_SIZE", "1048576"),
        ],
    );
    let api = Api {
        base: srv.base(),
        key,
        http: reqwest::Client::new(),
    };
    let (_, fleet_a, devs_a) = api.setup("plant-a", None, 2).await;
    let (_, fleet_b, devs_b) = api.setup("plant-b", None, 1).await;

    // 300,000 points on one device (about 25 MB of CSV), in requests of 5,000.
    let big = &devs_a[0];
    let n_big = 300_000i64;
    for chunk in 0..(n_big / 5000) {
        let items: Vec<Value> = (0..5000)
            .map(|i| {
                let n = chunk * 5000 + i;
                json!({"ts": T0 + n * 1000, "values": {"v": n}})
            })
            .collect();
        api.send(&big.1, None, &items).await;
    }
    let pid = srv.child.id();
    let before = rss_kib(pid);
    let mut r = api
        .http
        .get(format!(
            "{}/api/v1/export?device_id={}&from={T0}&to={}",
            api.base,
            big.0,
            T0 + n_big * 1000
        ))
        .bearer_auth(&api.key)
        .send()
        .await
        .expect("export");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/csv")
    );
    let (mut bytes, mut lines) = (0usize, 0usize);
    // Read 1 MiB, then stop reading for two seconds. A server that produced the export faster
    // than the client reads would now hold the rest of it (some 27 MiB) in memory; a streaming
    // one waits with a few chunks in flight.
    while bytes < 1 << 20 {
        let c = next(&mut r).await.expect("more data");
        bytes += c.len();
        lines += c.iter().filter(|b| **b == b'\n').count();
    }
    let mut paused_peak = before;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        paused_peak = paused_peak.max(rss_kib(pid));
    }
    while let Some(c) = next(&mut r).await {
        bytes += c.len();
        lines += c.iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(lines as i64, n_big + 1, "header + one row per point");
    assert!(
        bytes > 20 << 20,
        "the export should be large: {bytes} bytes"
    );
    let growth_kib = paused_peak.saturating_sub(before) as usize;
    assert!(
        growth_kib * 1024 < (bytes - (1 << 20)) / 2,
        "server RSS grew by {growth_kib} KiB while the client paused; {bytes} bytes in all"
    );

    // Exact rows: tags and keys, several fleets, CSV and JSON.
    let (small, other) = (&devs_a[1], &devs_b[0]);
    api.send(
        &small.1,
        None,
        &[json!({"ts": T0, "values": {"t": 1.5, "s": "a,\"b\""}})],
    )
    .await;
    api.send(
        &small.1,
        Some("power"),
        &[json!({"ts": T0 + 1, "values": {"w": 7}})],
    )
    .await;
    api.send(&other.1, None, &[json!({"ts": T0 + 2, "values": {"t": 3}})])
        .await;
    let range = format!("from={T0}&to={}", T0 + 10);
    let csv = api
        .export(&format!("fleet_id={fleet_b},{fleet_a}&keys=t,s,w&{range}"))
        .await;
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "device_id,device,tag,key,ts,time,value");
    // plant-a-0's `v` is filtered out by keys; plant-a-1 has three values; plant-b-0 one.
    assert_eq!(rows.len(), 5, "{csv}");
    assert!(csv.contains(&format!(
        "{},plant-a-1,default,s,{T0},2026-01-01T00:00:00Z,\"a,\"\"b\"\"\"",
        small.0
    )));
    assert!(csv.contains(&format!("{},plant-a-1,power,w,{},", small.0, T0 + 1)));
    assert!(csv.contains(&format!("{},plant-b-0,default,t,{},", other.0, T0 + 2)));
    let json_rows: Value = serde_json::from_str(
        &api.export(&format!(
            "device_id={}&tags=power&format=json&{range}",
            small.0
        ))
        .await,
    )
    .expect("json");
    assert_eq!(
        json_rows,
        json!([{"device_id": small.0, "device": "plant-a-1", "tag": "power", "key": "w",
            "ts": T0 + 1, "value": 7}])
    );
    // Precise errors.
    for (q, code) in [
        (
            "format=xml&device_id=".to_string() + &small.0,
            "invalid_format",
        ),
        (
            "from=10&to=5&device_id=".to_string() + &small.0,
            "invalid_range",
        ),
        ("".to_string(), "invalid_query"),
        ("device_id=nope".to_string(), "invalid_id"),
    ] {
        let (s, e) = api
            .call(reqwest::Method::GET, &format!("/export?{q}"), Value::Null)
            .await;
        assert_eq!((s, e["error"]["code"].as_str()), (400, Some(code)), "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_only_what_a_workspace_no_longer_keeps() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn(&dir.path().join("data"), &key);
    let api = Api {
        base: srv.base(),
        key,
        http: reqwest::Client::new(),
    };
    let (ws_short, _, short) = api.setup("short", Some(2), 1).await;
    let (ws_long, _, long) = api.setup("long", None, 1).await;
    let now = corral::model::now_ms();
    let day = 86_400_000i64;
    // Per device: 10 points five days ago, 10 points three days ago, 10 points now.
    for (_, token) in short.iter().chain(&long) {
        let items: Vec<Value> = [now - 5 * day, now - 3 * day, now - 1000]
            .iter()
            .flat_map(|t| (0..10).map(move |i| json!({"ts": t + i, "values": {"x": i}})))
            .collect();
        api.send(token, None, &items).await;
    }
    let usage = |ws: String| {
        let api = &api;
        async move {
            api.call(
                reqwest::Method::GET,
                &format!("/workspaces/{ws}/usage"),
                Value::Null,
            )
            .await
            .1
        }
    };
    assert_eq!(usage(ws_short.clone()).await["points"], 30);
    let (s, report) = api
        .call(reqwest::Method::POST, "/retention/sweep", Value::Null)
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["points_deleted"], 20, "{report}");
    let u = usage(ws_short.clone()).await;
    assert_eq!(
        (u["points"].as_u64(), u["retention_days"].as_u64()),
        (Some(10), Some(2))
    );
    assert_eq!(usage(ws_long.clone()).await["points"], 30);
    // The aggregate over the deleted days is empty; the kept day is intact.
    let agg = api
        .call(
            reqwest::Method::GET,
            &format!(
                "/devices/{}/telemetry/aggregate?interval=1d&from={}&to={now}",
                short[0].0,
                now - 6 * day
            ),
            Value::Null,
        )
        .await
        .1;
    let total: u64 = agg["data"]["x"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 10, "{agg}");
    // Retention can be changed per workspace; 0 clears it (the default keeps everything).
    let (s, w) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/workspaces/{ws_long}"),
            json!({"retention_days": 4}),
        )
        .await;
    assert_eq!((s, w["retention_days"].as_u64()), (200, Some(4)));
    let (_, report) = api
        .call(reqwest::Method::POST, "/retention/sweep", Value::Null)
        .await;
    assert_eq!(report["points_deleted"], 10, "{report}");
    let (s, e) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/workspaces/{ws_long}"),
            json!({"retention_days": 99999}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("invalid_field"))
    );
    let (s, store) = api
        .call(reqwest::Method::GET, "/store/usage", Value::Null)
        .await;
    assert_eq!(s, 200);
    assert!(store["store_bytes"].as_u64().unwrap_or(0) > 0, "{store}");
}
