//! Job checks' extension point: `JobRunner`, one per target that can run a job.
//!
//! ```text
//!   engine::due_jobs ──▶ daemon: start(id) ─▶ poll(id) ─▶ JobObserved ─▶ engine::decide
//!                               (idempotent)   Running | Succeeded{tail} | Failed{reason}
//! ```
//! Implemented by `local_jobs.rs` (a command on this host) and
//! `kubernetes/jobs.rs` (a `batch/v1` Job from the plan's template). A job is named by
//! the deterministic id the engine derives from the rollout, the step and the check
//! (`engine::job_id`), so a restarted daemon finds the job it started.
//! Invariants: every method is idempotent; `start` of a job that exists (running or
//! finished) starts nothing; `poll` of a job never started is an error, never a pass;
//! a job's environment never carries rollgate's own (see `local::INHERITED_ENV`).
//! `contract` holds the test every implementation passes.

use super::TargetError;
use crate::engine::JobState;
use crate::model::Plan;
use crate::model::plan::JobCheck;

/// One job to run: which check, under which id, for which versions.
#[derive(Debug, Clone, Copy)]
pub struct JobRequest<'a> {
    /// `engine::job_id`: a DNS label, the same for the same step of the same rollout.
    pub id: &'a str,
    pub job: &'a JobCheck,
    /// The candidate (`{{version}}`).
    pub version: &'a str,
    /// The stable version (`{{baseline}}`), if any.
    pub baseline: Option<&'a str>,
}

impl JobRequest<'_> {
    /// `text` with `{{plan}}`, `{{version}}` and `{{baseline}}` filled in.
    pub fn fill(&self, plan: &str, text: &str) -> String {
        text.replace("{{plan}}", plan)
            .replace("{{version}}", self.version)
            .replace("{{baseline}}", self.baseline.unwrap_or(""))
    }
}

/// Runs job checks on a target.
pub trait JobRunner: Send {
    /// Start the job unless one with this id exists (running or finished).
    fn start(&mut self, plan: &Plan, req: &JobRequest<'_>) -> Result<(), TargetError>;
    /// Where job `id` stands.
    fn poll(&mut self, plan: &Plan, id: &str) -> Result<JobState, TargetError>;
    /// Stop job `id` if it still runs (no longer wanted: the rollout moved on); what a
    /// finished job left (its output, a Job kept for its TTL) stays.
    fn cleanup(&mut self, plan: &Plan, id: &str) -> Result<(), TargetError>;
}

/// The contract every `JobRunner` passes (run by each one's tests: the local runner in
/// `tests/it/jobs.rs` with real commands, the Kubernetes runner in
/// `tests/it/kubernetes_jobs.rs` on the in-memory cluster, whose Job controller the test
/// plays in `settle`).
pub mod contract {
    use super::{JobRequest, JobRunner};
    use crate::engine::JobState;
    use crate::model::Plan;
    use crate::model::plan::JobCheck;

    /// The jobs the contract runs, in the form the runner's target takes.
    #[derive(Debug)]
    pub struct Jobs {
        /// Succeeds, printing `ok-output` (the runner's output tail shows it, if it has one).
        pub succeeds: JobCheck,
        /// Fails.
        pub fails: JobCheck,
        /// Runs until stopped.
        pub runs: JobCheck,
    }

    /// Poll `id` until it is not `Running` (calling `settle` between polls).
    pub fn finish(
        runner: &mut dyn JobRunner,
        plan: &Plan,
        id: &str,
        settle: &mut dyn FnMut(&str),
        polls: usize,
        pause: std::time::Duration,
    ) -> JobState {
        for _ in 0..polls {
            let state = runner.poll(plan, id).expect("poll");
            if state != JobState::Running {
                return state;
            }
            settle(id);
            std::thread::sleep(pause);
        }
        panic!("job {id} still running after {polls} polls");
    }

    /// Run the contract; panics with the first broken promise. `prefix` keeps the ids
    /// of one run apart from another's.
    pub fn run(
        runner: &mut dyn JobRunner,
        plan: &Plan,
        jobs: &Jobs,
        prefix: &str,
        settle: &mut dyn FnMut(&str),
        polls: usize,
        pause: std::time::Duration,
    ) {
        let req = |id: &'static str, job| JobRequest {
            id,
            job,
            version: "v2",
            baseline: Some("v1"),
        };
        let ids = |n: &str| format!("{prefix}-{n}");
        let (ok, bad, long) = (ids("ok"), ids("bad"), ids("long"));
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let (ok, bad, long) = (leak(ok), leak(bad), leak(long));

        assert!(
            runner.poll(plan, ok).is_err(),
            "a job never started is an error, never a result"
        );
        for _ in 0..2 {
            runner
                .start(plan, &req(ok, &jobs.succeeds))
                .expect("start the succeeding job (twice: idempotent)");
        }
        let state = finish(runner, plan, ok, settle, polls, pause);
        assert!(
            matches!(state, JobState::Succeeded { .. }),
            "a succeeding job succeeds: {state:?}"
        );
        runner
            .start(plan, &req(ok, &jobs.succeeds))
            .expect("start again");
        assert_eq!(
            runner.poll(plan, ok).expect("poll"),
            state,
            "starting a finished job again runs nothing: its result stays"
        );

        runner
            .start(plan, &req(bad, &jobs.fails))
            .expect("start the failing job");
        match finish(runner, plan, bad, settle, polls, pause) {
            JobState::Failed { reason } => {
                assert!(!reason.trim().is_empty(), "a failure says why")
            }
            other => panic!("a failing job fails: {other:?}"),
        }

        runner
            .start(plan, &req(long, &jobs.runs))
            .expect("start the long job");
        assert_eq!(
            runner.poll(plan, long).expect("poll"),
            JobState::Running,
            "a job that has not ended runs"
        );
        for _ in 0..2 {
            runner
                .cleanup(plan, long)
                .expect("cleanup of a running job (twice: idempotent)");
        }
        assert!(
            !matches!(runner.poll(plan, long), Ok(JobState::Succeeded { .. })),
            "a job stopped by cleanup never passes"
        );
        runner.cleanup(plan, ok).expect("cleanup of a finished job");
    }
}
