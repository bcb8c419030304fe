//! Live device sessions, transport-neutral: which connections each device has open and a
//! channel to each, so that the service layer can end a session (credential revoked, device
//! disabled or deleted, the same identity connecting again) without knowing about MQTT. The
//! transport owns the receiving end and acts on the commands on the connection's own thread.
//! A gateway's sub-devices have sessions too, carried by their gateway's connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::model::{CredentialId, DeviceId};

/// Why the server ends a session; the transport maps it to a reason code (MQTT 5 DISCONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The credential the session logged in with was revoked or expired.
    CredentialRevoked,
    /// The device was disabled.
    DeviceDisabled,
    /// The device was deleted.
    DeviceDeleted,
    /// Another connection logged in as the same device (MQTT 5 0x8E).
    TakenOver,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::CredentialRevoked => "credential_revoked",
            CloseReason::DeviceDisabled => "device_disabled",
            CloseReason::DeviceDeleted => "device_deleted",
            CloseReason::TakenOver => "session_taken_over",
        }
    }
}

/// Subscriptions a message may require before a session gets it (ThingsBoard pushes
/// attribute updates only after a subscribe to `v1/devices/me/attributes`, §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    Attributes,
}

/// What the service layer asks of a session.
#[derive(Debug, Clone)]
pub enum SessionCommand {
    Close(CloseReason),
    /// Publish to the device, if it holds the subscription (when one is needed).
    Push {
        topic: &'static str,
        payload: Vec<u8>,
        needs: Option<Subscription>,
    },
    /// Send a job as server-side RPC `v1/devices/me/rpc/request/{rpc_id}` at QoS 1 and report
    /// the outcome to the jobs service (needs the RPC subscription).
    Rpc {
        job: crate::model::JobId,
        rpc_id: u32,
        payload: Vec<u8>,
        /// The store's mark after the job was saved as sent: the request goes out only once
        /// that is durable.
        write: crate::store::ports::Mark,
    },
    /// A command for sub-device `device` (named `name` on the gateway API), which the session
    /// of its gateway carries.
    Sub {
        device: DeviceId,
        name: std::sync::Arc<str>,
        cmd: Box<SessionCommand>,
    },
}

struct Entry {
    conn: u64,
    credential: Option<CredentialId>,
    /// Boxed: tokio allocates a channel's first block of 32 slots when it is made, and every
    /// connection has one; 32 pointers instead of 32 commands saved ~1.3 KiB per idle device.
    tx: mpsc::UnboundedSender<Box<SessionCommand>>,
    /// A sub-device's session lives in its gateway's connection: `tx` is the gateway
    /// session's, and commands go to it wrapped with the sub-device's name.
    via: Option<std::sync::Arc<str>>,
}

impl Entry {
    fn send(&self, device: DeviceId, cmd: SessionCommand) -> bool {
        let cmd = match &self.via {
            Some(name) => SessionCommand::Sub {
                device,
                name: name.clone(),
                cmd: Box::new(cmd),
            },
            None => cmd,
        };
        self.tx.send(Box::new(cmd)).is_ok()
    }
}

/// A registered session: its id and the commands addressed to it.
pub struct SessionSlot {
    pub conn: u64,
    pub commands: mpsc::UnboundedReceiver<Box<SessionCommand>>,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<DeviceId, Vec<Entry>>>,
    next: AtomicU64,
}

impl Sessions {
    /// Registers a new session of `device` and asks every older session of the same device to
    /// close: one identity, one live session. Returns the slot and how many were taken over.
    pub fn register(
        &self,
        device: DeviceId,
        credential: Option<CredentialId>,
    ) -> (SessionSlot, usize) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (conn, taken) = self.insert(device, credential, tx, None);
        (SessionSlot { conn, commands: rx }, taken)
    }

    /// Registers a session of sub-device `device` carried by session `gateway_conn` of
    /// `gateway` (its commands reach that session, wrapped with `name`), taking over any older
    /// session of the sub-device. None when the gateway's session is gone.
    pub fn register_sub(
        &self,
        device: DeviceId,
        name: std::sync::Arc<str>,
        gateway: DeviceId,
        gateway_conn: u64,
    ) -> Option<u64> {
        let tx = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&gateway)?
                .iter()
                .find(|e| e.conn == gateway_conn)?
                .tx
                .clone()
        };
        Some(self.insert(device, None, tx, Some(name)).0)
    }

    fn insert(
        &self,
        device: DeviceId,
        credential: Option<CredentialId>,
        tx: mpsc::UnboundedSender<Box<SessionCommand>>,
        via: Option<std::sync::Arc<str>>,
    ) -> (u64, usize) {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(device).or_default();
        let mut taken = 0;
        for e in list.iter() {
            if e.send(device, SessionCommand::Close(CloseReason::TakenOver)) {
                taken += 1;
            }
        }
        list.push(Entry {
            conn,
            credential,
            tx,
            via,
        });
        (conn, taken)
    }

    /// Forgets a session that ended.
    pub fn unregister(&self, device: DeviceId, conn: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(&device) {
            list.retain(|e| e.conn != conn);
            if list.is_empty() {
                map.remove(&device);
            }
        }
    }

    /// Asks every session of `device` to close. Returns how many were asked.
    pub fn close_device(&self, device: DeviceId, reason: CloseReason) -> usize {
        self.close_where(device, reason, |_| true)
    }

    /// Asks the sessions of `device` that logged in with `credential` to close.
    pub fn close_credential(
        &self,
        device: DeviceId,
        credential: CredentialId,
        reason: CloseReason,
    ) -> usize {
        self.close_where(device, reason, |e| e.credential == Some(credential))
    }

    fn close_where(
        &self,
        device: DeviceId,
        reason: CloseReason,
        f: impl Fn(&Entry) -> bool,
    ) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&device).map_or(0, |list| {
            list.iter()
                .filter(|e| f(e))
                .filter(|e| e.send(device, SessionCommand::Close(reason)))
                .count()
        })
    }

    /// Whether `device` has a live session.
    pub fn is_connected(&self, device: DeviceId) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&device).is_some_and(|l| !l.is_empty())
    }

    /// Sends a command to every session of `device`. Returns how many got it.
    pub fn send(&self, device: DeviceId, cmd: SessionCommand) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&device).map_or(0, |list| {
            list.iter().filter(|e| e.send(device, cmd.clone())).count()
        })
    }

    /// Credentials in use by live sessions, for the periodic expiry sweep.
    pub fn credentials_in_use(&self) -> Vec<(DeviceId, CredentialId)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .flat_map(|(d, l)| l.iter().filter_map(|e| e.credential.map(|c| (*d, c))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_session_takes_over_and_closing_targets_one_credential() {
        let s = Sessions::default();
        let (dev, c1, c2) = (DeviceId::new(), CredentialId::new(), CredentialId::new());
        let (mut first, taken) = s.register(dev, Some(c1));
        assert_eq!(taken, 0);
        let (mut second, taken) = s.register(dev, Some(c2));
        assert_eq!(taken, 1);
        assert!(matches!(
            first.commands.try_recv().map(|c| *c),
            Ok(SessionCommand::Close(CloseReason::TakenOver))
        ));
        s.unregister(dev, first.conn);
        assert_eq!(
            s.close_credential(dev, c1, CloseReason::CredentialRevoked),
            0
        );
        assert_eq!(
            s.close_credential(dev, c2, CloseReason::CredentialRevoked),
            1
        );
        assert!(matches!(
            second.commands.try_recv().map(|c| *c),
            Ok(SessionCommand::Close(CloseReason::CredentialRevoked))
        ));
        s.unregister(dev, second.conn);
        assert_eq!(s.close_device(dev, CloseReason::DeviceDisabled), 0);
        assert!(s.credentials_in_use().is_empty());
    }
}
