//! Message rates by fleet for the overview's sparklines: telemetry messages per minute over the
//! last hour, one ring of 60 counters per fleet. Ingest counts each stored message per device
//! (`data::counts`, a sharded counter, not the event bus: a burst would overrun a bus reader and
//! the counts would come out low); the `message-rates` worker takes those counts every
//! `TAKE_EVERY` and files them by fleet, in the minute it takes them. Memory stays small and bounded: a ring per fleet
//! that had messages in the last hour, and a device → fleet cache of at most `CACHE_MAX`
//! entries, each trusted for 10 minutes (a device moved to another fleet counts there after).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Registry;
use crate::model::{DeviceId, FleetId, Millis, WorkspaceId};

/// Minutes a ring holds.
pub const MINUTES: usize = 60;
/// Devices whose fleet is remembered at once; past it the cache starts over.
const CACHE_MAX: usize = 100_000;
/// Minutes a device's fleet is trusted before it is looked up again.
const CACHE_MINUTES: i64 = 10;
const MINUTE_MS: Millis = 60_000;
/// How often the worker takes the counts: a message is filed at most this late.
const TAKE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The last hour's messages of one fleet, a counter per minute.
#[derive(Debug, Clone)]
struct Ring {
    workspace: WorkspaceId,
    /// The newest minute counted (minutes since the epoch).
    minute: i64,
    counts: [u32; MINUTES],
}

impl Ring {
    fn new(workspace: WorkspaceId, minute: i64) -> Self {
        Self {
            workspace,
            minute,
            counts: [0; MINUTES],
        }
    }

    /// Moves the ring on to `minute`, zeroing the minutes it passes.
    fn advance(&mut self, minute: i64) {
        if minute <= self.minute {
            return;
        }
        let steps = (minute - self.minute).min(MINUTES as i64);
        for m in (minute - steps + 1)..=minute {
            self.counts[slot(m)] = 0;
        }
        self.minute = minute;
    }

    fn add(&mut self, minute: i64, n: u32) {
        self.advance(minute);
        // A message of a minute the ring has passed by less than an hour still counts there.
        if minute > self.minute - MINUTES as i64 {
            self.counts[slot(minute)] = self.counts[slot(minute)].saturating_add(n);
        }
    }

    /// The 60 minutes ending at `now_minute`, oldest first.
    fn series(&self, now_minute: i64) -> Vec<u32> {
        let mut r = self.clone();
        r.advance(now_minute);
        (0..MINUTES as i64)
            .map(|i| r.counts[slot(now_minute - (MINUTES as i64 - 1) + i)])
            .collect()
    }
}

fn slot(minute: i64) -> usize {
    minute.rem_euclid(MINUTES as i64) as usize
}

fn minute_of(ms: Millis) -> i64 {
    ms.div_euclid(MINUTE_MS)
}

/// One fleet's last hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRate {
    pub workspace_id: WorkspaceId,
    pub fleet_id: FleetId,
    /// Messages per minute, oldest first; the last is the current (partial) minute.
    pub per_minute: Vec<u32>,
}

#[derive(Default)]
struct Inner {
    fleets: HashMap<FleetId, Ring>,
    /// Device → (workspace, fleet, the minute it was looked up).
    cache: HashMap<DeviceId, (WorkspaceId, FleetId, i64)>,
}

/// Every fleet's rate over the last hour.
#[derive(Default)]
pub struct MessageRates {
    inner: Mutex<Inner>,
}

impl MessageRates {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `n` messages of a fleet at `at`.
    pub fn note(&self, workspace: WorkspaceId, fleet: FleetId, at: Millis, n: u32) {
        let minute = minute_of(at);
        let mut g = self.lock();
        g.fleets
            .entry(fleet)
            .or_insert_with(|| Ring::new(workspace, minute))
            .add(minute, n);
    }

    /// Each fleet with messages in the hour before `now`; fleets quiet for an hour are
    /// forgotten.
    pub fn last_hour(&self, now: Millis) -> Vec<FleetRate> {
        let minute = minute_of(now);
        let mut g = self.lock();
        g.fleets.retain(|_, r| r.minute > minute - MINUTES as i64);
        g.fleets
            .iter()
            .map(|(f, r)| FleetRate {
                workspace_id: r.workspace,
                fleet_id: *f,
                per_minute: r.series(minute),
            })
            .collect()
    }

    /// A device's fleet, from the cache while it is fresh.
    fn cached(&self, device: DeviceId, minute: i64) -> Option<(WorkspaceId, FleetId)> {
        let g = self.lock();
        g.cache
            .get(&device)
            .filter(|(_, _, at)| minute - at < CACHE_MINUTES)
            .map(|(w, f, _)| (*w, *f))
    }

    fn remember(&self, device: DeviceId, w: WorkspaceId, f: FleetId, minute: i64) {
        let mut g = self.lock();
        if g.cache.len() >= CACHE_MAX && !g.cache.contains_key(&device) {
            g.cache.clear();
        }
        g.cache.insert(device, (w, f, minute));
    }

    /// The `message-rates` worker: every few seconds takes the messages stored per device
    /// since its last look (`take`, counted exactly on the ingest path) and files them in each
    /// device's fleet, until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        registry: Arc<Registry>,
        take: impl Fn() -> Vec<(DeviceId, u32)>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TAKE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let now = crate::model::now_ms();
            let minute = minute_of(now);
            for (device, n) in take() {
                let place = match self.cached(device, minute) {
                    Some(p) => Some(p),
                    None => match registry.device_record(device).await {
                        Ok(d) => {
                            self.remember(device, d.workspace_id, d.fleet_id, minute);
                            Some((d.workspace_id, d.fleet_id))
                        }
                        // A device deleted meanwhile: its messages count nowhere.
                        Err(_) => None,
                    },
                };
                if let Some((w, f)) = place {
                    self.note(w, f, now, n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_last_hour_by_minute() {
        let rates = MessageRates::default();
        let (w, f) = (WorkspaceId::new(), FleetId::new());
        let t0 = 1_000 * MINUTE_MS;
        rates.note(w, f, t0, 3);
        rates.note(w, f, t0 + 30_000, 2);
        rates.note(w, f, t0 + 5 * MINUTE_MS, 7);
        let now = t0 + 5 * MINUTE_MS + 10_000;
        let s = &rates.last_hour(now)[0].per_minute;
        assert_eq!(s.len(), MINUTES);
        assert_eq!(s[MINUTES - 1], 7, "the current minute is last");
        assert_eq!(s[MINUTES - 6], 5, "five minutes ago");
        assert_eq!(s.iter().sum::<u32>(), 12);
        // Late, but within the hour: counted in its own minute.
        rates.note(w, f, t0 + MINUTE_MS, 1);
        assert_eq!(rates.last_hour(now)[0].per_minute[MINUTES - 5], 1);
        // Half an hour on, the old minutes are still there; an hour on they are gone, and so is
        // the fleet once it has been quiet for an hour.
        let later = rates.last_hour(now + 30 * MINUTE_MS);
        assert_eq!(later[0].per_minute.iter().sum::<u32>(), 13);
        rates.note(w, f, now + 61 * MINUTE_MS, 1);
        assert_eq!(
            rates.last_hour(now + 61 * MINUTE_MS)[0]
                .per_minute
                .iter()
                .sum::<u32>(),
            1
        );
        assert!(rates.last_hour(now + 200 * MINUTE_MS).is_empty());
    }
}
