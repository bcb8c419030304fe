//! Condition commands over REST: `condition list|show|ack|close`. Devices open and close
//! conditions themselves; operators follow, acknowledge and (when a device cannot) close them.

use std::process::ExitCode;

use clap::Subcommand;

use super::ClientArgs;
use super::admin::resolve;
use super::client::ApiClient;
use super::output;
use crate::api::Page;
use crate::model::Condition;

#[derive(Subcommand)]
pub enum ConditionCmd {
    /// Conditions, newest first (open ones unless `--state` says otherwise).
    List {
        /// Only this device (id or name).
        #[arg(long)]
        device: Option<String>,
        /// Only devices of this fleet (id or name).
        #[arg(long)]
        fleet: Option<String>,
        /// open, closed or all.
        #[arg(long, default_value = "open")]
        state: String,
        /// Only these severities, comma-separated: critical,major,minor,warning,info.
        #[arg(long)]
        severity: Option<String>,
        /// Only conditions of this name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One condition with its details.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mark a condition as seen by an operator (it stays open).
    Ack {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Close a condition on the device's behalf.
    Close {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

const HEADERS: [&str; 7] = [
    "ID", "SEVERITY", "NAME", "DEVICE", "STATE", "OPENED", "ACKED BY",
];

fn row(c: &Condition) -> Vec<String> {
    vec![
        c.id.to_string(),
        c.severity.as_str().to_string(),
        c.name.clone(),
        c.device_id.to_string(),
        if c.open { "open" } else { "closed" }.to_string(),
        output::time(Some(c.opened_at)),
        c.acknowledged_by.clone().unwrap_or_else(|| "-".into()),
    ]
}

fn show(c: &Condition, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(c);
    }
    output::fields(&[
        ("id", c.id.to_string()),
        ("name", c.name.clone()),
        ("severity", c.severity.as_str().to_string()),
        ("state", if c.open { "open" } else { "closed" }.to_string()),
        ("device", c.device_id.to_string()),
        ("fleet", c.fleet_id.to_string()),
        ("opened", output::time(Some(c.opened_at))),
        ("updated", output::time(Some(c.updated_at))),
        ("reports", c.reports.to_string()),
        (
            "acknowledged",
            match (&c.acknowledged_by, c.acknowledged_at) {
                (Some(by), at) => format!("{} by {by}", output::time(at)),
                _ => "-".into(),
            },
        ),
        (
            "closed",
            match (&c.closed_by, c.closed_at) {
                (Some(by), at) => format!("{} by {by}", output::time(at)),
                _ => "-".into(),
            },
        ),
        ("details", c.details.to_string()),
    ]);
    Ok(())
}

pub async fn run(cmd: ConditionCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConditionCmd::List {
            device,
            fleet,
            state,
            severity,
            name,
            limit,
            cursor,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let mut q: Vec<(&str, String)> = vec![("state", state), ("limit", limit.to_string())];
            if let Some(d) = &device {
                q.push(("device_id", resolve(&c, "/devices", "device", d).await?));
            }
            if let Some(f) = &fleet {
                q.push(("fleet_id", resolve(&c, "/fleets", "fleet", f).await?));
            }
            if let Some(s) = severity {
                q.push(("severity", s));
            }
            if let Some(n) = name {
                q.push(("name", n));
            }
            if let Some(cur) = cursor {
                q.push(("cursor", cur));
            }
            let page: Page<Condition> = c.get("/conditions", &q).await?;
            if client.json {
                output::json(&page)?;
            } else {
                let rows: Vec<_> = page.items.iter().map(row).collect();
                output::table(&HEADERS, &rows);
                if let Some(c) = page.next_cursor {
                    eprintln!("(older conditions: --cursor {c})");
                }
            }
        }
        ConditionCmd::Show { id, client } => {
            let c = ApiClient::from_args(&client)?;
            let v: Condition = c.get(&format!("/conditions/{id}"), &[]).await?;
            show(&v, client.json)?;
        }
        ConditionCmd::Ack { id, client } => {
            let c = ApiClient::from_args(&client)?;
            let v: Condition = c
                .post(
                    &format!("/conditions/{id}/acknowledge"),
                    &serde_json::json!(null),
                )
                .await?;
            show(&v, client.json)?;
        }
        ConditionCmd::Close { id, client } => {
            let c = ApiClient::from_args(&client)?;
            let v: Condition = c
                .post(&format!("/conditions/{id}/close"), &serde_json::json!(null))
                .await?;
            show(&v, client.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
