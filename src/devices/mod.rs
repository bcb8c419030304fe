//! Devices: the registry of workspaces, fleets and devices, their credentials and provisioning,
//! live presence and sessions, and the ThingsBoard-compatible device protocol (topics and
//! payloads) shared by every transport.

pub mod attributes;
pub mod credentials;
pub mod presence;
pub mod protocol;
pub mod provisioning;
pub mod rates;
pub mod registry;
pub mod rpc;
pub mod sessions;
pub mod trace;
pub mod views;

pub use presence::Presence;
pub use registry::Registry;
pub mod csv;
pub mod import;
