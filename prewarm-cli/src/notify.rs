//! systemd readiness for `prewarm run --notify`: the library decides when
//! READY is due (see `prewarm_core::ReadyPolicy`); this module says it to
//! systemd (`READY=1`, `STATUS=`), once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sd_notify::NotifyState;

/// Sends READY=1 once, and STATUS= lines.
#[derive(Clone)]
pub struct Readiness {
    enabled: bool,
    ready: Arc<AtomicBool>,
}

impl Readiness {
    /// Talk to systemd only when `enabled` (`--notify`).
    pub fn new(enabled: bool) -> Self {
        Readiness {
            enabled,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// STATUS=`text`.
    pub fn status(&self, text: &str) {
        if self.enabled {
            send(&[NotifyState::Status(text)]);
        }
    }

    /// READY=1 with a status, the first time only.
    pub fn ready(&self, text: &str) {
        if self.ready.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.enabled {
            tracing::info!("READY: {text}");
            send(&[NotifyState::Ready, NotifyState::Status(text)]);
        }
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify: {e}");
    }
}
