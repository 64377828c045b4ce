//! The dashboard's HTML, rendered from a [`Board`] (pure: `now` is an argument).
//!
//! Invariants: every string from Git passes `escape` (text and attributes alike), and
//! every plan name in a URL passes `path_segment`; no inline script or style (the pages
//! are served with a Content-Security-Policy of `'self'`); a weight is a `<progress>`
//! with its number beside it, a phase a word, never colour alone. The live part of each
//! page is one element (`#live`) whose content is exactly what the matching
//! `/fragment/…` route returns, so the script only swaps server-rendered HTML.

use std::fmt::Write as _;

use super::{Board, PlanView};
use crate::history::Entry;
use crate::timeline::{self, escape};

/// A plan name (or any text) as one URL path segment: unreserved characters as they
/// are, every other byte percent-encoded.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn query_value(s: &str) -> String {
    path_segment(s)
}

fn page(title: &str, live_src: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{}</title>
<link rel="stylesheet" href="/assets/dashboard.css">
<script src="/assets/dashboard.js" defer></script>
<noscript><meta http-equiv="refresh" content="15"></noscript>
</head>
<body>
<header><a class="home" href="/">rollgate</a> <span class="muted">read-only dashboard</span></header>
<main id="live" data-src="{}" aria-live="polite">
{body}</main>
</body>
</html>
"#,
        escape(title),
        escape(live_src),
    )
}

/// `3h 4m`, `4m 10s`, `12s`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// Every distinct `key=value` label of the board's plans, sorted.
fn label_choices(board: &Board) -> Vec<String> {
    let mut all: Vec<String> = board
        .plans
        .iter()
        .flat_map(|p| p.labels.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    all.sort();
    all.dedup();
    all
}

fn matches(p: &PlanView, label: Option<&str>) -> bool {
    let Some(want) = label.filter(|l| !l.is_empty()) else {
        return true;
    };
    // Compared whole (`key=value` as the choices are written, or a bare key), so a key
    // or value holding `=` still matches itself.
    p.labels.contains_key(want) || p.labels.iter().any(|(k, v)| format!("{k}={v}") == want)
}

/// The overview page.
pub fn overview(board: &Board, label: Option<&str>, now: i64) -> String {
    let src = match label.filter(|l| !l.is_empty()) {
        Some(l) => format!("/fragment/overview?label={}", query_value(l)),
        None => "/fragment/overview".to_owned(),
    };
    page(
        "rollgate: rollouts",
        &src,
        &overview_fragment(board, label, now),
    )
}

/// The live part of the overview: the filter, and one row per plan.
pub fn overview_fragment(board: &Board, label: Option<&str>, now: i64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<h1>Rollouts</h1>
<p class="muted">{} at <code>{}</code> · {} plan{}</p>"#,
        board
            .branch
            .as_deref()
            .map(|b| format!("branch {}", escape(b)))
            .unwrap_or_else(|| "head".to_owned()),
        short(&board.head),
        board.plans.len(),
        if board.plans.len() == 1 { "" } else { "s" },
    );
    let choices = label_choices(board);
    if !choices.is_empty() {
        s.push_str(r#"<form class="filter" method="get" action="/"><label>label <select name="label"><option value="">every plan</option>"#);
        for c in &choices {
            let _ = write!(
                s,
                r#"<option value="{0}"{1}>{0}</option>"#,
                escape(c),
                if label == Some(c.as_str()) {
                    " selected"
                } else {
                    ""
                }
            );
        }
        s.push_str("</select></label> <button type=\"submit\">filter</button></form>\n");
    }
    s.push_str(
        r#"<table class="plans">
<thead><tr><th>plan</th><th>phase</th><th>step</th><th>weight</th><th>candidate → stable</th><th>last verdict</th><th>in phase</th><th>note</th></tr></thead>
<tbody>
"#,
    );
    let mut shown = 0;
    for p in board.plans.iter().filter(|p| matches(p, label)) {
        shown += 1;
        row(&mut s, p, now);
    }
    if shown == 0 {
        s.push_str(r#"<tr><td colspan="8" class="muted">no plan here</td></tr>"#);
    }
    s.push_str("</tbody>\n</table>\n");
    s
}

fn row(s: &mut String, p: &PlanView, now: i64) {
    let name = escape(&p.name);
    let labels: Vec<String> = p
        .labels
        .iter()
        .map(|(k, v)| format!(r#"<span class="label">{}={}</span>"#, escape(k), escape(v)))
        .collect();
    let _ = write!(
        s,
        r#"<tr class="plan" data-plan="{name}"><td><a href="/plans/{}">{name}</a> {}</td>"#,
        path_segment(&p.name),
        labels.join(" ")
    );
    match &p.status {
        Some(st) => {
            let phase = st.phase.as_str();
            let note = st
                .hold
                .as_ref()
                .map(|h| format!("held ({}): {}", h.kind.as_str(), h.reason))
                .or_else(|| st.message.clone())
                .unwrap_or_default();
            let _ = writeln!(
                s,
                r#"<td class="phase phase-{}" data-phase="{phase}">{phase}</td><td>{}</td><td class="weight"><progress max="100" value="{w}">{w}%</progress> {w}%</td><td><code>{}</code> → <code>{}</code></td><td class="verdict">{}</td><td>{}</td><td class="note">{}</td></tr>"#,
                phase.to_ascii_lowercase(),
                escape(&st.step_label()),
                escape(&st.candidate),
                st.stable
                    .as_deref()
                    .map_or_else(|| "none".to_owned(), escape),
                p.last_verdict.as_deref().map(escape).unwrap_or_default(),
                st.last_transition_at
                    .map(|t| age(now - t.timestamp()))
                    .unwrap_or_default(),
                escape(&note),
                w = st.weight,
            );
        }
        None => {
            let _ = writeln!(
                s,
                r#"<td class="phase" data-phase="none">no status</td><td></td><td></td><td></td><td class="verdict">{}</td><td></td><td class="note"></td></tr>"#,
                p.last_verdict.as_deref().map(escape).unwrap_or_default(),
            );
        }
    }
}

/// One plan's page (`None`: no such plan).
pub fn plan_page(board: &Board, name: &str, rollout: Option<usize>, now: i64) -> Option<String> {
    let fragment = plan_fragment(board, name, rollout, now)?;
    let src = match rollout {
        Some(n) => format!("/fragment/plans/{}?rollout={n}", path_segment(name)),
        None => format!("/fragment/plans/{}", path_segment(name)),
    };
    Some(page(&format!("rollgate: {name}"), &src, &fragment))
}

/// The live part of a plan's page: its state, the timeline picture, the transitions.
pub fn plan_fragment(
    board: &Board,
    name: &str,
    rollout: Option<usize>,
    now: i64,
) -> Option<String> {
    let p = board.plan(name)?;
    let mut s = String::new();
    let _ = writeln!(s, r#"<h1 class="plan-name">{}</h1>"#, escape(&p.name));
    if let Some(st) = &p.status {
        let _ = writeln!(
            s,
            r#"<p class="state"><span class="phase" data-phase="{0}">{0}</span> · step {1} · <progress max="100" value="{2}">{2}%</progress> {2}% · <code>{3}</code> → <code>{4}</code>{5}</p>"#,
            st.phase.as_str(),
            escape(&st.step_label()),
            st.weight,
            escape(&st.candidate),
            st.stable
                .as_deref()
                .map_or_else(|| "none".to_owned(), escape),
            st.last_transition_at
                .map(|t| format!(" · {} in phase", age(now - t.timestamp())))
                .unwrap_or_default(),
        );
        if let Some(h) = &st.hold {
            let _ = writeln!(
                s,
                r#"<p class="held">held ({}): {}</p>"#,
                h.kind.as_str(),
                escape(&h.reason)
            );
        }
    }
    let all = timeline::rollouts(&p.entries, &p.name);
    match timeline::for_plan(&p.entries, &p.name, rollout) {
        Ok(t) => {
            if all.len() > 1 {
                s.push_str(r#"<nav class="rollouts">rollout "#);
                for n in 1..=all.len() {
                    if n == t.number {
                        let _ = write!(s, "<strong>{n}</strong> ");
                    } else {
                        let _ = write!(
                            s,
                            r#"<a href="/plans/{}?rollout={n}">{n}</a> "#,
                            path_segment(&p.name)
                        );
                    }
                }
                s.push_str("</nav>\n");
            }
            let _ = writeln!(
                s,
                r#"<figure class="timeline">{}</figure>"#,
                timeline::svg::render(&t)
            );
        }
        Err(e) => {
            let _ = writeln!(s, r#"<p class="muted">{}</p>"#, escape(&e));
        }
    }
    s.push_str(
        r#"<h2>Transitions</h2>
<table class="transitions">
<thead><tr><th>time (UTC)</th><th>commit</th><th>what</th><th>step</th><th>weight</th><th>reason</th></tr></thead>
<tbody>
"#,
    );
    for e in p.entries.iter().rev() {
        transition(&mut s, e, board.commit_base.as_deref());
    }
    s.push_str("</tbody>\n</table>\n");
    Some(s)
}

fn transition(s: &mut String, e: &Entry, commit_base: Option<&str>) {
    let time = chrono::DateTime::from_timestamp(e.time, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    let commit = match commit_base {
        Some(base) if e.commit.chars().all(|c| c.is_ascii_hexdigit()) => format!(
            r#"<a href="{}{}"><code>{}</code></a>"#,
            escape(base),
            e.commit,
            short(&e.commit)
        ),
        _ => format!("<code>{}</code>", escape(short(&e.commit))),
    };
    let what = match e.kind.as_str() {
        "command" => format!("command {}", e.phase.as_deref().unwrap_or("?")),
        "revert" => "rollback commit".to_owned(),
        _ => e.phase.clone().unwrap_or_default(),
    };
    let _ = write!(
        s,
        r#"<tr class="entry {}"><td>{time}</td><td>{commit}</td><td>{}</td><td>{}</td><td>{}</td><td class="reason">{}"#,
        if e.kind == "command" || e.kind == "revert" {
            e.kind.as_str()
        } else {
            "transition"
        },
        escape(&what),
        escape(e.step.as_deref().unwrap_or("")),
        e.weight.map(|w| format!("{w}%")).unwrap_or_default(),
        escape(e.reason.as_deref().unwrap_or(&e.subject)),
    );
    if !e.verdicts.is_empty() {
        s.push_str("<ul class=\"verdicts\">");
        for v in &e.verdicts {
            let _ = write!(s, "<li>{}</li>", escape(v));
        }
        s.push_str("</ul>");
    }
    s.push_str("</td></tr>\n");
}
