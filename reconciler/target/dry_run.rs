//! A target that changes nothing and records what it was asked to do.
//!
//! Used by `rollgate run --dry-run` (see what a rollout would do, in a journal file)
//! and by tests as the recording target. Its state survives restarts through the
//! journal, so re-applying a step is visibly idempotent.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use super::{Desired, Target, TargetError};
use crate::engine::TargetHealth;
use crate::model::Plan;

/// The state one plan's workload would be in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    pub stable: Option<String>,
    pub candidate: Option<String>,
    pub weight: u8,
}

#[derive(Debug, Default)]
pub struct DryRun {
    pub workloads: BTreeMap<String, Workload>,
    /// Every call, as `plan action args`, in order.
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
            }
            "weight" => w.weight = arg.parse().unwrap_or(w.weight),
            "promote" => {
                w.stable = Some(arg.to_owned());
                w.candidate = None;
                w.weight = 0;
            }
            "rollback" => {
                if !arg.is_empty() {
                    w.stable = Some(arg.to_owned());
                }
                w.candidate = None;
                w.weight = 0;
            }
            _ => {}
        }
        self.calls.push(line.to_owned());
    }

    fn record(&mut self, plan: &Plan, action: &str, arg: &str) -> Result<(), TargetError> {
        if let Some(reason) = &self.unreachable {
            return Err(TargetError(reason.clone()));
        }
        let line = format!("{} {action} {arg}", plan.name);
        if let Some(path) = &self.journal {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| TargetError(format!("cannot write journal: {e}")))?;
            writeln!(f, "{line}").map_err(|e| TargetError(format!("cannot write journal: {e}")))?;
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
