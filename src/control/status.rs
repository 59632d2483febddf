//! The status of a running mount, as `spackfs status` shows it: mirrors (health, the active
//! one, index age, bytes fetched), packages by state and the failed ones, cache use and
//! bound, hits and misses, read mode, uptime and the recent errors. Built from the live
//! catalog, the store and the metrics; serialised as JSON on the control socket, and
//! rendered for people by the client.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::catalog::live::LiveCatalog;
use crate::fs::FsCore;
use crate::metrics::Metrics;

/// What `spackfs status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub mount: String,
    pub pid: u32,
    pub version: String,
    pub uptime_seconds: f64,
    /// `passthrough` or `pread` (the mode in use, after any fallback).
    pub read_mode: String,
    pub mirrors: Vec<MirrorStatus>,
    pub packages: PackageCounts,
    pub failed: Vec<FailedStatus>,
    pub cache: CacheStatus,
    pub fetched: Fetched,
    /// Oldest first.
    pub recent_errors: Vec<ErrorStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub name: String,
    pub url: String,
    pub healthy: bool,
    /// The first healthy mirror: where the next fetch goes first.
    pub active: bool,
    /// Endpoint failures in a row.
    pub failures: u32,
    pub retry_in_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub index: IndexStatus,
    /// Bytes read from it by this mount (tarballs and metadata).
    pub bytes_fetched: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexStatus {
    /// What the package list came from (e.g. `v3 index`), if any.
    pub source: Option<String>,
    pub packages: usize,
    /// Seconds since the index was last read or confirmed unchanged.
    pub age_seconds: Option<f64>,
    /// Listed from the index kept on disk (the mirror was unreachable).
    pub kept: bool,
    /// Why the last read failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PackageCounts {
    pub listed: usize,
    pub remote: usize,
    pub fetching: usize,
    pub ready: usize,
    pub failed: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedStatus {
    /// `name@version/hash7`.
    pub package: String,
    pub hash: String,
    /// `not_found`, `untrusted`, `no_space` or `failed`.
    pub kind: String,
    pub error: String,
    pub attempts: u32,
    pub retry_in_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheStatus {
    pub dir: String,
    pub used_bytes: u64,
    /// `None`: unbounded.
    pub bound_bytes: Option<u64>,
    pub prefixes: usize,
    /// Packages made ready from the cache without a fetch.
    pub hits: u64,
    /// Packages fetched and published.
    pub misses: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fetched {
    pub blobs: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorStatus {
    /// RFC 3339, UTC.
    pub time: String,
    pub message: String,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

impl Status {
    /// The status of the mount at `mount` now.
    pub fn collect(mount: &str, live: &LiveCatalog, fs: &FsCore, metrics: &Metrics) -> Status {
        let now = SystemTime::now();
        let checks = live.catalog().index_checks();
        let mut active_taken = false;
        let mirrors = live
            .catalog()
            .set()
            .mirrors()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let h = m.health().report();
                let active = h.healthy && !active_taken;
                active_taken |= active;
                let c = checks.get(i).cloned().unwrap_or_default();
                MirrorStatus {
                    name: m.name().to_string(),
                    url: m.url().to_string(),
                    healthy: h.healthy,
                    active,
                    failures: h.failures,
                    retry_in_seconds: h.retry_in.map(secs),
                    last_error: h.last_error,
                    index: IndexStatus {
                        source: c.source.map(|s| s.to_string()),
                        packages: c.packages,
                        age_seconds: c
                            .checked_at
                            .map(|t| secs(now.duration_since(t).unwrap_or_default())),
                        kept: c.kept,
                        error: c.error,
                    },
                    bytes_fetched: metrics.bytes_from(m.url()),
                }
            })
            .collect();
        let census = live.census();
        let failed: Vec<FailedStatus> = census
            .failed
            .iter()
            .map(|f| FailedStatus {
                package: f.package.node.display(),
                hash: f.package.node.hash().to_string(),
                kind: f.failure.kind.label().to_string(),
                error: f.failure.message.to_string(),
                attempts: f.attempts,
                retry_in_seconds: secs(f.retry_in),
            })
            .collect();
        let store = live.store();
        let listed = store.list();
        let snapshot: std::collections::HashMap<_, _> = metrics.snapshot().into_iter().collect();
        Status {
            mount: mount.to_string(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: secs(now.duration_since(live.mounted_at()).unwrap_or_default()),
            read_mode: format!("{:?}", fs.read_mode()).to_lowercase(),
            mirrors,
            packages: PackageCounts {
                listed: census.listed,
                remote: census.remote,
                fetching: census.fetching,
                ready: census.ready,
                failed: failed.len(),
            },
            failed,
            cache: CacheStatus {
                dir: store.root().display().to_string(),
                used_bytes: listed.iter().map(|l| l.meta.size).sum(),
                bound_bytes: store.bound().map(|b| b.max_bytes),
                prefixes: listed.len(),
                hits: metrics.cache_hits.get(),
                misses: metrics.packages_materialised.get(),
                evictions: metrics.cache_evictions.get(),
                evicted_bytes: metrics.cache_evicted_bytes.get(),
            },
            fetched: Fetched {
                blobs: snapshot["blobs_fetched"],
                bytes: snapshot["bytes_fetched"],
            },
            recent_errors: metrics
                .recent_errors()
                .into_iter()
                .map(|e| ErrorStatus {
                    time: humantime::format_rfc3339_seconds(e.at).to_string(),
                    message: e.message,
                })
                .collect(),
        }
    }

    /// The status for people: a few lines, the failures last.
    pub fn render(&self) -> String {
        use bytesize::ByteSize;
        use std::fmt::Write;
        let mut out = String::new();
        let ago = |s: f64| humantime::format_duration(Duration::from_secs(s as u64)).to_string();
        let _ = writeln!(
            out,
            "spackfs {} at {} (pid {}, up {}), reads by {}",
            self.version,
            self.mount,
            self.pid,
            ago(self.uptime_seconds),
            self.read_mode
        );
        let _ = writeln!(out, "mirrors:");
        for m in &self.mirrors {
            let health = match (m.healthy, m.retry_in_seconds) {
                (true, _) => "healthy".to_string(),
                (false, Some(r)) => format!("failing, retried in {}", ago(r.ceil())),
                (false, None) => "failing".to_string(),
            };
            let index = match (&m.index.source, m.index.kept, m.index.age_seconds) {
                (_, true, _) => format!("{} packages from the kept index", m.index.packages),
                (Some(s), _, Some(age)) => {
                    format!(
                        "{} packages ({s}, checked {} ago)",
                        m.index.packages,
                        ago(age)
                    )
                }
                (None, _, Some(_)) => "no index: packages looked up directly".to_string(),
                _ => "no index read".to_string(),
            };
            let _ = writeln!(
                out,
                "  {} {} ({}): {health}; {index}; {} fetched",
                if m.active { "*" } else { " " },
                m.name,
                m.url,
                ByteSize(m.bytes_fetched)
            );
            if let Some(e) = m.last_error.as_ref().filter(|_| !m.healthy) {
                let _ = writeln!(out, "      last error: {e}");
            }
            if let Some(e) = &m.index.error {
                let _ = writeln!(out, "      index: {e}");
            }
        }
        let p = &self.packages;
        let _ = writeln!(
            out,
            "packages: {} listed: {} ready, {} fetching, {} failed, {} not fetched yet",
            p.listed, p.ready, p.fetching, p.failed, p.remote
        );
        let c = &self.cache;
        let bound = c
            .bound_bytes
            .map_or("unbounded".to_string(), |b| format!("of {}", ByteSize(b)));
        let _ = writeln!(
            out,
            "cache: {} in {} prefixes ({bound}) at {}; {} hits, {} misses, {} evictions; {} fetched in {} blobs",
            ByteSize(c.used_bytes),
            c.prefixes,
            c.dir,
            c.hits,
            c.misses,
            c.evictions,
            ByteSize(self.fetched.bytes),
            self.fetched.blobs
        );
        if !self.failed.is_empty() {
            let _ = writeln!(out, "failed:");
            for f in &self.failed {
                let _ = writeln!(
                    out,
                    "  {} ({}, {} attempts, retried in {}): {}",
                    f.package,
                    f.kind,
                    f.attempts,
                    ago(f.retry_in_seconds.ceil()),
                    f.error
                );
            }
        }
        if !self.recent_errors.is_empty() {
            let _ = writeln!(out, "recent errors:");
            for e in &self.recent_errors {
                let _ = writeln!(out, "  {} {}", e.time, e.message);
            }
        }
        out
    }
}
