//! TLS and basic auth from a web config, served and re-read on SIGHUP, client certificates, and
//! a real Prometheus scraping over TLS with basic auth.

use std::{
    fs,
    path::{Path, PathBuf},
};

use tcpobs_tests::{
    daemon::{Daemon, curl_with, sample_value},
    phases::{Pki, Scratch, openssl},
    prometheus::Prometheus,
};

use super::{eventually, hash, path, web_config};

/// A certificate for `cn` signed by the CA `ca` (`ca.pem`/`ca.key` in the scratch
/// directory): `{name}.pem` and `{name}.key`.
fn signed(scratch: &Scratch, ca: &str, name: &str, extensions: &str) -> (PathBuf, PathBuf) {
    let dir = &scratch.0;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    scratch.write(&format!("{name}.ext"), extensions);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    (
        scratch.path(&format!("{name}.pem")),
        scratch.path(&format!("{name}.key")),
    )
}

/// curl over HTTPS against the daemon's metrics API: (status, body); status 0 when there was
/// no HTTP response (a refused handshake, an unverified certificate).
fn https(daemon: &Daemon, options: &[&str], route: &str) -> (u16, String) {
    let url = format!("https://127.0.0.1:{}{route}", daemon.api.port());
    curl_with(options, "GET", &url, None, None)
}

/// TLS and basic auth from a web config; plain HTTP refused with a 400 that says why; 401 with
/// `WWW-Authenticate` without valid credentials; health open for probes; certificates and users
/// re-read on SIGHUP; a broken file on SIGHUP changes nothing.
#[test]
fn tls_and_basic_auth_are_re_read_on_sighup() {
    let scratch = Scratch::new("api-tls");
    let pki = Pki::new(&scratch);
    let first = web_config(
        &scratch,
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  min_version: TLS12\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  prometheus: {}\n",
            path(&pki.cert),
            path(&pki.key),
            hash("secret")
        ),
    );
    let daemon = Daemon::start(&["--web-config-file", path(&first)]);
    let ca = path(&pki.ca);
    let (status, body) = https(
        &daemon,
        &["--cacert", ca, "--user", "prometheus:secret"],
        "/metrics",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("tcpobs_build_info{version=\"0.1.0\"} 1"),
        "{body}"
    );

    // No or wrong credentials: 401 with the challenge, no metrics.
    // The response headers go to stdout, before the body.
    let challenge = ["--dump-header", "-"];
    for credentials in [
        &[][..],
        &["--user", "prometheus:Secret"],
        &["--user", "root:secret"],
    ] {
        let mut options = vec!["--cacert", ca];
        options.extend(challenge);
        options.extend_from_slice(credentials);
        let (status, body) = https(&daemon, &options, "/metrics");
        assert_eq!(status, 401, "{credentials:?}: {body}");
        assert!(!body.contains("tcpobs_"), "{body}");
        let headers = body.to_ascii_lowercase();
        assert!(
            headers.contains("\r\nwww-authenticate: basic\r\n"),
            "{body}"
        );
        assert!(
            headers.contains("\r\nx-content-type-options: nosniff\r\n"),
            "{body}"
        );
    }
    // Probes hold no secret: health and readiness answer without credentials (over TLS).
    assert_eq!(
        https(&daemon, &["--cacert", ca], "/healthz"),
        (200, "ok\n".to_owned())
    );
    assert_eq!(https(&daemon, &["--cacert", ca], "/readyz").0, 200);
    // Plain HTTP to the TLS port.
    let plain = format!("http://{}/metrics", daemon.api);
    let (status, body) = curl_with(&["--user", "prometheus:secret"], "GET", &plain, None, None);
    assert_eq!(
        (status, body.as_str()),
        (400, "Client sent an HTTP request to an HTTPS server.\n")
    );
    // A client that does not trust the server's CA gets no response.
    let other = path(&pki.other_ca);
    assert_eq!(
        https(
            &daemon,
            &["--cacert", other, "--user", "prometheus:secret"],
            "/metrics"
        )
        .0,
        0
    );

    // New certificate (from the other CA) and new users, then SIGHUP.
    let (cert, key) = signed(
        &scratch,
        "other-ca",
        "renewed",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    );
    let second = web_config(
        &scratch,
        "web2.yml",
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n\
             basic_auth_users:\n  scraper: {}\n",
            path(&cert),
            path(&key),
            hash("renewed")
        ),
    );
    fs::copy(&second, &first).unwrap();
    daemon.signal(libc::SIGHUP);
    eventually("the renewed certificate and user", || {
        https(
            &daemon,
            &["--cacert", other, "--user", "scraper:renewed"],
            "/metrics",
        )
        .0 == 200
    });
    assert_eq!(
        https(
            &daemon,
            &["--cacert", other, "--user", "prometheus:secret"],
            "/metrics"
        )
        .0,
        401
    );
    assert_eq!(
        https(
            &daemon,
            &["--cacert", ca, "--user", "scraper:renewed"],
            "/metrics"
        )
        .0,
        0
    );
    assert!(
        daemon
            .log()
            .iter()
            .any(|line| line.contains("web config re-read") && line.contains("basic_auth_users=1")),
        "{:#?}",
        daemon.log()
    );

    // A broken file: logged, and the one in force stays.
    fs::write(&first, "basic_auth_users:\n  scraper: not-a-hash\n").unwrap();
    daemon.signal(libc::SIGHUP);
    eventually("the refusal in the log", || {
        daemon
            .log()
            .iter()
            .any(|line| line.contains("web config not applied"))
    });
    let (status, body) = https(
        &daemon,
        &["--cacert", other, "--user", "scraper:renewed"],
        "/metrics",
    );
    assert_eq!(status, 200, "{body}");
    // The plain HTTP attempt and the untrusted handshakes were counted.
    let tls_drops = sample_value(
        &body,
        "tcpobs_http_connections_dropped_total{listener=\"metrics\",reason=\"tls\"}",
    )
    .unwrap();
    assert!(
        tls_drops >= 3.0,
        "plain HTTP and two refused handshakes: {tls_drops}"
    );
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

/// `RequireAndVerifyClientCert`: a client certificate from the configured CA gets in; none, or
/// one from another CA, gets no response.
#[test]
fn client_certificates_are_verified() {
    let scratch = Scratch::new("api-mtls");
    let pki = Pki::new(&scratch);
    let usage = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
    let (good_cert, good_key) = signed(&scratch, "ca", "scraper", usage);
    let (bad_cert, bad_key) = signed(&scratch, "other-ca", "stranger", usage);
    let config = web_config(
        &scratch,
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            path(&pki.cert),
            path(&pki.key),
            path(&pki.ca)
        ),
    );
    let daemon = Daemon::start(&["--web-config-file", path(&config)]);
    let ca = path(&pki.ca);
    let with = |cert: &Path, key: &Path| {
        https(
            &daemon,
            &["--cacert", ca, "--cert", path(cert), "--key", path(key)],
            "/metrics",
        )
    };
    let (status, body) = with(&good_cert, &good_key);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        with(&bad_cert, &bad_key).0,
        0,
        "a certificate from another CA"
    );
    assert_eq!(
        https(&daemon, &["--cacert", ca], "/metrics").0,
        0,
        "no certificate"
    );
}

/// A real Prometheus scrapes tcpobs over TLS with basic auth: `up` is 1 and a tcpobs metric
/// arrives.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    let scratch = Scratch::new("api-prometheus");
    let pki = Pki::new(&scratch);
    let config = web_config(
        &scratch,
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n\
             basic_auth_users:\n  prometheus: {}\n",
            path(&pki.cert),
            path(&pki.key),
            hash("scrape-secret")
        ),
    );
    let daemon = Daemon::start(&["--web-config-file", path(&config)]);
    let prometheus = Prometheus::start_job(&format!(
        "  - job_name: tcpobs\n    scheme: https\n    tls_config:\n      ca_file: {}\n    \
         basic_auth:\n      username: prometheus\n      password: scrape-secret\n    \
         static_configs:\n      - targets: ['{}']\n  - job_name: no-password\n    \
         scheme: https\n    tls_config:\n      ca_file: {}\n    static_configs:\n      \
         - targets: ['{}']\n",
        path(&pki.ca),
        daemon.api,
        path(&pki.ca),
        daemon.api
    ));
    prometheus.expect("up{job=\"tcpobs\"}", 1.0);
    prometheus.expect("tcpobs_build_info{job=\"tcpobs\",version=\"0.1.0\"}", 1.0);
    prometheus.expect(
        "tcpobs_http_connections_dropped_total{job=\"tcpobs\",listener=\"metrics\",reason=\"refused\"}",
        0.0,
    );
    // The same target without the password is down.
    prometheus.expect("up{job=\"no-password\"}", 0.0);
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}
