//! The TOML config file (`--config`), merged below flags and environment variables.
//!
//! The file's keys are the long flag names (`ringbuf-bytes` or `ringbuf_bytes`); values are
//! strings, numbers, booleans, or arrays for repeatable flags. A key is used only when neither
//! its flag nor its environment variable was given, which is done by parsing once, asking clap
//! where each value came from, and parsing again with the file's values added as flags, so
//! that the same validation (and the same exit code 2) applies to all three sources.

use std::{collections::HashMap, ffi::OsString, fs, path::Path};

use clap::{ArgMatches, CommandFactory as _, error::ErrorKind, parser::ValueSource};
use toml::Value;

use super::Cli;

fn file_error(path: &Path, message: String) -> clap::Error {
    Cli::command().error(
        ErrorKind::ValueValidation,
        format!("invalid value for --config: {}: {message}", path.display()),
    )
}

/// A TOML scalar as a flag value (`None` for a table or an array).
fn flag_value(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Integer(n) => Some(n.to_string()),
        Value::Float(x) => Some(x.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Line (from 1) of the byte at `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The first line of a clap error, without its `error: ` prefix.
fn first_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// The file's settings as flags, for keys not given by flag or environment. Errors name the
/// file, the line and the key.
pub(super) fn file_args(path: &Path, matches: &ArgMatches) -> Result<Vec<OsString>, clap::Error> {
    let text = fs::read_to_string(path).map_err(|err| file_error(path, err.to_string()))?;
    let table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        let line = err
            .span()
            .map(|span| format!("line {}: ", line_of(&text, span.start)))
            .unwrap_or_default();
        file_error(path, format!("{line}{}", err.message()))
    })?;
    // Where each top-level key is, for the messages (the table above has no positions).
    let lines: HashMap<String, usize> = toml::de::DeTable::parse(&text)
        .map(|parsed| {
            parsed
                .get_ref()
                .keys()
                .map(|key| (key.get_ref().to_string(), line_of(&text, key.span().start)))
                .collect()
        })
        .unwrap_or_default();
    let at = |key: &str| {
        lines
            .get(key)
            .map(|line| format!("line {line}: "))
            .unwrap_or_default()
    };
    let command = Cli::command();
    let mut args = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| file_error(path, format!("{}unknown setting `{key}`", at(key))))?;
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let values = match value {
            Value::Array(items) => items.iter().map(flag_value).collect::<Option<Vec<_>>>(),
            scalar => flag_value(scalar).map(|value| vec![value]),
        }
        .ok_or_else(|| {
            file_error(
                path,
                format!("{}`{key}` must be a string, number or boolean", at(key)),
            )
        })?;
        let key_args: Vec<OsString> = values
            .into_iter()
            .map(|value| OsString::from(format!("--{long}={value}")))
            .collect();
        // Checked alone, so that a value of the wrong type or out of range names its key and
        // line. (Flags and environment variables were checked before the file was read.)
        Cli::command()
            .try_get_matches_from(std::iter::once(OsString::from("tcpobs")).chain(key_args.clone()))
            .map_err(|err| file_error(path, format!("{}`{key}`: {}", at(key), first_line(&err))))?;
        args.extend(key_args);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Settings, Sources,
        live::{EventSelection, Filter},
    };

    fn with_file(content: &str, args: &[&str]) -> Result<Settings, clap::Error> {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "tcpobs-config-test-{}-{n}.toml",
            std::process::id()
        ));
        fs::write(&path, content).unwrap();
        let mut argv = vec![
            "tcpobs".to_owned(),
            "--config".to_owned(),
            path.display().to_string(),
        ];
        argv.extend(args.iter().map(|arg| (*arg).to_owned()));
        let result = Sources::new(argv).load();
        let _ = fs::remove_file(&path);
        result
    }

    #[test]
    fn the_file_fills_in_what_flags_leave_out() {
        let settings = with_file(
            "events = \"exchanges\"\nport = [80, 443]\nringbuf_bytes = 8192\nthreshold-idle = \"2m\"\nanomaly-resets = false\nphases = \"off\"\n",
            &[],
        )
        .unwrap();
        assert!(!settings.load.libcalls.enabled);
        assert_eq!(settings.live.events, EventSelection::Exchanges);
        assert_eq!(settings.live.filters.ports, Filter::Include(vec![80, 443]));
        assert_eq!(settings.load.ringbuf_bytes, 8192);
        assert_eq!(settings.live.thresholds.idle_s, 120.0);
        assert!(!settings.live.thresholds.resets);
    }

    #[test]
    fn flags_beat_the_file() {
        let settings = with_file(
            "events = \"exchanges\"\nport = [80]\n",
            &["--events", "none", "--port", "22"],
        )
        .unwrap();
        assert_eq!(settings.live.events, EventSelection::None);
        assert_eq!(settings.live.filters.ports, Filter::Include(vec![22]));
    }

    #[test]
    fn bad_files_name_the_setting() {
        for (content, needle) in [
            ("colour = \"red\"\n", "line 1: unknown setting `colour`"),
            ("events = \"loud\"\n", "--events"),
            ("ringbuf_bytes = 100\n", "--ringbuf-bytes"),
            ("phases = \"sometimes\"\n", "--phases"),
            ("port = { a = 1 }\n", "`port`"),
            ("not toml at all", "--config"),
        ] {
            let err = with_file(content, &[]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(needle), "{content}: {err}");
        }
        let err = Sources::new(["tcpobs", "--config", "/nonexistent/tcpobs.toml"])
            .load()
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/tcpobs.toml"),
            "{err}"
        );
    }

    #[test]
    fn file_errors_give_the_line_and_the_key() {
        for (content, needles) in [
            // Syntax: the line of the error.
            (
                "events = \"exchanges\"\n\nport = [80,\nringbuf_bytes = = 4\n",
                &["--config", "line 4"][..],
            ),
            ("# comment\nevents = \"exchanges\n", &["line 2"]),
            // A value of the wrong type or out of range: its key, its line, and the setting.
            (
                "events = \"exchanges\"\nringbuf_bytes = \"big\"\n",
                &["line 2: `ringbuf_bytes`", "--ringbuf-bytes", "big"],
            ),
            (
                "# tcpobs\n\nmax-sockets = true\n",
                &["line 3: `max-sockets`", "--max-sockets"],
            ),
            ("\nevents = 5\n", &["line 2: `events`", "--events"]),
            ("port = [80, \"http\"]\n", &["line 1: `port`", "http"]),
            ("\n\nport = { a = 1 }\n", &["line 3: `port` must be"]),
            (
                "events = \"none\"\n[output]\npath = \"x\"\n",
                &["line 2: `output`"],
            ),
        ] {
            let err = with_file(content, &[]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{content}");
            let message = err.to_string();
            for needle in needles {
                assert!(message.contains(needle), "{content:?}: {needle}: {message}");
            }
            assert!(
                message.contains("tcpobs-config-test"),
                "the file: {message}"
            );
        }
    }
}
