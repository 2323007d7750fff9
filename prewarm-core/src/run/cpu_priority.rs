//! CPU priority of a run's background part: every thread drops to nice 19
//! once READY is sent; and the mapping threads' lower priority throughout
//! ([`lower_this_thread`], used by `map/pool.rs`, which says why).
//!
//! After READY the services that waited on prewarm start, and the rest of
//! the run (the less urgent classes, the check of each file) is worth doing
//! only when it takes little from them. Idle I/O priority and the rate
//! budget keep it off the volume's fetch slots; this keeps it off the CPUs.
//! The reads themselves need little CPU, but starting engines, `statx`ing
//! files and copying buffered reads is work, and on a small instance (or a
//! boot under emulation, `benches/vm`) it competes with the services'
//! start-up.
//!
//! Nice 19, not `SCHED_IDLE`: an idle-policy thread runs only when nothing
//! else wants the CPU, and the kernel's sleeping locks lend no priority, so
//! a background thread preempted while it holds one (a page being read in,
//! a directory's lock) holds up whoever needs it for as long as the boot
//! keeps the CPUs busy. Tried first on the TCG VM: one boot in six had
//! udevd's start take 2.1 s instead of 0.4-0.6 s, ending just after the
//! background part ended, which is what such a wait looks like (host
//! noise could not be ruled out). At nice 19 (weight 15 against 1024) a
//! thread still yields almost all of a contended CPU, but it stays in the
//! fair class's rotation: such a wait is bounded by the scheduler's
//! fairness, not by the boot going idle, and the background part always
//! makes progress towards its deadline.
//!
//! Priority is per thread in Linux: each thread of the process, found in
//! `/proc/self/task`, is moved; threads created afterwards, io_uring's
//! workers included, inherit the nice value of the thread that creates
//! them. This is one of the crate's small `unsafe` modules: the
//! `setpriority` and `nice` calls.

use std::collections::BTreeSet;
use std::io;

/// The nice value of the background part: the lowest priority.
pub(crate) const BACKGROUND_NICE: i32 = 19;

/// Passes over `/proc/self/task`: a thread cloned by a thread not yet moved
/// while the list is read shows up in the next pass.
const MAX_PASSES: usize = 3;

/// Lowers every thread of this process to [`BACKGROUND_NICE`]; returns how
/// many were lowered. A thread that exits meanwhile is skipped; the first other
/// failure is returned after the rest were tried.
pub(crate) fn lower_process_priority() -> io::Result<usize> {
    let mut moved = BTreeSet::new();
    let mut first_error = None;
    for _ in 0..MAX_PASSES {
        let mut new = 0;
        for tid in thread_ids()? {
            if moved.contains(&tid) {
                continue;
            }
            match set_background_nice(tid) {
                Ok(()) => {
                    moved.insert(tid);
                    new += 1;
                }
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if new == 0 {
            break;
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(moved.len()),
    }
}

/// The thread ids of this process (`/proc/self/task`); a thread that
/// exits while the list is read is skipped.
fn thread_ids() -> io::Result<Vec<libc::pid_t>> {
    let me = procfs::process::Process::myself().map_err(io::Error::other)?;
    let tasks = me.tasks().map_err(io::Error::other)?;
    Ok(tasks.flatten().map(|t| t.tid).collect())
}

/// Lowers thread `tid` to [`BACKGROUND_NICE`].
fn set_background_nice(tid: libc::pid_t) -> io::Result<()> {
    let who =
        libc::id_t::try_from(tid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // Safety: setpriority takes no pointer; it changes the nice value of
    // thread `who` (Linux applies PRIO_PROCESS to the one thread) and
    // nothing else. Raising one's own nice value needs no privilege.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, BACKGROUND_NICE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lowers the calling thread's priority by `levels` nice levels (nice
/// caps it at 19). Best effort: a refusal leaves the thread as it was,
/// which only costs the others some CPU.
pub(crate) fn lower_this_thread(levels: i32) {
    // Safety: nice(2) takes no pointer; on Linux it changes the nice value
    // of the calling thread alone (glibc's setpriority(PRIO_PROCESS, 0)),
    // and raising it needs no privilege. Its result (the new value, or -1
    // with errno) is not needed.
    unsafe { libc::nice(levels) };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::{Arc, Barrier};

    /// Set in the child process that runs the test's body.
    const CHILD: &str = "PREWARM_TEST_CPU_PRIORITY_CHILD";

    /// The nice value of thread `tid` (also for `map/pool.rs`'s tests).
    pub(crate) fn nice(tid: libc::pid_t) -> i64 {
        let me = procfs::process::Process::myself().unwrap();
        me.task_from_tid(tid).unwrap().stat().unwrap().nice
    }

    pub(crate) fn gettid() -> libc::pid_t {
        nix::unistd::gettid().as_raw()
    }

    #[test]
    fn every_thread_is_lowered_and_threads_started_later_inherit_it() {
        // The change is to the whole process: the body runs in a child (this
        // test binary, running only this test), not among the other tests.
        if std::env::var_os(CHILD).is_none() {
            let status = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "run::cpu_priority::tests::every_thread_is_lowered_and_threads_started_later_inherit_it",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .status()
                .unwrap();
            assert!(status.success(), "the child run failed: {status}");
            return;
        }
        let main_tid = gettid();
        assert!(
            nice(main_tid) < i64::from(BACKGROUND_NICE),
            "the test runs at nice 19 already"
        );
        // A thread that exists before the change and lives through it.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let checked = Arc::new(Barrier::new(2));
        let c = checked.clone();
        let waiter = std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            c.wait();
        });
        let waiter_tid = tid_rx.recv().unwrap();
        let lowered = lower_process_priority().unwrap();
        assert!(lowered >= 2, "lowered {lowered} threads");
        assert_eq!(nice(main_tid), i64::from(BACKGROUND_NICE));
        assert_eq!(nice(waiter_tid), i64::from(BACKGROUND_NICE));
        checked.wait();
        waiter.join().unwrap();
        let started_later = std::thread::spawn(|| nice(gettid())).join().unwrap();
        assert_eq!(started_later, i64::from(BACKGROUND_NICE));
    }
}
