//! The glue: the `POST /webhooks/github` handler (HTTP side) and the worker that turns
//! events into previews, command commits and replies (its own thread).
//!
//! The handler only verifies, dedupes, parses and hands over: a push to the tracked
//! branch wakes the daemon loop through its channel; pull requests and comments become
//! `Job`s on a bounded queue (full: 503, and the delivery is not remembered, so GitHub's
//! redelivery is taken). The worker runs the jobs one at a time, so two deliveries for
//! one pull request never race to create two comments. One thread cannot fill the queue
//! for all: a pull request has at most one preview waiting (a newer delivery replaces
//! it) and an issue or pull request at most [`COMMANDS_PER_ISSUE`] commands (more: 503,
//! `busy`).
//! Invariants: nothing from a pull request is ever applied (a preview reads base's rules
//! and the PR's plans from a scratch clone; only the daemon applies, and only the tracked
//! branch); a fork's pull request gets the same read-only preview and nothing else; a
//! comment command is a commit on the tracked branch made only for someone with write
//! permission, and the daemon acts on it like any other command commit; one comment
//! makes at most one commit, however often it is delivered (its id is a trailer of the
//! commit, looked for in the freshly fetched branch before committing, and a comment
//! older than [`webhook::MAX_COMMENT_AGE`] is never acted on, so neither a restart nor a
//! busy branch lets an old comment act again); someone who is not a collaborator gets
//! no answer at all (one permission call, no reply), so comment spam costs little; only
//! comments rollgate wrote itself are ever edited (`Client::upsert_sticky_comment`); the
//! scratch clone keeps no pull request's ref after its preview.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use git2::{Oid, Repository};

use super::webhook::{self, CommentCommand, Deliveries, Event};
use super::{
    Annotation, AnnotationLevel, CHECK_NAME, CheckOutput, CheckRunPosted, Client, Conclusion,
    Config, GitToken, Permission, RepoName, STICKY_MARKER, Secret, SharedGitToken, StatusState,
};
use crate::daemon::{Reconciler, TickReport};
use crate::model::Plan;
use crate::model::status::{Phase, Status};
use crate::source::remote::{GitAuth, Remote, RemoteUrl};
use crate::telemetry::{self, CommentIgnored, WebhookOutcome};

/// Jobs waiting for the worker at most; more get 503 until it catches up.
pub const QUEUE: usize = 64;

/// Comment commands waiting on one issue or pull request at most; more get 503 (`busy`).
pub const COMMANDS_PER_ISSUE: usize = 4;

/// How long someone found not to be a collaborator stays known as such: their next
/// commands in that time cost no API call at all.
const STRANGER_TTL: Duration = Duration::from_secs(60);
const STRANGERS_KEPT: usize = 1024;

/// The worker's clock, for the age of comment commands (`chrono::Utc::now` but in tests).
pub type Clock = fn() -> chrono::DateTime<chrono::Utc>;

/// How many first-parent commits of the tracked branch are searched for a comment's
/// command commit before one is made (status commits included: days of rollouts).
pub const RECENT_COMMITS: usize = 500;

/// How often the worker renews the shared installation token for Git (a new one is
/// minted only when the cached one has under five minutes left), so the daemon's fetch
/// and push always find a live one.
const GIT_TOKEN_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// What the worker does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Post the preview of a pull request (check run + sticky comment).
    Preview(webhook::PullRequest),
    /// Run (or refuse) a `/rollgate` comment command and answer in the thread.
    Command {
        comment: webhook::Comment,
        command: Result<CommentCommand, String>,
    },
    /// A rollout moved: its commit status, and on a rollback a comment on the merged PR.
    Progress(Progress),
}

/// What GitHub is told about one rollout (#7 item 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub plan: String,
    /// The plan commit that started the rollout (the status goes on it).
    pub revision: String,
    pub state: StatusState,
    /// `step 3/7 · 25% · success-rate 99.94%`.
    pub description: String,
    /// On a rollback: the comment for the pull request that merged `revision`.
    pub rollback: Option<String>,
}

/// The commit status context of a plan.
pub fn context(plan: &str) -> String {
    format!("{CHECK_NAME}/{plan}")
}

/// A status message without the phase it repeats (`rolled back: v1 removed`).
fn why(message: &str) -> &str {
    message.strip_prefix("rolled back: ").unwrap_or(message)
}

fn no_ticks(s: &str) -> String {
    s.replace('`', "'")
}

/// A measured value as people read it: rates in percent, other numbers short.
fn value(check: &str, v: f64) -> String {
    if (check.ends_with("rate") || check.ends_with("ratio")) && (0.0..=1.0).contains(&v) {
        format!("{:.2}%", v * 100.0)
    } else if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// What to tell GitHub about `status` of `plan` (pure).
pub fn progress(plan: &Plan, status: &Status) -> Progress {
    let n = crate::engine::rollout_steps(plan, status).len();
    let (i, n) = crate::model::status::step_number(status.phase, status.step, n);
    let step = format!("step {i}/{n}");
    let mut d = match status.phase {
        Phase::Pending => format!("pending · {}", no_ticks(&status.candidate)),
        Phase::Succeeded => format!("succeeded · {} is stable", no_ticks(&status.candidate)),
        Phase::Promoting if status.direct => "first rollout · deploying directly · 100%".to_owned(),
        Phase::Promoting => format!("{step} · promoting · 100%"),
        Phase::RollingBack => format!("rolling back · {}%", status.weight),
        Phase::RolledBack => "rolled back".to_owned(),
        Phase::Progressing | Phase::Paused | Phase::Held => {
            format!("{step} · {}%", status.weight)
        }
    };
    if matches!(
        status.phase,
        Phase::Progressing | Phase::Paused | Phase::Held
    ) {
        for run in &status.analysis {
            if let Some(v) = run.last.as_ref().and_then(|j| j.evidence.value) {
                d.push_str(&format!(" · {} {}", run.check, value(&run.check, v)));
            }
        }
    }
    match (status.phase, &status.hold) {
        (Phase::Paused, _) => d.push_str(" · paused"),
        (Phase::Held, Some(h)) => d.push_str(&format!(" · held ({})", h.kind.as_str())),
        (Phase::RolledBack, _) => {
            if let Some(m) = &status.message {
                d.push_str(&format!(": {}", why(m)));
            }
        }
        _ => {}
    }
    let state = match status.phase {
        Phase::Succeeded => StatusState::Success,
        Phase::RolledBack => StatusState::Failure,
        _ => StatusState::Pending,
    };
    let rollback = (status.phase == Phase::RolledBack).then(|| rollback_comment(status));
    Progress {
        plan: status.plan.clone(),
        revision: status.revision.clone(),
        state,
        description: d,
        rollback,
    }
}

/// The marker of the rollback comment of one rollout (found again, never duplicated).
pub fn rollback_marker(plan: &str, revision: &str) -> String {
    format!("<!-- rollgate:rollback:{plan}:{revision} -->")
}

fn rollback_comment(s: &Status) -> String {
    let short = &s.revision[..s.revision.len().min(12)];
    let mut o = format!(
        "{}\n### rollgate rolled back `{}`\n\nThe rollout of `{}` (from {short}) was rolled back",
        rollback_marker(&s.plan, &s.revision),
        s.plan,
        no_ticks(&s.candidate),
    );
    match &s.message {
        Some(m) => o.push_str(&format!(": {}.\n", no_ticks(why(m)).trim_end_matches('.'))),
        None => o.push_str(".\n"),
    }
    match &s.stable {
        Some(stable) => o.push_str(&format!("Traffic is back on `{}`.\n", no_ticks(stable))),
        None => o.push_str("There is no stable version to go back to; the candidate is stopped.\n"),
    }
    let evidence: Vec<String> = s
        .analysis
        .iter()
        .filter_map(|r| {
            r.last
                .as_ref()
                .map(|j| format!("- `{}`", no_ticks(&j.to_string())))
        })
        .collect();
    if evidence.is_empty() {
        o.push_str(
            "\nNo analysis verdict was recorded (a command, a revert or the target ended it).\n",
        );
    } else {
        o.push_str("\n**Evidence**\n");
        o.push_str(&evidence.join("\n"));
        o.push('\n');
    }
    o.push_str(&format!(
        "\n`rollgate history {}` shows every transition; the status commits carry the same facts as trailers.\n",
        s.plan
    ));
    o
}

/// Everything the webhook endpoint and its worker need.
#[derive(Debug, Clone)]
pub struct Options {
    pub secret: Secret,
    pub github: Config,
    /// The GitOps repository's URL (as the daemon fetches it) and the tracked branch.
    pub repo_url: String,
    pub branch: String,
    /// The worker's scratch clone (fetched pull-request heads, command commits).
    pub work_dir: PathBuf,
    pub max_body: usize,
}

/// The HTTP side's state.
#[derive(Debug)]
pub struct Receiver {
    secret: Secret,
    repo: RepoName,
    branch: String,
    max_body: usize,
    deliveries: Mutex<Deliveries>,
    wake: std::sync::mpsc::Sender<()>,
    jobs: tokio::sync::mpsc::Sender<Job>,
    pending: Arc<Mutex<Pending>>,
}

/// What waits in the queue per issue or pull request (shared by the handler, which
/// adds, and the worker, which takes).
#[derive(Debug, Default)]
struct Pending {
    /// Pull requests with a preview job queued, and their latest delivery: the job
    /// previews that one, so a burst of pushes is one preview, of the newest head.
    previews: HashMap<u64, webhook::PullRequest>,
    /// Comment commands queued per issue or pull request.
    commands: HashMap<u64, usize>,
}

impl Pending {
    /// The worker took `job` off the queue: it stops counting, and a preview becomes
    /// the latest delivery's.
    fn taken(&mut self, job: Job) -> Job {
        match job {
            Job::Preview(pr) => Job::Preview(self.previews.remove(&pr.number).unwrap_or(pr)),
            Job::Command { comment, command } => {
                self.command_done(comment.number);
                Job::Command { comment, command }
            }
            other => other,
        }
    }

    fn command_done(&mut self, number: u64) {
        if let Some(n) = self.commands.get_mut(&number) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.commands.remove(&number);
            }
        }
    }
}

/// The webhook endpoint and its worker; dropping it stops the worker after its job.
#[derive(Debug)]
pub struct Webhooks {
    receiver: Arc<Receiver>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// The last (revision, phase, step, weight) reported per plan.
    reported: Mutex<HashMap<String, (String, Phase, usize, u8)>>,
    /// The head the statuses were last read at.
    head: Mutex<Option<String>>,
    started: AtomicBool,
    git_token: SharedGitToken,
}

impl Webhooks {
    /// Start the worker. `wake` is the daemon loop's channel: a verified push to the
    /// tracked branch sends on it. Refuses to start without a secret (the `Secret` type
    /// cannot be empty) and with an unusable API configuration. With an App and the
    /// repository on GitHub's host, an installation token for Git is got first (a
    /// failure is logged: Git then fails and the daemon retries) and kept fresh by the
    /// worker: see [`Webhooks::git_token`].
    pub fn start(opts: Options, wake: std::sync::mpsc::Sender<()>) -> Result<Self> {
        Self::start_with_clock(opts, wake, chrono::Utc::now)
    }

    /// [`Webhooks::start`], with the worker reading the time from `clock` (tests).
    pub fn start_with_clock(
        opts: Options,
        wake: std::sync::mpsc::Sender<()>,
        clock: Clock,
    ) -> Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        std::fs::create_dir_all(&opts.work_dir)
            .with_context(|| format!("cannot create {}", opts.work_dir.display()))?;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let worker = Worker {
            repo_url: opts.repo_url.clone(),
            branch: opts.branch.clone(),
            dir: opts.work_dir.clone(),
            wake: wake.clone(),
            git_token: SharedGitToken::default(),
            pending: pending.clone(),
            clock,
            strangers: Mutex::new(HashMap::new()),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the GitHub worker")?;
        let client = {
            let _guard = runtime.enter();
            Client::new(&opts.github)?
        };
        let git_token = worker.git_token.clone();
        runtime.block_on(git_token.refresh(&client, &opts.repo_url));
        let thread = std::thread::Builder::new()
            .name("rollgate-github".to_owned())
            .spawn(move || runtime.block_on(worker.run(client, rx)))
            .context("cannot start the GitHub worker")?;
        Ok(Self {
            receiver: Arc::new(Receiver {
                secret: opts.secret,
                repo: opts.github.repo.clone(),
                branch: opts.branch,
                max_body: opts.max_body,
                deliveries: Mutex::new(Deliveries::default()),
                wake,
                jobs: tx,
                pending,
            }),
            worker: Some(thread),
            reported: Mutex::new(HashMap::new()),
            head: Mutex::new(None),
            started: AtomicBool::new(false),
            git_token,
        })
    }

    /// After a pass: queue a commit status for every rollout that moved (and, on a
    /// rollback, the comment on the pull request that merged it). The statuses are read
    /// at the fetched head, so a pass sees what the previous one wrote; passes on a head
    /// already looked at are skipped. At the first pass only rollouts in flight are
    /// reported (finished ones were reported by the run that finished them).
    pub fn report(&self, rec: &Reconciler, tick: &TickReport) {
        let first = !self.started.swap(true, Ordering::Relaxed);
        let Ok(mut last) = self.reported.lock() else {
            return;
        };
        let Ok(mut head) = self.head.lock() else {
            return;
        };
        if tick.head.is_none() || (!first && *head == tick.head) {
            return;
        }
        head.clone_from(&tick.head);
        for (name, parsed) in &rec.report().accepted {
            let Some(status) = rec.status(name) else {
                continue;
            };
            let key = (
                status.revision.clone(),
                status.phase,
                status.step,
                status.weight,
            );
            if last.get(name) == Some(&key) {
                continue;
            }
            last.insert(name.clone(), key);
            if (first && !status.phase.is_in_flight()) || !webhook::is_sha(&status.revision) {
                continue;
            }
            let job = Job::Progress(progress(&parsed.plan, &status));
            if self.receiver.jobs.try_send(job).is_err() {
                tracing::warn!(plan = %name, "GitHub work queue full; this status update is skipped");
            }
        }
    }

    /// The App's installation token for Git, for the daemon's own fetch and push (`main`
    /// installs it with `source::git::set_token_source`).
    pub fn git_token(&self) -> SharedGitToken {
        self.git_token.clone()
    }

    /// The route to mount on the daemon's HTTP server.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/webhooks/github", axum::routing::post(receive))
            .with_state(self.receiver.clone())
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        // The worker ends when the queue closes; the router (holding a sender) goes with
        // the server. Do not wait: a job may be mid-fetch.
        drop(self.worker.take());
    }
}

fn answer(outcome: WebhookOutcome, status: StatusCode, text: &str) -> Response {
    telemetry::global().webhook(outcome);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/github`. Status codes: 401 bad or missing signature, 413 too large,
/// 400 malformed, 202 taken in, 200 answered and ignored (unknown events, replays), 503
/// queue full. Never panics on input; every refusal is one log line.
pub async fn receive(State(r): State<Arc<Receiver>>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let declared = header_str(&parts.headers, header::CONTENT_LENGTH.as_str())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > r.max_body as u64) {
        tracing::warn!(bytes = declared, "webhook body over the size cap; refused");
        return answer(
            WebhookOutcome::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large",
        );
    }
    let body = match axum::body::to_bytes(body, r.max_body).await {
        Ok(b) => b,
        Err(_) => {
            tracing::warn!("webhook body over the size cap (or cut short); refused");
            return answer(
                WebhookOutcome::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large",
            );
        }
    };
    let signature = header_str(&parts.headers, webhook::SIGNATURE_HEADER);
    if !webhook::verify(r.secret.expose().as_bytes(), &body, signature) {
        tracing::warn!(
            signed = signature.is_some(),
            "webhook signature missing or wrong; refused"
        );
        return answer(
            WebhookOutcome::Unauthorized,
            StatusCode::UNAUTHORIZED,
            "bad signature",
        );
    }
    let Some(event) = header_str(&parts.headers, webhook::EVENT_HEADER)
        .filter(|e| !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_graphic()))
    else {
        tracing::warn!("signed webhook without a usable X-GitHub-Event; refused");
        return answer(
            WebhookOutcome::Malformed,
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Event",
        );
    };
    let Some(delivery) = header_str(&parts.headers, webhook::DELIVERY_HEADER)
        .filter(|d| webhook::valid_delivery_id(d))
    else {
        tracing::warn!(
            event,
            "signed webhook without a usable X-GitHub-Delivery; refused"
        );
        return answer(
            WebhookOutcome::Malformed,
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Delivery",
        );
    };
    let first = r
        .deliveries
        .lock()
        .map(|mut d| d.first_time(delivery, Instant::now()))
        .unwrap_or(true);
    if !first {
        tracing::info!(event, delivery, "webhook delivery seen before; ignored");
        return answer(
            WebhookOutcome::Duplicate,
            StatusCode::OK,
            "duplicate delivery ignored",
        );
    }
    let forget = || {
        if let Ok(mut d) = r.deliveries.lock() {
            d.forget(delivery);
        }
    };
    let parsed = match webhook::parse(event, &body) {
        Ok(e) => e,
        Err(e) => {
            forget();
            tracing::warn!(event, delivery, error = %e, "malformed webhook body; refused");
            return answer(
                WebhookOutcome::Malformed,
                StatusCode::BAD_REQUEST,
                "malformed body",
            );
        }
    };
    let ignore = |why: &str| {
        tracing::debug!(event, delivery, why, "webhook ignored");
        answer(WebhookOutcome::Ignored, StatusCode::OK, why)
    };
    let busy = |why: &str| {
        forget();
        answer(WebhookOutcome::Busy, StatusCode::SERVICE_UNAVAILABLE, why)
    };
    // Whether the job is queued (a full queue: logged, and the caller answers `busy`).
    let queue = |job: Job| match r.jobs.try_send(job) {
        Ok(()) => {
            tracing::info!(event, delivery, "webhook taken in");
            true
        }
        Err(_) => {
            tracing::warn!(
                event,
                delivery,
                "GitHub work queue full; asking for a redelivery"
            );
            false
        }
    };
    let queued = || answer(WebhookOutcome::Accepted, StatusCode::ACCEPTED, "queued");
    let Ok(mut pending) = r.pending.lock() else {
        return busy("busy, redeliver later");
    };
    match parsed {
        Event::Ping => answer(WebhookOutcome::Ignored, StatusCode::OK, "pong"),
        Event::Ignored { .. } => ignore("event not used by rollgate"),
        Event::Push(p) if !r.repo.is(&p.repo) => ignore("another repository"),
        Event::Push(p) => {
            if p.deleted || p.git_ref != format!("refs/heads/{}", r.branch) {
                return ignore("not the tracked branch");
            }
            // The loop fetches and reconciles now; a closed loop (shutting down) is fine.
            let _ = r.wake.send(());
            tracing::info!(delivery, after = %p.after, "push to the tracked branch: reconciling now");
            answer(
                WebhookOutcome::Accepted,
                StatusCode::ACCEPTED,
                "reconciling",
            )
        }
        Event::PullRequest(pr) if !r.repo.is(&pr.repo) => ignore("another repository"),
        Event::PullRequest(pr) if pr.base_ref != r.branch => ignore("not into the tracked branch"),
        Event::PullRequest(pr) => {
            let number = pr.number;
            if let Some(waiting) = pending.previews.get_mut(&number) {
                tracing::info!(event, delivery, pr = number, head = %pr.head_sha, "a preview of this pull request is waiting: it will show this head");
                *waiting = pr;
                return answer(
                    WebhookOutcome::Accepted,
                    StatusCode::ACCEPTED,
                    "queued (the waiting preview shows this head)",
                );
            }
            pending.previews.insert(number, pr.clone());
            if queue(Job::Preview(pr)) {
                return queued();
            }
            pending.previews.remove(&number);
            busy("busy, redeliver later")
        }
        Event::Comment(c) if !r.repo.is(&c.repo) => ignore("another repository"),
        Event::Comment(c) if c.author_is_bot => ignore("a bot's comment"),
        Event::Comment(c) => match webhook::parse_comment(&c.body) {
            None => ignore("not a rollgate command"),
            Some(command) => {
                let number = c.number;
                let waiting = pending.commands.entry(number).or_default();
                if *waiting >= COMMANDS_PER_ISSUE {
                    tracing::info!(
                        event,
                        delivery,
                        issue = number,
                        login = %c.author,
                        "{COMMANDS_PER_ISSUE} commands already wait on this issue; this one is dropped"
                    );
                    return busy("too many commands waiting on this issue");
                }
                *waiting += 1;
                if queue(Job::Command {
                    comment: c,
                    command,
                }) {
                    return queued();
                }
                pending.command_done(number);
                busy("busy, redeliver later")
            }
        },
    }
}

/// The worker: a scratch clone and the jobs, one at a time.
#[derive(Debug)]
struct Worker {
    repo_url: String,
    branch: String,
    dir: PathBuf,
    /// The daemon loop: woken after a command commit, so it is acted on at once.
    wake: std::sync::mpsc::Sender<()>,
    /// Renewed between jobs for the daemon's Git.
    git_token: SharedGitToken,
    /// What waits, per issue (shared with the handler).
    pending: Arc<Mutex<Pending>>,
    clock: Clock,
    /// Logins found not to be collaborators, and when.
    strangers: Mutex<HashMap<String, Instant>>,
}

impl Worker {
    async fn run(self, client: Client, mut rx: tokio::sync::mpsc::Receiver<Job>) {
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
        preview
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
                        annotations: p.annotations().into_iter().map(annotation).collect(),
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

fn conclusion(c: crate::preview::Conclusion) -> Conclusion {
    match c {
        crate::preview::Conclusion::Success => Conclusion::Success,
        crate::preview::Conclusion::Failure => Conclusion::Failure,
        crate::preview::Conclusion::Neutral => Conclusion::Neutral,
    }
}

/// The commit status standing in for the check run where GitHub refuses check runs. A
/// neutral preview (no plan changed) passes, as a neutral check run does.
fn status_state(c: crate::preview::Conclusion) -> StatusState {
    match c {
        crate::preview::Conclusion::Success | crate::preview::Conclusion::Neutral => {
            StatusState::Success
        }
        crate::preview::Conclusion::Failure => StatusState::Failure,
    }
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

fn title(c: crate::preview::Conclusion) -> &'static str {
    match c {
        crate::preview::Conclusion::Success => "Every changed plan passes",
        crate::preview::Conclusion::Failure => "A changed plan is rejected",
        crate::preview::Conclusion::Neutral => "No plan changes",
    }
}

fn annotation(a: crate::preview::Annotation) -> Annotation {
    Annotation {
        path: a.path,
        start_line: a.start_line.max(1),
        end_line: a.end_line.max(a.start_line).max(1),
        start_column: a.start_column,
        end_column: a.end_column,
        annotation_level: match a.level {
            crate::preview::AnnotationLevel::Failure => AnnotationLevel::Failure,
            crate::preview::AnnotationLevel::Warning => AnnotationLevel::Warning,
            crate::preview::AnnotationLevel::Notice => AnnotationLevel::Notice,
        },
        title: a.title,
        message: a.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_values_read_as_people_write_them() {
        assert_eq!(value("success-rate", 0.99944), "99.94%");
        assert_eq!(value("error-rate", 0.5), "50.00%");
        assert_eq!(value("latency-p99", 0.25), "0.2500");
        assert_eq!(value("requests", 12.0), "12");
        assert_eq!(why("rolled back: v1 removed"), "v1 removed");
        assert_eq!(no_ticks("a`b"), "a'b");
        assert_eq!(context("web"), "rollgate/web");
    }

    #[test]
    fn a_waiting_preview_shows_the_latest_delivery_and_commands_are_counted_per_issue() {
        let pr = |head: &str| webhook::PullRequest {
            repo: "Codertocat/Hello-World".into(),
            action: "synchronize".into(),
            number: 2,
            head_sha: head.into(),
            base_ref: "main".into(),
            fork: false,
            installation: None,
            labels: Vec::new(),
        };
        let mut p = Pending::default();
        // The queued job names the first head; a newer delivery replaced it meanwhile
        p.previews.insert(2, pr("b"));
        assert_eq!(p.taken(Job::Preview(pr("a"))), Job::Preview(pr("b")));
        assert!(p.previews.is_empty());
        // Without a waiting entry (none recorded), the job's own
        assert_eq!(p.taken(Job::Preview(pr("c"))), Job::Preview(pr("c")));
        // Commands: counted down as taken, forgotten at zero
        p.commands.insert(7, 2);
        p.command_done(7);
        assert_eq!(p.commands.get(&7), Some(&1));
        p.command_done(7);
        p.command_done(7);
        assert!(p.commands.is_empty());
    }
}
