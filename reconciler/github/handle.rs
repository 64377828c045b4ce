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
//! scratch clone keeps no pull request's ref after its preview. Only the leader acts
//! (#15): with `--leader-elect`, a stand-by replica verifies and answers deliveries (202)
//! but queues nothing (a push still wakes its loop, which stands by), and the worker asks
//! the [`Gate`] before each job and drops it when this replica is not the leader (a job
//! already begun finishes): so of several replicas only the leader posts previews, check
//! runs, comments and statuses, or commits comment commands.
//!
//! Files: this one is the endpoint (the queue, `Webhooks`, the `receive` handler);
//! `handle/worker.rs` runs the jobs; `handle/render.rs` words what GitHub is told
//! (rollout progress, rollback comments, a preview's check run).

mod render;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::webhook::{self, CommentCommand, Deliveries, Event};
use super::{Client, Config, RepoName, Secret, SharedGitToken};
use crate::daemon::{Reconciler, TickReport};
use crate::leader::Gate;
use crate::model::status::Phase;
use crate::telemetry::{self, WebhookOutcome};

pub use render::{Progress, context, progress, rollback_marker};
pub use worker::RECENT_COMMITS;
use worker::Worker;

/// Jobs waiting for the worker at most; more get 503 until it catches up.
pub const QUEUE: usize = 64;

/// Comment commands waiting on one issue or pull request at most; more get 503 (`busy`).
pub const COMMANDS_PER_ISSUE: usize = 4;

/// The worker's clock, for the age of comment commands (`chrono::Utc::now` but in tests).
pub type Clock = fn() -> chrono::DateTime<chrono::Utc>;

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
    /// The scratch clone's size (bytes) above which it is removed after a job: it is a
    /// cache, fetched again by the next one (`SCRATCH_BUDGET`).
    pub scratch_budget: u64,
}

/// The scratch clone's size limit in production: 1 GiB. What a pull request brings
/// stays in the clone (unreachable once its ref is pruned) until Git's gc prunes it two
/// weeks later; a fork pushing large blobs again and again would grow it without this.
pub const SCRATCH_BUDGET: u64 = 1 << 30;

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
    /// Whether this replica is the leader: a stand-by queues nothing.
    leader: Gate,
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
    /// worker: see [`Webhooks::git_token`]. `leader` says whether this replica may act
    /// now ([`Gate::always`] without leader election): a stand-by takes no job in, and
    /// the worker drops a job it takes while not the leader.
    pub fn start(opts: Options, wake: std::sync::mpsc::Sender<()>, leader: Gate) -> Result<Self> {
        Self::start_with_clock(opts, wake, leader, chrono::Utc::now)
    }

    /// [`Webhooks::start`], with the worker reading the time from `clock` (tests).
    pub fn start_with_clock(
        opts: Options,
        wake: std::sync::mpsc::Sender<()>,
        leader: Gate,
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
            scratch_budget: opts.scratch_budget,
            wake: wake.clone(),
            git_token: SharedGitToken::default(),
            pending: pending.clone(),
            leader: leader.clone(),
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
                leader,
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
    // A stand-by replica acts on nothing: the delivery is refused with a 503, not
    // queued and not remembered, so GitHub lists it as failed (to redeliver) instead of
    // done, and a redelivery that reaches the leader is taken.
    let stand_by = || {
        forget();
        tracing::info!(
            event,
            delivery,
            "not the leader: webhook answered and dropped, the leader acts"
        );
        answer(
            WebhookOutcome::Ignored,
            StatusCode::SERVICE_UNAVAILABLE,
            "stand-by: only the leader acts; redeliver",
        )
    };
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
        Event::PullRequest(_) if !r.leader.is_leader() => stand_by(),
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
            Some(_) if !r.leader.is_leader() => stand_by(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
