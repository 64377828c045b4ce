//! The data plane's socket protocol: one JSON object per line each way.
//!
//! A client sends a `Request` line and reads one `Reply` line; a connection may carry
//! many. `PROTOCOL` changes whenever a message changes shape: a daemon that finds a data
//! plane of another protocol refuses to drive it and says how to replace it.
//! Invariants: wire types only (serde shapes); `From` conversions to and from the domain
//! types of `targets::local` live here and nowhere else; unknown fields are refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::identity::Identity;
use crate::engine::TargetHealth;
use crate::model::plan::{LocalWorkload, Routing, Sticky};
use crate::proxy::WindowStats;
use crate::targets::Desired;
use crate::targets::local::{Op, Outcome, Spec};

/// The protocol this build speaks.
pub const PROTOCOL: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Who are you: protocol, build and process identity.
    Hello,
    /// One target call on one plan (the spec boxed: it is most of the enum's size).
    Run { spec: Box<SpecWire>, op: OpWire },
    /// A version's requests over a window on a plan's proxy.
    Window {
        plan: String,
        version: String,
        window_ms: u64,
    },
    /// Drain and stop every workload and proxy, then exit.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Reply {
    Hello {
        protocol: u32,
        version: String,
        identity: Identity,
    },
    Done,
    Failed {
        error: String,
    },
    Health {
        health: HealthWire,
    },
    /// `counted: None`: no proxy for that plan here.
    Window {
        counted: Option<CountedWire>,
    },
    Stopping,
    /// The request could not be read.
    BadRequest {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecWire {
    pub plan: String,
    pub command: Vec<String>,
    pub listen: SocketAddr,
    pub health_path: String,
    pub health_status: u16,
    pub health_timeout_ms: u64,
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub sticky_header: Option<String>,
    #[serde(default)]
    pub sticky_cookie: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OpWire {
    StartCandidate {
        artifact: String,
    },
    SetWeight {
        weight: u8,
    },
    SetRouting {
        routing: Box<crate::model::wire::Routing>,
    },
    Promote {
        artifact: String,
    },
    Rollback {
        stable: Option<String>,
    },
    Resume {
        stable: Option<String>,
        candidate: String,
        weight: u8,
    },
    Health {
        stable: Option<String>,
        candidate: Option<String>,
        weight: u8,
        #[serde(default, skip_serializing_if = "is_default")]
        routing: Box<crate::model::wire::Routing>,
    },
}

fn is_default(r: &crate::model::wire::Routing) -> bool {
    *r == crate::model::wire::Routing::default()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HealthWire {
    Healthy,
    Progressing,
    Unhealthy { reason: String },
    Unreachable { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountedWire {
    pub requests: u64,
    pub by_class: [u64; 5],
    pub latency_sum_us: u64,
    pub hist: Vec<u64>,
    /// When the plan's proxy began counting, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

impl From<&Spec> for SpecWire {
    fn from(s: &Spec) -> Self {
        let w = &s.workload;
        let (sticky_header, sticky_cookie) = match &w.sticky {
            Some(Sticky::Header(h)) => (Some(h.clone()), None),
            Some(Sticky::Cookie(c)) => (None, Some(c.clone())),
            None => (None, None),
        };
        SpecWire {
            plan: s.plan.clone(),
            command: w.command.clone(),
            listen: w.listen,
            health_path: w.health_path.clone(),
            health_status: w.health_status,
            health_timeout_ms: u64::try_from(w.health_timeout.as_millis()).unwrap_or(u64::MAX),
            env: w.env.clone(),
            sticky_header,
            sticky_cookie,
        }
    }
}

impl From<SpecWire> for Spec {
    fn from(s: SpecWire) -> Self {
        let sticky = match (s.sticky_header, s.sticky_cookie) {
            (Some(h), _) => Some(Sticky::Header(h)),
            (None, Some(c)) => Some(Sticky::Cookie(c)),
            (None, None) => None,
        };
        Spec {
            plan: s.plan,
            workload: LocalWorkload {
                command: s.command,
                listen: s.listen,
                health_path: s.health_path,
                health_status: s.health_status,
                health_timeout: Duration::from_millis(s.health_timeout_ms),
                env: s.env,
                sticky,
            },
        }
    }
}

impl From<&Op> for OpWire {
    fn from(op: &Op) -> Self {
        match op.clone() {
            Op::StartCandidate { artifact } => OpWire::StartCandidate { artifact },
            Op::SetWeight { weight } => OpWire::SetWeight { weight },
            Op::SetRouting { routing } => OpWire::SetRouting {
                routing: Box::new(routing.to_wire()),
            },
            Op::Promote { artifact } => OpWire::Promote { artifact },
            Op::Rollback { stable } => OpWire::Rollback { stable },
            Op::Resume {
                stable,
                candidate,
                weight,
            } => OpWire::Resume {
                stable,
                candidate,
                weight,
            },
            Op::Health { desired } => OpWire::Health {
                stable: desired.stable,
                candidate: desired.candidate,
                weight: desired.weight,
                routing: Box::new(desired.routing.to_wire()),
            },
        }
    }
}

impl From<OpWire> for Op {
    fn from(op: OpWire) -> Self {
        match op {
            OpWire::StartCandidate { artifact } => Op::StartCandidate { artifact },
            OpWire::SetWeight { weight } => Op::SetWeight { weight },
            // A match the daemon could not have sent (it validated the plan): no route.
            OpWire::SetRouting { routing } => Op::SetRouting {
                routing: Routing::from_wire(&routing).unwrap_or_default(),
            },
            OpWire::Promote { artifact } => Op::Promote { artifact },
            OpWire::Rollback { stable } => Op::Rollback { stable },
            OpWire::Resume {
                stable,
                candidate,
                weight,
            } => Op::Resume {
                stable,
                candidate,
                weight,
            },
            OpWire::Health {
                stable,
                candidate,
                weight,
                routing,
            } => Op::Health {
                desired: Desired {
                    stable,
                    candidate,
                    weight,
                    routing: Routing::from_wire(&routing).unwrap_or_default(),
                },
            },
        }
    }
}

impl From<&TargetHealth> for HealthWire {
    fn from(h: &TargetHealth) -> Self {
        match h.clone() {
            TargetHealth::Healthy => HealthWire::Healthy,
            TargetHealth::Progressing => HealthWire::Progressing,
            TargetHealth::Unhealthy { reason } => HealthWire::Unhealthy { reason },
            TargetHealth::Unreachable { reason } => HealthWire::Unreachable { reason },
        }
    }
}

impl From<HealthWire> for TargetHealth {
    fn from(h: HealthWire) -> Self {
        match h {
            HealthWire::Healthy => TargetHealth::Healthy,
            HealthWire::Progressing => TargetHealth::Progressing,
            HealthWire::Unhealthy { reason } => TargetHealth::Unhealthy { reason },
            HealthWire::Unreachable { reason } => TargetHealth::Unreachable { reason },
        }
    }
}

impl From<&Outcome> for Reply {
    fn from(o: &Outcome) -> Self {
        match o {
            Outcome::Done => Reply::Done,
            Outcome::Failed(error) => Reply::Failed {
                error: error.clone(),
            },
            Outcome::Health(h) => Reply::Health { health: h.into() },
        }
    }
}

impl CountedWire {
    pub fn new(w: &WindowStats, since: std::time::SystemTime) -> Self {
        CountedWire {
            requests: w.requests,
            by_class: w.by_class,
            latency_sum_us: u64::try_from(w.latency_sum.as_micros()).unwrap_or(u64::MAX),
            hist: w.hist().to_vec(),
            since_ms: since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The window and its proxy's start; `None` when the histogram is not this build's.
    pub fn into_parts(self) -> Option<(WindowStats, std::time::SystemTime)> {
        let since = std::time::UNIX_EPOCH + Duration::from_millis(self.since_ms);
        WindowStats::from_parts(
            self.requests,
            self.by_class,
            Duration::from_micros(self.latency_sum_us),
            self.hist,
        )
        .map(|w| (w, since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_and_spec_round_trips_through_its_wire_form() {
        let spec = Spec {
            plan: "web".to_owned(),
            workload: LocalWorkload {
                command: vec!["app".to_owned(), "--port".to_owned(), "{{port}}".to_owned()],
                listen: "127.0.0.1:8080".parse().expect("addr"),
                health_path: "/healthz".to_owned(),
                health_status: 204,
                health_timeout: Duration::from_millis(1500),
                env: BTreeMap::from([("A".to_owned(), "b".to_owned())]),
                sticky: Some(Sticky::Cookie("canary".to_owned())),
            },
        };
        let line = serde_json::to_string(&SpecWire::from(&spec)).expect("json");
        let back: SpecWire = serde_json::from_str(&line).expect("parse");
        assert_eq!(Spec::from(back), spec);
        let ops = [
            Op::StartCandidate {
                artifact: "v2".to_owned(),
            },
            Op::SetWeight { weight: 20 },
            Op::Promote {
                artifact: "v2".to_owned(),
            },
            Op::Rollback { stable: None },
            Op::Resume {
                stable: Some("v1".to_owned()),
                candidate: "v2".to_owned(),
                weight: 50,
            },
            Op::Health {
                desired: Desired {
                    stable: Some("v1".to_owned()),
                    candidate: None,
                    weight: 0,
                    ..Default::default()
                },
            },
        ];
        for op in ops {
            let line = serde_json::to_string(&OpWire::from(&op)).expect("json");
            let back: OpWire = serde_json::from_str(&line).expect("parse");
            assert_eq!(Op::from(back), op);
        }
    }

    #[test]
    fn a_request_with_an_unknown_field_is_refused() {
        let r: Result<Request, _> = serde_json::from_str(
            r#"{"request":"window","plan":"web","version":"v1","window_ms":1000,"all":true}"#,
        );
        assert!(r.is_err());
    }
}
