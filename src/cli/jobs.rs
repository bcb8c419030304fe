//! Job commands over REST: `job send` (optionally waiting for the outcome), `job list`,
//! `job show`, `job cancel` and `job watch` (follows a job until it finishes); fleet rollouts
//! with `job fleet-send|fleet-list|fleet-show|fleet-cancel`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use super::ClientArgs;
use super::admin::resolve;
use super::client::ApiClient;
use super::output;
use crate::model::Job;

#[derive(Subcommand)]
pub enum JobCmd {
    /// Send a command to a device; queued until the device is there.
    Send {
        /// Device id or name.
        device: String,
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
        device: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    Show {
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    Cancel {
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Roll a command out to every device of a fleet.
    FleetSend {
        /// Fleet id or name.
        fleet: String,
        method: String,
        #[arg(long, default_value = "{}")]
        params: String,
        #[arg(long)]
        two_way: bool,
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
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A fleet's rollouts, newest first.
    FleetList {
        fleet: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A rollout and its progress per state.
    FleetShow {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a rollout; jobs not sent yet are cancelled.
    FleetCancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a job's steps as they happen, until it finishes.
    Watch {
        job: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
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
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/fleets", "fleet", &fleet).await?;
            let params: Value = serde_json::from_str(&params)
                .map_err(|e| anyhow::anyhow!("--params is not JSON: {e}"))?;
            let v: Value = c
                .post(
                    &format!("/fleets/{id}/jobs"),
                    &json!({"method": method, "params": params, "two_way": two_way,
                            "ttl_secs": ttl, "per_minute": per_minute,
                            "abort_failure_pct": abort_pct, "abort_min_sample": min_sample}),
                )
                .await?;
            show_fleet(&v, client.json)?;
        }
        JobCmd::FleetList { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/fleets", "fleet", &fleet).await?;
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
            show_fleet(&v, client.json)?;
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
            let id = resolve(&c, "/devices", "device", &device).await?;
            let params: Value = serde_json::from_str(&params)
                .map_err(|e| anyhow::anyhow!("--params is not JSON: {e}"))?;
            let path = match wait {
                Some(w) => format!("/devices/{id}/jobs?wait_ms={}", w * 1000),
                None => format!("/devices/{id}/jobs"),
            };
            let j: Job = c
                .post(
                    &path,
                    &json!({"method": method, "params": params, "two_way": two_way,
                            "ttl_secs": ttl, "idempotency_key": idempotency_key}),
                )
                .await?;
            show(&j, client.json)?;
        }
        JobCmd::List { device, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/devices", "device", &device).await?;
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
            show(&j, client.json)?;
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
