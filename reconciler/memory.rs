//! The process's allocator (jemalloc), and the hand-back of the memory a burst of work
//! freed (`release`: jemalloc's purge of every arena).
//!
//! Why jemalloc: glibc's malloc returned freed memory only from the top of an arena, so
//! the few blocks still live after a burst (a mass change: a thousand status files
//! parsed, committed and dropped) pinned the freed pages around them, each burst landed
//! on a differently fragmented heap, and the daemon's resident memory crept up: 51 → 62
//! MiB anonymous over 40 mass changes, 35.5 → 43.2 MiB even with `malloc_trim` after
//! each, while heaptrack showed the live heap flat (`cargo bench --bench mass -- --bench
//! --only d --rounds 40`). With jemalloc (its slabs sort blocks by size class) the same
//! run grows less, 32.2 → 38.3 MiB, and jemalloc's own counters show what is left:
//! `stats.allocated` flat at 25.6–25.8 MiB, `stats.active` 28.9 → 34.9 MiB, i.e. pages
//! that a survivor among freed blocks still pins (fragmentation, not a leak). And glibc's
//! malloc/free took about 17% of `rollgate validate`'s CPU (`perf record` on `cargo bench
//! --bench validate`), which jemalloc's thread caches cut: 0.87–0.92 s → 0.71 s for
//! 10,000 plans. The C code linked in (libgit2, aws-lc) allocates through it too.
//!
//! `release`: jemalloc returns freed pages by itself only as later allocations go by
//! (dirty pages decay over 10 s), and an idle daemon allocates nothing; so after a burst
//! the daemon purges every arena at once.
//!
//! `repack`: what `release` cannot hand back is a page that still holds one live block
//! among freed ones. The status files a mass change leaves behind are made in the middle
//! of its burst, beside the texts, commits and parses it frees, so after every burst they
//! sat one or two to a slab, and the daemon's anonymous memory grew 22.1 → 24.2 MiB over
//! ten mass changes of 1,000 plans, 1.3 MiB of it unused room in jemalloc's 1,024-byte
//! class (`malloc_stats_print`, per size class). Copying a buffer in place does not help:
//! the copy lands in one of those holes and frees another. `repack` takes every buffer
//! out first (into one staging buffer), so their slabs empty and go back, and then
//! allocates them again side by side.
//!
//! `remake`: the same for structured values held by `Arc` (the plan parses: each plan's
//! `ParsedPlan`, 752 bytes in jemalloc's 768-byte class, and its lists, maps and
//! strings in others). They cannot be copied into one buffer, so `remake` copies them
//! into a scratch arena of their own (`in_scratch`: this thread's allocations taken from
//! it for the while), gives every holder the copy, frees the old ones, and copies them
//! back. Found with a probe that recorded where every block of 513–768 bytes still live
//! at rest was made: 1,000 each of the parse, its list of checks and a map of strings,
//! made again by every mass change in the middle of its burst. `remake_each` does it for
//! values with one holder each: the gate's status views (regorus values, 75 blocks a
//! status file, most of the small blocks left live at rest), copied by
//! `Prepared::made_again`. With all three, the daemon's anonymous memory over 100 mass
//! changes of 1,000 plans is 16,400 KiB after the first and 16,664–16,872 KiB from the
//! fourth to the 100th. Measured in the same sitting over 20 of them: 19,340 → 20,064
//! KiB with the parses remade but not the views, 16,516 → 16,892 KiB with both. A
//! compaction copies every plan's parse and view, so the daemon does it only once
//! enough has changed (`daemon::run::compact_due`).
//!
//! Invariants: `release` is called only at a quiet point (`daemon::run`, once after a
//! burst of passes that moved rollouts, before it sleeps), never per request or per pass:
//! a purge walks every arena. It frees nothing live and moves no allocation. `repack`
//! and the remakes (before `release`, at the same quiet point) keep every value as it
//! was and move only the values they are given; they leave the thread on its own arena.
//! On MSVC the system allocator stays, `release` does nothing and the remakes copy in
//! place.
//!
//! The crate's one `unsafe` block lives here, which is why the crate denies
//! `unsafe_code` instead of forbidding it.

use std::collections::HashMap;
use std::sync::Arc;

/// Every allocation of the process (the daemon, the CLI, and the tests and benchmarks
/// linked with this crate, so they measure what users run) goes through jemalloc.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Hand the pages of freed memory back to the system. True when the purge ran.
#[cfg(not(target_env = "msvc"))]
pub fn release() -> bool {
    // `MALLCTL_ARENAS_ALL` (4096) names every arena at once. `arena.<i>.purge` only
    // returns unused dirty pages of the arenas to the system, under jemalloc's own
    // locks; live allocations stay where they are.
    ctl(c"arena.4096.purge", None, None)
}

/// One of jemalloc's controls (`mallctl`), by name: read its `unsigned` value into
/// `read`, write `write`, or (both `None`) run it. True when jemalloc accepted the call.
#[cfg(not(target_env = "msvc"))]
fn ctl(name: &std::ffi::CStr, read: Option<&mut u32>, write: Option<u32>) -> bool {
    use std::ffi::c_void;
    use std::ptr::null_mut;
    let mut new = write.unwrap_or(0);
    let mut len = std::mem::size_of::<u32>();
    let (oldp, oldlenp) = match read {
        Some(r) => (std::ptr::from_mut(r).cast::<c_void>(), &raw mut len),
        None => (null_mut(), null_mut()),
    };
    let (newp, newlen) = match write {
        Some(_) => ((&raw mut new).cast::<c_void>(), std::mem::size_of::<u32>()),
        None => (null_mut(), 0),
    };
    // SAFETY: `name` is NUL-terminated; every control named in this file reads and
    // writes an `unsigned` (`u32`) or nothing, and each pointer given is either null
    // with a zero length or points to a live `u32` with its size as the length.
    #[allow(unsafe_code)]
    let status = unsafe { tikv_jemalloc_sys::mallctl(name.as_ptr(), oldp, oldlenp, newp, newlen) };
    status == 0
}

/// Run `f` with this thread's allocations taken from a scratch arena of their own (made
/// once), not from the arena the daemon's long-lived data share. With jemalloc's
/// controls unavailable, `f` runs as it is.
#[cfg(not(target_env = "msvc"))]
fn in_scratch<R>(f: impl FnOnce() -> R) -> R {
    static SCRATCH: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let scratch = *SCRATCH.get_or_init(|| {
        let mut index = 0;
        ctl(c"arenas.create", Some(&mut index), None).then_some(index)
    });
    let mut home = 0;
    let moved = scratch.is_some_and(|s| {
        ctl(c"thread.arena", Some(&mut home), None) && ctl(c"thread.arena", None, Some(s))
    });
    // The thread cache holds blocks of the arena it came from: empty it on each side.
    flush_thread_cache();
    let r = f();
    flush_thread_cache();
    if moved {
        ctl(c"thread.arena", None, Some(home));
    }
    r
}

/// Hand the blocks this thread's cache holds back to their slabs.
#[cfg(not(target_env = "msvc"))]
fn flush_thread_cache() {
    ctl(c"thread.tcache.flush", None, None);
}

#[cfg(target_env = "msvc")]
fn in_scratch<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_env = "msvc")]
fn flush_thread_cache() {}

/// Make each value of `old` again, side by side, and hand every holder the new one.
/// `swap` is called twice with a successor function (a value's successor, or `None`
/// for a value not in `old`) and replaces each `Arc` it holds with its successor.
///
/// The values are first copied into a scratch arena and every holder is given the copy,
/// so `old`'s blocks (survivors of a burst, scattered among the blocks it freed) are all
/// freed and their slabs empty; then they are copied back into this thread's arena, one
/// beside the other, and the scratch copies are freed. A holder `swap` misses keeps its
/// value (then the old one stays allocated): nothing a caller reads changes but the
/// addresses.
pub fn remake<T: Clone>(
    old: Vec<Arc<T>>,
    mut swap: impl FnMut(&dyn Fn(&Arc<T>) -> Option<Arc<T>>),
) {
    let scratch: Vec<Arc<T>> = in_scratch(|| old.iter().map(|v| Arc::new(T::clone(v))).collect());
    hand_over(&old, &scratch, &mut swap);
    drop(old);
    flush_thread_cache();
    let kept: Vec<Arc<T>> = scratch.iter().map(|v| Arc::new(T::clone(v))).collect();
    hand_over(&scratch, &kept, &mut swap);
    drop(scratch);
    flush_thread_cache();
}

/// Make each of `values` again (`copy`: the same value in blocks of its own), side by
/// side, as `remake` does for values with one holder each: copied into the scratch arena,
/// the old ones freed, copied back.
pub fn remake_each<T>(mut values: Vec<&mut T>, copy: impl Fn(&T) -> T) {
    let scratch: Vec<T> = in_scratch(|| values.iter().map(|v| copy(v)).collect());
    let old: Vec<T> = values
        .iter_mut()
        .zip(scratch)
        .map(|(v, s)| std::mem::replace(*v, s))
        .collect();
    drop(old);
    flush_thread_cache();
    for v in &mut values {
        let kept = copy(v);
        drop(std::mem::replace(*v, kept));
    }
    flush_thread_cache();
}

/// Replace `slot` by its successor, where `successor` names one: what each holder does
/// inside `remake`'s `swap`.
pub fn take_successor<T>(slot: &mut Arc<T>, successor: &dyn Fn(&Arc<T>) -> Option<Arc<T>>) {
    if let Some(next) = successor(slot) {
        *slot = next;
    }
}

/// Give every holder (`swap`) `to[i]` for `from[i]`.
fn hand_over<T>(
    from: &[Arc<T>],
    to: &[Arc<T>],
    swap: &mut impl FnMut(&dyn Fn(&Arc<T>) -> Option<Arc<T>>),
) {
    let by_address: HashMap<*const T, &Arc<T>> = from.iter().map(Arc::as_ptr).zip(to).collect();
    swap(&|v| by_address.get(&Arc::as_ptr(v)).map(|&n| Arc::clone(n)));
}

/// Allocate `bufs` again, side by side: each one's bytes are copied into one staging
/// buffer and every buffer is freed before any is allocated again, so the slabs they were
/// scattered over (one live block among a burst's freed ones) empty and `release` hands
/// them back. The bytes are unchanged; the spare capacity is dropped.
pub fn repack(mut bufs: Vec<&mut Vec<u8>>) {
    let lens: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
    // One large allocation: jemalloc takes it from its own extents, not from the slabs
    // being emptied.
    let mut staging = Vec::with_capacity(lens.iter().sum());
    for b in &mut bufs {
        staging.extend_from_slice(b);
        **b = Vec::new();
    }
    let mut at = 0;
    for (b, len) in bufs.into_iter().zip(lens) {
        *b = staging[at..at + len].to_vec();
        at += len;
    }
}

/// On MSVC the system allocator stays: nothing to hand back.
#[cfg(target_env = "msvc")]
pub fn release() -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::sync::Weak;

    use super::*;

    /// This process's anonymous resident memory, in KiB.
    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("RssAnon in /proc/self/status")
    }

    #[test]
    fn regression_memory_buffers_left_one_to_a_slab_by_a_burst_are_handed_back_once_repacked() {
        // 40,000 status-file-sized texts (jemalloc's 1,024-byte class, four to a 4 KiB
        // slab), every one freed but one in four: each slab keeps one live text, as the
        // status files a mass change leaves behind do. `release` alone hands back none
        // of those slabs; repacked, the 10,000 survivors fill 2,500 slabs, not 10,000.
        let (pinned, repacked, kept) = tidied(
            || {
                one_in_four(
                    (0..40_000)
                        .map(|i| format!("{i:>1000}").into_bytes())
                        .collect(),
                )
            },
            |texts: &mut Vec<Vec<u8>>| repack(texts.iter_mut().collect()),
            // The k-th survivor was text 4k + 3 (no copy kept for the comparison: it
            // would sit in the very holes the repack fills).
            |texts: &Vec<Vec<u8>>| {
                texts.len() == 10_000
                    && texts
                        .iter()
                        .enumerate()
                        .all(|(k, t)| *t == format!("{:>1000}", 4 * k + 3).into_bytes())
            },
        );
        assert!(kept, "repack changed a buffer's bytes");
        // 39 MiB of slabs pinned, 10 MiB after. Other tests may allocate beside it: a
        // wide margin, 20 of the 29 MiB that can go back.
        assert!(
            pinned.saturating_sub(repacked) > 20 * 1024,
            "anonymous memory {pinned} KiB pinned, {repacked} KiB once repacked"
        );
    }

    /// A plan-parse-like value: a text and a list, each a block of its own.
    #[derive(Clone, PartialEq, Debug)]
    struct Parse {
        text: String,
        steps: Vec<u32>,
    }

    fn parse(i: usize) -> Parse {
        Parse {
            text: format!("{i:>1000}"),
            steps: (0..100).map(|s| (i * 100 + s) as u32).collect(),
        }
    }

    /// All but one in four of `all` dropped, as a burst drops what it made around what
    /// it keeps: each survivor is left alone on its slab.
    fn one_in_four<T>(mut all: Vec<T>) -> Vec<T> {
        let mut i = 0;
        all.retain(|_| {
            i += 1;
            i % 4 == 0
        });
        all
    }

    /// On a thread of its own, as a burst runs: `burst` makes what survives it, then
    /// `tidy` works on that. Anonymous memory (KiB) before and after `tidy`, each after
    /// `release`, and what `check` says of the survivors then.
    fn tidied<S: 'static>(
        burst: impl FnOnce() -> S + Send + 'static,
        tidy: impl FnOnce(&mut S) + Send + 'static,
        check: impl FnOnce(&S) -> bool + Send + 'static,
    ) -> (u64, u64, bool) {
        std::thread::spawn(move || {
            let mut survivors = burst();
            release();
            let pinned = rss_anon_kib();
            tidy(&mut survivors);
            release();
            (pinned, rss_anon_kib(), check(&survivors))
        })
        .join()
        .expect("the burst's thread")
    }

    #[test]
    fn regression_memory_values_left_one_to_a_slab_by_a_burst_are_handed_back_once_remade() {
        // 40,000 parses made in a burst, all dropped but one in four, held twice (as the
        // gate's cache and a memo hold a plan's parse). Remade, each holder has a copy
        // equal to what it had, both holders the same copy, nothing holds an old value,
        // and the slabs go back.
        type Held = (
            Vec<Arc<Parse>>,
            HashMap<usize, Arc<Parse>>,
            Vec<Weak<Parse>>,
        );
        let (pinned, remade, kept) = tidied(
            || {
                let cache = one_in_four((0..40_000).map(|i| Arc::new(parse(i))).collect());
                let memos: HashMap<usize, Arc<Parse>> = cache.iter().cloned().enumerate().collect();
                let old = cache.iter().map(Arc::downgrade).collect();
                (cache, memos, old)
            },
            |(cache, memos, _): &mut Held| {
                remake(cache.clone(), |successor| {
                    for p in cache.iter_mut().chain(memos.values_mut()) {
                        take_successor(p, successor);
                    }
                });
            },
            |(cache, memos, old): &Held| {
                cache.len() == 10_000
                    && cache
                        .iter()
                        .enumerate()
                        .all(|(k, p)| **p == parse(4 * k + 3) && Arc::ptr_eq(p, &memos[&k]))
                    && old.iter().all(|w| w.upgrade().is_none())
            },
        );
        assert!(kept, "a holder lost its value, or kept an old one");
        // About 65 MiB pinned, 24 after; 38 when the copies are made in the thread's own
        // arena (they land in the holes beside the survivors). nextest runs each test in
        // a process of its own.
        assert!(
            pinned.saturating_sub(remade) > 35 * 1024,
            "anonymous memory {pinned} KiB pinned, {remade} KiB once remade"
        );
    }

    #[test]
    fn regression_memory_values_of_one_holder_left_one_to_a_slab_are_handed_back_once_remade() {
        // As above, with each survivor held once, by value (the gate's status views).
        let (pinned, remade, kept) = tidied(
            || one_in_four((0..40_000).map(parse).collect()),
            |views: &mut Vec<Parse>| remake_each(views.iter_mut().collect(), Parse::clone),
            |views: &Vec<Parse>| {
                views.len() == 10_000
                    && views
                        .iter()
                        .enumerate()
                        .all(|(k, p)| *p == parse(4 * k + 3))
            },
        );
        assert!(kept, "a value changed");
        assert!(
            pinned.saturating_sub(remade) > 35 * 1024,
            "anonymous memory {pinned} KiB pinned, {remade} KiB once remade"
        );
    }

    #[test]
    fn regression_memory_a_burst_freed_among_live_blocks_goes_back_to_the_system() {
        // 160 MiB in 4 KB blocks, then every block freed but one per 256 (one per MiB):
        // the live ones pin the freed pages around them, as a mass change's survivors
        // do. jemalloc keeps the freed pages dirty until later allocations let them decay;
        // `release` hands them back at once. Its own thread, as a pass's allocations are.
        let (before, after) = std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 4_000]).collect();
            let mut i = 0;
            blocks.retain(|_| {
                i += 1;
                i % 256 == 0
            });
            let before = rss_anon_kib();
            assert!(release(), "the purge failed");
            let after = rss_anon_kib();
            // The survivors are untouched.
            assert!(
                blocks
                    .iter()
                    .all(|b| b.len() == 4_000 && b.iter().all(|&x| x == 255))
            );
            (before, after)
        })
        .join()
        .expect("the burst's thread");
        // Other tests may allocate beside it: a wide margin, 100 of the 156 MiB freed.
        assert!(
            before.saturating_sub(after) > 100 * 1024,
            "anonymous memory {before} KiB before, {after} KiB after release"
        );
    }
}
