//! The order of one pass: rollbacks, aborts and human reverts first, then new changes,
//! then routine transitions; and when routine work yields to new commits.
//!
//! ```text
//!  urgent (all) ─▶ flush ─▶ new changes, in chunks ─▶ flush ─▶ routine, in chunks
//!                                                      ▲            │ each chunk: flush; every
//!                                                      │            │ CHUNK_TIME: new commits?
//!                                                      └─── no ─────┤ (a fetch)
//!                                                                   └─ yes ─▶ yield
//! ```
//! Invariants: pure (no I/O, no clock: the caller says what it saw); every plan has
//! exactly one place in the order; routine plans start after the one a yielded pass
//! stopped at, so a busy branch cannot starve the plans at the end of the list.

use std::time::Duration;

use crate::engine::Command;
use crate::model::status::{Phase, Status};

/// Routine work checks for new commits after at most this many plans (`ChunkSize`)…
pub const CHUNK_PLANS: usize = 250;
/// …or after this long, whichever comes first…
pub const CHUNK_TIME: Duration = Duration::from_millis(200);
/// …but never before this many (a small pass stays one commit, however slow).
pub const CHUNK_MIN_PLANS: usize = 10;

/// Whether a chunk of `plans` routine plans that took `took` is done, at `size` plans.
pub fn chunk_done(plans: usize, took: Duration, size: ChunkSize) -> bool {
    plans >= size.plans() || (plans >= CHUNK_MIN_PLANS && took >= CHUNK_TIME)
}

/// How many plans a chunk holds, and a status commit carries on its first tries, from
/// how the last commits fared: `CHUNK_PLANS` while the branch is quiet (a chunk's commit
/// and push cost about as much as 100 plans' decisions, so fewer, larger chunks make a
/// pass of 1,000 transitions a third shorter), smaller after each commit that lost a race
/// to another writer, down to `CHUNK_MIN_PLANS`, and doubled back after each commit
/// pushed at the first try. A large commit pushes longer, so while humans push to the
/// branch it loses more races, and every plan in it waits for its push (ten humans
/// pushing: 250-plan chunks throughout put p99 from decision to push at 18.8 s, against
/// 8.6 s with 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSize(usize);

impl Default for ChunkSize {
    fn default() -> Self {
        Self(CHUNK_PLANS)
    }
}

impl ChunkSize {
    pub fn plans(self) -> usize {
        self.0
    }

    /// After a status commit of `carried` plans: pushed at the `attempts`th try (`None`:
    /// not pushed). A commit that won only after losing races sets the size to what it
    /// carried (the plans left out of it start their own commit from there, not from the
    /// full size that just lost).
    #[must_use]
    pub fn after_commit(self, attempts: Option<u32>, carried: usize) -> Self {
        match attempts {
            Some(1) => Self((self.0 * 2).min(CHUNK_PLANS)),
            Some(_) => Self((self.0 / 2).min(carried).max(CHUNK_MIN_PLANS)),
            None => Self((self.0 / 2).max(CHUNK_MIN_PLANS)),
        }
    }
}

/// Whether a pass that last looked for new commits `since` ago looks again at the end
/// of this chunk (a look is a fetch: chunks of idle plans are quick, and a look per
/// chunk cost more than the plans).
pub fn check_due(since: Duration) -> bool {
    since >= CHUNK_TIME
}

/// How soon a plan is looked at in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// A rollback in flight, an abort, or a human revert (or any change) of a rollout in
    /// flight: acted on before anything else.
    Urgent,
    /// A plan changed by a commit not yet acted on, or a command other than abort.
    New,
    /// Everything else: the next step of a rollout, a measurement, an idle check.
    Routine,
}

/// What the pass knows of one plan when it orders them.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// The artifact the plan names now.
    pub artifact: &'a str,
    /// Its status (`None`: never rolled out).
    pub status: Option<&'a Status>,
    /// Its plan file changed in a commit not yet acted on.
    pub changed: bool,
    /// Commands not yet acted on.
    pub commands: &'a [Command],
    /// The last status this daemon recorded was RollingBack.
    pub rolling_back: bool,
}

/// The priority of one plan.
pub fn priority(seen: &Seen<'_>) -> Priority {
    if seen.commands.contains(&Command::Abort) || seen.rolling_back {
        return Priority::Urgent;
    }
    if let Some(s) = seen.status {
        if s.phase == Phase::RollingBack {
            return Priority::Urgent;
        }
        if seen.changed && s.candidate != seen.artifact {
            // Changed while in flight (a revert, or a newer change that supersedes it),
            // or back to a version that was stable (a revert of a finished rollout).
            let was_stable = s.stable.as_deref() == Some(seen.artifact)
                || s.succeeded.iter().any(|x| x.artifact == seen.artifact);
            if s.phase.is_in_flight() || was_stable {
                return Priority::Urgent;
            }
        }
    }
    if seen.changed || !seen.commands.is_empty() {
        Priority::New
    } else {
        Priority::Routine
    }
}

/// The pass's order: `plans` (name, priority; in name order) sorted by priority, the
/// routine ones rotated to start after `cursor` (where a yielded pass stopped).
pub fn order(plans: Vec<(String, Priority)>, cursor: Option<&str>) -> Vec<(String, Priority)> {
    let (mut first, mut routine): (Vec<_>, Vec<_>) = plans
        .into_iter()
        .partition(|(_, p)| *p != Priority::Routine);
    first.sort_by_key(|(_, p)| *p);
    let start = cursor.map_or(0, |c| routine.partition_point(|(n, _)| n.as_str() <= c));
    routine.rotate_left(start);
    first.append(&mut routine);
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::status::Success;

    fn status(phase: Phase, candidate: &str, stable: Option<&str>) -> Status {
        let mut s = Status::pending("web", candidate, "abc");
        s.phase = phase;
        s.stable = stable.map(str::to_owned);
        s
    }

    fn seen<'a>(artifact: &'a str, status: Option<&'a Status>, changed: bool) -> Seen<'a> {
        Seen {
            artifact,
            status,
            changed,
            commands: &[],
            rolling_back: false,
        }
    }

    #[test]
    fn a_human_revert_of_a_rollout_in_flight_is_urgent() {
        let s = status(Phase::Paused, "v2", Some("v1"));
        assert_eq!(priority(&seen("v1", Some(&s), true)), Priority::Urgent);
        // The same plan with nothing new is routine.
        assert_eq!(priority(&seen("v2", Some(&s), false)), Priority::Routine);
    }

    #[test]
    fn a_revert_of_a_finished_rollout_to_a_recent_stable_version_is_urgent() {
        let mut s = status(Phase::Succeeded, "v2", Some("v2"));
        s.succeeded = vec![Success {
            artifact: "v1".to_owned(),
            at: chrono::DateTime::UNIX_EPOCH,
        }];
        assert_eq!(priority(&seen("v1", Some(&s), true)), Priority::Urgent);
        // A new version of a finished rollout is a new change, not urgent.
        assert_eq!(priority(&seen("v3", Some(&s), true)), Priority::New);
    }

    #[test]
    fn aborts_and_rollbacks_in_flight_are_urgent_other_commands_are_new() {
        let s = status(Phase::Paused, "v2", Some("v1"));
        let abort = [Command::Abort];
        let promote = [Command::Promote];
        let mut x = seen("v2", Some(&s), false);
        x.commands = &abort;
        assert_eq!(priority(&x), Priority::Urgent);
        x.commands = &promote;
        assert_eq!(priority(&x), Priority::New);
        let back = status(Phase::RollingBack, "v2", Some("v1"));
        assert_eq!(priority(&seen("v2", Some(&back), false)), Priority::Urgent);
        assert_eq!(priority(&seen("v1", None, true)), Priority::New);
    }

    #[test]
    fn a_chunk_ends_at_its_size_or_its_time_but_a_small_one_never_on_time() {
        let quiet = ChunkSize::default();
        assert!(chunk_done(CHUNK_PLANS, Duration::ZERO, quiet));
        assert!(!chunk_done(CHUNK_PLANS - 1, Duration::ZERO, quiet));
        assert!(chunk_done(CHUNK_MIN_PLANS, CHUNK_TIME, quiet));
        assert!(check_due(CHUNK_TIME) && !check_due(CHUNK_TIME / 2));
        assert!(!chunk_done(
            CHUNK_MIN_PLANS - 1,
            Duration::from_secs(60),
            quiet
        ));
        let contended = quiet.after_commit(Some(3), 100);
        assert!(chunk_done(contended.plans(), Duration::ZERO, contended));
        assert!(!chunk_done(contended.plans(), Duration::ZERO, quiet));
    }

    #[test]
    fn chunks_shrink_while_commits_lose_races_and_grow_back_while_they_win() {
        let mut size = ChunkSize::default();
        assert_eq!(size.plans(), CHUNK_PLANS);
        let mut seen = vec![size.plans()];
        for (attempts, carried) in [
            (Some(2), 250),
            (Some(5), 20),
            (None, 20),
            (Some(2), 5),
            (Some(9), 1),
        ] {
            size = size.after_commit(attempts, carried);
            seen.push(size.plans());
        }
        assert_eq!(seen, [250, 125, 20, 10, 10, 10]);
        for _ in 0..3 {
            size = size.after_commit(Some(1), 10);
            seen.push(size.plans());
        }
        assert_eq!(seen[6..], [20, 40, 80]);
        for _ in 0..3 {
            size = size.after_commit(Some(1), 10);
        }
        assert_eq!(size.plans(), CHUNK_PLANS, "never past the quiet size");
    }

    #[test]
    fn urgent_plans_come_first_and_routine_ones_resume_after_the_cursor() {
        let plans = vec![
            ("a".to_owned(), Priority::Routine),
            ("b".to_owned(), Priority::New),
            ("c".to_owned(), Priority::Routine),
            ("d".to_owned(), Priority::Urgent),
            ("e".to_owned(), Priority::Routine),
        ];
        let names = |v: Vec<(String, Priority)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(order(plans.clone(), None)), ["d", "b", "a", "c", "e"]);
        assert_eq!(
            names(order(plans.clone(), Some("c"))),
            ["d", "b", "e", "a", "c"]
        );
        assert_eq!(names(order(plans, Some("z"))), ["d", "b", "a", "c", "e"]);
    }
}
