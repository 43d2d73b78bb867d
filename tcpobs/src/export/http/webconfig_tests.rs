//! The web config parser: every key of the toolkit's format, served or refused by name.
//! (The integration tests run `promtool check web-config` on every file they give the daemon,
//! with real certificates; these stay off the file system.)

use super::*;

/// `secret`, hashed with cost 4 (the smallest) to keep the tests fast.
const HASH: &str = "$2b$04$I4wr3wu3yiQwhQ7lm2bsEOT7BaYvjqtYA8oeZOgDNeRL9lrgxWN02";

fn parse(text: &str) -> Result<WebConfig, WebConfigError> {
    WebConfig::parse(text, Path::new("/etc/tcpobs"))
}

#[test]
fn an_empty_file_is_plain_http_without_auth() {
    for text in ["", "# nothing\n", "\n\n"] {
        let config = parse(text).unwrap();
        assert!(config.tls.is_none() && config.users.is_empty() && config.headers.is_empty());
    }
    // A TLS section that asks for nothing is plain HTTP, as in the toolkit.
    assert!(parse("tls_server_config: {}\n").unwrap().tls.is_none());
}

#[test]
fn tls_users_and_headers() {
    let config = parse(&format!(
        "tls_server_config:\n  cert_file: tcpobs.crt\n  key_file: /keys/tcpobs.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  \
         min_version: TLS13\n  prefer_server_cipher_suites: true\n\
         http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n    \
         Strict-Transport-Security: max-age=31536000\n\
         basic_auth_users:\n  prometheus: {HASH}\n  'alice': '{HASH}'\n"
    ))
    .unwrap();
    let tls = config.tls.unwrap();
    // Relative to the file's directory, as in the toolkit.
    assert_eq!(tls.cert, Pem::File("/etc/tcpobs/tcpobs.crt".into()));
    assert_eq!(tls.key, Pem::File("/keys/tcpobs.key".into()));
    assert_eq!(tls.client_ca, Some(Pem::File("/etc/tcpobs/ca.pem".into())));
    assert_eq!(tls.client_auth, ClientAuth::Require);
    assert_eq!(
        (tls.min_version, tls.max_version),
        (TlsVersion::Tls13, TlsVersion::Tls13)
    );
    assert_eq!(
        config.users.keys().collect::<Vec<_>>(),
        ["alice", "prometheus"]
    );
    let headers: Vec<_> = config
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
        .collect();
    assert_eq!(
        headers,
        [
            "strict-transport-security: max-age=31536000",
            "x-frame-options: deny"
        ]
    );
}

#[test]
fn inline_pem_and_old_minimum_versions() {
    let config = parse(
        "tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n    x\n    \
         -----END CERTIFICATE-----\n  key: k\n  min_version: TLS10\n  \
         client_auth_type: VerifyClientCertIfGiven\n  client_ca: c\n",
    )
    .unwrap();
    let tls = config.tls.unwrap();
    assert!(matches!(tls.cert, Pem::Inline(ref pem) if pem.starts_with("-----BEGIN")));
    assert_eq!(tls.key, Pem::Inline("k".into()));
    assert_eq!(
        tls.min_version,
        TlsVersion::Tls12,
        "rustls has nothing older"
    );
    assert_eq!(tls.client_auth, ClientAuth::VerifyIfGiven);
}

#[test]
fn what_tcpobs_refuses_is_named() {
    let tls = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
    for (text, needle) in [
        ("colour: red\n".to_owned(), "unknown field `colour`"),
        (
            "tls_server_config:\n  certfile: a\n".to_owned(),
            "unknown field `certfile`",
        ),
        ("basic_auth_users: [a, b]\n".to_owned(), "basic_auth_users"),
        (
            "basic_auth_users:\n  bob: hunter2\n".to_owned(),
            "basic_auth_users.bob: not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: a\n".to_owned(),
            "tls_server_config.key: missing",
        ),
        (
            "tls_server_config:\n  key_file: a\n".to_owned(),
            "tls_server_config.cert: missing",
        ),
        (
            format!("{tls}  cert: inline\n"),
            "give cert or cert_file, not both",
        ),
        (
            format!("{tls}  client_auth_type: RequireAnyClientCert\n"),
            "without verifying",
        ),
        (
            format!("{tls}  client_auth_type: RequestClientCert\n"),
            "without verifying",
        ),
        (
            format!("{tls}  client_auth_type: Sometimes\n"),
            "unknown `Sometimes`",
        ),
        (
            format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
            "tls_server_config.client_ca: missing",
        ),
        (
            format!("{tls}  client_ca_file: ca.pem\n"),
            "tls_server_config.client_ca_file: given without",
        ),
        (
            format!("{tls}  min_version: TLS14\n"),
            "unknown TLS version",
        ),
        (format!("{tls}  max_version: TLS11\n"), "1.2 and 1.3 only"),
        (
            format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"),
            "above max_version",
        ),
        (
            format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
            "tls_server_config.cipher_suites is not supported",
        ),
        (
            format!("{tls}  curve_preferences: [X25519]\n"),
            "curve_preferences is not supported",
        ),
        (
            format!("{tls}  client_allowed_sans: [a.example]\n"),
            "client_allowed_sans is not supported",
        ),
        (
            "rate_limit:\n  interval: 1s\n  burst: 5\n".to_owned(),
            "rate_limit is not supported",
        ),
        (
            "http_server_config:\n  headers:\n    Server: tcpobs\n".to_owned(),
            "http_server_config.headers.Server: cannot be set",
        ),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".to_owned(),
            "use one of deny, sameorigin",
        ),
        ("tls_server_config: [\n".to_owned(), ""),
    ] {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    // Empty lists are what the toolkit writes for "not set".
    assert!(parse(&format!("{tls}  cipher_suites: []\n")).is_ok());
}

#[test]
fn a_missing_file_is_named() {
    let err = WebConfig::load(Path::new("/nonexistent/web.yml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/web.yml"), "{err}");
}
