//! Header routes and mirrors (#19) through the daemon, the data plane and its proxy on
//! the local target, with real `demo-service` workloads and real requests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support;
use support::git;
use support::local::{Traffic, World};

/// A shadow check on the candidate's answers to mirrored copies.
const SHADOW_CHECK: &str = "    - { name: shadow, source: builtin, query: shadow-success-rate, interval: 300ms, judge: { min: 0.95 } }\n";

/// One GET of `/` with these headers on a new connection: (status, version that answered).
fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".to_owned();
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    let version = body.rsplit(' ').next().unwrap_or("?").to_owned();
    (status, version)
}

pub(crate) fn versions(
    addr: SocketAddr,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, version) = get(addr, headers);
        assert_eq!(status, 200, "answered by {version}");
        *seen.entry(version).or_default() += 1;
    }
    seen
}

/// `rollgate_proxy_requests_total` of `series` (all classes), from the proxy itself.
pub(crate) fn proxied(addr: SocketAddr, series: &str) -> u64 {
    let (code, text) =
        rollgate::targets::local::http_get(addr, "/.rollgate/metrics", Duration::from_secs(5))
            .expect("metrics");
    assert_eq!(code, 200);
    let prefix = format!("rollgate_proxy_requests_total{{version=\"{series}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_shadow_check_that_fails_rolls_back_before_any_user_traffic_moved() {
    // Given v1 stable under traffic, and a plan whose first steps only mirror
    let world = World::with_checks(
        "[{ setMirror: { percent: 50 } }, { analysis: { checks: [shadow], duration: 3s } }, { setWeight: 20 }, { setWeight: 100 }]",
        SHADOW_CHECK,
    );
    let _daemon = world.daemon();
    world.wait("v1 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    let load = Traffic::start(world.addr(), 200);
    // When v2, which fails 20% of its requests, is rolled out
    world.roll_out("v2", true);
    let s = world.wait("v2 rolled back", Duration::from_secs(60), |s| {
        s.phase.as_str() == "RolledBack" && s.candidate == "v2"
    });
    // (a quiet machine rolls back within a second: let the load reach 100 answers first)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while load.seen().total() < 100 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = load.stop();
    // Then the shadow check failed on the copies, and no user ever got an answer from v2
    let run = s
        .analysis
        .iter()
        .find(|c| c.check == "shadow")
        .expect("the shadow check ran");
    assert!(run.failures >= 1, "{run:?}");
    assert_eq!(run.passes, 0, "{run:?}");
    assert!(!seen.versions.contains_key("v2"), "{seen:?}");
    assert!(!seen.failed_by.contains_key("v2"), "{seen:?}");
    assert_eq!(seen.proxy_errors(), 0, "{seen:?}");
    // At least the 100 answers waited for above (a fast rollback ends the load at 100).
    assert!(
        seen.versions.get("v1").copied().unwrap_or(0) >= 100,
        "{seen:?}"
    );
    let plan = git(&world.remote.bare, &["show", "main:plans/web.yaml"]);
    assert!(plan.contains("artifact: v1"), "reverted:\n{plan}");
}

#[test]
fn a_header_route_and_a_mirror_through_the_data_plane_and_gone_after_promotion() {
    // Given a rollout paused at 20% with a header route and a 30% mirror
    let world = World::new(
        "[{ setHeaderRoute: { match: [{ header: X-Canary, value: \"1\" }] } }, { setMirror: { percent: 30 } }, { setWeight: 20 }, { pause: {} }, { setWeight: 100 }]",
    );
    let _daemon = world.daemon();
    world.wait("v1 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    world.roll_out("v2", false);
    world.wait("v2 paused at 20%", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Paused" && s.candidate == "v2" && s.weight == 20
    });
    let addr = world.addr();
    // When 1,000 requests carry the header, Then every one reaches the candidate
    let matching = versions(addr, 1000, &[("X-Canary", "1")]);
    assert_eq!(matching.get("v2"), Some(&1000), "{matching:?}");
    // And 1,000 others follow the weight (20% ± 3 points)
    let others = versions(addr, 1000, &[("X-Canary", "0")]);
    let to_v2 = others.get("v2").copied().unwrap_or(0);
    assert!((170..=230).contains(&to_v2), "{others:?}");
    // And 30% ± 3 of the stable-served ones were copied to the candidate, whose answers
    // no user saw (the copies are counted apart)
    let stable_served = others.get("v1").copied().unwrap_or(0) as u64;
    let mut copies = 0;
    for _ in 0..100 {
        copies = proxied(addr, "v2 shadow");
        if copies * 100 >= stable_served * 27 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        (stable_served * 27..=stable_served * 33).contains(&(copies * 100)),
        "{copies} copies of {stable_served} stable-served requests"
    );
    // When a human promotes
    git(
        &world.remote.human,
        &["pull", "-q", "--rebase", "origin", "main"],
    );
    git(
        &world.remote.human,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "Promote web\n\nRollgate-Command: promote\nRollgate-Plan: web",
        ],
    );
    git(&world.remote.human, &["push", "-q", "origin", "main"]);
    world.wait("v2 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v2"
    });
    // Then the header means nothing any more and nothing is mirrored
    let before = proxied(addr, "v2 shadow");
    let after = versions(addr, 50, &[("X-Canary", "1")]);
    assert_eq!(after.get("v2"), Some(&50), "{after:?}");
    assert_eq!(
        proxied(addr, "v2 shadow"),
        before,
        "no copies after promotion"
    );
}
