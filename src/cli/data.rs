//! Data commands over REST: `aggregate` (a device or a fleet), `attributes` (show, set, delete,
//! for a device or as fleet defaults), `export` (streamed to a file or stdout), `tags` and
//! `usage` (per workspace and for the store, and `--sweep` to run retention now).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::ClientArgs;
use super::client::ApiClient;
use super::output;
use super::resolve::{Kind, resolve};

/// The device a command is about (positional, as everywhere), or with `--fleet` a fleet.
#[derive(Args)]
pub struct Target {
    /// Device id or name (with --fleet: fleet id or name).
    #[arg(value_name = "DEVICE")]
    device: String,
    /// The command is about a fleet: DEVICE names a fleet.
    #[arg(long)]
    fleet: bool,
}

/// As `Target`, also taking the former spelling `--device DEVICE`, kept for scripts.
#[derive(Args)]
pub struct TargetOrFlag {
    /// Device id or name (with --fleet: fleet id or name).
    #[arg(value_name = "DEVICE", required_unless_present = "device_flag")]
    device: Option<String>,
    /// The command is about a fleet: DEVICE names a fleet.
    #[arg(long)]
    fleet: bool,
    /// The former spelling `--device DEVICE`.
    #[arg(
        long = "device",
        value_name = "DEVICE",
        hide = true,
        conflicts_with = "fleet"
    )]
    device_flag: Option<String>,
}

impl TargetOrFlag {
    fn target(&self) -> anyhow::Result<Target> {
        let (t, rest) = self.split(Vec::new())?;
        anyhow::ensure!(rest.is_empty(), "name the device once");
        Ok(t)
    }

    /// The target and the positionals after it (`KEY=VALUE` pairs, keys). Under the former
    /// `--device DEVICE`, the first positional clap took for DEVICE is the first of them.
    fn split(&self, mut rest: Vec<String>) -> anyhow::Result<(Target, Vec<String>)> {
        let device = match (&self.device_flag, &self.device) {
            (Some(flag), positional) => {
                if let Some(p) = positional {
                    rest.insert(0, p.clone());
                }
                flag.clone()
            }
            (None, Some(d)) => d.clone(),
            (None, None) => anyhow::bail!("name the device (or the fleet, with --fleet)"),
        };
        Ok((
            Target {
                device,
                fleet: self.fleet,
            },
            rest,
        ))
    }
}

impl Target {
    /// The REST path prefix (`/devices/{id}` or `/fleets/{id}`) and what to call the object.
    async fn path(&self, c: &ApiClient) -> anyhow::Result<(String, String)> {
        Ok(if self.fleet {
            let f = resolve(c, &Kind::fleet(), &self.device).await?;
            (format!("/fleets/{}", f.id), format!("fleet {f}"))
        } else {
            let d = resolve(c, &Kind::device(), &self.device).await?;
            (format!("/devices/{}", d.id), format!("device {d}"))
        })
    }
}

#[derive(Args)]
#[command(override_usage = "corral aggregate [OPTIONS] <DEVICE>")]
pub struct AggregateArgs {
    #[command(flatten)]
    target: TargetOrFlag,
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
    /// Only telemetry sent under this tag.
    #[arg(long)]
    tag: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
pub enum AttributesCmd {
    /// Show a device's attributes (all scopes, or --scope), or a fleet's shared defaults.
    #[command(override_usage = "corral attributes show [OPTIONS] <DEVICE>")]
    Show {
        #[command(flatten)]
        target: TargetOrFlag,
        /// client, shared or server.
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set attributes: KEY=VALUE pairs, VALUE read as JSON when it parses (else a string).
    #[command(override_usage = "corral attributes set [OPTIONS] <DEVICE> <KEY=VALUE>...")]
    Set {
        #[command(flatten)]
        target: TargetOrFlag,
        /// shared (default) or server; fleets hold shared defaults only.
        #[arg(long, default_value = "shared")]
        scope: String,
        /// KEY=VALUE, one or more.
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete attributes by key.
    #[command(override_usage = "corral attributes delete [OPTIONS] <DEVICE> <KEY>...")]
    Delete {
        #[command(flatten)]
        target: TargetOrFlag,
        /// shared (default) or server; fleets hold shared defaults only.
        #[arg(long, default_value = "shared")]
        scope: String,
        /// The keys to delete, one or more.
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct ExportArgs {
    /// A device (id or name); repeatable.
    #[arg(long)]
    device: Vec<String>,
    /// A fleet (id or name), meaning every device of it; repeatable.
    #[arg(long)]
    fleet: Vec<String>,
    /// Start: ms since the epoch or RFC 3339.
    #[arg(long)]
    from: Option<String>,
    /// End: ms since the epoch or RFC 3339.
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
#[command(override_usage = "corral tags [OPTIONS] <DEVICE>")]
pub struct TagsArgs {
    #[command(flatten)]
    target: TargetOrFlag,
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
    let (base, _) = a.target.target()?.path(&c).await?;
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
            let target = target.target()?;
            let (base, _) = target.path(&c).await?;
            let v: Value = if target.fleet {
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
            let (target, list) = target.split(list)?;
            anyhow::ensure!(!list.is_empty(), "give one or more KEY=VALUE pairs");
            let c = ApiClient::from_args(&client)?;
            let (base, what) = target.path(&c).await?;
            let (path, scope) = if target.fleet {
                (format!("{base}/attributes/shared"), "shared default")
            } else {
                (format!("{base}/attributes/{scope}"), scope.as_str())
            };
            let set = pairs(&list)?;
            let keys: Vec<&str> = set.keys().map(String::as_str).collect();
            let line = format!(
                "set {} of {what}: {}",
                output::count(keys.len(), &format!("{scope} attribute")),
                keys.join(", ")
            );
            let v: Value = c.put(&path, &set).await?;
            if client.json {
                output::json(&v)?;
            }
            output::done(client.json, line);
        }
        AttributesCmd::Delete {
            target,
            scope,
            keys,
            client,
        } => {
            let (target, keys) = target.split(keys)?;
            anyhow::ensure!(!keys.is_empty(), "give one or more keys to delete");
            let c = ApiClient::from_args(&client)?;
            let (base, what) = target.path(&c).await?;
            let (sc, noun) = if target.fleet {
                ("shared".to_string(), "shared default".to_string())
            } else {
                (scope.clone(), format!("{scope} attribute"))
            };
            let path = format!("{base}/attributes/{sc}?keys={}", keys.join(","));
            c.delete(&path).await?;
            output::done(
                client.json,
                format!(
                    "deleted {} of {what}: {}",
                    output::count(keys.len(), &noun),
                    keys.join(", ")
                ),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(&a.client)?;
    let mut devices = Vec::new();
    for d in &a.device {
        devices.push(resolve(&c, &Kind::device(), d).await?.id);
    }
    let mut fleets = Vec::new();
    for f in &a.fleet {
        fleets.push(resolve(&c, &Kind::fleet(), f).await?.id);
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
    let (base, _) = a.target.target()?.path(&c).await?;
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
        output::done(
            a.client.json,
            format!(
                "ran the retention sweep: {} points deleted in {} ms",
                r["points_deleted"], r["took_ms"]
            ),
        );
    }
    let v: Value = match &a.workspace {
        Some(w) => {
            let id = resolve(&c, &Kind::workspace(), w).await?.id;
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
