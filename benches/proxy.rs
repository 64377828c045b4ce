//! Benchmark: the built-in proxy's cost in throughput and latency.
//!
//! A closed-loop load generator (tokio, N concurrent keep-alive HTTP/1.1 connections,
//! fixed duration) runs against one backend directly, then through the proxy at weight
//! 50 between two identical backends. Prints requests/s, p50 and p99 for both, the
//! throughput loss and the added p99. A second, paced run (a fixed request rate below
//! saturation) shows the added latency when CPU is not the bottleneck.
//! Everything runs in this process on this host: on a machine with few cores the load
//! generator, the proxy and the backends compete for the same CPUs.
//! Run: `cargo bench --bench proxy` (options after `--`: `--secs S`, `--connections N`,
//! `--rate R`). Under `cargo test` (no `--bench`) it runs a short smoke check only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rollgate::proxy::{Backend, Proxy};

fn arg(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// A backend: answers every request with a small fixed body.
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"hello from the backend\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[derive(Debug)]
struct Run {
    requests: u64,
    errors: u64,
    secs: f64,
    latencies_us: Vec<u64>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let rank = ((q * self.latencies_us.len() as f64).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        self.latencies_us[rank - 1] as f64 / 1e3
    }
}

/// `connections` keep-alive connections to `target`, each sending requests back to back
/// for `duration` (closed loop), or each at `rate / connections` requests per second.
async fn load(
    target: SocketAddr,
    connections: usize,
    duration: Duration,
    rate: Option<u64>,
) -> Run {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(target)
                    .await
                    .expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                tokio::spawn(conn);
                let mut ticker = rate.map(|r| {
                    let per_conn = (r as f64 / connections as f64).max(1.0);
                    let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_conn));
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                });
                let (mut latencies, mut errors) = (Vec::with_capacity(1 << 16), 0u64);
                while Instant::now() < deadline {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    }
                    let req = Request::get("/")
                        .header("host", "bench")
                        .body(Empty::new())
                        .expect("a request");
                    let sent = Instant::now();
                    match sender.send_request(req).await {
                        Ok(resp) => match resp.into_body().collect().await {
                            Ok(_) => latencies.push(sent.elapsed().as_micros() as u64),
                            Err(_) => errors += 1,
                        },
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut run = Run {
        requests: 0,
        errors: 0,
        secs: 0.0,
        latencies_us: Vec::new(),
    };
    for t in tasks {
        let (latencies, errors) = t.await.expect("a load task");
        run.requests += latencies.len() as u64;
        run.errors += errors;
        run.latencies_us.extend(latencies);
    }
    run.secs = start.elapsed().as_secs_f64();
    run
}

fn report(label: &str, run: &mut Run) -> (f64, f64) {
    let (p50, p99) = (run.quantile_ms(0.50), run.quantile_ms(0.99));
    println!(
        "{label:<28} {:>10.0} req/s   p50 {p50:>7.3} ms   p99 {p99:>7.3} ms   ({} requests, {} errors)",
        run.rps(),
        run.requests,
        run.errors
    );
    (run.rps(), p99)
}

fn compare(direct: &mut Run, proxied: &mut Run, what: &str) {
    let (d_rps, d_p99) = report(&format!("{what}: direct"), direct);
    let (p_rps, p_p99) = report(&format!("{what}: through proxy"), proxied);
    println!(
        "{what}: throughput loss {:.1} %, added p99 {:.3} ms",
        (1.0 - p_rps / d_rps) * 100.0,
        p_p99 - d_p99
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // test runners list targets; a benchmark has no tests to list
    }
    // `cargo bench` passes `--bench`; under `cargo test` run a short smoke check only.
    let full = args.iter().any(|a| a == "--bench");
    let secs = arg(&args, "--secs").unwrap_or(if full { 5 } else { 0 });
    let duration = if secs == 0 {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(secs)
    };
    let connections = arg(&args, "--connections").unwrap_or(if full { 32 } else { 4 }) as usize;
    let rate = arg(&args, "--rate").unwrap_or(5_000);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Backends and the load generator each get a small runtime; the proxy has its own.
    let backends_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("backend runtime");
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("load runtime");
    let (a, b) = backends_rt.block_on(async { (backend().await, backend().await) });
    let proxy =
        Proxy::start("127.0.0.1:0".parse().expect("an address"), None).expect("the proxy starts");
    proxy.set_routes(
        Some(Backend {
            version: "a".into(),
            addr: a,
        }),
        Some(Backend {
            version: "b".into(),
            addr: b,
        }),
        50,
    );
    let target = proxy.local_addr();

    println!(
        "proxy benchmark: {connections} keep-alive connections, {:.1} s per run, {cores} CPU core(s) shared by load, proxy and backends",
        duration.as_secs_f64()
    );
    // Warm up connections and pools.
    load_rt.block_on(load(a, connections, Duration::from_millis(200), None));
    load_rt.block_on(load(target, connections, Duration::from_millis(200), None));

    let mut direct = load_rt.block_on(load(a, connections, duration, None));
    let mut proxied = load_rt.block_on(load(target, connections, duration, None));
    compare(&mut direct, &mut proxied, "closed loop");

    let mut direct = load_rt.block_on(load(a, connections, duration, Some(rate)));
    let mut proxied = load_rt.block_on(load(target, connections, duration, Some(rate)));
    compare(&mut direct, &mut proxied, &format!("paced {rate}/s"));

    let stats = proxy.stats();
    let window = stats.window("a", Duration::from_secs(60));
    println!(
        "proxy stats (last 60 s): version a {} requests, p99 {:.3} ms; version b {} requests",
        window.requests,
        window.p99().unwrap_or(f64::NAN) * 1e3,
        stats.window("b", Duration::from_secs(60)).requests
    );
    let errors = direct.errors + proxied.errors;
    assert!(
        proxied.requests > 0 && errors == 0,
        "the proxy answered with errors: {errors}"
    );
    proxy.shutdown();
}
