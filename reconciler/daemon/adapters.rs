//! Targets and metrics sources built from the settings at head, and rebuilt when a
//! later head changes their entry (`Reconciler::with_adapters`).
//!
//! Invariants: only the entries a change touches are rebuilt; the others keep their
//! state (a data plane client, a cluster connection); an entry that cannot be built is
//! absent, so its plans hold (never a fallback); `builtin` always exists and reads every
//! local target's counters; invalid settings at head keep what was built last.

use super::*;

/// The daemon's targets and metrics sources as built from settings: what each was built
/// from, so a settings change rebuilds only the entries it touches.
pub(super) struct Adapters {
    pub(super) opts: crate::targets::factory::Options,
    pub(super) targets: BTreeMap<String, crate::model::settings::Target>,
    pub(super) metrics: BTreeMap<String, crate::model::settings::MetricsSource>,
    pub(super) counters: BTreeMap<String, Arc<dyn crate::metrics::builtin::ProxyCounters>>,
    pub(super) built: bool,
}

impl Reconciler {
    /// Bring the targets and metrics sources in line with the settings at head: build
    /// what is new or changed, drop what is gone, keep the rest as it is (a data plane
    /// client, a cluster connection). No-op without `with_adapters`.
    pub(super) fn rebuild_adapters(&mut self) {
        let Some(a) = self.adapters.as_mut() else {
            return;
        };
        let Some(settings) = self.report.settings.as_ref() else {
            if a.built {
                tracing::warn!(
                    "the settings at head are invalid: targets and metrics sources stay as they were"
                );
            }
            return;
        };
        if a.built && a.targets == settings.targets && a.metrics == settings.metrics {
            return;
        }
        let first = !a.built;
        a.built = true;
        let mut counters_changed = first;
        for gone in a
            .targets
            .keys()
            .filter(|n| !settings.targets.contains_key(*n))
            .cloned()
            .collect::<Vec<_>>()
        {
            tracing::info!(target_name = %gone, "target removed from the settings");
            self.targets.remove(&gone);
            self.jobs.remove(&gone);
            a.targets.remove(&gone);
            counters_changed |= a.counters.remove(&gone).is_some();
        }
        for (name, kind) in &settings.targets {
            if a.targets.get(name) == Some(kind) {
                continue;
            }
            if !first {
                tracing::info!(target_name = %name, kind = kind.kind(), "target (re)built: its settings changed");
            }
            a.targets.insert(name.clone(), kind.clone());
            counters_changed |= a.counters.remove(name).is_some();
            match crate::targets::factory::build(name, kind, &a.opts) {
                Ok(built) => {
                    self.targets.insert(name.clone(), built.target);
                    match built.jobs {
                        Some(j) => self.jobs.insert(name.clone(), j),
                        None => self.jobs.remove(name),
                    };
                    if let Some(c) = built.counters {
                        a.counters.insert(name.clone(), c);
                        counters_changed = true;
                    }
                }
                Err(why) => {
                    // Its plans hold (target not available); the others go on.
                    self.targets.remove(name);
                    self.jobs.remove(name);
                    tracing::warn!(target_name = %name, error = %why, "target unavailable; its plans hold");
                }
            }
        }
        for gone in a
            .metrics
            .keys()
            .filter(|n| !settings.metrics.contains_key(*n))
            .cloned()
            .collect::<Vec<_>>()
        {
            self.metrics.remove(&gone);
            a.metrics.remove(&gone);
        }
        for (name, kind) in &settings.metrics {
            if a.metrics.get(name) == Some(kind) {
                continue;
            }
            a.metrics.insert(name.clone(), kind.clone());
            match crate::metrics::factory::build(kind) {
                Ok(source) => {
                    self.metrics.insert(name.clone(), source);
                }
                Err(why) => {
                    self.metrics.remove(name);
                    tracing::warn!(source = %name, error = %why, "metrics source unavailable; its checks will hold");
                }
            }
        }
        if counters_changed {
            self.metrics.insert(
                crate::metrics::factory::BUILTIN.to_owned(),
                crate::metrics::factory::builtin(a.counters.values().cloned().collect()),
            );
        }
    }
}
