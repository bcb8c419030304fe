//! Client-side RPC that Corral answers itself (thingsboard-device-api.md §5.2, §5.6):
//! `getSessionLimits` from the configured limits, and ThingsBoard's error shape for any other
//! method, so that a device's callback always fires. Shared by MQTT and the HTTP device API.

use serde_json::{Value as Json, json};

use super::protocol;
use crate::config::Config;

/// The reply to a client RPC request body `{"method":..,"params":..}`.
pub fn client_rpc(config: &Config, payload: &[u8]) -> Json {
    let method = serde_json::from_slice::<Json>(payload)
        .ok()
        .and_then(|v| v.get("method").and_then(Json::as_str).map(String::from));
    match method.as_deref() {
        Some("getSessionLimits") => protocol::session_limits(
            config.mqtt.max_packet_size,
            config.mqtt.max_inflight,
            config.limits.device_messages_per_sec,
        ),
        Some(m) => json!({"error": format!("unsupported method {m}")}),
        None => json!({"error": "the request needs a \"method\""}),
    }
}
