//! Admin authentication: API keys (only their SHA-256 is stored), the first-start bootstrap key,
//! and verification of `Authorization: Bearer` secrets. Users, roles and sessions come later.

use base64::Engine;

use crate::devices::registry::secret_hash;
use crate::model::{ApiKey, ApiKeyId, now_ms};
use crate::store::{Store, StoreError};

/// Prefix of Corral API keys, so that secret scanners and people can recognise them.
pub const KEY_PREFIX: &str = "crl_";

#[derive(Clone)]
pub struct AuthService {
    store: Store,
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
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Ensures an admin key exists. A configured key is always accepted, which is also how an
    /// operator who lost every key regains access.
    pub async fn bootstrap(&self, configured: Option<&str>) -> Result<Bootstrap, StoreError> {
        if let Some(secret) = configured {
            let hash = secret_hash(secret);
            if self.store.api_key_by_hash(&hash)?.is_none() {
                self.store.put_api_key(&ApiKey {
                    id: ApiKeyId::new(),
                    name: "bootstrap (configured)".into(),
                    key_sha256: hash,
                    created_at: now_ms(),
                })?;
                self.store.commit().await?;
            }
            return Ok(Bootstrap::Configured);
        }
        if self.store.api_key_count()? > 0 {
            return Ok(Bootstrap::Existing);
        }
        let secret = new_api_key();
        self.store.put_api_key(&ApiKey {
            id: ApiKeyId::new(),
            name: "bootstrap".into(),
            key_sha256: secret_hash(&secret),
            created_at: now_ms(),
        })?;
        self.store.commit().await?;
        Ok(Bootstrap::Generated(secret))
    }

    /// The API key a presented secret belongs to.
    pub fn verify(&self, secret: &str) -> Result<Option<ApiKey>, StoreError> {
        if !secret.starts_with(KEY_PREFIX) && secret.len() < 32 {
            return Ok(None);
        }
        self.store.api_key_by_hash(&secret_hash(secret))
    }
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
        let auth = AuthService::new(store);
        let Bootstrap::Generated(key) = auth.bootstrap(None).await.expect("bootstrap") else {
            panic!("first start generates a key")
        };
        assert!(auth.verify(&key).expect("verify").is_some());
        assert!(auth.verify("crl_wrong").expect("verify").is_none());
        assert_eq!(
            auth.bootstrap(None).await.expect("again"),
            Bootstrap::Existing
        );
        let configured = "x".repeat(40);
        assert_eq!(
            auth.bootstrap(Some(&configured)).await.expect("cfg"),
            Bootstrap::Configured
        );
        assert!(auth.verify(&configured).expect("verify").is_some());
    }
}
