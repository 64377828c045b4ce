//! Forwarding one request: header rewriting, the response body that tracks its request,
//! and the answers the proxy gives itself (502, 503, metrics).
//!
//! Invariant: a request counts as in flight to its backend from the moment it is routed
//! until its response body has been sent in full (or dropped); its statistics are
//! recorded exactly once, at that moment.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use super::route::Routed;
use super::upstream::UpstreamBody;

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the proxy sends.
#[derive(Debug)]
// Boxing the streamed variant would cost an allocation per proxied request; the
// small one is only the proxy's own answers (502, 503, metrics).
#[allow(clippy::large_enum_variant)]
pub(crate) enum ProxyBody {
    /// Streamed from a backend; the tracker ends with the stream.
    Tracked {
        inner: UpstreamBody,
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
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Tracked { inner, tracker } => {
                let polled = Pin::new(inner).poll_frame(cx).map_err(BoxError::from);
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
