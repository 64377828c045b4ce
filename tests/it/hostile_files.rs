//! Hostile files: what a malicious or broken checkout can put in `plans/`.
//!
//! Each case is a temporary repository with a valid `rollgate.yaml` and one hostile
//! plan file. `rollgate validate` must reject it (exit 1) with a diagnostic naming
//! the file, never panic, and stay small and quick: the child's peak memory comes
//! from `wait4`'s `ru_maxrss` (the kernel's high-water mark) and must stay under
//! 100 MB. Wall time is printed and only loosely bounded: timing belongs in benches.
//! Run with `--nocapture` to see the figures.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wait4::Wait4;

const SETTINGS: &str = "\
apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  prod-eu:
    kubernetes: { context: prod-eu }
metrics:
  prometheus:
    prometheus: { url: http://127.0.0.1:9090 }
";

const MAX_RSS_BYTES: u64 = 100 * 1024 * 1024;
const MAX_WALL: Duration = Duration::from_secs(5);

/// A valid plan named `name`, with `extra` spliced in as further `metadata` lines.
fn plan(name: &str, extra_metadata: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata:
  name: {name}
{extra_metadata}spec:
  target: prod-eu
  workload:
    kubernetes: {{ namespace: web, deployment: shop }}
  artifact: registry.example/shop@sha256:{sha}
  strategy:
    canary:
      steps:
        - setWeight: 10
        - analysis: {{ checks: [errors], duration: 5m }}
        - setWeight: 100
  checks:
    - name: errors
      source: prometheus
      query: sum(rate(http_requests_total{{code=~\"5..\"}}[1m]))
      judge: {{ max: 0.1 }}
",
        sha = "ab".repeat(32)
    )
}

/// The peak resident set of this test process so far (`VmHWM`), in bytes.
///
/// A child started by `posix_spawn`/`vfork` inherits its parent's high-water mark at
/// `exec`, so a child's `ru_maxrss` is really max(child peak, this). Printed beside
/// each figure so a masked child figure is recognisable.
fn own_peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What one run of `rollgate validate` did and cost.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    max_rss: u64,
    /// This test process's own peak when the child was started.
    parent_rss: u64,
    wall: Duration,
}

impl Run {
    fn report(&self, case: &str) {
        println!(
            "hostile {case:<28} wall {:>7.1} ms  peak rss {:>6.1} MiB (test process {:>5.1} MiB)  exit {:?}  {}",
            self.wall.as_secs_f64() * 1000.0,
            mib(self.max_rss),
            mib(self.parent_rss),
            self.code,
            self.stdout.lines().next().unwrap_or_default()
        );
    }
}

fn validate_measured(repo: &Path) -> Run {
    let parent_rss = own_peak_rss();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .arg("validate")
        .arg(repo)
        .arg("--no-policy")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rollgate");
    // Drain both pipes while the child runs, so a chatty child cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).expect("read child output");
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr piped")));
    let usage = child.wait4().expect("wait4 on the child");
    let wall = start.elapsed();
    Run {
        code: usage.status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        max_rss: usage.rusage.maxrss,
        parent_rss,
        wall,
    }
}

/// Given a repository whose `plans/` holds what `setup` put there, when it is
/// validated, then it is rejected with a diagnostic on `file` (and `code`, when
/// given), without a panic, within the memory and time bounds.
fn hostile(case: &str, file: &str, code: Option<&str>, setup: impl FnOnce(&Path)) {
    let repo = tempfile::tempdir().expect("temp dir");
    std::fs::write(repo.path().join("rollgate.yaml"), SETTINGS).expect("write settings");
    let plans = repo.path().join("plans");
    std::fs::create_dir(&plans).expect("plans folder");
    setup(&plans);

    let run = validate_measured(repo.path());
    run.report(case);
    let shown = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(
        !run.stderr.contains("panicked"),
        "{case}: panicked\n{shown}"
    );
    assert_eq!(run.code, Some(1), "{case}: expected exit 1\n{shown}");
    let named = format!("plans/{file}");
    let diag = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{named}:")) && l.contains(": error["))
        .unwrap_or_else(|| panic!("{case}: no diagnostic names {named}\n{shown}"));
    if let Some(code) = code {
        assert!(
            diag.contains(&format!("error[{code}]")),
            "{case}: expected error[{code}]\n{shown}"
        );
    }
    assert!(
        run.max_rss < MAX_RSS_BYTES,
        "{case}: peak memory {} bytes is over 100 MB",
        run.max_rss
    );
    assert!(run.wall < MAX_WALL, "{case}: took {:?}", run.wall);
}

/// Deterministic bytes (xorshift64), so a failure reproduces.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn baseline_a_valid_plan_is_cheap() {
    // Not hostile: the figures the hostile cases are compared with.
    let repo = tempfile::tempdir().expect("temp dir");
    std::fs::write(repo.path().join("rollgate.yaml"), SETTINGS).expect("write settings");
    std::fs::create_dir(repo.path().join("plans")).expect("plans folder");
    std::fs::write(repo.path().join("plans/shop.yaml"), plan("shop", "")).expect("write plan");
    let run = validate_measured(repo.path());
    run.report("baseline (valid plan)");
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert!(run.max_rss < MAX_RSS_BYTES);
}

#[test]
fn billion_laughs() {
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let items = [prev.as_str(); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{items}]\n"));
    }
    hostile(
        "billion laughs",
        "bomb.yaml",
        Some("input-limit"),
        |plans| {
            std::fs::write(plans.join("bomb.yaml"), text).expect("write");
        },
    );
}

#[test]
fn billion_laughs_inside_a_plan() {
    // The bomb hidden in an otherwise valid plan's annotations.
    let mut extra = String::from(
        "  annotations:\n    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let items = [prev.as_str(); 10].join(", ");
        extra.push_str(&format!("    a{i}: &a{i} [{items}]\n"));
    }
    hostile(
        "billion laughs in a plan",
        "lol.yaml",
        Some("input-limit"),
        |plans| {
            std::fs::write(plans.join("lol.yaml"), plan("lol", &extra)).expect("write");
        },
    );
}

#[test]
fn five_megabyte_plan() {
    // A valid plan padded with a 5 MB annotation: refused by size before it is parsed.
    // Written in chunks, so this test process stays small (see `own_peak_rss`).
    let text = plan("big", "  annotations:\n    pad: \"@PAD@\"\n");
    let (head, tail) = text.split_once("@PAD@").expect("marker");
    hostile("5 MB plan", "big.yaml", Some("input-limit"), |plans| {
        let mut f = std::fs::File::create(plans.join("big.yaml")).expect("create");
        f.write_all(head.as_bytes()).expect("write");
        let chunk = [b'x'; 64 * 1024];
        for _ in 0..80 {
            f.write_all(&chunk).expect("write");
        }
        f.write_all(tail.as_bytes()).expect("write");
    });
}

#[test]
fn nesting_20000_deep_flow() {
    let text = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    hostile(
        "20,000-deep flow [[[",
        "deep.yaml",
        Some("input-limit"),
        |plans| {
            std::fs::write(plans.join("deep.yaml"), text).expect("write");
        },
    );
}

#[test]
fn nesting_20000_deep_flow_mappings() {
    let text = format!("{}{}", "{a: ".repeat(20_000), "}".repeat(20_000));
    hostile(
        "20,000-deep flow {a: {a:",
        "deep.yaml",
        Some("input-limit"),
        |plans| {
            std::fs::write(plans.join("deep.yaml"), text).expect("write");
        },
    );
}

#[test]
fn nesting_20000_deep_block_sequences() {
    // Block form, each level one more indentation column: `- - - - x`.
    let text = format!("{}x\n", "- ".repeat(20_000));
    hostile(
        "20,000-deep block - - -",
        "deep.yaml",
        Some("input-limit"),
        |plans| {
            std::fs::write(plans.join("deep.yaml"), text).expect("write");
        },
    );
}

#[test]
fn nesting_deep_block_mappings_by_indentation() {
    // Block mappings, one space deeper per level. 20,000 levels would be 200 MB of
    // indentation (refused by size, as in `five_megabyte_plan`); 1,400 levels stay
    // under the 1 MiB cap, so this reaches the parser's depth limit.
    let text: String = (0..1_400)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    assert!(text.len() < 1024 * 1024);
    hostile(
        "1,400-deep block k:",
        "deep.yaml",
        Some("input-limit"),
        |plans| {
            std::fs::write(plans.join("deep.yaml"), text).expect("write");
        },
    );
}

#[test]
fn binary_garbage() {
    let mut bytes = noise(64 * 1024, 0x9e37_79b9_7f4a_7c15);
    bytes[100] = 0;
    hostile(
        "binary garbage (with NUL)",
        "garbage.yaml",
        Some("yaml-syntax"),
        |plans| {
            std::fs::write(plans.join("garbage.yaml"), bytes).expect("write");
        },
    );
}

#[test]
fn binary_garbage_without_nul() {
    let bytes: Vec<u8> = noise(64 * 1024, 42).into_iter().map(|b| b.max(1)).collect();
    hostile(
        "binary garbage (no NUL)",
        "garbage.yaml",
        Some("yaml-syntax"),
        |plans| {
            std::fs::write(plans.join("garbage.yaml"), bytes).expect("write");
        },
    );
}

#[test]
fn empty_file() {
    hostile("empty file", "empty.yaml", None, |plans| {
        std::fs::write(plans.join("empty.yaml"), "").expect("write");
    });
}

#[test]
fn comments_only() {
    hostile("comments only", "notes.yaml", None, |plans| {
        std::fs::write(plans.join("notes.yaml"), "# nothing here\n\n# yet\n").expect("write");
    });
}

#[test]
fn symlink_to_etc_passwd() {
    hostile(
        "symlink -> /etc/passwd",
        "evil.yaml",
        Some("unsafe-path"),
        |plans| {
            std::os::unix::fs::symlink("/etc/passwd", plans.join("evil.yaml")).expect("symlink");
        },
    );
}

#[test]
fn symlinked_plans_folder() {
    // Not only files: a `plans` link to a folder outside the repository.
    let outside = tempfile::tempdir().expect("temp dir");
    std::fs::write(outside.path().join("x.yaml"), plan("x", "")).expect("write");
    let repo = tempfile::tempdir().expect("temp dir");
    std::fs::write(repo.path().join("rollgate.yaml"), SETTINGS).expect("write settings");
    std::os::unix::fs::symlink(outside.path(), repo.path().join("plans")).expect("symlink");
    let run = validate_measured(repo.path());
    run.report("symlinked plans/ folder");
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    // Whatever rollgate decides, it must not have read the plan behind the link.
    assert!(
        !run.stdout.contains("1 valid"),
        "a plan was read through a symlinked plans/ folder:\n{}",
        run.stdout
    );
}

#[test]
fn name_with_path_traversal() {
    hostile(
        "metadata.name: ../../x",
        "x.yaml",
        Some("bad-name"),
        |plans| {
            let text = plan("x", "").replace("  name: x\n", "  name: ../../x\n");
            std::fs::write(plans.join("x.yaml"), text).expect("write");
        },
    );
}

#[test]
fn invalid_utf8() {
    hostile(
        "invalid UTF-8",
        "latin1.yaml",
        Some("yaml-syntax"),
        |plans| {
            let mut bytes = plan("latin1", "  labels: { team: caf\u{e9} }\n").into_bytes();
            // Turn the UTF-8 `é` (C3 A9) into Latin-1 (E9 alone).
            let at = bytes
                .windows(2)
                .position(|w| w == [0xc3, 0xa9])
                .expect("é is there");
            bytes.splice(at..at + 2, [0xe9]);
            std::fs::write(plans.join("latin1.yaml"), bytes).expect("write");
        },
    );
}

#[test]
fn regression_a_tree_of_two_thousand_plans_naming_one_big_blob_is_refused_before_reading() {
    // Given a revision whose plans/ holds 2,000 entries that all name one 1 MB blob
    // (a few KB in a pack, 2 GB when read)
    let dir = tempfile::tempdir().expect("tmp");
    let bare = dir.path().join("remote.git");
    let repo = git2::Repository::init_bare(&bare).expect("init");
    let big = repo
        .blob(&vec![b'#'; rollgate::model::yaml::MAX_FILE_BYTES - 1])
        .expect("blob");
    let mut plans = repo.treebuilder(None).expect("treebuilder");
    for i in 0..2000 {
        plans
            .insert(format!("p{i}.yaml"), big, 0o100_644)
            .expect("entry");
    }
    let plans = plans.write().expect("plans tree");
    let mut root = repo.treebuilder(None).expect("treebuilder");
    root.insert("plans", plans, 0o040_000).expect("plans");
    let tree = repo.find_tree(root.write().expect("root")).expect("tree");
    let sig = git2::Signature::now("Attacker", "a@example.com").expect("sig");
    let head = repo
        .commit(Some("refs/heads/main"), &sig, &sig, "bomb", &tree, &[])
        .expect("commit");
    drop(tree);
    let src = rollgate::source::git::GitSource::open(
        bare.to_str().expect("utf8"),
        &dir.path().join("clone"),
        "main",
    )
    .expect("open");
    let fetched = src.fetch().expect("fetch");
    assert_eq!(fetched, head);
    let rss_before = own_peak_rss();
    // When it is read
    let started = std::time::Instant::now();
    let err = src.snapshot(head).expect_err("refused");
    let took = started.elapsed();
    // Then it is refused, fast and small, with a typed error that says why
    let typed = err
        .downcast_ref::<rollgate::source::git::SnapshotError>()
        .unwrap_or_else(|| panic!("{err:#}"));
    assert!(
        matches!(typed, rollgate::source::git::SnapshotError::TooLarge { .. }),
        "{typed}"
    );
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    let grew = own_peak_rss().saturating_sub(rss_before);
    assert!(grew < 100 << 20, "peak RSS grew by {:.1} MiB", mib(grew));
    eprintln!("refused in {took:?}: {err}");
}
