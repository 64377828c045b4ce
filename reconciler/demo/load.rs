//! The demo's load generator: real HTTP requests at a steady rate, counted by answer.
//!
//! Connection per request (HTTP/1.0), paced per thread, so the proxy sees realistic
//! traffic and the counts show what users would have seen during each stage.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Answers seen, by version (from the body) or by failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: BTreeMap<String, u64>,
    pub server_errors: u64,
    pub failed: u64,
}

impl Counts {
    pub fn summary(&self) -> String {
        let ok: Vec<String> = self.ok.iter().map(|(v, n)| format!("{v}={n}")).collect();
        format!(
            "{} ok, {} errors (5xx), {} failed",
            if ok.is_empty() {
                "0".to_owned()
            } else {
                ok.join(" ")
            },
            self.server_errors,
            self.failed
        )
    }
}

#[derive(Debug)]
pub struct Generator {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn one(addr: SocketAddr) -> Result<(u16, String), ()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|_| ())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|_| ())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n")
        .map_err(|_| ())?;
    let mut buf = Vec::with_capacity(256);
    s.read_to_end(&mut buf).map_err(|_| ())?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(())?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    Ok((code, body))
}

impl Generator {
    /// Send about `rps` requests per second to `addr` until stopped.
    pub fn start(addr: SocketAddr, rps: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let threads_n = 4u32;
        let per = f64::from(rps.max(1)) / f64::from(threads_n);
        let threads = (0..threads_n)
            .map(|_| {
                let (stop, counts) = (stop.clone(), counts.clone());
                std::thread::spawn(move || {
                    let gap = Duration::from_secs_f64(1.0 / per);
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let result = one(addr);
                        if let Ok(mut c) = counts.lock() {
                            match result {
                                Ok((code, _)) if code >= 500 => c.server_errors += 1,
                                Ok((_, body)) => {
                                    let v = body.rsplit(' ').next().unwrap_or("?").to_owned();
                                    *c.ok.entry(v).or_default() += 1;
                                }
                                Err(()) => c.failed += 1,
                            }
                        }
                        next += gap;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            counts,
            threads,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Stop and return the final counts.
    pub fn stop(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}
