//! The condition area's storage: open and closed conditions per device.

use super::{ConditionScan, Cursor, Durable, Fut};
use crate::model::{Condition, ConditionId, DeviceId};

pub trait ConditionStore: Durable {
    fn put_condition<'a>(&'a self, c: &'a Condition) -> Fut<'a, ()>;
    fn get_condition<'a>(&'a self, id: ConditionId) -> Fut<'a, Option<Condition>>;
    /// The device's open condition of this name.
    fn open_condition<'a>(&'a self, device: DeviceId, name: &'a str) -> Fut<'a, Option<Condition>>;
    /// Up to `limit` conditions `keep` accepts (it may fill in live fields), newest first,
    /// and the cursor of the next page.
    fn conditions<'a>(
        &'a self,
        scan: ConditionScan,
        limit: usize,
        keep: &'a mut (dyn FnMut(&mut Condition) -> bool + Send),
    ) -> Fut<'a, (Vec<Condition>, Option<Cursor>)>;
    /// Devices with at least one open condition.
    fn open_condition_devices<'a>(&'a self) -> Fut<'a, Vec<DeviceId>>;
    /// Drops a device's oldest closed conditions beyond what is kept.
    fn trim_closed_conditions<'a>(&'a self, device: DeviceId) -> Fut<'a, ()>;
}
