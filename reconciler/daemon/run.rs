//! The daemon's loop around `Reconciler::tick`: when to pass again, how to back off, and
//! when `run --once` is done.
//!
//! Invariants: a stand-by replica (leader election on, lease not held) makes no pass at
//! all, so it never writes to Git nor calls a target; a failed pass (the remote cannot be
//! fetched) changed nothing and is retried with a jittered exponential backoff, its
//! cause logged once; a pass that moved something is followed at once by another; an
//! idle daemon sleeps until the next wake-up the plans asked for, the fetch interval, or
//! a push (`wake`), whichever comes first; before the first such sleep after passes that
//! moved rollouts (unless new work is already waiting: it goes first), what the daemon
//! keeps is allocated again side by side (`Reconciler::compact`) when enough has changed
//! since it last was (`compact_due`), and the memory the burst freed is handed back
//! (`memory::release`), so pages with nothing live on them do not stay resident.
//! `--once` waits for rollouts that move on by themselves within `ONCE_WAITS_AT_MOST`,
//! and reports plans that failed.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;

use super::{Reconciler, TickReport};
use crate::leader::Leadership;
use crate::server::Health;
use crate::source::git::GitSource;
use crate::source::remote::RemoteError;

/// `run --once` waits for a rollout that moves on by itself within this long (an
/// analysis, a timed pause); a longer wait (a change window, a long pause) ends the run.
pub const ONCE_WAITS_AT_MOST: Duration = Duration::from_secs(10 * 60);

/// `run --once` ends (plans failed) after this many passes in a row that moved nothing
/// and had a plan fail, even while another rollout would still move on.
pub const ONCE_ERROR_PASSES: u32 = 5;

/// How the loop runs.
pub struct Options<'a> {
    /// `run --once`: return when nothing moves on by itself soon.
    pub once: bool,
    /// The longest sleep between two passes (`--interval`).
    pub interval: Duration,
    /// Leader election, when on: only the leader passes.
    pub leadership: Option<&'a Leadership>,
    /// Liveness and readiness as `/healthz` and `/readyz` report them.
    pub health: &'a Health,
    /// Wakes the loop before its time: a push seen on a local remote or a webhook.
    pub wake: &'a Receiver<()>,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("once", &self.once)
            .field("interval", &self.interval)
            .field("leader_elect", &self.leadership.is_some())
            .finish_non_exhaustive()
    }
}

/// How a `--once` run ended (a daemon's loop never ends but with an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Nothing moves on by itself soon, and no plan failed.
    Idle,
    /// This many plans could not be reconciled (an error, or a target that refused).
    PlansFailed(usize),
}

/// Pass after pass; `after_pass` sees every successful one (the GitHub reporter).
pub fn run(
    rec: &mut Reconciler,
    o: &Options<'_>,
    after_pass: &mut dyn FnMut(&Reconciler, &TickReport),
) -> Result<Finished> {
    let mut failures: u32 = 0;
    // Quiet passes in a row with a failing plan (`--once`).
    let mut erring_passes: u32 = 0;
    let mut last_cause: Option<String> = None;
    // Passes moved rollouts since the daemon last rested: the burst's freed memory is
    // handed back once it does (`memory`).
    let mut burst = false;
    // Status and revert commits written since the daemon last compacted (`compact_due`).
    let mut changes: usize = 0;
    loop {
        if let Some(l) = o.leadership
            && !l.is_leader(Utc::now())
        {
            // A stand-by: no Git write, no target call. Ready once it sees the lease, so
            // a rolling update of rollgate itself can proceed.
            o.health.ready.store(l.standing_by(), Ordering::Relaxed);
            std::thread::sleep(l.retry_period());
            while o.wake.try_recv().is_ok() {}
            continue;
        }
        let report = match rec.tick(Utc::now()) {
            Ok(r) => {
                if failures > 0 {
                    tracing::info!(after = failures, "pass succeeded again");
                }
                failures = 0;
                last_cause = None;
                o.health.set(Ok(()));
                r
            }
            Err(e) => {
                // Nothing was changed: a pass that cannot fetch stops before any
                // decision. Back off (exponential, jittered, capped) instead of spinning;
                // a repeat of the same error is logged at debug only.
                failures += 1;
                let message = format!("{e:#}");
                let remote = e.downcast_ref::<RemoteError>();
                let permanent = remote.is_some_and(|r| !r.is_transient());
                let backoff = failure_backoff(failures);
                // The same cause is logged once: a remote error by its kind (git words
                // one refusal differently from try to try), anything else by its text.
                let cause = match remote {
                    Some(r) => format!("{:?}", std::mem::discriminant(r)),
                    None => message.clone(),
                };
                if last_cause.as_deref() != Some(cause.as_str()) {
                    if permanent {
                        tracing::error!(error = %message, retry_in_s = backoff.as_secs(), "the remote refuses; holding until it is fixed");
                    } else {
                        tracing::warn!(error = %message, retry_in_s = backoff.as_secs(), "pass failed; retrying with backoff");
                    }
                } else {
                    tracing::debug!(error = %message, failures, "pass failed again");
                }
                if permanent || failures >= 3 {
                    o.health.set(Err(message.clone()));
                }
                last_cause = Some(cause);
                if o.once {
                    anyhow::bail!("{message}");
                }
                // Only a push webhook or the backoff ends the wait (file events from a
                // broken remote would otherwise spin the loop).
                std::thread::sleep(backoff);
                while o.wake.try_recv().is_ok() {}
                continue;
            }
        };
        after_pass(rec, &report);
        changes += report.transitions + report.reverts;
        let moved = report.transitions > 0 || report.reverts > 0 || report.yielded;
        if o.once && !moved {
            // A rollout that moves on by itself soon (an analysis measuring, a timed
            // pause) is waited for; one that waits on a human, a change window or a
            // long pause ends the run. Plans that could not be reconciled fail it.
            let soon = report
                .moves_on_at
                .and_then(|w| (w - Utc::now()).to_std().ok());
            // A plan's error does not end the run while another rollout still moves on
            // by itself (its next step would be lost); an error that lasts
            // ONCE_ERROR_PASSES quiet passes does.
            erring_passes = if report.errors > 0 {
                erring_passes + 1
            } else {
                0
            };
            match soon {
                Some(d) if d <= ONCE_WAITS_AT_MOST && erring_passes < ONCE_ERROR_PASSES => {
                    std::thread::sleep(d.max(Duration::from_millis(20)));
                    continue;
                }
                _ if report.errors > 0 || report.held_on_target > 0 => {
                    return Ok(Finished::PlansFailed(report.errors + report.held_on_target));
                }
                _ => return Ok(Finished::Idle),
            }
        }
        if moved {
            burst = true;
            continue;
        }
        if burst {
            if o.wake.try_recv().is_ok() {
                // New work came in as the burst ended: it goes first, and the tidying
                // waits for the next rest.
                coalesce(o.wake);
                continue;
            }
            burst = false;
            let started = std::time::Instant::now();
            let compacted = compact_due(changes, rec.report().accepted.len());
            if compacted {
                rec.compact();
                changes = 0;
            }
            let released = crate::memory::release();
            tracing::debug!(
                compacted,
                released,
                took_ms = started.elapsed().as_millis() as u64,
                "memory freed by the burst handed back"
            );
        }
        let wait = report
            .next_wakeup
            .and_then(|w| (w - Utc::now()).to_std().ok())
            .map_or(o.interval, |d| d.min(o.interval))
            .max(Duration::from_millis(20));
        if o.wake.recv_timeout(wait).is_ok() {
            coalesce(o.wake);
        }
    }
}

/// After a first wake-up: take the rest of a burst of file events with it, so they make
/// one pass.
fn coalesce(wake: &Receiver<()>) {
    std::thread::sleep(Duration::from_millis(5));
    while wake.try_recv().is_ok() {}
}

/// Whether the daemon, resting after a burst, compacts what it keeps
/// (`Reconciler::compact`): once the status and revert commits written since it last did
/// reach an eighth of the plans, and at least 32. A compaction copies every plan's parse
/// and status view twice (about 100 ms with 10,000 plans): worth it after a mass change,
/// whose survivors would pin its freed pages, not after each small rollout, whose few
/// survivors add up slowly until a later rest compacts them with the rest.
pub fn compact_due(changes: usize, plans: usize) -> bool {
    changes >= (plans / 8).max(32)
}

/// The first fetch, retried with backoff while the remote is unreachable (a daemon that
/// starts before its Git server); `once` or a permanent refusal fails at once.
pub fn first_fetch(src: &GitSource, once: bool) -> Result<git2::Oid> {
    let mut failures = 0;
    loop {
        match src.fetch() {
            Ok(head) => return Ok(head),
            Err(e) => {
                let transient = e
                    .downcast_ref::<RemoteError>()
                    .is_some_and(RemoteError::is_transient);
                if once || !transient {
                    return Err(e);
                }
                failures += 1;
                let wait = failure_backoff(failures);
                tracing::warn!(error = %format!("{e:#}"), retry_in_s = wait.as_secs(), "cannot fetch yet; retrying");
                std::thread::sleep(wait);
            }
        }
    }
}

/// The wait after `failures` failed passes in a row: 1 s doubling to 5 min, each
/// within -25%..+25%.
pub fn failure_backoff(failures: u32) -> Duration {
    let base = 1000u64
        .saturating_mul(1 << failures.saturating_sub(1).min(9))
        .min(300_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos) % (base / 2 + 1);
    Duration::from_millis(base - base / 4 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rest_compacts_after_a_mass_change_and_after_small_rollouts_only_once_they_add_up() {
        // A mass change of 1,000 plans writes about three commits a plan: compacted.
        assert!(compact_due(3_000, 1_000));
        // One rollout (four commits) among 10,000 plans: not yet, nor after 300 of them.
        assert!(!compact_due(4, 10_000));
        assert!(!compact_due(1_200, 10_000));
        // After 313 such rollouts (1,252 commits, an eighth of the plans): compacted.
        assert!(compact_due(1_252, 10_000));
        // A small repository compacts after 32 commits, not after every one.
        assert!(!compact_due(31, 10));
        assert!(compact_due(32, 10));
    }

    #[test]
    fn the_backoff_doubles_within_a_quarter_and_stops_at_five_minutes() {
        for (failures, base) in [(1, 1_000u64), (2, 2_000), (5, 16_000), (9, 256_000)] {
            let d = failure_backoff(failures).as_millis() as u64;
            assert!(
                (base - base / 4..=base + base / 4).contains(&d),
                "{failures}: {d}"
            );
        }
        for failures in [10, 20, u32::MAX] {
            let d = failure_backoff(failures).as_millis() as u64;
            assert!((225_000..=375_000).contains(&d), "{failures}: {d}");
        }
    }
}
