//! Signed package manifests. Corral never re-signs device images (MCUboot, SWUpdate, RAUC and
//! Mender images carry their own signatures); it signs a small manifest per package, the
//! canonical JSON of its title, version, type, size, SHA-256, creation time and the signing
//! key's id, with the installation's ed25519 key (`pki::ManifestKey`), or takes one signed
//! offline by a key listed in `[ota] manifest_keys`, so a signing key can stay off the server.
//! A device checks the signature over the manifest's exact bytes with a public key it trusts,
//! then the image's SHA-256 and size against the manifest: end-to-end integrity that
//! ThingsBoard's unsigned `fw_checksum` alone does not give.

use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::model::{Millis, Package, PackageKind, SignedManifest};
use crate::pki::{Pki, kid_of, verify_ed25519};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The manifest's fields, in the order they are written (sorted by name: the JSON is
/// canonical without a canonicalizer).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub created: Millis,
    pub kid: String,
    pub sha256: String,
    pub size: u64,
    pub title: String,
    #[serde(rename = "type")]
    pub kind: PackageKind,
    pub version: String,
}

impl Manifest {
    /// The manifest of a package, for the key `kid`.
    pub fn of(p: &Package, kid: &str, created: Millis) -> Self {
        Self {
            created,
            kid: kid.to_string(),
            sha256: p.sha256.clone(),
            size: p.size,
            title: p.title.clone(),
            kind: p.kind,
            version: p.version.clone(),
        }
    }

    /// Its canonical JSON text: the bytes that are signed.
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Signs `manifest` with a PKCS#8 ed25519 key (the offline signer: `corral firmware sign`).
pub fn sign_offline(pkcs8: &[u8], manifest: &mut Manifest) -> anyhow::Result<SignedManifest> {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
        .map_err(|_| anyhow::anyhow!("not a PKCS#8 ed25519 private key"))?;
    manifest.kid = kid_of(pair.public_key().as_ref());
    let text = manifest.canonical();
    Ok(SignedManifest {
        signature: B64.encode(pair.sign(text.as_bytes()).as_ref()),
        manifest: text,
    })
}

/// A key that signs manifests, as `GET /ota/keys` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ManifestKeyView {
    pub kid: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The raw 32-byte public key, standard base64.
    pub public_key: String,
    /// `server`: this installation's own key; `offline`: a key from `[ota] manifest_keys`.
    pub source: String,
}

/// The keys manifests are signed and checked with.
pub struct Manifests {
    pki: Arc<Pki>,
    /// Offline signers' public keys, by kid.
    trusted: Vec<(String, Vec<u8>)>,
}

impl Manifests {
    /// `offline_keys`: base64 ed25519 public keys (checked when the configuration loads).
    pub fn new(pki: Arc<Pki>, offline_keys: &[String]) -> Self {
        let trusted = offline_keys
            .iter()
            .filter_map(|k| match B64.decode(k.trim()) {
                Ok(pk) if pk.len() == 32 => Some((kid_of(&pk), pk)),
                _ => {
                    tracing::warn!(key = %k, "[ota] manifest_keys: not a base64 ed25519 public key; ignored");
                    None
                }
            })
            .collect();
        Self { pki, trusted }
    }

    /// The server's signature of `p`'s manifest.
    pub fn sign(&self, p: &Package) -> SignedManifest {
        let key = self.pki.manifest_key();
        let text = Manifest::of(p, key.kid(), crate::model::now_ms()).canonical();
        SignedManifest {
            signature: B64.encode(key.sign(text.as_bytes())),
            manifest: text,
        }
    }

    pub fn keys(&self) -> Vec<ManifestKeyView> {
        let own = self.pki.manifest_key();
        let mut out = vec![ManifestKeyView {
            kid: own.kid().to_string(),
            algorithm: "ed25519".into(),
            public_key: B64.encode(own.public_key()),
            source: "server".into(),
        }];
        out.extend(self.trusted.iter().map(|(kid, pk)| ManifestKeyView {
            kid: kid.clone(),
            algorithm: "ed25519".into(),
            public_key: B64.encode(pk),
            source: "offline".into(),
        }));
        out
    }

    /// Checks a signed manifest for `p`: it parses, names a key this server trusts, its
    /// signature verifies, and it describes `p` (title, version, type, size, SHA-256).
    pub fn verify(&self, p: &Package, m: &SignedManifest) -> Result<()> {
        let parsed: Manifest = serde_json::from_str(&m.manifest)
            .map_err(|e| Error::invalid("manifest", format!("not a manifest: {e}")))?;
        let own = self.pki.manifest_key();
        let key: &[u8] = if parsed.kid == own.kid() {
            own.public_key()
        } else {
            self.trusted
                .iter()
                .find(|(k, _)| *k == parsed.kid)
                .map(|(_, pk)| pk.as_slice())
                .ok_or_else(|| {
                    Error::invalid(
                        "signature",
                        format!(
                            "signed by key {}, which this server does not trust (see [ota] manifest_keys)",
                            parsed.kid
                        ),
                    )
                })?
        };
        let sig = B64
            .decode(m.signature.trim())
            .map_err(|_| Error::invalid("signature", "not base64"))?;
        if !verify_ed25519(key, m.manifest.as_bytes(), &sig) {
            return Err(Error::invalid(
                "signature",
                format!("does not verify with key {}", parsed.kid),
            ));
        }
        let want = Manifest::of(p, &parsed.kid, parsed.created);
        for (field, ok) in [
            ("title", parsed.title == want.title),
            ("version", parsed.version == want.version),
            ("type", parsed.kind == want.kind),
            ("size", parsed.size == want.size),
            ("sha256", parsed.sha256 == want.sha256),
        ] {
            if !ok {
                return Err(Error::invalid(
                    "manifest",
                    format!("its {field} is not the package's"),
                ));
            }
        }
        Ok(())
    }
}
