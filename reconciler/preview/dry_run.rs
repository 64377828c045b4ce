//! The dry run of a plan: the stages a rollout would walk and the earliest time each
//! could be done, from the plan alone (its steps, durations and change windows).
//!
//! It follows the engine's rules (`engine::decide`): every step, and the promotion
//! after the last one, is entered only while the change window is open (a fast-tracked
//! rollout ignores windows); a weight step is done once entered, a timed pause or an
//! analysis once its duration is over, an untimed pause when a human promotes; a first
//! rollout deployed directly is one stage, the deployment, entered inside the window. Earliest
//! means: the target is healthy at once, every check passes, and every promotion comes
//! the moment it is asked for. Invariant: pure; `now` is an argument.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::Plan;
use crate::model::plan::Step;

/// How far ahead a closed window's opening is searched (the engine's horizon).
pub const HORIZON_DAYS: i64 = crate::engine::WINDOW_HORIZON_DAYS;

/// What one stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StageKind {
    /// `setWeight`: send this share of traffic to the candidate.
    SetWeight,
    /// `pause: {duration}`, or untimed (`duration` is `None`): waits for a promotion.
    Pause,
    /// `analysis: {checks, duration}` (a blue-green preview is one too).
    Analysis,
    /// After the last step: the candidate becomes stable at full traffic.
    Promote,
    /// A first rollout (no stable version) deployed directly: the only stage, the
    /// candidate becomes stable at full traffic at once.
    Deploy,
    /// `setHeaderRoute`: matching requests go to the candidate whatever the weight.
    SetHeaderRoute,
    /// `setMirror`: a share of requests copied to the candidate, answers discarded.
    SetMirror,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::SetWeight => "setWeight",
            StageKind::Pause => "pause",
            StageKind::Analysis => "analysis",
            StageKind::Promote => "promote",
            StageKind::Deploy => "deploy",
            StageKind::SetHeaderRoute => "setHeaderRoute",
            StageKind::SetMirror => "setMirror",
        }
    }
}

/// One stage of the dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// 1-based, as in `Rollgate-Step: i/n`; the promotion is step n + 1.
    pub step: usize,
    pub kind: StageKind,
    /// The candidate's share of traffic during the stage, 0..=100.
    pub weight: u8,
    /// A pause's or an analysis' length; `None` for weights, promotions, untimed pauses.
    #[serde(serialize_with = "ser_duration")]
    pub duration: Option<Duration>,
    /// The checks an analysis judges.
    pub checks: Vec<String>,
    /// An untimed pause: done only when a human promotes (`rollgate promote`).
    pub waits_for_promotion: bool,
    /// The earliest the stage can be entered (the window may push it past the previous
    /// stage's end); `None` when the window does not open within [`HORIZON_DAYS`].
    #[serde(serialize_with = "ser_time")]
    pub earliest_start: Option<DateTime<Utc>>,
    /// The earliest the stage can be done; `None` as for `earliest_start`.
    #[serde(serialize_with = "ser_time")]
    pub earliest_completion: Option<DateTime<Utc>>,
    /// The times assume a promotion given as soon as an earlier untimed pause began.
    pub after_promotion: bool,
    /// From a header route or mirror step on: the routing in force besides the weight,
    /// in words (`header x-canary = "1", mirror 20%`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
    /// The share of a fresh baseline (`baseline: fresh`) during the stage; 0: none.
    #[serde(skip_serializing_if = "is_zero")]
    pub baseline: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

impl Stage {
    /// Entering this stage waited for the change window to open.
    pub fn waited_for_window(&self, previous_end: Option<DateTime<Utc>>) -> bool {
        match (previous_end, self.earliest_start) {
            (Some(prev), Some(start)) => start > prev,
            _ => false,
        }
    }
}

/// How a rollout walks the plan (the engine decides which, see `engine::decide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Every step, each entered inside the change window.
    Steps,
    /// Weight steps only, windows not waited for: a change back to a recently stable artifact.
    FastTrack,
    /// No steps: a first rollout with no stable version, deployed at once (in the window).
    Direct,
}

/// The stages of a rollout of `plan` that starts at `now`, walked as `walk` says.
pub fn stages(plan: &Plan, walk: Walk, now: DateTime<Utc>) -> Vec<Stage> {
    let fast_track = walk == Walk::FastTrack;
    let steps = match walk {
        Walk::Direct => Vec::new(),
        Walk::Steps | Walk::FastTrack => crate::engine::steps(plan, fast_track),
    };
    let horizon = chrono::Duration::days(HORIZON_DAYS);
    let mut out = Vec::with_capacity(steps.len() + 1);
    let mut at = Some(now);
    let mut weight = 0u8;
    let mut after_promotion = false;
    let enter = |t: Option<DateTime<Utc>>| {
        t.and_then(|t| {
            if fast_track {
                Some(t)
            } else {
                plan.windows.next_open(t, horizon)
            }
        })
    };
    for (i, step) in steps.iter().enumerate() {
        let start = enter(at);
        let (kind, duration, checks, waits) = match step {
            Step::SetWeight(w) => {
                weight = *w;
                (StageKind::SetWeight, None, Vec::new(), false)
            }
            Step::Pause(d) => (StageKind::Pause, *d, Vec::new(), d.is_none()),
            Step::Analysis(a) => (
                StageKind::Analysis,
                Some(a.duration),
                a.checks.clone(),
                false,
            ),
            Step::SetHeaderRoute(_) => (StageKind::SetHeaderRoute, None, Vec::new(), false),
            Step::SetMirror(_) => (StageKind::SetMirror, None, Vec::new(), false),
        };
        // A fresh baseline needs a stable version to copy: not on a direct deploy.
        let fresh = walk == Walk::Steps && plan.strategy.fresh_baseline();
        let routing = crate::model::plan::Routing::at_with_baseline(&steps, i, fresh);
        let baseline = routing.baseline_weight(weight);
        let routing = (!routing.is_empty()).then(|| crate::engine::routing_text(&routing));
        let end = start.map(|s| plus(s, duration.unwrap_or_default()));
        out.push(Stage {
            step: i + 1,
            kind,
            weight,
            duration,
            checks,
            waits_for_promotion: waits,
            earliest_start: start,
            earliest_completion: end,
            after_promotion,
            routing,
            baseline,
        });
        after_promotion |= waits;
        at = end;
    }
    let start = enter(at);
    out.push(Stage {
        step: steps.len() + 1,
        kind: if walk == Walk::Direct {
            StageKind::Deploy
        } else {
            StageKind::Promote
        },
        weight: 100,
        duration: None,
        checks: Vec::new(),
        waits_for_promotion: false,
        earliest_start: start,
        earliest_completion: start,
        after_promotion,
        routing: None,
        baseline: 0,
    });
    out
}

fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn ser_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&crate::model::duration::format(*d)),
        None => s.serialize_none(),
    }
}

pub(super) fn ser_time<S: serde::Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

pub(super) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn plan(steps: &str, windows: &str) -> Plan {
        let text = format!(
            "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: p }}\nspec:\n  target: local\n  workload:\n    local: {{ command: [srv], listen: \"127.0.0.1:9000\" }}\n  artifact: v2\n  strategy:\n    canary:\n      steps:\n{steps}\n  checks:\n    - {{ name: ok, source: builtin, query: success-rate, judge: {{ min: 0.99 }} }}\n{windows}"
        );
        crate::model::validate::parse_plan("plans/p.yaml", &text, None)
            .expect("valid plan")
            .plan
    }

    fn utc(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, m, 0)
            .single()
            .expect("valid time")
    }

    #[test]
    fn durations_add_up_without_windows() {
        let p = plan(
            "        - setWeight: 10\n        - analysis: { checks: [ok], duration: 10m }\n        - pause: { duration: 5m }\n        - setWeight: 100",
            "",
        );
        let s = stages(&p, Walk::Steps, utc(23, 10, 0));
        let ends: Vec<_> = s.iter().map(|s| s.earliest_completion).collect();
        assert_eq!(
            ends,
            vec![
                Some(utc(23, 10, 0)),
                Some(utc(23, 10, 10)),
                Some(utc(23, 10, 15)),
                Some(utc(23, 10, 15)),
                Some(utc(23, 10, 15)),
            ]
        );
        assert_eq!(s[1].weight, 10, "an analysis runs at the weight before it");
        assert_eq!(s.last().map(|s| s.kind), Some(StageKind::Promote));
    }

    #[test]
    fn a_closed_window_pushes_the_next_stage_to_its_opening() {
        // Weekdays 9-16 UTC; 2026-11-27 is a Friday.
        let p = plan(
            "        - setWeight: 10\n        - pause: { duration: 1h }\n        - setWeight: 100",
            "  windows: { allow: [\"* 9-16 * * 1-5\"] }\n",
        );
        let s = stages(&p, Walk::Steps, utc(27, 16, 30));
        assert_eq!(s[0].earliest_completion, Some(utc(27, 16, 30)));
        assert_eq!(s[1].earliest_completion, Some(utc(27, 17, 30)));
        // Saturday and Sunday are closed: the next weight waits for Monday 09:00.
        assert_eq!(s[2].earliest_start, Some(utc(30, 9, 0)));
        assert!(s[2].waited_for_window(s[1].earliest_completion));
        // A fast-tracked rollout takes the weight steps only and never waits.
        let fast = stages(&p, Walk::FastTrack, utc(27, 16, 30));
        assert_eq!(fast.len(), 3);
        assert!(
            fast.iter()
                .all(|s| s.earliest_completion == Some(utc(27, 16, 30)))
        );
    }

    #[test]
    fn an_untimed_pause_waits_for_a_promotion() {
        let p = plan(
            "        - setWeight: 10\n        - pause: {}\n        - setWeight: 100",
            "",
        );
        let s = stages(&p, Walk::Steps, utc(23, 10, 0));
        assert!(s[1].waits_for_promotion && !s[1].after_promotion);
        assert!(s[2].after_promotion && s[3].after_promotion);
    }

    #[test]
    fn a_first_rollout_deployed_directly_is_one_stage_that_waits_for_the_window() {
        // Weekdays 9-16 UTC; 2026-11-27 is a Friday, 2026-11-30 a Monday.
        let p = plan(
            "        - setWeight: 10\n        - pause: { duration: 1h }\n        - setWeight: 100",
            "  windows: { allow: [\"* 9-16 * * 1-5\"] }\n",
        );
        let s = stages(&p, Walk::Direct, utc(27, 12, 0));
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(
            (s[0].step, s[0].kind, s[0].weight),
            (1, StageKind::Deploy, 100)
        );
        assert_eq!(s[0].earliest_completion, Some(utc(27, 12, 0)));
        let s = stages(&p, Walk::Direct, utc(27, 18, 0));
        assert_eq!(s[0].earliest_completion, Some(utc(30, 9, 0)));
    }

    #[test]
    fn a_fresh_baseline_shows_beside_each_weight_below_full_and_not_on_a_fast_track() {
        let p = plan(
            "        - setWeight: 10\n        - analysis: { checks: [ok], duration: 10m }\n        - setWeight: 50\n        - setWeight: 100\n      baseline: fresh",
            "",
        );
        let s = stages(&p, Walk::Steps, utc(23, 10, 0));
        let shares: Vec<u8> = s.iter().map(|s| s.baseline).collect();
        // setWeight 10, the analysis at 10, setWeight 50, setWeight 100, promote
        assert_eq!(shares, vec![10, 10, 50, 0, 0]);
        assert_eq!(s[1].routing.as_deref(), Some("fresh baseline"));
        assert_eq!(s[3].routing, None);
        let fast = stages(&p, Walk::FastTrack, utc(23, 10, 0));
        assert!(fast.iter().all(|s| s.baseline == 0), "{fast:?}");
    }

    #[test]
    fn a_window_that_never_opens_has_no_completion() {
        // 30 February never comes.
        let p = plan(
            "        - setWeight: 100",
            "  windows: { allow: [\"* * 30 2 *\"] }\n",
        );
        let s = stages(&p, Walk::Steps, utc(23, 10, 0));
        assert!(s.iter().all(|s| s.earliest_completion.is_none()));
    }
}
