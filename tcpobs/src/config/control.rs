//! The live settings in force, and changing them: `PUT /config` and `SIGHUP`.
//!
//! A change is validated whole (including resolving cgroup paths) before anything is touched;
//! then the kernel filters are written, the log level set, and the daemon's loop is told
//! (event selection, sampling, thresholds) through a watch channel. Live connections are
//! never dropped by a change.

use std::{
    fmt::Display,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::watch;
use tracing::warn;
use tracing_subscriber::{EnvFilter, filter::ParseError};

use crate::{
    config::live::{LiveSettings, LogLevelError, SettingsError},
    kernel::{
        filters::{FilterError, KernelFilters, Resolved},
        folds::ExchangeSwitch,
        report::MapError,
    },
    sync::lock,
};

/// Sets the daemon's log level (a tracing filter); errors say why the level is invalid.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), LogLevelError> + Send + Sync>;

/// The daemon's log filter for a log level (`--log-level`, `PUT /config`).
///
/// Field values in the level (`tcpobs[{peer=...}]`) are literal text, not regular
/// expressions: tracing compiles each into a DFA, whose construction can take seconds for a
/// line of a hundred characters (found by the put_config fuzz target), and the level comes
/// from a request. Nothing in tcpobs logs fields worth a pattern.
pub fn log_filter(level: &str) -> Result<EnvFilter, ParseError> {
    EnvFilter::builder().with_regex(false).parse(level)
}

/// The levels a log level directive may end with.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a log level without applying it: a level, or comma-separated `TARGET=LEVEL`
/// directives (a tracing filter), each of which must name a level.
pub(crate) fn check_log_level(level: &str) -> Result<(), LogLevelError> {
    let names_a_level = |directive: &str| {
        // `TARGET[{FIELD=VALUE}]=LEVEL`: the level follows the last `=` after any span and
        // field part, whose values may hold `=` themselves.
        let level = match directive.rsplit_once(']') {
            Some((_, tail)) => tail.strip_prefix('=').unwrap_or(""),
            None => directive
                .rsplit_once('=')
                .map_or(directive, |(_, level)| level),
        };
        LEVELS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(level.trim()))
    };
    if level.trim().is_empty() {
        return Err(LogLevelError::NotALevel(level.to_owned()));
    }
    if let Some(bad) = level.split(',').find(|directive| !names_a_level(directive)) {
        return Err(LogLevelError::NotALevel(bad.to_owned()));
    }
    log_filter(level)?;
    Ok(())
}

/// Why a change of the live settings was refused; nothing of it was applied.
#[derive(Debug, Error)]
pub(crate) enum ControlError {
    #[error(transparent)]
    Invalid(#[from] SettingsError),
    /// A filter names a cgroup that is not one.
    #[error(transparent)]
    Filters(FilterError),
    /// The kernel's filter maps could not be written (the previous filters are put back).
    #[error("kernel filters: {0}")]
    KernelFilters(FilterError),
    /// The logger did not take the new level.
    #[error("log_level: {0}")]
    LogLevel(LogLevelError),
}

pub(crate) struct Control {
    live: Mutex<LiveSettings>,
    changes: watch::Sender<LiveSettings>,
    filters: Mutex<Option<KernelFilters>>,
    /// Whether the kernel sends every exchange follows the event selection at once (not when
    /// the daemon's loop gets to it), so that the exchanges after a change are all sent.
    exchange_events: Mutex<Option<ExchangeSwitch>>,
    set_log_level: LogLevelSetter,
    /// Settings that need a restart, shown by `GET /config`.
    statics: Value,
}

impl Control {
    pub(crate) fn new(
        live: LiveSettings,
        statics: Value,
        set_log_level: LogLevelSetter,
    ) -> (Arc<Self>, watch::Receiver<LiveSettings>) {
        let (changes, receiver) = watch::channel(live.clone());
        let control = Self {
            live: Mutex::new(live),
            changes,
            filters: Mutex::new(None),
            exchange_events: Mutex::new(None),
            set_log_level,
            statics,
        };
        (Arc::new(control), receiver)
    }

    pub(crate) fn live(&self) -> LiveSettings {
        lock(&self.live).clone()
    }

    /// Hands over the kernel filter maps (once the programs are loaded) and writes the
    /// filters in force now, which a `PUT /config` during loading may have changed.
    pub(crate) fn attach_filters(&self, mut filters: KernelFilters) -> Result<(), FilterError> {
        let live = lock(&self.live);
        filters.apply(&Resolved::new(&live.filters)?)?;
        *lock(&self.filters) = Some(filters);
        Ok(())
    }

    /// Hands over the switch of the kernel's exchange events (once the programs are loaded),
    /// and sets it for the event selection in force now.
    pub(crate) fn attach_exchange_switch(&self, switch: ExchangeSwitch) -> Result<(), MapError> {
        let live = lock(&self.live);
        switch.apply(live.events)?;
        *lock(&self.exchange_events) = Some(switch);
        Ok(())
    }

    /// Applies a JSON patch of runtime settings, made `by` someone (logged). On error nothing
    /// has changed.
    pub(crate) fn patch(
        &self,
        patch: &Value,
        by: &dyn Display,
    ) -> Result<LiveSettings, ControlError> {
        let mut live = lock(&self.live);
        let next = live.patched(patch, check_log_level)?;
        self.commit(&mut live, next, by)
    }

    /// Replaces the runtime settings (a reloaded config file), `by` someone (logged). On error
    /// nothing has changed.
    pub(crate) fn replace(
        &self,
        next: LiveSettings,
        by: &dyn Display,
    ) -> Result<LiveSettings, ControlError> {
        next.validate()?;
        check_log_level(&next.log_level).map_err(SettingsError::LogLevel)?;
        let mut live = lock(&self.live);
        self.commit(&mut live, next, by)
    }

    /// Applies `next`; every change is logged at WARN with who made it, so that nobody turns
    /// the events off or filters everything out unnoticed.
    fn commit(
        &self,
        live: &mut LiveSettings,
        next: LiveSettings,
        by: &dyn Display,
    ) -> Result<LiveSettings, ControlError> {
        if next == *live {
            return Ok(next);
        }
        if next.filters != live.filters {
            let resolved = Resolved::new(&next.filters).map_err(ControlError::Filters)?;
            if let Some(filters) = lock(&self.filters).as_mut()
                && let Err(err) = filters.apply(&resolved)
            {
                // Put the previous filters back rather than leave a half-written set.
                if let Ok(previous) = Resolved::new(&live.filters) {
                    let _ = filters.apply(&previous);
                }
                return Err(ControlError::KernelFilters(err));
            }
        }
        if next.log_level != live.log_level {
            (self.set_log_level)(&next.log_level).map_err(ControlError::LogLevel)?;
        }
        if next.events != live.events
            && let Some(switch) = lock(&self.exchange_events).as_ref()
            && let Err(err) = switch.apply(next.events)
        {
            // The daemon's loop sets it again when it sees the change.
            warn!("{err}");
        }
        warn!(
            by = %by,
            settings = %serde_json::to_string(&next).unwrap_or_default(),
            "runtime settings changed"
        );
        *live = next.clone();
        self.changes.send_replace(next.clone());
        Ok(next)
    }

    /// Everything `GET /config` shows: runtime settings, and those that need a restart.
    pub(crate) fn describe(&self) -> Value {
        json!({
            "runtime": self.live(),
            "restart_required": self.statics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::live::{EventSelection, Filters, Thresholds};

    fn control() -> (
        Arc<Control>,
        watch::Receiver<LiveSettings>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let levels = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&levels);
        let (control, changes) = Control::new(
            LiveSettings {
                events: EventSelection::Connections,
                sample: None,
                thresholds: Thresholds::default(),
                log_level: "info".into(),
                filters: Filters::default(),
            },
            json!({"listen": "127.0.0.1:0"}),
            Box::new(move |level| {
                seen.lock().unwrap().push(level.to_owned());
                Ok(())
            }),
        );
        (control, changes, levels)
    }

    #[test]
    fn a_patch_is_applied_and_announced() {
        let (control, mut changes, levels) = control();
        let next = control
            .patch(
                &json!({"events": "exchanges", "log_level": "debug"}),
                &"a test",
            )
            .unwrap();
        assert_eq!(next.events, EventSelection::Exchanges);
        assert!(changes.has_changed().unwrap());
        assert_eq!(
            changes.borrow_and_update().events,
            EventSelection::Exchanges
        );
        assert_eq!(*levels.lock().unwrap(), ["debug"]);
        assert_eq!(control.describe()["runtime"]["events"], "exchanges");
        assert_eq!(
            control.describe()["restart_required"]["listen"],
            "127.0.0.1:0"
        );
    }

    /// Found by the put_config fuzz target (`fuzz/regressions/put_config/`): a log level with
    /// a field value of a hundred characters took seconds to check, each time, on the
    /// daemon's one runtime thread. Field values are literal text now, so one that is no
    /// regular expression is a level like any other.
    #[test]
    fn log_level_field_values_are_not_regular_expressions() {
        check_log_level("tcpobs[{peer=(}]=debug").expect("a field value of literal text");
        assert!(
            check_log_level("tcpobs[{peer=debug}]").is_err(),
            "names no level"
        );
        let (control, _, levels) = control();
        control
            .patch(
                &json!({"log_level": "warn,tcpobs[{peer=a.*(b}]=debug"}),
                &"a test",
            )
            .expect("a literal field value");
        assert_eq!(*levels.lock().unwrap(), ["warn,tcpobs[{peer=a.*(b}]=debug"]);
        assert!(check_log_level("tcpobs=loudest").is_err());
    }

    #[test]
    fn log_levels_must_name_a_level() {
        for good in [
            "info",
            "WARN",
            "off",
            "info,tcpobs=debug",
            "tcpobs::kernel=trace",
        ] {
            assert!(check_log_level(good).is_ok(), "{good}");
        }
        // `loud` parses as a tracing filter (the target `loud` at every level), which would
        // silence every other line, loss warnings included.
        assert!(tracing_subscriber::EnvFilter::try_new("loud").is_ok());
        for bad in [
            "loud",
            "",
            " ",
            "info,loud",
            "tcpobs=loud",
            "tcpobs",
            "info,",
        ] {
            let err = check_log_level(bad).unwrap_err();
            assert!(matches!(err, LogLevelError::NotALevel(_)), "{bad:?}: {err}");
        }
        assert!(
            check_log_level("loud")
                .unwrap_err()
                .to_string()
                .starts_with("`loud` is not a level")
        );
    }

    #[test]
    fn a_bad_patch_changes_nothing() {
        let (control, changes, levels) = control();
        let before = control.live();
        let err = control
            .patch(
                &json!({"events": "exchanges", "log_level": "tcpobs=loudest"}),
                &"a test",
            )
            .unwrap_err();
        assert!(err.to_string().contains("log_level"), "{err}");
        let err = control
            .patch(
                &json!({"filters": {"cgroups": {"include": ["/no/such/cgroup"]}}}),
                &"a test",
            )
            .unwrap_err();
        assert!(err.to_string().contains("no/such/cgroup"), "{err}");
        assert_eq!(control.live(), before);
        assert!(!changes.has_changed().unwrap());
        assert!(levels.lock().unwrap().is_empty());
    }
}
