//! GitHub: webhooks in, check runs, sticky comments, commit statuses and replies out.
//!
//! ```text
//!  POST /webhooks/github ─▶ webhook::verify (HMAC, constant time) ─▶ dedupe ─▶ parse
//!        (server.rs, HTTP runtime)                                            │
//!            push to the tracked branch ──▶ wake the daemon loop (channel) ◀──┤
//!            pull_request / issue_comment ──▶ Job queue ─▶ handle::Worker ─────┘
//!                                                   (its own thread: git fetch into a
//!                                                    scratch clone, preview, commands)
//!                                                          │
//!                                                          ▼
//!                                          Client (octocrab) ─▶ api.github.com / GHE
//! ```
//! `Client` is the only door to the GitHub API: a token, or a GitHub App (JWT →
//! installation token, cached by octocrab and refreshed 30 s before it expires), and a
//! base URL (GitHub Enterprise, tests). With an App, Git over https to GitHub's own host
//! (the worker's, and the daemon's fetch and status commits through `SharedGitToken`,
//! minted at start and kept fresh by the worker) uses the same cached installation token
//! (`GitToken`, `x-access-token` basic auth) when `ROLLGATE_GIT_TOKEN` is not set. Invariants:
//! secrets (token, App key, installation tokens, webhook secret) come from the
//! environment, files or GitHub only and are `Secret`s, whose `Debug` and `Display`
//! print `***`, so they cannot reach a log line; a token goes to GitHub's host only, and
//! never in clear over a network; the HTTP side never touches Git or a target: it hands
//! work over channels. rollgate edits only comments it wrote itself (its [`Identity`]:
//! the token's user, or the App's bot), never one that merely starts with its marker.
//! Where GitHub refuses check runs (403: a personal access token), a preview falls back
//! to a commit status; the refusal is remembered for the process's life.

pub mod handle;
pub mod webhook;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use octocrab::Octocrab;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The name of rollgate's check run and the prefix of its commit status contexts.
pub const CHECK_NAME: &str = "rollgate";

/// The first line of rollgate's sticky pull-request comment (the preview's marker).
pub const STICKY_MARKER: &str = "<!-- rollgate:preview -->";

pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// Every API call gives up after this long (the worker then logs and goes on).
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A secret value (token, private key, webhook secret). It prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// `None` for an empty value (an empty secret is no secret).
    pub fn new(value: impl Into<String>) -> Option<Self> {
        let v: String = value.into();
        let trimmed = v.trim_end_matches(['\n', '\r']);
        (!trimmed.trim().is_empty()).then(|| Secret(trimmed.to_owned()))
    }

    /// The file when one is named, else the environment variable `env`.
    pub fn load(file: Option<&Path>, env: &str) -> Result<Option<Self>> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the secret file {}", file.display()))?;
            return Secret::new(text)
                .map(Some)
                .with_context(|| format!("the secret file {} is empty", file.display()));
        }
        Ok(std::env::var(env).ok().and_then(Secret::new))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A GitHub App's installation token for Git over http(s), bound to GitHub's host: it
/// is only handed out for a URL on that host, over https (or plain http to loopback,
/// where no network sees it). Prints its host only.
#[derive(Clone)]
pub struct GitToken {
    host: String,
    token: Secret,
}

impl GitToken {
    /// The token, when Git may send it with a request to `url`.
    pub fn for_url(&self, url: &str) -> Option<&str> {
        may_send_token(url, &self.host).then(|| self.token.expose())
    }
}

impl std::fmt::Debug for GitToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitToken")
            .field("host", &self.host)
            .field("token", &self.token)
            .finish()
    }
}

/// The App's latest installation token for Git, shared between the worker, which keeps
/// it fresh, and the daemon's own fetch and push (`source::git::set_token_source`).
/// Hands the token out only through [`GitToken::for_url`]; empty with a personal token
/// or a repository elsewhere.
#[derive(Debug, Clone, Default)]
pub struct SharedGitToken(Arc<RwLock<Option<GitToken>>>);

impl SharedGitToken {
    /// The token, when Git may send it with a request to `url`.
    pub fn for_url(&self, url: &str) -> Option<String> {
        let token = self.0.read().ok()?;
        token.as_ref()?.for_url(url).map(str::to_owned)
    }

    fn set(&self, token: Option<GitToken>) {
        if let Ok(mut t) = self.0.write() {
            *t = token;
        }
    }

    /// Replace the token with `client`'s for `repo_url` (minted when the cached one has
    /// less than `GIT_TOKEN_MARGIN` to live). On failure the old one stays: it may
    /// still be valid, and Git's failure says the rest.
    pub async fn refresh(&self, client: &Client, repo_url: &str) {
        match client.git_token(None, repo_url).await {
            Ok(token) => self.set(token),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "cannot get an installation token for Git; retrying"
            ),
        }
    }
}

/// `scheme` and `host[:port]` of a URL (no user info), e.g. `("https", "github.com")`.
fn scheme_and_authority(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    (!scheme.is_empty() && !authority.is_empty()).then_some((scheme, authority))
}

/// The host (`host[:port]`) serving Git next to the API at `api_url`: `github.com` for
/// `https://api.github.com`, the same host for GitHub Enterprise Server
/// (`https://HOST/api/v3`).
pub fn git_host(api_url: &str) -> Option<String> {
    let (_, authority) = scheme_and_authority(api_url)?;
    let authority = authority.to_ascii_lowercase();
    Some(if authority == "api.github.com" {
        "github.com".to_owned()
    } else {
        authority
    })
}

/// Whether a token for `host` may go with a request to `url`: https to that very host,
/// or plain http to it on loopback (a local proxy, tests); never ssh, files or others.
pub fn may_send_token(url: &str, host: &str) -> bool {
    let Some((scheme, authority)) = scheme_and_authority(url) else {
        return false;
    };
    if !authority.eq_ignore_ascii_case(host) {
        return false;
    }
    if scheme.eq_ignore_ascii_case("https") {
        return true;
    }
    scheme.eq_ignore_ascii_case("http") && is_loopback(authority)
}

fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `owner/name` of the repository rollgate reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    pub owner: String,
    pub name: String,
}

impl RepoName {
    /// `owner/name` from a GitHub clone URL (`https://host/owner/name(.git)`,
    /// `git@host:owner/name.git`, `ssh://git@host/owner/name.git`).
    pub fn from_url(url: &str) -> Option<Self> {
        let path = if let Some(rest) = url.strip_prefix("git@") {
            rest.split_once(':')?.1
        } else {
            let (_, rest) = url.split_once("://")?;
            rest.split_once('/')?.1
        };
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        path.parse().ok()
    }

    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// Whether a payload's `repository.full_name` is this repository.
    pub fn is(&self, full_name: &str) -> bool {
        full_name.eq_ignore_ascii_case(&self.full_name())
    }
}

impl std::str::FromStr for RepoName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((owner, name)) = s.split_once('/') else {
            bail!("`{s}` is not OWNER/NAME");
        };
        let owner_ok = !owner.is_empty()
            && owner.len() <= 39
            && owner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !owner_ok || !name_ok {
            bail!("`{s}` is not OWNER/NAME of a GitHub repository");
        }
        Ok(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// How rollgate authenticates to the API.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A personal access token or any other bearer token.
    Token(Secret),
    /// A GitHub App: its id and PEM private key (JWT → installation tokens).
    App { id: u64, key: Secret },
}

impl Auth {
    /// From the daemon's flags: an App when `app_id` and `app_key_file` are given, else
    /// a token from `token_file` or `GITHUB_TOKEN`; `None` when there is nothing.
    pub fn load(
        token_file: Option<&Path>,
        app_id: Option<u64>,
        app_key_file: Option<&Path>,
    ) -> Result<Option<Self>> {
        match (app_id, app_key_file) {
            (Some(id), Some(file)) => {
                let key = Secret::load(Some(file), "")?
                    .with_context(|| format!("the App key file {} is empty", file.display()))?;
                Ok(Some(Auth::App { id, key }))
            }
            (Some(_), None) => bail!("--github-app-id needs --github-app-key-file"),
            (None, Some(_)) => bail!("--github-app-key-file needs --github-app-id"),
            (None, None) => Ok(Secret::load(token_file, "GITHUB_TOKEN")?.map(Auth::Token)),
        }
    }
}

/// Where and as whom to call the API.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server.
    pub api_url: String,
    pub repo: RepoName,
    pub auth: Auth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conclusion {
    Success,
    Failure,
    Neutral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnotationLevel {
    Notice,
    Warning,
    Failure,
}

/// A check-run annotation, in the API's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_column: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_column: Option<u32>,
    pub annotation_level: AnnotationLevel,
    pub title: String,
    pub message: String,
}

/// What a completed `rollgate` check run says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutput {
    pub conclusion: Conclusion,
    pub title: String,
    /// Markdown.
    pub summary: String,
    pub annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
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

#[derive(Debug, Deserialize)]
struct Id {
    id: u64,
}

#[derive(Debug, Deserialize)]
struct ExistingCheckRun {
    id: u64,
    #[serde(default)]
    conclusion: Option<String>,
    #[serde(default)]
    output: Option<ExistingOutput>,
}

#[derive(Debug, Deserialize)]
struct ExistingOutput {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    annotations_count: u64,
}

#[derive(Debug, Deserialize)]
struct CheckRunList {
    check_runs: Vec<ExistingCheckRun>,
}

#[derive(Debug, Deserialize)]
struct IssueComment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    user: Option<CommentUser>,
    #[serde(default)]
    performed_via_github_app: Option<Id>,
}

#[derive(Debug, Deserialize)]
struct CommentUser {
    login: String,
    #[serde(rename = "type", default)]
    kind: String,
}

/// `GET /user` (a token's owner) and `GET /app` (the App, with its JWT).
#[derive(Debug, Deserialize)]
struct Login {
    login: String,
}

#[derive(Debug, Deserialize)]
struct App {
    id: u64,
    slug: String,
}

/// Who rollgate's comments are written by: the token's owner (`GET /user`), or the
/// App (its id, and its bot user `<slug>[bot]`, from `GET /app`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    User(String),
    App { id: u64, slug: String },
}

impl Identity {
    /// Whether a comment by `login` (of user type `kind`), made through the App
    /// `via_app` if any, is rollgate's own. For a token: its owner's. For an App: its bot
    /// user's, known by its login `<slug>[bot]` or by the App it was made through; a
    /// comment of a person made through the App (a user-to-server token) is that
    /// person's, never rollgate's.
    pub fn wrote(&self, login: &str, kind: &str, via_app: Option<u64>) -> bool {
        match self {
            Identity::User(me) => login.eq_ignore_ascii_case(me),
            Identity::App { id, slug } => {
                kind.eq_ignore_ascii_case("bot")
                    && (login.eq_ignore_ascii_case(&format!("{slug}[bot]")) || via_app == Some(*id))
            }
        }
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

#[derive(Debug, Deserialize)]
struct PullOfCommit {
    number: u64,
    #[serde(default)]
    merged_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PermissionReply {
    permission: String,
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

/// A GitHub login (letters, digits, dashes; an App's `name[bot]`), safe in a URL path.
pub fn valid_login(login: &str) -> bool {
    let core = login.strip_suffix("[bot]").unwrap_or(login);
    !core.is_empty()
        && core.len() <= 39
        && core.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Conclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Neutral => "neutral",
        }
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

/// GitHub refuses columns on annotations that span several lines.
fn fix_columns(a: &Annotation) -> Annotation {
    let mut a = a.clone();
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

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2\n").expect("a secret");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "*** *** Some(***)");
        let auth = Auth::Token(s);
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert!(Secret::new("").is_none() && Secret::new(" \n").is_none());
    }

    #[test]
    fn repo_names_from_urls_and_flags() {
        let r = |s: &str| RepoName::from_url(s).map(|r| r.full_name());
        assert_eq!(
            r("https://github.com/acme/ops.git").as_deref(),
            Some("acme/ops")
        );
        assert_eq!(
            r("https://ghe.example/acme/ops").as_deref(),
            Some("acme/ops")
        );
        assert_eq!(
            r("git@github.com:acme/ops.git").as_deref(),
            Some("acme/ops")
        );
        assert_eq!(
            r("ssh://git@github.com/acme/ops.git").as_deref(),
            Some("acme/ops")
        );
        assert_eq!(r("/srv/ops.git"), None);
        assert!("acme/../x".parse::<RepoName>().is_err());
        assert!("acme".parse::<RepoName>().is_err());
        assert!("a cme/x".parse::<RepoName>().is_err());
        assert!("acme/x?y".parse::<RepoName>().is_err());
        assert!("Codertocat/Hello-World".parse::<RepoName>().is_ok());
    }

    #[test]
    fn an_installation_token_goes_to_githubs_host_only_and_never_in_clear() {
        assert_eq!(
            git_host("https://api.github.com").as_deref(),
            Some("github.com")
        );
        assert_eq!(
            git_host("https://GHE.example/api/v3").as_deref(),
            Some("ghe.example")
        );
        let ok = |url: &str, host: &str| may_send_token(url, host);
        assert!(ok("https://github.com/acme/ops.git", "github.com"));
        assert!(ok("https://x@GitHub.com/acme/ops", "github.com"));
        assert!(ok("https://ghe.example/acme/ops.git", "ghe.example"));
        assert!(ok("http://127.0.0.1:8080/git/ops.git", "127.0.0.1:8080"));
        assert!(ok("http://localhost:8080/ops.git", "localhost:8080"));
        assert!(ok("http://[::1]:8080/ops.git", "[::1]:8080"));
        // Another host (or port), plain http over a network, ssh, files: never
        assert!(!ok("https://gitlab.com/acme/ops.git", "github.com"));
        assert!(!ok(
            "https://github.com.evil.example/acme/ops",
            "github.com"
        ));
        assert!(!ok(
            "https://evil.example/github.com/acme/ops",
            "github.com"
        ));
        assert!(!ok("https://github.com@evil.example/x", "github.com"));
        assert!(!ok("http://127.0.0.1:9090/ops.git", "127.0.0.1:8080"));
        assert!(!ok("http://ghe.example/acme/ops.git", "ghe.example"));
        assert!(!ok("ssh://git@github.com/acme/ops.git", "github.com"));
        assert!(!ok("git@github.com:acme/ops.git", "github.com"));
        assert!(!ok("/srv/ops.git", "github.com"));
        let t = GitToken {
            host: "github.com".to_owned(),
            token: Secret::new("ghs_secret").expect("a token"),
        };
        assert_eq!(t.for_url("https://github.com/a/b"), Some("ghs_secret"));
        assert_eq!(t.for_url("https://gitlab.com/a/b"), None);
        assert!(!format!("{t:?}").contains("ghs_secret"));
        // The daemon's shared cell hands it out through the same gate, and nothing empty
        let shared = SharedGitToken::default();
        assert_eq!(shared.for_url("https://github.com/a/b"), None);
        shared.set(Some(t));
        assert_eq!(
            shared.for_url("https://github.com/a/b").as_deref(),
            Some("ghs_secret")
        );
        assert_eq!(shared.for_url("ssh://git@github.com/a/b"), None);
        assert_eq!(shared.for_url("file:///srv/ops.git"), None);
        assert!(!format!("{shared:?}").contains("ghs_secret"));
    }

    #[test]
    fn a_check_summary_carries_the_digest_of_what_updates_cannot_replace() {
        let a = Annotation {
            path: "plans/web.yaml".into(),
            start_line: 3,
            end_line: 3,
            start_column: None,
            end_column: None,
            annotation_level: AnnotationLevel::Warning,
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
    fn regression_only_rollgates_own_comments_are_its_own() {
        // A token: its owner's comments only
        let me = Identity::User("rollgate-ci".into());
        assert!(me.wrote("rollgate-ci", "User", None));
        assert!(me.wrote("Rollgate-CI", "User", None));
        assert!(!me.wrote("mallory", "User", None));
        assert!(!me.wrote("rollgate-ci[bot]", "Bot", Some(7)));
        // An App: its bot user, by its login or by the App it came through
        let app = Identity::App {
            id: 4242,
            slug: "rollgate".into(),
        };
        assert!(app.wrote("rollgate[bot]", "Bot", None));
        assert!(app.wrote("rollgate[bot]", "Bot", Some(4242)));
        assert!(app.wrote("renamed[bot]", "Bot", Some(4242)));
        // Not: a person named like the bot, another App's bot, a person acting through
        // the App (a user-to-server token), a login without the bot's type
        assert!(!app.wrote("rollgate", "User", None));
        assert!(!app.wrote("evil[bot]", "Bot", Some(666)));
        assert!(!app.wrote("evil[bot]", "Bot", None));
        assert!(!app.wrote("mallory", "User", Some(4242)));
        assert!(!app.wrote("rollgate[bot]", "User", None));
    }

    #[test]
    fn logins_are_safe_path_segments() {
        assert!(valid_login("Codertocat") && valid_login("rollgate[bot]"));
        assert!(!valid_login("../x") && !valid_login("") && !valid_login("a/b"));
    }

    #[test]
    fn multi_line_annotations_lose_their_columns() {
        let a = Annotation {
            path: "plans/web.yaml".into(),
            start_line: 3,
            end_line: 5,
            start_column: Some(1),
            end_column: Some(4),
            annotation_level: AnnotationLevel::Failure,
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
