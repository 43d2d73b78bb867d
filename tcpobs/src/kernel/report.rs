//! What loading reports, shared by the modules that load: how each hook family ended up
//! attached ([`FamilyAttach`], for `--check`, the logs and `tcpobs_probe_info`), kernel errors
//! as readable text ([`error_chain`]), and the programs and maps of the loaded object
//! ([`program_mut`], [`ProgramFailure`], [`take_map`], [`MapError`]).
//!
//! A leaf: the loader, the filters, the libcall probes and the reader import it, and it
//! imports none of them.

use std::fmt::Display;

use aya::{
    Ebpf,
    maps::Map,
    programs::{Program, ProgramError},
};
use thiserror::Error;

use crate::kernel::loader::Strategy;

/// One attached program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// `tp_btf`, `tracepoint` (classic), `fentry`, `fexit`, `kprobe`, `kretprobe`, `uprobe`
    /// or `uretprobe`.
    pub program_type: &'static str,
    /// The tracepoint (`sock:inet_sock_set_state`), kernel function, or `library:symbol`.
    pub target: String,
}

/// How one hook family is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyAttach {
    pub family: &'static str,
    pub strategy: Strategy,
    /// Empty for the connect family under the tracepoint strategy, which the state hook
    /// covers, and for a libcall family with no library attached.
    pub programs: Vec<Attached>,
}

impl FamilyAttach {
    /// The distinct program types, joined with `+` (`kprobe+kretprobe`); `state` for a
    /// family served by the state hook, `none` for a libcall family with no library attached.
    pub fn program_types(&self) -> String {
        let mut types: Vec<&str> = Vec::new();
        for program in &self.programs {
            if !types.contains(&program.program_type) {
                types.push(program.program_type);
            }
        }
        match (types.is_empty(), self.strategy) {
            (true, Strategy::Uprobe) => "none".to_owned(),
            (true, _) => "state".to_owned(),
            (false, _) => types.join("+"),
        }
    }
}

/// An error and its sources, joined with ": " (sources already in the message are skipped).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A program of the loaded object that could not be used: missing (the kernel programs and
/// the daemon disagree on its name or type), or refused by aya or the kernel.
#[derive(Debug, Error)]
pub(crate) enum ProgramFailure {
    #[error("program {0} missing from the object")]
    Missing(String),
    /// The whole chain of aya's error (the kernel's answer is usually its last source).
    #[error("{}", error_chain(.0))]
    Refused(#[from] ProgramError),
}

/// Program `name` of the loaded object, as a `T` (`FEntry`, `TracePoint`, `UProbe`, ...).
pub(crate) fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut T, ProgramFailure>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| ProgramFailure::Missing(name.to_owned()))?;
    Ok(program.try_into()?)
}

/// A map of the loaded object that the daemon cannot use.
#[derive(Debug, Error)]
#[error("cannot set up kernel map {map}: {reason}")]
pub struct MapError {
    pub(crate) map: &'static str,
    pub(crate) reason: String,
}

impl MapError {
    pub(crate) fn new(map: &'static str, reason: impl Display) -> Self {
        Self {
            map,
            reason: reason.to_string(),
        }
    }
}

/// Takes map `name` out of the loaded object as a `T`, so that it outlives the programs.
pub(crate) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapError>
where
    T: TryFrom<Map>,
    T::Error: Display,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| MapError::new(name, "missing from the object"))?;
    T::try_from(map).map_err(|err| MapError::new(name, err))
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn error_chain_joins_sources() {
        let err = io::Error::other(MapError::new("EVENTS", "missing from the object"));
        assert_eq!(
            error_chain(&err),
            "cannot set up kernel map EVENTS: missing from the object"
        );
        #[derive(Debug, Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let err = Outer(io::Error::other("inner"));
        assert_eq!(error_chain(&err), "outer: inner");
    }
}
