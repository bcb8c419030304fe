//! Schedules and fleet-job targeting against the real services and a real sled store, with the
//! job scheduler reading tokio's paused clock: hours of cron time pass in milliseconds, with no
//! sleeping. Cron in a time zone across a DST change, maintenance windows (for schedules and
//! for rollouts), one-shot runs, "run now", schedules surviving a restart with a missed run
//! fired once; fleet jobs filtered by tag, label, attribute and firmware version.

use std::sync::Arc;
use std::time::Duration;

use corral::config::Config;
use corral::devices::registry::{NewFleet, NewWorkspace};
use corral::jobs::fleet::NewFleetJob;
use corral::jobs::schedule::{Clock, NewSchedule};
use corral::metrics::Metrics;
use corral::model::{
    DeviceId, FleetId, JobState, Millis, RolloutState, TargetFilter, Trigger, Value, Window,
};
use corral::services::Services;
use corral::store::{PointsOp, Scope};
use serde_json::json;

fn ms(s: &str) -> Millis {
    s.parse::<jiff::Zoned>()
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn berlin(local: &str) -> Millis {
    let z: jiff::civil::DateTime = local.parse().expect("civil time");
    z.in_tz("Europe/Berlin")
        .expect("zone")
        .timestamp()
        .as_millisecond()
}

fn config(dir: &std::path::Path) -> Config {
    corral::pki::install_crypto_provider();
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    // Test machines can be short of disk; the reserve is tested on its own.
    c.store.min_free_mb = 16;
    c
}

/// Real services and the store under them (which a test reaches below the services, to
/// rewind a record as a crash would leave it).
#[derive(Clone)]
pub(crate) struct Harness {
    services: Arc<Services>,
    store: corral::store::Store,
}

impl std::ops::Deref for Harness {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.services
    }
}

/// Real services on a store in `dir`, whose scheduler reads tokio's clock set to `now`.
pub(crate) async fn services(dir: &std::path::Path, now: Millis) -> Harness {
    let config = config(dir);
    let metrics = Arc::new(Metrics::new());
    // Reopening right after a drop: the store's writer thread lets go of the files shortly.
    let mut opened = None;
    for _ in 0..500 {
        match corral::app::open_state(&config, metrics.clone()).await {
            Ok(s) => {
                opened = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let (store, pki, _) = opened.expect("open the data directory");
    let s = Services::new(config, store.ports(), pki, metrics);
    s.jobs.set_clock(Clock::tokio_at(now));
    Harness {
        services: Arc::new(s),
        store,
    }
}

pub(crate) async fn fleet(s: &Services, devices: usize) -> (FleetId, Vec<DeviceId>) {
    let ws = s
        .registry
        .create_workspace(NewWorkspace {
            name: "ws".into(),
            description: String::new(),
            retention_days: None,
        })
        .await
        .expect("workspace");
    let f = s
        .registry
        .create_fleet(NewFleet {
            workspace_id: ws.id,
            name: "f".into(),
            description: String::new(),
        })
        .await
        .expect("fleet");
    let mut ids = Vec::new();
    for i in 0..devices {
        let label = if i % 2 == 0 { "even" } else { "odd" };
        let (d, _) = s
            .registry
            .create_device(
                corral::devices::registry::DeviceDraft {
                    fleet_id: f.id,
                    name: &format!("d{i}"),
                    label,
                    provisioned: false,
                    gateway: Default::default(),
                },
                |_| Ok(vec![]),
                |_, _| None,
            )
            .await
            .expect("device");
        ids.push(d.id);
    }
    (f.id, ids)
}

/// Passes `total` of virtual time in `step`s, running the scheduler after each.
async fn run_for(s: &Services, total: Duration, step: Duration) {
    let mut passed = Duration::ZERO;
    while passed < total {
        tokio::time::advance(step).await;
        passed += step;
        s.jobs.tick().await;
    }
}

fn device_schedule(device: DeviceId, trigger: Trigger, window: Option<Window>) -> NewSchedule {
    serde_json::from_value::<NewSchedule>(json!({
        "name": "nightly", "device_id": device, "method": "reboot", "params": {"soft": true},
        "trigger": trigger, "window": window,
    }))
    .expect("schedule")
}

#[tokio::test(start_paused = true)]
async fn cron_schedules_fire_on_local_time_and_respect_windows_across_dst() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = berlin("2026-03-27T23:30:00");
    let s = services(dir.path(), start).await;
    let (_, devices) = fleet(&s, 2).await;
    let cron = |expr: &str| Trigger::Cron {
        expr: expr.into(),
        tz: "Europe/Berlin".into(),
    };

    // Every 30 minutes, Berlin time.
    let every = s
        .jobs
        .create_schedule(device_schedule(devices[0], cron("*/30 * * * *"), None))
        .await
        .expect("create");
    assert_eq!(every.next_run_at, Some(berlin("2026-03-28T00:00:00")));
    // Hourly, but only in the 02:00–04:00 window: on the night clocks go forward
    // (2026-03-29, 02:00 → 03:00), 02:00 does not exist, so that night has one run.
    let windowed = s
        .jobs
        .create_schedule(device_schedule(
            devices[1],
            cron("0 * * * *"),
            Some(Window {
                start: "02:00".into(),
                end: "04:00".into(),
                tz: "Europe/Berlin".into(),
                days: vec![],
            }),
        ))
        .await
        .expect("create");
    assert_eq!(windowed.next_run_at, Some(berlin("2026-03-28T02:00:00")));

    // Two hours in one-minute steps: four half-hourly runs, at their exact times.
    run_for(&s, Duration::from_secs(2 * 3600), Duration::from_secs(60)).await;
    let jobs = s.jobs.list(devices[0]).await.expect("jobs");
    let mut created: Vec<Millis> = jobs.iter().map(|j| j.created_at).collect();
    created.sort();
    assert_eq!(
        created,
        [
            berlin("2026-03-28T00:00:00"),
            berlin("2026-03-28T00:30:00"),
            berlin("2026-03-28T01:00:00"),
            berlin("2026-03-28T01:30:00"),
        ]
    );
    assert!(jobs.iter().all(|j| j.method == "reboot"
        && j.params == json!({"soft": true})
        && j.state == JobState::Queued));
    let every = s.jobs.schedule(every.id).await.expect("schedule");
    assert_eq!(every.runs, 4);
    assert_eq!(every.next_run_at, Some(berlin("2026-03-28T02:00:00")));

    // Two days in five-minute steps for the windowed schedule.
    run_for(&s, Duration::from_secs(46 * 3600), Duration::from_secs(300)).await;
    let mut runs: Vec<Millis> = s
        .jobs
        .list(devices[1])
        .await
        .expect("jobs")
        .iter()
        .map(|j| j.created_at)
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        [
            berlin("2026-03-28T02:00:00"),
            berlin("2026-03-28T03:00:00"),
            // 02:00 CET does not exist on the 29th; 03:00 CEST is 01:00 UTC.
            ms("2026-03-29T03:00:00+02:00[Europe/Berlin]"),
        ]
    );
    let windowed = s.jobs.schedule(windowed.id).await.expect("schedule");
    assert_eq!(windowed.runs, 3);
    assert_eq!(windowed.next_run_at, Some(berlin("2026-03-30T02:00:00")));

    // Disabled: no more runs; "run now" still runs it, outside its window.
    s.jobs
        .set_schedule_enabled(windowed.id, false)
        .await
        .expect("disable");
    run_for(&s, Duration::from_secs(24 * 3600), Duration::from_secs(600)).await;
    assert_eq!(s.jobs.list(devices[1]).await.expect("jobs").len(), 3);
    let now = s.jobs.run_schedule_now(windowed.id).await.expect("run");
    assert_eq!(now.runs, 4);
    assert!(
        now.last_result.as_deref().unwrap_or("").starts_with("job "),
        "{:?}",
        now.last_result
    );
    assert_eq!(s.jobs.list(devices[1]).await.expect("jobs").len(), 4);

    // Bad input is refused with the field named.
    for (bad, field) in [
        (json!({"cron": {"expr": "61 * * * *"}}), "trigger"),
        (json!({"cron": {"expr": "* * * *"}}), "trigger"),
        (
            json!({"cron": {"expr": "* * * * *", "tz": "Mars/Olympus"}}),
            "trigger.tz",
        ),
        (json!({"at": start - 1000}), "trigger"),
    ] {
        let mut new = device_schedule(devices[0], cron("0 * * * *"), None);
        new.trigger = serde_json::from_value(bad.clone()).expect("trigger");
        match s.jobs.create_schedule(new).await {
            Err(corral::error::Error::Invalid { field: f, .. }) => {
                assert_eq!(f, field, "{bad}")
            }
            other => panic!("{bad}: expected a refusal, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn schedules_survive_a_restart_and_a_missed_run_fires_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = ms("2026-11-24T09:10:00+00:00[UTC]");
    let (device, hourly, once) = {
        let s = services(dir.path(), start).await;
        let (_, devices) = fleet(&s, 1).await;
        let hourly = s
            .jobs
            .create_schedule(device_schedule(
                devices[0],
                Trigger::Cron {
                    expr: "0 * * * *".into(),
                    tz: "UTC".into(),
                },
                None,
            ))
            .await
            .expect("hourly");
        let once = s
            .jobs
            .create_schedule(device_schedule(
                devices[0],
                Trigger::At(ms("2026-11-24T09:30:00+00:00[UTC]")),
                None,
            ))
            .await
            .expect("once");
        s.store.commit().await.expect("commit");
        (devices[0], hourly.id, once.id)
    };
    // Corral is down from 09:10 until 14:20: five hourly runs and the one-shot were missed.
    let s = services(dir.path(), ms("2026-11-24T14:20:00+00:00[UTC]")).await;
    let h = s.jobs.schedule(hourly).await.expect("kept");
    assert_eq!(h.next_run_at, Some(ms("2026-11-24T10:00:00+00:00[UTC]")));
    s.jobs.tick().await;
    let h = s.jobs.schedule(hourly).await.expect("kept");
    assert_eq!(h.runs, 1, "missed occurrences fire once, not five times");
    assert_eq!(h.next_run_at, Some(ms("2026-11-24T15:00:00+00:00[UTC]")));
    let o = s.jobs.schedule(once).await.expect("kept");
    assert_eq!(o.runs, 1);
    assert_eq!(o.next_run_at, None, "a one-shot does not fire again");
    assert_eq!(s.jobs.list(device).await.expect("jobs").len(), 2);
    // The next hourly run comes on time.
    run_for(&s, Duration::from_secs(3600), Duration::from_secs(60)).await;
    assert_eq!(s.jobs.schedule(hourly).await.expect("kept").runs, 2);
    assert_eq!(s.jobs.schedule(once).await.expect("kept").runs, 1);
    assert_eq!(s.jobs.list(device).await.expect("jobs").len(), 3);
    s.jobs.delete_schedule(hourly).await.expect("delete");
    assert!(s.jobs.schedule(hourly).await.is_err());
}

/// A crash between writing a run's job and writing the schedule's next run makes the run
/// fire again on restart; the occurrence's idempotency key keeps it to one job per device and
/// one rollout per fleet.
#[tokio::test(start_paused = true)]
async fn a_run_repeated_after_a_crash_queues_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = services(dir.path(), ms("2026-11-24T09:10:00+00:00[UTC]")).await;
    let (fleet_id, devices) = fleet(&s, 3).await;
    let hourly = Trigger::Cron {
        expr: "0 * * * *".into(),
        tz: "UTC".into(),
    };
    let one = s
        .jobs
        .create_schedule(device_schedule(devices[0], hourly.clone(), None))
        .await
        .expect("device schedule");
    let all = s
        .jobs
        .create_schedule(
            serde_json::from_value::<NewSchedule>(json!({
                "name": "fleet-wide", "fleet_id": fleet_id, "method": "reboot",
                "trigger": hourly,
            }))
            .expect("fleet schedule"),
        )
        .await
        .expect("fleet schedule");
    let before: Vec<_> = [one.id, all.id]
        .iter()
        .map(|id| s.store.get_schedule(*id).expect("read").expect("kept"))
        .collect();
    run_for(&s, Duration::from_secs(50 * 60), Duration::from_secs(60)).await;
    assert_eq!(s.jobs.schedule(all.id).await.expect("kept").runs, 1);
    assert_eq!(
        s.jobs
            .fleet_jobs_of(fleet_id)
            .await
            .expect("rollouts")
            .len(),
        1
    );
    assert_eq!(s.jobs.list(devices[0]).await.expect("jobs").len(), 2);

    // What a crash right after the jobs were written would leave: the schedules as they were
    // before the 10:00 run.
    for old in &before {
        s.store.put_schedule(old).expect("rewind");
    }
    s.jobs.tick().await;
    assert_eq!(
        s.jobs.schedule(all.id).await.expect("kept").runs,
        1,
        "the rewound schedule ran again"
    );
    let rollouts = s.jobs.fleet_jobs_of(fleet_id).await.expect("rollouts");
    assert_eq!(rollouts.len(), 1, "one rollout for the 10:00 run");
    assert_eq!(
        rollouts[0].job.idempotency_key.as_deref(),
        Some(
            format!(
                "schedule-{}-{}",
                all.id,
                ms("2026-11-24T10:00:00+00:00[UTC]")
            )
            .as_str()
        )
    );
    // Device 0: one job from its own schedule and one from the rollout, not four.
    assert_eq!(s.jobs.list(devices[0]).await.expect("jobs").len(), 2);
    assert_eq!(s.jobs.list(devices[1]).await.expect("jobs").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn fleet_jobs_target_by_filter_and_start_only_inside_their_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A Tuesday, 21:00 UTC.
    let s = services(dir.path(), ms("2026-11-24T21:00:00+00:00[UTC]")).await;
    let (fleet_id, devices) = fleet(&s, 6).await;
    // d0, d1 report firmware 1.0; d2 reports 2.0; the others say nothing.
    for (i, fw) in [(0, "1.0"), (1, "1.0"), (2, "2.0")] {
        s.attributes
            .report(
                devices[i],
                vec![("current_fw_version".into(), Value::Str(fw.into()))],
            )
            .await
            .expect("report");
    }
    // d3 and d4 have a server attribute model = X200 (d4's as a number-free string too).
    for i in [3, 4] {
        s.attributes
            .set(
                devices[i],
                Scope::Server,
                vec![("model".into(), Value::Str("X200".into()))],
            )
            .await
            .expect("set");
    }
    // A fleet-wide shared default counts for every device without its own value.
    s.attributes
        .set_fleet(fleet_id, vec![("ring".into(), Value::Long(2))])
        .await
        .expect("fleet default");
    s.attributes
        .set(
            devices[5],
            Scope::Shared,
            vec![("ring".into(), Value::Long(1))],
        )
        .await
        .expect("override");
    // d1 and d5 send telemetry under the tag "gps".
    for i in [1, 5] {
        s.store
            .append_points(
                PointsOp {
                    device: devices[i],
                    tag: "gps".into(),
                    points: vec![(1, vec![("lat".into(), Value::Double(52.5))])],
                },
                true,
            )
            .await
            .expect("points");
    }

    let targets = |filter: TargetFilter| {
        let s = s.clone();
        async move {
            let v = s
                .jobs
                .create_fleet_job(
                    fleet_id,
                    NewFleetJob {
                        method: "update".into(),
                        params: json!({}),
                        two_way: false,
                        ttl_secs: None,
                        per_minute: 0,
                        abort_failure_pct: None,
                        abort_min_sample: None,
                        filter: Some(filter),
                        window: None,
                        idempotency_key: None,
                    },
                )
                .await
                .expect("fleet job");
            let mut d = v.job.devices.clone();
            d.sort();
            d
        }
    };
    let of = |idx: &[usize]| {
        let mut v: Vec<DeviceId> = idx.iter().map(|i| devices[*i]).collect();
        v.sort();
        v
    };
    assert_eq!(
        targets(TargetFilter {
            firmware_version: Some("1.0".into()),
            ..Default::default()
        })
        .await,
        of(&[0, 1])
    );
    assert_eq!(
        targets(TargetFilter {
            firmware_version_not: Some("2.0".into()),
            ..Default::default()
        })
        .await,
        of(&[0, 1, 3, 4, 5])
    );
    assert_eq!(
        targets(TargetFilter {
            tag: Some("gps".into()),
            ..Default::default()
        })
        .await,
        of(&[1, 5])
    );
    assert_eq!(
        targets(TargetFilter {
            label: Some("even".into()),
            tag: Some("gps".into()),
            ..Default::default()
        })
        .await,
        of(&[])
    );
    let attrs = |k: &str, v: serde_json::Value| TargetFilter {
        attributes: [(k.to_string(), v)].into_iter().collect(),
        ..Default::default()
    };
    assert_eq!(targets(attrs("model", json!("X200"))).await, of(&[3, 4]));
    // 2 and 2.0 are the same number; the device's own shared value overrides the fleet's.
    assert_eq!(
        targets(attrs("ring", json!(2.0))).await,
        of(&[0, 1, 2, 3, 4])
    );
    assert_eq!(targets(attrs("ring", json!(1))).await, of(&[5]));

    // A rollout with a window 22:00–22:03 UTC on Tuesdays, one device a minute: nothing
    // starts at 21:00; from 22:00 one a minute; when the window closes the other three wait
    // for next Tuesday, when the pace starts over (no burst for the week it was closed).
    let v = s
        .jobs
        .create_fleet_job(
            fleet_id,
            serde_json::from_value(json!({
                "method": "reboot", "per_minute": 1, "ttl_secs": 30 * 86400,
                "window": {"start": "22:00", "end": "22:03", "days": ["tue"]},
            }))
            .expect("new fleet job"),
        )
        .await
        .expect("rollout");
    let id = v.job.id;
    let launched = async || s.jobs.fleet_job(id).await.expect("view").job.launched;
    assert_eq!(launched().await, 0);
    run_for(&s, Duration::from_secs(3600), Duration::from_secs(10)).await;
    assert_eq!(launched().await, 1, "22:00:00: the first device starts");
    run_for(&s, Duration::from_secs(150), Duration::from_secs(10)).await;
    assert_eq!(launched().await, 3, "22:02:30");
    run_for(&s, Duration::from_secs(3600), Duration::from_secs(10)).await;
    assert_eq!(launched().await, 3, "closed from 22:03");
    // To next Tuesday 22:00:00.
    run_for(
        &s,
        Duration::from_secs(7 * 86400 - 3750),
        Duration::from_secs(150),
    )
    .await;
    assert_eq!(launched().await, 4);
    run_for(&s, Duration::from_secs(150), Duration::from_secs(10)).await;
    let v = s.jobs.fleet_job(id).await.expect("view");
    assert_eq!(v.job.launched, 6);
    assert_eq!(v.job.state, RolloutState::Running);
    assert_eq!(v.progress.pending, 0);
    assert_eq!(v.progress.of(JobState::Queued), 6, "{:?}", v.progress);
}
