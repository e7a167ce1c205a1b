//! A latency histogram made of relaxed atomic adds, for counting on hot paths: one add into a
//! fixed bucket and one into the sum per observation, no lock and no allocation; the text is
//! made only when someone scrapes.

use prometheus_client::encoding::{MetricEncoder, NoLabelSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket is +Inf): 100 µs to 1 s,
/// the span between a loopback round trip and a request that waited on a timeout.
pub const BUCKETS_US: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

#[derive(Default, Debug)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative), the last one for anything slower than the last bound.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Observations per bucket (not cumulative; the last is +Inf).
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    /// Writes the histogram (in seconds) into a family member `encoder` made for it (the
    /// encoder makes the bucket counts cumulative).
    pub fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.bucket_counts();
        let count = counts.iter().sum();
        let buckets: Vec<(f64, u64)> =
            BUCKETS_US.iter().map(|us| *us as f64 / 1e6).chain([f64::MAX]).zip(counts).collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_the_sum() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(5));
        let counts = h.bucket_counts();
        assert_eq!(counts[0], 2, "≤ 100 µs");
        assert_eq!(counts[1], 1, "≤ 250 µs");
        assert_eq!(counts[BUCKETS_US.len()], 1, "+Inf");
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_us.load(Ordering::Relaxed), 5_000_251);
    }
}
