//! Test harness: a real `App` on 127.0.0.1:0 ports with a temp data dir and its own generated CA,
//! a REST client that trusts it, and real MQTT clients (rumqttc, v3.1.1 and v5) over TLS.

#![allow(dead_code)]

pub mod device_data;
pub mod fixture;
pub mod mqtt;
pub mod server;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use corral::app::{App, Listeners};
use corral::client::ApiClient;
use corral::config::Config;
use rumqttc::{TlsConfiguration, Transport};
use serde_json::{Value, json};

pub struct TestApp {
    pub app: Option<App>,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub admin_key: String,
    pub api: ApiClient,
    pub ca_pem: String,
}

pub fn test_config(dir: &std::path::Path, admin_key: &str) -> Config {
    let mut c = Config {
        data_dir: dir.join("data"),
        admin_key: Some(admin_key.to_string()),
        ..Default::default()
    };
    c.mqtt.tls_listen = "127.0.0.1:0".into();
    c.mqtt.plain_listen = "127.0.0.1:0".into();
    c.mqtt.workers = 1;
    c.http.listen = "127.0.0.1:0".into();
    c.https.listen = "127.0.0.1:0".into();
    c.pki.hosts = vec!["localhost".into(), "127.0.0.1".into()];
    c.store.cache_capacity_mb = 16;
    // Test machines can be short of disk; the reserve is tested on its own.
    c.store.min_free_mb = 16;
    c
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestApp {
        corral::pki::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_key = corral::auth::new_api_key();
        let mut config = test_config(dir.path(), &admin_key);
        f(&mut config);
        let app = App::start(config.clone(), Listeners::bind(&config).expect("bind"))
            .await
            .expect("start");
        let api = ApiClient::new(
            &format!("http://{}", app.addrs.http),
            Some(admin_key.clone()),
            None,
        )
        .expect("client");
        let ca_pem = app.services.pki.ca_pem().to_string();
        TestApp {
            app: Some(app),
            dir,
            config,
            admin_key,
            api,
            ca_pem,
        }
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().expect("running")
    }

    pub fn http_base(&self) -> String {
        format!("http://{}", self.app().addrs.http)
    }

    pub fn mqtt_port(&self) -> u16 {
        self.app().addrs.mqtt_tls.port()
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.expect("clean shutdown");
        }
    }

    /// Creates a workspace, a fleet and a device; returns (device json, token).
    pub async fn device(&self, name: &str) -> (Value, String) {
        let ws: Value = self
            .api
            .post("/workspaces", &json!({"name": format!("ws-{name}")}))
            .await
            .expect("ws");
        let fleet: Value = self
            .api
            .post(
                "/fleets",
                &json!({"workspace_id": ws["id"], "name": "fleet"}),
            )
            .await
            .expect("fleet");
        let d: Value = self
            .api
            .post("/devices", &json!({"fleet_id": fleet["id"], "name": name}))
            .await
            .expect("device");
        let token = d["credentials"]["token"]
            .as_str()
            .expect("token")
            .to_string();
        (d["device"].clone(), token)
    }

    pub fn tls(&self) -> Transport {
        tls_transport(&self.ca_pem)
    }

    pub fn v3_options(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.mqtt_port());
        o.set_credentials(username, password);
        o.set_transport(self.tls());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub fn v5_options(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", self.mqtt_port());
        o.set_credentials(username, password);
        o.set_transport(self.tls());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn telemetry(&self, device_id: &str, query: &[(&str, String)]) -> Value {
        self.api
            .get(&format!("/devices/{device_id}/telemetry"), query)
            .await
            .expect("telemetry")
    }
}

pub fn tls_transport(ca_pem: &str) -> Transport {
    let cfg = corral::pki::client_config_trusting(ca_pem).expect("client tls");
    Transport::Tls(TlsConfiguration::Rustls(Arc::new(cfg)))
}

/// Polls `f` until it returns Some, for up to `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One REST call with an API key: the status and the JSON body (`Null` when there is none).
/// The client gives up after 30 s, so a hung server fails the test with a message.
pub async fn call(
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
        .request(
            method.parse().expect("method"),
            format!("{base}/api/v1{path}"),
        )
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("send");
    let s = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}
