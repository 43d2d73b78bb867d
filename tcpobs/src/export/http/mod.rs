//! The HTTP API (axum): metrics, health, the live connection table and runtime settings.
//!
//! Reading metrics and changing the daemon are different rights, so they are different
//! listeners. `--listen` (the metrics API) serves `/metrics`, `/healthz` and `/readyz` only,
//! with TLS and basic auth from `--web-config-file` ([`webconfig`]); `--admin-listen` (the
//! admin API, a Unix socket only root can open by default) serves every route. The admin
//! routes asked of the metrics API answer 404 and say where they went. Connections are
//! bounded in number and time ([`serve`]); requests pass [`guard`] (Host and Origin checks on
//! the admin API, basic auth, a time limit).
//!
//! | route | |
//! |---|---|
//! | `GET /metrics` | the classic text format, or OpenMetrics if the `Accept` header asks ([`mod@negotiate`]) |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once every program is attached, else 503 and the reason |
//! | `GET /connections` | live connections; `?state=`, `?port=`, `?min_idle_s=`, `?limit=` (default 1000) |
//! | `GET /config` | runtime settings, and those that need a restart |
//! | `PUT /config` | change runtime settings (JSON, any subset); 400 and no change on error |

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Extension, Json, Router,
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;
use tracing::warn;

mod auth;
pub(crate) mod guard;
mod negotiate;
pub(crate) mod serve;
mod tls;
pub(crate) mod web;
pub(crate) mod webconfig;

use self::{
    guard::Caller,
    negotiate::{Exposition, OPENMETRICS, PROMETHEUS_TEXT, negotiate, to_classic_text},
    serve::Throttle,
};
use crate::{
    clock::{Clock, WallClock as _, monotonic_now_ns},
    config::control::Control,
    export::output::json,
    model::state_name,
    sync::lock,
    tracker::{Conn, Tracker},
};

const DEFAULT_LIMIT: usize = 1000;
pub(crate) const MAX_LIMIT: usize = 100_000;

/// Whether tcpobs is ready, and why not.
#[derive(Debug)]
pub(crate) struct Readiness {
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Readiness {
    pub(crate) fn new(reason: &str) -> Self {
        Self {
            ready: AtomicBool::new(false),
            reason: Mutex::new(reason.to_owned()),
        }
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub(crate) fn set_not_ready(&self, reason: &str) {
        *lock(&self.reason) = reason.to_owned();
        self.ready.store(false, Ordering::Release);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub registry: Arc<Registry>,
    pub tracker: Arc<Mutex<Tracker>>,
    pub control: Arc<Control>,
    pub readiness: Arc<Readiness>,
    pub clock: Clock,
    /// Admin routes asked of the metrics API (for a rate-limited warning).
    pub refused: Arc<Throttle>,
}

/// Every route: the admin API.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/connections", get(connections))
        .route("/config", get(get_config).put(put_config))
        .with_state(state)
}

/// Metrics and health: the metrics API. The admin routes answer 404 with where they are.
pub(crate) fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/connections", any(admin_only))
        .route("/config", any(admin_only))
        .with_state(state)
}

/// Who asks the metrics API for an admin route is told where it went, and logged (at most
/// once a minute): on a shared network, a `PUT /config` here is someone trying.
async fn admin_only(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    method: Method,
    uri: Uri,
) -> Response {
    if let Some(count) = state.refused.hit() {
        let by = caller.map(|Extension(caller)| caller).unwrap_or_default();
        warn!(
            by = %by,
            count,
            "{method} {} asked of the metrics API (--listen): refused; it is served on \
             the admin API (--admin-listen) only",
            uri.path()
        );
    }
    error(
        StatusCode::NOT_FOUND,
        format!(
            "{} is served on the admin API (--admin-listen, by default the Unix socket \
             /run/tcpobs/admin.sock), not on --listen",
            uri.path()
        ),
    )
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut body = String::with_capacity(64 * 1024);
    if encode(&mut body, &state.registry).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        );
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    if negotiate(accept) == Exposition::Classic {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_classic_text(&body),
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let reason = lock(&state.readiness.reason).clone();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response()
    }
}

async fn get_config(State(state): State<AppState>) -> Json<Value> {
    Json(state.control.describe())
}

async fn put_config(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: String,
) -> Response {
    let by = caller.map(|Extension(caller)| caller).unwrap_or_default();
    let refused = |message: String| {
        warn!(by = %by, "PUT /config refused: {message}");
        error(StatusCode::BAD_REQUEST, message)
    };
    let patch: Value = match serde_json::from_str(&body) {
        Ok(patch) => patch,
        Err(err) => return refused(format!("invalid JSON: {err}")),
    };
    match state.control.patch(&patch, &by) {
        Ok(_) => Json(state.control.describe()).into_response(),
        Err(err) => refused(err.to_string()),
    }
}

/// One live connection, as `/connections` shows it.
#[derive(Debug, Serialize)]
struct LiveConnection {
    id: u64,
    role: &'static str,
    state: &'static str,
    partial: bool,
    local_ip: String,
    local_port: u16,
    remote_ip: String,
    remote_port: u16,
    pid: Option<u32>,
    comm: Option<String>,
    start: String,
    age_s: f64,
    idle_s: f64,
    exchanges: u32,
    bytes_sent: u64,
    bytes_received: u64,
    stuck: Vec<&'static str>,
}

/// Parsed `/connections` filters.
pub(crate) struct ConnectionFilter {
    state: Option<u8>,
    port: Option<u16>,
    min_idle_ns: u64,
    pub(crate) limit: usize,
}

fn parse_state(name: &str) -> Option<u8> {
    let wanted = name.to_ascii_uppercase();
    (1..=12).find(|&state| state_name(state) == wanted)
}

/// Why a `/connections` query is refused (400).
#[derive(Debug, Error)]
pub(crate) enum QueryError {
    #[error("state: `{0}` is not a TCP state (e.g. ESTABLISHED, CLOSE_WAIT)")]
    State(String),
    #[error("port: `{0}` is not a port")]
    Port(String),
    #[error("min_idle_s: `{0}` is not a number of seconds")]
    MinIdle(String),
    #[error("limit: `{0}` is not a number from 1 to {MAX_LIMIT}")]
    Limit(String),
    #[error("unknown parameter `{0}`: use state, port, min_idle_s, limit")]
    Unknown(String),
}

impl ConnectionFilter {
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, QueryError> {
        let mut filter = Self {
            state: None,
            port: None,
            min_idle_ns: 0,
            limit: DEFAULT_LIMIT,
        };
        for (key, value) in query {
            match key.as_str() {
                "state" => {
                    filter.state =
                        Some(parse_state(value).ok_or_else(|| QueryError::State(value.clone()))?);
                }
                "port" => {
                    filter.port = Some(value.parse().map_err(|_| QueryError::Port(value.clone()))?);
                }
                "min_idle_s" => {
                    let seconds: f64 = value
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .ok_or_else(|| QueryError::MinIdle(value.clone()))?;
                    filter.min_idle_ns = crate::config::live::ns(seconds);
                }
                "limit" => {
                    filter.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| QueryError::Limit(value.clone()))?;
                }
                other => return Err(QueryError::Unknown(other.to_owned())),
            }
        }
        Ok(filter)
    }
}

async fn connections(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let filter = match ConnectionFilter::parse(&query) {
        Ok(filter) => filter,
        Err(err) => return error(StatusCode::BAD_REQUEST, err),
    };
    let now = monotonic_now_ns();
    // The live table is locked only to pick the connections (and copy them): the kernel
    // lookups, a system call each, are made after, so that a long list does not hold up the
    // ring buffer reader. The tracker's last activity is never later than the kernel's
    // record's, so this keeps every connection idle long enough (and perhaps some that are
    // not).
    // Without a filter that needs the kernel's record, only the connections returned are
    // copied and looked up; with one, every candidate is.
    let by_record = filter.min_idle_ns > 0 || filter.state.is_some();
    let (table, matched, candidates) = {
        let tracker = lock(&state.tracker);
        let mut matching: Vec<(u64, &Conn)> = tracker
            .live_socks()
            .filter(|(_, conn)| filter.state.is_none_or(|s| conn.may_be_in(s)))
            .filter(|(_, conn)| {
                filter.port.is_none_or(|port| {
                    conn.addrs().local().port() == port || conn.addrs().remote().port() == port
                })
            })
            .filter(|(_, conn)| now.saturating_sub(conn.last_activity_ns()) >= filter.min_idle_ns)
            .collect();
        matching.sort_unstable_by_key(|(_, conn)| conn.id());
        let matched = matching.len();
        let copied = if by_record { matched } else { filter.limit };
        let candidates: Vec<(u64, Conn)> = matching
            .into_iter()
            .take(copied)
            .map(|(sock, conn)| (sock, conn.clone()))
            .collect();
        (tracker.kernel_table(), matched, candidates)
    };
    // Bytes, exchanges, the last data and the state are the kernel's record's (one lookup,
    // about 1 µs, per connection returned; with `min_idle_s` or `state`, per connection
    // matched).
    let viewed = candidates.into_iter().map(|(sock, conn)| {
        let rec = table.as_ref().and_then(|table| table.get(sock));
        let view = conn.live_view(rec.as_ref());
        (conn, view)
    });
    let (total, views): (usize, Vec<_>) = if by_record {
        let kept: Vec<_> = viewed
            .filter(|(_, view)| now.saturating_sub(view.last_activity_ns) >= filter.min_idle_ns)
            .filter(|(_, view)| filter.state.is_none_or(|s| view.state == s))
            .collect();
        (kept.len(), kept.into_iter().take(filter.limit).collect())
    } else {
        (matched, viewed.collect())
    };
    let secs = |ns: u64| ns as f64 / 1e9;
    let listed: Vec<LiveConnection> = views
        .into_iter()
        .map(|(conn, view)| LiveConnection {
            id: conn.id(),
            role: conn.role().as_str(),
            state: state_name(view.state),
            partial: conn.partial(),
            local_ip: conn.addrs().local().ip().to_string(),
            local_port: conn.addrs().local().port(),
            remote_ip: conn.addrs().remote().ip().to_string(),
            remote_port: conn.addrs().remote().port(),
            pid: conn.process().map(|p| p.pid),
            comm: conn.process().map(|p| p.comm.to_string()),
            start: json::timestamp(state.clock.unix_ns(conn.start_ns())),
            age_s: secs(now.saturating_sub(conn.start_ns())),
            idle_s: secs(now.saturating_sub(view.last_activity_ns)),
            exchanges: view.exchanges,
            bytes_sent: view.bytes_sent,
            bytes_received: view.bytes_received,
            stuck: conn.flagged().iter().map(|p| p.as_str()).collect(),
        })
        .collect();
    Json(json!({
        "total": total,
        "returned": listed.len(),
        "truncated": listed.len() < total,
        "connections": listed,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use tcpobs_common::{EventHeader, OpenEvent, SockRecord, kind, role, tcp_state};
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        config::live::{EventSelection, Filters, LiveSettings, Thresholds},
        kernel::decode::KernelEvent,
        tracker::KernelTable,
    };

    fn state() -> AppState {
        let mut registry = Registry::default();
        let metrics = crate::export::metrics::Metrics::new(&mut registry, &[], 10);
        metrics.set_stuck(&[0, 0, 2, 0, 0, 0, 0, 0]);
        let mut tracker = Tracker::new();
        for (sock, port, state) in [
            (1, 80, tcp_state::ESTABLISHED),
            (2, 443, tcp_state::ESTABLISHED),
        ] {
            let mut event = OpenEvent {
                hdr: EventHeader {
                    kind: kind::OPEN,
                    ts_ns: monotonic_now_ns(),
                    sock,
                    start_ns: sock,
                    ..Default::default()
                },
                role: role::CLIENT,
                state,
                ..Default::default()
            };
            event.endpoints.rport = port;
            event.endpoints.family = 2;
            tracker.handle(&KernelEvent::Open(&event), &mut Vec::new());
        }
        let (control, _) = Control::new(
            LiveSettings {
                events: EventSelection::Connections,
                sample: None,
                thresholds: Thresholds::default(),
                log_level: "info".into(),
                filters: Filters::default(),
            },
            json!({}),
            Box::new(|_| Ok(())),
        );
        AppState {
            registry: Arc::new(registry),
            tracker: Arc::new(Mutex::new(tracker)),
            control,
            readiness: Arc::new(Readiness::new("loading")),
            clock: Clock::new(),
            refused: Arc::default(),
        }
    }

    async fn call(
        state: &AppState,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, String, String) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn metrics_are_classic_text_unless_openmetrics_is_asked_for() {
        let state = state();
        let (status, content_type, body) = call(&state, "GET", "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, PROMETHEUS_TEXT);
        assert!(!body.contains("# EOF"), "{body}");
        let request = axum::http::Request::builder()
            .uri("/metrics")
            .header(
                header::ACCEPT,
                "application/openmetrics-text; version=1.0.0",
            )
            .body(Body::empty())
            .unwrap();
        let response = router(state).oneshot(request).await.unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], OPENMETRICS);
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.contains("tcpobs_stuck_connections{phase=\"idle\"} 2"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn classic_text_on_request() {
        let state = state();
        let request = axum::http::Request::builder()
            .uri("/metrics")
            .header(header::ACCEPT, "text/plain; version=0.0.4")
            .body(Body::empty())
            .unwrap();
        let response = router(state).oneshot(request).await.unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROMETHEUS_TEXT);
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.contains("# TYPE tcpobs_connect_failures_total counter"),
            "{body}"
        );
        assert!(
            body.contains("# HELP tcpobs_connect_failures_total "),
            "{body}"
        );
        assert!(!body.contains("# EOF"));
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let state = state();
        assert_eq!(call(&state, "GET", "/healthz", "").await.0, StatusCode::OK);
        let (status, _, body) = call(&state, "GET", "/readyz", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: loading\n")
        );
        state.readiness.set_ready();
        assert_eq!(call(&state, "GET", "/readyz", "").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn connections_filter_and_limit() {
        let state = state();
        let (status, _, body) = call(&state, "GET", "/connections", "").await;
        assert_eq!(status, StatusCode::OK);
        let all: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(all["total"], 2);
        assert_eq!(all["connections"][0]["remote_port"], 80);
        assert_eq!(all["connections"][0]["state"], "ESTABLISHED");
        // As the JSON events print times: UTC, microseconds, `Z`.
        let start = all["connections"][0]["start"].as_str().unwrap();
        assert_eq!(start, json::timestamp(state.clock.unix_ns(1)));
        assert!(
            start.len() == 27 && start.ends_with('Z') && start.as_bytes()[19] == b'.',
            "{start}"
        );
        let (_, _, body) = call(&state, "GET", "/connections?port=443", "").await;
        let one: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (
                one["total"].as_u64(),
                one["connections"][0]["remote_port"].as_u64()
            ),
            (Some(1), Some(443))
        );
        let (_, _, body) = call(&state, "GET", "/connections?limit=1", "").await;
        let first: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (
                first["total"].as_u64(),
                first["returned"].as_u64(),
                first["connections"][0]["id"].as_u64()
            ),
            (Some(2), Some(1), Some(1)),
            "{body}"
        );
        let (_, _, body) = call(&state, "GET", "/connections?limit=1&state=established", "").await;
        let limited: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (limited["returned"].as_u64(), limited["truncated"].as_bool()),
            (Some(1), Some(true))
        );
        let (_, _, body) = call(&state, "GET", "/connections?min_idle_s=3600", "").await;
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["total"], 0);
        for bad in [
            "/connections?state=DANCING",
            "/connections?limit=0",
            "/connections?colour=1",
        ] {
            let (status, _, body) = call(&state, "GET", bad, "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert!(body.contains("error"), "{body}");
        }
    }

    /// Bytes, exchanges and the last data come from the kernel's record of each socket (of the
    /// same generation), and `min_idle_s` goes by its last data.
    #[tokio::test]
    async fn connections_show_what_the_kernel_record_knows() {
        let state = state();
        let later = u64::MAX / 2;
        let ping_pong = move |start_ns: u64| {
            let burst = move |dir: u8| tcpobs_common::Burst {
                first_ns: later,
                last_ns: later,
                bytes: 4,
                calls: 1,
                dir,
                _pad: [0; 3],
            };
            SockRecord {
                start_ns,
                bytes_sent: 4,
                bytes_recv: 4,
                role: role::CLIENT,
                state: tcp_state::ESTABLISHED,
                held: burst(tcpobs_common::direction::OUT),
                burst: burst(tcpobs_common::direction::IN),
                ..SockRecord::default()
            }
        };
        // Socket 1's record is its own; socket 2's belongs to a newer connection.
        lock(&state.tracker).set_kernel_table(Some(KernelTable::new(move |sock| {
            Some(ping_pong(if sock == 1 { 1 } else { 99 }))
        })));
        let (_, _, body) = call(&state, "GET", "/connections", "").await;
        let all: Value = serde_json::from_str(&body).unwrap();
        let counts: Vec<_> = all["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["bytes_sent"].clone(),
                    c["bytes_received"].clone(),
                    c["exchanges"].clone(),
                )
            })
            .collect();
        assert_eq!(
            counts,
            [
                (json!(4), json!(4), json!(1)),
                (json!(0), json!(0), json!(0))
            ],
            "{body}"
        );
        // Socket 1's response is still coming (its last data later than now): never idle.
        assert_eq!(all["connections"][0]["idle_s"], 0.0, "{body}");
        let (_, _, body) = call(&state, "GET", "/connections?min_idle_s=0.000001", "").await;
        let idle: Value = serde_json::from_str(&body).unwrap();
        let ids: Vec<_> = idle["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect();
        assert!(!ids.contains(&1), "{body}");
    }

    /// The state shown and filtered on is the kernel record's: a client that closed and waits
    /// for the peer's ACK is in `FIN_WAIT1`, which no event reports.
    #[tokio::test]
    async fn connections_show_the_teardown_states_of_the_kernel_record() {
        let state = state();
        lock(&state.tracker).set_kernel_table(Some(KernelTable::new(move |sock| {
            Some(SockRecord {
                start_ns: sock,
                role: role::CLIENT,
                state: if sock == 1 {
                    tcp_state::FIN_WAIT1
                } else {
                    tcp_state::ESTABLISHED
                },
                ..SockRecord::default()
            })
        })));
        let listed = |body: &str| -> (Value, Vec<(u64, String)>) {
            let table: Value = serde_json::from_str(body).unwrap();
            let rows = table["connections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["id"].as_u64().unwrap(),
                        c["state"].as_str().unwrap().into(),
                    )
                })
                .collect();
            (table["total"].clone(), rows)
        };
        let (_, _, body) = call(&state, "GET", "/connections", "").await;
        assert_eq!(
            listed(&body),
            (
                json!(2),
                vec![(1, "FIN_WAIT1".into()), (2, "ESTABLISHED".into())]
            ),
            "{body}"
        );
        let (_, _, body) = call(&state, "GET", "/connections?state=FIN_WAIT1", "").await;
        assert_eq!(
            listed(&body),
            (json!(1), vec![(1, "FIN_WAIT1".into())]),
            "{body}"
        );
        let (_, _, body) = call(&state, "GET", "/connections?state=ESTABLISHED", "").await;
        assert_eq!(
            listed(&body),
            (json!(1), vec![(2, "ESTABLISHED".into())]),
            "{body}"
        );
        let (_, _, body) = call(&state, "GET", "/connections?state=LAST_ACK", "").await;
        assert_eq!(listed(&body), (json!(0), vec![]), "{body}");
    }

    #[tokio::test]
    async fn config_round_trip_and_validation() {
        let state = state();
        let (status, _, body) = call(
            &state,
            "PUT",
            "/config",
            r#"{"events":"anomalies","thresholds":{"idle_s":5}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, _, body) = call(&state, "GET", "/config", "").await;
        let config: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(config["runtime"]["events"], "anomalies");
        assert_eq!(config["runtime"]["thresholds"]["idle_s"], 5.0);
        for bad in [
            "{",
            r#"{"events":"loud"}"#,
            r#"{"thresholds":{"idle_s":-2}}"#,
            r#"{"listen":"x"}"#,
            r#"{"log_level":"loud"}"#,
        ] {
            let (status, _, body) = call(&state, "PUT", "/config", bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
        assert_eq!(
            state.control.live().events,
            EventSelection::Anomalies,
            "unchanged by bad bodies"
        );
    }
}
