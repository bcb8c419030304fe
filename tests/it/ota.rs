//! Firmware and software packages (issue 15, packages): uploads streamed over REST and from
//! the CLI, checksums as ThingsBoard devices verify them, the size cap, duplicates, ranged
//! downloads, deletes that keep shared files, fleet scoping, a restart; and shared attributes
//! an operator sets as strings reaching devices as strings.

use crate::common;

use std::process::Command;

use common::TestApp;
use md5::Md5;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Deterministic bytes that do not compress to nothing.
fn image(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct Http {
    c: reqwest::Client,
    base: String,
    key: String,
}

impl Http {
    fn new(t: &TestApp) -> Self {
        Self::with_key(t, &t.admin_key)
    }

    fn with_key(t: &TestApp, key: &str) -> Self {
        Self {
            c: reqwest::Client::new(),
            base: format!("{}/api/v1", t.http_base()),
            key: key.to_string(),
        }
    }

    async fn upload(&self, query: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, Value) {
        let r = self
            .c
            .post(format!("{}/packages", self.base))
            .bearer_auth(&self.key)
            .query(query)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("send");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn json(&self, method: &str, path: &str) -> (StatusCode, Value) {
        let r = self
            .c
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.base),
            )
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("send");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn download(&self, id: &str, range: Option<&str>) -> reqwest::Response {
        let mut r = self
            .c
            .get(format!("{}/packages/{id}/file", self.base))
            .bearer_auth(&self.key);
        if let Some(range) = range {
            r = r.header("range", range);
        }
        r.send().await.expect("send")
    }
}

/// A multipart/form-data body as curl -F sends it: text fields, then file parts (name, file
/// name, bytes); `close` false leaves the closing boundary off, as a client that broke off.
fn form(texts: &[(&str, &str)], files: &[(&str, &str, &[u8])], close: bool) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in texts {
        b.extend_from_slice(
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    for (k, name, data) in files {
        b.extend_from_slice(
            format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    if close {
        b.extend_from_slice(b"--XyZ--\r\n");
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_upload_as_a_form() {
    let t = TestApp::start_with(|c| c.ota.max_package_mb = 1).await;
    let http = Http::new(&t);
    let post = |query: &'static str, body: Vec<u8>| {
        let r = http
            .c
            .post(format!("{}/packages?{query}", http.base))
            .bearer_auth(&http.key)
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(body);
        async move {
            let r = r.send().await.expect("send");
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let data = image(300_000, 5);

    // Fields then the file, as curl -F title=.. -F version=.. -F file=@dir/valve.bin.
    let (s, v) = post(
        "",
        form(
            &[("title", "valve-fw"), ("version", "2.0")],
            &[("file", "dir/valve.bin", &data)],
            true,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (
            v["title"].as_str(),
            v["version"].as_str(),
            v["size"].as_u64()
        ),
        (Some("valve-fw"), Some("2.0"), Some(data.len() as u64))
    );
    assert_eq!(
        v["file_name"], "valve.bin",
        "the form's file name, without its path"
    );
    assert_eq!(
        v["sha256"].as_str(),
        Some(hex(&Sha256::digest(&data)).as_str())
    );
    let got = http.download(v["id"].as_str().expect("id"), None).await;
    assert_eq!(got.bytes().await.expect("body").to_vec(), data);

    // The query describes the package; the form carries only the file (ThingsBoard's way).
    let (s, v) = post(
        "title=valve-fw&version=2.1&file_name=v21.bin",
        form(&[], &[("file", "other.bin", b"abc")], true),
    )
    .await;
    assert_eq!(
        (s, v["file_name"].as_str()),
        (StatusCode::CREATED, Some("v21.bin")),
        "{v}"
    );

    // Refusals, each with its reason, and nothing stored.
    let before = package_files(&t);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "title=a&version=1",
            form(&[("version", "2")], &[("file", "f.bin", b"x")], true),
            StatusCode::UNPROCESSABLE_ENTITY,
            "differs",
        ),
        (
            "title=a&version=1",
            form(&[("colour", "red")], &[("file", "f.bin", b"x")], true),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown or repeated form field `colour`",
        ),
        (
            "title=a&version=1",
            form(&[("title", "a")], &[], true),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no file part",
        ),
        (
            "title=a&version=1",
            form(&[], &[("file", "f.bin", &data)], false),
            StatusCode::UNPROCESSABLE_ENTITY,
            "broke off",
        ),
        (
            "title=a&version=1",
            form(&[], &[("file", "big.bin", &image(1_100_000, 2))], true),
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
        (
            "title=valve-fw&version=2.0",
            form(&[], &[("file", "f.bin", b"x")], true),
            StatusCode::CONFLICT,
            "",
        ),
        (
            "title=a",
            form(&[], &[("file", "f.bin", b"x")], true),
            StatusCode::UNPROCESSABLE_ENTITY,
            "version",
        ),
    ];
    for (query, body, status, says) in cases {
        let (s, v) = post(query, body).await;
        assert_eq!(s, status, "{query}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap_or("").contains(says),
            "{query}: {v}"
        );
    }
    assert_eq!(package_files(&t), before, "no refused form left a file");
    assert_eq!(partial_files(&t), 0, "nor a partial one");
    let (_, list) = http.json("GET", "/packages").await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
}

fn package_files(t: &TestApp) -> Vec<String> {
    let dir = t.config.data_dir.join("packages");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn partial_files(t: &TestApp) -> usize {
    std::fs::read_dir(t.config.data_dir.join("packages/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_upload_checksum_download_and_delete() {
    let mut t = TestApp::start_with(|c| c.ota.max_package_mb = 4).await;
    let http = Http::new(&t);
    let data = image(3 << 20, 1);

    // SHA256 by default: size, SHA-256 and the device checksum of the bytes sent.
    let (s, fw) = http
        .upload(&[("title", "sensor-fw"), ("version", "2.0")], data.clone())
        .await;
    assert_eq!(s, StatusCode::CREATED, "{fw}");
    let sha = hex(&Sha256::digest(&data));
    assert_eq!(fw["size"], data.len() as u64);
    assert_eq!(fw["sha256"], sha);
    assert_eq!(fw["checksum_algorithm"], "SHA256");
    assert_eq!(fw["checksum"], sha);
    assert_eq!(fw["type"], "firmware");
    assert_eq!(fw["version"], "2.0", "a version stays the string it was");
    assert!(fw.get("warnings").is_none(), "{fw}");
    let id = fw["id"].as_str().expect("id").to_string();

    // The same title and version again: refused before the body matters, nothing kept.
    let (s, v) = http
        .upload(
            &[("title", "sensor-fw"), ("version", "2.0")],
            b"other".to_vec(),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("name_taken")),
        "{v}"
    );
    // As software it is another package; the same bytes share one file.
    let (s, sw) = http
        .upload(
            &[
                ("title", "sensor-fw"),
                ("version", "2.0"),
                ("type", "software"),
                ("checksum_algorithm", "md5"),
            ],
            data.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sw}");
    assert_eq!(sw["checksum_algorithm"], "MD5");
    assert_eq!(sw["checksum"], hex(&Md5::digest(&data)));
    assert_eq!(package_files(&t), vec![sha.clone()], "one file for both");

    // CRC32 in Guava's byte order (little-endian), with the SDK warning.
    let small = image(1000, 7);
    let (s, crc) = http
        .upload(
            &[
                ("title", "t"),
                ("version", "1"),
                ("checksum_algorithm", "CRC32"),
            ],
            small.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{crc}");
    assert_eq!(crc["checksum"], hex(&crc32fast::hash(&small).to_le_bytes()));
    assert!(
        crc["warnings"][0]
            .as_str()
            .expect("warning")
            .contains("CRC32"),
        "{crc}"
    );

    // Refusals: over the cap (413), empty, a bad algorithm, a bad version. Nothing is left.
    let (s, v) = http
        .upload(&[("title", "big"), ("version", "1")], image(5 << 20, 3))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{v}"
    );
    let (s, v) = http
        .upload(&[("title", "empty"), ("version", "1")], Vec::new())
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = http
        .upload(
            &[
                ("title", "x"),
                ("version", "1"),
                ("checksum_algorithm", "SHA1"),
            ],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_field")),
        "{v}"
    );
    let (s, _) = http
        .upload(&[("title", "x"), ("version", " ")], b"x".to_vec())
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, v) = http
        .upload(
            &[
                ("title", "x"),
                ("version", "1"),
                ("file_name", "../etc/passwd"),
            ],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(partial_files(&t), 0, "no partial upload is left");
    let (_, list) = http.json("GET", "/packages").await;
    assert_eq!(list.as_array().expect("list").len(), 3, "{list}");
    let (_, list) = http.json("GET", "/packages?type=software").await;
    assert_eq!(list.as_array().expect("list").len(), 1, "{list}");

    // Downloads: whole, a range, a suffix, past the end.
    let r = http.download(&id, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-sha256"], sha.as_str());
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains("sensor-fw-2.0.bin")
    );
    assert_eq!(r.bytes().await.expect("body").to_vec(), data);
    let r = http.download(&id, Some("bytes=1000-1999")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", data.len()).as_str()
    );
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        data[1000..2000].to_vec()
    );
    let r = http.download(&id, Some("bytes=-10")).await;
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        data[data.len() - 10..].to_vec()
    );
    let r = http
        .download(&id, Some(&format!("bytes={}-", data.len())))
        .await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // A restart keeps packages and files, and clears what an interrupted upload left.
    t.stop().await;
    std::fs::write(t.config.data_dir.join("packages/tmp/cut.part"), b"half").expect("write");
    let config = t.config.clone();
    let app = corral::app::App::start(
        config.clone(),
        corral::app::Listeners::bind(&config).expect("bind"),
    )
    .await
    .expect("restart");
    t.app = Some(app);
    let http = Http::new(&t);
    let (s, again) = http.json("GET", &format!("/packages/{id}")).await;
    assert_eq!((s, &again["sha256"]), (StatusCode::OK, &json!(sha)));
    assert_eq!(partial_files(&t), 0, "the interrupted upload is gone");
    assert_eq!(
        http.download(&id, None)
            .await
            .bytes()
            .await
            .expect("body")
            .len(),
        data.len()
    );

    // Deleting one of two packages with the same bytes keeps the file; the second removes it.
    let (s, _) = http.json("DELETE", &format!("/packages/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(package_files(&t).contains(&sha));
    let (s, _) = http.json("GET", &format!("/packages/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = http
        .json(
            "DELETE",
            &format!("/packages/{}", sw["id"].as_str().expect("id")),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(
        !package_files(&t).contains(&sha),
        "the last package with these bytes took the file"
    );
    let (_, audit) = http.json("GET", "/audit?kind=package_uploaded").await;
    assert_eq!(
        audit["items"].as_array().expect("items").len(),
        3,
        "{audit}"
    );
    let (_, audit) = http.json("GET", "/audit?kind=package_deleted").await;
    assert_eq!(
        audit["items"].as_array().expect("items").len(),
        2,
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_packages_belong_to_their_fleet() {
    let t = TestApp::start().await;
    let admin = Http::new(&t);
    let post = |p: &'static str, b: Value| {
        let t = &t;
        async move {
            let v: Value = t.api.post(p, &b).await.expect("post");
            v
        }
    };
    let ws = post("/workspaces", json!({"name": "plant"})).await;
    let fleet = post(
        "/fleets",
        json!({"workspace_id": ws["id"], "name": "valves"}),
    )
    .await;
    let other_ws = post("/workspaces", json!({"name": "elsewhere"})).await;
    let fleet_id = fleet["id"].as_str().expect("id").to_string();
    let user = |name: &'static str, grants: Value| {
        let t = &t;
        async move {
            let u: Value = t
                .api
                .post("/users", &json!({"username": name, "password": "long enough password", "grants": grants}))
                .await
                .expect("user");
            let k: Value = t
                .api
                .post(
                    &format!("/users/{}/api-keys", u["id"].as_str().expect("id")),
                    &json!({"name": "k"}),
                )
                .await
                .expect("key");
            k["secret"].as_str().expect("secret").to_string()
        }
    };
    let viewer = user("vic", json!([{"workspace_id": ws["id"], "role": "viewer"}])).await;
    let wsadmin = user("ada", json!([{"workspace_id": ws["id"], "role": "admin"}])).await;
    let outsider = user(
        "oz",
        json!([{"workspace_id": other_ws["id"], "role": "admin"}]),
    )
    .await;

    // A workspace admin uploads for their fleet, not for every fleet; a viewer neither.
    let q = [
        ("title", "valve-fw"),
        ("version", "1.10"),
        ("fleet_id", fleet_id.as_str()),
    ];
    let (s, _) = Http::with_key(&t, &viewer)
        .upload(&q, b"image".to_vec())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, p) = Http::with_key(&t, &wsadmin)
        .upload(&q, b"image".to_vec())
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["version"], "1.10");
    let (s, _) = Http::with_key(&t, &wsadmin)
        .upload(&[("title", "global"), ("version", "1")], b"image".to_vec())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, global) = admin
        .upload(&[("title", "global"), ("version", "1")], b"g".to_vec())
        .await;
    assert_eq!(s, StatusCode::CREATED, "{global}");
    let id = p["id"].as_str().expect("id");

    // The viewer reads both; the outsider only the one for every fleet, and gets 404 for the other.
    let (_, list) = Http::with_key(&t, &viewer).json("GET", "/packages").await;
    assert_eq!(list.as_array().expect("list").len(), 2, "{list}");
    let (_, list) = Http::with_key(&t, &outsider).json("GET", "/packages").await;
    let titles: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(titles, ["global"]);
    let (s, v) = Http::with_key(&t, &outsider)
        .json("GET", &format!("/packages/{id}"))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert_eq!(
        Http::with_key(&t, &outsider)
            .download(id, None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        Http::with_key(&t, &viewer)
            .download(id, None)
            .await
            .status(),
        StatusCode::OK
    );
    // Deleting: the viewer may not, the global one needs a server admin.
    let (s, _) = Http::with_key(&t, &viewer)
        .json("DELETE", &format!("/packages/{id}"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = Http::with_key(&t, &wsadmin)
        .json(
            "DELETE",
            &format!("/packages/{}", global["id"].as_str().expect("id")),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = Http::with_key(&t, &wsadmin)
        .json("DELETE", &format!("/packages/{id}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

/// Shared attributes an operator sets keep their JSON type all the way to the device: "2.0"
/// and "1.10" are versions, not numbers (the ThingsBoard SDK compares `fw_version` as sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_strings_reach_devices_as_strings() {
    let t = TestApp::start().await;
    let (dev, token) = t.device("d").await;
    let id = dev["id"].as_str().expect("id");
    let _: Value = t
        .api
        .put(
            &format!("/devices/{id}/attributes/shared"),
            &json!({"fw_version": "2.0", "fw_title": "1.10", "fw_size": 1024, "ratio": 2.5}),
        )
        .await
        .expect("set");
    let r: Value = reqwest::get(format!(
        "{}/api/v1/{token}/attributes?sharedKeys=fw_version,fw_title,fw_size,ratio",
        t.http_base()
    ))
    .await
    .expect("get")
    .json()
    .await
    .expect("json");
    assert_eq!(
        r["shared"],
        json!({"fw_version": "2.0", "fw_title": "1.10", "fw_size": 1024, "ratio": 2.5})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_uploads_lists_and_downloads_a_package() {
    let t = TestApp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("valve-3.1.bin");
    let data = image(700_000, 9);
    std::fs::write(&file, &data).expect("write");
    let run = |args: &[&str]| {
        let o = Command::new(common::server::bin())
            .args(args)
            .args(["--server", &t.http_base()])
            .env_clear()
            .env("CORRAL_API_KEY", &t.admin_key)
            .output()
            .expect("run corral");
        assert!(
            o.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = run(&[
        "firmware",
        "upload",
        file.to_str().expect("utf-8"),
        "--title",
        "valve",
        "--version",
        "3.1",
        "--json",
    ]);
    let p: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(p["sha256"], hex(&Sha256::digest(&data)));
    assert_eq!(p["file_name"], "valve-3.1.bin");
    let list: Value = serde_json::from_str(&run(&["firmware", "list", "--json"])).expect("json");
    assert_eq!(list[0]["id"], p["id"]);
    let table = run(&["firmware", "list"]);
    assert!(table.contains("valve") && table.contains("3.1"), "{table}");
    // Assigned to a fleet from the CLI: the fleet's defaults name it; unassigned, they are gone.
    let (dev, _) = t.device("cli-dev").await;
    let fleet = dev["fleet_id"].as_str().expect("fleet").to_string();
    let id = p["id"].as_str().expect("id");
    run(&["firmware", "assign", id, "--fleet", &fleet]);
    let attrs: Value = t
        .api
        .get(&format!("/fleets/{fleet}/attributes/shared"), &[])
        .await
        .expect("fleet attributes");
    assert_eq!(attrs["fw_version"]["value"], "3.1", "{attrs}");
    assert_eq!(attrs["fw_size"]["value"], data.len() as u64, "{attrs}");
    run(&["firmware", "unassign", "--fleet", &fleet]);
    let attrs: Value = t
        .api
        .get(&format!("/fleets/{fleet}/attributes/shared"), &[])
        .await
        .expect("fleet attributes");
    assert!(attrs.get("fw_version").is_none(), "{attrs}");
    let back = dir.path().join("back.bin");
    run(&[
        "firmware",
        "download",
        p["id"].as_str().expect("id"),
        "-o",
        back.to_str().expect("utf-8"),
    ]);
    assert_eq!(std::fs::read(&back).expect("read"), data);
}

/// The ThingsBoard OTA device protocol (thingsboard-ota.md §1.3–1.4): a package assigned to a
/// fleet reaches its devices as the five `fw_*` shared attributes in one message, and a device
/// downloads it over MQTT in chunks (without subscribing to the response topic) or whole, and
/// over HTTP; refusals are ThingsBoard's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_fetch_their_fleet_package_over_mqtt_and_http() {
    use common::mqtt::{next_v3, spawn_v3};
    use rumqttc::{Packet, QoS};

    let t = TestApp::start().await;
    let (dev, token) = t.device("valve").await;
    let fleet = dev["fleet_id"].as_str().expect("fleet").to_string();
    let data = image(200_000, 11);
    let http = Http::new(&t);
    let (s, p) = http
        .upload(
            &[
                ("title", "valve-fw"),
                ("version", "1.10"),
                ("fleet_id", &fleet),
            ],
            data.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");

    // Connected and subscribed to attributes before the assignment: it gets the push.
    let mut o = t.v3_options("valve", &token, "");
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut rx) = spawn_v3(o);
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::ConnAck(_))));
    client
        .subscribe("v1/devices/me/attributes", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    assert!(matches!(next_v3(&mut rx).await, Ok(Packet::SubAck(_))));
    let r = http
        .c
        .put(format!("{}/fleets/{fleet}/packages", http.base))
        .bearer_auth(&http.key)
        .json(&json!({"package_id": p["id"]}))
        .send()
        .await
        .expect("assign");
    assert_eq!(r.status(), StatusCode::OK);
    let push = loop {
        if let Ok(Packet::Publish(m)) = next_v3(&mut rx).await
            && m.topic == "v1/devices/me/attributes"
        {
            break serde_json::from_slice::<Value>(&m.payload).expect("json");
        }
    };
    assert_eq!(
        push,
        json!({
            "fw_title": "valve-fw", "fw_version": "1.10", "fw_size": data.len(),
            "fw_checksum_algorithm": "SHA256", "fw_checksum": hex(&Sha256::digest(&data)),
            "fw_manifest": p["manifest"]["manifest"], "fw_signature": p["manifest"]["signature"],
        }),
        "all five keys in one message, the version a string, with the signed manifest"
    );

    // Chunks of 65,536 bytes (the SDK's request size), answered without a subscription.
    let mut got = Vec::new();
    for n in 0.. {
        client
            .publish(
                format!("v2/fw/request/1/chunk/{n}"),
                QoS::AtLeastOnce,
                false,
                "32768",
            )
            .await
            .expect("request");
        let chunk = loop {
            match next_v3(&mut rx).await {
                Ok(Packet::Publish(m)) => {
                    assert_eq!(m.topic, format!("v2/fw/response/1/chunk/{n}"));
                    break m.payload;
                }
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        };
        if chunk.is_empty() {
            break;
        }
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, data, "the chunks make the file; past the end is empty");
    // Over the packet cap (`mqtt.max_packet_size`, 64 KiB here): a chunk that large, or the
    // whole 200 kB file (an empty payload), and software with none assigned: v2/fw/error.
    for (topic, size, want) in [
        ("v2/fw/request/2/chunk/0", "", "PAYLOAD_TOO_LARGE"),
        ("v2/fw/request/3/chunk/0", "1000000", "PAYLOAD_TOO_LARGE"),
        ("v2/sw/request/4/chunk/0", "1024", "NOT_FOUND"),
    ] {
        client
            .publish(topic, QoS::AtLeastOnce, false, size)
            .await
            .expect("request");
        let m = loop {
            if let Ok(Packet::Publish(m)) = next_v3(&mut rx).await {
                break m;
            }
        };
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            ("v2/fw/error", want.as_bytes())
        );
    }

    // MQTT 5, in chunks of 60,000 bytes (each streamed from the file in pieces): the same
    // bytes, and the whole file over the packet cap refused the same way.
    {
        use common::mqtt::{next_v5, spawn_v5};
        use rumqttc::v5::mqttbytes::{QoS as Q5, v5::Packet as P5};
        // Another device of the fleet: the same token would take the v3 session over.
        let d5: Value = t
            .api
            .post("/devices", &json!({"fleet_id": fleet, "name": "valve-5"}))
            .await
            .expect("device");
        let token5 = d5["credentials"]["token"].as_str().expect("token");
        let mut o = t.v5_options("valve-5", token5, "");
        o.set_max_packet_size(Some(1 << 20));
        let (c5, mut rx5) = spawn_v5(o);
        assert!(matches!(next_v5(&mut rx5).await, Ok(P5::ConnAck(_))));
        let mut got = Vec::new();
        async fn next_publish(
            rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<P5, rumqttc::v5::ConnectionError>>,
        ) -> rumqttc::v5::mqttbytes::v5::Publish {
            loop {
                match next_v5(rx).await {
                    Ok(P5::Publish(m)) => break m,
                    Ok(_) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        for n in 0.. {
            c5.publish(
                format!("v2/fw/request/7/chunk/{n}"),
                Q5::AtLeastOnce,
                false,
                "60000",
            )
            .await
            .expect("request");
            let m = next_publish(&mut rx5).await;
            assert_eq!(
                &m.topic[..],
                format!("v2/fw/response/7/chunk/{n}").as_bytes()
            );
            if m.payload.is_empty() {
                break;
            }
            got.extend_from_slice(&m.payload);
        }
        assert_eq!(got, data, "MQTT 5: the chunks make the file");
        c5.publish("v2/fw/request/8/chunk/0", Q5::AtLeastOnce, false, "")
            .await
            .expect("request");
        let m = next_publish(&mut rx5).await;
        assert_eq!(
            (&m.topic[..], &m.payload[..]),
            (&b"v2/fw/error"[..], &b"PAYLOAD_TOO_LARGE"[..])
        );
    }

    // HTTP: whole, a chunk, past the end, a wrong version, no software.
    let get = |q: String| {
        let url = format!("{}/api/v1/{token}/firmware?{q}", t.http_base());
        async move { reqwest::get(url).await.expect("get") }
    };
    let r = get("title=valve-fw&version=1.10".into()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains("valve-fw-1.10.bin")
    );
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.expect("body").to_vec(), data);
    // A device resuming a download: Range on the same URL (no size).
    let ranged = |range: &'static str| {
        let url = format!(
            "{}/api/v1/{token}/firmware?title=valve-fw&version=1.10",
            t.http_base()
        );
        async move {
            reqwest::Client::new()
                .get(url)
                .header("range", range)
                .send()
                .await
                .expect("get")
        }
    };
    let r = ranged("bytes=150000-").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"].to_str().ok(),
        Some(format!("bytes 150000-{}/{}", data.len() - 1, data.len()).as_str())
    );
    assert_eq!(
        r.headers()["x-sha256"].to_str().ok(),
        Some(hex(&Sha256::digest(&data)).as_str())
    );
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        data[150_000..].to_vec()
    );
    let r = ranged("bytes=-10").await;
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        data[data.len() - 10..].to_vec()
    );
    let r = ranged("bytes=999999-").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"].to_str().ok(),
        Some(format!("bytes */{}", data.len()).as_str())
    );
    let r = get("title=valve-fw&version=1.10&size=1000&chunk=3".into()).await;
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        data[3000..4000].to_vec()
    );
    let r = get("title=valve-fw&version=1.10&size=1000&chunk=200".into()).await;
    assert_eq!(
        (r.status(), r.bytes().await.expect("body").len()),
        (StatusCode::OK, 0)
    );
    assert_eq!(
        get("title=valve-fw&version=1.1".into()).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get("title=valve-fw&version=1.10&size=abc".into())
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    let r = reqwest::get(format!(
        "{}/api/v1/{token}/software?title=a&version=b",
        t.http_base()
    ))
    .await
    .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Deleting an assigned package is refused; unassigned, it goes, and devices are told.
    let id = p["id"].as_str().expect("id");
    let (s, v) = http.json("DELETE", &format!("/packages/{id}")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{v}"
    );
    let (s, _) = http
        .json("DELETE", &format!("/fleets/{fleet}/packages"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let deleted = loop {
        if let Ok(Packet::Publish(m)) = next_v3(&mut rx).await
            && m.topic == "v1/devices/me/attributes"
        {
            break serde_json::from_slice::<Value>(&m.payload).expect("json");
        }
    };
    assert_eq!(
        deleted["deleted"].as_array().expect("deleted").len(),
        7,
        "the five keys and the manifest's two: {deleted}"
    );
    let (s, _) = http.json("DELETE", &format!("/packages/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

/// Runs the `corral` binary with `args` (no server); returns stdout.
fn corral(args: &[&str]) -> String {
    let o = Command::new(common::server::bin())
        .args(args)
        .env_clear()
        .output()
        .expect("run corral");
    assert!(
        o.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_signed_and_offline_signatures_are_checked() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    // An offline key, made by the CLI without a server; the server trusts its public key.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("signer.key");
    let public = corral(&["firmware", "keygen", "-o", key.to_str().expect("utf-8")])
        .trim()
        .to_string();
    let t = TestApp::start_with(|c| c.ota.manifest_keys = vec![public.clone()]).await;
    let http = Http::new(&t);
    let data = image(50_000, 21);
    let (s, p) = http
        .upload(&[("title", "gate-fw"), ("version", "4.2")], data.clone())
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");

    // The published keys (public, no API key): the server's own and the offline one.
    let keys: Value = reqwest::get(format!("{}/api/v1/ota/keys", t.http_base()))
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    let sources: Vec<&str> = keys
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|k| k["source"].as_str())
        .collect();
    assert_eq!(sources, ["server", "offline"]);
    assert_eq!(keys[1]["public_key"], public.as_str());
    let key_of = |kid: &str| -> Vec<u8> {
        let k = keys
            .as_array()
            .expect("list")
            .iter()
            .find(|k| k["kid"] == kid)
            .expect("a published key");
        b64.decode(k["public_key"].as_str().expect("key"))
            .expect("base64")
    };
    // A device's check: the signature over the manifest's exact bytes, then the image.
    let verify = |m: &Value| {
        let text = m["manifest"].as_str().expect("manifest");
        let sig = b64
            .decode(m["signature"].as_str().expect("signature"))
            .expect("base64");
        let parsed: Value = serde_json::from_str(text).expect("manifest json");
        let pk = key_of(parsed["kid"].as_str().expect("kid"));
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
            .verify(text.as_bytes(), &sig)
            .expect("the signature verifies");
        parsed
    };
    let parsed = verify(&p["manifest"]);
    assert_eq!(parsed["kid"], keys[0]["kid"], "signed by the server's key");
    assert_eq!(
        (
            &parsed["title"],
            &parsed["version"],
            &parsed["type"],
            parsed["size"].as_u64(),
            parsed["sha256"].as_str()
        ),
        (
            &json!("gate-fw"),
            &json!("4.2"),
            &json!("firmware"),
            Some(data.len() as u64),
            Some(hex(&Sha256::digest(&data)).as_str())
        )
    );

    // Signed offline by the CLI, uploaded: the package carries it from then on.
    let file = dir.path().join("gate-fw.bin");
    std::fs::write(&file, &data).expect("write");
    let sign = |title: &str| {
        corral(&[
            "firmware",
            "sign",
            file.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
            "--title",
            title,
            "--version",
            "4.2",
        ])
    };
    let signed: Value = serde_json::from_str(&sign("gate-fw")).expect("json");
    let id = p["id"].as_str().expect("id");
    let put = |body: Value| {
        let (c, url, key) = (
            http.c.clone(),
            format!("{}/packages/{id}/manifest", http.base),
            http.key.clone(),
        );
        async move {
            let r = c
                .put(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .expect("put");
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = put(signed.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        verify(&v["manifest"])["kid"],
        keys[1]["kid"],
        "now signed offline"
    );
    // Bad input, each refused with its field, nothing changed.
    let mut tampered = signed.clone();
    tampered["manifest"] = json!(
        signed["manifest"]
            .as_str()
            .expect("m")
            .replace("4.2", "4.3")
    );
    let other: Value = serde_json::from_str(&sign("other-fw")).expect("json");
    let mut bad_b64 = signed.clone();
    bad_b64["signature"] = json!("not base64!");
    // Signed by a key the server does not know: the server's own manifest of another
    // installation would look like this.
    let stranger = dir.path().join("stranger.key");
    corral(&[
        "firmware",
        "keygen",
        "-o",
        stranger.to_str().expect("utf-8"),
    ]);
    let unknown: Value = serde_json::from_str(&corral(&[
        "firmware",
        "sign",
        file.to_str().expect("utf-8"),
        "--key",
        stranger.to_str().expect("utf-8"),
        "--title",
        "gate-fw",
        "--version",
        "4.2",
    ]))
    .expect("json");
    for (body, starts) in [
        (tampered, "signature: does not verify"),
        (other, "manifest: its title is not the package's"),
        (bad_b64, "signature: not base64"),
        (unknown, "signature: signed by key"),
        (
            json!({"manifest": "{}", "signature": ""}),
            "manifest: not a manifest",
        ),
    ] {
        let (s, v) = put(body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {v}");
        let m = v["error"]["message"].as_str().unwrap_or("");
        assert!(m.starts_with(starts), "{m}");
    }
    let (_, now) = http.json("GET", &format!("/packages/{id}")).await;
    assert_eq!(
        now["manifest"],
        v_manifest(&signed),
        "unchanged by refusals"
    );
}

fn v_manifest(signed: &Value) -> Value {
    json!({"manifest": signed["manifest"], "signature": signed["signature"]})
}
