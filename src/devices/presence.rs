//! Live presence: which devices are connected right now and when each was last active.
//! Kept in memory (it is a property of this process) and folded into the stored device record
//! on connect and disconnect, so that "last seen" survives restarts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::model::{DeviceId, Millis, now_ms};

/// Per-device live state, shared with the device's sessions so that marking activity on every
/// message is a single atomic store, without touching the map lock.
#[derive(Debug, Default)]
pub struct Liveness {
    connections: AtomicU32,
    connected_at: AtomicI64,
    last_activity: AtomicI64,
}

impl Liveness {
    pub fn touch(&self) {
        self.last_activity.store(now_ms(), Ordering::Relaxed);
    }
    pub fn last_activity(&self) -> Millis {
        self.last_activity.load(Ordering::Relaxed)
    }
}

/// A snapshot for the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceInfo {
    pub connections: u32,
    pub connected_at: Millis,
    pub last_activity: Millis,
}

#[derive(Debug, Default)]
pub struct Presence {
    map: Mutex<HashMap<DeviceId, Arc<Liveness>>>,
}

impl Presence {
    /// Records a new connection of `id` and returns its shared liveness.
    pub fn connect(&self, id: DeviceId) -> Arc<Liveness> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(id).or_default().clone();
        let now = now_ms();
        if e.connections.fetch_add(1, Ordering::AcqRel) == 0 {
            e.connected_at.store(now, Ordering::Relaxed);
        }
        e.last_activity.store(now, Ordering::Relaxed);
        e
    }

    /// Records the end of one connection; returns the last activity time and whether the device
    /// is now offline.
    pub fn disconnect(&self, id: DeviceId) -> (Millis, bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = map.get(&id).cloned() else {
            return (now_ms(), true);
        };
        let left = e
            .connections
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        if left == 0 {
            map.remove(&id);
        }
        (e.last_activity(), left == 0)
    }

    pub fn get(&self, id: DeviceId) -> Option<PresenceInfo> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id).map(|e| PresenceInfo {
            connections: e.connections.load(Ordering::Relaxed),
            connected_at: e.connected_at.load(Ordering::Relaxed),
            last_activity: e.last_activity(),
        })
    }

    /// Last activity of every connected device.
    pub fn activity(&self) -> Vec<(DeviceId, Millis)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(id, e)| (*id, e.last_activity())).collect()
    }

    pub fn online_count(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_connections_keep_a_device_online_until_both_end() {
        let p = Presence::default();
        let id = DeviceId::new();
        p.connect(id);
        p.connect(id);
        assert_eq!(p.get(id).map(|i| i.connections), Some(2));
        assert!(!p.disconnect(id).1);
        assert!(p.disconnect(id).1);
        assert!(p.get(id).is_none());
        assert_eq!(p.online_count(), 0);
    }
}
