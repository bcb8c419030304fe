//! Local commands: `serve` (logging, signals, banner), `init`, `config check`, `ca show` and
//! `healthcheck`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::app::{App, Listeners};
use crate::auth::Bootstrap;
use crate::config::{Config, LogFormat};

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    Config::load(path.as_deref(), std::env::vars())
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n  {}", e.problems.join("\n  ")))
}

pub fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    // A bare level also quiets the libraries' start-up chatter; a full directive is taken as is.
    let directive = if level.contains('=') {
        level.to_string()
    } else {
        format!(
            "{level},ntex_server=warn,ntex_rt=warn,ntex_service=warn,ntex_io=warn,ntex_net=warn,rustls=error"
        )
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(directive))?;
    // Colour only on a terminal: journald, files and `docker logs` would keep the escape codes.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// Longest a graceful stop may take before Corral gives up and exits non-zero, leaving the
/// write-ahead log to replay at the next start. Below systemd's default `TimeoutStopSec` (30 s)
/// and Docker's stop grace period would need raising to match (docs/operations.md, "Shutdown").
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

pub fn serve(
    path: Option<PathBuf>,
    log_format: Option<LogFormat>,
    accept_data_loss: bool,
) -> anyhow::Result<ExitCode> {
    let mut config = load(path)?;
    config.accept_data_loss = accept_data_loss;
    init_logging(&config.log.level, log_format.unwrap_or(config.log.format))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("corral")
        .build()?;
    let code = rt.block_on(async move {
        let started = std::time::Instant::now();
        let listeners = Listeners::bind(&config)?;
        let data_dir = config.data_dir.clone();
        let app = App::start(config, listeners).await?;
        banner(&app, &data_dir, started.elapsed());
        wait_for_signal().await?;
        tracing::info!("shutting down: refusing new connections, finishing in-flight writes");
        match tokio::time::timeout(STOP_DEADLINE, app.shutdown()).await {
            Ok(Ok(())) => {
                tracing::info!("stopped cleanly");
                anyhow::Ok(ExitCode::SUCCESS)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "the stop was not clean; the write-ahead log replays at the next start");
                Ok(ExitCode::FAILURE)
            }
            Err(_) => {
                tracing::error!(
                    seconds = STOP_DEADLINE.as_secs(),
                    "the stop did not finish in time (is the disk full?); exiting anyway: the write-ahead log replays at the next start"
                );
                Ok(ExitCode::FAILURE)
            }
        }
    });
    // Work stuck on a full disk must not hold the process: the log covers it.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

fn banner(app: &App, data_dir: &std::path::Path, took: std::time::Duration) {
    let a = &app.addrs;
    let config = &app.services.config;
    tracing::info!(
        mqtt_tls = %a.mqtt_tls,
        mqtt_plain = %a.mqtt_plain.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        http = %a.http,
        https = %a.https.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        data_dir = %data_dir.display(),
        startup_ms = took.as_millis() as u64,
        "corral is running"
    );
    // For a person at the terminal (or reading the container log): addresses they can open.
    eprintln!(
        "\n{}\n",
        super::banner::urls(a, config, data_dir).join("\n")
    );
    if let Bootstrap::Generated(key) = &app.bootstrap {
        // Printed once, on the terminal (or container log), not through the logger: secrets are
        // never logged. Only its SHA-256 is stored.
        eprintln!(
            "================================================================\n\
             First start: an admin API key was generated. It is shown only now.\n\n    \
             {key}\n\n\
             Use it with the CLI:  export CORRAL_API_KEY={key}\n\
             CA for devices:       {}\n\
             ================================================================\n",
            data_dir.join("pki/ca.pem").display()
        );
    }
    if let Some(token) = &app.setup_token {
        // The web UI has no user yet: a one-time link creates the first admin. Shown on the
        // terminal only, like the key above.
        let links = super::banner::setup_links(a, config, token);
        eprintln!(
            "================================================================\n\
             No web UI user exists yet. Create the first admin (link valid once, for a limited time):\n\n    \
             {}\n\n\
             (Or: corral user create NAME --admin, with the admin API key.)\n\
             ================================================================\n",
            links.join("\n    ")
        );
    }
}

pub fn init(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let (store, pki, _) = crate::app::open_state(&config, metrics).await?;
        let admin = config.admin_key_secret().map_err(anyhow::Error::msg)?;
        let ports = store.ports();
        let audit = std::sync::Arc::new(crate::audit::AuditLog::new(
            ports.operators.clone(),
            config.audit.max_entries,
        ));
        let auth = crate::auth::AuthService::new(
            ports.operators,
            ports.registry,
            audit,
            config.auth.clone(),
        );
        match auth.bootstrap(admin.as_deref()).await? {
            Bootstrap::Generated(key) => println!("admin API key (shown once): {key}"),
            Bootstrap::Configured => println!("admin API key: the configured one"),
            Bootstrap::Existing => println!("admin API key: already set up"),
        }
        store.flush_now()?;
        println!("data directory: {}", config.data_dir.display());
        println!("CA certificate: {}", pki.dir().join("ca.pem").display());
        Ok(ExitCode::SUCCESS)
    })
}

pub fn check(path: Option<PathBuf>, print: bool) -> ExitCode {
    match Config::load(path.as_deref(), std::env::vars()) {
        Ok(c) => {
            if print {
                print!("{}", c.to_masked_toml());
            }
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{} problem(s) found:", e.problems.len());
            for p in &e.problems {
                eprintln!("  - {p}");
            }
            ExitCode::FAILURE
        }
    }
}

pub fn ca_show(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    let file = config.data_dir.join("pki").join("ca.pem");
    let pem = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "cannot read {} (run `corral init` or start the server once)",
            file.display()
        )
    })?;
    print!("{pem}");
    Ok(ExitCode::SUCCESS)
}

/// The `/healthz` URL of the server the configuration at `path` (and the environment)
/// describes, on loopback: plain HTTP always serves health.
pub fn healthz_url(path: Option<PathBuf>) -> anyhow::Result<String> {
    let config = load(path)?;
    Ok(format!(
        "http://{}/healthz",
        local_addr(&config.http.listen)?
    ))
}

/// Where a local client reaches a listener bound to `listen`: a wildcard address is asked on
/// the loopback address of its family.
fn local_addr(listen: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("http.listen = {listen:?} is not an address and port"))?;
    anyhow::ensure!(
        addr.port() != 0,
        "http.listen = {listen:?} picks a port at start; pass --url"
    );
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()))
}

pub async fn healthcheck(url: &str) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!("unhealthy: HTTP {}", r.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::local_addr;

    #[test]
    fn the_health_check_asks_loopback_for_a_wildcard_listener() {
        let at = |l: &str| {
            local_addr(l)
                .map(|a| a.to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(at("0.0.0.0:8080"), Ok("127.0.0.1:8080".into()));
        assert_eq!(at("[::]:9090"), Ok("[::1]:9090".into()));
        assert_eq!(at("10.1.2.3:80"), Ok("10.1.2.3:80".into()));
        assert!(at("127.0.0.1:0").is_err_and(|e| e.contains("--url")));
        assert!(at("localhost:80").is_err());
    }
}
