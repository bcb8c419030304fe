//! Fleet command fan-out benchmark (DESIGN.md §8: a command to a 10,000-device fleet reaches
//! every online device within 2 s). Starts a real `App`, creates a fleet of N devices, connects
//! N MQTT 3.1.1 clients over TLS on loopback (rumqttc, in this process) subscribed to
//! `v1/devices/me/rpc/request/+`, then creates one fleet job (all devices at once) and times
//! until every client has the request. Prints the figure; never asserts on time.
//!
//! `cargo bench --ignore-rust-version --bench fanout -- --devices 10000`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--devices")
        .and_then(|i| args.get(i + 1))
        .and_then(|d| d.parse().ok())
        .unwrap_or(1000);
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let key = corral::auth::new_api_key();
    let mut config = corral::config::Config {
        data_dir: dir.path().join("data"),
        admin_key: Some(key.clone()),
        ..Default::default()
    };
    config.mqtt.tls_listen = "127.0.0.1:0".into();
    config.http.listen = "127.0.0.1:0".into();
    config.https.enabled = false;
    config.log.level = "warn".into();
    config.limits.ip_connects_per_sec = 0;
    let app =
        corral::app::App::start(config.clone(), corral::app::Listeners::bind(&config)?).await?;
    let api = corral::cli::client::ApiClient::new(
        &format!("http://{}", app.addrs.http),
        Some(key),
        None,
    )?;
    let ws: Value = api.post("/workspaces", &json!({"name": "bench"})).await?;
    let fleet: Value = api
        .post(
            "/fleets",
            &json!({"workspace_id": ws["id"], "name": "bench"}),
        )
        .await?;
    let t = Instant::now();
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let d: Value = api
            .post(
                "/devices",
                &json!({"fleet_id": fleet["id"], "name": format!("d{i}")}),
            )
            .await?;
        tokens.push(
            d["credentials"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let created = t.elapsed();
    let tls = Arc::new(corral::pki::client_config_trusting(
        app.services.pki.ca_pem(),
    )?);
    let port = app.addrs.mqtt_tls.port();
    let subscribed = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
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
    while subscribed.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(300),
            "clients did not all connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = t.elapsed();
    let t = Instant::now();
    let _: Value = api
        .post(
            &format!("/fleets/{}/jobs", fleet["id"].as_str().unwrap_or_default()),
            &json!({"method": "reboot", "params": {}}),
        )
        .await?;
    let api_returned = t.elapsed();
    let mut half = None;
    while received.load(Ordering::Relaxed) < n {
        if half.is_none() && received.load(Ordering::Relaxed) * 2 >= n {
            half = Some(t.elapsed());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "not every device got the job"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = t.elapsed();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("### Fleet command fan-out: {n} devices online (MQTT 3.1.1 over TLS, loopback)");
    println!();
    println!(
        "Machine: {cpu}, {} cores; the clients run in the same process. {n} devices created over REST in {:.1} s; connected and subscribed in {:.1} s.",
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
        half.unwrap_or(all).as_secs_f64()
    );
    println!(
        "| every device has the request | {:.2} |",
        all.as_secs_f64()
    );
    app.shutdown().await?;
    Ok(())
}
