//! Process identity: who a pid file names, so a signal never reaches a stranger.
//!
//! A pid alone is not an identity: pids are reused, and a process killed with the
//! daemon leaves a pid file that may name an unrelated process an hour later. An
//! `Identity` is the pid, the kernel's start time of that process (clock ticks since
//! boot, `/proc/PID/stat` field 22), the boot it started in and its argv. Two reads
//! agree only for the same process.
//! Invariants: `stop` signals only a process whose identity matches the record, read
//! again right before each signal; a record that cannot be read or does not match is
//! a process that is gone, never a guess.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A process, as recorded in a pid file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat`, field 22).
    pub start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id`: a reboot restarts the tick count.
    pub boot_id: String,
    pub argv: Vec<String>,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat`: the text after the command name's closing `)` starts at
/// field 3, and the name itself may hold spaces and parentheses.
fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

impl Identity {
    /// The identity of the live process `pid`, or `None` when there is none (or it is
    /// a zombie: it has exited and only waits to be reaped).
    pub fn of(pid: u32) -> Option<Identity> {
        let dir = Path::new("/proc").join(pid.to_string());
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let state = stat[stat.rfind(')')? + 1..].split_whitespace().next()?;
        if state == "Z" || state == "X" {
            return None;
        }
        let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
        let argv = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Some(Identity {
            pid,
            start_ticks: start_ticks(&stat)?,
            boot_id: boot_id(),
            argv,
        })
    }

    /// The identity of `pid`, a child just spawned with `argv`. Right after `spawn`
    /// returns, `/proc/PID/cmdline` can still be empty: the kernel wakes the parent
    /// during `execve`, before it lays out the new program's arguments. Read then, a
    /// record would name no argv, never match the process again, and a later data plane
    /// would leave it running as a stranger. The argv is the one passed to `execve`,
    /// which is what `/proc` shows once the exec is done.
    pub fn of_spawned(pid: u32, argv: &[String]) -> Option<Identity> {
        Self::of(pid).map(|id| Identity {
            argv: argv.to_vec(),
            ..id
        })
    }

    /// This process.
    pub fn current() -> Option<Identity> {
        Self::of(std::process::id())
    }

    /// True while the process this record names is alive (same pid, start, boot, argv).
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now == *self)
    }

    /// Write the record to `path` (atomically: a reader never sees half of it).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    }

    /// The record in `path`; `None` when missing or unreadable (a pid-only file of an
    /// older version is unreadable: its process cannot be told from a stranger).
    pub fn read(path: &Path) -> Option<Identity> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Stop the process this record names, if it is still that process: SIGTERM, then
    /// SIGKILL after `grace`. The identity is read again before each signal. True when
    /// a matching process was found (and is now gone).
    pub fn stop(&self, grace: Duration) -> bool {
        if !self.is_alive() {
            return false;
        }
        let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return false;
        };
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.is_alive() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.is_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_ticks(stat), Some(987_654));
    }

    #[test]
    fn this_process_has_an_identity_that_matches_itself_and_not_a_changed_record() {
        let me = Identity::current().expect("own identity");
        assert!(me.is_alive());
        let reused = Identity {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(!reused.is_alive(), "same pid, another start: a stranger");
        let other_argv = Identity {
            argv: vec!["sleep".to_owned()],
            ..me
        };
        assert!(!other_argv.is_alive());
    }

    /// Children killed and reaped when dropped, whatever the test found.
    struct Children(Vec<std::process::Child>);

    impl Drop for Children {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Wait until `pid` shows its new program's argv (`/proc/PID/cmdline` is empty for
    /// a moment during `execve`).
    fn exec_done(pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Identity::of(pid).is_none_or(|now| now.argv.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn regression_a_record_written_right_after_spawn_still_names_the_process() {
        // Given children recorded the moment `spawn` returns (when /proc/PID/cmdline can
        // still be empty: the data plane then wrote a record no later read matched, and
        // the workload outlived every data plane as a stranger)
        let argv: Vec<String> = ["sleep", "30"].map(str::to_owned).to_vec();
        let mut children = Children(Vec::new());
        let mut records = Vec::new();
        for _ in 0..40 {
            let c = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .spawn()
                .expect("sleep");
            records.push(Identity::of_spawned(c.id(), &argv).expect("a live child"));
            children.0.push(c);
        }
        // Then every record names its process once it runs
        for r in &records {
            exec_done(r.pid);
            assert!(r.is_alive(), "{r:?} vs {:?}", Identity::of(r.pid));
        }
    }

    #[test]
    fn regression_a_reused_pid_is_never_signalled() {
        // Given a live process whose pid a stale record names, with another start time
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        // (recorded as the data plane records a child: with the argv it was given; and,
        // as a data plane meets its leftovers, once the exec is done)
        let argv = ["sleep", "30"].map(str::to_owned);
        let live = Identity::of_spawned(child.id(), &argv).expect("identity");
        exec_done(child.id());
        let stale = Identity {
            start_ticks: live.start_ticks.saturating_sub(1),
            ..live.clone()
        };
        // When the stale record is stopped
        let found = stale.stop(Duration::from_millis(50));
        // Then nothing is signalled and the process still runs
        assert!(!found);
        assert!(matches!(child.try_wait(), Ok(None)));
        // And the true record stops it
        assert!(live.stop(Duration::from_secs(2)));
        let _ = child.wait();
    }
}
