//! The condition area's storage: open and closed conditions per device.

use super::{ConditionScan, Cursor, Durable, Result};
use crate::model::{Condition, ConditionId, DeviceId};

pub trait ConditionStore: Durable {
    fn put_condition(&self, c: &Condition) -> Result<()>;
    fn get_condition(&self, id: ConditionId) -> Result<Option<Condition>>;
    /// The device's open condition of this name.
    fn open_condition(&self, device: DeviceId, name: &str) -> Result<Option<Condition>>;
    /// Up to `limit` conditions `keep` accepts (it may fill in live fields), newest first,
    /// and the cursor of the next page.
    fn conditions(
        &self,
        scan: ConditionScan,
        limit: usize,
        keep: &mut dyn FnMut(&mut Condition) -> bool,
    ) -> Result<(Vec<Condition>, Option<Cursor>)>;
    /// Devices with at least one open condition.
    fn open_condition_devices(&self) -> Result<Vec<DeviceId>>;
    /// Drops a device's oldest closed conditions beyond what is kept.
    fn trim_closed_conditions(&self, device: DeviceId) -> Result<()>;
}
