//! A histogram of integer observations (nanoseconds, or counts) updated with atomics.
//!
//! prometheus-client's histogram takes a mutex on every observation; tcpobs observes up to
//! eleven values per exchange, on the thread that drains the ring buffer, so here an
//! observation is a search over integer bucket limits and two relaxed atomic adds. A scrape
//! reads the buckets one by one and reports `_count` as their total, so the count and the
//! `+Inf` bucket always agree.

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
    /// The sum in the exported unit, as `f64` bits.
    sum: AtomicU64,
    /// Exported unit per observation unit (1e-9 for nanoseconds as seconds).
    scale: f64,
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
            sum: AtomicU64::new(0f64.to_bits()),
            scale,
        }))
    }

    /// Records one observation, in observation units.
    pub(super) fn observe(&self, value: u64) {
        let inner = &*self.0;
        let bucket = inner.limits.partition_point(|&limit| limit < value);
        inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let add = value as f64 * inner.scale;
        // One writer in practice (the event thread), so this succeeds the first time.
        let _ = inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + add).to_bits())
            });
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
        let sum = f64::from_bits(inner.sum.load(Ordering::Relaxed));
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

    #[test]
    fn limits_survive_float_rounding() {
        assert_eq!(limit(0.000_05, 1e-9), 50_000);
        assert_eq!(limit(0.1, 1e-9), 100_000_000);
        assert_eq!(limit(2.5, 1.0), 2);
        assert_eq!(limit(0.000_097_376_649_086_205_3, 1e-9), 97_376);
    }
}
