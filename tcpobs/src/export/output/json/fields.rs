//! [`Fields`]: what the events are written through, as JSON or as OTLP attributes.

use std::net::IpAddr;

use super::{Key, key};
use crate::{
    clock::WallClock,
    metadata::Meta,
    model::{Process, Timeline},
};

/// Where an event's fields go: a JSON object on a line ([`Object`](super::Object)), or OTLP
/// attributes (`otlp::attributes`). [`events`](super::events) says once, for both, what each
/// event holds and in what order, so that the two outputs cannot drift apart. A `null` in
/// JSON is an attribute left out in OTLP.
pub(crate) trait Fields: Sized {
    fn str(&mut self, key: Key, value: &str) -> &mut Self;

    fn u64(&mut self, key: Key, value: u64) -> &mut Self;

    fn bool(&mut self, key: Key, value: bool) -> &mut Self;

    /// A field with no value.
    fn null(&mut self, key: Key) -> &mut Self;

    fn ip(&mut self, key: Key, value: IpAddr) -> &mut Self;

    /// Nanoseconds as seconds (`null` for `None`).
    fn secs(&mut self, key: Key, ns: Option<u64>) -> &mut Self;

    /// A UTC timestamp with microseconds (`2026-11-21T09:30:00.123456Z`) from Unix nanoseconds.
    fn time(&mut self, key: Key, unix_ns: i64) -> &mut Self;

    /// A list of strings.
    fn strs<'s>(&mut self, key: Key, values: impl IntoIterator<Item = &'s str>) -> &mut Self;

    /// A list of addresses.
    fn ips(&mut self, key: Key, values: impl IntoIterator<Item = IpAddr>) -> &mut Self;

    /// A connection's timeline: a list of `{"name", "start", "duration_s"}` objects
    /// (exchanges also have `seq`).
    fn timeline(&mut self, key: Key, timeline: &Timeline, clock: &impl WallClock) -> &mut Self;

    #[inline(always)]
    fn opt_str(&mut self, key: Key, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    #[inline(always)]
    fn opt_u64(&mut self, key: Key, value: Option<u64>) -> &mut Self {
        match value {
            Some(value) => self.u64(key, value),
            None => self.null(key),
        }
    }

    #[inline(always)]
    fn opt_bool(&mut self, key: Key, value: Option<bool>) -> &mut Self {
        match value {
            Some(value) => self.bool(key, value),
            None => self.null(key),
        }
    }

    /// `pid` and `comm` of the owning process, `null` for both when unknown.
    #[inline(always)]
    fn process(&mut self, process: Option<&Process>) -> &mut Self {
        self.opt_u64(key!("pid"), process.map(|p| u64::from(p.pid)))
            .opt_str(key!("comm"), process.map(|p| p.comm.as_str()))
    }

    /// Where the process runs: `cgroup`, `container_id`, `pod_uid`, `namespace`, `pod`
    /// (`null` when unknown).
    #[inline(always)]
    fn meta(&mut self, meta: Option<&Meta>) -> &mut Self {
        self.opt_str(key!("cgroup"), meta.map(|m| &*m.cgroup))
            .opt_str(
                key!("container_id"),
                meta.and_then(|m| m.container_id.as_deref()),
            )
            .opt_str(key!("pod_uid"), meta.and_then(|m| m.pod_uid.as_deref()))
            .opt_str(key!("namespace"), meta.and_then(Meta::namespace))
            .opt_str(key!("pod"), meta.and_then(Meta::pod_name))
    }
}
