//! Device credentials: issuing them (access tokens, MQTT basic credentials, certificates from
//! Corral's CA or from a device's CSR, registered certificates and public keys of secure
//! elements), listing, rotating with a grace period, revoking (with the revocation list the
//! TLS verifier reloads) — and the login decision every transport asks for, with
//! ThingsBoard's matching rules (thingsboard-device-api.md §2) and just-in-time registration
//! of devices whose certificate a fleet's manufacturer CA signed.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use rand::distr::Alphanumeric;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::registry::{Registry, secret_hash};
use super::sessions::{CloseReason, Sessions};
use crate::audit::{AuditLog, Entry};
use crate::config::CredentialsConfig;
use crate::error::{Conflict, Error};
use crate::model::{
    AuditKind, CertOrigin, CertificateInfo, Credential, CredentialId, CredentialSecret, Device,
    DeviceId, Millis, now_ms,
};
use crate::pki::{self, Pki};
pub use crate::secrets::verify_password;
use crate::store::ports::{CredentialClash, CredentialKey, IdentityStore, StoreError};

type Result<T> = std::result::Result<T, Error>;

/// The username (or client id) of ThingsBoard's provisioning sessions; never a credential.
pub const PROVISION_USERNAME: &str = "provision";

/// A credential to add to a device. Secrets given here are stored only as hashes.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NewCredential {
    /// An access token: the given one, or 20 generated alphanumerics.
    AccessToken {
        #[serde(default)]
        token: Option<String>,
    },
    /// MQTT basic credentials; at least a client id or a username.
    MqttBasic {
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    },
    /// Register an existing certificate (self-signed or from any issuer, e.g. a secure
    /// element's), PEM.
    X509Certificate { certificate_pem: String },
    /// Register a bare public key (PEM `PUBLIC KEY`); any certificate with this key matches.
    PublicKey { public_key_pem: String },
    /// Corral's CA generates a key and certificate; both are returned once.
    IssuedCertificate {
        #[serde(default)]
        validity_days: Option<u32>,
    },
    /// Corral's CA signs the device's certificate signing request (EC or RSA).
    Csr {
        csr_pem: String,
        #[serde(default)]
        validity_days: Option<u32>,
    },
}

/// A certificate Corral issued, with what the device needs to use it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CertBundle {
    /// Present only when Corral generated the key; shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// A credential as the API shows it: never a secret or a hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    pub id: CredentialId,
    pub device_id: DeviceId,
    #[serde(rename = "type")]
    pub kind: CredentialKind,
    pub status: CredentialStatus,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    /// First characters of an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_password: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spki_sha256: Option<String>,
}

/// How a device proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    AccessToken,
    MqttBasic,
    Certificate,
    PublicKey,
}

/// Whether a credential works now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    Active,
    /// Rotated: it works until its grace period ends.
    Expiring,
    Expired,
    Revoked,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::MqttBasic => "mqtt_basic",
            Self::Certificate => "certificate",
            Self::PublicKey => "public_key",
        }
    }
}

impl CredentialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expiring => "expiring",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

impl CredentialView {
    pub fn of(c: &Credential, now: Millis) -> Self {
        let status = if c.revoked_at.is_some() {
            CredentialStatus::Revoked
        } else if c.unusable(now).is_some() {
            CredentialStatus::Expired
        } else if c.expires_at.is_some() {
            CredentialStatus::Expiring
        } else {
            CredentialStatus::Active
        };
        let kind = match &c.secret {
            CredentialSecret::AccessToken { .. } => CredentialKind::AccessToken,
            CredentialSecret::MqttBasic { .. } => CredentialKind::MqttBasic,
            CredentialSecret::Certificate(_) => CredentialKind::Certificate,
            CredentialSecret::PublicKey { .. } => CredentialKind::PublicKey,
        };
        let mut v = CredentialView {
            id: c.id,
            device_id: c.device_id,
            kind,
            status,
            created_at: c.created_at,
            expires_at: c.expires_at,
            revoked_at: c.revoked_at,
            hint: None,
            client_id: None,
            username: None,
            has_password: None,
            certificate: None,
            spki_sha256: None,
        };
        match &c.secret {
            CredentialSecret::AccessToken { hint, .. } => {
                v.hint = Some(hint.clone());
            }
            CredentialSecret::MqttBasic {
                client_id,
                username,
                password_hash,
            } => {
                v.client_id = client_id.clone();
                v.username = username.clone();
                v.has_password = Some(password_hash.is_some());
            }
            CredentialSecret::Certificate(info) => {
                v.certificate = Some(info.clone());
            }
            CredentialSecret::PublicKey { spki_sha256, .. } => {
                v.spki_sha256 = Some(spki_sha256.clone());
            }
        }
        v
    }
}

/// A new credential and the secrets that are shown only now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedCredential {
    pub credential: CredentialView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<CertBundle>,
}

/// A manufacturer CA to register on a fleet.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFleetCa {
    pub certificate_pem: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// Optional inputs of a rotation.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old credential keeps working; the configured default when absent.
    pub grace_secs: Option<u64>,
    /// For a certificate signed from a CSR: the device's new CSR.
    pub csr_pem: Option<String>,
    /// For a registered certificate: the device's new certificate.
    pub certificate_pem: Option<String>,
}

/// What a connecting client presents.
#[derive(Debug, Clone, Default)]
pub struct LoginAttempt<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub client_id: &'a str,
    /// The TLS client certificate chain, leaf first.
    pub cert_chain: Option<Vec<CertificateDer<'static>>>,
    pub peer: Option<SocketAddr>,
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Login {
    pub device: Device,
    pub credential: CredentialId,
    /// `access_token`, `mqtt_basic`, `certificate`, `public_key`.
    pub method: &'static str,
    /// Common name of the client certificate, when one was used.
    pub cert_cn: Option<String>,
}

/// Why a login was refused, in ThingsBoard's categories (§2), with the reason for the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown token sent without a password (how the SDK sends tokens): v3 4, v5 0x86.
    BadUsernameOrPassword(&'static str),
    /// Unknown or unusable credentials, disabled device: v3 5, v5 0x87.
    NotAuthorized(&'static str),
    /// A client id alone that matches nothing: v3 2, v5 0x85.
    IdentifierRejected(&'static str),
    /// The store failed: v3 3, v5 0x88.
    Unavailable,
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::BadUsernameOrPassword(_) => "bad_username_or_password",
            Refusal::NotAuthorized(_) => "not_authorized",
            Refusal::IdentifierRejected(_) => "identifier_rejected",
            Refusal::Unavailable => "unavailable",
        }
    }
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadUsernameOrPassword(r)
            | Refusal::NotAuthorized(r)
            | Refusal::IdentifierRejected(r) => r,
            Refusal::Unavailable => "store unavailable",
        }
    }
}

pub struct CredentialService {
    store: Arc<dyn IdentityStore>,
    pki: Arc<Pki>,
    registry: Arc<Registry>,
    sessions: Arc<Sessions>,
    audit: Arc<AuditLog>,
    cfg: CredentialsConfig,
}

/// A new access token: 20 alphanumerics (~119 bits), the length ThingsBoard uses.
pub fn new_token() -> String {
    random_alnum(20)
}

pub fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// argon2id hash (PHC string) of a device password or provisioning secret.
pub fn hash_password(p: &str) -> Result<String> {
    crate::secrets::hash_password(p).map_err(|e| internal(&e))
}

fn internal(e: &dyn std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

/// Checks a client-chosen identifier (token, client id, username).
fn check_ident(field: &'static str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 256 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            field,
            "must be 1 to 256 characters without spaces or control characters",
        ));
    }
    if s == PROVISION_USERNAME {
        return Err(invalid(field, "\"provision\" is reserved for provisioning"));
    }
    // A token is also a path segment of the HTTP device API (`/api/v1/{token}/...`): it must
    // be URL-safe and must not be one of the REST API's own resource names.
    if field == "token"
        && (RESERVED_TOKENS.contains(&s)
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
    {
        return Err(invalid(
            field,
            "must be URL-safe (A-Z a-z 0-9 - _ . ~) and not a REST resource name",
        ));
    }
    Ok(())
}

/// Path segments of `/api/v1/...` that the REST API uses, so no token may take them.
const RESERVED_TOKENS: &[&str] = &[
    "workspaces",
    "fleets",
    "devices",
    "audit",
    "jobs",
    "fleet-jobs",
    "export",
    "retention",
    "store",
    "provision",
    "openapi.json",
    "ca.pem",
    "crl.pem",
];

impl CredentialService {
    pub fn new(
        store: Arc<dyn IdentityStore>,
        pki: Arc<Pki>,
        registry: Arc<Registry>,
        sessions: Arc<Sessions>,
        audit: Arc<AuditLog>,
        cfg: CredentialsConfig,
    ) -> Self {
        Self {
            store,
            pki,
            registry,
            sessions,
            audit,
            cfg,
        }
    }

    /// Builds a credential for `device` from a request, with the secrets to show once. Does
    /// not store it.
    pub fn prepare(
        &self,
        device: &Device,
        new: NewCredential,
    ) -> Result<(Credential, Option<String>, Option<CertBundle>)> {
        let now = now_ms();
        let validity = |d: Option<u32>| {
            let d = d.unwrap_or(self.cfg.device_cert_validity_days);
            if d == 0 || d > 36500 {
                Err(invalid("validity_days", "must be 1 to 36500"))
            } else {
                Ok(d)
            }
        };
        let (secret, token, bundle) = match new {
            NewCredential::AccessToken { token } => {
                let token = match token {
                    Some(t) => {
                        check_ident("token", &t)?;
                        t
                    }
                    None => new_token(),
                };
                let secret = CredentialSecret::AccessToken {
                    token_sha256: secret_hash(&token),
                    hint: token.chars().take(4).collect(),
                };
                (secret, Some(token), None)
            }
            NewCredential::MqttBasic {
                client_id,
                username,
                password,
            } => {
                let client_id = client_id.filter(|s| !s.is_empty());
                let username = username.filter(|s| !s.is_empty());
                if client_id.is_none() && username.is_none() {
                    return Err(invalid(
                        "client_id",
                        "MQTT basic credentials need a client id, a username or both",
                    ));
                }
                if let Some(c) = &client_id {
                    check_ident("client_id", c)?;
                }
                if let Some(u) = &username {
                    check_ident("username", u)?;
                }
                let password_hash = match password.filter(|p| !p.is_empty()) {
                    Some(p) if p.len() > 256 => {
                        return Err(invalid("password", "at most 256 characters"));
                    }
                    Some(p) => Some(hash_password(&p)?),
                    None => None,
                };
                let secret = CredentialSecret::MqttBasic {
                    client_id,
                    username,
                    password_hash,
                };
                (secret, None, None)
            }
            NewCredential::X509Certificate { certificate_pem } => {
                let der = pki::parse_cert_text(&certificate_pem)
                    .map_err(|e| invalid("certificate_pem", e.to_string()))?;
                let info = pki::describe_cert(&der, CertOrigin::Registered)
                    .map_err(|e| invalid("certificate_pem", e.to_string()))?;
                if info.not_after <= now {
                    return Err(invalid("certificate_pem", "the certificate has expired"));
                }
                (CredentialSecret::Certificate(info), None, None)
            }
            NewCredential::PublicKey { public_key_pem } => {
                let spki_sha256 = pki::spki_sha256_of_pem(&public_key_pem)
                    .map_err(|e| invalid("public_key_pem", e.to_string()))?;
                let secret = CredentialSecret::PublicKey {
                    spki_sha256,
                    public_key_pem,
                };
                (secret, None, None)
            }
            NewCredential::IssuedCertificate { validity_days } => {
                let (key, cert) = self
                    .pki
                    .issue_device_cert(&device.name, validity(validity_days)?)
                    .map_err(|e| internal(&e))?;
                let info = self.describe_pem(&cert, CertOrigin::Issued)?;
                let bundle = CertBundle {
                    private_key_pem: Some(key),
                    certificate_pem: cert,
                    ca_pem: self.pki.ca_pem().to_string(),
                };
                (CredentialSecret::Certificate(info), None, Some(bundle))
            }
            NewCredential::Csr {
                csr_pem,
                validity_days,
            } => {
                let cert = self
                    .pki
                    .sign_csr(&csr_pem, &device.name, validity(validity_days)?)
                    .map_err(|e| invalid("csr_pem", e.to_string()))?;
                let info = self.describe_pem(&cert, CertOrigin::Csr)?;
                let bundle = CertBundle {
                    private_key_pem: None,
                    certificate_pem: cert,
                    ca_pem: self.pki.ca_pem().to_string(),
                };
                (CredentialSecret::Certificate(info), None, Some(bundle))
            }
        };
        Ok((Credential::new(device.id, secret, now), token, bundle))
    }

    /// Creates a device with its first credential (a generated access token by default).
    pub async fn create_device(
        &self,
        new: super::registry::NewDevice,
    ) -> Result<(super::registry::DeviceView, IssuedCredential)> {
        let spec = new
            .credentials
            .clone()
            .unwrap_or(NewCredential::AccessToken { token: None });
        let mut shown = None;
        let fleet = self.registry.fleet(new.fleet_id).await?;
        let gateway = self
            .registry
            .gateway_role(
                fleet.workspace_id,
                &Default::default(),
                Some(new.gateway),
                new.gateway_type_fleets.clone(),
            )
            .await?;
        let draft = super::registry::DeviceDraft {
            fleet_id: new.fleet_id,
            name: &new.name,
            label: &new.label,
            provisioned: false,
            gateway,
        };
        let (dev, creds) = self
            .registry
            .create_device(
                draft,
                |d| {
                    let (c, t, b) = self.prepare(d, spec)?;
                    shown = Some((t, b));
                    Ok(vec![c])
                },
                |dev, creds| Some(admin_entry(AuditKind::CredentialIssued, dev, &creds[0])),
            )
            .await?;
        let cred = &creds[0];
        let (token, bundle) = shown.unwrap_or_default();
        let issued = IssuedCredential {
            credential: CredentialView::of(cred, now_ms()),
            token,
            bundle,
        };
        Ok((self.registry.view_of(dev), issued))
    }

    // ---- manufacturer CAs ---------------------------------------------------------------

    /// Registers a manufacturer CA on a fleet: devices with a certificate it signed join the
    /// fleet on first connect.
    pub async fn add_fleet_ca(
        &self,
        fleet: crate::model::FleetId,
        new: NewFleetCa,
    ) -> Result<crate::model::FleetCa> {
        use sha2::Digest as _;
        self.registry.fleet(fleet).await?;
        let der = pki::parse_cert_text(&new.certificate_pem)
            .map_err(|e| invalid("certificate_pem", e.to_string()))?;
        pki::check_ca_cert(&der).map_err(|e| invalid("certificate_pem", e.to_string()))?;
        let info = pki::describe_cert(&der, CertOrigin::Registered)
            .map_err(|e| invalid("certificate_pem", e.to_string()))?;
        if info.not_after <= now_ms() {
            return Err(invalid("certificate_pem", "the CA certificate has expired"));
        }
        let sha256 = pki::hex(&sha2::Sha256::digest(der.as_ref()));
        if self
            .store
            .fleet_cas(None)
            .await?
            .iter()
            .any(|c| c.sha256 == sha256)
        {
            return Err(Error::conflict("this CA is already registered on a fleet"));
        }
        let ca = crate::model::FleetCa {
            id: crate::model::FleetCaId::new(),
            fleet_id: fleet,
            name: new
                .name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| info.subject.clone()),
            subject: info.subject,
            sha256,
            not_after: info.not_after,
            certificate_pem: pki::pem_of(&der),
            created_at: now_ms(),
        };
        self.store.put_fleet_ca(&ca).await?;
        self.audit.record(
            Entry::new(AuditKind::ManufacturerCaAdded, crate::audit::operator())
                .fleet(fleet)
                .detail(format!("{} ({})", ca.name, ca.subject)),
        );
        self.store.commit().await?;
        self.refresh_trust().await?;
        Ok(ca)
    }

    pub async fn fleet_cas(
        &self,
        fleet: crate::model::FleetId,
    ) -> Result<Vec<crate::model::FleetCa>> {
        self.registry.fleet(fleet).await?;
        Ok(self.store.fleet_cas(Some(fleet)).await?)
    }

    pub async fn delete_fleet_ca(
        &self,
        fleet: crate::model::FleetId,
        id: crate::model::FleetCaId,
    ) -> Result<()> {
        if !self.store.delete_fleet_ca(fleet, id).await? {
            return Err(Error::NotFound("manufacturer CA"));
        }
        self.audit.record(
            Entry::new(AuditKind::ManufacturerCaRemoved, crate::audit::operator())
                .fleet(fleet)
                .detail(id.to_string()),
        );
        self.store.commit().await?;
        self.refresh_trust().await
    }

    fn describe_pem(&self, pem: &str, origin: CertOrigin) -> Result<CertificateInfo> {
        let der = pki::parse_cert_text(pem).map_err(|e| internal(&e))?;
        pki::describe_cert(&der, origin).map_err(|e| internal(&e))
    }

    /// Adds a credential to a device.
    pub async fn add(&self, device: DeviceId, new: NewCredential) -> Result<IssuedCredential> {
        let dev = self.registry.device_record(device).await?;
        let (cred, token, bundle) = self.prepare(&dev, new)?;
        self.store
            .add_credential(&cred)
            .await?
            .map_err(|CredentialClash| Error::Conflict(Conflict::CredentialTaken))?;
        self.audit_admin(AuditKind::CredentialIssued, &dev, &cred);
        self.store.commit().await?;
        Ok(IssuedCredential {
            credential: CredentialView::of(&cred, now_ms()),
            token,
            bundle,
        })
    }

    pub async fn list(&self, device: DeviceId) -> Result<Vec<CredentialView>> {
        self.registry.device_record(device).await?;
        let now = now_ms();
        Ok(self
            .store
            .credentials_of(device)
            .await?
            .iter()
            .map(|c| CredentialView::of(c, now))
            .collect())
    }

    async fn get(&self, device: DeviceId, id: CredentialId) -> Result<Credential> {
        self.store
            .get_credential(device, id)
            .await?
            .ok_or(Error::NotFound("credential"))
    }

    /// Replaces a credential with a new one of the same kind; the old one keeps working for
    /// the grace period, then stops (and its sessions are closed by the expiry sweep).
    pub async fn rotate(
        &self,
        device: DeviceId,
        id: CredentialId,
        req: RotateRequest,
    ) -> Result<IssuedCredential> {
        let dev = self.registry.device_record(device).await?;
        let mut old = self.get(device, id).await?;
        if old.revoked_at.is_some() {
            return Err(Error::conflict("a revoked credential cannot be rotated"));
        }
        let new = match &old.secret {
            CredentialSecret::AccessToken { .. } => NewCredential::AccessToken { token: None },
            CredentialSecret::Certificate(info) => match info.origin {
                CertOrigin::Issued => NewCredential::IssuedCertificate {
                    validity_days: None,
                },
                CertOrigin::Csr => NewCredential::Csr {
                    csr_pem: req.csr_pem.clone().ok_or_else(|| {
                        invalid(
                            "csr_pem",
                            "rotating a CSR-signed certificate needs a new CSR",
                        )
                    })?,
                    validity_days: None,
                },
                CertOrigin::Registered | CertOrigin::ManufacturerCa => {
                    NewCredential::X509Certificate {
                        certificate_pem: req.certificate_pem.clone().ok_or_else(|| {
                            invalid(
                                "certificate_pem",
                                "rotating a registered certificate needs the new certificate",
                            )
                        })?,
                    }
                }
            },
            CredentialSecret::MqttBasic { .. } | CredentialSecret::PublicKey { .. } => {
                return Err(Error::Unsupported(
                    "MQTT basic credentials and public keys are rotated by adding the new one \
                     and revoking the old one"
                        .into(),
                ));
            }
        };
        let (cred, token, bundle) = self.prepare(&dev, new)?;
        self.store
            .add_credential(&cred)
            .await?
            .map_err(|CredentialClash| Error::Conflict(Conflict::CredentialTaken))?;
        let grace = req.grace_secs.unwrap_or(self.cfg.rotation_grace_secs);
        let until =
            now_ms().saturating_add(i64::try_from(grace.saturating_mul(1000)).unwrap_or(i64::MAX));
        old.expires_at = Some(old.expires_at.map_or(until, |e| e.min(until)));
        self.store.update_credential(&old).await?;
        self.audit.record(
            Entry::new(AuditKind::CredentialRotated, crate::audit::operator())
                .device(dev.id)
                .fleet(dev.fleet_id)
                .credential(old.id)
                .detail(format!(
                    "replaced by {}; the old one works for {grace} s",
                    cred.id
                )),
        );
        self.store.commit().await?;
        if grace == 0 {
            self.sessions
                .close_credential(device, old.id, CloseReason::CredentialRevoked);
        }
        Ok(IssuedCredential {
            credential: CredentialView::of(&cred, now_ms()),
            token,
            bundle,
        })
    }

    /// Revokes a credential now: its sessions are closed, it can no longer log in, and a
    /// certificate from Corral's CA goes on the revocation list.
    pub async fn revoke(&self, device: DeviceId, id: CredentialId) -> Result<CredentialView> {
        let dev = self.registry.device_record(device).await?;
        let mut cred = self.get(device, id).await?;
        if cred.revoked_at.is_none() {
            cred.revoked_at = Some(now_ms());
            self.store.update_credential(&cred).await?;
            self.audit_admin(AuditKind::CredentialRevoked, &dev, &cred);
            self.store.commit().await?;
            if matches!(cred.secret, CredentialSecret::Certificate(_)) {
                self.refresh_trust().await?;
            }
        }
        self.sessions
            .close_credential(device, id, CloseReason::CredentialRevoked);
        Ok(CredentialView::of(&cred, now_ms()))
    }

    /// Records an operator's change to a device's credential.
    fn audit_admin(&self, kind: AuditKind, dev: &Device, cred: &Credential) {
        self.audit.record(admin_entry(kind, dev, cred));
    }

    /// Deletes a credential, freeing its token, identifiers or certificate for reuse.
    pub async fn delete(&self, device: DeviceId, id: CredentialId) -> Result<()> {
        let dev = self.registry.device_record(device).await?;
        let cred = self.get(device, id).await?;
        self.store.delete_credential(&cred).await?;
        self.audit_admin(AuditKind::CredentialDeleted, &dev, &cred);
        self.store.commit().await?;
        self.sessions
            .close_credential(device, id, CloseReason::CredentialRevoked);
        Ok(())
    }

    /// Rebuilds the device listener's trust: Corral's CA with its revocation list, and every
    /// fleet's manufacturer CAs. Called at start and after every change to either.
    pub async fn refresh_trust(&self) -> Result<()> {
        let revoked: Vec<(String, i64)> = self
            .store
            .scan_credentials(&|c| {
                c.revoked_at.is_some()
                    && matches!(&c.secret, CredentialSecret::Certificate(i)
                        if matches!(i.origin, CertOrigin::Issued | CertOrigin::Csr))
            })
            .await?
            .into_iter()
            .filter_map(|c| match c.secret {
                CredentialSecret::Certificate(i) => Some((i.serial, c.revoked_at.unwrap_or(0))),
                _ => None,
            })
            .collect();
        let roots = self
            .store
            .fleet_cas(None)
            .await?
            .iter()
            .filter_map(|ca| pki::parse_cert_text(&ca.certificate_pem).ok())
            .collect();
        self.pki
            .set_device_trust(&revoked, roots)
            .map_err(|e| internal(&e))
    }

    /// Closes the sessions whose credential has expired (end of a rotation's grace period) or
    /// was revoked by other means. Called periodically.
    pub async fn sweep_expired(&self) {
        let now = now_ms();
        for (device, cred) in self.sessions.credentials_in_use() {
            match self.store.get_credential(device, cred).await {
                Ok(Some(c)) if c.unusable(now).is_none() => {}
                Ok(_) => {
                    self.sessions
                        .close_credential(device, cred, CloseReason::CredentialRevoked);
                }
                Err(e) => tracing::warn!(error = %e, "credential sweep"),
            }
        }
    }

    // ---- login ------------------------------------------------------------------------

    /// Decides who a connecting client is. Refusals are audited with their reason.
    pub async fn login(&self, a: LoginAttempt<'_>) -> std::result::Result<Login, Refusal> {
        let res = self.login_inner(&a).await;
        if let Err(r) = &res {
            let mut e = Entry::new(AuditKind::AuthFailed, "device")
                .peer(a.peer)
                .detail(r.reason());
            if let Some(d) = self.refused_device(&a).await {
                e = e.device(d);
            }
            // Anyone can cause these (an unknown token costs nothing): rate-limited per address.
            self.audit.record_unauthenticated(e, a.peer.map(|p| p.ip()));
        }
        res
    }

    /// Checks that a credential could be given to a new device: valid (as `prepare` checks it)
    /// and not another device's. For an import's dry run; stores nothing.
    pub async fn check_new(&self, new: &NewCredential) -> Result<()> {
        if matches!(
            new,
            NewCredential::IssuedCertificate { .. } | NewCredential::Csr { .. }
        ) {
            return Ok(());
        }
        let now = now_ms();
        let placeholder = Device {
            id: DeviceId::new(),
            workspace_id: crate::model::WorkspaceId::new(),
            fleet_id: crate::model::FleetId::new(),
            name: "check".into(),
            label: String::new(),
            enabled: true,
            created_at: now,
            updated_at: now,
            last_connect_at: None,
            last_disconnect_at: None,
            last_activity_at: None,
            provisioned_at: None,
            gateway: Default::default(),
        };
        let (c, _, _) = self.prepare(&placeholder, new.clone())?;
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let taken = match &c.secret {
            CredentialSecret::AccessToken { token_sha256, .. } => {
                self.store
                    .find_credential(CredentialKey::TokenSha256(token_sha256))
                    .await?
            }
            CredentialSecret::MqttBasic {
                client_id,
                username,
                ..
            } => match (nonempty(client_id), nonempty(username)) {
                (Some(c), None) => {
                    self.store
                        .find_credential(CredentialKey::ClientId(&c))
                        .await?
                }
                (None, Some(u)) => {
                    self.store
                        .find_credential(CredentialKey::Username(&u))
                        .await?
                }
                (Some(c), Some(u)) => {
                    self.store
                        .find_credential(CredentialKey::ClientIdUsername(&c, &u))
                        .await?
                }
                (None, None) => None,
            },
            CredentialSecret::Certificate(info) => {
                self.store
                    .find_credential(CredentialKey::Fingerprint(&info.fingerprint))
                    .await?
            }
            CredentialSecret::PublicKey { spki_sha256, .. } => {
                self.store
                    .find_credential(CredentialKey::Spki(spki_sha256))
                    .await?
            }
        };
        if taken.is_some() {
            return Err(Error::Conflict(Conflict::CredentialTaken));
        }
        Ok(())
    }

    /// Whether `token` could be given to a new device: a valid access token that no device
    /// answers to yet.
    pub async fn check_new_token(&self, token: &str) -> Result<()> {
        check_ident("token", token)?;
        let h = secret_hash(token);
        if self
            .store
            .find_credential(CredentialKey::TokenSha256(&h))
            .await?
            .is_some()
        {
            return Err(Error::Conflict(Conflict::CredentialTaken));
        }
        Ok(())
    }

    /// The device a refused attempt was aimed at, when the presented identity names one (a
    /// revoked credential, a disabled device), so operators see it on the device's page.
    async fn refused_device(&self, a: &LoginAttempt<'_>) -> Option<DeviceId> {
        self.device_named_by(a.username).await
    }

    /// The device whose access token `username` is, if any (revoked included): a refused
    /// attempt is shown on that device's trace.
    pub async fn device_named_by(&self, username: Option<&str>) -> Option<DeviceId> {
        let token = username.filter(|u| !u.is_empty()).map(secret_hash)?;
        self.store
            .find_credential(CredentialKey::TokenSha256(&token))
            .await
            .ok()
            .flatten()
            .map(|c| c.device_id)
    }

    async fn login_inner(&self, a: &LoginAttempt<'_>) -> std::result::Result<Login, Refusal> {
        let store_err = |e: StoreError| {
            tracing::error!(error = %e, "credential lookup failed");
            Refusal::Unavailable
        };
        let username = a.username.filter(|u| !u.is_empty());
        if let Some(chain) = a.cert_chain.as_ref().filter(|c| !c.is_empty()) {
            match self.login_certificate(chain, a.peer).await? {
                Some(login) => return Ok(login),
                // An unknown certificate with a username: the device uses TLS client auth for
                // the transport and logs in with its token or basic credentials.
                None if username.is_some() => {}
                None => return Err(Refusal::NotAuthorized("unknown certificate")),
            }
        }
        if let Some(user) = username {
            // A username that is an access token wins (§2); the password is then ignored.
            let h = secret_hash(user);
            if let Some(c) = self
                .store
                .find_credential(CredentialKey::TokenSha256(&h))
                .await
                .map_err(store_err)?
            {
                return self.accept(c, "access_token", None).await;
            }
            let by_pair = if a.client_id.is_empty() {
                None
            } else {
                self.store
                    .find_credential(CredentialKey::ClientIdUsername(a.client_id, user))
                    .await
                    .map_err(store_err)?
            };
            let found = match by_pair {
                Some(c) => Some(c),
                None => self
                    .store
                    .find_credential(CredentialKey::Username(user))
                    .await
                    .map_err(store_err)?,
            };
            return match found {
                Some(c) => self.accept_basic(c, a.password).await,
                None if a.password.is_some() => Err(Refusal::NotAuthorized("unknown credentials")),
                None => Err(Refusal::BadUsernameOrPassword("unknown access token")),
            };
        }
        if !a.client_id.is_empty() {
            return match self
                .store
                .find_credential(CredentialKey::ClientId(a.client_id))
                .await
                .map_err(store_err)?
            {
                Some(c) => self.accept_basic(c, a.password).await,
                None => Err(Refusal::IdentifierRejected("unknown client id")),
            };
        }
        Err(Refusal::NotAuthorized("no credentials"))
    }

    async fn accept_basic(
        &self,
        c: Credential,
        password: Option<&[u8]>,
    ) -> std::result::Result<Login, Refusal> {
        if let CredentialSecret::MqttBasic {
            password_hash: Some(h),
            ..
        } = &c.secret
        {
            let Some(given) = password else {
                return Err(Refusal::BadUsernameOrPassword("password required"));
            };
            if !verify_password(h.clone(), given.to_vec()).await {
                return Err(Refusal::NotAuthorized("wrong password"));
            }
        }
        self.accept(c, "mqtt_basic", None).await
    }

    /// Checks the credential and its device are usable.
    async fn accept(
        &self,
        c: Credential,
        method: &'static str,
        cert_cn: Option<String>,
    ) -> std::result::Result<Login, Refusal> {
        if let Some(why) = c.unusable(now_ms()) {
            return Err(Refusal::NotAuthorized(why));
        }
        let device = match self.registry.find_device(c.device_id).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err(Refusal::NotAuthorized("device deleted")),
            Err(e) => {
                tracing::error!(error = %e, "device lookup failed");
                return Err(Refusal::Unavailable);
            }
        };
        if !device.enabled {
            return Err(Refusal::NotAuthorized("device disabled"));
        }
        Ok(Login {
            device,
            credential: c.id,
            method,
            cert_cn,
        })
    }

    /// Login by client certificate: a registered fingerprint, then a registered public key,
    /// then a manufacturer CA (which registers the device on its first connect). `Ok(None)`
    /// when the certificate is unknown.
    async fn login_certificate(
        &self,
        chain: &[CertificateDer<'static>],
        peer: Option<SocketAddr>,
    ) -> std::result::Result<Option<Login>, Refusal> {
        let leaf = &chain[0];
        let info = pki::describe_cert(leaf, CertOrigin::Registered)
            .map_err(|_| Refusal::NotAuthorized("unreadable certificate"))?;
        let cn = pki::common_name(leaf);
        let store_err = |e: StoreError| {
            tracing::error!(error = %e, "credential lookup failed");
            Refusal::Unavailable
        };
        // Corral's verifier has already refused revoked or expired certificates of known
        // issuers in the handshake; check again here for every certificate.
        if let Err(e) = self.pki.verifier().check_chain(chain) {
            tracing::debug!(error = %e, "client certificate refused");
            return Err(Refusal::NotAuthorized("certificate revoked or expired"));
        }
        let now = now_ms();
        if info.not_after <= now || info.not_before > now {
            return Err(Refusal::NotAuthorized(
                "certificate expired or not yet valid",
            ));
        }
        if let Some(c) = self
            .store
            .find_credential(CredentialKey::Fingerprint(&info.fingerprint))
            .await
            .map_err(store_err)?
        {
            return self.accept(c, "certificate", cn).await.map(Some);
        }
        if let Some(c) = self
            .store
            .find_credential(CredentialKey::Spki(&info.spki_sha256))
            .await
            .map_err(store_err)?
        {
            return self.accept(c, "public_key", cn).await.map(Some);
        }
        let cas = self.store.fleet_cas(None).await.map_err(store_err)?;
        let Some(ca) = cas.iter().find(|ca| {
            pki::parse_cert_text(&ca.certificate_pem).is_ok_and(|der| pki::chains_to(chain, &der))
        }) else {
            return Ok(None);
        };
        self.join_by_manufacturer_ca(ca, info, cn, peer)
            .await
            .map(Some)
    }

    /// Just-in-time registration: a certificate signed by a fleet's manufacturer CA creates
    /// its device in that fleet, named from the certificate.
    async fn join_by_manufacturer_ca(
        &self,
        ca: &crate::model::FleetCa,
        mut info: CertificateInfo,
        cn: Option<String>,
        peer: Option<SocketAddr>,
    ) -> std::result::Result<Login, Refusal> {
        info.origin = CertOrigin::ManufacturerCa;
        let base = cn
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("dev-{}", &info.fingerprint[..12]));
        let fp8 = info.fingerprint[..8].to_string();
        for name in [base.clone(), format!("{base}-{fp8}")] {
            let secret = CredentialSecret::Certificate(info.clone());
            let draft = super::registry::DeviceDraft {
                fleet_id: ca.fleet_id,
                name: &name,
                label: "",
                provisioned: false,
                gateway: Default::default(),
            };
            let joined = self
                .registry
                .create_device(
                    draft,
                    |d| Ok(vec![Credential::new(d.id, secret.clone(), now_ms())]),
                    |dev, creds| {
                        Some(
                            Entry::new(AuditKind::DeviceCreatedJit, "device")
                                .device(dev.id)
                                .fleet(ca.fleet_id)
                                .credential(creds[0].id)
                                .peer(peer)
                                .detail(format!(
                                    "joined with a certificate signed by manufacturer CA \"{}\" ({})",
                                    ca.name, info.subject
                                )),
                        )
                    },
                )
                .await;
            match joined {
                Ok((dev, creds)) => {
                    let id = creds[0].id;
                    return Ok(Login {
                        device: dev,
                        credential: id,
                        method: "certificate",
                        cert_cn: cn,
                    });
                }
                Err(Error::Conflict(Conflict::NameTaken { .. })) => continue,
                // Two connections of the same new device raced; the other one registered it.
                Err(Error::Conflict(Conflict::CredentialTaken)) => {
                    return match self
                        .store
                        .find_credential(CredentialKey::Fingerprint(&info.fingerprint))
                        .await
                    {
                        Ok(Some(c)) => self.accept(c, "certificate", cn).await,
                        _ => Err(Refusal::Unavailable),
                    };
                }
                Err(e) => {
                    tracing::error!(error = %e, "just-in-time registration failed");
                    return Err(Refusal::Unavailable);
                }
            }
        }
        Err(Refusal::NotAuthorized(
            "certificate name clashes with existing devices",
        ))
    }
}

/// The audit record of an operator's change to a device's credential.
fn admin_entry(kind: AuditKind, dev: &Device, cred: &Credential) -> Entry {
    Entry::new(kind, crate::audit::operator())
        .device(dev.id)
        .fleet(dev.fleet_id)
        .credential(cred.id)
        .detail(describe(cred))
}

/// A one-line description of a credential for the audit log: never a secret.
pub fn describe(c: &Credential) -> String {
    match &c.secret {
        CredentialSecret::AccessToken { hint, .. } => format!("access token {hint}…"),
        CredentialSecret::MqttBasic {
            client_id,
            username,
            ..
        } => format!(
            "MQTT basic client id {:?} username {:?}",
            client_id.as_deref().unwrap_or(""),
            username.as_deref().unwrap_or("")
        ),
        CredentialSecret::Certificate(i) => format!(
            "certificate ({:?}) serial {} subject {}",
            i.origin, i.serial, i.subject
        ),
        CredentialSecret::PublicKey { spki_sha256, .. } => {
            format!(
                "public key sha256 {}",
                &spki_sha256[..16.min(spki_sha256.len())]
            )
        }
    }
}
