//! Schedules: 6-field cron in UTC, seconds first (`sec min hour day-of-month month
//! day-of-week`). Every server checks each second; a firing starts its instance under the key
//! `<app>/<wfUid>#<schedule>@<second>`, unique in the database, so however many servers run,
//! one instance starts per firing. Firings missed while no server ran are not replayed.

use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::{SYSTEM_USER, Workflows};

/// A parsed cron expression: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day-of-month / day-of-week were restricted (not `*`): when both are, a day
    /// matching either fires (as in classic cron).
    days_any: bool,
    weekdays_any: bool,
}

/// One field: `*`, `n`, `a-b`, each optionally `/step`, joined by commas. Returns the bit set
/// and whether it was `*` (or `?`).
fn field(text: &str, min: u32, max: u32, what: &str) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let star = text == "*" || text == "?";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{what}: bad step `{s}`"))?,
            ),
            None => (part, 1),
        };
        let num = |s: &str| -> Result<u32, String> {
            s.parse::<u32>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("{what}: `{s}` is not in {min}-{max}"))
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(a)?, num(b)?)
        } else {
            let n = num(range)?;
            (n, if part.contains('/') { max } else { n })
        };
        if lo > hi {
            return Err(format!("{what}: range `{range}` is empty"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [sec, min, hour, dom, mon, dow] = parts.as_slice() else {
            return Err(format!(
                "`{text}`: a schedule has 6 fields (second minute hour day-of-month month day-of-week)"
            ));
        };
        let (weekdays, dow_star) = field(dow, 0, 7, "day-of-week")?;
        // 7 is Sunday too.
        let weekdays = if weekdays & (1 << 7) != 0 {
            weekdays | 1
        } else {
            weekdays
        };
        let (days, dom_star) = field(dom, 1, 31, "day-of-month")?;
        Ok(Cron {
            seconds: field(sec, 0, 59, "second")?.0,
            minutes: field(min, 0, 59, "minute")?.0,
            hours: field(hour, 0, 23, "hour")?.0,
            days,
            months: field(mon, 1, 12, "month")?.0,
            weekdays,
            days_any: dom_star,
            weekdays_any: dow_star,
        })
    }

    /// Whether the expression fires at this second.
    pub fn matches(&self, t: &DateTime<Utc>) -> bool {
        let has = |bits: u64, v: u32| bits & (1u64 << v) != 0;
        let dom = has(self.days, t.day());
        let dow = has(self.weekdays, t.weekday().num_days_from_sunday());
        let day = match (self.days_any, self.weekdays_any) {
            (false, false) => dom || dow,
            _ => dom && dow,
        };
        has(self.seconds, t.second())
            && has(self.minutes, t.minute())
            && has(self.hours, t.hour())
            && has(self.months, t.month())
            && day
    }
}

/// Fires schedules until the task is aborted.
pub(super) async fn run(wf: Workflows) {
    let mut last = Utc::now().timestamp();
    loop {
        // Sleep to just past the next whole second.
        let now = Utc::now();
        let to_next = 1_000_000u64.saturating_sub(u64::from(now.timestamp_subsec_micros()));
        tokio::time::sleep(Duration::from_micros(to_next + 1_000)).await;
        let now = Utc::now().timestamp();
        // Seconds this loop slept through are checked too, at most a minute back.
        let from = (last + 1).max(now - 60);
        for second in from..=now {
            let Some(t) = DateTime::<Utc>::from_timestamp(second, 0) else {
                continue;
            };
            fire(&wf, &t).await;
        }
        last = now;
    }
}

async fn fire(wf: &Workflows, t: &DateTime<Utc>) {
    let catalog = wf.engine.catalog.get();
    for def in catalog.workflows() {
        for (i, s) in def.schedules.iter().enumerate() {
            if !s.cron.matches(t) {
                continue;
            }
            let key = format!(
                "{}/{}#{i}@{}",
                def.app_uid,
                def.wf_uid,
                query::value::format_datetime(t)
            );
            let started = wf
                .start(
                    crate::startup::PLATFORM_ORG,
                    SYSTEM_USER,
                    def,
                    &s.input,
                    None,
                    Some(&key),
                )
                .await;
            if let Err(e) = started {
                tracing::warn!(schedule = %key, error = %e, "a schedule could not start its instance");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn six_fields_seconds_first() {
        let c = Cron::parse("0 */5 * * * *").unwrap();
        assert!(c.matches(&at("2026-11-29T10:05:00Z")));
        assert!(!c.matches(&at("2026-11-29T10:05:01Z")));
        assert!(!c.matches(&at("2026-11-29T10:06:00Z")));
        let every = Cron::parse("* * * * * *").unwrap();
        assert!(every.matches(&at("2026-11-29T10:06:07Z")));
        let list = Cron::parse("10,20-22 0 12 * * *").unwrap();
        assert!(list.matches(&at("2026-11-29T12:00:21Z")));
        assert!(!list.matches(&at("2026-11-29T12:00:23Z")));
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // 2026-11-29 is a Sunday.
        let sunday = Cron::parse("0 0 0 * * 0").unwrap();
        assert!(sunday.matches(&at("2026-11-29T00:00:00Z")));
        assert!(!sunday.matches(&at("2026-11-30T00:00:00Z")));
        let seven = Cron::parse("0 0 0 * * 7").unwrap();
        assert!(seven.matches(&at("2026-11-29T00:00:00Z")));
        let either = Cron::parse("0 0 0 1 * 1").unwrap();
        assert!(either.matches(&at("2026-11-30T00:00:00Z")), "a Monday");
        assert!(either.matches(&at("2026-12-01T00:00:00Z")), "the first");
        assert!(!either.matches(&at("2026-12-02T00:00:00Z")));
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in [
            "* * * * *",
            "60 * * * * *",
            "* * 24 * * *",
            "* * * 0 * *",
            "*/0 * * * * *",
            "5-1 * * * * *",
            "a * * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }
}
