//! Git as the source of plans: a private bare clone of the remote, fetched on demand.
//!
//! rollgate never works in a user's checkout: it keeps its own bare repository under
//! its state directory, fetches the tracked branch from the remote (a path, `file://`,
//! ssh or https URL), reads snapshots straight from commit trees, and pushes from there.
//! Invariant: tree entries that are symlinks or submodules, or blobs over the size cap,
//! are refused with a diagnostic and never read.
//!
//! Speed: libgit2 caches no tree over 4 KiB, so `Tree::get_path` re-reads (inflates and
//! re-hashes) a 1,000-entry `status/` tree for every file it finds there. Per-file reads
//! go through `Folders` (each folder's tree read once per call) and `file_at` keeps the
//! listing of the last few (commit, folder) pairs; a commit never changes, so neither
//! does its listing.
//!
//! libgit2 re-hashes every object it reads to check its id (strict hash verification),
//! which at 10,000 plans was the SHA-1 of two 450 KB trees per read. The clone turns it
//! off (`tune_libgit2`, process-wide), as Git itself does outside `fsck`: every object
//! in it was hashed on the way in, by `git fetch` (index-pack computes each object's id
//! from its content) or by rollgate's own writes.
//!
//! One job over 600 lines, kept in one file: the daemon's clone: snapshots, diffs,
//! commit walks, trailers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use git2::{ObjectType, Oid, Repository};

use super::{SETTINGS_FILE, Snapshot, is_shard_folder, is_status_path, is_yaml, status_shard};
use crate::model::settings::LayoutSetting;
use crate::model::yaml::MAX_FILE_BYTES;
use crate::model::{Code, Diagnostic};

/// The folders (and the one file) rollgate reads from a tree.
pub const WATCHED: &[&str] = &[SETTINGS_FILE, "plans", "status", "policies"];

/// At most this many entries in one watched folder of a revision (a 10,000-plan
/// repository fits twice over).
pub const MAX_FOLDER_ENTRIES: usize = 25_000;
/// At most this many bytes of rollgate files read from one revision, all folders
/// together. Checked on blob headers before any blob is read: 2,000 tree entries naming
/// one 1 MB blob pack into a few KB but would read as 2 GB.
pub const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// A file's good content (`None`: absent) and the commits, newest first, whose later
/// changes to it were not trusted.
pub type Distrusted = (Option<Vec<u8>>, Vec<Oid>);

/// A revision refused before any of its files was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "{folder}/ holds {entries} entries; rollgate reads at most {MAX_FOLDER_ENTRIES} per folder (the revision was refused before reading any file)"
    )]
    TooManyEntries { folder: String, entries: usize },
    #[error(
        "the revision's rollgate files come to {bytes} bytes; rollgate reads at most {MAX_SNAPSHOT_BYTES} bytes per revision (refused before reading any file)"
    )]
    TooLarge { bytes: usize },
}

/// The trailer that marks rollgate's own commits.
pub const TRAILER_PLAN: &str = "Rollgate-Plan";
pub const TRAILER_COMMAND: &str = "Rollgate-Command";
/// The trailer of the commit that moves the status files to another layout.
pub const TRAILER_STATUS_LAYOUT: &str = crate::writeback::messages::STATUS_LAYOUT;

pub struct GitSource {
    repo: Repository,
    remote: Remote,
    branch: String,
    /// `file_at`'s folder listings, most recently used last (at most `LISTINGS`).
    listings: std::sync::Mutex<Vec<Listing>>,
    /// The root tree of the commits read last (at most `TREES_OF`), most recent last: a
    /// commit is immutable, and libgit2 does not cache one over 4 KiB, which a batch
    /// commit's message of one trailer block per plan is, so every `find_commit` of such a
    /// head read and inflated it again (about a dozen times per plan per pass).
    trees_of: std::sync::Mutex<Vec<(Oid, Oid)>>,
    /// The pack files in the clone when `repo` was opened (`forget_old_packs`).
    packs: BTreeSet<std::ffi::OsString>,
}

/// How many folder listings (by the folder's tree id) `file_at` and
/// `artifact_introduced` keep: a pass reads at the head it started from and at the
/// heads its flushes pushed, and status commits leave `plans/` as it is.
const LISTINGS: usize = 4;

/// How many commits' root trees `GitSource::tree_of` keeps.
const TREES_OF: usize = 8;

/// The readable files of one folder of one commit: name → blob (symlinks, submodules
/// and subfolders left out, as `file_at` never reads them), over the tree object as
/// stored. A map of 10,000 names was 10,000 allocations, 5 ms of every reaction to a
/// push in a 10,000-plan repository (#21); this is one copy of the object and an
/// index of where each name is.
struct Listing {
    /// The folder's tree: commits that leave the folder as it is (every status commit,
    /// for `plans/`) share one listing.
    tree: Oid,
    /// The tree object: `<octal mode> <name>\0<20-byte id>`, repeated.
    raw: Box<[u8]>,
    /// Where each readable file's name is in `raw` (its id follows the name's NUL), in
    /// name order.
    blobs: Vec<(u32, u32)>,
    /// `status/` only: its shard folders (`StatusLayout::Sharded`), the same way.
    shards: Vec<(u32, u32)>,
}

impl Listing {
    fn read(repo: &Repository, tree: Oid, folder: &str) -> Result<Self> {
        let raw: Box<[u8]> = repo.odb()?.read(tree)?.data().into();
        let bad = || anyhow::anyhow!("tree {tree} is malformed");
        let (mut blobs, mut shards) = (Vec::new(), Vec::new());
        let mut at = 0usize;
        while at < raw.len() {
            let space = at + raw[at..].iter().position(|&b| b == b' ').ok_or_else(bad)?;
            let start = space + 1;
            let nul = start + raw[start..].iter().position(|&b| b == 0).ok_or_else(bad)?;
            if nul + 21 > raw.len() {
                return Err(bad());
            }
            let span = (
                u32::try_from(start).map_err(|_| bad())?,
                u32::try_from(nul).map_err(|_| bad())?,
            );
            let name = &raw[start..nul];
            match &raw[at..space] {
                // A file (`100644`, `100755`, an old `100664`); not a symlink (`120000`).
                mode if mode.starts_with(b"10") => blobs.push(span),
                b"40000" | b"040000"
                    if folder == "status"
                        && std::str::from_utf8(name).is_ok_and(is_shard_folder) =>
                {
                    shards.push(span);
                }
                _ => {}
            }
            at = nul + 21;
        }
        // Git's order puts a folder's name as if it ended in `/`: files among themselves
        // are in name order already; sorted anyway, so a look-up never depends on it.
        let by_name = |a: &(u32, u32), b: &(u32, u32)| {
            raw[a.0 as usize..a.1 as usize].cmp(&raw[b.0 as usize..b.1 as usize])
        };
        blobs.sort_by(by_name);
        shards.sort_by(by_name);
        Ok(Self {
            tree,
            raw,
            blobs,
            shards,
        })
    }

    /// The id of the entry named `name` in `entries` (`blobs` or `shards`).
    fn find(&self, entries: &[(u32, u32)], name: &str) -> Option<Oid> {
        let i = entries
            .binary_search_by(|&(start, end)| {
                self.raw[start as usize..end as usize].cmp(name.as_bytes())
            })
            .ok()?;
        let id = entries[i].1 as usize + 1;
        Oid::from_bytes(&self.raw[id..id + 20]).ok()
    }
}

/// Entries of one tree by path, each first-level folder's tree read once (see the
/// module header); the same answers as `Tree::get_path`.
struct Folders<'r> {
    repo: &'r Repository,
    tree: git2::Tree<'r>,
    subs: std::collections::HashMap<String, Option<git2::Tree<'r>>>,
}

impl<'r> Folders<'r> {
    fn new(repo: &'r Repository, tree: git2::Tree<'r>) -> Self {
        Self {
            repo,
            tree,
            subs: std::collections::HashMap::new(),
        }
    }

    fn entry(&mut self, path: &str) -> Option<git2::TreeEntry<'static>> {
        self.located(path).map(|(e, _)| e)
    }

    /// Like `entry`, and whether a status file was found in its shard folder
    /// (`status/<hh>/<file>` for the logical `status/<file>`, which wins over a flat one).
    fn located(&mut self, path: &str) -> Option<(git2::TreeEntry<'static>, bool)> {
        if is_status_path(path)
            && let Some(file) = path.strip_prefix("status/")
        {
            let hh = status_shard(file);
            let key = format!("status/{hh}");
            if !self.subs.contains_key(&key) {
                // Through the cached `status` folder: a flat one of 10,000 entries is
                // read once per call, not once per file.
                let shard = self
                    .folder("status")
                    .and_then(|status| status.get_name(&hh).map(|e| e.to_owned()))
                    .filter(|e| e.kind() == Some(ObjectType::Tree))
                    .and_then(|e| self.repo.find_tree(e.id()).ok());
                self.subs.insert(key.clone(), shard);
            }
            let sub = self.subs.get(&key).and_then(Option::as_ref);
            if let Some(e) = sub.and_then(|t| t.get_name(file)) {
                return Some((e.to_owned(), true));
            }
        }
        self.flat_entry(path).map(|e| (e, false))
    }

    fn flat_entry(&mut self, path: &str) -> Option<git2::TreeEntry<'static>> {
        let Some((folder, rest)) = path.split_once('/') else {
            return self.tree.get_name(path).map(|e| e.to_owned());
        };
        if folder.is_empty() || rest.is_empty() || rest.contains('/') {
            return self.tree.get_path(Path::new(path)).ok();
        }
        self.folder(folder)?.get_name(rest).map(|e| e.to_owned())
    }

    /// The first-level folder `name`'s tree, read once.
    fn folder(&mut self, name: &str) -> Option<&git2::Tree<'r>> {
        let (tree, repo) = (&self.tree, self.repo);
        self.subs
            .entry(name.to_owned())
            .or_insert_with(|| {
                let e = tree.get_name(name)?;
                (e.kind() == Some(ObjectType::Tree))
                    .then(|| repo.find_tree(e.id()).ok())
                    .flatten()
            })
            .as_ref()
    }
}

/// One commit, as the reconciler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub id: Oid,
    pub summary: String,
    pub author: String,
    pub time: i64,
    pub trailers: Vec<(String, String)>,
}

impl CommitInfo {
    pub fn trailer(&self, key: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Written by rollgate itself (a status, revert or restore commit): never reacted to.
    /// Command commits (`Rollgate-Command`) are made for humans and are acted on.
    pub fn is_rollgate(&self) -> bool {
        (self.trailer(TRAILER_PLAN).is_some() || self.trailer(TRAILER_STATUS_LAYOUT).is_some())
            && self.trailer(TRAILER_COMMAND).is_none()
    }
}

pub use super::remote::set_token_source;
use super::remote::{GitAuth, Remote, RemoteUrl};

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("url", &self.url())
            .field("branch", &self.branch)
            .finish()
    }
}

impl GitSource {
    /// Open (or create) the private bare clone in `work_dir` for `url`, tracking `branch`,
    /// with the configured credentials (`GitAuth::configured`: flags, `ROLLGATE_GIT_*`).
    pub fn open(url: &str, work_dir: &Path, branch: &str) -> Result<Self> {
        Self::open_with(url, work_dir, branch, GitAuth::configured())
    }

    /// Like [`GitSource::open`], with these credentials and verification settings.
    pub fn open_with(url: &str, work_dir: &Path, branch: &str, auth: GitAuth) -> Result<Self> {
        let parsed = RemoteUrl::parse(url)?;
        let url = parsed.as_str();
        std::fs::create_dir_all(work_dir)
            .with_context(|| format!("cannot create {}", work_dir.display()))?;
        claim(work_dir)?;
        tune_libgit2();
        let repo = match Repository::open_bare(work_dir) {
            Ok(r) => r,
            Err(_) => Repository::init_bare(work_dir)
                .with_context(|| format!("cannot create a repository in {}", work_dir.display()))?,
        };
        match repo.find_remote("origin") {
            Ok(r) if r.url().ok() == Some(url) => {}
            Ok(_) => repo.remote_set_url("origin", url)?,
            Err(_) => {
                repo.remote("origin", url)?;
            }
        }
        Ok(Self {
            packs: pack_files(&repo),
            repo,
            remote: Remote::new(parsed, auth),
            branch: branch.to_owned(),
            listings: std::sync::Mutex::new(Vec::new()),
            trees_of: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Open the clone afresh when its pack files changed since it was opened (a fetch of
    /// 100 objects or more, `git gc`), so libgit2 lets go of the packs it read: a
    /// `Repository` keeps every pack it ever opened, each with its index mapped and a
    /// delta-base cache of up to 16 MiB, even once `git gc` deleted it, and its object
    /// cache of commits and small trees grows to 256 MiB; a daemon that fetches for
    /// months held them all (#21). The kept folder listings stay (they are by tree id).
    /// Returns whether the clone was opened afresh.
    pub fn forget_old_packs(&mut self) -> Result<bool> {
        let now = pack_files(&self.repo);
        if now == self.packs {
            return Ok(false);
        }
        self.repo = Repository::open_bare(self.repo.path())
            .with_context(|| format!("cannot reopen {}", self.repo.path().display()))?;
        self.packs = now;
        Ok(true)
    }

    /// The remote, for fetch and push.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The root tree of `commit`, from the commits read last when it is one of them.
    pub fn tree_of(&self, commit: Oid) -> Result<Oid> {
        let mut kept = self.trees_of.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(_, tree)) = kept.iter().rev().find(|(c, _)| *c == commit) {
            return Ok(tree);
        }
        let tree = self.repo.find_commit(commit)?.tree_id();
        if kept.len() >= TREES_OF {
            kept.remove(0);
        }
        kept.push((commit, tree));
        Ok(tree)
    }

    /// The root tree of `commit` (`tree_of`), read.
    fn root_tree(&self, commit: Oid) -> Result<git2::Tree<'_>> {
        Ok(self.repo.find_tree(self.tree_of(commit)?)?)
    }

    /// True when `commit` changes no file: its tree is its first parent's (a pure
    /// command commit, as `rollgate promote` and `git commit --allow-empty` make). A root
    /// commit or an unreadable one is not.
    pub fn changes_nothing(&self, commit: Oid) -> bool {
        self.repo
            .find_commit(commit)
            .ok()
            .and_then(|c| Some((c.tree_id(), c.parent(0).ok()?.tree_id())))
            .is_some_and(|(tree, parent)| tree == parent)
    }

    /// Whether `commit` changes anything rollgate reads (`WATCHED`) against its first
    /// parent: a root entry of those names differs. A root commit, or one that cannot
    /// be read, does.
    pub fn touches_watched(&self, commit: Oid) -> bool {
        let Ok(c) = self.repo.find_commit(commit) else {
            return true;
        };
        let (Ok(tree), Some(Ok(parent))) = (c.tree(), c.parent(0).ok().map(|p| p.tree())) else {
            return true;
        };
        WATCHED.iter().any(|name| {
            let id = |t: &git2::Tree<'_>| t.get_name(name).map(|e| (e.id(), e.filemode()));
            id(&tree) != id(&parent)
        })
    }

    /// The first parent of `commit` (`None`: a root commit, or unreadable).
    pub fn first_parent(&self, commit: Oid) -> Option<Oid> {
        self.repo.find_commit(commit).ok()?.parent_id(0).ok()
    }

    pub fn url(&self) -> &str {
        self.remote.url().as_str()
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// For a local path remote, the folders whose change can mean the branch moved (for
    /// `notify`): `refs/heads`, then the git dir (for `packed-refs`).
    pub fn local_ref_paths(&self) -> Option<Vec<PathBuf>> {
        if self.url().starts_with("file://") {
            return None;
        }
        let git_dir = super::path_remote::PathRemote::at(self.url())?
            .git_dir()
            .to_path_buf();
        // First the branches (watched recursively), then the git dir itself (watched
        // for `packed-refs` only).
        Some(vec![git_dir.join("refs/heads"), git_dir])
    }

    fn tracking_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.branch)
    }

    /// Fetch the branch; returns its head on the remote.
    pub fn fetch(&self) -> Result<Oid> {
        let spec = format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.branch);
        self.remote.fetch(self.repo.path(), &[spec])?;
        crate::telemetry::global()
            .git_fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.head()
    }

    /// The last fetched head of the branch.
    pub fn head(&self) -> Result<Oid> {
        let r = self
            .repo
            .find_reference(&self.tracking_ref())
            .with_context(|| format!("branch {} not found on {}", self.branch, self.url()))?;
        r.target()
            .ok_or_else(|| anyhow!("branch {} is a symbolic reference", self.branch))
    }

    /// Read the rollgate files of `commit` into a snapshot.
    pub fn snapshot(&self, commit: Oid) -> Result<Snapshot> {
        let tree = self.root_tree(commit)?;
        let mut folders = Folders::new(&self.repo, tree);
        let paths: Vec<String> = WATCHED.iter().map(|p| (*p).to_owned()).collect();
        self.within_budget(&mut folders, &paths, 0)?;
        let mut snap = Snapshot::default();
        for top in WATCHED {
            self.read_path(&mut folders, top, &mut snap)?;
        }
        Ok(snap)
    }

    /// Refresh `snap` (taken at some earlier commit) to `commit`, given the paths that changed.
    pub fn update_snapshot(
        &self,
        snap: &mut Snapshot,
        commit: Oid,
        changed: &[String],
    ) -> Result<()> {
        let tree = self.root_tree(commit)?;
        let mut folders = Folders::new(&self.repo, tree);
        // A set: a move of the layout changes every status file (10,000 × 20,000 compares).
        let changing: std::collections::HashSet<&str> =
            changed.iter().map(String::as_str).collect();
        // Everything, less what changes: a look-up per changed path, not per file.
        let kept = snap.files.values().map(Vec::len).sum::<usize>()
            - changing
                .iter()
                .filter_map(|p| snap.files.get(*p))
                .map(Vec::len)
                .sum::<usize>();
        self.within_budget(&mut folders, changed, kept)?;
        snap.refused.retain(|d| !changing.contains(d.file.as_str()));
        for path in changed {
            snap.files.remove(path);
            snap.sharded.remove(path);
            self.read_path(&mut folders, path, snap)?;
        }
        Ok(())
    }

    /// Refuse (with a `SnapshotError`) when reading `paths` of `tree` on top of `kept`
    /// bytes would pass the budgets; only tree entries and blob headers are looked at.
    fn within_budget(
        &self,
        folders: &mut Folders<'_>,
        paths: &[String],
        kept: usize,
    ) -> Result<()> {
        let odb = self.repo.odb()?;
        let mut bytes = kept;
        let size_of = |e: &git2::TreeEntry<'_>| -> Result<usize> {
            if e.kind() != Some(ObjectType::Blob) || e.filemode() == 0o120000 {
                return Ok(0);
            }
            let (size, _) = odb.read_header(e.id())?;
            // Files over the per-file cap are refused one by one, never read.
            Ok(if size > MAX_FILE_BYTES { 0 } else { size })
        };
        let mut per_folder: std::collections::BTreeMap<&str, usize> = BTreeMap::new();
        for path in paths {
            let Some(entry) = folders.entry(path) else {
                continue;
            };
            if entry.kind() == Some(ObjectType::Tree) && !path.contains('/') {
                let sub = self.repo.find_tree(entry.id())?;
                // The entries of a folder, its status shard folders' included.
                let mut entries = sub.len();
                let too_many = |entries: usize| SnapshotError::TooManyEntries {
                    folder: path.clone(),
                    entries,
                };
                if entries > MAX_FOLDER_ENTRIES {
                    return Err(too_many(entries).into());
                }
                for e in sub.iter() {
                    let Ok(n) = e.name() else { continue };
                    if wanted(&format!("{path}/{n}")) {
                        bytes = bytes.saturating_add(size_of(&e)?);
                    } else if path == "status"
                        && is_shard_folder(n)
                        && e.kind() == Some(ObjectType::Tree)
                    {
                        let shard = self.repo.find_tree(e.id())?;
                        entries = entries.saturating_add(shard.len());
                        if entries > MAX_FOLDER_ENTRIES {
                            return Err(too_many(entries).into());
                        }
                        for f in shard.iter() {
                            if f.name().is_ok_and(|f| is_yaml(f) && status_shard(f) == n) {
                                bytes = bytes.saturating_add(size_of(&f)?);
                            }
                        }
                    }
                    if bytes > MAX_SNAPSHOT_BYTES {
                        return Err(SnapshotError::TooLarge { bytes }.into());
                    }
                }
            } else if wanted(path) {
                if let Some((folder, _)) = path.split_once('/') {
                    let n = per_folder.entry(folder).or_default();
                    *n += 1;
                    if *n > MAX_FOLDER_ENTRIES {
                        return Err(SnapshotError::TooManyEntries {
                            folder: folder.to_owned(),
                            entries: *n,
                        }
                        .into());
                    }
                }
                bytes = bytes.saturating_add(size_of(&entry)?);
            }
            if bytes > MAX_SNAPSHOT_BYTES {
                return Err(SnapshotError::TooLarge { bytes }.into());
            }
        }
        Ok(())
    }

    fn read_path(&self, folders: &mut Folders<'_>, path: &str, snap: &mut Snapshot) -> Result<()> {
        let Some((entry, sharded)) = folders.located(path) else {
            return Ok(());
        };
        match entry.kind() {
            Some(ObjectType::Tree) => {
                if path.contains('/') {
                    return Ok(()); // one level only: plans/<name>.yaml
                }
                let sub = self.repo.find_tree(entry.id())?;
                let mut shards = Vec::new();
                for e in sub.iter() {
                    let Ok(name) = e.name() else { continue };
                    let child = format!("{path}/{name}");
                    if wanted(&child) {
                        self.read_entry(&child, &e, snap)?;
                    } else if path == "status"
                        && is_shard_folder(name)
                        && e.kind() == Some(ObjectType::Tree)
                    {
                        shards.push((name.to_owned(), e.id()));
                    }
                }
                // After the flat files: a status file in its shard folder wins.
                for (hh, id) in shards {
                    for e in self.repo.find_tree(id)?.iter() {
                        let Ok(name) = e.name() else { continue };
                        if is_yaml(name) && status_shard(name) == hh {
                            let logical = format!("status/{name}");
                            snap.refused.retain(|d| d.file != logical);
                            snap.files.remove(&logical);
                            self.read_entry(&logical, &e, snap)?;
                            snap.sharded.insert(logical);
                        }
                    }
                }
            }
            _ => {
                if wanted(path) {
                    self.read_entry(path, &entry, snap)?;
                    if sharded {
                        snap.sharded.insert(path.to_owned());
                    }
                }
            }
        }
        Ok(())
    }

    fn read_entry(&self, path: &str, e: &git2::TreeEntry<'_>, snap: &mut Snapshot) -> Result<()> {
        match e.filemode() {
            0o120000 => {
                snap.refused.push(
                    Diagnostic::error(path, None, Code::UnsafePath, "refusing to follow a symlink")
                        .with_help("commit the file itself; rollgate never reads through links"),
                );
                return Ok(());
            }
            0o160000 => {
                snap.refused.push(Diagnostic::error(
                    path,
                    None,
                    Code::UnsafePath,
                    "a submodule is not a file",
                ));
                return Ok(());
            }
            _ => {}
        }
        if e.kind() != Some(ObjectType::Blob) {
            return Ok(());
        }
        let (size, _) = self.repo.odb()?.read_header(e.id())?;
        if size > MAX_FILE_BYTES {
            snap.refused.push(Diagnostic::error(
                path,
                None,
                Code::InputLimit,
                format!("file is {size} bytes; the limit is {MAX_FILE_BYTES}"),
            ));
            return Ok(());
        }
        let blob = self.repo.find_blob(e.id())?;
        snap.files.insert(path.to_owned(), blob.content().to_vec());
        Ok(())
    }

    /// Paths under the watched folders that differ between two commits.
    pub fn changed_paths(&self, old: Option<Oid>, new: Oid) -> Result<Vec<String>> {
        self.diff_paths(old, new, WATCHED)
    }

    /// Every path that differs between two commits, in or out of the watched folders
    /// (whether a revert of `new` would touch anything but rollgate's files).
    pub fn all_changed_paths(&self, old: Option<Oid>, new: Oid) -> Result<Vec<String>> {
        self.diff_paths(old, new, &[])
    }

    fn diff_paths(&self, old: Option<Oid>, new: Oid, only: &[&str]) -> Result<Vec<String>> {
        let new_tree = self.root_tree(new)?;
        let old_tree = match old {
            Some(o) => Some(self.root_tree(o)?),
            None => None,
        };
        let mut paths = Vec::new();
        diff_trees(
            &self.repo,
            old_tree.as_ref(),
            Some(&new_tree),
            "",
            only,
            &mut paths,
        )?;
        // A status file by its logical path, whichever layout stores it.
        let out: BTreeSet<String> = paths
            .iter()
            .map(|p| super::logical_status_path(p).into_owned())
            .collect();
        Ok(out.into_iter().collect())
    }

    /// First-parent commits after `old` up to `new`, oldest first (at most `limit`).
    pub fn commits_between(
        &self,
        old: Option<Oid>,
        new: Oid,
        limit: usize,
    ) -> Result<Vec<CommitInfo>> {
        let mut walk = self.repo.revwalk()?;
        walk.push(new)?;
        walk.simplify_first_parent()?;
        if let Some(o) = old {
            walk.hide(o)?;
        }
        let mut out = Vec::new();
        for id in walk.take(limit) {
            out.push(self.commit_info(id?)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Which of `paths` (all under `folder/`, e.g. `status/`) hold at `head` content that a
    /// commit `trusted` refuses wrote last, and the content before it: walking first-parent
    /// history back from `head` (at most `limit` commits), a path's last change by a
    /// trusted commit is its good content (`None`: deleted or absent). The repository's
    /// root commit (its initial import) counts as trusted; a path not changed within
    /// `limit` is taken as it is. Each entry: path → (good content, untrusted commits).
    pub fn untrusted_changes(
        &self,
        head: Oid,
        folder: &str,
        paths: &[String],
        limit: usize,
        trusted: &dyn Fn(&CommitInfo) -> bool,
    ) -> Result<BTreeMap<String, Distrusted>> {
        let mut open: BTreeMap<String, Vec<Oid>> =
            paths.iter().map(|p| (p.clone(), Vec::new())).collect();
        let mut found = BTreeMap::new();
        let sub = |c: &git2::Commit<'_>| -> Option<Oid> {
            c.tree()
                .ok()?
                .get_path(Path::new(folder.trim_end_matches('/')))
                .ok()
                .map(|e| e.id())
        };
        let mut walk = self.repo.revwalk()?;
        walk.push(head)?;
        walk.simplify_first_parent()?;
        // The parent's folders, read for one commit, are the next commit's own: each
        // folder tree of the walk is read once, not twice.
        let mut carried: Option<(Oid, Folders<'_>)> = None;
        let blob_at = |at: &mut Option<Folders<'_>>, path: &str| -> Option<Oid> {
            at.as_mut()?.entry(path).map(|e| e.id())
        };
        for id in walk.take(limit) {
            if open.is_empty() {
                break;
            }
            let c = self.repo.find_commit(id?)?;
            let parent = c.parent(0).ok();
            let kept = carried.take();
            if let Some(p) = &parent
                && sub(&c) == sub(p)
            {
                continue;
            }
            // Each side's folder tree read once for all paths (see the module header).
            let mut at_c = match kept {
                Some((of, folders)) if of == c.id() => Some(folders),
                _ => c.tree().ok().map(|t| Folders::new(&self.repo, t)),
            };
            let mut at_p = parent
                .as_ref()
                .and_then(|p| p.tree().ok())
                .map(|t| Folders::new(&self.repo, t));
            let changed: Vec<String> = open
                .keys()
                .filter(|path| blob_at(&mut at_c, path) != blob_at(&mut at_p, path))
                .cloned()
                .collect();
            if let (Some(p), Some(folders)) = (&parent, at_p) {
                carried = Some((p.id(), folders));
            }
            if changed.is_empty() {
                continue;
            }
            let ok = parent.is_none() || trusted(&self.commit_info(c.id())?);
            for path in changed {
                if ok {
                    let untrusted = open.remove(&path).unwrap_or_default();
                    if !untrusted.is_empty() {
                        let good = match blob_at(&mut at_c, &path) {
                            Some(b) => Some(self.repo.find_blob(b)?.content().to_vec()),
                            None => None,
                        };
                        found.insert(path, (good, untrusted));
                    }
                } else if let Some(by) = open.get_mut(&path) {
                    by.push(c.id());
                }
            }
        }
        // Changed only by untrusted commits back to the limit (or to the root's parent):
        // no good content is known.
        for (path, by) in open {
            if !by.is_empty() {
                found.insert(path, (None, by));
            }
        }
        Ok(found)
    }

    pub fn commit_info(&self, id: Oid) -> Result<CommitInfo> {
        let c = self.repo.find_commit(id)?;
        let msg = c.message().unwrap_or("");
        let trailers = git2::message_trailers_strs(msg)
            .map(|t| {
                t.iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let author = c.author();
        Ok(CommitInfo {
            id,
            summary: c.summary().ok().flatten().unwrap_or("").to_owned(),
            author: format!(
                "{} <{}>",
                author.name().unwrap_or(""),
                author.email().unwrap_or("")
            ),
            time: c.time().seconds(),
            trailers,
        })
    }

    /// The commit (first-parent from `head`) where the plan file at `path` started to
    /// name `artifact`: later edits that kept the artifact are not it.
    pub fn artifact_introduced(
        &self,
        head: Oid,
        path: &str,
        artifact: &str,
        limit: usize,
    ) -> Result<Option<Oid>> {
        // Most commits (status commits) leave the plan's blob as it is: parse once per blob.
        let mut last: Option<(Oid, Option<String>)> = None;
        // The plan's blob per commit through the kept folder listings (`listed_blob`):
        // a `get_path` re-read the whole `plans/` tree per commit and plan, which in a
        // 1,000-plan change was most of the libgit2 time of the pass that records Pending.
        let blob_at = |c: &git2::Commit<'_>| -> Option<Oid> {
            match path.split_once('/') {
                Some((folder, name))
                    if !folder.is_empty() && !name.is_empty() && !name.contains('/') =>
                {
                    self.listed_blob(c.id(), folder, name).ok().flatten()
                }
                _ => c
                    .tree()
                    .ok()?
                    .get_path(Path::new(path))
                    .ok()
                    .map(|e| e.id()),
            }
        };
        let mut artifact_at = |c: &git2::Commit<'_>| -> Option<String> {
            let id = blob_at(c)?;
            if let Some((seen, a)) = &last
                && *seen == id
            {
                return a.clone();
            }
            let blob = self.repo.find_blob(id).ok()?;
            let parsed = std::str::from_utf8(blob.content()).ok().and_then(|text| {
                let root = crate::model::yaml::parse(path, text).ok()?;
                root.at(&[
                    crate::model::yaml::PathSeg::Key("spec"),
                    crate::model::yaml::PathSeg::Key("artifact"),
                ])?
                .as_str()
                .map(str::to_owned)
            });
            last = Some((id, parsed.clone()));
            parsed
        };
        let mut walk = self.repo.revwalk()?;
        walk.push(head)?;
        walk.simplify_first_parent()?;
        let mut candidate = None;
        for id in walk.take(limit) {
            let c = self.repo.find_commit(id?)?;
            if artifact_at(&c).as_deref() != Some(artifact) {
                break;
            }
            candidate = Some(c.id());
        }
        Ok(candidate)
    }

    /// A file's content at a commit (`None`: absent, a symlink or not a file).
    pub fn file_at(&self, commit: Oid, path: &str) -> Result<Option<Vec<u8>>> {
        let blob = match path.split_once('/') {
            Some((folder, name))
                if !folder.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                self.listed_blob(commit, folder, name)?
            }
            _ => {
                let tree = self.root_tree(commit)?;
                let Ok(entry) = tree.get_path(Path::new(path)) else {
                    return Ok(None);
                };
                if entry.filemode() == 0o120000 || entry.kind() != Some(ObjectType::Blob) {
                    return Ok(None);
                }
                Some(entry.id())
            }
        };
        match blob {
            Some(id) => Ok(Some(self.repo.find_blob(id)?.content().to_vec())),
            None => Ok(None),
        }
    }

    /// The layout `setting` picks at `commit` ([`LayoutSetting::resolve`]): the plan files
    /// in `plans/` counted, and the status files stored sharded now when `status/` holds
    /// a shard folder. For a writer on its own; the daemon picks once per head, from its
    /// snapshot, and writes with that layout fixed.
    pub fn status_layout_at(
        &self,
        commit: Oid,
        setting: LayoutSetting,
    ) -> Result<super::StatusLayout> {
        if let LayoutSetting::Fixed(layout) = setting {
            return Ok(layout);
        }
        let root = self.root_tree(commit)?;
        let folder = |name: &str| {
            root.get_name(name)
                .filter(|e| e.kind() == Some(ObjectType::Tree))
                .map(|e| self.repo.find_tree(e.id()))
                .transpose()
        };
        let plans = folder("plans")?.map_or(0, |t| {
            t.iter()
                .filter(|e| {
                    e.kind() == Some(ObjectType::Blob)
                        && e.filemode() != 0o120000
                        && e.name().is_ok_and(is_yaml)
                })
                .count()
        });
        let sharded = folder("status")?.is_some_and(|t| {
            t.iter()
                .any(|e| e.kind() == Some(ObjectType::Tree) && e.name().is_ok_and(is_shard_folder))
        });
        let now = if sharded {
            super::StatusLayout::Sharded
        } else {
            super::StatusLayout::Flat
        };
        Ok(setting.resolve(plans, now))
    }

    /// The status files at `commit` not stored where `layout` keeps them (a plan's status
    /// in both places counts too), each as an edit of its logical path with the content
    /// that wins (the shard folder's): written through the `Writer`, each moves.
    pub fn misplaced_status(
        &self,
        commit: Oid,
        layout: super::StatusLayout,
    ) -> Result<Vec<crate::writeback::Edit>> {
        let root = self.root_tree(commit)?;
        let (flat, sharded) = status_places(&self.repo, &root)?;
        let misplaced = match layout {
            super::StatusLayout::Flat => &sharded,
            super::StatusLayout::Sharded => &flat,
        };
        let mut out = Vec::new();
        for logical in misplaced.keys() {
            // The content that wins: the shard folder's, else the flat file's.
            let id = sharded.get(logical).or_else(|| flat.get(logical)).copied();
            if let Some(id) = id {
                out.push(crate::writeback::Edit {
                    path: logical.clone(),
                    content: Some(self.repo.find_blob(id)?.content().to_vec()),
                });
            }
        }
        Ok(out)
    }

    /// The blob `folder/name` names at `commit`, from the kept listing of that folder
    /// (read once per commit and folder; see the module header).
    fn listed_blob(&self, commit: Oid, folder: &str, name: &str) -> Result<Option<Oid>> {
        // The root tree is small (libgit2 caches it); the folder's id names its content.
        let root = self.root_tree(commit)?;
        let Some(tree) = root
            .get_name(folder)
            .filter(|e| e.kind() == Some(ObjectType::Tree))
            .map(|e| e.id())
        else {
            return Ok(None);
        };
        let mut listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        let at = listings.iter().position(|l| l.tree == tree);
        let listing = match at {
            Some(i) => listings.remove(i),
            None => Listing::read(&self.repo, tree, folder)?,
        };
        // A status file in its shard folder wins over a flat one (`StatusLayout`).
        let sharded = match listing.find(&listing.shards, &status_shard(name)) {
            Some(id) if is_yaml(name) => self
                .repo
                .find_tree(id)?
                .get_name(name)
                .filter(|e| e.kind() == Some(ObjectType::Blob) && e.filemode() != 0o120000)
                .map(|e| e.id()),
            _ => None,
        };
        let blob = sharded.or_else(|| listing.find(&listing.blobs, name));
        if listings.len() >= LISTINGS {
            listings.remove(0);
        }
        listings.push(listing);
        Ok(blob)
    }
}

/// The entry at `path` in the root tree `root`, a logical status path
/// (`status/<plan>.yaml`) looked up in its shard folder first (`StatusLayout`). For the
/// readers outside a `GitSource` (`history`, the CLI's commands, the notifier).
pub fn entry_at(root: &git2::Tree<'_>, path: &str) -> Option<git2::TreeEntry<'static>> {
    if is_status_path(path)
        && let Some(file) = path.strip_prefix("status/")
        && let Ok(e) = root.get_path(Path::new(&format!("status/{}/{file}", status_shard(file))))
    {
        return Some(e);
    }
    root.get_path(Path::new(path)).ok()
}

/// Every status file of the root tree `root`, flat or in its shard folder (which wins),
/// by logical path; symlinks and other entries left out.
pub fn status_entries(repo: &Repository, root: &git2::Tree<'_>) -> Result<BTreeMap<String, Oid>> {
    let (mut out, sharded) = status_places(repo, root)?;
    out.extend(sharded);
    Ok(out)
}

/// The status files of the root tree `root` by logical path: those stored flat, and
/// those stored in their shard folder (a plan may be in both).
fn status_places(
    repo: &Repository,
    root: &git2::Tree<'_>,
) -> Result<(BTreeMap<String, Oid>, BTreeMap<String, Oid>)> {
    let (mut flat, mut sharded) = (BTreeMap::new(), BTreeMap::new());
    let Ok(entry) = root.get_path(Path::new("status")) else {
        return Ok((flat, sharded));
    };
    let Ok(dir) = repo.find_tree(entry.id()) else {
        return Ok((flat, sharded));
    };
    let is_file =
        |e: &git2::TreeEntry<'_>| e.kind() == Some(ObjectType::Blob) && e.filemode() != 0o120000;
    for e in dir.iter() {
        let Ok(name) = e.name() else { continue };
        if is_file(&e) && is_yaml(name) {
            flat.insert(format!("status/{name}"), e.id());
        } else if is_shard_folder(name) && e.kind() == Some(ObjectType::Tree) {
            for f in repo.find_tree(e.id())?.iter() {
                if let Ok(file) = f.name()
                    && is_file(&f)
                    && is_yaml(file)
                    && status_shard(file) == name
                {
                    sharded.insert(format!("status/{file}"), f.id());
                }
            }
        }
    }
    Ok((flat, sharded))
}

/// libgit2's process-wide settings, set once: objects read are not hashed again (see the
/// module header).
/// The paths of files (blobs and submodules) that differ between two trees, under
/// `prefix`; at the root, only the top-level names in `only` (none: all). Both trees'
/// entries are walked side by side in Git's order (a folder's name sorts as if it ended
/// in `/`), and a folder with the same id on both sides is skipped unread: a commit that
/// changes one plan among 10,000 compares one folder's entries by id, where libgit2's
/// diff matched every entry against the path filter (5 ms of a push's reaction). The
/// result is libgit2's tree-to-tree diff without rename detection: a file added, deleted
/// or modified (content or mode), a file turned into a folder as the file and every
/// file under the folder.
fn diff_trees(
    repo: &Repository,
    old: Option<&git2::Tree<'_>>,
    new: Option<&git2::Tree<'_>>,
    prefix: &str,
    only: &[&str],
    out: &mut Vec<String>,
) -> Result<()> {
    use std::cmp::Ordering;
    let is_tree = |e: &git2::TreeEntry<'_>| e.kind() == Some(ObjectType::Tree);
    // At the root, only the names asked for.
    let wanted = |e: &git2::TreeEntry<'_>| {
        !prefix.is_empty() || only.is_empty() || only.iter().any(|o| o.as_bytes() == e.name_bytes())
    };
    // Git's order: the names byte by byte, a folder's as if followed by `/`.
    let order = |x: &git2::TreeEntry<'_>, y: &git2::TreeEntry<'_>| {
        let (n, m) = (x.name_bytes(), y.name_bytes());
        let common = n.len().min(m.len());
        n[..common].cmp(&m[..common]).then_with(|| {
            let next = |name: &[u8], e: &git2::TreeEntry<'_>| {
                name.get(common)
                    .copied()
                    .unwrap_or(if is_tree(e) { b'/' } else { 0 })
            };
            next(n, x).cmp(&next(m, y))
        })
    };
    // One side only: every file under it.
    let whole = |e: &git2::TreeEntry<'_>, out: &mut Vec<String>| -> Result<()> {
        if !wanted(e) {
            return Ok(());
        }
        let path = format!("{prefix}{}", String::from_utf8_lossy(e.name_bytes()));
        if is_tree(e) {
            let t = repo.find_tree(e.id())?;
            diff_trees(repo, None, Some(&t), &format!("{path}/"), &[], out)
        } else {
            out.push(path);
            Ok(())
        }
    };
    let (a_len, b_len) = (
        old.map_or(0, git2::Tree::len),
        new.map_or(0, git2::Tree::len),
    );
    let (mut i, mut j) = (0, 0);
    while i < a_len || j < b_len {
        let (x, y) = (old.and_then(|t| t.get(i)), new.and_then(|t| t.get(j)));
        let step = match (&x, &y) {
            (Some(x), Some(y)) => order(x, y),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match (step, x, y) {
            (Ordering::Less, Some(x), _) => {
                whole(&x, out)?;
                i += 1;
            }
            (Ordering::Greater, _, Some(y)) => {
                whole(&y, out)?;
                j += 1;
            }
            (Ordering::Equal, Some(x), Some(y)) => {
                if wanted(&x) && (x.id() != y.id() || x.filemode() != y.filemode()) {
                    let path = format!("{prefix}{}", String::from_utf8_lossy(x.name_bytes()));
                    if is_tree(&x) {
                        let (t, u) = (repo.find_tree(x.id())?, repo.find_tree(y.id())?);
                        diff_trees(repo, Some(&t), Some(&u), &format!("{path}/"), &[], out)?;
                    } else {
                        out.push(path);
                    }
                }
                i += 1;
                j += 1;
            }
            _ => break,
        }
    }
    Ok(())
}

fn tune_libgit2() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| git2::opts::strict_hash_verification(false));
}

/// Make this process the owner of the private clone, then clear the lock files a
/// killed predecessor may have left (a SIGKILL mid-fetch leaves `*.lock` behind, and
/// libgit2 would refuse every later fetch). Safe because the clone is private: a live
/// owner is detected by its pid file and refused.
fn claim(work_dir: &Path) -> Result<()> {
    let pid_file = work_dir.join("rollgate.pid");
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        && pid != std::process::id()
        && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.contains("rollgate"))
    {
        anyhow::bail!(
            "another rollgate (pid {pid}) is using {}; one writer per branch",
            work_dir.display()
        );
    }
    std::fs::write(&pid_file, std::process::id().to_string())
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    let mut stack = vec![work_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                if path.file_name().is_some_and(|n| n != "objects") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "lock") {
                tracing::info!(file = %path.display(), "removing a lock left by a previous run");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// The names of the pack files in `repo` (none when the folder cannot be read).
fn pack_files(repo: &Repository) -> BTreeSet<std::ffi::OsString> {
    std::fs::read_dir(repo.path().join("objects").join("pack"))
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.file_name()))
                .filter(|n| Path::new(n).extension().is_some_and(|x| x == "pack"))
                .collect()
        })
        .unwrap_or_default()
}

fn wanted(path: &str) -> bool {
    if path == SETTINGS_FILE {
        return true;
    }
    match path.split_once('/') {
        Some(("plans" | "status", rest)) => !rest.contains('/') && is_yaml(rest),
        Some(("policies", rest)) => {
            !rest.contains('/')
                && (rest.ends_with(".rego") || rest.ends_with(".json") || is_yaml(rest))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit on `main` of `repo` whose tree is built by `build` (on top of `parent`).
    fn commit(repo: &Repository, files: &[(&str, &[u8], i32)], parent: Option<Oid>) -> Oid {
        let mut folders: BTreeMap<&str, git2::TreeBuilder<'_>> = BTreeMap::new();
        let mut root = repo.treebuilder(None).expect("treebuilder");
        for (path, bytes, mode) in files {
            let blob = repo.blob(bytes).expect("blob");
            match path.split_once('/') {
                Some((folder, name)) => {
                    let b = folders
                        .entry(folder)
                        .or_insert_with(|| repo.treebuilder(None).expect("treebuilder"));
                    b.insert(name, blob, *mode).expect("insert");
                }
                None => {
                    root.insert(path, blob, *mode).expect("insert");
                }
            }
        }
        for (folder, b) in folders {
            let id = b.write().expect("tree");
            root.insert(folder, id, 0o040000).expect("insert");
        }
        commit_tree(repo, root.write().expect("tree"), parent)
    }

    /// A `GitSource` of `bare` cloned into `dir/clone` (not fetched yet).
    fn clone_of(bare: &Path, dir: &Path) -> GitSource {
        GitSource::open(bare.to_str().expect("utf-8"), &dir.join("clone"), "main").expect("open")
    }

    /// A commit of `tree` on `main` of `repo`, on top of `parent`.
    pub(super) fn commit_tree(repo: &Repository, tree: Oid, parent: Option<Oid>) -> Oid {
        let tree = repo.find_tree(tree).expect("tree");
        let sig = git2::Signature::now("t", "t@example.com").expect("sig");
        let parents: Vec<git2::Commit<'_>> = parent
            .map(|p| repo.find_commit(p).expect("parent"))
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(Some("refs/heads/main"), &sig, &sig, "c", &tree, &parents)
            .expect("commit")
    }

    /// A tree of `files` (nested paths, each with its mode), written bottom up.
    fn tree_of_files(repo: &Repository, files: &BTreeMap<String, (Vec<u8>, i32)>) -> Oid {
        let mut sub: BTreeMap<&str, BTreeMap<String, (Vec<u8>, i32)>> = BTreeMap::new();
        let mut b = repo.treebuilder(None).expect("treebuilder");
        for (path, (bytes, mode)) in files {
            match path.split_once('/') {
                Some((folder, rest)) => {
                    sub.entry(folder)
                        .or_default()
                        .insert(rest.to_owned(), (bytes.clone(), *mode));
                }
                None => {
                    let blob = repo.blob(bytes).expect("blob");
                    b.insert(path, blob, *mode).expect("insert");
                }
            }
        }
        for (folder, files) in sub {
            b.insert(folder, tree_of_files(repo, &files), 0o040000)
                .expect("insert");
        }
        b.write().expect("tree")
    }

    /// What libgit2's tree-to-tree diff names (both sides of each delta), sorted.
    fn libgit2_paths(repo: &Repository, old: Oid, new: Oid, only: &[&str]) -> Vec<String> {
        let mut opts = git2::DiffOptions::new();
        for p in only {
            opts.pathspec(p);
        }
        let (a, b) = (
            repo.find_tree(old).expect("a"),
            repo.find_tree(new).expect("b"),
        );
        let diff = repo
            .diff_tree_to_tree(Some(&a), Some(&b), Some(&mut opts))
            .expect("diff");
        let mut out = BTreeSet::new();
        for d in diff.deltas() {
            for f in [d.old_file(), d.new_file()] {
                if let Some(p) = f.path().and_then(Path::to_str) {
                    out.insert(p.to_owned());
                }
            }
        }
        out.into_iter().collect()
    }

    #[test]
    fn the_tree_walk_names_what_libgit2s_diff_names_for_any_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("repo");
        // Names whose order in Git differs from plain byte order once one is a folder
        // (`a` as a folder sorts as `a/`, after `a.b` and `a-b`), and the watched ones.
        let names = [
            "a",
            "a.b",
            "a-b",
            "a0",
            "plans",
            "status",
            "policies",
            "rollgate.yaml",
            "plans.d",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).expect("small")
        };
        let mut files: BTreeMap<String, (Vec<u8>, i32)> = BTreeMap::new();
        let mut trees = vec![tree_of_files(&repo, &files)];
        for round in 0..300 {
            for _ in 0..=next(4) {
                let depth = 1 + next(3);
                let path: Vec<&str> = (0..depth).map(|_| names[next(names.len())]).collect();
                let path = path.join("/");
                match next(5) {
                    0 => {
                        // Delete it, or everything under it.
                        files.retain(|p, _| p != &path && !p.starts_with(&format!("{path}/")));
                    }
                    k => {
                        // Write it (a file where a folder was, or the other way round,
                        // replaces what was there); now and then executable.
                        files.retain(|p, _| !p.starts_with(&format!("{path}/")));
                        let parts: Vec<&str> = path.split('/').collect();
                        for i in 1..parts.len() {
                            files.remove(&parts[..i].join("/"));
                        }
                        let mode = if k == 4 { 0o100755 } else { 0o100644 };
                        let text = format!("{path} {}\n", next(3));
                        files.insert(path, (text.into_bytes(), mode));
                    }
                }
            }
            trees.push(tree_of_files(&repo, &files));
            // Against the tree before, and against one further back.
            let new = trees[trees.len() - 1];
            for old in [trees[trees.len() - 2], trees[next(trees.len())]] {
                let (a, b) = (
                    repo.find_tree(old).expect("a"),
                    repo.find_tree(new).expect("b"),
                );
                for only in [&[][..], WATCHED] {
                    let mut ours = Vec::new();
                    diff_trees(&repo, Some(&a), Some(&b), "", only, &mut ours).expect("walk");
                    ours.sort();
                    ours.dedup();
                    assert_eq!(
                        ours,
                        libgit2_paths(&repo, old, new, only),
                        "round {round}, only {only:?}"
                    );
                }
            }
        }
    }

    const SHAPES: &[&str] = &[
        "status/a.yaml",
        "status/link.yaml",
        "status/missing.yaml",
        "status/deep/x.yaml",
        "status",
        "plans/a.yaml",
        "settings.yaml",
        "settings.yaml/x",
        "nowhere/a.yaml",
        "status/",
        "/status/a.yaml",
    ];

    #[test]
    fn regression_folders_answer_like_get_path_for_every_path_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("repo");
        let head = commit(
            &repo,
            &[
                ("status/a.yaml", b"a", 0o100644),
                ("status/link.yaml", b"a.yaml", 0o120000),
                ("plans/a.yaml", b"p", 0o100644),
                ("settings.yaml", b"s", 0o100644),
            ],
            None,
        );
        let tree = repo.find_commit(head).expect("c").tree().expect("tree");
        let mut folders = Folders::new(&repo, tree.clone());
        for path in SHAPES {
            let want = tree
                .get_path(Path::new(path))
                .ok()
                .map(|e| (e.id(), e.filemode()));
            let got = folders.entry(path).map(|e| (e.id(), e.filemode()));
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn regression_file_at_reads_each_commit_not_a_kept_listing_of_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("remote.git");
        let repo = Repository::init_bare(&bare).expect("repo");
        let first = commit(
            &repo,
            &[
                ("status/a.yaml", b"one", 0o100644),
                ("status/link.yaml", b"a.yaml", 0o120000),
            ],
            None,
        );
        let src = clone_of(&bare, dir.path());
        assert_eq!(src.fetch().expect("fetch"), first);
        assert_eq!(
            src.file_at(first, "status/a.yaml").expect("read"),
            Some(b"one".to_vec())
        );
        assert_eq!(src.file_at(first, "status/link.yaml").expect("read"), None);
        assert_eq!(src.file_at(first, "status/b.yaml").expect("read"), None);
        let second = commit(
            &repo,
            &[
                ("status/a.yaml", b"two", 0o100644),
                ("status/b.yaml", b"b", 0o100644),
            ],
            Some(first),
        );
        assert_eq!(src.fetch().expect("fetch"), second);
        for _ in 0..2 {
            assert_eq!(
                src.file_at(second, "status/a.yaml").expect("read"),
                Some(b"two".to_vec())
            );
            assert_eq!(
                src.file_at(second, "status/b.yaml").expect("read"),
                Some(b"b".to_vec())
            );
            assert_eq!(
                src.file_at(first, "status/a.yaml").expect("read"),
                Some(b"one".to_vec())
            );
            assert_eq!(src.file_at(first, "status/b.yaml").expect("read"), None);
        }
    }
    #[test]
    fn regression_file_at_answers_each_commit_past_the_kept_root_trees() {
        // More commits than `tree_of` keeps, read out of order and again: every answer
        // is the commit's own file, never a neighbour's kept tree.
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("remote.git");
        let repo = Repository::init_bare(&bare).expect("repo");
        let mut commits = Vec::new();
        let mut head = None;
        for i in 0..3 * TREES_OF {
            let status = format!("n: {i}").into_bytes();
            let c = commit(&repo, &[("status/a.yaml", &status, 0o100644)], head);
            commits.push(c);
            head = Some(c);
        }
        let src = clone_of(&bare, dir.path());
        src.fetch().expect("fetch");
        let order = (0..commits.len())
            .chain((0..commits.len()).rev())
            .chain([0, 5, 0]);
        for i in order {
            let c = commits[i];
            assert_eq!(
                src.tree_of(c).expect("tree"),
                repo.find_commit(c).expect("commit").tree_id()
            );
            assert_eq!(
                src.file_at(c, "status/a.yaml").expect("read"),
                Some(format!("n: {i}").into_bytes())
            );
        }
        assert!(src.trees_of.lock().expect("lock").len() <= TREES_OF);
    }

    #[test]
    fn a_kept_listing_finds_the_blob_libgit2_finds_for_any_name() {
        // Given folders whose names sort differently in Git's order than byte by byte
        // (`a` a folder beside `a-b.yaml` and `a.yaml`), a symlink, an executable, a
        // submodule, and status files flat and in their shard folder
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("remote.git");
        let repo = Repository::init_bare(&bare).expect("repo");
        let blob = |text: &str| repo.blob(text.as_bytes()).expect("blob");
        let tree = |entries: &[(&str, Oid, i32)]| {
            let mut b = repo.treebuilder(None).expect("treebuilder");
            for (name, id, mode) in entries {
                b.insert(name, *id, *mode).expect("insert");
            }
            b.write().expect("tree")
        };
        let inner = tree(&[("x.yaml", blob("inner"), 0o100644)]);
        let names: Vec<String> = (0..300).map(|i| format!("p{i}.yaml")).collect();
        let mut plans: Vec<(&str, Oid, i32)> = vec![
            ("a", inner, 0o040000),
            ("a-b.yaml", blob("a-b"), 0o100644),
            ("a.yaml", blob("a"), 0o100755),
            ("a0.yaml", blob("a0"), 0o120000),
            ("sub", blob("x"), 0o160000),
        ];
        plans.extend(names.iter().map(|n| (n.as_str(), blob(n), 0o100644)));
        let shard = status_shard("web.yaml");
        let shard_tree = tree(&[("web.yaml", blob("sharded"), 0o100644)]);
        let status = tree(&[
            ("web.yaml", blob("flat"), 0o100644),
            ("api.yaml", blob("api"), 0o100644),
            (shard.as_str(), shard_tree, 0o040000),
        ]);
        let root = tree(&[
            ("plans", tree(&plans), 0o040000),
            ("status", status, 0o040000),
        ]);
        let head = commit_tree(&repo, root, None);
        let src = clone_of(&bare, dir.path());
        src.fetch().expect("fetch");

        // When each name is looked up through the kept listing (twice: built, then kept)
        let mut asked: Vec<String> = ["a", "a-b.yaml", "a.yaml", "a0.yaml", "sub", "b.yaml", ""]
            .map(str::to_owned)
            .to_vec();
        asked.extend(names.iter().cloned());
        asked.push("p9999.yaml".into());
        let readable = |e: git2::TreeEntry<'_>| {
            (e.kind() == Some(ObjectType::Blob) && e.filemode() != 0o120000).then(|| e.id())
        };
        let folder = repo.find_tree(tree(&plans)).expect("plans");
        for _ in 0..2 {
            for name in &asked {
                // Then it is the file libgit2's look-up names (no folder, symlink or
                // submodule)
                let want = folder.get_name(name).and_then(|e| readable(e.to_owned()));
                let got = src.listed_blob(head, "plans", name).expect("look-up");
                assert_eq!(got, want, "plans/{name}");
            }
            // And a status file in its shard folder wins over the flat one
            let sharded = src
                .listed_blob(head, "status", "web.yaml")
                .expect("look-up");
            assert_eq!(sharded, Some(blob("sharded")));
            let flat = src
                .listed_blob(head, "status", "api.yaml")
                .expect("look-up");
            assert_eq!(flat, Some(blob("api")));
            assert_eq!(
                src.listed_blob(head, "status", &shard).expect("look-up"),
                None
            );
        }
    }

    #[test]
    fn regression_artifact_introduced_finds_the_change_through_kept_listings_past_later_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("remote.git");
        let repo = Repository::init_bare(&bare).expect("repo");
        let plan = |artifact: &str, note: &str| {
            format!("spec:\n  artifact: {artifact}\n  note: {note}\n").into_bytes()
        };
        let v1 = plan("v1", "a");
        let mut head = commit(&repo, &[("plans/web.yaml", &v1, 0o100644)], None);
        let v2 = plan("v2", "a");
        let v2_edited = plan("v2", "b");
        head = commit(&repo, &[("plans/web.yaml", &v2, 0o100644)], Some(head));
        let introduced = head;
        // Later commits keep v2: an edit of another field and more commits than the
        // kept listings (status commits), each a new (commit, folder) pair.
        head = commit(
            &repo,
            &[("plans/web.yaml", &v2_edited, 0o100644)],
            Some(head),
        );
        for i in 0..6 {
            let status = format!("phase: {i}").into_bytes();
            head = commit(
                &repo,
                &[
                    ("plans/web.yaml", &v2_edited, 0o100644),
                    ("status/web.yaml", &status, 0o100644),
                ],
                Some(head),
            );
        }
        let src = clone_of(&bare, dir.path());
        assert_eq!(src.fetch().expect("fetch"), head);
        for _ in 0..2 {
            // (the second time with listings already kept from the first)
            assert_eq!(
                src.artifact_introduced(head, "plans/web.yaml", "v2", 100)
                    .expect("walk"),
                Some(introduced)
            );
            assert_eq!(
                src.artifact_introduced(head, "plans/web.yaml", "v3", 100)
                    .expect("walk"),
                None
            );
            assert_eq!(
                src.artifact_introduced(head, "plans/other.yaml", "v2", 100)
                    .expect("walk"),
                None
            );
        }
        // A walk cut short by its limit names the oldest commit it saw with the artifact.
        assert_ne!(
            src.artifact_introduced(head, "plans/web.yaml", "v2", 3)
                .expect("walk"),
            Some(introduced)
        );
    }

    /// The pack files `/proc/self/maps` shows mapped from `dir`, and whether each was
    /// deleted.
    #[cfg(target_os = "linux")]
    fn mapped_packs(dir: &Path) -> Vec<(String, bool)> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let dir = dir.to_str().expect("utf-8");
        let mut found: Vec<(String, bool)> = maps
            .lines()
            .filter(|l| l.contains(dir) && l.contains("/objects/pack/pack-"))
            .map(|l| {
                let name = l.rsplit('/').next().unwrap_or("");
                let name = name.split_whitespace().next().unwrap_or("").to_owned();
                (name, l.ends_with("(deleted)"))
            })
            .collect();
        found.sort();
        found.dedup();
        found
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn touches_watched_says_whether_a_commit_changes_what_rollgate_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("remote.git");
        let repo = Repository::init_bare(&bare).expect("repo");
        let plan: (&str, &[u8], i32) = ("plans/a.yaml", b"a", 0o100644);
        let status: (&str, &[u8], i32) = ("status/a.yaml", b"s", 0o100644);
        let root = commit(&repo, &[plan, status], None);
        let notes = commit(
            &repo,
            &[plan, status, ("NOTES.md", b"n", 0o100644)],
            Some(root),
        );
        let empty = commit(
            &repo,
            &[plan, status, ("NOTES.md", b"n", 0o100644)],
            Some(notes),
        );
        let plan_changed = commit(
            &repo,
            &[("plans/a.yaml", b"b", 0o100644), status],
            Some(empty),
        );
        let status_changed = commit(
            &repo,
            &[
                ("plans/a.yaml", b"b", 0o100644),
                ("status/a.yaml", b"t", 0o100644),
            ],
            Some(plan_changed),
        );
        let settings = commit(
            &repo,
            &[
                ("plans/a.yaml", b"b", 0o100644),
                ("status/a.yaml", b"t", 0o100644),
                (SETTINGS_FILE, b"x", 0o100644),
            ],
            Some(status_changed),
        );
        let src = GitSource::open(bare.to_str().expect("utf-8"), &dir.path().join("c"), "main")
            .expect("open");
        assert_eq!(src.fetch().expect("fetch"), settings);
        let touches: Vec<bool> = [root, notes, empty, plan_changed, status_changed, settings]
            .into_iter()
            .map(|c| src.touches_watched(c))
            .collect();
        assert_eq!(touches, [true, false, false, true, true, true]);
        assert_eq!(src.first_parent(notes), Some(root));
        assert_eq!(src.first_parent(root), None);
    }

    #[test]
    fn regression_packs_deleted_by_gc_do_not_stay_mapped_in_the_daemons_clone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("remote.git");
        let repo = Repository::init_bare(&bare).expect("repo");
        let clone = dir.path().join("clone");
        let repack = || {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&clone)
                .args(["repack", "-a", "-d", "-q"])
                .output()
                .expect("git repack");
            assert!(out.status.success(), "{out:?}");
        };
        let first = commit(&repo, &[("status/a.yaml", b"one", 0o100644)], None);
        let mut src = GitSource::open(bare.to_str().expect("utf-8"), &clone, "main").expect("open");
        assert_eq!(src.fetch().expect("fetch"), first);
        assert!(!src.forget_old_packs().expect("look"), "nothing changed");
        // Given the clone's objects in a pack that rollgate reads from
        repack();
        assert!(src.forget_old_packs().expect("look"), "a pack appeared");
        assert_eq!(
            src.file_at(first, "status/a.yaml").expect("read"),
            Some(b"one".to_vec())
        );
        let old = mapped_packs(&clone);
        assert!(!old.is_empty(), "libgit2 maps the pack it reads");
        // When a fetch and `git gc` replace that pack with another
        let second = commit(&repo, &[("status/a.yaml", b"two", 0o100644)], Some(first));
        assert_eq!(src.fetch().expect("fetch"), second);
        repack();
        assert!(
            mapped_packs(&clone).iter().all(|(_, deleted)| *deleted),
            "the old pack is deleted on disk but still mapped: {:?}",
            mapped_packs(&clone)
        );
        // Then the clone is opened afresh, and reads map only the new pack
        assert!(src.forget_old_packs().expect("look"), "the packs changed");
        assert!(!src.forget_old_packs().expect("look"), "and only once");
        assert_eq!(
            src.file_at(second, "status/a.yaml").expect("read"),
            Some(b"two".to_vec())
        );
        assert_eq!(
            src.file_at(first, "status/a.yaml").expect("read"),
            Some(b"one".to_vec())
        );
        let now = mapped_packs(&clone);
        assert!(!now.is_empty(), "the new pack is read");
        assert!(
            now.iter()
                .all(|(name, deleted)| !deleted && !old.iter().any(|(o, _)| o == name)),
            "no old pack stays mapped: {now:?} (before: {old:?})"
        );
    }
}

#[cfg(test)]
mod layout_tests {
    //! The status layouts (`StatusLayout`) as every reader of a `GitSource` sees them.
    use super::*;
    use crate::source::StatusLayout;
    use crate::writeback::Edit;

    /// A commit on `main` with `files` (nested paths allowed) on top of `parent`.
    fn commit(repo: &Repository, files: &[(&str, Option<&[u8]>)], parent: Option<Oid>) -> Oid {
        let base = match parent {
            Some(p) => repo.find_commit(p).expect("parent").tree_id(),
            None => repo
                .treebuilder(None)
                .expect("tb")
                .write()
                .expect("empty tree"),
        };
        let edits: Vec<Edit> = files
            .iter()
            .map(|(p, c)| Edit {
                path: (*p).to_owned(),
                content: c.map(<[u8]>::to_vec),
            })
            .collect();
        let tree = crate::writeback::put_files(repo, base, &edits).expect("put");
        super::tests::commit_tree(repo, tree, parent)
    }

    fn sharded(file: &str) -> String {
        format!("status/{}/{file}", status_shard(file))
    }

    /// A source over a bare repository whose `main` is the tracked branch.
    fn source(dir: &Path) -> (GitSource, Repository) {
        let remote = dir.join("remote.git");
        let repo = Repository::init_bare(&remote).expect("repo");
        let src = GitSource::open(remote.to_str().expect("utf8"), &dir.join("clone"), "main")
            .expect("open");
        (src, repo)
    }

    #[test]
    fn status_files_in_their_shard_folder_are_read_by_their_logical_path_and_win_over_flat_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, repo) = source(dir.path());
        let wrong = if status_shard("stray.yaml") == "00" {
            "01"
        } else {
            "00"
        };
        let stray = format!("status/{wrong}/stray.yaml");
        let head = commit(
            &repo,
            &[
                (&sharded("web.yaml"), Some(b"web: sharded")),
                ("status/old.yaml", Some(b"old: flat")),
                ("status/both.yaml", Some(b"both: flat")),
                (&sharded("both.yaml"), Some(b"both: sharded")),
                (&stray, Some(b"in the wrong folder")),
                ("plans/web.yaml", Some(b"plan")),
            ],
            None,
        );
        assert_eq!(src.fetch().expect("fetch"), head);
        let snap = src.snapshot(head).expect("snapshot");
        let statuses: Vec<(&str, &[u8])> = snap
            .status_files()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        assert_eq!(
            statuses,
            vec![
                ("status/both.yaml", &b"both: sharded"[..]),
                ("status/old.yaml", &b"old: flat"[..]),
                ("status/web.yaml", &b"web: sharded"[..]),
            ]
        );
        assert_eq!(
            snap.sharded.iter().map(String::as_str).collect::<Vec<_>>(),
            vec!["status/both.yaml", "status/web.yaml"]
        );
        assert!(snap.refused.is_empty(), "{:?}", snap.refused);
        for (path, want) in [
            ("status/web.yaml", Some(&b"web: sharded"[..])),
            ("status/both.yaml", Some(&b"both: sharded"[..])),
            ("status/old.yaml", Some(&b"old: flat"[..])),
            ("status/stray.yaml", None),
        ] {
            assert_eq!(
                src.file_at(head, path).expect("file_at").as_deref(),
                want,
                "{path}"
            );
            let root = src.root_tree(head).expect("root");
            let by_entry = entry_at(&root, path)
                .map(|e| repo.find_blob(e.id()).expect("blob").content().to_vec());
            assert_eq!(by_entry.as_deref(), want, "entry_at {path}");
        }
        // Moving to either layout: the files stored elsewhere, or twice.
        let moves = |layout| -> Vec<String> {
            src.misplaced_status(head, layout)
                .expect("misplaced")
                .into_iter()
                .map(|e| {
                    format!(
                        "{}={}",
                        e.path,
                        String::from_utf8_lossy(&e.content.unwrap_or_default())
                    )
                })
                .collect()
        };
        assert_eq!(
            moves(StatusLayout::Sharded),
            vec![
                "status/both.yaml=both: sharded",
                "status/old.yaml=old: flat"
            ]
        );
        assert_eq!(
            moves(StatusLayout::Flat),
            vec![
                "status/both.yaml=both: sharded",
                "status/web.yaml=web: sharded"
            ]
        );
    }

    #[test]
    fn a_status_file_moved_between_layouts_is_one_logical_change_and_the_snapshot_follows_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, repo) = source(dir.path());
        let first = commit(&repo, &[("status/web.yaml", Some(b"v: 1"))], None);
        let moved = commit(
            &repo,
            &[
                ("status/web.yaml", None),
                (&sharded("web.yaml"), Some(b"v: 2")),
            ],
            Some(first),
        );
        assert_eq!(src.fetch().expect("fetch"), moved);
        let changed = src.changed_paths(Some(first), moved).expect("diff");
        assert_eq!(changed, vec!["status/web.yaml".to_owned()]);
        let mut snap = src.snapshot(first).expect("snapshot");
        assert!(snap.sharded.is_empty());
        src.update_snapshot(&mut snap, moved, &changed)
            .expect("update");
        assert_eq!(
            snap.files.get("status/web.yaml").map(Vec::as_slice),
            Some(&b"v: 2"[..])
        );
        assert!(snap.sharded.contains("status/web.yaml"));
        // Back to flat: the snapshot forgets the shard.
        let back = commit(
            &repo,
            &[
                (&sharded("web.yaml"), None),
                ("status/web.yaml", Some(b"v: 3")),
            ],
            Some(moved),
        );
        assert_eq!(src.fetch().expect("fetch"), back);
        let changed = src.changed_paths(Some(moved), back).expect("diff");
        src.update_snapshot(&mut snap, back, &changed)
            .expect("update");
        assert_eq!(
            snap.files.get("status/web.yaml").map(Vec::as_slice),
            Some(&b"v: 3"[..])
        );
        assert!(snap.sharded.is_empty());
    }

    #[test]
    fn shard_folders_count_toward_the_status_folder_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, repo) = source(dir.path());
        // More status files than one folder may hold, spread over shard folders: the
        // revision is refused as a flat folder of as many would be.
        let mut files = Vec::new();
        let mut n = 0;
        while files.len() <= MAX_FOLDER_ENTRIES {
            files.push(sharded(&format!("p{n}.yaml")));
            n += 1;
        }
        let edits: Vec<(&str, Option<&[u8]>)> = files
            .iter()
            .map(|p| (p.as_str(), Some(&b"x"[..])))
            .collect();
        let head = commit(&repo, &edits, None);
        assert_eq!(src.fetch().expect("fetch"), head);
        let err = src.snapshot(head).expect_err("too many");
        assert!(
            matches!(
                err.downcast_ref::<SnapshotError>(),
                Some(SnapshotError::TooManyEntries { folder, .. }) if folder == "status"
            ),
            "{err:#}"
        );
    }
}
