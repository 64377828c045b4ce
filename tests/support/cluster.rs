//! An in-memory Kubernetes API server (`kube-fake-client`) for the tests of the cluster
//! targets and of leader election: the API, stand-ins for the controllers a real
//! cluster runs beside rollgate, and an interceptor that records the verbs sent; and
//! the target of the opt-in suites against a real cluster ([`e2e_target`]).
//!
//! Invariants: every API built here serves the kinds rollgate reads or writes
//! (Deployments, Services and Leases built in; HTTPRoute and Knative's Service and
//! Revision registered like CRDs, with the status subresources their controllers
//! write), whatever the test needs of them; the stand-in controllers write only
//! `status`, through the status subresource, as the real ones do; verbs are recorded as
//! RBAC names them, so a test compares them with an `RBAC` table as it is; and nothing
//! here sleeps to synchronise: a test waits on a condition ([`wait_until`],
//! [`poll_until`], [`Readiness::caught_up`]).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube_fake_client::interceptor::{Funcs, PatchContext};
use rollgate::targets::knative;
use rollgate::targets::kubernetes::{self, KubernetesTarget, Timing};
use serde_json::{Value, json};

/// The targets' timing on an in-memory API: quick polls, bounded waits.
pub const QUICK: Timing = Timing {
    promote_wait: Duration::from_secs(10),
    poll: Duration::from_millis(1),
    call_timeout: Duration::from_secs(10),
};

/// The HTTPRoute kind, registered with the fake API like a CRD. It serializes its
/// `apiVersion` and `kind`, which the fake's typed `get` needs (see [`apply_creates`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HttpRoute {
    #[serde(flatten)]
    types: kube::core::TypeMeta,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Value,
}

impl Default for HttpRoute {
    fn default() -> Self {
        Self {
            types: kube::core::TypeMeta {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: "HTTPRoute".into(),
            },
            metadata: ObjectMeta::default(),
            spec: Value::Null,
        }
    }
}

impl kube::Resource for HttpRoute {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        "HTTPRoute".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "gateway.networking.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "httproutes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

macro_rules! knative_kind {
    ($ty:ident, $kind:literal, $plural:literal) => {
        /// A Knative Serving v1 kind, registered with the fake API like a CRD.
        #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
        pub struct $ty {
            #[serde(rename = "apiVersion")]
            api_version: String,
            kind: String,
            metadata: ObjectMeta,
            #[serde(default)]
            spec: Value,
            #[serde(default, skip_serializing_if = "Value::is_null")]
            status: Value,
        }

        impl Default for $ty {
            fn default() -> Self {
                Self {
                    api_version: "serving.knative.dev/v1".into(),
                    kind: $kind.into(),
                    metadata: ObjectMeta::default(),
                    spec: Value::Null,
                    status: Value::Null,
                }
            }
        }

        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;
            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "serving.knative.dev".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

knative_kind!(KService, "Service", "services");
knative_kind!(KRevision, "Revision", "revisions");

/// An in-memory API server holding `objects`, `funcs` intercepting its calls, and a
/// client on it built inside a fresh target runtime (its tasks run there).
pub fn api(objects: Vec<Value>, funcs: Option<Funcs>) -> (tokio::runtime::Runtime, kube::Client) {
    let runtime = kubernetes::runtime().expect("runtime");
    let mut builder = kube_fake_client::ClientBuilder::new()
        .with_resource::<HttpRoute>()
        .with_resource::<KService>()
        .with_resource::<KRevision>()
        .with_status_subresource::<Deployment>()
        .with_status_subresource::<k8s_openapi::api::batch::v1::Job>()
        .with_status_subresource::<KService>()
        .with_status_subresource::<KRevision>()
        .with_runtime_objects(objects);
    if let Some(funcs) = funcs {
        builder = builder.with_interceptor_funcs(funcs);
    }
    let client = runtime.block_on(builder.build()).expect("fake client");
    (runtime, client)
}

/// Whether `cond` came to hold within `within`, looking every millisecond.
pub fn poll_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Wait until `cond` holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, cond: impl FnMut() -> bool) {
    assert!(poll_until(within, cond), "not within {within:?}: {what}");
}

/// The handle on the stand-in Deployment controller: how many of the candidate's pods
/// it lets become ready, and how many passes it has made. Capped, the `-canary`,
/// `-preview` and `-baseline` Deployments run pods beyond the cap that never pass their readiness
/// probe (or a cluster with no kubelet): the replicas exist, at most the cap ready, no
/// condition written. Negative: no cap.
#[derive(Clone)]
pub struct Readiness {
    cap: Arc<AtomicI32>,
    passes: Arc<AtomicU64>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            cap: Arc::new(AtomicI32::new(-1)),
            passes: Arc::default(),
        }
    }
}

impl Readiness {
    pub fn withheld() -> Self {
        let r = Self::default();
        r.withhold(true);
        r
    }

    /// No candidate pod ready (`true`), or every one (`false`).
    pub fn withhold(&self, on: bool) {
        self.cap(if on { 0 } else { -1 });
    }

    /// At most `n` candidate pods ready.
    pub fn cap(&self, n: i32) {
        self.cap.store(n, Ordering::SeqCst);
    }

    /// The ready replicas `deployment` may report, when capped below `replicas`.
    pub fn capped(&self, deployment: &str, replicas: i32) -> Option<i32> {
        let cap = self.cap.load(Ordering::SeqCst);
        (cap >= 0
            && cap < replicas
            && (deployment.ends_with("-canary")
                || deployment.ends_with("-preview")
                || deployment.ends_with("-baseline")))
        .then_some(cap)
    }

    /// Wait until the controller has made a whole pass that began after this call: it
    /// has seen, and reported on, every write made before. It runs on `target`'s
    /// runtime, so the wait blocks on that runtime (a thread sleeping would stop it).
    pub fn caught_up(&self, target: &KubernetesTarget) {
        let passes = Arc::clone(&self.passes);
        let from = passes.load(Ordering::SeqCst);
        let waited = target.block_on(async move {
            let passed = async {
                while passes.load(Ordering::SeqCst) < from + 2 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), passed).await
        });
        assert!(
            waited.is_ok(),
            "the stand-in controller made no pass within 10s"
        );
    }
}

/// A target on an in-memory API holding `objects`, with the stand-in Deployment
/// controller running beside it in namespace `ns` ([`deployment_controller_pass`]).
pub fn deployments_cluster(
    objects: Vec<Value>,
    funcs: Option<Funcs>,
    ns: &str,
    readiness: Readiness,
) -> KubernetesTarget {
    let (runtime, client) = api(objects, funcs);
    let target = KubernetesTarget::new(runtime, client.clone()).with_timing(QUICK);
    let ns = ns.to_owned();
    target.spawn(async move {
        loop {
            let _ = deployment_controller_pass(&client, &ns, &readiness).await;
            readiness.passes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    target
}

/// Whether a kube-controller-manager runs in this cluster: it renews its leader Lease
/// (`kube-system/kube-controller-manager`) every few seconds. Where it runs, it writes
/// Deployment status, and a simulation doing the same would fight it (each overwriting
/// the other's `readyReplicas`): the e2e suites then leave readiness to it.
pub async fn controller_manager_running(client: &kube::Client) -> bool {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let Ok(lease) = leases.get("kube-controller-manager").await else {
        return false;
    };
    lease
        .spec
        .and_then(|s| s.renew_time)
        .is_some_and(|t| t.0.as_second() > chrono::Utc::now().timestamp() - 60)
}

/// What the Deployment controller and kubelet would report: every Deployment rolled
/// out at its generation, except those running a `broken` image (past their progress
/// deadline) and candidates whose readiness is withheld (no pod ready, no condition).
pub async fn deployment_controller_pass(
    client: &kube::Client,
    ns: &str,
    readiness: &Readiness,
) -> Result<(), kube::Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for d in api.list(&ListParams::default()).await?.items {
        let name = d.metadata.name.clone().unwrap_or_default();
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let broken = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .is_some_and(|p| {
                p.containers
                    .iter()
                    .any(|c| c.image.as_deref().is_some_and(|i| i.contains("broken")))
            });
        let status = if let Some(ready) = readiness.capped(&name, replicas) {
            json!({ "status": {
                "observedGeneration": d.metadata.generation, "replicas": replicas,
                "updatedReplicas": replicas, "availableReplicas": ready, "readyReplicas": ready } })
        } else if broken {
            json!({ "status": {
                "observedGeneration": d.metadata.generation, "replicas": replicas,
                "updatedReplicas": replicas, "availableReplicas": 0,
                "conditions": [ { "type": "Progressing", "status": "False",
                                  "reason": "ProgressDeadlineExceeded",
                                  "message": "ReplicaSet has timed out progressing." } ] } })
        } else {
            json!({ "status": {
                "observedGeneration": d.metadata.generation, "replicas": replicas,
                "updatedReplicas": replicas, "availableReplicas": replicas, "readyReplicas": replicas,
                "conditions": [ { "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" } ] } })
        };
        let now = serde_json::to_value(&d.status).unwrap_or(Value::Null);
        if now.get("observedGeneration") != status["status"].get("observedGeneration")
            || now.get("availableReplicas") != status["status"].get("availableReplicas")
            || now.get("replicas") != status["status"].get("replicas")
        {
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
        }
    }
    Ok(())
}

/// A target on an in-memory API holding `objects`, with or without the stand-in
/// Knative controllers running beside it in namespace `ns` ([`knative_controller_pass`]).
pub fn knative_cluster(
    objects: Vec<Value>,
    funcs: Option<Funcs>,
    ns: &str,
    controller: bool,
) -> KubernetesTarget {
    let (runtime, client) = api(objects, funcs);
    let target = KubernetesTarget::new(runtime, client.clone()).with_timing(QUICK);
    if controller {
        let ns = ns.to_owned();
        target.spawn(async move {
            loop {
                let _ = knative_controller_pass(&client, &ns).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    target
}

/// What Knative's configuration and route reconcilers would report: for every Service,
/// the Revision its template names (Ready, or failed when its image says `broken`), and
/// `spec.traffic` mirrored into `status.traffic` at the Service's generation.
pub async fn knative_controller_pass(client: &kube::Client, ns: &str) -> Result<(), kube::Error> {
    let svcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &knative::service_resource());
    let revs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &knative::revision_resource());
    for s in svcs.list(&ListParams::default()).await?.items {
        let s = serde_json::to_value(&s).unwrap_or_default();
        let name = s["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut latest = "hello-00001".to_owned();
        if let Some(rev) = s
            .pointer("/spec/template/metadata/name")
            .and_then(Value::as_str)
        {
            latest = rev.to_owned();
            if revs.get_opt(rev).await?.is_none() {
                let containers = s.pointer("/spec/template/spec/containers").cloned();
                let revision: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
                    "metadata": { "name": rev, "namespace": ns,
                                  "labels": { "serving.knative.dev/service": name } },
                    "spec": { "containers": containers },
                }))
                .expect("revision");
                revs.create(&PostParams::default(), &revision).await?;
            }
        }
        for r in revs.list(&ListParams::default()).await?.items {
            let r = serde_json::to_value(&r).unwrap_or_default();
            if r.pointer("/status/conditions").is_some() {
                continue;
            }
            let broken = r
                .pointer("/spec/containers/0/image")
                .and_then(Value::as_str)
                .is_some_and(|i| i.contains("broken"));
            let status = if broken {
                json!({ "status": { "actualReplicas": 0, "desiredReplicas": 1, "conditions": [
                    { "type": "Ready", "status": "False", "reason": "ContainerMissing",
                      "message": "Unable to fetch image" } ] } })
            } else {
                json!({ "status": { "actualReplicas": 2, "desiredReplicas": 2, "conditions": [
                    { "type": "Ready", "status": "True" } ] } })
            };
            let rname = r["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            revs.patch_status(&rname, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
        }
        let traffic: Vec<Value> = s
            .pointer("/spec/traffic")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut t| {
                if t.get("latestRevision") == Some(&json!(true)) {
                    t["revisionName"] = json!(latest);
                }
                t
            })
            .collect();
        let status = json!({ "status": {
            "observedGeneration": s.pointer("/metadata/generation"),
            "latestReadyRevisionName": latest,
            "traffic": traffic,
            "conditions": [ { "type": "RoutesReady", "status": "True" } ],
        } });
        if s.pointer("/status/traffic") != status.pointer("/status/traffic")
            || s.pointer("/status/observedGeneration")
                != status.pointer("/status/observedGeneration")
        {
            svcs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
        }
    }
    Ok(())
}

/// The verbs an interceptor saw, as RBAC names them: a PUT (the fake's `replace`) is
/// `update`; a PATCH the fake reports as an update is `patch(update)`, which no RBAC
/// table grants, so a test comparing with one fails if it is ever sent.
#[derive(Clone, Default)]
pub struct Verbs(Arc<Mutex<BTreeSet<&'static str>>>);

impl Verbs {
    /// Every verb seen so far.
    pub fn seen(&self) -> BTreeSet<&'static str> {
        self.0.lock().expect("lock").clone()
    }

    fn record(&self, verb: &'static str) -> impl Fn() + Send + Sync + 'static {
        let seen = Arc::clone(&self.0);
        move || {
            seen.lock().expect("lock").insert(verb);
        }
    }

    /// Interceptors that record every call and let it through.
    pub fn interceptor(&self) -> Funcs {
        self.interceptor_also(|_| None)
    }

    /// [`Self::interceptor`], a patch also recorded as the verb `also` names for it (an
    /// apply that creates its object is authorized as `create` too: [`apply_creates`]).
    pub fn interceptor_also(
        &self,
        also: impl Fn(&PatchContext<'_>) -> Option<&'static str> + Send + Sync + 'static,
    ) -> Funcs {
        let (get, create, replace, update, patch, delete, list, watch) = (
            self.record("get"),
            self.record("create"),
            self.record("update"),
            self.record("patch(update)"),
            self.record("patch"),
            self.record("delete"),
            self.record("list"),
            self.record("watch"),
        );
        let seen = Arc::clone(&self.0);
        Funcs::new()
            .get(move |_| {
                get();
                Ok(None)
            })
            .create(move |_| {
                create();
                Ok(None)
            })
            .replace(move |_| {
                replace();
                Ok(None)
            })
            .update(move |_| {
                update();
                Ok(None)
            })
            .patch(move |ctx| {
                if let Some(verb) = also(&ctx) {
                    seen.lock().expect("lock").insert(verb);
                }
                patch();
                Ok(None)
            })
            .delete(move |_| {
                delete();
                Ok(None)
            })
            .list(move |_| {
                list();
                Ok(None)
            })
            .watch(move |_| {
                watch();
                Ok(None)
            })
    }
}

/// The verbs an `RBAC` table (apiGroup, resource, verbs) grants, on any resource.
pub fn granted(rbac: &[(&str, &str, &[&'static str])]) -> BTreeSet<&'static str> {
    rbac.iter()
        .flat_map(|(_, _, verbs)| verbs.iter().copied())
        .collect()
}

/// The (apiGroup, resource) a server-side apply of an *absent* object creates, or `None`
/// (not an apply, or the object exists). A real API server authorizes such an apply as
/// `create` as well as `patch`; the fake reports every apply as a PATCH and creates the
/// object silently, so this asks the fake, before the call, whether the object exists.
pub fn apply_creates(ctx: &PatchContext<'_>) -> Option<(&'static str, &'static str)> {
    if ctx.patch_type != kube_fake_client::PatchType::ApplyPatch {
        return None;
    }
    fn exists<T>(r: kube_fake_client::Result<T>) -> bool {
        match r {
            Ok(_) => true,
            Err(kube_fake_client::Error::NotFound { .. }) => false,
            Err(e) => panic!("cannot look the applied object up: {e}"),
        }
    }
    let (ns, name) = (ctx.namespace, ctx.name);
    let (resource, present) = match ctx.patch["kind"].as_str() {
        Some("Deployment") => (
            ("apps", "deployments"),
            exists(ctx.client.get::<Deployment>(ns, name)),
        ),
        Some("Service") => (
            ("", "services"),
            exists(ctx.client.get::<Service>(ns, name)),
        ),
        Some("HTTPRoute") => (
            ("gateway.networking.k8s.io", "httproutes"),
            exists(ctx.client.get::<HttpRoute>(ns, name)),
        ),
        other => panic!("an apply of kind {other:?}: teach apply_creates to look it up"),
    };
    (!present).then_some(resource)
}

/// The opt-in suites' target: the kubeconfig's user, or every call impersonating the
/// user `ROLLGATE_E2E_IMPERSONATE` names (`system:serviceaccount:rollgate:rollgate`:
/// `deploy/`'s rights, which must be installed); and a client for the test's own setup
/// (namespaces, CRDs, the user's objects, simulated readiness) that never impersonates.
pub fn e2e_target(path: &std::path::Path) -> (KubernetesTarget, kube::Client) {
    let user = std::env::var("ROLLGATE_E2E_IMPERSONATE").ok();
    if let Some(user) = &user {
        println!("the target impersonates {user}; the test's setup does not");
    }
    let t = KubernetesTarget::from_kubeconfig_as(Some(path), None, user.as_deref())
        .expect("kubeconfig")
        .with_timing(Timing {
            promote_wait: Duration::from_secs(180),
            poll: Duration::from_secs(1),
            call_timeout: Duration::from_secs(30),
        });
    let setup = t
        .block_on(async {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
            Ok::<_, kube::config::KubeconfigError>(kube::Client::try_from(config))
        })
        .expect("kubeconfig")
        .expect("setup client");
    (t, setup)
}

/// What an opt-in suite prints when it does not run.
pub const E2E_SKIPPED: &str = "SKIPPED: ROLLGATE_E2E_KUBECONFIG is not set (with it: ROLLGATE_E2E_IMPERSONATE=system:serviceaccount:NS:NAME runs the target as that account, ROLLGATE_E2E_SIMULATE_READINESS=1 plays the controllers where none run)";
