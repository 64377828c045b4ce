//! Benchmark: the built-in proxy's cost in throughput, latency and CPU.
//!
//! A load generator (tokio, N concurrent keep-alive HTTP/1.1 connections, fixed
//! duration) runs against one backend directly, then through the proxy at weight 50
//! between two identical backends, in three modes:
//! - closed loop (requests back to back): requests/s and the throughput loss;
//! - paced at a low and a high fixed rate (default 5,000/s and 20,000/s, both below what
//!   either path sustains): the added p50/p99 when CPU is not the bottleneck;
//! - for every run, the CPU time per request of each party (proxy runtime threads, the
//!   backends, the load generator), read from `/proc/self/task/*/schedstat`.
//!
//! Everything runs in this process on this host: on a machine with few cores the load
//! generator, the proxy and the backends compete for the same CPUs, so the closed-loop
//! loss there mostly measures CPU sharing (a proxy does the HTTP work of a client and a
//! server per request, on cores the load and the backends need). The proxy's own cost
//! is its CPU time per request; its capacity on cores of its own is the inverse.
//! Run: `cargo bench --bench proxy` (options after `--`: `--secs S`, `--connections N`,
//! `--rate R`, `--high-rate R`). Under `cargo test` (no `--bench`) it runs a short smoke
//! check only.

use std::collections::HashMap;
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

/// Thread-name prefixes of the parties whose CPU time is accounted.
const PARTIES: [(&str, &str); 3] = [
    ("rollgate-proxy", "proxy"),
    ("bench-backend", "backends"),
    ("bench-load", "load"),
];

/// CPU time (ns) used so far by the threads of each party, by party label. Reads the
/// scheduler's run time (`schedstat`, ns); falls back to `stat` ticks (10 ms).
fn cpu_by_party() -> HashMap<&'static str, u64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let Some((_, party)) = PARTIES.iter().find(|(p, _)| comm.starts_with(p)) else {
            continue;
        };
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .or_else(|| {
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                let after = &stat[stat.rfind(')')? + 2..];
                let f: Vec<&str> = after.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(ticks * 10_000_000)
            });
        *out.entry(*party).or_default() += ns.unwrap_or(0);
    }
    out
}

#[derive(Debug)]
struct Run {
    requests: u64,
    errors: u64,
    secs: f64,
    latencies_us: Vec<u64>,
    /// CPU ns used during the run, by party.
    cpu_ns: HashMap<&'static str, u64>,
}

impl Run {
    /// CPU µs per request of a party during the run.
    fn cpu_us(&self, party: &str) -> f64 {
        self.cpu_ns.get(party).copied().unwrap_or(0) as f64 / 1e3 / self.requests.max(1) as f64
    }

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
    let cpu_before = cpu_by_party();
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
        cpu_ns: HashMap::new(),
    };
    for t in tasks {
        let (latencies, errors) = t.await.expect("a load task");
        run.requests += latencies.len() as u64;
        run.errors += errors;
        run.latencies_us.extend(latencies);
    }
    run.secs = start.elapsed().as_secs_f64();
    run.cpu_ns = cpu_by_party()
        .into_iter()
        .map(|(party, ns)| {
            (
                party,
                ns.saturating_sub(cpu_before.get(party).copied().unwrap_or(0)),
            )
        })
        .collect();
    run
}

fn report(label: &str, run: &mut Run) -> (f64, f64, f64) {
    let (p50, p99) = (run.quantile_ms(0.50), run.quantile_ms(0.99));
    println!(
        "{label:<30} {:>8.0} req/s   p50 {p50:>6.3} ms   p99 {p99:>6.3} ms   CPU/req: proxy {:>5.1} µs, backend {:>5.1} µs, load {:>5.1} µs   ({} requests, {} errors)",
        run.rps(),
        run.cpu_us("proxy"),
        run.cpu_us("backends"),
        run.cpu_us("load"),
        run.requests,
        run.errors
    );
    (run.rps(), p50, p99)
}

/// Print both runs and their difference; returns the proxy's CPU µs per request.
fn compare(direct: &mut Run, proxied: &mut Run, what: &str) -> f64 {
    let (d_rps, d_p50, d_p99) = report(&format!("{what}: direct"), direct);
    let (p_rps, p_p50, p_p99) = report(&format!("{what}: through proxy"), proxied);
    println!(
        "{what}: throughput loss {:.1} %, added p50 {:.3} ms, added p99 {:.3} ms",
        (1.0 - p_rps / d_rps) * 100.0,
        p_p50 - d_p50,
        p_p99 - d_p99
    );
    proxied.cpu_us("proxy")
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
    let high_rate = arg(&args, "--high-rate").unwrap_or(20_000);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Backends and the load generator each get a small runtime; the proxy has its own.
    let backends_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-backend")
        .enable_all()
        .build()
        .expect("backend runtime");
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-load")
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
    let closed_cpu = compare(&mut direct, &mut proxied, "closed loop");
    let mut errors = direct.errors + proxied.errors;

    let mut paced_p99 = Vec::new();
    for r in [rate, high_rate] {
        let mut direct = load_rt.block_on(load(a, connections, duration, Some(r)));
        let mut proxied = load_rt.block_on(load(target, connections, duration, Some(r)));
        compare(&mut direct, &mut proxied, &format!("paced {r}/s"));
        paced_p99.push((r, proxied.quantile_ms(0.99) - direct.quantile_ms(0.99)));
        errors += direct.errors + proxied.errors;
    }

    println!(
        "which figure answers which goal:\n\
         - added latency (goal <= 1 ms at p99): the paced runs, where neither path is CPU-bound: {}\n\
         - throughput (goal <= 10 % loss): the proxy's own cost is {closed_cpu:.1} µs CPU per request \
         (closed loop), i.e. about {:.0} req/s per core of its own; the closed-loop loss above also \
         counts the CPU it takes from the load generator and backends sharing {cores} core(s)",
        paced_p99
            .iter()
            .map(|(r, p)| format!("{r}/s {p:+.3} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        1e6 / closed_cpu.max(f64::MIN_POSITIVE)
    );

    let stats = proxy.stats();
    let window = stats.window("a", Duration::from_secs(60));
    println!(
        "proxy stats (last 60 s): version a {} requests, p99 {:.3} ms; version b {} requests",
        window.requests,
        window.p99().unwrap_or(f64::NAN) * 1e3,
        stats.window("b", Duration::from_secs(60)).requests
    );
    assert!(
        window.requests > 0 && errors == 0,
        "the proxy answered with errors: {errors}"
    );
    proxy.shutdown();
}
