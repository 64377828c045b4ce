//! Moving the status files to the configured layout (`writeBack.statusLayout`) in one
//! commit, so a repository that turns sharding on (or off), or that `auto` moves as it
//! grows past 2,000 plans or shrinks below 1,000, is all in one layout after the next
//! pass, not only the plans that moved since.
//!
//! Invariants: the commit only moves files (each status keeps its content, read at the
//! head the commit is made on, recomputed after a lost race like any write); it carries
//! the `Rollgate-Status-Layout` trailer, so it is rollgate's own (never a command, and
//! its status changes are trusted); a dry run moves nothing; settings that do not read
//! (a broken `rollgate.yaml`) move nothing; when the move fails, the next pass tries
//! again.

use super::*;

impl Reconciler {
    /// After a new head is taken in (or when the last move failed): when some status file
    /// is stored in the other layout than the settings pick, move them all in one commit.
    pub(super) fn settle_status_layout(&mut self) {
        self.layout_retry = false;
        // Only on settings that were read: a broken `rollgate.yaml` (the default layout
        // in its place) must not move every status file back and forth.
        if self.report.settings.is_none() {
            return;
        }
        let layout = self.status_layout();
        let misplaced = self
            .snapshot
            .misplaced_status(layout == StatusLayout::Sharded);
        if misplaced == 0 || self.dry_run {
            return;
        }
        let wb = self.write_back();
        let writer = Writer::new(&self.src, &wb);
        let outcome = writer.write(|head| {
            let edits = self.src.misplaced_status(head, layout)?;
            Ok((!edits.is_empty()).then(|| messages::layout_commit(layout, edits)))
        });
        match outcome {
            Ok(WriteOutcome::Pushed { commit, attempts }) => {
                tracing::info!(%commit, files = misplaced, ?layout, attempts, "status files moved to the configured layout");
                self.pushed = Some(commit);
            }
            Ok(WriteOutcome::NoChange) => {}
            Err(e) => {
                self.layout_retry = true;
                tracing::warn!(error = %format!("{e:#}"), ?layout, "cannot move the status files to the configured layout; the next pass tries again");
            }
        }
    }
}
