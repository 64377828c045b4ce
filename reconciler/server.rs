//! The daemon's HTTP side: `/healthz`, `/readyz`, `/metrics`, and the GitHub webhook
//! endpoint when it is configured (`github::handle`).
//!
//! It runs on its own small tokio runtime so the reconcile loop stays synchronous and
//! an HTTP flood cannot starve it. Invariant: handlers only read shared state or hand
//! events over channels; nothing an HTTP client sends can reach a target or Git from here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

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

/// Like `start`, plus `routes` (the webhook endpoint).
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
    let webhooks = routes.is_some();
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    if let Some(routes) = routes {
        app = app.merge(routes);
    }
    let app = app.fallback(not_found);
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    if webhooks {
        tracing::info!(addr = %bound, "serving /healthz, /readyz, /metrics, /webhooks/github");
    } else {
        tracing::info!(addr = %bound, "serving /healthz, /readyz, /metrics");
    }
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
