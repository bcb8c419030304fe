//! A Corral device in Rust: MQTT 3.1.1 over TLS (rumqttc + rustls), logged in by an X.509 client
//! certificate that Corral's CA signed, with no token or password. It sends telemetry, reports
//! client attributes and answers server-side RPC commands (Corral jobs), then disconnects.
//!
//! ```sh
//! corral-rust-device --host 127.0.0.1 --port 8883 --ca ca.pem --cert dev.pem --key dev.key
//! ```
//!
//! It exits 0 once its publishes are acknowledged and it has answered `--commands` commands
//! (default 1; 0 exits right after the data), and 1 on any error or after `--timeout` seconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

// ThingsBoard's device topics (Corral's docs/device-protocol.md).
const TELEMETRY: &str = "v1/devices/me/telemetry";
const ATTRIBUTES: &str = "v1/devices/me/attributes";
const RPC_REQUESTS: &str = "v1/devices/me/rpc/request/+";
const RPC_REQUEST_PREFIX: &str = "v1/devices/me/rpc/request/";
const RPC_RESPONSE_PREFIX: &str = "v1/devices/me/rpc/response/";

const FIRMWARE_VERSION: &str = "2.0.1";

struct Args {
    host: String,
    port: u16,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_id: String,
    commands: u32,
    timeout: Duration,
}

const USAGE: &str = "usage: corral-rust-device --cert FILE --key FILE [--ca ca.pem] \
[--host 127.0.0.1] [--port 8883] [--client-id ID] [--commands 1] [--timeout 60]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 8883,
        ca: "ca.pem".into(),
        cert: PathBuf::new(),
        key: PathBuf::new(),
        client_id: "corral-rust-device".into(),
        commands: 1,
        timeout: Duration::from_secs(60),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--host" => args.host = value,
            "--port" => args.port = value.parse().context("--port")?,
            "--ca" => args.ca = value.into(),
            "--cert" => args.cert = value.into(),
            "--key" => args.key = value.into(),
            "--client-id" => args.client_id = value,
            "--commands" => args.commands = value.parse().context("--commands")?,
            "--timeout" => args.timeout = Duration::from_secs(value.parse().context("--timeout")?),
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if args.cert.as_os_str().is_empty() || args.key.as_os_str().is_empty() {
        bail!("--cert and --key are required\n{USAGE}");
    }
    Ok(args)
}

/// TLS that trusts Corral's CA only and presents the device's certificate. Corral's listener asks
/// for a client certificate; one that chains to its CA is checked in the handshake (validity,
/// revocation list) and names the device.
fn tls_config(args: &Args) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca)
        .with_context(|| format!("cannot read {}", args.ca.display()))?
    {
        roots.add(cert.context("bad CA PEM")?)?;
    }
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .with_context(|| format!("cannot read {}", args.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .context("bad certificate PEM")?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .with_context(|| format!("cannot read the key {}", args.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// The device's side of a command: `{"method","params"}` in, the reply out. The reply is what the
/// operator sees as the job's `result`.
fn answer(request: &Value, started: Instant) -> Value {
    match request.get("method").and_then(Value::as_str) {
        Some("getStatus") => json!({
            "uptime_s": started.elapsed().as_secs(),
            "firmware_version": FIRMWARE_VERSION,
            "ok": true,
        }),
        Some(other) => json!({ "error": format!("unknown method {other}") }),
        None => json!({ "error": "no method" }),
    }
}

/// Drives the connection until the work is done. Publishing from inside the event loop is safe
/// here because the request channel (16) holds far more than the few messages in flight.
async fn run(client: &AsyncClient, events: &mut EventLoop, commands: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut sent, mut acked, mut answered) = (0u32, 0u32, 0u32);
    loop {
        match events.poll().await.context("MQTT connection")? {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    bail!("refused: {:?}", ack.code);
                }
                println!("connected with the client certificate");
                // Corral hands over commands queued while the device was away once it subscribes.
                client.subscribe(RPC_REQUESTS, QoS::AtLeastOnce).await?;
                let telemetry = json!({ "temperature": 22.75, "rssi": -61 });
                client
                    .publish(TELEMETRY, QoS::AtLeastOnce, false, telemetry.to_string())
                    .await?;
                let attributes =
                    json!({ "firmware_version": FIRMWARE_VERSION, "client": "rumqttc" });
                client
                    .publish(ATTRIBUTES, QoS::AtLeastOnce, false, attributes.to_string())
                    .await?;
                sent += 2;
            }
            Event::Incoming(Incoming::SubAck(ack))
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) =>
            {
                bail!("subscription to {RPC_REQUESTS} refused");
            }
            // QoS 1: Corral acknowledges once the data is on disk.
            Event::Incoming(Incoming::PubAck(_)) => acked += 1,
            Event::Incoming(Incoming::Publish(msg)) => {
                let Some(id) = msg.topic.strip_prefix(RPC_REQUEST_PREFIX) else {
                    continue;
                };
                let request: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
                let reply = answer(&request, started);
                println!("command {id}: {request} -> {reply}");
                // The reply goes to the same request id; it becomes the job's result.
                let topic = format!("{RPC_RESPONSE_PREFIX}{id}");
                client
                    .publish(topic, QoS::AtLeastOnce, false, reply.to_string())
                    .await?;
                sent += 1;
                answered += 1;
            }
            _ => {}
        }
        if sent > 0 && acked == sent && answered >= commands {
            println!("telemetry and attributes stored, {answered} command(s) answered");
            return Ok(());
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut options = MqttOptions::new(&args.client_id, &args.host, args.port);
    options.set_keep_alive(Duration::from_secs(30));
    // rumqttc checks the server certificate against --host, so use a name or address that is in
    // Corral's certificate (pki.hosts; 127.0.0.1 and localhost are by default).
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls_config(&args)?),
    )));
    let (client, mut events) = AsyncClient::new(options, 16);

    match tokio::time::timeout(args.timeout, run(&client, &mut events, args.commands)).await {
        Ok(result) => result?,
        Err(_) => bail!("not done within {} s", args.timeout.as_secs()),
    }

    // A clean DISCONNECT: the device is marked offline at once rather than at keep-alive expiry.
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    Ok(())
}
