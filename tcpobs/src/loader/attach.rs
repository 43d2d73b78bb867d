//! Step 3, attaching: each hook family by the first of its ways whose programs all load and
//! attach (a way is all or nothing), and within the tracepoint strategy `tp_btf` before the
//! classic tracepoint.

use aya::{
    Btf as AyaBtf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, TracePoint},
};
use tracing::debug;

use super::{
    LoadError, Strategy, StrategyChoice, TracepointMode,
    error::{error_chain, short},
    families::{Attach, Family, Way},
    prepare::Unreadable,
};
use crate::btf::Btf;

/// One attached program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// `tp_btf`, `tracepoint` (classic), `fentry`, `fexit`, `kprobe` or `kretprobe`.
    pub program_type: &'static str,
    /// The tracepoint (`sock:inet_sock_set_state`) or kernel function.
    pub target: String,
}

/// How one hook family is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyAttach {
    pub family: &'static str,
    pub strategy: Strategy,
    /// Empty for the connect family under the tracepoint strategy, which the state hook
    /// covers.
    pub programs: Vec<Attached>,
}

impl FamilyAttach {
    /// The distinct program types, joined with `+` (`kprobe+kretprobe`); `state` for a
    /// family served by the state hook, `none` for a phase family with no library attached.
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

/// Layout and signature facts the attach step needs besides `OFFSETS`.
pub(super) struct Kernel {
    pub(super) btf: Btf,
    pub(super) aya_btf: AyaBtf,
    /// Classic tracepoints are usable (tracefs mounted) but for those whose record offsets
    /// could not be read, or why none is.
    pub(super) classic: Result<Unreadable, String>,
    pub(super) tracepoints: TracepointMode,
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
fn attach_way(ebpf: &mut Ebpf, kernel: &Kernel, way: &Way) -> Result<Vec<Attached>, String> {
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

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|err: ProgramError| error_chain(&err))
}

/// Attaches one program; returns its name (to undo it) and what was attached.
fn attach_one(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    attach: &Attach,
) -> Result<(&'static str, Attached), String> {
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
        } => {
            let target = format!("{category}:{name}");
            let mut reasons = Vec::new();
            if kernel.tracepoints != TracepointMode::Classic {
                match attach_btf(ebpf, &kernel.aya_btf, btf_program, name) {
                    Ok(()) => return Ok((btf_program, attached("tp_btf", &target))),
                    Err(err) => reasons.push(format!("tp_btf: {}", short(&err))),
                }
            }
            if kernel.tracepoints != TracepointMode::Btf {
                let classic = match (&kernel.classic, tracepoint_program) {
                    (_, None) => Err("the record does not name the socket".to_owned()),
                    (Err(why), _) => Err(why.clone()),
                    (Ok(unreadable), Some(program)) => match unreadable.get(&target) {
                        Some(why) => Err(why.clone()),
                        None => attach_classic(ebpf, program, category, name).map(|()| program),
                    },
                };
                match classic {
                    Ok(program) => return Ok((program, attached("tracepoint", &target))),
                    Err(err) => reasons.push(format!("classic: {}", short(&err))),
                }
            }
            Err(format!(
                "tracepoint {target} (Linux {since} or newer): {}",
                reasons.join(", ")
            ))
        }
        Attach::FEntry {
            function,
            program: name,
        } => {
            let result = program::<FEntry>(ebpf, name).and_then(|program| {
                program
                    .load(function, &kernel.aya_btf)
                    .map_err(|err| error_chain(&err))?;
                program.attach().map_err(|err| error_chain(&err))
            });
            result
                .map(|_| (name, attached("fentry", function)))
                .map_err(|err| trampoline_reason("fentry", function, &err))
        }
        Attach::FExit { function, programs } => {
            let params = kernel
                .btf
                .func_params(function)
                .map_err(|err| err.to_string())?;
            let &(_, name) = programs
                .iter()
                .find(|(count, _)| *count == params.len())
                .ok_or_else(|| {
                    format!(
                        "fexit {function}: unexpected signature ({} parameters)",
                        params.len()
                    )
                })?;
            let result = program::<FExit>(ebpf, name).and_then(|program| {
                program
                    .load(function, &kernel.aya_btf)
                    .map_err(|err| error_chain(&err))?;
                program.attach().map_err(|err| error_chain(&err))
            });
            result
                .map(|_| (name, attached("fexit", function)))
                .map_err(|err| trampoline_reason("fexit", function, &err))
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
            let program = program::<KProbe>(ebpf, name)?;
            program.load().map_err(|err| {
                format!(
                    "{program_type} {function}: the kernel refused the program: {}",
                    short(&error_chain(&err))
                )
            })?;
            program
                .attach(function, 0)
                .map(|_| (name, attached(program_type, function)))
                .map_err(|err| {
                    format!(
                        "{program_type} {function}: {} (needs a kernel built with CONFIG_KPROBES)",
                        short(&error_chain(&err))
                    )
                })
        }
    }
}

fn trampoline_reason(program_type: &str, function: &str, err: &str) -> String {
    format!(
        "{program_type} {function}: {} (needs BPF trampolines: Linux 5.5 or newer with BTF, on \
         x86_64 or arm64, and a kernel that allows them)",
        short(err)
    )
}

fn attach_btf(ebpf: &mut Ebpf, btf: &AyaBtf, name: &str, tracepoint: &str) -> Result<(), String> {
    let program: &mut BtfTracePoint = program(ebpf, name)?;
    program
        .load(tracepoint, btf)
        .map_err(|err| error_chain(&err))?;
    program.attach().map_err(|err| error_chain(&err))?;
    Ok(())
}

fn attach_classic(
    ebpf: &mut Ebpf,
    name: &str,
    category: &str,
    tracepoint: &str,
) -> Result<(), String> {
    let program: &mut TracePoint = program(ebpf, name)?;
    program.load().map_err(|err| error_chain(&err))?;
    program
        .attach(category, tracepoint)
        .map_err(|err| error_chain(&err))?;
    Ok(())
}
