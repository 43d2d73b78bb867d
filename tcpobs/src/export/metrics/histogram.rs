//! A histogram of integer observations (nanoseconds, or counts) updated with atomics.
//!
//! prometheus-client's histogram takes a mutex on every observation; tcpobs observes a dozen
//! values per connection on the thread that drains the ring buffer, so here an observation is
//! a search over integer bucket limits and two relaxed stores. A scrape reads the buckets one
//! by one and reports `_count` as their total, so the count and the `+Inf` bucket always agree.
//!
//! One writer at a time: every observation comes from the tracer's loop (records, and what the
//! kernel folded), so an update is a relaxed load and store, not a locked read-modify-write
//! (which would cost more than the rest of the observation). Scrapes, on other threads, only
//! read. A second concurrent writer would lose updates, never corrupt anything.
//!
//! The sum is kept exactly, in observation units (ns), so that what the kernel folded with the
//! same limits ([`Histogram::add`]) adds up to the same histogram as one observation at a
//! time; it is exported as that integer divided by the units per exported unit.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

#[derive(Debug)]
struct Inner {
    /// Upper bounds as exported (`le`), in the exported unit.
    bounds: Box<[f64]>,
    /// The same bounds in observation units: value `v` falls in the first bucket whose limit
    /// is at least `v`.
    limits: Box<[u64]>,
    /// One per bound, then the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    /// The sum in observation units, modulo 2^64 ...
    sum: AtomicU64,
    /// ... and how many times it wrapped.
    sum_wraps: AtomicU64,
    /// Observation units per exported unit (1e9 for nanoseconds as seconds).
    per_unit: f64,
}

/// Cloning shares the same buckets.
#[derive(Clone, Debug)]
pub(super) struct Histogram(Arc<Inner>);

impl Histogram {
    /// `bounds` (ascending, in the exported unit) for observations worth `scale` each.
    pub(super) fn new(bounds: impl IntoIterator<Item = f64>, scale: f64) -> Self {
        let bounds: Box<[f64]> = bounds.into_iter().collect();
        let limits = bounds.iter().map(|&bound| limit(bound, scale)).collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Inner {
            bounds,
            limits,
            counts,
            sum: AtomicU64::new(0),
            sum_wraps: AtomicU64::new(0),
            per_unit: (1.0 / scale).round(),
        }))
    }

    /// The integer bucket limits, in observation units.
    pub(super) fn limits(&self) -> &[u64] {
        &self.0.limits
    }

    /// Records one observation, in observation units.
    pub(super) fn observe(&self, value: u64) {
        let inner = &*self.0;
        let bucket = inner.limits.partition_point(|&limit| limit < value);
        add(&inner.counts[bucket], 1);
        inner.add_sum(value);
    }

    /// Adds observations counted elsewhere with the same limits: counts per bucket (the last
    /// one `+Inf`) and their sum, modulo 2^64.
    pub(super) fn add(&self, buckets: &[u64], sum: u64) {
        let inner = &*self.0;
        let last = inner.counts.len() - 1;
        for (index, &count) in buckets.iter().enumerate() {
            if count != 0 {
                add(&inner.counts[index.min(last)], count);
            }
        }
        inner.add_sum(sum);
    }
}

/// Adds to a counter that only one thread writes (see the module docs).
#[inline(always)]
fn add(counter: &AtomicU64, value: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(value),
        Ordering::Relaxed,
    );
}

impl Inner {
    fn add_sum(&self, value: u64) {
        let (sum, wrapped) = self.sum.load(Ordering::Relaxed).overflowing_add(value);
        if wrapped {
            add(&self.sum_wraps, 1);
        }
        self.sum.store(sum, Ordering::Relaxed);
    }

    /// The sum in observation units.
    fn sum(&self) -> f64 {
        loop {
            let wraps = self.sum_wraps.load(Ordering::Relaxed);
            let sum = self.sum.load(Ordering::Relaxed);
            if self.sum_wraps.load(Ordering::Relaxed) == wraps {
                return wraps as f64 * 18_446_744_073_709_551_616.0 + sum as f64;
            }
        }
    }
}

/// The largest observation that belongs under `bound`, tolerating the rounding in
/// `bound / scale` (0.00005 s is 50,000 ns, not 49,999).
fn limit(bound: f64, scale: f64) -> u64 {
    let units = bound / scale;
    let nearest = units.round();
    if (units - nearest).abs() <= 1e-6 * nearest.max(1.0) {
        nearest as u64
    } else {
        units.floor() as u64
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let inner = &*self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(inner.counts.iter())
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = inner.sum() / inner.per_unit;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;

    #[test]
    fn observations_land_in_the_right_buckets() {
        let histogram = Histogram::new([0.000_05, 0.001], 1e-9);
        for ns in [1, 50_000, 50_001, 1_000_000, 2_000_000_000] {
            histogram.observe(ns);
        }
        let mut registry = Registry::default();
        registry.register("t_seconds", "test", histogram.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "t_seconds_bucket{le=\"0.00005\"} 2",
            "t_seconds_bucket{le=\"0.001\"} 4",
            "t_seconds_bucket{le=\"+Inf\"} 5",
            "t_seconds_count 5",
            "t_seconds_sum 2.001100002",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
    }

    /// Observations added in bulk (as the kernel folds them) give the same histogram as one
    /// at a time, sum included, and the sum survives wrapping.
    #[test]
    fn added_buckets_are_observations() {
        let values = [1, 50_000, 50_001, 1_000_000, 2_000_000_000, 7];
        let one_by_one = Histogram::new([0.000_05, 0.001], 1e-9);
        for value in values {
            one_by_one.observe(value);
        }
        let bulk = Histogram::new([0.000_05, 0.001], 1e-9);
        let mut buckets = [0u64; 32];
        for value in values {
            buckets[bulk.limits().partition_point(|&limit| limit < value)] += 1;
        }
        bulk.add(&buckets, values.iter().sum());
        let text = |histogram: &Histogram| {
            let mut registry = Registry::default();
            registry.register("t_seconds", "test", histogram.clone());
            let mut text = String::new();
            encode(&mut text, &registry).unwrap();
            text
        };
        assert_eq!(text(&one_by_one), text(&bulk));
        let wrapping = Histogram::new([1.0], 1.0);
        wrapping.add(&[1], u64::MAX);
        wrapping.add(&[0, 1], 3);
        let text = text(&wrapping);
        let sum: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("t_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum / 2f64.powi(64) - 1.0).abs() < 1e-12, "{text}");
    }

    #[test]
    fn limits_survive_float_rounding() {
        assert_eq!(limit(0.000_05, 1e-9), 50_000);
        assert_eq!(limit(0.1, 1e-9), 100_000_000);
        assert_eq!(limit(2.5, 1.0), 2);
        assert_eq!(limit(0.000_097_376_649_086_205_3, 1e-9), 97_376);
    }
}
