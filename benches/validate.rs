//! Benchmark: `rollgate validate` with policies over 10,000 generated plans.
//!
//! Prints the wall time of each run (reading the snapshot, schema, meaning and policy
//! for every plan), the median, and the process's peak resident memory.
//! Run: `cargo bench --bench validate` (add `-- N` for another plan count).

use std::path::Path;
use std::time::Instant;

use rollgate::gate::{self, Change, GateContext, PolicyEngine};

#[path = "support/plans.rs"]
mod plans;
use plans::{SETTINGS, peak_rss_kib, plan};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // test runners list targets; a benchmark has no tests to list
    }
    // `cargo bench` passes `--bench`; under `cargo test` run a small smoke check only.
    let default_n = if args.iter().any(|a| a == "--bench") {
        10_000
    } else {
        200
    };
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default_n);
    let no_policy = std::env::args().any(|a| a == "--no-policy");
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("plans")).expect("plans dir");
    std::fs::write(root.join("rollgate.yaml"), SETTINGS).expect("settings");
    for i in 0..n {
        std::fs::write(root.join(format!("plans/svc-{i:05}.yaml")), plan(i)).expect("plan");
    }
    let rss_before = peak_rss_kib();
    let policies = rollgate::policy::PolicySet::load(Some(Path::new("/nonexistent")))
        .expect("built-in policies load");
    let mut times = Vec::new();
    for run in 0..5 {
        let start = Instant::now();
        let snap = rollgate::source::fs::read_dir(root).expect("read repo");
        let cx = GateContext {
            base: None,
            change: Change::default(),
            now: chrono::Utc::now(),
            only: None,
            namespaces: None,
        };
        let policies = rollgate::gate::Rego::new(policies.clone());
        let engine = (!no_policy).then_some(&policies as &dyn PolicyEngine);
        let report = gate::check(&snap, &cx, engine);
        let took = start.elapsed();
        assert_eq!(
            report.accepted.len(),
            n,
            "every generated plan is valid: {:?}",
            report.diagnostics.first()
        );
        println!(
            "run {run}: validated {n} plans (policies: {}) in {:.3} s",
            !no_policy,
            took.as_secs_f64()
        );
        times.push(took.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "validate {n} plans (policies: {}): median {:.3} s (min {:.3} s); peak RSS {} MiB (generator and files before: {} MiB)",
        !no_policy,
        times[times.len() / 2],
        times[0],
        peak_rss_kib() / 1024,
        rss_before / 1024
    );
}
