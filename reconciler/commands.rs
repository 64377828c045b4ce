//! Commands are commits: `promote`, `abort` and `retry` as commits the daemon acts on.
//!
//! A command is a commit (usually empty) whose message carries two trailers:
//! `Rollgate-Command: promote|abort|retry` and `Rollgate-Plan: <plan>`. The CLI makes
//! one; plain git does the same:
//! `git commit --allow-empty -m "Promote checkout" --trailer "Rollgate-Command: promote" --trailer "Rollgate-Plan: checkout"`.
//! The daemon acts on each command once and records it in the plan's status
//! (`lastCommand`), so a restart never replays it. A command given in a GitHub comment
//! also carries `Rollgate-Comment: <comment id>`, so the same comment delivered again
//! (after a restart, to another replica, redelivered by hand) finds its commit
//! (`find_for_comment`) instead of making a second one.

use anyhow::{Context, Result, bail};
use git2::{Oid, Repository, Signature};

use crate::engine::Command;
use crate::source::remote::{Push, Remote};
use crate::writeback::messages as m;

pub fn word(c: Command) -> &'static str {
    match c {
        Command::Promote => "promote",
        Command::Abort => "abort",
        Command::Retry => "retry",
    }
}

/// Who asked for a command, as its commit records it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// `Requested by BY.` in the message.
    pub by: Option<&'a str>,
    /// The GitHub comment the command was given in (`Rollgate-Comment`).
    pub comment: Option<u64>,
}

/// The message of a command commit.
pub fn message(c: Command, plan: &str, origin: &Origin<'_>) -> String {
    let verb = match c {
        Command::Promote => "Promote",
        Command::Abort => "Abort",
        Command::Retry => "Retry",
    };
    let mut msg = format!("{verb} {plan}\n\n");
    if let Some(by) = origin.by {
        msg.push_str(&format!("Requested by {by}.\n\n"));
    }
    msg.push_str(&format!(
        "{}: {}\n{}: {plan}\n",
        m::COMMAND,
        word(c),
        m::PLAN
    ));
    if let Some(id) = origin.comment {
        msg.push_str(&format!("{}: {id}\n", m::COMMENT));
    }
    msg
}

/// Why the CLI refuses a command: the daemon would ignore it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Refuse `c` on `plan` when the daemon would ignore it at `commit`: an unknown plan, no
/// rollout, or a phase where the command does nothing.
pub fn applicable(repo: &Repository, commit: Oid, c: Command, plan: &str) -> Result<()> {
    use crate::model::status::{HoldKind, Phase, Status};
    let tree = repo.find_commit(commit)?.tree()?;
    let read = |path: &str| -> Option<String> {
        let entry = crate::source::git::entry_at(&tree, path)?;
        let blob = repo.find_blob(entry.id()).ok()?;
        std::str::from_utf8(blob.content()).ok().map(str::to_owned)
    };
    let plan_path = format!("plans/{plan}.yaml");
    let Some(plan_text) = read(&plan_path) else {
        let known: Vec<String> = tree
            .get_path(std::path::Path::new("plans"))
            .ok()
            .and_then(|e| repo.find_tree(e.id()).ok())
            .map(|t| {
                t.iter()
                    .filter_map(|e| {
                        e.name()
                            .ok()
                            .map(|n| n.trim_end_matches(".yaml").to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        return Err(Refused(format!(
            "no plan named {plan} in plans/ (plans: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
        .into());
    };
    let artifact = crate::model::yaml::parse(&plan_path, &plan_text)
        .ok()
        .and_then(|root| {
            root.at(&[
                crate::model::yaml::PathSeg::Key("spec"),
                crate::model::yaml::PathSeg::Key("artifact"),
            ])?
            .as_str()
            .map(str::to_owned)
        });
    let Some(status) = read(&m::status_path(plan)).and_then(|t| Status::from_yaml(&t).ok()) else {
        return Err(Refused(format!("nothing to {}: {plan} has no rollout yet", word(c))).into());
    };
    let same = artifact.as_deref() == Some(status.candidate.as_str());
    let judged_hold = status.phase == Phase::Held
        && status
            .hold
            .as_ref()
            .is_none_or(|h| matches!(h.kind, HoldKind::Evidence | HoldKind::Metrics));
    let acts = match c {
        Command::Promote => {
            same && (matches!(status.phase, Phase::Progressing | Phase::Paused) || judged_hold)
        }
        Command::Retry => same && (status.phase == Phase::RolledBack || judged_hold),
        Command::Abort => same && status.phase.is_in_flight(),
    };
    if acts {
        return Ok(());
    }
    let now = match (status.phase, status.stable.as_deref()) {
        (Phase::Succeeded, Some(stable)) => format!("{plan} is Succeeded ({stable} is stable)"),
        (phase, _) if !same => format!(
            "{plan}'s plan names {} but its rollout is of {} ({})",
            artifact.as_deref().unwrap_or("no artifact"),
            status.candidate,
            phase.as_str()
        ),
        (phase, _) => format!("{plan} is {}", phase.as_str()),
    };
    Err(Refused(format!("nothing to {}: {now}", word(c))).into())
}

/// Make a command commit for `plan`, refused when the daemon would ignore it.
/// Without `push`: on the checked-out branch of `repo`, for the user to push. With
/// `push`: on the remote's current head (fetched with the user's own `git`, their
/// credential helpers, ssh config and hooks), pushed as a fast-forward; a push that lost
/// a race (the daemon had just pushed) fetches, checks again, and tries again.
/// Returns the new commit's id.
pub fn commit(repo: &Repository, c: Command, plan: &str, push: bool) -> Result<Oid> {
    if !push {
        let head = repo
            .head()
            .context("the repository has no commits")?
            .peel_to_commit()?;
        applicable(repo, head.id(), c, plan)?;
        return commit_with(repo, c, plan, &Origin::default(), None);
    }
    let branch = checked_out_branch(repo)?;
    let git = |args: &[&str]| -> Result<std::process::Output> {
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(repo.path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .context("cannot run git (is git installed?)")
    };
    let mut last = String::new();
    for _ in 0..5 {
        let fetched = git(&["fetch", "-q", "origin", &format!("refs/heads/{branch}")])?;
        if !fetched.status.success() {
            bail!(
                "cannot fetch {branch} from origin: {}",
                String::from_utf8_lossy(&fetched.stderr).trim()
            );
        }
        let remote_head = repo.refname_to_id("FETCH_HEAD")?;
        applicable(repo, remote_head, c, plan)?;
        let parent = repo.find_commit(remote_head)?;
        let sig = repo
            .signature()
            .or_else(|_| Signature::now("rollgate CLI", "rollgate@localhost"))?;
        let id = repo.commit(
            None,
            &sig,
            &sig,
            &message(c, plan, &Origin::default()),
            &parent.tree()?,
            &[&parent],
        )?;
        let out = git(&[
            "push",
            "--porcelain",
            "origin",
            &format!("{id}:refs/heads/{branch}"),
        ])?;
        if out.status.success() {
            // The checkout was at the remote's head: it moves on with the command commit
            // (same tree, so no file changes). Otherwise the user pulls it later.
            let local = repo.head()?.peel_to_commit()?.id();
            if local == remote_head {
                repo.reference(
                    &format!("refs/heads/{branch}"),
                    id,
                    true,
                    "rollgate: command commit pushed",
                )?;
            }
            return Ok(id);
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        tracing::info!(branch, "the push lost a race; fetching and trying again");
    }
    bail!("push rejected five times: {last}")
}

fn checked_out_branch(repo: &Repository) -> Result<String> {
    let head = repo.head().context("the repository has no commits")?;
    match head.shorthand().ok().filter(|_| head.is_branch()) {
        Some(b) => Ok(b.to_owned()),
        None => bail!("HEAD is detached; check out a branch to push"),
    }
}

/// Like `commit`, recording who asked (e.g. a GitHub comment), and pushed to `push` when
/// given, as a compare-and-swap of the branch's head (a moved branch is an error).
pub fn commit_with(
    repo: &Repository,
    c: Command,
    plan: &str,
    origin: &Origin<'_>,
    push: Option<&Remote>,
) -> Result<Oid> {
    if !crate::model::validate::is_dns_label(plan) {
        bail!("`{plan}` is not a plan name");
    }
    let head = repo.head().context("the repository has no commits")?;
    let parent = head.peel_to_commit()?;
    let sig = repo
        .signature()
        .or_else(|_| Signature::now("rollgate CLI", "rollgate@localhost"))?;
    let id = repo.commit(
        Some("HEAD"),
        &sig,
        &sig,
        &message(c, plan, origin),
        &parent.tree()?,
        &[&parent],
    )?;
    if let Some(remote) = push {
        let branch = checked_out_branch(repo)?;
        if let Push::Rejected(r) = remote.push(repo.path(), id, &branch, Some(parent.id()))? {
            bail!("push rejected: {r} (pull, then push again)");
        }
    }
    Ok(id)
}

/// The command commit made for GitHub comment `comment`, among the `limit` latest
/// commits of `head`'s first-parent history (where command commits land).
pub fn find_for_comment(
    repo: &Repository,
    head: Oid,
    comment: u64,
    limit: usize,
) -> Result<Option<Oid>> {
    let wanted = comment.to_string();
    let mut walk = repo.revwalk()?;
    walk.push(head)?;
    walk.simplify_first_parent()?;
    for id in walk.take(limit) {
        let id = id?;
        let commit = repo.find_commit(id)?;
        let msg = commit.message().unwrap_or("");
        if !msg.contains(m::COMMENT) {
            continue;
        }
        let found = git2::message_trailers_strs(msg).is_ok_and(|t| {
            t.iter()
                .any(|(k, v)| k.eq_ignore_ascii_case(m::COMMENT) && v.trim() == wanted)
        });
        if found {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let repo = Repository::init(dir.path()).expect("a repository");
        {
            let sig = Signature::now("t", "t@localhost").expect("a signature");
            let tree = repo
                .find_tree(repo.index().expect("index").write_tree().expect("tree"))
                .expect("tree");
            repo.commit(Some("HEAD"), &sig, &sig, "Seed", &tree, &[])
                .expect("seed");
        }
        (dir, repo)
    }

    #[test]
    fn a_comment_command_names_its_comment_and_is_found_by_it() {
        let (_dir, repo) = repo();
        let origin = Origin {
            by: Some("@octocat via GitHub comment"),
            comment: Some(42),
        };
        let id = commit_with(&repo, Command::Promote, "web", &origin, None).expect("commit");
        let msg = repo
            .find_commit(id)
            .expect("the commit")
            .message()
            .unwrap_or("")
            .to_owned();
        assert!(
            msg.ends_with("Rollgate-Plan: web\nRollgate-Comment: 42\n"),
            "{msg}"
        );
        let other =
            commit_with(&repo, Command::Abort, "web", &Origin::default(), None).expect("commit");
        assert!(
            !repo
                .find_commit(other)
                .expect("the commit")
                .message()
                .unwrap_or("")
                .contains("Rollgate-Comment")
        );
        assert_eq!(
            find_for_comment(&repo, other, 42, 500).expect("walk"),
            Some(id)
        );
        assert_eq!(find_for_comment(&repo, other, 4, 500).expect("walk"), None);
        assert_eq!(find_for_comment(&repo, other, 42, 1).expect("walk"), None);
    }
}
