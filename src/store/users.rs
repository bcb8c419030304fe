//! Users and sessions: `users` holds `user id → record`, `user_names` maps the lower-cased
//! username to its id (unique), `sessions` maps the SHA-256 of a session cookie to its record.
//! API keys stay in `api_keys` (see `registry`); a user's keys are found by scanning them, as
//! there are few.

use super::codec::{decode_json, encode_json};
use super::registry::{NameClash, put_named};
use super::{Db, Result};
use crate::model::{ApiKey, ApiKeyId, User, UserId, UserSession};

impl Db {
    /// Writes a user, keeping usernames unique (case-insensitively). `old_name` is the
    /// user's name before this write, for renames.
    pub fn put_user(
        &self,
        user: &User,
        old_name: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>> {
        let t = self.trees();
        let new_key = user.username.to_lowercase();
        let old_key = old_name.map(str::to_lowercase);
        put_named(
            &t.users,
            &t.user_names,
            user.id.as_bytes(),
            new_key.as_bytes(),
            old_key.as_deref().map(str::as_bytes),
            encode_json(user),
        )
    }

    pub fn get_user(&self, id: UserId) -> Result<Option<User>> {
        match self.trees().users.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => decode_json("users", &v).map(Some),
        }
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        match self
            .trees()
            .user_names
            .get(name.to_lowercase().as_bytes())?
            .and_then(|v| UserId::from_slice(&v))
        {
            None => Ok(None),
            Some(id) => self.get_user(id),
        }
    }

    /// Every user, oldest first.
    pub fn users(&self) -> Result<Vec<User>> {
        self.trees()
            .users
            .iter()
            .map(|kv| decode_json("users", &kv?.1))
            .collect()
    }

    pub fn user_count(&self) -> Result<usize> {
        Ok(self.trees().users.len())
    }

    /// Removes a user with their sessions and API keys.
    pub fn delete_user(&self, user: &User) -> Result<()> {
        let t = self.trees();
        t.users.remove(user.id.as_bytes())?;
        t.user_names
            .remove(user.username.to_lowercase().as_bytes())?;
        self.delete_user_sessions(user.id)?;
        for k in self.user_api_keys(user.id)? {
            self.delete_api_key(k.id)?;
        }
        Ok(())
    }

    pub fn put_session(&self, hash: &[u8; 32], s: &UserSession) -> Result<()> {
        self.trees().sessions.insert(hash, encode_json(s))?;
        Ok(())
    }

    pub fn get_session(&self, hash: &[u8; 32]) -> Result<Option<UserSession>> {
        match self.trees().sessions.get(hash)? {
            None => Ok(None),
            Some(v) => decode_json("sessions", &v).map(Some),
        }
    }

    pub fn delete_session(&self, hash: &[u8; 32]) -> Result<()> {
        self.trees().sessions.remove(hash)?;
        Ok(())
    }

    /// Ends every session of a user (disabled, deleted, or password changed).
    pub fn delete_user_sessions(&self, user: UserId) -> Result<usize> {
        let t = self.trees();
        let mut n = 0;
        for kv in t.sessions.iter() {
            let (k, v) = kv?;
            let s: UserSession = decode_json("sessions", &v)?;
            if s.user_id == user {
                t.sessions.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Drops sessions for which `expired` holds; returns how many.
    pub fn sweep_sessions(&self, expired: impl Fn(&UserSession) -> bool) -> Result<usize> {
        let t = self.trees();
        let mut n = 0;
        for kv in t.sessions.iter() {
            let (k, v) = kv?;
            let s: UserSession = decode_json("sessions", &v)?;
            if expired(&s) {
                t.sessions.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every API key (few exist), oldest first.
    pub fn api_keys(&self) -> Result<Vec<ApiKey>> {
        self.trees()
            .api_keys
            .iter()
            .map(|kv| decode_json("api_keys", &kv?.1))
            .collect()
    }

    pub fn user_api_keys(&self, user: UserId) -> Result<Vec<ApiKey>> {
        Ok(self
            .api_keys()?
            .into_iter()
            .filter(|k| k.user_id == Some(user))
            .collect())
    }

    pub fn delete_api_key(&self, id: ApiKeyId) -> Result<bool> {
        let t = self.trees();
        let Some(v) = t.api_keys.remove(id.as_bytes())? else {
            return Ok(false);
        };
        let k: ApiKey = decode_json("api_keys", &v)?;
        t.api_key_hashes.remove(k.key_sha256)?;
        Ok(true)
    }
}
