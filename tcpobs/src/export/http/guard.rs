//! What every request passes before a handler: on the admin API, the Origin check and, over
//! plain TCP, the Host check that defeat DNS rebinding (a browser page on another site that
//! resolves its own name to 127.0.0.1 sends its own Host, and an Origin); basic auth when the web config has users
//! (`/healthz` and `/readyz` stay open, for probes that hold no secret); a time limit on the
//! whole request, body included; the web config's response headers. The handlers learn who
//! asked ([`Caller`]) for their log lines.

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::time::timeout;
use tracing::warn;

use super::{
    serve::{Api, Peer, Throttle},
    web::Web,
    webconfig::WebConfig,
};

/// Time for a whole request: its body read, its handler run.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Who made a request: the connection's peer, and the basic auth user if any.
#[derive(Clone, Debug, Default)]
pub(crate) struct Caller {
    pub peer: Option<Peer>,
    pub user: Option<String>,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.peer {
            Some(peer) => write!(f, "{peer}")?,
            None => write!(f, "unknown peer")?,
        }
        if let Some(user) = &self.user {
            write!(f, " user {user}")?;
        }
        Ok(())
    }
}

/// One listener's rules.
pub(crate) struct Gate {
    pub api: Api,
    /// Whether the listener is TCP (Host checks apply without TLS; a Unix socket is no
    /// browser's).
    pub tcp: bool,
    pub web: Option<Arc<Web>>,
    pub refused: Throttle,
}

/// Whether `host` (a Host header's value) names this machine by address or as `localhost`,
/// as a tool does, rather than by a DNS name, as a rebinding page does.
fn local_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(addr, _)| addr),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case("localhost.")
}

/// Why a request to the admin API is refused before its handler.
fn rebinding(headers: &HeaderMap, tcp: bool) -> Option<&'static str> {
    // curl and scripts send no Origin; a browser sends one on every cross-site request and on
    // every PUT. No page has business with the admin API.
    if headers.contains_key(header::ORIGIN) {
        return Some("a browser request (Origin header)");
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site != "none")
    {
        return Some("a browser request (Sec-Fetch-Site header)");
    }
    if tcp {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !host.is_some_and(local_host) {
            return Some("a Host that is not an address or localhost");
        }
    }
    None
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"))],
        "Unauthorized\n",
    )
        .into_response()
}

/// The middleware: the checks, the handler, then the web config's headers on every answer
/// (refusals included, as the toolkit does).
pub(crate) async fn guard(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let config = gate.web.as_ref().map(|web| web.config());
    let mut response = checked(&gate, config.as_ref(), request, next).await;
    if let Some(config) = &config {
        for (name, value) in &config.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}

async fn checked(
    gate: &Gate,
    config: Option<&WebConfig>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<Peer>().cloned();
    let mut caller = Caller { peer, user: None };
    // Over TLS a rebinding page cannot present tcpobs's certificate for its own name, so the
    // Host check is for plain TCP only (and a certificate's name may then be used as Host).
    let tls = gate.web.as_ref().is_some_and(|web| web.tls());
    if gate.api == Api::Admin
        && let Some(why) = rebinding(request.headers(), gate.tcp && !tls)
    {
        if let Some(count) = gate.refused.hit() {
            warn!(
                by = %caller,
                count,
                path = request.uri().path(),
                "admin API request refused: {why}"
            );
        }
        return (
            StatusCode::FORBIDDEN,
            format!("refused: {why}; the admin API serves tools, not browsers\n"),
        )
            .into_response();
    }
    // Start-up refuses a TCP admin API without users; a web config re-read without them must
    // not open it either.
    if gate.api == Api::Admin && gate.tcp && config.is_none_or(|config| config.users.is_empty()) {
        return (
            StatusCode::FORBIDDEN,
            "refused: the admin API over TCP needs basic_auth_users in the web config\n",
        )
            .into_response();
    }
    if let (Some(web), Some(config)) = (&gate.web, config)
        && !config.users.is_empty()
        && !matches!(request.uri().path(), "/healthz" | "/readyz")
    {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        match web.auth.check(&config.users, authorization).await {
            Some(user) => caller.user = Some(user),
            None => return unauthorized(),
        }
    }
    request.extensions_mut().insert(caller);
    match timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request timeout\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:9753",
            "[::1]:9753",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST:80",
            "10.1.2.3:9753",
        ] {
            assert!(local_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9753",
            "127.0.0.1.nip.io:9753",
            "localhost.evil.example",
            "",
        ] {
            assert!(!local_host(host), "{host}");
        }
    }

    #[test]
    fn browsers_and_foreign_hosts_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert_eq!(
            rebinding(&headers(&[("host", "127.0.0.1:9753")]), true),
            None
        );
        assert_eq!(rebinding(&headers(&[("host", "localhost")]), false), None);
        // A Unix socket has no Host worth checking.
        assert_eq!(rebinding(&headers(&[("host", "anything")]), false), None);
        assert!(rebinding(&headers(&[("host", "evil.example:9753")]), true).is_some());
        assert!(rebinding(&headers(&[]), true).is_some());
        assert!(
            rebinding(
                &headers(&[
                    ("host", "127.0.0.1:9753"),
                    ("origin", "http://evil.example")
                ]),
                true
            )
            .is_some()
        );
        assert!(
            rebinding(
                &headers(&[("host", "localhost"), ("sec-fetch-site", "cross-site")]),
                false
            )
            .is_some()
        );
    }
}
