//! The registry service: rules for workspaces, fleets and devices (names, containment,
//! deletion), device access tokens, and device status combining the stored record with live
//! presence. Storage is the store's business; transports call this.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::presence::{Liveness, Presence};
use super::sessions::{CloseReason, Sessions};
use crate::audit::{AuditLog, Entry};
use crate::error::{Conflict, Error};
use crate::model::{
    AuditKind, Credential, Device, DeviceId, Fleet, FleetId, GatewayRole, Millis, Workspace,
    WorkspaceId, now_ms,
};
pub use crate::secrets::secret_hash;
use crate::store::ports::{Cursor, DeviceClash, IdentityStore, NameClash, Page, RegistryStore};

type Result<T> = std::result::Result<T, Error>;

/// Fields of a new workspace.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    /// 1 to 128 characters after trimming surrounding whitespace; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
    /// Days of telemetry to keep (1 to 36500); the server default when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 36500)]
    pub retention_days: Option<u32>,
}

/// Changes to a workspace; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePatch {
    /// 1 to 128 characters after trimming surrounding whitespace; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: Option<String>,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// Days of telemetry to keep (1 to 36500); 0 clears the workspace's own setting.
    #[schema(minimum = 0, maximum = 36500)]
    pub retention_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFleet {
    pub workspace_id: WorkspaceId,
    /// 1 to 128 characters after trimming surrounding whitespace; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetPatch {
    /// 1 to 128 characters after trimming surrounding whitespace; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: Option<String>,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
}

/// What a new device is made from, whoever creates it (an operator, provisioning, a
/// manufacturer CA on first connect).
#[derive(Debug, Clone)]
pub struct DeviceDraft<'a> {
    pub fleet_id: FleetId,
    pub name: &'a str,
    pub label: &'a str,
    /// Created by the device itself through provisioning (sets `provisioned_at`).
    pub provisioned: bool,
    pub gateway: GatewayRole,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub fleet_id: FleetId,
    /// 1 to 128 characters after trimming surrounding whitespace; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub label: String,
    /// The device's first credential; a generated access token when absent.
    #[serde(default)]
    pub credentials: Option<super::credentials::NewCredential>,
    /// A gateway speaks for sub-devices over the ThingsBoard gateway API (`v1/gateway/*`).
    #[serde(default)]
    pub gateway: bool,
    /// For a gateway: the fleet of the workspace that sub-devices of each `type` it names join
    /// when it creates them (others join the gateway's fleet).
    #[serde(default)]
    pub gateway_type_fleets: Option<std::collections::BTreeMap<String, FleetId>>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// 1 to 128 characters after trimming surrounding whitespace; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: Option<String>,
    #[schema(max_length = 1024)]
    pub label: Option<String>,
    /// Move the device to another fleet of the same workspace.
    pub fleet_id: Option<FleetId>,
    pub enabled: Option<bool>,
    /// Make the device a gateway (true) or an ordinary device again (false). A sub-device
    /// stays its gateway's.
    pub gateway: Option<bool>,
    /// For a gateway: the fleet sub-devices of each `type` join when it creates them.
    pub gateway_type_fleets: Option<std::collections::BTreeMap<String, FleetId>>,
}

/// Types a gateway's fleet mapping may name.
const MAX_TYPE_FLEETS: usize = 100;

/// Connection status of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Online,
    Offline,
}

/// A device as the API shows it: the record plus live status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub id: DeviceId,
    pub workspace_id: WorkspaceId,
    pub fleet_id: FleetId,
    pub name: String,
    pub label: String,
    pub enabled: bool,
    pub status: DeviceStatus,
    /// Open connections right now.
    pub connections: u32,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub last_connect_at: Option<Millis>,
    pub last_disconnect_at: Option<Millis>,
    pub last_activity_at: Option<Millis>,
    /// Its part in the ThingsBoard gateway API: `{"role": "none"}`, a gateway with its type
    /// mapping, or a sub-device with its gateway.
    #[serde(default)]
    pub gateway: GatewayRole,
}

/// Filters for listing devices.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub workspace_id: Option<WorkspaceId>,
    pub fleet_id: Option<FleetId>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    pub status: Option<DeviceStatus>,
    /// Case-insensitive substring of the label.
    pub label: Option<String>,
    pub enabled: Option<bool>,
    /// Only devices silent since this time: no activity after it, or none ever.
    pub silent_since: Option<Millis>,
    /// Only sub-devices of this gateway.
    pub gateway_id: Option<DeviceId>,
}

/// The registry service.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    /// For the fleet deletion rule (a fleet with manufacturer CAs is not empty).
    identity: Arc<dyn IdentityStore>,
    presence: Arc<Presence>,
    sessions: Arc<Sessions>,
    audit: Arc<AuditLog>,
}

const MAX_TEXT: usize = 1024;

fn check_name(name: &str) -> Result<String> {
    crate::names::check(name, crate::names::MAX_NAME).map_err(|message| Error::Invalid {
        field: "name",
        message,
    })
}

fn check_text(field: &'static str, s: &str) -> Result<String> {
    if s.chars().count() > MAX_TEXT {
        return Err(Error::Invalid {
            field,
            message: format!("at most {MAX_TEXT} characters"),
        });
    }
    Ok(s.to_string())
}

fn check_retention(days: Option<u32>) -> Result<Option<u32>> {
    match days {
        Some(d) if !(1..=36500).contains(&d) => Err(Error::Invalid {
            field: "retention_days",
            message: "must be 1 to 36500 days".into(),
        }),
        d => Ok(d),
    }
}

fn clash(kind: &'static str, name: &str) -> Error {
    Conflict::NameTaken {
        kind,
        name: name.to_string(),
    }
    .into()
}

impl Registry {
    pub fn new(
        store: Arc<dyn RegistryStore>,
        identity: Arc<dyn IdentityStore>,
        presence: Arc<Presence>,
        sessions: Arc<Sessions>,
        audit: Arc<AuditLog>,
    ) -> Self {
        Self {
            store,
            identity,
            presence,
            sessions,
            audit,
        }
    }

    // ---- workspaces -------------------------------------------------------------------

    pub async fn create_workspace(&self, new: NewWorkspace) -> Result<Workspace> {
        let now = now_ms();
        let ws = Workspace {
            id: WorkspaceId::new(),
            name: check_name(&new.name)?,
            description: check_text("description", &new.description)?,
            created_at: now,
            updated_at: now,
            retention_days: check_retention(new.retention_days)?,
        };
        self.store
            .put_workspace(&ws, None)
            .await?
            .map_err(|NameClash| clash("workspace", &ws.name))?;
        self.store.commit().await?;
        Ok(ws)
    }

    pub async fn workspace(&self, id: WorkspaceId) -> Result<Workspace> {
        self.store
            .get_workspace(id)
            .await?
            .ok_or(Error::NotFound("workspace"))
    }

    pub async fn list_workspaces(
        &self,
        name: Option<&str>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Workspace>> {
        self.list_workspaces_where(name, after, limit, |_| true)
            .await
    }

    /// As `list_workspaces`, keeping only those `visible` accepts (the caller's).
    pub async fn list_workspaces_where(
        &self,
        name: Option<&str>,
        after: Option<&Cursor>,
        limit: usize,
        visible: impl Fn(&Workspace) -> bool + Sync,
    ) -> Result<Page<Workspace>> {
        let needle = name.map(str::to_lowercase);
        Ok(self
            .store
            .list_workspaces(after, limit, &|w| {
                visible(w) && matches_name(&w.name, needle.as_deref())
            })
            .await?)
    }

    pub async fn update_workspace(
        &self,
        id: WorkspaceId,
        patch: WorkspacePatch,
    ) -> Result<Workspace> {
        let old = self.workspace(id).await?;
        let mut ws = old.clone();
        if let Some(n) = &patch.name {
            ws.name = check_name(n)?;
        }
        if let Some(d) = &patch.description {
            ws.description = check_text("description", d)?;
        }
        if let Some(r) = patch.retention_days {
            ws.retention_days = check_retention(Some(r).filter(|r| *r > 0))?;
        }
        ws.updated_at = now_ms();
        self.store
            .put_workspace(&ws, Some(&old.name))
            .await?
            .map_err(|NameClash| clash("workspace", &ws.name))?;
        self.store.commit().await?;
        Ok(ws)
    }

    pub async fn delete_workspace(&self, id: WorkspaceId) -> Result<()> {
        let ws = self.workspace(id).await?;
        if !self.store.delete_workspace(&ws).await? {
            return Err(Error::Conflict(Conflict::NotEmpty("workspace")));
        }
        self.store.commit().await?;
        Ok(())
    }

    // ---- fleets -----------------------------------------------------------------------

    pub async fn create_fleet(&self, new: NewFleet) -> Result<Fleet> {
        self.store
            .get_workspace(new.workspace_id)
            .await?
            .ok_or(Error::NotFound("workspace"))?;
        let now = now_ms();
        let fleet = Fleet {
            id: FleetId::new(),
            workspace_id: new.workspace_id,
            name: check_name(&new.name)?,
            description: check_text("description", &new.description)?,
            created_at: now,
            updated_at: now,
        };
        self.store
            .put_fleet(&fleet, None)
            .await?
            .map_err(|NameClash| clash("fleet", &fleet.name))?;
        self.store.commit().await?;
        Ok(fleet)
    }

    pub async fn fleet(&self, id: FleetId) -> Result<Fleet> {
        self.store
            .get_fleet(id)
            .await?
            .ok_or(Error::NotFound("fleet"))
    }

    pub async fn list_fleets(
        &self,
        workspace: Option<WorkspaceId>,
        name: Option<&str>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Fleet>> {
        self.list_fleets_where(workspace, name, after, limit, |_| true)
            .await
    }

    /// As `list_fleets`, keeping only those `visible` accepts (the caller's).
    pub async fn list_fleets_where(
        &self,
        workspace: Option<WorkspaceId>,
        name: Option<&str>,
        after: Option<&Cursor>,
        limit: usize,
        visible: impl Fn(&Fleet) -> bool + Sync,
    ) -> Result<Page<Fleet>> {
        let needle = name.map(str::to_lowercase);
        Ok(self
            .store
            .list_fleets(after, limit, &|f| {
                workspace.is_none_or(|w| f.workspace_id == w)
                    && visible(f)
                    && matches_name(&f.name, needle.as_deref())
            })
            .await?)
    }

    pub async fn update_fleet(&self, id: FleetId, patch: FleetPatch) -> Result<Fleet> {
        let old = self.fleet(id).await?;
        let mut fleet = old.clone();
        if let Some(n) = &patch.name {
            fleet.name = check_name(n)?;
        }
        if let Some(d) = &patch.description {
            fleet.description = check_text("description", d)?;
        }
        fleet.updated_at = now_ms();
        self.store
            .put_fleet(&fleet, Some(&old.name))
            .await?
            .map_err(|NameClash| clash("fleet", &fleet.name))?;
        self.store.commit().await?;
        Ok(fleet)
    }

    pub async fn delete_fleet(&self, id: FleetId) -> Result<()> {
        let fleet = self.fleet(id).await?;
        // Manufacturer CAs count as content: removing one changes who can join.
        if !self.identity.fleet_cas(Some(id)).await?.is_empty()
            || !self.store.delete_fleet(&fleet).await?
        {
            return Err(Error::Conflict(Conflict::NotEmpty("fleet")));
        }
        self.store.commit().await?;
        Ok(())
    }

    // ---- devices ----------------------------------------------------------------------

    /// Creates a device in `fleet_id` with the credentials `creds` makes for it, atomically:
    /// a name or credential clash stores nothing.
    pub async fn create_device_with(
        &self,
        fleet_id: FleetId,
        name: &str,
        creds: impl FnOnce(&Device) -> Result<Vec<Credential>>,
    ) -> Result<(Device, Vec<Credential>)> {
        let draft = DeviceDraft {
            fleet_id,
            name,
            label: "",
            provisioned: false,
            gateway: Default::default(),
        };
        self.create_device(draft, creds, |_, _| None).await
    }

    /// Creates a device with the credentials `creds` makes for it and the audit record `audit`
    /// describes, as one unit: a name or credential clash stores nothing, and the record, the
    /// credentials and the audit entry are durable together after one commit.
    pub async fn create_device(
        &self,
        draft: DeviceDraft<'_>,
        creds: impl FnOnce(&Device) -> Result<Vec<Credential>>,
        audit: impl FnOnce(&Device, &[Credential]) -> Option<Entry>,
    ) -> Result<(Device, Vec<Credential>)> {
        let fleet = self
            .store
            .get_fleet(draft.fleet_id)
            .await?
            .ok_or(Error::NotFound("fleet"))?;
        let now = now_ms();
        let dev = Device {
            id: DeviceId::new(),
            workspace_id: fleet.workspace_id,
            fleet_id: fleet.id,
            name: check_name(draft.name)?,
            label: check_text("label", draft.label)?,
            enabled: true,
            created_at: now,
            updated_at: now,
            last_connect_at: None,
            last_disconnect_at: None,
            last_activity_at: None,
            provisioned_at: draft.provisioned.then_some(now),
            gateway: draft.gateway,
        };
        let creds = creds(&dev)?;
        self.store
            .create_device(&dev, &creds)
            .await?
            .map_err(|c| match c {
                DeviceClash::Name => clash("device", &dev.name),
                DeviceClash::Credential => Error::Conflict(Conflict::CredentialTaken),
            })?;
        if let Some(e) = audit(&dev, &creds) {
            // Queued on the writer thread ahead of the commit below, so it is durable with it.
            self.audit.record(e);
        }
        self.store.commit().await?;
        Ok((dev, creds))
    }

    /// The device of a workspace with this name.
    pub async fn device_by_name(&self, ws: WorkspaceId, name: &str) -> Result<Option<Device>> {
        Ok(self.store.device_by_name(ws, name).await?)
    }

    /// The live view of a stored device record.
    pub fn view_of(&self, d: Device) -> DeviceView {
        self.view(d)
    }

    pub async fn device(&self, id: DeviceId) -> Result<DeviceView> {
        Ok(self.view(self.device_record(id).await?))
    }

    /// The stored record of a device, if there is one.
    pub async fn find_device(&self, id: DeviceId) -> Result<Option<Device>> {
        Ok(self.store.get_device(id).await?)
    }

    /// Marks a pre-provisioned device as claimed by provisioning (durable with the caller's
    /// commit).
    pub async fn mark_provisioned(&self, id: DeviceId, at: Millis) -> Result<()> {
        Ok(self
            .store
            .update_device_record(id, &move |d| d.provisioned_at = Some(at))
            .await?)
    }

    pub async fn device_record(&self, id: DeviceId) -> Result<Device> {
        self.store
            .get_device(id)
            .await?
            .ok_or(Error::NotFound("device"))
    }

    pub async fn list_devices(
        &self,
        f: &DeviceFilter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<DeviceView>> {
        self.list_devices_where(f, after, limit, |_| true).await
    }

    /// As `list_devices`, keeping only devices `visible` accepts (the caller's).
    pub async fn list_devices_where(
        &self,
        f: &DeviceFilter,
        after: Option<&Cursor>,
        limit: usize,
        visible: impl Fn(&Device) -> bool + Sync,
    ) -> Result<Page<DeviceView>> {
        let keep = self.filter_fn(f);
        let page = self
            .store
            .list_devices(f.fleet_id, after, limit, &|d| visible(d) && keep(d))
            .await?;
        Ok(Page {
            items: page.items.into_iter().map(|d| self.view(d)).collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// Every device matching `f` that `visible` accepts, in creation order, with live
    /// status: for sorted tables, counts and exports. One pass over the devices (the fleet's
    /// index with a `fleet_id`), so the work is linear in the devices scanned.
    pub async fn all_devices_where(
        &self,
        f: &DeviceFilter,
        visible: impl Fn(&Device) -> bool + Sync,
    ) -> Result<Vec<DeviceView>> {
        Ok(self
            .list_devices_where(f, None, usize::MAX, visible)
            .await?
            .items)
    }

    /// How many devices match `f` and pass `visible`, without building their views.
    pub async fn count_devices_where(
        &self,
        f: &DeviceFilter,
        visible: impl Fn(&Device) -> bool + Sync,
    ) -> Result<u64> {
        let keep = self.filter_fn(f);
        let n = std::sync::atomic::AtomicU64::new(0);
        // The predicate counts and keeps nothing, so no record is held past the scan.
        self.store
            .list_devices(f.fleet_id, None, usize::MAX, &|d| {
                if visible(d) && keep(d) {
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                false
            })
            .await?;
        Ok(n.into_inner())
    }

    /// The predicate of a device filter (the fleet is the store's walk, not checked here).
    fn filter_fn(&self, f: &DeviceFilter) -> impl Fn(&Device) -> bool + Sync + '_ {
        let needle = f.name.as_deref().map(str::to_lowercase);
        let label = f.label.as_deref().map(str::to_lowercase);
        let (workspace, status, enabled, silent, gateway) = (
            f.workspace_id,
            f.status,
            f.enabled,
            f.silent_since,
            f.gateway_id,
        );
        move |d: &Device| {
            workspace.is_none_or(|w| d.workspace_id == w)
                && gateway.is_none_or(|g| d.gateway.gateway_of() == Some(g))
                && matches_name(&d.name, needle.as_deref())
                && matches_name(&d.label, label.as_deref())
                && enabled.is_none_or(|e| d.enabled == e)
                && status.is_none_or(|s| self.status_of(d.id) == s)
                && silent.is_none_or(|t| self.last_activity_of(d).is_none_or(|a| a < t))
        }
    }

    /// When a device was last heard from: live presence first, else the stored record.
    fn last_activity_of(&self, d: &Device) -> Option<Millis> {
        match self.presence.get(d.id) {
            Some(l) => Some(l.last_activity),
            None => d.last_activity_at,
        }
    }

    /// Every device matching `f` (all pages), optionally only enabled ones: for fan-out,
    /// fleet queries and sweeps.
    pub async fn device_ids(&self, f: &DeviceFilter, only_enabled: bool) -> Result<Vec<DeviceId>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.list_devices(f, after.as_ref(), 1000).await?;
            out.extend(
                page.items
                    .iter()
                    .filter(|d| d.enabled || !only_enabled)
                    .map(|d| d.id),
            );
            match page.next_cursor {
                Some(c) => after = Some(c),
                None => return Ok(out),
            }
        }
    }

    pub async fn update_device(&self, id: DeviceId, patch: DevicePatch) -> Result<DeviceView> {
        let old = self.device_record(id).await?;
        let mut dev = old.clone();
        if let Some(n) = &patch.name {
            dev.name = check_name(n)?;
        }
        if let Some(l) = &patch.label {
            dev.label = check_text("label", l)?;
        }
        if let Some(fid) = patch.fleet_id {
            let fleet = self
                .store
                .get_fleet(fid)
                .await?
                .ok_or(Error::NotFound("fleet"))?;
            if fleet.workspace_id != dev.workspace_id {
                return Err(Error::Invalid {
                    field: "fleet_id",
                    message: "the fleet belongs to another workspace".into(),
                });
            }
            dev.fleet_id = fid;
        }
        if let Some(e) = patch.enabled {
            dev.enabled = e;
        }
        dev.gateway = self
            .gateway_role(
                dev.workspace_id,
                &dev.gateway,
                patch.gateway,
                patch.gateway_type_fleets,
            )
            .await?;
        dev.updated_at = now_ms();
        self.store
            .update_device(&dev, &old)
            .await?
            .map_err(|NameClash| clash("device", &dev.name))?;
        if old.enabled != dev.enabled {
            let kind = if dev.enabled {
                AuditKind::DeviceEnabled
            } else {
                AuditKind::DeviceDisabled
            };
            self.audit.record(
                Entry::new(kind, crate::audit::operator())
                    .device(dev.id)
                    .fleet(dev.fleet_id),
            );
        }
        self.store.commit().await?;
        if !dev.enabled {
            // After the commit: a session that reconnects now finds the device disabled.
            self.sessions
                .close_device(dev.id, CloseReason::DeviceDisabled);
        }
        Ok(self.view(dev))
    }

    /// A device's gateway role after a request asks for `gateway` and `type_fleets`: the
    /// fleets must be of the device's workspace; a sub-device cannot become a gateway.
    pub async fn gateway_role(
        &self,
        workspace: WorkspaceId,
        current: &GatewayRole,
        gateway: Option<bool>,
        type_fleets: Option<std::collections::BTreeMap<String, FleetId>>,
    ) -> Result<GatewayRole> {
        let invalid = |field, message: &str| Error::Invalid {
            field,
            message: message.into(),
        };
        let is_gateway = gateway.unwrap_or(current.is_gateway());
        if gateway == Some(true) && current.gateway_of().is_some() {
            return Err(invalid("gateway", "a sub-device cannot be a gateway"));
        }
        if !is_gateway {
            if type_fleets.is_some() {
                return Err(invalid("gateway_type_fleets", "only a gateway has them"));
            }
            return Ok(match gateway {
                Some(false) if current.is_gateway() => GatewayRole::None,
                _ => current.clone(),
            });
        }
        let type_fleets = match (type_fleets, current) {
            (Some(m), _) => m,
            (None, GatewayRole::Gateway { type_fleets }) => type_fleets.clone(),
            (None, _) => Default::default(),
        };
        if type_fleets.len() > MAX_TYPE_FLEETS {
            return Err(invalid(
                "gateway_type_fleets",
                &format!("at most {MAX_TYPE_FLEETS} types"),
            ));
        }
        for (t, f) in &type_fleets {
            if t.is_empty() || t.len() > 128 || t.chars().any(char::is_control) {
                return Err(invalid(
                    "gateway_type_fleets",
                    "a type is 1 to 128 characters, no control characters",
                ));
            }
            let fleet = self.store.get_fleet(*f).await?;
            if fleet.is_none_or(|x| x.workspace_id != workspace) {
                return Err(invalid(
                    "gateway_type_fleets",
                    &format!("type {t:?}: no such fleet in the device's workspace"),
                ));
            }
        }
        Ok(GatewayRole::Gateway { type_fleets })
    }

    pub async fn delete_device(&self, id: DeviceId) -> Result<()> {
        let dev = self.device_record(id).await?;
        self.store.delete_device(&dev).await?;
        self.audit.record(
            Entry::new(AuditKind::DeviceDeleted, crate::audit::operator())
                .device(dev.id)
                .fleet(dev.fleet_id)
                .detail(dev.name.clone()),
        );
        self.store.commit().await?;
        self.sessions
            .close_device(dev.id, CloseReason::DeviceDeleted);
        Ok(())
    }

    // ---- device sessions --------------------------------------------------------------

    /// Marks a device connected; the returned liveness is touched on every message. The
    /// stored connect time is written by the store's writer thread: this runs on a connection
    /// thread, which must never wait for the disk.
    pub fn connected(
        &self,
        id: DeviceId,
        transport: &'static str,
        peer: Option<std::net::SocketAddr>,
    ) -> Arc<Liveness> {
        let live = self.presence.connect(id);
        let now = now_ms();
        self.record(id, move |d| d.last_connect_at = Some(now));
        self.history(id, "connected", transport, peer);
        live
    }

    /// Marks one connection of a device closed, saving its last activity.
    pub fn disconnected(
        &self,
        id: DeviceId,
        transport: &'static str,
        peer: Option<std::net::SocketAddr>,
    ) {
        let (last_activity, _went_offline) = self.presence.disconnect(id);
        let now = now_ms();
        self.record(id, move |d| {
            d.last_disconnect_at = Some(now);
            d.last_activity_at = Some(last_activity.max(d.last_activity_at.unwrap_or(0)));
        });
        self.history(id, "disconnected", transport, peer);
    }

    /// Appends to the device's connection history, off the connection's path.
    fn history(
        &self,
        id: DeviceId,
        event: &'static str,
        transport: &'static str,
        peer: Option<std::net::SocketAddr>,
    ) {
        let e = crate::model::ConnectionEvent {
            at: now_ms(),
            event: event.into(),
            transport: transport.into(),
            peer: peer.map(|p| p.to_string()),
        };
        self.store.append_connection_later(id, e);
    }

    /// A device's recent connections, newest first.
    pub async fn connection_history(
        &self,
        id: DeviceId,
    ) -> Result<Vec<crate::model::ConnectionEvent>> {
        self.device_record(id).await?;
        Ok(self.store.connections(id).await?)
    }

    /// Records activity of a device that has no connection (an HTTP device API request).
    pub fn touched(&self, id: DeviceId) {
        let now = now_ms();
        self.record(id, move |d| {
            d.last_activity_at = Some(now.max(d.last_activity_at.unwrap_or(0)))
        });
    }

    /// Saves the last activity of every connected device, so that "last seen" survives a crash
    /// and not only a clean disconnect. Called periodically by the app.
    pub fn persist_activity(&self) {
        for (id, last) in self.presence.activity() {
            self.record(id, move |d| {
                d.last_activity_at = Some(last.max(d.last_activity_at.unwrap_or(0)))
            });
        }
    }

    /// Updates a device's bookkeeping fields in the background; best effort by design.
    fn record(&self, id: DeviceId, update: impl Fn(&mut Device) + Send + 'static) {
        self.store.update_device_later(id, Box::new(update));
    }

    fn status_of(&self, id: DeviceId) -> DeviceStatus {
        if self.presence.get(id).is_some() {
            DeviceStatus::Online
        } else {
            DeviceStatus::Offline
        }
    }

    fn view(&self, d: Device) -> DeviceView {
        let live = self.presence.get(d.id);
        DeviceView {
            status: if live.is_some() {
                DeviceStatus::Online
            } else {
                DeviceStatus::Offline
            },
            connections: live.map_or(0, |l| l.connections),
            last_activity_at: match live {
                Some(l) => Some(l.last_activity),
                None => d.last_activity_at,
            },
            id: d.id,
            workspace_id: d.workspace_id,
            fleet_id: d.fleet_id,
            name: d.name,
            label: d.label,
            enabled: d.enabled,
            created_at: d.created_at,
            updated_at: d.updated_at,
            // While online, presence knows the connect time before the background write lands.
            last_connect_at: live.map(|l| l.connected_at).or(d.last_connect_at),
            last_disconnect_at: d.last_disconnect_at,
            gateway: d.gateway,
        }
    }
}

fn matches_name(name: &str, needle: Option<&str>) -> bool {
    needle.is_none_or(|n| name.to_lowercase().contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::test_util::open_temp;

    fn registry(store: Store) -> Registry {
        let ports = store.ports();
        Registry::new(
            ports.registry,
            ports.identity,
            Arc::new(Presence::default()),
            Arc::new(Sessions::default()),
            Arc::new(AuditLog::new(ports.operators, 1000)),
        )
    }

    async fn device(r: &Registry, fleet: FleetId, name: &str) -> Result<Device> {
        r.create_device_with(fleet, name, |_| Ok(Vec::new()))
            .await
            .map(|(d, _)| d)
    }

    #[tokio::test]
    async fn names_are_unique_per_scope_and_containers_must_be_empty() {
        let (_d, store) = open_temp();
        let r = registry(store);
        let ws = r
            .create_workspace(NewWorkspace {
                name: "Plant".into(),
                description: String::new(),
                retention_days: None,
            })
            .await
            .expect("ws");
        assert!(matches!(
            r.create_workspace(NewWorkspace {
                name: "plant".into(),
                description: String::new(),
                retention_days: None,
            })
            .await,
            Err(Error::Conflict(Conflict::NameTaken { .. }))
        ));
        let fleet = r
            .create_fleet(NewFleet {
                workspace_id: ws.id,
                name: "pumps".into(),
                description: String::new(),
            })
            .await
            .expect("fleet");
        let dev = device(&r, fleet.id, "pump-1").await.expect("device");
        assert!(matches!(
            device(&r, fleet.id, "PUMP-1").await,
            Err(Error::Conflict(Conflict::NameTaken { .. }))
        ));
        assert!(matches!(
            r.delete_fleet(fleet.id).await,
            Err(Error::Conflict(Conflict::NotEmpty(_)))
        ));
        assert!(matches!(
            r.delete_workspace(ws.id).await,
            Err(Error::Conflict(Conflict::NotEmpty(_)))
        ));
        // Rename frees the old name.
        r.update_device(
            dev.id,
            DevicePatch {
                name: Some("pump-2".into()),
                ..Default::default()
            },
        )
        .await
        .expect("rename");
        device(&r, fleet.id, "pump-1")
            .await
            .expect("old name is free");
        let page = r
            .list_devices(
                &DeviceFilter {
                    fleet_id: Some(fleet.id),
                    ..Default::default()
                },
                None,
                1,
            )
            .await
            .expect("list");
        assert_eq!(page.items.len(), 1);
        let next = page.next_cursor.expect("more");
        let page2 = r
            .list_devices(
                &DeviceFilter {
                    fleet_id: Some(fleet.id),
                    ..Default::default()
                },
                Some(&next),
                1,
            )
            .await
            .expect("list");
        assert_eq!(page2.items.len(), 1);
        assert!(page2.next_cursor.is_none());
        r.delete_device(dev.id).await.expect("delete");
        assert!(matches!(r.device(dev.id).await, Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn activity_of_connected_devices_is_persisted() {
        let (_d, store) = open_temp();
        let r = registry(store.clone());
        let ws = r
            .create_workspace(NewWorkspace {
                name: "w".into(),
                description: String::new(),
                retention_days: None,
            })
            .await
            .expect("ws");
        let fleet = r
            .create_fleet(NewFleet {
                workspace_id: ws.id,
                name: "f".into(),
                description: String::new(),
            })
            .await
            .expect("fleet");
        let dev = device(&r, fleet.id, "d").await.expect("device");
        let live = r.connected(dev.id, "mqtt-tls", None);
        live.touch();
        r.persist_activity();
        // Bookkeeping runs on the writer thread before the commit it queues behind.
        store.commit().await.expect("commit");
        let stored = store
            .get_device(dev.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(stored.last_activity_at, Some(live.last_activity()));
        assert!(stored.last_connect_at.is_some());
    }
}
