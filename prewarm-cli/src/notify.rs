//! systemd readiness for `prewarm run --notify`.
//!
//! `prewarm.service` is `Type=notify`: services ordered after it (nodeadm,
//! containerd, kubelet) start when it says READY=1. It says so once the most
//! urgent priority class is hydrated, or after `--ready-timeout` at the
//! latest, and once the urgent classes are done carries on with the rest at
//! idle I/O priority (per io_uring read; the pread fallback keeps the
//! process's priority), reporting progress in STATUS=. It always says READY before it
//! exits, so a failure can never hold dependent services back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prewarm_core::engine::IOPRIO_IDLE;
use sd_notify::NotifyState;

/// Sends READY=1 once, and STATUS= lines.
#[derive(Clone)]
pub struct Readiness {
    enabled: bool,
    ready: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new(enabled: bool) -> Self {
        Readiness {
            enabled,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn status(&self, text: &str) {
        if self.enabled {
            send(&[NotifyState::Status(text)]);
        }
    }

    /// READY=1 with a status, the first time only. Returns whether this call
    /// was the one that said it.
    pub fn ready(&self, text: &str) -> bool {
        if self.ready.swap(true, Ordering::SeqCst) {
            return false;
        }
        if self.enabled {
            tracing::info!("READY: {text}");
            send(&[NotifyState::Ready, NotifyState::Status(text)]);
        }
        true
    }

    /// Say READY after `after` if nothing else has.
    pub fn ready_at_the_latest(&self, after: Duration) {
        let me = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            me.ready(&format!(
                "ready after {after:?} (--ready-timeout); the most urgent class is still hydrating"
            ));
        });
    }

    /// The callback for the pipeline's class progress: READY once the
    /// classes up to `ready_priority` are hydrated (classes are announced in
    /// order, each only when all more urgent ones are done), then idle I/O
    /// priority for the rest.
    pub fn on_class_done(
        &self,
        ready_priority: u32,
        ioprio: Arc<std::sync::atomic::AtomicU16>,
    ) -> Arc<dyn Fn(u32) + Send + Sync> {
        let me = self.clone();
        Arc::new(move |priority| {
            tracing::info!("priority class {priority} hydrated");
            if priority >= ready_priority {
                let text =
                    format!("classes up to {priority} hydrated; continuing in the background");
                me.ready(&text);
                // Whether READY came now or earlier from --ready-timeout, the
                // rest is background work from here on (not before: after a
                // timeout the urgent class is what the services now wait on).
                ioprio.store(IOPRIO_IDLE, Ordering::Relaxed);
            }
            me.status(&format!("priority class {priority} hydrated"));
        })
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify: {e}");
    }
}
