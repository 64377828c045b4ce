//! Commands are commits: `promote`, `abort` and `retry` as commits the daemon acts on.
//!
//! A command is a commit (usually empty) whose message carries two trailers:
//! `Rollgate-Command: promote|abort|retry` and `Rollgate-Plan: <plan>`. The CLI makes
//! one; plain git does the same:
//! `git commit --allow-empty -m "Promote checkout" --trailer "Rollgate-Command: promote" --trailer "Rollgate-Plan: checkout"`.
//! The daemon acts on each command once and records it in the plan's status
//! (`lastCommand`), so a restart never replays it.

use anyhow::{Context, Result, bail};
use git2::{PushOptions, Repository, Signature};

use crate::engine::Command;
use crate::source::git::callbacks;
use crate::writeback::messages as m;

pub fn word(c: Command) -> &'static str {
    match c {
        Command::Promote => "promote",
        Command::Abort => "abort",
        Command::Retry => "retry",
    }
}

/// The message of a command commit.
pub fn message(c: Command, plan: &str, by: Option<&str>) -> String {
    let verb = match c {
        Command::Promote => "Promote",
        Command::Abort => "Abort",
        Command::Retry => "Retry",
    };
    let mut msg = format!("{verb} {plan}\n\n");
    if let Some(by) = by {
        msg.push_str(&format!("Requested by {by}.\n\n"));
    }
    msg.push_str(&format!(
        "{}: {}\n{}: {plan}\n",
        m::COMMAND,
        word(c),
        m::PLAN
    ));
    msg
}

/// Make a command commit on the checked-out branch of `repo`; push it when asked.
/// Returns the new commit's id.
pub fn commit(repo: &Repository, c: Command, plan: &str, push: bool) -> Result<git2::Oid> {
    commit_as(repo, c, plan, push, None)
}

/// Like `commit`, saying who asked (`Requested by BY.` in the message), e.g. for a
/// command given in a GitHub comment.
pub fn commit_as(
    repo: &Repository,
    c: Command,
    plan: &str,
    push: bool,
    by: Option<&str>,
) -> Result<git2::Oid> {
    if !crate::model::validate::is_dns_label(plan) {
        bail!("`{plan}` is not a plan name");
    }
    let head = repo.head().context("the repository has no commits")?;
    let branch = head
        .shorthand()
        .ok()
        .filter(|_| head.is_branch())
        .map(str::to_owned);
    let parent = head.peel_to_commit()?;
    let sig = repo
        .signature()
        .or_else(|_| Signature::now("rollgate CLI", "rollgate@localhost"))?;
    let id = repo.commit(
        Some("HEAD"),
        &sig,
        &sig,
        &message(c, plan, by),
        &parent.tree()?,
        &[&parent],
    )?;
    if push {
        let Some(branch) = branch else {
            bail!("HEAD is detached; check out a branch to push")
        };
        let mut remote = repo
            .find_remote("origin")
            .context("no `origin` remote to push to")?;
        let mut rejected = None;
        {
            let mut opts = PushOptions::new();
            let mut cb = callbacks();
            cb.push_update_reference(|_, status| {
                rejected = status.map(str::to_owned);
                Ok(())
            });
            opts.remote_callbacks(cb);
            let spec = format!("refs/heads/{branch}:refs/heads/{branch}");
            remote
                .push(&[spec.as_str()], Some(&mut opts))
                .context("push failed (pull first if the branch moved)")?;
        }
        if let Some(r) = rejected {
            bail!("push rejected: {r} (pull, then push again)");
        }
    }
    Ok(id)
}
