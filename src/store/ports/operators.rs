//! The operators' storage: users, login sessions, API keys and the audit log.

use super::{Cursor, Durable, NameClash, Page, Result};
use crate::model::{ApiKey, ApiKeyId, AuditEvent, User, UserId, UserSession};

/// Sessions and API keys are found by the SHA-256 of their secret, never the secret.
pub trait OperatorStore: Durable {
    fn put_user(
        &self,
        user: &User,
        old_name: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>>;
    fn get_user(&self, id: UserId) -> Result<Option<User>>;
    fn user_by_name(&self, name: &str) -> Result<Option<User>>;
    fn users(&self) -> Result<Vec<User>>;
    fn user_count(&self) -> Result<usize>;
    fn delete_user(&self, user: &User) -> Result<()>;

    fn put_session(&self, hash: &[u8; 32], s: &UserSession) -> Result<()>;
    fn get_session(&self, hash: &[u8; 32]) -> Result<Option<UserSession>>;
    fn delete_session(&self, hash: &[u8; 32]) -> Result<()>;
    fn delete_user_sessions(&self, user: UserId) -> Result<usize>;
    /// Deletes every session `expired` accepts; returns how many.
    fn sweep_sessions(&self, expired: &dyn Fn(&UserSession) -> bool) -> Result<usize>;

    fn put_api_key(&self, key: &ApiKey) -> Result<()>;
    fn api_key_by_hash(&self, sha256: &[u8; 32]) -> Result<Option<ApiKey>>;
    fn api_key_count(&self) -> Result<usize>;
    fn api_keys(&self) -> Result<Vec<ApiKey>>;
    fn user_api_keys(&self, user: UserId) -> Result<Vec<ApiKey>>;
    fn delete_api_key(&self, id: ApiKeyId) -> Result<bool>;

    /// Appends an audit record in the background, in order with other background writes
    /// (durable with the next commit), then trims the log to `trim_to` records if given.
    fn append_audit_later(&self, ev: AuditEvent, trim_to: Option<usize>);
    /// Newest first, keeping what `keep` accepts; `before` is the previous page's cursor.
    fn list_audit(
        &self,
        before: Option<&Cursor>,
        limit: usize,
        keep: &dyn Fn(&AuditEvent) -> bool,
    ) -> Result<Page<AuditEvent>>;
}
