//! Rendering a [`Preview`]: the pull-request comment (Markdown) and the terminal text.
//!
//! Invariant: deterministic (no clock, no paths of this machine), and every piece of
//! text from the change (messages, names, artifacts, diffs) is escaped or fenced, so a
//! hostile plan cannot inject HTML or break out of a code block in the comment.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::{Conclusion, MARKER, PlanPreview, Preview, Stage, StageKind, Verdict};
use crate::model::Diagnostic;

/// Lines of one plan's diff shown before it is cut.
pub const MAX_DIFF_LINES: usize = 200;
/// GitHub refuses comments over 65,536 characters; stay well under it.
pub const MAX_MARKDOWN_BYTES: usize = 60_000;
/// Rows of the summary table.
const MAX_SUMMARY_ROWS: usize = 50;

pub fn markdown(p: &Preview) -> String {
    let full = markdown_with(p, true);
    if full.len() <= MAX_MARKDOWN_BYTES {
        return full;
    }
    markdown_with(p, false)
}

fn markdown_with(p: &Preview, diffs: bool) -> String {
    let mut out = String::new();
    out.push_str(MARKER);
    out.push('\n');
    let _ = writeln!(out, "## {}\n", headline(p, true));
    if !p.status_edits().is_empty() {
        let files: Vec<String> = p.status_edits().iter().map(|f| code(f)).collect();
        let _ = writeln!(
            out,
            "> **This change edits rollgate's status:** {}. Status files are written by rollgate only; the daemon ignores a change it did not write. Use `rollgate promote`, `abort` or `retry` (or revert the plan) instead.\n",
            files.join(", ")
        );
    }
    if !p.base_only_changes.is_empty() {
        let files: Vec<String> = p.base_only_changes.iter().map(|f| code(f)).collect();
        let _ = writeln!(
            out,
            "> **Read from base, not from this change:** {}. The change is judged with base's settings, policies and statuses; these edits take effect after the merge.\n",
            files.join(", ")
        );
    }
    if p.plans.len() > 1 {
        out.push_str("| plan | change | verdict |\n|---|---|---|\n");
        for plan in p.plans.iter().take(MAX_SUMMARY_ROWS) {
            let _ = writeln!(
                out,
                "| {} | {} | {} {} |",
                cell(&code(&plan.name)),
                plan.change.as_str(),
                mark(plan.verdict),
                plan.verdict.as_str()
            );
        }
        if p.plans.len() > MAX_SUMMARY_ROWS {
            let _ = writeln!(
                out,
                "\n… and {} more plans.",
                p.plans.len() - MAX_SUMMARY_ROWS
            );
        }
        out.push('\n');
    }
    if !diffs {
        out.push_str(
            "> Diffs are left out: with them this comment would exceed GitHub's size limit. `rollgate plan` shows them.\n\n",
        );
    }
    let footer = footer(p);
    let mut left = 0;
    for (i, plan) in p.plans.iter().enumerate() {
        let section = plan_markdown(plan, diffs);
        if out.len() + section.len() + footer.len() + 200 > MAX_MARKDOWN_BYTES {
            left = p.plans.len() - i;
            break;
        }
        out.push_str(&section);
    }
    if left > 0 {
        let _ = writeln!(
            out,
            "… {left} more plan{} not shown here (size limit); `rollgate plan` shows them all.\n",
            plural(left)
        );
    }
    out.push_str(&footer);
    out
}

fn footer(p: &Preview) -> String {
    let mut s = format!(
        "---\n<sub>base {} · head {}",
        code(short(&p.base)),
        code(short(&p.head))
    );
    if p.merge_base != p.base {
        let _ = write!(s, " (forked at {})", code(short(&p.merge_base)));
    }
    let _ = writeln!(
        s,
        " · settings, policies and statuses from base · dry run from {}</sub>",
        super::dry_run::rfc3339(p.now)
    );
    s
}

fn plan_markdown(plan: &PlanPreview, diffs: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {} {} {}\n",
        mark(plan.verdict),
        code(&plan.name),
        plan.verdict.as_str()
    );
    match &plan.old_path {
        Some(old) => {
            let _ = writeln!(
                out,
                "*{}* {} → {}\n",
                plan.change.as_str(),
                code(old),
                code(&plan.path)
            );
        }
        None => {
            let _ = writeln!(out, "*{}* {}\n", plan.change.as_str(), code(&plan.path));
        }
    }
    let _ = writeln!(out, "**On merge:** {}.\n", prose(&plan.effect));
    if let Some(pr) = &plan.promotion {
        let source = code(&pr.from);
        let line = if pr.succeeded {
            let at = pr
                .succeeded_at
                .map(|t| format!(" ({})", when(t)))
                .unwrap_or_default();
            format!("✅ the artifact succeeded there{at}")
        } else {
            let phase = pr
                .source_phase
                .as_deref()
                .map_or("it has no status yet".to_owned(), |ph| {
                    format!("its phase is {ph}")
                });
            format!("❌ the artifact has not succeeded there ({phase})")
        };
        let _ = writeln!(out, "**Promotion** from {source}: {line}.\n");
    }
    if let Some(w) = &plan.windows {
        let _ = writeln!(out, "**Change windows:** {}.\n", prose(w));
    }
    if !plan.diagnostics.is_empty() {
        out.push_str("**Diagnostics**\n\n");
        for d in &plan.diagnostics {
            let _ = writeln!(
                out,
                "- {} {}[{}]: {}",
                code(&place(d)),
                severity(d),
                d.code,
                prose(&d.message)
            );
            if let Some(help) = &d.help {
                let _ = writeln!(out, "  - help: {}", prose(help));
            }
        }
        out.push('\n');
    }
    if !plan.stages.is_empty() {
        out.push_str("**Dry run** (earliest times: healthy at once, every check passing, every promotion given at once)\n\n");
        match chart(&plan.stages) {
            Some(c) => out.push_str(&c),
            None if plan.stages.len() > MAX_CHART_STAGES => {
                let _ = writeln!(
                    out,
                    "*The chart is left out: {} stages are more than {MAX_CHART_STAGES}; the table has them all.*\n",
                    plan.stages.len()
                );
            }
            None => {}
        }
        out.push_str(
            "| step | action | weight | duration | checks | earliest completion |\n|---:|---|---:|---|---|---|\n",
        );
        let mut previous_end = None;
        for s in &plan.stages {
            let checks: Vec<String> = s.checks.iter().map(|c| code(c)).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {}% | {} | {} | {} |",
                step_number(s),
                action(s),
                s.weight,
                duration(s),
                cell(&checks.join(", ")),
                completion(s, previous_end, true)
            );
            previous_end = s.earliest_completion;
        }
        if plan.stages.iter().any(|s| s.after_promotion) {
            out.push_str("\n\\* if promoted as soon as the pause begins.\n");
        }
        out.push('\n');
    }
    if diffs && !plan.diff.is_empty() {
        let (text, cut) = cut_diff(&plan.diff);
        let _ = writeln!(
            out,
            "<details><summary>Diff of {}</summary>\n",
            html(&plan.path)
        );
        out.push_str(&fence(&text, "diff"));
        if cut > 0 {
            let _ = writeln!(out, "\n… {cut} more line{} not shown.", plural(cut));
        }
        out.push_str("\n</details>\n\n");
    }
    out
}

pub fn text(p: &Preview) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} (base {}, head {})",
        headline(p, false),
        short(&p.base),
        short(&p.head)
    );
    if !p.status_edits().is_empty() {
        let files: Vec<&str> = p.status_edits().iter().map(|f| f.as_str()).collect();
        let _ = writeln!(
            out,
            "error: this change edits rollgate's status ({}): status files are written by rollgate only (use promote, abort or retry)",
            files.join(", ")
        );
    }
    if !p.base_only_changes.is_empty() {
        let _ = writeln!(
            out,
            "note: read from base, not from this change: {} (judged with base's; the edits take effect after the merge)",
            p.base_only_changes.join(", ")
        );
    }
    for plan in &p.plans {
        out.push('\n');
        let path = match &plan.old_path {
            Some(old) => format!("{old} -> {}", plan.path),
            None => plan.path.clone(),
        };
        let _ = writeln!(
            out,
            "{}: {} ({}, {})",
            plan.name,
            plan.verdict.as_str(),
            plan.change.as_str(),
            path
        );
        let _ = writeln!(out, "  on merge: {}", plan.effect);
        if let Some(pr) = &plan.promotion {
            let _ = writeln!(
                out,
                "  promotion from {}: {}",
                pr.from,
                if pr.succeeded {
                    "the artifact succeeded there"
                } else {
                    "the artifact has NOT succeeded there"
                }
            );
        }
        if let Some(w) = &plan.windows {
            let _ = writeln!(out, "  windows: {}", w.replace('`', ""));
        }
        for d in &plan.diagnostics {
            for line in d.to_string().lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        if !plan.stages.is_empty() {
            let _ = writeln!(out, "  dry run (earliest completion):");
            let mut previous_end = None;
            for s in &plan.stages {
                let checks = if s.checks.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", s.checks.join(", "))
                };
                let dur = duration(s);
                let _ = writeln!(
                    out,
                    "    {:>3}  {:<22} {:>4}%  {:<7} {}{}",
                    step_number(s),
                    action(s),
                    s.weight,
                    if dur.is_empty() { "-" } else { &dur },
                    completion(s, previous_end, false),
                    checks
                );
                previous_end = s.earliest_completion;
            }
        }
        if !plan.diff.is_empty() {
            let (diff, cut) = cut_diff(&plan.diff);
            for line in diff.lines() {
                let _ = writeln!(out, "  {line}");
            }
            if cut > 0 {
                let _ = writeln!(out, "  … {cut} more line{}", plural(cut));
            }
        }
    }
    out
}

fn headline(p: &Preview, marks: bool) -> String {
    let n = p.plans.len();
    let failed = p.plans.iter().filter(|x| !x.verdict.passes()).count();
    let (mark, words) = match p.conclusion() {
        Conclusion::Failure if !p.status_edits().is_empty() => (
            "❌ ",
            "rollgate: this change edits status files, which rollgate alone writes".to_owned(),
        ),
        Conclusion::Neutral => ("", "rollgate: this change touches no plan".to_owned()),
        Conclusion::Success if n == 1 => ("✅ ", "rollgate: the touched plan passes".to_owned()),
        Conclusion::Success => ("✅ ", format!("rollgate: all {n} touched plans pass")),
        Conclusion::Failure if n == 1 => ("❌ ", "rollgate: the touched plan fails".to_owned()),
        Conclusion::Failure => (
            "❌ ",
            format!("rollgate: {failed} of {n} touched plans fail"),
        ),
    };
    if marks {
        format!("{mark}{words}")
    } else {
        words
    }
}

fn mark(v: Verdict) -> &'static str {
    if v.passes() { "✅" } else { "❌" }
}

fn severity(d: &Diagnostic) -> &'static str {
    if d.is_error() { "error" } else { "warning" }
}

fn place(d: &Diagnostic) -> String {
    match d.pos {
        Some(p) => format!("{}:{}:{}", d.file, p.line, p.col),
        None => d.file.clone(),
    }
}

/// Stages a chart shows at most; a longer plan gets the table alone.
pub const MAX_CHART_STAGES: usize = 24;

/// The dry run as a Mermaid chart GitHub draws: the candidate's weight at the earliest
/// start and completion of each stage, a `⏸` point where a stage waits for the change
/// window (the weight stays flat across the gap). Only numbers and times rollgate made
/// reach it, never text from the change. `None` for a plan too long to read as a chart,
/// or with fewer than two stages.
pub fn chart(stages: &[Stage]) -> Option<String> {
    if stages.len() > MAX_CHART_STAGES {
        return None;
    }
    let known: Vec<&Stage> = stages
        .iter()
        .take_while(|s| s.earliest_start.is_some() && s.earliest_completion.is_some())
        .collect();
    // One stage (a first rollout deployed directly) is one jump: the table says it.
    if known.len() < 2 {
        return None;
    }
    let first = known.first()?.earliest_start?;
    let last = known.last()?.earliest_completion?;
    let days = first.date_naive() != last.date_naive();
    let label = |t: DateTime<Utc>| {
        let clock = if chrono::Timelike::second(&t) == 0 {
            "%H:%M"
        } else {
            "%H:%M:%S"
        };
        if days {
            t.format(&format!("%a {clock}")).to_string()
        } else {
            t.format(clock).to_string()
        }
    };
    let mut points: Vec<(String, u8)> = Vec::new();
    let mut previous: Option<(DateTime<Utc>, u8)> = None;
    for s in &known {
        let (Some(start), Some(end)) = (s.earliest_start, s.earliest_completion) else {
            break;
        };
        let before = previous.map_or(0, |(_, w)| w);
        if s.waited_for_window(previous.map(|(t, _)| t)) {
            points.push((format!("⏸ {}", label(start)), before));
        } else if previous.is_none() {
            points.push((label(start), 0));
        }
        points.push((label(start), s.weight));
        if end > start {
            points.push((label(end), s.weight));
        }
        previous = Some((end, s.weight));
    }
    points.dedup();
    if points.len() < 2 {
        return None;
    }
    let xs: Vec<String> = points.iter().map(|(l, _)| format!("\"{l}\"")).collect();
    let ys: Vec<String> = points.iter().map(|(_, w)| w.to_string()).collect();
    let mut c = String::from("```mermaid\nxychart-beta\n");
    let _ = writeln!(
        c,
        "    title \"Candidate weight (%) at the earliest time of each stage (UTC{})\"",
        if known.len() < stages.len() {
            "; later stages wait beyond the horizon"
        } else {
            ""
        }
    );
    let _ = writeln!(c, "    x-axis [{}]", xs.join(", "));
    c.push_str("    y-axis \"weight %\" 0 --> 100\n");
    let _ = writeln!(c, "    line [{}]", ys.join(", "));
    c.push_str("```\n");
    if points.iter().any(|(l, _)| l.starts_with('⏸')) {
        c.push_str("\n⏸ marks a stage that waits for the change window to open.\n");
    }
    c.push('\n');
    Some(c)
}

fn step_number(s: &Stage) -> String {
    if s.kind == StageKind::Promote {
        "–".to_owned()
    } else {
        s.step.to_string()
    }
}

fn action(s: &Stage) -> String {
    match s.kind {
        StageKind::SetWeight if s.baseline > 0 => {
            format!("setWeight (fresh baseline {}%)", s.baseline)
        }
        StageKind::SetWeight => "setWeight".to_owned(),
        StageKind::Pause if s.waits_for_promotion => "pause until promoted".to_owned(),
        StageKind::Pause => "pause".to_owned(),
        StageKind::Analysis => "analysis".to_owned(),
        StageKind::Promote => "promote".to_owned(),
        StageKind::Deploy => "deploy directly".to_owned(),
        StageKind::SetHeaderRoute | StageKind::SetMirror => format!(
            "{} ({})",
            s.kind.as_str(),
            s.routing.as_deref().unwrap_or("weights only")
        ),
    }
}

fn duration(s: &Stage) -> String {
    s.duration
        .map(crate::model::duration::format)
        .unwrap_or_default()
}

/// The earliest completion cell; `md`: Markdown (code span, escaped star) or plain text.
fn completion(s: &Stage, previous_end: Option<DateTime<Utc>>, md: bool) -> String {
    let star = match (s.after_promotion, md) {
        (false, _) => "",
        (true, true) => " \\*",
        (true, false) => " *",
    };
    let promote = if md {
        "`rollgate promote`"
    } else {
        "rollgate promote"
    };
    let Some(end) = s.earliest_completion else {
        return format!(
            "never: the window does not open within {} days",
            super::HORIZON_DAYS
        );
    };
    let waited = if s.waited_for_window(previous_end) {
        " (waits for the window)"
    } else {
        ""
    };
    if s.waits_for_promotion {
        format!("on {promote}, from {}{waited}{star}", when(end))
    } else {
        format!("{}{waited}{star}", when(end))
    }
}

/// `Thu 2026-11-26 15:45 UTC`; seconds only when there are some (30 s analyses).
fn when(t: DateTime<Utc>) -> String {
    if chrono::Timelike::second(&t) == 0 {
        t.format("%a %Y-%m-%d %H:%M UTC").to_string()
    } else {
        t.format("%a %Y-%m-%d %H:%M:%S UTC").to_string()
    }
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The first `MAX_DIFF_LINES` lines, and how many were cut.
fn cut_diff(diff: &str) -> (String, usize) {
    let total = diff.lines().count();
    if total <= MAX_DIFF_LINES {
        return (diff.to_owned(), 0);
    }
    let kept: Vec<&str> = diff.lines().take(MAX_DIFF_LINES).collect();
    (kept.join("\n") + "\n", total - MAX_DIFF_LINES)
}

/// An inline code span that holds `s` whatever backticks it contains.
fn code(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    let longest = longest_run(&s, '`');
    if longest == 0 {
        return format!("`{s}`");
    }
    let ticks = "`".repeat(longest + 1);
    format!("{ticks} {s} {ticks}")
}

/// A fenced block that `s` cannot close.
fn fence(s: &str, lang: &str) -> String {
    let ticks = "`".repeat(longest_run(s, '`').max(2) + 1);
    let mut out = format!("{ticks}{lang}\n{s}");
    if !s.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&ticks);
    out.push('\n');
    out
}

fn longest_run(s: &str, c: char) -> usize {
    let mut best = 0;
    let mut run = 0;
    for ch in s.chars() {
        if ch == c {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// A table cell: pipes would end it.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Text outside any code span: HTML is escaped.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace(['\n', '\r'], " ")
}

/// Prose that may hold code spans (messages, effects): HTML is escaped outside the
/// spans, which stay as they are; an unclosed backtick run is literal text.
fn prose(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let run_at = |i: usize| chars[i..].iter().take_while(|c| **c == '`').count();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut open: Option<usize> = None;
    while i < chars.len() {
        if chars[i] == '`' {
            let n = run_at(i);
            match open {
                Some(k) if k == n => open = None,
                Some(_) => {}
                None => {
                    // Opens a span only when a run of the same length closes it later.
                    let mut j = i + n;
                    let mut closes = false;
                    while j < chars.len() {
                        if chars[j] == '`' {
                            let m = run_at(j);
                            if m == n {
                                closes = true;
                                break;
                            }
                            j += m;
                        } else {
                            j += 1;
                        }
                    }
                    if closes {
                        open = Some(n);
                    } else {
                        out.push_str(&"\\`".repeat(n));
                        i += n;
                        continue;
                    }
                }
            }
            out.extend(std::iter::repeat_n('`', n));
            i += n;
            continue;
        }
        let c = chars[i];
        match (c, open) {
            ('\n' | '\r', _) => out.push(' '),
            ('<', None) => out.push_str("&lt;"),
            ('>', None) => out.push_str("&gt;"),
            ('&', None) => out.push_str("&amp;"),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_escapes_html_outside_code_spans_only() {
        assert_eq!(
            prose("use name@sha256:<digest> not `<tag>`"),
            "use name@sha256:&lt;digest&gt; not `<tag>`"
        );
        // An unclosed backtick cannot hide HTML from the escaper.
        assert_eq!(prose("a ` <img> b"), "a \\` &lt;img&gt; b");
        assert_eq!(prose("two\nlines"), "two lines");
    }

    #[test]
    fn code_spans_and_fences_hold_any_backticks() {
        assert_eq!(code("plain"), "`plain`");
        assert_eq!(code("a`b"), "`` a`b ``");
        let f = fence("```\n</details>\n", "diff");
        assert!(f.starts_with("````diff\n"), "{f}");
        assert!(f.ends_with("\n````\n"), "{f}");
    }

    #[test]
    fn long_diffs_are_cut_with_a_count() {
        let diff: String = (0..250).map(|i| format!("+line {i}\n")).collect();
        let (kept, cut) = cut_diff(&diff);
        assert_eq!(kept.lines().count(), MAX_DIFF_LINES);
        assert_eq!(cut, 50);
    }

    fn stage(step: usize, kind: StageKind, weight: u8, start: &str, end: &str) -> Stage {
        let t = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        };
        Stage {
            step,
            kind,
            weight,
            duration: None,
            checks: Vec::new(),
            waits_for_promotion: false,
            earliest_start: t(start),
            earliest_completion: t(end),
            after_promotion: false,
            routing: None,
            baseline: 0,
        }
    }

    #[test]
    fn a_weight_stage_names_its_fresh_baseline() {
        let mut s = stage(
            1,
            StageKind::SetWeight,
            10,
            "2026-11-26T15:40:00Z",
            "2026-11-26T15:40:00Z",
        );
        assert_eq!(action(&s), "setWeight");
        s.baseline = 10;
        assert_eq!(action(&s), "setWeight (fresh baseline 10%)");
    }

    #[test]
    fn the_dry_run_chart_shows_weights_over_time_and_window_gaps() {
        // Given a canary whose third stage waits overnight for the change window
        let stages = vec![
            stage(
                1,
                StageKind::SetWeight,
                5,
                "2026-11-26T15:40:00Z",
                "2026-11-26T15:40:00Z",
            ),
            stage(
                2,
                StageKind::Analysis,
                5,
                "2026-11-26T15:40:00Z",
                "2026-11-26T15:50:00Z",
            ),
            stage(
                3,
                StageKind::SetWeight,
                25,
                "2026-11-27T09:00:00Z",
                "2026-11-27T09:00:00Z",
            ),
            stage(
                4,
                StageKind::Pause,
                25,
                "2026-11-27T09:00:00Z",
                "2026-11-27T09:15:30Z",
            ),
            stage(
                5,
                StageKind::Promote,
                100,
                "2026-11-27T09:15:30Z",
                "2026-11-27T09:15:30Z",
            ),
        ];
        let md = chart(&stages).expect("a chart");
        assert!(md.contains("⏸ Fri 09:00"), "{md}");
        insta::assert_snapshot!(md);
    }

    #[test]
    fn a_long_plan_gets_no_chart() {
        let many: Vec<Stage> = (1..=MAX_CHART_STAGES + 1)
            .map(|i| {
                stage(
                    i,
                    StageKind::SetWeight,
                    1,
                    "2026-11-26T15:40:00Z",
                    "2026-11-26T15:40:00Z",
                )
            })
            .collect();
        assert_eq!(chart(&many), None);
        assert!(chart(&many[..3]).is_some());
    }
}
