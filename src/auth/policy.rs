//! Who may do what: a `Principal` (a signed-in user, a user's API key, or the bootstrap key)
//! and its role on a workspace or fleet. Server admins (and the bootstrap key) may do
//! everything; other users hold per-workspace grants (viewer < operator < admin), optionally
//! limited to some fleets, and see nothing outside them.

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::{ApiKey, FleetId, Grant, Role, User, UserId, WorkspaceId};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: Option<UserId>,
    /// For the audit log: the username, or `api-key:NAME` for the bootstrap key.
    pub name: String,
    pub admin: bool,
    pub grants: Vec<Grant>,
    /// Browser sessions: the session's key and CSRF token (API keys need no CSRF token).
    pub session: Option<([u8; 32], String)>,
}

/// A user as the API shows them (never the password hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub enabled: bool,
    pub admin: bool,
    pub grants: Vec<Grant>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_login_at: Option<i64>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            enabled: u.enabled,
            admin: u.admin,
            grants: u.grants.clone(),
            created_at: u.created_at,
            last_login_at: u.last_login_at,
        }
    }
}

impl Principal {
    pub fn user(u: &User, session: Option<([u8; 32], String)>) -> Self {
        Self {
            user_id: Some(u.id),
            name: u.username.clone(),
            admin: u.admin,
            grants: u.grants.clone(),
            session,
        }
    }

    /// The bootstrap key (a key of no user): full rights.
    pub fn key_admin(k: &ApiKey) -> Self {
        Self {
            user_id: None,
            name: format!("api-key:{}", k.name),
            admin: true,
            grants: Vec::new(),
            session: None,
        }
    }

    /// The caller's role on a fleet of a workspace, if any.
    pub fn role_on_fleet(&self, ws: WorkspaceId, fleet: FleetId) -> Option<Role> {
        if self.admin {
            return Some(Role::Admin);
        }
        self.grants
            .iter()
            .filter(|g| g.workspace_id == ws)
            .filter(|g| g.fleets.as_ref().is_none_or(|f| f.contains(&fleet)))
            .map(|g| g.role)
            .max()
    }

    /// The caller's role on a workspace as a whole (its settings, every fleet). A grant
    /// limited to some fleets gives none.
    pub fn role_on_workspace(&self, ws: WorkspaceId) -> Option<Role> {
        if self.admin {
            return Some(Role::Admin);
        }
        self.grants
            .iter()
            .filter(|g| g.workspace_id == ws && g.fleets.is_none())
            .map(|g| g.role)
            .max()
    }

    /// Whether the caller sees the workspace at all (any grant in it, even fleet-limited).
    pub fn sees_workspace(&self, ws: WorkspaceId) -> bool {
        self.admin || self.grants.iter().any(|g| g.workspace_id == ws)
    }

    /// Whether the caller sees a fleet (and its devices).
    pub fn sees_fleet(&self, ws: WorkspaceId, fleet: FleetId) -> bool {
        self.role_on_fleet(ws, fleet).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(grants: Vec<Grant>) -> Principal {
        Principal {
            user_id: None,
            name: "u".into(),
            admin: false,
            grants,
            session: None,
        }
    }

    #[test]
    fn roles_by_workspace_and_fleet() {
        let (w1, w2) = (WorkspaceId::new(), WorkspaceId::new());
        let (f1, f2) = (FleetId::new(), FleetId::new());
        let op = p(vec![Grant {
            workspace_id: w1,
            role: Role::Operator,
            fleets: None,
        }]);
        assert_eq!(op.role_on_fleet(w1, f1), Some(Role::Operator));
        assert_eq!(op.role_on_workspace(w1), Some(Role::Operator));
        assert_eq!(op.role_on_fleet(w2, f1), None);
        assert!(!op.sees_workspace(w2));
        // A customer: viewer of one fleet only, plus operator in another workspace.
        let customer = p(vec![
            Grant {
                workspace_id: w1,
                role: Role::Viewer,
                fleets: Some(vec![f1]),
            },
            Grant {
                workspace_id: w2,
                role: Role::Operator,
                fleets: None,
            },
        ]);
        assert_eq!(customer.role_on_fleet(w1, f1), Some(Role::Viewer));
        assert_eq!(customer.role_on_fleet(w1, f2), None);
        assert_eq!(customer.role_on_workspace(w1), None);
        assert!(customer.sees_workspace(w1));
        assert_eq!(customer.role_on_fleet(w2, f2), Some(Role::Operator));
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
