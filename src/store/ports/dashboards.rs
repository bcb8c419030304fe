//! The dashboards' storage: dashboard records by id.

use super::{Durable, Fut};
use crate::model::{Dashboard, DashboardId};

pub trait DashboardStore: Durable {
    /// Stores a dashboard, new or changed.
    fn put_dashboard<'a>(&'a self, d: &'a Dashboard) -> Fut<'a, ()>;
    fn get_dashboard<'a>(&'a self, id: DashboardId) -> Fut<'a, Option<Dashboard>>;
    /// Every dashboard, oldest first.
    fn dashboards<'a>(&'a self) -> Fut<'a, Vec<Dashboard>>;
    /// Deletes a dashboard; whether it existed.
    fn delete_dashboard<'a>(&'a self, id: DashboardId) -> Fut<'a, bool>;
}
