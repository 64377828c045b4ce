//! Benchmark: `rollgate validate` with policies over 10,000 generated plans.
//!
//! Prints the wall time of each run (reading the snapshot, schema, meaning and policy
//! for every plan), the median, and the process's peak resident memory.
//! Run: `cargo bench --bench validate` (add `-- N` for another plan count).

use std::path::Path;
use std::time::Instant;

use rollgate::gate::{self, Change, GateContext, PolicyEngine};

const SETTINGS: &str = "apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  local: { local: {} }
  prod-eu: { kubernetes: { context: prod-eu } }
metrics:
  prometheus: { prometheus: { url: http://127.0.0.1:9090 } }
";

fn plan(i: usize) -> String {
    let name = format!("svc-{i:05}");
    if i.is_multiple_of(2) {
        format!(
            "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: {name}, labels: {{ team: t{}, environment: production }} }}
spec:
  target: prod-eu
  workload:
    kubernetes: {{ namespace: ns-{}, deployment: {name}, route: {name} }}
  artifact: registry.example/{name}@sha256:{:064x}
  strategy:
    canary:
      steps:
        - setWeight: 5
        - analysis: {{ checks: [success-rate, latency], duration: 10m }}
        - setWeight: 25
        - pause: {{ duration: 15m }}
        - setWeight: 50
        - pause: {{}}
        - setWeight: 100
  checks:
    - name: success-rate
      source: prometheus
      query: sum(rate(http_requests_total{{app=\"{name}\",code!~\"5..\"}}[5m])) / sum(rate(http_requests_total{{app=\"{name}\"}}[5m]))
      judge: {{ min: 0.999 }}
    - name: latency
      source: prometheus
      query: histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{app=\"{name}\"}}[5m])))
      judge: {{ compare: baseline, direction: increase, maxRatio: 1.2 }}
  minSamples: 200
  windows: {{ allow: [\"* 9-16 * * MON-THU\"], timezone: Europe/Berlin }}
",
            i % 17,
            i % 13,
            i
        )
    } else {
        format!(
            "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: {name}, labels: {{ team: t{} }} }}
spec:
  target: local
  workload:
    local: {{ command: [srv, --port, \"{{{{port}}}}\"], listen: \"127.0.0.1:{}\" }}
  artifact: v{i}
  strategy:
    preset: {{ name: Linear10PercentEvery1Minute, checks: [ok] }}
  checks:
    - {{ name: ok, source: builtin, query: success-rate, judge: {{ min: 0.99 }} }}
",
            i % 17,
            20000 + i % 10000
        )
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

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
