//! Leader election over a `coordination.k8s.io/v1` Lease, so that several replicas of
//! `rollgate run` can stand by while exactly one writes to Git and to targets.
//!
//! ```text
//!   every retry period (2 s):  get Lease ──▶ decide (pure) ──▶ create / replace (with the
//!                                               │               resourceVersion read; 409 = lost)
//!                                               ▼
//!             Acquire · Renew · TakeOver ─▶ leader until now + renew deadline (10 s)
//!             Follow { holder, until }   ─▶ not leader; look again later
//! ```
//!
//! Three parts: `decide` is the pure core ([`decide()`]: the Lease as last read, who we
//! are, `now`, and the timings in; a [`LeaseDecision`] out); `lease` is the adapter that
//! reads and writes the Lease ([`LeaseElector`]); this module holds the configuration
//! (timings, identity, namespace) and the campaign ([`Leadership`]) that runs the
//! elector in the background for the daemon's loop, with its [`Gate`] and [`Stopped`].
//! The timings are client-go's defaults: lease 15 s, renew deadline 10 s, retry 2 s.
//!
//! Invariants:
//! - A process may act (write to Git, call a target) only while [`LeaseElector::is_leader`]
//!   holds: its last *successful* acquire or renew started less than the renew deadline
//!   ago (parts acting on their own thread, the GitHub worker, ask it through a
//!   [`Gate`] from [`Leadership::gate`]). The renew deadline is shorter than the lease
//!   duration, so a leader that cannot renew stops acting before anyone else may take
//!   over.
//! - Like client-go, a lease held by another process expires one lease duration after
//!   *this* process first saw its current version (its `resourceVersion`), never by
//!   comparing the holder's `renewTime` with our clock, so clock offsets between nodes
//!   cannot make two leaders.
//! - Every write carries the `resourceVersion` it read (or is a create): of two processes
//!   racing for the lease, one gets a 409 and follows.
//! - Every API call made here is listed in [`RBAC`] (checked against `deploy/kubernetes`
//!   by `tests/it/deploy_manifests.rs`).
//!
//! A new leader needs no hand-over: the state of every rollout is in Git, and the
//! daemon's first pass resumes from it (re-applying in-flight steps, which are idempotent).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

mod decide;
mod lease;
pub mod sharding;
pub mod shards;

pub use decide::{LeaseDecision, LeaseState, decide};
pub use lease::{LeaseElector, LeaseError, RBAC, Role};
pub use sharding::{Claim, ShardElector, ShardGate, ShardRound, Sharding};

/// Where a pod's namespace is mounted with its service account token.
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The timings of an election (client-go's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease holds after its holder's last renewal, as written into the Lease
    /// (`leaseDurationSeconds`): how long followers wait before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal. Shorter than
    /// `lease_duration`, so it stops before anyone else may take over.
    pub renew_deadline: Duration,
    /// How often every process reads (and the leader renews) the Lease.
    pub retry_period: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseConfig {
    /// Whether the timings keep the invariant: retry < renew deadline < lease duration.
    pub fn is_safe(&self) -> bool {
        self.retry_period < self.renew_deadline && self.renew_deadline < self.lease_duration
    }
}

/// This process's identity in the Lease: `POD_NAME` (the downward API) or the host
/// name, plus a random suffix, so two processes on one host (or a restarted container
/// in the same pod) never share one.
pub fn identity() -> String {
    use std::hash::{BuildHasher, Hasher};
    let pod = std::env::var("POD_NAME").ok();
    let host = std::env::var("HOSTNAME").ok().or_else(|| {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
    });
    // `RandomState` is seeded from the OS's randomness, differently in each process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    identity_from(pod.as_deref(), host.as_deref(), h.finish() as u32)
}

/// `<pod or host>_<suffix as 8 hex digits>`; `rollgate` when neither is known.
pub fn identity_from(pod: Option<&str>, host: Option<&str>, suffix: u32) -> String {
    let base = [pod, host]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("rollgate");
    format!("{base}_{suffix:08x}")
}

/// The namespace of the Lease by default: `POD_NAMESPACE` (the downward API), else the
/// service account's namespace file, else `default`.
pub fn default_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| std::fs::read_to_string(NAMESPACE_FILE).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// Why a background campaign stopped for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// This process led and could not renew within the renew deadline (or someone
    /// else holds the lease now). Its memory may be stale: restart to resume from Git.
    Lost,
    /// SIGTERM: the lease was released (if held); the process should exit.
    Terminated,
}

/// Called once when a campaign started by [`Leadership::connect`] stops for good.
pub type OnStop = Box<dyn Fn(Stopped) + Send + Sync>;

#[derive(Debug)]
struct Shared {
    /// Microseconds since the epoch until which this process may act.
    until: AtomicI64,
    /// A round has completed: the elector can reach the API and knows where it stands.
    standing_by: AtomicBool,
}

/// The daemon's handle: a campaign renewing the lease in the background (so a long
/// reconcile pass does not let the lease lapse), and a cheap [`Leadership::is_leader`]
/// for the loop to check before each pass. Dropping it stops the campaign and releases
/// the lease; that blocks briefly, so drop it outside async code.
pub struct Leadership {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    stop: Arc<tokio::sync::Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
    cfg: LeaseConfig,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("shared", &self.shared)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// "May this process act now?", cheap (no I/O) and shared: asked by parts of the daemon
/// with side effects of their own (the GitHub worker) before each one. Without
/// `--leader-elect`, [`Gate::always`].
#[derive(Clone)]
pub struct Gate(Arc<dyn Fn() -> bool + Send + Sync>);

impl Gate {
    /// The only replica: always the leader.
    pub fn always() -> Self {
        Self::new(|| true)
    }

    pub fn new(is_leader: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(is_leader))
    }

    pub fn is_leader(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Gate").field(&self.is_leader()).finish()
    }
}

/// A small runtime whose worker drives the campaign (and the client's tasks) while the
/// daemon's loop is busy.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rollgate-leader")
        .enable_all()
        .build()
}

enum Campaigner {
    Ready(Box<LeaseElector>),
    /// Build the client (kubeconfig, or the in-cluster account) in the campaign,
    /// retrying; until it exists this process is not leader.
    Connect {
        namespace: String,
        name: String,
        identity: String,
    },
}

impl Leadership {
    /// Campaign for `namespace/name` with a client built from the default
    /// configuration. If the client cannot be built, this process stays a follower and
    /// the campaign logs why and retries. `on_stop` is called when leadership is lost
    /// or SIGTERM arrives (after releasing the lease); SIGTERM is caught from now on.
    pub fn connect(
        namespace: &str,
        name: &str,
        cfg: LeaseConfig,
        on_stop: OnStop,
    ) -> std::io::Result<Self> {
        let campaigner = Campaigner::Connect {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity(),
        };
        Ok(Self::spawn(runtime()?, campaigner, cfg, Some(on_stop)))
    }

    /// Campaign with `elector`, whose client must have been built inside `runtime`.
    pub fn start(runtime: tokio::runtime::Runtime, elector: LeaseElector) -> Self {
        let cfg = elector.cfg;
        Self::spawn(runtime, Campaigner::Ready(Box::new(elector)), cfg, None)
    }

    fn spawn(
        runtime: tokio::runtime::Runtime,
        campaigner: Campaigner,
        cfg: LeaseConfig,
        on_stop: Option<OnStop>,
    ) -> Self {
        let shared = Arc::new(Shared {
            until: AtomicI64::new(i64::MIN),
            standing_by: AtomicBool::new(false),
        });
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = runtime.spawn(campaign(
            campaigner,
            cfg,
            Arc::clone(&shared),
            Arc::clone(&stop),
            on_stop,
        ));
        Self {
            runtime,
            shared,
            stop,
            task: Some(task),
            cfg,
        }
    }

    /// Whether this process may act at `now` (no I/O).
    pub fn is_leader(&self, now: DateTime<Utc>) -> bool {
        now.timestamp_micros() < self.shared.until.load(Ordering::Acquire)
    }

    /// [`Leadership::is_leader`] at the time of asking, for a part of the daemon that
    /// acts on its own thread (the GitHub worker). It says false once this handle is
    /// dropped or shut down.
    pub fn gate(&self) -> Gate {
        let shared = Arc::clone(&self.shared);
        Gate::new(move || Utc::now().timestamp_micros() < shared.until.load(Ordering::Acquire))
    }

    /// Whether the campaign has completed a round: this process is a working stand-by
    /// (or the leader), not one that cannot reach the API.
    pub fn standing_by(&self) -> bool {
        self.shared.standing_by.load(Ordering::Acquire)
    }

    /// How long a follower waits before looking again.
    pub fn retry_period(&self) -> Duration {
        self.cfg.retry_period
    }

    /// Stop the campaign and release the lease if held (waits at most a retry period).
    pub fn shutdown(mut self) {
        self.stop_and_wait();
    }

    fn stop_and_wait(&mut self) {
        self.shared.until.store(i64::MIN, Ordering::Release);
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let wait = self.cfg.retry_period.max(Duration::from_secs(1));
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(wait, task).await });
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut s) = signal(SignalKind::terminate()) {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// Publish who may act until when (for the loop and the `rollgate_leader` gauge).
fn publish(shared: &Shared, until: Option<DateTime<Utc>>) {
    let micros = until.map_or(i64::MIN, |t| t.timestamp_micros());
    shared.until.store(micros, Ordering::Release);
    crate::telemetry::global().set_leader(until.is_some_and(|t| Utc::now() < t));
}

async fn campaign(
    campaigner: Campaigner,
    cfg: LeaseConfig,
    shared: Arc<Shared>,
    stop: Arc<tokio::sync::Notify>,
    on_stop: Option<OnStop>,
) {
    let stopped = |why| {
        if let Some(f) = &on_stop {
            f(why);
        }
    };
    // Only a process that asked to be told of its end catches SIGTERM.
    let catch_term = on_stop.is_some();
    let terminate = async move {
        if catch_term {
            terminated().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(terminate);
    let mut elector = match campaigner {
        Campaigner::Ready(e) => *e,
        Campaigner::Connect {
            namespace,
            name,
            identity,
        } => {
            let mut last_error = String::new();
            loop {
                match kube::Client::try_default().await {
                    Ok(client) => {
                        break LeaseElector::new(client, &namespace, &name, &identity, cfg);
                    }
                    Err(e) => {
                        let e = format!("{e}");
                        if e != last_error {
                            tracing::error!(error = %e, "cannot build the kubernetes client for leader election; not acting as leader");
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
    tracing::info!(identity = %elector.identity(), lease = %elector.name, "campaigning for the lease");
    let mut last_error = String::new();
    let mut last_holder: Option<String> = None;
    loop {
        let now = Utc::now();
        let was_leader = elector.is_leader(now);
        // A leader's round may not outlive its deadline; a follower's gets as long.
        let limit = elector
            .leader_until()
            .filter(|_| was_leader)
            .and_then(|until| (until - now).to_std().ok())
            .unwrap_or(cfg.renew_deadline)
            .max(Duration::from_millis(100));
        let round = tokio::select! {
            r = tokio::time::timeout(limit, elector.try_acquire_or_renew(now)) => r,
            () = stop.notified() => break,
            () = &mut terminate => {
                publish(&shared, None);
                let _ = tokio::time::timeout(cfg.retry_period, elector.release(Utc::now())).await;
                stopped(Stopped::Terminated);
                return;
            }
        };
        match round {
            Ok(Ok(role)) => {
                shared.standing_by.store(true, Ordering::Release);
                last_error.clear();
                match role {
                    Role::Leader { .. } if !was_leader => {
                        tracing::info!(identity = %elector.identity(), "acquired the lease: leading");
                    }
                    Role::Follower { holder } if holder != last_holder => {
                        tracing::info!(holder = holder.as_deref().unwrap_or("?"), "following");
                        last_holder = holder;
                    }
                    _ => {}
                }
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(error = %e, leader = was_leader, "lease round failed");
                    last_error = e;
                }
            }
            Err(_) => {
                tracing::warn!(leader = was_leader, "lease round timed out");
            }
        }
        let now = Utc::now();
        publish(&shared, elector.leader_until());
        if was_leader && !elector.is_leader(now) {
            tracing::error!(identity = %elector.identity(), "lost the lease: no renewal within the renew deadline, or another holder");
            stopped(Stopped::Lost);
            if on_stop.is_some() {
                return;
            }
        }
        // Wake in time to notice a deadline passing, at the latest after a retry period.
        let wait = elector
            .leader_until()
            .and_then(|until| (until - now).to_std().ok())
            .map_or(cfg.retry_period, |d| d.min(cfg.retry_period));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.notified() => break,
            () = &mut terminate => {
                publish(&shared, None);
                let _ = tokio::time::timeout(cfg.retry_period, elector.release(Utc::now())).await;
                stopped(Stopped::Terminated);
                return;
            }
        }
    }
    // Stopped by the handle: stop acting, then give the lease up.
    publish(&shared, None);
    let _ = tokio::time::timeout(cfg.retry_period, elector.release(Utc::now())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_client_go_s_and_keep_the_deadline_before_the_expiry() {
        let cfg = LeaseConfig::default();
        assert_eq!(cfg.lease_duration, Duration::from_secs(15));
        assert_eq!(cfg.renew_deadline, Duration::from_secs(10));
        assert_eq!(cfg.retry_period, Duration::from_secs(2));
        assert!(cfg.is_safe());
        assert!(
            !LeaseConfig {
                renew_deadline: Duration::from_secs(15),
                ..cfg
            }
            .is_safe()
        );
    }

    #[test]
    fn identities_prefer_the_pod_name_and_differ_by_suffix() {
        assert_eq!(
            identity_from(Some("rollgate-7d9f-abcde"), Some("node-1"), 0xbeef),
            "rollgate-7d9f-abcde_0000beef"
        );
        assert_eq!(identity_from(None, Some("laptop\n"), 1), "laptop_00000001");
        assert_eq!(identity_from(Some(""), None, 2), "rollgate_00000002");
        assert_ne!(
            identity_from(None, Some("h"), 1),
            identity_from(None, Some("h"), 2)
        );
        assert_ne!(identity(), identity(), "two processes on one host differ");
    }
}
