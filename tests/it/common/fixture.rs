//! One fixture for the objects most tests need: a workspace with a fleet and a device (its id
//! and access token), a second workspace, and an API key per role (server admin, workspace
//! admin, operator, viewer, and an admin of the other workspace). Built over the real REST API
//! of a running `TestApp`.

use serde_json::{Value, json};

use super::{TestApp, call};

/// Who calls: the keys a `Fixture` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No credentials at all.
    Anonymous,
    /// The bootstrap admin key: a server admin.
    Server,
    /// Admin of the fixture's workspace.
    Admin,
    Operator,
    Viewer,
    /// Admin of the other workspace only.
    Outsider,
}

pub struct Fixture {
    pub base: String,
    pub ws: String,
    pub fleet: String,
    pub device: String,
    /// The device's access token.
    pub token: String,
    pub other_ws: String,
    server: String,
    admin: String,
    operator: String,
    viewer: String,
    outsider: String,
}

impl Fixture {
    pub async fn new(t: &TestApp) -> Fixture {
        let base = t.http_base();
        let root = t.admin_key.clone();
        let post = |path: &'static str, body: Value| {
            let (base, root) = (base.clone(), root.clone());
            async move {
                let (s, v) = call(&base, &root, "POST", path, Some(body)).await;
                assert!((200..300).contains(&s), "POST {path}: {s} {v}");
                v
            }
        };
        let id = |v: &Value| v["id"].as_str().expect("id").to_string();
        let ws = id(&post("/workspaces", json!({"name": "fixture"})).await);
        let other_ws = id(&post("/workspaces", json!({"name": "fixture-other"})).await);
        let fleet = id(&post(
            "/fleets",
            json!({"workspace_id": ws, "name": "fixture-fleet"}),
        )
        .await);
        let d = post(
            "/devices",
            json!({"fleet_id": fleet, "name": "fixture-device"}),
        )
        .await;
        let device = d["device"]["id"].as_str().expect("device id").to_string();
        let token = d["credentials"]["token"]
            .as_str()
            .expect("token")
            .to_string();
        let mut keys = Vec::new();
        for (name, grants) in [
            ("fx-admin", json!([{"workspace_id": ws, "role": "admin"}])),
            (
                "fx-operator",
                json!([{"workspace_id": ws, "role": "operator"}]),
            ),
            ("fx-viewer", json!([{"workspace_id": ws, "role": "viewer"}])),
            (
                "fx-outsider",
                json!([{"workspace_id": other_ws, "role": "admin"}]),
            ),
        ] {
            let u = post(
                "/users",
                json!({"username": name, "password": "long enough password", "grants": grants}),
            )
            .await;
            let (s, k) = call(
                &base,
                &root,
                "POST",
                &format!("/users/{}/api-keys", id(&u)),
                Some(json!({"name": "tests"})),
            )
            .await;
            assert_eq!(s, 201, "{k}");
            keys.push(k["secret"].as_str().expect("secret").to_string());
        }
        let [admin, operator, viewer, outsider] = <[String; 4]>::try_from(keys).expect("4 keys");
        Fixture {
            base,
            ws,
            fleet,
            device,
            token,
            other_ws,
            server: root,
            admin,
            operator,
            viewer,
            outsider,
        }
    }

    /// The API key of `role` (`None` for `Anonymous`).
    pub fn key(&self, role: Role) -> Option<&str> {
        match role {
            Role::Anonymous => None,
            Role::Server => Some(&self.server),
            Role::Admin => Some(&self.admin),
            Role::Operator => Some(&self.operator),
            Role::Viewer => Some(&self.viewer),
            Role::Outsider => Some(&self.outsider),
        }
    }

    /// `path` with `{ws}`, `{fleet}`, `{device}`, `{token}` and `{other_ws}` filled in.
    pub fn path(&self, path: &str) -> String {
        path.replace("{ws}", &self.ws)
            .replace("{fleet}", &self.fleet)
            .replace("{device}", &self.device)
            .replace("{token}", &self.token)
            .replace("{other_ws}", &self.other_ws)
    }
}
