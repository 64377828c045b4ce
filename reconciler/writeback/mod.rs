//! The single Git writer: status, revert and restore commits, pushed as compare-and-swap.
//!
//! ```text
//!   head last fetched ─▶ compute(head) ─▶ commit on head ─▶ push (compare-and-swap)
//!            ▲                                                  │ rejected: someone pushed
//!            └──── fetch ◀─────── jittered backoff ◀────────────┘
//! ```
//! Invariants: never force-pushes (every push, on every transport, is a compare-and-swap
//! of the exact head the commit was computed on: `source::remote`), so a human commit can
//! never be dropped; the change is
//! recomputed on the new head after a lost race, never replayed blindly; a change that
//! leaves the tree as it is makes no commit (no empty or no-op commits).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use git2::{Oid, Signature};

use crate::model::settings::{Signing, StatusLayout, WriteBack};
use crate::source::git::GitSource;
use crate::source::remote::Push;

mod edits;
pub mod messages;
pub(crate) mod pack;

pub use edits::{put_files, put_files_packed};

/// One file change in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub path: String,
    /// `None` deletes the file.
    pub content: Option<Vec<u8>>,
}

/// What to commit on top of the current head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSpec {
    pub subject: String,
    pub body: Option<String>,
    pub trailers: Vec<(String, String)>,
    /// Revert this commit first (its inverse applied to the head), then apply `edits`.
    pub revert: Option<Oid>,
    pub edits: Vec<Edit>,
}

impl CommitSpec {
    pub fn message(&self, skip_ci: bool) -> String {
        let mut m = self.subject.clone();
        if skip_ci {
            m.push_str(" [skip ci]");
        }
        m.push_str("\n\n");
        if let Some(b) = &self.body {
            // Git reads no trailers after a line starting with `---` (a patch would start
            // there): such a line of the body (a reason in a target's own words) is
            // indented by one space.
            for line in b.trim_end().lines() {
                if line.starts_with("---") {
                    m.push(' ');
                }
                m.push_str(line);
                m.push('\n');
            }
            m.push('\n');
        }
        for (k, v) in &self.trailers {
            // A trailer value is one line; never let a value smuggle in another trailer.
            let v = v.replace(['\n', '\r'], " ");
            // An empty value would make Git read the next line as this trailer's value.
            let v = if v.trim().is_empty() {
                "-".to_owned()
            } else {
                v
            };
            m.push_str(&format!("{k}: {v}\n"));
        }
        m
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Pushed {
        commit: Oid,
        attempts: u32,
    },
    /// Nothing to write: the change is already in the head (or `compute` said so).
    NoChange,
}

/// Why a revert could not be applied cleanly.
#[derive(Debug, thiserror::Error)]
#[error("revert of {0} conflicts with later changes")]
pub struct RevertConflict(pub Oid);

#[derive(Debug)]
pub struct Writer<'a> {
    src: &'a GitSource,
    settings: &'a WriteBack,
    /// A write gives up after this many lost races, once it has also been trying for
    /// `min_persistence`.
    pub max_attempts: u32,
    /// The least time a write keeps trying: with a short backoff, 50 tries take a few
    /// seconds, and a human pushing in a tight loop can win all of them.
    pub min_persistence: Duration,
    /// Build the first attempt on the head last fetched or pushed instead of fetching
    /// (the daemon's flush: its pass fetched just now). Off, every attempt fetches first,
    /// which is cheaper on a branch others push to all the time (a first attempt on a
    /// stale head is one push lost for sure).
    pub first_on_known_head: bool,
    /// Why the last push was refused (a lost race, or e.g. a lock on the remote).
    last_rejection: std::sync::Mutex<Option<String>>,
}

impl<'a> Writer<'a> {
    pub fn new(src: &'a GitSource, settings: &'a WriteBack) -> Self {
        Self {
            src,
            settings,
            max_attempts: 50,
            min_persistence: Duration::from_secs(30),
            first_on_known_head: false,
            last_rejection: std::sync::Mutex::new(None),
        }
    }

    /// Compute the change on the head, commit, push; on a lost race, fetch and again.
    ///
    /// With `first_on_known_head`, the first attempt builds on the head last fetched or
    /// pushed (the daemon fetched it at the start of its pass) instead of fetching
    /// again: the push is a compare-and-swap of exactly that head, so a head that moved
    /// meanwhile is a lost race like any other, fetched and recomputed. An answer of
    /// "nothing to write" is only believed on a freshly fetched head.
    pub fn write(
        &self,
        mut compute: impl FnMut(Oid) -> Result<Option<CommitSpec>>,
    ) -> Result<WriteOutcome> {
        let mut attempt = 0;
        let started = std::time::Instant::now();
        // The head to build on, and whether it was fetched just now.
        let mut next = if self.first_on_known_head {
            self.src.head().ok().map(|h| (h, false))
        } else {
            None
        };
        loop {
            attempt += 1;
            let (head, fetched) = match next.take() {
                Some(known) => known,
                None => (self.src.fetch()?, true),
            };
            let commit = match compute(head)? {
                Some(spec) => self.make_commit(head, &spec)?,
                None => None,
            };
            let Some(commit) = commit else {
                if fetched {
                    return Ok(WriteOutcome::NoChange);
                }
                let fresh = self.src.fetch()?;
                if fresh == head {
                    return Ok(WriteOutcome::NoChange);
                }
                // The head moved since it was last fetched: compute again on the new one.
                next = Some((fresh, true));
                attempt -= 1;
                continue;
            };
            match self.push(commit)? {
                true => {
                    return Ok(WriteOutcome::Pushed {
                        commit,
                        attempts: attempt,
                    });
                }
                false
                    if attempt >= self.max_attempts
                        && started.elapsed() >= self.min_persistence =>
                {
                    bail!(
                        "push to {} was rejected {attempt} times (last: {}); giving up for now",
                        self.src.branch(),
                        self.why_rejected()
                    )
                }
                false => {
                    tracing::debug!(
                        attempt,
                        why = %self.why_rejected(),
                        "push rejected; recomputing on the new head"
                    );
                    // Built on the head last seen, not one fetched just now: the branch
                    // moved before this write began, no writer is racing it yet.
                    if fetched {
                        std::thread::sleep(backoff(attempt));
                    }
                }
            }
        }
    }

    /// Why the last push was refused, as git said it.
    fn why_rejected(&self) -> String {
        self.last_rejection
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "the branch moved".to_owned())
    }

    /// Build the commit object (not yet on any branch). `None` when the tree would not change.
    pub fn make_commit(&self, head: Oid, spec: &CommitSpec) -> Result<Option<Oid>> {
        let repo = self.src.repo();
        let parent = repo.find_commit(head)?;
        let base_tree = parent.tree()?;
        let mut tree_id = base_tree.id();
        if let Some(rev) = spec.revert {
            let to_revert = repo.find_commit(rev)?;
            // A merge (a merged pull request) is reverted against its first parent.
            let mainline = if to_revert.parent_count() > 1 { 1 } else { 0 };
            let mut index = repo.revert_commit(&to_revert, &parent, mainline, None)?;
            if index.has_conflicts() {
                return Err(RevertConflict(rev).into());
            }
            tree_id = index.write_tree_to(repo)?;
        }
        let layout = self
            .src
            .status_layout_at(head, self.settings.status_layout)?;
        let edits = stored_edits(&spec.edits, layout);
        // A large commit's new objects as one pack file, not a loose file each: creating
        // a file costs about 0.8 ms here, a thousand of them most of a mass change's pass.
        tree_id = if spec.edits.len() >= PACK_FROM {
            put_files_packed(repo, tree_id, &edits)?
        } else {
            put_files(repo, tree_id, &edits)?
        };
        if tree_id == base_tree.id() {
            return Ok(None);
        }
        let tree = repo.find_tree(tree_id)?;
        let now = git2::Time::new(chrono::Utc::now().timestamp(), 0);
        let author = Signature::new(
            &self.settings.author.name,
            &self.settings.author.email,
            &now,
        )?;
        let committer = Signature::new(
            &self.settings.committer.name,
            &self.settings.committer.email,
            &now,
        )?;
        let message = spec.message(self.settings.skip_ci);
        let id = match &self.settings.signing {
            None => repo.commit(None, &author, &committer, &message, &tree, &[&parent])?,
            Some(signing) => {
                let buf =
                    repo.commit_create_buffer(&author, &committer, &message, &tree, &[&parent])?;
                let content = std::str::from_utf8(&buf).context("commit buffer is not UTF-8")?;
                let sig = sign(signing, content.as_bytes())?;
                repo.commit_signed(content, &sig, Some("gpgsig"))?
            }
        };
        Ok(Some(id))
    }

    /// Push `commit` to the branch as a compare-and-swap of its parent: the branch moves
    /// only if it is still the head `commit` was made on. `Ok(false)`: rejected (the
    /// branch moved, or the remote refused for now, e.g. a lock).
    pub fn push(&self, commit: Oid) -> Result<bool> {
        let repo = self.src.repo();
        let branch = self.src.branch();
        let expected = repo.find_commit(commit)?.parent_id(0).ok();
        match self
            .src
            .remote()
            .push(repo.path(), commit, branch, expected)?
        {
            Push::Pushed => {
                repo.reference(
                    &format!("refs/remotes/origin/{branch}"),
                    commit,
                    true,
                    "rollgate: pushed",
                )?;
                Ok(true)
            }
            Push::Rejected(why) => {
                if let Ok(mut r) = self.last_rejection.lock() {
                    *r = Some(why);
                }
                Ok(false)
            }
        }
    }
}

/// `edits` as stored in `layout`: a status file (`status/<plan>.yaml`, its logical path)
/// is deleted where the other layout keeps it and written where `layout` does, so a
/// plan's status is never in two places, and a repository moves to the configured
/// layout plan by plan (and all at once by the daemon's layout commit). Other files as
/// they are.
pub fn stored_edits(edits: &[Edit], layout: StatusLayout) -> Vec<Edit> {
    let mut out = Vec::with_capacity(edits.len() * 2);
    for e in edits {
        if crate::source::is_status_path(&e.path) {
            out.push(Edit {
                path: layout.other().physical(&e.path),
                content: None,
            });
            out.push(Edit {
                path: layout.physical(&e.path),
                content: e.content.clone(),
            });
        } else {
            out.push(e.clone());
        }
    }
    out
}

/// A commit of this many files or more has its new blobs and trees written as one pack
/// file (`put_files_packed`); below, as loose objects (a status commit writes three and
/// its commit), so one-plan commits do not add a pack file each.
const PACK_FROM: usize = 8;

/// The most a lost race waits before fetching again.
///
/// Short on purpose: the other writers on a branch are mostly people and CI pushing
/// without any backoff, and every attempt already spends a fetch and a push (tens of
/// milliseconds, more under load), which spaces the attempts out. A long wait only hands
/// the branch to them: with 500 ms, a 100-plan status commit lost 20 races in a row
/// to ten humans pushing and waited 14 s (`benches/mass.rs` (f)). Several rollgate
/// replicas racing one another are kept apart by the jitter.
const MAX_BACKOFF: Duration = Duration::from_millis(40);

/// Jittered exponential backoff after the `attempt`th lost race: up to 5 ms, doubling,
/// to at most `MAX_BACKOFF`, each wait drawn evenly from its lower half to its whole.
fn backoff(attempt: u32) -> Duration {
    let cap = u64::try_from(MAX_BACKOFF.as_micros()).unwrap_or(u64::MAX);
    let whole = 5_000u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(7))
        .min(cap);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos) % (whole / 2 + 1);
    Duration::from_micros(whole / 2 + jitter)
}

/// Write `content` (or delete) at `path` in the tree `root`, returning the new tree
/// (one edit of [`put_files`]: only the trees on the path are rewritten).
pub fn put_file(
    repo: &git2::Repository,
    root: Oid,
    path: &str,
    content: Option<&[u8]>,
) -> Result<Oid> {
    put_files(
        repo,
        root,
        &[Edit {
            path: path.to_owned(),
            content: content.map(<[u8]>::to_vec),
        }],
    )
}

/// Sign a commit buffer the way git does: `ssh-keygen -Y sign` or `gpg --detach-sign`.
fn sign(signing: &Signing, data: &[u8]) -> Result<String> {
    let mut cmd = match signing {
        Signing::Ssh { key } => {
            let mut c = Command::new("ssh-keygen");
            c.args(["-Y", "sign", "-n", "git", "-f", key]);
            c
        }
        Signing::Gpg { key } => {
            let mut c = Command::new("gpg");
            c.args([
                "--batch",
                "--yes",
                "--detach-sign",
                "--armor",
                "--local-user",
                key,
            ]);
            c
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the signing program")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        // The program's message names the key file or id, never key material.
        bail!(
            "signing failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("signature is not text")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_status_commit_does_not_wait_out_long_backoffs_while_humans_push() {
        for attempt in 1..=60 {
            let want = 5u64 * (1 << (attempt - 1).min(7));
            let whole = Duration::from_millis(want).min(MAX_BACKOFF);
            for _ in 0..50 {
                let w = backoff(attempt);
                assert!(
                    w >= whole / 2 && w <= whole,
                    "attempt {attempt}: waited {w:?}, not within half of {whole:?} to all of it"
                );
            }
        }
        // The whole wait after 20 lost races: was 7.5–12 s with a 500 ms cap.
        let total: Duration = (1..=20).map(backoff).sum();
        assert!(total <= Duration::from_millis(800), "{total:?}");
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    fn edit(path: &str, content: Option<&str>) -> Edit {
        Edit {
            path: path.to_owned(),
            content: content.map(|c| c.as_bytes().to_vec()),
        }
    }

    fn tree_paths(repo: &git2::Repository, tree: Oid) -> Vec<String> {
        let mut out = Vec::new();
        repo.find_tree(tree)
            .expect("tree")
            .walk(git2::TreeWalkMode::PreOrder, |dir, e| {
                if e.kind() == Some(git2::ObjectType::Blob) {
                    out.push(format!("{dir}{}", e.name().unwrap_or("")));
                }
                git2::TreeWalkResult::Ok
            })
            .expect("walk");
        out
    }

    #[test]
    fn a_status_write_lands_where_the_layout_keeps_it_and_leaves_no_copy_in_the_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init_bare(dir.path()).expect("repo");
        let empty = repo.treebuilder(None).expect("tb").write().expect("tree");
        let flat = put_files(
            &repo,
            empty,
            &[
                edit("status/web.yaml", Some("v: 1")),
                edit("status/api.yaml", Some("v: 1")),
                edit("plans/web.yaml", Some("plan")),
            ],
        )
        .expect("put");
        let one = [edit("status/web.yaml", Some("v: 2"))];

        // Flat, the default: exactly the tree the edit alone makes (no shard folder).
        let same = put_files(&repo, flat, &stored_edits(&one, StatusLayout::Flat)).expect("put");
        assert_eq!(same, put_files(&repo, flat, &one).expect("put"));
        assert_eq!(
            tree_paths(&repo, same),
            vec!["plans/web.yaml", "status/api.yaml", "status/web.yaml"]
        );

        // Sharded: the file moves into its shard folder; the others stay until moved.
        let sharded =
            put_files(&repo, flat, &stored_edits(&one, StatusLayout::Sharded)).expect("put");
        assert_eq!(
            tree_paths(&repo, sharded),
            vec!["plans/web.yaml", "status/api.yaml", "status/f6/web.yaml"]
        );
        // And back: flat again, the shard folder gone with its last file.
        let back = put_files(
            &repo,
            sharded,
            &stored_edits(&[edit("status/web.yaml", Some("v: 3"))], StatusLayout::Flat),
        )
        .expect("put");
        assert_eq!(
            tree_paths(&repo, back),
            vec!["plans/web.yaml", "status/api.yaml", "status/web.yaml"]
        );
        // A deletion deletes both places.
        let gone = put_files(
            &repo,
            sharded,
            &stored_edits(&[edit("status/web.yaml", None)], StatusLayout::Flat),
        )
        .expect("put");
        assert_eq!(
            tree_paths(&repo, gone),
            vec!["plans/web.yaml", "status/api.yaml"]
        );
    }
}
