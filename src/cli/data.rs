//! Data commands over REST: `aggregate` (a device or a fleet), `attributes` (show, set, delete,
//! for a device or as fleet defaults), `export` (streamed to a file or stdout), `tags` and
//! `usage` (per workspace and for the store, and `--sweep` to run retention now).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::ClientArgs;
use super::admin::resolve;
use super::client::ApiClient;
use super::output;

/// A device or a fleet, by id or name.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Device id or name.
    #[arg(long)]
    device: Option<String>,
    /// Fleet id or name.
    #[arg(long)]
    fleet: Option<String>,
}

impl Target {
    /// The REST path prefix (`/devices/{id}` or `/fleets/{id}`).
    async fn path(&self, c: &ApiClient) -> anyhow::Result<String> {
        Ok(match (&self.device, &self.fleet) {
            (Some(d), _) => format!("/devices/{}", resolve(c, "/devices", "device", d).await?),
            (_, Some(f)) => format!("/fleets/{}", resolve(c, "/fleets", "fleet", f).await?),
            _ => anyhow::bail!("give --device or --fleet"),
        })
    }
}

#[derive(Args)]
pub struct AggregateArgs {
    #[command(flatten)]
    target: Target,
    /// Bucket length: 1m to 1d (e.g. 15m, 1h, 1d).
    #[arg(long, default_value = "1h")]
    interval: String,
    /// Start: ms since the epoch or RFC 3339 (default: 24 hours before --to).
    #[arg(long)]
    from: Option<String>,
    /// End: ms since the epoch or RFC 3339 (default: now).
    #[arg(long)]
    to: Option<String>,
    /// IANA time zone for day boundaries (default UTC).
    #[arg(long)]
    tz: Option<String>,
    /// Comma-separated keys (default: all).
    #[arg(long)]
    keys: Option<String>,
    #[arg(long)]
    tag: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
pub enum AttributesCmd {
    /// Show a device's attributes (all scopes, or --scope), or a fleet's shared defaults.
    Show {
        #[command(flatten)]
        target: Target,
        /// client, shared or server.
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set attributes: KEY=VALUE pairs, VALUE read as JSON when it parses (else a string).
    Set {
        #[command(flatten)]
        target: Target,
        /// shared (default) or server; fleets hold shared defaults only.
        #[arg(long, default_value = "shared")]
        scope: String,
        #[arg(required = true)]
        pairs: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete attributes by key.
    Delete {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "shared")]
        scope: String,
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct ExportArgs {
    /// Device ids or names (repeatable).
    #[arg(long)]
    device: Vec<String>,
    /// Fleet ids or names (repeatable): every device of each.
    #[arg(long)]
    fleet: Vec<String>,
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
    /// Comma-separated tags (default: all).
    #[arg(long)]
    tags: Option<String>,
    /// Comma-separated keys (default: all).
    #[arg(long)]
    keys: Option<String>,
    /// csv or json.
    #[arg(long, default_value = "csv")]
    format: String,
    /// Write here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct TagsArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct UsageArgs {
    /// A workspace (id or name); without it, the store as a whole.
    #[arg(long)]
    workspace: Option<String>,
    /// Run the retention sweep first.
    #[arg(long)]
    sweep: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn time_arg(s: &Option<String>) -> anyhow::Result<Option<String>> {
    s.as_deref()
        .map(|v| super::admin::parse_time(v).map(|ms| ms.to_string()))
        .transpose()
}

pub async fn aggregate(a: AggregateArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(&a.client)?;
    let base = a.target.path(&c).await?;
    let mut q = vec![("interval", a.interval.clone())];
    for (k, v) in [
        ("from", time_arg(&a.from)?),
        ("to", time_arg(&a.to)?),
        ("tz", a.tz.clone()),
        ("keys", a.keys.clone()),
        ("tag", a.tag.clone()),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    let r: Value = c.get(&format!("{base}/telemetry/aggregate"), &q).await?;
    if a.client.json {
        return output::json(&r).map(|_| ExitCode::SUCCESS);
    }
    let num = |v: &Value| v.as_f64().map(|x| format!("{x:.4}")).unwrap_or_default();
    let mut rows = Vec::new();
    for (key, buckets) in r["data"].as_object().into_iter().flatten() {
        for b in buckets.as_array().into_iter().flatten() {
            rows.push(vec![
                key.clone(),
                output::time(b["ts"].as_i64()),
                b["count"].to_string(),
                num(&b["avg"]),
                num(&b["min"]),
                num(&b["max"]),
                num(&b["sum"]),
            ]);
        }
    }
    output::table(
        &["KEY", "BUCKET", "COUNT", "AVG", "MIN", "MAX", "SUM"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `KEY=VALUE` pairs into a JSON object; values are JSON when they parse, else strings.
fn pairs(list: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for p in list {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("\"{p}\" is not KEY=VALUE"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.to_string(), v);
    }
    Ok(m)
}

pub async fn attributes(cmd: AttributesCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AttributesCmd::Show {
            target,
            scope,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let base = target.path(&c).await?;
            let v: Value = if target.fleet.is_some() {
                json!({"shared": c.get::<Value>(&format!("{base}/attributes/shared"), &[]).await?})
            } else {
                let q: Vec<(&str, String)> = scope.map(|s| ("scope", s)).into_iter().collect();
                c.get(&format!("{base}/attributes"), &q).await?
            };
            if client.json {
                return output::json(&v).map(|_| ExitCode::SUCCESS);
            }
            let mut rows = Vec::new();
            for (sc, attrs) in v.as_object().into_iter().flatten() {
                for (k, a) in attrs.as_object().into_iter().flatten() {
                    rows.push(vec![
                        sc.clone(),
                        k.clone(),
                        a["value"].to_string(),
                        output::time(a["ts"].as_i64()),
                    ]);
                }
            }
            output::table(&["SCOPE", "KEY", "VALUE", "SET"], &rows);
        }
        AttributesCmd::Set {
            target,
            scope,
            pairs: list,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let base = target.path(&c).await?;
            let path = if target.fleet.is_some() {
                format!("{base}/attributes/shared")
            } else {
                format!("{base}/attributes/{scope}")
            };
            let v: Value = c.put(&path, &pairs(&list)?).await?;
            if client.json {
                output::json(&v)?;
            }
        }
        AttributesCmd::Delete {
            target,
            scope,
            keys,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let base = target.path(&c).await?;
            let sc = if target.fleet.is_some() {
                "shared".to_string()
            } else {
                scope
            };
            let path = format!("{base}/attributes/{sc}?keys={}", keys.join(","));
            c.delete(&path).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(&a.client)?;
    let mut devices = Vec::new();
    for d in &a.device {
        devices.push(resolve(&c, "/devices", "device", d).await?);
    }
    let mut fleets = Vec::new();
    for f in &a.fleet {
        fleets.push(resolve(&c, "/fleets", "fleet", f).await?);
    }
    let mut q = vec![("format", a.format.clone())];
    if !devices.is_empty() {
        q.push(("device_id", devices.join(",")));
    }
    if !fleets.is_empty() {
        q.push(("fleet_id", fleets.join(",")));
    }
    for (k, v) in [
        ("from", time_arg(&a.from)?),
        ("to", time_arg(&a.to)?),
        ("tags", a.tags.clone()),
        ("keys", a.keys.clone()),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    let n = match &a.output {
        Some(p) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            );
            c.download("/export", &q, &mut f).await?
        }
        None => c.download("/export", &q, &mut std::io::stdout()).await?,
    };
    if let Some(p) = &a.output {
        eprintln!("wrote {n} bytes to {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tags(a: TagsArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(&a.client)?;
    let base = a.target.path(&c).await?;
    let v: Value = c.get(&format!("{base}/tags"), &[]).await?;
    if a.client.json {
        return output::json(&v).map(|_| ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = v["tags"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(t, keys)| {
            let keys: Vec<&str> = keys
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            vec![t.clone(), keys.join(",")]
        })
        .collect();
    output::table(&["TAG", "KEYS"], &rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn usage(a: UsageArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(&a.client)?;
    if a.sweep {
        let r: Value = c.post("/retention/sweep", &json!(null)).await?;
        eprintln!(
            "retention sweep: {} points deleted in {} ms",
            r["points_deleted"], r["took_ms"]
        );
    }
    let v: Value = match &a.workspace {
        Some(w) => {
            let id = resolve(&c, "/workspaces", "workspace", w).await?;
            c.get(&format!("/workspaces/{id}/usage"), &[]).await?
        }
        None => c.get("/store/usage", &[]).await?,
    };
    if a.client.json {
        return output::json(&v).map(|_| ExitCode::SUCCESS);
    }
    let pairs: Vec<(&str, String)> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.to_string()))
        .collect();
    output::fields(&pairs);
    Ok(ExitCode::SUCCESS)
}
