//! Aggregate query benchmark (DESIGN.md §8: one device, 30 days of 1-minute data, hourly
//! average, target ≤ 50 ms). Writes the data through the store's ingest path (so rollups are
//! maintained as in production), then times the query three ways: from the hourly rollups,
//! from raw points only (the layout without rollups), and end to end over the REST API of a
//! running `App`. Prints medians and 95th percentiles; never asserts on time.
//!
//! `cargo bench --ignore-rust-version --bench query` (add `-- --days N` to change the range).

use std::time::{Duration, Instant};

use corral::model::{DeviceId, Value};
use corral::store::{Store, StoreOptions};

const RUNS: usize = 50;

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[v.len() * 95 / 100]))
}

fn time<T>(f: impl Fn() -> T) -> Vec<Duration> {
    // One warm-up run: the numbers are for a warm cache, as a dashboard sees it.
    std::hint::black_box(f());
    (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let days: i64 = args
        .iter()
        .position(|a| a == "--days")
        .and_then(|i| args.get(i + 1))
        .and_then(|d| d.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir()?;
    let metrics = std::sync::Arc::new(corral::metrics::Metrics::new());
    let store = Store::open(
        &dir.path().join("store"),
        StoreOptions {
            cache_capacity_bytes: 64 << 20,
            group_commit_delay: Duration::ZERO,
            ..Default::default()
        },
        metrics,
    )?;
    let dev = DeviceId::new();
    let minutes = days * 24 * 60;
    let start: i64 = 1_767_225_600_000; // 2026-01-01T00:00Z
    let t = Instant::now();
    // Ingest as devices do: one message a minute, through the write-ahead log and rollups.
    for chunk in (0..minutes).collect::<Vec<_>>().chunks(1440) {
        let points = chunk
            .iter()
            .map(|m| {
                let v = 20.0 + ((*m as f64) / 60.0).sin();
                (
                    start + m * 60_000,
                    vec![("temperature".to_string(), Value::Double(v))],
                )
            })
            .collect();
        store
            .append_points(
                corral::store::PointsOp {
                    device: dev,
                    tag: "default".into(),
                    points,
                },
                false,
            )
            .await?;
    }
    store.commit().await?;
    let load = t.elapsed();
    let to = start + minutes * 60_000 - 1;
    let bounds: Vec<i64> = (0..=days * 24).map(|h| start + h * 3_600_000).collect();

    let rollup = time(|| {
        store
            .aggregate(dev, "default", "temperature", &bounds, start, to)
            .expect("aggregate")
    });
    let raw = time(|| {
        store
            .aggregate_from_raw(dev, "default", "temperature", &bounds, start, to)
            .expect("aggregate")
    });
    let a = store.aggregate(dev, "default", "temperature", &bounds, start, to)?;
    let b = store.aggregate_from_raw(dev, "default", "temperature", &bounds, start, to)?;
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.count, y.count, "rollups and raw points disagree");
    }
    drop(store);

    // End to end: the same data behind the REST API of a running App.
    corral::pki::install_crypto_provider();
    let key = corral::auth::new_api_key();
    let mut config = corral::config::Config {
        data_dir: dir.path().join("app"),
        admin_key: Some(key.clone()),
        ..Default::default()
    };
    config.mqtt.tls_listen = "127.0.0.1:0".into();
    config.http.listen = "127.0.0.1:0".into();
    config.https.enabled = false;
    config.log.level = "warn".into();
    let app =
        corral::app::App::start(config.clone(), corral::app::Listeners::bind(&config)?).await?;
    let api =
        corral::client::ApiClient::new(&format!("http://{}", app.addrs.http), Some(key), None)?;
    let ws: serde_json::Value = api
        .post("/workspaces", &serde_json::json!({"name": "b"}))
        .await?;
    let fleet: serde_json::Value = api
        .post(
            "/fleets",
            &serde_json::json!({"workspace_id": ws["id"], "name": "b"}),
        )
        .await?;
    let d: serde_json::Value = api
        .post(
            "/devices",
            &serde_json::json!({"fleet_id": fleet["id"], "name": "b"}),
        )
        .await?;
    let id: DeviceId = d["device"]["id"].as_str().unwrap_or_default().parse()?;
    for chunk in (0..minutes).collect::<Vec<_>>().chunks(1440) {
        let points = chunk
            .iter()
            .map(|m| {
                let v = 20.0 + ((*m as f64) / 60.0).sin();
                (
                    start + m * 60_000,
                    vec![("temperature".to_string(), Value::Double(v))],
                )
            })
            .collect();
        app.store()
            .append_points(
                corral::store::PointsOp {
                    device: id,
                    tag: "default".into(),
                    points,
                },
                false,
            )
            .await?;
    }
    app.store().commit().await?;
    let path = format!("/devices/{id}/telemetry/aggregate");
    let q = [
        ("interval", "1h".to_string()),
        ("from", start.to_string()),
        ("to", to.to_string()),
        ("keys", "temperature".to_string()),
    ];
    let mut http = Vec::new();
    let _: serde_json::Value = api.get(&path, &q).await?;
    for _ in 0..RUNS {
        let t = Instant::now();
        let r: serde_json::Value = api.get(&path, &q).await?;
        http.push(t.elapsed());
        std::hint::black_box(r);
    }
    app.shutdown().await?;

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (rm, rp) = stats(rollup);
    let (wm, wp) = stats(raw);
    let (hm, hp) = stats(http);
    println!(
        "### Aggregate query: 1 device, {days} days of 1-minute data, hourly avg/min/max/sum/count"
    );
    println!();
    println!(
        "Machine: {cpu}, {cores} cores. {minutes} points ingested through the write-ahead log in {:.2} s ({:.0} points/s). {RUNS} runs each, warm cache; release build.",
        load.as_secs_f64(),
        minutes as f64 / load.as_secs_f64()
    );
    println!();
    println!("| path | median (ms) | p95 (ms) |");
    println!("|---|---:|---:|");
    println!("| store, hourly rollups | {rm:.2} | {rp:.2} |");
    println!("| store, raw points only (no rollups) | {wm:.2} | {wp:.2} |");
    println!(
        "| REST `GET /devices/{{id}}/telemetry/aggregate?interval=1h`, end to end | {hm:.2} | {hp:.2} |"
    );
    println!();
    println!(
        "Rollups are {:.1}x faster than scanning the raw points (target ≤ 50 ms).",
        wm / rm.max(1e-9)
    );
    Ok(())
}
