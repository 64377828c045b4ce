//! The built-in policies' pre-check: a plan it proves clean of every built-in `deny`
//! skips the Rego interpreter for them (about 55 µs a plan, most of a 10,000-plan
//! validation's policy time); every other plan is evaluated by the Rego as before.
//!
//! ```text
//!   input ──▶ Prescreen::clean? ──yes──▶ built-ins: no finding; the repository's own rules in Rego
//!                    │no (a deny would fire, or anything unusual)
//!                    └──────────────▶ every rule in Rego (messages, errors: the Rego's own)
//! ```
//!
//! Invariants: the Rego files in `policies/` stay the reference and the only source of
//! a built-in finding's message; the pre-check only ever answers "clean" or "ask the
//! Rego", so it can make validation faster but never change a verdict. It answers
//! "clean" only where every built-in `deny` body fails on values it reads exactly as
//! Rego does (truthiness, equality, numbers), and only where no body could raise an
//! error (a Rego error refuses the plan). It applies only to the embedded texts it was
//! written for ([`BUILTIN_FINGERPRINT`], checked by a test) and only when nothing else
//! reaches into `data.rollgate.builtin` (a data file, a module of package `rollgate`:
//! `PolicySet::prescreen`). The tests below evaluate thousands of generated inputs both
//! ways and require the same outcome.

use serde_json::Value;

/// The `deny` rules the pre-check stands for: every rule of the built-in packages.
pub(super) const RULES: &[&str] = &[
    "data.rollgate.builtin.digest.deny",
    "data.rollgate.builtin.first_step.deny",
    "data.rollgate.builtin.production_analysis.deny",
    "data.rollgate.builtin.promotion.deny",
    "data.rollgate.builtin.windows.deny",
];

/// FNV-1a 64 of the embedded built-in policy texts, in order: a change to any of them
/// fails `the_prescreen_matches_the_builtin_policies_it_was_written_for` until this
/// module is checked against it (and the fingerprint updated).
pub(super) const BUILTIN_FINGERPRINT: u64 = 0x8806_b8c5_d847_7d98;

/// The pre-check of one prepared policy set.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Prescreen {
    /// `data.rollgate.limits.maxFirstStepWeight` (25 when unset); `None` when it is not
    /// a number, so a first step is always left to the Rego.
    max_first_weight: Option<f64>,
}

impl Prescreen {
    /// The pre-check for a set whose `data.rollgate.limits.maxFirstStepWeight` is
    /// `max_first_weight` (`None`: unset, so the policy's default of 25).
    pub(super) fn new(max_first_weight: Option<&Value>) -> Self {
        let max_first_weight = match max_first_weight {
            None => Some(25.0),
            Some(v) => small_number(v),
        };
        Self { max_first_weight }
    }

    /// Whether no built-in `deny` fires, and none errs, for the input whose `plan`,
    /// `steps` and `windowOpen` are these. `false` means "ask the Rego", not "denied".
    pub(super) fn clean(&self, plan: &Value, steps: &Value, window_open: &Value) -> bool {
        let Some(steps) = steps.as_array() else {
            return false;
        };
        digest_clean(plan)
            && self.first_step_clean(plan, steps)
            && production_analysis_clean(plan, steps)
            && promotion_clean(plan)
            && windows_clean(plan, window_open)
    }

    /// `first_step.rego`: the first positive `setWeight` is at most the limit, or the
    /// plan is blue-green, or no step sets a positive weight.
    fn first_step_clean(&self, plan: &Value, steps: &[Value]) -> bool {
        if truthy(at(plan, &["spec", "strategy", "blueGreen"])) {
            return true;
        }
        let mut first = None;
        for step in steps {
            // `w := step.setWeight; is_number(w); w > 0`: anything else is skipped.
            if let Some(w) = step.get("setWeight").filter(|w| w.is_number()) {
                let Some(w) = small_number(w) else {
                    return false;
                };
                if w > 0.0 {
                    first = Some(w);
                    break;
                }
            }
        }
        match (first, self.max_first_weight) {
            (None, _) => true,
            (Some(w), Some(max)) => w <= max,
            (Some(_), None) => false,
        }
    }
}

/// `digest.rego`: not a Kubernetes or Knative workload, or its artifact is pinned.
fn digest_clean(plan: &Value) -> bool {
    let image_workload = truthy(at(plan, &["spec", "workload", "kubernetes"]))
        || truthy(at(plan, &["spec", "workload", "knative"]));
    if !image_workload {
        return true;
    }
    // `object.get(input.plan.spec, "artifact", "")`
    match at(plan, &["spec", "artifact"]) {
        None => false, // "" is not pinned
        Some(Value::String(a)) => pinned(a),
        Some(_) => false,
    }
}

/// `pinned(artifact)`: `name@sha256:<64 lowercase hex>`, `name` non-empty without `@`.
fn pinned(artifact: &str) -> bool {
    let parts: Vec<&str> = artifact.split("@sha256:").collect();
    let [name, digest] = parts.as_slice() else {
        return false;
    };
    !name.is_empty()
        && !name.contains('@')
        && digest.chars().count() == 64
        && digest.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// `production_analysis.rego`: not labelled production, or some step has an analysis
/// with checks. A `checks` that `count` would refuse is left to the Rego.
fn production_analysis_clean(plan: &Value, steps: &[Value]) -> bool {
    if at(plan, &["metadata", "labels", "environment"]) != Some(&Value::String("production".into()))
    {
        return true;
    }
    let mut has_analysis = false;
    for step in steps {
        match step.get("analysis").and_then(|a| a.get("checks")) {
            None => {}
            Some(Value::Array(a)) => has_analysis |= !a.is_empty(),
            Some(Value::Object(o)) => has_analysis |= !o.is_empty(),
            Some(Value::String(s)) => has_analysis |= !s.is_empty(),
            Some(_) => return false,
        }
    }
    has_analysis
}

/// `promotion.rego`: the plan is not promoted from another (a promoted plan's statuses
/// are left to the Rego).
fn promotion_clean(plan: &Value) -> bool {
    at(plan, &["spec", "promotedFrom"]).is_none()
}

/// `windows.rego`: not labelled critical, or its change window is not closed.
fn windows_clean(plan: &Value, window_open: &Value) -> bool {
    at(plan, &["metadata", "labels", "tier"]) != Some(&Value::String("critical".into()))
        || *window_open != Value::Bool(false)
}

/// `input.plan.<path>` as Rego reads it: undefined (`None`) when any step is missing or
/// not an object.
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| v.as_object()?.get(*key))
}

/// A value standing alone as a Rego condition: defined and not `false`.
fn truthy(value: Option<&Value>) -> bool {
    value.is_some_and(|v| *v != Value::Bool(false))
}

/// A number both sides compare exactly: finite, and small enough that every integer
/// up to it is an `f64`.
fn small_number(value: &Value) -> Option<f64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match value.as_i64() {
        #[allow(clippy::cast_precision_loss)] // at most 2^53: exact
        Some(i) if i.unsigned_abs() <= 1 << 53 => Some(i as f64),
        Some(_) => None,
        None if value.is_u64() => None,
        None => value.as_f64().filter(|f| f.is_finite() && f.abs() <= EXACT),
    }
}

/// FNV-1a 64 of `texts`, one after another.
pub(super) fn fingerprint<'a>(texts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for text in texts {
        for b in text.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySet, SharedInput};
    use serde_json::json;

    #[test]
    fn the_prescreen_matches_the_builtin_policies_it_was_written_for() {
        let now = fingerprint(
            crate::policy::load::BUILTIN_POLICIES
                .iter()
                .map(|(_, text)| *text),
        );
        assert_eq!(
            now, BUILTIN_FINGERPRINT,
            "a built-in policy changed: check reconciler/policy/native.rs against it, then update BUILTIN_FINGERPRINT to {now:#x}"
        );
        // and every set that holds them uses it
        assert!(PolicySet::builtin().native.is_some());
        assert!(PolicySet::load(None).expect("load").native.is_some());
    }

    /// A small deterministic generator (xorshift64*).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn pick<T: Clone>(&mut self, from: &[T]) -> T {
            let len = u64::try_from(from.len()).expect("small");
            from[usize::try_from(self.next() % len).expect("small")].clone()
        }
    }

    const HEX: &str = "4f1c0e6c8f3b2a1d9e7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e";

    /// `Some(v)`: the key set to `v`; `None`: the key left out.
    fn put(map: &mut serde_json::Map<String, Value>, key: &str, value: Option<Value>) {
        if let Some(v) = value {
            map.insert(key.to_owned(), v);
        }
    }

    /// One input over everything the built-ins read, odd values included: types Rego
    /// reads differently, look-alike digests, weights at and around the limit.
    fn input(g: &mut Gen) -> (Value, Value, Value) {
        let absent = None;
        let mut labels = serde_json::Map::new();
        put(
            &mut labels,
            "environment",
            g.pick(&[
                absent.clone(),
                Some(json!("production")),
                Some(json!("staging")),
                Some(json!(5)),
                Some(Value::Null),
            ]),
        );
        put(
            &mut labels,
            "tier",
            g.pick(&[
                absent.clone(),
                Some(json!("critical")),
                Some(json!("normal")),
                Some(json!(true)),
            ]),
        );
        put(
            &mut labels,
            "emergency",
            g.pick(&[
                absent.clone(),
                Some(json!("true")),
                Some(json!(true)),
                Some(json!("no")),
            ]),
        );
        let artifact = g.pick(&[
            None,
            Some(json!(format!("registry.example/app@sha256:{HEX}"))),
            Some(json!(format!(
                "registry.example/app@sha256:{}",
                HEX.to_uppercase()
            ))),
            Some(json!("registry.example/app@sha256:4f1c")),
            Some(json!("registry.example/app:1.2")),
            Some(json!(format!("@sha256:{HEX}"))),
            Some(json!(format!("a@b@sha256:{HEX}"))),
            Some(json!(format!("app@sha256:{HEX}@sha256:{HEX}"))),
            Some(json!(format!("app@sha256:{}é", &HEX[..63]))),
            Some(json!(format!("app@sha256:{HEX}0"))),
            Some(json!(5)),
            Some(Value::Null),
        ]);
        let workload = g.pick(&[
            None,
            Some(json!({"kubernetes": {"namespace": "n", "deployment": "d"}})),
            Some(json!({"knative": {"namespace": "n", "service": "s"}})),
            Some(json!({"local": {"command": ["./app"]}})),
            Some(json!({"kubernetes": false})),
            Some(json!({"kubernetes": null})),
            Some(json!({"knative": 0})),
            Some(json!([1])),
        ]);
        let strategy = g.pick(&[
            None,
            Some(json!({"blueGreen": {}})),
            Some(json!({"blueGreen": false})),
            Some(json!({"canary": {}})),
        ]);
        let promoted = g.pick(&[None, None, None, Some(json!("staging")), Some(Value::Null)]);
        let mut spec = serde_json::Map::new();
        put(&mut spec, "artifact", artifact);
        put(&mut spec, "workload", workload);
        put(&mut spec, "strategy", strategy);
        put(&mut spec, "promotedFrom", promoted);
        let name = g.pick(&[json!("web"), json!("a\"b"), json!("ünï\u{7}")]);
        let mut plan = json!({"metadata": {"name": name, "labels": labels}, "spec": spec});
        if g.next().is_multiple_of(50) {
            plan = g.pick(&[json!({"metadata": 1, "spec": []}), json!({"spec": 5})]);
        }
        let steps_len = g.next() % 5;
        let steps: Vec<Value> = (0..steps_len)
            .map(|_| {
                g.pick(&[
                    json!({"setWeight": 0}),
                    json!({"setWeight": 5}),
                    json!({"setWeight": 25}),
                    json!({"setWeight": 26}),
                    json!({"setWeight": 50}),
                    json!({"setWeight": 100}),
                    json!({"setWeight": -1}),
                    json!({"setWeight": 25.5}),
                    json!({"setWeight": 24.999}),
                    json!({"setWeight": "30"}),
                    json!({"setWeight": null}),
                    json!({"setWeight": u64::MAX}),
                    json!({"setWeight": 1e300}),
                    json!({"analysis": {"checks": ["success-rate"]}}),
                    json!({"analysis": {"checks": []}}),
                    json!({"analysis": {"checks": 5}}),
                    json!({"analysis": {"checks": "x"}}),
                    json!({"analysis": {"checks": {}}}),
                    json!({"analysis": 3}),
                    json!({"pause": {}}),
                    json!(7),
                ])
            })
            .collect();
        let window = g.pick(&[json!(true), json!(false), Value::Null, json!("false")]);
        (plan, Value::Array(steps), window)
    }

    /// The outcome with the pre-check and without it, for `n` generated inputs; returns
    /// how many the pre-check proved clean.
    fn same_outcomes(set: &PolicySet, n: usize, seed: u64) -> usize {
        let mut without = set.clone();
        without.native = None;
        // A change labelled `emergency` or not; a staging plan with a success or none.
        let shared: Vec<SharedInput> = [json!(["emergency"]), json!([])]
            .into_iter()
            .flat_map(|labels| {
                [
                    json!({"staging": {"succeeded": [{"artifact": format!("registry.example/app@sha256:{HEX}")}]}}),
                    json!({}),
                ]
                .map(|statuses| {
                    SharedInput::new(&json!({
                        "change": {"labels": labels, "files": []},
                        "settings": {},
                        "now": "2026-12-07T10:00:00Z",
                        "statuses": statuses,
                    }))
                })
            })
            .collect();
        let mut g = Gen(seed);
        let mut clean = 0;
        let native = set.native.as_ref().expect("the pre-check applies");
        for _ in 0..n {
            let (plan, steps, window) = input(&mut g);
            let file = json!("plans/web.yaml");
            let fields = [
                ("file", &file),
                ("plan", &plan),
                ("steps", &steps),
                ("windowOpen", &window),
            ];
            if native.clean(&plan, &steps, &window) {
                clean += 1;
            }
            let shared = g.pick(&shared);
            let fast = set.evaluate_fields(&shared, &fields);
            let slow = without.evaluate_fields(&shared, &fields);
            assert_eq!(
                format!("{fast:?}"),
                format!("{slow:?}"),
                "plan {plan}, steps {steps}, windowOpen {window}"
            );
        }
        clean
    }

    #[test]
    fn with_or_without_the_prescreen_every_input_gets_the_same_outcome() {
        let n = 4_000;
        let clean = same_outcomes(&PolicySet::builtin(), n, 0x9e37_79b9_7f4a_7c15);
        // Not a vacuous pass: both ways were taken often.
        assert!(clean > n / 20 && clean < n - n / 20, "{clean} of {n} clean");
    }

    #[test]
    fn with_repository_policies_and_limits_the_prescreen_still_changes_no_outcome() {
        for (limit, native_limit) in [("50", Some(50.0)), ("\"30\"", None), ("12.5", Some(12.5))] {
            let dir = tempfile::tempdir().expect("temp dir");
            let policies = dir.path().join("policies");
            std::fs::create_dir(&policies).expect("mkdir");
            std::fs::write(
                policies.join("limits.json"),
                format!("{{\"rollgate\": {{\"limits\": {{\"maxFirstStepWeight\": {limit}}}}}}}"),
            )
            .expect("write");
            std::fs::write(
                policies.join("team.rego"),
                "package rollgate.team\n\nimport rego.v1\n\n\
                 deny contains \"no staging\" if input.plan.metadata.labels.environment == \"staging\"\n\n\
                 warn contains sprintf(\"weights %v\", [count(input.steps)]) if count(input.steps) > 3\n",
            )
            .expect("write");
            let set = PolicySet::load(Some(&policies)).expect("load");
            assert_eq!(
                set.native,
                Some(Prescreen {
                    max_first_weight: native_limit
                }),
                "limit {limit}"
            );
            assert_eq!(set.repo_rules.len(), 2);
            same_outcomes(&set, 1_500, 0x51_7cc1_b727_220a);
        }
    }

    #[test]
    fn a_repository_rule_reaching_into_a_builtin_package_turns_the_prescreen_off() {
        // `package rollgate` may name a rule by a longer ref (`builtin.digest.deny`), which
        // joins the built-in's rule without declaring its package.
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("root.rego"),
            "package rollgate\n\nimport rego.v1\n\n\
             builtin.digest.deny contains \"from the repository\" if true\n",
        )
        .expect("write");
        let set = PolicySet::load(Some(dir.path())).expect("regorus takes the rule");
        assert!(set.native.is_none());
        // and the repository's rule denies a plan every built-in allows
        let plan = json!({"metadata": {"name": "web"}, "spec": {}});
        let outcome = set
            .evaluate_fields(
                &SharedInput::default(),
                &[
                    ("plan", &plan),
                    ("steps", &json!([])),
                    ("windowOpen", &json!(true)),
                ],
            )
            .expect("evaluates");
        assert_eq!(outcome.deny.len(), 1, "{outcome:?}");
    }

    #[test]
    fn data_reaching_into_the_builtin_packages_turns_the_prescreen_off() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("odd.json"),
            "{\"rollgate\": {\"builtin\": {\"extra\": 1}}}",
        )
        .expect("write");
        // regorus takes such data beside the built-in rules; the pre-check stands aside.
        let set = PolicySet::load(Some(dir.path())).expect("loads");
        assert!(set.native.is_none());
    }
}
