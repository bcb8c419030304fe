//! Domain types shared by every layer: newtype ids, registry records and telemetry values.
//! Plain data with serde; the rules that govern them live in the services.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Milliseconds since the Unix epoch, the time unit of the device protocol.
pub type Millis = i64;

/// Current wall-clock time in milliseconds.
pub fn now_ms() -> Millis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_millis() as i64
}

macro_rules! id_type {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered id (UUIDv7), so listing by id lists by creation.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                Uuid::from_slice(b).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(WorkspaceId, "Identifies a workspace.");
id_type!(FleetId, "Identifies a fleet.");
id_type!(DeviceId, "Identifies a device.");
id_type!(ApiKeyId, "Identifies an admin API key.");
id_type!(CredentialId, "Identifies one credential of a device.");
id_type!(
    FleetCaId,
    "Identifies a manufacturer CA registered on a fleet."
);
id_type!(AuditId, "Identifies an audit record; time-ordered.");
id_type!(ScheduleId, "Identifies a job schedule.");
id_type!(UserId, "Identifies a user.");
id_type!(
    FleetJobId,
    "Identifies a fleet job (a command rolled out to a fleet)."
);
id_type!(
    JobId,
    "Identifies a job (a command to a device); time-ordered."
);
id_type!(
    IntegrationId,
    "Identifies an integration (an outbound webhook)."
);
id_type!(PackageId, "Identifies a firmware or software package.");
id_type!(
    ConditionId,
    "Identifies a device condition (an alarm a device opened); time-ordered."
);

id_type!(DashboardId, "Identifies a dashboard.");

mod dashboard;
pub use dashboard::{ChartAgg, Dashboard, TimeWindow, Widget};

/// A workspace groups the fleets and devices of one project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: WorkspaceId,
    /// Unique on the server, regardless of case.
    pub name: String,
    pub description: String,
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// Time of the last change, ms since the epoch.
    pub updated_at: Millis,
    /// Telemetry older than this many days is deleted by the retention sweeper; `None` keeps
    /// it for `retention.default_days` (0: forever).
    #[serde(default)]
    pub retention_days: Option<u32>,
}

/// A fleet is a group of similar devices inside a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    pub id: FleetId,
    pub workspace_id: WorkspaceId,
    /// Unique within the workspace, regardless of case.
    pub name: String,
    pub description: String,
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// Time of the last change, ms since the epoch.
    pub updated_at: Millis,
}

/// How a fleet's provisioning key may be used (ThingsBoard's strategies, §5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionStrategy {
    /// Any new name creates a device; an existing name is refused.
    AllowCreateNewDevices,
    /// Only devices created beforehand, and not provisioned yet, may claim credentials.
    CheckPreProvisionedDevices,
}

/// A fleet's provisioning key and the argon2 hash of its secret. Kept apart from the fleet
/// record so that no fleet listing can carry the hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetProvisioning {
    pub fleet_id: FleetId,
    pub key: String,
    pub secret_hash: String,
    pub strategy: ProvisionStrategy,
    pub created_at: Millis,
}

/// What the API shows of a fleet's provisioning: never the secret or its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProvisioningView {
    pub fleet_id: FleetId,
    /// The provisioning key devices present (the secret is never shown again).
    pub key: String,
    pub strategy: ProvisionStrategy,
    /// When the key was set, ms since the epoch.
    pub created_at: Millis,
}

impl From<&FleetProvisioning> for ProvisioningView {
    fn from(p: &FleetProvisioning) -> Self {
        Self {
            fleet_id: p.fleet_id,
            key: p.key.clone(),
            strategy: p.strategy,
            created_at: p.created_at,
        }
    }
}

/// A manufacturer CA registered on a fleet: a device presenting a certificate it signed joins
/// the fleet on first connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetCa {
    pub id: FleetCaId,
    pub fleet_id: FleetId,
    /// The given name, or the certificate's subject.
    pub name: String,
    /// Subject of the CA certificate.
    pub subject: String,
    /// SHA-256 of the certificate's DER, hex.
    pub sha256: String,
    /// End of the CA certificate's validity, ms since the epoch.
    pub not_after: Millis,
    /// The CA certificate, PEM.
    pub certificate_pem: String,
    /// When it was registered, ms since the epoch.
    pub created_at: Millis,
}

/// The stored part of a device: identity and bookkeeping. Live status is added by the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub workspace_id: WorkspaceId,
    pub fleet_id: FleetId,
    pub name: String,
    pub label: String,
    /// A disabled device cannot connect.
    pub enabled: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub last_connect_at: Option<Millis>,
    pub last_disconnect_at: Option<Millis>,
    pub last_activity_at: Option<Millis>,
    /// When the device obtained credentials through fleet provisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_at: Option<Millis>,
    /// Its part in the ThingsBoard gateway API: none, a gateway, or a gateway's sub-device.
    #[serde(default, skip_serializing_if = "GatewayRole::is_none")]
    pub gateway: GatewayRole,
}

/// A device's part in the ThingsBoard gateway API (`v1/gateway/*`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum GatewayRole {
    /// An ordinary device.
    #[default]
    None,
    /// Speaks for sub-devices over `v1/gateway/*`; those it names first are created in its
    /// fleet, or in the fleet `type_fleets` gives for the `type` it names.
    Gateway {
        #[serde(default)]
        type_fleets: std::collections::BTreeMap<String, FleetId>,
    },
    /// Reached only through its gateway, which created it.
    SubDevice {
        gateway_id: DeviceId,
        /// The `type` the gateway named when it created the device (ThingsBoard's profile).
        device_type: String,
    },
}

impl GatewayRole {
    pub fn is_none(&self) -> bool {
        *self == GatewayRole::None
    }
    pub fn is_gateway(&self) -> bool {
        matches!(self, GatewayRole::Gateway { .. })
    }
    /// The gateway of a sub-device.
    pub fn gateway_of(&self) -> Option<DeviceId> {
        match self {
            GatewayRole::SubDevice { gateway_id, .. } => Some(*gateway_id),
            _ => None,
        }
    }
}

/// One way a device proves who it is. A device may hold several (during a rotation, or a token
/// beside a certificate); each is revoked on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    pub id: CredentialId,
    pub device_id: DeviceId,
    pub secret: CredentialSecret,
    pub created_at: Millis,
    /// Set by a rotation: the old credential keeps working until then.
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

impl Credential {
    pub fn new(device_id: DeviceId, secret: CredentialSecret, now: Millis) -> Self {
        Self {
            id: CredentialId::new(),
            device_id,
            secret,
            created_at: now,
            expires_at: None,
            revoked_at: None,
        }
    }

    /// Why this credential cannot be used at `now`, if it cannot.
    pub fn unusable(&self, now: Millis) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            return Some("credential revoked");
        }
        if self.expires_at.is_some_and(|t| t <= now) {
            return Some("credential expired");
        }
        if let CredentialSecret::Certificate(c) = &self.secret {
            if c.not_after <= now {
                return Some("certificate expired");
            }
            if c.not_before > now {
                return Some("certificate not yet valid");
            }
        }
        None
    }
}

/// The verifiable part of a credential. Secrets are kept only as hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CredentialSecret {
    /// The MQTT username (or HTTP path segment) is the token; its SHA-256 is kept.
    AccessToken {
        #[serde(with = "hex_bytes")]
        token_sha256: [u8; 32],
        /// First characters of the token, so operators can tell tokens apart.
        hint: String,
    },
    /// ThingsBoard's MQTT basic credentials: every field that is set must match (§2).
    MqttBasic {
        client_id: Option<String>,
        username: Option<String>,
        /// argon2 PHC string.
        password_hash: Option<String>,
    },
    /// An X.509 certificate: issued by Corral's CA, registered (a secure element's), or
    /// signed by a fleet's manufacturer CA and joined on first connect.
    Certificate(CertificateInfo),
    /// A bare public key (a secure element that exports no certificate): any certificate
    /// carrying this key identifies the device.
    PublicKey {
        /// SHA-256 of the SubjectPublicKeyInfo DER, hex.
        spki_sha256: String,
        public_key_pem: String,
    },
}

/// Where a device certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertOrigin {
    /// Key and certificate generated by Corral's CA.
    Issued,
    /// Signed by Corral's CA from the device's certificate signing request.
    Csr,
    /// An existing certificate registered by an operator or by provisioning.
    Registered,
    /// Signed by a fleet's manufacturer CA; registered on first connect.
    ManufacturerCa,
}

/// What is kept of a device certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificateInfo {
    pub origin: CertOrigin,
    /// ThingsBoard's X.509 identity: SHA3-256 hex of the base64 of the DER (§2).
    pub fingerprint: String,
    /// SHA-256 of the SubjectPublicKeyInfo DER, hex.
    pub spki_sha256: String,
    /// Serial number, hex.
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    /// Start of the certificate's validity, ms since the epoch.
    pub not_before: Millis,
    /// End of the certificate's validity, ms since the epoch.
    pub not_after: Millis,
    /// The certificate, PEM (never a private key).
    pub certificate_pem: String,
}

/// Declares `AuditKind` with each kind's stable name (its JSON form and its metric label).
macro_rules! audit_kinds {
    ($($(#[$doc:meta])* $v:ident = $s:literal,)*) => {
        /// What an audit record is about. The names are stable: API clients filter on them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum AuditKind {
            $($(#[$doc])* $v,)*
        }

        impl AuditKind {
            /// Every kind, for tests and documentation.
            pub const ALL: &[AuditKind] = &[$(Self::$v,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s,)*
                }
            }
        }
    };
}

audit_kinds! {
    /// A REST request with an unknown or wrong key or session.
    ApiAuthFailed = "api_auth_failed",
    /// A REST request that changed something succeeded.
    ApiChange = "api_change",
    /// A REST request was refused for the caller's role.
    ApiDenied = "api_denied",
    ApiKeyCreated = "api_key_created",
    ApiKeyDeleted = "api_key_deleted",
    /// A device was refused at connect (the detail says why).
    AuthFailed = "auth_failed",
    ClaimRequested = "claim_requested",
    CredentialDeleted = "credential_deleted",
    CredentialIssued = "credential_issued",
    CredentialRevoked = "credential_revoked",
    CredentialRotated = "credential_rotated",
    /// A device joined with a certificate of a fleet's manufacturer CA.
    DeviceCreatedJit = "device_created_jit",
    DeviceDeleted = "device_deleted",
    DeviceDisabled = "device_disabled",
    DeviceEnabled = "device_enabled",
    DeviceProvisioned = "device_provisioned",
    Login = "login",
    LoginFailed = "login_failed",
    LoginThrottled = "login_throttled",
    Logout = "logout",
    /// A gateway named a device it had not named before: it was created as its sub-device.
    SubDeviceCreated = "sub_device_created",
    ManufacturerCaAdded = "manufacturer_ca_added",
    ManufacturerCaRemoved = "manufacturer_ca_removed",
    CampaignApproved = "campaign_approved",
    CampaignCancelled = "campaign_cancelled",
    CampaignCreated = "campaign_created",
    /// Sent the install command of a download-only campaign.
    CampaignInstall = "campaign_install",
    CampaignPaused = "campaign_paused",
    CampaignResumed = "campaign_resumed",
    CampaignStarted = "campaign_started",
    /// Every running campaign paused at once.
    CampaignsStopped = "campaigns_stopped",
    PackageAssigned = "package_assigned",
    PackageDeleted = "package_deleted",
    /// A package's manifest was replaced by one signed offline.
    PackageManifestSet = "package_manifest_set",
    PackageUnassigned = "package_unassigned",
    PackageUploaded = "package_uploaded",
    ProvisionFailed = "provision_failed",
    ProvisioningKeyRemoved = "provisioning_key_removed",
    ProvisioningKeySet = "provisioning_key_set",
    /// A first-run setup link that is invalid, used or expired.
    SetupFailed = "setup_failed",
    UserCreated = "user_created",
    UserDeleted = "user_deleted",
    UserUpdated = "user_updated",
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod audit_kind_tests {
    use super::AuditKind;

    /// The JSON name, the OpenAPI enum value and `as_str` (metric labels, filters) agree.
    #[test]
    fn each_kind_has_one_name() {
        let schema =
            serde_json::to_value(<AuditKind as utoipa::PartialSchema>::schema()).expect("schema");
        let listed: Vec<&str> = schema["enum"]
            .as_array()
            .expect("enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(listed.len(), AuditKind::ALL.len());
        for k in AuditKind::ALL {
            let json = serde_json::to_value(k).expect("json");
            assert_eq!(json, k.as_str());
            assert!(
                listed.contains(&k.as_str()),
                "{k} in the schema: {listed:?}"
            );
            assert_eq!(serde_json::from_value::<AuditKind>(json).ok(), Some(*k));
        }
    }
}

/// One audit record: a credential or administrative event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: AuditId,
    /// When it happened, ms since the epoch.
    pub ts: Millis,
    pub kind: AuditKind,
    /// Who acted: a username (or `api-key:NAME` for the bootstrap key) for API changes and
    /// sign-ins, or e.g. `device`, `provisioning`, `setup`, `anonymous`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<FleetId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<CredentialId>,
    /// Remote address of the device or client, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Human-readable detail; never a secret.
    pub detail: String,
}

/// An API key. Only the SHA-256 of the secret is kept. A key belongs to a user and acts with
/// that user's rights; the bootstrap key (no user) has full rights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    /// SHA-256 of the key's secret, hex.
    #[serde(with = "hex_bytes")]
    #[schema(value_type = String)]
    pub key_sha256: [u8; 32],
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// The user whose rights the key acts with; absent for the bootstrap key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// When the key was last used, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Millis>,
}

/// What a user may do in a workspace. Each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything in scope.
    Viewer,
    /// Also operates devices: attributes, commands, credentials, schedules, creating devices.
    Operator,
    /// Also manages the workspace: fleets, provisioning, manufacturer CAs, deleting devices.
    Admin,
}

/// A role in one workspace, optionally limited to some of its fleets (a customer sees only
/// the fleets granted to them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub workspace_id: WorkspaceId,
    pub role: Role,
    /// Only these fleets of the workspace; absent: the whole workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleets: Option<Vec<FleetId>>,
}

/// A person who signs in to the UI (or uses API keys). `admin` users manage the whole server:
/// users, workspaces, integrations, retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub username: String,
    #[serde(default)]
    pub display_name: String,
    /// argon2id PHC string; never serialized to API responses (see `UserView`).
    pub password_hash: String,
    /// A disabled user cannot sign in, and their API keys are refused.
    pub enabled: bool,
    /// A server admin, who may do everything.
    pub admin: bool,
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// Time of the last change, ms since the epoch.
    pub updated_at: Millis,
    /// Last sign-in, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_login_at: Option<Millis>,
}

/// One entry of a device's connection history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionEvent {
    /// When it happened, ms since the epoch.
    pub at: Millis,
    /// `connected` or `disconnected`.
    pub event: String,
    /// The listener: `mqtt-tls` or `mqtt` (plain).
    pub transport: String,
    /// Remote address of the device, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// A signed-in browser session. Only the SHA-256 of the cookie value is the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserSession {
    pub user_id: UserId,
    pub csrf_token: String,
    pub created_at: Millis,
    pub last_seen_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Signed in over TLS: the session is accepted only over TLS, and one made over plain HTTP
    /// only over plain HTTP (a cookie sniffed on plain HTTP does not open the HTTPS side).
    #[serde(default)]
    pub tls: bool,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        s.serialize_str(&hex)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(serde::de::Error::custom("expected 64 hex digits"));
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

/// A telemetry or attribute value, typed as ThingsBoard's `JsonConverter` types it
/// (thingsboard-device-api.md §4): boolean, long, double, string, or JSON for nested values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(String),
    #[schema(value_type = Object)]
    Json(serde_json::Value),
}

/// The tag telemetry is stored under when a device does not name one.
pub const DEFAULT_TAG: &str = "default";

/// One stored telemetry point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Point {
    /// The point's time, ms since the epoch (the device's timestamp when it gave one).
    pub ts: Millis,
    pub value: Value,
}

/// Where a job stands (ThingsBoard's server-side RPC, §5.5, made persistent).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the device (offline, busy with an earlier job, or before a retry).
    Queued,
    /// Published to the device; no PUBACK yet.
    Sent,
    /// The device acknowledged it; a two-way job waits for the reply.
    Delivered,
    Succeeded,
    Failed,
    Expired,
    Cancelled,
}

impl JobState {
    /// The state's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Sent => "sent",
            JobState::Delivered => "delivered",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Expired => "expired",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Expired | JobState::Cancelled
        )
    }
}

/// One timestamped step of a job's life, as stored (the API's is `jobs::views::TransitionView`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTransition {
    pub state: JobState,
    /// When the job entered the state, ms since the epoch.
    pub at: Millis,
    /// Why, when there is more to say (a failure reason, who cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A command to one device, as stored (the API's is `jobs::views::JobView`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub device_id: DeviceId,
    /// The RPC method the device receives.
    pub method: String,
    /// The RPC params the device receives: any JSON value, `null` when none were given.
    pub params: serde_json::Value,
    /// Two-way jobs succeed when the device replies; one-way jobs when it acknowledges.
    pub two_way: bool,
    pub state: JobState,
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// When an undelivered job expires, ms since the epoch.
    pub expires_at: Millis,
    /// The request id on the device's RPC topic, from the latest send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_id: Option<u32>,
    /// Sends so far.
    pub attempts: u32,
    /// When a queued job may be sent again (after a failed attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Millis>,
    /// The device's reply to a two-way job: its JSON, or the text it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// A repeated create with the same key returns this job instead of queueing another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The fleet job this job is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_job_id: Option<FleetJobId>,
    /// Every state the job went through, oldest first.
    pub history: Vec<JobTransition>,
}

/// Where a fleet rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// Every device's job has finished.
    Completed,
    /// The failure threshold was reached: no more devices get the job.
    Aborted,
    Cancelled,
}

/// One command rolled out to every device of a fleet, as stored (the API's is
/// `jobs::views::RolloutView`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetJob {
    pub id: FleetJobId,
    pub fleet_id: FleetId,
    pub method: String,
    /// The command's parameters as given: any JSON value, `null` when none were given.
    pub params: serde_json::Value,
    /// Each device's job succeeds on its reply rather than on its acknowledgement.
    pub two_way: bool,
    /// Seconds each device's job may wait for delivery.
    pub ttl_secs: u64,
    /// Devices started per minute; 0 starts all at once.
    pub per_minute: u32,
    /// Abort when this share (percent) of finished jobs failed or expired...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_failure_pct: Option<u8>,
    /// ...once at least this many have finished.
    pub abort_min_sample: u32,
    pub state: RolloutState,
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// Devices of the fleet when the rollout started, in the order they get the job.
    pub devices: Vec<DeviceId>,
    /// Devices that have been given their job.
    pub launched: u32,
    /// A note on the rollout: why it was aborted or cancelled, or that no device matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The filter that chose `devices` among the fleet's, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TargetFilter>,
    /// Devices start only inside this window; outside it the rollout waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The schedule that started this rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<ScheduleId>,
    /// Pacing: when the current run of starts began (reset when a window closes), and how
    /// many devices had started by then. The rate applies from there, so a window that
    /// reopens does not release a burst for the time it was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paced_from: Option<Millis>,
    #[serde(default)]
    pub paced_base: u32,
    /// Makes a repeated create (by a client, or by a schedule's run repeated after a crash)
    /// return this rollout instead of starting another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Which devices of a fleet a fleet job (or schedule) targets; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetFilter {
    /// Devices that have sent telemetry under this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Devices whose label is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Attribute values the device must have, in any scope (a fleet's shared default counts).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
    /// The firmware the device reports (client attribute `current_fw_version`, as ThingsBoard
    /// OTA clients do) is this version...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    /// ...or is not this version (devices not yet updated, including silent ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version_not: Option<String>,
}

impl TargetFilter {
    pub fn is_empty(&self) -> bool {
        self == &TargetFilter::default()
    }
}

/// A recurring maintenance window in a time zone: `start`–`end` local time ("HH:MM"; an end
/// before the start crosses midnight) on the given days (every day when empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Local time the window opens, `HH:MM`.
    pub start: String,
    /// Local time the window closes, `HH:MM`.
    pub end: String,
    /// IANA time zone (default UTC).
    #[serde(default = "utc")]
    pub tz: String,
    /// Days the window opens on: `mon` … `sun`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
}

fn utc() -> String {
    "UTC".into()
}

/// When a schedule fires: once at a time, or on a cron expression in a time zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Once, at this time (ms since the epoch).
    At(Millis),
    /// Standard five-field cron (`min hour day-of-month month day-of-week`, 0 or 7 = Sunday,
    /// names allowed) or `@hourly`/`@daily`/`@weekly`/`@monthly`, in `tz` (default UTC).
    Cron {
        expr: String,
        #[serde(default = "utc")]
        tz: String,
    },
}

/// A job to create when a schedule fires: to one device, or to a fleet (with a filter and
/// rollout settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: ScheduleId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<FleetId>,
    pub method: String,
    /// The command's parameters as given: any JSON value, `null` when none were given.
    pub params: serde_json::Value,
    pub two_way: bool,
    /// Seconds each job may wait for delivery (the server default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Fleet schedules: devices started per minute (0 = all at once).
    #[serde(default)]
    pub per_minute: u32,
    /// Fleet schedules: abort the rollout when this share (percent) of finished jobs failed or
    /// expired...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_failure_pct: Option<u8>,
    /// ...once at least this many have finished (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_min_sample: Option<u32>,
    /// Fleet schedules: which devices of the fleet get the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TargetFilter>,
    pub trigger: Trigger,
    /// Runs happen only inside this window: a run due outside it waits for the window to
    /// open, and a fleet rollout starts devices only while it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// A disabled schedule does not fire.
    pub enabled: bool,
    /// Creation time, ms since the epoch.
    pub created_at: Millis,
    /// When it fires next (none: a one-shot that has run, or disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<Millis>,
    /// When it last fired, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<Millis>,
    /// What the last run created (a job or fleet job id), or why it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Times it has fired.
    pub runs: u32,
}

impl Job {
    /// Moves to `state`, recording when (and why).
    pub fn transition(&mut self, state: JobState, note: Option<String>) {
        self.state = state;
        self.history.push(JobTransition {
            state,
            at: now_ms(),
            note,
        });
    }
}

/// A secret kept in the store (an integration's signing secret or auth header value): it is
/// serialized to the store, but its `Debug` never shows it, so it cannot reach a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What an integration can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Data,
    Attributes,
    Conditions,
    Connectivity,
    JobResults,
    /// A device's update in an OTA campaign changed state.
    Ota,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Data => "data",
            EventKind::Attributes => "attributes",
            EventKind::Conditions => "conditions",
            EventKind::Connectivity => "connectivity",
            EventKind::JobResults => "job_results",
            EventKind::Ota => "ota",
        }
    }
}

/// What a 4xx answer (other than 408 and 429) does to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientErrorPolicy {
    /// Move the batch to the dead-letter store and go on with the next entries.
    #[default]
    DeadLetter,
    /// Retry it like a 5xx, holding up the queue until the receiver accepts it.
    Retry,
}

/// An integration: a webhook fed from its own durable queue. Its secrets are stored (they are
/// needed to sign and authenticate) but never leave the server: the API shows `IntegrationView`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Integration {
    pub id: IntegrationId,
    pub name: String,
    pub url: String,
    /// Filters; an empty list (or `None`) matches everything.
    pub workspace_id: Option<WorkspaceId>,
    pub fleet_ids: Vec<FleetId>,
    pub tags: Vec<String>,
    pub kinds: Vec<EventKind>,
    pub auth_header_name: Option<String>,
    pub auth_header_value: Option<Secret>,
    pub signing_secret: Secret,
    pub max_items: u32,
    pub max_wait_ms: u64,
    pub timeout_ms: u64,
    /// PEM of the CA(s) to trust instead of the system roots.
    pub ca_pem: Option<String>,
    pub on_client_error: ClientErrorPolicy,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub max_bytes: u64,
    pub max_age_secs: u64,
    pub dead_letter_max: u64,
    pub paused: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// How serious a condition is, most serious first (the order sorts and filters by it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Major,
    Minor,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "critical" => Severity::Critical,
            "major" => Severity::Major,
            "minor" => Severity::Minor,
            "warning" => Severity::Warning,
            "info" => Severity::Info,
            _ => return Err(format!("unknown severity {s:?}")),
        })
    }
}

/// A condition a device reported: open until the device (or an operator) closes it. At most
/// one condition of a name is open per device; opening it again updates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub id: ConditionId,
    pub device_id: DeviceId,
    /// The device's fleet and workspace. Stored as they were at opening; every read replaces
    /// them with the device's current ones, since a device may move to another fleet.
    pub fleet_id: FleetId,
    pub workspace_id: WorkspaceId,
    /// What is wrong, as the device names it (`overheat`, `battery_low`).
    pub name: String,
    pub severity: Severity,
    /// Open until the device or an operator closes it.
    pub open: bool,
    /// Details as the device last sent them.
    pub details: serde_json::Value,
    /// When it was opened (the device's time when it gave one).
    pub opened_at: Millis,
    /// Last change, ms since the epoch.
    pub updated_at: Millis,
    /// Opens and updates received while it was open, the first included.
    pub reports: u32,
    /// When it was closed, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Millis>,
    /// `device`, or the operator who closed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// When an operator acknowledged it, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<Millis>,
    /// The operator who acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
}

// ---- storage query and result shapes shared by services and the store ----------------

/// Whose attributes: a device's own (every scope), or a fleet's shared defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeOwner {
    Device(DeviceId),
    Fleet(FleetId),
}

/// Attribute scopes, ThingsBoard's three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Reported by the device.
    Client,
    /// Desired: set by operators, pushed to the device.
    Shared,
    /// Operator-only; the device never sees them.
    Server,
}

/// Where a listing goes on: handed out with a page, given back for the next one. Opaque to
/// clients and to the services alike: only the storage engine that made it reads it, so an
/// engine may page by whatever its order is (an id here, a time and an id elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// A cursor as a client gave it back (checked by the engine when used).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of a listing, in creation order.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts, when more may follow.
    pub next_cursor: Option<Cursor>,
}

/// A raw range query over one tag of one device.
#[derive(Debug, Clone)]
pub struct RawQuery {
    pub tag: String,
    /// Keys to read; `None` reads every key of the tag.
    pub keys: Option<Vec<String>>,
    /// Inclusive range.
    pub from: Millis,
    pub to: Millis,
    pub descending: bool,
    /// Total points in the page, across keys.
    pub limit: usize,
    /// Resume after this (key, ts), as returned in `RawPage::next`.
    pub after: Option<(String, Millis)>,
}

/// Points grouped by key, keys in name order.
#[derive(Debug, Clone, Default)]
pub struct RawPage {
    pub series: Vec<(String, Vec<Point>)>,
    pub next: Option<(String, Millis)>,
}

/// What a package updates: ThingsBoard's `OtaPackageType`. Its shared attributes and topics
/// use the prefix `fw` or `sw`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PackageKind {
    Firmware,
    Software,
}

impl PackageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firmware => "firmware",
            Self::Software => "software",
        }
    }

    /// The prefix of its shared attributes and MQTT topics (`fw_title`, `v2/fw/...`).
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Firmware => "fw",
            Self::Software => "sw",
        }
    }
}

/// A checksum algorithm ThingsBoard devices know (`ChecksumAlgorithm`), by its ThingsBoard
/// name, which is what the `fw_checksum_algorithm` attribute carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum ChecksumAlgorithm {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA256")]
    Sha256,
    #[serde(rename = "SHA384")]
    Sha384,
    #[serde(rename = "SHA512")]
    Sha512,
    #[serde(rename = "CRC32")]
    Crc32,
    #[serde(rename = "MURMUR3_32")]
    Murmur3_32,
    #[serde(rename = "MURMUR3_128")]
    Murmur3_128,
}

impl ChecksumAlgorithm {
    pub const ALL: &[ChecksumAlgorithm] = &[
        Self::Md5,
        Self::Sha256,
        Self::Sha384,
        Self::Sha512,
        Self::Crc32,
        Self::Murmur3_32,
        Self::Murmur3_128,
    ];

    /// The ThingsBoard name (`SHA256`, `MURMUR3_32`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
            Self::Crc32 => "CRC32",
            Self::Murmur3_32 => "MURMUR3_32",
            Self::Murmur3_128 => "MURMUR3_128",
        }
    }

    /// Reads a ThingsBoard name, in any case.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }
}

/// A stored firmware or software package: its metadata. The file itself lives in the data
/// directory under its SHA-256 (`packages/<sha256>`), so two packages with the same bytes share
/// one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub id: PackageId,
    pub kind: PackageKind,
    pub title: String,
    pub version: String,
    /// Only this fleet's devices may be given it; `None`: any fleet.
    pub fleet_id: Option<FleetId>,
    /// The file name devices and downloads see.
    pub file_name: String,
    pub content_type: String,
    /// Exact size in bytes (devices stop reading at this count).
    pub size: u64,
    /// SHA-256 of the file, lowercase hex: where the file is kept, and what a manifest signs.
    pub sha256: String,
    /// The checksum devices are told to verify (`fw_checksum_algorithm`, `fw_checksum`).
    pub checksum_algorithm: ChecksumAlgorithm,
    pub checksum: String,
    pub created_at: Millis,
    /// Who uploaded it (a username, or `api-key:NAME`).
    pub created_by: String,
    /// Its signed manifest (absent only on packages stored before manifests existed, until
    /// the next start signs them).
    #[serde(default)]
    pub manifest: Option<SignedManifest>,
}

/// A package's manifest and its ed25519 signature: what a device checks before it trusts an
/// image. `manifest` is canonical JSON (`title`, `version`, `type`, `size`, `sha256`,
/// `created`, `kid`, keys sorted, no spaces), signed as these exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// The manifest's JSON text, exactly as signed.
    #[schema(max_length = 4096)]
    pub manifest: String,
    /// The ed25519 signature of `manifest`'s bytes, standard base64.
    #[schema(max_length = 256)]
    pub signature: String,
}

id_type!(CampaignId, "Identifies an OTA campaign.");

/// Where an OTA campaign stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Created, not started (and, when it needs one, waiting for its approval).
    Draft,
    Running,
    /// Stopped by an operator, by the error threshold or by a success gate that was not met;
    /// devices already updating go on, no new device starts. Resume goes on.
    Paused,
    /// Every device has finished (updated, failed or timed out).
    Completed,
    /// Stopped for good by the error threshold (`on_failure: abort`).
    Aborted,
    Cancelled,
}

impl CampaignState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::Cancelled => "cancelled",
        }
    }

    /// Finished for good: nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Aborted | Self::Cancelled)
    }
}

/// One wave of a campaign: a number of devices, or a percentage of its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSize {
    /// This many devices (1 to 100000).
    Devices(u32),
    /// This percentage (1 to 100) of the campaign's targets, rounded up.
    Percent(u8),
}

// Written by hand: the derive cannot put bounds on a variant's value, and the document must
// state them (`{"devices": 1..100000}` or `{"percent": 1..100}`).
impl utoipa::PartialSchema for WaveSize {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        let one = |key: &str, max: f64, about: &str| {
            ObjectBuilder::new()
                .property(
                    key,
                    ObjectBuilder::new()
                        .schema_type(SchemaType::Type(Type::Integer))
                        .minimum(Some(1.0))
                        .maximum(Some(max)),
                )
                .required(key)
                .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::<
                    utoipa::openapi::schema::Schema,
                >::FreeForm(false)))
                .description(Some(about))
        };
        OneOfBuilder::new()
            .item(one("devices", 100_000.0, "This many devices."))
            .item(one(
                "percent",
                100.0,
                "This percentage of the campaign's targets, rounded up.",
            ))
            .description(Some(
                "One wave of a campaign: a number of devices, or a percentage of its targets.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for WaveSize {}

/// What the error threshold does when it is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop starting devices until an operator resumes.
    #[default]
    Pause,
    /// Stop for good (and start the rollback campaign, when one is asked for).
    Abort,
}

/// How devices install what they downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstallMode {
    /// Install right after the download (what ThingsBoard devices do).
    #[default]
    Immediate,
    /// Download and verify only: devices are also told `fw_download_only` = `true` (`sw_` for
    /// software), and install when an operator sends the install command, an RPC `fw_install`
    /// (`sw_install`) with the title and version.
    DownloadOnly,
}

/// A campaign's rules, as stored (every default resolved).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CampaignPolicy {
    /// The waves in order; devices left over after the last form one more wave.
    pub waves: Vec<WaveSize>,
    /// Devices started per minute (0: a whole wave at once).
    pub per_minute: u32,
    /// Exponential rate: the rate is multiplied by this factor (1 = constant)...
    pub rate_factor: f64,
    /// ...each time this many more devices have updated.
    pub rate_step: u32,
    /// The rate never goes above this (devices per minute).
    pub max_per_minute: u32,
    /// A wave passes its gate when this percentage of its devices have updated...
    pub success_pct: u8,
    /// ...and the next starts this long after that (the soak time).
    pub soak_secs: u64,
    /// The error threshold: the share of finished devices that failed or timed out...
    pub failure_pct: Option<u8>,
    /// ...counted once at least this many devices have finished...
    pub min_sample: u32,
    /// ...and what crossing it does.
    pub on_failure: OnFailure,
    /// How long a device may take to come online after its wave starts.
    pub start_timeout_secs: u64,
    /// How long a device may take from being told of the package to having downloaded it.
    pub download_timeout_secs: u64,
    /// How long from downloaded to reporting `UPDATED`.
    pub install_timeout_secs: u64,
    /// How long from reporting `UPDATED` to reporting the new version after a reconnect.
    pub confirm_timeout_secs: u64,
    /// Retries after a failure the device reported (checksum, install, a rollback)...
    pub retries_failed: u32,
    /// ...and after a timeout.
    pub retries_timed_out: u32,
    /// The first retry waits this long; each next one twice as long (at most an hour).
    pub retry_backoff_secs: u64,
    /// A device counts as updated only once it reports the target version from a session
    /// opened after it said `UPDATED` (it rebooted into it).
    pub require_reconnect: bool,
    pub install: InstallMode,
    /// Devices start only inside this window.
    pub window: Option<Window>,
    /// When the campaign completes, the package becomes its fleet's target (devices joining
    /// the fleet later get it).
    pub assign_fleet: bool,
    /// When the campaign aborts, a campaign back to this package starts for the devices it
    /// reached.
    pub rollback_package_id: Option<PackageId>,
}

/// An OTA campaign, as stored (its devices are `DeviceUpdate` records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: CampaignId,
    pub name: String,
    pub package_id: PackageId,
    pub kind: PackageKind,
    pub fleet_id: FleetId,
    pub filter: Option<TargetFilter>,
    /// Only these devices of the fleet (a rollback names the devices it undoes).
    pub device_ids: Option<Vec<DeviceId>>,
    pub policy: CampaignPolicy,
    pub state: CampaignState,
    /// Why it stands as it does (paused by whom or by what, aborted why).
    pub note: Option<String>,
    pub approval_required: bool,
    pub approved_by: Option<String>,
    pub approved_at: Option<Millis>,
    pub created_by: String,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// Devices the campaign targets, fixed when it starts.
    pub targets: u32,
    /// Cumulative device counts at the end of each wave, fixed when it starts.
    pub wave_ends: Vec<u32>,
    /// Waves started so far (a wave starts once, recorded before any of its devices starts).
    pub waves_started: u32,
    /// When the current wave started, and when it passed its success gate.
    pub wave_started_at: Option<Millis>,
    pub gate_met_at: Option<Millis>,
    /// The campaign this one rolls back, if it is a rollback.
    pub rollback_of: Option<CampaignId>,
    /// When the install command of a download-only campaign was sent.
    pub install_requested_at: Option<Millis>,
    /// When an operator last resumed it: the error threshold counts devices finished since.
    #[serde(default)]
    pub resumed_at: Option<Millis>,
}

/// Where one device stands in a campaign. The device states are ThingsBoard's
/// (`fw_state`), with the server's own around them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OtaState {
    /// Its wave has not started.
    Pending,
    /// Its wave started; it has not been told yet (offline, outside the window, the rate, or
    /// waiting for a retry).
    Queued,
    /// Told of the package (its shared attributes set).
    Initiated,
    Downloading,
    Downloaded,
    Verified,
    Updating,
    /// Runs the target version: it said so from a session opened after it updated.
    Updated,
    Failed,
    TimedOut,
    /// The campaign stopped before the device started.
    Cancelled,
}

impl OtaState {
    pub const ALL: &[OtaState] = &[
        Self::Pending,
        Self::Queued,
        Self::Initiated,
        Self::Downloading,
        Self::Downloaded,
        Self::Verified,
        Self::Updating,
        Self::Updated,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Initiated => "initiated",
            Self::Downloading => "downloading",
            Self::Downloaded => "downloaded",
            Self::Verified => "verified",
            Self::Updating => "updating",
            Self::Updated => "updated",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    /// Nothing more happens to the device in this campaign.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Updated | Self::Failed | Self::TimedOut | Self::Cancelled
        )
    }

    /// The device has been told of the package and has not finished.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            Self::Initiated
                | Self::Downloading
                | Self::Downloaded
                | Self::Verified
                | Self::Updating
        )
    }
}

/// One step of a device's OTA timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OtaTransition {
    pub at: Millis,
    pub state: OtaState,
    /// What moved it: the device's report, a deadline, a retry, an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One device in one campaign: its state, deadline, retries and timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceUpdate {
    pub campaign_id: CampaignId,
    pub device_id: DeviceId,
    /// Its wave, from 0.
    pub wave: u32,
    pub state: OtaState,
    /// Times it was told of the package (1 + retries).
    pub attempts: u32,
    /// When the current state times out.
    pub deadline: Option<Millis>,
    /// When a queued retry may start.
    pub retry_at: Option<Millis>,
    /// When it said `UPDATED` (with the target version).
    pub claimed_at: Option<Millis>,
    /// When it last opened a session.
    pub connected_at: Option<Millis>,
    /// The version it last reported (`current_fw_version`).
    pub reported_version: Option<String>,
    /// Why it failed or timed out (`fw_error`, or the server's reason).
    pub error: Option<String>,
    pub timeline: Vec<OtaTransition>,
}
