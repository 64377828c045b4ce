//! Mirror copies: a share of the requests the stable version serves, sent again to the
//! candidate, whose answers are counted under their own series (`stats::shadow_series`)
//! and thrown away.
//!
//! ```text
//!  user body ──▶ Tee ──frames, as they arrive──▶ stable   (never waits on the copy)
//!                 └─copy of the bytes (≤ MAX_BODY)─▶ at the body's end: Copy::send ─▶ candidate
//! ```
//! Invariants: a copy never delays, changes or fails the user's request: it is reserved
//! when the user's request is routed, its body copied as the user's body passes on to
//! the stable version (`Tee`), and sent from its own task over connections of its own
//! only once that body ended whole within `MAX_BODY`; at most `MAX_IN_FLIGHT` copies
//! are outstanding, buffering ones included (so mirror buffers stay under
//! `MAX_IN_FLIGHT × MAX_BODY`; more are dropped and counted, never queued); a copy is
//! never retried; a body over the bound, or one that does not arrive whole, is not
//! mirrored and is counted (`stats::MirrorNotSent`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::stats::{Recorder, Stats};

/// Copies outstanding at most; beyond it a copy is dropped (and counted).
pub const MAX_IN_FLIGHT: usize = 256;
/// The largest request body copied; a request with a larger one is not mirrored.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a copy may take, answer read to the end included; then it counts as 504.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The mirror's own client: a small connection pool to the candidate.
#[derive(Debug, Clone)]
pub(crate) struct Shadow {
    client: Client<HttpConnector, Full<Bytes>>,
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

    /// Reserve a copy of a request (method, origin-form target, headers as forwarded)
    /// to `to`: one of the `MAX_IN_FLIGHT` slots, held until its answer is counted.
    /// `None` when all are taken (counted as backpressure) or the target is not a URI.
    pub fn reserve(
        &self,
        stats: &Stats,
        to: SocketAddr,
        recorder: Recorder,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
    ) -> Option<Copy> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            stats.record_mirror_backpressure();
            return None;
        };
        let uri = Uri::try_from(format!("http://{to}{target}")).ok()?;
        let mut req = Request::new(());
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers.clone();
        Some(Copy {
            client: self.client.clone(),
            req,
            recorder,
            slot,
        })
    }
}

/// A reserved copy, waiting for its body.
#[derive(Debug)]
pub(crate) struct Copy {
    client: Client<HttpConnector, Full<Bytes>>,
    req: Request<()>,
    recorder: Recorder,
    slot: OwnedSemaphorePermit,
}

impl Copy {
    /// Send it with `body` from its own task (call it within the proxy's runtime): once,
    /// never retried; the answer is read to the end, counted, then dropped.
    pub fn send(self, body: Bytes) {
        let Copy {
            client,
            req,
            recorder,
            slot,
        } = self;
        let req = req.map(|()| Full::new(body));
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

/// A user's request body on its way to the stable version, copied as it passes for a
/// mirror copy (`Tee::copying`) or not (`Tee::plain`). Frames go on unchanged and at
/// once; the copy is sent when the body ends whole within `MAX_BODY`, else counted.
#[derive(Debug)]
pub(crate) struct Tee {
    inner: Incoming,
    copying: Option<Box<Copying>>,
}

#[derive(Debug)]
struct Copying {
    copy: Copy,
    buf: Vec<u8>,
    stats: Arc<Stats>,
}

impl Tee {
    pub fn plain(inner: Incoming) -> Self {
        Self {
            inner,
            copying: None,
        }
    }

    /// `inner`, copied for `copy`; a body whose announced length is over `MAX_BODY`
    /// is not copied (counted at once, its slot freed; callers check first, before
    /// reserving a slot).
    pub fn copying(inner: Incoming, copy: Copy, stats: Arc<Stats>) -> Self {
        if inner.size_hint().lower() > MAX_BODY as u64 {
            stats.record_mirror_too_large();
            return Self::plain(inner);
        }
        let capacity = inner.size_hint().exact().map_or(0, |n| n as usize);
        Self {
            inner,
            copying: Some(Box::new(Copying {
                copy,
                buf: Vec::with_capacity(capacity),
                stats,
            })),
        }
    }
}

impl Tee {
    /// The body ended whole: send the copy (once).
    fn send_copy(&mut self) {
        if let Some(c) = self.copying.take() {
            let Copying { copy, buf, .. } = *c;
            copy.send(Bytes::from(buf));
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Dropped before its end: the copy would be a truncated request.
        if let Some(c) = self.copying.take() {
            c.stats.record_mirror_incomplete();
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if this.copying.is_some() {
            match &polled {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref()
                        && let Some(c) = this.copying.as_mut()
                    {
                        if c.buf.len() + data.len() > MAX_BODY {
                            c.stats.record_mirror_too_large();
                            this.copying = None; // frees the buffer and the slot
                        } else {
                            c.buf.extend_from_slice(data);
                        }
                    }
                    // A body of known length ends with its last byte: hyper polls no
                    // further then, so the copy leaves now.
                    if this.inner.is_end_stream() {
                        this.send_copy();
                    }
                }
                std::task::Poll::Ready(None) => this.send_copy(),
                std::task::Poll::Ready(Some(Err(_))) => {
                    if let Some(c) = this.copying.take() {
                        c.stats.record_mirror_incomplete();
                    }
                }
                std::task::Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // While copying, the end is reported only once the copy has left (by the last
        // frame of a body of known length, else by `poll_frame`'s `None`).
        self.copying.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
