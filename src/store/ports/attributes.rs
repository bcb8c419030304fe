//! The attribute area's storage: named values per owner (device or fleet) and scope.

use super::{Durable, Fut, Scope};
use crate::model::{AttributeOwner, Millis, Value};

pub trait AttributeStore: Durable {
    /// Sets values, each stamped `ts`.
    fn put_attributes<'a>(
        &'a self,
        owner: AttributeOwner,
        scope: Scope,
        values: &'a [(String, Value)],
        ts: Millis,
    ) -> Fut<'a, ()>;
    /// Deletes the named values; returns the names that existed.
    fn delete_attributes<'a>(
        &'a self,
        owner: AttributeOwner,
        scope: Scope,
        names: &'a [String],
    ) -> Fut<'a, Vec<String>>;
    /// The named values (every value when `names` is `None`), with their times.
    fn get_attributes<'a>(
        &'a self,
        owner: AttributeOwner,
        scope: Scope,
        names: Option<&'a [String]>,
    ) -> Fut<'a, Vec<(String, Millis, Value)>>;
}
