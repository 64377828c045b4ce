//! What the fuzz targets (`fuzz/`, issue #16) found, one test per finding, named after
//! what broke, with the input as found. Every one is fixed; the test keeps it so.

use std::time::Duration;

use chrono::DateTime;
use git2::{Repository, Signature, Time};
use rollgate::engine::stats::{self, Alternative};
use rollgate::engine::{Measurement, Revert, Transition, judge, judge_ratio};
use rollgate::history;
use rollgate::model::plan::{Check, Direction, Judge};
use rollgate::model::status::{Evidence, Judgement, Phase, Status, Verdict};
use rollgate::model::validate::parse_plan;
use rollgate::source::git::CommitInfo;
use rollgate::writeback::messages::{revert_commit, status_commit};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn threshold(min: Option<f64>, max: Option<f64>) -> Check {
    Check {
        name: "errors".to_owned(),
        source: "builtin".to_owned(),
        query: "error-rate".to_owned(),
        judge: Judge::Threshold { min, max },
        interval: Duration::from_secs(60),
        failure_limit: 0,
        consecutive_error_limit: 2,
        samples_query: None,
    }
}

fn trailers(message: &str) -> Vec<(String, String)> {
    git2::message_trailers_strs(message)
        .expect("trailers")
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// fuzz/judge: `judge: { min: NaN, max: NaN }` passed -1 (every comparison with NaN is
/// false). Fixed in eee17fc: such a judgement is inconclusive.
#[test]
fn a_nan_threshold_never_passes() {
    let check = threshold(Some(f64::NAN), Some(f64::NAN));
    let m = Measurement {
        value: Some(-1.0),
        samples: 11_883_349_200_590,
    };
    let j = judge(&check, 4_294_934_528, m, DateTime::UNIX_EPOCH);
    assert_ne!(j.verdict, Verdict::Pass, "{j}");
}

/// Found while triaging the NaN threshold: a non-finite YAML bound has no JSON form and
/// is dropped on the way to the wire types, silently when the other bound remains, so
/// `{ min: .inf, max: 1 }` (nothing can pass) validates as `{ max: 1 }` (all of a
/// success rate passes). Only a judge left empty is refused (eee17fc's test).
#[test]
fn a_non_finite_bound_beside_a_finite_one_is_refused() {
    for bound in [".inf", "-.inf", ".nan"] {
        let text = format!(
            "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: web }}\n\
             spec:\n  target: local\n  workload:\n    local: {{ command: [srv], listen: \"127.0.0.1:9000\" }}\n\
             \x20 artifact: v2\n  strategy:\n    canary:\n      steps:\n        - setWeight: 10\n\
             \x20       - analysis: {{ checks: [ok], duration: 1m }}\n        - setWeight: 100\n\
             \x20 checks:\n    - {{ name: ok, source: builtin, query: success-rate, judge: {{ min: {bound}, max: 1 }} }}\n"
        );
        let parsed = parse_plan("plans/web.yaml", &text, None);
        assert!(
            parsed.is_err(),
            "min: {bound} accepted as {:?}",
            parsed.map(|p| p.plan.checks[0].judge.clone())
        );
    }
}

/// fuzz/trailers: a valid plan's artifact with a multi-byte character where the commit
/// subject cuts its digest (12 bytes in) panics `status_commit`: the reconciler could
/// never record that rollout. Validation lets such an artifact through (one word, no
/// whitespace or control characters).
#[test]
fn a_multibyte_digest_does_not_panic_the_status_commit() {
    let artifact = "reg/web@sha256:x€€€€";
    let text = format!(
        "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: web }}\n\
         spec:\n  target: local\n  workload:\n    local: {{ command: [srv], listen: \"127.0.0.1:9000\" }}\n\
         \x20 artifact: {artifact}\n  strategy:\n    canary:\n      steps:\n        - setWeight: 100\n"
    );
    let parsed = parse_plan("plans/web.yaml", &text, None).expect("a valid plan");
    assert_eq!(parsed.plan.artifact, artifact);
    let status = Status::pending("web", artifact, SHA);
    let t = Transition {
        from: Some(Phase::Pending),
        to: Phase::Progressing,
        step: (1, 1),
        reason: "started".to_owned(),
        verdicts: Vec::new(),
        first_rollout: None,
        analysis_restarted_at: None,
    };
    let spec = status_commit(&status, Some(&t), None, String::new());
    assert!(spec.subject.contains("reg/web@sha256:"), "{}", spec.subject);
}

/// fuzz/trailers: `rollgate history` panics (subtract with overflow; in a release build,
/// a capacity overflow) on any commit whose `Rollgate-Weight` trailer is above 100, and
/// anyone who can push can write one.
#[test]
fn history_renders_a_weight_above_100() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = Repository::init_bare(dir.path()).expect("repository");
    let tree = repo
        .treebuilder(None)
        .and_then(|t| t.write())
        .expect("tree");
    let tree = repo.find_tree(tree).expect("tree");
    let sig = Signature::new("a", "a@example.invalid", &Time::new(0, 0)).expect("signature");
    let message = "web: progressing\n\nRollgate-Plan: web\nRollgate-Weight: 200\n";
    let id = repo
        .commit(None, &sig, &sig, message, &tree, &[])
        .expect("commit");
    let entries = history::collect(&repo, id, None).expect("history");
    assert_eq!(entries[0].weight, Some(200));
    let text = history::render_text(&entries);
    assert!(text.contains("web"), "{text}");
}

/// fuzz/trailers: a trailer written with an empty value (`Rollgate-Reason: `) is read
/// back by libgit2 with the *next* line as its value: the reason becomes the first
/// verdict, and that verdict is lost.
#[test]
fn an_empty_trailer_value_keeps_the_next_trailer() {
    let failed = Judgement {
        verdict: Verdict::Fail {
            reason: String::new(),
        },
        evidence: Evidence {
            check: String::new(),
            value: None,
            min: None,
            max: None,
            samples: 0,
            at: DateTime::UNIX_EPOCH,
            comparison: None,
        },
    };
    let revert = Revert {
        of_revision: SHA.to_owned(),
        reason: String::new(),
        evidence: vec![failed],
    };
    let message = revert_commit("web", None, &revert)
        .expect("a revert")
        .message(true);
    let read = trailers(&message);
    let verdicts = read.iter().filter(|(k, _)| k == "Rollgate-Verdict").count();
    assert_eq!(verdicts, 1, "{message:?} read as {read:?}");
}

/// fuzz/trailers: a revert's reason goes into the commit body as it is, and a reason
/// from a target's own words (`target unhealthy: …`) can hold a line starting with
/// `---`, where Git's trailer parser takes a patch to start: it then reads no trailers,
/// so the revert is no longer rollgate's own commit (`CommitInfo::is_rollgate`) and
/// `rollgate history` does not show it. Found as a reason of `\n\n\n\n\n---\n`.
#[test]
fn a_reason_with_a_dashed_line_keeps_the_trailers() {
    let revert = Revert {
        of_revision: SHA.to_owned(),
        reason: "target unhealthy: the canary crashed:\n---\npanic at main.go:12".to_owned(),
        evidence: Vec::new(),
    };
    let message = revert_commit("web", Some("reg/web:1"), &revert)
        .expect("a revert")
        .message(false);
    let read = trailers(&message);
    let info = CommitInfo {
        id: git2::Oid::ZERO_SHA1,
        summary: String::new(),
        author: String::new(),
        time: 0,
        trailers: read.clone(),
    };
    assert!(info.is_rollgate(), "{message:?} read as {read:?}");
}

fn baseline(direction: Direction, max_ratio: f64, alpha: f64) -> Judge {
    Judge::Baseline {
        direction,
        max_ratio: Some(max_ratio),
        max_increase: None,
        alpha,
    }
}

/// fuzz/judge: counts whose sum does not fit in a u64 (a source reporting `u64::MAX`
/// requests) overflow Fisher's margins: a panic with overflow checks, a wrong table
/// without them.
#[test]
fn counts_beyond_u64_do_not_overflow_the_ratio_judge() {
    let judge = baseline(Direction::Increase, 1.0, f64::from_bits(1));
    let max = u64::MAX;
    let j = judge_ratio(
        "errors",
        max,
        max,
        max,
        max,
        &judge,
        1,
        DateTime::UNIX_EPOCH,
    );
    assert_ne!(j.verdict, Verdict::Pass, "{j}");
}

/// fuzz/judge: Fisher's test builds one weight per table its margins allow; a table
/// with a small expected cell and huge margins asks for 33.7 GB here (a failed
/// allocation aborts the process). Fisher now runs only up to
/// `stats::FISHER_MAX_SUPPORT` tables; beyond, the z-test judges.
#[test]
fn huge_counts_do_not_exhaust_memory() {
    let judge = baseline(Direction::Decrease, stats::MAX_MAGNITUDE, f64::from_bits(1));
    let j = judge_ratio(
        "errors",
        4_214_259_840,
        18_445_617_302_793_551_867,
        146,
        4_294_258_999,
        &judge,
        255,
        DateTime::UNIX_EPOCH,
    );
    assert_ne!(j.verdict, Verdict::Pass, "{j}");
}

/// fuzz/judge: beyond 2^53 counts (where f64 stops counting by ones) Fisher's weights
/// lose their mode and overflow: the p-value is NaN, against the Comparison invariant.
#[test]
fn fisher_p_is_never_nan_for_counts_beyond_2_pow_53() {
    let (cg, ct, bg, bt) = (36_069_638_486_216_447, 18_158_512_838_564_327_886, 37, 55);
    let judge = baseline(Direction::Decrease, stats::MAX_MAGNITUDE, f64::from_bits(1));
    let j = judge_ratio("errors", cg, ct, bg, bt, &judge, 255, DateTime::UNIX_EPOCH);
    // Counts f64 cannot hold exactly are no evidence: inconclusive, never a NaN figure
    assert!(matches!(j.verdict, Verdict::Inconclusive { .. }), "{j}");
    assert!(!j.to_string().contains("NaN"), "{j}");
    let f = stats::fisher_exact([[cg, ct - cg], [bg, bt - bg]], Alternative::Less);
    assert!(!f.p_value.is_nan(), "{f:?}");
}
