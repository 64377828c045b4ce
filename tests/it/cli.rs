//! The command line as users meet it: exit codes, output formats, schema, completions.

use std::process::Command;

fn rollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .output()
        .expect("rollgate runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example() -> String {
    format!("{}/example-repo", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_example_repository_is_valid_with_policies() {
    let (code, out, err) = rollgate(&["validate", &example()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("7 valid, 0 invalid"), "{out}");
}

#[test]
fn json_output_is_data() {
    let (code, out, _) = rollgate(&["validate", &example(), "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["valid"], true);
    assert_eq!(v["accepted"].as_array().map(Vec::len), Some(7));
}

#[test]
fn a_missing_repository_is_a_usage_error_printed_once() {
    let (code, out, err) = rollgate(&["validate", "/nonexistent/repo"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/repo"), "{err}");
}

#[test]
fn unknown_subcommands_are_usage_errors() {
    let (code, _, err) = rollgate(&["valdate"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("validate"),
        "clap suggests the right word: {err}"
    );
}

#[test]
fn schema_prints_the_plan_and_settings_schemas() {
    let (code, out, _) = rollgate(&["schema"]);
    assert_eq!(code, 0);
    let plan: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(plan["title"], "RolloutPlan");
    let (_, out, _) = rollgate(&["schema", "settings"]);
    let settings: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(settings["title"], "Settings");
}

#[test]
fn completions_and_version() {
    let (code, out, _) = rollgate(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("rollgate"), "{out}");
    let (code, out, _) = rollgate(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("rollgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn policy_test_counts_like_opa_test() {
    let dir = format!("{}/policies", env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = rollgate(&["policy", "test", &dir]);
    assert_eq!(code, 0, "{out}{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.ends_with("passed, 0 failed"), "{last}");
    // A failing test makes it exit 1.
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join("x_test.rego"),
        "package rollgate.x_test\n\nimport rego.v1\n\ntest_fails if {\n\t1 == 2\n}\n",
    )
    .expect("write");
    let (code, out, _) = rollgate(&["policy", "test", tmp.path().to_str().expect("utf8")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().last().unwrap_or_default() == "0 passed, 1 failed",
        "{out}"
    );
}

#[test]
fn judge_replays_kayentas_miss_as_a_fail() {
    let dir = tempfile::tempdir().expect("tmp");
    let canary = dir.path().join("canary");
    let baseline = dir.path().join("baseline");
    std::fs::write(&canary, "100\n100\n100\n100\n100\n100\n100\n1\n1\n1\n").expect("write");
    std::fs::write(&baseline, "1\n".repeat(10)).expect("write");
    let (code, out, err) = rollgate(&[
        "judge",
        "--baseline",
        baseline.to_str().expect("utf8"),
        "--canary",
        canary.to_str().expect("utf8"),
        "--direction",
        "increase",
        "--max-ratio",
        "1.2",
        "--output",
        "json",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verdict"], "fail");
    assert_eq!(v["n"]["canary"], 10);
    assert!(v["pValue"].as_f64().is_some_and(|p| p < 0.05), "{v}");
}

#[test]
fn judge_counts_sparse_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let canary = dir.path().join("canary");
    let baseline = dir.path().join("baseline");
    std::fs::write(&canary, "97 100\n").expect("write");
    std::fs::write(&baseline, "10000 10000\n").expect("write");
    let (code, out, err) = rollgate(&[
        "judge",
        "--kind",
        "ratio",
        "--baseline",
        baseline.to_str().expect("utf8"),
        "--canary",
        canary.to_str().expect("utf8"),
        "--max-ratio",
        "1.5",
    ]);
    assert_eq!(
        code, 1,
        "3 errors in 100 against 0 in 10,000 is a fail: {out}{err}"
    );
    assert!(out.starts_with("fail "), "{out}");
}

#[test]
fn regression_logs_written_to_a_file_carry_no_colour_codes() {
    // Given a repository with one plan, and the daemon's log going to a file (not a tty)
    let remote = tempfile::tempdir().expect("tmp");
    let bare = remote.path().join("remote.git");
    let seed = remote.path().join("seed");
    std::fs::create_dir_all(seed.join("plans")).expect("seed");
    let git = |dir: &std::path::Path, args: &[&str]| {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Human")
            .env("GIT_AUTHOR_EMAIL", "h@example.com")
            .env("GIT_COMMITTER_NAME", "Human")
            .env("GIT_COMMITTER_EMAIL", "h@example.com")
            .status()
            .expect("git")
            .success();
        assert!(ok, "git {args:?}");
    };
    git(
        remote.path(),
        &["init", "-q", "--bare", "-b", "main", "remote.git"],
    );
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::copy(
        std::path::Path::new(&example()).join("rollgate.yaml"),
        seed.join("rollgate.yaml"),
    )
    .expect("settings");
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "seed"]);
    git(&seed, &["push", "-q", bare.to_str().expect("utf8"), "main"]);
    let log = remote.path().join("daemon.log");
    // When it runs one pass, with and without NO_COLOR
    for no_color in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollgate"));
        cmd.args(["run", "--once", "--dry-run", "--repo"])
            .arg(&bare)
            .arg("--state-dir")
            .arg(remote.path().join("state"))
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stderr(std::fs::File::create(&log).expect("log"));
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let status = cmd.status().expect("rollgate run");
        assert!(status.success());
        // Then the log has lines, and no escape sequence
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.contains("rollgate running"), "{text}");
        assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
    }
}

#[test]
fn regression_validate_exits_2_on_an_io_error_as_the_readme_says() {
    // Given a folder with no rollgate.yaml
    let empty = tempfile::tempdir().expect("tmp");
    // When it is validated
    let (code, out, _) = rollgate(&["validate", empty.path().to_str().expect("utf8")]);
    // Then the exit code is 2 (not 1, which means "a plan is invalid"), with the reason
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("error[io]"), "{out}");
}

/// Every `rollgate …` command line in the README: in code blocks, and in inline code.
fn readme_command_lines() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let mut out = Vec::new();
    let mut in_block = false;
    let mut inline = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            if let Some(at) = line.find("rollgate ")
                && line[..at].trim().is_empty()
            {
                out.push(line[at..].to_owned());
            }
            continue;
        }
        // Inline code may wrap over lines: join the paragraph's text.
        inline.push_str(line);
        inline.push(' ');
        if line.trim().is_empty() {
            for (i, chunk) in inline.split('`').enumerate() {
                if i % 2 == 1 && chunk.starts_with("rollgate ") {
                    out.push(chunk.to_owned());
                }
            }
            inline.clear();
        }
    }
    out
}

#[test]
fn the_readme_names_only_subcommands_and_flags_that_exist() {
    let mut help_of: std::collections::BTreeMap<Vec<String>, String> = Default::default();
    let mut checked = 0;
    for line in readme_command_lines() {
        // The command itself, not a comment or a shell pipeline after it.
        let cmd = line.split(" # ").next().unwrap_or(&line);
        let cmd = cmd.split(" && ").next().unwrap_or(cmd);
        let words: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        let Some(first) = words.first() else { continue };
        if first.starts_with('-') {
            continue; // `rollgate --version`: checked by completions_and_version
        }
        for sub in first.split('|') {
            let mut path = vec![sub.to_owned()];
            if let Some(second) = words.get(1)
                && matches!(sub, "policy" | "dataplane")
            {
                path.push(second.split('|').next().unwrap_or(second).to_owned());
            }
            let help = help_of.entry(path.clone()).or_insert_with(|| {
                let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
                args.push("--help");
                let (code, out, err) = rollgate(&args);
                assert_eq!(
                    code,
                    0,
                    "README: `{line}`: `rollgate {}` is no command: {err}",
                    path.join(" ")
                );
                out
            });
            for flag in cmd
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .filter(|w| w.starts_with("--") && w.len() > 2)
            {
                assert!(
                    help.contains(flag),
                    "README: `{line}`: `rollgate {}` has no {flag}",
                    path.join(" ")
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "only {checked} flags found in the README");
}

#[test]
fn load_sends_steady_requests_and_counts_them_by_version() {
    // Given the demo service on a free port
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _service = Kill(
        Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args([
                "demo-service",
                "--port",
                &port.to_string(),
                "--version",
                "v7",
            ])
            .spawn()
            .expect("demo-service"),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // When `rollgate load` runs for 2 s at 50 requests a second
    let (code, out, err) = rollgate(&[
        "load",
        &format!("http://{addr}"),
        "--rps",
        "50",
        "--duration",
        "2s",
    ]);
    // Then every request was answered, by v7, about 100 in all
    assert_eq!(code, 0, "{out}{err}");
    let total = out
        .lines()
        .find(|l| l.starts_with("total: "))
        .expect("a total line");
    let n: u64 = total
        .trim_start_matches("total: v7=")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{total}"));
    assert!((60..=140).contains(&n), "{total}");
    assert!(total.ends_with("0 errors (5xx), 0 failed"), "{total}");
}

#[test]
fn regression_the_default_state_folder_is_the_users_not_the_current_folder() {
    let help = |env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["run", "--help"])
            .env_remove("XDG_STATE_HOME")
            .env_remove("ROLLGATE_STATE_DIR")
            .envs(env.iter().copied())
            .output()
            .expect("help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        help(&[("XDG_STATE_HOME", "/srv/state"), ("HOME", "/home/u")])
            .contains("[default: /srv/state/rollgate]")
    );
    assert!(help(&[("HOME", "/home/u")]).contains("[default: /home/u/.local/state/rollgate]"));
}
