//! Per-version request statistics of the built-in proxy.
//!
//! Every finished request is recorded twice: into lifetime counters and a fixed-bucket
//! latency histogram (what `/.rollgate/metrics` exposes to Prometheus), and into a ring
//! of one-second slots covering the last 15 minutes (what `window` answers for the
//! analysis: counts, success rate, quantiles over the last N seconds).
//! The request path records through a `Recorder`, a handle on one version's own lock
//! taken when the route is set, so recording never touches the map of versions.
//! Invariants: memory per version is bounded (`RING_SECS` slots, each with a fixed-size
//! histogram, allocated on first use); a window query counts exactly the requests
//! recorded in the whole seconds it covers; quantiles come from a log-linear histogram
//! (16 sub-buckets per power of two, exact below 16 µs), so a reported quantile is within
//! about 3 % of the true sample value.
//!
//! One job over 600 lines, kept in one file: the proxy's counters and latency
//! histograms, with their tests.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many one-second slots the window ring keeps: the longest window answered.
pub const RING_SECS: u64 = 900;

/// The longest window `Stats::window` answers exactly; longer windows are clamped.
pub const MAX_WINDOW: Duration = Duration::from_secs(RING_SECS);

/// Upper bounds (seconds) of the Prometheus histogram buckets, `+Inf` implied.
pub const PROMETHEUS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status classes, in the order of `WindowStats::by_class`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index of the 5xx class in `by_class`.
pub const CLASS_5XX: usize = 4;

/// Sub-buckets per power of two in the quantile histogram.
const SUB: u64 = 16;
/// Latencies at or above 2^27 µs (about 134 s) share the last bucket.
const MAX_EXP: u64 = 27;
const HIST_LEN: usize = (SUB + (MAX_EXP - 4) * SUB) as usize;

/// The quantile-histogram bucket of a latency in microseconds.
fn bucket_of(us: u64) -> usize {
    let us = us.min((1 << MAX_EXP) - 1);
    if us < SUB {
        return us as usize;
    }
    let e = u64::from(63 - us.leading_zeros()); // 4..MAX_EXP
    let sub = (us >> (e - 4)) & (SUB - 1);
    (SUB + (e - 4) * SUB + sub) as usize
}

/// The value (seconds) a bucket stands for: exact below 16 µs, else its midpoint.
fn bucket_value(i: usize) -> f64 {
    let i = i as u64;
    if i < SUB {
        return i as f64 / 1e6;
    }
    let k = i - SUB;
    let shift = k / SUB;
    let lo = (SUB + k % SUB) << shift;
    let hi = (SUB + k % SUB + 1) << shift;
    (lo + hi) as f64 / 2.0 / 1e6
}

fn class_of(status: u16) -> usize {
    match status {
        0..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => CLASS_5XX,
    }
}

/// One second of one version.
#[derive(Debug)]
struct Slot {
    /// Which second (since `Stats::start`) this slot holds; stale slots are ignored.
    sec: u64,
    by_class: [u64; 5],
    sum_us: u64,
    hist: Box<[u32]>,
}

#[derive(Debug, Default)]
struct VersionStats {
    by_class: [u64; 5],
    /// Non-cumulative counts per `PROMETHEUS_BUCKETS` bound, plus the `+Inf` overflow.
    buckets: [u64; PROMETHEUS_BUCKETS.len() + 1],
    sum_us: u64,
    count: u64,
    /// Empty until the first request, then `RING_SECS` slots; freed when idle longer.
    ring: Vec<Slot>,
    last_sec: u64,
}

impl VersionStats {
    fn record(&mut self, sec: u64, class: usize, us: u64) {
        self.by_class[class] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        let secs = us as f64 / 1e6;
        let b = PROMETHEUS_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(PROMETHEUS_BUCKETS.len());
        self.buckets[b] += 1;

        if self.ring.is_empty() {
            self.ring = (0..RING_SECS)
                .map(|_| Slot {
                    sec: u64::MAX,
                    by_class: [0; 5],
                    sum_us: 0,
                    hist: Box::default(),
                })
                .collect();
        }
        let slot = &mut self.ring[(sec % RING_SECS) as usize];
        if slot.sec != sec {
            slot.sec = sec;
            slot.by_class = [0; 5];
            slot.sum_us = 0;
            if slot.hist.is_empty() {
                slot.hist = vec![0; HIST_LEN].into_boxed_slice();
            } else {
                slot.hist.fill(0);
            }
        }
        slot.by_class[class] += 1;
        slot.sum_us = slot.sum_us.saturating_add(us);
        let h = &mut slot.hist[bucket_of(us)];
        *h = h.saturating_add(1);
        self.last_sec = self.last_sec.max(sec);
    }
}

type Version = Arc<Mutex<VersionStats>>;

fn lock(v: &Version) -> std::sync::MutexGuard<'_, VersionStats> {
    v.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records finished requests of one version, without looking the version up.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    start: Instant,
    version: Version,
}

impl Recorder {
    pub fn record(&self, status: u16, latency: Duration) {
        let sec = self.start.elapsed().as_secs();
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        lock(&self.version).record(sec, class_of(status), us);
    }
}

/// Statistics of one proxy, by version. Shared (`Arc<Stats>`) between the proxy's
/// request tasks and readers (the builtin metrics source, the metrics endpoint).
/// A version is listed once it has a recorded request.
#[derive(Debug)]
pub struct Stats {
    start: Instant,
    /// When counting began, on the wall clock: samples before it do not exist here.
    started_at: std::time::SystemTime,
    /// Each version behind its own lock, so requests of two versions never contend.
    versions: Mutex<HashMap<String, Version>>,
    /// Requests answered 503 because no backend was routed.
    unrouted: AtomicU64,
    /// Client connections closed unserved: the connection cap was reached.
    refused: AtomicU64,
    /// Mirror copies not sent, by reason (see `MirrorNotSent`).
    mirror_backpressure: AtomicU64,
    mirror_too_large: AtomicU64,
    mirror_incomplete: AtomicU64,
}

/// Requests a mirror step would have copied but did not, since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorNotSent {
    /// `shadow::MAX_IN_FLIGHT` copies were outstanding already (buffering or sent).
    pub backpressure: u64,
    /// The body was larger than `shadow::MAX_BODY` (by its length, or as it arrived).
    pub too_large: u64,
    /// The body did not arrive whole (the client or the stable backend gave up first).
    pub incomplete: u64,
}

/// The series a version's answers to mirrored copies are counted under: `"<version>
/// shadow"` (an artifact is one word, so it is never another version's name).
pub fn shadow_series(version: &str) -> String {
    format!("{version} shadow")
}

/// The series a fresh baseline (a new copy of `version`, the stable artifact) is
/// counted under: `"<version> baseline"`, apart from the stable fleet's own.
pub fn baseline_series(version: &str) -> String {
    format!("{version} baseline")
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// What happened to one version over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    /// Requests that finished in the window.
    pub requests: u64,
    /// Requests by status class, in the order of `CLASSES` (1xx, 2xx, 3xx, 4xx, 5xx).
    pub by_class: [u64; 5],
    /// Sum of the latencies of those requests.
    pub latency_sum: Duration,
    hist: Vec<u64>,
}

impl WindowStats {
    /// The parts as sent between processes: requests, counts by class, latency sum
    /// and the latency histogram (`None` when its length is not this build's).
    pub fn from_parts(
        requests: u64,
        by_class: [u64; 5],
        latency_sum: Duration,
        hist: Vec<u64>,
    ) -> Option<Self> {
        (hist.len() == HIST_LEN).then_some(Self {
            requests,
            by_class,
            latency_sum,
            hist,
        })
    }

    /// The latency histogram (buckets of about 3%).
    pub fn hist(&self) -> &[u64] {
        &self.hist
    }

    fn empty() -> Self {
        Self {
            requests: 0,
            by_class: [0; 5],
            latency_sum: Duration::ZERO,
            hist: vec![0; HIST_LEN],
        }
    }

    /// The window's latencies (seconds) as samples for a rank test: each request's
    /// histogram bucket value (about 3% resolution), in bucket order; ties are expected
    /// and handled by the test. At most `cap` values, thinned evenly beyond that.
    pub fn latency_samples(&self, cap: usize) -> Vec<f64> {
        let keep_every = (self.requests as usize).div_ceil(cap.max(1)).max(1);
        let mut out = Vec::with_capacity((self.requests as usize).min(cap));
        let mut i_req = 0usize;
        for (b, n) in self.hist.iter().enumerate() {
            for _ in 0..*n {
                if i_req.is_multiple_of(keep_every) {
                    out.push(bucket_value(b));
                }
                i_req += 1;
            }
        }
        out
    }

    /// Non-5xx requests / all requests; `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        self.error_rate().map(|e| 1.0 - e)
    }

    /// 5xx requests / all requests; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.by_class[CLASS_5XX] as f64 / self.requests as f64)
    }

    /// The `q`-quantile (0..=1, nearest rank) of the latency in seconds; `None` without
    /// requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.requests == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.requests as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_value(i));
            }
        }
        self.hist.iter().rposition(|n| *n > 0).map(bucket_value)
    }

    pub fn p50(&self) -> Option<f64> {
        self.quantile(0.50)
    }

    pub fn p95(&self) -> Option<f64> {
        self.quantile(0.95)
    }

    pub fn p99(&self) -> Option<f64> {
        self.quantile(0.99)
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            started_at: std::time::SystemTime::now(),
            versions: Mutex::new(HashMap::new()),
            unrouted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            mirror_backpressure: AtomicU64::new(0),
            mirror_too_large: AtomicU64::new(0),
            mirror_incomplete: AtomicU64::new(0),
        }
    }

    /// When this proxy began counting (wall clock). A window reaching before it is
    /// incomplete: the samples of an earlier proxy died with it.
    pub fn started_at(&self) -> std::time::SystemTime {
        self.started_at
    }

    fn now_sec(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Record one finished request of `version`.
    pub fn record(&self, version: &str, status: u16, latency: Duration) {
        self.record_at(self.now_sec(), version, status, latency);
    }

    fn record_at(&self, sec: u64, version: &str, status: u16, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        lock(&self.version_at(sec, version)).record(sec, class_of(status), us);
    }

    /// The recorder of `version`, for the request path.
    pub(crate) fn recorder(&self, version: &str) -> Recorder {
        Recorder {
            start: self.start,
            version: self.version_at(self.now_sec(), version),
        }
    }

    fn version_at(&self, sec: u64, version: &str) -> Version {
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = versions.get(version) {
            return v.clone();
        }
        // A new version is a rare event: free the rings of versions idle for longer
        // than the ring covers, so memory stays bounded over many rollouts.
        for v in versions.values() {
            let mut v = lock(v);
            if v.last_sec + RING_SECS < sec {
                v.ring = Vec::new();
            }
        }
        versions.entry(version.to_owned()).or_default().clone()
    }

    /// Versions with at least one recorded request, sorted, each with its statistics.
    fn recorded(&self) -> Vec<(String, Version)> {
        let versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(String, Version)> = versions
            .iter()
            .filter(|(_, v)| lock(v).count > 0)
            .map(|(name, v)| (name.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Count a request that found no backend.
    pub fn record_unrouted(&self) {
        self.unrouted.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a client connection closed unserved (the connection cap was reached).
    pub fn record_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a mirror copy dropped because too many were outstanding.
    pub fn record_mirror_backpressure(&self) {
        self.mirror_backpressure.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a request not mirrored because its body is larger than the bound.
    pub fn record_mirror_too_large(&self) {
        self.mirror_too_large.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a request not mirrored because its body did not arrive whole.
    pub fn record_mirror_incomplete(&self) {
        self.mirror_incomplete.fetch_add(1, Ordering::Relaxed);
    }

    /// Mirror copies not sent, by reason, since the proxy started.
    pub fn mirror_not_sent(&self) -> MirrorNotSent {
        MirrorNotSent {
            backpressure: self.mirror_backpressure.load(Ordering::Relaxed),
            too_large: self.mirror_too_large.load(Ordering::Relaxed),
            incomplete: self.mirror_incomplete.load(Ordering::Relaxed),
        }
    }

    /// Client connections closed unserved, since the proxy started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests that found no backend, since the proxy started.
    pub fn unrouted(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }

    /// Versions seen so far, sorted.
    pub fn versions(&self) -> Vec<String> {
        self.recorded().into_iter().map(|(name, _)| name).collect()
    }

    /// Requests of `version` that finished in the last `window` (whole seconds, rounded
    /// up, the current second included; clamped to `MAX_WINDOW`).
    pub fn window(&self, version: &str, window: Duration) -> WindowStats {
        self.window_at(self.now_sec(), version, window)
    }

    fn window_at(&self, now: u64, version: &str, window: Duration) -> WindowStats {
        let mut secs = window.as_secs();
        if window.subsec_nanos() > 0 {
            secs += 1;
        }
        let secs = secs.min(RING_SECS);
        let mut out = WindowStats::empty();
        let Some(v) = self
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(version)
            .cloned()
        else {
            return out;
        };
        let v = lock(&v);
        let mut sum_us = 0u64;
        for slot in &v.ring {
            // Slots of the seconds (now - secs, now].
            if slot.sec > now || slot.sec + secs <= now {
                continue;
            }
            for (o, n) in out.by_class.iter_mut().zip(slot.by_class) {
                *o += n;
            }
            sum_us = sum_us.saturating_add(slot.sum_us);
            for (o, n) in out.hist.iter_mut().zip(slot.hist.iter()) {
                *o += u64::from(*n);
            }
        }
        out.requests = out.by_class.iter().sum();
        out.latency_sum = Duration::from_micros(sum_us);
        out
    }

    /// Prometheus text exposition (format 0.0.4) of the lifetime counters, appended to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        let recorded = self.recorded();
        let versions: Vec<(&String, std::sync::MutexGuard<'_, VersionStats>)> =
            recorded.iter().map(|(name, v)| (name, lock(v))).collect();

        out.push_str(
            "# HELP rollgate_proxy_requests_total Requests proxied, by version and status class.\n",
        );
        out.push_str("# TYPE rollgate_proxy_requests_total counter\n");
        for (name, v) in &versions {
            let version = escape_label(name);
            for (class, n) in CLASSES.iter().zip(v.by_class) {
                let _ = writeln!(
                    out,
                    "rollgate_proxy_requests_total{{version=\"{version}\",code=\"{class}\"}} {n}"
                );
            }
        }

        out.push_str(
            "# HELP rollgate_proxy_request_duration_seconds Time from request received to response finished, by version.\n",
        );
        out.push_str("# TYPE rollgate_proxy_request_duration_seconds histogram\n");
        for (name, v) in &versions {
            let version = escape_label(name);
            let mut cumulative = 0;
            for (le, n) in PROMETHEUS_BUCKETS.iter().zip(v.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "rollgate_proxy_request_duration_seconds_bucket{{version=\"{version}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "rollgate_proxy_request_duration_seconds_bucket{{version=\"{version}\",le=\"+Inf\"}} {}",
                v.count
            );
            let _ = writeln!(
                out,
                "rollgate_proxy_request_duration_seconds_sum{{version=\"{version}\"}} {}",
                v.sum_us as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "rollgate_proxy_request_duration_seconds_count{{version=\"{version}\"}} {}",
                v.count
            );
        }

        out.push_str("# HELP rollgate_proxy_unrouted_requests_total Requests answered 503 because no backend was routed.\n");
        out.push_str("# TYPE rollgate_proxy_unrouted_requests_total counter\n");
        let _ = writeln!(
            out,
            "rollgate_proxy_unrouted_requests_total {}",
            self.unrouted()
        );
        out.push_str("# HELP rollgate_proxy_connections_refused_total Client connections closed unserved because the connection cap was reached.\n");
        out.push_str("# TYPE rollgate_proxy_connections_refused_total counter\n");
        let _ = writeln!(
            out,
            "rollgate_proxy_connections_refused_total {}",
            self.refused()
        );
        let not_sent = self.mirror_not_sent();
        out.push_str("# HELP rollgate_proxy_mirror_not_sent_total Requests that a mirror step would have copied but did not: too many copies outstanding (backpressure), a request body over the bound (body_too_large), or one that did not arrive whole (body_incomplete).\n");
        out.push_str("# TYPE rollgate_proxy_mirror_not_sent_total counter\n");
        for (reason, n) in [
            ("backpressure", not_sent.backpressure),
            ("body_too_large", not_sent.too_large),
            ("body_incomplete", not_sent.incomplete),
        ] {
            let _ = writeln!(
                out,
                "rollgate_proxy_mirror_not_sent_total{{reason=\"{reason}\"}} {n}"
            );
        }
    }
}

/// Escape a Prometheus label value: backslash, double quote and newline.
pub(crate) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_are_monotonic_and_within_three_percent() {
        let mut last = 0;
        for us in 0..(1u64 << 20) {
            let b = bucket_of(us);
            assert!(b >= last && b < HIST_LEN, "bucket of {us}");
            last = b;
            let v = bucket_value(b) * 1e6;
            if us < SUB {
                assert_eq!(v, us as f64);
            } else {
                assert!(
                    (v - us as f64).abs() / us as f64 <= 0.032,
                    "{us} µs reported as {v}"
                );
            }
        }
        assert_eq!(bucket_of(u64::MAX), HIST_LEN - 1);
    }

    #[test]
    fn window_counts_exactly_the_seconds_it_covers() {
        let stats = Stats::new();
        // Seconds 100..=159: one 200 per second, and a 500 every tenth second.
        for sec in 100..160 {
            stats.record_at(sec, "v2", 200, ms(10));
            if sec % 10 == 0 {
                stats.record_at(sec, "v2", 500, ms(10));
            }
        }
        stats.record_at(150, "v1", 200, ms(1));

        let w = stats.window_at(159, "v2", Duration::from_secs(30)); // seconds 130..=159
        assert_eq!(w.requests, 33);
        assert_eq!(w.by_class, [0, 30, 0, 0, 3]);
        assert_eq!(w.error_rate(), Some(3.0 / 33.0));
        assert_eq!(w.success_rate(), Some(30.0 / 33.0));

        let w = stats.window_at(159, "v2", Duration::from_millis(29_500)); // rounds up to 30 s
        assert_eq!(w.requests, 33);
        let w = stats.window_at(159, "v2", Duration::from_secs(1));
        assert_eq!(w.requests, 1);
        let w = stats.window_at(200, "v2", Duration::from_secs(30)); // all older than the window
        assert_eq!(w.requests, 0);
        assert_eq!(w.success_rate(), None);
        assert_eq!(w.p99(), None);
        assert_eq!(
            stats.window_at(159, "v3", Duration::from_secs(30)).requests,
            0
        );
        assert_eq!(
            stats.window_at(159, "v1", Duration::from_secs(30)).requests,
            1
        );
    }

    #[test]
    fn ring_wraps_after_fifteen_minutes() {
        let stats = Stats::new();
        stats.record_at(5, "v", 200, ms(1));
        stats.record_at(5 + RING_SECS, "v", 200, ms(1)); // same slot, 15 minutes later
        assert_eq!(stats.window_at(5 + RING_SECS, "v", MAX_WINDOW).requests, 1);
        assert_eq!(
            stats
                .window_at(5 + RING_SECS, "v", Duration::from_secs(3600))
                .requests,
            1
        );
        // Lifetime counters keep everything.
        let mut text = String::new();
        stats.render_prometheus(&mut text);
        assert!(
            text.contains("rollgate_proxy_requests_total{version=\"v\",code=\"2xx\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn quantiles_follow_nearest_rank() {
        let stats = Stats::new();
        let mut latencies = Vec::new();
        latencies.extend([0u64; 5]); // 5 fast errors
        latencies.extend([10; 80]);
        latencies.extend([50; 11]);
        latencies.extend([200; 4]);
        for (i, l) in latencies.iter().enumerate() {
            let status = if i < 5 { 503 } else { 200 };
            stats.record_at(10 + i as u64 / 50, "v", status, ms(*l));
        }
        let w = stats.window_at(12, "v", Duration::from_secs(60));
        assert_eq!(w.requests, 100);
        assert_eq!(w.error_rate(), Some(0.05));
        let close = |got: Option<f64>, want: f64| {
            let got = got.expect("a quantile");
            assert!((got - want).abs() <= want * 0.032, "got {got}, want {want}");
        };
        close(w.p50(), 0.010);
        close(w.p95(), 0.050);
        close(w.p99(), 0.200);
        assert_eq!(w.quantile(0.0), Some(0.0));
        close(w.quantile(1.0), 0.200);
        assert_eq!(w.latency_sum, ms(80 * 10 + 11 * 50 + 4 * 200));
    }

    #[test]
    fn idle_versions_free_their_ring() {
        let stats = Stats::new();
        stats.record_at(1, "old", 200, ms(1));
        stats.record_at(1 + RING_SECS + 1, "new", 200, ms(1));
        let versions = stats.versions.lock().expect("not poisoned");
        assert!(lock(&versions["old"]).ring.is_empty());
        assert_eq!(lock(&versions["old"]).count, 1);
        assert_eq!(lock(&versions["new"]).ring.len(), RING_SECS as usize);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
