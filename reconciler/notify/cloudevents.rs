//! The `webhook` notifier: a CloudEvents 1.0 event in structured mode, signed.
//!
//! `type` is `dev.rollgate.rollout.<phase, lowercased>` (`…reverted` for a revert
//! commit), `source` is `rollgate/<repo>`, `id` the status commit's id (a receiver
//! deduplicates on it), `subject` the plan; the header `X-Rollgate-Signature:
//! sha256=<hex>` is the HMAC-SHA256 of the exact body under the signing key, as GitHub
//! signs its webhooks (`github::webhook::sign`).
//! Invariants: [`envelope`] and [`signature`] are pure; the key and URL are [`Secret`]s.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Event, Notifier, Post, Repo, Secret};
use crate::model::settings;

pub const SIGNATURE_HEADER: &str = "x-rollgate-signature";
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

#[derive(Debug)]
pub struct CloudEvents {
    pub settings: settings::Notifier,
    pub url: Secret,
    pub key: Secret,
    pub repo: Repo,
}

impl Notifier for CloudEvents {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.settings.selects(labels)
    }

    fn post(&self, event: &Event) -> Post {
        let body = envelope(event, &self.repo).to_string().into_bytes();
        Post {
            url: self.url.clone(),
            headers: vec![
                ("content-type", CONTENT_TYPE.to_owned()),
                (SIGNATURE_HEADER, signature(self.key.expose(), &body)),
            ],
            body,
        }
    }
}

/// `dev.rollgate.rollout.<phase lowercased>`.
pub fn event_type(e: &Event) -> String {
    format!("dev.rollgate.rollout.{}", e.phase.to_ascii_lowercase())
}

/// The structured-mode CloudEvent of one event.
pub fn envelope(e: &Event, repo: &Repo) -> Value {
    json!({
        "specversion": "1.0",
        "type": event_type(e),
        "source": format!("rollgate/{}", repo.name),
        "id": e.commit,
        "time": e.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "subject": e.plan,
        "datacontenttype": "application/json",
        "data": {
            "plan": e.plan,
            "phase": e.phase,
            "from": e.from,
            "candidate": e.candidate,
            "stable": e.stable,
            "weight": e.weight,
            "step": e.step,
            "reason": e.reason,
            "verdicts": e.verdicts,
            "commit": e.commit,
        },
    })
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `key`.
pub fn signature(key: &str, body: &[u8]) -> String {
    crate::github::webhook::sign(key.as_bytes(), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::sample;

    #[test]
    fn the_envelope_of_a_step() {
        let v = envelope(&sample(), &Repo::from_url("/srv/git/deploy.git"));
        insta::assert_snapshot!(serde_json::to_string_pretty(&v).unwrap_or_default());
    }

    #[test]
    fn type_source_id_follow_the_event() {
        let mut e = sample();
        e.phase = "RolledBack".to_owned();
        let v = envelope(&e, &Repo::from_url("https://github.com/acme/deploy"));
        assert_eq!(v["type"], "dev.rollgate.rollout.rolledback");
        assert_eq!(v["source"], "rollgate/acme/deploy");
        assert_eq!(v["id"], e.commit.as_str());
        assert_eq!(v["data"]["commit"], e.commit.as_str());
        assert_eq!(v["specversion"], "1.0");
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let n = CloudEvents {
            settings: settings::Notifier {
                name: "events".to_owned(),
                kind: settings::NotifierKind::Webhook {
                    url_env: "U".to_owned(),
                    signing_key_env: "K".to_owned(),
                },
                match_labels: BTreeMap::new(),
            },
            url: Secret::new("http://127.0.0.1:1/").unwrap_or_else(|| unreachable!()),
            key: Secret::new("k3y").unwrap_or_else(|| unreachable!()),
            repo: Repo::from_url("/r.git"),
        };
        let p = n.post(&sample());
        let sig = p
            .headers
            .iter()
            .find(|(h, _)| *h == SIGNATURE_HEADER)
            .map(|(_, v)| v.clone());
        assert_eq!(sig, Some(signature("k3y", &p.body)));
        assert!(crate::github::webhook::verify(
            b"k3y",
            &p.body,
            sig.as_deref()
        ));
        assert!(!format!("{n:?}").contains("k3y"));
    }
}
