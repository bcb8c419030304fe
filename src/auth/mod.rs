//! Operator authentication: API keys (only their SHA-256 is stored), the first-start bootstrap
//! key and one-time setup link, users with argon2id passwords, browser sessions (idle and
//! absolute timeouts, CSRF token, ended server-side at logout), sign-in throttling that does
//! not reveal whether a user exists. Who may do what once authenticated is `policy`.

pub mod policy;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;

use crate::audit::{AuditLog, Entry};
pub use crate::config::AuthConfig;
use crate::error::{Denial, Error};
use crate::limits::KeyedLimiter;
use crate::model::{ApiKey, ApiKeyId, AuditKind, Millis, User, UserSession, now_ms};
use crate::secrets::secret_hash;
use crate::store::ports::{OperatorStore, RegistryStore, StoreError};
pub use policy::Principal;

/// A successful sign-in: the session cookie's value (shown to the browser only) and who.
pub struct SignedIn {
    pub cookie: String,
    pub principal: Principal,
}

/// The one-time first-run setup token, kept in memory only (a restart prints a new one).
struct SetupToken {
    hash: [u8; 32],
    expires_at: Millis,
}

/// Prefix of Corral API keys, so that secret scanners and people can recognise them.
pub const KEY_PREFIX: &str = "crl_";

pub struct AuthService {
    store: Arc<dyn OperatorStore>,
    /// For checking that a grant names workspaces and fleets that exist.
    registry: Arc<dyn RegistryStore>,
    audit: Arc<AuditLog>,
    cfg: AuthConfig,
    /// Sign-in attempts per client address and per username.
    by_peer: KeyedLimiter<IpAddr>,
    by_name: KeyedLimiter<String>,
    /// Held across the whole setup, so two setups cannot both create a first admin.
    setup: tokio::sync::Mutex<Option<SetupToken>>,
    /// A valid argon2 hash to check against when the user does not exist, so that the answer
    /// takes as long as for a real user.
    decoy_hash: String,
}

/// What happened to the bootstrap admin key at start-up.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Keys already existed and none was configured.
    Existing,
    /// The configured key was registered (or already was).
    Configured,
    /// No key existed: this one was generated and must be shown once.
    Generated(String),
}

impl AuthService {
    pub fn new(
        store: Arc<dyn OperatorStore>,
        registry: Arc<dyn RegistryStore>,
        audit: Arc<AuditLog>,
        cfg: AuthConfig,
    ) -> Self {
        Self {
            by_peer: KeyedLimiter::per_minute(cfg.login_attempts_per_min, cfg.login_burst),
            by_name: KeyedLimiter::per_minute(cfg.login_attempts_per_min, cfg.login_burst),
            store,
            registry,
            audit,
            cfg,
            setup: tokio::sync::Mutex::new(None),
            decoy_hash: users::hash_password(&new_api_key()).unwrap_or_default(),
        }
    }

    /// Ensures an admin key exists. A configured key is always accepted, which is also how an
    /// operator who lost every key regains access.
    pub async fn bootstrap(&self, configured: Option<&str>) -> Result<Bootstrap, StoreError> {
        if let Some(secret) = configured {
            let hash = secret_hash(secret);
            if self.store.api_key_by_hash(&hash).await?.is_none() {
                self.store
                    .put_api_key(&ApiKey {
                        id: ApiKeyId::new(),
                        name: "bootstrap (configured)".into(),
                        key_sha256: hash,
                        created_at: now_ms(),
                        user_id: None,
                        last_used_at: None,
                    })
                    .await?;
                self.store.commit().await?;
            }
            return Ok(Bootstrap::Configured);
        }
        if self.store.api_key_count().await? > 0 {
            return Ok(Bootstrap::Existing);
        }
        let secret = new_api_key();
        self.store
            .put_api_key(&ApiKey {
                id: ApiKeyId::new(),
                name: "bootstrap".into(),
                key_sha256: secret_hash(&secret),
                created_at: now_ms(),
                user_id: None,
                last_used_at: None,
            })
            .await?;
        self.store.commit().await?;
        Ok(Bootstrap::Generated(secret))
    }

    /// The API key a presented secret belongs to.
    pub async fn verify(&self, secret: &str) -> Result<Option<ApiKey>, StoreError> {
        if !secret.starts_with(KEY_PREFIX) && secret.len() < 32 {
            return Ok(None);
        }
        self.store.api_key_by_hash(&secret_hash(secret)).await
    }

    /// Who a presented API key acts as: its user (if enabled), or full rights for a key of no
    /// user (the bootstrap key).
    pub async fn principal_for_key(&self, secret: &str) -> Result<Option<Principal>, StoreError> {
        let Some(key) = self.verify(secret).await? else {
            return Ok(None);
        };
        match key.user_id {
            None => Ok(Some(Principal::key_admin(&key))),
            Some(u) => Ok(self
                .store
                .get_user(u)
                .await?
                .filter(|u| u.enabled)
                .map(|u| Principal::user(&u, None))),
        }
    }

    /// Whether a session is past its idle or absolute limit at `now`.
    fn session_expired(&self, s: &UserSession, now: Millis) -> bool {
        let idle = self.cfg.session_idle_mins as i64 * 60_000;
        let max = self.cfg.session_max_hours as i64 * 3_600_000;
        now - s.last_seen_at > idle || now - s.created_at > max
    }

    /// Who a session cookie presented over TLS (`tls`) or plain HTTP belongs to, if the session
    /// is live and was made over the same transport; refreshes its idle timer.
    pub async fn principal_for_session(
        &self,
        cookie: &str,
        tls: bool,
    ) -> Result<Option<Principal>, StoreError> {
        let hash = secret_hash(cookie);
        let Some(mut s) = self.store.get_session(&hash).await? else {
            return Ok(None);
        };
        if s.tls != tls {
            // Not this transport's session: refused, but left alone for its own transport.
            return Ok(None);
        }
        let now = now_ms();
        if self.session_expired(&s, now) {
            self.store.delete_session(&hash).await?;
            return Ok(None);
        }
        let Some(user) = self.store.get_user(s.user_id).await?.filter(|u| u.enabled) else {
            self.store.delete_session(&hash).await?;
            return Ok(None);
        };
        // Written at most every 30 s: the idle limit is in minutes.
        if now - s.last_seen_at > 30_000 {
            s.last_seen_at = now;
            self.store.put_session(&hash, &s).await?;
        }
        Ok(Some(Principal::user(&user, Some((hash, s.csrf_token)))))
    }

    /// Signs a user in (over TLS or not: the session is bound to that transport). Throttled per
    /// address and per username before any password check; an unknown user costs the same
    /// password check as a known one.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        peer: Option<IpAddr>,
        tls: bool,
    ) -> Result<SignedIn, Error> {
        let name = username.trim().to_lowercase();
        let peer_ok = peer.is_none_or(|p| self.by_peer.allow(&p));
        if !peer_ok || !self.by_name.allow(&name) {
            self.audit.record_unauthenticated(
                Entry::new(AuditKind::LoginThrottled, username_for_audit(&name))
                    .ip(peer)
                    .detail("too many sign-in attempts"),
                peer,
            );
            return Err(Error::Throttled {
                message: "too many sign-in attempts; wait a minute".into(),
                retry_after_secs: 60,
            });
        }
        let user = self.store.user_by_name(&name).await?;
        let hash = user
            .as_ref()
            .map_or(self.decoy_hash.clone(), |u| u.password_hash.clone());
        let ok = users::verify_password(hash, password.as_bytes().to_vec()).await;
        let user = match user {
            Some(u) if ok && u.enabled => u,
            other => {
                let why = match other {
                    None => "unknown user",
                    Some(u) if !u.enabled => "user disabled",
                    _ => "wrong password",
                };
                self.audit.record(
                    Entry::new(AuditKind::LoginFailed, username_for_audit(&name))
                        .ip(peer)
                        .detail(why),
                );
                return Err(Error::Denied(Denial::InvalidLogin));
            }
        };
        self.start_session(user, peer, tls).await
    }

    async fn start_session(
        &self,
        mut user: User,
        peer: Option<IpAddr>,
        tls: bool,
    ) -> Result<SignedIn, Error> {
        let cookie = random_secret();
        let now = now_ms();
        let session = UserSession {
            user_id: user.id,
            csrf_token: random_secret(),
            created_at: now,
            last_seen_at: now,
            peer: peer.map(|p| p.to_string()),
            tls,
        };
        let hash = secret_hash(&cookie);
        self.store.put_session(&hash, &session).await?;
        user.last_login_at = Some(now);
        let _ = self.store.put_user(&user, Some(&user.username)).await?;
        self.audit
            .record(Entry::new(AuditKind::Login, user.username.clone()).ip(peer));
        self.store.commit().await?;
        Ok(SignedIn {
            cookie,
            principal: Principal::user(&user, Some((hash, session.csrf_token))),
        })
    }

    /// Ends a session server-side: the cookie is worthless afterwards.
    pub async fn logout(&self, p: &Principal, peer: Option<IpAddr>) -> Result<(), Error> {
        if let Some((hash, _)) = &p.session {
            self.store.delete_session(hash).await?;
            self.audit
                .record(Entry::new(AuditKind::Logout, p.name.clone()).ip(peer));
            self.store.commit().await?;
        }
        Ok(())
    }

    /// Whether any web UI user exists (the sign-in page explains the setup link until one does).
    pub async fn users_exist(&self) -> Result<bool, crate::error::Error> {
        Ok(self.store.user_count().await? > 0)
    }

    /// A one-time setup token while no user exists (for the start-up banner), valid for
    /// `auth.setup_token_mins`; None once users exist.
    pub async fn issue_setup_token(&self) -> Result<Option<String>, StoreError> {
        if self.store.user_count().await? > 0 {
            return Ok(None);
        }
        let token = random_secret();
        let Ok(mut slot) = self.setup.try_lock() else {
            // A setup is running right now: it will create the first user.
            return Ok(None);
        };
        *slot = Some(SetupToken {
            hash: secret_hash(&token),
            expires_at: now_ms() + self.cfg.setup_token_mins as i64 * 60_000,
        });
        Ok(Some(token))
    }

    /// Creates the first (admin) user with the setup token, and signs them in.
    pub async fn setup(
        &self,
        token: &str,
        username: &str,
        password: &str,
        peer: Option<IpAddr>,
        tls: bool,
    ) -> Result<SignedIn, Error> {
        let mut slot = self.setup.lock().await;
        let valid = slot
            .as_ref()
            .is_some_and(|t| t.expires_at > now_ms() && constant_eq(&t.hash, &secret_hash(token)));
        if !valid || self.store.user_count().await? > 0 {
            self.audit.record_unauthenticated(
                Entry::new(AuditKind::SetupFailed, "anonymous")
                    .ip(peer)
                    .detail("invalid, used or expired setup token"),
                peer,
            );
            return Err(Error::Denied(Denial::InvalidSetup));
        }
        // A refused username or password leaves the token usable for another try.
        let user = self
            .create_user(
                users::NewUser {
                    username: username.into(),
                    password: password.into(),
                    display_name: String::new(),
                    admin: true,
                    grants: Vec::new(),
                },
                "setup",
            )
            .await?;
        *slot = None;
        drop(slot);
        let user = self
            .store
            .get_user(user.id)
            .await?
            .ok_or(Error::NotFound("user"))?;
        self.start_session(user, peer, tls).await
    }

    /// Drops sessions past their limits (periodic).
    pub async fn sweep_sessions(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        self.store
            .sweep_sessions(&|s| self.session_expired(s, now))
            .await
    }
}

/// A username as the audit log shows it: bounded, since it comes from anyone.
fn username_for_audit(name: &str) -> String {
    name.chars().take(64).collect()
}

fn constant_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes, base64url: session cookies, CSRF and setup tokens.
pub fn random_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A new random API key: the prefix and 32 random bytes, base64url.
pub fn new_api_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::open_temp;

    #[tokio::test]
    async fn bootstrap_generates_once_and_accepts_configured_key() {
        let (_d, store) = open_temp();
        let audit = Arc::new(AuditLog::new(store.ports().operators, 1000));
        let auth = AuthService::new(
            store.ports().operators,
            store.ports().registry,
            audit,
            AuthConfig::default(),
        );
        let Bootstrap::Generated(key) = auth.bootstrap(None).await.expect("bootstrap") else {
            panic!("first start generates a key")
        };
        assert!(auth.verify(&key).await.expect("verify").is_some());
        assert!(auth.verify("crl_wrong").await.expect("verify").is_none());
        assert_eq!(
            auth.bootstrap(None).await.expect("again"),
            Bootstrap::Existing
        );
        let configured = "x".repeat(40);
        assert_eq!(
            auth.bootstrap(Some(&configured)).await.expect("cfg"),
            Bootstrap::Configured
        );
        assert!(auth.verify(&configured).await.expect("verify").is_some());
    }

    #[tokio::test]
    async fn sessions_end_when_idle_or_too_old_and_at_logout() {
        let (_d, store) = open_temp();
        let audit = Arc::new(AuditLog::new(store.ports().operators, 1000));
        let auth = AuthService::new(
            store.ports().operators,
            store.ports().registry,
            audit,
            AuthConfig::default(),
        );
        auth.create_user(
            users::NewUser {
                username: "ana".into(),
                password: "long enough password".into(),
                display_name: String::new(),
                admin: false,
                grants: Vec::new(),
            },
            "test",
        )
        .await
        .expect("user");
        let signed = auth
            .login("ana", "long enough password", None, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let cookie = signed.cookie.clone();
        assert!(
            auth.principal_for_session(&cookie, true)
                .await
                .expect("read")
                .is_some()
        );
        let hash = secret_hash(&cookie);
        let mut s = store
            .get_session(&hash)
            .await
            .expect("read")
            .expect("stored");
        // Idle for 31 minutes (the limit is 30).
        s.last_seen_at = now_ms() - 31 * 60_000;
        store.put_session(&hash, &s).await.expect("write");
        assert!(
            auth.principal_for_session(&cookie, true)
                .await
                .expect("read")
                .is_none()
        );
        assert!(
            store.get_session(&hash).await.expect("read").is_none(),
            "dropped"
        );
        // Active, but signed in 13 hours ago (the limit is 12).
        let signed = auth
            .login("ana", "long enough password", None, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let hash = secret_hash(&signed.cookie);
        let mut s = store
            .get_session(&hash)
            .await
            .expect("read")
            .expect("stored");
        s.created_at = now_ms() - 13 * 3_600_000;
        store.put_session(&hash, &s).await.expect("write");
        assert!(
            auth.principal_for_session(&signed.cookie, true)
                .await
                .expect("read")
                .is_none()
        );
        // Logout ends a live one.
        let signed = auth
            .login("ana", "long enough password", None, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let p = auth
            .principal_for_session(&signed.cookie, true)
            .await
            .expect("read")
            .expect("live");
        auth.logout(&p, None).await.expect("logout");
        assert!(
            auth.principal_for_session(&signed.cookie, true)
                .await
                .expect("read")
                .is_none()
        );
        // A session is bound to the transport it was made over.
        let over_tls = auth
            .login("ana", "long enough password", None, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let over_plain = auth
            .login("ana", "long enough password", None, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for (cookie, tls) in [(&over_tls.cookie, true), (&over_plain.cookie, false)] {
            assert!(
                auth.principal_for_session(cookie, !tls)
                    .await
                    .expect("read")
                    .is_none()
            );
            assert!(
                auth.principal_for_session(cookie, tls)
                    .await
                    .expect("read")
                    .is_some()
            );
        }
        // Only hashes are stored: the cookie value is nowhere in the store.
        assert!(
            store
                .get_session(&secret_hash(&signed.cookie))
                .await
                .expect("read")
                .is_none()
        );
    }
}
