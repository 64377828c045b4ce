//! rollgate's own metrics, in Prometheus text format on the daemon's `/metrics`.
//!
//! A small fixed set of series with a small fixed set of label values (phases,
//! verdicts), never labels built from user input, so cardinality stays bounded.
//! Invariant: recording is lock-free (atomics) and cannot fail or block a reconcile.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::status::Phase;

/// Upper bounds of `rollgate_reconcile_duration_seconds`.
const RECONCILE_BOUNDS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Upper bounds of `rollgate_status_push_delay_seconds`: dense around the 2 s a
/// transition may wait for its commit while others push (#21).
const PUSH_DELAY_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];

// Every series fits its `Histogram`'s 16 buckets.
const _: () = assert!(RECONCILE_BOUNDS.len() <= 16 && PUSH_DELAY_BOUNDS.len() <= 16);

/// A Prometheus histogram of durations over at most 16 upper bounds, given by the
/// caller on every use (a `const` slice per series).
#[derive(Debug, Default)]
struct Histogram {
    /// Observations at most each bound (cumulative, as exposed).
    buckets: [AtomicU64; 16],
    count: AtomicU64,
    micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, bounds: &[f64], d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in bounds.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, o: &mut String, name: &str, help: &str, bounds: &[f64]) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in bounds.iter().enumerate() {
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {}", g(&self.buckets[i]));
        }
        let count = g(&self.count);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(o, "{name}_sum {}", g(&self.micros) as f64 / 1e6);
        let _ = writeln!(o, "{name}_count {count}");
    }

    fn snapshot(&self, bounds: &'static [f64]) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds,
            at_most: (0..bounds.len())
                .map(|i| self.buckets[i].load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment: the difference of two is what was observed in
/// between, and its quantiles are estimated as Prometheus' `histogram_quantile` does.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    bounds: &'static [f64],
    /// Observations at most each bound (cumulative).
    at_most: Vec<u64>,
    count: u64,
}

impl HistogramSnapshot {
    /// What was observed since `earlier` (a snapshot of the same histogram).
    #[must_use]
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            at_most: self
                .at_most
                .iter()
                .zip(&earlier.at_most)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile in seconds, linear within the bucket it falls in; `None` with no
    /// observation, and the largest bound when it falls past it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for (b, at_most) in self.bounds.iter().zip(&self.at_most) {
            if *at_most as f64 >= rank {
                let within = (at_most - below).max(1) as f64;
                return Some(lower + (b - lower) * ((rank - below as f64) / within));
            }
            (lower, below) = (*b, *at_most);
        }
        Some(lower)
    }
}

#[derive(Debug, Default)]
pub struct Telemetry {
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    transitions: [AtomicU64; 8],
    judge: [AtomicU64; 3],
    pub writeback_retries: AtomicU64,
    pub writeback_commits: AtomicU64,
    /// Fetches of the watched branch (each one a `git fetch`).
    pub git_fetches: AtomicU64,
    pub reverts: AtomicU64,
    /// Target actions that failed, by `engine::Action::kind` (see `ACTION_KINDS`).
    action_failures: [AtomicU64; 4],
    pub rejected_plans: AtomicU64,
    pub accepted_plans: AtomicU64,
    reconcile_duration: Histogram,
    /// From a transition's decision to its status commit pushed (lost races included).
    push_delay: Histogram,
    /// 1 while this process may write (it holds the lease, or runs without election).
    leader: AtomicU64,
    webhooks: [AtomicU64; 7],
    github_errors: AtomicU64,
    comments_ignored: [AtomicU64; 2],
    /// HTTP connections closed at once because `server::MAX_CONNECTIONS` were open.
    connections_refused: AtomicU64,
}

/// What became of a webhook delivery (the label of `rollgate_webhooks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    Accepted,
    Ignored,
    Duplicate,
    Unauthorized,
    Malformed,
    TooLarge,
    Busy,
}

impl WebhookOutcome {
    pub const ALL: [WebhookOutcome; 7] = [
        WebhookOutcome::Accepted,
        WebhookOutcome::Ignored,
        WebhookOutcome::Duplicate,
        WebhookOutcome::Unauthorized,
        WebhookOutcome::Malformed,
        WebhookOutcome::TooLarge,
        WebhookOutcome::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Accepted => "accepted",
            WebhookOutcome::Ignored => "ignored",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Unauthorized => "unauthorized",
            WebhookOutcome::Malformed => "malformed",
            WebhookOutcome::TooLarge => "too_large",
            WebhookOutcome::Busy => "busy",
        }
    }
}

/// Why a comment command was not acted on without being refused by name (the label of
/// `rollgate_github_comment_commands_ignored_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentIgnored {
    /// Its author is not a collaborator: no reply at all.
    Stranger,
    /// It is older than the bound (a redelivery or a replay).
    Stale,
}

impl CommentIgnored {
    pub const ALL: [CommentIgnored; 2] = [CommentIgnored::Stranger, CommentIgnored::Stale];

    pub fn as_str(self) -> &'static str {
        match self {
            CommentIgnored::Stranger => "stranger",
            CommentIgnored::Stale => "stale",
        }
    }
}

/// The process-wide registry.
pub fn global() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(Telemetry::default)
}

fn phase_index(p: Phase) -> usize {
    Phase::ALL.iter().position(|x| *x == p).unwrap_or(0)
}

/// The label values of `rollgate_target_action_failures_total{action}`.
pub const ACTION_KINDS: [&str; 4] = ["start_candidate", "set_weight", "promote", "rollback"];

impl Telemetry {
    pub fn transition(&self, to: Phase) {
        self.transitions[phase_index(to)].fetch_add(1, Ordering::Relaxed);
    }

    /// A target action that failed; `kind` is one of `ACTION_KINDS` (others count as the last).
    pub fn target_action_failed(&self, kind: &str) {
        let i = ACTION_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(ACTION_KINDS.len() - 1);
        self.action_failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// `verdict`: "pass", "fail" or "inconclusive".
    pub fn judged(&self, verdict: &str) {
        let i = match verdict {
            "pass" => 0,
            "fail" => 1,
            _ => 2,
        };
        self.judge[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn webhook(&self, outcome: WebhookOutcome) {
        let i = WebhookOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.webhooks[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A GitHub job (preview, command, status) that failed.
    pub fn github_error(&self) {
        self.github_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A comment command not acted on (see [`CommentIgnored`]).
    pub fn comment_ignored(&self, why: CommentIgnored) {
        let i = CommentIgnored::ALL
            .iter()
            .position(|w| *w == why)
            .unwrap_or(0);
        self.comments_ignored[i].fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP connection closed unserved: the connection cap was reached.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(u64::from(leader), Ordering::Relaxed);
    }

    pub fn reconcile_took(&self, d: Duration) {
        self.reconcile_duration.observe(RECONCILE_BOUNDS, d);
    }

    /// A transition's status commit pushed `d` after the transition was decided.
    pub fn status_pushed_after(&self, d: Duration) {
        self.push_delay.observe(PUSH_DELAY_BOUNDS, d);
    }

    /// The delays from decision to pushed status commit so far.
    pub fn push_delays(&self) -> HistogramSnapshot {
        self.push_delay.snapshot(PUSH_DELAY_BOUNDS)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "rollgate_reconciles_total",
            "Plan reconciles performed.",
            g(&self.reconciles),
        );
        counter(
            &mut o,
            "rollgate_reconcile_errors_total",
            "Plan reconciles that failed (the plan is retried; others go on).",
            g(&self.reconcile_errors),
        );
        counter(
            &mut o,
            "rollgate_writeback_commits_total",
            "Commits pushed by the writer.",
            g(&self.writeback_commits),
        );
        counter(
            &mut o,
            "rollgate_git_fetches_total",
            "Fetches of the watched branch from the remote.",
            g(&self.git_fetches),
        );
        counter(
            &mut o,
            "rollgate_writeback_retries_total",
            "Pushes lost to a concurrent push and recomputed.",
            g(&self.writeback_retries),
        );
        counter(
            &mut o,
            "rollgate_reverts_total",
            "Revert or restore commits pushed after a failed judgement or an abort.",
            g(&self.reverts),
        );
        let _ = writeln!(
            o,
            "# HELP rollgate_target_action_failures_total Target actions that failed (the rollout holds and retries with backoff), by action.\n# TYPE rollgate_target_action_failures_total counter"
        );
        for (i, k) in ACTION_KINDS.iter().enumerate() {
            let _ = writeln!(
                o,
                "rollgate_target_action_failures_total{{action=\"{k}\"}} {}",
                g(&self.action_failures[i])
            );
        }
        let _ = writeln!(
            o,
            "# HELP rollgate_webhooks_total GitHub webhook deliveries, by outcome.\n# TYPE rollgate_webhooks_total counter"
        );
        for (i, w) in WebhookOutcome::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "rollgate_webhooks_total{{outcome=\"{}\"}} {}",
                w.as_str(),
                g(&self.webhooks[i])
            );
        }
        counter(
            &mut o,
            "rollgate_github_errors_total",
            "GitHub jobs (previews, comment commands, statuses) that failed.",
            g(&self.github_errors),
        );
        let _ = writeln!(
            o,
            "# HELP rollgate_github_comment_commands_ignored_total Comment commands not acted on: by someone not a collaborator (no reply), or too old.\n# TYPE rollgate_github_comment_commands_ignored_total counter"
        );
        for (i, w) in CommentIgnored::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "rollgate_github_comment_commands_ignored_total{{reason=\"{}\"}} {}",
                w.as_str(),
                g(&self.comments_ignored[i])
            );
        }
        counter(
            &mut o,
            "rollgate_http_connections_refused_total",
            "HTTP connections closed unserved because the connection cap was reached.",
            g(&self.connections_refused),
        );
        let _ = writeln!(
            o,
            "# HELP rollgate_leader 1 while this process may write to Git and targets (it holds the lease, or runs without --leader-elect).\n# TYPE rollgate_leader gauge\nrollgate_leader {}",
            g(&self.leader)
        );
        let _ = writeln!(
            o,
            "# HELP rollgate_plans Plans at the last head, by gate outcome.\n# TYPE rollgate_plans gauge"
        );
        let _ = writeln!(
            o,
            "rollgate_plans{{gate=\"accepted\"}} {}",
            g(&self.accepted_plans)
        );
        let _ = writeln!(
            o,
            "rollgate_plans{{gate=\"rejected\"}} {}",
            g(&self.rejected_plans)
        );
        let _ = writeln!(
            o,
            "# HELP rollgate_transitions_total Status transitions written, by the phase entered.\n# TYPE rollgate_transitions_total counter"
        );
        for (i, p) in Phase::ALL.iter().enumerate() {
            let _ = writeln!(
                o,
                "rollgate_transitions_total{{phase=\"{}\"}} {}",
                p.as_str(),
                g(&self.transitions[i])
            );
        }
        let _ = writeln!(
            o,
            "# HELP rollgate_judgements_total Check judgements, by verdict.\n# TYPE rollgate_judgements_total counter"
        );
        for (i, v) in ["pass", "fail", "inconclusive"].iter().enumerate() {
            let _ = writeln!(
                o,
                "rollgate_judgements_total{{verdict=\"{v}\"}} {}",
                g(&self.judge[i])
            );
        }
        self.reconcile_duration.render(
            &mut o,
            "rollgate_reconcile_duration_seconds",
            "Time to reconcile one plan.",
            RECONCILE_BOUNDS,
        );
        self.push_delay.render(
            &mut o,
            "rollgate_status_push_delay_seconds",
            "Time from a transition's decision to its status commit pushed, lost races to other writers included.",
            PUSH_DELAY_BOUNDS,
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_delay_quantiles_interpolate_within_their_bucket_like_prometheus() {
        let t = Telemetry::default();
        let before = t.push_delays();
        assert_eq!(before.quantile(0.5), None, "no push yet");
        t.status_pushed_after(Duration::from_secs(20));
        let earlier = t.push_delays();
        // 98 pushes within 0.1 s, one at 1.2 s, one at 45 s.
        for _ in 0..98 {
            t.status_pushed_after(Duration::from_millis(80));
        }
        t.status_pushed_after(Duration::from_millis(1200));
        t.status_pushed_after(Duration::from_secs(45));
        let since = t.push_delays().since(&earlier);
        assert_eq!(since.count(), 100);
        let q = |q| since.quantile(q).expect("pushes seen");
        // Rank 50 of the 98 in (0.05, 0.1].
        assert!(
            (q(0.5) - (0.05 + 0.05 * 50.0 / 98.0)).abs() < 1e-9,
            "{}",
            q(0.5)
        );
        // Rank 99 is the push in (1.0, 1.5]: its bucket's top.
        assert!((q(0.99) - 1.5).abs() < 1e-9, "{}", q(0.99));
        assert!((q(1.0) - 60.0).abs() < 1e-9, "{}", q(1.0));
        let text = t.render();
        assert!(
            text.contains("rollgate_status_push_delay_seconds_bucket{le=\"2\"} 99\n"),
            "{text}"
        );
        assert!(
            text.contains("rollgate_status_push_delay_seconds_count 101\n"),
            "{text}"
        );
    }

    #[test]
    fn renders_valid_exposition_lines() {
        let t = Telemetry::default();
        t.transition(Phase::Progressing);
        t.judged("fail");
        t.reconcile_took(Duration::from_millis(3));
        t.webhook(WebhookOutcome::Unauthorized);
        assert!(t.render().contains("\nrollgate_leader 0\n"));
        t.set_leader(true);
        let text = t.render();
        assert!(text.contains("\nrollgate_leader 1\n"), "{text}");
        assert!(
            text.contains("rollgate_transitions_total{phase=\"Progressing\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rollgate_webhooks_total{outcome=\"unauthorized\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rollgate_judgements_total{verdict=\"fail\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rollgate_reconcile_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(
                !name.is_empty() && value.parse::<f64>().is_ok(),
                "bad line {line:?}"
            );
        }
    }
}
