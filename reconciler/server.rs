//! The daemon's HTTP side: `/healthz`, `/readyz` and `/metrics` (webhooks join later).
//!
//! It runs on its own small tokio runtime so the reconcile loop stays synchronous and
//! an HTTP flood cannot starve it. Invariant: handlers only read shared state; nothing
//! an HTTP client sends can reach a target or Git from here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What the endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// Set after the first successful pass (fetched, gated): the daemon is useful.
    pub ready: AtomicBool,
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn reply(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route(health: &Health, method: &Method, path: &str) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "ok\n".into(), "text/plain"),
        (&Method::GET, "/readyz") if health.ready.load(Ordering::Relaxed) => {
            reply(StatusCode::OK, "ready\n".into(), "text/plain")
        }
        (&Method::GET, "/readyz") => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first pass has not completed\n".into(),
            "text/plain",
        ),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            crate::telemetry::global().render(),
            "text/plain; version=0.0.4",
        ),
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

/// Listen on `addr` and serve until dropped.
pub fn start(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<Server> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rollgate-http")
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
    let bound = listener.local_addr()?;
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let r = route(&health, req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    tracing::info!(addr = %bound, "serving /healthz, /readyz, /metrics");
    Ok(Server {
        addr: bound,
        _runtime: runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_ready_and_metrics() {
        let health = Arc::new(Health::default());
        let server = start(SocketAddr::from(([127, 0, 0, 1], 0)), health.clone()).expect("listens");
        let get = |path: &str| {
            crate::target::local::http_get(server.addr, path, std::time::Duration::from_secs(2))
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
}
