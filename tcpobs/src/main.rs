//! `tcpobs`: parse flags, set up logging, run the tracer, map errors to exit codes
//! (0 after a clean stop, 1 for runtime errors such as missing privileges or kernel features,
//! 2 for invalid settings).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _, error::ErrorKind};
use tcpobs::{
    config::{Cli, Settings},
    daemon::{Tracer, shutdown_signal},
    output::{Clock, Output},
};
use tracing::info;

fn main() -> ExitCode {
    let settings = match Cli::parse().into_settings() {
        Ok(settings) => settings,
        Err(err) => err.exit(),
    };
    let output = match Output::open(
        settings.output.as_deref(),
        settings.format.clone(),
        Clock::new(),
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&settings.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .compact()
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tcpobs: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings, output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcpobs: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings, mut output: Output) -> anyhow::Result<()> {
    let mut tracer = Tracer::start(&settings.load)?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        hooks = tracer.attached().len(),
        ports = ?settings.load.ports,
        "tracing TCP connections"
    );
    tracer
        .run(&mut output, settings.drain_interval, shutdown_signal())
        .await
        .context("writing events")?;
    let stats = tracer.stop(&mut output).context("writing events")?;
    output
        .write_json_line(&stats.to_json_line())
        .context("writing events")?;
    tcpobs::output::Sink::flush(&mut output).context("writing events")?;
    info!(?stats, "stopped");
    Ok(())
}
