//! Telemetry messages stored per device since the last look: the exact counts behind the
//! overview's message-rate sparklines. Counted on the ingest path, after the store took the
//! message, so a burst that would overrun an event-bus reader is still counted in full; the
//! `message-rates` worker takes the counts every few seconds and files them by fleet. Memory is
//! bounded by the devices that sent something since the last take.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::DeviceId;

/// Shards of the count map: messages of different devices rarely wait on one lock.
const SHARDS: usize = 16;

#[derive(Debug)]
pub struct StoredCounts {
    shards: Vec<Mutex<HashMap<DeviceId, u32>>>,
}

impl Default for StoredCounts {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl StoredCounts {
    /// One more message of `device` stored.
    pub fn add(&self, device: DeviceId) {
        let mut shard = self.shards[super::clock::shard_of(device, SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = shard.entry(device).or_default();
        *n = n.saturating_add(1);
    }

    /// The counts since the last take, and starts again from zero.
    pub fn take(&self) -> Vec<(DeviceId, u32)> {
        let mut out = Vec::new();
        for s in &self.shards {
            let taken = std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner()));
            out.extend(taken);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_and_start_over_after_a_take() {
        let c = StoredCounts::default();
        let (a, b) = (DeviceId::new(), DeviceId::new());
        for _ in 0..5_000 {
            c.add(a);
        }
        c.add(b);
        let mut got = c.take();
        got.sort_by_key(|(_, n)| *n);
        assert_eq!(got, vec![(b, 1), (a, 5_000)]);
        assert!(c.take().is_empty());
        c.add(b);
        assert_eq!(c.take(), vec![(b, 1)]);
    }
}
