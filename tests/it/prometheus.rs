//! Analysis against a real Prometheus server (the Debian package, installed by the
//! README's test command) scraping rollgate's built-in proxy every second.
//!
//! Given the daemon as a subprocess, a bare remote, the demo service behind the proxy
//! and real HTTP load: a candidate with a higher error rate is rolled back; an equally
//! good candidate passes; stopping Prometheus mid-analysis holds the rollout (no
//! promotion) and it resumes when Prometheus returns. The `MetricsSource` contract runs
//! against the same server, over series its recording rules hold.
//!
//! Without a `prometheus` binary every test fails, saying how to get one (never a silent
//! pass): `bash .ci/test` installs Debian's package.

use crate::support;

use support::free_port;
use support::local::Daemon;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollgate::demo::load::Generator;
use rollgate::model::status::Status;

/// The Prometheus server binary: Debian's, or one on PATH; without one, the test fails.
fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "these tests need a Prometheus server: run the README test command (bash .ci/test), \
                 which installs Debian's prometheus package (no prometheus in /usr/bin, \
                 /usr/local/bin or on PATH)"
            )
        })
}

/// A Prometheus server on a free loopback port, scraping `target` every second.
struct Prom {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Prom {
    fn start(dir: &Path, port: u16, target: u16) -> Self {
        Self::with_config(
            dir,
            port,
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: rollgate-proxy\n    metrics_path: /.rollgate/metrics\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
    }

    /// A server on `port` with `config` as its `prometheus.yml` (in `dir`).
    fn with_config(dir: &Path, port: u16, config: &str) -> Self {
        std::fs::create_dir_all(dir).expect("prom dir");
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let mut me = Self {
            child: None,
            port,
            dir: dir.to_path_buf(),
        };
        me.resume();
        me
    }

    fn resume(&mut self) {
        let bin = prometheus_binary();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                self.dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("log"))
                    .expect("log"),
            ))
            .spawn()
            .expect("prometheus starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if rollgate::targets::local::http_status(
                SocketAddr::from(([127, 0, 0, 1], self.port)),
                "/-/ready",
                Duration::from_millis(500),
            ) == Ok(200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus did not become ready");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prom {
    fn drop(&mut self) {
        self.stop();
    }
}

const QUERY: &str = "sum(rate(rollgate_proxy_requests_total{version=\\\"{{version}}\\\",code!=\\\"5xx\\\"}[5s])) / sum(rate(rollgate_proxy_requests_total{version=\\\"{{version}}\\\"}[5s]))";

/// The requests behind the value: the check passes only with enough of them.
const SAMPLES: &str =
    "sum(increase(rollgate_proxy_requests_total{version=\\\"{{version}}\\\"}[{{window}}]))";

/// The plan `web`: the demo service (v3 fails 20%) behind the proxy on `proxy`.
fn plan_head(proxy: u16, artifact: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: web, labels: {{ team: test }} }}
spec:
  target: local
  workload:
    local:
      command: [\"{exe}\", demo-service, --port, \"{{{{port}}}}\", --version, \"{{{{version}}}}\", --fail-version, v3, --fail-rate, \"0.2\", --work-ms, \"1\"]
      listen: \"127.0.0.1:{proxy}\"
  artifact: {artifact}
",
        exe = env!("CARGO_BIN_EXE_rollgate")
    )
}

fn plan(proxy: u16, artifact: &str, analysis: &str) -> String {
    format!(
        "{head}  strategy:
    canary:
      steps: [ {{ setWeight: 25 }}, {{ analysis: {{ checks: [success-rate], duration: {analysis} }} }}, {{ setWeight: 100 }} ]
  checks:
    - name: success-rate
      source: prometheus
      query: \"{QUERY}\"
      interval: 1s
      samplesQuery: \"{SAMPLES}\"
      consecutiveErrorLimit: 2
      judge: {{ min: 0.95 }}
  minSamples: 20
",
        head = plan_head(proxy, artifact)
    )
}

/// Fields drop in order, once `World::drop` has stopped the load: the daemon (so it
/// cannot start another data plane), the data plane and its workloads, Prometheus, and
/// only then the folders they use.
struct World {
    _daemon: Daemon,
    _planes: support::DataPlanes,
    prom: Prom,
    load: Option<Generator>,
    remote: support::Remote,
    proxy: u16,
    state: PathBuf,
}

impl World {
    /// Given v1 rolled out (its first rollout has no analysis to pass: traffic is all v1).
    fn new(analysis: &str) -> Self {
        let proxy = free_port();
        let prom_port = free_port();
        let seed = tempfile::tempdir().expect("seed");
        std::fs::create_dir_all(seed.path().join("plans")).expect("plans");
        std::fs::write(
            seed.path().join("rollgate.yaml"),
            format!("apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  local: {{ local: {{}} }}\nmetrics:\n  prometheus: {{ prometheus: {{ url: \"http://127.0.0.1:{prom_port}\", timeout: 2s }} }}\n"),
        )
        .expect("settings");
        std::fs::write(
            seed.path().join("plans/web.yaml"),
            plan(proxy, "v1", analysis),
        )
        .expect("plan");
        // v1 is already the stable version (as if rolled out earlier).
        let mut stable = Status::pending("web", "v1", "0000000000000000000000000000000000000000");
        stable.phase = rollgate::model::status::Phase::Succeeded;
        stable.stable = Some("v1".to_owned());
        stable.weight = 100;
        std::fs::create_dir_all(seed.path().join("status")).expect("status dir");
        std::fs::write(
            seed.path().join("status/web.yaml"),
            stable.to_yaml().expect("status yaml"),
        )
        .expect("status");
        let remote = support::Remote::seeded_from(seed.path());
        let state = remote.work_dir("state");
        std::fs::create_dir_all(&state).expect("state");
        let prom = Prom::start(&remote.work_dir("prometheus"), prom_port, proxy);
        let planes = support::DataPlanes(state.clone());
        let daemon = Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["run", "--repo"])
            .arg(&remote.bare)
            .args(["--interval", "200ms", "--state-dir"])
            .arg(&state)
            // The daemon's measurements (debug) tell a test when an analysis is under way.
            .env("RUST_LOG", "info,rollgate::daemon=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(state.join("daemon.log")).expect("log"),
            ))
            .spawn()
            .map(|c| Daemon(Some(c)))
            .expect("daemon");
        let load = Some(Generator::start(
            SocketAddr::from(([127, 0, 0, 1], proxy)),
            200,
        ));
        let me = Self {
            _daemon: daemon,
            _planes: planes,
            prom,
            load,
            remote,
            proxy,
            state,
        };
        // Let Prometheus collect a few scrapes of v1 serving before anything changes.
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = rollgate::metrics::prometheus::Prometheus::new(
            &format!("http://127.0.0.1:{}", me.prom.port),
            Duration::from_secs(2),
            None,
        )
        .expect("client");
        while client
            .instant("sum(rate(rollgate_proxy_requests_total{version=\"v1\"}[5s])) > 0")
            .ok()
            .flatten()
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "prometheus never saw v1's traffic"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        me
    }

    fn status(&self) -> Option<Status> {
        let out = Command::new("git")
            .args(["show", "main:status/web.yaml"])
            .current_dir(&self.remote.bare)
            .output()
            .ok()?;
        Status::from_yaml(&String::from_utf8_lossy(&out.stdout)).ok()
    }

    fn wait(&self, what: &str, timeout: Duration, f: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status().filter(|s| f(s)) {
                return s;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.state.join("daemon.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let prom_log =
                    std::fs::read_to_string(self.prom.dir.join("log")).unwrap_or_default();
                eprintln!(
                    "prometheus log:\n{}",
                    prom_log
                        .lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                let up = rollgate::targets::local::http_get(
                    SocketAddr::from(([127, 0, 0, 1], self.prom.port)),
                    "/api/v1/query?query=rollgate_proxy_requests_total",
                    Duration::from_secs(2),
                );
                eprintln!("series: {}", up.map(|u| u.0).unwrap_or(0));
                let raw = Command::new("git")
                    .args(["show", "main:status/web.yaml"])
                    .current_dir(&self.remote.bare)
                    .output()
                    .expect("git");
                let raw = String::from_utf8_lossy(&raw.stdout).into_owned();
                eprintln!(
                    "status file parse: {:?}\n{raw}",
                    Status::from_yaml(&raw).err()
                );
                let p = rollgate::metrics::prometheus::Prometheus::new(
                    &format!("http://127.0.0.1:{}", self.prom.port),
                    Duration::from_secs(2),
                    None,
                )
                .expect("client");
                let q = QUERY.replace("\\\"", "\"").replace("{{version}}", "v1");
                eprintln!("query {q} -> {:?}", p.instant(&q));
                panic!(
                    "timed out waiting for {what}; status {:?}\n{}",
                    self.status()
                        .map(|s| (s.phase, s.step, s.candidate, s.hold)),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon has measured a check and got a value (its debug log says so).
    fn measured_a_value(&self) -> bool {
        std::fs::read_to_string(self.state.join("daemon.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(" measured ") && l.contains("value=Some("))
    }

    fn commit(&self, artifact: &str, analysis: &str) {
        let proxy = self.proxy;
        self.remote.human_commit(
            "plans/web.yaml",
            |_| plan(proxy, artifact, analysis),
            &format!("web {artifact}"),
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(l) = self.load.take() {
            l.stop();
        }
    }
}

/// For `hold`, the status read again and again must keep satisfying `still` (a period
/// in which nothing may happen: the passing time is what is tested, each read checked).
fn stays(world: &World, what: &str, hold: Duration, still: impl Fn(&Status) -> bool) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        let s = world.status().expect("status");
        assert!(still(&s), "{what}: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_candidate_with_more_errors_is_rolled_back_on_prometheus_evidence() {
    let world = World::new("8s");
    // When v3, which fails 20% of requests, is committed
    world.commit("v3", "8s");
    // Then Prometheus's numbers fail the check and the rollout is rolled back and reverted
    let s = world.wait("v3 rolled back", Duration::from_secs(60), |s| {
        s.phase.as_str() == "RolledBack" && s.candidate == "v3"
    });
    let failed = s
        .analysis
        .iter()
        .find_map(|c| c.last.as_ref())
        .expect("evidence");
    assert_eq!(failed.verdict.as_str(), "fail", "{failed:?}");
    assert!(
        failed.evidence.value.is_some_and(|v| v < 0.95),
        "{failed:?}"
    );
    let plan = support::git(&world.remote.bare, &["show", "main:plans/web.yaml"]);
    assert!(plan.contains("artifact: v1"), "not reverted:\n{plan}");
}

#[test]
fn an_equally_good_candidate_passes_on_prometheus_evidence() {
    let world = World::new("6s");
    world.commit("v2", "6s");
    let s = world.wait("v2 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v2"
    });
    assert_eq!(s.stable.as_deref(), Some("v2"));
    let log = support::git(
        &world.remote.bare,
        &[
            "log",
            "main",
            "--format=%(trailers:key=Rollgate-Verdict,valueonly)",
        ],
    );
    assert!(
        log.contains("pass success-rate"),
        "no passing verdict recorded:\n{log}"
    );
}

#[test]
fn prometheus_down_mid_analysis_holds_and_the_rollout_resumes_when_it_returns() {
    let mut world = World::new("20s");
    world.commit("v2", "20s");
    // Mid-analysis: the daemon has measured Prometheus's numbers at least once (the
    // status is written per step, not per measurement: the daemon's log says it).
    world.wait("v2 measured once", Duration::from_secs(30), |s| {
        s.candidate == "v2"
            && s.step == 1
            && s.phase.as_str() == "Progressing"
            && world.measured_a_value()
    });
    // When Prometheus stops mid-analysis
    world.prom.stop();
    // Then the rollout holds for want of evidence, and is not promoted
    let held = world.wait("held for metrics", Duration::from_secs(30), |s| {
        s.phase.as_str() == "Held"
    });
    assert_eq!(
        held.hold.as_ref().map(|h| h.kind.as_str()),
        Some("metrics"),
        "{held:?}"
    );
    stays(
        &world,
        "held for 3 s, never promoted without evidence",
        Duration::from_secs(3),
        |s| {
            (s.phase.as_str(), s.candidate.as_str()) == ("Held", "v2")
                && s.stable.as_deref() != Some("v2")
        },
    );
    // When Prometheus returns, Then the analysis restarts and the rollout finishes
    world.prom.resume();
    let s = world.wait("v2 stable", Duration::from_secs(90), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v2"
    });
    assert_eq!(s.stable.as_deref(), Some("v2"));
}

/// A plan without checks whose only gate is a 99.9% SLO over the proxy's requests.
fn slo_plan(proxy: u16, artifact: &str) -> String {
    let good = "sum(increase(rollgate_proxy_requests_total{code!=\\\"5xx\\\"}[{{window}}]))";
    let total = "sum(increase(rollgate_proxy_requests_total[{{window}}]))";
    format!(
        "{head}  strategy:
    canary:
      steps: [ {{ setWeight: 25 }}, {{ pause: {{ duration: 4s }} }}, {{ setWeight: 100 }} ]
  slo: {{ source: prometheus, objective: 0.999, window: 30d, good: \"{good}\", total: \"{total}\" }}
",
        head = plan_head(proxy, artifact)
    )
}

#[test]
fn a_burning_error_budget_holds_the_rollout_on_prometheus_numbers() {
    // Given v1 stable and a plan whose only gate is a 99.9% SLO
    let world = World::new("6s");
    let proxy = world.proxy;
    // When v3, which fails 20% of its requests, takes 25% of the traffic
    world.remote.human_commit(
        "plans/web.yaml",
        |_| slo_plan(proxy, "v3"),
        "web v3 behind an SLO",
    );
    // Then the budget burns at about 50x over every window and the next step is not entered
    let held = world.wait("held by the SLO", Duration::from_secs(60), |s| {
        s.candidate == "v3" && s.hold.as_ref().is_some_and(|h| h.kind.as_str() == "slo")
    });
    let hold = held.hold.as_ref().expect("a hold");
    assert!(hold.reason.contains("burning"), "{}", hold.reason);
    assert!(held.budget_remaining.is_some(), "{held:?}");
    stays(
        &world,
        "for 3 s, neither promoted nor past 25% while the budget burns",
        Duration::from_secs(3),
        |s| s.stable.as_deref() != Some("v3") && s.weight <= 25,
    );
}

/// The shared `MetricsSource` contract over a real Prometheus, whose recording rules hold
/// known series: v2 served 100 requests, 4 of them errors; no series names v3. The dead
/// source points at a loopback port nobody listens on.
#[test]
fn prometheus_passes_the_metrics_source_contract() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n  - name: contract\n    interval: 1s\n    rules:\n      - record: contract_requests\n        expr: vector(100)\n        labels: { version: v2 }\n      - record: contract_errors\n        expr: vector(4)\n        labels: { version: v2 }\n",
    )
    .expect("rules");
    let port = free_port();
    let data_from = chrono::Utc::now();
    let _prom = Prom::with_config(
        dir.path(),
        port,
        &format!(
            "global:\n  evaluation_interval: 1s\nrule_files: ['{}']\n",
            dir.path().join("rules.yml").display()
        ),
    );
    let client = |port: u16| {
        rollgate::metrics::prometheus::Prometheus::new(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_secs(2),
            None,
        )
        .expect("client")
    };
    let mut live = client(port);
    // The rules' first evaluation: both series exist.
    let deadline = Instant::now() + Duration::from_secs(30);
    while live
        .instant("contract_requests + on(version) contract_errors")
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "prometheus did not evaluate its recording rules within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut dead = client(free_port());
    let question = |version| {
        rollgate::metrics::contract::Question {
        check: rollgate::model::plan::Check {
            name: "success-rate".to_owned(),
            source: "prometheus".to_owned(),
            query: "1 - sum(contract_errors{version=\"{{version}}\"}) / sum(contract_requests{version=\"{{version}}\"})".to_owned(),
            judge: rollgate::model::plan::Judge::Threshold {
                min: Some(0.95),
                max: None,
            },
            interval: Duration::from_secs(1),
            failure_limit: 1,
            consecutive_error_limit: 2,
            samples_query: Some("sum(contract_requests{version=\"{{version}}\"})".to_owned()),
        },
        ctx: rollgate::metrics::QueryContext {
            plan: "web",
            version,
            baseline: Some("v1"),
            fresh_baseline: false,
            window: Duration::from_secs(60),
            workload: None,
        },
    }
    };
    rollgate::metrics::contract::run(
        &mut live,
        &mut dead,
        &rollgate::metrics::contract::Cases {
            unreachable: question("v2"),
            empty: question("v3"),
            counted: question("v2"),
            value: 0.96,
            tolerance: 1e-9,
            samples: 100,
            data_from,
        },
    );
}
