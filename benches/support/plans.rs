//! Shared by the benchmarks: generated plans (half Kubernetes canaries with analysis
//! and windows, half local presets), their settings, and the peak RSS reading.

#![allow(dead_code)] // each benchmark uses a part

pub const SETTINGS: &str = "apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  local: { local: {} }
  prod-eu: { kubernetes: { context: prod-eu } }
metrics:
  prometheus: { prometheus: { url: http://127.0.0.1:9090 } }
";

pub fn plan(i: usize) -> String {
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

pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
