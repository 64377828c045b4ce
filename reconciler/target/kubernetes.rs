//! The Kubernetes target: a canary Deployment next to the stable one, traffic split by
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
//! sized by its weight ([`GATEWAY_CANARY_SCALING`]): ceil(total × weight / 100)
//! replicas, at least one, grown before its traffic moves and shrunk after it left. It only *patches* what it does not
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
//! [`RBAC`], which `tests/deploy_manifests.rs` compares to `deploy/kubernetes`.
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
//! apply fail with a conflict (the rollout holds and retries) instead of being lost.
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
//! The `Target` trait is synchronous: the target owns a small current-thread tokio
//! runtime and blocks on it for each call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::{ApiResource, GroupVersionKind, ObjectMeta};
use serde_json::{Value, json};

mod blue_green;
mod deployment;
mod route;

pub use deployment::{Rollout, canary_replicas, needed_ready, ready_replicas, rollout_of};
pub use route::{route_weights, rules_with_weight};

use deployment::{container_name, image_of, replicas_of};

/// How long before the plan's `progressDeadline` the target gives up on a candidate
/// that is not ready (a tenth of the deadline, at most this): the engine fails a stage
/// still progressing at that deadline with a bare "progressDeadline exceeded", and the
/// target's reason (which Deployment, how many ready of how many) is the useful one.
const DEADLINE_LEAD: Duration = Duration::from_secs(5);

use super::{Desired, Target, TargetError};
use crate::engine::{Measurement, TargetHealth};
use crate::model::Plan;
use crate::model::plan::{BlueGreen, KubernetesWorkload, Strategy, Traffic, Workload};

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
/// How a canary Deployment is sized in Gateway API mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryScaling {
    /// ceil(total × weight / 100) replicas, at least one: it grows before its traffic
    /// moves and shrinks after the traffic has left (Argo Rollouts'
    /// `dynamicStableScale`, without scaling the stable down).
    Proportional,
    /// A full copy of the stable Deployment, whatever the weight.
    Full,
}

/// The Gateway API canary's sizing. A constant until plans can choose it: that needs a
/// plan field (`workload.kubernetes.canaryScale: proportional | full` in the wire and
/// model types, the schema and the validation), which this target does not own.
pub const GATEWAY_CANARY_SCALING: CanaryScaling = CanaryScaling::Proportional;

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
/// - Services: `get` (stable selector, canary), `create` and `patch` (apply the canary
///   or preview, which creates it; `patch` alone: the active Service's selector in a
///   blue-green switch), `delete` (canary).
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

/// A Kubernetes cluster as a rollout target.
pub struct KubernetesTarget {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    timing: Timing,
    memory: Mutex<Memory>,
}

/// What the target remembers between calls (not across restarts: after one, a wait
/// starts again, and the engine's own `progressDeadline`, kept in Git, still bounds it).
#[derive(Debug, Default)]
struct Memory {
    /// Since when each candidate (by namespace, name and uid) has been short of the
    /// ready replicas its weight needs.
    unready_since: HashMap<String, Instant>,
    /// The traffic drift last logged for each workload (namespace and candidate name),
    /// so a drift is logged once, not on every pass.
    drift: HashMap<String, String>,
}

impl std::fmt::Debug for KubernetesTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesTarget")
            .field("timing", &self.timing)
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
        Self {
            runtime,
            client,
            timing: Timing::default(),
            memory: Mutex::default(),
        }
    }

    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Run `fut` on the target's runtime (tests use it to look at the cluster).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.runtime.block_on(fut)
    }

    /// Start a task on the target's runtime; it runs while the target is blocked on a call.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(fut)
    }

    /// The plan's Knative Service, when its workload is `knative` (same cluster, same client).
    fn knative<'a>(&self, plan: &'a Plan) -> Option<super::knative::Knative<'a>> {
        let Workload::Knative(w) = &plan.workload else {
            return None;
        };
        Some(super::knative::Knative {
            w,
            services: Api::namespaced_with(
                self.client.clone(),
                &w.namespace,
                &super::knative::service_resource(),
            ),
            revisions: Api::namespaced_with(
                self.client.clone(),
                &w.namespace,
                &super::knative::revision_resource(),
            ),
            call_timeout: self.timing.call_timeout,
        })
    }

    fn cluster<'a>(&'a self, plan: &'a Plan) -> Result<Cluster<'a>, TargetError> {
        let Workload::Kubernetes(w) = &plan.workload else {
            return Err(TargetError(format!(
                "plan {} has a {} workload; this target runs kubernetes workloads",
                plan.name,
                plan.workload.kind()
            )));
        };
        let mode = match &plan.strategy {
            Strategy::BlueGreen(bg) => Mode::BlueGreen(bg),
            Strategy::Canary { .. } => Mode::Canary,
        };
        Ok(Cluster {
            w,
            mode,
            deployments: Api::namespaced(self.client.clone(), &w.namespace),
            services: Api::namespaced(self.client.clone(), &w.namespace),
            routes: Api::namespaced_with(self.client.clone(), &w.namespace, &http_route()),
            timing: self.timing,
            deadline: plan.progress_deadline,
            memory: &self.memory,
        })
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
        kube::Error::Api(s) => TargetError(format!(
            "{what}: {} ({} {})",
            s.message.trim_end(),
            s.code,
            s.reason
        )),
        e => TargetError(format!("{what}: {e}")),
    }
}

/// Canary (weights over time) or blue-green (a full preview, then one switch).
#[derive(Debug, Clone, Copy)]
enum Mode<'a> {
    Canary,
    BlueGreen(&'a BlueGreen),
}

/// The plan's objects in one namespace, and the calls on them (all async).
struct Cluster<'a> {
    w: &'a KubernetesWorkload,
    mode: Mode<'a>,
    deployments: Api<Deployment>,
    services: Api<Service>,
    routes: Api<DynamicObject>,
    timing: Timing,
    /// The plan's `progressDeadline`: how long a candidate may stay short of the ready
    /// replicas its weight needs.
    deadline: Duration,
    memory: &'a Mutex<Memory>,
}

/// How many ready replicas a candidate has, and how many its weight needs.
#[derive(Debug, Clone, Copy)]
struct Share {
    weight: u8,
    ready: i32,
    need: i32,
}

impl Share {
    fn of(canary: &Deployment, weight: u8) -> Self {
        let total = Cluster::total_of(canary).unwrap_or_else(|| replicas_of(canary));
        Self {
            weight,
            ready: ready_replicas(canary),
            need: needed_ready(total, weight),
        }
    }

    fn covered(&self) -> bool {
        self.ready >= self.need
    }
}

/// The traffic a step wants, compared with what the cluster shows.
enum Observed {
    AsDesired,
    /// What differs, in words.
    Differs(String),
    /// The traffic cannot be read as rollgate writes it (a route rule gone).
    Broken(String),
}

impl Cluster<'_> {
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, TargetError> {
        match tokio::time::timeout(self.timing.call_timeout, fut).await {
            Ok(r) => r.map_err(api_err(what)),
            Err(_) => Err(TargetError(format!("{what}: timed out"))),
        }
    }

    fn suffix(&self) -> &'static str {
        match self.mode {
            Mode::Canary => CANARY_SUFFIX,
            Mode::BlueGreen(_) => PREVIEW_SUFFIX,
        }
    }

    fn track(&self) -> (&'static str, &'static str) {
        match self.mode {
            Mode::Canary => TRACK,
            Mode::BlueGreen(_) => (TRACK.0, "preview"),
        }
    }

    /// The candidate Deployment: `<deployment>-canary` or `<deployment>-preview`.
    fn canary_deployment(&self) -> String {
        format!("{}{}", self.w.deployment, self.suffix())
    }

    /// The candidate Service: `<service>-canary` or `<service>-preview`.
    fn canary_service(&self) -> String {
        format!("{}{}", self.w.service, self.suffix())
    }

    /// Blue-green without a route: the switch is the active Service's selector.
    fn switches_selector(&self) -> bool {
        matches!(self.mode, Mode::BlueGreen(_)) && self.w.traffic == Traffic::ReplicaRatio
    }

    fn apply() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    /// The stable Deployment, refused unless it opted in ([`OPT_IN`]): every path that
    /// reads, copies or patches it comes through here, so a plan naming any other
    /// Deployment (`kube-system/coredns`) creates, patches and moves nothing.
    async fn stable(&self) -> Result<Deployment, TargetError> {
        let name = &self.w.deployment;
        let ns = &self.w.namespace;
        let stable = self
            .timed(
                &format!("cannot read deployment {name}"),
                self.deployments.get_opt(name),
            )
            .await?
            .ok_or_else(|| TargetError(format!("deployment {ns}/{name} does not exist")))?;
        if !opted_in(&stable.metadata) {
            let (k, v) = OPT_IN;
            return Err(TargetError(format!(
                "deployment {ns}/{name} does not carry the label {k}={v}; rollgate touches only Deployments that opt in (`kubectl -n {ns} label deployment {name} {k}={v}`)"
            )));
        }
        Ok(stable)
    }

    async fn canary(&self) -> Result<Option<Deployment>, TargetError> {
        let name = self.canary_deployment();
        self.timed(
            &format!("cannot read deployment {name}"),
            self.deployments.get_opt(&name),
        )
        .await
    }

    /// Labels on everything rollgate creates (never the opt-in: a copy is rollgate's,
    /// not a Deployment its owner opted in to be patched).
    fn owned_labels(&self, base: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
        let mut labels = base.cloned().unwrap_or_default();
        labels.remove(OPT_IN.0);
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        let (k, v) = self.track();
        labels.insert(k.into(), v.into());
        labels
    }

    /// The label values the canary's pods carry instead of the stable's, so the stable
    /// Service (gateway mode, blue-green) does not select them: `<value>-canary` (or
    /// `-preview`) for every key of the stable selector. In replica-ratio canary mode the
    /// stable Service must select both, so nothing is renamed.
    fn renamed(&self, stable: &Deployment) -> BTreeMap<String, String> {
        if self.w.traffic == Traffic::ReplicaRatio && matches!(self.mode, Mode::Canary) {
            return BTreeMap::new();
        }
        let suffix = self.suffix();
        stable
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, format!("{v}{suffix}")))
            .collect()
    }

    fn rename(
        &self,
        labels: Option<&BTreeMap<String, String>>,
        renamed: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut out = labels.cloned().unwrap_or_default();
        for (k, v) in renamed {
            if out.contains_key(k) {
                out.insert(k.clone(), v.clone());
            }
        }
        let (k, v) = self.track();
        out.insert(k.into(), v.into());
        out
    }

    /// Apply the canary Deployment (a copy of `stable` running `artifact`) and its Service.
    async fn start(&self, artifact: &str) -> Result<(), TargetError> {
        let stable = self.stable().await?;
        let existing = self.canary().await?;
        // Refuse before writing anything if either canary name is taken by someone else.
        let service = self.canary_service();
        if self
            .timed(
                &format!("cannot read service {service}"),
                self.services.get_opt(&service),
            )
            .await?
            .is_some_and(|s| !is_managed(&s.metadata))
        {
            return Err(TargetError(format!(
                "service {service} exists and was not created by rollgate; refusing to adopt it"
            )));
        }
        if let Some(c) = &existing
            && !is_managed(&c.metadata)
        {
            return Err(TargetError(format!(
                "deployment {} exists and was not created by rollgate; refusing to adopt it",
                self.canary_deployment()
            )));
        }
        let total = existing
            .as_ref()
            .and_then(|c| {
                c.metadata
                    .annotations
                    .as_ref()?
                    .get(TOTAL_ANNOTATION)?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| replicas_of(&stable));
        let replicas = match (&existing, &self.w.traffic, self.mode) {
            // Keep what set_weight chose; a re-run must not reset the split.
            (Some(c), _, _) => replicas_of(c),
            (None, Traffic::ReplicaRatio, Mode::Canary) => 0,
            (None, _, _) => self.size_for(total, 0).unwrap_or(total).max(1),
        };
        let mut annotations = BTreeMap::from([
            (ARTIFACT_ANNOTATION.to_owned(), artifact.to_owned()),
            (TOTAL_ANNOTATION.to_owned(), total.to_string()),
        ]);
        if self.switches_selector() {
            // The selector before any switch: kept from the first start (a re-run after
            // the switch must not record the switched one).
            let kept = existing
                .as_ref()
                .and_then(|c| {
                    c.metadata
                        .annotations
                        .as_ref()?
                        .get(ACTIVE_SELECTOR_ANNOTATION)
                })
                .cloned();
            let original = match kept {
                Some(v) => v,
                None => serde_json::to_string(&self.active_selector().await?.1)
                    .map_err(|e| TargetError(format!("cannot record the selector: {e}")))?,
            };
            annotations.insert(ACTIVE_SELECTOR_ANNOTATION.to_owned(), original);
        }
        let container = container_name(&stable, self.w.container.as_deref())?;
        let renamed = self.renamed(&stable);
        let Some(mut spec) = stable.spec.clone() else {
            return Err(TargetError(format!(
                "deployment {} has no spec",
                self.w.deployment
            )));
        };
        spec.replicas = Some(replicas);
        spec.selector.match_labels =
            Some(self.rename(spec.selector.match_labels.as_ref(), &renamed));
        spec.template.metadata = Some(ObjectMeta {
            labels: Some(
                self.rename(
                    spec.template
                        .metadata
                        .as_ref()
                        .and_then(|m| m.labels.as_ref()),
                    &renamed,
                ),
            ),
            annotations: spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            ..ObjectMeta::default()
        });
        if let Some(pod) = spec.template.spec.as_mut() {
            for c in &mut pod.containers {
                if c.name == container {
                    c.image = Some(artifact.to_owned());
                }
            }
        }
        let canary = Deployment {
            metadata: ObjectMeta {
                name: Some(self.canary_deployment()),
                namespace: Some(self.w.namespace.clone()),
                labels: Some(self.owned_labels(stable.metadata.labels.as_ref())),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        };
        let name = self.canary_deployment();
        self.timed(
            &format!("cannot apply deployment {name}"),
            self.deployments
                .patch(&name, &Self::apply(), &Patch::Apply(&canary)),
        )
        .await?;
        self.start_service(&renamed).await
    }

    /// The plan's Service (the stable one; in blue-green, the active one). It is the
    /// user's: a missing Service is an error.
    async fn stable_service(&self) -> Result<Service, TargetError> {
        let name = &self.w.service;
        self.timed(
            &format!("cannot read service {name}"),
            self.services.get_opt(name),
        )
        .await?
        .ok_or_else(|| {
            TargetError(format!(
                "service {}/{name} does not exist",
                self.w.namespace
            ))
        })
    }

    async fn start_service(&self, renamed: &BTreeMap<String, String>) -> Result<(), TargetError> {
        let stable = self.stable_service().await?;
        let canary_name = self.canary_service();
        let existing = self
            .timed(
                &format!("cannot read service {canary_name}"),
                self.services.get_opt(&canary_name),
            )
            .await?;
        if let Some(c) = &existing
            && !is_managed(&c.metadata)
        {
            return Err(TargetError(format!(
                "service {canary_name} exists and was not created by rollgate; refusing to adopt it"
            )));
        }
        let spec = stable.spec.unwrap_or_default();
        let canary = Service {
            metadata: ObjectMeta {
                name: Some(canary_name.clone()),
                namespace: Some(self.w.namespace.clone()),
                labels: Some(self.owned_labels(stable.metadata.labels.as_ref())),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(self.rename(spec.selector.as_ref(), renamed)),
                ports: spec.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|mut p| {
                            p.node_port = None;
                            p
                        })
                        .collect()
                }),
                type_: Some("ClusterIP".into()),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        self.timed(
            &format!("cannot apply service {canary_name}"),
            self.services
                .patch(&canary_name, &Self::apply(), &Patch::Apply(&canary)),
        )
        .await?;
        Ok(())
    }

    /// Set the image and/or `spec.replicas` of the stable Deployment, which rollgate does
    /// not own: a JSON Patch that first tests the container's name at its index, so it
    /// changes exactly these fields or fails (no co-ownership through an apply, and no
    /// list replaced by a merge).
    async fn patch_stable(
        &self,
        image: Option<&str>,
        replicas: Option<i32>,
    ) -> Result<(), TargetError> {
        let name = &self.w.deployment;
        let stable = self.stable().await?;
        let mut ops = Vec::new();
        if let Some(image) = image {
            let container = container_name(&stable, self.w.container.as_deref())?;
            let index = stable
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.containers.iter().position(|c| c.name == container))
                .unwrap_or(0);
            if image_of(&stable, Some(&container)).as_deref() != Some(image) {
                let at = format!("/spec/template/spec/containers/{index}");
                ops.push(json!({ "op": "test", "path": format!("{at}/name"), "value": container }));
                ops.push(json!({ "op": "add", "path": format!("{at}/image"), "value": image }));
            }
        }
        if let Some(r) = replicas
            && r != replicas_of(&stable)
        {
            ops.push(json!({ "op": "add", "path": "/spec/replicas", "value": r }));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: Patch<()> = Patch::Json(
            serde_json::from_value(Value::Array(ops))
                .map_err(|e| TargetError(format!("cannot build a patch for {name}: {e}")))?,
        );
        self.timed(
            &format!("cannot patch deployment {name}"),
            self.deployments.patch(name, &Self::merge(), &patch),
        )
        .await?;
        Ok(())
    }

    /// The total replicas recorded on the canary (replica-ratio mode).
    fn total_of(canary: &Deployment) -> Option<i32> {
        canary
            .metadata
            .annotations
            .as_ref()?
            .get(TOTAL_ANNOTATION)?
            .parse()
            .ok()
    }

    /// Put `weight`% on the canary; `None` sends everything to stable and removes the
    /// canary from the route (replica mode: stable back to its total).
    async fn weigh(&self, weight: Option<u8>) -> Result<(), TargetError> {
        match &self.w.traffic {
            Traffic::GatewayRoute { route, rule } => {
                // Never point traffic at a Service that is not there (or not ours).
                if let Some(w) = weight.filter(|w| *w > 0) {
                    let name = self.canary_service();
                    let canary = self
                        .timed(
                            &format!("cannot read service {name}"),
                            self.services.get_opt(&name),
                        )
                        .await?;
                    if !canary.is_some_and(|c| is_managed(&c.metadata)) {
                        return Err(TargetError(format!(
                            "service {name} does not exist or is not rollgate's; start the candidate first"
                        )));
                    }
                    // Nor more of it at a candidate whose ready replicas do not cover it.
                    let canary = self.owned_canary().await?;
                    let share = Share::of(&canary, w);
                    // A proportional canary grows first; its new pods are not ready yet.
                    if let Some(size) = self.size_of(&canary, w)
                        && size > replicas_of(&canary)
                    {
                        self.scale_canary(size).await?;
                        self.defer(&canary, share);
                        return Ok(());
                    }
                    let (_, value) = self.read_route(route).await?;
                    let now = route_weights(&value, *rule, &self.w.service, &name)
                        .and_then(|(_, c)| c)
                        .unwrap_or(0);
                    if i64::from(w) > now && !share.covered() {
                        self.defer(&canary, share);
                        return Ok(());
                    }
                }
                self.weigh_route(route, *rule, weight).await?;
                // ... and shrinks once its traffic has left.
                if let Some(w) = weight
                    && let Some(canary) = self.canary().await?
                    && is_managed(&canary.metadata)
                    && let Some(size) = self.size_of(&canary, w)
                    && size < replicas_of(&canary)
                {
                    self.scale_canary(size).await?;
                }
                Ok(())
            }
            Traffic::ReplicaRatio if self.switches_selector() => self.switch(weight).await,
            Traffic::ReplicaRatio => {
                let Some(canary) = self.canary().await? else {
                    return match weight {
                        None => Ok(()),
                        Some(_) => Err(TargetError(format!(
                            "deployment {} does not exist; start the candidate first",
                            self.canary_deployment()
                        ))),
                    };
                };
                if !is_managed(&canary.metadata) {
                    return Err(TargetError(format!(
                        "deployment {} was not created by rollgate",
                        self.canary_deployment()
                    )));
                }
                let total = Self::total_of(&canary).unwrap_or_else(|| replicas_of(&canary));
                let c = canary_replicas(total, weight.unwrap_or(0));
                // Stable first when shrinking the canary; when growing it, the canary
                // first, and the stable gives up replicas only once the canary's are
                // ready (a later `health` pass finishes the step), so the ready total
                // never drops below `total`.
                let grow = c >= replicas_of(&canary);
                if !grow {
                    self.patch_stable(None, Some(total - c)).await?;
                }
                if weight.is_some() && c != replicas_of(&canary) {
                    self.scale_canary(c).await?;
                }
                if grow {
                    let share = Share::of(&canary, weight.unwrap_or(0));
                    // Just scaled: its pods are not ready yet.
                    if c != replicas_of(&canary) || !share.covered() {
                        self.defer(&canary, share);
                        return Ok(());
                    }
                    self.patch_stable(None, Some(total - c)).await?;
                }
                Ok(())
            }
        }
    }

    /// Params of the non-apply patches: scaling the canary (a merge patch of
    /// `spec.replicas`; an apply of only `replicas` would drop the rest of what our
    /// manager applied) and the guarded JSON Patch of the stable.
    fn merge() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        }
    }

    /// Set the candidate's `spec.replicas` (a merge patch: an apply of only `replicas`
    /// would drop the rest of what our manager applied).
    async fn scale_canary(&self, replicas: i32) -> Result<(), TargetError> {
        let name = self.canary_deployment();
        let patch = json!({ "spec": { "replicas": replicas } });
        self.timed(
            &format!("cannot scale deployment {name}"),
            self.deployments
                .patch(&name, &Self::merge(), &Patch::Merge(&patch)),
        )
        .await?;
        Ok(())
    }

    /// The replicas a canary of `total` runs at `weight`%, when it is sized by its
    /// weight (a proportional Gateway API canary); `None`: sized otherwise (full-size
    /// copy, blue-green preview, replica-ratio split).
    fn size_for(&self, total: i32, weight: u8) -> Option<i32> {
        let proportional = matches!(self.mode, Mode::Canary)
            && matches!(self.w.traffic, Traffic::GatewayRoute { .. })
            && GATEWAY_CANARY_SCALING == CanaryScaling::Proportional;
        proportional.then(|| canary_replicas(total, weight).max(1))
    }

    fn size_of(&self, canary: &Deployment, weight: u8) -> Option<i32> {
        let total = Self::total_of(canary).unwrap_or_else(|| replicas_of(canary));
        self.size_for(total, weight)
    }

    /// The candidate Deployment, which must exist and be rollgate's.
    async fn owned_canary(&self) -> Result<Deployment, TargetError> {
        let name = self.canary_deployment();
        let canary = self.canary().await?.ok_or_else(|| {
            TargetError(format!(
                "deployment {name} does not exist; start the candidate first"
            ))
        })?;
        if !is_managed(&canary.metadata) {
            return Err(TargetError(format!(
                "deployment {name} was not created by rollgate"
            )));
        }
        Ok(canary)
    }

    /// The key of one candidate in [`Memory`]: a new canary (new uid) waits afresh.
    fn wait_key(&self, canary: &Deployment) -> String {
        format!(
            "{}/{}@{}",
            self.w.namespace,
            self.canary_deployment(),
            canary.metadata.uid.as_deref().unwrap_or("")
        )
    }

    /// Where the traffic a candidate is not ready for stays, in words.
    fn stays_on(&self) -> String {
        match (&self.w.traffic, self.mode) {
            (Traffic::GatewayRoute { .. }, _) => format!("service {}", self.w.service),
            (Traffic::ReplicaRatio, Mode::BlueGreen(_)) => {
                format!("the stable pods service {} selects", self.w.service)
            }
            (Traffic::ReplicaRatio, Mode::Canary) => {
                format!("the replicas of deployment {}", self.w.deployment)
            }
        }
    }

    /// Traffic was asked for but the candidate's ready replicas do not cover it: keep
    /// the traffic where it is, and start the wait (the `health` passes move it).
    fn defer(&self, canary: &Deployment, share: Share) {
        let key = self.wait_key(canary);
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(e) = memory.unready_since.entry(key) {
            e.insert(Instant::now());
            tracing::info!(
                namespace = %self.w.namespace,
                deployment = %self.canary_deployment(),
                weight = share.weight,
                ready = share.ready,
                needed = share.need,
                "candidate not ready for its share; traffic waits on {}",
                self.stays_on()
            );
        }
    }

    /// The candidate is still short of `share`: `Progressing`, or, once it has been so
    /// for the plan's `progressDeadline` (less a small lead, see [`DEADLINE_LEAD`]),
    /// `Unhealthy` with the reason. Works where no controller ever writes
    /// `ProgressDeadlineExceeded` (pods that never pass their readiness probe, a
    /// cluster without kubelets).
    fn waiting(&self, canary: &Deployment, share: Share) -> TargetHealth {
        let key = self.wait_key(canary);
        let since = *self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unready_since
            .entry(key)
            .or_insert_with(Instant::now);
        let lead = (self.deadline / 10).min(DEADLINE_LEAD);
        if since.elapsed() + lead >= self.deadline {
            return TargetHealth::Unhealthy {
                reason: format!(
                    "deployment {}/{} has {} of {} ready replicas that {}% of the traffic needs, for the whole progressDeadline {}; that traffic stayed on {}",
                    self.w.namespace,
                    self.canary_deployment(),
                    share.ready,
                    share.need,
                    share.weight,
                    crate::model::duration::format(self.deadline),
                    self.stays_on()
                ),
            };
        }
        tracing::debug!(
            deployment = %self.canary_deployment(),
            ready = share.ready,
            needed = share.need,
            "kubernetes target progressing: candidate not ready for its share"
        );
        TargetHealth::Progressing
    }

    /// Whether a move towards this candidate is waiting for its readiness.
    fn is_waiting(&self, canary: &Deployment) -> bool {
        let key = self.wait_key(canary);
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unready_since
            .contains_key(&key)
    }

    /// The workload's key in [`Memory::drift`].
    fn drift_key(&self) -> String {
        format!("{}/{}", self.w.namespace, self.canary_deployment())
    }

    /// The traffic differs from the step and no move of rollgate's is pending: someone
    /// changed it (a GitOps tool re-applying the route, a human). Logged once per drift.
    fn drifted(&self, what: &str) {
        let key = self.drift_key();
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if memory.drift.get(&key).is_none_or(|seen| seen != what) {
            tracing::warn!(
                namespace = %self.w.namespace,
                deployment = %self.w.deployment,
                drift = %what,
                "traffic differs from the step; rollgate re-applies it"
            );
            memory.drift.insert(key, what.to_owned());
        }
    }

    /// The traffic is where the step puts it: a drift logged before is over.
    fn no_drift(&self) {
        let key = self.drift_key();
        let over = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drift
            .remove(&key);
        if let Some(what) = over {
            tracing::info!(
                namespace = %self.w.namespace,
                deployment = %self.w.deployment,
                was = %what,
                "traffic drift repaired"
            );
        }
    }

    /// The candidate covers its share: whatever wait there was is over.
    fn ready_again(&self, canary: &Deployment) {
        let key = self.wait_key(canary);
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unready_since
            .remove(&key);
    }

    /// The HTTPRoute, typed and as JSON; a missing route is an error (it is the user's).
    async fn read_route(
        &self,
        route: &str,
    ) -> Result<(DynamicObject, serde_json::Value), TargetError> {
        let current = self
            .timed(
                &format!("cannot read httproute {route}"),
                self.routes.get_opt(route),
            )
            .await?
            .ok_or_else(|| {
                TargetError(format!(
                    "httproute {}/{route} does not exist",
                    self.w.namespace
                ))
            })?;
        let value = serde_json::to_value(&current)
            .map_err(|e| TargetError(format!("cannot read httproute {route}: {e}")))?;
        Ok((current, value))
    }

    async fn weigh_route(
        &self,
        route: &str,
        rule: u32,
        weight: Option<u8>,
    ) -> Result<(), TargetError> {
        let (current, value) = self.read_route(route).await?;
        let candidate = self.canary_service();
        if let Some((s, c)) = route_weights(&value, rule, &self.w.service, &candidate) {
            let done = match weight {
                Some(w) => (s, c) == (Some(100 - i64::from(w)), Some(i64::from(w))),
                // At rest: the stable alone, at whatever weight its owner wrote.
                None => s.is_some() && c.is_none(),
            };
            if done {
                return Ok(());
            }
        }
        let rules = rules_with_weight(&value, rule, &self.w.service, &candidate, weight)
            .map_err(|e| TargetError(format!("httproute {route}: {e}")))?;
        let patch = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {
                "name": route,
                "namespace": self.w.namespace,
                "resourceVersion": current.metadata.resource_version,
            },
            "spec": { "rules": rules },
        });
        self.timed(
            &format!("cannot apply httproute {route}"),
            self.routes
                .patch(route, &Self::apply(), &Patch::Apply(&patch)),
        )
        .await?;
        Ok(())
    }

    /// Delete the canary Deployment and Service, only if rollgate created them.
    async fn remove_canary(&self) -> Result<(), TargetError> {
        let name = self.canary_service();
        if let Some(s) = self
            .timed(
                &format!("cannot read service {name}"),
                self.services.get_opt(&name),
            )
            .await?
        {
            if !is_managed(&s.metadata) {
                return Err(TargetError(format!(
                    "service {name} was not created by rollgate; refusing to delete it"
                )));
            }
            let dp = delete_params(&s.metadata);
            self.timed(&format!("cannot delete service {name}"), async {
                gone(self.services.delete(&name, &dp).await)
            })
            .await?;
        }
        let name = self.canary_deployment();
        if let Some(d) = self.canary().await? {
            if !is_managed(&d.metadata) {
                return Err(TargetError(format!(
                    "deployment {name} was not created by rollgate; refusing to delete it"
                )));
            }
            let dp = delete_params(&d.metadata);
            self.timed(&format!("cannot delete deployment {name}"), async {
                gone(self.deployments.delete(&name, &dp).await)
            })
            .await?;
        }
        Ok(())
    }

    /// Wait until the stable Deployment runs `artifact` and is available.
    async fn wait_stable(&self, artifact: &str) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + self.timing.promote_wait;
        loop {
            let stable = self.stable().await?;
            let image = image_of(&stable, self.w.container.as_deref());
            let last = match rollout_of(&stable) {
                Rollout::Failed(reason) => return Err(TargetError(reason)),
                Rollout::Available if image.as_deref() == Some(artifact) => return Ok(()),
                Rollout::Available => {
                    format!("deployment {} still runs {image:?}", self.w.deployment)
                }
                Rollout::Progressing(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(TargetError(format!("promotion not finished: {last}")));
            }
            tokio::time::sleep(self.timing.poll).await;
        }
    }

    async fn promote(&self, artifact: &str) -> Result<(), TargetError> {
        if let Mode::BlueGreen(bg) = self.mode {
            return self.promote_blue_green(artifact, bg).await;
        }
        let canary = self.canary().await?;
        let total = match &self.w.traffic {
            Traffic::ReplicaRatio => canary.as_ref().and_then(Self::total_of),
            Traffic::GatewayRoute { .. } => None,
        };
        let stable = self.stable().await?;
        if image_of(&stable, self.w.container.as_deref()).as_deref() != Some(artifact)
            || total.is_some_and(|t| t != replicas_of(&stable))
        {
            self.patch_stable(Some(artifact), total).await?;
        }
        self.wait_stable(artifact).await?;
        self.weigh(None).await?;
        self.remove_canary().await
    }

    async fn rollback(&self, stable: Option<&str>) -> Result<(), TargetError> {
        self.weigh(None).await?;
        self.remove_canary().await?;
        if let Some(artifact) = stable {
            let current = self.stable().await?;
            if image_of(&current, self.w.container.as_deref()).as_deref() != Some(artifact) {
                self.patch_stable(Some(artifact), None).await?;
            }
        }
        Ok(())
    }

    /// `start_candidate` in gateway mode: the canary ref at weight 0, unless a weight is
    /// already set (a re-run after `set_weight` must not take traffic away).
    async fn weigh_route_at_start(&self) -> Result<(), TargetError> {
        let Traffic::GatewayRoute { route, rule } = &self.w.traffic else {
            return Ok(());
        };
        let (_, value) = self.read_route(route).await?;
        match route_weights(&value, *rule, &self.w.service, &self.canary_service()) {
            Some((_, Some(_))) => Ok(()),
            _ => self.weigh_route(route, *rule, Some(0)).await,
        }
    }

    async fn health(&self, desired: &Desired) -> Result<TargetHealth, TargetError> {
        let stable = self.stable().await?;
        let image = image_of(&stable, self.w.container.as_deref());
        let canary = self.canary().await?;
        let progressing = |why: String| {
            tracing::debug!(reason = %why, "kubernetes target progressing");
            Ok(TargetHealth::Progressing)
        };
        if let Some(want) = &desired.stable
            && image.as_ref() != Some(want)
        {
            return progressing(format!("stable runs {image:?}, not {want}"));
        }
        match rollout_of(&stable) {
            Rollout::Failed(reason) => return Ok(TargetHealth::Unhealthy { reason }),
            Rollout::Progressing(why) => return progressing(why),
            Rollout::Available => {}
        }
        let Some(want) = &desired.candidate else {
            if canary.is_some() {
                return progressing(format!("{} still exists", self.canary_deployment()));
            }
            let name = self.canary_service();
            if self
                .timed(
                    &format!("cannot read service {name}"),
                    self.services.get_opt(&name),
                )
                .await?
                .is_some()
            {
                return progressing(format!("{name} still exists"));
            }
            if self.switches_selector() {
                return self.selector_at_rest().await;
            }
            return self.weights_at_rest().await;
        };
        let Some(canary) = canary else {
            return progressing(format!("{} does not exist", self.canary_deployment()));
        };
        let canary_image = image_of(&canary, self.w.container.as_deref());
        if canary_image.as_ref() != Some(want) {
            return progressing(format!("canary runs {canary_image:?}, not {want}"));
        }
        if let Rollout::Failed(reason) = rollout_of(&canary) {
            return Ok(TargetHealth::Unhealthy { reason });
        }
        // Traffic where the step puts it, read on every pass: a weight that waited for
        // the candidate's readiness moves now, and traffic someone changed behind
        // rollgate's back (drift) is put back; `weigh` still never moves it towards a
        // candidate that is not ready. Not healthy until the next pass reads it back.
        let w = desired.weight;
        let observed = self.observe(&stable, &canary, w).await?;
        let awaited = self.is_waiting(&canary);
        match &observed {
            Observed::Broken(reason) => {
                return Ok(TargetHealth::Unhealthy {
                    reason: reason.clone(),
                });
            }
            Observed::Differs(what) => {
                if !awaited {
                    self.drifted(what);
                }
                self.weigh(Some(w)).await?;
            }
            Observed::AsDesired => self.no_drift(),
        }
        let share = Share::of(&canary, w);
        if !share.covered() {
            return Ok(self.waiting(&canary, share));
        }
        self.ready_again(&canary);
        if let Observed::Differs(what) = observed {
            if awaited {
                tracing::info!(
                    namespace = %self.w.namespace,
                    deployment = %self.canary_deployment(),
                    weight = w,
                    "candidate ready for its share; traffic moves"
                );
            }
            return progressing(what);
        }
        match rollout_of(&canary) {
            Rollout::Failed(reason) => Ok(TargetHealth::Unhealthy { reason }),
            Rollout::Progressing(why) => progressing(why),
            Rollout::Available => Ok(TargetHealth::Healthy),
        }
    }

    /// The step's traffic (`weight`% on the candidate) against the cluster's: the
    /// route's two weights, the active Service's selector (blue-green without a route),
    /// or the replica split.
    async fn observe(
        &self,
        stable: &Deployment,
        canary: &Deployment,
        weight: u8,
    ) -> Result<Observed, TargetError> {
        if self.switches_selector() {
            return self.selector_observed(weight).await;
        }
        match &self.w.traffic {
            Traffic::GatewayRoute { route, rule } => {
                let (_, value) = self.read_route(route).await?;
                let candidate = self.canary_service();
                let Some((s, c)) = route_weights(&value, *rule, &self.w.service, &candidate) else {
                    return Ok(Observed::Broken(format!(
                        "httproute {route} has no rule {rule} with backendRefs"
                    )));
                };
                let want = (100 - i64::from(weight), i64::from(weight));
                if (s, c) == (Some(want.0), Some(want.1)) {
                    return Ok(match self.size_of(canary, weight) {
                        Some(size) if size != replicas_of(canary) => Observed::Differs(format!(
                            "deployment {} runs {} replicas, the step {size}",
                            self.canary_deployment(),
                            replicas_of(canary)
                        )),
                        _ => Observed::AsDesired,
                    });
                }
                let show = |w: Option<i64>| w.map_or("no backendRef".to_owned(), |w| w.to_string());
                Ok(Observed::Differs(format!(
                    "httproute {route} rule {rule} weighs {} {} and {candidate} {}, the step {} and {}",
                    self.w.service,
                    show(s),
                    show(c),
                    want.0,
                    want.1
                )))
            }
            Traffic::ReplicaRatio => {
                let total = Self::total_of(canary).unwrap_or_else(|| replicas_of(canary));
                let c = canary_replicas(total, weight);
                let (has_c, has_s) = (replicas_of(canary), replicas_of(stable));
                if (has_c, has_s) == (c, total - c) {
                    return Ok(Observed::AsDesired);
                }
                Ok(Observed::Differs(format!(
                    "replicas {} {has_s} and {} {has_c}, the step {} and {c}",
                    self.w.deployment,
                    self.canary_deployment(),
                    total - c
                )))
            }
        }
    }

    /// Ready replicas of the candidate over its desired replicas. A candidate scaled to
    /// zero has no value (no evidence), never a pass.
    async fn readiness(&self) -> Result<Measurement, TargetError> {
        let name = self.canary_deployment();
        let canary = self
            .canary()
            .await?
            .ok_or_else(|| TargetError(format!("deployment {name} does not exist")))?;
        let desired = replicas_of(&canary);
        let ready = canary
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        Ok(Measurement {
            value: (desired > 0).then(|| f64::from(ready.min(desired)) / f64::from(desired)),
            samples: u64::try_from(desired.max(0)).unwrap_or(0),
        })
    }

    /// At rest (no candidate): healthy when the route sends everything to the stable
    /// Service (alone, at any weight) and the candidate's backendRef is gone.
    async fn weights_at_rest(&self) -> Result<TargetHealth, TargetError> {
        let Traffic::GatewayRoute { route, rule } = &self.w.traffic else {
            return Ok(TargetHealth::Healthy);
        };
        let (_, value) = self.read_route(route).await?;
        let Some((s, c)) = route_weights(&value, *rule, &self.w.service, &self.canary_service())
        else {
            return Ok(TargetHealth::Unhealthy {
                reason: format!("httproute {route} has no rule {rule} with backendRefs"),
            });
        };
        Ok(if c.is_none() && s.is_some() {
            TargetHealth::Healthy
        } else {
            TargetHealth::Progressing
        })
    }
}

fn delete_params(meta: &ObjectMeta) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: meta.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    }
}

/// A delete whose object is already gone (deleted by someone else between our read
/// and our delete) has reached its goal.
fn gone<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

impl Target for KubernetesTarget {
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        if let Some(k) = self.knative(plan) {
            return self.runtime.block_on(k.start(artifact));
        }
        let c = self.cluster(plan)?;
        self.runtime.block_on(async {
            c.start(artifact).await?;
            c.weigh_route_at_start().await
        })
    }

    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError> {
        if let Some(k) = self.knative(plan) {
            return self.runtime.block_on(k.set_weight(weight.min(100)));
        }
        let c = self.cluster(plan)?;
        self.runtime.block_on(c.weigh(Some(weight.min(100))))
    }

    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        if let Some(k) = self.knative(plan) {
            return self.runtime.block_on(k.promote(artifact));
        }
        let c = self.cluster(plan)?;
        self.runtime.block_on(c.promote(artifact))
    }

    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError> {
        if let Some(k) = self.knative(plan) {
            return self.runtime.block_on(k.rollback(stable));
        }
        let c = self.cluster(plan)?;
        self.runtime.block_on(c.rollback(stable))
    }

    /// The cluster keeps its state while the daemon is down: `resume` re-runs the step.
    fn keeps_state_across_restarts(&self) -> bool {
        true
    }

    fn readiness(&mut self, plan: &Plan) -> Result<Measurement, String> {
        if let Some(k) = self.knative(plan) {
            return self.runtime.block_on(k.readiness()).map_err(|e| e.0);
        }
        let c = self.cluster(plan).map_err(|e| e.0)?;
        self.runtime.block_on(c.readiness()).map_err(|e| e.0)
    }

    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth {
        if let Some(k) = self.knative(plan) {
            return match self.runtime.block_on(k.health(desired)) {
                Ok(h) => h,
                Err(e) => TargetHealth::Unreachable { reason: e.0 },
            };
        }
        let c = match self.cluster(plan) {
            Ok(c) => c,
            Err(e) => return TargetHealth::Unhealthy { reason: e.0 },
        };
        match self.runtime.block_on(c.health(desired)) {
            Ok(h) => h,
            Err(e) => TargetHealth::Unreachable { reason: e.0 },
        }
    }
}
