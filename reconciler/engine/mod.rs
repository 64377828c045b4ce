//! The decision core: `decide(plan, status, observation, now) -> Decision`.
//!
//! ```text
//!             ┌──────── promote / pause ends ───────┐
//!             v                                     │
//!  Pending ─> Progressing(step i) ⇄ Paused ─> … ─> Promoting ─> Succeeded
//!    │             │      │                             │
//!    │             │      └─> Held (window / evidence / target) ─┐
//!    └─────────────┴──────────── fail, abort, human revert ──────┴─> RollingBack ─> RolledBack
//! ```
//!
//! The daemon gathers what it observed (target health, new measurements, commands in
//! Git), calls `decide`, executes the returned actions in order, and records the
//! transition as one status commit (plus a revert commit when asked).
//! A target action that fails did not happen: `action_failed` turns the decision into a
//! hold (kind `target`, the target's error as the reason; a rollback stays
//! `RollingBack`), recorded once, and the daemon tries again after `retry_backoff`.
//! Invariants: no I/O and no clock (`now` is an argument); the same inputs give the
//! same decision; a decision with nothing new has no transition; stages advance only
//! inside the change window while rollbacks are never blocked; nothing is promoted
//! without a passing verdict or an explicit promotion.

mod analysis;
pub mod compare;
mod decide;
#[cfg(test)]
mod job_tests;
mod judge;
pub mod slo;
pub mod stats;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use analysis::{JOB_TAIL, Observed, Outcome, tail};
pub use compare::{judge_continuous, judge_ratio};
pub use decide::{
    action_failed, decide, due_checks, due_jobs, fresh_baseline, rollout_steps, routing, steps,
};
pub use judge::{Measurement, Sample, judge, judge_with};

use crate::model::plan::FirstRollout;
use crate::model::status::{Judgement, Phase, Status};

/// What the daemon saw since the last decision, gathered before deciding.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The commit that last changed the plan file (becomes the rollout's revision).
    pub revision: String,
    /// The target's state for the current step.
    pub health: TargetHealth,
    /// Measurements taken since the last decision (see `due_checks`).
    pub measurements: Vec<Observed>,
    /// Commands found in Git since the last decision, oldest first.
    pub commands: Vec<Command>,
    /// The SLO's burn rates, when the plan declares an SLO (`Err`: could not be read).
    pub slo: Option<Result<slo::Reading, String>>,
    /// The moment from which the builtin metrics source's data for this plan is complete
    /// (when the proxy that counts it started); `None` when unknown or not applicable.
    /// An analysis step with a builtin check that started earlier restarts its window
    /// there, once: the samples before it are gone.
    pub samples_since: Option<DateTime<Utc>>,
    /// Where the due job checks stand (see `due_jobs`), as their runner reported.
    pub jobs: Vec<JobObserved>,
}

/// Where a job stands, as its runner reports it: a value, never an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    /// It exited 0 (a local command) or its Job says `Complete`; `output` is its tail.
    Succeeded {
        output: String,
    },
    /// Non-zero exit, timeout, a `Failed` Job; `reason` says why, with the output's
    /// tail or the pod's termination message.
    Failed {
        reason: String,
    },
}

/// One look at a job check's job (see `due_jobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobObserved {
    pub check: String,
    pub at: DateTime<Utc>,
    /// `Err`: the runner could not start or read the job: an error, never a pass.
    pub result: Result<JobState, String>,
}

/// A job to start (idempotently, by `id`) and look at before the next `decide`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueJob {
    pub check: String,
    /// Deterministic: the same rollout, step and check give the same id, so a restarted
    /// daemon finds the job it started (see `job_id`).
    pub id: String,
}

impl Observation {
    /// Nothing new, the target is healthy.
    pub fn quiet(revision: &str) -> Self {
        Self {
            revision: revision.to_owned(),
            health: TargetHealth::Healthy,
            measurements: Vec::new(),
            commands: Vec::new(),
            slo: None,
            samples_since: None,
            jobs: Vec::new(),
        }
    }
}

/// The target's view of the desired state of the current step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHealth {
    /// The step's desired state is in place and serving.
    Healthy,
    /// Still converging (pods starting, weights propagating).
    Progressing,
    /// The candidate is broken (crash loop, failing health checks): the stage fails.
    Unhealthy { reason: String },
    /// The target could not be asked: the rollout holds.
    Unreachable { reason: String },
}

/// A human's command, written to Git (CLI, plain commit, or PR comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Pass an untimed pause, accept an inconclusive analysis, or force the next step.
    Promote,
    /// Roll back now; the plan change is reverted (or the stable artifact restored) as
    /// for a failed stage, unless `rollback.onFailure: hold` leaves Git as it is.
    Abort,
    /// Restart a rolled-back rollout of the same artifact, or re-run a held analysis.
    Retry,
}

/// A change to make on the target; every action is idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the candidate next to the stable version, without traffic.
    StartCandidate { artifact: String },
    /// Send this share (0..=100) of traffic to the candidate.
    SetWeight(u8),
    /// Route by header or cookie, mirror, and run a fresh baseline at the candidate's
    /// weight, as this says (the candidate's weight stays as it is).
    SetRouting(crate::model::plan::Routing),
    /// Make the candidate the stable version at full traffic; retire the old one.
    Promote { artifact: String },
    /// Send all traffic to the stable version and remove the candidate.
    Rollback { stable: Option<String> },
}

impl Action {
    /// A fixed name per kind (a metric label): `start_candidate`, `set_weight`,
    /// `promote`, `rollback`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::StartCandidate { .. } => "start_candidate",
            Action::SetWeight(_) => "set_weight",
            Action::SetRouting(_) => "set_routing",
            Action::Promote { .. } => "promote",
            Action::Rollback { .. } => "rollback",
        }
    }
}

/// A routing in words: `header x-canary = "1", mirror 20%, fresh baseline`, or
/// `weights only`.
pub fn routing_text(r: &crate::model::plan::Routing) -> String {
    let mut parts: Vec<String> = r.matches.iter().map(ToString::to_string).collect();
    if r.mirror > 0 {
        parts.push(format!("mirror {}%", r.mirror));
    }
    if r.baseline {
        parts.push("fresh baseline".to_owned());
    }
    if parts.is_empty() {
        "weights only".to_owned()
    } else {
        parts.join(", ")
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::StartCandidate { artifact } => write!(f, "start candidate {artifact}"),
            Action::SetWeight(w) => write!(f, "set weight {w}"),
            Action::SetRouting(r) => write!(f, "set routing {}", routing_text(r)),
            Action::Promote { artifact } => write!(f, "promote {artifact}"),
            Action::Rollback { stable: Some(s) } => write!(f, "roll back to {s}"),
            Action::Rollback { stable: None } => f.write_str("roll back (remove the candidate)"),
        }
    }
}

/// One status commit's worth of change.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// `None` for a plan seen for the first time.
    pub from: Option<Phase>,
    pub to: Phase,
    /// `(i, n)`: the step as people count it, as in `Rollgate-Step: i/n`
    /// (`model::status::step_number`: 1-based, 0 while pending, `n/n` once all are done).
    pub step: (usize, usize),
    pub reason: String,
    /// The verdicts behind the transition, one `Rollgate-Verdict` trailer each.
    pub verdicts: Vec<String>,
    /// On the transitions that start or deploy a rollout with no stable version: how it
    /// goes (`Rollgate-First-Rollout: direct|steps`).
    pub first_rollout: Option<FirstRollout>,
    /// The new start of the analysis window, when this transition restarted it because
    /// the builtin samples before it were lost (`Rollgate-Analysis-Restarted: <time>`).
    pub analysis_restarted_at: Option<DateTime<Utc>>,
}

/// A revert of the plan change to push, because a judgement failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Revert {
    pub of_revision: String,
    pub reason: String,
    pub evidence: Vec<Judgement>,
}

/// The outcome of one `decide`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The new status, or `None` when nothing changed. A new status without a
    /// transition only updates counters: keep it, write it with the next transition.
    pub status: Option<Status>,
    /// Target actions, to execute in order before recording the transition (after it
    /// when `record_first`).
    pub actions: Vec<Action>,
    /// The transition to record as one status commit; `None`: no commit.
    pub transition: Option<Transition>,
    /// Push a revert of the plan change (before the status commit, so that a crash in
    /// between resumes as a human revert).
    pub revert: Option<Revert>,
    /// When to decide again at the latest (next measurement, pause end, window opening).
    pub next_wakeup: Option<DateTime<Utc>>,
    /// Record the transition before the actions run: it says what is in flight, not what
    /// is done. Set on the way into `Promoting` (Git says Promoting while the target
    /// promotes; `Succeeded` follows once it is healthy), except when retrying after a
    /// failed action (held for the target), so a failing promotion is recorded once.
    pub record_first: bool,
}

/// The id of the job of check `check` for the step `status` is in: a DNS label (a
/// Kubernetes object name) of the plan, the check and a hash of the rollout (revision,
/// candidate), the step and the moment it was entered. A retry, which enters the step
/// again, runs a new job; a restart finds the same one. Pure (FNV-1a, no randomness).
pub fn job_id(plan: &str, status: &Status, check: &str) -> String {
    let started = status
        .step_started_at
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let key = [
        plan,
        &status.revision,
        &status.candidate,
        &status.step.to_string(),
        &started,
        check,
    ]
    .join("\u{1f}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let cut = |s: &str, n: usize| -> String {
        s.chars()
            .take(n)
            .collect::<String>()
            .trim_end_matches('-')
            .to_owned()
    };
    format!(
        "{}-{}-{:012x}",
        cut(plan, 24),
        cut(check, 20),
        h & 0xffff_ffff_ffff
    )
}

/// How often a running job is looked at.
pub const JOB_POLL: Duration = Duration::from_secs(5);

/// How often a waiting rollout looks again (target converging, unreachable, promoting).
pub const POLL: Duration = Duration::from_secs(10);

/// The first wait after a failed target action; it doubles with each failure in a row.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two attempts of a failing target action.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long to wait before trying a target action again after `failures` failures in a
/// row (1 for the first): `RETRY_FIRST` doubling, spread by ± a quarter with `jitter`
/// (in `0.0..1.0`, 0.5 for none) so that many plans failing at once do not retry in
/// step, and never beyond `RETRY_MAX`. Pure: the caller passes the randomness.
pub fn retry_backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    base.mul_f64(0.75 + jitter / 2.0).min(RETRY_MAX)
}

/// How far ahead a closed window's opening is searched.
pub const WINDOW_HORIZON_DAYS: i64 = 8;

/// `t + d`, saturating instead of overflowing.
pub(crate) fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
