//! The live settings in force, and changing them: `PUT /config` and `SIGHUP`.
//!
//! A change is validated whole (including resolving cgroup paths) before anything is touched;
//! then the kernel filters are written, the log level set, and the daemon's loop is told
//! (event selection, sampling, thresholds) through a watch channel. Live connections are
//! never dropped by a change.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::watch;
use tracing::info;

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

/// Checks a log level without applying it.
pub(crate) fn check_log_level(level: &str) -> Result<(), LogLevelError> {
    tracing_subscriber::EnvFilter::try_new(level)?;
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

    /// Applies a JSON patch of runtime settings. On error nothing has changed.
    pub(crate) fn patch(&self, patch: &Value) -> Result<LiveSettings, ControlError> {
        let mut live = lock(&self.live);
        let next = live.patched(patch, check_log_level)?;
        self.commit(&mut live, next)
    }

    /// Replaces the runtime settings (a reloaded config file). On error nothing has changed.
    pub(crate) fn replace(&self, next: LiveSettings) -> Result<LiveSettings, ControlError> {
        next.validate()?;
        check_log_level(&next.log_level).map_err(SettingsError::LogLevel)?;
        let mut live = lock(&self.live);
        self.commit(&mut live, next)
    }

    fn commit(
        &self,
        live: &mut LiveSettings,
        next: LiveSettings,
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
            tracing::warn!("{err}");
        }
        info!(
            events = ?next.events,
            sample = ?next.sample.map(|s| s.to_string()),
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
            .patch(&json!({"events": "exchanges", "log_level": "debug"}))
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

    #[test]
    fn a_bad_patch_changes_nothing() {
        let (control, changes, levels) = control();
        let before = control.live();
        let err = control
            .patch(&json!({"events": "exchanges", "log_level": "tcpobs=loudest"}))
            .unwrap_err();
        assert!(err.to_string().contains("log_level"), "{err}");
        let err = control
            .patch(&json!({"filters": {"cgroups": {"include": ["/no/such/cgroup"]}}}))
            .unwrap_err();
        assert!(err.to_string().contains("no/such/cgroup"), "{err}");
        assert_eq!(control.live(), before);
        assert!(!changes.has_changed().unwrap());
        assert!(levels.lock().unwrap().is_empty());
    }
}
