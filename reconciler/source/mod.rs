//! Where plans come from: a directory on disk or a Git tree, read safely.
//!
//! Invariant: every file handed on is inside the repository, not behind a symlink,
//! and at most `MAX_FILE_BYTES` long; anything else becomes a diagnostic, not a read.

pub mod fs;
pub mod git;
pub mod remote;
pub mod watch;

use std::collections::BTreeMap;

use crate::model::Diagnostic;

/// The rollgate-relevant files of one revision of a repository.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `rollgate.yaml`, `plans/*.yaml`, `status/*.yaml`, `policies/*` by repo-relative path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Files that were refused (symlinks, too large, unreadable).
    pub refused: Vec<Diagnostic>,
}

impl Snapshot {
    pub fn plan_files(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.files.iter().filter(|(p, _)| is_plan_path(p))
    }

    pub fn status_files(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.files
            .iter()
            .filter(|(p, _)| p.starts_with("status/") && is_yaml(p))
    }
}

pub const SETTINGS_FILE: &str = "rollgate.yaml";

pub fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// `plans/<name>.yaml`, directly in `plans/`.
pub fn is_plan_path(path: &str) -> bool {
    path.strip_prefix("plans/")
        .is_some_and(|rest| !rest.contains('/') && is_yaml(rest))
}

/// `status/<name>.yaml`: a status file as the snapshot holds it.
pub fn is_status_path(path: &str) -> bool {
    path.strip_prefix("status/")
        .is_some_and(|rest| !rest.contains('/') && is_yaml(rest))
}
