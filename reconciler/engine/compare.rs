//! The baseline judge (`judge: { compare: baseline, … }`): is the canary worse than
//! the baseline it runs next to, by more than the plan allows?
//!
//! Two questions, kept apart. *Is there a difference?* is a test (Mann-Whitney U for
//! samples, Fisher's exact test or the pooled z test for counts) in the harmful
//! direction at the plan's `alpha`. *Does it matter?* is an effect size: the
//! estimated shift (Hodges-Lehmann for samples, the difference of ratios for counts)
//! against the band the plan's `maxRatio` / `maxIncrease` allow.
//!
//! ```text
//!   effect (canary − baseline) ──┬── p < alpha and estimate outside the band ──> Fail
//!   p (harmful direction)        ├── the 1−alpha interval inside the band ─────> Pass
//!   interval (1 − alpha)         └── otherwise (not enough evidence either way) ─> Inconclusive
//! ```
//!
//! Fail and Pass exclude each other: the estimate always lies inside its interval.
//! A large but noisy difference, or a significant but tiny one with a wide interval,
//! is Inconclusive: the rollout holds for a human, it neither ships nor rolls back.
//! Kayenta's known miss (seven of ten canary requests 100× slower than every baseline
//! request) is a Fail here: U counts every pair, and the median shift is 99.
//!
//! **The allowed band.** `direction` names the harmful direction of the metric as
//! measured: `increase` (latency, error count), `decrease` (throughput, success
//! ratio), or `either`. The band is one-sided for `increase`/`decrease` and two-sided
//! for `either`. Its edges:
//! - samples: `maxIncrease` is an absolute shift of the metric (how far it may move in
//!   the harmful direction); `maxRatio` bounds the ratio of medians, converted to a
//!   shift with the baseline median: rise `(r − 1)·|median|`, fall `(1 − 1/r)·|median|`
//!   (the canary median may be at most `r` times the baseline's, or at least `1/r` of it);
//! - counts (`good/total`): `maxIncrease` is an absolute change of the ratio
//!   (0.01 = one percentage point); `maxRatio` bounds how many times more often the
//!   *harmful outcome* happens in the canary: for `decrease` that is the failures
//!   (`1 − good/total`), for `increase` the counted event itself. So
//!   `direction: decrease, maxRatio: 1.5` on a success ratio reads "the canary may
//!   fail at most 1.5 times as often as the baseline".
//! - both given: an effect is harmful only if it exceeds both (the wider edge wins),
//!   which is how a relative threshold gets an absolute floor (`maxRatio: 1.2,
//!   maxIncrease: 0.005`: 20 % *and* 5 ms slower).
//!
//! A relative threshold against a baseline of zero allows nothing: with `maxRatio`
//! alone, a baseline with no failures (or a median of 0) can never be shown harmless,
//! so such a canary is Inconclusive unless it fails. Give `maxIncrease` as well when the
//! baseline can be zero. Sparse errors do not slip through: 3 failures in 100 canary
//! requests against 0 in 10,000 baseline requests is a Fail with `maxRatio: 1.5` or
//! `maxIncrease: 0.01` at alpha 0.05 (Fisher's p ≈ 9e-7, the failure rate is 3 %
//! against at most 0.04 % for the baseline at 95 % confidence).
//!
//! **Tests.** Samples: the exact null distribution of U when there are no ties and
//! `n·m ≤ stats::EXACT_MAX_PRODUCT`, else the normal approximation with tie and
//! continuity correction; the interval is the rank interval from the same
//! distribution. Counts: Fisher's exact test when any expected cell of the 2×2 table
//! is below 5, else the pooled z test; the interval is Newcombe's hybrid score
//! interval. Intervals are two-sided at `1 − alpha`, so a one-sided Pass needs the
//! harmful edge at the `alpha/2` level: deliberately conservative.
//!
//! Invariants: pure (no I/O, no clock: `at` is an argument); every verdict carries its
//! evidence, with the comparison whenever one could be computed; fewer than
//! `min_samples` on either side, empty or non-finite samples, impossible counts and a
//! judge that is not a baseline judge are Inconclusive, never Pass.
//!
//! One job over 600 lines, kept in one file: the baseline comparison: the decision rule
//! over the statistics, with its tests.

use chrono::{DateTime, Utc};

use super::stats::{self, Alternative};
use crate::model::plan::{Direction, Judge};
use crate::model::status::{Comparison, Evidence, Judgement, Verdict};

/// An expected cell count below this makes the ratio judge use Fisher's exact test.
pub const FISHER_BELOW_EXPECTED: f64 = 5.0;

/// Judge a continuous metric from raw samples (latencies, durations, sizes).
pub fn judge_continuous(
    check_name: &str,
    canary: &[f64],
    baseline: &[f64],
    judge: &Judge,
    min_samples: u64,
    at: DateTime<Utc>,
) -> Judgement {
    let (nc, nb) = (canary.len() as u64, baseline.len() as u64);
    let mut evidence = Evidence {
        check: check_name.to_owned(),
        value: None,
        min: None,
        max: None,
        samples: nc,
        at,
        comparison: None,
    };
    let rule = match Rule::from_judge(judge) {
        Ok(r) => r,
        Err(reason) => return inconclusive(evidence, reason),
    };
    for (name, sample) in [("canary", canary), ("baseline", baseline)] {
        if sample.is_empty() {
            return inconclusive(evidence, format!("no {name} samples"));
        }
        if sample.iter().any(|v| !v.is_finite()) {
            return inconclusive(evidence, format!("a {name} sample is not a finite number"));
        }
    }
    let rc = match stats::rank_compare(canary, baseline, rule.alternative(), 1.0 - rule.alpha) {
        Ok(rc) => rc,
        Err(e) => return inconclusive(evidence, format!("no comparison: {e}")),
    };
    let scale = rc.median_y.abs();
    let up = rule.allowance(rule.max_ratio.map(|r| (r - 1.0) * scale));
    let down = rule.allowance(rule.max_ratio.map(|r| (1.0 - 1.0 / r) * scale));
    let comparison = Comparison {
        test: if rc.test.exact {
            "mann-whitney-exact"
        } else {
            "mann-whitney"
        }
        .to_owned(),
        statistic: Some(rc.test.u),
        p_value: rc.test.p_value,
        effect: rc.shift.estimate,
        ci_low: rc.shift.lower,
        ci_high: rc.shift.upper,
        allowed_low: rule.band_low(down),
        allowed_high: rule.band_high(up),
        ratio: ratio(rc.median_x, rc.median_y),
        canary: rc.median_x,
        baseline: rc.median_y,
        canary_samples: nc,
        baseline_samples: nb,
    };
    evidence.value = Some(rc.median_x);
    finish(evidence, comparison, &rule, min_samples, "shift")
}

/// Judge a ratio metric from counts: `good` successes out of `total` per version.
///
/// `direction` applies to the ratio `good/total` as given: for a success ratio the
/// harmful direction is `decrease` (and `maxRatio` then bounds the failure rates).
#[allow(clippy::too_many_arguments)]
pub fn judge_ratio(
    check_name: &str,
    canary_good: u64,
    canary_total: u64,
    baseline_good: u64,
    baseline_total: u64,
    judge: &Judge,
    min_samples: u64,
    at: DateTime<Utc>,
) -> Judgement {
    let mut evidence = Evidence {
        check: check_name.to_owned(),
        value: None,
        min: None,
        max: None,
        samples: canary_total,
        at,
        comparison: None,
    };
    let rule = match Rule::from_judge(judge) {
        Ok(r) => r,
        Err(reason) => return inconclusive(evidence, reason),
    };
    for (name, good, total) in [
        ("canary", canary_good, canary_total),
        ("baseline", baseline_good, baseline_total),
    ] {
        if total == 0 {
            return inconclusive(evidence, format!("no {name} requests"));
        }
        if good > total {
            return inconclusive(
                evidence,
                format!("{name} counts are impossible: {good} good of {total}"),
            );
        }
    }
    if canary_total > stats::MAX_EXACT_COUNT || baseline_total > stats::MAX_EXACT_COUNT {
        return inconclusive(
            evidence,
            format!(
                "counts beyond 2^53 ({canary_total} and {baseline_total} requests) cannot be judged exactly"
            ),
        );
    }
    let (cg, ct, bg, bt) = (canary_good, canary_total, baseline_good, baseline_total);
    let pc = cg as f64 / ct as f64;
    let pb = bg as f64 / bt as f64;
    let alt = rule.alternative();
    let table = [[cg, ct - cg], [bg, bt - bg]];
    let exact = min_expected(table) < FISHER_BELOW_EXPECTED
        && stats::fisher_support(table) <= stats::FISHER_MAX_SUPPORT;
    let (test, statistic, p_value) = if exact {
        let f = stats::fisher_exact(table, alt);
        let odds = (!f.odds_ratio.is_nan()).then_some(f.odds_ratio);
        ("fisher", odds, f.p_value)
    } else {
        match stats::two_proportion_z(cg, ct, bg, bt, alt) {
            Ok(z) => ("two-proportion-z", Some(z.z), z.p_value),
            Err(e) => return inconclusive(evidence, format!("no comparison: {e}")),
        }
    };
    let (ci_low, ci_high) = match stats::newcombe_interval(cg, ct, bg, bt, 1.0 - rule.alpha) {
        Ok(ci) => ci,
        Err(e) => return inconclusive(evidence, format!("no comparison: {e}")),
    };
    // the harmful outcome of a rise is the counted event, of a fall its complement
    let up = rule.allowance(rule.max_ratio.map(|r| (r - 1.0) * pb));
    let down = rule.allowance(rule.max_ratio.map(|r| (r - 1.0) * (1.0 - pb)));
    let rises = match rule.direction {
        Direction::Increase => true,
        Direction::Decrease => false,
        Direction::Either => pc >= pb,
    };
    let rate_ratio = if rises {
        ratio(pc, pb)
    } else {
        ratio(1.0 - pc, 1.0 - pb)
    };
    let comparison = Comparison {
        test: test.to_owned(),
        statistic,
        p_value,
        effect: pc - pb,
        ci_low,
        ci_high,
        allowed_low: rule.band_low(down),
        allowed_high: rule.band_high(up),
        ratio: rate_ratio,
        canary: pc,
        baseline: pb,
        canary_samples: ct,
        baseline_samples: bt,
    };
    evidence.value = Some(pc);
    finish(evidence, comparison, &rule, min_samples, "difference")
}

/// The plan's baseline judge, checked again here so that a bad one holds, never passes.
#[derive(Debug, Clone, Copy)]
struct Rule {
    direction: Direction,
    max_ratio: Option<f64>,
    max_increase: Option<f64>,
    alpha: f64,
}

impl Rule {
    fn from_judge(judge: &Judge) -> Result<Rule, String> {
        let Judge::Baseline {
            direction,
            max_ratio,
            max_increase,
            alpha,
        } = *judge
        else {
            return Err("not a baseline judge (`compare: baseline`)".to_owned());
        };
        if !(alpha > 0.0 && alpha <= 0.5) {
            return Err(format!("`alpha` must be in (0, 0.5], found {alpha}"));
        }
        if max_ratio.is_none() && max_increase.is_none() {
            return Err("a baseline judge needs `maxRatio` or `maxIncrease`".to_owned());
        }
        if let Some(r) = max_ratio
            && !(r.is_finite() && r > 0.0)
        {
            return Err(format!("`maxRatio` must be above 0, found {r}"));
        }
        if let Some(a) = max_increase
            && !(a.is_finite() && a >= 0.0)
        {
            return Err(format!("`maxIncrease` must be 0 or more, found {a}"));
        }
        Ok(Rule {
            direction,
            max_ratio,
            max_increase,
            alpha,
        })
    }

    fn alternative(&self) -> Alternative {
        match self.direction {
            Direction::Increase => Alternative::Greater,
            Direction::Decrease => Alternative::Less,
            Direction::Either => Alternative::TwoSided,
        }
    }

    /// How far the effect may go in one direction: harmful only beyond every given
    /// threshold, so the widest allowance wins.
    fn allowance(&self, from_ratio: Option<f64>) -> f64 {
        [self.max_increase, from_ratio]
            .into_iter()
            .flatten()
            .fold(f64::NEG_INFINITY, f64::max)
    }

    fn band_high(&self, up: f64) -> f64 {
        match self.direction {
            Direction::Increase | Direction::Either => up,
            Direction::Decrease => f64::INFINITY,
        }
    }

    fn band_low(&self, down: f64) -> f64 {
        match self.direction {
            Direction::Decrease | Direction::Either => -down + 0.0,
            Direction::Increase => f64::NEG_INFINITY,
        }
    }
}

/// Apply the decision rule (and the sample floor) to a computed comparison.
fn finish(
    evidence: Evidence,
    c: Comparison,
    rule: &Rule,
    min_samples: u64,
    effect_name: &str,
) -> Judgement {
    let (nc, nb) = (c.canary_samples, c.baseline_samples);
    let significant = c.p_value < rule.alpha;
    let harmful = c.effect > c.allowed_high || c.effect < c.allowed_low;
    let contained = c.ci_low >= c.allowed_low && c.ci_high <= c.allowed_high;
    let band = band_text(&c);
    let verdict = if nc < min_samples || nb < min_samples {
        Verdict::Inconclusive {
            reason: format!(
                "too few samples: canary {nc}, baseline {nb}; minSamples is {min_samples}"
            ),
        }
    } else if significant && harmful {
        Verdict::Fail {
            reason: format!(
                "canary {}: {effect_name} {} beyond {band}, p={} < alpha {}",
                if c.effect > 0.0 { "higher" } else { "lower" },
                signed(c.effect),
                short(c.p_value),
                rule.alpha,
            ),
        }
    } else if contained {
        Verdict::Pass
    } else {
        Verdict::Inconclusive {
            reason: format!(
                "cannot rule out a harmful {effect_name}: {}% ci [{}, {}] reaches beyond {band}, p={}",
                short((1.0 - rule.alpha) * 100.0),
                short(c.ci_low),
                short(c.ci_high),
                short(c.p_value),
            ),
        }
    };
    Judgement {
        verdict,
        evidence: Evidence {
            comparison: Some(c),
            ..evidence
        },
    }
}

fn inconclusive(evidence: Evidence, reason: String) -> Judgement {
    Judgement {
        verdict: Verdict::Inconclusive { reason },
        evidence,
    }
}

/// `a / b`, with `inf` for a positive over zero and `None` for 0/0.
fn ratio(a: f64, b: f64) -> Option<f64> {
    if b != 0.0 {
        Some(a / b)
    } else if a == 0.0 {
        None
    } else {
        Some(a.signum() * f64::INFINITY)
    }
}

/// The smallest expected count of a 2×2 table under independence.
fn min_expected(table: [[u64; 2]; 2]) -> f64 {
    let [[a, b], [c, d]] = table.map(|r| r.map(|v| v as f64));
    let n = a + b + c + d;
    let rows = [a + b, c + d];
    let cols = [a + c, b + d];
    rows.iter()
        .flat_map(|r| cols.iter().map(move |c| r * c / n))
        .fold(f64::INFINITY, f64::min)
}

fn band_text(c: &Comparison) -> String {
    match (c.allowed_low.is_finite(), c.allowed_high.is_finite()) {
        (false, true) => format!("the allowed {}", signed(c.allowed_high)),
        (true, false) => format!("the allowed {}", signed(c.allowed_low)),
        _ => format!(
            "the allowed [{}, {}]",
            signed(c.allowed_low),
            signed(c.allowed_high)
        ),
    }
}

fn short(v: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    if v != 0.0 && v.is_finite() && (v.abs() < 1e-4 || v.abs() >= 1e6) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.4}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    }
}

fn signed(v: f64) -> String {
    if v > 0.0 {
        format!("+{}", short(v))
    } else {
        short(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::DEFAULT_ALPHA;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
            .single()
            .expect("valid time")
    }

    fn baseline_judge(
        direction: Direction,
        max_ratio: Option<f64>,
        max_increase: Option<f64>,
    ) -> Judge {
        Judge::Baseline {
            direction,
            max_ratio,
            max_increase,
            alpha: DEFAULT_ALPHA,
        }
    }

    /// Deterministic, roughly normal samples (sum of uniforms) around `centre`.
    fn sample(seed: u64, n: usize, centre: f64, spread: f64) -> Vec<f64> {
        let mut s = seed;
        let mut uniform = move || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| centre + spread * ((0..12).map(|_| uniform()).sum::<f64>() - 6.0))
            .collect()
    }

    fn comparison(j: &Judgement) -> &Comparison {
        j.evidence.comparison.as_ref().expect("a comparison")
    }

    #[test]
    fn kayentas_miss_is_a_failure() {
        // Given seven of ten canary requests 100× slower than every baseline request
        let canary = [
            100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 1.0, 1.0, 1.0,
        ];
        let baseline = [1.0; 10];
        let judge = baseline_judge(Direction::Increase, Some(1.2), None);
        // When judged with a latency rule
        let j = judge_continuous("latency", &canary, &baseline, &judge, 10, at());
        // Then it fails, with the evidence to show why
        assert_eq!(j.verdict.as_str(), "fail", "{j}");
        let c = comparison(&j);
        assert_eq!(c.test, "mann-whitney");
        assert_eq!(c.statistic, Some(85.0));
        assert!(c.p_value < 0.001, "{j}");
        assert_eq!(c.effect, 99.0);
        assert_eq!((c.ci_low, c.ci_high), (0.0, 99.0));
        assert_eq!(c.ratio, Some(100.0));
        assert_eq!((c.canary_samples, c.baseline_samples), (10, 10));
        let text = j.to_string();
        assert!(
            text.starts_with("fail latency mann-whitney U=85 p=0.00"),
            "{text}"
        );
        assert!(
            text.contains(" shift=+99 ci=[0,99] max=+0.2 ratio=100 n=10/10 ("),
            "{text}"
        );
    }

    #[test]
    fn sparse_errors_do_not_slip_through() {
        // 3 failures in 100 canary requests, none in 10,000 baseline requests
        for judge in [
            baseline_judge(Direction::Decrease, Some(1.5), None),
            baseline_judge(Direction::Decrease, None, Some(0.01)),
            baseline_judge(Direction::Decrease, Some(1.5), Some(0.01)),
            baseline_judge(Direction::Either, Some(1.5), None),
        ] {
            let j = judge_ratio("success-rate", 97, 100, 10_000, 10_000, &judge, 100, at());
            assert_eq!(j.verdict.as_str(), "fail", "{judge:?}: {j}");
            let c = comparison(&j);
            assert_eq!(c.test, "fisher");
            assert!(c.p_value < 1e-5, "{j}");
            assert_eq!(c.ratio, Some(f64::INFINITY));
            assert!((c.effect + 0.03).abs() < 1e-12);
        }
    }

    #[test]
    fn equal_distributions_pass_with_enough_samples() {
        let canary = sample(1, 2000, 100.0, 10.0);
        let baseline = sample(2, 2000, 100.0, 10.0);
        for judge in [
            baseline_judge(Direction::Increase, Some(1.2), None),
            baseline_judge(Direction::Decrease, Some(1.2), None),
            baseline_judge(Direction::Either, None, Some(5.0)),
        ] {
            let j = judge_continuous("latency", &canary, &baseline, &judge, 200, at());
            assert_eq!(j.verdict, Verdict::Pass, "{judge:?}: {j}");
            let c = comparison(&j);
            assert!(c.ci_low < 0.0 && 0.0 < c.ci_high, "{j}");
        }
        let j = judge_ratio(
            "success-rate",
            9_990,
            10_000,
            9_989,
            10_000,
            &baseline_judge(Direction::Decrease, Some(1.5), Some(0.001)),
            200,
            at(),
        );
        assert_eq!(j.verdict, Verdict::Pass, "{j}");
        assert_eq!(comparison(&j).test, "two-proportion-z");
    }

    #[test]
    fn too_few_samples_is_inconclusive_never_pass() {
        let judge = baseline_judge(Direction::Increase, Some(1.2), None);
        // a clear regression, and identical data: neither is judged on 5 samples
        for canary in [[100.0; 5], [1.0; 5]] {
            let j = judge_continuous("latency", &canary, &[1.0; 50], &judge, 10, at());
            assert_eq!(j.verdict.as_str(), "inconclusive", "{j}");
            assert!(
                j.verdict
                    .reason()
                    .is_some_and(|r| r.contains("too few samples"))
            );
            assert!(
                j.evidence.comparison.is_some(),
                "evidence is still recorded"
            );
        }
        let j = judge_ratio("ok", 5, 5, 500, 500, &judge, 10, at());
        assert_eq!(j.verdict.as_str(), "inconclusive", "{j}");
        // no data at all, even with minSamples 0
        let j = judge_continuous("latency", &[], &[1.0], &judge, 0, at());
        assert_eq!(j.verdict.as_str(), "inconclusive");
        let j = judge_ratio("ok", 0, 0, 5, 5, &judge, 0, at());
        assert_eq!(j.verdict.as_str(), "inconclusive");
    }

    #[test]
    fn a_significant_but_tiny_difference_is_not_a_failure() {
        // Given a canary 0.5 % slower, measured so often that the difference is certain
        let baseline = sample(3, 5000, 100.0, 1.0);
        let canary: Vec<f64> = sample(4, 5000, 100.0, 1.0)
            .iter()
            .map(|v| v + 0.5)
            .collect();
        let judge = baseline_judge(Direction::Increase, Some(1.2), None);
        let j = judge_continuous("latency", &canary, &baseline, &judge, 200, at());
        let c = comparison(&j);
        assert!(c.p_value < 1e-50, "{j}");
        // Then it is not a failure: it is well inside the allowed 20 %
        assert_eq!(j.verdict, Verdict::Pass, "{j}");
        // and the same holds for rates: 99.0 % vs 99.2 % success with maxIncrease 1 %
        let j = judge_ratio(
            "success-rate",
            990_000,
            1_000_000,
            992_000,
            1_000_000,
            &baseline_judge(Direction::Decrease, None, Some(0.01)),
            200,
            at(),
        );
        assert!(comparison(&j).p_value < 1e-10, "{j}");
        assert_ne!(j.verdict.as_str(), "fail", "{j}");
    }

    #[test]
    fn a_large_but_noisy_difference_is_inconclusive() {
        // half of the canary's requests much slower, half faster: the median shift is
        // +22.5 against an allowed +20, but nothing is significant and nothing is ruled out
        let canary = [60.0, 200.0, 80.0, 180.0, 95.0, 150.0, 70.0, 210.0];
        let baseline = [100.0, 95.0, 105.0, 98.0, 102.0, 110.0, 90.0, 97.0];
        let judge = baseline_judge(Direction::Increase, Some(1.2), None);
        let j = judge_continuous("latency", &canary, &baseline, &judge, 8, at());
        assert_eq!(j.verdict.as_str(), "inconclusive", "{j}");
        let c = comparison(&j);
        assert_eq!(c.effect, 22.5);
        assert!(c.p_value > 0.4 && c.ci_high > 90.0, "{j}");
        assert!(
            j.verdict
                .reason()
                .is_some_and(|r| r.starts_with("cannot rule out a harmful shift")),
            "{j}"
        );
    }

    #[test]
    fn direction_decrease_judges_falls_only() {
        let judge = baseline_judge(Direction::Decrease, Some(1.25), None);
        let baseline = sample(7, 300, 1000.0, 50.0);
        // throughput halves: fail
        let halved: Vec<f64> = sample(8, 300, 500.0, 50.0);
        let j = judge_continuous("throughput", &halved, &baseline, &judge, 100, at());
        assert_eq!(j.verdict.as_str(), "fail", "{j}");
        assert!(
            j.verdict.reason().is_some_and(|r| r.contains("lower")),
            "{j}"
        );
        assert!(comparison(&j).allowed_high.is_infinite());
        // throughput doubles: not harmful in this direction
        let doubled = sample(9, 300, 2000.0, 50.0);
        let j = judge_continuous("throughput", &doubled, &baseline, &judge, 100, at());
        assert_eq!(j.verdict, Verdict::Pass, "{j}");
        // success ratio rising is never harmful under `decrease`
        let j = judge_ratio("ok", 10_000, 10_000, 9_000, 10_000, &judge, 100, at());
        assert_eq!(j.verdict, Verdict::Pass, "{j}");
    }

    #[test]
    fn direction_either_judges_both_ways() {
        let judge = baseline_judge(Direction::Either, None, Some(10.0));
        let baseline = sample(10, 300, 100.0, 5.0);
        for centre in [150.0, 50.0] {
            let canary = sample(11, 300, centre, 5.0);
            let j = judge_continuous("size", &canary, &baseline, &judge, 100, at());
            assert_eq!(j.verdict.as_str(), "fail", "{centre}: {j}");
            let c = comparison(&j);
            assert_eq!((c.allowed_low, c.allowed_high), (-10.0, 10.0));
        }
        let canary = sample(12, 300, 101.0, 5.0);
        let j = judge_continuous("size", &canary, &baseline, &judge, 100, at());
        assert_eq!(j.verdict, Verdict::Pass, "{j}");
        // an increase-only rule does not mind a fall
        let judge = baseline_judge(Direction::Increase, None, Some(10.0));
        let canary = sample(13, 300, 50.0, 5.0);
        let j = judge_continuous("latency", &canary, &baseline, &judge, 100, at());
        assert_eq!(j.verdict, Verdict::Pass, "{j}");
    }

    #[test]
    fn a_zero_baseline_with_only_a_ratio_allows_nothing() {
        // no failures anywhere: the ratio of failure rates is 0/0 and cannot be bounded
        let ratio_only = baseline_judge(Direction::Decrease, Some(1.5), None);
        let j = judge_ratio("ok", 10_000, 10_000, 10_000, 10_000, &ratio_only, 100, at());
        assert_eq!(j.verdict.as_str(), "inconclusive", "{j}");
        assert_eq!(comparison(&j).ratio, None);
        // an absolute floor makes the same evidence a pass
        let with_floor = baseline_judge(Direction::Decrease, Some(1.5), Some(0.001));
        let j = judge_ratio("ok", 10_000, 10_000, 10_000, 10_000, &with_floor, 100, at());
        assert_eq!(j.verdict, Verdict::Pass, "{j}");
    }

    #[test]
    fn a_threshold_or_broken_judge_never_passes() {
        let threshold = Judge::Threshold {
            min: Some(0.0),
            max: None,
        };
        let j = judge_continuous("x", &[1.0; 50], &[1.0; 50], &threshold, 10, at());
        assert_eq!(j.verdict.as_str(), "inconclusive");
        let no_effect = baseline_judge(Direction::Increase, None, None);
        let j = judge_ratio("x", 50, 50, 50, 50, &no_effect, 10, at());
        assert_eq!(j.verdict.as_str(), "inconclusive");
        let j = judge_continuous(
            "x",
            &[1.0, f64::NAN],
            &[1.0; 5],
            &baseline_judge(Direction::Increase, Some(1.2), None),
            0,
            at(),
        );
        assert_eq!(j.verdict.as_str(), "inconclusive");
        let j = judge_ratio(
            "x",
            6,
            5,
            5,
            5,
            &baseline_judge(Direction::Increase, Some(1.2), None),
            0,
            at(),
        );
        assert_eq!(j.verdict.as_str(), "inconclusive");
    }

    #[test]
    fn a_judgement_with_its_comparison_round_trips_through_the_status_file() {
        use crate::model::status::{CheckRun, Status};
        let judge = baseline_judge(Direction::Decrease, Some(1.5), None);
        let j = judge_ratio("ok", 97, 100, 10_000, 10_000, &judge, 100, at());
        let mut s = Status::pending("web", "v2", "abc");
        s.analysis = vec![CheckRun {
            last: Some(j),
            ..CheckRun::new("ok")
        }];
        let text = s.to_yaml().expect("writes");
        assert!(text.contains("ratio: .inf"), "{text}");
        assert_eq!(Status::from_yaml(&text).expect("reads"), s);
    }
}
