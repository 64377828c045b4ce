//! Tests of the status: its file round trip (every field, a minimal and a direct
//! status), refusal of broken files, and the trailer rendering of judgements.

use super::*;
use crate::model::yaml::MAX_FILE_BYTES;
use chrono::TimeZone;

fn at(min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, min, 0)
        .single()
        .expect("valid time")
}

fn full_status() -> Status {
    let mut s = Status::pending("checkout", "reg/checkout@sha256:bbb", "abc123");
    s.phase = Phase::Held;
    s.stable = Some("reg/checkout@sha256:aaa".to_owned());
    s.step = 1;
    s.weight = 5;
    s.step_started_at = Some(at(5));
    s.hold = Some(Hold {
        kind: HoldKind::Evidence,
        reason: "check latency: 4 consecutive errors".to_owned(),
    });
    s.analysis = vec![
        CheckRun {
            check: "success-rate".to_owned(),
            measurements: 3,
            passes: 2,
            inconclusives: 1,
            last_measured_at: Some(at(7)),
            last: Some(Judgement {
                verdict: Verdict::Pass,
                evidence: Evidence {
                    check: "success-rate".to_owned(),
                    value: Some(0.9992),
                    min: Some(0.999),
                    max: None,
                    samples: 1532,
                    at: at(7),
                    comparison: None,
                },
            }),
            ..CheckRun::new("success-rate")
        },
        CheckRun {
            check: "latency".to_owned(),
            measurements: 5,
            errors: 5,
            consecutive_errors: 5,
            last_error: Some("connection refused".to_owned()),
            last: Some(Judgement {
                verdict: Verdict::Inconclusive {
                    reason: "too few samples".to_owned(),
                },
                evidence: Evidence {
                    check: "latency".to_owned(),
                    value: None,
                    min: None,
                    max: Some(0.25),
                    samples: 3,
                    at: at(6),
                    comparison: None,
                },
            }),
            ..CheckRun::new("latency")
        },
        CheckRun {
            check: "p99".to_owned(),
            measurements: 1,
            failures: 1,
            last: Some(Judgement {
                verdict: Verdict::Fail {
                    reason: "canary is worse".to_owned(),
                },
                evidence: Evidence {
                    check: "p99".to_owned(),
                    value: Some(100.0),
                    min: None,
                    max: None,
                    samples: 10,
                    at: at(6),
                    comparison: Some(Comparison {
                        test: "mann-whitney".to_owned(),
                        statistic: Some(85.0),
                        p_value: 0.000_807_6,
                        effect: 99.0,
                        ci_low: 0.0,
                        ci_high: 99.0,
                        allowed_low: f64::NEG_INFINITY,
                        allowed_high: 0.2,
                        ratio: Some(100.0),
                        canary: 100.0,
                        baseline: 1.0,
                        canary_samples: 10,
                        baseline_samples: 10,
                    }),
                },
            }),
            ..CheckRun::new("p99")
        },
    ];
    s.analysis.push(CheckRun {
        skipped: Some("no stable version to compare with".to_owned()),
        ..CheckRun::new("latency-vs-stable")
    });
    s.analysis_restart = Some(AnalysisRestart {
        count: 2,
        at: at(5),
        reason: "analysis restarted at 2026-11-23T10:05:00Z: the builtin samples before it were lost (the data plane restarted)".to_owned(),
    });
    s.succeeded = vec![Success {
        artifact: "reg/checkout@sha256:aaa".to_owned(),
        at: at(1),
    }];
    s.last_transition_at = Some(at(8));
    s.message = Some("held: evidence missing".to_owned());
    s
}

#[test]
fn status_round_trips_through_its_file() {
    // Given a status with every field set
    let s = full_status();
    // When it is written and read back
    let text = s.to_yaml().expect("writes");
    let back = Status::from_yaml(&text).expect("reads");
    // Then nothing is lost, and the file says what it is
    assert_eq!(back, s);
    assert!(text.contains("apiVersion: rollgate.dev/v1alpha1"), "{text}");
    assert!(text.contains("kind: RolloutStatus"), "{text}");
    assert!(text.contains("stepStartedAt:"), "{text}");
}

#[test]
fn a_first_rollout_deployed_directly_round_trips() {
    let mut s = Status::pending("web", "v1", "deadbeef");
    s.phase = Phase::Promoting;
    s.direct = true;
    s.weight = 100;
    let text = s.to_yaml().expect("writes");
    assert!(text.contains("direct: true"), "{text}");
    assert_eq!(Status::from_yaml(&text).expect("reads"), s);
    // and a status without it (every status written before it existed) reads as false
    let plain = Status::pending("web", "v1", "deadbeef");
    assert!(!plain.to_yaml().expect("writes").contains("direct"));
}

#[test]
fn a_minimal_status_round_trips() {
    let s = Status::pending("web", "v2", "deadbeef");
    let back = Status::from_yaml(&s.to_yaml().expect("writes")).expect("reads");
    assert_eq!(back, s);
}

#[test]
fn a_broken_status_file_is_an_error_not_a_panic() {
    let good = full_status().to_yaml().expect("writes");
    let cases = [
        String::new(),
        "[1, 2".to_owned(),
        "just text".to_owned(),
        good.replace("Held", "Flying"),
        good.replace("RolloutStatus", "RolloutPlan"),
        good.replace("rollgate.dev/v1alpha1", "rollgate.dev/v9"),
        good.replace("2026-11-23T10:05:00Z", "yesterday"),
        good.replace("kind: evidence", "kind: mood"),
        good.replace("verdict: pass", "verdict: maybe"),
        good.replace("weight: 5", "weight: 300"),
        good.replace("weight: 5", "weight: 101"),
        good.replace("count: 2", "count: -2"),
        good.replace(
            "at: \"2026-11-23T10:05:00Z\"\n    reason: \"analysis",
            "at: soon\n    reason: \"analysis",
        ),
        format!("{good}surprise: 1\n"),
    ];
    for text in cases {
        assert!(Status::from_yaml(&text).is_err(), "accepted:\n{text}");
    }
    let huge = "a".repeat(MAX_FILE_BYTES + 1);
    assert_eq!(
        Status::from_yaml(&huge),
        Err(StatusError::TooLarge(MAX_FILE_BYTES + 1))
    );
}

#[test]
fn judgements_render_as_trailers() {
    let s = full_status();
    let j = s.analysis[0].last.as_ref().expect("judged");
    assert_eq!(
        j.to_string(),
        "pass success-rate value=0.9992 min=0.999 n=1532"
    );
    let j = s.analysis[1].last.as_ref().expect("judged");
    assert_eq!(
        j.to_string(),
        "inconclusive latency value=none max=0.25 n=3 (too few samples)"
    );
    let j = s.analysis[2].last.as_ref().expect("judged");
    assert_eq!(
        j.to_string(),
        "fail p99 mann-whitney U=85 p=0.00081 canary=100 baseline=1 shift=+99 ci=[0,99] max=+0.2 ratio=100 n=10/10 (canary is worse)"
    );
}

#[test]
fn comparison_numbers_are_compact() {
    let c = Comparison {
        test: "fisher".to_owned(),
        statistic: None,
        p_value: 9.4123e-7,
        effect: -0.03,
        ci_low: -0.084_47,
        ci_high: -0.010_3,
        allowed_low: -0.01,
        allowed_high: f64::INFINITY,
        ratio: Some(f64::INFINITY),
        canary: 0.97,
        baseline: 1.0,
        canary_samples: 100,
        baseline_samples: 10_000,
    };
    assert_eq!(
        c.to_string(),
        "fisher p=9.4e-7 canary=0.97 baseline=1 diff=-0.03 ci=[-0.08447,-0.0103] min=-0.01 ratio=inf n=100/10000"
    );
    let c = Comparison {
        test: "two-proportion-z".to_owned(),
        statistic: Some(-1.234_56),
        allowed_low: -0.5,
        allowed_high: 0.25,
        ratio: None,
        p_value: 0.5,
        ..c
    };
    assert!(
        c.to_string()
            .starts_with("two-proportion-z z=-1.235 p=0.5 "),
        "{c}"
    );
    assert!(c.to_string().contains(" allowed=[-0.5,+0.25] n="), "{c}");
}
