//! The `web` metrics source against a real HTTP server the test runs itself (a std
//! `TcpListener` on a loopback port, answering by the request and recording every
//! request it gets).
//!
//! Given `rollgate.yaml` text, the source is built the daemon's way (`parse_settings`,
//! then `metrics::factory::build`). A reading is a number or a boolean as 1/0; the
//! placeholders reach the server URL-encoded (its request line is checked); a slow
//! server, a 500, a body that is not JSON, a missing path or a string are errors, never
//! values; a header's value comes from the environment variable the settings name, and
//! the settings refuse rollgate's own secrets and plain http off the host. The shared
//! `MetricsSource` contract runs against the same kind of server.

use crate::support;

use support::free_port;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollgate::engine::Measurement;
use rollgate::metrics::contract::{self, Cases, Question};
use rollgate::metrics::{MetricsSource, QueryContext, factory};
use rollgate::model::plan::{Check, Judge};
use rollgate::model::settings;
use rollgate::model::validate::parse_settings;

/// What the server got: the request line, the headers (names lowercased), the body.
#[derive(Debug, Clone, Default)]
struct Request {
    line: String,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Request {
    /// The path, without the query string.
    fn path(&self) -> &str {
        let target = self.line.split(' ').nth(1).unwrap_or("");
        target.split('?').next().unwrap_or(target)
    }
}

/// How the server answers one request.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: String,
    /// Wait this long before answering.
    delay: Duration,
}

/// A body starting with this is sent with `Transfer-Encoding: chunked` (without it).
const CHUNKED: &str = "chunked:";

fn json(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: body.to_owned(),
        delay: Duration::ZERO,
    }
}

/// A loopback HTTP/1.1 server: one thread, one request per connection, answered by
/// `answer`, every request recorded. Stops when dropped.
struct KpiServer {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl KpiServer {
    fn start(answer: impl Fn(&Request) -> Answer + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let Some(req) = read_request(&mut conn) else {
                    continue;
                };
                seen.lock().expect("requests").push(req.clone());
                let a = answer(&req);
                // A slow answer must not hold up the next request.
                std::thread::spawn(move || {
                    std::thread::sleep(a.delay);
                    let reason = if a.status < 300 { "OK" } else { "Error" };
                    if let Some(rest) = a.body.strip_prefix(CHUNKED) {
                        // Two chunks and the last, as a streaming server sends them.
                        let (one, two) = rest.split_at(rest.len() / 2);
                        let _ = write!(
                            conn,
                            "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{one}\r\n{:x}\r\n{two}\r\n0\r\n\r\n",
                            a.status,
                            one.len(),
                            two.len()
                        );
                        return;
                    }
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        a.status,
                        a.body.len(),
                        a.body
                    );
                });
            }
        });
        Self {
            port,
            requests,
            stop,
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("http://127.0.0.1:{}{rest}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for KpiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn read_request(conn: &mut TcpStream) -> Option<Request> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next()?.to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len = headers
        .get("content-length")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some(Request {
        line,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Given `rollgate.yaml` with one `web` source named `kpi` (`fields` indented under
/// `web:`), the source the daemon would build from it.
fn source(fields: &str) -> Box<dyn MetricsSource> {
    let settings = parse_settings("rollgate.yaml", &settings_text(fields)).unwrap_or_else(|d| {
        panic!(
            "the test settings are valid: {}",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    factory::build(&settings.metrics["kpi"]).expect("the source builds")
}

fn settings_text(fields: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\nmetrics:\n  kpi:\n    web:\n{fields}"
    )
}

fn check(query: &str) -> Check {
    Check {
        name: "kpi".to_owned(),
        source: "kpi".to_owned(),
        query: query.to_owned(),
        judge: Judge::Threshold {
            min: Some(0.95),
            max: None,
        },
        interval: Duration::from_secs(1),
        failure_limit: 1,
        consecutive_error_limit: 2,
        samples_query: None,
    }
}

fn ctx(version: &str) -> QueryContext<'_> {
    QueryContext {
        plan: "checkout",
        version,
        baseline: Some("v1"),
        fresh_baseline: false,
        window: Duration::from_secs(60),
        workload: None,
    }
}

#[test]
fn a_ratio_is_read_at_the_json_path_with_one_sample() {
    // Given a KPI API that answers a ratio inside an envelope
    let server = KpiServer::start(|_| json(200, r#"{"data":{"ratio":0.97,"other":[1,2]}}"#));
    let mut kpi = source(&format!(
        "      url: \"{}\"\n      jsonPath: $.data.ratio\n",
        server.url("/api/ratio")
    ));
    // When it is measured
    let m = kpi.measure(&check("ratio"), &ctx("v2")).expect("measured");
    // Then the value is the number at the path, one reading
    assert_eq!(
        m,
        Measurement {
            value: Some(0.97),
            samples: 1
        }
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn the_placeholders_are_filled_and_url_encoded_in_the_request_line() {
    // Given a URL with every placeholder in its query string
    let server = KpiServer::start(|_| json(200, r#"{"ok":1}"#));
    let mut kpi = source(&format!(
        "      url: \"{}\"\n      jsonPath: $.ok\n",
        server.url(
            "/api/ratio?plan={{plan}}&version={{version}}&baseline={{baseline}}&window={{window}}&q={{query}}"
        )
    ));
    // When a version with reserved characters is measured, without and with a baseline
    kpi.measure(&check("p99 latency"), &ctx("v2 &admin=1/ü"))
        .expect("measured");
    let none = QueryContext {
        baseline: None,
        window: Duration::from_secs(45),
        ..ctx("v3")
    };
    kpi.measure(&check("q"), &none).expect("measured");
    // Then the server saw each value URL-encoded, the baseline empty when there is none
    let lines: Vec<String> = server.requests().into_iter().map(|r| r.line).collect();
    assert_eq!(
        lines,
        [
            "GET /api/ratio?plan=checkout&version=v2%20%26admin%3D1%2F%C3%BC&baseline=v1&window=60s&q=p99%20latency HTTP/1.1",
            "GET /api/ratio?plan=checkout&version=v3&baseline=&window=45s&q=q HTTP/1.1",
        ]
    );
}

#[test]
fn a_post_sends_its_templated_body() {
    // Given a POST source with a JSON body
    let server = KpiServer::start(|_| json(200, r#"{"v":0.5}"#));
    let mut kpi = source(&format!(
        "      url: \"{}\"\n      method: POST\n      body: '{{\"plan\": \"{{{{plan}}}}\", \"version\": \"{{{{version}}}}\", \"window\": \"{{{{window}}}}\"}}'\n      jsonPath: $.v\n",
        server.url("/query")
    ));
    // When it is measured
    let m = kpi.measure(&check("q"), &ctx("v2")).expect("measured");
    // Then the body carries the filled placeholders, as JSON
    assert_eq!(m.value, Some(0.5));
    let req = &server.requests()[0];
    assert_eq!(req.line, "POST /query HTTP/1.1");
    assert_eq!(
        req.body,
        r#"{"plan": "checkout", "version": "v2", "window": "60s"}"#
    );
    assert_eq!(
        req.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
}

#[test]
fn a_boolean_reads_as_one_or_zero() {
    // Given an API that answers whether each version is healthy
    let server = KpiServer::start(|r| {
        json(
            200,
            &format!(r#"{{"healthy":{}}}"#, r.line.contains("version=v2")),
        )
    });
    let mut kpi = source(&format!(
        "      url: \"{}\"\n      jsonPath: $.healthy\n",
        server.url("/health?version={{version}}")
    ));
    // Then true is 1 and false is 0, each one reading
    let read = |kpi: &mut Box<dyn MetricsSource>, v| kpi.measure(&check("h"), &ctx(v));
    assert_eq!(
        read(&mut kpi, "v2"),
        Ok(Measurement {
            value: Some(1.0),
            samples: 1
        })
    );
    assert_eq!(
        read(&mut kpi, "v3"),
        Ok(Measurement {
            value: Some(0.0),
            samples: 1
        })
    );
}

#[test]
fn a_failed_answer_is_an_error_never_a_value() {
    // Given a server with one path per way of failing
    let server = KpiServer::start(|r| match r.path() {
        "/slow" => Answer {
            delay: Duration::from_millis(1500),
            ..json(200, r#"{"v":1}"#)
        },
        "/500" => json(500, r#"{"v":1}"#),
        "/404" => json(404, r#"{"v":1}"#),
        "/not-json" => json(200, "<html>ok</html>"),
        "/missing" => json(200, r#"{"w":1}"#),
        "/string" => json(200, r#"{"v":"1"}"#),
        "/object" => json(200, r#"{"v":{"x":1}}"#),
        "/chunked" => json(200, &format!("{CHUNKED}{}", r#"{"v":0.25}"#)),
        _ => json(200, r#"{"v":1}"#),
    });
    for (path, says) in [
        ("/slow", "timed out"),
        ("/500", "answered 500"),
        ("/404", "answered 404"),
        ("/not-json", "not JSON"),
        ("/missing", "nothing at $.v"),
        ("/string", "a string"),
        ("/object", "an object"),
    ] {
        let mut kpi = source(&format!(
            "      url: \"{}\"\n      timeout: 500ms\n      jsonPath: $.v\n",
            server.url(path)
        ));
        // When it is measured
        let started = Instant::now();
        let m = kpi.measure(&check("q"), &ctx("v2"));
        // Then it is an error that says why, in about the timeout at most
        let e = m.expect_err(path);
        assert!(e.contains(says), "{path}: {e}");
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    // And the good paths on the same server read, a chunked answer too
    for (path, want) in [("/good", 1.0), ("/chunked", 0.25)] {
        let mut kpi = source(&format!(
            "      url: \"{}\"\n      timeout: 500ms\n      jsonPath: $.v\n",
            server.url(path)
        ));
        assert_eq!(
            kpi.measure(&check("q"), &ctx("v2")).map(|m| m.value),
            Ok(Some(want)),
            "{path}"
        );
    }
}

/// The shared contract: v2 measured a ratio of 0.96 over 250 requests (`samplesPath`),
/// v3 has no data yet (`null`); the dead source points at a loopback port nobody
/// listens on.
#[test]
fn web_passes_the_metrics_source_contract() {
    let data_from = chrono::Utc::now();
    let server = KpiServer::start(|r| {
        if r.line.contains("version=v2&") {
            json(200, r#"{"data":{"ratio":0.96,"requests":250}}"#)
        } else {
            json(200, r#"{"data":{"ratio":null,"requests":0}}"#)
        }
    });
    let fields = |url: String| {
        format!(
            "      url: \"{url}\"\n      timeout: 1s\n      jsonPath: $.data.ratio\n      samplesPath: $.data.requests\n"
        )
    };
    let query = "/api/ratio?version={{version}}&window={{window}}";
    let mut live = source(&fields(server.url(query)));
    let mut dead = source(&fields(format!("http://127.0.0.1:{}{query}", free_port())));
    let question = |version| Question {
        check: check("ratio"),
        ctx: ctx(version),
    };
    contract::run(
        live.as_mut(),
        dead.as_mut(),
        &Cases {
            unreachable: question("v2"),
            empty: question("v3"),
            counted: question("v2"),
            value: 0.96,
            tolerance: 0.0,
            samples: 250,
            data_from,
        },
    );
}

/// The header test needs `KPI_AUTH_HEADER` in its environment, which a test may not set
/// in its own process (`set_var` is unsafe and this crate forbids unsafe code): it runs
/// itself again as a child that has it.
const AUTH_VAR: &str = "KPI_AUTH_HEADER";
const AUTH_VALUE: &str = "Bearer kpi-test-token";

#[test]
fn a_header_is_read_from_the_variable_the_settings_name() {
    if std::env::var(AUTH_VAR).as_deref() != Ok(AUTH_VALUE) {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                // The test's name in this binary: its module path after the crate's.
                &format!(
                    "{}::a_header_is_read_from_the_variable_the_settings_name",
                    module_path!()
                        .split_once("::")
                        .map_or(module_path!(), |(_, m)| m)
                ),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(AUTH_VAR, AUTH_VALUE)
            .output()
            .expect("run the test binary again");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "the child failed:\n{report}");
        assert!(
            report.contains("1 passed"),
            "the child ran no test:\n{report}"
        );
        return;
    }
    // Given settings naming the variable that holds the Authorization header
    let server = KpiServer::start(|r| {
        if r.headers.get("authorization").map(String::as_str) == Some(AUTH_VALUE) {
            json(200, r#"{"v":1}"#)
        } else {
            json(401, r#"{"error":"unauthorized"}"#)
        }
    });
    let mut kpi = source(&format!(
        "      url: \"{}\"\n      headers:\n        Authorization: {AUTH_VAR}\n      jsonPath: $.v\n",
        server.url("/r")
    ));
    // When it is measured, then the server got the variable's value
    assert_eq!(
        kpi.measure(&check("q"), &ctx("v2")).map(|m| m.value),
        Ok(Some(1.0))
    );
    assert_eq!(
        server.requests()[0]
            .headers
            .get("authorization")
            .map(String::as_str),
        Some(AUTH_VALUE)
    );
    // And a variable that is not set is an error that names it, not a request without it
    let mut unset = source(&format!(
        "      url: \"{}\"\n      headers:\n        Authorization: KPI_NOT_SET_ANYWHERE\n      jsonPath: $.v\n",
        server.url("/r")
    ));
    let e = unset
        .measure(&check("q"), &ctx("v2"))
        .expect_err("unset variable");
    assert!(e.contains("KPI_NOT_SET_ANYWHERE"), "{e}");
    assert_eq!(server.requests().len(), 1, "no request without its header");
    // And no error message carries the value
    let mut refused = source(&format!(
        "      url: \"{}\"\n      headers:\n        Authorization: {AUTH_VAR}\n      jsonPath: $.missing\n",
        server.url("/r")
    ));
    let e = refused
        .measure(&check("q"), &ctx("v2"))
        .expect_err("missing");
    assert!(!e.contains("kpi-test-token"), "{e}");
}

#[test]
fn the_settings_refuse_rollgates_own_secrets_and_plain_http_off_the_host() {
    let diags = |fields: &str| -> Vec<String> {
        parse_settings("rollgate.yaml", &settings_text(fields))
            .map(|_| Vec::new())
            .unwrap_or_else(|d| d.iter().map(ToString::to_string).collect())
    };
    // Given a header taken from one of rollgate's own credentials
    let d = diags(
        "      url: \"http://127.0.0.1:9/r\"\n      headers:\n        Authorization: ROLLGATE_GITHUB_TOKEN\n      jsonPath: $.v\n",
    );
    // Then it is refused at its file, line and column
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].starts_with("rollgate.yaml:8:24: error[invalid-value]: ROLLGATE_GITHUB_TOKEN holds one of rollgate's own credentials"),
        "{d:?}"
    );
    // And a credential of its own may not cross plain http to another host
    let d = diags(
        "      url: \"http://kpi.internal/api/ratio?plan={{plan}}\"\n      headers: { Authorization: KPI_AUTH_HEADER }\n      jsonPath: $.data.ratio\n",
    );
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].starts_with("rollgate.yaml:7:")
            && d[0].contains("error[invalid-value]: the credential in KPI_AUTH_HEADER would go over plain http to `kpi.internal`"),
        "{d:?}"
    );
    // And the same source without the header, or to loopback, is valid
    assert_eq!(
        diags("      url: \"http://kpi.internal/api/ratio\"\n      jsonPath: $.data.ratio\n"),
        Vec::<String>::new()
    );
    assert_eq!(
        diags(
            "      url: \"http://localhost:8080/r\"\n      headers: { Authorization: KPI_AUTH_HEADER }\n      jsonPath: $.data.ratio\n"
        ),
        Vec::<String>::new()
    );
    // And the kind is `web`
    let s = parse_settings(
        "rollgate.yaml",
        &settings_text("      url: \"http://127.0.0.1/r\"\n      jsonPath: $.v\n"),
    )
    .expect("valid");
    assert_eq!(s.metrics["kpi"].kind(), "web");
    assert!(matches!(
        s.metrics["kpi"],
        settings::MetricsSource::Web { .. }
    ));
}
