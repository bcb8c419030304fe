//! The attribute area's storage: named values per owner (device or fleet) and scope.

use super::{Durable, Result, Scope};
use crate::model::{AttributeOwner, Millis, Value};

pub trait AttributeStore: Durable {
    /// Sets values, each stamped `ts`.
    fn put_attributes(
        &self,
        owner: AttributeOwner,
        scope: Scope,
        values: &[(String, Value)],
        ts: Millis,
    ) -> Result<()>;
    /// Deletes the named values; returns the names that existed.
    fn delete_attributes(
        &self,
        owner: AttributeOwner,
        scope: Scope,
        names: &[String],
    ) -> Result<Vec<String>>;
    /// The named values (every value when `names` is `None`), with their times.
    fn get_attributes(
        &self,
        owner: AttributeOwner,
        scope: Scope,
        names: Option<&[String]>,
    ) -> Result<Vec<(String, Millis, Value)>>;
}
