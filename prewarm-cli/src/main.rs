//! `prewarm`: hydrate the blocks a node needs first on a volume restored
//! from a snapshot.
//!
//! The binary parses arguments (`args`), sets up logging, signal handling,
//! the deadline watchdog and systemd readiness, makes one `prewarm_core` call
//! per command and prints (`commands`). Commands:
//!
//! * `prewarm [PATH]... [--paths LIST]`: map and hydrate now;
//! * `prewarm plan ... -o FILE`: map once (at image build time) and write a
//!   boot manifest;
//! * `prewarm run [MANIFEST]`: replay a manifest (initrd or root phase);
//! * `prewarm show [MANIFEST]`: print a manifest;
//! * `prewarm record -o FILE [MOUNT]...`: record what a boot reads, as a
//!   list with byte ranges.
//!
//! Exit codes: 0 success (warnings allowed), 1 partial (some reads failed, a
//! listed file was unreadable, or the deadline / SIGTERM stopped the run),
//! 2 usage error or nothing readable, 3 manifest refused (corrupt, or for
//! another filesystem or device size).

#![forbid(unsafe_code)]

mod args;
mod commands;
mod notify;
mod progress;

use std::process::ExitCode;

use crate::args::{Cli, Command};

fn init_logging(cli: &Cli) {
    let default = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn,prewarm=info,prewarm_core=info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    // Before any thread: a million files planned must not leave a
    // million files' worth of freed memory in per-thread arenas.
    prewarm_core::limit_malloc_arenas();
    let cli = Cli::parse_checked();
    init_logging(&cli);
    let ui = commands::Ui {
        json: cli.json,
        quiet: cli.quiet,
    };
    let result = match &cli.command {
        None => commands::hydrate(&cli, ui),
        Some(Command::Plan(cmd)) => commands::plan(cmd, ui),
        Some(Command::Run(cmd)) => commands::run(cmd, ui),
        Some(Command::Show(cmd)) => commands::show(cmd, ui),
        Some(Command::Record(cmd)) => commands::record(cmd, ui),
        Some(Command::Completions { shell }) => commands::completions(*shell),
        Some(Command::Manpage) => commands::manpage(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{}", commands::render_error(&e));
            ExitCode::from(commands::exit_code_of(&e))
        }
    }
}
