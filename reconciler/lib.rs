//! rollgate: a GitOps rollout reconciler.
//!
//! Code map (see ARCHITECTURE.md for the long form):
//! - `model`: plan, settings and diagnostics; parsing and validation; pure.
//! - `policy`: Rego policies (built-in and the repo's own), evaluated in-process.
//! - `source`: reading a repository's files safely.
//! - `cli`: the `rollgate` command line.

pub mod model;
pub mod policy;
