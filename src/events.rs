//! The in-process event bus (tokio broadcast): device connectivity, data arrival, attribute
//! changes, job transitions, device conditions and integration alarms, for live views and
//! metrics. Subscribers that lag lose events; anything that must not lose data reads a
//! durable queue in the store instead (integrations see events through a synchronous tap that
//! writes their queues).

use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::DeviceId;

/// Something that happened, as seen by observers.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    DeviceConnected {
        device_id: DeviceId,
        transport: &'static str,
    },
    DeviceDisconnected {
        device_id: DeviceId,
    },
    TelemetryStored {
        device_id: DeviceId,
        tag: String,
        values: usize,
    },
    /// A job changed state.
    JobUpdated {
        job_id: crate::model::JobId,
        device_id: DeviceId,
        state: crate::model::JobState,
    },
    /// Shared attributes changed: the update as the device receives it.
    SharedAttributes {
        device_id: DeviceId,
        update: serde_json::Value,
    },
    /// A device reported client attributes (the values as it sent them).
    ClientAttributes {
        device_id: DeviceId,
        values: serde_json::Value,
    },
    /// A condition was opened, updated, acknowledged or closed (`action`), as it now stands.
    Condition {
        device_id: DeviceId,
        action: ConditionChange,
        condition: Box<crate::model::Condition>,
    },
    /// A device's update in a campaign changed state.
    OtaDevice {
        campaign_id: crate::model::CampaignId,
        device_id: DeviceId,
        state: crate::model::OtaState,
        detail: Option<String>,
    },
    /// A campaign changed state (or was approved).
    Campaign {
        campaign_id: crate::model::CampaignId,
        fleet_id: crate::model::FleetId,
        state: crate::model::CampaignState,
        note: Option<String>,
    },
    /// An integration's queue reached a cap and dropped entries (`raised`), or is back under
    /// 90 % of its caps (`!raised`).
    IntegrationAlarm {
        integration_id: crate::model::IntegrationId,
        raised: bool,
        dropped: u64,
    },
}

/// What happened to a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionChange {
    Opened,
    /// Reported again while open: severity, details or count changed.
    Updated,
    Acknowledged,
    Closed,
}

impl ConditionChange {
    /// The name integrations and live views receive.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Updated => "updated",
            Self::Acknowledged => "acknowledged",
            Self::Closed => "closed",
        }
    }
}

/// A synchronous observer of every event, called by `publish` before the broadcast: for
/// consumers that must not lose events to lag (integration queues).
pub type Tap = std::sync::Arc<dyn Fn(&Event) + Send + Sync>;

/// Cloneable handle to the bus.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    /// Set at shutdown, so that long-lived subscribers (event streams) end and do not hold up
    /// the HTTP server's graceful stop.
    stop: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    tap: Option<Tap>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
            stop: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
            tap: None,
        }
    }

    /// A bus whose every event is first shown to `tap`.
    pub fn with_tap(capacity: usize, tap: Tap) -> Self {
        Self {
            tap: Some(tap),
            ..Self::new(capacity)
        }
    }

    /// Ends long-lived subscriptions (see `stopped`).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Completes once `stop` has been called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Publishes to current subscribers; having none is normal.
    pub fn publish(&self, e: Event) {
        if let Some(tap) = &self.tap {
            tap(&e);
        }
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
