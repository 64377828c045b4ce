//! The threshold judge: one measurement in, one verdict with its evidence out.
//!
//! Invariants: no promotion without evidence, so fewer samples than `minSamples`,
//! a missing or non-finite value, and judges this module does not implement yet
//! (the statistical baseline comparison, issue #5) are `Inconclusive`, never `Pass`.
//! A source *error* is not judged at all: the caller counts it as an error.

use chrono::{DateTime, Utc};

use crate::model::plan::{Check, Judge};
use crate::model::status::{Evidence, Judgement, Verdict};

/// One reading of a check from its metrics source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// `None`: the query returned no data.
    pub value: Option<f64>,
    /// How many requests (or points) the value summarises.
    pub samples: u64,
}

/// What a source measured of both versions, for a `compare: baseline` judge.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// Raw values (latencies, durations): a rank test.
    Continuous {
        canary: Vec<f64>,
        baseline: Vec<f64>,
    },
    /// Successes out of totals per version: a proportion test.
    Counts {
        canary_good: u64,
        canary_total: u64,
        baseline_good: u64,
        baseline_total: u64,
    },
}

/// Judge one measurement of `check` taken at `at`; a baseline judge needs `sample`.
pub fn judge_with(
    check: &Check,
    min_samples: u64,
    m: Measurement,
    sample: Option<&Sample>,
    at: DateTime<Utc>,
) -> Judgement {
    if matches!(check.judge, Judge::Baseline { .. }) {
        return match sample {
            Some(Sample::Continuous { canary, baseline }) => super::compare::judge_continuous(
                &check.name,
                canary,
                baseline,
                &check.judge,
                min_samples,
                at,
            ),
            Some(Sample::Counts {
                canary_good,
                canary_total,
                baseline_good,
                baseline_total,
            }) => super::compare::judge_ratio(
                &check.name,
                *canary_good,
                *canary_total,
                *baseline_good,
                *baseline_total,
                &check.judge,
                min_samples,
                at,
            ),
            None => judge(check, min_samples, m, at),
        };
    }
    judge(check, min_samples, m, at)
}

/// Judge one measurement of `check` taken at `at`.
pub fn judge(check: &Check, min_samples: u64, m: Measurement, at: DateTime<Utc>) -> Judgement {
    let (min, max) = match &check.judge {
        Judge::Threshold { min, max } => (*min, *max),
        Judge::Baseline { .. } => (None, None),
    };
    let evidence = Evidence {
        check: check.name.clone(),
        value: m.value,
        min,
        max,
        samples: m.samples,
        at,
        comparison: None,
    };
    let verdict = verdict(&check.judge, min_samples, m);
    Judgement { verdict, evidence }
}

fn verdict(judge: &Judge, min_samples: u64, m: Measurement) -> Verdict {
    let inconclusive = |reason: String| Verdict::Inconclusive { reason };
    if m.samples < min_samples {
        return inconclusive(format!(
            "too few samples: {} < minSamples {min_samples}",
            m.samples
        ));
    }
    let Some(value) = m.value else {
        return inconclusive("no data".to_owned());
    };
    if !value.is_finite() {
        return inconclusive(format!("value is not a number: {value}"));
    }
    match judge {
        Judge::Threshold { min, max } => {
            // A bound that is not a number compares false both ways: it would pass every
            // value. Validation refuses one; here it is never evidence of a pass.
            if min.is_some_and(|b| !b.is_finite()) || max.is_some_and(|b| !b.is_finite()) {
                return inconclusive(format!(
                    "the threshold is not a finite number (min {min:?}, max {max:?})"
                ));
            }
            if let Some(min) = min
                && value < *min
            {
                return Verdict::Fail {
                    reason: format!("{value} is below min {min}"),
                };
            }
            if let Some(max) = max
                && value > *max
            {
                return Verdict::Fail {
                    reason: format!("{value} is above max {max}"),
                };
            }
            Verdict::Pass
        }
        Judge::Baseline { .. } => {
            inconclusive("no baseline data: this source measured only the candidate".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn regression_a_nan_threshold_never_passes() {
        // Found by the judge fuzz target: NaN compares false both ways.
        let check = Check {
            name: "errors".to_owned(),
            source: "builtin".to_owned(),
            query: "error-rate".to_owned(),
            judge: Judge::Threshold {
                min: Some(f64::NAN),
                max: Some(f64::NAN),
            },
            interval: std::time::Duration::from_secs(60),
            failure_limit: 0,
            consecutive_error_limit: 2,
            samples_query: None,
        };
        let m = Measurement {
            value: Some(-1.0),
            samples: 11_883_349_200_590,
        };
        let j = judge(&check, 0, m, chrono::DateTime::UNIX_EPOCH);
        assert!(matches!(j.verdict, Verdict::Inconclusive { .. }), "{j:?}");
    }
    use super::*;
    use crate::engine::testing::{t, threshold_check};
    use crate::model::plan::{DEFAULT_ALPHA, Direction};

    fn m(value: Option<f64>, samples: u64) -> Measurement {
        Measurement { value, samples }
    }

    #[test]
    fn within_thresholds_passes_with_its_evidence() {
        let c = threshold_check("success-rate", Some(0.99), Some(1.0));
        let j = judge(&c, 100, m(Some(0.995), 1532), t(0));
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(j.evidence.value, Some(0.995));
        assert_eq!(j.evidence.min, Some(0.99));
        assert_eq!(j.evidence.samples, 1532);
        assert_eq!(j.evidence.at, t(0));
    }

    #[test]
    fn outside_thresholds_fails_with_a_reason() {
        let c = threshold_check("success-rate", Some(0.99), None);
        let j = judge(&c, 100, m(Some(0.9), 500), t(0));
        assert!(matches!(j.verdict, Verdict::Fail { ref reason } if reason.contains("below min")));
        let c = threshold_check("latency", None, Some(0.25));
        let j = judge(&c, 100, m(Some(0.4), 500), t(0));
        assert!(matches!(j.verdict, Verdict::Fail { ref reason } if reason.contains("above max")));
    }

    #[test]
    fn too_few_samples_is_inconclusive_even_when_the_value_is_perfect() {
        let c = threshold_check("success-rate", Some(0.99), None);
        let j = judge(&c, 100, m(Some(1.0), 99), t(0));
        assert!(
            matches!(j.verdict, Verdict::Inconclusive { ref reason } if reason.contains("too few"))
        );
        // and a bad value with too few samples is not a failure either: it is no evidence
        let j = judge(&c, 100, m(Some(0.0), 3), t(0));
        assert_eq!(j.verdict.as_str(), "inconclusive");
    }

    #[test]
    fn missing_or_nan_values_are_inconclusive() {
        let c = threshold_check("success-rate", Some(0.99), None);
        assert_eq!(
            judge(&c, 0, m(None, 500), t(0)).verdict.as_str(),
            "inconclusive"
        );
        assert_eq!(
            judge(&c, 0, m(Some(f64::NAN), 500), t(0)).verdict.as_str(),
            "inconclusive"
        );
    }

    #[test]
    fn the_baseline_judge_never_passes_until_it_exists() {
        let mut c = threshold_check("latency", None, None);
        c.judge = Judge::Baseline {
            direction: Direction::Increase,
            max_ratio: Some(1.2),
            max_increase: None,
            alpha: DEFAULT_ALPHA,
        };
        assert_eq!(
            judge(&c, 0, m(Some(1.0), 5000), t(0)).verdict.as_str(),
            "inconclusive"
        );
    }
}
