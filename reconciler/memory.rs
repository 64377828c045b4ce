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
//! Invariants: `release` is called only at a quiet point (`daemon::run`, once after a
//! burst of passes that moved rollouts, before it sleeps), never per request or per pass:
//! a purge walks every arena. It frees nothing live and moves no allocation. On MSVC the
//! system allocator stays and `release` does nothing.
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
