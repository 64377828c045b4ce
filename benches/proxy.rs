//! Benchmark: the built-in proxy's cost in throughput, latency and CPU, side by side
//! with haproxy on the same work (issue #21: the goal is at least haproxy's throughput,
//! with a p99 no worse than haproxy's).
//!
//! A load generator (tokio, N concurrent keep-alive HTTP/1.1 connections, fixed
//! duration) runs against one backend directly, through rollgate's proxy at weight 50
//! between two identical backends, and through Debian's `haproxy` over the same two
//! backends (`balance roundrobin`, `weight 50` each, keep-alive, `nbthread` equal to the
//! proxy's worker threads so both get the same core budget), in three modes:
//! - closed loop (requests back to back): requests/s and the throughput loss;
//! - paced at a low and a high fixed rate (default 5,000/s and 20,000/s, both below what
//!   either path sustains): the added p50/p99 when CPU is not the bottleneck;
//! - for every run, the CPU time per request of each party (proxy runtime threads, the
//!   haproxy process, the backends, the load generator), read from the scheduler's run
//!   time in `/proc/<pid>/task/*/schedstat` (the same source for both proxies; `stat`
//!   utime+stime ticks when schedstat is missing).
//!
//! The three paths run one after another in each mode, and the whole set twice (two
//! rounds); each round ends with `proxy vs haproxy: throughput X.XXx, p99 +Y.YY ms,
//! CPU/request Z.ZZx` (closed-loop req/s ratio, the worse of the paced p99 differences,
//! closed-loop CPU per request ratio).
//!
//! Everything runs on this host: on a machine with few cores the load generator, the
//! proxy and the backends compete for the same CPUs, so the closed-loop loss there
//! mostly measures CPU sharing (a proxy does the HTTP work of a client and a server per
//! request, on cores the load and the backends need). The proxy's own cost is its CPU
//! time per request; its capacity on cores of its own is the inverse.
//!
//! haproxy: found on `PATH` (or in `/usr/sbin`), else installed with `apt-get install
//! haproxy` when running as root; when it cannot be had the benchmark prints
//! `SKIPPED haproxy: <reason>` and runs the rest. Its configuration lives in a temp
//! dir; it runs in the foreground (`-db`) and is killed when the benchmark ends, also on
//! a panic (not on SIGKILL of the benchmark itself).
//!
//! A second scenario answers issue #19's mirror goal: users paced at 500 req/s (8
//! connections) through the proxy with the mirror off, then copying 30% to a candidate
//! that answers after 200 ms, to one answering 500 at once and to one refusing
//! connections; each run prints the users' p50/p99 against mirroring off in the same
//! round and the user requests lost (goal: p99 +1 ms at most, none lost).
//!
//! Run: `cargo bench --bench proxy` (options after `--`: `--secs S`, `--connections N`,
//! `--rate R`, `--high-rate R`, `--rounds N`, `--no-haproxy`, `--mirror-rate R`,
//! `--only-mirror`, `--no-mirror`). Under `cargo test` or
//! `cargo nextest` (no `--bench`) it runs a short smoke check only, without haproxy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A mirror candidate that answers every request with `status` after `delay`.
async fn slow_backend(delay: Duration, status: u16) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a candidate");
    let addr = listener.local_addr().expect("candidate address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"candidate\n")));
                    *resp.status_mut() =
                        hyper::StatusCode::from_u16(status).expect("a status code");
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Thread-name prefixes of the parties in this process whose CPU time is accounted.
const PARTIES: [(&str, &str); 3] = [
    ("rollgate-proxy", "proxy"),
    ("bench-backend", "backends"),
    ("bench-load", "load"),
];

/// CPU time (ns) one thread has used: the scheduler's run time (`schedstat`, ns), or
/// `stat`'s utime+stime ticks (10 ms) when schedstat is missing.
fn task_cpu_ns(task: &Path) -> Option<u64> {
    std::fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .or_else(|| {
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 10_000_000)
        })
}

/// CPU time (ns) used so far by the threads of each party, by party label; with
/// `haproxy`, that process's threads count as the party "haproxy".
fn cpu_by_party(haproxy: Option<u32>) -> HashMap<&'static str, u64> {
    let mut out = HashMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let dir = task.path();
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            let Some((_, party)) = PARTIES.iter().find(|(p, _)| comm.starts_with(p)) else {
                continue;
            };
            *out.entry(*party).or_default() += task_cpu_ns(&dir).unwrap_or(0);
        }
    }
    if let Some(pid) = haproxy
        && let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task"))
    {
        for task in tasks.flatten() {
            *out.entry("haproxy").or_default() += task_cpu_ns(&task.path()).unwrap_or(0);
        }
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
/// `haproxy`: the pid whose CPU time to account too.
async fn load(
    target: SocketAddr,
    connections: usize,
    duration: Duration,
    rate: Option<u64>,
    haproxy: Option<u32>,
) -> Run {
    let cpu_before = cpu_by_party(haproxy);
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
    run.cpu_ns = cpu_by_party(haproxy)
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

/// Print one run; `proxy` names the party in the middle ("proxy" or "haproxy").
fn report(label: &str, run: &mut Run, proxy: &str) -> (f64, f64, f64) {
    let (p50, p99) = (run.quantile_ms(0.50), run.quantile_ms(0.99));
    println!(
        "{label:<30} {:>8.0} req/s   p50 {p50:>6.3} ms   p99 {p99:>6.3} ms   CPU/req: {proxy:<7} {:>5.1} µs, backend {:>5.1} µs, load {:>5.1} µs   ({} requests, {} errors)",
        run.rps(),
        run.cpu_us(proxy),
        run.cpu_us("backends"),
        run.cpu_us("load"),
        run.requests,
        run.errors
    );
    (run.rps(), p50, p99)
}

/// Print a proxied run against the direct one, with their difference.
fn compare(direct: (f64, f64, f64), proxied: &mut Run, what: &str, proxy: &str) {
    let (d_rps, d_p50, d_p99) = direct;
    let (p_rps, p_p50, p_p99) = report(&format!("{what}: through {proxy}"), proxied, proxy);
    println!(
        "{what}: {proxy}: throughput loss {:.1} %, added p50 {:.3} ms, added p99 {:.3} ms",
        (1.0 - p_rps / d_rps) * 100.0,
        p_p50 - d_p50,
        p_p99 - d_p99
    );
}

/// The figures of one round that the summary compares.
#[derive(Debug, Default)]
struct Round {
    /// Closed loop: req/s and CPU µs per request, of the proxy and of haproxy.
    proxy_rps: f64,
    proxy_cpu_us: f64,
    haproxy_rps: f64,
    haproxy_cpu_us: f64,
    /// Paced runs: (rate, p99 added by the proxy over direct, proxy p99 − haproxy p99).
    paced: Vec<(u64, f64, Option<f64>)>,
    haproxy_errors: u64,
}

impl Round {
    /// `proxy vs haproxy: throughput X.XXx, p99 +Y.YY ms, CPU/request Z.ZZx`, p99 being
    /// the worse of the paced rates; None without haproxy.
    fn versus(&self) -> Option<String> {
        let worst = self
            .paced
            .iter()
            .filter_map(|(_, _, d)| *d)
            .reduce(f64::max)?;
        Some(format!(
            "proxy vs haproxy: throughput {:.2}x, p99 {worst:+.2} ms, CPU/request {:.2}x",
            self.proxy_rps / self.haproxy_rps,
            self.proxy_cpu_us / self.haproxy_cpu_us
        ))
    }

    /// What the summary line is made of.
    fn detail(&self) -> String {
        let paced = self
            .paced
            .iter()
            .filter_map(|(r, _, d)| Some(format!("{r}/s {:+.3} ms", (*d)?)))
            .collect::<Vec<_>>()
            .join(", ");
        let errors = if self.haproxy_errors > 0 {
            format!("; haproxy answered with {} errors", self.haproxy_errors)
        } else {
            String::new()
        };
        format!(
            "closed loop {:.0} vs {:.0} req/s, CPU {:.1} vs {:.1} µs/request; p99 proxy − haproxy paced at {paced}{errors}",
            self.proxy_rps, self.haproxy_rps, self.proxy_cpu_us, self.haproxy_cpu_us
        )
    }
}

/// A running haproxy over the two backends; killed (SIGKILL, by its pid) when dropped,
/// its config dir removed.
#[derive(Debug)]
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Start `binary` in the foreground on a free loopback port, `threads` threads,
    /// round robin at weight 50 over `a` and `b`; wait until it accepts.
    fn start(binary: &Path, a: SocketAddr, b: SocketAddr, threads: usize) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
        // A free port: bind, read it, let it go (haproxy binds it a moment later).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?;
        // No `log` line anywhere: haproxy logs nothing.
        let config = format!(
            "global\n\
             \x20   nbthread {threads}\n\
             \x20   maxconn 4096\n\
             defaults\n\
             \x20   mode http\n\
             \x20   option http-keep-alive\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             \x20   timeout http-keep-alive 30s\n\
             frontend bench\n\
             \x20   bind {addr}\n\
             \x20   default_backend two\n\
             backend two\n\
             \x20   balance roundrobin\n\
             \x20   server a {a} weight 50\n\
             \x20   server b {b} weight 50\n"
        );
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config).map_err(|e| format!("write its config: {e}"))?;
        let stderr_path = dir.path().join("stderr");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| format!("{e}"))?;
        let child = Command::new(binary)
            .arg("-db") // foreground, no daemon
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        let mut haproxy = Haproxy {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(format!("it exited ({status}): {}", said.trim()));
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(haproxy);
            }
            if Instant::now() > deadline {
                return Err(format!("it did not accept on {addr} within 5 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The haproxy binary: on `PATH` or in `/usr/sbin` (Debian's place, often not on a
/// user's `PATH`), else installed with apt when running as root.
fn find_or_install_haproxy() -> Result<PathBuf, String> {
    let find = || {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join("haproxy"))
            .find(|path| path.is_file())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    if !rustix::process::geteuid().is_root() {
        return Err("not installed, and not root to `apt-get install haproxy`".into());
    }
    println!("haproxy is not installed: apt-get install -y -qq haproxy");
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "haproxy"][..],
    ] {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("apt-get: {e}"))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let last = said.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(format!(
                "`apt-get {}` failed ({}): {last}",
                args.join(" "),
                out.status
            ));
        }
    }
    find().ok_or_else(|| "apt-get installed haproxy but no haproxy binary was found".into())
}

/// Issue #19's mirror goal: users' p50/p99 at `rate` req/s with the mirror off, then
/// copying `MIRROR_PERCENT`% to a slow candidate, to one answering 500 and to one that
/// refuses connections, one after another in the same run (`rounds` times). Returns the
/// user requests lost (errors) over every run.
#[allow(clippy::too_many_arguments)]
fn mirror_scenario(
    load_rt: &tokio::runtime::Runtime,
    backends_rt: &tokio::runtime::Runtime,
    proxy: &Proxy,
    stable: SocketAddr,
    rate: u64,
    duration: Duration,
    rounds: u64,
) -> u64 {
    const MIRROR_PERCENT: u8 = 30;
    const CONNECTIONS: usize = 8;
    let slow_ms = 200;
    let (slow, failing) = backends_rt.block_on(async {
        (
            slow_backend(Duration::from_millis(slow_ms), 200).await,
            slow_backend(Duration::ZERO, 500).await,
        )
    });
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let candidates = [
        (format!("slow ({slow_ms} ms)"), "slow", slow),
        ("failing (500)".to_string(), "failing", failing),
        ("refusing connections".to_string(), "refusing", refused),
    ];
    println!(
        "mirror benchmark (#19): users paced at {rate} req/s over {CONNECTIONS} keep-alive connections, {:.1} s per run; mirror {MIRROR_PERCENT}% of requests to a candidate",
        duration.as_secs_f64()
    );
    let stable_backend = Backend {
        version: "stable".into(),
        addr: stable,
    };
    let mut lost = 0;
    let mut worst: Option<f64> = None;
    for round_no in 1..=rounds {
        proxy.set_routes(Some(stable_backend.clone()), None, 0);
        let mut off = load_rt.block_on(load(
            proxy.local_addr(),
            CONNECTIONS,
            duration,
            Some(rate),
            None,
        ));
        lost += off.errors;
        let (_, off_p50, off_p99) =
            report(&format!("round {round_no}: mirror off"), &mut off, "proxy");
        for (label, version, addr) in &candidates {
            let routing = rollgate::model::plan::Routing {
                matches: Vec::new(),
                mirror: MIRROR_PERCENT,
                baseline: false,
            };
            proxy
                .set_traffic(
                    Some(stable_backend.clone()),
                    Some(Backend {
                        version: (*version).into(),
                        addr: *addr,
                    }),
                    0,
                    &routing,
                )
                .expect("a mirror routing");
            let series = rollgate::proxy::stats::shadow_series(version);
            let copies_before = proxy
                .stats()
                .window(&series, Duration::from_secs(900))
                .requests;
            let mut on = load_rt.block_on(load(
                proxy.local_addr(),
                CONNECTIONS,
                duration,
                Some(rate),
                None,
            ));
            // Copies still outstanding (the slow candidate) finish within its delay.
            std::thread::sleep(Duration::from_millis(slow_ms + 100));
            lost += on.errors;
            let copies = proxy
                .stats()
                .window(&series, Duration::from_secs(900))
                .requests
                - copies_before;
            let (_, p50, p99) = report(
                &format!("round {round_no}: mirror to {version}"),
                &mut on,
                "proxy",
            );
            let not_sent = proxy.stats().mirror_not_sent();
            println!(
                "round {round_no}: mirror {MIRROR_PERCENT}% to a {label} candidate: users' p50 {:+.3} ms, p99 {:+.3} ms over mirroring off; {} user requests lost; {copies} copies answered ({:.1}% of {} requests; not sent so far: {} backpressure)",
                p50 - off_p50,
                p99 - off_p99,
                on.errors,
                copies as f64 * 100.0 / on.requests.max(1) as f64,
                on.requests,
                not_sent.backpressure,
            );
            worst = Some(worst.map_or(p99 - off_p99, |w: f64| w.max(p99 - off_p99)));
        }
    }
    if let Some(worst) = worst {
        println!(
            "mirror goal (#19): worst p99 added by mirroring {worst:+.3} ms (goal <= +1.000 ms), user requests lost {lost} (goal 0)"
        );
    }
    lost
}

/// The closed-loop and paced rounds: direct, through the proxy and through haproxy.
#[allow(clippy::too_many_arguments)]
fn main_rounds(
    load_rt: &tokio::runtime::Runtime,
    proxy: &Proxy,
    a: SocketAddr,
    haproxy: Option<Haproxy>,
    connections: usize,
    duration: Duration,
    rate: u64,
    high_rate: u64,
    rounds: u64,
    with_haproxy: bool,
) {
    let target = proxy.local_addr();
    // Warm up connections and pools.
    let warm_up = Duration::from_millis(200);
    load_rt.block_on(load(a, connections, warm_up, None, None));
    load_rt.block_on(load(target, connections, warm_up, None, None));
    if let Some(h) = &haproxy {
        load_rt.block_on(load(h.addr, connections, warm_up, None, Some(h.pid())));
    }

    let mut errors = 0;
    let mut rounds_done = Vec::new();
    for round_no in 1..=rounds {
        if rounds > 1 {
            println!("round {round_no} of {rounds}");
        }
        let mut round = Round::default();
        // Closed loop, then paced at each rate; direct, the proxy and haproxy one after
        // another in each mode, on the same connections and durations.
        for mode in [None, Some(rate), Some(high_rate)] {
            let what = match mode {
                None => "closed loop".to_string(),
                Some(r) => format!("paced {r}/s"),
            };
            let run = |addr, pid| load_rt.block_on(load(addr, connections, duration, mode, pid));
            let mut direct = run(a, None);
            let mut proxied = run(target, None);
            let mut through_haproxy = haproxy.as_ref().map(|h| run(h.addr, Some(h.pid())));
            errors += direct.errors + proxied.errors;

            let direct_figures = report(&format!("{what}: direct"), &mut direct, "proxy");
            compare(direct_figures, &mut proxied, &what, "proxy");
            if let Some(h) = through_haproxy.as_mut() {
                compare(direct_figures, h, &what, "haproxy");
                round.haproxy_errors += h.errors;
            }
            let p99 = proxied.quantile_ms(0.99);
            match mode {
                None => {
                    round.proxy_rps = proxied.rps();
                    round.proxy_cpu_us = proxied.cpu_us("proxy");
                    if let Some(h) = &through_haproxy {
                        round.haproxy_rps = h.rps();
                        round.haproxy_cpu_us = h.cpu_us("haproxy");
                    }
                }
                Some(r) => round.paced.push((
                    r,
                    p99 - direct_figures.2,
                    through_haproxy.as_mut().map(|h| p99 - h.quantile_ms(0.99)),
                )),
            }
        }
        if let Some(versus) = round.versus() {
            println!("round {round_no}: {versus}\n  ({})", round.detail());
        }
        rounds_done.push(round);
    }

    println!("which figure answers which goal (#21):");
    for (i, round) in rounds_done.iter().enumerate() {
        let added = round
            .paced
            .iter()
            .map(|(r, p, _)| format!("{r}/s {p:+.3} ms"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "- round {}: the proxy's own cost is {:.1} µs CPU per request (closed loop), about {:.0} req/s per core of its own; p99 added over direct, paced: {added}",
            i + 1,
            round.proxy_cpu_us,
            1e6 / round.proxy_cpu_us.max(f64::MIN_POSITIVE)
        );
        match round.versus() {
            Some(versus) => println!(
                "  round {}: {versus} (goal: throughput >= 1.00x, p99 <= +0.00 ms)",
                i + 1
            ),
            None if with_haproxy => println!("  round {}: no haproxy to compare with", i + 1),
            None => {}
        }
    }
    drop(haproxy);

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
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // Test runners list tests (libtest's terse format): the smoke check is one, so
        // `cargo nextest run --bench proxy` runs it; none is ignored.
        if !args.iter().any(|a| a == "--ignored") {
            println!("smoke: test");
        }
        return;
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
    let rounds = arg(&args, "--rounds")
        .unwrap_or(if full { 2 } else { 1 })
        .max(1);
    let with_haproxy = full && !args.iter().any(|a| a == "--no-haproxy");
    let mirror_rate = arg(&args, "--mirror-rate").unwrap_or(500);
    let only_mirror = args.iter().any(|a| a == "--only-mirror");
    let with_mirror = !args.iter().any(|a| a == "--no-mirror");
    let with_haproxy = with_haproxy && !only_mirror;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The proxy's worker threads (reconciler/proxy/mod.rs); haproxy gets as many.
    let proxy_threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
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
    let haproxy = if with_haproxy {
        let started = find_or_install_haproxy().and_then(|binary| {
            let version = Command::new(&binary)
                .arg("-v")
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .map(String::from)
                })
                .unwrap_or_default();
            let haproxy = Haproxy::start(&binary, a, b, proxy_threads)
                .map_err(|e| format!("{}: {e}", binary.display()))?;
            println!(
                "{version} ({}), pid {}, nbthread {proxy_threads}, listening on {}",
                binary.display(),
                haproxy.pid(),
                haproxy.addr
            );
            Ok(haproxy)
        });
        match started {
            Ok(haproxy) => Some(haproxy),
            Err(reason) => {
                println!("SKIPPED haproxy: {reason}");
                None
            }
        }
    } else {
        None
    };

    println!(
        "proxy benchmark: {connections} keep-alive connections, {:.1} s per run, {rounds} round(s), {cores} CPU core(s) shared by load, proxies and backends; the proxy and haproxy have {proxy_threads} worker thread(s) each",
        duration.as_secs_f64()
    );
    if !only_mirror {
        main_rounds(
            &load_rt,
            &proxy,
            a,
            haproxy,
            connections,
            duration,
            rate,
            high_rate,
            rounds,
            with_haproxy,
        );
    }
    if with_mirror {
        let lost = mirror_scenario(
            &load_rt,
            &backends_rt,
            &proxy,
            a,
            mirror_rate,
            duration,
            rounds,
        );
        assert_eq!(lost, 0, "user requests lost while mirroring");
    }
    proxy.shutdown();
}
