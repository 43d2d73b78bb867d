//! A collector that goes away mid-run, killed (its port refuses) or frozen (SIGSTOP: it
//! accepts and never answers): tcpobs keeps tracing, counts what it cannot send, and sends
//! again once the collector is back.

use tcpobs_tests::{
    listen,
    otlp::{Kind, Receiver},
    traffic::{client, serve},
};

use super::{connection_events, counter, settled, start_daemon};

/// How the collector goes away.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// Killed: its port refuses connections.
    Killed,
    /// SIGSTOPped: connections are accepted, nothing answers (every request times out).
    Frozen,
}

/// A collector that goes away mid-run: tcpobs keeps tracing (every connection's event is
/// written), counts what it cannot send, and sends again once the collector is back.
fn collector_stopped_mid_run(protocol: &str, outage: Outage) {
    let mut receiver = Receiver::start(Kind::Sink);
    let (listener, addr) = listen("127.0.0.1:0");
    let rounds = [10, 100, 10];
    let server = serve(listener, rounds.iter().sum());
    let daemon = start_daemon(
        &receiver,
        protocol,
        &["--port", &addr.port().to_string()],
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "20"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_BLRP_MAX_QUEUE_SIZE", "20"),
            ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ],
    );
    let mut written = 0;
    let round = |n: usize, written: &mut usize| {
        for _ in 0..n {
            client(addr, 1);
        }
        *written += 2 * n;
        let expected = *written;
        daemon.wait_events(&format!("{expected} connection events"), |events| {
            connection_events(events).len() >= expected
        })
    };

    round(rounds[0], &mut written);
    receiver.wait_for("the first traces", |received| {
        (received
            .spans
            .iter()
            .filter(|s| s["name"] == "tcp.connection")
            .count()
            >= 2 * rounds[0])
            .then_some(())
    });

    match outage {
        Outage::Killed => receiver.kill(),
        Outage::Frozen => receiver.freeze(),
    }
    let events = round(rounds[1], &mut written);
    assert_eq!(
        connection_events(&events).len(),
        written,
        "tracing goes on while the collector is away"
    );
    let exposition = settled(&daemon, &["traces", "logs"]);
    for signal in ["traces", "logs"] {
        let dropped: f64 = ["queue_full", "export_failed"]
            .iter()
            .map(|reason| {
                counter(
                    &exposition,
                    &format!(
                        "tcpobs_otlp_dropped_total{{signal=\"{signal}\",reason=\"{reason}\"}}"
                    ),
                )
            })
            .sum();
        assert!(dropped > 0.0, "{signal}: drops are counted\n{exposition}");
    }
    let reason = match outage {
        Outage::Killed => "transport",
        Outage::Frozen => "timeout",
    };
    let errors = counter(
        &exposition,
        &format!("tcpobs_otlp_export_errors_total{{signal=\"traces\",reason=\"{reason}\"}}"),
    );
    assert!(
        errors > 0.0,
        "failed requests are counted as {reason}\n{exposition}"
    );
    let exported_before = counter(&exposition, "tcpobs_otlp_exported_total{signal=\"traces\"}");

    match outage {
        Outage::Killed => receiver.restart(),
        Outage::Frozen => receiver.thaw(),
    }
    let events = round(rounds[2], &mut written);
    // The last round's connections arrive: export resumed by itself.
    let last: Vec<u64> = connection_events(&events)
        .iter()
        .rev()
        .take(2 * rounds[2])
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    receiver.wait_for(
        "the traces sent after the collector came back",
        |received| {
            last.iter()
                .all(|id| received.trace_of(*id).is_some())
                .then_some(())
        },
    );
    let exposition = settled(&daemon, &["traces", "logs", "metrics"]);
    let exported = counter(&exposition, "tcpobs_otlp_exported_total{signal=\"traces\"}");
    assert!(exported >= exported_before + 2.0 * rounds[2] as f64);
    let offered = counter(&exposition, "tcpobs_otlp_offered_total{signal=\"traces\"}");
    assert_eq!(offered, written as f64, "every connection was handed over");
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    server.join().unwrap();
}

#[test]
fn a_collector_killed_mid_run_over_http() {
    collector_stopped_mid_run("http/protobuf", Outage::Killed);
}

#[test]
fn a_collector_frozen_mid_run_over_grpc() {
    collector_stopped_mid_run("grpc", Outage::Frozen);
}
