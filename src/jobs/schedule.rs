//! Schedules: a job (to one device, or rolled out to a fleet) created at a time or on a cron
//! expression in a time zone, optionally only inside a maintenance window. Schedules live in the
//! store with their next run time, so they survive restarts: a run missed while Corral was down
//! fires once when it is back (not once per missed occurrence). Also the clock the job scheduler
//! reads, which tests replace with tokio's paused clock.

use std::str::FromStr;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::fleet::NewFleetJob;
use super::{JobService, NewJob, Result, check_method, invalid};
use crate::error::Error;
use crate::model::{
    DeviceId, FleetId, Millis, Schedule, ScheduleId, TargetFilter, Trigger, Window, now_ms,
};

/// Where the scheduler reads the time. Production reads the system clock (schedules follow
/// wall time, NTP steps included); tests read tokio's clock, which `tokio::time::pause` lets
/// them move by hours without sleeping.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    /// Wall time `base_ms` at tokio instant `base`, advancing with tokio's clock.
    Tokio {
        base_ms: Millis,
        base: tokio::time::Instant,
    },
}

impl Clock {
    /// A tokio-driven clock that reads `base_ms` now.
    pub fn tokio_at(base_ms: Millis) -> Self {
        Clock::Tokio {
            base_ms,
            base: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> Millis {
        match self {
            Clock::System => now_ms(),
            Clock::Tokio { base_ms, base } => base_ms + base.elapsed().as_millis() as Millis,
        }
    }
}

fn tz(name: &str, field: &'static str) -> Result<TimeZone> {
    TimeZone::get(name).map_err(|_| invalid(field, format!("unknown time zone {name:?}")))
}

fn zoned(ms: Millis, tz: &TimeZone) -> Option<jiff::Zoned> {
    Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_zoned(tz.clone()))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A checked maintenance window.
pub struct WindowSpec {
    /// Minutes after local midnight.
    start: i32,
    end: i32,
    tz: TimeZone,
    /// Bit 0 = Monday.
    days: u8,
}

fn hhmm(s: &str, field: &'static str) -> Result<i32> {
    let bad = || invalid(field, format!("{s:?} is not a time of day HH:MM"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl WindowSpec {
    pub fn parse(w: &Window) -> Result<Self> {
        let mut days = 0u8;
        for d in &w.days {
            let i = DAYS
                .iter()
                .position(|x| x.eq_ignore_ascii_case(d.get(..3).unwrap_or(d)))
                .ok_or_else(|| invalid("window.days", format!("{d:?} is not a day (mon…sun)")))?;
            days |= 1 << i;
        }
        Ok(Self {
            start: hhmm(&w.start, "window.start")?,
            end: hhmm(&w.end, "window.end")?,
            tz: tz(&w.tz, "window.tz")?,
            days: if days == 0 { 0x7f } else { days },
        })
    }

    fn day_on(&self, monday_zero: i8) -> bool {
        self.days & (1 << monday_zero.rem_euclid(7)) != 0
    }

    /// Whether the window is open at `ms`.
    pub fn contains(&self, ms: Millis) -> bool {
        let Some(z) = zoned(ms, &self.tz) else {
            return false;
        };
        let minute = i32::from(z.hour()) * 60 + i32::from(z.minute());
        let day = z.weekday().to_monday_zero_offset();
        if self.start < self.end {
            self.day_on(day) && (self.start..self.end).contains(&minute)
        } else if self.start > self.end {
            // Crosses midnight: the evening part belongs to its day, the early part to the day before.
            (self.day_on(day) && minute >= self.start)
                || (self.day_on(day - 1) && minute < self.end)
        } else {
            self.day_on(day)
        }
    }

    /// The first instant at or after `ms` inside the window (None if it never opens, which a
    /// parsed window cannot do). Walks whole minutes, which is exact for HH:MM bounds and
    /// needs no special case for DST changes.
    pub fn next_open(&self, ms: Millis) -> Option<Millis> {
        if self.contains(ms) {
            return Some(ms);
        }
        let mut t = ms - ms.rem_euclid(60_000) + 60_000;
        for _ in 0..(8 * 24 * 60) {
            if self.contains(t) {
                return Some(t);
            }
            t += 60_000;
        }
        None
    }
}

/// A checked trigger.
pub enum TriggerSpec {
    At(Millis),
    Cron(Box<jiff_cron::Schedule>, TimeZone),
}

/// Standard cron numbers days 0–7 from Sunday (7 is Sunday again); the cron library numbers
/// them 1–7 from Sunday. Rewriting the day-of-week field as day names removes the ambiguity.
fn day_of_week_field(f: &str) -> Result<String> {
    if f == "*" || f == "?" {
        return Ok("*".into());
    }
    let bad = || invalid("trigger", format!("day-of-week {f:?} is not valid"));
    let day = |s: &str| -> Result<u8> {
        if let Ok(n) = s.parse::<u8>() {
            return if n <= 7 { Ok(n % 7) } else { Err(bad()) };
        }
        const SUN_FIRST: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        SUN_FIRST
            .iter()
            .position(|d| d.eq_ignore_ascii_case(s))
            .map(|i| i as u8)
            .ok_or_else(bad)
    };
    let mut set = [false; 7];
    for token in f.split(',') {
        let (base, step) = match token.split_once('/') {
            Some((b, s)) => (
                b,
                s.parse::<usize>().ok().filter(|s| *s > 0).ok_or_else(bad)?,
            ),
            None => (token, 1),
        };
        let (lo, hi): (u8, u8) = if base == "*" {
            (0, 6)
        } else if let Some((a, b)) = base.split_once('-') {
            // An end of 7 is the Sunday after Saturday: keep it above the start.
            let hi = if b == "7" { 7 } else { day(b)? };
            (day(a)?, hi)
        } else {
            let d = day(base)?;
            (d, if step > 1 { 6 } else { d })
        };
        if lo > hi {
            return Err(bad());
        }
        for d in (lo..=hi).step_by(step) {
            set[usize::from(d % 7)] = true;
        }
    }
    const NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    Ok(NAMES
        .iter()
        .zip(set)
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(","))
}

impl TriggerSpec {
    pub fn parse(t: &Trigger) -> Result<Self> {
        match t {
            Trigger::At(ms) => Ok(TriggerSpec::At(*ms)),
            Trigger::Cron { expr, tz: zone } => {
                let expr = expr.trim();
                let full = if expr.starts_with('@') {
                    match expr {
                        "@hourly" | "@daily" | "@weekly" | "@monthly" | "@yearly" => {
                            expr.to_string()
                        }
                        _ => {
                            return Err(invalid(
                                "trigger",
                                "macros are @hourly, @daily, @weekly, @monthly, @yearly",
                            ));
                        }
                    }
                } else {
                    let f: Vec<&str> = expr.split_whitespace().collect();
                    if f.len() != 5 {
                        return Err(invalid(
                            "trigger",
                            "cron takes five fields: minute hour day-of-month month day-of-week",
                        ));
                    }
                    format!(
                        "0 {} {} {} {} {}",
                        f[0],
                        f[1],
                        f[2],
                        f[3],
                        day_of_week_field(f[4])?
                    )
                };
                let s = jiff_cron::Schedule::from_str(&full)
                    .map_err(|e| invalid("trigger", format!("cron {expr:?}: {e}")))?;
                Ok(TriggerSpec::Cron(Box::new(s), tz(zone, "trigger.tz")?))
            }
        }
    }

    /// The first firing strictly after `ms`.
    pub fn next_after(&self, ms: Millis) -> Option<Millis> {
        match self {
            TriggerSpec::At(at) => (*at > ms).then_some(*at),
            TriggerSpec::Cron(s, tz) => {
                let z = zoned(ms, tz)?;
                s.after(z).next().map(|n| n.timestamp().as_millisecond())
            }
        }
    }
}

/// A schedule to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// 1 to 128 characters after trimming surrounding whitespace; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,126}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub name: String,
    /// Exactly one of `device_id` and `fleet_id`.
    #[serde(default)]
    pub device_id: Option<DeviceId>,
    #[serde(default)]
    pub fleet_id: Option<FleetId>,
    /// The RPC method: 1 to 256 characters after trimming; no control characters.
    #[schema(
        pattern = r"^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\u0000-\u001f\u007f-\u009f]{0,254}[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub method: String,
    /// The command's parameters: any JSON value (`null` when absent).
    #[serde(default)]
    pub params: Json,
    #[serde(default)]
    pub two_way: bool,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub per_minute: u32,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub abort_failure_pct: Option<u8>,
    #[serde(default)]
    pub abort_min_sample: Option<u32>,
    #[serde(default)]
    pub filter: Option<TargetFilter>,
    pub trigger: Trigger,
    #[serde(default)]
    pub window: Option<Window>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl JobService {
    pub fn now(&self) -> Millis {
        self.clock.get().map_or_else(now_ms, Clock::now_ms)
    }

    /// Replaces the system clock, once, before the service is used (tests drive schedules
    /// with tokio's paused clock).
    pub fn set_clock(&self, clock: Clock) {
        let _ = self.clock.set(clock);
    }

    /// When an enabled schedule fires next after `after`, held back to its window's opening.
    fn next_run(&self, s: &Schedule, after: Millis) -> Result<Option<Millis>> {
        if !s.enabled {
            return Ok(None);
        }
        let Some(next) = TriggerSpec::parse(&s.trigger)?.next_after(after) else {
            return Ok(None);
        };
        Ok(match &s.window {
            Some(w) => WindowSpec::parse(w)?.next_open(next),
            None => Some(next),
        })
    }

    pub async fn create_schedule(&self, new: NewSchedule) -> Result<Schedule> {
        let name = crate::names::check(&new.name, crate::names::MAX_NAME)
            .map_err(|m| invalid("name", m))?;
        match (new.device_id, new.fleet_id) {
            (Some(d), None) => {
                self.registry.device_record(d).await?;
                if new.filter.is_some() || new.per_minute > 0 || new.abort_failure_pct.is_some() {
                    return Err(invalid(
                        "filter",
                        "filter, per_minute and abort settings apply to fleet schedules",
                    ));
                }
            }
            (None, Some(f)) => {
                self.registry.fleet(f).await?;
            }
            _ => {
                return Err(invalid(
                    "device_id",
                    "give exactly one of device_id and fleet_id",
                ));
            }
        }
        let method = check_method(&new.method)?;
        self.check_ttl(new.ttl_secs)?;
        if new.abort_failure_pct.is_some_and(|p| p == 0 || p > 100) {
            return Err(invalid("abort_failure_pct", "must be 1 to 100"));
        }
        TriggerSpec::parse(&new.trigger)?;
        if let Some(w) = &new.window {
            WindowSpec::parse(w)?;
        }
        let now = self.now();
        if let Trigger::At(at) = new.trigger
            && at <= now
        {
            return Err(invalid("trigger", "the time is in the past"));
        }
        let mut s = Schedule {
            id: ScheduleId::new(),
            name,
            device_id: new.device_id,
            fleet_id: new.fleet_id,
            method,
            params: new.params,
            two_way: new.two_way,
            ttl_secs: new.ttl_secs,
            per_minute: new.per_minute,
            abort_failure_pct: new.abort_failure_pct,
            abort_min_sample: new.abort_min_sample,
            filter: new.filter.filter(|f| !f.is_empty()),
            trigger: new.trigger,
            window: new.window,
            enabled: new.enabled,
            created_at: now,
            next_run_at: None,
            last_run_at: None,
            last_result: None,
            runs: 0,
        };
        s.next_run_at = self.next_run(&s, now)?;
        self.store.put_schedule(&s).await?;
        self.store.commit().await?;
        Ok(s)
    }

    pub async fn schedule(&self, id: ScheduleId) -> Result<Schedule> {
        self.store
            .get_schedule(id)
            .await?
            .ok_or(Error::NotFound("schedule"))
    }

    /// Every schedule, newest first.
    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        let mut v = self.store.schedules().await?;
        v.reverse();
        Ok(v)
    }

    pub async fn delete_schedule(&self, id: ScheduleId) -> Result<()> {
        if !self.store.delete_schedule(id).await? {
            return Err(Error::NotFound("schedule"));
        }
        self.store.commit().await?;
        Ok(())
    }

    /// Enables (computing the next run from now) or disables a schedule.
    pub async fn set_schedule_enabled(&self, id: ScheduleId, enabled: bool) -> Result<Schedule> {
        let mut s = self.schedule(id).await?;
        s.enabled = enabled;
        s.next_run_at = self.next_run(&s, self.now())?;
        self.store.put_schedule(&s).await?;
        self.store.commit().await?;
        Ok(s)
    }

    /// Runs a schedule now, whatever its trigger and window say; its next run is unchanged.
    pub async fn run_schedule_now(&self, id: ScheduleId) -> Result<Schedule> {
        let mut s = self.schedule(id).await?;
        let now = self.now();
        self.fire(&mut s, now, None).await?;
        self.store.put_schedule(&s).await?;
        self.store.commit().await?;
        if let Some(d) = s.device_id {
            self.dispatch(d).await?;
        }
        Ok(s)
    }

    /// Creates the schedule's job. `occurrence` (the planned run time) makes the job's or the
    /// rollout's idempotency key, so a run repeated after a crash (the job written, the
    /// schedule's next run not yet) does not queue the command twice.
    async fn fire(&self, s: &mut Schedule, now: Millis, occurrence: Option<Millis>) -> Result<()> {
        let made = match (s.device_id, s.fleet_id) {
            (Some(d), _) => self
                .create_job_sync(
                    d,
                    NewJob {
                        method: s.method.clone(),
                        params: s.params.clone(),
                        two_way: s.two_way,
                        ttl_secs: s.ttl_secs,
                        idempotency_key: occurrence.map(|o| format!("schedule-{}-{o}", s.id)),
                    },
                )
                .await
                .map(|j| format!("job {}", j.id)),
            (None, Some(f)) => self
                .create_fleet_job_sync(
                    f,
                    NewFleetJob {
                        method: s.method.clone(),
                        params: s.params.clone(),
                        two_way: s.two_way,
                        ttl_secs: s.ttl_secs,
                        per_minute: s.per_minute,
                        abort_failure_pct: s.abort_failure_pct,
                        abort_min_sample: s.abort_min_sample,
                        filter: s.filter.clone(),
                        window: None,
                        idempotency_key: occurrence.map(|o| format!("schedule-{}-{o}", s.id)),
                    },
                    Some(s.id),
                    // A scheduled rollout keeps to the schedule's window; "run now" does not.
                    occurrence.and(s.window.clone()),
                )
                .await
                .map(|fj| format!("fleet job {}", fj.id)),
            (None, None) => Err(invalid("device_id", "the schedule has no target")),
        };
        s.runs += 1;
        s.last_run_at = Some(now);
        s.last_result = Some(match made {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(schedule = %s.id, error = %e, "a scheduled run could not create its job");
                format!("error: {e}")
            }
        });
        Ok(())
    }

    /// Fires every enabled schedule whose time has come (scheduler tick). A run due outside
    /// its window waits for the window to open.
    pub(super) async fn run_due_schedules(&self) -> Result<()> {
        let now = self.now();
        for mut s in self.store.schedules().await? {
            let Some(due) = s.next_run_at.filter(|t| *t <= now && s.enabled) else {
                continue;
            };
            if let Some(w) = &s.window {
                let w = WindowSpec::parse(w)?;
                if !w.contains(now) {
                    s.next_run_at = w.next_open(now);
                    self.store.put_schedule(&s).await?;
                    continue;
                }
            }
            self.fire(&mut s, now, Some(due)).await?;
            // Occurrences missed while Corral was down are not replayed one by one: the next
            // run is the first one after now.
            s.next_run_at = self.next_run(&s, now)?;
            self.store.put_schedule(&s).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Millis {
        s.parse::<jiff::Zoned>()
            .map(|z| z.timestamp().as_millisecond())
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn cron(expr: &str, tz: &str) -> TriggerSpec {
        TriggerSpec::parse(&Trigger::Cron {
            expr: expr.into(),
            tz: tz.into(),
        })
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    #[test]
    fn day_of_week_follows_standard_cron() {
        assert_eq!(
            day_of_week_field("1-5").ok().as_deref(),
            Some("Mon,Tue,Wed,Thu,Fri")
        );
        assert_eq!(day_of_week_field("0").ok().as_deref(), Some("Sun"));
        assert_eq!(day_of_week_field("7").ok().as_deref(), Some("Sun"));
        assert_eq!(
            day_of_week_field("5-7").ok().as_deref(),
            Some("Sun,Fri,Sat")
        );
        assert_eq!(
            day_of_week_field("sat,SUN").ok().as_deref(),
            Some("Sun,Sat")
        );
        assert_eq!(
            day_of_week_field("*/2").ok().as_deref(),
            Some("Sun,Tue,Thu,Sat")
        );
        assert!(day_of_week_field("8").is_err());
        assert!(day_of_week_field("fri-mon").is_err());
    }

    #[test]
    fn cron_in_a_time_zone() {
        // 2026-11-23 is a Monday. Weekdays at 02:30 in Berlin (UTC+1 in November).
        let c = cron("30 2 * * 1-5", "Europe/Berlin");
        let t = c.next_after(ms("2026-11-21T12:00:00+01:00[Europe/Berlin]"));
        assert_eq!(t, Some(ms("2026-11-23T02:30:00+01:00[Europe/Berlin]")));
        // Sunday is 0 as in standard cron.
        let c = cron("0 0 * * 0", "UTC");
        assert_eq!(
            c.next_after(ms("2026-11-24T00:00:00+00:00[UTC]")),
            Some(ms("2026-11-29T00:00:00+00:00[UTC]"))
        );
        // Every 15 minutes; strictly after.
        let c = cron("*/15 * * * *", "UTC");
        assert_eq!(
            c.next_after(ms("2026-11-24T10:15:00+00:00[UTC]")),
            Some(ms("2026-11-24T10:30:00+00:00[UTC]"))
        );
        assert!(
            TriggerSpec::parse(&Trigger::Cron {
                expr: "* * *".into(),
                tz: "UTC".into()
            })
            .is_err()
        );
        assert!(
            TriggerSpec::parse(&Trigger::Cron {
                expr: "* * * * *".into(),
                tz: "Mars/Base".into()
            })
            .is_err()
        );
    }

    #[test]
    fn windows_cross_midnight_and_days() {
        let w = WindowSpec::parse(&Window {
            start: "22:00".into(),
            end: "02:00".into(),
            tz: "Europe/Berlin".into(),
            days: vec!["sat".into()],
        })
        .unwrap_or_else(|e| panic!("{e}"));
        // Saturday 2026-11-28 23:00 and Sunday 01:00 are in; Sunday 23:00 and Saturday 01:00 are out.
        assert!(w.contains(ms("2026-11-28T23:00:00+01:00[Europe/Berlin]")));
        assert!(w.contains(ms("2026-11-29T01:00:00+01:00[Europe/Berlin]")));
        assert!(!w.contains(ms("2026-11-29T23:00:00+01:00[Europe/Berlin]")));
        assert!(!w.contains(ms("2026-11-28T01:00:00+01:00[Europe/Berlin]")));
        assert_eq!(
            w.next_open(ms("2026-11-24T10:00:00+01:00[Europe/Berlin]")),
            Some(ms("2026-11-28T22:00:00+01:00[Europe/Berlin]"))
        );
        assert!(
            WindowSpec::parse(&Window {
                start: "25:00".into(),
                end: "02:00".into(),
                tz: "UTC".into(),
                days: vec![],
            })
            .is_err()
        );
    }
}
