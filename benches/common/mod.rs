//! What the benchmarks share: a real `App` on loopback ports (HTTPS off, rate limits off, so
//! the figures measure Corral rather than its guards), an admin API client, an empty fleet to
//! put the devices in, and command-line option parsing.

use corral::app::{App, Listeners};
use corral::client::ApiClient;
use serde_json::{Value, json};

pub struct BenchApp {
    pub app: App,
    pub api: ApiClient,
    /// The fleet's JSON record (`fleet["id"]`).
    pub fleet: Value,
    /// Holds the data directory until the bench ends.
    pub _dir: tempfile::TempDir,
}

#[allow(dead_code)] // Each bench is its own crate; the OTA bench uses `start_with` only.
pub async fn start() -> anyhow::Result<BenchApp> {
    start_with(|_| {}).await
}

/// `start`, with the configuration changed by `f` first.
pub async fn start_with(f: impl FnOnce(&mut corral::config::Config)) -> anyhow::Result<BenchApp> {
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
    config.limits.device_messages_per_sec = 0;
    f(&mut config);
    let app = App::start(config.clone(), Listeners::bind(&config)?).await?;
    let api = ApiClient::new(&format!("http://{}", app.addrs.http), Some(key), None)?;
    let ws: Value = api.post("/workspaces", &json!({"name": "bench"})).await?;
    let fleet: Value = api
        .post(
            "/fleets",
            &json!({"workspace_id": ws["id"], "name": "bench"}),
        )
        .await?;
    Ok(BenchApp {
        app,
        api,
        fleet,
        _dir: dir,
    })
}

/// The value after `name` on the command line (`--devices 1000`), or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The CPU model this runs on (`/proc/cpuinfo`), for the report's machine line.
#[allow(dead_code)] // Not every bench prints it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

/// Creates `n` devices named `{prefix}{i}` in a fleet over REST; returns their access tokens.
#[allow(dead_code)] // Not every bench makes devices.
pub async fn create_devices(
    api: &ApiClient,
    fleet: &Value,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let d: Value = api
            .post(
                "/devices",
                &json!({"fleet_id": fleet, "name": format!("{prefix}{i}")}),
            )
            .await?;
        tokens.push(
            d["credentials"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    Ok(tokens)
}
