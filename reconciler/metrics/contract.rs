//! The contract every `MetricsSource` implementation passes (run from each one's tests).
//!
//! Given two sources of the same kind, one that answers (`live`) and one pointed at
//! nothing (`dead`: a port or a socket nobody listens on), and three questions, it checks
//! the promises the judge relies on, and panics with the first one broken:
//! - unreachable: the dead source's `measure`, `compare` and `error_ratio` are errors,
//!   asked twice (nothing remembered), never a measurement, a sample or a ratio;
//! - empty: a question that matches no data measures no value and no samples (an error
//!   is allowed too: it holds the rollout), never a value (a 0 or a 1 reads as a verdict);
//! - counted: data the test put there measures its known value, and `samples` is exactly
//!   the number of events the source was given; asked again, the same;
//! - `complete_since`: `None` (complete as far back as asked) or a moment no later than
//!   the counted data began (data after it was not lost), the same when asked again (a
//!   source that claimed a restart on every ask would restart every analysis window).
//!
//! `samples_since` is not part of the trait: the daemon derives it from `complete_since`.

use chrono::{DateTime, Utc};

use super::{MetricsSource, QueryContext};
use crate::engine::Measurement;
use crate::model::plan::Check;

/// One question to put to a source.
#[derive(Debug, Clone)]
pub struct Question<'a> {
    pub check: Check,
    pub ctx: QueryContext<'a>,
}

/// The questions, and what the counted one must read.
#[derive(Debug, Clone)]
pub struct Cases<'a> {
    /// Asked of the dead source.
    pub unreachable: Question<'a>,
    /// Asked of the live source: a query or a version that matches no data.
    pub empty: Question<'a>,
    /// Asked of the live source: the data the test put there.
    pub counted: Question<'a>,
    /// The value `counted` must read (within `tolerance`).
    pub value: f64,
    pub tolerance: f64,
    /// The events behind `counted`: `samples` must be exactly this (and more than 0).
    pub samples: u64,
    /// A moment no later than the first counted event was recorded.
    pub data_from: DateTime<Utc>,
}

/// Run the contract; panics with a description of the first broken promise.
pub fn run(live: &mut dyn MetricsSource, dead: &mut dyn MetricsSource, cases: &Cases<'_>) {
    assert!(cases.samples > 0, "the counted case must count something");
    unreachable(dead, &cases.unreachable);
    empty(live, &cases.empty);
    counted(live, cases);
    complete_since(live, cases);
}

fn unreachable(dead: &mut dyn MetricsSource, q: &Question<'_>) {
    for attempt in 1..=2 {
        let m = dead.measure(&q.check, &q.ctx);
        assert!(
            m.is_err(),
            "an unreachable source measured {m:?} (ask {attempt}) for {:?}: it must be an error",
            q.check.query
        );
        let s = dead.compare(&q.check, &q.ctx);
        assert!(
            s.is_err(),
            "an unreachable source compared {s:?} (ask {attempt}): it must be an error"
        );
        let r = dead.error_ratio(&q.check.query, &q.check.query, &q.ctx);
        assert!(
            r.is_err(),
            "an unreachable source gave the error ratio {r:?} (ask {attempt}): it must be an error"
        );
    }
}

fn empty(live: &mut dyn MetricsSource, q: &Question<'_>) {
    for attempt in 1..=2 {
        match live.measure(&q.check, &q.ctx) {
            Err(_) => {}
            Ok(m) => assert_eq!(
                m,
                Measurement {
                    value: None,
                    samples: 0
                },
                "a question matching no data ({:?} for {}, ask {attempt}) must read no value and no samples",
                q.check.query,
                q.ctx.version
            ),
        }
    }
}

fn counted(live: &mut dyn MetricsSource, cases: &Cases<'_>) {
    let q = &cases.counted;
    let first = live
        .measure(&q.check, &q.ctx)
        .unwrap_or_else(|e| panic!("the counted data could not be measured: {e}"));
    let value = first
        .value
        .unwrap_or_else(|| panic!("the counted data read no value: {first:?}"));
    assert!(
        (value - cases.value).abs() <= cases.tolerance,
        "the counted data read {value}, want {} ± {}",
        cases.value,
        cases.tolerance
    );
    assert_eq!(
        first.samples, cases.samples,
        "samples must be the events the source was given: {first:?}"
    );
    let again = live
        .measure(&q.check, &q.ctx)
        .unwrap_or_else(|e| panic!("the counted data could not be measured again: {e}"));
    assert_eq!(
        again, first,
        "the same data, asked again, must read the same"
    );
}

fn complete_since(live: &mut dyn MetricsSource, cases: &Cases<'_>) {
    let plan = cases.counted.ctx.plan;
    let first = live.complete_since(plan);
    if let Some(t) = first {
        assert!(
            t <= cases.data_from,
            "complete_since {t} is after the counted data began ({}): that data would count as lost",
            cases.data_from
        );
    }
    assert_eq!(
        live.complete_since(plan),
        first,
        "complete_since must not move while the source keeps counting"
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::plan::Judge;

    /// A source that answers every question with the same measurement.
    #[derive(Debug)]
    struct Always(Result<Measurement, String>);

    impl MetricsSource for Always {
        fn measure(&mut self, _: &Check, _: &QueryContext<'_>) -> Result<Measurement, String> {
            self.0.clone()
        }
    }

    fn cases() -> Cases<'static> {
        let question = Question {
            check: Check {
                name: "q".to_owned(),
                source: "s".to_owned(),
                query: "q".to_owned(),
                judge: Judge::Threshold {
                    min: Some(0.9),
                    max: None,
                },
                interval: Duration::from_secs(1),
                failure_limit: 1,
                consecutive_error_limit: 1,
                samples_query: None,
            },
            ctx: QueryContext {
                plan: "p",
                version: "v2",
                baseline: Some("v1"),
                fresh_baseline: false,
                window: Duration::from_secs(60),
                workload: None,
            },
        };
        Cases {
            unreachable: question.clone(),
            empty: question.clone(),
            counted: question,
            value: 1.0,
            tolerance: 0.0,
            samples: 10,
            data_from: Utc::now(),
        }
    }

    fn value(samples: u64) -> Always {
        Always(Ok(Measurement {
            value: Some(1.0),
            samples,
        }))
    }

    #[test]
    #[should_panic(expected = "an unreachable source measured")]
    fn a_dead_source_that_reads_a_value_breaks_the_contract() {
        run(&mut value(10), &mut value(10), &cases());
    }

    #[test]
    #[should_panic(expected = "matching no data")]
    fn a_value_for_no_data_breaks_the_contract() {
        run(
            &mut value(10),
            &mut Always(Err("down".to_owned())),
            &cases(),
        );
    }

    #[test]
    #[should_panic(expected = "samples must be the events the source was given")]
    fn miscounted_samples_break_the_contract() {
        let mut c = cases();
        c.empty.ctx.version = "v3";
        let mut live = ByVersion;
        run(&mut live, &mut Always(Err("down".to_owned())), &c);
    }

    /// No data for v3; v2 reads 1.0 over 9 samples (the case says 10).
    #[derive(Debug)]
    struct ByVersion;

    impl MetricsSource for ByVersion {
        fn measure(&mut self, _: &Check, ctx: &QueryContext<'_>) -> Result<Measurement, String> {
            Ok(match ctx.version {
                "v2" => Measurement {
                    value: Some(1.0),
                    samples: 9,
                },
                _ => Measurement {
                    value: None,
                    samples: 0,
                },
            })
        }
    }
}
