//! The loopback Git servers of `support::git_servers`, checked with the real `git` CLI
//! alone (no rollgate code): what works works, and what must fail fails the way Git
//! and OpenSSH report it. Run with `--nocapture` to see each refusal's stderr.
//!
//! Startup, measured on the 2-core dev machine (debug build, one test at a time, another
//! build running): `HttpsGit::start` 100–140 ms (the openssl runs for two CAs, the
//! server certificate and the htpasswd line ~70 ms; fcgiwrap, then nginx until both
//! ports answer ~30–50 ms). `SshGit::start` 220–240 ms: the keys ~190 ms, nearly all of
//! it the bcrypt KDF of the passphrase-protected key (ssh-keygen's default 16 rounds;
//! ssh pays it again on each use of that key), then sshd until its banner ~30 ms.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};

use support::git;
use support::git_servers::{HttpsGit, SshGit, start_or_skip};

/// The real `git` in `dir` with extra environment; never prompts.
fn git_with(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        // This machine exports GIT_SSL_CAINFO (the system bundle), which would
        // override `-c http.sslCAInfo`.
        .env_remove("GIT_SSL_CAINFO")
        .env_remove("GIT_SSL_NO_VERIFY")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS")
        .env("GIT_AUTHOR_NAME", "Human")
        .env("GIT_AUTHOR_EMAIL", "human@example.com")
        .env("GIT_COMMITTER_NAME", "Human")
        .env("GIT_COMMITTER_EMAIL", "human@example.com")
        .envs(env.iter().copied())
        .output()
        .expect("git runs");
    eprintln!(
        "$ git {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "git failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn failed_with(out: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "git succeeded but should not have");
    for e in expected {
        assert!(
            stderr.contains(e),
            "expected {e:?} in git's stderr:\n{stderr}"
        );
    }
}

fn seed() -> tempfile::TempDir {
    let seed = tempfile::tempdir().expect("seed folder");
    std::fs::write(seed.path().join("README.md"), "hello\n").expect("seed file");
    seed
}

/// Edits, commits and pushes `main` in the clone `work` with `env`.
fn commit_and_push(work: &Path, env: &[(&str, &str)]) -> String {
    std::fs::write(work.join("README.md"), "hello again\n").expect("edit");
    git(work, &["commit", "-q", "-am", "Edit over the network"]);
    succeeded(&git_with(work, env, &["push", "-q", "origin", "main"]));
    git(work, &["rev-parse", "HEAD"])
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn https_with_the_token_and_the_ca_clones_and_a_push_lands_in_the_reflog() {
    let server = start_or_skip!(HttpsGit);
    let seed = seed();
    let bare = server.add_bare("remote.git", Some(seed.path()));
    let tmp = tempfile::tempdir().expect("temp");
    let ca = format!("http.sslCAInfo={}", server.ca_file.display());

    let out = git_with(
        tmp.path(),
        &[],
        &[
            "-c",
            &ca,
            "clone",
            "-q",
            &server.url_with_token("remote.git"),
            "work",
        ],
    );
    succeeded(&out);
    let work = tmp.path().join("work");
    git(
        &work,
        &[
            "config",
            "http.sslCAInfo",
            &server.ca_file.display().to_string(),
        ],
    );
    let head = commit_and_push(&work, &[]);

    assert_eq!(git(&bare, &["rev-parse", "main"]), head);
    let reflog = git(&bare, &["log", "-g", "main", "--format=%H %gn %gs"]);
    assert!(
        reflog
            .lines()
            .next()
            .is_some_and(|l| l.starts_with(&format!("{head} rollgate-bot push"))),
        "the push is the newest reflog entry:\n{reflog}"
    );
    let log = server.access_log();
    assert!(
        log.contains(
            "POST /remote.git/git-receive-pack HTTP/1.1\" 200 user=rollgate-bot auth=basic"
        ),
        "{log}"
    );
    assert!(
        log.contains("\" 401 user=- auth=none"),
        "git's first request goes without credentials: {log}"
    );
}

#[test]
fn plain_http_serves_the_same_repositories_behind_the_same_auth() {
    let server = start_or_skip!(HttpsGit);
    let seed = seed();
    server.add_bare("remote.git", Some(seed.path()));
    let tmp = tempfile::tempdir().expect("temp");
    let url = server.http_url("remote.git").replacen(
        "http://",
        &format!("http://{}:{}@", server.username, server.token),
        1,
    );
    succeeded(&git_with(tmp.path(), &[], &["clone", "-q", &url, "work"]));
    let out = git_with(
        tmp.path(),
        &[],
        &["ls-remote", &server.http_url("remote.git")],
    );
    failed_with(&out, &["could not read Username"]);
}

#[test]
fn https_with_a_wrong_token_or_none_is_refused() {
    let server = start_or_skip!(HttpsGit);
    let seed = seed();
    server.add_bare("remote.git", Some(seed.path()));
    let tmp = tempfile::tempdir().expect("temp");
    let ca = format!("http.sslCAInfo={}", server.ca_file.display());
    let wrong = server.url("remote.git").replacen(
        "https://",
        &format!("https://{}:wrong-token@", server.username),
        1,
    );

    let out = git_with(tmp.path(), &[], &["-c", &ca, "ls-remote", &wrong]);
    failed_with(&out, &["Authentication failed for"]);
    let out = git_with(
        tmp.path(),
        &[],
        &["-c", &ca, "ls-remote", &server.url("remote.git")],
    );
    failed_with(&out, &["could not read Username"]);

    // A push with the wrong token, from a clone made with the right one.
    let token = server.url_with_token("remote.git");
    succeeded(&git_with(
        tmp.path(),
        &[],
        &["-c", &ca, "clone", "-q", &token, "work"],
    ));
    let work = tmp.path().join("work");
    std::fs::write(work.join("README.md"), "refused\n").expect("edit");
    git(&work, &["commit", "-q", "-am", "Refused"]);
    let out = git_with(&work, &[], &["-c", &ca, "push", &wrong, "HEAD:main"]);
    failed_with(&out, &["Authentication failed for"]);
    assert!(
        server
            .access_log()
            .contains("401 user=rollgate-bot auth=basic"),
        "{}",
        server.access_log()
    );
}

#[test]
fn https_with_another_ca_is_a_certificate_error() {
    let server = start_or_skip!(HttpsGit);
    let seed = seed();
    server.add_bare("remote.git", Some(seed.path()));
    let tmp = tempfile::tempdir().expect("temp");
    let other = format!("http.sslCAInfo={}", server.other_ca_file.display());
    let out = git_with(
        tmp.path(),
        &[],
        &[
            "-c",
            &other,
            "ls-remote",
            &server.url_with_token("remote.git"),
        ],
    );
    failed_with(&out, &["server certificate verification failed"]);
    // And with no CA given, the system's trust store does not know the test CA either.
    let out = git_with(
        tmp.path(),
        &[],
        &["ls-remote", &server.url_with_token("remote.git")],
    );
    failed_with(&out, &["server certificate verification failed"]);
}

#[test]
fn https_a_missing_branch_and_a_closed_port_fail_as_git_reports_them() {
    let server = start_or_skip!(HttpsGit);
    let seed = seed();
    server.add_bare("remote.git", Some(seed.path()));
    let tmp = tempfile::tempdir().expect("temp");
    let ca = format!("http.sslCAInfo={}", server.ca_file.display());
    let url = server.url_with_token("remote.git");
    git(tmp.path(), &["init", "-q"]);
    let out = git_with(
        tmp.path(),
        &[],
        &["-c", &ca, "fetch", &url, "refs/heads/nosuch"],
    );
    failed_with(&out, &["couldn't find remote ref refs/heads/nosuch"]);

    let closed = support::free_port();
    let url = format!("https://rollgate-bot:x@127.0.0.1:{closed}/remote.git");
    let out = git_with(tmp.path(), &[], &["-c", &ca, "ls-remote", &url]);
    failed_with(&out, &["Failed to connect to 127.0.0.1 port"]);
    let out = git_with(
        tmp.path(),
        &[],
        &["-c", &ca, "ls-remote", &server.url_with_token("nosuch.git")],
    );
    assert!(!out.status.success());
}

#[test]
fn ssh_with_the_known_host_key_clones_and_a_push_lands_in_the_reflog() {
    let server = start_or_skip!(SshGit);
    let seed = seed();
    let bare = server.add_bare("remote.git", Some(seed.path()));
    let tmp = tempfile::tempdir().expect("temp");
    let ssh = server.ssh_command(&server.client_key, &server.known_hosts);
    let env = [("GIT_SSH_COMMAND", ssh.as_str())];

    succeeded(&git_with(
        tmp.path(),
        &env,
        &["clone", "-q", &server.url("remote.git"), "work"],
    ));
    let head = commit_and_push(&tmp.path().join("work"), &env);

    assert_eq!(git(&bare, &["rev-parse", "main"]), head);
    let reflog = git(&bare, &["log", "-g", "main", "--format=%H %gs"]);
    assert!(
        reflog
            .lines()
            .next()
            .is_some_and(|l| l == format!("{head} push")),
        "the push is the newest reflog entry:\n{reflog}"
    );
    assert!(
        server.log().contains("Accepted publickey for"),
        "{}",
        server.log()
    );
    // The absolute-path form reaches the same repository.
    let out = git_with(tmp.path(), &env, &["ls-remote", &server.url(&bare)]);
    succeeded(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&head));
}

#[test]
fn ssh_with_a_changed_or_unknown_host_key_fails_verification() {
    let server = start_or_skip!(SshGit);
    let seed = seed();
    server.add_bare("remote.git", Some(seed.path()));
    let tmp = tempfile::tempdir().expect("temp");
    let url = server.url("remote.git");

    let changed = server.ssh_command(&server.client_key, &server.wrong_known_hosts);
    let out = git_with(
        tmp.path(),
        &[("GIT_SSH_COMMAND", &changed)],
        &["ls-remote", &url],
    );
    failed_with(
        &out,
        &[
            "REMOTE HOST IDENTIFICATION HAS CHANGED",
            &server.host_fingerprint,
            "Host key verification failed.",
        ],
    );

    let unknown = server.ssh_command(&server.client_key, &server.empty_known_hosts);
    let out = git_with(
        tmp.path(),
        &[("GIT_SSH_COMMAND", &unknown)],
        &["ls-remote", &url],
    );
    failed_with(
        &out,
        &[
            "No ED25519 host key is known for",
            "Host key verification failed.",
        ],
    );
    // LogLevel=VERBOSE adds nothing about the key; debug1 (`-v`) names the key seen.
    let verbose = format!("{unknown} -o LogLevel=VERBOSE");
    let out = git_with(
        tmp.path(),
        &[("GIT_SSH_COMMAND", &verbose)],
        &["ls-remote", &url],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&server.host_fingerprint), "{stderr}");
    let debug = format!("{unknown} -v");
    let out = git_with(
        tmp.path(),
        &[("GIT_SSH_COMMAND", &debug)],
        &["ls-remote", &url],
    );
    failed_with(
        &out,
        &[
            &format!(
                "debug1: Server host key: ssh-ed25519 {}",
                server.host_fingerprint
            ),
            "Host key verification failed.",
        ],
    );
    let verbose = format!("{changed} -o LogLevel=VERBOSE");
    let out = git_with(
        tmp.path(),
        &[("GIT_SSH_COMMAND", &verbose)],
        &["ls-remote", &url],
    );
    failed_with(&out, &["Host key verification failed."]);
}

#[test]
fn ssh_the_passphrase_key_is_authorized_and_an_unknown_key_is_not() {
    let server = start_or_skip!(SshGit);
    let seed = seed();
    server.add_bare("remote.git", Some(seed.path()));
    let tmp = tempfile::tempdir().expect("temp");
    let url = server.url("remote.git");

    // The passphrase file opens the key.
    let passphrase = std::fs::read_to_string(&server.passphrase_file).expect("passphrase");
    let out = Command::new("ssh-keygen")
        .args(["-y", "-P", &passphrase, "-f"])
        .arg(&server.passphrase_key)
        .output()
        .expect("ssh-keygen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ssh asks SSH_ASKPASS for the passphrase (BatchMode would forbid asking).
    let askpass = tmp.path().join("askpass");
    std::fs::write(
        &askpass,
        format!("#!/bin/sh\ncat '{}'\n", server.passphrase_file.display()),
    )
    .expect("askpass");
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod askpass");
    let ssh = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
        server.passphrase_key.display(),
        server.known_hosts.display()
    );
    let askpass = askpass.display().to_string();
    let env = [
        ("GIT_SSH_COMMAND", ssh.as_str()),
        ("SSH_ASKPASS", askpass.as_str()),
        ("SSH_ASKPASS_REQUIRE", "force"),
    ];
    succeeded(&git_with(tmp.path(), &env, &["ls-remote", &url]));

    // Without the passphrase, in batch mode, the key cannot be used.
    let batch = server.ssh_command(&server.passphrase_key, &server.known_hosts);
    let out = git_with(
        tmp.path(),
        &[("GIT_SSH_COMMAND", &batch)],
        &["ls-remote", &url],
    );
    failed_with(&out, &["Permission denied (publickey)."]);

    // A key sshd was never told about.
    let stranger = tmp.path().join("stranger");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success());
    let ssh = server.ssh_command(&stranger, &server.known_hosts);
    let out = git_with(
        tmp.path(),
        &[("GIT_SSH_COMMAND", &ssh)],
        &["ls-remote", &url],
    );
    failed_with(&out, &["Permission denied (publickey)."]);
}

#[test]
fn ssh_a_missing_branch_and_a_closed_port_fail_as_git_reports_them() {
    let server = start_or_skip!(SshGit);
    let seed = seed();
    server.add_bare("remote.git", Some(seed.path()));
    let tmp = tempfile::tempdir().expect("temp");
    let ssh = server.ssh_command(&server.client_key, &server.known_hosts);
    let env = [("GIT_SSH_COMMAND", ssh.as_str())];

    let url = server.url("remote.git");
    git(tmp.path(), &["init", "-q"]);
    let out = git_with(tmp.path(), &env, &["fetch", &url, "refs/heads/nosuch"]);
    failed_with(&out, &["couldn't find remote ref refs/heads/nosuch"]);

    let closed = support::free_port();
    let url = url.replace(&format!(":{}/", server.port), &format!(":{closed}/"));
    let out = git_with(tmp.path(), &env, &["ls-remote", &url]);
    failed_with(&out, &["Connection refused"]);

    let out = git_with(tmp.path(), &env, &["ls-remote", &server.url("nosuch.git")]);
    failed_with(&out, &["does not appear to be a git repository"]);
}

#[test]
fn dropping_the_servers_stops_every_process() {
    let https = start_or_skip!(HttpsGit);
    let ssh = start_or_skip!(SshGit);
    let pids = https
        .pids()
        .into_iter()
        .chain(ssh.pids())
        .collect::<Vec<_>>();
    assert_eq!(pids.len(), 3, "nginx, fcgiwrap, sshd");
    assert!(pids.iter().all(|p| !gone(*p)));
    let dirs = [https.dir().to_path_buf(), ssh.dir().to_path_buf()];
    drop(https);
    drop(ssh);
    assert!(pids.iter().all(|p| gone(*p)), "{pids:?} still running");
    assert!(dirs.iter().all(|d| !d.exists()), "temp folders removed");
}
