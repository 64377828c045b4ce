//! Gives the memory a burst of work freed back to the system (glibc's `malloc_trim`).
//!
//! Why: glibc's allocator returns freed memory to the system only from the top of an
//! arena. A burst (a mass change: a thousand status files parsed, committed and
//! dropped) frees most of what it took, but the few blocks still live among the freed
//! ones pin their pages, and each burst lands on a differently fragmented heap. So the
//! daemon's resident memory crept up by about 0.3 MiB per 1,000 finished rollouts
//! (`cargo bench --bench mass -- --bench --only d --rounds 40`: 51 → 62 MiB anonymous
//! over 40 rounds), while heaptrack showed its live heap flat (23 MiB between rounds,
//! 41–44 MiB at the top of each). `malloc_trim(0)` hands every free page of every
//! arena back (`madvise(MADV_DONTNEED)`): what stays resident is the pages that still
//! hold a live block. Those still spread slowly as bursts come and go (35.5 → 43.2 MiB
//! anonymous over 40 rounds with it, against 51.0 → 62.2 without): a smaller growth,
//! not none.
//!
//! Invariants: called only at a quiet point (`daemon::run`, once after a burst of
//! passes that moved rollouts, before it sleeps), never per request or per pass: glibc
//! locks each arena in turn while it walks it. It frees nothing live and changes no
//! allocation; elsewhere than on glibc it does nothing (musl and the other systems'
//! allocators return memory themselves, or have no such call).
//!
//! The crate's one `unsafe` block lives here, which is why the crate denies
//! `unsafe_code` instead of forbidding it.

/// Hand the pages of freed memory back to the system. True when glibc released any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and leaves every live allocation where it
    // is; glibc serializes it with every other allocator call, arena by arena.
    #[allow(unsafe_code)]
    let released = unsafe { libc::malloc_trim(0) };
    released == 1
}

/// Elsewhere there is nothing to hand back: a no-op.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
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
        // do. On its own glibc keeps them; `release` hands them back. Its own thread, so
        // the blocks share one arena as a pass's allocations do.
        let (before, after) = std::thread::spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 4_000]).collect();
            let mut i = 0;
            blocks.retain(|_| {
                i += 1;
                i % 256 == 0
            });
            let before = rss_anon_kib();
            assert!(release(), "glibc released nothing");
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
