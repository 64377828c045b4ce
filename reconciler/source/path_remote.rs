//! A path remote (a repository on this machine) fetched from and pushed to in-process,
//! the way `git` does it, without its five processes: a status push through `git push`
//! runs `git push`, `pack-objects`, `receive-pack`, `unpack-objects` and `rev-list`, and
//! a fetch as many; at about 4 ms a process here, that was 24–27 ms a push however small
//! the repository (`cargo bench --bench reconcile`, part (d)). Here a push copies the
//! commit's new objects into the remote and moves the branch under its lock file; a fetch
//! copies a few new commits' new objects back.
//!
//! Invariants:
//! - a push is a compare-and-swap of the exact old head under the branch's lock file
//!   (`refs/heads/<b>.lock`, created exclusively: the lock `git receive-pack` takes), the
//!   old value read under that lock from the loose ref or `packed-refs`. A branch that
//!   moved, or that another writer holds locked, is [`Push::Rejected`], never overwritten.
//!   The one lock removed is one a push of this clone's left when it was killed holding
//!   it (`clear_own_stale_lock`): its update never happened;
//! - objects before refs: every object a ref is made to name is in that repository
//!   before the ref moves. Loose objects are written children first (a pack appears
//!   whole), so an object present has everything it points to present; the copy stops
//!   descending at an object the destination already has, and relies on this;
//! - in-process pushes go only to a plain bare repository ([`PathRemote::writable`]):
//!   one with hooks, a `receive.*` or `transfer.*` setting, shared permissions, a hooks
//!   path, a repository extension or a shallow history goes through `git`, whose
//!   receive-pack runs the hooks and checks;
//! - bounded work: a copy of more than [`MAX_COMMITS`] commits or [`MAX_OBJECTS`]
//!   objects (a first fetch, a long absence) is left to `git`, which sends one pack;
//! - nothing is ever left half-done in a way `git` would not leave it: anything other
//!   than a pushed or lost race is [`Done::UseGit`], and the caller runs `git` instead,
//!   whose answer (and error class) is then the one given. Unreferenced objects copied
//!   before a lost race stay, as after any refused push, until the repository's gc.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use git2::{ErrorCode, ObjectType, Oid, Repository};

use super::remote::Push;
use crate::writeback::pack::Pending;

/// More new commits than this in one transfer: `git` sends them, as one pack.
pub const MAX_COMMITS: usize = 64;

/// More new objects than this in one transfer: `git` sends them, as one pack.
pub const MAX_OBJECTS: usize = 20_000;

/// From this many new objects, they are written as one pack, not a loose file each.
const PACK_FROM: usize = 8;

/// The hooks `git receive-pack` runs: with any of them, pushes go through `git`.
const RECEIVE_HOOKS: &[&str] = &[
    "pre-receive",
    "update",
    "post-receive",
    "post-update",
    "reference-transaction",
    "proc-receive",
    "push-to-checkout",
];

/// Configuration that changes what `git receive-pack` does or checks (a prefix of the
/// lower-cased key): with any of them set, pushes go through `git`.
const RECEIVE_CONFIG: &[&str] = &[
    "receive.",
    "transfer.",
    "core.hookspath",
    "core.sharedrepository",
    "extensions.",
];

/// What an in-process transfer came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Done<T> {
    Done(T),
    /// Not for in-process: `git` does it (the reason, for the debug log).
    UseGit(String),
}

/// A repository on this machine, by its git dir.
#[derive(Debug, Clone)]
pub struct PathRemote {
    git_dir: PathBuf,
}

impl PathRemote {
    /// The repository a local URL (a path, or `file://`) names; `None` when it is not one.
    pub fn at(url: &str) -> Option<Self> {
        let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
        if !path.is_absolute() {
            return None;
        }
        let git_dir = if path.join(".git").is_dir() {
            path.join(".git")
        } else {
            path.to_path_buf()
        };
        Some(Self { git_dir })
    }

    /// The repository's git dir (`<path>/.git` for one with a working tree).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    fn open(&self) -> Result<Repository, String> {
        Repository::open(&self.git_dir).map_err(|e| format!("cannot open: {}", e.message()))
    }

    /// The repository opened for an in-process push, or why `git` must push instead.
    pub fn writable(&self) -> Result<Repository, String> {
        let repo = self.open()?;
        if !repo.is_bare() {
            return Err("not a bare repository".to_owned());
        }
        if repo.is_shallow() {
            return Err("a shallow repository".to_owned());
        }
        let hooks = self.git_dir.join("hooks");
        for hook in RECEIVE_HOOKS {
            if hooks.join(hook).exists() {
                return Err(format!("it has a {hook} hook"));
            }
        }
        let config = repo
            .config()
            .and_then(|mut c| c.snapshot())
            .map_err(|e| format!("cannot read its config: {}", e.message()))?;
        let mut entries = config
            .entries(None)
            .map_err(|e| format!("cannot read its config: {}", e.message()))?;
        while let Some(entry) = entries.next() {
            // An entry that cannot be read could be any setting: `git` reads it.
            let entry = entry.map_err(|e| format!("cannot read its config: {}", e.message()))?;
            let key = entry.name().unwrap_or_default().to_ascii_lowercase();
            if let Some(p) = RECEIVE_CONFIG.iter().find(|p| key.starts_with(*p)) {
                return Err(format!("its config sets {key} ({p}*)"));
            }
        }
        Ok(repo)
    }

    /// Fetch `src` (a ref of the remote) into `dst` of the repository at `local` (forced,
    /// as a `+src:dst` refspec). `UseGit` for a first fetch, a ref that is missing or not
    /// a commit, a shallow remote, or a transfer over the bounds.
    pub fn fetch(&self, local: &Path, src: &str, dst: &str) -> Done<Oid> {
        match self.try_fetch(local, src, dst) {
            Ok(done) => done,
            Err(e) => Done::UseGit(e),
        }
    }

    fn try_fetch(&self, local: &Path, src: &str, dst: &str) -> Result<Done<Oid>, String> {
        let remote = self.open()?;
        if remote.is_shallow() {
            return Ok(Done::UseGit("a shallow repository".to_owned()));
        }
        let Some(tip) = remote.find_reference(src).ok().and_then(|r| r.target()) else {
            return Ok(Done::UseGit(format!("no direct ref {src}")));
        };
        let local = Repository::open_bare(local).map_err(|e| e.message().to_owned())?;
        if local.refname_to_id(dst).is_err() {
            return Ok(Done::UseGit("a first fetch".to_owned()));
        }
        if let Done::UseGit(why) = copy(&remote, &local, tip)? {
            return Ok(Done::UseGit(why));
        }
        local
            .reference(dst, tip, true, &format!("fetch: {src} (in-process)"))
            .map_err(|e| e.message().to_owned())?;
        Ok(Done::Done(tip))
    }

    /// Push `commit` (in the repository at `local`) to `refs/heads/<branch>` if and only if
    /// the branch is `expected` there now (`None`: if it does not exist).
    pub fn push(
        &self,
        local: &Path,
        commit: Oid,
        branch: &str,
        expected: Option<Oid>,
    ) -> Done<Push> {
        match self.try_push(local, commit, branch, expected) {
            Ok(done) => done,
            Err(e) => Done::UseGit(e),
        }
    }

    fn try_push(
        &self,
        local: &Path,
        commit: Oid,
        branch: &str,
        expected: Option<Oid>,
    ) -> Result<Done<Push>, String> {
        let remote = match self.writable() {
            Ok(r) => r,
            Err(why) => return Ok(Done::UseGit(why)),
        };
        let local = Repository::open_bare(local).map_err(|e| e.message().to_owned())?;
        let dst = format!("refs/heads/{branch}");
        // A branch already elsewhere is a lost race before any object is copied.
        let now = remote.refname_to_id(&dst).ok();
        if now != expected {
            return Ok(Done::Done(Push::Rejected(moved(expected, now))));
        }
        if let Done::UseGit(why) = copy(&local, &remote, commit)? {
            return Ok(Done::UseGit(why));
        }
        // Under the lock: the old value compared, then the new one written (the zero id:
        // "must not exist").
        let old = expected.unwrap_or(Oid::ZERO_SHA1);
        let message = "push (rollgate, in-process)";
        let update = || remote.reference_matching(&dst, commit, true, old, message);
        let mut done = update();
        if done.as_ref().is_err_and(|e| e.code() == ErrorCode::Locked)
            && clear_own_stale_lock(&remote, &local, &dst)
        {
            done = update();
        }
        match done {
            Ok(_) => Ok(Done::Done(Push::Pushed)),
            Err(e) if e.code() == ErrorCode::Modified => {
                let now = remote.refname_to_id(&dst).ok();
                Ok(Done::Done(Push::Rejected(moved(expected, now))))
            }
            Err(e) if e.code() == ErrorCode::Locked => Ok(Done::Done(Push::Rejected(format!(
                "{dst} is locked by another writer"
            )))),
            Err(e) => Err(format!("cannot update {dst}: {}", e.message())),
        }
    }
}

/// How old a branch's lock file must be before `clear_own_stale_lock` takes it for one a
/// killed push left: a live writer holds it for milliseconds.
const STALE_LOCK: std::time::Duration = std::time::Duration::from_secs(5);

/// Remove the lock on `dst` in `remote` that a push of this clone's left when it died
/// holding it (a SIGKILL between taking the lock and renaming it into place): a lock file
/// older than [`STALE_LOCK`] that names a commit of `local` other than the branch's head,
/// or nothing (no live writer leaves its lock empty for seconds: whoever took it died
/// before writing). Left there, it refuses every later push, rollgate's and people's,
/// until someone removes it by hand. The update it guarded never happened, so removing it
/// loses nothing. Any other lock (a fresh one, one naming a commit this clone never saw)
/// is left alone. True when removed.
fn clear_own_stale_lock(remote: &Repository, local: &Repository, dst: &str) -> bool {
    let lock = remote.path().join(format!("{dst}.lock"));
    let stale = std::fs::metadata(&lock)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= STALE_LOCK);
    if !stale {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(&lock) else {
        return false;
    };
    let ours = match text.trim() {
        "" => true,
        named => Oid::from_str(named).is_ok_and(|id| {
            local.find_commit(id).is_ok() && remote.refname_to_id(dst).ok() != Some(id)
        }),
    };
    if !ours {
        return false;
    }
    tracing::warn!(lock = %lock.display(), "removing a branch lock a killed push of this daemon left");
    std::fs::remove_file(&lock).is_ok()
}

/// A lost race, said as `git push --porcelain` says it.
fn moved(expected: Option<Oid>, now: Option<Oid>) -> String {
    let short =
        |o: Option<Oid>| o.map_or_else(|| "nothing".to_owned(), |o| o.to_string()[..8].to_owned());
    format!(
        "stale info: the branch is at {} (expected {})",
        short(now),
        short(expected)
    )
}

/// Copy into `to` every object reachable from `tip` that `to` lacks, parents before
/// children; `UseGit` when that is more than the bounds. Each new commit's tree is
/// compared with its first parent's, so only the folders that changed are read.
fn copy(from: &Repository, to: &Repository, tip: Oid) -> Result<Done<()>, String> {
    let to_odb = to.odb().map_err(|e| e.message().to_owned())?;
    let from_odb = from.odb().map_err(|e| e.message().to_owned())?;
    if to_odb.exists(tip) {
        return Ok(Done::Done(()));
    }
    let commits = match new_commits(from, &to_odb, tip)? {
        Done::Done(c) => c,
        Done::UseGit(why) => return Ok(Done::UseGit(why)),
    };
    let mut out = Objects {
        from: &from_odb,
        to: &to_odb,
        from_dir: from.path().join("objects"),
        to_dir: to.path().join("objects"),
        list: Vec::new(),
        seen: HashSet::new(),
    };
    for (id, tree, parent) in commits {
        // The parent's tree, from whichever side has it (a parent new in this transfer
        // is in `from`; an old one in both).
        let base = parent.and_then(|p| {
            let c = from.find_commit(p).ok()?;
            Some(c.tree_id())
        });
        out.tree(tree, base)?;
        out.add(id, ObjectType::Commit)?;
        if out.list.len() > MAX_OBJECTS {
            return Ok(Done::UseGit(format!("more than {MAX_OBJECTS} objects")));
        }
    }
    out.write()?;
    Ok(Done::Done(()))
}

/// The commits reachable from `tip` that `to` lacks, each with its tree and first parent,
/// parents first; `UseGit` past [`MAX_COMMITS`] or at a commit `from` cannot read (a
/// shallow or damaged history).
type NewCommit = (Oid, Oid, Option<Oid>);

fn new_commits(
    from: &Repository,
    to: &git2::Odb<'_>,
    tip: Oid,
) -> Result<Done<Vec<NewCommit>>, String> {
    // Depth-first, a commit listed once all its new parents are.
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(tip, false)];
    while let Some((id, parents_done)) = stack.pop() {
        if parents_done {
            let c = from.find_commit(id).map_err(|e| e.message().to_owned())?;
            order.push((id, c.tree_id(), c.parent_id(0).ok()));
            continue;
        }
        if !seen.insert(id) || to.exists(id) {
            continue;
        }
        if seen.len() > MAX_COMMITS {
            return Ok(Done::UseGit(format!("more than {MAX_COMMITS} new commits")));
        }
        let Ok(c) = from.find_commit(id) else {
            return Ok(Done::UseGit(format!("commit {id} cannot be read")));
        };
        stack.push((id, true));
        for p in c.parent_ids() {
            if !seen.contains(&p) {
                stack.push((p, false));
            }
        }
    }
    Ok(Done::Done(order))
}

/// The objects to write, children before parents.
struct Objects<'a, 'r> {
    from: &'a git2::Odb<'r>,
    to: &'a git2::Odb<'r>,
    /// The two object folders, for hard links between them.
    from_dir: PathBuf,
    to_dir: PathBuf,
    list: Vec<Object>,
    seen: HashSet<Oid>,
}

/// An object to write: its content, read; or for a loose object of a blob, only where
/// its file is (read when it cannot be linked).
struct Object {
    id: Oid,
    kind: ObjectType,
    data: Option<Vec<u8>>,
}

impl Objects<'_, '_> {
    fn wanted(&mut self, id: Oid) -> bool {
        !self.seen.contains(&id) && !self.to.exists(id)
    }

    fn add(&mut self, id: Oid, kind: ObjectType) -> Result<(), String> {
        // A loose object is linked, not read; anything else is read now.
        let data = if loose(&self.from_dir, id).is_file() {
            None
        } else {
            Some(self.read(id, kind)?)
        };
        self.seen.insert(id);
        self.list.push(Object { id, kind, data });
        Ok(())
    }

    fn read(&self, id: Oid, kind: ObjectType) -> Result<Vec<u8>, String> {
        let obj = self.from.read(id).map_err(|e| e.message().to_owned())?;
        if obj.kind() != kind {
            return Err(format!("{id} is a {}, not a {kind}", obj.kind()));
        }
        Ok(obj.data().to_vec())
    }

    /// `tree` and what it holds that is new, against `base` (the same folder before).
    fn tree(&mut self, tree: Oid, base: Option<Oid>) -> Result<(), String> {
        if Some(tree) == base || !self.wanted(tree) {
            return Ok(());
        }
        let raw = self.read(tree, ObjectType::Tree)?;
        let entries = parse_tree(&raw)?;
        // The base's entries: their ids are in both repositories (a base is an old
        // folder), so an entry with one of them needs no look; its sub-folders by name,
        // to compare a changed one with.
        let (old_ids, old_trees) = match base.and_then(|b| self.from.read(b).ok()) {
            Some(old) => {
                let old = parse_tree(old.data())?;
                let ids: HashSet<Oid> = old.iter().map(|e| e.id).collect();
                let trees: std::collections::HashMap<Vec<u8>, Oid> = old
                    .into_iter()
                    .filter(|e| e.kind == Kind::Tree)
                    .map(|e| (e.name, e.id))
                    .collect();
                (ids, trees)
            }
            None => Default::default(),
        };
        for e in entries {
            if old_ids.contains(&e.id) {
                continue;
            }
            match e.kind {
                Kind::Tree => self.tree(e.id, old_trees.get(&e.name).copied())?,
                Kind::Blob => {
                    if self.wanted(e.id) {
                        self.add(e.id, ObjectType::Blob)?;
                    }
                }
                // A submodule's commit lives in another repository.
                Kind::Gitlink => {}
            }
        }
        self.seen.insert(tree);
        // Read already: linked all the same when loose (no second compression).
        let data = (!loose(&self.from_dir, tree).is_file()).then_some(raw);
        self.list.push(Object {
            id: tree,
            kind: ObjectType::Tree,
            data,
        });
        Ok(())
    }

    /// `o`'s content: as kept, or read now (a loose object that was to be linked).
    fn content<'o>(&self, o: &'o Object) -> Result<std::borrow::Cow<'o, [u8]>, String> {
        Ok(match &o.data {
            Some(d) => std::borrow::Cow::Borrowed(d.as_slice()),
            None => std::borrow::Cow::Owned(self.read(o.id, o.kind)?),
        })
    }

    /// Into `to`: one pack from [`PACK_FROM`] objects; else each, in order, as a hard
    /// link to its loose file (as `git clone --local` does: the file is immutable, and
    /// a link costs no compression, which for a 10,000-entry folder is most of a fetch),
    /// or written loose when it is packed on the other side or a link fails (another
    /// file system).
    fn write(self) -> Result<(), String> {
        if self.list.len() >= PACK_FROM {
            let mut pack = Pending::default();
            for o in &self.list {
                pack.add(o.kind, &self.content(o)?)
                    .map_err(|e| format!("{e:#}"))?;
            }
            return pack.write(self.to).map_err(|e| format!("{e:#}"));
        }
        for o in &self.list {
            if o.data.is_none() && link(&self.from_dir, &self.to_dir, o.id) {
                continue;
            }
            self.to
                .write(o.kind, &self.content(o)?)
                .map_err(|e| e.message().to_owned())?;
        }
        Ok(())
    }
}

/// Where `objects` keeps `id` as a loose object.
fn loose(objects: &Path, id: Oid) -> PathBuf {
    let hex = id.to_string();
    objects.join(&hex[..2]).join(&hex[2..])
}

/// Hard-link the loose object `id` of `from` into `to`; whether it is there now.
fn link(from: &Path, to: &Path, id: Oid) -> bool {
    let target = loose(to, id);
    if let Some(dir) = target.parent()
        && std::fs::create_dir_all(dir).is_err()
    {
        return false;
    }
    match std::fs::hard_link(loose(from, id), &target) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::AlreadyExists,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tree,
    Blob,
    Gitlink,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    name: Vec<u8>,
    id: Oid,
}

/// A tree object's entries: `<octal mode> <name>\0<20-byte id>`, repeated.
fn parse_tree(mut raw: &[u8]) -> Result<Vec<Entry>, String> {
    let bad = || "a malformed tree object".to_owned();
    let mut out = Vec::new();
    while !raw.is_empty() {
        let space = raw.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let mode = &raw[..space];
        let rest = &raw[space + 1..];
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
        let name = rest[..nul].to_vec();
        let id = rest.get(nul + 1..nul + 21).ok_or_else(bad)?;
        let id = Oid::from_bytes(id).map_err(|_| bad())?;
        let kind = match mode {
            b"40000" | b"040000" => Kind::Tree,
            b"160000" => Kind::Gitlink,
            _ => Kind::Blob,
        };
        out.push(Entry { kind, name, id });
        raw = &rest[nul + 21..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Each transfer against what `git` itself says of the result: `git fsck` finds every
    //! object a ref names (the copy left nothing out), `git rev-parse` reads the ref.

    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@e"])
            .args(args)
            .env_remove("GIT_DIR")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn oid(s: &str) -> Oid {
        Oid::from_str(s).expect("an id")
    }

    /// A bare remote with one commit (a plan in a folder, a status in a shard), a human's
    /// clone of it, and rollgate's private bare clone that has fetched it (through `git`).
    struct World {
        _tmp: tempfile::TempDir,
        bare: PathBuf,
        human: PathBuf,
        clone: PathBuf,
    }

    impl World {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tmp");
            let bare = tmp.path().join("remote.git");
            let human = tmp.path().join("human");
            let clone = tmp.path().join("clone.git");
            git(
                tmp.path(),
                &["init", "-q", "--bare", "-b", "main", "remote.git"],
            );
            git(tmp.path(), &["clone", "-q", "remote.git", "human"]);
            std::fs::create_dir_all(human.join("plans")).expect("mkdir");
            std::fs::create_dir_all(human.join("status/ab")).expect("mkdir");
            for i in 0..20 {
                std::fs::write(
                    human.join(format!("plans/p{i}.yaml")),
                    format!("name: p{i}\n"),
                )
                .expect("write");
            }
            std::fs::write(human.join("status/ab/p1.yaml"), "phase: Pending\n").expect("write");
            git(&human, &["add", "-A"]);
            git(&human, &["commit", "-qm", "first"]);
            git(&human, &["push", "-q", "origin", "main"]);
            git(tmp.path(), &["init", "-q", "--bare", "clone.git"]);
            git(
                &clone,
                &[
                    "fetch",
                    "-q",
                    bare.to_str().expect("utf8"),
                    "+refs/heads/main:refs/remotes/origin/main",
                ],
            );
            Self {
                _tmp: tmp,
                bare,
                human,
                clone,
            }
        }

        fn remote(&self) -> PathRemote {
            PathRemote::at(self.bare.to_str().expect("utf8")).expect("a path")
        }

        /// The human commits `file` with `text` and pushes; the new head.
        fn human_pushes(&self, file: &str, text: &str) -> Oid {
            let path = self.human.join(file);
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
            std::fs::write(path, text).expect("write");
            git(&self.human, &["add", "-A"]);
            git(&self.human, &["commit", "-qm", &format!("human: {file}")]);
            git(&self.human, &["push", "-q", "origin", "main"]);
            oid(&git(&self.human, &["rev-parse", "HEAD"]))
        }

        fn remote_head(&self) -> Oid {
            oid(&git(&self.bare, &["rev-parse", "refs/heads/main"]))
        }

        fn fetch(&self) -> Done<Oid> {
            self.remote()
                .fetch(&self.clone, "refs/heads/main", "refs/remotes/origin/main")
        }

        /// A status commit made in the private clone on `parent`, as the writer makes it.
        fn status_commit(&self, parent: Oid, text: &str) -> Oid {
            let repo = Repository::open_bare(&self.clone).expect("clone");
            let parent = repo.find_commit(parent).expect("parent");
            let id = crate::writeback::put_files(
                &repo,
                parent.tree_id(),
                &[crate::writeback::Edit {
                    path: "status/ab/p1.yaml".into(),
                    content: Some(text.as_bytes().to_vec()),
                }],
            )
            .expect("tree");
            let tree = repo.find_tree(id).expect("tree");
            let sig = git2::Signature::now("rollgate", "rollgate@localhost").expect("sig");
            repo.commit(None, &sig, &sig, text, &tree, &[&parent])
                .expect("commit")
        }
    }

    #[test]
    fn a_fetch_copies_only_what_changed_and_git_finds_the_clone_whole() {
        let w = World::new();
        w.human_pushes("plans/p3.yaml", "name: p3\nchanged: true\n");
        w.human_pushes("apps/web/deep/file.txt", "a new folder three deep\n");
        let head = w.remote_head();
        assert_eq!(w.fetch(), Done::Done(head));
        assert_eq!(
            oid(&git(&w.clone, &["rev-parse", "refs/remotes/origin/main"])),
            head
        );
        git(&w.clone, &["fsck", "--connectivity-only", "--no-dangling"]);
        assert_eq!(
            git(
                &w.clone,
                &["show", &format!("{head}:apps/web/deep/file.txt")]
            ),
            "a new folder three deep"
        );
        // Nothing new: the same head, nothing to do.
        assert_eq!(w.fetch(), Done::Done(head));
    }

    #[test]
    fn a_fetch_of_a_merge_brings_the_side_branch_and_its_objects() {
        let w = World::new();
        git(&w.human, &["checkout", "-qb", "side"]);
        std::fs::write(w.human.join("plans/side.yaml"), "name: side\n").expect("write");
        git(&w.human, &["add", "-A"]);
        git(&w.human, &["commit", "-qm", "side"]);
        git(&w.human, &["checkout", "-q", "main"]);
        std::fs::write(w.human.join("plans/main.yaml"), "name: main\n").expect("write");
        git(&w.human, &["add", "-A"]);
        git(&w.human, &["commit", "-qm", "main"]);
        git(
            &w.human,
            &["merge", "-q", "--no-ff", "-m", "merge side", "side"],
        );
        git(&w.human, &["push", "-q", "origin", "main"]);
        let head = w.remote_head();
        assert_eq!(w.fetch(), Done::Done(head));
        git(&w.clone, &["fsck", "--connectivity-only", "--no-dangling"]);
        assert_eq!(
            git(&w.clone, &["show", &format!("{head}:plans/side.yaml")]),
            "name: side"
        );
    }

    #[test]
    fn a_first_fetch_or_a_long_absence_is_left_to_git() {
        let w = World::new();
        for i in 0..=MAX_COMMITS {
            w.human_pushes("plans/p1.yaml", &format!("name: p1\nround: {i}\n"));
        }
        assert!(matches!(w.fetch(), Done::UseGit(why) if why.contains("new commits")));
        let fresh = w.clone.with_file_name("fresh.git");
        git(
            w.clone.parent().expect("tmp"),
            &["init", "-q", "--bare", "fresh.git"],
        );
        let first = w
            .remote()
            .fetch(&fresh, "refs/heads/main", "refs/remotes/origin/main");
        assert!(matches!(first, Done::UseGit(why) if why.contains("first fetch")));
        let missing = w
            .remote()
            .fetch(&w.clone, "refs/heads/nope", "refs/remotes/origin/nope");
        assert!(matches!(missing, Done::UseGit(_)));
    }

    #[test]
    fn a_push_moves_the_branch_only_from_the_head_it_was_made_on() {
        let w = World::new();
        let base = w.remote_head();
        let ours = w.status_commit(base, "phase: Progressing\n");
        assert_eq!(
            w.remote().push(&w.clone, ours, "main", Some(base)),
            Done::Done(Push::Pushed)
        );
        assert_eq!(w.remote_head(), ours);
        git(&w.bare, &["fsck", "--connectivity-only", "--no-dangling"]);
        assert_eq!(
            git(&w.bare, &["show", "main:status/ab/p1.yaml"]),
            "phase: Progressing"
        );
        // A human pushes meanwhile: a status commit made on the old head is refused, and
        // the human's commit stays.
        git(&w.human, &["pull", "-q", "--rebase", "origin", "main"]);
        let human = w.human_pushes("plans/p2.yaml", "name: p2\nedited: yes\n");
        let late = w.status_commit(ours, "phase: Paused\n");
        let Done::Done(Push::Rejected(why)) = w.remote().push(&w.clone, late, "main", Some(ours))
        else {
            panic!("a push on a moved branch must be refused");
        };
        assert!(why.contains("stale"), "{why}");
        assert_eq!(w.remote_head(), human);
    }

    #[test]
    fn a_push_compares_under_the_lock_and_reads_packed_refs() {
        let w = World::new();
        let base = w.remote_head();
        // The branch only in packed-refs, as after `git gc`.
        git(&w.bare, &["pack-refs", "--all", "--prune"]);
        assert!(!w.bare.join("refs/heads/main").exists());
        let ours = w.status_commit(base, "phase: Progressing\n");
        // Another writer holds the branch's lock: refused, and its lock is left alone.
        let lock = w.bare.join("refs/heads/main.lock");
        std::fs::create_dir_all(lock.parent().expect("dir")).expect("mkdir");
        std::fs::write(&lock, "").expect("lock");
        assert!(matches!(
            w.remote().push(&w.clone, ours, "main", Some(base)),
            Done::Done(Push::Rejected(why)) if why.contains("locked")
        ));
        assert!(lock.exists());
        assert_eq!(w.remote_head(), base);
        std::fs::remove_file(&lock).expect("unlock");
        assert_eq!(
            w.remote().push(&w.clone, ours, "main", Some(base)),
            Done::Done(Push::Pushed)
        );
        assert_eq!(w.remote_head(), ours);
        // "Must not exist" for a branch that exists is refused; for a new one it pushes.
        assert!(matches!(
            w.remote().push(&w.clone, ours, "main", None),
            Done::Done(Push::Rejected(_))
        ));
        assert_eq!(
            w.remote().push(&w.clone, ours, "rollgate-new", None),
            Done::Done(Push::Pushed)
        );
        assert_eq!(
            oid(&git(&w.bare, &["rev-parse", "refs/heads/rollgate-new"])),
            ours
        );
    }

    /// Make `path`'s modification time `secs` seconds ago.
    fn age(path: &Path, secs: u64) {
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(then))
            .expect("set mtime");
    }

    #[test]
    fn regression_a_branch_lock_left_by_a_killed_push_does_not_refuse_every_later_push() {
        let w = World::new();
        let base = w.remote_head();
        // A push of ours took the branch's lock, wrote its commit into it and was killed
        // before renaming it into place (a SIGKILL of the daemon mid-push).
        let killed = w.status_commit(base, "phase: Progressing\n");
        let lock = w.bare.join("refs/heads/main.lock");
        std::fs::write(&lock, format!("{killed}\n")).expect("lock");
        // While it is fresh, it may be a live writer's: refused, the lock left alone.
        let next = w.status_commit(base, "phase: Progressing\nstep: 1\n");
        assert!(matches!(
            w.remote().push(&w.clone, next, "main", Some(base)),
            Done::Done(Push::Rejected(why)) if why.contains("locked")
        ));
        assert!(lock.exists());
        // A commit this clone does not have (a person's push, however old): left alone.
        std::fs::write(&lock, format!("{}\n", "ab".repeat(20))).expect("lock");
        age(&lock, 60);
        assert!(matches!(
            w.remote().push(&w.clone, next, "main", Some(base)),
            Done::Done(Push::Rejected(why)) if why.contains("locked")
        ));
        assert!(lock.exists());
        assert_eq!(w.remote_head(), base);
        // Once stale and naming our own commit, it is removed and the push goes through.
        std::fs::write(&lock, format!("{killed}\n")).expect("lock");
        age(&lock, 60);
        assert_eq!(
            w.remote().push(&w.clone, next, "main", Some(base)),
            Done::Done(Push::Pushed)
        );
        assert_eq!(w.remote_head(), next);
        assert!(!lock.exists());
        // And so is one killed before it wrote anything into it.
        std::fs::write(&lock, "").expect("lock");
        age(&lock, 60);
        let after = w.status_commit(next, "phase: Paused\n");
        assert_eq!(
            w.remote().push(&w.clone, after, "main", Some(next)),
            Done::Done(Push::Pushed)
        );
        git(&w.bare, &["fsck", "--connectivity-only", "--no-dangling"]);
    }

    #[test]
    fn a_remote_with_hooks_or_receive_checks_is_pushed_to_through_git() {
        let w = World::new();
        // A fresh bare repository has only `*.sample` hooks: in-process.
        assert!(w.remote().writable().is_ok());
        let hook = w.bare.join("hooks/pre-receive");
        std::fs::write(&hook, "#!/bin/sh\nexit 1\n").expect("hook");
        let why = w.remote().writable().err().expect("a hook: through git");
        assert!(why.contains("pre-receive"), "{why}");
        let base = w.remote_head();
        let ours = w.status_commit(base, "phase: Progressing\n");
        assert!(matches!(
            w.remote().push(&w.clone, ours, "main", Some(base)),
            Done::UseGit(_)
        ));
        assert_eq!(w.remote_head(), base, "nothing moved");
        std::fs::remove_file(&hook).expect("rm hook");
        for (key, value) in [
            ("receive.fsckObjects", "true"),
            ("transfer.fsckObjects", "true"),
            ("receive.denyNonFastForwards", "true"),
            ("core.sharedRepository", "group"),
            ("core.hooksPath", "/tmp/hooks"),
        ] {
            git(&w.bare, &["config", key, value]);
            let why = w
                .remote()
                .writable()
                .err()
                .expect("a receive setting: through git");
            assert!(why.contains(&key.to_ascii_lowercase()), "{key}: {why}");
            git(&w.bare, &["config", "--unset", key]);
        }
        assert!(w.remote().writable().is_ok());
        // A working tree's repository: through git (receive.denyCurrentBranch and friends).
        let human = PathRemote::at(w.human.to_str().expect("utf8")).expect("a path");
        assert!(human.writable().is_err());
    }

    #[test]
    fn a_big_transfer_is_one_pack_and_small_ones_are_hard_links() {
        let w = World::new();
        // Eight or more new objects: one pack in the clone.
        let packs = |dir: &Path| {
            std::fs::read_dir(dir.join("objects/pack"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                        .count()
                })
                .unwrap_or(0)
        };
        let before = packs(&w.clone);
        for i in 0..10 {
            std::fs::write(
                w.human.join(format!("plans/new{i}.yaml")),
                format!("name: new{i}\n"),
            )
            .expect("write");
        }
        let head = w.human_pushes("plans/new10.yaml", "name: new10\n");
        assert_eq!(w.fetch(), Done::Done(head));
        assert_eq!(packs(&w.clone), before + 1);
        git(&w.clone, &["fsck", "--connectivity-only", "--no-dangling"]);
        // One changed file: its blob in the clone is the remote's file, linked.
        let head = w.human_pushes("plans/p5.yaml", "name: p5\nagain: 1\n");
        let blob = oid(&git(
            &w.bare,
            &["rev-parse", &format!("{head}:plans/p5.yaml")],
        ));
        assert_eq!(w.fetch(), Done::Done(head));
        use std::os::unix::fs::MetadataExt;
        let meta =
            |dir: &Path| std::fs::metadata(loose(&dir.join("objects"), blob)).expect("loose");
        assert_eq!(meta(&w.clone).ino(), meta(&w.bare).ino());
        git(&w.clone, &["fsck", "--connectivity-only", "--no-dangling"]);
    }

    #[test]
    fn a_path_remote_is_pushed_to_in_process_and_through_git_every_sixteenth_time() {
        use super::super::remote::{GitAuth, MAINTENANCE_EVERY, Remote, RemoteUrl};
        use std::os::unix::fs::MetadataExt;
        let w = World::new();
        let url = RemoteUrl::parse(w.bare.to_str().expect("utf8")).expect("a path");
        let remote = Remote::new(url, GitAuth::default());
        let mut head = w.remote_head();
        let mut through_git = Vec::new();
        for i in 0..=MAINTENANCE_EVERY {
            let ours = w.status_commit(head, &format!("phase: Progressing\nround: {i}\n"));
            assert_eq!(
                remote
                    .push(&w.clone, ours, "main", Some(head))
                    .expect("push"),
                Push::Pushed
            );
            // In-process, the commit's file in the remote is the clone's, linked; `git`
            // writes a file of its own.
            let inode = |dir: &Path| {
                std::fs::metadata(loose(&dir.join("objects"), ours))
                    .map(|m| m.ino())
                    .ok()
            };
            if inode(&w.bare) != inode(&w.clone) {
                through_git.push(i);
            }
            head = ours;
        }
        assert_eq!(through_git, [0, MAINTENANCE_EVERY]);
        assert_eq!(w.remote_head(), head);
        git(&w.bare, &["fsck", "--connectivity-only", "--no-dangling"]);
    }

    #[test]
    fn a_hook_that_refuses_is_run_by_git_and_its_refusal_stands() {
        use super::super::remote::{GitAuth, Remote, RemoteUrl};
        use std::os::unix::fs::PermissionsExt;
        let w = World::new();
        let hook = w.bare.join("hooks/pre-receive");
        std::fs::write(
            &hook,
            "#!/bin/sh\necho 'frozen for the audit' >&2\nexit 1\n",
        )
        .expect("hook");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let url = RemoteUrl::parse(w.bare.to_str().expect("utf8")).expect("a path");
        let remote = Remote::new(url, GitAuth::default());
        let base = w.remote_head();
        // Twice: the first push of a remote goes through git in any case.
        for round in 0..2 {
            let ours = w.status_commit(base, &format!("phase: Progressing\nround: {round}\n"));
            let out = remote
                .push(&w.clone, ours, "main", Some(base))
                .expect("push");
            assert!(matches!(out, Push::Rejected(_)), "{out:?}");
            assert_eq!(w.remote_head(), base);
        }
    }

    #[test]
    fn tree_entries_parse_as_git_writes_them() {
        let w = World::new();
        let head = w.remote_head();
        let repo = Repository::open_bare(&w.bare).expect("bare");
        let tree = repo
            .find_commit(head)
            .expect("commit")
            .tree()
            .expect("tree");
        let odb = repo.odb().expect("odb");
        let raw = odb.read(tree.id()).expect("raw");
        let parsed = parse_tree(raw.data()).expect("parses");
        let names: Vec<&[u8]> = parsed.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [b"plans".as_slice(), b"status".as_slice()]);
        assert!(parsed.iter().all(|e| e.kind == Kind::Tree));
        assert_eq!(parsed[0].id, tree.get_name("plans").expect("plans").id());
        assert!(parse_tree(&raw.data()[..raw.data().len() - 3]).is_err());
    }
}
