//! `rollgate demo`: one command, no cluster, a whole rollout story with real traffic.
//!
//! ```text
//!  DIR/remote.git  ◀── the "human" commits (v2, then v3)
//!       │ fetch
//!  Reconciler ──▶ data plane (its own process) ──▶ proxy 127.0.0.1:PORT ──▶ demo-service v1/v2/v3
//!       │                                          ▲ load generator (real HTTP)
//!       └── builtin metrics ◀──────────────────────┘ (the proxy's counters)
//! ```
//! The repository is made from the embedded `example-repo/` (its `local` plan; the
//! Kubernetes plans need a cluster and are left out), v1 is seeded as stable, v2 is
//! rolled out through its analysis stages and succeeds, v3 fails a share of requests,
//! is rolled back, and rollgate pushes the revert. `rollgate history` ends the show.
//! The data plane is started as `rollgate run` starts it, but in the demo's process group
//! (a Ctrl-C stops both) and stopped, with its workloads, when the demo ends.
//! Invariant: the demo drives the same `Reconciler` as `rollgate run`; nothing is faked.

pub mod load;
pub mod service;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use git2::{Repository, Signature};

use crate::daemon::Reconciler;
use crate::dataplane::client::{DataPlaneCounters, DataPlaneTarget, Launch};
use crate::metrics::builtin::Builtin;
use crate::model::status::{Phase, Status};
use crate::source::git::GitSource;

const SETTINGS: &str = include_str!("../../example-repo/rollgate.yaml");
const PLAN: &str = include_str!("../../example-repo/plans/hello.yaml");
const POLICY: &str = include_str!("../../example-repo/policies/team_label.rego");

/// How the show runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Short analysis stages (5 s) instead of 30 s: the whole story in well under 90 s.
    pub fast: bool,
    /// Keep the repository and state here (default: a temporary folder, removed after).
    pub dir: Option<PathBuf>,
    /// Requests per second from the built-in load generator.
    pub rps: u32,
}

/// Stops the demo's data plane and its workloads when the demo ends, however it ends.
#[derive(Debug)]
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Err(e) = crate::dataplane::stop(&self.0, Duration::from_secs(30)) {
            eprintln!("rollgate demo: {e:#}");
        }
    }
}

/// The plan text for this run: the demo's port, its timings, and an artifact.
fn plan_text(port: u16, fast: bool, artifact: &str) -> String {
    let mut t = PLAN.replace("127.0.0.1:18080", &format!("127.0.0.1:{port}"));
    if fast {
        t = t
            .replace("duration: 30s", "duration: 5s")
            .replace("interval: 5s", "interval: 1s");
    }
    t.replace("artifact: v1", &format!("artifact: {artifact}"))
}

fn seed_status() -> Result<String> {
    let mut s = Status::pending("hello", "v1", "0000000000000000000000000000000000000000");
    s.phase = Phase::Succeeded;
    s.stable = Some("v1".to_owned());
    s.weight = 100;
    s.step = 7;
    s.step_count = Some(7);
    s.message = Some("seeded by rollgate demo: v1 is the stable version".to_owned());
    s.succeeded.push(crate::model::status::Success {
        artifact: "v1".to_owned(),
        at: Utc::now(),
    });
    s.to_yaml().map_err(|e| anyhow::anyhow!(e))
}

/// Commit `files` onto `refs/heads/main` of the bare repository, as the human.
fn human_commit(repo: &Repository, files: &[(&str, String)], message: &str) -> Result<git2::Oid> {
    let sig = Signature::now("Demo Human", "human@example.com")?;
    let parent = repo
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let mut tree_id = match &parent {
        Some(p) => p.tree()?.id(),
        None => repo.treebuilder(None)?.write()?,
    };
    for (path, text) in files {
        tree_id = crate::writeback::put_file(repo, tree_id, path, Some(text.as_bytes()))?;
    }
    let tree = repo.find_tree(tree_id)?;
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    Ok(repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        message,
        &tree,
        &parents,
    )?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One line of live progress for a status.
fn describe(s: &Status, load: &load::Counts) -> String {
    let checks: Vec<String> = s
        .analysis
        .iter()
        .filter_map(|c| {
            let j = c.last.as_ref()?;
            Some(format!(
                "{} {} ({})",
                c.check,
                j.evidence
                    .value
                    .map_or("n/a".to_owned(), |v| format!("{v:.4}")),
                j.verdict.as_str()
            ))
        })
        .collect();
    let cells = usize::from(s.weight) / 10;
    format!(
        "{:<11} step {:>5} [{}{}] {:>3}% → {:<3}  {}  | traffic {}",
        s.phase.as_str(),
        s.step_label(),
        "█".repeat(cells),
        "·".repeat(10 - cells),
        s.weight,
        s.candidate,
        if checks.is_empty() {
            "-".to_owned()
        } else {
            checks.join(", ")
        },
        load.summary()
    )
}

/// Run the demo; returns the history text printed at the end.
pub fn run(opts: &DemoOptions) -> Result<String> {
    let tmp;
    let dir: PathBuf = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    let bare = dir.join("remote.git");
    if bare.exists() {
        bail!("{} already exists: give an empty --dir", bare.display());
    }
    let repo = Repository::init_bare(&bare)?;
    repo.set_head("refs/heads/main")?;
    let port = free_port()?;
    human_commit(
        &repo,
        &[
            ("rollgate.yaml", SETTINGS.to_owned()),
            ("plans/hello.yaml", plan_text(port, opts.fast, "v1")),
            ("policies/team_label.rego", POLICY.to_owned()),
            ("status/hello.yaml", seed_status()?),
        ],
        "Seed the demo GitOps repository (hello v1 is stable)",
    )?;

    let state = dir.join("state");
    let plane = state.join("local");
    let stop_plane = StopOnDrop(plane.clone());
    let mut targets: BTreeMap<String, Box<dyn crate::targets::Target>> = BTreeMap::new();
    targets.insert(
        "local".to_owned(),
        Box::new(DataPlaneTarget::new(plane.clone(), Launch::Attached)),
    );
    let mut metrics: BTreeMap<String, Box<dyn crate::metrics::MetricsSource>> = BTreeMap::new();
    metrics.insert(
        "builtin".to_owned(),
        Box::new(Builtin::with(vec![Arc::new(DataPlaneCounters::new(plane))])),
    );
    let src = GitSource::open(
        bare.to_str().context("path is not UTF-8")?,
        &state.join("git"),
        "main",
    )?;
    let policy = crate::policy::PolicySet::load(None).map_err(|d| {
        anyhow::anyhow!(
            "built-in policies: {}",
            d.first().map(ToString::to_string).unwrap_or_default()
        )
    })?;
    let mut rec = Reconciler::new(
        src,
        Some(Box::new(crate::gate::Rego::new(policy))),
        targets,
        metrics,
    );

    let tty = std::io::stdout().is_terminal();
    println!(
        "rollgate demo: GitOps repository {}, service on http://127.0.0.1:{port}",
        bare.display()
    );
    // The dashboard (#20), read from the demo's repository, up until the demo ends.
    let dashboard = crate::dashboard::serve(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        Arc::new(crate::dashboard::GitBoard::open(
            bare.to_str().context("path is not UTF-8")?,
            Some("main"),
        )?),
    )
    .context("cannot start the dashboard")?;
    println!("dashboard: http://{}/", dashboard.addr);
    // The first pass brings the stable version up; traffic starts once it serves.
    rec.tick(Utc::now())?;
    let traffic =
        load::Generator::start(std::net::SocketAddr::from(([127, 0, 0, 1], port)), opts.rps);
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let say = |line: String| match &bar {
        Some(b) => b.println(line),
        None => println!("{line}"),
    };

    let story = [
        ("v2", "Roll out hello v2"),
        ("v3", "Roll out hello v3 (it fails 20% of requests)"),
    ];
    let mut chapter = 0usize;
    let mut last_line = String::new();
    let limit = if opts.fast {
        Duration::from_secs(85)
    } else {
        Duration::from_secs(600)
    };
    let started = Instant::now();
    loop {
        if started.elapsed() > limit {
            bail!("the demo did not finish within {}s", limit.as_secs());
        }
        let report = rec.tick(Utc::now())?;
        let status = rec.live_status("hello");
        let counts = traffic.counts();
        if let Some(s) = &status {
            let line = describe(s, &counts);
            if let Some(b) = &bar {
                b.set_message(format!("hello {line}"));
            }
            // A line per transition and per new measurement (the live line shows the rest).
            let measured: u32 = s.analysis.iter().map(|c| c.measurements).sum();
            let key = format!("{} {} {} {measured}", s.phase.as_str(), s.step, s.candidate);
            if key != last_line {
                say(format!(
                    "[{:>5.1}s] hello {line}",
                    started.elapsed().as_secs_f64()
                ));
                last_line = key;
            }
            let settled =
                matches!(s.phase, Phase::Succeeded | Phase::RolledBack) && report.transitions == 0;
            if settled
                && chapter < story.len()
                && s.candidate
                    == if chapter == 0 {
                        "v1"
                    } else {
                        story[chapter - 1].0
                    }
            {
                let (artifact, message) = story[chapter];
                // Let the proxy see the stable version serve for a moment first.
                std::thread::sleep(Duration::from_millis(if chapter == 0 { 1500 } else { 500 }));
                human_commit(
                    &repo,
                    &[("plans/hello.yaml", plan_text(port, opts.fast, artifact))],
                    message,
                )?;
                say(format!(
                    "[{:>5.1}s] human: {message}",
                    started.elapsed().as_secs_f64()
                ));
                chapter += 1;
            } else if settled && chapter == story.len() && s.phase == Phase::RolledBack {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(if report.transitions > 0 {
            10
        } else {
            250
        }));
    }
    // Take in the revert rollgate pushed, so the history shows it.
    rec.tick(Utc::now())?;
    let counts = traffic.stop();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!("traffic: {}", counts.summary());
    let head = crate::history::resolve(&repo, Some("main"))?;
    let history = crate::history::render_text(&crate::history::collect(&repo, head, None)?);
    println!("\nrollgate history --repo {}{history}", bare.display());
    if opts.dir.is_some() {
        println!(
            "the dashboard again: rollgate dashboard --repo {}\nthe timeline picture: rollgate history --repo {} --output svg hello --rollout 2 --out timeline.svg",
            bare.display(),
            bare.display()
        );
    }
    drop(dashboard);
    drop(rec);
    // Everything stops before its folder goes.
    drop(stop_plane);
    if opts.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(history)
}

fn tempfile_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("rollgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}

/// Used by tests: is the demo's repository where we expect?
pub fn remote_path(dir: &Path) -> PathBuf {
    dir.join("remote.git")
}
