//! The `corral` command line against a real server: config commands, init and `ca show`, the
//! admin commands (tables and `--json`), and reading telemetry published over MQTT/TLS.

mod common;

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
        "--device",
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
    let tags = ok(&run(&["tags", "--device", "probe-1"]));
    assert!(tags.contains("battery") && tags.contains("volts"), "{tags}");

    ok(&run(&[
        "attributes",
        "set",
        "--device",
        "probe-1",
        "target=26",
        "mode=eco",
    ]));
    ok(&run(&[
        "attributes",
        "set",
        "--fleet",
        "probes",
        "interval=60",
    ]));
    let attrs: Value = serde_json::from_str(&ok(&run(&[
        "attributes",
        "show",
        "--device",
        "probe-1",
        "--json",
    ])))
    .expect("json");
    assert_eq!(attrs["shared"]["target"]["value"], 26);
    assert_eq!(attrs["shared"]["mode"]["value"], "eco");
    assert_eq!(attrs["shared"]["interval"]["value"], 60);
    ok(&run(&[
        "attributes",
        "delete",
        "--device",
        "probe-1",
        "mode",
    ]));
    let shown = ok(&run(&["attributes", "show", "--device", "probe-1"]));
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
    assert!(
        list.contains("carla") && list.contains("viewer (1 fleets)"),
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
