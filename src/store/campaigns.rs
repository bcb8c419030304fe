//! OTA campaigns: `campaigns` holds `campaign id → record`, `ota_devices` holds
//! `campaign id ‖ device id → the device's update` (its state, deadline and timeline), so one
//! campaign's devices are one prefix scan and a device's entry is one lookup.

use super::codec::{decode_json, encode_json};
use super::{Db, Result};
use crate::model::{Campaign, CampaignId, DeviceId, DeviceUpdate};

fn device_key(c: CampaignId, d: DeviceId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(c.as_bytes());
    k[16..].copy_from_slice(d.as_bytes());
    k
}

impl Db {
    pub fn put_campaign(&self, c: &Campaign) -> Result<()> {
        self.trees()
            .campaigns
            .insert(c.id.as_bytes(), encode_json(c))?;
        Ok(())
    }

    pub fn get_campaign(&self, id: CampaignId) -> Result<Option<Campaign>> {
        match self.trees().campaigns.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => decode_json("campaigns", &v).map(Some),
        }
    }

    /// Every campaign, oldest first.
    pub fn campaigns(&self) -> Result<Vec<Campaign>> {
        self.trees()
            .campaigns
            .iter()
            .map(|kv| decode_json("campaigns", &kv?.1))
            .collect()
    }

    /// Deletes a campaign and its devices' entries.
    pub fn delete_campaign(&self, id: CampaignId) -> Result<()> {
        let t = self.trees();
        let mut batch = sled::Batch::default();
        for kv in t.ota_devices.scan_prefix(id.as_bytes()) {
            batch.remove(kv?.0);
        }
        t.ota_devices.apply_batch(batch)?;
        t.campaigns.remove(id.as_bytes())?;
        Ok(())
    }

    /// Stores device entries in one batch.
    pub fn put_device_updates(&self, updates: &[DeviceUpdate]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for u in updates {
            batch.insert(&device_key(u.campaign_id, u.device_id)[..], encode_json(u));
        }
        self.trees().ota_devices.apply_batch(batch)?;
        Ok(())
    }

    /// A campaign's device entries, in device id order.
    pub fn device_updates(&self, id: CampaignId) -> Result<Vec<DeviceUpdate>> {
        self.trees()
            .ota_devices
            .scan_prefix(id.as_bytes())
            .map(|kv| decode_json("ota_devices", &kv?.1))
            .collect()
    }

    pub fn device_update(&self, c: CampaignId, d: DeviceId) -> Result<Option<DeviceUpdate>> {
        match self.trees().ota_devices.get(device_key(c, d))? {
            None => Ok(None),
            Some(v) => decode_json("ota_devices", &v).map(Some),
        }
    }
}
