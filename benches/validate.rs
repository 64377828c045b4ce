//! Benchmark: `rollgate validate` with policies over 10,000 generated plans.
//!
//! Prints the wall time of each run (reading the snapshot, schema, meaning and policy
//! for every plan), the median, and the process's peak resident memory; first on the
//! machine as it is ("as found"), then with one `yes >/dev/null` per core running beside
//! it ("loaded"), so the figure under contention is measured the same way every time.
//! Run: `cargo bench --bench validate` (add `-- N` for another plan count, `--no-policy`
//! for schema and meaning only, `--no-load` to skip the loaded runs, `--threads T` to
//! pin the gate's worker count).

use std::num::NonZeroUsize;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use rollgate::gate::{self, Change, GateCache, GateContext, PolicyEngine};

#[path = "support/plans.rs"]
mod plans;
use plans::{SETTINGS, peak_rss_kib, plan};

/// One `yes >/dev/null` per core, killed and reaped when dropped (also on a panic).
struct Load(Vec<Child>);

impl Load {
    fn start(n: usize) -> Load {
        Load(
            (0..n)
                .map(|_| {
                    Command::new("yes")
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("yes starts")
                })
                .collect(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // test runners list targets; a benchmark has no tests to list
    }
    // `cargo bench` passes `--bench`; under `cargo test` run a small smoke check only.
    let full = args.iter().any(|a| a == "--bench");
    let default_n = if full { 10_000 } else { 200 };
    let threads_at = args.iter().position(|a| a == "--threads").map(|i| i + 1);
    let threads: Option<NonZeroUsize> = threads_at
        .and_then(|i| args.get(i))
        .and_then(|t| t.parse().ok());
    let n: usize = args
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, _)| Some(*i) != threads_at)
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(default_n);
    let no_policy = args.iter().any(|a| a == "--no-policy");
    let loaded = full && !args.iter().any(|a| a == "--no-load");
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
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let mut phases = vec![("as found", 0)];
    if loaded {
        phases.push(("loaded", cores));
    }
    for (phase, hogs) in phases {
        let load_before = uptime();
        let _load = Load::start(hogs);
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
            let report = gate::check_on(&snap, &cx, engine, &mut GateCache::default(), threads);
            let took = start.elapsed();
            assert_eq!(
                report.accepted.len(),
                n,
                "every generated plan is valid: {:?}",
                report.diagnostics.first()
            );
            println!(
                "{phase} run {run}: validated {n} plans (policies: {}) in {:.3} s",
                !no_policy,
                took.as_secs_f64()
            );
            times.push(took.as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "validate {n} plans (policies: {}, {phase}: {hogs} × `yes` beside it, load average before {load_before}): median {:.3} s (min {:.3} s, max {:.3} s)",
            !no_policy,
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
        );
    }
    println!(
        "peak RSS {} MiB (generator and files before: {} MiB)",
        peak_rss_kib() / 1024,
        rss_before / 1024
    );
}
