//! The OTA campaigns' storage: campaign records and each device's update in a campaign.

use super::{Durable, Fut};
use crate::model::{Campaign, CampaignId, DeviceId, DeviceUpdate};

pub trait CampaignStore: Durable {
    fn put_campaign<'a>(&'a self, c: &'a Campaign) -> Fut<'a, ()>;
    fn get_campaign<'a>(&'a self, id: CampaignId) -> Fut<'a, Option<Campaign>>;
    /// Every campaign, oldest first.
    fn campaigns<'a>(&'a self) -> Fut<'a, Vec<Campaign>>;
    /// Deletes a campaign with its device entries.
    fn delete_campaign<'a>(&'a self, id: CampaignId) -> Fut<'a, ()>;
    /// Stores device entries (new or changed) together.
    fn put_device_updates<'a>(&'a self, updates: &'a [DeviceUpdate]) -> Fut<'a, ()>;
    /// A campaign's device entries.
    fn device_updates<'a>(&'a self, id: CampaignId) -> Fut<'a, Vec<DeviceUpdate>>;
    fn device_update<'a>(&'a self, c: CampaignId, d: DeviceId) -> Fut<'a, Option<DeviceUpdate>>;
}
