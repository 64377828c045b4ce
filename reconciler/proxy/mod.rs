//! rollgate's built-in weighted HTTP/1.1 proxy, for the `local` target.
//!
//! ```text
//!   client ──▶ listen ──▶ Table (stable, candidate, weight) ──weight%──▶ candidate
//!              │                                          ├──weight%──▶ fresh baseline (if any)
//!              │                                          └──rest────▶ stable
//!              └─ GET /.rollgate/metrics: Prometheus text of Stats (never proxied)
//! ```
//! The proxy runs on threads of its own, so callers stay synchronous: one lane (a thread
//! with a current-thread tokio runtime) per core, up to 4, each client connection served
//! on one lane from accept to close, and new connections given to the lane serving the
//! fewest (see `Lane`).
//! Routing is a table swapped whole by `set_traffic`; the choice is smooth (see `route`),
//! or sticky by a header or cookie; a header route sends matching requests to the
//! candidate first, and a mirror copies a share of stable-served requests to the
//! candidate (`shadow`: bodies up to `shadow::MAX_BODY` copied as they stream to the
//! stable; answers counted, then thrown away). Requests stream both ways. Each client connection is
//! one task that writes its requests straight onto its own keep-alive connections to
//! the backends and reads their answers (one per routed backend, see `upstream`: the
//! proxy's own strict HTTP/1.1 client): no pool, no channel, no hand-off between tasks.
//! A backend that cannot be reached, or answers with a malformed response, gives 502;
//! no backend 503.
//! Invariants: a request is counted in flight to its backend *under the table's read
//! lock*, so once `set_routes` returns, every request routed by an older table is
//! already counted and `drain` waits for it; a request finishes on the backend it
//! started on; its statistics are recorded once, when its response ends.
//! Limits against slow or idle clients (slowloris): at most `MAX_CONNECTIONS` client
//! connections (more are closed at once) and `HEADER_TIMEOUT` to send a request's
//! headers, the wait for the next request on a kept-alive connection included.
//! Not supported: protocol upgrades (WebSocket) and HTTP/2.

mod forward;
mod route;
mod shadow;
pub mod stats;
#[cfg(test)]
mod tests;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Body as _;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use self::forward::{
    ProxyBody, Tracker, add_forwarded_for, forwarded_for_value, plain, strip_hop_by_hop,
};
use self::route::{Condition, Routed, Table, request_bucket};
use self::shadow::{Shadow, Tee};
pub use self::stats::{Stats, WindowStats};
use self::upstream::Upstreams;
use crate::model::plan::Routing;
pub use crate::model::plan::Sticky;

/// Client connections at most; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Time for a client to send a request's headers (and to start the next one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The path the proxy answers itself with its metrics; everything else is proxied.
pub const METRICS_PATH: &str = "/.rollgate/metrics";

/// One process serving one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub version: String,
    pub addr: SocketAddr,
}

/// A running proxy. Clones share it; it stops on `shutdown` or when the last clone drops.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// The lanes' threads (see [`Lane`]).
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// One of the proxy's worker threads: its own current-thread tokio runtime (event loop,
/// I/O driver, timers), and how many client connections it serves now.
///
/// Each client connection lives on one lane, with its backend connections, from accept
/// to close: its requests are read, routed, forwarded and answered on one thread, with
/// no hand-off between threads. The acceptor gives each new connection to the lane
/// serving the fewest (haproxy's threads and Envoy's workers share out connections the
/// same way). Against tokio's work-stealing runtime with the same two threads, on this
/// 2-core machine (`cargo bench --bench proxy -- --no-mirror`): 0.92-0.93x haproxy's
/// closed-loop throughput before, 1.01-1.04x after; CPU per request 1.03-1.04x
/// haproxy's before, 0.95-0.99x after. What a lane cannot do is take work from another:
/// a few very busy connections on one lane leave the others idle, as in haproxy.
struct Lane {
    handle: tokio::runtime::Handle,
    live: Arc<AtomicUsize>,
}

/// Counts a connection on its lane until the task serving it ends or is dropped.
struct OnLane(Arc<AtomicUsize>);

impl Drop for OnLane {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The lane serving the fewest connections, looking from `next` on (so lanes that serve
/// as many take turns).
fn least_busy(lanes: &[Lane], next: &mut usize) -> usize {
    let n = lanes.len();
    let start = *next % n.max(1);
    *next = next.wrapping_add(1);
    (0..n)
        .map(|i| (start + i) % n)
        .min_by_key(|&i| lanes[i].live.load(Ordering::Relaxed))
        .unwrap_or(0)
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("sticky", &self.shared.sticky)
            .finish_non_exhaustive()
    }
}

/// What the request tasks share with the handle.
struct Shared {
    table: RwLock<Arc<Table>>,
    /// In-flight counters by backend address; an entry lives while a table or a request
    /// holds it.
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    stats: Arc<Stats>,
    sticky: Option<Sticky>,
    /// Sends mirror copies (its own connections and bound).
    shadow: Shadow,
}

impl Proxy {
    /// Bind `listen` and serve on a small dedicated tokio runtime (own threads), so
    /// callers stay synchronous. No routes yet: requests get 503 until `set_routes`.
    pub fn start(listen: SocketAddr, sticky: Option<Sticky>) -> std::io::Result<Proxy> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared {
            table: RwLock::new(Arc::new(Table::default())),
            in_flight: Mutex::new(HashMap::new()),
            stats: Arc::new(Stats::new()),
            sticky,
            shadow: Shadow::new(),
        });
        let (stop, stopped) = watch::channel(false);
        // One lane (thread and current-thread runtime) per core, up to 4, connections
        // shared out by count. (A thread returns when `stop` is sent, or dropped because
        // this function fails half way.)
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        let runtimes = (0..workers)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let lanes: Vec<Lane> = runtimes
            .iter()
            .map(|rt| Lane {
                handle: rt.handle().clone(),
                live: Arc::new(AtomicUsize::new(0)),
            })
            .collect();
        let listener = {
            let _entered = runtimes[0].enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        // The first lane's thread also accepts.
        let mut accepting = Some((listener, shared.clone(), lanes));
        let mut threads = Vec::with_capacity(workers);
        for (i, rt) in runtimes.into_iter().enumerate() {
            let accept = accepting.take();
            let mut stopped = stopped.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("rollgate-proxy {addr} #{i}"))
                    .spawn(move || {
                        match accept {
                            Some((listener, shared, lanes)) => {
                                rt.block_on(accept_loop(listener, shared, stopped, lanes));
                            }
                            None => rt.block_on(async move {
                                let _ = stopped.wait_for(|s| *s).await;
                            }),
                        }
                        rt.shutdown_timeout(Duration::from_secs(1));
                    })?,
            );
        }
        tracing::debug!(%addr, workers, "proxy listening");
        Ok(Proxy {
            inner: Arc::new(Inner {
                addr,
                shared,
                stop,
                threads: Mutex::new(threads),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Atomically replace the routing: `weight`% (0..=100) of requests to `candidate`,
    /// the rest to `stable`. With one backend only, it takes everything. Requests
    /// already in flight finish where they are. No header route, no mirror.
    pub fn set_routes(&self, stable: Option<Backend>, candidate: Option<Backend>, weight: u8) {
        // Without a routing there is no pattern to compile: it cannot fail.
        let _ = self.set_traffic(stable, candidate, weight, &Routing::default());
    }

    /// `set_routes` with a header route and a mirror, which apply only while both
    /// versions are routed. `Err` (and nothing changed) for a pattern that does not
    /// compile.
    pub fn set_traffic(
        &self,
        stable: Option<Backend>,
        candidate: Option<Backend>,
        weight: u8,
        routing: &Routing,
    ) -> Result<(), String> {
        self.set_shares(stable, candidate, None, weight, routing)
    }

    /// `set_traffic` with a fresh baseline: `baseline` (a copy of the stable artifact,
    /// its `version` the series it is counted under, see `stats::baseline_series`) takes
    /// as many requests as the candidate, as far as the stable has them to give (see
    /// `route`). Only while stable and candidate are both routed.
    pub fn set_shares(
        &self,
        stable: Option<Backend>,
        candidate: Option<Backend>,
        baseline: Option<Backend>,
        weight: u8,
        routing: &Routing,
    ) -> Result<(), String> {
        let shared = &self.inner.shared;
        let weight = weight.min(100);
        let both = stable.is_some() && candidate.is_some();
        let routing = if both {
            routing.clone()
        } else {
            Routing::default()
        };
        let baseline = baseline.filter(|_| both);
        if self.traffic() == (stable.clone(), candidate.clone(), weight, routing.clone())
            && self.baseline() == baseline
        {
            return Ok(()); // idempotent: keep the smooth sequences where they are
        }
        let conditions = routing
            .matches
            .iter()
            .map(Condition::new)
            .collect::<Result<Vec<_>, _>>()?;
        let shadow = match (&candidate, routing.mirror) {
            (Some(c), 1..) => Some(shared.stats.recorder(&stats::shadow_series(&c.version))),
            _ => None,
        };
        let mut in_flight = shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut routed = |b: Option<Backend>| {
            b.map(|backend| {
                Arc::new(Routed {
                    in_flight: in_flight.entry(backend.addr).or_default().clone(),
                    recorder: shared.stats.recorder(&backend.version),
                    backend,
                })
            })
        };
        let table = Table::new(routed(stable), routed(candidate), weight)
            .with_baseline(routed(baseline), weight)
            .shaped(routing, conditions, shadow);
        *shared.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        // Forget counters nobody holds any more (no table, no request).
        in_flight.retain(|_, n| Arc::strong_count(n) > 1 || n.load(Ordering::SeqCst) > 0);
        Ok(())
    }

    pub fn routes(&self) -> (Option<Backend>, Option<Backend>, u8) {
        let (s, c, w, _) = self.traffic();
        (s, c, w)
    }

    /// The routes and the header route and mirror in force.
    pub fn traffic(&self) -> (Option<Backend>, Option<Backend>, u8, Routing) {
        let table = self
            .inner
            .shared
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let backend = |r: &Option<Arc<Routed>>| r.as_ref().map(|r| r.backend.clone());
        (
            backend(&table.stable),
            backend(&table.candidate),
            table.weight,
            table.routing.clone(),
        )
    }

    /// The fresh baseline routed now, if any.
    pub fn baseline(&self) -> Option<Backend> {
        let table = self
            .inner
            .shared
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        table.baseline.as_ref().map(|r| r.backend.clone())
    }

    /// Block until no request is in flight to `addr` (or `timeout`); true when drained.
    /// Call it after `set_routes` has taken `addr` out of the routes.
    pub fn drain(&self, addr: SocketAddr, timeout: Duration) -> bool {
        let counter = {
            let in_flight = self
                .inner
                .shared
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match in_flight.get(&addr) {
                Some(c) => c.clone(),
                None => return true,
            }
        };
        let deadline = Instant::now() + timeout;
        loop {
            if counter.load(Ordering::SeqCst) == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(%addr, in_flight = counter.load(Ordering::SeqCst), "drain timed out");
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
        }
    }

    /// Requests in flight to `addr` right now.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        let in_flight = self
            .inner
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_flight.get(&addr).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.inner.shared.stats.clone()
    }

    /// Stop listening and serving (for every clone), and wait for the proxy's threads.
    pub fn shutdown(self) {
        self.inner.stop();
    }
}

impl Inner {
    fn stop(&self) {
        self.stop.send_replace(true);
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!(addr = %self.addr, "proxy thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts client connections (on the first lane) and gives each to the least busy lane.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    lanes: Vec<Lane>,
) {
    let for_connections = stopped.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut next = 0;
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        shared.stats.record_refused();
                        drop(stream);
                        continue;
                    };
                    // Registered again with the chosen lane's own I/O driver, so its
                    // readiness events wake that lane, not this one.
                    let Ok(stream) = stream.into_std() else {
                        continue;
                    };
                    let lane = &lanes[least_busy(&lanes, &mut next)];
                    lane.live.fetch_add(1, Ordering::Relaxed);
                    let on_lane = OnLane(lane.live.clone());
                    let (shared, stopped) = (shared.clone(), for_connections.clone());
                    lane.handle.spawn(async move {
                        if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                            serve_client(stream, peer, shared, stopped).await;
                        }
                        drop((on_lane, slot));
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("proxy accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

/// One client connection, and the backend connections its requests use, in one task.
async fn serve_client(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let upstreams = Arc::new(Upstreams::default());
    let forwarded_for = forwarded_for_value(peer);
    let service = {
        service_fn(move |req| {
            handle(
                shared.clone(),
                upstreams.clone(),
                forwarded_for.clone(),
                req,
            )
        })
    };
    let served = http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        r = served => if let Err(e) = r { tracing::debug!(%peer, "client connection: {e}") },
        _ = stopped.wait_for(|s| *s) => {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    upstreams: Arc<Upstreams>,
    forwarded_for: HeaderValue,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    if req.uri().path() == METRICS_PATH {
        return Ok(metrics_response(&shared, req.method()));
    }
    let bucket = shared
        .sticky
        .as_ref()
        .and_then(|s| request_bucket(s, req.headers()));
    let picked = {
        let table = shared.table.read().unwrap_or_else(PoisonError::into_inner);
        table.pick_for(bucket, req.headers()).map(|p| {
            // Only a mirrored request takes a handle on the shadow recorder.
            let mirror = p
                .mirror
                .and_then(|c| Some((c.backend.addr, table.shadow.clone()?)));
            (
                p.to.backend.addr,
                table.addrs(),
                Tracker::start(p.to, start),
                mirror,
            )
        })
    };
    let Some((addr, routed, mut tracker, mirror)) = picked else {
        shared.stats.record_unrouted();
        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "no backend\n"));
    };

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded_for(&mut parts.headers, &forwarded_for);
    if !parts.headers.contains_key(header::HOST) {
        // An HTTP/1.0 client may send none; HTTP/1.1 requires one.
        if let Ok(host) = HeaderValue::try_from(addr.to_string()) {
            parts.headers.insert(header::HOST, host);
        }
    }
    // The backend gets the origin form (`/path?query`), also of an absolute-form target.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match Uri::try_from(path) {
            Ok(uri) => uri,
            Err(_) => {
                tracker.status = Some(StatusCode::BAD_REQUEST.as_u16());
                return Ok(plain(StatusCode::BAD_REQUEST, "bad request target\n"));
            }
        };
    }
    parts.version = Version::HTTP_11;
    let body = match mirror {
        None => Tee::plain(body),
        Some(_) if body.size_hint().lower() > shadow::MAX_BODY as u64 => {
            shared.stats.record_mirror_too_large();
            Tee::plain(body)
        }
        Some((to, recorder)) => {
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let copy = shared.shadow.reserve(
                &shared.stats,
                to,
                recorder,
                &parts.method,
                target,
                &parts.headers,
            );
            match copy {
                None => Tee::plain(body),
                Some(copy) if body.is_end_stream() => {
                    copy.send(Bytes::new());
                    Tee::plain(body)
                }
                Some(copy) => Tee::copying(body, copy, shared.stats.clone()),
            }
        }
    };
    match upstream::send(&upstreams, addr, routed, &parts, body).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            tracker.status = Some(parts.status.as_u16());
            Ok(Response::from_parts(
                parts,
                ProxyBody::Tracked {
                    inner: body,
                    tracker: Some(tracker),
                },
            ))
        }
        Err(e) => {
            tracing::debug!(%addr, "backend request failed: {e}");
            tracker.status = Some(StatusCode::BAD_GATEWAY.as_u16());
            Ok(plain(StatusCode::BAD_GATEWAY, "backend unavailable\n"))
        }
    }
}

fn metrics_response(shared: &Shared, method: &Method) -> Response<ProxyBody> {
    if method != Method::GET && method != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let mut text = String::new();
    shared.stats.render_prometheus(&mut text);
    let table = shared
        .table
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    text.push_str(
        "# HELP rollgate_proxy_in_flight_requests Requests being served now, by routed version.\n",
    );
    text.push_str("# TYPE rollgate_proxy_in_flight_requests gauge\n");
    for r in [&table.stable, &table.candidate, &table.baseline]
        .into_iter()
        .flatten()
    {
        text.push_str(&format!(
            "rollgate_proxy_in_flight_requests{{version=\"{}\"}} {}\n",
            stats::escape_label(&r.backend.version),
            r.in_flight.load(Ordering::SeqCst)
        ));
    }
    text.push_str(
        "# HELP rollgate_proxy_candidate_weight Percent of requests routed to the candidate.\n",
    );
    text.push_str("# TYPE rollgate_proxy_candidate_weight gauge\n");
    text.push_str(&format!(
        "rollgate_proxy_candidate_weight {}\n",
        table.weight
    ));
    let mut resp = Response::new(ProxyBody::text(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
