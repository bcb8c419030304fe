//! Over-the-air updates: firmware and software packages (`packages`) and their checksums as
//! ThingsBoard devices verify them (`checksum`), signed manifests (`manifest`); campaigns that roll a package out to a fleet
//! (`campaigns`: what operators ask and see) and the per-device update state machine that
//! runs them (`engine`).

pub mod campaigns;
pub mod checksum;
pub mod engine;
pub mod manifest;
pub mod packages;

pub use campaigns::{CampaignService, CampaignView, DeviceUpdateView, DryRun, NewCampaign};
pub use packages::{NewPackage, PackageFilter, PackageService, PackageView};
