//! `deploy/`: every Kubernetes manifest parses into its k8s-openapi type, the RBAC
//! grants exactly what the Kubernetes target calls (`kubernetes::RBAC`, a ClusterRole)
//! and what leader election calls (`leader::RBAC`, a Role in rollgate's namespace), the
//! daemon's Deployment runs two replicas that elect a leader, probes the endpoints it
//! serves, and the image runs as non-root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every typed object under deploy/kubernetes, by kind.
#[derive(Debug, Default)]
struct Manifests {
    files: BTreeSet<String>,
    kustomization: Value,
    namespaces: Vec<Namespace>,
    accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    bindings: Vec<RoleBinding>,
    secrets: Vec<Secret>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
}

fn typed<T: serde::de::DeserializeOwned>(file: &str, doc: Value) -> T {
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn load() -> Manifests {
    let mut m = Manifests::default();
    let dir = deploy_dir().join("kubernetes");
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_owned();
        assert!(name.ends_with(".yaml"), "unexpected file {name}");
        let text = std::fs::read_to_string(&path).expect("read");
        if name == "kustomization.yaml" {
            m.kustomization = serde_saphyr::from_str(&text).expect("kustomization parses");
            continue;
        }
        m.files.insert(name.clone());
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"].as_str().unwrap_or("").to_owned();
            match kind.as_str() {
                "Namespace" => m.namespaces.push(typed(&name, doc)),
                "ServiceAccount" => m.accounts.push(typed(&name, doc)),
                "ClusterRole" => m.cluster_roles.push(typed(&name, doc)),
                "ClusterRoleBinding" => m.cluster_bindings.push(typed(&name, doc)),
                "Role" => m.roles.push(typed(&name, doc)),
                "RoleBinding" => m.bindings.push(typed(&name, doc)),
                "Secret" => m.secrets.push(typed(&name, doc)),
                "Deployment" => m.deployments.push(typed(&name, doc)),
                "Service" => m.services.push(typed(&name, doc)),
                "ConfigMap" => m.config_maps.push(typed(&name, doc)),
                other => panic!("{name}: unexpected kind {other:?}"),
            }
        }
    }
    m
}

#[test]
fn every_manifest_parses_and_the_kustomization_lists_them_all() {
    let m = load();
    let listed: BTreeSet<String> = m.kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("string").to_owned())
        .collect();
    assert_eq!(listed, m.files);
    assert_eq!(m.kustomization["namespace"], "rollgate");
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.deployments.len(), 1);
    assert_eq!(m.accounts.len(), 1);
}

type Grants = BTreeMap<(String, String), BTreeSet<String>>;

/// (apiGroup, resource) -> verbs granted by `rules`, refusing wildcards and names.
fn granted<'a>(
    rules: impl IntoIterator<Item = &'a k8s_openapi::api::rbac::v1::PolicyRule>,
) -> Grants {
    let mut granted = Grants::new();
    for rule in rules {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                assert_ne!(resource, "*", "no wildcards");
                let verbs = granted
                    .entry((group.clone(), resource.clone()))
                    .or_default();
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "no wildcards");
                    verbs.insert(verb.clone());
                }
            }
        }
    }
    granted
}

/// What a module's `RBAC` constant says it calls.
fn used(rbac: &[(&str, &str, &[&str])]) -> Grants {
    rbac.iter()
        .map(|(group, resource, verbs)| {
            (
                ((*group).to_owned(), (*resource).to_owned()),
                verbs.iter().map(|v| (*v).to_owned()).collect(),
            )
        })
        .collect()
}

/// The binding's one subject is the account the daemon runs as.
fn binds_the_daemon_account(
    subjects: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>,
    m: &Manifests,
) {
    let account = &m.accounts[0];
    let subjects = subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);
}

#[test]
fn rbac_grants_exactly_what_the_kubernetes_target_calls() {
    let m = load();
    assert_eq!(m.cluster_roles.len(), 1, "one ClusterRole");
    let role = &m.cluster_roles[0];
    assert_eq!(
        granted(role.rules.iter().flatten()),
        used(
            &[
                rollgate::targets::kubernetes::RBAC,
                rollgate::targets::knative::RBAC,
                rollgate::targets::kubernetes::jobs::RBAC
            ]
            .concat()
        ),
        "Deployments, Services and HTTPRoutes, Knative Services and Revisions, and the Jobs (and their Pods) of job checks"
    );

    // The binding gives that role to the account the daemon runs as.
    let name = role.metadata.name.clone().expect("role name");
    let bindings: Vec<_> = m
        .cluster_bindings
        .iter()
        .filter(|b| b.role_ref.name == name && b.role_ref.kind == "ClusterRole")
        .collect();
    assert_eq!(bindings.len(), 1, "one binding of the ClusterRole");
    binds_the_daemon_account(bindings[0].subjects.as_ref(), &m);
}

/// The install steps tell the operator to opt each workload in with the label the
/// target checks, and the ClusterRole says RBAC is not the whole fence (issue #15).
#[test]
fn the_install_steps_name_the_opt_in_label_the_target_checks() {
    let (k, v) = rollgate::targets::kubernetes::OPT_IN;
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let install = readme
        .split("### Install on a cluster")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("an install section");
    assert!(
        install.contains("label deployment") && install.contains(&format!("{k}={v}")),
        "the install section opts a workload in with {k}={v}"
    );
    let rbac = std::fs::read_to_string(deploy_dir().join("kubernetes/rbac.yaml")).expect("rbac");
    assert!(
        rbac.contains(&format!("{k}: \"{v}\"")),
        "rbac.yaml names {k}: \"{v}\""
    );
}

#[test]
fn rbac_grants_exactly_what_leader_election_calls_in_rollgate_s_own_namespace() {
    let m = load();
    assert_eq!(m.roles.len(), 1, "one Role");
    let role = &m.roles[0];
    assert_eq!(
        granted(role.rules.iter().flatten()),
        used(rollgate::leader::RBAC)
    );
    // The Lease lives where the daemon runs (POD_NAMESPACE), and nowhere else.
    let namespace = m.deployments[0].metadata.namespace.clone();
    assert_eq!(namespace.as_deref(), Some("rollgate"));
    assert_eq!(role.metadata.namespace, namespace);

    let name = role.metadata.name.clone().expect("role name");
    assert_eq!(m.bindings.len(), 1, "one RoleBinding");
    let binding = &m.bindings[0];
    assert_eq!(binding.metadata.namespace, namespace);
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("Role", name.as_str())
    );
    binds_the_daemon_account(binding.subjects.as_ref(), &m);
}

#[test]
fn the_daemon_deployment_probes_what_it_serves_and_runs_unprivileged() {
    let m = load();
    let d = &m.deployments[0];
    let spec = d.spec.as_ref().expect("spec");
    // Two replicas, one writer per branch: they elect a leader.
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_ref(),
        m.accounts[0].metadata.name.as_ref()
    );
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert!(
        args.iter().any(|a| a == "--listen=0.0.0.0:9464"),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a == "--leader-elect"), "{args:?}");
    // The Lease holder's identity and the Lease's namespace come from the downward API.
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let env = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == var)
            .unwrap_or_else(|| panic!("{var}"));
        let path = env
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(path, Some(field), "{var}");
    }
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .expect("http port");
    assert_eq!(port.container_port, 9464);
    let probe_path = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.clone())
    };
    assert_eq!(
        probe_path(c.liveness_probe.as_ref()).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(c.readiness_probe.as_ref()).as_deref(),
        Some("/readyz")
    );
    let security = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));

    // The Git token comes from a Secret that the manifests define, under that key.
    let token = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ROLLGATE_GIT_TOKEN")
        .expect("ROLLGATE_GIT_TOKEN");
    assert!(token.value.is_none(), "never inline");
    let key = token
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    let secret = m
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(key.name.as_str()))
        .expect("the referenced secret");
    assert!(
        secret
            .string_data
            .as_ref()
            .is_some_and(|d| d.contains_key(&key.key))
            || secret
                .data
                .as_ref()
                .is_some_and(|d| d.contains_key(&key.key))
    );
}

#[test]
fn the_image_is_multi_stage_and_runs_as_non_root() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("Dockerfile");
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage");
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    assert!(text.contains("--listen"), "serves the probes");
    // Everything `include_str!` reads from is copied into the build stage.
    for dir in ["reconciler", "policies", "example-repo", "benches"] {
        assert!(text.contains(&format!("COPY {dir} {dir}")), "copies {dir}");
    }
}

#[test]
fn ssh_host_keys_come_from_a_mounted_known_hosts_config_map() {
    // Given the manifests
    let m = load();
    let pod = m.deployments[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let c = &pod.containers[0];
    // Then ROLLGATE_GIT_KNOWN_HOSTS names a file in a read-only mount of a ConfigMap
    let path = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ROLLGATE_GIT_KNOWN_HOSTS")
        .and_then(|e| e.value.clone())
        .expect("ROLLGATE_GIT_KNOWN_HOSTS");
    let (dir, file) = path.rsplit_once('/').expect("a path");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == dir)
        .expect("a mount holding the known_hosts file");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the volume");
    let cm_name = volume
        .config_map
        .as_ref()
        .map(|c| c.name.clone())
        .expect("a ConfigMap volume");
    let cm = m
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(cm_name.as_str()))
        .expect("the ConfigMap is in deploy/");
    // And every line of it is a host key line ssh-keygen accepts
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(file))
        .expect("the known_hosts key");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.len() >= 3, "not a known_hosts line: {line}");
        assert!(
            fields[1].starts_with("ssh-") || fields[1].starts_with("ecdsa-"),
            "{line}"
        );
    }
}

#[test]
fn the_namespaced_overlay_binds_per_namespace_and_tells_the_daemon_the_same_list() {
    // Rendered by kustomize itself (kubectl's built-in), as `kubectl apply -k` would.
    let dir = deploy_dir().join("kubernetes-namespaced");
    let out = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: kubectl is not installed ({e}); the overlay was not rendered");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
        .expect("rendered manifests parse");
    let of = |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    // Then no cluster-wide binding is left
    assert!(of("ClusterRoleBinding").is_empty());
    // And the ClusterRole is bound to rollgate's account in each listed namespace
    let mut bound: Vec<String> = of("RoleBinding")
        .into_iter()
        .map(|b| typed::<RoleBinding>("overlay", b.clone()))
        .filter(|b| b.role_ref.kind == "ClusterRole" && b.role_ref.name == "rollgate")
        .inspect(|b| {
            let s = &b.subjects.as_ref().expect("subjects")[0];
            assert_eq!(
                (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
                ("ServiceAccount", "rollgate", Some("rollgate"))
            );
        })
        .filter_map(|b| b.metadata.namespace)
        .collect();
    bound.sort();
    assert!(!bound.is_empty());
    // And the daemon is told exactly those namespaces
    let deployment = typed::<Deployment>("overlay", of("Deployment")[0].clone());
    let args = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    let flag = args
        .iter()
        .find_map(|a| a.strip_prefix("--namespaces="))
        .expect("--namespaces");
    let mut told: Vec<String> = flag.split(',').map(str::to_owned).collect();
    told.sort();
    assert_eq!(told, bound);
}

#[test]
fn the_sharded_overlay_runs_three_replicas_sharing_twelve_shards_instead_of_a_leader() {
    // Rendered by kustomize itself (kubectl's built-in), as `kubectl apply -k` would.
    let dir = deploy_dir().join("kubernetes-sharded");
    let out = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: kubectl is not installed ({e}); the overlay was not rendered");
            return;
        }
    };
    // The `test` op fails the render if the base's args moved under the patch.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
        .expect("rendered manifests parse");
    let deployment: Deployment = typed(
        "overlay",
        docs.iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment")
            .clone(),
    );
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(3));
    let args = spec.template.spec.expect("pod").containers[0]
        .args
        .clone()
        .unwrap_or_default();
    assert!(args.iter().any(|a| a == "--shards=12"), "{args:?}");
    assert!(!args.iter().any(|a| a == "--leader-elect"), "{args:?}");
    // The same Role as the base install: leases, listed by the shard elector.
    let role: Role = typed(
        "overlay",
        docs.iter()
            .find(|d| d["kind"] == "Role")
            .expect("a Role")
            .clone(),
    );
    assert_eq!(
        granted(role.rules.iter().flatten()),
        used(rollgate::leader::RBAC)
    );
    let leases = ("coordination.k8s.io".to_owned(), "leases".to_owned());
    assert!(used(rollgate::leader::RBAC)[&leases].contains("list"));
}
