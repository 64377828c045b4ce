//! Checks that need every plan at once: a plan name used by two files, and a
//! `promotedFrom` naming a plan that does not exist.
//!
//! Invariants: pure; every file sharing a name is rejected (which one was meant is for
//! a human to say); each diagnostic points at the plan's own `metadata.name` or
//! `spec.promotedFrom`, as recorded when the plan was parsed.

use std::collections::BTreeMap;

use crate::model::diagnostics::{Code, Diagnostic, did_you_mean};

use super::ParsedPlan;

/// Checks that need every plan at once: duplicate names and `promotedFrom` references.
/// `plans` maps file path to the plan parsed from it.
pub fn cross_check(plans: &BTreeMap<String, &ParsedPlan>) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (file, p) in plans {
        by_name.entry(&p.plan.name).or_default().push(file);
    }
    for (name, files) in &by_name {
        if files.len() < 2 {
            continue;
        }
        // Every file with the name is rejected: which one was meant is for a human to say.
        for file in files {
            let others: Vec<&str> = files.iter().copied().filter(|f| f != file).collect();
            diags.push(
                Diagnostic::error(
                    *file,
                    plans[*file].name_pos,
                    Code::DuplicatePlan,
                    format!("plan name `{name}` is also used by {}", others.join(", ")),
                )
                .with_help("every plan needs a unique name"),
            );
        }
    }
    for (file, p) in plans {
        if let Some(from) = &p.plan.promoted_from
            && !by_name.contains_key(from.as_str())
        {
            let pos = p.promoted_from_pos;
            let hint = did_you_mean(from, by_name.keys().copied());
            let mut d = Diagnostic::error(
                file.clone(),
                pos,
                Code::UnknownPlan,
                format!("`promotedFrom` names plan `{from}`, which does not exist"),
            );
            if let Some(h) = hint {
                d = d.with_help(format!("did you mean `{h}`?"));
            }
            diags.push(d);
        }
    }
    diags
}
