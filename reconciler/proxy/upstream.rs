//! The proxy's own HTTP/1.1 client to its backends (#21): a request written straight
//! onto a kept-alive backend connection and its response read back, in the task of the
//! client connection that asked, with no connection pool, channel or second task in
//! between (hyper's client hands every request to the connection's own future over a
//! channel: measured at ~22% of the proxy's CPU).
//!
//! ```text
//!  client conn task ─ send ─▶ Upstreams::take (a kept connection to that backend, checked open)
//!                             or dial ─▶ write head + body (Content-Length or chunked)
//!                     ◀─ head ─ read and parse (interim 1xx skipped)
//!  response body ◀─ UpstreamBody: reads by the response's framing, keeps writing a
//!                   request body the backend answered early; at its end the
//!                   connection goes back to Upstreams if it can carry another request
//! ```
//! Invariants: a connection carries one request at a time and goes back to the idle
//! list only after its response ended exactly at its framing, with the request written
//! whole, and neither side asked to close; anything else (an error, a body dropped
//! half-read, a response read to the connection's end) closes it. A request is written
//! at most once: a kept connection found closed is replaced *before* anything is
//! written, never retried after.
//! Response parsing is strict, since a lenient reading is how requests get smuggled: a
//! head over `MAX_HEAD` bytes or `MAX_HEADERS` lines, a malformed line or obsolete line
//! folding, both `Content-Length` and `Transfer-Encoding`, a `Content-Length` that is not
//! one decimal number (or several that differ), a `101` switch, and chunked framing that
//! is not exactly `HEX[;ext]CRLF data CRLF` (size line at most `MAX_CHUNK_LINE`, no
//! overflow, trailers within `MAX_HEAD`) are errors: the client gets 502 (or, once the
//! head was forwarded, a cut connection) and the backend connection is closed.
//! One job over 600 lines, kept in one file: one HTTP/1.1 exchange with a backend
//! (writing the request, parsing and framing the answer, keeping the connection).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::route::RoutedAddrs;
use super::shadow::Tee;

/// The largest response head (status line and headers), and the most trailer bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header lines in a response head.
pub const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (size and extensions).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Idle backend connections one client connection keeps (one per routed backend is the
/// steady state; the cap only bounds oddities).
const MAX_IDLE: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first read of a connection, and the most one read asks for.
const FIRST_READ: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Request body bytes gathered before they are written (so a small body leaves with
/// its head in one write).
const WRITE_GATHER: usize = 16 * 1024;

/// Why a backend exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("backend i/o: {0}")]
    Io(#[from] io::Error),
    #[error("backend closed the connection before the response ended")]
    Closed,
    #[error("response head over {MAX_HEAD} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    BadHead(String),
    #[error("response with both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    #[error("invalid Content-Length")]
    BadLength,
    #[error("bad chunked framing: {0}")]
    BadChunk(&'static str),
    #[error("client request body: {0}")]
    RequestBody(hyper::Error),
}

/// One connection to a backend, with what was read from it and not used yet.
struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    rbuf: BytesMut,
    /// How much the next read asks for.
    window: usize,
}

impl Conn {
    async fn dial(addr: SocketAddr) -> Result<Conn, UpstreamError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
        Ok(Conn {
            addr,
            stream,
            rbuf: BytesMut::with_capacity(FIRST_READ),
            window: FIRST_READ,
        })
    }

    /// Whether an idle connection can carry a request: the backend has neither closed
    /// it nor sent anything unasked. A syscall only when the socket reported readiness
    /// since the last read (`poll_fill` leaves none after a read that drained it).
    fn still_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Read more into `rbuf`; `Ok(0)` at the connection's end. Through `AsyncRead`,
    /// which takes a read that did not fill its buffer as the socket drained (no
    /// `EAGAIN` read before the next wait), into `rbuf`'s spare room as it is (not zeroed
    /// first: that was 2% of the proxy's CPU), at most `window` bytes (small while
    /// answers are small, grown while reads fill it).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(self.window);
        let mut room = (&mut self.rbuf).limit(self.window);
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut room
        ))?;
        if n == self.window {
            self.window = (self.window * 4).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.addr)
            .field("buffered", &self.rbuf.len())
            .finish_non_exhaustive()
    }
}

/// The idle backend connections of one client connection. Requests on a client
/// connection come one after another, so each backend needs one connection, reused
/// while the backend stays routed.
#[derive(Debug, Default)]
pub(crate) struct Upstreams {
    idle: Mutex<Vec<Conn>>,
}

impl Upstreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A kept connection to `addr` still open, dropping those to backends no longer in
    /// `routed`, and those found closed.
    fn take(&self, addr: SocketAddr, routed: RoutedAddrs) -> Option<Conn> {
        let mut idle = self.lock();
        idle.retain(|c| routed.contains(&Some(c.addr)));
        while let Some(i) = idle.iter().position(|c| c.addr == addr) {
            let mut conn = idle.swap_remove(i);
            if conn.still_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(conn);
    }
}

/// Send one request (head as forwarded, origin-form target) to `addr` on a kept
/// connection or a new one, and read the response head. The body streams from the
/// returned response; the connection goes back to `home` when it ends well.
pub(crate) async fn send(
    home: &Arc<Upstreams>,
    addr: SocketAddr,
    routed: RoutedAddrs,
    parts: &Parts,
    body: Tee,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let conn = match home.take(addr, routed) {
        Some(conn) => conn,
        None => Conn::dial(addr).await?,
    };
    exchange(conn, Outgoing::new(parts, body), home.clone()).await
}

/// Write `out` on `conn` and read the response head, writing the rest of the request
/// body along as the response streams.
async fn exchange(
    mut conn: Conn,
    out: Outgoing,
    home: Arc<Upstreams>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let no_body = out.head_request;
    let mut out = Some(out);
    let mut write_failed: Option<io::Error> = None;
    let head = std::future::poll_fn(|cx| {
        if let Some(o) = out.as_mut() {
            match o.poll_send(&mut conn.stream, cx) {
                Poll::Ready(Ok(())) => out = None,
                Poll::Ready(Err(UpstreamError::Io(e))) => {
                    // The backend may have answered before it stopped reading: read on.
                    write_failed = Some(e);
                    out = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        loop {
            if let Some(head) = take_head(&mut conn.rbuf, no_body)? {
                return Poll::Ready(Ok(head));
            }
            if ready!(conn.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(write_failed
                    .take()
                    .map_or(UpstreamError::Closed, UpstreamError::Io)));
            }
        }
    })
    .await?;
    let reusable = head.keep_alive && write_failed.is_none();
    let mut body = UpstreamBody {
        conn: Some(conn),
        out,
        framing: head.framing,
        reusable,
        home: Some(home),
    };
    if matches!(body.framing, Framing::Done) {
        body.finish();
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// A request on its way out: the encoded head and body bytes not written yet, and the
/// client's body still to come.
struct Outgoing {
    buf: Vec<u8>,
    pos: usize,
    body: Option<Tee>,
    chunked: bool,
    head_request: bool,
}

impl Outgoing {
    /// Encode the head: request line, the headers as forwarded except any framing
    /// header, and the framing of `body` (its exact length, else chunked).
    fn new(parts: &Parts, body: Tee) -> Self {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(parts.method.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(target.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        let mut had_length = false;
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                had_length = true;
                continue;
            }
            if name == header::TRANSFER_ENCODING {
                continue;
            }
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        let chunked = match body.size_hint().exact() {
            Some(n) => {
                let bodiless = matches!(
                    parts.method,
                    Method::GET
                        | Method::HEAD
                        | Method::DELETE
                        | Method::OPTIONS
                        | Method::TRACE
                        | Method::CONNECT
                );
                if n > 0 || had_length || !bodiless {
                    buf.extend_from_slice(b"content-length: ");
                    buf.extend_from_slice(n.to_string().as_bytes());
                    buf.extend_from_slice(b"\r\n");
                }
                false
            }
            None => {
                buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                true
            }
        };
        buf.extend_from_slice(b"\r\n");
        Self {
            buf,
            pos: 0,
            body: Some(body),
            chunked,
            head_request: parts.method == Method::HEAD,
        }
    }

    /// Write what is encoded and what the body has, until the body's end is written.
    fn poll_send(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            let mut body_pending = false;
            while let Some(body) = self.body.as_mut()
                && self.buf.len() - self.pos < WRITE_GATHER
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers of a chunked request are not forwarded.
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            if self.chunked {
                                self.buf
                                    .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                                self.buf.extend_from_slice(&data);
                                self.buf.extend_from_slice(b"\r\n");
                            } else {
                                self.buf.extend_from_slice(&data);
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.body = None;
                        return Poll::Ready(Err(UpstreamError::RequestBody(e)));
                    }
                    Poll::Ready(None) => {
                        if self.chunked {
                            self.buf.extend_from_slice(b"0\r\n\r\n");
                        }
                        self.body = None;
                    }
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                }
            }
            if self.pos < self.buf.len() {
                let n = ready!(Pin::new(&mut *stream).poll_write(cx, &self.buf[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.pos += n;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                continue;
            }
            if self.body.is_none() {
                return Poll::Ready(Ok(()));
            }
            if body_pending {
                return Poll::Pending;
            }
        }
    }
}

/// How the rest of a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// So many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line next.
    Size,
    /// So many bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines until an empty one; so many trailer bytes seen.
    Trailers(usize),
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Where a header's name and value lie in a response head: (name at, its length, value
/// at, its length).
type Span = (usize, usize, usize, usize);

/// Headers of a response head parsed with a small table first: almost every answer has
/// fewer, and the table is filled in before each parse (`MAX_HEADERS` entries were 2% of
/// the proxy's CPU, with the spans zeroed alike). A head with more is parsed again with
/// the whole table.
const FEW_HEADERS: usize = 24;

/// What [`parse_head`] found: the head's length, status code and HTTP minor version,
/// the headers' places in `spans`.
type Parsed = (usize, u16, u8);

/// Parse the response head at the start of `buf` with room for `lines.len()` headers,
/// their places in `spans` (as long as `lines`); `None` while it is incomplete.
fn parse_head<'b>(
    buf: &'b [u8],
    lines: &mut [httparse::Header<'b>],
    spans: &mut [Span],
) -> Result<Option<(Parsed, usize)>, httparse::Error> {
    let mut resp = httparse::Response::new(lines);
    let base = buf.as_ptr() as usize;
    let len = match resp.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        *span = (
            h.name.as_ptr() as usize - base,
            h.name.len(),
            h.value.as_ptr() as usize - base,
            h.value.len(),
        );
    }
    let parsed = (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1));
    Ok(Some((parsed, resp.headers.len())))
}

/// Parse a response head at the start of `rbuf` and take it out; `None` while it is
/// incomplete. Interim (1xx) responses are dropped. `no_body`: the request was HEAD.
fn take_head(rbuf: &mut BytesMut, no_body: bool) -> Result<Option<Head>, UpstreamError> {
    // Only the first `count` entries are ever read: written by `parse_head` first.
    let mut few = [(0usize, 0usize, 0usize, 0usize); FEW_HEADERS];
    let mut many = Vec::new();
    loop {
        let mut spans = &mut few[..];
        let parsed = match parse_head(rbuf, &mut [httparse::EMPTY_HEADER; FEW_HEADERS], spans) {
            Err(httparse::Error::TooManyHeaders) => {
                many.resize(MAX_HEADERS, (0, 0, 0, 0));
                spans = &mut many[..];
                parse_head(rbuf, &mut [httparse::EMPTY_HEADER; MAX_HEADERS], spans)
            }
            other => other,
        };
        let ((len, code, minor), count) = match parsed {
            Ok(Some(parsed)) => parsed,
            Ok(None) if rbuf.len() > MAX_HEAD => return Err(UpstreamError::HeadTooLarge),
            Ok(None) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(UpstreamError::HeadTooLarge),
            Err(e) => return Err(UpstreamError::BadHead(e.to_string())),
        };
        if len > MAX_HEAD {
            return Err(UpstreamError::HeadTooLarge);
        }
        let raw = rbuf.split_to(len).freeze();
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamError::BadHead(format!("status {code}")))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::BadHead(
                "101: upgrades are not supported".into(),
            ));
        }
        if status.is_informational() {
            continue; // 100 Continue and the like: the final answer follows
        }
        let mut headers = HeaderMap::with_capacity(count);
        let (mut length, mut chunked, mut encoded) = (None::<u64>, false, false);
        let mut keep_alive = minor == 1;
        for &(n, nl, v, vl) in &spans[..count] {
            let name = HeaderName::from_bytes(&raw[n..n + nl])
                .map_err(|_| UpstreamError::BadHead("header name".into()))?;
            let value = HeaderValue::from_maybe_shared(raw.slice(v..v + vl))
                .map_err(|_| UpstreamError::BadHead("header value".into()))?;
            if name == header::CONTENT_LENGTH {
                let n = parse_length(value.as_bytes())?;
                if length.is_some_and(|prev| prev != n) {
                    return Err(UpstreamError::BadLength);
                }
                length = Some(n);
            } else if name == header::TRANSFER_ENCODING {
                encoded = true;
                // Only the last coding says how the message ends.
                chunked = value
                    .as_bytes()
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name == header::CONNECTION {
                for token in value.as_bytes().split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    }
                }
            }
            headers.append(name, value);
        }
        if encoded && length.is_some() {
            return Err(UpstreamError::LengthAndEncoding);
        }
        let framing =
            if no_body || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                Framing::Done
            } else if encoded && chunked {
                Framing::Chunked(Chunk::Size)
            } else if encoded {
                Framing::UntilClose
            } else {
                match length {
                    Some(0) => Framing::Done,
                    Some(n) => Framing::Length(n),
                    None => Framing::UntilClose,
                }
            };
        if framing == Framing::UntilClose {
            keep_alive = false;
        }
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// A Content-Length value: one decimal number, nothing else.
fn parse_length(v: &[u8]) -> Result<u64, UpstreamError> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(UpstreamError::BadLength);
    }
    v.iter()
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(UpstreamError::BadLength)
}

/// The position of the first CRLF in `buf`.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A chunk-size line (without its CRLF): hex digits, then optional whitespace and
/// `;`-extensions, which are ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, UpstreamError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(UpstreamError::BadChunk("no chunk size"));
    }
    if digits > 15 {
        return Err(UpstreamError::BadChunk("chunk size too large"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(UpstreamError::BadChunk("junk after the chunk size"));
    }
    let text =
        std::str::from_utf8(&line[..digits]).map_err(|_| UpstreamError::BadChunk("chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| UpstreamError::BadChunk("chunk size"))
}

/// A response body read from the backend connection by its framing.
pub(crate) struct UpstreamBody {
    /// Held while the body streams; `None` once ended (back in `home` or closed).
    conn: Option<Conn>,
    /// A request body still being written (the backend answered before its end).
    out: Option<Outgoing>,
    framing: Framing,
    reusable: bool,
    home: Option<Arc<Upstreams>>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("conn", &self.conn)
            .field("framing", &self.framing)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// The response ended at its framing: the connection goes back idle when it can
    /// carry another request, else it is closed.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let conn = self.conn.take();
        let home = self.home.take();
        if let (Some(conn), Some(home)) = (conn, home)
            && self.reusable
            && self.out.is_none()
            && conn.rbuf.is_empty()
        {
            home.put(conn);
        }
        // A request body still unwritten is abandoned with its connection.
        self.out = None;
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.framing = Framing::Done;
        self.conn = None;
        self.out = None;
        Poll::Ready(Some(Err(e)))
    }

    /// The next data of the body, by its framing.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, UpstreamError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        loop {
            match self.framing {
                Framing::Done => return Poll::Ready(Ok(None)),
                Framing::Length(rest) => {
                    if !conn.rbuf.is_empty() {
                        let n = usize::try_from(rest)
                            .unwrap_or(usize::MAX)
                            .min(conn.rbuf.len());
                        let data = conn.rbuf.split_to(n).freeze();
                        self.framing = match rest - n as u64 {
                            0 => Framing::Done,
                            left => Framing::Length(left),
                        };
                        return Poll::Ready(Ok(Some(data)));
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(UpstreamError::Closed));
                    }
                }
                Framing::UntilClose => {
                    if !conn.rbuf.is_empty() {
                        return Poll::Ready(Ok(Some(conn.rbuf.split().freeze())));
                    }
                    if ready!(conn.poll_fill(cx))? == 0 {
                        self.reusable = false;
                        self.framing = Framing::Done;
                    }
                }
                Framing::Chunked(state) => {
                    let buf = &mut conn.rbuf;
                    let progressed = match state {
                        Chunk::Size => match line_end(buf) {
                            Some(end) if end > MAX_CHUNK_LINE => {
                                return Poll::Ready(Err(UpstreamError::BadChunk(
                                    "chunk-size line too long",
                                )));
                            }
                            Some(end) => {
                                let size = parse_chunk_size(&buf[..end])?;
                                let _ = buf.split_to(end + 2);
                                self.framing = Framing::Chunked(if size == 0 {
                                    Chunk::Trailers(0)
                                } else {
                                    Chunk::Data(size)
                                });
                                true
                            }
                            None if buf.len() > MAX_CHUNK_LINE => {
                                return Poll::Ready(Err(UpstreamError::BadChunk(
                                    "chunk-size line too long",
                                )));
                            }
                            None => false,
                        },
                        Chunk::Data(rest) => {
                            if buf.is_empty() {
                                false
                            } else {
                                let n = usize::try_from(rest).unwrap_or(usize::MAX).min(buf.len());
                                let data = buf.split_to(n).freeze();
                                self.framing = Framing::Chunked(match rest - n as u64 {
                                    0 => Chunk::DataEnd,
                                    left => Chunk::Data(left),
                                });
                                return Poll::Ready(Ok(Some(data)));
                            }
                        }
                        Chunk::DataEnd => {
                            if buf.len() < 2 {
                                false
                            } else if &buf[..2] == b"\r\n" {
                                let _ = buf.split_to(2);
                                self.framing = Framing::Chunked(Chunk::Size);
                                true
                            } else {
                                return Poll::Ready(Err(UpstreamError::BadChunk(
                                    "no CRLF after a chunk",
                                )));
                            }
                        }
                        Chunk::Trailers(seen) => match line_end(buf) {
                            Some(0) => {
                                let _ = buf.split_to(2);
                                self.framing = Framing::Done;
                                true
                            }
                            Some(end) if seen + end + 2 <= MAX_HEAD => {
                                let _ = buf.split_to(end + 2);
                                self.framing = Framing::Chunked(Chunk::Trailers(seen + end + 2));
                                true
                            }
                            Some(_) => return Poll::Ready(Err(UpstreamError::HeadTooLarge)),
                            None if seen + buf.len() > MAX_HEAD => {
                                return Poll::Ready(Err(UpstreamError::HeadTooLarge));
                            }
                            None => false,
                        },
                    };
                    if !progressed && ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(UpstreamError::Closed));
                    }
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        // A request body the backend answered before its end is still written along.
        if let (Some(out), Some(conn)) = (this.out.as_mut(), this.conn.as_mut()) {
            match out.poll_send(&mut conn.stream, cx) {
                Poll::Ready(Ok(())) => this.out = None,
                Poll::Ready(Err(e)) => {
                    tracing::debug!("request body after the response head: {e}");
                    this.out = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        match this.poll_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => this.fail(e),
            Poll::Ready(Ok(data)) => {
                if this.framing == Framing::Done && this.conn.is_some() {
                    this.finish();
                }
                Poll::Ready(data.map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
