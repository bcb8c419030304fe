//! OTA campaign commands over REST: `campaign create|dry-run|list|show|devices|watch` and the
//! operator's actions `approve|start|pause|resume|cancel|install|delete|stop-all`. `create`
//! and `dry-run` take the same rules as flags, or a whole request body from a JSON file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::ClientArgs;
use super::client::ApiClient;
use super::output;
use super::resolve::{Kind, resolve};
use crate::ota::{CampaignView, DeviceUpdateView, DryRun};

/// A campaign's rules as flags (see `POST /campaigns` for what each means).
#[derive(Args, Clone)]
pub struct Spec {
    /// Name (1 to 128 characters).
    #[arg(long)]
    name: Option<String>,
    /// The package id.
    #[arg(long)]
    package: Option<String>,
    /// The fleet (id or name).
    #[arg(long)]
    fleet: Option<String>,
    /// Waves, in order: device counts or percentages, e.g. `5,10%,25%` (the rest is one more).
    #[arg(long)]
    waves: Option<String>,
    /// Devices started per minute (0: a whole wave at once).
    #[arg(long)]
    per_minute: Option<u32>,
    /// Exponential rate: multiply the rate by this each `--rate-step` updated devices.
    #[arg(long)]
    rate_factor: Option<f64>,
    /// Updated devices per rate step (default 10).
    #[arg(long)]
    rate_step: Option<u32>,
    /// A wave passes when this percentage of it updated...
    #[arg(long)]
    success_pct: Option<u8>,
    /// ...and the next starts this many seconds later.
    #[arg(long)]
    soak_secs: Option<u64>,
    /// Pause (or abort) when this percentage of finished devices failed...
    #[arg(long)]
    failure_pct: Option<u8>,
    /// ...once this many finished.
    #[arg(long)]
    min_sample: Option<u32>,
    /// pause or abort.
    #[arg(long)]
    on_failure: Option<String>,
    /// Seconds from being told of the package to having downloaded it (default 3600).
    #[arg(long)]
    download_timeout_secs: Option<u64>,
    /// Seconds from downloaded to reporting UPDATED (default 1800).
    #[arg(long)]
    install_timeout_secs: Option<u64>,
    /// Seconds from UPDATED to reporting the new version after a reconnect (default 900).
    #[arg(long)]
    confirm_timeout_secs: Option<u64>,
    /// Retries after a failure the device reports (default 2).
    #[arg(long)]
    retries_failed: Option<u32>,
    /// Retries after a timeout (default 1).
    #[arg(long)]
    retries_timed_out: Option<u32>,
    /// Devices download and verify only; `campaign install` tells them to install.
    #[arg(long)]
    download_only: bool,
    /// Start devices only between these local times (HH:MM)...
    #[arg(long, requires = "window_end")]
    window_start: Option<String>,
    /// ...and this one (HH:MM; before the start: the window crosses midnight)...
    #[arg(long, requires = "window_start")]
    window_end: Option<String>,
    /// ...in this IANA time zone (default UTC).
    #[arg(long)]
    window_tz: Option<String>,
    /// Only devices with this label.
    #[arg(long)]
    label: Option<String>,
    /// Only devices that sent telemetry under this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only devices that report this firmware version.
    #[arg(long)]
    current_version: Option<String>,
    /// Needs another admin's approval before it starts.
    #[arg(long)]
    require_approval: bool,
    /// On abort, roll the devices it reached back to the fleet's current target.
    #[arg(long)]
    rollback: bool,
    /// Count a device as updated on its UPDATED report, without waiting for it to reconnect.
    #[arg(long)]
    no_reconnect: bool,
    /// A JSON file with the request body; flags given override its fields.
    #[arg(long)]
    spec: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum CampaignCmd {
    /// Create a campaign (a draft: nothing is sent until `start`).
    Create {
        #[command(flatten)]
        spec: Spec,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show what a campaign would do (targets, waves, estimate) without creating it.
    DryRun {
        #[command(flatten)]
        spec: Spec,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Campaigns, newest first.
    List {
        /// Only this fleet's (id or name).
        #[arg(long)]
        fleet: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One campaign: its state, waves and failing devices.
    Show {
        /// The campaign id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A campaign's devices with their update state.
    Devices {
        /// The campaign id.
        id: String,
        /// Only devices in this state (queued, downloading, updated, failed, timed_out, ...).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        page: super::admin::PageArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a campaign until it finishes (a line whenever its progress changes).
    Watch {
        /// The campaign id.
        id: String,
        /// Give up after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a campaign (an admin other than its creator).
    Approve {
        /// The campaign id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start a draft.
    Start {
        /// The campaign id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pause a running campaign (devices already updating go on).
    Pause {
        /// The campaign id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume a paused campaign.
    Resume {
        /// The campaign id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a campaign (devices not yet told of the package stop here).
    Cancel {
        /// The campaign id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Tell a download-only campaign's devices to install.
    Install {
        /// The campaign id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a draft.
    Delete {
        /// The campaign id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Emergency stop: pause every running campaign (server admins).
    StopAll {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The request body the flags (and `--spec`) describe.
async fn body(c: &ApiClient, s: &Spec) -> anyhow::Result<Value> {
    let mut b = match &s.spec {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => json!({}),
    };
    let mut set = |k: &str, v: Value| b[k] = v;
    if let Some(v) = &s.name {
        set("name", json!(v));
    }
    if let Some(v) = &s.package {
        set("package_id", json!(v));
    }
    if let Some(f) = &s.fleet {
        set("fleet_id", json!(resolve(c, &Kind::fleet(), f).await?.id));
    }
    if let Some(w) = &s.waves {
        let mut waves = Vec::new();
        for part in w.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            waves.push(match part.strip_suffix('%') {
                Some(p) => json!({"percent": p.trim().parse::<u8>()
                    .map_err(|_| anyhow::anyhow!("--waves: {part:?} is not a percentage"))?}),
                None => json!({"devices": part.parse::<u32>()
                    .map_err(|_| anyhow::anyhow!("--waves: {part:?} is not a device count"))?}),
            });
        }
        set("waves", json!(waves));
    }
    for (k, v) in [
        ("per_minute", s.per_minute.map(|v| json!(v))),
        ("rate_factor", s.rate_factor.map(|v| json!(v))),
        ("rate_step", s.rate_step.map(|v| json!(v))),
        ("success_pct", s.success_pct.map(|v| json!(v))),
        ("soak_secs", s.soak_secs.map(|v| json!(v))),
        ("failure_pct", s.failure_pct.map(|v| json!(v))),
        ("min_sample", s.min_sample.map(|v| json!(v))),
        ("on_failure", s.on_failure.as_ref().map(|v| json!(v))),
        (
            "download_timeout_secs",
            s.download_timeout_secs.map(|v| json!(v)),
        ),
        (
            "install_timeout_secs",
            s.install_timeout_secs.map(|v| json!(v)),
        ),
        (
            "confirm_timeout_secs",
            s.confirm_timeout_secs.map(|v| json!(v)),
        ),
        ("retries_failed", s.retries_failed.map(|v| json!(v))),
        ("retries_timed_out", s.retries_timed_out.map(|v| json!(v))),
    ] {
        if let Some(v) = v {
            set(k, v);
        }
    }
    if s.download_only {
        set("install", json!("download_only"));
    }
    if s.require_approval {
        set("require_approval", json!(true));
    }
    if s.rollback {
        set("rollback", json!(true));
    }
    if s.no_reconnect {
        set("require_reconnect", json!(false));
    }
    if let (Some(a), Some(z)) = (&s.window_start, &s.window_end) {
        set(
            "window",
            json!({"start": a, "end": z, "tz": s.window_tz.clone().unwrap_or_else(|| "UTC".into())}),
        );
    }
    let mut filter = serde_json::Map::new();
    if let Some(v) = &s.label {
        filter.insert("label".into(), json!(v));
    }
    if let Some(v) = &s.tag {
        filter.insert("tag".into(), json!(v));
    }
    if let Some(v) = &s.current_version {
        filter.insert("firmware_version".into(), json!(v));
    }
    if !filter.is_empty() {
        b["filter"] = Value::Object(filter);
    }
    Ok(b)
}

fn progress(c: &CampaignView) -> String {
    let counts: Vec<String> = c
        .counts
        .iter()
        .map(|(s, n)| format!("{} {n}", s.as_str()))
        .collect();
    counts.join(", ")
}

fn show(c: &CampaignView) {
    output::fields(&[
        ("id", c.id.to_string()),
        ("name", c.name.clone()),
        (
            "package",
            format!("{} {} {}", c.kind.as_str(), c.title, c.version),
        ),
        ("fleet", c.fleet_id.to_string()),
        ("state", c.state.as_str().to_string()),
        ("note", c.note.clone().unwrap_or_else(|| "-".into())),
        (
            "approval",
            match (c.approval_required, &c.approved_by) {
                (false, _) => "not needed".into(),
                (true, None) => "waiting".into(),
                (true, Some(by)) => format!("approved by {by}"),
            },
        ),
        ("targets", c.targets.to_string()),
        ("devices", progress(c)),
        ("created", output::time(Some(c.created_at))),
        ("started", output::time(c.started_at)),
        ("finished", output::time(c.finished_at)),
    ]);
    if !c.waves.is_empty() {
        println!();
        output::table(
            &["WAVE", "DEVICES", "STARTED", "UPDATED", "FAILED", "OPEN"],
            &c.waves
                .iter()
                .map(|w| {
                    vec![
                        (w.index + 1).to_string(),
                        w.devices.to_string(),
                        if w.started { "yes" } else { "no" }.into(),
                        w.updated.to_string(),
                        w.failed.to_string(),
                        w.open.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    if !c.failing.is_empty() {
        println!();
        output::table(
            &["FAILING DEVICE", "STATE", "ATTEMPTS", "REASON"],
            &c.failing
                .iter()
                .map(|f| {
                    vec![
                        f.device_id.to_string(),
                        f.state.as_str().to_string(),
                        f.attempts.to_string(),
                        f.error.clone().unwrap_or_default(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
}

pub async fn run(cmd: CampaignCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CampaignCmd::Create { spec, client } => {
            let c = ApiClient::from_args(&client)?;
            let b = body(&c, &spec).await?;
            let v: CampaignView = c.post("/campaigns", &b).await?;
            if client.json {
                output::json(&v)?;
            } else {
                output::done(false, format!("created campaign {} (draft)", v.id));
            }
        }
        CampaignCmd::DryRun { spec, client } => {
            let c = ApiClient::from_args(&client)?;
            let b = body(&c, &spec).await?;
            let d: DryRun = c.post("/campaigns/dry-run", &b).await?;
            if client.json {
                output::json(&d)?;
            } else {
                output::fields(&[
                    ("targets", d.targets.to_string()),
                    ("already updated", d.already_updated.to_string()),
                    (
                        "waves",
                        d.waves
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(" + "),
                    ),
                    (
                        "last device starts",
                        output::time(d.estimated_last_start_at),
                    ),
                ]);
                for n in &d.notes {
                    println!("note: {n}");
                }
            }
        }
        CampaignCmd::List { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let mut q = Vec::new();
            if let Some(f) = fleet {
                q.push(("fleet_id", resolve(&c, &Kind::fleet(), &f).await?.id));
            }
            let list: Vec<CampaignView> = c.get("/campaigns", &q).await?;
            if client.json {
                output::json(&list)?;
            } else {
                output::table(
                    &["ID", "NAME", "PACKAGE", "STATE", "TARGETS", "DEVICES"],
                    &list
                        .iter()
                        .map(|v| {
                            vec![
                                v.id.to_string(),
                                v.name.clone(),
                                format!("{} {}", v.title, v.version),
                                v.state.as_str().to_string(),
                                v.targets.to_string(),
                                progress(v),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        CampaignCmd::Show { id, client } => {
            let c = ApiClient::from_args(&client)?;
            let v: CampaignView = c.get(&format!("/campaigns/{id}"), &[]).await?;
            if client.json {
                output::json(&v)?;
            } else {
                show(&v);
            }
        }
        CampaignCmd::Devices {
            id,
            state,
            page,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let q: Vec<(&str, String)> = state.into_iter().map(|s| ("state", s)).collect();
            let (list, cursor): (Vec<DeviceUpdateView>, _) =
                super::admin::fetch_pages(&c, &format!("/campaigns/{id}/devices"), q, &page)
                    .await?;
            super::admin::more(cursor);
            if client.json {
                output::json(&list)?;
            } else {
                output::table(
                    &[
                        "DEVICE", "NAME", "WAVE", "STATE", "ATTEMPTS", "REPORTS", "ERROR",
                    ],
                    &list
                        .iter()
                        .map(|u| {
                            vec![
                                u.device_id.to_string(),
                                u.device_name.clone().unwrap_or_else(|| "-".into()),
                                (u.wave + 1).to_string(),
                                u.state.as_str().to_string(),
                                u.attempts.to_string(),
                                u.reported_version.clone().unwrap_or_else(|| "-".into()),
                                u.error.clone().unwrap_or_default(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
            }
        }
        CampaignCmd::Watch {
            id,
            timeout,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let until =
                (timeout > 0).then(|| std::time::Instant::now() + Duration::from_secs(timeout));
            let mut last = String::new();
            loop {
                let v: CampaignView = c.get(&format!("/campaigns/{id}"), &[]).await?;
                let line = format!(
                    "{} {}: {}{}",
                    output::time(Some(crate::model::now_ms())),
                    v.state.as_str(),
                    progress(&v),
                    v.note
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                );
                let now = line
                    .split_once(' ')
                    .map(|x| x.1)
                    .unwrap_or(&line)
                    .to_string();
                if now != last {
                    if client.json {
                        println!("{}", serde_json::to_string(&v)?);
                    } else {
                        println!("{line}");
                    }
                    last = now;
                }
                if v.state.is_final() {
                    return Ok(ExitCode::SUCCESS);
                }
                if until.is_some_and(|u| std::time::Instant::now() >= u) {
                    eprintln!("still {} after {timeout} s", v.state.as_str());
                    return Ok(ExitCode::FAILURE);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        CampaignCmd::Approve { id, client } => action("approve", &id, &client).await?,
        CampaignCmd::Start { id, client } => action("start", &id, &client).await?,
        CampaignCmd::Pause { id, client } => action("pause", &id, &client).await?,
        CampaignCmd::Resume { id, client } => action("resume", &id, &client).await?,
        CampaignCmd::Cancel { id, client } => action("cancel", &id, &client).await?,
        CampaignCmd::Install { id, client } => action("install", &id, &client).await?,
        CampaignCmd::Delete { id, client } => {
            let c = ApiClient::from_args(&client)?;
            c.delete(&format!("/campaigns/{id}")).await?;
            output::done(client.json, format!("deleted campaign {id}"));
        }
        CampaignCmd::StopAll { client } => {
            let c = ApiClient::from_args(&client)?;
            let v: Value = c.post("/campaigns/stop", &json!({})).await?;
            let n = v["paused"].as_array().map_or(0, Vec::len);
            output::done(client.json, format!("paused {n} running campaigns"));
            if client.json {
                output::json(&v)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `POST /campaigns/{id}/{verb}`, then the campaign as it stands.
async fn action(verb: &str, id: &str, client: &ClientArgs) -> anyhow::Result<()> {
    let c = ApiClient::from_args(client)?;
    let v: CampaignView = c
        .post(&format!("/campaigns/{id}/{verb}"), &json!({}))
        .await?;
    if client.json {
        output::json(&v)?;
    } else {
        println!(
            "campaign {id}: {}{}",
            v.state.as_str(),
            v.note.map(|n| format!(" ({n})")).unwrap_or_default()
        );
    }
    Ok(())
}
