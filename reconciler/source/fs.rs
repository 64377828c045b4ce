//! Read a repository's working directory into a [`Snapshot`].
//!
//! Invariant: symlinks are never followed (not even inside the repo), file sizes are
//! checked before reading and reads are capped, so a hostile checkout cannot make
//! rollgate read `/etc/passwd` or a 5 GB file.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::{SETTINGS_FILE, Snapshot, is_yaml};
use crate::model::yaml::MAX_FILE_BYTES;
use crate::model::{Code, Diagnostic};

/// The folders rollgate reads, and which files in them.
/// Which file names a folder's reader takes.
type Wanted = fn(&str) -> bool;

const DIRS: &[(&str, Wanted)] = &[
    ("plans", is_yaml),
    ("status", is_yaml),
    ("policies", |p| {
        p.ends_with(".rego") || p.ends_with(".json") || is_yaml(p)
    }),
];

/// Read `rollgate.yaml`, `plans/`, `status/` (with its shard folders, `StatusLayout`) and
/// `policies/` (one level, no recursion).
pub fn read_dir(root: &Path) -> std::io::Result<Snapshot> {
    let meta = fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    let mut snap = Snapshot::default();
    read_one(root, SETTINGS_FILE, &mut snap);
    for (dir, wanted) in DIRS {
        let path = root.join(dir);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            snap.refused.push(
                Diagnostic::error(
                    *dir,
                    None,
                    Code::UnsafePath,
                    format!("refusing to read `{dir}/` through a symlink"),
                )
                .with_help("commit the folder itself; rollgate never reads through links"),
            );
            continue;
        }
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        let mut shards = Vec::new();
        for name in names {
            if wanted(&name) {
                read_one(root, &format!("{dir}/{name}"), &mut snap);
            } else if *dir == "status" && super::is_shard_folder(&name) {
                shards.push(name);
            }
        }
        // A status file in its shard folder (`StatusLayout::Sharded`) wins over a flat one.
        for hh in shards {
            let folder = path.join(&hh);
            if fs::symlink_metadata(&folder).is_ok_and(|m| !m.is_dir()) {
                continue; // a symlink or a file named like a shard folder: not read
            }
            let Ok(entries) = fs::read_dir(&folder) else {
                continue;
            };
            let mut files: Vec<String> = entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_yaml(n) && super::status_shard(n) == hh)
                .collect();
            files.sort();
            for name in files {
                let logical = format!("status/{name}");
                let mut one = Snapshot::default();
                read_one(root, &format!("status/{hh}/{name}"), &mut one);
                if let Some(bytes) = one.files.into_values().next() {
                    snap.refused.retain(|d| d.file != logical);
                    snap.files.insert(logical.clone(), bytes);
                    snap.sharded.insert(logical);
                }
                snap.refused.extend(one.refused);
            }
        }
    }
    Ok(snap)
}

fn read_one(root: &Path, rel: &str, snap: &mut Snapshot) {
    let path = root.join(rel);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            snap.refused.push(Diagnostic::error(
                rel,
                None,
                Code::Io,
                format!("cannot read: {e}"),
            ));
            return;
        }
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(&path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        snap.refused.push(
            Diagnostic::error(
                rel,
                None,
                Code::UnsafePath,
                format!("refusing to follow a symlink (to `{target}`)"),
            )
            .with_help("commit the file itself; rollgate never reads through links"),
        );
        return;
    }
    if meta.is_dir() {
        snap.refused.push(Diagnostic::error(
            rel,
            None,
            Code::Io,
            "is a folder, not a file",
        ));
        return;
    }
    if !meta.is_file() {
        return;
    }
    if meta.len() > MAX_FILE_BYTES as u64 {
        snap.refused.push(Diagnostic::error(
            rel,
            None,
            Code::InputLimit,
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES}",
                meta.len()
            ),
        ));
        return;
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    match fs::File::open(&path)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf))
    {
        Ok(n) if n > MAX_FILE_BYTES => {
            snap.refused.push(Diagnostic::error(
                rel,
                None,
                Code::InputLimit,
                format!("file is over the limit of {MAX_FILE_BYTES} bytes"),
            ));
        }
        Ok(_) => {
            snap.files.insert(rel.to_owned(), buf);
        }
        Err(e) => snap.refused.push(Diagnostic::error(
            rel,
            None,
            Code::Io,
            format!("cannot read: {e}"),
        )),
    }
}
