//! Notifications (#18): every transition announced to Slack or a CloudEvents receiver,
//! after Git has it.
//!
//! ```text
//!  Reconciler::record ─▶ status commit pushed ─▶ Outbox::pushed(commit) ─▶ wake (bounded)
//!                                                                             │
//!   per notifier, its own thread:  acked ─▶ first-parent walk to the commit ─▶ Event
//!      (STATE/notify/<name>.acked)   (git2, trailers: history::entry)         │
//!                 ▲                                                           ▼
//!                 └──── written after a 2xx ◀── POST with retries ◀── Notifier::post (pure)
//! ```
//! Invariants: Git stays the source of truth: an event is built from its commit alone
//! (trailers and the status file in that commit), so an event sent live and one
//! replayed after a restart are the same bytes; what is pending is the first-parent
//! history after the last acknowledged commit, never a memory that a crash could lose;
//! each commit is sent in order, once per notifier (the status commit id is the
//! deduplication key, and the CloudEvents `id`); delivery never blocks or fails a
//! reconcile; secrets (URLs, keys) come from environment variables named in settings,
//! are [`Secret`]s, and are never logged nor handed to a workload.
//!
//! Files: `slack` (the Block Kit message), `cloudevents` (the envelope and its
//! signature), `outbox` (the acknowledged record, the wake-up queue, delivery with
//! retries and backoff).

pub mod cloudevents;
pub mod outbox;
pub mod slack;

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::github::Secret;
use crate::history::Entry;
use crate::model::settings::{self, NotifierKind};
use crate::model::status::Status;
pub use outbox::Outbox;

/// One announced commit: a transition's status commit or a revert commit. Built from
/// Git alone ([`Event::from_commit`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The status (or revert) commit id: the deduplication key.
    pub commit: String,
    /// The commit's time.
    pub time: DateTime<Utc>,
    pub plan: String,
    /// The phase entered (`Progressing`, `RolledBack`, …), or `Reverted` for the revert
    /// commit of a failed change.
    pub phase: String,
    /// The phase left, when known.
    pub from: Option<String>,
    pub candidate: Option<String>,
    pub stable: Option<String>,
    pub weight: Option<u8>,
    /// `i/n`, as in commit subjects.
    pub step: Option<String>,
    pub reason: Option<String>,
    pub verdicts: Vec<String>,
}

/// The phase name of a revert commit's event.
pub const REVERTED: &str = "Reverted";

impl Event {
    /// The event a commit records, when it is a transition or a revert (`None` for a
    /// command, a command acknowledgement, or anyone else's commit). `status` is the
    /// plan's status file in that commit, for the stable and candidate versions.
    pub fn from_commit(entry: &Entry, status: Option<&Status>) -> Option<Event> {
        let phase = match entry.kind.as_str() {
            // A status commit without a step is a command acknowledged, not a transition.
            "transition" if entry.step.is_some() => entry.phase.clone()?,
            "revert" => REVERTED.to_owned(),
            _ => return None,
        };
        let status = status.filter(|s| s.plan == entry.plan);
        Some(Event {
            commit: entry.commit.clone(),
            time: DateTime::from_timestamp(entry.time, 0).unwrap_or_default(),
            plan: entry.plan.clone(),
            phase,
            from: entry.from.clone(),
            candidate: entry
                .artifact
                .clone()
                .or_else(|| status.map(|s| s.candidate.clone())),
            stable: status.and_then(|s| s.stable.clone()),
            weight: entry.weight.or_else(|| status.map(|s| s.weight)),
            step: entry.step.clone(),
            reason: entry.reason.clone(),
            verdicts: entry.verdicts.clone(),
        })
    }
}

/// The repository as notifications name it: `name` for the CloudEvents `source`
/// (`rollgate/<name>`), and a commit link when the remote is on GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub name: String,
    /// `https://github.com/owner/name/commit/` (then the id), for a GitHub remote.
    pub commit_url: Option<String>,
}

impl Repo {
    /// From the remote's URL (already without user info): `owner/name` and a link on
    /// GitHub, else the last path segment without `.git`.
    pub fn from_url(url: &str) -> Repo {
        let on_github = url.starts_with("git@github.com:")
            || url
                .split_once("://")
                .and_then(|(_, rest)| rest.split('/').next())
                .is_some_and(|host| {
                    let host = host.rsplit('@').next().unwrap_or(host);
                    host.eq_ignore_ascii_case("github.com")
                });
        if on_github && let Some(r) = crate::github::RepoName::from_url(url) {
            return Repo {
                name: r.full_name(),
                commit_url: Some(format!("https://github.com/{}/commit/", r.full_name())),
            };
        }
        let path = url.trim_end_matches('/');
        let last = path.rsplit(['/', ':']).next().unwrap_or(path);
        let name = last.strip_suffix(".git").unwrap_or(last);
        Repo {
            name: if name.is_empty() { "repo" } else { name }.to_owned(),
            commit_url: None,
        }
    }

    pub fn commit_link(&self, commit: &str) -> Option<String> {
        self.commit_url.as_ref().map(|u| format!("{u}{commit}"))
    }
}

/// One HTTP POST, ready to send: the URL is a secret (a Slack webhook URL is a
/// credential), the body is what the receiver gets.
#[derive(Debug, Clone)]
pub struct Post {
    pub url: Secret,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// A receiver of events: one implementation per kind, one file each.
pub trait Notifier: Send {
    /// The settings' name: the acknowledged record's file name and the logs' field.
    fn name(&self) -> &str;
    /// Whether a plan with these labels is announced here.
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool;
    /// The request that announces `event` (pure: the same event, the same bytes).
    fn post(&self, event: &Event) -> Post;
}

/// Build the notifiers of `settings`, reading their secrets with `env` (the process
/// environment in `main`). A notifier whose variable is unset is an error naming the
/// variable (never a value).
pub fn build(
    notify: &[settings::Notifier],
    repo: &Repo,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Box<dyn Notifier>>> {
    let secret = |var: &str, name: &str| -> Result<Secret> {
        match env(var).and_then(Secret::new) {
            Some(s) => Ok(s),
            None => bail!("notifier {name}: the environment variable {var} is not set"),
        }
    };
    let mut out: Vec<Box<dyn Notifier>> = Vec::new();
    for n in notify {
        match &n.kind {
            NotifierKind::Slack { webhook_url_env } => out.push(Box::new(slack::Slack {
                settings: n.clone(),
                url: secret(webhook_url_env, &n.name)?,
                repo: repo.clone(),
            })),
            NotifierKind::Webhook {
                url_env,
                signing_key_env,
            } => out.push(Box::new(cloudevents::CloudEvents {
                settings: n.clone(),
                url: secret(url_env, &n.name)?,
                key: secret(signing_key_env, &n.name)?,
                repo: repo.clone(),
            })),
        }
    }
    Ok(out)
}

/// Start the notifiers named by the settings at `head` (`None` when there are none, or
/// the settings are invalid: the gate reports that). Their secrets are read from the
/// environment now (a notifier whose variable is unset is logged and left out); a later
/// change to `notify:` takes effect at the next start.
pub fn start(
    src: &crate::source::git::GitSource,
    head: git2::Oid,
    state_dir: &std::path::Path,
) -> Result<Option<Outbox>> {
    use crate::source::SETTINGS_FILE;
    let snap = src.snapshot(head)?;
    let Some(text) = snap
        .files
        .get(SETTINGS_FILE)
        .and_then(|b| std::str::from_utf8(b).ok())
    else {
        return Ok(None);
    };
    let Ok(settings) = crate::model::validate::parse_settings(SETTINGS_FILE, text) else {
        return Ok(None);
    };
    if settings.notify.is_empty() {
        return Ok(None);
    }
    let repo = Repo::from_url(src.url());
    // A notifier without its secret is said once, loudly, and left out: a settings
    // change must not keep the daemon (and every rollout) from starting.
    let mut notifiers = Vec::new();
    for n in &settings.notify {
        match build(std::slice::from_ref(n), &repo, |v| std::env::var(v).ok()) {
            Ok(built) => notifiers.extend(built),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "notifier left out"),
        }
    }
    if notifiers.is_empty() {
        return Ok(None);
    }
    let author = &settings.write_back.author;
    let outbox = Outbox::start(
        src.repo().path(),
        state_dir,
        head,
        &format!("{} <{}>", author.name, author.email),
        notifiers,
        outbox::Options::default(),
    )?;
    Ok(Some(outbox))
}

#[cfg(test)]
pub(crate) fn sample() -> Event {
    Event {
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        time: DateTime::from_timestamp(1_764_900_000, 0).unwrap_or_default(),
        plan: "checkout".to_owned(),
        phase: "Progressing".to_owned(),
        from: Some("Pending".to_owned()),
        candidate: Some("registry.example/checkout:v2".to_owned()),
        stable: Some("registry.example/checkout:v1".to_owned()),
        weight: Some(25),
        step: Some("3/7".to_owned()),
        reason: Some("analysis passed".to_owned()),
        verdicts: vec!["pass success-rate canary=0.9992 n=1532".to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, step: Option<&str>) -> Entry {
        Entry {
            commit: "c0ffee".to_owned(),
            time: 1_764_900_000,
            plan: "web".to_owned(),
            kind: kind.to_owned(),
            phase: Some("Paused".to_owned()),
            from: Some("Progressing".to_owned()),
            step: step.map(str::to_owned),
            weight: Some(20),
            artifact: Some("v2".to_owned()),
            revision: None,
            reason: Some("pause 2s".to_owned()),
            verdicts: Vec::new(),
            first_rollout: None,
            analysis_restarted: None,
            subject: "web: Paused".to_owned(),
        }
    }

    #[test]
    fn transitions_and_reverts_are_events_commands_and_acks_are_not() {
        let e = Event::from_commit(&entry("transition", Some("2/3")), None);
        assert_eq!(
            e.as_ref().map(|e| (e.phase.as_str(), e.step.as_deref())),
            Some(("Paused", Some("2/3")))
        );
        let revert = Event::from_commit(&entry("revert", None), None);
        assert_eq!(revert.map(|e| e.phase), Some(REVERTED.to_owned()));
        assert_eq!(Event::from_commit(&entry("transition", None), None), None);
        assert_eq!(Event::from_commit(&entry("command", None), None), None);
    }

    #[test]
    fn repo_names_and_links() {
        let gh = Repo::from_url("https://github.com/acme/deploy.git");
        assert_eq!(gh.name, "acme/deploy");
        assert_eq!(
            gh.commit_link("abc").as_deref(),
            Some("https://github.com/acme/deploy/commit/abc")
        );
        assert_eq!(
            Repo::from_url("git@github.com:acme/deploy.git").name,
            "acme/deploy"
        );
        let local = Repo::from_url("/tmp/x/remote.git");
        assert_eq!(local.name, "remote");
        assert_eq!(local.commit_link("abc"), None);
        assert_eq!(
            Repo::from_url("https://git.example/acme/deploy").commit_url,
            None
        );
    }

    #[test]
    fn a_plan_opts_out_with_its_label_and_selectors_match_all_labels() {
        let n = settings::Notifier {
            name: "n".to_owned(),
            kind: NotifierKind::Slack {
                webhook_url_env: "X".to_owned(),
            },
            match_labels: [("team".to_owned(), "payments".to_owned())].into(),
        };
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(n.selects(&labels(&[("team", "payments"), ("tier", "x")])));
        assert!(!n.selects(&labels(&[("team", "search")])));
        assert!(!n.selects(&labels(&[
            ("team", "payments"),
            (settings::NOTIFY_LABEL, "false")
        ])));
    }

    #[test]
    fn unset_secrets_are_an_error_naming_the_variable_not_a_value() {
        let n = settings::Notifier {
            name: "events".to_owned(),
            kind: NotifierKind::Webhook {
                url_env: "U".to_owned(),
                signing_key_env: "K".to_owned(),
            },
            match_labels: BTreeMap::new(),
        };
        let repo = Repo::from_url("/r.git");
        let err = build(std::slice::from_ref(&n), &repo, |v| {
            (v == "U").then(|| "http://127.0.0.1:1/hook".to_owned())
        })
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("notifier events: the environment variable K is not set")
        );
        let built = build(&[n], &repo, |_| Some("s3cret".to_owned()));
        assert!(built.is_ok_and(|b| b.len() == 1 && b[0].name() == "events"));
    }
}
