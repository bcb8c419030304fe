//! Job commands over REST: `job send` (optionally waiting for the outcome), `job list`,
//! `job show`, `job cancel` and `job watch` (follows a job until it finishes).

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

pub async fn run(cmd: JobCmd) -> anyhow::Result<ExitCode> {
    match cmd {
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
