//! Readiness: when the services that wait on a run may start.
//!
//! `prewarm.service` is `Type=notify`, and nodeadm, containerd and kubelet
//! are ordered after it. They should start as soon as the blocks they read
//! first are hydrated, not when the whole plan is: READY is due once every
//! class up to the ready priority is read, or at once when nothing that
//! urgent is left to read (the initrd read it), or after a timeout at the
//! latest, so a slow volume can never hold the boot back longer than that.
//! After READY for a hydrated class the rest of the run is background work:
//! its reads drop to idle I/O priority and the rate budget, its threads to
//! the lowest CPU priority (`cpu_priority`). The library decides when; the caller
//! says how (the CLI sends `READY=1` to systemd).

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Config, Prepared};
use crate::engine::{Throttle, IOPRIO_IDLE};

/// When and how to signal readiness.
#[derive(Clone)]
pub struct ReadyPolicy {
    /// READY once every class up to this priority is hydrated (`None`: once
    /// the most urgent class planned is).
    pub priority: Option<u32>,
    /// READY at the latest this long after [`ReadyPolicy::since`].
    pub timeout: Duration,
    /// When the timeout started (the policy's creation, normally before the
    /// manifest is even read).
    pub since: Instant,
    /// Called once, with the reason, when READY is due.
    pub on_ready: Arc<dyn Fn(&ReadyReason) + Send + Sync>,
    /// READY was sent before the run started ([`ReadyPolicy::send_now`]).
    sent_before: Option<ReadyReason>,
    /// The process dropped to the lowest CPU priority for the background
    /// part, or is not to (the crate's own tests, which share one process):
    /// shared by every copy of the policy, so it happens once.
    cpu_lowered: Arc<AtomicBool>,
}

impl ReadyPolicy {
    /// A policy whose timeout starts now.
    pub fn new(
        priority: Option<u32>,
        timeout: Duration,
        on_ready: impl Fn(&ReadyReason) + Send + Sync + 'static,
    ) -> Self {
        ReadyPolicy {
            priority,
            timeout,
            since: Instant::now(),
            on_ready: Arc::new(on_ready),
            sent_before: None,
            cpu_lowered: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The same policy, but the background part keeps the process's CPU
    /// scheduling: for tests that run in the test harness's process.
    #[cfg(test)]
    pub(crate) fn keeping_cpu_priority(self) -> Self {
        self.cpu_lowered.store(true, Ordering::Relaxed);
        self
    }

    /// Send READY now, before the run (`reason` says why it may); the run
    /// then counts it as sent and treats all its reads as background work,
    /// and so is everything the process does from now on (finding the
    /// devices, checking the files) for the CPU.
    pub(crate) fn send_now(&mut self, reason: ReadyReason) {
        if self.sent_before.is_none() {
            (self.on_ready)(&reason);
            self.sent_before = Some(reason);
            self.lower_cpu_priority();
        }
    }

    /// Every thread of the process to the lowest CPU priority, once, for the
    /// background part; a failure costs only the boot's share of the CPU, so
    /// it is logged.
    fn lower_cpu_priority(&self) {
        if self.cpu_lowered.swap(true, Ordering::Relaxed) {
            return;
        }
        match super::cpu_priority::lower_process_priority() {
            Ok(threads) => tracing::debug!("background part: {threads} threads at nice 19"),
            Err(e) => tracing::warn!("could not lower the background part's CPU priority: {e}"),
        }
    }
}

/// Why READY was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ReadyReason {
    /// Every class up to `priority` was hydrated.
    ClassDone {
        /// The class whose completion made it.
        priority: u32,
    },
    /// Nothing up to `priority` was left to read (an earlier run, the
    /// initrd's, read it).
    AlreadyHydrated {
        /// The ready priority.
        priority: u32,
    },
    /// The handover state of an earlier run of the same manifest (the
    /// initrd's) says it read every class up to `priority` completely:
    /// READY before the files are even checked, which happens afterwards.
    Handover {
        /// The ready priority.
        priority: u32,
    },
    /// The timeout passed first; the urgent class was still being read.
    Timeout {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// The run ended (or failed) before any of the above.
    Finished,
}

impl std::fmt::Display for ReadyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyReason::ClassDone { priority } => {
                write!(f, "classes up to {priority} hydrated; continuing in the background")
            }
            ReadyReason::AlreadyHydrated { priority } => {
                write!(f, "classes up to {priority} already hydrated")
            }
            ReadyReason::Handover { priority } => write!(
                f,
                "classes up to {priority} hydrated by the earlier run (handover state); checking files in the background"
            ),
            ReadyReason::Timeout { after_ms } => write!(
                f,
                "ready after {after_ms} ms (--ready-timeout); the most urgent class is still hydrating"
            ),
            ReadyReason::Finished => f.write_str("finished"),
        }
    }
}

/// READY as it happened, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyReport {
    /// Why.
    #[serde(flatten)]
    pub reason: ReadyReason,
    /// When, from the start of the run's engines (0 when it was sent
    /// before: [`ReadyReason::Handover`]).
    pub at_ms: f64,
}

/// One run's readiness state, shared by the engines' progress, the timeout
/// thread and the run.
#[derive(Clone)]
pub(crate) struct Ready {
    policy: Option<ReadyPolicy>,
    sent: Arc<Mutex<Option<ReadyReport>>>,
    ioprio: Arc<AtomicU16>,
    /// The rate budget: from the start without a policy, from READY with.
    throttle: Arc<Throttle>,
    start: Instant,
}

impl Ready {
    /// The state for a run of `cfg`; starts the timeout.
    pub fn new(cfg: &Config) -> Self {
        let ready = Ready {
            policy: cfg.ready.clone(),
            sent: Arc::new(Mutex::new(None)),
            ioprio: Arc::new(AtomicU16::new(0)),
            throttle: Arc::new(Throttle::new(cfg.rate_limit, cfg.ready.is_none())),
            start: Instant::now(),
        };
        if let Some(reason) = ready.policy.as_ref().and_then(|p| p.sent_before.clone()) {
            *ready.sent.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(ReadyReport { reason, at_ms: 0.0 });
            ready.to_background();
        } else if let Some(p) = &ready.policy {
            let me = ready.clone();
            let at = p.since + p.timeout;
            let after_ms = p.timeout.as_millis() as u64;
            // Detached: it only ever sends READY, which is idempotent, and
            // must not hold the run (or the process) back.
            std::thread::spawn(move || {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                me.send(ReadyReason::Timeout { after_ms });
            });
        }
        ready
    }

    /// The I/O priority the engines apply to reads from now on.
    pub fn ioprio(&self) -> Arc<AtomicU16> {
        self.ioprio.clone()
    }

    /// The rate budget the engines ask before each read.
    pub fn throttle(&self) -> Arc<Throttle> {
        self.throttle.clone()
    }

    /// What is left is background work: idle I/O priority, the rate limit
    /// and the lowest CPU priority from now on.
    fn to_background(&self) {
        self.ioprio.store(IOPRIO_IDLE, Ordering::Relaxed);
        self.throttle.activate();
        if let Some(p) = &self.policy {
            p.lower_cpu_priority();
        }
    }

    /// Class `priority` and every more urgent one are hydrated.
    pub fn class_done(&self, priority: u32) {
        let Some(p) = &self.policy else { return };
        if p.priority.is_none_or(|r| priority >= r) {
            self.send(ReadyReason::ClassDone { priority });
            // Whether READY came now or earlier from the timeout, the rest
            // is background work from here on (not before: after a timeout
            // the urgent class is what the services now wait on).
            self.to_background();
        }
    }

    /// Everything is planned: READY now if nothing up to the ready priority
    /// is.
    pub fn check_planned(&self, prepared: &Prepared) {
        let Some(priority) = self.policy.as_ref().and_then(|p| p.priority) else {
            return;
        };
        if !prepared.has_work_up_to(priority)
            && self.send(ReadyReason::AlreadyHydrated { priority })
        {
            self.to_background();
        }
    }

    /// Send READY with `reason` unless it was sent; returns whether this
    /// call sent it.
    fn send(&self, reason: ReadyReason) -> bool {
        let Some(p) = &self.policy else { return false };
        {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            if sent.is_some() {
                return false;
            }
            *sent = Some(ReadyReport {
                reason: reason.clone(),
                at_ms: self.start.elapsed().as_secs_f64() * 1e3,
            });
        }
        (p.on_ready)(&reason);
        true
    }

    /// The run is over: READY if it was not sent, and what was sent.
    pub fn finish(&self) -> Option<ReadyReport> {
        self.send(ReadyReason::Finished);
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
