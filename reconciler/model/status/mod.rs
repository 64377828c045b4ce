//! The status of one plan's rollout, in its domain form: what `status/<plan>.yaml` holds.
//!
//! `Status` is the form the engine reads and returns, with its parts (`Phase`, `Hold`,
//! `CheckRun`, `Judgement`, `Verdict`, `Evidence`, `Comparison`, …) and the trailer
//! rendering of a judgement; `wire` holds the file's serde form and the conversion
//! both ways (re-exported here, so `model::status::StatusFile` keeps its path).
//! Invariants: pure (no I/O, no clock); times are UTC; `Status::from_yaml(s.to_yaml()?)`
//! gives back `s` (see `wire`).

use chrono::{DateTime, Utc};

mod wire;

pub use wire::{
    AnalysisRestartFile, CheckRunFile, ComparisonFile, HoldFile, JudgementFile, KIND, StatusBody,
    StatusError, StatusFile, StatusMetadata, SuccessFile,
};

/// How many recent successes a status remembers (for the rollback window and promotion policies).
pub const MAX_SUCCEEDED: usize = 10;

/// Where a rollout stands.
///
/// `Pending → Progressing(step) ⇄ Paused → Promoting → Succeeded`, with
/// `→ RollingBack → RolledBack` on a failure, an abort or a human revert, and `Held`
/// when a window is closed, evidence is missing or the target is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Pending,
    Progressing,
    Paused,
    Promoting,
    Succeeded,
    RollingBack,
    RolledBack,
    Held,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoting,
        Phase::Succeeded,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Promoting => "Promoting",
            Phase::Succeeded => "Succeeded",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Held => "Held",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// A rollout is moving forward (a candidate may be taking traffic, or is about to).
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            Phase::Pending | Phase::Progressing | Phase::Paused | Phase::Promoting | Phase::Held
        )
    }

    /// Nothing moves until the plan changes or a command arrives.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a rollout is held, which decides what releases it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldKind {
    /// The change window is closed; released when it opens. `step` is the step to enter next.
    Window,
    /// Evidence is missing or inconclusive; released by a human (promote, retry, abort).
    Evidence,
    /// The target is unreachable; released when it answers again (the step is re-entered).
    Target,
    /// The SLO's error budget burns too fast; released when the burn rates fall back.
    Slo,
    /// A metrics source keeps failing; released (the analysis restarts) when it answers.
    Metrics,
    /// During a timed pause or an analysis, traffic stopped being as recorded (drift
    /// being re-applied, the canary's pods not ready): the step's clock stops; released
    /// when the target is healthy again (the step starts over).
    Drift,
}

impl HoldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Window => "window",
            HoldKind::Evidence => "evidence",
            HoldKind::Target => "target",
            HoldKind::Slo => "slo",
            HoldKind::Metrics => "metrics",
            HoldKind::Drift => "drift",
        }
    }

    pub const ALL: [HoldKind; 6] = [
        HoldKind::Window,
        HoldKind::Evidence,
        HoldKind::Target,
        HoldKind::Slo,
        HoldKind::Metrics,
        HoldKind::Drift,
    ];

    pub fn parse(s: &str) -> Option<HoldKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hold {
    pub kind: HoldKind,
    pub reason: String,
}

/// The outcome of judging one measurement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Pass,
    Fail { reason: String },
    Inconclusive { reason: String },
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail { .. } => "fail",
            Verdict::Inconclusive { .. } => "inconclusive",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Pass => None,
            Verdict::Fail { reason } | Verdict::Inconclusive { reason } => Some(reason),
        }
    }
}

/// What a verdict was based on: the value, the threshold it was held to, the sample count.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    pub check: String,
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub samples: u64,
    pub at: DateTime<Utc>,
    /// The statistical comparison behind a baseline judgement (`compare: baseline`);
    /// `None` for threshold judgements.
    pub comparison: Option<Comparison>,
}

/// The statistics of a canary-versus-baseline judgement (see `engine::compare`).
///
/// Invariant: no field is NaN (an undefined ratio is `None`); infinities mean
/// "unbounded" (an interval the samples cannot bound, a side the direction allows).
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// `mann-whitney` (normal approximation), `mann-whitney-exact`, `fisher`, or
    /// `two-proportion-z`.
    pub test: String,
    /// U of the canary (Mann-Whitney), z (two-proportion), or the odds ratio (Fisher);
    /// `None` when undefined.
    pub statistic: Option<f64>,
    /// The p-value against the harmful direction (two-sided for `either`).
    pub p_value: f64,
    /// The estimated effect, canary − baseline: the Hodges-Lehmann shift, or the
    /// difference of the two ratios.
    pub effect: f64,
    /// The two-sided `1 − alpha` confidence interval of `effect`.
    pub ci_low: f64,
    pub ci_high: f64,
    /// The harmless band for `effect` the plan allows (`-inf`/`inf` on a side the
    /// direction does not judge).
    pub allowed_low: f64,
    pub allowed_high: f64,
    /// Canary over baseline: of the medians, or of the harmful outcome's rates.
    pub ratio: Option<f64>,
    /// The canary's and the baseline's centre: the median, or the ratio good/total.
    pub canary: f64,
    pub baseline: f64,
    pub canary_samples: u64,
    pub baseline_samples: u64,
}

/// A verdict with its evidence attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub evidence: Evidence,
}

impl std::fmt::Display for Judgement {
    /// The trailer form: `fail success-rate value=0.98 min=0.999 n=1532 (below min)`,
    /// or for a baseline comparison `fail latency mann-whitney U=85 p=0.00081
    /// canary=100 baseline=1 shift=+99 ci=[0,99] max=+0.2 ratio=100 n=10/10 (…)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.evidence;
        write!(f, "{} {}", self.verdict.as_str(), e.check)?;
        if let Some(c) = &e.comparison {
            write!(f, " {c}")?;
            if let Some(r) = self.verdict.reason() {
                write!(f, " ({r})")?;
            }
            return Ok(());
        }
        match e.value {
            Some(v) => write!(f, " value={v}")?,
            None => write!(f, " value=none")?,
        }
        if let Some(min) = e.min {
            write!(f, " min={min}")?;
        }
        if let Some(max) = e.max {
            write!(f, " max={max}")?;
        }
        write!(f, " n={}", e.samples)?;
        if let Some(r) = self.verdict.reason() {
            write!(f, " ({r})")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Comparison {
    /// `mann-whitney U=85 p=0.00081 canary=100 baseline=1 shift=+99 ci=[0,99] max=+0.2
    /// ratio=100 n=10/10`: numbers to four significant digits, p to two.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (label, effect) = if self.test.starts_with("mann-whitney") {
            ("U", "shift")
        } else if self.test == "fisher" {
            ("or", "diff")
        } else {
            ("z", "diff")
        };
        write!(f, "{}", self.test)?;
        if let Some(s) = self.statistic {
            write!(f, " {label}={}", Num(s, 4))?;
        }
        write!(
            f,
            " p={} canary={} baseline={} {effect}={} ci=[{},{}]",
            Num(self.p_value, 2),
            Num(self.canary, 4),
            Num(self.baseline, 4),
            Signed(self.effect),
            Num(self.ci_low, 4),
            Num(self.ci_high, 4),
        )?;
        match (self.allowed_low.is_finite(), self.allowed_high.is_finite()) {
            (false, true) => write!(f, " max={}", Signed(self.allowed_high))?,
            (true, false) => write!(f, " min={}", Signed(self.allowed_low))?,
            (true, true) => write!(
                f,
                " allowed=[{},{}]",
                Signed(self.allowed_low),
                Signed(self.allowed_high)
            )?,
            (false, false) => {}
        }
        if let Some(r) = self.ratio {
            write!(f, " ratio={}", Num(r, 4))?;
        }
        write!(f, " n={}/{}", self.canary_samples, self.baseline_samples)
    }
}

/// A number to `.1` significant digits, without trailing zeros: `0.00081`, `99`, `1.2e-7`.
struct Num(f64, usize);

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (v, digits) = (self.0, self.1.max(1));
        if v.is_nan() {
            return f.write_str("nan");
        }
        if v.is_infinite() {
            return f.write_str(if v > 0.0 { "inf" } else { "-inf" });
        }
        if v == 0.0 {
            return f.write_str("0");
        }
        let exp = v.abs().log10().floor() as i32;
        if !(-4..6).contains(&exp) {
            let s = format!("{:.*e}", digits - 1, v);
            // 1.200e-7 -> 1.2e-7
            return match s.split_once('e') {
                Some((m, e)) if m.contains('.') => {
                    write!(f, "{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
                }
                _ => f.write_str(&s),
            };
        }
        let decimals = (digits as i32 - 1 - exp).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            f.write_str(s.trim_end_matches('0').trim_end_matches('.'))
        } else {
            f.write_str(&s)
        }
    }
}

/// A number with its sign always shown: `+99`, `-0.03`, `0`.
struct Signed(f64);

impl std::fmt::Display for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 > 0.0 {
            f.write_str("+")?;
        }
        write!(f, "{}", Num(self.0, 4))
    }
}

/// Counters of one check during the current analysis step (Argo Rollouts' semantics).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckRun {
    pub check: String,
    pub measurements: u32,
    pub passes: u32,
    pub failures: u32,
    pub inconclusives: u32,
    pub errors: u32,
    pub consecutive_errors: u32,
    pub last_measured_at: Option<DateTime<Utc>>,
    pub last: Option<Judgement>,
    pub last_error: Option<String>,
    /// Why the check is not judged in this step (a baseline judge with no stable version
    /// to compare with); a skipped check is never measured and never counts as a pass.
    pub skipped: Option<String>,
}

impl CheckRun {
    pub fn new(check: &str) -> Self {
        Self {
            check: check.to_owned(),
            ..Default::default()
        }
    }
}

/// The current analysis step's measurement window was moved forward because the builtin
/// source's samples before a moment were lost (the data plane that counts them restarted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisRestart {
    /// How many times this step's window restarted.
    pub count: u32,
    /// The new start of the window: from then on the samples are complete.
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// An artifact that became stable, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success {
    pub artifact: String,
    pub at: DateTime<Utc>,
}

/// The rollout status of one plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub plan: String,
    pub phase: Phase,
    /// The artifact being (or last) rolled out; equals `stable` after a success.
    pub candidate: String,
    /// The artifact serving when the candidate is not; `None` before the first success.
    pub stable: Option<String>,
    /// The plan commit that started this rollout.
    pub revision: String,
    /// Index into the rollout's steps (see `engine::steps`); equals their count while promoting.
    /// For machines; people read `step_label` (see `step_number`).
    pub step: usize,
    /// How many steps the rollout walks, as of the last transition (`None` in a status
    /// written before it was recorded).
    pub step_count: Option<usize>,
    /// Traffic weight of the candidate, 0..=100.
    pub weight: u8,
    pub step_started_at: Option<DateTime<Utc>>,
    /// A change back to a recently stable artifact: analysis and pauses are skipped.
    pub fast_track: bool,
    /// A first rollout (no stable version) deployed directly: no steps, straight to
    /// promotion (`spec.firstRollout: direct`).
    pub direct: bool,
    pub hold: Option<Hold>,
    /// Counters of the current (or, after a failure, the last) analysis step.
    pub analysis: Vec<CheckRun>,
    /// The last restart of the current analysis step's window, if it restarted.
    pub analysis_restart: Option<AnalysisRestart>,
    /// Recent stable artifacts, oldest first, at most `MAX_SUCCEEDED`.
    pub succeeded: Vec<Success>,
    pub last_transition_at: Option<DateTime<Utc>>,
    /// The reason given with the last transition.
    pub message: Option<String>,
    /// The last command commit (`Rollgate-Command`) this plan has acted on; commands
    /// after it in first-parent history are pending.
    pub last_command: Option<String>,
    /// The share of the SLO's error budget left at the last check (plans with an SLO).
    pub budget_remaining: Option<f64>,
}

/// The step as people count it, `(i, n)` written `i/n`: 1-based, the first step is 1;
/// `0/n` before the first (Pending); `n/n` once every step is done (Promoting,
/// Succeeded: the index is then `n`, and there is no step `n + 1`). A rollout with no
/// steps (a first rollout deployed directly) is `0/0`. This is the one convention for
/// people: commit subjects and `Rollgate-Step` trailers, `rollgate status` and
/// `rollgate history`, logs, the demo. Machines get the 0-based `index` itself
/// (`stepIndex` in the status file, `step` in `--output json`).
pub fn step_number(phase: Phase, index: usize, count: usize) -> (usize, usize) {
    if phase == Phase::Pending {
        (0, count)
    } else {
        ((index + 1).min(count), count)
    }
}

impl Status {
    /// `i/n` for people (see [`step_number`]); `i/?` for a status written before the
    /// step count was recorded.
    pub fn step_label(&self) -> String {
        match self.step_count {
            Some(n) => {
                let (i, n) = step_number(self.phase, self.step, n);
                format!("{i}/{n}")
            }
            None => {
                // Every step done: the index is the count already.
                let i = match self.phase {
                    Phase::Pending => 0,
                    Phase::Promoting | Phase::Succeeded => self.step,
                    _ => self.step + 1,
                };
                format!("{i}/?")
            }
        }
    }

    /// The status of a rollout about to start.
    pub fn pending(plan: &str, candidate: &str, revision: &str) -> Self {
        Self {
            plan: plan.to_owned(),
            phase: Phase::Pending,
            candidate: candidate.to_owned(),
            stable: None,
            revision: revision.to_owned(),
            step: 0,
            step_count: None,
            weight: 0,
            step_started_at: None,
            fast_track: false,
            direct: false,
            hold: None,
            analysis: Vec::new(),
            analysis_restart: None,
            succeeded: Vec::new(),
            last_transition_at: None,
            message: None,
            last_command: None,
            budget_remaining: None,
        }
    }
}

#[cfg(test)]
mod hold_kind_tests {
    use super::HoldKind;

    /// Regression: a hold kind added without a parse arm made rollgate write a status it
    /// could not read back, freezing the plan.
    #[test]
    fn every_hold_kind_round_trips_through_its_name() {
        for k in HoldKind::ALL {
            assert_eq!(HoldKind::parse(k.as_str()), Some(k));
        }
    }
}

#[cfg(test)]
mod tests;
