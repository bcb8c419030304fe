//! Package commands over REST: `firmware upload|list|show|download|assign|unassign|delete`
//! (the file is streamed to the server, never read whole into memory), and offline manifest
//! signing: `firmware keygen` makes an ed25519 key that never touches the server, `firmware
//! sign` signs a file's manifest with it, and `firmware set-manifest` uploads the result.

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
    /// Make an ed25519 key for signing manifests offline; prints its public key, for
    /// `[ota] manifest_keys`. Needs no server.
    Keygen {
        /// Where to write the private key (PKCS#8, base64; created, never overwritten).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Sign the manifest of a package file offline with a key from `keygen`; prints the signed
    /// manifest as JSON for `set-manifest`. Needs no server.
    Sign {
        /// The package file (read to compute its size and SHA-256).
        file: PathBuf,
        /// The private key file from `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The package's title (`fw_title`).
        #[arg(long)]
        title: String,
        /// The package's version (`fw_version`).
        #[arg(long)]
        version: String,
        /// firmware or software.
        #[arg(long = "type", default_value = "firmware")]
        kind: String,
    },
    /// Replace a package's manifest with one signed offline (the JSON `sign` printed).
    SetManifest {
        /// Package id.
        id: String,
        /// The signed manifest file.
        #[arg(long)]
        file: PathBuf,
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
        FirmwareCmd::Keygen { output: out } => {
            use base64::Engine;
            use ring::signature::{Ed25519KeyPair, KeyPair};
            let b64 = base64::engine::general_purpose::STANDARD;
            let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("cannot generate a key"))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                .map_err(|_| anyhow::anyhow!("cannot read the generated key"))?;
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&out)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
                f.write_all(b64.encode(doc.as_ref()).as_bytes())?;
                f.sync_all()?;
            }
            let public = b64.encode(pair.public_key().as_ref());
            println!("{public}");
            eprintln!(
                "private key in {} (keep it off the server); kid {}; add the public key above to [ota] manifest_keys",
                out.display(),
                crate::pki::kid_of(pair.public_key().as_ref())
            );
        }
        FirmwareCmd::Sign {
            file,
            key,
            title,
            version,
            kind,
        } => {
            use base64::Engine;
            use sha2::Digest;
            let kind: crate::model::PackageKind =
                serde_json::from_value(serde_json::Value::String(kind.clone()))
                    .map_err(|_| anyhow::anyhow!("--type is firmware or software, not {kind}"))?;
            let der = base64::engine::general_purpose::STANDARD
                .decode(std::fs::read_to_string(&key)?.trim())
                .map_err(|_| {
                    anyhow::anyhow!("{}: not a key from `firmware keygen`", key.display())
                })?;
            let mut hasher = sha2::Sha256::new();
            let mut f = std::fs::File::open(&file)?;
            let size = std::io::copy(&mut f, &mut hasher)?;
            let sha256: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let mut m = crate::ota::manifest::Manifest {
                created: crate::model::now_ms(),
                kid: String::new(),
                sha256,
                size,
                title,
                kind,
                version,
            };
            let signed = crate::ota::manifest::sign_offline(&der, &mut m)?;
            output::json(&signed)?;
        }
        FirmwareCmd::SetManifest { id, file, client } => {
            let c = ApiClient::from_args(&client)?;
            let m: crate::model::SignedManifest =
                serde_json::from_str(&std::fs::read_to_string(&file)?).map_err(|e| {
                    anyhow::anyhow!("{}: not a signed manifest: {e}", file.display())
                })?;
            let p: PackageView = c.put(&format!("/packages/{id}/manifest"), &m).await?;
            output::done(
                client.json,
                format!("package {id} now carries the manifest signed offline"),
            );
            if client.json {
                output::json(&p)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
