//! The OTA area's storage: firmware and software packages (their metadata; the files are the
//! package service's).

use super::{Durable, Fut, NameClash};
use crate::model::{Package, PackageId, PackageKind};

pub trait PackageStore: Durable {
    /// Stores a new package; one of the same kind, title and version is a clash (nothing is
    /// stored).
    fn add_package<'a>(&'a self, p: &'a Package) -> Fut<'a, std::result::Result<(), NameClash>>;
    /// Replaces a stored package's record (its kind, title and version unchanged).
    fn update_package<'a>(&'a self, p: &'a Package) -> Fut<'a, ()>;
    fn get_package<'a>(&'a self, id: PackageId) -> Fut<'a, Option<Package>>;
    /// The package of this kind, title and version.
    fn package_by_version<'a>(
        &'a self,
        kind: PackageKind,
        title: &'a str,
        version: &'a str,
    ) -> Fut<'a, Option<Package>>;
    /// Every package, oldest first.
    fn packages<'a>(&'a self) -> Fut<'a, Vec<Package>>;
    fn delete_package<'a>(&'a self, p: &'a Package) -> Fut<'a, ()>;
}
