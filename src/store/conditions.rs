//! Device conditions: `conditions` holds `id → record` (ids are time-ordered, so the tree lists
//! by opening time), `device_conditions` lists `device ‖ id` for one device's history, and
//! `conditions_open` maps `device ‖ name → id` for the one open condition of each name. The
//! three are written in one transaction, so the open index never disagrees with the records.

use sled::Transactional;

use super::codec::{concat, decode_json, encode_json};
use super::{Db, Result, StoreError};
use crate::model::{Condition, ConditionId, DeviceId};

/// Closed conditions kept per device; older closed ones are dropped (open ones never are).
pub const CLOSED_CONDITIONS_KEPT: usize = 200;

/// Which conditions a listing walks.
#[derive(Debug, Clone, Default)]
pub struct ConditionScan {
    pub device: Option<DeviceId>,
    pub open_only: bool,
    /// Where the previous page ended: only conditions opened before it.
    pub before: Option<super::Cursor>,
}

impl Db {
    /// Writes a condition and keeps the device's list and the open index in step.
    pub fn put_condition(&self, c: &Condition) -> Result<()> {
        let t = self.trees();
        let open_key = concat(&[c.device_id.as_bytes(), c.name.as_bytes()]);
        let dev_key = concat(&[c.device_id.as_bytes(), c.id.as_bytes()]);
        (&t.conditions, &t.device_conditions, &t.conditions_open)
            .transaction(|(all, by_device, open)| {
                all.insert(c.id.as_bytes(), encode_json(c))?;
                by_device.insert(dev_key.as_slice(), &[])?;
                if c.open {
                    open.insert(open_key.as_slice(), c.id.as_bytes())?;
                } else if open.get(open_key.as_slice())?.as_deref() == Some(c.id.as_bytes()) {
                    open.remove(open_key.as_slice())?;
                }
                Ok(())
            })
            .map_err(StoreError::from)
    }

    pub fn get_condition(&self, id: ConditionId) -> Result<Option<Condition>> {
        match self.trees().conditions.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => decode_json("conditions", &v).map(Some),
        }
    }

    /// The open condition of this name on this device.
    pub fn open_condition(&self, device: DeviceId, name: &str) -> Result<Option<Condition>> {
        let t = self.trees();
        match t
            .conditions_open
            .get(concat(&[device.as_bytes(), name.as_bytes()]))?
        {
            Some(id) => match ConditionId::from_slice(&id) {
                Some(id) => self.get_condition(id),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Conditions newest first, as `scan` says, that pass `keep` (which may amend them), at most
    /// `limit` of them, with the cursor of the next page when there may be more.
    pub fn conditions(
        &self,
        scan: ConditionScan,
        limit: usize,
        keep: &mut dyn FnMut(&mut Condition) -> bool,
    ) -> Result<(Vec<Condition>, Option<super::Cursor>)> {
        let before: Option<ConditionId> = super::cursor_id(scan.before.as_ref())?;
        let t = self.trees();
        let ids: Box<dyn Iterator<Item = Result<ConditionId>>> = match (scan.device, scan.open_only)
        {
            (Some(d), _) => Box::new(ids_in_keys(
                t.device_conditions.scan_prefix(d.as_bytes()).rev(),
                16,
            )),
            (None, true) => {
                // Open conditions are few next to the history: collect and order them.
                let mut v = Vec::new();
                for kv in t.conditions_open.iter() {
                    if let Some(id) = ConditionId::from_slice(&kv?.1) {
                        v.push(id);
                    }
                }
                v.sort_unstable_by(|a, b| b.cmp(a));
                Box::new(v.into_iter().map(Ok))
            }
            (None, false) => match before {
                Some(b) => Box::new(ids_in_keys(
                    t.conditions.range(..b.as_bytes().to_vec()).rev(),
                    0,
                )),
                None => Box::new(ids_in_keys(t.conditions.iter().rev(), 0)),
            },
        };
        let mut out = Vec::new();
        for id in ids {
            let id = id?;
            if before.is_some_and(|b| id >= b) {
                continue;
            }
            let Some(mut c) = self.get_condition(id)? else {
                continue;
            };
            if scan.open_only && !c.open {
                continue;
            }
            if !keep(&mut c) {
                continue;
            }
            if out.len() == limit {
                let last = out.last().map(|c: &Condition| super::id_cursor(c.id));
                return Ok((out, last));
            }
            out.push(c);
        }
        Ok((out, None))
    }

    /// The devices of every open condition (one entry per condition), for counting.
    pub fn open_condition_devices(&self) -> Result<Vec<DeviceId>> {
        self.trees()
            .conditions_open
            .iter()
            .map(|kv| Ok(DeviceId::from_slice(&kv?.0[..16])))
            .filter_map(|r| r.transpose())
            .collect()
    }

    /// Drops a device's oldest closed conditions past [`CLOSED_CONDITIONS_KEPT`].
    pub fn trim_closed_conditions(&self, device: DeviceId) -> Result<()> {
        let t = self.trees();
        let mut closed = Vec::new();
        for kv in t.device_conditions.scan_prefix(device.as_bytes()) {
            let (k, _) = kv?;
            if let Some(id) = ConditionId::from_slice(&k[16..])
                && self.get_condition(id)?.is_some_and(|c| !c.open)
            {
                closed.push((k, id));
            }
        }
        let excess = closed.len().saturating_sub(CLOSED_CONDITIONS_KEPT);
        for (k, id) in closed.into_iter().take(excess) {
            t.device_conditions.remove(k)?;
            t.conditions.remove(id.as_bytes())?;
        }
        Ok(())
    }

    /// Removes every condition of a deleted device.
    pub fn delete_device_conditions(&self, device: DeviceId) -> Result<()> {
        let t = self.trees();
        for kv in t.device_conditions.scan_prefix(device.as_bytes()) {
            let (k, _) = kv?;
            if let Some(id) = ConditionId::from_slice(&k[16..]) {
                t.conditions.remove(id.as_bytes())?;
            }
            t.device_conditions.remove(k)?;
        }
        for kv in t.conditions_open.scan_prefix(device.as_bytes()) {
            t.conditions_open.remove(kv?.0)?;
        }
        Ok(())
    }
}

/// The condition ids in a scan's keys, from byte `at` on.
fn ids_in_keys(
    iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    at: usize,
) -> impl Iterator<Item = Result<ConditionId>> {
    iter.filter_map(move |kv| match kv {
        Ok((k, _)) => k.get(at..).and_then(ConditionId::from_slice).map(Ok),
        Err(e) => Some(Err(e.into())),
    })
}
