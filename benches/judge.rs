//! Benchmark: the baseline judge on large samples.
//!
//! Times `judge_continuous` on two samples of 10,000 latencies each (sort, rank,
//! U test, Hodges-Lehmann shift and interval by selection; the goal is ≤ 5 ms), and
//! `judge_ratio` on counts (the pooled z test and Fisher's exact test), then prints the
//! median, fastest and slowest of many runs.
//! Run: `cargo bench --bench judge` (add `-- N` for another sample size). Under
//! `cargo test` (no `--bench`) it runs a tiny smoke check only.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rollgate::engine::compare::{judge_continuous, judge_ratio};
use rollgate::model::plan::{Direction, Judge};

/// Deterministic latency-like samples: a skewed body around `centre` with a tail.
fn latencies(seed: u64, n: usize, centre: f64) -> Vec<f64> {
    let mut s = seed;
    let mut uniform = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| centre * (1.0 - uniform().ln() * 0.3) * (0.9 + 0.2 * uniform()))
        .collect()
}

fn time(runs: usize, mut f: impl FnMut() -> &'static str) -> (Vec<Duration>, &'static str) {
    let mut times = Vec::with_capacity(runs);
    let mut verdict = "";
    for _ in 0..runs {
        let start = Instant::now();
        verdict = std::hint::black_box(f());
        times.push(start.elapsed());
    }
    times.sort_unstable();
    (times, verdict)
}

fn report(name: &str, times: &[Duration], verdict: &str) {
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return;
    };
    println!(
        "{name:<46} median {:>10.3?}  min {:>10.3?}  max {:>10.3?}  ({} runs, {verdict})",
        times[times.len() / 2],
        first,
        last,
        times.len(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // test runners list targets; a benchmark has no tests to list
    }
    let bench = args.iter().any(|a| a == "--bench");
    let n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if bench { 10_000 } else { 200 });
    let runs = if bench { 200 } else { 3 };
    let at = Utc
        .with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
        .single()
        .expect("valid time");
    let judge = Judge::Baseline {
        direction: Direction::Increase,
        max_ratio: Some(1.2),
        max_increase: None,
        alpha: 0.05,
    };
    let success = Judge::Baseline {
        direction: Direction::Decrease,
        max_ratio: Some(1.5),
        max_increase: Some(0.001),
        alpha: 0.05,
    };

    let baseline = latencies(1, n, 100.0);
    let same = latencies(2, n, 100.0);
    let slower = latencies(3, n, 130.0);
    for (label, canary) in [("equal", &same), ("30% slower", &slower)] {
        let (times, verdict) = time(runs, || {
            judge_continuous("latency", canary, &baseline, &judge, 200, at)
                .verdict
                .as_str()
        });
        report(
            &format!("judge_continuous {n}+{n} ({label})"),
            &times,
            verdict,
        );
    }
    let small_c = latencies(4, 40, 100.0);
    let small_b = latencies(5, 40, 100.0);
    let (times, verdict) = time(runs, || {
        judge_continuous("latency", &small_c, &small_b, &judge, 20, at)
            .verdict
            .as_str()
    });
    report("judge_continuous 40+40 (exact U)", &times, verdict);

    let (times, verdict) = time(runs * 10, || {
        judge_ratio(
            "success-rate",
            999_000,
            1_000_000,
            999_100,
            1_000_000,
            &success,
            200,
            at,
        )
        .verdict
        .as_str()
    });
    report("judge_ratio 1e6 vs 1e6 (pooled z)", &times, verdict);
    let (times, verdict) = time(runs * 10, || {
        judge_ratio("success-rate", 97, 100, 10_000, 10_000, &success, 100, at)
            .verdict
            .as_str()
    });
    report(
        "judge_ratio 3/100 vs 0/10000 failures (Fisher)",
        &times,
        verdict,
    );
}
