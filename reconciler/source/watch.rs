//! A local remote is watched: a push wakes the reconcile loop within milliseconds
//! instead of at the next fetch interval.
//!
//! Invariants: only a change of a branch ref (a create, write, rename or removal under
//! `refs/heads`, lock files aside) or of `packed-refs` wakes the loop. The daemon's own
//! fetch opens and reads the remote's files, and waking on those would spin the loop.
//! A path that cannot be watched is logged; the fetch interval still applies.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use notify::Watcher;

/// Watch `paths` (`GitSource::local_ref_paths`: `refs/heads` first, then the git dir)
/// and send `()` on `wake` for every event that can mean a branch moved. The watch
/// lasts as long as the returned watcher; `None` when nothing could be watched.
pub fn local_refs(paths: &[PathBuf], wake: Sender<()>) -> Option<notify::RecommendedWatcher> {
    let refs = paths.first().cloned()?;
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| moves_a_ref(&e, &refs)) {
            let _ = wake.send(());
        }
    })
    .ok()?;
    for (i, p) in paths.iter().enumerate().filter(|(_, p)| p.exists()) {
        // refs/heads (branches may nest); the git dir itself only for packed-refs.
        let mode = if i == 0 {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        if let Err(e) = w.watch(p, mode) {
            tracing::warn!(path = %p.display(), error = %e, "cannot watch; falling back to the fetch interval");
        }
    }
    Some(w)
}

/// Whether a file event on a local remote can mean a branch moved: a create, write,
/// rename or removal under `refs/heads`, or of `packed-refs`. Opens, reads and
/// metadata changes (the daemon's own fetch) never are.
pub fn moves_a_ref(e: &notify::Event, refs_heads: &Path) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    let kind = matches!(
        e.kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
    );
    kind && e.paths.iter().any(|p| {
        p.starts_with(refs_heads) && p.extension().is_none_or(|x| x != "lock")
            || p.file_name().is_some_and(|n| n == "packed-refs")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, MetadataKind, ModifyKind};
    use notify::{Event, EventKind};

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_a_branch_or_packed_refs_change_wakes_the_loop() {
        let refs = Path::new("/r.git/refs/heads");
        let wakes = |kind, path| moves_a_ref(&event(kind, path), refs);
        assert!(wakes(
            EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::To)),
            "/r.git/refs/heads/main"
        ));
        assert!(wakes(
            EventKind::Create(CreateKind::File),
            "/r.git/refs/heads/team/a"
        ));
        assert!(wakes(
            EventKind::Modify(ModifyKind::Any),
            "/r.git/packed-refs"
        ));
        // The daemon's own fetch reads the remote: never a wake-up
        assert!(!wakes(
            EventKind::Access(AccessKind::Any),
            "/r.git/refs/heads/main"
        ));
        assert!(!wakes(
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            "/r.git/refs/heads/main"
        ));
        // A lock file is a push in progress, not a moved branch
        assert!(!wakes(
            EventKind::Create(CreateKind::File),
            "/r.git/refs/heads/main.lock"
        ));
        assert!(!wakes(
            EventKind::Create(CreateKind::File),
            "/r.git/objects/ab/cd"
        ));
    }
}
