//! Notifications as a receiver meets them (#18): `rollgate run` announces every
//! transition to a CloudEvents webhook (the test's own HTTP receiver, which checks the
//! envelope and the HMAC of every delivery), each once and in order — also when the
//! receiver is down for a while, and when the daemon is SIGKILLed after a status
//! commit and started again.

use crate::support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rollgate::model::status::Phase;
use serde_json::Value;
use sha2::Sha256;
use support::Remote;
use support::rollout::{PlanFile, SETTINGS};

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");
const KEY: &str = "test-signing-key";

/// One delivery the receiver accepted: the CloudEvents `id` and `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivery {
    id: String,
    kind: String,
}

/// What every receiver started by a test has accepted, across restarts of the receiver.
type Inbox = Arc<Mutex<Vec<Delivery>>>;

/// A local HTTP receiver on a fixed port; stopped (its port refusing connections)
/// when dropped. Every request is checked: a POST, a valid signature, a CloudEvents
/// 1.0 envelope whose fields agree with its data; a request that fails a check is
/// answered 400 and recorded as `invalid`.
struct Receiver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, inbox: &Inbox, invalid: &Arc<Mutex<Vec<String>>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (inbox, invalid, flag) = (inbox.clone(), invalid.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => match serve(stream) {
                        Ok(d) => inbox.lock().expect("inbox").push(d),
                        Err(why) => invalid.lock().expect("invalid").push(why),
                    },
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Receiver {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read one request, check it, answer 200 (or 400 when it fails a check).
fn serve(mut stream: TcpStream) -> Result<Delivery, String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the headers ended".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or("no content-length")?;
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..];
    let checked = check(
        &head,
        header("x-rollgate-signature"),
        header("content-type"),
        body,
    );
    let status = if checked.is_ok() {
        "200 OK"
    } else {
        "400 Bad Request"
    };
    let _ = stream.write_all(
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    checked
}

fn check(
    head: &str,
    signature: Option<String>,
    content_type: Option<String>,
    body: &[u8],
) -> Result<Delivery, String> {
    if !head.starts_with("POST /events HTTP/1.1\r\n") {
        return Err(format!("not a POST to /events: {head}"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if signature != Some(format!("sha256={want}")) {
        return Err(format!("bad signature {signature:?}"));
    }
    if !content_type.is_some_and(|c| c.starts_with("application/cloudevents+json")) {
        return Err("not application/cloudevents+json".to_owned());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let data = &v["data"];
    let phase = data["phase"].as_str().ok_or("no data.phase")?;
    let id = v["id"].as_str().ok_or("no id")?;
    let ok = v["specversion"] == "1.0"
        && v["type"] == format!("dev.rollgate.rollout.{}", phase.to_ascii_lowercase()).as_str()
        && v["source"] == "rollgate/remote"
        && v["subject"] == data["plan"]
        && v["datacontenttype"] == "application/json"
        && data["commit"] == id
        && id.len() == 40
        && v["time"].as_str().is_some_and(|t| t.ends_with('Z'))
        && [
            "from",
            "candidate",
            "stable",
            "weight",
            "step",
            "reason",
            "verdicts",
        ]
        .iter()
        .all(|k| data.get(*k).is_some());
    if !ok {
        return Err(format!("not the envelope expected: {v}"));
    }
    Ok(Delivery {
        id: id.to_owned(),
        kind: v["type"].as_str().unwrap_or_default().to_owned(),
    })
}

/// A daemon killed (SIGKILL) and reaped when dropped, whatever the test found.
struct Daemon(Child);

impl Daemon {
    fn start(remote: &Remote, port: u16) -> Daemon {
        let child = Command::new(BIN)
            .args(["run", "--journal-targets", "--interval", "1s", "--repo"])
            .arg(&remote.bare)
            .arg("--state-dir")
            .arg(remote.work_dir("state"))
            .env("RUST_LOG", "warn,rollgate::notify=debug")
            .env("EVENTS_URL", format!("http://127.0.0.1:{port}/events"))
            .env("EVENTS_KEY", KEY)
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(remote.work_dir("daemon.log"))
                    .expect("the daemon's log"),
            )
            .spawn()
            .expect("start rollgate run");
        Daemon(child)
    }

    /// SIGKILL: no chance to finish anything.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rollgate.yaml` with the `events` notifier.
fn settings() -> String {
    format!(
        "{SETTINGS}notify:\n  - name: events\n    webhook: {{ urlEnv: EVENTS_URL, signingKeyEnv: EVENTS_KEY }}\n"
    )
}

fn remote_with(plan: &PlanFile) -> Remote {
    Remote::with_files(&[
        ("rollgate.yaml".to_owned(), settings()),
        (plan.path(), plan.yaml()),
    ])
}

/// v2 of `web`: 20%, a 2 s pause, 100%.
fn v2() -> PlanFile {
    PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 20",
        "pause: { duration: 2s }",
        "setWeight: 100",
    ])
}

fn v1() -> PlanFile {
    PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"])
}

/// Wait until `cond` holds (or fail after `secs`).
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// As `wait_for`, saying `context()` (the daemon's log) when it times out.
fn wait_for_or(
    secs: u64,
    what: &str,
    context: impl Fn() -> String,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn succeeded_with(remote: &Remote, artifact: &str) -> bool {
    remote
        .status("web")
        .is_some_and(|s| s.phase == Phase::Succeeded && s.candidate == artifact)
}

/// The status commits of transitions and the revert commits of `web`, oldest first:
/// what must be announced, as (id, type). A batch commit (one pass, several plans)
/// announces `web`'s own trailer block.
fn announced(remote: &Remote) -> Vec<Delivery> {
    remote
        .rollgate_commits()
        .into_iter()
        .filter(|c| c.author == "rollgate")
        .filter_map(|c| {
            let block = rollgate::writeback::messages::plan_blocks(&c.trailers)
                .into_iter()
                .find(|b| b.first().is_some_and(|(_, plan)| plan == "web"))?;
            let get = |k: &str| {
                block
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.as_str())
            };
            let kind = if get("Rollgate-Rollback-Of").is_some() {
                "reverted".to_owned()
            } else if c.is_status() && get("Rollgate-Step").is_some() {
                get("Rollgate-Phase")?.to_ascii_lowercase()
            } else {
                return None;
            };
            Some(Delivery {
                id: c.sha.clone(),
                kind: format!("dev.rollgate.rollout.{kind}"),
            })
        })
        .collect()
}

/// Every transition arrived, once each, in order, and nothing else arrives after.
fn assert_exactly_once_in_order(remote: &Remote, inbox: &Inbox, invalid: &Arc<Mutex<Vec<String>>>) {
    let want = announced(remote);
    assert!(want.len() >= 4, "a rollout has transitions: {want:?}");
    let log = || std::fs::read_to_string(remote.work_dir("daemon.log")).unwrap_or_default();
    wait_for_or(60, "every transition to arrive", log, || {
        inbox.lock().expect("inbox").len() >= want.len()
    });
    // Give a duplicate the time to show up.
    std::thread::sleep(Duration::from_secs(2));
    let got = inbox.lock().expect("inbox").clone();
    let log = std::fs::read_to_string(remote.work_dir("daemon.log")).unwrap_or_default();
    assert_eq!(
        got, want,
        "deliveries differ from the status commits\n{log}"
    );
    assert!(invalid.lock().expect("invalid").is_empty(), "{invalid:?}");
}

#[test]
fn a_rollouts_transitions_each_arrive_once_in_order() {
    // Given a receiver, and a daemon announcing to it
    let port = support::free_port();
    let (inbox, invalid) = (Inbox::default(), Arc::default());
    let _receiver = Receiver::start(port, &inbox, &invalid);
    let remote = remote_with(&v1());
    let _daemon = Daemon::start(&remote, port);
    // When v1 rolls out, a human pushes a commit that copies a status commit's
    // trailers, and v2 rolls out through its steps
    wait_for(60, "v1 to succeed", || succeeded_with(&remote, "v1"));
    remote.human_commit(
        "notes.txt",
        |_| "not a transition\n".to_owned(),
        "web: Succeeded\n\nRollgate-Plan: web\nRollgate-Phase: Succeeded\nRollgate-Step: 2/2",
    );
    let v2 = v2();
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    wait_for(60, "v2 to succeed", || succeeded_with(&remote, "v2"));
    // Then every transition arrived once, in the order of the status commits, and the
    // human's commit is not one of them
    assert_exactly_once_in_order(&remote, &inbox, &invalid);
}

#[test]
fn a_receiver_down_for_a_while_gets_every_transition_once_when_it_returns() {
    // Given a daemon whose receiver refuses connections
    let port = support::free_port();
    let (inbox, invalid) = (Inbox::default(), Arc::default());
    let remote = remote_with(&v1());
    let _daemon = Daemon::start(&remote, port);
    // When a rollout goes on meanwhile (delivery never holds it up)
    wait_for(60, "v1 to succeed", || succeeded_with(&remote, "v1"));
    let v2 = v2();
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    wait_for(60, "v2 to succeed", || succeeded_with(&remote, "v2"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(inbox.lock().expect("inbox").is_empty());
    // And the receiver comes back
    let _receiver = Receiver::start(port, &inbox, &invalid);
    // Then it gets every transition, once each, in order
    assert_exactly_once_in_order(&remote, &inbox, &invalid);
}

#[test]
fn a_daemon_killed_after_a_status_commit_announces_each_transition_once_after_restart() {
    // Given v1 rolled out and announced
    let port = support::free_port();
    let (inbox, invalid) = (Inbox::default(), Arc::default());
    let remote = remote_with(&v1());
    let receiver = Receiver::start(port, &inbox, &invalid);
    let daemon = Daemon::start(&remote, port);
    wait_for(60, "v1 to succeed", || succeeded_with(&remote, "v1"));
    let before = announced(&remote).len();
    wait_for(30, "v1's transitions to arrive", || {
        inbox.lock().expect("inbox").len() == before
    });
    // When the receiver goes down, v2 starts, and the daemon is SIGKILLed right after
    // its first status commits (their notifications not yet delivered)
    drop(receiver);
    let v2 = v2();
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    wait_for(60, "v2 to pause", || {
        remote
            .status("web")
            .is_some_and(|s| s.phase == Phase::Paused)
    });
    daemon.kill();
    assert!(announced(&remote).len() > before);
    assert_eq!(inbox.lock().expect("inbox").len(), before);
    // And both come back
    let _receiver = Receiver::start(port, &inbox, &invalid);
    let _daemon = Daemon::start(&remote, port);
    wait_for(60, "v2 to succeed", || succeeded_with(&remote, "v2"));
    // Then every transition arrived exactly once, in order: none lost, none repeated
    assert_exactly_once_in_order(&remote, &inbox, &invalid);
}

#[test]
fn a_plan_labelled_not_to_notify_is_never_announced() {
    // Given two plans, `quiet` labelled `rollgate.dev/notify: "false"`
    let port = support::free_port();
    let (inbox, invalid) = (Inbox::default(), Arc::default());
    let _receiver = Receiver::start(port, &inbox, &invalid);
    let mut quiet = PlanFile::new("quiet").steps(&["setWeight: 20", "setWeight: 100"]);
    quiet.labels = "{ team: demo, rollgate.dev/notify: \"false\" }".to_owned();
    quiet.port = 18081;
    let web = v1();
    let remote = Remote::with_files(&[
        ("rollgate.yaml".to_owned(), settings()),
        (web.path(), web.yaml()),
        (quiet.path(), quiet.yaml()),
    ]);
    let _daemon = Daemon::start(&remote, port);
    // When both roll out
    wait_for(60, "v1 to succeed", || succeeded_with(&remote, "v1"));
    wait_for(60, "quiet to succeed", || {
        remote
            .status("quiet")
            .is_some_and(|s| s.phase == Phase::Succeeded)
    });
    let v2 = v2();
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    wait_for(60, "v2 to succeed", || succeeded_with(&remote, "v2"));
    // Then only `web`'s transitions arrive, each once, in order
    assert_exactly_once_in_order(&remote, &inbox, &invalid);
}
