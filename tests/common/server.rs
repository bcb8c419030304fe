//! The real `corral` binary as a child process on port-0 listeners; the actual addresses are read
//! from its JSON start-up log line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub http: SocketAddr,
    pub mqtt_tls: SocketAddr,
    pub data_dir: PathBuf,
    pub logs: mpsc::Receiver<String>,
    /// Log lines up to and including "corral is running".
    pub startup_logs: Vec<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

impl Server {
    pub fn spawn(data_dir: &Path, admin_key: &str) -> Server {
        Self::spawn_with(data_dir, admin_key, &[])
    }

    /// As `spawn`, with extra `CORRAL_*` settings.
    pub fn spawn_with(data_dir: &Path, admin_key: &str, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(bin())
            .args(["serve", "--log-format", "json"])
            .env_clear()
            .env("CORRAL_DATA_DIR", data_dir)
            .env("CORRAL_ADMIN_KEY", admin_key)
            .env("CORRAL_MQTT__TLS_LISTEN", "127.0.0.1:0")
            .env("CORRAL_MQTT__WORKERS", "1")
            .env("CORRAL_HTTP__LISTEN", "127.0.0.1:0")
            .env("CORRAL_HTTPS__ENABLED", "false")
            .env("CORRAL_LOG__LEVEL", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corral");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut found = None;
        let mut startup_logs = Vec::new();
        while let Ok(line) =
            rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            startup_logs.push(line.clone());
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "corral is running" {
                let addr = |k: &str| v[k].as_str().and_then(|a| a.parse().ok());
                found = addr("http").zip(addr("mqtt_tls"));
                break;
            }
        }
        let Some((http, mqtt_tls)) = found else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("corral did not report that it is running: {startup_logs:?}");
        };
        Server {
            child,
            http,
            mqtt_tls,
            data_dir: data_dir.to_path_buf(),
            logs: rx,
            startup_logs,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("pki/ca.pem")).expect("ca.pem")
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "corral did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
