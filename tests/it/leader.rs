//! Leader election against an in-memory API server (`kube-fake-client`), which keeps
//! Leases like a real one: `resourceVersion` on every write, a 409 for a replace that
//! carries a stale one or a create of a Lease that exists.
//!
//! Each story has two (or three) electors with distinct identities on one API and a
//! clock passed in by the test: given a leader, when time passes and it renews (or
//! stops renewing, or fails to renew), then exactly these processes may act.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube_fake_client::interceptor::Funcs;
use rollgate::leader::{Leadership, LeaseConfig, LeaseElector, Role};
use support::cluster::Verbs;

const NS: &str = "rollgate";
const NAME: &str = "rollgate";

/// A test's view of the API: its runtime and a client on the in-memory server.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

impl Cluster {
    fn new() -> Self {
        Self::with(Funcs::new())
    }

    fn with(funcs: Funcs) -> Self {
        let (runtime, client) = support::cluster::api(Vec::new(), Some(funcs));
        Self { runtime, client }
    }

    fn elector(&self, identity: &str) -> LeaseElector {
        LeaseElector::new(
            self.client.clone(),
            NS,
            NAME,
            identity,
            LeaseConfig::default(),
        )
    }

    fn round(&self, e: &mut LeaseElector, now: DateTime<Utc>) -> Role {
        self.runtime
            .block_on(e.try_acquire_or_renew(now))
            .expect("round")
    }

    fn lease(&self) -> Lease {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), NS);
        self.runtime.block_on(api.get(NAME)).expect("lease")
    }
}

fn t(secs: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_700_000_000_000_000 + (secs * 1e6) as i64).expect("time")
}

fn leader(now: DateTime<Utc>) -> Role {
    Role::Leader {
        until: now + chrono::TimeDelta::seconds(10),
    }
}

fn follower(holder: &str) -> Role {
    Role::Follower {
        holder: Some(holder.to_owned()),
    }
}

fn holder(l: &Lease) -> Option<String> {
    l.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

fn transitions(l: &Lease) -> Option<i32> {
    l.spec.as_ref().and_then(|s| s.lease_transitions)
}

fn micros(m: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>) -> Option<i64> {
    m.map(|m| m.0.as_microsecond())
}

fn acquire_time(l: &Lease) -> Option<i64> {
    micros(l.spec.as_ref().and_then(|s| s.acquire_time.as_ref()))
}

fn renew_time(l: &Lease) -> Option<i64> {
    micros(l.spec.as_ref().and_then(|s| s.renew_time.as_ref()))
}

#[test]
fn of_two_electors_exactly_one_leads_and_the_lease_says_who() {
    let api = Cluster::new();
    let (mut a, mut b) = (api.elector("a"), api.elector("b"));

    assert_eq!(api.round(&mut a, t(0.0)), leader(t(0.0)));
    assert_eq!(api.round(&mut b, t(0.0)), follower("a"));
    assert!(a.is_leader(t(0.0)) && !b.is_leader(t(0.0)));

    let l = api.lease();
    assert_eq!(holder(&l).as_deref(), Some("a"));
    assert_eq!(transitions(&l), Some(0));
    let spec = l.spec.as_ref().expect("spec");
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(acquire_time(&l), Some(t(0.0).timestamp_micros()));
    assert_eq!(renew_time(&l), Some(t(0.0).timestamp_micros()));
    assert_eq!(
        l.metadata
            .labels
            .as_ref()
            .and_then(|m| m.get("app.kubernetes.io/managed-by"))
            .map(String::as_str),
        Some("rollgate")
    );
}

#[test]
fn the_follower_never_takes_over_while_the_leader_renews() {
    let api = Cluster::new();
    let (mut a, mut b) = (api.elector("a"), api.elector("b"));
    api.round(&mut a, t(0.0));
    api.round(&mut b, t(0.0));
    // 40 s, well past one lease duration, in retry periods.
    for k in 1..=20 {
        let now = t(2.0 * f64::from(k));
        assert_eq!(api.round(&mut a, now), leader(now), "renew at {k}");
        assert_eq!(api.round(&mut b, now), follower("a"), "follow at {k}");
        assert!(a.is_leader(now) && !b.is_leader(now));
    }
    let l = api.lease();
    assert_eq!(transitions(&l), Some(0));
    assert_eq!(acquire_time(&l), Some(t(0.0).timestamp_micros()));
    assert_eq!(renew_time(&l), Some(t(40.0).timestamp_micros()));
}

#[test]
fn a_silent_leader_is_taken_over_one_lease_duration_later_and_transitions_count() {
    let api = Cluster::new();
    let (mut a, mut b) = (api.elector("a"), api.elector("b"));
    api.round(&mut a, t(0.0));
    assert_eq!(api.round(&mut b, t(0.0)), follower("a"));
    // `a` stops renewing (a crash, a partition). It stops acting at its deadline...
    assert!(a.is_leader(t(9.999)));
    assert!(!a.is_leader(t(10.0)));
    // ...and `b` waits for the lease to lapse: 15 s after it first saw this version.
    assert_eq!(api.round(&mut b, t(14.9)), follower("a"));
    assert_eq!(api.round(&mut b, t(15.0)), leader(t(15.0)));

    let l = api.lease();
    assert_eq!(holder(&l).as_deref(), Some("b"));
    assert_eq!(transitions(&l), Some(1));
    assert_eq!(acquire_time(&l), Some(t(15.0).timestamp_micros()));
    // The old leader, back, follows.
    assert_eq!(api.round(&mut a, t(16.0)), follower("b"));
    assert!(!a.is_leader(t(16.0)) && b.is_leader(t(16.0)));
}

#[test]
fn a_newcomer_waits_a_full_lease_duration_from_its_first_look_whatever_renew_time_says() {
    let api = Cluster::new();
    let (mut a, mut c) = (api.elector("a"), api.elector("c"));
    api.round(&mut a, t(0.0));
    // `a` died long ago; `c` starts at 100 s and cannot trust a's clock: it waits 15 s.
    assert_eq!(api.round(&mut c, t(100.0)), follower("a"));
    assert_eq!(api.round(&mut c, t(114.0)), follower("a"));
    assert_eq!(api.round(&mut c, t(115.0)), leader(t(115.0)));
}

/// A replace interceptor that, when armed, lets `intruder` write the Lease just before
/// the armed elector's replace lands: the replace then carries a stale resourceVersion.
fn race_on_replace(intruder: &'static str, armed: Arc<AtomicBool>) -> Funcs {
    Funcs::new().replace(move |ctx| {
        if armed.swap(false, Ordering::SeqCst) {
            let mut l: Lease = ctx.client.get(ctx.namespace, NAME)?;
            let spec = l.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(intruder.to_owned());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            ctx.client
                .update(ctx.namespace, &l, &PostParams::default())?;
        }
        Ok(None)
    })
}

#[test]
fn a_takeover_with_a_stale_resource_version_is_rejected_and_the_loser_follows() {
    let armed = Arc::new(AtomicBool::new(false));
    let api = Cluster::with(race_on_replace("c", Arc::clone(&armed)));
    let (mut a, mut b) = (api.elector("a"), api.elector("b"));
    api.round(&mut a, t(0.0));
    api.round(&mut b, t(0.0));
    // At 15 s `b` reads the lapsed lease; `c` takes it over between b's read and write.
    armed.store(true, Ordering::SeqCst);
    assert_eq!(
        api.round(&mut b, t(15.0)),
        Role::Follower { holder: None },
        "the 409 is a lost race"
    );
    assert!(!armed.load(Ordering::SeqCst), "the race happened");
    assert!(!b.is_leader(t(15.0)));
    let l = api.lease();
    assert_eq!(holder(&l).as_deref(), Some("c"));
    assert_eq!(transitions(&l), Some(1), "c's takeover, not b's as well");
    // Next round, `b` knows whom it follows, and starts c's lease duration afresh.
    assert_eq!(api.round(&mut b, t(16.0)), follower("c"));
    assert_eq!(api.round(&mut b, t(30.9)), follower("c"));
}

#[test]
fn a_renewal_with_a_stale_resource_version_is_rejected_and_the_leader_steps_down() {
    let armed = Arc::new(AtomicBool::new(false));
    let api = Cluster::with(race_on_replace("c", Arc::clone(&armed)));
    let mut a = api.elector("a");
    api.round(&mut a, t(0.0));
    armed.store(true, Ordering::SeqCst);
    assert_eq!(api.round(&mut a, t(2.0)), Role::Follower { holder: None });
    assert!(
        !a.is_leader(t(2.0)),
        "stops acting at once, not at its deadline"
    );
    assert_eq!(holder(&api.lease()).as_deref(), Some("c"));
}

#[test]
fn two_electors_creating_the_lease_at_once_make_one_leader() {
    let armed = Arc::new(AtomicBool::new(false));
    let fire = Arc::clone(&armed);
    let funcs = Funcs::new().create(move |ctx| {
        if fire.swap(false, Ordering::SeqCst) {
            // `a`'s create lands first.
            let mut first: Lease = serde_json::from_value(ctx.object.clone())?;
            if let Some(s) = first.spec.as_mut() {
                s.holder_identity = Some("a".into());
            }
            ctx.client
                .create(ctx.namespace, &first, &PostParams::default())?;
        }
        Ok(None)
    });
    let api = Cluster::with(funcs);
    let mut b = api.elector("b");
    armed.store(true, Ordering::SeqCst);
    assert_eq!(api.round(&mut b, t(0.0)), Role::Follower { holder: None });
    assert!(!armed.load(Ordering::SeqCst), "the race happened");
    assert!(!b.is_leader(t(0.0)));
    assert_eq!(holder(&api.lease()).as_deref(), Some("a"));
    assert_eq!(api.round(&mut b, t(1.0)), follower("a"));
}

#[test]
fn a_leader_whose_renewals_fail_past_the_renew_deadline_is_not_leader() {
    let failing = Arc::new(AtomicBool::new(false));
    let fail = Arc::clone(&failing);
    let api = Cluster::with(Funcs::new().replace(move |_| {
        if fail.load(Ordering::SeqCst) {
            Err(kube_fake_client::Error::Internal("etcd is down".into()))
        } else {
            Ok(None)
        }
    }));
    let (mut a, mut b) = (api.elector("a"), api.elector("b"));
    api.round(&mut a, t(0.0));
    api.round(&mut b, t(0.0));
    failing.store(true, Ordering::SeqCst);
    for k in 1..=4 {
        let now = t(2.0 * f64::from(k));
        let e = api
            .runtime
            .block_on(a.try_acquire_or_renew(now))
            .expect_err("the renewal fails");
        assert!(e.to_string().contains("etcd is down"), "{e}");
        assert!(a.is_leader(now), "still within the deadline at {k}");
    }
    assert!(a.is_leader(t(9.999)));
    assert!(!a.is_leader(t(10.0)), "the renew deadline passed");
    assert!(
        api.runtime
            .block_on(a.try_acquire_or_renew(t(10.0)))
            .is_err()
    );
    assert!(!a.is_leader(t(10.0)));
    // The follower may not take over before a has stopped acting: no two leaders.
    let mut now = t(0.0);
    while now < t(20.0) {
        if now >= t(11.0) {
            failing.store(false, Ordering::SeqCst);
            api.round(&mut b, now);
        }
        assert!(
            !(a.is_leader(now) && b.is_leader(now)),
            "two leaders at {now}"
        );
        now += chrono::TimeDelta::milliseconds(500);
    }
    assert!(b.is_leader(t(19.5)), "b took over at 15 s");
}

#[test]
fn a_released_lease_is_taken_at_the_next_round() {
    let api = Cluster::new();
    let (mut a, mut b) = (api.elector("a"), api.elector("b"));
    api.round(&mut a, t(0.0));
    api.round(&mut b, t(0.0));
    // Only the holder's release writes.
    assert!(!api.runtime.block_on(b.release(t(1.0))).expect("release"));
    assert_eq!(holder(&api.lease()).as_deref(), Some("a"));
    assert!(api.runtime.block_on(a.release(t(1.0))).expect("release"));
    assert!(!a.is_leader(t(1.0)));
    assert_eq!(holder(&api.lease()), None);
    assert_eq!(api.round(&mut b, t(1.5)), leader(t(1.5)));
    assert_eq!(transitions(&api.lease()), Some(1));
}

/// Every verb the elector sends is one `leader::RBAC` grants, and it sends all of them
/// (`deploy_manifests.rs` compares `RBAC` with the Role). A PUT is RBAC's `update`.
#[test]
fn the_elector_sends_exactly_the_verbs_rbac_lists() {
    let verbs = Verbs::default();
    let funcs = verbs.interceptor();
    let api = Cluster::with(funcs);
    let (mut a, mut b) = (api.elector("a"), api.elector("b"));
    api.round(&mut a, t(0.0));
    api.round(&mut b, t(0.0));
    assert_eq!(api.round(&mut a, t(2.0)), leader(t(2.0)));
    assert_eq!(api.round(&mut b, t(3.0)), follower("a"));
    assert_eq!(api.round(&mut b, t(18.0)), leader(t(18.0)));
    assert!(api.runtime.block_on(b.release(t(19.0))).expect("release"));
    let granted: std::collections::BTreeSet<&str> = rollgate::leader::RBAC
        .iter()
        .flat_map(|(group, resource, verbs)| {
            assert_eq!((*group, *resource), ("coordination.k8s.io", "leases"));
            verbs.iter().copied()
        })
        .collect();
    // `list` is the shard elector's (`shards::the_shard_elector_sends_only_verbs_rbac_lists`).
    let mut seen = verbs.seen();
    seen.insert("list");
    assert_eq!(seen, granted);
}

/// The daemon's handle, on the real clock: it leads within a round, keeps leading
/// across renewals, a second handle stands by, and shutting the leader down releases
/// the lease so the stand-by takes it without waiting for it to lapse.
#[test]
fn the_background_campaign_leads_stands_by_and_hands_over_on_shutdown() {
    let quick = LeaseConfig {
        lease_duration: Duration::from_secs(30),
        renew_deadline: Duration::from_secs(20),
        retry_period: Duration::from_millis(50),
    };
    let runtime = rollgate::leader::runtime().expect("runtime");
    let client = runtime
        .block_on(kube_fake_client::ClientBuilder::new().build())
        .expect("fake client");
    let elector = |id: &str| LeaseElector::new(client.clone(), NS, NAME, id, quick);
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let a = Leadership::start(rollgate::leader::runtime().expect("runtime"), elector("a"));
    wait_for("a leads", &|| a.is_leader(Utc::now()));
    let b = Leadership::start(rollgate::leader::runtime().expect("runtime"), elector("b"));
    wait_for("b stands by", &|| b.standing_by());
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    let renewed =
        |rt: &tokio::runtime::Runtime| renew_time(&rt.block_on(api.get(NAME)).expect("lease"));
    let first = renewed(&runtime);
    wait_for("a renews", &|| renewed(&runtime) != first);
    assert!(a.is_leader(Utc::now()) && !b.is_leader(Utc::now()));
    // The gates handed to the GitHub worker say the same, at the time of asking
    let (a_gate, b_gate) = (a.gate(), b.gate());
    assert!(a_gate.is_leader() && !b_gate.is_leader());

    a.shutdown();
    assert!(
        !a_gate.is_leader(),
        "a gate outliving its handle never leads"
    );
    // Far sooner than the 30 s lease duration: the lease was released.
    wait_for("b takes over", &|| b.is_leader(Utc::now()));
    assert!(b_gate.is_leader());
    let l = runtime.block_on(api.get(NAME)).expect("lease");
    assert_eq!(holder(&l).as_deref(), Some("b"));
    assert_eq!(transitions(&l), Some(1));
}
