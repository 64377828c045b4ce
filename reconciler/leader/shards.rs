//! The pure core of sharding (`rollgate run --shards N`): which shard a plan belongs
//! to, and what one replica should do with every shard and member Lease, as last read,
//! at `now`.
//!
//! ```text
//!   plan ──stable hash──▶ shard i of N          (fixed per deployment)
//!   shard i ──Lease "<base>-shard-i-of-N"──▶ replica   (moves: fair share, lapses)
//!   replica ──Lease "<base>-member-k-of-N"──▶ seen    (how many replicas are alive)
//! ```
//!
//! Invariants: no I/O and no clock; plan → shard depends only on the plan's name and
//! N (FNV-1a, never a `Hash` of std whose seed or algorithm may change); each shard
//! Lease is decided by the single-lease core ([`super::decide()`]), so a shard held by
//! another replica is taken only when released or one lease duration after we first
//! saw its current version; a replica never holds more than its fair share
//! ⌈N / replicas⌉ after a round (the excess is released, never taken over), and never
//! acquires beyond it; replicas are this one plus the holders of member Leases that
//! changed within three retry periods (counting sizes the fair share only);
//! while a Lease of another shard count is live (a changed `--shards` mid-rollout) this
//! replica holds no shard at all, since two layouts could give one plan two owners.

use chrono::{DateTime, Utc};

use super::LeaseConfig;
use super::decide::{LeaseDecision, LeaseState, after, decide};

/// The shard of `plan` among `shards` (0 when `shards` is 0 or 1): FNV-1a 64 of the
/// name's bytes, modulo `shards`. Stable across builds, platforms and releases.
pub fn shard_of(plan: &str, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    (fnv1a(plan.as_bytes()) % u64::from(shards)) as u32
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The Lease of shard `i` of `n`: `<base>-shard-<i>-of-<n>`.
pub fn shard_lease_name(base: &str, i: u32, n: u32) -> String {
    format!("{base}-shard-{i}-of-{n}")
}

/// The member Lease in slot `k` of `n`: `<base>-member-<k>-of-<n>` (one per live
/// replica; a replica beyond the `n`th has no slot and would get no shard anyway).
pub fn member_lease_name(base: &str, k: u32, n: u32) -> String {
    format!("{base}-member-{k}-of-{n}")
}

/// What to do with one Lease this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    /// Absent or released: take it, writing `transitions`.
    Acquire { transitions: i32 },
    /// Another holder let it lapse: take it over, writing `transitions`.
    TakeOver { previous: String, transitions: i32 },
    /// Ours, and we keep it.
    Renew,
    /// Ours, beyond what we may keep: stop acting on it, then give it back.
    Release,
    /// Not ours, and not wanted (held by another, or beyond our fair share).
    Leave,
}

impl SlotAction {
    /// Whether this replica holds the Lease after the action succeeds.
    pub fn holds(&self) -> bool {
        matches!(
            self,
            Self::Acquire { .. } | Self::TakeOver { .. } | Self::Renew
        )
    }
}

/// One replica's decision for one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDecision {
    /// Per member slot, in order.
    pub members: Vec<SlotAction>,
    /// Per shard, in order.
    pub shards: Vec<SlotAction>,
    /// Live replicas seen, this one included.
    pub replicas: usize,
    /// ⌈shards / replicas⌉ (0 while another layout is live).
    pub fair_share: usize,
}

/// What the pure core sees: every shard and member Lease of this layout (`None`:
/// absent), and whether a Lease of another shard count is held and live.
#[derive(Debug, Clone, Copy)]
pub struct ShardView<'a> {
    pub shards: &'a [Option<LeaseState>],
    pub members: &'a [Option<LeaseState>],
    pub other_layout_live: bool,
}

/// This replica's preference for shard `i` (rendezvous hashing): replicas prefer
/// different shards, so starting together they rarely race for the same Lease, and
/// the shards a replica keeps depend on its identity, not on Lease order.
fn preference(me: &str, i: usize) -> u64 {
    let mut key = Vec::with_capacity(me.len() + 9);
    key.extend_from_slice(me.as_bytes());
    key.push(0);
    key.extend_from_slice(&(i as u64).to_le_bytes());
    fnv1a(&key)
}

/// The pure core: what replica `me` does with every Lease of `view` at `now`.
pub fn decide_shards(
    view: ShardView<'_>,
    me: &str,
    now: DateTime<Utc>,
    cfg: &LeaseConfig,
) -> ShardDecision {
    let base = |l: &Option<LeaseState>| decide(l.as_ref(), me, now, cfg);
    let takeable = |d: LeaseDecision| match d {
        LeaseDecision::Acquire { transitions } => Some(SlotAction::Acquire { transitions }),
        LeaseDecision::TakeOver {
            previous,
            transitions,
        } => Some(SlotAction::TakeOver {
            previous,
            transitions,
        }),
        LeaseDecision::Renew | LeaseDecision::Follow { .. } => None,
    };

    // Membership: keep the lowest slot we hold, give back any other; without one, take
    // the first free or lapsed slot.
    let member_base: Vec<LeaseDecision> = view.members.iter().map(base).collect();
    // Counted as alive: another's member Lease that changed (or was first seen) within
    // the last three retry periods. Counting only sizes the fair share, it never lets
    // a Lease be taken before it lapses, so a replica that stopped renewing can stop
    // counting sooner than its Leases lapse: a newcomer, which must not trust a Lease's
    // age, does not wait a whole lease duration to discount a dead replica.
    let recent = cfg.retry_period.saturating_mul(3);
    let others_alive = member_base
        .iter()
        .zip(view.members)
        .filter(|(d, l)| {
            matches!(d, LeaseDecision::Follow { .. })
                && l.as_ref()
                    .is_some_and(|l| now < after(l.observed_at, recent))
        })
        .count();
    let mut members = Vec::with_capacity(member_base.len());
    let mut have_slot = false;
    for d in member_base {
        members.push(match d {
            LeaseDecision::Renew if !have_slot => {
                have_slot = true;
                SlotAction::Renew
            }
            LeaseDecision::Renew => SlotAction::Release,
            LeaseDecision::Follow { .. } => SlotAction::Leave,
            d => match takeable(d) {
                Some(a) if !have_slot => {
                    have_slot = true;
                    a
                }
                _ => SlotAction::Leave,
            },
        });
    }
    let replicas = others_alive + 1;
    let n = view.shards.len();
    let fair_share = if view.other_layout_live {
        0
    } else {
        n.div_ceil(replicas)
    };

    // Shards: keep up to the fair share of those held (the most preferred), release
    // the rest; below it, take free or lapsed ones, the most preferred first.
    let shard_base: Vec<LeaseDecision> = view.shards.iter().map(base).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(preference(me, i)));
    let mut shards = vec![SlotAction::Leave; n];
    let mut kept = 0;
    for &i in &order {
        if shard_base[i] == LeaseDecision::Renew {
            shards[i] = if kept < fair_share {
                kept += 1;
                SlotAction::Renew
            } else {
                SlotAction::Release
            };
        }
    }
    for &i in &order {
        if kept >= fair_share {
            break;
        }
        if let Some(a) = takeable(shard_base[i].clone()) {
            shards[i] = a;
            kept += 1;
        }
    }
    ShardDecision {
        members,
        shards,
        replicas,
        fair_share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("time")
    }

    fn held(holder: &str, observed: i64) -> Option<LeaseState> {
        Some(LeaseState {
            holder: Some(holder.to_owned()),
            lease_duration: Some(Duration::from_secs(15)),
            transitions: 0,
            observed_at: t(observed),
        })
    }

    fn cfg() -> LeaseConfig {
        LeaseConfig::default()
    }

    fn count(d: &[SlotAction], f: impl Fn(&SlotAction) -> bool) -> usize {
        d.iter().filter(|a| f(a)).count()
    }

    #[test]
    fn plan_to_shard_is_a_fixed_fnv1a_that_never_changes_between_releases() {
        // Pinned values: a change here moves plans between shards on upgrade.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("checkout", 1), 0);
        assert_eq!(shard_of("checkout", 0), 0);
        let n = 7;
        let s = shard_of("checkout", n);
        assert!(s < n);
        assert_eq!(s, (fnv1a(b"checkout") % 7) as u32);
    }

    #[test]
    fn three_hundred_plans_spread_over_shards_within_a_third_of_the_mean() {
        let n = 12;
        let mut per = vec![0usize; n as usize];
        for k in 0..300 {
            per[shard_of(&format!("plan-{k:03}"), n) as usize] += 1;
        }
        for c in &per {
            assert!((17..=33).contains(c), "{per:?}");
        }
    }

    #[test]
    fn a_lone_replica_takes_a_member_slot_and_every_shard() {
        let shards = vec![None; 6];
        let members = vec![None; 6];
        let d = decide_shards(
            ShardView {
                shards: &shards,
                members: &members,
                other_layout_live: false,
            },
            "a",
            t(0),
            &cfg(),
        );
        assert_eq!(d.replicas, 1);
        assert_eq!(d.fair_share, 6);
        assert_eq!(d.members[0], SlotAction::Acquire { transitions: 0 });
        assert_eq!(count(&d.members, SlotAction::holds), 1);
        assert!(d.shards.iter().all(SlotAction::holds));
    }

    #[test]
    fn a_replica_above_its_fair_share_releases_the_excess_and_takes_nothing() {
        // `a` holds all 6 shards; `b` and `c` are alive (member slots): fair share 2.
        let shards = vec![held("a", 0); 6];
        let members = vec![held("a", 0), held("b", 0), held("c", 0), None, None, None];
        let d = decide_shards(
            ShardView {
                shards: &shards,
                members: &members,
                other_layout_live: false,
            },
            "a",
            t(1),
            &cfg(),
        );
        assert_eq!((d.replicas, d.fair_share), (3, 2));
        assert_eq!(count(&d.shards, |a| *a == SlotAction::Renew), 2);
        assert_eq!(count(&d.shards, |a| *a == SlotAction::Release), 4);
        assert_eq!(d.members[0], SlotAction::Renew);
        assert!(d.members[1..].iter().all(|a| *a == SlotAction::Leave));
    }

    #[test]
    fn a_replica_below_its_fair_share_takes_only_free_or_lapsed_shards() {
        // b holds 0..3 (renewed, seen at 19), c held 3..5 and lapsed (seen at 0, now
        // 20), 5 is free.
        let mut shards = vec![held("b", 19), held("b", 19), held("b", 19)];
        shards.extend([held("c", 0), held("c", 0), None]);
        // b is alive (renewed its member slot at 19); c's lapsed.
        let members = vec![held("b", 19), held("c", 0), None, None, None, None];
        let d = decide_shards(
            ShardView {
                shards: &shards,
                members: &members,
                other_layout_live: false,
            },
            "a",
            t(20),
            &cfg(),
        );
        assert_eq!((d.replicas, d.fair_share), (2, 3));
        // c's member slot lapsed: a takes it over (the first takeable slot).
        assert!(
            matches!(d.members[1], SlotAction::TakeOver { ref previous, .. } if previous == "c")
        );
        assert!(d.shards[..3].iter().all(|a| *a == SlotAction::Leave));
        assert!(
            d.shards[3..].iter().all(SlotAction::holds),
            "{:?}",
            d.shards
        );
    }

    #[test]
    fn a_live_shard_of_another_holder_is_never_taken_even_below_the_fair_share() {
        let shards = vec![held("b", 0); 4];
        for now in [0, 5, 14] {
            // b renews its member Lease every round; its shards were seen at 0.
            let members = vec![held("b", now), None, None, None];
            let d = decide_shards(
                ShardView {
                    shards: &shards,
                    members: &members,
                    other_layout_live: false,
                },
                "a",
                t(now),
                &cfg(),
            );
            assert_eq!(d.fair_share, 2);
            assert!(d.shards.iter().all(|a| *a == SlotAction::Leave), "{now}");
        }
    }

    #[test]
    fn a_member_lease_unchanged_for_three_retry_periods_no_longer_counts_but_is_not_taken() {
        let shards = vec![None; 4];
        let members = vec![held("b", 0), None, None, None];
        let at = |now| {
            decide_shards(
                ShardView {
                    shards: &shards,
                    members: &members,
                    other_layout_live: false,
                },
                "a",
                t(now),
                &cfg(),
            )
        };
        assert_eq!((at(5).replicas, at(5).fair_share), (2, 2));
        let d = at(6);
        assert_eq!((d.replicas, d.fair_share), (1, 4));
        // b's member slot stays b's until it lapses; a takes the next one.
        assert_eq!(d.members[0], SlotAction::Leave);
        assert_eq!(d.members[1], SlotAction::Acquire { transitions: 0 });
        assert!(matches!(at(15).members[0], SlotAction::TakeOver { .. }));
    }

    #[test]
    fn a_second_member_slot_from_a_lost_race_is_given_back() {
        let shards = vec![None; 2];
        let members = vec![held("a", 0), held("a", 0)];
        let d = decide_shards(
            ShardView {
                shards: &shards,
                members: &members,
                other_layout_live: false,
            },
            "a",
            t(1),
            &cfg(),
        );
        assert_eq!(d.members, vec![SlotAction::Renew, SlotAction::Release]);
    }

    #[test]
    fn while_another_shard_count_is_live_no_shard_is_held() {
        let shards = vec![held("a", 0), None];
        let members = vec![held("a", 0), None];
        let d = decide_shards(
            ShardView {
                shards: &shards,
                members: &members,
                other_layout_live: true,
            },
            "a",
            t(1),
            &cfg(),
        );
        assert_eq!(d.fair_share, 0);
        assert_eq!(d.shards, vec![SlotAction::Release, SlotAction::Leave]);
        assert_eq!(d.members[0], SlotAction::Renew);
    }

    #[test]
    fn replicas_prefer_different_shards() {
        let firsts: std::collections::BTreeSet<usize> = ["a", "b", "c", "d"]
            .iter()
            .map(|me| (0..12).max_by_key(|&i| preference(me, i)).expect("a shard"))
            .collect();
        assert!(firsts.len() >= 3, "{firsts:?}");
    }
}
