//! Every JSON event tcpobs writes, field by field: `connection` (one per connection, at its
//! close), `exchange` (one per request/response exchange), `anomaly` (a live connection
//! stuck), `dns` (one per name resolution), `tls` (one per TLS handshake) and `stats` (the
//! final counters). The field writers are in the parent module; [`super::SCHEMA_VERSION`] is
//! bumped on any incompatible change here.

use super::{Line, Object};
use crate::{
    clock::WallClock,
    export::output::OutputTotals,
    kernel::{
        libcalls::LibcallStats,
        reader::{KernelStats, ReaderStats},
    },
    metadata::Meta,
    model::{
        AnomalyRecord, ConnectionRecord, DnsRecord, ExchangeRecord, Stuck, Timeline, TlsRecord,
        drop_reason_name, eai_name, state_name,
    },
    tracker::TrackerStats,
};

/// Schema helpers shared by several events.
impl Object<'_> {
    /// A connection's timeline: `[{"name": ..., "start": ..., "duration_s": ...}, ...]`
    /// (exchanges also have `seq`).
    pub(super) fn timeline(
        &mut self,
        key: &str,
        timeline: &Timeline,
        clock: &impl WallClock,
    ) -> &mut Self {
        self.key(key);
        self.out().push(b'[');
        for (index, entry) in timeline.entries().iter().enumerate() {
            if index > 0 {
                self.out().push(b',');
            }
            self.nested(|item| {
                item.str("name", entry.name)
                    .time("start", clock.unix_ns(entry.start_ns))
                    .secs("duration_s", Some(entry.duration_ns));
                if let Some(seq) = entry.seq {
                    item.u64("seq", u64::from(seq));
                }
            });
        }
        self.out().push(b']');
        self
    }

    /// Where the process runs: `cgroup`, `container_id`, `pod_uid`, `namespace`, `pod`
    /// (`null` when unknown).
    pub(super) fn meta(&mut self, meta: Option<&Meta>) -> &mut Self {
        self.opt_str("cgroup", meta.map(|m| &*m.cgroup))
            .opt_str("container_id", meta.and_then(|m| m.container_id.as_deref()))
            .opt_str("pod_uid", meta.and_then(|m| m.pod_uid.as_deref()))
            .opt_str("namespace", meta.and_then(Meta::namespace))
            .opt_str("pod", meta.and_then(Meta::pod_name))
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
    let mut object = Object::new(out, "connection");
    let end_ns = record.start_ns + record.lifetime_ns;
    object
        .u64("id", record.id)
        .time("time", clock.unix_ns(end_ns))
        .time("start", clock.unix_ns(record.start_ns))
        .str("role", record.role.as_str())
        .bool("partial", record.partial.is_some())
        .opt_str(
            "partial_reason",
            record.partial.map(|reason| reason.as_str()),
        )
        .ip("local_ip", record.addrs.local().ip())
        .u64("local_port", u64::from(record.addrs.local().port()))
        .ip("remote_ip", record.addrs.remote().ip())
        .u64("remote_port", u64::from(record.addrs.remote().port()))
        .opt_u64("pid", record.process.as_ref().map(|p| u64::from(p.pid)))
        .opt_str("comm", record.process.as_ref().map(|p| p.comm.as_str()))
        .meta(meta)
        .secs("connect_s", record.connect_ns)
        .opt_str(
            "connect_failure",
            record.connect_failure.map(|f| f.as_str()),
        )
        .opt_str("dns_host", record.dns().map(|dns| &*dns.host))
        .secs("dns_s", record.dns().map(|dns| dns.duration_ns))
        .secs("tls_handshake_s", record.tls().map(|tls| tls.duration_ns))
        .opt_bool("tls_ok", record.tls().and_then(|tls| tls.ok))
        .secs("lifetime_s", Some(record.lifetime_ns))
        .u64("exchanges", u64::from(record.exchanges))
        .u64("bytes_sent", record.bytes_sent)
        .u64("bytes_received", record.bytes_received)
        .u64("retransmits", u64::from(record.retransmits));
    let tcp = record.tcp.as_ref();
    object
        .secs("rtt_s", tcp.and_then(|t| t.rtt_ns))
        .secs("rtt_var_s", tcp.and_then(|t| t.rtt_var_ns))
        .opt_u64("tcp_total_retrans", tcp.map(|t| u64::from(t.total_retrans)))
        .opt_u64("tcp_bytes_acked", tcp.map(|t| t.bytes_acked))
        .opt_u64("tcp_bytes_received", tcp.map(|t| t.bytes_received));
    let diag = record.diag.parts();
    object
        .opt_u64("syn_retransmits", diag.syn_retransmits.map(u64::from))
        .opt_u64("rto_count", diag.rto_count.map(u64::from))
        .secs("busy_s", diag.busy_ns)
        .secs("rwnd_limited_s", diag.rwnd_limited_ns)
        .secs("sndbuf_limited_s", diag.sndbuf_limited_ns)
        .opt_u64("zero_window_probes", diag.zero_window_probes.map(u64::from))
        .secs("accept_wait_s", diag.accept_wait_ns)
        .u64("packet_drops", u64::from(diag.packet_drops))
        .opt_str(
            "drop_reason",
            diag.drop_reason.map(drop_reason_name).as_deref(),
        );
    let close = record.close.as_ref();
    object
        .bool("open", close.is_none())
        .opt_str("close_originator", close.map(|c| c.originator.as_str()))
        .opt_str(
            "closed_by",
            close.and_then(|c| c.closed_by).map(|s| s.as_str()),
        )
        .opt_str("close_kind", close.map(|c| c.kind.as_str()))
        .opt_str("rst", close.and_then(|c| c.rst).map(|s| s.as_str()))
        .opt_str("final_state", close.map(|c| state_name(c.final_state)))
        .secs("teardown_s", close.and_then(|c| c.teardown_ns))
        .secs("close_wait_s", close.and_then(|c| c.close_wait_ns))
        .bool(
            "close_wait_unclosed",
            close.is_some_and(|c| c.close_wait_unclosed),
        )
        .opt_str(
            "error",
            close.and_then(|c| crate::model::errno_name(c.errno)),
        )
        .strs("stuck", record.stuck.iter().map(|stuck| stuck.as_str()))
        .strs("anomalies", anomalies.iter().copied())
        .timeline("phases", &record.timeline(), clock)
        .u64("phases_omitted", u64::from(record.timeline_omitted()));
    object.end();
}

/// An `exchange` event.
pub(crate) fn exchange(
    out: &mut Line,
    record: &ExchangeRecord,
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    let (client, server) = record.addrs.client_server(record.role);
    let mut object = Object::new(out, "exchange");
    object
        .u64("conn_id", record.conn_id)
        .time("time", clock.unix_ns(record.start_ns))
        .str("role", record.role.as_str())
        .ip("client_ip", client.ip())
        .u64("client_port", u64::from(client.port()))
        .ip("server_ip", server.ip())
        .u64("server_port", u64::from(server.port()))
        .opt_u64("pid", record.process.as_ref().map(|p| u64::from(p.pid)))
        .opt_str("comm", record.process.as_ref().map(|p| p.comm.as_str()))
        .meta(meta)
        .u64("seq", u64::from(record.seq))
        .str("class", record.class.as_str())
        .secs("connect_s", record.connect_ns)
        .secs("idle_before_s", record.idle_before_ns)
        .secs("request_s", record.request_ns)
        .secs("response_begin_s", record.response_begin_ns)
        .secs("response_end_s", record.response_end_ns)
        .secs("response_s", record.response_ns)
        .secs("idle_after_s", record.idle_after_ns)
        .secs("session_s", Some(record.session_ns))
        .u64("request_bytes", record.request_bytes)
        .u64("response_bytes", record.response_bytes)
        .opt_str(
            "close_originator",
            record.close_originator.map(|o| o.as_str()),
        );
    object.end();
}

/// An `anomaly` event: a live connection stuck (its `phase`: how).
pub(crate) fn anomaly(
    out: &mut Line,
    record: &AnomalyRecord,
    meta: Option<&Meta>,
    clock: &impl WallClock,
) {
    // A listener stuck with a full accept queue is no connection: no id, no remote end.
    let listener = record.stuck == Stuck::AcceptQueueFull;
    let mut object = Object::new(out, "anomaly");
    object
        .opt_u64("conn_id", (!listener).then_some(record.conn_id))
        .time("time", clock.unix_ns(record.at_ns))
        .str("phase", record.stuck.as_str())
        .str("state", state_name(record.state))
        .time("since", clock.unix_ns(record.since_ns))
        .secs("age_s", Some(record.at_ns.saturating_sub(record.since_ns)))
        .secs("threshold_s", Some(record.threshold_ns))
        .str("role", record.role.as_str())
        .ip("local_ip", record.addrs.local().ip())
        .u64("local_port", u64::from(record.addrs.local().port()));
    if listener {
        object.null("remote_ip").null("remote_port");
    } else {
        object
            .ip("remote_ip", record.addrs.remote().ip())
            .u64("remote_port", u64::from(record.addrs.remote().port()));
    }
    object
        .opt_u64("pid", record.process.as_ref().map(|p| u64::from(p.pid)))
        .opt_str("comm", record.process.as_ref().map(|p| p.comm.as_str()))
        .meta(meta)
        .str("hint", record.stuck.hint());
    object.end();
}

/// A `dns` event: one `getaddrinfo` call.
pub(crate) fn dns(out: &mut Line, record: &DnsRecord, clock: &impl WallClock) {
    let mut object = Object::new(out, "dns");
    object
        .time("time", clock.unix_ns(record.start_ns + record.duration_ns))
        .time("start", clock.unix_ns(record.start_ns))
        .u64("pid", u64::from(record.process.pid))
        .str("comm", record.process.comm.as_str())
        .str("host", &record.host)
        .bool("host_truncated", record.host_truncated)
        .secs("duration_s", Some(record.duration_ns))
        .str("result", record.result())
        .opt_str("error", (record.code != 0).then(|| eai_name(record.code)))
        .ips("addresses", record.addrs.as_slice().iter().copied())
        .bool("addresses_truncated", record.addrs.more);
    object.end();
}

/// A `tls` event: one handshake, once its outcome is known.
pub(crate) fn tls(out: &mut Line, record: &TlsRecord, clock: &impl WallClock) {
    let mut object = Object::new(out, "tls");
    object
        .opt_u64("conn_id", record.conn_id)
        .time("time", clock.unix_ns(record.start_ns + record.duration_ns))
        .time("start", clock.unix_ns(record.start_ns))
        .str("role", record.role.as_str());
    match record.addrs {
        Some(addrs) => object
            .ip("local_ip", addrs.local().ip())
            .u64("local_port", u64::from(addrs.local().port()))
            .ip("remote_ip", addrs.remote().ip())
            .u64("remote_port", u64::from(addrs.remote().port())),
        None => object
            .null("local_ip")
            .null("local_port")
            .null("remote_ip")
            .null("remote_port"),
    };
    object
        .opt_u64("pid", record.process.as_ref().map(|p| u64::from(p.pid)))
        .opt_str("comm", record.process.as_ref().map(|p| p.comm.as_str()))
        .secs("duration_s", Some(record.duration_ns))
        .bool("ok", record.ok)
        .u64("calls", u64::from(record.calls));
    object.end();
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
    let mut object = Object::new(out, "stats");
    object
        .u64("events_received", reader.total())
        .u64("events_undecodable", reader.undecodable)
        .u64("events_lost", kernel.ringbuf_full)
        .u64("sockets_untracked", kernel.table_insert_failed)
        .u64("sockets_adopted", kernel.adopted)
        .u64("sockets_evicted", tracker.lost)
        .u64("unmatched_events", tracker.unmatched)
        .u64("dns_cache_evicted", tracker.dns_evicted)
        .u64("tls_untracked", kernel.tls_untracked)
        .u64("tls_abandoned", libcalls.tls_abandoned)
        .u64("phase_libraries_skipped", libcalls.skipped)
        .u64("output_events_dropped", output.events_dropped)
        .u64("output_write_errors", output.write_errors);
    object.end();
}
