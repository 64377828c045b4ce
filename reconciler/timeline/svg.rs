//! A [`Timeline`] drawn as a standalone SVG document: the candidate's weight as a step
//! line, analysis windows as bands, holds as hatched bands, a lane of verdict marks and
//! a lane of commands and the rollback.
//!
//! Invariants: pure and deterministic (same timeline, same bytes); every outcome is told
//! by shape *and* a word, never by colour alone; each mark carries its numbers in a
//! `<title>` (a tooltip on hover); all text from Git passes `escape`. Marks are one
//! `<g>` each with a class (`verdict pass|fail|inconclusive|other`, `hold`, `command`,
//! `rollback`) so pages and tests can find them.

use std::fmt::Write as _;

use super::{Outcome, Timeline, escape};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 920.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 236.0;
const VERDICT_LANE: f64 = 268.0;
const EVENT_LANE: f64 = 304.0;
const HEIGHT: f64 = 348.0;
/// Beyond this many marks in a lane, the words beside them are left out (shape and
/// tooltip remain) so the picture stays readable and small.
const LABELLED_MARKS: usize = 40;

fn time_text(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn clock(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// The picture of one rollout, as an SVG document.
pub fn render(t: &Timeline) -> String {
    let span = (t.end - t.start).max(1) as f64;
    // A little room after the last event, so a mark there is not cut in half.
    let x = |time: i64| LEFT + (time - t.start) as f64 / span * (RIGHT - LEFT - 16.0);
    let y = |weight: u8| BOTTOM - f64::from(weight.min(100)) / 100.0 * (BOTTOM - TOP);
    let mut s = String::with_capacity(4096 + 160 * (t.weights.len() + t.verdicts.len()));
    let title = format!(
        "{}: rollout {} of {}{}",
        t.plan,
        t.number,
        t.of,
        t.artifact
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="rollgate-timeline" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="tl-title" font-family="system-ui, sans-serif" font-size="12">
<title id="tl-title">{}</title>
<defs><pattern id="tl-hatch" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="8" height="8" fill="#fff4e0"/><line x1="0" y1="0" x2="0" y2="8" stroke="#d08a00" stroke-width="3"/></pattern></defs>
<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>
<text x="{LEFT}" y="22" font-size="15" font-weight="bold" fill="#111">{}</text>
<text x="{LEFT}" y="40" fill="#444">{} → {}{}</text>"##,
        escape(&title),
        escape(&title),
        time_text(t.start),
        time_text(t.end),
        t.last_phase
            .as_deref()
            .map(|p| format!(" · {}", escape(p)))
            .unwrap_or_default(),
    );
    // Axes: weight gridlines, a few time ticks.
    for w in [0u8, 25, 50, 75, 100] {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{RIGHT}" y2="{yy:.1}" stroke="#e3e3e3"/><text x="{lx}" y="{ty:.1}" text-anchor="end" fill="#555">{w}%</text>"##,
            yy = y(w),
            lx = LEFT - 6.0,
            ty = y(w) + 4.0,
        );
    }
    for i in 0..=4 {
        let time = t.start + (t.end - t.start) * i / 4;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            x(time),
            BOTTOM + 16.0,
            clock(time)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="12" y="{:.1}" fill="#333">verdicts</text><text x="12" y="{:.1}" fill="#333">events</text>"##,
        VERDICT_LANE + 4.0,
        EVENT_LANE + 4.0
    );
    // Analysis windows, then holds, under the weight line.
    if t.bands.len() > LABELLED_MARKS {
        // Many windows: one shape of them all (each its own rectangle), one tooltip.
        let mut d = String::new();
        for b in &t.bands {
            let (x0, x1) = (x(b.from), x(b.to));
            let _ = write!(
                d,
                "M{x0:.1} {TOP}h{:.1}v{}h{:.1}z",
                (x1 - x0).max(1.0),
                BOTTOM - TOP,
                -(x1 - x0).max(1.0)
            );
        }
        let _ = writeln!(
            s,
            r##"<g class="band analysis"><title>{} analysis windows</title><path d="{d}" fill="#dcebfa"/></g>"##,
            t.bands.len()
        );
    }
    for b in t.bands.iter().filter(|_| t.bands.len() <= LABELLED_MARKS) {
        let (x0, x1) = (x(b.from), x(b.to));
        let _ = writeln!(
            s,
            r##"<g class="band analysis"><title>analysis{}: {} → {}</title><rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{}" fill="#dcebfa"/><text x="{:.1}" y="{}" fill="#1d4f84" font-size="10">analysis</text></g>"##,
            b.step
                .as_deref()
                .map(|st| format!(" (step {})", escape(st)))
                .unwrap_or_default(),
            time_text(b.from),
            time_text(b.to),
            (x1 - x0).max(2.0),
            BOTTOM - TOP,
            x0 + 2.0,
            TOP + 10.0,
        );
    }
    for h in &t.holds {
        let to = h.to.unwrap_or(t.end);
        let (x0, x1) = (x(h.from), x(to));
        let _ = writeln!(
            s,
            r##"<g class="hold"><title>held {} → {}: {}</title><rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{}" fill="url(#tl-hatch)" opacity="0.7"/><text x="{:.1}" y="{}" fill="#7a4d00" font-size="10">held</text></g>"##,
            time_text(h.from),
            h.to.map_or_else(|| "now".to_owned(), time_text),
            escape(&h.reason),
            (x1 - x0).max(4.0),
            BOTTOM - TOP,
            x0 + 2.0,
            TOP + 22.0,
        );
    }
    // The weight as a step line, held until the last event.
    if let Some(first) = t.weights.first() {
        let at = |v: f64| format!("{v:.1}");
        let (mut px, mut py) = (at(x(first.time)), at(y(first.weight)));
        let mut d = format!("M{px} {py}");
        for p in &t.weights[1..] {
            let (nx, ny) = (at(x(p.time)), at(y(p.weight)));
            if nx != px {
                let _ = write!(d, "H{nx}");
            }
            if ny != py {
                let _ = write!(d, "V{ny}");
            }
            (px, py) = (nx, ny);
        }
        let end = at(x(t.end));
        if end != px {
            let _ = write!(d, "H{end}");
        }
        let _ = writeln!(
            s,
            r##"<path class="weight" d="{d}" fill="none" stroke="#1f6feb" stroke-width="2.5"/>"##
        );
        let last = t.weights.last().unwrap_or(first);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#1f6feb" font-weight="bold">{}%</text>"##,
            (x(t.end) + 4.0).min(WIDTH - 30.0),
            y(last.weight) - 4.0,
            last.weight
        );
    }
    // Verdicts: shape and word per outcome; several at one time stack upwards.
    let labelled = t.verdicts.len() <= LABELLED_MARKS;
    let mut stack = (i64::MIN, 0usize);
    for v in &t.verdicts {
        stack = if stack.0 == v.time {
            (v.time, stack.1 + 1)
        } else {
            (v.time, 0)
        };
        let (cx, cy) = (x(v.time), VERDICT_LANE - 9.0 * stack.1 as f64);
        let shape = match v.outcome {
            Outcome::Pass => {
                format!(r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="5" fill="#1a7f37"/>"##)
            }
            Outcome::Fail => format!(
                r##"<path d="M{:.1} {:.1}l10 10m0 -10l-10 10" stroke="#cf222e" stroke-width="3"/>"##,
                cx - 5.0,
                cy - 5.0
            ),
            Outcome::Inconclusive => format!(
                r##"<path d="M{cx:.1} {:.1}l6 10h-12z" fill="#9a6700"/>"##,
                cy - 6.0
            ),
            Outcome::Other => format!(
                r##"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="#6e7781"/>"##,
                cx - 4.0,
                cy - 4.0
            ),
        };
        let word = if labelled && stack.1 == 0 {
            format!(
                r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#222">{}</text>"##,
                cx + 7.0,
                cy + 14.0,
                v.outcome.label()
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            r##"<g class="verdict {}"><title>{} at {} ({})</title>{shape}{word}</g>"##,
            v.outcome.label(),
            escape(&v.line),
            clock(v.time),
            &v.commit[..12.min(v.commit.len())],
        );
    }
    // Commands and the rollback, in the event lane.
    let events = t.commands.len() + usize::from(t.rollback.is_some());
    let labelled = events <= LABELLED_MARKS;
    for c in t.commands.iter().chain(t.rollback.iter()) {
        let cx = x(c.time);
        let (class, shape) = if c.word == "rollback" {
            (
                "rollback",
                format!(
                    r##"<path d="M{:.1} {:.1}l-7 6l7 6z" fill="#cf222e"/><line x1="{cx:.1}" y1="{TOP}" x2="{cx:.1}" y2="{BOTTOM}" stroke="#cf222e" stroke-dasharray="4 3"/>"##,
                    cx + 3.0,
                    EVENT_LANE - 6.0
                ),
            )
        } else {
            (
                "command",
                format!(
                    r##"<path d="M{cx:.1} {:.1}l6 6l-6 6l-6 -6z" fill="#8250df"/><line x1="{cx:.1}" y1="{TOP}" x2="{cx:.1}" y2="{BOTTOM}" stroke="#8250df" stroke-dasharray="2 3"/>"##,
                    EVENT_LANE - 6.0
                ),
            )
        };
        let word = if labelled {
            format!(
                r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#222">{}</text>"##,
                cx + 8.0,
                EVENT_LANE + 16.0,
                escape(&c.word)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            r##"<g class="{class}"><title>{} at {} ({}): {}</title>{shape}{word}</g>"##,
            escape(&c.word),
            clock(c.time),
            &c.commit[..12.min(c.commit.len())],
            escape(&c.detail),
        );
    }
    // The legend: every mark's shape with its word.
    let _ = writeln!(
        s,
        r##"<g class="legend" font-size="10" fill="#333" transform="translate({LEFT} {})"><circle cx="4" cy="-4" r="4" fill="#1a7f37"/><text x="12" y="0">pass</text><path d="M54 -8l8 8m0 -8l-8 8" stroke="#cf222e" stroke-width="2.5"/><text x="66" y="0">fail</text><path d="M110 -9l5 9h-10z" fill="#9a6700"/><text x="120" y="0">inconclusive</text><rect x="196" y="-8" width="12" height="8" fill="#dcebfa"/><text x="212" y="0">analysis</text><rect x="264" y="-8" width="12" height="8" fill="url(#tl-hatch)"/><text x="280" y="0">held</text><path d="M320 -9l5 5l-5 5l-5 -5z" fill="#8250df"/><text x="330" y="0">command</text><path d="M390 -9l-6 5l6 5z" fill="#cf222e"/><text x="394" y="0">rollback</text><line x1="450" y1="-4" x2="466" y2="-4" stroke="#1f6feb" stroke-width="2.5"/><text x="470" y="0">candidate weight</text></g>
</svg>"##,
        HEIGHT - 6.0
    );
    s
}
