//! The Kubernetes target: one cluster connection, and the rollout implementation that
//! the plan's workload kind picks, in one place ([`KubernetesTarget::for_plan`]): a
//! `kubernetes` workload goes to [`Deployments`], a `knative` one to
//! [`KnativeTarget`](super::knative::KnativeTarget). The two share one [`Connection`]
//! (the kube client and the small runtime their calls block on) and know nothing of
//! each other; `KubernetesTarget` only routes, so a new kind of cluster workload is a
//! new `Target` and one more arm there, never a test in every method.
//!
//! Files under `kubernetes/`: `deployments.rs` (the Deployments target: promotion,
//! rollback, health), `ownership.rs` (what rollgate creates, refuses to adopt, and
//! deletes), `traffic.rs` (Gateway API weights and replica-ratio splits),
//! `baseline.rs` (the fresh baseline's Deployment),
//! `readiness.rs` (the readiness gate on traffic and the drift memory), `blue_green.rs`
//! (the selector switch and the preview's retirement), and the pure readers
//! `deployment.rs` and `route.rs`.
//!
//! **Deployments**: a canary Deployment next to the stable one, traffic split by
//! Gateway API weights or by replica counts.
//!
//! ```text
//!   HTTPRoute rule N ──┬── weight 100-w ──▶ Service <svc>         ──▶ Deployment <dep>         (stable, not ours)
//!                      └── weight w     ──▶ Service <svc>-canary  ──▶ Deployment <dep>-canary  (rollgate-owned)
//! ```
//!
//! rollgate *creates and owns* `<deployment>-canary` (a copy of the stable Deployment
//! with the artifact as the image of the named container) and `<service>-canary`, both
//! labelled `app.kubernetes.io/managed-by: rollgate`. In Gateway API mode the canary is
//! sized by its weight (`canaryScale: proportional`, the default): ceil(total × weight / 100)
//! replicas, at least one, grown before its traffic moves and shrunk after it left
//! (`canaryScale: full`: a full copy). It only *patches* what it does not
//! own: the stable Deployment's image and replicas (a JSON Patch guarded by a `test` of
//! the container's name), and the `backendRefs` of one rule of one HTTPRoute. The
//! canary objects and the route are written by server-side apply with field manager
//! `rollgate`. Every write is computed from what was just read, so re-running any step
//! converges to the same objects.
//!
//! Invariants: the stable Deployment is read, copied and patched only when it carries
//! the opt-in label `rollgate.dev/managed: "true"` ([`OPT_IN`]; otherwise every step
//! fails with the reason and nothing is written); an object without the managed-by
//! label is never deleted nor overwritten (`start_candidate` refuses to adopt a foreign
//! `<deployment>-canary` or `<service>-canary`, before writing anything); traffic goes
//! back to the stable version *before* canary objects are deleted; a route with no
//! candidate backendRef is at rest and never written; every API call used is listed in
//! [`RBAC`], which `tests/it/deploy_manifests.rs` compares to `deploy/kubernetes`.
//!
//! **Traffic never moves to a candidate that is not ready.** A weight (a route weight,
//! the stable giving up replicas in replica-ratio mode, a blue-green switch) moves
//! towards the candidate only once its ready replicas of the current generation cover
//! the share: ceil(total × weight / 100), at least one. Until then `set_weight` leaves
//! the traffic where it is (and succeeds: the step is asked for, not refused) and
//! `health` says `Progressing`; each `health` pass moves the weight as soon as the
//! replicas are ready. A candidate short of them for the plan's `progressDeadline` is
//! `Unhealthy` with the reason, so the stage fails even where no controller ever writes
//! `ProgressDeadlineExceeded`. Moving traffic *away* from the candidate is never held.
//!
//! **Drift is repaired.** rollgate owns the traffic fields of a rollout in flight: the
//! two weights of its route rule, the active Service's selector during a blue-green
//! switch, and the replicas of both Deployments in replica-ratio mode. `health` reads
//! them on every pass; when they differ from the step (a GitOps tool re-applied the
//! route, a human edited the selector), it writes them again (the route by a forced
//! server-side apply under field manager `rollgate`) and reports `Progressing` until a
//! pass reads them back, so traffic that is not where Git says is never reported as
//! serving. Each drift is logged once, as a warning, and its end once.
//!
//! HTTPRoute `spec.rules` and `backendRefs` are declared `x-kubernetes-list-type: atomic`
//! in the Gateway API CRDs, so an apply cannot own just the weights: rollgate applies the
//! whole `rules` list it has just read, with only the two weights (and the canary
//! backendRef) changed, and the `resourceVersion` it read, so a concurrent edit makes the
//! apply fail with a conflict instead of being lost; the route is then read again and
//! the rules recomputed (a few times, then a `Conflict` error: the daemon decides again
//! on its next pass).
//!
//! **Header routes and mirrors** (issue #19, Gateway API mode only) go into the same
//! rules by the same writer: a rule of rollgate's named `rollgate-<plan>-header`, right
//! before the weighted rule, whose matches are the weighted rule's narrowed by the
//! step's header and cookie conditions, with the canary Service as its only backend; and
//! a `RequestMirror` filter (with `percent`) to the canary Service on the weighted rule.
//! Foreign rules and filters are never changed; both go at promotion and rollback with
//! the canary backendRef, and `health` repairs them like the weights (`route.rs` has the
//! rule's shape and why it takes precedence).
//!
//! ```text
//!   rule rollgate-<plan>-header (matches ∧ headers) ──────────────▶ Service <svc>-canary
//!   HTTPRoute rule N ── filters: [..., RequestMirror percent p ──▶ <svc>-canary]
//!                    ├── weight 100-w ──▶ Service <svc>
//!                    └── weight w     ──▶ Service <svc>-canary
//! ```
//!
//! **A fresh baseline** (issue #19, `baseline: fresh`; see `baseline.rs`):
//! `<deployment>-baseline`, a copy of the stable Deployment as it runs (the stable
//! artifact), tracked `rollgate.dev/track: baseline`, with the canary's replicas. In
//! replica-ratio mode they are taken from the stable's, so the replica split is
//! w : w : 100-2w; with a route, its pods carry `<value>-baseline` labels,
//! `<service>-baseline` (rollgate's) selects them, and the rule's backendRefs weigh
//! stable 100-2w, canary w, baseline w. Created by `set_routing`, deleted when the
//! routing drops it, at promotion and at rollback (replica ratio: its replicas given
//! back to the stable first; route: its backendRef removed first, then its Service).
//!
//! **Blue-green** (`strategy.blueGreen`) uses the same machinery with `-preview` names:
//! `<deployment>-preview` is a full-size copy running the artifact and `<service>-preview`
//! selects it, so checks can reach it before any user does. The switch is either the
//! route (weights 0 → 100 on the preview's backendRef, when the workload names a
//! `route`) or, without a route, the **active Service's selector**: its values for the
//! stable Deployment's selector keys become the preview's (`app: web` → `app:
//! web-preview`), by a JSON Patch guarded by a `test` of the selector it read. The
//! original selector is kept as an annotation on the preview Deployment, so a switch
//! back after a crash restores exactly what was there. Promotion updates the stable
//! Deployment while traffic is on the preview, waits until it is available, switches
//! back, and deletes the preview once `scaleDownDelay` has passed (recorded as an
//! annotation, so the delay survives a restart); rollback switches back at once, which
//! is instant because the stable Deployment was never touched.
//!
//! The `Target` trait is synchronous: the [`Connection`] owns a small current-thread
//! tokio runtime, and both targets block on it for each call.

use std::sync::Arc;
use std::time::Duration;

use kube::core::{ApiResource, GroupVersionKind, ObjectMeta};

mod baseline;
mod blue_green;
mod deployment;
mod deployments;
pub mod jobs;
mod ownership;
mod readiness;
mod route;
mod traffic;

pub use deployment::{Rollout, canary_replicas, needed_ready, ready_replicas, rollout_of};
pub use deployments::Deployments;
pub use route::{
    baseline_share, header_match, header_rule_name, normalized, ref_weight, regex_escape,
    route_weights, routing_shown, rule_index, rules_with_baseline, rules_with_routing,
    rules_with_weight,
};

use deployments::{Cluster, Observed};
use readiness::Share;

use super::knative::KnativeTarget;
use super::{Desired, Target, TargetError};
use crate::engine::{Measurement, TargetHealth};
use crate::model::Plan;
use crate::model::plan::{Routing, Workload};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "rollgate";
/// The label that marks an object rollgate created (and may therefore delete).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rollgate");
/// The label a stable Deployment must carry before rollgate reads, copies or patches
/// it: its owner's consent. A label, not an annotation, so that `kubectl get deploy -A
/// -l rollgate.dev/managed=true` lists everything rollgate may touch.
pub const OPT_IN: (&str, &str) = ("rollgate.dev/managed", "true");
/// Added to the canary's pods, selector and Service selector.
pub const TRACK: (&str, &str) = ("rollgate.dev/track", "canary");
/// On the canary Deployment: the artifact it runs.
pub const ARTIFACT_ANNOTATION: &str = "rollgate.dev/artifact";
/// On the canary Deployment: the total replicas to keep in replica-ratio mode.
pub const TOTAL_ANNOTATION: &str = "rollgate.dev/total-replicas";

/// On the fresh baseline's Deployment, pods and selector (issue #19), as [`TRACK`] on
/// the canary's: how its pods are told apart from the stable ones.
pub const BASELINE_TRACK: (&str, &str) = ("rollgate.dev/track", "baseline");
/// Suffix of the fresh baseline's Deployment name (`<deployment>-baseline`).
pub const BASELINE_SUFFIX: &str = "-baseline";

/// Suffix of the canary Deployment and Service names.
pub const CANARY_SUFFIX: &str = "-canary";
/// Suffix of the blue-green preview Deployment and Service names.
pub const PREVIEW_SUFFIX: &str = "-preview";
/// On the preview Deployment: the active Service's selector before any switch (JSON).
pub const ACTIVE_SELECTOR_ANNOTATION: &str = "rollgate.dev/active-selector";
/// On the preview Deployment after promotion: when it may be deleted (RFC 3339).
pub const SCALE_DOWN_AT_ANNOTATION: &str = "rollgate.dev/scale-down-at";

/// Every API call this target makes, as (apiGroup, resource, verbs). The code below
/// uses exactly these; `deploy/kubernetes` grants exactly these (checked by a test).
/// A server-side apply is a PATCH, but the API server authorizes an apply of an absent
/// object as `create` too (as well as `patch`), so every kind rollgate creates by apply
/// needs both.
/// - Deployments: `get` (stable, canary), `create` and `patch` (apply the canary or
///   preview, which creates it; `patch` alone: stable image and replicas, canary
///   replicas, preview annotations), `delete` (canary).
/// - Services: `get` (stable selector, canary, baseline), `create` and `patch` (apply
///   the canary, preview or baseline Service, which creates it; `patch` alone: the
///   active Service's selector in a blue-green switch), `delete` (canary, baseline).
/// - HTTPRoutes: `get` (rules), `patch` (apply rules with new weights; the route is the
///   user's and must exist, so this apply never creates it).
pub const RBAC: &[(&str, &str, &[&str])] = &[
    ("apps", "deployments", &["get", "create", "patch", "delete"]),
    ("", "services", &["get", "create", "patch", "delete"]),
    ("gateway.networking.k8s.io", "httproutes", &["get", "patch"]),
];

/// How long `promote` waits for the stable Deployment to roll out, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub promote_wait: Duration,
    pub poll: Duration,
    /// Upper bound on any single API call.
    pub call_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            promote_wait: Duration::from_secs(300),
            poll: Duration::from_secs(2),
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// One cluster, shared by the targets that run rollouts on it: the client, and the
/// current-thread runtime its calls block on (the `Target` trait is synchronous).
pub struct Connection {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Use `client`, which must have been built inside `runtime` (its tasks run there).
    pub fn new(runtime: tokio::runtime::Runtime, client: kube::Client) -> Arc<Self> {
        Arc::new(Self { runtime, client })
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Run `fut` on the connection's runtime.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.runtime.block_on(fut)
    }

    /// Start a task on the runtime; it runs while a target is blocked on a call.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(fut)
    }
}

/// A Kubernetes cluster as a rollout target: routes each plan to the target of its
/// workload kind, on one shared [`Connection`].
pub struct KubernetesTarget {
    connection: Arc<Connection>,
    deployments: Deployments,
    knative: KnativeTarget,
}

impl std::fmt::Debug for KubernetesTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesTarget")
            .field("deployments", &self.deployments)
            .field("knative", &self.knative)
            .finish_non_exhaustive()
    }
}

/// A small runtime for the blocking calls of one target.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

impl KubernetesTarget {
    /// Connect with the default configuration (kubeconfig, or the in-cluster account).
    pub fn connect() -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let runtime = runtime().context("cannot start the kubernetes runtime")?;
        let client = runtime
            .block_on(kube::Client::try_default())
            .context("cannot configure the kubernetes client")?;
        Ok(Self::new(runtime, client))
    }

    /// Connect through the kubeconfig at `path` (or the default one when `None`),
    /// using `context` (or its current context): what a `kubernetes` target in
    /// `rollgate.yaml` names.
    pub fn from_kubeconfig(
        path: Option<&std::path::Path>,
        context: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::from_kubeconfig_as(path, context, None)
    }

    /// [`Self::from_kubeconfig`], every request of this target impersonating `user`
    /// (`system:serviceaccount:NS:NAME`: with that account's groups too, so the calls
    /// carry exactly the rights RBAC gives the account). What the opt-in real-cluster
    /// suites use to run the target with `deploy/`'s rights while their own setup keeps
    /// the kubeconfig's user.
    pub fn from_kubeconfig_as(
        path: Option<&std::path::Path>,
        context: Option<&str>,
        user: Option<&str>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let runtime = runtime().context("cannot start the kubernetes runtime")?;
        let options = kube::config::KubeConfigOptions {
            context: context.map(str::to_owned),
            ..Default::default()
        };
        // A named context that the kubeconfig lacks is said as such (kube's own error
        // reads "failed to load current context", as if none had been named).
        if let Some(wanted) = context {
            let (read, place) = match path {
                Some(p) => (
                    kube::config::Kubeconfig::read_from(p),
                    p.display().to_string(),
                ),
                None => (
                    kube::config::Kubeconfig::read(),
                    std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".to_owned()),
                ),
            };
            if let Ok(kc) = read
                && !kc.contexts.iter().any(|c| c.name == wanted)
            {
                let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
                anyhow::bail!(
                    "kubeconfig context `{wanted}` is not in {place} (contexts: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
            }
        }
        let client = runtime.block_on(async {
            let config = match path {
                Some(path) => {
                    let kubeconfig = kube::config::Kubeconfig::read_from(path)
                        .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                    kube::Config::from_custom_kubeconfig(kubeconfig, &options).await
                }
                None => kube::Config::from_kubeconfig(&options).await,
            }
            .context("cannot load the kubernetes configuration")?;
            let config = match user {
                Some(user) => impersonating(config, user)?,
                None => config,
            };
            kube::Client::try_from(config).context("cannot configure the kubernetes client")
        })?;
        Ok(Self::new(runtime, client))
    }

    /// Use `client`, which must have been built inside `runtime` (its tasks run there).
    pub fn new(runtime: tokio::runtime::Runtime, client: kube::Client) -> Self {
        Self::on(Connection::new(runtime, client))
    }

    /// Both targets on `connection`, with the default [`Timing`].
    pub fn on(connection: Arc<Connection>) -> Self {
        Self {
            deployments: Deployments::new(Arc::clone(&connection)),
            knative: KnativeTarget::new(Arc::clone(&connection)),
            connection,
        }
    }

    pub fn with_timing(self, timing: Timing) -> Self {
        Self {
            deployments: self.deployments.with_timing(timing),
            knative: self.knative.with_timing(timing),
            connection: self.connection,
        }
    }

    /// The shared connection (tests build a target of one kind on it).
    pub fn connection(&self) -> Arc<Connection> {
        Arc::clone(&self.connection)
    }

    pub fn client(&self) -> kube::Client {
        self.connection.client()
    }

    /// Run `fut` on the target's runtime (tests use it to look at the cluster).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.connection.block_on(fut)
    }

    /// Start a task on the target's runtime; it runs while the target is blocked on a call.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.connection.spawn(fut)
    }

    /// The target of the plan's workload kind: the one place the kind is looked at. A
    /// plan of another kind (`local`, `lambda`) goes to [`Deployments`], which refuses
    /// it with the reason.
    pub fn for_plan(&mut self, plan: &Plan) -> &mut dyn Target {
        match plan.workload {
            Workload::Knative(_) => &mut self.knative,
            _ => &mut self.deployments,
        }
    }
}

/// `config` with every request impersonating `user` (the `Impersonate-User` and
/// `Impersonate-Group` headers; the kubeconfig's own credentials must be allowed to
/// impersonate). A ServiceAccount (`system:serviceaccount:NS:NAME`) also takes the
/// groups the API server gives its tokens (`system:serviceaccounts`,
/// `system:serviceaccounts:NS`, `system:authenticated`), so RBAC bound to them applies.
pub fn impersonating(mut config: kube::Config, user: &str) -> anyhow::Result<kube::Config> {
    let groups = match user.strip_prefix("system:serviceaccount:") {
        Some(rest) => {
            let ns = match rest.split_once(':') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(':') => ns,
                _ => anyhow::bail!(
                    "cannot impersonate `{user}`: a ServiceAccount is system:serviceaccount:NAMESPACE:NAME"
                ),
            };
            Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".to_owned(),
            ])
        }
        None if user.is_empty() => anyhow::bail!("cannot impersonate an empty user name"),
        // Another user: its groups are not ours to guess (the API server adds
        // system:authenticated).
        None => None,
    };
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = groups;
    Ok(config)
}

/// The `ApiResource` of `gateway.networking.k8s.io/v1` HTTPRoute.
pub fn http_route() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ))
}

pub fn canary_name(name: &str) -> String {
    format!("{name}{CANARY_SUFFIX}")
}

/// Whether `meta` carries rollgate's managed-by label.
pub fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

/// Whether `meta` carries the opt-in label [`OPT_IN`].
pub fn opted_in(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(OPT_IN.0))
        .is_some_and(|v| v == OPT_IN.1)
}

/// `what: cause`, the cause once (kube's `Display` of an API error repeats it as `Debug`).
pub(super) fn api_err(what: &str) -> impl FnOnce(kube::Error) -> TargetError + '_ {
    move |e| match e {
        kube::Error::Api(s) => {
            let message = format!("{what}: {} ({} {})", s.message.trim_end(), s.code, s.reason);
            match s.code {
                409 => TargetError::conflict(message),
                // Timeout, too many requests: try again later.
                408 | 429 => TargetError::unreachable(message),
                // Unauthorized, forbidden, not found, invalid: a human has to act.
                400..=499 => TargetError::refused(message),
                _ => TargetError::unreachable(message),
            }
        }
        // No answer from the API server (connection, TLS, timeout).
        e => TargetError::unreachable(format!("{what}: {e}")),
    }
}

impl Target for KubernetesTarget {
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.for_plan(plan).start_candidate(plan, artifact)
    }

    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError> {
        self.for_plan(plan).set_weight(plan, weight)
    }

    fn set_routing(&mut self, plan: &Plan, routing: &Routing) -> Result<(), TargetError> {
        self.for_plan(plan).set_routing(plan, routing)
    }

    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.for_plan(plan).promote(plan, artifact)
    }

    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError> {
        self.for_plan(plan).rollback(plan, stable)
    }

    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth {
        self.for_plan(plan).health(plan, desired)
    }

    /// The cluster keeps its state while the daemon is down, whatever the workload.
    fn keeps_state_across_restarts(&self) -> bool {
        true
    }

    fn resume(
        &mut self,
        plan: &Plan,
        stable: Option<&str>,
        candidate: &str,
        weight: u8,
    ) -> Result<(), TargetError> {
        self.for_plan(plan).resume(plan, stable, candidate, weight)
    }

    fn readiness(&mut self, plan: &Plan) -> Result<Measurement, String> {
        self.for_plan(plan).readiness(plan)
    }
}
