//! The two revisions of a change, read from a repository without touching it.
//!
//! Snapshots go through `GitSource`'s reader (no symlinks, size caps) over a scratch
//! bare repository that borrows the user's objects as an alternate: nothing is copied,
//! fetched or written in the user's repository.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use git2::{Delta, DiffFindOptions, DiffOptions, Oid, Repository};

use super::ChangeKind;
use crate::source::git::{GitSource, WATCHED};
use crate::source::{Snapshot, is_plan_path};

/// A diff larger than this (per side) is not rendered.
const MAX_DIFF_BLOB_BYTES: usize = crate::model::yaml::MAX_FILE_BYTES;

pub(super) struct Revisions {
    src: GitSource,
    pub base: Oid,
    pub head: Oid,
    /// Where head forked from base (base itself when they share no history).
    pub merge_base: Oid,
}

/// One plan file the change touches.
#[derive(Debug, Clone)]
pub(super) struct Touched {
    pub kind: ChangeKind,
    /// The path at head (at base for a deleted plan).
    pub path: String,
    pub old_path: Option<String>,
    pub diff: String,
}

impl Revisions {
    /// Resolve `base` and `head` in the repository at `repo`; `scratch` is an empty
    /// folder that lives as long as the returned value is used.
    pub fn open(repo: &Path, base: &str, head: &str, scratch: &Path) -> Result<Self> {
        let user = Repository::open(repo)
            .or_else(|_| Repository::open_bare(repo))
            .with_context(|| format!("{} is not a Git repository", repo.display()))?;
        let resolve = |spec: &str| -> Result<Oid> {
            let obj = user
                .revparse_single(spec)
                .with_context(|| format!("revision `{spec}` not found in {}", repo.display()))?;
            Ok(obj
                .peel_to_commit()
                .with_context(|| format!("revision `{spec}` is not a commit"))?
                .id())
        };
        let base = resolve(base)?;
        let head = resolve(head)?;
        let objects = user.commondir().join("objects");
        let objects = objects
            .to_str()
            .ok_or_else(|| anyhow!("the repository path {} is not UTF-8", objects.display()))?
            .to_owned();
        // The scratch repository's `origin` is never fetched: its objects are the user's.
        let src = GitSource::open(
            &scratch.display().to_string(),
            &scratch.join("git"),
            "preview",
        )?;
        src.repo()
            .odb()?
            .add_disk_alternate(&objects)
            .context("cannot read the repository's objects")?;
        let merge_base = src.repo().merge_base(base, head).unwrap_or(base);
        Ok(Self {
            src,
            base,
            head,
            merge_base,
        })
    }

    pub fn snapshot(&self, commit: Oid) -> Result<Snapshot> {
        self.src
            .snapshot(commit)
            .with_context(|| format!("cannot read revision {commit}"))
    }

    /// The author of head, for the policy input's `change.author`.
    pub fn head_author(&self) -> Option<String> {
        self.src.commit_info(self.head).ok().map(|c| c.author)
    }

    /// What head changes since the merge base (like `git diff base...head`), under the
    /// paths rollgate reads: the plan files it touches (renames found), and every
    /// changed path.
    pub fn changes(&self) -> Result<(Vec<Touched>, Vec<String>)> {
        let repo = self.src.repo();
        let old = repo.find_commit(self.merge_base)?.tree()?;
        let new = repo.find_commit(self.head)?.tree()?;
        let mut opts = DiffOptions::new();
        for p in WATCHED {
            opts.pathspec(p);
        }
        let mut diff = repo.diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))?;
        diff.find_similar(Some(DiffFindOptions::new().renames(true)))?;
        let mut touched = Vec::new();
        let mut changed = std::collections::BTreeSet::new();
        for (i, delta) in diff.deltas().enumerate() {
            let path_of =
                |f: git2::DiffFile<'_>| f.path().and_then(Path::to_str).map(str::to_owned);
            let old_path = path_of(delta.old_file());
            let new_path = path_of(delta.new_file());
            changed.extend(old_path.iter().cloned());
            changed.extend(new_path.iter().cloned());
            let old_plan = old_path.clone().filter(|p| is_plan_path(p));
            let new_plan = new_path.clone().filter(|p| is_plan_path(p));
            // libgit2 names both sides of every delta (a deleted file's "new" path too).
            let (kind, path, old) = match (delta.status(), old_plan, new_plan) {
                (Delta::Renamed, Some(o), Some(n)) => (ChangeKind::Renamed, n, Some(o)),
                (Delta::Deleted, Some(o), _) | (Delta::Renamed, Some(o), None) => {
                    (ChangeKind::Deleted, o, None)
                }
                (Delta::Added | Delta::Copied | Delta::Renamed, _, Some(n)) => {
                    (ChangeKind::Added, n, None)
                }
                (Delta::Modified | Delta::Typechange, _, Some(n)) => {
                    (ChangeKind::Modified, n, None)
                }
                _ => continue,
            };
            let diff_text = self.patch(&diff, i, &delta)?;
            touched.push(Touched {
                kind,
                path,
                old_path: old,
                diff: diff_text,
            });
        }
        touched.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((touched, changed.into_iter().collect()))
    }

    /// The unified diff of one delta; a note instead when a side is over the size cap.
    fn patch(
        &self,
        diff: &git2::Diff<'_>,
        i: usize,
        delta: &git2::DiffDelta<'_>,
    ) -> Result<String> {
        let odb = self.src.repo().odb()?;
        for f in [delta.old_file(), delta.new_file()] {
            if f.id().is_zero() {
                continue;
            }
            if let Ok((size, _)) = odb.read_header(f.id())
                && size > MAX_DIFF_BLOB_BYTES
            {
                return Ok(format!(
                    "(not shown: a side of the diff is {size} bytes; the limit is {MAX_DIFF_BLOB_BYTES})\n"
                ));
            }
        }
        let Some(mut patch) = git2::Patch::from_diff(diff, i)? else {
            return Ok(String::new());
        };
        let buf = patch.to_buf()?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}
