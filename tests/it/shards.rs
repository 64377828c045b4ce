//! `rollgate run --shards N` on an in-memory API server (`kube-fake-client`, which keeps
//! Leases like a real one: a `resourceVersion` on every write, a 409 for a replace that
//! carries a stale one or a create of a Lease that exists), with a clock passed in by
//! the test and checked at every half second of it.
//!
//! Given replicas that each run a round every retry period (staggered, as real pods
//! are), when time passes, a replica dies or one is added, then every plan is owned by
//! at most one replica at every instant, and by exactly one once the rounds settle.
//! The last story runs real `Reconciler`s on a real bare Git remote, ticking at once on
//! three threads, and reads the remote's history back: nothing lost, nothing twice.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams, PostParams};
use kube_fake_client::interceptor::Funcs;
use rollgate::daemon::Reconciler;
use rollgate::leader::shards::shard_lease_name;
use rollgate::leader::{LeaseConfig, ShardElector, ShardGate};
use rollgate::metrics::MetricsSource;
use rollgate::model::status::Phase;
use rollgate::source::git::GitSource;
use rollgate::targets::Target;
use support::rollout::{PlanFile, Recorder, Script};
use support::{Remote, cluster::Verbs};

const NS: &str = "rollgate";
const BASE: &str = "rollgate";
const SHARDS: u32 = 12;

/// A test's view of the API: its runtime and a client on the in-memory server.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

impl Cluster {
    fn new() -> Self {
        Self::with(Funcs::new())
    }

    fn with(funcs: Funcs) -> Self {
        let (runtime, client) = support::cluster::api(Vec::new(), Some(funcs));
        Self { runtime, client }
    }

    fn elector(&self, identity: &str) -> ShardElector {
        ShardElector::new(
            self.client.clone(),
            NS,
            BASE,
            SHARDS,
            identity,
            LeaseConfig::default(),
        )
    }

    fn round(&self, e: &mut ShardElector, now: DateTime<Utc>) -> rollgate::leader::ShardRound {
        let r = self.runtime.block_on(e.round(now)).expect("round");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r
    }

    fn holder(&self, name: &str) -> Option<String> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), NS);
        self.runtime
            .block_on(api.get(name))
            .expect("lease")
            .spec
            .and_then(|s| s.holder_identity)
    }
}

fn t(secs: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_700_000_000_000_000 + (secs * 1e6) as i64).expect("time")
}

fn plans(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("plan-{k:03}")).collect()
}

/// A replica of the simulation: its elector, its gate, when it next runs a round.
struct Replica {
    name: &'static str,
    elector: ShardElector,
    gate: ShardGate,
    next_round: f64,
    alive: bool,
}

/// Replicas on one API, a simulated clock in half seconds, and the invariant checked
/// at every one of them.
struct Sim {
    api: Cluster,
    replicas: Vec<Replica>,
    plans: Vec<String>,
    now: f64,
}

impl Sim {
    fn new(names: &[&'static str], plans: usize) -> Self {
        let mut sim = Self {
            api: Cluster::new(),
            replicas: Vec::new(),
            plans: self::plans(plans),
            now: 0.0,
        };
        for name in names {
            sim.add(name);
        }
        sim
    }

    /// A replica starts now; its rounds come every retry period, offset by its rank.
    fn add(&mut self, name: &'static str) {
        let elector = self.api.elector(name);
        let gate = elector.gate();
        let offset = 0.7 * self.replicas.len() as f64;
        self.replicas.push(Replica {
            name,
            elector,
            gate,
            next_round: self.now + offset % 2.0,
            alive: true,
        });
    }

    /// The replica stops running rounds (a crash, a partition); its gate stays, and
    /// counts as an owner for as long as it says it may act.
    fn kill(&mut self, name: &str) {
        self.replicas
            .iter_mut()
            .find(|r| r.name == name)
            .expect("replica")
            .alive = false;
    }

    /// Who may reconcile `plan` at the current instant.
    fn owners(&self, plan: &str) -> Vec<&'static str> {
        self.replicas
            .iter()
            .filter(|r| r.gate.owns(plan, t(self.now)))
            .map(|r| r.name)
            .collect()
    }

    /// Advance to `until` in half seconds, running due rounds and checking that no
    /// plan has two owners at any instant. Returns the first instant at which every
    /// plan had exactly one owner, if any.
    fn run_until(&mut self, until: f64) -> Option<f64> {
        let mut settled = None;
        while self.now < until {
            self.now += 0.5;
            let now = self.now;
            for r in self.replicas.iter_mut().filter(|r| r.alive) {
                if r.next_round <= now {
                    self.api.round(&mut r.elector, t(now));
                    r.next_round += 2.0;
                }
            }
            let mut all_owned = true;
            for plan in &self.plans {
                let owners = self.owners(plan);
                assert!(
                    owners.len() <= 1,
                    "{plan} has two owners at {now}: {owners:?}"
                );
                all_owned &= owners.len() == 1;
            }
            if all_owned && settled.is_none() {
                settled = Some(now);
            }
            if !all_owned {
                settled = None;
            }
        }
        settled
    }

    /// Shards each live replica acts on now.
    fn shares(&self) -> BTreeMap<&'static str, usize> {
        self.replicas
            .iter()
            .filter(|r| r.alive)
            .map(|r| {
                let n = (0..SHARDS)
                    .filter(|&i| r.gate.acting(i, t(self.now)))
                    .count();
                (r.name, n)
            })
            .collect()
    }

    /// Plans each replica may reconcile now.
    fn plans_of(&self, name: &str) -> BTreeSet<String> {
        let r = self
            .replicas
            .iter()
            .find(|r| r.name == name)
            .expect("replica");
        self.plans
            .iter()
            .filter(|p| r.gate.owns(p, t(self.now)))
            .cloned()
            .collect()
    }
}

#[test]
fn three_replicas_and_300_plans_never_give_one_plan_two_owners_and_share_them_fairly() {
    // Given three replicas starting together on an empty API
    let mut sim = Sim::new(&["a", "b", "c"], 300);
    // When a minute passes, every instant checked
    let settled = sim.run_until(60.0).expect("every plan owned");
    // Then every plan had exactly one owner within a few rounds, and kept it
    assert!(settled <= 10.0, "settled at {settled}");
    // And each replica holds its fair share ⌈12 / 3⌉ = 4 of the shards
    assert_eq!(sim.shares(), BTreeMap::from([("a", 4), ("b", 4), ("c", 4)]));
    let owned: usize = ["a", "b", "c"].iter().map(|r| sim.plans_of(r).len()).sum();
    assert_eq!(owned, 300);
    // And the Leases say who: each shard's holder is the replica acting on it
    for i in 0..SHARDS {
        let holder = sim.api.holder(&shard_lease_name(BASE, i, SHARDS));
        let acting: Vec<_> = sim
            .replicas
            .iter()
            .filter(|r| r.gate.acting(i, t(sim.now)))
            .map(|r| r.name.to_owned())
            .collect();
        assert_eq!(holder.into_iter().collect::<Vec<_>>(), acting, "shard {i}");
    }
}

#[test]
fn the_plans_of_a_dead_replica_continue_on_the_others_within_the_lease_duration() {
    // Given three replicas sharing 300 plans
    let mut sim = Sim::new(&["a", "b", "c"], 300);
    sim.run_until(30.0).expect("settled");
    let orphans = sim.plans_of("c");
    assert!(!orphans.is_empty());
    // When c dies right after a round
    let last_round = sim.replicas[2].next_round - 2.0;
    sim.kill("c");
    let killed = sim.now;
    // Then c stops acting at its renew deadline (10 s after its last renewal), and no
    // plan ever has two owners, and every plan of c has a new owner within one lease
    // duration (15 s) plus the retry periods before the others saw c's last renewal
    // and before their round after it lapsed
    let cfg = LeaseConfig::default();
    let bound = cfg.lease_duration + 2 * cfg.retry_period;
    let mut taken_over_at = None;
    while sim.now < killed + 40.0 {
        sim.run_until(sim.now + 0.5);
        if !sim.plans_of("c").is_empty() {
            assert!(sim.now < last_round + 10.0, "c acts past its deadline");
        }
        if taken_over_at.is_none()
            && orphans.iter().all(|p| sim.owners(p).len() == 1)
            && sim.plans_of("c").is_empty()
        {
            taken_over_at = Some(sim.now);
        }
    }
    let taken_over_at = taken_over_at.expect("c's plans were taken over");
    assert!(
        taken_over_at - last_round <= bound.as_secs_f64(),
        "taken over {} s after c's last renewal (bound {bound:?})",
        taken_over_at - last_round
    );
    assert!(
        taken_over_at - last_round >= cfg.lease_duration.as_secs_f64(),
        "nobody takes a shard before it lapses"
    );
    // And the two left share the 12 shards 6 and 6
    assert_eq!(sim.shares(), BTreeMap::from([("a", 6), ("b", 6)]));
}

#[test]
fn a_replica_added_takes_its_fair_share_from_the_others_without_two_owners() {
    // Given two replicas holding 6 shards each
    let mut sim = Sim::new(&["a", "b"], 300);
    sim.run_until(20.0).expect("settled");
    assert_eq!(sim.shares(), BTreeMap::from([("a", 6), ("b", 6)]));
    // When a third replica starts
    sim.add("c");
    let added = sim.now;
    let settled = sim.run_until(added + 30.0).expect("settled again");
    // Then the others released the shards above ⌈12 / 3⌉ and c took them, every
    // instant with at most one owner per plan, within a few retry periods
    assert_eq!(sim.shares(), BTreeMap::from([("a", 4), ("b", 4), ("c", 4)]));
    assert!(
        settled - added <= 8.0,
        "rebalanced {} s after",
        settled - added
    );
    assert!(!sim.plans_of("c").is_empty());
}

#[test]
fn a_shard_being_reconciled_is_given_back_only_once_its_plan_is_done() {
    // Given a alone with every shard, and a plan of one of them being reconciled
    let mut sim = Sim::new(&["a"], 300);
    sim.run_until(4.0).expect("settled");
    let a = sim.replicas[0].gate.clone();
    // When b joins, a must give back 6 shards: hold a claim on a plan of each of a's
    // shards so that whichever it picks is busy
    let claims: Vec<_> = (0..SHARDS)
        .map(|i| {
            let plan = sim
                .plans
                .iter()
                .find(|p| a.shard_of(p) == i)
                .expect("a plan of the shard")
                .clone();
            (i, a.claim(&plan, t(sim.now)).expect("a owns it"))
        })
        .collect();
    sim.add("b");
    sim.run_until(sim.now + 10.0);
    // Then a stopped acting on the shards it gives back (no new plan of them starts),
    // but kept their Leases: b acts on none of them
    assert_eq!(sim.shares()["a"], 6, "{:?}", sim.shares());
    assert_eq!(sim.shares()["b"], 0, "nothing released while busy");
    let busy: Vec<u32> = (0..SHARDS).filter(|&i| !a.acting(i, t(sim.now))).collect();
    assert_eq!(busy.len(), 6);
    for &i in &busy {
        assert_eq!(
            sim.api
                .holder(&shard_lease_name(BASE, i, SHARDS))
                .as_deref(),
            Some("a")
        );
    }
    // When the plans in flight finish
    drop(claims);
    let settled = sim.run_until(sim.now + 10.0).expect("settled");
    // Then a released them at its next round and b took them
    assert_eq!(sim.shares(), BTreeMap::from([("a", 6), ("b", 6)]));
    assert!(settled > 0.0);
}

/// A replace interceptor that, when armed, lets `intruder` write the named Lease just
/// before the armed elector's replace lands: the replace then carries a stale version.
fn race_on_replace(name: String, intruder: &'static str, armed: Arc<AtomicBool>) -> Funcs {
    Funcs::new().replace(move |ctx| {
        if ctx.name == name && armed.swap(false, Ordering::SeqCst) {
            let mut l: Lease = ctx.client.get(ctx.namespace, &name)?;
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(intruder.to_owned());
            ctx.client
                .update(ctx.namespace, &l, &PostParams::default())?;
        }
        Ok(None)
    })
}

#[test]
fn a_shard_renewal_with_a_stale_resource_version_is_rejected_and_that_shard_stops() {
    let armed = Arc::new(AtomicBool::new(false));
    let lease = shard_lease_name(BASE, 3, SHARDS);
    let api = Cluster::with(race_on_replace(lease.clone(), "z", Arc::clone(&armed)));
    let mut a = api.elector("a");
    let gate = a.gate();
    let r = api.round(&mut a, t(0.0));
    assert_eq!(r.acting.len(), SHARDS as usize);
    // When z writes shard 3's Lease between a's read and a's renewal
    armed.store(true, Ordering::SeqCst);
    let r = api.round(&mut a, t(2.0));
    assert!(!armed.load(Ordering::SeqCst), "the race happened");
    // Then the 409 is a lost race: a stops acting on shard 3 at once, keeps the others
    assert!(!r.acting.contains(&3), "{r:?}");
    assert_eq!(r.acting.len(), SHARDS as usize - 1);
    assert!(!gate.acting(3, t(2.0)));
    assert_eq!(api.holder(&lease).as_deref(), Some("z"));
    // And a waits a full lease duration from its first look at z's version (its next
    // round, at 4 s) before taking it over
    assert!(!api.round(&mut a, t(4.0)).acting.contains(&3));
    assert!(!api.round(&mut a, t(18.9)).acting.contains(&3));
    assert!(api.round(&mut a, t(19.0)).acting.contains(&3));
}

/// Every verb the shard elector sends is one `leader::RBAC` grants (`deploy_manifests.rs`
/// compares `RBAC` with the Role), and with the single-lease elector's `get`
/// (`leader::the_elector_sends_exactly_the_verbs_rbac_lists`) they are all of it.
#[test]
fn the_shard_elector_sends_only_verbs_rbac_lists() {
    let verbs = Verbs::default();
    let api = Cluster::with(verbs.interceptor());
    let (mut a, mut b) = (api.elector("a"), api.elector("b"));
    for k in 0..8 {
        api.round(&mut a, t(2.0 * f64::from(k)));
        api.round(&mut b, t(2.0 * f64::from(k) + 1.0));
    }
    assert!(
        api.runtime
            .block_on(a.release_all(t(20.0)))
            .expect("release")
            > 0
    );
    let granted: BTreeSet<&str> = rollgate::leader::RBAC
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .collect();
    let seen = verbs.seen();
    assert_eq!(
        seen,
        BTreeSet::from(["list", "create", "update"]),
        "the shard elector lists, creates and updates"
    );
    let mut both = seen.clone();
    both.insert("get");
    assert_eq!(both, granted);
    // And a's release hands its shards over at b's next round, without a lapse
    let r = api.round(&mut b, t(21.0));
    assert_eq!(r.acting.len(), SHARDS as usize);
    let api_leases: Api<Lease> = Api::namespaced(api.client.clone(), NS);
    let all = api
        .runtime
        .block_on(api_leases.list(&ListParams::default()))
        .expect("list");
    // Member slots are taken as replicas come: 12 shard Leases, 2 member Leases.
    assert_eq!(all.items.len(), SHARDS as usize + 2);
}

/// The world of the Git story: the shared target, the simulated clock, and every gate.
#[derive(Clone, Default)]
struct Watch {
    now: Arc<Mutex<Option<DateTime<Utc>>>>,
    gates: Arc<Mutex<Vec<ShardGate>>>,
    violations: Arc<Mutex<Vec<String>>>,
    actions: Arc<AtomicUsize>,
}

/// Plans of the Git story: `ROLLGATE_SHARD_PLANS` (default 60, to keep CI's time: 300
/// take ~8 minutes on a loaded two-core machine).
fn git_plans() -> usize {
    std::env::var("ROLLGATE_SHARD_PLANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

#[test]
fn three_replicas_roll_out_plans_on_one_branch_and_lose_nothing_when_one_dies() {
    // Given 60 plans (steps 20% → 100%), three replicas with their own clones of one
    // bare remote, one target they share (a cluster) and an in-memory API for Leases
    let count = git_plans();
    let steps = ["setWeight: 20", "setWeight: 100"];
    let files: Vec<PlanFile> = plans(count)
        .iter()
        .map(|n| PlanFile::new(n).first_rollout_steps().steps(&steps))
        .collect();
    let remote = Remote::with_plans(&files.iter().collect::<Vec<_>>());
    let seeded = remote.head();
    let api = Cluster::new();
    let target = Recorder::default();
    let watch = Watch::default();
    {
        // Every target action is taken by the one replica that may act on the plan.
        let watch = watch.clone();
        target.before_each_action(move |action| {
            let plan = action.split(' ').next().unwrap_or("");
            let now = watch.now.lock().expect("now").expect("a time");
            let owners = watch
                .gates
                .lock()
                .expect("gates")
                .iter()
                .filter(|g| g.owns(plan, now))
                .count();
            if owners != 1 {
                watch
                    .violations
                    .lock()
                    .expect("violations")
                    .push(format!("{action} with {owners} owners"));
            }
            watch.actions.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
    }
    let start = |name: &str| -> (Reconciler, ShardElector) {
        let src = GitSource::open(
            remote.bare.to_str().expect("utf8"),
            &remote.work_dir(&format!("replica-{name}")),
            "main",
        )
        .expect("open the remote");
        let mut targets: BTreeMap<String, Box<dyn Target>> = BTreeMap::new();
        targets.insert("local".to_owned(), target.boxed());
        let mut sources: BTreeMap<String, Box<dyn MetricsSource>> = BTreeMap::new();
        sources.insert("builtin".to_owned(), Script::healthy().boxed());
        let mut rec = Reconciler::new(src, None, targets, sources);
        let elector = api.elector(name);
        rec.set_shards(elector.gate());
        watch.gates.lock().expect("gates").push(elector.gate());
        (rec, elector)
    };
    let mut replicas: Vec<(&str, Reconciler, ShardElector, bool)> = ["a", "b", "c"]
        .into_iter()
        .map(|n| {
            let (rec, e) = start(n);
            (n, rec, e, true)
        })
        .collect();

    // When they run, a pass and a round every 2 s of a simulated clock, the three passes
    // of each step at once on three threads (their pushes race on the branch), and c
    // dies at 6 s, in the middle of the rollouts
    let t0 = Utc::now();
    let done = |remote: &Remote| {
        plans(count).iter().all(|p| {
            remote
                .status(p)
                .is_some_and(|s| s.phase == Phase::Succeeded)
        })
    };
    let mut step = 0;
    let mut in_flight_at_death = 0;
    while !done(&remote) {
        assert!(step < 40, "not done after {step} steps");
        let now = t0 + TimeDelta::seconds(2 * step);
        *watch.now.lock().expect("now") = Some(now);
        if step == 3 {
            replicas[2].3 = false;
            // c dies with rollouts of its own in flight.
            let gate = replicas[2].2.gate();
            in_flight_at_death = plans(count)
                .iter()
                .filter(|p| gate.owns(p, now))
                .filter(|p| remote.status(p).is_none_or(|s| s.phase != Phase::Succeeded))
                .count();
        }
        for (_, _, e, alive) in replicas.iter_mut() {
            if *alive {
                api.runtime.block_on(e.round(now)).expect("round");
            }
        }
        std::thread::scope(|s| {
            for (name, rec, _, alive) in replicas.iter_mut() {
                if *alive {
                    let name = *name;
                    s.spawn(move || rec.tick(now).unwrap_or_else(|e| panic!("{name}: {e:#}")));
                }
            }
        });
        step += 1;
    }

    // Then c's rollouts in flight were finished by the others
    assert!(in_flight_at_death > 0, "c had nothing in flight");
    // And every target action was taken by the plan's one owner
    assert!(watch.actions.load(Ordering::Relaxed) >= 2 * count);
    let violations = watch.violations.lock().expect("violations").clone();
    assert!(violations.is_empty(), "{violations:?}");
    // And every plan's history is complete and has no transition twice: Pending,
    // Progressing 1/2 and 2/2, Promoting, Succeeded, each in one status commit (a
    // replica's pass writes one commit with a trailer block per plan it moved)
    let commits = support::rollout::commits_of(&remote.bare);
    let seen_at = commits
        .iter()
        .position(|c| c.sha == seeded)
        .expect("the seed commit");
    let mut history: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for c in &commits[seen_at + 1..] {
        assert!(c.is_status(), "{c:?}");
        let blocks = rollgate::writeback::messages::plan_blocks(&c.trailers);
        assert!(!blocks.is_empty(), "a plan trailer: {c:?}");
        for block in blocks {
            let get = |key: &str| {
                block
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map_or("-", |(_, v)| v.as_str())
                    .to_owned()
            };
            history
                .entry(get("Rollgate-Plan"))
                .or_default()
                .push((get("Rollgate-Phase"), get("Rollgate-Step")));
        }
    }
    let expected: Vec<(String, String)> = [
        ("Pending", "0/2"),
        ("Progressing", "1/2"),
        ("Progressing", "2/2"),
        ("Promoting", "2/2"),
        ("Succeeded", "2/2"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(history.len(), count);
    for (plan, h) in &history {
        assert_eq!(h, &expected, "{plan}");
    }
    support::rollout::assert_only_fast_forwards(&remote);
    // And a replica added now takes its fair share from the two left, once c's member
    // Lease, unchanged, stopped counting in its own view too (three retry periods
    // from its first look: a newcomer trusts no Lease's age)
    let (_, mut d) = start("d");
    let t_end = t0 + TimeDelta::seconds(2 * step);
    let mut shares = BTreeMap::new();
    for k in 0..6 {
        let now = t_end + TimeDelta::seconds(2 * k);
        for (name, _, e, alive) in replicas.iter_mut() {
            if *alive {
                let r = api.runtime.block_on(e.round(now)).expect("round");
                shares.insert(*name, r.acting.len());
            }
        }
        let r = api.runtime.block_on(d.round(now)).expect("round");
        shares.insert("d", r.acting.len());
    }
    assert_eq!(shares, BTreeMap::from([("a", 4), ("b", 4), ("d", 4)]));
}

/// `--shards` is its own mode: with `--leader-elect`, `--once` or `--dry-run` (which
/// would hold shards whose plans then nobody reconciles), or 0 shards, `rollgate run`
/// refuses before touching anything, naming the flag.
#[test]
fn shards_refuse_leader_election_once_dry_run_and_zero() {
    const BIN: &str = env!("CARGO_BIN_EXE_rollgate");
    for (extra, says) in [
        (&["--shards", "3", "--leader-elect"][..], "--leader-elect"),
        (&["--shards", "3", "--once"][..], "--once"),
        (&["--shards", "3", "--dry-run"][..], "--dry-run"),
        (&["--shards", "0"][..], "0"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["run", "--repo", "/nonexistent"])
            .args(extra)
            .output()
            .expect("rollgate runs");
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--shards") && err.contains(says),
            "{extra:?}: {err}"
        );
    }
}

/// On SIGTERM (or shutdown) a replica gives its shards back at once, so the others take
/// them at their next round, except a shard whose plan is still being reconciled: that
/// Lease is left to lapse, so nobody acts on the plan while the process finishes it.
#[test]
fn shutdown_releases_every_idle_shard_and_leaves_a_busy_one_to_lapse() {
    let api = Cluster::new();
    let mut a = api.elector("a");
    let gate = a.gate();
    assert_eq!(api.round(&mut a, t(0.0)).acting.len(), SHARDS as usize);
    let plan = plans(300)
        .into_iter()
        .find(|p| gate.shard_of(p) == 5)
        .expect("a plan of shard 5");
    let claim = gate.claim(&plan, t(1.0)).expect("a owns it");
    let released = api
        .runtime
        .block_on(a.release_all(t(1.0)))
        .expect("release");
    // 11 idle shards and the member Lease
    assert_eq!(released, SHARDS as usize);
    assert!(
        (0..SHARDS).all(|i| !gate.acting(i, t(1.0))),
        "a stops acting at once"
    );
    assert!(gate.claim(&plan, t(1.0)).is_none());
    for i in 0..SHARDS {
        let holder = api.holder(&shard_lease_name(BASE, i, SHARDS));
        assert_eq!(holder.as_deref(), (i == 5).then_some("a"), "shard {i}");
    }
    drop(claim);
    // b takes the 11 at once and shard 5 one lease duration after its first look
    let mut b = api.elector("b");
    assert_eq!(api.round(&mut b, t(2.0)).acting.len(), SHARDS as usize - 1);
    assert!(!api.round(&mut b, t(16.9)).acting.contains(&5));
    assert!(api.round(&mut b, t(17.0)).acting.contains(&5));
}

/// A real `rollgate run --shards 2` that cannot reach any Kubernetes API holds no shard:
/// it logs why, fetches, and writes nothing to Git and calls no target; SIGTERM ends it
/// with 0.
#[test]
fn a_sharded_daemon_without_an_api_holds_no_shard_and_writes_nothing() {
    const BIN: &str = env!("CARGO_BIN_EXE_rollgate");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // Given a remote with one new plan (a single replica would deploy it at once)
    let plan = PlanFile::new("web");
    let remote = Remote::with_plans(&[&plan]);
    let seeded = remote.head();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("stderr.log");
    // When the daemon starts sharded, with no kubeconfig and outside a cluster
    let mut daemon = Kill(
        std::process::Command::new(BIN)
            .args(["run", "--shards", "2", "--interval", "1s", "--repo"])
            .arg(&remote.bare)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("HOME", dir.path())
            .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("rollgate run"),
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(read().contains("holding no shard") && read().contains("rollgate running")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no word of the missing API: {}",
            read()
        );
        assert!(daemon.0.try_wait().expect("wait").is_none(), "{}", read());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Then, passes later, nothing was written: the plan is no replica's
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(remote.head(), seeded, "{}", read());
    assert!(remote.status("web").is_none());
    // And SIGTERM ends it cleanly
    let pid = daemon.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", read());
}

/// The daemon's handle, on the real clock: two campaigns share the shards 6 and 6, a
/// shard gained wakes the daemon (`on_gain`), and shutting one down releases its shards
/// so the other takes them without waiting for them to lapse.
#[test]
fn the_background_campaigns_share_the_shards_and_hand_them_over_on_shutdown() {
    let quick = LeaseConfig {
        lease_duration: std::time::Duration::from_secs(30),
        renew_deadline: std::time::Duration::from_secs(20),
        retry_period: std::time::Duration::from_millis(200),
    };
    let runtime = rollgate::leader::runtime().expect("runtime");
    let client = runtime
        .block_on(kube_fake_client::ClientBuilder::new().build())
        .expect("fake client");
    let campaign = |id: &str, woken: Arc<AtomicUsize>| {
        let elector = ShardElector::new(client.clone(), NS, BASE, SHARDS, id, quick);
        rollgate::leader::Sharding::start(
            rollgate::leader::runtime().expect("runtime"),
            elector,
            Box::new(move || {
                woken.fetch_add(1, Ordering::SeqCst);
            }),
        )
    };
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    let acting = |g: &ShardGate| (0..SHARDS).filter(|&i| g.acting(i, Utc::now())).count();
    let (a_woken, b_woken) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = campaign("a", Arc::clone(&a_woken));
    let a_gate = a.gate();
    wait_for("a acts on every shard", &|| {
        acting(&a_gate) == SHARDS as usize
    });
    assert!(a.standing_by());
    assert!(
        a_woken.load(Ordering::SeqCst) >= 1,
        "a gain wakes the daemon"
    );
    let b = campaign("b", Arc::clone(&b_woken));
    let b_gate = b.gate();
    wait_for("6 and 6", &|| acting(&a_gate) == 6 && acting(&b_gate) == 6);
    assert!(b_woken.load(Ordering::SeqCst) >= 1);
    // The GitHub gate follows shard 0's holder
    assert_ne!(
        a_gate.github_gate().is_leader(),
        b_gate.github_gate().is_leader()
    );
    a.shutdown();
    assert_eq!(acting(&a_gate), 0, "a stops acting at once");
    // Far sooner than the 30 s lease duration: the shards were released.
    wait_for("b takes all", &|| acting(&b_gate) == SHARDS as usize);
    assert!(b_gate.github_gate().is_leader());
    drop(b);
    assert_eq!(acting(&b_gate), 0);
}
