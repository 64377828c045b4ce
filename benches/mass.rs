//! Benchmark: 1,000 live rollouts on instant targets (#21).
//!
//! Through the daemon binary (`rollgate run --journal-targets`, a bare remote on a path):
//! (a) 1,000 plans changed in one commit → every plan at its first step (weight 10
//!     committed), and → every plan at its untimed pause. Goal: first step ≤ 5 s.
//! (b) the daemon's peak RSS (VmHWM) after (a). Goal: ≤ 100 MB.
//! (c) CPU of the idle daemon with the 1,000 rollouts paused, over 20 s (utime + stime
//!     from /proc, so other load hardly changes it). Was 90% of a core.
//! (d) RSS after 1,000 and after 10,000 finished rollouts (ten mass changes of the same
//!     1,000 plans, each run to Succeeded), each sampled once the daemon rests (no `git`
//!     child, no CPU for 300 ms). Goal: flat. The statuses are seeded with a
//!     full history of stable artifacts (`MAX_SUCCEEDED`), the size every status file
//!     reaches after ten rollouts: seeded with one, each round grew every status file
//!     (and the daemon's copies of it: snapshot, gate views, policy input) until the
//!     tenth, which is Git's data reaching its bound, not the daemon's memory growing.
//!     Also printed: the anonymous part of each round's RSS, and the largest mappings
//!     (`/proc/PID/smaps`) after the first and the last round.
//! In process (`Reconciler::tick` with a `DryRun` target):
//! (e) a pass with every rollout due (1,000 transitions). Goal: ≤ 1 s.
//! (f) while 10 humans push to the same branch in a loop, the time from each
//!     transition's decision to its status commit pushed, lost races included (the
//!     daemon's `rollgate_status_push_delay_seconds` histogram, its quantiles estimated
//!     as Prometheus' `histogram_quantile` does). Goal: p99 ≤ 2 s. Stops at a time
//!     budget. Also reported: the pushes lost (`writeback_retries`, per plan), and the
//!     yardstick: each human push's time from its commit to its push landing (the same
//!     race, run by `git pull --rebase` and `git push`). Run twice: with the humans'
//!     `git` on the same cores as rollgate, then (two cores or more, `taskset`) with the
//!     humans on a core of their own and rollgate on the rest. The two bound the race
//!     from both sides; neither is the deployed case (ten people's machines and a Git
//!     server), which two cores cannot model. Shared, ten `git` loops starve rollgate of
//!     CPU (its fetch of one small commit took up to 207 ms against 14 ms quiet).
//!     Apart, rollgate has its core, and the ten humans share one for their fetches of
//!     rollgate's commits and the remote's side of their pushes: they push a few times a
//!     second, but in the runs so far never inside rollgate's window.
//! (g) (f) with the branch moved at set rates (`--rates 1,3,10`, pushes a second by the
//!     ten humans together, exponential gaps), each human commit made in the remote and
//!     the branch moved by compare-and-swap: next to no CPU, so the rate is the only
//!     load, as when the humans and the Git server have machines of their own.
//! Run: `cargo bench --bench mass` (add `-- N` for another number of plans, `--only ad`
//! for some of the parts: `a` is (a)–(c), `d` is (d), `e` is (e), `f` is (e) then (f),
//! `g` is (e) then (g);
//! `--rounds R` for (d)'s mass changes, 10 by default, to see where its memory settles;
//! `--sharded` for status files in shard folders, `writeBack.statusLayout: sharded`).
//! Without `--bench` (under `cargo test`) it is a tiny smoke run (20 plans).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rollgate::daemon::Reconciler;
use rollgate::model::settings::StatusLayout;
use rollgate::model::status::{MAX_SUCCEEDED, Phase, Status, Success};
use rollgate::source::git::GitSource;
use rollgate::targets::Target;
use rollgate::targets::dry_run::DryRun;
use support::Remote;
use support::rollout::{PlanFile, layout_arg, set_artifact, settings_in};

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");

/// A canary that stops at an untimed pause after its first step.
const PAUSING: &[&str] = &["setWeight: 10", "pause: {}", "setWeight: 100"];
/// A canary that runs to the end by itself.
const RUNNING: &[&str] = &["setWeight: 10", "setWeight: 50", "setWeight: 100"];

/// Where the seeded repositories keep status files (`--sharded`: in shard folders).
static LAYOUT: OnceLock<StatusLayout> = OnceLock::new();

fn layout() -> StatusLayout {
    LAYOUT.get().copied().unwrap_or(StatusLayout::Flat)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    // The number of plans: the first number that is not an option's value.
    let n: usize = args
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, _)| !matches!(args[i - 1].as_str(), "--rounds" | "--only" | "--rates"))
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(if smoke { 20 } else { 1_000 });
    let say = |line: String| {
        if !smoke {
            println!("{line}");
        }
    };
    // The value after the option `name`, if given.
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    LAYOUT.set(layout_arg(&args)).expect("set once");
    say(format!(
        "status layout: {}",
        format!("{:?}", layout()).to_lowercase()
    ));
    let rounds = option("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(if smoke { 2 } else { 10 });
    // `--only LETTERS`: the parts to run (all by default).
    let only = option("--only").cloned();
    let part = |p: char| only.as_ref().is_none_or(|o| o.contains(p));
    // `ROLLGATE_BENCH_LOG=FILE`: the in-process daemon's log ((e), (f)) at `RUST_LOG`'s
    // level, e.g. `rollgate=debug`, to see where a pass's time goes.
    if let Some(file) = std::env::var_os("ROLLGATE_BENCH_LOG") {
        let out = std::fs::File::create(file).expect("the log file");
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::sync::Mutex::new(out))
            .with_ansi(false)
            .init();
    }
    if part('a') {
        mass_change(n, smoke, &say);
    }
    if part('d') {
        finished_rollouts(n, rounds, &say);
    }
    if part('e') || part('f') || part('g') {
        in_process(n, rounds, part('f').then_some(Humans::Shared), &say);
    }
    if part('f') {
        match Humans::apart() {
            Ok(apart) => in_process(n, rounds, Some(apart), &say),
            Err(why) => say(format!("SKIPPED (f) with the humans apart: {why}")),
        }
    }
    if part('g') {
        // `--rates 1,3,10`: the humans' pushes per second, all ten together.
        let rates: Vec<f64> = option("--rates")
            .map(|r| r.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_else(|| vec![1.0, 3.0, 10.0]);
        for rate in rates {
            in_process(n, rounds, Some(Humans::Rate(rate)), &say);
        }
    }
}

/// Where the ten humans of (f) run their `git`.
#[derive(Debug, Clone)]
enum Humans {
    /// On every core, beside rollgate: their commits, rebases and pushes (and the
    /// remote's side of them) take CPU from rollgate's own passes and pushes.
    Shared,
    /// On a core of their own (`taskset`), rollgate on the others: rollgate keeps its
    /// CPU, as when people push from their own machines, but ten people share one core.
    Apart {
        rollgate: String,
        humans: String,
        /// Every CPU the process had, put back after the run.
        all: String,
    },
    /// (g): the ten humans' pushes land at this many a second in all, at random
    /// (exponential) intervals. Each is a commit written straight into the remote and
    /// the branch moved there by compare-and-swap from the head it was made on (what a
    /// push does once its pack is in), retried on a lost race. It costs a
    /// millisecond or so of CPU, so the branch moves at the rate chosen whatever the
    /// load, and the race is rollgate's window against that rate alone.
    Rate(f64),
}

impl Humans {
    /// The split of the CPUs this process may use, when there are two or more and
    /// `taskset`: the last for the humans, the others for rollgate.
    fn apart() -> Result<Humans, String> {
        let allowed = allowed_cpus().ok_or("no Cpus_allowed_list in /proc/self/status")?;
        let Some((humans, rest)) = allowed.split_last().filter(|(_, rest)| !rest.is_empty()) else {
            return Err(format!("CPUs {allowed:?}: none to spare for the humans"));
        };
        let found = Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err("`taskset` (util-linux) is not installed".to_owned());
        }
        Ok(Humans::Apart {
            rollgate: cpu_list(rest),
            humans: humans.to_string(),
            all: cpu_list(&allowed),
        })
    }

    fn label(&self) -> String {
        match self {
            Humans::Shared => "the humans on the same cores".to_owned(),
            Humans::Rate(rate) => format!(
                "the branch moved by the humans {rate} times a second (commits made in the remote)"
            ),
            Humans::Apart {
                rollgate, humans, ..
            } => {
                format!("the humans apart: rollgate on CPU {rollgate}, the humans on CPU {humans}")
            }
        }
    }

    /// A human's `git` with `args` in `dir`, on the humans' cores; whether it succeeded.
    fn git(&self, dir: &Path, args: &[&str]) -> bool {
        let mut cmd = match self {
            Humans::Shared | Humans::Rate(_) => Command::new("git"),
            Humans::Apart { humans, .. } => {
                let mut c = Command::new("taskset");
                c.args(["-c", humans, "git"]);
                c
            }
        };
        support::as_human(&mut cmd, dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Human `h`'s `i`th commit in the clone at `dir` (for `Rate`, nothing: `push`
    /// makes it in the remote, on the head it lands on).
    fn commit(&self, h: usize, i: usize, dir: &Path) {
        if let Humans::Rate(_) = self {
            return;
        }
        std::fs::write(dir.join(format!("notes-{h}.txt")), format!("{i}\n")).expect("write");
        let message = format!("human {h}: note {i}");
        assert!(
            self.git(dir, &["add", "-A"]) && self.git(dir, &["commit", "-qm", &message]),
            "human {h} cannot commit"
        );
    }

    /// Human `h`'s `i`th commit, pushed to the remote's main: with `git` from the clone
    /// at `dir` (`pull --rebase` and again on a lost race), or for `Rate` made in the
    /// remote `bare`. False when `stop` came first.
    fn push(&self, h: usize, i: usize, dir: &Path, bare: &Path, stop: &AtomicBool) -> bool {
        if let Humans::Rate(_) = self {
            return moved(bare, h, i, stop);
        }
        while !stop.load(Ordering::Relaxed) {
            if self.git(dir, &["push", "-q", "origin", "HEAD:main"]) {
                return true;
            }
            self.git(dir, &["pull", "-q", "--rebase", "origin", "main"]);
        }
        false
    }

    /// How long a human waits before the next commit; `draw` is uniform in (0, 1].
    fn pause(&self, draw: f64) -> Duration {
        match self {
            // Ten humans at `rate` in all: each at `rate / 10`, exponential gaps.
            Humans::Rate(rate) => Duration::from_secs_f64(-draw.ln() * 10.0 / rate.max(1e-3)),
            _ => Duration::from_millis(50),
        }
    }

    /// Keep this process (every thread it has now, and so the threads and processes
    /// they start) on rollgate's CPUs until the guard drops.
    fn pin_rollgate(&self) -> Option<Pinned> {
        let Humans::Apart { rollgate, all, .. } = self else {
            return None;
        };
        set_affinity(rollgate).then(|| Pinned(all.clone()))
    }
}

/// Human `h`'s `i`th commit made in the remote `bare` on its main's head, and main
/// moved to it only if still at that head (`reference_matching`: the lock file and
/// compare that `receive-pack` uses), again from the new head until it lands.
fn moved(bare: &Path, h: usize, i: usize, stop: &AtomicBool) -> bool {
    let repo = git2::Repository::open_bare(bare).expect("open the remote");
    let who = git2::Signature::now(&format!("human {h}"), "human@example.com").expect("signature");
    let message = format!("human {h}: note {i}");
    let blob = repo.blob(format!("{i}\n").as_bytes()).expect("blob");
    while !stop.load(Ordering::Relaxed) {
        let head = repo.refname_to_id("refs/heads/main").expect("main");
        let parent = repo.find_commit(head).expect("head commit");
        let mut edit = git2::build::TreeUpdateBuilder::new();
        edit.upsert(format!("notes-{h}.txt"), blob, git2::FileMode::Blob);
        let tree = edit
            .create_updated(&repo, &parent.tree().expect("tree"))
            .expect("tree written");
        let tree = repo.find_tree(tree).expect("tree");
        let commit = repo
            .commit(None, &who, &who, &message, &tree, &[&parent])
            .expect("commit");
        if repo
            .reference_matching("refs/heads/main", commit, true, head, &message)
            .is_ok()
        {
            return true;
        }
    }
    false
}

/// A small xorshift generator for the humans' intervals: uniform in (0, 1].
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// Undoes `Humans::pin_rollgate`: the CPUs allowed before.
struct Pinned(String);

impl Drop for Pinned {
    fn drop(&mut self) {
        set_affinity(&self.0);
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list`, e.g. `0-3,6`).
fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// `cpus` as `taskset` takes them: `0,1,2`.
fn cpu_list(cpus: &[usize]) -> String {
    let cpus: Vec<String> = cpus.iter().map(ToString::to_string).collect();
    cpus.join(",")
}

/// Every thread of this process on the CPUs `list` (`taskset -a -p`).
fn set_affinity(list: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", list, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// (a)–(c): the daemon, a mass change to plans that pause after their first step.
fn mass_change(n: usize, smoke: bool, say: &dyn Fn(String)) {
    let remote = seeded(n, PAUSING);
    let mut d = Daemon::start(&remote, &remote.work_dir("state-a"));
    d.wait_ready(&remote, n);
    let started = Instant::now();
    change_all(&remote, n, "v2");
    let pushed = started.elapsed();
    let pushed_at = Instant::now();
    let first = wait_all(&remote, n, Duration::from_secs(600), |s| {
        s.candidate == "v2" && s.step >= 1
    });
    let paused = wait_all(&remote, n, Duration::from_secs(600), |s| {
        s.candidate == "v2" && s.phase == Phase::Paused
    });
    let commits = remote.commits().len();
    say(format!(
        "(a) {n} plans changed in one commit: all at their first step {:.2} s after the push, all paused after {:.2} s ({commits} commits on main in all; the push took {:.2} s) (goal ≤ 5 s)",
        first.duration_since(pushed_at).as_secs_f64(),
        paused.duration_since(pushed_at).as_secs_f64(),
        pushed.as_secs_f64()
    ));
    say(format!(
        "(b) daemon peak RSS: {:.1} MiB (goal ≤ 100 MB)",
        d.kib("VmHWM") as f64 / 1024.0
    ));
    std::thread::sleep(Duration::from_secs(if smoke { 1 } else { 3 }));
    let window = Duration::from_secs(if smoke { 1 } else { 20 });
    let cpu = d.cpu_over(window);
    say(format!(
        "(c) idle daemon, {n} rollouts paused: {:.3} s CPU in {} s ({:.1}% of a core)",
        cpu.as_secs_f64(),
        window.as_secs(),
        cpu.as_secs_f64() * 100.0 / window.as_secs_f64()
    ));
    d.stop();
}

/// (d): the same daemon binary, rollouts run to the end, `rounds` times over.
fn finished_rollouts(n: usize, rounds: usize, say: &dyn Fn(String)) {
    let remote = seeded(n, RUNNING);
    let mut d = Daemon::start(&remote, &remote.work_dir("state-d"));
    d.wait_ready(&remote, n);
    let mut rss = Vec::new();
    let mut anon = Vec::new();
    for round in 0..rounds {
        let v = format!("v{}", round + 2);
        change_all(&remote, n, &v);
        wait_all(&remote, n, Duration::from_secs(900), |s| {
            s.candidate == v && s.phase == Phase::Succeeded
        });
        // Sampled at rest: a `git` fetch that runs git's maintenance (one in 16) keeps
        // the daemon from its rest, and from handing back the burst's memory, for a while.
        d.wait_rest(Duration::from_secs(30));
        rss.push(d.kib("VmRSS"));
        anon.push(d.kib("RssAnon"));
        if round == 0 || round + 1 == rounds {
            say(format!(
                "(d) after round {}, resident KiB by mapping: {}",
                round + 1,
                d.rss_by_mapping()
            ));
        }
    }
    say(format!(
        "(d) daemon RSS after {} finished rollouts: {:.1} MiB; after {}: {:.1} MiB (peak {:.1} MiB); per round: {:?} KiB; of which anonymous (heap, not mapped files): {:?} KiB",
        n,
        rss[0] as f64 / 1024.0,
        n * rounds,
        rss[rounds - 1] as f64 / 1024.0,
        d.kib("VmHWM") as f64 / 1024.0,
        rss,
        anon
    ));
    d.stop();
}

/// (e), (f): in process, every rollout due, then with 10 humans pushing.
fn in_process(n: usize, rounds: usize, humans: Option<Humans>, say: &dyn Fn(String)) {
    let remote = seeded(n, RUNNING);
    let src = GitSource::open(
        remote.bare.to_str().expect("utf8"),
        &remote.work_dir("rec"),
        "main",
    )
    .expect("open the remote");
    let mut targets: BTreeMap<String, Box<dyn Target>> = BTreeMap::new();
    targets.insert("local".to_owned(), Box::new(DryRun::new()));
    let mut rec = Reconciler::new(src, None, targets, BTreeMap::new());
    rec.tick(chrono::Utc::now()).expect("first pass");
    change_all(&remote, n, "v2");
    let mut due = Vec::new();
    loop {
        let t = Instant::now();
        let r = rec.tick(chrono::Utc::now()).expect("tick");
        if r.transitions == 0 {
            break;
        }
        due.push((t.elapsed(), r.transitions));
    }
    for (took, transitions) in &due {
        say(format!(
            "(e) pass with {transitions} transitions: {:.0} ms (goal ≤ 1 s for {n})",
            ms(*took)
        ));
    }
    let Some(place) = humans else {
        return;
    };
    let _pinned = place.pin_rollgate();

    let stop = Arc::new(AtomicBool::new(false));
    // Held while the benchmark pushes its own 1,000-plan change: against ten small
    // pushes in a loop, that big pull-rebase-push never won a race (the run that hit
    // its time limit waited here, not on rollgate).
    let hold = Arc::new(AtomicBool::new(false));
    let human_pushes = Arc::new(AtomicUsize::new(0));
    // Each human push's time from its commit to its push landing, lost races included:
    // the yardstick for rollgate's own (a writer among eleven on one branch).
    let human_waits = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let humans: Vec<_> = (0..10)
        .map(|h| {
            let dir = remote.work_dir(&format!("human-{h}"));
            if !matches!(place, Humans::Rate(_)) {
                support::git(
                    dir.parent().expect("parent"),
                    &[
                        "clone",
                        "-q",
                        remote.bare.to_str().expect("utf8"),
                        dir.to_str().expect("utf8"),
                    ],
                );
            }
            let bare = remote.bare.clone();
            let stop = stop.clone();
            let hold = hold.clone();
            let count = human_pushes.clone();
            let waits = human_waits.clone();
            let place = place.clone();
            std::thread::spawn(move || {
                let mut draws = Draws(0x9E37_79B9_7F4A_7C15 ^ (h as u64 + 1));
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    // The pause first (ten humans starting at once would push ten
                    // commits in a burst), in slices, so a stop is seen within 50 ms.
                    let until = Instant::now() + place.pause(draws.next());
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
                    }
                    while hold.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    i += 1;
                    place.commit(h, i, &dir);
                    let committed = Instant::now();
                    if place.push(h, i, &dir, &bare, &stop) {
                        if let Ok(mut w) = waits.lock() {
                            w.push(committed.elapsed());
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let _stop_humans = StopOnDrop(stop.clone());
    let mut transitions = 0;
    let mut passes = 0;
    let mut yielded = 0;
    let mut finished_rounds = 0;
    let lost_before = lost_races();
    let delays_before = rollgate::telemetry::global().push_delays();
    let busy_from = Instant::now();
    // Against ten humans three rounds of 1,000 rollouts once took over an hour, so (f)
    // stops at its budget (`ROLLGATE_BENCH_BUDGET_S`, 180 s by default).
    let budget = Duration::from_secs(
        std::env::var("ROLLGATE_BENCH_BUDGET_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180),
    );
    'rounds: for round in 0..rounds.min(3) {
        if busy_from.elapsed() > budget {
            break;
        }
        hold.store(true, Ordering::Relaxed);
        change_all(&remote, n, &format!("v{}", round + 3));
        hold.store(false, Ordering::Relaxed);
        loop {
            let r = rec.tick(chrono::Utc::now()).expect("tick");
            passes += 1;
            yielded += usize::from(r.yielded);
            transitions += r.transitions;
            let done = (0..n).all(|i| {
                rec.status(&name(i)).is_some_and(|s| {
                    s.candidate == format!("v{}", round + 3) && s.phase == Phase::Succeeded
                })
            });
            if done {
                finished_rounds += 1;
                break;
            }
            if busy_from.elapsed() > budget {
                break 'rounds;
            }
        }
    }
    let busy = busy_from.elapsed();
    let lost = lost_races() - lost_before;
    stop.store(true, Ordering::Relaxed);
    for h in humans {
        let _ = h.join();
    }
    let delays = rollgate::telemetry::global()
        .push_delays()
        .since(&delays_before);
    let at = |q: f64| delays.quantile(q).map_or(f64::NAN, |s| s * 1000.0);
    let mut human = human_waits.lock().map(|w| w.clone()).unwrap_or_default();
    human.sort();
    let human_at = |q: f64| {
        let i = ((human.len() as f64 - 1.0) * q).round() as usize;
        human.get(i).map_or(f64::NAN, |d| ms(*d))
    };
    say(format!(
        "{} with {}: {transitions} transitions in {passes} passes ({yielded} yielded to new commits) over {:.1} s, {finished_rounds} of {} rounds of {n} rollouts finished (budget {} s), while 10 humans pushed {} commits ({:.1} a second); status pushes lost to them: {lost} ({:.1} per transition); decision → status pushed over {} commits' transitions: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms (goal p99 ≤ 2 s); beside it, the humans' commit → push landed over {} pushes: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms",
        if matches!(place, Humans::Rate(_)) {
            "(g)"
        } else {
            "(f)"
        },
        place.label(),
        busy.as_secs_f64(),
        rounds.min(3),
        budget.as_secs(),
        human_pushes.load(Ordering::Relaxed),
        human_pushes.load(Ordering::Relaxed) as f64 / busy.as_secs_f64(),
        lost as f64 / transitions.max(1) as f64,
        delays.count(),
        at(0.5),
        at(0.9),
        at(0.99),
        human.len(),
        human_at(0.5),
        human_at(0.9),
        human_at(0.99),
    ));
}

/// Pushes of status commits lost to another writer so far, per plan in the commit
/// (`writeback_retries`).
fn lost_races() -> u64 {
    rollgate::telemetry::global()
        .writeback_retries
        .load(Ordering::Relaxed)
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    /// The pushing threads end even when the benchmark panics.
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn name(i: usize) -> String {
    format!("svc-{i:04}")
}

fn plan(i: usize, steps: &[&str]) -> PlanFile {
    PlanFile::new(&name(i))
        .steps(steps)
        .port(20_000 + u16::try_from(i % 40_000).expect("port"))
}

/// A remote with `n` plans whose rollout of v1 succeeded (status files in the import).
fn seeded(n: usize, steps: &[&str]) -> Remote {
    let now = chrono::Utc::now();
    let mut files = vec![("rollgate.yaml".to_owned(), settings_in(layout()))];
    for i in 0..n {
        let p = plan(i, steps);
        let mut s = Status::pending(&p.name, "v1", &"0".repeat(40));
        s.phase = Phase::Succeeded;
        s.stable = Some("v1".to_owned());
        s.step = steps.len();
        s.weight = 100;
        // A full history of stable artifacts (`MAX_SUCCEEDED`, v1 the last), as after
        // ten rollouts: each status file is at its steady size from the first round,
        // so (d) measures the daemon and not status files growing to their bound.
        s.succeeded = (0..MAX_SUCCEEDED)
            .map(|k| Success {
                artifact: if k + 1 == MAX_SUCCEEDED {
                    "v1".to_owned()
                } else {
                    format!("v0.{k}")
                },
                at: now,
            })
            .collect();
        s.last_transition_at = Some(now);
        files.push((
            layout().physical(&format!("status/{}.yaml", p.name)),
            s.to_yaml().expect("status yaml"),
        ));
        files.push((p.path(), p.yaml()));
    }
    Remote::with_files(&files)
}

/// The human changes every plan to `to` in one commit and pushes it.
fn change_all(remote: &Remote, n: usize, to: &str) {
    remote.pull();
    for i in 0..n {
        let file = remote.human.join(format!("plans/{}.yaml", name(i)));
        let text = std::fs::read_to_string(&file).expect("read plan");
        std::fs::write(&file, set_artifact(to)(text)).expect("write plan");
    }
    remote.human(&["commit", "-qam", &format!("{n} plans: {to}")]);
    while !support::git_ok(&remote.human, &["push", "-q", "origin", "main"]) {
        remote.pull();
    }
}

/// The head of the remote's main.
fn head_of(bare: &Path) -> git2::Oid {
    let repo = git2::Repository::open_bare(bare).expect("open");
    repo.refname_to_id("refs/heads/main").expect("main")
}

/// Every status at `head` of the remote.
fn statuses_at(bare: &Path, head: git2::Oid) -> Vec<Status> {
    let repo = git2::Repository::open_bare(bare).expect("open");
    rollgate::history::statuses(&repo, head).expect("statuses")
}

/// Every status at the remote's head.
fn statuses(bare: &Path) -> Vec<Status> {
    statuses_at(bare, head_of(bare))
}

/// Poll the remote until `n` statuses satisfy `done`; when that was first seen. The
/// statuses are read again only when the head moved: reading 1,000 of them every poll
/// took CPU from the daemon under measurement.
fn wait_all(remote: &Remote, n: usize, limit: Duration, done: impl Fn(&Status) -> bool) -> Instant {
    let start = Instant::now();
    let mut seen = None;
    loop {
        let head = head_of(&remote.bare);
        if seen != Some(head) {
            seen = Some(head);
            if statuses_at(&remote.bare, head)
                .iter()
                .filter(|s| done(s))
                .count()
                >= n
            {
                return Instant::now();
            }
        }
        assert!(start.elapsed() < limit, "not there after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `rollgate run --journal-targets` as a subprocess.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(remote: &Remote, state: &Path) -> Self {
        let child = Command::new(BIN)
            .args(["run", "--journal-targets", "--interval", "30s", "--repo"])
            .arg(&remote.bare)
            .arg("--state-dir")
            .arg(state)
            // MASS_LOG=FILE keeps the daemon's log (at info) for a look at where time goes.
            .env(
                "RUST_LOG",
                if std::env::var_os("MASS_LOG").is_some() {
                    "info"
                } else {
                    "error"
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(match std::env::var_os("MASS_LOG") {
                Some(f) => Stdio::from(std::fs::File::create(f).expect("log file")),
                None => Stdio::null(),
            })
            .spawn()
            .expect("rollgate run starts");
        Self { child }
    }

    /// Wait until the daemon's first pass is over (every plan re-applied: its CPU rests).
    fn wait_ready(&mut self, remote: &Remote, n: usize) {
        assert_eq!(statuses(&remote.bare).len(), n);
        let mut last = self.cpu();
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.cpu();
            if now - last < Duration::from_millis(50) {
                return;
            }
            last = now;
            assert!(start.elapsed() < Duration::from_secs(600), "never idle");
        }
    }

    /// A `/proc/PID/status` figure, in KiB.
    fn kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(&format!("{field}:")))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }

    /// The largest resident parts of the daemon, by mapping (`/proc/PID/smaps`): the
    /// binary, each mapped pack file, the heap and other anonymous memory.
    fn rss_by_mapping(&self) -> String {
        let smaps =
            std::fs::read_to_string(format!("/proc/{}/smaps", self.child.id())).unwrap_or_default();
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        let mut name = String::new();
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("Rss:") => {
                    let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                    *by.entry(name.clone()).or_default() += kib;
                }
                Some(first) if first.contains('-') && !first.ends_with(':') => {
                    // A mapping's first line: range, perms, offset, dev, inode, [path].
                    let path = words.nth(4).unwrap_or("[anonymous]");
                    name = path.rsplit('/').next().unwrap_or(path).to_owned();
                    if name.starts_with("pack-") {
                        name = format!("pack-*{}", &name[name.len().saturating_sub(5)..]);
                    }
                }
                _ => {}
            }
        }
        let mut top: Vec<(String, u64)> = by.into_iter().filter(|(_, k)| *k >= 256).collect();
        top.sort_by_key(|e| std::cmp::Reverse(e.1));
        top.iter()
            .map(|(n, k)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// CPU time used so far (utime + stime).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the daemon runs");
        // Fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        // CLK_TCK is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// Until the daemon rests: no child process (`git`) and no CPU time for 300 ms, or
    /// `limit` at most.
    fn wait_rest(&self, limit: Duration) {
        let start = Instant::now();
        let pid = self.child.id().to_string();
        let has_child = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|t| {
                    std::fs::read_to_string(t.path().join("children"))
                        .is_ok_and(|c| !c.trim().is_empty())
                })
        };
        while start.elapsed() < limit {
            if !has_child() && self.cpu_over(Duration::from_millis(300)).is_zero() && !has_child() {
                return;
            }
        }
    }

    fn cpu_over(&self, window: Duration) -> Duration {
        let before = self.cpu();
        std::thread::sleep(window);
        self.cpu() - before
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
