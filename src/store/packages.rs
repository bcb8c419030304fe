//! Firmware and software packages: `packages` holds `package id → record`, `package_keys`
//! maps `kind \0 title \0 version` to its id, so a title and version are unique per kind. The
//! files are not here: the package service keeps them in the data directory.

use super::codec::{decode_json, encode_json};
use super::registry::{NameClash, put_named};
use super::{Db, Result};
use crate::model::{Package, PackageId, PackageKind};

/// The unique key of a package: its kind, title and version.
fn key(p: &Package) -> Vec<u8> {
    key_of(p.kind, &p.title, &p.version)
}

fn key_of(kind: PackageKind, title: &str, version: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(title.len() + version.len() + 12);
    k.extend_from_slice(kind.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(title.as_bytes());
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

impl Db {
    /// Stores a new package; another of the same kind, title and version is a clash.
    pub fn add_package(&self, p: &Package) -> Result<std::result::Result<(), NameClash>> {
        let t = self.trees();
        put_named(
            &t.packages,
            &t.package_keys,
            p.id.as_bytes(),
            &key(p),
            None,
            encode_json(p),
        )
    }

    /// Replaces a package's record; its kind, title and version (its unique key) stay.
    pub fn update_package(&self, p: &Package) -> Result<()> {
        self.trees()
            .packages
            .insert(p.id.as_bytes(), encode_json(p))?;
        Ok(())
    }

    pub fn get_package(&self, id: PackageId) -> Result<Option<Package>> {
        match self.trees().packages.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => decode_json("packages", &v).map(Some),
        }
    }

    /// The package of this kind, title and version (one index lookup).
    pub fn package_by_version(
        &self,
        kind: PackageKind,
        title: &str,
        version: &str,
    ) -> Result<Option<Package>> {
        let t = self.trees();
        match t
            .package_keys
            .get(key_of(kind, title, version))?
            .and_then(|v| PackageId::from_slice(&v))
        {
            None => Ok(None),
            Some(id) => self.get_package(id),
        }
    }

    /// Every package, oldest first.
    pub fn packages(&self) -> Result<Vec<Package>> {
        self.trees()
            .packages
            .iter()
            .map(|kv| decode_json("packages", &kv?.1))
            .collect()
    }

    pub fn delete_package(&self, p: &Package) -> Result<()> {
        let t = self.trees();
        t.packages.remove(p.id.as_bytes())?;
        t.package_keys.remove(key(p))?;
        Ok(())
    }
}
