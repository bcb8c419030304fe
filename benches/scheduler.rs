//! Scheduler tick cost with many unfinished jobs (DESIGN.md §8 has no target; issue 5 asked
//! that the per-second tick not grow with the queue). Starts a real `App`, creates N devices
//! that stay offline and one fleet job to all of them, so N jobs wait queued, then times
//! ordinary ticks (which read only the jobs that are due, from the wake-up index) against full
//! ticks (which read every unfinished job, as the once-a-minute safety sweep does, and as every
//! tick did before the index). Prints the figures; never asserts on time.
//!
//! `cargo bench --ignore-rust-version --bench scheduler -- --devices 10000`

mod common;

use std::time::{Duration, Instant};

use corral::jobs::fleet::NewFleetJob;
use corral::model::FleetId;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = common::arg(&args, "--devices", 10_000);
    let b = common::start().await?;
    let s = b.app.services.clone();
    let fleet: FleetId = b.fleet["id"].as_str().unwrap_or_default().parse()?;
    let t = Instant::now();
    for i in 0..n {
        s.registry
            .create_device_with(fleet, &format!("d{i}"), |_| Ok(vec![]))
            .await?;
    }
    println!("{n} devices created in {:.1} s", t.elapsed().as_secs_f64());
    let fj = s
        .jobs
        .create_fleet_job(
            fleet,
            serde_json::from_value::<NewFleetJob>(serde_json::json!({"method": "reboot"}))?,
        )
        .await?;
    let view: serde_json::Value = b
        .api
        .get(&format!("/fleet-jobs/{}", fj.job.id), &[])
        .await?;
    println!(
        "one fleet job: {} jobs queued for offline devices (progress {})",
        fj.job.devices.len(),
        view["progress"]
    );
    let rounds = 30;
    let mut ordinary = Vec::with_capacity(rounds);
    let mut full = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        s.jobs.tick_full().await;
        full.push(t.elapsed());
        let t = Instant::now();
        s.jobs.tick().await;
        ordinary.push(t.elapsed());
        // The App's own scheduler ticks every second too; stay out of its way a little.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (o, f) = (median(ordinary), median(full));
    println!(
        "tick with {n} queued jobs: ordinary (due jobs only) median {:.3} ms; full (every job) median {:.1} ms; ratio {:.0}x",
        o.as_secs_f64() * 1e3,
        f.as_secs_f64() * 1e3,
        f.as_secs_f64() / o.as_secs_f64().max(1e-9)
    );
    b.app.shutdown().await?;
    Ok(())
}
