//! The proxy over real sockets: tiny hyper backends answering their version, a real
//! client, the proxy in between. Each test builds its own runtime for backends and
//! clients; the proxy runs on its own, as in production.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::*;
use crate::metrics::MetricsSource;
use crate::metrics::builtin::{Builtin, Registry};

mod framing;
mod shaping;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime")
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("an address")
}

/// A backend process stand-in. `/sleep/<ms>` answers after `ms`, `/status/<code>` with
/// that code, `/echo` with the request it saw (its body kept in `bodies`), `/first`
/// with the first frame of the request's body, read before the rest has arrived;
/// everything else with its version.
struct TestBackend {
    version: String,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// Requests being answered right now.
    active: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    /// The bodies of the `/echo` requests answered, in order.
    bodies: Arc<std::sync::Mutex<Vec<Bytes>>>,
}

impl TestBackend {
    async fn spawn(version: &str) -> TestBackend {
        let listener = tokio::net::TcpListener::bind(any_port())
            .await
            .expect("bind a backend");
        let addr = listener.local_addr().expect("backend address");
        let (stop, stopped) = watch::channel(false);
        let active = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (v, a, s, b) = (
            version.to_owned(),
            active.clone(),
            served.clone(),
            bodies.clone(),
        );
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                let (stream, _) = tokio::select! {
                    _ = stopped_accept.wait_for(|s| *s) => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let _ = stream.set_nodelay(true);
                let (v, a, s, b) = (v.clone(), a.clone(), s.clone(), b.clone());
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        answer(v.clone(), a.clone(), s.clone(), b.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    // Stopping kills connections at once, like a process exiting: a
                    // request still in flight here would fail.
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        TestBackend {
            version: version.to_owned(),
            addr,
            stop,
            active,
            served,
            bodies,
        }
    }

    fn backend(&self) -> Backend {
        Backend {
            version: self.version.clone(),
            addr: self.addr,
        }
    }

    /// Stop like a killed process; returns how many requests it was still answering.
    fn kill(&self) -> usize {
        let active = self.active.load(Ordering::SeqCst);
        self.stop.send_replace(true);
        active
    }
}

async fn answer(
    version: String,
    active: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    bodies: Arc<std::sync::Mutex<Vec<Bytes>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    active.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::OK;
    let body = if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Bytes::from(version)
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::IM_A_TEAPOT);
        Bytes::from(version)
    } else if path == "/first" {
        let mut body = req.into_body();
        let first = loop {
            match body.frame().await {
                Some(frame) => match frame?.into_data() {
                    Ok(data) if !data.is_empty() => break data,
                    _ => continue,
                },
                None => break Bytes::new(),
            }
        };
        // Answer before the rest of the body, then read it (so the connection stays usable).
        tokio::spawn(async move { while body.frame().await.is_some() {} });
        first
    } else if path == "/echo" {
        let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        let mut names: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        names.sort();
        text.push_str(&names.join("\n"));
        text.push_str("\n\n");
        let body = req.into_body().collect().await?.to_bytes();
        bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(body.clone());
        let mut out = text.into_bytes();
        out.extend_from_slice(&body);
        Bytes::from(out)
    } else {
        Bytes::from(version)
    };
    served.fetch_add(1, Ordering::SeqCst);
    active.fetch_sub(1, Ordering::SeqCst);
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-served-by", HeaderValue::from_static("test-backend"));
    Ok(resp)
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn get(
    client: &TestClient,
    proxy: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = Request::get(format!("http://{proxy}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::default()).expect("a request"))
        .await
        .expect("a response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("a body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn start_proxy(sticky: Option<Sticky>) -> Proxy {
    Proxy::start(any_port(), sticky).expect("the proxy starts")
}

#[test]
fn weighted_split_is_accurate_and_smooth() {
    let rt = runtime();
    let (v1, v2) = rt.block_on(async {
        (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        )
    });
    let proxy = start_proxy(None);
    let c = client();
    for weight in [5u8, 25, 50] {
        proxy.set_routes(Some(v1.backend()), Some(v2.backend()), weight);
        assert_eq!(
            proxy.routes(),
            (Some(v1.backend()), Some(v2.backend()), weight)
        );
        let to_candidate: Vec<bool> = rt.block_on(async {
            let mut out = Vec::with_capacity(4000);
            for _ in 0..4000 {
                let (status, body) = get(&c, proxy.local_addr(), "/", &[]).await;
                assert_eq!(status, StatusCode::OK);
                out.push(body == "v2");
            }
            out
        });
        let share = to_candidate.iter().filter(|c| **c).count() as f64 / 40.0;
        assert!(
            (share - f64::from(weight)).abs() <= 3.0,
            "weight {weight}: candidate share {share}"
        );
        for (i, window) in to_candidate.windows(100).enumerate() {
            let n = window.iter().filter(|c| **c).count() as i64;
            assert!(
                (n - i64::from(weight)).abs() <= 2,
                "weight {weight}: {n} of the 100 requests from #{i}"
            );
        }
    }
    let stats = proxy.stats();
    let v2_total = stats.window("v2", Duration::from_secs(600)).requests;
    assert_eq!(v2_total, 200 + 1000 + 2000);
    assert_eq!(
        stats.window("v1", Duration::from_secs(600)).requests,
        12_000 - v2_total
    );
}

#[test]
fn sticky_header_keeps_a_client_on_one_version() {
    let rt = runtime();
    let (v1, v2) = rt.block_on(async {
        (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        )
    });
    let proxy = start_proxy(Some(Sticky::Header("X-User".into())));
    let c = client();
    let versions_of_users = |weight: u8| {
        proxy.set_routes(Some(v1.backend()), Some(v2.backend()), weight);
        rt.block_on(async {
            let mut seen = Vec::new();
            for user in 0..40 {
                let id = format!("user-{user}");
                let mut versions = Vec::new();
                for _ in 0..5 {
                    versions.push(get(&c, proxy.local_addr(), "/", &[("x-user", &id)]).await.1);
                }
                assert!(
                    versions.iter().all(|v| *v == versions[0]),
                    "{id} moved: {versions:?}"
                );
                seen.push(versions[0].clone());
            }
            seen
        })
    };
    let at_50 = versions_of_users(50);
    assert!(
        at_50.contains(&"v1".to_owned()) && at_50.contains(&"v2".to_owned()),
        "{at_50:?}"
    );
    // Raising the weight moves clients to the candidate only, never back.
    let at_80 = versions_of_users(80);
    for (before, after) in at_50.iter().zip(&at_80) {
        assert!(
            before == after || (before == "v1" && after == "v2"),
            "{before} -> {after}"
        );
    }
    assert!(
        at_80.iter().filter(|v| *v == "v2").count() > at_50.iter().filter(|v| *v == "v2").count()
    );
    // Requests without the header are spread smoothly: at 50 %, they alternate.
    proxy.set_routes(Some(v1.backend()), Some(v2.backend()), 50);
    let (a, b) = rt.block_on(async {
        (
            get(&c, proxy.local_addr(), "/", &[]).await.1,
            get(&c, proxy.local_addr(), "/", &[]).await.1,
        )
    });
    assert_ne!(a, b);
}

#[test]
fn sticky_cookie_keeps_a_client_on_one_version() {
    let rt = runtime();
    let (v1, v2) = rt.block_on(async {
        (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        )
    });
    let proxy = start_proxy(Some(Sticky::Cookie("session".into())));
    proxy.set_routes(Some(v1.backend()), Some(v2.backend()), 50);
    let c = client();
    rt.block_on(async {
        for user in 0..10 {
            let cookie = format!("theme=dark; session=s{user}");
            let first = get(&c, proxy.local_addr(), "/", &[("cookie", &cookie)])
                .await
                .1;
            for _ in 0..5 {
                assert_eq!(
                    get(&c, proxy.local_addr(), "/", &[("cookie", &cookie)])
                        .await
                        .1,
                    first
                );
            }
        }
    });
}

#[test]
fn route_changes_under_load_lose_no_request() {
    let rt = runtime();
    let (v1, v2, v3) = rt.block_on(async {
        (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
            TestBackend::spawn("v3").await,
        )
    });
    let proxy = start_proxy(None);
    proxy.set_routes(Some(v1.backend()), None, 0);
    let addr = proxy.local_addr();
    let running = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let running = running.clone();
            rt.spawn(async move {
                let c = client();
                let (mut ok, mut failed) = (0usize, Vec::new());
                while running.load(Ordering::SeqCst) {
                    let req = Request::get(format!("http://{addr}/sleep/3"))
                        .body(Full::default())
                        .expect("a request");
                    match c.request(req).await {
                        Ok(resp) if resp.status() == StatusCode::OK => {
                            match resp.into_body().collect().await {
                                Ok(_) => ok += 1,
                                Err(e) => failed.push(format!("body: {e}")),
                            }
                        }
                        Ok(resp) => failed.push(format!("status {}", resp.status())),
                        Err(e) => failed.push(format!("request: {e}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let pause = || std::thread::sleep(Duration::from_millis(250));

    pause();
    proxy.set_routes(Some(v1.backend()), Some(v2.backend()), 25);
    pause();
    proxy.set_routes(Some(v1.backend()), Some(v2.backend()), 50);
    pause();
    // Promote v2: everything to it, drain v1, only then stop it.
    proxy.set_routes(Some(v2.backend()), None, 0);
    assert!(proxy.drain(v1.addr, Duration::from_secs(5)), "v1 drains");
    assert_eq!(v1.kill(), 0, "v1 was still answering when stopped");
    pause();
    // A bad candidate v3, rolled back: everything to v2, drain v3, stop it.
    proxy.set_routes(Some(v2.backend()), Some(v3.backend()), 50);
    pause();
    proxy.set_routes(Some(v2.backend()), None, 0);
    assert!(proxy.drain(v3.addr, Duration::from_secs(5)), "v3 drains");
    assert_eq!(v3.kill(), 0, "v3 was still answering when stopped");
    pause();
    running.store(false, Ordering::SeqCst);

    let (mut ok, mut failed) = (0, Vec::new());
    for handle in clients {
        let (o, f) = rt.block_on(handle).expect("a client task");
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 1000, "only {ok} requests");
    for b in [&v1, &v2, &v3] {
        assert!(
            b.served.load(Ordering::SeqCst) > 50,
            "{} served too little",
            b.version
        );
    }
    let stats = proxy.stats();
    let recorded: u64 = ["v1", "v2", "v3"]
        .iter()
        .map(|v| stats.window(v, Duration::from_secs(60)).requests)
        .sum();
    assert_eq!(recorded, ok as u64);
    assert_eq!(proxy.in_flight(v1.addr), 0);
}

#[test]
fn drain_waits_for_a_slow_request_and_reports_a_timeout() {
    let rt = runtime();
    let (v1, v2) = rt.block_on(async {
        (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        )
    });
    let proxy = start_proxy(None);
    proxy.set_routes(Some(v1.backend()), None, 0);
    let addr = proxy.local_addr();
    let slow = rt.spawn(async move { get(&client(), addr, "/sleep/600", &[]).await });
    while proxy.in_flight(v1.addr) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.set_routes(Some(v2.backend()), None, 0);
    assert!(
        !proxy.drain(v1.addr, Duration::from_millis(50)),
        "still in flight"
    );
    assert!(proxy.drain(v1.addr, Duration::from_secs(5)), "drained");
    assert_eq!(
        rt.block_on(slow).expect("the slow request"),
        (StatusCode::OK, "v1".to_owned())
    );
    assert!(
        proxy.drain("127.0.0.1:9".parse().expect("addr"), Duration::ZERO),
        "never routed: drained"
    );
}

#[test]
fn dead_backend_gives_502_counted_as_5xx_and_no_backend_503() {
    let rt = runtime();
    let dead = {
        let l = std::net::TcpListener::bind(any_port()).expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = start_proxy(None);
    let c = client();
    assert_eq!(
        rt.block_on(get(&c, proxy.local_addr(), "/", &[])).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(proxy.stats().unrouted(), 1);

    proxy.set_routes(
        Some(Backend {
            version: "v-dead".into(),
            addr: dead,
        }),
        None,
        0,
    );
    for _ in 0..3 {
        assert_eq!(
            rt.block_on(get(&c, proxy.local_addr(), "/", &[])).0,
            StatusCode::BAD_GATEWAY
        );
    }
    let w = proxy.stats().window("v-dead", Duration::from_secs(60));
    assert_eq!((w.requests, w.by_class[stats::CLASS_5XX]), (3, 3));
    assert_eq!(w.success_rate(), Some(0.0));
    assert_eq!(proxy.in_flight(dead), 0);
}

#[test]
fn requests_are_forwarded_faithfully() {
    let rt = runtime();
    let v1 = rt.block_on(TestBackend::spawn("v1"));
    let proxy = start_proxy(None);
    proxy.set_routes(Some(v1.backend()), None, 0);
    let c = client();
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let (parts, body) = rt.block_on(async {
        let req = Request::post(format!("http://{}/echo?a=1&b=two", proxy.local_addr()))
            .header("x-custom", "kept")
            .header("connection", "x-hop")
            .header("x-hop", "dropped")
            .header("x-forwarded-for", "203.0.113.7")
            .body(Full::new(Bytes::from(big.clone())))
            .expect("a request");
        let resp = c.request(req).await.expect("a response");
        let (parts, body) = resp.into_parts();
        (parts, body.collect().await.expect("a body").to_bytes())
    });
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["x-served-by"], "test-backend");
    let split = body
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("headers, then the body");
    let head = String::from_utf8_lossy(&body[..split]);
    assert!(
        head.starts_with("POST /echo?a=1&b=two HTTP/1.1\n"),
        "{head}"
    );
    assert!(head.contains("\nx-custom: kept"), "{head}");
    assert!(
        head.contains("\nx-forwarded-for: 203.0.113.7, 127.0.0.1"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\nhost: {}", proxy.local_addr())),
        "{head}"
    );
    assert!(
        !head.contains("x-hop") && !head.contains("connection:"),
        "{head}"
    );
    assert_eq!(&body[split + 2..], &big[..], "the body arrives intact");
}

/// One exposition line: `name{labels} value`, or a `# HELP` / `# TYPE` comment.
fn check_exposition_line(line: &str) {
    let is_name = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if let Some(rest) = line.strip_prefix("# HELP ") {
        let (name, help) = rest.split_once(' ').expect("HELP name text");
        assert!(is_name(name) && !help.is_empty(), "{line}");
        return;
    }
    if let Some(rest) = line.strip_prefix("# TYPE ") {
        let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
        assert!(
            is_name(name) && ["counter", "gauge", "histogram"].contains(&kind),
            "{line}"
        );
        return;
    }
    let (series, value) = line.rsplit_once(' ').expect("series value");
    assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
    let (name, labels) = match series.split_once('{') {
        Some((name, labels)) => (name, labels.strip_suffix('}').expect("labels close")),
        None => (series, ""),
    };
    assert!(is_name(name), "{line}");
    if !labels.is_empty() {
        for pair in labels.split(',') {
            let (k, v) = pair.split_once('=').expect("label=value");
            assert!(
                is_name(k) && v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                "{line}"
            );
        }
    }
}

#[test]
fn metrics_endpoint_is_prometheus_text() {
    let rt = runtime();
    let (v1, v2) = rt.block_on(async {
        (
            TestBackend::spawn("v1").await,
            TestBackend::spawn("v2").await,
        )
    });
    let proxy = start_proxy(None);
    proxy.set_routes(Some(v1.backend()), Some(v2.backend()), 50);
    let c = client();
    let (status, text) = rt.block_on(async {
        for path in ["/", "/status/404", "/status/500", "/sleep/20", "/"] {
            get(&c, proxy.local_addr(), path, &[]).await;
        }
        get(&c, proxy.local_addr(), METRICS_PATH, &[]).await
    });
    assert_eq!(status, StatusCode::OK);
    for line in text.lines() {
        check_exposition_line(line);
    }
    assert!(
        text.contains("# TYPE rollgate_proxy_requests_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE rollgate_proxy_request_duration_seconds histogram\n"),
        "{text}"
    );
    assert!(
        text.contains("rollgate_proxy_candidate_weight 50\n"),
        "{text}"
    );
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    let total: f64 = ["v1", "v2"]
        .iter()
        .flat_map(|v| {
            ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| format!("rollgate_proxy_requests_total{{version=\"{v}\",code=\"{c}\"}}"))
        })
        .map(|s| value(&s))
        .sum();
    assert_eq!(total, 5.0);
    // Buckets are cumulative and end at the count.
    for v in ["v1", "v2"] {
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "rollgate_proxy_request_duration_seconds_bucket{{version=\"{v}\""
                ))
            })
            .map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(_, n)| n.parse().ok())
                    .expect("a count")
            })
            .collect();
        assert_eq!(buckets.len(), stats::PROMETHEUS_BUCKETS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        let count = value(&format!(
            "rollgate_proxy_request_duration_seconds_count{{version=\"{v}\"}}"
        ));
        assert_eq!(buckets.last().copied(), Some(count));
    }
    // The metrics path is answered by the proxy, not proxied nor counted.
    assert_eq!(
        v1.served.load(Ordering::SeqCst) + v2.served.load(Ordering::SeqCst),
        5
    );
}

#[test]
fn window_queries_match_a_scripted_sequence() {
    let rt = runtime();
    let v2 = rt.block_on(TestBackend::spawn("v2"));
    let proxy = start_proxy(None);
    proxy.set_routes(None, Some(v2.backend()), 100);
    let addr = proxy.local_addr();
    // 5 fast 503s, 80 × 10 ms, 11 × 50 ms, 4 × 200 ms: p50 10 ms, p95 50 ms, p99 200 ms.
    let mut script = vec!["/status/503"; 5];
    script.extend(["/sleep/10"; 80]);
    script.extend(["/sleep/50"; 11]);
    script.extend(["/sleep/200"; 4]);
    // Four lanes of keep-alive requests, so the timings are the backend's, not a
    // burst of connection set-ups.
    rt.block_on(async {
        let c = client();
        let lanes: Vec<_> = (0..4)
            .map(|lane| {
                let (c, paths) = (
                    c.clone(),
                    script
                        .iter()
                        .skip(lane)
                        .step_by(4)
                        .copied()
                        .collect::<Vec<_>>(),
                );
                tokio::spawn(async move {
                    for path in paths {
                        get(&c, addr, path, &[]).await;
                    }
                })
            })
            .collect();
        for lane in lanes {
            lane.await.expect("a lane");
        }
    });
    let w = proxy.stats().window("v2", Duration::from_secs(30));
    assert_eq!(w.requests, 100);
    assert_eq!(w.by_class, [0, 95, 0, 0, 5]);
    assert_eq!(w.success_rate(), Some(0.95));
    let within = |got: Option<f64>, ms: f64| {
        let got = got.expect("a quantile");
        assert!(
            got >= ms * 0.97 / 1e3 && got <= ms * 1.3 / 1e3,
            "got {got} s, want about {ms} ms"
        );
    };
    within(w.p50(), 10.0);
    within(w.p95(), 50.0);
    within(w.p99(), 200.0);
    assert!(w.latency_sum >= Duration::from_millis(80 * 10 + 11 * 50 + 4 * 200));

    // The same numbers through the builtin metrics source.
    let registry: Registry = Arc::default();
    registry
        .lock()
        .expect("not poisoned")
        .insert("checkout".into(), proxy.stats());
    let mut source = Builtin::new(registry);
    let check = |query: &str| crate::model::plan::Check {
        name: query.into(),
        source: "builtin".into(),
        query: query.into(),
        judge: crate::model::plan::Judge::Threshold {
            min: Some(0.9),
            max: None,
        },
        interval: Duration::from_secs(10),
        failure_limit: 1,
        consecutive_error_limit: 1,
        samples_query: None,
    };
    let ctx = crate::metrics::QueryContext {
        plan: "checkout",
        version: "v2",
        baseline: None,
        fresh_baseline: false,
        window: Duration::from_secs(30),
        workload: None,
    };
    let m = source
        .measure(&check("success-rate"), &ctx)
        .expect("measured");
    assert_eq!((m.value, m.samples), (Some(0.95), 100));
    within(
        source
            .measure(&check("latency-p99"), &ctx)
            .expect("measured")
            .value,
        200.0,
    );
}

#[test]
fn shutdown_frees_the_port() {
    let proxy = start_proxy(None);
    let addr = proxy.local_addr();
    let clone = proxy.clone();
    proxy.shutdown();
    std::net::TcpListener::bind(addr).expect("the port is free again");
    drop(clone); // already stopped: dropping is a no-op
}

#[test]
fn regression_two_thousand_idle_half_open_connections_do_not_starve_the_proxy() {
    // Given a proxy, and 2,000 clients that sent half their headers and went quiet
    let proxy = start_proxy(None);
    let idle = crate::server::tests::half_open(proxy.local_addr(), 2000);
    // Then the proxy still answers (its own metrics path), within 100 ms every time
    let slowest = crate::server::tests::slowest_of_five(proxy.local_addr(), METRICS_PATH);
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
    drop(idle);
}

#[test]
fn new_connections_go_to_the_lane_serving_the_fewest_and_equal_lanes_take_turns() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let lanes: Vec<Lane> = (0..3)
        .map(|_| Lane {
            handle: rt.handle().clone(),
            live: Arc::new(AtomicUsize::new(0)),
        })
        .collect();
    let counts = |lanes: &[Lane]| -> Vec<usize> {
        lanes
            .iter()
            .map(|l| l.live.load(Ordering::Relaxed))
            .collect()
    };
    let mut next = 0;
    let open = |lanes: &[Lane], next: &mut usize| {
        let i = least_busy(lanes, next);
        lanes[i].live.fetch_add(1, Ordering::Relaxed);
        i
    };
    let first: Vec<usize> = (0..3).map(|_| open(&lanes, &mut next)).collect();
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2], "one each first: {first:?}");
    for _ in 0..9 {
        open(&lanes, &mut next);
    }
    assert_eq!(counts(&lanes), vec![4, 4, 4]);
    // Lane 1's connections close: the next four go there, and only there.
    lanes[1].live.store(0, Ordering::Relaxed);
    let refill: Vec<usize> = (0..4).map(|_| open(&lanes, &mut next)).collect();
    assert_eq!(refill, vec![1, 1, 1, 1]);
    assert_eq!(counts(&lanes), vec![4, 4, 4]);
}

#[test]
fn a_connection_counts_on_its_lane_until_its_task_is_gone() {
    let live = Arc::new(AtomicUsize::new(1));
    let on_lane = OnLane(live.clone());
    assert_eq!(live.load(Ordering::Relaxed), 1);
    drop(on_lane);
    assert_eq!(live.load(Ordering::Relaxed), 0);
}
