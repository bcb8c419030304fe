//! The devices table at scale against the real `App`: sorting by each column with a total and
//! offset pages, filters (label, enabled, firmware, silence), latest values as columns; bulk
//! actions checked on the server device by device (authorization per device as the single
//! routes, dry runs that change nothing, audit records); CSV import whose dry run names every
//! bad row by line; CSV export of the filtered list; and the overview's fleet health.

use crate::common;

use common::TestApp;
use serde_json::{Value, json};

struct Api {
    base: String,
}

impl Api {
    async fn call(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        common::call(&self.base, key, method, path, body).await
    }
    /// A device's HTTP API call with its access token.
    async fn device_post(&self, token: &str, what: &str, body: Value) -> u16 {
        reqwest::Client::new()
            .post(format!("{}/api/v1/{token}/{what}", self.base))
            .body(body.to_string())
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    }
}

fn names(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_string())
        .collect()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A user with these grants and an API key acting as them.
async fn user(api: &Api, admin: &str, name: &str, grants: Value) -> String {
    let (s, u) = api
        .call(
            admin,
            "POST",
            "/users",
            Some(json!({"username": name, "password": "long enough password", "grants": grants})),
        )
        .await;
    assert_eq!(s, 201, "{u}");
    let id = u["id"].as_str().expect("id");
    let (s, k) = api
        .call(
            admin,
            "POST",
            &format!("/users/{id}/api-keys"),
            Some(json!({"name": "k"})),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    k["secret"].as_str().expect("secret").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_filter_page_bulk_import_export_and_fleet_health() {
    let t = TestApp::start().await;
    let api = Api {
        base: t.http_base(),
    };
    let root = t.admin_key.clone();
    let post = |path: &'static str, body: Value| {
        let (api, root) = (&api, root.clone());
        async move {
            let (s, v) = api.call(&root, "POST", path, Some(body)).await;
            assert!(s < 300, "{path}: {s} {v}");
            v
        }
    };
    let get = |path: String| {
        let (api, root) = (&api, root.clone());
        async move {
            let (s, v) = api.call(&root, "GET", &path, None).await;
            assert_eq!(s, 200, "{path}: {v}");
            v
        }
    };
    let ws = post("/workspaces", json!({"name": "plant"})).await["id"].clone();
    let ws = ws.as_str().expect("ws").to_string();
    let north = post("/fleets", json!({"workspace_id": ws, "name": "north"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let south = post("/fleets", json!({"workspace_id": ws, "name": "south"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    // Twelve devices: n-00..n-07 in north, s-00..s-03 in south; odd ones labelled "roof".
    let mut ids = std::collections::BTreeMap::new();
    let mut tokens = std::collections::BTreeMap::new();
    for i in 0..12 {
        let (fleet, name) = if i < 8 {
            (&north, format!("n-{i:02}"))
        } else {
            (&south, format!("s-{:02}", i - 8))
        };
        let label = if i % 2 == 1 { "roof" } else { "cellar" };
        let d = post(
            "/devices",
            json!({"fleet_id": fleet, "name": name, "label": label}),
        )
        .await;
        ids.insert(
            name.clone(),
            d["device"]["id"].as_str().expect("id").to_string(),
        );
        tokens.insert(
            name,
            d["credentials"]["token"]
                .as_str()
                .expect("token")
                .to_string(),
        );
    }
    // Three devices report firmware (one as a client attribute) and a temperature.
    assert_eq!(
        api.device_post(
            &tokens["n-01"],
            "telemetry",
            json!({"current_fw_version": "1.10.0", "temperature": 21.5})
        )
        .await,
        200
    );
    assert_eq!(
        api.device_post(
            &tokens["n-02"],
            "telemetry",
            json!({"current_fw_version": "1.9.2", "temperature": 19})
        )
        .await,
        200
    );
    assert_eq!(
        api.device_post(
            &tokens["s-00"],
            "attributes",
            json!({"current_fw_version": "2.0.0"})
        )
        .await,
        200
    );

    // ---- sorting, totals and offset pages ----
    let v = get(format!(
        "/devices?workspace_id={ws}&sort=name&order=desc&limit=5"
    ))
    .await;
    assert_eq!(v["total"], 12);
    assert_eq!(names(&v), ["s-03", "s-02", "s-01", "s-00", "n-07"]);
    assert!(v["next_cursor"].is_null());
    let v = get(format!(
        "/devices?workspace_id={ws}&sort=name&offset=10&limit=5"
    ))
    .await;
    assert_eq!(names(&v), ["s-02", "s-03"]);
    let v = get(format!("/devices?workspace_id={ws}&sort=firmware&limit=4")).await;
    assert_eq!(
        names(&v)[..3],
        ["n-02", "n-01", "s-00"],
        "1.9.2 < 1.10.0 < 2.0.0"
    );
    assert_eq!(v["items"][0]["firmware_version"], "1.9.2");
    let v = get(format!(
        "/devices?workspace_id={ws}&sort=firmware&order=desc&limit=3"
    ))
    .await;
    assert_eq!(names(&v), ["s-00", "n-01", "n-02"]);
    let v = get(format!(
        "/devices?workspace_id={ws}&sort=last_activity&order=desc&limit=3"
    ))
    .await;
    assert_eq!(names(&v).len(), 3);
    assert!(
        names(&v)
            .iter()
            .all(|n| ["n-01", "n-02", "s-00"].contains(&n.as_str())),
        "the active devices first: {v}"
    );
    let v = get(format!(
        "/devices?workspace_id={ws}&sort=fleet&order=desc&limit=1"
    ))
    .await;
    assert_eq!(v["items"][0]["fleet_id"], south.as_str());
    // Latest values as columns; filters by label, firmware and silence.
    let v = get(format!(
        "/devices?workspace_id={ws}&sort=name&keys=temperature,humidity&limit=3"
    ))
    .await;
    assert_eq!(v["items"][1]["name"], "n-01");
    assert_eq!(v["items"][1]["latest"]["temperature"]["value"], 21.5);
    assert!(v["items"][1]["latest"].get("humidity").is_none());
    assert!(v["items"][0].get("latest").is_none());
    let v = get(format!(
        "/devices?workspace_id={ws}&label=ROOF&fleet_id={south}"
    ))
    .await;
    assert_eq!(v["total"], 2);
    let v = get(format!("/devices?workspace_id={ws}&firmware=2.0.0")).await;
    assert_eq!(names(&v), ["s-00"]);
    let v = get(format!(
        "/devices?workspace_id={ws}&silent_mins=60&sort=name&limit=1000"
    ))
    .await;
    assert_eq!(v["total"], 9, "three devices spoke just now");
    // The cursor listing carries the total too; bad queries are 400s with their code.
    let v = get(format!("/devices?workspace_id={ws}&limit=5")).await;
    assert_eq!((v["total"].as_u64(), names(&v).len()), (Some(12), 5));
    assert!(v["next_cursor"].is_string());
    let cur = v["next_cursor"].as_str().expect("cursor");
    let (s, e) = api
        .call(
            &root,
            "GET",
            &format!("/devices?sort=name&cursor={cur}"),
            None,
        )
        .await;
    assert_eq!((s, code(&e)), (400, "invalid_query"));
    let (s, e) = api
        .call(&root, "GET", "/devices?keys=a,b,c,d,e,f,g,h,i,j,k", None)
        .await;
    assert_eq!((s, code(&e)), (400, "invalid_keys"));
    let (s, e) = api.call(&root, "GET", "/devices?sort=colour", None).await;
    assert_eq!((s, code(&e)), (400, "invalid_query"));

    // ---- bulk actions ----
    let viewer = user(
        &api,
        &root,
        "viewer",
        json!([{"workspace_id": ws, "role": "viewer"}]),
    )
    .await;
    let operator = user(
        &api,
        &root,
        "operator",
        json!([{"workspace_id": ws, "role": "operator"}]),
    )
    .await;
    // A customer: operator of the south fleet only.
    let customer = user(
        &api,
        &root,
        "customer",
        json!([{"workspace_id": ws, "role": "operator", "fleets": [south]}]),
    )
    .await;
    let bulk = |key: String, body: Value| {
        let api = &api;
        async move { api.call(&key, "POST", "/devices/bulk", Some(body)).await }
    };
    let some = json!([ids["n-00"], ids["s-01"], ids["s-02"]]);
    // A viewer may change none of them: refused as the single route refuses.
    let (s, e) = bulk(
        viewer.clone(),
        json!({"action": {"type": "label", "label": "x"}, "device_ids": some}),
    )
    .await;
    assert_eq!((s, code(&e)), (403, "forbidden"));
    // The customer changes their fleet's devices; the other one does not exist for them.
    let (s, r) = bulk(
        customer.clone(),
        json!({"action": {"type": "label", "label": "attic"}, "device_ids": some}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["matched"].as_u64(), r["succeeded"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(r["results"][0]["status"], 404);
    assert_eq!(r["results"][0]["code"], "not_found");
    assert!(
        r["results"][0].get("name").is_none(),
        "no name of an unseen device"
    );
    for (n, want) in [("n-00", "cellar"), ("s-01", "attic"), ("s-02", "attic")] {
        let d = get(format!("/devices/{}", ids[n])).await;
        assert_eq!(d["label"], want, "{n}");
    }
    // Deleting needs the admin role on each device: an operator is refused outright.
    let (s, e) = bulk(
        operator.clone(),
        json!({"action": {"type": "delete"}, "device_ids": some}),
    )
    .await;
    assert_eq!((s, code(&e)), (403, "forbidden"));
    // A filter: a dry run says how many, and changes nothing.
    let by_filter = json!({"action": {"type": "disable"}, "filter": {"fleet_id": south, "label": "attic"}, "dry_run": true});
    let (s, r) = bulk(operator.clone(), by_filter.clone()).await;
    assert_eq!(
        (s, r["matched"].as_u64(), r["succeeded"].as_u64()),
        (200, Some(2), Some(2))
    );
    let v = get(format!("/devices?fleet_id={south}&enabled=false")).await;
    assert_eq!(v["total"], 0, "a dry run changes nothing");
    let mut real = by_filter.clone();
    real["dry_run"] = json!(false);
    let (s, r) = bulk(operator.clone(), real).await;
    assert_eq!((s, r["succeeded"].as_u64()), (200, Some(2)), "{r}");
    let v = get(format!("/devices?fleet_id={south}&enabled=false&sort=name")).await;
    assert_eq!(names(&v), ["s-01", "s-02"]);
    // Shared attributes, a command, revoked credentials and a move, each seen on the server.
    let two = json!([ids["n-03"], ids["n-04"]]);
    let (s, r) = bulk(
        operator.clone(),
        json!({"action": {"type": "set_shared", "values": {"interval": 30}}, "device_ids": two}),
    )
    .await;
    assert_eq!((s, r["succeeded"].as_u64()), (200, Some(2)), "{r}");
    let a = get(format!("/devices/{}/attributes", ids["n-04"])).await;
    assert!(a.to_string().contains("interval"), "{a}");
    let (s, r) = bulk(
        operator.clone(),
        json!({"action": {"type": "command", "method": "reboot", "params": {"delay": 5}}, "device_ids": two}),
    )
    .await;
    assert_eq!((s, r["succeeded"].as_u64()), (200, Some(2)), "{r}");
    let jobs = get(format!("/devices/{}/jobs", ids["n-03"])).await;
    assert_eq!(jobs[0]["method"], "reboot");
    let (s, r) = bulk(
        operator.clone(),
        json!({"action": {"type": "revoke_credentials"}, "device_ids": [ids["n-05"]]}),
    )
    .await;
    assert_eq!((s, r["succeeded"].as_u64()), (200, Some(1)), "{r}");
    let creds = get(format!("/devices/{}/credentials", ids["n-05"])).await;
    assert_eq!(creds[0]["status"], "revoked");
    assert_eq!(
        api.device_post(&tokens["n-05"], "telemetry", json!({"t": 1}))
            .await,
        403,
        "a revoked token is refused"
    );
    let (s, r) = bulk(
        operator.clone(),
        json!({"action": {"type": "move", "fleet_id": south}, "device_ids": [ids["n-06"]]}),
    )
    .await;
    assert_eq!((s, r["succeeded"].as_u64()), (200, Some(1)), "{r}");
    assert_eq!(
        get(format!("/devices/{}", ids["n-06"])).await["fleet_id"],
        south.as_str()
    );
    // The customer may not move a device into a fleet that is not theirs.
    let (s, _) = bulk(
        customer.clone(),
        json!({"action": {"type": "move", "fleet_id": north}, "device_ids": [ids["s-03"]]}),
    )
    .await;
    assert_eq!(s, 404);
    // Each change is in the audit log, per device.
    let audit = get("/audit?kind=api_change&limit=1000".to_string()).await;
    let bulk_records: Vec<&Value> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["detail"].as_str().is_some_and(|d| d.starts_with("bulk ")))
        .collect();
    assert!(
        bulk_records
            .iter()
            .any(|e| e["detail"] == "bulk disable" && e["device_id"] == ids["s-01"].as_str()),
        "{bulk_records:?}"
    );
    // Bounded: more than 1000 devices are refused, as is a request naming none.
    let many: Vec<String> = (0..1001)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let (s, e) = bulk(
        root.clone(),
        json!({"action": {"type": "enable"}, "device_ids": many}),
    )
    .await;
    assert_eq!((s, code(&e)), (422, "too_many_devices"));
    let (s, e) = bulk(root.clone(), json!({"action": {"type": "enable"}})).await;
    assert_eq!((s, code(&e)), (422, "invalid_field"));

    // ---- CSV import ----
    let csv = "name,label,fleet,token,shared:interval\n\
               imp-1,roof,north,imp-token-1,15\n\
               ,nameless,north,,\n\
               imp-1,again,north,,\n\
               n-00,taken,south,,\n\
               imp-2,,nowhere,,\n\
               imp-3,,south,has space,\n\
               imp-4,short\n\
               imp-5,,,,\n\
               imp-6,ok,South,,{\"a\":1}\n";
    let import = |key: String, body: Value| {
        let api = &api;
        async move { api.call(&key, "POST", "/devices/import", Some(body)).await }
    };
    let (s, r) = import(
        operator.clone(),
        json!({"csv": csv, "workspace_id": ws, "dry_run": true}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let bad = bad_cells(&r);
    assert_eq!(
        bad,
        [
            (3, "name"),
            (4, "name"),
            (5, "name"),
            (6, "fleet"),
            (7, "token"),
            (8, "row"),
            (9, "fleet")
        ],
        "{r}"
    );
    assert_eq!(
        (r["rows"].as_u64(), r["valid"].as_u64()),
        (Some(9), Some(2))
    );
    let v = get(format!("/devices?workspace_id={ws}")).await;
    assert_eq!(v["total"], 12, "a dry run creates nothing");
    // The real run refuses the whole file while a row is bad.
    let (s, e) = import(operator.clone(), json!({"csv": csv, "workspace_id": ws})).await;
    assert_eq!((s, code(&e)), (422, "invalid_rows"));
    assert!(
        e["error"]["message"]
            .as_str()
            .expect("message")
            .contains("line 3")
    );
    // A customer may import only into their own fleet.
    let (s, r) = import(
        customer.clone(),
        json!({"csv": "name,fleet\nc-1,north\nc-2,south\n", "workspace_id": ws, "dry_run": true}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["errors"][0]["line"], 2);
    assert_eq!(r["valid"], 1);
    // A clean file imports, with attributes and the given token working.
    let good = "name,label,fleet,token,shared:interval,server:site\n\
                imp-1,roof,north,imp-token-1,15,\"plant 2\"\n\
                imp-2,,,,,\n";
    let (s, r) = import(operator.clone(), json!({"csv": good, "fleet_id": south})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["created"].as_array().expect("created").len(), 2);
    assert!(
        r["created"][1]["token"].is_string(),
        "a generated token, shown once"
    );
    let imp1 = r["created"][0]["device_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        get(format!("/devices/{imp1}")).await["fleet_id"],
        north.as_str()
    );
    assert_eq!(
        r["created"][1]["fleet_id"],
        south.as_str(),
        "the default fleet"
    );
    let a = get(format!("/devices/{imp1}/attributes")).await;
    assert!(
        a.to_string().contains("plant 2") && a.to_string().contains("interval"),
        "{a}"
    );
    assert_eq!(
        api.device_post("imp-token-1", "telemetry", json!({"temperature": 3}))
            .await,
        200
    );

    // Credentials other than tokens, and gateways: one credential per row, each checked in
    // the dry run (valid, not taken, not repeated in the file).
    let cert = rcgen::generate_simple_self_signed(vec!["imp-cert".into()])
        .expect("cert")
        .cert
        .pem();
    let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let creds_csv = format!(
        "name,fleet,client_id,username,password,certificate_pem,token,gateway\n\
         cr-basic,north,cid-1,user-1,pw with spaces ,,,\n\
         cr-cert,north,,,,{},,\n\
         cr-gw,north,,,,,,true\n\
         cr-two,north,,user-2,,,tok-2,\n\
         cr-again,north,cid-1,user-1,other,,,\n\
         cr-nopw,north,,,lonely,,,\n\
         cr-badpem,north,,,,not a pem,,\n\
         cr-badgw,north,,,,,,maybe\n",
        quoted(&cert)
    );
    let (s, r) = import(
        operator.clone(),
        json!({"csv": creds_csv, "workspace_id": ws, "dry_run": true}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let bad = bad_cells(&r);
    // The quoted certificate spans its own lines from line 3 (its closing quote on one more),
    // and the rows after it are numbered on from there.
    let lines = 3 + cert.lines().count() as u64;
    assert_eq!(
        bad,
        [
            (lines + 2, "row"),
            (lines + 3, "username"),
            (lines + 4, "password"),
            (lines + 5, "certificate_pem"),
            (lines + 6, "gateway"),
        ],
        "{r}"
    );
    let good = format!(
        "name,fleet,client_id,username,password,certificate_pem,gateway\n\
         cr-basic,north,cid-1,user-1,pw with spaces ,,\n\
         cr-cert,north,,,,{},\n\
         cr-gw,north,,,,,true\n",
        quoted(&cert)
    );
    let (s, r) = import(operator.clone(), json!({"csv": good, "workspace_id": ws})).await;
    assert_eq!(s, 200, "{r}");
    let created = r["created"].as_array().expect("created");
    assert_eq!(created.len(), 3, "{r}");
    assert!(created[0]["token"].is_null() && created[1]["token"].is_null());
    let kinds = |id: &str| {
        let id = id.to_string();
        let get = &get;
        async move {
            let list = get(format!("/devices/{id}/credentials")).await;
            list.as_array()
                .expect("credentials")
                .iter()
                .map(|c| c["type"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        kinds(created[0]["device_id"].as_str().expect("id")).await,
        ["mqtt_basic"]
    );
    assert_eq!(
        kinds(created[1]["device_id"].as_str().expect("id")).await,
        ["certificate"]
    );
    let gw = get(format!(
        "/devices/{}",
        created[2]["device_id"].as_str().expect("id")
    ))
    .await;
    assert_eq!(gw["gateway"]["role"], "gateway", "{gw}");
    // Now taken: the same file again is refused at those rows.
    let (_, r) = import(
        operator.clone(),
        json!({"csv": good.replace("cr-", "cr2-"), "workspace_id": ws, "dry_run": true}),
    )
    .await;
    let cols: Vec<&str> = r["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["column"].as_str())
        .collect();
    assert_eq!(cols, ["username", "certificate_pem"], "{r}");

    // ---- CSV export of the filtered list ----
    post(
        "/devices",
        json!({"fleet_id": north, "name": "=HYPERLINK(\"x\")", "label": "roof"}),
    )
    .await;
    let r = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/devices/export?fleet_id={north}&label=roof&sort=name&keys=temperature",
            api.base
        ))
        .bearer_auth(&root)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/csv")
    );
    let text = r.text().await.expect("text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "name,label,fleet,id,status,enabled,last_activity,firmware_version,created_at,temperature"
    );
    assert_eq!(lines.len(), 1 + 6, "{text}");
    assert!(
        lines[1].starts_with("\"'=HYPERLINK(\"\"x\"\")\",roof,north,"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("imp-1,roof,north,") && l.ends_with(",3")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("n-01,") && l.contains(",1.10.0,")),
        "{text}"
    );

    // ---- fleet health on the overview ----
    let token = &tokens["s-03"];
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/{token}/conditions", api.base))
        .body(json!({"name": "overheat", "action": "open", "severity": "critical"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    // A silence outside 1 minute to ten years is a 400 wherever it is taken (a huge one made
    // the overview's arithmetic overflow).
    for path in [
        "/overview?silent_mins=9223372036854775808",
        "/overview?silent_mins=0",
        "/devices?silent_mins=5256001",
        "/devices/export?silent_mins=18446744073709551615",
        "/devices/export?cursor=",
        "/devices/export?limit=0",
    ] {
        let (status, v) = api.call(&root, "GET", path, None).await;
        assert_eq!(status, 400, "{path}: {v}");
    }
    let o = get("/overview?silent_mins=30".to_string()).await;
    assert_eq!(o["silent_mins"], 30);
    let fleets = o["fleets"].as_array().expect("fleets");
    let south_h = fleets
        .iter()
        .find(|f| f["fleet_id"] == south.as_str())
        .expect("south");
    assert_eq!(south_h["workspace"], "plant");
    assert_eq!(south_h["devices"]["total"], 6, "{south_h}");
    assert_eq!(south_h["disabled"], 2);
    assert_eq!(south_h["conditions"]["critical"], 1);
    assert_eq!(
        o["devices"]["total"], 18,
        "15, and the three imported with credentials"
    );
    // The customer sees their fleet only.
    let (_, o) = api.call(&customer, "GET", "/overview", None).await;
    let seen: Vec<&str> = o["fleets"]
        .as_array()
        .expect("fleets")
        .iter()
        .map(|f| f["fleet"].as_str().expect("fleet"))
        .collect();
    assert_eq!(seen, ["south"]);
}

/// The (line, column) of each problem an import reports.
fn bad_cells(r: &Value) -> Vec<(u64, &str)> {
    r["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().expect("line"),
                e["column"].as_str().expect("column"),
            )
        })
        .collect()
}
