//! Corral's own PKI: the CA and the server certificate, generated with rcgen on first start and
//! kept under `<data_dir>/pki` (private keys mode 0600), and the rustls server configurations
//! built from them. Device certificates and revocation build on this in later work.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::config::PkiConfig;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: not a valid PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The CA and server identity of this installation.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    /// Kept for issuing device certificates.
    #[allow(dead_code)]
    ca: Issuer<'static, KeyPair>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What `load_or_init` did, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PkiInit {
    Loaded,
    CreatedCa,
    ReissuedServer,
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";
const SERVER_HOSTS: &str = "server.hosts";

impl Pki {
    /// Loads the PKI from `<data_dir>/pki`, creating the CA when absent and (re)issuing the server
    /// certificate when absent, when the configured hosts changed, or within 30 days of expiry.
    pub fn load_or_init(data_dir: &Path, cfg: &PkiConfig) -> Result<(Pki, PkiInit), PkiError> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let mut init = PkiInit::Loaded;
        let (ca_pem, ca) = if dir.join(CA_CERT).exists() {
            let pem = read(&dir.join(CA_CERT))?;
            let key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?).map_err(|_| PkiError::Pem {
                path: dir.join(CA_KEY),
                what: "private key",
            })?;
            let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|_| PkiError::Pem {
                path: dir.join(CA_CERT),
                what: "CA certificate",
            })?;
            (pem, issuer)
        } else {
            init = PkiInit::CreatedCa;
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name
                .push(DnType::CommonName, cfg.ca_name.clone());
            p.distinguished_name
                .push(DnType::OrganizationName, "Corral");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = OffsetDateTime::now_utc();
            p.not_before = now - Duration::hours(1);
            p.not_after = now + Duration::days(i64::from(cfg.ca_validity_days));
            p.serial_number = Some(random_serial());
            let key_pem = key.serialize_pem();
            let ca = CertifiedIssuer::self_signed(p, key)?;
            let pem = ca.pem();
            write_private(&dir.join(CA_KEY), &key_pem)?;
            write_public(&dir.join(CA_CERT), &pem)?;
            let ca = Issuer::from_ca_cert_pem(&pem, KeyPair::from_pem(&key_pem)?)?;
            (pem, ca)
        };

        let hosts_now = cfg.hosts.join("\n");
        let needs_server = init == PkiInit::CreatedCa
            || !dir.join(SERVER_CERT).exists()
            || std::fs::read_to_string(dir.join(SERVER_HOSTS))
                .ok()
                .as_deref()
                != Some(&hosts_now)
            || expires_within(&dir.join(SERVER_CERT), Duration::days(30));
        if needs_server {
            if init == PkiInit::Loaded {
                init = PkiInit::ReissuedServer;
            }
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(cfg.hosts.clone())?;
            p.distinguished_name
                .push(DnType::CommonName, cfg.hosts[0].clone());
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            let now = OffsetDateTime::now_utc();
            p.not_before = now - Duration::hours(1);
            p.not_after = now + Duration::days(i64::from(cfg.server_validity_days));
            p.serial_number = Some(random_serial());
            let cert = p.signed_by(&key, &ca)?;
            write_private(&dir.join(SERVER_KEY), &key.serialize_pem())?;
            write_public(&dir.join(SERVER_CERT), &cert.pem())?;
            write_public(&dir.join(SERVER_HOSTS), &hosts_now)?;
        }

        let server_pem = read(&dir.join(SERVER_CERT))?;
        let server_chain = CertificateDer::pem_slice_iter(server_pem.as_bytes())
            .chain(CertificateDer::pem_slice_iter(ca_pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| PkiError::Pem {
                path: dir.join(SERVER_CERT),
                what: "certificate",
            })?;
        let server_key = PrivateKeyDer::from_pem_slice(read(&dir.join(SERVER_KEY))?.as_bytes())
            .map_err(|_| PkiError::Pem {
                path: dir.join(SERVER_KEY),
                what: "private key",
            })?;
        Ok((
            Pki {
                dir,
                ca_pem,
                ca,
                server_chain,
                server_key,
            },
            init,
        ))
    }

    /// The CA certificate devices and clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the PKI files live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// rustls server configuration: TLS 1.2 and 1.3 (the ThingsBoard Python SDK offers only 1.2),
    /// ring provider, the given ALPN protocols.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

/// Makes ring the process-wide rustls provider, for clients (reqwest) that do not take one
/// explicitly. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A rustls client configuration trusting only `ca_pem` (for the CLI, tests and the simulator).
pub fn client_config_trusting(ca_pem: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // Positive, non-zero, as RFC 5280 §4.1.2.2 requires.
    b[0] = (b[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&b)
}

fn expires_within(path: &Path, margin: Duration) -> bool {
    let Ok(pem) = std::fs::read(path) else {
        return true;
    };
    let Ok(der) = CertificateDer::from_pem_slice(&pem) else {
        return true;
    };
    match x509_parser::parse_x509_certificate(&der) {
        Ok((_, cert)) => {
            let not_after = cert.validity().not_after.timestamp();
            not_after < (OffsetDateTime::now_utc() + margin).unix_timestamp()
        }
        Err(_) => true,
    }
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}

/// Writes a private key readable by the owner only, atomically (temp file + rename).
fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_with_mode(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_with_mode(path, contents, 0o644)
}

fn write_with_mode(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(contents.as_bytes()).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_private_keys_0600_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = PkiConfig::default();
        let (pki, init) = Pki::load_or_init(dir.path(), &cfg).expect("init");
        assert_eq!(init, PkiInit::CreatedCa);
        for key in [CA_KEY, SERVER_KEY] {
            let mode = std::fs::metadata(pki.dir().join(key))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let (again, init) = Pki::load_or_init(dir.path(), &cfg).expect("reload");
        assert_eq!(init, PkiInit::Loaded);
        assert_eq!(again.ca_pem(), pki.ca_pem());
        let changed = PkiConfig {
            hosts: vec!["corral.lan".into()],
            ..cfg
        };
        let (third, init) = Pki::load_or_init(dir.path(), &changed).expect("reissue");
        assert_eq!(init, PkiInit::ReissuedServer);
        assert_eq!(third.ca_pem(), pki.ca_pem());
        assert!(third.server_config(&[b"h2"]).is_ok());
    }
}
