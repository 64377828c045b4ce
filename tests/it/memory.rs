//! What the daemon remembers between passes stays flat over time (#21): it grows with
//! plans, never with finished rollouts or commits. The memory figures themselves are in
//! `benches/mass.rs` (d); these tests pin the structures that used to grow.

use crate::support;

use rollgate::model::status::Phase;
use support::rollout::{PlanFile, World, set_artifact};

/// Promote `plan` with a command commit, as plain git does it.
fn promote(w: &World, plan: &str) {
    w.remote.human_promote(plan);
}

/// Two plans, `web` and `api`, each rolled out to Succeeded.
fn web_and_api_finished() -> (PlanFile, PlanFile, World) {
    let web = PlanFile::new("web");
    let api = PlanFile::new("api").port(20_001);
    let mut w = World::new(&[&web, &api]);
    w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
    w.run_until("api", 10, 40, |s| s.phase == Phase::Succeeded);
    (web, api, w)
}

#[test]
fn regression_commands_for_a_plan_that_does_not_exist_are_not_kept() {
    // Given a plan rolled out
    let plan = PlanFile::new("web");
    let mut w = World::new(&[&plan]);
    w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
    // When command commits name a plan that is not there (a typo, a deleted plan)
    for _ in 0..3 {
        promote(&w, "nosuch");
        w.tick();
    }
    // Then none of them is kept
    assert_eq!(w.rec.remembered().commands, 0);
    assert_eq!(w.rec.remembered().plans, 1);
}

#[test]
fn regression_a_deleted_plan_leaves_no_memory_behind() {
    // Given two plans rolled out
    let (_, api, mut w) = web_and_api_finished();
    assert_eq!(w.rec.remembered().plans, 2);

    // When one of them turns invalid, it is still remembered (fixed, it goes on)
    w.remote.human_commit(
        &api.path(),
        |t| format!("{t}\nnosuchfield: 1\n"),
        "api: broken",
    );
    w.tick();
    assert!(w.rec.report().rejected.contains(&api.path()));
    assert_eq!(w.rec.remembered().plans, 2);

    // When the human deletes it
    w.remote.pull();
    w.remote.human(&["rm", "-q", &api.path()]);
    w.remote.human(&["commit", "-qm", "api: gone"]);
    w.remote.human(&["push", "-q", "origin", "main"]);
    w.tick();

    // Then only the other one is remembered
    assert_eq!(w.rec.remembered().plans, 1);
    assert!(w.rec.report().accepted.contains_key("web"));
}

#[test]
fn compacting_a_resting_daemon_changes_nothing_it_decides_on() {
    // Given two rollouts run to the end, and the daemon resting after them
    let (web, _, mut w) = web_and_api_finished();
    let quiet = w.tick();
    assert_eq!((quiet.transitions, quiet.errors), (0, 0), "{quiet:?}");
    let commits = w.remote.commits().len();
    let (web_before, api_before) = (w.rec.status("web"), w.rec.status("api"));
    assert!(w.rec.is_idle("web") && w.rec.is_idle("api"));
    let parse = w.rec.report().accepted["web"].clone();
    let old_parse = std::sync::Arc::downgrade(&parse);

    // When it allocates what it keeps again (`daemon::run` does, before it sleeps)
    w.rec.compact();

    // Then every holder has the plan's parse made again (none keeps the old one), and
    // both plans are still seen as idle, which compares parses by address
    let remade = &w.rec.report().accepted["web"];
    assert!(!std::sync::Arc::ptr_eq(remade, &parse));
    assert_eq!(remade.plan, parse.plan);
    drop(parse);
    assert!(old_parse.upgrade().is_none(), "a holder kept the old parse");
    assert!(w.rec.is_idle("web") && w.rec.is_idle("api"));

    // And both are still finished: no pass writes anything
    for _ in 0..3 {
        let r = w.tick();
        assert_eq!((r.transitions, r.actions, r.errors), (0, 0, 0), "{r:?}");
    }
    assert_eq!(w.remote.commits().len(), commits);
    assert_eq!(w.rec.status("web"), web_before);
    assert_eq!(w.rec.status("api"), api_before);

    // And a change to one of them is rolled out as before, the other left alone
    w.remote
        .human_commit(&web.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 40, |s| {
        s.phase == Phase::Succeeded && s.stable.as_deref() == Some("v2")
    });
    assert_eq!(w.rec.status("api"), api_before);
}
