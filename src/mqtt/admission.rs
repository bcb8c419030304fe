//! The publish service of a device connection with admission control in front of it
//! (`limits::InFlight`). ntex-mqtt reads and decodes a connection's next packet only while its
//! publish service is ready; this service is not ready while one of the connection's messages
//! waits for room, so under overload connections stop being read, PUBACKs for what was
//! admitted keep flowing, and nobody is disconnected for the overload itself.
//!
//! ntex caches a service's readiness until the service says it changed (a `ReadyNotifier`
//! subscribed in `bind`): without the notification the dispatcher never asks again, keeps
//! decoding, and every message of a device's in-flight window waits here in memory (about
//! 4 KiB each; 10,000 devices with 64 each came to gigabytes, BENCHMARKS.md "Ingest at 10,000
//! devices"). So each transition is announced, and a paused connection holds one waiting
//! message.
use std::cell::Cell;
use std::convert::Infallible;

use ntex_service::{BindCtx, Ctx, ReadyNotifier, Service, ServiceFactory};
use prometheus_client::metrics::counter::Counter;

use crate::limits::{Admitted, InFlight};
use crate::services::Services;

/// Makes one `Gated` service per connection around a publish handler, which gets the
/// admission with each message and drops it once the message no longer needs the store.
#[derive(Clone)]
pub struct Gate<H> {
    in_flight: InFlight,
    pauses: Counter,
    handler: H,
}

impl<H> Gate<H> {
    pub fn new(services: &Services, handler: H) -> Self {
        Self {
            in_flight: services.in_flight.clone(),
            pauses: services.metrics.ingest_read_pauses.clone(),
            handler,
        }
    }
}

impl<St, Req, H, Res, E> ServiceFactory<St, Req> for Gate<H>
where
    H: AsyncFn(&St, Req, Admitted) -> Result<Res, E> + Clone,
{
    type Res = Res;
    type Error = E;
    type Service = Gated<H>;
    type InitError = Infallible;

    async fn create(&self, _: &St) -> Result<Self::Service, Self::InitError> {
        Ok(Gated {
            gate: self.clone(),
            waiting: Cell::new(false),
            admitted: tokio::sync::Notify::new(),
            changed: ReadyNotifier::new(),
        })
    }
}

/// One connection's publish service. Admission is taken when a message arrives, not while
/// the dispatcher asks for readiness: a connection that is merely idle must not hold room, or
/// a few thousand idle devices would lock the rest out. Instead, a connection whose message
/// waits for room is not ready, so it is not read any further until that message is admitted:
/// each connection has at most one message waiting, and the gate's waiters are served in the
/// order they came.
pub struct Gated<H> {
    gate: Gate<H>,
    /// A message of this connection waits for room.
    waiting: Cell<bool>,
    /// Wakes this connection's readiness check when its message is let in.
    admitted: tokio::sync::Notify,
    /// Tells ntex that readiness changed (it caches a successful check until told).
    changed: ReadyNotifier,
}

impl<St, Req, H, Res, E> Service<St, Req> for Gated<H>
where
    H: AsyncFn(&St, Req, Admitted) -> Result<Res, E>,
{
    type Res = Res;
    type Error = E;

    fn bind(&self, ctx: BindCtx<'_>) {
        ctx.subscribe(&self.changed);
    }

    async fn ready(&self, _: Ctx<'_, Self, St>) -> Result<(), E> {
        loop {
            let admitted = self.admitted.notified();
            if !self.waiting.get() {
                return Ok(());
            }
            admitted.await;
        }
    }

    async fn call(&self, req: Req, ctx: Ctx<'_, Self, St>) -> Result<Res, E> {
        let admitted = match self.gate.in_flight.try_admit() {
            Some(a) => a,
            None => {
                self.gate.pauses.inc();
                self.waiting.set(true);
                self.changed.notify();
                let a = self.gate.in_flight.admit().await;
                self.waiting.set(false);
                self.admitted.notify_waiters();
                self.changed.notify();
                a
            }
        };
        (self.gate.handler)(ctx.st(), req, admitted).await
    }
}
