//! The service layer as one value: everything transports (MQTT, HTTP) need, built once by `app`
//! and shared by `Arc`. No transport type appears here.

use std::sync::Arc;

use crate::auth::AuthService;
use crate::config::Config;
use crate::data::DataService;
use crate::devices::{Presence, Registry};
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::pki::Pki;
use crate::store::Store;

pub struct Services {
    pub config: Config,
    pub store: Store,
    pub pki: Pki,
    pub registry: Registry,
    pub presence: Arc<Presence>,
    pub data: DataService,
    pub auth: AuthService,
    pub events: EventBus,
    pub metrics: Arc<Metrics>,
}

impl Services {
    pub fn new(config: Config, store: Store, pki: Pki, metrics: Arc<Metrics>) -> Self {
        let presence = Arc::new(Presence::default());
        let events = EventBus::default();
        Self {
            registry: Registry::new(store.clone(), presence.clone()),
            data: DataService::new(store.clone(), events.clone(), metrics.clone()),
            auth: AuthService::new(store.clone()),
            config,
            store,
            pki,
            presence,
            events,
            metrics,
        }
    }
}
