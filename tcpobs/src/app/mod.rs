//! tcpobs as a daemon: the HTTP API, the tracer and the signals, in the order that gives
//! clear failures. The open-file limit is raised to its hard limit, then the HTTP listeners
//! are bound (a port in use fails fast, before anything is loaded) and `/readyz` answers 503
//! until every program is attached; at that moment systemd is told `READY=1` too
//! ([`notify`]). SIGHUP re-reads the config file and applies its runtime settings, and
//! re-reads the web config (certificates, users); SIGINT/SIGTERM stop cleanly (systemd hears
//! `STOPPING=1`).

pub mod daemon;
mod notify;
mod pacing;

use std::{io, net::SocketAddr, path::Path, sync::Arc};

use axum::{Router, middleware::from_fn_with_state};
use prometheus_client::{metrics::info::Info, registry::Registry};
use thiserror::Error;
use tokio::{
    net::TcpListener,
    signal::unix::{Signal, SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use self::{
    daemon::{Stats, Timing, Tracer},
    notify::Notifier,
};
use crate::{
    clock::Clock,
    config::{
        Endpoint, Settings, Sources,
        control::{Control, LogLevelSetter},
    },
    export::{
        http::{
            AppState, Readiness,
            guard::{Gate, guard},
            metrics_router, router,
            serve::{Api, Bound, HttpMetrics, Server, bind_unix},
            web::Web,
            webconfig::WebConfigError,
        },
        metrics::{Metrics, collect::Scrape},
        otlp::{Otlp, OtlpMetrics, Tee, unix_now_ns},
        output::{
            Output,
            writer::{ReopenHandle, STOP_DEADLINE},
        },
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
    #[error("cannot listen on {endpoint} for the admin API: {source}{hint}")]
    AdminListen {
        endpoint: String,
        source: io::Error,
        hint: &'static str,
    },
    #[error("--web-config-file {}: {message}", path.display())]
    WebConfig {
        path: std::path::PathBuf,
        message: String,
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

async fn bind_admin(endpoint: &Endpoint) -> Result<Bound, AppError> {
    let result = match endpoint {
        Endpoint::Tcp(addr) => TcpListener::bind(addr).await.map(Bound::Tcp),
        Endpoint::Unix(path) => bind_unix(path).map(|listener| Bound::Unix(listener, path.clone())),
    };
    result.map_err(|source| AppError::AdminListen {
        endpoint: endpoint.to_string(),
        hint: match source.kind() {
            io::ErrorKind::AddrInUse => {
                " (another tcpobs?); choose another with --admin-listen, or --admin-listen none"
            }
            _ => "; choose another with --admin-listen, or --admin-listen none",
        },
        source,
    })
}

/// Raises the soft open-file limit to the hard one (systemd starts services at 1,024), so that
/// the API's connection bound, not the limit, decides when connections are turned away.
/// Returns the limit in force.
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let soft = limit.rlim_cur;
    // An unlimited hard limit still stops at the kernel's fs.nr_open.
    let hard = if limit.rlim_max == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        limit.rlim_max
    };
    if soft >= hard {
        info!(limit = soft, "open-file limit (already the hard limit)");
        return Some(soft);
    }
    limit.rlim_cur = hard;
    // SAFETY: setrlimit reads the struct it is given; raising the soft limit up to the hard
    // one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        info!(
            from = soft,
            to = hard,
            "open-file limit raised to the hard limit"
        );
        Some(hard)
    } else {
        warn!(
            limit = soft,
            "cannot raise the open-file limit: {}",
            io::Error::last_os_error()
        );
        Some(soft)
    }
}

/// The connection bound per listener, lowered if the open-file limit cannot hold two full
/// listeners and the daemon's own files (BPF maps, programs, the output).
fn connection_bound(wanted: usize, open_files: Option<u64>) -> usize {
    let Some(limit) = open_files else {
        return wanted;
    };
    let room = usize::try_from(limit.saturating_sub(256) / 2).unwrap_or(usize::MAX);
    if room < wanted {
        let bound = room.max(16);
        warn!(
            wanted,
            bound,
            open_files = limit,
            "--http-max-connections lowered to fit the open-file limit (raise LimitNOFILE)"
        );
        bound
    } else {
        wanted
    }
}

fn guarded(router: Router, api: Api, tcp: bool, web: Option<Arc<Web>>) -> Router {
    let gate = Arc::new(Gate {
        api,
        tcp,
        web,
        refused: Default::default(),
    });
    router.layer(from_fn_with_state(gate, guard))
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
    // Optional families that could not attach are named, with why (they never fail the check).
    for line in loaded.unattached_lines() {
        println!("{line}");
    }
    for line in loaded.readings() {
        println!("{line}");
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
    let started_ns = unix_now_ns();
    // Before anything else, so that an unprivileged run says only that.
    loader::check_privileges()?;
    let open_files = raise_open_file_limit();
    let max_connections = connection_bound(settings.http_max_connections, open_files);
    let listener = match settings.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let admin = match &settings.admin_listen {
        Some(endpoint) => Some(bind_admin(endpoint).await?),
        None => None,
    };
    let web = match &settings.web_config {
        Some(path) => Some(Arc::new(Web::load(path).map_err(
            |err: WebConfigError| AppError::WebConfig {
                path: path.clone(),
                message: err.to_string(),
            },
        )?)),
        None => None,
    };
    let readiness = Arc::new(Readiness::new("loading the kernel programs"));
    let (control, live) = Control::new(settings.live.clone(), settings.statics(), set_log_level);
    let tracker = Arc::default();
    let health = Arc::default();
    let mut registry = Registry::default();
    let mut metrics = Metrics::new(&mut registry, &settings.labels, settings.label_series_cap);
    let mut shared_metadata = None;
    if metadata::is_cgroup2(&settings.meta_roots.cgroup) {
        let metadata = Arc::new(Metadata::new(settings.meta_roots.clone()));
        metrics.set_metadata(Arc::clone(&metadata));
        output.set_metadata(Arc::clone(&metadata));
        shared_metadata = Some(metadata);
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
    let http_metrics = HttpMetrics::new(&mut registry);
    let otlp_metrics = OtlpMetrics::new(&settings.otlp);
    if let Some(otlp_metrics) = &otlp_metrics {
        registry.register_collector(Box::new(otlp_metrics.clone()));
    }
    let registry = Arc::new(registry);
    let (stop_http, http_stopped) = watch::channel(false);
    let state = AppState {
        registry: Arc::clone(&registry),
        tracker: Arc::clone(&tracker),
        control: Arc::clone(&control),
        readiness: Arc::clone(&readiness),
        clock: Clock::new(),
        refused: Arc::default(),
    };
    let mut servers = Vec::new();
    if let Some(listener) = listener {
        if let Ok(addr) = listener.local_addr() {
            let (tls, users) = web
                .as_ref()
                .map_or((false, 0), |web| (web.tls(), web.config().users.len()));
            info!(%addr, tls, basic_auth_users = users, "HTTP API (metrics) listening");
            if users > 0 && !tls && !addr.ip().is_loopback() {
                warn!(
                    %addr,
                    "basic auth without TLS: passwords cross the network in clear text; add \
                     tls_server_config to the web config"
                );
            }
        }
        let server = Server {
            api: Api::Metrics,
            bound: Bound::Tcp(listener),
            router: guarded(
                metrics_router(state.clone()),
                Api::Metrics,
                true,
                web.clone(),
            ),
            web: web.clone(),
            max_connections,
            metrics: http_metrics.clone(),
        };
        servers.push(tokio::spawn(server.run(http_stopped.clone())));
    }
    if let Some(bound) = admin {
        // Over TCP the web config's TLS and users apply (start-up checked that it has users);
        // a Unix socket is guarded by its file mode.
        let (tcp, admin_web) = match &bound {
            Bound::Tcp(listener) => {
                if let Ok(addr) = listener.local_addr() {
                    info!(admin = %addr, "HTTP API (admin) listening, basic auth required");
                }
                (true, web.clone())
            }
            Bound::Unix(_, path) => {
                info!(admin = %path.display(), "HTTP API (admin) listening, mode 0600");
                (false, None)
            }
        };
        let server = Server {
            api: Api::Admin,
            bound,
            router: guarded(router(state.clone()), Api::Admin, tcp, admin_web.clone()),
            web: admin_web,
            max_connections,
            metrics: http_metrics,
        };
        servers.push(tokio::spawn(server.run(http_stopped)));
    }

    // Installed before loading (here, not in the task, which may start later), so that an
    // early SIGHUP does not stop tcpobs.
    tokio::spawn(on_sighup(
        hangup_signal(),
        sources.filter(|_| settings.config.is_some()),
        settings.clone(),
        Arc::clone(&control),
        output.reopen_handle(),
        web,
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
    // Before anyone hears that tcpobs is ready: a SIGTERM from then on stops it cleanly.
    let shutdown = shutdown_signal();
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
    let mut otlp = otlp_metrics.map(|otlp_metrics| {
        Otlp::start(
            &settings.otlp,
            &otlp_metrics,
            Arc::clone(&registry),
            shared_metadata,
            Clock::new(),
            started_ns,
        )
    });
    let mut sinks = Tee {
        output: &mut output,
        otlp: otlp.as_mut(),
    };
    tracer.run(&mut sinks, timing, live, shutdown).await?;
    if let Some(notifier) = &notifier {
        notifier.notify("STOPPING=1\nSTATUS=stopping: draining events");
    }
    readiness.set_not_ready("stopping");
    let mut stats = tracer.stop(&mut sinks)?;
    // A reader of the output that stopped reading delays the exit by a few seconds at most.
    let closed = output.close(STOP_DEADLINE, |totals| {
        Stats {
            output: totals,
            ..stats
        }
        .to_json_line()
    });
    stats.output = closed.totals;
    if let Some(otlp) = otlp {
        otlp.stop().await;
    }
    info!(?stats, "stopped");
    let _ = stop_http.send(true);
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}

/// Re-reads the web config; on error the one in force stays.
fn reload_web(web: &Web) {
    match web.reload() {
        Ok(reloaded) => info!(
            path = %web.path().display(),
            tls = reloaded.tls,
            basic_auth_users = reloaded.users,
            "SIGHUP: web config re-read (certificates and users)"
        ),
        Err(err) => error!(
            path = %web.path().display(),
            "SIGHUP: web config not applied, the previous one stays: {err}"
        ),
    }
}

/// Completes on SIGINT or SIGTERM, delivered at any time after this call. The handlers are
/// installed here, not when the future is first polled: the daemon announces itself ready
/// before its loop polls the future, and a signal in between would otherwise take the default
/// action (exit at once, with no final drain and no `stats` event).
fn shutdown_signal() -> impl Future<Output = ()> + use<> {
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = signals else {
            warn!("cannot install signal handlers; stop tcpobs with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT: stopping"),
            _ = terminate.recv() => info!("SIGTERM: stopping"),
        }
    }
}

/// SIGHUP's handler, installed now; `None` (warned) if it cannot be.
fn hangup_signal() -> Option<Signal> {
    let hangups = signal(SignalKind::hangup());
    if hangups.is_err() {
        warn!("cannot install the SIGHUP handler; SIGHUP will stop tcpobs");
    }
    hangups.ok()
}

/// On every SIGHUP: reopens the output file (log rotation), re-reads the web config and, with
/// `--config`, re-reads the settings and applies the runtime ones.
async fn on_sighup(
    hangups: Option<Signal>,
    sources: Option<Sources>,
    started: Settings,
    control: Arc<Control>,
    reopen: ReopenHandle,
    web: Option<Arc<Web>>,
) {
    let Some(mut hangups) = hangups else {
        return;
    };
    while hangups.recv().await.is_some() {
        reopen.request();
        if let Some(web) = &web {
            reload_web(web);
        }
        let Some(sources) = &sources else {
            info!("SIGHUP: output reopened (no --config to re-read)");
            continue;
        };
        match sources.load() {
            Ok(settings) => {
                if settings.statics() != started.statics() {
                    warn!("SIGHUP: settings other than the runtime ones need a restart; ignored");
                }
                let by = format!(
                    "SIGHUP (re-read {})",
                    settings
                        .config
                        .as_deref()
                        .unwrap_or(Path::new("the config file"))
                        .display()
                );
                match control.replace(settings.live, &by) {
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

#[cfg(test)]
mod tests {
    use std::{process::Command, time::Duration};

    use tokio::time::timeout;

    use super::{hangup_signal, shutdown_signal};

    /// Set in the child process that runs a signal test ([`in_child`]).
    const CHILD: &str = "TCPOBS_SIGNAL_TEST_CHILD";

    /// A bound on a wait that should end at once: a hang becomes a failure.
    const PATIENCE: Duration = Duration::from_secs(60);

    /// True in a child process made to run this module's test `name` alone; in the test
    /// binary itself, runs that child and checks that it passed. A handler tokio installs stays
    /// for the life of the process: in the test binary, a SIGINT or SIGTERM meant to stop it
    /// would then be caught and ignored. Without a handler, the signal ends the child.
    fn in_child(name: &str) -> bool {
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("app::tests::{name}"),
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "{name}, run in a child process: {}\n{}{}",
            child.status,
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        false
    }

    fn raise(signal: libc::c_int) {
        // SAFETY: kill and getpid have no preconditions.
        assert_eq!(unsafe { libc::kill(libc::getpid(), signal) }, 0);
    }

    /// The handlers are in place once `shutdown_signal` returns, before its future is polled
    /// (the daemon announces itself ready in between).
    #[tokio::test]
    async fn a_sigterm_before_the_first_poll_is_caught() {
        if !in_child("a_sigterm_before_the_first_poll_is_caught") {
            return;
        }
        let shutdown = shutdown_signal();
        raise(libc::SIGTERM);
        timeout(PATIENCE, shutdown)
            .await
            .expect("the shutdown future completes");
    }

    /// SIGHUP's handler is in place once `hangup_signal` returns, before the task that waits
    /// on it runs.
    #[tokio::test]
    async fn a_sighup_before_the_task_runs_is_caught() {
        if !in_child("a_sighup_before_the_task_runs_is_caught") {
            return;
        }
        let mut hangups = hangup_signal().expect("a SIGHUP handler");
        raise(libc::SIGHUP);
        assert_eq!(timeout(PATIENCE, hangups.recv()).await, Ok(Some(())));
    }
}
