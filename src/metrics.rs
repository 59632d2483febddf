//! The process's counters and histograms, shared by all layers: what was fetched from which
//! mirror and how fast, materialisation phases, cache hits, misses and evictions, failures
//! by kind, FUSE operations, and the last errors. They are kept in prometheus-client types,
//! so that the metrics endpoint (`control::metrics`) encodes them as they are, and the mount
//! root's extended attributes and `spackfs status` read the same values.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Labels naming a mirror (by its URL, credentials never included).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub mirror: String,
}

/// A mirror and what was fetched from it: `tarball` or `metadata` (manifests, specs,
/// indexes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    pub mirror: String,
    pub what: &'static str,
}

/// A mirror and the class of an error it gave (`endpoint`, `integrity`, `trust`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorErrorLabels {
    pub mirror: String,
    pub class: &'static str,
}

/// One label with a fixed set of values (phase, failure kind, FUSE operation).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// The FUSE operations counted (one counter each, made once: a request only increments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Readlink,
    Open,
    Read,
    Release,
    Opendir,
    Readdir,
    Releasedir,
    Statfs,
    Getxattr,
    Listxattr,
}

impl FuseOp {
    const ALL: [FuseOp; 12] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Readlink,
        FuseOp::Open,
        FuseOp::Read,
        FuseOp::Release,
        FuseOp::Opendir,
        FuseOp::Readdir,
        FuseOp::Releasedir,
        FuseOp::Statfs,
        FuseOp::Getxattr,
        FuseOp::Listxattr,
    ];

    /// The operation's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Readlink => "readlink",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
            FuseOp::Release => "release",
            FuseOp::Opendir => "opendir",
            FuseOp::Readdir => "readdir",
            FuseOp::Releasedir => "releasedir",
            FuseOp::Statfs => "statfs",
            FuseOp::Getxattr => "getxattr",
            FuseOp::Listxattr => "listxattr",
        }
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 1 ms to about 65 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The kinds of package failure (as `catalog::live::FailureKind` names them).
pub const FAILURE_KINDS: [&str; 4] = ["not_found", "untrusted", "no_space", "failed"];

/// How many recent errors are kept for `spackfs status`.
const RECENT_ERRORS: usize = 20;

/// An error kept for `spackfs status`.
#[derive(Debug, Clone)]
pub struct RecentError {
    pub at: SystemTime,
    pub message: String,
}

/// Process-wide metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Tarball blobs streamed from a mirror.
    pub blobs_fetched: Counter,
    /// Bytes read from mirrors, by mirror and kind.
    pub fetch_bytes: Family<FetchLabels, Counter>,
    /// Time until a fetch's first byte (tarballs) or whole body (metadata).
    pub fetch_latency: Histograms<FetchLabels>,
    /// Errors from mirrors, by class.
    pub mirror_errors: Family<MirrorErrorLabels, Counter>,
    /// Prefixes published (fetched, extracted, relocated) by this process: cache misses.
    pub packages_materialised: Counter,
    /// Packages whose materialisation failed, by kind.
    pub packages_failed: Family<KindLabels, Counter>,
    /// Durations of the materialisation phases.
    pub phase_seconds: Histograms<PhaseLabels>,
    /// Packages made ready from the cache without a fetch.
    pub cache_hits: Counter,
    /// Prefixes evicted from the cache by this process, and their bytes.
    pub cache_evictions: Counter,
    pub cache_evicted_bytes: Counter,
    /// FUSE requests, by operation.
    pub fuse_requests: Family<OpLabels, Counter>,
    /// The counters of `fuse_requests`, by `FuseOp` (no label lookup per request).
    fuse_counters: [Counter; FuseOp::ALL.len()],
    /// Sum of `fetch_bytes` (for the attributes, which do not know the mirrors).
    bytes_total: AtomicU64,
    recent: Mutex<VecDeque<RecentError>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let fuse_requests: Family<OpLabels, Counter> = Family::default();
        let fuse_counters = FuseOp::ALL.map(|op| {
            fuse_requests
                .get_or_create(&OpLabels { op: op.name() })
                .clone()
        });
        Metrics {
            blobs_fetched: Counter::default(),
            fetch_bytes: Family::default(),
            fetch_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            mirror_errors: Family::default(),
            packages_materialised: Counter::default(),
            packages_failed: Family::default(),
            phase_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            cache_hits: Counter::default(),
            cache_evictions: Counter::default(),
            cache_evicted_bytes: Counter::default(),
            fuse_requests,
            fuse_counters,
            bytes_total: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
        }
    }
}

impl Metrics {
    /// `bytes` of `what` read from `mirror`.
    pub fn fetched(&self, mirror: &str, what: &'static str, bytes: u64) {
        self.fetch_bytes
            .get_or_create(&FetchLabels {
                mirror: mirror.to_string(),
                what,
            })
            .inc_by(bytes);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A fetch of `what` from `mirror` answered after `latency`.
    pub fn fetch_latency(&self, mirror: &str, what: &'static str, latency: Duration) {
        self.fetch_latency
            .get_or_create(&FetchLabels {
                mirror: mirror.to_string(),
                what,
            })
            .observe(latency.as_secs_f64());
    }

    /// Bytes read from `mirror` so far (all kinds).
    pub fn bytes_from(&self, mirror: &str) -> u64 {
        ["tarball", "metadata"]
            .iter()
            .map(|&what| {
                self.fetch_bytes
                    .get_or_create(&FetchLabels {
                        mirror: mirror.to_string(),
                        what,
                    })
                    .get()
            })
            .sum()
    }

    pub fn mirror_error(&self, mirror: &str, class: &'static str) {
        self.mirror_errors
            .get_or_create(&MirrorErrorLabels {
                mirror: mirror.to_string(),
                class,
            })
            .inc();
    }

    /// A package failed; `message` is kept among the recent errors.
    pub fn package_failed(&self, kind: &'static str, message: &str) {
        self.packages_failed
            .get_or_create(&KindLabels { kind })
            .inc();
        self.record_error(message);
    }

    /// Failed packages, by kind (every kind, zeros included).
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        FAILURE_KINDS
            .iter()
            .map(|&kind| {
                (
                    kind,
                    self.packages_failed
                        .get_or_create(&KindLabels { kind })
                        .get(),
                )
            })
            .collect()
    }

    pub fn phase(&self, phase: &'static str, d: Duration) {
        self.phase_seconds
            .get_or_create(&PhaseLabels { phase })
            .observe(d.as_secs_f64());
    }

    /// A FUSE request of operation `op`.
    pub fn fuse_op(&self, op: FuseOp) {
        self.fuse_counters[op as usize].inc();
    }

    /// Keep `message` among the recent errors (the oldest is dropped past the limit).
    pub fn record_error(&self, message: &str) {
        let mut r = self.recent.lock().unwrap();
        if r.len() == RECENT_ERRORS {
            r.pop_front();
        }
        r.push_back(RecentError {
            at: SystemTime::now(),
            message: message.to_string(),
        });
    }

    /// The recent errors, oldest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recent.lock().unwrap().iter().cloned().collect()
    }

    /// `(name, value)` pairs, for xattrs and reports.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("blobs_fetched", self.blobs_fetched.get()),
            ("bytes_fetched", self.bytes_total.load(Ordering::Relaxed)),
            ("packages_materialised", self.packages_materialised.get()),
            (
                "packages_failed",
                self.failures().iter().map(|(_, n)| n).sum(),
            ),
            ("cache_hits", self.cache_hits.get()),
            ("cache_evictions", self.cache_evictions.get()),
        ]
    }

    /// Register every metric (as shared handles) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "spackfs_fetched_blobs",
            "Tarball blobs streamed from mirrors",
            self.blobs_fetched.clone(),
        );
        registry.register_with_unit(
            "spackfs_fetch",
            "Bytes read from each mirror, by kind (tarball or metadata)",
            Unit::Bytes,
            self.fetch_bytes.clone(),
        );
        registry.register_with_unit(
            "spackfs_fetch_latency",
            "Time until a tarball's first byte, or a metadata file's whole body, per mirror",
            Unit::Seconds,
            self.fetch_latency.clone(),
        );
        registry.register(
            "spackfs_mirror_errors",
            "Errors from each mirror, by class (endpoint, not_found, integrity, trust, format)",
            self.mirror_errors.clone(),
        );
        registry.register(
            "spackfs_cache_misses",
            "Packages fetched, extracted and relocated (published) by this mount",
            self.packages_materialised.clone(),
        );
        registry.register(
            "spackfs_package_failures",
            "Packages whose materialisation failed, by kind",
            self.packages_failed.clone(),
        );
        registry.register_with_unit(
            "spackfs_materialise_phase",
            "Durations of the phases of a materialisation (fetch, verify, extract, relocate, total)",
            Unit::Seconds,
            self.phase_seconds.clone(),
        );
        registry.register(
            "spackfs_cache_hits",
            "Packages made ready from the cache of prefixes, without a fetch",
            self.cache_hits.clone(),
        );
        registry.register(
            "spackfs_cache_evictions",
            "Prefixes evicted from the cache",
            self.cache_evictions.clone(),
        );
        registry.register_with_unit(
            "spackfs_cache_evicted",
            "Bytes of the prefixes evicted from the cache",
            Unit::Bytes,
            self.cache_evicted_bytes.clone(),
        );
        registry.register(
            "spackfs_fuse_requests",
            "FUSE requests served, by operation",
            self.fuse_requests.clone(),
        );
    }
}

/// The metrics of this process.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_errors_are_bounded_and_totals_add_up() {
        let m = Metrics::default();
        for i in 0..(RECENT_ERRORS + 5) {
            m.package_failed("failed", &format!("error {i}"));
        }
        let recent = m.recent_errors();
        assert_eq!(recent.len(), RECENT_ERRORS);
        assert_eq!(recent[0].message, "error 5");
        m.fetched("file:///a", "tarball", 10);
        m.fetched("file:///a", "metadata", 5);
        m.fetched("file:///b", "tarball", 7);
        assert_eq!(m.bytes_from("file:///a"), 15);
        let snap: std::collections::HashMap<_, _> = m.snapshot().into_iter().collect();
        assert_eq!(snap["bytes_fetched"], 22);
        assert_eq!(snap["packages_failed"], (RECENT_ERRORS + 5) as u64);
    }
}
