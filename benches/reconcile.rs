//! Benchmark: how fast the reconcile loop reacts, and how fast it writes back.
//!
//! (a) a human pushes a plan change to a bare remote (git CLI) → the daemon (`rollgate run
//!     --journal-targets`, woken by its notify watcher) makes its first target call, seen as the
//!     line in its dry-run journal; timed from the end of the push. Goal: p50 ≤ 50 ms.
//! (b) one status commit pushed to the bare remote by `Writer`. Goal: p50 ≤ 20 ms.
//! (c) both again with 10,000 other plans (finished rollouts) in the repository; plus
//!     the cost of one idle `tick` of an in-process `Reconciler` over all of them.
//! (d) plain `git` doing the same transfers, side by side in the same run (the daemon
//!     stopped): fetching a human's one-plan change with the daemon's fetch options, and
//!     pushing a one-file status commit as the daemon pushes through `git` (a
//!     compare-and-swap, objects sent whole). This is the floor over https and ssh; to
//!     this path remote rollgate goes in-process (`source/path_remote.rs`), below it.
//! Run: `cargo bench --bench reconcile` (add `-- N` for another count of other plans, and
//! `-- --sharded` for the sharded status layout, `writeBack.statusLayout: sharded`).
//! Without `--bench` (under `cargo test`) it is a tiny smoke run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollgate::daemon::Reconciler;
use rollgate::model::settings::{LayoutSetting, StatusLayout, WriteBack};
use rollgate::model::status::{Phase, Status, Success};
use rollgate::source::git::GitSource;
use rollgate::targets::Target;
use rollgate::targets::dry_run::DryRun;
use rollgate::writeback::{CommitSpec, Edit, WriteOutcome, Writer};
use support::Remote;
use support::rollout::{PlanFile, layout_arg, set_artifact, settings_in};

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");

/// Steps every plan here takes (the built-in policy caps the first step at 25%).
const STEPS: &[&str] = &["setWeight: 10", "setWeight: 100"];

struct Config {
    rounds: usize,
    others: usize,
    smoke: bool,
    /// Where status files are kept (`--sharded`: in shard folders).
    layout: StatusLayout,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // test runners list targets; a benchmark has no tests to list
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let others = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if smoke { 20 } else { 10_000 });
    let cfg = Config {
        rounds: if smoke { 2 } else { 30 },
        others,
        smoke,
        layout: layout_arg(&args),
    };
    for n in [0, cfg.others] {
        run(&cfg, n);
    }
}

fn say(cfg: &Config, line: &str) {
    if !cfg.smoke {
        println!("{line}");
    }
}

fn run(cfg: &Config, others: usize) {
    let started = Instant::now();
    let remote = seeded(others, cfg.layout);
    say(
        cfg,
        &format!(
            "repository with {others} other plans seeded in {:.1} s (status layout: {})",
            started.elapsed().as_secs_f64(),
            format!("{:?}", cfg.layout).to_lowercase()
        ),
    );

    // (a) push → first target call, through the daemon binary and its watcher
    let state = remote.work_dir("state");
    let mut daemon = Daemon::start(&remote, &state);
    // Warm-up: the first start gates every plan and re-applies every finished rollout.
    let warm = Instant::now();
    daemon.settle(&remote, 1, Duration::from_secs(900));
    let mut version = 2;
    let first = daemon.react(&remote, version, Duration::from_secs(600));
    daemon.settle(&remote, version, Duration::from_secs(120));
    say(
        cfg,
        &format!(
            "  warm-up: started, rolled out v1 and v{version} in {:.2} s (first call after {:.1} ms)",
            warm.elapsed().as_secs_f64(),
            ms(first)
        ),
    );
    let mut react = Vec::new();
    for _ in 0..cfg.rounds {
        version += 1;
        react.push(daemon.react(&remote, version, Duration::from_secs(60)));
        daemon.settle(&remote, version, Duration::from_secs(120));
    }
    daemon.stop();
    report(
        cfg,
        &format!("(a) push → first target call, {others} other plans"),
        &mut react,
        50.0,
    );

    // (b) one status commit + push via Writer
    let src = GitSource::open(
        remote.bare.to_str().expect("utf8"),
        &remote.work_dir("writer"),
        "main",
    )
    .expect("open the remote");
    let wb = WriteBack {
        status_layout: LayoutSetting::Fixed(cfg.layout),
        ..WriteBack::default()
    };
    let mut writer = Writer::new(&src, &wb);
    // As the daemon's flush writes: on the head its pass fetched (no fetch of its own).
    writer.first_on_known_head = true;
    // The pass fetched that head before it decided: the clone's first fetch (the whole
    // repository) is not part of a status write.
    src.fetch().expect("fetch");
    let mut write = Vec::new();
    for i in 0..cfg.rounds.max(2) * 2 {
        let spec = status_spec(i);
        let t = Instant::now();
        let out = writer.write(|_| Ok(Some(spec.clone()))).expect("write");
        write.push(t.elapsed());
        assert!(matches!(out, WriteOutcome::Pushed { .. }), "{out:?}");
    }
    report(
        cfg,
        &format!("(b) status commit + push via Writer, {others} other plans"),
        &mut write,
        20.0,
    );

    // (c') one idle pass of an in-process Reconciler over every plan
    let src = GitSource::open(
        remote.bare.to_str().expect("utf8"),
        &remote.work_dir("idle"),
        "main",
    )
    .expect("open the remote");
    let mut targets: BTreeMap<String, Box<dyn Target>> = BTreeMap::new();
    targets.insert("local".to_owned(), Box::new(DryRun::new()));
    let mut rec = Reconciler::new(src, None, targets, BTreeMap::new());
    let t = Instant::now();
    let r = rec.tick(chrono::Utc::now()).expect("first tick");
    say(
        cfg,
        &format!(
            "  in-process first pass (snapshot, gate without policies, re-apply): {:.1} ms, {} actions",
            ms(t.elapsed()),
            r.actions
        ),
    );
    let mut idle = Vec::new();
    for _ in 0..cfg.rounds.max(2) {
        let t = Instant::now();
        let r = rec.tick(chrono::Utc::now()).expect("tick");
        idle.push(t.elapsed());
        assert_eq!(r.transitions, 0, "{r:?}");
    }
    report(
        cfg,
        &format!("(c') idle pass of an in-process Reconciler, {others} other plans"),
        &mut idle,
        f64::INFINITY,
    );

    // (c'') a pass after a new head (one status file changed), without and with policies
    for policies in [false, true] {
        let src = GitSource::open(
            remote.bare.to_str().expect("utf8"),
            &remote.work_dir(&format!("moved-{policies}")),
            "main",
        )
        .expect("open the remote");
        let mut targets: BTreeMap<String, Box<dyn Target>> = BTreeMap::new();
        targets.insert("local".to_owned(), Box::new(DryRun::new()));
        let engine: Option<Box<dyn rollgate::gate::PolicyEngine>> = policies.then(|| {
            Box::new(rollgate::gate::Rego::new(
                rollgate::policy::PolicySet::builtin(),
            )) as Box<dyn rollgate::gate::PolicyEngine>
        });
        let mut rec = Reconciler::new(src, engine, targets, BTreeMap::new());
        rec.tick(chrono::Utc::now()).expect("first tick");
        let mut moved = Vec::new();
        for i in 0..cfg.rounds.max(2) {
            let spec = status_spec(1_000 + i);
            writer.write(|_| Ok(Some(spec.clone()))).expect("write");
            let t = Instant::now();
            rec.tick(chrono::Utc::now()).expect("tick");
            moved.push(t.elapsed());
        }
        report(
            cfg,
            &format!("(c'') pass after a new head (policies: {policies}), {others} other plans"),
            &mut moved,
            f64::INFINITY,
        );
    }

    floors(cfg, &remote);
}

/// (d): plain `git` doing the transfers under (a) and (b), on the same repository.
fn floors(cfg: &Config, remote: &Remote) {
    let bare = remote.bare.to_str().expect("utf8");
    let fetcher = remote.work_dir("floor-fetch.git");
    let fetcher = fetcher.to_str().expect("utf8");
    support::git(
        &remote.human,
        &["clone", "--bare", "--quiet", "--no-local", bare, fetcher],
    );
    let status = cfg.layout.physical("status/floor.yaml");
    let plan = bench_plan().path();
    // The branch into the fetcher, with the options `Remote::fetch` uses.
    let fetch_all = || {
        support::git(
            &remote.human,
            &[
                "--git-dir",
                fetcher,
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-auto-maintenance",
                "--",
                bare,
                "+refs/heads/main:refs/remotes/origin/main",
            ],
        )
    };
    remote.pull();
    let mut fetch = Vec::new();
    let mut push = Vec::new();
    for i in 0..cfg.rounds.max(2) {
        // A human's one-plan change lands (untimed); the fetch of it is timed.
        let file = remote.human.join(&plan);
        let mut text = std::fs::read_to_string(&file).expect("read plan");
        text.push_str(&format!("# floor {i}\n"));
        std::fs::write(&file, text).expect("write plan");
        remote.human(&["commit", "-qam", &format!("floor: plan {i}")]);
        remote.human(&["push", "-q", "origin", "main"]);
        let t = Instant::now();
        fetch_all();
        fetch.push(t.elapsed());
        // A one-file status commit (made untimed), pushed as `Remote::push` does.
        let old = remote.human(&["rev-parse", "HEAD"]);
        let path = remote.human.join(&status);
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
        std::fs::write(&path, format!("plan: floor\nstep: {i}\n")).expect("write status");
        remote.human(&["add", &status]);
        remote.human(&["commit", "-qm", &format!("floor: status {i}")]);
        let t = Instant::now();
        support::git(
            &remote.human,
            &[
                "-c",
                "pack.window=0",
                "push",
                "--porcelain",
                "--quiet",
                "--no-verify",
                &format!("--force-with-lease=refs/heads/main:{old}"),
                "--",
                bare,
                "HEAD:refs/heads/main",
            ],
        );
        push.push(t.elapsed());
        // As the daemon, which wrote it, the fetcher has the status commit before the
        // next human change: the next timed fetch brings that change alone.
        fetch_all();
    }
    report(
        cfg,
        "(d) plain git, the transfer under (a): fetch of a one-plan change",
        &mut fetch,
        f64::INFINITY,
    );
    report(
        cfg,
        "(d) plain git, the transfer under (b): push of a one-file status commit",
        &mut push,
        f64::INFINITY,
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(cfg: &Config, what: &str, samples: &mut [Duration], goal_ms: f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        ms(samples[i.min(samples.len() - 1)])
    };
    let goal = if goal_ms.is_finite() {
        format!(" (goal p50 ≤ {goal_ms} ms)")
    } else {
        String::new()
    };
    say(
        cfg,
        &format!(
            "{what}: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms, n={}{goal}",
            at(0.5),
            at(0.9),
            at(1.0),
            samples.len()
        ),
    );
}

/// A remote with `rollgate.yaml`, the plan `bench` at v1, and `others` plans whose
/// rollouts already succeeded (each with its status file where `layout` keeps it).
fn seeded(others: usize, layout: StatusLayout) -> Remote {
    let mut files = vec![
        ("rollgate.yaml".to_owned(), settings_in(layout)),
        (bench_plan().path(), bench_plan().yaml()),
    ];
    let now = chrono::Utc::now();
    for i in 0..others {
        let plan = PlanFile::new(&format!("svc-{i:05}"))
            .steps(STEPS)
            .port(20_000 + u16::try_from(i % 40_000).expect("port"));
        let mut s = Status::pending(&plan.name, "v1", &"0".repeat(40));
        s.phase = Phase::Succeeded;
        s.stable = Some("v1".to_owned());
        s.step = STEPS.len();
        s.weight = 100;
        s.succeeded = vec![Success {
            artifact: "v1".to_owned(),
            at: now,
        }];
        s.last_transition_at = Some(now);
        s.message = Some("v1 is stable".to_owned());
        files.push((
            layout.physical(&format!("status/{}.yaml", plan.name)),
            s.to_yaml().expect("status yaml"),
        ));
        files.push((plan.path(), plan.yaml()));
    }
    Remote::with_files(&files)
}

fn bench_plan() -> PlanFile {
    PlanFile::new("bench").steps(STEPS).port(19_999)
}

fn status_spec(i: usize) -> CommitSpec {
    CommitSpec {
        subject: format!("writer: step {i}"),
        body: None,
        trailers: vec![
            ("Rollgate-Plan".into(), "writer".into()),
            ("Rollgate-Step".into(), format!("{i}/1000")),
        ],
        revert: None,
        edits: vec![Edit {
            path: "status/writer.yaml".into(),
            content: Some(format!("plan: writer\nstep: {i}\n").into_bytes()),
        }],
    }
}

/// `rollgate run --journal-targets` as a subprocess, and a reader of its journal.
struct Daemon {
    child: Child,
    journal: PathBuf,
    offset: u64,
    seen: String,
}

impl Daemon {
    fn start(remote: &Remote, state: &Path) -> Self {
        // `ROLLGATE_BENCH_DAEMON_LOG=FILE`: the daemon's debug log (timed git runs, each
        // pass's steps) appended to FILE, to see where a reaction's time goes.
        let log = std::env::var_os("ROLLGATE_BENCH_DAEMON_LOG").map(|f| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .expect("open the daemon log")
        });
        let child = Command::new(BIN)
            .args(["run", "--journal-targets", "--interval", "30s", "--repo"])
            .arg(&remote.bare)
            .arg("--state-dir")
            .arg(state)
            .env(
                "RUST_LOG",
                if log.is_some() {
                    "rollgate=debug"
                } else {
                    "error"
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::null, Stdio::from))
            .spawn()
            .expect("rollgate run starts");
        Self {
            child,
            journal: state.join("dry-run").join("local.journal"),
            offset: 0,
            seen: String::new(),
        }
    }

    /// New journal text since the last look.
    fn poll(&mut self) -> bool {
        let Ok(mut f) = std::fs::File::open(&self.journal) else {
            return false;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut buf = String::new();
        let Ok(n) = f.read_to_string(&mut buf) else {
            return false;
        };
        self.offset += n as u64;
        self.seen.push_str(&buf);
        n > 0
    }

    /// The human pushes `bench` at v`version`; the time from the end of the push to the
    /// daemon's first target call for it.
    fn react(&mut self, remote: &Remote, version: usize, limit: Duration) -> Duration {
        // Keep only the unfinished last line of what was read before.
        let keep = self.seen.rfind('\n').map_or(0, |i| i + 1);
        self.seen.drain(..keep);
        let want = format!("bench start v{version}\n");
        remote.pull();
        let path = bench_plan().path();
        let file = remote.human.join(&path);
        let text = std::fs::read_to_string(&file).expect("read plan");
        std::fs::write(&file, set_artifact(&format!("v{version}"))(text)).expect("write plan");
        remote.human(&["commit", "-qam", &format!("bench: v{version}")]);
        while !support::git_ok(&remote.human, &["push", "-q", "origin", "main"]) {
            remote.pull();
        }
        let pushed = Instant::now();
        if let Some(log) = std::env::var_os("ROLLGATE_BENCH_DAEMON_LOG") {
            use std::io::Write;
            let line = format!(
                "{} BENCH human push of v{version} ended\n",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .open(log)
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
        loop {
            if self.poll() && self.seen.contains(&want) {
                return pushed.elapsed();
            }
            assert!(
                pushed.elapsed() < limit,
                "no `{}` in the journal after {limit:?}",
                want.trim_end()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Wait until the rollout of v`version` succeeded (so the next push is not a race).
    fn settle(&mut self, remote: &Remote, version: usize, limit: Duration) {
        let want = format!("v{version}");
        let start = Instant::now();
        while !remote
            .status("bench")
            .is_some_and(|s| s.phase == Phase::Succeeded && s.candidate == want)
        {
            assert!(start.elapsed() < limit, "bench v{version} did not succeed");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Let the daemon go idle after its last commit.
        std::thread::sleep(Duration::from_millis(20));
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Daemon {
    /// Never leave the daemon running, even when the benchmark panics.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
