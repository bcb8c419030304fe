//! Workspaces and fleets as the API shows them, apart from the stored records
//! (`model::Workspace`, `model::Fleet`): a stored field can change with a store migration
//! alone, an API field without one. Today both spell every field alike (see the tests).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{Fleet, FleetId, Millis, Workspace, WorkspaceId};

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
    }
}
