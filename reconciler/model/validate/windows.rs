//! `spec.windows`: when a rollout may advance (`allow`/`deny` cron expressions and the
//! time zone they are read in).
//!
//! Invariants: pure (the clock is the engine's, never read here); every bad
//! expression is reported, not only the first, and is left out of the windows built.

use crate::model::diagnostics::Code;
use crate::model::window::{CronExpr, Windows};
use crate::model::wire;

use super::{Ctx, P};

/// Parse the allow and deny windows and their time zone; no `windows` allows always.
pub(super) fn windows(cx: &mut Ctx<'_>, s: &wire::PlanSpec) -> Windows {
    use P::{I, K};
    let mut windows = Windows::default();
    if let Some(wn) = &s.windows {
        for (list, key, out) in [
            (&wn.allow, "allow", &mut windows.allow),
            (&wn.deny, "deny", &mut windows.deny),
        ] {
            for (i, text) in list.iter().enumerate() {
                match CronExpr::parse(text) {
                    Ok(c) => out.push(c),
                    Err(e) => {
                        cx.err(&[K("spec"), K("windows"), K(key), I(i)], Code::BadCron, format!("`{text}` is not a cron expression: {e}"))
                            .help = Some("five fields: minute hour day-of-month month day-of-week, e.g. `* 9-16 * * MON-FRI`".to_owned());
                    }
                }
            }
        }
        if let Some(tz) = &wn.timezone {
            match tz.parse::<chrono_tz::Tz>() {
                Ok(t) => windows.timezone = Some(t),
                Err(_) => {
                    cx.err(
                        &[K("spec"), K("windows"), K("timezone")],
                        Code::BadTimezone,
                        format!("unknown time zone `{tz}`"),
                    )
                    .help = Some("use an IANA name such as `Europe/Berlin` or `UTC`".to_owned());
                }
            }
        }
    }
    windows
}
