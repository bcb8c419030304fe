//! Fleet provisioning (self-registration): a fleet's provisioning key and secret, and
//! ThingsBoard's provisioning request and response (thingsboard-device-api.md §5.9), shared by
//! the MQTT `/provision/request` topic and `POST /api/v1/provision`. Responses keep
//! ThingsBoard's exact shape, `errorMsg` included on failure: the SDK waits 60 s without it.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use utoipa::ToSchema;

use super::credentials::{
    CredentialService, NewCredential, PROVISION_USERNAME, describe, hash_password, random_alnum,
    verify_password,
};
use super::registry::Registry;
use crate::audit::{AuditLog, Entry};
use crate::error::{Conflict, Error};
use crate::model::{
    AuditKind, FleetId, FleetProvisioning, ProvisionStrategy, ProvisioningView, now_ms,
};
use crate::store::ports::{IdentityStore, NameClash};

type Result<T> = std::result::Result<T, Error>;

/// Provisioning settings of a fleet. A missing key or secret is generated.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningSettings {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    pub strategy: ProvisionStrategy,
}

/// The provisioning key and secret; the secret is shown only in this response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProvisioningSecret {
    pub fleet_id: FleetId,
    pub key: String,
    pub secret: String,
    pub strategy: ProvisionStrategy,
}

/// ThingsBoard's provisioning request (§5.9).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProvisionRequest {
    provision_device_key: Option<String>,
    provision_device_secret: Option<String>,
    device_name: Option<String>,
    credentials_type: Option<String>,
    token: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    hash: Option<String>,
}

/// Builds `credentialsValue` of a success response from the generated token, if any.
type Echo = Box<dyn Fn(Option<&str>) -> Json + Send>;

const NOT_FOUND_MSG: &str = "Provision data was not found!";
const FAILURE_MSG: &str = "Failed to provision device!";

fn not_found() -> Json {
    json!({"status": "NOT_FOUND", "errorMsg": NOT_FOUND_MSG})
}

/// The audit record of a device that obtained its credential through provisioning.
fn provisioned_entry(
    dev: &crate::model::Device,
    cred: &crate::model::Credential,
    peer: Option<SocketAddr>,
) -> Entry {
    Entry::new(AuditKind::DeviceProvisioned, "provisioning")
        .device(dev.id)
        .fleet(dev.fleet_id)
        .credential(cred.id)
        .peer(peer)
        .detail(describe(cred))
}

fn failure(msg: &str) -> Json {
    json!({"status": "FAILURE", "errorMsg": msg})
}

pub struct ProvisioningService {
    store: Arc<dyn IdentityStore>,
    registry: Arc<Registry>,
    credentials: Arc<CredentialService>,
    audit: Arc<AuditLog>,
}

impl ProvisioningService {
    pub fn new(
        store: Arc<dyn IdentityStore>,
        registry: Arc<Registry>,
        credentials: Arc<CredentialService>,
        audit: Arc<AuditLog>,
    ) -> Self {
        Self {
            store,
            registry,
            credentials,
            audit,
        }
    }

    /// Sets (or replaces) a fleet's provisioning key and secret.
    pub async fn set(&self, fleet: FleetId, s: ProvisioningSettings) -> Result<ProvisioningSecret> {
        self.registry.fleet(fleet).await?;
        let key = s.key.unwrap_or_else(|| random_alnum(20));
        let secret = s.secret.unwrap_or_else(|| random_alnum(20));
        for (field, v) in [("key", &key), ("secret", &secret)] {
            if v.len() < 8 || v.len() > 256 || v.chars().any(char::is_control) {
                return Err(Error::Invalid {
                    field,
                    message: "must be 8 to 256 characters without control characters".into(),
                });
            }
        }
        let old = self.store.provisioning_of(fleet).await?;
        let p = FleetProvisioning {
            fleet_id: fleet,
            key: key.clone(),
            secret_hash: hash_password(&secret)?,
            strategy: s.strategy,
            created_at: now_ms(),
        };
        self.store
            .put_provisioning(&p, old.as_ref().map(|o| o.key.as_str()))
            .await?
            .map_err(|NameClash| Error::conflict("another fleet uses this provisioning key"))?;
        self.audit.record(
            Entry::new(AuditKind::ProvisioningKeySet, crate::audit::operator())
                .fleet(fleet)
                .detail(format!("strategy {:?}", s.strategy)),
        );
        self.store.commit().await?;
        Ok(ProvisioningSecret {
            fleet_id: fleet,
            key,
            secret,
            strategy: s.strategy,
        })
    }

    pub async fn get(&self, fleet: FleetId) -> Result<ProvisioningView> {
        self.registry.fleet(fleet).await?;
        self.store
            .provisioning_of(fleet)
            .await?
            .map(|p| ProvisioningView::from(&p))
            .ok_or(Error::NotFound("provisioning key"))
    }

    pub async fn delete(&self, fleet: FleetId) -> Result<()> {
        self.registry.fleet(fleet).await?;
        if self.store.provisioning_of(fleet).await?.is_none() {
            return Err(Error::NotFound("provisioning key"));
        }
        self.store.delete_provisioning(fleet).await?;
        self.audit.record(
            Entry::new(AuditKind::ProvisioningKeyRemoved, crate::audit::operator()).fleet(fleet),
        );
        self.store.commit().await?;
        Ok(())
    }

    /// Handles one provisioning request and returns ThingsBoard's response JSON. Never fails:
    /// every problem is a `NOT_FOUND` or `FAILURE` response with `errorMsg`.
    pub async fn provision(&self, payload: &[u8], peer: Option<SocketAddr>) -> Json {
        let req: ProvisionRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(_) => return failure("Provision request is not a valid JSON object!"),
        };
        let res = self.provision_inner(req, peer).await;
        if let Some(status) = res.get("status").and_then(Json::as_str)
            && status != "SUCCESS"
        {
            // Anyone can send a wrong key: rate-limited per address.
            self.audit.record_unauthenticated(
                Entry::new(AuditKind::ProvisionFailed, "provisioning")
                    .peer(peer)
                    .detail(
                        res.get("errorMsg")
                            .and_then(Json::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ),
                peer.map(|p| p.ip()),
            );
        }
        res
    }

    async fn provision_inner(&self, req: ProvisionRequest, peer: Option<SocketAddr>) -> Json {
        let (Some(key), Some(secret)) = (
            req.provision_device_key.as_deref(),
            req.provision_device_secret.as_deref(),
        ) else {
            return not_found();
        };
        let p = match self.store.provisioning_by_key(key).await {
            Ok(Some(p)) => p,
            Ok(None) => return not_found(),
            Err(e) => {
                tracing::error!(error = %e, "provisioning lookup failed");
                return failure(FAILURE_MSG);
            }
        };
        if !verify_password(p.secret_hash.clone(), secret.as_bytes().to_vec()).await {
            return not_found();
        }
        // The credential asked for, and what the response echoes back (§5.9).
        let (spec, echo): (NewCredential, Echo) = match req.credentials_type.as_deref() {
            None | Some("ACCESS_TOKEN") => (
                NewCredential::AccessToken {
                    token: req.token.clone().filter(|t| !t.is_empty()),
                },
                Box::new(|t| json!(t.unwrap_or_default())),
            ),
            Some("MQTT_BASIC") => {
                let (c, u, pw) = (
                    req.client_id.clone(),
                    req.username.clone(),
                    req.password.clone(),
                );
                if c.is_none() && u.is_none() {
                    return failure(FAILURE_MSG);
                }
                let echo = json!({"clientId": c, "userName": u, "password": pw});
                (
                    NewCredential::MqttBasic {
                        client_id: c,
                        username: u,
                        password: pw,
                    },
                    Box::new(move |_| echo.clone()),
                )
            }
            Some("X509_CERTIFICATE") => {
                let Some(body) = req.hash.clone() else {
                    return failure(FAILURE_MSG);
                };
                let echo = json!(body.clone());
                (
                    NewCredential::X509Certificate {
                        certificate_pem: body,
                    },
                    Box::new(move |_| echo.clone()),
                )
            }
            Some(_) => return failure("Unsupported credentials type!"),
        };
        let ctype = req
            .credentials_type
            .clone()
            .unwrap_or_else(|| "ACCESS_TOKEN".into());
        let name = req
            .device_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| random_alnum(20));
        if name == PROVISION_USERNAME {
            return failure(FAILURE_MSG);
        }
        let result = match p.strategy {
            ProvisionStrategy::AllowCreateNewDevices => {
                let mut token = None;
                let draft = super::registry::DeviceDraft {
                    fleet_id: p.fleet_id,
                    name: &name,
                    label: "",
                    provisioned: true,
                    gateway: Default::default(),
                };
                self.registry
                    .create_device(
                        draft,
                        |d| {
                            let (c, t, _) = self.credentials.prepare(d, spec)?;
                            token = t;
                            Ok(vec![c])
                        },
                        |d, creds| Some(provisioned_entry(d, &creds[0], peer)),
                    )
                    .await
                    .map(|(d, c)| (d, c.into_iter().next(), token))
            }
            ProvisionStrategy::CheckPreProvisionedDevices => {
                self.claim_pre_provisioned(&p, &name, spec, peer).await
            }
        };
        match result {
            Ok((_, Some(_), token)) => {
                json!({
                    "status": "SUCCESS",
                    "credentialsType": ctype,
                    "credentialsValue": echo(token.as_deref()),
                })
            }
            Ok((_, None, _)) => failure(FAILURE_MSG),
            Err(e) => {
                tracing::info!(error = %e, device = %name, "provisioning refused");
                failure(FAILURE_MSG)
            }
        }
    }

    /// CHECK_PRE_PROVISIONED_DEVICES: the device must exist in the fleet and not have been
    /// provisioned before; it receives the new credential.
    async fn claim_pre_provisioned(
        &self,
        p: &FleetProvisioning,
        name: &str,
        spec: NewCredential,
        peer: Option<SocketAddr>,
    ) -> Result<(
        crate::model::Device,
        Option<crate::model::Credential>,
        Option<String>,
    )> {
        let fleet = self.registry.fleet(p.fleet_id).await?;
        let dev = self
            .registry
            .device_by_name(fleet.workspace_id, name)
            .await?
            .filter(|d| d.fleet_id == p.fleet_id && d.provisioned_at.is_none())
            .ok_or(Error::NotFound("pre-provisioned device"))?;
        let (cred, token, _) = self.credentials.prepare(&dev, spec)?;
        self.store
            .add_credential(&cred)
            .await?
            .map_err(|_| Error::Conflict(Conflict::CredentialTaken))?;
        let now = now_ms();
        self.registry.mark_provisioned(dev.id, now).await?;
        self.audit.record(provisioned_entry(&dev, &cred, peer));
        // One commit makes the credential, the mark and the audit entry durable together.
        self.store.commit().await?;
        Ok((dev, Some(cred), token))
    }
}
