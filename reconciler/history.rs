//! `rollgate history` and `rollgate status`: the story of every rollout, from Git alone.
//!
//! History reads only commit trailers (`Rollgate-*`), so it needs no state besides the
//! repository; it is the audit trail `git log --format='%(trailers)'` shows, laid out
//! as a timeline with a weight bar per transition.

use anyhow::{Context, Result};
use git2::{Oid, Repository};
use serde::Serialize;

use crate::model::status::Status;
use crate::writeback::messages as m;

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub commit: String,
    pub time: i64,
    pub plan: String,
    /// `transition`, `revert`, `command`.
    pub kind: String,
    pub phase: Option<String>,
    pub from: Option<String>,
    /// The `Rollgate-Step` trailer: the step as people count it, `i/n`
    /// (`model::status::step_number`).
    pub step: Option<String>,
    pub weight: Option<u8>,
    pub artifact: Option<String>,
    pub revision: Option<String>,
    pub reason: Option<String>,
    pub verdicts: Vec<String>,
    /// `direct` or `steps` on the transitions of a rollout with no stable version.
    pub first_rollout: Option<String>,
    /// The new start of an analysis window restarted because builtin samples were lost.
    pub analysis_restarted: Option<String>,
    pub subject: String,
}

/// Open a repository by path (a checkout or a bare repository).
pub fn open(path: &str) -> Result<Repository> {
    // libgit2's own message repeats the path: a URL's password must not reach it.
    Repository::open(path)
        .or_else(|_| Repository::open_bare(path))
        .map_err(|_| {
            anyhow::anyhow!(
                "{} is not a Git repository on this machine",
                crate::source::remote::redact(path)
            )
        })
}

/// The commit a branch name (or `HEAD`) points at.
pub fn resolve(repo: &Repository, branch: Option<&str>) -> Result<Oid> {
    let named = |b: &str| {
        repo.revparse_single(&format!("refs/heads/{b}"))
            .or_else(|_| repo.revparse_single(&format!("refs/remotes/origin/{b}")))
            .or_else(|_| repo.revparse_single(b))
            .and_then(|o| o.peel_to_commit())
            .map(|c| c.id())
    };
    if let Some(b) = branch {
        return named(b).with_context(|| format!("branch {b} not found"));
    }
    // The branch rollgate writes to: `writeBack.branch` in the settings, else HEAD (a
    // checkout's branch; a bare remote's default), else `main` (the default of `run`),
    // `master`, or the only branch there is.
    let start = repo
        .revparse_single("HEAD")
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .or_else(|_| named("main"))
        .or_else(|_| named("master"));
    let start = match start {
        Ok(id) => id,
        Err(_) => {
            let branches: Vec<String> = repo
                .branches(None)?
                .flatten()
                .filter_map(|(b, _)| b.name().ok().flatten().map(str::to_owned))
                .collect();
            match branches.as_slice() {
                [only] => named(only)?,
                [] => anyhow::bail!("the repository has no branch"),
                many => anyhow::bail!(
                    "HEAD names no branch here; give --branch (branches: {})",
                    many.join(", ")
                ),
            }
        }
    };
    let write_back = repo
        .find_commit(start)?
        .tree()?
        .get_path(std::path::Path::new(crate::source::SETTINGS_FILE))
        .ok()
        .and_then(|e| repo.find_blob(e.id()).ok())
        .and_then(|b| std::str::from_utf8(b.content()).ok().map(str::to_owned))
        .and_then(|t| crate::model::validate::parse_settings(crate::source::SETTINGS_FILE, &t).ok())
        .map(|s| s.write_back.branch);
    Ok(match write_back {
        Some(b) => named(&b).unwrap_or(start),
        None => start,
    })
}

/// Every rollgate event reachable from `head` (first-parent), oldest first.
pub fn collect(repo: &Repository, head: Oid, plan: Option<&str>) -> Result<Vec<Entry>> {
    let mut walk = repo.revwalk()?;
    walk.push(head)?;
    walk.simplify_first_parent()?;
    let mut out = Vec::new();
    for id in walk {
        let c = repo.find_commit(id?)?;
        // Walked newest first and reversed at the end: a batch's entries go in reversed.
        for e in entries(&c).into_iter().rev() {
            if plan.is_none_or(|want| want == e.plan) {
                out.push(e);
            }
        }
    }
    out.reverse();
    Ok(out)
}

/// The rollgate event one commit records, from its trailers (`None`: not rollgate's). A
/// batch commit records one event per plan: this is its first (`entries` has them all).
pub fn entry(c: &git2::Commit<'_>) -> Option<Entry> {
    entries(c).into_iter().next()
}

/// Every rollgate event one commit records: one per `Rollgate-Plan` trailer block (a
/// single-plan commit is one block; a batch commit one per plan, `messages::plan_blocks`).
pub fn entries(c: &git2::Commit<'_>) -> Vec<Entry> {
    let msg = c.message().unwrap_or("");
    let Ok(trailers) = git2::message_trailers_strs(msg) else {
        return Vec::new();
    };
    let all: Vec<(&str, &str)> = trailers.iter().collect();
    let blocks = m::plan_blocks(&all);
    let subject = c.summary().ok().flatten().unwrap_or("").to_owned();
    // A batch names each plan's own subject in its body.
    let body = if blocks.len() > 1 {
        c.body().ok().flatten().unwrap_or("")
    } else {
        ""
    };
    let subjects = m::batch_subjects(body);
    blocks
        .into_iter()
        .filter_map(|block| {
            let e = block_entry(c, block, &subject)?;
            Some(match subjects.get(e.plan.as_str()) {
                Some(own) => Entry {
                    subject: (*own).to_owned(),
                    ..e
                },
                None => e,
            })
        })
        .collect()
}

fn block_entry(c: &git2::Commit<'_>, trailers: &[(&str, &str)], subject: &str) -> Option<Entry> {
    let get = |k: &str| {
        trailers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| (*v).to_owned())
    };
    let p = get(m::PLAN)?;
    let kind = if get(m::COMMAND).is_some() {
        "command"
    } else if get(m::ROLLBACK_OF).is_some() {
        "revert"
    } else {
        "transition"
    };
    Some(Entry {
        commit: c.id().to_string(),
        time: c.time().seconds(),
        plan: p,
        kind: kind.to_owned(),
        phase: get(m::PHASE).or_else(|| get(m::COMMAND)),
        from: get(m::FROM),
        step: get(m::STEP),
        weight: get(m::WEIGHT).and_then(|w| w.parse().ok()),
        artifact: get(m::ARTIFACT),
        revision: get(m::REVISION).or_else(|| get(m::ROLLBACK_OF)),
        reason: get(m::REASON),
        verdicts: trailers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(m::VERDICT))
            .map(|(_, v)| (*v).to_owned())
            .collect(),
        first_rollout: get(m::FIRST_ROLLOUT),
        analysis_restarted: get(m::ANALYSIS_RESTARTED),
        subject: subject.to_owned(),
    })
}

fn bar(weight: Option<u8>) -> String {
    let Some(w) = weight else {
        return " ".repeat(12);
    };
    // A trailer is anyone's text: a weight above 100 fills the bar, never underflows it.
    let cells = usize::from(w.min(100)) * 10 / 100;
    format!("[{}{}]", "█".repeat(cells), "·".repeat(10 - cells))
}

/// The timeline as text: one line per event, a weight bar, verdicts indented below.
pub fn render_text(entries: &[Entry]) -> String {
    let mut out = String::new();
    let mut last_plan = String::new();
    for e in entries {
        if e.plan != last_plan {
            out.push_str(&format!("\n{}\n", e.plan));
            last_plan = e.plan.clone();
        }
        let time = chrono::DateTime::from_timestamp(e.time, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let what = match e.kind.as_str() {
            "command" => format!("command {}", e.phase.as_deref().unwrap_or("?")),
            "revert" => "revert pushed".to_owned(),
            _ => e.phase.clone().unwrap_or_default(),
        };
        out.push_str(&format!(
            "  {time}  {:<7} {:<12} {:>5} {} {:>4}  {}\n",
            &e.commit[..7.min(e.commit.len())],
            what,
            e.step.as_deref().unwrap_or(""),
            bar(e.weight),
            e.weight.map(|w| format!("{w}%")).unwrap_or_default(),
            e.reason.as_deref().unwrap_or(&e.subject),
        ));
        for v in &e.verdicts {
            out.push_str(&format!("{:>46}{v}\n", ""));
        }
        if let Some(at) = &e.analysis_restarted {
            out.push_str(&format!("{:>46}analysis restarted at {at}\n", ""));
        }
    }
    if entries.is_empty() {
        out.push_str("no rollgate history on this branch\n");
    }
    out
}

/// Every status file at `head`.
pub fn statuses(repo: &Repository, head: Oid) -> Result<Vec<Status>> {
    let tree = repo.find_commit(head)?.tree()?;
    let mut out = Vec::new();
    for id in crate::source::git::status_entries(repo, &tree)?.into_values() {
        let Ok(blob) = repo.find_blob(id) else {
            continue;
        };
        if let Some(s) = std::str::from_utf8(blob.content())
            .ok()
            .and_then(|t| Status::from_yaml(t).ok())
        {
            out.push(s);
        }
    }
    Ok(out)
}

/// The live table of `rollgate status`; STEP is `i/n` as in commit subjects and trailers
/// (`Status::step_label`).
pub fn render_status(statuses: &[Status]) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:>6} {:>6}  {:<30} {}\n",
        "PLAN", "PHASE", "STEP", "WEIGHT", "CANDIDATE", "NOTE"
    );
    for s in statuses {
        let note = s
            .hold
            .as_ref()
            .map(|h| h.reason.clone())
            .or_else(|| s.message.clone())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<20} {:<12} {:>6} {:>5}%  {:<30} {}\n",
            s.plan,
            s.phase.as_str(),
            s.step_label(),
            s.weight,
            s.candidate,
            note
        ));
    }
    out
}
