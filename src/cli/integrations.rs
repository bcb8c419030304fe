//! Integration (webhook) commands over REST: `integration create|list|show|update|pause|resume|
//! delete|test|dead-letters|replay`. Secrets are read from files, never from the command line
//! (where other users could read them in the process list).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::ClientArgs;
use super::client::ApiClient;
use super::output;
use super::resolve::{Kind, Names, Ref, resolve, resolve_opt};

/// Settings shared by `create` and `update`; absent flags leave a setting as it is (or at its
/// default on create).
#[derive(Args)]
pub struct Settings {
    /// URL the batches are POSTed to (http:// or https://).
    #[arg(long)]
    url: Option<String>,
    /// Only devices of this workspace (id or name).
    #[arg(long)]
    workspace: Option<String>,
    /// Only devices of this fleet (id or name; repeat for several).
    #[arg(long = "fleet")]
    fleets: Vec<String>,
    /// Only telemetry under this tag (repeat for several).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Only these kinds: data, attributes, conditions, connectivity, job_results (repeat).
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Name of a header sent with every request (e.g. Authorization)...
    #[arg(long)]
    auth_header_name: Option<String>,
    /// ...and a file holding its value.
    #[arg(long)]
    auth_header_value_file: Option<PathBuf>,
    /// File holding the HMAC signing secret (generated and printed once on create if absent).
    #[arg(long)]
    signing_secret_file: Option<PathBuf>,
    /// PEM file of the CA(s) to trust instead of the system roots.
    #[arg(long)]
    ca_pem: Option<PathBuf>,
    /// Events per batch at most.
    #[arg(long)]
    max_items: Option<u32>,
    /// Milliseconds a batch waits to fill before it is sent.
    #[arg(long)]
    max_wait_ms: Option<u64>,
    /// Milliseconds a request may take.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// What a 4xx answer does: dead_letter or retry.
    #[arg(long)]
    on_client_error: Option<String>,
    /// First retry delay in milliseconds (it doubles on each failure)...
    #[arg(long)]
    retry_initial_ms: Option<u64>,
    /// ...up to this many milliseconds.
    #[arg(long)]
    retry_max_ms: Option<u64>,
    /// Queue cap in bytes.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Queue cap in age.
    #[arg(long)]
    max_age_secs: Option<u64>,
    /// Dead letters kept at most (the oldest go first).
    #[arg(long)]
    dead_letter_max: Option<u64>,
}

#[derive(Subcommand)]
pub enum IntegrationCmd {
    /// Create a webhook integration.
    Create {
        /// Its name, unique on the server.
        name: String,
        #[command(flatten)]
        settings: Settings,
        /// Create it paused (entries queue up, nothing is sent).
        #[arg(long)]
        paused: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every integration with its queue status.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One integration and its status.
    Show {
        /// Integration id or name.
        integration: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change settings of an integration.
    Update {
        /// Integration id or name.
        integration: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop sending (entries keep queueing).
    Pause {
        /// Integration id or name.
        integration: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a paused integration.
    Resume {
        /// Integration id or name.
        integration: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an integration with its queue and dead letters.
    Delete {
        /// Integration id or name.
        integration: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Queue a test event for an integration.
    Test {
        /// Integration id or name.
        integration: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List dead letters (entries the receiver refused); `--purge` deletes them.
    DeadLetters {
        /// Integration id or name.
        integration: String,
        /// Delete them instead of listing them.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send the dead letters again (appended to the queue, in order, with their original ids).
    Replay {
        /// Integration id or name.
        integration: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn read_secret(p: &PathBuf) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("cannot read {}", p.display()))?
        .trim()
        .to_string())
}

/// The request body of `create` and `update`; workspaces and fleets named by id or name.
async fn body_of(c: &ApiClient, s: &Settings, out: &mut Map<String, Value>) -> anyhow::Result<()> {
    let workspace = resolve_opt(c, &Kind::workspace(), s.workspace.as_deref()).await?;
    // Fleet names are unique within a workspace: look in the one given, if any.
    let fleet_kind = match &workspace {
        Some(w) => Kind::fleet().within("workspace_id", w.id.clone()),
        None => Kind::fleet(),
    };
    let mut fleets = Vec::with_capacity(s.fleets.len());
    for f in &s.fleets {
        fleets.push(resolve(c, &fleet_kind, f).await?.id);
    }
    let mut put = |k: &str, v: Value| {
        out.insert(k.into(), v);
    };
    if let Some(u) = &s.url {
        put("url", json!(u));
    }
    if let Some(w) = workspace {
        put("workspace_id", json!(w.id));
    }
    if !fleets.is_empty() {
        put("fleet_ids", json!(fleets));
    }
    if !s.tags.is_empty() {
        put("tags", json!(s.tags));
    }
    if !s.kinds.is_empty() {
        put("kinds", json!(s.kinds));
    }
    match (&s.auth_header_name, &s.auth_header_value_file) {
        (Some(n), Some(f)) => put("auth_header", json!({"name": n, "value": read_secret(f)?})),
        (None, None) => {}
        _ => anyhow::bail!("--auth-header-name and --auth-header-value-file go together"),
    }
    if let Some(f) = &s.signing_secret_file {
        put("signing_secret", json!(read_secret(f)?));
    }
    if let Some(f) = &s.ca_pem {
        let pem =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        put("ca_pem", json!(pem));
    }
    for (k, v) in [
        ("max_items", s.max_items.map(u64::from)),
        ("max_wait_ms", s.max_wait_ms),
        ("timeout_ms", s.timeout_ms),
        ("retry_initial_ms", s.retry_initial_ms),
        ("retry_max_ms", s.retry_max_ms),
        ("max_bytes", s.max_bytes),
        ("max_age_secs", s.max_age_secs),
        ("dead_letter_max", s.dead_letter_max),
    ] {
        if let Some(v) = v {
            put(k, json!(v));
        }
    }
    if let Some(p) = &s.on_client_error {
        put("on_client_error", json!(p));
    }
    Ok(())
}

const HEADERS: [&str; 8] = [
    "ID",
    "NAME",
    "STATE",
    "QUEUED",
    "OLDEST",
    "DELIVERED",
    "DEAD",
    "LAST ERROR",
];

fn row(v: &Value) -> Vec<String> {
    let s = &v["status"];
    let text = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut state = text(&s["state"]);
    if s["alarm"] == true {
        state.push_str(" ALARM");
    }
    vec![
        text(&v["id"]),
        text(&v["name"]),
        state,
        text(&s["queue_depth"]),
        s["oldest_age_ms"]
            .as_i64()
            .map_or("-".into(), |ms| format!("{} s", ms / 1000)),
        text(&s["delivered_total"]),
        text(&s["dead_letters"]),
        text(&s["last_error"]),
    ]
}

/// What an integration forwards: the workspace and fleets by name, tags and kinds.
async fn scope(c: &ApiClient, v: &Value) -> anyhow::Result<String> {
    let strs = |x: &Value| -> Vec<String> {
        x.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let fleet_ids = strs(&v["fleet_ids"]);
    let ws_id = v["workspace_id"].as_str();
    let (ws, fleets) = tokio::try_join!(
        Names::of(c, Kind::workspace(), ws_id),
        Names::of(c, Kind::fleet(), fleet_ids.clone()),
    )?;
    let mut parts = Vec::new();
    if let Some(w) = ws_id {
        parts.push(format!("workspace {}", ws.get(w)));
    }
    if !fleet_ids.is_empty() {
        let names: Vec<String> = fleet_ids.iter().map(|f| fleets.get(f)).collect();
        parts.push(format!("fleets {}", names.join(", ")));
    }
    for (label, key) in [("tags", "tags"), ("kinds", "kinds")] {
        let list = strs(&v[key]);
        if !list.is_empty() {
            parts.push(format!("{label} {}", list.join(", ")));
        }
    }
    Ok(if parts.is_empty() {
        "every device event".into()
    } else {
        parts.join("; ")
    })
}

async fn show(c: &ApiClient, v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(v);
    }
    let scope = scope(c, v).await?;
    let s = &v["status"];
    let t = |x: &Value| x.as_i64().map_or("-".into(), |ms| output::time(Some(ms)));
    output::fields(&[
        ("id", v["id"].as_str().unwrap_or_default().into()),
        ("name", v["name"].as_str().unwrap_or_default().into()),
        ("url", v["url"].as_str().unwrap_or_default().into()),
        ("forwards", scope),
        ("state", s["state"].as_str().unwrap_or_default().into()),
        (
            "queue",
            format!("{} entries, {} bytes", s["queue_depth"], s["queue_bytes"]),
        ),
        ("oldest entry age", format!("{} ms", s["oldest_age_ms"])),
        (
            "delivered",
            format!(
                "{} ({:.1}/s over the last minute)",
                s["delivered_total"],
                s["delivered_per_sec"].as_f64().unwrap_or(0.0)
            ),
        ),
        ("failed attempts", s["failed_attempts"].to_string()),
        ("dropped", s["dropped_total"].to_string()),
        ("dead letters", s["dead_letters"].to_string()),
        (
            "alarm",
            format!("{} since {}", s["alarm"], t(&s["alarm_since"])),
        ),
        (
            "last error",
            format!(
                "{} at {}",
                s["last_error"].as_str().unwrap_or("-"),
                t(&s["last_error_at"])
            ),
        ),
        ("last delivery", t(&s["last_delivery_at"])),
    ]);
    Ok(())
}

/// Prints `line`, then the integration (as JSON, or as a block).
async fn done(c: &ApiClient, v: &Value, json: bool, line: String) -> anyhow::Result<()> {
    if json {
        output::json(v)?;
    }
    output::done(json, line);
    if !json {
        show(c, v, false).await?;
    }
    Ok(())
}

async fn pause_or_resume(integration: &str, client: &ClientArgs, verb: &str) -> anyhow::Result<()> {
    let c = ApiClient::from_args(client)?;
    let r = resolve(&c, &Kind::integration(), integration).await?;
    let v: Value = c
        .post(&format!("/integrations/{}/{verb}", r.id), &json!(null))
        .await?;
    let line = match verb {
        "pause" => format!("paused integration {r}: events keep queueing"),
        _ => format!("resumed integration {r}"),
    };
    done(&c, &v, client.json, line).await
}

/// An integration's id and name from its id or name.
async fn integration(c: &ApiClient, s: &str) -> anyhow::Result<Ref> {
    resolve(c, &Kind::integration(), s).await
}

pub async fn run(cmd: IntegrationCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        IntegrationCmd::Create {
            name,
            settings,
            paused,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("paused".into(), json!(paused));
            body_of(&c, &settings, &mut body).await?;
            let v: Value = c.post("/integrations", &Value::Object(body)).await?;
            let i = &v["integration"];
            let line = format!(
                "created integration {} (id {}){}",
                i["name"].as_str().unwrap_or_default(),
                i["id"].as_str().unwrap_or_default(),
                if paused { ", paused" } else { "" }
            );
            if client.json {
                output::json(&v)?;
                output::done(true, line);
                return Ok(ExitCode::SUCCESS);
            }
            output::done(false, line);
            show(&c, i, false).await?;
            if let Some(s) = v["signing_secret"].as_str() {
                eprintln!("\nsigning secret (shown once; give it to the receiver): {s}");
            }
        }
        IntegrationCmd::List { client } => {
            let c = ApiClient::from_args(&client)?;
            let v: Value = c.get("/integrations", &[]).await?;
            if client.json {
                output::json(&v)?;
            } else {
                let rows: Vec<_> = v["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(row)
                    .collect();
                output::table(&HEADERS, &rows);
            }
        }
        IntegrationCmd::Show {
            integration: i,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let r = integration(&c, &i).await?;
            let v: Value = c.get(&format!("/integrations/{}", r.id), &[]).await?;
            show(&c, &v, client.json).await?;
        }
        IntegrationCmd::Update {
            integration: i,
            name,
            settings,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let r = integration(&c, &i).await?;
            let mut body = Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            body_of(&c, &settings, &mut body).await?;
            let mut changed: Vec<&str> = body
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "name")
                .collect();
            changed.sort_unstable();
            let v: Value = c
                .patch(
                    &format!("/integrations/{}", r.id),
                    &Value::Object(body.clone()),
                )
                .await?;
            let mut line = format!("updated integration {r}");
            if let Some(n) = body.get("name").and_then(Value::as_str) {
                line.push_str(&format!(": renamed to {n}"));
            }
            if !changed.is_empty() {
                line.push_str(&format!(
                    "{} {}",
                    if body.contains_key("name") { ";" } else { ":" },
                    changed.join(", ")
                ));
            }
            done(&c, &v, client.json, line).await?;
        }
        IntegrationCmd::Pause {
            integration,
            client,
        } => pause_or_resume(&integration, &client, "pause").await?,
        IntegrationCmd::Resume {
            integration,
            client,
        } => pause_or_resume(&integration, &client, "resume").await?,
        IntegrationCmd::Delete {
            integration: i,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let r = integration(&c, &i).await?;
            c.delete(&format!("/integrations/{}", r.id)).await?;
            output::done(
                client.json,
                format!("deleted integration {r} with its queue and dead letters"),
            );
        }
        IntegrationCmd::Test {
            integration: i,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let r = integration(&c, &i).await?;
            let _: Value = c
                .post(&format!("/integrations/{}/test", r.id), &json!(null))
                .await?;
            output::done(
                client.json,
                format!("queued a test event for integration {r}"),
            );
        }
        IntegrationCmd::DeadLetters {
            integration: i,
            purge,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let r = integration(&c, &i).await?;
            let path = format!("/integrations/{}/dead-letters", r.id);
            if purge {
                let v: Value = c.delete_json(&path).await?;
                output::done(
                    client.json,
                    format!(
                        "deleted {} of integration {r}",
                        output::count(v["count"].as_u64().unwrap_or(0) as usize, "dead letter")
                    ),
                );
                return Ok(ExitCode::SUCCESS);
            }
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = vec![("limit", "1000".to_string())];
                if let Some(c) = &cursor {
                    q.push(("cursor", c.clone()));
                }
                let page: Value = c.get(&path, &q).await?;
                all.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            if client.json {
                output::json(&all)?;
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|d| {
                        vec![
                            d["id"].as_str().unwrap_or_default().to_string(),
                            output::time(d["dead_at"].as_i64()),
                            d["reason"].as_str().unwrap_or_default().to_string(),
                            d["event"]["kind"].as_str().unwrap_or_default().to_string(),
                            d["event"]["device_name"]
                                .as_str()
                                .unwrap_or("-")
                                .to_string(),
                        ]
                    })
                    .collect();
                output::table(&["ID", "DEAD AT", "REASON", "KIND", "DEVICE"], &rows);
            }
        }
        IntegrationCmd::Replay {
            integration: i,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let r = integration(&c, &i).await?;
            let v: Value = c
                .post(
                    &format!("/integrations/{}/dead-letters/replay", r.id),
                    &json!(null),
                )
                .await?;
            output::done(
                client.json,
                format!(
                    "queued {} of integration {r} again",
                    output::count(v["count"].as_u64().unwrap_or(0) as usize, "dead letter")
                ),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
