//! Mass changes (#21): the status edits of one pass in one commit, one trailer block per
//! plan, read back by `history`; a plan whose status changed meanwhile drops out of the
//! batch without blocking the others; and a human revert pushed in the middle of a
//! 1,000-plan mass change acted on before the rest of the routine work.
//! Real bare remotes, the real `git` CLI as the human, an in-process `Reconciler`.

use crate::support;

use std::sync::{Arc, Mutex};

use rollgate::daemon::order::{self, CHUNK_PLANS};
use rollgate::model::status::{Phase, Status, Success};
use rollgate::writeback::messages::plan_blocks;
use support::rollout::{LoggedCommit, PlanFile, SETTINGS, World, set_artifact};
use support::{Remote, git, git_ok};

const STEPS: &[&str] = &["setWeight: 10", "pause: {}", "setWeight: 100"];

fn plan(name: &str, port: u16) -> PlanFile {
    PlanFile::new(name).steps(STEPS).port(port)
}

/// A remote where every plan's rollout of v1 already succeeded (its status file is in the
/// initial import), and a daemon on it that has made its first pass.
fn finished(plans: &[PlanFile]) -> World {
    let now = chrono::Utc::now();
    let mut files = vec![("rollgate.yaml".to_owned(), SETTINGS.to_owned())];
    for p in plans {
        let mut s = Status::pending(&p.name, "v1", &"0".repeat(40));
        s.phase = Phase::Succeeded;
        s.stable = Some("v1".to_owned());
        s.step = STEPS.len();
        s.weight = 100;
        s.succeeded = vec![Success {
            artifact: "v1".to_owned(),
            at: now,
        }];
        s.last_transition_at = Some(now);
        files.push((
            format!("status/{}.yaml", p.name),
            s.to_yaml().expect("status yaml"),
        ));
        files.push((p.path(), p.yaml()));
    }
    let mut w = World::on(Remote::with_files(&files), false);
    let first = w.tick();
    assert_eq!((first.transitions, first.errors), (0, 0), "{first:?}");
    w
}

/// The human changes every plan in `plans` to `to` in one commit; its sha.
fn change_all(remote: &Remote, plans: &[PlanFile], to: &str) -> String {
    remote.pull();
    for p in plans {
        let file = remote.human.join(p.path());
        let text = std::fs::read_to_string(&file).expect("read plan");
        std::fs::write(&file, set_artifact(to)(text)).expect("write plan");
    }
    remote.human(&["commit", "-qam", &format!("{} plans: {to}", plans.len())]);
    remote.human(&["push", "-q", "origin", "main"]);
    remote.head()
}

fn commits_after(remote: &Remote, sha: &str) -> Vec<LoggedCommit> {
    let all = remote.commits();
    let i = all.iter().position(|c| c.sha == sha).expect("on main");
    all[i + 1..].to_vec()
}

/// Each plan block of a commit: (plan, phase).
fn blocks(c: &LoggedCommit) -> Vec<(String, String)> {
    plan_blocks(&c.trailers)
        .into_iter()
        .map(|b| {
            let get = |k: &str| {
                b.iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .map_or(String::new(), |(_, v)| v.clone())
            };
            (get("Rollgate-Plan"), get("Rollgate-Phase"))
        })
        .collect()
}

#[test]
fn a_pass_that_moves_many_plans_writes_one_commit_with_a_trailer_block_per_plan() {
    // Given three finished rollouts
    let plans = vec![plan("a", 18101), plan("b", 18102), plan("c", 18103)];
    let mut w = finished(&plans);

    // When one commit changes all three, and the daemon passes once
    let change = change_all(&w.remote, &plans, "v2");
    let r = w.tick();

    // Then the pass wrote one commit per round: every status file, a trailer block per
    // plan; the three start (Pending), then take their first step, in the same pass
    assert_eq!((r.transitions, r.errors), (6, 0), "{r:?}");
    let new = commits_after(&w.remote, &change);
    assert_eq!(new.len(), 2, "one commit per round of the pass: {new:#?}");
    assert_eq!(
        blocks(&new[1]),
        [
            ("a", "Progressing"),
            ("b", "Progressing"),
            ("c", "Progressing")
        ]
        .map(|(p, ph)| (p.to_owned(), ph.to_owned()))
    );
    assert_eq!(new[1].subject, "3 rollouts moved: 3 Progressing");
    let batch = &new[0];
    assert!(batch.is_status(), "{batch:?}");
    assert_eq!(
        batch.files,
        ["status/a.yaml", "status/b.yaml", "status/c.yaml"]
    );
    assert_eq!(
        blocks(batch),
        [("a", "Pending"), ("b", "Pending"), ("c", "Pending")]
            .map(|(p, ph)| (p.to_owned(), ph.to_owned()))
    );
    assert_eq!(batch.subject, "3 rollouts moved: 3 Pending");
    for b in plan_blocks(&batch.trailers) {
        // Each block carries the plan's own facts, as a single-plan commit does.
        let keys: Vec<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Rollgate-Plan",
                "Rollgate-Revision",
                "Rollgate-Artifact",
                "Rollgate-Phase",
                "Rollgate-From",
                "Rollgate-Step",
                "Rollgate-Weight",
                "Rollgate-Reason"
            ]
        );
        assert!(
            b.iter()
                .any(|(k, v)| k == "Rollgate-Revision" && *v == change)
        );
    }

    // And `history` reads one event per plan from it, each with its own subject
    let repo = git2::Repository::open_bare(&w.remote.bare).expect("open");
    let head = git2::Oid::from_str(&w.remote.head()).expect("oid");
    let entries = rollgate::history::collect(&repo, head, None).expect("history");
    let in_batch: Vec<_> = entries.iter().filter(|e| e.commit == batch.sha).collect();
    assert_eq!(
        in_batch
            .iter()
            .map(|e| (e.plan.as_str(), e.phase.as_deref(), e.artifact.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("a", Some("Pending"), Some("v2")),
            ("b", Some("Pending"), Some("v2")),
            ("c", Some("Pending"), Some("v2"))
        ]
    );
    assert_eq!(in_batch[1].subject, "b: Pending (v2)");
    let only_b = rollgate::history::collect(&repo, head, Some("b")).expect("history of b");
    assert!(only_b.iter().all(|e| e.plan == "b"));
    assert!(only_b.iter().any(|e| e.commit == batch.sha));

    // When all three wait at their untimed pause, and a human promotes only `b`
    for _ in 0..6 {
        if plans
            .iter()
            .all(|p| w.status(&p.name).phase == Phase::Paused)
        {
            break;
        }
        w.tick();
    }
    assert!(
        plans
            .iter()
            .all(|p| w.status(&p.name).phase == Phase::Paused)
    );
    w.remote.pull();
    w.remote.human(&[
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "Promote b\n\nRollgate-Command: promote\nRollgate-Plan: b",
    ]);
    w.remote.human(&["push", "-q", "origin", "main"]);
    let promote = w.remote.head();
    let r = w.tick();

    // Then a pass that moves one rollout keeps the single-plan format exactly
    assert_eq!(r.transitions, 1, "{r:?}");
    let new = commits_after(&w.remote, &promote);
    assert_eq!(new.len(), 1, "{new:#?}");
    assert_eq!(new[0].trailers_named("Rollgate-Plan"), ["b"]);
    assert_eq!(new[0].files, ["status/b.yaml"]);
    assert!(
        new[0].subject.starts_with("b: Progressing step 3/3"),
        "{}",
        new[0].subject
    );
    let body = git(&w.remote.bare, &["log", "-1", "--format=%b", &new[0].sha]);
    assert!(
        body.starts_with("Rollgate-Plan: b"),
        "no body before the trailers: {body}"
    );
}

#[test]
fn a_status_changed_by_another_writer_mid_pass_drops_out_of_the_batch_without_blocking_the_others()
{
    // Given three finished rollouts, and a change of all three to v2
    let plans = vec![plan("a", 18111), plan("b", 18112), plan("c", 18113)];
    let mut w = finished(&plans);
    change_all(&w.remote, &plans, "v2");

    // When another writer changes `a`'s status while the pass that starts them is
    // between `a`'s first step and `b`'s (as a daemon killed mid-push whose push still
    // landed)
    let human = w.remote.human.clone();
    let foreign = Arc::new(Mutex::new(None::<String>));
    let seen = foreign.clone();
    w.target.before_each_action(move |action| {
        if action == "b start v2" && seen.lock().expect("lock").is_none() {
            git(&human, &["pull", "-q", "--rebase", "origin", "main"]);
            let file = human.join("status/a.yaml");
            let text = std::fs::read_to_string(&file).expect("status a");
            std::fs::write(&file, format!("{text}# touched by another writer\n")).expect("write");
            git(&human, &["commit", "-qam", "another writer"]);
            git(&human, &["push", "-q", "origin", "main"]);
            *seen.lock().expect("lock") = Some(git(&human, &["rev-parse", "HEAD"]));
        }
        Ok(())
    });
    let r = w.tick();
    w.target.clear_hook();

    // Then the commit after it writes `b` (recomputed on the new head) and not `a`
    let f = foreign.lock().expect("lock").clone().expect("the hook ran");
    let after = commits_after(&w.remote, &f);
    let ours: Vec<_> = after.iter().filter(|c| c.is_rollgate()).collect();
    assert!(!ours.is_empty(), "nothing written after the other writer");
    assert!(
        ours[0].files.contains(&"status/b.yaml".to_owned()),
        "{:#?}",
        ours[0]
    );
    assert!(
        ours.iter()
            .all(|c| !c.files.contains(&"status/a.yaml".to_owned())),
        "a stale status was written: {ours:#?}"
    );
    assert!(
        w.remote
            .file("status/a.yaml")
            .ends_with("# touched by another writer"),
        "the other writer's status stays"
    );
    assert_eq!(r.errors, 0, "{r:?}");

    // And the next passes decide `a` again from what Git says: all three move on
    for _ in 0..6 {
        if plans
            .iter()
            .all(|p| w.status(&p.name).phase == Phase::Paused)
        {
            break;
        }
        w.tick();
    }
    for p in &plans {
        assert_eq!(w.status(&p.name).phase, Phase::Paused, "{}", p.name);
    }
}

#[test]
fn a_human_revert_during_a_1000_plan_mass_change_is_not_blocked_behind_it() {
    // Given `web` paused in its rollout of v2, and 1,000 other finished rollouts
    let web = plan("web", 18120);
    let mass: Vec<PlanFile> = (0..1000)
        .map(|i| plan(&format!("m-{i:04}"), 20_000 + i))
        .collect();
    let mut all = vec![web.clone()];
    all.extend(mass.iter().cloned());
    let mut w = finished(&all);
    let web_change = w
        .remote
        .human_commit(&web.path(), set_artifact("v2"), "web: v2");
    for _ in 0..6 {
        if w.status("web").phase == Phase::Paused {
            break;
        }
        w.tick();
    }
    assert_eq!(w.status("web").phase, Phase::Paused);

    // When a mass change of the 1,000 is pushed in one commit, and in the middle of the
    // pass that records it (Pending, then each chunk's canaries start) the human reverts
    // web's change
    let mass_change = change_all(&w.remote, &mass, "v2");
    let human = w.remote.human.clone();
    let revert = Arc::new(Mutex::new(None::<String>));
    let seen = revert.clone();
    w.target.before_each_action(move |action| {
        if action == "m-0300 start v2" && seen.lock().expect("lock").is_none() {
            git(&human, &["pull", "-q", "--rebase", "origin", "main"]);
            git(&human, &["revert", "--no-edit", &web_change]);
            while !git_ok(&human, &["push", "-q", "origin", "main"]) {
                git(&human, &["pull", "-q", "--rebase", "origin", "main"]);
            }
            *seen.lock().expect("lock") = Some(git(&human, &["rev-parse", "HEAD"]));
        }
        Ok(())
    });
    let busy = w.tick();
    w.target.clear_hook();
    let r = revert
        .lock()
        .expect("lock")
        .clone()
        .expect("the revert was pushed");
    assert_eq!(busy.errors, 0, "{busy:?}");
    // (each chunk is two commits, its Pending and its first steps; chunks end at
    // CHUNK_PLANS plans or CHUNK_TIME, whichever comes first)
    let during: Vec<_> = commits_after(&w.remote, &mass_change)
        .into_iter()
        .filter(LoggedCommit::is_rollgate)
        .collect();
    let moved: usize = during.iter().map(|c| blocks(c).len()).sum();
    assert_eq!(
        busy.transitions,
        moved,
        "{busy:?} {:#?}",
        during.iter().map(|c| &c.subject).collect::<Vec<_>>()
    );
    assert!(
        during.len() <= 2 * moved.div_ceil(order::CHUNK_MIN_PLANS),
        "{} commits for {moved} transitions",
        during.len()
    );

    // Then that pass yields to the new commit, and the next pass acts on the revert first
    assert!(busy.yielded, "the busy pass went on to the end: {busy:?}");
    let next = w.tick();
    assert_eq!(next.errors, 0, "{next:?}");
    let after = commits_after(&w.remote, &r);
    let web_at = after
        .iter()
        .position(|c| blocks(c).iter().any(|(p, _)| p == "web"))
        .unwrap_or_else(|| panic!("web's rollback is not recorded: {after:#?}"));
    let web_block = blocks(&after[web_at])
        .into_iter()
        .find(|(p, _)| p == "web")
        .expect("web's block");
    assert_eq!(web_block.1, "RollingBack");
    // Only the routine chunk in progress when the revert landed went before it…
    let routine_before: usize = after[..web_at]
        .iter()
        .map(|c| {
            blocks(c)
                .iter()
                .filter(|(p, _)| p.starts_with("m-"))
                .count()
        })
        .sum();
    assert!(
        routine_before <= CHUNK_PLANS,
        "{routine_before} routine transitions went before the revert"
    );
    // …and most of the mass change's canaries were still to start after it.
    let started_before_web: usize = commits_after(&w.remote, &mass_change)
        .iter()
        .take_while(|c| c.sha != after[web_at].sha)
        .map(|c| {
            blocks(c)
                .iter()
                .filter(|(p, ph)| p.starts_with("m-") && ph == "Progressing")
                .count()
        })
        .sum();
    assert!(
        started_before_web < 600,
        "{started_before_web} of the 1,000 canaries started before the revert was acted on"
    );
}

#[test]
fn regression_an_idle_pass_over_many_plans_does_not_fetch_once_per_chunk() {
    // Given 250 finished rollouts (three chunks of routine work)
    let plans: Vec<PlanFile> = (0..250)
        .map(|i| plan(&format!("idle-{i:03}"), 21_000 + i))
        .collect();
    let mut w = finished(&plans);
    let fetches = || {
        rollgate::telemetry::global()
            .git_fetches
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    // When the daemon passes over them with nothing to do
    let before = fetches();
    let started = std::time::Instant::now();
    let r = w.tick();
    let took = started.elapsed();

    // Then it fetched once, at the start of the pass: a look for new commits after each
    // chunk is due only every CHUNK_TIME (it was a fetch per 100 idle plans)
    assert_eq!((r.transitions, r.errors), (0, 0), "{r:?}");
    let looks = fetches() - before;
    let allowed = 1 + (took.as_millis() / order::CHUNK_TIME.as_millis()) as u64;
    assert!(
        looks <= allowed,
        "{looks} fetches in a {took:?} idle pass over 250 plans"
    );
    assert!(looks >= 1, "the pass did not fetch at all");
}

#[test]
fn regression_a_mass_change_does_not_yield_to_commits_that_change_nothing_rollgate_reads() {
    // Given 300 finished rollouts
    let mass: Vec<PlanFile> = (0..300)
        .map(|i| plan(&format!("n-{i:03}"), 22_000 + i))
        .collect();
    let mut w = finished(&mass);

    // When all 300 change in one commit, and in the middle of the pass that starts them a
    // human pushes a commit that changes only a file rollgate does not read (then takes
    // long enough that the pass looks for new commits before its next chunk)
    let mass_change = change_all(&w.remote, &mass, "v2");
    let human = w.remote.human.clone();
    let notes = Arc::new(Mutex::new(None::<String>));
    let seen = notes.clone();
    w.target.before_each_action(move |action| {
        if action == "n-150 start v2" && seen.lock().expect("lock").is_none() {
            git(&human, &["pull", "-q", "--rebase", "origin", "main"]);
            std::fs::write(human.join("NOTES.md"), "release notes\n").expect("write");
            git(&human, &["add", "NOTES.md"]);
            git(&human, &["commit", "-qm", "notes"]);
            while !git_ok(&human, &["push", "-q", "origin", "main"]) {
                git(&human, &["pull", "-q", "--rebase", "origin", "main"]);
            }
            *seen.lock().expect("lock") = Some(git(&human, &["rev-parse", "HEAD"]));
            std::thread::sleep(order::CHUNK_TIME + order::CHUNK_TIME / 4);
        }
        Ok(())
    });
    let busy = w.tick();
    w.target.clear_hook();
    let notes = notes.lock().expect("lock").clone().expect("notes pushed");

    // Then that pass did not yield: every plan took its first step in it (it yielded
    // after the first chunk before, and against humans pushing all the time, every pass did)
    assert_eq!(busy.errors, 0, "{busy:?}");
    assert!(
        !busy.yielded,
        "the pass yielded to a commit it does not read: {busy:?}"
    );
    assert_eq!(busy.transitions, 2 * mass.len(), "{busy:?}");
    for p in &mass {
        let s = w.status(&p.name);
        assert_eq!(
            (s.candidate.as_str(), s.phase, s.weight),
            ("v2", Phase::Progressing, 10),
            "{}: {s:?}",
            p.name
        );
    }
    // And the human's commit is kept, under rollgate's later commits
    let after = commits_after(&w.remote, &mass_change);
    assert!(
        after.iter().any(|c| c.subject == "notes"),
        "{:#?}",
        after.iter().map(|c| &c.subject).collect::<Vec<_>>()
    );
    assert_eq!(
        git(&w.remote.bare, &["show", "main:NOTES.md"]).trim(),
        "release notes"
    );
    assert!(!git(&w.remote.bare, &["branch", "--contains", notes.trim()]).is_empty());
}

#[test]
fn regression_a_batch_that_keeps_losing_races_is_written_in_smaller_commits_not_given_up() {
    // Given eight finished rollouts, and a remote that refuses any push changing more
    // than two status files (as a branch others push to all the time refuses big,
    // slow pushes: they lose the race every time)
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let plans: Vec<PlanFile> = names
        .iter()
        .zip(18121..)
        .map(|(n, port)| plan(n, port))
        .collect();
    let mut w = finished(&plans);
    let hook = w.remote.bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\n\
         while read old new ref; do\n\
           n=$(git diff --name-only \"$old\" \"$new\" -- status/ | wc -l)\n\
           if [ \"$n\" -gt 2 ]; then echo \"$n status files: too many\" >&2; exit 1; fi\n\
         done\n",
    )
    .expect("hook");
    let mut perms = std::fs::metadata(&hook).expect("hook").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&hook, perms).expect("chmod");

    // When one commit changes all eight, and the daemon passes once
    let change = change_all(&w.remote, &plans, "v2");
    let r = w.tick();

    // Then every plan started and took its first step, in commits of at most two plans,
    // in the order decided
    assert_eq!((r.transitions, r.errors), (16, 0), "{r:?}");
    let new = commits_after(&w.remote, &change);
    assert!(new.iter().all(LoggedCommit::is_status), "{new:#?}");
    assert!(
        new.iter().all(|c| (1..=2).contains(&c.files.len())),
        "{:#?}",
        new.iter().map(|c| &c.files).collect::<Vec<_>>()
    );
    let written: Vec<(String, String)> = new.iter().flat_map(blocks).collect();
    let expect: Vec<(String, String)> = ["Pending", "Progressing"]
        .iter()
        .flat_map(|ph| names.iter().map(|n| ((*n).to_owned(), (*ph).to_owned())))
        .collect();
    assert_eq!(written, expect);
    for p in &plans {
        assert_eq!(w.status(&p.name).phase, Phase::Progressing, "{}", p.name);
    }
}
