//! Commit trailers, read and written.
//!
//! Read: any bytes as a commit message, committed (into memory) and read back the way
//! `rollgate history` reads a repository (`history::collect`, then `render_text`) and
//! the way the reconciler tells its own commits from a human's (`CommitInfo`): never a
//! panic, whatever a human pushes.
//!
//! Written: the same bytes, as the facts of a status, revert or restore commit
//! (`writeback::messages`), in the domain the engine gives them (plan names are DNS
//! labels, artifacts one word, revisions commit ids; reasons and verdicts any text):
//! the commit message rollgate writes reads back as the trailers it meant, and as its
//! own commit; several status commits batched into one (`batch_commit`) read back as
//! one entry per plan, in order.
//!
//! Seeds: a few commit messages (`fuzz/seed.sh`).
#![no_main]

use chrono::DateTime;
use git2::{Odb, Oid, Repository, Signature, Time};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rollgate::engine::{Revert, Transition};
use rollgate::github::webhook::is_sha;
use rollgate::history;
use rollgate::model::plan::FirstRollout;
use rollgate::model::status::{Evidence, Judgement, Phase, Status, Verdict};
use rollgate::model::validate::is_dns_label;
use rollgate::source::git::CommitInfo;
use rollgate::writeback::CommitSpec;
use rollgate::writeback::messages::{self as m, restore_commit, revert_commit, status_commit};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// A repository with no files: objects in memory only.
fn repo() -> Repository {
    let repo = Repository::from_odb(Odb::new().expect("odb")).expect("repository");
    repo.odb()
        .expect("odb")
        .add_new_mempack_backend(1000)
        .expect("mempack");
    repo
}

/// Commit `message` (no parent, empty tree); `None` when Git refuses it (a NUL).
fn commit(repo: &Repository, message: &str) -> Option<Oid> {
    let tree = repo.treebuilder(None).ok()?.write().ok()?;
    let tree = repo.find_tree(tree).ok()?;
    let sig = Signature::new("fuzz", "fuzz@example.invalid", &Time::new(0, 0)).ok()?;
    repo.commit(None, &sig, &sig, message, &tree, &[]).ok()
}

/// The trailers of commit `id`, as `GitSource::commit_info` reads them: from the message
/// Git stored (libgit2 drops a message's leading newlines, so it is not always the
/// message committed).
fn commit_info(repo: &Repository, id: Oid) -> CommitInfo {
    let c = repo.find_commit(id).expect("the commit just made");
    let message = c.message().unwrap_or("");
    let trailers = git2::message_trailers_strs(message)
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    CommitInfo {
        id,
        summary: String::new(),
        author: String::new(),
        time: 0,
        trailers,
    }
}

fn read(repo: &Repository, message: &str) {
    let Some(id) = commit(repo, message) else {
        assert!(message.contains('\0'), "git refused {message:?}");
        return;
    };
    let entries = history::collect(repo, id, None).expect("history of one commit");
    let _ = history::render_text(&entries);
    serde_json::to_string(&entries).expect("entries serialise");
    let info = commit_info(repo, id);
    assert_eq!(
        info.is_rollgate(),
        info.trailer(m::PLAN).is_some() && info.trailer(m::COMMAND).is_none()
    );
    // One entry per `Rollgate-Plan` trailer (a batch commit has several), in order.
    let plans: Vec<&str> = info
        .trailers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(m::PLAN))
        .map(|(_, v)| v.as_str())
        .collect();
    let read: Vec<&str> = entries.iter().map(|e| e.plan.as_str()).collect();
    assert_eq!(read, plans, "{message:?}");
    if let Some(e) = entries.first() {
        assert_eq!(info.trailer(m::PLAN), Some(e.plan.as_str()));
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Status {
        phase: u8,
        transition: Option<Step>,
        acked: bool,
    },
    Revert {
        stable: Option<String>,
    },
    Restore {
        stable: String,
    },
}

#[derive(Arbitrary, Debug)]
struct Step {
    from: Option<u8>,
    step: (u8, u8),
    verdicts: Vec<String>,
    first_rollout: Option<bool>,
    analysis_restarted_at: Option<i64>,
}

#[derive(Arbitrary, Debug)]
struct Facts {
    kind: Kind,
    plan: String,
    candidate: String,
    weight: u8,
    reason: String,
    evidence: Vec<(String, Option<String>)>,
    skip_ci: bool,
}

fn phase(i: u8) -> Phase {
    Phase::ALL[usize::from(i) % Phase::ALL.len()]
}

/// An artifact as validation lets it through: one word of at most 512 bytes.
fn artifact(s: String) -> String {
    let ok =
        !s.is_empty() && s.len() <= 512 && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok { s } else { "v2".to_owned() }
}

fn spec(f: Facts) -> Option<(CommitSpec, &'static str)> {
    let plan = if is_dns_label(&f.plan) {
        f.plan
    } else {
        "web".to_owned()
    };
    let candidate = artifact(f.candidate);
    let revert = || Revert {
        of_revision: SHA.to_owned(),
        reason: f.reason.clone(),
        evidence: f
            .evidence
            .iter()
            .map(|(check, reason)| Judgement {
                verdict: match reason {
                    Some(r) => Verdict::Fail { reason: r.clone() },
                    None => Verdict::Pass,
                },
                evidence: Evidence {
                    check: check.clone(),
                    value: None,
                    min: None,
                    max: None,
                    samples: 0,
                    at: DateTime::UNIX_EPOCH,
                    comparison: None,
                },
            })
            .collect(),
    };
    Some(match f.kind {
        Kind::Status {
            phase: p,
            transition,
            acked,
        } => {
            let mut status = Status::pending(&plan, &candidate, SHA);
            status.phase = phase(p);
            status.weight = f.weight % 101;
            let t = transition.map(|t| Transition {
                from: t.from.map(phase),
                to: status.phase,
                step: (usize::from(t.step.0), usize::from(t.step.1)),
                reason: f.reason.clone(),
                verdicts: t.verdicts,
                first_rollout: t.first_rollout.map(|d| {
                    if d {
                        FirstRollout::Direct
                    } else {
                        FirstRollout::Steps
                    }
                }),
                analysis_restarted_at: t
                    .analysis_restarted_at
                    .and_then(|s| DateTime::from_timestamp(s, 0)),
            });
            let acked = acked.then_some(SHA);
            (
                status_commit(&status, t.as_ref(), acked, String::new()),
                "transition",
            )
        }
        Kind::Revert { stable } => {
            let stable = stable.map(artifact);
            (
                revert_commit(&plan, stable.as_deref(), &revert()).ok()?,
                "revert",
            )
        }
        Kind::Restore { stable } => (
            restore_commit(
                &plan,
                "plans/web.yaml",
                String::new(),
                &artifact(stable),
                &revert(),
            ),
            "revert",
        ),
    })
}

/// What Git keeps of a trailer value rollgate writes: one line, trimmed.
fn as_read(v: &str) -> String {
    let v = v.replace(['\n', '\r'], " ").trim().to_owned();
    if v.is_empty() { "-".to_owned() } else { v }
}

fn write(repo: &Repository, data: &[u8]) {
    let Ok((facts, more)) = <(Facts, Vec<Facts>)>::arbitrary_take_rest(Unstructured::new(data))
    else {
        return;
    };
    let skip_ci = facts.skip_ci;
    let Some(first) = spec(facts) else {
        return;
    };
    // A pass that moves several rollouts writes their status commits as one batch
    // (`messages::batch_commit`); reverts and restores are never batched.
    let mut parts = vec![first];
    if parts[0].1 == "transition" {
        parts.extend(
            more.into_iter()
                .take(3)
                .filter_map(spec)
                .filter(|(_, kind)| *kind == "transition"),
        );
    }
    let plans: Vec<String> = parts.iter().map(|(s, _)| plan_of(s)).collect();
    let kind = parts[0].1;
    let n = parts.len();
    let spec = m::batch_commit(parts.into_iter().map(|(s, _)| s).collect()).expect("a spec");
    assert!(
        spec.trailers
            .iter()
            .all(|(k, _)| k.starts_with("Rollgate-"))
    );
    let message = spec.message(skip_ci);
    if message.contains('\0') {
        return; // Git refuses the commit: the writer reports it
    }
    // libgit2 reads an empty value as "\n": compare what is left of a value, trimmed.
    let read: Vec<(String, String)> = git2::message_trailers_strs(&message)
        .expect("trailers")
        .iter()
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    let meant: Vec<(String, String)> = spec
        .trailers
        .iter()
        .map(|(k, v)| (k.clone(), as_read(v)))
        .collect();
    assert_eq!(read, meant, "{message:?}");
    let id = commit(repo, &message).expect("a commit");
    let info = commit_info(repo, id);
    assert!(info.is_rollgate(), "{message:?}");
    let entries = history::collect(repo, id, None).expect("history");
    assert_eq!(entries.len(), n, "{message:?}");
    let read: Vec<&str> = entries.iter().map(|e| e.plan.as_str()).collect();
    assert_eq!(read, plans, "{message:?}");
    for e in &entries {
        assert_eq!(e.kind, kind, "{message:?}");
        assert!(is_sha(e.revision.as_deref().unwrap_or("")));
    }
    let _ = history::render_text(&entries);
}

/// The plan a single-plan spec is about: its `Rollgate-Plan` trailer.
fn plan_of(spec: &CommitSpec) -> String {
    spec.trailers
        .iter()
        .find(|(k, _)| k == m::PLAN)
        .map(|(_, v)| v.clone())
        .expect("every spec names its plan")
}

fuzz_target!(|data: &[u8]| {
    let repo = repo();
    read(&repo, &String::from_utf8_lossy(data));
    write(&repo, data);
});
