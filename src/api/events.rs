//! Live events for dashboards and `watch` commands: the in-process event bus as a
//! server-sent-event stream, filtered by kind and device. Live views only: a client that
//! falls behind is told how many events it missed (event `lagged`) and should re-read state.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::ApiQuery;
use crate::events::Event;
use crate::model::{DeviceId, FleetId, WorkspaceId};
use crate::services::Services;

pub fn routes() -> OpenApiRouter<Arc<Services>> {
    OpenApiRouter::new().routes(routes!(events))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Comma-separated kinds to receive (`device_connected`, `device_disconnected`,
    /// `telemetry_stored`, `job_updated`, `shared_attributes`, `client_attributes`, `condition`,
    /// `ota_device`, `campaign`, `integration_alarm`); all when absent.
    kinds: Option<String>,
    /// Only events of this device.
    device_id: Option<DeviceId>,
    /// Only events of this fleet's devices (and its campaigns).
    fleet_id: Option<FleetId>,
    /// Only events of this workspace's devices (and its fleets' campaigns).
    workspace_id: Option<WorkspaceId>,
}

/// Whose an event is, for filtering and visibility.
#[derive(Clone, Copy)]
enum Subject {
    Device(DeviceId),
    /// A fleet's (a campaign's): seen by whoever sees the fleet.
    Fleet(crate::model::FleetId),
    /// Server-wide: server admins only.
    Server,
}

/// The `kind` of an event and whose it is.
fn kind_of(e: &Event) -> (&'static str, Subject) {
    use Subject::Device as D;
    match e {
        Event::DeviceConnected { device_id, .. } => ("device_connected", D(*device_id)),
        Event::DeviceDisconnected { device_id } => ("device_disconnected", D(*device_id)),
        Event::TelemetryStored { device_id, .. } => ("telemetry_stored", D(*device_id)),
        Event::JobUpdated { device_id, .. } => ("job_updated", D(*device_id)),
        Event::SharedAttributes { device_id, .. } => ("shared_attributes", D(*device_id)),
        Event::ClientAttributes { device_id, .. } => ("client_attributes", D(*device_id)),
        Event::Condition { device_id, .. } => ("condition", D(*device_id)),
        Event::OtaDevice { device_id, .. } => ("ota_device", D(*device_id)),
        Event::Campaign { fleet_id, .. } => ("campaign", Subject::Fleet(*fleet_id)),
        Event::IntegrationAlarm { .. } => ("integration_alarm", Subject::Server),
    }
}

/// Stream live events
///
/// Streams live events as server-sent events: the `event:` field is the kind, `data:` the event as
/// JSON. Filter with `kinds` (comma-separated), `device_id`, `fleet_id` and `workspace_id` (a
/// device's fleet and workspace as they were at its first event in the stream; server-wide events
/// match neither). Only events of devices the caller
/// can see are sent, `campaign` events to those who see the campaign's fleet, and server-wide
/// events (`integration_alarm`) only to server admins. This is a live view, not a log: a client
/// that falls behind gets a `lagged` event with the number of events it missed and should re-read
/// the state it shows. A comment is sent every 15 s to keep the
/// connection open. Any authenticated caller.
#[utoipa::path(get, path = "/events", tag = "events", params(EventParams),
    responses((status = 200, content_type = "text/event-stream",
        description = "one SSE event per bus event: `event:` is the kind, `data:` the event as JSON")))]
async fn events(
    State(s): State<Arc<Services>>,
    caller: super::authz::Caller,
    ApiQuery(q): ApiQuery<EventParams>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let who = caller.filters().clone();
    let kinds: Option<Vec<String>> = q
        .kinds
        .map(|k| k.split(',').map(|x| x.trim().to_string()).collect());
    let rx = s.events.subscribe();
    let stop = s.events.stopped();
    // Where each device and fleet lives (None: gone), asked once per stream: a device's
    // visibility and the place filters are decided from it.
    let places = Arc::new(std::sync::Mutex::new(Places::default()));
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let kinds = kinds.clone();
        let (s, who, places) = (s.clone(), who.clone(), places.clone());
        async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        let (kind, subject) = kind_of(&e);
                        let device = match subject {
                            Subject::Device(d) => Some(d),
                            _ => None,
                        };
                        if kinds.as_ref().is_some_and(|k| !k.iter().any(|x| x == kind))
                            || q.device_id.is_some_and(|d| Some(d) != device)
                        {
                            continue;
                        }
                        let place = match subject {
                            Subject::Server => None,
                            Subject::Device(d) => places_of(&places, &s, Subject::Device(d)).await,
                            Subject::Fleet(f) => places_of(&places, &s, Subject::Fleet(f)).await,
                        };
                        if q.fleet_id.is_some_and(|f| place.is_none_or(|p| p.1 != f))
                            || q.workspace_id
                                .is_some_and(|w| place.is_none_or(|p| p.0 != w))
                        {
                            continue;
                        }
                        // Server-wide events (integration alarms) are for server admins; a
                        // device's and a fleet's for those who see the fleet.
                        let visible = match subject {
                            _ if who.admin => true,
                            Subject::Server => false,
                            _ => place.is_some_and(|(w, f)| who.sees_fleet(w, f)),
                        };
                        if !visible {
                            continue;
                        }
                        let data = serde_json::to_string(&e).unwrap_or_default();
                        return Some((Ok(SseEvent::default().event(kind).data(data)), rx));
                    }
                    Err(RecvError::Lagged(n)) => {
                        let ev = SseEvent::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}"));
                        return Some((Ok(ev), rx));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    let stream = stream.take_until(stop);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Where devices and fleets of one stream live, remembered for its life.
#[derive(Default)]
struct Places {
    devices: std::collections::HashMap<DeviceId, Option<(WorkspaceId, FleetId)>>,
    fleets: std::collections::HashMap<FleetId, Option<WorkspaceId>>,
}

/// The workspace and fleet of a device's or a fleet's event; None when it is gone.
async fn places_of(
    places: &std::sync::Mutex<Places>,
    s: &Services,
    subject: Subject,
) -> Option<(WorkspaceId, FleetId)> {
    let lock = || places.lock().unwrap_or_else(|p| p.into_inner());
    match subject {
        Subject::Device(d) => {
            if let Some(p) = lock().devices.get(&d).copied() {
                return p;
            }
            let p = s
                .registry
                .device_record(d)
                .await
                .ok()
                .map(|r| (r.workspace_id, r.fleet_id));
            lock().devices.insert(d, p);
            p
        }
        Subject::Fleet(f) => {
            if let Some(w) = lock().fleets.get(&f).copied() {
                return w.map(|w| (w, f));
            }
            let w = s.registry.fleet(f).await.ok().map(|x| x.workspace_id);
            lock().fleets.insert(f, w);
            w.map(|w| (w, f))
        }
        Subject::Server => None,
    }
}
