//! Corral's integration tests, one binary (one link, one process): each module drives the real
//! binary or the real `App` on 127.0.0.1:0 with real clients. `common` is the shared harness.
//!
//! Suites that need a special file system run on their own in CI and are `#[ignore]`d here:
//! `cargo test --test it -- --ignored --test-threads 1 disk_full::` (a small tmpfs) and
//! `... power_loss::` (a FUSE file system that drops unsynced writes).

mod common;

mod audit_flood;
mod authz;
mod backup;
mod campaigns;
mod cli;
mod conditions;
mod dashboards;
mod data_api;
mod device_table;
mod disk_full;
mod durability;
mod export;
mod exposure;
mod fuzz_corpus;
mod gateway;
mod http_limits;
mod identity;
mod integrations;
mod jobs;
mod layers;
mod message_rates;
mod mqtt_ingest;
mod ota;
mod power_loss;
mod query_scale;
mod rest_api;
mod rest_scenarios;
mod schedules;
mod store_integrity;
mod telemetry_limits;
mod trace;
mod web_ui;
