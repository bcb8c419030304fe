//! Dashboards against the real `App`: a dashboard with every widget kind, the definition's
//! refusals (400 for what does not parse, 422 naming the widget and field), roles (viewers
//! read, operators edit), fleet scoping (a customer limited to one fleet sees only that fleet's
//! dashboards, not another fleet's nor the workspace's), and the `[ui] tile_url` that reaches
//! the list and the pages' content security policy.

use crate::common;

use common::TestApp;
use serde_json::{Value, json};

async fn call(
    t: &TestApp,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    common::call(&t.http_base(), key, method, path, body).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// A user with these grants and an API key acting as them.
async fn user(t: &TestApp, name: &str, grants: Value) -> String {
    let root = &t.admin_key;
    let (s, u) = call(
        t,
        root,
        "POST",
        "/users",
        Some(json!({"username": name, "password": "long enough password", "grants": grants})),
    )
    .await;
    assert_eq!(s, 201, "{u}");
    let (s, k) = call(
        t,
        root,
        "POST",
        &format!("/users/{}/api-keys", id(&u)),
        Some(json!({"name": "k"})),
    )
    .await;
    assert_eq!(s, 201, "{k}");
    k["secret"].as_str().expect("secret").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_are_validated_shared_by_role_and_scoped_to_fleets() {
    let t = TestApp::start().await;
    let root = t.admin_key.clone();
    let post = |path: &'static str, body: Value| {
        let (t, root) = (&t, root.clone());
        async move {
            let (s, v) = call(t, &root, "POST", path, Some(body)).await;
            assert!(s == 200 || s == 201, "{path}: {s} {v}");
            v
        }
    };
    let ws = id(&post("/workspaces", json!({"name": "plant"})).await);
    let f1 = id(&post("/fleets", json!({"workspace_id": ws, "name": "pumps"})).await);
    let f2 = id(&post("/fleets", json!({"workspace_id": ws, "name": "fans"})).await);
    let d1 = post("/devices", json!({"fleet_id": f1, "name": "pump-1"})).await["device"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let d2 = post("/devices", json!({"fleet_id": f2, "name": "fan-1"})).await["device"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let other_ws = id(&post("/workspaces", json!({"name": "elsewhere"})).await);

    let viewer = user(
        &t,
        "viewer",
        json!([{"workspace_id": ws, "role": "viewer"}]),
    )
    .await;
    let operator = user(
        &t,
        "operator",
        json!([{"workspace_id": ws, "role": "operator"}]),
    )
    .await;
    let customer = user(
        &t,
        "customer",
        json!([{"workspace_id": ws, "role": "operator", "fleets": [f2]}]),
    )
    .await;
    let outsider = user(
        &t,
        "outsider",
        json!([{"workspace_id": other_ws, "role": "admin"}]),
    )
    .await;

    // Every widget kind, over pump-1.
    let widgets = json!([
        {"kind": "chart", "title": "Pressure", "devices": [d1], "keys": ["pressure", "flow"], "interval": "5m", "agg": "max", "width": 4},
        {"kind": "value", "title": "Now", "device_id": d1, "key": "pressure", "unit": "bar"},
        {"kind": "gauge", "title": "Gauge", "device_id": d1, "key": "pressure", "min": 0, "max": 10},
        {"kind": "table", "title": "Pumps", "keys": ["pressure"]},
        {"kind": "conditions", "title": "Alarms", "min_severity": "major"},
        {"kind": "map", "title": "Where"},
    ]);
    let (s, pumps) = call(
        &t,
        &operator,
        "POST",
        "/dashboards",
        Some(json!({"workspace_id": ws, "fleet_id": f1, "name": "Pumps", "window": {"last_mins": 180}, "widgets": widgets})),
    )
    .await;
    assert_eq!(s, 201, "{pumps}");
    assert_eq!(pumps["created_by"], "operator");
    assert_eq!(pumps["widgets"].as_array().map(Vec::len), Some(6));
    // Defaults are filled in and returned.
    assert_eq!(pumps["widgets"][1]["width"], 2);
    assert_eq!(pumps["widgets"][5]["lat_key"], "latitude");
    assert_eq!(pumps["widgets"][3]["limit"], 50);
    let pumps_id = id(&pumps);
    let (s, plant) = call(
        &t,
        &root,
        "POST",
        "/dashboards",
        Some(json!({"workspace_id": ws, "name": "Plant", "widgets": [{"kind": "map", "title": "All"}]})),
    )
    .await;
    assert_eq!(s, 201, "{plant}");
    assert_eq!(plant["window"]["last_mins"], 60, "the default window");
    let plant_id = id(&plant);
    // The customer may edit their own fleet's dashboards.
    let (s, fans) = call(
        &t,
        &customer,
        "POST",
        "/dashboards",
        Some(json!({"workspace_id": ws, "fleet_id": f2, "name": "Fans",
            "widgets": [{"kind": "value", "title": "Speed", "device_id": d2, "key": "rpm"}]})),
    )
    .await;
    assert_eq!(s, 201, "{fans}");
    let fans_id = id(&fans);

    // Refusals: what does not parse is a 400, a broken rule a 422 naming the widget and field.
    let refused = |body: Value| {
        let t = &t;
        let root = root.clone();
        async move { call(t, &root, "POST", "/dashboards", Some(body)).await }
    };
    let base = |widgets: Value| json!({"workspace_id": ws, "fleet_id": f1, "name": "x", "widgets": widgets});
    let (s, v) = refused(base(json!([{"kind": "pie", "title": "p"}]))).await;
    assert_eq!((s, code(&v)), (400, "invalid_body"), "{v}");
    let (s, v) = refused(base(json!([{"kind": "map", "title": "m", "zoom": 3}]))).await;
    assert_eq!((s, code(&v)), (400, "invalid_body"), "{v}");
    let (s, v) = refused(base(
        json!([{"kind": "chart", "title": "c", "devices": [d1], "keys": []}]),
    ))
    .await;
    assert_eq!((s, code(&v)), (422, "invalid_field"), "{v}");
    assert!(message(&v).contains("widgets[0].keys"), "{v}");
    let (s, v) = refused(base(json!([
        {"kind": "map", "title": "m"},
        {"kind": "gauge", "title": "g", "device_id": d1, "key": "k", "min": 3, "max": 1},
    ])))
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).contains("widgets[1].max"), "{v}");
    let (s, v) = refused(base(json!([
        {"kind": "chart", "title": "c", "devices": [d1], "keys": ["a"], "interval": "90s"},
    ])))
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).contains("widgets[0].interval"), "{v}");
    // A device of another fleet has no place on a fleet's dashboard.
    let (s, v) = refused(base(
        json!([{"kind": "value", "title": "v", "device_id": d2, "key": "rpm"}]),
    ))
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        message(&v).contains("not a device of the dashboard's fleet"),
        "{v}"
    );
    let (s, v) = refused(
        json!({"workspace_id": ws, "fleet_id": f1, "name": "x", "window": {"last_mins": 1}}),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).starts_with("window"), "{v}");
    let (s, v) = refused(json!({"workspace_id": ws, "fleet_id": f1, "name": "  "})).await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = refused(json!({"workspace_id": other_ws, "fleet_id": f1, "name": "x"})).await;
    assert_eq!((s, code(&v)), (422, "invalid_field"), "{v}");

    // Roles: viewers read, operators edit.
    let (s, v) = call(&t, &viewer, "GET", &format!("/dashboards/{pumps_id}"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, pumps);
    let edit = json!({"name": "Pumps (hall 2)", "window": {"last_mins": 60},
        "widgets": [{"kind": "table", "title": "Pumps", "keys": ["pressure", "flow"], "limit": 20}]});
    let (s, v) = call(
        &t,
        &viewer,
        "PUT",
        &format!("/dashboards/{pumps_id}"),
        Some(edit.clone()),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = call(&t, &viewer, "POST", "/dashboards", Some(base(json!([])))).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = call(
        &t,
        &operator,
        "PUT",
        &format!("/dashboards/{pumps_id}"),
        Some(edit),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "Pumps (hall 2)");
    assert_eq!(v["workspace_id"], ws, "the scope stays");
    assert_eq!(v["widgets"][0]["limit"], 20);
    let (s, v) = call(
        &t,
        &operator,
        "PUT",
        &format!("/dashboards/{pumps_id}"),
        Some(json!({"name": "x", "fleet_id": f2})),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (400, "invalid_body"),
        "a dashboard does not move: {v}"
    );

    // Fleet scoping: the list, and each dashboard.
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|d| d["name"].as_str().expect("name").to_string())
            .collect()
    };
    let (_, v) = call(&t, &viewer, "GET", "/dashboards", None).await;
    assert_eq!(names(&v), ["Fans", "Plant", "Pumps (hall 2)"]);
    assert!(v.get("tile_url").is_none(), "no tile server: {v}");
    let (_, v) = call(
        &t,
        &viewer,
        "GET",
        &format!("/dashboards?fleet_id={f1}"),
        None,
    )
    .await;
    assert_eq!(names(&v), ["Pumps (hall 2)"]);
    let (_, v) = call(&t, &customer, "GET", "/dashboards", None).await;
    assert_eq!(
        names(&v),
        ["Fans"],
        "a customer sees only their fleet's dashboards"
    );
    let (_, v) = call(&t, &outsider, "GET", "/dashboards", None).await;
    assert_eq!(names(&v), Vec::<String>::new());
    for d in [&pumps_id, &plant_id] {
        for m in ["GET", "PUT", "DELETE"] {
            let body = (m == "PUT").then(|| json!({"name": "mine now"}));
            let (s, v) = call(&t, &customer, m, &format!("/dashboards/{d}"), body).await;
            assert_eq!((s, code(&v)), (404, "not_found"), "customer {m} {d}: {v}");
        }
        let (s, _) = call(&t, &outsider, "GET", &format!("/dashboards/{d}"), None).await;
        assert_eq!(s, 404);
    }
    let (s, v) = call(
        &t,
        &customer,
        "GET",
        &format!("/dashboards/{fans_id}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // Deleting: operators; then it is gone.
    let (s, _) = call(
        &t,
        &viewer,
        "DELETE",
        &format!("/dashboards/{plant_id}"),
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &t,
        &operator,
        "DELETE",
        &format!("/dashboards/{plant_id}"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, v) = call(
        &t,
        &operator,
        "GET",
        &format!("/dashboards/{plant_id}"),
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (404, "not_found"));
    let (s, _) = call(
        &t,
        &root,
        "DELETE",
        &format!("/dashboards/{plant_id}"),
        None,
    )
    .await;
    assert_eq!(s, 404);

    // A fleet's dashboards go with the fleet.
    let (_, f3) = call(
        &t,
        &root,
        "POST",
        "/fleets",
        Some(json!({"workspace_id": ws, "name": "spare"})),
    )
    .await;
    let f3 = id(&f3);
    let (s, spare) = call(
        &t,
        &root,
        "POST",
        "/dashboards",
        Some(json!({"workspace_id": ws, "fleet_id": f3, "name": "Spare"})),
    )
    .await;
    assert_eq!(s, 201, "{spare}");
    let (s, _) = call(&t, &root, "DELETE", &format!("/fleets/{f3}"), None).await;
    assert_eq!(s, 204);
    let (s, _) = call(
        &t,
        &root,
        "GET",
        &format!("/dashboards/{}", id(&spare)),
        None,
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_tile_server_reaches_the_list_and_the_content_security_policy() {
    let t = TestApp::start_with(|c| {
        c.ui.tile_url = Some("https://tiles.example.lan:8443/{z}/{x}/{y}.png".into());
    })
    .await;
    let (s, v) = call(&t, &t.admin_key, "GET", "/dashboards", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["tile_url"],
        "https://tiles.example.lan:8443/{z}/{x}/{y}.png"
    );
    let r = reqwest::get(format!("{}/", t.http_base()))
        .await
        .expect("index");
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        csp.contains("img-src 'self' data: https://tiles.example.lan:8443;"),
        "{csp}"
    );
    assert!(csp.contains("script-src 'self';"), "{csp}");
}

/// A dashboard's live view follows its scope: the event stream filtered by fleet or workspace
/// carries that scope's devices only, whatever their number (no list of device ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_filters_by_fleet_and_workspace() {
    let t = TestApp::start().await;
    let root = t.admin_key.clone();
    // Two workspaces; the first with two fleets. A device in each fleet.
    let mut places: Vec<(&str, String, String, String, String)> = Vec::new();
    for (w, f) in [("w1", "a"), ("w1", "b"), ("w2", "c")] {
        let ws = match places.iter().find(|(n, ..)| *n == w) {
            Some((_, ws, ..)) => ws.clone(),
            None => {
                let (_, v) = call(&t, &root, "POST", "/workspaces", Some(json!({"name": w}))).await;
                id(&v)
            }
        };
        let (_, fl) = call(
            &t,
            &root,
            "POST",
            "/fleets",
            Some(json!({"workspace_id": ws, "name": f})),
        )
        .await;
        let (_, d) = call(
            &t,
            &root,
            "POST",
            "/devices",
            Some(json!({"fleet_id": id(&fl), "name": format!("{f}-1")})),
        )
        .await;
        let token = d["credentials"]["token"]
            .as_str()
            .expect("token")
            .to_string();
        places.push((w, ws, id(&fl), id(&d["device"]), token));
    }
    let http = reqwest::Client::new();
    let stream = |q: String| {
        let (http, url, key) = (
            http.clone(),
            format!("{}/api/v1/events?kinds=telemetry_stored&{q}", t.http_base()),
            root.clone(),
        );
        async move {
            let r = http.get(url).bearer_auth(key).send().await.expect("events");
            assert_eq!(r.status(), 200);
            r
        }
    };
    let mut by_fleet = stream(format!("fleet_id={}", places[0].2)).await;
    let mut by_ws = stream(format!("workspace_id={}", places[2].1)).await;
    // Each device sends once, the awaited one last.
    for (.., token) in [&places[1], &places[2], &places[0]] {
        let r = http
            .post(format!("{}/api/v1/{token}/telemetry", t.http_base()))
            .body(r#"{"t":1}"#)
            .send()
            .await
            .expect("telemetry");
        assert_eq!(r.status(), 200);
    }
    let seen = read_until(&mut by_fleet, &places[0].3).await;
    assert!(
        !seen.contains(&places[1].3) && !seen.contains(&places[2].3),
        "{seen}"
    );
    let seen = read_until(&mut by_ws, &places[2].3).await;
    assert!(
        !seen.contains(&places[0].3) && !seen.contains(&places[1].3),
        "{seen}"
    );
    // The last event of w2 came before w1's a-1: had the stream let w1's through, a-1 would
    // show up in what follows; a new message of c-1 arrives alone.
    let r = http
        .post(format!(
            "{}/api/v1/{}/telemetry",
            t.http_base(),
            places[2].4
        ))
        .body(r#"{"t":2}"#)
        .send()
        .await
        .expect("telemetry");
    assert_eq!(r.status(), 200);
    let seen = read_until(&mut by_ws, &places[2].3).await;
    assert!(!seen.contains(&places[0].3), "{seen}");
}

/// Reads an event stream until `device` shows up in it; what was read.
async fn read_until(r: &mut reqwest::Response, device: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(device) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk())
            .await
            .expect("an event in time")
            .expect("stream")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}
