//! The wire form of a plan's status: the serde types of `status/<plan>.yaml` and the
//! conversion to and from the domain `Status`.
//!
//! The file is camelCase, `apiVersion: rollgate.dev/v1alpha1`, `kind: RolloutStatus`.
//! Invariants: only rollgate writes the file, yet parsing it is total (a bad file is a
//! `StatusError`, never a panic; unknown fields are refused);
//! `Status::from_yaml(s.to_yaml()?)` gives back `s`; times are written as RFC 3339 UTC.
//! Pure: no I/O, no clock.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{
    AnalysisRestart, CheckRun, Comparison, Evidence, Hold, HoldKind, Judgement, Phase, Status,
    Success, Verdict,
};
use crate::model::wire::API_VERSION;
use crate::model::yaml::MAX_FILE_BYTES;

pub const KIND: &str = "RolloutStatus";

impl Status {
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
