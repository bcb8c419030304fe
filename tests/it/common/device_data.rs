//! For suites that drive a real `corral serve` through its REST API with the admin key: a device
//! to publish as, and every value a device has stored under a key, read page by page. The data
//! safety suites (durability, power loss, disk full, backups, store integrity) compare these with
//! what the server acknowledged.

use std::collections::BTreeSet;

use corral::client::ApiClient;
use serde_json::{Value, json};

/// The timestamp the suites' points start from; every point they write is within 100,000 s of it.
pub const BASE_TS: i64 = 1_700_000_000_000;

/// A REST client for the server at `base` with the admin key `key`.
pub fn admin(base: &str, key: &str) -> ApiClient {
    ApiClient::new(base, Some(key.to_string()), None).expect("client")
}

/// A workspace, a fleet and a device on the server at `base`: (device id, access token).
pub async fn make_device(base: &str, key: &str) -> (String, String) {
    let api = admin(base, key);
    let ws: Value = api
        .post("/workspaces", &json!({"name": "w"}))
        .await
        .expect("workspace");
    let fleet: Value = api
        .post("/fleets", &json!({"workspace_id": ws["id"], "name": "f"}))
        .await
        .expect("fleet");
    let d: Value = api
        .post("/devices", &json!({"fleet_id": fleet["id"], "name": "d"}))
        .await
        .expect("device");
    (
        d["device"]["id"].as_str().expect("id").into(),
        d["credentials"]["token"].as_str().expect("token").into(),
    )
}

/// Every integer value `device` has stored under `name` (from `BASE_TS` on), all pages.
pub async fn stored_longs(base: &str, key: &str, device: &str, name: &str) -> BTreeSet<i64> {
    let api = admin(base, key);
    let mut out = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![
            ("keys", name.to_string()),
            ("from", "0".into()),
            ("to", (BASE_TS + 100_000_000).to_string()),
            ("limit", "1000".into()),
        ];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: Value = api
            .get(&format!("/devices/{device}/telemetry"), &q)
            .await
            .expect("telemetry");
        for p in page["data"][name].as_array().into_iter().flatten() {
            out.insert(p["value"].as_i64().expect("an integer value"));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}
