//! Choosing a backend for one request: pure arithmetic, no I/O.
//!
//! Without stickiness the n-th request of a routing table goes to the candidate when
//! `round((n+1)·w/100) > round(n·w/100)`: an error-diffusion counter, so any 100
//! consecutive requests send exactly `w` to the candidate (no bursts), and the pattern
//! depends only on `n mod 100`. With stickiness a request carrying the configured header
//! or cookie goes to the candidate when `fnv1a(value) mod 100 < w`: a client keeps its
//! version while the weight is unchanged, and moves only when the weight crosses its
//! bucket (raising the weight never moves a client back to stable).
//! A fresh baseline (a copy of the stable artifact) takes as many as the candidate: the
//! `w + b` requests of each 100 that leave the stable go by the same counter, and among
//! them a second error-diffusion counter gives the candidate `w` and the baseline `b`
//! (alternating when equal), so any 100 consecutive requests send exactly `w` to the
//! candidate and `b` to the baseline. Sticky buckets below `w` go to the candidate,
//! those from `w` to `w + b` to the baseline.
//! A header route comes first: a request meeting every one of its conditions goes to the
//! candidate whatever the weight (and is not mirrored). A mirror copies every
//! `100/percent`-th request served by the stable version, by the same error-diffusion
//! counter, so any 100 consecutive stable-served requests mirror exactly `percent`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hyper::HeaderMap;
use hyper::header::COOKIE;

use super::Backend;
use super::stats::Recorder;
use crate::model::plan::{MatchOn, MatchValue, RequestMatch, Routing, Sticky};

/// Whether the `n`-th request (from 0) at `weight`% goes to the candidate.
pub(crate) fn smooth_pick(n: u64, weight: u8) -> bool {
    let w = u64::from(weight.min(100));
    let n = n % 100;
    ((n + 1) * w + 50) / 100 > (n * w + 50) / 100
}

/// Which backend a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    Stable,
    Candidate,
    Baseline,
}

/// Where the `n`-th request (from 0) goes with `weight`% to the candidate and
/// `baseline`% (at most what the stable has left) to a fresh baseline. A function of
/// `n mod 100` with exactly `weight` and `baseline` picks in each period; with no
/// baseline it is `smooth_pick`.
pub(crate) fn smooth_share(n: u64, weight: u8, baseline: u8) -> Share {
    let wc = u64::from(weight.min(100));
    let wb = u64::from(baseline.min(100 - weight.min(100)));
    let total = wc + wb;
    let r = n % 100;
    // `total` ≤ 100, so it fits a weight.
    if !smooth_pick(r, u8::try_from(total).unwrap_or(100)) {
        return Share::Stable;
    }
    // This is the k-th (from 0) of the period's `total` picks: spread `wc` over them.
    let k = (r * total + 50) / 100;
    let half = total / 2;
    if ((k + 1) * wc + half) / total > (k * wc + half) / total {
        Share::Candidate
    } else {
        Share::Baseline
    }
}

/// FNV-1a, 64 bits: stable across processes and releases (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The sticky bucket (0..100) of a header or cookie value.
pub(crate) fn sticky_bucket(value: &[u8]) -> u8 {
    (fnv1a(value) % 100) as u8
}

/// The sticky bucket of a request, when it carries the configured header or cookie.
pub(crate) fn request_bucket(sticky: &Sticky, headers: &HeaderMap) -> Option<u8> {
    match sticky {
        Sticky::Header(name) => headers
            .get(name.as_str())
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .map(sticky_bucket),
        Sticky::Cookie(name) => cookies(headers, name)
            .find(|v| !v.is_empty())
            .map(sticky_bucket),
    }
}

/// The values of the cookie `name` in a request's `Cookie` headers, in order.
fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

/// One condition of a header route, ready to test requests.
#[derive(Debug)]
pub(crate) struct Condition {
    on: MatchOn,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    /// Anchored at both ends: the whole value must match.
    Regex(regex::bytes::Regex),
}

impl Condition {
    /// `Err` for a pattern that does not compile (validation refuses those first).
    pub fn new(m: &RequestMatch) -> Result<Self, String> {
        let value = match &m.value {
            MatchValue::Exact(v) => Value::Exact(v.as_bytes().to_vec()),
            MatchValue::Prefix(v) => Value::Prefix(v.as_bytes().to_vec()),
            MatchValue::Regex(r) => Value::Regex(
                regex::bytes::RegexBuilder::new(&format!("^(?:{r})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("pattern `{r}`: {e}"))?,
            ),
        };
        Ok(Self {
            on: m.on.clone(),
            value,
        })
    }

    fn matches(&self, v: &[u8]) -> bool {
        match &self.value {
            Value::Exact(x) => v == x.as_slice(),
            Value::Prefix(p) => v.starts_with(p),
            Value::Regex(r) => r.is_match(v),
        }
    }

    /// Whether the request carries the header or cookie with a matching value (any of
    /// its values, when it carries several).
    pub fn holds(&self, headers: &HeaderMap) -> bool {
        match &self.on {
            MatchOn::Header(name) => headers
                .get_all(name.as_str())
                .iter()
                .any(|v| self.matches(v.as_bytes())),
            MatchOn::Cookie(name) => cookies(headers, name).any(|v| self.matches(v)),
        }
    }
}

/// A routed backend, its in-flight counter (shared by every table naming the address)
/// and the recorder of its version's statistics.
#[derive(Debug)]
pub(crate) struct Routed {
    pub backend: Backend,
    pub in_flight: Arc<AtomicUsize>,
    pub recorder: Recorder,
}

/// The backends a table routes to: stable, candidate, fresh baseline.
pub(crate) type RoutedAddrs = [Option<std::net::SocketAddr>; 3];

/// One routing state: replaced as a whole by `Proxy::set_traffic`.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub stable: Option<Arc<Routed>>,
    pub candidate: Option<Arc<Routed>>,
    pub weight: u8,
    /// A fresh baseline (a copy of the stable artifact, counted under its own series)
    /// and its share; only with both other backends.
    pub baseline: Option<Arc<Routed>>,
    pub baseline_weight: u8,
    seq: AtomicU64,
    /// A header route: all must hold; empty, none. Only with both backends.
    pub conditions: Vec<Condition>,
    /// The share of stable-served requests copied to the candidate (0: none).
    pub mirror: u8,
    mirror_seq: AtomicU64,
    /// Where the candidate's answers to copies are counted (`"<version> shadow"`).
    pub shadow: Option<Recorder>,
    /// The header route and mirror as asked (what `conditions` and `mirror` came from).
    pub routing: Routing,
}

/// Where one request goes.
#[derive(Debug)]
pub(crate) struct Pick<'t> {
    pub to: &'t Arc<Routed>,
    /// Also copy it to this backend (the candidate), its answer thrown away.
    pub mirror: Option<&'t Arc<Routed>>,
}

impl Table {
    pub fn new(stable: Option<Arc<Routed>>, candidate: Option<Arc<Routed>>, weight: u8) -> Self {
        Self {
            stable,
            candidate,
            weight: weight.min(100),
            ..Self::default()
        }
    }

    /// With a header route and a mirror (they apply only while both backends are routed).
    #[must_use]
    pub fn shaped(
        mut self,
        routing: Routing,
        conditions: Vec<Condition>,
        shadow: Option<Recorder>,
    ) -> Self {
        self.conditions = conditions;
        self.mirror = routing.mirror.min(100);
        self.shadow = shadow;
        self.routing = routing;
        self
    }

    /// With a fresh baseline taking `share`% (capped at what the stable has left);
    /// ignored unless both other backends are routed.
    #[must_use]
    pub fn with_baseline(mut self, baseline: Option<Arc<Routed>>, share: u8) -> Self {
        if self.stable.is_some() && self.candidate.is_some() && baseline.is_some() {
            self.baseline_weight = share.min(100 - self.weight);
            self.baseline = baseline;
        }
        self
    }

    /// The addresses this table routes to.
    pub fn addrs(&self) -> RoutedAddrs {
        [&self.stable, &self.candidate, &self.baseline].map(|r| r.as_ref().map(|r| r.backend.addr))
    }

    /// Where a request with these headers goes (`bucket`: its sticky bucket, if any): a
    /// header route first, then the weight (sticky or smooth); a stable-served request
    /// may also be mirrored. With one backend only, it takes everything.
    pub fn pick_for(&self, bucket: Option<u8>, headers: &HeaderMap) -> Option<Pick<'_>> {
        let only = |to| Some(Pick { to, mirror: None });
        match (&self.stable, &self.candidate) {
            (None, None) => None,
            (Some(s), None) => only(s),
            (None, Some(c)) => only(c),
            (Some(s), Some(c)) => {
                if !self.conditions.is_empty() && self.conditions.iter().all(|m| m.holds(headers)) {
                    return only(c);
                }
                let bw = if self.baseline.is_some() {
                    self.baseline_weight
                } else {
                    0
                };
                let share = match bucket {
                    Some(b) if b < self.weight => Share::Candidate,
                    Some(b) if u16::from(b) < u16::from(self.weight) + u16::from(bw) => {
                        Share::Baseline
                    }
                    Some(_) => Share::Stable,
                    None => smooth_share(self.seq.fetch_add(1, Ordering::Relaxed), self.weight, bw),
                };
                match (share, &self.baseline) {
                    (Share::Candidate, _) => return only(c),
                    (Share::Baseline, Some(b)) => return only(b),
                    _ => {}
                }
                let mirror = (self.mirror > 0
                    && smooth_pick(self.mirror_seq.fetch_add(1, Ordering::Relaxed), self.mirror))
                .then_some(c);
                Some(Pick { to: s, mirror })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn any_hundred_consecutive_requests_carry_exactly_the_weight() {
        for w in 0..=100u8 {
            let picks: Vec<bool> = (0..1000).map(|n| smooth_pick(n, w)).collect();
            for window in picks.windows(100) {
                assert_eq!(
                    window.iter().filter(|c| **c).count(),
                    usize::from(w),
                    "weight {w}"
                );
            }
            // Smooth: at 50 %, strictly alternating; at 5 %, one in twenty.
            if w == 50 {
                assert!(picks.windows(2).all(|p| p[0] != p[1]));
            }
        }
        assert!(!smooth_pick(0, 5) && smooth_pick(9, 5) && smooth_pick(29, 5));
    }

    #[test]
    fn with_a_fresh_baseline_any_hundred_consecutive_requests_carry_exactly_each_share() {
        for w in 0..=100u8 {
            for b in [0, w / 3, w, 100 - w] {
                let shares: Vec<Share> = (0..1000).map(|n| smooth_share(n, w, b)).collect();
                let b = b.min(100 - w);
                for window in shares.windows(100) {
                    let count = |s| window.iter().filter(|x| **x == s).count();
                    assert_eq!(count(Share::Candidate), usize::from(w), "w {w} b {b}");
                    assert_eq!(count(Share::Baseline), usize::from(b), "w {w} b {b}");
                }
                if b == 0 {
                    // No baseline: exactly today's smooth pick.
                    assert!(
                        (0..200u64)
                            .all(|n| (smooth_share(n, w, 0) == Share::Candidate)
                                == smooth_pick(n, w))
                    );
                }
            }
        }
        // Equal shares alternate: at 5 and 5, one in ten leaves the stable, and those
        // take turns.
        let away: Vec<Share> = (0..100)
            .map(|n| smooth_share(n, 5, 5))
            .filter(|s| *s != Share::Stable)
            .collect();
        assert_eq!(away.len(), 10);
        assert!(away.windows(2).all(|p| p[0] != p[1]), "{away:?}");
    }

    #[test]
    fn sticky_buckets_from_the_weight_to_twice_it_go_to_the_fresh_baseline_and_only_stable_ones_are_mirrored()
     {
        let stats = super::super::Stats::new();
        let routed = |version: &str, port: u16| {
            Arc::new(Routed {
                backend: Backend {
                    version: version.to_owned(),
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                },
                in_flight: Arc::default(),
                recorder: stats.recorder(version),
            })
        };
        let mirror = Routing {
            mirror: 100,
            ..Routing::default()
        };
        let t = Table::new(Some(routed("v1", 1)), Some(routed("v2", 2)), 20)
            .with_baseline(Some(routed("v1 baseline", 3)), 20)
            .shaped(mirror, Vec::new(), None);
        let h = HeaderMap::new();
        for b in 0..100u8 {
            let p = t.pick_for(Some(b), &h).expect("routed");
            let want = match b {
                0..20 => "v2",
                20..40 => "v1 baseline",
                _ => "v1",
            };
            assert_eq!(p.to.backend.version, want, "bucket {b}");
            assert_eq!(p.mirror.is_some(), want == "v1", "bucket {b}");
        }
        // The baseline's share is capped at what the stable has left, and there is no
        // baseline without both other versions
        let capped = Table::new(Some(routed("v1", 1)), Some(routed("v2", 2)), 70)
            .with_baseline(Some(routed("v1 baseline", 3)), 70);
        assert_eq!(capped.baseline_weight, 30);
        let alone = Table::new(Some(routed("v1", 1)), None, 20)
            .with_baseline(Some(routed("v1 baseline", 3)), 20);
        assert!(alone.baseline.is_none());
        assert_eq!(alone.addrs()[2], None);
    }

    #[test]
    fn sticky_buckets_are_stable_and_spread() {
        // Fixed values: a change of hash would move every client at once.
        assert_eq!(sticky_bucket(b"alice"), (fnv1a(b"alice") % 100) as u8);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut counts = [0u32; 10];
        for i in 0..10_000 {
            counts[usize::from(sticky_bucket(format!("user-{i}").as_bytes()) / 10)] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    fn cond(on: MatchOn, value: MatchValue) -> Condition {
        Condition::new(&RequestMatch { on, value }).expect("compiles")
    }

    #[test]
    fn conditions_match_headers_and_cookies_by_value_prefix_and_whole_pattern() {
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("1"));
        h.append("x-group", HeaderValue::from_static("beta-testers"));
        h.append(COOKIE, HeaderValue::from_static("a=1; tier=gold"));
        let header = |v| MatchOn::Header(v);
        let exact = |v: &str| MatchValue::Exact(v.to_owned());
        // Header names are case-insensitive; values are exact.
        assert!(cond(header("X-Canary".into()), exact("1")).holds(&h));
        assert!(!cond(header("X-Canary".into()), exact("10")).holds(&h));
        assert!(!cond(header("x-missing".into()), exact("1")).holds(&h));
        assert!(cond(header("x-group".into()), MatchValue::Prefix("beta".into())).holds(&h));
        assert!(
            !cond(
                header("x-group".into()),
                MatchValue::Prefix("testers".into())
            )
            .holds(&h)
        );
        // A pattern must match the whole value.
        assert!(
            cond(
                header("x-group".into()),
                MatchValue::Regex("beta-.*".into())
            )
            .holds(&h)
        );
        assert!(!cond(header("x-group".into()), MatchValue::Regex("beta".into())).holds(&h));
        // Cookies by name (exact), among several.
        assert!(cond(MatchOn::Cookie("tier".into()), exact("gold")).holds(&h));
        assert!(!cond(MatchOn::Cookie("Tier".into()), exact("gold")).holds(&h));
        assert!(!cond(MatchOn::Cookie("tier".into()), exact("silver")).holds(&h));
        assert!(
            Condition::new(&RequestMatch {
                on: header("x".into()),
                value: MatchValue::Regex("(".into())
            })
            .is_err()
        );
    }

    #[test]
    fn sticky_value_from_header_or_cookie() {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.append(COOKIE, HeaderValue::from_static("a=1; session=bob"));
        h.append(COOKIE, HeaderValue::from_static("other=2"));
        let header = Sticky::Header("X-User".into());
        let cookie = Sticky::Cookie("session".into());
        assert_eq!(request_bucket(&header, &h), Some(sticky_bucket(b"alice")));
        assert_eq!(request_bucket(&cookie, &h), Some(sticky_bucket(b"bob")));
        assert_eq!(
            request_bucket(&Sticky::Cookie("other".into()), &h),
            Some(sticky_bucket(b"2"))
        );
        assert_eq!(request_bucket(&Sticky::Cookie("missing".into()), &h), None);
        assert_eq!(request_bucket(&Sticky::Header("x-none".into()), &h), None);
    }
}
