//! The web config in force (`--web-config-file`): TLS certificates, basic auth users and
//! response headers, read at start-up and again on every `SIGHUP`. A file that fails to load
//! on `SIGHUP` changes nothing; turning TLS on or off needs a restart (as in the toolkit).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use tokio_rustls::TlsAcceptor;

use super::{
    auth::Authenticator,
    tls::server_config,
    webconfig::{WebConfig, WebConfigError},
};

/// A loaded web config: the file's settings and, with TLS, the certificates read.
struct Loaded {
    config: WebConfig,
    acceptor: Option<TlsAcceptor>,
}

impl Loaded {
    fn read(path: &Path) -> Result<Self, WebConfigError> {
        let config = WebConfig::load(path)?;
        let acceptor = config
            .tls
            .as_ref()
            .map(server_config)
            .transpose()?
            .map(TlsAcceptor::from);
        Ok(Self { config, acceptor })
    }
}

pub(crate) struct Web {
    path: PathBuf,
    current: RwLock<Arc<Loaded>>,
    pub(crate) auth: Authenticator,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What [`Web::reload`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reloaded {
    pub tls: bool,
    pub users: usize,
}

impl Web {
    /// Reads `path` and, with TLS, its certificates and key.
    pub(crate) fn load(path: &Path) -> Result<Self, WebConfigError> {
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(Loaded::read(path)?)),
            auth: Authenticator::default(),
        })
    }

    /// Checks `path` as [`Web::load`] would, without keeping anything (start-up validation).
    pub(crate) fn check(path: &Path) -> Result<WebConfig, WebConfigError> {
        Loaded::read(path).map(|loaded| loaded.config)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the file again; on error the previous settings stay.
    pub(crate) fn reload(&self) -> Result<Reloaded, WebConfigError> {
        let next = Loaded::read(&self.path)?;
        let tls = self.current().acceptor.is_some();
        if next.acceptor.is_some() != tls {
            return Err(WebConfigError::Tls {
                key: "cert_file",
                reason: if tls {
                    "TLS was on at start-up: turning it off needs a restart".to_owned()
                } else {
                    "TLS was off at start-up: turning it on needs a restart".to_owned()
                },
            });
        }
        let reloaded = Reloaded {
            tls,
            users: next.config.users.len(),
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(reloaded)
    }

    /// The TLS acceptor in force, if TLS is on.
    pub(crate) fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current().acceptor.clone()
    }

    /// Whether TLS is on.
    pub(crate) fn tls(&self) -> bool {
        self.current().acceptor.is_some()
    }

    /// The settings in force (users and headers).
    pub(crate) fn config(&self) -> WebConfig {
        self.current().config.clone()
    }
}
