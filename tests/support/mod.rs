//! Test fixtures shared by the integration tests: real repositories, bare remotes,
//! and the real `git` CLI playing the human; an in-memory Kubernetes API with its
//! stand-in controllers (`cluster`). Every test binary that says `mod support;`
//! compiles all of it, hence the `allow(dead_code)` below.
#![allow(dead_code)]

pub mod cluster;
pub mod git_servers;
pub mod github;
pub mod local;
pub mod rollout;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run the real `git` in `dir`; panics with its output when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = as_human(&mut Command::new("git"), dir)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Like `git`, but returns whether it succeeded instead of panicking.
pub fn git_ok(dir: &Path, args: &[&str]) -> bool {
    as_human(&mut Command::new("git"), dir)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `cmd` (a `git`, or a wrapper that runs one) set up to run in `dir` as the human: their
/// name on commits, no system-wide Git configuration.
pub fn as_human<'c>(cmd: &'c mut Command, dir: &Path) -> &'c mut Command {
    cmd.current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Human")
        .env("GIT_AUTHOR_EMAIL", "human@example.com")
        .env("GIT_COMMITTER_NAME", "Human")
        .env("GIT_COMMITTER_EMAIL", "human@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
}

/// A bare remote holding a copy of `files` (from a folder) on `main`, and a human's clone.
pub struct Remote {
    pub dir: tempfile::TempDir,
    pub bare: PathBuf,
    pub human: PathBuf,
}

impl Remote {
    /// Given a folder to seed the first commit from (e.g. `example-repo`).
    pub fn seeded_from(folder: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let bare = dir.path().join("remote.git");
        let human = dir.path().join("human");
        git(
            dir.path(),
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                bare.to_str().expect("utf8"),
            ],
        );
        git(&bare, &["config", "core.logAllRefUpdates", "always"]);
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                bare.to_str().expect("utf8"),
                human.to_str().expect("utf8"),
            ],
        );
        // git's automatic gc runs in the background by default, and its prune removes
        // empty object folders while the next commit writes into one ("unable to create
        // temporary file", round 22 of a 100-round mass benchmark): in the foreground.
        git(&human, &["config", "gc.autoDetach", "false"]);
        git(&human, &["checkout", "-q", "-B", "main"]);
        copy_dir(folder, &human);
        git(&human, &["add", "-A"]);
        git(
            &human,
            &["commit", "-q", "-m", "Seed the GitOps repository"],
        );
        git(&human, &["push", "-q", "origin", "main"]);
        Self { dir, bare, human }
    }

    pub fn work_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The human pulls, edits a file with `edit`, commits and pushes.
    pub fn human_commit(
        &self,
        path: &str,
        edit: impl FnOnce(String) -> String,
        message: &str,
    ) -> String {
        git(&self.human, &["pull", "-q", "--rebase", "origin", "main"]);
        let p = self.human.join(path);
        let before = std::fs::read_to_string(&p).unwrap_or_default();
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, edit(before)).expect("write");
        git(&self.human, &["add", "-A"]);
        git(&self.human, &["commit", "-q", "-m", message]);
        git(&self.human, &["push", "-q", "origin", "main"]);
        git(&self.human, &["rev-parse", "HEAD"])
    }

    /// The human adds (`add`) or removes the files `plans/filler-<i>.yaml` of `range` in
    /// one commit: files that are not plans (the gate refuses them), which count as plan
    /// files (`writeBack.statusLayout: auto` goes by that count).
    pub fn fillers(&self, range: std::ops::Range<usize>, add: bool) {
        git(&self.human, &["pull", "-q", "--rebase", "origin", "main"]);
        std::fs::create_dir_all(self.human.join("plans")).expect("plans/");
        for i in range {
            let path = self.human.join(format!("plans/filler-{i:05}.yaml"));
            if add {
                std::fs::write(&path, format!("filler: {i}\n")).expect("write");
            } else {
                std::fs::remove_file(&path).expect("remove");
            }
        }
        git(&self.human, &["add", "-A"]);
        git(&self.human, &["commit", "-q", "-m", "fillers"]);
        git(&self.human, &["push", "-q", "origin", "main"]);
    }

    /// `git log` of the remote's main with a format.
    pub fn log(&self, format: &str) -> String {
        git(&self.bare, &["log", "main", &format!("--format={format}")])
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn example_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("example-repo")
}

/// Stops, when dropped (a panic included), every data plane under a state folder (a
/// `rollgate run --state-dir` or a data plane's own folder) and all the workloads it
/// runs. `rollgate run` leaves its data plane serving on purpose when the daemon dies or
/// stops: a test that starts a daemon with a `local` target holds one of these,
/// declared *before* the daemon's own guard (drops run in reverse order, so the daemon
/// goes first and cannot start a new data plane behind this one).
pub struct DataPlanes(pub PathBuf);

impl Drop for DataPlanes {
    fn drop(&mut self) {
        for dir in rollgate::dataplane::planes_under(&self.0) {
            if let Err(e) = rollgate::dataplane::stop(&dir, std::time::Duration::from_secs(30)) {
                eprintln!("could not stop the data plane of {}: {e:#}", dir.display());
            }
        }
    }
}
