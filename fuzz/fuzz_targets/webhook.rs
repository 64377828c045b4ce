//! The webhook receiver's pure half under hostile deliveries: `verify` agrees with an
//! HMAC-SHA256 computed here (the right signature always verifies, any other never);
//! `parse` and `parse_comment` are total and keep their bounds; delivery ids are
//! checked before they are stored.
//!
//! Input, one field a line, the rest of the bytes the body (an empty signature line
//! stands for the right signature):
//! ```text
//! <X-GitHub-Event>\n<X-GitHub-Delivery>\n<X-Hub-Signature-256>\n<secret>\n<body>
//! ```
//! Seeds: the real payloads in `../shared/data/github-webhooks` (`fuzz/seed.sh`).
#![no_main]

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use rollgate::github::webhook::{self, Deliveries, Event, ParseError};
use rollgate::model::validate::is_dns_label;
use sha2::Sha256;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits off the first line (without its `\n`); the whole rest when there is none.
fn field(data: &mut &[u8]) -> Vec<u8> {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let f = data[..i].to_vec();
            *data = &data[i + 1..];
            f
        }
        None => std::mem::take(data).to_vec(),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_comment(body: &str) {
    match webhook::parse_comment(body) {
        None => {}
        Some(Ok(c)) => assert!(is_dns_label(&c.plan), "{c:?}"),
        // quoted back to the commenter: no control characters, no way out of the backticks
        Some(Err(why)) => assert!(
            !why.chars().any(char::is_control) && why.matches('`').count() % 2 == 0,
            "{why:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let event = lossy(&field(&mut rest));
    let delivery = lossy(&field(&mut rest));
    let signature = lossy(&field(&mut rest));
    let secret = field(&mut rest);
    let body = rest;

    // The signature: rollgate's against one computed here.
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).expect("any key length");
    mac.update(body);
    let right = hex(&mac.finalize().into_bytes());
    let signed = webhook::sign(&secret, body);
    assert_eq!(signed, format!("sha256={right}"));
    assert!(webhook::verify(&secret, body, Some(&signed)));
    assert!(webhook::verify(
        &secret,
        body,
        Some(&format!(" sha256={}\t", right.to_uppercase()))
    ));
    assert!(!webhook::verify(&secret, body, None));
    if !signature.is_empty() {
        let expected = signature
            .trim()
            .strip_prefix("sha256=")
            .is_some_and(|h| h.eq_ignore_ascii_case(&right));
        assert_eq!(
            webhook::verify(&secret, body, Some(&signature)),
            expected,
            "{signature:?} against sha256={right}"
        );
    }
    // A different body or secret never verifies with this signature (a secret with a
    // NUL appended would: HMAC pads short keys with zeros).
    let mut other = body.to_vec();
    other.push(b' ');
    assert!(!webhook::verify(&secret, &other, Some(&signed)));
    let mut other_secret = secret.clone();
    other_secret.push(b'x');
    assert!(!webhook::verify(&other_secret, body, Some(&signed)));

    // The delivery id: stored only when it looks like a GUID; a replay is not new.
    if webhook::valid_delivery_id(&delivery) {
        assert!(delivery.len() <= 64 && delivery.bytes().all(|b| b.is_ascii_graphic()));
        let mut seen = Deliveries::new(2, Duration::from_secs(60));
        let now = Instant::now();
        assert!(seen.first_time(&delivery, now));
        assert!(!seen.first_time(&delivery, now));
    }

    // The body: an event or an error, within bounds.
    match webhook::parse(&event, body) {
        Ok(Event::Ping) => assert_eq!(event, "ping"),
        Ok(Event::Push(_)) => assert_eq!(event, "push"),
        Ok(Event::PullRequest(pr)) => {
            assert_eq!(event, "pull_request");
            assert!(webhook::is_sha(&pr.head_sha), "{pr:?}");
            assert!(pr.labels.len() <= webhook::MAX_LABELS);
            assert!(pr.labels.iter().all(|l| l.chars().count() <= 100));
        }
        Ok(Event::Comment(c)) => {
            assert_eq!(event, "issue_comment");
            check_comment(&c.body);
        }
        Ok(Event::Ignored { event: e, action }) => {
            assert!(e.chars().count() <= 64);
            assert!(action.is_none_or(|a| a.chars().count() <= 64));
        }
        Err(e) => {
            let shown = e.to_string();
            if let ParseError::Shape { event: e, .. } = &e {
                assert_eq!(*e, event, "{shown}");
            }
        }
    }
    check_comment(&lossy(body));
});
