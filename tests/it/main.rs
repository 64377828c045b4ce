//! Every integration suite, as modules of one test binary (`it`): one link of
//! kube, the AWS SDK, octocrab and git2 instead of one per suite. Each module is the
//! suite of the same name; `support` is shared by all of them (and by the benches).
//! Run one suite with `cargo nextest run --test it SUITE::`.

#[path = "../support/mod.rs"]
mod support;

mod batch;
mod cli;
mod commands;
mod crash_resume;
mod dashboard;
mod data_plane;
mod demo;
mod deploy_manifests;
mod fresh_baseline;
mod fuzz_regressions;
mod gate_cache;
mod git_servers_selftest;
mod git_transports;
mod hostile_files;
mod invalid_plans;
mod jobs;
mod judge_reference;
mod knative;
mod kubernetes;
mod kubernetes_jobs;
mod lambda;
mod leader;
mod local_target;
mod memory;
mod notify;
mod preview;
mod prometheus;
mod push_race;
mod reconcile;
mod roundtrip;
mod schema_fresh;
mod shards;
mod status_layout;
mod traffic_shaping;
mod trust;
mod web_source;
mod webhooks;
mod writeback;
