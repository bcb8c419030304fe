//! The package library: uploads streamed to disk and hashed on the way (never held whole in
//! memory), stored by content hash in `<data_dir>/packages/<sha256>`, and their records
//! (title, version, checksum) in the store. A 2xx for an upload means the file and its record
//! are durable: the file is synced and renamed into place before the record is committed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use super::checksum::{self, Hashing};
use super::manifest::Manifests;
use crate::audit::{AuditLog, Entry};
use crate::devices::Registry;
use crate::error::{Conflict, Error};
use crate::model::{AttributeOwner, Scope, Value};
use crate::model::{
    AuditKind, ChecksumAlgorithm, FleetId, Millis, Package, PackageId, PackageKind, SignedManifest,
    now_ms,
};
use crate::store::ports::{AttributeStore, NameClash, PackageStore};

type Result<T> = std::result::Result<T, Error>;

/// Longest version string, in characters (as a title).
pub const MAX_VERSION: usize = crate::names::MAX_NAME;
/// Where package files live in the data directory, each named by its SHA-256 (backups carry
/// them under the same name).
pub const FILES_DIR: &str = "packages";
/// Longest file name, in characters.
const MAX_FILE_NAME: usize = 255;
/// The piece a package file is read in when it is served. Small enough that a thousand
/// transfers at once hold a few MiB between disk and sockets; large enough that a read is not
/// mostly overhead.
const READ_PIECE: u64 = 16 << 10;

/// What an upload says about the file it carries.
#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NewPackage {
    /// `firmware` (default) or `software`.
    #[serde(default, rename = "type")]
    #[param(rename = "type", value_type = Option<PackageKind>)]
    pub kind: Option<PackageKind>,
    /// 1 to 128 characters after trimming surrounding whitespace, no control characters
    /// (ThingsBoard's `fw_title`). Read after the caller's role is checked, so a caller without
    /// the role learns nothing from a missing title.
    #[serde(default)]
    #[param(
        required = true,
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub title: String,
    /// As `title` (`fw_version`); unique with the title, per type.
    #[serde(default)]
    #[param(
        required = true,
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub version: String,
    /// Only this fleet's devices may be given it; absent: any fleet (server admins only).
    #[serde(default)]
    pub fleet_id: Option<FleetId>,
    /// The checksum devices verify: `SHA256` (default), `SHA384`, `SHA512`, `MD5`, `CRC32`,
    /// `MURMUR3_32` or `MURMUR3_128`. The last three fail the ThingsBoard SDK's check for
    /// about 1 image in 256 (see docs/ota.md).
    #[serde(default)]
    #[param(
        value_type = Option<String>,
        pattern = "^(|[Mm][Dd]5|[Ss][Hh][Aa](256|384|512)|[Cc][Rr][Cc]32|[Mm][Uu][Rr][Mm][Uu][Rr]3_(32|128))$"
    )]
    pub checksum_algorithm: Option<String>,
    /// The name devices and downloads see (at most 255 characters, no control characters,
    /// slashes or quotes); default `<title>-<version>.bin`.
    #[serde(default)]
    #[param(pattern = r#"^[^/\\"\u0000-\u001f\u007f-\u009f]{0,255}$"#)]
    pub file_name: Option<String>,
}

/// Which packages a listing returns.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PackageFilter {
    /// Only this type.
    #[serde(default, rename = "type")]
    #[param(rename = "type", value_type = Option<PackageKind>)]
    pub kind: Option<PackageKind>,
    /// Only packages for this fleet, and those for any fleet.
    #[serde(default)]
    pub fleet_id: Option<FleetId>,
    /// Only this title.
    #[serde(default)]
    pub title: Option<String>,
}

/// A package as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PackageView {
    pub id: PackageId,
    #[serde(rename = "type")]
    pub kind: PackageKind,
    pub title: String,
    pub version: String,
    /// The fleet it is for; absent: any fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<FleetId>,
    pub file_name: String,
    pub content_type: String,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// What devices are told to verify (`fw_checksum_algorithm`).
    #[schema(value_type = String, example = "SHA256")]
    pub checksum_algorithm: ChecksumAlgorithm,
    /// Lowercase hex, in the byte order ThingsBoard devices expect (`fw_checksum`).
    pub checksum: String,
    pub created_at: Millis,
    pub created_by: String,
    /// What the operator should know, such as a checksum algorithm the ThingsBoard SDK
    /// verifies unreliably.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Its signed manifest, as devices get it (`fw_manifest`, `fw_signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<SignedManifest>,
}

impl From<&Package> for PackageView {
    fn from(p: &Package) -> Self {
        let mut warnings = Vec::new();
        if !checksum::sdk_safe(p.checksum_algorithm) {
            warnings.push(format!(
                "{}: the ThingsBoard SDK drops leading zero bytes of this checksum, so about 1 \
                 image in 256 fails its check; SHA256 is safe",
                p.checksum_algorithm.as_str()
            ));
        }
        Self {
            id: p.id,
            kind: p.kind,
            title: p.title.clone(),
            version: p.version.clone(),
            fleet_id: p.fleet_id,
            file_name: p.file_name.clone(),
            content_type: p.content_type.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
            checksum_algorithm: p.checksum_algorithm,
            checksum: p.checksum.clone(),
            created_at: p.created_at,
            created_by: p.created_by.clone(),
            warnings,
            manifest: p.manifest.clone(),
        }
    }
}

pub struct PackageService {
    store: Arc<dyn PackageStore>,
    /// Read to tell whether a fleet's target names a package (a delete is refused then).
    attributes: Arc<dyn AttributeStore>,
    registry: Arc<Registry>,
    audit: Arc<AuditLog>,
    /// `<data_dir>/packages`: files by SHA-256, and `tmp/` for uploads in progress.
    dir: PathBuf,
    max_bytes: u64,
    /// Serializes the decision that a file is no longer used (a delete) against an upload
    /// that is about to use it.
    files: tokio::sync::Mutex<()>,
    /// Signs and checks packages' manifests.
    manifests: Manifests,
}

fn invalid(field: &'static str, m: impl Into<String>) -> Error {
    Error::invalid(field, m)
}

impl PackageService {
    pub fn new(
        store: Arc<dyn PackageStore>,
        attributes: Arc<dyn AttributeStore>,
        registry: Arc<Registry>,
        audit: Arc<AuditLog>,
        data_dir: &Path,
        max_bytes: u64,
        manifests: Manifests,
    ) -> Self {
        let dir = data_dir.join(FILES_DIR);
        // Uploads that a stop or a crash cut short: nothing refers to them.
        if let Err(e) = std::fs::remove_dir_all(dir.join("tmp"))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "cannot remove partial package uploads");
        }
        Self {
            store,
            attributes,
            registry,
            audit,
            dir,
            max_bytes,
            files: tokio::sync::Mutex::new(()),
            manifests,
        }
    }

    /// The largest file an upload may carry, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Checks what an upload says before its body is read: a refusal costs the client no
    /// transfer.
    pub async fn check_new(&self, new: &NewPackage) -> Result<()> {
        self.validate(new).await.map(drop)
    }

    async fn validate(
        &self,
        new: &NewPackage,
    ) -> Result<(PackageKind, String, String, ChecksumAlgorithm, String)> {
        let kind = new.kind.unwrap_or(PackageKind::Firmware);
        let title = crate::names::check(&new.title, crate::names::MAX_NAME)
            .map_err(|m| invalid("title", m))?;
        let version =
            crate::names::check(&new.version, MAX_VERSION).map_err(|m| invalid("version", m))?;
        let alg = match new.checksum_algorithm.as_deref() {
            None | Some("") => ChecksumAlgorithm::Sha256,
            Some(a) => ChecksumAlgorithm::parse(a).ok_or_else(|| {
                invalid(
                    "checksum_algorithm",
                    "one of MD5, SHA256, SHA384, SHA512, CRC32, MURMUR3_32, MURMUR3_128",
                )
            })?,
        };
        let file_name = match new.file_name.as_deref().map(str::trim) {
            None | Some("") => format!("{title}-{version}.bin"),
            Some(n) => n.to_string(),
        };
        if file_name.chars().count() > MAX_FILE_NAME
            || file_name
                .chars()
                .any(|c| c.is_control() || matches!(c, '/' | '\\' | '"'))
        {
            return Err(invalid(
                "file_name",
                "at most 255 characters, without control characters, slashes or quotes",
            ));
        }
        if let Some(f) = new.fleet_id {
            self.registry.fleet(f).await?;
        }
        if self
            .store
            .package_by_version(kind, &title, &version)
            .await?
            .is_some()
        {
            return Err(taken(kind, &title, &version));
        }
        Ok((kind, title, version, alg, file_name))
    }

    /// Stores a package from `body`, hashing it on the way. Refused whole (nothing kept) when
    /// the body is empty, over the cap, or cut off.
    pub async fn upload<S, E>(&self, new: NewPackage, mut body: S, by: &str) -> Result<PackageView>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (kind, title, version, alg, file_name) = self.validate(&new).await?;
        let tmp_dir = self.dir.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(io)?;
        let tmp = tmp_dir.join(format!("{}.part", PackageId::new()));
        // Removes the partial file on every way out but success.
        let mut guard = TempFile(Some(tmp.clone()));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut hashing = Hashing::new(alg);
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| invalid("body", format!("the upload broke off: {e}")))?;
            size += chunk.len() as u64;
            if size > self.max_bytes {
                return Err(Error::TooLarge {
                    what: "the package",
                    limit: self.max_bytes,
                });
            }
            hashing.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        if size == 0 {
            return Err(invalid("body", "the package file is empty"));
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        let (sha256, device) = hashing.finish();
        let checksum = match device {
            Some(c) => c,
            None if alg == ChecksumAlgorithm::Sha256 => sha256.clone(),
            None => {
                let path = tmp.clone();
                tokio::task::spawn_blocking(move || {
                    checksum::of_reader(
                        alg,
                        &mut std::io::BufReader::new(std::fs::File::open(path)?),
                    )
                })
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(io)?
            }
        };
        let pkg = Package {
            id: PackageId::new(),
            kind,
            title,
            version,
            fleet_id: new.fleet_id,
            file_name,
            content_type: "application/octet-stream".into(),
            size,
            sha256,
            checksum_algorithm: alg,
            checksum,
            created_at: now_ms(),
            created_by: by.to_string(),
            manifest: None,
        };
        let pkg = Package {
            manifest: Some(self.manifests.sign(&pkg)),
            ..pkg
        };
        let _files = self.files.lock().await;
        let path = self.file_path(&pkg.sha256);
        if tokio::fs::try_exists(&path).await.map_err(io)? {
            // The same bytes are there already (another package): keep that file.
            drop(guard);
        } else {
            tokio::fs::rename(&tmp, &path).await.map_err(io)?;
            guard.0 = None;
            sync_dir(&self.dir).await?;
        }
        if let Err(NameClash) = self.store.add_package(&pkg).await? {
            self.forget_file_if_unused(&pkg.sha256).await?;
            return Err(taken(pkg.kind, &pkg.title, &pkg.version));
        }
        self.audit.record(
            Entry::new(AuditKind::PackageUploaded, by)
                .detail(format!(
                    "{} {} {} ({} bytes, sha256 {})",
                    pkg.kind.as_str(),
                    pkg.title,
                    pkg.version,
                    pkg.size,
                    pkg.sha256
                ))
                .fleet_opt(pkg.fleet_id),
        );
        self.store.commit().await?;
        tracing::info!(package = %pkg.id, title = %pkg.title, version = %pkg.version, size = pkg.size, "package stored");
        Ok(PackageView::from(&pkg))
    }

    pub async fn record(&self, id: PackageId) -> Result<Package> {
        self.store
            .get_package(id)
            .await?
            .ok_or(Error::NotFound("package"))
    }

    pub async fn get(&self, id: PackageId) -> Result<PackageView> {
        Ok(PackageView::from(&self.record(id).await?))
    }

    /// Packages that match `f` and that `visible` lets through, newest first.
    pub async fn list(
        &self,
        f: &PackageFilter,
        visible: impl Fn(&Package) -> bool,
    ) -> Result<Vec<PackageView>> {
        let mut out: Vec<PackageView> = self
            .store
            .packages()
            .await?
            .iter()
            .filter(|p| {
                f.kind.is_none_or(|k| p.kind == k)
                    && f.fleet_id
                        .is_none_or(|fl| p.fleet_id.is_none_or(|x| x == fl))
                    && f.title.as_deref().is_none_or(|t| p.title == t)
                    && visible(p)
            })
            .map(PackageView::from)
            .collect();
        out.reverse();
        Ok(out)
    }

    /// The package of `kind` titled `title` at `version` that a device of `fleet` may have.
    pub async fn find(
        &self,
        kind: PackageKind,
        fleet: FleetId,
        title: &str,
        version: &str,
    ) -> Result<Option<Package>> {
        // One index lookup: this runs for every chunk a device asks for.
        Ok(self
            .store
            .package_by_version(kind, title, version)
            .await?
            .filter(|p| p.fleet_id.is_none_or(|f| f == fleet)))
    }

    /// The first byte and the length of chunk `chunk` of `size` bytes of the package's file
    /// (the whole file when `size` is 0); the length is 0 past the end. Nothing is read: the
    /// caller checks the length against what its transport can carry first.
    pub fn chunk_range(p: &Package, size: u64, chunk: u64) -> (u64, u64) {
        if size == 0 {
            return if chunk > 0 { (0, 0) } else { (0, p.size) };
        }
        let start = size.saturating_mul(chunk);
        if start >= p.size {
            return (p.size, 0);
        }
        (start, size.min(p.size - start))
    }

    /// `len` bytes of the package's file from `start`, read from disk in pieces of
    /// `READ_PIECE` bytes as the consumer takes them: serving a file to many devices at once
    /// holds a piece per transfer, never a copy of the file or the chunk per device.
    pub async fn read(
        &self,
        p: &Package,
        start: u64,
        len: u64,
    ) -> Result<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = self.open(p).await?;
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(io)?;
        }
        Ok(
            futures_util::stream::unfold((file, len), |(mut file, left)| async move {
                if left == 0 {
                    return None;
                }
                let n = READ_PIECE.min(left);
                let mut buf = vec![0u8; n as usize];
                match file.read_exact(&mut buf).await {
                    Ok(_) => Some((Ok(Bytes::from(buf)), (file, left - n))),
                    // A file shorter than its record: the stream ends with the error.
                    Err(e) => Some((Err(e), (file, 0))),
                }
            })
            .boxed(),
        )
    }

    /// The package's file, for reading.
    pub async fn open(&self, p: &Package) -> Result<tokio::fs::File> {
        tokio::fs::File::open(self.file_path(&p.sha256))
            .await
            .map_err(|e| {
                tracing::error!(package = %p.id, error = %e, "a package's file is missing");
                Error::Internal(format!("the package file cannot be read: {e}"))
            })
    }

    /// The shared attributes that make `p` a device's target, as ThingsBoard sends them in one
    /// message: title, version, exact size, checksum algorithm and checksum; and the signed
    /// manifest (`fw_manifest`, `fw_signature`), which ThingsBoard devices ignore.
    pub fn target_attributes(p: &Package) -> Vec<(String, Value)> {
        let k = |s: &str| format!("{}_{s}", p.kind.prefix());
        let mut v = vec![
            (k("title"), Value::Str(p.title.clone())),
            (k("version"), Value::Str(p.version.clone())),
            (k("size"), Value::Long(p.size as i64)),
            (
                k("checksum_algorithm"),
                Value::Str(p.checksum_algorithm.as_str().to_string()),
            ),
            (k("checksum"), Value::Str(p.checksum.clone())),
        ];
        if let Some(m) = &p.manifest {
            v.push((k("manifest"), Value::Str(m.manifest.clone())));
            v.push((k("signature"), Value::Str(m.signature.clone())));
        }
        v
    }

    /// The keys `target_attributes` sets for `kind`.
    pub fn target_keys(kind: PackageKind) -> Vec<String> {
        [
            "title",
            "version",
            "size",
            "checksum_algorithm",
            "checksum",
            "manifest",
            "signature",
        ]
        .iter()
        .map(|s| format!("{}_{s}", kind.prefix()))
        .collect()
    }

    /// The keys that sign manifests (`GET /ota/keys`).
    pub fn manifest_keys(&self) -> Vec<super::manifest::ManifestKeyView> {
        self.manifests.keys()
    }

    /// Signs the packages stored before manifests existed (at start).
    pub async fn sign_unsigned(&self) -> Result<usize> {
        let mut n = 0;
        for p in self.store.packages().await? {
            if p.manifest.is_none() {
                let signed = Package {
                    manifest: Some(self.manifests.sign(&p)),
                    ..p
                };
                self.store.update_package(&signed).await?;
                n += 1;
            }
        }
        if n > 0 {
            self.store.commit().await?;
        }
        Ok(n)
    }

    /// Checks that a package's manifest verifies (before a campaign starts with it).
    pub fn check_manifest(&self, p: &Package) -> Result<()> {
        let m = p
            .manifest
            .as_ref()
            .ok_or_else(|| Error::conflict("the package has no signed manifest yet"))?;
        self.manifests.verify(p, m).map_err(|e| {
            Error::conflict(format!(
                "the package's manifest does not verify ({e}): upload a manifest signed by a trusted key"
            ))
        })
    }

    /// Replaces a package's manifest with one signed offline; refused (422) unless it verifies
    /// with a trusted key and describes the package. Recorded in the audit log.
    pub async fn set_manifest(
        &self,
        id: PackageId,
        m: SignedManifest,
        by: &str,
    ) -> Result<Package> {
        if m.manifest.len() > 4096 || m.signature.len() > 256 {
            return Err(invalid(
                "manifest",
                "a manifest is at most 4096 bytes, a signature 256",
            ));
        }
        let p = self.record(id).await?;
        self.manifests.verify(&p, &m)?;
        let p = Package {
            manifest: Some(m),
            ..p
        };
        self.store.update_package(&p).await?;
        self.audit.record(
            Entry::new(AuditKind::PackageManifestSet, by)
                .detail(format!("{} {} {}", p.kind.as_str(), p.title, p.version))
                .fleet_opt(p.fleet_id),
        );
        self.store.commit().await?;
        Ok(p)
    }

    /// The fleet's target package of `kind`: the package its shared `fw_title` and
    /// `fw_version` (`sw_*`) name, if it exists.
    pub async fn fleet_target(&self, fleet: FleetId, kind: PackageKind) -> Result<Option<Package>> {
        let keys = [
            format!("{}_title", kind.prefix()),
            format!("{}_version", kind.prefix()),
        ];
        let got = self
            .attributes
            .get_attributes(AttributeOwner::Fleet(fleet), Scope::Shared, Some(&keys))
            .await?;
        let text = |k: &str| {
            got.iter()
                .find(|(n, _, _)| n == k)
                .and_then(|(_, _, v)| match v {
                    Value::Str(s) => Some(s.clone()),
                    _ => None,
                })
        };
        match (text(&keys[0]), text(&keys[1])) {
            (Some(t), Some(v)) => self.find(kind, fleet, &t, &v).await,
            _ => Ok(None),
        }
    }

    /// The fleets whose target is `p`.
    async fn targeted_by(&self, p: &Package) -> Result<Vec<FleetId>> {
        let keys = [
            format!("{}_title", p.kind.prefix()),
            format!("{}_version", p.kind.prefix()),
        ];
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .registry
                .list_fleets(None, None, after.as_ref(), 1000)
                .await?;
            for f in &page.items {
                if p.fleet_id.is_some_and(|x| x != f.id) {
                    continue;
                }
                let got = self
                    .attributes
                    .get_attributes(AttributeOwner::Fleet(f.id), Scope::Shared, Some(&keys))
                    .await?;
                let is = |k: &str, want: &str| {
                    got.iter()
                        .any(|(n, _, v)| n == k && matches!(v, Value::Str(s) if s == want))
                };
                if is(&keys[0], &p.title) && is(&keys[1], &p.version) {
                    out.push(f.id);
                }
            }
            match page.next_cursor {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        Ok(out)
    }

    /// Deletes a package; its file goes too unless another package has the same bytes.
    /// Refused (409) while a fleet's target names it.
    pub async fn delete(&self, id: PackageId, by: &str) -> Result<()> {
        let p = self.record(id).await?;
        let fleets = self.targeted_by(&p).await?;
        if let Some(f) = fleets.first() {
            return Err(Error::conflict(format!(
                "fleet {f} has this package as its {} target: unassign it first",
                p.kind.as_str()
            )));
        }
        self.store.delete_package(&p).await?;
        self.audit.record(
            Entry::new(AuditKind::PackageDeleted, by)
                .detail(format!("{} {} {}", p.kind.as_str(), p.title, p.version))
                .fleet_opt(p.fleet_id),
        );
        self.store.commit().await?;
        let _files = self.files.lock().await;
        self.forget_file_if_unused(&p.sha256).await
    }

    /// Removes the file of `sha256` when no package uses it (the caller holds `files`).
    async fn forget_file_if_unused(&self, sha256: &str) -> Result<()> {
        if self
            .store
            .packages()
            .await?
            .iter()
            .any(|p| p.sha256 == sha256)
        {
            return Ok(());
        }
        match tokio::fs::remove_file(self.file_path(sha256)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    fn file_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }
}

fn taken(kind: PackageKind, title: &str, version: &str) -> Error {
    Error::Conflict(Conflict::NameTaken {
        kind: "package",
        name: format!("{} {title} {version}", kind.as_str()),
    })
}

fn io(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::StorageFull {
        return Error::Store(crate::store::ports::StoreError::DiskFull {
            path: PathBuf::from(FILES_DIR),
        });
    }
    Error::Internal(format!("package file: {e}"))
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(io)
}

/// A partial upload, removed when dropped unless taken.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
