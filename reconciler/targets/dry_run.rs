//! A target that changes nothing and records what it was asked to do.
//!
//! Used by `rollgate run --dry-run` (see what a rollout would do, in a journal file)
//! and by tests as the recording target. Its state survives restarts through the
//! journal, so re-applying a step is visibly idempotent.
//!
//! Memory: one `Workload` per plan. With a journal the file is the record of calls,
//! and `calls` stays empty: a daemon's dry run kept every call of every rollout in
//! memory for as long as it ran (#21).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use super::{Desired, Target, TargetError};
use crate::engine::TargetHealth;
use crate::model::Plan;
use crate::model::plan::Routing;

/// The state one plan's workload would be in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub stable: Option<String>,
    pub candidate: Option<String>,
    pub weight: u8,
    pub routing: Routing,
}

#[derive(Debug, Default)]
pub struct DryRun {
    pub workloads: BTreeMap<String, Workload>,
    /// Every call, as `plan action args`, in order; only without a journal (tests).
    pub calls: Vec<String>,
    journal: Option<PathBuf>,
    /// Fail every call with this message (to test unreachable targets).
    pub unreachable: Option<String>,
}

impl DryRun {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append every call to `path` (one line each) and rebuild the state from it.
    pub fn with_journal(path: PathBuf) -> Self {
        let mut me = Self {
            journal: Some(path.clone()),
            ..Self::default()
        };
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                me.replay(line);
            }
        }
        me
    }

    fn replay(&mut self, line: &str) {
        let mut parts = line.splitn(3, ' ');
        let (Some(plan), Some(action)) = (parts.next(), parts.next()) else {
            return;
        };
        let arg = parts.next().unwrap_or("");
        let w = self.workloads.entry(plan.to_owned()).or_default();
        match action {
            "start" => {
                w.candidate = Some(arg.to_owned());
                w.weight = 0;
                w.routing = Routing::default();
            }
            "weight" => w.weight = arg.parse().unwrap_or(w.weight),
            "routing" => {
                if let Some(r) = serde_json::from_str(arg)
                    .ok()
                    .and_then(|r| Routing::from_wire(&r))
                {
                    w.routing = r;
                }
            }
            "promote" => {
                w.stable = Some(arg.to_owned());
                w.candidate = None;
                w.weight = 0;
                w.routing = Routing::default();
            }
            "rollback" => {
                if !arg.is_empty() {
                    w.stable = Some(arg.to_owned());
                }
                w.candidate = None;
                w.weight = 0;
                w.routing = Routing::default();
            }
            _ => {}
        }
        if self.journal.is_none() {
            self.calls.push(line.to_owned());
        }
    }

    fn record(&mut self, plan: &Plan, action: &str, arg: &str) -> Result<(), TargetError> {
        if let Some(reason) = &self.unreachable {
            return Err(TargetError::failed(reason.clone()));
        }
        let line = format!("{} {action} {arg}", plan.name);
        if let Some(path) = &self.journal {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| TargetError::failed(format!("cannot write journal: {e}")))?;
            writeln!(f, "{line}")
                .map_err(|e| TargetError::failed(format!("cannot write journal: {e}")))?;
        }
        self.replay(&line);
        Ok(())
    }

    pub fn workload(&self, plan: &str) -> Workload {
        self.workloads.get(plan).cloned().unwrap_or_default()
    }
}

impl Target for DryRun {
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.record(plan, "start", artifact)
    }

    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError> {
        self.record(plan, "weight", &weight.to_string())
    }

    /// Journalled as `plan routing {"match":[…],"mirror":N,"baseline":true}` (one line
    /// of JSON; empty parts left out).
    fn set_routing(&mut self, plan: &Plan, routing: &Routing) -> Result<(), TargetError> {
        let caps = plan.workload.capabilities();
        if !caps.routes_by(&routing.matches) || (routing.mirror > 0 && !caps.mirror) {
            return Err(TargetError::refused(format!(
                "{} workloads cannot route by header or mirror requests",
                plan.workload.kind()
            )));
        }
        if routing.baseline && !caps.fresh_baseline {
            return Err(TargetError::refused(format!(
                "{} workloads cannot run a fresh baseline",
                plan.workload.kind()
            )));
        }
        let json = serde_json::to_string(&routing.to_wire())
            .map_err(|e| TargetError::failed(format!("routing: {e}")))?;
        self.record(plan, "routing", &json)
    }

    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        self.record(plan, "promote", artifact)
    }

    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError> {
        self.record(plan, "rollback", stable.unwrap_or(""))
    }

    /// Nothing runs, so there is nothing to count: no evidence, never a pass.
    fn readiness(&mut self, plan: &Plan) -> Result<crate::engine::Measurement, String> {
        Err(format!(
            "dry run: plan {} runs no replicas to count for replica-health",
            plan.name
        ))
    }

    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth {
        if let Some(reason) = &self.unreachable {
            return TargetHealth::Unreachable {
                reason: reason.clone(),
            };
        }
        let w = self.workload(&plan.name);
        let now = Desired {
            stable: w.stable,
            candidate: w.candidate,
            weight: w.weight,
            routing: w.routing,
        };
        if &now == desired
            || (desired.stable.is_none()
                && now.candidate == desired.candidate
                && now.weight == desired.weight)
        {
            TargetHealth::Healthy
        } else {
            TargetHealth::Progressing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract;
    use super::*;

    fn plan(strategy: &str) -> Plan {
        crate::model::validate::parse_plan(
            "plans/p.yaml",
            &format!(
                "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: p }}\nspec:\n  target: t\n  workload:\n    local: {{ command: [srv], listen: \"127.0.0.1:9\" }}\n  artifact: v2\n  strategy:\n    {strategy}\n"
            ),
            None,
        )
        .expect("plan parses")
        .plan
    }

    fn canary() -> Plan {
        plan("canary: { steps: [ { setWeight: 100 } ] }")
    }

    #[test]
    fn dry_run_passes_the_target_contract() {
        let mut t = DryRun::new();
        contract::run(
            &mut t,
            &canary(),
            None,
            "v2",
            "v3",
            1,
            std::time::Duration::ZERO,
        );
        // Re-applying steps is visible but harmless: the state is the same.
        assert_eq!(t.workload("p").stable.as_deref(), Some("v2"));
    }

    /// `rollgate run --dry-run` builds its target with a journal: that one passes the
    /// contract too, for a canary and a blue-green plan, and again after a restart that
    /// rebuilt its state from the journal (the stable version then already there).
    #[test]
    fn the_journalled_dry_run_of_run_dry_run_passes_the_target_contract() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("journal");
        let canary = canary();
        let blue_green = plan("blueGreen: { autoPromote: true }");
        let mut t = DryRun::with_journal(path.clone());
        for p in [&canary, &blue_green] {
            contract::run(&mut t, p, None, "v2", "v3", 1, std::time::Duration::ZERO);
        }
        drop(t);
        let mut again = DryRun::with_journal(path.clone());
        assert_eq!(
            again.workload("p"),
            Workload {
                stable: Some("v2".to_owned()),
                candidate: None,
                weight: 0,
                ..Default::default()
            }
        );
        contract::run(
            &mut again,
            &canary,
            Some("v2"),
            "v4",
            "v5",
            1,
            std::time::Duration::ZERO,
        );
        assert_eq!(
            DryRun::with_journal(path).workload("p").stable.as_deref(),
            Some("v4")
        );
    }

    #[test]
    fn the_journal_restores_state_after_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("journal");
        let plan = canary();
        {
            let mut t = DryRun::with_journal(path.clone());
            t.start_candidate(&plan, "v2").expect("start");
            t.set_weight(&plan, 25).expect("weight");
        }
        let t = DryRun::with_journal(path);
        assert_eq!(t.workload("p").candidate.as_deref(), Some("v2"));
        assert_eq!(t.workload("p").weight, 25);
    }

    #[test]
    fn regression_a_journalled_dry_run_does_not_keep_every_call_in_memory() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("journal");
        let plan = canary();
        let mut t = DryRun::with_journal(path.clone());
        for round in 0..100 {
            let v = format!("v{round}");
            t.start_candidate(&plan, &v).expect("start");
            t.set_weight(&plan, 50).expect("weight");
            t.promote(&plan, &v).expect("promote");
        }
        // The journal has every call, memory only the workload it left
        let lines = std::fs::read_to_string(&path).expect("journal");
        assert_eq!(lines.lines().count(), 300);
        assert!(t.calls.is_empty(), "{} calls kept", t.calls.len());
        assert_eq!(t.workload("p").stable.as_deref(), Some("v99"));
        let again = DryRun::with_journal(path);
        assert!(again.calls.is_empty());
        assert_eq!(again.workload("p").stable.as_deref(), Some("v99"));
        // Without a journal, the calls are the record (tests read them)
        let mut plain = DryRun::new();
        plain.set_weight(&plan, 5).expect("weight");
        assert_eq!(plain.calls, vec!["p weight 5".to_owned()]);
    }
}
