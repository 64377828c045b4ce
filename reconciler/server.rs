//! The daemon's HTTP side: `/healthz`, `/readyz`, `/metrics`, the read-only dashboard
//! (`dashboard::router`, at `/`), and the GitHub webhook endpoint when it is configured
//! (`github::handle`).
//!
//! It runs on its own small tokio runtime so the reconcile loop stays synchronous and
//! an HTTP flood cannot starve it. Its own accept loop (not `axum::serve`, which sets no
//! timeouts) bounds what a client can hold: at most `MAX_CONNECTIONS` open (more are
//! closed at once), `HEADER_TIMEOUT` to send a request's headers (an idle keep-alive
//! connection included: slowloris connections die), `REQUEST_TIMEOUT` for the whole
//! request, body included (then 408).
//! Invariant: handlers only read shared state or hand events over channels; nothing an
//! HTTP client sends can reach a target or Git from here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Open client connections at most; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 4096;
/// Time to send a request's headers, waiting for the next request on a kept-alive
/// connection included.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Time for a whole request, reading its body included.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// Set after the first successful pass (fetched, gated): the daemon is useful.
    pub ready: AtomicBool,
    /// Why the daemon is not ready, when it knows (e.g. the remote refuses its
    /// credentials); shown by `/readyz`. Never holds a secret (URLs are redacted).
    pub reason: std::sync::Mutex<Option<String>>,
}

impl Health {
    /// Ready, or not ready for `reason`.
    pub fn set(&self, ready: Result<(), String>) {
        let (flag, reason) = match ready {
            Ok(()) => (true, None),
            Err(r) => (false, Some(r)),
        };
        self.ready.store(flag, Ordering::Relaxed);
        if let Ok(mut slot) = self.reason.lock() {
            *slot = reason;
        }
    }
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(health): State<Arc<Health>>) -> Response {
    if health.ready.load(Ordering::Relaxed) {
        return text(StatusCode::OK, "ready\n");
    }
    let reason = health.reason.lock().ok().and_then(|r| r.clone());
    match reason {
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("not ready: {r}\n"),
        )
            .into_response(),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first pass has not completed\n",
        ),
    }
}

async fn metrics() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::global().render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// Listen on `addr` and serve `/healthz`, `/readyz` and `/metrics` until dropped.
pub fn start(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<Server> {
    start_with(addr, health, None)
}

/// Like `start`, plus `routes` (the dashboard, the webhook endpoint).
pub fn start_with(
    addr: SocketAddr,
    health: Arc<Health>,
    routes: Option<Router>,
) -> std::io::Result<Server> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rollgate-http")
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
    let bound = listener.local_addr()?;
    let extra = routes.is_some();
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    if let Some(routes) = routes {
        app = app.merge(routes);
    }
    let app = app.fallback(not_found);
    runtime.spawn(accept_loop(listener, app));
    if extra {
        tracing::info!(addr = %bound, "serving /healthz, /readyz, /metrics and more (dashboard, webhooks)");
    } else {
        tracing::info!(addr = %bound, "serving /healthz, /readyz, /metrics");
    }
    Ok(Server {
        addr: bound,
        _runtime: runtime,
    })
}

/// Accept connections under `MAX_CONNECTIONS`, each served with the timeouts above.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "the HTTP server cannot accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::telemetry::global().connection_refused();
            drop(stream);
            continue;
        };
        let inner = hyper_util::service::TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |req| {
            let call = hyper::service::Service::call(&inner, req);
            async move {
                match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                    Ok(answer) => answer,
                    Err(_) => Ok(text(StatusCode::REQUEST_TIMEOUT, "request timeout\n")),
                }
            }
        });
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn health_ready_and_metrics() {
        let health = Arc::new(Health::default());
        let server = start(SocketAddr::from(([127, 0, 0, 1], 0)), health.clone()).expect("listens");
        let get = |path: &str| {
            crate::targets::local::http_get(server.addr, path, std::time::Duration::from_secs(2))
                .expect("answers")
        };
        assert_eq!(get("/healthz").0, 200);
        assert_eq!(get("/readyz").0, 503);
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").0, 200);
        let (code, body) = get("/metrics");
        assert_eq!(code, 200);
        assert!(body.contains("rollgate_reconciles_total"), "{body}");
        assert_eq!(get("/nope").0, 404);
    }

    /// `n` connections that each sent half a request's headers and then nothing, all
    /// accepted by the server at `addr` when this returns (see `wait_until_accepted`).
    pub(crate) fn half_open(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
        use std::io::Write;
        let streams = (0..n)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
                    .expect("half a request");
                s
            })
            .collect();
        wait_until_accepted(addr);
        streams
    }

    /// Wait until the kernel holds no connection to `addr` that the server has not
    /// accepted: none half-made (`SYN_RECV`) and none in the listening socket's accept
    /// queue. Connecting thousands back to back overflows that queue; the kernel then
    /// drops the handshake's last ACK and the client, which thinks itself connected,
    /// waits a 1 s SYN-ACK retransmit. Timing a request before the backlog is drained
    /// measured that retransmit, not the server (a 1.025 s `/healthz` in CI).
    pub(crate) fn wait_until_accepted(addr: SocketAddr) {
        let port = format!(":{:04X}", addr.port());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
            let waiting: usize = table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let (local, state, queues) = (f.get(1)?, *f.get(3)?, f.get(4)?);
                    if !local.ends_with(&port) {
                        return None;
                    }
                    match state {
                        // SYN_RECV: the server has not got it yet.
                        "03" => Some(1),
                        // LISTEN: rx_queue is the accept queue's length.
                        "0A" => usize::from_str_radix(queues.split(':').nth(1)?, 16).ok(),
                        _ => None,
                    }
                })
                .sum();
            if waiting == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{waiting} connections to {addr} still not accepted after 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The slowest of five `/healthz` answers.
    pub(crate) fn slowest_of_five(addr: SocketAddr, path: &str) -> std::time::Duration {
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                let (code, _) =
                    crate::targets::local::http_get(addr, path, std::time::Duration::from_secs(5))
                        .expect("answers");
                assert_eq!(code, 200);
                t.elapsed()
            })
            .max()
            .unwrap_or_default()
    }

    #[test]
    fn regression_a_slowloris_connection_is_closed_after_the_header_timeout() {
        use std::io::Read;
        // Given a client that sent half its headers and went quiet
        let server = start(SocketAddr::from(([127, 0, 0, 1], 0)), Arc::default()).expect("listens");
        let mut slow = half_open(server.addr, 1).remove(0);
        slow.set_read_timeout(Some(HEADER_TIMEOUT + std::time::Duration::from_secs(5)))
            .expect("timeout");
        // Then the server closes it once the header timeout has passed (before: never)
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let read = slow.read_to_end(&mut buf);
        let took = started.elapsed();
        assert!(read.is_ok(), "still open after {took:?}: {read:?}");
        assert!(
            took >= HEADER_TIMEOUT - std::time::Duration::from_secs(1),
            "{took:?}"
        );
    }

    #[test]
    fn regression_two_thousand_idle_half_open_connections_do_not_starve_healthz() {
        // Given the server, and 2,000 clients that sent half their headers and went quiet
        let server = start(SocketAddr::from(([127, 0, 0, 1], 0)), Arc::default()).expect("listens");
        let idle = half_open(server.addr, 2000);
        // Then /healthz still answers, within 100 ms every time
        let slowest = slowest_of_five(server.addr, "/healthz");
        assert!(
            slowest < std::time::Duration::from_millis(100),
            "{slowest:?}"
        );
        drop(idle);
    }
}
