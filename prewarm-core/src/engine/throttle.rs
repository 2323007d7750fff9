//! Rate control: a shared budget of bytes and reads per second that the
//! engines ask before issuing each read.
//!
//! A lazy volume serves a few fetches at once, and the services a run warms
//! for need those same slots. I/O priorities cannot share them out: the
//! `none` scheduler that NVMe devices (EBS included) use ignores them. So
//! the background part of a run (after READY, or a `--device` sweep) can be
//! held to a rate: `--max-rate` bytes and `--max-iops` reads per second.
//!
//! The budget is a token bucket in its virtual-time form (GCRA): each read
//! moves a "theoretical arrival time" on by its cost, the longer of its
//! bytes at the byte rate and one read at the read rate; a read may start
//! once that time is less than [`BURST`] ahead of now. So the long-run rate
//! never exceeds the limit, a short burst of reads can start together (the
//! queue depth still matters within it), and an idle spell earns no credit
//! beyond the burst. One budget serves every engine of a run: the limit is
//! the process's, however many devices it reads.
//!
//! The throttle can start inactive and be switched on mid-run: a run that
//! tells systemd READY reads the classes the services wait on at full
//! speed and only the rest within the limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How far ahead of now the budget may be spent: the burst a read may join.
pub const BURST: Duration = Duration::from_millis(50);

/// Limits on the reads a run issues (per second, all engines together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// Bytes per second, if limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Reads per second, if limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_per_sec: Option<u64>,
}

impl RateLimit {
    /// Whether it limits anything.
    pub fn is_limited(&self) -> bool {
        self.bytes_per_sec.is_some_and(|b| b > 0) || self.reads_per_sec.is_some_and(|r| r > 0)
    }

    /// The share of the budget one read of `len` bytes costs.
    fn cost(&self, len: u32) -> Duration {
        let by_bytes = self
            .bytes_per_sec
            .filter(|&b| b > 0)
            .map_or(0.0, |b| f64::from(len) / b as f64);
        let by_reads = self
            .reads_per_sec
            .filter(|&r| r > 0)
            .map_or(0.0, |r| 1.0 / r as f64);
        Duration::from_secs_f64(by_bytes.max(by_reads))
    }
}

/// A run's shared budget.
#[derive(Debug)]
pub struct Throttle {
    limit: RateLimit,
    active: AtomicBool,
    /// The theoretical arrival time: when the budget spent so far is paid.
    tat: Mutex<Option<Instant>>,
}

impl Throttle {
    /// A budget of `limit`; `active` says whether it applies from the start
    /// (otherwise from [`Throttle::activate`]).
    pub fn new(limit: RateLimit, active: bool) -> Self {
        Throttle {
            limit,
            active: AtomicBool::new(active && limit.is_limited()),
            tat: Mutex::new(None),
        }
    }

    /// Apply the limit to reads issued from now on.
    pub fn activate(&self) {
        if self.limit.is_limited() {
            self.active.store(true, Ordering::Relaxed);
        }
    }

    /// Whether reads are being limited.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Ask to issue a read of `len` bytes now: `Duration::ZERO` means go
    /// (the budget is spent), anything else is how long to wait before
    /// asking again (nothing is spent).
    pub fn admit(&self, len: u32) -> Duration {
        self.admit_at(len, Instant::now())
    }

    fn admit_at(&self, len: u32, now: Instant) -> Duration {
        if !self.is_active() {
            return Duration::ZERO;
        }
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let due = tat.map_or(now, |t| t.max(now));
        let allowed_from = due.checked_sub(BURST).unwrap_or(now);
        if allowed_from > now {
            return allowed_from - now;
        }
        *tat = Some(due + self.limit.cost(len));
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of `len` admitted in `secs` of simulated time, asking as
    /// fast as allowed.
    fn admitted(t: &Throttle, len: u32, secs: f64) -> u64 {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let (mut now, mut n) = (start, 0);
        while now < end {
            let wait = t.admit_at(len, now);
            if wait.is_zero() {
                n += 1;
            } else {
                now += wait;
            }
        }
        n
    }

    #[test]
    fn the_byte_rate_holds_over_time() {
        let limit = RateLimit {
            bytes_per_sec: Some(10 << 20),
            reads_per_sec: None,
        };
        let t = Throttle::new(limit, true);
        // 10 MiB/s of 1 MiB reads for 10 s: 100 reads, plus the burst's one.
        let n = admitted(&t, 1 << 20, 10.0);
        assert!((100..=102).contains(&n), "{n}");
    }

    #[test]
    fn the_stricter_limit_wins() {
        let limit = RateLimit {
            bytes_per_sec: Some(1 << 30),
            reads_per_sec: Some(200),
        };
        let t = Throttle::new(limit, true);
        let n = admitted(&t, 4096, 5.0);
        // 200/s for 5 s, plus the 50 ms burst (10 reads).
        assert!((1000..=1012).contains(&n), "{n}");
    }

    #[test]
    fn inactive_until_activated() {
        let limit = RateLimit {
            bytes_per_sec: Some(1),
            reads_per_sec: None,
        };
        let t = Throttle::new(limit, false);
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(t.admit_at(1 << 20, now).is_zero());
        }
        t.activate();
        assert!(t.admit_at(1 << 20, now).is_zero(), "the first read goes");
        assert!(!t.admit_at(1 << 20, now).is_zero(), "the second waits");
    }

    #[test]
    fn no_limit_never_waits() {
        let t = Throttle::new(RateLimit::default(), true);
        assert!(!t.is_active());
        t.activate();
        assert!(t.admit(u32::MAX).is_zero());
    }
}
