//! GitHub webhooks end to end (#7): GitHub's real payloads from
//! `../shared/data/github-webhooks`, signed here with a known secret, posted to the real
//! endpoint over loopback; a strict fake of the GitHub API that checks every call;
//! real bare remotes for the previews and the command commits (read as paths, or served
//! by the fake over Git's HTTP to a GitHub App's installation tokens); and the real `rollgate
//! run` daemon for the push wake-up, the refusal to start without a secret, the flood of
//! 1,000 random bodies, and its own fetch and status commits as a GitHub App over HTTP.

use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rollgate::github::handle::{COMMANDS_PER_ISSUE, Clock, Options, Webhooks};
use rollgate::github::webhook::{MAX_BODY, sign};
use rollgate::github::{Auth, Config, STICKY_MARKER, Secret};
use rollgate::leader::Gate;
use rollgate::model::status::Phase;
use serde_json::{Value, json};
use support::Remote;
use support::github::{BOT, Expect, FakeGitHub, TOKEN_USER};
use support::rollout::PlanFile;

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");
const SECRET: &str = "It's a Secret to Everybody";
const TOKEN: &str = "ghp_test_token_not_a_real_one";
/// The repository GitHub's example payloads come from.
const REPO: &str = "Codertocat/Hello-World";
const WAIT: Duration = Duration::from_secs(30);

/// The folder of GitHub's example payloads (shared test data; never skipped).
fn payloads_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/github-webhooks")
}

/// A real payload, as GitHub sends it.
fn payload(name: &str) -> Value {
    let path = payloads_dir().join(format!("{name}.payload.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the GitHub webhook payloads are test input and must be present: cannot read {} ({e}); \
             they live in ../shared/data/github-webhooks (see its README)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("a payload is JSON")
}

fn delivery() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "72d3162e-cc78-11e3-81ab-{:012x}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A minimal HTTP/1.1 client: one request per connection. With `Expect: 100-continue`
/// the body is sent only if the server asks for it (as curl does for large bodies).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    let expect = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("expect"));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if expect {
        let first = read_head(&mut s)?;
        if !first.starts_with("HTTP/1.1 100") {
            return parse_response(&first, &mut s);
        }
    }
    s.write_all(body)?;
    let head = read_head(&mut s)?;
    parse_response(&head, &mut s)
}

fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn parse_response(head: &str, s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok((code, String::from_utf8_lossy(&rest).into_owned()))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], b"").expect("the server answers")
}

/// A webhook delivery's headers: event, delivery id, and a signature (or not).
fn hook_headers(
    event: &str,
    delivery: &str,
    signature: Option<String>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("X-GitHub-Event", event.to_owned()),
        ("X-GitHub-Delivery", delivery.to_owned()),
        ("Content-Type", "application/json".to_owned()),
        ("User-Agent", "GitHub-Hookshot/044aadd".to_owned()),
    ];
    if let Some(sig) = signature {
        h.push(("X-Hub-Signature-256", sig));
    }
    h
}

/// POST a body to the webhook endpoint as GitHub would, signed with `SECRET`.
fn deliver_raw(addr: SocketAddr, event: &str, id: &str, body: &[u8]) -> (u16, String) {
    let sig = sign(SECRET.as_bytes(), body);
    http(
        addr,
        "POST",
        "/webhooks/github",
        &hook_headers(event, id, Some(sig)),
        body,
    )
    .expect("the endpoint answers")
}

fn deliver(addr: SocketAddr, event: &str, body: &Value) -> (u16, String) {
    deliver_raw(addr, event, &delivery(), body.to_string().as_bytes())
}

/// The plan every test repository holds: weight steps only, so a dry run finishes fast.
fn plan() -> PlanFile {
    PlanFile::new("web").steps(&["setWeight: 10", "setWeight: 100"])
}

/// `pull_request.<action>` for PR #2 of the example repository, into `main`, at `head`.
fn pull_request(action: &str, head: &str) -> Value {
    let mut p = payload(&format!("pull_request.{action}"));
    p["pull_request"]["head"]["sha"] = json!(head);
    p["pull_request"]["base"]["ref"] = json!("main");
    p
}

/// `pull_request.opened` for pull request `number` at `head`, into `main`.
fn pull_request_number(number: u64, head: &str) -> Value {
    let mut p = pull_request("opened", head);
    p["number"] = json!(number);
    p["pull_request"]["number"] = json!(number);
    p
}

/// The same, from a fork: the head repository is `Octocoders/Hello-World` (the fork in
/// GitHub's `ping` example).
fn fork_pull_request(action: &str, head: &str) -> Value {
    let mut p = pull_request(action, head);
    let fork = payload("ping")["repository"].clone();
    assert_eq!(
        fork["fork"], true,
        "the ping example's repository is a fork"
    );
    p["pull_request"]["head"]["repo"] = fork;
    p["pull_request"]["head"]["label"] = json!("Octocoders:changes");
    p
}

/// `issue_comment.created` with `body`, by `login`, on issue #1 (or the PR #2), written
/// just now.
fn comment(body: &str, login: &str, on_pull_request: bool) -> Value {
    let mut p = payload("issue_comment.created");
    p["comment"]["body"] = json!(body);
    p["comment"]["user"]["login"] = json!(login);
    p["comment"]["created_at"] =
        json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    if on_pull_request {
        p["issue"]["number"] = json!(2);
        p["issue"]["pull_request"] = json!({
            "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2"
        });
    }
    p
}

/// An in-process endpoint: the real server and worker, a fake GitHub, a bare remote.
struct Rig {
    remote: Remote,
    fake: FakeGitHub,
    wake: std::sync::mpsc::Receiver<()>,
    server: rollgate::server::Server,
    _hooks: Webhooks,
    auth: Auth,
    repo_url: String,
}

impl Rig {
    fn new() -> Self {
        Self::with_auth(Expect::Token(TOKEN.to_owned()), |_| {
            Auth::Token(Secret::new(TOKEN).expect("a token"))
        })
    }

    fn with_auth(expect: Expect, auth: impl FnOnce(&Remote) -> Auth) -> Self {
        Self::build(expect, auth, |remote, _| remote.bare.display().to_string())
    }

    /// `repo_url`: where the worker fetches and pushes (the bare remote's path, or a URL
    /// the fake serves it at).
    fn build(
        expect: Expect,
        auth: impl FnOnce(&Remote) -> Auth,
        repo_url: impl FnOnce(&Remote, &FakeGitHub) -> String,
    ) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let remote = Remote::with_plans(&[&plan()]);
        let fake = FakeGitHub::start(REPO, expect);
        let auth = auth(&remote);
        let repo_url = repo_url(&remote, &fake);
        let (tx, wake) = std::sync::mpsc::channel();
        let (hooks, server) = endpoint(
            &fake,
            &auth,
            &repo_url,
            remote.work_dir("github"),
            tx,
            Gate::always(),
            chrono::Utc::now,
        );
        Self {
            remote,
            fake,
            wake,
            server,
            _hooks: hooks,
            auth,
            repo_url,
        }
    }

    /// Another endpoint on the same repository and GitHub, with its own memory and
    /// scratch clone: a second replica, or this one after a restart.
    fn replica(&self, name: &str) -> (Webhooks, rollgate::server::Server) {
        self.replica_at(name, chrono::Utc::now)
    }

    /// The same, its worker reading the time from `clock`.
    fn replica_at(&self, name: &str, clock: Clock) -> (Webhooks, rollgate::server::Server) {
        let (tx, _) = std::sync::mpsc::channel();
        endpoint(
            &self.fake,
            &self.auth,
            &self.repo_url,
            self.remote.work_dir(name),
            tx,
            Gate::always(),
            clock,
        )
    }

    /// Another replica, leader only while `leader` says so (`--leader-elect`).
    fn replica_led(&self, name: &str, leader: Gate) -> (Webhooks, rollgate::server::Server) {
        let (tx, _) = std::sync::mpsc::channel();
        endpoint(
            &self.fake,
            &self.auth,
            &self.repo_url,
            self.remote.work_dir(name),
            tx,
            leader,
            chrono::Utc::now,
        )
    }

    /// The scratch clone's `refs/rollgate/pull/*`.
    fn pull_refs(&self) -> Vec<String> {
        let out = support::git(
            &self.remote.work_dir("github"),
            &["for-each-ref", "--format=%(refname)", "refs/rollgate/pull/"],
        );
        out.lines().map(str::to_owned).collect()
    }

    /// The human pushes a change of `web` off base to `refs/pull/<number>/head`;
    /// returns its sha.
    fn push_pull(&self, number: u64, edit: impl FnOnce(String) -> String, message: &str) -> String {
        let human = &self.remote.human;
        support::git(human, &["fetch", "-q", "origin", "main"]);
        support::git(human, &["checkout", "-q", "-B", "pr", "FETCH_HEAD"]);
        let path = human.join("plans/web.yaml");
        let text = std::fs::read_to_string(&path).expect("the plan");
        std::fs::write(&path, edit(text)).expect("edit");
        support::git(human, &["commit", "-q", "-am", message]);
        let sha = support::git(human, &["rev-parse", "HEAD"]);
        support::git(
            human,
            &[
                "push",
                "-q",
                "-f",
                "origin",
                &format!("HEAD:refs/pull/{number}/head"),
            ],
        );
        sha
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The human pushes a change of `web` to the pull request's head ref; returns its sha.
    fn push_pull_request(&self, edit: impl FnOnce(String) -> String, message: &str) -> String {
        let human = &self.remote.human;
        let path = human.join("plans/web.yaml");
        let text = std::fs::read_to_string(&path).expect("the plan");
        std::fs::write(&path, edit(text)).expect("edit");
        support::git(human, &["commit", "-q", "-am", message]);
        let sha = support::git(human, &["rev-parse", "HEAD"]);
        support::git(
            human,
            &["push", "-q", "-f", "origin", "HEAD:refs/pull/2/head"],
        );
        sha
    }

    /// The human pushes `content` at `path` to the tracked branch: base moves, without
    /// the pull request's commits (the human's clone is left on the new base).
    fn push_base(&self, path: &str, content: &str, message: &str) {
        let human = &self.remote.human;
        support::git(human, &["fetch", "-q", "origin", "main"]);
        support::git(human, &["checkout", "-q", "-B", "base", "FETCH_HEAD"]);
        let file = human.join(path);
        std::fs::create_dir_all(file.parent().expect("a folder")).expect("mkdir");
        std::fs::write(&file, content).expect("write");
        support::git(human, &["add", "-A"]);
        support::git(human, &["commit", "-q", "-m", message]);
        support::git(human, &["push", "-q", "origin", "HEAD:main"]);
    }

    /// Nothing woke the loop within `d`.
    fn no_wake(&self, d: Duration) -> bool {
        self.wake.recv_timeout(d).is_err()
    }
}

/// The webhook endpoint and its worker, served on a free loopback port.
fn endpoint(
    fake: &FakeGitHub,
    auth: &Auth,
    repo_url: &str,
    work_dir: PathBuf,
    wake: std::sync::mpsc::Sender<()>,
    leader: Gate,
    clock: Clock,
) -> (Webhooks, rollgate::server::Server) {
    endpoint_with_budget(
        fake,
        auth,
        repo_url,
        work_dir,
        wake,
        leader,
        clock,
        rollgate::github::handle::SCRATCH_BUDGET,
    )
}

/// `endpoint`, with the scratch clone's budget.
#[allow(clippy::too_many_arguments)]
fn endpoint_with_budget(
    fake: &FakeGitHub,
    auth: &Auth,
    repo_url: &str,
    work_dir: PathBuf,
    wake: std::sync::mpsc::Sender<()>,
    leader: Gate,
    clock: Clock,
    scratch_budget: u64,
) -> (Webhooks, rollgate::server::Server) {
    let hooks = Webhooks::start_with_clock(
        Options {
            secret: Secret::new(SECRET).expect("a secret"),
            github: Config {
                api_url: fake.url.clone(),
                repo: REPO.parse().expect("a repository name"),
                auth: auth.clone(),
            },
            repo_url: repo_url.to_owned(),
            branch: "main".to_owned(),
            work_dir,
            max_body: MAX_BODY,
            scratch_budget,
        },
        wake,
        leader,
        clock,
    )
    .expect("the webhook endpoint starts");
    let server = rollgate::server::start_with(
        "127.0.0.1:0".parse().expect("addr"),
        std::sync::Arc::default(),
        Some(hooks.router()),
    )
    .expect("the server listens");
    (hooks, server)
}

fn set_artifact(to: &'static str) -> impl FnOnce(String) -> String {
    support::rollout::set_artifact(to)
}

#[test]
fn only_deliveries_signed_with_the_secret_are_heard() {
    let rig = Rig::new();
    let body = payload("ping").to_string();
    let id = delivery();
    // A good signature: 2xx
    assert_eq!(deliver_raw(rig.addr(), "ping", &id, body.as_bytes()).0, 200);
    // A signature by another secret, of another body, a bare hex, or none: 401
    let bad = [
        Some(sign(b"not the secret", body.as_bytes())),
        Some(sign(SECRET.as_bytes(), b"{}")),
        Some(sign(SECRET.as_bytes(), body.as_bytes()).replace("sha256=", "")),
        Some("sha1=0123456789abcdef0123456789abcdef01234567".to_owned()),
        Some(String::new()),
        None,
    ];
    for sig in bad {
        let (code, text) = http(
            rig.addr(),
            "POST",
            "/webhooks/github",
            &hook_headers("push", &delivery(), sig.clone()),
            body.as_bytes(),
        )
        .expect("answers");
        assert_eq!(code, 401, "{sig:?}: {text}");
    }
    assert!(rig.no_wake(Duration::from_millis(100)));
    assert!(rig.fake.hub().calls.is_empty());
    // The other endpoints are still served next to it
    assert_eq!(get(rig.addr(), "/healthz").0, 200);
    let (code, metrics) = get(rig.addr(), "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("rollgate_webhooks_total{outcome=\"unauthorized\"}"),
        "{metrics}"
    );
}

#[test]
fn a_push_to_the_tracked_branch_wakes_the_loop_once_even_when_redelivered() {
    let rig = Rig::new();
    // GitHub's example push creates `master`; here it is a push to the tracked `main`
    let mut push = payload("push.with-new-branch");
    push["ref"] = json!("refs/heads/main");
    let body = push.to_string();
    let id = delivery();
    let (code, _) = deliver_raw(rig.addr(), "push", &id, body.as_bytes());
    assert_eq!(code, 202);
    assert!(
        rig.wake.recv_timeout(Duration::from_secs(2)).is_ok(),
        "the loop was woken"
    );
    // The same delivery again (GitHub's "redeliver"): answered, no second effect
    let (code, text) = deliver_raw(rig.addr(), "push", &id, body.as_bytes());
    assert_eq!((code, text.trim()), (200, "duplicate delivery ignored"));
    assert!(rig.no_wake(Duration::from_millis(300)));

    // Pushes elsewhere do not wake it: another branch, a tag deletion (GitHub's
    // `push` example), another repository
    assert_eq!(
        deliver(rig.addr(), "push", &payload("push.with-new-branch")).0,
        200
    );
    assert_eq!(deliver(rig.addr(), "push", &payload("push")).0, 200);
    let mut other = push.clone();
    other["repository"]["full_name"] = json!("Octocoders/Hello-World");
    assert_eq!(deliver(rig.addr(), "push", &other).0, 200);
    assert!(rig.no_wake(Duration::from_millis(300)));
    assert!(rig.fake.hub().calls.is_empty(), "a push calls no API");
}

#[test]
fn an_oversized_body_is_413_and_a_malformed_one_is_400() {
    let rig = Rig::new();
    // Over the cap: refused on its Content-Length, before the body is even sent
    let big = vec![b' '; MAX_BODY + 1];
    let mut headers = hook_headers("push", &delivery(), Some(sign(SECRET.as_bytes(), &big)));
    headers.push(("Expect", "100-continue".to_owned()));
    let (code, _) = http(rig.addr(), "POST", "/webhooks/github", &headers, &big).expect("answers");
    assert_eq!(code, 413);
    // At the cap, it is read (and here, being spaces, it is not JSON)
    let at_cap = vec![b' '; MAX_BODY];
    assert_eq!(deliver_raw(rig.addr(), "push", &delivery(), &at_cap).0, 400);

    // Well signed, not JSON, or JSON of the wrong shape: 400, and the server goes on
    for (event, body) in [
        ("push", &b"{\"ref\": "[..]),
        ("pull_request", b"[1, 2, 3]"),
        ("issue_comment", b"\xff\xfe\x00"),
        ("push", br#"{"ref": 7, "after": null, "repository": {}}"#),
        (
            "pull_request",
            br#"{"action": "opened", "pull_request": {"number": "two"}}"#,
        ),
        ("ping", b""),
    ] {
        let id = delivery();
        let (code, text) = deliver_raw(rig.addr(), event, &id, body);
        assert_eq!(code, 400, "{event} {body:?}: {text}");
        // A malformed delivery is not remembered: fixed and redelivered, it is taken
        assert_eq!(deliver_raw(rig.addr(), "ping", &id, b"{}").0, 200);
    }
    // Signed, but without the headers GitHub always sends
    let body = b"{}";
    let sig = sign(SECRET.as_bytes(), body);
    let no_event = vec![
        ("X-GitHub-Delivery", delivery()),
        ("X-Hub-Signature-256", sig.clone()),
    ];
    assert_eq!(
        http(rig.addr(), "POST", "/webhooks/github", &no_event, body)
            .expect("answers")
            .0,
        400
    );
    let no_delivery = vec![
        ("X-GitHub-Event", "ping".to_owned()),
        ("X-Hub-Signature-256", sig),
    ];
    assert_eq!(
        http(rig.addr(), "POST", "/webhooks/github", &no_delivery, body)
            .expect("answers")
            .0,
        400
    );
    assert_eq!(get(rig.addr(), "/healthz").0, 200);
    assert!(rig.fake.hub().calls.is_empty());
}

#[test]
fn events_rollgate_does_not_use_are_acknowledged_and_ignored() {
    let rig = Rig::new();
    for (event, file) in [
        ("ping", "ping"),
        ("status", "status"),
        ("check_run", "check_run.rerequested"),
        ("check_run", "check_run.requested_action"),
        ("check_suite", "check_suite.requested"),
        ("check_suite", "check_suite.rerequested"),
        ("pull_request", "pull_request.closed"),
        ("pull_request", "pull_request.labeled"),
        ("pull_request_review", "pull_request_review.submitted"),
        ("issue_comment", "issue_comment.created"),
        ("deployment", "status"),
    ] {
        let (code, text) = deliver(rig.addr(), event, &payload(file));
        assert!((200..300).contains(&code), "{file}: {code} {text}");
    }
    assert!(rig.no_wake(Duration::from_millis(200)));
    // Every delivery was decided on receipt and none became work for the worker (which
    // alone calls GitHub), so no call can be on its way.
    let (_, metrics) = get(rig.addr(), "/metrics");
    assert!(
        metrics.contains("rollgate_webhooks_total{outcome=\"accepted\"} 0"),
        "{metrics}"
    );
    assert!(
        rig.fake.hub().calls.is_empty(),
        "{:?}",
        rig.fake.hub().calls
    );
}

#[test]
fn a_pull_request_gets_one_check_run_and_one_sticky_comment_updated_in_place() {
    let rig = Rig::new();
    rig.fake
        .human_comment(2, "Codertocat", "Looks good to me, pending the preview.");

    // When a pull request changing `web` to v2 is opened
    let first = rig.push_pull_request(set_artifact("v2"), "web: v2");
    assert_eq!(
        deliver(rig.addr(), "pull_request", &pull_request("opened", &first)).0,
        202
    );
    rig.fake
        .wait_for("the check run and the comment", WAIT, |h| {
            h.check_runs.len() == 1 && h.comments_on(2).len() == 2
        });
    {
        let h = rig.fake.hub();
        let run = &h.check_runs[0];
        assert_eq!(
            (run.head_sha.as_str(), run.conclusion.as_str()),
            (first.as_str(), "success")
        );
        assert!(run.summary.starts_with(STICKY_MARKER), "{}", run.summary);
        assert!(run.summary.contains("web"), "{}", run.summary);
        let ours = h.ours_on(2);
        assert_eq!(ours.len(), 1);
        assert!(ours[0].body.starts_with(STICKY_MARKER));
        assert!(ours[0].body.contains("v2"), "{}", ours[0].body);
    }

    // When the author pushes again (synchronize): a check run on the new head, and the
    // same comment edited in place
    let second = rig.push_pull_request(set_artifact("v3"), "web: v3");
    assert_eq!(
        deliver(
            rig.addr(),
            "pull_request",
            &pull_request("synchronize", &second)
        )
        .0,
        202
    );
    rig.fake.wait_for("the comment edited", WAIT, |h| {
        h.comments_on(2).iter().any(|c| c.edits == 1)
    });
    // And when the same head is announced again (reopened) with nothing changed: the
    // comment is edited, and the check run is left as it is (at most re-completed)
    assert_eq!(
        deliver(
            rig.addr(),
            "pull_request",
            &pull_request("reopened", &second)
        )
        .0,
        202
    );
    rig.fake.wait_for("the comment updated", WAIT, |h| {
        h.comments_on(2).iter().any(|c| c.edits == 2)
    });
    let h = rig.fake.hub();
    assert_eq!(
        h.check_runs.len(),
        2,
        "one check run per head: {:?}",
        h.check_runs
    );
    let ours = h.ours_on(2);
    assert_eq!(ours.len(), 1, "one sticky comment, never two");
    assert!(ours[0].body.contains("v3"), "{}", ours[0].body);
    assert_eq!(ours[0].edits, 2);
    assert_eq!(
        h.count("POST", "/repos/Codertocat/Hello-World/issues/2/comments"),
        1
    );
    assert_eq!(
        h.count("PATCH", "/repos/Codertocat/Hello-World/issues/comments/"),
        2
    );
    assert_eq!(
        h.comments_on(2)[0].body,
        "Looks good to me, pending the preview."
    );
    // Annotations were not appended twice to the updated run
    let updated = h
        .check_runs
        .iter()
        .find(|r| r.head_sha == second)
        .expect("run");
    assert_eq!(updated.annotations.len(), h.check_runs[0].annotations.len());
}

/// A repository policy of base: a `warn` or `deny` rule about plans of team `demo`.
fn demo_policy(rule: &str, message: &str) -> String {
    format!(
        r#"package rollgate.demo

import rego.v1

{rule} contains msg if {{
	input.plan.metadata.labels.team == "demo"
	msg := "{message}"
}}
"#
    )
}

fn messages(annotations: &[Value]) -> Vec<String> {
    annotations
        .iter()
        .map(|a| a["message"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_re_preview_after_base_changed_is_a_new_check_run_without_the_stale_annotations() {
    // Given base warns about plans of the `demo` team, and a pull request of `web` (a
    // demo plan) previewed with that warning annotated
    let rig = Rig::new();
    rig.push_base(
        "policies/demo.rego",
        &demo_policy("warn", "think twice before shipping demo"),
        "Warn about demo plans",
    );
    let head = rig.push_pull_request(set_artifact("v2"), "web: v2");
    let reopened = pull_request("reopened", &head);
    assert_eq!(
        deliver(rig.addr(), "pull_request", &pull_request("opened", &head)).0,
        202
    );
    rig.fake.wait_for("the first preview", WAIT, |h| {
        h.check_runs.len() == 1 && h.comments_on(2).len() == 1
    });
    let first = rig.fake.hub().check_runs[0].clone();
    assert!(
        messages(&first.annotations)
            .iter()
            .any(|m| m.contains("think twice")),
        "{:?}",
        first.annotations
    );

    // When base turns the warning into a denial and the same head is previewed again
    rig.push_base(
        "policies/demo.rego",
        &demo_policy("deny", "demo plans may not ship"),
        "Deny demo plans",
    );
    assert_eq!(deliver(rig.addr(), "pull_request", &reopened).0, 202);
    rig.fake.wait_for("the second preview", WAIT, |h| {
        h.comments_on(2).iter().any(|c| c.edits == 1)
    });

    // Then the head has a second, failing run (GitHub shows the latest) holding only the
    // new annotations; the first run is left as it was
    {
        let h = rig.fake.hub();
        assert_eq!(h.check_runs.len(), 2, "{:#?}", h.check_runs);
        let second = &h.check_runs[1];
        assert_eq!(second.head_sha, head);
        assert_eq!(second.conclusion, "failure", "{}", second.summary);
        assert_ne!(first.conclusion, "failure");
        let now = messages(&second.annotations);
        assert!(now.iter().any(|m| m.contains("may not ship")), "{now:?}");
        assert!(
            !now.iter().any(|m| m.contains("think twice")),
            "a stale annotation: {now:?}"
        );
        assert_eq!(h.check_runs[0].annotations, first.annotations);
        assert_eq!(h.check_runs[0].updates, 0);
    }

    // When the same head is previewed again with nothing changed: no new run, and no
    // annotation added to the latest one
    let before = rig.fake.hub().check_runs[1].annotations.clone();
    assert_eq!(deliver(rig.addr(), "pull_request", &reopened).0, 202);
    rig.fake.wait_for("the third preview", WAIT, |h| {
        h.comments_on(2).iter().any(|c| c.edits == 2)
    });
    let h = rig.fake.hub();
    assert_eq!(h.check_runs.len(), 2, "{:#?}", h.check_runs);
    assert_eq!(h.check_runs[1].annotations, before);
    assert_eq!(
        h.count("POST", "/repos/Codertocat/Hello-World/check-runs"),
        2
    );
}

#[test]
fn a_rejected_plan_fails_the_check_with_annotations_at_its_lines() {
    let rig = Rig::new();
    let head = rig.push_pull_request(
        |t| t.replace("setWeight: 10", "setWeight: 150"),
        "web: too much",
    );
    let text = support::git(&rig.remote.human, &["show", "HEAD:plans/web.yaml"]);
    let line = text
        .lines()
        .position(|l| l.contains("setWeight: 150"))
        .expect("the line")
        + 1;
    assert_eq!(
        deliver(rig.addr(), "pull_request", &pull_request("opened", &head)).0,
        202
    );
    rig.fake.wait_for("the check run", WAIT, |h| {
        h.check_runs.len() == 1 && !h.comments_on(2).is_empty()
    });
    let h = rig.fake.hub();
    let run = &h.check_runs[0];
    assert_eq!(run.conclusion, "failure", "{}", run.summary);
    // The weight error is annotated on the line that sets it
    let failure = run
        .annotations
        .iter()
        .find(|a| a["annotation_level"] == "failure" && a["start_line"] == line as u64)
        .unwrap_or_else(|| panic!("a failure on line {line}: {:?}", run.annotations));
    assert_eq!(failure["path"], "plans/web.yaml");
    assert!(
        failure["message"]
            .as_str()
            .is_some_and(|m| m.contains("150")),
        "{failure}"
    );
    assert!(run.summary.contains("web"), "{}", run.summary);
}

#[test]
fn a_fork_gets_a_preview_and_nothing_is_applied() {
    let rig = Rig::new();
    let before = rig.remote.head();
    let refs_before = support::git(&rig.remote.bare, &["for-each-ref", "refs/heads"]);
    let head = rig.push_pull_request(set_artifact("evil"), "web: from a fork");
    let (code, _) = deliver(
        rig.addr(),
        "pull_request",
        &fork_pull_request("opened", &head),
    );
    assert_eq!(code, 202);
    rig.fake.wait_for("the preview", WAIT, |h| {
        h.check_runs.len() == 1 && !h.comments_on(2).is_empty()
    });
    // The preview is posted; nothing reached the tracked branch or woke the loop
    assert_eq!(rig.remote.head(), before);
    assert_eq!(
        support::git(&rig.remote.bare, &["for-each-ref", "refs/heads"]),
        refs_before
    );
    assert!(rig.no_wake(Duration::from_millis(100)));
    let h = rig.fake.hub();
    assert_eq!(h.check_runs[0].head_sha, head);
    assert!(h.statuses.is_empty());
    let calls: Vec<String> = h
        .calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert!(
        calls
            .iter()
            .all(|c| c.contains("/check-runs") || c.contains("/comments") || c == "GET /user"),
        "{calls:?}"
    );
    // And no secret travelled in what was posted
    for c in &h.calls {
        let body = c.body.as_ref().map(Value::to_string).unwrap_or_default();
        assert!(!body.contains(SECRET) && !body.contains(TOKEN), "{body}");
    }
}

#[test]
fn a_comment_command_from_a_writer_is_a_commit_and_a_reply() {
    let rig = Rig::new();
    rig.fake.set_permission("Codertocat", "write");
    let before = rig.remote.head();
    let (code, _) = deliver(
        rig.addr(),
        "issue_comment",
        &comment("Ship it.\n/rollgate promote web", "Codertocat", false),
    );
    assert_eq!(code, 202);
    rig.fake
        .wait_for("the reply", WAIT, |h| h.comments_on(1).len() == 1);
    let commits = rig.remote.commits();
    let last = commits.last().expect("a commit");
    assert_ne!(last.sha, before, "a command commit was pushed");
    assert_eq!(
        support::git(&rig.remote.bare, &["rev-parse", "main~1"]),
        before
    );
    assert_eq!(last.trailer("Rollgate-Command"), Some("promote"));
    assert_eq!(last.trailer("Rollgate-Plan"), Some("web"));
    let message = support::git(&rig.remote.bare, &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains("Requested by @Codertocat via GitHub comment"),
        "{message}"
    );
    let h = rig.fake.hub();
    let reply = &h.comments_on(1)[0].body;
    assert!(
        reply.contains("@Codertocat done") && reply.contains(&last.sha[..12]),
        "{reply}"
    );
    assert_eq!(
        h.count(
            "GET",
            "/repos/Codertocat/Hello-World/collaborators/Codertocat/permission"
        ),
        1
    );
}

#[test]
fn a_comment_command_delivered_again_under_a_new_delivery_id_is_one_commit() {
    // Given a writer's `/rollgate promote web`, taken in and done
    let rig = Rig::new();
    rig.fake.set_permission("Codertocat", "write");
    let promote = comment("/rollgate promote web", "Codertocat", false);
    let comment_id = promote["comment"]["id"].to_string();
    assert_eq!(deliver(rig.addr(), "issue_comment", &promote).0, 202);
    rig.fake
        .wait_for("the reply", WAIT, |h| h.comments_on(1).len() == 1);
    assert!(rig.wake.recv_timeout(WAIT).is_ok(), "the loop was woken");

    // When the same comment arrives again under new delivery ids, as a redelivery does
    // once the memory of delivery ids is gone: here, and at a second replica (or this
    // one restarted) with a scratch clone of its own
    assert_eq!(deliver(rig.addr(), "issue_comment", &promote).0, 202);
    rig.fake
        .wait_for("the second reply", WAIT, |h| h.comments_on(1).len() == 2);
    let (_replica, server) = rig.replica("github-replica");
    assert_eq!(deliver(server.addr, "issue_comment", &promote).0, 202);
    rig.fake
        .wait_for("the third reply", WAIT, |h| h.comments_on(1).len() == 3);

    // Then the remote holds one command commit, naming the comment, and the later
    // replies say it was already done in it
    let commands: Vec<_> = rig
        .remote
        .commits()
        .into_iter()
        .filter(|c| c.trailer("Rollgate-Command").is_some())
        .collect();
    assert_eq!(commands.len(), 1, "{commands:#?}");
    assert_eq!(
        commands[0].trailer("Rollgate-Comment"),
        Some(comment_id.as_str())
    );
    let short = &commands[0].sha[..12];
    let h = rig.fake.hub();
    let replies: Vec<String> = h.comments_on(1).iter().map(|c| c.body.clone()).collect();
    assert!(
        replies[0].starts_with("@Codertocat done") && replies[0].contains(short),
        "{replies:?}"
    );
    for r in &replies[1..] {
        assert!(r.contains("already") && r.contains(short), "{replies:?}");
    }
    assert!(
        rig.no_wake(Duration::from_millis(100)),
        "nothing new to act on"
    );
}

#[test]
fn a_comment_command_without_write_permission_is_refused_politely() {
    let rig = Rig::new();
    rig.fake.set_permission("reader", "read");
    let before = rig.remote.head();
    // On a pull request, by a reader (refused politely); then by someone who is not a
    // collaborator at all (no answer: see the regression test for comment spam)
    assert_eq!(
        deliver(
            rig.addr(),
            "issue_comment",
            &comment("/rollgate abort web", "reader", true)
        )
        .0,
        202
    );
    assert_eq!(
        deliver(
            rig.addr(),
            "issue_comment",
            &comment("/rollgate retry web", "stranger", false)
        )
        .0,
        202
    );
    rig.fake.wait_for(
        "the refusal, and the stranger's permission read",
        WAIT,
        |h| {
            h.comments_on(2).len() == 1
                && h.count(
                    "GET",
                    "/repos/Codertocat/Hello-World/collaborators/stranger/permission",
                ) == 1
        },
    );
    let h = rig.fake.hub();
    let refusal = &h.comments_on(2)[0].body;
    assert!(
        refusal.starts_with("Sorry @reader") && refusal.contains("write access"),
        "{refusal}"
    );
    assert_eq!(rig.remote.head(), before, "no command commit");
    drop(h);

    // A command rollgate cannot read gets the usage, a plan that does not exist a no
    rig.fake.set_permission("Codertocat", "admin");
    assert_eq!(
        deliver(
            rig.addr(),
            "issue_comment",
            &comment("/rollgate deploy web", "Codertocat", false)
        )
        .0,
        202
    );
    assert_eq!(
        deliver(
            rig.addr(),
            "issue_comment",
            &comment("/rollgate promote nope", "Codertocat", false)
        )
        .0,
        202
    );
    rig.fake
        .wait_for("two more replies", WAIT, |h| h.comments_on(1).len() == 2);
    let h = rig.fake.hub();
    let replies: Vec<String> = h.comments_on(1).iter().map(|c| c.body.clone()).collect();
    assert!(
        replies[0].contains("`/rollgate promote|abort|retry PLAN`"),
        "{replies:?}"
    );
    assert!(replies[1].contains("no plan `nope`"), "{replies:?}");
    assert!(
        !replies.iter().any(|r| r.contains("stranger")),
        "{replies:?}"
    );
    assert!(
        replies
            .iter()
            .all(|r| !r.lines().any(|l| l.trim_start().starts_with("/rollgate")))
    );
    assert_eq!(rig.remote.head(), before);
    // A bot's comment is never taken as a command
    drop(h);
    let mut bot = comment("/rollgate promote web", "rollgate[bot]", false);
    bot["comment"]["user"]["type"] = json!("Bot");
    assert_eq!(deliver(rig.addr(), "issue_comment", &bot).0, 200);
}

/// An RSA key for a test GitHub App, made by `ssh-keygen` (PKCS#1 PEM).
fn app_key(dir: &Path) -> Secret {
    let path = dir.join("app-key.pem");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen runs (openssh-client)");
    assert!(out.status.success(), "{out:?}");
    Secret::new(std::fs::read_to_string(&path).expect("the key")).expect("a key")
}

#[test]
fn a_github_app_uses_installation_tokens_cached_until_near_expiry() {
    for (ttl, expected_tokens) in [(Duration::from_secs(3600), 1), (Duration::from_secs(10), 2)] {
        let rig = Rig::with_auth(
            Expect::App {
                id: 4242,
                token_ttl: ttl,
            },
            |remote| Auth::App {
                id: 4242,
                key: app_key(remote.dir.path()),
            },
        );
        rig.fake.set_permission("reader", "read");
        // Two jobs, each making two calls (permission, reply), from installation 1
        for _ in 0..2 {
            let (code, _) = deliver(
                rig.addr(),
                "issue_comment",
                &comment("/rollgate abort web", "reader", false),
            );
            assert_eq!(code, 202);
        }
        rig.fake
            .wait_for("two refusals", WAIT, |h| h.comments_on(1).len() == 2);
        let h = rig.fake.hub();
        let minted = h.count("POST", "/app/installations/");
        if expected_tokens == 1 {
            // A token valid for an hour is minted once and reused
            assert_eq!(minted, 1, "{:?}", h.calls);
        } else {
            // A token that expires within 30 s is refreshed before each call
            assert_eq!(minted, 4, "{:?}", h.calls);
        }
        // The payload names no installation: it was looked up (with the App's JWT) once
        assert_eq!(
            h.count("GET", "/repos/Codertocat/Hello-World/installation"),
            1
        );
    }
}

#[test]
fn a_github_app_fetches_and_pushes_over_https_with_its_installation_token() {
    // Given an App, and the GitOps repository served by GitHub over HTTP to installation
    // tokens only (no ROLLGATE_GIT_TOKEN, no SSH key: nothing else could get in)
    let rig = Rig::build(
        Expect::App {
            id: 4242,
            token_ttl: Duration::from_secs(3600),
        },
        |remote| Auth::App {
            id: 4242,
            key: app_key(remote.dir.path()),
        },
        |remote, fake| fake.serve_git(remote.dir.path(), "remote.git"),
    );
    assert!(std::env::var_os("ROLLGATE_GIT_TOKEN").is_none());
    rig.fake.set_permission("Codertocat", "write");

    // When a pull request is opened: its head is fetched and previewed
    let head = rig.push_pull_request(set_artifact("v2"), "web: v2");
    assert_eq!(
        deliver(rig.addr(), "pull_request", &pull_request("opened", &head)).0,
        202
    );
    rig.fake
        .wait_for("the check run", WAIT, |h| !h.check_runs.is_empty());
    {
        let h = rig.fake.hub();
        assert_eq!(
            h.check_runs[0].conclusion, "success",
            "{}",
            h.check_runs[0].summary
        );
    }
    rig.fake
        .wait_for("the preview comment", WAIT, |h| h.comments_on(2).len() == 1);

    // When a writer comments a command: the branch is fetched, the commit pushed
    let before = rig.remote.head();
    assert_eq!(
        deliver(
            rig.addr(),
            "issue_comment",
            &comment("/rollgate promote web", "Codertocat", false)
        )
        .0,
        202
    );
    rig.fake
        .wait_for("the reply", WAIT, |h| h.comments_on(1).len() == 1);
    let h = rig.fake.hub();
    assert!(
        h.comments_on(1)[0].body.starts_with("@Codertocat done"),
        "{}",
        h.comments_on(1)[0].body
    );
    let commits = rig.remote.commits();
    let last = commits.last().expect("a commit");
    assert_eq!(last.trailer("Rollgate-Command"), Some("promote"));
    assert_eq!(
        support::git(&rig.remote.bare, &["rev-parse", "main~1"]),
        before
    );
    // Then Git authenticated as `x-access-token` with installation tokens (the fake
    // records a violation for anything else): fetches and the push were served
    let served = |suffix: &str| {
        h.git_calls
            .iter()
            .any(|c| c.authorized && c.path.ends_with(suffix))
    };
    assert!(served("git-upload-pack"), "{:?}", h.git_calls);
    assert!(served("git-receive-pack"), "{:?}", h.git_calls);
}

#[test]
fn a_github_app_daemon_fetches_and_writes_status_commits_over_https_with_its_installation_token() {
    // Given an App, and the GitOps repository served by GitHub over HTTP to installation
    // tokens only (no ROLLGATE_GIT_TOKEN, no SSH key, no GITHUB_TOKEN for the daemon)
    let remote = Remote::with_plans(&[&plan()]);
    let fake = FakeGitHub::start(
        REPO,
        Expect::App {
            id: 4242,
            token_ttl: Duration::from_secs(3600),
        },
    );
    let url = fake.serve_git(remote.dir.path(), "remote.git");
    app_key(remote.dir.path());
    let key = remote.dir.path().join("app-key.pem");
    let before = remote.commits().len();

    // When `rollgate run` starts on that URL as the App
    let mut daemon = Daemon::spawn(
        &remote,
        &fake,
        &url,
        &[
            "--github-app-id",
            "4242",
            "--github-app-key-file",
            key.to_str().expect("utf8"),
        ],
        &[],
    );

    // Then it fetches the plan and writes its rollout back as status commits
    daemon.wait_for("v1 rolled out", || succeeded(&remote, "v1"));
    let commits = remote.commits();
    assert!(commits.len() > before, "{commits:?}");
    assert!(
        commits[before..]
            .iter()
            .all(|c| c.is_status() && c.trailer("Rollgate-Plan") == Some("web")),
        "{commits:?}"
    );
    // And every Git request to the server either carried a live installation token
    // (served) or no credentials at all (challenged, never served); the fetch and the
    // push were both served
    let h = fake.hub();
    assert!(h.violations.is_empty(), "{:?}", h.violations);
    assert!(!h.tokens.is_empty(), "an installation token was minted");
    assert!(
        h.git_calls.iter().all(|c| c.authorized || !c.credentials),
        "{:?}",
        h.git_calls
    );
    let served = |suffix: &str| {
        h.git_calls
            .iter()
            .any(|c| c.authorized && c.path.ends_with(suffix))
    };
    assert!(served("git-upload-pack"), "{:?}", h.git_calls);
    assert!(served("git-receive-pack"), "{:?}", h.git_calls);
    let log = daemon.log();
    for (t, _) in &h.tokens {
        assert!(!log.contains(t.as_str()), "a token reached the log");
    }
}

// ---- the real daemon ----

/// `rollgate run` against a `file://` URL (so no file watcher: only the fetch interval,
/// an hour here, or a webhook wakes it), or an http one (`spawn`), with journalling
/// targets (`--journal-targets`: Git and GitHub are real), serving webhooks on `port`.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    fn start(remote: &Remote, fake: &FakeGitHub) -> Self {
        Self::spawn(
            remote,
            fake,
            &format!("file://{}", remote.bare.display()),
            &[],
            &[("GITHUB_TOKEN", TOKEN)],
        )
    }

    /// `rollgate run` on `repo` with extra flags `args` and only `envs` for credentials
    /// (no `GITHUB_TOKEN`, `ROLLGATE_GIT_TOKEN` or `ROLLGATE_GIT_SSH_KEY` otherwise).
    fn spawn(
        remote: &Remote,
        fake: &FakeGitHub,
        repo: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let port = support::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let state = remote.work_dir("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let log = state.join("daemon.log");
        let mut command = Command::new(BIN);
        command
            .args([
                "run",
                "--journal-targets",
                "--interval",
                "1h",
                "--repo",
                repo,
            ])
            .arg("--state-dir")
            .arg(&state)
            .args([
                "--listen",
                &addr.to_string(),
                "--github-repo",
                REPO,
                "--github-url",
                &fake.url,
            ])
            .args(args)
            .env("ROLLGATE_WEBHOOK_SECRET", SECRET)
            .env_remove("GITHUB_TOKEN")
            .env_remove("ROLLGATE_GIT_TOKEN")
            .env_remove("ROLLGATE_GIT_SSH_KEY")
            .envs(envs.iter().copied());
        let child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("rollgate run starts");
        let mut d = Self { child, addr, log };
        let start = Instant::now();
        while http(d.addr, "GET", "/healthz", &[], b"").is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!(
                    "the daemon exited ({status}) before listening:\n{}",
                    d.log()
                );
            }
            assert!(
                start.elapsed() < WAIT,
                "the daemon never listened:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the daemon exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(start.elapsed() < WAIT, "waited for {what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn succeeded(remote: &Remote, artifact: &str) -> bool {
    remote
        .status("web")
        .is_some_and(|s| s.phase == Phase::Succeeded && s.candidate == artifact)
}

/// SplitMix64: a seeded, reproducible stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() & 0xff) as u8).collect()
    }

    fn text(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(0x21 + (self.below(94) as u8)))
            .collect()
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

/// A random body: bytes, JSON-looking fragments, or a real payload cut or mangled.
fn random_body(rng: &mut Rng, real: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            let n = rng.below(4096) as usize;
            rng.bytes(n)
        }
        1 => {
            let n = rng.below(200) as usize;
            rng.text(n).into_bytes()
        }
        2 => {
            let r = &real[rng.below(real.len() as u64) as usize];
            r[..rng.below(r.len() as u64) as usize].to_vec()
        }
        3 => {
            let mut r = real[rng.below(real.len() as u64) as usize].clone();
            for _ in 0..1 + rng.below(20) {
                let i = rng.below(r.len() as u64) as usize;
                r[i] = (rng.next() & 0xff) as u8;
            }
            r
        }
        _ => {
            let depth = rng.below(300) as usize;
            format!(
                "{}{}",
                "[".repeat(depth),
                "]".repeat(rng.below(depth as u64 + 1) as usize)
            )
            .into_bytes()
        }
    }
}

#[test]
fn the_daemon_refuses_to_serve_webhooks_without_a_secret() {
    let remote = Remote::with_plans(&[&plan()]);
    let state = remote.work_dir("state");
    let run = |envs: &[(&str, &str)], extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["run", "--once", "--journal-targets", "--repo"])
            .arg(&remote.bare)
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", "127.0.0.1:0", "--github-repo", REPO])
            .args(extra)
            .env_remove("ROLLGATE_WEBHOOK_SECRET")
            .env_remove("GITHUB_TOKEN");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().expect("rollgate runs")
    };
    // No secret at all, an empty one, an empty secret file
    let empty = remote.work_dir("empty-secret");
    std::fs::write(&empty, "\n").expect("write");
    for (envs, extra) in [
        (vec![("GITHUB_TOKEN", TOKEN)], vec![]),
        (
            vec![("GITHUB_TOKEN", TOKEN), ("ROLLGATE_WEBHOOK_SECRET", "")],
            vec![],
        ),
        (
            vec![("GITHUB_TOKEN", TOKEN)],
            vec!["--webhook-secret-file", empty.to_str().expect("utf8")],
        ),
    ] {
        let out = run(&envs, &extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(err.contains("secret"), "{err}");
        assert!(!err.contains(TOKEN), "the token never reaches a log: {err}");
    }
    // A secret but no credentials for the API
    let out = run(&[("ROLLGATE_WEBHOOK_SECRET", SECRET)], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("GITHUB_TOKEN"));
    // With both, it starts (and, `--once`, finishes the first rollout)
    let out = run(
        &[("ROLLGATE_WEBHOOK_SECRET", SECRET), ("GITHUB_TOKEN", TOKEN)],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains(SECRET) && !err.contains(TOKEN), "{err}");
}

#[test]
fn the_daemon_reconciles_on_a_push_webhook_and_survives_1000_random_deliveries() {
    let remote = Remote::with_plans(&[&plan()]);
    let fake = FakeGitHub::start(REPO, Expect::Token(TOKEN.to_owned()));
    let mut daemon = Daemon::start(&remote, &fake);
    // Given the first rollout done by the daemon's first passes
    daemon.wait_for("v1 rolled out", || succeeded(&remote, "v1"));

    // When 1,000 random deliveries arrive (random bodies, events, ids and signatures;
    // a quarter validly signed), the endpoint answers each with a 2xx or 4xx, and
    // /healthz keeps answering
    let real: Vec<Vec<u8>> = [
        "push",
        "pull_request.opened",
        "issue_comment.created",
        "ping",
    ]
    .iter()
    .map(|n| payload(n).to_string().into_bytes())
    .collect();
    let mut rng = Rng(0x5eed_0007);
    let events = [
        "push",
        "pull_request",
        "issue_comment",
        "ping",
        "status",
        "",
        "Push",
    ];
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    let mut ids: Vec<String> = Vec::new();
    for i in 0..1000 {
        let body = random_body(&mut rng, &real);
        let mut headers: Vec<(&str, String)> = Vec::new();
        if rng.below(10) > 0 {
            let e = rng.pick(&events);
            headers.push((
                "X-GitHub-Event",
                if rng.below(10) == 0 {
                    rng.text(12)
                } else {
                    e.to_owned()
                },
            ));
        }
        if rng.below(10) > 0 {
            let id = if !ids.is_empty() && rng.below(5) == 0 {
                ids[rng.below(ids.len() as u64) as usize].clone()
            } else if rng.below(8) == 0 {
                {
                    let n = rng.below(100) as usize;
                    rng.text(n)
                }
            } else {
                delivery()
            };
            ids.push(id.clone());
            headers.push(("X-GitHub-Delivery", id));
        }
        match rng.below(4) {
            0 => headers.push(("X-Hub-Signature-256", sign(SECRET.as_bytes(), &body))),
            1 => headers.push(("X-Hub-Signature-256", format!("sha256={}", rng.text(64)))),
            2 => headers.push(("X-Hub-Signature-256", sign(&rng.bytes(16), &body))),
            _ => {}
        }
        if rng.below(3) == 0 {
            headers.push((
                "Content-Type",
                rng.pick(&["application/json", "text/plain", "x/y"])
                    .to_owned(),
            ));
        }
        let (code, text) = http(daemon.addr, "POST", "/webhooks/github", &headers, &body)
            .unwrap_or_else(|e| panic!("delivery {i} got no answer ({e}):\n{}", daemon.log()));
        assert!(
            (200..300).contains(&code) || (400..500).contains(&code),
            "delivery {i}: {code} {text}"
        );
        *seen.entry(code).or_default() += 1;
        if i % 50 == 0 {
            assert_eq!(
                get(daemon.addr, "/healthz").0,
                200,
                "healthz during the flood"
            );
        }
    }
    assert!(seen.get(&401).copied().unwrap_or(0) > 300, "{seen:?}");
    assert!(seen.get(&400).copied().unwrap_or(0) > 50, "{seen:?}");
    assert!(
        daemon.child.try_wait().expect("state").is_none(),
        "the daemon is up"
    );
    let (_, metrics) = get(daemon.addr, "/metrics");
    assert!(
        metrics.contains("rollgate_webhooks_total{outcome=\"malformed\"}"),
        "{metrics}"
    );

    // Then a change pushed afterwards is reconciled at once on GitHub's push webhook
    // (the fetch interval is an hour: only the webhook can have woken the loop)
    let change = remote.human_commit(
        "plans/web.yaml",
        support::rollout::set_artifact("v2"),
        "web: v2",
    );
    let mut push = payload("push.with-new-branch");
    push["ref"] = json!("refs/heads/main");
    push["after"] = json!(change);
    let (code, _) = deliver(daemon.addr, "push", &push);
    assert_eq!(code, 202);
    daemon.wait_for("v2 rolled out after the push webhook", || {
        succeeded(&remote, "v2")
    });
    assert_eq!(get(daemon.addr, "/healthz").0, 200);
    let log = daemon.log();
    assert!(
        !log.contains(SECRET) && !log.contains(TOKEN),
        "no secret in the log"
    );
    assert!(
        log.contains("malformed webhook body"),
        "a log line per refusal"
    );
    // No garbage reached the GitHub API: the only calls are the rollouts' commit statuses
    daemon.wait_for("the success status", || {
        fake.hub().statuses.last().map(|s| s["description"].clone())
            == Some(json!("succeeded · v2 is stable"))
    });
    let h = fake.hub();
    assert!(
        h.calls
            .iter()
            .all(|c| c.is("POST", "/repos/Codertocat/Hello-World/statuses/")),
        "{:?}",
        h.calls
    );
}

#[test]
fn rollout_progress_is_a_commit_status_and_a_rollback_is_told_on_the_merged_pull_request() {
    // Given two plans merged by pull request #2, walking their steps on their first
    // rollout: `api` rolls out by weights alone, `web` waits in an untimed pause
    let api = PlanFile::new("api")
        .port(18081)
        .steps(&["setWeight: 10", "setWeight: 100"])
        .first_rollout_steps();
    let web = PlanFile::new("web")
        .steps(&["setWeight: 10", "pause: {}", "setWeight: 100"])
        .first_rollout_steps();
    let remote = Remote::with_plans(&[&api, &web]);
    let merge = remote.head();
    let fake = FakeGitHub::start(REPO, Expect::Token(TOKEN.to_owned()));
    fake.merged(&merge, 2);
    fake.set_permission("Codertocat", "write");
    let mut daemon = Daemon::start(&remote, &fake);

    // When the daemon rolls them out: each transition is a status on the merge commit
    daemon.wait_for("api succeeded and web paused", || {
        let h = fake.hub();
        let last = |ctx: &str| {
            h.statuses
                .iter()
                .rev()
                .find(|s| s["context"] == ctx)
                .cloned()
        };
        last("rollgate/api").is_some_and(|s| s["state"] == "success")
            && last("rollgate/web").is_some_and(|s| {
                s["description"]
                    .as_str()
                    .is_some_and(|d| d.ends_with("paused"))
            })
    });
    {
        let h = fake.hub();
        let api: Vec<(String, String)> = h
            .statuses
            .iter()
            .filter(|s| s["context"] == "rollgate/api")
            .map(|s| {
                assert_eq!(s["sha"], merge.as_str());
                (
                    s["state"].as_str().unwrap_or("").to_owned(),
                    s["description"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        assert_eq!(
            api.first().map(|s| s.0.as_str()),
            Some("pending"),
            "{api:?}"
        );
        assert!(
            api.iter().any(|(_, d)| d == "step 1/2 · 10%"),
            "a step's status reads `step 1/2 · 10%`: {api:?}"
        );
        assert_eq!(
            api.last().map(|s| s.1.as_str()),
            Some("succeeded · v1 is stable")
        );
        assert!(
            h.comments_on(2).is_empty(),
            "no comment while nothing rolled back"
        );
    }

    // When a writer aborts `web` from a comment: the command commit wakes the daemon,
    // which rolls back; the status fails and pull request #2 is told, once, with why
    let (code, _) = deliver(
        daemon.addr,
        "issue_comment",
        &comment("/rollgate abort web", "Codertocat", false),
    );
    assert_eq!(code, 202);
    daemon.wait_for("the rollback told on #2", || {
        !fake.hub().comments_on(2).is_empty()
    });
    let h = fake.hub();
    let web_last = h
        .statuses
        .iter()
        .rev()
        .find(|s| s["context"] == "rollgate/web")
        .expect("a status");
    assert_eq!(web_last["state"], "failure", "{web_last}");
    assert!(
        web_last["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("rolled back")),
        "{web_last}"
    );
    let told = h.comments_on(2);
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0]
            .body
            .starts_with(&format!("<!-- rollgate:rollback:web:{merge} -->")),
        "{}",
        told[0].body
    );
    assert!(
        told[0].body.contains("rolled back `web`"),
        "{}",
        told[0].body
    );
    assert!(
        h.comments_on(1)
            .iter()
            .any(|c| c.body.starts_with("@Codertocat done")),
        "the command was answered"
    );
    assert_eq!(
        remote.status("web").map(|s| s.phase),
        Some(Phase::RolledBack)
    );
}

// ---- regressions (#16: the trust boundary; #14) ----

/// `n` empty commits on `main` of the bare remote (by `git fast-import`, in one go).
fn push_empty_commits(remote: &Remote, n: usize) {
    let head = remote.head();
    let mut stream = String::new();
    for i in 0..n {
        stream.push_str(&format!(
            "commit refs/heads/main\ncommitter Human <human@example.com> {} +0000\ndata <<EOT\nchore {i}\nEOT\n",
            1_700_000_000 + i
        ));
        if i == 0 {
            stream.push_str(&format!("from {head}\n"));
        }
        stream.push('\n');
    }
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&remote.bare)
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stream.as_bytes())
        .expect("the stream");
    assert!(child.wait().expect("fast-import ends").success());
}

#[test]
fn regression_an_old_comment_delivered_again_after_a_restart_and_600_commits_acts_once() {
    // Given a writer's `/rollgate promote web`, taken in and done
    let rig = Rig::new();
    rig.fake.set_permission("Codertocat", "write");
    let promote = comment("/rollgate promote web", "Codertocat", false);
    assert_eq!(deliver(rig.addr(), "issue_comment", &promote).0, 202);
    rig.fake
        .wait_for("the reply", WAIT, |h| h.comments_on(1).len() == 1);
    // And 600 commits on the branch since: its command commit is past the look-up
    push_empty_commits(&rig.remote, 600);
    assert_eq!(
        support::git(&rig.remote.bare, &["rev-list", "--count", "main"])
            .parse::<usize>()
            .expect("a count"),
        rig.remote.commits().len()
    );

    // When rollgate restarts (a fresh worker and scratch clone, no memory of delivery
    // ids) eleven minutes later, and the same comment is delivered again
    let (_restarted, server) = rig.replica_at("github-restarted", || {
        chrono::Utc::now() + chrono::TimeDelta::minutes(11)
    });
    assert_eq!(deliver(server.addr, "issue_comment", &promote).0, 202);
    rig.fake
        .wait_for("the second answer", WAIT, |h| h.comments_on(1).len() == 2);

    // Then there is still one command commit, and the writer is told why not again
    let commands: Vec<_> = rig
        .remote
        .commits()
        .into_iter()
        .filter(|c| c.trailer("Rollgate-Command").is_some())
        .collect();
    assert_eq!(commands.len(), 1, "{commands:#?}");
    let h = rig.fake.hub();
    let answer = &h.comments_on(1)[1].body;
    assert!(
        answer.starts_with("@Codertocat this comment was written at")
            && answer.contains("more than 10 minutes ago")
            && answer.contains("did not act"),
        "{answer}"
    );
}

#[test]
fn regression_a_sticky_marker_posted_first_by_someone_else_is_never_edited() {
    // Given someone posted rollgate's marker on the pull request before rollgate did
    let rig = Rig::new();
    let fake_body = format!("{STICKY_MARKER}\n### Every changed plan passes\nMerge away!");
    rig.fake.human_comment(2, "mallory", &fake_body);

    // When the pull request is previewed, then previewed again on a new head
    let first = rig.push_pull_request(set_artifact("v2"), "web: v2");
    assert_eq!(
        deliver(rig.addr(), "pull_request", &pull_request("opened", &first)).0,
        202
    );
    rig.fake
        .wait_for("rollgate's own comment", WAIT, |h| h.ours_on(2).len() == 1);
    let second = rig.push_pull_request(set_artifact("v3"), "web: v3");
    assert_eq!(
        deliver(
            rig.addr(),
            "pull_request",
            &pull_request("synchronize", &second)
        )
        .0,
        202
    );
    rig.fake.wait_for("rollgate's comment edited", WAIT, |h| {
        h.ours_on(2).first().is_some_and(|c| c.edits == 1)
    });

    // Then rollgate wrote and edited only its own comment (the fake records a violation
    // for an edit of anyone else's), and asked who it is once
    let h = rig.fake.hub();
    let all = h.comments_on(2);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!((all[0].user.as_str(), all[0].edits), ("mallory", 0));
    assert_eq!(all[0].body, fake_body);
    assert_eq!(all[1].user, TOKEN_USER);
    assert!(all[1].body.contains("v3"), "{}", all[1].body);
    assert_eq!(h.count("GET", "/user"), 1);
}

#[test]
fn regression_an_app_edits_only_its_own_bots_sticky_comment() {
    // Given, before rollgate's preview, the marker posted by a person, by another App's
    // bot, and by a person through rollgate's own App (a user-to-server token)
    let rig = Rig::with_auth(
        Expect::App {
            id: 4242,
            token_ttl: Duration::from_secs(3600),
        },
        |remote| Auth::App {
            id: 4242,
            key: app_key(remote.dir.path()),
        },
    );
    let fake_body = format!("{STICKY_MARKER}\nall good");
    rig.fake.comment_as(2, "mallory", "User", None, &fake_body);
    rig.fake
        .comment_as(2, "evil[bot]", "Bot", Some(666), &fake_body);
    rig.fake
        .comment_as(2, "mallory", "User", Some(4242), &fake_body);

    // When the pull request is previewed twice
    let first = rig.push_pull_request(set_artifact("v2"), "web: v2");
    assert_eq!(
        deliver(rig.addr(), "pull_request", &pull_request("opened", &first)).0,
        202
    );
    rig.fake
        .wait_for("the App's own comment", WAIT, |h| h.ours_on(2).len() == 1);
    let second = rig.push_pull_request(set_artifact("v3"), "web: v3");
    assert_eq!(
        deliver(
            rig.addr(),
            "pull_request",
            &pull_request("synchronize", &second)
        )
        .0,
        202
    );
    rig.fake.wait_for("the App's comment edited", WAIT, |h| {
        h.ours_on(2).first().is_some_and(|c| c.edits == 1)
    });

    // Then only the App's bot comment was written and edited; the App was asked once
    let h = rig.fake.hub();
    let all = h.comments_on(2);
    assert_eq!(all.len(), 4, "{all:#?}");
    for c in &all[..3] {
        assert_eq!((c.edits, c.body.as_str()), (0, fake_body.as_str()), "{c:?}");
    }
    assert_eq!(
        (all[3].user.as_str(), all[3].kind.as_str(), all[3].app),
        (BOT, "Bot", Some(4242))
    );
    assert_eq!(h.count("GET", "/app"), 1);
}

#[test]
fn regression_a_rollback_marker_posted_first_by_someone_else_is_never_edited() {
    // Given `web` merged by pull request #2 and paused in its first rollout, and
    // someone who posted the marker of its rollback comment on #2 beforehand
    let web = PlanFile::new("web")
        .steps(&["setWeight: 10", "pause: {}", "setWeight: 100"])
        .first_rollout_steps();
    let remote = Remote::with_plans(&[&web]);
    let merge = remote.head();
    let fake = FakeGitHub::start(REPO, Expect::Token(TOKEN.to_owned()));
    fake.merged(&merge, 2);
    fake.set_permission("Codertocat", "write");
    let marker = rollgate::github::handle::rollback_marker("web", &merge);
    let fake_body = format!("{marker}\n### rollgate rolled back `web`\nSee https://evil.example");
    fake.human_comment(2, "mallory", &fake_body);
    let mut daemon = Daemon::start(&remote, &fake);
    daemon.wait_for("web paused", || {
        fake.hub().statuses.iter().any(|s| {
            s["context"] == "rollgate/web"
                && s["description"]
                    .as_str()
                    .is_some_and(|d| d.ends_with("paused"))
        })
    });

    // When a writer aborts it from a comment, and it rolls back
    let (code, _) = deliver(
        daemon.addr,
        "issue_comment",
        &comment("/rollgate abort web", "Codertocat", false),
    );
    assert_eq!(code, 202);
    daemon.wait_for("the rollback told on #2", || {
        !fake.hub().ours_on(2).is_empty()
    });

    // Then rollgate's rollback comment is its own; the other is as it was
    let h = fake.hub();
    let all = h.comments_on(2);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        (all[0].edits, all[0].body.as_str()),
        (0, fake_body.as_str())
    );
    assert_eq!(all[1].user, TOKEN_USER);
    assert!(all[1].body.starts_with(&marker), "{}", all[1].body);
    assert!(all[1].body.contains("rolled back `web`"), "{}", all[1].body);
}

#[test]
fn regression_a_strangers_comment_commands_get_no_reply_and_cost_at_most_one_call() {
    // Given someone who is not a collaborator
    let rig = Rig::new();
    rig.fake.set_permission("Codertocat", "write");
    // When they post commands, readable or not, on an issue and on a pull request
    for (body, on_pull_request) in [
        ("/rollgate promote web", false),
        ("/rollgate deploy web", false),
        ("/rollgate abort web", true),
    ] {
        assert_eq!(
            deliver(
                rig.addr(),
                "issue_comment",
                &comment(body, "stranger", on_pull_request)
            )
            .0,
            202
        );
    }
    // (and then a writer's command, so the worker is known to be past theirs)
    assert_eq!(
        deliver(
            rig.addr(),
            "issue_comment",
            &comment("/rollgate promote nope", "Codertocat", false)
        )
        .0,
        202
    );
    rig.fake
        .wait_for("the writer's answer", WAIT, |h| h.comments_on(1).len() == 1);

    // Then nothing answered them, their permission was read once, nothing was committed
    let h = rig.fake.hub();
    assert!(h.comments_on(2).is_empty(), "{:?}", h.comments_on(2));
    assert!(
        h.comments_on(1)[0].body.contains("no plan `nope`"),
        "{:?}",
        h.comments_on(1)
    );
    assert_eq!(
        h.count(
            "GET",
            "/repos/Codertocat/Hello-World/collaborators/stranger/permission"
        ),
        1
    );
    assert_eq!(h.count("POST", "/repos/Codertocat/Hello-World/issues/"), 1);
    drop(h);
    let (_, metrics) = get(rig.addr(), "/metrics");
    assert!(
        metrics.contains("rollgate_github_comment_commands_ignored_total{reason=\"stranger\"} 3"),
        "{metrics}"
    );
}

#[test]
fn regression_a_flood_of_deliveries_on_one_pull_request_is_bounded() {
    // Given the worker busy: its job (a reader's command on #2) is stuck in an API call
    let rig = Rig::new();
    rig.fake.set_permission("reader", "read");
    rig.fake.hold(true);
    let command = || comment("/rollgate abort web", "reader", true);
    assert_eq!(deliver(rig.addr(), "issue_comment", &command()).0, 202);
    rig.fake.wait_for("the worker stuck", WAIT, |h| {
        h.calls.iter().any(|c| c.path.starts_with("(held)"))
    });

    // When ten more commands arrive on #2: a few wait, the rest are refused busy (503)
    let codes: Vec<u16> = (0..10)
        .map(|_| deliver(rig.addr(), "issue_comment", &command()).0)
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == 202).count(),
        COMMANDS_PER_ISSUE,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == 503).count(),
        10 - COMMANDS_PER_ISSUE,
        "{codes:?}"
    );
    // While a command on another issue is still taken
    assert_eq!(
        deliver(
            rig.addr(),
            "issue_comment",
            &comment("/rollgate abort web", "reader", false)
        )
        .0,
        202
    );
    // And three pushes to #2 in a row are all taken, as one waiting preview
    let mut head = String::new();
    for artifact in ["v2", "v3", "v4"] {
        head = rig.push_pull(2, set_artifact(artifact), &format!("web: {artifact}"));
        assert_eq!(
            deliver(
                rig.addr(),
                "pull_request",
                &pull_request("synchronize", &head)
            )
            .0,
            202
        );
    }

    // And, last in the queue, one more command on #1: the one worker runs its jobs in
    // order, so once this one is answered every job queued before it is done
    assert_eq!(
        deliver(
            rig.addr(),
            "issue_comment",
            &comment("/rollgate abort web", "reader", false)
        )
        .0,
        202
    );

    // Then, the worker free again: one refusal per command taken, and one preview, of
    // the newest head
    rig.fake.hold(false);
    rig.fake.wait_for("every job done", WAIT, |h| {
        h.comments_on(2).len() == 1 + COMMANDS_PER_ISSUE + 1
            && h.comments_on(1).len() == 2
            && !h.check_runs.is_empty()
    });
    let h = rig.fake.hub();
    assert_eq!(h.check_runs.len(), 1, "{:#?}", h.check_runs);
    assert_eq!(h.check_runs[0].head_sha, head);
    assert!(
        h.ours_on(2).iter().any(|c| c.body.contains("v4")),
        "{:?}",
        h.ours_on(2)
    );
    drop(h);
    let (_, metrics) = get(rig.addr(), "/metrics");
    assert!(
        metrics.contains(&format!(
            "rollgate_webhooks_total{{outcome=\"busy\"}} {}",
            10 - COMMANDS_PER_ISSUE
        )),
        "{metrics}"
    );
}

#[test]
fn regression_previews_leave_no_pull_request_refs_in_the_scratch_clone() {
    // Given three pull requests, previewed one after the other
    let rig = Rig::new();
    for (number, artifact) in [(2, "v2"), (3, "v3"), (4, "v4")] {
        let head = rig.push_pull(number, set_artifact(artifact), &format!("web: {artifact}"));
        assert_eq!(
            deliver(
                rig.addr(),
                "pull_request",
                &pull_request_number(number, &head)
            )
            .0,
            202
        );
        rig.fake.wait_for("the preview", WAIT, |h| {
            h.check_runs.iter().any(|r| r.head_sha == head) && !h.ours_on(number).is_empty()
        });
        // Then each preview is right, and the scratch clone keeps no pull request ref
        assert!(
            rig.fake.hub().ours_on(number)[0].body.contains(artifact),
            "{:?}",
            rig.fake.hub().ours_on(number)
        );
        assert_eq!(rig.pull_refs(), Vec::<String>::new());
    }
    assert_eq!(rig.fake.hub().check_runs.len(), 3);
}

#[test]
fn regression_a_scratch_clone_past_its_budget_is_removed_and_previews_go_on() {
    // Given an endpoint whose scratch clone may hold 1 byte (every clone is past it)
    let rig = Rig::new();
    let dir = rig.remote.work_dir("small");
    let (tx, _) = std::sync::mpsc::channel();
    let (_hooks, server) = endpoint_with_budget(
        &rig.fake,
        &rig.auth,
        &rig.repo_url,
        dir.clone(),
        tx,
        Gate::always(),
        chrono::Utc::now,
        1,
    );
    for (number, artifact) in [(2, "v2"), (3, "v3")] {
        // When a pull request is previewed
        let head = rig.push_pull(number, set_artifact(artifact), &format!("web: {artifact}"));
        let (code, _) = deliver(
            server.addr,
            "pull_request",
            &pull_request_number(number, &head),
        );
        assert_eq!(code, 202);
        rig.fake.wait_for("the preview", WAIT, |h| {
            h.check_runs.iter().any(|r| r.head_sha == head) && !h.ours_on(number).is_empty()
        });
        // Then the preview is right, and the clone that grew past its budget is gone
        // (before: a fork's objects stayed until Git's gc, two weeks later)
        assert!(rig.fake.hub().ours_on(number)[0].body.contains(artifact));
        assert!(!dir.exists(), "{} kept", dir.display());
    }
}

/// Every log line of the process, from here on (a test binary runs each test in a
/// process of its own under nextest; under `cargo test` another test may have set
/// the subscriber first: `None` then).
fn capture_logs() -> Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> {
    #[derive(Clone)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .try_init()
        .ok()
        .map(|()| buf)
}

#[test]
fn regression_a_token_refused_check_runs_still_previews_with_a_commit_status_and_the_comment() {
    // Given a personal access token, to which GitHub refuses check runs (403)
    let logs = capture_logs();
    let rig = Rig::new();
    rig.fake.refuse_check_runs();

    // When a passing pull request (#2) and then a rejected one (#3) are previewed
    let good = rig.push_pull(2, set_artifact("v2"), "web: v2");
    assert_eq!(
        deliver(rig.addr(), "pull_request", &pull_request_number(2, &good)).0,
        202
    );
    rig.fake.wait_for("the first preview", WAIT, |h| {
        h.statuses.iter().any(|s| s["sha"] == good.as_str()) && !h.ours_on(2).is_empty()
    });
    let bad = rig.push_pull(
        3,
        |t| t.replace("setWeight: 10", "setWeight: 150"),
        "web: too much",
    );
    assert_eq!(
        deliver(rig.addr(), "pull_request", &pull_request_number(3, &bad)).0,
        202
    );
    rig.fake.wait_for("the second preview", WAIT, |h| {
        h.statuses.iter().any(|s| s["sha"] == bad.as_str()) && !h.ours_on(3).is_empty()
    });

    // Then each head has the commit status `rollgate` for its conclusion, and the
    // sticky comment; check runs were tried once, by the first preview only
    let h = rig.fake.hub();
    let status = |sha: &str| {
        let s = h
            .statuses
            .iter()
            .find(|s| s["sha"] == sha)
            .expect("a status");
        assert_eq!(s["context"], "rollgate", "{s}");
        (
            s["state"].as_str().unwrap_or("").to_owned(),
            s["description"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(
        status(&good),
        ("success".to_owned(), "Every changed plan passes".to_owned())
    );
    assert_eq!(
        status(&bad),
        (
            "failure".to_owned(),
            "A changed plan is rejected".to_owned()
        )
    );
    assert_eq!(h.statuses.len(), 2, "{:?}", h.statuses);
    for (number, says) in [(2, "v2"), (3, "150")] {
        let ours = h.ours_on(number);
        assert_eq!(ours.len(), 1, "{ours:?}");
        assert!(ours[0].body.starts_with(STICKY_MARKER) && ours[0].body.contains(says));
    }
    assert!(h.check_runs.is_empty());
    assert_eq!(
        h.count("POST", "/repos/Codertocat/Hello-World/check-runs"),
        1
    );
    assert_eq!(
        h.calls
            .iter()
            .filter(|c| c.path.ends_with("/check-runs"))
            .count(),
        2,
        "one list and one create: {:?}",
        h.calls
    );
    // And the log says so once, not once per pull request
    if let Some(logs) = logs {
        let text =
            String::from_utf8_lossy(&logs.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        assert_eq!(
            text.matches("GitHub refuses check runs").count(),
            1,
            "{text}"
        );
        assert!(!text.contains(TOKEN), "{text}");
    }
}

/// #15: with `--leader-elect`, every ready replica gets deliveries (the Service balances
/// over them), and every replica's worker acted on them: two previews, and a comment
/// command answered, and committed, by the stand-by as well as the leader.
#[test]
fn regression_a_stand_by_replica_posts_no_preview_and_commits_no_command() {
    // Given a stand-by replica (another one holds the lease) and a writer
    let rig = Rig::new();
    rig.fake.set_permission("Codertocat", "write");
    let leading = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&leading);
    let (_hooks, server) =
        rig.replica_led("stand-by", Gate::new(move || flag.load(Ordering::SeqCst)));
    let before = rig.remote.head();

    // When a pull request and the writer's command reach it: answered, and nothing asked
    // of GitHub
    let first = rig.push_pull_request(set_artifact("v2"), "web: v2");
    let (code, text) = deliver(server.addr, "pull_request", &pull_request("opened", &first));
    // (a 503: GitHub lists the delivery as failed, to be redelivered, never as done)
    assert_eq!(
        (code, text.trim()),
        (503, "stand-by: only the leader acts; redeliver")
    );
    let command = comment("/rollgate promote web", "Codertocat", false);
    assert_eq!(deliver(server.addr, "issue_comment", &command).0, 503);
    assert!(
        rig.fake.hub().calls.is_empty(),
        "{:?}",
        rig.fake.hub().calls
    );

    // Then, once it leads, the next deliveries are handled, and nothing of theirs was
    // waiting (the worker runs jobs in order): one check run and one sticky comment, of
    // the newer head; one reply, to the newer command; no command commit
    leading.store(true, Ordering::SeqCst);
    let second = rig.push_pull_request(set_artifact("v3"), "web: v3");
    assert_eq!(
        deliver(
            server.addr,
            "pull_request",
            &pull_request("synchronize", &second)
        )
        .0,
        202
    );
    assert_eq!(
        deliver(
            server.addr,
            "issue_comment",
            &comment("/rollgate promote nope", "Codertocat", false)
        )
        .0,
        202
    );
    rig.fake
        .wait_for("the leader's preview and reply", WAIT, |h| {
            !h.check_runs.is_empty() && !h.ours_on(2).is_empty() && h.comments_on(1).len() == 1
        });
    {
        let h = rig.fake.hub();
        assert_eq!(h.check_runs.len(), 1, "{:#?}", h.check_runs);
        assert_eq!(h.check_runs[0].head_sha, second);
        let ours = h.ours_on(2);
        assert_eq!(ours.len(), 1, "{ours:?}");
        assert!(
            ours[0].body.contains("v3") && ours[0].edits == 0,
            "{ours:?}"
        );
        assert!(
            h.comments_on(1)[0].body.contains("no plan `nope`"),
            "{:?}",
            h.comments_on(1)
        );
        assert_eq!(
            h.count(
                "GET",
                "/repos/Codertocat/Hello-World/collaborators/Codertocat/permission"
            ),
            1
        );
        assert!(h.statuses.is_empty(), "{:?}", h.statuses);
    }
    assert_eq!(rig.remote.head(), before, "no command commit");

    // And the stand-by's command, delivered again now that it leads, is done, once
    assert_eq!(deliver(server.addr, "issue_comment", &command).0, 202);
    rig.fake
        .wait_for("the reply", WAIT, |h| h.comments_on(1).len() == 2);
    assert_eq!(
        support::git(&rig.remote.bare, &["rev-parse", "main~1"]),
        before
    );
    rig.fake.assert_clean();
}

/// #15: a job taken in while this replica led, and taken up by the worker after it lost
/// the lease, is dropped (the preview it was busy with finishes).
#[test]
fn regression_a_replica_that_lost_the_lease_drops_the_command_it_took_in_as_leader() {
    // Given the leader's worker stuck in an API call of a preview, a command waiting
    let rig = Rig::new();
    rig.fake.set_permission("Codertocat", "write");
    let leading = Arc::new(AtomicBool::new(true));
    // How often the gate was asked: once per delivery taken in, once per job taken up
    let asked = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (Arc::clone(&leading), Arc::clone(&asked));
    let (_hooks, server) = rig.replica_led(
        "leader",
        Gate::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
            flag.load(Ordering::SeqCst)
        }),
    );
    let before = rig.remote.head();
    rig.fake.hold(true);
    let head = rig.push_pull_request(set_artifact("v2"), "web: v2");
    assert_eq!(
        deliver(server.addr, "pull_request", &pull_request("opened", &head)).0,
        202
    );
    rig.fake.wait_for("the worker stuck", WAIT, |h| {
        h.calls.iter().any(|c| c.path.starts_with("(held)"))
    });
    assert_eq!(
        deliver(
            server.addr,
            "issue_comment",
            &comment("/rollgate promote web", "Codertocat", false)
        )
        .0,
        202
    );

    // When it loses the lease, and GitHub answers again
    leading.store(false, Ordering::SeqCst);
    rig.fake.hold(false);

    // Then the preview it had begun is posted, and the command is dropped when the
    // worker takes it up: no permission call, no reply, no commit
    rig.fake.wait_for("the preview", WAIT, |h| {
        !h.check_runs.is_empty() && !h.ours_on(2).is_empty()
    });
    // (taken up: the gate asked a fourth time, or, were it not asked, the reply posted)
    rig.fake.wait_for("the command taken up", WAIT, |h| {
        asked.load(Ordering::SeqCst) >= 4 || !h.comments_on(1).is_empty()
    });
    let h = rig.fake.hub();
    assert!(h.comments_on(1).is_empty(), "{:?}", h.comments_on(1));
    assert_eq!(
        h.count("GET", "/repos/Codertocat/Hello-World/collaborators/"),
        0
    );
    drop(h);
    assert_eq!(rig.remote.head(), before, "no command commit");
    rig.fake.assert_clean();
}
