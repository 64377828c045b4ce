//! Mirror copies: a share of the requests the stable version serves, sent again to the
//! candidate, whose answers are counted under their own series (`stats::shadow_series`)
//! and thrown away.
//!
//! Invariants: a copy never delays, changes or fails the user's request: it is sent
//! from its own task once the user's request is routed, over connections of its own;
//! at most `MAX_IN_FLIGHT` copies are outstanding (more are dropped and counted, never
//! queued); a copy is never retried; only requests without a body are copied (the
//! others are counted as skipped), so the user's body is never buffered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use super::stats::{Recorder, Stats};

/// Copies outstanding at most; beyond it a copy is dropped (and counted).
pub const MAX_IN_FLIGHT: usize = 256;
/// How long a copy may take, answer read to the end included; then it counts as 504.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The mirror's own client: a small connection pool to the candidate.
#[derive(Debug, Clone)]
pub(crate) struct Shadow {
    client: Client<HttpConnector, Empty<Bytes>>,
    slots: Arc<Semaphore>,
}

impl Shadow {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .retry_canceled_requests(false)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Self {
            client,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Send a copy of a request (method, origin-form target, headers as forwarded) to
    /// `to`, on its own task; call it from within the proxy's runtime.
    pub fn send(
        &self,
        stats: &Stats,
        to: SocketAddr,
        recorder: Recorder,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
    ) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            stats.record_shadow_dropped();
            return;
        };
        let Ok(uri) = Uri::try_from(format!("http://{to}{target}")) else {
            return;
        };
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers.clone();
        let client = self.client.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let answered = tokio::time::timeout(TIMEOUT, async {
                let resp = client.request(req).await.ok()?;
                let status = resp.status().as_u16();
                // Read the answer to the end (its latency includes the body), then drop it.
                let mut body = resp.into_body();
                while let Some(frame) = body.frame().await {
                    frame.ok()?;
                }
                Some(status)
            })
            .await;
            let status = match answered {
                Ok(Some(status)) => status,
                Ok(None) => 502,
                Err(_) => 504,
            };
            recorder.record(status, start.elapsed());
            drop(slot);
        });
    }
}
