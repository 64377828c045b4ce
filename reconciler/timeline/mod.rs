//! The timeline picture of one rollout (#20): `history::Entry` values (read from commit
//! trailers) laid out as a [`Timeline`], then drawn as SVG by [`svg::render`].
//!
//! Invariants: pure (no I/O, no clock: every time comes from the entries); every piece
//! of text that came from Git (plan names, reasons, verdict lines, artifacts) is escaped
//! by [`escape`] before it reaches markup; the picture's size grows with the number of
//! events, never with the time they span.
//!
//! ```text
//!  entries (one plan) ──▶ rollouts() ──▶ Timeline::of(rollout) ──▶ svg::render ──▶ <svg>
//!     oldest first         split by         weight steps, analysis        pure
//!                          revision         bands, verdicts, holds,
//!                                           commands, the rollback
//! ```

pub mod svg;

use crate::history::Entry;

/// The entries of one rollout: from the transition that started a revision to the last
/// event before the next revision's first transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout<'a> {
    pub plan: &'a str,
    /// The plan commit that started it (`Rollgate-Revision`), when recorded.
    pub revision: Option<&'a str>,
    pub entries: Vec<&'a Entry>,
}

/// Split one plan's entries (oldest first) into rollouts: a transition with a revision
/// other than the current rollout's starts the next one, and so does a transition out
/// of `RolledBack` (a `retry` walks the same revision again: a new rollout, not more of
/// the failed one). Commands and reverts belong to the rollout they follow (a revert
/// names the revision it rolls back).
pub fn rollouts<'a>(entries: &'a [Entry], plan: &str) -> Vec<Rollout<'a>> {
    let mut out: Vec<Rollout<'a>> = Vec::new();
    for e in entries.iter().filter(|e| e.plan == plan) {
        let starts = e.kind == "transition"
            && match out.last() {
                None => true,
                Some(r) => {
                    (e.revision.is_some() && r.revision != e.revision.as_deref())
                        || e.from.as_deref() == Some("RolledBack")
                }
            };
        if starts || out.is_empty() {
            out.push(Rollout {
                plan: &e.plan,
                revision: e.revision.as_deref(),
                entries: Vec::new(),
            });
        }
        if let Some(r) = out.last_mut() {
            if r.revision.is_none() && e.kind == "transition" {
                r.revision = e.revision.as_deref();
            }
            r.entries.push(e);
        }
    }
    out
}

/// What a verdict line says, from its first word (`Judgement`'s trailer form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
    /// `skipped` (a baseline check without a baseline) or a word rollgate did not write.
    Other,
}

impl Outcome {
    pub fn of(line: &str) -> Outcome {
        match line.split_whitespace().next().unwrap_or("") {
            "pass" => Outcome::Pass,
            "fail" => Outcome::Fail,
            "inconclusive" => Outcome::Inconclusive,
            _ => Outcome::Other,
        }
    }

    /// The word shown beside the mark: the outcome is never told by colour alone.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
            Outcome::Other => "other",
        }
    }
}

/// A weight the candidate held from `time` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightPoint {
    pub time: i64,
    pub weight: u8,
    pub phase: String,
}

/// An analysis window: from the transition that entered the step to the one that
/// recorded its verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    pub from: i64,
    pub to: i64,
    pub step: Option<String>,
}

/// One verdict line, at the time it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictMark {
    pub time: i64,
    pub outcome: Outcome,
    /// The whole trailer: the check and its numbers.
    pub line: String,
    pub commit: String,
}

/// A stretch in `Held`, open (`to: None`) while the rollout is still held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSpan {
    pub from: i64,
    pub to: Option<i64>,
    pub reason: String,
}

/// A command commit (`promote`, `abort`, `retry`) or the rollback (a revert or restore
/// commit, or the transition to `RollingBack`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub time: i64,
    /// `promote`, `abort`, `retry`, `rollback`.
    pub word: String,
    pub detail: String,
    pub commit: String,
}

/// Everything the picture shows of one rollout, in data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub plan: String,
    /// 1-based, of `of`.
    pub number: usize,
    pub of: usize,
    pub artifact: Option<String>,
    pub start: i64,
    pub end: i64,
    pub weights: Vec<WeightPoint>,
    pub bands: Vec<Band>,
    pub verdicts: Vec<VerdictMark>,
    pub holds: Vec<HoldSpan>,
    pub commands: Vec<Marker>,
    pub rollback: Option<Marker>,
    /// The phase of the last transition.
    pub last_phase: Option<String>,
}

impl Timeline {
    /// The picture's data for rollout `number` (1-based) of `of`.
    pub fn of(rollout: &Rollout<'_>, number: usize, of: usize) -> Timeline {
        let mut t = Timeline {
            plan: rollout.plan.to_owned(),
            number,
            of,
            artifact: None,
            start: rollout.entries.first().map_or(0, |e| e.time),
            end: rollout.entries.last().map_or(0, |e| e.time),
            weights: Vec::new(),
            bands: Vec::new(),
            verdicts: Vec::new(),
            holds: Vec::new(),
            commands: Vec::new(),
            rollback: None,
            last_phase: None,
        };
        let mut previous: Option<&Entry> = None;
        for e in &rollout.entries {
            let e: &Entry = e;
            match e.kind.as_str() {
                "command" => t.commands.push(Marker {
                    time: e.time,
                    word: e.phase.clone().unwrap_or_else(|| "command".to_owned()),
                    detail: e.subject.clone(),
                    commit: e.commit.clone(),
                }),
                "revert" => {
                    t.rollback = Some(Marker {
                        time: e.time,
                        word: "rollback".to_owned(),
                        detail: e.reason.clone().unwrap_or_else(|| e.subject.clone()),
                        commit: e.commit.clone(),
                    });
                }
                _ => {
                    if t.artifact.is_none() {
                        t.artifact = e.artifact.clone();
                    }
                    let phase = e.phase.clone().unwrap_or_default();
                    if let Some(w) = e.weight {
                        t.weights.push(WeightPoint {
                            time: e.time,
                            weight: w.min(100),
                            phase: phase.clone(),
                        });
                    }
                    if !e.verdicts.is_empty() {
                        let from = previous.map_or(e.time, |p| p.time);
                        t.bands.push(Band {
                            from,
                            to: e.time,
                            step: previous.and_then(|p| p.step.clone()),
                        });
                    }
                    // A hold ends at the next transition that is not one.
                    if let Some(open) = t.holds.last_mut().filter(|h| h.to.is_none())
                        && phase != "Held"
                    {
                        open.to = Some(e.time);
                    }
                    if phase == "Held" && t.holds.last().is_none_or(|h| h.to.is_some()) {
                        t.holds.push(HoldSpan {
                            from: e.time,
                            to: None,
                            reason: e.reason.clone().unwrap_or_default(),
                        });
                    }
                    if phase == "RollingBack" && t.rollback.is_none() {
                        t.rollback = Some(Marker {
                            time: e.time,
                            word: "rollback".to_owned(),
                            detail: e.reason.clone().unwrap_or_default(),
                            commit: e.commit.clone(),
                        });
                    }
                    t.last_phase = Some(phase);
                    previous = Some(e);
                }
            }
            // Verdicts of a revert are the evidence already drawn with the transition
            // that failed; only a transition's own are marks.
            if e.kind == "transition" {
                t.verdicts.extend(e.verdicts.iter().map(|v| VerdictMark {
                    time: e.time,
                    outcome: Outcome::of(v),
                    line: v.clone(),
                    commit: e.commit.clone(),
                }));
            }
        }
        t
    }
}

/// The timeline of `plan`'s rollout `number` (1-based; `None`: the last one).
pub fn for_plan(entries: &[Entry], plan: &str, number: Option<usize>) -> Result<Timeline, String> {
    let all = rollouts(entries, plan);
    if all.is_empty() {
        return Err(format!(
            "no rollgate history for plan {plan} on this branch"
        ));
    }
    let n = number.unwrap_or(all.len());
    match n.checked_sub(1).and_then(|i| all.get(i)) {
        Some(r) => Ok(Timeline::of(r, n, all.len())),
        None => Err(format!(
            "plan {plan} has {} rollout{} (--rollout 1..={})",
            all.len(),
            if all.len() == 1 { "" } else { "s" },
            all.len()
        )),
    }
}

/// Text for HTML and XML, attribute values included: `& < > " '` as entities, and the
/// control characters XML 1.0 cannot hold as U+FFFD.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
