//! The `local` target's job runner: a job check's command, run on this host.
//!
//! ```text
//!   STATE/jobs/<plan>/<id>/output.log   stdout and stderr of the job
//!                          job.pid      its Identity while it runs
//!                          result.json  how it ended (written once, atomically)
//! ```
//! The argv runs without a shell, in its own process group, in a cleared environment:
//! only `local::INHERITED_ENV` (PATH, HOME, locale…) and the check's `env`, so
//! rollgate's own secrets never reach it. A thread waits for it; past its `timeout`
//! the group gets SIGTERM, then SIGKILL, and the job fails with the reason and its
//! output's tail. After a daemon restart a job with no `result.json` cannot tell how
//! it ended: its leftover is stopped (by identity) and it runs again, which can only
//! delay a verdict, never give one.
//! Invariants: nothing outside `STATE/jobs/` is written; a `result.json` is final;
//! `start` of a job with a result or a waiting thread starts nothing.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::jobs::{JobRequest, JobRunner};
use super::local::inherited_env;
use super::{ErrorKind, TargetError};
use crate::dataplane::identity::Identity;
use crate::engine::JobState;
use crate::model::Plan;
use crate::model::plan::JobRun;

/// How much of the output's end is read for a reason (the engine cuts it further).
const TAIL_BYTES: u64 = 2048;
/// Between SIGTERM and SIGKILL for a job past its timeout or no longer wanted.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How a job ended, as `result.json` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Ended {
    succeeded: bool,
    /// Why it failed (empty on success).
    reason: String,
    /// The output's tail.
    output: String,
}

/// What the waiting thread is asked: run on, stop and record it, or stop and record
/// nothing (the runner is going away: the next one runs the job again).
const RUN: u8 = 0;
const STOP: u8 = 1;
const ABANDON: u8 = 2;

struct Waiter {
    stop: Arc<AtomicU8>,
    thread: Option<JoinHandle<()>>,
}

/// Jobs of local plans, under `dir` (`STATE/<target>/jobs`).
pub struct LocalJobs {
    dir: PathBuf,
    waiting: HashMap<String, Waiter>,
}

impl std::fmt::Debug for LocalJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJobs")
            .field("dir", &self.dir)
            .field("running", &self.waiting.len())
            .finish()
    }
}

fn err(kind: ErrorKind, m: impl Into<String>) -> TargetError {
    TargetError::new(kind, m)
}

impl LocalJobs {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            waiting: HashMap::new(),
        }
    }

    /// The folder of job `id` of `plan` (ids are DNS labels; anything else is refused).
    pub fn job_dir(&self, plan: &str, id: &str) -> Result<PathBuf, TargetError> {
        let safe = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !safe(plan) || !safe(id) {
            return Err(err(
                ErrorKind::Refused,
                format!("`{plan}/{id}` is not a job name"),
            ));
        }
        Ok(self.dir.join(plan).join(id))
    }

    fn key(plan: &str, id: &str) -> String {
        format!("{plan}/{id}")
    }

    /// Reap waiters whose thread has finished (their result is on disk).
    fn reap(&mut self) {
        let done: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.thread.as_ref().is_none_or(JoinHandle::is_finished))
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            if let Some(mut w) = self.waiting.remove(&k)
                && let Some(t) = w.thread.take()
            {
                let _ = t.join();
            }
        }
    }
}

fn read_result(dir: &Path) -> Option<Ended> {
    serde_json::from_slice(&std::fs::read(dir.join("result.json")).ok()?).ok()
}

fn write_result(dir: &Path, ended: &Ended) -> std::io::Result<()> {
    let tmp = dir.join("result.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(ended).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join("result.json"))
}

/// The last `TAIL_BYTES` of the output, lossily decoded.
fn output_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_owned()
}

/// SIGTERM to the job's process group, `STOP_GRACE`, then SIGKILL; reaps the child.
fn stop_group(child: &mut Child) {
    let Some(pgid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    let _ = child.wait();
}

/// Wait for the job until it exits, `timeout` passes or `stop` is set; record how it ended.
fn wait(
    mut child: Child,
    dir: PathBuf,
    timeout: Duration,
    stop: Arc<AtomicU8>,
    plan: String,
    id: String,
) {
    let deadline = Instant::now() + timeout;
    let log = dir.join("output.log");
    let ended = loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                // The group may have children left (a load generator's workers).
                if let Some(pgid) = i32::try_from(child.id())
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                let output = output_tail(&log);
                break if status.success() {
                    Ended {
                        succeeded: true,
                        reason: String::new(),
                        output,
                    }
                } else {
                    let how = match (
                        status.code(),
                        std::os::unix::process::ExitStatusExt::signal(&status),
                    ) {
                        (Some(c), _) => format!("exit status {c}"),
                        (None, Some(s)) => format!("killed by signal {s}"),
                        (None, None) => "ended abnormally".to_owned(),
                    };
                    Ended {
                        succeeded: false,
                        reason: with_output(&how, &output),
                        output,
                    }
                };
            }
            Ok(None) if stop.load(Ordering::SeqCst) == ABANDON => {
                stop_group(&mut child);
                let _ = std::fs::remove_file(dir.join("job.pid"));
                return;
            }
            Ok(None) if stop.load(Ordering::SeqCst) == STOP => {
                stop_group(&mut child);
                let output = output_tail(&log);
                break Ended {
                    succeeded: false,
                    reason: with_output("stopped: no longer wanted", &output),
                    output,
                };
            }
            Ok(None) if Instant::now() >= deadline => {
                stop_group(&mut child);
                let output = output_tail(&log);
                break Ended {
                    succeeded: false,
                    reason: with_output(
                        &format!(
                            "timed out after {}",
                            crate::model::duration::format(timeout)
                        ),
                        &output,
                    ),
                    output,
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                break Ended {
                    succeeded: false,
                    reason: format!("cannot wait for the job: {e}"),
                    output: String::new(),
                };
            }
        }
    };
    match write_result(&dir, &ended) {
        Ok(()) => {
            tracing::info!(plan = %plan, job = %id, succeeded = ended.succeeded, "job ended");
        }
        Err(e) => {
            tracing::warn!(plan = %plan, job = %id, error = %e, "cannot record the job's end")
        }
    }
    let _ = std::fs::remove_file(dir.join("job.pid"));
}

fn with_output(how: &str, output: &str) -> String {
    if output.is_empty() {
        how.to_owned()
    } else {
        format!("{how}; output: {}", crate::engine::tail(output))
    }
}

impl JobRunner for LocalJobs {
    fn start(&mut self, plan: &Plan, req: &JobRequest<'_>) -> Result<(), TargetError> {
        self.reap();
        let dir = self.job_dir(&plan.name, req.id)?;
        let key = Self::key(&plan.name, req.id);
        if self.waiting.contains_key(&key) || read_result(&dir).is_some() {
            return Ok(());
        }
        let JobRun::Command { command, env } = &req.job.run else {
            return Err(err(
                ErrorKind::Refused,
                format!(
                    "check {} is a kubernetes job; a local target runs commands",
                    req.job.name
                ),
            ));
        };
        // A job started by an earlier daemon, with no result: how it ended is unknown.
        // Its leftover is stopped (only if it is still that process) and it runs again.
        if let Some(old) = Identity::read(&dir.join("job.pid")) {
            old.stop(STOP_GRACE);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| {
            err(
                ErrorKind::Failed,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let argv: Vec<String> = command.iter().map(|a| req.fill(&plan.name, a)).collect();
        let log = std::fs::File::create(dir.join("output.log")).map_err(|e| {
            err(
                ErrorKind::Failed,
                format!("cannot create the job's log: {e}"),
            )
        })?;
        let log2 = log
            .try_clone()
            .map_err(|e| err(ErrorKind::Failed, e.to_string()))?;
        // A cleared environment: the job never inherits rollgate's own secrets (Git and
        // GitHub tokens, webhook secrets, AWS_*, metrics auth), only the allowlist and
        // the check's `env`.
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(inherited_env())
            .envs(
                env.iter()
                    .map(|(k, v)| (k.clone(), req.fill(&plan.name, v))),
            )
            .env("ROLLGATE_PLAN", &plan.name)
            .env("ROLLGATE_VERSION", req.version)
            .env("ROLLGATE_BASELINE", req.baseline.unwrap_or(""))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                // A command that cannot start is the job failing, not the runner: the
                // plan names it, and a human has to mend the plan.
                let ended = Ended {
                    succeeded: false,
                    reason: format!("cannot start `{}`: {e}", argv[0]),
                    output: String::new(),
                };
                return write_result(&dir, &ended)
                    .map_err(|e| err(ErrorKind::Failed, format!("cannot record the job: {e}")));
            }
        };
        if let Some(id) = Identity::of_spawned(child.id(), &argv) {
            let _ = id.write(&dir.join("job.pid"));
        }
        tracing::info!(plan = %plan.name, job = %req.id, argv = %argv.join(" "), "job started");
        let stop = Arc::new(AtomicU8::new(RUN));
        let thread = {
            let (dir, stop, timeout) = (dir.clone(), stop.clone(), req.job.timeout);
            let (plan, id) = (plan.name.clone(), req.id.to_owned());
            std::thread::spawn(move || wait(child, dir, timeout, stop, plan, id))
        };
        self.waiting.insert(
            key,
            Waiter {
                stop,
                thread: Some(thread),
            },
        );
        Ok(())
    }

    fn poll(&mut self, plan: &Plan, id: &str) -> Result<JobState, TargetError> {
        self.reap();
        let dir = self.job_dir(&plan.name, id)?;
        if let Some(ended) = read_result(&dir) {
            return Ok(if ended.succeeded {
                JobState::Succeeded {
                    output: ended.output,
                }
            } else {
                JobState::Failed {
                    reason: ended.reason,
                }
            });
        }
        if self.waiting.contains_key(&Self::key(&plan.name, id)) {
            return Ok(JobState::Running);
        }
        Err(err(
            ErrorKind::Failed,
            format!("job {id} is not running here and has no result"),
        ))
    }

    fn cleanup(&mut self, plan: &Plan, id: &str) -> Result<(), TargetError> {
        if let Some(mut w) = self.waiting.remove(&Self::key(&plan.name, id)) {
            w.stop.store(STOP, Ordering::SeqCst);
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        Ok(())
    }
}

impl Drop for LocalJobs {
    /// Jobs do not outlive their runner: a daemon that stops stops its jobs and records
    /// no result for them (the next one runs them again).
    fn drop(&mut self) {
        for (_, w) in self.waiting.drain() {
            w.stop.store(ABANDON, Ordering::SeqCst);
            if let Some(t) = w.thread {
                let _ = t.join();
            }
        }
    }
}
