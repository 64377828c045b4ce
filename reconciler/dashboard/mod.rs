//! The read-only web dashboard (#20): every plan's live state and one page per plan
//! with its timeline picture, served by the daemon on `--listen` and by
//! `rollgate dashboard` from a repository alone.
//!
//! ```text
//!  Git (head) ──▶ BoardSource::board ──▶ Board (data) ──▶ render (pure HTML) ──▶ routes (axum, GET only)
//!                 GitBoard: status/, plans/,              escaped everywhere        /, /plans/NAME,
//!                 history trailers; cached by head                                  /fragment/…, /assets/…
//! ```
//!
//! Invariants: read-only (no route writes anything, none takes a body); Git is the only
//! input, read through `history` (the same trailers `rollgate history` prints); nothing
//! secret is shown (remote URLs only as a forge link, without userinfo); every string
//! from Git reaches HTML through `timeline::escape`; the pages work without JavaScript,
//! which only re-fetches server-rendered fragments.

pub mod render;
pub mod routes;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;

pub use routes::{router, serve};

use crate::history::Entry;
use crate::model::status::Status;

/// One plan as the overview shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanView {
    pub name: String,
    /// `metadata.labels` of the plan file at head (empty when it has none or is unreadable).
    pub labels: BTreeMap<String, String>,
    /// `status/<name>.yaml` at head; `None` before rollgate wrote one.
    pub status: Option<Status>,
    /// The last `Rollgate-Verdict` line of this plan's history.
    pub last_verdict: Option<String>,
    /// This plan's history, oldest first.
    pub entries: Vec<Entry>,
}

/// Everything the dashboard shows, read at one head.
#[derive(Debug, Clone, PartialEq)]
pub struct Board {
    /// The commit read.
    pub head: String,
    pub branch: Option<String>,
    pub plans: Vec<PlanView>,
    /// `https://github.com/o/r/commit/` and the like, when the remote is a known forge.
    pub commit_base: Option<String>,
}

impl Board {
    pub fn plan(&self, name: &str) -> Option<&PlanView> {
        self.plans.iter().find(|p| p.name == name)
    }
}

/// Where the dashboard reads from: the one extension point (a daemon's clone, or a
/// repository on disk).
pub trait BoardSource: Send + Sync + std::fmt::Debug {
    /// The board at the current head (cheap when the head did not move).
    fn board(&self) -> Result<Arc<Board>>;
}

/// A repository on this machine, read at the head of its branch on every request;
/// the board is rebuilt only when that head moves.
#[derive(Debug)]
pub struct GitBoard {
    path: String,
    branch: Option<String>,
    commit_base: Option<String>,
    cache: Mutex<Option<Arc<Board>>>,
    /// Held while a board is built: one history walk at a time, however many requests
    /// arrive while the head moves (the others wait, then take the cached board).
    building: Mutex<()>,
}

impl GitBoard {
    /// A repository by path; its `origin` remote, if any, names the forge for links.
    pub fn open(path: &str, branch: Option<&str>) -> Result<GitBoard> {
        let repo = crate::history::open(path)?;
        let origin = repo
            .find_remote("origin")
            .ok()
            .and_then(|r| r.url().ok().map(str::to_owned));
        crate::history::resolve(&repo, branch)?;
        Ok(GitBoard {
            path: path.to_owned(),
            branch: branch.map(str::to_owned),
            commit_base: origin.as_deref().and_then(commit_base),
            cache: Mutex::new(None),
            building: Mutex::new(()),
        })
    }

    /// The daemon's private clone of `remote_url` (links go to `remote_url`'s forge).
    pub fn clone_of(path: &std::path::Path, branch: &str, remote_url: &str) -> GitBoard {
        GitBoard {
            path: path.to_string_lossy().into_owned(),
            branch: Some(branch.to_owned()),
            commit_base: commit_base(remote_url),
            cache: Mutex::new(None),
            building: Mutex::new(()),
        }
    }
}

impl BoardSource for GitBoard {
    fn board(&self) -> Result<Arc<Board>> {
        let repo = crate::history::open(&self.path)?;
        let head = crate::history::resolve(&repo, self.branch.as_deref())?;
        let cached = || {
            self.cache
                .lock()
                .ok()
                .and_then(|c| c.as_ref().filter(|b| b.head == head.to_string()).cloned())
        };
        if let Some(b) = cached() {
            return Ok(b);
        }
        let _building = self
            .building
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = cached() {
            return Ok(b); // built by the request this one waited for
        }
        let board = Arc::new(read(
            &repo,
            head,
            self.branch.clone(),
            self.commit_base.clone(),
        )?);
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some(board.clone());
        }
        Ok(board)
    }
}

/// The board at `head`: plans (files under `plans/`), their status files and history.
pub fn read(
    repo: &git2::Repository,
    head: git2::Oid,
    branch: Option<String>,
    commit_base: Option<String>,
) -> Result<Board> {
    let statuses = crate::history::statuses(repo, head)?;
    let entries = crate::history::collect(repo, head, None)?;
    let mut plans: BTreeMap<String, PlanView> = BTreeMap::new();
    let view = |name: &str| PlanView {
        name: name.to_owned(),
        labels: BTreeMap::new(),
        status: None,
        last_verdict: None,
        entries: Vec::new(),
    };
    for (name, labels) in plan_files(repo, head) {
        plans
            .entry(name.clone())
            .or_insert_with(|| view(&name))
            .labels = labels;
    }
    for s in statuses {
        let name = s.plan.clone();
        plans
            .entry(name.clone())
            .or_insert_with(|| view(&name))
            .status = Some(s);
    }
    for e in entries {
        let p = plans.entry(e.plan.clone()).or_insert_with(|| view(&e.plan));
        if let Some(v) = e.verdicts.last() {
            p.last_verdict = Some(v.clone());
        }
        p.entries.push(e);
    }
    Ok(Board {
        head: head.to_string(),
        branch,
        plans: plans.into_values().collect(),
        commit_base,
    })
}

/// Every plan file's name (`metadata.name`, else the file's stem) and labels at `head`.
/// Read through the YAML door's budgets; a file that does not parse still gets a row.
fn plan_files(repo: &git2::Repository, head: git2::Oid) -> Vec<(String, BTreeMap<String, String>)> {
    let Ok(tree) = repo.find_commit(head).and_then(|c| c.tree()) else {
        return Vec::new();
    };
    let Some(dir) = tree
        .get_path(std::path::Path::new("plans"))
        .ok()
        .and_then(|e| repo.find_tree(e.id()).ok())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.iter() {
        let Some(file) = e.name().ok().map(str::to_owned) else {
            continue;
        };
        let Some(stem) = file
            .strip_suffix(".yaml")
            .or_else(|| file.strip_suffix(".yml"))
        else {
            continue;
        };
        if e.filemode() == 0o120000 {
            continue;
        }
        let node = repo
            .find_blob(e.id())
            .ok()
            .filter(|b| b.size() <= crate::model::yaml::MAX_FILE_BYTES)
            .and_then(|b| String::from_utf8(b.content().to_vec()).ok())
            .and_then(|t| crate::model::yaml::parse(&file, &t).ok());
        let meta = node.as_ref().and_then(|n| n.get("metadata"));
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or(stem)
            .to_owned();
        let mut labels = BTreeMap::new();
        if let Some(crate::model::yaml::Kind::Map(kv)) =
            meta.and_then(|m| m.get("labels")).map(|l| &l.kind)
        {
            for (k, v) in kv {
                if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                    labels.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        out.push((name, labels));
    }
    out
}

/// The web address of a commit's page prefix for a GitHub or GitLab remote
/// (`https://github.com/o/r/commit/`), never with the URL's userinfo.
pub fn commit_base(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .or_else(|| url.strip_prefix("ssh://"))
        .or_else(|| url.strip_prefix("git://"));
    // `git@host:owner/repo.git`, scp-like, or `[user@]host[:port]/owner/repo` after a scheme.
    let (host, path) = match rest {
        Some(r) => {
            let (authority, path) = r.split_once('/')?;
            let host = authority.rsplit('@').next()?;
            (host.split(':').next()?, path)
        }
        None => {
            let (authority, path) = url.split_once(':')?;
            (authority.rsplit('@').next()?, path)
        }
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let safe = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            && !s.split('/').any(|seg| seg.is_empty() || seg == "..")
    };
    if !safe(host) || !safe(path) || path.split('/').count() < 2 {
        return None;
    }
    if host == "github.com" || host.starts_with("github.") {
        Some(format!("https://{host}/{path}/commit/"))
    } else if host == "gitlab.com" || host.starts_with("gitlab.") {
        Some(format!("https://{host}/{path}/-/commit/"))
    } else {
        None
    }
}

/// Block until Ctrl-C (SIGINT) or SIGTERM.
pub fn wait_for_ctrl_c() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });
}

#[cfg(test)]
mod tests;
