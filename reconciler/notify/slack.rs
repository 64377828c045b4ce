//! The `slack` notifier: one Block Kit message per event, to an incoming webhook.
//!
//! Invariants: [`message`] is pure (the same event, the same message); every text from
//! Git (plan, artifacts, reasons, verdicts) is escaped for Slack's `mrkdwn` (`&`, `<`,
//! `>`; backticks inside the verdicts' code block too), so a trailer cannot forge a
//! link or a mention, nor close the code block; the webhook URL is a
//! [`Secret`] and appears nowhere but in the request.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Event, Notifier, Post, Repo, Secret};
use crate::model::settings;

#[derive(Debug)]
pub struct Slack {
    pub settings: settings::Notifier,
    pub url: Secret,
    pub repo: Repo,
}

impl Notifier for Slack {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.settings.selects(labels)
    }

    fn post(&self, event: &Event) -> Post {
        Post {
            url: self.url.clone(),
            headers: vec![("content-type", "application/json".to_owned())],
            body: message(event, &self.repo).to_string().into_bytes(),
        }
    }
}

/// `&`, `<` and `>` as Slack wants them in `mrkdwn` and `plain_text`.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Block Kit message for one event: a header, the facts as fields, the reason and
/// verdicts, and the commit (a link on GitHub).
pub fn message(e: &Event, repo: &Repo) -> Value {
    let plan = esc(&e.plan);
    let phase = esc(&e.phase);
    let headline = match (&e.step, e.weight) {
        (Some(step), Some(w)) if e.phase != super::REVERTED => {
            format!("{plan}: {phase} step {} at {w}%", esc(step))
        }
        _ => format!("{plan}: {phase}"),
    };
    let artifact = format!(
        "*Artifact*\n`{}` → `{}`",
        esc(e.stable.as_deref().unwrap_or("none")),
        esc(e.candidate.as_deref().unwrap_or("none"))
    );
    let phases = match &e.from {
        Some(from) => format!("*Phase*\n{} → {phase}", esc(from)),
        None => format!("*Phase*\n{phase}"),
    };
    let mut fields = vec![
        json!({ "type": "mrkdwn", "text": artifact }),
        json!({ "type": "mrkdwn", "text": phases }),
    ];
    if let Some(w) = e.weight {
        fields.push(json!({ "type": "mrkdwn", "text": format!("*Weight*\n{w}%") }));
    }
    if let Some(step) = &e.step {
        fields.push(json!({ "type": "mrkdwn", "text": format!("*Step*\n{}", esc(step)) }));
    }
    let mut blocks = vec![
        json!({ "type": "header", "text": { "type": "plain_text", "text": headline } }),
        json!({ "type": "section", "fields": fields }),
    ];
    let mut why = String::new();
    if let Some(r) = &e.reason {
        why.push_str(&esc(r));
    }
    if !e.verdicts.is_empty() {
        if !why.is_empty() {
            why.push('\n');
        }
        why.push_str("```");
        why.push_str(
            &e.verdicts
                .iter()
                // A backtick from Git must not close the code block.
                .map(|v| esc(v).replace('`', "'"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        why.push_str("```");
    }
    if !why.is_empty() {
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": why } }));
    }
    let short = &e.commit[..e.commit.len().min(12)];
    let commit = match repo.commit_link(&e.commit) {
        Some(link) => format!("commit <{link}|{short}> in {}", esc(&repo.name)),
        None => format!("commit `{short}` in {}", esc(&repo.name)),
    };
    blocks.push(json!({
        "type": "context",
        "elements": [ { "type": "mrkdwn", "text": commit } ]
    }));
    json!({ "text": headline, "blocks": blocks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::sample;

    #[test]
    fn the_block_kit_message_of_a_step_on_github() {
        let repo = Repo::from_url("https://github.com/acme/deploy.git");
        insta::assert_snapshot!(
            serde_json::to_string_pretty(&message(&sample(), &repo)).unwrap_or_default()
        );
    }

    #[test]
    fn a_revert_off_github_and_text_from_git_cannot_make_links() {
        let mut e = sample();
        e.phase = crate::notify::REVERTED.to_owned();
        e.from = None;
        e.step = None;
        e.weight = None;
        e.reason = Some("<!channel> failed & <https://evil|click>".to_owned());
        let m = message(&e, &Repo::from_url("/srv/git/deploy.git"));
        insta::assert_snapshot!(serde_json::to_string_pretty(&m).unwrap_or_default());
        assert!(!m.to_string().contains("<!channel>"));
        e.verdicts = vec!["fail x```<@U1>".to_owned()];
        let m = message(&e, &Repo::from_url("/srv/git/deploy.git")).to_string();
        assert!(m.contains("fail x'''&lt;@U1&gt;```"), "{m}");
    }

    #[test]
    fn the_url_is_the_secret_and_not_in_the_body() {
        let s = Slack {
            settings: settings::Notifier {
                name: "team-slack".to_owned(),
                kind: settings::NotifierKind::Slack {
                    webhook_url_env: "SLACK_WEBHOOK_URL".to_owned(),
                },
                match_labels: BTreeMap::new(),
            },
            url: Secret::new("https://hooks.slack.com/services/T/B/X").unwrap_or_else(|| {
                unreachable!("a non-empty secret");
            }),
            repo: Repo::from_url("/r.git"),
        };
        let p = s.post(&sample());
        assert!(!String::from_utf8_lossy(&p.body).contains("hooks.slack.com"));
        assert_eq!(format!("{s:?}").matches("hooks.slack").count(), 0);
    }
}
