//! The web configuration file (`--web-config-file`): the YAML that the Prometheus
//! exporter-toolkit defines and node_exporter and every official exporter read, so that one
//! file, one `promtool check web-config` and one habit serve them all.
//!
//! | key | tcpobs |
//! |---|---|
//! | `tls_server_config.cert_file`, `key_file`, `cert`, `key` | served (PEM; the key PKCS#8, PKCS#1 or SEC1) |
//! | `tls_server_config.client_auth_type` | `NoClientCert`, `VerifyClientCertIfGiven`, `RequireAndVerifyClientCert`; the two that accept unverified certificates are refused |
//! | `tls_server_config.client_ca_file`, `client_ca` | served |
//! | `tls_server_config.min_version`, `max_version` | `TLS12`, `TLS13`; a minimum of `TLS10`/`TLS11` means 1.2 (rustls has nothing older) |
//! | `tls_server_config.prefer_server_cipher_suites` | accepted, no effect (as in Go since 1.18) |
//! | `tls_server_config.cipher_suites`, `curve_preferences`, `client_allowed_sans` | refused when not empty |
//! | `http_server_config.headers` | served, with the toolkit's allowed names and values |
//! | `http_server_config.http2` | accepted; tcpobs speaks HTTP/1.1 |
//! | `basic_auth_users` | served: user → bcrypt hash |
//! | `rate_limit` | refused |
//!
//! Relative file names are relative to the file's directory, as in the toolkit. Unknown keys
//! are errors (the toolkit's parser is strict too).

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    str::FromStr as _,
};

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;
use thiserror::Error;

/// Why a web configuration file is refused; the daemon keeps the one it has on `SIGHUP`.
#[derive(Debug, Error)]
pub(crate) enum WebConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Yaml(String),
    #[error("tls_server_config.{key}: {reason}")]
    Tls { key: &'static str, reason: String },
    #[error("tls_server_config.{0} is not supported by tcpobs (leave it out)")]
    Unsupported(&'static str),
    #[error("rate_limit is not supported by tcpobs (leave it out)")]
    RateLimit,
    #[error("basic_auth_users.{user}: not a bcrypt hash ({reason})")]
    Hash { user: String, reason: String },
    #[error("http_server_config.headers.{name}: {reason}")]
    Header { name: String, reason: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    http_server_config: Option<HttpFile>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    #[serde(default)]
    client_allowed_sans: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    curve_preferences: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// PEM text, from a file or inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pem {
    File(PathBuf),
    Inline(String),
}

impl Pem {
    fn pick(
        key: &'static str,
        inline: Option<String>,
        file: Option<PathBuf>,
        dir: &Path,
    ) -> Result<Option<Self>, WebConfigError> {
        match (
            inline.filter(|s| !s.is_empty()),
            file.filter(|p| !p.as_os_str().is_empty()),
        ) {
            (Some(_), Some(_)) => Err(WebConfigError::Tls {
                key,
                reason: format!("give {key} or {key}_file, not both"),
            }),
            (Some(text), None) => Ok(Some(Self::Inline(text))),
            (None, Some(path)) => Ok(Some(Self::File(dir.join(path)))),
            (None, None) => Ok(None),
        }
    }

    /// The PEM text.
    pub(crate) fn read(&self) -> io::Result<Vec<u8>> {
        match self {
            Self::File(path) => fs::read(path)
                .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display()))),
            Self::Inline(text) => Ok(text.as_bytes().to_vec()),
        }
    }
}

/// `client_auth_type`, as far as tcpobs serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    None,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but verified when sent.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`.
    Require,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TlsVersion {
    Tls12,
    Tls13,
}

/// `tls_server_config`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub client_ca: Option<Pem>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// A web configuration file, checked (certificates are read by [`super::tls`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// User name → bcrypt hash. Empty: no basic auth.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The headers the toolkit lets a web config set, and the values it allows (none: any).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

fn version(
    key: &'static str,
    value: Option<&str>,
    default: TlsVersion,
) -> Result<TlsVersion, WebConfigError> {
    match value.unwrap_or_default() {
        "" => Ok(default),
        // rustls has no TLS 1.0 or 1.1: a minimum below 1.2 is 1.2.
        "TLS10" | "TLS11" if key == "min_version" => Ok(TlsVersion::Tls12),
        "TLS12" => Ok(TlsVersion::Tls12),
        "TLS13" => Ok(TlsVersion::Tls13),
        "TLS10" | "TLS11" => Err(WebConfigError::Tls {
            key,
            reason: "tcpobs speaks TLS 1.2 and 1.3 only".to_owned(),
        }),
        other => Err(WebConfigError::Tls {
            key,
            reason: format!("unknown TLS version `{other}`: use TLS12 or TLS13"),
        }),
    }
}

impl TlsFile {
    /// `None` when nothing in the section asks for TLS (as the toolkit: plain HTTP).
    fn check(self, dir: &Path) -> Result<Option<TlsSettings>, WebConfigError> {
        for (key, empty) in [
            ("cipher_suites", self.cipher_suites.is_empty()),
            ("curve_preferences", self.curve_preferences.is_empty()),
            ("client_allowed_sans", self.client_allowed_sans.is_empty()),
        ] {
            if !empty {
                return Err(WebConfigError::Unsupported(key));
            }
        }
        let _ = self.prefer_server_cipher_suites;
        let cert = Pem::pick("cert", self.cert, self.cert_file, dir)?;
        let key = Pem::pick("key", self.key, self.key_file, dir)?;
        let client_ca = Pem::pick("client_ca", self.client_ca, self.client_ca_file, dir)?;
        let client_auth = match self.client_auth_type.as_deref().unwrap_or_default() {
            "" | "NoClientCert" => ClientAuth::None,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::Require,
            kind @ ("RequestClientCert" | "RequireAnyClientCert") => {
                return Err(WebConfigError::Tls {
                    key: "client_auth_type",
                    reason: format!(
                        "{kind} accepts client certificates without verifying them; use \
                         VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                    ),
                });
            }
            other => {
                return Err(WebConfigError::Tls {
                    key: "client_auth_type",
                    reason: format!(
                        "unknown `{other}`: use NoClientCert, VerifyClientCertIfGiven or \
                         RequireAndVerifyClientCert"
                    ),
                });
            }
        };
        if cert.is_none() && key.is_none() && client_ca.is_none() && client_auth == ClientAuth::None
        {
            return Ok(None);
        }
        let missing = |key: &'static str| WebConfigError::Tls {
            key,
            reason: format!("missing: give {key}_file (or {key})"),
        };
        let cert = cert.ok_or_else(|| missing("cert"))?;
        let key = key.ok_or_else(|| missing("key"))?;
        match (client_auth, &client_ca) {
            (ClientAuth::None, Some(_)) => {
                return Err(WebConfigError::Tls {
                    key: "client_ca_file",
                    reason: "given without a client_auth_type that verifies client certificates"
                        .to_owned(),
                });
            }
            (ClientAuth::VerifyIfGiven | ClientAuth::Require, None) => {
                return Err(missing("client_ca"));
            }
            _ => {}
        }
        let min_version = version(
            "min_version",
            self.min_version.as_deref(),
            TlsVersion::Tls12,
        )?;
        let max_version = version(
            "max_version",
            self.max_version.as_deref(),
            TlsVersion::Tls13,
        )?;
        if min_version > max_version {
            return Err(WebConfigError::Tls {
                key: "min_version",
                reason: "above max_version".to_owned(),
            });
        }
        Ok(Some(TlsSettings {
            cert,
            key,
            client_auth,
            client_ca,
            min_version,
            max_version,
        }))
    }
}

impl WebConfig {
    /// Reads and checks `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// Checks the YAML `text`; relative file names are relative to `dir`.
    pub(crate) fn parse(text: &str, dir: &Path) -> Result<Self, WebConfigError> {
        // An empty file (or one with comments only) is a valid, empty configuration.
        let file: File = if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            File::default()
        } else {
            serde_norway::from_str(text).map_err(|err| WebConfigError::Yaml(err.to_string()))?
        };
        if file.rate_limit.is_some() {
            return Err(WebConfigError::RateLimit);
        }
        let tls = match file.tls_server_config {
            Some(tls) => tls.check(dir)?,
            None => None,
        };
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            bcrypt::HashParts::from_str(hash).map_err(|err| WebConfigError::Hash {
                user: user.clone(),
                reason: err.to_string(),
            })?;
        }
        let http = file.http_server_config.unwrap_or_default();
        let _ = http.http2;
        let mut headers = Vec::new();
        for (name, value) in http.headers {
            let header = |reason: String| WebConfigError::Header {
                name: name.clone(),
                reason,
            };
            let Some((_, allowed)) = HEADERS.iter().find(|(known, _)| *known == name) else {
                return Err(header(format!(
                    "cannot be set; the toolkit allows {}",
                    HEADERS.map(|(n, _)| n).join(", ")
                )));
            };
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err(header(format!("use one of {}", allowed.join(", "))));
            }
            if value.is_empty() {
                continue;
            }
            let value = HeaderValue::from_str(&value).map_err(|err| header(err.to_string()))?;
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|err| header(err.to_string()))?;
            headers.push((name, value));
        }
        Ok(Self {
            tls,
            users,
            headers,
        })
    }
}

#[cfg(test)]
#[path = "webconfig_tests.rs"]
mod tests;
