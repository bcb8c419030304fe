//! Secret handling shared by device credentials and operator authentication: the SHA-256 that
//! the store indexes tokens and API keys by, and argon2id password hashes. Depends on nothing
//! in the crate.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

/// SHA-256 of a device token or API key: what the store indexes.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// argon2id hash (PHC string) of a password or provisioning secret.
pub fn hash_password(p: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())?;
    argon2::Argon2::default()
        .hash_password(p.as_bytes(), &salt)
        .map(|h| h.to_string())
}

/// Checks a password against an argon2 PHC string; off the caller's thread, since a check
/// costs tens of milliseconds of CPU by design.
pub async fn verify_password(hash: String, given: Vec<u8>) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(&given, &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}
