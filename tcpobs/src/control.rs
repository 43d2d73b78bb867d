//! The runtime settings in force, and changing them: `PUT /config` and `SIGHUP`.
//!
//! A change is validated whole (including resolving cgroup paths) before anything is touched;
//! then the kernel filters are written, the log level set, and the daemon's loop is told
//! (event selection, sampling, thresholds) through a watch channel. Live connections are
//! never dropped by a change.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::info;

use crate::{
    kfilter::{KernelFilters, Resolved},
    runtime::Runtime,
    sync::lock,
};

/// Sets the daemon's log level (a tracing filter); errors say why the level is invalid.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Checks a log level without applying it.
pub fn check_log_level(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|err| err.to_string())
}

pub struct Control {
    runtime: Mutex<Runtime>,
    changes: watch::Sender<Runtime>,
    filters: Mutex<Option<KernelFilters>>,
    set_log_level: LogLevelSetter,
    /// Settings that need a restart, shown by `GET /config`.
    statics: Value,
}

impl Control {
    pub fn new(
        runtime: Runtime,
        statics: Value,
        set_log_level: LogLevelSetter,
    ) -> (Arc<Self>, watch::Receiver<Runtime>) {
        let (changes, receiver) = watch::channel(runtime.clone());
        let control = Self {
            runtime: Mutex::new(runtime),
            changes,
            filters: Mutex::new(None),
            set_log_level,
            statics,
        };
        (Arc::new(control), receiver)
    }

    pub fn runtime(&self) -> Runtime {
        lock(&self.runtime).clone()
    }

    /// Hands over the kernel filter maps (once the programs are loaded) and writes the
    /// filters in force now, which a `PUT /config` during loading may have changed.
    pub fn attach_filters(&self, mut filters: KernelFilters) -> Result<(), String> {
        let runtime = lock(&self.runtime);
        filters.apply(&Resolved::new(&runtime.filters)?)?;
        *lock(&self.filters) = Some(filters);
        Ok(())
    }

    /// Applies a JSON patch of runtime settings. On error nothing has changed.
    pub fn patch(&self, patch: &Value) -> Result<Runtime, String> {
        let mut runtime = lock(&self.runtime);
        let next = runtime.patched(patch, check_log_level)?;
        self.commit(&mut runtime, next)
    }

    /// Replaces the runtime settings (a reloaded config file). On error nothing has changed.
    pub fn replace(&self, next: Runtime) -> Result<Runtime, String> {
        next.validate()?;
        check_log_level(&next.log_level).map_err(|err| format!("log_level: {err}"))?;
        let mut runtime = lock(&self.runtime);
        self.commit(&mut runtime, next)
    }

    fn commit(&self, runtime: &mut Runtime, next: Runtime) -> Result<Runtime, String> {
        if next == *runtime {
            return Ok(next);
        }
        if next.filters != runtime.filters {
            let resolved = Resolved::new(&next.filters)?;
            if let Some(filters) = lock(&self.filters).as_mut()
                && let Err(err) = filters.apply(&resolved)
            {
                // Put the previous filters back rather than leave a half-written set.
                if let Ok(previous) = Resolved::new(&runtime.filters) {
                    let _ = filters.apply(&previous);
                }
                return Err(format!("kernel filters: {err}"));
            }
        }
        if next.log_level != runtime.log_level {
            (self.set_log_level)(&next.log_level).map_err(|err| format!("log_level: {err}"))?;
        }
        info!(
            events = ?next.events,
            sample = ?next.sample.map(|s| s.to_string()),
            "runtime settings changed"
        );
        *runtime = next.clone();
        self.changes.send_replace(next.clone());
        Ok(next)
    }

    /// Everything `GET /config` shows: runtime settings, and those that need a restart.
    pub fn describe(&self) -> Value {
        json!({
            "runtime": self.runtime(),
            "restart_required": self.statics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        output::EventSelection,
        runtime::{Filters, Thresholds},
    };

    fn control() -> (
        Arc<Control>,
        watch::Receiver<Runtime>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let levels = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&levels);
        let (control, changes) = Control::new(
            Runtime {
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
        let before = control.runtime();
        let err = control
            .patch(&json!({"events": "exchanges", "log_level": "tcpobs=loudest"}))
            .unwrap_err();
        assert!(err.contains("log_level"), "{err}");
        let err = control
            .patch(&json!({"filters": {"cgroups": {"include": ["/no/such/cgroup"]}}}))
            .unwrap_err();
        assert!(err.contains("no/such/cgroup"), "{err}");
        assert_eq!(control.runtime(), before);
        assert!(!changes.has_changed().unwrap());
        assert!(levels.lock().unwrap().is_empty());
    }
}
