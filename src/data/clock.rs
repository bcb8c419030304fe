//! The server's timestamps for telemetry sent without `ts`: the receive time in milliseconds,
//! made strictly increasing per device. Two messages of one device in the same millisecond
//! would otherwise get the same timestamp, and the second would replace the first (points
//! with equal timestamps replace each other, as in ThingsBoard): a device flushing a backlog
//! would lose most of it although every message was acknowledged. Points that carry the
//! device's own `ts` keep the replace-on-same-timestamp rule.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::{DeviceId, Millis};

/// Stands for "the server's time" in parsed telemetry until the clock stamps it: device
/// timestamps are never negative.
pub const SERVER_TIME: Millis = -1;

/// Shards of the last-stamp map: messages of different devices rarely wait on one lock.
const SHARDS: usize = 16;
/// A shard is pruned of stamps older than a second when it grows past this many devices.
const PRUNE_AT: usize = 1024;

/// Which of `n` shards of a per-device map holds `device`: messages of different devices
/// rarely wait on one lock (the clock here, the stored counts in `counts`).
pub(super) fn shard_of(device: DeviceId, n: usize) -> usize {
    device
        .as_bytes()
        .iter()
        .fold(0usize, |a, b| a ^ usize::from(*b))
        % n
}

/// The last timestamp given to each device that sent telemetry in the last moments.
pub struct DeviceClock {
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    last: HashMap<DeviceId, Millis>,
    /// Size after the last prune; the next prune waits until the shard doubles from it.
    pruned_to: usize,
}

impl Default for DeviceClock {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

impl DeviceClock {
    /// The timestamp for `device`'s next message received at `now`: `now`, or one past the
    /// last one given to the device when that is not before `now` (the same millisecond, or a
    /// clock stepped back).
    pub fn stamp(&self, device: DeviceId, now: Millis) -> Millis {
        let mut shard = self.shards[shard_of(device, SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let ts = match shard.last.get(&device) {
            Some(&last) if last >= now => last + 1,
            _ => now,
        };
        shard.last.insert(device, ts);
        if shard.last.len() > PRUNE_AT.max(shard.pruned_to * 2) {
            // A device whose last stamp is a second old gets `now` next time whatever: its
            // entry is no longer needed.
            shard.last.retain(|_, t| *t >= now - 1000);
            shard.pruned_to = shard.last.len();
        }
        ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_within_a_millisecond_and_follow_the_clock() {
        let c = DeviceClock::default();
        let (a, b) = (DeviceId::new(), DeviceId::new());
        assert_eq!(c.stamp(a, 1000), 1000);
        assert_eq!(c.stamp(a, 1000), 1001);
        assert_eq!(c.stamp(a, 1000), 1002);
        assert_eq!(c.stamp(b, 1000), 1000, "each device has its own");
        assert_eq!(c.stamp(a, 1001), 1003, "still ahead of the clock");
        assert_eq!(c.stamp(a, 5000), 5000, "the clock caught up");
        assert_eq!(c.stamp(a, 4000), 5001, "a clock stepped back");
    }

    #[test]
    fn old_entries_are_pruned() {
        let c = DeviceClock::default();
        for _ in 0..20_000 {
            c.stamp(DeviceId::new(), 1000);
        }
        // As many again nine seconds later: as shards double, the old entries go.
        for _ in 0..20_001 {
            c.stamp(DeviceId::new(), 10_000);
        }
        let held: usize = c
            .shards
            .iter()
            .map(|s| s.lock().expect("lock").last.len())
            .sum();
        assert!(held < 25_000, "{held} of 40,001 entries held");
        let d = DeviceId::new();
        assert_eq!(c.stamp(d, 10_000), 10_000);
        assert_eq!(c.stamp(d, 10_000), 10_001, "a fresh entry is kept");
    }
}
