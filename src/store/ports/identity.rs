//! Identity's storage: device credentials, fleet provisioning settings and manufacturer CAs.

use super::{CredentialClash, CredentialKey, Durable, NameClash, Result};
use crate::model::{
    Credential, CredentialId, DeviceId, FleetCa, FleetCaId, FleetId, FleetProvisioning,
};

/// Credentials are found by what a device presents (`CredentialKey`), unique across the
/// server: a clash stores nothing.
pub trait IdentityStore: Durable {
    fn add_credential(&self, cred: &Credential)
    -> Result<std::result::Result<(), CredentialClash>>;
    fn update_credential(&self, cred: &Credential) -> Result<()>;
    fn delete_credential(&self, cred: &Credential) -> Result<()>;
    fn credentials_of(&self, device: DeviceId) -> Result<Vec<Credential>>;
    fn get_credential(&self, device: DeviceId, id: CredentialId) -> Result<Option<Credential>>;
    fn find_credential(&self, key: CredentialKey<'_>) -> Result<Option<Credential>>;
    /// Every credential `keep` accepts (a maintenance scan: expiry, rotation).
    fn scan_credentials(&self, keep: &dyn Fn(&Credential) -> bool) -> Result<Vec<Credential>>;

    /// Stores a fleet's provisioning settings; the key is unique across fleets.
    fn put_provisioning(
        &self,
        p: &FleetProvisioning,
        old_key: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>>;
    fn provisioning_of(&self, fleet: FleetId) -> Result<Option<FleetProvisioning>>;
    fn provisioning_by_key(&self, key: &str) -> Result<Option<FleetProvisioning>>;
    fn delete_provisioning(&self, fleet: FleetId) -> Result<()>;

    fn put_fleet_ca(&self, ca: &FleetCa) -> Result<()>;
    /// The manufacturer CAs of one fleet, or of every fleet.
    fn fleet_cas(&self, fleet: Option<FleetId>) -> Result<Vec<FleetCa>>;
    fn delete_fleet_ca(&self, fleet: FleetId, id: FleetCaId) -> Result<bool>;
}
