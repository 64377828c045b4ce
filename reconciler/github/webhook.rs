//! The pure half of the GitHub webhook receiver: the signature, the deliveries already
//! seen, typed events from GitHub's payload shapes, and `/rollgate` comment commands.
//!
//! Nothing here does I/O or reads a clock (times are arguments), so every hostile input
//! can be tested directly. Invariants: the signature is compared in constant time
//! (`hmac`'s `verify_slice`) before the body is parsed; parsing is total: any byte
//! string gives an `Event` or a `ParseError`, never a panic; fields rollgate does not
//! use are ignored, fields it does use are type-checked.
//!
//! One job over 600 lines, kept in one file: reading GitHub deliveries: verify, dedupe,
//! parse; half of it is tests over recorded payloads.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::engine::Command;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";

/// The largest body accepted. GitHub caps payloads at 25 MB, but the events rollgate
/// reads are far smaller (a push lists at most 20 commits); bigger bodies get 413.
pub const MAX_BODY: usize = 2 << 20;

/// How many delivery ids are remembered, and for how long (GitHub redelivers a
/// failed delivery with the same id, by hand, within days; replays older than that
/// are also stale for every other reason).
pub const DELIVERIES_KEPT: usize = 10_000;
pub const DELIVERIES_TTL: Duration = Duration::from_secs(3 * 24 * 3600);

/// How old a comment may be when its command is acted on (by the comment's own
/// `created_at`). The memory of delivery ids dies with the process and the look-up of a
/// comment's command commit covers the branch's last commits only, so an old comment
/// delivered again (a restart, a redelivery by hand, a replay) could otherwise act twice.
pub const MAX_COMMENT_AGE: Duration = Duration::from_secs(10 * 60);

/// Whether a comment written at `created_at` may still be acted on at `now`: at most
/// [`MAX_COMMENT_AGE`] old, and not more than that ahead of `now` either (a clock that
/// far off is no clock to judge by).
pub fn is_fresh(created_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    let Ok(bound) = chrono::TimeDelta::from_std(MAX_COMMENT_AGE) else {
        return false;
    };
    let age = now.signed_duration_since(created_at);
    -bound <= age && age <= bound
}

/// `sha256=<hex>`: the `X-Hub-Signature-256` GitHub sends for `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// Whether `header` (the `X-Hub-Signature-256` value) signs `body` under `secret`.
/// The comparison of the MACs takes the same time wherever they differ.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = mac(secret);
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Delivery ids seen recently: a bounded set with a time to live. A replayed delivery
/// (same `X-GitHub-Delivery`) is answered and ignored, so it has no second effect.
#[derive(Debug)]
pub struct Deliveries {
    cap: usize,
    ttl: Duration,
    order: VecDeque<(String, Instant)>,
    seen: HashSet<String>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Self::new(DELIVERIES_KEPT, DELIVERIES_TTL)
    }
}

impl Deliveries {
    pub fn new(cap: usize, ttl: Duration) -> Self {
        Self {
            cap: cap.max(1),
            ttl,
            order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// Remember `id`; true when it was not seen (within the TTL and the last `cap` ids).
    pub fn first_time(&mut self, id: &str, now: Instant) -> bool {
        while let Some((old, at)) = self.order.front() {
            if self.order.len() < self.cap && now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            self.seen.remove(old);
            self.order.pop_front();
        }
        if self.seen.contains(id) {
            return false;
        }
        self.seen.insert(id.to_owned());
        self.order.push_back((id.to_owned(), now));
        true
    }

    /// Forget `id` (its delivery was not taken in, so a redelivery must be).
    pub fn forget(&mut self, id: &str) {
        if self.seen.remove(id) {
            self.order.retain(|(x, _)| x != id);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A delivery id as GitHub sends it (a GUID); anything else is refused before it is stored.
pub fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// An event rollgate acts on, or one it answers and ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ping,
    Push(Push),
    PullRequest(PullRequest),
    Comment(Comment),
    /// Any other event or action: answered 2xx, nothing done.
    Ignored {
        event: String,
        action: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub repo: String,
    /// `refs/heads/<branch>` (or a tag).
    pub git_ref: String,
    pub after: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub repo: String,
    /// `opened`, `synchronize` or `reopened` (other actions are `Event::Ignored`).
    pub action: String,
    pub number: u64,
    pub head_sha: String,
    pub base_ref: String,
    /// The head lives in another repository (or one since deleted): previews only.
    pub fork: bool,
    pub installation: Option<u64>,
    /// The pull request's labels, for the policies' `change.labels` (an `emergency`
    /// label lets a critical plan through a closed window); at most
    /// [`MAX_LABELS`] of at most 100 characters each.
    pub labels: Vec<String>,
}

/// How many of a pull request's labels are passed on (GitHub allows 100).
pub const MAX_LABELS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub repo: String,
    /// The comment's id: unique in the repository, the same on every redelivery, so a
    /// command commit records it (`Rollgate-Comment`) and is never made twice.
    pub id: u64,
    /// The issue or pull request the comment is on.
    pub number: u64,
    pub is_pull_request: bool,
    pub author: String,
    pub author_is_bot: bool,
    pub body: String,
    pub installation: Option<u64>,
    /// When it was written (GitHub's clock): a command is acted on only while fresh
    /// ([`is_fresh`]).
    pub created_at: DateTime<Utc>,
}

/// Why a body was refused (answered 400 and logged).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the `{event}` payload does not have the expected shape: {message}")]
    Shape { event: String, message: String },
}

// The wire shapes: only the fields rollgate reads (serde ignores the rest).
#[derive(Deserialize)]
struct WireRepository {
    full_name: String,
}

#[derive(Deserialize)]
struct WireInstallation {
    id: u64,
}

#[derive(Deserialize)]
struct WireUser {
    login: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct WirePush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: WireRepository,
}

#[derive(Deserialize)]
struct WireBranch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    repo: Option<WireRepository>,
}

#[derive(Deserialize)]
struct WireLabel {
    name: String,
}

#[derive(Deserialize)]
struct WirePull {
    number: u64,
    head: WireBranch,
    base: WireBranch,
    #[serde(default)]
    labels: Vec<WireLabel>,
}

#[derive(Deserialize)]
struct WirePullRequestEvent {
    action: String,
    pull_request: WirePull,
    repository: WireRepository,
    installation: Option<WireInstallation>,
}

#[derive(Deserialize)]
struct WireIssue {
    number: u64,
    pull_request: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct WireComment {
    id: u64,
    body: Option<String>,
    user: WireUser,
    created_at: String,
}

#[derive(Deserialize)]
struct WireIssueCommentEvent {
    issue: WireIssue,
    comment: WireComment,
    repository: WireRepository,
    installation: Option<WireInstallation>,
}

fn shape<T: serde::de::DeserializeOwned>(
    event: &str,
    value: serde_json::Value,
) -> Result<T, ParseError> {
    serde_json::from_value(value).map_err(|e| ParseError::Shape {
        event: event.to_owned(),
        message: e.to_string(),
    })
}

/// A full commit id (40 hex digits).
pub fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parse a verified body of event `event` (the `X-GitHub-Event` header).
pub fn parse(event: &str, body: &[u8]) -> Result<Event, ParseError> {
    // Every body must be a JSON object, whatever the event (serde_json bounds nesting).
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ParseError::NotJson("not a JSON object".to_owned()));
    }
    let action = value
        .get("action")
        .and_then(|a| a.as_str())
        .map(|a| a.chars().take(64).collect::<String>());
    match event {
        "ping" => Ok(Event::Ping),
        "push" => {
            let p: WirePush = shape(event, value)?;
            Ok(Event::Push(Push {
                repo: p.repository.full_name,
                git_ref: p.git_ref,
                after: p.after,
                deleted: p.deleted,
            }))
        }
        "pull_request"
            if matches!(
                action.as_deref(),
                Some("opened" | "synchronize" | "reopened")
            ) =>
        {
            let p: WirePullRequestEvent = shape(event, value)?;
            let pr = p.pull_request;
            if !is_sha(&pr.head.sha) {
                return Err(ParseError::Shape {
                    event: event.to_owned(),
                    message: "pull_request.head.sha is not a commit id".to_owned(),
                });
            }
            let base_repo = pr.base.repo.map(|r| r.full_name);
            let head_repo = pr.head.repo.map(|r| r.full_name);
            let fork = match (&head_repo, &base_repo) {
                (Some(h), Some(b)) => !h.eq_ignore_ascii_case(b),
                (Some(h), None) => !h.eq_ignore_ascii_case(&p.repository.full_name),
                // The head repository was deleted: it can only have been a fork.
                (None, _) => true,
            };
            Ok(Event::PullRequest(PullRequest {
                repo: p.repository.full_name,
                action: p.action,
                number: pr.number,
                head_sha: pr.head.sha,
                base_ref: pr.base.git_ref,
                fork,
                installation: p.installation.map(|i| i.id),
                labels: pr
                    .labels
                    .into_iter()
                    .take(MAX_LABELS)
                    .map(|l| l.name.chars().take(100).collect())
                    .collect(),
            }))
        }
        "issue_comment" if action.as_deref() == Some("created") => {
            let p: WireIssueCommentEvent = shape(event, value)?;
            // Without its time, a comment cannot be told from a replay of an old one.
            let created_at = DateTime::parse_from_rfc3339(&p.comment.created_at)
                .map_err(|e| ParseError::Shape {
                    event: event.to_owned(),
                    message: format!("comment.created_at is not a time: {e}"),
                })?
                .with_timezone(&Utc);
            Ok(Event::Comment(Comment {
                repo: p.repository.full_name,
                id: p.comment.id,
                number: p.issue.number,
                is_pull_request: p.issue.pull_request.is_some(),
                author_is_bot: p.comment.user.kind.eq_ignore_ascii_case("bot")
                    || p.comment.user.login.ends_with("[bot]"),
                author: p.comment.user.login,
                body: p.comment.body.unwrap_or_default(),
                installation: p.installation.map(|i| i.id),
                created_at,
            }))
        }
        _ => Ok(Event::Ignored {
            event: event.chars().take(64).collect(),
            action,
        }),
    }
}

/// `/rollgate promote|abort|retry PLAN`, read from a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentCommand {
    pub command: Command,
    pub plan: String,
}

/// The usage line, as replies quote it.
pub const USAGE: &str = "`/rollgate promote|abort|retry PLAN`";

/// The first line of `body` that starts with `/rollgate`: `None` when there is none (the
/// comment is not for rollgate), `Some(Err(why))` when it is one but cannot be read.
pub fn parse_comment(body: &str) -> Option<Result<CommentCommand, String>> {
    let line = body.lines().map(str::trim).find(|l| {
        l.strip_prefix("/rollgate")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
    })?;
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    Some(match words.as_slice() {
        [verb, plan] => match crate::daemon::parse_command(verb) {
            None => Err(format!("`{}` is not a command", clip(verb))),
            Some(_) if !crate::model::validate::is_dns_label(plan) => {
                Err(format!("`{}` is not a plan name", clip(plan)))
            }
            Some(command) => Ok(CommentCommand {
                command,
                plan: (*plan).to_owned(),
            }),
        },
        [] | [_] => Err("a command and a plan are needed".to_owned()),
        _ => Err("one command and one plan, nothing more".to_owned()),
    })
}

/// A word from a comment, safe to quote back inside backticks.
fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '`')
        .take(40)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_same_secret_and_body() {
        let sig = sign(b"s3cret", b"{}");
        assert!(sig.starts_with("sha256=") && sig.len() == 71, "{sig}");
        assert!(verify(b"s3cret", b"{}", Some(&sig)));
        assert!(verify(
            b"s3cret",
            b"{}",
            Some(&sig.to_uppercase().replace("SHA256=", "sha256="))
        ));
        assert!(!verify(b"other", b"{}", Some(&sig)));
        assert!(!verify(b"s3cret", b"{ }", Some(&sig)));
        assert!(!verify(b"s3cret", b"{}", None));
        assert!(!verify(
            b"s3cret",
            b"{}",
            Some(sig.trim_start_matches("sha256="))
        ));
        assert!(!verify(b"s3cret", b"{}", Some("sha256=zz")));
        assert!(!verify(b"s3cret", b"{}", Some(&sig[..70])));
        assert!(!verify(b"s3cret", b"{}", Some("sha256=é")));
    }

    #[test]
    fn a_delivery_is_new_once_within_its_ttl_and_the_bound() {
        let t0 = Instant::now();
        let mut d = Deliveries::new(3, Duration::from_secs(60));
        assert!(d.first_time("a", t0));
        assert!(!d.first_time("a", t0));
        d.forget("a");
        assert!(d.first_time("a", t0));
        assert!(d.first_time("b", t0));
        assert!(d.first_time("c", t0));
        // the bound: a fourth id pushes out the oldest
        assert!(d.first_time("d", t0));
        assert_eq!(d.len(), 3);
        assert!(d.first_time("a", t0));
        // the TTL
        assert!(!d.first_time("d", t0 + Duration::from_secs(59)));
        assert!(d.first_time("d", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn delivery_ids_are_guids() {
        assert!(valid_delivery_id("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert!(!valid_delivery_id(""));
        assert!(!valid_delivery_id("a b"));
        assert!(!valid_delivery_id(&"a".repeat(65)));
    }

    #[test]
    fn comment_commands() {
        let ok = |c, p: &str| {
            Some(Ok(CommentCommand {
                command: c,
                plan: p.to_owned(),
            }))
        };
        assert_eq!(
            parse_comment("/rollgate promote checkout"),
            ok(Command::Promote, "checkout")
        );
        assert_eq!(
            parse_comment("LGTM.\n\n  /rollgate   ABORT web  \nthanks"),
            ok(Command::Abort, "web")
        );
        assert_eq!(
            parse_comment("/rollgate retry a-b"),
            ok(Command::Retry, "a-b")
        );
        assert_eq!(parse_comment("no command here"), None);
        assert_eq!(parse_comment("/rollgatepromote x"), None);
        assert_eq!(parse_comment("see `/rollgate promote x`"), None);
        assert!(matches!(parse_comment("/rollgate"), Some(Err(_))));
        assert!(matches!(
            parse_comment("/rollgate deploy web"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_comment("/rollgate promote ../x"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_comment("/rollgate promote a b"),
            Some(Err(_))
        ));
        let Some(Err(why)) = parse_comment("/rollgate `rm\u{7}` x") else {
            panic!("an error")
        };
        assert!(
            !why.contains('\u{7}') && why.matches('`').count() == 2,
            "{why}"
        );
    }

    #[test]
    fn a_comment_carries_its_id_and_time() {
        let body = br#"{"action": "created", "issue": {"number": 1},
            "comment": {"id": 492700400, "body": "/rollgate promote web",
                        "created_at": "2019-05-15T15:20:21Z",
                        "user": {"login": "Codertocat", "type": "User"}},
            "repository": {"full_name": "Codertocat/Hello-World"}}"#;
        let Ok(Event::Comment(c)) = parse("issue_comment", body) else {
            panic!("a comment")
        };
        assert_eq!(
            (c.id, c.number, c.author.as_str()),
            (492700400, 1, "Codertocat")
        );
        assert_eq!(c.created_at.to_rfc3339(), "2019-05-15T15:20:21+00:00");
        // Without its id, a comment cannot be told apart from its redelivery: refused
        let no_id = br#"{"action": "created", "issue": {"number": 1},
            "comment": {"body": "/rollgate promote web", "created_at": "2019-05-15T15:20:21Z",
                        "user": {"login": "Codertocat"}},
            "repository": {"full_name": "Codertocat/Hello-World"}}"#;
        assert!(matches!(
            parse("issue_comment", no_id),
            Err(ParseError::Shape { .. })
        ));
        // Nor without its time (or with one that is not a time): refused
        for time in ["", r#", "created_at": "yesterday""#, r#", "created_at": 0"#] {
            let body = format!(
                r#"{{"action": "created", "issue": {{"number": 1}},
                "comment": {{"id": 1, "body": "/rollgate promote web",
                            "user": {{"login": "Codertocat"}}{time}}},
                "repository": {{"full_name": "Codertocat/Hello-World"}}}}"#
            );
            assert!(
                matches!(
                    parse("issue_comment", body.as_bytes()),
                    Err(ParseError::Shape { .. })
                ),
                "{time}"
            );
        }
        // GitHub's own example parses
        let real = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/github-webhooks/issue_comment.created.payload.json"
        ))
        .expect("the real payloads in ../shared/data/github-webhooks");
        assert!(matches!(
            parse("issue_comment", &real),
            Ok(Event::Comment(_))
        ));
    }

    #[test]
    fn regression_an_old_comment_is_not_fresh() {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("a time")
                .with_timezone(&Utc)
        };
        let written = t("2019-05-15T15:20:21Z");
        assert!(is_fresh(written, written));
        assert!(
            is_fresh(written, t("2019-05-15T15:30:21Z")),
            "10 min: fresh"
        );
        assert!(
            !is_fresh(written, t("2019-05-15T15:30:22Z")),
            "10 min 1 s: stale"
        );
        assert!(!is_fresh(written, t("2024-01-01T00:00:00Z")), "years later");
        // A little ahead of our clock is skew; far ahead is no clock to trust
        assert!(is_fresh(written, t("2019-05-15T15:19:21Z")));
        assert!(!is_fresh(written, t("2019-05-15T15:00:00Z")));
    }

    #[test]
    fn a_pull_request_carries_its_labels_capped() {
        let real = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/github-webhooks/pull_request.opened.payload.json"
        ))
        .expect("the real payloads in ../shared/data/github-webhooks");
        let Ok(Event::PullRequest(pr)) = parse("pull_request", &real) else {
            panic!("a pull request")
        };
        assert_eq!(pr.labels, vec!["bug".to_owned()]);
        // A hostile payload: many labels with long names.
        let mut v: serde_json::Value = serde_json::from_slice(&real).expect("json");
        v["pull_request"]["labels"] = (0..500)
            .map(|i| serde_json::json!({ "name": format!("{i}{}", "x".repeat(1000)) }))
            .collect();
        let body = serde_json::to_vec(&v).expect("json");
        let Ok(Event::PullRequest(pr)) = parse("pull_request", &body) else {
            panic!("a pull request")
        };
        assert_eq!(pr.labels.len(), MAX_LABELS);
        assert!(pr.labels.iter().all(|l| l.chars().count() == 100));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for event in ["push", "pull_request", "issue_comment", "ping", "nope"] {
            for body in [&b""[..], b"{", b"[]", b"null", b"\xff\xfe", b"1"] {
                let r = parse(event, body);
                assert!(
                    matches!(r, Err(ParseError::NotJson(_))),
                    "{event} {body:?}: {r:?}"
                );
            }
        }
        let wrong = br#"{"ref": 1, "action": "opened", "pull_request": {"number": "x"}}"#;
        for event in ["push", "pull_request"] {
            assert!(matches!(parse(event, wrong), Err(ParseError::Shape { .. })));
        }
        let deep = format!("{{\"a\":{}", "[".repeat(10_000));
        assert!(parse("push", deep.as_bytes()).is_err());
        assert_eq!(
            parse("status", b"{}"),
            Ok(Event::Ignored {
                event: "status".to_owned(),
                action: None
            })
        );
    }
}
