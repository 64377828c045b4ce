//! Any bytes as a plan file and as `rollgate.yaml`: a value or diagnostics, never a
//! panic; every diagnostic names the file it was given and, when it has a place, a
//! line and column inside the text; every diagnostic renders (text and JSON).
//! A valid plan survives the restore commit's artifact edit (`replace_artifact`).
//!
//! Input: the file's bytes (non-UTF-8 is converted lossily, as a repository's bytes
//! would be refused earlier). Seeds: `tests/corpus` and `example-repo` (`fuzz/seed.sh`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rollgate::model::validate::{is_dns_label, parse_plan, parse_settings};
use rollgate::model::{Diagnostic, Settings, diagnostics};
use rollgate::writeback::messages::replace_artifact;

const SETTINGS_FILE: &str = "rollgate.yaml";

/// The corpus's shared settings: targets and sources for the plans to refer to.
fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| {
        parse_settings(
            SETTINGS_FILE,
            include_str!("../../tests/corpus/rollgate.yaml"),
        )
        .expect("tests/corpus/rollgate.yaml is valid")
    })
}

/// The lines of `text` as YAML counts them (`\r\n`, `\r` or `\n` end a line), with
/// their length in characters; a text ending in a break has an empty last line.
fn lines(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut len = 0;
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                out.push(len);
                len = 0;
            }
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push(len);
                len = 0;
            }
            _ => len += 1,
        }
    }
    out.push(len);
    out
}

fn check(file: &str, text: &str, diags: &[Diagnostic]) {
    assert!(!diags.is_empty(), "an error without a diagnostic");
    assert!(
        diags.iter().any(Diagnostic::is_error),
        "refused with warnings only: {diags:?}"
    );
    let lines = lines(text);
    for d in diags {
        assert_eq!(d.file, file, "{d}");
        if let Some(p) = d.pos {
            assert!(p.line >= 1 && p.col >= 1, "not 1-based: {d}");
            let Some(&len) = lines.get(p.line as usize - 1) else {
                panic!("line {} of {}: {d}", p.line, lines.len());
            };
            assert!(
                p.col as usize <= len + 1,
                "column {} of a line of {len} characters: {d}",
                p.col
            );
        }
        let shown = d.to_string();
        assert!(
            shown.starts_with(file) && shown.contains(&format!("[{}]: ", d.code)),
            "{shown}"
        );
        serde_json::to_string(d).expect("a diagnostic serialises");
    }
    let mut sorted = diags.to_vec();
    diagnostics::sort(&mut sorted);
}

/// The file a plan is read from is named after it (`metadata.name`), or the name check
/// would refuse every seed: the first `name:` of a plan is its metadata's.
fn plan_file(text: &str) -> String {
    let stem = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("name:"))
        .map(str::trim)
        .filter(|s| is_dns_label(s))
        .unwrap_or("fuzz");
    format!("plans/{stem}.yaml")
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let file = plan_file(&text);
    // With and without settings (`rollgate validate` of a lone plan), by the input's length.
    let with = (data.len() % 2 == 0).then(settings);
    match parse_plan(&file, &text, with) {
        Ok(parsed) => {
            assert_eq!(parsed.file, file);
            // The restore commit's edit keeps a valid plan valid, with the new artifact.
            if let Some(edited) = replace_artifact(&text, "7") {
                match parse_plan(&file, &edited, with) {
                    Ok(again) => assert_eq!(again.plan.artifact, "7"),
                    Err(diags) => panic!("the artifact edit broke a valid plan: {diags:?}"),
                }
            }
        }
        Err(diags) => {
            check(&file, &text, &diags);
            let _ = replace_artifact(&text, "reg/app@sha256:é€");
        }
    }
    match parse_settings(SETTINGS_FILE, &text) {
        Ok(_) => {}
        Err(diags) => check(SETTINGS_FILE, &text, &diags),
    }
});
