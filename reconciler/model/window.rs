//! Change windows: five-field cron expressions (croner), in a named time zone.
//!
//! A window is open in every minute its expression matches, as with Argo CD sync
//! windows written per minute. Weekdays are standard cron: `1-5` is Monday to
//! Friday, `0` and `7` are Sunday. Invariant: pure; `now` is always passed in.

use chrono::{DateTime, Duration as ChronoDuration, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// A parsed cron expression, kept with its source text.
#[derive(Debug, Clone)]
pub struct CronExpr {
    pub text: String,
    cron: Cron,
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Expressions this thread parsed lately, by text, and at most how many: plans share a
/// few windows, and parsing each plan's was a twentieth of validating 10,000 plans
/// (#21). Parsing is pure, so a kept result is the result. Only texts of a cron
/// expression's size are kept (`PARSED_MAX_TEXT`): a hostile plan's megabyte of text is
/// parsed, refused and forgotten.
const PARSED_KEEP: usize = 256;
const PARSED_MAX_TEXT: usize = 128;

thread_local! {
    static PARSED: std::cell::RefCell<std::collections::HashMap<String, Result<CronExpr, String>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl CronExpr {
    /// Parse a standard five-field expression (minute hour day-of-month month day-of-week).
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(kept) = PARSED.with(|p| p.borrow().get(text).cloned()) {
            return kept;
        }
        let parsed = Self::parse_new(text);
        if text.len() > PARSED_MAX_TEXT {
            return parsed;
        }
        PARSED.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() >= PARSED_KEEP {
                p.clear();
            }
            p.insert(text.to_owned(), parsed.clone());
        });
        parsed
    }

    fn parse_new(text: &str) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "expected 5 fields (minute hour day month weekday), found {fields}"
            ));
        }
        let cron = text.parse::<Cron>().map_err(|e| e.to_string())?;
        Ok(Self {
            text: text.to_owned(),
            cron,
        })
    }

    /// Does the expression match the minute containing `at` (in `tz`)? A five-field
    /// expression has an implicit seconds field of `0`, so `at` is taken at the start of
    /// its minute: 12:44:34 matches what 12:44 matches.
    pub fn matches(&self, at: DateTime<Utc>, tz: Tz) -> bool {
        let minute = at
            .with_nanosecond(0)
            .and_then(|t| t.with_second(0))
            .unwrap_or(at);
        self.cron
            .is_time_matching(&minute.with_timezone(&tz))
            .unwrap_or(false)
    }
}

/// When stages may advance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Windows {
    pub allow: Vec<CronExpr>,
    pub deny: Vec<CronExpr>,
    pub timezone: Option<Tz>,
}

impl Windows {
    fn tz(&self) -> Tz {
        self.timezone.unwrap_or(Tz::UTC)
    }

    /// Open when any `allow` matches (or there is none) and no `deny` matches.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let tz = self.tz();
        (self.allow.is_empty() || self.allow.iter().any(|c| c.matches(at, tz)))
            && !self.deny.iter().any(|c| c.matches(at, tz))
    }

    /// The first minute at or after `at` when the window is open, searching up to `horizon`.
    pub fn next_open(&self, at: DateTime<Utc>, horizon: ChronoDuration) -> Option<DateTime<Utc>> {
        if self.is_open(at) {
            return Some(at);
        }
        let start = at - ChronoDuration::seconds(i64::from(at.second()));
        let minutes = horizon.num_minutes().max(0);
        (1..=minutes)
            .map(|m| start + ChronoDuration::minutes(m))
            .find(|t| self.is_open(*t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .expect("valid time")
    }

    #[test]
    fn one_to_five_means_monday_to_friday() {
        let w = Windows {
            allow: vec![CronExpr::parse("* 9-16 * * 1-5").expect("cron")],
            ..Default::default()
        };
        // 2026-11-23 is a Monday; 2026-11-27 a Friday; 2026-11-29 a Sunday.
        assert!(w.is_open(utc(2026, 11, 23, 10, 0)));
        assert!(w.is_open(utc(2026, 11, 27, 16, 59)));
        assert!(!w.is_open(utc(2026, 11, 29, 10, 0)), "Sunday is closed");
        assert!(!w.is_open(utc(2026, 11, 28, 10, 0)), "Saturday is closed");
        assert!(
            !w.is_open(utc(2026, 11, 23, 17, 0)),
            "after hours is closed"
        );
    }

    #[test]
    fn names_and_time_zones() {
        let w = Windows {
            allow: vec![CronExpr::parse("* 9-16 * * MON-THU").expect("cron")],
            deny: vec![],
            timezone: Some(chrono_tz::Europe::Berlin),
        };
        // 08:30 UTC on a Monday in winter is 09:30 in Berlin.
        assert!(w.is_open(utc(2026, 11, 23, 8, 30)));
        assert!(!w.is_open(utc(2026, 11, 27, 10, 0)), "Friday closed");
        let next = w
            .next_open(utc(2026, 11, 27, 10, 0), ChronoDuration::days(7))
            .expect("opens");
        assert_eq!(next, utc(2026, 11, 30, 8, 0));
    }

    /// Regression: the whole minute matches, not only its first second (croner gives a
    /// five-field expression a seconds field of 0).
    #[test]
    fn a_window_is_open_for_every_second_of_its_minutes() {
        let w = Windows {
            allow: vec![CronExpr::parse("* 9-16 * * MON-THU").expect("cron")],
            deny: vec![CronExpr::parse("30 12 * * *").expect("cron")],
            timezone: Some(chrono_tz::Europe::Berlin),
        };
        // Thursday 2026-11-26, 11:44:34.5 UTC = 12:44:34.5 in Berlin.
        let at = utc(2026, 11, 26, 11, 44) + ChronoDuration::milliseconds(34_500);
        assert!(w.is_open(at));
        assert_eq!(
            w.next_open(at, ChronoDuration::days(1)),
            Some(at),
            "open now"
        );
        let denied = utc(2026, 11, 26, 11, 30) + ChronoDuration::seconds(59);
        assert!(!w.is_open(denied), "a deny covers its whole minute too");
    }

    /// Parses are kept per thread: a kept one must answer as a fresh one, also past the
    /// number kept, and a refused expression stays refused.
    #[test]
    fn a_kept_parse_answers_as_a_fresh_one() {
        let at = |h, m| utc(2026, 11, 23, h, m);
        for round in 0..2 {
            // Three times as many as are kept: each is parsed, kept, dropped, parsed again.
            for h in 0..12u32 {
                for m in 0..64u32 {
                    let text = format!("{m} {h} * * *");
                    let parsed = CronExpr::parse(&text);
                    if m >= 60 {
                        assert!(parsed.is_err(), "round {round}: `{text}`");
                        continue;
                    }
                    let cron = parsed.expect("cron");
                    assert_eq!(cron.text, text);
                    assert!(
                        cron.matches(at(h, m), chrono_tz::UTC),
                        "round {round}: `{text}`"
                    );
                    assert!(!cron.matches(at(h, (m + 1) % 60), chrono_tz::UTC));
                }
            }
        }
        assert_eq!(
            CronExpr::parse("nonsense").err(),
            CronExpr::parse_new("nonsense").err()
        );
        assert_eq!(
            CronExpr::parse("nonsense").err(),
            CronExpr::parse_new("nonsense").err(),
            "refused again, with the same words"
        );
        // A text longer than any cron expression is parsed and not kept
        let long = format!("* * * * {}", "1,".repeat(PARSED_MAX_TEXT));
        assert_eq!(
            CronExpr::parse(&long).map(|c| c.text),
            CronExpr::parse_new(&long).map(|c| c.text)
        );
        assert!(PARSED.with(|p| !p.borrow().contains_key(&long)), "not kept");
    }

    #[test]
    fn rejects_six_fields_and_garbage() {
        assert!(CronExpr::parse("0 0 9 * * 1").is_err());
        assert!(CronExpr::parse("* 25 * * *").is_err());
        assert!(CronExpr::parse("nonsense").is_err());
    }
}
