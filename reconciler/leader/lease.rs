//! The adapter of leader election: [`LeaseElector`] reads the Lease, asks the pure
//! core ([`super::decide()`]) and creates or replaces it, one round at a time.
//!
//! Invariants: every replace carries the `resourceVersion` it read (or is a create), so
//! of two processes racing for the lease one gets a 409 and follows; a process is
//! leader only until its last *successful* acquire or renew plus the renew deadline;
//! a failed round changes nothing; every API call made here is listed in [`RBAC`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::core::ObjectMeta;

use super::LeaseConfig;
use super::decide::{LeaseDecision, LeaseState, after, decide};

/// Every API call leader election and sharding make, as (apiGroup, resource, verbs):
/// `get` the Lease each round (`--leader-elect`), `list` the shard and member Leases
/// each round (`--shards`, by label), `create` one when absent, `update` (a PUT
/// carrying the `resourceVersion` read) to acquire, renew, take over or release it.
/// No `watch`: rounds poll every retry period. Leases live in rollgate's own
/// namespace, so `deploy/kubernetes` grants these with a namespaced Role.
pub const RBAC: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["get", "list", "create", "update"],
)];

/// A failed call to the API server (the round changes nothing; a leader stays leader
/// until its renew deadline).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LeaseError(String);

/// `what: cause`, the cause once (kube's `Display` of an API error repeats it).
pub(super) fn api_err(what: &str, e: kube::Error) -> LeaseError {
    match e {
        kube::Error::Api(s) => LeaseError(format!(
            "{what}: {} ({} {})",
            s.message.trim_end(),
            s.code,
            s.reason
        )),
        e => LeaseError(format!("{what}: {e}")),
    }
}

pub(super) fn micro_time(t: DateTime<Utc>) -> Result<MicroTime, LeaseError> {
    k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros())
        .map(MicroTime)
        .map_err(|e| LeaseError(format!("time {t} is out of range: {e}")))
}

/// Where this process stands after one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// This process holds the lease and may act until `until` unless it renews.
    Leader { until: DateTime<Utc> },
    /// Another process holds the lease: `holder`, or `None` after losing a write race
    /// (the winner shows at the next round).
    Follower { holder: Option<String> },
}

/// The adapter: one Lease, one identity, rounds of get-decide-write.
pub struct LeaseElector {
    api: Api<Lease>,
    pub(super) name: String,
    identity: String,
    pub(super) cfg: LeaseConfig,
    /// The `resourceVersion` last read and when we first saw it.
    observed: Option<(String, DateTime<Utc>)>,
    /// When the last successful acquire or renew started.
    renewed_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for LeaseElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseElector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("cfg", &self.cfg)
            .field("renewed_at", &self.renewed_at)
            .finish_non_exhaustive()
    }
}

impl LeaseElector {
    /// The Lease `namespace/name`, contended for as `identity`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        cfg: LeaseConfig,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            cfg,
            observed: None,
            renewed_at: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// Until when this process may act, if it holds the lease.
    pub fn leader_until(&self) -> Option<DateTime<Utc>> {
        self.renewed_at.map(|t| after(t, self.cfg.renew_deadline))
    }

    /// Whether this process may act at `now`: its last successful acquire or renew
    /// started less than the renew deadline before `now`. No I/O.
    pub fn is_leader(&self, now: DateTime<Utc>) -> bool {
        self.leader_until().is_some_and(|until| now < until)
    }

    /// What the pure core sees of `lease`, noting when this version was first seen.
    fn state_of(&mut self, lease: &Lease, now: DateTime<Utc>) -> LeaseState {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let observed_at = match &self.observed {
            Some((v, at)) if *v == version => *at,
            _ => {
                self.observed = Some((version, now));
                now
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseState {
            holder: spec.holder_identity,
            lease_duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            transitions: spec.lease_transitions.unwrap_or(0),
            observed_at,
        }
    }

    /// One round: read the Lease, decide, and create or replace it if ours to take.
    /// An error leaves the role as it was (a leader stays one until its deadline).
    pub async fn try_acquire_or_renew(&mut self, now: DateTime<Utc>) -> Result<Role, LeaseError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_err(&format!("cannot read lease {}", self.name), e))?;
        let state = current.as_ref().map(|l| self.state_of(l, now));
        let decision = decide(state.as_ref(), &self.identity, now, &self.cfg);
        let (transitions, acquired) = match decision {
            LeaseDecision::Follow { holder, .. } => {
                self.renewed_at = None;
                return Ok(Role::Follower {
                    holder: Some(holder),
                });
            }
            LeaseDecision::Renew => (None, false),
            LeaseDecision::Acquire { transitions }
            | LeaseDecision::TakeOver { transitions, .. } => (Some(transitions), true),
        };
        let stamp = micro_time(now)?;
        let duration = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        labels: Some(
                            [(
                                crate::targets::kubernetes::MANAGED_BY.0.to_owned(),
                                crate::targets::kubernetes::MANAGED_BY.1.to_owned(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(stamp.clone()),
                        renew_time: Some(stamp),
                        lease_transitions: Some(transitions.unwrap_or(0)),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Everything else (metadata with its resourceVersion, other spec fields)
                // is written back as read.
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(duration);
                if acquired || spec.acquire_time.is_none() {
                    spec.acquire_time = Some(stamp.clone());
                }
                spec.renew_time = Some(stamp);
                if let Some(t) = transitions {
                    spec.lease_transitions = Some(t);
                }
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.observed = lease.metadata.resource_version.map(|v| (v, now));
                self.renewed_at = Some(now);
                Ok(Role::Leader {
                    until: after(now, self.cfg.renew_deadline),
                })
            }
            // Someone else wrote the Lease since we read it (or created it first).
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.renewed_at = None;
                self.observed = None;
                Ok(Role::Follower { holder: None })
            }
            Err(e) => Err(api_err(&format!("cannot write lease {}", self.name), e)),
        }
    }

    /// Give the lease up (clear `holderIdentity`) if this process holds it, so a
    /// follower takes it at its next round. Stops acting first, whatever the outcome.
    /// Returns whether a release was written.
    pub async fn release(&mut self, now: DateTime<Utc>) -> Result<bool, LeaseError> {
        self.renewed_at = None;
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_err(&format!("cannot read lease {}", self.name), e))?
        else {
            return Ok(false);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = Some(micro_time(now)?);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| api_err(&format!("cannot release lease {}", self.name), e))?;
        Ok(true)
    }
}
