//! Admin commands over REST: `workspace`, `fleet`, `device` (create, list, show, update, delete;
//! credential commands delegate to `credentials`) and `telemetry`. Names are resolved by
//! `resolve`; every change prints one line saying what it did.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use std::path::PathBuf;

use super::ClientArgs;
use super::client::ApiClient;
use super::credentials::{self, CredentialArgs, FleetCaCmd, ProvisioningCmd};
use super::output;
use super::resolve::{Kind, Names, resolve};
use crate::api::{LatestValues, Page, TelemetryPage};
use crate::devices::registry::DeviceView;
use crate::devices::views::{FleetView as Fleet, WorkspaceView as Workspace};
use crate::model::Millis;

#[derive(Args)]
pub struct ListArgs {
    /// Only names containing this text.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    page: PageArgs,
}

/// How much of a paged listing to fetch: one page, from a cursor, or every page.
#[derive(Args)]
pub struct PageArgs {
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
        /// Its name, unique on the server.
        name: String,
        /// Free text shown with the workspace.
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
        /// Workspace id or name.
        workspace: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a workspace's name, description or retention.
    Update {
        /// Workspace id or name.
        workspace: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New description.
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
        /// Workspace id or name.
        workspace: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Create a fleet in a workspace.
    Create {
        /// Its name, unique within the workspace.
        name: String,
        /// Workspace id or name.
        #[arg(long)]
        workspace: String,
        /// Free text shown with the fleet.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List fleets.
    List {
        /// Only fleets of this workspace (id or name).
        #[arg(long)]
        workspace: Option<String>,
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one fleet.
    Show {
        /// Fleet id or name.
        fleet: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a fleet's name or description.
    Update {
        /// Fleet id or name.
        fleet: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an empty fleet.
    Delete {
        /// Fleet id or name.
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
        /// Its name, unique within the fleet's workspace.
        name: String,
        /// Fleet id or name.
        #[arg(long)]
        fleet: String,
        /// Free text shown with the device.
        #[arg(long, default_value = "")]
        label: String,
        /// A gateway: it speaks for sub-devices over ThingsBoard's gateway API.
        #[arg(long)]
        gateway: bool,
        /// For a gateway: sub-devices of TYPE join FLEET (id or name, in the same workspace)
        /// when it creates them; repeatable. Implies --gateway.
        #[arg(long = "type-fleet", value_name = "TYPE=FLEET")]
        type_fleets: Vec<String>,
        #[command(flatten)]
        creds: CredentialArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a device's credentials.
    Credentials {
        /// Device id or name.
        device: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a credential to a device (default: a generated access token).
    AddCredential {
        /// Device id or name.
        device: String,
        #[command(flatten)]
        creds: CredentialArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign a device's certificate signing request with Corral's CA (EC or RSA key).
    SignCsr {
        /// Device id or name.
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
        /// Device id or name.
        device: String,
        /// Credential id (`corral device credentials DEVICE` lists them).
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
        /// Where a newly issued key and certificate are written.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke one credential, or all of them; connected sessions using them are closed.
    Revoke {
        /// Device id or name.
        device: String,
        /// Credential id (default: every credential of the device).
        credential: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List devices.
    List {
        /// Only devices of this workspace (id or name).
        #[arg(long)]
        workspace: Option<String>,
        /// Only devices of this fleet (id or name).
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
        /// Device id or name.
        device: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a device's name, label or fleet, or enable or disable it.
    Update {
        /// Device id or name.
        device: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New label.
        #[arg(long)]
        label: Option<String>,
        /// Move to another fleet (id or name) of the same workspace.
        #[arg(long)]
        fleet: Option<String>,
        /// Let the device connect again.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Refuse the device's logins and close its sessions.
        #[arg(long)]
        disable: bool,
        /// Make it a gateway (sub-devices over ThingsBoard's gateway API).
        #[arg(long, conflicts_with = "not_gateway")]
        gateway: bool,
        /// Make a gateway an ordinary device again (its sub-devices stay, unreachable).
        #[arg(long)]
        not_gateway: bool,
        /// For a gateway: the fleet sub-devices of TYPE join (replaces the mapping when given);
        /// repeatable.
        #[arg(long = "type-fleet", value_name = "TYPE=FLEET")]
        type_fleets: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a device and its data.
    Delete {
        /// Device id or name.
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
    /// Points per page (1-1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Newest first.
    #[arg(long)]
    desc: bool,
    /// Only telemetry sent under this tag.
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

async fn list_all<T: serde::de::DeserializeOwned>(
    c: &ApiClient,
    path: &str,
    mut query: Vec<(&str, String)>,
    l: &ListArgs,
) -> anyhow::Result<(Vec<T>, Option<String>)> {
    if let Some(n) = &l.name {
        query.push(("name", n.clone()));
    }
    fetch_pages(c, path, query, &l.page).await
}

/// The pages of `path` that `p` asks for, and the cursor where the next one starts.
pub(super) async fn fetch_pages<T: serde::de::DeserializeOwned>(
    c: &ApiClient,
    path: &str,
    mut query: Vec<(&str, String)>,
    p: &PageArgs,
) -> anyhow::Result<(Vec<T>, Option<String>)> {
    query.push(("limit", p.limit.to_string()));
    let mut cursor = p.cursor.clone();
    let mut items = Vec::new();
    loop {
        let mut q = query.clone();
        if let Some(cur) = &cursor {
            q.push(("cursor", cur.clone()));
        }
        let page: Page<T> = c.get(path, &q).await?;
        items.extend(page.items);
        cursor = page.next_cursor;
        if !p.all || cursor.is_none() {
            return Ok((items, cursor));
        }
    }
}

pub(super) fn more(cursor: Option<String>) {
    if let Some(c) = cursor {
        eprintln!("(more results: --cursor {c}, or --all)");
    }
}

fn ws_row(w: &Workspace) -> Vec<String> {
    vec![w.id.to_string(), w.name.clone(), w.description.clone()]
}

/// `: name "x", label "y"` for the settings a command changed, or `` when none.
fn changes(list: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = list
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| format!("{k} {v}").trim_end().to_string())
        })
        .collect();
    if parts.is_empty() {
        " (nothing to change)".into()
    } else {
        format!(": {}", parts.join(", "))
    }
}

fn quoted(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|v| format!("{v:?}"))
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
            if client.json {
                output::json(&w)?;
            }
            output::done(
                client.json,
                format!("created workspace {} (id {})", w.name, w.id),
            );
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
        }
        WorkspaceCmd::Show { workspace, client } => {
            let c = ApiClient::from_args(&client)?;
            let ws = resolve(&c, &Kind::workspace(), &workspace).await?;
            let w: Workspace = c.get(&format!("/workspaces/{}", ws.id), &[]).await?;
            if client.json {
                output::json(&w)?;
            } else {
                output::fields(&[
                    ("id", w.id.to_string()),
                    ("name", w.name.clone()),
                    ("description", w.description.clone()),
                    (
                        "retention",
                        w.retention_days
                            .map_or("the server's default".into(), |d| format!("{d} days")),
                    ),
                    ("created", output::time(Some(w.created_at))),
                ]);
            }
        }
        WorkspaceCmd::Update {
            workspace,
            name,
            description,
            retention_days,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let ws = resolve(&c, &Kind::workspace(), &workspace).await?;
            let w: Workspace = c
                .patch(
                    &format!("/workspaces/{}", ws.id),
                    &json!({"name": name, "description": description,
                            "retention_days": retention_days}),
                )
                .await?;
            if client.json {
                output::json(&w)?;
            }
            let retention = retention_days.map(|d| match d {
                0 => "the server's default".to_string(),
                d => format!("{d} days"),
            });
            output::done(
                client.json,
                format!(
                    "updated workspace {ws}{}",
                    changes(&[
                        ("name", quoted(&name)),
                        ("description", quoted(&description)),
                        ("retention", retention),
                    ])
                ),
            );
        }
        WorkspaceCmd::Delete { workspace, client } => {
            let c = ApiClient::from_args(&client)?;
            let ws = resolve(&c, &Kind::workspace(), &workspace).await?;
            c.delete(&format!("/workspaces/{}", ws.id)).await?;
            output::done(client.json, format!("deleted workspace {ws}"));
        }
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
            let ws = resolve(&c, &Kind::workspace(), &workspace).await?;
            let f: Fleet = c
                .post(
                    "/fleets",
                    &json!({"workspace_id": ws.id, "name": name, "description": description}),
                )
                .await?;
            if client.json {
                output::json(&f)?;
            }
            output::done(
                client.json,
                format!("created fleet {} (id {}) in workspace {ws}", f.name, f.id),
            );
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
                    resolve(&c, &Kind::workspace(), &w).await?.id,
                ));
            }
            let (items, cur): (Vec<Fleet>, _) = list_all(&c, "/fleets", q, &list).await?;
            if client.json {
                return output::json(&items).map(|_| ExitCode::SUCCESS);
            }
            let ws = Names::of(
                &c,
                Kind::workspace(),
                items.iter().map(|f| f.workspace_id.to_string()),
            )
            .await?;
            let rows: Vec<_> = items
                .iter()
                .map(|f| {
                    vec![
                        f.id.to_string(),
                        f.name.clone(),
                        ws.get(f.workspace_id.to_string()),
                        f.description.clone(),
                    ]
                })
                .collect();
            output::table(&["ID", "NAME", "WORKSPACE", "DESCRIPTION"], &rows);
            more(cur);
        }
        FleetCmd::Show { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let r = resolve(&c, &Kind::fleet(), &fleet).await?;
            let f: Fleet = c.get(&format!("/fleets/{}", r.id), &[]).await?;
            if client.json {
                output::json(&f)?;
            } else {
                let ws = Names::of(&c, Kind::workspace(), [f.workspace_id.to_string()]).await?;
                output::fields(&[
                    ("id", f.id.to_string()),
                    ("name", f.name.clone()),
                    ("workspace", ws.with_id(f.workspace_id)),
                    ("description", f.description.clone()),
                    ("created", output::time(Some(f.created_at))),
                ]);
            }
        }
        FleetCmd::Update {
            fleet,
            name,
            description,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let r = resolve(&c, &Kind::fleet(), &fleet).await?;
            let f: Fleet = c
                .patch(
                    &format!("/fleets/{}", r.id),
                    &json!({"name": name, "description": description}),
                )
                .await?;
            if client.json {
                output::json(&f)?;
            }
            output::done(
                client.json,
                format!(
                    "updated fleet {r}{}",
                    changes(&[
                        ("name", quoted(&name)),
                        ("description", quoted(&description)),
                    ])
                ),
            );
        }
        FleetCmd::Delete { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let r = resolve(&c, &Kind::fleet(), &fleet).await?;
            c.delete(&format!("/fleets/{}", r.id)).await?;
            output::done(client.json, format!("deleted fleet {r}"));
        }
        FleetCmd::Provisioning(cmd) => return credentials::provisioning(cmd).await,
        FleetCmd::Ca(cmd) => return credentials::fleet_ca(cmd).await,
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn device(cmd: DeviceCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DeviceCmd::Create {
            name,
            fleet,
            label,
            gateway,
            type_fleets,
            creds,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            let gateway = if gateway || !type_fleets.is_empty() {
                let fl: crate::model::Fleet = c.get(&format!("/fleets/{}", f.id), &[]).await?;
                Some(type_fleet_map(&c, fl.workspace_id, &type_fleets).await?)
            } else {
                None
            };
            credentials::create_device(&c, &f, &name, &label, gateway, &creds, client.json).await?;
        }
        DeviceCmd::Credentials { device, client } => {
            let c = ApiClient::from_args(&client)?;
            credentials::list(&c, &device, client.json).await?;
        }
        DeviceCmd::AddCredential {
            device,
            creds,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            credentials::add(&c, &device, &creds, client.json).await?;
        }
        DeviceCmd::SignCsr {
            device,
            csr,
            out,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            credentials::sign_csr(&c, &device, &csr, out.as_deref(), client.json).await?;
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
        }
        DeviceCmd::Revoke {
            device,
            credential,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            credentials::revoke(&c, &device, credential.as_deref(), client.json).await?;
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
                    resolve(&c, &Kind::workspace(), &w).await?.id,
                ));
            }
            if let Some(f) = fleet {
                q.push(("fleet_id", resolve(&c, &Kind::fleet(), &f).await?.id));
            }
            if let Some(s) = status {
                q.push(("status", s));
            }
            let (items, cur): (Vec<DeviceView>, _) = list_all(&c, "/devices", q, &list).await?;
            if client.json {
                return output::json(&items).map(|_| ExitCode::SUCCESS);
            }
            let (fleets, workspaces) = tokio::try_join!(
                Names::of(
                    &c,
                    Kind::fleet(),
                    items.iter().map(|d| d.fleet_id.to_string())
                ),
                Names::of(
                    &c,
                    Kind::workspace(),
                    items.iter().map(|d| d.workspace_id.to_string())
                ),
            )?;
            let rows: Vec<_> = items
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.name.clone(),
                        format!("{:?}", d.status).to_lowercase(),
                        fleets.get(d.fleet_id.to_string()),
                        workspaces.get(d.workspace_id.to_string()),
                        output::time(d.last_activity_at),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID",
                    "NAME",
                    "STATUS",
                    "FLEET",
                    "WORKSPACE",
                    "LAST ACTIVITY",
                ],
                &rows,
            );
            more(cur);
        }
        DeviceCmd::Show { device, client } => {
            let c = ApiClient::from_args(&client)?;
            let r = resolve(&c, &Kind::device(), &device).await?;
            let d: DeviceView = c.get(&format!("/devices/{}", r.id), &[]).await?;
            if client.json {
                output::json(&d)?;
            } else {
                show_device_fields(&c, &d).await?;
            }
        }
        DeviceCmd::Update {
            device,
            name,
            label,
            fleet,
            enable,
            disable,
            gateway,
            not_gateway,
            type_fleets,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let r = resolve(&c, &Kind::device(), &device).await?;
            let current: DeviceView = c.get(&format!("/devices/{}", r.id), &[]).await?;
            // Fleet names are unique within a workspace: look in the device's.
            let fleet = match fleet {
                Some(f) => {
                    let kind =
                        Kind::fleet().within("workspace_id", current.workspace_id.to_string());
                    Some(resolve(&c, &kind, &f).await?)
                }
                None => None,
            };
            let mapping = if type_fleets.is_empty() {
                None
            } else {
                Some(type_fleet_map(&c, current.workspace_id, &type_fleets).await?)
            };
            let gateway_flag = if gateway {
                Some(true)
            } else if not_gateway {
                Some(false)
            } else {
                None
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
                    &format!("/devices/{}", r.id),
                    &json!({"name": name, "label": label,
                            "fleet_id": fleet.as_ref().map(|f| &f.id), "enabled": enabled,
                            "gateway": gateway_flag, "gateway_type_fleets": mapping}),
                )
                .await?;
            if client.json {
                output::json(&d)?;
            }
            output::done(
                client.json,
                format!(
                    "updated device {r}{}",
                    changes(&[
                        ("name", quoted(&name)),
                        ("label", quoted(&label)),
                        ("moved to fleet", fleet.map(|f| f.name)),
                        ("enabled", enable.then(String::new)),
                        ("disabled", disable.then(String::new)),
                        ("a gateway", gateway.then(String::new)),
                        ("no longer a gateway", not_gateway.then(String::new)),
                        (
                            "type fleets set",
                            (!type_fleets.is_empty()).then(String::new)
                        ),
                    ])
                ),
            );
        }
        DeviceCmd::Delete { device, client } => {
            let c = ApiClient::from_args(&client)?;
            let r = resolve(&c, &Kind::device(), &device).await?;
            c.delete(&format!("/devices/{}", r.id)).await?;
            output::done(client.json, format!("deleted device {r} and its data"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show_device_fields(c: &ApiClient, d: &DeviceView) -> anyhow::Result<()> {
    let (fleets, workspaces) = tokio::try_join!(
        Names::of(c, Kind::fleet(), [d.fleet_id.to_string()]),
        Names::of(c, Kind::workspace(), [d.workspace_id.to_string()]),
    )?;
    output::fields(&[
        ("id", d.id.to_string()),
        ("name", d.name.clone()),
        ("label", d.label.clone()),
        ("fleet", fleets.with_id(d.fleet_id)),
        ("workspace", workspaces.with_id(d.workspace_id)),
        ("enabled", d.enabled.to_string()),
        ("status", format!("{:?}", d.status).to_lowercase()),
        ("connections", d.connections.to_string()),
        ("last connect", output::time(d.last_connect_at)),
        ("last disconnect", output::time(d.last_disconnect_at)),
        ("last activity", output::time(d.last_activity_at)),
        ("created", output::time(Some(d.created_at))),
    ]);
    Ok(())
}

pub async fn telemetry(a: TelemetryArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(&a.client)?;
    let id = resolve(&c, &Kind::device(), &a.device).await?.id;
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

/// A gateway's `TYPE=FLEET` arguments as the API's type-to-fleet map, each fleet (id or name)
/// looked up in `workspace`.
async fn type_fleet_map(
    c: &ApiClient,
    workspace: crate::model::WorkspaceId,
    pairs: &[String],
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for p in pairs {
        let Some((t, f)) = p.split_once('=') else {
            anyhow::bail!("--type-fleet takes TYPE=FLEET, not {p:?}");
        };
        let kind = Kind::fleet().within("workspace_id", workspace.to_string());
        let fleet = resolve(c, &kind, f).await?;
        map.insert(t.to_string(), json!(fleet.id));
    }
    Ok(map)
}
