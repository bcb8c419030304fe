//! The `corral` command line against a real server: config commands, init and `ca show`, the
//! admin commands (tables and `--json`), and reading telemetry published over MQTT/TLS.

use crate::common;

use std::process::{Command, Output};
use std::time::Duration;

use common::server::{Server, bin};
use common::tls_transport;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

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

    // A gateway whose Thermometer sub-devices join another fleet, then an ordinary device again.
    ok(&run(&[
        "fleet",
        "create",
        "thermos",
        "--workspace",
        "Plant",
    ]));
    let gw: Value = serde_json::from_str(&ok(&run(&[
        "device",
        "create",
        "edge-gw",
        "--fleet",
        "sensors",
        "--type-fleet",
        "Thermometer=thermos",
        "--json",
    ])))
    .expect("json");
    assert_eq!(gw["device"]["gateway"]["role"], "gateway", "{gw}");
    assert!(
        gw["device"]["gateway"]["type_fleets"]["Thermometer"].is_string(),
        "{gw}"
    );
    let bad = run(&["device", "update", "edge-gw", "--type-fleet", "nofleet"]);
    assert!(!bad.status.success());
    let updated: Value = serde_json::from_str(&ok(&run(&[
        "device",
        "update",
        "edge-gw",
        "--not-gateway",
        "--json",
    ])))
    .expect("json");
    assert_eq!(updated["gateway"]["role"], "none", "{updated}");

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
    // Without --url it asks the port the server's own configuration names, here from the
    // environment as in a container, with the wildcard address asked on loopback.
    let port = base.rsplit(':').next().expect("port");
    ok(&corral(
        &["healthcheck"],
        &[("CORRAL_HTTP__LISTEN", &format!("0.0.0.0:{port}"))],
    ));
    // And from a configuration file.
    let conf = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        conf.path(),
        format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .expect("write");
    ok(&corral(
        &[
            "healthcheck",
            "--config",
            conf.path().to_str().expect("utf-8"),
        ],
        &[],
    ));
    assert!(
        !corral(&["healthcheck"], &[("CORRAL_HTTP__LISTEN", "127.0.0.1:9")])
            .status
            .success()
    );
}

/// Connects with a client certificate over MQTT 3.1.1 and publishes once; true when acked.
async fn publish_with_cert(srv: &Server, cert: &str, key: &str) -> bool {
    let mut opts = MqttOptions::new("", "127.0.0.1", srv.mqtt_tls.port());
    opts.set_transport(common::mqtt::tls_with_cert(&srv.ca_pem(), cert, key));
    let (client, mut el) = AsyncClient::new(opts, 8);
    let _ = client
        .publish(
            "v1/devices/me/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"v":1}"#,
        )
        .await;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_through_the_cli_and_no_secret_in_the_logs() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn(&dir.path().join("data"), &key);
    let base = srv.base();
    let env = [
        ("CORRAL_SERVER", base.as_str()),
        ("CORRAL_API_KEY", key.as_str()),
    ];
    let run = |args: &[&str]| corral(args, &env);
    let path = |name: &str| dir.path().join(name).to_str().expect("utf8").to_string();

    ok(&run(&["workspace", "create", "Plant"]));
    ok(&run(&["fleet", "create", "meters", "--workspace", "Plant"]));

    // --cert writes the key (0600), the certificate and the CA; the key never hits stdout.
    let out = ok(&run(&[
        "device",
        "create",
        "m-1",
        "--fleet",
        "meters",
        "--cert",
        "--out-dir",
        &path("certs"),
    ]));
    let key_pem = std::fs::read_to_string(path("certs/m-1.key")).expect("key file");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(path("certs/m-1.key"))
            .expect("meta")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let cert_pem = std::fs::read_to_string(path("certs/m-1.pem")).expect("cert file");
    assert!(publish_with_cert(&srv, &cert_pem, &key_pem).await);

    // MQTT basic credentials with the password from a file.
    std::fs::write(path("pw"), "s3cret-pass\n").expect("pw");
    ok(&run(&[
        "device",
        "create",
        "m-2",
        "--fleet",
        "meters",
        "--basic-username",
        "meter-two",
        "--basic-password-file",
        &path("pw"),
    ]));
    let creds = ok(&run(&["device", "credentials", "m-2"]));
    assert!(
        creds.contains("mqtt_basic") && creds.contains("meter-two"),
        "{creds}"
    );

    // sign-csr prints the certificate for a key the device keeps.
    let dev_key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&dev_key)
        .expect("csr")
        .pem()
        .expect("pem");
    std::fs::write(path("m-2.csr"), csr).expect("csr");
    let signed = ok(&run(&[
        "device",
        "sign-csr",
        "m-2",
        "--csr",
        &path("m-2.csr"),
    ]));
    assert!(
        signed.starts_with("-----BEGIN CERTIFICATE-----"),
        "{signed}"
    );
    assert!(publish_with_cert(&srv, &signed, &dev_key.serialize_pem()).await);

    // Revoking every credential of m-1 ends its certificate.
    let revoked = ok(&run(&["device", "revoke", "m-1"]));
    assert!(revoked.contains("revoked"), "{revoked}");
    assert!(!publish_with_cert(&srv, &cert_pem, &key_pem).await);

    // Fleet provisioning and manufacturer CAs.
    let prov: Value = serde_json::from_str(&ok(&run(&[
        "fleet",
        "provisioning",
        "set",
        "meters",
        "--strategy",
        "allow-create",
        "--json",
    ])))
    .expect("json");
    let secret = prov["secret"].as_str().expect("secret").to_string();
    let shown = ok(&run(&["fleet", "provisioning", "show", "meters"]));
    assert!(
        shown.contains("allow_create_new_devices") && !shown.contains(&secret),
        "{shown}"
    );
    let resp: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/provision"))
        .json(
            &serde_json::json!({"deviceName": "m-3", "provisionDeviceKey": prov["key"],
            "provisionDeviceSecret": secret}),
        )
        .send()
        .await
        .expect("provision")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["status"], "SUCCESS", "{resp}");
    let provisioned_token = resp["credentialsValue"]
        .as_str()
        .expect("token")
        .to_string();

    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Meter Vendor CA");
    std::fs::write(
        path("vendor.pem"),
        ca_params.self_signed(&ca_key).expect("ca").pem(),
    )
    .expect("ca");
    ok(&run(&[
        "fleet",
        "ca",
        "add",
        "meters",
        &path("vendor.pem"),
        "--name",
        "Vendor",
    ]));
    let cas = ok(&run(&["fleet", "ca", "list", "meters"]));
    assert!(
        cas.contains("Vendor") && cas.contains("Meter Vendor CA"),
        "{cas}"
    );
    // A manufacturer CA is removed by its name, and the CLI says so.
    let removed = ok(&run(&["fleet", "ca", "remove", "meters", "vendor"]));
    assert_eq!(
        removed.trim(),
        "removed manufacturer CA Vendor from fleet meters"
    );
    assert!(!ok(&run(&["fleet", "ca", "list", "meters"])).contains("Vendor"));

    // The audit log names what happened.
    let audit = ok(&run(&["audit", "--device", "m-1"]));
    assert!(
        audit.contains("credential_revoked") && audit.contains("credential_issued"),
        "{audit}"
    );
    let audit_all = ok(&run(&["audit", "--kind", "device_provisioned"]));
    assert!(audit_all.contains("device_provisioned"), "{audit_all}");

    // A refused login with a secret-looking username, then check that no secret reached the log.
    let mut opts = MqttOptions::new("", "127.0.0.1", srv.mqtt_tls.port());
    opts.set_credentials("meter-two", "wrong-password-xyz");
    opts.set_transport(tls_transport(&srv.ca_pem()));
    let (_c, mut el) = AsyncClient::new(opts, 8);
    let _ = tokio::time::timeout(Duration::from_secs(5), el.poll()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs: Vec<String> = srv
        .logs
        .try_iter()
        .chain(srv.startup_logs.clone())
        .collect();
    assert!(
        logs.iter().any(|l| l.contains("connection refused")),
        "no refusal logged"
    );
    for secret in [
        key.as_str(),
        "s3cret-pass",
        "wrong-password-xyz",
        secret.as_str(),
        provisioned_token.as_str(),
        key_pem.lines().nth(1).expect("key body"),
    ] {
        assert!(
            !logs.iter().any(|l| l.contains(secret)),
            "a secret reached the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_commands_through_the_cli() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn(&dir.path().join("data"), &key);
    let base = srv.base();
    let env = [
        ("CORRAL_SERVER", base.as_str()),
        ("CORRAL_API_KEY", key.as_str()),
    ];
    let run = |args: &[&str]| corral(args, &env);
    ok(&run(&[
        "workspace",
        "create",
        "Farm",
        "--retention-days",
        "3650",
    ]));
    ok(&run(&["fleet", "create", "probes", "--workspace", "Farm"]));
    let created: Value = serde_json::from_str(&ok(&run(&[
        "device", "create", "probe-1", "--fleet", "probes", "--json",
    ])))
    .expect("json");
    let token = created["credentials"]["token"].as_str().expect("token");
    // Six points over two hours through the HTTP device API, one under a tag.
    let t0: i64 = 1_767_225_600_000;
    let items: Vec<Value> = (0..6)
        .map(|i| serde_json::json!({"ts": t0 + i * 1_200_000, "values": {"moisture": i * 10}}))
        .collect();
    let http = reqwest::Client::new();
    for (path, body) in [
        ("telemetry", Value::Array(items)),
        (
            "telemetry/battery",
            serde_json::json!({"ts": t0, "values": {"volts": 3.3}}),
        ),
    ] {
        let r = http
            .post(format!("{base}/api/v1/{token}/{path}"))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
    }
    let (from, to) = (t0.to_string(), (t0 + 2 * 3_600_000 - 1).to_string());
    let agg: Value = serde_json::from_str(&ok(&run(&[
        "aggregate",
        "probe-1",
        "--interval",
        "1h",
        "--from",
        &from,
        "--to",
        &to,
        "--json",
    ])))
    .expect("json");
    let buckets = agg["data"]["moisture"].as_array().expect("buckets");
    assert_eq!(
        (buckets[0]["count"].as_u64(), buckets[0]["avg"].as_f64()),
        (Some(3), Some(10.0))
    );
    assert_eq!(buckets[1]["max"].as_f64(), Some(50.0));
    let table = ok(&run(&[
        "aggregate",
        "--fleet",
        "probes",
        "--interval",
        "1d",
        "--from",
        &from,
        "--to",
        &to,
        "--tz",
        "Europe/Berlin",
    ]));
    assert!(
        table.contains("moisture") && table.contains("AVG"),
        "{table}"
    );
    let tags = ok(&run(&["tags", "probe-1"]));
    assert!(tags.contains("battery") && tags.contains("volts"), "{tags}");
    // The former `--device DEVICE` spelling still works where it is unambiguous.
    assert_eq!(ok(&run(&["tags", "--device", "probe-1"])), tags);

    let set = ok(&run(&[
        "attributes",
        "set",
        "probe-1",
        "target=26",
        "mode=eco",
    ]));
    assert_eq!(
        set.trim(),
        "set 2 shared attributes of device probe-1: mode, target"
    );
    let set = ok(&run(&[
        "attributes",
        "set",
        "--fleet",
        "probes",
        "interval=60",
    ]));
    assert_eq!(
        set.trim(),
        "set 1 shared default attribute of fleet probes: interval"
    );
    let attrs: Value =
        serde_json::from_str(&ok(&run(&["attributes", "show", "probe-1", "--json"])))
            .expect("json");
    assert_eq!(attrs["shared"]["target"]["value"], 26);
    assert_eq!(attrs["shared"]["mode"]["value"], "eco");
    assert_eq!(attrs["shared"]["interval"]["value"], 60);
    // The former `--device DEVICE` spelling of the device still works.
    let legacy = ok(&run(&[
        "attributes",
        "set",
        "--device",
        "probe-1",
        "legacy=1",
    ]));
    assert_eq!(
        legacy.trim(),
        "set 1 shared attribute of device probe-1: legacy"
    );
    let deleted = ok(&run(&["attributes", "delete", "probe-1", "mode"]));
    assert_eq!(
        deleted.trim(),
        "deleted 1 shared attribute of device probe-1: mode"
    );
    let shown = ok(&run(&["attributes", "show", "probe-1"]));
    assert!(
        !shown.contains("eco") && shown.contains("target"),
        "{shown}"
    );

    let out = dir.path().join("export.csv");
    ok(&run(&[
        "export",
        "--fleet",
        "probes",
        "--from",
        &from,
        "--to",
        &to,
        "-o",
        out.to_str().expect("utf8"),
    ]));
    let csv = std::fs::read_to_string(&out).expect("csv");
    assert_eq!(csv.lines().count(), 1 + 6 + 1, "{csv}");
    let json_out = ok(&run(&[
        "export", "--device", "probe-1", "--tags", "battery", "--format", "json", "--from", &from,
        "--to", &to,
    ]));
    let rows: Value = serde_json::from_str(&json_out).expect("json");
    assert_eq!(rows[0]["value"], 3.3);

    let usage: Value = serde_json::from_str(&ok(&run(&[
        "usage",
        "--workspace",
        "Farm",
        "--sweep",
        "--json",
    ])))
    .expect("json");
    assert_eq!(
        (usage["points"].as_u64(), usage["retention_days"].as_u64()),
        (Some(7), Some(3650))
    );
    let store = ok(&run(&["usage"]));
    assert!(store.contains("store_bytes"), "{store}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_through_the_cli() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn(&dir.path().join("data"), &key);
    let base = srv.base();
    let env = [
        ("CORRAL_SERVER", base.as_str()),
        ("CORRAL_API_KEY", key.as_str()),
    ];
    let run = |args: &[&str]| corral(args, &env);
    ok(&run(&["workspace", "create", "W"]));
    ok(&run(&["fleet", "create", "F", "--workspace", "W"]));
    let created: Value = serde_json::from_str(&ok(&run(&[
        "device", "create", "valve", "--fleet", "F", "--json",
    ])))
    .expect("json");
    let token = created["credentials"]["token"].as_str().expect("token");
    // Queued while the device is away.
    let queued: Value = serde_json::from_str(&ok(&run(&[
        "job",
        "send",
        "valve",
        "open",
        "--params",
        r#"{"pct":50}"#,
        "--json",
    ])))
    .expect("json");
    assert_eq!(queued["state"], "queued");
    let job_id = queued["id"].as_str().expect("id").to_string();
    // The device comes, subscribes, and acknowledges (rumqttc acks QoS 1 by itself).
    let mut opts = MqttOptions::new("", "127.0.0.1", srv.mqtt_tls.port());
    opts.set_credentials(token, "");
    opts.set_transport(tls_transport(&srv.ca_pem()));
    let (client, mut el) = AsyncClient::new(opts, 8);
    client
        .subscribe("v1/devices/me/rpc/request/+", QoS::AtLeastOnce)
        .await
        .expect("sub");
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = el.poll().await.expect("poll") {
                return serde_json::from_slice::<Value>(&p.payload).expect("json");
            }
        }
    })
    .await
    .expect("the queued job arrives");
    assert_eq!(
        got,
        serde_json::json!({"method": "open", "params": {"pct": 50}})
    );
    // Keep the event loop turning so the PUBACK goes out, while the CLI watches.
    let pump = tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                return;
            }
        }
    });
    let watched = ok(&run(&["job", "watch", &job_id, "--timeout", "20"]));
    assert!(watched.contains("Succeeded"), "{watched}");
    let list = ok(&run(&["job", "list", "valve"]));
    assert!(
        list.contains("open") && list.contains("succeeded"),
        "{list}"
    );
    let shown = ok(&run(&["job", "show", &job_id]));
    assert!(shown.contains("succeeded"), "{shown}");
    // A rollout to the fleet (one device here), followed to the end.
    let fj: Value = serde_json::from_str(&ok(&run(&[
        "job",
        "fleet-send",
        "F",
        "ping",
        "--per-minute",
        "600",
        "--json",
    ])))
    .expect("json");
    let fid = fj["id"].as_str().expect("id").to_string();
    let mut state = String::new();
    for _ in 0..100 {
        let v: Value =
            serde_json::from_str(&ok(&run(&["job", "fleet-show", &fid, "--json"]))).expect("json");
        state = v["state"].as_str().unwrap_or_default().to_string();
        if state == "completed" {
            assert_eq!(v["progress"]["succeeded"], 1, "{v}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "completed");
    let list = ok(&run(&["job", "fleet-list", "F"]));
    assert!(
        list.contains("ping") && list.contains("succeeded 1"),
        "{list}"
    );
    // A filtered rollout followed with fleet-watch: the one device does not match.
    let fj: Value = serde_json::from_str(&ok(&run(&[
        "job",
        "fleet-send",
        "F",
        "ping",
        "--label",
        "no-such-label",
        "--attr",
        "model=X200",
        "--json",
    ])))
    .expect("json");
    assert_eq!(fj["devices"], json!([]), "{fj}");
    assert_eq!(fj["filter"]["attributes"]["model"], "X200", "{fj}");
    let fid = fj["id"].as_str().expect("id").to_string();
    let watched = ok(&run(&["job", "fleet-watch", &fid, "--timeout", "20"]));
    assert!(watched.contains("completed"), "{watched}");
    // Schedules: a cron schedule, listed, run now, disabled, deleted.
    let sc: Value = serde_json::from_str(&ok(&run(&[
        "schedule",
        "create",
        "nightly-ping",
        "ping",
        "--device",
        "valve",
        "--cron",
        "30 2 * * 1-5",
        "--tz",
        "Europe/Berlin",
        "--json",
    ])))
    .expect("json");
    let sid = sc["id"].as_str().expect("id").to_string();
    assert!(sc["next_run_at"].is_i64(), "{sc}");
    let list = ok(&run(&["schedule", "list"]));
    assert!(
        list.contains("nightly-ping") && list.contains("cron 30 2 * * 1-5 (Europe/Berlin)"),
        "{list}"
    );
    let ran = ok(&run(&["schedule", "run", &sid]));
    assert!(ran.contains("job "), "{ran}");
    let off = ok(&run(&["schedule", "disable", &sid]));
    assert!(off.contains("disabled"), "{off}");
    let bad = run(&[
        "schedule", "create", "x", "ping", "--device", "valve", "--cron", "* *",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("five fields"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    ok(&run(&["schedule", "delete", &sid]));
    assert!(!ok(&run(&["schedule", "list"])).contains("nightly-ping"));
    // A rollout sent twice with one idempotency key is one rollout.
    let send_once = || {
        let v: Value = serde_json::from_str(&ok(&run(&[
            "job",
            "fleet-send",
            "F",
            "ping",
            "--idempotency-key",
            "ping-once",
            "--json",
        ])))
        .expect("json");
        v["id"].as_str().expect("id").to_string()
    };
    assert_eq!(send_once(), send_once());
    pump.abort();

    // Conditions: the device opens one over the HTTP device API; the CLI follows it.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/{token}/conditions"))
        .body(r#"{"name":"overheat","action":"open","severity":"major","details":{"temp":91}}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let list = ok(&run(&["condition", "list", "--device", "valve"]));
    assert!(
        list.contains("overheat") && list.contains("major") && list.contains("open"),
        "{list}"
    );
    assert!(!ok(&run(&["condition", "list", "--severity", "info"])).contains("overheat"));
    let page: Value =
        serde_json::from_str(&ok(&run(&["condition", "list", "--json"]))).expect("json");
    let cid = page["items"][0]["id"].as_str().expect("id").to_string();
    let acked = ok(&run(&["condition", "ack", &cid]));
    assert!(
        acked.contains("acknowledged") && acked.contains(" by "),
        "{acked}"
    );
    let closed = ok(&run(&["condition", "close", &cid]));
    assert!(closed.contains("closed"), "{closed}");
    let again = run(&["condition", "close", &cid]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already closed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let shown = ok(&run(&["condition", "show", &cid]));
    assert!(shown.contains(r#"{"temp":91}"#), "{shown}");
    assert!(!ok(&run(&["condition", "list"])).contains("overheat"));
    assert!(ok(&run(&["condition", "list", "--state", "all"])).contains("overheat"));
}

/// The first line of standard output, for the one-line confirmation of a change.
fn first_line(out: &str) -> &str {
    out.lines().next().unwrap_or_default()
}

/// The failure message of a command that must fail.
fn fails(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One set of names used the same way by every command: objects named by id or exact name
/// (case-insensitive, narrowed to a workspace where names are only unique there), the device
/// as the positional DEVICE, a one-line confirmation of every change (on standard error under
/// `--json`, whose standard output stays pure JSON), and names rather than parent ids in tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_positional_devices_confirmations_and_name_columns() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn(&dir.path().join("data"), &key);
    let base = srv.base();
    let env = [
        ("CORRAL_SERVER", base.as_str()),
        ("CORRAL_API_KEY", key.as_str()),
    ];
    let run = |args: &[&str]| corral(args, &env);
    let json_of = |args: &[&str]| -> Value {
        serde_json::from_str(&ok(&run(args))).expect("standard output is JSON alone")
    };

    // Creations say what they made, with the id and the parent by name.
    let plant = ok(&run(&["workspace", "create", "Plant"]));
    assert!(
        plant.starts_with("created workspace Plant (id ") && plant.lines().count() == 1,
        "{plant}"
    );
    // Under --json the JSON is alone on standard output; the line goes to standard error.
    let o = run(&["workspace", "create", "Lab", "--json"]);
    let lab: Value = serde_json::from_str(&ok(&o)).expect("json");
    let lab_id = lab["id"].as_str().expect("id").to_string();
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        format!("created workspace Lab (id {lab_id})")
    );
    let made = ok(&run(&[
        "fleet",
        "create",
        "sensors",
        "--workspace",
        "plant",
    ]));
    assert!(
        made.starts_with("created fleet sensors (id ")
            && made.trim_end().ends_with(") in workspace Plant"),
        "{made}"
    );
    let lab_sensors = json_of(&[
        "fleet",
        "create",
        "sensors",
        "--workspace",
        &lab_id,
        "--json",
    ]);
    let lab_sensors_id = lab_sensors["id"].as_str().expect("id").to_string();
    ok(&run(&["fleet", "create", "racks", "--workspace", "Plant"]));
    ok(&run(&["fleet", "create", "racks", "--workspace", "Lab"]));

    // A name two workspaces use is refused with the candidates; an id settles it.
    let err = fails(&run(&[
        "device", "create", "thermo-1", "--fleet", "sensors",
    ]));
    assert!(
        err.contains("2 fleets are named \"sensors\"") && err.contains(&lab_sensors_id),
        "{err}"
    );
    let plant_sensors: Value = json_of(&["fleet", "list", "--workspace", "Plant", "--json"]);
    let plant_sensors_id = plant_sensors
        .as_array()
        .expect("list")
        .iter()
        .find(|f| f["name"] == "sensors")
        .and_then(|f| f["id"].as_str())
        .expect("sensors")
        .to_string();
    let created = ok(&run(&[
        "device",
        "create",
        "thermo-1",
        "--fleet",
        &plant_sensors_id,
    ]));
    assert!(
        first_line(&created).starts_with("created device thermo-1 (id ")
            && first_line(&created).ends_with(") in fleet sensors"),
        "{created}"
    );
    let token1 = created
        .lines()
        .find_map(|l| l.strip_prefix("access token"))
        .expect("token")
        .trim()
        .to_string();
    let d2 = json_of(&[
        "device",
        "create",
        "thermo-2",
        "--fleet",
        &lab_sensors_id,
        "--json",
    ]);
    let token2 = d2["credentials"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let d1: Value = json_of(&["device", "show", "THERMO-1", "--json"]);
    let d1_id = d1["id"].as_str().expect("id").to_string();

    // Tables name the parents; the ids stay in the JSON.
    let fleets = ok(&run(&["fleet", "list"]));
    assert!(fleets.lines().next().expect("header").contains("WORKSPACE"));
    assert!(
        fleets
            .lines()
            .any(|l| l.contains("sensors") && l.contains("Plant"))
            && fleets
                .lines()
                .any(|l| l.contains("sensors") && l.contains("Lab"))
            && !fleets.contains(&lab_id),
        "{fleets}"
    );
    let devices = ok(&run(&["device", "list"]));
    assert!(
        devices.lines().next().expect("header").contains("FLEET")
            && devices
                .lines()
                .any(|l| l.contains("thermo-1") && l.contains("sensors") && l.contains("Plant"))
            && devices
                .lines()
                .any(|l| l.contains("thermo-2") && l.contains("Lab"))
            && !devices.contains(&plant_sensors_id)
            && !devices.contains(&lab_id),
        "{devices}"
    );
    let listed: Value = json_of(&["device", "list", "--json"]);
    assert!(listed[0]["fleet_id"].is_string(), "{listed}");
    let shown = ok(&run(&["device", "show", &d1_id]));
    assert!(
        shown.contains(&format!("sensors ({plant_sensors_id})")),
        "{shown}"
    );

    // Device-scoped commands take the device as the positional DEVICE, by id or name.
    let set = ok(&run(&["attributes", "set", "thermo-1", "target=26"]));
    assert_eq!(
        set.trim(),
        "set 1 shared attribute of device thermo-1: target"
    );
    let attrs: Value = json_of(&["attributes", "show", &d1_id, "--json"]);
    assert_eq!(attrs["shared"]["target"]["value"], 26, "{attrs}");
    ok(&run(&["tags", "thermo-1"]));
    ok(&run(&["telemetry", "Thermo-1", "--latest"]));
    ok(&run(&["device", "credentials", "thermo-1"]));
    let err = fails(&run(&["telemetry", "no-such-device"]));
    assert!(err.contains("no device named \"no-such-device\""), "{err}");

    // Jobs: sent to a device by name, cancelled by id, each with its line.
    let sent = ok(&run(&["job", "send", "thermo-1", "reboot"]));
    let line = first_line(&sent);
    assert!(
        line.starts_with("created job ") && line.ends_with(" (reboot) for device thermo-1: queued"),
        "{sent}"
    );
    let job_id = line.split(' ').nth(2).expect("id").to_string();
    let cancelled = ok(&run(&["job", "cancel", &job_id]));
    assert_eq!(
        first_line(&cancelled),
        format!("cancelled job {job_id} (reboot) for device thermo-1: cancelled")
    );

    // Schedules by name, with the target named in the table.
    let sc = ok(&run(&[
        "schedule",
        "create",
        "nightly",
        "reboot",
        "--device",
        "thermo-1",
        "--cron",
        "0 3 * * *",
    ]));
    assert!(
        first_line(&sc).starts_with("created schedule nightly (id ")
            && first_line(&sc).ends_with(") for device thermo-1"),
        "{sc}"
    );
    let list = ok(&run(&["schedule", "list"]));
    assert!(
        list.contains("device thermo-1") && !list.contains(&d1_id),
        "{list}"
    );
    assert_eq!(
        first_line(&ok(&run(&["schedule", "disable", "Nightly"]))),
        "disabled schedule nightly"
    );
    assert_eq!(
        ok(&run(&["schedule", "delete", "nightly"])).trim(),
        "deleted schedule nightly"
    );

    // Conditions: by name and device; the table names the device.
    let http = reqwest::Client::new();
    for token in [&token1, &token2] {
        let r = http
            .post(format!("{base}/api/v1/{token}/conditions"))
            .body(r#"{"name":"overheat","action":"open","severity":"major"}"#)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }
    let conditions = ok(&run(&["condition", "list"]));
    assert!(
        conditions.contains("thermo-1")
            && conditions.contains("thermo-2")
            && !conditions.contains(&d1_id),
        "{conditions}"
    );
    let err = fails(&run(&["condition", "ack", "overheat"]));
    assert!(
        err.contains("2 open conditions are named \"overheat\"") && err.contains("--device"),
        "{err}"
    );
    let acked = ok(&run(&[
        "condition",
        "ack",
        "overheat",
        "--device",
        "thermo-1",
    ]));
    assert!(
        first_line(&acked).starts_with("acknowledged condition overheat (id ")
            && first_line(&acked).ends_with(") of device thermo-1"),
        "{acked}"
    );
    let o = run(&[
        "condition",
        "close",
        "overheat",
        "--device",
        "thermo-2",
        "--json",
    ]);
    let closed: Value = serde_json::from_str(&ok(&o)).expect("json alone");
    assert_eq!(closed["open"], false);
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("closed condition overheat"));

    // Updates say what changed; a fleet name is looked up in the device's workspace.
    let moved = ok(&run(&[
        "device",
        "update",
        "thermo-1",
        "--fleet",
        "racks",
        "--label",
        "spare",
        "--disable",
    ]));
    assert_eq!(
        moved.trim(),
        "updated device thermo-1: label \"spare\", moved to fleet racks, disabled"
    );
    let err = fails(&run(&["fleet", "update", "racks", "--name", "shelves"]));
    assert!(err.contains("2 fleets are named \"racks\""), "{err}");
    let renamed = ok(&run(&[
        "workspace",
        "update",
        "lab",
        "--description",
        "the lab",
        "--retention-days",
        "30",
    ]));
    assert_eq!(
        renamed.trim(),
        "updated workspace Lab: description \"the lab\", retention 30 days"
    );

    // Integrations and users name workspaces and fleets the same way (the fleet within the
    // workspace given).
    let hook = ok(&run(&[
        "integration",
        "create",
        "hook",
        "--url",
        "http://127.0.0.1:9/",
        "--workspace",
        "Plant",
        "--fleet",
        "racks",
        "--paused",
    ]));
    assert!(
        first_line(&hook).starts_with("created integration hook (id ")
            && first_line(&hook).ends_with("), paused"),
        "{hook}"
    );
    let shown = ok(&run(&["integration", "show", "HOOK"]));
    assert!(shown.contains("workspace Plant; fleets racks"), "{shown}");
    assert_eq!(
        first_line(&ok(&run(&["integration", "resume", "hook"]))),
        "resumed integration hook"
    );
    assert_eq!(
        ok(&run(&["integration", "delete", "hook"])).trim(),
        "deleted integration hook with its queue and dead letters"
    );
    let user = ok(&corral_stdin(
        &["user", "create", "ann", "--grant", "Plant:operator:racks"],
        &env,
        "a long enough password\n",
    ));
    assert!(
        first_line(&user).starts_with("created user ann (id "),
        "{user}"
    );
    assert!(user.contains("Plant:operator (1 fleet)"), "{user}");
    let o = run(&["user", "key-create", "ann", "laptop"]);
    assert!(ok(&o).trim().starts_with("crl_"));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("created API key laptop (id "));
    let gone = ok(&run(&["user", "key-delete", "ann", "LAPTOP"]));
    assert!(
        gone.starts_with("deleted API key laptop (id ")
            && gone.trim_end().ends_with(" of user ann"),
        "{gone}"
    );
    assert_eq!(
        ok(&run(&["user", "delete", "ann"])).trim(),
        "deleted user ann: their sessions and API keys end"
    );

    // The audit log names the device.
    let audit = ok(&run(&["audit", "--device", "thermo-1"]));
    assert!(
        audit.contains("thermo-1") && !audit.contains(&d1_id),
        "{audit}"
    );

    // Deletions name what they deleted.
    assert_eq!(
        ok(&run(&["device", "delete", "thermo-2"])).trim(),
        "deleted device thermo-2 and its data"
    );
    let o = run(&["fleet", "delete", &lab_sensors_id, "--json"]);
    assert_eq!(ok(&o), "");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "deleted fleet sensors"
    );
}

/// Runs the CLI with `stdin` on standard input.
fn corral_stdin(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write;
    let mut c = Command::new(bin());
    c.args(args)
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn corral");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("run corral")
}

#[test]
fn users_roles_and_keys_through_the_cli() {
    corral::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = corral::auth::new_api_key();
    let srv = Server::spawn(&dir.path().join("data"), &key);
    let base = srv.base();
    let env = [
        ("CORRAL_SERVER", base.as_str()),
        ("CORRAL_API_KEY", key.as_str()),
    ];
    let run = |args: &[&str]| corral(args, &env);
    ok(&run(&["workspace", "create", "W"]));
    ok(&run(&["workspace", "create", "Other"]));
    ok(&run(&["fleet", "create", "F", "--workspace", "W"]));
    ok(&run(&["fleet", "create", "G", "--workspace", "Other"]));
    // A customer of fleet F, with the password on standard input (never in argv).
    let u: Value = serde_json::from_str(&ok(&corral_stdin(
        &["user", "create", "carla", "--grant", "W:viewer:F", "--json"],
        &env,
        "a very long password\n",
    )))
    .expect("json");
    assert_eq!(u["grants"][0]["role"], "viewer", "{u}");
    assert_eq!(u["grants"][0]["fleets"].as_array().map(Vec::len), Some(1));
    let list = ok(&run(&["user", "list"]));
    // Roles name the workspace, not its id.
    assert!(
        list.contains("carla") && list.contains("W:viewer (1 fleet)"),
        "{list}"
    );
    // Her API key acts with her rights: F is listed, G is not, and she cannot create.
    let secret = ok(&run(&["user", "key-create", "carla", "laptop"]));
    let secret = secret.trim();
    assert!(secret.starts_with("crl_"), "{secret}");
    let as_carla = [("CORRAL_SERVER", base.as_str()), ("CORRAL_API_KEY", secret)];
    let fleets = ok(&corral(&["fleet", "list"], &as_carla));
    assert!(
        fleets.contains('F') && !fleets.contains("Other"),
        "{fleets}"
    );
    let denied = corral(&["workspace", "create", "Mine"], &as_carla);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // Disabled: her key stops working.
    ok(&run(&["user", "update", "carla", "--disable"]));
    let refused = corral(&["fleet", "list"], &as_carla);
    assert!(!refused.status.success());
    // The audit log names who did what.
    let audit = ok(&run(&["audit", "--kind", "user_created"]));
    assert!(audit.contains("carla"), "{audit}");
    let denied = ok(&run(&["audit", "--actor", "carla", "--kind", "api_denied"]));
    assert!(denied.contains("POST /api/v1/workspaces"), "{denied}");
    let keys = ok(&run(&["user", "key-list", "carla"]));
    assert!(keys.contains("laptop"), "{keys}");
    ok(&run(&["user", "delete", "carla"]));
    assert!(!ok(&run(&["user", "list"])).contains("carla"));
    // No password or key secret in the server's log.
    let logs: Vec<String> = srv.logs.try_iter().collect();
    let all = logs.join("\n");
    assert!(!all.contains("a very long password") && !all.contains(secret));
}

/// Logs written to a pipe (journald, files, `docker logs`) carry no colour escape codes, and the
/// start banner names every address with a host others can use.
#[test]
fn logs_to_a_pipe_have_no_colour_and_the_banner_lists_every_url() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(bin())
        .args(["serve", "--log-format", "human"])
        .env_clear()
        .env("CORRAL_DATA_DIR", dir.path().join("data"))
        .env("CORRAL_MQTT__TLS_LISTEN", "127.0.0.1:0")
        .env("CORRAL_HTTP__LISTEN", "127.0.0.1:0")
        .env("CORRAL_HTTPS__LISTEN", "0.0.0.0:0")
        .env("CORRAL_PKI__HOSTS", r#"["localhost", "corral.lan"]"#)
        .env("CORRAL_STORE__MIN_FREE_MB", "16")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // The banner block follows the log line; the setup link block comes last.
    while !lines.iter().any(|l: &String| l.contains("/#/setup?token=")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    assert!(all.contains("corral is running"), "{all}");
    assert!(
        !all.contains('\u{1b}'),
        "colour codes in piped logs:\n{all}"
    );
    for want in [
        "Web UI",
        "REST API",
        "OpenAPI",
        "mqtts://127.0.0.1:",
        "https://corral.lan:",
        "/#/setup?token=",
    ] {
        assert!(all.contains(want), "{want} missing from:\n{all}");
    }
    // The structured log line names the bound address; what a person reads names a host.
    let banner = &all[all.find("Corral is running.").expect("banner")..];
    assert!(
        !banner.contains("0.0.0.0"),
        "a wildcard address in:\n{banner}"
    );
}

/// `corral simulate --sub-devices`: each connection a gateway (created as one with --create)
/// speaking for its sub-devices, which the server creates and stores a reading of per message.
#[test]
fn simulated_gateways_bring_their_sub_devices() {
    let lab = SimLab::new("Site", "edge");
    let run = |args: &[&str]| lab.run(args);
    let report = lab.simulate(&[
        "--create",
        "2",
        "--fleet",
        "edge",
        "--connections",
        "2",
        "--sub-devices",
        "4",
        "--rate",
        "5",
        "--duration",
        "2",
    ]);
    assert_eq!(report["connections_up"], 2, "{report}");
    assert!(report["acked"].as_u64().unwrap_or(0) > 0, "{report}");
    let list: Value = serde_json::from_str(&ok(&run(&[
        "device", "list", "--fleet", "edge", "--json", "--all",
    ])))
    .expect("json");
    let items = list
        .as_array()
        .or(list["items"].as_array())
        .expect("devices");
    let gateways = items
        .iter()
        .filter(|d| d["gateway"]["role"] == "gateway")
        .count();
    let subs: Vec<&Value> = items
        .iter()
        .filter(|d| d["gateway"]["role"] == "sub_device")
        .collect();
    assert_eq!((gateways, subs.len()), (2, 8), "{list}");
    assert!(subs.iter().all(|d| d["gateway"]["device_type"] == "sim"));
}

/// `corral simulate`'s faults against a real server: wrong tokens (refused, and in the
/// connection trace), twins fighting over one identity (each throws the other out; the device
/// gets a `session_takeovers` condition), a flapping connection, and a drifting clock (the
/// device's own timestamps, a minute behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_faults_show_up_where_an_operator_looks() {
    let lab = SimLab::new("Lab", "faulty");
    let (base, key) = (lab.srv.base(), lab.key.clone());
    let tokens = lab.dir.path().join("tokens.txt");
    let before = corral::model::now_ms();
    let report = lab.simulate(&[
        "--create",
        "3",
        "--fleet",
        "faulty",
        "--tokens",
        tokens.to_str().expect("path"),
        "--connections",
        "2",
        "--fault-twins",
        "1",
        "--fault-bad-token",
        "1",
        "--fault-flap",
        "1",
        "--flap-secs",
        "1",
        "--clock-drift-ms",
        "-60000",
        "--rate",
        "5",
        "--duration",
        "6",
    ]);
    let f = &report["faults"];
    assert_eq!(report["connections_up"], 2, "{report}");
    assert!(
        f["bad_token_refused"].as_u64().unwrap_or(0) >= 2,
        "{report}"
    );
    assert!(
        f["twin_sessions_lost"].as_u64().unwrap_or(0) >= 2,
        "{report}"
    );
    assert!(f["flaps"].as_u64().unwrap_or(0) >= 1, "{report}");

    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, base, key) = (http.clone(), base.clone(), key.clone());
        async move {
            http.get(format!("{base}/api/v1{path}"))
                .bearer_auth(key)
                .send()
                .await
                .expect("get")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let failures = get("/connection-failures?client_id=sim-bad-0-".to_string()).await;
    let refused = get("/connection-failures".to_string()).await;
    assert!(
        refused
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["client_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("sim-bad-0")))),
        "{failures} {refused}"
    );
    // The twins' device is the third token's.
    let third = std::fs::read_to_string(&tokens).expect("tokens");
    let third = third.lines().nth(2).expect("third token").to_string();
    let devices = get("/devices?limit=10".to_string()).await;
    let mut found = false;
    for d in devices["items"].as_array().expect("items") {
        let id = d["id"].as_str().expect("id");
        let conds = get(format!("/devices/{id}/conditions")).await;
        let list = conds.as_array().or(conds["items"].as_array());
        if list.is_some_and(|a| a.iter().any(|c| c["name"] == "session_takeovers")) {
            found = true;
            let trace = get(format!("/devices/{id}/trace")).await.to_string();
            assert!(trace.contains("session_taken_over") && !trace.contains(&third));
        }
        // The drifting clock: timestamps about a minute behind.
        let latest = get(format!("/devices/{id}/telemetry/latest?keys=seq")).await;
        if let Some(ts) = latest["data"]["seq"]["ts"].as_i64() {
            assert!(
                ts < before + 10_000 - 50_000,
                "seq at {ts}, started at {before}"
            );
        }
    }
    assert!(
        found,
        "no device has a session_takeovers condition: {report}"
    );
}

/// A server with a workspace and a fleet, and the `corral` command run against it: the
/// simulator's tests.
struct SimLab {
    dir: tempfile::TempDir,
    key: String,
    srv: Server,
}

impl SimLab {
    fn new(workspace: &str, fleet: &str) -> Self {
        corral::pki::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let key = corral::auth::new_api_key();
        let srv = Server::spawn(dir.path(), &key);
        let lab = Self { dir, key, srv };
        ok(&lab.run(&["workspace", "create", workspace]));
        ok(&lab.run(&["fleet", "create", fleet, "--workspace", workspace]));
        lab
    }

    fn run(&self, args: &[&str]) -> Output {
        let base = self.srv.base();
        corral(
            args,
            &[
                ("CORRAL_SERVER", base.as_str()),
                ("CORRAL_API_KEY", self.key.as_str()),
            ],
        )
    }

    /// `corral simulate` over TLS to this server with `args`: its report.
    fn simulate(&self, args: &[&str]) -> Value {
        let ca = self.dir.path().join("sim-ca.pem");
        std::fs::write(&ca, self.srv.ca_pem()).expect("ca");
        let port = self.srv.mqtt_tls.port().to_string();
        let mut all = vec![
            "simulate",
            "--port",
            &port,
            "--ca",
            ca.to_str().expect("path"),
        ];
        all.extend_from_slice(args);
        let out = ok(&self.run(&all));
        serde_json::from_str(out.trim()).expect("report")
    }
}
