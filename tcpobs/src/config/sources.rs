//! Where settings come from: the command line, `TCPOBS_*` environment variables and the
//! `--config` file, merged in that order of precedence ([`file`](super::file) says how), and
//! read again on `SIGHUP`.

use std::ffi::OsString;

use clap::{CommandFactory as _, FromArgMatches as _};

use super::{Cli, Settings, file::file_args};

/// The process's arguments (and so its environment and config file): read once at start-up,
/// and again on `SIGHUP`.
#[derive(Clone, Debug)]
pub struct Sources {
    args: Vec<OsString>,
}

impl Sources {
    pub fn new(args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        Self {
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// The process's own arguments.
    pub fn from_env() -> Self {
        Self::new(std::env::args_os())
    }

    /// Parses and validates everything; errors exit with code 2.
    pub fn load(&self) -> Result<Settings, clap::Error> {
        let matches = Cli::command().try_get_matches_from(&self.args)?;
        let mut args = self.args.clone();
        if let Some(path) = matches.get_one::<std::path::PathBuf>("config") {
            args.extend(file_args(path, &matches)?);
        }
        let matches = Cli::command().try_get_matches_from(&args)?;
        Cli::from_arg_matches(&matches)?.into_settings()
    }
}
