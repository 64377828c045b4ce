//! Targets from settings: one `Target` per entry of `rollgate.yaml`'s `targets:`.
//!
//! The daemon's only way to build a target (tests build their doubles directly). A
//! settings entry maps to exactly one implementation by its kind; a dry run maps every
//! entry to a `DryRun` journal instead.
//! Invariants: building never touches a plan or the workload (a target connects or
//! starts its data plane lazily, or here at most); a local target's folder stays under
//! the daemon's state folder, whatever the settings say; an entry that cannot be built
//! is an `Err` with the reason, and the caller holds that target's plans.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::metrics::builtin::ProxyCounters;
use crate::model::settings;

use super::Target;

/// What every target of one daemon shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The daemon's state folder (`--state-dir`).
    pub state_dir: PathBuf,
    /// `Some(dir)`: every target is a `DryRun` journal in `dir` (`--dry-run`, and the
    /// hidden `--journal-targets` of tests and benches).
    pub journal: Option<PathBuf>,
}

/// A built target, and its proxy counters when it has a proxy (local targets) for the
/// builtin metrics source.
pub struct Built {
    pub target: Box<dyn Target>,
    pub counters: Option<Arc<dyn ProxyCounters>>,
    /// Its job runner, when the target can run job checks (local, kubernetes).
    pub jobs: Option<Box<dyn super::jobs::JobRunner>>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("counters", &self.counters.is_some())
            .finish_non_exhaustive()
    }
}

/// The target `name` as `kind` describes it.
pub fn build(name: &str, kind: &settings::Target, opts: &Options) -> Result<Built, String> {
    if let Some(dir) = &opts.journal {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        return Ok(Built {
            target: Box::new(super::dry_run::DryRun::with_journal(
                dir.join(format!("{name}.journal")),
            )),
            counters: None,
            // A dry run runs no job: a job check there has no result, never a pass.
            jobs: None,
        });
    }
    match kind {
        settings::Target::Local { state_dir } => {
            // The folder comes from the repository's settings: it is confined under
            // the state folder, so a settings change can never point the data plane
            // (which stops leftovers it finds there) at /var or another user's files.
            let dir = confined_local_dir(&opts.state_dir, name, state_dir.as_deref())?;
            // The data plane outlives this daemon: started when none answers, adopted
            // as it is when one does.
            Ok(Built {
                jobs: Some(Box::new(super::local_jobs::LocalJobs::new(
                    dir.join("jobs"),
                ))),
                target: Box::new(crate::dataplane::client::DataPlaneTarget::new(
                    dir.clone(),
                    crate::dataplane::client::Launch::Detached,
                )),
                counters: Some(Arc::new(crate::dataplane::client::DataPlaneCounters::new(
                    dir,
                ))),
            })
        }
        settings::Target::Kubernetes {
            context,
            in_cluster,
            ..
        } => {
            let connected = if *in_cluster {
                super::kubernetes::KubernetesTarget::connect()
            } else {
                super::kubernetes::KubernetesTarget::from_kubeconfig(None, context.as_deref())
            };
            connected
                .map(|t| Built {
                    jobs: Some(Box::new(super::kubernetes::jobs::KubernetesJobs::on(
                        t.connection(),
                    ))),
                    target: Box::new(t),
                    counters: None,
                })
                .map_err(|e| format!("cannot connect to the cluster: {e:#}"))
        }
        // Endpoint and profile are the target's (settings), never a plan's; SDK clients
        // are built per plan region on first use.
        settings::Target::Lambda { endpoint, profile } => {
            super::lambda::LambdaTarget::new(endpoint.clone(), profile.clone())
                .map(|t| Built {
                    target: Box::new(t),
                    counters: None,
                    jobs: None,
                })
                .map_err(|e| format!("cannot start the lambda target: {e:#}"))
        }
    }
}

/// The folder of local target `name`: `STATE/local/<name>`, or the settings' `stateDir`
/// taken relative to `STATE/local/`; an absolute path or one that climbs out with `..`
/// is refused.
pub fn confined_local_dir(
    state: &Path,
    name: &str,
    from_settings: Option<&str>,
) -> Result<PathBuf, String> {
    let base = state.join("local");
    let Some(rel) = from_settings else {
        return Ok(base.join(name));
    };
    let p = Path::new(rel);
    let inside = !rel.is_empty()
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    if inside {
        Ok(base.join(p))
    } else {
        Err(format!(
            "stateDir {rel:?} of local target {name} must be a relative folder inside {} (no `..`, not absolute)",
            base.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_local_state_dir_from_settings_never_leaves_the_state_folder() {
        let state = Path::new("/srv/rollgate");
        assert_eq!(
            confined_local_dir(state, "local", None),
            Ok(state.join("local/local"))
        );
        assert_eq!(
            confined_local_dir(state, "edge", Some("edge/web")),
            Ok(state.join("local/edge/web"))
        );
        for bad in ["/var", "../../etc", "a/../../b", ""] {
            let e = confined_local_dir(state, "edge", Some(bad)).expect_err(bad);
            assert!(e.contains("must be a relative folder"), "{e}");
        }
    }

    #[test]
    fn a_local_target_outside_the_state_folder_is_not_built() {
        let opts = Options {
            state_dir: PathBuf::from("/srv/rollgate"),
            journal: None,
        };
        let kind = settings::Target::Local {
            state_dir: Some("/var".to_owned()),
        };
        let e = build("edge", &kind, &opts).expect_err("refused");
        assert!(e.contains("must be a relative folder"), "{e}");
    }
}
