//! The status of one plan's rollout: what `status/<plan>.yaml` holds.
//!
//! `Status` is the domain form the engine reads and returns; `StatusFile` is its wire
//! form (camelCase, `apiVersion: rollgate.dev/v1alpha1`, `kind: RolloutStatus`).
//! Invariants: only rollgate writes the file, yet parsing it is total (a bad file is
//! a `StatusError`, never a panic); `Status::from_yaml(s.to_yaml()?)` gives back `s`;
//! times are UTC and written as RFC 3339.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::wire::API_VERSION;
use super::yaml::MAX_FILE_BYTES;

pub const KIND: &str = "RolloutStatus";

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
}

impl HoldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Window => "window",
            HoldKind::Evidence => "evidence",
            HoldKind::Target => "target",
            HoldKind::Slo => "slo",
            HoldKind::Metrics => "metrics",
        }
    }

    pub const ALL: [HoldKind; 5] = [
        HoldKind::Window,
        HoldKind::Evidence,
        HoldKind::Target,
        HoldKind::Slo,
        HoldKind::Metrics,
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

    /// The wire form.
    pub fn to_file(&self) -> StatusFile {
        StatusFile {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: StatusMetadata {
                name: self.plan.clone(),
            },
            status: StatusBody {
                phase: self.phase.as_str().to_owned(),
                candidate: self.candidate.clone(),
                stable: self.stable.clone(),
                revision: self.revision.clone(),
                step_index: self.step,
                step_count: self.step_count,
                weight: self.weight,
                step_started_at: self.step_started_at.map(time_to_wire),
                fast_track: self.fast_track,
                direct: self.direct,
                hold: self.hold.as_ref().map(|h| HoldFile {
                    kind: h.kind.as_str().to_owned(),
                    reason: h.reason.clone(),
                }),
                analysis: self.analysis.iter().map(check_run_to_wire).collect(),
                analysis_restart: self.analysis_restart.as_ref().map(|r| AnalysisRestartFile {
                    count: r.count,
                    at: time_to_wire(r.at),
                    reason: r.reason.clone(),
                }),
                succeeded: self
                    .succeeded
                    .iter()
                    .map(|s| SuccessFile {
                        artifact: s.artifact.clone(),
                        at: time_to_wire(s.at),
                    })
                    .collect(),
                last_transition_at: self.last_transition_at.map(time_to_wire),
                message: self.message.clone(),
                last_command: self.last_command.clone(),
                budget_remaining: self.budget_remaining,
            },
        }
    }

    /// The validated domain form of a parsed file.
    pub fn from_file(f: &StatusFile) -> Result<Self, StatusError> {
        if f.api_version != API_VERSION {
            return Err(StatusError::ApiVersion(f.api_version.clone()));
        }
        if f.kind != KIND {
            return Err(StatusError::Kind(f.kind.clone()));
        }
        let s = &f.status;
        let phase = Phase::parse(&s.phase).ok_or_else(|| StatusError::Phase(s.phase.clone()))?;
        if s.weight > 100 {
            return Err(StatusError::Weight(s.weight));
        }
        let hold = match &s.hold {
            None => None,
            Some(h) => Some(Hold {
                kind: HoldKind::parse(&h.kind)
                    .ok_or_else(|| StatusError::HoldKind(h.kind.clone()))?,
                reason: h.reason.clone(),
            }),
        };
        Ok(Self {
            plan: f.metadata.name.clone(),
            phase,
            candidate: s.candidate.clone(),
            stable: s.stable.clone(),
            revision: s.revision.clone(),
            step: s.step_index,
            step_count: s.step_count,
            weight: s.weight,
            step_started_at: opt_time("stepStartedAt", s.step_started_at.as_deref())?,
            fast_track: s.fast_track,
            direct: s.direct,
            hold,
            analysis: s
                .analysis
                .iter()
                .map(check_run_from_wire)
                .collect::<Result<_, _>>()?,
            analysis_restart: match &s.analysis_restart {
                None => None,
                Some(r) => Some(AnalysisRestart {
                    count: r.count,
                    at: time_from_wire("analysisRestart.at", &r.at)?,
                    reason: r.reason.clone(),
                }),
            },
            succeeded: s
                .succeeded
                .iter()
                .map(|x| {
                    Ok(Success {
                        artifact: x.artifact.clone(),
                        at: time_from_wire("succeeded.at", &x.at)?,
                    })
                })
                .collect::<Result<_, StatusError>>()?,
            last_transition_at: opt_time("lastTransitionAt", s.last_transition_at.as_deref())?,
            message: s.message.clone(),
            last_command: s.last_command.clone(),
            budget_remaining: s.budget_remaining.filter(|b| b.is_finite()),
        })
    }

    /// The text of `status/<plan>.yaml`.
    pub fn to_yaml(&self) -> Result<String, StatusError> {
        serde_saphyr::to_string(&self.to_file()).map_err(|e| StatusError::Write(e.to_string()))
    }

    /// Parse `status/<plan>.yaml`; any flaw is an error, never a panic.
    pub fn from_yaml(text: &str) -> Result<Self, StatusError> {
        if text.len() > MAX_FILE_BYTES {
            return Err(StatusError::TooLarge(text.len()));
        }
        let file: StatusFile =
            serde_saphyr::from_str(text).map_err(|e| StatusError::Yaml(e.to_string()))?;
        Self::from_file(&file)
    }
}

/// Why a status file could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("status file is {0} bytes; the limit is {MAX_FILE_BYTES}")]
    TooLarge(usize),
    #[error("status file is not valid: {0}")]
    Yaml(String),
    #[error("cannot write status: {0}")]
    Write(String),
    #[error("unsupported apiVersion `{0}`; expected `{API_VERSION}`")]
    ApiVersion(String),
    #[error("unexpected kind `{0}`; expected `{KIND}`")]
    Kind(String),
    #[error("unknown phase `{0}`")]
    Phase(String),
    #[error("unknown hold kind `{0}`")]
    HoldKind(String),
    #[error("unknown verdict `{0}`")]
    Verdict(String),
    #[error("weight {0} is above 100")]
    Weight(u8),
    #[error("`{field}` is not an RFC 3339 time: `{value}`")]
    Time { field: &'static str, value: String },
}

// ---- wire form -------------------------------------------------------------------

/// `status/<plan>.yaml` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusFile {
    pub api_version: String,
    pub kind: String,
    pub metadata: StatusMetadata,
    pub status: StatusBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusMetadata {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusBody {
    pub phase: String,
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    pub revision: String,
    /// 0-based index into the rollout's steps.
    #[serde(default)]
    pub step_index: usize,
    /// How many steps the rollout walks (people read `stepIndex + 1` of it, see
    /// `step_number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_count: Option<usize>,
    #[serde(default)]
    pub weight: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub fast_track: bool,
    /// A first rollout deployed directly, without steps.
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<CheckRunFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_restart: Option<AnalysisRestartFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub succeeded: Vec<SuccessFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command: Option<String>,
    /// Share of the SLO error budget left (1 = untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_remaining: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldFile {
    pub kind: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisRestartFile {
    pub count: u32,
    pub at: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessFile {
    pub artifact: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRunFile {
    pub check: String,
    #[serde(default)]
    pub measurements: u32,
    #[serde(default)]
    pub passes: u32,
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub inconclusives: u32,
    #[serde(default)]
    pub errors: u32,
    #[serde(default)]
    pub consecutive_errors: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_measured_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<JudgementFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why the check is not judged in this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JudgementFile {
    /// `pass`, `fail` or `inconclusive`.
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default)]
    pub samples: u64,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<ComparisonFile>,
}

/// `Comparison` as written (infinities as `.inf` / `-.inf`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComparisonFile {
    pub test: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<f64>,
    pub p_value: f64,
    pub effect: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub allowed_low: f64,
    pub allowed_high: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    pub canary: f64,
    pub baseline: f64,
    pub canary_samples: u64,
    pub baseline_samples: u64,
}

impl ComparisonFile {
    fn from_domain(c: &Comparison) -> Self {
        Self {
            test: c.test.clone(),
            statistic: c.statistic,
            p_value: c.p_value,
            effect: c.effect,
            ci_low: c.ci_low,
            ci_high: c.ci_high,
            allowed_low: c.allowed_low,
            allowed_high: c.allowed_high,
            ratio: c.ratio,
            canary: c.canary,
            baseline: c.baseline,
            canary_samples: c.canary_samples,
            baseline_samples: c.baseline_samples,
        }
    }

    fn to_domain(&self) -> Comparison {
        Comparison {
            test: self.test.clone(),
            statistic: self.statistic,
            p_value: self.p_value,
            effect: self.effect,
            ci_low: self.ci_low,
            ci_high: self.ci_high,
            allowed_low: self.allowed_low,
            allowed_high: self.allowed_high,
            ratio: self.ratio,
            canary: self.canary,
            baseline: self.baseline,
            canary_samples: self.canary_samples,
            baseline_samples: self.baseline_samples,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn time_to_wire(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn time_from_wire(field: &'static str, s: &str) -> Result<DateTime<Utc>, StatusError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StatusError::Time {
            field,
            value: s.to_owned(),
        })
}

fn opt_time(field: &'static str, s: Option<&str>) -> Result<Option<DateTime<Utc>>, StatusError> {
    s.map(|s| time_from_wire(field, s)).transpose()
}

fn check_run_to_wire(c: &CheckRun) -> CheckRunFile {
    CheckRunFile {
        check: c.check.clone(),
        measurements: c.measurements,
        passes: c.passes,
        failures: c.failures,
        inconclusives: c.inconclusives,
        errors: c.errors,
        consecutive_errors: c.consecutive_errors,
        last_measured_at: c.last_measured_at.map(time_to_wire),
        last: c.last.as_ref().map(|j| JudgementFile {
            verdict: j.verdict.as_str().to_owned(),
            reason: j.verdict.reason().map(str::to_owned),
            value: j.evidence.value,
            min: j.evidence.min,
            max: j.evidence.max,
            samples: j.evidence.samples,
            at: time_to_wire(j.evidence.at),
            comparison: j
                .evidence
                .comparison
                .as_ref()
                .map(ComparisonFile::from_domain),
        }),
        last_error: c.last_error.clone(),
        skipped: c.skipped.clone(),
    }
}

fn check_run_from_wire(c: &CheckRunFile) -> Result<CheckRun, StatusError> {
    let last = match &c.last {
        None => None,
        Some(j) => {
            let reason = j.reason.clone().unwrap_or_default();
            let verdict = match j.verdict.as_str() {
                "pass" => Verdict::Pass,
                "fail" => Verdict::Fail { reason },
                "inconclusive" => Verdict::Inconclusive { reason },
                other => return Err(StatusError::Verdict(other.to_owned())),
            };
            Some(Judgement {
                verdict,
                evidence: Evidence {
                    check: c.check.clone(),
                    value: j.value,
                    min: j.min,
                    max: j.max,
                    samples: j.samples,
                    at: time_from_wire("analysis.last.at", &j.at)?,
                    comparison: j.comparison.as_ref().map(ComparisonFile::to_domain),
                },
            })
        }
    };
    Ok(CheckRun {
        check: c.check.clone(),
        measurements: c.measurements,
        passes: c.passes,
        failures: c.failures,
        inconclusives: c.inconclusives,
        errors: c.errors,
        consecutive_errors: c.consecutive_errors,
        last_measured_at: opt_time("analysis.lastMeasuredAt", c.last_measured_at.as_deref())?,
        last,
        last_error: c.last_error.clone(),
        skipped: c.skipped.clone(),
    })
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
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, min, 0)
            .single()
            .expect("valid time")
    }

    fn full_status() -> Status {
        let mut s = Status::pending("checkout", "reg/checkout@sha256:bbb", "abc123");
        s.phase = Phase::Held;
        s.stable = Some("reg/checkout@sha256:aaa".to_owned());
        s.step = 1;
        s.weight = 5;
        s.step_started_at = Some(at(5));
        s.hold = Some(Hold {
            kind: HoldKind::Evidence,
            reason: "check latency: 4 consecutive errors".to_owned(),
        });
        s.analysis = vec![
            CheckRun {
                check: "success-rate".to_owned(),
                measurements: 3,
                passes: 2,
                inconclusives: 1,
                last_measured_at: Some(at(7)),
                last: Some(Judgement {
                    verdict: Verdict::Pass,
                    evidence: Evidence {
                        check: "success-rate".to_owned(),
                        value: Some(0.9992),
                        min: Some(0.999),
                        max: None,
                        samples: 1532,
                        at: at(7),
                        comparison: None,
                    },
                }),
                ..CheckRun::new("success-rate")
            },
            CheckRun {
                check: "latency".to_owned(),
                measurements: 5,
                errors: 5,
                consecutive_errors: 5,
                last_error: Some("connection refused".to_owned()),
                last: Some(Judgement {
                    verdict: Verdict::Inconclusive {
                        reason: "too few samples".to_owned(),
                    },
                    evidence: Evidence {
                        check: "latency".to_owned(),
                        value: None,
                        min: None,
                        max: Some(0.25),
                        samples: 3,
                        at: at(6),
                        comparison: None,
                    },
                }),
                ..CheckRun::new("latency")
            },
            CheckRun {
                check: "p99".to_owned(),
                measurements: 1,
                failures: 1,
                last: Some(Judgement {
                    verdict: Verdict::Fail {
                        reason: "canary is worse".to_owned(),
                    },
                    evidence: Evidence {
                        check: "p99".to_owned(),
                        value: Some(100.0),
                        min: None,
                        max: None,
                        samples: 10,
                        at: at(6),
                        comparison: Some(Comparison {
                            test: "mann-whitney".to_owned(),
                            statistic: Some(85.0),
                            p_value: 0.000_807_6,
                            effect: 99.0,
                            ci_low: 0.0,
                            ci_high: 99.0,
                            allowed_low: f64::NEG_INFINITY,
                            allowed_high: 0.2,
                            ratio: Some(100.0),
                            canary: 100.0,
                            baseline: 1.0,
                            canary_samples: 10,
                            baseline_samples: 10,
                        }),
                    },
                }),
                ..CheckRun::new("p99")
            },
        ];
        s.analysis.push(CheckRun {
            skipped: Some("no stable version to compare with".to_owned()),
            ..CheckRun::new("latency-vs-stable")
        });
        s.analysis_restart = Some(AnalysisRestart {
            count: 2,
            at: at(5),
            reason: "analysis restarted at 2026-11-23T10:05:00Z: the builtin samples before it were lost (the data plane restarted)".to_owned(),
        });
        s.succeeded = vec![Success {
            artifact: "reg/checkout@sha256:aaa".to_owned(),
            at: at(1),
        }];
        s.last_transition_at = Some(at(8));
        s.message = Some("held: evidence missing".to_owned());
        s
    }

    #[test]
    fn status_round_trips_through_its_file() {
        // Given a status with every field set
        let s = full_status();
        // When it is written and read back
        let text = s.to_yaml().expect("writes");
        let back = Status::from_yaml(&text).expect("reads");
        // Then nothing is lost, and the file says what it is
        assert_eq!(back, s);
        assert!(text.contains("apiVersion: rollgate.dev/v1alpha1"), "{text}");
        assert!(text.contains("kind: RolloutStatus"), "{text}");
        assert!(text.contains("stepStartedAt:"), "{text}");
    }

    #[test]
    fn a_first_rollout_deployed_directly_round_trips() {
        let mut s = Status::pending("web", "v1", "deadbeef");
        s.phase = Phase::Promoting;
        s.direct = true;
        s.weight = 100;
        let text = s.to_yaml().expect("writes");
        assert!(text.contains("direct: true"), "{text}");
        assert_eq!(Status::from_yaml(&text).expect("reads"), s);
        // and a status without it (every status written before it existed) reads as false
        let plain = Status::pending("web", "v1", "deadbeef");
        assert!(!plain.to_yaml().expect("writes").contains("direct"));
    }

    #[test]
    fn a_minimal_status_round_trips() {
        let s = Status::pending("web", "v2", "deadbeef");
        let back = Status::from_yaml(&s.to_yaml().expect("writes")).expect("reads");
        assert_eq!(back, s);
    }

    #[test]
    fn a_broken_status_file_is_an_error_not_a_panic() {
        let good = full_status().to_yaml().expect("writes");
        let cases = [
            String::new(),
            "[1, 2".to_owned(),
            "just text".to_owned(),
            good.replace("Held", "Flying"),
            good.replace("RolloutStatus", "RolloutPlan"),
            good.replace("rollgate.dev/v1alpha1", "rollgate.dev/v9"),
            good.replace("2026-11-23T10:05:00Z", "yesterday"),
            good.replace("kind: evidence", "kind: mood"),
            good.replace("verdict: pass", "verdict: maybe"),
            good.replace("weight: 5", "weight: 300"),
            good.replace("weight: 5", "weight: 101"),
            good.replace("count: 2", "count: -2"),
            good.replace(
                "at: \"2026-11-23T10:05:00Z\"\n    reason: \"analysis",
                "at: soon\n    reason: \"analysis",
            ),
            format!("{good}surprise: 1\n"),
        ];
        for text in cases {
            assert!(Status::from_yaml(&text).is_err(), "accepted:\n{text}");
        }
        let huge = "a".repeat(MAX_FILE_BYTES + 1);
        assert_eq!(
            Status::from_yaml(&huge),
            Err(StatusError::TooLarge(MAX_FILE_BYTES + 1))
        );
    }

    #[test]
    fn judgements_render_as_trailers() {
        let s = full_status();
        let j = s.analysis[0].last.as_ref().expect("judged");
        assert_eq!(
            j.to_string(),
            "pass success-rate value=0.9992 min=0.999 n=1532"
        );
        let j = s.analysis[1].last.as_ref().expect("judged");
        assert_eq!(
            j.to_string(),
            "inconclusive latency value=none max=0.25 n=3 (too few samples)"
        );
        let j = s.analysis[2].last.as_ref().expect("judged");
        assert_eq!(
            j.to_string(),
            "fail p99 mann-whitney U=85 p=0.00081 canary=100 baseline=1 shift=+99 ci=[0,99] max=+0.2 ratio=100 n=10/10 (canary is worse)"
        );
    }

    #[test]
    fn comparison_numbers_are_compact() {
        let c = Comparison {
            test: "fisher".to_owned(),
            statistic: None,
            p_value: 9.4123e-7,
            effect: -0.03,
            ci_low: -0.084_47,
            ci_high: -0.010_3,
            allowed_low: -0.01,
            allowed_high: f64::INFINITY,
            ratio: Some(f64::INFINITY),
            canary: 0.97,
            baseline: 1.0,
            canary_samples: 100,
            baseline_samples: 10_000,
        };
        assert_eq!(
            c.to_string(),
            "fisher p=9.4e-7 canary=0.97 baseline=1 diff=-0.03 ci=[-0.08447,-0.0103] min=-0.01 ratio=inf n=100/10000"
        );
        let c = Comparison {
            test: "two-proportion-z".to_owned(),
            statistic: Some(-1.234_56),
            allowed_low: -0.5,
            allowed_high: 0.25,
            ratio: None,
            p_value: 0.5,
            ..c
        };
        assert!(
            c.to_string()
                .starts_with("two-proportion-z z=-1.235 p=0.5 "),
            "{c}"
        );
        assert!(c.to_string().contains(" allowed=[-0.5,+0.25] n="), "{c}");
    }
}
