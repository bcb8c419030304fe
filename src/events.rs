//! The in-process event bus (tokio broadcast): device connectivity and data arrival, for live
//! views and metrics. Subscribers that lag lose events; anything that must not lose data reads a
//! durable queue in the store instead.

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
}

/// Cloneable handle to the bus.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    /// Set at shutdown, so that long-lived subscribers (event streams) end and do not hold up
    /// the HTTP server's graceful stop.
    stop: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
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
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
