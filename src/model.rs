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

/// A workspace groups the fleets and devices of one project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    pub description: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A fleet is a group of similar devices inside a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Fleet {
    pub id: FleetId,
    pub workspace_id: WorkspaceId,
    pub name: String,
    pub description: String,
    pub created_at: Millis,
    pub updated_at: Millis,
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
}

/// A device access token credential. Only the SHA-256 of the token is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessToken {
    pub device_id: DeviceId,
    pub token_sha256: [u8; 32],
    /// First characters of the token, so operators can tell tokens apart.
    pub hint: String,
    pub created_at: Millis,
}

/// An admin API key. Only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    #[serde(with = "hex_bytes")]
    #[schema(value_type = String)]
    pub key_sha256: [u8; 32],
    pub created_at: Millis,
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
    pub ts: Millis,
    pub value: Value,
}
