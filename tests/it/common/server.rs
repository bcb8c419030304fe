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
        Self::spawn_args(data_dir, admin_key, &[], env)
    }

    /// As `spawn_with`, with extra arguments to `serve`.
    pub fn spawn_args(
        data_dir: &Path,
        admin_key: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = command(data_dir, admin_key, args, env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corral");
        let stderr = child.stderr.take().expect("stderr");
        match Self::await_running(stderr, child, data_dir) {
            Ok(srv) => srv,
            Err((code, logs)) => {
                panic!("corral did not report that it is running (exit {code:?}):\n{logs}")
            }
        }
    }

    /// Starts `corral serve` and returns it once running, or its exit code and log if it ends
    /// first.
    pub fn start_or_exit(
        data_dir: &Path,
        admin_key: &str,
        env: &[(&str, &str)],
    ) -> Result<Server, (Option<i32>, String)> {
        let mut child = command(data_dir, admin_key, &[], env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corral");
        let stderr = child.stderr.take().expect("stderr");
        Self::await_running(stderr, child, data_dir)
    }
}

/// `corral serve` on port-0 listeners for `data_dir`, not yet started.
fn command(data_dir: &Path, admin_key: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin());
    c.args(["serve", "--log-format", "json"])
        .args(args)
        .env_clear()
        .env("CORRAL_DATA_DIR", data_dir)
        .env("CORRAL_ADMIN_KEY", admin_key)
        .env("CORRAL_MQTT__TLS_LISTEN", "127.0.0.1:0")
        .env("CORRAL_MQTT__WORKERS", "1")
        .env("CORRAL_HTTP__LISTEN", "127.0.0.1:0")
        .env("CORRAL_HTTPS__ENABLED", "false")
        .env("CORRAL_LOG__LEVEL", "info")
        // Test machines can be short of disk; the reserve is tested on its own.
        .env("CORRAL_STORE__MIN_FREE_MB", "16")
        .envs(env.iter().copied());
    c
}

/// Runs `corral serve` on `data_dir` expecting it to refuse to start: returns its exit code and
/// everything it wrote to standard error. Panics if it is still running after 60 s.
pub fn refused_start(
    data_dir: &Path,
    admin_key: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut child = command(data_dir, admin_key, args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corral");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
                .expect("read stderr");
            return (status.code(), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("corral kept running on a data directory it should refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Server {
    /// Reads the child's log until it reports its addresses.
    fn await_running(
        stderr: std::process::ChildStderr,
        mut child: Child,
        data_dir: &Path,
    ) -> Result<Server, (Option<i32>, String)> {
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
            let status = child.wait().ok().and_then(|s| s.code());
            // Whatever it wrote before ending.
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                startup_logs.push(line);
            }
            return Err((status, startup_logs.join("\n")));
        };
        Ok(Server {
            child,
            http,
            mqtt_tls,
            data_dir: data_dir.to_path_buf(),
            logs: rx,
            startup_logs,
        })
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
        // Corral gives up a stop after 20 s (a full disk), then ends its runtime: within
        // systemd's default 30 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "corral did not stop within 30 s of SIGTERM"
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
