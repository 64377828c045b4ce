//! Commit messages and file edits for each kind of rollgate commit.
//!
//! Subjects are short and human; the facts are trailers, so
//! `git log --format='%(trailers)'` tells the whole story and `rollgate history`
//! can render it without any other state.

use crate::engine::{Revert, Transition};
use crate::model::plan::FirstRollout;
use crate::model::status::{Phase, Status};

use super::{CommitSpec, Edit};

pub const PLAN: &str = "Rollgate-Plan";
pub const REVISION: &str = "Rollgate-Revision";
pub const ARTIFACT: &str = "Rollgate-Artifact";
pub const PHASE: &str = "Rollgate-Phase";
pub const FROM: &str = "Rollgate-From";
pub const STEP: &str = "Rollgate-Step";
pub const WEIGHT: &str = "Rollgate-Weight";
pub const VERDICT: &str = "Rollgate-Verdict";
pub const REASON: &str = "Rollgate-Reason";
pub const ROLLBACK_OF: &str = "Rollgate-Rollback-Of";
/// On the transitions of a rollout with no stable version: `direct` or `steps`.
pub const FIRST_ROLLOUT: &str = "Rollgate-First-Rollout";
/// On a transition that restarted an analysis window: its new start (RFC 3339).
pub const ANALYSIS_RESTARTED: &str = "Rollgate-Analysis-Restarted";
pub const COMMAND: &str = "Rollgate-Command";
pub const ACK: &str = "Rollgate-Command-Ack";
/// On a command commit made for a GitHub comment: the comment's id (one commit per comment).
pub const COMMENT: &str = "Rollgate-Comment";
/// On the commit that moves every status file to the configured layout: `flat` or
/// `sharded` (`source::StatusLayout`).
pub const STATUS_LAYOUT: &str = "Rollgate-Status-Layout";

/// The path of a plan's status file: its logical path, whichever layout stores it
/// (`source::StatusLayout`).
pub fn status_path(plan: &str) -> String {
    format!("status/{plan}.yaml")
}

/// The commit that moves the status files `edits` (each at its logical path, with its
/// content) to `layout` (`daemon::layout`).
pub fn layout_commit(layout: crate::source::StatusLayout, edits: Vec<Edit>) -> CommitSpec {
    let (word, place) = match layout {
        crate::source::StatusLayout::Flat => ("flat", "status/<plan>.yaml"),
        crate::source::StatusLayout::Sharded => ("sharded", "status/<hh>/<plan>.yaml"),
    };
    let n = edits.len();
    CommitSpec {
        subject: format!("rollgate: status files moved to the {word} layout"),
        body: Some(format!(
            "{n} status file(s) moved to {place}, as writeBack.statusLayout says.\nOnly the place changes; every status keeps its content."
        )),
        trailers: vec![(STATUS_LAYOUT.to_owned(), word.to_owned())],
        revert: None,
        edits,
    }
}

fn short(artifact: &str) -> String {
    // `registry/app@sha256:4f1c…` reads better than 64 hex digits in a subject.
    match artifact.split_once("@sha256:") {
        Some((name, digest)) => format!(
            "{name}@sha256:{}",
            digest.chars().take(12).collect::<String>()
        ),
        None => artifact.to_owned(),
    }
}

/// One status commit for one transition (or a command acknowledged without one).
pub fn status_commit(
    status: &Status,
    transition: Option<&Transition>,
    acked: Option<&str>,
    text: String,
) -> CommitSpec {
    let plan = &status.plan;
    let subject = match transition {
        Some(t) if t.first_rollout == Some(FirstRollout::Direct) && t.to == Phase::Promoting => {
            format!(
                "{plan}: first rollout, deploying {} directly",
                short(&status.candidate)
            )
        }
        Some(t) if t.step.1 > 0 && t.step.0 > 0 => {
            format!(
                "{plan}: {} step {}/{} at {}% ({})",
                t.to.as_str(),
                t.step.0,
                t.step.1,
                status.weight,
                short(&status.candidate)
            )
        }
        Some(t) => format!("{plan}: {} ({})", t.to.as_str(), short(&status.candidate)),
        None => format!("{plan}: command acknowledged"),
    };
    let mut trailers = vec![
        (PLAN.to_owned(), plan.clone()),
        (REVISION.to_owned(), status.revision.clone()),
        (ARTIFACT.to_owned(), status.candidate.clone()),
        (PHASE.to_owned(), status.phase.as_str().to_owned()),
    ];
    if let Some(t) = transition {
        if let Some(from) = t.from {
            trailers.push((FROM.to_owned(), from.as_str().to_owned()));
        }
        trailers.push((STEP.to_owned(), format!("{}/{}", t.step.0, t.step.1)));
        trailers.push((WEIGHT.to_owned(), status.weight.to_string()));
        for v in &t.verdicts {
            trailers.push((VERDICT.to_owned(), v.clone()));
        }
        if let Some(f) = t.first_rollout {
            trailers.push((FIRST_ROLLOUT.to_owned(), f.as_str().to_owned()));
        }
        if let Some(at) = t.analysis_restarted_at {
            trailers.push((
                ANALYSIS_RESTARTED.to_owned(),
                at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ));
        }
        trailers.push((REASON.to_owned(), t.reason.clone()));
    }
    if let Some(sha) = acked {
        trailers.push((ACK.to_owned(), sha.to_owned()));
    }
    CommitSpec {
        subject,
        body: None,
        trailers,
        revert: None,
        edits: vec![Edit {
            path: status_path(plan),
            content: Some(text.into_bytes()),
        }],
    }
}

/// The status commits of one pass, as one commit: the subject counts them, the body
/// holds each plan's own subject (`- web: Progressing step 1/4 at 10% (v2)`), the
/// trailers are each plan's block in turn (a block opens with `Rollgate-Plan`), the
/// edits every plan's status file. One spec is returned as it is (the single-plan format).
pub fn batch_commit(specs: Vec<CommitSpec>) -> Option<CommitSpec> {
    if specs.len() <= 1 {
        return specs.into_iter().next();
    }
    let mut phases: std::collections::BTreeMap<String, usize> = Default::default();
    let mut body = String::new();
    let mut trailers = Vec::new();
    let mut edits = Vec::new();
    for s in &specs {
        if let Some((_, phase)) = s.trailers.iter().find(|(k, _)| k == PHASE) {
            *phases.entry(phase.clone()).or_default() += 1;
        }
        body.push_str("- ");
        body.push_str(&s.subject);
        body.push('\n');
    }
    let counts: Vec<String> = phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
    for s in specs.iter() {
        trailers.extend(s.trailers.iter().cloned());
        edits.extend(s.edits.iter().cloned());
    }
    Some(CommitSpec {
        subject: format!("{} rollouts moved: {}", specs.len(), counts.join(", ")),
        body: Some(body),
        trailers,
        revert: None,
        edits,
    })
}

/// Split a commit's trailers into one block per plan: each block starts at a
/// `Rollgate-Plan` trailer and runs to the next one (trailers before the first belong to
/// none and are dropped). A single-plan commit is one block.
pub fn plan_blocks<K: AsRef<str>, V>(trailers: &[(K, V)]) -> Vec<&[(K, V)]> {
    let starts: Vec<usize> = trailers
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k.as_ref().eq_ignore_ascii_case(PLAN))
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &i)| &trailers[i..starts.get(n + 1).copied().unwrap_or(trailers.len())])
        .collect()
}

/// In a batch commit's body, each plan's own subject (`- PLAN: …`), by plan.
pub fn batch_subjects(body: &str) -> std::collections::HashMap<&str, &str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("- "))
        .filter_map(|l| l.split_once(": ").map(|(plan, _)| (plan, l)))
        .collect()
}

/// The facts of a rollback commit: what was rolled back, why, and the evidence.
fn rollback_trailers(plan: &str, revert: &Revert) -> Vec<(String, String)> {
    let mut trailers = vec![
        (PLAN.to_owned(), plan.to_owned()),
        (ROLLBACK_OF.to_owned(), revert.of_revision.clone()),
        (REASON.to_owned(), revert.reason.clone()),
    ];
    trailers.extend(
        revert
            .evidence
            .iter()
            .map(|j| (VERDICT.to_owned(), j.to_string())),
    );
    trailers
}

/// The revert of the plan change that started a failed rollout.
pub fn revert_commit(
    plan: &str,
    stable: Option<&str>,
    revert: &Revert,
) -> Result<CommitSpec, git2::Error> {
    let target = stable.map_or_else(|| "its previous state".to_owned(), short);
    let trailers = rollback_trailers(plan, revert);
    Ok(CommitSpec {
        subject: format!("Roll back {plan} to {target}"),
        body: Some(format!("rollgate rolled {plan} back: {}.", revert.reason)),
        trailers,
        revert: Some(git2::Oid::from_str(&revert.of_revision)?),
        edits: Vec::new(),
    })
}

/// Instead of a conflicting revert: put the stable artifact back into the plan file.
pub fn restore_commit(
    plan: &str,
    file: &str,
    text: String,
    stable: &str,
    revert: &Revert,
) -> CommitSpec {
    let trailers = rollback_trailers(plan, revert);
    CommitSpec {
        subject: format!("Restore {plan} to {}", short(stable)),
        body: Some(format!(
            "The failed change touched more than this plan, or the plan changed since, so a \
             revert would undo other work; \
             this puts the last stable artifact back instead. Reason: {}.",
            revert.reason
        )),
        trailers,
        revert: None,
        edits: vec![Edit {
            path: file.to_owned(),
            content: Some(text.into_bytes()),
        }],
    }
}

/// Replace the value of `spec.artifact` in a plan file's text, keeping everything else
/// (comments, layout) as it is. `None` when the value cannot be found in place.
pub fn replace_artifact(text: &str, new: &str) -> Option<String> {
    let root = crate::model::yaml::parse("plan", text).ok()?;
    let node = root.at(&[
        crate::model::yaml::PathSeg::Key("spec"),
        crate::model::yaml::PathSeg::Key("artifact"),
    ])?;
    let line_idx = usize::try_from(node.pos.line).ok()?.checked_sub(1)?;
    let col = usize::try_from(node.pos.col).ok()?.checked_sub(1)?;
    let mut lines: Vec<&str> = text.split('\n').collect();
    let line = *lines.get(line_idx)?;
    let start = line.char_indices().nth(col).map(|(i, _)| i)?;
    let rest = &line[start..];
    let len = match rest.chars().next()? {
        q @ ('"' | '\'') => rest[1..].find(q)? + 2,
        _ => rest
            .find(" #")
            .unwrap_or_else(|| rest.find([',', '}']).unwrap_or(rest.len()))
            .min(rest.len()),
    };
    let replaced = format!(
        "{}{}{}",
        &line[..start],
        new,
        &line[start + rest[..len].trim_end().len()..]
    );
    lines[line_idx] = &replaced;
    let out = lines.join("\n");
    // Only if the result still says what we meant.
    let check = crate::model::yaml::parse("plan", &out).ok()?;
    let value = check.at(&[
        crate::model::yaml::PathSeg::Key("spec"),
        crate::model::yaml::PathSeg::Key("artifact"),
    ])?;
    (value.as_str() == Some(new)).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_analysis_window_is_a_trailer_of_its_status_commit() {
        use chrono::TimeZone;
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 10, 11, 0)
            .single()
            .expect("valid time");
        let mut status = Status::pending("web", "v2", "abc123");
        status.phase = Phase::Progressing;
        let t = Transition {
            from: Some(Phase::Progressing),
            to: Phase::Progressing,
            step: (2, 4),
            reason: "analysis restarted at 2026-11-23T10:11:00Z: the builtin samples before it were lost (the data plane restarted)".to_owned(),
            verdicts: Vec::new(),
            first_rollout: None,
            analysis_restarted_at: Some(at),
        };
        let spec = status_commit(&status, Some(&t), None, String::new());
        let trailer = |k: &str| {
            spec.trailers
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(trailer(ANALYSIS_RESTARTED), Some("2026-11-23T10:11:00Z"));
        assert_eq!(trailer(REASON), Some(t.reason.as_str()));
        assert_eq!(trailer(FIRST_ROLLOUT), None);
        assert_eq!(spec.subject, "web: Progressing step 2/4 at 0% (v2)");
    }

    #[test]
    fn a_batch_is_the_single_plan_blocks_in_turn_and_splits_back_into_them() {
        let one = |plan: &str| {
            let mut s = Status::pending(plan, "v2", "abc");
            s.phase = Phase::Pending;
            let t = Transition {
                from: Some(Phase::Succeeded),
                to: Phase::Pending,
                step: (0, 3),
                reason: "rollout of v2 pending".to_owned(),
                verdicts: Vec::new(),
                first_rollout: None,
                analysis_restarted_at: None,
            };
            status_commit(&s, Some(&t), None, format!("plan: {plan}\n"))
        };
        // One spec stays the single-plan commit, exactly.
        assert_eq!(batch_commit(vec![one("a")]), Some(one("a")));
        assert_eq!(batch_commit(Vec::new()), None);
        let batch = batch_commit(vec![one("a"), one("b")]).expect("a batch");
        assert_eq!(batch.subject, "2 rollouts moved: 2 Pending");
        assert_eq!(batch.edits.len(), 2);
        let blocks = plan_blocks(&batch.trailers);
        assert_eq!(
            blocks,
            [one("a").trailers.as_slice(), one("b").trailers.as_slice()]
        );
        // What Git reads back from the message is the same blocks.
        let message = batch.message(false);
        let parsed = git2::message_trailers_strs(&message).expect("trailers");
        let parsed: Vec<(&str, &str)> = parsed.iter().collect();
        assert_eq!(plan_blocks(&parsed).len(), 2);
        assert_eq!(parsed.len(), batch.trailers.len());
        let body = batch.body.as_deref().expect("a body");
        assert_eq!(batch_subjects(body).get("b"), Some(&"b: Pending (v2)"));
        // Trailers before the first plan belong to none.
        let loose = [("Other", "x"), (PLAN, "a"), (PHASE, "Pending")];
        assert_eq!(plan_blocks(&loose), [&loose[1..]]);
    }

    #[test]
    fn replaces_the_artifact_and_keeps_the_rest() {
        let text = "# comment\nspec:\n  artifact: v3  # the new one\n  target: local\n";
        assert_eq!(
            replace_artifact(text, "v2").as_deref(),
            Some("# comment\nspec:\n  artifact: v2  # the new one\n  target: local\n")
        );
        let quoted = "spec:\n  artifact: \"reg/app:3\"\n";
        assert_eq!(
            replace_artifact(quoted, "reg/app:2").as_deref(),
            Some("spec:\n  artifact: reg/app:2\n")
        );
        let flow = "spec: { artifact: v3, target: local }\n";
        assert_eq!(
            replace_artifact(flow, "v2").as_deref(),
            Some("spec: { artifact: v2, target: local }\n")
        );
    }
}
