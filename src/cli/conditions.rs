//! Condition commands over REST: `condition list|show|ack|close`. Devices open and close
//! conditions themselves; operators follow, acknowledge and (when a device cannot) close them.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::ClientArgs;
use super::client::ApiClient;
use super::output;
use super::resolve::{Kind, Names, resolve, resolve_opt};
use crate::api::Page;
use crate::conditions::ConditionView as Condition;

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
        /// Only devices of this workspace (id or name).
        #[arg(long)]
        workspace: Option<String>,
        /// open, closed or all.
        #[arg(long, default_value = "open")]
        state: String,
        /// Only these severities, comma-separated: critical,major,minor,warning,info.
        #[arg(long)]
        severity: Option<String>,
        /// Only conditions of this name.
        #[arg(long)]
        name: Option<String>,
        /// Conditions per page (1-1000).
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
        #[command(flatten)]
        condition: ConditionRef,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mark a condition as seen by an operator (it stays open).
    Ack {
        #[command(flatten)]
        condition: ConditionRef,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Close a condition on the device's behalf.
    Close {
        #[command(flatten)]
        condition: ConditionRef,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A condition by id, or an open one by its name (and device, when several devices have it
/// open).
#[derive(Args)]
pub struct ConditionRef {
    /// Condition id, or the name of an open condition (e.g. overheat).
    condition: String,
    /// The device whose open condition is meant (id or name).
    #[arg(long)]
    device: Option<String>,
}

impl ConditionRef {
    async fn id(&self, c: &ApiClient) -> anyhow::Result<String> {
        let mut kind = Kind::open_condition();
        if let Some(d) = resolve_opt(c, &Kind::device(), self.device.as_deref()).await? {
            kind = kind.within("device_id", d.id);
        }
        Ok(resolve(c, &kind, &self.condition).await?.id)
    }
}

const HEADERS: [&str; 7] = [
    "ID", "SEVERITY", "NAME", "DEVICE", "STATE", "OPENED", "ACKED BY",
];

fn row(c: &Condition, devices: &Names) -> Vec<String> {
    vec![
        c.id.to_string(),
        c.severity.as_str().to_string(),
        c.name.clone(),
        devices.get(c.device_id.to_string()),
        if c.open { "open" } else { "closed" }.to_string(),
        output::time(Some(c.opened_at)),
        c.acknowledged_by.clone().unwrap_or_else(|| "-".into()),
    ]
}

async fn show(api: &ApiClient, c: &Condition, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(c);
    }
    let (devices, fleets) = tokio::try_join!(
        Names::of(api, Kind::device(), [c.device_id.to_string()]),
        Names::of(api, Kind::fleet(), [c.fleet_id.to_string()]),
    )?;
    output::fields(&[
        ("id", c.id.to_string()),
        ("name", c.name.clone()),
        ("severity", c.severity.as_str().to_string()),
        ("state", if c.open { "open" } else { "closed" }.to_string()),
        ("device", devices.with_id(c.device_id)),
        ("fleet", fleets.with_id(c.fleet_id)),
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

/// `acknowledged condition overheat (id …) of device valve`, then the condition.
async fn done(api: &ApiClient, verb: &str, v: &Condition, json: bool) -> anyhow::Result<()> {
    let devices = Names::of(api, Kind::device(), [v.device_id.to_string()]).await?;
    if json {
        output::json(v)?;
    }
    output::done(
        json,
        format!(
            "{verb} condition {} (id {}) of device {}",
            v.name,
            v.id,
            devices.get(v.device_id.to_string())
        ),
    );
    if !json {
        show(api, v, false).await?;
    }
    Ok(())
}

pub async fn run(cmd: ConditionCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConditionCmd::List {
            device,
            fleet,
            workspace,
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
                q.push(("device_id", resolve(&c, &Kind::device(), d).await?.id));
            }
            if let Some(f) = &fleet {
                q.push(("fleet_id", resolve(&c, &Kind::fleet(), f).await?.id));
            }
            if let Some(w) = &workspace {
                q.push(("workspace_id", resolve(&c, &Kind::workspace(), w).await?.id));
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
                let devices = Names::of(
                    &c,
                    Kind::device(),
                    page.items.iter().map(|x| x.device_id.to_string()),
                )
                .await?;
                let rows: Vec<_> = page.items.iter().map(|x| row(x, &devices)).collect();
                output::table(&HEADERS, &rows);
                if let Some(c) = page.next_cursor {
                    eprintln!("(older conditions: --cursor {c})");
                }
            }
        }
        ConditionCmd::Show { condition, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = condition.id(&c).await?;
            let v: Condition = c.get(&format!("/conditions/{id}"), &[]).await?;
            show(&c, &v, client.json).await?;
        }
        ConditionCmd::Ack { condition, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = condition.id(&c).await?;
            let v: Condition = c
                .post(
                    &format!("/conditions/{id}/acknowledge"),
                    &serde_json::json!(null),
                )
                .await?;
            done(&c, "acknowledged", &v, client.json).await?;
        }
        ConditionCmd::Close { condition, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = condition.id(&c).await?;
            let v: Condition = c
                .post(&format!("/conditions/{id}/close"), &serde_json::json!(null))
                .await?;
            done(&c, "closed", &v, client.json).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
