//! Goldens of the timeline picture (a success, a rollback, a held-then-promoted rollout),
//! and the promises beside them: it parses as XML, stays small, escapes what Git says.

use super::*;
use crate::history::Entry;

/// A history being written, one event at a time, `dt` seconds apart.
pub(crate) struct Story {
    pub(crate) plan: String,
    pub(crate) revision: String,
    pub(crate) time: i64,
    pub(crate) entries: Vec<Entry>,
}

impl Story {
    pub(crate) fn new(plan: &str) -> Story {
        Story {
            plan: plan.to_owned(),
            revision: "a".repeat(40),
            time: 1_764_930_000, // 2025-12-05 10:20:00 UTC
            entries: Vec::new(),
        }
    }

    fn commit(&self) -> String {
        format!("c0ffee{:034x}", self.entries.len() + 1)
    }

    fn base(&mut self, dt: i64, kind: &str) -> Entry {
        self.time += dt;
        Entry {
            commit: self.commit(),
            time: self.time,
            plan: self.plan.clone(),
            kind: kind.to_owned(),
            phase: None,
            from: None,
            step: None,
            weight: None,
            artifact: Some("registry.example/checkout:v2".to_owned()),
            revision: Some(self.revision.clone()),
            reason: None,
            verdicts: Vec::new(),
            first_rollout: None,
            analysis_restarted: None,
            subject: String::new(),
        }
    }

    pub(crate) fn to(mut self, dt: i64, phase: &str, step: &str, weight: u8, reason: &str) -> Self {
        let mut e = self.base(dt, "transition");
        e.phase = Some(phase.to_owned());
        e.step = Some(step.to_owned());
        e.weight = Some(weight);
        e.reason = Some(reason.to_owned());
        e.subject = format!("{}: {phase} step {step} at {weight}%", self.plan);
        self.entries.push(e);
        self
    }

    pub(crate) fn verdict(mut self, line: &str) -> Self {
        if let Some(e) = self.entries.last_mut() {
            e.verdicts.push(line.to_owned());
        }
        self
    }

    pub(crate) fn command(mut self, dt: i64, word: &str) -> Self {
        let mut e = self.base(dt, "command");
        e.phase = Some(word.to_owned());
        e.revision = None;
        e.artifact = None;
        e.subject = format!("{word} {}", self.plan);
        self.entries.push(e);
        self
    }

    pub(crate) fn revert(mut self, dt: i64, reason: &str) -> Self {
        let mut e = self.base(dt, "revert");
        e.reason = Some(reason.to_owned());
        e.subject = format!("Revert {}", self.plan);
        self.entries.push(e);
        self
    }
}

pub(crate) fn success() -> Story {
    Story::new("checkout")
        .to(0, "Progressing", "1/5", 5, "step 1: weight 5%")
        .to(1, "Progressing", "2/5", 5, "analysis started")
        .to(600, "Progressing", "3/5", 25, "analysis passed")
        .verdict("pass success-rate value=0.9993 min=0.999 n=1532")
        .verdict("pass latency mann-whitney U=1104 p=0.41 canary=41 baseline=40 shift=+1 ci=[-2,3] max=+0.2 ratio=1.02 n=48/47")
        .to(1, "Progressing", "4/5", 25, "pause 15m")
        .to(900, "Progressing", "5/5", 100, "pause over")
        .to(1, "Promoting", "5/5", 100, "every step done")
        .to(20, "Succeeded", "5/5", 100, "healthy")
}

fn svg_of(story: &Story) -> String {
    let t = for_plan(&story.entries, &story.plan, None).expect("a rollout");
    svg::render(&t)
}

fn parses(svg: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML: {e}\n{svg}"))
}

fn count(doc: &roxmltree::Document<'_>, class: &str) -> usize {
    doc.descendants()
        .filter(|n| {
            n.attribute("class")
                .is_some_and(|c| c.split_whitespace().any(|w| w == class))
        })
        .count()
}

#[test]
fn a_successful_rollout() {
    let svg = svg_of(&success());
    let doc = parses(&svg);
    assert_eq!(count(&doc, "verdict"), 2);
    assert_eq!(count(&doc, "pass"), 2);
    assert_eq!(count(&doc, "analysis"), 1);
    insta::assert_snapshot!(svg);
}

#[test]
fn a_rolled_back_rollout() {
    let story = Story::new("checkout")
        .to(0, "Progressing", "1/5", 5, "step 1: weight 5%")
        .to(1, "Progressing", "2/5", 5, "analysis started")
        .to(120, "Progressing", "2/5", 5, "one inconclusive reading")
        .verdict("inconclusive success-rate value=none n=12 (too few samples: 12 < 200)")
        .to(
            180,
            "RollingBack",
            "2/5",
            0,
            "analysis failed: success-rate",
        )
        .verdict("fail success-rate value=0.93 min=0.999 n=1410 (below min)")
        .revert(2, "analysis failed: success-rate value=0.93 min=0.999")
        .to(3, "RolledBack", "2/5", 0, "stable serves again");
    let svg = svg_of(&story);
    let doc = parses(&svg);
    assert_eq!(count(&doc, "verdict"), 2);
    assert_eq!(count(&doc, "fail"), 1);
    assert_eq!(count(&doc, "inconclusive"), 1);
    assert_eq!(count(&doc, "rollback"), 1, "one rollback mark");
    insta::assert_snapshot!(svg);
}

#[test]
fn a_held_then_promoted_rollout() {
    let story = Story::new("checkout")
        .to(0, "Progressing", "1/3", 10, "step 1: weight 10%")
        .to(1, "Progressing", "2/3", 10, "analysis started")
        .to(300, "Held", "2/3", 10, "inconclusive: too few samples")
        .verdict(
            "inconclusive success-rate value=0.9995 min=0.999 n=40 (too few samples: 40 < 200)",
        )
        .command(1800, "promote")
        .to(5, "Progressing", "3/3", 100, "promoted by command")
        .to(1, "Promoting", "3/3", 100, "every step done")
        .to(15, "Succeeded", "3/3", 100, "healthy");
    let svg = svg_of(&story);
    let doc = parses(&svg);
    assert_eq!(count(&doc, "hold"), 1);
    assert_eq!(count(&doc, "command"), 1);
    assert_eq!(count(&doc, "verdict"), 1);
    insta::assert_snapshot!(svg);
}

#[test]
fn the_rollout_flag_picks_one_and_says_how_many_there_are() {
    let mut story = success();
    story.revision = "b".repeat(40);
    let story = story
        .to(3600, "Progressing", "1/5", 5, "second rollout")
        .to(1, "Progressing", "2/5", 5, "analysis");
    assert_eq!(rollouts(&story.entries, "checkout").len(), 2);
    let first = for_plan(&story.entries, "checkout", Some(1)).expect("first");
    assert_eq!((first.number, first.of, first.verdicts.len()), (1, 2, 2));
    let last = for_plan(&story.entries, "checkout", None).expect("last");
    assert_eq!((last.number, last.weights.len()), (2, 2));
    let err = for_plan(&story.entries, "checkout", Some(3)).expect_err("out of range");
    assert_eq!(err, "plan checkout has 2 rollouts (--rollout 1..=2)");
    assert!(for_plan(&story.entries, "other", None).is_err());
}

#[test]
fn a_thousand_transitions_stay_under_200_kb_and_parse() {
    let mut story = Story::new("big");
    for i in 0..1000u32 {
        let weight = u8::try_from(i % 101).unwrap_or(100);
        story = story.to(
            30,
            "Progressing",
            &format!("{}/1000", i + 1),
            weight,
            "step",
        );
        if i % 2 == 1 {
            story = story.verdict(&format!(
                "pass success-rate value=0.99{i:02} min=0.99 n={}",
                1000 + i
            ));
        }
        if i % 50 == 0 {
            story = story.command(1, "promote");
        }
    }
    let svg = svg_of(&story);
    let doc = parses(&svg);
    assert_eq!(count(&doc, "verdict"), 500);
    assert!(svg.len() < 200 * 1024, "{} bytes", svg.len());
    eprintln!(
        "1,000 transitions, 500 verdicts, 20 commands: {} bytes",
        svg.len()
    );
}

#[test]
fn hostile_plan_names_and_reasons_are_text() {
    let hostile = r#"<script>window.pwned=1</script>&"'"#;
    let mut story = Story::new(hostile);
    story.plan = hostile.to_owned();
    let story = story
        .to(0, "Progressing", "1/2", 5, "x")
        .to(5, "Held", "1/2", 5, &format!("{hostile}\u{1}\u{1b}"))
        .verdict(&format!("fail {hostile} value=1 n=2 ({hostile})"))
        .command(4, &format!("promote{hostile}"))
        .revert(2, hostile);
    let svg = svg_of(&story);
    let doc = parses(&svg);
    assert!(!svg.contains("<script"), "{svg}");
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("script"))
            .count(),
        0
    );
    // The words are still there, as text.
    let title = doc
        .descendants()
        .find(|n| n.has_tag_name("title"))
        .and_then(|n| n.text())
        .unwrap_or_default();
    assert!(title.starts_with(hostile), "{title}");
}

#[test]
fn escape_covers_markup_quotes_and_control_characters() {
    assert_eq!(
        escape("<a href='x'>\"&\u{0}\n"),
        "&lt;a href=&#39;x&#39;&gt;&quot;&amp;\u{fffd}\n"
    );
}

#[test]
fn regression_a_retry_after_a_rollback_is_a_rollout_of_its_own() {
    // Given a rollout rolled back, then retried: the same revision walks again
    let mut story = Story::new("checkout")
        .to(0, "Progressing", "1/5", 5, "step 1: weight 5%")
        .to(60, "RollingBack", "1/5", 0, "analysis failed")
        .to(2, "RolledBack", "1/5", 0, "stable serves again")
        .to(600, "Progressing", "1/5", 5, "retried by command");
    if let Some(e) = story.entries.last_mut() {
        e.from = Some("RolledBack".to_owned());
    }
    // Then the retry is the second rollout, not more of the failed one
    let all = rollouts(&story.entries, "checkout");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].entries.len(), 3);
    assert_eq!(all[1].entries.len(), 1);
    let last = for_plan(&story.entries, "checkout", None).expect("last");
    assert_eq!((last.number, last.of), (2, 2));
}
