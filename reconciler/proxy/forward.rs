//! Forwarding one request: header rewriting, the response body that tracks its request,
//! and the answers the proxy gives itself (502, 503, metrics).
//!
//! Invariant: a request counts as in flight to its backend from the moment it is routed
//! until its response body has been sent in full (or dropped); its statistics are
//! recorded exactly once, at that moment.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use super::stats::Stats;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Append the client's address to `X-Forwarded-For`.
pub(crate) fn add_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    const XFF: &str = "x-forwarded-for";
    let ip = peer.ip().to_string();
    let prior: Vec<&str> = headers
        .get_all(XFF)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        ip
    } else {
        format!("{}, {ip}", prior.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(XFF, v);
    }
}

/// One routed request: counted in flight until dropped, then recorded in `Stats`.
#[derive(Debug)]
pub(crate) struct Tracker {
    pub in_flight: Arc<AtomicUsize>,
    pub version: Arc<str>,
    pub stats: Arc<Stats>,
    pub start: Instant,
    /// The status the client saw; `None` while no response was given (the client gave
    /// up first), and then nothing is recorded.
    pub status: Option<u16>,
}

impl Tracker {
    /// Count a new request in flight; the caller holds the routing table's read lock.
    pub fn start(
        in_flight: &Arc<AtomicUsize>,
        version: &Arc<str>,
        stats: &Arc<Stats>,
        start: Instant,
    ) -> Self {
        in_flight.fetch_add(1, Ordering::SeqCst);
        Self {
            in_flight: in_flight.clone(),
            version: version.clone(),
            stats: stats.clone(),
            start,
            status: None,
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(status) = self.status {
            self.stats
                .record(&self.version, status, self.start.elapsed());
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

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
        add_forwarded_for(&mut h, "10.0.0.1:5000".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        add_forwarded_for(&mut h, "[::1]:5000".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
    }
}
