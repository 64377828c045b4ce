//! Choosing a backend for one request: pure arithmetic, no I/O.
//!
//! Without stickiness the n-th request of a routing table goes to the candidate when
//! `round((n+1)·w/100) > round(n·w/100)`: an error-diffusion counter, so any 100
//! consecutive requests send exactly `w` to the candidate (no bursts), and the pattern
//! depends only on `n mod 100`. With stickiness a request carrying the configured header
//! or cookie goes to the candidate when `fnv1a(value) mod 100 < w`: a client keeps its
//! version while the weight is unchanged, and moves only when the weight crosses its
//! bucket (raising the weight never moves a client back to stable).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hyper::HeaderMap;
use hyper::header::COOKIE;

use super::Backend;
use super::stats::Recorder;
use crate::model::plan::Sticky;

/// Whether the `n`-th request (from 0) at `weight`% goes to the candidate.
pub(crate) fn smooth_pick(n: u64, weight: u8) -> bool {
    let w = u64::from(weight.min(100));
    let n = n % 100;
    ((n + 1) * w + 50) / 100 > (n * w + 50) / 100
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
        Sticky::Cookie(name) => headers
            .get_all(COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                (&pair[..eq] == name.as_bytes() && eq + 1 < pair.len())
                    .then(|| sticky_bucket(&pair[eq + 1..]))
            }),
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

/// One routing state: replaced as a whole by `Proxy::set_routes`.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub stable: Option<Arc<Routed>>,
    pub candidate: Option<Arc<Routed>>,
    pub weight: u8,
    seq: AtomicU64,
}

impl Table {
    pub fn new(stable: Option<Arc<Routed>>, candidate: Option<Arc<Routed>>, weight: u8) -> Self {
        Self {
            stable,
            candidate,
            weight: weight.min(100),
            seq: AtomicU64::new(0),
        }
    }

    /// The addresses this table routes to.
    pub fn addrs(&self) -> [Option<std::net::SocketAddr>; 2] {
        [&self.stable, &self.candidate].map(|r| r.as_ref().map(|r| r.backend.addr))
    }

    /// The backend for the next request; `bucket` is its sticky bucket, if any.
    /// With one backend only, it takes everything.
    pub fn pick(&self, bucket: Option<u8>) -> Option<&Arc<Routed>> {
        match (&self.stable, &self.candidate) {
            (None, None) => None,
            (Some(s), None) => Some(s),
            (None, Some(c)) => Some(c),
            (Some(s), Some(c)) => {
                let to_candidate = match bucket {
                    Some(b) => b < self.weight,
                    None => smooth_pick(self.seq.fetch_add(1, Ordering::Relaxed), self.weight),
                };
                Some(if to_candidate { c } else { s })
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
