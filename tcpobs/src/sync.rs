//! Locking the state the daemon's threads share (the live table, health counters, metric label
//! policy, metadata cache, settings).
//!
//! A mutex is poisoned when a thread panics while holding it. tcpobs keeps using the state
//! behind it rather than panic in turn: every update under these locks is a counter, a cache
//! entry or a whole-value replacement, and an observer that stops observing because one
//! request handler panicked would be worse than a counter that missed one update.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
