//! rollgate's fetch and push over the network, against real servers on loopback
//! (`support::git_servers`: nginx + `git http-backend` behind TLS and Basic auth, and
//! OpenSSH's sshd): what works works with the right token, CA, key and known_hosts;
//! what must fail fails as the `RemoteError` a person can act on; a token is never
//! shown, stored, or sent where it must not go; and the README's reconcile story runs
//! end to end over https and over ssh.
//!
//! A machine without nginx, fcgiwrap, sshd or openssl prints `skipped: <reason>` for the
//! tests that need them (`bash .ci/test` installs them).

use crate::support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::Oid;
use rollgate::github::Secret;
use rollgate::model::settings::WriteBack;
use rollgate::model::status::{Phase, Status};
use rollgate::source::git::GitSource;
use rollgate::source::remote::{GitAuth, RemoteError};
use rollgate::writeback::{CommitSpec, Edit, WriteOutcome, Writer};
use support::git_servers::{HttpsGit, SshGit, https_auth, ssh_auth, start_or_skip};
use support::rollout::{LoggedCommit, PlanFile, World, assert_only_fast_forwards, set_artifact};
use support::{Remote, example_repo, git};

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");

/// `remote`'s bare repository, served by `server` as `name`.
fn serve_https(server: &HttpsGit, remote: &Remote, name: &str) -> String {
    std::os::unix::fs::symlink(&remote.bare, server.root.join(name)).expect("symlink the repo");
    server.url(name)
}

/// The error of a fetch or push, as the `RemoteError` it must be.
fn remote_error(e: anyhow::Error) -> RemoteError {
    match e.downcast::<RemoteError>() {
        Ok(r) => r,
        Err(e) => panic!("not a RemoteError: {e:#}"),
    }
}

fn fetch_error(src: &GitSource) -> RemoteError {
    remote_error(src.fetch().expect_err("the fetch fails"))
}

fn status_spec(n: usize) -> CommitSpec {
    CommitSpec {
        subject: format!("hello: step {n}"),
        body: None,
        trailers: vec![
            ("Rollgate-Plan".into(), "hello".into()),
            ("Rollgate-Step".into(), format!("{n}/4")),
        ],
        revert: None,
        edits: vec![Edit {
            path: "status/hello.yaml".into(),
            content: Some(format!("plan: hello\nstep: {n}\n").into_bytes()),
        }],
    }
}

fn revert_spec(change: &str) -> CommitSpec {
    CommitSpec {
        subject: "Roll back hello to v1".into(),
        body: None,
        trailers: vec![
            ("Rollgate-Plan".into(), "hello".into()),
            ("Rollgate-Rollback-Of".into(), change.to_owned()),
        ],
        revert: Some(Oid::from_str(change).expect("oid")),
        edits: vec![],
    }
}

fn pushed(out: WriteOutcome) -> Oid {
    match out {
        WriteOutcome::Pushed { commit, .. } => commit,
        WriteOutcome::NoChange => panic!("nothing was pushed"),
    }
}

/// The remote's reflog of main, newest first: `<new sha> <identity name> <message>`.
fn reflog(bare: &Path) -> Vec<String> {
    git(bare, &["log", "-g", "main", "--format=%H %gn %gs"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = e.path();
            let kind = e.file_type().expect("file type");
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).expect("read file");
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

fn assert_no_secret(what: &str, text: &str, secret: &str) {
    assert!(
        !text.contains(secret),
        "{what} shows the secret {secret}:\n{text}"
    );
}

/// Standard base64 (for `Authorization: Basic` headers).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The rollgate binary with `args` and environment changes; killed after a minute.
fn rollgate(args: &[&str], set: &[(&str, &str)], unset: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in unset {
        cmd.env_remove(k);
    }
    cmd.envs(set.iter().copied());
    let mut child = cmd.spawn().expect("rollgate runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "rollgate {args:?} did not finish in 60 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    eprintln!(
        "$ rollgate {}\n--- exit: {}\n--- stdout:\n{}\n--- stderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every variable that would point rollgate at other Git credentials than the test's.
const GIT_CREDENTIAL_ENV: &[&str] = &[
    "ROLLGATE_GIT_TOKEN",
    "ROLLGATE_GIT_TOKEN_FILE",
    "ROLLGATE_GIT_USERNAME",
    "ROLLGATE_GIT_SSH_KEY",
    "ROLLGATE_GIT_SSH_PASSPHRASE_FILE",
    "ROLLGATE_GIT_KNOWN_HOSTS",
    "ROLLGATE_GIT_CA_FILE",
    "GITHUB_TOKEN",
    "NO_PROXY",
    "no_proxy",
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "ALL_PROXY",
    "all_proxy",
];

/// A plain-HTTP server (or proxy) on 127.0.0.1 that answers every request `401` with a
/// Basic challenge and keeps each request's raw head and body.
struct Recording401 {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recording401 {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let raw = answer_401(stream);
                        reqs.lock().expect("lock").push(raw);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for Recording401 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read one request (head, and a body up to its Content-Length), answer 401, close.
fn answer_401(mut stream: std::net::TcpStream) -> String {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i + 4);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            break None;
        }
    };
    if let Some(end) = head_end {
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < end + length.min(1 << 20) {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    let _ = stream.write_all(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\
          Content-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let _ = stream.flush();
    String::from_utf8_lossy(&buf).into_owned()
}

// --- https -----------------------------------------------------------------------------

#[test]
fn https_fetch_a_status_push_and_a_revert_push_work_with_the_token_and_the_test_ca() {
    let server = start_or_skip!(HttpsGit);
    let remote = Remote::seeded_from(&example_repo());
    let change = remote.human_commit(
        "plans/hello.yaml",
        |s| s.replace("artifact: v1", "artifact: v2"),
        "hello: v2",
    );
    let url = serve_https(&server, &remote, "ops.git");
    let tmp = tempfile::tempdir().expect("tmp");
    let src = GitSource::open_with(&url, &tmp.path().join("work"), "main", https_auth(&server))
        .expect("open");

    // The fetch brings the human's head.
    assert_eq!(src.fetch().expect("fetch").to_string(), change);

    // A status commit and a revert of the human's change are pushed.
    let settings = WriteBack::default();
    let writer = Writer::new(&src, &settings);
    let status = pushed(
        writer
            .write(|_| Ok(Some(status_spec(1))))
            .expect("status push"),
    );
    assert_eq!(remote.head(), status.to_string());
    assert_eq!(remote.file("status/hello.yaml"), "plan: hello\nstep: 1");
    let revert = pushed(
        writer
            .write(|_| Ok(Some(revert_spec(&change))))
            .expect("revert push"),
    );
    assert_eq!(remote.head(), revert.to_string());
    let plan = remote.file("plans/hello.yaml");
    assert!(plan.contains("artifact: v1"), "{plan}");
    assert_eq!(
        remote
            .log("%(trailers:key=Rollgate-Rollback-Of,valueonly)")
            .lines()
            .next(),
        Some(change.as_str())
    );

    // The remote's reflog shows both pushes, as the server's Basic auth user.
    let log = reflog(&remote.bare);
    assert_eq!(
        log[..2],
        [
            format!("{revert} rollgate-bot push"),
            format!("{status} rollgate-bot push"),
        ],
        "{log:#?}"
    );
    assert_only_fast_forwards(&remote);
    let access = server.access_log();
    assert!(
        access
            .contains("POST /ops.git/git-receive-pack HTTP/1.1\" 200 user=rollgate-bot auth=basic"),
        "{access}"
    );
}

#[test]
fn https_a_wrong_token_is_an_auth_error_and_a_token_is_never_shown_or_stored() {
    let server = start_or_skip!(HttpsGit);
    let remote = Remote::seeded_from(&example_repo());
    let url = serve_https(&server, &remote, "ops.git");
    let tmp = tempfile::tempdir().expect("tmp");

    // A wrong token: an authentication error naming the remote, never the token.
    let wrong = "wrong-token-5f0c2d7e9a";
    let auth = GitAuth {
        token: Secret::new(wrong),
        ..https_auth(&server)
    };
    assert_no_secret("GitAuth's Debug", &format!("{auth:?}"), wrong);
    let src = GitSource::open_with(&url, &tmp.path().join("wrong"), "main", auth).expect("open");
    let err = fetch_error(&src);
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&url), "the error names the remote: {msg}");
    assert_no_secret("the error", &msg, wrong);
    assert_no_secret("the error's Debug", &format!("{err:?}"), wrong);

    // A wrong token in the URL: the same, and the URL is shown without it.
    let wrong_in_url = "wrong-in-url-81be47c3";
    let url_wrong = url.replacen(
        "https://",
        &format!("https://{}:{wrong_in_url}@", server.username),
        1,
    );
    let src = GitSource::open_with(
        &url_wrong,
        &tmp.path().join("wrong-url"),
        "main",
        GitAuth {
            ca_file: Some(server.ca_file.clone()),
            ..GitAuth::default()
        },
    )
    .expect("open");
    let err = fetch_error(&src);
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    assert_no_secret("the error", &format!("{err} {err:?}"), wrong_in_url);
    assert_no_secret("GitSource's Debug", &format!("{src:?}"), wrong_in_url);

    // The right token in the URL: fetch and push work.
    let token = server.token.clone();
    let with_token = server.url_with_token("ops.git");
    assert!(with_token.contains(&token));
    let work = tmp.path().join("with-token");
    let ca_only = GitAuth {
        ca_file: Some(server.ca_file.clone()),
        ..GitAuth::default()
    };
    let src = GitSource::open_with(&with_token, &work, "main", ca_only.clone()).expect("open");
    assert_eq!(src.url(), url);
    assert_eq!(src.fetch().expect("fetch").to_string(), remote.head());
    let settings = WriteBack::default();
    let commit = pushed(
        Writer::new(&src, &settings)
            .write(|_| Ok(Some(status_spec(1))))
            .expect("push"),
    );
    assert_eq!(remote.head(), commit.to_string());
    // An error from the same remote (a missing branch) does not show it either.
    let missing = GitSource::open_with(&with_token, &tmp.path().join("missing"), "nosuch", ca_only)
        .expect("open");
    let err = fetch_error(&missing);
    assert!(matches!(err, RemoteError::MissingBranch { .. }), "{err:?}");

    for (what, text) in [
        ("GitSource's Debug", format!("{src:?}")),
        ("GitSource::url", src.url().to_owned()),
        ("a missing branch error", format!("{err} {err:?}")),
        ("the wrong token's error", msg),
    ] {
        assert_no_secret(what, &text, &token);
    }
    let config = std::fs::read_to_string(work.join("config")).expect("the clone's config");
    assert!(config.contains(&url), "{config}");
    assert_no_secret("the private clone's config", &config, &token);
    let holding = files_holding(tmp.path(), token.as_bytes());
    assert!(
        holding.is_empty(),
        "files under the work dirs hold the token: {holding:?}"
    );
}

#[test]
fn https_another_ca_or_none_is_a_certificate_error() {
    let server = start_or_skip!(HttpsGit);
    let remote = Remote::seeded_from(&example_repo());
    let url = serve_https(&server, &remote, "ops.git");
    let tmp = tempfile::tempdir().expect("tmp");
    for (name, ca_file) in [
        ("other-ca", Some(server.other_ca_file.clone())),
        ("no-ca", None),
    ] {
        let auth = GitAuth {
            ca_file,
            ..https_auth(&server)
        };
        let src = GitSource::open_with(&url, &tmp.path().join(name), "main", auth).expect("open");
        let err = fetch_error(&src);
        assert!(
            matches!(err, RemoteError::Certificate { .. }),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(&url), "{err}");
        assert!(!err.is_transient(), "{err:?}");
    }
    // Not a single request reached the repository.
    assert!(
        !server.access_log().contains("/ops.git/"),
        "{}",
        server.access_log()
    );
}

// --- the binary: which URLs get the token ------------------------------------------------

#[test]
fn plain_http_to_a_host_that_is_not_loopback_never_gets_the_token() {
    let proxy = Recording401::start();
    let token = "tok-3c9e1a55d07b4f2e";
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let repo = format!("http://git.rollgate-test.example:{}/r.git", proxy.port);
    let state = tempfile::tempdir().expect("state dir");
    let env = [
        ("http_proxy", proxy_url.as_str()),
        ("HTTP_PROXY", proxy_url.as_str()),
        ("ROLLGATE_GIT_TOKEN", token),
    ];
    // The token from the environment, and the token in the URL.
    let in_url = repo.replacen("http://", &format!("http://bot:{token}@"), 1);
    for (n, repo) in [&repo, &in_url].into_iter().enumerate() {
        let state_dir = state.path().join(n.to_string());
        // Not a dry run, against the example's `local` plan: were the fetch to succeed,
        // the data plane it starts would outlive the daemon.
        let _planes = support::DataPlanes(state_dir.clone());
        let out = rollgate(
            &[
                "run",
                "--once",
                "--repo",
                repo,
                "--state-dir",
                state_dir.to_str().expect("utf8"),
            ],
            &env,
            GIT_CREDENTIAL_ENV,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "rollgate succeeded: {stderr}");
        assert!(
            stderr.contains("authentication failed"),
            "an auth problem is named: {stderr}"
        );
        assert!(
            stderr.contains("never sent over plain http"),
            "why the token was not sent: {stderr}"
        );
        assert_no_secret("rollgate's stderr", &stderr, token);
        assert_no_secret("rollgate's stdout", &stdout, token);
        let holding = files_holding(&state_dir, token.as_bytes());
        assert!(holding.is_empty(), "{holding:?}");
    }

    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("git.rollgate-test.example") && r.contains("/r.git/info/refs")),
        "git asked the proxy for the repository: {requests:#?}"
    );
    let basic = base64(format!("x-access-token:{token}").as_bytes());
    let basic_bot = base64(format!("bot:{token}").as_bytes());
    for r in &requests {
        assert!(
            !r.to_ascii_lowercase().contains("authorization:"),
            "a request carried credentials: {r}"
        );
        for secret in [token, basic.as_str(), basic_bot.as_str()] {
            assert_no_secret("a request", r, secret);
        }
    }
}

#[test]
fn the_binary_fetches_and_pushes_over_https_to_loopback_with_the_token() {
    let server = start_or_skip!(HttpsGit);
    let bare = server.add_bare("ops.git", Some(&example_repo()));
    let seeded = git(&bare, &["rev-parse", "main"]);
    let state = tempfile::tempdir().expect("state dir");
    let ca = server.ca_file.display().to_string();
    let url = server.url("ops.git");
    let with_token = server.url_with_token("ops.git");
    // The token from the environment, and the token in the URL.
    for (n, (repo, env)) in [
        (
            url.as_str(),
            vec![
                ("ROLLGATE_GIT_TOKEN", server.token.as_str()),
                ("ROLLGATE_GIT_USERNAME", server.username.as_str()),
                ("ROLLGATE_GIT_CA_FILE", ca.as_str()),
            ],
        ),
        (
            with_token.as_str(),
            vec![("ROLLGATE_GIT_CA_FILE", ca.as_str())],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let state_dir = state.path().join(n.to_string());
        // The example's CloudWatch checks: no trip to the EC2 metadata service.
        let mut env = env;
        env.push(("AWS_EC2_METADATA_DISABLED", "true"));
        let out = rollgate(
            &[
                "run",
                "--once",
                "--journal-targets",
                "--repo",
                repo,
                "--state-dir",
                state_dir.to_str().expect("utf8"),
            ],
            &env,
            GIT_CREDENTIAL_ENV,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rollgate failed: {stderr}");
        assert_no_secret("rollgate's stderr", &stderr, &server.token);
        assert_no_secret(
            "rollgate's stdout",
            &String::from_utf8_lossy(&out.stdout),
            &server.token,
        );
        let holding = files_holding(&state_dir, server.token.as_bytes());
        assert!(holding.is_empty(), "{holding:?}");
    }
    // The fetches went through as the server's user; the dry run's status commits were
    // pushed over https on top of the seed.
    let access = server.access_log();
    assert!(
        access
            .contains("POST /ops.git/git-upload-pack HTTP/1.1\" 200 user=rollgate-bot auth=basic"),
        "{access}"
    );
    let log = reflog(&bare);
    assert!(
        log.iter().any(|l| l.ends_with(" rollgate-bot push")),
        "rollgate pushed over https: {log:#?}"
    );
    assert!(
        support::git_ok(&bare, &["merge-base", "--is-ancestor", &seeded, "main"]),
        "the seed is still on main"
    );
}

// --- ssh --------------------------------------------------------------------------------

/// The example repository as a bare remote, and rollgate's source for it over `server`
/// with the test key (the folder holds the private clone).
fn over_ssh(server: &SshGit) -> (Remote, tempfile::TempDir, GitSource) {
    let remote = Remote::seeded_from(&example_repo());
    let url = server.url(&remote.bare);
    let tmp = tempfile::tempdir().expect("tmp");
    let src = GitSource::open_with(&url, &tmp.path().join("work"), "main", ssh_auth(server))
        .expect("open");
    (remote, tmp, src)
}

#[test]
fn ssh_fetch_and_push_work_with_the_key_and_known_hosts() {
    let server = start_or_skip!(SshGit);
    let (remote, _tmp, src) = over_ssh(&server);
    assert_eq!(src.fetch().expect("fetch").to_string(), remote.head());
    let settings = WriteBack::default();
    let commit = pushed(
        Writer::new(&src, &settings)
            .write(|_| Ok(Some(status_spec(1))))
            .expect("push"),
    );
    assert_eq!(remote.head(), commit.to_string());
    let log = reflog(&remote.bare);
    assert!(
        log[0].starts_with(&commit.to_string()) && log[0].ends_with(" push"),
        "{log:#?}"
    );
    assert_only_fast_forwards(&remote);
    assert!(
        server.log().contains("Accepted publickey for"),
        "{}",
        server.log()
    );
}

/// The processes whose command line names `needle` (`/proc/*/cmdline`).
fn processes_naming(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[test]
fn ssh_commands_share_one_connection_that_closes_with_the_remote() {
    let server = start_or_skip!(SshGit);
    let (_remote, _tmp, src) = over_ssh(&server);
    let socket = src
        .remote()
        .ssh_control_socket()
        .expect("an ssh remote shares its connection");
    for _ in 0..3 {
        src.fetch().expect("fetch");
    }
    let settings = WriteBack::default();
    pushed(
        Writer::new(&src, &settings)
            .write(|_| Ok(Some(status_spec(1))))
            .expect("push"),
    );
    let log = server.log();
    let logins = log.matches("Accepted publickey for").count();
    let commands = log.matches("Starting session: command").count();
    assert_eq!(logins, 1, "one login for every command: {log}");
    assert!(commands >= 5, "{commands} commands: {log}");
    let shown = socket.display().to_string();
    assert!(
        !processes_naming(&shown).is_empty(),
        "the shared connection is open while the remote is"
    );
    // Dropped: the connection closes at once (not after its idle time), and its folder
    // goes with it.
    drop(src);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_naming(&shown).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_naming(&shown).is_empty(),
        "still running after the remote was dropped: {:?}",
        processes_naming(&shown)
    );
    assert!(
        !socket.parent().expect("folder").exists(),
        "the socket's folder is removed"
    );
}

#[test]
fn ssh_an_unknown_or_changed_host_key_is_a_host_key_error() {
    let server = start_or_skip!(SshGit);
    let remote = Remote::seeded_from(&example_repo());
    let url = server.url(&remote.bare);
    let tmp = tempfile::tempdir().expect("tmp");
    let open = |name: &str, known_hosts: &Path| {
        let auth = GitAuth {
            known_hosts: Some(known_hosts.to_path_buf()),
            ..ssh_auth(&server)
        };
        GitSource::open_with(&url, &tmp.path().join(name), "main", auth).expect("open")
    };

    let err = fetch_error(&open("unknown", &server.empty_known_hosts));
    eprintln!("unknown: {err}");
    let RemoteError::HostKey {
        host,
        state,
        fingerprint,
        known_hosts,
        ..
    } = &err
    else {
        panic!("not a host key error: {err:?}");
    };
    assert_eq!((host.as_str(), *state), ("127.0.0.1", "unknown"), "{err}");
    assert_eq!(Path::new(known_hosts), server.empty_known_hosts, "{err}");
    // ssh does not print the offered key in strict mode; rollgate asks ssh-keyscan.
    assert!(fingerprint.contains(&server.host_fingerprint), "{err}");
    assert!(!err.is_transient());

    let err = fetch_error(&open("changed", &server.wrong_known_hosts));
    eprintln!("changed: {err}");
    let RemoteError::HostKey {
        host,
        state,
        fingerprint,
        known_hosts,
        ..
    } = &err
    else {
        panic!("not a host key error: {err:?}");
    };
    assert_eq!((host.as_str(), *state), ("127.0.0.1", "changed"), "{err}");
    assert_eq!(*fingerprint, server.host_fingerprint, "{err}");
    assert_eq!(Path::new(known_hosts), server.wrong_known_hosts, "{err}");
    assert!(err.to_string().contains(&server.host_fingerprint), "{err}");
    // Neither connection got as far as logging in.
    assert!(
        !server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );
}

#[test]
fn ssh_a_passphrase_key_works_with_its_passphrase_file_and_is_refused_without() {
    let server = start_or_skip!(SshGit);
    let remote = Remote::seeded_from(&example_repo());
    let url = server.url(&remote.bare);
    let tmp = tempfile::tempdir().expect("tmp");

    let auth = GitAuth {
        ssh_key: Some(server.passphrase_key.clone()),
        ssh_passphrase_file: Some(server.passphrase_file.clone()),
        ..ssh_auth(&server)
    };
    let src = GitSource::open_with(&url, &tmp.path().join("with"), "main", auth).expect("open");
    assert_eq!(src.fetch().expect("fetch").to_string(), remote.head());

    let auth = GitAuth {
        ssh_key: Some(server.passphrase_key.clone()),
        ..ssh_auth(&server)
    };
    let src = GitSource::open_with(&url, &tmp.path().join("without"), "main", auth).expect("open");
    let err = fetch_error(&src);
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    let passphrase = std::fs::read_to_string(&server.passphrase_file).expect("passphrase");
    assert_no_secret("the error", &format!("{err} {err:?}"), &passphrase);
}

// --- both -------------------------------------------------------------------------------

#[test]
fn a_missing_branch_is_named_over_https_and_ssh() {
    let (Ok(https), Ok(ssh)) = (HttpsGit::start(), SshGit::start()) else {
        eprintln!("skipped: no https or ssh git server on this machine");
        return;
    };
    let remote = Remote::seeded_from(&example_repo());
    let tmp = tempfile::tempdir().expect("tmp");
    for (name, url, auth) in [
        (
            "https",
            serve_https(&https, &remote, "ops.git"),
            https_auth(&https),
        ),
        ("ssh", ssh.url(&remote.bare), ssh_auth(&ssh)),
    ] {
        let src = GitSource::open_with(&url, &tmp.path().join(name), "nosuch", auth).expect("open");
        let err = fetch_error(&src);
        let RemoteError::MissingBranch { remote, branch } = &err else {
            panic!("{name}: not a missing branch: {err:?}");
        };
        assert_eq!((remote.as_str(), branch.as_str()), (url.as_str(), "nosuch"));
        assert!(!err.is_transient(), "{err:?}");
    }
}

#[test]
fn a_closed_port_is_unreachable_and_transient_over_https_and_ssh() {
    let (Ok(https), Ok(ssh)) = (HttpsGit::start(), SshGit::start()) else {
        eprintln!("skipped: no https or ssh git server on this machine");
        return;
    };
    let closed = support::free_port();
    let tmp = tempfile::tempdir().expect("tmp");
    let ssh_url = ssh
        .url("ops.git")
        .replace(&format!(":{}/", ssh.port), &format!(":{closed}/"));
    for (name, url, auth) in [
        (
            "https",
            format!("https://127.0.0.1:{closed}/ops.git"),
            https_auth(&https),
        ),
        ("ssh", ssh_url, ssh_auth(&ssh)),
    ] {
        let src = GitSource::open_with(&url, &tmp.path().join(name), "main", auth).expect("open");
        let err = fetch_error(&src);
        assert!(
            matches!(err, RemoteError::Unreachable { .. }),
            "{name}: {err:?}"
        );
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains(&url), "{err}");
    }
}

// --- the README's story over the network -------------------------------------------------

fn is(phase: Phase, candidate: &str) -> impl Fn(&Status) -> bool {
    let candidate = candidate.to_owned();
    move |s| s.phase == phase && s.candidate == candidate
}

/// The commits after `sha` on the remote's main, oldest first.
fn commits_after(remote: &Remote, sha: &str) -> Vec<LoggedCommit> {
    let all = remote.commits();
    let i = all
        .iter()
        .position(|c| c.sha == sha)
        .expect("the commit is on main");
    all[i + 1..].to_vec()
}

fn phases_and_steps(commits: &[LoggedCommit]) -> Vec<(&str, &str)> {
    commits
        .iter()
        .map(|c| {
            (
                c.trailer("Rollgate-Phase").unwrap_or("-"),
                c.trailer("Rollgate-Step").unwrap_or("-"),
            )
        })
        .collect()
}

/// A plan rolled out at v1; v2 rolls out stage by stage; v3 fails its judgement and is
/// rolled back with a revert commit. All of rollgate's Git goes through `url`.
fn rollout_story(remote: Remote, url: &str, auth: GitAuth) -> World {
    let plan = PlanFile::new("web");
    let mut w = World::over(remote, url, auth);
    w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
    assert_eq!(w.rec.source().url(), url);

    // A change that succeeds: one status commit per transition, in order.
    let calls_before = w.target.calls("web").len();
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    let reports = w.run_until("web", 10, 40, is(Phase::Succeeded, "v2"));
    let new = commits_after(&w.remote, &change);
    let transitions: usize = reports.iter().map(|r| r.transitions).sum();
    assert_eq!(new.len(), transitions, "one commit per transition");
    // The pass that sees the push records Pending and takes the first step; every later
    // pass records at most one transition
    assert_eq!(reports[0].transitions, 2, "{reports:?}");
    assert!(reports[1..].iter().all(|r| r.transitions <= 1));
    assert!(reports.iter().all(|r| r.errors == 0), "{reports:?}");
    for c in &new {
        assert!(c.is_status(), "not a status commit: {c:?}");
        assert_eq!(c.files, vec!["status/web.yaml".to_owned()], "{c:?}");
        assert_eq!(c.trailer("Rollgate-Revision"), Some(change.as_str()));
        assert_eq!(c.trailer("Rollgate-Artifact"), Some("v2"));
        assert_eq!(c.author, "rollgate");
    }
    assert_eq!(
        phases_and_steps(&new),
        [
            ("Pending", "0/4"),
            ("Progressing", "1/4"),
            ("Progressing", "2/4"),
            ("Progressing", "3/4"),
            ("Progressing", "4/4"),
            ("Promoting", "4/4"),
            ("Succeeded", "4/4"),
        ]
    );
    assert_eq!(
        w.target.calls("web")[calls_before..],
        [
            "start v2",
            "weight 10",
            "weight 50",
            "weight 100",
            "promote v2"
        ]
    );

    // A change that fails its judgement: rolled back, and reverted in Git.
    let calls_before = w.target.calls("web").len();
    w.metrics.set("v3", 0.42);
    let v2_yaml = w.remote.file(&plan.path());
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v3"), "web: v3");
    w.run_until("web", 10, 40, is(Phase::RolledBack, "v3"));
    let new = commits_after(&w.remote, &change);
    let reverts: Vec<&LoggedCommit> = new
        .iter()
        .filter(|c| c.trailer("Rollgate-Rollback-Of").is_some())
        .collect();
    assert_eq!(reverts.len(), 1, "{new:#?}");
    let revert = reverts[0];
    assert_eq!(
        revert.trailer("Rollgate-Rollback-Of"),
        Some(change.as_str())
    );
    assert_eq!(revert.trailer("Rollgate-Plan"), Some("web"));
    assert_eq!(revert.subject, "Roll back web to v2");
    assert_eq!(revert.files, vec![plan.path()]);
    assert!(
        revert
            .trailers_named("Rollgate-Verdict")
            .iter()
            .any(|v| v.starts_with("fail success-rate")),
        "{revert:?}"
    );
    assert_eq!(w.remote.file(&plan.path()), v2_yaml);
    let phases: Vec<&str> = new
        .iter()
        .filter_map(|c| c.trailer("Rollgate-Phase"))
        .collect();
    assert_eq!(
        phases,
        [
            "Pending",
            "Progressing",
            "Progressing",
            "RollingBack",
            "RolledBack"
        ]
    );
    assert_eq!(
        w.target.calls("web")[calls_before..],
        ["start v3", "weight 10", "rollback v2"]
    );
    let wl = w.target.workload("web");
    assert_eq!(
        (wl.stable.as_deref(), wl.candidate, wl.weight),
        (Some("v2"), None, 0)
    );

    // Nothing re-applies the bad version afterwards.
    let head = w.remote.head();
    for _ in 0..3 {
        w.wait(60);
        let r = w.tick();
        assert_eq!((r.transitions, r.actions, r.reverts), (0, 0, 0), "{r:?}");
    }
    assert_eq!(w.remote.head(), head);
    assert_only_fast_forwards(&w.remote);
    w
}

#[test]
fn a_rollout_succeeds_and_one_is_rolled_back_over_https() {
    let server = start_or_skip!(HttpsGit);
    let remote = Remote::with_plans(&[&PlanFile::new("web")]);
    let url = serve_https(&server, &remote, "flow.git");
    let w = rollout_story(remote, &url, https_auth(&server));
    // Every push of rollgate's went through the server, as its Basic auth user.
    let log = reflog(&w.remote.bare);
    let rollgate_shas: Vec<String> = w
        .remote
        .rollgate_commits()
        .into_iter()
        .map(|c| c.sha)
        .collect();
    for sha in &rollgate_shas {
        assert!(
            log.contains(&format!("{sha} rollgate-bot push")),
            "{sha} was not pushed over https: {log:#?}"
        );
    }
    assert!(
        server
            .access_log()
            .contains("POST /flow.git/git-receive-pack HTTP/1.1\" 200 user=rollgate-bot"),
        "{}",
        server.access_log()
    );
}

#[test]
fn a_rollout_succeeds_and_one_is_rolled_back_over_ssh() {
    let server = start_or_skip!(SshGit);
    let remote = Remote::with_plans(&[&PlanFile::new("web")]);
    let url = server.url(&remote.bare);
    let w = rollout_story(remote, &url, ssh_auth(&server));
    // Every push of rollgate's went through sshd (the human pushes on the path), each as
    // a command of its own, over one shared connection (`remote::SharedSsh`).
    let pushes = w.remote.rollgate_commits().len();
    let log = server.log();
    let commands = log.matches("Starting session: command").count();
    let logins = log.matches("Accepted publickey for").count();
    assert!(
        commands > pushes,
        "{commands} ssh commands for {pushes} pushes and the fetches"
    );
    assert!(
        logins * 4 < commands,
        "{logins} ssh logins for {commands} commands: the connection was not shared"
    );
}

/// A daemon that is killed (and waited for) when the test ends, even on a panic.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /readyz` on `port`: the status code and the body.
fn readyz(port: u16) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((code, body))
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn revoked_credentials_hold_in_readyz_without_spinning_and_recover() {
    // Given a daemon reconciling over https, ready
    let server = start_or_skip!(HttpsGit);
    server.add_bare("ops.git", Some(&example_repo()));
    let state = tempfile::tempdir().expect("state dir");
    let port = support::free_port();
    let ca = server.ca_file.display().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollgate"));
    for var in GIT_CREDENTIAL_ENV {
        cmd.env_remove(var);
    }
    cmd.args([
        "run",
        "--journal-targets",
        "--interval",
        "1s",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--repo",
        &server.url("ops.git"),
        "--state-dir",
        state.path().to_str().expect("utf8"),
    ])
    .env("ROLLGATE_GIT_TOKEN", &server.token)
    .env("ROLLGATE_GIT_USERNAME", &server.username)
    .env("ROLLGATE_GIT_CA_FILE", &ca)
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(state.path().join("daemon.log")).expect("log file"));
    let mut daemon = Daemon(cmd.spawn().expect("rollgate runs"));
    wait_for("ready", Duration::from_secs(30), || {
        assert!(
            daemon.0.try_wait().expect("wait").is_none(),
            "the daemon exited: {}",
            std::fs::read_to_string(state.path().join("daemon.log")).unwrap_or_default()
        );
        readyz(port).is_some_and(|(c, _)| c == 200)
    });
    // When the server stops accepting the token (revoked)
    let htpasswd = server.dir().join("htpasswd");
    let good = std::fs::read(&htpasswd).expect("htpasswd");
    std::fs::write(&htpasswd, "rollgate-bot:$apr1$x$invalidinvalidinvalid00\n").expect("revoke");
    let refused_before = server
        .access_log()
        .matches("\" 401 user=rollgate-bot")
        .count();
    // Then /readyz says why, naming the remote and never the token
    let mut body = String::new();
    wait_for("not ready", Duration::from_secs(15), || {
        match readyz(port) {
            Some((503, b)) => {
                body = b;
                true
            }
            _ => false,
        }
    });
    assert!(body.contains("authentication failed"), "{body}");
    assert!(body.contains(&server.url("ops.git")), "{body}");
    assert!(!body.contains(&server.token), "{body}");
    // And over the next 6 s it backs off instead of fetching every second or spinning
    std::thread::sleep(Duration::from_secs(6));
    let refused = server
        .access_log()
        .matches("\" 401 user=rollgate-bot")
        .count()
        - refused_before;
    assert!(
        refused <= 10,
        "{refused} refused requests in ~6 s: not backing off"
    );
    // And when the token is accepted again, it is ready again by itself
    std::fs::write(&htpasswd, good).expect("restore");
    wait_for("ready again", Duration::from_secs(40), || {
        readyz(port).is_some_and(|(c, _)| c == 200)
    });
    // And the log said it once, not once per try
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    let log = std::fs::read_to_string(state.path().join("daemon.log")).expect("log");
    assert!(!log.contains(&server.token), "the token is in the log");
    let holds = log.matches("the remote refuses; holding").count();
    assert_eq!(holds, 1, "{log}");
    assert!(log.contains("pass succeeded again"), "{log}");
}

/// `rollgate_reconciles_total` from the daemon's `/metrics` on `port`.
fn reconciles(port: u16) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .filter(|l| l.starts_with("rollgate_reconciles_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[test]
fn regression_an_idle_daemon_is_not_woken_by_its_own_fetch_of_a_path_remote() {
    // Given a daemon on a bare repository on disk (watched for pushes) with nothing to do
    let seed = tempfile::tempdir().expect("seed");
    std::fs::write(
        seed.path().join("rollgate.yaml"),
        support::rollout::SETTINGS,
    )
    .expect("settings");
    let plan = PlanFile::new("web").steps(&["setWeight: 25", "setWeight: 100"]);
    std::fs::create_dir_all(seed.path().join("plans")).expect("plans");
    std::fs::write(seed.path().join(plan.path()), plan.yaml()).expect("plan");
    let remote = Remote::seeded_from(seed.path());
    let state = tempfile::tempdir().expect("state dir");
    let port = support::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollgate"));
    for var in GIT_CREDENTIAL_ENV {
        cmd.env_remove(var);
    }
    cmd.args([
        "run",
        "--journal-targets",
        "--interval",
        "30s",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--repo",
        remote.bare.to_str().expect("utf8"),
        "--state-dir",
        state.path().to_str().expect("utf8"),
    ])
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(state.path().join("daemon.log")).expect("log file"));
    let mut daemon = Daemon(cmd.spawn().expect("rollgate runs"));
    wait_for("ready", Duration::from_secs(30), || {
        assert!(
            daemon.0.try_wait().expect("wait").is_none(),
            "the daemon exited: {}",
            std::fs::read_to_string(state.path().join("daemon.log")).unwrap_or_default()
        );
        readyz(port).is_some_and(|(c, _)| c == 200)
    });
    // When its one rollout (a dry run) has succeeded and it idles for 6 s
    wait_for("the rollout to succeed", Duration::from_secs(30), || {
        support::git_ok(&remote.bare, &["cat-file", "-e", "main:status/web.yaml"])
            && git(&remote.bare, &["show", "main:status/web.yaml"]).contains("Succeeded")
    });
    std::thread::sleep(Duration::from_secs(1));
    let before = reconciles(port).expect("metrics");
    std::thread::sleep(Duration::from_secs(6));
    let idle = reconciles(port).expect("metrics") - before;
    // Then it made no pass at all (the interval is 30 s), not one per file event of its
    // own fetch (it ran ~80 a second)
    assert!(
        idle <= 1.0,
        "{idle} passes in 6 s of idleness with --interval 30s"
    );
    // And a human push still wakes it within a second (long before the interval)
    let before = reconciles(port).expect("metrics");
    remote.human_commit("notes.txt", |_| "hello\n".to_owned(), "A note");
    let woke = Instant::now();
    wait_for("a pass after the push", Duration::from_secs(3), || {
        reconciles(port).is_some_and(|n| n > before)
    });
    assert!(
        woke.elapsed() < Duration::from_secs(1),
        "{:?}",
        woke.elapsed()
    );
}
