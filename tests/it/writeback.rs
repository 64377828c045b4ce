//! The single Git writer against real bare remotes, with the real `git` CLI as the human.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rollgate::model::settings::WriteBack;
use rollgate::source::git::GitSource;
use rollgate::writeback::{CommitSpec, Edit, WriteOutcome, Writer};
use support::{Remote, example_repo, git};

/// rollgate's clone of `remote`'s main.
fn open_source(remote: &Remote) -> GitSource {
    GitSource::open(
        remote.bare.to_str().expect("utf8"),
        &remote.work_dir("work"),
        "main",
    )
    .expect("open")
}

fn status_spec(n: usize) -> CommitSpec {
    CommitSpec {
        subject: format!("hello: step {n}"),
        body: None,
        trailers: vec![
            ("Rollgate-Plan".into(), "hello".into()),
            ("Rollgate-Step".into(), format!("{n}/50")),
        ],
        revert: None,
        edits: vec![Edit {
            path: "status/hello.yaml".into(),
            content: Some(format!("plan: hello\nstep: {n}\n").into_bytes()),
        }],
    }
}

#[test]
fn a_status_commit_carries_its_trailers_and_a_repeat_is_not_committed() {
    // Given a remote seeded with the example repository
    let remote = Remote::seeded_from(&example_repo());
    let src = open_source(&remote);
    let settings = WriteBack::default();
    let writer = Writer::new(&src, &settings);
    // When rollgate writes a status change
    let out = writer.write(|_| Ok(Some(status_spec(1)))).expect("write");
    assert!(matches!(out, WriteOutcome::Pushed { .. }), "{out:?}");
    // Then the remote's head has the file and the trailers
    assert_eq!(
        git(&remote.bare, &["show", "main:status/hello.yaml"]),
        "plan: hello\nstep: 1"
    );
    let trailers = remote.log("%(trailers:key=Rollgate-Step,valueonly)");
    assert_eq!(trailers.lines().next(), Some("1/50"));
    assert_eq!(remote.log("%an").lines().next(), Some("rollgate"));
    // And writing the same content again makes no commit
    let count = remote.log("%H").lines().count();
    assert_eq!(
        writer.write(|_| Ok(Some(status_spec(1)))).expect("write"),
        WriteOutcome::NoChange
    );
    assert_eq!(remote.log("%H").lines().count(), count);
}

#[test]
fn regression_a_write_on_the_head_last_fetched_loses_the_race_to_a_human_push_and_recomputes() {
    // Given a writer that wrote once (its head: that commit), then a human push
    let remote = Remote::seeded_from(&example_repo());
    let src = open_source(&remote);
    let settings = WriteBack::default();
    let mut writer = Writer::new(&src, &settings);
    writer.first_on_known_head = true;
    let WriteOutcome::Pushed { commit: first, .. } =
        writer.write(|_| Ok(Some(status_spec(1)))).expect("write")
    else {
        panic!("not pushed");
    };
    let human = remote.human_commit("notes.txt", |_| "a note\n".to_owned(), "human: note");
    // When it writes again
    let mut heads = Vec::new();
    let out = writer
        .write(|head| {
            heads.push(head.to_string());
            Ok(Some(status_spec(2)))
        })
        .expect("write");
    // Then it built on the head it knew, lost the race, fetched and recomputed on the human's
    let WriteOutcome::Pushed { commit, attempts } = out else {
        panic!("not pushed: {out:?}");
    };
    assert_eq!(heads, [first.to_string(), human.clone()]);
    assert_eq!(attempts, 2);
    // And the human's commit is kept, under rollgate's
    assert_eq!(remote.log("%H").lines().nth(1), Some(human.as_str()));
    assert_eq!(
        remote.log("%H").lines().next(),
        Some(commit.to_string().as_str())
    );
    assert_eq!(git(&remote.bare, &["show", "main:notes.txt"]), "a note");
}

#[test]
fn nothing_to_write_is_believed_only_on_a_freshly_fetched_head() {
    // Given a writer that wrote once, then a human push it has not fetched
    let remote = Remote::seeded_from(&example_repo());
    let src = open_source(&remote);
    let settings = WriteBack::default();
    let mut writer = Writer::new(&src, &settings);
    writer.first_on_known_head = true;
    writer.write(|_| Ok(Some(status_spec(1)))).expect("write");
    let known = src.head().expect("head");
    let human = remote.human_commit("notes.txt", |_| "a note\n".to_owned(), "human: note");
    // When the change looks done on the head it knows (and is not on the human's)
    let out = writer
        .write(|head| Ok((head != known).then(|| status_spec(2))))
        .expect("write");
    // Then it fetched, saw the new head, and wrote on it
    assert!(matches!(out, WriteOutcome::Pushed { .. }), "{out:?}");
    assert_eq!(remote.log("%H").lines().nth(1), Some(human.as_str()));
    // And on a head that did not move, nothing to write is nothing written
    let head = remote.head();
    assert_eq!(
        writer.write(|_| Ok(None)).expect("write"),
        WriteOutcome::NoChange
    );
    assert_eq!(remote.head(), head);
}

#[test]
fn skip_ci_is_a_setting() {
    let remote = Remote::seeded_from(&example_repo());
    let src = open_source(&remote);
    let settings = WriteBack {
        skip_ci: true,
        ..WriteBack::default()
    };
    Writer::new(&src, &settings)
        .write(|_| Ok(Some(status_spec(2))))
        .expect("write");
    assert_eq!(
        remote.log("%s").lines().next(),
        Some("hello: step 2 [skip ci]")
    );
}

#[test]
fn a_revert_commit_undoes_the_plan_change() {
    let remote = Remote::seeded_from(&example_repo());
    let change = remote.human_commit(
        "plans/hello.yaml",
        |s| s.replace("artifact: v1", "artifact: v2"),
        "hello: v2",
    );
    let src = open_source(&remote);
    let settings = WriteBack::default();
    let oid = git2::Oid::from_str(&change).expect("oid");
    let spec = CommitSpec {
        subject: "Roll back hello: success-rate failed".into(),
        body: None,
        trailers: vec![
            ("Rollgate-Plan".into(), "hello".into()),
            ("Rollgate-Rollback-Of".into(), change.clone()),
        ],
        revert: Some(oid),
        edits: vec![],
    };
    Writer::new(&src, &settings)
        .write(|_| Ok(Some(spec.clone())))
        .expect("write");
    let plan = git(&remote.bare, &["show", "main:plans/hello.yaml"]);
    assert!(plan.contains("artifact: v1"), "{plan}");
    assert_eq!(
        remote
            .log("%(trailers:key=Rollgate-Rollback-Of,valueonly)")
            .lines()
            .next(),
        Some(change.as_str())
    );
}

#[test]
fn push_race_never_drops_a_human_commit_and_never_force_pushes() {
    // Given a human pushing commits in a tight loop from another process
    let remote = Remote::seeded_from(&example_repo());
    let stop = Arc::new(AtomicBool::new(false));
    let human_dir = remote.human.clone();
    let stop2 = stop.clone();
    let human = std::thread::spawn(move || {
        let mut pushed = Vec::new();
        let mut i = 0;
        while !stop2.load(Ordering::Relaxed) && i < 200 {
            i += 1;
            std::fs::write(human_dir.join(format!("notes-{i}.txt")), format!("{i}\n"))
                .expect("write");
            git(&human_dir, &["add", "-A"]);
            git(&human_dir, &["commit", "-q", "-m", &format!("human {i}")]);
            // Push, pulling with rebase when rollgate got there first.
            for _ in 0..50 {
                if support::git_ok(&human_dir, &["push", "-q", "origin", "main"]) {
                    break;
                }
                git(&human_dir, &["pull", "-q", "--rebase", "origin", "main"]);
            }
            pushed.push(format!("human {i}"));
        }
        pushed
    });
    // When rollgate writes 30 status commits meanwhile
    let src = open_source(&remote);
    let settings = WriteBack::default();
    let writer = Writer::new(&src, &settings);
    let mut retries = 0;
    for n in 1..=30 {
        match writer.write(|_| Ok(Some(status_spec(n)))).expect("write") {
            WriteOutcome::Pushed { attempts, .. } => retries += attempts - 1,
            WriteOutcome::NoChange => panic!("step {n} was not written"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let pushed = human.join().expect("human thread");
    // Then every human commit is in main's history
    let subjects = remote.log("%s");
    for h in &pushed {
        assert!(subjects.lines().any(|l| l == h), "{h} was dropped");
    }
    // And every rollgate step too, in order
    let steps: Vec<String> = subjects
        .lines()
        .filter(|l| l.starts_with("hello: step"))
        .map(str::to_owned)
        .collect();
    assert_eq!(steps.len(), 30);
    // And the remote's reflog shows only fast-forwards: each new value descends from the old
    let reflog = git(
        &remote.bare,
        &["reflog", "show", "--format=%H", "refs/heads/main"],
    );
    let ids: Vec<&str> = reflog.lines().collect();
    for pair in ids.windows(2) {
        assert!(
            support::git_ok(
                &remote.bare,
                &["merge-base", "--is-ancestor", pair[1], pair[0]]
            ),
            "{} replaced {} without descending from it: a force-push",
            pair[0],
            pair[1]
        );
    }
    eprintln!(
        "human pushed {} commits; rollgate lost {retries} races and recomputed",
        pushed.len()
    );
}

#[test]
fn ssh_signed_status_commits_verify_with_git() {
    // Given an SSH key made for this test and a writer configured to sign with it
    let remote = Remote::seeded_from(&example_repo());
    let key = remote.work_dir("signing_key");
    let made = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "rollgate@example.com",
            "-f",
        ])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(made.success());
    let src = open_source(&remote);
    let settings = WriteBack {
        signing: Some(rollgate::model::settings::Signing::Ssh {
            key: key.display().to_string(),
        }),
        author: rollgate::model::settings::Identity {
            name: "rollgate".into(),
            email: "rollgate@example.com".into(),
        },
        committer: rollgate::model::settings::Identity {
            name: "rollgate".into(),
            email: "rollgate@example.com".into(),
        },
        ..WriteBack::default()
    };
    // When it writes a status commit
    Writer::new(&src, &settings)
        .write(|_| Ok(Some(status_spec(7))))
        .expect("signed write");
    // Then git itself verifies the signature against the allowed signer
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let allowed = remote.work_dir("allowed_signers");
    std::fs::write(&allowed, format!("rollgate@example.com {public}")).expect("allowed signers");
    let verify = std::process::Command::new("git")
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
        .args(["verify-commit", "main"])
        .current_dir(&remote.bare)
        .output()
        .expect("git verify-commit runs");
    assert!(
        verify.status.success(),
        "signature does not verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // And the private key appears nowhere in the commit
    let raw = git(&remote.bare, &["cat-file", "commit", "main"]);
    let private = std::fs::read_to_string(&key).expect("private key");
    assert!(
        !raw.contains(private.lines().nth(1).expect("key body")),
        "private key leaked into the commit"
    );
}

/// A status commit of `files` status files, each at `step`, a few KB alike but for
/// their last line: what a mass change's pass writes.
fn mass_spec(files: usize, step: usize) -> CommitSpec {
    let filler: String = (0..60).map(|k| format!("history{k}: v0.{k}\n")).collect();
    CommitSpec {
        subject: format!("{files} plans: step {step}"),
        body: None,
        trailers: vec![("Rollgate-Plan".into(), "many".into())],
        revert: None,
        edits: (0..files)
            .map(|i| Edit {
                path: format!("status/p{i}.yaml"),
                content: Some(format!("plan: p{i}\n{filler}step: {step}\n").into_bytes()),
            })
            .collect(),
    }
}

#[test]
fn regression_a_large_status_push_sends_whole_objects_so_neither_side_searches_for_deltas() {
    // Given a remote with 150 status files, pushed by rollgate
    let remote = Remote::seeded_from(&example_repo());
    let src = open_source(&remote);
    let settings = WriteBack::default();
    let writer = Writer::new(&src, &settings);
    let first = writer
        .write(|_| Ok(Some(mass_spec(150, 1))))
        .expect("write");
    assert!(matches!(first, WriteOutcome::Pushed { .. }), "{first:?}");
    // When rollgate pushes a new version of every one, each a line away from the last
    let packs_before = packs(&remote.bare);
    let second = writer
        .write(|_| Ok(Some(mass_spec(150, 2))))
        .expect("write");
    assert!(matches!(second, WriteOutcome::Pushed { .. }), "{second:?}");
    // Then the pack the remote kept (over `receive.unpackLimit`'s 100 objects) holds
    // no delta: Git's delta search, 50 ms of CPU for a 1,000-status commit, widened the
    // window in which another writer's push wins the race (before: 150 deltas)
    let new: Vec<_> = packs(&remote.bare)
        .into_iter()
        .filter(|p| !packs_before.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "one new pack: {new:?}");
    let listing = git(
        &remote.bare,
        &["verify-pack", "-v", new[0].to_str().expect("utf8")],
    );
    let objects = listing.lines().filter(|l| l.contains(" blob ")).count();
    // `verify-pack -v`: `id type size size-in-pack offset [depth base-id]`.
    let deltas = listing
        .lines()
        .filter(|l| l.split_whitespace().count() == 7)
        .count();
    assert!(objects >= 150, "{listing}");
    assert_eq!(deltas, 0, "{listing}");
    assert!(git(&remote.bare, &["show", "main:status/p7.yaml"]).ends_with("step: 2"));
}

/// The `.pack` files of a bare repository.
fn packs(bare: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(bare.join("objects/pack"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pack"))
                .collect()
        })
        .unwrap_or_default()
}

/// Where the remote's main stores `status/hello.yaml` (a writer moves only the status
/// files it writes; the daemon moves the others, `tests/it/status_layout.rs`).
fn status_paths(remote: &Remote) -> Vec<String> {
    git(
        &remote.bare,
        &["ls-tree", "-r", "--name-only", "main", "status/"],
    )
    .lines()
    .filter(|p| p.ends_with("/hello.yaml"))
    .map(str::to_owned)
    .collect()
}

#[test]
fn a_writer_on_its_own_stores_status_files_where_auto_puts_them_for_the_repository_size() {
    use rollgate::model::settings::{AUTO_FLAT_BELOW, AUTO_SHARD_AT};
    let sharded = format!(
        "status/{}/hello.yaml",
        rollgate::source::status_shard("hello.yaml")
    );
    // Given the example repository (a few plans) and the default setting, `auto`
    let remote = Remote::seeded_from(&example_repo());
    let src = open_source(&remote);
    let settings = WriteBack::default();
    let writer = Writer::new(&src, &settings);
    let write = |n| writer.write(|_| Ok(Some(status_spec(n)))).expect("write");
    // Then a small repository's status file is flat
    write(1);
    assert_eq!(status_paths(&remote), ["status/hello.yaml"]);
    // When it grows to the bound, the status file written moves to its shard folder
    let plans = git(&remote.bare, &["ls-tree", "--name-only", "main", "plans/"])
        .lines()
        .count();
    remote.fillers(0..AUTO_SHARD_AT - plans, true);
    write(2);
    assert_eq!(status_paths(&remote), std::slice::from_ref(&sharded));
    // and a repository between the bounds keeps the layout it has
    remote.fillers(AUTO_FLAT_BELOW - plans..AUTO_SHARD_AT - plans, false);
    write(3);
    assert_eq!(status_paths(&remote), std::slice::from_ref(&sharded));
    assert_eq!(
        git(&remote.bare, &["show", &format!("main:{sharded}")]),
        "plan: hello\nstep: 3"
    );
    // When it shrinks below the lower bound, the status file is flat again
    remote.fillers(AUTO_FLAT_BELOW - plans - 1..AUTO_FLAT_BELOW - plans, false);
    write(4);
    assert_eq!(status_paths(&remote), ["status/hello.yaml"]);
}
