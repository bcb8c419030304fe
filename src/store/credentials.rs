//! Device credentials and what hangs off them: the credential records with their lookup index
//! (token hash, MQTT basic identifiers, certificate fingerprint, public key), fleet provisioning
//! keys, manufacturer CAs, and the audit log. Uniqueness of every lookup value is kept by sled
//! transactions, so two devices can never answer to the same secret.

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::codec::{concat, decode_json, encode_json};
use super::registry::{DeviceClash, NameClash, put_named};
use super::{Db, Result, StoreError};
use crate::model::{
    AuditEvent, AuditId, Credential, CredentialId, CredentialSecret, DeviceId, FleetCa, FleetCaId,
    FleetId, FleetProvisioning,
};

/// A lookup value is already held by another credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialClash;

/// How a connecting device is looked up (thingsboard-device-api.md §2).
#[derive(Debug, Clone, Copy)]
pub enum CredentialKey<'a> {
    TokenSha256(&'a [u8; 32]),
    /// MQTT basic credentials holding only a client id.
    ClientId(&'a str),
    /// MQTT basic credentials holding only a username.
    Username(&'a str),
    /// MQTT basic credentials holding both.
    ClientIdUsername(&'a str, &'a str),
    /// SHA3-256 fingerprint of a certificate, hex.
    Fingerprint(&'a str),
    /// SHA-256 of a SubjectPublicKeyInfo, hex.
    Spki(&'a str),
}

impl CredentialKey<'_> {
    fn bytes(&self) -> Vec<u8> {
        match self {
            CredentialKey::TokenSha256(h) => concat(&[b"t", &h[..]]),
            CredentialKey::ClientId(c) => concat(&[b"c", c.as_bytes()]),
            CredentialKey::Username(u) => concat(&[b"u", u.as_bytes()]),
            // A NUL cannot occur in an MQTT UTF-8 string, so it separates the two unambiguously.
            CredentialKey::ClientIdUsername(c, u) => {
                concat(&[b"b", c.as_bytes(), &[0], u.as_bytes()])
            }
            CredentialKey::Fingerprint(f) => concat(&[b"x", f.as_bytes()]),
            CredentialKey::Spki(k) => concat(&[b"k", k.as_bytes()]),
        }
    }
}

/// The lookup keys a credential answers to.
fn index_keys(c: &Credential) -> Vec<Vec<u8>> {
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let key = match &c.secret {
        CredentialSecret::AccessToken { token_sha256, .. } => {
            CredentialKey::TokenSha256(token_sha256).bytes()
        }
        CredentialSecret::MqttBasic {
            client_id,
            username,
            ..
        } => match (nonempty(client_id), nonempty(username)) {
            (Some(c), None) => CredentialKey::ClientId(&c).bytes(),
            (None, Some(u)) => CredentialKey::Username(&u).bytes(),
            (Some(c), Some(u)) => CredentialKey::ClientIdUsername(&c, &u).bytes(),
            (None, None) => return Vec::new(),
        },
        CredentialSecret::Certificate(info) => {
            CredentialKey::Fingerprint(&info.fingerprint).bytes()
        }
        CredentialSecret::PublicKey { spki_sha256, .. } => CredentialKey::Spki(spki_sha256).bytes(),
    };
    vec![key]
}

fn cred_key(device: DeviceId, id: CredentialId) -> Vec<u8> {
    concat(&[device.as_bytes(), id.as_bytes()])
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

/// Inserts credentials and their index entries inside a transaction. A taken lookup value
/// aborts the whole transaction (`StoreError::Clash`), so nothing inserted before it stays.
pub(super) fn insert_credentials(
    creds: &TransactionalTree,
    index: &TransactionalTree,
    list: &[Credential],
) -> TxResult<()> {
    for c in list {
        let target = cred_key(c.device_id, c.id);
        for k in index_keys(c) {
            if index.get(&k)?.is_some() {
                return Err(ConflictableTransactionError::Abort(StoreError::Clash(
                    DeviceClash::Credential,
                )));
            }
            index.insert(k, target.as_slice())?;
        }
        creds.insert(target.as_slice(), encode_json(c))?;
    }
    Ok(())
}

/// Removes every credential of a device and its index entries inside a transaction.
pub(super) fn remove_credentials(
    creds: &TransactionalTree,
    index: &TransactionalTree,
    list: &[Credential],
) -> TxResult<()> {
    for c in list {
        for k in index_keys(c) {
            index.remove(k)?;
        }
        creds.remove(cred_key(c.device_id, c.id))?;
    }
    Ok(())
}

impl Db {
    // ---- credentials ------------------------------------------------------------------

    /// Adds a credential to an existing device.
    pub fn add_credential(
        &self,
        cred: &Credential,
    ) -> Result<std::result::Result<(), CredentialClash>> {
        let t = self.trees();
        let res =
            (&t.devices, &t.credentials, &t.cred_index).transaction(|(devices, creds, index)| {
                if devices.get(cred.device_id.as_bytes())?.is_none() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Corrupt {
                        tree: "devices",
                        detail: "credential for a device that does not exist".into(),
                    }));
                }
                insert_credentials(creds, index, std::slice::from_ref(cred))
            });
        match res {
            Ok(()) => Ok(Ok(())),
            Err(TransactionError::Abort(StoreError::Clash(_))) => Ok(Err(CredentialClash)),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a credential's record (revocation, expiry); its lookup values do not change.
    pub fn update_credential(&self, cred: &Credential) -> Result<()> {
        let key = cred_key(cred.device_id, cred.id);
        // Only an existing record is replaced: a concurrent device delete wins.
        self.trees()
            .credentials
            .fetch_and_update(&key, |old| old.map(|_| encode_json(cred)))?;
        Ok(())
    }

    /// Deletes one credential and its index entries.
    pub fn delete_credential(&self, cred: &Credential) -> Result<()> {
        let t = self.trees();
        (&t.credentials, &t.cred_index)
            .transaction(|(creds, index)| {
                remove_credentials(creds, index, std::slice::from_ref(cred))
            })
            .map_err(StoreError::from)
    }

    pub fn credentials_of(&self, device: DeviceId) -> Result<Vec<Credential>> {
        self.trees()
            .credentials
            .scan_prefix(device.as_bytes())
            .map(|kv| decode_json("credentials", &kv?.1))
            .collect()
    }

    pub fn get_credential(&self, device: DeviceId, id: CredentialId) -> Result<Option<Credential>> {
        match self.trees().credentials.get(cred_key(device, id))? {
            None => Ok(None),
            Some(v) => decode_json("credentials", &v).map(Some),
        }
    }

    /// The credential answering to a lookup value.
    pub fn find_credential(&self, key: CredentialKey<'_>) -> Result<Option<Credential>> {
        let t = self.trees();
        let Some(target) = t.cred_index.get(key.bytes())? else {
            return Ok(None);
        };
        match t.credentials.get(&target)? {
            None => Ok(None),
            Some(v) => decode_json("credentials", &v).map(Some),
        }
    }

    /// Every credential matching `pred`, for rebuilding the revocation list.
    pub fn scan_credentials(&self, pred: impl Fn(&Credential) -> bool) -> Result<Vec<Credential>> {
        let mut out = Vec::new();
        for kv in self.trees().credentials.iter() {
            let c: Credential = decode_json("credentials", &kv?.1)?;
            if pred(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }

    // ---- fleet provisioning -------------------------------------------------------------

    /// Sets a fleet's provisioning key; keys are unique across fleets.
    pub fn put_provisioning(
        &self,
        p: &FleetProvisioning,
        old_key: Option<&str>,
    ) -> Result<std::result::Result<(), NameClash>> {
        let t = self.trees();
        put_named(
            &t.fleet_provisioning,
            &t.provision_keys,
            p.fleet_id.as_bytes(),
            p.key.as_bytes(),
            old_key.map(str::as_bytes),
            encode_json(p),
        )
    }

    pub fn provisioning_of(&self, fleet: FleetId) -> Result<Option<FleetProvisioning>> {
        match self.trees().fleet_provisioning.get(fleet.as_bytes())? {
            None => Ok(None),
            Some(v) => decode_json("fleet_provisioning", &v).map(Some),
        }
    }

    pub fn provisioning_by_key(&self, key: &str) -> Result<Option<FleetProvisioning>> {
        let Some(fleet) = self
            .trees()
            .provision_keys
            .get(key.as_bytes())?
            .and_then(|v| FleetId::from_slice(&v))
        else {
            return Ok(None);
        };
        self.provisioning_of(fleet)
    }

    pub fn delete_provisioning(&self, fleet: FleetId) -> Result<()> {
        let t = self.trees();
        let Some(p) = self.provisioning_of(fleet)? else {
            return Ok(());
        };
        (&t.fleet_provisioning, &t.provision_keys)
            .transaction(|(recs, keys)| {
                recs.remove(fleet.as_bytes())?;
                keys.remove(p.key.as_bytes())?;
                Ok(())
            })
            .map_err(StoreError::from)
    }

    // ---- manufacturer CAs ---------------------------------------------------------------

    pub fn put_fleet_ca(&self, ca: &FleetCa) -> Result<()> {
        self.trees().fleet_cas.insert(
            concat(&[ca.fleet_id.as_bytes(), ca.id.as_bytes()]),
            encode_json(ca),
        )?;
        Ok(())
    }

    /// The CAs of one fleet, or of every fleet.
    pub fn fleet_cas(&self, fleet: Option<FleetId>) -> Result<Vec<FleetCa>> {
        let t = &self.trees().fleet_cas;
        let iter = match fleet {
            Some(f) => t.scan_prefix(f.as_bytes()),
            None => t.scan_prefix([]),
        };
        iter.map(|kv| decode_json("fleet_cas", &kv?.1)).collect()
    }

    /// Removes a fleet's CA; false when it does not exist.
    pub fn delete_fleet_ca(&self, fleet: FleetId, id: FleetCaId) -> Result<bool> {
        Ok(self
            .trees()
            .fleet_cas
            .remove(concat(&[fleet.as_bytes(), id.as_bytes()]))?
            .is_some())
    }

    // ---- audit --------------------------------------------------------------------------

    pub fn append_audit(&self, ev: &AuditEvent) -> Result<()> {
        self.trees()
            .audit
            .insert(ev.id.as_bytes(), encode_json(ev))?;
        Ok(())
    }

    /// Audit records newest first, strictly older than `before`, matching `pred`.
    pub fn list_audit(
        &self,
        before: Option<&super::Cursor>,
        limit: usize,
        pred: impl Fn(&AuditEvent) -> bool,
    ) -> Result<super::Page<AuditEvent>> {
        let before: Option<AuditId> = super::cursor_id(before)?;
        let t = &self.trees().audit;
        let iter = match before {
            Some(b) => t.range(..b.as_bytes().to_vec()),
            None => t.range::<&[u8], _>(..),
        };
        let mut items: Vec<AuditEvent> = Vec::new();
        for kv in iter.rev() {
            let ev: AuditEvent = decode_json("audit", &kv?.1)?;
            if pred(&ev) {
                if items.len() == limit {
                    let next = items.last().map(|e| super::id_cursor(e.id));
                    return Ok(super::Page {
                        items,
                        next_cursor: next,
                    });
                }
                items.push(ev);
            }
        }
        Ok(super::Page {
            items,
            next_cursor: None,
        })
    }

    /// Deletes the oldest audit records beyond `keep`. Returns how many went.
    pub fn trim_audit(&self, keep: usize) -> Result<usize> {
        let t = &self.trees().audit;
        let len = t.len();
        if len <= keep {
            return Ok(0);
        }
        let mut removed = 0;
        for kv in t.iter().take(len - keep) {
            t.remove(kv?.0)?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Device, WorkspaceId, now_ms};
    use crate::store::test_util::open_temp;

    fn device() -> Device {
        Device {
            id: DeviceId::new(),
            workspace_id: WorkspaceId::new(),
            fleet_id: FleetId::new(),
            name: format!("d-{}", DeviceId::new()),
            label: String::new(),
            enabled: true,
            created_at: 0,
            updated_at: 0,
            last_connect_at: None,
            last_disconnect_at: None,
            last_activity_at: None,
            provisioned_at: None,
            gateway: Default::default(),
        }
    }

    fn basic(dev: DeviceId, cid: Option<&str>, user: Option<&str>) -> Credential {
        Credential::new(
            dev,
            CredentialSecret::MqttBasic {
                client_id: cid.map(Into::into),
                username: user.map(Into::into),
                password_hash: None,
            },
            now_ms(),
        )
    }

    #[test]
    fn lookup_values_are_unique_across_devices_and_removed_with_the_device() {
        let (_d, s) = open_temp();
        let (a, b) = (device(), device());
        let ca = basic(a.id, Some("c1"), Some("u1"));
        s.create_device(&a, std::slice::from_ref(&ca))
            .expect("store")
            .expect("unique");
        s.create_device(&b, &[]).expect("store").expect("unique");
        // The same (client id, username) pair on another device is refused; a different
        // combination is a different lookup value.
        assert_eq!(
            s.add_credential(&basic(b.id, Some("c1"), Some("u1")))
                .expect("store"),
            Err(CredentialClash)
        );
        s.add_credential(&basic(b.id, None, Some("u1")))
            .expect("store")
            .expect("unique");
        let found = s
            .find_credential(CredentialKey::ClientIdUsername("c1", "u1"))
            .expect("find")
            .expect("found");
        assert_eq!(found.device_id, a.id);
        assert!(
            s.find_credential(CredentialKey::ClientId("c1"))
                .expect("find")
                .is_none()
        );
        s.delete_device(&a).expect("delete");
        assert!(
            s.find_credential(CredentialKey::ClientIdUsername("c1", "u1"))
                .expect("find")
                .is_none()
        );
        assert!(s.credentials_of(a.id).expect("list").is_empty());
        assert_eq!(s.credentials_of(b.id).expect("list").len(), 1);
    }

    #[test]
    fn audit_lists_newest_first_with_a_cursor_and_trims_the_oldest() {
        let (_d, s) = open_temp();
        let mut ids = Vec::new();
        for i in 0..5 {
            let ev = AuditEvent {
                id: AuditId::new(),
                ts: i,
                kind: crate::model::AuditKind::Login,
                actor: "system".into(),
                device_id: None,
                fleet_id: None,
                credential_id: None,
                peer: None,
                detail: format!("{i}"),
            };
            s.append_audit(&ev).expect("append");
            ids.push(ev.id);
        }
        let p = s.list_audit(None, 2, |_| true).expect("list");
        assert_eq!(p.items.iter().map(|e| e.ts).collect::<Vec<_>>(), [4, 3]);
        let before = p.next_cursor.expect("more");
        let p = s.list_audit(Some(&before), 10, |_| true).expect("list");
        assert_eq!(p.items.iter().map(|e| e.ts).collect::<Vec<_>>(), [2, 1, 0]);
        // A cursor this store did not hand out is refused, not read as "from the start".
        assert!(matches!(
            s.list_audit(Some(&super::super::Cursor::new("not-an-id")), 10, |_| true),
            Err(super::super::StoreError::BadCursor)
        ));
        assert_eq!(p.items.iter().map(|e| e.ts).collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!(s.trim_audit(3).expect("trim"), 2);
        let p = s.list_audit(None, 10, |_| true).expect("list");
        assert_eq!(p.items.iter().map(|e| e.ts).collect::<Vec<_>>(), [4, 3, 2]);
    }
}
