//! How a rollout starts, stalls and fails: `spec.rollback` (`onFailure`,
//! `rollbackWindow`), `spec.progressDeadline` and `spec.firstRollout`.
//!
//! Invariants: pure; an unknown or bad value is reported and replaced by the default
//! (revert on failure, the default window and deadline, a direct first rollout), so
//! the rest of the plan is still checked.

use std::time::Duration;

use crate::model::diagnostics::{Code, did_you_mean};
use crate::model::plan::{self, FirstRollout, OnFailure, RollbackPolicy};
use crate::model::wire;

use super::{Ctx, P};

/// `spec.rollback`: what a failure does (revert or hold), and how recently stable an
/// artifact must have been for a change back to it to skip analysis.
pub(super) fn rollback(cx: &mut Ctx<'_>, s: &wire::PlanSpec) -> RollbackPolicy {
    use P::K;
    let rb = s.rollback.clone().unwrap_or_default();
    let on_failure = match rb.on_failure.as_deref() {
        None | Some("revert") => OnFailure::Revert,
        Some("hold") => OnFailure::Hold,
        Some(other) => {
            let hint = did_you_mean(other, ["revert", "hold"]);
            cx.err(
                &[K("spec"), K("rollback"), K("onFailure")],
                Code::InvalidValue,
                format!("`onFailure` must be `revert` or `hold`, found `{other}`"),
            )
            .help = hint.map(|h| format!("did you mean `{h}`?"));
            OnFailure::Revert
        }
    };
    let rollback_window = cx.dur(
        rb.rollback_window.as_deref(),
        plan::DEFAULT_ROLLBACK_WINDOW,
        &[K("spec"), K("rollback"), K("rollbackWindow")],
    );
    RollbackPolicy {
        on_failure,
        rollback_window,
    }
}

/// `spec.progressDeadline`: a stage that is not healthy within this time fails.
pub(super) fn progress_deadline(cx: &mut Ctx<'_>, s: &wire::PlanSpec) -> Duration {
    use P::K;
    cx.dur(
        s.progress_deadline.as_deref(),
        plan::DEFAULT_PROGRESS_DEADLINE,
        &[K("spec"), K("progressDeadline")],
    )
}

/// `spec.firstRollout`: whether a plan's first artifact is deployed at once or walks
/// the steps.
pub(super) fn first_rollout(cx: &mut Ctx<'_>, s: &wire::PlanSpec) -> FirstRollout {
    use P::K;
    match s.first_rollout.as_deref() {
        None => FirstRollout::default(),
        Some(text) => FirstRollout::parse(text).unwrap_or_else(|| {
            let names = FirstRollout::ALL.map(FirstRollout::as_str);
            let hint = did_you_mean(text, names);
            cx.err(
                &[K("spec"), K("firstRollout")],
                Code::InvalidValue,
                format!("`firstRollout` must be `direct` or `steps`, found `{text}`"),
            )
            .help = Some(hint.map_or_else(
                || {
                    "`direct` deploys the first artifact at once; `steps` walks the steps anyway"
                        .to_owned()
                },
                |h| format!("did you mean `{h}`?"),
            ));
            FirstRollout::default()
        }),
    }
}
