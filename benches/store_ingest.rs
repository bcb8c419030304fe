//! The store's side of ingest, without MQTT or TLS: how many telemetry messages per second the
//! write pipeline (log, group commit, sled, rollups) takes when they come from few devices and
//! when they come from many, and how much CPU the store's threads spend per message. It
//! isolates what issue 17 calls the store writer's cost per message (about 10 µs at 10 devices
//! against 45 µs at 10,000) from the network, so that a change to the layout is measured
//! alone. Each message carries three values, as `corral simulate` sends; messages are durable
//! (each waits for its group's `fdatasync`), `--inflight` of them in flight at once.
//!
//! `cargo bench --ignore-rust-version --bench store_ingest -- --devices 10000 --secs 20`
//! (`--inflight N` messages waiting at once, 8,192 by default as `limits.messages_in_flight`;
//! `--cache-mb N` for sled's cache, 16 by default as `store.cache_capacity_mb`).
//!
//! Prints msg/s, CPU of the store's threads per message (from /proc), and the messages sent
//! per device, so that runs with different device counts compare like for like.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corral::model::{DeviceId, Value};
use corral::store::{PointsOp, Store, StoreOptions};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of this process's threads whose name starts with `store-`.
fn store_cpu() -> f64 {
    let tick = 100.0; // CLK_TCK on Linux
    let mut total = 0.0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in dir.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !name.starts_with("store-") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the closing parenthesis of the name: utime is the 12th, stime the 13th.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            total += (ut + st) / tick;
        }
    }
    total
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let devices = arg(&args, "--devices", 10_000) as usize;
    let secs = arg(&args, "--secs", 20);
    let inflight = arg(&args, "--inflight", 8192) as usize;
    // sled's cache, as `store.cache_capacity_mb` (16 by default).
    let cache_mb = arg(&args, "--cache-mb", 16);
    let dir = tempfile::tempdir()?;
    let metrics = Arc::new(corral::metrics::Metrics::new());
    let store = Arc::new(Store::open(
        &dir.path().join("store"),
        StoreOptions {
            cache_capacity_bytes: cache_mb << 20,
            group_commit_delay: Duration::ZERO,
            ..Default::default()
        },
        metrics,
    )?);
    let ids: Arc<Vec<DeviceId>> = Arc::new((0..devices).map(|_| DeviceId::new()).collect());
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Each task stands for the devices it takes in turn, as 64-message windows of many
    // connections interleave in the server: consecutive messages come from different devices.
    let mut tasks = Vec::new();
    for w in 0..inflight {
        let (store, ids, sent, stop) = (store.clone(), ids.clone(), sent.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            let mut seq = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let device = ids[i % ids.len()];
                i += inflight;
                seq += 1;
                let ts = corral::model::now_ms() + seq;
                let op = PointsOp {
                    device,
                    tag: "default".into(),
                    points: vec![(
                        ts,
                        vec![
                            ("seq".to_string(), Value::Long(seq)),
                            (
                                "temperature".to_string(),
                                Value::Double(20.0 + (seq % 10) as f64),
                            ),
                            ("ok".to_string(), Value::Bool(true)),
                        ],
                    )],
                };
                store.append_points(op, true).await.expect("append");
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Warm up until every device has its series, then measure.
    let warm = Instant::now();
    while sent.load(Ordering::Relaxed) < devices as u64 * 2 && warm.elapsed().as_secs() < 120 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (n0, c0, t0) = (sent.load(Ordering::Relaxed), store_cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (n1, c1, el) = (
        sent.load(Ordering::Relaxed),
        store_cpu(),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let msgs = (n1 - n0) as f64;
    println!(
        "devices {devices}, in flight {inflight}, {secs} s: {:.0} msg/s, \
         store threads {:.1} µs CPU per message ({:.0} % of a core), \
         {:.1} messages per device",
        msgs / el,
        (c1 - c0) / msgs * 1e6,
        (c1 - c0) / el * 100.0,
        n1 as f64 / devices as f64,
    );
    Ok(())
}
