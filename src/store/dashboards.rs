//! Dashboards: `dashboards` holds `dashboard id → record` (JSON). Dashboards are few (a handful
//! per fleet), so listing reads the whole tree and the service filters by what a caller sees.

use super::codec::{decode_json, encode_json};
use super::{Db, Result};
use crate::model::{Dashboard, DashboardId};

impl Db {
    pub fn put_dashboard(&self, d: &Dashboard) -> Result<()> {
        self.trees()
            .dashboards
            .insert(d.id.as_bytes(), encode_json(d))?;
        Ok(())
    }

    pub fn get_dashboard(&self, id: DashboardId) -> Result<Option<Dashboard>> {
        match self.trees().dashboards.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => decode_json("dashboards", &v).map(Some),
        }
    }

    /// Every dashboard, oldest first (ids are time-ordered).
    pub fn dashboards(&self) -> Result<Vec<Dashboard>> {
        self.trees()
            .dashboards
            .iter()
            .map(|kv| decode_json("dashboards", &kv?.1))
            .collect()
    }

    /// Deletes a dashboard; whether it existed.
    pub fn delete_dashboard(&self, id: DashboardId) -> Result<bool> {
        Ok(self.trees().dashboards.remove(id.as_bytes())?.is_some())
    }
}
