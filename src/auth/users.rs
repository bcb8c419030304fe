//! User management: create, update (password, enabled, roles), delete; API keys per user for
//! the CLI and automation. Passwords are argon2id; disabling a user, changing their password
//! or deleting them ends their sessions at once.

use serde::Deserialize;
use utoipa::ToSchema;

use super::policy::UserView;
use super::{AuthService, new_api_key};
use crate::audit::Entry;
use crate::error::{Conflict, Error};
use crate::model::{ApiKey, ApiKeyId, AuditKind, Grant, User, UserId, now_ms};
use crate::secrets::secret_hash;

pub use crate::secrets::verify_password;

/// argon2id PHC string of a password.
pub fn hash_password(p: &str) -> Result<String, Error> {
    crate::secrets::hash_password(p).map_err(|e| Error::Internal(e.to_string()))
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1 to 64 ASCII letters, digits or `. _ - @` (surrounding whitespace is trimmed).
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9._@-]{1,64}[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub username: String,
    /// 10 to 1024 characters.
    #[schema(min_length = 10, max_length = 1024)]
    pub password: String,
    #[serde(default)]
    pub display_name: String,
    /// Manages the whole server (users, workspaces, integrations).
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub display_name: Option<String>,
    /// 10 to 1024 characters.
    #[schema(min_length = 10, max_length = 1024)]
    pub password: Option<String>,
    pub enabled: Option<bool>,
    pub admin: Option<bool>,
    pub grants: Option<Vec<Grant>>,
}

/// A new API key: the secret is shown once.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub name: String,
    pub secret: String,
}

/// An API key as listed (no secret, no hash).
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    pub name: String,
    pub created_at: i64,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

fn check_username(u: &str) -> Result<String, Error> {
    let u = u.trim();
    if u.is_empty()
        || u.len() > 64
        || !u
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(invalid(
            "username",
            "must be 1 to 64 letters, digits or . _ - @",
        ));
    }
    Ok(u.to_string())
}

fn check_password(p: &str) -> Result<(), Error> {
    if !(10..=1024).contains(&p.chars().count()) {
        return Err(invalid("password", "must be 10 to 1024 characters"));
    }
    Ok(())
}

impl AuthService {
    async fn check_grants(&self, grants: &[Grant]) -> Result<(), Error> {
        for g in grants {
            let ws = self
                .registry
                .get_workspace(g.workspace_id)
                .await?
                .ok_or_else(|| invalid("grants", format!("no workspace {}", g.workspace_id)))?;
            for f in g.fleets.iter().flatten() {
                if self
                    .registry
                    .get_fleet(*f)
                    .await?
                    .is_none_or(|fl| fl.workspace_id != ws.id)
                {
                    return Err(invalid(
                        "grants",
                        format!("no fleet {f} in workspace {}", ws.id),
                    ));
                }
            }
        }
        Ok(())
    }

    pub async fn create_user(&self, new: NewUser, actor: &str) -> Result<UserView, Error> {
        let username = check_username(&new.username)?;
        check_password(&new.password)?;
        self.check_grants(&new.grants).await?;
        let password = new.password;
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let now = now_ms();
        let user = User {
            id: UserId::new(),
            username: username.clone(),
            display_name: new.display_name.trim().chars().take(128).collect(),
            password_hash: hash,
            enabled: true,
            admin: new.admin,
            grants: new.grants,
            created_at: now,
            updated_at: now,
            last_login_at: None,
        };
        self.store.put_user(&user, None).await?.map_err(|_| {
            Error::Conflict(Conflict::NameTaken {
                kind: "user",
                name: username.clone(),
            })
        })?;
        self.audit
            .record(Entry::new(AuditKind::UserCreated, actor).detail(format!(
                "user {username}{}",
                if user.admin { " (server admin)" } else { "" }
            )));
        self.store.commit().await?;
        Ok(UserView::from(&user))
    }

    pub async fn user(&self, id: UserId) -> Result<User, Error> {
        self.store
            .get_user(id)
            .await?
            .ok_or(Error::NotFound("user"))
    }

    pub async fn users(&self) -> Result<Vec<UserView>, Error> {
        Ok(self
            .store
            .users()
            .await?
            .iter()
            .map(UserView::from)
            .collect())
    }

    /// The number of enabled server admins other than `except`.
    async fn other_admins(&self, except: UserId) -> Result<usize, Error> {
        Ok(self
            .store
            .users()
            .await?
            .iter()
            .filter(|u| u.admin && u.enabled && u.id != except)
            .count())
    }

    pub async fn update_user(
        &self,
        id: UserId,
        patch: UserPatch,
        actor: &str,
    ) -> Result<UserView, Error> {
        let mut user = self.user(id).await?;
        let mut end_sessions = false;
        let mut what = Vec::new();
        if let Some(d) = patch.display_name {
            user.display_name = d.trim().chars().take(128).collect();
            what.push("display name");
        }
        if let Some(p) = patch.password {
            check_password(&p)?;
            user.password_hash = tokio::task::spawn_blocking(move || hash_password(&p))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            end_sessions = true;
            what.push("password");
        }
        if let Some(g) = patch.grants {
            self.check_grants(&g).await?;
            user.grants = g;
            what.push("roles");
        }
        let demoted = patch.admin == Some(false) || patch.enabled == Some(false);
        if demoted && user.admin && self.other_admins(id).await? == 0 {
            return Err(Error::forbidden(
                "this is the last server admin; make another admin first",
            ));
        }
        if let Some(a) = patch.admin {
            user.admin = a;
            what.push("admin");
        }
        if let Some(e) = patch.enabled {
            user.enabled = e;
            end_sessions |= !e;
            what.push(if e { "enabled" } else { "disabled" });
        }
        user.updated_at = now_ms();
        let _ = self.store.put_user(&user, Some(&user.username)).await?;
        if end_sessions {
            self.store.delete_user_sessions(id).await?;
        }
        self.audit
            .record(Entry::new(AuditKind::UserUpdated, actor).detail(format!(
                "user {}: {}",
                user.username,
                what.join(", ")
            )));
        self.store.commit().await?;
        Ok(UserView::from(&user))
    }

    pub async fn delete_user(&self, id: UserId, actor: &str) -> Result<(), Error> {
        let user = self.user(id).await?;
        if user.admin && self.other_admins(id).await? == 0 {
            return Err(Error::forbidden(
                "this is the last server admin; make another admin first",
            ));
        }
        self.store.delete_user(&user).await?;
        self.audit.record(
            Entry::new(AuditKind::UserDeleted, actor).detail(format!("user {}", user.username)),
        );
        self.store.commit().await?;
        Ok(())
    }

    pub async fn create_api_key(
        &self,
        user: UserId,
        name: &str,
        actor: &str,
    ) -> Result<NewApiKey, Error> {
        let u = self.user(user).await?;
        let name = name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(invalid("name", "must be 1 to 128 characters"));
        }
        let secret = new_api_key();
        let key = ApiKey {
            id: ApiKeyId::new(),
            name: name.to_string(),
            key_sha256: secret_hash(&secret),
            created_at: now_ms(),
            user_id: Some(user),
            last_used_at: None,
        };
        self.store.put_api_key(&key).await?;
        self.audit.record(
            Entry::new(AuditKind::ApiKeyCreated, actor)
                .detail(format!("key {name:?} of user {}", u.username)),
        );
        self.store.commit().await?;
        Ok(NewApiKey {
            id: key.id,
            name: key.name,
            secret,
        })
    }

    pub async fn api_keys_of(&self, user: UserId) -> Result<Vec<ApiKeyView>, Error> {
        self.user(user).await?;
        Ok(self
            .store
            .user_api_keys(user)
            .await?
            .into_iter()
            .map(|k| ApiKeyView {
                id: k.id,
                name: k.name,
                created_at: k.created_at,
            })
            .collect())
    }

    pub async fn delete_api_key(
        &self,
        user: UserId,
        key: ApiKeyId,
        actor: &str,
    ) -> Result<(), Error> {
        let u = self.user(user).await?;
        if !self
            .store
            .user_api_keys(user)
            .await?
            .iter()
            .any(|k| k.id == key)
        {
            return Err(Error::NotFound("API key"));
        }
        self.store.delete_api_key(key).await?;
        self.audit.record(
            Entry::new(AuditKind::ApiKeyDeleted, actor)
                .detail(format!("a key of user {}", u.username)),
        );
        self.store.commit().await?;
        Ok(())
    }
}
