//! Job checks (`spec.checks` entries with a `job:`) and `spec.hooks`.
//!
//! A job check is a one-shot check that must succeed: a command on a `local` target, a
//! Kubernetes Job from a template on a `kubernetes` one. Invariants: pure; a job runs
//! only where its target can run one (a Lambda or Knative workload cannot), in the form
//! that target runs (`command` for local, `template` for kubernetes, never both); the
//! fields of a metric check (`source`, `query`, `judge`, `interval`, `failureLimit`,
//! `consecutiveErrorLimit`, `samplesQuery`) mean nothing on a job and are refused;
//! hooks name job checks of the plan, never metric checks.

use std::collections::BTreeMap;

use crate::model::diagnostics::{Code, did_you_mean};
use crate::model::plan::{self, Hooks, JobCheck, JobRun};
use crate::model::wire;

use super::{Ctx, P};

/// The job check `c` (whose `job` is `job`), at `at` (the check's path).
pub(super) fn job_check(
    cx: &mut Ctx<'_>,
    s: &wire::PlanSpec,
    c: &wire::Check,
    job: &wire::Job,
    at: &[P<'static>],
) -> JobCheck {
    use P::K;
    let here = |rest: &[P<'static>]| -> Vec<P<'static>> {
        at.iter().copied().chain(rest.iter().copied()).collect()
    };
    for (field, set) in [
        ("source", c.source.is_some()),
        ("query", c.query.is_some()),
        ("judge", c.judge.is_some()),
        ("interval", c.interval.is_some()),
        ("failureLimit", c.failure_limit.is_some()),
        ("consecutiveErrorLimit", c.consecutive_error_limit.is_some()),
        ("samplesQuery", c.samples_query.is_some()),
    ] {
        if set {
            cx.err(
                &here(&[K(field)]),
                Code::InvalidValue,
                format!(
                    "`{field}` means nothing on a job check: a job runs once and passes when it succeeds"
                ),
            )
            .help = Some(format!("remove `{field}`, or make `{}` a metric check without `job`", c.name));
        }
    }
    let jat = |k: &'static str| here(&[K("job"), K(k)]);
    let timeout = cx.dur(
        job.timeout.as_deref(),
        plan::DEFAULT_JOB_TIMEOUT,
        &jat("timeout"),
    );
    if timeout.is_zero() {
        cx.err(
            &jat("timeout"),
            Code::InvalidValue,
            "a job's `timeout` must be above 0",
        );
    }
    let local_fallback = || JobRun::Command {
        command: job.command.clone().unwrap_or_default(),
        env: job.env.clone(),
    };
    let run = match &s.workload {
        wire::Workload::Local(_) => {
            if job.template.is_some() {
                cx.err(
                    &jat("template"),
                    Code::WorkloadMismatch,
                    "a job `template` is a Kubernetes JobSpec; a local workload's job runs a `command`",
                )
                .help = Some("give the argv as `command: [...]`".to_owned());
            }
            if job.ttl.is_some() {
                cx.err(
                    &jat("ttl"),
                    Code::WorkloadMismatch,
                    "`ttl` keeps a finished Kubernetes Job; a local job's output stays in the state folder",
                );
            }
            match &job.command {
                None => {
                    cx.err(
                        &here(&[K("job")]),
                        Code::MissingField,
                        format!("missing field `command` in the job of check `{}`", c.name),
                    )
                    .help = Some(
                        "a local job runs an argv, e.g. `command: [./smoke.sh, \"{{version}}\"]`"
                            .to_owned(),
                    );
                }
                Some(argv) if argv.first().is_none_or(|a| a.trim().is_empty()) => {
                    cx.err(
                        &jat("command"),
                        Code::InvalidValue,
                        "a job's `command` needs a program as its first word",
                    );
                }
                Some(_) => {}
            }
            env_names(cx, &job.env, &jat("env"));
            local_fallback()
        }
        wire::Workload::Kubernetes(_) => {
            if job.command.is_some() || !job.env.is_empty() {
                let field = if job.command.is_some() {
                    "command"
                } else {
                    "env"
                };
                cx.err(
                    &jat(field),
                    Code::WorkloadMismatch,
                    format!(
                        "`{field}` is for local jobs; a kubernetes job runs the pod of its `template`"
                    ),
                )
                .help = Some("set the command and env on the template's container".to_owned());
            }
            let ttl = cx.dur(job.ttl.as_deref(), plan::DEFAULT_JOB_TTL, &jat("ttl"));
            let template = match &job.template {
                None => {
                    cx.err(
                        &here(&[K("job")]),
                        Code::MissingField,
                        format!("missing field `template` in the job of check `{}`", c.name),
                    )
                    .help = Some(
                        "a kubernetes job is a batch/v1 JobSpec: `template: { spec: { containers: [...], restartPolicy: Never } }`"
                            .to_owned(),
                    );
                    serde_json::Value::Null
                }
                Some(t) => {
                    template_shape(cx, t, &jat("template"));
                    t.clone()
                }
            };
            JobRun::Kubernetes { template, ttl }
        }
        wire::Workload::Lambda(_) | wire::Workload::Knative(_) => {
            let kind = match &s.workload {
                wire::Workload::Lambda(_) => "lambda",
                _ => "knative",
            };
            cx.err(
                &here(&[K("job")]),
                Code::WorkloadMismatch,
                format!("a {kind} workload's target cannot run a job"),
            )
            .help = Some(
                "jobs run on local and kubernetes targets; judge this workload by a metric check instead"
                    .to_owned(),
            );
            local_fallback()
        }
    };
    JobCheck {
        name: c.name.clone(),
        run,
        timeout,
    }
}

/// Environment names a process can be given (`[A-Za-z_][A-Za-z0-9_]*`).
fn env_names(cx: &mut Ctx<'_>, env: &BTreeMap<String, String>, at: &[P<'static>]) {
    for k in env.keys() {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            let path: Vec<P<'_>> = at.iter().copied().chain([P::K(k.as_str())]).collect();
            cx.err(
                &path,
                Code::InvalidValue,
                format!("`{k}` is not an environment variable name"),
            );
        }
    }
}

/// A JobSpec's least shape: a mapping with `template.spec.containers`, a non-empty list.
/// The API server judges the rest; rollgate sets the name, labels, deadline and TTL.
fn template_shape(cx: &mut Ctx<'_>, t: &serde_json::Value, at: &[P<'static>]) {
    let containers = t
        .get("template")
        .and_then(|p| p.get("spec"))
        .and_then(|p| p.get("containers"))
        .and_then(serde_json::Value::as_array);
    if !t.is_object() || containers.is_none_or(Vec::is_empty) {
        cx.err(
            at,
            Code::InvalidValue,
            "a job `template` is a batch/v1 JobSpec with at least one container under `template.spec.containers`",
        )
        .help = Some(
            "e.g. `template: { template: { spec: { restartPolicy: Never, containers: [ { name: smoke, image: curlimages/curl, args: [...] } ] } } }`"
                .to_owned(),
        );
    }
}

/// `spec.hooks`: each name a job check of the plan.
pub(super) fn hooks(cx: &mut Ctx<'_>, s: &wire::PlanSpec) -> Hooks {
    use P::{I, K};
    let Some(h) = &s.hooks else {
        return Hooks::default();
    };
    let jobs: Vec<&str> = s
        .checks
        .iter()
        .filter(|c| c.job.is_some())
        .map(|c| c.name.as_str())
        .collect();
    for (key, names) in [
        ("onStart", &h.on_start),
        ("beforePromote", &h.before_promote),
        ("afterRollback", &h.after_rollback),
    ] {
        for (i, n) in names.iter().enumerate() {
            let at = [K("spec"), K("hooks"), K(key), I(i)];
            if jobs.contains(&n.as_str()) {
                continue;
            }
            if s.checks.iter().any(|c| &c.name == n) {
                cx.err(
                    &at,
                    Code::InvalidValue,
                    format!("`{n}` is a metric check; hooks run job checks"),
                )
                .help = Some(format!(
                    "judge `{n}` in an analysis step, or give a check with a `job:` here"
                ));
                continue;
            }
            let hint = did_you_mean(n, jobs.iter().copied());
            cx.err(&at, Code::UnknownCheck, format!("unknown job check `{n}`"))
                .help = Some(match hint {
                Some(h) => format!("did you mean `{h}`?"),
                None if jobs.is_empty() => {
                    "declare a check with a `job:` under `spec.checks`".to_owned()
                }
                None => format!("job checks in this plan: {}", jobs.join(", ")),
            });
        }
    }
    Hooks {
        on_start: h.on_start.clone(),
        before_promote: h.before_promote.clone(),
        after_rollback: h.after_rollback.clone(),
    }
}
