//! The outbox: what each notifier has acknowledged, what is pending, and delivery.
//!
//! Each notifier has its own thread and its own record, `STATE/notify/<name>.acked`:
//! the last commit it has dealt with (delivered with a 2xx, refused for good with a
//! 4xx, or not announced at all). What is pending is always derived from Git: the
//! first-parent commits after that record up to the newest commit known (the head at
//! start, then each pushed status or revert commit). The daemon's side of the queue
//! holds only wake-ups (bounded, one slot: a full slot already means "look again").
//!
//! Invariants: the record moves only forward, only after its commit is dealt with, and
//! is replaced atomically (written aside, then renamed), so after a crash each commit
//! is sent again only if the crash fell between the receiver's answer and the rename;
//! a commit is never skipped (retries are bounded per round, with exponential backoff,
//! and a round that gives up starts again from the record after `rescan`); the first
//! start records the head, so history from before notifications were set up is not
//! announced; nothing here blocks the caller of [`Outbox::pushed`]; errors are logged
//! without the URL (a secret).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use git2::{Oid, Repository};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Event, Notifier, Post};
use crate::model::status::Status;
use crate::writeback::messages::status_path;

/// How hard a round tries, and how long it waits.
#[derive(Debug, Clone)]
pub struct Options {
    /// Attempts per event and round.
    pub attempts: u32,
    /// The wait after the first failure; doubled after each next one, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a round that gave up waits before it starts again from the record.
    pub rescan: Duration,
    /// One request's time limit.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attempts: 8,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            rescan: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The wait before attempt `n + 1` after `n` failures (`n >= 1`).
pub fn backoff(opts: &Options, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    opts.first_backoff
        .saturating_mul(factor)
        .min(opts.max_backoff)
}

/// The path of a notifier's record.
pub fn acked_path(state_dir: &Path, notifier: &str) -> PathBuf {
    state_dir.join("notify").join(format!("{notifier}.acked"))
}

/// The commit a record holds (`None`: no record, or not a commit id).
pub fn read_acked(path: &Path) -> Option<Oid> {
    let text = std::fs::read_to_string(path).ok()?;
    Oid::from_str(text.trim()).ok()
}

/// Replace the record atomically.
pub fn write_acked(path: &Path, commit: Oid) -> Result<()> {
    let aside = path.with_extension("acked.tmp");
    std::fs::write(&aside, format!("{commit}\n"))
        .with_context(|| format!("cannot write {}", aside.display()))?;
    std::fs::rename(&aside, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// The notifiers' threads, and how the daemon wakes them.
#[derive(Debug)]
pub struct Outbox {
    newest: Arc<Mutex<Oid>>,
    wakes: Vec<SyncSender<()>>,
    stop: Arc<AtomicBool>,
}

impl Outbox {
    /// Start one thread per notifier, reading commits from the repository at `git_dir`
    /// (the daemon's clone) and keeping records under `state_dir/notify/`. `head` is the
    /// branch's head now: a notifier without a record starts from it; one with a record
    /// announces every commit after it, up to `head`, first. `author` (`Name <email>`,
    /// the settings' `writeBack.author`) is whose commits are announced: as the daemon
    /// trusts only its own status commits, a human's commit with copied trailers is not
    /// a transition.
    pub fn start(
        git_dir: &Path,
        state_dir: &Path,
        head: Oid,
        author: &str,
        notifiers: Vec<Box<dyn Notifier>>,
        opts: Options,
    ) -> Result<Outbox> {
        let dir = state_dir.join("notify");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let newest = Arc::new(Mutex::new(head));
        let stop = Arc::new(AtomicBool::new(false));
        let mut wakes = Vec::new();
        for n in notifiers {
            let path = acked_path(state_dir, n.name());
            if read_acked(&path).is_none() {
                write_acked(&path, head)?;
            }
            let (tx, rx) = sync_channel(1);
            wakes.push(tx);
            let worker = Worker {
                git_dir: git_dir.to_owned(),
                path,
                author: author.to_owned(),
                notifier: n,
                newest: newest.clone(),
                stop: stop.clone(),
                opts: opts.clone(),
            };
            std::thread::Builder::new()
                .name(format!("notify-{}", worker.notifier.name()))
                .spawn(move || worker.run(&rx))
                .context("cannot start a notifier thread")?;
        }
        Ok(Outbox {
            newest,
            wakes,
            stop,
        })
    }

    /// A status or revert commit was pushed: announce it (and anything before it not yet
    /// announced). Never blocks.
    pub fn pushed(&self, commit: Oid) {
        if let Ok(mut n) = self.newest.lock() {
            *n = commit;
        }
        for w in &self.wakes {
            match w.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::warn!("a notifier thread has stopped");
                }
            }
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakes {
            let _ = w.try_send(());
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// Worth another try (no connection, a timeout, 408, 429, 5xx).
    Retry(String),
    /// Refused for good (another 4xx): trying again would be refused again.
    Refused(String),
}

/// How a round over the pending commits ended.
enum Round {
    Done,
    GaveUp,
    Stopped,
}

struct Worker {
    git_dir: PathBuf,
    path: PathBuf,
    author: String,
    notifier: Box<dyn Notifier>,
    newest: Arc<Mutex<Oid>>,
    stop: Arc<AtomicBool>,
    opts: Options,
}

impl Worker {
    fn run(self, wake: &Receiver<()>) {
        let name = self.notifier.name().to_owned();
        let span = tracing::info_span!("notify", notifier = %name);
        let _g = span.enter();
        let http = match Http::new() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot start the notifier's HTTP client");
                return;
            }
        };
        let mut wait = self.opts.rescan;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            match self.round(&http) {
                Ok(Round::Done) => wait = self.opts.rescan,
                Ok(Round::GaveUp) => wait = self.opts.rescan,
                Ok(Round::Stopped) => return,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot read the pending commits; trying again later");
                }
            }
            match wake.recv_timeout(wait) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Every commit after the record up to the newest, in order.
    fn round(&self, http: &Http) -> Result<Round> {
        let repo = Repository::open_bare(&self.git_dir)
            .or_else(|_| Repository::open(&self.git_dir))
            .context("cannot open the daemon's clone")?;
        let newest = *self
            .newest
            .lock()
            .map_err(|_| anyhow::anyhow!("the newest commit's lock is poisoned"))?;
        let acked = read_acked(&self.path);
        if acked == Some(newest) {
            return Ok(Round::Done);
        }
        let from = match acked {
            Some(a) if repo.graph_descendant_of(newest, a).unwrap_or(false) => Some(a),
            _ => {
                // The record is not behind the head (history rewritten, a record from
                // another repository): nothing can be derived; start again from here.
                tracing::warn!(acked = ?acked.map(|a| a.to_string()), head = %newest, "the acknowledged commit is not in the branch's history; announcing from its head on");
                write_acked(&self.path, newest)?;
                return Ok(Round::Done);
            }
        };
        let mut walk = repo.revwalk()?;
        walk.push(newest)?;
        walk.simplify_first_parent()?;
        if let Some(a) = from {
            walk.hide(a)?;
        }
        let mut pending = walk
            .take(crate::daemon::HISTORY_LIMIT)
            .collect::<Result<Vec<_>, _>>()?;
        pending.reverse();
        for id in pending {
            let commit = repo.find_commit(id)?;
            // A batch commit (one pass, many plans) is one event per plan; the record is
            // per commit, so a batch cut short is announced again from its first plan.
            let entries = if self.wrote(&commit) {
                crate::history::entries(&commit)
            } else {
                Vec::new()
            };
            for entry in entries {
                let status = status_at(&repo, &commit, &entry.plan);
                if let Some(event) = Event::from_commit(&entry, status.as_ref())
                    && self
                        .notifier
                        .selects(&labels_at(&repo, &commit, &entry.plan))
                {
                    match self.deliver(http, &event) {
                        Round::Done => {}
                        other => return Ok(other),
                    }
                }
            }
            write_acked(&self.path, id)?;
        }
        Ok(Round::Done)
    }

    /// Whether rollgate wrote `commit` (its author is rollgate's).
    fn wrote(&self, commit: &git2::Commit<'_>) -> bool {
        let a = commit.author();
        let by = format!("{} <{}>", a.name().unwrap_or(""), a.email().unwrap_or(""));
        by == self.author
    }

    /// One event, with bounded retries; `Done` once delivered or refused for good.
    fn deliver(&self, http: &Http, event: &Event) -> Round {
        let post = self.notifier.post(event);
        let mut failures = 0;
        loop {
            match http.send(&post, self.opts.timeout) {
                Sent::Delivered => {
                    tracing::info!(commit = %event.commit, plan = %event.plan, phase = %event.phase, "notification delivered");
                    return Round::Done;
                }
                Sent::Refused(why) => {
                    tracing::warn!(commit = %event.commit, plan = %event.plan, error = %why, "notification refused by the receiver; not sent again");
                    return Round::Done;
                }
                Sent::Retry(why) => {
                    failures += 1;
                    if failures >= self.opts.attempts {
                        tracing::warn!(commit = %event.commit, plan = %event.plan, error = %why, attempts = failures, "notification not delivered; trying again later");
                        return Round::GaveUp;
                    }
                    let wait = backoff(&self.opts, failures);
                    tracing::debug!(commit = %event.commit, error = %why, ?wait, "notification failed; retrying");
                    if !self.sleep(wait) {
                        return Round::Stopped;
                    }
                }
            }
        }
    }

    /// Sleep unless stopped (`false`: stopped).
    fn sleep(&self, d: Duration) -> bool {
        let step = Duration::from_millis(100);
        let mut left = d;
        while !left.is_zero() {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let s = left.min(step);
            std::thread::sleep(s);
            left -= s;
        }
        !self.stop.load(Ordering::Relaxed)
    }
}

/// The plan's status file in `commit` (for the stable version).
fn status_at(repo: &Repository, commit: &git2::Commit<'_>, plan: &str) -> Option<Status> {
    let text = file_at(repo, commit, &status_path(plan))?;
    Status::from_yaml(&text).ok()
}

fn file_at(repo: &Repository, commit: &git2::Commit<'_>, path: &str) -> Option<String> {
    let entry = crate::source::git::entry_at(&commit.tree().ok()?, path)?;
    let blob = repo.find_blob(entry.id()).ok()?;
    String::from_utf8(blob.content().to_vec()).ok()
}

/// The plan's labels in `commit`: `plans/<plan>.yaml` (or `.yml`), else the plan file
/// under `plans/` whose `metadata.name` is the plan. None found: no labels.
fn labels_at(repo: &Repository, commit: &git2::Commit<'_>, plan: &str) -> BTreeMap<String, String> {
    let read = |path: &str| -> Option<(String, BTreeMap<String, String>)> {
        let text = file_at(repo, commit, path)?;
        let root = crate::model::yaml::parse(path, &text).ok()?;
        let meta = root.get("metadata")?;
        let name = meta.get("name")?.as_str()?.to_owned();
        let labels = meta
            .get("labels")
            .map(|l| l.to_json())
            .and_then(|v| v.as_object().cloned())
            .map(|m| {
                m.into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Some((name, labels))
    };
    for path in [format!("plans/{plan}.yaml"), format!("plans/{plan}.yml")] {
        if let Some((name, labels)) = read(&path)
            && name == plan
        {
            return labels;
        }
    }
    let Some(dir) = commit
        .tree()
        .ok()
        .and_then(|t| t.get_path(Path::new("plans")).ok())
        .and_then(|e| repo.find_tree(e.id()).ok())
    else {
        return BTreeMap::new();
    };
    for e in dir.iter() {
        let Ok(file) = e.name() else { continue };
        if let Some((name, labels)) = read(&format!("plans/{file}"))
            && name == plan
        {
            return labels;
        }
    }
    BTreeMap::new()
}

type Body = Full<Bytes>;

/// A small HTTP/1.1 client: https through rustls with the system's roots (when the
/// system has any), plain http otherwise.
struct Http {
    rt: tokio::runtime::Runtime,
    https: Option<Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>>,
    plain: Client<HttpConnector, Body>,
}

impl Http {
    fn new() -> Result<Http> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the notifier's runtime")?;
        let https = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
        {
            Ok(b) => Some(
                Client::builder(TokioExecutor::new())
                    .build(b.https_or_http().enable_http1().build()),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "no CA certificates on this machine: notifications go over plain http only");
                None
            }
        };
        let plain = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Ok(Http { rt, https, plain })
    }

    fn send(&self, post: &Post, timeout: Duration) -> Sent {
        let url = post.url.expose();
        let Ok(uri) = url.parse::<hyper::Uri>() else {
            return Sent::Refused("the URL in the environment is not a URL".to_owned());
        };
        let mut req = hyper::Request::post(uri);
        for (k, v) in &post.headers {
            req = req.header(*k, v.as_str());
        }
        req = req.header(
            "user-agent",
            concat!("rollgate/", env!("CARGO_PKG_VERSION")),
        );
        let Ok(req) = req.body(Full::new(Bytes::from(post.body.clone()))) else {
            return Sent::Refused("cannot build the request".to_owned());
        };
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            return Sent::Refused("the URL in the environment is not an http(s) URL".to_owned());
        }
        let fut = async {
            let resp = match (&self.https, https) {
                (Some(c), _) => c.request(req).await,
                (None, false) => self.plain.request(req).await,
                (None, true) => {
                    return Sent::Retry("no CA certificates for https on this machine".to_owned());
                }
            };
            match resp {
                Ok(r) => {
                    let status = r.status();
                    // Read the answer to the end so the connection can be reused.
                    let _ = r.into_body().collect().await;
                    classify(status.as_u16())
                }
                Err(e) => Sent::Retry(chain(&e)),
            }
        };
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, fut).await })
        {
            Ok(sent) => sent,
            Err(_) => Sent::Retry(format!("no answer within {timeout:?}")),
        }
    }
}

/// What an HTTP status means for the event.
pub fn classify(status: u16) -> Sent {
    match status {
        200..=299 => Sent::Delivered,
        408 | 429 | 500..=599 => Sent::Retry(format!("the receiver answered {status}")),
        _ => Sent::Refused(format!("the receiver answered {status}")),
    }
}

/// An error and its causes, without the URL (hyper's messages do not carry it).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let o = Options::default();
        let waits: Vec<_> = (1..=8).map(|n| backoff(&o, n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }

    #[test]
    fn statuses_retry_or_refuse() {
        assert_eq!(classify(204), Sent::Delivered);
        assert!(matches!(classify(503), Sent::Retry(_)));
        assert!(matches!(classify(429), Sent::Retry(_)));
        assert!(matches!(classify(404), Sent::Refused(_)));
    }

    #[test]
    fn the_record_is_replaced_whole() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("notify"))?;
        let p = acked_path(dir.path(), "events");
        assert_eq!(read_acked(&p), None);
        let a = Oid::from_str("0123456789abcdef0123456789abcdef01234567")?;
        write_acked(&p, a)?;
        assert_eq!(read_acked(&p), Some(a));
        assert!(!p.with_extension("acked.tmp").exists());
        Ok(())
    }
}
