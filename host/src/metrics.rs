//! The server's metrics registry and the helpers each subsystem registers its own metrics
//! with (DESIGN convention 6; linkerd2-proxy's `sub_registry_with_prefix`): the state
//! layer its backends, plugins and candidate policies, the writer its listeners, health
//! plugins and control counters. The admin listener only renders what is registered.
//!
//! The exposition format is prometheus-client's (OpenMetrics text, which Prometheus
//! scrapes). Metrics are *read at scrape time* from the atomics the data path already
//! keeps ([`Collector`]s walk the current snapshot), so a scrape costs the data path
//! nothing and a backend added by a reload appears at the next scrape with no
//! registration. Where the data path must count something new, it is a relaxed atomic
//! add: [`Histogram::observe`] is two, with the bucket found from the value's bit length
//! (no search, no lock, no allocation). prometheus-client's own histogram takes a lock
//! per observation, which is why weir keeps its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::encoding::{EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, NoLabelSet};
pub use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A server's registry: every metric name starts with `weir_`, then the prefix of the
/// subsystem that registered it.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self { registry: Mutex::new(Registry::with_prefix("weir")) }
    }
}

impl Metrics {
    /// Registers `collector` under `weir_<prefix>_`; it is asked for its metrics at
    /// every scrape. Called when a subsystem is built, never on the data path.
    pub fn register(&self, prefix: &str, collector: impl Collector) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.sub_registry_with_prefix(prefix).register_collector(Box::new(collector));
    }

    /// Every registered metric in the OpenMetrics text format (ending in `# EOF`).
    pub fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::with_capacity(16 << 10);
        // Writing to a String cannot fail; a collector that fails leaves what it wrote.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "a metrics collector failed");
        }
        out
    }
}

/// No labels: the one sample of a family without any.
pub const NO_LABELS: [(&str, &str); 0] = [];

/// One metric family being written by a collector: its descriptor, then one sample per
/// label set.
#[derive(Debug)]
pub struct Family<'e> {
    encoder: MetricEncoder<'e>,
}

impl<'e> Family<'e> {
    /// Starts the family `name` (no `weir_` and prefix: the registry adds them; no
    /// `_total` for a counter: the encoder adds it).
    pub fn new(
        encoder: &'e mut DescriptorEncoder<'_>,
        name: &'e str,
        help: &str,
        kind: MetricType,
    ) -> Result<Self, std::fmt::Error> {
        Ok(Self { encoder: encoder.encode_descriptor(name, help, None, kind)? })
    }

    /// A counter sample.
    pub fn counter(&mut self, labels: &impl EncodeLabelSet, value: impl EncodeCounterValue) -> std::fmt::Result {
        self.encoder.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    /// A gauge sample.
    pub fn gauge(&mut self, labels: &impl EncodeLabelSet, value: impl EncodeGaugeValue) -> std::fmt::Result {
        self.encoder.encode_family(labels)?.encode_gauge(&value)
    }

    /// A histogram sample, read from `h` now; its values are divided by `scale` (e.g. µs
    /// recorded, seconds exposed: 1e6).
    pub fn histogram<const FIRST: u32>(
        &mut self,
        labels: &impl EncodeLabelSet,
        h: &Histogram<FIRST>,
        scale: f64,
    ) -> std::fmt::Result {
        let (sum, count, buckets) = h.read(scale);
        self.encoder.encode_family(labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Buckets of a [`Histogram`] (the last one has no upper bound).
pub const BUCKETS: usize = 20;

/// A histogram of `u64` values with power-of-two buckets, recorded with two relaxed
/// atomic adds and no lock: bucket `i` holds values below `2^(FIRST + i)` (the first
/// everything below `2^FIRST`), the last everything else. With `FIRST = 6` and values in
/// µs that is 64 µs to 16.8 s; with `FIRST = 8` and ns, 256 ns to 67 ms.
#[derive(Debug)]
pub struct Histogram<const FIRST: u32> {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

impl<const FIRST: u32> Default for Histogram<FIRST> {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum: AtomicU64::new(0) }
    }
}

impl<const FIRST: u32> Histogram<FIRST> {
    /// Records `v`.
    #[inline]
    pub fn observe(&self, v: u64) {
        let bits = u64::BITS - v.leading_zeros();
        let i = (bits.saturating_sub(FIRST) as usize).min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// `(sum, count, [(upper bound, count in this bucket)])`, values divided by `scale`.
    /// Read bucket by bucket while others record: a scrape may see an observation in its
    /// bucket and not yet in the sum, never a count that goes down.
    pub fn read(&self, scale: f64) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = b.load(Ordering::Relaxed);
                count += n;
                let upper =
                    if i == BUCKETS - 1 { f64::INFINITY } else { (1u64 << (FIRST as usize + i)) as f64 / scale };
                (upper, n)
            })
            .collect();
        (self.sum.load(Ordering::Relaxed) as f64 / scale, count, buckets)
    }

    /// The value below which `q` (0 to 1) of the observations fall, as the upper bound of
    /// its bucket (unscaled); `None` with no observation. For the dashboard's percentiles.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(1u64 << (FIRST as usize + i.min(BUCKETS - 2)));
            }
        }
        None
    }
}

/// Counts whatever happens, relaxed: what the control counters are made of.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_bucket_of_their_bit_length() {
        let h = Histogram::<6>::default();
        for v in [0, 63, 64, 127, 128, 1 << 40] {
            h.observe(v);
        }
        let (sum, count, buckets) = h.read(1.0);
        assert_eq!(count, 6);
        assert_eq!(sum, (63 + 64 + 127 + 128 + (1u64 << 40)) as f64);
        assert_eq!(buckets[0], (64.0, 2), "0 and 63 are below 64");
        assert_eq!(buckets[1], (128.0, 2), "64 and 127 are below 128");
        assert_eq!(buckets[2], (256.0, 1));
        assert_eq!(buckets[BUCKETS - 1], (f64::INFINITY, 1), "what is past the last bound");
        assert_eq!(h.quantile(0.5), Some(128));
        assert_eq!(Histogram::<6>::default().quantile(0.5), None);
    }

    #[derive(Debug)]
    struct Two;

    impl Collector for Two {
        fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
            let mut f = Family::new(&mut encoder, "things", "Things seen.", MetricType::Counter)?;
            f.counter(&[("pool", "p"), ("backend", "127.0.0.1:1")], 3u64)?;
            f.counter(&[("pool", "p"), ("backend", "127.0.0.1:2")], 4u64)?;
            let h = Histogram::<6>::default();
            h.observe(100);
            Family::new(&mut encoder, "latency_seconds", "Latency.", MetricType::Histogram)?.histogram(
                &[("pool", "p")],
                &h,
                1e6,
            )
        }
    }

    #[test]
    fn a_collector_renders_under_its_prefix() {
        let m = Metrics::default();
        m.register("backend", Two);
        let text = m.render();
        assert!(text.contains("weir_backend_things_total{pool=\"p\",backend=\"127.0.0.1:1\"} 3\n"), "{text}");
        assert!(text.contains("weir_backend_latency_seconds_bucket{le=\"0.000128\",pool=\"p\"} 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
