//! Benchmark: fetch, and fetch → status commit → push, per transport, on loopback.
//!
//! The same seeded repository is served as a path, as `file://`, over https (nginx +
//! `git http-backend`, TLS with a test CA, basic auth) and over ssh (OpenSSH sshd), and
//! rollgate's `Writer` pushes status commits to each (`source::remote`: the `git`
//! command). For each: p50 and p90 of one fetch, and of one whole write (fetch, commit,
//! compare-and-swap push). Run: `cargo bench --bench git_remote`; without `--bench`
//! (under `cargo test`) it is a tiny smoke run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rollgate::model::settings::WriteBack;
use rollgate::source::git::GitSource;
use rollgate::source::remote::GitAuth;
use rollgate::writeback::{CommitSpec, Edit, WriteOutcome, Writer};
use support::example_repo;
use support::git_servers::{HttpsGit, SshGit, https_auth, ssh_auth};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let rounds = if args.iter().any(|a| a == "--bench") {
        50
    } else {
        2
    };
    let seed = example_repo();
    println!("transport   fetch p50  fetch p90  write p50  write p90   (ms, {rounds} rounds)");
    let https = HttpsGit::start();
    let ssh = SshGit::start();
    // path and file://: a bare repository served by nobody.
    let local = support::Remote::seeded_from(&seed);
    let path = local.bare.to_str().expect("utf8").to_owned();
    measure("path", &path, GitAuth::default(), rounds);
    measure(
        "file://",
        &format!("file://{path}"),
        GitAuth::default(),
        rounds,
    );
    match &https {
        Ok(h) => {
            h.add_bare("bench.git", Some(&seed));
            measure("https", &h.url("bench.git"), https_auth(h), rounds);
        }
        Err(why) => println!("https      skipped: {why}"),
    }
    match &ssh {
        Ok(s) => {
            let bare = s.add_bare("bench.git", Some(&seed));
            measure("ssh", &s.url(&bare), ssh_auth(s), rounds);
        }
        Err(why) => println!("ssh        skipped: {why}"),
    }
}

fn measure(name: &str, url: &str, auth: GitAuth, rounds: usize) {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = GitSource::open_with(url, &tmp.path().join("clone"), "main", auth).expect("open");
    src.fetch().expect("first fetch");
    let mut fetches = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        src.fetch().expect("fetch");
        fetches.push(t.elapsed());
    }
    let settings = WriteBack::default();
    let writer = Writer::new(&src, &settings);
    let mut writes = Vec::new();
    for n in 0..rounds {
        let t = Instant::now();
        let out = writer.write(|_| Ok(Some(spec(n)))).expect("write");
        writes.push(t.elapsed());
        assert!(matches!(out, WriteOutcome::Pushed { .. }), "{out:?}");
    }
    println!(
        "{name:<10} {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}",
        pct(&mut fetches, 50),
        pct(&mut fetches, 90),
        pct(&mut writes, 50),
        pct(&mut writes, 90)
    );
}

fn spec(n: usize) -> CommitSpec {
    CommitSpec {
        subject: format!("bench: status {n}"),
        body: None,
        trailers: vec![("Rollgate-Plan".into(), "bench".into())],
        revert: None,
        edits: vec![Edit {
            path: "status/bench.yaml".into(),
            content: Some(format!("plan: bench\nn: {n}\n").into_bytes()),
        }],
    }
}

fn pct(v: &mut [Duration], p: usize) -> f64 {
    v.sort();
    let i = ((v.len() * p) / 100).min(v.len().saturating_sub(1));
    v[i].as_secs_f64() * 1000.0
}
