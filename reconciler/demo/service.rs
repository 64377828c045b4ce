//! The demo service: a tiny HTTP server whose behaviour depends on its version.
//!
//! `rollgate demo-service --port P --version V [--fail-version V3 --fail-rate 0.2]`
//! answers `GET /` with its version, `GET /healthz` with 200, and, when its version is
//! the failing one, a deterministic share of requests with 500 (every k-th request, so
//! the error rate is exact and the demo repeatable). A few milliseconds of work per
//! request give the latency checks something real to measure.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub port: u16,
    pub version: String,
    /// Requests out of 1,000 answered with 500 (0 for a healthy version).
    pub errors_per_mille: u64,
    pub work_ms: u64,
}

/// Serve until the process is stopped.
pub fn serve(cfg: ServiceConfig) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], cfg.port));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let cfg = Arc::new(cfg);
        let counter = Arc::new(AtomicU64::new(0));
        loop {
            let (stream, _) = listener.accept().await?;
            let cfg = cfg.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let cfg = cfg.clone();
                    let counter = counter.clone();
                    async move { Ok::<_, Infallible>(answer(&cfg, &counter, req.uri().path()).await) }
                });
                let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

async fn answer(cfg: &ServiceConfig, counter: &AtomicU64, path: &str) -> Response<Full<Bytes>> {
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n".to_owned());
    }
    if cfg.work_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(cfg.work_ms)).await;
    }
    let n = counter.fetch_add(1, Ordering::Relaxed);
    // Spread failures evenly: request n fails when it crosses a multiple of 1000/rate.
    let fails = cfg.errors_per_mille > 0
        && (n * cfg.errors_per_mille) / 1000 != ((n + 1) * cfg.errors_per_mille) / 1000;
    if fails {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} failed\n", cfg.version),
        )
    } else {
        text(StatusCode::OK, format!("hello from {}\n", cfg.version))
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
