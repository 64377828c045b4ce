//! File edits applied to a tree by rewriting only the trees on the changed paths.
//!
//! ```text
//!   root ─▶ status/ (10,000 entries) ─▶ status/checkout.yaml
//!    new      entries merged in raw       new blob
//! ```
//! A status commit changes one file; a batch commit (a mass change) a thousand in one
//! folder. Each folder on a changed path is rewritten once, by merging its changed
//! entries into its raw bytes: no tree builder that parses, hashes, sorts and
//! re-serialises 10,000 entries per folder, and no look at a folder no edit touches.
//! The raw bytes of the large trees read or written last are kept in memory by id, so
//! the next commit on the `status/` folder starts from them without reading the
//! object database.
//!
//! Invariants:
//! - the result is the tree libgit2's tree builder gives when the edits are made one
//!   at a time in order (a later edit of the same path wins; a file replaces a folder of
//!   the same name and the other way round; a folder left empty is removed; entries in
//!   Git's order, a folder's name compared as if it ended in `/`);
//! - nothing changed, nothing written: the same id comes back;
//! - the cache is keyed by tree id, which names the content, so it can never hand out
//!   stale bytes, whatever repository asks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use git2::{ObjectType, Odb, Oid, Repository};

use super::Edit;
use super::pack::Pending;

const MODE_BLOB: &[u8] = b"100644";
const MODE_TREE: &[u8] = b"40000";

/// Trees at least this large are kept in memory (small ones are cheap to read).
const CACHE_MIN_BYTES: usize = 16 * 1024;
/// How many large trees are kept: the folders status commits write (`status/`, and
/// `plans/` for a restore), in a version or two, with room for a second repository.
const CACHE_ENTRIES: usize = 8;

/// Raw tree objects by id, most recently used last.
static CACHE: Mutex<Vec<(Oid, Arc<Vec<u8>>)>> = Mutex::new(Vec::new());

/// Apply `edits` (in order) to the tree `root`; the new tree's id.
pub fn put_files(repo: &Repository, root: Oid, edits: &[Edit]) -> Result<Oid> {
    let odb = repo.odb()?;
    put_into(
        &mut Store {
            odb: &odb,
            pack: None,
        },
        root,
        edits,
    )
}

/// [`put_files`], its new objects written as one pack file rather than a loose file
/// each (`pack`: for the thousand files of a mass change's batch commit).
pub fn put_files_packed(repo: &Repository, root: Oid, edits: &[Edit]) -> Result<Oid> {
    let odb = repo.odb()?;
    let mut store = Store {
        odb: &odb,
        pack: Some(Pending::default()),
    };
    let id = put_into(&mut store, root, edits)?;
    // The same tree (every edit a no-op): no commit will be made, so no pack either.
    if let Some(pack) = store.pack.as_ref().filter(|_| id != root) {
        pack.write(&odb)
            .with_context(|| format!("cannot write the {} new object(s)", pack.len()))?;
    }
    Ok(id)
}

fn put_into(store: &mut Store<'_, '_>, root: Oid, edits: &[Edit]) -> Result<Oid> {
    let items: Vec<Item<'_>> = edits
        .iter()
        .map(|e| (e.path.as_str(), e.content.as_deref()))
        .collect();
    let new = put_many(store, Some(root), &items)
        .with_context(|| format!("cannot write {} file(s) into tree {root}", edits.len()))?;
    match new {
        Some(id) => Ok(id),
        None => store.write(ObjectType::Tree, &[]),
    }
}

/// Where trees are read from, and where new objects go: the object database, or a
/// pack written once the walk is done.
struct Store<'a, 'r> {
    odb: &'a Odb<'r>,
    pack: Option<Pending>,
}

impl Store<'_, '_> {
    fn write(&mut self, kind: ObjectType, data: &[u8]) -> Result<Oid> {
        match &mut self.pack {
            Some(pack) => pack.add(kind, data),
            None => Ok(self.odb.write(kind, data)?),
        }
    }
}

/// One edit as the walk sees it: the path below the folder walked, and the content
/// (`None`: delete).
type Item<'a> = (&'a str, Option<&'a [u8]>);

/// What becomes of one name in a folder.
#[derive(Default)]
struct Change<'a> {
    /// The last edit of the name itself: `Some(None)` deletes it.
    file: Option<Option<&'a [u8]>>,
    /// Edits below the name, made after that last edit (a folder there).
    below: Vec<Item<'a>>,
}

/// `items` applied to `tree` (`None`: an empty tree); `None` when the tree ends up empty.
fn put_many(
    store: &mut Store<'_, '_>,
    tree: Option<Oid>,
    items: &[Item<'_>],
) -> Result<Option<Oid>> {
    let raw = match tree {
        Some(id) => read_tree(store.odb, id)?,
        None => Arc::new(Vec::new()),
    };
    let mut changes: BTreeMap<&[u8], Change<'_>> = BTreeMap::new();
    for &(path, content) in items {
        let (name, rest) = match path.split_once('/') {
            Some((n, r)) => (n, Some(r)),
            None => (path, None),
        };
        check_name(name, path)?;
        let change = changes.entry(name.as_bytes()).or_default();
        match rest {
            Some(rest) => change.below.push((rest, content)),
            None => {
                // A file edit replaces whatever was edited below the same name before it.
                change.below.clear();
                change.file = Some(content);
            }
        }
    }
    // The old entries of the changed names.
    let mut old: BTreeMap<&[u8], RawEntry<'_>> = BTreeMap::new();
    for e in entries(&raw) {
        let e = e?;
        if changes.contains_key(e.name) {
            old.insert(e.name, e);
        }
    }
    // The new entries of the changed names: (name, is a tree, id); none is a delete.
    let mut new: Vec<(&[u8], bool, Oid)> = Vec::new();
    let mut changed = false;
    for (name, change) in &changes {
        let before = old.get(name);
        let after: Option<(bool, Oid)> = if change.below.is_empty() {
            match change.file {
                Some(Some(bytes)) => Some((false, store.write(ObjectType::Blob, bytes)?)),
                Some(None) | None => None,
            }
        } else {
            // A folder edited below: on the old folder, unless a file edit (or a file
            // there) came first.
            let base = match (change.file, before) {
                (None, Some(e)) if e.is_tree() => Some(e.id),
                _ => None,
            };
            put_many(store, base, &change.below)?.map(|id| (true, id))
        };
        let same = match (before, after) {
            (None, None) => true,
            (Some(b), Some((is_tree, id))) => {
                b.id == id && b.is_tree() == is_tree && (is_tree || b.mode == MODE_BLOB)
            }
            _ => false,
        };
        changed |= !same;
        if let Some((is_tree, id)) = after {
            new.push((name, is_tree, id));
        }
    }
    if !changed {
        return Ok(tree.filter(|_| !raw.is_empty()));
    }
    new.sort_by(|a, b| git_order(a.0, a.1, b.0, b.1));
    // Merge: the untouched old entries (already in Git's order) with the new ones.
    let mut bytes = Vec::with_capacity(raw.len() + new.len() * 64);
    let mut pending = new.into_iter().peekable();
    for e in entries(&raw) {
        let e = e?;
        if changes.contains_key(e.name) {
            continue;
        }
        while let Some(n) = pending.next_if(|n| git_order(n.0, n.1, e.name, e.is_tree()).is_lt()) {
            push_entry(&mut bytes, n);
        }
        bytes.extend_from_slice(&raw[e.start..e.end]);
    }
    for n in pending {
        push_entry(&mut bytes, n);
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let id = store.write(ObjectType::Tree, &bytes)?;
    remember(id, Arc::new(bytes));
    Ok(Some(id))
}

fn push_entry(bytes: &mut Vec<u8>, (name, is_tree, id): (&[u8], bool, Oid)) {
    bytes.extend_from_slice(if is_tree { MODE_TREE } else { MODE_BLOB });
    bytes.push(b' ');
    bytes.extend_from_slice(name);
    bytes.push(0);
    bytes.extend_from_slice(id.as_bytes());
}

/// The names libgit2's tree builder refuses (and Git's fsck): nothing a status or plan
/// path holds.
fn check_name(name: &str, path: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.eq_ignore_ascii_case(".git") {
        bail!("invalid path component `{name}` in {path}");
    }
    if name.contains('\0') {
        bail!("a NUL in path {path:?}");
    }
    Ok(())
}

fn cached(id: Oid) -> Option<Arc<Vec<u8>>> {
    let mut cache = CACHE.lock().ok()?;
    let i = cache.iter().position(|(k, _)| *k == id)?;
    let entry = cache.remove(i);
    let raw = entry.1.clone();
    cache.push(entry);
    Some(raw)
}

fn remember(id: Oid, raw: Arc<Vec<u8>>) {
    if raw.len() < CACHE_MIN_BYTES {
        return;
    }
    if let Ok(mut cache) = CACHE.lock() {
        cache.retain(|(k, _)| *k != id);
        if cache.len() >= CACHE_ENTRIES {
            cache.remove(0);
        }
        cache.push((id, raw));
    }
}

/// The raw bytes of tree `id`.
fn read_tree(odb: &Odb<'_>, id: Oid) -> Result<Arc<Vec<u8>>> {
    if let Some(raw) = cached(id) {
        return Ok(raw);
    }
    let obj = odb.read(id)?;
    if obj.kind() != ObjectType::Tree {
        bail!("{id} is a {}, not a tree", obj.kind());
    }
    let raw = Arc::new(obj.data().to_vec());
    remember(id, raw.clone());
    Ok(raw)
}

/// One entry of a raw tree: where it lies in the bytes, its mode, name and id.
struct RawEntry<'a> {
    start: usize,
    end: usize,
    mode: &'a [u8],
    name: &'a [u8],
    id: Oid,
}

impl RawEntry<'_> {
    fn is_tree(&self) -> bool {
        self.mode == MODE_TREE
    }
}

/// The entries of a raw tree, in order.
fn entries(raw: &[u8]) -> impl Iterator<Item = Result<RawEntry<'_>>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= raw.len() {
            return None;
        }
        let start = at;
        let parse = || -> Option<RawEntry<'_>> {
            let space = start + raw[start..].iter().position(|b| *b == b' ')?;
            let nul = space + 1 + raw[space + 1..].iter().position(|b| *b == 0)?;
            let end = nul + 1 + 20;
            let id = Oid::from_bytes(raw.get(nul + 1..end)?).ok()?;
            Some(RawEntry {
                start,
                end,
                mode: &raw[start..space],
                name: &raw[space + 1..nul],
                id,
            })
        };
        match parse() {
            Some(e) => {
                at = e.end;
                Some(Ok(e))
            }
            None => {
                at = raw.len();
                Some(Err(anyhow::anyhow!("malformed tree object")))
            }
        }
    })
}

/// Git's order of tree entries: names compared byte by byte, a tree's as if it ended
/// in `/`.
fn git_order(a: &[u8], a_tree: bool, b: &[u8], b_tree: bool) -> std::cmp::Ordering {
    let key = |name: &[u8], tree: bool, i: usize| -> Option<u8> {
        match name.get(i) {
            Some(c) => Some(*c),
            None if tree && i == name.len() => Some(b'/'),
            None => None,
        }
    };
    let mut i = 0;
    loop {
        match (key(a, a_tree, i), key(b, b_tree, i)) {
            (None, None) => return std::cmp::Ordering::Equal,
            (x, y) if x != y => return x.cmp(&y),
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(path: &str, content: Option<&str>) -> Edit {
        Edit {
            path: path.to_owned(),
            content: content.map(|c| c.as_bytes().to_vec()),
        }
    }

    fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = Repository::init_bare(dir.path()).expect("repo");
        (dir, repo)
    }

    /// One edit made by libgit2's tree builder: the reference the merge must agree with.
    fn by_builder(repo: &Repository, root: Oid, path: &str, content: Option<&[u8]>) -> Oid {
        let tree = repo.find_tree(root).expect("tree");
        let (head, rest) = match path.split_once('/') {
            Some((h, r)) => (h, Some(r)),
            None => (path, None),
        };
        let mut b = repo.treebuilder(Some(&tree)).expect("builder");
        match rest {
            None => match content {
                Some(c) => {
                    let blob = repo.blob(c).expect("blob");
                    b.insert(head, blob, 0o100644).expect("insert");
                }
                None => {
                    if b.get(head).expect("get").is_some() {
                        b.remove(head).expect("remove");
                    }
                }
            },
            Some(rest) => {
                let sub = match tree.get_name(head) {
                    Some(e) if e.kind() == Some(ObjectType::Tree) => e.id(),
                    _ => repo.treebuilder(None).expect("b").write().expect("w"),
                };
                let new = by_builder(repo, sub, rest, content);
                if repo.find_tree(new).expect("t").is_empty() {
                    if b.get(head).expect("get").is_some() {
                        b.remove(head).expect("remove");
                    }
                } else {
                    b.insert(head, new, 0o040000).expect("insert");
                }
            }
        }
        b.write().expect("write")
    }

    fn empty(repo: &Repository) -> Oid {
        repo.treebuilder(None).expect("b").write().expect("w")
    }

    #[test]
    fn many_edits_in_one_walk_make_the_tree_libgit2s_builder_makes_one_at_a_time() {
        let (_dir, repo) = repo();
        let mut root = empty(&repo);
        for e in [
            edit("status/a.yaml", Some("a1")),
            edit("status/b.yaml", Some("b1")),
            edit("plans/a.yaml", Some("p")),
            edit("gone/only.yaml", Some("x")),
            edit("README", Some("r")),
        ] {
            root = by_builder(&repo, root, &e.path, e.content.as_deref());
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
            one_by_one = by_builder(&repo, one_by_one, &e.path, e.content.as_deref());
        }
        assert_eq!(
            put_files(&repo, root, &edits).expect("put_files"),
            one_by_one
        );
        // Nothing to do: the same tree.
        assert_eq!(put_files(&repo, root, &[]).expect("none"), root);
    }

    #[test]
    fn every_single_edit_writes_the_tree_libgit2s_builder_writes() {
        let (_dir, repo) = repo();
        let mut root = empty(&repo);
        // Names that sort differently as files and as trees (`a-b` < `a/` < `a0`), a
        // file and a folder of one name in turn, deletes, and a folder emptied.
        let steps: &[(&str, Option<&str>)] = &[
            ("status/web.yaml", Some("one")),
            ("status/a-b.yaml", Some("two")),
            ("status/a/x.yaml", Some("three")),
            ("status/a0.yaml", Some("four")),
            ("status/web.yaml", Some("one, changed")),
            ("status.yaml", Some("beside the folder")),
            ("plans/web.yaml", Some("plan")),
            ("status/a/x.yaml", None),
            ("status/missing.yaml", None),
            ("nowhere/missing.yaml", None),
            ("a", Some("a file first")),
            ("a", None),
            ("a/b", Some("then a folder")),
            ("a", Some("then a file again")),
            ("status/web.yaml", Some("one, changed")),
            ("plans/web.yaml", None),
        ];
        for (path, content) in steps {
            let content = content.map(str::as_bytes);
            let want = by_builder(&repo, root, path, content);
            let got = put_files(
                &repo,
                root,
                &[edit(
                    path,
                    content.map(|c| std::str::from_utf8(c).expect("utf-8")),
                )],
            )
            .expect("put");
            assert_eq!(got, want, "{path}");
            root = got;
        }
    }

    /// A small deterministic generator: the same sequences on every run.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    #[test]
    fn random_batches_of_edits_agree_with_the_builder_one_edit_at_a_time() {
        let (_dir, repo) = repo();
        // Names chosen to collide as files and folders and to sort around `/`.
        let names = ["a", "a-b", "a0", "b", "status", "x.yaml"];
        let mut rng = Lcg(7);
        let mut root = empty(&repo);
        for round in 0..300u32 {
            let n = 1 + rng.next(6);
            let edits: Vec<Edit> = (0..n)
                .map(|i| {
                    let depth = 1 + rng.next(3);
                    let path: Vec<&str> =
                        (0..depth).map(|_| names[rng.next(names.len())]).collect();
                    let content = (rng.next(4) != 0).then(|| format!("{round}.{i}"));
                    edit(&path.join("/"), content.as_deref())
                })
                .collect();
            let mut want = root;
            for e in &edits {
                want = by_builder(&repo, want, &e.path, e.content.as_deref());
            }
            // Every other round through the pack: the same trees, whichever way written.
            let got = if round.is_multiple_of(2) {
                put_files(&repo, root, &edits).expect("put_files")
            } else {
                put_files_packed(&repo, root, &edits).expect("put_files_packed")
            };
            assert_eq!(got, want, "round {round}: {edits:?}");
            root = got;
        }
    }

    #[test]
    fn a_folder_of_a_thousand_changes_by_one_entry_and_an_unchanged_edit_writes_nothing() {
        let (_dir, repo) = repo();
        let mut b = repo.treebuilder(None).expect("b");
        for i in 0..1_000 {
            let blob = repo.blob(format!("plan: svc-{i}\n").as_bytes()).expect("b");
            b.insert(format!("svc-{i:05}.yaml"), blob, 0o100644)
                .expect("insert");
        }
        let status = b.write().expect("status");
        let mut r = repo.treebuilder(None).expect("b");
        r.insert("status", status, 0o040000).expect("insert");
        let root = r.write().expect("root");
        for (path, content) in [
            ("status/svc-00500.yaml", Some("changed")),
            ("status/svc-99999.yaml", Some("new, last")),
            ("status/aaa.yaml", Some("new, first")),
            ("status/svc-00000.yaml", None),
        ] {
            assert_eq!(
                put_files(&repo, root, &[edit(path, content)]).expect("put"),
                by_builder(&repo, root, path, content.map(str::as_bytes)),
                "{path}"
            );
        }
        let once = put_files(&repo, root, &[edit("status/x.yaml", Some("x"))]).expect("put");
        assert_eq!(
            put_files(&repo, once, &[edit("status/x.yaml", Some("x"))]).expect("put"),
            once
        );
    }

    #[test]
    fn an_executable_file_rewritten_with_the_same_content_becomes_a_plain_file_as_the_builder_makes_it()
     {
        let (_dir, repo) = repo();
        let blob = repo.blob(b"#!/bin/sh\n").expect("blob");
        let mut b = repo.treebuilder(None).expect("b");
        b.insert("run.sh", blob, 0o100755).expect("insert");
        let root = b.write().expect("root");
        let got = put_files(&repo, root, &[edit("run.sh", Some("#!/bin/sh\n"))]).expect("put");
        assert_eq!(got, by_builder(&repo, root, "run.sh", Some(b"#!/bin/sh\n")));
        assert_ne!(got, root);
    }

    #[test]
    fn paths_git_refuses_are_refused_and_name_the_path() {
        let (_dir, repo) = repo();
        let root = empty(&repo);
        for path in ["status//x.yaml", "./x", "a/../x", ".git/config", "status/"] {
            let err = put_files(&repo, root, &[edit(path, Some("x"))]).expect_err(path);
            assert!(
                format!("{err:#}").contains("invalid path component"),
                "{path}: {err:#}"
            );
        }
    }

    #[test]
    fn git_orders_a_tree_as_if_its_name_ended_in_a_slash() {
        use std::cmp::Ordering::*;
        assert_eq!(git_order(b"a-b", false, b"a", true), Less);
        assert_eq!(git_order(b"a", true, b"a0", false), Less);
        assert_eq!(git_order(b"a", false, b"a-b", false), Less);
        assert_eq!(git_order(b"a", false, b"a", true), Less);
        assert_eq!(git_order(b"a", true, b"a", true), Equal);
    }

    /// Loose object files in a bare repository's object store.
    fn loose_objects(git_dir: &std::path::Path) -> usize {
        std::fs::read_dir(git_dir.join("objects"))
            .expect("objects")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().len() == 2)
            .map(|e| std::fs::read_dir(e.path()).map_or(0, Iterator::count))
            .sum()
    }

    fn pack_files(git_dir: &std::path::Path) -> usize {
        std::fs::read_dir(git_dir.join("objects/pack"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                    .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn regression_a_packed_commit_with_two_identical_files_and_folders_is_written() {
        // `a/` and `b/` hold the same file: one blob and one tree for both, which went
        // into the pack twice, and libgit2 refused the pack.
        let (_dir, repo) = repo();
        let root = empty(&repo);
        let mut edits = vec![
            edit("a/same.yaml", Some("plan: same\n")),
            edit("b/same.yaml", Some("plan: same\n")),
        ];
        edits.extend((0..8).map(|i| edit(&format!("c/{i}.yaml"), Some(&format!("{i}\n")))));
        let packed = put_files_packed(&repo, root, &edits).expect("packed");
        let (_other_dir, other) = self::repo();
        assert_eq!(
            packed,
            put_files(&other, empty(&other), &edits).expect("loose")
        );
        let tree = repo.find_tree(packed).expect("root tree");
        let a = tree.get_name("a").expect("a/").id();
        assert_eq!(tree.get_name("b").expect("b/").id(), a, "one tree for both");
        assert!(repo.find_tree(a).is_ok(), "the shared tree is in the pack");
    }

    #[test]
    fn regression_a_large_commit_writes_one_pack_file_not_a_loose_file_per_object() {
        let (dir, target) = repo();
        let root = empty(&target);
        let before = loose_objects(dir.path());
        let edits: Vec<Edit> = (0..200)
            .map(|i| {
                let text = format!("phase: Progressing\nstep: {i}\n");
                edit(&format!("status/svc-{i:04}.yaml"), Some(&text))
            })
            .collect();
        let packed = put_files_packed(&target, root, &edits).expect("packed");
        assert_eq!(loose_objects(dir.path()), before, "no loose object file");
        assert_eq!(
            pack_files(dir.path()),
            1,
            "one pack for 200 blobs and 2 trees"
        );
        // The same edits again change nothing: no second pack.
        assert_eq!(
            put_files_packed(&target, packed, &edits).expect("again"),
            packed
        );
        assert_eq!(
            pack_files(dir.path()),
            1,
            "no pack for a tree that did not change"
        );

        // The tree the loose path writes, readable from a handle opened afterwards.
        let (_other_dir, other) = repo();
        let loose = put_files(&other, empty(&other), &edits).expect("loose");
        assert_eq!(packed, loose);
        let fresh = Repository::open_bare(dir.path()).expect("reopen");
        let tree = fresh.find_tree(packed).expect("root tree");
        let status = tree
            .get_name("status")
            .expect("status/")
            .to_object(&fresh)
            .expect("object")
            .peel_to_tree()
            .expect("tree");
        assert_eq!(status.len(), 200);
        for (i, e) in status.iter().enumerate() {
            let blob = fresh.find_blob(e.id()).expect("blob");
            assert_eq!(
                blob.content(),
                format!("phase: Progressing\nstep: {i}\n").as_bytes()
            );
        }
        // And git itself reads the pack as sound.
        let fsck = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(dir.path())
            .args(["fsck", "--strict", "--no-dangling"])
            .output()
            .expect("git fsck runs");
        assert!(
            fsck.status.success(),
            "git fsck: {}",
            String::from_utf8_lossy(&fsck.stderr)
        );
    }
}
