//! Workspaces, fleets, manufacturer CAs and connection history as the API shows them, apart
//! from the stored records (`model::Workspace`, `model::Fleet`, `model::FleetCa`,
//! `model::ConnectionEvent`): a stored field can change with a store migration
//! alone, an API field without one. Today both spell every field alike (see the tests).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{
    ConnectionEvent, Fleet, FleetCa, FleetCaId, FleetId, Millis, Workspace, WorkspaceId,
};

/// A workspace groups the fleets and devices of one project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = Workspace)]
pub struct WorkspaceView {
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

impl From<&Workspace> for WorkspaceView {
    fn from(r: &Workspace) -> Self {
        Self {
            id: r.id,
            name: r.name.clone(),
            description: r.description.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            retention_days: r.retention_days,
        }
    }
}

impl From<Workspace> for WorkspaceView {
    fn from(r: Workspace) -> Self {
        Self::from(&r)
    }
}

/// A fleet is a group of similar devices inside a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = Fleet)]
pub struct FleetView {
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

impl From<&Fleet> for FleetView {
    fn from(r: &Fleet) -> Self {
        Self {
            id: r.id,
            workspace_id: r.workspace_id,
            name: r.name.clone(),
            description: r.description.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl From<Fleet> for FleetView {
    fn from(r: Fleet) -> Self {
        Self::from(&r)
    }
}

/// A manufacturer CA registered on a fleet: a device presenting a certificate it signed joins
/// the fleet on first connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = FleetCa)]
pub struct FleetCaView {
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

impl From<&FleetCa> for FleetCaView {
    fn from(r: &FleetCa) -> Self {
        Self {
            id: r.id,
            fleet_id: r.fleet_id,
            name: r.name.clone(),
            subject: r.subject.clone(),
            sha256: r.sha256.clone(),
            not_after: r.not_after,
            certificate_pem: r.certificate_pem.clone(),
            created_at: r.created_at,
        }
    }
}

/// One entry of a device's connection history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ConnectionEvent)]
pub struct ConnectionEventView {
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

impl From<&ConnectionEvent> for ConnectionEventView {
    fn from(r: &ConnectionEvent) -> Self {
        Self {
            at: r.at,
            event: r.event.clone(),
            transport: r.transport.clone(),
            peer: r.peer.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn views_match_the_records_today() {
        let ws = Workspace {
            id: WorkspaceId::new(),
            name: "plant".into(),
            description: "d".into(),
            created_at: 1,
            updated_at: 2,
            retention_days: Some(30),
        };
        assert_eq!(json!(ws), json!(WorkspaceView::from(&ws)));
        let ws = Workspace {
            retention_days: None,
            ..ws
        };
        assert_eq!(json!(ws), json!(WorkspaceView::from(&ws)));
        let f = Fleet {
            id: FleetId::new(),
            workspace_id: ws.id,
            name: "sensors".into(),
            description: String::new(),
            created_at: 1,
            updated_at: 2,
        };
        assert_eq!(json!(f), json!(FleetView::from(&f)));
        let ca = FleetCa {
            id: FleetCaId::new(),
            fleet_id: f.id,
            name: "maker".into(),
            subject: "CN=maker".into(),
            sha256: "ab".repeat(32),
            not_after: 3,
            certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
            created_at: 4,
        };
        assert_eq!(json!(ca), json!(FleetCaView::from(&ca)));
        for peer in [Some("127.0.0.1:5".to_string()), None] {
            let e = ConnectionEvent {
                at: 5,
                event: "connected".into(),
                transport: "mqtt-tls".into(),
                peer,
            };
            assert_eq!(json!(e), json!(ConnectionEventView::from(&e)));
        }
    }
}
