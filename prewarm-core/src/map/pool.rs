//! A thread pool for blocking filesystem calls (stat, open, FIEMAP), sized
//! to the run's queue depth rather than to the CPUs.
//!
//! On a lazily loaded volume a cold `stat` or FIEMAP waits, inside the
//! kernel, for the fetch of the inode table or extent tree block it needs:
//! milliseconds, with no asynchronous form. rayon's global pool has one
//! thread per CPU (two on a small node), so mapping a thousand files with it
//! keeps two metadata fetches in flight while the volume could serve many
//! more. Running the mapping stage in a pool as wide as the queue depth gives
//! metadata lookups the same parallelism as the data reads; the threads
//! spend their time asleep in the kernel, not on a CPU.

/// Most threads a pool gets, whatever the queue depth.
pub const MAX_WIDTH: usize = 64;

/// A pool for metadata calls; `install` runs rayon's parallel iterators on
/// it.
pub struct MetadataPool(Option<rayon::ThreadPool>);

impl MetadataPool {
    /// A pool of `width` threads (clamped to 1..=[`MAX_WIDTH`]). If the
    /// threads are refused, the pool falls back to rayon's global pool:
    /// slower, never fatal.
    pub fn new(width: usize) -> Self {
        let width = width.clamp(1, MAX_WIDTH);
        match rayon::ThreadPoolBuilder::new()
            .num_threads(width)
            .thread_name(|i| format!("prewarm-map-{i}"))
            .build()
        {
            Ok(pool) => MetadataPool(Some(pool)),
            Err(e) => {
                tracing::debug!(
                    "mapping pool of {width} threads refused ({e}); using the global pool"
                );
                MetadataPool(None)
            }
        }
    }

    /// Run `f`, its parallel iterators on this pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.0 {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

/// Run `f` on a [`MetadataPool`] of `width` threads made for it.
pub fn with_width<R: Send>(width: usize, f: impl FnOnce() -> R + Send) -> R {
    MetadataPool::new(width).install(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn runs_on_a_pool_of_the_given_width() {
        assert_eq!(with_width(5, rayon::current_num_threads), 5);
        assert_eq!(with_width(0, rayon::current_num_threads), 1);
        assert_eq!(with_width(1000, rayon::current_num_threads), MAX_WIDTH);
        let pool = MetadataPool::new(8);
        let sum: u64 = pool.install(|| (0..100u64).into_par_iter().sum());
        assert_eq!(sum, 4950);
    }
}
