//! One boot of a kernel under QEMU (software emulation): the guest runs a list of steps (a
//! command each, with its environment and time limit) on the host's root filesystem and
//! writes each step's output and exit status to a shared results directory.
//!
//! The guest script is bash from the host's root; the host watches the results directory
//! to report progress, boot time and timeouts, and kills QEMU if the guest overruns.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{initramfs::GUEST_DIR, kernel::Prepared};

/// The virtual machine's size and patience.
#[derive(Clone, Debug)]
pub struct Machine {
    pub memory_mib: u32,
    pub cpus: u32,
    /// From starting QEMU to the guest script running.
    pub boot_timeout: Duration,
}

/// A command to run in the guest.
#[derive(Clone, Debug)]
pub struct Step {
    /// Unique within a boot; names its files in the results directory.
    pub name: String,
    /// Run only if this earlier step exited 0.
    pub requires: Option<String>,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    /// The step's time limit passed; the guest killed it.
    TimedOut,
    /// The step it requires did not succeed.
    Skipped,
    /// The guest stopped (or was stopped) before the step ended.
    NotRun,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: Status,
    pub seconds: f64,
    /// Its output (stdout and stderr).
    pub log: PathBuf,
}

/// How the boot ended once the guest was up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every step ran and the guest powered off.
    PoweredOff,
    /// The whole run overran its budget and QEMU was killed.
    TimedOut,
    /// QEMU exited before the steps were done (a kernel panic, say).
    Crashed,
}

#[derive(Clone, Debug)]
pub struct Boot {
    pub boot_seconds: f64,
    pub total_seconds: f64,
    pub ending: Ending,
    pub outcomes: Vec<Outcome>,
    pub console: PathBuf,
}

const POLL: Duration = Duration::from_millis(250);

/// Boots `kernel`, runs `steps` and brings their results back; progress lines start with
/// `label`. `follow` echoes the steps' output as it is written. An error means the guest
/// never came up.
pub fn run(
    label: &str,
    kernel: &Prepared,
    machine: &Machine,
    results: &Path,
    steps: &[Step],
    follow: bool,
) -> Result<Boot> {
    if results.exists() {
        fs::remove_dir_all(results).with_context(|| format!("clearing {}", results.display()))?;
    }
    fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
    fs::write(results.join("guest.sh"), script(kernel, steps))
        .context("writing the guest script")?;
    let console = results.join("console.log");
    let started = Instant::now();
    let mut qemu = qemu(kernel, machine, results, &console)?;
    let budget: Duration = steps
        .iter()
        .map(|step| step.timeout + Duration::from_secs(15))
        .sum::<Duration>()
        + Duration::from_secs(60);
    let mut booted: Option<Instant> = None;
    let mut reported = 0;
    let mut echo = Echo::default();
    let ending = loop {
        let exited = qemu.try_wait().context("waiting for QEMU")?.is_some();
        if booted.is_none() && results.join("booted").exists() {
            booted = Some(Instant::now());
        }
        if follow {
            echo.more(results, steps);
        }
        while reported < steps.len() {
            let Some(outcome) = outcome(results, &steps[reported]) else {
                break;
            };
            progress(label, &steps[reported], &outcome);
            reported += 1;
        }
        if exited {
            break if reported == steps.len() {
                Ending::PoweredOff
            } else {
                Ending::Crashed
            };
        }
        match booted {
            None if started.elapsed() > machine.boot_timeout => {
                stop(&mut qemu);
                bail!(
                    "the guest did not boot within {} s{}",
                    machine.boot_timeout.as_secs(),
                    console_tail(&console)
                );
            }
            Some(at) if at.elapsed() > budget => {
                stop(&mut qemu);
                break Ending::TimedOut;
            }
            _ => thread::sleep(POLL),
        }
    };
    let Some(booted) = booted else {
        let qemu_said = fs::read_to_string(results.join("qemu.log")).unwrap_or_default();
        let qemu_said = match qemu_said.trim() {
            "" => String::new(),
            said => format!("; QEMU said: {said}"),
        };
        bail!(
            "the guest stopped before it booted{qemu_said}{}",
            console_tail(&console)
        );
    };
    let outcomes = steps
        .iter()
        .map(|step| {
            outcome(results, step).unwrap_or(Outcome {
                status: Status::NotRun,
                seconds: 0.0,
                log: log_path(results, step),
            })
        })
        .collect();
    Ok(Boot {
        boot_seconds: booted.duration_since(started).as_secs_f64(),
        total_seconds: started.elapsed().as_secs_f64(),
        ending,
        outcomes,
        console,
    })
}

fn qemu(kernel: &Prepared, machine: &Machine, results: &Path, console: &Path) -> Result<Child> {
    let share = |id: &str, path: &Path, extra: &str| {
        // QEMU option values escape commas by doubling them.
        let path = path.display().to_string().replace(',', ",,");
        format!("local,id={id},path={path},security_model=none{extra}")
    };
    let device = |id: &str| format!("virtio-9p-pci,fsdev={id},mount_tag={id}");
    let log = fs::File::create(results.join("qemu.log")).context("creating qemu.log")?;
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-no-reboot"])
        .args(["-smp", &machine.cpus.to_string()])
        .args(["-m", &format!("{}M", machine.memory_mib)])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&kernel.initramfs)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"])
        .args([
            "-fsdev",
            &share("hostroot", Path::new("/"), ",readonly=on,multidevs=remap"),
        ])
        .args(["-device", &device("hostroot")])
        .args(["-fsdev", &share("results", results, "")])
        .args(["-device", &device("results")])
        .args(["-device", "virtio-rng-pci"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("qemu.log")?)
        .stderr(log);
    command
        .spawn()
        .context("cannot start qemu-system-x86_64 (install qemu-system-x86: `cargo xtask setup`)")
}

fn stop(qemu: &mut Child) {
    let _ = qemu.kill();
    let _ = qemu.wait();
}

/// The end of the guest's console, introduced for an error message.
pub fn console_tail(console: &Path) -> String {
    let text = fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
    if tail.is_empty() {
        format!(" (no console output in {})", console.display())
    } else {
        format!("; the console ({}) ends with:\n{tail}", console.display())
    }
}

fn log_path(results: &Path, step: &Step) -> PathBuf {
    results.join(format!("{}.log", step.name))
}

/// The step's result, once the guest has written it.
fn outcome(results: &Path, step: &Step) -> Option<Outcome> {
    let text = fs::read_to_string(results.join(format!("{}.status", step.name))).ok()?;
    let log = log_path(results, step);
    if text.trim() == "skipped" {
        return Some(Outcome {
            status: Status::Skipped,
            seconds: 0.0,
            log,
        });
    }
    let mut fields = text.split_whitespace();
    let code: i32 = fields.next()?.parse().ok()?;
    let start: f64 = fields.next()?.parse().ok()?;
    let end: f64 = fields.next()?.parse().ok()?;
    // timeout(1): 124 when the limit passed, 137 when the process then had to be killed.
    let status = match code {
        124 | 137 => Status::TimedOut,
        code => Status::Exited(code),
    };
    Some(Outcome {
        status,
        seconds: end - start,
        log,
    })
}

fn progress(label: &str, step: &Step, outcome: &Outcome) {
    let what = match outcome.status {
        Status::Exited(0) => "ok".to_owned(),
        Status::Exited(code) => format!("exit {code}"),
        Status::TimedOut => format!("timed out after {} s", step.timeout.as_secs()),
        Status::Skipped => "skipped".to_owned(),
        Status::NotRun => "not run".to_owned(),
    };
    eprintln!("{label}: {} {what} ({:.1} s)", step.name, outcome.seconds);
}

/// Copies the steps' output to stdout as the guest writes it.
#[derive(Default)]
struct Echo {
    offsets: Vec<u64>,
}

impl Echo {
    fn more(&mut self, results: &Path, steps: &[Step]) {
        self.offsets.resize(steps.len(), 0);
        for (step, offset) in steps.iter().zip(&mut self.offsets) {
            let Ok(mut file) = fs::File::open(log_path(results, step)) else {
                continue;
            };
            let mut new = Vec::new();
            if file.seek(SeekFrom::Start(*offset)).is_ok() && file.read_to_end(&mut new).is_ok() {
                *offset += new.len() as u64;
                let _ = std::io::stdout().write_all(&new);
            }
        }
        let _ = std::io::stdout().flush();
    }
}

/// Single-quotes `word` for bash.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The guest script: mounts what tcpobs and its tests need, then runs the steps.
fn script(kernel: &Prepared, steps: &[Step]) -> String {
    let mut script = format!(
        r#"# Written by cargo xtask vm-test; run by the guest's init on the host's root filesystem.
set -u
out={GUEST_DIR}
mount -t tmpfs -o mode=1777 tmp /tmp
mkdir -p /dev/pts /dev/shm /sys/fs/bpf
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
# The kernel's own modules, for anything loaded on demand (veth, netem, ...).
mkdir -p /lib/modules/{release}
mount --bind {modules} /lib/modules/{release}
ip link set lo up
hostname tcpobs-vm
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8
echo "$(uname -r)" > "$out/.booted" && mv "$out/.booted" "$out/booted"
# step NAME REQUIRES LIMIT DIR COMMAND...: output to NAME.log, "status start end" to NAME.status
step() {{
    local name=$1 requires=$2 limit=$3 dir=$4 start code
    shift 4
    if [ -n "$requires" ] && [ "$(cut -d' ' -f1 "$out/$requires.status" 2>/dev/null)" != 0 ]; then
        echo skipped > "$out/.$name" && mv "$out/.$name" "$out/$name.status"
        return
    fi
    start=$EPOCHREALTIME
    (cd "$dir" && exec timeout -k 10 "$limit" "$@") > "$out/$name.log" 2>&1 < /dev/null
    code=$?
    echo "$code $start $EPOCHREALTIME" > "$out/.$name" && mv "$out/.$name" "$out/$name.status"
}}
"#,
        release = quote(&kernel.release),
        modules = quote(&kernel.modules.display().to_string()),
    );
    for step in steps {
        let mut line = format!(
            "step {} {} {} {}",
            quote(&step.name),
            quote(step.requires.as_deref().unwrap_or("")),
            step.timeout.as_secs(),
            quote(&step.dir.display().to_string())
        );
        if !step.env.is_empty() {
            line.push_str(" env");
            for (key, value) in &step.env {
                let _ = write!(line, " {}", quote(&format!("{key}={value}")));
            }
        }
        for word in &step.command {
            let _ = write!(line, " {}", quote(word));
        }
        script.push_str(&line);
        script.push('\n');
    }
    script.push_str("sync\necho o > /proc/sysrq-trigger\nsleep 60\n");
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_quoted_for_bash() {
        let kernel = Prepared {
            release: "6.1.0-56-amd64".into(),
            packages: vec![],
            vmlinuz: "/k".into(),
            modules: "/work/target/vm/kernel-6.1/root/lib/modules/6.1.0-56-amd64".into(),
            initramfs: "/i".into(),
        };
        let step = Step {
            name: "exec".into(),
            requires: Some("check.fentry".into()),
            env: vec![("TCPOBS_PROBE_STRATEGY".into(), "fentry".into())],
            dir: "/work".into(),
            command: vec!["bash".into(), "-c".into(), "echo 'it''s' $HOME".into()],
            timeout: Duration::from_secs(90),
        };
        let script = script(&kernel, &[step]);
        assert!(
            script.contains(
                "step 'exec' 'check.fentry' 90 '/work' env 'TCPOBS_PROBE_STRATEGY=fentry' \
                 'bash' '-c' 'echo '\\''it'\\'''\\''s'\\'' $HOME'\n"
            ),
            "{script}"
        );
        assert!(script.contains("mkdir -p /lib/modules/'6.1.0-56-amd64'\n"));
    }

    #[test]
    fn status_files_decode() {
        let dir = std::env::temp_dir().join(format!("xtask-vm-status-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let step = |name: &str| Step {
            name: name.into(),
            requires: None,
            env: vec![],
            dir: "/".into(),
            command: vec![],
            timeout: Duration::from_secs(1),
        };
        for (name, text) in [
            ("ok", "0 100.25 160.75\n"),
            ("late", "124 100 190\n"),
            ("skip", "skipped\n"),
            ("torn", "0 100"),
        ] {
            fs::write(dir.join(format!("{name}.status")), text).unwrap();
        }
        let ok = outcome(&dir, &step("ok")).unwrap();
        assert_eq!(ok.status, Status::Exited(0));
        assert!((ok.seconds - 60.5).abs() < 1e-9, "{}", ok.seconds);
        assert_eq!(
            outcome(&dir, &step("late")).unwrap().status,
            Status::TimedOut
        );
        assert_eq!(
            outcome(&dir, &step("skip")).unwrap().status,
            Status::Skipped
        );
        assert!(outcome(&dir, &step("torn")).is_none(), "half-written");
        assert!(outcome(&dir, &step("missing")).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
