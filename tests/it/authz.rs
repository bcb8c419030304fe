//! Users, sessions and authorization against the real `App`: the one-time setup link, sign-in
//! with throttling that does not tell users apart, session cookies (HttpOnly, SameSite=Strict,
//! `__Host-` and Secure over TLS), CSRF, logout that ends the session server-side, disabled
//! users; and a route × role matrix over every documented route — unauthenticated, wrong role,
//! other workspace, customer limited to one fleet — expecting 401/403/404 wherever it must,
//! lists and live events filtered to what the caller sees, and every change in the audit log.

use crate::common;

use std::collections::BTreeMap;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Api {
    base: String,
    c: reqwest::Client,
}

impl Api {
    fn new(base: String) -> Self {
        Self {
            base,
            c: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .expect("client"),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.c.request(
            method.parse().expect("method"),
            format!("{}/api/v1{path}", self.base),
        );
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("send");
        let s = resp.status();
        (s, resp.json().await.unwrap_or(Value::Null))
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The session cookie (`name=value`) from a response's Set-Cookie, with its attributes.
fn cookie(resp: &reqwest::Response) -> (String, String) {
    let set = resp
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .expect("ascii")
        .to_string();
    let pair = set.split(';').next().unwrap_or("").to_string();
    (pair, set)
}

#[tokio::test]
async fn setup_sign_in_sessions_csrf_and_throttling() {
    let t = TestApp::start_with(|c| {
        c.https.enabled = true;
        c.auth.login_burst = 6;
        c.auth.login_attempts_per_min = 1;
    })
    .await;
    let api = Api::new(t.http_base());
    let token = t
        .app()
        .setup_token
        .clone()
        .expect("no users yet: a setup token");
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}/api/v1{p}", t.http_base());

    // Before anyone exists, the sign-in page can say so, with no credentials.
    let users_exist = || async {
        let v: Value = http
            .get(url("/auth/status"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        v["users_exist"].as_bool().expect("users_exist")
    };
    assert!(!users_exist().await);

    // The setup link: a wrong token, a weak password, then the first admin.
    let r = http
        .post(url("/auth/setup"))
        .json(&json!({"token": "nope", "username": "root", "password": "correct horse battery"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let r = http
        .post(url("/auth/setup"))
        .json(&json!({"token": token, "username": "root", "password": "short"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 422);
    let r = http
        .post(url("/auth/setup"))
        .json(&json!({"token": token, "username": "root", "password": "correct horse battery"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let (session, attrs) = cookie(&r);
    assert!(session.starts_with("corral_session="), "{attrs}");
    for a in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(a), "{attrs}");
    }
    assert!(!attrs.contains("Secure"), "plain HTTP: {attrs}");
    let me: Value = r.json().await.expect("json");
    assert_eq!(me["user"]["username"], "root");
    assert_eq!(me["user"]["admin"], true);
    let csrf = me["csrf_token"].as_str().expect("csrf token").to_string();
    assert!(users_exist().await);
    // Used once.
    let r = http
        .post(url("/auth/setup"))
        .json(&json!({"token": token, "username": "root2", "password": "correct horse battery"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);

    // The session reads; a change needs the CSRF token.
    let with = |m: reqwest::Method, p: &str| http.request(m, url(p)).header("cookie", &session);
    let r = with(reqwest::Method::GET, "/auth/me")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = with(reqwest::Method::POST, "/workspaces")
        .json(&json!({"name": "w"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    assert_eq!(code(&r.json().await.unwrap_or_default()), "csrf_failed");
    let r = with(reqwest::Method::POST, "/workspaces")
        .header("x-csrf-token", &csrf)
        .json(&json!({"name": "w"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);

    // A second user, a viewer, with a password; sign-in answers do not tell users apart.
    let (s, ws) = api
        .send("GET", "/workspaces", Some(&t.admin_key), None)
        .await;
    assert_eq!(s, 200);
    let ws_id = ws["items"][0]["id"].as_str().expect("ws").to_string();
    let (s, viewer) = api
        .send(
            "POST",
            "/users",
            Some(&t.admin_key),
            Some(
                json!({"username": "vera", "password": "a long enough secret",
                        "grants": [{"workspace_id": ws_id, "role": "viewer"}]}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{viewer}");
    assert!(viewer.get("password_hash").is_none(), "{viewer}");
    let login = |u: &str, p: &str| {
        http.post(url("/auth/login"))
            .json(&json!({"username": u, "password": p}))
            .send()
    };
    let wrong = login("vera", "not her password").await.expect("send");
    assert_eq!(wrong.status(), 401);
    let wrong: Value = wrong.json().await.expect("json");
    let unknown = login("nobody", "not her password").await.expect("send");
    assert_eq!(unknown.status(), 401);
    let unknown: Value = unknown.json().await.expect("json");
    assert_eq!(
        wrong, unknown,
        "the same answer for a wrong password and an unknown user"
    );
    let r = login("Vera", "a long enough secret").await.expect("send");
    assert_eq!(r.status(), 200, "usernames are case-insensitive");
    let (vera, _) = cookie(&r);
    let vera_csrf = r.json::<Value>().await.expect("json")["csrf_token"]
        .as_str()
        .expect("csrf")
        .to_string();
    // A viewer cannot change anything, CSRF token or not.
    let r = http
        .post(url("/workspaces"))
        .header("cookie", &vera)
        .header("x-csrf-token", &vera_csrf)
        .json(&json!({"name": "mine"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);

    // Logout ends the session on the server: the old cookie no longer works.
    let r = http
        .post(url("/auth/logout"))
        .header("cookie", &vera)
        .header("x-csrf-token", &vera_csrf)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 204);
    assert!(cookie(&r).1.contains("Max-Age=0"));
    let r = http
        .get(url("/auth/me"))
        .header("cookie", &vera)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);

    // Disabling a user ends their sessions at once.
    let r = login("vera", "a long enough secret").await.expect("send");
    let (vera, _) = cookie(&r);
    let vid = viewer["id"].as_str().expect("id");
    let (s, _) = api
        .send(
            "PATCH",
            &format!("/users/{vid}"),
            Some(&t.admin_key),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200);
    let r = http
        .get(url("/auth/me"))
        .header("cookie", &vera)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(
        login("vera", "a long enough secret")
            .await
            .expect("send")
            .status(),
        401
    );

    // The last server admin cannot be demoted.
    let root = me["user"]["id"].as_str().expect("id");
    let (s, e) = api
        .send(
            "PATCH",
            &format!("/users/{root}"),
            Some(&t.admin_key),
            Some(json!({"admin": false})),
        )
        .await;
    assert_eq!((s, code(&e)), (StatusCode::FORBIDDEN, "forbidden"));

    // Over TLS the cookie is `__Host-` prefixed and Secure.
    let https = format!("https://{}", t.app().addrs.https.expect("https listener"));
    let tls = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let r = tls
        .post(format!("{https}/api/v1/auth/login"))
        .json(&json!({"username": "root", "password": "correct horse battery"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let (pair, attrs) = cookie(&r);
    assert!(pair.starts_with("__Host-corral_session="), "{attrs}");
    assert!(
        attrs.contains("Secure") && attrs.contains("HttpOnly"),
        "{attrs}"
    );

    // Throttling: past the burst, known and unknown users get the same 429.
    let mut codes = Vec::new();
    for i in 0..8 {
        let u = if i % 2 == 0 { "root" } else { "ghost" };
        let r = login(u, "wrong wrong wrong").await.expect("send");
        if r.status() == 429 {
            // Attempts are counted per minute: the client is told when to come back.
            assert_eq!(
                r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
                Some("60")
            );
        }
        codes.push(r.status().as_u16());
    }
    assert!(codes.contains(&429), "{codes:?}");
    let last_two = &codes[6..];
    assert_eq!(last_two, [429, 429], "{codes:?}");

    // The audit log has who signed in and failed, from where; the password never. Refused
    // sign-ins are written by the store's writer thread without a commit of their own (a
    // flood of them must not force an fsync each), so they show up a moment later.
    let wanted = [
        "login",
        "login_failed",
        "login_throttled",
        "logout",
        "user_created",
        "user_updated",
        "api_change",
    ];
    let audit = common::eventually(10, || async {
        let (s, audit) = api
            .send("GET", "/audit?limit=1000", Some(&t.admin_key), None)
            .await;
        assert_eq!(s, 200);
        let kinds: Vec<String> = audit["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|e| e["kind"].as_str().map(str::to_string))
            .collect();
        wanted
            .iter()
            .all(|k| kinds.iter().any(|x| x == k))
            .then_some(audit)
    })
    .await;
    let items = audit["items"].as_array().expect("items");
    let change = items
        .iter()
        .find(|e| e["kind"] == "api_change" && e["actor"] == "root")
        .expect("root's workspace creation is audited");
    assert_eq!(change["peer"], "127.0.0.1");
    assert!(
        change["detail"]
            .as_str()
            .unwrap_or("")
            .contains("POST /api/v1/workspaces")
    );
    let text = audit.to_string();
    assert!(!text.contains("a long enough secret") && !text.contains("correct horse"));
}

/// Ids of one workspace's objects.
struct World {
    ws: String,
    fleet: String,
    other_fleet: String,
    device: String,
    credential: String,
    job: String,
    fleet_job: String,
    schedule: String,
    condition: String,
    package: String,
    campaign: String,
    dashboard: String,
}

async fn world(api: &Api, key: &str, name: &str) -> World {
    let post = |p: &'static str, b: Value| async move {
        let (s, v) = api.send("POST", p, Some(key), Some(b)).await;
        assert!(s.is_success(), "{p}: {s} {v}");
        v
    };
    let ws = post("/workspaces", json!({"name": name})).await;
    let ws = ws["id"].as_str().expect("id").to_string();
    let fleet = post(
        "/fleets",
        json!({"workspace_id": ws, "name": format!("{name}-f")}),
    )
    .await;
    let fleet = fleet["id"].as_str().expect("id").to_string();
    let other = post(
        "/fleets",
        json!({"workspace_id": ws, "name": format!("{name}-g")}),
    )
    .await;
    let other_fleet = other["id"].as_str().expect("id").to_string();
    let d = post(
        "/devices",
        json!({"fleet_id": fleet, "name": format!("{name}-d")}),
    )
    .await;
    let device = d["device"]["id"].as_str().expect("id").to_string();
    let credential = d["credentials"]["credential"]["id"]
        .as_str()
        .expect("credential id")
        .to_string();
    let (_, job) = api
        .send(
            "POST",
            &format!("/devices/{device}/jobs"),
            Some(key),
            Some(json!({"method": "m"})),
        )
        .await;
    let (s, v) = api
        .send(
            "PUT",
            &format!("/fleets/{fleet}/provisioning"),
            Some(key),
            Some(json!({"strategy": "allow_create_new_devices"})),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let (_, fj) = api
        .send(
            "POST",
            &format!("/fleets/{fleet}/jobs"),
            Some(key),
            Some(json!({"method": "m"})),
        )
        .await;
    // The device opens a condition over the HTTP device API.
    let token = d["credentials"]["token"].as_str().expect("token");
    let r = api
        .c
        .post(format!("{}/api/v1/{token}/conditions", api.base))
        .body(json!({"name": "overheat", "action": "open", "severity": "major"}).to_string())
        .send()
        .await
        .expect("send");
    let opened: Value = r.json().await.expect("json");
    // A package for the fleet (any bytes will do: here a JSON text).
    let r = api
        .c
        .post(format!("{}/api/v1/packages", api.base))
        .bearer_auth(key)
        .query(&[
            ("title", name),
            ("version", "1"),
            ("fleet_id", fleet.as_str()),
        ])
        .body("image")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    let package: Value = r.json().await.expect("json");
    // A campaign of that package (a draft: nothing is sent).
    let campaign = post(
        "/campaigns",
        json!({"name": "c", "package_id": package["id"], "fleet_id": fleet}),
    )
    .await;
    let dashboard = post(
        "/dashboards",
        json!({"workspace_id": ws, "fleet_id": fleet, "name": "d",
            "widgets": [{"kind": "value", "title": "v", "device_id": device, "key": "t"}]}),
    )
    .await;
    let sc = post(
        "/schedules",
        json!({"name": "s", "device_id": device, "method": "m", "trigger": {"cron": {"expr": "@daily"}}}),
    )
    .await;
    World {
        ws,
        fleet,
        other_fleet,
        device,
        credential,
        job: job["id"].as_str().expect("job").to_string(),
        fleet_job: fj["id"].as_str().expect("fleet job").to_string(),
        schedule: sc["id"].as_str().expect("schedule").to_string(),
        package: package["id"].as_str().expect("package").to_string(),
        campaign: campaign["id"].as_str().expect("campaign").to_string(),
        dashboard: dashboard["id"].as_str().expect("dashboard").to_string(),
        condition: opened["conditions"][0]["id"]
            .as_str()
            .expect("condition")
            .to_string(),
    }
}

/// A user with these grants, and an API key that acts as them.
async fn user(api: &Api, admin: &str, name: &str, grants: Value) -> (String, String) {
    let (s, u) = api
        .send(
            "POST",
            "/users",
            Some(admin),
            Some(json!({"username": name, "password": "long enough password", "grants": grants})),
        )
        .await;
    assert_eq!(s, 201, "{u}");
    let id = u["id"].as_str().expect("id").to_string();
    let (s, k) = api
        .send(
            "POST",
            &format!("/users/{id}/api-keys"),
            Some(admin),
            Some(json!({"name": "cli"})),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    (id, k["secret"].as_str().expect("secret").to_string())
}

/// What a route needs: `None` for routes any signed-in caller may call (lists, self), else the
/// least role on the object (server-wide routes need a server admin: `Some("server")`).
fn needs(method: &str, path: &str) -> Option<&'static str> {
    let read = method == "get";
    match path {
        "/auth/me" | "/auth/logout" | "/overview" | "/events" | "/audit" | "/export" => None,
        "/workspaces" | "/fleets" | "/devices" | "/devices/export" | "/schedules"
        | "/conditions" | "/packages" | "/campaigns" | "/dashboards"
            if read =>
        {
            None
        }
        // Without a `fleet_id`, an upload is a package for every fleet.
        "/packages" => Some("server"),
        "/packages/{id}" if method == "delete" => Some("admin"),
        "/packages/{id}/manifest" => Some("admin"),
        // The emergency stop pauses every campaign of the server.
        "/campaigns/stop" => Some("server"),
        // Approval is a workspace admin's.
        "/campaigns/{id}/approve" => Some("admin"),
        p if p.starts_with("/users") => Some("self"),
        p if p.starts_with("/integrations") || p == "/backup" => Some("server"),
        "/workspaces"
        | "/retention/sweep"
        | "/store/usage"
        | "/workers"
        | "/connection-failures" => Some("server"),
        "/workspaces/{id}" if read => Some("viewer"),
        "/workspaces/{id}" if method == "delete" => Some("server"),
        "/workspaces/{id}" => Some("admin"),
        "/workspaces/{id}/usage" => Some("viewer"),
        "/fleets" => Some("admin"),
        "/fleets/{id}/provisioning" => Some("admin"),
        "/fleets/{id}" | "/fleets/{id}/cas" | "/fleets/{id}/cas/{ca_id}" if !read => Some("admin"),
        "/devices/{id}" if method == "delete" => Some("admin"),
        _ if read => Some("viewer"),
        _ => Some("operator"),
    }
}

fn rank(r: &str) -> u8 {
    match r {
        "viewer" => 1,
        "operator" => 2,
        "admin" => 3,
        _ => 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_role_and_workspace() {
    let t = TestApp::start().await;
    let api = Api::new(t.http_base());
    let root = t.admin_key.clone();
    let w1 = world(&api, &root, "one").await;
    let w2 = world(&api, &root, "two").await;
    let g = |role: &str| json!([{"workspace_id": w1.ws, "role": role}]);
    let (_, viewer) = user(&api, &root, "viewer", g("viewer")).await;
    let (_, operator) = user(&api, &root, "operator", g("operator")).await;
    let (_, wsadmin) = user(&api, &root, "wsadmin", g("admin")).await;
    let (outsider_id, outsider) = user(
        &api,
        &root,
        "outsider",
        json!([{"workspace_id": w2.ws, "role": "admin"}]),
    )
    .await;
    // A customer: operator, but only of w1's second fleet.
    let (_, customer) = user(
        &api,
        &root,
        "customer",
        json!([{"workspace_id": w1.ws, "role": "operator", "fleets": [w1.other_fleet]}]),
    )
    .await;

    // A webhook integration (server-wide: server admins only).
    let (s, integ) = api
        .send(
            "POST",
            "/integrations",
            Some(&root),
            Some(json!({"name": "sink", "url": "http://127.0.0.1:9/hook", "workspace_id": w1.ws})),
        )
        .await;
    assert_eq!(s, 201, "{integ}");
    let integration = integ["integration"]["id"].as_str().expect("id").to_string();
    let (_, doc) = api.send("GET", "/openapi.json", None, None).await;
    let nil = uuid::Uuid::nil().to_string();
    let mut checked = 0;
    let paths = doc["paths"].as_object().expect("paths").clone();
    for (path, item) in &paths {
        for (method, op) in item.as_object().expect("item") {
            // Public operations (signing in, the CA files, provisioning, the device API) have
            // no role to check.
            if op["security"] == json!([{}]) {
                continue;
            }
            // Deleting real objects would spoil the rest of the matrix: deletes are checked
            // for refusals only, on the real objects.
            let concrete = path
                .replace("/workspaces/{id}", &format!("/workspaces/{}", w1.ws))
                .replace("/fleets/{id}", &format!("/fleets/{}", w1.fleet))
                .replace("/devices/{id}", &format!("/devices/{}", w1.device))
                .replace("/jobs/{id}", &format!("/jobs/{}", w1.job))
                .replace("/fleet-jobs/{id}", &format!("/fleet-jobs/{}", w1.fleet_job))
                .replace("/schedules/{id}", &format!("/schedules/{}", w1.schedule))
                .replace("/conditions/{id}", &format!("/conditions/{}", w1.condition))
                .replace("/packages/{id}", &format!("/packages/{}", w1.package))
                .replace("/campaigns/{id}", &format!("/campaigns/{}", w1.campaign))
                .replace("/dashboards/{id}", &format!("/dashboards/{}", w1.dashboard))
                .replace("/users/{id}", &format!("/users/{outsider_id}"))
                .replace(
                    "/integrations/{id}",
                    &format!("/integrations/{integration}"),
                )
                .replace("{credential_id}", &w1.credential)
                .replace("{scope}", "shared")
                .replace("{ca_id}", &nil)
                .replace("{key_id}", &nil);
            let concrete = match path.as_str() {
                "/export" => format!("/export?device_id={}", w1.device),
                _ => concrete,
            };
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/fleets") => json!({"workspace_id": w1.ws, "name": "new"}),
                ("put", "/packages/{id}/manifest") => json!({"manifest": "{}", "signature": ""}),
                ("post", "/campaigns" | "/campaigns/dry-run") => {
                    json!({"name": "n", "package_id": w1.package, "fleet_id": w1.fleet})
                }
                ("post", "/devices") => json!({"fleet_id": w1.fleet, "name": "new"}),
                // A fleet's dashboard: the operator role on the fleet.
                ("post", "/dashboards") => {
                    json!({"workspace_id": w1.ws, "fleet_id": w1.fleet, "name": "new"})
                }
                // Each device is authorized as its own route would be; a caller who may
                // change none of them is refused as that route would refuse them.
                ("post", "/devices/bulk") => {
                    json!({"action": {"type": "label", "label": "x"}, "device_ids": [w1.device]})
                }
                ("post", "/devices/import") => {
                    json!({"csv": "name\nimported", "fleet_id": w1.fleet, "dry_run": true})
                }
                ("post", "/schedules") => json!({"name": "n", "device_id": w1.device,
                    "method": "m", "trigger": {"cron": {"expr": "@daily"}}}),
                _ => json!({}),
            };
            let m = method.to_uppercase();
            let is_events = path == "/events";
            let call = |key: Option<String>| {
                let (api, m, concrete, body) = (&api, m.clone(), concrete.clone(), body.clone());
                async move {
                    if is_events {
                        // A live stream: only its status.
                        let mut r = api.c.get(format!("{}/api/v1{concrete}", api.base));
                        if let Some(k) = key {
                            r = r.bearer_auth(k);
                        }
                        let resp = r.send().await.expect("send");
                        return (resp.status(), Value::Null);
                    }
                    api.send(&m, &concrete, key.as_deref(), Some(body)).await
                }
            };
            // Unauthenticated, and with a key that does not exist: 401.
            for key in [None, Some("crl_nope".to_string())] {
                let (s, v) = call(key).await;
                assert_eq!(s, 401, "{m} {path} → {v}");
            }
            let need = needs(method, path);
            // The outsider (admin of the other workspace) never sees w1's objects.
            if path.contains('{')
                && !path.starts_with("/users")
                && !path.starts_with("/integrations")
            {
                let (s, v) = call(Some(outsider.clone())).await;
                assert_eq!(s, 404, "outsider: {m} {path} → {v}");
                assert_eq!(code(&v), "not_found", "outsider: {m} {path}");
            }
            // The customer sees w1's second fleet only; `w1.fleet` and its device are not theirs.
            if path.starts_with("/fleets/{id}")
                || path.starts_with("/devices/{id}")
                || path.starts_with("/jobs/")
                || path.starts_with("/fleet-jobs/")
                || path.starts_with("/schedules/{id}")
                || path.starts_with("/conditions/{id}")
                || path.starts_with("/packages/{id}")
                || path.starts_with("/campaigns/{id}")
                || path.starts_with("/dashboards/{id}")
            {
                let (s, v) = call(Some(customer.clone())).await;
                assert_eq!(s, 404, "customer: {m} {path} → {v}");
            }
            for (role, key) in [
                ("viewer", &viewer),
                ("operator", &operator),
                ("admin", &wsadmin),
            ] {
                let refused = match need {
                    None => false,
                    Some("self") => true,
                    Some(n) => rank(role) < rank(n),
                };
                if method == "delete" && !refused {
                    // Allowed deletes would remove the objects the rest of the matrix uses.
                    continue;
                }
                let (s, v) = call(Some(key.clone())).await;
                if refused {
                    assert_eq!(s, 403, "{role}: {m} {path} → {v}");
                    assert_eq!(code(&v), "forbidden", "{role}: {m} {path}");
                } else {
                    // Allowed: whatever the handler says of the body, not an auth refusal (a
                    // nil CA or key id is a genuine 404).
                    let nil_object = path.contains("{ca_id}") || path.contains("{key_id}");
                    assert!(
                        s != 401 && s != 403 && (s != 404 || nil_object),
                        "{role}: {m} {path} → {s} {v}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 70, "{checked} routes checked");

    // Lists show only what the caller sees.
    let names = |v: &Value, field: &str| -> Vec<String> {
        let mut n: Vec<String> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|x| x[field].as_str().unwrap_or("").to_string())
            .collect();
        n.sort();
        n
    };
    let (_, v) = api.send("GET", "/workspaces", Some(&outsider), None).await;
    assert_eq!(names(&v, "name"), ["two"]);
    let (_, v) = api.send("GET", "/fleets", Some(&customer), None).await;
    assert_eq!(names(&v, "id"), std::slice::from_ref(&w1.other_fleet));
    let (_, v) = api.send("GET", "/devices", Some(&customer), None).await;
    assert_eq!(names(&v, "id"), Vec::<String>::new());
    let (_, v) = api.send("GET", "/devices", Some(&outsider), None).await;
    assert_eq!(names(&v, "id"), std::slice::from_ref(&w2.device));
    let (_, v) = api.send("GET", "/schedules", Some(&viewer), None).await;
    let ids: Vec<&str> = v
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(ids.contains(&w1.schedule.as_str()) && !ids.contains(&w2.schedule.as_str()));
    let (s, _) = api
        .send(
            "GET",
            &format!("/export?device_id={}", w2.device),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = api.send("GET", "/export", Some(&viewer), None).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (_, v) = api.send("GET", "/overview", Some(&outsider), None).await;
    assert_eq!(v["devices"]["total"], 1, "{v}");
    // Conditions: each workspace's own (w1's may have been closed by the matrix: all states).
    let (_, v) = api
        .send("GET", "/conditions?state=all", Some(&outsider), None)
        .await;
    assert_eq!(names(&v, "id"), std::slice::from_ref(&w2.condition));
    let (_, v) = api
        .send("GET", "/conditions?state=all", Some(&customer), None)
        .await;
    assert_eq!(names(&v, "id"), Vec::<String>::new());

    // Audit: a workspace admin reads their fleets' records; nobody else's.
    let (_, v) = api
        .send("GET", "/audit?limit=1000", Some(&outsider), None)
        .await;
    let fleets: BTreeMap<String, ()> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["fleet_id"].as_str().map(|f| (f.to_string(), ())))
        .collect();
    assert!(
        fleets
            .keys()
            .all(|f| *f == w2.fleet || *f == w2.other_fleet),
        "{fleets:?}"
    );
    // (Refusals are written by the store's writer thread without a commit of their own, so
    // they may show up a moment after the answer.)
    common::eventually(10, || async {
        let (_, v) = api
            .send(
                "GET",
                "/audit?actor=viewer&kind=api_denied",
                Some(&root),
                None,
            )
            .await;
        (!v["items"].as_array().expect("items").is_empty()).then_some(())
    })
    .await;
    // Refused credentials are authentication events too, with the client's address. One
    // refused key per route came from this address; past a burst of 20 the records are capped
    // per address, so a flood cannot push the rest of the log out.
    let v = common::eventually(10, || async {
        let (_, v) = api
            .send(
                "GET",
                "/audit?kind=api_auth_failed&limit=1000",
                Some(&root),
                None,
            )
            .await;
        (v["items"].as_array().expect("items").len() >= 20).then_some(v)
    })
    .await;
    let items = v["items"].as_array().expect("items");
    let e = &items[0];
    assert_eq!(e["peer"], "127.0.0.1", "{e}");
    assert!(
        e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("unknown or revoked API key")),
        "{e}"
    );
    assert!(
        items.len() >= 20 && items.len() < checked,
        "{} records for {checked} refused keys",
        items.len()
    );

    // Live events: the outsider's stream carries their workspace's devices only. A job on
    // w1's device is created first; when w2's job event arrives, w1's would have come before.
    let mut stream = api
        .c
        .get(format!("{}/api/v1/events?kinds=job_updated", api.base))
        .bearer_auth(&outsider)
        .send()
        .await
        .expect("events");
    assert_eq!(stream.status(), 200);
    let (s, _) = api
        .send(
            "POST",
            &format!("/devices/{}/jobs", w1.device),
            Some(&root),
            Some(json!({"method": "a"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = api
        .send(
            "POST",
            &format!("/devices/{}/jobs", w2.device),
            Some(&root),
            Some(json!({"method": "b"})),
        )
        .await;
    assert_eq!(s, 201);
    let mut seen = String::new();
    while !seen.contains(&w2.device) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.chunk())
            .await
            .expect("an event in time")
            .expect("stream")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains(&w1.device), "{seen}");
}
