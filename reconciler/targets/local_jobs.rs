//! The `local` target's job runner: a job check's command, run on this host by a
//! keeper process that outlives the daemon.
//!
//! ```text
//!   daemon ── start ──▶ rollgate job-run DIR (the keeper, detached)
//!                          └─▶ the job's argv (its own process group)
//!   STATE/<target>/jobs/<plan>/<id>/job.json      what to run (argv, timeout)
//!                                   keeper.pid    the keeper's Identity
//!                                   job.pid       the job's Identity
//!                                   output.log    stdout and stderr of the job
//!                                   result.json   how it ended (written once, atomically)
//! ```
//! The argv runs without a shell, in a cleared environment: only
//! `local::INHERITED_ENV` (PATH, HOME, locale…), the check's `env` and
//! `ROLLGATE_PLAN`/`ROLLGATE_VERSION`/`ROLLGATE_BASELINE`, so rollgate's own secrets
//! never reach it (the keeper gets that environment too). Past its `timeout` the job's
//! group gets SIGTERM, then SIGKILL, and it fails with the reason and its output's
//! tail. The keeper is not the daemon's: a daemon killed or restarted meanwhile finds
//! the job by its id, running (the keeper's identity is alive) or ended (its result).
//! Invariants: nothing outside the jobs folder is written; a `result.json` is final;
//! `start` of a job with a result or a live keeper starts nothing; a job whose keeper
//! died without a result (killed) has no result, never a pass, and runs again.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
/// How long `start` waits for the keeper to have started the job.
const KEEPER_START: Duration = Duration::from_secs(5);
/// Between SIGTERM and SIGKILL for a job past its timeout or no longer wanted.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What the keeper runs (`job.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Spec {
    argv: Vec<String>,
    timeout_ms: u64,
}

/// How a job ended, as `result.json` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Ended {
    succeeded: bool,
    /// Why it failed (empty on success).
    reason: String,
    /// The output's tail.
    output: String,
}

/// Jobs of local plans, under `dir` (`STATE/local/<target>/jobs`).
pub struct LocalJobs {
    dir: PathBuf,
    /// The program that keeps a job: this binary (`rollgate job-run`).
    keeper: PathBuf,
    /// Keepers this runner started, reaped once they exit (they are its children).
    children: HashMap<String, Child>,
}

impl std::fmt::Debug for LocalJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJobs")
            .field("dir", &self.dir)
            .field("keeper", &self.keeper)
            .finish_non_exhaustive()
    }
}

fn err(kind: ErrorKind, m: impl Into<String>) -> TargetError {
    TargetError::new(kind, m)
}

impl LocalJobs {
    /// Jobs under `dir`, kept by this very binary (the daemon's).
    pub fn new(dir: PathBuf) -> Self {
        let keeper = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rollgate"));
        Self::with_keeper(dir, keeper)
    }

    /// Jobs under `dir`, kept by `keeper` (a `rollgate` binary; tests name the built one).
    pub fn with_keeper(dir: PathBuf, keeper: PathBuf) -> Self {
        Self {
            dir,
            keeper,
            children: HashMap::new(),
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

    /// Reap the keepers that exited.
    fn reap(&mut self) {
        self.children
            .retain(|_, c| matches!(c.try_wait(), Ok(None)));
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

/// Is the keeper of the job in `dir` alive (the very process that was started)?
fn keeper_alive(dir: &Path) -> bool {
    Identity::read(&dir.join("keeper.pid")).is_some_and(|id| id.is_alive())
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

fn pgid_of(pid: u32) -> Option<rustix::process::Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
}

/// SIGTERM to the job's process group, `STOP_GRACE`, then SIGKILL; reaps the child.
fn stop_group(child: &mut Child) {
    let Some(pgid) = pgid_of(child.id()) else {
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

/// Stop a job left by a keeper that died: its whole process group (the job leads it),
/// but only while the leader is still the process recorded, so a recycled pid is never
/// signalled.
fn stop_leftover(job: &Identity) {
    let Some(pgid) = pgid_of(job.pid) else {
        return;
    };
    if !job.is_alive() {
        return;
    }
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + STOP_GRACE;
    while job.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
}

fn with_output(how: &str, output: &str) -> String {
    if output.is_empty() {
        how.to_owned()
    } else {
        format!("{how}; output: {}", crate::engine::tail(output))
    }
}

/// The keeper (`rollgate job-run DIR`): run the job `DIR/job.json` describes in its
/// own process group, with this process's (already cleared) environment, until it
/// exits, its timeout passes or `DIR/stop` appears; record how it ended.
pub fn keep(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let spec: Spec =
        serde_json::from_slice(&std::fs::read(dir.join("job.json")).context("read job.json")?)
            .context("parse job.json")?;
    let log_path = dir.join("output.log");
    let log = std::fs::File::create(&log_path).context("create output.log")?;
    let timeout = Duration::from_millis(spec.timeout_ms);
    let Some(program) = spec.argv.first() else {
        anyhow::bail!("job.json names no program");
    };
    let spawned = Command::new(program)
        .args(&spec.argv[1..])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // A command that cannot start is the job failing: the plan names it.
            return Ok(write_result(
                dir,
                &Ended {
                    succeeded: false,
                    reason: format!("cannot start `{program}`: {e}"),
                    output: String::new(),
                },
            )?);
        }
    };
    if let Some(id) = Identity::of_spawned(child.id(), &spec.argv) {
        let _ = id.write(&dir.join("job.pid"));
    }
    let deadline = Instant::now() + timeout;
    let ended = loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                // What the job left in its group (a load generator's workers) goes too.
                if let Some(pgid) = pgid_of(child.id()) {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                let output = output_tail(&log_path);
                break if status.success() {
                    Ended {
                        succeeded: true,
                        reason: String::new(),
                        output,
                    }
                } else {
                    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
                    let how = match (status.code(), signal) {
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
            Ok(None) if dir.join("stop").exists() => {
                stop_group(&mut child);
                let output = output_tail(&log_path);
                break Ended {
                    succeeded: false,
                    reason: with_output("stopped: no longer wanted", &output),
                    output,
                };
            }
            Ok(None) if Instant::now() >= deadline => {
                stop_group(&mut child);
                let output = output_tail(&log_path);
                let how = format!(
                    "timed out after {}",
                    crate::model::duration::format(timeout)
                );
                break Ended {
                    succeeded: false,
                    reason: with_output(&how, &output),
                    output,
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                stop_group(&mut child);
                break Ended {
                    succeeded: false,
                    reason: format!("cannot wait for the job: {e}"),
                    output: String::new(),
                };
            }
        }
    };
    write_result(dir, &ended)?;
    let _ = std::fs::remove_file(dir.join("job.pid"));
    Ok(())
}

impl JobRunner for LocalJobs {
    fn start(&mut self, plan: &Plan, req: &JobRequest<'_>) -> Result<(), TargetError> {
        self.reap();
        let dir = self.job_dir(&plan.name, req.id)?;
        if read_result(&dir).is_some() || keeper_alive(&dir) {
            return Ok(()); // ended, or running: found by its id
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
        // A job whose keeper died without a result (killed): how it ended is unknown.
        // What is left of it is stopped (only if it is still that process), and it
        // runs again.
        if let Some(old) = Identity::read(&dir.join("job.pid")) {
            stop_leftover(&old);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let io = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| err(ErrorKind::Failed, format!("{what}: {e}"))
        };
        std::fs::create_dir_all(&dir).map_err(io("create the job's folder"))?;
        let spec = Spec {
            argv: command.iter().map(|a| req.fill(&plan.name, a)).collect(),
            timeout_ms: u64::try_from(req.job.timeout.as_millis()).unwrap_or(u64::MAX),
        };
        std::fs::write(
            dir.join("job.json"),
            serde_json::to_vec(&spec).map_err(|e| err(ErrorKind::Failed, e.to_string()))?,
        )
        .map_err(io("write job.json"))?;
        // A cleared environment: the job (and its keeper) never inherit rollgate's own
        // secrets (Git and GitHub tokens, webhook secrets, AWS_*, metrics auth), only
        // the allowlist and the check's `env`. Its own process group: a signal to the
        // daemon's group (a Ctrl-C, a service manager's stop) does not reach it.
        let keeper = Command::new(&self.keeper)
            .arg("job-run")
            .arg(&dir)
            .env_clear()
            .envs(inherited_env())
            .envs(
                env.iter()
                    .map(|(k, v)| (k.clone(), req.fill(&plan.name, v))),
            )
            .env("ROLLGATE_PLAN", &plan.name)
            .env("ROLLGATE_VERSION", req.version)
            .env("ROLLGATE_BASELINE", req.baseline.unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io("cannot start the job's keeper"))?;
        let argv = vec![
            self.keeper.display().to_string(),
            "job-run".to_owned(),
            dir.display().to_string(),
        ];
        if let Some(id) = Identity::of_spawned(keeper.id(), &argv) {
            id.write(&dir.join("keeper.pid"))
                .map_err(io("record the job's keeper"))?;
        }
        let key = format!("{}/{}", plan.name, req.id);
        self.children.insert(key.clone(), keeper);
        // Return once the job runs (or ended, or could not start): a `poll` right after
        // sees it running, never a keeper still on its way through `exec`.
        let deadline = Instant::now() + KEEPER_START;
        while Instant::now() < deadline
            && !dir.join("job.pid").exists()
            && read_result(&dir).is_none()
        {
            if self
                .children
                .get_mut(&key)
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
            {
                break; // the keeper exited: its result says how, or there is none
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        tracing::info!(plan = %plan.name, job = %req.id, argv = %spec.argv.join(" "), "job started");
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
        if keeper_alive(&dir) {
            return Ok(JobState::Running);
        }
        // The keeper may have just written its result and exited.
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
        Err(err(
            ErrorKind::Failed,
            format!("job {id} is not running and has no result"),
        ))
    }

    fn cleanup(&mut self, plan: &Plan, id: &str) -> Result<(), TargetError> {
        let dir = self.job_dir(&plan.name, id)?;
        if read_result(&dir).is_some() || !keeper_alive(&dir) {
            return Ok(());
        }
        // The keeper stops the job's group and records it as stopped.
        std::fs::write(dir.join("stop"), b"")
            .map_err(|e| err(ErrorKind::Failed, format!("cannot stop job {id}: {e}")))?;
        let deadline = Instant::now() + STOP_GRACE * 3;
        while keeper_alive(&dir) && Instant::now() < deadline {
            self.reap();
            std::thread::sleep(Duration::from_millis(10));
        }
        self.reap();
        Ok(())
    }
}
