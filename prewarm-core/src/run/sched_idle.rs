//! CPU scheduling of a run's background part: every thread moves to
//! `SCHED_IDLE` once READY is sent.
//!
//! After READY the services that waited on prewarm start, and the rest of
//! the run (the less urgent classes, the check of each file) is worth doing
//! only when it takes nothing from them. Idle I/O priority and the rate
//! budget keep it off the volume's fetch slots; this keeps it off the CPUs.
//! The reads themselves need little CPU, but starting engines, `statx`ing
//! files and copying buffered reads is work, and on a small instance (or a
//! boot under emulation, `benches/vm`) it competes with the services'
//! start-up. A `SCHED_IDLE` thread runs when no other thread of the system
//! wants the CPU, so the background part fills the boot's idle moments
//! (waits on the volume, on the network) instead.
//!
//! Scheduling is per thread in Linux: each thread of the process, found in
//! `/proc/self/task`, is moved; threads created afterwards, including
//! io_uring's workers, inherit the policy of the thread that creates them.
//! Nothing waits on a background run but a stop, and a stop is still
//! bounded by the unit's `TimeoutStopSec`. This is one of the crate's small
//! `unsafe` modules: the one `sched_setscheduler` call.

use std::collections::BTreeSet;
use std::io;

/// Passes over `/proc/self/task`: a thread cloned by a thread not yet moved
/// while the list is read shows up in the next pass.
const MAX_PASSES: usize = 3;

/// Moves every thread of this process to `SCHED_IDLE`; returns how many
/// were moved. A thread that exits meanwhile is skipped; the first other
/// failure is returned after the rest were tried.
pub(crate) fn move_process_to_idle() -> io::Result<usize> {
    let mut moved = BTreeSet::new();
    let mut first_error = None;
    for _ in 0..MAX_PASSES {
        let mut new = 0;
        for tid in thread_ids()? {
            if moved.contains(&tid) {
                continue;
            }
            match set_idle(tid) {
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

/// The thread ids of this process.
fn thread_ids() -> io::Result<Vec<libc::pid_t>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        // A name that is not a number is not a thread: skipped.
        if let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// Moves thread `tid` to `SCHED_IDLE`.
fn set_idle(tid: libc::pid_t) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // Safety: sched_setscheduler only reads `param`, a live local, and
    // changes the scheduling of thread `tid`; no memory of ours is written.
    // Lowering a thread's own process to SCHED_IDLE needs no privilege.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::{Arc, Barrier};

    /// Set in the child process that runs the test's body.
    const CHILD: &str = "PREWARM_TEST_SCHED_IDLE_CHILD";

    /// The scheduling policy of thread `tid` (field 41 of its `stat`).
    fn policy(tid: libc::pid_t) -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // The command name, in parentheses, may hold spaces: count fields
        // after its closing parenthesis (field 3 is the first of them).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    fn gettid() -> libc::pid_t {
        nix::unistd::gettid().as_raw()
    }

    #[test]
    fn every_thread_moves_to_idle_and_threads_started_later_inherit_it() {
        // The move changes the whole process: the body runs in a child (this
        // test binary, running only this test), not among the other tests.
        if std::env::var_os(CHILD).is_none() {
            let status = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "run::sched_idle::tests::every_thread_moves_to_idle_and_threads_started_later_inherit_it",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .status()
                .unwrap();
            assert!(status.success(), "the child run failed: {status}");
            return;
        }
        let main_tid = gettid();
        assert_eq!(policy(main_tid), libc::SCHED_OTHER as u32);
        // A thread that exists before the move and lives through it.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let checked = Arc::new(Barrier::new(2));
        let c = checked.clone();
        let waiter = std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            c.wait();
        });
        let waiter_tid = tid_rx.recv().unwrap();
        let moved = move_process_to_idle().unwrap();
        assert!(moved >= 2, "moved {moved} threads");
        assert_eq!(policy(main_tid), libc::SCHED_IDLE as u32);
        assert_eq!(policy(waiter_tid), libc::SCHED_IDLE as u32);
        checked.wait();
        waiter.join().unwrap();
        let started_later = std::thread::spawn(|| policy(gettid())).join().unwrap();
        assert_eq!(started_later, libc::SCHED_IDLE as u32);
    }
}
