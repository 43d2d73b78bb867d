//! Start-up errors, each saying what the user can do about it, and kernel errors made short
//! enough to read (the verifier log goes to the debug log).

use thiserror::Error;
use tracing::debug;

use crate::kernel::{btf::BtfError, filters::FilterError, report::MapError};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "tcpobs needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {missing}); \
         run it with sudo"
    )]
    Privileges { missing: String },
    /// Root, in a container or unit that dropped the capabilities.
    #[error(
        "tcpobs runs as root but without the capabilities it needs (missing: {missing}); grant \
         CAP_BPF and CAP_PERFMON (systemd: CapabilityBoundingSet= or AmbientCapabilities=; \
         Kubernetes: securityContext.capabilities.add)"
    )]
    RootWithoutCapabilities { missing: String },
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(
        "{path} is not usable kernel BTF ({why}); --btf must name the kernel's BTF, normally \
         /sys/kernel/btf/vmlinux (a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
    )]
    BadBtf { path: String, why: &'static str },
    #[error("cannot parse kernel BTF at {path} for tp_btf programs: {reason}")]
    AyaBtf { path: String, reason: String },
    #[error("the kernel refused to load tcpobs's programs: {0}")]
    Load(String),
    #[error("cannot attach the {family} hooks on this kernel: {reasons}")]
    Attach {
        family: &'static str,
        reasons: String,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("cannot set up the kernel filters: {0}")]
    Filter(#[from] FilterError),
}

/// The first line of an error, without a verifier log; the log, when there is one, goes to
/// the debug log (`--log-level debug`).
pub(super) fn short(err: &str) -> &str {
    let end = match err.find(". Verifier output") {
        Some(end) => {
            debug!("{err}");
            end
        }
        None => err.len(),
    };
    let line = err[..end].lines().next().unwrap_or_default();
    &line[..line.len().min(300)]
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::kernel::report::error_chain;

    #[test]
    fn short_drops_the_verifier_log() {
        let err = "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). \
                   Verifier output: 0: R1=ctx\n1: ...";
        assert_eq!(
            short(err),
            "the BPF_PROG_LOAD syscall returned Permission denied (os error 13)"
        );
    }

    #[test]
    fn error_chain_joins_sources() {
        let err = io::Error::other(BtfError::Malformed("truncated"));
        assert_eq!(error_chain(&err), "malformed BTF: truncated");
        let err = LoadError::Btf(BtfError::NoStruct("sock".into()));
        assert_eq!(error_chain(&err), "kernel BTF has no struct sock");
    }
}
