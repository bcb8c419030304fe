//! Scale measurement of the heavy telemetry reads (not part of the normal run): one device
//! holding many keys, written straight into the store, then the tag listing timed end to end
//! over REST. Run by hand in a release build:
//!
//! `CORRAL_SCALE_KEYS=10000,40000 cargo test --release --ignore-rust-version --test it -- --ignored --nocapture query_scale::`
//!
//! It prints the times and checks only that the listing holds exactly the keys written.

use crate::common;

use std::time::Instant;

use common::TestApp;
use corral::model::{DeviceId, Value};
use serde_json::Value as Json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand in a release build"]
async fn tag_listing_time_by_key_count() {
    let sizes: Vec<usize> = std::env::var("CORRAL_SCALE_KEYS")
        .unwrap_or_else(|_| "10000,40000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut t = TestApp::start().await;
    for n in sizes {
        let (dev, _) = t.device(&format!("scale-{n}")).await;
        let id: DeviceId = dev["id"].as_str().expect("id").parse().expect("device id");
        let store = t.app().store();
        for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
            let values = chunk
                .iter()
                .map(|i| (format!("k{i}"), Value::Long(*i as i64)))
                .collect();
            store
                .put_points(id, "default", &[(1_767_225_600_000, values)])
                .expect("put");
        }
        let started = Instant::now();
        let tags: Json = t
            .api
            .get(&format!("/devices/{id}/tags"), &[])
            .await
            .expect("tags");
        let took = started.elapsed();
        let keys = tags["tags"]["default"].as_array().expect("keys").len();
        assert_eq!(keys, n, "every key listed once");
        println!("tags of a device with {n} keys: {} ms", took.as_millis());
    }
    t.stop().await;
}
