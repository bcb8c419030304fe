//! Corral: a single-binary, on-premises IoT device management appliance.
//!
//! Layers, bottom to top (dependencies point down only; `tests/it/layers.rs` checks it):
//! `config`, `metrics`, `model`, `names`, `limits`, `secrets` → `store`, `workers` → `error`,
//! `pki`, `events`, `audit` → `devices` → `integrations` → `data`, `auth`, `jobs`, `conditions`, `ota` →
//! `services` → `backups`, `device_messages` → transports `mqtt`, `api` → `app`, `client` → `sim` → `cli` →
//! `fuzzing` (harness only).

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod cli;
pub mod client;
pub mod conditions;
pub mod config;
pub mod dashboards;
pub mod data;
pub mod device_messages;
pub mod devices;
pub mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod integrations;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod names;
pub mod ota;
pub mod pki;
pub mod secrets;
pub mod services;
pub mod sim;
pub mod store;
pub mod workers;
