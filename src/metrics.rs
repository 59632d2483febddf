//! Counters shared by all layers (blobs fetched, bytes, packages materialised, failures),
//! readable as extended attributes of the mount root and in the logs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Tarball blobs streamed from a mirror.
    pub blobs_fetched: AtomicU64,
    /// Compressed bytes of those blobs.
    pub bytes_fetched: AtomicU64,
    /// Prefixes published (materialised) in this process.
    pub packages_materialised: AtomicU64,
    /// Materialisations that failed.
    pub packages_failed: AtomicU64,
    /// Prefixes found ready in the cache instead of fetched.
    pub cache_hits: AtomicU64,
    /// Prefixes evicted from the cache by this process.
    pub cache_evictions: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// `(name, value)` pairs, for xattrs and reports.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("blobs_fetched", g(&self.blobs_fetched)),
            ("bytes_fetched", g(&self.bytes_fetched)),
            ("packages_materialised", g(&self.packages_materialised)),
            ("packages_failed", g(&self.packages_failed)),
            ("cache_hits", g(&self.cache_hits)),
            ("cache_evictions", g(&self.cache_evictions)),
        ]
    }
}

/// The counters of this process.
pub fn global() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}
