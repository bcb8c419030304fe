//! The `corral` command line against a real server: config commands, init and `ca show`, the
//! admin commands (tables and `--json`), and reading telemetry published over MQTT/TLS.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::server::{Server, bin};
use common::tls_transport;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

fn corral(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).env_clear();
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run corral")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn config_print_default_and_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let printed = ok(&corral(&["config", "print-default"], &[]));
    assert!(printed.contains("[mqtt]") && printed.contains("tls_listen = \"0.0.0.0:8883\""));
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &printed).expect("write");
    ok(&corral(
        &["config", "check", good.to_str().expect("utf8")],
        &[],
    ));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[mqtt]\ntls_listen = \"nowhere\"\nmax_packet_size = 1\n[pki]\nhosts = []\n",
    )
    .expect("write");
    let out = corral(
        &["config", "check", bad.to_str().expect("utf8")],
        &[("CORRAL_STORE__CACHE_CAPACITY_MB", "0")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4 problem(s)"), "{err}");
    for needle in [
        "mqtt.tls_listen",
        "mqtt.max_packet_size",
        "pki.hosts",
        "store.cache_capacity_mb",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    let missing = corral(&["config", "check", "/nonexistent/corral.toml"], &[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/corral.toml"));
}

#[test]
fn init_creates_pki_and_ca_show_prints_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env = [("CORRAL_DATA_DIR", data.to_str().expect("utf8"))];
    let out = ok(&corral(&["init"], &env));
    assert!(out.contains("admin API key (shown once): crl_"), "{out}");
    let again = ok(&corral(&["init"], &env));
    assert!(again.contains("already set up"), "{again}");
    let ca = ok(&corral(&["ca", "show"], &env));
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        ca,
        std::fs::read_to_string(data.join("pki/ca.pem")).expect("ca")
    );
    // A store path that is not a store is reported with its path, never replaced.
    let bogus = dir.path().join("bogus");
    std::fs::create_dir_all(bogus.join("store")).expect("mkdir");
    std::fs::write(bogus.join("store/notes.txt"), "mine").expect("write");
    let out = corral(
        &["init"],
        &[("CORRAL_DATA_DIR", bogus.to_str().expect("utf8"))],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(bogus.join("store").to_str().expect("utf8"))
    );
    assert!(bogus.join("store/notes.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_through_the_cli() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn(dir.path(), &key);
    let base = srv.base();
    let env = [
        ("CORRAL_SERVER", base.as_str()),
        ("CORRAL_API_KEY", key.as_str()),
    ];
    let run = |args: &[&str]| corral(args, &env);

    ok(&run(&["workspace", "create", "Plant"]));
    ok(&run(&[
        "fleet",
        "create",
        "sensors",
        "--workspace",
        "Plant",
    ]));
    let created: Value = serde_json::from_str(&ok(&run(&[
        "device", "create", "thermo-1", "--fleet", "sensors", "--json",
    ])))
    .expect("json");
    let token = created["credentials"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let human = ok(&run(&[
        "device", "create", "thermo-2", "--fleet", "sensors",
    ]));
    assert!(human.contains("access token"), "{human}");

    let list = ok(&run(&["device", "list"]));
    let header = list.lines().next().expect("header");
    assert!(
        header.starts_with("ID") && header.contains("STATUS"),
        "{list}"
    );
    assert!(list.contains("thermo-1") && list.contains("thermo-2") && list.contains("offline"));

    let mut opts = MqttOptions::new("", "127.0.0.1", srv.mqtt_tls.port());
    opts.set_credentials(token.as_str(), "");
    opts.set_transport(tls_transport(&srv.ca_pem()));
    let (client, mut el) = AsyncClient::new(opts, 8);
    client
        .publish(
            "v1/devices/me/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"temperature":21.5}"#,
        )
        .await
        .expect("publish");
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.expect("poll") {
                return;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "no PUBACK");

    let show = ok(&run(&["device", "show", "thermo-1"]));
    assert!(show.contains("online"), "{show}");
    let telemetry = ok(&run(&["telemetry", "thermo-1"]));
    assert!(
        telemetry.contains("temperature") && telemetry.contains("21.5"),
        "{telemetry}"
    );
    let latest: Value =
        serde_json::from_str(&ok(&run(&["telemetry", "thermo-1", "--latest", "--json"])))
            .expect("json");
    assert_eq!(latest["data"]["temperature"]["value"], 21.5);

    ok(&run(&[
        "device",
        "update",
        "thermo-2",
        "--label",
        "spare",
        "--disable",
    ]));
    let d: Value =
        serde_json::from_str(&ok(&run(&["device", "show", "thermo-2", "--json"]))).expect("json");
    assert_eq!(
        (d["label"].as_str(), d["enabled"].as_bool()),
        (Some("spare"), Some(false))
    );
    ok(&run(&["device", "delete", "thermo-2"]));
    let out = run(&["device", "show", "thermo-2"]);
    assert!(!out.status.success());
    let out = run(&["fleet", "delete", "sensors"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_empty"));

    // Without a key the CLI reports the server's refusal.
    let out = corral(&["workspace", "list"], &[("CORRAL_SERVER", base.as_str())]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    let ws: Value =
        serde_json::from_str(&ok(&run(&["workspace", "list", "--json"]))).expect("json");
    assert_eq!(ws[0]["name"], "Plant");

    // The health check command used by the container image.
    ok(&corral(
        &["healthcheck", "--url", &format!("{base}/healthz")],
        &[],
    ));
    assert!(
        !corral(&["healthcheck", "--url", "http://127.0.0.1:9/healthz"], &[])
            .status
            .success()
    );
}
