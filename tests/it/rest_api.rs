//! The REST API over real HTTP(S): CRUD of workspaces, fleets and devices, pagination and
//! filters, authentication on every documented route, stable error codes, and the OpenAPI
//! document matching the router.

use crate::common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Http {
    base: String,
    key: String,
    c: reqwest::Client,
}

impl Http {
    fn new(t: &TestApp) -> Self {
        Http {
            base: t.http_base(),
            key: t.admin_key.clone(),
            c: reqwest::Client::new(),
        }
    }
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .c
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_crud_pagination_and_errors() {
    let mut t = TestApp::start().await;
    let h = Http::new(&t);

    let (s, ws) = h
        .post(
            "/workspaces",
            json!({"name": "Plant A", "description": "north"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let ws_id = ws["id"].as_str().expect("id").to_string();
    let (s, e) = h.post("/workspaces", json!({"name": "plant a"})).await;
    assert_eq!((s, code(&e)), (StatusCode::CONFLICT, "name_taken"));
    let (s, e) = h.post("/workspaces", json!({"name": "   "})).await;
    assert_eq!(
        (s, code(&e)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field")
    );
    let (s, e) = h
        .post("/workspaces", json!({"name": "x".repeat(129)}))
        .await;
    assert_eq!(
        (s, code(&e)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field")
    );
    let (s, e) = h.post("/workspaces", json!({"nme": "typo"})).await;
    assert_eq!((s, code(&e)), (StatusCode::BAD_REQUEST, "invalid_body"));
    let (s, e) = h
        .post("/workspaces", json!({"name": "a", "extra": 1}))
        .await;
    assert_eq!(
        (s, code(&e)),
        (StatusCode::BAD_REQUEST, "invalid_body"),
        "unknown fields are refused"
    );
    let raw =
        h.c.post(format!("{}/api/v1/workspaces", h.base))
            .bearer_auth(&h.key)
            .body("{\"name\":")
            .header("content-type", "application/json")
            .send()
            .await
            .expect("send");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let raw =
        h.c.post(format!("{}/api/v1/workspaces", h.base))
            .bearer_auth(&h.key)
            .body("{\"name\":\"x\"}")
            .send()
            .await
            .expect("send");
    assert_eq!(raw.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, e) = h.get("/workspaces/not-a-uuid").await;
    assert_eq!((s, code(&e)), (StatusCode::BAD_REQUEST, "invalid_id"));
    let (s, e) = h.get(&format!("/workspaces/{}", uuid::Uuid::nil())).await;
    assert_eq!((s, code(&e)), (StatusCode::NOT_FOUND, "not_found"));

    for name in ["Plant B", "Lab", "Plant C"] {
        assert_eq!(
            h.post("/workspaces", json!({"name": name})).await.0,
            StatusCode::CREATED
        );
    }
    // Pagination: pages of 2 walk all 4 in creation order.
    let (_, p1) = h.get("/workspaces?limit=2").await;
    let cur = p1["next_cursor"].as_str().expect("more");
    let (_, p2) = h.get(&format!("/workspaces?limit=2&cursor={cur}")).await;
    let names: Vec<_> = p1["items"]
        .as_array()
        .expect("items")
        .iter()
        .chain(p2["items"].as_array().expect("items"))
        .map(|w| w["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["Plant A", "Plant B", "Lab", "Plant C"]);
    assert!(p2["next_cursor"].is_null());
    let (_, f) = h.get("/workspaces?name=plant").await;
    assert_eq!(f["items"].as_array().expect("items").len(), 3);
    let (s, e) = h.get("/workspaces?limit=0").await;
    assert_eq!((s, code(&e)), (StatusCode::BAD_REQUEST, "invalid_limit"));
    let (s, e) = h.get("/workspaces?cursor=zzz").await;
    assert_eq!((s, code(&e)), (StatusCode::BAD_REQUEST, "invalid_cursor"));

    let (s, w) = h
        .patch(
            &format!("/workspaces/{ws_id}"),
            json!({"description": "south"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (w["name"].as_str(), w["description"].as_str()),
        (Some("Plant A"), Some("south"))
    );
    let (s, e) = h
        .patch(&format!("/workspaces/{ws_id}"), json!({"name": "Lab"}))
        .await;
    assert_eq!((s, code(&e)), (StatusCode::CONFLICT, "name_taken"));

    // Fleets and devices.
    // A workspace that does not exist is not found, as for a caller who cannot see it.
    let (s, e) = h
        .post(
            "/fleets",
            json!({"workspace_id": uuid::Uuid::nil(), "name": "f"}),
        )
        .await;
    assert_eq!((s, code(&e)), (StatusCode::NOT_FOUND, "not_found"));
    let (_, fleet) = h
        .post("/fleets", json!({"workspace_id": ws_id, "name": "pumps"}))
        .await;
    let fleet_id = fleet["id"].as_str().expect("id").to_string();
    let (_, other) = h
        .post("/fleets", json!({"workspace_id": ws_id, "name": "valves"}))
        .await;
    let (s, _) = h
        .post("/fleets", json!({"workspace_id": ws_id, "name": "PUMPS"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, fl) = h.get(&format!("/fleets?workspace_id={ws_id}")).await;
    assert_eq!(fl["items"].as_array().expect("items").len(), 2);

    let mut ids = Vec::new();
    for i in 0..5 {
        let (s, d) = h
            .post(
                "/devices",
                json!({"fleet_id": fleet_id, "name": format!("pump-{i}"), "label": "L"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(d["credentials"]["credential"]["type"], "access_token");
        assert_eq!(d["credentials"]["token"].as_str().map(str::len), Some(20));
        assert_eq!(d["device"]["status"], "offline");
        assert_eq!(d["device"]["workspace_id"], ws_id.as_str());
        ids.push(d["device"]["id"].as_str().expect("id").to_string());
    }
    let (_, d) = h
        .post(
            "/devices",
            json!({"fleet_id": other["id"], "name": "valve-1"}),
        )
        .await;
    let valve = d["device"]["id"].as_str().expect("id").to_string();
    let (s, e) = h
        .post(
            "/devices",
            json!({"fleet_id": other["id"], "name": "Pump-0"}),
        )
        .await;
    assert_eq!(
        (s, code(&e)),
        (StatusCode::CONFLICT, "name_taken"),
        "device names are unique per workspace"
    );

    let (_, l) = h
        .get(&format!("/devices?fleet_id={fleet_id}&limit=3"))
        .await;
    assert_eq!(l["items"].as_array().expect("items").len(), 3);
    let cur = l["next_cursor"].as_str().expect("cursor");
    let (_, l2) = h
        .get(&format!(
            "/devices?fleet_id={fleet_id}&limit=3&cursor={cur}"
        ))
        .await;
    assert_eq!(l2["items"].as_array().expect("items").len(), 2);
    let (_, l) = h.get("/devices?name=valve").await;
    assert_eq!(l["items"][0]["id"], valve.as_str());
    let (_, l) = h
        .get(&format!(
            "/devices?workspace_id={ws_id}&status=offline&limit=1000"
        ))
        .await;
    assert_eq!(l["items"].as_array().expect("items").len(), 6);
    let (_, l) = h.get("/devices?status=online").await;
    assert_eq!(l["items"].as_array().expect("items").len(), 0);
    let (s, e) = h.get("/devices?status=sleeping").await;
    assert_eq!((s, code(&e)), (StatusCode::BAD_REQUEST, "invalid_query"));

    // Move a device between fleets; refuse a fleet of another workspace.
    let (s, d) = h
        .patch(
            &format!("/devices/{}", ids[0]),
            json!({"fleet_id": other["id"], "label": "moved"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["fleet_id"], other["id"]);
    let (_, ws2) = h.post("/workspaces", json!({"name": "Elsewhere"})).await;
    let (_, far) = h
        .post("/fleets", json!({"workspace_id": ws2["id"], "name": "far"}))
        .await;
    let (s, e) = h
        .patch(
            &format!("/devices/{}", ids[0]),
            json!({"fleet_id": far["id"]}),
        )
        .await;
    assert_eq!(
        (s, code(&e)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field")
    );

    // Containers must be emptied before deletion.
    let (s, e) = h.delete(&format!("/fleets/{fleet_id}")).await;
    assert_eq!((s, code(&e)), (StatusCode::CONFLICT, "not_empty"));
    let (s, e) = h.delete(&format!("/workspaces/{ws_id}")).await;
    assert_eq!((s, code(&e)), (StatusCode::CONFLICT, "not_empty"));
    for id in &ids[1..] {
        assert_eq!(
            h.delete(&format!("/devices/{id}")).await.0,
            StatusCode::NO_CONTENT
        );
    }
    assert_eq!(
        h.delete(&format!("/fleets/{fleet_id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.get(&format!("/fleets/{fleet_id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get(&format!("/devices/{}", ids[1])).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, e) = h.get(&format!("/devices/{}/telemetry", ids[1])).await;
    assert_eq!((s, code(&e)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, e) = h
        .get(&format!("/devices/{}/telemetry?from=10&to=5", ids[0]))
        .await;
    assert_eq!((s, code(&e)), (StatusCode::BAD_REQUEST, "invalid_range"));

    // Everything written survives a restart of the app on the same data directory.
    let dir_config = t.config.clone();
    t.stop().await;
    // The store's writer thread releases the database shortly after the last handle is gone.
    let mut app = None;
    for _ in 0..100 {
        let listeners = corral::app::Listeners::bind(&dir_config).expect("bind");
        match corral::app::App::start(dir_config.clone(), listeners).await {
            Ok(a) => {
                app = Some(a);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let app = app.expect("restart on the same data directory");
    let base = format!("http://{}", app.addrs.http);
    let r: Value = reqwest::Client::new()
        .get(format!("{base}/api/v1/devices/{}", ids[0]))
        .bearer_auth(&t.admin_key)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(r["label"], "moved");
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_requires_an_api_key_and_exists() {
    let mut t = TestApp::start().await;
    let base = t.http_base();
    let c = reqwest::Client::new();
    let doc: Value = c
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    let paths = doc["paths"].as_object().expect("paths");
    let expected = [
        "/workspaces",
        "/workspaces/{id}",
        "/fleets",
        "/fleets/{id}",
        "/devices",
        "/devices/bulk",
        "/devices/export",
        "/devices/import",
        "/devices/{id}",
        "/devices/{id}/telemetry",
        "/devices/{id}/telemetry/latest",
        "/devices/{id}/credentials",
        "/devices/{id}/credentials/{credential_id}",
        "/devices/{id}/credentials/{credential_id}/rotate",
        "/devices/{id}/credentials/{credential_id}/revoke",
        "/devices/{id}/csr",
        "/fleets/{id}/provisioning",
        "/fleets/{id}/cas",
        "/fleets/{id}/cas/{ca_id}",
        "/audit",
        "/devices/{id}/telemetry/aggregate",
        "/fleets/{id}/telemetry/aggregate",
        "/devices/{id}/tags",
        "/fleets/{id}/tags",
        "/devices/{id}/attributes",
        "/devices/{id}/attributes/{scope}",
        "/fleets/{id}/attributes/shared",
        "/export",
        "/retention/sweep",
        "/workspaces/{id}/usage",
        "/store/usage",
        "/devices/{id}/trace",
        "/connection-failures",
        "/devices/{id}/jobs",
        "/jobs/{id}",
        "/jobs/{id}/cancel",
        "/fleets/{id}/jobs",
        "/fleets/{id}/packages",
        "/fleet-jobs/{id}",
        "/fleet-jobs/{id}/cancel",
        "/schedules",
        "/schedules/{id}",
        "/schedules/{id}/run",
        "/schedules/{id}/enable",
        "/schedules/{id}/disable",
        "/events",
        "/auth/login",
        "/auth/setup",
        "/auth/status",
        "/auth/me",
        "/auth/logout",
        "/users",
        "/users/{id}",
        "/users/{id}/api-keys",
        "/users/{id}/api-keys/{key_id}",
        "/overview",
        "/packages",
        "/packages/{id}",
        "/packages/{id}/file",
        "/packages/{id}/manifest",
        "/ota/keys",
        "/campaigns",
        "/campaigns/dry-run",
        "/campaigns/stop",
        "/campaigns/{id}",
        "/campaigns/{id}/approve",
        "/campaigns/{id}/start",
        "/campaigns/{id}/pause",
        "/campaigns/{id}/resume",
        "/campaigns/{id}/cancel",
        "/campaigns/{id}/install",
        "/campaigns/{id}/devices",
        "/devices/{id}/ota",
        "/devices/{id}/connections",
        "/integrations",
        "/integrations/{id}",
        "/integrations/{id}/pause",
        "/integrations/{id}/resume",
        "/integrations/{id}/test",
        "/integrations/{id}/status",
        "/integrations/{id}/dead-letters",
        "/integrations/{id}/dead-letters/replay",
        "/conditions",
        "/conditions/{id}",
        "/dashboards",
        "/dashboards/{id}",
        "/conditions/{id}/acknowledge",
        "/conditions/{id}/close",
        "/devices/{id}/conditions",
        "/backup",
        "/workers",
        // Public: the CA files, provisioning and the device API.
        "/ca.pem",
        "/crl.pem",
        "/provision",
        "/{token}/telemetry",
        "/{token}/telemetry/{tag}",
        "/{token}/attributes",
        "/{token}/attributes/updates",
        "/{token}/rpc",
        "/{token}/rpc/{id}",
        "/{token}/software",
        "/{token}/claim",
        "/{token}/conditions",
        "/{token}/firmware",
    ];
    let mut documented: Vec<_> = paths.keys().cloned().collect();
    documented.sort();
    let mut want: Vec<_> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(documented, want);
    let nil = uuid::Uuid::nil().to_string();
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("item") {
            // Public operations say so (`security: [{}]`): signing in (tests/authz.rs), the CA
            // files, provisioning and the device API, whose token is in the path.
            if op["security"] == json!([{}]) {
                continue;
            }
            let m: reqwest::Method = method.to_uppercase().parse().expect("method");
            let concrete = ["{id}", "{credential_id}", "{ca_id}", "{key_id}"]
                .iter()
                .fold(path.replace("{scope}", "shared"), |p, v| p.replace(v, &nil));
            let url = format!("{base}/api/v1{concrete}");
            for key in [None, Some("crl_wrong"), Some("Bearer-less")] {
                let mut r = c.request(m.clone(), &url).json(&json!({}));
                if let Some(k) = key {
                    r = r.header("authorization", format!("Bearer {k}"));
                }
                let resp = r.send().await.expect("send");
                assert_eq!(
                    resp.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with {key:?}"
                );
                let body: Value = resp.json().await.expect("json");
                assert_eq!(code(&body), "unauthorized");
            }
            // With the key, the route exists (whatever the outcome for a nil id).
            let resp = c
                .request(m, &url)
                .bearer_auth(&t.admin_key)
                .json(&json!({}))
                .send()
                .await
                .expect("send");
            if path == "/events" {
                // A live stream: it answers, then never ends on its own.
                assert_eq!(resp.status(), StatusCode::OK);
                checked += 1;
                continue;
            }
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_ne!(
                code(&body),
                "no_route",
                "{method} {path} is documented but not routed"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 123);
    let resp = c
        .get(format!("{base}/api/v1/nothing"))
        .bearer_auth(&t.admin_key)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Public endpoints.
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .expect("h")
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .expect("r")
            .status(),
        StatusCode::OK
    );
    let ca = c
        .get(format!("{base}/api/v1/ca.pem"))
        .send()
        .await
        .expect("ca")
        .text()
        .await
        .expect("text");
    assert_eq!(ca, t.ca_pem);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_the_api_with_the_generated_certificate() {
    let mut t = TestApp::start().await;
    let addr = t.app().addrs.https.expect("https enabled by default");
    let api = corral::client::ApiClient::new(
        &format!("https://127.0.0.1:{}", addr.port()),
        Some(t.admin_key.clone()),
        Some(&t.ca_pem),
    )
    .expect("client");
    let w: Value = api
        .post("/workspaces", &json!({"name": "over-tls"}))
        .await
        .expect("create over https");
    assert_eq!(w["name"], "over-tls");
    // A client that does not trust Corral's CA is refused.
    let untrusting = reqwest::Client::builder().build().expect("client");
    assert!(
        untrusting
            .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
            .send()
            .await
            .is_err()
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_all_complete() {
    // Many writers committing at once share flushes; none may stall. 200 requests at once over
    // HTTP/1.1 are 200 connections from one address: over the default per-address cap.
    let mut t = TestApp::start_with(|c| c.http.max_connections_per_address = 0).await;
    let ws: Value = t
        .api
        .post("/workspaces", &json!({"name": "busy"}))
        .await
        .expect("ws");
    let fleet: Value = t
        .api
        .post("/fleets", &json!({"workspace_id": ws["id"], "name": "f"}))
        .await
        .expect("fleet");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let api = t.api.clone();
        let fleet_id = fleet["id"].clone();
        tasks.push(tokio::spawn(async move {
            api.post::<_, Value>(
                "/devices",
                &json!({"fleet_id": fleet_id, "name": format!("d{i}")}),
            )
            .await
        }));
    }
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        for task in tasks {
            task.await.expect("join").expect("created");
        }
    })
    .await;
    assert!(done.is_ok(), "concurrent creates stalled");
    let page: Value = t
        .api
        .get("/devices", &[("limit", "1000".into())])
        .await
        .expect("list");
    assert_eq!(page["items"].as_array().expect("items").len(), 200);
    t.stop().await;
}

/// The served document describes the API for its readers and for generated clients: every
/// operation has a summary and a description, every authenticated one declares 401 and 403
/// with the error body, ids in paths are UUIDs, names carry the server's own pattern, and job
/// parameters are any JSON value (`null` included), as the server stores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_complete() {
    let mut t = TestApp::start().await;
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", t.http_base()))
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    let mut ops = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            ops += 1;
            let what = format!("{method} {path}");
            let summary = op["summary"].as_str().unwrap_or_default();
            assert!(!summary.is_empty() && summary.len() < 80, "{what}: summary");
            assert!(
                op["description"].as_str().is_some_and(|d| d.len() > 20),
                "{what}: description"
            );
            let responses = op["responses"].as_object().expect("responses");
            if op["security"] != json!([{}]) {
                for status in ["401", "403", "500"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{what}: {status}"
                    );
                }
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().expect("name");
                // Object ids are UUIDs; the device API's `{id}` is an RPC number.
                if p["in"] == "path"
                    && (name == "id" || name.ends_with("_id"))
                    && !path.starts_with("/{token}")
                {
                    assert_eq!(p["schema"]["format"], "uuid", "{what}: {name}");
                }
            }
            if op["requestBody"]["content"]["application/json"].is_object()
                && op["security"] != json!([{}])
            {
                for status in ["400", "413", "415", "422"] {
                    assert!(responses.contains_key(status), "{what}: {status}");
                }
            }
        }
    }
    assert!(ops > 100, "{ops} operations");
    let schemas = &doc["components"]["schemas"];
    for s in [
        "NewWorkspace",
        "NewFleet",
        "NewDevice",
        "NewIntegration",
        "NewSchedule",
    ] {
        assert_eq!(
            schemas[s]["properties"]["name"]["pattern"],
            corral::names::NAME_PATTERN,
            "{s}.name"
        );
    }
    assert_eq!(
        schemas["NewJob"]["properties"]["method"]["pattern"],
        corral::names::METHOD_PATTERN
    );
    assert_eq!(
        schemas["NewWorkspace"]["properties"]["retention_days"]["maximum"],
        36500
    );
    // A job's parameters are whatever was sent, `null` when nothing was: any JSON value.
    for s in ["Job", "FleetJob", "Schedule", "NewJob", "NewFleetJob"] {
        let params = &schemas[s]["properties"]["params"];
        assert!(params.get("type").is_none(), "{s}.params: {params}");
    }
    // Unsigned fields state their real range.
    assert_eq!(
        schemas["NewFleetJob"]["properties"]["per_minute"]["maximum"],
        u32::MAX
    );
    // The readable reference: rendered from the same document, with no script.
    let page = reqwest::get(format!("{}/api/docs", t.http_base()))
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/html"))
    );
    let page = page.text().await.expect("html");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let heading = format!("{}</span> <code>{path}</code>", method.to_uppercase());
            assert!(page.contains(&heading), "{heading}");
            let summary = op["summary"].as_str().expect("summary");
            let escaped = summary
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;");
            assert!(page.contains(&escaped), "{summary}");
        }
    }
    assert!(!page.contains("<script"));
    let css = reqwest::get(format!("{}/api/docs/style.css", t.http_base()))
        .await
        .expect("css");
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    t.stop().await;
}

/// The metrics an operator watches beside the device ones: responses by route template,
/// method and status with their latency, and unfinished jobs by state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_http_routes_and_unfinished_jobs() {
    let mut t = TestApp::start().await;
    let (dev, _token) = t.device("metrics-dev").await;
    let id = dev["id"].as_str().expect("id");
    let http = Http::new(&t);
    for _ in 0..3 {
        assert_eq!(http.get(&format!("/devices/{id}")).await.0, StatusCode::OK);
    }
    let nil = uuid::Uuid::nil();
    assert_eq!(
        http.get(&format!("/devices/{nil}")).await.0,
        StatusCode::NOT_FOUND
    );
    // The device is offline: its jobs wait, queued.
    for n in 0..2 {
        let (s, _) = http
            .post(
                &format!("/devices/{id}/jobs"),
                json!({"method": format!("m{n}")}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let metrics = reqwest::get(format!("{}/metrics", t.http_base()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{line} missing:\n{metrics}"))
    };
    let route = "route=\"/api/v1/devices/{id}\",method=\"GET\"";
    assert_eq!(
        value(&format!(
            "corral_http_responses_total{{{route},status=\"200\"}}"
        )),
        3.0
    );
    assert_eq!(
        value(&format!(
            "corral_http_responses_total{{{route},status=\"404\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!("corral_http_request_seconds_count{{{route}}}")),
        4.0
    );
    assert_eq!(value("corral_jobs_unfinished{state=\"queued\"}"), 2.0);
    assert_eq!(value("corral_jobs_unfinished{state=\"sent\"}"), 0.0);
    t.stop().await;
}

/// The background workers are listed with their state and runs, and counted in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_workers_report_their_runs() {
    let t = TestApp::start().await;
    let workers = common::eventually(10, || {
        let t = &t;
        async move {
            let v: Value = t.api.get("/workers", &[]).await.expect("workers");
            let scheduler = v
                .as_array()?
                .iter()
                .find(|w| w["name"] == "job-scheduler")?
                .clone();
            (scheduler["runs"].as_u64()? >= 2).then_some(v)
        }
    })
    .await;
    let names: Vec<&str> = workers
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    for n in [
        "activity",
        "backups",
        "credential-sweep",
        "job-scheduler",
        "job-sends",
        "retention",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    let scheduler = workers
        .as_array()
        .expect("list")
        .iter()
        .find(|w| w["name"] == "job-scheduler")
        .expect("scheduler");
    assert_eq!(scheduler["every_secs"], 1);
    assert_eq!(scheduler["failures"], 0);
    assert!(scheduler["last_run_at"].as_i64().is_some());
    let metrics = reqwest::get(format!("{}/metrics", t.http_base()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"corral_worker_runs_total{worker="job-scheduler"}"#)),
        "{metrics}"
    );
}
