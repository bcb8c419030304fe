//! Job commands over REST: `job send` (optionally waiting for the outcome), `job list`,
//! `job show`, `job cancel` and `job watch` (follows a job until it finishes); fleet rollouts
//! with `job fleet-send|fleet-list|fleet-show|fleet-cancel|fleet-watch`; schedules with
//! `schedule create|list|show|run|enable|disable|delete`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use super::ClientArgs;
use super::client::ApiClient;
use super::output;
use super::resolve::{Kind, Names, resolve};
use crate::jobs::views::{JobView as Job, ScheduleView as Schedule};
use crate::model::Trigger;

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum JobCmd {
    /// Send a command to a device; queued until the device is there.
    Send {
        /// Device id or name.
        device: String,
        /// The RPC method the device gets.
        method: String,
        /// Parameters as JSON.
        #[arg(long, default_value = "{}")]
        params: String,
        /// Wait for the device's reply rather than only its acknowledgement.
        #[arg(long)]
        two_way: bool,
        /// Seconds the job may wait for delivery.
        #[arg(long)]
        ttl: Option<u64>,
        /// Makes a repeated send return the first job.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait up to this many seconds for the outcome.
        #[arg(long)]
        wait: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A device's jobs, newest first.
    List {
        /// Device id or name.
        device: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one job: its state, request and the device's answer.
    Show {
        /// Job id.
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job that has not finished.
    Cancel {
        /// Job id.
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Roll a command out to every device of a fleet.
    FleetSend {
        /// Fleet id or name.
        fleet: String,
        /// The RPC method every device gets.
        method: String,
        /// Parameters as JSON.
        #[arg(long, default_value = "{}")]
        params: String,
        /// Wait for each device's reply rather than only its acknowledgement.
        #[arg(long)]
        two_way: bool,
        /// Seconds each job may wait for delivery.
        #[arg(long)]
        ttl: Option<u64>,
        /// Devices started per minute (0: all at once).
        #[arg(long, default_value_t = 0)]
        per_minute: u32,
        /// Stop when this percentage of finished jobs failed or expired...
        #[arg(long)]
        abort_pct: Option<u8>,
        /// ...once at least this many finished.
        #[arg(long)]
        min_sample: Option<u32>,
        /// Makes a repeated send to the fleet return the first rollout.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        window: WindowArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a rollout's progress as it changes, until it ends.
    FleetWatch {
        /// Rollout id.
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A fleet's rollouts, newest first.
    FleetList {
        /// Fleet id or name.
        fleet: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A rollout and its progress per state.
    FleetShow {
        /// Rollout id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a rollout; jobs not sent yet are cancelled.
    FleetCancel {
        /// Rollout id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a job's steps as they happen, until it finishes.
    Watch {
        /// Job id.
        job: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Which devices of the fleet get the command (all when none is given).
#[derive(clap::Args)]
pub struct TargetArgs {
    /// Only devices that sent telemetry under this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only devices with this label.
    #[arg(long)]
    label: Option<String>,
    /// Only devices with this attribute value (`key=value`, value as JSON or text); repeatable.
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    attrs: Vec<String>,
    /// Only devices reporting this firmware version (`current_fw_version`).
    #[arg(long)]
    firmware: Option<String>,
    /// Only devices not reporting this firmware version.
    #[arg(long)]
    firmware_not: Option<String>,
}

impl TargetArgs {
    fn to_json(&self) -> anyhow::Result<Value> {
        let mut attributes = serde_json::Map::new();
        for a in &self.attrs {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--attr {a:?}: expected KEY=VALUE"))?;
            let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.into()));
            attributes.insert(k.to_string(), v);
        }
        Ok(
            json!({"tag": self.tag, "label": self.label, "attributes": attributes,
                  "firmware_version": self.firmware, "firmware_version_not": self.firmware_not}),
        )
    }
}

/// A maintenance window: devices start (and schedules run) only inside it.
#[derive(clap::Args)]
pub struct WindowArgs {
    /// Window start, local HH:MM.
    #[arg(long, requires = "window_end")]
    window_start: Option<String>,
    /// Window end, local HH:MM (before the start: crosses midnight).
    #[arg(long, requires = "window_start")]
    window_end: Option<String>,
    /// The window's time zone (IANA name).
    #[arg(long, default_value = "UTC")]
    window_tz: String,
    /// Days the window opens, e.g. `mon,tue` (every day when absent).
    #[arg(long, value_delimiter = ',')]
    window_days: Vec<String>,
}

impl WindowArgs {
    fn to_json(&self) -> Value {
        match (&self.window_start, &self.window_end) {
            (Some(a), Some(b)) => {
                json!({"start": a, "end": b, "tz": self.window_tz, "days": self.window_days})
            }
            _ => Value::Null,
        }
    }
}

fn parse_params(p: &str) -> anyhow::Result<Value> {
    serde_json::from_str(p).map_err(|e| anyhow::anyhow!("--params is not JSON: {e}"))
}

fn row(j: &Job) -> Vec<String> {
    vec![
        j.id.to_string(),
        j.method.clone(),
        format!("{:?}", j.state).to_lowercase(),
        j.attempts.to_string(),
        output::time(Some(j.created_at)),
        j.result.as_ref().map(Value::to_string).unwrap_or_default(),
    ]
}

fn state(j: &Job) -> String {
    format!("{:?}", j.state).to_lowercase()
}

const HEADERS: [&str; 6] = ["ID", "METHOD", "STATE", "SENDS", "CREATED", "RESULT"];

fn show(j: &Job, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(j);
    }
    output::table(&HEADERS, &[row(j)]);
    for h in &j.history {
        eprintln!(
            "  {}  {:?}{}",
            output::time(Some(h.at)),
            h.state,
            h.note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn fleet_row(v: &Value) -> Vec<String> {
    let progress: Vec<String> = v["progress"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    vec![
        v["id"].as_str().unwrap_or_default().to_string(),
        v["method"].as_str().unwrap_or_default().to_string(),
        v["state"].as_str().unwrap_or_default().to_string(),
        format!(
            "{}/{}",
            v["launched"],
            v["devices"].as_array().map_or(0, Vec::len)
        ),
        progress.join(", "),
    ]
}

const FLEET_HEADERS: [&str; 5] = ["ID", "METHOD", "STATE", "STARTED", "PROGRESS"];

fn show_fleet(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(v);
    }
    output::table(&FLEET_HEADERS, &[fleet_row(v)]);
    Ok(())
}

pub async fn run(cmd: JobCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCmd::FleetSend {
            fleet,
            method,
            params,
            two_way,
            ttl,
            per_minute,
            abort_pct,
            min_sample,
            idempotency_key,
            target,
            window,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            let v: Value = c
                .post(
                    &format!("/fleets/{}/jobs", f.id),
                    &json!({"method": method, "params": parse_params(&params)?,
                            "two_way": two_way, "ttl_secs": ttl, "per_minute": per_minute,
                            "abort_failure_pct": abort_pct, "abort_min_sample": min_sample,
                            "filter": target.to_json()?, "window": window.to_json(),
                            "idempotency_key": idempotency_key}),
                )
                .await?;
            if client.json {
                output::json(&v)?;
            }
            output::done(
                client.json,
                format!(
                    "started rollout {} ({method}) to fleet {f}: {}",
                    v["id"].as_str().unwrap_or_default(),
                    output::count(v["devices"].as_array().map_or(0, Vec::len), "device")
                ),
            );
            if !client.json {
                show_fleet(&v, false)?;
            }
        }
        JobCmd::FleetWatch {
            id,
            timeout,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut last = String::new();
            loop {
                let v: Value = c.get(&format!("/fleet-jobs/{id}"), &[]).await?;
                let line = fleet_row(&v)[2..].join("  ");
                if line != last {
                    println!("{}  {line}", output::time(Some(crate::model::now_ms())));
                    last = line;
                }
                if v["state"] != "running" {
                    if let Some(n) = v["note"].as_str() {
                        println!("{n}");
                    }
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!("the rollout is still running after {timeout} s");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        JobCmd::FleetList { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, &Kind::fleet(), &fleet).await?.id;
            let v: Vec<Value> = c.get(&format!("/fleets/{id}/jobs"), &[]).await?;
            if client.json {
                output::json(&v)?;
            } else {
                let rows: Vec<_> = v.iter().map(fleet_row).collect();
                output::table(&FLEET_HEADERS, &rows);
            }
        }
        JobCmd::FleetShow { id, client } => {
            let c = ApiClient::from_args(&client)?;
            let v: Value = c.get(&format!("/fleet-jobs/{id}"), &[]).await?;
            show_fleet(&v, client.json)?;
        }
        JobCmd::FleetCancel { id, client } => {
            let c = ApiClient::from_args(&client)?;
            let v: Value = c
                .post(&format!("/fleet-jobs/{id}/cancel"), &json!(null))
                .await?;
            if client.json {
                output::json(&v)?;
            }
            output::done(
                client.json,
                format!(
                    "cancelled rollout {id} ({}): jobs not sent yet are cancelled",
                    v["method"].as_str().unwrap_or_default()
                ),
            );
            if !client.json {
                show_fleet(&v, false)?;
            }
        }
        JobCmd::Send {
            device,
            method,
            params,
            two_way,
            ttl,
            idempotency_key,
            wait,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let dev = resolve(&c, &Kind::device(), &device).await?;
            let params = parse_params(&params)?;
            let path = match wait {
                Some(w) => format!("/devices/{}/jobs?wait_ms={}", dev.id, w * 1000),
                None => format!("/devices/{}/jobs", dev.id),
            };
            let j: Job = c
                .post(
                    &path,
                    &json!({"method": method, "params": params, "two_way": two_way,
                            "ttl_secs": ttl, "idempotency_key": idempotency_key}),
                )
                .await?;
            if client.json {
                output::json(&j)?;
            }
            output::done(
                client.json,
                format!(
                    "created job {} ({}) for device {dev}: {}",
                    j.id,
                    j.method,
                    state(&j)
                ),
            );
            if !client.json {
                show(&j, false)?;
            }
        }
        JobCmd::List { device, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, &Kind::device(), &device).await?.id;
            let jobs: Vec<Job> = c.get(&format!("/devices/{id}/jobs"), &[]).await?;
            if client.json {
                output::json(&jobs)?;
            } else {
                let rows: Vec<_> = jobs.iter().map(row).collect();
                output::table(&HEADERS, &rows);
            }
        }
        JobCmd::Show { job, client } => {
            let c = ApiClient::from_args(&client)?;
            let j: Job = c.get(&format!("/jobs/{job}"), &[]).await?;
            show(&j, client.json)?;
        }
        JobCmd::Cancel { job, client } => {
            let c = ApiClient::from_args(&client)?;
            let j: Job = c.post(&format!("/jobs/{job}/cancel"), &json!(null)).await?;
            if client.json {
                output::json(&j)?;
            }
            let dev = Names::of(&c, Kind::device(), [j.device_id.to_string()]).await?;
            output::done(
                client.json,
                format!(
                    "cancelled job {} ({}) for device {}: {}",
                    j.id,
                    j.method,
                    dev.get(j.device_id.to_string()),
                    state(&j)
                ),
            );
            if !client.json {
                show(&j, false)?;
            }
        }
        JobCmd::Watch {
            job,
            timeout,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut seen = 0;
            loop {
                let j: Job = c
                    .get(&format!("/jobs/{job}"), &[("wait_ms", "5000".into())])
                    .await?;
                for h in &j.history[seen..] {
                    println!(
                        "{}  {:?}{}",
                        output::time(Some(h.at)),
                        h.state,
                        h.note
                            .as_deref()
                            .map(|n| format!(": {n}"))
                            .unwrap_or_default()
                    );
                }
                seen = j.history.len();
                if j.state.is_terminal() {
                    if let Some(r) = &j.result {
                        println!("result: {r}");
                    }
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!("the job has not finished after {timeout} s");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Schedule a command to a device or a fleet, once (`--at`) or on cron (`--cron`).
    Create {
        /// Its name, unique on the server.
        name: String,
        /// The RPC method the device (or every device of the fleet) gets.
        method: String,
        /// Device id or name (or give --fleet).
        #[arg(long, conflicts_with = "fleet", required_unless_present = "fleet")]
        device: Option<String>,
        /// Fleet id or name.
        #[arg(long)]
        fleet: Option<String>,
        /// Parameters as JSON.
        #[arg(long, default_value = "{}")]
        params: String,
        /// Wait for the device's reply rather than only its acknowledgement.
        #[arg(long)]
        two_way: bool,
        /// Seconds each job may wait for delivery.
        #[arg(long)]
        ttl: Option<u64>,
        /// Run once at this time (RFC 3339, e.g. 2026-12-01T02:00:00+01:00).
        #[arg(long, conflicts_with = "cron", required_unless_present = "cron")]
        at: Option<String>,
        /// Five-field cron: minute hour day-of-month month day-of-week (0 or 7 = Sunday).
        #[arg(long)]
        cron: Option<String>,
        /// The cron expression's time zone (IANA name).
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Fleet schedules: devices started per minute (0: all at once).
        #[arg(long, default_value_t = 0)]
        per_minute: u32,
        /// Fleet schedules: stop when this percentage of finished jobs failed or expired...
        #[arg(long)]
        abort_pct: Option<u8>,
        /// ...once at least this many finished.
        #[arg(long)]
        min_sample: Option<u32>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        window: WindowArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List schedules.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one schedule and its next run.
    Show {
        /// Schedule id or name.
        schedule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run it now, whatever its time and window.
    Run {
        /// Schedule id or name.
        schedule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enable a schedule.
    Enable {
        /// Schedule id or name.
        schedule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable a schedule (it keeps its settings).
    Disable {
        /// Schedule id or name.
        schedule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a schedule.
    Delete {
        /// Schedule id or name.
        schedule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

const SCHEDULE_HEADERS: [&str; 7] = ["ID", "NAME", "TARGET", "WHEN", "NEXT RUN", "RUNS", "LAST"];

/// The names of the devices and fleets schedules target, fetched once.
async fn targets(c: &ApiClient, v: &[Schedule]) -> anyhow::Result<(Names, Names)> {
    tokio::try_join!(
        Names::of(
            c,
            Kind::device(),
            v.iter().filter_map(|s| s.device_id.map(|d| d.to_string()))
        ),
        Names::of(
            c,
            Kind::fleet(),
            v.iter().filter_map(|s| s.fleet_id.map(|f| f.to_string()))
        ),
    )
}

fn schedule_row(s: &Schedule, (devices, fleets): &(Names, Names)) -> Vec<String> {
    let target = match (s.device_id, s.fleet_id) {
        (Some(d), _) => format!("device {}", devices.get(d.to_string())),
        (_, Some(f)) => format!("fleet {}", fleets.get(f.to_string())),
        _ => String::new(),
    };
    let when = match &s.trigger {
        Trigger::At(t) => format!("at {}", output::time(Some(*t))),
        Trigger::Cron { expr, tz } => format!("cron {expr} ({tz})"),
    };
    vec![
        s.id.to_string(),
        s.name.clone(),
        target,
        if s.enabled {
            when
        } else {
            format!("{when}, disabled")
        },
        output::time(s.next_run_at),
        s.runs.to_string(),
        s.last_result.clone().unwrap_or_default(),
    ]
}

async fn show_schedules(c: &ApiClient, v: &[Schedule], json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(&v);
    }
    let names = targets(c, v).await?;
    let rows: Vec<_> = v.iter().map(|s| schedule_row(s, &names)).collect();
    output::table(&SCHEDULE_HEADERS, &rows);
    Ok(())
}

/// Prints `line` and then the schedule (as JSON, or as a one-row table).
async fn schedule_done(
    c: &ApiClient,
    s: &Schedule,
    json: bool,
    line: String,
) -> anyhow::Result<()> {
    if json {
        output::json(s)?;
    }
    output::done(json, line);
    if !json {
        show_schedules(c, std::slice::from_ref(s), false).await?;
    }
    Ok(())
}

pub async fn run_schedule(cmd: ScheduleCmd) -> anyhow::Result<ExitCode> {
    let one = |c: &ClientArgs| ApiClient::from_args(c);
    match cmd {
        ScheduleCmd::Create {
            name,
            method,
            device,
            fleet,
            params,
            two_way,
            ttl,
            at,
            cron,
            tz,
            per_minute,
            abort_pct,
            min_sample,
            disabled,
            target,
            window,
            client,
        } => {
            let c = one(&client)?;
            let trigger = match (at, cron) {
                (Some(at), _) => {
                    let t: jiff::Timestamp = at
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--at {at:?} is not an RFC 3339 time: {e}"))?;
                    json!({"at": t.as_millisecond()})
                }
                (None, Some(expr)) => json!({"cron": {"expr": expr, "tz": tz}}),
                (None, None) => anyhow::bail!("give --at or --cron"),
            };
            let mut body = json!({"name": name, "method": method,
                "params": parse_params(&params)?, "two_way": two_way, "ttl_secs": ttl,
                "trigger": trigger, "window": window.to_json(), "enabled": !disabled});
            let dev = match device {
                Some(d) => Some(resolve(&c, &Kind::device(), &d).await?),
                None => None,
            };
            let fl = match fleet {
                Some(f) => Some(resolve(&c, &Kind::fleet(), &f).await?),
                None => None,
            };
            if let Some(d) = &dev {
                body["device_id"] = json!(d.id);
            }
            if let Some(f) = &fl {
                body["fleet_id"] = json!(f.id);
                body["per_minute"] = json!(per_minute);
                body["abort_failure_pct"] = json!(abort_pct);
                body["abort_min_sample"] = json!(min_sample);
                body["filter"] = target.to_json()?;
            }
            let s: Schedule = c.post("/schedules", &body).await?;
            let target = match (&dev, &fl) {
                (Some(d), _) => format!("device {d}"),
                (_, Some(f)) => format!("fleet {f}"),
                _ => String::new(),
            };
            let line = format!("created schedule {} (id {}) for {target}", s.name, s.id);
            schedule_done(&c, &s, client.json, line).await?;
        }
        ScheduleCmd::List { client } => {
            let c = one(&client)?;
            let v: Vec<Schedule> = c.get("/schedules", &[]).await?;
            show_schedules(&c, &v, client.json).await?;
        }
        ScheduleCmd::Show { schedule, client } => {
            let c = one(&client)?;
            let r = resolve(&c, &Kind::schedule(), &schedule).await?;
            let s: Schedule = c.get(&format!("/schedules/{}", r.id), &[]).await?;
            if client.json {
                output::json(&s)?;
            } else {
                show_schedules(&c, std::slice::from_ref(&s), false).await?;
            }
        }
        ScheduleCmd::Run { schedule, client } => {
            let c = one(&client)?;
            let r = resolve(&c, &Kind::schedule(), &schedule).await?;
            let s: Schedule = c
                .post(&format!("/schedules/{}/run", r.id), &json!(null))
                .await?;
            let line = format!(
                "ran schedule {r}: {}",
                s.last_result.as_deref().unwrap_or("done")
            );
            schedule_done(&c, &s, client.json, line).await?;
        }
        ScheduleCmd::Enable { schedule, client } => {
            let c = one(&client)?;
            let r = resolve(&c, &Kind::schedule(), &schedule).await?;
            let s: Schedule = c
                .post(&format!("/schedules/{}/enable", r.id), &json!(null))
                .await?;
            let line = format!(
                "enabled schedule {r}: next run {}",
                output::time(s.next_run_at)
            );
            schedule_done(&c, &s, client.json, line).await?;
        }
        ScheduleCmd::Disable { schedule, client } => {
            let c = one(&client)?;
            let r = resolve(&c, &Kind::schedule(), &schedule).await?;
            let s: Schedule = c
                .post(&format!("/schedules/{}/disable", r.id), &json!(null))
                .await?;
            schedule_done(&c, &s, client.json, format!("disabled schedule {r}")).await?;
        }
        ScheduleCmd::Delete { schedule, client } => {
            let c = one(&client)?;
            let r = resolve(&c, &Kind::schedule(), &schedule).await?;
            c.delete(&format!("/schedules/{}", r.id)).await?;
            output::done(client.json, format!("deleted schedule {r}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
