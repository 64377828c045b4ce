//! Many file edits applied to a tree in one walk: each directory on the way is rebuilt
//! once, however many of its files change, so a batch commit of 1,000 status files
//! writes one `status/` tree instead of 1,000 (`put_file` once per edit would copy the
//! whole folder for every file).
//!
//! Invariant: the result is the tree `put_file` gives when called for each edit in
//! order (a later edit of the same path wins; a folder left empty is removed).

use std::collections::BTreeMap;

use anyhow::Result;
use git2::{ObjectType, Oid, Repository};

use super::Edit;

/// One edit as the walk sees it: the path below the folder walked, and the content.
type Item<'a> = (&'a str, Option<&'a [u8]>);

/// Apply `edits` to the tree `root`; the new tree's id.
pub fn put_files(repo: &Repository, root: Oid, edits: &[Edit]) -> Result<Oid> {
    let items: Vec<Item<'_>> = edits
        .iter()
        .map(|e| (e.path.as_str(), e.content.as_deref()))
        .collect();
    put_many(repo, Some(root), &items)
}

fn put_many(repo: &Repository, root: Option<Oid>, items: &[Item<'_>]) -> Result<Oid> {
    let tree = root.map(|r| repo.find_tree(r)).transpose()?;
    let mut builder = repo.treebuilder(tree.as_ref())?;
    // Edits below a folder, by folder, in order; files of this folder at once.
    let mut below: BTreeMap<&str, Vec<Item<'_>>> = BTreeMap::new();
    for &(path, content) in items {
        match path.split_once('/') {
            Some((head, rest)) => below.entry(head).or_default().push((rest, content)),
            None => {
                // A file edit after edits below a folder of the same name replaces it.
                below.remove(path);
                match content {
                    Some(bytes) => {
                        let blob = repo.blob(bytes)?;
                        builder.insert(path, blob, 0o100644)?;
                    }
                    None => {
                        if builder.get(path)?.is_some() {
                            builder.remove(path)?;
                        }
                    }
                }
            }
        }
    }
    for (head, sub_items) in below {
        let sub = match builder.get(head)? {
            Some(e) if e.kind() == Some(ObjectType::Tree) => Some(e.id()),
            _ => None,
        };
        let new_sub = put_many(repo, sub, &sub_items)?;
        if repo.find_tree(new_sub)?.is_empty() {
            if builder.get(head)?.is_some() {
                builder.remove(head)?;
            }
        } else {
            builder.insert(head, new_sub, 0o040000)?;
        }
    }
    Ok(builder.write()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writeback::put_file;

    fn edit(path: &str, content: Option<&str>) -> Edit {
        Edit {
            path: path.to_owned(),
            content: content.map(|c| c.as_bytes().to_vec()),
        }
    }

    #[test]
    fn many_edits_in_one_walk_make_the_tree_one_edit_at_a_time_makes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = Repository::init_bare(dir.path()).expect("repo");
        let mut root = repo
            .treebuilder(None)
            .expect("builder")
            .write()
            .expect("empty");
        for e in [
            edit("status/a.yaml", Some("a1")),
            edit("status/b.yaml", Some("b1")),
            edit("plans/a.yaml", Some("p")),
            edit("gone/only.yaml", Some("x")),
            edit("README", Some("r")),
        ] {
            root = put_file(&repo, root, &e.path, e.content.as_deref()).expect("seed");
        }
        let edits = vec![
            edit("status/a.yaml", Some("a2")),
            edit("status/c.yaml", Some("c1")),
            edit("status/b.yaml", None),
            edit("gone/only.yaml", None),
            edit("deep/er/x.yaml", Some("x")),
            edit("status/c.yaml", Some("c2")),
            edit("README", None),
        ];
        let mut one_by_one = root;
        for e in &edits {
            one_by_one = put_file(&repo, one_by_one, &e.path, e.content.as_deref()).expect("put");
        }
        assert_eq!(
            put_files(&repo, root, &edits).expect("put_files"),
            one_by_one
        );
        // Nothing to do: the same tree.
        assert_eq!(put_files(&repo, root, &[]).expect("none"), root);
    }
}
