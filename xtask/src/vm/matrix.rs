//! What runs in each guest and how the results read: kernel × family × strategy.
//!
//! When the daemon has `--probe-strategy` and `--check`, each strategy is forced in turn:
//! `tcpobs --probe-strategy S --check` prints one `family=F strategy=T` line per hook family
//! it attached and exits 0 when every family attached (1 when the kernel lacks a feature,
//! naming it). A family reported with T = S passes, one reported with another strategy has
//! no S variant (shown as `via T`); after exit 1, a family the error names is unsupported and
//! the others were not checked (`-`: the check stops at the first family that cannot
//! attach); any other exit (a crash, a timeout) fails. The chosen modules of the integration
//! test binary then run, one step each, with `TCPOBS_PROBE_STRATEGY=S`, only for strategies
//! whose check passed.
//!
//! Until the daemon has those flags, each module runs once per kernel with the daemon's own
//! choice (`auto`).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use super::guest::{Outcome, Status, Step};

/// The strategies the daemon can be forced to, in `auto`'s order.
pub const STRATEGIES: [&str; 3] = ["fentry", "tracepoint", "kprobe"];

/// How the daemon's hooks are chosen in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Force each of these in turn, checked first.
    Forced(Vec<String>),
    /// The daemon has no `--probe-strategy` yet: one run with its own choice.
    Auto,
}

impl Mode {
    fn columns(&self) -> Vec<String> {
        match self {
            Self::Forced(strategies) => strategies.clone(),
            Self::Auto => vec!["auto".to_owned()],
        }
    }
}

/// A module of the integration test binary (built on the host), run by the guest as one step.
#[derive(Clone, Debug)]
pub struct TestModule {
    /// The module (`lifecycle`): its tests are named `lifecycle::...`.
    pub name: String,
    /// The integration test binary.
    pub binary: PathBuf,
    /// Where cargo would run it (its package's directory).
    pub dir: PathBuf,
    /// The binary's other modules, whose tests the step skips (`--skip netns::`). Naming this
    /// module as a filter instead would undo a filter given after `--`: libtest runs a test
    /// that matches any one of its filters.
    pub others: Vec<String>,
}

impl TestModule {
    /// The command that runs this module's tests, one at a time, with `args` (the filters and
    /// options given after `--`) applied.
    fn command(&self, args: &[String]) -> Vec<String> {
        let mut command = vec![self.binary.display().to_string(), "--test-threads=1".into()];
        for other in &self.others {
            command.push("--skip".into());
            command.push(format!("{other}::"));
        }
        command.extend(args.iter().cloned());
        command
    }
}

/// The guest's steps: per strategy, the check and then every test module.
pub fn steps(
    mode: &Mode,
    tcpobs: &Path,
    tests: &[TestModule],
    args: &[String],
    timeout: Duration,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for column in mode.columns() {
        let (requires, env) = match mode {
            Mode::Forced(_) => {
                let check = format!("check.{column}");
                steps.push(Step {
                    name: check.clone(),
                    requires: None,
                    env: vec![],
                    dir: "/".into(),
                    command: vec![
                        tcpobs.display().to_string(),
                        "--probe-strategy".into(),
                        column.clone(),
                        "--check".into(),
                    ],
                    timeout: Duration::from_secs(120).min(timeout),
                });
                let env = vec![("TCPOBS_PROBE_STRATEGY".to_owned(), column.clone())];
                (Some(check), env)
            }
            Mode::Auto => (None, vec![]),
        };
        for test in tests {
            steps.push(Step {
                name: format!("test.{}.{column}", test.name),
                requires: requires.clone(),
                env: env.clone(),
                dir: test.dir.clone(),
                command: test.command(args),
                timeout,
            });
        }
    }
    steps
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Unsupported,
    /// The check stopped before it reached this family.
    Unchecked,
    /// The family has no variant for the forced strategy and used this one.
    Via(String),
    TimedOut,
    NotRun,
}

#[derive(Clone, Debug)]
pub struct Cell {
    pub verdict: Verdict,
    /// Counts and time, e.g. `11/12, 58 s`.
    pub detail: String,
}

impl Cell {
    fn new(verdict: Verdict) -> Self {
        Self {
            verdict,
            detail: String::new(),
        }
    }

    pub fn text(&self) -> String {
        let verdict = match &self.verdict {
            Verdict::Pass => "pass".to_owned(),
            Verdict::Fail => "FAIL".to_owned(),
            Verdict::Unsupported => "unsupported".to_owned(),
            Verdict::Unchecked => "-".to_owned(),
            Verdict::Via(other) => format!("via {other}"),
            Verdict::TimedOut => "TIMEOUT".to_owned(),
            Verdict::NotRun => "not run".to_owned(),
        };
        if self.detail.is_empty() {
            verdict
        } else {
            format!("{verdict} ({})", self.detail)
        }
    }
}

/// One kernel's block of the matrix.
#[derive(Clone, Debug)]
pub struct Table {
    pub columns: Vec<String>,
    /// `family <name>`, `check`, `test <name>`, each with one cell per column.
    pub rows: Vec<(String, Vec<Cell>)>,
    /// Why things failed or were unsupported, with where to read more.
    pub notes: Vec<String>,
    /// Each failing test module's panic output (`[column] test`, excerpt), printed whole
    /// after the table so a CI log alone explains a failure.
    pub failures: Vec<(String, String)>,
}

impl Table {
    pub fn failed(&self) -> bool {
        self.rows.iter().flat_map(|(_, cells)| cells).any(|cell| {
            matches!(
                cell.verdict,
                Verdict::Fail | Verdict::TimedOut | Verdict::NotRun
            )
        })
    }

    pub fn render(&self) -> String {
        let label_width = self
            .rows
            .iter()
            .map(|(label, _)| label.len())
            .max()
            .unwrap_or(0);
        let texts: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|(_, cells)| cells.iter().map(Cell::text).collect())
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                texts
                    .iter()
                    .map(|row| row[i].len())
                    .chain([self.columns[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!("  {:label_width$}", "");
        for (column, width) in self.columns.iter().zip(&widths) {
            let _ = write!(out, "  {column:width$}");
        }
        out = out.trim_end().to_owned() + "\n";
        for ((label, _), row) in self.rows.iter().zip(&texts) {
            let mut line = format!("  {label:label_width$}");
            for (text, width) in row.iter().zip(&widths) {
                let _ = write!(line, "  {text:width$}");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        for note in &self.notes {
            out.push_str("  - ");
            out.push_str(&note.replace('\n', "\n    "));
            out.push('\n');
        }
        out
    }
}

/// Reads the steps' outcomes (in the order [`steps`] made them) into the kernel's table.
pub fn table(mode: &Mode, tests: &[TestModule], outcomes: &[Outcome]) -> Table {
    let columns = mode.columns();
    let mut outcomes = outcomes.iter();
    let mut checks = Vec::new();
    let mut test_cells: Vec<Vec<Cell>> = vec![Vec::new(); tests.len()];
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    for column in &columns {
        if matches!(mode, Mode::Forced(_)) {
            let Some(check) = outcomes.next() else { break };
            let log = fs::read_to_string(&check.log).unwrap_or_default();
            if check.status != Status::Exited(0) && check.status != Status::NotRun {
                notes.push(format!(
                    "{column}: the check says: {}\n(log: {})",
                    last_lines(&log, 3),
                    check.log.display()
                ));
            }
            checks.push((check.status, families(&log), blamed(&log)));
        }
        for (test, cells) in tests.iter().zip(&mut test_cells) {
            let Some(outcome) = outcomes.next() else {
                break;
            };
            let log = fs::read_to_string(&outcome.log).unwrap_or_default();
            let cell = test_cell(outcome, &log);
            if matches!(cell.verdict, Verdict::Fail | Verdict::TimedOut) {
                notes.push(format!(
                    "{} [{column}]: {}\n(log: {})",
                    test.name,
                    failure_summary(&log),
                    outcome.log.display()
                ));
                failures.push((format!("{} [{column}]", test.name), panic_output(&log)));
            }
            cells.push(cell);
        }
    }
    let mut rows = Vec::new();
    if !checks.is_empty() {
        rows.push((
            "check".to_owned(),
            checks
                .iter()
                .map(|(status, ..)| Cell::new(check_verdict(*status)))
                .collect(),
        ));
        let mut names: Vec<&str> = Vec::new();
        for (_, families, _) in &checks {
            for (family, _) in families {
                if !names.contains(&family.as_str()) {
                    names.push(family);
                }
            }
        }
        for name in names {
            let cells = columns
                .iter()
                .zip(&checks)
                .map(|(column, (status, families, blamed))| {
                    let blamed = blamed.iter().any(|word| word == name);
                    Cell::new(family_verdict(column, *status, families, name, blamed))
                })
                .collect();
            rows.push((format!("family {name}"), cells));
        }
    }
    for (test, cells) in tests.iter().zip(test_cells) {
        rows.push((format!("test {}", test.name), cells));
    }
    Table {
        columns,
        rows,
        notes,
        failures,
    }
}

fn check_verdict(status: Status) -> Verdict {
    match status {
        Status::Exited(0) => Verdict::Pass,
        Status::Exited(1) => Verdict::Unsupported,
        Status::TimedOut => Verdict::TimedOut,
        Status::NotRun | Status::Skipped => Verdict::NotRun,
        Status::Exited(_) => Verdict::Fail,
    }
}

fn family_verdict(
    strategy: &str,
    status: Status,
    families: &[(String, String)],
    name: &str,
    blamed: bool,
) -> Verdict {
    let reported = families
        .iter()
        .rev()
        .find(|(family, _)| family == name)
        .map(|(_, chosen)| chosen);
    match (check_verdict(status), reported) {
        // An optional family the kernel cannot attach (`strategy=none`, with why).
        (Verdict::Pass | Verdict::Unsupported, Some(chosen)) if chosen == "none" => {
            Verdict::Unsupported
        }
        (Verdict::Pass | Verdict::Unsupported, Some(chosen)) if chosen == strategy => Verdict::Pass,
        (Verdict::Pass | Verdict::Unsupported, Some(chosen)) => Verdict::Via(chosen.clone()),
        (Verdict::Unsupported, None) if blamed => Verdict::Unsupported,
        (Verdict::Unsupported, None) => Verdict::Unchecked,
        // Every family attached, yet this one was not reported.
        (Verdict::Pass, None) => Verdict::Fail,
        (other, _) => other,
    }
}

/// The words of the check's error lines, to see which families it names.
fn blamed(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("error") && !line.contains("family="))
        .flat_map(|line| line.split(|c: char| !c.is_alphanumeric() && c != '_'))
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `family=F strategy=S` pairs from the check's output, in order.
fn families(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|line| {
            let value = |key: &str| {
                line.split_whitespace()
                    .find_map(|token| token.strip_prefix(key))
                    .map(|value| value.trim_matches(['"', ',']).to_owned())
            };
            Some((value("family=")?, value("strategy=")?))
        })
        .collect()
}

fn test_cell(outcome: &Outcome, log: &str) -> Cell {
    let verdict = match outcome.status {
        Status::Exited(0) => Verdict::Pass,
        Status::Exited(_) => Verdict::Fail,
        Status::TimedOut => Verdict::TimedOut,
        Status::Skipped => return Cell::new(Verdict::Unsupported),
        Status::NotRun => return Cell::new(Verdict::NotRun),
    };
    let mut detail = String::new();
    if let Some((passed, failed)) = test_counts(log) {
        let _ = write!(detail, "{passed}/{}, ", passed + failed);
    }
    let _ = write!(detail, "{:.0} s", outcome.seconds);
    Cell { verdict, detail }
}

/// Passed and failed counts from libtest's `test result:` lines.
fn test_counts(log: &str) -> Option<(u32, u32)> {
    let mut totals = None;
    for line in log.lines() {
        let Some(result) = line.strip_prefix("test result: ") else {
            continue;
        };
        let count = |what: &str| {
            result
                .split([';', '.'])
                .find_map(|part| part.trim().strip_suffix(what)?.trim().parse::<u32>().ok())
                .unwrap_or(0)
        };
        let (passed, failed) = totals.unwrap_or((0, 0));
        totals = Some((passed + count(" passed"), failed + count(" failed")));
    }
    totals
}

/// The failing tests and the first panic message, from a test step's output.
fn failure_summary(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let failing: Vec<&str> = lines
        .iter()
        .rposition(|line| *line == "failures:")
        .map(|start| {
            lines[start + 1..]
                .iter()
                .take_while(|line| line.starts_with("    "))
                .map(|line| line.trim())
                .collect()
        })
        .unwrap_or_default();
    let panic = lines
        .iter()
        .position(|line| line.contains("panicked at"))
        .and_then(|at| {
            let place = lines[at]
                .split("panicked at ")
                .nth(1)?
                .trim_end_matches(':');
            let mut panic = format!("{place}: {}", shorten(lines.get(at + 1)?, 300));
            // assert_eq! puts the compared values after its (maybe long) message.
            let sides = lines[at + 1..]
                .iter()
                .take_while(|line| !line.starts_with("note: ") && !line.starts_with("---- "))
                .filter(|line| line.starts_with("  left: ") || line.starts_with(" right: "));
            for side in sides {
                let _ = write!(panic, "\n  {}", shorten(side.trim(), 200));
            }
            Some(panic)
        });
    let mut summary = match failing.len() {
        0 => "no test result (see the log)".to_owned(),
        n => format!("{n} failed: {}", shorten(&failing.join(", "), 300)),
    };
    if let Some(panic) = panic {
        let _ = write!(summary, "\nfirst panic: {panic}");
    }
    summary
}

/// The most lines of a failing test step's output the report repeats.
const PANIC_OUTPUT_LINES: usize = 150;

/// The failing tests' own output (libtest's `---- name stdout ----` sections), or the log's
/// tail when there are none (a crash, a timeout), capped at [`PANIC_OUTPUT_LINES`].
fn panic_output(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let sections = lines
        .iter()
        .position(|line| line.starts_with("---- ") && line.ends_with(" ----"))
        .map(|start| {
            let end = lines[start..]
                .iter()
                .position(|line| *line == "failures:")
                .map_or(lines.len(), |at| start + at);
            &lines[start..end]
        });
    let excerpt = match sections {
        Some(section) => section,
        None => &lines[lines.len().saturating_sub(PANIC_OUTPUT_LINES)..],
    };
    let mut out = excerpt[..excerpt.len().min(PANIC_OUTPUT_LINES)].join("\n");
    if excerpt.len() > PANIC_OUTPUT_LINES {
        let _ = write!(
            out,
            "\n... {} more lines",
            excerpt.len() - PANIC_OUTPUT_LINES
        );
    }
    out
}

fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|line| !line.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    if tail.is_empty() {
        "(nothing)".to_owned()
    } else {
        shorten(&tail, 600)
    }
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
