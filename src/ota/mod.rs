//! Over-the-air updates: firmware and software packages (`packages`) and their checksums as
//! ThingsBoard devices verify them (`checksum`). Campaigns and the device protocol build on
//! these.

pub mod checksum;
pub mod packages;

pub use packages::{NewPackage, PackageFilter, PackageService, PackageView};
