//! Parallel blocking filesystem calls (stat, open, FIEMAP, readdir), as
//! many at once as the run's queue depth rather than the CPUs.
//!
//! On a lazily loaded volume a cold `stat` or FIEMAP waits, inside the
//! kernel, for the fetch of the inode table or extent tree block it needs:
//! milliseconds, with no asynchronous form. One thread per CPU (two on a
//! small node) keeps two metadata fetches in flight while the volume could
//! serve many more, so the mapping stage runs as many threads as the queue
//! depth, and they spend their time asleep in the kernel.
//!
//! These threads are not a rayon pool. rayon's idle workers spin on
//! `sched_yield` before they sleep, and a pool of 32 of them, waking at
//! every split of work that blocks for milliseconds, spent a fifth of the
//! run's CPU yielding (perf, a cold big-tree run): CPU the lazy volume's own
//! data path needs on a two-CPU node. Starting threads per call instead
//! costs as much again (2,700 `clone3`s and their stacks for one run). So
//! the pool's threads live as long as the pool, sleep on a condition
//! variable between calls, and a call hands them one shared queue of its
//! items: nothing spins, nothing is started twice. Nor before it is
//! needed: a call's shares wait in that queue, the caller takes items
//! itself at once, and a thread of the pool starts the others while shares
//! still wait (see [`MetadataPool::map`]); a call of cached lookups is over
//! before most of them would run.
//!
//! The threads run [`MAP_NICE`] levels below the rest of the run. Once the
//! metadata a class needs is cached (read ahead, or a warm tree), their
//! calls are CPU work, a thousand `lstat`s at once as a class is collected,
//! and on two CPUs they held back what the run is for: the engine's
//! submissions and the volume's own path (the loop device's worker, and on
//! the testbed the FUSE server) waited behind them. On the node fixture,
//! cold, at 8 fetches in flight, the first reads took 0.9-5.7 ms from
//! `io_uring_enter` to the testbed, against 0.4-3.2 ms with the pool
//! niced, and the critical set was hydrated 3 ms sooner (median of 5
//! alternated runs each: 377.7 against 380.7 ms). A thread blocked on a
//! fetch loses nothing by it; a mapping step that is the run's critical
//! path still gets every cycle nobody more urgent wants. Not `SCHED_IDLE`,
//! for the reason `run/cpu_priority.rs` gives.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Condvar, Mutex};

use crate::run::cpu_priority;

/// How many nice levels the pool's threads run below the thread that
/// starts them (capped at 19).
pub(crate) const MAP_NICE: i32 = 10;

/// Most threads a pool gets, whatever the queue depth.
pub const MAX_WIDTH: usize = 64;

/// Stack of each thread: the calls made on it (path lookups, FIEMAP, ELF
/// headers) keep their buffers on the heap.
const STACK_SIZE: usize = 256 * 1024;

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for a thread, the threads, and whether the pool is gone.
#[derive(Default)]
struct Jobs {
    /// Each waiting job, with the call it is a share of.
    queue: VecDeque<(u64, Job)>,
    closed: bool,
    /// Threads started so far.
    started: usize,
    /// A thread is starting others.
    growing: bool,
    /// The number of the next call to [`MetadataPool::map`].
    next_call: u64,
}

struct Shared {
    jobs: Mutex<Jobs>,
    ready: Condvar,
    /// Most threads (the caller of a call is one more).
    max_threads: usize,
}

impl Shared {
    /// A thread's life: run jobs until the pool is dropped.
    fn serve(&self) {
        loop {
            let job = {
                let Ok(mut jobs) = self.jobs.lock() else {
                    return;
                };
                loop {
                    if let Some((_, job)) = jobs.queue.pop_front() {
                        break job;
                    }
                    if jobs.closed {
                        return;
                    }
                    jobs = match self.ready.wait(jobs) {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                }
            };
            job();
        }
    }

    /// Start threads, one after another, while jobs wait for one (up to
    /// `max_threads`); then nothing is growing the pool.
    fn grow(self: &Arc<Self>) {
        loop {
            let number = {
                let Ok(mut jobs) = self.jobs.lock() else {
                    return;
                };
                if jobs.closed || jobs.queue.is_empty() || jobs.started >= self.max_threads {
                    jobs.growing = false;
                    return;
                }
                jobs.started += 1;
                jobs.started - 1
            };
            let shared = Arc::clone(self);
            if spawn(number, move || shared.serve()).is_err() {
                self.stop_growing();
                return;
            }
        }
    }

    /// A thread could not be started: count it out, and let a later call
    /// try again.
    fn stop_growing(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.started -= 1;
            jobs.growing = false;
        }
    }
}

/// Start pool thread `number`, running `body`.
fn spawn(number: usize, body: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("prewarm-map-{number}"))
        .stack_size(STACK_SIZE)
        .spawn(body)
        .map(drop)
}

/// Threads for metadata calls, up to the queue depth, started as calls
/// wait for them.
pub struct MetadataPool {
    width: usize,
    shared: Arc<Shared>,
}

impl MetadataPool {
    /// A pool of `width` threads (clamped to 1..=[`MAX_WIDTH`]).
    pub fn new(width: usize) -> Self {
        let width = width.clamp(1, MAX_WIDTH);
        MetadataPool {
            width,
            shared: Arc::new(Shared {
                jobs: Mutex::default(),
                ready: Condvar::new(),
                max_threads: width - 1,
            }),
        }
    }

    /// How many calls run at once.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Threads started so far.
    #[cfg(test)]
    fn threads_started(&self) -> usize {
        self.shared.jobs.lock().map_or(0, |j| j.started)
    }

    /// Have threads started for the jobs waiting, unless that is under way
    /// or the pool is full. The caller starts one, which starts the others
    /// ([`Shared::grow`]) while the caller works: starting 31 threads took
    /// 1-3 ms on a 2-CPU node, which a call of cached `lstat`s (a few
    /// microseconds each) would otherwise wait for before its first item,
    /// and such a call is over before most of them would be needed. A
    /// thread the system refuses leaves the work to the others (at worst
    /// the caller alone): slower, never fatal.
    fn start_growing(&self) {
        let number = {
            let Ok(mut jobs) = self.shared.jobs.lock() else {
                return;
            };
            if jobs.growing || jobs.closed || jobs.started >= self.shared.max_threads {
                return;
            }
            jobs.growing = true;
            jobs.started += 1;
            jobs.started - 1
        };
        let shared = Arc::clone(&self.shared);
        let spawned = spawn(number, move || {
            // Threads inherit the nice value of the thread that starts
            // them: this one is lowered, the ones it starts are too.
            cpu_priority::lower_this_thread(MAP_NICE);
            shared.grow();
            shared.serve()
        });
        if spawned.is_err() {
            self.shared.stop_growing();
        }
    }

    /// `f` applied to every item, `width` at a time (the caller's thread
    /// among them); the results in the items' order. A panic in `f` is
    /// the caller's.
    pub fn map<T, R, F>(&self, items: Vec<T>, f: F) -> Vec<R>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        let n = items.len();
        let helpers = (self.width - 1).min(n.saturating_sub(1));
        if helpers == 0 {
            return items.into_iter().map(f).collect();
        }
        let items = Arc::new(Mutex::new(items.into_iter().enumerate()));
        let f = Arc::new(f);
        // Every taker, helper or caller, takes items from the one queue
        // until it is empty. The lock is held only to take an item, never
        // while `f` runs.
        let take = move || {
            let mut done = Vec::new();
            while let Some((i, item)) = items.lock().ok().and_then(|mut q| q.next()) {
                done.push((i, f(item)));
            }
            done
        };
        let (tx, rx) = mpsc::channel();
        let mut call = None;
        if let Ok(mut jobs) = self.shared.jobs.lock() {
            let number = jobs.next_call;
            jobs.next_call += 1;
            call = Some(number);
            for _ in 0..helpers {
                let take = take.clone();
                let tx = tx.clone();
                jobs.queue.push_back((
                    number,
                    Box::new(move || {
                        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(take));
                        let _ = tx.send(done);
                    }),
                ));
            }
        }
        drop(tx);
        self.shared.ready.notify_all();
        self.start_growing();
        let mut results = take();
        // Every item is taken: the shares no thread took have nothing left
        // to do, and are not waited for.
        if let (Some(call), Ok(mut jobs)) = (call, self.shared.jobs.lock()) {
            jobs.queue.retain(|(c, _)| *c != call);
        }
        // Each running helper's share, or its panic; the channel closes
        // once every share ran or was dropped.
        for done in rx {
            match done {
                Ok(done) => results.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results.sort_unstable_by_key(|&(i, _)| i);
        results.into_iter().map(|(_, r)| r).collect()
    }
}

impl Drop for MetadataPool {
    /// The threads end once idle. They are not waited for: one blocked in
    /// a device that never answers must not hold up the run's end.
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.shared.jobs.lock() {
            jobs.closed = true;
        }
        self.shared.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The nice value of the calling thread.
    fn own_nice() -> i64 {
        use crate::run::cpu_priority::tests::{gettid, nice};
        nice(gettid())
    }

    #[test]
    fn the_pools_threads_run_below_the_caller() {
        let base = own_nice();
        let pool = MetadataPool::new(4);
        let seen: HashSet<i64> = pool
            .map((0..64).collect::<Vec<u32>>(), |_| {
                std::thread::sleep(std::time::Duration::from_micros(200));
                own_nice()
            })
            .into_iter()
            .collect();
        let lowered = (base + i64::from(MAP_NICE)).min(19);
        // The caller takes items too, at its own priority.
        assert!(seen.contains(&lowered), "{seen:?}, caller at {base}");
        assert!(seen.iter().all(|&n| n == base || n == lowered), "{seen:?}");
        assert_eq!(own_nice(), base, "the caller is left as it was");
    }

    #[test]
    fn maps_every_item_in_order_on_the_given_width() {
        assert_eq!(MetadataPool::new(0).width(), 1);
        assert_eq!(MetadataPool::new(1000).width(), MAX_WIDTH);
        let pool = MetadataPool::new(8);
        let items: Vec<u64> = (0..1000).collect();
        let squares = pool.map(items.clone(), |x| x * x);
        assert_eq!(squares, items.iter().map(|x| x * x).collect::<Vec<_>>());
        // Owned items, and more than one thread at work.
        let names = pool.map(items.clone(), |_| {
            std::thread::sleep(std::time::Duration::from_micros(200));
            std::thread::current().id()
        });
        assert_eq!(names.len(), 1000);
        let first: HashSet<_> = names.into_iter().collect();
        assert!(first.len() > 1);
        assert!(pool.map(Vec::<u8>::new(), |x| x).is_empty());
        // The next call runs on the same threads: none is started again.
        let again: HashSet<_> = pool
            .map(items, |_| {
                std::thread::sleep(std::time::Duration::from_micros(200));
                std::thread::current().id()
            })
            .into_iter()
            .collect();
        assert!(again.is_subset(&first), "{again:?} not in {first:?}");
        assert!(first.len() <= 8);
    }

    #[test]
    fn threads_start_while_shares_wait_for_them_and_no_more() {
        // Slow items: every share waits for a thread, and gets one.
        let pool = MetadataPool::new(8);
        let slow = pool.map((0..64).collect::<Vec<u32>>(), |i| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            i
        });
        assert_eq!(slow, (0..64).collect::<Vec<_>>());
        assert_eq!(pool.threads_started(), 7);
        // However many calls come, never more than the width.
        for _ in 0..20 {
            pool.map((0..64).collect::<Vec<u32>>(), |i| i + 1);
        }
        assert_eq!(pool.threads_started(), 7);
        // A call with a single item runs on the caller alone.
        let pool = MetadataPool::new(8);
        assert_eq!(pool.map(vec![5], |i| i * 2), [10]);
        assert_eq!(pool.threads_started(), 0);
    }

    #[test]
    #[should_panic(expected = "item 7")]
    fn a_panic_in_the_function_reaches_the_caller() {
        MetadataPool::new(4).map((0..100).collect(), |i| {
            if i == 7 {
                panic!("item 7");
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        });
    }
}
