//! Package commands over REST: `firmware upload|list|show|download|delete`. The file is
//! streamed to the server, never read whole into memory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::ClientArgs;
use super::client::ApiClient;
use super::output;
use super::resolve::{Kind, resolve};
use crate::ota::PackageView;

#[derive(Subcommand)]
pub enum FirmwareCmd {
    /// Upload a firmware (or software) package file.
    Upload {
        /// The file.
        file: PathBuf,
        /// Title devices see (`fw_title`).
        #[arg(long)]
        title: String,
        /// Version devices see (`fw_version`).
        #[arg(long)]
        version: String,
        /// firmware or software.
        #[arg(long = "type", default_value = "firmware")]
        kind: String,
        /// Only for this fleet (id or name); without it, for every fleet (server admins).
        #[arg(long)]
        fleet: Option<String>,
        /// The checksum devices verify: SHA256 (default), SHA384, SHA512, MD5, CRC32,
        /// MURMUR3_32, MURMUR3_128.
        #[arg(long)]
        checksum_algorithm: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Packages, newest first.
    List {
        /// firmware or software.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only this fleet's packages and those for every fleet (id or name).
        #[arg(long)]
        fleet: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One package.
    Show {
        /// Package id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Save a package's file.
    Download {
        /// Package id.
        id: String,
        /// Where to write it.
        #[arg(long, short)]
        output: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a package the target of a fleet's devices (they download it).
    Assign {
        /// Package id.
        id: String,
        /// The fleet (id or name).
        #[arg(long)]
        fleet: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a fleet's firmware (or software) target.
    Unassign {
        /// The fleet (id or name).
        #[arg(long)]
        fleet: String,
        /// firmware or software.
        #[arg(long = "type", default_value = "firmware")]
        kind: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a package.
    Delete {
        /// Package id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

const HEADERS: [&str; 7] = [
    "ID", "TYPE", "TITLE", "VERSION", "SIZE", "CHECKSUM", "CREATED",
];

fn row(p: &PackageView) -> Vec<String> {
    vec![
        p.id.to_string(),
        p.kind.as_str().to_string(),
        p.title.clone(),
        p.version.clone(),
        p.size.to_string(),
        format!("{} {}", p.checksum_algorithm.as_str(), short(&p.checksum)),
        output::time(Some(p.created_at)),
    ]
}

fn short(h: &str) -> String {
    if h.len() > 16 {
        format!("{}…", &h[..16])
    } else {
        h.to_string()
    }
}

fn show(p: &PackageView) {
    let mut f = vec![
        ("id", p.id.to_string()),
        ("type", p.kind.as_str().to_string()),
        ("title", p.title.clone()),
        ("version", p.version.clone()),
        (
            "fleet",
            p.fleet_id.map_or("every fleet".into(), |f| f.to_string()),
        ),
        ("file", p.file_name.clone()),
        ("size", p.size.to_string()),
        ("sha256", p.sha256.clone()),
        (
            "checksum",
            format!("{} {}", p.checksum_algorithm.as_str(), p.checksum),
        ),
        ("created", output::time(Some(p.created_at))),
        ("by", p.created_by.clone()),
    ];
    for w in &p.warnings {
        f.push(("warning", w.clone()));
    }
    output::fields(&f);
}

pub async fn run(cmd: FirmwareCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        FirmwareCmd::Upload {
            file,
            title,
            version,
            kind,
            fleet,
            checksum_algorithm,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let mut q: Vec<(&str, String)> =
                vec![("title", title), ("version", version), ("type", kind)];
            if let Some(f) = &fleet {
                q.push(("fleet_id", resolve(&c, &Kind::fleet(), f).await?.id));
            }
            if let Some(a) = checksum_algorithm {
                q.push(("checksum_algorithm", a));
            }
            if let Some(n) = file.file_name() {
                q.push(("file_name", n.to_string_lossy().into_owned()));
            }
            let p: PackageView = c.upload("/packages", &q, &file).await?;
            if client.json {
                output::json(&p)?;
            } else {
                output::done(
                    false,
                    format!(
                        "uploaded {} {} {} (id {})",
                        p.kind.as_str(),
                        p.title,
                        p.version,
                        p.id
                    ),
                );
                show(&p);
            }
        }
        FirmwareCmd::List {
            kind,
            fleet,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let mut q: Vec<(&str, String)> = Vec::new();
            if let Some(k) = kind {
                q.push(("type", k));
            }
            if let Some(f) = &fleet {
                q.push(("fleet_id", resolve(&c, &Kind::fleet(), f).await?.id));
            }
            let list: Vec<PackageView> = c.get("/packages", &q).await?;
            if client.json {
                output::json(&list)?;
            } else {
                output::table(&HEADERS, &list.iter().map(row).collect::<Vec<_>>());
            }
        }
        FirmwareCmd::Show { id, client } => {
            let c = ApiClient::from_args(&client)?;
            let p: PackageView = c.get(&format!("/packages/{id}"), &[]).await?;
            if client.json {
                output::json(&p)?;
            } else {
                show(&p);
            }
        }
        FirmwareCmd::Download {
            id,
            output: out,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let mut f = std::fs::File::create(&out)?;
            let n = c
                .download(&format!("/packages/{id}/file"), &[], &mut f)
                .await?;
            f.sync_all()?;
            output::done(client.json, format!("wrote {n} bytes to {}", out.display()));
        }
        FirmwareCmd::Assign { id, fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            let p: PackageView = c
                .put(
                    &format!("/fleets/{}/packages", f.id),
                    &serde_json::json!({"package_id": id}),
                )
                .await?;
            output::done(
                client.json,
                format!(
                    "fleet {fleet} now targets {} {} {}",
                    p.kind.as_str(),
                    p.title,
                    p.version
                ),
            );
            if client.json {
                output::json(&p)?;
            }
        }
        FirmwareCmd::Unassign {
            fleet,
            kind,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            c.delete(&format!("/fleets/{}/packages?type={kind}", f.id))
                .await?;
            output::done(client.json, format!("fleet {fleet} has no {kind} target"));
        }
        FirmwareCmd::Delete { id, client } => {
            let c = ApiClient::from_args(&client)?;
            c.delete(&format!("/packages/{id}")).await?;
            output::done(client.json, format!("deleted package {id}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
