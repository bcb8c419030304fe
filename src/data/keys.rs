//! The telemetry key caps (`[limits]`): distinct keys one message may carry, and distinct keys
//! (series, each tag's counted) one device may have. A message over either cap is refused
//! whole. The device cap is checked against the store's in-memory series count, plus what
//! messages still in flight may add (reserved here until they are stored), so the check costs
//! no scan and concurrent messages cannot together pass the cap. Only near the cap are the
//! message's keys looked up, so that keys the device already has are always accepted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::config::LimitsConfig;
use crate::devices::protocol::Telemetry;
use crate::model::DeviceId;
use crate::store::ports::{StoreError, TelemetryStore};

/// Why a message's keys were refused. The message is safe to return to the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error(
        "the message carries {keys} distinct keys; one message may carry at most {max} (send them in several messages)"
    )]
    TooManyInMessage { keys: usize, max: usize },
    #[error(
        "the device has reached its cap of {max} distinct telemetry keys; the message adds {new} new ones and was not stored (keys the device already has are still accepted)"
    )]
    DeviceCap { max: usize, new: usize },
}

impl KeyRefusal {
    /// The stable name: the metrics reason and the HTTP error code.
    pub fn code(&self) -> &'static str {
        match self {
            KeyRefusal::TooManyInMessage { .. } => "too_many_keys",
            KeyRefusal::DeviceCap { .. } => "key_quota_exceeded",
        }
    }
}

/// New keys reserved per device by messages not yet stored.
type Reserved = Arc<Mutex<HashMap<DeviceId, usize>>>;

/// Checks messages against the key caps; shared by every transport.
#[derive(Clone)]
pub struct KeyGate {
    /// 0 disables a cap.
    per_message: usize,
    per_device: usize,
    reserved: Reserved,
}

/// Keys a message may add, held until it is stored (or refused by the store): by then the
/// store's count includes them.
pub struct Reservation {
    reserved: Reserved,
    device: DeviceId,
    n: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = r.get_mut(&self.device) {
            *v = v.saturating_sub(self.n);
            if *v == 0 {
                r.remove(&self.device);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Refused(#[from] KeyRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KeyGate {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            per_message: limits.telemetry_keys_per_message as usize,
            per_device: limits.telemetry_keys_per_device as usize,
            reserved: Default::default(),
        }
    }

    /// Admits a message of `device` under `tag`, or says which cap it would pass. Keep the
    /// reservation until the message is stored.
    pub async fn admit(
        &self,
        store: &dyn TelemetryStore,
        device: DeviceId,
        tag: &str,
        telemetry: &Telemetry,
    ) -> Result<Option<Reservation>, GateError> {
        let keys: HashSet<&str> = telemetry
            .iter()
            .flat_map(|(_, values)| values.iter().map(|(k, _)| k.as_str()))
            .collect();
        if self.per_message > 0 && keys.len() > self.per_message {
            return Err(KeyRefusal::TooManyInMessage {
                keys: keys.len(),
                max: self.per_message,
            }
            .into());
        }
        if self.per_device == 0 || keys.is_empty() {
            return Ok(None);
        }
        // Far from the cap (nearly always): every key of the message may be new, and it
        // still fits. No lookup.
        if let Some(r) = self.reserve(store, device, keys.len()) {
            return Ok(Some(r));
        }
        // Near the cap: only keys the device does not have yet count. Looked up before the
        // lock; a key stored meanwhile is counted twice, which errs on the safe side.
        let mut new = 0;
        for k in &keys {
            if !store.has_series(device, tag, k).await? {
                new += 1;
            }
        }
        if new == 0 {
            return Ok(None);
        }
        self.reserve(store, device, new).map(Some).ok_or_else(|| {
            KeyRefusal::DeviceCap {
                max: self.per_device,
                new,
            }
            .into()
        })
    }

    /// Reserves `n` new keys if the device's stored and reserved keys leave room for them.
    fn reserve(
        &self,
        store: &dyn TelemetryStore,
        device: DeviceId,
        n: usize,
    ) -> Option<Reservation> {
        let mut r = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let pending = r.get(&device).copied().unwrap_or(0);
        if store.series_count(device) + pending + n > self.per_device {
            return None;
        }
        r.insert(device, pending + n);
        Some(Reservation {
            reserved: self.reserved.clone(),
            device,
            n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;
    use crate::store::test_util::open_temp;

    fn message(keys: &[&str]) -> Telemetry {
        vec![(
            1000,
            keys.iter()
                .map(|k| (k.to_string(), Value::Long(1)))
                .collect(),
        )]
    }

    #[tokio::test]
    async fn messages_in_flight_cannot_pass_the_device_cap_together() {
        let (_d, store) = open_temp();
        let gate = KeyGate::new(&LimitsConfig {
            telemetry_keys_per_message: 4,
            telemetry_keys_per_device: 6,
            ..Default::default()
        });
        let dev = DeviceId::new();
        let admit = async |keys: &[&str]| gate.admit(&store, dev, "default", &message(keys)).await;
        let first = admit(&["a", "b", "c", "d"]).await.expect("fits");
        // While the first is in flight its keys are reserved: four more new keys do not fit.
        assert!(matches!(
            admit(&["e", "f", "g", "h"]).await,
            Err(GateError::Refused(KeyRefusal::DeviceCap { max: 6, new: 4 }))
        ));
        drop(first);
        let second = admit(&["e", "f", "g", "h"])
            .await
            .expect("fits once released");
        drop(second);
        store
            .put_points(dev, "default", &message(&["a", "b", "c", "d"]))
            .expect("put");
        assert!(matches!(
            admit(&["a", "b", "c", "d", "e"]).await,
            Err(GateError::Refused(KeyRefusal::TooManyInMessage {
                keys: 5,
                max: 4
            }))
        ));
        // Near the cap only the new keys count: two of these four are new.
        let near = admit(&["a", "b", "x", "y"])
            .await
            .expect("two new keys fit");
        assert!(matches!(near, Some(Reservation { n: 2, .. })));
        drop(near);
        store
            .put_points(dev, "default", &message(&["x", "y"]))
            .expect("put");
        assert_eq!(store.series_count(dev), 6);
        // At the cap: keys the device has are accepted, a new one is not; other tags count.
        assert!(
            admit(&["a", "b", "x", "y"])
                .await
                .expect("known keys")
                .is_none()
        );
        assert!(matches!(
            admit(&["a", "z"]).await,
            Err(GateError::Refused(KeyRefusal::DeviceCap { new: 1, .. }))
        ));
        assert!(matches!(
            gate.admit(&store, dev, "power", &message(&["a"])).await,
            Err(GateError::Refused(KeyRefusal::DeviceCap { new: 1, .. }))
        ));
        // Another device has its own count; 0 disables both caps.
        assert!(
            gate.admit(&store, DeviceId::new(), "default", &message(&["z"]))
                .await
                .expect("fits")
                .is_some()
        );
        let open = KeyGate::new(&LimitsConfig {
            telemetry_keys_per_message: 0,
            telemetry_keys_per_device: 0,
            ..Default::default()
        });
        let many: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(
            open.admit(&store, dev, "default", &message(&many))
                .await
                .expect("no caps")
                .is_none()
        );
    }
}
