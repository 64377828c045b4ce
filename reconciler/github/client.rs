//! The GitHub API client: the one door to GitHub's REST API (check runs, sticky and
//! reply comments, commit statuses, permissions, the App's installation tokens).
//!
//! One job, so one file (about 700 lines): every call spells out its timeout and what
//! a refusal means. Invariants: every call gives up after [`API_TIMEOUT`]; a token goes
//! to the configured API only; an error is one line (GitHub's status and message), never
//! a body that could hold a secret; rollgate edits only comments it wrote itself
//! ([`Identity::wrote`]), never one that merely starts with its marker; a 403 refusal of
//! check runs (a personal access token) is remembered for the process's life and the
//! caller falls back to a commit status, while a rate limit's 403 is an error like any.
//!
//! One job over 600 lines, kept in one file: the GitHub REST client, one method per
//! call rollgate makes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use octocrab::Octocrab;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::wire::{App, CheckRunList, Id, IssueComment, Login, PermissionReply, PullOfCommit};
use super::{
    API_TIMEOUT, Annotation, Auth, CHECK_NAME, Conclusion, Config, GitToken, Identity, RepoName,
    Secret, StatusState, git_host, may_send_token, valid_login,
};

/// An installation token handed to Git has at least this long to live (a fresh one is
/// minted otherwise), so a slow fetch or push never outlives it.
const GIT_TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// The hidden last line of a check run's summary: a digest of what a later update
/// could not replace (conclusion, title, annotations), so a re-preview can tell
/// whether the run it finds still shows the right annotations.
const OUTPUT_MARKER: &str = "<!-- rollgate:check-output sha256:";

/// GitHub's limits: annotations per request, characters in a comment or a check summary,
/// characters in a commit status description.
const ANNOTATIONS_PER_REQUEST: usize = 50;
const MAX_TEXT: usize = 65_000;
const MAX_DESCRIPTION: usize = 140;

/// What a completed `rollgate` check run says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutput {
    pub conclusion: Conclusion,
    pub title: String,
    /// Markdown.
    pub summary: String,
    pub annotations: Vec<Annotation>,
}

/// A collaborator's permission on the repository (`none` when not a collaborator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Admin,
    Write,
    Read,
    None,
}

impl Permission {
    /// `admin`, `maintain` and `write` may run commands; `triage`, `read` and others may not.
    pub fn can_write(self) -> bool {
        matches!(self, Permission::Admin | Permission::Write)
    }
}

/// What became of a preview's check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckRunPosted {
    /// Created or updated (or already right): its id.
    Run(u64),
    /// GitHub refuses check runs to these credentials (only a GitHub App may create
    /// them): the caller falls back to a commit status. Remembered for the process's
    /// life, so later previews make no check-run call at all.
    Refused,
}

/// The GitHub API, as rollgate uses it.
pub struct Client {
    root: Arc<Octocrab>,
    app: bool,
    repo: RepoName,
    /// Where GitHub serves Git (for the App's tokens), from the API URL.
    git_host: Option<String>,
    /// App: one client per installation; each caches its installation token and
    /// refreshes it before it expires.
    /// (Shared, never cloned: a clone of an `Octocrab` starts with its own empty cache.)
    installations: Mutex<HashMap<u64, Arc<Octocrab>>>,
    repo_installation: Mutex<Option<u64>>,
    /// Who rollgate's comments are by, asked once (`GET /user` or `GET /app`).
    identity: Mutex<Option<Identity>>,
    /// GitHub answered 403 to a check-run call: previews use a commit status instead.
    checks_refused: AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("repo", &self.repo)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An octocrab error as one line (the API's status and message when it answered).
fn api_error(e: octocrab::Error) -> anyhow::Error {
    api_error_ref(&e)
}

fn api_error_ref(e: &octocrab::Error) -> anyhow::Error {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            anyhow!("GitHub answered {}: {}", source.status_code, source.message)
        }
        other => anyhow!("{}", first_line(&other.to_string())),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

fn is_not_found(e: &octocrab::Error) -> bool {
    matches!(e, octocrab::Error::GitHub { source, .. } if source.status_code == axum::http::StatusCode::NOT_FOUND)
}

/// A 403 that is a refusal of the credentials (`You must authenticate via a GitHub
/// App.`, `Resource not accessible by personal access token`), not a rate limit (which
/// GitHub also answers 403, and which passes).
fn is_refusal(e: &octocrab::Error) -> bool {
    matches!(e, octocrab::Error::GitHub { source, .. }
        if source.status_code == axum::http::StatusCode::FORBIDDEN
            && !source.message.to_ascii_lowercase().contains("rate limit"))
}

async fn timed<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, octocrab::Error>>,
) -> Result<Result<T, octocrab::Error>> {
    tokio::time::timeout(API_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("{what}: no answer from GitHub in {API_TIMEOUT:?}"))
}

impl Client {
    /// Build the client. Must be called inside a tokio runtime.
    pub fn new(config: &Config) -> Result<Self> {
        let url = config.api_url.trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!("--github-url `{url}` is not an http(s) URL");
        }
        let builder = Octocrab::builder()
            .base_uri(url)
            .map_err(api_error)
            .with_context(|| format!("--github-url `{url}` is not a URL"))?
            .add_header(
                axum::http::header::ACCEPT,
                "application/vnd.github+json".to_owned(),
            );
        let (root, app) = match &config.auth {
            Auth::Token(token) => (
                builder
                    .personal_token(token.expose().to_owned())
                    .build()
                    .map_err(api_error)?,
                false,
            ),
            Auth::App { id, key } => {
                let key = octocrab::EncodingKey::from_rsa_pem(key.expose().as_bytes())
                    .map_err(|_| anyhow!("the GitHub App key is not an RSA private key in PEM"))?;
                (
                    builder
                        .app(octocrab::models::AppId(*id), key)
                        .build()
                        .map_err(api_error)?,
                    true,
                )
            }
        };
        Ok(Self {
            root: Arc::new(root),
            app,
            repo: config.repo.clone(),
            git_host: git_host(url),
            installations: Mutex::new(HashMap::new()),
            repo_installation: Mutex::new(None),
            identity: Mutex::new(None),
            checks_refused: AtomicBool::new(false),
        })
    }

    /// Whether GitHub refused check runs to these credentials (see [`CheckRunPosted`]).
    pub fn check_runs_refused(&self) -> bool {
        self.checks_refused.load(Ordering::Relaxed)
    }

    /// Remember that check runs are refused; said once in the log, on the first refusal.
    fn refuse_check_runs(&self, e: &octocrab::Error) {
        if !self.checks_refused.swap(true, Ordering::Relaxed) {
            let kind = if self.app {
                "the GitHub App (does it have the checks: write permission?)"
            } else {
                "this token (only a GitHub App can create check runs)"
            };
            tracing::warn!(
                error = %format!("{:#}", api_error_ref(e)),
                "GitHub refuses check runs to {kind}: previews are posted as the commit \
                 status `{CHECK_NAME}` and the sticky comment instead, until rollgate restarts"
            );
        }
    }

    /// Who rollgate's comments are by: with a token, its owner (`GET /user`); with an
    /// App, the App and its bot user (`GET /app`, with the App's JWT). Asked once.
    pub async fn identity(&self) -> Result<Identity> {
        if let Some(known) = self
            .identity
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .clone()
        {
            return Ok(known);
        }
        let found = if self.app {
            let app: App = timed("read the App", self.root.get("/app", None::<&()>))
                .await?
                .map_err(api_error)
                .context("cannot read the GitHub App (GET /app)")?;
            Identity::App {
                id: app.id,
                slug: app.slug,
            }
        } else {
            let me: Login = timed("read the token's user", self.root.get("/user", None::<&()>))
                .await?
                .map_err(api_error)
                .context("cannot read the token's user (GET /user)")?;
            if !valid_login(&me.login) {
                bail!(
                    "GitHub named the token's user `{}`: not a login",
                    clip(&me.login, 60)
                );
            }
            Identity::User(me.login)
        };
        *self.identity.lock().map_err(|_| anyhow!("poisoned"))? = Some(found.clone());
        Ok(found)
    }

    pub fn repo(&self) -> &RepoName {
        &self.repo
    }

    fn path(&self, rest: &str) -> String {
        format!("/repos/{}/{}/{rest}", self.repo.owner, self.repo.name)
    }

    /// The client for a call: the token's, or the installation's (from the event, else
    /// looked up for the repository once).
    async fn api(&self, installation: Option<u64>) -> Result<Arc<Octocrab>> {
        if !self.app {
            return Ok(self.root.clone());
        }
        let known = *self
            .repo_installation
            .lock()
            .map_err(|_| anyhow!("poisoned"))?;
        let id = match installation.or(known) {
            Some(id) => id,
            None => {
                let route = self.path("installation");
                let found: Id = timed(
                    "find the App installation",
                    self.root.get(&route, None::<&()>),
                )
                .await?
                .map_err(api_error)
                .context("the GitHub App is not installed on the repository")?;
                *self
                    .repo_installation
                    .lock()
                    .map_err(|_| anyhow!("poisoned"))? = Some(found.id);
                found.id
            }
        };
        let mut map = self.installations.lock().map_err(|_| anyhow!("poisoned"))?;
        if let Some(c) = map.get(&id) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            self.root
                .installation(octocrab::models::InstallationId(id))
                .map_err(api_error)?,
        );
        map.insert(id, c.clone());
        Ok(c)
    }

    /// The App's installation token for Git to `repo_url`, when that is GitHub's host
    /// over https: octocrab's cached token, refreshed when it has less than
    /// `GIT_TOKEN_MARGIN` to live. `None` with a personal token, or for another URL (Git
    /// then uses `ROLLGATE_GIT_TOKEN` or SSH, as the daemon does).
    pub async fn git_token(
        &self,
        installation: Option<u64>,
        repo_url: &str,
    ) -> Result<Option<GitToken>> {
        let Some(host) = self.git_host.as_ref().filter(|_| self.app) else {
            return Ok(None);
        };
        if !may_send_token(repo_url, host) {
            return Ok(None);
        }
        let api = self.api(installation).await?;
        let margin = chrono::Duration::from_std(GIT_TOKEN_MARGIN)?;
        let token = timed(
            "get an installation token",
            api.installation_token_with_buffer(margin),
        )
        .await?
        .map_err(api_error)
        .context("cannot get an installation token for Git")?;
        let token = Secret::new(octocrab::secrecy::ExposeSecret::expose_secret(&token))
            .context("GitHub returned an empty installation token")?;
        Ok(Some(GitToken {
            host: host.clone(),
            token,
        }))
    }

    /// Post `out` as the `rollgate` check run of `head_sha` (completed). GitHub appends
    /// annotations on every update and shows the latest run of a name, so: when the
    /// latest run there already shows the same conclusion, title and annotations (a
    /// redelivery, a reopen), only its summary is refreshed (nothing is sent when that
    /// is the same too); when any of them differ (base moved, the rules changed), a new
    /// run is created, so no stale annotation stays in view. Returns the run's id, or
    /// `Refused` when GitHub answers 403 to these credentials (a personal access token:
    /// only Apps may create check runs), now or earlier in the process's life.
    pub async fn upsert_check_run(
        &self,
        installation: Option<u64>,
        head_sha: &str,
        out: &CheckOutput,
    ) -> Result<CheckRunPosted> {
        if self.check_runs_refused() {
            return Ok(CheckRunPosted::Refused);
        }
        let api = self.api(installation).await?;
        let list: CheckRunList = match timed(
            "list check runs",
            api.get(
                self.path(&format!("commits/{head_sha}/check-runs")),
                Some(&[("check_name", CHECK_NAME), ("filter", "latest")]),
            ),
        )
        .await?
        {
            Ok(list) => list,
            Err(e) if is_refusal(&e) => {
                self.refuse_check_runs(&e);
                return Ok(CheckRunPosted::Refused);
            }
            Err(e) => return Err(api_error(e)).context("cannot list the commit's check runs"),
        };
        let mut annotations: Vec<Annotation> = out.annotations.iter().map(fix_columns).collect();
        let title = clip(&out.title, 255);
        let digest = output_digest(out.conclusion, &title, &annotations);
        let summary = with_digest(&out.summary, &digest);
        let output = |summary: &str, batch: &[Annotation]| json!({ "title": title, "summary": summary, "annotations": batch });
        if let Some(run) = list.check_runs.first()
            && let Some(shown) = &run.output
            && shown.summary.as_deref().and_then(digest_of) == Some(digest.as_str())
            && usize::try_from(shown.annotations_count).ok() == Some(annotations.len())
        {
            if shown.summary.as_deref() == Some(summary.as_str())
                && shown.title.as_deref() == Some(title.as_str())
                && run.conclusion.as_deref() == Some(out.conclusion.as_str())
            {
                return Ok(CheckRunPosted::Run(run.id));
            }
            let body = json!({
                "name": CHECK_NAME,
                "status": "completed",
                "conclusion": out.conclusion,
                "output": output(&summary, &[]),
            });
            let updated: Result<serde_json::Value, _> = timed(
                "update the check run",
                api.patch(self.path(&format!("check-runs/{}", run.id)), Some(&body)),
            )
            .await?;
            return match updated {
                Ok(_) => Ok(CheckRunPosted::Run(run.id)),
                Err(e) if is_refusal(&e) => {
                    self.refuse_check_runs(&e);
                    Ok(CheckRunPosted::Refused)
                }
                Err(e) => Err(api_error(e)).context("cannot update the check run"),
            };
        }
        let first: Vec<Annotation> = annotations
            .drain(..annotations.len().min(ANNOTATIONS_PER_REQUEST))
            .collect();
        let body = json!({
            "name": CHECK_NAME,
            "head_sha": head_sha,
            "status": "completed",
            "conclusion": out.conclusion,
            "output": output(&summary, &first),
        });
        let created: Id = match timed(
            "create the check run",
            api.post(self.path("check-runs"), Some(&body)),
        )
        .await?
        {
            Ok(created) => created,
            Err(e) if is_refusal(&e) => {
                self.refuse_check_runs(&e);
                return Ok(CheckRunPosted::Refused);
            }
            Err(e) => return Err(api_error(e)).context("cannot create the check run"),
        };
        let id = created.id;
        // More than 50 annotations: further updates append the rest.
        while !annotations.is_empty() {
            let batch: Vec<Annotation> = annotations
                .drain(..annotations.len().min(ANNOTATIONS_PER_REQUEST))
                .collect();
            let body = json!({ "output": output(&summary, &batch) });
            let _: serde_json::Value = timed(
                "add annotations",
                api.patch(self.path(&format!("check-runs/{id}")), Some(&body)),
            )
            .await?
            .map_err(api_error)
            .context("cannot add annotations to the check run")?;
        }
        Ok(CheckRunPosted::Run(id))
    }

    /// The one comment of rollgate on an issue or pull request whose body starts with
    /// `marker`: updated in place when it exists, created otherwise. Returns its id.
    /// Only a comment rollgate wrote ([`Identity::wrote`]) is ever edited: a marker is
    /// plain text anyone can post first.
    pub async fn upsert_sticky_comment(
        &self,
        installation: Option<u64>,
        issue: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64> {
        let me = self.identity().await?;
        let api = self.api(installation).await?;
        let body = clip(body, MAX_TEXT);
        let mut found = None;
        // Pages of 100, oldest first; rollgate's comment is usually early.
        for page in 1..=30u32 {
            let page_s = page.to_string();
            let comments: Vec<IssueComment> = timed(
                "list comments",
                api.get(
                    self.path(&format!("issues/{issue}/comments")),
                    Some(&[("per_page", "100"), ("page", page_s.as_str())]),
                ),
            )
            .await?
            .map_err(api_error)
            .context("cannot list the pull request's comments")?;
            let n = comments.len();
            found = comments
                .into_iter()
                .find(|c| {
                    c.body.as_deref().is_some_and(|b| b.starts_with(marker))
                        && c.user.as_ref().is_some_and(|u| {
                            me.wrote(
                                &u.login,
                                &u.kind,
                                c.performed_via_github_app.as_ref().map(|a| a.id),
                            )
                        })
                })
                .map(|c| c.id);
            if found.is_some() || n < 100 {
                break;
            }
        }
        let payload = json!({ "body": body });
        match found {
            Some(id) => {
                let _: serde_json::Value = timed(
                    "update the comment",
                    api.patch(self.path(&format!("issues/comments/{id}")), Some(&payload)),
                )
                .await?
                .map_err(api_error)
                .context("cannot update the comment")?;
                Ok(id)
            }
            None => {
                let created: Id = timed(
                    "create the comment",
                    api.post(
                        self.path(&format!("issues/{issue}/comments")),
                        Some(&payload),
                    ),
                )
                .await?
                .map_err(api_error)
                .context("cannot create the comment")?;
                Ok(created.id)
            }
        }
    }

    /// A new comment on an issue or pull request (a reply in its thread).
    pub async fn comment(&self, installation: Option<u64>, issue: u64, body: &str) -> Result<u64> {
        let api = self.api(installation).await?;
        let payload = json!({ "body": clip(body, MAX_TEXT) });
        let created: Id = timed(
            "comment",
            api.post(
                self.path(&format!("issues/{issue}/comments")),
                Some(&payload),
            ),
        )
        .await?
        .map_err(api_error)
        .context("cannot comment")?;
        Ok(created.id)
    }

    /// Set the commit status `context` on `sha`.
    pub async fn set_status(
        &self,
        installation: Option<u64>,
        sha: &str,
        context: &str,
        state: StatusState,
        description: &str,
    ) -> Result<()> {
        let api = self.api(installation).await?;
        let payload = json!({
            "state": state,
            "context": context,
            "description": clip(description, MAX_DESCRIPTION),
        });
        let _: serde_json::Value = timed(
            "set the commit status",
            api.post(self.path(&format!("statuses/{sha}")), Some(&payload)),
        )
        .await?
        .map_err(api_error)
        .context("cannot set the commit status")?;
        Ok(())
    }

    /// The merged pull requests a commit belongs to (its merge, squash or rebase).
    pub async fn merged_pulls_of(&self, installation: Option<u64>, sha: &str) -> Result<Vec<u64>> {
        let api = self.api(installation).await?;
        let pulls: Vec<PullOfCommit> = timed(
            "list the commit's pull requests",
            api.get(self.path(&format!("commits/{sha}/pulls")), None::<&()>),
        )
        .await?
        .map_err(api_error)
        .context("cannot list the commit's pull requests")?;
        Ok(pulls
            .into_iter()
            .filter(|p| p.merged_at.is_some())
            .map(|p| p.number)
            .collect())
    }

    /// `login`'s permission on the repository (the collaborator permission API).
    pub async fn permission(&self, installation: Option<u64>, login: &str) -> Result<Permission> {
        if !valid_login(login) {
            return Ok(Permission::None);
        }
        let api = self.api(installation).await?;
        let route = self.path(&format!("collaborators/{login}/permission"));
        let reply: PermissionReply =
            match timed("read a permission", api.get(&route, None::<&()>)).await? {
                Ok(r) => r,
                Err(e) if is_not_found(&e) => return Ok(Permission::None),
                Err(e) => {
                    return Err(api_error(e)).context("cannot read the collaborator's permission");
                }
            };
        Ok(match reply.permission.as_str() {
            "admin" => Permission::Admin,
            "maintain" | "write" => Permission::Write,
            "triage" | "read" => Permission::Read,
            _ => Permission::None,
        })
    }
}

/// The digest of what an update of a check run cannot replace: its annotations (GitHub
/// appends them), with its conclusion and title.
fn output_digest(conclusion: Conclusion, title: &str, annotations: &[Annotation]) -> String {
    let mut h = Sha256::new();
    h.update(json!([conclusion, title, annotations]).to_string());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `summary` (clipped) with the digest as its hidden last line.
fn with_digest(summary: &str, digest: &str) -> String {
    let marker = format!("{OUTPUT_MARKER}{digest} -->");
    let room = MAX_TEXT - marker.chars().count() - 1;
    format!("{}\n{marker}", clip(summary, room))
}

/// The digest a summary of ours ends with.
fn digest_of(summary: &str) -> Option<&str> {
    let (_, rest) = summary.rsplit_once(OUTPUT_MARKER)?;
    let digest = rest.trim_end().strip_suffix("-->")?.trim_end();
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

/// GitHub counts lines from 1, and refuses columns on annotations that span several
/// lines.
fn fix_columns(a: &Annotation) -> Annotation {
    let mut a = a.clone();
    a.start_line = a.start_line.max(1);
    a.end_line = a.end_line.max(a.start_line);
    if a.start_line != a.end_line {
        a.start_column = None;
        a.end_column = None;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::github::AnnotationLevel;

    #[test]
    fn a_check_summary_carries_the_digest_of_what_updates_cannot_replace() {
        let a = Annotation {
            path: "plans/web.yaml".into(),
            start_line: 3,
            end_line: 3,
            start_column: None,
            end_column: None,
            level: AnnotationLevel::Warning,
            title: "t".into(),
            message: "m".into(),
        };
        let d = output_digest(Conclusion::Success, "ok", std::slice::from_ref(&a));
        let summary = with_digest("<!-- rollgate:preview -->\nbody", &d);
        assert!(summary.starts_with("<!-- rollgate:preview -->\nbody\n"));
        assert_eq!(digest_of(&summary), Some(d.as_str()));
        assert_eq!(digest_of("a summary of an older rollgate"), None);
        // Any change of annotations, conclusion or title is another digest
        let other = Annotation {
            message: "n".into(),
            ..a.clone()
        };
        assert_ne!(output_digest(Conclusion::Success, "ok", &[other]), d);
        assert_ne!(
            output_digest(Conclusion::Failure, "ok", std::slice::from_ref(&a)),
            d
        );
        assert_ne!(output_digest(Conclusion::Success, "no", &[a]), d);
        // A summary at GitHub's limit keeps its digest
        let long = with_digest(&"x".repeat(2 * MAX_TEXT), &d);
        assert!(long.chars().count() <= MAX_TEXT);
        assert_eq!(digest_of(&long), Some(d.as_str()));
    }

    #[test]
    fn multi_line_annotations_lose_their_columns() {
        let a = Annotation {
            path: "plans/web.yaml".into(),
            start_line: 3,
            end_line: 5,
            start_column: Some(1),
            end_column: Some(4),
            level: AnnotationLevel::Failure,
            title: "t".into(),
            message: "m".into(),
        };
        let f = fix_columns(&a);
        assert_eq!((f.start_column, f.end_column), (None, None));
        let one = Annotation {
            end_line: 3,
            ..a.clone()
        };
        assert_eq!(fix_columns(&one), one);
    }
}
