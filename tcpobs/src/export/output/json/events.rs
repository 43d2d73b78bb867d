//! Every JSON event tcpobs writes, field by field: `connection` (one per connection, at its
//! close), `exchange` (one per request/response exchange), `anomaly` (a live connection
//! stuck), `dns` (one per name resolution), `tls` (one per TLS handshake) and `stats` (the
//! final counters). The field writers are in the parent module; [`super::SCHEMA_VERSION`] is
//! bumped on any incompatible change here.

use super::{Fields, Line, Object, key};
use crate::{
    clock::WallClock,
    export::output::OutputTotals,
    kernel::{
        libcalls::LibcallStats,
        reader::{KernelStats, ReaderStats},
    },
    metadata::Meta,
    model::{
        AnomalyRecord, ConnectionRecord, DnsRecord, ExchangeRecord, Record, Stuck, TlsRecord,
        drop_reason_name, eai_name, state_name,
    },
    tracker::TrackerStats,
};

/// One event of type `kind` on `out`: `fields`, then the end of the object and the line.
fn write(out: &mut Line, kind: &str, fields: impl FnOnce(&mut Object<'_>)) {
    let mut object = Object::new(out, kind);
    fields(&mut object);
    object.end();
}

/// The fields of `record`'s event, if it makes one (`Opened` and `Unstuck` make none).
pub(crate) fn fields_of(
    object: &mut impl Fields,
    record: &Record,
    anomalies: &[&str],
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    match record {
        Record::Connection(record) => connection_fields(object, record, anomalies, meta, clock),
        Record::Exchange(record) => exchange_fields(object, record, meta, clock),
        Record::Anomaly(record) => anomaly_fields(object, record, meta, clock),
        Record::Dns(record) => dns_fields(object, record, clock),
        Record::Tls(record) => tls_fields(object, record, clock),
        Record::Opened(_) | Record::Unstuck(..) => {}
    }
}

/// A `connection` event; `anomalies` says why it is one (see `select::anomalies_of`), `meta`
/// where its process runs.
pub(crate) fn connection(
    out: &mut Line,
    record: &ConnectionRecord,
    anomalies: &[&str],
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    write(out, "connection", |object| {
        connection_fields(object, record, anomalies, meta, clock)
    });
}

/// The fields of a `connection` event, in order (`type` and `schema_version` aside).
pub(crate) fn connection_fields(
    object: &mut impl Fields,
    record: &ConnectionRecord,
    anomalies: &[&str],
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    let end_ns = record.start_ns + record.lifetime_ns;
    object
        .u64(key!("id"), record.id)
        .time(key!("time"), clock.unix_ns(end_ns))
        .time(key!("start"), clock.unix_ns(record.start_ns))
        .str(key!("role"), record.role.as_str())
        .bool(key!("partial"), record.partial.is_some())
        .opt_str(
            key!("partial_reason"),
            record.partial.map(|reason| reason.as_str()),
        )
        .ip(key!("local_ip"), record.addrs.local().ip())
        .u64(key!("local_port"), u64::from(record.addrs.local().port()))
        .ip(key!("remote_ip"), record.addrs.remote().ip())
        .u64(key!("remote_port"), u64::from(record.addrs.remote().port()))
        .process(record.process.as_ref())
        .meta(meta)
        .secs(key!("connect_s"), record.connect_ns)
        .opt_str(
            key!("connect_failure"),
            record.connect_failure.map(|f| f.as_str()),
        )
        .opt_str(key!("dns_host"), record.dns().map(|dns| &*dns.host))
        .secs(key!("dns_s"), record.dns().map(|dns| dns.duration_ns))
        .secs(
            key!("tls_handshake_s"),
            record.tls().map(|tls| tls.duration_ns),
        )
        .opt_bool(key!("tls_ok"), record.tls().and_then(|tls| tls.ok))
        .secs(key!("lifetime_s"), Some(record.lifetime_ns))
        .u64(key!("exchanges"), u64::from(record.exchanges))
        .u64(key!("bytes_sent"), record.bytes_sent)
        .u64(key!("bytes_received"), record.bytes_received)
        .u64(key!("retransmits"), u64::from(record.retransmits));
    let tcp = record.tcp.as_ref();
    object
        .secs(key!("rtt_s"), tcp.and_then(|t| t.rtt_ns))
        .secs(key!("rtt_var_s"), tcp.and_then(|t| t.rtt_var_ns))
        .opt_u64(
            key!("tcp_total_retrans"),
            tcp.map(|t| u64::from(t.total_retrans)),
        )
        .opt_u64(key!("tcp_bytes_acked"), tcp.map(|t| t.bytes_acked))
        .opt_u64(key!("tcp_bytes_received"), tcp.map(|t| t.bytes_received));
    let diag = record.diag.parts();
    object
        .opt_u64(key!("syn_retransmits"), diag.syn_retransmits.map(u64::from))
        .opt_u64(key!("rto_count"), diag.rto_count.map(u64::from))
        .secs(key!("busy_s"), diag.busy_ns)
        .secs(key!("rwnd_limited_s"), diag.rwnd_limited_ns)
        .secs(key!("sndbuf_limited_s"), diag.sndbuf_limited_ns)
        .opt_u64(
            key!("zero_window_probes"),
            diag.zero_window_probes.map(u64::from),
        )
        .secs(key!("accept_wait_s"), diag.accept_wait_ns)
        .u64(key!("packet_drops"), u64::from(diag.packet_drops))
        .opt_str(
            key!("drop_reason"),
            diag.drop_reason.map(drop_reason_name).as_deref(),
        );
    let close = record.close.as_ref();
    object
        .bool(key!("open"), close.is_none())
        .opt_str(
            key!("close_originator"),
            close.map(|c| c.originator.as_str()),
        )
        .opt_str(
            key!("closed_by"),
            close.and_then(|c| c.closed_by).map(|s| s.as_str()),
        )
        .opt_str(key!("close_kind"), close.map(|c| c.kind.as_str()))
        .opt_str(key!("rst"), close.and_then(|c| c.rst).map(|s| s.as_str()))
        .opt_str(
            key!("final_state"),
            close.map(|c| state_name(c.final_state)),
        )
        .secs(key!("teardown_s"), close.and_then(|c| c.teardown_ns))
        .secs(key!("close_wait_s"), close.and_then(|c| c.close_wait_ns))
        .bool(
            key!("close_wait_unclosed"),
            close.is_some_and(|c| c.close_wait_unclosed),
        )
        .opt_str(
            key!("error"),
            close.and_then(|c| crate::model::errno_name(c.errno)),
        )
        .strs(
            key!("stuck"),
            record.stuck.iter().map(|stuck| stuck.as_str()),
        )
        .strs(key!("anomalies"), anomalies.iter().copied())
        .timeline(key!("phases"), &record.timeline(), clock)
        .u64(key!("phases_omitted"), u64::from(record.timeline_omitted()));
}

/// An `exchange` event.
pub(crate) fn exchange(
    out: &mut Line,
    record: &ExchangeRecord,
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    write(out, "exchange", |object| {
        exchange_fields(object, record, meta, clock)
    });
}

/// The fields of an `exchange` event, in order (`type` and `schema_version` aside).
pub(crate) fn exchange_fields(
    object: &mut impl Fields,
    record: &ExchangeRecord,
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    let (client, server) = record.addrs.client_server(record.role);
    object
        .u64(key!("conn_id"), record.conn_id)
        .time(key!("time"), clock.unix_ns(record.start_ns))
        .str(key!("role"), record.role.as_str())
        .ip(key!("client_ip"), client.ip())
        .u64(key!("client_port"), u64::from(client.port()))
        .ip(key!("server_ip"), server.ip())
        .u64(key!("server_port"), u64::from(server.port()))
        .process(record.process.as_ref())
        .meta(meta)
        .u64(key!("seq"), u64::from(record.seq))
        .str(key!("class"), record.class.as_str())
        .secs(key!("connect_s"), record.connect_ns)
        .secs(key!("idle_before_s"), record.idle_before_ns)
        .secs(key!("request_s"), record.request_ns)
        .secs(key!("response_begin_s"), record.response_begin_ns)
        .secs(key!("response_end_s"), record.response_end_ns)
        .secs(key!("response_s"), record.response_ns)
        .secs(key!("idle_after_s"), record.idle_after_ns)
        .secs(key!("session_s"), Some(record.session_ns))
        .u64(key!("request_bytes"), record.request_bytes)
        .u64(key!("response_bytes"), record.response_bytes)
        .opt_str(
            key!("close_originator"),
            record.close_originator.map(|o| o.as_str()),
        );
}

/// An `anomaly` event: a live connection stuck (its `phase`: how).
pub(crate) fn anomaly(
    out: &mut Line,
    record: &AnomalyRecord,
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    write(out, "anomaly", |object| {
        anomaly_fields(object, record, meta, clock)
    });
}

/// The fields of an `anomaly` event, in order (`type` and `schema_version` aside).
pub(crate) fn anomaly_fields(
    object: &mut impl Fields,
    record: &AnomalyRecord,
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    // A listener stuck with a full accept queue is no connection: no id, no remote end.
    let listener = record.stuck == Stuck::AcceptQueueFull;
    object
        .opt_u64(key!("conn_id"), (!listener).then_some(record.conn_id))
        .time(key!("time"), clock.unix_ns(record.at_ns))
        .str(key!("phase"), record.stuck.as_str())
        .str(key!("state"), state_name(record.state))
        .time(key!("since"), clock.unix_ns(record.since_ns))
        .secs(
            key!("age_s"),
            Some(record.at_ns.saturating_sub(record.since_ns)),
        )
        .secs(key!("threshold_s"), Some(record.threshold_ns))
        .str(key!("role"), record.role.as_str())
        .ip(key!("local_ip"), record.addrs.local().ip())
        .u64(key!("local_port"), u64::from(record.addrs.local().port()));
    if listener {
        object.null(key!("remote_ip")).null(key!("remote_port"));
    } else {
        object
            .ip(key!("remote_ip"), record.addrs.remote().ip())
            .u64(key!("remote_port"), u64::from(record.addrs.remote().port()));
    }
    object
        .process(record.process.as_ref())
        .meta(meta)
        .str(key!("hint"), record.stuck.hint());
}

/// A `dns` event: one `getaddrinfo` call.
pub(crate) fn dns(out: &mut Line, record: &DnsRecord, clock: &impl WallClock) {
    write(out, "dns", |object| dns_fields(object, record, clock));
}

/// The fields of a `dns` event, in order (`type` and `schema_version` aside).
pub(crate) fn dns_fields(object: &mut impl Fields, record: &DnsRecord, clock: &impl WallClock) {
    object
        .time(
            key!("time"),
            clock.unix_ns(record.start_ns + record.duration_ns),
        )
        .time(key!("start"), clock.unix_ns(record.start_ns))
        .u64(key!("pid"), u64::from(record.process.pid))
        .str(key!("comm"), record.process.comm.as_str())
        .str(key!("host"), &record.host)
        .bool(key!("host_truncated"), record.host_truncated)
        .secs(key!("duration_s"), Some(record.duration_ns))
        .str(key!("result"), record.result())
        .opt_str(
            key!("error"),
            (record.code != 0).then(|| eai_name(record.code)),
        )
        .ips(key!("addresses"), record.addrs.as_slice().iter().copied())
        .bool(key!("addresses_truncated"), record.addrs.more);
}

/// A `tls` event: one handshake, once its outcome is known.
pub(crate) fn tls(out: &mut Line, record: &TlsRecord, clock: &impl WallClock) {
    write(out, "tls", |object| tls_fields(object, record, clock));
}

/// The fields of a `tls` event, in order (`type` and `schema_version` aside).
pub(crate) fn tls_fields(object: &mut impl Fields, record: &TlsRecord, clock: &impl WallClock) {
    object
        .opt_u64(key!("conn_id"), record.conn_id)
        .time(
            key!("time"),
            clock.unix_ns(record.start_ns + record.duration_ns),
        )
        .time(key!("start"), clock.unix_ns(record.start_ns))
        .str(key!("role"), record.role.as_str());
    match record.addrs {
        Some(addrs) => object
            .ip(key!("local_ip"), addrs.local().ip())
            .u64(key!("local_port"), u64::from(addrs.local().port()))
            .ip(key!("remote_ip"), addrs.remote().ip())
            .u64(key!("remote_port"), u64::from(addrs.remote().port())),
        None => object
            .null(key!("local_ip"))
            .null(key!("local_port"))
            .null(key!("remote_ip"))
            .null(key!("remote_port")),
    };
    object
        .process(record.process.as_ref())
        .secs(key!("duration_s"), Some(record.duration_ns))
        .bool(key!("ok"), record.ok)
        .u64(key!("calls"), u64::from(record.calls));
}

/// The `stats` event: tcpobs's final loss and health counters, written when it stops.
pub(crate) fn stats(
    out: &mut Line,
    reader: &ReaderStats,
    kernel: &KernelStats,
    tracker: &TrackerStats,
    libcalls: &LibcallStats,
    output: &OutputTotals,
) {
    let lost = reader.connections_lost(kernel);
    write(out, "stats", |object| {
        object
            .u64(key!("events_received"), reader.total())
            .u64(key!("events_undecodable"), reader.undecodable)
            .u64(key!("events_lost"), kernel.ringbuf_full)
            .u64(key!("sockets_untracked"), kernel.table_insert_failed)
            .u64(key!("sockets_adopted"), kernel.adopted)
            .u64(key!("sockets_seeded"), kernel.seeded)
            .u64(key!("sockets_evicted"), tracker.lost)
            .u64(key!("closes_unseen"), tracker.closes_unseen)
            .u64(key!("unmatched_events"), tracker.unmatched)
            .u64(key!("dns_cache_evicted"), tracker.dns_evicted)
            .u64(key!("tls_untracked"), kernel.tls_untracked)
            .u64(key!("tls_abandoned"), libcalls.tls_abandoned)
            .u64(key!("phase_libraries_skipped"), libcalls.skipped)
            .u64(key!("output_events_dropped"), output.events_dropped)
            .u64(key!("output_write_errors"), output.write_errors)
            .u64(key!("connections_lost_client"), lost[0])
            .u64(key!("connections_lost_server"), lost[1])
            .u64(key!("connections_lost_unknown"), lost[2])
            .u64(key!("close_events_lost"), kernel.closes_lost_total())
            .u64(key!("close_events_spilled"), kernel.closes_spilled)
            .u64(key!("close_events_spill_evicted"), reader.spills_evicted)
            .u64(key!("state_events_skipped"), kernel.states_skipped);
    });
}
