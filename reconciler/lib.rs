//! rollgate: a GitOps rollout reconciler.
//!
//! Code map (see ARCHITECTURE.md for the long form):
//! - `model`: plan, settings and diagnostics; parsing and validation; pure.
//! - `gate`: the check every revision passes: schema, then policy.
//! - `policy`: Rego policies (built-in and the repo's own), evaluated in-process.
//! - `source`: reading a repository's files safely.

pub mod commands;
pub mod daemon;
pub mod dataplane;
pub mod demo;
pub mod engine;
pub mod gate;
pub mod github;
pub mod history;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod preview;
pub mod proxy;
pub mod server;
pub mod source;
pub mod target;
pub mod telemetry;
pub mod writeback;
