//! What GitHub is told, in words: a rollout's commit status (`progress`), the comment
//! on the pull request that merged a rolled-back revision, and a preview's conclusion
//! and title in check-run terms (its annotations are in them already).
//!
//! Invariants: pure (no I/O, no clock); text from a plan or a status never carries a
//! backtick into Markdown code spans (`no_ticks`); a rollout's rollback comment has one
//! marker per plan and revision (`rollback_marker`), so it is found again and updated,
//! never duplicated; a neutral preview (no plan changed) passes, as a neutral check run
//! does.

use crate::github::{CHECK_NAME, Conclusion, StatusState};
use crate::model::Plan;
use crate::model::status::{Phase, Status};

/// What GitHub is told about one rollout (#7 item 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub plan: String,
    /// The plan commit that started the rollout (the status goes on it).
    pub revision: String,
    pub state: StatusState,
    /// `step 3/7 · 25% · success-rate 99.94%`.
    pub description: String,
    /// On a rollback: the comment for the pull request that merged `revision`.
    pub rollback: Option<String>,
}

/// The commit status context of a plan.
pub fn context(plan: &str) -> String {
    format!("{CHECK_NAME}/{plan}")
}

/// A status message without the phase it repeats (`rolled back: v1 removed`).
fn why(message: &str) -> &str {
    message.strip_prefix("rolled back: ").unwrap_or(message)
}

fn no_ticks(s: &str) -> String {
    s.replace('`', "'")
}

/// A measured value as people read it: rates in percent, other numbers short.
fn value(check: &str, v: f64) -> String {
    if (check.ends_with("rate") || check.ends_with("ratio")) && (0.0..=1.0).contains(&v) {
        format!("{:.2}%", v * 100.0)
    } else if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// What to tell GitHub about `status` of `plan` (pure).
pub fn progress(plan: &Plan, status: &Status) -> Progress {
    let n = crate::engine::rollout_steps(plan, status).len();
    let (i, n) = crate::model::status::step_number(status.phase, status.step, n);
    let step = format!("step {i}/{n}");
    let mut d = match status.phase {
        Phase::Pending => format!("pending · {}", no_ticks(&status.candidate)),
        Phase::Succeeded => format!("succeeded · {} is stable", no_ticks(&status.candidate)),
        Phase::Promoting if status.direct => "first rollout · deploying directly · 100%".to_owned(),
        Phase::Promoting => format!("{step} · promoting · 100%"),
        Phase::RollingBack => format!("rolling back · {}%", status.weight),
        Phase::RolledBack => "rolled back".to_owned(),
        Phase::Progressing | Phase::Paused | Phase::Held => {
            format!("{step} · {}%", status.weight)
        }
    };
    if matches!(
        status.phase,
        Phase::Progressing | Phase::Paused | Phase::Held
    ) {
        for run in &status.analysis {
            if let Some(v) = run.last.as_ref().and_then(|j| j.evidence.value) {
                d.push_str(&format!(" · {} {}", run.check, value(&run.check, v)));
            }
        }
    }
    match (status.phase, &status.hold) {
        (Phase::Paused, _) => d.push_str(" · paused"),
        (Phase::Held, Some(h)) => d.push_str(&format!(" · held ({})", h.kind.as_str())),
        (Phase::RolledBack, _) => {
            if let Some(m) = &status.message {
                d.push_str(&format!(": {}", why(m)));
            }
        }
        _ => {}
    }
    let state = match status.phase {
        Phase::Succeeded => StatusState::Success,
        Phase::RolledBack => StatusState::Failure,
        _ => StatusState::Pending,
    };
    let rollback = (status.phase == Phase::RolledBack).then(|| rollback_comment(status));
    Progress {
        plan: status.plan.clone(),
        revision: status.revision.clone(),
        state,
        description: d,
        rollback,
    }
}

/// The marker of the rollback comment of one rollout (found again, never duplicated).
pub fn rollback_marker(plan: &str, revision: &str) -> String {
    format!("<!-- rollgate:rollback:{plan}:{revision} -->")
}

fn rollback_comment(s: &Status) -> String {
    let short = &s.revision[..s.revision.len().min(12)];
    let mut o = format!(
        "{}\n### rollgate rolled back `{}`\n\nThe rollout of `{}` (from {short}) was rolled back",
        rollback_marker(&s.plan, &s.revision),
        s.plan,
        no_ticks(&s.candidate),
    );
    match &s.message {
        Some(m) => o.push_str(&format!(": {}.\n", no_ticks(why(m)).trim_end_matches('.'))),
        None => o.push_str(".\n"),
    }
    match &s.stable {
        Some(stable) => o.push_str(&format!("Traffic is back on `{}`.\n", no_ticks(stable))),
        None => o.push_str("There is no stable version to go back to; the candidate is stopped.\n"),
    }
    let evidence: Vec<String> = s
        .analysis
        .iter()
        .filter_map(|r| {
            r.last
                .as_ref()
                .map(|j| format!("- `{}`", no_ticks(&j.to_string())))
        })
        .collect();
    if evidence.is_empty() {
        o.push_str(
            "\nNo analysis verdict was recorded (a command, a revert or the target ended it).\n",
        );
    } else {
        o.push_str("\n**Evidence**\n");
        o.push_str(&evidence.join("\n"));
        o.push('\n');
    }
    o.push_str(&format!(
        "\n`rollgate history {}` shows every transition; the status commits carry the same facts as trailers.\n",
        s.plan
    ));
    o
}

pub(super) fn conclusion(c: crate::preview::Conclusion) -> Conclusion {
    match c {
        crate::preview::Conclusion::Success => Conclusion::Success,
        crate::preview::Conclusion::Failure => Conclusion::Failure,
        crate::preview::Conclusion::Neutral => Conclusion::Neutral,
    }
}

/// The commit status standing in for the check run where GitHub refuses check runs. A
/// neutral preview (no plan changed) passes, as a neutral check run does.
pub(super) fn status_state(c: crate::preview::Conclusion) -> StatusState {
    match c {
        crate::preview::Conclusion::Success | crate::preview::Conclusion::Neutral => {
            StatusState::Success
        }
        crate::preview::Conclusion::Failure => StatusState::Failure,
    }
}

pub(super) fn title(c: crate::preview::Conclusion) -> &'static str {
    match c {
        crate::preview::Conclusion::Success => "Every changed plan passes",
        crate::preview::Conclusion::Failure => "A changed plan is rejected",
        crate::preview::Conclusion::Neutral => "No plan changes",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_values_read_as_people_write_them() {
        assert_eq!(value("success-rate", 0.99944), "99.94%");
        assert_eq!(value("error-rate", 0.5), "50.00%");
        assert_eq!(value("latency-p99", 0.25), "0.2500");
        assert_eq!(value("requests", 12.0), "12");
        assert_eq!(why("rolled back: v1 removed"), "v1 removed");
        assert_eq!(no_ticks("a`b"), "a'b");
        assert_eq!(context("web"), "rollgate/web");
    }
}
