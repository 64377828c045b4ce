//! The data plane: the `local` target's proxies and workload processes, in a process
//! that outlives the daemon.
//!
//! ```text
//!  rollgate run (control plane) ──unix socket DIR/dataplane.sock──▶ rollgate dataplane
//!     decides, writes Git                  (JSON lines, wire.rs)      proxies + workloads
//!     dies, restarts, upgrades freely                                 keep serving meanwhile
//! ```
//! `serve(DIR)` runs a `targets::local::LocalTarget` behind a Unix socket. The daemon's
//! `client::DataPlaneTarget` starts it when none answers (in its own process group, so
//! a Ctrl-C or SIGTERM of the daemon does not reach it), adopts a running one by its
//! `Identity`, and drives it with the same `Op`s the in-process target runs. Killing the
//! daemon, SIGKILL included, moves no traffic: routes and weights stay as last set, and
//! the builtin metrics keep counting here, so no analysis loses samples.
//! Stopping: SIGTERM or SIGINT to the data plane, or `rollgate dataplane stop`, drains
//! and stops every workload and proxy. SIGTERM to the daemon stops the control plane only.
//! A data plane whose socket file is removed (its folder deleted) stops as well, and so
//! does one started for a single process (`--owner-pid`, the demo) when that process is
//! gone, however it ended.
//! Invariants: one data plane per DIR (an exclusive lock on `DIR/dataplane.lock` held for
//! its whole life); leftovers of an earlier data plane are stopped by identity before
//! anything starts; the socket and DIR are private to the user (0600/0700); the data
//! plane runs with a cleared environment, so it holds none of the daemon's secrets.

pub mod client;
pub mod identity;
pub mod wire;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use self::identity::Identity;
use self::wire::{CountedWire, PROTOCOL, Reply, Request};
use crate::metrics::builtin::Registry;
use crate::targets::local::{LocalTarget, Op, Spec};

/// The socket the data plane of `dir` listens on.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("dataplane.sock")
}

/// The data plane's own pid file (its `Identity`).
pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("dataplane.pid")
}

fn lock_path(dir: &Path) -> PathBuf {
    dir.join("dataplane.lock")
}

/// A Unix socket path is at most 107 bytes on Linux.
const MAX_SOCKET_PATH: usize = 107;

/// Run the data plane of `dir` until it is told to stop (a `Stop` request, SIGTERM or
/// SIGINT), its socket is removed, or `owner` (when given: the process that started it
/// for itself, like `rollgate demo`) is gone. Errors when another data plane already
/// owns `dir`.
pub fn serve(dir: &Path, owner: Option<u32>) -> Result<()> {
    let owner = owner
        .map(|pid| Identity::of(pid).with_context(|| format!("the owner process {pid} is gone")))
        .transpose()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))?;
    let sock = socket_path(dir);
    if sock.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "the data plane's socket path {} is longer than {MAX_SOCKET_PATH} bytes; give a shorter state folder",
            sock.display()
        );
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(dir))
        .with_context(|| format!("cannot open {}", lock_path(dir).display()))?;
    if lock.try_lock().is_err() {
        let who = Identity::read(&pid_path(dir))
            .map_or_else(String::new, |i| format!(" (pid {})", i.pid));
        bail!("a data plane already runs on {}{who}", dir.display());
    }
    let registry: Registry = Arc::default();
    // Stops what an earlier data plane left (matched by identity) before anything starts.
    let target = Arc::new(Mutex::new(LocalTarget::new(
        dir.to_path_buf(),
        registry.clone(),
    )));
    let me = Identity::current().context("cannot read this process's identity")?;
    me.write(&pid_path(dir))
        .with_context(|| format!("cannot write {}", pid_path(dir).display()))?;
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(dir = %dir.display(), pid = me.pid, "data plane listening");

    let plane = Arc::new(Plane {
        dir: dir.to_path_buf(),
        target,
        lock: Mutex::new(Some(lock)),
    });
    on_signal_stop(plane.clone())?;
    {
        // A data plane whose socket is gone (its state folder was deleted) can never be
        // reached again: it stops its workloads instead of serving on unsupervised.
        let plane = plane.clone();
        std::thread::Builder::new()
            .name("rollgate-dataplane-socket".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    if !socket_path(&plane.dir).exists() {
                        tracing::warn!(dir = %plane.dir.display(), "the data plane's socket is gone");
                        plane.finish();
                    }
                    if owner.as_ref().is_some_and(|o| !o.is_alive()) {
                        tracing::warn!("the process that owns this data plane is gone");
                        plane.finish();
                    }
                }
            })?;
    }
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (plane, registry, me) = (plane.clone(), registry.clone(), me.clone());
        std::thread::spawn(move || {
            if handle(conn, &plane.target, &registry, &me) {
                plane.finish();
            }
        });
    }
    Ok(())
}

/// What the stop paths share: the target to shut down and the files to remove.
#[derive(Debug)]
struct Plane {
    dir: PathBuf,
    target: Arc<Mutex<LocalTarget>>,
    lock: Mutex<Option<std::fs::File>>,
}

impl Plane {
    /// Drain and stop every workload and proxy, remove the socket and pid file, and exit
    /// the process. Works without the socket (its folder may be gone).
    fn finish(&self) -> ! {
        tracing::info!("data plane stopping: draining and stopping every workload");
        let _ = std::fs::remove_file(socket_path(&self.dir));
        // Holding the target's lock to the end: no request runs after this.
        let mut target = self.target.lock().unwrap_or_else(PoisonError::into_inner);
        target.shutdown();
        let _ = std::fs::remove_file(pid_path(&self.dir));
        drop(
            self.lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        tracing::info!("data plane stopped");
        std::process::exit(0)
    }
}

/// SIGTERM and SIGINT stop the data plane as a `Stop` request would.
fn on_signal_stop(plane: Arc<Plane>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let mut term = {
        let _g = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?
    };
    let mut int = {
        let _g = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?
    };
    std::thread::Builder::new()
        .name("rollgate-dataplane-signals".to_owned())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            });
            plane.finish();
        })?;
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Serve one connection; true when it asked the data plane to stop.
fn handle(
    conn: UnixStream,
    target: &Mutex<LocalTarget>,
    registry: &Registry,
    me: &Identity,
) -> bool {
    let Ok(mut out) = conn.try_clone() else {
        return false;
    };
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let Ok(line) = line else { return false };
        let (reply, stop) = match serde_json::from_str::<Request>(&line) {
            Err(e) => (
                Reply::BadRequest {
                    error: e.to_string(),
                },
                false,
            ),
            Ok(Request::Hello) => (
                Reply::Hello {
                    protocol: PROTOCOL,
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    identity: me.clone(),
                },
                false,
            ),
            Ok(Request::Run { spec, op }) => {
                let spec = Spec::from(*spec);
                let op = Op::from(op);
                let outcome = target
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .run(&spec, &op);
                (Reply::from(&outcome), false)
            }
            Ok(Request::Window {
                plan,
                version,
                window_ms,
            }) => {
                let stats = registry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&plan)
                    .cloned();
                let counted = stats.map(|s| {
                    CountedWire::new(
                        &s.window(&version, Duration::from_millis(window_ms)),
                        s.started_at(),
                    )
                });
                (Reply::Window { counted }, false)
            }
            Ok(Request::Stop) => (Reply::Stopping, true),
        };
        if writeln!(out, "{}", json(&reply)).is_err() {
            return stop;
        }
        if stop {
            return true;
        }
    }
    false
}

fn holds_plane(dir: &Path) -> bool {
    socket_path(dir).exists() || pid_path(dir).exists()
}

/// The data plane folders under `dir`: `dir` itself when it holds a data plane, else
/// `dir/local` (the demo's) and every `dir/local/<target>` (a `rollgate run --state-dir`)
/// that does.
pub fn planes_under(dir: &Path) -> Vec<PathBuf> {
    if holds_plane(dir) {
        return vec![dir.to_path_buf()];
    }
    let local = dir.join("local");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&local)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([local.clone()])
        .filter(|p| holds_plane(p))
        .collect();
    out.sort();
    out
}

/// Stop the data plane of `dir` and everything it runs; waits until it has exited.
/// `Ok(false)` when none was running.
pub fn stop(dir: &Path, timeout: Duration) -> Result<bool> {
    let recorded = Identity::read(&pid_path(dir));
    let asked = client::request(dir, &Request::Stop).is_ok();
    let deadline = std::time::Instant::now() + timeout;
    if let Some(id) = &recorded {
        while id.is_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if id.is_alive() {
            // It did not finish its drain in time (or does not answer): terminate it.
            id.stop(Duration::from_secs(2));
        }
    }
    let alive = recorded.as_ref().is_some_and(Identity::is_alive);
    if alive {
        bail!("the data plane of {} did not stop", dir.display());
    }
    if !asked && recorded.is_some() {
        // It had died (SIGKILL): its workloads may still run. A short-lived data plane
        // stops them by identity, as a new one would.
        let _ = std::fs::remove_file(socket_path(dir));
        let target = LocalTarget::new(dir.to_path_buf(), Registry::default());
        drop(target);
        let _ = std::fs::remove_file(pid_path(dir));
    }
    Ok(asked || recorded.is_some())
}
