//! The push race on every transport: humans pushing in a tight loop with the real `git`,
//! rollgate writing status commits meanwhile. Every push rollgate makes must be a
//! compare-and-swap: the remote's reflog shows only fast-forwards and every human commit
//! stays reachable.
//!
//! The path remote is the regression test for the lost human commits of issue #12
//! (libgit2's local transport updated the remote ref with force). Human pushes per
//! transport: `ROLLGATE_RACE_HUMAN_PUSHES` (default 2,000 on the path remote, the
//! regression, 500 on file://, and 150 over https and ssh, where one ssh connection
//! costs ~0.4 s here, to keep CI's time). Before the fix the
//! path test failed: `1 of 2166 updates were not fast-forwards: 647b6239 → 69acb7f7`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rollgate::model::settings::WriteBack;
use rollgate::source::git::GitSource;
use rollgate::source::remote::{GitAuth, SharedSsh};
use rollgate::writeback::{CommitSpec, Edit, WriteOutcome, Writer};
use support::git_servers::{HttpsGit, SshGit, https_auth, ssh_auth, start_or_skip};
use support::{Remote, example_repo, git};

/// How a human reaches the remote: its URL and what `git` needs for it.
struct HumanAccess {
    url: String,
    env: Vec<(String, String)>,
    config: Vec<String>,
}

/// A human's clone that commits to its own file and pushes, rebasing when it loses.
struct Human {
    dir: PathBuf,
    access: Arc<HumanAccess>,
}

impl Human {
    fn git(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("git");
        // Git's auto gc runs in the foreground, as rollgate's own fetches run it: a gc
        // left running in the background removes empty object directories while the
        // human's next command writes objects into them, and that command fails with
        // "unable to create temporary file" (seen once in CI, after 1,030 human pushes).
        c.args([
            "-c",
            "gc.autoDetach=false",
            "-c",
            "maintenance.autoDetach=false",
        ]);
        for cfg in &self.access.config {
            c.args(["-c", cfg]);
        }
        c.args(args)
            .current_dir(&self.dir)
            .env("GIT_AUTHOR_NAME", "Human")
            .env("GIT_AUTHOR_EMAIL", "human@example.com")
            .env("GIT_COMMITTER_NAME", "Human")
            .env("GIT_COMMITTER_EMAIL", "human@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0");
        for (k, v) in &self.access.env {
            c.env(k, v);
        }
        c.output().expect("git runs")
    }

    fn must(&self, args: &[&str]) {
        let out = self.git(args);
        if !out.status.success() && std::env::var("RACE_DEBUG").is_ok() {
            let _ = std::fs::write("/tmp/race_failed_dir", self.dir.display().to_string());
            std::thread::sleep(std::time::Duration::from_secs(600));
        }
        assert!(
            out.status.success(),
            "human: git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn clone_from(access: Arc<HumanAccess>, dir: PathBuf) -> Self {
        let h = Self {
            dir: dir.clone(),
            access,
        };
        std::fs::create_dir_all(&dir).expect("mkdir");
        h.must(&["clone", "-q", &h.access.url.clone(), "."]);
        h
    }

    /// Commit `subject` (touching this human's own file) and push it; returns how many
    /// times the push lost the race first. A rebase conflict on this human's own file
    /// means the remote lost one of its earlier commits: an error.
    fn commit_and_push(&self, file: &str, subject: &str) -> Result<usize, String> {
        std::fs::write(self.dir.join(file), format!("{subject}\n")).expect("write");
        self.must(&["add", file]);
        self.must(&["commit", "-q", "-m", subject]);
        let mut last = String::new();
        for lost in 0..2000 {
            let out = self.git(&["push", "-q", "origin", "HEAD:main"]);
            if out.status.success() {
                return Ok(lost);
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            let pull = self.git(&["pull", "-q", "--rebase", "origin", "main"]);
            if !pull.status.success() {
                let _ = self.git(&["rebase", "--abort"]);
                let said = format!(
                    "{}{}",
                    String::from_utf8_lossy(&pull.stdout),
                    String::from_utf8_lossy(&pull.stderr)
                );
                if said.contains("CONFLICT") {
                    return Err(format!(
                        "{subject}: rebasing on the remote conflicts on {file}, which only this human writes: the remote lost an earlier commit of it ({})",
                        said.trim()
                    ));
                }
                return Err(format!(
                    "{subject}: `git pull --rebase` failed without a conflict: {}",
                    said.trim()
                ));
            }
        }
        Err(format!(
            "could not push {subject} in 2000 tries; last: {last}"
        ))
    }
}

fn status_spec(n: usize) -> CommitSpec {
    CommitSpec {
        subject: format!("race: status {n}"),
        body: None,
        trailers: vec![("Rollgate-Plan".into(), "race".into())],
        revert: None,
        edits: vec![Edit {
            path: "status/race.yaml".into(),
            content: Some(format!("plan: race\nn: {n}\n").into_bytes()),
        }],
    }
}

/// A pause of up to `max_ms` milliseconds, different each time.
fn jitter(max_ms: u64) -> std::time::Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::time::Duration::from_micros(u64::from(nanos) % (max_ms * 1000 + 1))
}

fn human_pushes(default: usize) -> usize {
    std::env::var("ROLLGATE_RACE_HUMAN_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Race two humans (`pushes` commits in all) against rollgate's writer on `rollgate_url`,
/// then check the bare repository `bare`: only fast-forwards in its reflog, every human
/// commit and every pushed status commit reachable from main.
fn race(bare: &Path, rollgate_url: &str, auth: GitAuth, access: HumanAccess, pushes: usize) {
    let tmp = tempfile::tempdir().expect("tmp");
    let access = Arc::new(access);
    let done = Arc::new(AtomicBool::new(false));
    let pushed_so_far = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let humans: Vec<_> = (0..2)
        .map(|i| {
            let human = Human::clone_from(access.clone(), tmp.path().join(format!("human{i}")));
            let done = done.clone();
            let counter = pushed_so_far.clone();
            std::thread::spawn(move || {
                let mut subjects = Vec::new();
                let mut lost = 0;
                let mut error = None;
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    if n >= pushes {
                        break;
                    }
                    let subject = format!("human {i}: note {n}");
                    match human.commit_and_push(&format!("notes-{i}.txt"), &subject) {
                        Ok(l) => lost += l,
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                    subjects.push(subject);
                    std::thread::sleep(jitter(40));
                }
                done.store(true, Ordering::Relaxed);
                (subjects, lost, error)
            })
        })
        .collect();
    // rollgate writes status commits for as long as the humans push.
    let src = GitSource::open_with(rollgate_url, &tmp.path().join("rollgate"), "main", auth)
        .expect("open");
    let settings = WriteBack::default();
    let mut writer = Writer::new(&src, &settings);
    // Two humans pushing flat out win most races; the daemon would retry on its next
    // pass, the test keeps trying.
    writer.max_attempts = 100_000;
    let mut written = Vec::new();
    let mut rollgate_lost = 0;
    let mut n = 0;
    while !done.load(Ordering::Relaxed) {
        n += 1;
        let began = std::time::Instant::now();
        match writer.write(|_| Ok(Some(status_spec(n)))).expect("write") {
            WriteOutcome::Pushed { commit, attempts } => {
                rollgate_lost += attempts - 1;
                written.push(commit);
            }
            WriteOutcome::NoChange => panic!("status {n} was not written"),
        }
        // A rollout writes a few status commits a second, not a flood: pace it so the
        // humans are not starved, yet race them on every write. (Since rollgate retries a
        // lost race after at most 40 ms, back-to-back writes made the humans lose most
        // races and the path test take 11 minutes.) Paced from the start of each write,
        // not its end, at 2-4 a second: a human who lost runs `pull --rebase` and `push`
        // again, 160-200 ms of `git` here, and a branch that moves every 150 ms beats
        // that every time. `git push` took 30-60 ms of rollgate's cycle and hid this; the
        // in-process push to a path remote takes 2 ms, and at a write every 100-200 ms
        // the two humans made 0.7 pushes a second instead of 4.4 (the path test would
        // have taken 48 minutes).
        let next = std::time::Duration::from_millis(250) + jitter(250);
        std::thread::sleep(next.saturating_sub(began.elapsed()));
    }
    let mut human_subjects = Vec::new();
    let mut human_lost = 0;
    let mut human_errors = Vec::new();
    for h in humans {
        let (s, l, e) = h.join().expect("human thread");
        human_subjects.extend(s);
        human_lost += l;
        human_errors.extend(e);
    }
    let elapsed = started.elapsed();
    // Then: the remote's reflog shows only fast-forwards.
    let repo = git2::Repository::open_bare(bare).expect("bare");
    let reflog = repo.reflog("refs/heads/main").expect("reflog");
    let mut updates = 0;
    let mut forced = Vec::new();
    for e in reflog.iter() {
        let (old, new) = (e.id_old(), e.id_new());
        if old.is_zero() {
            continue;
        }
        updates += 1;
        if old != new && !repo.graph_descendant_of(new, old).expect("graph") {
            forced.push(format!(
                "{} → {} ({})",
                &old.to_string()[..8],
                &new.to_string()[..8],
                e.message().ok().flatten().unwrap_or("")
            ));
        }
    }
    // And every human commit and every pushed status commit is on main.
    let subjects = git(bare, &["log", "--format=%s", "main"]);
    let on_main: std::collections::HashSet<&str> = subjects.lines().collect();
    let lost_humans: Vec<&String> = human_subjects
        .iter()
        .filter(|s| !on_main.contains(s.as_str()))
        .collect();
    let head = repo.refname_to_id("refs/heads/main").expect("main");
    let lost_status = written
        .iter()
        .filter(|c| **c != head && !repo.graph_descendant_of(head, **c).unwrap_or(false))
        .count();
    eprintln!(
        "{rollgate_url}: {} human pushes ({human_lost} lost races), {} status commits ({rollgate_lost} lost races), {updates} ref updates in {:.1}s",
        human_subjects.len(),
        written.len(),
        elapsed.as_secs_f64()
    );
    assert!(
        forced.is_empty(),
        "{} of {updates} updates were not fast-forwards: {forced:?}",
        forced.len()
    );
    assert!(
        lost_humans.is_empty(),
        "{} human commits were dropped: {lost_humans:?}",
        lost_humans.len()
    );
    assert_eq!(
        lost_status, 0,
        "status commits reported pushed are not on main"
    );
    assert!(human_errors.is_empty(), "{human_errors:?}");
    assert_eq!(human_subjects.len(), pushes);
    assert!(!written.is_empty(), "rollgate wrote nothing");
}

fn local_access(url: &str) -> HumanAccess {
    HumanAccess {
        url: url.to_owned(),
        env: Vec::new(),
        config: Vec::new(),
    }
}

#[test]
fn regression_a_status_push_to_a_path_remote_never_overwrites_a_human_push() {
    let remote = Remote::seeded_from(&example_repo());
    let url = remote.bare.to_str().expect("utf8").to_owned();
    race(
        &remote.bare,
        &url,
        GitAuth::default(),
        local_access(&url),
        human_pushes(2000),
    );
}

#[test]
fn a_status_push_to_a_file_url_never_overwrites_a_human_push() {
    let remote = Remote::seeded_from(&example_repo());
    let url = format!("file://{}", remote.bare.display());
    race(
        &remote.bare,
        &url,
        GitAuth::default(),
        local_access(&url),
        human_pushes(500),
    );
}

#[test]
fn a_status_push_over_https_never_overwrites_a_human_push() {
    let server = start_or_skip!(HttpsGit);
    let bare = server.add_bare("race.git", Some(&example_repo()));
    let ca = server.ca_file.display().to_string();
    let auth = https_auth(&server);
    // The humans: the token in the URL, the test CA (this machine's GIT_SSL_CAINFO
    // would override `http.sslCAInfo`, so it names the test CA too).
    let humans = HumanAccess {
        url: server.url_with_token("race.git"),
        env: vec![("GIT_SSL_CAINFO".to_owned(), ca.clone())],
        config: vec![format!("http.sslCAInfo={ca}")],
    };
    race(
        &bare,
        &server.url("race.git"),
        auth,
        humans,
        human_pushes(150),
    );
}

#[test]
fn a_status_push_over_ssh_never_overwrites_a_human_push() {
    let server = start_or_skip!(SshGit);
    let bare = server.add_bare("race.git", Some(&example_repo()));
    let auth = ssh_auth(&server);
    // The humans share one ssh connection too, the same way as rollgate (`SharedSsh`), so
    // both sides push at the same pace: with a key exchange and a login per push (0.3 s
    // here) the humans lost nearly every race to rollgate's shared connection.
    let humans_ssh = SharedSsh::new().expect("a folder for the humans' ssh socket");
    let humans = HumanAccess {
        url: server.url("race.git"),
        env: vec![(
            "GIT_SSH_COMMAND".to_owned(),
            format!(
                "{} {}",
                server.ssh_command(&server.client_key, &server.known_hosts),
                humans_ssh.options().join(" ")
            ),
        )],
        config: Vec::new(),
    };
    race(
        &bare,
        &server.url("race.git"),
        auth,
        humans,
        human_pushes(150),
    );
}
