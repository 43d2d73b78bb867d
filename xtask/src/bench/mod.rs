//! `cargo xtask bench`: what tcpobs costs, side by side with no tracer and with libbpf-tools'
//! tcplife, on loopback.
//!
//! Every ratio comes from runs alternated in one session (A B A C ...), reported as the median
//! and the spread (min to max) of the per-pair ratios; absolute numbers from separate sessions
//! mean nothing on a shared, noisy machine. `--quick` is a one-minute subset, printed and not
//! written; `--smoke` runs one very short pair of everything (the test suite uses it so the
//! harness cannot rot) and writes nothing.

// `soak` reuses nginx, wrk, the tracer's runner and the machine line.
mod floor;
mod host;
pub(crate) mod http;
mod load;
mod otlp;
mod programs;
mod record_floor;
pub(crate) mod report;
pub(crate) mod tracer;

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub use self::load::hold;
use self::{
    http::Shape,
    report::{Cost, Report, Row, spread},
    tracer::{Tracer, bpf_map_bytes, cpu_seconds, histogram_quantile, rss_bytes},
};

/// How much of everything to run.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    pub name: &'static str,
    pairs: usize,
    http: Duration,
    stress: Duration,
    bulk: Duration,
    idle: usize,
    write_report: bool,
}

impl Mode {
    pub const FULL: Self = Self {
        name: "full",
        pairs: 5,
        http: Duration::from_secs(10),
        stress: Duration::from_secs(20),
        bulk: Duration::from_secs(10),
        idle: 100_000,
        write_report: true,
    };
    /// One pair of everything, shorter: a look in about two minutes, printed only (one pair
    /// is too noisy to replace the full run's figures in BENCHMARKS.md).
    pub const QUICK: Self = Self {
        name: "quick",
        pairs: 1,
        http: Duration::from_secs(2),
        stress: Duration::from_secs(5),
        bulk: Duration::from_secs(2),
        idle: 10_000,
        write_report: false,
    };
    pub const SMOKE: Self = Self {
        name: "smoke",
        pairs: 1,
        http: Duration::from_secs(1),
        stress: Duration::from_secs(2),
        bulk: Duration::from_secs(1),
        idle: 500,
        write_report: false,
    };
}

const MIB: f64 = 1024.0 * 1024.0;

fn ratios(pairs: &[(f64, f64)]) -> Vec<f64> {
    pairs.iter().map(|(base, traced)| traced / base).collect()
}

/// The workload groups, for `--only`.
pub const WORKLOADS: [&str; 6] = ["http", "stress", "bulk", "host", "scale", "otlp"];

/// Runs every workload (or those in `only`) and prints (and, for a full run of everything,
/// writes) the report.
pub fn run(root: &Path, binary: &Path, mode: Mode, only: &[String], output: &Path) -> Result<()> {
    let mut report = Report::new(mode);
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wanted("http") {
        http_workloads(root, binary, mode, &mut report)?;
    }
    if wanted("stress") {
        stress(binary, mode, &mut report)?;
        idle(binary, mode, &mut report)?;
    }
    if wanted("bulk") {
        bulk(binary, mode, &mut report)?;
    }
    if wanted("host") {
        host::run(binary, mode, &mut report)?;
    }
    if wanted("scale") {
        scale(binary, mode, &mut report)?;
    }
    if wanted("otlp") {
        otlp::run(root, binary, mode, &mut report)?;
    }
    println!("{}", report.table());
    if mode.write_report && only.is_empty() {
        report.write(output)?;
        println!("written to {}", output.display());
    }
    Ok(())
}

fn under<T>(
    binary: &Path,
    tracer: Tracer,
    args: &[&str],
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let running = tracer::start(tracer, binary, args)?;
    let result = work();
    running.stop()?;
    result
}

/// The DaemonSet's settings (deploy/kubernetes/tcpobs.toml: anomalies only, sampled, a
/// namespace label), with the bench's own listen address and output on top.
fn daemonset_args(root: &Path) -> Vec<String> {
    vec![
        "--config".to_owned(),
        root.join("deploy/kubernetes/tcpobs.toml")
            .display()
            .to_string(),
    ]
}

fn http_workloads(root: &Path, binary: &Path, mode: Mode, report: &mut Report) -> Result<()> {
    let nginx = http::Nginx::start(root)?;
    let daemonset = daemonset_args(root);
    let daemonset: Vec<&str> = daemonset.iter().map(String::as_str).collect();
    for shape in Shape::ALL {
        // Warm nginx and the page cache up before measuring.
        http::wrk(nginx.port, Duration::from_secs(1), true, shape)?;
        // With the default events (every exchange timed into the histograms, one JSON event
        // per connection) beside tcplife, and with the DaemonSet's settings; keep-alive also
        // with a JSON event for every exchange on both ends, the heaviest setting.
        for (name, close, goal) in [
            ("HTTP churn (Connection: close)", true, 0.97),
            ("HTTP keep-alive", false, 0.98),
        ] {
            let workload = format!("{name}, {shape}");
            let run = || http::wrk(nginx.port, mode.http, close, shape);
            let (mut with_tcpobs, mut with_tcplife, mut with_daemonset) =
                (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..mode.pairs {
                with_tcpobs.push((run()?, under(binary, Tracer::Tcpobs, &[], run)?));
                with_tcplife.push((run()?, under(binary, Tracer::Tcplife, &[], run)?));
                with_daemonset.push((run()?, under(binary, Tracer::Tcpobs, &daemonset, run)?));
            }
            report.push(Row::ratio(
                &workload,
                "requests/s",
                &requests_per_s(&with_tcpobs),
                &requests_per_s(&with_tcplife),
                Some((goal, true)),
                |v| format!("{v:.0}"),
            ));
            report.push(Row::ratio(
                &workload,
                "p99 latency",
                &p99(&with_tcpobs),
                &p99(&with_tcplife),
                None,
                |v| format!("{:.2} ms", v * 1e3),
            ));
            report.push(Row::ratio(
                &workload,
                "requests/s, the DaemonSet's settings",
                &requests_per_s(&with_daemonset),
                &[],
                Some((goal, true)),
                |v| format!("{v:.0}"),
            ));
            where_time_goes(binary, &workload, close, run, report)?;
        }
        let workload = format!("HTTP keep-alive, --events exchanges, {shape}");
        let run = || http::wrk(nginx.port, mode.http, false, shape);
        let args = ["--events", "exchanges"];
        let mut pairs = Vec::new();
        for _ in 0..mode.pairs {
            pairs.push((run()?, under(binary, Tracer::Tcpobs, &args, run)?));
        }
        report.push(Row::ratio(
            &workload,
            "requests/s",
            &requests_per_s(&pairs),
            &[],
            Some((0.93, true)),
            |v| format!("{v:.0}"),
        ));
    }
    Ok(())
}

type WrkPairs = [(http::WrkResult, http::WrkResult)];

fn requests_per_s(pairs: &WrkPairs) -> Vec<(f64, f64)> {
    pairs
        .iter()
        .map(|(a, b)| (a.requests_per_s, b.requests_per_s))
        .collect()
}

fn p99(pairs: &WrkPairs) -> Vec<(f64, f64)> {
    pairs.iter().map(|(a, b)| (a.p99_s, b.p99_s)).collect()
}

/// One more traced run, with the kernel's program statistics on: each program's runs and ns
/// per run, and the daemon's CPU, per request (a connection with churn, an exchange with
/// keep-alive; both ends are traced).
fn where_time_goes(
    binary: &Path,
    workload: &str,
    churn: bool,
    run: impl Fn() -> Result<http::WrkResult>,
    report: &mut Report,
) -> Result<()> {
    // With churn, a run of its own first: what keeping a record per socket costs at the least.
    let record_floors = if churn {
        record_floor_run(&run)?
    } else {
        Vec::new()
    };
    let running = tracer::start(Tracer::Tcpobs, binary, &[])?;
    let pid = running.pid().context("tcpobs pid")?;
    let (result, before, after, cpu, floors) = {
        let _stats = programs::StatsEnabled::new()?;
        let _floor = floor::Floor::attach()?;
        let own = std::process::id();
        let floors_before = programs::snapshot(own)?;
        let before = programs::snapshot(pid)?;
        let cpu_before = cpu_seconds(pid)?;
        let result = run()?;
        // Let the daemon drain the last events.
        thread::sleep(Duration::from_millis(300));
        let cpu = cpu_seconds(pid)? - cpu_before;
        let after = programs::snapshot(pid)?;
        let floors = floor::Floor::measured(&floors_before, &programs::snapshot(own)?);
        (result, before, after, cpu, floors)
    };
    running.stop()?;
    let requests = result.requests.max(1) as f64;
    for &(tracepoint, runs, ns) in &floors {
        let runs = runs as f64 / requests;
        // A tracepoint the workload hardly fires (state changes under keep-alive).
        if runs < 0.01 {
            continue;
        }
        report.push_cost(Cost {
            workload: workload.to_owned(),
            what: format!("floor: an empty program on {tracepoint}"),
            detail: format!("{runs:.2} × {ns:.0} ns"),
            per_request: String::new(),
            goal: String::new(),
            met: None,
        });
    }
    for floor in record_floors {
        let (runs, ns) = (floor.runs_per_request, floor.ns_per_run);
        let above = floor
            .empty_ns_per_run
            .map(|empty| format!(" ({:.0} above the empty program)", ns - empty))
            .unwrap_or_default();
        report.push_cost(Cost {
            workload: workload.to_owned(),
            what: format!("record floor on {} (a run of its own)", floor.tracepoint),
            detail: format!("{runs:.2} × {ns:.0} ns{above}"),
            per_request: format!("{:.0} ns", runs * ns),
            goal: String::new(),
            met: None,
        });
    }
    let mut total = 0.0;
    for cost in programs::costs(&before, &after) {
        let runs = cost.runs as f64 / requests;
        let per_request = runs * cost.ns_per_run;
        total += per_request;
        if runs < 0.01 {
            continue;
        }
        // The goal for the programs on every connection's and every call's path.
        let hot = ["set_state", "_len_", "send_", "recv_"]
            .iter()
            .any(|part| cost.name.contains(part));
        // What the program's own code costs: above the empty program on its tracepoint.
        let above = floor::under(&floors, &cost.name)
            .map(|floor| format!(" ({:.0} above the floor)", cost.ns_per_run - floor))
            .unwrap_or_default();
        report.push_cost(Cost {
            workload: workload.to_owned(),
            what: format!("kernel: {}", cost.name),
            detail: format!("{runs:.2} × {:.0} ns{above}", cost.ns_per_run),
            per_request: format!("{per_request:.0} ns"),
            goal: if hot {
                "≤ 100 ns a run".to_owned()
            } else {
                String::new()
            },
            met: hot.then_some(cost.ns_per_run <= 100.0),
        });
    }
    report.push_cost(Cost {
        workload: workload.to_owned(),
        what: "kernel: all programs".to_owned(),
        detail: String::new(),
        per_request: format!("{total:.0} ns"),
        goal: String::new(),
        met: None,
    });
    let daemon = cpu / requests * 1e9;
    let (unit, goal) = if churn {
        ("connection (2 sockets)", 1_000.0)
    } else {
        ("exchange (2 ends)", 50.0)
    };
    report.push_cost(Cost {
        workload: workload.to_owned(),
        what: format!("daemon CPU per {unit}"),
        detail: String::new(),
        per_request: format!("{daemon:.0} ns"),
        goal: format!("≤ {goal:.0} ns"),
        met: Some(daemon <= goal),
    });
    Ok(())
}

/// A record floor program's cost, measured in [`record_floor_run`].
struct RecordFloorCost {
    tracepoint: &'static str,
    runs_per_request: f64,
    ns_per_run: f64,
    /// The empty program's on the same tracepoint, in the same run.
    empty_ns_per_run: Option<f64>,
}

/// One run with only [`record_floor`]'s programs and the empty ones attached (and the program
/// statistics on). A floor that cannot be measured is reported and left out; the rest of the
/// bench goes on.
fn record_floor_run(run: impl Fn() -> Result<http::WrkResult>) -> Result<Vec<RecordFloorCost>> {
    let _stats = programs::StatsEnabled::new()?;
    let (_floor, _record_floor) =
        match (floor::Floor::attach(), record_floor::RecordFloor::attach()) {
            (Ok(floor), Ok(record_floor)) => (floor, record_floor),
            (Err(err), _) | (_, Err(err)) => {
                eprintln!("no record floor: {err:#}");
                return Ok(Vec::new());
            }
        };
    let own = std::process::id();
    let before = programs::snapshot(own)?;
    let result = run()?;
    let after = programs::snapshot(own)?;
    let costs = programs::costs(&before, &after);
    let empty = floor::Floor::measured(&before, &after);
    let requests = result.requests.max(1) as f64;
    Ok(record_floor::PROGRAMS
        .iter()
        .filter_map(|&(tracepoint, name)| {
            let cost = costs.iter().find(|cost| cost.name == name)?;
            Some(RecordFloorCost {
                tracepoint,
                runs_per_request: cost.runs as f64 / requests,
                ns_per_run: cost.ns_per_run,
                empty_ns_per_run: empty
                    .iter()
                    .find(|(measured, ..)| *measured == tracepoint)
                    .map(|&(.., ns)| ns),
            })
        })
        .collect())
}

/// One traced stress run: connections/s, events lost, daemon CPU µs per connection, and the
/// close → event delay p50 and p99 (s).
struct StressRun {
    per_second: f64,
    lost: f64,
    micros: f64,
    p50: f64,
    p99: f64,
}

fn stress_traced(binary: &Path, mode: Mode, clients: usize) -> Result<StressRun> {
    let running = tracer::start(Tracer::Tcpobs, binary, &[])?;
    let pid = running.pid().context("tcpobs pid")?;
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let connections = load::churn(mode.stress, clients)?;
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last events drain before reading the counters.
    thread::sleep(Duration::from_millis(300));
    let cpu = cpu_seconds(pid)? - cpu_before;
    let (metrics, _) = running.get("/metrics")?;
    running.stop()?;
    let quantile = |q| histogram_quantile(&metrics, "tcpobs_event_delay_seconds", q);
    Ok(StressRun {
        per_second: connections as f64 / elapsed,
        lost: tracer::sample_value(&metrics, "tcpobs_events_lost_total").unwrap_or(f64::NAN),
        micros: cpu / connections.max(1) as f64 * 1e6,
        p50: quantile(0.50).unwrap_or(f64::NAN),
        p99: quantile(0.99).unwrap_or(f64::NAN),
    })
}

fn stress(binary: &Path, mode: Mode, report: &mut Report) -> Result<()> {
    let clients = 4;
    let mut pairs = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..mode.pairs {
        let untraced = load::churn(mode.stress, clients)? as f64 / mode.stress.as_secs_f64();
        let run = stress_traced(binary, mode, clients)?;
        pairs.push((untraced, run.per_second));
        runs.push(run);
    }
    let name = "connection-rate stress";
    report.push(Row::ratio(name, "connections/s", &pairs, &[], None, |v| {
        format!("{v:.0}")
    }));
    let lost: f64 = runs.iter().map(|run| run.lost).sum();
    report.push(Row::single(
        name,
        "events lost (all runs)",
        String::new(),
        format!("{lost}"),
        String::new(),
        Some(("0", lost == 0.0)),
    ));
    let column = |pick: fn(&StressRun) -> f64| spread(&runs.iter().map(pick).collect::<Vec<_>>());
    let (micros, low, high) = column(|run| run.micros);
    report.push(Row::single(
        name,
        "daemon CPU per connection (2 sockets)",
        String::new(),
        format!("{micros:.2} µs ({low:.2}–{high:.2})"),
        String::new(),
        Some(("≤ 1 µs", micros <= 1.0)),
    ));
    let (p50, _, _) = column(|run| run.p50);
    let (p99, _, worst) = column(|run| run.p99);
    report.push(Row::single(
        name,
        "close → event delay p50 / p99 (worst p99)",
        String::new(),
        format!(
            "{:.2} / {:.2} ms ({:.2})",
            p50 * 1e3,
            p99 * 1e3,
            worst * 1e3
        ),
        String::new(),
        Some(("p99 ≤ 50 ms", p99 <= 0.050)),
    ));
    Ok(())
}

/// The daemon's own cost with nothing to trace (`--port 1`: no socket on the host passes the
/// filter; `--phases off`: no library calls, which the filters do not apply to; so the kernel
/// sends nothing whatever the host's traffic): its timers, sweeps and threads, in CPU time
/// and wake-ups per second.
fn idle(binary: &Path, mode: Mode, report: &mut Report) -> Result<()> {
    let running = tracer::start(Tracer::Tcpobs, binary, &["--port", "1", "--phases", "off"])?;
    let pid = running.pid().context("tcpobs pid")?;
    // Past start-up, and past the ten empty drains after which the reader waits.
    thread::sleep(Duration::from_secs(2));
    let (cpu_before, wakeups_before) = (cpu_seconds(pid)?, tracer::wakeups(pid)?);
    thread::sleep(mode.stress);
    let (cpu, wakeups) = (
        cpu_seconds(pid)? - cpu_before,
        tracer::wakeups(pid)? - wakeups_before,
    );
    running.stop()?;
    let seconds = mode.stress.as_secs_f64();
    report.push(Row::single(
        "nothing to trace (--port 1 --phases off)",
        "daemon CPU and wake-ups per second",
        String::new(),
        format!(
            "{:.2} ms/s ({:.3} % of a core), {:.0} wake-ups/s",
            cpu / seconds * 1e3,
            cpu / seconds * 100.0,
            wakeups as f64 / seconds
        ),
        String::new(),
        None,
    ));
    Ok(())
}

fn bulk(binary: &Path, mode: Mode, report: &mut Report) -> Result<()> {
    let mut pairs = Vec::new();
    let mut events_per_second = Vec::new();
    for _ in 0..mode.pairs {
        let base = load::bulk(mode.bulk)?;
        let running = tracer::start(Tracer::Tcpobs, binary, &[])?;
        let events = |running: &tracer::Running| -> Result<f64> {
            let (metrics, _) = running.get("/metrics")?;
            Ok(["open", "burst", "state", "close", "connect"]
                .iter()
                .filter_map(|kind| {
                    tracer::sample_value(
                        &metrics,
                        &format!("tcpobs_events_total{{kind=\"{kind}\"}}"),
                    )
                })
                .sum())
        };
        let before = events(&running)?;
        let traced = load::bulk(mode.bulk)?;
        thread::sleep(Duration::from_millis(300));
        let after = events(&running)?;
        running.stop()?;
        pairs.push((base, traced));
        // Other traffic on the machine counts too: this is an upper bound.
        events_per_second.push((after - before) / mode.bulk.as_secs_f64());
    }
    report.push(Row::ratio(
        "bulk transfer (one stream)",
        "throughput",
        &pairs,
        &[],
        Some((0.99, true)),
        |v| format!("{:.0} MiB/s", v / MIB),
    ));
    let (median, low, high) = spread(&events_per_second);
    report.push(Row::single(
        "bulk transfer (one stream)",
        "ring buffer events/s, all sockets on the host",
        String::new(),
        format!("{median:.1} ({low:.1}–{high:.1})"),
        String::new(),
        None,
    ));
    Ok(())
}

fn scale(binary: &Path, mode: Mode, report: &mut Report) -> Result<()> {
    let sockets = (2 * mode.idle + 4096).next_power_of_two().to_string();
    let running = tracer::start(Tracer::Tcpobs, binary, &["--max-sockets", &sockets])?;
    let pid = running.pid().context("tcpobs pid")?;
    let rss_before = rss_bytes(pid)?;
    let idle = load::idle(mode.idle)?;
    // A few sweeps over the full table.
    thread::sleep(Duration::from_secs(3));
    let rss = rss_bytes(pid)?;
    let mapped = tracer::bpf_mapping_rss_bytes(pid)?;
    let maps = bpf_map_bytes(pid)?;
    let mut scrapes: Vec<f64> = (0..5)
        .map(|_| running.get("/metrics").map(|(_, took)| took.as_secs_f64()))
        .collect::<Result<_>>()?;
    scrapes.sort_by(f64::total_cmp);
    let sweep = running.metric("tcpobs_sweep_duration_seconds")?;
    let established = running
        .metric("tcpobs_open_connections{role=\"client\",state=\"ESTABLISHED\"}")?
        + running.metric("tcpobs_open_connections{role=\"server\",state=\"ESTABLISHED\"}")?;
    let lost_opening = running.metric("tcpobs_events_lost_total")?;
    let reported_before = running.metric_sum("tcpobs_connections_reported_total")?;
    let ends_lost_before = running.metric_sum("tcpobs_connections_lost_total")?;
    // Closing them all at once (the holders exit) is the harshest burst there is: every
    // connection's close events within about a second.
    drop(idle);
    thread::sleep(Duration::from_secs(3));
    let lost_closing = running.metric("tcpobs_events_lost_total")? - lost_opening;
    // Not lost: close records the full ring could not take wait in the socket table, and state
    // events are not sent while it is more than half full (the state is in the record).
    let spilled = running.metric("tcpobs_close_events_spilled_total")?;
    let skipped = running.metric("tcpobs_state_events_skipped_total")?;
    // Every end of the idle connections (the host's other connections add a few), reported
    // within 30 s (spilled closes are read after the ring's events).
    let expected = 2.0 * mode.idle as f64;
    let counted = || -> Result<(f64, f64)> {
        Ok((
            running.metric_sum("tcpobs_connections_reported_total")? - reported_before,
            running.metric_sum("tcpobs_connections_lost_total")? - ends_lost_before,
        ))
    };
    let waiting = Instant::now();
    let (mut reported, mut ends_lost) = counted()?;
    while reported + ends_lost < expected && waiting.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(200));
        (reported, ends_lost) = counted()?;
    }
    let waited = waiting.elapsed().as_secs_f64() + 3.0;
    // Runs the kernel skipped (a hook firing in an interrupt during the same program's run),
    // and the closes the programs did not see (in a skipped run, or with the record gone from
    // the table), which the stall check finds and reports partial: not a subset of the runs.
    let missed = running.metric_sum("tcpobs_program_runs_missed_total")?;
    let unseen = running.metric("tcpobs_closes_unseen_total")?;
    running.stop()?;
    let name = format!("scale ({} idle connections)", mode.idle);
    report.push(Row::single(
        &name,
        "events lost opening / closing them all at once",
        String::new(),
        format!(
            "{lost_opening} / {lost_closing} ({spilled} closes spilled and read later, \
             {skipped} state events skipped)"
        ),
        String::new(),
        (mode.idle >= 100_000).then_some(("0", lost_opening + lost_closing == 0.0)),
    ));
    report.push(Row::single(
        &name,
        "connection ends reported / counted lost after closing them",
        format!("{} ends", 2 * mode.idle),
        format!(
            "{reported} / {ends_lost} (within {waited:.1} s; {missed} program runs skipped by \
             the kernel; {unseen} closes the programs did not see, found by the stall check)"
        ),
        String::new(),
        None,
    ));
    // The ring buffer's mapping is resident from the start and is kernel memory, counted
    // under kernel map memory: the goal is judged on the daemon's own memory, and both
    // figures are shown.
    let own = rss.saturating_sub(mapped);
    report.push(Row::single(
        &name,
        "daemon RSS without / with the ring buffer mapping",
        format!(
            "{:.1} MiB before",
            rss_before.saturating_sub(mapped) as f64 / MIB
        ),
        format!("{:.1} / {:.1} MiB", own as f64 / MIB, rss as f64 / MIB),
        String::new(),
        (mode.idle >= 100_000).then_some(("≤ 64 MiB", (own as f64) <= 64.0 * MIB)),
    ));
    report.push(Row::single(
        &name,
        "kernel map memory",
        String::new(),
        format!("{:.1} MiB (--max-sockets {sockets})", maps as f64 / MIB),
        String::new(),
        None,
    ));
    report.push(Row::single(
        &name,
        "/metrics scrape (median of 5)",
        String::new(),
        format!("{:.1} ms", scrapes[scrapes.len() / 2] * 1e3),
        String::new(),
        None,
    ));
    report.push(Row::single(
        &name,
        "hang-detection sweep",
        String::new(),
        format!("{:.1} ms over {established} sockets", sweep * 1e3),
        String::new(),
        None,
    ));
    Ok(())
}
