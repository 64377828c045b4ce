//! The dashboard (#20) in a real headless Chromium, against the daemon of a real
//! rollout on the local target: live updates without a reload, one timeline mark per
//! verdict, hostile names and reasons shown as text. Screenshots land in
//! `target/tmp/browser-artifacts/`. Also `rollgate dashboard` and
//! `rollgate history --output svg` on the same repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rollgate::model::status::Phase;

use crate::support::free_port;
use crate::support::local::{BIN, Traffic, World};
use crate::support::webdriver::browser_or_skip;

/// Two 3 s analyses: `Progressing` lasts longer than the page's 2 s refresh, even on a busy machine.
const STEPS: &str = "[ { setWeight: 20 }, { analysis: { checks: [success-rate], duration: 3s } }, { setWeight: 50 }, { analysis: { checks: [success-rate], duration: 3s } }, { setWeight: 100 } ]";

const HOSTILE_NAME: &str = r#"<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>"#;
const HOSTILE_REASON: &str =
    r#"</td></tr><script>window.__xss=3</script><b onmouseover="window.__xss=4">"#;

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts")
}

/// A JavaScript string literal of `s`.
fn js_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn row_phase(plan: &str) -> String {
    format!(
        "const r = Array.from(document.querySelectorAll('tr.plan')).find(r => r.dataset.plan === {}); return r ? r.querySelector('td.phase').textContent + ' ' + r.textContent : null;",
        js_str(plan)
    )
}

/// The verdict lines of the plan's last rollout, as `rollgate history --output json` has them.
fn verdicts_of_last_rollout(bare: &Path, plan: &str) -> usize {
    let repo = rollgate::history::open(&bare.to_string_lossy()).expect("repo");
    let head = rollgate::history::resolve(&repo, Some("main")).expect("head");
    let entries = rollgate::history::collect(&repo, head, Some(plan)).expect("history");
    rollgate::timeline::for_plan(&entries, plan, None)
        .expect("a rollout")
        .verdicts
        .len()
}

/// A child process killed and reaped when dropped.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_dashboard_in_headless_chromium_follows_a_real_rollout_and_shows_hostile_text_as_text() {
    let Some(browser) = browser_or_skip(&artifacts()) else {
        return;
    };
    // Given a daemon serving its dashboard, with plan `web` rolled out at v1
    let w = World::new(STEPS);
    let listen = free_port();
    let _daemon = w.daemon_with(
        Path::new(BIN),
        &["--listen", &format!("127.0.0.1:{listen}"), "--dashboard"],
    );
    let base = format!("http://127.0.0.1:{listen}");
    w.wait("v1 to succeed", Duration::from_secs(60), |s| {
        s.phase == Phase::Succeeded && s.candidate == "v1"
    });
    browser.goto(&format!("{base}/"));
    browser.wait_for(
        "web Succeeded at v1",
        Duration::from_secs(30),
        &format!("const t = (() => {{ {} }})(); return t && t.startsWith('Succeeded') && t.includes('v1');", row_phase("web")),
    );
    browser.js("window.__sameDocument = 'kept'; return true;");

    // When a human rolls out v2, under real traffic
    let traffic = Traffic::start(w.addr(), 80);
    w.roll_out("v2", false);

    // Then the overview shows every phase change in place, without a reload
    browser.wait_for(
        "web Progressing",
        Duration::from_secs(60),
        &format!(
            "const t = (() => {{ {} }})(); return t && t.startsWith('Progressing');",
            row_phase("web")
        ),
    );
    browser.screenshot("overview-progressing");
    browser.wait_for(
        "web Succeeded at v2",
        Duration::from_secs(120),
        &format!("const t = (() => {{ {} }})(); return t && t.startsWith('Succeeded') && t.includes('v2');", row_phase("web")),
    );
    assert_eq!(
        browser.js("return window.__sameDocument || null;"),
        serde_json::json!("kept"),
        "the page reloaded"
    );
    browser.screenshot("overview");
    drop(traffic);

    // And the plan's page draws one mark per verdict of the rollout
    let verdicts = verdicts_of_last_rollout(&w.remote.bare, "web");
    assert!(verdicts >= 2, "two analyses judged: {verdicts}");
    browser.goto(&format!("{base}/plans/web"));
    let marks = browser.wait_for(
        "the timeline's verdict marks",
        Duration::from_secs(30),
        &format!("const n = document.querySelectorAll('figure.timeline svg g.verdict').length; return n === {verdicts} ? n : null;"),
    );
    assert_eq!(marks, serde_json::json!(verdicts));
    assert_eq!(
        browser
            .js("return document.querySelectorAll('figure.timeline svg g.verdict.pass').length;"),
        serde_json::json!(verdicts),
        "every verdict passed"
    );
    browser.screenshot("plan");

    // Given a plan named with markup, and a forged history entry with a hostile reason
    w.remote.human_commit(
        "plans/evil.yaml",
        |_| {
            format!(
                "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: '{HOSTILE_NAME}', labels: {{ team: '{HOSTILE_REASON}' }} }}\nspec: {{}}\n"
            )
        },
        "A plan with a hostile name",
    );
    w.remote.human_commit(
        "notes.txt",
        |_| "forged\n".to_owned(),
        &format!(
            "Forged trailers\n\nRollgate-Plan: {HOSTILE_NAME}\nRollgate-Phase: Held\nRollgate-Step: 1/2\nRollgate-Weight: 5\nRollgate-Verdict: fail {HOSTILE_REASON} value=1 n=1\nRollgate-Reason: {HOSTILE_REASON}"
        ),
    );
    // Then the overview lists it by its name, as text, and nothing ran
    browser.goto(&format!("{base}/"));
    let name = js_str(HOSTILE_NAME);
    browser.wait_for(
        "the hostile plan's row",
        Duration::from_secs(60),
        &format!("return Array.from(document.querySelectorAll('tr.plan a')).some(a => a.textContent === {name});"),
    );
    let clean = "return window.__xss === undefined && document.querySelectorAll('img, b, main script').length === 0 && document.scripts.length === 1;";
    assert_eq!(
        browser.js(clean),
        serde_json::json!(true),
        "markup from Git was parsed"
    );
    browser.screenshot("overview-hostile");
    // And its page shows the name and the reason as text
    browser.js(&format!(
        "Array.from(document.querySelectorAll('tr.plan a')).find(a => a.textContent === {name}).click(); return true;"
    ));
    browser.wait_for(
        "the hostile plan's page",
        Duration::from_secs(30),
        &format!("const h = document.querySelector('h1.plan-name'); return h && h.textContent === {name};"),
    );
    let reason = js_str(HOSTILE_REASON);
    assert_eq!(
        browser.js(&format!(
            "return Array.from(document.querySelectorAll('td.reason')).some(td => td.textContent.includes({reason}));"
        )),
        serde_json::json!(true),
        "the reason is shown as text"
    );
    assert_eq!(
        browser
            .js("return document.querySelectorAll('figure.timeline svg g.verdict.fail').length;"),
        serde_json::json!(1)
    );
    assert_eq!(
        browser.js(clean),
        serde_json::json!(true),
        "markup from Git was parsed"
    );
    browser.screenshot("plan-hostile");

    // And `rollgate history --output svg` draws the same picture from the remote alone
    let svg = artifacts().join("web.svg");
    let out = Command::new(BIN)
        .args(["history", "--repo"])
        .arg(&w.remote.bare)
        .args(["--output", "svg", "web", "--out"])
        .arg(&svg)
        .output()
        .expect("history runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).expect("the svg");
    let doc = roxmltree::Document::parse(&text).expect("XML");
    let marks = doc
        .descendants()
        .filter(|n| {
            n.attribute("class")
                .is_some_and(|c| c.starts_with("verdict "))
        })
        .count();
    assert_eq!(marks, verdicts);

    // And `rollgate dashboard` serves it from the repository alone, read-only
    let port = free_port();
    let _dashboard = Guard(
        Command::new(BIN)
            .args(["dashboard", "--repo"])
            .arg(&w.remote.bare)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rollgate dashboard starts"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let page = loop {
        match rollgate::targets::local::http_get(addr, "/", Duration::from_secs(2)) {
            Ok((200, body)) => break body,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("rollgate dashboard did not answer: {other:?}"),
        }
    };
    assert!(page.contains(r#"data-plan="web""#), "{page}");
    assert!(!page.contains("<script>window.__xss"), "{page}");
    let (code, svg) =
        rollgate::targets::local::http_get(addr, "/plans/web/timeline.svg", Duration::from_secs(5))
            .expect("the svg");
    assert_eq!(code, 200);
    assert!(svg.starts_with("<svg"), "{svg}");
}
