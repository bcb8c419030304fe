//! Admin commands over REST: `workspace`, `fleet`, `device` (create, list, show, update, delete;
//! credential commands delegate to `credentials`) and `telemetry`. Objects may be named by id
//! or by exact name.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use std::path::PathBuf;

use super::ClientArgs;
use super::client::ApiClient;
use super::credentials::{self, CredentialArgs, FleetCaCmd, ProvisioningCmd};
use super::output;
use crate::api::{LatestValues, Page, TelemetryPage};
use crate::devices::registry::DeviceView;
use crate::model::{Fleet, Millis, Workspace};

#[derive(Args)]
pub struct ListArgs {
    /// Only names containing this text.
    #[arg(long)]
    name: Option<String>,
    /// Page size (1-1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Continue from a previous page's cursor.
    #[arg(long)]
    cursor: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
pub enum WorkspaceCmd {
    /// Create a workspace.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Days of telemetry to keep (default: the server's `retention.default_days`).
        #[arg(long)]
        retention_days: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List workspaces.
    List {
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one workspace.
    Show {
        workspace: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a workspace's name, description or retention.
    Update {
        workspace: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Days of telemetry to keep; 0 returns to the server default.
        #[arg(long)]
        retention_days: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an empty workspace.
    Delete {
        workspace: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Create a fleet in a workspace.
    Create {
        name: String,
        /// Workspace id or name.
        #[arg(long)]
        workspace: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List fleets.
    List {
        #[arg(long)]
        workspace: Option<String>,
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one fleet.
    Show {
        fleet: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a fleet's name or description.
    Update {
        fleet: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an empty fleet.
    Delete {
        fleet: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The fleet's provisioning key and secret (device self-registration).
    #[command(subcommand)]
    Provisioning(ProvisioningCmd),
    /// Manufacturer CAs whose devices join the fleet on first connect.
    #[command(subcommand)]
    Ca(FleetCaCmd),
}

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// Create a device with its first credential (default: an access token, printed once).
    Create {
        name: String,
        /// Fleet id or name.
        #[arg(long)]
        fleet: String,
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        creds: CredentialArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a device's credentials.
    Credentials {
        device: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a credential to a device (default: a generated access token).
    AddCredential {
        device: String,
        #[command(flatten)]
        creds: CredentialArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign a device's certificate signing request with Corral's CA (EC or RSA key).
    SignCsr {
        device: String,
        /// The CSR (PEM file).
        #[arg(long)]
        csr: PathBuf,
        /// Write the certificate here (default: print it).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace a credential; the old one works for the grace period.
    Rotate {
        device: String,
        credential: String,
        /// Seconds the old credential keeps working (default: the server's setting).
        #[arg(long)]
        grace: Option<u64>,
        /// A new CSR, for a certificate signed from a CSR.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// The new certificate, for a registered certificate.
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke one credential, or all of them; connected sessions using them are closed.
    Revoke {
        device: String,
        /// Credential id (default: every credential of the device).
        credential: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List devices.
    List {
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long)]
        fleet: Option<String>,
        /// online or offline.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one device.
    Show {
        device: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a device's name, label or fleet, or enable or disable it.
    Update {
        device: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        label: Option<String>,
        /// Move to another fleet (id or name) of the same workspace.
        #[arg(long)]
        fleet: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a device and its data.
    Delete {
        device: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct TelemetryArgs {
    /// Device id or name.
    device: String,
    /// Comma-separated keys (default: all).
    #[arg(long)]
    keys: Option<String>,
    /// Start: ms since the epoch or RFC 3339 (default: 24 hours before --to).
    #[arg(long)]
    from: Option<String>,
    /// End: ms since the epoch or RFC 3339 (default: now).
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Newest first.
    #[arg(long)]
    desc: bool,
    #[arg(long)]
    tag: Option<String>,
    /// Only the latest value of each key.
    #[arg(long)]
    latest: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub(super) fn parse_time(s: &str) -> anyhow::Result<Millis> {
    if let Ok(ms) = s.parse::<Millis>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| anyhow::anyhow!("\"{s}\" is neither milliseconds nor an RFC 3339 time"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as Millis)
}

/// Resolves an id or an exact (case-insensitive) name through a listing endpoint.
pub(super) async fn resolve(
    c: &ApiClient,
    path: &str,
    kind: &str,
    s: &str,
) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(s).is_ok() {
        return Ok(s.to_string());
    }
    let page: Page<serde_json::Value> = c
        .get(path, &[("name", s.to_string()), ("limit", "1000".into())])
        .await?;
    let hits: Vec<_> = page
        .items
        .iter()
        .filter(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(s))
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok(one["id"].as_str().unwrap_or_default().to_string()),
        [] => anyhow::bail!("no {kind} named \"{s}\""),
        _ => anyhow::bail!("several {kind}s are named \"{s}\"; use the id"),
    }
}

async fn list_all<T: serde::de::DeserializeOwned>(
    c: &ApiClient,
    path: &str,
    mut query: Vec<(&str, String)>,
    l: &ListArgs,
) -> anyhow::Result<(Vec<T>, Option<String>)> {
    if let Some(n) = &l.name {
        query.push(("name", n.clone()));
    }
    query.push(("limit", l.limit.to_string()));
    let mut cursor = l.cursor.clone();
    let mut items = Vec::new();
    loop {
        let mut q = query.clone();
        if let Some(cur) = &cursor {
            q.push(("cursor", cur.clone()));
        }
        let page: Page<T> = c.get(path, &q).await?;
        items.extend(page.items);
        cursor = page.next_cursor;
        if !l.all || cursor.is_none() {
            return Ok((items, cursor));
        }
    }
}

fn more(cursor: Option<String>) {
    if let Some(c) = cursor {
        eprintln!("(more results: --cursor {c}, or --all)");
    }
}

fn ws_row(w: &Workspace) -> Vec<String> {
    vec![w.id.to_string(), w.name.clone(), w.description.clone()]
}

pub async fn workspace(cmd: WorkspaceCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkspaceCmd::Create {
            name,
            description,
            retention_days,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let w: Workspace = c
                .post(
                    "/workspaces",
                    &json!({"name": name, "description": description,
                            "retention_days": retention_days}),
                )
                .await?;
            show_workspace(&client, &w)
        }
        WorkspaceCmd::List { list, client } => {
            let c = ApiClient::from_args(&client)?;
            let (items, cur): (Vec<Workspace>, _) =
                list_all(&c, "/workspaces", vec![], &list).await?;
            if client.json {
                return output::json(&items).map(|_| ExitCode::SUCCESS);
            }
            output::table(
                &["ID", "NAME", "DESCRIPTION"],
                &items.iter().map(ws_row).collect::<Vec<_>>(),
            );
            more(cur);
            Ok(ExitCode::SUCCESS)
        }
        WorkspaceCmd::Show { workspace, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/workspaces", "workspace", &workspace).await?;
            let w: Workspace = c.get(&format!("/workspaces/{id}"), &[]).await?;
            show_workspace(&client, &w)
        }
        WorkspaceCmd::Update {
            workspace,
            name,
            description,
            retention_days,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/workspaces", "workspace", &workspace).await?;
            let w: Workspace = c
                .patch(
                    &format!("/workspaces/{id}"),
                    &json!({"name": name, "description": description,
                            "retention_days": retention_days}),
                )
                .await?;
            show_workspace(&client, &w)
        }
        WorkspaceCmd::Delete { workspace, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/workspaces", "workspace", &workspace).await?;
            c.delete(&format!("/workspaces/{id}")).await?;
            eprintln!("deleted workspace {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn show_workspace(a: &ClientArgs, w: &Workspace) -> anyhow::Result<ExitCode> {
    if a.json {
        output::json(w)?;
    } else {
        output::fields(&[
            ("id", w.id.to_string()),
            ("name", w.name.clone()),
            ("description", w.description.clone()),
            ("created", output::time(Some(w.created_at))),
        ]);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn fleet(cmd: FleetCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        FleetCmd::Create {
            name,
            workspace,
            description,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let ws = resolve(&c, "/workspaces", "workspace", &workspace).await?;
            let f: Fleet = c
                .post(
                    "/fleets",
                    &json!({"workspace_id": ws, "name": name, "description": description}),
                )
                .await?;
            show_fleet(&client, &f)
        }
        FleetCmd::List {
            workspace,
            list,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let mut q = vec![];
            if let Some(w) = workspace {
                q.push((
                    "workspace_id",
                    resolve(&c, "/workspaces", "workspace", &w).await?,
                ));
            }
            let (items, cur): (Vec<Fleet>, _) = list_all(&c, "/fleets", q, &list).await?;
            if client.json {
                return output::json(&items).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<_> = items
                .iter()
                .map(|f| {
                    vec![
                        f.id.to_string(),
                        f.name.clone(),
                        f.workspace_id.to_string(),
                        f.description.clone(),
                    ]
                })
                .collect();
            output::table(&["ID", "NAME", "WORKSPACE", "DESCRIPTION"], &rows);
            more(cur);
            Ok(ExitCode::SUCCESS)
        }
        FleetCmd::Show { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/fleets", "fleet", &fleet).await?;
            let f: Fleet = c.get(&format!("/fleets/{id}"), &[]).await?;
            show_fleet(&client, &f)
        }
        FleetCmd::Update {
            fleet,
            name,
            description,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/fleets", "fleet", &fleet).await?;
            let f: Fleet = c
                .patch(
                    &format!("/fleets/{id}"),
                    &json!({"name": name, "description": description}),
                )
                .await?;
            show_fleet(&client, &f)
        }
        FleetCmd::Delete { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/fleets", "fleet", &fleet).await?;
            c.delete(&format!("/fleets/{id}")).await?;
            eprintln!("deleted fleet {id}");
            Ok(ExitCode::SUCCESS)
        }
        FleetCmd::Provisioning(cmd) => credentials::provisioning(cmd).await,
        FleetCmd::Ca(cmd) => credentials::fleet_ca(cmd).await,
    }
}

fn show_fleet(a: &ClientArgs, f: &Fleet) -> anyhow::Result<ExitCode> {
    if a.json {
        output::json(f)?;
    } else {
        output::fields(&[
            ("id", f.id.to_string()),
            ("name", f.name.clone()),
            ("workspace", f.workspace_id.to_string()),
            ("description", f.description.clone()),
            ("created", output::time(Some(f.created_at))),
        ]);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn device(cmd: DeviceCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DeviceCmd::Create {
            name,
            fleet,
            label,
            creds,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let fid = resolve(&c, "/fleets", "fleet", &fleet).await?;
            credentials::create_device(&c, &fid, &name, &label, &creds, client.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        DeviceCmd::Credentials { device, client } => {
            let c = ApiClient::from_args(&client)?;
            credentials::list(&c, &device, client.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        DeviceCmd::AddCredential {
            device,
            creds,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            credentials::add(&c, &device, &creds, client.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        DeviceCmd::SignCsr {
            device,
            csr,
            out,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            credentials::sign_csr(&c, &device, &csr, out.as_deref(), client.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        DeviceCmd::Rotate {
            device,
            credential,
            grace,
            csr,
            cert,
            out_dir,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            credentials::rotate(
                &c,
                &device,
                &credential,
                grace,
                csr.as_deref(),
                cert.as_deref(),
                &out_dir,
                client.json,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        DeviceCmd::Revoke {
            device,
            credential,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            credentials::revoke(&c, &device, credential.as_deref(), client.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        DeviceCmd::List {
            workspace,
            fleet,
            status,
            list,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let mut q = vec![];
            if let Some(w) = workspace {
                q.push((
                    "workspace_id",
                    resolve(&c, "/workspaces", "workspace", &w).await?,
                ));
            }
            if let Some(f) = fleet {
                q.push(("fleet_id", resolve(&c, "/fleets", "fleet", &f).await?));
            }
            if let Some(s) = status {
                q.push(("status", s));
            }
            let (items, cur): (Vec<DeviceView>, _) = list_all(&c, "/devices", q, &list).await?;
            if client.json {
                return output::json(&items).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<_> = items
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.name.clone(),
                        format!("{:?}", d.status).to_lowercase(),
                        d.fleet_id.to_string(),
                        output::time(d.last_activity_at),
                    ]
                })
                .collect();
            output::table(&["ID", "NAME", "STATUS", "FLEET", "LAST ACTIVITY"], &rows);
            more(cur);
            Ok(ExitCode::SUCCESS)
        }
        DeviceCmd::Show { device, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/devices", "device", &device).await?;
            let d: DeviceView = c.get(&format!("/devices/{id}"), &[]).await?;
            if client.json {
                output::json(&d)?;
            } else {
                show_device_fields(&d, None);
            }
            Ok(ExitCode::SUCCESS)
        }
        DeviceCmd::Update {
            device,
            name,
            label,
            fleet,
            enable,
            disable,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/devices", "device", &device).await?;
            let fleet_id = match fleet {
                Some(f) => Some(resolve(&c, "/fleets", "fleet", &f).await?),
                None => None,
            };
            let enabled = if enable {
                Some(true)
            } else if disable {
                Some(false)
            } else {
                None
            };
            let d: DeviceView = c
                .patch(
                    &format!("/devices/{id}"),
                    &json!({"name": name, "label": label, "fleet_id": fleet_id, "enabled": enabled}),
                )
                .await?;
            if client.json {
                output::json(&d)?;
            } else {
                show_device_fields(&d, None);
            }
            Ok(ExitCode::SUCCESS)
        }
        DeviceCmd::Delete { device, client } => {
            let c = ApiClient::from_args(&client)?;
            let id = resolve(&c, "/devices", "device", &device).await?;
            c.delete(&format!("/devices/{id}")).await?;
            eprintln!("deleted device {id} and its data");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn show_device_fields(d: &DeviceView, token: Option<&str>) {
    let mut pairs = vec![
        ("id", d.id.to_string()),
        ("name", d.name.clone()),
        ("label", d.label.clone()),
        ("fleet", d.fleet_id.to_string()),
        ("workspace", d.workspace_id.to_string()),
        ("enabled", d.enabled.to_string()),
        ("status", format!("{:?}", d.status).to_lowercase()),
        ("connections", d.connections.to_string()),
        ("last connect", output::time(d.last_connect_at)),
        ("last disconnect", output::time(d.last_disconnect_at)),
        ("last activity", output::time(d.last_activity_at)),
        ("created", output::time(Some(d.created_at))),
    ];
    if let Some(t) = token {
        pairs.push(("access token", t.to_string()));
    }
    output::fields(&pairs);
}

pub async fn telemetry(a: TelemetryArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(&a.client)?;
    let id = resolve(&c, "/devices", "device", &a.device).await?;
    let mut q: Vec<(&str, String)> = vec![];
    if let Some(k) = &a.keys {
        q.push(("keys", k.clone()));
    }
    if let Some(t) = &a.tag {
        q.push(("tag", t.clone()));
    }
    if a.latest {
        let l: LatestValues = c
            .get(&format!("/devices/{id}/telemetry/latest"), &q)
            .await?;
        if a.client.json {
            return output::json(&l).map(|_| ExitCode::SUCCESS);
        }
        let rows: Vec<_> = l
            .data
            .iter()
            .map(|(k, p)| vec![k.clone(), output::time(Some(p.ts)), value_text(&p.value)])
            .collect();
        output::table(&["KEY", "TIME", "VALUE"], &rows);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(f) = &a.from {
        q.push(("from", parse_time(f)?.to_string()));
    }
    if let Some(t) = &a.to {
        q.push(("to", parse_time(t)?.to_string()));
    }
    q.push(("limit", a.limit.to_string()));
    if a.desc {
        q.push(("order", "desc".into()));
    }
    let page: TelemetryPage = c.get(&format!("/devices/{id}/telemetry"), &q).await?;
    if a.client.json {
        return output::json(&page).map(|_| ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    for (k, pts) in &page.data {
        for p in pts {
            rows.push(vec![
                output::time(Some(p.ts)),
                k.clone(),
                value_text(&p.value),
            ]);
        }
    }
    output::table(&["TIME", "KEY", "VALUE"], &rows);
    more(page.next_cursor);
    Ok(ExitCode::SUCCESS)
}

fn value_text(v: &crate::model::Value) -> String {
    match v {
        crate::model::Value::Str(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}
