//! The operators' storage: users, login sessions, API keys and the audit log.

use super::{Cursor, Durable, Fut, NameClash, Page};
use crate::model::{ApiKey, ApiKeyId, AuditEvent, User, UserId, UserSession};

/// Sessions and API keys are found by the SHA-256 of their secret, never the secret.
pub trait OperatorStore: Durable {
    fn put_user<'a>(
        &'a self,
        user: &'a User,
        old_name: Option<&'a str>,
    ) -> Fut<'a, std::result::Result<(), NameClash>>;
    fn get_user<'a>(&'a self, id: UserId) -> Fut<'a, Option<User>>;
    fn user_by_name<'a>(&'a self, name: &'a str) -> Fut<'a, Option<User>>;
    fn users<'a>(&'a self) -> Fut<'a, Vec<User>>;
    fn user_count<'a>(&'a self) -> Fut<'a, usize>;
    fn delete_user<'a>(&'a self, user: &'a User) -> Fut<'a, ()>;

    fn put_session<'a>(&'a self, hash: &'a [u8; 32], s: &'a UserSession) -> Fut<'a, ()>;
    fn get_session<'a>(&'a self, hash: &'a [u8; 32]) -> Fut<'a, Option<UserSession>>;
    fn delete_session<'a>(&'a self, hash: &'a [u8; 32]) -> Fut<'a, ()>;
    fn delete_user_sessions<'a>(&'a self, user: UserId) -> Fut<'a, usize>;
    /// Deletes every session `expired` accepts; returns how many.
    fn sweep_sessions<'a>(
        &'a self,
        expired: &'a (dyn Fn(&UserSession) -> bool + Sync),
    ) -> Fut<'a, usize>;

    fn put_api_key<'a>(&'a self, key: &'a ApiKey) -> Fut<'a, ()>;
    fn api_key_by_hash<'a>(&'a self, sha256: &'a [u8; 32]) -> Fut<'a, Option<ApiKey>>;
    fn api_key_count<'a>(&'a self) -> Fut<'a, usize>;
    fn api_keys<'a>(&'a self) -> Fut<'a, Vec<ApiKey>>;
    fn user_api_keys<'a>(&'a self, user: UserId) -> Fut<'a, Vec<ApiKey>>;
    fn delete_api_key<'a>(&'a self, id: ApiKeyId) -> Fut<'a, bool>;

    /// Appends an audit record in the background, in order with other background writes
    /// (durable with the next commit), then trims the log to `trim_to` records if given.
    fn append_audit_later(&self, ev: AuditEvent, trim_to: Option<usize>);
    /// Newest first, keeping what `keep` accepts; `before` is the previous page's cursor.
    fn list_audit<'a>(
        &'a self,
        before: Option<&'a Cursor>,
        limit: usize,
        keep: &'a (dyn Fn(&AuditEvent) -> bool + Sync),
    ) -> Fut<'a, Page<AuditEvent>>;
}
