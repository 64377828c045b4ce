//! rollgate: a GitOps rollout reconciler.
//!
//! Code map, every module (see ARCHITECTURE.md for the long form):
//! - `model`: plan, settings, status and diagnostics; parsing and validation; pure.
//! - `engine`: `decide(plan, status, observation, now)`, analysis, judges, statistics; pure.
//! - `gate`: the check every revision passes: schema, then policy (`PolicyEngine`).
//! - `policy`: Rego policies (built-in and the repo's own), evaluated in-process.
//! - `source`: reading a repository safely (`git`), its network side (`remote`), and
//!   watching a local remote (`watch`).
//! - `writeback`: status, revert and restore commits, pushed as a compare-and-swap.
//! - `cli`: the command line behind `main.rs`: the grammar and every subcommand.
//! - `commands`: promote, abort and retry as command commits.
//! - `targets`: the `Target` extension point, its contract, and every implementation
//!   (dry run, local, Kubernetes with Knative, Lambda); `targets::factory` builds them.
//! - `dataplane`: the local target's process that outlives the daemon.
//! - `proxy`: the weighted HTTP proxy of the local target.
//! - `metrics`: the `MetricsSource` extension point (builtin, Prometheus, CloudWatch).
//! - `aws`: AWS access shared by the Lambda target and the CloudWatch source: SDK
//!   config, endpoint rule, credentials.
//! - `daemon`: the `Reconciler` (one pass: fetch, gate, observe, decide, execute, write)
//!   and `daemon::run`, the loop around it.
//! - `leader`: leader election over a Kubernetes Lease.
//! - `github`: webhooks, previews on pull requests, comment commands, commit statuses.
//! - `notify`: Slack and CloudEvents notifications of every transition, from Git.
//! - `preview`: `rollgate plan`: what a change would do, judged with base's rules.
//! - `history`: `rollgate history` and `status` from Git alone.
//! - `server`: `/healthz`, `/readyz`, `/metrics` and the webhook endpoint.
//! - `telemetry`: rollgate's own metrics.
//! - `memory`: the process's allocator (jemalloc), and the hand-back of what a burst freed.
//! - `demo`: `rollgate demo`, its service and its load generator.

pub mod aws;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod dashboard;
pub mod dataplane;
pub mod demo;
pub mod engine;
pub mod gate;
pub mod github;
pub mod history;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod policy;
pub mod preview;
pub mod proxy;
pub mod server;
pub mod source;
pub mod targets;
pub mod telemetry;
pub mod timeline;
pub mod writeback;
