//! Step 3, attaching: each hook family by the first of its ways whose programs all load and
//! attach (a way is all or nothing), and within the tracepoint strategy `tp_btf` before the
//! classic tracepoint.

use aya::{
    Btf as AyaBtf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, TracePoint},
};
use thiserror::Error;
use tracing::debug;

use super::{
    LoadError, StrategyChoice, TracepointMode,
    error::short,
    families::{Attach, Family, Way},
    prepare::Unreadable,
};
use crate::kernel::{
    btf::{Btf, BtfError},
    report::{Attached, FamilyAttach, ProgramFailure, program_mut},
    tracefs::TracefsError,
};

/// Layout and signature facts the attach step needs besides `OFFSETS`.
pub(super) struct Kernel {
    pub(super) btf: Btf,
    pub(super) aya_btf: AyaBtf,
    /// Classic tracepoints are usable (tracefs mounted) but for those whose record offsets
    /// could not be read, or why none is.
    pub(super) classic: Result<Unreadable, NoClassic>,
    pub(super) tracepoints: TracepointMode,
}

/// Why no classic tracepoint may be attached.
#[derive(Debug, Error)]
pub(super) enum NoClassic {
    #[error("not allowed by --tracepoints btf")]
    NotAllowed,
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
}

/// Why one way of attaching a hook family failed: the first of its programs that did not
/// load or attach, and what the kernel said (first line only: a verifier log goes to the
/// debug log).
#[derive(Debug, Error)]
enum WayError {
    #[error(transparent)]
    Program(#[from] ProgramFailure),
    /// Neither `tp_btf` nor the classic tracepoint: why, for each that was tried.
    #[error("tracepoint {target} (Linux {since} or newer): {}", tried.join(", "))]
    Tracepoint {
        target: String,
        since: &'static str,
        tried: Vec<String>,
    },
    #[error(
        "{program_type} {function}: {} (needs BPF trampolines: Linux 5.5 or newer with BTF, on \
         x86_64 or arm64, and a kernel that allows them)",
        short(&source.to_string())
    )]
    Trampoline {
        program_type: &'static str,
        function: &'static str,
        source: ProgramFailure,
    },
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("fexit {function}: unexpected signature ({params} parameters)")]
    Signature {
        function: &'static str,
        params: usize,
    },
    #[error(
        "{program_type} {function}: the kernel refused the program: {}",
        short(&source.to_string())
    )]
    KprobeLoad {
        program_type: &'static str,
        function: &'static str,
        source: ProgramFailure,
    },
    #[error(
        "{program_type} {function}: {} (needs a kernel built with CONFIG_KPROBES)",
        short(&source.to_string())
    )]
    KprobeAttach {
        program_type: &'static str,
        function: &'static str,
        source: ProgramFailure,
    },
}

/// Attaches `family` by the first of its ways that works entirely.
pub(super) fn attach_family(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    family: &Family,
    choice: &StrategyChoice,
) -> Result<FamilyAttach, LoadError> {
    let (ways, forced) = choice.ways(family);
    let mut reasons = Vec::new();
    for way in ways {
        match attach_way(ebpf, kernel, &way) {
            Ok(programs) => {
                return Ok(FamilyAttach {
                    family: family.name,
                    strategy: way.strategy,
                    programs,
                });
            }
            Err(reason) => {
                // Once: the text may log a verifier log (see `short`).
                let reason = reason.to_string();
                debug!(
                    family = family.name,
                    strategy = way.strategy.as_str(),
                    "{reason}"
                );
                reasons.push(format!("{}: {reason}", way.strategy.as_str()));
            }
        }
    }
    if forced {
        reasons.push(format!("asked for by --probe-strategy {choice}"));
    }
    Err(LoadError::Attach {
        family: family.name,
        reasons: reasons.join("; "),
    })
}

/// Attaches every program of `way`, or none: on a failure the ones already attached are
/// unloaded, which detaches them.
fn attach_way(ebpf: &mut Ebpf, kernel: &Kernel, way: &Way) -> Result<Vec<Attached>, WayError> {
    let mut done: Vec<(&'static str, Attached)> = Vec::new();
    for attach in way.attach {
        match attach_one(ebpf, kernel, attach) {
            Ok(attached) => done.push(attached),
            Err(reason) => {
                for (program, _) in &done {
                    if let Some(program) = ebpf.program_mut(program) {
                        let _ = unload(program);
                    }
                }
                return Err(reason);
            }
        }
    }
    Ok(done.into_iter().map(|(_, attached)| attached).collect())
}

fn unload(program: &mut Program) -> Result<(), ProgramError> {
    match program {
        Program::BtfTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        _ => Ok(()),
    }
}

/// Attaches one program; returns its name (to undo it) and what was attached.
fn attach_one(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    attach: &Attach,
) -> Result<(&'static str, Attached), WayError> {
    let attached = |program_type, target: &str| Attached {
        program_type,
        target: target.to_owned(),
    };
    match *attach {
        Attach::Tracepoint {
            category,
            name,
            since,
            btf_program,
            tracepoint_program,
        } => attach_tracepoint(
            ebpf,
            kernel,
            (category, name, since),
            Ok(btf_program),
            tracepoint_program,
        ),
        Attach::TracepointArgs {
            category,
            name,
            since,
            btf_programs,
            tracepoint_program,
        } => {
            let btf_program = kernel
                .btf
                .tracepoint_args(name)
                .map_err(|err| err.to_string())
                .and_then(|args| {
                    btf_programs
                        .iter()
                        .find(|&&(count, _)| count == args)
                        .map(|&(_, program)| program)
                        .ok_or_else(|| format!("unexpected prototype ({args} arguments)"))
                });
            attach_tracepoint(
                ebpf,
                kernel,
                (category, name, since),
                btf_program,
                Some(tracepoint_program),
            )
        }
        Attach::Classic {
            category,
            name,
            since,
            program,
        } => attach_tracepoint(
            ebpf,
            kernel,
            (category, name, since),
            Err("system call tracepoints have no raw tracepoint".to_owned()),
            Some(program),
        ),
        Attach::FEntry {
            function,
            program: name,
        } => {
            let result = program_mut::<FEntry>(ebpf, name).and_then(|program| {
                program.load(function, &kernel.aya_btf)?;
                Ok(program.attach()?)
            });
            result
                .map(|_| (name, attached("fentry", function)))
                .map_err(|source| WayError::Trampoline {
                    program_type: "fentry",
                    function,
                    source,
                })
        }
        Attach::FExit { function, programs } => {
            let params = kernel.btf.func_params(function)?;
            let &(_, name) = programs
                .iter()
                .find(|(count, _)| *count == params.len())
                .ok_or(WayError::Signature {
                    function,
                    params: params.len(),
                })?;
            let result = program_mut::<FExit>(ebpf, name).and_then(|program| {
                program.load(function, &kernel.aya_btf)?;
                Ok(program.attach()?)
            });
            result
                .map(|_| (name, attached("fexit", function)))
                .map_err(|source| WayError::Trampoline {
                    program_type: "fexit",
                    function,
                    source,
                })
        }
        Attach::KProbe {
            function,
            program: name,
        }
        | Attach::KRetProbe {
            function,
            program: name,
        } => {
            let program_type = attach.program_type();
            let program = program_mut::<KProbe>(ebpf, name)?;
            program.load().map_err(|err| WayError::KprobeLoad {
                program_type,
                function,
                source: err.into(),
            })?;
            program
                .attach(function, 0)
                .map(|_| (name, attached(program_type, function)))
                .map_err(|err| WayError::KprobeAttach {
                    program_type,
                    function,
                    source: err.into(),
                })
        }
    }
}

/// A tracepoint: the `tp_btf` program (or why there is none for this kernel), else the
/// classic one (`None` where the classic record lacks what the program needs).
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    (category, name, since): (&'static str, &'static str, &'static str),
    btf_program: Result<&'static str, String>,
    tracepoint_program: Option<&'static str>,
) -> Result<(&'static str, Attached), WayError> {
    let target = format!("{category}:{name}");
    let attached = |program_type| Attached {
        program_type,
        target: target.clone(),
    };
    let mut reasons = Vec::new();
    if kernel.tracepoints != TracepointMode::Classic {
        match btf_program.and_then(|program| {
            attach_btf(ebpf, &kernel.aya_btf, program, name)
                .map(|()| program)
                .map_err(|err| err.to_string())
        }) {
            Ok(program) => return Ok((program, attached("tp_btf"))),
            Err(err) => reasons.push(format!("tp_btf: {}", short(&err))),
        }
    }
    if kernel.tracepoints != TracepointMode::Btf {
        let classic = match (&kernel.classic, tracepoint_program) {
            (_, None) => Err("the record does not name the socket".to_owned()),
            (Err(why), _) => Err(why.to_string()),
            (Ok(unreadable), Some(program)) => match unreadable.get(&target) {
                Some(why) => Err(why.clone()),
                None => attach_classic(ebpf, program, category, name)
                    .map(|()| program)
                    .map_err(|err| err.to_string()),
            },
        };
        match classic {
            Ok(program) => return Ok((program, attached("tracepoint"))),
            Err(err) => reasons.push(format!("classic: {}", short(&err))),
        }
    }
    Err(WayError::Tracepoint {
        target,
        since,
        tried: reasons,
    })
}

fn attach_btf(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    name: &str,
    tracepoint: &str,
) -> Result<(), ProgramFailure> {
    let program: &mut BtfTracePoint = program_mut(ebpf, name)?;
    program.load(tracepoint, btf)?;
    program.attach()?;
    Ok(())
}

fn attach_classic(
    ebpf: &mut Ebpf,
    name: &str,
    category: &str,
    tracepoint: &str,
) -> Result<(), ProgramFailure> {
    let program: &mut TracePoint = program_mut(ebpf, name)?;
    program.load()?;
    program.attach(category, tracepoint)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `--check` and a failed start-up print for each way that did not work.
    #[test]
    fn reasons_name_what_was_tried_and_what_is_needed() {
        let missing = || ProgramFailure::Missing("p".to_owned());
        for (err, expected) in [
            (
                WayError::Trampoline {
                    program_type: "fentry",
                    function: "tcp_connect",
                    source: missing(),
                },
                "fentry tcp_connect: program p missing from the object (needs BPF trampolines: \
                 Linux 5.5 or newer with BTF, on x86_64 or arm64, and a kernel that allows them)",
            ),
            (
                WayError::Signature {
                    function: "tcp_recvmsg",
                    params: 7,
                },
                "fexit tcp_recvmsg: unexpected signature (7 parameters)",
            ),
            (
                WayError::KprobeLoad {
                    program_type: "kprobe",
                    function: "tcp_close",
                    source: missing(),
                },
                "kprobe tcp_close: the kernel refused the program: program p missing from the \
                 object",
            ),
            (
                WayError::KprobeAttach {
                    program_type: "kretprobe",
                    function: "tcp_sendmsg",
                    source: missing(),
                },
                "kretprobe tcp_sendmsg: program p missing from the object (needs a kernel built \
                 with CONFIG_KPROBES)",
            ),
            (
                WayError::Tracepoint {
                    target: "sock:sock_send_length".to_owned(),
                    since: "6.3",
                    tried: vec!["tp_btf: a".to_owned(), "classic: b".to_owned()],
                },
                "tracepoint sock:sock_send_length (Linux 6.3 or newer): tp_btf: a, classic: b",
            ),
            (
                WayError::Tracepoint {
                    target: "tcp:tcp_send_reset".to_owned(),
                    since: "4.15",
                    tried: vec![format!("classic: {}", NoClassic::NotAllowed)],
                },
                "tracepoint tcp:tcp_send_reset (Linux 4.15 or newer): classic: not allowed by \
                 --tracepoints btf",
            ),
        ] {
            assert_eq!(err.to_string(), expected);
        }
    }
}
