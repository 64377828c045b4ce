//! The `web` metrics source: one HTTP request to a JSON API per measurement, the
//! reading picked out of the answer by a small JSONPath (`$.data.ratio`, `$.a[0]['b c']`).
//!
//! The URL's path and query (and a `POST` body) take `{{plan}}`, `{{version}}`,
//! `{{baseline}}` (empty without one), `{{window}}` (the analysis so far, e.g. `60s`) and
//! `{{query}}` (the check's query); in the URL they are URL-encoded, in the body filled
//! in as they are. The reading is a number, or a boolean as 1/0; `null` is no data (no
//! value, no samples). Samples: the number at `samplesPath` when the source has one,
//! else 1 (one reading). A non-2xx answer, a timeout, a body that is not JSON, a missing
//! path or any other type is an error, never a value.
//! Invariants: the host and port are the settings' (placeholders never reach the
//! authority); header values are read from the environment at call time, sent only to
//! a loopback address (this build speaks plain http only), and never logged or put
//! into an error; one deadline covers connecting, sending and reading; answers are
//! size-capped.
//!
//! One job over 600 lines, kept in one file: the `web` source: URL, templates, the
//! JSONPath subset, one HTTP exchange; about a third is unit tests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{MetricsSource, QueryContext};
use crate::engine::Measurement;
use crate::metrics::prometheus::is_loopback_host;
use crate::model::plan::Check;
use crate::model::settings::WebMethod;

const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// Headers rollgate writes itself; a setting may not replace them.
const OWN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
];

/// A JSON API, as a `web` entry of `rollgate.yaml` describes it.
#[derive(Debug, Clone)]
pub struct Web {
    endpoint: Endpoint,
    method: WebMethod,
    body: Option<String>,
    /// Header name → environment variable name.
    headers: Vec<(String, String)>,
    timeout: Duration,
    value: JsonPath,
    samples: Option<JsonPath>,
}

impl Web {
    /// Build a source; sends nothing. `https://` is refused (no TLS client in this
    /// build), as are a bad path, a bad header and a header to a host off this machine.
    pub fn new(
        url: &str,
        method: WebMethod,
        body: Option<&str>,
        headers: &BTreeMap<String, String>,
        timeout: Duration,
        json_path: &str,
        samples_path: Option<&str>,
    ) -> Result<Self, String> {
        let endpoint = Endpoint::parse(url)?;
        if endpoint.https {
            return Err(format!(
                "only http:// web sources are supported in this build, not `{url}`"
            ));
        }
        for (name, var) in headers {
            if let Some(problem) = header_problem(name, var) {
                return Err(problem);
            }
        }
        if !headers.is_empty() && !is_loopback_host(&endpoint.host) {
            return Err(format!(
                "the headers of a web source go over plain http only to loopback, not to `{}`",
                endpoint.host
            ));
        }
        Ok(Self {
            endpoint,
            method,
            body: body.map(str::to_owned),
            headers: headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            timeout,
            value: JsonPath::parse(json_path)?,
            samples: samples_path.map(JsonPath::parse).transpose()?,
        })
    }

    /// One request: the JSON answer of a 2xx.
    fn fetch(&self, target: &str, body: Option<&str>) -> Result<Value, String> {
        let deadline = Instant::now() + self.timeout;
        let (host, port) = (self.endpoint.dial_host(), self.endpoint.port);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {host}"))?;
        // Checked again on the address about to be dialled: a name that resolves
        // elsewhere never receives a credential.
        if !self.headers.is_empty() && !addr.ip().is_loopback() {
            return Err(format!(
                "{host} resolved to {addr}, not a loopback address: the headers are not sent there"
            ));
        }
        let mut s = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|e| format!("web source at {addr} unreachable: {e}"))?;
        let mut req = format!(
            "{} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.method.as_str(),
            self.endpoint.authority()
        );
        for (name, var) in &self.headers {
            let value = std::env::var(var)
                .map_err(|_| format!("header {name}: the variable {var} is not set"))?;
            if value.contains(['\r', '\n']) {
                return Err(format!(
                    "header {name}: the value of {var} spans lines and is not sent"
                ));
            }
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        } else if self.method == WebMethod::Post {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        let left = |what: &str| {
            let d = deadline.saturating_duration_since(Instant::now());
            if d.is_zero() {
                Err(format!(
                    "web source {what}: timed out after {:?}",
                    self.timeout
                ))
            } else {
                Ok(d)
            }
        };
        s.set_write_timeout(Some(left("write")?))
            .map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes())
            .map_err(|e| format!("web source write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            s.set_read_timeout(Some(left("read")?))
                .map_err(|e| e.to_string())?;
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > MAX_RESPONSE {
                        return Err(format!(
                            "web source answered more than {MAX_RESPONSE} bytes"
                        ));
                    }
                    if complete(&buf) {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!(
                        "web source read: timed out after {:?}",
                        self.timeout
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("web source read: {e}")),
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("web source sent no HTTP body")?;
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("web source sent no HTTP status")?;
        if !(200..300).contains(&code) {
            return Err(format!("web source answered {code}"));
        }
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            super::prometheus::dechunk(body)
        } else {
            body.to_owned()
        };
        serde_json::from_str(&body)
            .map_err(|_| format!("web source answered {code} with a body that is not JSON"))
    }
}

/// Has the whole answer arrived (its `Content-Length` read)? Otherwise read to the end.
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| buf.len() >= end + 4 + n)
}

impl MetricsSource for Web {
    fn measure(&mut self, check: &Check, ctx: &QueryContext<'_>) -> Result<Measurement, String> {
        let target = fill(&self.endpoint.target, ctx, &check.query, encode);
        let body = self
            .body
            .as_deref()
            .map(|b| fill(b, ctx, &check.query, str::to_owned));
        let json = self.fetch(&target, body.as_deref())?;
        let Some(value) = reading(&json, &self.value)? else {
            return Ok(Measurement {
                value: None,
                samples: 0,
            });
        };
        let samples = match &self.samples {
            None => 1,
            Some(path) => count(&json, path)?,
        };
        Ok(Measurement {
            value: Some(value),
            samples,
        })
    }
}

/// The reading at `path`: a finite number, a boolean as 1/0, `null` as no data.
pub fn reading(json: &Value, path: &JsonPath) -> Result<Option<f64>, String> {
    match path.get(json) {
        None => Err(format!("the answer has nothing at {path}")),
        Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(if *b { 1.0 } else { 0.0 })),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(format!("the number at {path} is not a finite number")),
        },
        Some(other) => Err(format!(
            "the answer at {path} is {}, not a number",
            type_name(other)
        )),
    }
}

/// The count at `path`: a number of events, at least 0, rounded.
fn count(json: &Value, path: &JsonPath) -> Result<u64, String> {
    match path.get(json) {
        None => Err(format!("the answer has no sample count at {path}")),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && v >= 0.0 => Ok(v.round() as u64),
            _ => Err(format!("the sample count at {path} is not a count")),
        },
        Some(other) => Err(format!(
            "the sample count at {path} is {}, not a number",
            type_name(other)
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Fill the placeholders of `template`, each value passed through `escape`.
pub fn fill(
    template: &str,
    ctx: &QueryContext<'_>,
    query: &str,
    escape: impl Fn(&str) -> String,
) -> String {
    let window = format!("{}s", ctx.window.as_secs().max(1));
    template
        .replace("{{plan}}", &escape(ctx.plan))
        .replace("{{version}}", &escape(ctx.version))
        .replace("{{baseline}}", &escape(ctx.baseline.unwrap_or("")))
        .replace("{{window}}", &escape(&window))
        .replace("{{query}}", &escape(query))
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Why a header (name → environment variable) is refused, if it is. The variable's
/// name alone is judged here; the settings validation adds rollgate's own secrets.
pub fn header_problem(name: &str, var: &str) -> Option<String> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(name) {
        return Some(format!("`{name}` is not an HTTP header name"));
    }
    if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Some(format!(
            "rollgate sets the {name} header itself; a web source may not"
        ));
    }
    let env_name = var.bytes().enumerate().all(|(i, b)| {
        b == b'_'
            || b.is_ascii_uppercase()
            || b.is_ascii_lowercase()
            || (i > 0 && b.is_ascii_digit())
    });
    if var.is_empty() || !env_name {
        return Some(format!(
            "header {name}: `{var}` is not the name of an environment variable (its value is read from the environment, never written here)"
        ));
    }
    None
}

/// Where a web source's requests go: fixed by the settings, placeholders only after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// The path and query, placeholders still in (starts with `/`).
    pub target: String,
}

impl Endpoint {
    /// Read `url` strictly: `http(s)://HOST[:PORT][/PATH][?QUERY]`, no user info, no
    /// placeholder or escape in the host, a numeric port; a `#fragment` is dropped.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("`{url}` is not an http(s) URL"));
        };
        let rest = rest.split('#').next().unwrap_or(rest);
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(format!(
                "`{url}` has user info before its host; credentials go in headers"
            ));
        }
        if authority.contains(['{', '}']) {
            return Err(format!(
                "`{url}` has a placeholder in its host or port; they are filled into the path and query only"
            ));
        }
        if authority
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-._:[]".contains(c)))
        {
            return Err(format!(
                "`{url}` has a host that is not a plain name or address"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .filter(|(h, _)| h.parse::<std::net::Ipv6Addr>().is_ok())
                .ok_or_else(|| format!("`{url}` has a host that is not an IPv6 address in `[]`"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("`{url}` has text after its IPv6 address"))?,
                ),
            };
            (format!("[{h}]"), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() || (!host.starts_with('[') && host.contains(['[', ']'])) {
            return Err(format!("`{url}` has no host, or not a plain one"));
        }
        let port = match port {
            None => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("`{url}` has a port that is not a number up to 65535"))?,
        };
        let target = if target.starts_with('/') {
            target.to_owned()
        } else {
            format!("/{target}")
        };
        Ok(Self {
            https,
            host,
            port,
            target,
        })
    }

    /// `host:port`, for the `Host` header.
    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host to connect to (an IPv6 address without its brackets).
    fn dial_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A JSONPath of the subset this source reads: `$`, then any of `.name`, `['name']`
/// (or `["name"]`) and `[N]`. One path names at most one value: no wildcards, slices,
/// filters or recursive descent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Member(String),
    Index(usize),
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("`{text}` is not a JSONPath this source reads ({why}); write `$.a.b[0]['c d']`")
        };
        let mut rest = text
            .strip_prefix('$')
            .ok_or_else(|| bad("it starts with `$`"))?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                    .unwrap_or(after.len());
                if end == 0 {
                    return Err(bad("a `.` is followed by a name"));
                }
                steps.push(Step::Member(after[..end].to_owned()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let (inside, after) = if let Some(q) = after
                    .strip_prefix('\'')
                    .map(|a| ('\'', a))
                    .or_else(|| after.strip_prefix('"').map(|a| ('"', a)))
                {
                    let (quote, a) = q;
                    let (name, tail) = a
                        .split_once(quote)
                        .ok_or_else(|| bad("a quoted name is closed"))?;
                    let tail = tail
                        .strip_prefix(']')
                        .ok_or_else(|| bad("a quoted name is followed by `]`"))?;
                    (Step::Member(name.to_owned()), tail)
                } else {
                    let (n, tail) = after
                        .split_once(']')
                        .ok_or_else(|| bad("a `[` is closed by `]`"))?;
                    let index = n
                        .parse::<usize>()
                        .ok()
                        .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| bad("an index is a whole number, 0 or more"))?;
                    (Step::Index(index), tail)
                };
                steps.push(inside);
                rest = after;
            } else {
                return Err(bad("each step is `.name`, `['name']` or `[N]`"));
            }
        }
        Ok(Self {
            text: text.to_owned(),
            steps,
        })
    }

    /// The value this path names in `json`, if there is one.
    pub fn get<'v>(&self, json: &'v Value) -> Option<&'v Value> {
        self.steps.iter().try_fold(json, |v, step| match step {
            Step::Member(name) => v.as_object()?.get(name),
            Step::Index(i) => v.as_array()?.get(*i),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(p: &str) -> JsonPath {
        JsonPath::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn the_jsonpath_subset_reads_members_indexes_and_quoted_names() {
        let doc = json!({
            "data": { "ratio": 0.97, "series": [ { "v": 1 }, { "v": 2, "a b": true } ] },
            "dash-ed": 3
        });
        for (p, want) in [
            ("$", Some(&doc)),
            ("$.data.ratio", Some(&json!(0.97))),
            ("$.data.series[1].v", Some(&json!(2))),
            ("$['data'][\"series\"][1]['a b']", Some(&json!(true))),
            ("$.dash-ed", Some(&json!(3))),
            ("$.data.series[2]", None),
            ("$.data.nope", None),
            ("$.data.ratio.deeper", None),
            ("$.data[0]", None),
            ("$.data.series.v", None),
        ] {
            assert_eq!(path(p).get(&doc), want, "{p}");
        }
    }

    #[test]
    fn paths_outside_the_subset_are_refused_with_the_form_it_reads() {
        for p in [
            "",
            "data.ratio",
            "$.",
            "$..ratio",
            "$.data[*]",
            "$.data[-1]",
            "$.data[+1]",
            "$.data[0:2]",
            "$.data[?(@.v)]",
            "$['open",
            "$['a'",
            "$[1",
            "$ .a",
        ] {
            let e = JsonPath::parse(p).expect_err(p);
            assert!(e.contains("$.a.b[0]"), "{p}: {e}");
        }
        assert_eq!(path("$.data.ratio").to_string(), "$.data.ratio");
    }

    #[test]
    fn a_reading_is_a_number_or_a_boolean_null_is_no_data_and_the_rest_errors() {
        let doc = json!({ "n": 0.5, "i": 7, "t": true, "f": false, "z": null,
                          "s": "0.5", "a": [1], "o": {} });
        assert_eq!(reading(&doc, &path("$.n")), Ok(Some(0.5)));
        assert_eq!(reading(&doc, &path("$.i")), Ok(Some(7.0)));
        assert_eq!(reading(&doc, &path("$.t")), Ok(Some(1.0)));
        assert_eq!(reading(&doc, &path("$.f")), Ok(Some(0.0)));
        assert_eq!(reading(&doc, &path("$.z")), Ok(None));
        for (p, says) in [
            ("$.s", "a string"),
            ("$.a", "an array"),
            ("$.o", "an object"),
            ("$.missing", "nothing at $.missing"),
        ] {
            let e = reading(&doc, &path(p)).expect_err(p);
            assert!(e.contains(says), "{p}: {e}");
        }
        assert_eq!(count(&json!({"c": 41.6}), &path("$.c")), Ok(42));
        assert!(count(&json!({"c": -1}), &path("$.c")).is_err());
        assert!(count(&json!({"c": "3"}), &path("$.c")).is_err());
        assert!(count(&json!({}), &path("$.c")).is_err());
    }

    #[test]
    fn placeholders_are_filled_and_encoded_in_the_url_only() {
        let ctx = QueryContext {
            plan: "web",
            version: "v2 &x=1",
            baseline: None,
            fresh_baseline: false,
            window: Duration::from_secs(60),
            workload: None,
        };
        let t = "/r?plan={{plan}}&version={{version}}&baseline={{baseline}}&window={{window}}&q={{query}}";
        assert_eq!(
            fill(t, &ctx, "p/99", encode),
            "/r?plan=web&version=v2%20%26x%3D1&baseline=&window=60s&q=p%2F99"
        );
        assert_eq!(
            fill(
                "{\"v\":\"{{version}}\",\"b\":\"{{baseline}}\",\"w\":\"{{window}}\"}",
                &ctx,
                "q",
                str::to_owned
            ),
            "{\"v\":\"v2 &x=1\",\"b\":\"\",\"w\":\"60s\"}"
        );
        let short = QueryContext {
            window: Duration::from_millis(10),
            baseline: Some("v1"),
            ..ctx
        };
        assert_eq!(fill("{{window}} {{baseline}}", &short, "", encode), "1s v1");
    }

    #[test]
    fn urls_are_read_strictly_and_placeholders_never_reach_the_host() {
        let e = Endpoint::parse("http://127.0.0.1:8080/api/r?plan={{plan}}").expect("url");
        assert_eq!(
            (e.https, e.host.as_str(), e.port, e.target.as_str()),
            (false, "127.0.0.1", 8080, "/api/r?plan={{plan}}")
        );
        let e = Endpoint::parse("https://kpi.internal?x=1#frag").expect("url");
        assert_eq!((e.https, e.port, e.target.as_str()), (true, 443, "/?x=1"));
        let e = Endpoint::parse("http://[::1]:9/").expect("url");
        assert_eq!(
            (e.host.as_str(), e.dial_host(), e.port),
            ("[::1]", "::1", 9)
        );
        for (bad, says) in [
            ("ftp://x", "not an http(s) URL"),
            ("http://{{plan}}.internal/", "placeholder"),
            ("http://kpi.internal:{{version}}/", "placeholder"),
            ("http://user:pw@kpi.internal/", "user info"),
            ("http://kpi.internal%2f.evil/", "not a plain name"),
            ("http://:80/", "no host"),
            ("http://x:99999/", "port"),
            ("http://[::1/", "IPv6"),
            ("http://[::1]x/", "after its IPv6"),
        ] {
            let e = Endpoint::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn headers_are_names_of_variables_and_never_rollgates_own() {
        assert_eq!(header_problem("Authorization", "KPI_AUTH_HEADER"), None);
        assert_eq!(header_problem("X-Api-Key", "_k1"), None);
        for (name, var, says) in [
            ("Bad Header", "V", "not an HTTP header name"),
            ("Host", "V", "sets the Host header itself"),
            ("content-length", "V", "itself"),
            ("X", "Bearer abc", "not the name of an environment variable"),
            ("X", "1ABC", "not the name"),
            ("X", "", "not the name"),
        ] {
            let e = header_problem(name, var).expect(says);
            assert!(e.contains(says), "{name}: {e}");
        }
    }

    #[test]
    fn a_source_is_plain_http_and_sends_headers_to_loopback_only() {
        let t = Duration::from_secs(1);
        let h: BTreeMap<String, String> =
            [("Authorization".to_owned(), "KPI_AUTH".to_owned())].into();
        let new = |url: &str, h: &BTreeMap<String, String>| {
            Web::new(url, WebMethod::Get, None, h, t, "$.v", None)
        };
        assert!(new("http://127.0.0.1:1/r", &h).is_ok());
        assert!(new("http://localhost:1/r", &h).is_ok());
        assert!(new("http://10.0.0.1:1/r", &BTreeMap::new()).is_ok());
        let e = new("http://10.0.0.1:1/r", &h).expect_err("off the host");
        assert!(e.contains("10.0.0.1") && !e.contains("KPI_AUTH="), "{e}");
        let e = new("https://127.0.0.1/r", &h).expect_err("https");
        assert!(e.contains("only http://"), "{e}");
        assert!(Web::new("http://127.0.0.1/", WebMethod::Get, None, &h, t, "v", None).is_err());
    }
}
