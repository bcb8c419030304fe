//! The registry's storage: workspaces, fleets, devices and their connection history.

use futures_util::future::BoxFuture;

use super::{Cursor, DeviceClash, Durable, Fut, NameClash, Page, Result};
use crate::model::{
    ConnectionEvent, Credential, Device, DeviceId, Fleet, FleetId, Workspace, WorkspaceId,
};

/// Workspaces, fleets and devices. Names are unique per parent (a `NameClash` stores nothing);
/// listings page by the cursor the previous page returned and keep what `keep` accepts.
pub trait RegistryStore: Durable {
    /// Stores a workspace; `old_name` is its name before the change (a rename).
    fn put_workspace<'a>(
        &'a self,
        ws: &'a Workspace,
        old_name: Option<&'a str>,
    ) -> Fut<'a, std::result::Result<(), NameClash>>;
    fn get_workspace<'a>(&'a self, id: WorkspaceId) -> Fut<'a, Option<Workspace>>;
    fn list_workspaces<'a>(
        &'a self,
        after: Option<&'a Cursor>,
        limit: usize,
        keep: &'a (dyn Fn(&Workspace) -> bool + Sync),
    ) -> Fut<'a, Page<Workspace>>;
    /// Deletes an empty workspace; false (and nothing deleted) while it has fleets.
    fn delete_workspace<'a>(&'a self, ws: &'a Workspace) -> Fut<'a, bool>;

    fn put_fleet<'a>(
        &'a self,
        fleet: &'a Fleet,
        old_name: Option<&'a str>,
    ) -> Fut<'a, std::result::Result<(), NameClash>>;
    fn get_fleet<'a>(&'a self, id: FleetId) -> Fut<'a, Option<Fleet>>;
    fn list_fleets<'a>(
        &'a self,
        after: Option<&'a Cursor>,
        limit: usize,
        keep: &'a (dyn Fn(&Fleet) -> bool + Sync),
    ) -> Fut<'a, Page<Fleet>>;
    /// Deletes an empty fleet with its provisioning settings and its attributes; false (and
    /// nothing deleted) while it has devices.
    fn delete_fleet<'a>(&'a self, fleet: &'a Fleet) -> Fut<'a, bool>;

    /// Stores a new device with its first credentials, atomically: a name or credential clash
    /// stores nothing.
    fn create_device<'a>(
        &'a self,
        dev: &'a Device,
        creds: &'a [Credential],
    ) -> Fut<'a, std::result::Result<(), DeviceClash>>;
    /// Replaces a device's record; `old` is the record it replaces (for a rename).
    fn update_device<'a>(
        &'a self,
        dev: &'a Device,
        old: &'a Device,
    ) -> Fut<'a, std::result::Result<(), NameClash>>;
    fn get_device<'a>(&'a self, id: DeviceId) -> Fut<'a, Option<Device>>;
    /// Changes a stored device record in place (a no-op for a device that is gone).
    fn update_device_record<'a>(
        &'a self,
        id: DeviceId,
        update: &'a (dyn Fn(&mut Device) + Sync),
    ) -> Fut<'a, ()>;
    fn device_by_name<'a>(&'a self, ws: WorkspaceId, name: &'a str) -> Fut<'a, Option<Device>>;
    fn list_devices<'a>(
        &'a self,
        fleet: Option<FleetId>,
        after: Option<&'a Cursor>,
        limit: usize,
        keep: &'a (dyn Fn(&Device) -> bool + Sync),
    ) -> Fut<'a, Page<Device>>;
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
    fn connections<'a>(&'a self, device: DeviceId) -> Fut<'a, Vec<ConnectionEvent>>;
}
