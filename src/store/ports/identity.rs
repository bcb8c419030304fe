//! Identity's storage: device credentials, fleet provisioning settings and manufacturer CAs.

use super::{CredentialClash, CredentialKey, Durable, Fut, NameClash};
use crate::model::{
    Credential, CredentialId, DeviceId, FleetCa, FleetCaId, FleetId, FleetProvisioning,
};

/// Credentials are found by what a device presents (`CredentialKey`), unique across the
/// server: a clash stores nothing.
pub trait IdentityStore: Durable {
    fn add_credential<'a>(
        &'a self,
        cred: &'a Credential,
    ) -> Fut<'a, std::result::Result<(), CredentialClash>>;
    fn update_credential<'a>(&'a self, cred: &'a Credential) -> Fut<'a, ()>;
    fn delete_credential<'a>(&'a self, cred: &'a Credential) -> Fut<'a, ()>;
    fn credentials_of<'a>(&'a self, device: DeviceId) -> Fut<'a, Vec<Credential>>;
    fn get_credential<'a>(
        &'a self,
        device: DeviceId,
        id: CredentialId,
    ) -> Fut<'a, Option<Credential>>;
    fn find_credential<'a>(&'a self, key: CredentialKey<'a>) -> Fut<'a, Option<Credential>>;
    /// Every credential `keep` accepts (a maintenance scan: expiry, rotation).
    fn scan_credentials<'a>(
        &'a self,
        keep: &'a (dyn Fn(&Credential) -> bool + Sync),
    ) -> Fut<'a, Vec<Credential>>;

    /// Stores a fleet's provisioning settings; the key is unique across fleets.
    fn put_provisioning<'a>(
        &'a self,
        p: &'a FleetProvisioning,
        old_key: Option<&'a str>,
    ) -> Fut<'a, std::result::Result<(), NameClash>>;
    fn provisioning_of<'a>(&'a self, fleet: FleetId) -> Fut<'a, Option<FleetProvisioning>>;
    fn provisioning_by_key<'a>(&'a self, key: &'a str) -> Fut<'a, Option<FleetProvisioning>>;
    fn delete_provisioning<'a>(&'a self, fleet: FleetId) -> Fut<'a, ()>;

    fn put_fleet_ca<'a>(&'a self, ca: &'a FleetCa) -> Fut<'a, ()>;
    /// The manufacturer CAs of one fleet, or of every fleet.
    fn fleet_cas<'a>(&'a self, fleet: Option<FleetId>) -> Fut<'a, Vec<FleetCa>>;
    fn delete_fleet_ca<'a>(&'a self, fleet: FleetId, id: FleetCaId) -> Fut<'a, bool>;
}
