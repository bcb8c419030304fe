//! Corral: a single-binary, on-premises IoT device management appliance.
//!
//! Layers, bottom to top (dependencies point down only):
//! `config`, `metrics`, `model`, `names`, `limits` → `store` → `pki`, `events`, `audit` → `devices` →
//! `integrations` → `data`, `auth`, `jobs`, `conditions` →
//! `services` → transports `mqtt`, `api` → `app` (wiring, lifecycle) → `cli`.

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod cli;
pub mod conditions;
pub mod config;
pub mod data;
pub mod devices;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod integrations;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod names;
pub mod pki;
pub mod services;
pub mod sim;
pub mod store;
