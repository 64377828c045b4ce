//! The judge under arbitrary measurements: any judge, any samples (finite or not,
//! tied or not, tiny or huge), any counts give a verdict with its evidence, never a
//! panic, never a NaN in a comparison, never a Pass on no evidence. The statistics
//! behind it keep their own invariants (p-values in `[0, 1]`, an estimate inside its
//! interval).
//!
//! Input: built with `arbitrary` (no seeds needed; libFuzzer grows its own).
#![no_main]

use chrono::DateTime;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rollgate::engine::stats::{self, Alternative, Method};
use rollgate::engine::{Measurement, Sample, judge_with};
use rollgate::model::plan::{Check, Direction, Judge};
use rollgate::model::status::{Comparison, Verdict};

/// A number: mostly small or tied ones (where rank statistics are interesting), and
/// every kind of edge: raw bits, infinities, NaN, ±1e300, subnormals, −0.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum F {
    Int(i8),
    Centi(i16),
    Raw(f64),
    Nan,
    Inf,
    NegInf,
    Huge(bool),
    Tiny,
    NegZero,
}

impl F {
    fn get(self) -> f64 {
        match self {
            F::Int(i) => f64::from(i),
            F::Centi(i) => f64::from(i) / 100.0,
            F::Raw(f) => f,
            F::Nan => f64::NAN,
            F::Inf => f64::INFINITY,
            F::NegInf => f64::NEG_INFINITY,
            F::Huge(neg) => {
                if neg {
                    -stats::MAX_MAGNITUDE
                } else {
                    stats::MAX_MAGNITUDE
                }
            }
            F::Tiny => f64::from_bits(1),
            F::NegZero => -0.0,
        }
    }
}

/// A count: small, middling, or anything up to `u64::MAX`.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum N {
    Small(u8),
    Mid(u32),
    Raw(u64),
}

impl N {
    fn get(self) -> u64 {
        match self {
            N::Small(n) => u64::from(n),
            N::Mid(n) => u64::from(n),
            N::Raw(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum J {
    Threshold {
        min: Option<F>,
        max: Option<F>,
    },
    Baseline {
        direction: u8,
        max_ratio: Option<F>,
        max_increase: Option<F>,
        alpha: F,
    },
}

#[derive(Arbitrary, Debug)]
enum S {
    Continuous { canary: Vec<F>, baseline: Vec<F> },
    Counts { cg: N, ct: N, bg: N, bt: N },
}

#[derive(Arbitrary, Debug)]
struct Input {
    judge: J,
    min_samples: N,
    value: Option<F>,
    samples: N,
    sample: Option<S>,
    alt: u8,
    confidence: u16,
}

fn direction(d: u8) -> Direction {
    [Direction::Increase, Direction::Decrease, Direction::Either][usize::from(d % 3)]
}

fn alternative(a: u8) -> Alternative {
    [
        Alternative::Greater,
        Alternative::Less,
        Alternative::TwoSided,
    ][usize::from(a % 3)]
}

fn values(v: &[F]) -> Vec<f64> {
    v.iter().take(3000).map(|f| f.get()).collect()
}

fn p_value(p: f64, what: &str) {
    assert!((0.0..=1.0).contains(&p), "{what}: p = {p}");
}

fn no_nan(c: &Comparison) {
    let fields = [
        c.p_value,
        c.effect,
        c.ci_low,
        c.ci_high,
        c.allowed_low,
        c.allowed_high,
        c.canary,
        c.baseline,
    ];
    assert!(
        fields
            .iter()
            .chain(&c.statistic)
            .chain(&c.ratio)
            .all(|v| !v.is_nan()),
        "NaN in {c:?}"
    );
    p_value(c.p_value, &c.test);
    assert!(c.ci_low <= c.ci_high, "{c:?}");
}

/// The statistics on their own, in their documented domain (a confidence in (0, 1)).
fn statistics(x: &[f64], y: &[f64], alt: Alternative, confidence: f64) {
    for method in [Method::Auto, Method::Exact, Method::Asymptotic] {
        if let Ok(t) = stats::mann_whitney_u_with(x, y, alt, method) {
            p_value(t.p_value, "mann-whitney");
            assert!(t.u >= 0.0 && t.u <= (x.len() * y.len()) as f64, "{t:?}");
        }
    }
    if let Ok(hl) = stats::hodges_lehmann(x, y, confidence) {
        assert!(
            hl.lower <= hl.estimate && hl.estimate <= hl.upper,
            "{hl:?} for {x:?} and {y:?}"
        );
    }
}

fn counts(a: u64, b: u64, c: u64, d: u64, alt: Alternative, confidence: f64) {
    // Fisher's table in a range where its O(margin) weights stay small.
    let small = |v: u64| v % 2000;
    let table = [[small(a), small(b)], [small(c), small(d)]];
    let f = stats::fisher_exact(table, alt);
    p_value(f.p_value, "fisher");
    if let Ok(z) = stats::two_proportion_z(a.min(b), b, c.min(d), d, alt) {
        p_value(z.p_value, "two-proportion-z");
    }
    if let Ok((lo, hi)) = stats::newcombe_interval(a.min(b), b, c.min(d), d, confidence) {
        assert!(
            -1.0 <= lo && lo <= hi && hi <= 1.0,
            "newcombe [{lo}, {hi}] of {a}/{b} {c}/{d}"
        );
    }
}

fuzz_target!(|input: Input| {
    let judge = match input.judge {
        J::Threshold { min, max } => Judge::Threshold {
            min: min.map(F::get),
            max: max.map(F::get),
        },
        J::Baseline {
            direction: d,
            max_ratio,
            max_increase,
            alpha,
        } => Judge::Baseline {
            direction: direction(d),
            max_ratio: max_ratio.map(F::get),
            max_increase: max_increase.map(F::get),
            alpha: alpha.get(),
        },
    };
    let check = Check {
        name: "fuzz".to_owned(),
        source: "builtin".to_owned(),
        query: "latency".to_owned(),
        judge,
        interval: std::time::Duration::from_secs(60),
        failure_limit: 0,
        consecutive_error_limit: 2,
        samples_query: None,
    };
    let min_samples = input.min_samples.get();
    let m = Measurement {
        value: input.value.map(F::get),
        samples: input.samples.get(),
    };
    let alt = alternative(input.alt);
    let confidence = (f64::from(input.confidence) + 1.0) / (f64::from(u16::MAX) + 2.0);
    let sample = input.sample.map(|s| match s {
        S::Continuous { canary, baseline } => Sample::Continuous {
            canary: values(&canary),
            baseline: values(&baseline),
        },
        S::Counts { cg, ct, bg, bt } => Sample::Counts {
            canary_good: cg.get(),
            canary_total: ct.get(),
            baseline_good: bg.get(),
            baseline_total: bt.get(),
        },
    });
    match &sample {
        Some(Sample::Continuous { canary, baseline }) => {
            statistics(canary, baseline, alt, confidence);
        }
        Some(Sample::Counts {
            canary_good,
            canary_total,
            baseline_good,
            baseline_total,
        }) => counts(
            *canary_good,
            *canary_total,
            *baseline_good,
            *baseline_total,
            alt,
            confidence,
        ),
        None => {}
    }

    let j = judge_with(
        &check,
        min_samples,
        m,
        sample.as_ref(),
        DateTime::UNIX_EPOCH,
    );
    let shown = j.to_string();
    if let Some(c) = &j.evidence.comparison {
        no_nan(c);
    }
    if !matches!(j.verdict, Verdict::Inconclusive { .. }) {
        assert!(!shown.contains("NaN"), "{shown}");
    }
    // No Pass (and no Fail) without evidence: enough finite samples, a judge that holds.
    match (&check.judge, &sample, &j.verdict) {
        (_, _, Verdict::Inconclusive { .. }) => {}
        (Judge::Threshold { min, max }, _, v) => {
            let value = m.value.expect("a value");
            assert!(
                value.is_finite() && m.samples >= min_samples,
                "{v:?}: {m:?}"
            );
            let within = min.is_none_or(|lo| value >= lo) && max.is_none_or(|hi| value <= hi);
            assert_eq!(
                matches!(v, Verdict::Pass),
                within,
                "{v:?}: {value} against min {min:?} max {max:?}"
            );
        }
        (Judge::Baseline { .. }, Some(Sample::Continuous { canary, baseline }), _) => {
            assert!(canary.iter().chain(baseline).all(|v| v.is_finite()));
            assert!(canary.len() as u64 >= min_samples && baseline.len() as u64 >= min_samples);
            assert!(j.evidence.comparison.is_some());
        }
        (
            Judge::Baseline { .. },
            Some(Sample::Counts {
                canary_good,
                canary_total,
                baseline_good,
                baseline_total,
            }),
            _,
        ) => {
            assert!(canary_good <= canary_total && baseline_good <= baseline_total);
            assert!(*canary_total >= min_samples && *baseline_total >= min_samples);
            assert!(j.evidence.comparison.is_some());
        }
        (Judge::Baseline { .. }, None, v) => panic!("{v:?} without a baseline sample"),
    }
});
