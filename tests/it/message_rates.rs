//! The overview's message rates against the real `App`: telemetry sent over the HTTP device
//! API is counted per minute in its device's fleet (the `message-rates` worker), summed over
//! the fleets a caller sees, and a user limited to one fleet sees that fleet's count only.

use crate::common;

use common::TestApp;
use serde_json::{Value, json};

fn sum(v: &Value) -> u64 {
    v.as_array()
        .expect("per minute")
        .iter()
        .map(|n| n.as_u64().expect("count"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_each_fleets_messages_per_minute() {
    let t = TestApp::start().await;
    let base = t.http_base();
    let root = t.admin_key.clone();
    let call = |key: String, m: &'static str, path: String, body: Option<Value>| {
        let base = base.clone();
        async move { common::call(&base, &key, m, &path, body).await }
    };
    let (_, ws) = call(
        root.clone(),
        "POST",
        "/workspaces".into(),
        Some(json!({"name": "w"})),
    )
    .await;
    let mut tokens = Vec::new();
    let mut fleets = Vec::new();
    for name in ["a", "b"] {
        let (_, f) = call(
            root.clone(),
            "POST",
            "/fleets".into(),
            Some(json!({"workspace_id": ws["id"], "name": name})),
        )
        .await;
        let (_, d) = call(
            root.clone(),
            "POST",
            "/devices".into(),
            Some(json!({"fleet_id": f["id"], "name": format!("{name}-1")})),
        )
        .await;
        fleets.push(f["id"].as_str().expect("fleet").to_string());
        tokens.push(
            d["credentials"]["token"]
                .as_str()
                .expect("token")
                .to_string(),
        );
    }
    let http = reqwest::Client::new();
    for (token, n) in tokens.iter().zip([5, 2]) {
        for i in 0..n {
            let r = http
                .post(format!("{base}/api/v1/{token}/telemetry"))
                .body(json!({"t": i}).to_string())
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
        }
    }
    let v = common::eventually(10, || {
        let call = &call;
        let root = root.clone();
        async move {
            let (_, v) = call(root, "GET", "/overview".into(), None).await;
            (sum(&v["messages_per_minute"]) == 7).then_some(v)
        }
    })
    .await;
    assert_eq!(v["messages_per_minute"].as_array().map(Vec::len), Some(60));
    let of = |f: &str| {
        v["fleets"]
            .as_array()
            .expect("fleets")
            .iter()
            .find(|x| x["fleet_id"] == f)
            .map(|x| sum(&x["messages_per_minute"]))
    };
    assert_eq!(of(&fleets[0]), Some(5));
    assert_eq!(of(&fleets[1]), Some(2));

    // A user limited to fleet b sees b's messages only.
    let (_, u) = call(
        root.clone(),
        "POST",
        "/users".into(),
        Some(
            json!({"username": "cust", "password": "long enough password",
            "grants": [{"workspace_id": ws["id"], "role": "viewer", "fleets": [fleets[1]]}]}),
        ),
    )
    .await;
    let (_, k) = call(
        root.clone(),
        "POST",
        format!("/users/{}/api-keys", u["id"].as_str().expect("id")),
        Some(json!({"name": "k"})),
    )
    .await;
    let key = k["secret"].as_str().expect("secret").to_string();
    let (s, v) = call(key, "GET", "/overview".into(), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(sum(&v["messages_per_minute"]), 2);
    assert_eq!(v["fleets"].as_array().map(Vec::len), Some(1));
}
