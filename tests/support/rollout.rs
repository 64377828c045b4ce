//! Fixtures for the reconcile-loop tests: plan files, a recording target shared with the
//! test, a scripted metrics source, a synthetic clock, and the remote's history read back
//! as rollgate's trailers.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use rollgate::daemon::{Reconciler, TickReport};
use rollgate::engine::{Measurement, TargetHealth};

use rollgate::metrics::{MetricsSource, QueryContext};
use rollgate::model::Plan;
use rollgate::model::plan::Check;
use rollgate::model::settings::StatusLayout;
use rollgate::model::status::Status;

use rollgate::source::git::GitSource;
use rollgate::source::remote::GitAuth;
use rollgate::targets::dry_run::{DryRun, Workload};
use rollgate::targets::{Desired, Target, TargetError};

use super::Remote;

/// `rollgate.yaml` with one local target named `local`.
pub const SETTINGS: &str = "apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  local: { local: {} }
";

/// [`SETTINGS`] with the status files kept in `layout` (`writeBack.statusLayout`).
pub fn settings_in(layout: StatusLayout) -> String {
    match layout {
        // Said, not left to `auto`: the benchmarks' 10,000 plans would be sharded.
        StatusLayout::Flat => format!("{SETTINGS}writeBack: {{ statusLayout: flat }}\n"),
        StatusLayout::Sharded => format!("{SETTINGS}writeBack: {{ statusLayout: sharded }}\n"),
    }
}

/// The status layout a benchmark's arguments ask for: `--sharded`, else flat.
pub fn layout_arg(args: &[String]) -> StatusLayout {
    if args.iter().any(|a| a == "--sharded") {
        StatusLayout::Sharded
    } else {
        StatusLayout::Flat
    }
}

/// A canary plan on the `local` target, judged by `success-rate` from the `builtin` source.
#[derive(Debug, Clone)]
pub struct PlanFile {
    pub name: String,
    pub artifact: String,
    pub steps: Vec<String>,
    pub port: u16,
    pub labels: String,
    /// `spec.firstRollout`, when set.
    pub first_rollout: Option<String>,
}

impl PlanFile {
    /// `setWeight 10`, a 30 s analysis (one measurement every 10 s), `setWeight 50`, `100`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            artifact: "v1".to_owned(),
            steps: [
                "setWeight: 10",
                "analysis: { checks: [success-rate], duration: 30s }",
                "setWeight: 50",
                "setWeight: 100",
            ]
            .map(str::to_owned)
            .to_vec(),
            port: 18080,
            labels: "{ team: demo }".to_owned(),
            first_rollout: None,
        }
    }

    /// Walk the steps even on the first rollout (`firstRollout: steps`): without it, a
    /// plan seen for the first time is deployed directly.
    #[must_use]
    pub fn first_rollout_steps(mut self) -> Self {
        self.first_rollout = Some("steps".to_owned());
        self
    }

    #[must_use]
    pub fn artifact(mut self, artifact: &str) -> Self {
        self.artifact = artifact.to_owned();
        self
    }

    #[must_use]
    pub fn steps(mut self, steps: &[&str]) -> Self {
        self.steps = steps.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn path(&self) -> String {
        format!("plans/{}.yaml", self.name)
    }

    pub fn yaml(&self) -> String {
        let steps: String = self
            .steps
            .iter()
            .map(|s| format!("        - {s}\n"))
            .collect();
        format!(
            "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: {name}, labels: {labels} }}
spec:
  target: local
  workload:
    local: {{ command: [srv, --port, \"{{{{port}}}}\"], listen: \"127.0.0.1:{port}\" }}
  artifact: {artifact}
  strategy:
    canary:
      steps:
{steps}  checks:
    - name: success-rate
      source: builtin
      query: success-rate
      interval: 10s
      judge: {{ min: 0.99 }}
  minSamples: 100
  rollback: {{ onFailure: revert, rollbackWindow: 24h }}
{first_rollout}",
            first_rollout = self
                .first_rollout
                .as_ref()
                .map(|f| format!("  firstRollout: {f}\n"))
                .unwrap_or_default(),
            name = self.name,
            labels = self.labels,
            port = self.port,
            artifact = self.artifact,
        )
    }
}

/// The edit a human makes to name another artifact in a plan file.
pub fn set_artifact(to: &str) -> impl FnOnce(String) -> String {
    let to = to.to_owned();
    move |text: String| {
        text.lines()
            .map(|l| match l.strip_prefix("  artifact: ") {
                Some(_) => format!("  artifact: {to}"),
                None => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }
}

impl Remote {
    /// A bare remote seeded with these files (path, content) and a human clone.
    pub fn with_files(files: &[(String, String)]) -> Self {
        let seed = tempfile::tempdir().expect("temp dir");
        for (path, content) in files {
            let p = seed.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, content).expect("write seed file");
        }
        Self::seeded_from(seed.path())
    }

    /// A bare remote holding `rollgate.yaml` and these plans.
    pub fn with_plans(plans: &[&PlanFile]) -> Self {
        let mut files = vec![("rollgate.yaml".to_owned(), SETTINGS.to_owned())];
        files.extend(plans.iter().map(|p| (p.path(), p.yaml())));
        Self::with_files(&files)
    }

    /// The human runs `git` in their clone (after pulling what rollgate pushed).
    pub fn human(&self, args: &[&str]) -> String {
        super::git(&self.human, args)
    }

    /// The human promotes `plan` with a pure command commit, as plain git does it, and
    /// pushes it.
    pub fn human_promote(&self, plan: &str) {
        self.pull();
        self.human(&[
            "commit",
            "--allow-empty",
            "-q",
            "-m",
            &format!("Promote {plan}"),
            "--trailer",
            "Rollgate-Command: promote",
            "--trailer",
            &format!("Rollgate-Plan: {plan}"),
        ]);
        self.human(&["push", "-q", "origin", "main"]);
    }

    /// The human pulls rollgate's commits.
    pub fn pull(&self) {
        super::git(&self.human, &["pull", "-q", "--rebase", "origin", "main"]);
    }

    /// The head of the remote's main.
    pub fn head(&self) -> String {
        super::git(&self.bare, &["rev-parse", "main"])
    }

    /// A file at the head of the remote's main.
    pub fn file(&self, path: &str) -> String {
        super::git(&self.bare, &["show", &format!("main:{path}")])
    }

    /// A plan's status at the head of the remote's main, if it has one.
    pub fn status(&self, plan: &str) -> Option<Status> {
        let repo = git2::Repository::open_bare(&self.bare).expect("open the remote");
        let head = repo
            .revparse_single("refs/heads/main")
            .expect("main")
            .peel_to_commit()
            .expect("commit");
        // Whichever layout stores it (`writeBack.statusLayout`).
        let entry = rollgate::source::git::entry_at(
            &head.tree().expect("tree"),
            &format!("status/{plan}.yaml"),
        )?;
        let blob = repo.find_blob(entry.id()).expect("blob");
        let text = std::str::from_utf8(blob.content()).expect("utf8");
        Some(Status::from_yaml(text).expect("a readable status"))
    }

    /// Every first-parent commit of main, oldest first, with its trailers and files.
    pub fn commits(&self) -> Vec<LoggedCommit> {
        commits_of(&self.bare)
    }

    /// Commits written by rollgate itself (status, revert, restore): trailers, no command.
    pub fn rollgate_commits(&self) -> Vec<LoggedCommit> {
        self.commits()
            .into_iter()
            .filter(LoggedCommit::is_rollgate)
            .collect()
    }
}

/// One commit of the remote, as the tests read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCommit {
    pub sha: String,
    pub subject: String,
    pub author: String,
    pub trailers: Vec<(String, String)>,
    /// Paths that differ from the first parent.
    pub files: Vec<String>,
}

impl LoggedCommit {
    pub fn trailer(&self, key: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    pub fn trailers_named(&self, key: &str) -> Vec<&str> {
        self.trailers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn is_rollgate(&self) -> bool {
        self.trailer("Rollgate-Plan").is_some() && self.trailer("Rollgate-Command").is_none()
    }

    /// A status commit: has a `Rollgate-Phase` trailer.
    pub fn is_status(&self) -> bool {
        self.is_rollgate() && self.trailer("Rollgate-Phase").is_some()
    }
}

/// Read a repository's main (first-parent), oldest first.
pub fn commits_of(repo: &Path) -> Vec<LoggedCommit> {
    let repo = git2::Repository::open_bare(repo)
        .or_else(|_| git2::Repository::open(repo))
        .expect("open the remote");
    let head = repo
        .revparse_single("refs/heads/main")
        .expect("main")
        .peel_to_commit()
        .expect("commit")
        .id();
    let mut walk = repo.revwalk().expect("revwalk");
    walk.push(head).expect("push head");
    walk.simplify_first_parent().expect("first parent");
    let mut out = Vec::new();
    for id in walk {
        let c = repo.find_commit(id.expect("id")).expect("commit");
        let msg = c.message().unwrap_or("").to_owned();
        let trailers = git2::message_trailers_strs(&msg)
            .map(|t| {
                t.iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let tree = c.tree().expect("tree");
        let parent_tree = c.parent(0).ok().map(|p| p.tree().expect("parent tree"));
        let diff = repo
            .diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)
            .expect("diff");
        let files = diff
            .deltas()
            .filter_map(|d| d.new_file().path().map(|p| p.display().to_string()))
            .collect();
        out.push(LoggedCommit {
            sha: c.id().to_string(),
            subject: c.summary().ok().flatten().unwrap_or("").to_owned(),
            author: c.author().name().unwrap_or("").to_owned(),
            trailers,
            files,
        });
    }
    out.reverse();
    out
}

/// Called with every target action (`plan action arg`) before it is recorded.
pub type Hook = Box<dyn FnMut(&str) -> Result<(), TargetError> + Send>;

/// A `DryRun` target the test keeps a handle on while the reconciler owns a box of it.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<DryRun>>, Arc<Mutex<Option<Hook>>>);

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Recorder")
            .field(&self.0)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, DryRun> {
        self.0.lock().expect("recorder lock")
    }

    /// Call `hook` with every action (`plan action arg`) before it is done: it may look
    /// at the world at that moment, and an `Err` fails the action with that message (a
    /// target that refuses, e.g. a 403), which is then not recorded. Health is unaffected.
    pub fn before_each_action(
        &self,
        mut hook: impl FnMut(&str) -> Result<(), String> + Send + 'static,
    ) {
        self.before_each_action_typed(move |a| hook(a).map_err(TargetError::failed));
    }

    /// `before_each_action`, failing with a typed error (a conflict, a refusal).
    pub fn before_each_action_typed(
        &self,
        hook: impl FnMut(&str) -> Result<(), TargetError> + Send + 'static,
    ) {
        *self.1.lock().expect("hook lock") = Some(Box::new(hook));
    }

    /// No hook any more: every action succeeds again.
    pub fn clear_hook(&self) {
        *self.1.lock().expect("hook lock") = None;
    }

    fn hook(&self, plan: &Plan, action: &str, arg: &str) -> Result<(), TargetError> {
        match self.1.lock().expect("hook lock").as_mut() {
            Some(hook) => hook(&format!("{} {action} {arg}", plan.name)),
            None => Ok(()),
        }
    }

    /// Every call for `plan`, as `action arg`, in order.
    pub fn calls(&self, plan: &str) -> Vec<String> {
        let prefix = format!("{plan} ");
        self.lock()
            .calls
            .iter()
            .filter_map(|c| c.strip_prefix(&prefix).map(|s| s.trim_end().to_owned()))
            .collect()
    }

    pub fn all_calls(&self) -> usize {
        self.lock().calls.len()
    }

    pub fn workload(&self, plan: &str) -> Workload {
        self.lock().workload(plan)
    }

    pub fn boxed(&self) -> Box<dyn Target> {
        Box::new(self.clone())
    }
}

impl Target for Recorder {
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.hook(plan, "start", artifact)?;
        self.lock().start_candidate(plan, artifact)
    }

    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError> {
        self.hook(plan, "weight", &weight.to_string())?;
        self.lock().set_weight(plan, weight)
    }

    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.hook(plan, "promote", artifact)?;
        self.lock().promote(plan, artifact)
    }

    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError> {
        self.hook(plan, "rollback", stable.unwrap_or(""))?;
        self.lock().rollback(plan, stable)
    }

    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth {
        self.lock().health(plan, desired)
    }
}

#[derive(Debug, Default)]
struct ScriptState {
    /// success-rate per version; absent versions get `default`.
    values: HashMap<String, f64>,
    default: Option<f64>,
    /// (check, version) of every query, in order.
    asked: Vec<(String, String)>,
}

/// A metrics source that answers what the test scripted, and remembers every question.
#[derive(Debug, Clone, Default)]
pub struct Script(Arc<Mutex<ScriptState>>);

/// How many requests every scripted measurement summarises (above every `minSamples`).
pub const SAMPLES: u64 = 1_000;

impl Script {
    /// Every version is healthy (success-rate 0.999) unless scripted otherwise.
    pub fn healthy() -> Self {
        let s = Self::default();
        s.0.lock().expect("script lock").default = Some(0.999);
        s
    }

    /// Answer `value` for `version` from now on.
    pub fn set(&self, version: &str, value: f64) {
        self.0
            .lock()
            .expect("script lock")
            .values
            .insert(version.to_owned(), value);
    }

    /// How many measurements were asked for in all.
    pub fn asked(&self) -> usize {
        self.0.lock().expect("script lock").asked.len()
    }

    /// How many measurements were asked for `version`.
    pub fn asked_for(&self, version: &str) -> usize {
        self.0
            .lock()
            .expect("script lock")
            .asked
            .iter()
            .filter(|(_, v)| v == version)
            .count()
    }

    pub fn boxed(&self) -> Box<dyn MetricsSource> {
        Box::new(self.clone())
    }
}

impl MetricsSource for Script {
    fn measure(&mut self, check: &Check, ctx: &QueryContext<'_>) -> Result<Measurement, String> {
        let mut s = self.0.lock().expect("script lock");
        s.asked.push((check.name.clone(), ctx.version.to_owned()));
        let value = s.values.get(ctx.version).copied().or(s.default);
        Ok(Measurement {
            value,
            samples: SAMPLES,
        })
    }
}

/// A reconciler on a remote, with a recording target, scripted metrics and a synthetic clock.
pub struct World {
    pub remote: Remote,
    pub target: Recorder,
    pub metrics: Script,
    pub rec: Reconciler,
    pub now: DateTime<Utc>,
    repo_policies: bool,
    starts: usize,
    /// The daemon reaches the remote at this URL with these credentials (https, ssh)
    /// instead of the bare repository's path.
    access: Option<(String, GitAuth)>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl World {
    /// Given a remote with these plans, a daemon (not yet ticked) with no policies.
    pub fn new(plans: &[&PlanFile]) -> Self {
        Self::on(Remote::with_plans(plans), false)
    }

    /// A daemon on `remote`; with `repo_policies`, the built-in policies and the
    /// repository's own `policies/` at each revision gate every plan.
    pub fn on(remote: Remote, repo_policies: bool) -> Self {
        let target = Recorder::default();
        let metrics = Script::healthy();
        let rec = start(&remote, 0, &target, &metrics, repo_policies, None);
        Self {
            remote,
            target,
            metrics,
            rec,
            now: Utc::now(),
            repo_policies,
            starts: 1,
            access: None,
        }
    }

    /// A daemon (no policies) that reaches `remote` at `url` (e.g. the bare repository
    /// served over https or ssh) with `auth`, on every start; the human still works on
    /// the bare repository's path.
    pub fn over(remote: Remote, url: &str, auth: GitAuth) -> Self {
        let target = Recorder::default();
        let metrics = Script::healthy();
        let access = Some((url.to_owned(), auth));
        let rec = start(&remote, 0, &target, &metrics, false, access.as_ref());
        Self {
            remote,
            target,
            metrics,
            rec,
            now: Utc::now(),
            repo_policies: false,
            starts: 1,
            access,
        }
    }

    /// The daemon stops and a new one starts with a fresh private clone; the target
    /// keeps running as it was.
    pub fn restart(&mut self) {
        self.rec = start(
            &self.remote,
            self.starts,
            &self.target,
            &self.metrics,
            self.repo_policies,
            self.access.as_ref(),
        );
        self.starts += 1;
    }

    /// One pass at the current synthetic time.
    pub fn tick(&mut self) -> TickReport {
        self.rec.tick(self.now).expect("tick")
    }

    /// Let synthetic time pass.
    pub fn wait(&mut self, secs: i64) {
        self.now += chrono::Duration::seconds(secs);
    }

    /// Tick, `secs` apart, until `done` holds for the plan's status on the remote
    /// (at most `max` passes).
    pub fn run_until(
        &mut self,
        plan: &str,
        secs: i64,
        max: usize,
        done: impl Fn(&Status) -> bool,
    ) -> Vec<TickReport> {
        let mut reports = Vec::new();
        for _ in 0..max {
            reports.push(self.tick());
            if self.remote.status(plan).is_some_and(|s| done(&s)) {
                return reports;
            }
            self.wait(secs);
        }
        panic!(
            "{plan} did not get there in {max} passes; status: {:?}\nhistory:\n{}",
            self.remote.status(plan),
            self.remote.log("%s")
        );
    }

    /// The plan's status at the head of the remote.
    pub fn status(&self, plan: &str) -> Status {
        self.remote.status(plan).expect("a status file")
    }
}

fn start(
    remote: &Remote,
    n: usize,
    target: &Recorder,
    metrics: &Script,
    repo_policies: bool,
    access: Option<&(String, GitAuth)>,
) -> Reconciler {
    let work_dir = remote.work_dir(&format!("daemon-{n}"));
    let src = match access {
        None => GitSource::open(remote.bare.to_str().expect("utf8"), &work_dir, "main"),
        Some((url, auth)) => GitSource::open_with(url, &work_dir, "main", auth.clone()),
    }
    .expect("open the remote");
    let mut targets: BTreeMap<String, Box<dyn Target>> = BTreeMap::new();
    targets.insert("local".to_owned(), target.boxed());
    let mut sources: BTreeMap<String, Box<dyn MetricsSource>> = BTreeMap::new();
    sources.insert("builtin".to_owned(), metrics.boxed());
    let rec = Reconciler::new(src, None, targets, sources);
    if !repo_policies {
        return rec;
    }
    let dir = remote.work_dir(&format!("policies-{n}"));
    rec.with_policy_loader(Box::new(rollgate::gate::repository_policies(dir)))
}

/// The remote's reflog of main (`core.logAllRefUpdates=always`) shows only fast-forwards:
/// every entry starts where the previous one ended, and its new value descends from the old.
pub fn assert_only_fast_forwards(remote: &Remote) {
    let log = std::fs::read_to_string(remote.bare.join("logs/refs/heads/main"))
        .expect("the remote keeps a reflog of main");
    let zero = "0".repeat(40);
    let mut previous: Option<String> = None;
    let mut entries = 0;
    for line in log.lines() {
        let mut parts = line.split(' ');
        let (Some(old), Some(new)) = (parts.next(), parts.next()) else {
            panic!("bad reflog line: {line}");
        };
        if let Some(p) = &previous {
            assert_eq!(old, p, "the reflog skips from {p} to {old}: {line}");
        }
        if old != zero {
            assert!(
                super::git_ok(&remote.bare, &["merge-base", "--is-ancestor", old, new]),
                "{new} replaced {old} without descending from it: a force-push"
            );
        }
        previous = Some(new.to_owned());
        entries += 1;
    }
    assert!(entries > 1, "the reflog is empty:\n{log}");
    assert_eq!(previous.as_deref(), Some(remote.head().as_str()));
}
