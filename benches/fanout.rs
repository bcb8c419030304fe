//! Fleet command fan-out benchmark (DESIGN.md §8: a command to a 10,000-device fleet reaches
//! every online device within 2 s). Starts a real `App`, creates a fleet of N devices, connects
//! N MQTT 3.1.1 clients over TLS on loopback (rumqttc, in a child process) subscribed to
//! `v1/devices/me/rpc/request/+`, then creates one fleet job (all devices at once) and times
//! until every client has the request. Prints the figure; never asserts on time.
//!
//! With `--ingest K`, K more devices (in another fleet) publish QoS 1 telemetry without pause
//! from 3 s before the fleet job until 2 s after every device has it, and the bench reports
//! their acknowledged rate before and during the launch and the longest wait for any PUBACK:
//! what a launch does to ingest.
//!
//! `cargo bench --ignore-rust-version --bench fanout -- --devices 10000 [--ingest 10]`

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--devices-side") {
        return devices_side(&args[i + 1..]).await;
    }
    let n: usize = common::arg(&args, "--devices", 1000);
    let ingest_devices: usize = common::arg(&args, "--ingest", 0);
    let common::BenchApp {
        app,
        api,
        fleet,
        _dir,
    } = common::start().await?;
    let t = Instant::now();
    let tokens = common::create_devices(&api, &fleet["id"], "d", n).await?;
    let created = t.elapsed();
    let mut ingest_tokens = Vec::new();
    if ingest_devices > 0 {
        let other: Value = api
            .post(
                "/fleets",
                &json!({"workspace_id": fleet["workspace_id"], "name": "ingest"}),
            )
            .await?;
        ingest_tokens =
            common::create_devices(&api, &other["id"], "ingest", ingest_devices).await?;
    }
    // The devices run in a child process (this executable again): a process may hold 20,000
    // descriptors here, and 10,000 connections need 10,000 on each side.
    let tmp = tempfile::tempdir()?;
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, app.services.pki.ca_pem())?;
    let token_file = tmp.path().join("tokens");
    std::fs::write(&token_file, tokens.join("\n"))?;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["--devices-side", &app.addrs.mqtt_tls.port().to_string()])
        .arg(&ca)
        .arg(&token_file)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let t = Instant::now();
    let mut next = async || -> anyhow::Result<String> {
        tokio::time::timeout(Duration::from_secs(300), lines.next_line())
            .await
            .context("the devices did not report in time")??
            .context("the devices process ended")
    };
    anyhow::ensure!(next().await? == "subscribed", "unexpected report");
    let connected = t.elapsed();
    let ingest = (!ingest_tokens.is_empty()).then(|| {
        Ingest::start(
            app.addrs.mqtt_tls.port(),
            app.services.pki.ca_pem(),
            &ingest_tokens,
        )
    });
    let ingest = match ingest {
        Some(i) => {
            let i = i?;
            // A second to connect, then the 3 s before the launch that are compared with it.
            tokio::time::sleep(Duration::from_secs(4)).await;
            Some(i)
        }
        None => None,
    };
    let t = Instant::now();
    let _: Value = api
        .post(
            &format!("/fleets/{}/jobs", fleet["id"].as_str().unwrap_or_default()),
            &json!({"method": "reboot", "params": {}}),
        )
        .await?;
    let api_returned = t.elapsed();
    anyhow::ensure!(next().await? == "half", "unexpected report");
    let half = t.elapsed();
    anyhow::ensure!(next().await? == "all", "unexpected report");
    let all = t.elapsed();
    let ingest_report = match ingest {
        Some(i) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Some(i.report(t, t + all))
        }
        None => None,
    };
    let _ = child.kill().await;
    let cpu = common::cpu_model();
    println!("### Fleet command fan-out: {n} devices online (MQTT 3.1.1 over TLS, loopback)");
    println!();
    println!(
        "Machine: {cpu}, {} cores; the devices run in a second process on the same machine. {n} devices created over REST in {:.1} s; connected and subscribed in {:.1} s.",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        created.as_secs_f64(),
        connected.as_secs_f64()
    );
    println!();
    println!("| step | time (s) |");
    println!("|---|---:|");
    println!(
        "| `POST /fleets/{{id}}/jobs` returns | {:.2} |",
        api_returned.as_secs_f64()
    );
    println!(
        "| half the devices have the request | {:.2} |",
        half.as_secs_f64()
    );
    println!(
        "| every device has the request | {:.2} |",
        all.as_secs_f64()
    );
    if let Some(r) = ingest_report {
        println!();
        println!("{r}");
    }
    app.shutdown().await?;
    Ok(())
}

/// Devices that publish QoS 1 telemetry without pause, each with up to 16 messages in flight,
/// recording when each PUBACK arrives.
struct Ingest {
    acks: Arc<std::sync::Mutex<Vec<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    devices: usize,
}

impl Ingest {
    fn start(port: u16, ca_pem: &str, tokens: &[String]) -> anyhow::Result<Ingest> {
        let tls = Arc::new(corral::pki::client_config_trusting(ca_pem)?);
        let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for token in tokens {
            let mut o = MqttOptions::new("", "127.0.0.1", port);
            o.set_credentials(token.clone(), "");
            o.set_keep_alive(Duration::from_secs(120));
            o.set_inflight(16);
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
            let (c, mut el) = AsyncClient::new(o, 16);
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    i += 1;
                    let body = json!({"temperature": i % 100, "seq": i}).to_string();
                    if c.publish("v1/devices/me/telemetry", QoS::AtLeastOnce, false, body)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }));
            let acks = acks.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => acks
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Instant::now()),
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }));
        }
        Ok(Ingest {
            acks,
            tasks,
            devices: tokens.len(),
        })
    }

    /// Stops the devices; the rate and longest PUBACK gap in the 3 s before `launch`, and from
    /// `launch` until `done` (every device of the fleet had its request).
    fn report(self, launch: Instant, done: Instant) -> String {
        for t in &self.tasks {
            t.abort();
        }
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let window = |from: Instant, to: Instant| {
            let inside: Vec<Instant> = acks
                .iter()
                .copied()
                .filter(|a| *a >= from && *a <= to)
                .collect();
            let secs = (to - from).as_secs_f64().max(1e-3);
            let mut gap = Duration::ZERO;
            let mut last = from;
            for a in &inside {
                gap = gap.max(*a - last);
                last = *a;
            }
            gap = gap.max(to - last);
            (inside.len() as f64 / secs, gap)
        };
        let (before, before_gap) = window(launch - Duration::from_secs(3), launch);
        let (during, during_gap) = window(launch, done);
        format!(
            "| ingest, {} devices, QoS 1 | msg/s acknowledged | longest wait for a PUBACK |\n\
             |---|---:|---:|\n\
             | 3 s before the launch | {before:.0} | {:.0} ms |\n\
             | from the `POST` until every device has the request | {during:.0} | {:.0} ms |\n\
             \n\
             During the launch: {:.2}x the rate before it.",
            self.devices,
            before_gap.as_secs_f64() * 1e3,
            during_gap.as_secs_f64() * 1e3,
            during / before.max(1e-9),
        )
    }
}

/// The device side: connects one MQTT client per token (at most 200 handshakes at a time),
/// prints `subscribed` when all hold their RPC subscription, then `half` and `all` as the
/// fleet's request reaches them.
async fn devices_side(args: &[String]) -> anyhow::Result<()> {
    let [port, ca, tokens] = args else {
        anyhow::bail!("--devices-side PORT CA_PEM TOKENS_FILE");
    };
    let port: u16 = port.parse()?;
    corral::pki::install_crypto_provider();
    let tls = Arc::new(corral::pki::client_config_trusting(
        &std::fs::read_to_string(ca)?,
    )?);
    let tokens: Vec<String> = std::fs::read_to_string(tokens)?
        .lines()
        .map(str::to_string)
        .collect();
    let n = tokens.len();
    let subscribed = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    for token in tokens {
        let (tls, sub, rec, sem) = (
            tls.clone(),
            subscribed.clone(),
            received.clone(),
            sem.clone(),
        );
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let mut o = MqttOptions::new("", "127.0.0.1", port);
            o.set_credentials(token, "");
            o.set_keep_alive(Duration::from_secs(120));
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
            let (c, mut el) = AsyncClient::new(o, 4);
            let _ = c
                .subscribe("v1/devices/me/rpc/request/+", QoS::AtLeastOnce)
                .await;
            let mut permit = Some(permit);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        sub.fetch_add(1, Ordering::Relaxed);
                        permit.take();
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        rec.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
    let t = Instant::now();
    let wait = |count: Arc<AtomicUsize>, want: usize, what: &'static str| async move {
        while count.load(Ordering::Relaxed) < want {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "{what}: timed out");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!("{what}");
        Ok(())
    };
    wait(subscribed, n, "subscribed").await?;
    wait(received.clone(), n.div_ceil(2), "half").await?;
    wait(received, n, "all").await?;
    // Stay connected until the bench ends this process.
    tokio::time::sleep(Duration::from_secs(600)).await;
    Ok(())
}
