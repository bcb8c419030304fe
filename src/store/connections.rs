//! Device connection history: `connections` holds `device ‖ time-ordered id → event`, the
//! newest entries of each device, for operators asking when and from where it connected.

use super::codec::{decode_json, encode_json};
use super::{Db, Result};

/// Connection history entries kept per device; older ones are dropped.
const CONNECTIONS_KEPT: usize = 100;

impl Db {
    /// Appends to a device's connection history (`connections`: device ‖ time-ordered id),
    /// keeping the newest `CONNECTIONS_KEPT`.
    pub fn append_connection(
        &self,
        device: crate::model::DeviceId,
        e: &crate::model::ConnectionEvent,
    ) -> Result<()> {
        let t = &self.trees().connections;
        let key = super::codec::concat(&[device.as_bytes(), uuid::Uuid::now_v7().as_bytes()]);
        t.insert(key, encode_json(e))?;
        let n = t.scan_prefix(device.as_bytes()).count();
        if n > CONNECTIONS_KEPT {
            for kv in t.scan_prefix(device.as_bytes()).take(n - CONNECTIONS_KEPT) {
                t.remove(kv?.0)?;
            }
        }
        Ok(())
    }

    /// A device's connection history, newest first.
    pub fn connections(
        &self,
        device: crate::model::DeviceId,
    ) -> Result<Vec<crate::model::ConnectionEvent>> {
        self.trees()
            .connections
            .scan_prefix(device.as_bytes())
            .rev()
            .map(|kv| decode_json("connections", &kv?.1))
            .collect()
    }

    pub fn delete_device_connections(&self, device: crate::model::DeviceId) -> Result<()> {
        let t = &self.trees().connections;
        for kv in t.scan_prefix(device.as_bytes()) {
            t.remove(kv?.0)?;
        }
        Ok(())
    }
}
