//! The pure core of leader election: what a process should do with the Lease as it
//! last read it, at `now`.
//!
//! Invariants: no I/O and no clock (`now` and the moment the Lease version was first
//! seen come in); a lease held by another process expires one lease duration after
//! *this* process first saw its current version, never by comparing the holder's
//! `renewTime` with our clock; a released lease (no holder) is taken at once; the
//! holder always renews; time arithmetic saturates instead of overflowing.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::LeaseConfig;

/// What the pure core needs to know about an existing Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// `holderIdentity`; `None` (or empty) when the lease was released.
    pub holder: Option<String>,
    /// `leaseDurationSeconds` as written by the holder.
    pub lease_duration: Option<Duration>,
    /// `leaseTransitions`.
    pub transitions: i32,
    /// When this process first saw this version of the Lease (by its own clock).
    pub observed_at: DateTime<Utc>,
}

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No lease, or a released one: take it, writing `transitions`.
    Acquire { transitions: i32 },
    /// We hold it: renew it.
    Renew,
    /// `previous` held it and it expired: take it over, writing `transitions`.
    TakeOver { previous: String, transitions: i32 },
    /// `holder` holds it; it cannot be taken before `until`.
    Follow {
        holder: String,
        until: DateTime<Utc>,
    },
}

/// `t + d`, saturating.
pub(super) fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The pure core: what process `me` should do with `lease` (as last read) at `now`.
pub fn decide(
    lease: Option<&LeaseState>,
    me: &str,
    now: DateTime<Utc>,
    cfg: &LeaseConfig,
) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Acquire { transitions: 0 };
    };
    let next = lease.transitions.saturating_add(1);
    let holder = match lease.holder.as_deref() {
        None | Some("") => return LeaseDecision::Acquire { transitions: next },
        Some(h) if h == me => return LeaseDecision::Renew,
        Some(h) => h,
    };
    let duration = lease
        .lease_duration
        .filter(|d| !d.is_zero())
        .unwrap_or(cfg.lease_duration);
    let until = after(lease.observed_at, duration);
    if now < until {
        LeaseDecision::Follow {
            holder: holder.to_owned(),
            until,
        }
    } else {
        LeaseDecision::TakeOver {
            previous: holder.to_owned(),
            transitions: next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("time")
    }

    fn held(holder: &str, observed: i64) -> LeaseState {
        LeaseState {
            holder: Some(holder.to_owned()),
            lease_duration: Some(Duration::from_secs(15)),
            transitions: 3,
            observed_at: t(observed),
        }
    }

    #[test]
    fn an_absent_lease_is_acquired_with_no_transitions() {
        let d = decide(None, "a", t(0), &LeaseConfig::default());
        assert_eq!(d, LeaseDecision::Acquire { transitions: 0 });
    }

    #[test]
    fn a_released_lease_is_acquired_at_once_and_counts_a_transition() {
        let cfg = LeaseConfig::default();
        for holder in [None, Some(String::new())] {
            let lease = LeaseState {
                holder,
                ..held("x", 0)
            };
            // Just released: no waiting for a lease duration.
            let d = decide(Some(&lease), "a", t(0), &cfg);
            assert_eq!(d, LeaseDecision::Acquire { transitions: 4 });
        }
    }

    #[test]
    fn the_holder_renews_even_past_the_duration() {
        let cfg = LeaseConfig::default();
        assert_eq!(
            decide(Some(&held("a", 0)), "a", t(1), &cfg),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(Some(&held("a", 0)), "a", t(100), &cfg),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn another_holder_is_followed_until_one_duration_after_we_first_saw_the_lease() {
        let cfg = LeaseConfig::default();
        let lease = held("b", 10);
        assert_eq!(
            decide(Some(&lease), "a", t(24), &cfg),
            LeaseDecision::Follow {
                holder: "b".into(),
                until: t(25)
            }
        );
        assert_eq!(
            decide(Some(&lease), "a", t(25), &cfg),
            LeaseDecision::TakeOver {
                previous: "b".into(),
                transitions: 4
            }
        );
    }

    #[test]
    fn the_duration_written_in_the_lease_wins_over_ours() {
        let cfg = LeaseConfig::default();
        let lease = LeaseState {
            lease_duration: Some(Duration::from_secs(60)),
            ..held("b", 0)
        };
        assert!(matches!(
            decide(Some(&lease), "a", t(59), &cfg),
            LeaseDecision::Follow { until, .. } if until == t(60)
        ));
        // A missing or zero duration falls back to ours.
        for d in [None, Some(Duration::ZERO)] {
            let lease = LeaseState {
                lease_duration: d,
                ..held("b", 0)
            };
            assert!(matches!(
                decide(Some(&lease), "a", t(15), &cfg),
                LeaseDecision::TakeOver { .. }
            ));
        }
    }

    #[test]
    fn a_huge_duration_saturates_instead_of_overflowing() {
        let lease = LeaseState {
            lease_duration: Some(Duration::MAX),
            ..held("b", 0)
        };
        assert!(matches!(
            decide(Some(&lease), "a", t(1_000_000), &LeaseConfig::default()),
            LeaseDecision::Follow { .. }
        ));
    }
}
