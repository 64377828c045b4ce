//! The worker: one thread, one job at a time (previews, comment commands, rollout
//! statuses), with a scratch clone of the GitOps repository.
//!
//! Invariants: nothing from a pull request is ever applied (a preview fetches base and
//! `refs/pull/N/head` into the bare scratch clone and reads them; the clone keeps no pull
//! request's ref afterwards); a comment command is a commit on the tracked branch made
//! only for someone with write permission, at most once per comment (its id is a trailer,
//! looked for in the last [`RECENT_COMMITS`] commits of the freshly fetched branch), and
//! never for a comment older than [`webhook::MAX_COMMENT_AGE`]; someone who is not a
//! collaborator gets no reply and, for `STRANGER_TTL`, no further API call; a job is
//! taken only while this replica is the leader ([`Gate`]; one begun as leader finishes);
//! the shared installation token for Git is renewed between jobs, leader or not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use git2::{Oid, Repository};

use super::render::{Progress, conclusion, context, rollback_marker, status_state, title};
use super::{Clock, Job, Pending};
use crate::github::webhook::{self, CommentCommand};
use crate::github::{
    CHECK_NAME, CheckOutput, CheckRunPosted, Client, Conclusion, GitToken, Permission,
    STICKY_MARKER, Secret, SharedGitToken, StatusState,
};
use crate::leader::Gate;
use crate::source::remote::{GitAuth, Remote, RemoteUrl};
use crate::telemetry::{self, CommentIgnored};

/// How long someone found not to be a collaborator stays known as such: their next
/// commands in that time cost no API call at all.
const STRANGER_TTL: Duration = Duration::from_secs(60);
const STRANGERS_KEPT: usize = 1024;

/// How many first-parent commits of the tracked branch are searched for a comment's
/// command commit before one is made (status commits included: days of rollouts).
pub const RECENT_COMMITS: usize = 500;

/// How often the worker renews the shared installation token for Git (a new one is
/// minted only when the cached one has under five minutes left), so the daemon's fetch
/// and push always find a live one.
const GIT_TOKEN_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// The worker: a scratch clone and the jobs, one at a time.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) repo_url: String,
    pub(super) branch: String,
    pub(super) dir: PathBuf,
    /// Above this size (bytes) the scratch clone is removed after a job.
    pub(super) scratch_budget: u64,
    /// The daemon loop: woken after a command commit, so it is acted on at once.
    pub(super) wake: std::sync::mpsc::Sender<()>,
    /// Renewed between jobs for the daemon's Git.
    pub(super) git_token: SharedGitToken,
    /// What waits, per issue (shared with the handler).
    pub(super) pending: Arc<Mutex<Pending>>,
    /// Asked before each job: only the leader acts.
    pub(super) leader: Gate,
    pub(super) clock: Clock,
    /// Logins found not to be collaborators, and when.
    pub(super) strangers: Mutex<HashMap<String, Instant>>,
}

impl Worker {
    pub(super) async fn run(self, client: Client, mut rx: tokio::sync::mpsc::Receiver<Job>) {
        let mut refresh = tokio::time::interval_at(
            tokio::time::Instant::now() + GIT_TOKEN_REFRESH,
            GIT_TOKEN_REFRESH,
        );
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let job = tokio::select! {
                job = rx.recv() => job,
                _ = refresh.tick() => {
                    self.git_token.refresh(&client, &self.repo_url).await;
                    continue;
                }
            };
            let Some(job) = job else {
                break;
            };
            let job = match self.pending.lock() {
                Ok(mut p) => p.taken(job),
                Err(_) => job,
            };
            let what = match &job {
                Job::Preview(pr) => format!("preview of #{}", pr.number),
                Job::Command { comment, .. } => format!("command on #{}", comment.number),
                Job::Progress(p) => format!("status of {}", p.plan),
            };
            // Queued while this replica led, taken after it lost the lease: dropped,
            // like a delivery that reaches a stand-by.
            if !self.leader.is_leader() {
                tracing::info!(job = %what, "not the leader any more: GitHub job dropped");
                continue;
            }
            if let Err(e) = self.job(&client, job).await {
                telemetry::global().github_error();
                tracing::warn!(job = %what, error = %format!("{e:#}"), "GitHub job failed");
            }
        }
    }

    async fn job(&self, client: &Client, job: Job) -> Result<()> {
        match job {
            Job::Preview(pr) => self.preview(client, &pr).await,
            Job::Command { comment, command } => self.command(client, &comment, command).await,
            Job::Progress(p) => Self::progress(client, &p).await,
        }
    }

    async fn progress(client: &Client, p: &Progress) -> Result<()> {
        client
            .set_status(
                None,
                &p.revision,
                &context(&p.plan),
                p.state,
                &p.description,
            )
            .await?;
        if let Some(body) = &p.rollback {
            let marker = rollback_marker(&p.plan, &p.revision);
            for pr in client.merged_pulls_of(None, &p.revision).await? {
                client
                    .upsert_sticky_comment(None, pr, &marker, body)
                    .await?;
            }
        }
        Ok(())
    }

    /// The scratch clone: a bare repository with `origin` = the GitOps repository.
    fn scratch(&self) -> Result<Repository> {
        let repo = match Repository::open_bare(&self.dir) {
            Ok(r) => r,
            Err(_) => Repository::init_bare(&self.dir)
                .with_context(|| format!("cannot create {}", self.dir.display()))?,
        };
        match repo.find_remote("origin") {
            Ok(r) if r.url().ok() == Some(self.repo_url.as_str()) => {}
            Ok(_) => repo.remote_set_url("origin", &self.repo_url)?,
            Err(_) => {
                repo.remote("origin", &self.repo_url)?;
            }
        }
        let mut cfg = repo.config()?;
        cfg.set_str("user.name", "rollgate")?;
        cfg.set_str("user.email", "rollgate@localhost")?;
        Ok(repo)
    }

    /// The GitOps repository as a remote, with the configured credentials (flags,
    /// `ROLLGATE_GIT_*`), else the App's installation token where it may go (GitHub's host).
    fn git_remote(&self, token: Option<&GitToken>) -> Result<Remote> {
        let url = RemoteUrl::parse(&self.repo_url)?;
        let mut auth = GitAuth::configured();
        if auth.token.is_none() {
            auth.token = token
                .and_then(|t| t.for_url(url.as_str()))
                .and_then(Secret::new);
            auth.username = None;
        }
        Ok(Remote::new(url, auth))
    }

    fn fetch(&self, repo: &Repository, specs: &[String], token: Option<&GitToken>) -> Result<()> {
        self.git_remote(token)?
            .fetch(repo.path(), specs)
            .context("cannot fetch from the GitOps repository")?;
        Ok(())
    }

    /// Fetch base and the pull request's head (`refs/pull/N/head`, which GitHub keeps in
    /// the base repository for forks too), then compute the preview. Nothing is run.
    /// The pull request's ref is gone from the scratch clone afterwards, whatever became
    /// of the preview: fork pull requests cannot grow the clone's refs without bound (the
    /// objects they brought are unreachable then: the automatic gc a fetch runs once
    /// objects pile up prunes them when they are two weeks old).
    fn compute_preview(
        &self,
        pr: &webhook::PullRequest,
        token: Option<&GitToken>,
    ) -> Result<crate::preview::Preview> {
        let repo = self.scratch()?;
        let preview = self.preview_in(&repo, pr, token);
        if let Err(e) = prune_pull_refs(&repo) {
            tracing::warn!(error = %format!("{e:#}"), "cannot remove pull request refs from the scratch clone");
        }
        drop(repo);
        self.keep_within_budget();
        preview
    }

    /// Remove the scratch clone when it grew past its budget (a fork's pull request
    /// brought large objects, kept unreachable until gc): the next job fetches again.
    fn keep_within_budget(&self) {
        let size = dir_size(&self.dir);
        if size <= self.scratch_budget {
            return;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => tracing::info!(
                bytes = size,
                budget = self.scratch_budget,
                dir = %self.dir.display(),
                "the scratch clone outgrew its budget: removed, the next job fetches again"
            ),
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot remove the oversized scratch clone")
            }
        }
    }

    fn preview_in(
        &self,
        repo: &Repository,
        pr: &webhook::PullRequest,
        token: Option<&GitToken>,
    ) -> Result<crate::preview::Preview> {
        let pull_ref = format!("refs/rollgate/pull/{}", pr.number);
        let base_ref = format!("refs/remotes/origin/{}", pr.base_ref);
        self.fetch(
            repo,
            &[
                format!("+refs/heads/{0}:{base_ref}", pr.base_ref),
                format!("+refs/pull/{}/head:{pull_ref}", pr.number),
            ],
            token,
        )?;
        let base = repo
            .refname_to_id(&base_ref)
            .with_context(|| format!("branch {} not found", pr.base_ref))?;
        let head = Oid::from_str(&pr.head_sha)?;
        if repo.find_commit(head).is_err() {
            bail!(
                "the pull request's head {} is not on the remote (pushed again since?)",
                pr.head_sha
            );
        }
        crate::preview::preview_with_labels(
            repo.path(),
            &base.to_string(),
            &head.to_string(),
            chrono::Utc::now(),
            &pr.labels,
        )
    }

    async fn preview(&self, client: &Client, pr: &webhook::PullRequest) -> Result<()> {
        tracing::info!(pr = pr.number, head = %pr.head_sha, fork = pr.fork, "computing a preview");
        let computed = match client.git_token(pr.installation, &self.repo_url).await {
            Ok(token) => self.compute_preview(pr, token.as_ref()),
            Err(e) => Err(e),
        };
        let (out, comment, state) = match computed {
            Ok(p) => {
                let markdown = p.markdown();
                (
                    CheckOutput {
                        conclusion: conclusion(p.conclusion()),
                        title: title(p.conclusion()).to_owned(),
                        summary: markdown.clone(),
                        annotations: p.annotations(),
                    },
                    Some(markdown),
                    status_state(p.conclusion()),
                )
            }
            Err(e) => {
                // The reason goes to the log only: it may name internal paths.
                tracing::warn!(pr = pr.number, error = %format!("{e:#}"), "no preview");
                (
                    CheckOutput {
                        conclusion: Conclusion::Neutral,
                        title: "rollgate could not compute a preview".to_owned(),
                        summary: "rollgate could not read this pull request's revisions; \
                                  its operators have the details in the log."
                            .to_owned(),
                        annotations: Vec::new(),
                    },
                    None,
                    StatusState::Error,
                )
            }
        };
        // The check run, or where GitHub refuses it (a personal access token), the
        // commit status `rollgate`; and the comment either way.
        let checked = match client
            .upsert_check_run(pr.installation, &pr.head_sha, &out)
            .await
        {
            Ok(CheckRunPosted::Run(_)) => Ok(()),
            Ok(CheckRunPosted::Refused) => {
                client
                    .set_status(pr.installation, &pr.head_sha, CHECK_NAME, state, &out.title)
                    .await
            }
            Err(e) => Err(e),
        };
        let commented = match comment {
            Some(markdown) => {
                let body = if markdown.starts_with(STICKY_MARKER) {
                    markdown
                } else {
                    format!("{STICKY_MARKER}\n{markdown}")
                };
                client
                    .upsert_sticky_comment(pr.installation, pr.number, STICKY_MARKER, &body)
                    .await
                    .map(|_| ())
            }
            None => Ok(()),
        };
        match (checked, commented) {
            (Ok(()), r) | (r, Ok(())) => r,
            (Err(a), Err(b)) => Err(anyhow!("{a:#}; and {b:#}")),
        }
    }

    /// `login`'s permission, with no API call for someone found not to be a
    /// collaborator in the last `STRANGER_TTL`.
    async fn permission(&self, client: &Client, c: &webhook::Comment) -> Result<Permission> {
        let key = c.author.to_ascii_lowercase();
        let now = Instant::now();
        if let Ok(mut strangers) = self.strangers.lock() {
            strangers.retain(|_, at| now.saturating_duration_since(*at) < STRANGER_TTL);
            if strangers.contains_key(&key) {
                return Ok(Permission::None);
            }
        }
        let permission = client.permission(c.installation, &c.author).await?;
        if permission == Permission::None
            && let Ok(mut strangers) = self.strangers.lock()
        {
            if strangers.len() >= STRANGERS_KEPT {
                strangers.clear();
            }
            strangers.insert(key, now);
        }
        Ok(permission)
    }

    async fn command(
        &self,
        client: &Client,
        c: &webhook::Comment,
        command: Result<CommentCommand, String>,
    ) -> Result<()> {
        let who = &c.author;
        // Who asks comes first: someone who is not a collaborator gets no answer at all,
        // so a flood of comments costs a permission call each (or none), never a reply.
        let permission = self.permission(client, c).await?;
        if permission == Permission::None {
            telemetry::global().comment_ignored(CommentIgnored::Stranger);
            tracing::debug!(login = %who, issue = c.number, comment = c.id, "comment command from someone who is not a collaborator: ignored, no reply");
            return Ok(());
        }
        let cmd = match command {
            Ok(cmd) => cmd,
            Err(why) => {
                let body = format!(
                    "@{who} I could not read that command: {why}. Usage: {}.",
                    webhook::USAGE
                );
                client.comment(c.installation, c.number, &body).await?;
                return Ok(());
            }
        };
        let verb = crate::commands::word(cmd.command);
        if !permission.can_write() {
            tracing::info!(login = %who, plan = %cmd.plan, verb, "comment command refused: no write permission");
            let body = format!(
                "Sorry @{who}, `{verb} {}` needs write access to this repository, so rollgate \
                 did nothing. Someone with write access can run it for you.",
                cmd.plan
            );
            client.comment(c.installation, c.number, &body).await?;
            return Ok(());
        }
        // An old comment is never acted on: it may be a redelivery after a restart (the
        // memory of deliveries is gone) or after so many commits that its command commit
        // is past the look-up.
        let now = (self.clock)();
        if !webhook::is_fresh(c.created_at, now) {
            telemetry::global().comment_ignored(CommentIgnored::Stale);
            tracing::warn!(login = %who, plan = %cmd.plan, verb, comment = c.id, created_at = %c.created_at, "comment command too old; not acted on");
            let minutes = webhook::MAX_COMMENT_AGE.as_secs() / 60;
            let body = format!(
                "@{who} this comment was written at {} UTC, more than {minutes} minutes ago, so \
                 rollgate did not act on `{verb} {}` now: an old comment may be a replay. If \
                 it is still wanted, please comment it again.",
                c.created_at.format("%Y-%m-%d %H:%M"),
                cmd.plan
            );
            client.comment(c.installation, c.number, &body).await?;
            return Ok(());
        }
        let recorded = match client.git_token(c.installation, &self.repo_url).await {
            Ok(token) => self.commit_command(&cmd, c, token.as_ref()),
            Err(e) => Err(e),
        };
        let body = match recorded {
            Ok(Recorded::Committed(id)) => {
                tracing::info!(login = %who, plan = %cmd.plan, verb, commit = %id, "command commit pushed");
                let _ = self.wake.send(());
                format!(
                    "@{who} done: `{verb} {}` is commit {} on `{}`; rollgate acts on it at its next pass.",
                    cmd.plan,
                    &id.to_string()[..12],
                    self.branch
                )
            }
            Ok(Recorded::Already(id)) => {
                tracing::info!(login = %who, plan = %cmd.plan, verb, comment = c.id, commit = %id, "comment command already committed; not again");
                format!(
                    "@{who} `{verb} {}` was already done for this comment: it is commit {} on \
                     `{}`, so rollgate did nothing more.",
                    cmd.plan,
                    &id.to_string()[..12],
                    self.branch
                )
            }
            Ok(Recorded::NoPlan) => format!(
                "@{who} there is no plan `{}` on `{}`, so rollgate did nothing.",
                cmd.plan, self.branch
            ),
            Err(e) => {
                tracing::warn!(login = %who, plan = %cmd.plan, error = %format!("{e:#}"), "command commit failed");
                format!(
                    "@{who} rollgate could not record `{verb} {}`; its operators have the details \
                     in the log. Please try again later.",
                    cmd.plan
                )
            }
        };
        client.comment(c.installation, c.number, &body).await?;
        Ok(())
    }

    /// The command commit of comment `c` on the tracked branch, pushed (fetched again
    /// and retried when someone pushed in between), unless the branch already has one:
    /// a redelivery, or another replica that got there first.
    fn commit_command(
        &self,
        cmd: &CommentCommand,
        c: &webhook::Comment,
        token: Option<&GitToken>,
    ) -> Result<Recorded> {
        let repo = self.scratch()?;
        let local = format!("refs/heads/{}", self.branch);
        let by = format!("@{} via GitHub comment", c.author);
        let origin = crate::commands::Origin {
            by: Some(&by),
            comment: Some(c.id),
        };
        let mut last = None;
        for _ in 0..3 {
            self.fetch(&repo, &[format!("+{local}:{local}")], token)?;
            repo.set_head(&local)?;
            let head = repo.find_reference(&local)?.peel_to_commit()?;
            if let Some(done) =
                crate::commands::find_for_comment(&repo, head.id(), c.id, RECENT_COMMITS)?
            {
                return Ok(Recorded::Already(done));
            }
            if head
                .tree()?
                .get_path(Path::new(&format!("plans/{}.yaml", cmd.plan)))
                .is_err()
            {
                return Ok(Recorded::NoPlan);
            }
            let remote = self.git_remote(token)?;
            match crate::commands::commit_with(
                &repo,
                cmd.command,
                &cmd.plan,
                &origin,
                Some(&remote),
            ) {
                Ok(id) => return Ok(Recorded::Committed(id)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("push failed")))
    }
}

/// What became of a comment command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    /// Its commit, pushed now.
    Committed(Oid),
    /// Its commit, already on the branch.
    Already(Oid),
    /// The plan is not on the branch: nothing done.
    NoPlan,
}

/// The bytes of the files under `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Remove every `refs/rollgate/pull/*` of the scratch clone.
fn prune_pull_refs(repo: &Repository) -> Result<()> {
    let names: Vec<String> = repo
        .references_glob("refs/rollgate/pull/*")?
        .filter_map(|r| r.ok().and_then(|r| r.name().ok().map(str::to_owned)))
        .collect();
    for name in names {
        repo.find_reference(&name)?
            .delete()
            .with_context(|| format!("cannot delete {name}"))?;
    }
    Ok(())
}
