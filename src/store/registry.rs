//! Registry records: workspaces, fleets, devices, device access tokens and admin API keys,
//! with their name and lookup indexes kept consistent by sled transactions.

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::codec::{concat, decode_json, encode_json};
use super::credentials::{insert_credentials, remove_credentials};
use super::{Cursor, Db, Page, Result, StoreError, cursor_id, id_cursor};
use crate::model::{
    ApiKey, ApiKeyId, Credential, Device, DeviceId, Fleet, FleetId, Workspace, WorkspaceId,
};

/// The name is already used by another record in the same scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameClash;

/// Why a new device could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClash {
    /// Another device of the workspace has the name.
    Name,
    /// Another device answers to one of the credentials.
    Credential,
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

fn name_key(name: &str) -> Vec<u8> {
    // Names are unique case-insensitively: "Pump-1" and "pump-1" would confuse operators.
    name.to_lowercase().into_bytes()
}

fn abort_clash<T>() -> TxResult<std::result::Result<T, NameClash>> {
    Ok(Err(NameClash))
}

impl Db {
    // ---- workspaces -------------------------------------------------------------------

    /// Inserts or updates a workspace, keeping its name unique. `old_name` is the stored name
    /// when updating.
    pub fn put_workspace(
        &self,
        ws: &Workspace,
        old_name: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>> {
        let t = self.trees();
        let old_key = old_name.map(name_key);
        put_named(
            &t.workspaces,
            &t.workspace_names,
            ws.id.as_bytes(),
            &name_key(&ws.name),
            old_key.as_deref(),
            encode_json(ws),
        )
    }

    pub fn get_workspace(&self, id: WorkspaceId) -> Result<Option<Workspace>> {
        get(&self.trees().workspaces, "workspaces", id.as_bytes())
    }

    pub fn list_workspaces(
        &self,
        after: Option<&Cursor>,
        limit: usize,
        pred: impl Fn(&Workspace) -> bool,
    ) -> Result<Page<Workspace>> {
        let after: Option<WorkspaceId> = cursor_id(after)?;
        scan(
            &self.trees().workspaces,
            "workspaces",
            after.map(|a| a.as_bytes().to_vec()),
            limit,
            pred,
            |w| id_cursor(w.id),
        )
    }

    /// Deletes a workspace if it holds no fleet. Returns false when it still has fleets.
    pub fn delete_workspace(&self, ws: &Workspace) -> Result<bool> {
        let t = self.trees();
        if t.fleet_names
            .scan_prefix(ws.id.as_bytes())
            .next()
            .transpose()?
            .is_some()
        {
            return Ok(false);
        }
        (&t.workspaces, &t.workspace_names)
            .transaction(|(recs, names)| {
                recs.remove(ws.id.as_bytes())?;
                names.remove(name_key(&ws.name))?;
                Ok(())
            })
            .map_err(StoreError::from)?;
        Ok(true)
    }

    // ---- fleets -----------------------------------------------------------------------

    pub fn put_fleet(
        &self,
        fleet: &Fleet,
        old_name: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>> {
        let t = self.trees();
        let ws = fleet.workspace_id.as_bytes();
        let new_key = concat(&[ws, &name_key(&fleet.name)]);
        let old_key = old_name.map(|n| concat(&[ws, &name_key(n)]));
        put_named(
            &t.fleets,
            &t.fleet_names,
            fleet.id.as_bytes(),
            &new_key,
            old_key.as_deref(),
            encode_json(fleet),
        )
    }

    pub fn get_fleet(&self, id: FleetId) -> Result<Option<Fleet>> {
        get(&self.trees().fleets, "fleets", id.as_bytes())
    }

    pub fn list_fleets(
        &self,
        after: Option<&Cursor>,
        limit: usize,
        pred: impl Fn(&Fleet) -> bool,
    ) -> Result<Page<Fleet>> {
        let after: Option<FleetId> = cursor_id(after)?;
        scan(
            &self.trees().fleets,
            "fleets",
            after.map(|a| a.as_bytes().to_vec()),
            limit,
            pred,
            |f| id_cursor(f.id),
        )
    }

    /// Deletes a fleet if it holds no device. Returns false when it still has devices.
    pub fn delete_fleet(&self, fleet: &Fleet) -> Result<bool> {
        let t = self.trees();
        if t.fleet_devices
            .scan_prefix(fleet.id.as_bytes())
            .next()
            .transpose()?
            .is_some()
        {
            return Ok(false);
        }
        let key = concat(&[fleet.workspace_id.as_bytes(), &name_key(&fleet.name)]);
        (&t.fleets, &t.fleet_names)
            .transaction(|(recs, names)| {
                recs.remove(fleet.id.as_bytes())?;
                names.remove(key.as_slice())?;
                Ok(())
            })
            .map_err(StoreError::from)?;
        Ok(true)
    }

    // ---- devices ----------------------------------------------------------------------

    /// Inserts a new device with its first credentials.
    pub fn create_device(
        &self,
        dev: &Device,
        new_creds: &[Credential],
    ) -> Result<std::result::Result<(), DeviceClash>> {
        let t = self.trees();
        let name = concat(&[dev.workspace_id.as_bytes(), &name_key(&dev.name)]);
        let membership = concat(&[dev.fleet_id.as_bytes(), dev.id.as_bytes()]);
        let trees = [
            &t.devices,
            &t.device_names,
            &t.fleet_devices,
            &t.credentials,
            &t.cred_index,
        ];
        let res = trees[..].transaction(|tx: &Vec<TransactionalTree>| {
            let [devices, names, members, creds, index] = &tx[..] else {
                return Err(ConflictableTransactionError::Abort(StoreError::Closed));
            };
            if names.get(&name)?.is_some() {
                return Err(ConflictableTransactionError::Abort(StoreError::Clash(
                    DeviceClash::Name,
                )));
            }
            insert_credentials(creds, index, new_creds)?;
            names.insert(name.as_slice(), dev.id.as_bytes())?;
            members.insert(membership.as_slice(), &[])?;
            devices.insert(dev.id.as_bytes(), encode_json(dev))?;
            Ok(())
        });
        match res {
            Ok(()) => Ok(Ok(())),
            Err(TransactionError::Abort(StoreError::Clash(c))) => Ok(Err(c)),
            Err(e) => Err(e.into()),
        }
    }

    /// Updates a device record, moving its name and fleet indexes when those changed.
    pub fn update_device(
        &self,
        dev: &Device,
        old: &Device,
    ) -> Result<std::result::Result<(), NameClash>> {
        let t = self.trees();
        let new_name = concat(&[dev.workspace_id.as_bytes(), &name_key(&dev.name)]);
        let old_name = concat(&[old.workspace_id.as_bytes(), &name_key(&old.name)]);
        let new_member = concat(&[dev.fleet_id.as_bytes(), dev.id.as_bytes()]);
        let old_member = concat(&[old.fleet_id.as_bytes(), old.id.as_bytes()]);
        let res = (&t.devices, &t.device_names, &t.fleet_devices).transaction(
            |(devices, names, members)| {
                if new_name != old_name {
                    if names.get(&new_name)?.is_some() {
                        return abort_clash();
                    }
                    names.remove(old_name.as_slice())?;
                    names.insert(new_name.as_slice(), dev.id.as_bytes())?;
                }
                if new_member != old_member {
                    members.remove(old_member.as_slice())?;
                    members.insert(new_member.as_slice(), &[])?;
                }
                devices.insert(dev.id.as_bytes(), encode_json(dev))?;
                Ok(Ok(()))
            },
        )?;
        Ok(res)
    }

    /// Updates bookkeeping fields (connect times) of an existing device without touching
    /// indexes. Atomic against a concurrent delete: a deleted device is not brought back.
    pub fn update_device_record(&self, id: DeviceId, f: impl Fn(&mut Device)) -> Result<()> {
        self.trees()
            .devices
            .fetch_and_update(id.as_bytes(), |old| {
                let old = old?;
                match decode_json::<Device>("devices", old) {
                    Ok(mut d) => {
                        f(&mut d);
                        Some(encode_json(&d))
                    }
                    // Never replace what cannot be read.
                    Err(_) => Some(old.to_vec()),
                }
            })?;
        Ok(())
    }

    /// The device of a workspace with this name (case-insensitive).
    pub fn device_by_name(&self, ws: WorkspaceId, name: &str) -> Result<Option<Device>> {
        let key = concat(&[ws.as_bytes(), &name_key(name)]);
        match self
            .trees()
            .device_names
            .get(key)?
            .and_then(|v| DeviceId::from_slice(&v))
        {
            None => Ok(None),
            Some(id) => self.get_device(id),
        }
    }

    pub fn get_device(&self, id: DeviceId) -> Result<Option<Device>> {
        get(&self.trees().devices, "devices", id.as_bytes())
    }

    pub fn list_devices(
        &self,
        fleet: Option<FleetId>,
        after: Option<&Cursor>,
        limit: usize,
        pred: impl Fn(&Device) -> bool,
    ) -> Result<Page<Device>> {
        let after: Option<DeviceId> = cursor_id(after)?;
        let t = self.trees();
        let Some(fleet) = fleet else {
            return scan(
                &t.devices,
                "devices",
                after.map(|a| a.as_bytes().to_vec()),
                limit,
                pred,
                |d| id_cursor(d.id),
            );
        };
        // Walk the fleet's membership index instead of every device.
        let prefix = fleet.as_bytes().to_vec();
        let start = match after {
            Some(a) => concat(&[&prefix, a.as_bytes(), &[0]]),
            None => prefix.clone(),
        };
        let mut items = Vec::new();
        for kv in t.fleet_devices.range(start..) {
            let (k, _) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some(id) = DeviceId::from_slice(&k[16..]) else {
                continue;
            };
            if let Some(d) = self.get_device(id)?
                && pred(&d)
            {
                if items.len() == limit {
                    let next = items.last().map(|d: &Device| id_cursor(d.id));
                    return Ok(Page {
                        items,
                        next_cursor: next,
                    });
                }
                items.push(d);
            }
        }
        Ok(Page {
            items,
            next_cursor: None,
        })
    }

    /// Deletes a device, its indexes and its credentials. Telemetry is removed separately
    /// (`delete_device_telemetry`) because it can be large.
    pub fn delete_device(&self, dev: &Device) -> Result<()> {
        let t = self.trees();
        let name = concat(&[dev.workspace_id.as_bytes(), &name_key(&dev.name)]);
        let member = concat(&[dev.fleet_id.as_bytes(), dev.id.as_bytes()]);
        let creds = self.credentials_of(dev.id)?;
        let trees = [
            &t.devices,
            &t.device_names,
            &t.fleet_devices,
            &t.credentials,
            &t.cred_index,
        ];
        trees[..]
            .transaction(|tx: &Vec<TransactionalTree>| {
                let [devices, names, members, cred_tree, index] = &tx[..] else {
                    return Err(ConflictableTransactionError::Abort(StoreError::Closed));
                };
                devices.remove(dev.id.as_bytes())?;
                names.remove(name.as_slice())?;
                members.remove(member.as_slice())?;
                remove_credentials(cred_tree, index, &creds)?;
                Ok(())
            })
            .map_err(StoreError::from)?;
        Ok(())
    }

    // ---- admin API keys ---------------------------------------------------------------

    pub fn put_api_key(&self, key: &ApiKey) -> Result<()> {
        let t = self.trees();
        (&t.api_keys, &t.api_key_hashes)
            .transaction(|(keys, hashes)| {
                keys.insert(key.id.as_bytes(), encode_json(key))?;
                hashes.insert(&key.key_sha256, key.id.as_bytes())?;
                Ok(())
            })
            .map_err(StoreError::from)?;
        Ok(())
    }

    pub fn api_key_by_hash(&self, sha256: &[u8; 32]) -> Result<Option<ApiKey>> {
        let t = self.trees();
        match t
            .api_key_hashes
            .get(sha256)?
            .and_then(|v| ApiKeyId::from_slice(&v))
        {
            None => Ok(None),
            Some(id) => get(&t.api_keys, "api_keys", id.as_bytes()),
        }
    }

    pub fn api_key_count(&self) -> Result<usize> {
        // Few keys exist; a scan is fine.
        Ok(self.trees().api_keys.iter().count())
    }
}

/// Writes a record and keeps its name index unique, in one transaction: `new_key` must be free
/// unless it is the record's own `old_key`.
pub(super) fn put_named(
    records: &sled::Tree,
    names: &sled::Tree,
    id: &[u8],
    new_key: &[u8],
    old_key: Option<&[u8]>,
    value: Vec<u8>,
) -> Result<std::result::Result<(), NameClash>> {
    let res = (records, names).transaction(|(recs, names)| {
        if old_key != Some(new_key) {
            if names.get(new_key)?.is_some() {
                return abort_clash();
            }
            if let Some(k) = old_key {
                names.remove(k)?;
            }
            names.insert(new_key, id)?;
        }
        recs.insert(id, value.as_slice())?;
        Ok(Ok(()))
    })?;
    Ok(res)
}

fn get<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    key: &[u8],
) -> Result<Option<T>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => decode_json(name, &v).map(Some),
    }
}

/// Lists records after `after` (exclusive) in key order, keeping those that match.
fn scan<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    after: Option<Vec<u8>>,
    limit: usize,
    pred: impl Fn(&T) -> bool,
    cursor_of: impl Fn(&T) -> Cursor,
) -> Result<Page<T>> {
    let iter = match after {
        Some(mut a) => {
            a.push(0);
            tree.range(a..)
        }
        None => tree.range::<&[u8], _>(..),
    };
    let mut items = Vec::new();
    for kv in iter {
        let (_, v) = kv?;
        let rec: T = decode_json(name, &v)?;
        if pred(&rec) {
            if items.len() == limit {
                let next = items.last().map(&cursor_of);
                return Ok(Page {
                    items,
                    next_cursor: next,
                });
            }
            items.push(rec);
        }
    }
    Ok(Page {
        items,
        next_cursor: None,
    })
}
