//! Benchmark: what a pull request costs. `rollgate::preview::preview` (the body of
//! `rollgate plan` and of a PR's check run and comment) on a repository of N generated
//! plans where head changes 1 and then 100 of them; and one webhook delivery's pure
//! work (HMAC-SHA256 check and typed parse) for the real `pull_request.opened` payload.
//!
//! Prints each run, the medians and the peak RSS.
//! Run: `cargo bench --bench preview` (add `-- N` for another plan count; default 2,000).
//! Under `cargo test` (no `--bench`) it runs a small smoke check only.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[path = "support/plans.rs"]
mod plans;
use plans::{SETTINGS, peak_rss_kib, plan};

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A commit on top of HEAD that bumps the artifact of the first `k` plans.
fn change(root: &Path, k: usize, round: usize) {
    for i in 0..k {
        let path = root.join(format!("plans/svc-{i:05}.yaml"));
        let text = plan(i);
        let bumped = if i.is_multiple_of(2) {
            text.replace(
                &format!("@sha256:{:064x}", i),
                &format!("@sha256:{:064x}", i + 1_000_000 * (round + 1)),
            )
        } else {
            text.replace(
                &format!("artifact: v{i}"),
                &format!("artifact: v{i}-{round}"),
            )
        };
        std::fs::write(&path, bumped).expect("write plan");
    }
    git(root, &["commit", "-qam", &format!("change {k} plans")]);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let bench = args.iter().any(|a| a == "--bench");
    let n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if bench { 2_000 } else { 50 });
    let runs = if bench { 5 } else { 1 };
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("plans")).expect("plans dir");
    std::fs::write(root.join("rollgate.yaml"), SETTINGS).expect("settings");
    for i in 0..n {
        std::fs::write(root.join(format!("plans/svc-{i:05}.yaml")), plan(i)).expect("plan");
    }
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-qm", "base"]);

    for (round, k) in [1usize, 100.min(n)].into_iter().enumerate() {
        change(root, k, round);
        let mut times = Vec::new();
        for run in 0..runs {
            let start = Instant::now();
            let p = rollgate::preview::preview(root, "HEAD~1", "HEAD", chrono::Utc::now())
                .expect("preview");
            let markdown = p.markdown();
            let took = start.elapsed().as_secs_f64();
            assert_eq!(p.plans.len(), k, "every changed plan is previewed");
            assert!(
                p.plans.iter().all(|pp| pp.verdict.passes()),
                "generated plans pass"
            );
            println!(
                "run {run}: preview of {k} changed plan(s) in a repository of {n}: {:.1} ms ({} bytes of markdown)",
                took * 1e3,
                markdown.len()
            );
            times.push(took);
        }
        println!(
            "preview, {k} of {n} plans changed: median {:.1} ms",
            median(times) * 1e3
        );
    }

    // One webhook delivery's pure work: signature, then the typed event.
    let payload = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/github-webhooks/pull_request.opened.payload.json"),
    )
    .expect("the real pull_request payload (../shared/data/github-webhooks)");
    let secret = b"bench-secret";
    let signature = rollgate::github::webhook::sign(secret, &payload);
    let iterations = if bench { 20_000 } else { 100 };
    let start = Instant::now();
    for _ in 0..iterations {
        assert!(rollgate::github::webhook::verify(
            secret,
            &payload,
            Some(&signature)
        ));
        rollgate::github::webhook::parse("pull_request", &payload).expect("parses");
    }
    let per = start.elapsed().as_secs_f64() / f64::from(iterations);
    println!(
        "webhook: verify + parse of a {} KiB pull_request payload: {:.1} µs per delivery",
        payload.len() / 1024,
        per * 1e6
    );
    println!("peak RSS {} MiB", peak_rss_kib() / 1024);
}
