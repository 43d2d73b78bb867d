//! `tcpobs`: read settings, set up logging, run the daemon, map errors to exit codes
//! (0 after a clean stop, 1 for runtime errors such as missing privileges, kernel features
//! or a port in use, 2 for invalid settings).

use std::process::ExitCode;

use clap::{CommandFactory as _, error::ErrorKind};
use tcpobs::{
    app,
    clock::Clock,
    config::{
        Cli, Sources,
        control::{LogLevelSetter, log_filter},
    },
    export::output::Output,
};
use tracing_subscriber::{EnvFilter, prelude::*, reload};

fn main() -> ExitCode {
    // A closed pipe or a file size limit must be write errors the output counts, not signals
    // that end tracing. (Rust programs already ignore SIGPIPE; this says so where it matters.)
    // SAFETY: setting a signal to SIG_IGN before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let sources = Sources::from_env();
    let settings = match sources.load() {
        Ok(settings) => settings,
        Err(err) => err.exit(),
    };
    let output = match Output::open(
        settings.output.as_deref(),
        settings.format.clone(),
        Clock::new(),
        settings.output_queue_bytes,
    ) {
        Ok(output) => output,
        Err(err) => Cli::command()
            .error(
                ErrorKind::ValueValidation,
                format!(
                    "invalid value for --output: cannot open {}: {err}",
                    settings
                        .output
                        .as_deref()
                        .unwrap_or("stdout".as_ref())
                        .display()
                ),
            )
            .exit(),
    };
    // The level was checked when the settings were read.
    let filter = log_filter(&settings.live.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .compact(),
        )
        .init();
    let set_log_level: LogLevelSetter = Box::new(move |level| {
        handle.reload(log_filter(level)?)?;
        Ok(())
    });
    if settings.check {
        return match app::check(&settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("tcpobs: error: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tcpobs: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(settings, Some(sources), output, set_log_level)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcpobs: error: {err}");
            ExitCode::FAILURE
        }
    }
}
