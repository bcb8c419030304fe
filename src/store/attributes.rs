//! Attributes: `attributes` holds `owner ‖ scope ‖ key → ts ‖ value`, where the owner is a
//! device (client, shared and server scopes) or a fleet (shared defaults). One owner's scope is
//! one contiguous range, so reading all of it is one scan.

use super::codec::{decode_value, encode_value, push_str, read_str, ts_bytes, ts_from};
use super::{Db, Result, StoreError};
use crate::model::{AttributeOwner, Millis, Scope, Value};

/// A scope's byte in attribute keys.
fn scope_byte(scope: Scope) -> u8 {
    match scope {
        Scope::Client => b'c',
        Scope::Shared => b's',
        Scope::Server => b'v',
    }
}

/// An owner's bytes in attribute keys: its id (device and fleet ids never collide).
fn owner_key(owner: AttributeOwner) -> [u8; 16] {
    match owner {
        AttributeOwner::Device(d) => *d.as_bytes(),
        AttributeOwner::Fleet(f) => *f.as_bytes(),
    }
}

fn prefix(owner: AttributeOwner, scope: Scope) -> Vec<u8> {
    let mut k = owner_key(owner).to_vec();
    k.push(scope_byte(scope));
    k
}

fn key(owner: AttributeOwner, scope: Scope, name: &str) -> Vec<u8> {
    let mut k = prefix(owner, scope);
    push_str(&mut k, name);
    k
}

fn decode(v: &[u8]) -> Result<(Millis, Value)> {
    let ts = v
        .get(..8)
        .and_then(ts_from)
        .ok_or_else(|| StoreError::Corrupt {
            tree: "attributes",
            detail: "short value".into(),
        })?;
    Ok((ts, decode_value(&v[8..])?))
}

impl Db {
    /// Sets attributes of one owner and scope at time `ts`.
    pub fn put_attributes(
        &self,
        owner: AttributeOwner,
        scope: Scope,
        values: &[(String, Value)],
        ts: Millis,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (name, value) in values {
            let mut v = ts_bytes(ts).to_vec();
            encode_value(&mut v, value);
            batch.insert(key(owner, scope, name), v);
        }
        self.trees().attributes.apply_batch(batch)?;
        Ok(())
    }

    /// Deletes attributes; returns the names that existed.
    pub fn delete_attributes(
        &self,
        owner: AttributeOwner,
        scope: Scope,
        names: &[String],
    ) -> Result<Vec<String>> {
        let t = &self.trees().attributes;
        let mut gone = Vec::new();
        for n in names {
            if t.remove(key(owner, scope, n))?.is_some() {
                gone.push(n.clone());
            }
        }
        Ok(gone)
    }

    /// Attributes of one owner and scope, in name order: the named ones that exist, or all.
    pub fn get_attributes(
        &self,
        owner: AttributeOwner,
        scope: Scope,
        names: Option<&[String]>,
    ) -> Result<Vec<(String, Millis, Value)>> {
        let t = &self.trees().attributes;
        let mut out = Vec::new();
        match names {
            Some(names) => {
                for n in names {
                    if let Some(v) = t.get(key(owner, scope, n))? {
                        let (ts, value) = decode(&v)?;
                        out.push((n.clone(), ts, value));
                    }
                }
                out.sort_by(|a, b| a.0.cmp(&b.0));
                out.dedup_by(|a, b| a.0 == b.0);
            }
            None => {
                let p = prefix(owner, scope);
                for kv in t.scan_prefix(&p) {
                    let (k, v) = kv?;
                    let mut pos = p.len();
                    let name = read_str(&k, &mut pos).ok_or_else(|| StoreError::Corrupt {
                        tree: "attributes",
                        detail: "bad key".into(),
                    })?;
                    let (ts, value) = decode(&v)?;
                    out.push((name.to_string(), ts, value));
                }
            }
        }
        Ok(out)
    }

    /// Removes every attribute of an owner (a deleted device or fleet).
    pub fn delete_owner_attributes(&self, owner: AttributeOwner) -> Result<()> {
        let t = &self.trees().attributes;
        let mut batch = sled::Batch::default();
        for kv in t.scan_prefix(owner_key(owner)) {
            batch.remove(kv?.0);
        }
        t.apply_batch(batch)?;
        Ok(())
    }
}
