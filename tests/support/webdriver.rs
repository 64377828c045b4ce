//! A real headless Chromium driven over W3C WebDriver (Debian's `chromium` and
//! `chromedriver`), for the dashboard's browser tests (#20).
//!
//! The client is a few JSON requests over plain HTTP/1.1 (one connection each) on loopback (new session,
//! navigate, execute a script, screenshot): no WebDriver crate and its TLS stack.
//! Invariant: nothing outlives the test. `Browser`'s drop ends the session (Chromium
//! quits), stops chromedriver, then kills any process still running with this
//! browser's own `--user-data-dir` in its command line, a failing test included.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where Debian puts them; `ROLLGATE_CHROMIUM` / `ROLLGATE_CHROMEDRIVER` override.
fn binaries() -> Result<(PathBuf, PathBuf), String> {
    let find = |var: &str, names: &[&str]| -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(var) {
            return Some(PathBuf::from(p));
        }
        names.iter().find_map(|n| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(n))
                    .find(|p| p.is_file())
            })
        })
    };
    let chromium = find("ROLLGATE_CHROMIUM", &["chromium", "chromium-browser"])
        .ok_or("no chromium on PATH (Debian: apt-get install chromium)")?;
    let driver = find("ROLLGATE_CHROMEDRIVER", &["chromedriver"])
        .ok_or("no chromedriver on PATH (Debian: apt-get install chromium-driver)")?;
    Ok((chromium, driver))
}

/// A browser, or why there is none. Under `.ci/test` (which installs Chromium and sets
/// `ROLLGATE_REQUIRE_BROWSER=1`) or in CI (`CI` set) there must be one: a missing or
/// broken browser fails the test instead of skipping it.
pub fn browser_or_skip(artifacts: &Path) -> Option<Browser> {
    match Browser::start(artifacts) {
        Ok(b) => Some(b),
        Err(why)
            if std::env::var_os("CI").is_none()
                && std::env::var_os("ROLLGATE_REQUIRE_BROWSER").is_none() =>
        {
            eprintln!("SKIPPED: the browser tests need a headless Chromium: {why}");
            None
        }
        Err(why) => panic!("CI must run the browser tests, but: {why}"),
    }
}

#[derive(Debug)]
pub struct Browser {
    driver: Option<Child>,
    addr: SocketAddr,
    session: Option<String>,
    profile: tempfile::TempDir,
    pub artifacts: PathBuf,
}

impl Browser {
    pub fn start(artifacts: &Path) -> Result<Browser, String> {
        let (chromium, driver_bin) = binaries()?;
        let port = super::free_port();
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::create_dir_all(artifacts).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(artifacts.join("chromedriver.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", driver_bin.display()))?;
        let mut b = Browser {
            driver: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: None,
            profile,
            artifacts: artifacts.to_owned(),
        };
        // chromedriver answers /status once it listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.raw("GET", "/status", None).is_err() {
            if Instant::now() > deadline {
                return Err("chromedriver did not answer within 20 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1280,1000".to_owned(),
            format!("--user-data-dir={}", b.profile.path().display()),
        ];
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium.to_string_lossy(), "args": args }
            }}
        });
        let v = b.raw("POST", "/session", Some(&caps))?;
        let id = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session: {v}"))?;
        b.session = Some(id.to_owned());
        Ok(b)
    }

    /// One WebDriver request; the `value` of an error answer is the error.
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        // chromedriver keeps the connection open whatever the request says: read the
        // headers, then exactly `Content-Length` bytes.
        let mut answer = Vec::new();
        let mut buf = [0u8; 16384];
        let (head, json) = loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                });
                let head_len = head.len() + 4;
                match length {
                    Some(len) if answer.len() - head_len >= len || n == 0 => {
                        let body = String::from_utf8_lossy(&answer[head_len..]).into_owned();
                        break (head.to_owned(), body);
                    }
                    None if n == 0 => break (head.to_owned(), body.to_owned()),
                    _ => {}
                }
            }
            if n == 0 {
                return Err(format!("no answer: {text}"));
            }
        };
        let v: Value = serde_json::from_str(&json).map_err(|e| format!("{e}: {json}"))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!("{method} {path}: {v}"));
        }
        Ok(v)
    }

    fn call(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let id = self.session.as_deref().unwrap_or("none");
        match self.raw(method, &format!("/session/{id}{what}"), body) {
            Ok(v) => v["value"].clone(),
            Err(e) => panic!("webdriver: {e}"),
        }
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Run `script` (a function body: `return …`) in the page.
    pub fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// Poll `script` until it returns something truthy; panics with `what` after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("timeout-{}", what.replace([' ', '/'], "-")));
                panic!(
                    "timed out waiting for {what}; page: {}",
                    self.js("return document.body.innerText")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the viewport, saved as `<artifacts>/<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call("GET", "/screenshot", None);
        let png = decode_base64(b64.as_str().unwrap_or_default());
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = self.raw("DELETE", &format!("/session/{id}"), None);
        }
        if let Some(mut c) = self.driver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever still runs with this profile (a Chromium whose driver died first).
        let profile = self.profile.path().to_string_lossy().into_owned();
        for pid in processes_with_arg(&profile) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Pids of the processes whose command line holds `needle`.
pub fn processes_with_arg(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    out
}
