//! The GitHub REST API's own shapes, in its field names: what rollgate sends (check-run
//! conclusions and annotations, commit status states; public, the worker builds them)
//! and what it reads back (check runs, comments, the App, permissions; only the client
//! sees those). The annotation is the preview's own (`preview::Annotation`, which
//! serializes to the API's fields), re-exported here: there is one annotation type.
//!
//! Invariants: serde types only, no behaviour beyond naming; a reply type declares just
//! the fields rollgate reads, each optional one `#[serde(default)]`, so a field GitHub
//! adds or leaves out never fails a call.

use serde::{Deserialize, Serialize};

/// A completed check run's conclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conclusion {
    Success,
    Failure,
    Neutral,
}

/// A check-run annotation and its level: the preview's, whose serde form is the API's
/// (`annotation_level`, no columns when there are none).
pub use crate::preview::{Annotation, AnnotationLevel};

/// A commit status's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

impl Conclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Neutral => "neutral",
        }
    }
}

// What GitHub answers (only the client reads these).

#[derive(Debug, Deserialize)]
pub(super) struct Id {
    pub(super) id: u64,
}

#[derive(Debug, Deserialize)]
pub(super) struct ExistingCheckRun {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) conclusion: Option<String>,
    #[serde(default)]
    pub(super) output: Option<ExistingOutput>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ExistingOutput {
    #[serde(default)]
    pub(super) title: Option<String>,
    #[serde(default)]
    pub(super) summary: Option<String>,
    #[serde(default)]
    pub(super) annotations_count: u64,
}

#[derive(Debug, Deserialize)]
pub(super) struct CheckRunList {
    pub(super) check_runs: Vec<ExistingCheckRun>,
}

#[derive(Debug, Deserialize)]
pub(super) struct IssueComment {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) body: Option<String>,
    #[serde(default)]
    pub(super) user: Option<CommentUser>,
    #[serde(default)]
    pub(super) performed_via_github_app: Option<Id>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CommentUser {
    pub(super) login: String,
    #[serde(rename = "type", default)]
    pub(super) kind: String,
}

/// `GET /user` (a token's owner) and `GET /app` (the App, with its JWT).
#[derive(Debug, Deserialize)]
pub(super) struct Login {
    pub(super) login: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct App {
    pub(super) id: u64,
    pub(super) slug: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct PullOfCommit {
    pub(super) number: u64,
    #[serde(default)]
    pub(super) merged_at: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct PermissionReply {
    pub(super) permission: String,
}
