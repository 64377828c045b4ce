//! `spec.artifact` and `spec.promotedFrom`: what is rolled out, and where it was
//! promoted from.
//!
//! Invariants: pure; an artifact is one word (no spaces or control characters) of at
//! most 512 characters, and a Lambda artifact is a published version number (never
//! `$LATEST`); a plan is never promoted from itself. Whether the plan named by
//! `promotedFrom` exists needs every plan: that is `cross_plan::cross_check`'s.

use crate::model::diagnostics::Code;
use crate::model::wire;

use super::{Ctx, P, spec};

/// Check the artifact and `promotedFrom`; the artifact as it will be rolled out (trimmed).
pub(super) fn artifact<'w>(cx: &mut Ctx<'_>, w: &'w wire::PlanFile) -> &'w str {
    use P::K;
    let s = &w.spec;
    let artifact = s.artifact.trim();
    if artifact.is_empty()
        || artifact
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        || artifact.len() > 512
    {
        let why = if artifact.is_empty() {
            "is empty".to_owned()
        } else if artifact.len() > 512 {
            format!("is {} characters long", artifact.len())
        } else {
            "contains spaces or control characters".to_owned()
        };
        let shown: String = artifact.chars().take(80).collect();
        cx.err(&spec(&[K("artifact")]), Code::BadArtifact, format!("artifact `{shown}` {why}"))
            .help = Some("an artifact is one word of at most 512 characters: an image reference, a version or a path".to_owned());
    } else if matches!(s.workload, wire::Workload::Lambda(_))
        && !(artifact.chars().all(|c| c.is_ascii_digit())
            && artifact.parse::<u64>().is_ok_and(|v| v > 0))
    {
        let shown: String = artifact.chars().take(80).collect();
        cx.err(
            &spec(&[K("artifact")]),
            Code::BadArtifact,
            format!("a lambda artifact is a published version number, not `{shown}`"),
        )
        .help = Some("publish a version (`aws lambda publish-version`) and pin its number, e.g. `artifact: \"7\"`; `$LATEST` is never rolled out".to_owned());
    }
    if let Some(from) = &s.promoted_from {
        cx.name(from, "promotedFrom", &spec(&[K("promotedFrom")]));
        if *from == w.metadata.name {
            cx.err(
                &spec(&[K("promotedFrom")]),
                Code::UnknownPlan,
                "a plan cannot be promoted from itself",
            );
        }
    }
    artifact
}
