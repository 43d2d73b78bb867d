//! tcpobs as a daemon: the HTTP API, the tracer and the signals, in the order that gives
//! clear failures. The HTTP port is bound first (a port in use fails fast, before anything is
//! loaded) and `/readyz` answers 503 until every program is attached; at that moment systemd
//! is told `READY=1` too ([`notify`]). SIGHUP re-reads the config file and applies its
//! runtime settings; SIGINT/SIGTERM stop cleanly (systemd hears `STOPPING=1`).

pub mod daemon;
mod notify;

use std::{io, net::SocketAddr, sync::Arc};

use prometheus_client::{metrics::info::Info, registry::Registry};
use thiserror::Error;
use tokio::{net::TcpListener, sync::watch};
use tracing::{error, info, warn};

use self::{
    daemon::{Timing, Tracer, shutdown_signal},
    notify::Notifier,
};
use crate::{
    clock::Clock,
    config::{
        Settings, Sources,
        control::{Control, LogLevelSetter},
    },
    export::{
        http::{AppState, Readiness, router},
        metrics::{Metrics, collect::Scrape},
        output::{Output, Sink as _},
    },
    kernel::loader::{self, LoadError},
    metadata::{self, Metadata},
};

#[derive(Debug, Error)]
pub enum AppError {
    #[error("cannot listen on {addr} for the HTTP API: {source}{hint}")]
    Listen {
        addr: SocketAddr,
        source: io::Error,
        hint: &'static str,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("writing events: {0}")]
    Output(#[from] io::Error),
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen {
            addr,
            hint: if source.kind() == io::ErrorKind::AddrInUse {
                " (another tcpobs?); choose another address with --listen, or --listen none"
            } else {
                ""
            },
            source,
        })
}

/// `--check`: loads and attaches everything, prints how each family is attached, detaches.
pub fn check(settings: &Settings) -> Result<(), AppError> {
    loader::check_privileges()?;
    let loaded = loader::load(&settings.load)?;
    for family in &loaded.families {
        println!(
            "family={} strategy={} programs={}",
            family.family,
            family.strategy.as_str(),
            family.program_types()
        );
    }
    // The libcall families never fail the check: a missing library is not an error.
    if let Some(libcalls) = &loaded.libcalls {
        for (family, libraries) in libcalls.families().iter().zip(libcalls.stats().libraries) {
            println!(
                "family={} strategy={} programs={} libraries={libraries}",
                family.family,
                family.strategy.as_str(),
                family.program_types()
            );
        }
    }
    Ok(())
}

/// Runs tcpobs until SIGINT or SIGTERM. `sources` are read again on SIGHUP.
pub async fn run(
    settings: Settings,
    sources: Option<Sources>,
    mut output: Output,
    set_log_level: LogLevelSetter,
) -> Result<(), AppError> {
    // Before anything else, so that an unprivileged run says only that.
    loader::check_privileges()?;
    let listener = match settings.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let readiness = Arc::new(Readiness::new("loading the kernel programs"));
    let (control, live) = Control::new(settings.live.clone(), settings.statics(), set_log_level);
    let tracker = Arc::default();
    let health = Arc::default();
    let mut registry = Registry::default();
    let mut metrics = Metrics::new(&mut registry, &settings.labels, settings.label_series_cap);
    if metadata::is_cgroup2(&settings.meta_roots.cgroup) {
        let metadata = Arc::new(Metadata::new(settings.meta_roots.clone()));
        metrics.set_metadata(Arc::clone(&metadata));
        output.set_metadata(metadata);
    } else {
        info!(
            root = %settings.meta_roots.cgroup.display(),
            "no cgroup v2 file system here: connections get no cgroup, container or pod"
        );
    }
    registry.register(
        "tcpobs_build",
        "tcpobs version",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(Scrape {
        tracker: Arc::clone(&tracker),
        health: Arc::clone(&health),
        output: output.counts(),
    }));
    let (stop_http, http_stopped) = watch::channel(false);
    let server = listener.map(|listener| {
        let app = router(AppState {
            registry: Arc::new(registry),
            tracker: Arc::clone(&tracker),
            control: Arc::clone(&control),
            readiness: Arc::clone(&readiness),
            clock: Clock::new(),
        });
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "HTTP API listening");
        }
        let mut stopped = http_stopped;
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                error!("HTTP server: {err}");
            }
        })
    });

    // Before loading, so that an early SIGHUP does not stop tcpobs.
    tokio::spawn(on_sighup(
        sources.filter(|_| settings.config.is_some()),
        settings.clone(),
        Arc::clone(&control),
        output.reopen_handle(),
    ));
    // With no optional label, the kernel folds exchanges with the metrics' own buckets.
    let mut load = settings.load.clone();
    load.exchanges.fold = metrics.fold_config();
    let mut tracer = Tracer::start_shared(&load, tracker, health)?;
    if let Some(filters) = tracer.take_filters() {
        control.attach_filters(filters).map_err(LoadError::from)?;
    }
    control
        .attach_exchange_switch(tracer.exchange_switch())
        .map_err(LoadError::from)?;
    tracer.set_metrics(metrics);
    readiness.set_ready();
    let notifier = Notifier::from_env();
    if let Some(notifier) = &notifier {
        notifier.notify(&format!(
            "READY=1\nSTATUS=tracing TCP connections ({} hook families attached)",
            tracer.families().len()
        ));
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        families = tracer.families().len(),
        filters = ?settings.load.filters,
        "tracing TCP connections"
    );

    let timing = Timing {
        drain: settings.drain_interval,
        sweep: settings.sweep_interval,
    };
    tracer
        .run(&mut output, timing, live, shutdown_signal())
        .await?;
    if let Some(notifier) = &notifier {
        notifier.notify("STOPPING=1\nSTATUS=stopping: draining events");
    }
    readiness.set_not_ready("stopping");
    let stats = tracer.stop(&mut output)?;
    output.write_json_line(&stats.to_json_line())?;
    output.flush()?;
    info!(?stats, "stopped");
    let _ = stop_http.send(true);
    if let Some(server) = server {
        let _ = server.await;
    }
    Ok(())
}

/// On every SIGHUP: reopens the output file (log rotation) and, with `--config`, re-reads the
/// settings and applies the runtime ones.
async fn on_sighup(
    sources: Option<Sources>,
    started: Settings,
    control: Arc<Control>,
    reopen: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; SIGHUP will stop tcpobs");
        return;
    };
    while hangups.recv().await.is_some() {
        reopen.store(true, std::sync::atomic::Ordering::Relaxed);
        let Some(sources) = &sources else {
            info!("SIGHUP: output reopened (no --config to re-read)");
            continue;
        };
        match sources.load() {
            Ok(settings) => {
                if settings.statics() != started.statics() {
                    warn!("SIGHUP: settings other than the runtime ones need a restart; ignored");
                }
                match control.replace(settings.live) {
                    Ok(_) => info!("SIGHUP: configuration re-read"),
                    Err(err) => error!("SIGHUP: configuration not applied: {err}"),
                }
            }
            Err(err) => error!(
                "SIGHUP: configuration not applied: {}",
                err.to_string().trim()
            ),
        }
    }
}
