//! The REST surface as a table, in process: each row is a caller (a role of the fixture), a
//! method, a path, a body, and the status and error code it must get, sent straight to
//! `App::router()` without a socket. The rows run in order on one server, so a row may rely on
//! what an earlier one created. Together they pin how the domain error's kinds map to HTTP
//! statuses and stable codes.

use crate::common;

use axum::body::Body;
use axum::http::{Request, header};
use common::TestApp;
use common::fixture::{Fixture, Role};
use serde_json::{Value, json};
use tower::ServiceExt as _;

enum Send {
    Nothing,
    Json(Value),
    /// A body as is, with its content type.
    Raw(&'static str, &'static str),
}

struct Row {
    who: Role,
    method: &'static str,
    /// With `{ws}`, `{fleet}`, `{device}`, `{other_ws}` filled in by the fixture.
    path: &'static str,
    send: Send,
    status: u16,
    /// The error code; empty for a success.
    code: &'static str,
}

fn row(
    who: Role,
    method: &'static str,
    path: &'static str,
    send: Send,
    status: u16,
    code: &'static str,
) -> Row {
    Row {
        who,
        method,
        path,
        send,
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_surface_answers_each_caller_with_the_right_status_and_code() {
    use Role::*;
    use Send::{Json, Nothing, Raw};
    let nil = "00000000-0000-0000-0000-000000000000";
    let mut t = TestApp::start_with(|c| c.jobs.max_queued_per_device = 1).await;
    let f = Fixture::new(&t).await;
    let router = t.app().router();
    let rows = [
        // Who may call at all, and who may see what.
        row(Anonymous, "GET", "/devices", Nothing, 401, "unauthorized"),
        row(Viewer, "GET", "/devices/{device}", Nothing, 200, ""),
        row(
            Outsider,
            "GET",
            "/devices/{device}",
            Nothing,
            404,
            "not_found",
        ),
        row(
            Admin,
            "GET",
            Box::leak(format!("/devices/{nil}").into_boxed_str()),
            Nothing,
            404,
            "not_found",
        ),
        row(
            Viewer,
            "POST",
            "/devices/{device}/jobs",
            Json(json!({"method": "reboot"})),
            403,
            "forbidden",
        ),
        row(Admin, "GET", "/workers", Nothing, 403, "forbidden"),
        row(Server, "GET", "/workers", Nothing, 200, ""),
        // Invalid fields: 422, nothing changed.
        row(
            Server,
            "POST",
            "/workspaces",
            Json(json!({"name": " "})),
            422,
            "invalid_field",
        ),
        row(
            Operator,
            "POST",
            "/devices/{device}/jobs",
            Json(json!({"method": "m", "ttl_secs": 0})),
            422,
            "invalid_field",
        ),
        row(
            Operator,
            "POST",
            "/fleets/{fleet}/jobs",
            Json(json!({"method": "m", "abort_failure_pct": 0})),
            422,
            "invalid_field",
        ),
        // Conflicts with what is stored.
        row(
            Server,
            "POST",
            "/workspaces",
            Json(json!({"name": "fixture"})),
            409,
            "name_taken",
        ),
        row(
            Admin,
            "POST",
            "/fleets",
            Json(json!({"workspace_id": "{ws}", "name": "fixture-fleet"})),
            409,
            "name_taken",
        ),
        row(
            Server,
            "DELETE",
            "/workspaces/{ws}",
            Nothing,
            409,
            "not_empty",
        ),
        row(
            Admin,
            "DELETE",
            "/fleets/{fleet}",
            Nothing,
            409,
            "not_empty",
        ),
        // A per-device queue at its cap (1 here): the second job is refused.
        row(
            Operator,
            "POST",
            "/devices/{device}/jobs",
            Json(json!({"method": "first"})),
            201,
            "",
        ),
        row(
            Operator,
            "POST",
            "/devices/{device}/jobs",
            Json(json!({"method": "second"})),
            409,
            "queue_full",
        ),
        // Malformed requests: 400 or 415 before any service is asked.
        row(
            Server,
            "POST",
            "/workspaces",
            Raw("{not json", "application/json"),
            400,
            "invalid_body",
        ),
        row(
            Server,
            "POST",
            "/workspaces",
            Raw(r#"{"name":"x"}"#, "text/plain"),
            415,
            "unsupported_media_type",
        ),
        row(
            Viewer,
            "GET",
            "/devices/{device}/telemetry/aggregate?keys=t&interval=7s",
            Nothing,
            400,
            "invalid_interval",
        ),
        row(
            Viewer,
            "GET",
            "/conditions?cursor=not-a-cursor",
            Nothing,
            400,
            "invalid_cursor",
        ),
        // Signing in: one answer for every failure.
        row(
            Anonymous,
            "POST",
            "/auth/login",
            Json(json!({"username": "fx-admin", "password": "wrong password"})),
            401,
            "invalid_login",
        ),
        row(
            Anonymous,
            "POST",
            "/auth/login",
            Json(json!({"username": "nobody", "password": "wrong password"})),
            401,
            "invalid_login",
        ),
    ];
    let mut failures = Vec::new();
    for r in &rows {
        let path = f.path(r.path);
        let mut req = Request::builder()
            .method(r.method)
            .uri(format!("/api/v1{path}"));
        if let Some(k) = f.key(r.who) {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let req = match &r.send {
            Nothing => req.body(Body::empty()),
            Json(v) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(f.path(&v.to_string()))),
            Raw(b, ct) => req.header(header::CONTENT_TYPE, *ct).body(Body::from(*b)),
        }
        .expect("request");
        let resp = router.clone().oneshot(req).await.expect("answer");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let code = v["error"]["code"].as_str().unwrap_or("");
        if status != r.status || code != r.code {
            failures.push(format!(
                "{:?} {} {path}: got {status} {code:?}, want {} {:?} ({v})",
                r.who, r.method, r.status, r.code
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    t.stop().await;
}
