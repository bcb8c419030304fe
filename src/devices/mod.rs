//! Devices: the registry of workspaces, fleets and devices, their live presence, and the
//! ThingsBoard-compatible device protocol (topics and payloads) shared by every transport.

pub mod presence;
pub mod protocol;
pub mod registry;

pub use presence::Presence;
pub use registry::{Registry, RegistryError};
