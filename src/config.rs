//! Configuration: the `Config` type, its documented defaults (`assets/corral.toml`), loading from
//! file and `CORRAL_*` environment, and validation that reports every problem at once.
//! It owns no I/O beyond reading the config file and secret files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The documented default configuration file, printed by `corral config print-default`.
pub const DEFAULT_TOML: &str = include_str!("../assets/corral.toml");

/// Environment variables with the `CORRAL_` prefix that are not configuration keys: they belong
/// to the command line (`--config`, `--server`, `--api-key`, `--ca-file`).
const RESERVED_ENV: &[&str] = &["CONFIG", "SERVER", "API_KEY", "CA_FILE"];

/// Everything Corral reads from its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the store, the PKI material and instance state.
    pub data_dir: PathBuf,
    /// Bootstrap admin API key (prefer `admin_key_file`).
    pub admin_key: Option<String>,
    /// File holding the bootstrap admin API key.
    pub admin_key_file: Option<PathBuf>,
    pub log: LogConfig,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub https: HttpsConfig,
    pub pki: PkiConfig,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    pub credentials: CredentialsConfig,
    pub audit: AuditConfig,
    pub backup: BackupConfig,
    pub retention: RetentionConfig,
    pub jobs: JobsConfig,
    pub ota: OtaConfig,
    pub auth: AuthConfig,
    pub ui: UiConfig,
    /// `serve --accept-data-loss`: open a damaged or incomplete data directory anyway. Never
    /// read from a file or the environment: it must be asked for on each start.
    #[serde(skip)]
    pub accept_data_loss: bool,
}

/// `[retention]`: how long telemetry is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub default_days: u32,
    pub sweep_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            default_days: 0,
            sweep_interval_secs: 3600,
        }
    }
}

/// `[limits]`: rates and sizes devices and clients may not exceed. 0 disables a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub device_messages_per_sec: u32,
    pub device_message_burst: u32,
    pub ip_connects_per_sec: u32,
    pub ip_connect_burst: u32,
    /// Distinct telemetry keys one message may carry, across its points. Real devices send
    /// tens to a few hundred; a message over it is refused whole (MQTT 5 PUBACK 0x99).
    pub telemetry_keys_per_message: u32,
    /// Distinct telemetry keys one device may have, each tag's keys counted. A message adding
    /// keys past it is refused whole (MQTT 5 PUBACK 0x97); keys the device has stay accepted.
    /// It bounds what one device's tag listing, latest values and aggregates must read.
    pub telemetry_keys_per_device: u32,
    /// Device messages handled at once, across every connection and transport. Past it, an
    /// MQTT connection whose message waits for room is not read further until that message
    /// is admitted, and HTTP device requests wait their turn.
    pub messages_in_flight: u32,
    /// Sub-devices one gateway may create (the gateway API). A message naming a new one past
    /// it is refused (MQTT 5 PUBACK 0x97); those it has keep working.
    pub gateway_sub_devices: u32,
}

/// `[credentials]`: device credential lifetimes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialsConfig {
    pub rotation_grace_secs: u64,
    pub device_cert_validity_days: u32,
}

/// `[backup]`: scheduled snapshots of the whole data directory, kept in rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Hours between snapshots; 0 turns them off.
    pub interval_hours: u64,
    /// Snapshots kept; the oldest go first.
    pub keep: usize,
    /// Where they are written; empty means `<data_dir>/backups`.
    pub dir: PathBuf,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            interval_hours: 24,
            keep: 3,
            dir: PathBuf::new(),
        }
    }
}

impl BackupConfig {
    /// The directory snapshots go to.
    pub fn dir(&self, data_dir: &std::path::Path) -> PathBuf {
        if self.dir.as_os_str().is_empty() {
            data_dir.join("backups")
        } else {
            self.dir.clone()
        }
    }
}

/// `[audit]`: the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    pub max_entries: usize,
}

/// How an MQTT client id must relate to the device that logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientIdPolicy {
    /// Any client id (ThingsBoard's rule; its SDK sends an empty one).
    Any,
    /// With a client certificate, the client id must equal the certificate's common name.
    CertificateCn,
    /// The client id must equal the device's name, whatever the login method.
    DeviceName,
}

/// `[log]`: how Corral reports what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level or a full tracing filter directive.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// `[mqtt]`: the device listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub tls_listen: String,
    pub plain_enabled: bool,
    pub plain_listen: String,
    pub max_packet_size: u32,
    pub connect_timeout_secs: u16,
    pub max_inflight: u16,
    pub workers: usize,
    pub client_id_policy: ClientIdPolicy,
}

/// `[http]`: the plain HTTP listener, and the deadlines and connection caps of both HTTP
/// listeners (plain and TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// Seconds a client has to send a request's complete header, from its first byte (or from
    /// the opening of the connection, for the first request).
    pub header_timeout_secs: u64,
    /// Seconds a request body has to arrive completely, from the end of its header.
    pub body_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight and nothing received.
    pub idle_timeout_secs: u64,
    /// HTTP and HTTPS connections open at once, overall; 0 is no cap.
    pub max_connections: u32,
    /// HTTP and HTTPS connections open at once from one client address; 0 is no cap.
    pub max_connections_per_address: u32,
    /// Which clients get the web UI, sign-in and the admin REST API over plain HTTP.
    pub admin: PlainHttpAdmin,
}

/// Who may use the web UI, sign-in and the admin REST API over plain HTTP (where passwords,
/// API keys and session cookies would cross the network in clear). HTTPS always serves them;
/// the device API, provisioning, health, metrics and the CA are served over both to anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlainHttpAdmin {
    /// Clients on this machine only (a loopback address); others are sent to HTTPS.
    Loopback,
    /// Every client (a trusted network, or TLS ended by a reverse proxy).
    Any,
    /// No client, not even on this machine.
    None,
}

/// `[https]`: the TLS HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpsConfig {
    pub enabled: bool,
    pub listen: String,
}

/// `[pki]`: the generated CA and server certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PkiConfig {
    pub hosts: Vec<String>,
    pub ca_name: String,
    pub ca_validity_days: u32,
    pub server_validity_days: u32,
}

/// `[store]`: the embedded database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// sled's cache, measured in stored bytes: the memory it takes is several times larger.
    pub cache_capacity_mb: u64,
    pub group_commit_delay_ms: u64,
    /// Free space (MiB) below which device writes are refused; a start needs half of it.
    pub min_free_mb: u64,
}

/// Jobs settings (`[jobs]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Unfinished jobs a device may have; more are refused (409 `queue_full`).
    pub max_queued_per_device: usize,
    /// Lifetime of a job that gives none.
    pub default_ttl_secs: u64,
    /// How long a send waits for the device's PUBACK before it is retried.
    pub ack_timeout_secs: u64,
    /// Sends without PUBACK before the job fails.
    pub max_attempts: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_queued_per_device: 100,
            default_ttl_secs: 86_400,
            ack_timeout_secs: 10,
            max_attempts: 5,
        }
    }
}

/// Over-the-air updates (`[ota]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtaConfig {
    /// Largest package file accepted (MiB); a larger upload is refused with 413.
    pub max_package_mb: u64,
    /// Campaigns need another admin's approval before they start (a campaign may ask for it
    /// anyway).
    pub require_approval: bool,
    /// Offline signers' ed25519 public keys (base64 of the raw 32 bytes): manifests they
    /// signed are accepted (`PUT /packages/{id}/manifest`).
    pub manifest_keys: Vec<String>,
}

impl Default for OtaConfig {
    fn default() -> Self {
        Self {
            max_package_mb: 256,
            require_approval: false,
            manifest_keys: Vec::new(),
        }
    }
}

/// `[ui]`: the web UI.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// A map tile server for the dashboards' maps (`https://tiles.example.lan/{z}/{x}/{y}.png`),
    /// for sites that run one; without it, maps draw the world outline built into the binary,
    /// which needs no network. Its origin is added to the pages' `img-src`.
    pub tile_url: Option<String>,
}

impl UiConfig {
    /// The tile server's origin (`https://host:port`), for the content security policy.
    pub fn tile_origin(&self) -> Option<String> {
        let url = self.tile_url.as_deref()?;
        let (scheme, rest) = url.split_once("://")?;
        let host = rest.split('/').next()?;
        Some(format!("{scheme}://{host}"))
    }
}

/// `[auth]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub session_idle_mins: u64,
    pub session_max_hours: u64,
    pub login_attempts_per_min: u32,
    pub login_burst: u32,
    pub setup_token_mins: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_idle_mins: 30,
            session_max_hours: 12,
            login_attempts_per_min: 6,
            login_burst: 10,
            setup_token_mins: 60,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            admin_key: None,
            admin_key_file: None,
            log: LogConfig::default(),
            mqtt: MqttConfig::default(),
            http: HttpConfig::default(),
            https: HttpsConfig::default(),
            pki: PkiConfig::default(),
            store: StoreConfig::default(),
            limits: LimitsConfig::default(),
            credentials: CredentialsConfig::default(),
            audit: AuditConfig::default(),
            backup: BackupConfig::default(),
            retention: RetentionConfig::default(),
            jobs: JobsConfig::default(),
            ota: OtaConfig::default(),
            auth: AuthConfig::default(),
            ui: UiConfig::default(),
            accept_data_loss: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            device_messages_per_sec: 200,
            device_message_burst: 1000,
            ip_connects_per_sec: 100,
            ip_connect_burst: 1000,
            telemetry_keys_per_message: 1000,
            telemetry_keys_per_device: 10_000,
            messages_in_flight: 8192,
            gateway_sub_devices: 1000,
        }
    }
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            rotation_grace_secs: 86400,
            device_cert_validity_days: 825,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Human,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            tls_listen: "0.0.0.0:8883".into(),
            plain_enabled: false,
            plain_listen: "0.0.0.0:1883".into(),
            max_packet_size: 65536,
            connect_timeout_secs: 5,
            max_inflight: 64,
            workers: 0,
            client_id_policy: ClientIdPolicy::Any,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 1024,
            max_connections_per_address: 64,
            admin: PlainHttpAdmin::Loopback,
        }
    }
}

impl Default for HttpsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "0.0.0.0:8443".into(),
        }
    }
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            ca_name: "Corral Device CA".into(),
            ca_validity_days: 3650,
            server_validity_days: 825,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            cache_capacity_mb: 16,
            group_commit_delay_ms: 0,
            min_free_mb: 256,
        }
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigErrors {
    pub problems: Vec<String>,
}

impl Config {
    /// Loads defaults, then `file` (if any), then `CORRAL_*` variables from `env`, then validates.
    /// Secret files (`admin_key_file`) are read here so that a missing file is a config problem.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        match file {
            None => Self::parse("", "", env),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Self::parse(&text, &path.display().to_string(), env),
                Err(e) => Err(ConfigErrors {
                    problems: vec![format!("cannot read config file {}: {e}", path.display())],
                }),
            },
        }
    }

    /// `load` of a file's text: `origin` names the file in a syntax error.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        let mut table = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{origin}: {}", e.message()));
                return Err(ConfigErrors { problems });
            }
        };
        apply_env(&mut table, env, &mut problems);
        let config = deserialize_collecting(table, &mut problems);
        if let Some(c) = &config {
            c.validate(&mut problems);
        }
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigErrors { problems }),
        }
    }

    fn validate(&self, problems: &mut Vec<String>) {
        if let Some(url) = &self.ui.tile_url {
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            let host_ok = self.ui.tile_origin().is_some_and(|o| {
                !o.ends_with("://")
                    && o.chars()
                        .all(|c| c.is_ascii_graphic() && c != '\'' && c != ';')
            });
            let holes = ["{z}", "{x}", "{y}"].iter().all(|h| url.contains(h));
            if !scheme_ok || !host_ok || !holes {
                problems.push(
                    "ui.tile_url: an http:// or https:// URL with {z}, {x} and {y}, e.g. https://tiles.example.lan/{z}/{x}/{y}.png".into(),
                );
            }
        }
        if !(1..=65_536).contains(&self.ota.max_package_mb) {
            problems.push("ota.max_package_mb: 1 to 65536".into());
        }
        let addr = |key: &str, v: &str, problems: &mut Vec<String>| {
            if v.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "{key}: \"{v}\" is not an address like 0.0.0.0:8883"
                ));
            }
        };
        addr("mqtt.tls_listen", &self.mqtt.tls_listen, problems);
        if !(1..=36500).contains(&self.credentials.device_cert_validity_days) {
            problems.push("credentials.device_cert_validity_days: must be 1 to 36500".into());
        }
        if self.retention.sweep_interval_secs < 10 {
            problems.push("retention.sweep_interval_secs: at least 10".into());
        }
        if self.audit.max_entries < 100 {
            problems.push("audit.max_entries: at least 100".into());
        }
        addr("mqtt.plain_listen", &self.mqtt.plain_listen, problems);
        addr("http.listen", &self.http.listen, problems);
        for (key, v) in [
            ("http.header_timeout_secs", self.http.header_timeout_secs),
            ("http.body_timeout_secs", self.http.body_timeout_secs),
            ("http.idle_timeout_secs", self.http.idle_timeout_secs),
        ] {
            if !(1..=86_400).contains(&v) {
                problems.push(format!("{key}: {v} is outside 1..=86400"));
            }
        }
        addr("https.listen", &self.https.listen, problems);
        // MQTT 5 §2.2.3: the largest encodable packet is 268,435,455 bytes; below 1 KiB the
        // ThingsBoard SDKs cannot even send their session-limits request.
        if !(1024..=268_435_455).contains(&self.mqtt.max_packet_size) {
            problems.push(format!(
                "mqtt.max_packet_size: {} is outside 1024..=268435455",
                self.mqtt.max_packet_size
            ));
        }
        if self.mqtt.connect_timeout_secs == 0 {
            problems.push("mqtt.connect_timeout_secs: must be at least 1".into());
        }
        if self.mqtt.max_inflight == 0 {
            problems.push("mqtt.max_inflight: must be at least 1".into());
        }
        if self.pki.hosts.is_empty() {
            problems.push("pki.hosts: at least one host name or IP address is needed".into());
        }
        for h in &self.pki.hosts {
            if h.trim().is_empty() || h.contains(char::is_whitespace) {
                problems.push(format!(
                    "pki.hosts: \"{h}\" is not a host name or IP address"
                ));
            }
        }
        if self.pki.ca_validity_days == 0 || self.pki.server_validity_days == 0 {
            problems.push("pki: validity days must be at least 1".into());
        }
        if self.pki.server_validity_days > self.pki.ca_validity_days {
            problems.push("pki.server_validity_days: cannot exceed ca_validity_days".into());
        }
        if self.backup.interval_hours > 0 && self.backup.keep == 0 {
            problems
                .push("backup.keep: must be at least 1 while backup.interval_hours is set".into());
        }
        if self.store.cache_capacity_mb == 0 {
            problems.push("store.cache_capacity_mb: must be at least 1".into());
        }
        if self.store.group_commit_delay_ms > 1000 {
            problems.push("store.group_commit_delay_ms: at most 1000".into());
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            problems.push(format!(
                "log.level: \"{}\" is not a valid filter: {e}",
                self.log.level
            ));
        }
        if self.admin_key.is_some() && self.admin_key_file.is_some() {
            problems.push("admin_key and admin_key_file are both set; keep one".into());
        }
        match self.admin_key_secret() {
            Ok(Some(k)) if k.len() < 32 => {
                problems.push("admin key: must be at least 32 characters".into())
            }
            Err(e) => problems.push(e),
            _ => {}
        }
    }

    /// The bootstrap admin key from `admin_key` or the file named by `admin_key_file`.
    pub fn admin_key_secret(&self) -> Result<Option<String>, String> {
        if let Some(k) = &self.admin_key {
            return Ok(Some(k.trim().to_string()));
        }
        match &self.admin_key_file {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|e| format!("admin_key_file: cannot read {}: {e}", p.display())),
        }
    }

    /// The configuration as TOML with secrets masked, for `corral config check --print`.
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        if c.admin_key.is_some() {
            c.admin_key = Some("********".into());
        }
        toml::to_string_pretty(&c).unwrap_or_default()
    }
}

/// Writes `CORRAL_KEY` and `CORRAL_SECTION__KEY` variables into `table`.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<String>,
) {
    // Sorted so that the reported problems are deterministic.
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("CORRAL_"))
        .collect();
    for (name, raw) in vars {
        let rest = &name["CORRAL_".len()..];
        if RESERVED_ENV.contains(&rest) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) || path.len() > 2 {
            problems.push(format!("{name}: not a configuration variable"));
            continue;
        }
        // A value that parses as TOML (a number, a boolean, an array) keeps its type; anything
        // else is a string, so paths and host names need no quoting.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        insert_path(table, &path, value, &name, problems);
    }
}

fn insert_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
    name: &str,
    problems: &mut Vec<String>,
) {
    match path {
        [last] => {
            table.insert(last.clone(), value);
        }
        [section, rest @ ..] => {
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => insert_path(t, rest, value, name, problems),
                _ => problems.push(format!("{name}: \"{section}\" is not a section")),
            }
        }
        [] => {}
    }
}

/// Deserializes section by section so that one bad section does not hide problems in another.
fn deserialize_collecting(table: toml::Table, problems: &mut Vec<String>) -> Option<Config> {
    match Config::deserialize(toml::Value::Table(table.clone())) {
        Ok(c) => Some(c),
        Err(_) => {
            let mut top = toml::Table::new();
            for (key, value) in table {
                let res = match key.as_str() {
                    "log" => LogConfig::deserialize(value).map(drop),
                    "mqtt" => MqttConfig::deserialize(value).map(drop),
                    "http" => HttpConfig::deserialize(value).map(drop),
                    "https" => HttpsConfig::deserialize(value).map(drop),
                    "pki" => PkiConfig::deserialize(value).map(drop),
                    "store" => StoreConfig::deserialize(value).map(drop),
                    "limits" => LimitsConfig::deserialize(value).map(drop),
                    "credentials" => CredentialsConfig::deserialize(value).map(drop),
                    "audit" => AuditConfig::deserialize(value).map(drop),
                    "retention" => RetentionConfig::deserialize(value).map(drop),
                    "jobs" => JobsConfig::deserialize(value).map(drop),
                    "ota" => OtaConfig::deserialize(value).map(drop),
                    "auth" => AuthConfig::deserialize(value).map(drop),
                    "ui" => UiConfig::deserialize(value).map(drop),
                    "data_dir" | "admin_key" | "admin_key_file" => {
                        top.insert(key.clone(), value);
                        continue;
                    }
                    _ => {
                        problems.push(format!("unknown key `{key}`"));
                        continue;
                    }
                };
                if let Err(e) = res {
                    problems.push(format!("[{key}]: {}", e.message().trim()));
                }
            }
            if let Err(e) = Config::deserialize(toml::Value::Table(top)) {
                problems.push(e.message().trim().to_string());
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn printed_default_parses_back_to_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("corral.toml");
        std::fs::write(&path, DEFAULT_TOML).expect("write");
        let loaded = Config::load(Some(&path), Vec::new()).expect("default file is valid");
        assert_eq!(loaded, Config::default());
    }

    #[test]
    fn env_overrides_file_with_types() {
        let c = Config::load(
            None,
            env(&[
                ("CORRAL_DATA_DIR", "/data"),
                ("CORRAL_MQTT__PLAIN_ENABLED", "true"),
                ("CORRAL_MQTT__MAX_PACKET_SIZE", "4096"),
                ("CORRAL_PKI__HOSTS", r#"["corral.lan", "10.0.0.5"]"#),
                ("CORRAL_SERVER", "http://x"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/data"));
        assert!(c.mqtt.plain_enabled);
        assert_eq!(c.mqtt.max_packet_size, 4096);
        assert_eq!(c.pki.hosts, vec!["corral.lan", "10.0.0.5"]);
        let c = Config::load(
            None,
            env(&[
                ("CORRAL_HTTP__HEADER_TIMEOUT_SECS", "3"),
                ("CORRAL_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "8"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.http.header_timeout_secs, 3);
        assert_eq!(c.http.max_connections_per_address, 8);
        let err = Config::load(None, env(&[("CORRAL_HTTP__BODY_TIMEOUT_SECS", "0")]))
            .expect_err("a zero deadline");
        assert!(err.problems[0].contains("http.body_timeout_secs"), "{err}");
    }

    #[test]
    fn a_tile_server_is_checked_and_its_origin_allowed() {
        let c = Config::load(
            None,
            env(&[(
                "CORRAL_UI__TILE_URL",
                "https://tiles.example.lan:8443/osm/{z}/{x}/{y}.png",
            )]),
        )
        .expect("valid");
        assert_eq!(
            c.ui.tile_origin().as_deref(),
            Some("https://tiles.example.lan:8443")
        );
        for bad in [
            "tiles.example.lan/{z}/{x}/{y}.png",
            "https://tiles.example.lan/{z}/{x}.png",
            "ftp://tiles.example.lan/{z}/{x}/{y}.png",
            "https://a;b/{z}/{x}/{y}",
        ] {
            let err =
                Config::load(None, env(&[("CORRAL_UI__TILE_URL", bad)])).expect_err("refused");
            assert!(err.problems[0].starts_with("ui.tile_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "colour = 1\n[mqtt]\ntls_listen = \"nowhere\"\nmax_packet_size = 10\n[http]\nlisten = 5\n[pki]\nhosts = []\n",
        )
        .expect("write");
        let err = Config::load(Some(&path), env(&[("CORRAL_NOPE__X", "1")])).expect_err("invalid");
        let all = err.problems.join("\n");
        assert!(all.contains("colour"), "{all}");
        assert!(all.contains("[http]"), "{all}");
        assert!(all.contains("nope"), "{all}");
        // Semantic problems need a structurally valid file; check them separately.
        std::fs::write(
            &path,
            "[mqtt]\ntls_listen = \"nowhere\"\nmax_packet_size = 10\n[pki]\nhosts = []\n",
        )
        .expect("write");
        let err = Config::load(Some(&path), Vec::new()).expect_err("invalid");
        assert_eq!(err.problems.len(), 3, "{:?}", err.problems);
    }

    #[test]
    fn admin_key_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "short\n").expect("write");
        let err = Config::load(
            None,
            env(&[("CORRAL_ADMIN_KEY_FILE", key.to_str().expect("utf8"))]),
        )
        .expect_err("too short");
        assert!(err.problems[0].contains("32"));
        let missing = Config::load(None, env(&[("CORRAL_ADMIN_KEY_FILE", "/nonexistent/k")]))
            .expect_err("missing");
        assert!(missing.problems[0].contains("cannot read"));
    }
}
