//! Publish → webhook delivered benchmark (DESIGN.md §8: p99 ≤ 50 ms at 5,000 msg/s). Starts a
//! real `App` and a real HTTP sink on loopback, both in this process; N devices publish QoS 1
//! telemetry over TLS (rumqttc) at a set total rate, each message carrying its send time; one
//! integration forwards every message to the sink, which records when each arrives. Prints the
//! latency distribution and the delivered throughput; never asserts on time. Bounded in count
//! and time: the run stops after `--secs` and waits at most 60 s for the tail.
//!
//! `cargo bench --ignore-rust-version --bench webhook -- --devices 10 --rate 5000 --secs 20`
//! (`--rate 0`: as fast as the devices can publish, with 64 in flight each).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

#[derive(Default)]
struct Sink {
    latencies_us: Mutex<Vec<i64>>,
    delivered: AtomicU64,
    requests: AtomicU64,
}

async fn receive(State(s): State<Arc<Sink>>, body: Bytes) -> StatusCode {
    let now = now_us();
    s.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(Value::Array(events)) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut l = s.latencies_us.lock().unwrap_or_else(|p| p.into_inner());
    for e in &events {
        if let Some(sent) = e["points"][0]["values"]["sent_us"].as_i64() {
            l.push(now - sent);
        }
    }
    s.delivered
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = common::arg(&args, "--devices", 10);
    let rate: u64 = common::arg(&args, "--rate", 5000);
    let secs: u64 = common::arg(&args, "--secs", 20).min(300);
    corral::pki::install_crypto_provider();

    let sink = Arc::new(Sink::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_url = format!("http://{}/hook", listener.local_addr()?);
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(sink.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let common::BenchApp {
        app,
        api,
        fleet,
        _dir,
    } = common::start().await?;
    let _: Value = api
        .post(
            "/integrations",
            &json!({"name": "bench", "url": sink_url, "kinds": ["data"]}),
        )
        .await?;
    let tokens = common::create_devices(&api, &fleet["id"], "d", n).await?;
    let tls = Arc::new(corral::pki::client_config_trusting(
        app.services.pki.ca_pem(),
    )?);
    let port = app.addrs.mqtt_tls.port();
    let published = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(500);
    let stop = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for token in tokens {
        let (tls, published, acked) = (tls.clone(), published.clone(), acked.clone());
        let mut o = MqttOptions::new("", "127.0.0.1", port);
        o.set_credentials(token, "");
        o.set_keep_alive(Duration::from_secs(60));
        o.set_inflight(64);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        let (c, mut el) = AsyncClient::new(o, 256);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            // Each device sends its share of the rate on its own clock.
            let per_device = if rate == 0 {
                None
            } else {
                Some(Duration::from_secs_f64(n as f64 / rate as f64))
            };
            let mut next = Instant::now();
            let mut seq = 0u64;
            while Instant::now() < stop {
                if let Some(p) = per_device {
                    next += p;
                    tokio::time::sleep_until(next.into()).await;
                }
                let body = json!({"sent_us": now_us(), "seq": seq}).to_string();
                if c.publish("v1/devices/me/telemetry", QoS::AtLeastOnce, false, body)
                    .await
                    .is_err()
                {
                    return;
                }
                published.fetch_add(1, Ordering::Relaxed);
                seq += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let sent = published.load(Ordering::Relaxed);
    let publish_window = start.elapsed().as_secs_f64();
    // The tail: wait for everything published to be delivered, at most 60 s.
    let tail = Instant::now();
    while sink.delivered.load(Ordering::Relaxed) < sent && tail.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_delivered = start.elapsed().as_secs_f64();
    let delivered = sink.delivered.load(Ordering::Relaxed);
    let requests = sink.requests.load(Ordering::Relaxed);
    let mut l = sink
        .latencies_us
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    l.sort_unstable();
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return f64::NAN;
        }
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i] as f64 / 1000.0
    };
    println!(
        "webhook benchmark: {n} devices, QoS 1 over TLS, offered {rate} msg/s (0 = unthrottled) for {secs} s"
    );
    println!(
        "published {sent} ({:.0} msg/s), acknowledged {}, delivered {delivered} in {requests} requests ({:.1} events/request)",
        sent as f64 / publish_window,
        acked.load(Ordering::Relaxed),
        delivered as f64 / requests.max(1) as f64
    );
    println!(
        "delivered throughput: {:.0} msg/s (all delivered {:.2} s after the first publish; publishing lasted {:.2} s)",
        delivered as f64 / all_delivered,
        all_delivered,
        publish_window
    );
    println!(
        "publish → delivered latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        l.last().map_or(f64::NAN, |m| *m as f64 / 1000.0)
    );
    app.shutdown().await?;
    Ok(())
}
