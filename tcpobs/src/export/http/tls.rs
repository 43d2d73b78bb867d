//! A web config's `tls_server_config` as a rustls server configuration (the `ring` provider),
//! read again on every `SIGHUP`.

use std::{io, sync::Arc};

use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig, SupportedProtocolVersion,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

use super::webconfig::{ClientAuth, Pem, TlsSettings, TlsVersion, WebConfigError};

fn certificates(
    key: &'static str,
    pem: &Pem,
) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let error = |reason: String| WebConfigError::Tls { key, reason };
    let text = pem
        .read()
        .map_err(|err: io::Error| error(err.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| error(format!("not PEM certificates: {err}")))?;
    if certificates.is_empty() {
        return Err(error("no PEM certificate in it".to_owned()));
    }
    Ok(certificates)
}

/// Builds the server configuration: certificates and key read now.
pub(crate) fn server_config(tls: &TlsSettings) -> Result<Arc<ServerConfig>, WebConfigError> {
    #[expect(
        deprecated,
        reason = "ring has no post-quantum key exchange; aws-lc-rs has, but doubles the TLS \
                  stack's build time and triples its binary size (README, HTTP API)"
    )]
    let provider = Arc::new(ring::default_provider());
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (tls.min_version..=tls.max_version).contains(version))
    .map(|(_, version)| version)
    .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|err| WebConfigError::Tls {
            key: "min_version",
            reason: err.to_string(),
        })?;
    let builder = match (tls.client_auth, &tls.client_ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates("client_ca", ca)? {
                roots.add(certificate).map_err(|err| WebConfigError::Tls {
                    key: "client_ca",
                    reason: err.to_string(),
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|err| {
                WebConfigError::Tls {
                    key: "client_ca",
                    reason: err.to_string(),
                }
            })?)
        }
    };
    let chain = certificates("cert", &tls.cert)?;
    let key_text = tls.key.read().map_err(|err| WebConfigError::Tls {
        key: "key",
        reason: err.to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|err| WebConfigError::Tls {
        key: "key",
        reason: format!("not a PEM private key: {err}"),
    })?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|err| WebConfigError::Tls {
            key: "key",
            reason: format!("does not go with the certificate: {err}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
