//! OTA download benchmark (issue 15): N devices fetch a package at once in chunks over MQTT
//! (`v2/fw/request/{rid}/chunk/{n}`, ThingsBoard's protocol) from a real `App` on loopback over
//! TLS, while K other devices publish QoS 1 telemetry one message at a time. Reports the time
//! until every device has the whole file (each checks its SHA-256), the aggregate MB/s, the
//! server's RSS before and at its peak (the file must not be copied per device), and the p50 and
//! p99 PUBACK latency of the telemetry devices during the download. Never asserts on time.
//!
//! The devices run in a child process (this executable again), so the RSS this process reads
//! from /proc is the server's alone.
//!
//! `cargo bench --ignore-rust-version --bench ota -- --devices 1000 --size-kib 1024 --chunk-kib 64 --ingest 10`

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--devices-side") {
        return devices_side(&args[i + 1..]).await;
    }
    let n: usize = common::arg(&args, "--devices", 1000);
    let size = common::arg::<usize>(&args, "--size-kib", 1024) << 10;
    let chunk = common::arg::<usize>(&args, "--chunk-kib", 64) << 10;
    let ingest: usize = common::arg(&args, "--ingest", 10);
    let common::BenchApp {
        app,
        api,
        fleet,
        _dir,
    } = common::start_with(|c| c.mqtt.max_packet_size = (chunk + 4096) as u32).await?;
    let fleet_id = fleet["id"].as_str().unwrap_or_default().to_string();
    let t = Instant::now();
    let tokens = common::create_devices(&api, &fleet["id"], "d", n + ingest).await?;
    let created = t.elapsed();
    // The package, the fleet's target: what every device asks chunks of.
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect();
    let sha = hex(&Sha256::digest(&data));
    let url = format!(
        "http://{}/api/v1/packages?title=bench-fw&version=2.0&fleet_id={fleet_id}",
        app.addrs.http
    );
    let key = app.services.config.admin_key.clone().unwrap_or_default();
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(&key)
        .body(data)
        .send()
        .await?;
    anyhow::ensure!(r.status().as_u16() == 201, "upload: {}", r.status());
    let pkg: Value = r.json().await?;
    let _: Value = api
        .put(
            &format!("/fleets/{fleet_id}/packages"),
            &json!({"package_id": pkg["id"]}),
        )
        .await?;

    let tmp = tempfile::tempdir()?;
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, app.services.pki.ca_pem())?;
    let token_file = tmp.path().join("tokens");
    std::fs::write(&token_file, tokens.join("\n"))?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--devices-side", &app.addrs.mqtt_tls.port().to_string()])
        .arg(&ca)
        .arg(&token_file)
        .args([n.to_string(), size.to_string(), chunk.to_string(), sha])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next = async || -> anyhow::Result<String> {
        tokio::time::timeout(Duration::from_secs(600), lines.next_line())
            .await
            .context("the devices did not report in time")??
            .context("the devices process ended")
    };
    anyhow::ensure!(next().await? == "connected", "unexpected report");
    // Settle, then the server's RSS before the download.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    stdin.write_all(b"go\n").await?;
    stdin.flush().await?;
    let report = next().await?;
    sampler.abort();
    let _ = child.kill().await;
    let r: Value = serde_json::from_str(&report)?;
    let cpu = common::cpu_model();
    let secs = r["seconds"].as_f64().unwrap_or(0.0);
    let mb = (n * size) as f64 / 1e6;
    println!(
        "### OTA download: {n} devices fetch a {} KiB package in {} KiB MQTT chunks at once, {ingest} devices publish telemetry meanwhile",
        size >> 10,
        chunk >> 10
    );
    println!();
    println!(
        "Machine: {cpu}, {} cores; the devices run in a second process on the same machine (MQTT 3.1.1 over TLS, loopback). {} devices created over REST in {:.1} s.",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        n + ingest,
        created.as_secs_f64()
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| devices with the whole file (SHA-256 checked) | {} of {n} |",
        r["complete"]
    );
    println!("| time until every device has it | {secs:.2} s |");
    println!("| aggregate throughput | {:.1} MB/s |", mb / secs.max(1e-9));
    println!(
        "| server RSS before → peak (growth) | {} → {} MiB (+{} MiB) |",
        rss_before >> 10,
        peak.load(Ordering::Relaxed) >> 10,
        (peak.load(Ordering::Relaxed).saturating_sub(rss_before)) >> 10
    );
    println!(
        "| telemetry PUBACK latency during the download, p50 / p99 / max ({} messages) | {} / {} / {} ms |",
        r["acks"], r["p50_ms"], r["p99_ms"], r["max_ms"]
    );
    app.shutdown().await?;
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// This process's resident set, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The devices: `n` download the package when told to ("go" on stdin), the rest publish
/// telemetry one QoS 1 message at a time until the downloads are done. Prints "connected",
/// then one JSON line with the results.
async fn devices_side(args: &[String]) -> anyhow::Result<()> {
    let port: u16 = args[0].parse()?;
    let ca = std::fs::read_to_string(&args[1])?;
    let tokens: Vec<String> = std::fs::read_to_string(&args[2])?
        .lines()
        .map(String::from)
        .collect();
    let n: usize = args[3].parse()?;
    let size: usize = args[4].parse()?;
    let chunk: usize = args[5].parse()?;
    let sha = args[6].clone();
    corral::pki::install_crypto_provider();
    let tls = Arc::new(corral::pki::client_config_trusting(&ca)?);
    let connected = Arc::new(AtomicUsize::new(0));
    let complete = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let gate = Arc::new(tokio::sync::Semaphore::new(100));
    let mut downloads = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut o = MqttOptions::new(format!("b{i}"), "127.0.0.1", port);
        o.set_credentials(token.clone(), "");
        o.set_keep_alive(Duration::from_secs(300));
        o.set_max_packet_size(chunk + 8192, chunk + 8192);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        let (c, mut el) = AsyncClient::new(o, 16);
        let (connected, complete, gate) = (connected.clone(), complete.clone(), gate.clone());
        let (mut go, mut done) = (go_rx.clone(), done_rx.clone());
        let (latencies, sha) = (latencies.clone(), sha.clone());
        let downloader = i < n;
        let task = tokio::spawn(async move {
            {
                let _p = gate.acquire().await;
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
            connected.fetch_add(1, Ordering::Relaxed);
            if !downloader {
                // Telemetry: one message at a time, its PUBACK latency recorded, until done.
                let _ = go.wait_for(|g| *g).await;
                while !*done.borrow() {
                    let t = Instant::now();
                    if c.publish(
                        "v1/devices/me/telemetry",
                        QoS::AtLeastOnce,
                        false,
                        r#"{"t":21.5}"#,
                    )
                    .await
                    .is_err()
                    {
                        return;
                    }
                    loop {
                        tokio::select! {
                            ev = el.poll() => match ev {
                                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                                Ok(_) => {}
                                Err(_) => return,
                            },
                            _ = done.changed() => return,
                        }
                    }
                    latencies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(t.elapsed().as_secs_f64() * 1000.0);
                }
                return;
            }
            let _ = go.wait_for(|g| *g).await;
            let mut got: Vec<u8> = Vec::with_capacity(size);
            let mut next = 0u32;
            let ask = |n: u32| {
                let c = c.clone();
                async move {
                    c.publish(
                        format!("v2/fw/request/1/chunk/{n}"),
                        QoS::AtLeastOnce,
                        false,
                        chunk.to_string(),
                    )
                    .await
                }
            };
            if ask(0).await.is_err() {
                return;
            }
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(m)))
                        if m.topic.starts_with("v2/fw/response/") =>
                    {
                        got.extend_from_slice(&m.payload);
                        next += 1;
                        if got.len() >= size || m.payload.is_empty() {
                            break;
                        }
                        if ask(next).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            if hex(&Sha256::digest(&got)) == sha {
                complete.fetch_add(1, Ordering::Relaxed);
            }
            // Keep the session (and so the server's state for it) until the end.
            let _ = done.wait_for(|d| *d).await;
        });
        if downloader {
            downloads.push(task);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while connected.load(Ordering::Relaxed) < tokens.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("connected");
    // Wait for "go" (a blocking read: the runtime has no stdin of its own here).
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    })
    .await??;
    let t = Instant::now();
    let _ = go_tx.send(true);
    let downloads_done = async {
        while complete.load(Ordering::Relaxed) < n && !downloads.iter().all(|d| d.is_finished()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(600), downloads_done).await;
    let seconds = t.elapsed().as_secs_f64();
    let _ = done_tx.send(true);
    let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |v| (v * 10.0).round() / 10.0)
    };
    println!(
        "{}",
        json!({
            "complete": complete.load(Ordering::Relaxed),
            "seconds": seconds,
            "acks": l.len(),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "max_ms": l.last().map_or(0.0, |v| (v * 10.0).round() / 10.0),
        })
    );
    Ok(())
}
