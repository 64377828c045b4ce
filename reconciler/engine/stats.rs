//! The statistics behind the baseline judge: rank tests, exact tests for counts, and
//! the normal distribution they lean on.
//!
//! ```text
//!   canary x[], baseline y[] ──> sort, merge ──> U, tie term ──> p  (exact DP or normal)
//!                                     │
//!                                     └──> Hodges-Lehmann shift + CI (selection over x−y)
//!   good/total per side ─────> Fisher's exact test (hypergeometric) or pooled z
//!                              Newcombe's hybrid score interval for the difference
//! ```
//!
//! The conventions follow SciPy (`scipy.stats.mannwhitneyu`, `fisher_exact`), and the
//! committed reference vectors (`tests/data/judge/`) hold us to them: `u` is the
//! statistic of the *first* sample, `Greater` means the first sample tends to be larger.
//!
//! Invariants: pure functions of their arguments (no I/O, no clock, no randomness);
//! every p-value is in `[0, 1]` and never NaN; empty or non-finite samples are a
//! `StatsError`, never a panic; memory stays O(n + m) at any size (the Hodges-Lehmann
//! estimate never materialises the n·m pairwise differences); the exact distribution
//! of U is only built when `n·m <= EXACT_MAX_PRODUCT`.
//!
//! One job over 600 lines, kept in one file: the statistical tests the judge uses, each
//! with its exact and approximate forms; half of it is their unit tests against
//! reference values.

use std::f64::consts::FRAC_1_SQRT_2;

/// The exact null distribution of U is used (no ties, method `Auto`) when `n·m` is at
/// most this: 50 × 50, 20 × 125, 10 × 250. It costs O(min(n,m)·n·m) memory
/// (≤ 1 MB) and O((n·m)²/4) additions (≈ 1.6 M); beyond it the normal approximation
/// with continuity correction is already accurate to well under the 1e-3 that
/// matters for a decision at alpha ≥ 0.001.
pub const EXACT_MAX_PRODUCT: u64 = 2500;

/// Sample values beyond this magnitude are refused: their differences could overflow.
pub const MAX_MAGNITUDE: f64 = 1e300;

/// Fisher's two-sided test sums every table no more probable than the observed one;
/// "no more probable" allows this relative slack for rounding, as R does.
const FISHER_RELATIVE_SLACK: f64 = 1e-7;

/// Which alternative hypothesis a test is against (SciPy's `alternative`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alternative {
    /// The first sample (or proportion) tends to be larger.
    Greater,
    /// The first sample (or proportion) tends to be smaller.
    Less,
    TwoSided,
}

impl Alternative {
    pub fn as_str(self) -> &'static str {
        match self {
            Alternative::Greater => "greater",
            Alternative::Less => "less",
            Alternative::TwoSided => "two-sided",
        }
    }

    pub fn parse(s: &str) -> Option<Alternative> {
        [
            Alternative::Greater,
            Alternative::Less,
            Alternative::TwoSided,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// How the p-value of the Mann-Whitney test is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Exact when there are no ties and `n·m <= EXACT_MAX_PRODUCT`, else asymptotic.
    Auto,
    /// The exact null distribution (no ties allowed).
    Exact,
    /// The normal approximation with tie and continuity correction.
    Asymptotic,
}

/// Why a statistic could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("the {0} sample is empty")]
    Empty(&'static str),
    #[error("the {0} sample holds a value that is not a finite number")]
    NotFinite(&'static str),
    #[error("the {0} sample holds a value beyond ±1e300 (differences would overflow)")]
    OutOfRange(&'static str),
    #[error("the exact distribution of U needs samples without ties")]
    ExactWithTies,
    #[error("the exact distribution of U is limited to n·m <= {EXACT_MAX_PRODUCT}, found {0}")]
    ExactTooLarge(u64),
    #[error("{0}")]
    Counts(String),
}

// ---- the normal distribution -------------------------------------------------------

/// The complementary error function, by W. J. Cody's rational Chebyshev
/// approximations (CALERF, 1969/1985), accurate to about 1e-16 relative over the
/// whole line, including the far tail (erfc(26) ≈ 5.7e-296).
#[allow(clippy::excessive_precision)] // Cody's coefficients, digit for digit as published
pub fn erfc(x: f64) -> f64 {
    const A: [f64; 5] = [
        3.16112374387056560e00,
        1.13864154151050156e02,
        3.77485237685302021e02,
        3.20937758913846947e03,
        1.85777706184603153e-1,
    ];
    const B: [f64; 4] = [
        2.36012909523441209e01,
        2.44024637934444173e02,
        1.28261652607737228e03,
        2.84423683343917062e03,
    ];
    const C: [f64; 9] = [
        5.64188496988670089e-1,
        8.88314979438837594e00,
        6.61191906371416295e01,
        2.98635138197400131e02,
        8.81952221241769090e02,
        1.71204761263407058e03,
        2.05107837782607147e03,
        1.23033935479799725e03,
        2.15311535474403846e-8,
    ];
    const D: [f64; 8] = [
        1.57449261107098347e01,
        1.17693950891312499e02,
        5.37181101862009858e02,
        1.62138957456669019e03,
        3.29079923573345963e03,
        4.36261909014324716e03,
        3.43936767414372164e03,
        1.23033935480374942e03,
    ];
    const P: [f64; 6] = [
        3.05326634961232344e-1,
        3.60344899949804439e-1,
        1.25781726111229246e-1,
        1.60837851487422766e-2,
        6.58749161529837803e-4,
        1.63153871373020978e-2,
    ];
    const Q: [f64; 5] = [
        2.56852019228982242e00,
        1.87295284992346047e00,
        5.27905102951428412e-1,
        6.05183413124413191e-2,
        2.33520497626869185e-3,
    ];
    const THRESH: f64 = 0.46875;
    const XSMALL: f64 = 1.11e-16;
    const XBIG: f64 = 26.543;
    const SQRPI: f64 = 5.6418958354775628695e-1; // 1/sqrt(pi)

    if x.is_nan() {
        return f64::NAN;
    }
    let y = x.abs();
    let result = if y <= THRESH {
        let ysq = if y > XSMALL { y * y } else { 0.0 };
        let mut xnum = A[4] * ysq;
        let mut xden = ysq;
        for i in 0..3 {
            xnum = (xnum + A[i]) * ysq;
            xden = (xden + B[i]) * ysq;
        }
        // erf(x) here; erfc = 1 - erf for either sign
        return 1.0 - x * (xnum + A[3]) / (xden + B[3]);
    } else if y <= 4.0 {
        let mut xnum = C[8] * y;
        let mut xden = y;
        for i in 0..7 {
            xnum = (xnum + C[i]) * y;
            xden = (xden + D[i]) * y;
        }
        scaled_exp(y) * (xnum + C[7]) / (xden + D[7])
    } else if y >= XBIG {
        0.0
    } else {
        let ysq = 1.0 / (y * y);
        let mut xnum = P[5] * ysq;
        let mut xden = ysq;
        for i in 0..4 {
            xnum = (xnum + P[i]) * ysq;
            xden = (xden + Q[i]) * ysq;
        }
        let r = ysq * (xnum + P[4]) / (xden + Q[4]);
        scaled_exp(y) * (SQRPI - r) / y
    };
    if x < 0.0 { 2.0 - result } else { result }
}

/// `exp(-y²)` without the rounding error of squaring `y` (Cody's split at 1/16).
fn scaled_exp(y: f64) -> f64 {
    let ysq = (y * 16.0).trunc() / 16.0;
    let del = (y - ysq) * (y + ysq);
    (-ysq * ysq).exp() * (-del).exp()
}

/// P(Z > z) for a standard normal Z, accurate in the far upper tail.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z * FRAC_1_SQRT_2)
}

/// P(Z <= z) for a standard normal Z, accurate in the far lower tail.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z * FRAC_1_SQRT_2)
}

/// The standard normal quantile (inverse CDF), by M. J. Wichura's AS 241 (PPND16),
/// accurate to about 1e-16 relative; `-inf`/`+inf` at 0 and 1, NaN outside.
#[allow(clippy::excessive_precision)] // Wichura's coefficients, digit for digit as published
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 8] = [
        3.3871328727963666080e0,
        1.3314166789178437745e2,
        1.9715909503065514427e3,
        1.3731693765509461125e4,
        4.5921953931549871457e4,
        6.7265770927008700853e4,
        3.3430575583588128105e4,
        2.5090809287301226727e3,
    ];
    const B: [f64; 8] = [
        1.0,
        4.2313330701600911252e1,
        6.8718700749205790830e2,
        5.3941960214247511077e3,
        2.1213794301586595867e4,
        3.9307895800092710610e4,
        2.8729085735721942674e4,
        5.2264952788528545610e3,
    ];
    const C: [f64; 8] = [
        1.42343711074968357734e0,
        4.63033784615654529590e0,
        5.76949722146069140550e0,
        3.64784832476320460504e0,
        1.27045825245236838258e0,
        2.41780725177450611770e-1,
        2.27238449892691845833e-2,
        7.74545014278341407640e-4,
    ];
    const D: [f64; 8] = [
        1.0,
        2.05319162663775882187e0,
        1.67638483018380384940e0,
        6.89767334985100004550e-1,
        1.48103976427480074590e-1,
        1.51986665636164571966e-2,
        5.47593808499534494600e-4,
        1.05075007164441684324e-9,
    ];
    const E: [f64; 8] = [
        6.65790464350110377720e0,
        5.46378491116411436990e0,
        1.78482653991729133580e0,
        2.96560571828504891230e-1,
        2.65321895265761230930e-2,
        1.24266094738807843860e-3,
        2.71155556874348757815e-5,
        2.01033439929228813265e-7,
    ];
    const F: [f64; 8] = [
        1.0,
        5.99832206555887937690e-1,
        1.36929880922735805310e-1,
        1.48753612908506148525e-2,
        7.86869131145613259100e-4,
        1.84631831751005468180e-5,
        1.42151175831644588870e-7,
        2.04426310338993978564e-15,
    ];
    fn horner(c: &[f64; 8], x: f64) -> f64 {
        c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
    }
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q * horner(&A, r) / horner(&B, r);
    }
    let r = if q < 0.0 { p } else { 1.0 - p };
    let r = (-r.ln()).sqrt();
    let v = if r <= 5.0 {
        let r = r - 1.6;
        horner(&C, r) / horner(&D, r)
    } else {
        let r = r - 5.0;
        horner(&E, r) / horner(&F, r)
    };
    if q < 0.0 { -v } else { v }
}

// ---- Mann-Whitney U ----------------------------------------------------------------

/// The Mann-Whitney U test of `x` against `y`.
#[derive(Debug, Clone, PartialEq)]
pub struct MannWhitney {
    /// U of the first sample: pairs `(x_i, y_j)` with `x_i > y_j`, ties counting ½.
    pub u: f64,
    pub p_value: f64,
    /// The normal deviate behind an asymptotic p-value; `None` when exact (or
    /// undefined: every value equal).
    pub z: Option<f64>,
    /// The p-value comes from the exact null distribution.
    pub exact: bool,
    /// Some value occurs more than once across both samples.
    pub ties: bool,
    pub n_x: usize,
    pub n_y: usize,
}

/// The Hodges-Lehmann estimate of the shift `x − y`, with its rank-based interval.
#[derive(Debug, Clone, PartialEq)]
pub struct HodgesLehmann {
    /// The median of all `n·m` differences `x_i − y_j`.
    pub estimate: f64,
    /// The interval `[D(k), D(nm−k+1)]` over the sorted differences, with `k` from the
    /// null distribution of U; `-inf`/`+inf` when the samples are too small to bound it.
    pub lower: f64,
    pub upper: f64,
    /// The two-sided confidence level asked for, e.g. 0.95.
    pub confidence: f64,
    /// `k` came from the exact distribution (else from the normal approximation).
    pub exact: bool,
}

/// Both rank statistics from one sort: what the judge needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RankComparison {
    pub test: MannWhitney,
    pub shift: HodgesLehmann,
    /// The sample medians.
    pub median_x: f64,
    pub median_y: f64,
}

/// The Mann-Whitney U test, choosing the method automatically (`Method::Auto`).
pub fn mann_whitney_u(x: &[f64], y: &[f64], alt: Alternative) -> Result<MannWhitney, StatsError> {
    mann_whitney_u_with(x, y, alt, Method::Auto)
}

/// The Mann-Whitney U test with a chosen method; SciPy's `mannwhitneyu(x, y,
/// alternative, method, use_continuity=True)`.
pub fn mann_whitney_u_with(
    x: &[f64],
    y: &[f64],
    alt: Alternative,
    method: Method,
) -> Result<MannWhitney, StatsError> {
    let s = Sorted::new(x, y)?;
    let r = s.ranks();
    let exact = s.use_exact(r.ties, method)?;
    Ok(s.test(&r, alt, exact.as_deref()))
}

/// The Hodges-Lehmann shift `x − y` with its two-sided `confidence` interval.
pub fn hodges_lehmann(x: &[f64], y: &[f64], confidence: f64) -> Result<HodgesLehmann, StatsError> {
    let s = Sorted::new(x, y)?;
    let r = s.ranks();
    let exact = s.use_exact(r.ties, Method::Auto)?;
    Ok(s.shift(&r, confidence, exact.as_deref()))
}

/// The U test and the Hodges-Lehmann shift together, sorting once.
pub fn rank_compare(
    x: &[f64],
    y: &[f64],
    alt: Alternative,
    confidence: f64,
) -> Result<RankComparison, StatsError> {
    let s = Sorted::new(x, y)?;
    let r = s.ranks();
    let exact = s.use_exact(r.ties, Method::Auto)?;
    Ok(RankComparison {
        test: s.test(&r, alt, exact.as_deref()),
        shift: s.shift(&r, confidence, exact.as_deref()),
        median_x: median_sorted(&s.x),
        median_y: median_sorted(&s.y),
    })
}

/// The median of a sorted, non-empty slice.
fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        v[n / 2 - 1] + (v[n / 2] - v[n / 2 - 1]) / 2.0
    }
}

/// Both samples, validated and sorted ascending (`-0.0` folded into `0.0`).
struct Sorted {
    x: Vec<f64>,
    y: Vec<f64>,
}

/// What ranking the merged samples gives.
struct Ranks {
    u1: f64,
    /// Σ (t³ − t) over groups of tied values.
    tie_term: f64,
    ties: bool,
}

impl Sorted {
    fn new(x: &[f64], y: &[f64]) -> Result<Self, StatsError> {
        fn prep(v: &[f64], name: &'static str) -> Result<Vec<f64>, StatsError> {
            if v.is_empty() {
                return Err(StatsError::Empty(name));
            }
            if v.iter().any(|v| !v.is_finite()) {
                return Err(StatsError::NotFinite(name));
            }
            if v.iter().any(|v| v.abs() > MAX_MAGNITUDE) {
                return Err(StatsError::OutOfRange(name));
            }
            let mut v: Vec<f64> = v.iter().map(|v| v + 0.0).collect();
            v.sort_unstable_by(f64::total_cmp);
            Ok(v)
        }
        Ok(Self {
            x: prep(x, "first")?,
            y: prep(y, "second")?,
        })
    }

    fn nm(&self) -> f64 {
        self.x.len() as f64 * self.y.len() as f64
    }

    /// One merge over both sorted samples: U of `x` and the tie term.
    fn ranks(&self) -> Ranks {
        let (x, y) = (&self.x, &self.y);
        let (mut i, mut j) = (0, 0);
        let mut u1 = 0.0;
        let mut tie_term = 0.0;
        let mut ties = false;
        while i < x.len() || j < y.len() {
            let v = match (x.get(i), y.get(j)) {
                (Some(&a), Some(&b)) => a.min(b),
                (Some(&a), None) => a,
                (None, Some(&b)) => b,
                (None, None) => break,
            };
            let below = j as f64; // y values strictly below v
            let (i0, j0) = (i, j);
            while i < x.len() && x[i] == v {
                i += 1;
            }
            while j < y.len() && y[j] == v {
                j += 1;
            }
            let (cx, cy) = ((i - i0) as f64, (j - j0) as f64);
            u1 += cx * below + 0.5 * cx * cy;
            let t = cx + cy;
            if t > 1.0 {
                ties = true;
                tie_term += t * t * t - t;
            }
        }
        Ranks { u1, tie_term, ties }
    }

    /// The exact null distribution of U when `method` asks for it (or `Auto` allows it).
    fn use_exact(&self, ties: bool, method: Method) -> Result<Option<Vec<f64>>, StatsError> {
        let product = self.x.len() as u64 * self.y.len() as u64;
        match method {
            Method::Asymptotic => Ok(None),
            Method::Auto if ties || product > EXACT_MAX_PRODUCT => Ok(None),
            Method::Exact if ties => Err(StatsError::ExactWithTies),
            Method::Exact if product > EXACT_MAX_PRODUCT => Err(StatsError::ExactTooLarge(product)),
            Method::Auto | Method::Exact => Ok(Some(u_counts(self.x.len(), self.y.len()))),
        }
    }

    /// The tie-corrected standard deviation of U under the null.
    fn sigma(&self, r: &Ranks) -> f64 {
        let (n1, n2) = (self.x.len() as f64, self.y.len() as f64);
        let n = n1 + n2;
        let var = n1 * n2 / 12.0 * ((n + 1.0) - r.tie_term / (n * (n - 1.0)));
        if var > 0.0 { var.sqrt() } else { 0.0 }
    }

    fn test(&self, r: &Ranks, alt: Alternative, exact: Option<&[f64]>) -> MannWhitney {
        let nm = self.nm();
        let u2 = nm - r.u1;
        let (u, factor) = match alt {
            Alternative::Greater => (r.u1, 1.0),
            Alternative::Less => (u2, 1.0),
            Alternative::TwoSided => (r.u1.max(u2), 2.0),
        };
        let (p, z) = match exact {
            Some(counts) => (exact_sf(counts, u), None),
            None => {
                let sigma = self.sigma(r);
                if sigma > 0.0 {
                    let z = (u - nm / 2.0 - 0.5) / sigma;
                    (normal_sf(z), Some(z))
                } else {
                    // every value equal: no evidence either way
                    (1.0, None)
                }
            }
        };
        MannWhitney {
            u: r.u1,
            p_value: (p * factor).clamp(0.0, 1.0),
            z,
            exact: exact.is_some(),
            ties: r.ties,
            n_x: self.x.len(),
            n_y: self.y.len(),
        }
    }

    fn shift(&self, r: &Ranks, confidence: f64, exact: Option<&[f64]>) -> HodgesLehmann {
        let (x, y) = (&self.x, &self.y);
        let total = x.len() as u64 * y.len() as u64;
        let half = total / 2;
        let diffs = Differences::new(x, y);
        let estimate = if total % 2 == 1 {
            diffs.kth(half + 1)
        } else {
            let (lo, next) = diffs.kth_and_next(half);
            let hi = match next {
                Some(hi) => hi,
                None if count_le(x, y, lo) > half => lo,
                None => next_difference_above(x, y, lo),
            };
            lo + (hi - lo) / 2.0
        };
        let tail = (1.0 - confidence.clamp(0.0, 1.0)) / 2.0;
        let k = match exact {
            Some(counts) => exact_lower_rank(counts, tail),
            None => {
                let z = normal_quantile(1.0 - tail);
                let k = (total as f64 / 2.0 + 0.5 - z * self.sigma(r)).floor();
                if k >= 1.0 { k as u64 } else { 0 }
            }
        };
        let k = k.min(total.div_ceil(2));
        let (lower, upper) = if k == 0 {
            (f64::NEG_INFINITY, f64::INFINITY)
        } else {
            (diffs.kth(k), diffs.kth(total - k + 1))
        };
        HodgesLehmann {
            estimate,
            lower,
            upper,
            confidence,
            exact: exact.is_some(),
        }
    }
}

/// How many differences `x_i − y_j` (as computed in floating point) are `<= d`;
/// both slices sorted ascending. O(n + m), as a branch-free merge.
fn count_le(x: &[f64], y: &[f64], d: f64) -> u64 {
    let (n, m) = (x.len(), y.len());
    let (mut i, mut p) = (0, 0);
    let mut count = 0u64;
    // for x_i the differences fall as j grows: those <= d are the suffix j >= p_i, and
    // p_i never decreases with i. Each step either advances p or settles x_i.
    while i < n && p < m {
        let above = usize::from(x[i] - y[p] > d);
        count += ((1 - above) * (m - p)) as u64;
        p += above;
        i += 1 - above;
    }
    count
}

/// The smallest difference `x_i − y_j` strictly above `d` (`d` itself if none is).
fn next_difference_above(x: &[f64], y: &[f64], d: f64) -> f64 {
    let m = y.len();
    let mut p = 0;
    let mut best = f64::INFINITY;
    for &xi in x {
        while p < m && xi - y[p] > d {
            p += 1;
        }
        if p > 0 {
            best = best.min(xi - y[p - 1]);
        }
    }
    if best.is_finite() { best } else { d }
}

/// A key that orders every finite `f64` (and `-0.0` before `0.0`) like an integer.
fn order_key(v: f64) -> i64 {
    let b = v.to_bits() as i64;
    if b < 0 { b ^ i64::MAX } else { b }
}

fn from_order_key(k: i64) -> f64 {
    let b = if k < 0 { k ^ i64::MAX } else { k };
    f64::from_bits(b as u64)
}

/// The `k`-th smallest (1-based) of the `n·m` differences `x_i − y_j`.
#[cfg(test)]
fn kth_difference(x: &[f64], y: &[f64], k: u64) -> f64 {
    Differences::new(x, y).kth(k)
}

/// Order statistics of the `n·m` differences `x_i − y_j` (both slices sorted), in
/// O(n + m) memory: the differences are never materialised.
struct Differences<'a> {
    x: &'a [f64],
    y: &'a [f64],
    /// The sorted differences of up to 64 × 64 evenly spaced order statistics of each
    /// sample: a cheap map of where each quantile of the differences lies.
    sketch: Vec<f64>,
}

/// Elements per sample in the sketch.
const SKETCH: usize = 64;

impl<'a> Differences<'a> {
    fn new(x: &'a [f64], y: &'a [f64]) -> Self {
        fn spaced(v: &[f64]) -> Vec<f64> {
            if v.len() <= SKETCH {
                return v.to_vec();
            }
            (0..SKETCH)
                .map(|i| v[i * (v.len() - 1) / (SKETCH - 1)])
                .collect()
        }
        let (sx, sy) = (spaced(x), spaced(y));
        let mut sketch: Vec<f64> = sx
            .iter()
            .flat_map(|a| sy.iter().map(move |b| a - b))
            .collect();
        sketch.sort_unstable_by(f64::total_cmp);
        Self { x, y, sketch }
    }

    /// The sketch's guess at quantile `q`.
    fn guess(&self, q: f64) -> Option<f64> {
        let last = self.sketch.len().checked_sub(1)?;
        let i = (q.clamp(0.0, 1.0) * last as f64).round() as usize;
        self.sketch.get(i).copied()
    }

    /// The `k`-th smallest difference (1-based), exactly.
    ///
    /// A bracket `(a, b]` with `count_le(a) < k <= count_le(b)` starts from the sketch's
    /// guesses a few percent either side of `k`, then shrinks by interpolating on the counts
    /// (locally the count is a smooth CDF: a few steps suffice), falling back to
    /// bisection over the ordered bit patterns of `f64` when a step does not halve it.
    /// Once at most `n + m` differences remain inside, they are collected and the
    /// answer is selected among them. A value repeated beyond that (heavy ties) ends
    /// on the bisection, in at most ~64 more counts. Each count is O(n + m).
    fn kth(&self, k: u64) -> f64 {
        self.kth_and_next(k).0
    }

    /// The `k`-th smallest difference, and the `(k+1)`-th when the final selection
    /// happens to hold it (it usually does: the median of an even count needs both).
    fn kth_and_next(&self, k: u64) -> (f64, Option<f64>) {
        let (x, y) = (self.x, self.y);
        let (Some(&x0), Some(&xn), Some(&y0), Some(&ym)) =
            (x.first(), x.last(), y.first(), y.last())
        else {
            return (f64::NAN, None);
        };
        let total = x.len() as u64 * y.len() as u64;
        let limit = (x.len() + y.len()) as u64 + 64;
        // invariant: count_le(a) = ca < k <= cb = count_le(b)
        let min = x0 - ym;
        let mut a = from_order_key(order_key(min) - 1);
        if a == min {
            // min is +0.0 and a is -0.0, which compares equal: step below zero
            a = from_order_key(order_key(a) - 1);
        }
        let mut ca = 0u64;
        let mut b = xn - y0;
        let mut cb = total;
        if total > limit {
            // the sketch's quantiles are good to about 1/64: widen until k is bracketed
            let q = (k as f64 - 0.5) / total as f64;
            for (side, delta) in [(-1.0, 0.03), (1.0, 0.03), (-1.0, 0.1), (1.0, 0.1)] {
                let bracketed = if side < 0.0 { ca > 0 } else { cb < total };
                let Some(d) = self.guess(q + side * delta) else {
                    break;
                };
                if bracketed || !(d > a && d < b) {
                    continue;
                }
                let c = count_le(x, y, d);
                if c < k {
                    (a, ca) = (d, c);
                } else {
                    (b, cb) = (d, c);
                }
            }
        }
        let mut stalls = 0u32;
        let mut moved_a = false;
        let margin = limit / 4;
        for step in 0u32.. {
            if cb - ca <= limit {
                return select_between(x, y, a, b, k - ca);
            }
            let (ka, kb) = (order_key(a), order_key(b));
            if i128::from(kb) - i128::from(ka) <= 1 {
                return (b + 0.0, None);
            }
            let midpoint = {
                let v = a + (b - a) / 2.0;
                if v > a && v < b {
                    v
                } else {
                    from_order_key(((i128::from(ka) + i128::from(kb)) >> 1) as i64)
                }
            };
            let d = if stalls >= 2 && step % 2 == 1 {
                // a tie probe: is b itself the answer?
                from_order_key(kb - 1)
            } else if stalls >= 2 {
                midpoint
            } else {
                // aim just past k on the side that did not move last, so that two
                // steps close the bracket from both ends (plain regula falsi creeps)
                let target = if moved_a {
                    (k + margin).min(cb - 1)
                } else {
                    k.saturating_sub(margin).max(ca + 1)
                };
                let t = (target - ca) as f64 / (cb - ca) as f64;
                let d = a + t * (b - a);
                if d > a && d < b { d } else { midpoint }
            };
            let c = count_le(x, y, d);
            let before = cb - ca;
            moved_a = c < k;
            if moved_a {
                (a, ca) = (d, c);
            } else {
                (b, cb) = (d, c);
            }
            // interpolation that stops halving the bracket (twice running) gives way
            // to bisection, which always terminates
            if (cb - ca) > before / 2 {
                stalls += 1;
            } else {
                stalls = 0;
            }
        }
        (b, None)
    }
}

/// The `r`-th smallest (1-based) of the differences in `(a, b]`, and the `(r+1)`-th
/// when it lies there too.
fn select_between(x: &[f64], y: &[f64], a: f64, b: f64, r: u64) -> (f64, Option<f64>) {
    let m = y.len();
    let (mut pa, mut pb) = (0, 0);
    let mut inside = Vec::new();
    for &xi in x {
        // for this xi, the differences in (a, b] are j in pb..pa
        while pb < m && xi - y[pb] > b {
            pb += 1;
        }
        while pa < m && xi - y[pa] > a {
            pa += 1;
        }
        inside.extend(y[pb..pa].iter().map(|yj| xi - yj));
    }
    let Some(i) = (r as usize).checked_sub(1).filter(|&i| i < inside.len()) else {
        return (b + 0.0, None);
    };
    let (_, v, above) = inside.select_nth_unstable_by(i, f64::total_cmp);
    let next = above
        .iter()
        .copied()
        .min_by(f64::total_cmp)
        .map(|n| n + 0.0);
    (*v + 0.0, next)
}

/// How many of the C(n+m, n) orderings of `n` x's and `m` y's (no ties) give each
/// `U = u`, for `u` in `0..=n·m`.
///
/// The largest element is either an x (it beats all y's) or a y (it beats none):
/// `f(a, b; u) = f(a−1, b; u−b) + f(a, b−1; u)`, filled column by column in place.
/// Only additions of non-negative numbers: the tail sums keep full relative precision.
fn u_counts(n: usize, m: usize) -> Vec<f64> {
    let (a_max, b_max) = if n <= m { (n, m) } else { (m, n) };
    let size = a_max * b_max + 1;
    let mut f = vec![vec![0.0f64; size]; a_max + 1];
    for row in &mut f {
        row[0] = 1.0;
    }
    for b in 1..=b_max {
        for a in 1..=a_max {
            let (done, rest) = f.split_at_mut(a);
            let prev = &done[a - 1];
            let cur = &mut rest[0];
            let top = (a - 1) * b;
            for (c, p) in cur[b..=top + b].iter_mut().zip(&prev[..=top]) {
                *c += *p;
            }
        }
    }
    f.pop().unwrap_or_default()
}

/// P(U >= u) under the exact null distribution.
fn exact_sf(counts: &[f64], u: f64) -> f64 {
    let total: f64 = counts.iter().sum();
    let from = u.ceil().max(0.0) as usize;
    if from >= counts.len() {
        return 0.0;
    }
    // sum from the far tail inwards: small terms first
    let tail: f64 = counts[from..].iter().rev().sum();
    tail / total
}

/// The largest `k` with P(U <= k − 1) <= `tail`, i.e. the rank of the lower end of the
/// Hodges-Lehmann interval; 0 when even P(U = 0) exceeds `tail`.
fn exact_lower_rank(counts: &[f64], tail: f64) -> u64 {
    let total: f64 = counts.iter().sum();
    let mut cum = 0.0;
    let mut k = 0u64;
    for (q, c) in counts.iter().enumerate() {
        cum += c;
        if cum / total <= tail {
            k = q as u64 + 1;
        } else {
            break;
        }
    }
    k
}

// ---- counts: Fisher, pooled z, Newcombe --------------------------------------------

/// Fisher's exact test on `[[a, b], [c, d]]`; SciPy's `fisher_exact`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fisher {
    /// `a·d / (b·c)`: `inf` when `b·c = 0`, NaN when a row or column is empty.
    pub odds_ratio: f64,
    pub p_value: f64,
}

/// Fisher's exact test of a 2×2 table. `Greater` tests an odds ratio above 1 (the
/// first row has the larger share in the first column). An empty row or column gives
/// p = 1. The two-sided p sums every table at most as probable as the observed one.
pub fn fisher_exact(table: [[u64; 2]; 2], alt: Alternative) -> Fisher {
    let [[a, b], [c, d]] = table;
    // Beyond exact counting (f64 counts by ones up to 2^53), or with more tables than
    // are worth a weight each, the exact test claims nothing: p = 1, never NaN, and no
    // allocation that grows with the counts.
    let no_claim = Fisher {
        odds_ratio: f64::NAN,
        p_value: 1.0,
    };
    let Some(big_n) = a
        .checked_add(b)
        .and_then(|s| s.checked_add(c))
        .and_then(|s| s.checked_add(d))
        .filter(|n| *n <= MAX_EXACT_COUNT)
    else {
        return no_claim;
    };
    if fisher_support(table) > FISHER_MAX_SUPPORT {
        return no_claim;
    }
    let (af, bf, cf, df) = (a as f64, b as f64, c as f64, d as f64);
    if a + b == 0 || c + d == 0 || a + c == 0 || b + d == 0 {
        return Fisher {
            odds_ratio: f64::NAN,
            p_value: 1.0,
        };
    }
    let odds_ratio = if b > 0 && c > 0 {
        af * df / (bf * cf)
    } else {
        f64::INFINITY
    };
    // a ~ Hypergeometric(population N, K = a + b marked, n = a + c drawn)
    let k = a + b;
    let n = a + c;
    let lo = (n + k).saturating_sub(big_n);
    let hi = k.min(n);
    let w = hypergeometric_weights(big_n, k, n, lo, hi);
    let at = (a - lo) as usize;
    let total: f64 = w.iter().sum();
    let p = match alt {
        Alternative::Less => w[..=at].iter().sum::<f64>() / total,
        Alternative::Greater => w[at..].iter().rev().sum::<f64>() / total,
        Alternative::TwoSided => {
            let limit = w[at] * (1.0 + FISHER_RELATIVE_SLACK);
            w.iter().filter(|&&v| v <= limit).sum::<f64>() / total
        }
    };
    Fisher {
        odds_ratio,
        p_value: p.clamp(0.0, 1.0),
    }
}

/// Counts up to this are exact in an f64; the exact tests refuse to reason beyond.
pub const MAX_EXACT_COUNT: u64 = 1 << 53;
/// At most this many tables (hence weights) for Fisher's test; beyond, use the normal
/// approximation (which is then excellent).
pub const FISHER_MAX_SUPPORT: u64 = 1_000_000;

/// How many tables Fisher's test sums over for these margins (`u64::MAX` when the
/// counts overflow).
pub fn fisher_support(table: [[u64; 2]; 2]) -> u64 {
    let [[a, b], [c, d]] = table;
    let (Some(k), Some(n)) = (a.checked_add(b), a.checked_add(c)) else {
        return u64::MAX;
    };
    let Some(big_n) = k.checked_add(c).and_then(|s| s.checked_add(d)) else {
        return u64::MAX;
    };
    let lo = n.saturating_add(k).saturating_sub(big_n);
    k.min(n) - lo.min(k.min(n)) + 1
}

/// Unnormalised hypergeometric probabilities for `x` in `lo..=hi`, 1 at the mode,
/// by the ratio recurrence `P(x+1)/P(x) = (K−x)(n−x) / ((x+1)(N−K−n+x+1))`.
fn hypergeometric_weights(big_n: u64, k: u64, n: u64, lo: u64, hi: u64) -> Vec<f64> {
    let len = (hi - lo + 1) as usize;
    let mode = (((n + 1) as f64 * (k + 1) as f64) / (big_n + 2) as f64).floor() as u64;
    let mode = mode.clamp(lo, hi);
    let (kf, nf, bf) = (k as f64, n as f64, big_n as f64);
    let ratio = |x: f64| (kf - x) * (nf - x) / ((x + 1.0) * (bf - kf - nf + x + 1.0));
    let mut w = vec![0.0; len];
    let m = (mode - lo) as usize;
    w[m] = 1.0;
    for i in m + 1..len {
        let x = (lo as usize + i - 1) as f64;
        w[i] = w[i - 1] * ratio(x);
    }
    for i in (0..m).rev() {
        let x = (lo as usize + i) as f64;
        w[i] = w[i + 1] / ratio(x);
    }
    w
}

/// The pooled two-proportion z test of `x1/n1` against `x2/n2`.
#[derive(Debug, Clone, PartialEq)]
pub struct TwoProportion {
    /// `(p1 − p2) / sqrt(p(1−p)(1/n1 + 1/n2))` with the pooled `p`; 0 when that is 0.
    pub z: f64,
    pub p_value: f64,
}

/// The pooled two-proportion z test; `Greater` tests `p1 > p2`.
pub fn two_proportion_z(
    x1: u64,
    n1: u64,
    x2: u64,
    n2: u64,
    alt: Alternative,
) -> Result<TwoProportion, StatsError> {
    check_counts(x1, n1, x2, n2)?;
    let (x1, n1, x2, n2) = (x1 as f64, n1 as f64, x2 as f64, n2 as f64);
    let pooled = (x1 + x2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se.is_nan() || se <= 0.0 {
        return Ok(TwoProportion {
            z: 0.0,
            p_value: 1.0,
        });
    }
    let z = (x1 / n1 - x2 / n2) / se;
    let p = match alt {
        Alternative::Greater => normal_sf(z),
        Alternative::Less => normal_cdf(z),
        Alternative::TwoSided => 2.0 * normal_sf(z.abs()),
    };
    Ok(TwoProportion {
        z,
        p_value: p.clamp(0.0, 1.0),
    })
}

/// Newcombe's hybrid score interval (his method 10) for `p1 − p2`, from the Wilson
/// intervals of each proportion: good coverage even with zero counts, where the Wald
/// interval collapses to a point.
pub fn newcombe_interval(
    x1: u64,
    n1: u64,
    x2: u64,
    n2: u64,
    confidence: f64,
) -> Result<(f64, f64), StatsError> {
    check_counts(x1, n1, x2, n2)?;
    let z = normal_quantile(1.0 - (1.0 - confidence.clamp(0.0, 1.0)) / 2.0);
    let (l1, u1) = wilson(x1, n1, z);
    let (l2, u2) = wilson(x2, n2, z);
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let d = p1 - p2;
    let lower = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let upper = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    Ok((lower.max(-1.0), upper.min(1.0)))
}

/// The Wilson score interval of `x/n` at normal deviate `z`.
fn wilson(x: u64, n: u64, z: f64) -> (f64, f64) {
    let (x, n) = (x as f64, n as f64);
    let p = x / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn check_counts(x1: u64, n1: u64, x2: u64, n2: u64) -> Result<(), StatsError> {
    if n1 == 0 || n2 == 0 {
        return Err(StatsError::Counts(format!(
            "a proportion needs at least one trial, found {n1} and {n2}"
        )));
    }
    if x1 > n1 || x2 > n2 {
        return Err(StatsError::Counts(format!(
            "more successes than trials: {x1}/{n1}, {x2}/{n2}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_u(x: &[f64], y: &[f64]) -> f64 {
        let mut u = 0.0;
        for a in x {
            for b in y {
                if a > b {
                    u += 1.0;
                } else if a == b {
                    u += 0.5;
                }
            }
        }
        u
    }

    fn brute_diffs(x: &[f64], y: &[f64]) -> Vec<f64> {
        let mut d: Vec<f64> = x
            .iter()
            .flat_map(|a| y.iter().map(move |b| a - b))
            .collect();
        d.sort_unstable_by(f64::total_cmp);
        d
    }

    /// A small deterministic generator, so the tests need no crate and no seed file.
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn u_matches_the_pairwise_definition_with_ties() {
        let mut s = 7;
        for n in [1, 2, 5, 13] {
            for m in [1, 3, 8] {
                let x: Vec<f64> = (0..n).map(|_| (lcg(&mut s) * 4.0).floor()).collect();
                let y: Vec<f64> = (0..m).map(|_| (lcg(&mut s) * 4.0).floor()).collect();
                let t = mann_whitney_u(&x, &y, Alternative::TwoSided).expect("valid");
                assert_eq!(t.u, brute_u(&x, &y), "{x:?} {y:?}");
            }
        }
    }

    #[test]
    fn the_exact_distribution_sums_to_the_binomial_and_is_symmetric() {
        let c = u_counts(4, 6);
        assert_eq!(c.len(), 25);
        assert_eq!(c.iter().sum::<f64>(), 210.0); // C(10, 4)
        for u in 0..c.len() {
            assert_eq!(c[u], c[c.len() - 1 - u]);
        }
        assert_eq!(u_counts(6, 4), c);
        // complete separation of 3 vs 3: one ordering in C(6,3) = 20
        let t = mann_whitney_u(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0], Alternative::Greater)
            .expect("valid");
        assert!(t.exact);
        assert_eq!(t.p_value, 1.0 / 20.0);
    }

    #[test]
    fn hodges_lehmann_is_the_median_of_pairwise_differences() {
        let mut s = 11;
        for (n, m) in [(1, 1), (2, 2), (3, 4), (7, 5), (10, 10), (30, 17)] {
            let x: Vec<f64> = (0..n).map(|_| (lcg(&mut s) * 10.0).round()).collect();
            let y: Vec<f64> = (0..m).map(|_| lcg(&mut s) * 10.0).collect();
            let d = brute_diffs(&x, &y);
            let nm = d.len();
            let median = if nm % 2 == 1 {
                d[nm / 2]
            } else {
                d[nm / 2 - 1] + (d[nm / 2] - d[nm / 2 - 1]) / 2.0
            };
            let hl = hodges_lehmann(&x, &y, 0.95).expect("valid");
            assert_eq!(hl.estimate, median, "n={n} m={m}");
            for k in 1..=nm as u64 {
                let mut xs = x.clone();
                let mut ys = y.clone();
                xs.sort_unstable_by(f64::total_cmp);
                ys.sort_unstable_by(f64::total_cmp);
                assert_eq!(kth_difference(&xs, &ys, k), d[k as usize - 1]);
            }
            assert!(hl.lower <= hl.estimate && hl.estimate <= hl.upper);
        }
    }

    #[test]
    fn selection_is_exact_on_large_samples_with_and_without_ties() {
        // large enough that the bracket search (not just the final selection) runs
        let mut s = 5;
        let cases: Vec<(Vec<f64>, Vec<f64>)> = vec![
            (
                (0..300).map(|_| lcg(&mut s) * 50.0 + 3.0).collect(),
                (0..250).map(|_| lcg(&mut s) * 40.0).collect(),
            ),
            (
                // heavy ties: four distinct values, each difference repeated ~9,000 times
                (0..300).map(|_| (lcg(&mut s) * 4.0).floor()).collect(),
                (0..300).map(|_| (lcg(&mut s) * 4.0).floor()).collect(),
            ),
            (
                // skewed, far apart, with negative values
                (0..400).map(|_| -lcg(&mut s).ln() * 100.0).collect(),
                (0..200).map(|_| -1e3 - lcg(&mut s) * 1e-3).collect(),
            ),
        ];
        for (x, y) in cases {
            let d = brute_diffs(&x, &y);
            let mut xs = x.clone();
            let mut ys = y.clone();
            xs.sort_unstable_by(f64::total_cmp);
            ys.sort_unstable_by(f64::total_cmp);
            let diffs = Differences::new(&xs, &ys);
            let n = d.len() as u64;
            for k in [
                1,
                2,
                17,
                n / 40,
                n / 3,
                n / 2,
                n / 2 + 1,
                n - n / 40,
                n - 1,
                n,
            ] {
                assert_eq!(diffs.kth(k), d[k as usize - 1], "k={k} of {n}");
            }
            let hl = hodges_lehmann(&x, &y, 0.95).expect("valid");
            let median = d[d.len() / 2 - 1] + (d[d.len() / 2] - d[d.len() / 2 - 1]) / 2.0;
            assert_eq!(hl.estimate, median);
        }
    }

    #[test]
    fn the_shift_interval_uses_the_exact_critical_value() {
        // n = m = 10 at 95%: the lower critical value of U is 23 (tables: P(U <= 23) =
        // 0.0216, P(U <= 24) = 0.0262), so the interval is [D(24), D(77)].
        let x: Vec<f64> = (0..10).map(|i| i as f64 * 1.1 + 0.05).collect();
        let y: Vec<f64> = (0..10).map(|i| i as f64).collect();
        let hl = hodges_lehmann(&x, &y, 0.95).expect("valid");
        let d = brute_diffs(&x, &y);
        assert!(hl.exact);
        assert_eq!((hl.lower, hl.upper), (d[23], d[76]));
        // too few samples to bound anything at 95%: 2 vs 2 has P(U = 0) = 1/6
        let hl = hodges_lehmann(&[1.0, 2.0], &[3.0, 4.0], 0.95).expect("valid");
        assert_eq!((hl.lower, hl.upper), (f64::NEG_INFINITY, f64::INFINITY));
    }

    #[test]
    fn the_asymptotic_interval_covers_a_known_shift() {
        let mut s = 3;
        let y: Vec<f64> = (0..400).map(|_| lcg(&mut s)).collect();
        let x: Vec<f64> = (0..300).map(|_| lcg(&mut s) + 0.25).collect();
        let hl = hodges_lehmann(&x, &y, 0.95).expect("valid");
        assert!(!hl.exact);
        assert!(hl.lower < 0.25 && 0.25 < hl.upper, "{hl:?}");
        assert!(hl.upper - hl.lower < 0.1, "{hl:?}");
    }

    #[test]
    fn bad_samples_are_errors_not_panics() {
        let alt = Alternative::TwoSided;
        assert_eq!(
            mann_whitney_u(&[], &[1.0], alt),
            Err(StatsError::Empty("first"))
        );
        assert_eq!(
            mann_whitney_u(&[1.0], &[f64::NAN], alt),
            Err(StatsError::NotFinite("second"))
        );
        assert_eq!(
            mann_whitney_u_with(&[1.0, 2.0], &[2.0], alt, Method::Exact),
            Err(StatsError::ExactWithTies)
        );
        let big: Vec<f64> = (0..60).map(f64::from).collect();
        assert_eq!(
            mann_whitney_u_with(
                &big,
                &big.iter().map(|v| v + 0.5).collect::<Vec<_>>(),
                alt,
                Method::Exact
            ),
            Err(StatsError::ExactTooLarge(3600))
        );
        assert!(two_proportion_z(1, 0, 1, 1, alt).is_err());
        assert!(two_proportion_z(3, 2, 1, 1, alt).is_err());
    }

    #[test]
    fn every_value_equal_gives_no_evidence() {
        let t = mann_whitney_u(&[5.0; 30], &[5.0; 40], Alternative::Greater).expect("valid");
        assert_eq!(t.p_value, 1.0);
        let hl = hodges_lehmann(&[5.0; 30], &[5.0; 40], 0.95).expect("valid");
        assert_eq!((hl.estimate, hl.lower, hl.upper), (0.0, 0.0, 0.0));
    }

    #[test]
    fn the_normal_quantile_inverts_the_cdf() {
        for p in [
            1e-300,
            1e-15,
            1e-5,
            0.025,
            0.3,
            0.5,
            0.8,
            0.975,
            1.0 - 1e-12,
        ] {
            let z = normal_quantile(p);
            let back = normal_cdf(z);
            assert!(((back - p) / p).abs() < 1e-12, "p={p} z={z} back={back}");
        }
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert!(normal_quantile(1.5).is_nan());
    }

    #[test]
    fn newcombe_brackets_the_difference_even_with_zero_counts() {
        let (lo, hi) = newcombe_interval(0, 10_000, 0, 10_000, 0.95).expect("valid");
        assert!(lo < 0.0 && hi > 0.0 && hi < 5e-4, "{lo} {hi}");
        let (lo, hi) = newcombe_interval(97, 100, 10_000, 10_000, 0.95).expect("valid");
        assert!(lo < -0.03 && hi < -0.005, "{lo} {hi}");
    }
}
