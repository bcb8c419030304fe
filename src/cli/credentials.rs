//! Credential commands over REST: a device's credentials (`device credentials`,
//! `add-credential`, `sign-csr`, `rotate`, `revoke`), the credential flags of `device create`,
//! fleet provisioning keys and manufacturer CAs (`fleet provisioning`, `fleet ca`), and
//! `audit`. Private keys are written to files (mode 0600), never to the terminal.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::ClientArgs;
use super::client::ApiClient;
use super::output;
use super::resolve::{Kind, Names, Ref, resolve};
use crate::api::Page;
use crate::audit::AuditEventView as AuditEvent;
use crate::devices::credentials::{CredentialStatus, CredentialView, IssuedCredential};
use crate::devices::views::FleetCaView as FleetCa;

/// How a device proves who it is; at most one may be given (default: a generated token).
#[derive(Args, Default)]
pub struct CredentialArgs {
    /// An access token chosen by you (default: generated).
    #[arg(long, group = "cred")]
    token: Option<String>,
    /// Corral's CA issues a key and certificate, written to --out-dir.
    #[arg(long, group = "cred")]
    cert: bool,
    /// Register an existing certificate (PEM file), e.g. a secure element's.
    #[arg(long, group = "cred", value_name = "FILE")]
    register_cert: Option<PathBuf>,
    /// Register a public key (PEM file): any certificate with this key identifies the device.
    #[arg(long, group = "cred", value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// MQTT basic credentials: the username.
    #[arg(long, group = "cred")]
    basic_username: Option<String>,
    /// MQTT basic credentials: the client id (with or without a username).
    #[arg(long)]
    basic_client_id: Option<String>,
    /// MQTT basic credentials: a file holding the password.
    #[arg(long, value_name = "FILE")]
    basic_password_file: Option<PathBuf>,
    /// Where --cert writes <device>.key, <device>.pem and ca.pem.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
}

impl CredentialArgs {
    /// The `credentials` body of the request, or None for the server's default.
    fn body(&self) -> anyhow::Result<Option<Value>> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        Ok(Some(if let Some(t) = &self.token {
            json!({"type": "access_token", "token": t})
        } else if self.cert {
            json!({"type": "issued_certificate"})
        } else if let Some(p) = &self.register_cert {
            json!({"type": "x509_certificate", "certificate_pem": read(p)?})
        } else if let Some(p) = &self.public_key {
            json!({"type": "public_key", "public_key_pem": read(p)?})
        } else if self.basic_username.is_some() || self.basic_client_id.is_some() {
            let password = match &self.basic_password_file {
                Some(p) => Some(read(p)?.trim_end_matches(['\n', '\r']).to_string()),
                None => None,
            };
            json!({"type": "mqtt_basic", "client_id": self.basic_client_id,
                   "username": self.basic_username, "password": password})
        } else {
            return Ok(None);
        }))
    }
}

#[derive(Subcommand)]
pub enum ProvisioningCmd {
    /// Set (or replace) the fleet's provisioning key and secret; prints the secret once.
    Set {
        /// Fleet id or name.
        fleet: String,
        /// Which devices may register themselves.
        #[arg(long, value_enum)]
        strategy: Strategy,
        /// The key (default: generated).
        #[arg(long)]
        key: Option<String>,
        /// A file holding the secret (default: generated).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a fleet's provisioning settings.
    Show {
        /// Fleet id or name.
        fleet: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop self-registration into the fleet.
    Remove {
        /// Fleet id or name.
        fleet: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Strategy {
    /// Any new device name creates a device.
    AllowCreate,
    /// Only devices created beforehand may claim credentials, once.
    PreProvisioned,
}

#[derive(Subcommand)]
pub enum FleetCaCmd {
    /// Register a manufacturer CA: devices with a certificate it signed join the fleet.
    Add {
        /// Fleet id or name.
        fleet: String,
        /// The CA certificate (PEM file).
        cert: PathBuf,
        /// A name for the CA (default: from its subject).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the manufacturer CAs a fleet trusts.
    List {
        /// Fleet id or name.
        fleet: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop trusting a manufacturer CA.
    Remove {
        /// Fleet id or name.
        fleet: String,
        /// Manufacturer CA id or name.
        ca: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only this device (id or name).
    #[arg(long)]
    device: Option<String>,
    /// Only this fleet (id or name).
    #[arg(long)]
    fleet: Option<String>,
    /// Only this kind, e.g. auth_failed, credential_revoked, login_failed, api_change.
    #[arg(long)]
    kind: Option<String>,
    /// Only this actor: a username, `api-key:NAME`, `device`.
    #[arg(long)]
    actor: Option<String>,
    /// Records per page (1-1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// `next_cursor` of the previous page: older records.
    #[arg(long)]
    cursor: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Writes a file readable by the owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Writes a certificate bundle to `out_dir` (the private key mode 0600); returns the files.
fn write_bundle(
    name: &str,
    issued: &IssuedCredential,
    out_dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if let Some(b) = &issued.bundle {
        std::fs::create_dir_all(out_dir)?;
        if let Some(k) = &b.private_key_pem {
            let p = out_dir.join(format!("{name}.key"));
            write_private(&p, k)?;
            files.push(p);
        }
        for (file, text) in [
            (format!("{name}.pem"), &b.certificate_pem),
            ("ca.pem".into(), &b.ca_pem),
        ] {
            let p = out_dir.join(file);
            std::fs::write(&p, text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            files.push(p);
        }
    }
    Ok(files)
}

/// The JSON form of a response holding a new credential at `pointer`: the private key stays
/// in its file, whose path is added.
fn redacted(v: &impl serde::Serialize, pointer: &str, files: &[PathBuf]) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(v)?;
    if let Some(issued) = v.pointer_mut(pointer) {
        if let Some(b) = issued.get_mut("bundle").and_then(Value::as_object_mut) {
            b.remove("private_key_pem");
        }
        issued["files"] = json!(files);
    }
    Ok(v)
}

/// Prints a new credential; writes a certificate bundle to `out_dir`.
pub fn show_issued(
    name: &str,
    issued: &IssuedCredential,
    out_dir: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let files = write_bundle(name, issued, out_dir)?;
    if json {
        return output::json(&redacted(issued, "", &files)?);
    }
    print_issued(issued, &files);
    Ok(())
}

fn print_issued(issued: &IssuedCredential, files: &[PathBuf]) {
    show_credential(&issued.credential);
    if let Some(t) = &issued.token {
        output::fields(&[("access token", t.clone())]);
        eprintln!("(the access token is shown only now: it is the device's MQTT username)");
    }
    for f in files {
        eprintln!("wrote {}", f.display());
    }
}

fn show_credential(c: &CredentialView) {
    let mut pairs = vec![
        ("credential", c.id.to_string()),
        ("type", c.kind.as_str().to_string()),
        ("status", c.status.as_str().to_string()),
        ("created", output::time(Some(c.created_at))),
    ];
    if let Some(e) = c.expires_at {
        pairs.push(("expires", output::time(Some(e))));
    }
    if let Some(cert) = &c.certificate {
        pairs.push(("subject", cert.subject.clone()));
        pairs.push(("fingerprint", cert.fingerprint.clone()));
        pairs.push(("not after", output::time(Some(cert.not_after))));
    }
    output::fields(&pairs);
}

fn credential_row(c: &CredentialView) -> Vec<String> {
    let detail = match c.kind.as_str() {
        "access_token" => format!("{}…", c.hint.clone().unwrap_or_default()),
        "mqtt_basic" => format!(
            "client id {:?} username {:?}",
            c.client_id.clone().unwrap_or_default(),
            c.username.clone().unwrap_or_default()
        ),
        "certificate" => c
            .certificate
            .as_ref()
            .map(|i| format!("{:?} {}", i.origin, i.subject).to_lowercase())
            .unwrap_or_default(),
        _ => c.spki_sha256.clone().unwrap_or_default(),
    };
    vec![
        c.id.to_string(),
        c.kind.as_str().to_string(),
        c.status.as_str().to_string(),
        detail,
        output::time(c.expires_at.or(c.revoked_at)),
    ]
}

pub async fn create_device(
    c: &ApiClient,
    fleet: &Ref,
    name: &str,
    label: &str,
    gateway: Option<serde_json::Map<String, serde_json::Value>>,
    creds: &CredentialArgs,
    json: bool,
) -> anyhow::Result<()> {
    let mut body = json!({"fleet_id": fleet.id, "name": name, "label": label});
    // A gateway, with the fleets its sub-devices join by type.
    if let Some(type_fleets) = gateway {
        body["gateway"] = json!(true);
        body["gateway_type_fleets"] = serde_json::Value::Object(type_fleets);
    }
    if let Some(cr) = creds.body()? {
        body["credentials"] = cr;
    }
    let d: crate::api::CreatedDevice = c.post("/devices", &body).await?;
    let files = write_bundle(&d.device.name, &d.credentials, &creds.out_dir)?;
    if json {
        output::json(&redacted(&d, "/credentials", &files)?)?;
    }
    output::done(
        json,
        format!(
            "created device {} (id {}) in fleet {fleet}",
            d.device.name, d.device.id
        ),
    );
    if !json {
        print_issued(&d.credentials, &files);
    }
    Ok(())
}

pub async fn list(c: &ApiClient, device: &str, json: bool) -> anyhow::Result<()> {
    let dev = resolve(c, &Kind::device(), device).await?;
    let list: Vec<CredentialView> = c
        .get(&format!("/devices/{}/credentials", dev.id), &[])
        .await?;
    if json {
        return output::json(&list);
    }
    let rows: Vec<_> = list.iter().map(credential_row).collect();
    output::table(&["ID", "TYPE", "STATUS", "DETAIL", "UNTIL"], &rows);
    Ok(())
}

pub async fn add(
    c: &ApiClient,
    device: &str,
    creds: &CredentialArgs,
    json: bool,
) -> anyhow::Result<()> {
    let dev = resolve(c, &Kind::device(), device).await?;
    let body = creds
        .body()?
        .unwrap_or_else(|| json!({"type": "access_token"}));
    let issued: IssuedCredential = c
        .post(&format!("/devices/{}/credentials", dev.id), &body)
        .await?;
    output::done(
        json,
        format!(
            "added a {} credential (id {}) to device {dev}",
            issued.credential.kind.as_str(),
            issued.credential.id
        ),
    );
    show_issued(&dev.name, &issued, &creds.out_dir, json)
}

pub async fn sign_csr(
    c: &ApiClient,
    device: &str,
    csr: &Path,
    out: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let dev = resolve(c, &Kind::device(), device).await?;
    let csr_pem =
        std::fs::read_to_string(csr).map_err(|e| anyhow::anyhow!("{}: {e}", csr.display()))?;
    let issued: IssuedCredential = c
        .post(
            &format!("/devices/{}/csr", dev.id),
            &json!({"csr_pem": csr_pem}),
        )
        .await?;
    let cert = issued
        .bundle
        .as_ref()
        .map(|b| b.certificate_pem.clone())
        .unwrap_or_default();
    let line = format!(
        "signed a certificate for device {dev} (credential id {})",
        issued.credential.id
    );
    match out {
        Some(p) => {
            std::fs::write(p, &cert).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            if json {
                output::json(&issued)?;
            }
            output::done(json, line);
            if !json {
                show_credential(&issued.credential);
                eprintln!("wrote {}", p.display());
            }
        }
        // The certificate alone on stdout, for `> device.pem`.
        None if !json => {
            print!("{cert}");
            eprintln!("{line}");
        }
        None => {
            output::json(&issued)?;
            eprintln!("{line}");
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn rotate(
    c: &ApiClient,
    device: &str,
    credential: &str,
    grace: Option<u64>,
    csr: Option<&Path>,
    cert: Option<&Path>,
    out_dir: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let dev = resolve(c, &Kind::device(), device).await?;
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
    let body = json!({
        "grace_secs": grace,
        "csr_pem": csr.map(read).transpose()?,
        "certificate_pem": cert.map(read).transpose()?,
    });
    let issued: IssuedCredential = c
        .post(
            &format!("/devices/{}/credentials/{credential}/rotate", dev.id),
            &body,
        )
        .await?;
    output::done(
        json,
        format!(
            "rotated credential {credential} of device {dev}: the new one is {}",
            issued.credential.id
        ),
    );
    show_issued(&dev.name, &issued, out_dir, json)
}

/// Revokes one credential, or every credential of the device.
pub async fn revoke(
    c: &ApiClient,
    device: &str,
    credential: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let dev = resolve(c, &Kind::device(), device).await?;
    let id = &dev.id;
    let targets: Vec<String> = match credential {
        Some(cred) => vec![cred.to_string()],
        None => c
            .get::<Vec<CredentialView>>(&format!("/devices/{id}/credentials"), &[])
            .await?
            .into_iter()
            .filter(|v| v.status != CredentialStatus::Revoked)
            .map(|v| v.id.to_string())
            .collect(),
    };
    let mut done = Vec::new();
    for cred in targets {
        let v: CredentialView = c
            .post(
                &format!("/devices/{id}/credentials/{cred}/revoke"),
                &json!(null),
            )
            .await?;
        done.push(v);
    }
    if json {
        output::json(&done)?;
    }
    output::done(
        json,
        format!(
            "revoked {} of device {dev}",
            output::count(done.len(), "credential")
        ),
    );
    if !json {
        let rows: Vec<_> = done.iter().map(credential_row).collect();
        output::table(&["ID", "TYPE", "STATUS", "DETAIL", "UNTIL"], &rows);
    }
    Ok(())
}

pub async fn provisioning(cmd: ProvisioningCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ProvisioningCmd::Set {
            fleet,
            strategy,
            key,
            secret_file,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            let secret = match secret_file {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                ),
                None => None,
            };
            let strategy = match strategy {
                Strategy::AllowCreate => "allow_create_new_devices",
                Strategy::PreProvisioned => "check_pre_provisioned_devices",
            };
            let v: Value = c
                .put(
                    &format!("/fleets/{}/provisioning", f.id),
                    &json!({"key": key, "secret": secret, "strategy": strategy}),
                )
                .await?;
            if client.json {
                output::json(&v)?;
            }
            output::done(
                client.json,
                format!("enabled provisioning into fleet {f} ({strategy})"),
            );
            if !client.json {
                output::fields(&[
                    (
                        "provision key",
                        v["key"].as_str().unwrap_or_default().into(),
                    ),
                    (
                        "provision secret",
                        v["secret"].as_str().unwrap_or_default().into(),
                    ),
                ]);
                eprintln!("(the secret is shown only now)");
            }
        }
        ProvisioningCmd::Show { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            let v: Value = c
                .get(&format!("/fleets/{}/provisioning", f.id), &[])
                .await?;
            if client.json {
                output::json(&v)?;
            } else {
                output::fields(&[
                    ("fleet", format!("{f} ({})", f.id)),
                    (
                        "strategy",
                        v["strategy"].as_str().unwrap_or_default().into(),
                    ),
                    (
                        "provision key",
                        v["key"].as_str().unwrap_or_default().into(),
                    ),
                    ("since", output::time(v["created_at"].as_i64())),
                ]);
            }
        }
        ProvisioningCmd::Remove { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            c.delete(&format!("/fleets/{}/provisioning", f.id)).await?;
            output::done(
                client.json,
                format!(
                    "removed provisioning from fleet {f}: devices no longer register themselves into it"
                ),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn fleet_ca(cmd: FleetCaCmd) -> anyhow::Result<ExitCode> {
    let row = |ca: &FleetCa| {
        vec![
            ca.id.to_string(),
            ca.name.clone(),
            ca.subject.clone(),
            output::time(Some(ca.not_after)),
        ]
    };
    match cmd {
        FleetCaCmd::Add {
            fleet,
            cert,
            name,
            client,
        } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            let pem = std::fs::read_to_string(&cert)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
            let ca: FleetCa = c
                .post(
                    &format!("/fleets/{}/cas", f.id),
                    &json!({"certificate_pem": pem, "name": name}),
                )
                .await?;
            if client.json {
                output::json(&ca)?;
            }
            output::done(
                client.json,
                format!(
                    "added manufacturer CA {} (id {}) to fleet {f}",
                    ca.name, ca.id
                ),
            );
            if !client.json {
                output::table(&["ID", "NAME", "SUBJECT", "NOT AFTER"], &[row(&ca)]);
            }
        }
        FleetCaCmd::List { fleet, client } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            let cas: Vec<FleetCa> = c.get(&format!("/fleets/{}/cas", f.id), &[]).await?;
            if client.json {
                output::json(&cas)?;
            } else {
                let rows: Vec<_> = cas.iter().map(row).collect();
                output::table(&["ID", "NAME", "SUBJECT", "NOT AFTER"], &rows);
            }
        }
        FleetCaCmd::Remove { fleet, ca, client } => {
            let c = ApiClient::from_args(&client)?;
            let f = resolve(&c, &Kind::fleet(), &fleet).await?;
            let ca = resolve(&c, &Kind::fleet_ca(&f.id), &ca).await?;
            c.delete(&format!("/fleets/{}/cas/{}", f.id, ca.id)).await?;
            output::done(
                client.json,
                format!("removed manufacturer CA {ca} from fleet {f}"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(a: AuditArgs) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(&a.client)?;
    let mut q: Vec<(&str, String)> = vec![("limit", a.limit.to_string())];
    if let Some(d) = &a.device {
        q.push(("device_id", resolve(&c, &Kind::device(), d).await?.id));
    }
    if let Some(f) = &a.fleet {
        q.push(("fleet_id", resolve(&c, &Kind::fleet(), f).await?.id));
    }
    if let Some(k) = &a.actor {
        q.push(("actor", k.clone()));
    }
    if let Some(k) = &a.kind {
        q.push(("kind", k.clone()));
    }
    if let Some(cur) = &a.cursor {
        q.push(("cursor", cur.clone()));
    }
    let page: Page<AuditEvent> = c.get("/audit", &q).await?;
    if a.client.json {
        return output::json(&page).map(|_| ExitCode::SUCCESS);
    }
    let devices = Names::of(
        &c,
        Kind::device(),
        page.items
            .iter()
            .filter_map(|e| e.device_id.map(|d| d.to_string())),
    )
    .await?;
    let rows: Vec<_> = page
        .items
        .iter()
        .map(|e| {
            vec![
                output::time(Some(e.ts)),
                e.kind.to_string(),
                e.actor.clone(),
                e.device_id
                    .map(|d| devices.get(d.to_string()))
                    .unwrap_or_default(),
                e.peer.clone().unwrap_or_default(),
                e.detail.clone(),
            ]
        })
        .collect();
    output::table(
        &["TIME", "KIND", "ACTOR", "DEVICE", "PEER", "DETAIL"],
        &rows,
    );
    if let Some(c) = page.next_cursor {
        eprintln!("(older records: --cursor {c})");
    }
    Ok(ExitCode::SUCCESS)
}
