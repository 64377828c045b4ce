//! The `prometheus` metrics source: instant and range queries over the HTTP API.
//!
//! A check's query is PromQL with placeholders: `{{version}}` (the candidate),
//! `{{baseline}}` (the stable version), `{{plan}}`, `{{window}}` (the analysis so
//! far, as a PromQL duration like `45s`) and, for a Kubernetes workload,
//! `{{baselineDeployment}}`: the Deployment whose pods are the baseline, the fresh
//! baseline `<deployment>-baseline` while one runs (issue #19), else the stable
//! `<deployment>` (empty for other workloads). A fresh baseline runs the stable
//! artifact, so `{{baseline}}` (a version) cannot tell its pods from the stable ones;
//! a pod-name match such as `pod=~"{{baselineDeployment}}-[a-z0-9]+-[a-z0-9]+"` can. An error, a timeout or an empty result is a
//! measurement without a value (`NoData`) or an error — never a pass.
//! Invariants: the auth header value is read from the environment at call time and is
//! never logged or put into an error message; responses are size-capped.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

use super::{MetricsSource, QueryContext};
use crate::engine::Measurement;
use crate::model::plan::Check;

const MAX_RESPONSE: u64 = 8 * 1024 * 1024;

/// A Prometheus server.
#[derive(Debug, Clone)]
pub struct Prometheus {
    host: String,
    port: u16,
    base_path: String,
    timeout: Duration,
    auth_header_env: Option<String>,
}

/// Fill the placeholders of a query.
pub fn render(query: &str, ctx: &QueryContext<'_>) -> String {
    let secs = ctx.window.as_secs().max(1);
    query
        .replace("{{version}}", ctx.version)
        .replace("{{baseline}}", ctx.baseline.unwrap_or(""))
        .replace("{{plan}}", ctx.plan)
        .replace("{{window}}", &format!("{secs}s"))
        .replace("{{baselineDeployment}}", &baseline_deployment(ctx))
}

/// `{{baselineDeployment}}`: `<deployment>-baseline` while a fresh baseline runs, else
/// `<deployment>`; empty for a workload that is not a Kubernetes Deployment.
fn baseline_deployment(ctx: &QueryContext<'_>) -> String {
    match ctx.workload {
        Some(crate::model::plan::Workload::Kubernetes(w)) if ctx.fresh_baseline => {
            format!(
                "{}{}",
                w.deployment,
                crate::targets::kubernetes::BASELINE_SUFFIX
            )
        }
        Some(crate::model::plan::Workload::Kubernetes(w)) => w.deployment.clone(),
        _ => String::new(),
    }
}

fn encode(s: &str) -> String {
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

pub use crate::source::remote::is_loopback_host;

impl Prometheus {
    /// `url` like `http://127.0.0.1:9090` (a path prefix is kept). https needs a TLS
    /// build and is refused here with a clear error.
    pub fn new(
        url: &str,
        timeout: Duration,
        auth_header_env: Option<String>,
    ) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("only http:// Prometheus URLs are supported in this build, not `{url}`")
        })?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse().map_err(|_| format!("bad port in `{url}`"))?,
            ),
            None => (authority.to_owned(), 80),
        };
        if let Some(var) = &auth_header_env
            && !is_loopback_host(&host)
        {
            return Err(format!(
                "authHeaderEnv {var}: a credential goes over plain http only to loopback, not to `{host}` (this build has no https client)"
            ));
        }
        let base_path = if path.is_empty() {
            String::new()
        } else {
            format!("/{}", path.trim_end_matches('/'))
        };
        Ok(Self {
            host,
            port,
            base_path,
            timeout,
            auth_header_env,
        })
    }

    fn get(&self, path_and_query: &str) -> Result<Value, String> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("cannot resolve {}", self.host))?;
        let mut s = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|e| format!("prometheus at {addr} unreachable: {e}"))?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        let mut req = format!(
            "GET {}{path_and_query} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.base_path, self.host, self.port
        );
        // Checked again on the address actually dialled: a name that resolves elsewhere
        // never receives the credential.
        if let Some(var) = &self.auth_header_env
            && addr.ip().is_loopback()
            && let Ok(v) = std::env::var(var)
        {
            req.push_str(&format!("Authorization: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .map_err(|e| format!("prometheus write: {e}"))?;
        let mut buf = Vec::new();
        s.take(MAX_RESPONSE)
            .read_to_end(&mut buf)
            .map_err(|e| format!("prometheus read (timeout {:?}): {e}", self.timeout))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("prometheus sent no HTTP body")?;
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("prometheus sent no HTTP status")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        let json: Value = serde_json::from_str(&body)
            .map_err(|_| format!("prometheus answered {code} with a body that is not JSON"))?;
        if json.get("status").and_then(Value::as_str) != Some("success") {
            let msg = json
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            return Err(format!("prometheus answered {code}: {msg}"));
        }
        Ok(json)
    }

    /// An instant query; `None` when the result is empty.
    pub fn instant(&self, query: &str) -> Result<Option<f64>, String> {
        let json = self.get(&format!("/api/v1/query?query={}", encode(query)))?;
        let result = json
            .pointer("/data/result")
            .and_then(Value::as_array)
            .ok_or("prometheus result is not a vector")?;
        let Some(first) = result.first() else {
            return Ok(None);
        };
        let v = first
            .pointer("/value/1")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<f64>().ok());
        Ok(v.filter(|v| v.is_finite()))
    }

    /// A range query: every point of every series, in order.
    pub fn range(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step_secs: u64,
    ) -> Result<Vec<f64>, String> {
        let json = self.get(&format!(
            "/api/v1/query_range?query={}&start={start}&end={end}&step={}",
            encode(query),
            step_secs.max(1)
        ))?;
        let result = json
            .pointer("/data/result")
            .and_then(Value::as_array)
            .ok_or("prometheus result is not a matrix")?;
        Ok(result
            .iter()
            .filter_map(|s| s.get("values").and_then(Value::as_array))
            .flatten()
            .filter_map(|p| {
                p.get(1)
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<f64>().ok())
            })
            .filter(|v| v.is_finite())
            .collect())
    }

    /// Is the server answering?
    pub fn is_online(&self) -> bool {
        self.instant("vector(1)").is_ok()
    }
}

/// The body of a `Transfer-Encoding: chunked` answer (also read by `web`).
pub(super) fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

impl MetricsSource for Prometheus {
    fn measure(&mut self, check: &Check, ctx: &QueryContext<'_>) -> Result<Measurement, String> {
        let q = render(&check.query, ctx);
        let value = self.instant(&q)?;
        // The count of events behind the value: the check's samples query when it has
        // one (e.g. requests), else the data points of the value over the window.
        let samples = match (value, &check.samples_query) {
            (None, _) => 0,
            (Some(_), Some(sq)) => self
                .instant(&render(sq, ctx))?
                .map_or(0, |c| c.max(0.0).round() as u64),
            (Some(_), None) => {
                let count_q = format!(
                    "count_over_time(({q})[{}s:1s])",
                    ctx.window.as_secs().max(1)
                );
                self.instant(&count_q)
                    .ok()
                    .flatten()
                    .map_or(0, |c| c.max(0.0) as u64)
            }
        };
        Ok(Measurement { value, samples })
    }

    fn error_ratio(
        &mut self,
        good: &str,
        total: &str,
        ctx: &QueryContext<'_>,
    ) -> Result<f64, String> {
        let good = self
            .instant(&render(good, ctx))?
            .ok_or("the SLO's good query returned no data")?;
        let total = self
            .instant(&render(total, ctx))?
            .ok_or("the SLO's total query returned no data")?;
        if total <= 0.0 {
            return Ok(0.0); // no events: nothing burns
        }
        Ok((1.0 - good / total).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_credential_is_never_sent_over_plain_http_off_the_host() {
        let t = Duration::from_secs(1);
        let e = Prometheus::new("http://10.1.2.3:9090", t, Some("PROM_TOKEN".to_owned()))
            .expect_err("off the host");
        assert!(e.contains("PROM_TOKEN") && e.contains("10.1.2.3"), "{e}");
        assert!(Prometheus::new("http://127.0.0.1:9090", t, Some("PROM_TOKEN".to_owned())).is_ok());
        assert!(Prometheus::new("http://[::1]:9090", t, Some("PROM_TOKEN".to_owned())).is_ok());
        assert!(Prometheus::new("http://10.1.2.3:9090", t, None).is_ok());
    }

    #[test]
    fn placeholders_are_filled() {
        let ctx = QueryContext {
            plan: "web",
            version: "v2",
            baseline: Some("v1"),
            fresh_baseline: false,
            window: Duration::from_secs(45),
            workload: None,
        };
        assert_eq!(
            render(
                "rate(x{version=\"{{version}}\",plan=\"{{plan}}\"}[{{window}}]) / rate(x{version=\"{{baseline}}\"}[{{window}}])",
                &ctx
            ),
            "rate(x{version=\"v2\",plan=\"web\"}[45s]) / rate(x{version=\"v1\"}[45s])"
        );
    }

    #[test]
    fn baseline_deployment_names_the_fresh_baseline_while_one_runs() {
        let plan = crate::model::validate::parse_plan(
            "plans/web.yaml",
            "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: web }\nspec:\n  target: t\n  workload:\n    kubernetes: { namespace: shop, deployment: web }\n  artifact: web:2\n  strategy:\n    canary: { baseline: fresh, steps: [ { setWeight: 10 }, { setWeight: 100 } ] }\n",
            None,
        )
        .expect("plan parses")
        .plan;
        let q = "pod=~\"{{baselineDeployment}}-[a-z0-9]+-[a-z0-9]+\"";
        let ctx = |fresh: bool, workload| QueryContext {
            plan: "web",
            version: "v2",
            baseline: Some("v1"),
            fresh_baseline: fresh,
            window: Duration::from_secs(45),
            workload,
        };
        assert_eq!(
            render(q, &ctx(true, Some(&plan.workload))),
            "pod=~\"web-baseline-[a-z0-9]+-[a-z0-9]+\""
        );
        assert_eq!(
            render(q, &ctx(false, Some(&plan.workload))),
            "pod=~\"web-[a-z0-9]+-[a-z0-9]+\""
        );
        assert_eq!(render(q, &ctx(true, None)), "pod=~\"-[a-z0-9]+-[a-z0-9]+\"");
    }

    #[test]
    fn urls_and_encoding() {
        let p = Prometheus::new("http://127.0.0.1:9090/prom/", Duration::from_secs(1), None)
            .expect("url");
        assert_eq!(
            (p.host.as_str(), p.port, p.base_path.as_str()),
            ("127.0.0.1", 9090, "/prom")
        );
        assert!(Prometheus::new("https://x", Duration::from_secs(1), None).is_err());
        assert_eq!(encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    }

    #[test]
    fn an_unreachable_server_is_an_error_not_a_value() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let p = Prometheus::new(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_millis(200),
            None,
        )
        .expect("url");
        assert!(p.instant("up").is_err());
        assert!(!p.is_online());
    }
}
