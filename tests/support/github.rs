//! A stand-in for the GitHub REST API on loopback, strict like a test double should be.
//!
//! It answers only the calls rollgate is meant to make, and checks each one: the
//! method, the path (the expected repository), the query, the headers (`Authorization`
//! for the configured token or App, `Accept`, `User-Agent`, the API version) and the
//! JSON body, field by field. Anything else is a violation; a `FakeGitHub` with
//! violations fails the test when it is dropped (or at `assert_clean`). It keeps what a
//! repository would: check runs, issue comments, commit statuses, permissions.
//! Comments have authors as on GitHub: a token's comments are its owner's (`GET /user`
//! names [`TOKEN_USER`]), an App's are its bot user's ([`BOT`], type `Bot`, made
//! through the App: `performed_via_github_app`; `GET /app` names its slug); editing a
//! comment written by anyone else is a violation. With `refuse_check_runs`, check runs
//! are refused to a token as GitHub does (403).
//! With `serve_git`, it also serves bare repositories over Git's smart HTTP (through the
//! real `git http-backend`) under `/git/`, as GitHub serves clones: only to Basic auth
//! `x-access-token:<token>` with the configured token or a live installation token.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The login of a GitHub App's comments: its bot user, `<slug>[bot]`.
pub const BOT: &str = "rollgate[bot]";
/// The App's slug (`GET /app`).
pub const APP_SLUG: &str = "rollgate";
/// The owner of the token (`GET /user`): a token's comments are this user's.
pub const TOKEN_USER: &str = "rollgate-ci";

/// How rollgate must authenticate.
#[derive(Debug, Clone)]
pub enum Expect {
    /// `Authorization: Bearer <token>` on every call.
    Token(String),
    /// A GitHub App: JWTs (RS256, `iss` = the id) on `/app/...` and the installation
    /// lookup; installation tokens the fake issued everywhere else. Issued tokens expire
    /// after `token_ttl`.
    App { id: u64, token_ttl: Duration },
}

/// One call, as received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: String,
    pub body: Option<Value>,
}

impl Call {
    pub fn is(&self, method: &str, path_prefix: &str) -> bool {
        self.method == method && self.path.starts_with(path_prefix)
    }
}

/// One Git request over HTTP, as received.
#[derive(Debug, Clone)]
pub struct GitCall {
    pub method: String,
    /// The path under `/git/` (`remote.git/info/refs`, `remote.git/git-receive-pack`).
    pub path: String,
    /// It carried credentials (an `Authorization` header); without, it was challenged.
    pub credentials: bool,
    /// It carried credentials the fake accepted (it was served).
    pub authorized: bool,
}

#[derive(Debug, Clone)]
pub struct CheckRun {
    pub id: u64,
    pub head_sha: String,
    pub conclusion: String,
    pub title: String,
    pub summary: String,
    pub annotations: Vec<Value>,
    pub updates: usize,
}

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    pub user: String,
    /// `User` or `Bot`.
    pub kind: String,
    /// The App it was made through (`performed_via_github_app`), if any.
    pub app: Option<u64>,
    pub body: String,
    pub edits: usize,
}

#[derive(Debug)]
pub struct Hub {
    pub repo: String,
    pub expect: Expect,
    pub calls: Vec<Call>,
    pub violations: Vec<String>,
    pub check_runs: Vec<CheckRun>,
    pub comments: BTreeMap<u64, Vec<Comment>>,
    pub statuses: Vec<Value>,
    /// login → `admin|write|read|none` (absent: 404, not a collaborator).
    pub permissions: HashMap<String, String>,
    /// Installation tokens issued (App), newest last.
    pub tokens: Vec<(String, Instant)>,
    /// commit sha → the pull request that merged it.
    pub merged: HashMap<String, u64>,
    /// Where the repositories served over Git's HTTP are (`serve_git`).
    pub git_root: Option<PathBuf>,
    pub git_calls: Vec<GitCall>,
    /// Refuse check runs to a token (403), as GitHub does.
    pub refuse_check_runs: bool,
    /// While set, API calls wait (the caller is stuck mid-call).
    pub held: bool,
    next_id: u64,
}

impl Hub {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn comments_on(&self, issue: u64) -> Vec<Comment> {
        self.comments.get(&issue).cloned().unwrap_or_default()
    }

    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.calls
            .iter()
            .filter(|c| c.is(method, path_prefix))
            .count()
    }

    /// Who rollgate's comments are by: (login, type, App).
    pub fn me(&self) -> (String, String, Option<u64>) {
        match self.expect {
            Expect::Token(_) => (TOKEN_USER.to_owned(), "User".to_owned(), None),
            Expect::App { id, .. } => (BOT.to_owned(), "Bot".to_owned(), Some(id)),
        }
    }

    /// Rollgate's own comments on `issue`.
    pub fn ours_on(&self, issue: u64) -> Vec<Comment> {
        let (login, _, _) = self.me();
        self.comments_on(issue)
            .into_iter()
            .filter(|c| c.user == login)
            .collect()
    }
}

/// The fake API; `url` is its base (`http://127.0.0.1:PORT`).
pub struct FakeGitHub {
    pub url: String,
    hub: Arc<Mutex<Hub>>,
    _runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for FakeGitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGitHub")
            .field("url", &self.url)
            .finish()
    }
}

impl FakeGitHub {
    /// A fake for `repo` (`owner/name`) expecting `expect`'s credentials.
    pub fn start(repo: &str, expect: Expect) -> Self {
        let hub = Arc::new(Mutex::new(Hub {
            repo: repo.to_owned(),
            expect,
            calls: Vec::new(),
            violations: Vec::new(),
            check_runs: Vec::new(),
            comments: BTreeMap::new(),
            statuses: Vec::new(),
            permissions: HashMap::new(),
            tokens: Vec::new(),
            merged: HashMap::new(),
            git_root: None,
            git_calls: Vec::new(),
            refuse_check_runs: false,
            held: false,
            next_id: 1000,
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().fallback(handle).with_state(hub.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            hub,
            _runtime: runtime,
        }
    }

    pub fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_permission(&self, login: &str, permission: &str) {
        self.hub()
            .permissions
            .insert(login.to_owned(), permission.to_owned());
    }

    /// Serve the bare repositories under `root` over Git's smart HTTP; returns the URL
    /// of `root/<name>`.
    pub fn serve_git(&self, root: &Path, name: &str) -> String {
        self.hub().git_root = Some(root.to_path_buf());
        format!("{}/git/{name}", self.url)
    }

    /// `sha` came into the repository by merging pull request `number`.
    pub fn merged(&self, sha: &str, number: u64) {
        self.hub().merged.insert(sha.to_owned(), number);
    }

    /// A comment someone else wrote (it must be left alone).
    pub fn human_comment(&self, issue: u64, user: &str, body: &str) {
        self.comment_as(issue, user, "User", None, body);
    }

    /// A comment by `user` of type `kind` (`User`, `Bot`), made through the App `app`.
    pub fn comment_as(&self, issue: u64, user: &str, kind: &str, app: Option<u64>, body: &str) {
        let mut h = self.hub();
        let id = h.id();
        h.comments.entry(issue).or_default().push(Comment {
            id,
            user: user.to_owned(),
            kind: kind.to_owned(),
            app,
            body: body.to_owned(),
            edits: 0,
        });
    }

    /// Refuse check runs to the token (403), as github.com does for any token but an App's.
    pub fn refuse_check_runs(&self) {
        self.hub().refuse_check_runs = true;
    }

    /// Hold every API call (it waits unanswered) until `hold(false)`.
    pub fn hold(&self, held: bool) {
        self.hub().held = held;
    }

    /// Wait until `cond` holds (checking every 20 ms), or panic after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, cond: impl Fn(&Hub) -> bool) {
        let start = Instant::now();
        loop {
            {
                let h = self.hub();
                if cond(&h) {
                    return;
                }
                if start.elapsed() > limit {
                    panic!(
                        "waited {limit:?} for {what}; violations: {:?}; calls so far:\n{}",
                        h.violations,
                        h.calls
                            .iter()
                            .map(|c| format!("  {} {}?{} {:?}", c.method, c.path, c.query, c.body))
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn assert_clean(&self) {
        let v = self.hub().violations.clone();
        assert!(
            v.is_empty(),
            "unexpected GitHub API calls:\n{}",
            v.join("\n")
        );
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_clean();
        }
    }
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    reply(
        404,
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
    )
}

async fn handle(State(hub): State<Arc<Mutex<Hub>>>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 10 << 20)
        .await
        .unwrap_or_default();
    if let Some(path) = parts.uri.path().strip_prefix("/git/") {
        return git(&hub, &parts, path.to_owned(), bytes.to_vec()).await;
    }
    let held = {
        let mut h = hub.lock().unwrap_or_else(|e| e.into_inner());
        if h.held {
            // Recorded now (the caller is seen waiting), answered once released.
            h.calls.push(Call {
                method: parts.method.as_str().to_owned(),
                path: format!("(held) {}", parts.uri.path()),
                query: String::new(),
                authorization: String::new(),
                body: None,
            });
        }
        h.held
    };
    if held {
        while hub.lock().unwrap_or_else(|e| e.into_inner()).held {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut h = hub.lock().unwrap_or_else(|e| e.into_inner());
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let header = |name: &str| -> Vec<String> {
        parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let authorization = header("authorization").join(", ");
    let body: Option<Value> = if bytes.is_empty() {
        None
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                h.violations
                    .push(format!("{method} {path}: body is not JSON: {e}"));
                None
            }
        }
    };
    h.calls.push(Call {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    let mut problems = Vec::new();
    // Headers every call carries.
    if header("user-agent") != ["octocrab"] {
        problems.push(format!("User-Agent {:?}", header("user-agent")));
    }
    if header("accept") != ["application/vnd.github+json"] {
        problems.push(format!("Accept {:?}", header("accept")));
    }
    // octocrab mints installation tokens with a request of its own, without the version.
    let minting = path.starts_with("/app/installations/") && path.ends_with("/access_tokens");
    if !minting && header("x-github-api-version") != ["2022-11-28"] {
        problems.push(format!(
            "X-GitHub-Api-Version {:?}",
            header("x-github-api-version")
        ));
    }
    if body.is_some() && header("content-type") != ["application/json"] {
        problems.push(format!("Content-Type {:?}", header("content-type")));
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let jwt_route = segs.first() == Some(&"app")
        || (segs.len() == 4 && segs[0] == "repos" && segs[3] == "installation");
    match h.expect.clone() {
        Expect::Token(t) => {
            if authorization != format!("Bearer {t}") {
                problems.push(format!("Authorization {authorization:?}, not the token"));
            }
        }
        Expect::App { id, .. } if jwt_route => {
            if let Err(why) = check_jwt(&authorization, id) {
                problems.push(format!("Authorization: {why}"));
            }
        }
        Expect::App { token_ttl, .. } => {
            let now = Instant::now();
            let ok = h.tokens.iter().any(|(t, at)| {
                authorization == format!("Bearer {t}") && now.duration_since(*at) < token_ttl
            });
            if !ok {
                problems.push(format!(
                    "Authorization {authorization:?} is not a live installation token"
                ));
            }
        }
    }
    if !problems.is_empty() {
        h.violations
            .push(format!("{method} {path}?{query}: {}", problems.join("; ")));
        return reply(401, json!({"message": "Bad credentials"}));
    }
    let response = route(&mut h, &method, &segs, &query, body.as_ref());
    match response {
        Ok(r) => r,
        Err(why) => {
            h.violations
                .push(format!("{method} {path}?{query} {body:?}: {why}"));
            reply(422, json!({"message": "Validation Failed"}))
        }
    }
}

/// Git's smart HTTP, as GitHub serves it: a request without credentials is challenged
/// (401 with `WWW-Authenticate: Basic`, as libgit2 expects before it asks for any);
/// one with credentials must be `x-access-token` and the token (or a live installation
/// token), else it is a violation; then `git http-backend` answers.
async fn git(
    hub: &Arc<Mutex<Hub>>,
    parts: &axum::http::request::Parts,
    path: String,
    body: Vec<u8>,
) -> Response {
    let challenge = || {
        (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"GitHub\"")],
            "",
        )
            .into_response()
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let method = parts.method.as_str().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let root = {
        let mut h = hub.lock().unwrap_or_else(|e| e.into_inner());
        let Some(root) = h.git_root.clone() else {
            h.violations
                .push(format!("{method} /git/{path}: Git is not served here"));
            return not_found();
        };
        let verdict = header("authorization").map(|a| git_credentials(&h, &a));
        h.git_calls.push(GitCall {
            method: method.clone(),
            path: path.clone(),
            credentials: verdict.is_some(),
            authorized: matches!(verdict, Some(Ok(()))),
        });
        match verdict {
            None => return challenge(),
            Some(Err(why)) => {
                h.violations
                    .push(format!("{method} /git/{path}?{query}: {why}"));
                return challenge();
            }
            Some(Ok(())) => root,
        }
    };
    let content_type = header("content-type").unwrap_or_default();
    let encoding = header("content-encoding");
    let protocol = header("git-protocol");
    let out = tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new("git");
        c.arg("http-backend")
            .env("GIT_PROJECT_ROOT", &root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("PATH_INFO", format!("/{path}"))
            .env("QUERY_STRING", query)
            .env("REQUEST_METHOD", method)
            .env("CONTENT_TYPE", content_type)
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("REMOTE_USER", "x-access-token")
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(e) = encoding {
            c.env("HTTP_CONTENT_ENCODING", e);
        }
        if let Some(p) = protocol {
            c.env("GIT_PROTOCOL", p);
        }
        let mut child = c.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&body)?;
        }
        child.wait_with_output()
    })
    .await;
    let out = match out {
        Ok(Ok(o)) => o.stdout,
        _ => return reply(500, json!({"message": "git http-backend failed"})),
    };
    cgi_response(&out)
}

/// `Basic base64(x-access-token:<token>)` with the token rollgate must use.
fn git_credentials(h: &Hub, authorization: &str) -> Result<(), String> {
    let encoded = authorization.strip_prefix("Basic ").ok_or_else(|| {
        format!(
            "Git sent {:?}, not Basic auth",
            authorization.split(' ').next()
        )
    })?;
    let decoded = String::from_utf8(b64(encoded)?).map_err(|e| e.to_string())?;
    let (user, token) = decoded.split_once(':').ok_or("no password")?;
    if user != "x-access-token" {
        return Err(format!("Git's user is {user:?}, not x-access-token"));
    }
    let ok = match &h.expect {
        Expect::Token(t) => token == t,
        Expect::App { token_ttl, .. } => {
            let now = Instant::now();
            h.tokens
                .iter()
                .any(|(t, at)| token == t && now.duration_since(*at) < *token_ttl)
        }
    };
    if ok {
        Ok(())
    } else {
        Err("Git's password is not the token or a live installation token".to_owned())
    }
}

/// A CGI program's output (headers, a blank line, the body) as a response.
fn cgi_response(out: &[u8]) -> Response {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        });
    let Some((end, body_start)) = split else {
        return reply(500, json!({"message": "no CGI headers"}));
    };
    let head = String::from_utf8_lossy(&out[..end]);
    let mut builder = axum::http::Response::builder().status(200);
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(500);
            builder = builder.status(code);
        } else {
            builder = builder.header(k.trim(), v);
        }
    }
    builder
        .body(Body::from(out[body_start..].to_vec()))
        .unwrap_or_else(|_| reply(500, json!({"message": "bad CGI headers"})))
}

/// Standard base64 (with `=` padding).
fn b64(s: &str) -> Result<Vec<u8>, String> {
    let std_to_url: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    b64url(&std_to_url)
}

fn check_jwt(authorization: &str, app_id: u64) -> Result<(), String> {
    let jwt = authorization
        .strip_prefix("Bearer ")
        .ok_or("not a bearer token")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err("not a JWT".to_owned());
    }
    let header: Value = serde_json::from_slice(&b64url(parts[0])?).map_err(|e| e.to_string())?;
    let claims: Value = serde_json::from_slice(&b64url(parts[1])?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    if claims["iss"] != app_id {
        return Err(format!("iss {} is not the App", claims["iss"]));
    }
    let now = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let exp = claims["exp"].as_u64().ok_or("no exp")?;
    let iat = claims["iat"].as_u64().ok_or("no iat")?;
    if exp <= now || exp > now + 600 || iat > now {
        return Err(format!("iat {iat} exp {exp} at {now}"));
    }
    Ok(())
}

fn b64url(s: &str) -> Result<Vec<u8>, String> {
    let val = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return Err(format!("bad base64url byte {c}")),
        }
        .into())
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

fn obj<'a>(
    body: Option<&'a Value>,
    allowed: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, String> {
    let o = body
        .and_then(Value::as_object)
        .ok_or("the body is not a JSON object")?;
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unexpected field `{k}`"));
    }
    Ok(o)
}

fn string<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a str, String> {
    o.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{key}` missing or not a string"))
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn query_has(query: &str, pair: &str) -> bool {
    query.split('&').any(|p| p == pair)
}

/// The check run `output` object: title, summary, at most 50 well-formed annotations.
fn check_output(
    o: &serde_json::Map<String, Value>,
) -> Result<(String, String, Vec<Value>), String> {
    let out = obj(o.get("output"), &["title", "summary", "annotations"])?;
    let title = string(out, "title")?.to_owned();
    let summary = string(out, "summary")?.to_owned();
    if title.is_empty() || title.len() > 255 || summary.is_empty() || summary.len() > 65_535 {
        return Err("title or summary empty or too long".to_owned());
    }
    let annotations = match out.get("annotations") {
        None => Vec::new(),
        Some(a) => a.as_array().ok_or("annotations is not an array")?.clone(),
    };
    if annotations.len() > 50 {
        return Err(format!("{} annotations in one request", annotations.len()));
    }
    for a in &annotations {
        let a = obj(
            Some(a),
            &[
                "path",
                "start_line",
                "end_line",
                "start_column",
                "end_column",
                "annotation_level",
                "title",
                "message",
            ],
        )?;
        string(a, "path")?;
        string(a, "message")?;
        let level = string(a, "annotation_level")?;
        if !["notice", "warning", "failure"].contains(&level) {
            return Err(format!("annotation_level {level}"));
        }
        let start = a
            .get("start_line")
            .and_then(Value::as_u64)
            .ok_or("start_line")?;
        let end = a
            .get("end_line")
            .and_then(Value::as_u64)
            .ok_or("end_line")?;
        if start == 0 || end < start {
            return Err(format!("lines {start}..{end}"));
        }
        if (a.contains_key("start_column") || a.contains_key("end_column")) && start != end {
            return Err("columns on a multi-line annotation".to_owned());
        }
    }
    Ok((title, summary, annotations))
}

fn conclusion(o: &serde_json::Map<String, Value>) -> Result<String, String> {
    if string(o, "status")? != "completed" {
        return Err("status is not completed".to_owned());
    }
    let c = string(o, "conclusion")?;
    if !["success", "failure", "neutral"].contains(&c) {
        return Err(format!("conclusion {c}"));
    }
    Ok(c.to_owned())
}

fn route(
    h: &mut Hub,
    method: &str,
    segs: &[&str],
    query: &str,
    body: Option<&Value>,
) -> Result<Response, String> {
    // /app/installations/{id}/access_tokens
    if let ["app", "installations", id, "access_tokens"] = segs {
        if method != "POST" {
            return Err("not a POST".to_owned());
        }
        id.parse::<u64>().map_err(|_| "installation id")?;
        obj(body, &["repositories", "repository_ids"])?;
        let Expect::App { token_ttl, .. } = h.expect else {
            return Err("an installation token asked for in token mode".to_owned());
        };
        let n = h.tokens.len() + 1;
        let token = format!("ghs_installation_token_{n}");
        h.tokens.push((token.clone(), Instant::now()));
        let expires = chrono::Utc::now()
            + chrono::Duration::from_std(token_ttl).map_err(|e| e.to_string())?;
        return Ok(reply(
            201,
            json!({
                "token": token,
                "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "permissions": {"checks": "write", "pull_requests": "write"},
                "repository_selection": "selected"
            }),
        ));
    }
    // Who the credentials are: a token's owner, or the App (with its JWT).
    match (method, segs, &h.expect) {
        ("GET", ["user"], Expect::Token(_)) => {
            return Ok(reply(
                200,
                json!({"login": TOKEN_USER, "id": 583231, "type": "User", "site_admin": false}),
            ));
        }
        ("GET", ["user"], Expect::App { .. }) => {
            return Err("GET /user with an App's credentials (GitHub answers 403)".to_owned());
        }
        ("GET", ["app"], Expect::App { id, .. }) => {
            return Ok(reply(
                200,
                json!({"id": id, "slug": APP_SLUG, "name": "rollgate",
                       "owner": {"login": "Codertocat", "type": "User"}}),
            ));
        }
        ("GET", ["app"], Expect::Token(_)) => {
            return Err("GET /app with a token (GitHub answers 401)".to_owned());
        }
        _ => {}
    }
    let ["repos", owner, name, rest @ ..] = segs else {
        return Err("not a repository route".to_owned());
    };
    if format!("{owner}/{name}") != h.repo {
        return Err(format!("repository {owner}/{name}, not {}", h.repo));
    }
    match (method, rest) {
        ("GET", ["installation"]) => Ok(reply(200, json!({"id": 1, "app_id": 1}))),
        ("GET", ["commits", sha, "check-runs"]) => {
            if !is_sha(sha) || !query_has(query, "check_name=rollgate") {
                return Err("check runs listed without the sha or check_name=rollgate".to_owned());
            }
            let runs: Vec<Value> = h
                .check_runs
                .iter()
                .filter(|r| r.head_sha == *sha)
                .rev()
                .map(|r| {
                    json!({"id": r.id, "name": "rollgate", "head_sha": r.head_sha,
                           "status": "completed", "conclusion": r.conclusion,
                           "output": {"title": r.title, "summary": r.summary,
                                      "annotations_count": r.annotations.len()}})
                })
                .collect();
            Ok(reply(
                200,
                json!({"total_count": runs.len(), "check_runs": runs}),
            ))
        }
        ("GET", ["commits", sha, "pulls"]) => {
            if !is_sha(sha) {
                return Err("pulls of a non-sha".to_owned());
            }
            let pulls: Vec<Value> = h
                .merged
                .get(*sha)
                .map(|n| {
                    json!({"number": n, "state": "closed",
                           "merged_at": "2019-05-15T15:20:33Z", "merge_commit_sha": sha})
                })
                .into_iter()
                .collect();
            Ok(reply(200, Value::Array(pulls)))
        }
        ("POST", ["check-runs"]) | ("PATCH", ["check-runs", _])
            if h.refuse_check_runs && matches!(h.expect, Expect::Token(_)) =>
        {
            Ok(reply(
                403,
                json!({"message": "You must authenticate via a GitHub App.",
                       "documentation_url": "https://docs.github.com/rest/checks/runs#create-a-check-run",
                       "status": "403"}),
            ))
        }
        ("POST", ["check-runs"]) => {
            let o = obj(
                body,
                &["name", "head_sha", "status", "conclusion", "output"],
            )?;
            if string(o, "name")? != "rollgate" {
                return Err("the check run is not named rollgate".to_owned());
            }
            let sha = string(o, "head_sha")?.to_owned();
            if !is_sha(&sha) {
                return Err("head_sha".to_owned());
            }
            let conclusion = conclusion(o)?;
            let (title, summary, annotations) = check_output(o)?;
            let id = h.id();
            h.check_runs.push(CheckRun {
                id,
                head_sha: sha,
                conclusion,
                title,
                summary,
                annotations,
                updates: 0,
            });
            Ok(reply(201, json!({"id": id, "name": "rollgate"})))
        }
        ("PATCH", ["check-runs", id]) => {
            let id: u64 = id.parse().map_err(|_| "check run id")?;
            let o = obj(body, &["name", "status", "conclusion", "output"])?;
            let (title, summary, annotations) = check_output(o)?;
            let update = if o.contains_key("status") {
                Some(conclusion(o)?)
            } else {
                None
            };
            let run = h
                .check_runs
                .iter_mut()
                .find(|r| r.id == id)
                .ok_or("no such check run")?;
            if let Some(c) = update {
                run.conclusion = c;
            }
            run.title = title;
            run.summary = summary;
            run.annotations.extend(annotations);
            run.updates += 1;
            Ok(reply(200, json!({"id": id, "name": "rollgate"})))
        }
        ("GET", ["issues", n, "comments"]) => {
            let n: u64 = n.parse().map_err(|_| "issue number")?;
            if !query_has(query, "per_page=100") {
                return Err("comments listed without per_page=100".to_owned());
            }
            let page: usize = query
                .split('&')
                .find_map(|p| p.strip_prefix("page="))
                .and_then(|p| p.parse().ok())
                .unwrap_or(1);
            let list: Vec<Value> = h
                .comments_on(n)
                .iter()
                .skip((page.max(1) - 1) * 100)
                .take(100)
                .map(|c| {
                    let app = c.app.map(|id| {
                        let slug = if c.user == BOT {
                            APP_SLUG
                        } else {
                            "another-app"
                        };
                        json!({"id": id, "slug": slug})
                    });
                    json!({"id": c.id, "body": c.body,
                           "user": {"login": c.user, "type": c.kind},
                           "performed_via_github_app": app,
                           "author_association": "NONE"})
                })
                .collect();
            Ok(reply(200, Value::Array(list)))
        }
        ("POST", ["issues", n, "comments"]) => {
            let n: u64 = n.parse().map_err(|_| "issue number")?;
            let o = obj(body, &["body"])?;
            let text = string(o, "body")?.to_owned();
            if text.trim().is_empty() {
                return Err("an empty comment".to_owned());
            }
            let id = h.id();
            let (user, kind, app) = h.me();
            h.comments.entry(n).or_default().push(Comment {
                id,
                user,
                kind,
                app,
                body: text.clone(),
                edits: 0,
            });
            Ok(reply(201, json!({"id": id, "body": text})))
        }
        ("PATCH", ["issues", "comments", id]) => {
            let id: u64 = id.parse().map_err(|_| "comment id")?;
            let o = obj(body, &["body"])?;
            let text = string(o, "body")?.to_owned();
            let (me, kind, _) = h.me();
            let c = h
                .comments
                .values_mut()
                .flatten()
                .find(|c| c.id == id)
                .ok_or("no such comment")?;
            // GitHub would let a writer edit anyone's comment: rollgate must not.
            if c.user != me || c.kind != kind {
                return Err(format!("edited {}'s comment (rollgate is {me})", c.user));
            }
            c.body = text;
            c.edits += 1;
            Ok(reply(200, json!({"id": id})))
        }
        ("GET", ["collaborators", login, "permission"]) => match h.permissions.get(*login) {
            Some(p) => Ok(reply(
                200,
                json!({"permission": p, "role_name": p, "user": {"login": login}}),
            )),
            None => Ok(not_found()),
        },
        ("POST", ["statuses", sha]) => {
            if !is_sha(sha) {
                return Err("status on a non-sha".to_owned());
            }
            let o = obj(body, &["state", "context", "description", "target_url"])?;
            let state = string(o, "state")?;
            if !["pending", "success", "failure", "error"].contains(&state) {
                return Err(format!("state {state}"));
            }
            string(o, "context")?;
            if string(o, "description")?.chars().count() > 140 {
                return Err("description over 140 characters".to_owned());
            }
            let mut v = Value::Object(o.clone());
            v["sha"] = json!(sha);
            h.statuses.push(v);
            Ok(reply(201, json!({"id": h.next_id, "state": state})))
        }
        _ => Err("no such route in the fake (an unexpected call)".to_owned()),
    }
}
