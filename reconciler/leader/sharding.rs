//! The adapter of sharding (`rollgate run --shards N`): [`ShardElector`] lists the
//! shard and member Leases, asks the pure core ([`super::shards::decide_shards`]) and
//! writes each Lease it takes, keeps or gives back; [`ShardGate`] tells the daemon, per
//! plan, whether this replica may reconcile it now; [`Sharding`] runs the rounds in the
//! background.
//!
//! ```text
//!   every retry period:  list Leases (label rollgate.dev/lease-group=<base>)
//!        ──▶ decide_shards (pure) ──▶ stop acting on shards to give back
//!        ──▶ create / replace each Lease (resourceVersion read; 409 = lost that one)
//!        ──▶ publish: shard i may be acted on until its last renewal + renew deadline
//! ```
//!
//! Invariants:
//! - A plan is reconciled only under a [`Claim`] on its shard, taken while the shard's
//!   last *successful* acquire or renew started less than the renew deadline ago; the
//!   renew deadline is shorter than the lease duration, so a replica that cannot renew
//!   stops before any other may take the shard over.
//! - A shard is given back only once no claim on it is in flight: acting stops first,
//!   and while a plan of the shard is still being reconciled the Lease is renewed
//!   instead (a rebalance never cuts a transition in half); the release is written at
//!   a later round.
//! - Every write carries the `resourceVersion` it read (or is a create), so of two
//!   replicas racing for one Lease one gets a 409 and leaves it; a failed round changes
//!   nothing (held shards stay acted on until their deadline).
//! - Losing a shard needs no hand-over: the daemon forgets the memory of plans it does
//!   not own, so whoever takes the shard (this replica again included) resumes from Git.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{Api, ListParams, PostParams};
use kube::core::ObjectMeta;

use super::decide::{LeaseDecision, LeaseState, after, decide};
use super::lease::{LeaseError, api_err, micro_time};
use super::shards::{
    ShardView, SlotAction, decide_shards, member_lease_name, shard_lease_name, shard_of,
};
use super::{Gate, LeaseConfig, OnStop, Stopped};

/// The label naming the group of Leases of one deployment (`--lease-name`).
pub const GROUP_LABEL: &str = "rollgate.dev/lease-group";
/// The label holding the shard count a Lease was written under.
pub const SHARDS_LABEL: &str = "rollgate.dev/shards";

/// Which shards this replica may act on, shared by the elector (writer) and the daemon
/// (reader): per shard, until when (microseconds since the epoch), and how many plans
/// of it are being reconciled right now.
#[derive(Debug)]
struct ShardTable {
    until: Vec<AtomicI64>,
    busy: Vec<AtomicU32>,
}

impl ShardTable {
    fn new(n: u32) -> Self {
        Self {
            until: (0..n).map(|_| AtomicI64::new(i64::MIN)).collect(),
            busy: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn acting(&self, shard: usize, now: DateTime<Utc>) -> bool {
        self.until
            .get(shard)
            .is_some_and(|u| now.timestamp_micros() < u.load(Ordering::SeqCst))
    }

    fn stop(&self, shard: usize) {
        self.until[shard].store(i64::MIN, Ordering::SeqCst);
    }
}

/// "May this replica reconcile this plan now?", cheap (no I/O) and cloneable: the
/// daemon asks it once per plan per pass.
#[derive(Debug, Clone)]
pub struct ShardGate(Arc<ShardTable>);

impl ShardGate {
    /// The shard count N.
    pub fn shards(&self) -> u32 {
        self.0.until.len() as u32
    }

    /// The shard `plan` belongs to.
    pub fn shard_of(&self, plan: &str) -> u32 {
        shard_of(plan, self.shards())
    }

    /// Whether this replica may act on `shard` at `now`.
    pub fn acting(&self, shard: u32, now: DateTime<Utc>) -> bool {
        self.0.acting(shard as usize, now)
    }

    /// Whether this replica may reconcile `plan` at `now`.
    pub fn owns(&self, plan: &str, now: DateTime<Utc>) -> bool {
        self.acting(self.shard_of(plan), now)
    }

    /// A claim on `plan`'s shard while it is reconciled, or `None` if this replica may
    /// not act on it. While any claim lives, the shard is not given back (its Lease is
    /// renewed instead), so drop it as soon as the plan's reconcile is over.
    pub fn claim(&self, plan: &str, now: DateTime<Utc>) -> Option<Claim> {
        let shard = self.shard_of(plan) as usize;
        if !self.0.acting(shard, now) {
            return None;
        }
        // Announce, then look again: the elector stops acting, then looks at `busy`
        // (both SeqCst), so one of the two sees the other.
        self.0.busy[shard].fetch_add(1, Ordering::SeqCst);
        if !self.0.acting(shard, now) {
            self.0.busy[shard].fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Claim(Some((Arc::clone(&self.0), shard))))
    }

    /// "Act on GitHub?" for the webhook worker: the holder of shard 0 does, on the
    /// real clock, so exactly one replica at a time answers pull requests.
    pub fn github_gate(&self) -> Gate {
        let table = Arc::clone(&self.0);
        Gate::new(move || table.acting(0, Utc::now()))
    }
}

/// A plan being reconciled under this replica's shard (released on drop).
#[derive(Debug)]
#[must_use = "the claim holds the shard only while it lives"]
pub struct Claim(Option<(Arc<ShardTable>, usize)>);

impl Claim {
    /// No sharding: every plan is this replica's.
    pub fn unsharded() -> Self {
        Self(None)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some((table, shard)) = self.0.take() {
            table.busy[shard].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What one round left this replica with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardRound {
    /// Shards this replica acts on after the round.
    pub acting: BTreeSet<u32>,
    /// Shards whose Lease it holds without acting (being given back once idle).
    pub draining: BTreeSet<u32>,
    /// Live replicas seen, this one included.
    pub replicas: usize,
    pub fair_share: usize,
    /// Writes that failed for another reason than a lost race (the rest went on).
    pub errors: Vec<String>,
}

/// The adapter: N shard Leases and N member Leases, one identity, rounds of
/// list-decide-write.
pub struct ShardElector {
    api: Api<Lease>,
    base: String,
    n: u32,
    identity: String,
    cfg: LeaseConfig,
    /// Per Lease name: the `resourceVersion` last read and when we first saw it.
    observed: HashMap<String, (String, DateTime<Utc>)>,
    /// Per shard: when the last successful acquire or renew started.
    renewed_at: Vec<Option<DateTime<Utc>>>,
    /// Per shard: held, but not acted on, until no claim is in flight.
    draining: Vec<bool>,
    table: Arc<ShardTable>,
}

impl std::fmt::Debug for ShardElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardElector")
            .field("base", &self.base)
            .field("n", &self.n)
            .field("identity", &self.identity)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// What to write into a Lease.
struct Write<'a> {
    name: &'a str,
    /// `None`: release (clear the holder).
    holder: Option<&'a str>,
    transitions: Option<i32>,
    acquired: bool,
}

impl ShardElector {
    /// Shards `0..n` (n ≥ 1) of the Lease group `namespace/base`, as `identity`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        base: &str,
        n: u32,
        identity: &str,
        cfg: LeaseConfig,
    ) -> Self {
        let n = n.max(1);
        Self {
            api: Api::namespaced(client, namespace),
            base: base.to_owned(),
            n,
            identity: identity.to_owned(),
            cfg,
            observed: HashMap::new(),
            renewed_at: vec![None; n as usize],
            draining: vec![false; n as usize],
            table: Arc::new(ShardTable::new(n)),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The daemon's view of what this elector holds.
    pub fn gate(&self) -> ShardGate {
        ShardGate(Arc::clone(&self.table))
    }

    fn state_of(&mut self, lease: &Lease, now: DateTime<Utc>) -> LeaseState {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let observed_at = match self.observed.get(&name) {
            Some((v, at)) if *v == version => *at,
            _ => {
                self.observed.insert(name, (version, now));
                now
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseState {
            holder: spec.holder_identity,
            lease_duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            transitions: spec.lease_transitions.unwrap_or(0),
            observed_at,
        }
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let lp = ListParams::default().labels(&format!("{GROUP_LABEL}={}", self.base));
        self.api
            .list(&lp)
            .await
            .map(|l| l.items)
            .map_err(|e| api_err(&format!("cannot list the leases of {}", self.base), e))
    }

    /// Create or replace (carrying the `resourceVersion` read) one Lease.
    async fn write(
        &self,
        w: Write<'_>,
        current: Option<&Lease>,
        now: DateTime<Utc>,
    ) -> Result<Lease, kube::Error> {
        let stamp = micro_time(now).map_err(|e| kube::Error::Service(e.to_string().into()))?;
        let duration = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(w.name.to_owned()),
                        labels: Some(
                            [
                                (
                                    crate::targets::kubernetes::MANAGED_BY.0.to_owned(),
                                    crate::targets::kubernetes::MANAGED_BY.1.to_owned(),
                                ),
                                (GROUP_LABEL.to_owned(), self.base.clone()),
                                (SHARDS_LABEL.to_owned(), self.n.to_string()),
                            ]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: w.holder.map(str::to_owned),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(stamp.clone()),
                        renew_time: Some(stamp),
                        lease_transitions: Some(w.transitions.unwrap_or(0)),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(lease) => {
                let mut lease = lease.clone();
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = w.holder.map(str::to_owned);
                spec.lease_duration_seconds = Some(duration);
                if w.acquired || spec.acquire_time.is_none() {
                    spec.acquire_time = Some(stamp.clone());
                }
                spec.renew_time = Some(stamp);
                if let Some(t) = w.transitions {
                    spec.lease_transitions = Some(t);
                }
                self.api
                    .replace(w.name, &PostParams::default(), &lease)
                    .await
            }
        }
    }

    /// Note a successful write's new version as seen now (our own write needs no wait).
    fn wrote(&mut self, lease: &Lease, now: DateTime<Utc>) {
        if let (Some(name), Some(v)) = (&lease.metadata.name, &lease.metadata.resource_version) {
            self.observed.insert(name.clone(), (v.clone(), now));
        }
    }

    /// Until when shard `i` may be acted on, if at all.
    fn until(&self, i: usize) -> Option<DateTime<Utc>> {
        match (self.renewed_at[i], self.draining[i]) {
            (Some(t), false) => Some(after(t, self.cfg.renew_deadline)),
            _ => None,
        }
    }

    fn publish(&self) -> BTreeSet<u32> {
        let mut acting = BTreeSet::new();
        for i in 0..self.n as usize {
            let micros = self.until(i).map_or(i64::MIN, |t| t.timestamp_micros());
            self.table.until[i].store(micros, Ordering::SeqCst);
            if micros != i64::MIN {
                acting.insert(i as u32);
            }
        }
        acting
    }

    /// One round at `now`: list, decide, write. A failed list changes nothing; a failed
    /// write changes only its own Lease's standing.
    pub async fn round(&mut self, now: DateTime<Utc>) -> Result<ShardRound, LeaseError> {
        let leases = self.list().await?;
        let names: BTreeSet<String> = leases
            .iter()
            .filter_map(|l| l.metadata.name.clone())
            .collect();
        self.observed.retain(|k, _| names.contains(k));
        let layout = self.n.to_string();
        let mut states: HashMap<String, (LeaseState, Lease)> = HashMap::new();
        let mut other_layout_live = false;
        for lease in leases {
            let state = self.state_of(&lease, now);
            let ours = lease
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SHARDS_LABEL))
                .is_some_and(|v| *v == layout);
            if ours {
                let name = lease.metadata.name.clone().unwrap_or_default();
                states.insert(name, (state, lease));
            } else if matches!(
                decide(Some(&state), &self.identity, now, &self.cfg),
                LeaseDecision::Follow { .. }
            ) && lease
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains("-shard-"))
            {
                other_layout_live = true;
            }
        }
        let shard_names: Vec<String> = (0..self.n)
            .map(|i| shard_lease_name(&self.base, i, self.n))
            .collect();
        let member_names: Vec<String> = (0..self.n)
            .map(|k| member_lease_name(&self.base, k, self.n))
            .collect();
        let pick = |names: &[String]| -> Vec<Option<LeaseState>> {
            names
                .iter()
                .map(|n| states.get(n).map(|(s, _)| s.clone()))
                .collect()
        };
        let (shard_states, member_states) = (pick(&shard_names), pick(&member_names));
        let d = decide_shards(
            ShardView {
                shards: &shard_states,
                members: &member_states,
                other_layout_live,
            },
            &self.identity,
            now,
            &self.cfg,
        );
        // Stop acting on every shard to give back before any write.
        for (i, a) in d.shards.iter().enumerate() {
            if *a == SlotAction::Release {
                self.table.stop(i);
            }
        }
        let mut errors = Vec::new();
        for (k, a) in d.members.iter().enumerate() {
            let current = states.get(&member_names[k]).map(|(_, l)| l);
            if let Err(e) = self.apply(&member_names[k], a, current, now).await {
                errors.push(e);
            }
        }
        for (i, a) in d.shards.iter().enumerate() {
            let current = states.get(&shard_names[i]).map(|(_, l)| l);
            // A shard still being reconciled is kept (not acted on) until it is idle.
            let busy = self.table.busy[i].load(Ordering::SeqCst) > 0;
            let action = match a {
                SlotAction::Release if busy => &SlotAction::Renew,
                a => a,
            };
            match self.apply(&shard_names[i], action, current, now).await {
                Ok(true) => {
                    self.renewed_at[i] = Some(now);
                    self.draining[i] = *a == SlotAction::Release;
                }
                Ok(false) => {
                    self.renewed_at[i] = None;
                    self.draining[i] = false;
                }
                Err(e) => {
                    if *a == SlotAction::Release {
                        // Acting stopped above; the Lease lapses if it stays ours.
                        self.renewed_at[i] = None;
                    }
                    errors.push(e);
                }
            }
        }
        let acting = self.publish();
        let draining = (0..self.n)
            .filter(|&i| self.draining[i as usize] && self.renewed_at[i as usize].is_some())
            .collect();
        Ok(ShardRound {
            acting,
            draining,
            replicas: d.replicas,
            fair_share: d.fair_share,
            errors,
        })
    }

    /// Carry out one action; `Ok(true)`: we hold the Lease now, `Ok(false)`: we do not
    /// (left alone, released, or a lost race), `Err`: the write failed otherwise.
    async fn apply(
        &mut self,
        name: &str,
        action: &SlotAction,
        current: Option<&Lease>,
        now: DateTime<Utc>,
    ) -> Result<bool, String> {
        let identity = self.identity.clone();
        let w = match action {
            SlotAction::Leave => return Ok(false),
            SlotAction::Renew => Write {
                name,
                holder: Some(&identity),
                transitions: None,
                acquired: false,
            },
            SlotAction::Acquire { transitions } | SlotAction::TakeOver { transitions, .. } => {
                Write {
                    name,
                    holder: Some(&identity),
                    transitions: Some(*transitions),
                    acquired: true,
                }
            }
            SlotAction::Release => Write {
                name,
                holder: None,
                transitions: None,
                acquired: false,
            },
        };
        let holds = w.holder.is_some();
        match self.write(w, current, now).await {
            Ok(lease) => {
                self.wrote(&lease, now);
                Ok(holds)
            }
            // Someone else wrote the Lease since we read it (or created it first).
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.observed.remove(name);
                Ok(false)
            }
            Err(e) => Err(api_err(&format!("cannot write lease {name}"), e).to_string()),
        }
    }

    /// Stop acting on every shard, then give back every Lease of this group this
    /// replica holds (SIGTERM, shutdown), but for a shard whose plan is still being
    /// reconciled: that one is left to lapse, so nobody acts on the plan while it is.
    /// Returns how many were released.
    pub async fn release_all(&mut self, now: DateTime<Utc>) -> Result<usize, LeaseError> {
        for i in 0..self.n as usize {
            self.table.stop(i);
            self.renewed_at[i] = None;
            self.draining[i] = false;
        }
        let busy: BTreeSet<String> = (0..self.n)
            .filter(|&i| self.table.busy[i as usize].load(Ordering::SeqCst) > 0)
            .map(|i| shard_lease_name(&self.base, i, self.n))
            .collect();
        let mut released = 0;
        for lease in self.list().await? {
            let mine = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            let Some(name) = lease
                .metadata
                .name
                .clone()
                .filter(|n| mine && !busy.contains(n))
            else {
                continue;
            };
            if self
                .apply(&name, &SlotAction::Release, Some(&lease), now)
                .await
                .is_ok()
            {
                released += 1;
            }
        }
        Ok(released)
    }
}

/// Called when a round gave this replica a shard to act on (wakes the daemon's loop, so
/// the plans of a shard taken over continue at once, not at the next interval).
pub type OnGain = Box<dyn Fn() + Send + Sync>;

/// The daemon's handle on a background campaign for shards: its [`ShardGate`], and on
/// drop (or SIGTERM) every Lease released.
pub struct Sharding {
    runtime: tokio::runtime::Runtime,
    gate: ShardGate,
    stop: Arc<tokio::sync::Notify>,
    standing_by: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    cfg: LeaseConfig,
}

impl std::fmt::Debug for Sharding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharding")
            .field("gate", &self.gate)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Sharding {
    /// Campaign for `n` shards of the Lease group `namespace/base` with a client built
    /// from the default configuration (retried until it can be built; until then no
    /// shard is held). SIGTERM releases every Lease and calls `on_stop`.
    pub fn connect(
        namespace: &str,
        base: &str,
        n: u32,
        cfg: LeaseConfig,
        on_stop: OnStop,
        on_gain: OnGain,
    ) -> std::io::Result<Self> {
        let n = n.max(1);
        let table = Arc::new(ShardTable::new(n));
        let campaigner = Campaigner::Connect {
            namespace: namespace.to_owned(),
            base: base.to_owned(),
            n,
            identity: super::identity(),
            cfg,
            table: Arc::clone(&table),
        };
        Ok(Self::spawn(
            super::runtime()?,
            campaigner,
            ShardGate(table),
            cfg,
            Some(on_stop),
            on_gain,
        ))
    }

    /// Campaign with `elector`, whose client must have been built inside `runtime`.
    pub fn start(runtime: tokio::runtime::Runtime, elector: ShardElector, on_gain: OnGain) -> Self {
        let (gate, cfg) = (elector.gate(), elector.cfg);
        let campaigner = Campaigner::Ready(Box::new(elector));
        Self::spawn(runtime, campaigner, gate, cfg, None, on_gain)
    }

    fn spawn(
        runtime: tokio::runtime::Runtime,
        campaigner: Campaigner,
        gate: ShardGate,
        cfg: LeaseConfig,
        on_stop: Option<OnStop>,
        on_gain: OnGain,
    ) -> Self {
        let stop = Arc::new(tokio::sync::Notify::new());
        let standing_by = Arc::new(AtomicBool::new(false));
        let task = runtime.spawn(campaign(
            campaigner,
            cfg,
            Arc::clone(&stop),
            Arc::clone(&standing_by),
            on_stop,
            on_gain,
        ));
        Self {
            runtime,
            gate,
            stop,
            standing_by,
            task: Some(task),
            cfg,
        }
    }

    pub fn gate(&self) -> ShardGate {
        self.gate.clone()
    }

    /// Whether a round has completed (the API is reachable): ready, even with no shard.
    pub fn standing_by(&self) -> bool {
        self.standing_by.load(Ordering::Acquire)
    }

    /// Stop the campaign and release every Lease held (waits at most a retry period).
    pub fn shutdown(mut self) {
        self.stop_and_wait();
    }

    fn stop_and_wait(&mut self) {
        for i in 0..self.gate.shards() as usize {
            self.gate.0.stop(i);
        }
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let wait = self.cfg.retry_period.max(Duration::from_secs(1));
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(wait, task).await });
        }
    }
}

impl Drop for Sharding {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}

enum Campaigner {
    Ready(Box<ShardElector>),
    /// Build the client (kubeconfig, or the in-cluster account) in the campaign,
    /// retrying; until it exists no shard is held.
    Connect {
        namespace: String,
        base: String,
        n: u32,
        identity: String,
        cfg: LeaseConfig,
        table: Arc<ShardTable>,
    },
}

async fn campaign(
    campaigner: Campaigner,
    cfg: LeaseConfig,
    stop: Arc<tokio::sync::Notify>,
    standing_by: Arc<AtomicBool>,
    on_stop: Option<OnStop>,
    on_gain: OnGain,
) {
    let stopped = |why| {
        if let Some(f) = &on_stop {
            f(why);
        }
    };
    let catch_term = on_stop.is_some();
    let terminate = async move {
        if catch_term {
            super::terminated().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(terminate);
    let mut elector = match campaigner {
        Campaigner::Ready(e) => *e,
        Campaigner::Connect {
            namespace,
            base,
            n,
            identity,
            cfg,
            table,
        } => {
            let mut last_error = String::new();
            loop {
                match kube::Client::try_default().await {
                    Ok(client) => {
                        let mut e = ShardElector::new(client, &namespace, &base, n, &identity, cfg);
                        e.table = table;
                        break e;
                    }
                    Err(e) => {
                        let e = format!("{e}");
                        if e != last_error {
                            tracing::error!(error = %e, "cannot build the kubernetes client for sharding; holding no shard");
                            last_error = e;
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(cfg.retry_period) => {}
                    () = stop.notified() => return,
                    () = &mut terminate => { stopped(Stopped::Terminated); return; }
                }
            }
        }
    };
    tracing::info!(identity = %elector.identity(), group = %elector.base, shards = elector.n, "campaigning for shards");
    let mut last_error = String::new();
    let mut last = ShardRound::default();
    let terminated = loop {
        // A round may not outlive the renew deadline of the shards it renews.
        let limit = cfg.renew_deadline / 2;
        let round = tokio::select! {
            r = tokio::time::timeout(limit, elector.round(Utc::now())) => r,
            () = stop.notified() => break false,
            () = &mut terminate => break true,
        };
        match round {
            Ok(Ok(r)) => {
                standing_by.store(true, Ordering::Release);
                last_error.clear();
                for e in &r.errors {
                    tracing::warn!(error = %e, "shard lease write failed");
                }
                if r.acting != last.acting || r.replicas != last.replicas {
                    tracing::info!(
                        acting = ?r.acting,
                        draining = ?r.draining,
                        replicas = r.replicas,
                        fair_share = r.fair_share,
                        "shards"
                    );
                }
                if r.acting.difference(&last.acting).next().is_some() {
                    on_gain();
                }
                crate::telemetry::global().set_leader(!r.acting.is_empty());
                last = r;
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(error = %e, "shard round failed; acting on held shards until their deadline");
                    last_error = e;
                }
            }
            Err(_) => tracing::warn!("shard round timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.retry_period) => {}
            () = stop.notified() => break false,
            () = &mut terminate => break true,
        }
    };
    crate::telemetry::global().set_leader(false);
    let _ = tokio::time::timeout(cfg.retry_period, elector.release_all(Utc::now())).await;
    if terminated {
        stopped(Stopped::Terminated);
    }
}
