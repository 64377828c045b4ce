//! Forwarding one request: header rewriting, the response body that tracks its request,
//! and the answers the proxy gives itself (502, 503, metrics).
//!
//! Invariant: a request counts as in flight to its backend from the moment it is routed
//! until its response body has been sent in full (or dropped); its statistics are
//! recorded exactly once, at that moment.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::route::Routed;
use super::shadow::Tee;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: look before paying for removals.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The `X-Forwarded-For` entry of a client, made once per client connection.
pub(crate) fn forwarded_for_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::try_from(peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Append the client's address (from `forwarded_for_value`) to `X-Forwarded-For`.
pub(crate) fn add_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    let prior: Vec<&str> = headers
        .get_all(&XFF)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if prior.is_empty() {
        headers.insert(XFF, ip.clone());
        return;
    }
    let value = format!("{}, {}", prior.join(", "), ip.to_str().unwrap_or_default());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(XFF, v);
    }
}

/// One routed request: counted in flight until dropped, then recorded in its version's
/// statistics.
#[derive(Debug)]
pub(crate) struct Tracker {
    routed: Arc<Routed>,
    start: Instant,
    /// The status the client saw; `None` while no response was given (the client gave
    /// up first), and then nothing is recorded.
    pub status: Option<u16>,
}

impl Tracker {
    /// Count a new request in flight; the caller holds the routing table's read lock.
    pub fn start(routed: &Arc<Routed>, start: Instant) -> Self {
        routed.in_flight.fetch_add(1, Ordering::SeqCst);
        Self {
            routed: routed.clone(),
            start,
            status: None,
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(status) = self.status {
            self.routed.recorder.record(status, self.start.elapsed());
        }
        self.routed.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

type Sender = client::SendRequest<Tee>;
type Connection = client::Connection<TokioIo<TcpStream>, Tee>;

/// Idle backend connections one client connection keeps (one per routed backend is the
/// steady state; the cap only bounds oddities).
const MAX_IDLE: usize = 4;

/// The backend connections of one client connection, driven by that connection's own
/// task (see `Upstreams::drive`), so a request and its forwarded copy never wait on a
/// wake-up of another task. Requests on a client connection come one after another,
/// so each backend needs one connection, reused while the backend stays routed.
#[derive(Debug, Default)]
pub(crate) struct Upstreams {
    inner: Mutex<UpstreamsInner>,
}

#[derive(Default)]
struct UpstreamsInner {
    idle: Vec<(SocketAddr, Sender)>,
    connections: Vec<Pin<Box<Connection>>>,
}

impl std::fmt::Debug for UpstreamsInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("idle", &self.idle.len())
            .field("connections", &self.connections.len())
            .finish()
    }
}

impl Upstreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, UpstreamsInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Poll every backend connection (reading responses, writing requests); forget
    /// those that ended. Call it whenever the client connection's task is polled.
    pub fn drive(&self, cx: &mut Context<'_>) {
        self.lock()
            .connections
            .retain_mut(|c| match c.as_mut().poll(cx) {
                Poll::Pending => true,
                Poll::Ready(Ok(())) => false,
                Poll::Ready(Err(e)) => {
                    tracing::debug!("backend connection: {e}");
                    false
                }
            });
    }

    /// A kept connection to `addr`, dropping those to backends no longer in `routed`.
    fn take(&self, addr: SocketAddr, routed: super::route::RoutedAddrs) -> Option<Sender> {
        let mut inner = self.lock();
        inner
            .idle
            .retain(|(a, s)| routed.contains(&Some(*a)) && !s.is_closed());
        let i = inner.idle.iter().position(|(a, _)| *a == addr)?;
        Some(inner.idle.swap_remove(i).1)
    }

    fn put(&self, addr: SocketAddr, sender: Sender) {
        let mut inner = self.lock();
        if inner.idle.len() >= MAX_IDLE {
            inner.idle.remove(0);
        }
        inner.idle.push((addr, sender));
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Sender, BoxError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out")??;
        stream.set_nodelay(true)?;
        let (sender, connection) = client::handshake(TokioIo::new(stream)).await?;
        self.lock().connections.push(Box::pin(connection));
        Ok(sender)
    }

    /// Send `req` to `addr` on a kept connection or a new one. A kept connection the
    /// backend closed meanwhile is replaced, and the request retried on a new one when
    /// it was not sent yet; once sent, a request is never sent twice.
    pub async fn send(
        &self,
        addr: SocketAddr,
        routed: super::route::RoutedAddrs,
        mut req: Request<Tee>,
    ) -> Result<Response<Incoming>, BoxError> {
        if let Some(mut sender) = self.take(addr, routed)
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.put(addr, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = self.dial(addr).await?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        self.put(addr, sender);
        Ok(resp)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of every response the proxy sends.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    /// Streamed from a backend; the tracker ends with the stream.
    Tracked {
        inner: Incoming,
        tracker: Option<Tracker>,
    },
    /// Made by the proxy itself.
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn text(s: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(s.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Tracked { inner, tracker } => {
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => drop(tracker.take()),
                    Poll::Ready(Some(Err(_))) => {
                        // The backend failed mid-body: the client got a broken response.
                        if let Some(mut t) = tracker.take() {
                            t.status = Some(StatusCode::BAD_GATEWAY.as_u16());
                        }
                    }
                    _ => {}
                }
                polled
            }
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Tracked { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Tracked { inner, .. } => inner.size_hint(),
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// A plain-text response made by the proxy.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::text(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        let ip = |a: &str| forwarded_for_value(a.parse().expect("addr"));
        add_forwarded_for(&mut h, &ip("10.0.0.1:5000"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        add_forwarded_for(&mut h, &ip("[::1]:5000"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
    }
}
