//! Header routes and mirrors through the real proxy, with real backends on loopback.

use super::*;
use crate::model::plan::{MatchOn, MatchValue, RequestMatch, Routing};

fn canary_header() -> Routing {
    Routing {
        matches: vec![RequestMatch {
            on: MatchOn::Header("X-Canary".into()),
            value: MatchValue::Exact("1".into()),
        }],
        mirror: 0,
        baseline: false,
    }
}

/// Answers of `n` sequential GETs of `/`, by version.
async fn versions(
    client: &TestClient,
    proxy: SocketAddr,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = get(client, proxy, "/", headers).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        *seen.entry(body).or_default() += 1;
    }
    seen
}

#[test]
fn a_header_route_sends_every_matching_request_to_the_candidate_and_the_rest_by_weight() {
    let rt = runtime();
    rt.block_on(async {
        let (v1, v2) = (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        );
        let proxy = start_proxy(None);
        proxy
            .set_traffic(Some(v1.backend()), Some(v2.backend()), 20, &canary_header())
            .expect("routes");
        let c = client();
        let matching = versions(&c, proxy.local_addr(), 1000, &[("x-canary", "1")]).await;
        assert_eq!(matching.get("v2"), Some(&1000), "{matching:?}");
        let others = versions(&c, proxy.local_addr(), 1000, &[("x-canary", "2")]).await;
        let to_v2 = others.get("v2").copied().unwrap_or(0);
        assert!((170..=230).contains(&to_v2), "20% ± 3 points: {others:?}");
        // Promotion (one backend) takes the route away: the header means nothing then.
        proxy
            .set_traffic(Some(v2.backend()), None, 0, &canary_header())
            .expect("routes");
        assert_eq!(proxy.traffic().3, Routing::default());
        proxy
            .set_traffic(
                Some(v1.backend()),
                Some(v2.backend()),
                0,
                &Routing::default(),
            )
            .expect("routes");
        let after = versions(&c, proxy.local_addr(), 100, &[("x-canary", "1")]).await;
        assert_eq!(after.get("v1"), Some(&100), "route removed: {after:?}");
        proxy.shutdown();
    });
}

#[test]
fn sticky_clients_keep_their_version_beside_a_header_route() {
    let rt = runtime();
    rt.block_on(async {
        let (v1, v2) = (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        );
        let proxy = start_proxy(Some(Sticky::Header("x-user".into())));
        proxy
            .set_traffic(Some(v1.backend()), Some(v2.backend()), 50, &canary_header())
            .expect("routes");
        let c = client();
        for user in ["alice", "bob", "carol", "dave"] {
            let seen = versions(&c, proxy.local_addr(), 20, &[("x-user", user)]).await;
            assert_eq!(seen.len(), 1, "{user} moved between versions: {seen:?}");
            let both = versions(
                &c,
                proxy.local_addr(),
                5,
                &[("x-user", user), ("x-canary", "1")],
            )
            .await;
            assert_eq!(both.get("v2"), Some(&5), "the route comes first: {both:?}");
        }
        proxy.shutdown();
    });
}

/// Wait until `f` holds (the mirror's copies finish on their own tasks).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}

#[test]
fn a_mirror_copies_its_share_to_the_candidate_and_users_only_see_the_stable_answer() {
    let rt = runtime();
    rt.block_on(async {
        let (v1, v2) = (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        );
        let proxy = start_proxy(None);
        let mirror = Routing {
            matches: Vec::new(),
            mirror: 30,
            baseline: false,
        };
        proxy
            .set_traffic(Some(v1.backend()), Some(v2.backend()), 0, &mirror)
            .expect("routes");
        let c = client();
        let seen = versions(&c, proxy.local_addr(), 1000, &[]).await;
        assert_eq!(
            seen.get("v1"),
            Some(&1000),
            "users only get stable answers: {seen:?}"
        );
        // Exactly 30 of every 100 stable-served requests are copied (a smooth counter).
        eventually("300 copies answered", || {
            v2.served.load(Ordering::SeqCst) == 300
        })
        .await;
        let stats = proxy.stats();
        eventually("300 copies counted", || {
            stats
                .window(&stats::shadow_series("v2"), Duration::from_secs(60))
                .requests
                == 300
        })
        .await;
        // The copies are the candidate's own series, not user traffic of v2.
        assert_eq!(stats.window("v2", Duration::from_secs(60)).requests, 0);
        assert_eq!(stats.window("v1", Duration::from_secs(60)).requests, 1000);
        proxy.shutdown();
    });
}

#[test]
fn a_dead_or_silent_candidate_behind_a_mirror_costs_users_nothing() {
    let rt = runtime();
    rt.block_on(async {
        let v1 = TestBackend::spawn("v1").await;
        // A candidate that accepts connections and never answers: every copy waits.
        let silent = tokio::net::TcpListener::bind(any_port())
            .await
            .expect("bind");
        let silent_addr = silent.local_addr().expect("addr");
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = silent.accept().await {
                keep.lock().expect("lock").push(s);
            }
        });
        let proxy = start_proxy(None);
        let all = Routing {
            matches: Vec::new(),
            mirror: 100,
            baseline: false,
        };
        // A dead candidate: copies fail (counted as 502 in the shadow series), users do not.
        let dead = Backend {
            version: "v3".into(),
            addr: any_free_addr(),
        };
        proxy
            .set_traffic(Some(v1.backend()), Some(dead), 0, &all)
            .expect("routes");
        let c = client();
        let seen = versions(&c, proxy.local_addr(), 100, &[]).await;
        assert_eq!(seen.get("v1"), Some(&100));
        let stats = proxy.stats();
        eventually("100 failed copies counted", || {
            stats
                .window(&stats::shadow_series("v3"), Duration::from_secs(60))
                .by_class[4]
                == 100
        })
        .await;
        // A silent candidate: copies wait; past the bound they are dropped, never queued.
        let candidate = Backend {
            version: "v2".into(),
            addr: silent_addr,
        };
        proxy
            .set_traffic(Some(v1.backend()), Some(candidate), 0, &all)
            .expect("routes");
        let n = shadow::MAX_IN_FLIGHT + 200;
        let seen = versions(&c, proxy.local_addr(), n, &[]).await;
        assert_eq!(
            seen.get("v1"),
            Some(&n),
            "every user request answered by v1"
        );
        // Copies beyond the bound were dropped and counted, never queued.
        let (dropped, _) = proxy.stats().shadow_not_sent();
        assert_eq!(
            dropped,
            200,
            "copies past {} outstanding",
            shadow::MAX_IN_FLIGHT
        );
        proxy.shutdown();
    });
}

#[test]
fn a_request_with_a_body_is_not_mirrored_and_is_counted() {
    let rt = runtime();
    rt.block_on(async {
        let (v1, v2) = (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        );
        let proxy = start_proxy(None);
        let all = Routing {
            matches: Vec::new(),
            mirror: 100,
            baseline: false,
        };
        proxy
            .set_traffic(Some(v1.backend()), Some(v2.backend()), 0, &all)
            .expect("routes");
        let c = client();
        for _ in 0..10 {
            let req = Request::post(format!("http://{}/echo", proxy.local_addr()))
                .body(Full::new(Bytes::from_static(b"order=1")))
                .expect("a request");
            let resp = c.request(req).await.expect("answered");
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert!(
                body.ends_with(b"order=1"),
                "the body reached the stable intact"
            );
        }
        assert_eq!(proxy.stats().shadow_not_sent(), (0, 10));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(v2.served.load(Ordering::SeqCst), 0, "no copy with a body");
        proxy.shutdown();
    });
}

/// A loopback address nothing listens on.
fn any_free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind(any_port()).expect("bind");
    l.local_addr().expect("addr")
}
