//! Corral's own PKI: the CA and the server certificate, generated with rcgen on first start and
//! kept under `<data_dir>/pki` (private keys mode 0600); device certificates issued by the CA
//! (from a generated key or a device's CSR); the revocation list; and the rustls server
//! configurations, with a client-certificate verifier whose trust anchors and CRL are swapped
//! at run time. Which certificate belongs to which device is the credential service's business.

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
use x509_parser::prelude::FromDer as _;

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
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    verifier: Arc<DeviceCertVerifier>,
    crl_pem: std::sync::RwLock<String>,
    /// The ed25519 key OTA package manifests are signed with.
    manifest_key: ManifestKey,
}

/// The ed25519 key this installation signs OTA package manifests with: created at first start
/// (`pki/manifest.key`, PKCS#8, owner-only), named by its `kid`, the first 16 hex digits of the
/// SHA-256 of its public key. Devices verify with the public key (`GET /api/v1/ota/keys`).
pub struct ManifestKey {
    pair: ring::signature::Ed25519KeyPair,
    kid: String,
}

impl ManifestKey {
    fn load_or_create(path: &Path) -> Result<Self, PkiError> {
        use base64::Engine;
        use ring::signature::Ed25519KeyPair;
        let b64 = base64::engine::general_purpose::STANDARD;
        let bad = || PkiError::Pem {
            path: path.to_path_buf(),
            what: "ed25519 manifest key",
        };
        let der = if path.exists() {
            b64.decode(read(path)?.trim()).map_err(|_| bad())?
        } else {
            let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| bad())?;
            write_private(path, &b64.encode(doc.as_ref()))?;
            doc.as_ref().to_vec()
        };
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| bad())?;
        let kid = kid_of(ring::signature::KeyPair::public_key(&pair).as_ref());
        Ok(Self { pair, kid })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        ring::signature::KeyPair::public_key(&self.pair).as_ref()
    }

    /// The signature of `msg` (64 bytes).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// The key id of an ed25519 public key: the first 16 hex digits of its SHA-256.
pub fn kid_of(public_key: &[u8]) -> String {
    hex(&ring::digest::digest(&ring::digest::SHA256, public_key).as_ref()[..8])
}

/// Whether `sig` is `public_key`'s ed25519 signature of `msg`.
pub fn verify_ed25519(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(msg, sig)
        .is_ok()
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
const MANIFEST_KEY: &str = "manifest.key";

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
        let ca_der =
            CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| PkiError::Pem {
                path: dir.join(CA_CERT),
                what: "CA certificate",
            })?;
        let verifier = Arc::new(DeviceCertVerifier::new(vec![ca_der.clone()], Vec::new())?);
        let manifest_key = ManifestKey::load_or_create(&dir.join(MANIFEST_KEY))?;
        Ok((
            Pki {
                dir,
                ca_pem,
                ca,
                ca_der,
                server_chain,
                server_key,
                verifier,
                crl_pem: Default::default(),
                manifest_key,
            },
            init,
        ))
    }

    /// The key OTA manifests are signed with.
    pub fn manifest_key(&self) -> &ManifestKey {
        &self.manifest_key
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

    /// The device listener's configuration: as `server_config`, and a client certificate is
    /// asked for but optional (devices may log in with a token instead). Session resumption is
    /// off so that every connection's certificate meets the current revocation list.
    pub fn device_server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(self.verifier.clone())
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())?;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }

    /// The client-certificate verifier of the device listener.
    pub fn verifier(&self) -> &DeviceCertVerifier {
        &self.verifier
    }

    /// Issues a device key and certificate signed by the CA. Returns (key PEM, certificate PEM).
    pub fn issue_device_cert(
        &self,
        common_name: &str,
        validity_days: u32,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let cert = device_params(common_name, validity_days)?.signed_by(&key, &self.ca)?;
        Ok((key.serialize_pem(), cert.pem()))
    }

    /// Signs a device's certificate signing request (EC or RSA key). The request's signature is
    /// checked; its subject, extensions and CA flag are replaced by Corral's: a device never
    /// obtains more than a client certificate naming it.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        common_name: &str,
        validity_days: u32,
    ) -> Result<String, PkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = device_params(common_name, validity_days)?;
        Ok(csr.signed_by(&self.ca)?.pem())
    }

    /// Builds and signs the CRL of revoked device certificates (serials in hex, revocation time
    /// in ms), installs it in the device listener's verifier with `extra_roots` (manufacturer
    /// CAs), and keeps its PEM for `crl_pem`. Takes effect for the next handshake.
    pub fn set_device_trust(
        &self,
        revoked: &[(String, i64)],
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Result<(), PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .filter_map(|(serial, at)| {
                let bytes = hex_decode(serial)?;
                Some(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: OffsetDateTime::from_unix_timestamp(at / 1000).ok()?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            // Corral reloads its own copy on every change; a week is for outside relying parties
            // that download it.
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from_slice(&now.unix_timestamp_nanos().to_be_bytes()[4..]),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca)?;
        let mut roots = vec![self.ca_der.clone()];
        roots.extend(extra_roots);
        self.verifier.replace(roots, vec![crl.der().clone()])?;
        *self.crl_pem.write().unwrap_or_else(|p| p.into_inner()) = crl.pem()?;
        Ok(())
    }

    /// The current revocation list of device certificates (PEM); empty before the first
    /// `set_device_trust`.
    pub fn crl_pem(&self) -> String {
        self.crl_pem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A certificate as Corral records it: ThingsBoard's fingerprint, the key hash, serial,
/// names and validity.
pub fn describe_cert(
    der: &CertificateDer<'_>,
    origin: crate::model::CertOrigin,
) -> Result<crate::model::CertificateInfo, CertError> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| CertError::Parse)?;
    // ThingsBoard's X.509 identity: SHA3-256 of the base64 text of the DER, no armour (§2).
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let fingerprint = hex(&sha3::Sha3_256::digest(b64.as_bytes()));
    Ok(crate::model::CertificateInfo {
        origin,
        fingerprint,
        spki_sha256: hex(&sha2::Sha256::digest(cert.public_key().raw)),
        serial: hex(cert.raw_serial()),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp() * 1000,
        not_after: cert.validity().not_after.timestamp() * 1000,
        certificate_pem: pem_of(der),
    })
}

/// The common name of a certificate's subject, if it has one.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// Parses the first certificate of a PEM text (or a bare base64 DER body, which ThingsBoard
/// provisioning sends).
pub fn parse_cert_text(text: &str) -> Result<CertificateDer<'static>, CertError> {
    use base64::Engine as _;
    let t = text.trim();
    let der = if t.starts_with("-----BEGIN") {
        CertificateDer::from_pem_slice(t.as_bytes()).map_err(|_| CertError::Pem)?
    } else {
        let body: String = t.split_whitespace().collect();
        CertificateDer::from(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| CertError::Pem)?,
        )
    };
    x509_parser::parse_x509_certificate(&der).map_err(|_| CertError::Parse)?;
    Ok(der)
}

/// SHA-256 (hex) of the SubjectPublicKeyInfo in a PEM public key (`PUBLIC KEY`) or certificate.
pub fn spki_sha256_of_pem(text: &str) -> Result<String, CertError> {
    use rustls::pki_types::SubjectPublicKeyInfoDer;
    use sha2::Digest as _;
    let t = text.trim();
    if t.contains("BEGIN CERTIFICATE") {
        let der = parse_cert_text(t)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|_| CertError::Parse)?;
        return Ok(hex(&sha2::Sha256::digest(cert.public_key().raw)));
    }
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(t.as_bytes()).map_err(|_| CertError::Pem)?;
    x509_parser::x509::SubjectPublicKeyInfo::from_der(spki.as_ref())
        .map_err(|_| CertError::Parse)?;
    Ok(hex(&sha2::Sha256::digest(spki.as_ref())))
}

/// Whether `chain` (leaf first) is a client certificate issued under `ca` and valid now.
pub fn chains_to(chain: &[CertificateDer<'_>], ca: &CertificateDer<'_>) -> bool {
    let Some((leaf, rest)) = chain.split_first() else {
        return false;
    };
    let (Ok(ee), Ok(anchor)) = (
        webpki::EndEntityCert::try_from(leaf),
        webpki::anchor_from_trusted_cert(ca),
    ) else {
        return false;
    };
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    ee.verify_for_usage(
        algs,
        &[anchor],
        rest,
        rustls::pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

/// A CA certificate an operator registers (a manufacturer CA): must parse and be a CA.
pub fn check_ca_cert(der: &CertificateDer<'_>) -> Result<(), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| CertError::Parse)?;
    if !cert.is_ca() {
        return Err(CertError::NotCa);
    }
    webpki::anchor_from_trusted_cert(der).map_err(|_| CertError::Parse)?;
    Ok(())
}

/// Why a certificate or key given to Corral was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("not a PEM certificate or key (or base64 DER)")]
    Pem,
    #[error("the certificate or key cannot be parsed")]
    Parse,
    #[error("the certificate is not a CA certificate (basicConstraints CA:TRUE)")]
    NotCa,
}

pub fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn device_params(common_name: &str, validity_days: u32) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, common_name.to_string());
    p.distinguished_name
        .push(DnType::OrganizationName, "Corral");
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(i64::from(validity_days));
    p.serial_number = Some(random_serial());
    Ok(p)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The device listener's client-certificate verifier. A certificate is optional (token logins
/// send none). One that chains to Corral's CA or a manufacturer CA is checked against the
/// revocation list and its validity period, and refused in the handshake when revoked or
/// expired. Any other certificate (self-signed, from a secure element, from an unknown
/// issuer) passes the handshake, as ThingsBoard allows (§2): the TLS layer still proves the
/// client holds its key, and CONNECT then accepts it only if it is registered to a device.
#[derive(Debug)]
pub struct DeviceCertVerifier {
    inner: std::sync::RwLock<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl DeviceCertVerifier {
    fn new(
        roots: Vec<CertificateDer<'static>>,
        crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    ) -> Result<Self, PkiError> {
        Ok(Self {
            inner: std::sync::RwLock::new(Self::build(roots, crls)?),
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    fn build(
        roots: Vec<CertificateDer<'static>>,
        crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, PkiError> {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            // A manufacturer CA that webpki cannot use as an anchor is skipped, not fatal:
            // it was validated when registered.
            if let Err(e) = store.add(r) {
                tracing::warn!(error = %e, "a trust anchor was not usable");
            }
        }
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(store),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .with_crls(crls)
        .only_check_end_entity_revocation()
        // Manufacturer CAs publish no CRL here; their devices are revoked by credential.
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))
    }

    fn replace(
        &self,
        roots: Vec<CertificateDer<'static>>,
        crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    ) -> Result<(), PkiError> {
        let v = Self::build(roots, crls)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }

    fn current(&self) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `chain` (leaf first) verifies to one of Corral's trust anchors right now:
    /// `Ok(true)` when it does, `Ok(false)` for an unknown issuer, `Err` for a certificate
    /// that is revoked, expired or otherwise refused.
    pub fn check_chain(&self, chain: &[CertificateDer<'_>]) -> Result<bool, rustls::Error> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Ok(false);
        };
        match self
            .current()
            .verify_client_cert(leaf, rest, rustls::pki_types::UnixTime::now())
        {
            Ok(_) => Ok(true),
            Err(rustls::Error::InvalidCertificate(e)) if !handshake_fatal(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Certificate errors that end the handshake: revocation and validity. Any other failure to
/// chain leaves the decision to CONNECT (registered certificates need no chain).
fn handshake_fatal(e: &rustls::CertificateError) -> bool {
    use rustls::CertificateError as E;
    matches!(
        e,
        E::Revoked
            | E::Expired
            | E::ExpiredContext { .. }
            | E::NotValidYet
            | E::NotValidYetContext { .. }
    )
}

impl rustls::server::danger::ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // No hints: a device sends the one certificate it has, whoever issued it.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        match self
            .current()
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(e)) if !handshake_fatal(&e) => {
                Ok(rustls::server::danger::ClientCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
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
