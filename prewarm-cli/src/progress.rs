//! The progress bar an operator sees at a terminal: bytes and device
//! chunks hydrated of those planned so far, the rate and an ETA, redrawn
//! ten times a second from the library's live counters
//! ([`prewarm_core::Progress`]).
//!
//! Only on an interactive terminal: never when standard error is a pipe,
//! a file or the journal (a unit), never with `--json`, `--quiet` or
//! `--dry-run`. Log lines go through [`LogWriter`], which lifts the bar
//! while a line is written, so the two never garble each other.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prewarm_core::{Config, Progress};

use crate::commands::Ui;

/// The bar being drawn, if any, for [`LogWriter`].
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// How often the bar is redrawn from the counters.
const REDRAW: Duration = Duration::from_millis(100);

/// A running progress display (or nothing, where none belongs).
pub struct ProgressDisplay {
    running: Option<(ProgressBar, Arc<AtomicBool>, JoinHandle<()>)>,
}

impl ProgressDisplay {
    /// Start a bar for the run `cfg` will make, if standard error is a
    /// terminal and `ui` allows one; gives `cfg` the counters it reads.
    pub fn start(cfg: &mut Config, ui: Ui) -> Self {
        let wanted = !ui.json && !ui.quiet && !cfg.dry_run && std::io::stderr().is_terminal();
        if !wanted {
            return ProgressDisplay { running: None };
        }
        let counters = Arc::new(Progress::default());
        cfg.progress = Some(counters.clone());
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (bar, done) = (bar.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let now = counters.snapshot();
                    bar.set_length(now.planned_bytes.max(now.read_bytes));
                    bar.set_position(now.read_bytes);
                    bar.set_message(format!("{}/{} chunks", now.chunks_done, now.planned_chunks));
                    std::thread::sleep(REDRAW);
                }
            })
        };
        ProgressDisplay {
            running: Some((bar, done, thread)),
        }
    }

    /// Take the bar off the screen (the report follows).
    pub fn finish(self) {
        if let Some((bar, done, thread)) = self.running {
            done.store(true, Ordering::Relaxed);
            let _ = thread.join();
            *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
            bar.finish_and_clear();
        }
    }
}

/// Standard error for log lines, lifting the progress bar while each line
/// is written.
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf).map(|()| buf.len())),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
