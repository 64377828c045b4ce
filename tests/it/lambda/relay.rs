//! Small HTTP/1.1 relays between an SDK client and moto, one thread per connection,
//! one request per connection (`Connection: close`).
//!
//! - `RevisionShim` gives moto Lambda's optimistic concurrency: a new `RevisionId` per
//!   alias update, and a 412 `PreconditionFailedException` for an update naming an
//!   older one (moto keeps one revision forever and never checks it). It can also play
//!   "another client" that updates the alias just before our next write.
//! - `CborRelay` lets the current CloudWatch SDK talk to moto: the SDK speaks Smithy RPC
//!   v2 CBOR (`POST /service/GraniteServiceVersion20100801/operation/<Op>`), which moto
//!   does not serve, so the relay turns each call into the same call in CloudWatch's
//!   JSON 1.0 protocol (which moto serves) and the answer back into CBOR.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// One HTTP message: the start line, headers and body.
#[derive(Debug, Clone)]
pub struct Http {
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Http {
    fn status(&self) -> u16 {
        self.head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    fn ok(&self) -> bool {
        (200..300).contains(&self.status())
    }
}

fn read_http(r: &mut impl BufRead, until_eof: bool) -> std::io::Result<Http> {
    let mut head = String::new();
    r.read_line(&mut head)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None if until_eof => {
            r.read_to_end(&mut body)?;
        }
        None => {}
    }
    Ok(Http {
        head: head.trim_end().to_owned(),
        headers,
        body,
    })
}

fn write_http(w: &mut impl Write, m: &Http) -> std::io::Result<()> {
    let mut out = format!("{}\r\n", m.head);
    for (k, v) in &m.headers {
        let k_lower = k.to_ascii_lowercase();
        if !["content-length", "connection", "transfer-encoding"].contains(&k_lower.as_str()) {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        m.body.len()
    ));
    w.write_all(out.as_bytes())?;
    w.write_all(&m.body)?;
    w.flush()
}

/// Send `req` to `upstream` (`host:port`) and read its whole answer.
fn forward(upstream: &str, req: &Http) -> std::io::Result<Http> {
    let mut s = TcpStream::connect(upstream)?;
    write_http(&mut s, req)?;
    read_http(&mut BufReader::new(s), true)
}

type Handler = Arc<dyn Fn(Http) -> std::io::Result<Http> + Send + Sync>;

/// Listen on a loopback port; answer each request with `handler`. Returns `http://addr`.
fn listen(handler: Handler) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let handler = handler.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let req = read_http(&mut BufReader::new(conn.try_clone()?), false)?;
                let resp = handler(req)?;
                write_http(&mut &conn, &resp)
            });
        }
    });
    endpoint
}

fn host_port(endpoint: &str) -> String {
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

// ---------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct ShimState {
    /// Revision number per `function/alias`.
    revisions: HashMap<String, u64>,
    /// A competing update to apply just before each of the next client updates.
    race: Option<(Value, u32)>,
    /// Every UpdateAlias body a client sent, and whether it was refused as stale.
    updates: Vec<(Value, bool)>,
}

/// moto with Lambda's `RevisionId` rule, for the aliases' calls.
pub struct RevisionShim {
    pub endpoint: String,
    state: Arc<Mutex<ShimState>>,
}

impl RevisionShim {
    pub fn start(moto: &str) -> Self {
        let state = Arc::new(Mutex::new(ShimState::default()));
        let (st, upstream) = (state.clone(), host_port(moto));
        let endpoint = listen(Arc::new(move |req| revision_checked(req, &upstream, &st)));
        Self { endpoint, state }
    }

    /// Another client updates the alias with `body` before each of our next `times` writes.
    pub fn race(&self, body: Value, times: u32) {
        self.state.lock().expect("shim").race = Some((body, times));
    }

    /// The UpdateAlias bodies clients sent, each with whether it was refused as stale.
    pub fn updates(&self) -> Vec<(Value, bool)> {
        self.state.lock().expect("shim").updates.clone()
    }
}

/// `function/alias` of an alias call: GET/PUT `/2015-03-31/functions/F/aliases/A`, or
/// POST `/2015-03-31/functions/F/aliases` (the name in the body).
fn alias_key(method: &str, path: &str, body: &[u8]) -> Option<String> {
    let rest = path
        .split('?')
        .next()?
        .strip_prefix("/2015-03-31/functions/")?;
    let (function, tail) = rest.split_once("/aliases")?;
    match (method, tail.strip_prefix('/')) {
        ("GET" | "PUT", Some(alias)) if !alias.is_empty() => Some(format!("{function}/{alias}")),
        ("POST", None) if tail.is_empty() => {
            let v: Value = serde_json::from_slice(body).ok()?;
            Some(format!("{function}/{}", v["Name"].as_str()?))
        }
        _ => None,
    }
}

fn with_revision(mut resp: Http, rev: u64) -> Http {
    if let Ok(mut v) = serde_json::from_slice::<Value>(&resp.body) {
        v["RevisionId"] = json!(format!("rev-{rev}"));
        resp.body = serde_json::to_vec(&v).expect("json");
    }
    resp
}

fn revision_checked(req: Http, upstream: &str, st: &Mutex<ShimState>) -> std::io::Result<Http> {
    let mut parts = req.head.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let Some(key) = alias_key(&method, &path, &req.body) else {
        return forward(upstream, &req);
    };
    // One alias call at a time, as Lambda serialises the updates of one alias.
    let mut s = st.lock().expect("shim");
    if method == "PUT" {
        if let Some((body, times)) = s.race.take() {
            let competing = Http {
                body: serde_json::to_vec(&body).expect("json"),
                ..req.clone()
            };
            if forward(upstream, &competing)?.ok() {
                *s.revisions.entry(key.clone()).or_default() += 1;
            }
            if times > 1 {
                s.race = Some((body, times - 1));
            }
        }
        let sent: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let current = format!("rev-{}", s.revisions.get(&key).copied().unwrap_or(0));
        let stale = sent
            .get("RevisionId")
            .and_then(Value::as_str)
            .is_some_and(|r| r != current);
        s.updates.push((sent, stale));
        if stale {
            return Ok(Http {
                head: "HTTP/1.1 412 Precondition Failed".to_owned(),
                headers: vec![
                    ("Content-Type".to_owned(), "application/json".to_owned()),
                    (
                        "x-amzn-ErrorType".to_owned(),
                        "PreconditionFailedException".to_owned(),
                    ),
                    ("x-amzn-RequestId".to_owned(), "shim".to_owned()),
                ],
                body: json!({
                    "Type": "User",
                    "message": "The Revision Id provided does not match the latest Revision Id. \
                                Call the GetAlias API to retrieve the latest Revision Id"
                })
                .to_string()
                .into_bytes(),
            });
        }
    }
    let resp = forward(upstream, &req)?;
    if !resp.ok() {
        return Ok(resp);
    }
    if method == "PUT" {
        *s.revisions.entry(key.clone()).or_default() += 1;
    }
    let rev = s.revisions.get(&key).copied().unwrap_or(0);
    Ok(with_revision(resp, rev))
}

// ---------------------------------------------------------------------------------

/// CloudWatch in Smithy RPC v2 CBOR on the outside, moto's JSON 1.0 on the inside.
pub struct CborRelay {
    pub endpoint: String,
}

const CBOR_PREFIX: &str = "/service/GraniteServiceVersion20100801/operation/";

impl CborRelay {
    pub fn start(moto: &str) -> Self {
        let upstream = host_port(moto);
        Self {
            endpoint: listen(Arc::new(move |req| cbor_to_json(req, &upstream))),
        }
    }
}

fn cbor_to_json(req: Http, upstream: &str) -> std::io::Result<Http> {
    let path = req.head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let Some(op) = path.strip_prefix(CBOR_PREFIX) else {
        return forward(upstream, &req);
    };
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let input = if req.body.is_empty() {
        json!({})
    } else {
        cbor::decode(&req.body).map_err(bad)?
    };
    // moto finds the service and region in the credential scope of the signature.
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k == "host" || k == "authorization" || k.starts_with("x-amz-date")
        })
        .cloned()
        .collect();
    headers.push((
        "Content-Type".to_owned(),
        "application/x-amz-json-1.0".to_owned(),
    ));
    headers.push((
        "X-Amz-Target".to_owned(),
        format!("GraniteServiceVersion20100801.{op}"),
    ));
    let resp = forward(
        upstream,
        &Http {
            head: "POST / HTTP/1.1".to_owned(),
            headers,
            body: serde_json::to_vec(&input).expect("json"),
        },
    )?;
    let status = resp.status();
    let output = serde_json::from_slice::<Value>(&resp.body).unwrap_or_else(|_| {
        json!({ "__type": "InternalFailure", "message": format!("moto answered {status} without JSON") })
    });
    let mut body = Vec::new();
    cbor::encode(&output, false, &mut body);
    Ok(Http {
        head: format!("HTTP/1.1 {status} Relayed"),
        headers: vec![
            ("Content-Type".to_owned(), "application/cbor".to_owned()),
            ("smithy-protocol".to_owned(), "rpc-v2-cbor".to_owned()),
            ("x-amzn-RequestId".to_owned(), "relay".to_owned()),
        ],
        body,
    })
}

/// Just enough CBOR (RFC 8949) for CloudWatch's shapes, to and from JSON values.
pub mod cbor {
    use serde_json::{Map, Number, Value};

    struct Reader<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], String> {
            let s = self
                .b
                .get(self.i..self.i + n)
                .ok_or("cbor: unexpected end")?;
            self.i += n;
            Ok(s)
        }

        fn uint(&mut self, info: u8) -> Result<Option<u64>, String> {
            let be = |s: &[u8]| s.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
            Ok(Some(match info {
                0..=23 => u64::from(info),
                24 => be(self.take(1)?),
                25 => be(self.take(2)?),
                26 => be(self.take(4)?),
                27 => be(self.take(8)?),
                31 => return Ok(None),
                _ => return Err(format!("cbor: bad additional info {info}")),
            }))
        }

        /// One item; `None` for a break (the end of an indefinite item).
        fn item(&mut self) -> Result<Option<Value>, String> {
            let ib = self.take(1)?[0];
            let (major, info) = (ib >> 5, ib & 0x1f);
            if major == 7 {
                let float = |bits: &[u8]| {
                    let mut a = [0u8; 8];
                    a[8 - bits.len()..].copy_from_slice(bits);
                    u64::from_be_bytes(a)
                };
                let x = match info {
                    20 => return Ok(Some(Value::Bool(false))),
                    21 => return Ok(Some(Value::Bool(true))),
                    22 | 23 => return Ok(Some(Value::Null)),
                    25 => half(float(self.take(2)?) as u16),
                    26 => f64::from(f32::from_bits(float(self.take(4)?) as u32)),
                    27 => f64::from_bits(float(self.take(8)?)),
                    31 => return Ok(None),
                    _ => return Err(format!("cbor: simple value {info}")),
                };
                return Ok(Some(Number::from_f64(x).map_or(Value::Null, Value::Number)));
            }
            let n = self.uint(info)?;
            Ok(Some(match (major, n) {
                (0, Some(n)) => Value::from(n),
                (1, Some(n)) => Value::from(-1 - i64::try_from(n).map_err(|e| e.to_string())?),
                (2 | 3, Some(n)) => {
                    let len = usize::try_from(n).map_err(|e| e.to_string())?;
                    Value::String(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                (2 | 3, None) => {
                    let mut s = String::new();
                    while let Some(chunk) = self.item()? {
                        s.push_str(chunk.as_str().ok_or("cbor: bad string chunk")?);
                    }
                    Value::String(s)
                }
                (4, n) => {
                    let mut v = Vec::new();
                    while n.is_none_or(|n| (v.len() as u64) < n) {
                        match self.item()? {
                            Some(x) => v.push(x),
                            None if n.is_none() => break,
                            None => return Err("cbor: break in a definite array".to_owned()),
                        }
                    }
                    Value::Array(v)
                }
                (5, n) => {
                    let mut m = Map::new();
                    while n.is_none_or(|n| (m.len() as u64) < n) {
                        let Some(k) = self.item()? else { break };
                        let k = k
                            .as_str()
                            .ok_or("cbor: a map key is not a string")?
                            .to_owned();
                        let v = self.item()?.ok_or("cbor: a key without a value")?;
                        m.insert(k, v);
                    }
                    Value::Object(m)
                }
                // Tags (1: epoch-seconds timestamps) carry their value as is.
                (6, Some(_)) => self.item()?.ok_or("cbor: a tag without a value")?,
                _ => return Err(format!("cbor: unexpected major type {major}")),
            }))
        }
    }

    fn half(h: u16) -> f64 {
        let (sign, exp, frac) = (h >> 15, (h >> 10) & 0x1f, f64::from(h & 0x3ff));
        let v = match exp {
            0 => frac * 2f64.powi(-24),
            31 if frac == 0.0 => f64::INFINITY,
            31 => f64::NAN,
            e => (1.0 + frac / 1024.0) * 2f64.powi(i32::from(e) - 15),
        };
        if sign == 1 { -v } else { v }
    }

    pub fn decode(bytes: &[u8]) -> Result<Value, String> {
        let mut r = Reader { b: bytes, i: 0 };
        let v = r.item()?.ok_or("cbor: a lone break")?;
        if r.i != bytes.len() {
            return Err("cbor: trailing bytes".to_owned());
        }
        Ok(v)
    }

    fn head(out: &mut Vec<u8>, major: u8, n: usize) {
        let n = n as u64;
        match n {
            0..=23 => out.push((major << 5) | n as u8),
            24..=0xff => out.extend([(major << 5) | 24, n as u8]),
            0x100..=0xffff => {
                out.push((major << 5) | 25);
                out.extend((n as u16).to_be_bytes());
            }
            _ => {
                out.push((major << 5) | 27);
                out.extend(n.to_be_bytes());
            }
        }
    }

    /// Numbers become doubles; under a `...Timestamp(s)`/`...Time` key, tag-1 timestamps.
    pub fn encode(v: &Value, timestamp: bool, out: &mut Vec<u8>) {
        match v {
            Value::Null => out.push(0xf6),
            Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
            Value::Number(n) => {
                if timestamp {
                    out.push(0xc1);
                }
                out.push(0xfb);
                out.extend(n.as_f64().unwrap_or(f64::NAN).to_be_bytes());
            }
            Value::String(s) => {
                head(out, 3, s.len());
                out.extend(s.as_bytes());
            }
            Value::Array(a) => {
                head(out, 4, a.len());
                for x in a {
                    encode(x, timestamp, out);
                }
            }
            Value::Object(m) => {
                head(out, 5, m.len());
                for (k, x) in m {
                    head(out, 3, k.len());
                    out.extend(k.as_bytes());
                    let ts = k.ends_with("Timestamps")
                        || k.ends_with("Timestamp")
                        || k.ends_with("Time");
                    encode(x, ts, out);
                }
            }
        }
    }

    #[test]
    fn round_trips() {
        let v = serde_json::json!({ "A": [1.5, "x", true, null], "Timestamps": [1.0e9] });
        let mut out = Vec::new();
        encode(&v, false, &mut out);
        assert_eq!(decode(&out), Ok(v));
        // An indefinite map of an indefinite text and a half float.
        assert_eq!(
            decode(&[0xbf, 0x7f, 0x61, b'k', 0xff, 0xf9, 0x3c, 0x00, 0xff]),
            Ok(serde_json::json!({ "k": 1.0 }))
        );
    }
}
