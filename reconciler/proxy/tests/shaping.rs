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
        let dropped = proxy.stats().mirror_not_sent().backpressure;
        assert_eq!(
            dropped,
            200,
            "copies past {} outstanding",
            shadow::MAX_IN_FLIGHT
        );
        proxy.shutdown();
    });
}

fn mirror_all() -> Routing {
    Routing {
        matches: Vec::new(),
        mirror: 100,
        baseline: false,
    }
}

/// POST `body` to `/echo` through the proxy; the stable's echo must end with it.
async fn post_echo(c: &TestClient, proxy: SocketAddr, body: Bytes) {
    let req = Request::post(format!("http://{proxy}/echo"))
        .body(Full::new(body.clone()))
        .expect("a request");
    let resp = c.request(req).await.expect("answered");
    assert_eq!(resp.status(), StatusCode::OK);
    let echo = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(echo.ends_with(&body), "the body reached the stable intact");
}

/// One raw HTTP/1.1 request on a new connection: `head` (the request line and headers,
/// ending in an empty line) and then `parts` of the body written one by one; with
/// `close`, the connection is shut down after the parts. Returns what came back.
async fn raw(proxy: SocketAddr, head: &str, parts: &[&[u8]], close: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    for part in parts {
        s.write_all(part).await.expect("write");
        s.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if close {
        drop(s);
        return String::new();
    }
    let mut out = vec![0u8; 1 << 20];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut out))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    String::from_utf8_lossy(&out[..n]).into_owned()
}

fn bodies(b: &TestBackend) -> Vec<Bytes> {
    b.bodies.lock().expect("lock").clone()
}

#[test]
fn a_request_body_within_the_bound_is_mirrored_whole_and_users_see_only_the_stable() {
    let rt = runtime();
    rt.block_on(async {
        let (v1, v2) = (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        );
        let proxy = start_proxy(None);
        proxy
            .set_traffic(Some(v1.backend()), Some(v2.backend()), 0, &mirror_all())
            .expect("routes");
        let c = client();
        // With a length: a small body and one of exactly the bound.
        let small = Bytes::from_static(b"order=1");
        let at_bound = Bytes::from(vec![b'x'; shadow::MAX_BODY]);
        post_echo(&c, proxy.local_addr(), small.clone()).await;
        post_echo(&c, proxy.local_addr(), at_bound.clone()).await;
        // Without a length (chunked), in two parts: copied as it passes, sent at its end.
        let answer = raw(
            proxy.local_addr(),
            "POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n",
            &[b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n"],
            false,
        )
        .await;
        assert!(answer.ends_with("hello world"), "{answer}");
        eventually("3 copies answered", || bodies(&v2).len() == 3).await;
        let mut got = bodies(&v2);
        got.sort_by_key(|b| b.len());
        assert_eq!(
            got,
            vec![small, Bytes::from_static(b"hello world"), at_bound],
            "the candidate got each body whole"
        );
        assert_eq!(bodies(&v1).len(), 3);
        assert_eq!(
            proxy.stats().mirror_not_sent(),
            stats::MirrorNotSent::default()
        );
        proxy.shutdown();
    });
}

#[test]
fn a_body_over_the_bound_is_not_mirrored_and_is_counted() {
    let rt = runtime();
    rt.block_on(async {
        let (v1, v2) = (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        );
        let proxy = start_proxy(None);
        proxy
            .set_traffic(Some(v1.backend()), Some(v2.backend()), 0, &mirror_all())
            .expect("routes");
        let c = client();
        // Its length says so: not copied at all.
        let over = Bytes::from(vec![b'y'; shadow::MAX_BODY + 1]);
        post_echo(&c, proxy.local_addr(), over).await;
        // No length: found out as it passes, the copy abandoned, the user's body intact.
        let half = format!("{:x}\r\n{}\r\n", 40_000, "z".repeat(40_000));
        let answer = raw(
            proxy.local_addr(),
            "POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            &[half.as_bytes(), half.as_bytes(), b"0\r\n\r\n"],
            false,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        eventually("the stable got both bodies", || bodies(&v1).len() == 2).await;
        assert_eq!(bodies(&v1)[1].len(), 80_000, "the user's body reached the stable whole");
        assert_eq!(proxy.stats().mirror_not_sent().too_large, 2);
        // A copy still to come would be on its way by now.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(v2.served.load(Ordering::SeqCst), 0, "no copy over the bound");
        let mut text = String::new();
        proxy.stats().render_prometheus(&mut text);
        assert!(
            text.contains("rollgate_proxy_mirror_not_sent_total{reason=\"body_too_large\"} 2"),
            "{text}"
        );
        proxy.shutdown();
    });
}

#[test]
fn a_body_cut_short_is_not_mirrored_and_is_counted() {
    let rt = runtime();
    rt.block_on(async {
        let (v1, v2) = (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        );
        let proxy = start_proxy(None);
        proxy
            .set_traffic(Some(v1.backend()), Some(v2.backend()), 0, &mirror_all())
            .expect("routes");
        // The client announces 100 bytes, sends 10 and goes away.
        raw(
            proxy.local_addr(),
            "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n",
            &[b"0123456789"],
            true,
        )
        .await;
        let stats = proxy.stats();
        eventually("the cut body counted", || {
            stats.mirror_not_sent().incomplete == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(v2.served.load(Ordering::SeqCst), 0, "no truncated copy");
        proxy.shutdown();
    });
}

#[test]
fn a_mirrored_body_streams_to_the_stable_before_it_has_ended() {
    let rt = runtime();
    rt.block_on(async {
        let (v1, v2) = (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        );
        let proxy = start_proxy(None);
        proxy
            .set_traffic(Some(v1.backend()), Some(v2.backend()), 0, &mirror_all())
            .expect("routes");
        // Only the first chunk is sent; the stable answers with it, so the proxy passed
        // it on without waiting for the body to end (as it would to copy it first).
        let answer = raw(
            proxy.local_addr(),
            "POST /first HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n",
            &[b"5\r\nfirst\r\n"],
            false,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("first"), "{answer}");
        assert_eq!(
            v2.served.load(Ordering::SeqCst),
            0,
            "no copy before the end"
        );
        proxy.shutdown();
    });
}

#[test]
fn copies_waiting_for_their_body_count_against_the_bound_and_are_dropped_beyond_it() {
    let rt = runtime();
    rt.block_on(async {
        let v1 = TestBackend::spawn("v1").await;
        let silent = silent_backend().await;
        let proxy = start_proxy(None);
        let candidate = Backend {
            version: "v2".into(),
            addr: silent,
        };
        proxy
            .set_traffic(Some(v1.backend()), Some(candidate), 0, &mirror_all())
            .expect("routes");
        let c = client();
        let n = shadow::MAX_IN_FLIGHT + 44;
        for i in 0..n {
            post_echo(&c, proxy.local_addr(), Bytes::from(format!("n={i}"))).await;
        }
        assert_eq!(bodies(&v1).len(), n, "every user request answered by v1");
        let not_sent = proxy.stats().mirror_not_sent();
        assert_eq!(not_sent.backpressure, 44, "{not_sent:?}");
        assert_eq!(not_sent.too_large + not_sent.incomplete, 0, "{not_sent:?}");
        proxy.shutdown();
    });
}

/// A candidate that accepts connections and never answers; they stay open until the
/// test's runtime ends.
async fn silent_backend() -> SocketAddr {
    let silent = tokio::net::TcpListener::bind(any_port())
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A candidate that answers every request with 500 after `delay`; counts requests.
async fn failing_backend(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(any_port())
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"boom")));
                        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[test]
fn mirroring_to_a_slow_failing_or_dead_candidate_loses_no_user_request() {
    let rt = runtime();
    rt.block_on(async {
        let v1 = TestBackend::spawn("v1").await;
        let (slow, slow_seen) = failing_backend(Duration::from_millis(200)).await;
        let proxy = start_proxy(None);
        let thirty = Routing {
            matches: Vec::new(),
            mirror: 30,
            baseline: false,
        };
        for (version, addr) in [("slow", slow), ("dead", any_free_addr())] {
            proxy
                .set_traffic(
                    Some(v1.backend()),
                    Some(Backend {
                        version: version.into(),
                        addr,
                    }),
                    0,
                    &thirty,
                )
                .expect("routes");
            // 8 clients at once, 50 requests each, GETs and POSTs with a body mixed.
            let tasks: Vec<_> = (0..8)
                .map(|k| {
                    let (c, to) = (client(), proxy.local_addr());
                    tokio::spawn(async move {
                        for i in 0..50 {
                            if (i + k) % 2 == 0 {
                                post_echo(&c, to, Bytes::from(format!("k={k} i={i}"))).await;
                            } else {
                                let (status, body) = get(&c, to, "/", &[]).await;
                                assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await
                    .expect("every user request answered 200 by the stable");
            }
            // Exactly 30 of every 100 were copied, each once: never retried.
            let stats = proxy.stats();
            eventually("120 copies answered", || {
                stats
                    .window(&stats::shadow_series(version), Duration::from_secs(60))
                    .by_class[stats::CLASS_5XX]
                    == 120
            })
            .await;
        }
        assert_eq!(slow_seen.load(Ordering::SeqCst), 120, "each copy sent once");
        assert_eq!(
            proxy.stats().window("v1", Duration::from_secs(60)).by_class[1],
            800,
            "800 user requests, all 2xx from the stable"
        );
        assert_eq!(
            proxy.stats().mirror_not_sent(),
            stats::MirrorNotSent::default()
        );
        proxy.shutdown();
    });
}

/// A loopback address nothing listens on.
fn any_free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind(any_port()).expect("bind");
    l.local_addr().expect("addr")
}
