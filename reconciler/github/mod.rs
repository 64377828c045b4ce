//! GitHub: webhooks in, check runs, sticky comments, commit statuses and replies out.
//!
//! ```text
//!  POST /webhooks/github ─▶ webhook::verify (HMAC, constant time) ─▶ dedupe ─▶ parse
//!        (server.rs, HTTP runtime)                                            │
//!            push to the tracked branch ──▶ wake the daemon loop (channel) ◀──┤
//!            pull_request / issue_comment ──▶ Job queue ─▶ handle::Worker ─────┘
//!                                                   (its own thread: git fetch into a
//!                                                    scratch clone, preview, commands)
//!                                                          │
//!                                                          ▼
//!                                          Client (octocrab) ─▶ api.github.com / GHE
//! ```
//! `Client` is the only door to the GitHub API: a token, or a GitHub App (JWT →
//! installation token, cached by octocrab and refreshed 30 s before it expires), and a
//! base URL (GitHub Enterprise, tests). With an App, Git over https to GitHub's own host
//! (the worker's, and the daemon's fetch and status commits through `SharedGitToken`,
//! minted at start and kept fresh by the worker) uses the same cached installation token
//! (`GitToken`, `x-access-token` basic auth) when `ROLLGATE_GIT_TOKEN` is not set. Invariants:
//! secrets (token, App key, installation tokens, webhook secret) come from the
//! environment, files or GitHub only and are `Secret`s, whose `Debug` and `Display`
//! print `***`, so they cannot reach a log line; a token goes to GitHub's host only, and
//! never in clear over a network; the HTTP side never touches Git or a target: it hands
//! work over channels. rollgate edits only comments it wrote itself (its [`Identity`]:
//! the token's user, or the App's bot), never one that merely starts with its marker.
//! Where GitHub refuses check runs (403: a personal access token), a preview falls back
//! to a commit status; the refusal is remembered for the process's life.
//!
//! Files: `auth` (secrets, credentials, the repository's name, who rollgate is, where a
//! token may go), `wire` (the API's own request and reply shapes), `client` (the REST
//! client: check runs, comments, statuses, permissions), `webhook` (verifying and parsing
//! deliveries), `handle` (the endpoint and its worker).

mod auth;
mod client;
pub mod handle;
pub mod webhook;
mod wire;

use std::time::Duration;

pub use auth::{
    Auth, Config, GitToken, Identity, RepoName, Secret, SharedGitToken, git_host, may_send_token,
    valid_login,
};
pub use client::{CheckOutput, CheckRunPosted, Client, Permission};
pub use wire::{Annotation, AnnotationLevel, Conclusion, StatusState};

/// The name of rollgate's check run and the prefix of its commit status contexts.
pub const CHECK_NAME: &str = "rollgate";

/// The first line of rollgate's sticky pull-request comment (the preview's marker).
pub const STICKY_MARKER: &str = "<!-- rollgate:preview -->";

pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// Every API call gives up after this long (the worker then logs and goes on).
pub const API_TIMEOUT: Duration = Duration::from_secs(30);
