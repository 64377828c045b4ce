//! From text to validated domain values, collecting every problem.
//!
//! Three passes, each reporting all it finds: YAML (syntax and budgets), structure
//! (the JSON Schema of the wire types: unknown fields, missing fields, types, kinds),
//! then meaning (weights, durations, names, references, cron, judges). A later pass
//! runs only when the earlier ones left something to look at; unknown fields do not
//! stop the meaning pass, so one run shows as much as it can.
//! Invariant: pure; the caller reads files and passes their text.
//!
//! The meaning pass has one validator per concern (one file each); `plan_from_wire`
//! calls them in this order, and each reports all it finds and returns a value (a
//! stand-in for a bad one) so the next still runs. `parse_plan` sorts a plan's
//! diagnostics by place; `parse_settings` returns them in the order found.
//!
//! ```text
//!   header, name ─> workload (target, workload) ─> artifact (artifact, promotedFrom)
//!     ─> checks (checks, judges) ─> strategy (steps, blue-green, presets) ─> windows
//!     ─> rollback (rollback, progressDeadline, firstRollout) ─> checks (slo, minSamples)
//! ```
//!
//! `settings` validates `rollgate.yaml` the same way; `cross_plan` runs over every
//! parsed plan at once. This file holds what they share: the context that collects
//! diagnostics and finds their places (`Ctx`), the first two passes (`structured`),
//! and the entry points.

mod artifact;
mod checks;
mod cross_plan;
#[cfg(test)]
mod job_tests;
mod jobs;
mod rollback;
mod settings;
mod strategy;
#[cfg(test)]
mod tests;
mod windows;
mod workload;

use std::time::Duration;

use serde_json::Value;

use super::diagnostics::{Code, Diagnostic, Pos, did_you_mean};
use super::duration;
use super::plan::Plan;
use super::schema::plan_schema;
use super::schema_check;
use super::settings::Settings;
use super::wire;
use super::yaml::{self, Kind, Node, PathSeg};

pub use checks::BUILTIN_QUERIES;
pub use cross_plan::cross_check;
pub use settings::{is_reserved_secret, parse_settings};
pub use strategy::expand_preset;

/// Is `s` shaped like an AWS region (`eu-west-1`, `us-gov-east-1`, `ap-southeast-3`)?
pub fn is_aws_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok_and(|n| n > 0)
}

/// Is `s` an RFC 1123 DNS label (lowercase alphanumerics and `-`, at most 63)?
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A plan that passed every check. Its document as written (what policies see as
/// `input.plan`) is not kept here: [`parse_plan_document`] gives it beside the plan, and
/// [`plan_document`] makes it again from the file.
#[derive(Debug, Clone)]
pub struct ParsedPlan {
    /// The repo-relative path the plan was read from.
    pub file: String,
    pub plan: Plan,
    /// Where `metadata.name` is (policy findings point here).
    pub name_pos: Option<Pos>,
    /// Where `spec.promotedFrom` is, when present.
    pub promoted_from_pos: Option<Pos>,
}

struct Ctx<'a> {
    file: &'a str,
    root: &'a Node,
    diags: Vec<Diagnostic>,
}

#[derive(Clone, Copy)]
enum P<'a> {
    K(&'a str),
    I(usize),
}

impl<'a> Ctx<'a> {
    fn pos(&self, path: &[P<'_>]) -> Option<Pos> {
        // The deepest node on the path that exists.
        let segs: Vec<PathSeg<'_>> = path
            .iter()
            .map(|p| match p {
                P::K(k) => PathSeg::Key(k),
                P::I(i) => PathSeg::Index(*i),
            })
            .collect();
        // The deepest node on the path that exists; a mapping's place is its key's
        // (the value of `local:` starts at its first field, which would mislead).
        (0..=segs.len()).rev().find_map(|n| {
            let node = self.root.at(&segs[..n])?;
            if let (Kind::Map(_), Some(PathSeg::Key(k)), Some(parent)) = (
                &node.kind,
                segs[..n].last(),
                n.checked_sub(1).and_then(|m| self.root.at(&segs[..m])),
            ) && let Kind::Map(entries) = &parent.kind
                && let Some((key, _)) = entries.iter().find(|(key, _)| key.as_str() == Some(k))
            {
                return Some(key.pos);
            }
            Some(node.pos)
        })
    }

    fn err(&mut self, path: &[P<'_>], code: Code, msg: impl Into<String>) -> &mut Diagnostic {
        let pos = self.pos(path);
        self.diags
            .push(Diagnostic::error(self.file, pos, code, msg));
        let n = self.diags.len() - 1;
        &mut self.diags[n]
    }

    fn dur(&mut self, text: Option<&str>, default: Duration, path: &[P<'_>]) -> Duration {
        match text {
            None => default,
            Some(t) => match duration::parse(t) {
                Some(d) => d,
                None => {
                    self.err(path, Code::BadDuration, format!("`{t}` is not a duration"))
                        .help = Some(
                        "write a number and a unit: `500ms`, `30s`, `10m`, `1h`, `1h30m`"
                            .to_owned(),
                    );
                    default
                }
            },
        }
    }

    /// `apiVersion` and `kind` of a file that must be `kind: expected`.
    fn header(&mut self, api_version: &str, kind: &str, expected: &str, what: &str) {
        if api_version != wire::API_VERSION {
            self.err(
                &[P::K("apiVersion")],
                Code::UnknownApiVersion,
                format!("unknown apiVersion `{api_version}`"),
            )
            .help = Some(format!("use `{}`", wire::API_VERSION));
        }
        if kind != expected {
            let hint = did_you_mean(kind, [expected]);
            self.err(
                &[P::K("kind")],
                Code::UnknownKind,
                format!("unknown kind `{kind}` in {what}"),
            )
            .help = Some(hint.map_or_else(
                || format!("{what} has `kind: {expected}`"),
                |h| format!("did you mean `{h}`?"),
            ));
        }
    }

    fn name(&mut self, s: &str, what: &str, path: &[P<'_>]) {
        if !is_dns_label(s) {
            self.err(path, Code::BadName, format!("{what} `{s}` is not a DNS label"))
                .help = Some("use at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit".to_owned());
        }
    }
}

/// A document that passed the YAML and structure passes.
struct Structured<T> {
    root: Node,
    json: Value,
    wire: T,
    /// Unknown fields (reported, then dropped): the meaning pass still runs.
    diags: Vec<Diagnostic>,
}

/// YAML, then the schema walk, then the wire type: the passes plans and settings share.
fn structured<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
    schema: &Value,
) -> Result<Structured<T>, Vec<Diagnostic>> {
    let root = yaml::parse(file, text).map_err(|d| vec![d])?;
    let (json, mut diags) = schema_check::check(file, &root, schema);
    let Some(json) = json else { return Err(diags) };
    match T::deserialize(&json) {
        Ok(wire) => Ok(Structured {
            root,
            json,
            wire,
            diags,
        }),
        Err(e) => {
            diags.push(Diagnostic::error(
                file,
                Some(root.pos),
                Code::WrongType,
                e.to_string(),
            ));
            Err(diags)
        }
    }
}

/// Parse and validate one plan file. `file` is the path shown in diagnostics (relative
/// to the repo); its stem must equal `metadata.name`. `settings` resolves targets and
/// metrics sources; without settings those references are not checked.
pub fn parse_plan(
    file: &str,
    text: &str,
    settings: Option<&Settings>,
) -> Result<ParsedPlan, Vec<Diagnostic>> {
    parse_plan_document(file, text, settings).map(|(plan, _)| plan)
}

/// The plan file as policies see it (`input.plan`): the document after the YAML and
/// schema passes, as [`parse_plan_document`] gives it; `None` when those passes fail.
pub fn plan_document(file: &str, text: &str) -> Option<Value> {
    let root = yaml::parse(file, text).ok()?;
    schema_check::check(file, &root, plan_schema()).0
}

/// [`parse_plan`], and the plan file as a document (`input.plan`). The document is
/// not part of [`ParsedPlan`]: a plan's parse lives as long as its file is unchanged,
/// its document is needed only until its policies ran (kept, documents were over a
/// third of the daemon's heap, #21).
pub fn parse_plan_document(
    file: &str,
    text: &str,
    settings: Option<&Settings>,
) -> Result<(ParsedPlan, Value), Vec<Diagnostic>> {
    let Structured {
        root,
        json,
        wire,
        diags,
    } = structured::<wire::PlanFile>(file, text, plan_schema())?;
    let mut cx = Ctx {
        file,
        root: &root,
        diags,
    };
    let plan = plan_from_wire(&mut cx, &wire, settings);
    let stem = std::path::Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    if !stem.is_empty() && stem != wire.metadata.name && is_dns_label(&wire.metadata.name) {
        cx.err(
            &[P::K("metadata"), P::K("name")],
            Code::NameMismatch,
            format!("plan `{}` is in a file named `{stem}`", wire.metadata.name),
        )
        .help = Some(format!(
            "rename the file to `{}.yaml` or the plan to `{stem}`",
            wire.metadata.name
        ));
    }
    if cx.diags.iter().any(Diagnostic::is_error) {
        let mut d = cx.diags;
        super::diagnostics::sort(&mut d);
        return Err(d);
    }
    let name_pos = root
        .at(&[PathSeg::Key("metadata"), PathSeg::Key("name")])
        .map(|n| n.pos);
    let promoted_from_pos = root
        .at(&[PathSeg::Key("spec"), PathSeg::Key("promotedFrom")])
        .map(|n| n.pos);
    let parsed = ParsedPlan {
        file: file.to_owned(),
        plan,
        name_pos,
        promoted_from_pos,
    };
    Ok((parsed, json))
}

/// A path under `spec`.
fn spec(rest: &[P<'static>]) -> Vec<P<'static>> {
    let mut v = vec![P::K("spec")];
    v.extend_from_slice(rest);
    v
}

/// The meaning pass of a plan: each section's validator, in order (see the module
/// header); every one reports what it finds and returns a value, so all of them run.
fn plan_from_wire(cx: &mut Ctx<'_>, w: &wire::PlanFile, settings: Option<&Settings>) -> Plan {
    use P::K;
    cx.header(&w.api_version, &w.kind, "RolloutPlan", "a plan file");
    cx.name(&w.metadata.name, "plan name", &[K("metadata"), K("name")]);
    let s = &w.spec;
    let workload = workload::workload(cx, s, settings);
    let artifact = artifact::artifact(cx, w);
    let (checks, jobs) = checks::checks(cx, s, settings);
    let hooks = jobs::hooks(cx, s);
    let strategy = strategy::strategy(cx, s, &workload);
    let windows = windows::windows(cx, s);
    let rollback = rollback::rollback(cx, s);
    let progress_deadline = rollback::progress_deadline(cx, s);
    let first_rollout = rollback::first_rollout(cx, s);
    let slo = checks::slo(cx, s, settings);
    let min_samples = checks::min_samples(cx, s);

    Plan {
        name: w.metadata.name.clone(),
        labels: w.metadata.labels.clone(),
        annotations: w.metadata.annotations.clone(),
        target: s.target.clone(),
        workload,
        artifact: artifact.to_owned(),
        promoted_from: s.promoted_from.clone(),
        strategy,
        checks,
        jobs,
        hooks,
        min_samples,
        windows,
        rollback,
        progress_deadline,
        slo,
        first_rollout,
    }
}
