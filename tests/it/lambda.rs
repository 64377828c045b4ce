//! The Lambda target and the CloudWatch source against moto in server mode.
//!
//! `bash .ci/test` (the README's test command) installs `moto[server]`, starts it on a
//! loopback port and exports `ROLLGATE_MOTO_ENDPOINT`; without it each test starts its
//! own `moto_server` from PATH, and without that it fails saying so (never a silent
//! skip). Every test makes its own function (a unique name), so tests share one server.
//!
//! What moto lacks, and how the tests cover it (`lambda/relay.rs`): it never changes nor
//! checks an alias's `RevisionId` (a shim in front enforces Lambda's rule), it does not
//! speak the Smithy RPC v2 CBOR protocol the CloudWatch SDK uses (a relay translates to
//! CloudWatch's JSON protocol, which moto serves), and it has no percentile statistics
//! (a `duration-p99` check is an error against it; the rest is unit-tested).

#[path = "lambda/moto.rs"]
mod moto;
#[path = "lambda/relay.rs"]
mod relay;
use crate::support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use aws_sdk_lambda::config::Credentials;
use chrono::{DateTime, Utc};
use rollgate::daemon::Reconciler;
use rollgate::engine::TargetHealth;
use rollgate::metrics::cloudwatch::Cloudwatch;
use rollgate::metrics::{MetricsSource, QueryContext};
use rollgate::model::Plan;
use rollgate::model::diagnostics::{Code, Pos};
use rollgate::model::plan::{Check, Judge};
use rollgate::model::settings;
use rollgate::model::status::{Phase, Status};
use rollgate::model::validate::{parse_plan, parse_settings};
use rollgate::source::git::GitSource;
use rollgate::targets::lambda::{AliasState, AwsAccess, LambdaTarget, Timing};
use rollgate::targets::{Desired, Target, contract};

use moto::{Fixture, REGION};
use relay::RevisionShim;
use support::Remote;

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");

/// A canary plan for `function` on the target `aws` (whose settings say where it is).
fn plan_yaml(function: &str, artifact: &str, steps: &[&str]) -> String {
    let steps: String = steps.iter().map(|s| format!("        - {s}\n")).collect();
    format!(
        "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: pay, labels: {{ team: payments }} }}
spec:
  target: aws
  workload:
    lambda: {{ function: {function}, alias: live, region: {REGION} }}
  artifact: \"{artifact}\"
  strategy:
    canary:
      steps:
{steps}  checks:
    - name: error-rate
      source: cloudwatch
      query: error-rate
      interval: 20s
      judge: {{ max: 0.01 }}
  minSamples: 100
  rollback: {{ onFailure: revert, rollbackWindow: 24h }}
"
    )
}

fn plan(function: &str) -> Plan {
    rollgate::model::validate::parse_plan(
        "plans/pay.yaml",
        &plan_yaml(function, "2", &["setWeight: 100"]),
        None,
    )
    .expect("plan parses")
    .plan
}

fn desired(stable: &str, candidate: Option<&str>, weight: u8) -> Desired {
    Desired {
        stable: Some(stable.to_owned()),
        candidate: candidate.map(str::to_owned),
        weight,
        ..Default::default()
    }
}

#[test]
fn lambda_passes_the_target_contract() {
    let fx = Fixture::new("contract");
    let mut t = fx.target();
    contract::run(
        &mut t,
        &plan(&fx.function),
        Some("1"),
        "2",
        "3",
        3,
        Duration::from_millis(50),
    );
    // v2 promoted, v3 rolled back: the alias is on 2 with no routing config.
    assert_eq!(fx.alias(), AliasState::at("2"));
}

#[test]
fn each_step_writes_the_alias_routing_config() {
    // Given live → 1
    let fx = Fixture::new("steps");
    let mut t = fx.target();
    let p = plan(&fx.function);

    // When the candidate starts, the alias is not repointed and has no routing config
    t.start_candidate(&p, "2").expect("start");
    assert_eq!(fx.alias(), AliasState::at("1"));

    // Then each weight is AdditionalVersionWeights {candidate: w/100}
    for w in [10u8, 25, 50] {
        t.set_weight(&p, w).expect("weight");
        assert_eq!(
            fx.alias(),
            AliasState::at("1").with("2", f64::from(w) / 100.0)
        );
        assert_eq!(
            t.health(&p, &desired("1", Some("2"), w)),
            TargetHealth::Healthy
        );
    }
    // And 100% points the alias at the candidate, the stable kept at 0%
    t.set_weight(&p, 100).expect("weight 100");
    assert_eq!(fx.alias(), AliasState::at("2").with("1", 0.0));
    assert_eq!(
        t.health(&p, &desired("1", Some("2"), 100)),
        TargetHealth::Healthy
    );
    // And a restarted daemon resumes without moving traffic
    let mut again = fx.target();
    again.resume(&p, Some("1"), "2", 100).expect("resume");
    assert_eq!(fx.alias(), AliasState::at("2").with("1", 0.0));
    // And promotion clears the routing config
    again.promote(&p, "2").expect("promote");
    assert_eq!(fx.alias(), AliasState::at("2"));
    assert_eq!(
        again.health(&p, &desired("2", None, 0)),
        TargetHealth::Healthy
    );
    // And health sees a candidate at the wrong weight as still converging
    assert_eq!(
        again.health(&p, &desired("1", Some("2"), 10)),
        TargetHealth::Progressing
    );
}

#[test]
fn a_missing_version_or_alias_is_refused_before_anything_is_written() {
    let fx = Fixture::new("missing");
    let mut t = fx.target();
    let p = plan(&fx.function);
    let err = t.start_candidate(&p, "9").expect_err("no version 9");
    assert!(
        err.message.contains("version 9") && err.message.contains("does not exist"),
        "{err}"
    );
    assert_eq!(
        t.health(&p, &desired("1", Some("9"), 0)),
        TargetHealth::Unhealthy {
            reason: format!("version 9 of function {} does not exist", fx.function)
        }
    );
    assert_eq!(fx.alias(), AliasState::at("1"));

    // An alias that does not exist is not created at the start of a rollout ...
    let mut p2 = p.clone();
    if let rollgate::model::plan::Workload::Lambda(w) = &mut p2.workload {
        w.alias = "canary-less".to_owned();
    }
    let err = t.start_candidate(&p2, "2").expect_err("no alias");
    assert!(err.message.contains("create-alias"), "{err}");
    // ... but a rollback, which names where all traffic goes, makes it.
    t.rollback(&p2, Some("1")).expect("rollback");
    let out = fx
        .rt
        .block_on(
            fx.lambda
                .get_alias()
                .function_name(&fx.function)
                .name("canary-less")
                .send(),
        )
        .expect("alias made");
    assert_eq!(out.function_version(), Some("1"));
}

#[test]
fn an_unreachable_endpoint_holds_the_rollout() {
    let fx = Fixture::new("unreachable");
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let mut t = fx.target_via(&closed).with_timing(Timing {
        call_timeout: Duration::from_secs(5),
        max_attempts: 2,
    });
    let p = plan(&fx.function);
    assert!(t.start_candidate(&p, "2").is_err());
    let h = t.health(&p, &desired("1", Some("2"), 10));
    assert!(matches!(h, TargetHealth::Unreachable { .. }), "{h:?}");
}

#[test]
fn a_stale_revision_id_is_read_again_and_no_update_is_lost() {
    // Given live → 1, reached through a shim that enforces RevisionId
    let fx = Fixture::new("revision");
    let shim = RevisionShim::start(fx.endpoint());
    let mut t = fx.target_via(&shim.endpoint);
    let p = plan(&fx.function);
    t.start_candidate(&p, "2").expect("start");

    // When someone repoints the alias at 3 (a hotfix) between our read and our write
    shim.race(serde_json::json!({ "FunctionVersion": "3" }), 1);
    t.set_weight(&p, 10).expect("set_weight converges");

    // Then our first write was refused as stale, we read again, and the second went
    // through: their hotfix is kept, with our weight on top
    assert_eq!(fx.alias(), AliasState::at("3").with("2", 0.1));
    let updates = shim.updates();
    assert_eq!(
        updates.iter().map(|(_, stale)| *stale).collect::<Vec<_>>(),
        [true, false],
        "{updates:?}"
    );
    // And every write we sent was guarded by the revision it was computed from
    assert!(
        updates.iter().all(|(body, _)| body["RevisionId"]
            .as_str()
            .is_some_and(|r| r.starts_with("rev-"))),
        "{updates:?}"
    );
    assert_eq!(updates[0].0["FunctionVersion"], "1");
    assert_eq!(updates[1].0["FunctionVersion"], "3");
    // And health reports the drift from the stable version the rollout started from
    assert_eq!(
        t.health(&p, &desired("1", Some("2"), 10)),
        TargetHealth::Progressing
    );
}

#[test]
fn an_alias_that_keeps_changing_fails_the_step_after_bounded_attempts() {
    let fx = Fixture::new("contended");
    let shim = RevisionShim::start(fx.endpoint());
    let mut t = fx.target_via(&shim.endpoint).with_timing(Timing {
        call_timeout: Duration::from_secs(20),
        max_attempts: 3,
    });
    let p = plan(&fx.function);
    t.start_candidate(&p, "2").expect("start");
    shim.race(serde_json::json!({ "Description": "busy" }), 100);
    let err = t.set_weight(&p, 25).expect_err("gives up");
    assert!(
        err.message.contains("kept changing") && err.message.contains("3 attempts"),
        "{err}"
    );
    assert_eq!(shim.updates().len(), 3);
    // Nothing of ours was written.
    assert_eq!(fx.alias(), AliasState::at("1"));
}

// ---------------------------------------------------------------------------------
// CloudWatch.

fn check(query: &str, judge: Judge) -> Check {
    Check {
        name: query.to_owned(),
        source: "cloudwatch".to_owned(),
        query: query.to_owned(),
        judge,
        interval: Duration::from_secs(30),
        failure_limit: 0,
        consecutive_error_limit: 4,
        samples_query: None,
    }
}

fn threshold() -> Judge {
    Judge::Threshold {
        min: None,
        max: None,
    }
}

/// The shared `MetricsSource` contract over CloudWatch on moto: version 2 given 1000
/// invocations and 5 errors, version 3 none; the dead source's endpoint is a loopback
/// port nobody listens on.
#[test]
fn cloudwatch_passes_the_metrics_source_contract() {
    let fx = Fixture::new("cw-contract");
    let data_from = Utc::now() - chrono::Duration::seconds(10);
    fx.publish_metrics("2", 1000.0, 5.0, &[]);
    let mut live = fx.cloudwatch_source();
    let mut dead = Cloudwatch::new(
        rollgate::targets::lambda::AwsAccess {
            region: REGION.to_owned(),
            endpoint: Some(format!("http://127.0.0.1:{}", support::free_port())),
            profile: None,
        },
        Duration::from_secs(5),
    )
    .expect("source")
    .with_credentials(moto::creds());
    let p = plan(&fx.function);
    let question = |version| rollgate::metrics::contract::Question {
        check: check("success-rate", threshold()),
        ctx: QueryContext {
            plan: "pay",
            version,
            baseline: Some("1"),
            fresh_baseline: false,
            window: Duration::from_secs(45),
            workload: Some(&p.workload),
        },
    };
    rollgate::metrics::contract::run(
        &mut live,
        &mut dead,
        &rollgate::metrics::contract::Cases {
            unreachable: question("2"),
            // A published version nobody invoked.
            empty: question("3"),
            counted: question("2"),
            value: 0.995,
            tolerance: 1e-12,
            samples: 1000,
            data_from,
        },
    );
}

#[test]
fn cloudwatch_measures_each_version_by_its_executed_version_dimension() {
    let fx = Fixture::new("cloudwatch");
    fx.publish_metrics("2", 1000.0, 30.0, &[120.0, 80.0, 300.0]);
    fx.publish_metrics("1", 9000.0, 9.0, &[100.0]);
    let mut cw = fx.cloudwatch_source();
    let p = plan(&fx.function);
    let ctx = |version| QueryContext {
        plan: "pay",
        version,
        baseline: Some("1"),
        fresh_baseline: false,
        window: Duration::from_secs(45),
        workload: Some(&p.workload),
    };
    let m = |cw: &mut Cloudwatch, q: &str, v| cw.measure(&check(q, threshold()), &ctx(v));

    let close = |x: Option<f64>, y: f64| x.is_some_and(|x| (x - y).abs() < 1e-12);
    let sr = m(&mut cw, "success-rate", "2").expect("success-rate");
    assert!(close(sr.value, 0.97) && sr.samples == 1000, "{sr:?}");
    let er = m(&mut cw, "error-rate", "2").expect("error-rate");
    assert!(close(er.value, 0.03) && er.samples == 1000, "{er:?}");
    assert_eq!(m(&mut cw, "errors", "2").expect("errors").value, Some(30.0));
    assert_eq!(
        m(&mut cw, "invocations", "1").expect("invocations").value,
        Some(9000.0)
    );
    assert_eq!(
        m(&mut cw, "throttles", "2").expect("throttles").value,
        Some(0.0)
    );
    assert!(close(
        m(&mut cw, "error-rate", "1").expect("stable").value,
        0.001
    ));
    // A version nobody invoked has no evidence, never a pass.
    let none = m(&mut cw, "success-rate", "3").expect("no data is not an error");
    assert_eq!((none.value, none.samples), (None, 0));
    // moto has no percentile statistics: an error (counted as such), never a value.
    assert!(m(&mut cw, "duration-p99", "2").is_err());

    // compare: baseline gets both versions' counts for a proportion test.
    let c = check(
        "error-rate",
        Judge::Baseline {
            direction: rollgate::model::plan::Direction::Increase,
            max_ratio: None,
            max_increase: None,
            alpha: 0.05,
        },
    );
    assert_eq!(
        cw.compare(&c, &ctx("2")),
        Ok(rollgate::engine::Sample::Counts {
            canary_good: 30,
            canary_total: 1000,
            baseline_good: 9,
            baseline_total: 9000
        })
    );
    // And without the plan's lambda workload there is nothing to ask.
    let bare = QueryContext {
        workload: None,
        ..ctx("2")
    };
    assert!(
        cw.measure(&check("error-rate", threshold()), &bare)
            .is_err()
    );
}

// ---------------------------------------------------------------------------------
// Through the daemon: a real Git remote, the real target and source on moto.

struct Daemon {
    remote: Remote,
    rec: Reconciler,
    now: DateTime<Utc>,
}

impl Daemon {
    fn new(fx: &Fixture, artifact: &str) -> Self {
        let settings = format!(
            "apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  aws: {{ lambda: {{ endpoint: \"{}\" }} }}
metrics:
  cloudwatch:
    cloudwatch: {{ region: {REGION}, endpoint: \"{}\" }}
",
            fx.endpoint(),
            fx.relay.endpoint
        );
        let plan = plan_yaml(
            &fx.function,
            artifact,
            &[
                "setWeight: 10",
                "analysis: { checks: [error-rate], duration: 60s }",
                "setWeight: 50",
                "setWeight: 100",
            ],
        );
        let remote = Remote::with_files(&[
            ("rollgate.yaml".to_owned(), settings),
            ("plans/pay.yaml".to_owned(), plan),
        ]);
        let src = GitSource::open(
            remote.bare.to_str().expect("utf8"),
            &remote.work_dir("daemon"),
            "main",
        )
        .expect("open the remote");
        let mut targets: BTreeMap<String, Box<dyn Target>> = BTreeMap::new();
        targets.insert("aws".to_owned(), Box::new(fx.target()));
        let mut sources: BTreeMap<String, Box<dyn MetricsSource>> = BTreeMap::new();
        sources.insert("cloudwatch".to_owned(), Box::new(fx.cloudwatch_source()));
        Self {
            remote,
            rec: Reconciler::new(src, None, targets, sources),
            now: Utc::now(),
        }
    }

    /// Tick 10 synthetic seconds apart until `done` holds for the plan's status.
    fn run_until(&mut self, max: usize, done: impl Fn(&Status) -> bool) {
        for _ in 0..max {
            self.rec.tick(self.now).expect("tick");
            if self.remote.status("pay").is_some_and(|s| done(&s)) {
                return;
            }
            self.now += chrono::Duration::seconds(10);
        }
        panic!(
            "pay did not get there in {max} passes; status: {:?}\nhistory:\n{}",
            self.remote.status("pay"),
            self.remote.log("%s")
        );
    }

    fn change_artifact(&self, to: &str) -> String {
        self.remote.human_commit(
            "plans/pay.yaml",
            |text| {
                text.lines()
                    .map(|l| {
                        if l.starts_with("  artifact: ") {
                            format!("  artifact: \"{to}\"")
                        } else {
                            l.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n"
            },
            &format!("pay: version {to}"),
        )
    }
}

fn is(phase: Phase, candidate: &str) -> impl Fn(&Status) -> bool {
    let candidate = candidate.to_owned();
    move |s| s.phase == phase && s.candidate == candidate
}

#[test]
fn a_canary_on_good_cloudwatch_numbers_promotes_the_new_version() {
    // Given live → 1 with a plan at version 1, rolled out, and healthy numbers for both
    let fx = Fixture::new("canary");
    fx.publish_metrics("1", 5000.0, 2.0, &[]);
    let mut d = Daemon::new(&fx, "1");
    d.run_until(40, is(Phase::Succeeded, "1"));
    assert_eq!(fx.alias(), AliasState::at("1"));

    // When the human pins version 2, whose invocations are healthy
    fx.publish_metrics("2", 1000.0, 1.0, &[]);
    let change = d.change_artifact("2");
    d.run_until(40, is(Phase::Succeeded, "2"));

    // Then the alias points at 2 with no routing config
    assert_eq!(fx.alias(), AliasState::at("2"));
    // And the analysis passed on the candidate's own error ratio (1 of 1000)
    let commits = support::rollout::commits_of(&d.remote.bare);
    let i = commits
        .iter()
        .position(|c| c.sha == change)
        .expect("change");
    let verdicts: Vec<&str> = commits[i + 1..]
        .iter()
        .flat_map(|c| c.trailers_named("Rollgate-Verdict"))
        .collect();
    assert!(
        verdicts.iter().any(|v| v.starts_with("pass error-rate")),
        "{verdicts:?}"
    );
    let weights: Vec<&str> = commits[i + 1..]
        .iter()
        .filter_map(|c| c.trailer("Rollgate-Weight"))
        .collect();
    assert!(
        weights.contains(&"10") && weights.contains(&"50"),
        "{weights:?}"
    );
    assert!(
        commits[i + 1..]
            .iter()
            .all(|c| c.trailer("Rollgate-Rollback-Of").is_none())
    );
}

#[test]
fn a_failing_error_ratio_rolls_back_and_reverts_the_change() {
    // Given live → 1 rolled out at version 1
    let fx = Fixture::new("rollback");
    fx.publish_metrics("1", 5000.0, 2.0, &[]);
    let mut d = Daemon::new(&fx, "1");
    d.run_until(40, is(Phase::Succeeded, "1"));

    // When version 2 fails 25% of its invocations
    fx.publish_metrics("2", 1000.0, 250.0, &[]);
    let change = d.change_artifact("2");
    d.run_until(40, is(Phase::RolledBack, "2"));

    // Then all traffic is back on 1 and the routing config is cleared
    assert_eq!(fx.alias(), AliasState::at("1"));
    // And rollgate pushed a revert of the change with the evidence
    let commits = support::rollout::commits_of(&d.remote.bare);
    let revert = commits
        .iter()
        .find(|c| c.trailer("Rollgate-Rollback-Of") == Some(change.as_str()))
        .expect("a revert commit");
    assert!(
        revert
            .trailers_named("Rollgate-Verdict")
            .iter()
            .any(|v| v.starts_with("fail error-rate")),
        "{revert:?}"
    );
    assert!(d.remote.file("plans/pay.yaml").contains("artifact: \"1\""));
}

// ---------------------------------------------------------------------------------
// Secrets.

const KEY_ID: &str = "AKIAROLLGATEKEYID0042";
const SECRET: &str = "rollgate-secret-access-key-DO-NOT-PRINT";
const TOKEN: &str = "rollgate-session-token-DO-NOT-PRINT";

fn assert_no_secret(what: &str, text: &str) {
    for s in [SECRET, TOKEN, KEY_ID] {
        assert!(
            !text.contains(s),
            "{what} shows a credential ({s}):\n{text}"
        );
    }
}

#[test]
fn credentials_are_never_printed() {
    let fx = Fixture::new("secrets");
    let secret = Credentials::new(KEY_ID, SECRET, Some(TOKEN.to_owned()), None, "test");

    // Errors and Debug output of the target and the source, with credentials in use
    let target = |endpoint: &str| {
        LambdaTarget::new(Some(endpoint.to_owned()), None)
            .expect("target")
            .with_credentials(secret.clone())
    };
    let mut t = target(fx.endpoint());
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let mut down = target(&closed);
    let p = plan(&fx.function);
    let ghost = plan("no-such-function");
    let mut seen = Vec::new();
    t.start_candidate(&p, "2").expect("start");
    let mut fail = |t: &mut LambdaTarget, plan: &Plan, v: &str| {
        seen.push(t.start_candidate(plan, v).expect_err("fails").message);
        seen.push(format!("{:?}", t.health(plan, &desired("1", Some(v), 10))));
    };
    fail(&mut t, &ghost, "2");
    fail(&mut down, &p, "2");
    fail(&mut t, &p, "9");
    seen.push(format!("{t:?}"));
    let mut cw = Cloudwatch::new(
        AwsAccess {
            region: REGION.to_owned(),
            endpoint: Some(closed.clone()),
            profile: None,
        },
        Duration::from_secs(5),
    )
    .expect("source")
    .with_credentials(secret);
    let ctx = QueryContext {
        plan: "pay",
        version: "2",
        baseline: Some("1"),
        fresh_baseline: false,
        window: Duration::from_secs(60),
        workload: Some(&p.workload),
    };
    seen.push(
        cw.measure(&check("error-rate", threshold()), &ctx)
            .expect_err("unreachable"),
    );
    seen.push(format!("{cw:?}"));
    assert_no_secret("errors and Debug output", &seen.join("\n"));

    // The daemon's log, with credentials from the environment (the default chain)
    let settings = format!(
        "apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  aws: {{ lambda: {{ endpoint: \"{}\" }} }}
  down: {{ lambda: {{ endpoint: \"{closed}\" }} }}
metrics:
  cloudwatch:
    cloudwatch: {{ region: {REGION}, endpoint: \"{}\" }}
",
        fx.endpoint(),
        fx.relay.endpoint
    );
    let remote = Remote::with_files(&[
        ("rollgate.yaml".to_owned(), settings),
        (
            "plans/pay.yaml".to_owned(),
            // Its steps walked on its first rollout, so the first one moves the alias.
            plan_yaml(&fx.function, "2", &["setWeight: 20", "pause: {}"])
                .replace("  strategy:\n", "  firstRollout: steps\n  strategy:\n"),
        ),
        (
            "plans/ghost.yaml".to_owned(),
            plan_yaml(
                "no-such-function",
                "2",
                &["setWeight: 10", "setWeight: 100"],
            )
            .replace("name: pay", "name: ghost"),
        ),
        (
            "plans/down.yaml".to_owned(),
            // On the target `down`, whose settings point at a closed port.
            plan_yaml(&fx.function, "2", &["setWeight: 10", "setWeight: 100"])
                .replace("name: pay", "name: down")
                .replace("target: aws", "target: down"),
        ),
    ]);
    let (code, log) = run_once(&remote, "state");
    // (The trace log is long: a failure shows its lines above debug.)
    let said: String = log
        .lines()
        .filter(|l| !l.contains(" TRACE ") && !l.contains(" DEBUG "))
        .collect::<Vec<_>>()
        .join("\n");
    // (two plans could not be reconciled: exit 1)
    assert_eq!(code, Some(1), "{said}");
    // The daemon did reach AWS with those credentials: the good plan moved the alias,
    // and the failures were logged.
    assert_eq!(fx.alias(), AliasState::at("1").with("2", 0.2), "{said}");
    assert!(log.contains("no-such-function"), "{said}");
    assert_no_secret("the daemon's log", &log);
}

/// `rollgate run --once` on `remote`, with credentials in the environment (the default
/// chain, a session token included) and trace logging: its exit code and its output.
/// `state` names a fresh state folder.
fn run_once(remote: &Remote, state: &str) -> (Option<i32>, String) {
    let state = remote.work_dir(state);
    let out = Command::new(BIN)
        .args(["run", "--once", "--state-dir"])
        .arg(&state)
        .arg("--repo")
        .arg(&remote.bare)
        .env("RUST_LOG", "trace")
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_SESSION_TOKEN", TOKEN)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", state.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", state.join("no-credentials"))
        .env_remove("AWS_PROFILE")
        .output()
        .expect("rollgate run");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), log)
}

// ---------------------------------------------------------------------------------
// Where signed requests go, and as whom: the target's settings, never a plan (#16).

/// Settings with the target `aws` and a CloudWatch source, each with these fields.
fn settings_yaml(lambda: &str, cloudwatch: &str) -> String {
    let cloudwatch = match cloudwatch {
        "" => String::new(),
        more => format!(", {more}"),
    };
    format!(
        "apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  aws:
    lambda: {{ {lambda} }}
metrics:
  cloudwatch:
    cloudwatch: {{ region: {REGION}{cloudwatch} }}
"
    )
}

/// `plan_yaml` with `extra` fields in its lambda workload.
fn with_workload_fields(plan: &str, extra: &str) -> String {
    let region = format!("region: {REGION} }}");
    assert!(plan.contains(&region), "{plan}");
    plan.replace(&region, &format!("region: {REGION}, {extra} }}"))
}

/// The 1-based line and column where `needle` first appears in `text`.
fn place_of(text: &str, needle: &str) -> Pos {
    let (line, l) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` in:\n{text}"));
    let col = l.find(needle).expect("on that line") + 1;
    Pos {
        line: u32::try_from(line + 1).expect("short"),
        col: u32::try_from(col).expect("short"),
    }
}

#[test]
fn regression_a_plan_cannot_point_signed_aws_requests_at_another_host() {
    // Given a host that is not the target's, listening
    let elsewhere = TcpListener::bind("127.0.0.1:0").expect("listen");
    elsewhere.set_nonblocking(true).expect("non-blocking");
    let url = format!("http://{}", elsewhere.local_addr().expect("address"));
    // And a plan naming it, and a profile, in its lambda workload (as plans could before)
    let fx = Fixture::new("elsewhere");
    let good = plan_yaml(&fx.function, "2", &["setWeight: 20", "pause: {}"])
        .replace("  strategy:\n", "  firstRollout: steps\n  strategy:\n");
    let bad = with_workload_fields(&good, &format!("endpoint: \"{url}\", profile: attacker"));
    let settings = settings_yaml(
        &format!("endpoint: \"{}\"", fx.endpoint()),
        &format!("endpoint: \"{}\"", fx.relay.endpoint),
    );

    // When it is validated
    let parsed = parse_settings("rollgate.yaml", &settings).expect("settings");
    let diags = parse_plan("plans/pay.yaml", &bad, Some(&parsed)).expect_err("refused");

    // Then each field is an error at its own line and column, saying where it lives now
    for (key, why) in [
        ("endpoint", "cannot point signed AWS requests elsewhere"),
        ("profile", "cannot choose whose credentials sign"),
    ] {
        let d = diags
            .iter()
            .find(|d| d.message.starts_with(&format!("`{key}`")))
            .unwrap_or_else(|| panic!("no diagnostic for {key}: {diags:#?}"));
        assert_eq!(d.code, Code::UnknownField, "{d:?}");
        assert_eq!(d.file, "plans/pay.yaml");
        assert_eq!(d.pos, Some(place_of(&bad, &format!("{key}:"))), "{d:?}");
        assert!(
            d.message
                .contains(&format!("rollgate.yaml (`targets.aws.lambda.{key}`)"))
                && d.message.contains(why),
            "{}",
            d.message
        );
    }
    assert_eq!(diags.len(), 2, "{diags:#?}");

    let remote = Remote::with_files(&[
        ("rollgate.yaml".to_owned(), settings),
        ("plans/pay.yaml".to_owned(), bad.clone()),
    ]);
    // And `rollgate validate` prints them with the file, line and column
    let out = Command::new(BIN)
        .args(["validate", "--no-policy"])
        .arg(&remote.human)
        .env_remove("RUST_LOG")
        .output()
        .expect("rollgate validate");
    let printed = String::from_utf8_lossy(&out.stdout);
    let at = place_of(&bad, "endpoint:");
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(&format!(
            "plans/pay.yaml:{}:{}: error[unknown-field]: `endpoint` is set on the lambda target in rollgate.yaml",
            at.line, at.col
        )),
        "{printed}"
    );

    // When the daemon, holding credentials, meets that plan on its branch
    let (_, log) = run_once(&remote, "state");
    // Then it reports the plan as refused
    assert!(
        log.contains("error[unknown-field]: `endpoint` is set on the lambda target"),
        "{log}"
    );
    // And nothing reached that host, and the alias did not move
    assert!(
        matches!(elsewhere.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a request went to the plan's endpoint:\n{log}"
    );
    assert_eq!(fx.alias(), AliasState::at("1"), "{log}");
    assert_no_secret("the daemon's log", &log);

    // And once the plan names neither, the target's endpoint (moto) is where it goes
    remote.human_commit("plans/pay.yaml", |_| good, "pay: endpoint is the target's");
    let (code, log) = run_once(&remote, "state-2");
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(fx.alias(), AliasState::at("1").with("2", 0.2), "{log}");
    assert!(elsewhere.accept().is_err(), "{log}");
}

#[test]
fn regression_a_lambda_endpoint_over_plain_http_must_be_loopback() {
    let port = support::free_port();
    let settings = |endpoint: &str| settings_yaml(&format!("endpoint: \"{endpoint}\""), "");
    // Given a lambda target whose endpoint would carry signed requests over plain http
    // off the host (or hides its host behind user info, or a name that only starts
    // like a loopback address)
    for endpoint in [
        "http://evil.example".to_owned(),
        format!("http://evil.example:{port}/"),
        format!("http://127.0.0.1:{port}@evil.example"),
        "http://127.0.0.1.evil.example".to_owned(),
        "http://localhost.evil.example".to_owned(),
        "http://[::ffff:10.0.0.1]:4566".to_owned(),
        "ftp://127.0.0.1".to_owned(),
    ] {
        let text = settings(&endpoint);
        // When the settings are validated
        let d = parse_settings("rollgate.yaml", &text).expect_err(&endpoint);
        // Then they are refused at the endpoint's line and column
        assert_eq!(d.len(), 1, "{endpoint}: {d:#?}");
        assert_eq!(d[0].code, Code::InvalidValue, "{d:?}");
        assert_eq!(
            d[0].pos,
            Some(place_of(&text, &format!("\"{endpoint}"))),
            "{d:?}"
        );
        assert!(d[0].message.contains(&endpoint), "{}", d[0].message);
        // And the target refuses it too, whoever builds it
        assert!(
            LambdaTarget::new(Some(endpoint.clone()), None).is_err(),
            "{endpoint}"
        );
    }
    assert!(
        parse_settings("rollgate.yaml", &settings("http://evil.example")).expect_err("plain")[0]
            .message
            .contains("over plain http to `evil.example`; use https")
    );
    // And https anywhere, or plain http to loopback (an emulator), is accepted
    for endpoint in [
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.9:{port}/"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
        "https://lambda.eu-west-1.amazonaws.com".to_owned(),
        "https://vpce-0123-abcd.lambda.eu-west-1.vpce.amazonaws.com:443/".to_owned(),
    ] {
        let parsed = parse_settings("rollgate.yaml", &settings(&endpoint))
            .unwrap_or_else(|d| panic!("{endpoint}: {d:#?}"));
        assert_eq!(
            parsed.targets["aws"],
            settings::Target::Lambda {
                endpoint: Some(endpoint.clone()),
                profile: None
            }
        );
        assert!(LambdaTarget::new(Some(endpoint.clone()), None).is_ok());
    }
    // And a profile is the target's too
    let parsed =
        parse_settings("rollgate.yaml", &settings_yaml("profile: deploy", "")).expect("a profile");
    assert_eq!(
        parsed.targets["aws"],
        settings::Target::Lambda {
            endpoint: None,
            profile: Some("deploy".to_owned())
        }
    );
}

#[test]
fn regression_a_cloudwatch_endpoint_over_plain_http_must_be_loopback() {
    let port = support::free_port();
    let settings = |endpoint: &str| settings_yaml("", &format!("endpoint: \"{endpoint}\""));
    let access = |endpoint: &str| AwsAccess {
        region: REGION.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        profile: None,
    };
    // Given a CloudWatch source whose endpoint is plain http off the host
    for endpoint in [
        format!("http://monitoring.evil.example:{port}"),
        format!("http://localhost:{port}@evil.example/"),
    ] {
        let text = settings(&endpoint);
        // Then the settings are refused at its line and column, and so is the source
        let d = parse_settings("rollgate.yaml", &text).expect_err(&endpoint);
        assert_eq!(d.len(), 1, "{endpoint}: {d:#?}");
        assert_eq!(d[0].code, Code::InvalidValue, "{d:?}");
        assert_eq!(
            d[0].pos,
            Some(place_of(&text, &format!("\"{endpoint}"))),
            "{d:?}"
        );
        assert!(
            Cloudwatch::new(access(&endpoint), Duration::from_secs(5)).is_err(),
            "{endpoint}"
        );
    }
    // And https anywhere, or plain http to loopback, is accepted
    for endpoint in [
        format!("http://127.0.0.1:{port}"),
        "https://monitoring.eu-west-1.amazonaws.com".to_owned(),
    ] {
        let parsed = parse_settings("rollgate.yaml", &settings(&endpoint))
            .unwrap_or_else(|d| panic!("{endpoint}: {d:#?}"));
        assert!(
            matches!(&parsed.metrics["cloudwatch"], settings::MetricsSource::Cloudwatch { endpoint: Some(e), .. } if *e == endpoint)
        );
        assert!(Cloudwatch::new(access(&endpoint), Duration::from_secs(5)).is_ok());
    }
}
