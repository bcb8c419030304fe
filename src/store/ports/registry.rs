//! The registry's storage: workspaces, fleets, devices and their connection history.

use futures_util::future::BoxFuture;

use super::{Cursor, DeviceClash, Durable, NameClash, Page, Result};
use crate::model::{
    ConnectionEvent, Credential, Device, DeviceId, Fleet, FleetId, Workspace, WorkspaceId,
};

/// Workspaces, fleets and devices. Names are unique per parent (a `NameClash` stores nothing);
/// listings page by the cursor the previous page returned and keep what `keep` accepts.
pub trait RegistryStore: Durable {
    /// Stores a workspace; `old_name` is its name before the change (a rename).
    fn put_workspace(
        &self,
        ws: &Workspace,
        old_name: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>>;
    fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>>;
    fn list_workspaces(
        &self,
        after: Option<&Cursor>,
        limit: usize,
        keep: &dyn Fn(&Workspace) -> bool,
    ) -> Result<Page<Workspace>>;
    /// Deletes an empty workspace; false (and nothing deleted) while it has fleets.
    fn delete_workspace(&self, ws: &Workspace) -> Result<bool>;

    fn put_fleet(
        &self,
        fleet: &Fleet,
        old_name: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>>;
    fn get_fleet(&self, id: FleetId) -> Result<Option<Fleet>>;
    fn list_fleets(
        &self,
        after: Option<&Cursor>,
        limit: usize,
        keep: &dyn Fn(&Fleet) -> bool,
    ) -> Result<Page<Fleet>>;
    /// Deletes an empty fleet with its provisioning settings and its attributes; false (and
    /// nothing deleted) while it has devices.
    fn delete_fleet(&self, fleet: &Fleet) -> Result<bool>;

    /// Stores a new device with its first credentials, atomically: a name or credential clash
    /// stores nothing.
    fn create_device(
        &self,
        dev: &Device,
        creds: &[Credential],
    ) -> Result<std::result::Result<(), DeviceClash>>;
    /// Replaces a device's record; `old` is the record it replaces (for a rename).
    fn update_device(
        &self,
        dev: &Device,
        old: &Device,
    ) -> Result<std::result::Result<(), NameClash>>;
    fn get_device(&self, id: DeviceId) -> Result<Option<Device>>;
    /// Changes a stored device record in place (a no-op for a device that is gone).
    fn update_device_record(&self, id: DeviceId, update: &dyn Fn(&mut Device)) -> Result<()>;
    fn device_by_name(&self, ws: WorkspaceId, name: &str) -> Result<Option<Device>>;
    fn list_devices(
        &self,
        fleet: Option<FleetId>,
        after: Option<&Cursor>,
        limit: usize,
        keep: &dyn Fn(&Device) -> bool,
    ) -> Result<Page<Device>>;
    /// Deletes a device and everything that is its own: credentials, telemetry, attributes,
    /// jobs, conditions and connection history.
    fn delete_device<'a>(&'a self, dev: &'a Device) -> BoxFuture<'a, Result<()>>;

    /// Updates a device's bookkeeping fields (connect times, last activity) in the
    /// background, in order with other background writes; best effort, durable with the next
    /// commit. For connection threads, which must never wait for the disk.
    fn update_device_later(&self, id: DeviceId, update: Box<dyn Fn(&mut Device) + Send>);
    /// Appends to a device's connection history in the background (as `update_device_later`).
    fn append_connection_later(&self, id: DeviceId, event: ConnectionEvent);
    /// A device's recent connections, newest first.
    fn connections(&self, device: DeviceId) -> Result<Vec<ConnectionEvent>>;
}
