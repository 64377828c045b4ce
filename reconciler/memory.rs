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
//! Invariants: `release` is called only at a quiet point (`daemon::run`, once after a
//! burst of passes that moved rollouts, before it sleeps), never per request or per pass:
//! a purge walks every arena. It frees nothing live and moves no allocation. `repack`
//! (before `release`, at the same quiet point) keeps every buffer's bytes and moves only
//! the buffers it is given. On MSVC the system allocator stays and `release` does
//! nothing.
//!
//! The crate's one `unsafe` block lives here, which is why the crate denies
//! `unsafe_code` instead of forbidding it.

/// Every allocation of the process (the daemon, the CLI, and the tests and benchmarks
/// linked with this crate, so they measure what users run) goes through jemalloc.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Hand the pages of freed memory back to the system. True when the purge ran.
#[cfg(not(target_env = "msvc"))]
pub fn release() -> bool {
    // `MALLCTL_ARENAS_ALL` (4096) names every arena at once.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated; `arena.<i>.purge` reads and writes nothing
    // (every pointer null, length 0) and only returns unused dirty pages of the arenas
    // to the system, under jemalloc's own locks; live allocations stay where they are.
    #[allow(unsafe_code)]
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    status == 0
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
        let (pinned, repacked, kept) = std::thread::spawn(|| {
            let mut texts: Vec<Vec<u8>> = (0..40_000)
                .map(|i| format!("{i:>1000}").into_bytes())
                .collect();
            let mut i = 0;
            texts.retain(|_| {
                i += 1;
                i % 4 == 0
            });
            release();
            let pinned = rss_anon_kib();
            repack(texts.iter_mut().collect());
            release();
            let repacked = rss_anon_kib();
            // The k-th survivor was text 4k + 3 (no copy kept for the comparison: it
            // would sit in the very holes the repack fills).
            let kept = texts.len() == 10_000
                && texts
                    .iter()
                    .enumerate()
                    .all(|(k, t)| *t == format!("{:>1000}", 4 * k + 3).into_bytes());
            (pinned, repacked, kept)
        })
        .join()
        .expect("the burst's thread");
        assert!(kept, "repack changed a buffer's bytes");
        // 39 MiB of slabs pinned, 10 MiB after. Other tests may allocate beside it: a
        // wide margin, 20 of the 29 MiB that can go back.
        assert!(
            pinned.saturating_sub(repacked) > 20 * 1024,
            "anonymous memory {pinned} KiB pinned, {repacked} KiB once repacked"
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
