//! Where plans come from: a directory on disk or a Git tree, read safely.
//!
//! Invariant: every file handed on is inside the repository, not behind a symlink,
//! and at most `MAX_FILE_BYTES` long; anything else becomes a diagnostic, not a read.

pub mod fs;
pub mod git;
pub mod path_remote;
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
    /// The status files (by logical path) stored in their shard folder
    /// (`status/<hh>/<plan>.yaml`); the others in `files` are stored flat.
    pub sharded: std::collections::BTreeSet<String>,
}

impl Snapshot {
    pub fn plan_files(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.files
            .range::<str, _>(prefixed("plans/", "plans0"))
            .filter(|(p, _)| is_plan_path(p))
    }

    pub fn status_files(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.files
            .range::<str, _>(prefixed("status/", "status0"))
            .filter(|(p, _)| is_yaml(p))
    }

    /// How many status files are not stored as `sharded` says (`true`: in shard
    /// folders). Both lists are in path order: one walk over both, no look-up per file
    /// (10,000 look-ups were 1.7 ms of every new head's reaction, #21).
    pub fn misplaced_status(&self, sharded: bool) -> usize {
        let mut stored = self.sharded.iter().peekable();
        let mut misplaced = 0;
        for (path, _) in self.status_files() {
            while stored.next_if(|s| s.as_str() < path.as_str()).is_some() {}
            let in_shard = stored.next_if(|s| *s == path).is_some();
            if in_shard != sharded {
                misplaced += 1;
            }
        }
        misplaced
    }
}

/// The keys from `from` (a folder, ending in `/`) up to `to`, the same name with `0`,
/// the byte after `/`: every key in the folder, and no other.
fn prefixed(
    from: &'static str,
    to: &'static str,
) -> (std::ops::Bound<&'static str>, std::ops::Bound<&'static str>) {
    (
        std::ops::Bound::Included(from),
        std::ops::Bound::Excluded(to),
    )
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

/// `status/<name>.yaml`: a status file as the snapshot holds it (its logical path,
/// whichever layout the repository stores it in: [`StatusLayout`]).
pub fn is_status_path(path: &str) -> bool {
    path.strip_prefix("status/")
        .is_some_and(|rest| !rest.contains('/') && is_yaml(rest))
}

pub use crate::model::settings::StatusLayout;

/// Status paths by layout (the type is the setting `writeBack.statusLayout`).
impl StatusLayout {
    /// Where the status file with the logical path `logical` is stored in this layout
    /// (`logical` itself when it is not a status path).
    pub fn physical(self, logical: &str) -> String {
        match (self, logical.strip_prefix("status/")) {
            (Self::Sharded, Some(file)) if is_status_path(logical) => {
                format!("status/{}/{file}", status_shard(file))
            }
            _ => logical.to_owned(),
        }
    }

    /// The other layout.
    pub fn other(self) -> Self {
        match self {
            Self::Flat => Self::Sharded,
            Self::Sharded => Self::Flat,
        }
    }
}

/// The shard folder of a status file: FNV-1a 64 of its file name (`<plan>.yaml`) modulo
/// 256, as two lowercase hex digits. Stable across builds and releases: it is part of
/// the repository format.
pub fn status_shard(file: &str) -> String {
    // The same stable hash that spreads plans over replicas (`run --shards`).
    format!("{:02x}", crate::leader::shards::shard_of(file, 256))
}

/// Whether `name` is a shard folder's name (two lowercase hex digits).
pub fn is_shard_folder(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The logical path of a status file stored at `physical`: `status/<hh>/<file>` is
/// `status/<file>` when `hh` is the file's own shard; any other path is its own.
pub fn logical_status_path(physical: &str) -> std::borrow::Cow<'_, str> {
    if let Some(rest) = physical.strip_prefix("status/")
        && let Some((hh, file)) = rest.split_once('/')
        && is_shard_folder(hh)
        && !file.contains('/')
        && is_yaml(file)
        && status_shard(file) == hh
    {
        return std::borrow::Cow::Owned(format!("status/{file}"));
    }
    std::borrow::Cow::Borrowed(physical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_of_a_status_file_is_part_of_the_repository_format_and_never_changes() {
        // FNV-1a 64 of the file name, modulo 256: these must hold in every release, or a
        // repository written by one would not be read by the next.
        for (file, hh) in [
            ("web.yaml", "f6"),
            ("checkout.yaml", "8e"),
            ("svc-00000.yaml", "29"),
            ("a.yaml", "65"),
        ] {
            assert_eq!(status_shard(file), hh, "{file}");
        }
    }

    #[test]
    fn status_paths_map_between_their_logical_and_stored_places() {
        let s = StatusLayout::Sharded;
        assert_eq!(s.physical("status/web.yaml"), "status/f6/web.yaml");
        assert_eq!(
            StatusLayout::Flat.physical("status/web.yaml"),
            "status/web.yaml"
        );
        // Only status files move.
        for other in [
            "plans/web.yaml",
            "rollgate.yaml",
            "status/f6/web.yaml",
            "status/x.txt",
        ] {
            assert_eq!(s.physical(other), other);
        }
        assert_eq!(logical_status_path("status/f6/web.yaml"), "status/web.yaml");
        // Not its own shard, not a shard folder, too deep, not YAML: left as they are
        // (and so never read as a status).
        for kept in [
            "status/00/web.yaml",
            "status/F6/web.yaml",
            "status/f6/x/web.yaml",
            "status/f6/web.txt",
            "status/web.yaml",
            "plans/f6/web.yaml",
        ] {
            assert_eq!(logical_status_path(kept), kept);
        }
        assert!(is_shard_folder("0a") && !is_shard_folder("0A") && !is_shard_folder("abc"));
        assert_eq!(s.other(), StatusLayout::Flat);
    }

    #[test]
    fn misplaced_status_files_are_counted_by_one_walk_as_a_lookup_per_file_counts_them() {
        let mut snap = Snapshot::default();
        for p in [
            "plans/a.yaml",
            "status/a.yaml",
            "status/b.yaml",
            "status/b.yaml.txt",
            "status/c.yaml",
            "status0.yaml",
            "statut/a.yaml",
        ] {
            snap.files.insert(p.to_owned(), Vec::new());
        }
        let files: Vec<&str> = snap.status_files().map(|(p, _)| p.as_str()).collect();
        assert_eq!(files, ["status/a.yaml", "status/b.yaml", "status/c.yaml"]);
        let plans: Vec<&str> = snap.plan_files().map(|(p, _)| p.as_str()).collect();
        assert_eq!(plans, ["plans/a.yaml"]);
        // Stored in shards: b, and a path the snapshot no longer has (before and after
        // the files, and between them).
        for p in [
            "status/0.yaml",
            "status/b.yaml",
            "status/bb.yaml",
            "status/z.yaml",
        ] {
            snap.sharded.insert(p.to_owned());
        }
        let by_lookup = |sharded: bool| {
            snap.status_files()
                .filter(|(p, _)| snap.sharded.contains(*p) != sharded)
                .count()
        };
        assert_eq!(snap.misplaced_status(true), 2);
        assert_eq!(snap.misplaced_status(false), 1);
        for sharded in [true, false] {
            assert_eq!(snap.misplaced_status(sharded), by_lookup(sharded));
        }
    }
}
