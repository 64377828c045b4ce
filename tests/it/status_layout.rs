//! `writeBack.statusLayout`: status files stored flat (`status/<plan>.yaml`) or in 256
//! shard folders (`status/<hh>/<plan>.yaml`). Turning it on or off moves every status
//! file in one rollgate commit; rollouts read and write the configured place; a human's
//! edit of a sharded status file is distrusted like a flat one's.

use crate::support;

use rollgate::model::status::Phase;
use rollgate::source::status_shard;
use support::rollout::{LoggedCommit, PlanFile, World, assert_only_fast_forwards, set_artifact};

fn sharded(plan: &str) -> String {
    let file = format!("{plan}.yaml");
    format!("status/{}/{file}", status_shard(&file))
}

/// Every file of the remote's main under `status/`.
fn status_tree(w: &World) -> Vec<String> {
    let mut files: Vec<String> = support::git(
        &w.remote.bare,
        &["ls-tree", "-r", "--name-only", "main", "status/"],
    )
    .lines()
    .map(str::to_owned)
    .collect();
    files.sort();
    files
}

fn set_layout(layout: &'static str) -> impl FnOnce(String) -> String {
    move |settings| {
        let kept: String = settings
            .lines()
            .filter(|l| !l.starts_with("writeBack:"))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("{kept}writeBack: {{ statusLayout: {layout} }}\n")
    }
}

fn layout_commits(w: &World) -> Vec<LoggedCommit> {
    w.remote
        .commits()
        .into_iter()
        .filter(|c| c.trailer("Rollgate-Status-Layout").is_some())
        .collect()
}

/// Two plans, `web` and `api`, rolled out with the default settings (a small repository:
/// status files flat); the world, `web`, and both status files' content (api, web).
fn rolled_out_flat() -> (World, PlanFile, Vec<String>) {
    let (web, api) = (PlanFile::new("web"), PlanFile::new("api"));
    let mut w = World::new(&[&web, &api]);
    for p in ["web", "api"] {
        w.run_until(p, 10, 40, |s| s.phase == Phase::Succeeded);
    }
    assert_eq!(status_tree(&w), ["status/api.yaml", "status/web.yaml"]);
    let before = ["api", "web"]
        .iter()
        .map(|p| w.remote.file(&format!("status/{p}.yaml")))
        .collect();
    (w, web, before)
}

/// Both status files (api, web) are in their shard folders, and only there, with the
/// content `before` they had flat; returns their paths, sorted.
fn assert_moved_to_shards(w: &World, before: &[String]) -> Vec<String> {
    let mut now = vec![sharded("api"), sharded("web")];
    now.sort();
    assert_eq!(status_tree(w), now);
    let after: Vec<String> = ["api", "web"]
        .iter()
        .map(|p| w.remote.file(&sharded(p)))
        .collect();
    assert_eq!(after, before, "a move changes no status");
    now
}

/// The next pass moves both status files back flat in a second layout commit; web's
/// rollout to v2 is kept, and the branch only ever moved forward.
fn assert_moved_back_flat(w: &mut World) {
    assert_eq!(w.tick().errors, 0);
    let moves = layout_commits(w);
    assert_eq!(moves.len(), 2, "{moves:?}");
    assert_eq!(moves[1].trailer("Rollgate-Status-Layout"), Some("flat"));
    assert_eq!(status_tree(w), ["status/api.yaml", "status/web.yaml"]);
    assert_eq!(w.status("web").candidate, "v2");
    assert_only_fast_forwards(&w.remote);
}

#[test]
fn turning_status_sharding_on_moves_every_status_file_in_one_commit_and_rollouts_go_on() {
    // Given two plans rolled out with their status files flat
    let (mut w, web, before) = rolled_out_flat();

    // When the settings turn sharding on
    w.remote.human_commit(
        "rollgate.yaml",
        set_layout("sharded"),
        "shard the status files",
    );
    let report = w.tick();
    assert_eq!(report.errors, 0, "{report:?}");

    // Then one rollgate commit moved both, content unchanged
    let moves = layout_commits(&w);
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(moves[0].trailer("Rollgate-Status-Layout"), Some("sharded"));
    assert_eq!(moves[0].author, "rollgate");
    let mut moved = moves[0].files.clone();
    moved.sort();
    let mut want = vec![
        "status/api.yaml".to_owned(),
        "status/web.yaml".to_owned(),
        sharded("api"),
        sharded("web"),
    ];
    want.sort();
    assert_eq!(moved, want);
    let now = assert_moved_to_shards(&w, &before);
    // and passes after it move nothing again
    for _ in 0..3 {
        w.wait(10);
        assert_eq!(w.tick().errors, 0);
    }
    assert_eq!(layout_commits(&w).len(), 1);

    // When web changes, its rollout reads and writes the sharded file only
    let change = w
        .remote
        .human_commit(&web.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 40, |s| {
        s.phase == Phase::Succeeded && s.candidate == "v2"
    });
    let commits = w.remote.commits();
    let at = commits
        .iter()
        .position(|c| c.sha == change)
        .expect("the change");
    let rollout = &commits[at + 1..];
    assert!(rollout.len() >= 3, "{rollout:?}");
    for c in rollout {
        assert!(c.is_status(), "{c:?}");
        assert_eq!(c.files, vec![sharded("web")], "{c:?}");
    }
    assert_eq!(status_tree(&w), now, "no flat copy came back");
    // and every reader finds both statuses where they are
    let repo = git2::Repository::open_bare(&w.remote.bare).expect("open");
    let head = repo.revparse_single("main").expect("main").id();
    let mut names: Vec<String> = rollgate::history::statuses(&repo, head)
        .expect("statuses")
        .into_iter()
        .map(|s| s.plan)
        .collect();
    names.sort();
    assert_eq!(names, ["api", "web"]);

    // When the settings turn it off again, one commit moves them back
    w.remote
        .human_commit("rollgate.yaml", set_layout("flat"), "status flat again");
    assert_moved_back_flat(&mut w);
}

#[test]
fn a_status_file_forged_in_its_shard_folder_by_a_human_commit_is_ignored() {
    // Given, in the sharded layout, v1 rolled out and v2 waiting at an untimed pause at 20%
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let mut w = World::new(&[&v1]);
    w.remote.human_commit(
        "rollgate.yaml",
        set_layout("sharded"),
        "shard the status files",
    );
    w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
    let v2 = PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 20",
        "pause: {}",
        "setWeight: 100",
    ]);
    w.remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    w.run_until("web", 10, 40, |s| s.phase == Phase::Paused);
    let paused = w.status("web");
    assert_eq!(paused.weight, 20);

    // When a human commit rewrites the sharded status file: v2 succeeded, at 100%
    let mut forged = paused.clone();
    forged.phase = Phase::Succeeded;
    forged.stable = Some("v2".to_owned());
    forged.weight = 100;
    let forged_yaml = forged.to_yaml().expect("yaml");
    w.remote
        .human_commit(&sharded("web"), |_| forged_yaml.clone(), "Mark web v2 done");
    assert_eq!(
        w.status("web").phase,
        Phase::Succeeded,
        "the forgery landed"
    );
    for _ in 0..3 {
        w.wait(10);
        assert_eq!(w.tick().errors, 0);
    }

    // Then the target still runs v1 with v2 at 20%: the forged status was not believed
    let now = w.target.workload("web");
    assert_eq!(
        (now.stable.as_deref(), now.candidate.as_deref(), now.weight),
        (Some("v1"), Some("v2"), 20)
    );
    // And a real promote continues from the state rollgate wrote, and Git converges
    w.remote.human_promote("web");
    w.run_until("web", 10, 40, |s| {
        s.phase == Phase::Succeeded && s.to_yaml().expect("yaml") != forged_yaml
    });
    assert_eq!(w.status("web").stable.as_deref(), Some("v2"));
    assert_eq!(w.target.workload("web").stable.as_deref(), Some("v2"));
}

#[test]
fn regression_a_broken_rollgate_yaml_does_not_move_sharded_status_files_back_to_flat() {
    // Given a plan rolled out in the sharded layout
    let web = PlanFile::new("web");
    let mut w = World::new(&[&web]);
    w.remote.human_commit(
        "rollgate.yaml",
        set_layout("sharded"),
        "shard the status files",
    );
    w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
    assert_eq!(status_tree(&w), [sharded("web")]);

    // When a human breaks the settings (the layout then reads as the default, flat)
    w.remote
        .human_commit("rollgate.yaml", |t| format!("{t}targets: [\n"), "oops");
    for _ in 0..3 {
        w.wait(10);
        w.tick();
    }

    // Then nothing moved (the status was written sharded from the start: no move at all)
    assert_eq!(layout_commits(&w).len(), 0);
    assert_eq!(status_tree(&w), [sharded("web")]);
}

#[test]
fn a_checkout_with_sharded_status_files_reads_like_the_repository() {
    // `rollgate validate DIR` and the directory source read a checkout the same way
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let wrong = if status_shard("stray.yaml") == "00" {
        "01"
    } else {
        "00"
    };
    for (path, text) in [
        (sharded("web"), "web: sharded"),
        ("status/old.yaml".to_owned(), "old: flat"),
        ("status/both.yaml".to_owned(), "both: flat"),
        (sharded("both"), "both: sharded"),
        (format!("status/{wrong}/stray.yaml"), "in the wrong folder"),
    ] {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    // A shard folder that is a link is not followed
    let elsewhere = tempfile::tempdir().expect("tempdir");
    std::fs::write(elsewhere.path().join("linked.yaml"), "secret").expect("write");
    let linked_shard = status_shard("linked.yaml");
    std::os::unix::fs::symlink(elsewhere.path(), root.join("status").join(&linked_shard))
        .expect("symlink");

    let snap = rollgate::source::fs::read_dir(root).expect("read");
    let statuses: Vec<(String, String)> = snap
        .status_files()
        .map(|(p, b)| (p.clone(), String::from_utf8_lossy(b).into_owned()))
        .collect();
    let want: Vec<(String, String)> = [
        ("status/both.yaml", "both: sharded"),
        ("status/old.yaml", "old: flat"),
        ("status/web.yaml", "web: sharded"),
    ]
    .iter()
    .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
    .collect();
    assert_eq!(statuses, want);
    let mut sharded_ones: Vec<&str> = snap.sharded.iter().map(String::as_str).collect();
    sharded_ones.sort_unstable();
    assert_eq!(sharded_ones, ["status/both.yaml", "status/web.yaml"]);
}

#[test]
fn by_default_a_repository_growing_past_the_bound_is_sharded_in_one_commit_and_flat_again_when_it_shrinks()
 {
    use rollgate::model::settings::{AUTO_FLAT_BELOW, AUTO_SHARD_AT};
    // Given two plans rolled out with the default setting (`auto`): a small repository,
    // status files flat
    let (mut w, web, before) = rolled_out_flat();
    assert!(
        !support::git(&w.remote.bare, &["show", "main:rollgate.yaml"]).contains("statusLayout"),
        "the setting is left to its default"
    );

    // When the repository grows to the bound, one commit moves every status file
    w.remote.fillers(0..AUTO_SHARD_AT - 2, true);
    assert_eq!(w.tick().errors, 0);
    let moves = layout_commits(&w);
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(moves[0].trailer("Rollgate-Status-Layout"), Some("sharded"));
    let now = assert_moved_to_shards(&w, &before);

    // and a rollout goes on in the sharded layout
    w.remote
        .human_commit(&web.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 40, |s| {
        s.phase == Phase::Succeeded && s.candidate == "v2"
    });
    assert_eq!(status_tree(&w), now, "no flat copy came back");

    // When it shrinks between the bounds, nothing moves
    w.remote
        .fillers(AUTO_FLAT_BELOW - 2..AUTO_SHARD_AT - 2, false);
    for _ in 0..2 {
        w.wait(10);
        assert_eq!(w.tick().errors, 0);
    }
    assert_eq!(layout_commits(&w).len(), 1);
    assert_eq!(status_tree(&w), now);

    // When it shrinks below the lower bound, one commit moves them back
    w.remote
        .fillers(AUTO_FLAT_BELOW - 3..AUTO_FLAT_BELOW - 2, false);
    assert_moved_back_flat(&mut w);
}
