//! The catalog of a mount: every available package at its path under the mount point, its
//! state (remote, fetching, ready, failed), and single-flight materialisation into the store
//! with DAG-aware prefetch. Callers never block: `ensure` is a future that the FUSE adapter
//! awaits on the runtime while its threads keep serving.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::materialise::{self, Target, Timings};
use super::{Catalog, CatalogError};
use crate::buildcache::spec::SpecNode;
use crate::install::InstallError;
use crate::store::{prefix_key, EntryMeta, Store};

/// Why a package cannot be served, as the errno the touching process gets.
#[derive(Debug, Clone)]
pub struct Failure {
    pub errno: i32,
    pub message: Arc<String>,
}

/// A package's state, for extended attributes and logs.
#[derive(Debug, Clone)]
pub enum State {
    Remote,
    Fetching,
    Ready {
        path: PathBuf,
        /// The store key of the prefix.
        key: String,
        timings: Option<Timings>,
        signer: Option<String>,
    },
    Failed {
        failure: Failure,
        retry_at: Instant,
        attempts: u32,
    },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Remote => "remote",
            State::Fetching => "fetching",
            State::Ready { .. } => "ready",
            State::Failed { .. } => "failed",
        }
    }
}

/// A materialisation in flight: its result once known.
pub type Flight = watch::Receiver<Option<Result<PathBuf, Failure>>>;

enum Slot {
    Idle(State),
    InFlight(Flight),
}

/// A package at its place under the mount point.
#[derive(Debug, Clone)]
pub struct LivePackage {
    pub node: SpecNode,
    /// Path relative to the mount point (the projection).
    pub rel_path: String,
}

/// The mount's view of one mirror.
pub struct LiveCatalog {
    catalog: Arc<Catalog>,
    target: Target,
    store: Arc<Store>,
    packages: Vec<LivePackage>,
    by_hash: HashMap<String, usize>,
    slots: Mutex<HashMap<String, Slot>>,
    backoff: Duration,
    mounted_at: SystemTime,
    /// The order of recorded uses: a counter, and its value at each prefix's last use.
    last_use: Mutex<(u64, HashMap<String, u64>)>,
    /// Drops the kernel's entries of an evicted package (set by the mount).
    invalidator: std::sync::OnceLock<Box<dyn Fn(usize) + Send + Sync>>,
}

impl LiveCatalog {
    pub fn new(
        catalog: Arc<Catalog>,
        target: Target,
        store: Arc<Store>,
        backoff: Duration,
    ) -> Self {
        let mut packages = Vec::new();
        let mut by_hash = HashMap::new();
        for e in catalog.available() {
            let Ok(rel) = target.projection.format(&e.node, None) else {
                tracing::warn!(
                    "{}: cannot place it under the mount point",
                    e.node.display()
                );
                continue;
            };
            by_hash.insert(e.node.hash.clone(), packages.len());
            packages.push(LivePackage {
                node: e.node.clone(),
                rel_path: rel,
            });
        }
        LiveCatalog {
            catalog,
            target,
            store,
            packages,
            by_hash,
            slots: Mutex::new(HashMap::new()),
            backoff,
            mounted_at: SystemTime::now(),
            invalidator: std::sync::OnceLock::new(),
            last_use: Mutex::new((0, HashMap::new())),
        }
    }

    /// Follow the store's evictions: an evicted package goes back to "remote" and the
    /// kernel forgets its entries, so that its next touch materialises it again.
    pub fn watch_evictions(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.store.on_evict(Box::new(move |meta| {
            if let Some(this) = weak.upgrade() {
                this.evicted(meta);
            }
        }));
    }

    fn evicted(&self, meta: &EntryMeta) {
        let Some(&idx) = self.by_hash.get(&meta.hash) else {
            return;
        };
        tracing::debug!(
            "{}: evicted from the cache, state {}",
            meta.package,
            self.state(&meta.hash).name()
        );
        let mut slots = self.slots.lock().unwrap();
        if let Some(Slot::Idle(State::Ready { key, .. })) = slots.get(&meta.hash) {
            if *key == meta.key {
                slots.remove(&meta.hash);
                drop(slots);
                if let Some(inval) = self.invalidator.get() {
                    inval(idx);
                }
            }
        }
    }

    /// Set how the kernel is told to forget a package's entries.
    pub fn set_invalidator(&self, f: Box<dyn Fn(usize) + Send + Sync>) {
        let _ = self.invalidator.set(f);
    }

    /// Pin the ready prefix of package `pkg` against eviction; returns the key to unpin.
    pub fn pin(&self, pkg: usize) -> Option<String> {
        let hash = &self.packages.get(pkg)?.node.hash;
        let key = match self.slots.lock().unwrap().get(hash) {
            Some(Slot::Idle(State::Ready { key, .. })) => key.clone(),
            _ => return None,
        };
        self.store.pin(&key);
        Some(key)
    }

    pub fn unpin(&self, key: &str) {
        self.store.unpin(key);
    }

    pub fn packages(&self) -> &[LivePackage] {
        &self.packages
    }

    pub fn mirror(&self) -> &str {
        self.catalog.mirror()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn root(&self) -> &str {
        &self.target.root
    }

    /// The current state of a package.
    pub fn state(&self, hash: &str) -> State {
        match self.slots.lock().unwrap().get(hash) {
            None => State::Remote,
            Some(Slot::InFlight(_)) => State::Fetching,
            Some(Slot::Idle(s)) => s.clone(),
        }
    }

    /// The ready prefix of a package, without waiting.
    pub fn ready_path(&self, hash: &str) -> Option<PathBuf> {
        match self.slots.lock().unwrap().get(hash) {
            Some(Slot::Idle(State::Ready { path, .. })) => Some(path.clone()),
            _ => None,
        }
    }

    /// Package `pkg` was found ready but its prefix is gone from the cache (evicted or
    /// removed by another process, e.g. `spackfs cache gc|verify`): forget it, so that its
    /// next touch materialises it again. Returns whether it was lost.
    pub fn lost(&self, pkg: usize) -> bool {
        let Some(p) = self.packages.get(pkg) else {
            return false;
        };
        let mut slots = self.slots.lock().unwrap();
        let gone = matches!(
            slots.get(&p.node.hash),
            Some(Slot::Idle(State::Ready { path, .. })) if !path.is_dir()
        );
        if gone {
            slots.remove(&p.node.hash);
            drop(slots);
            tracing::info!(
                "{}: its cached prefix was removed; it will be fetched again",
                p.node.display()
            );
            if let Some(inval) = self.invalidator.get() {
                inval(pkg);
            }
        }
        gone
    }

    /// Is package `pkg` ready (as far as this mount knows)?
    pub fn is_ready(&self, pkg: usize) -> bool {
        self.packages
            .get(pkg)
            .is_some_and(|p| self.ready_path(&p.node.hash).is_some())
    }

    /// Record a use of package `pkg` for the cache's LRU order. Repeated uses of the same
    /// prefix with no other use in between are recorded once (no syscall in hot loops).
    pub fn note_use(&self, pkg: usize) {
        let Some(p) = self.packages.get(pkg) else {
            return;
        };
        let key = match self.slots.lock().unwrap().get(&p.node.hash) {
            Some(Slot::Idle(State::Ready { key, .. })) => key.clone(),
            _ => return,
        };
        let mut last = self.last_use.lock().unwrap();
        let (seq, by_key) = &mut *last;
        if by_key.get(&key) == Some(seq) {
            return;
        }
        *seq += 1;
        by_key.insert(key.clone(), *seq);
        drop(last);
        self.store.touch(&key);
    }

    /// Start materialising a package unless it is ready, in flight, or failed recently;
    /// returns the flight to wait on, or the final result.
    pub fn start(self: &Arc<Self>, hash: &str) -> Result<Flight, Result<PathBuf, Failure>> {
        let mut slots = self.slots.lock().unwrap();
        let attempts = match slots.get(hash) {
            Some(Slot::Idle(State::Ready { path, .. })) => return Err(Ok(path.clone())),
            Some(Slot::Idle(State::Failed {
                failure, retry_at, ..
            })) if Instant::now() < *retry_at => return Err(Err(failure.clone())),
            Some(Slot::InFlight(rx)) => return Ok(rx.clone()),
            Some(Slot::Idle(State::Failed { attempts, .. })) => *attempts,
            _ => 0,
        };
        let (tx, rx) = watch::channel(None);
        slots.insert(hash.to_string(), Slot::InFlight(rx.clone()));
        let this = self.clone();
        let hash = hash.to_string();
        tokio::spawn(async move { this.run(hash, attempts, tx).await });
        Ok(rx)
    }

    /// Make a package ready (joining a materialisation in flight); its link/run
    /// dependencies in the mirror start in the background.
    pub async fn ensure(self: &Arc<Self>, hash: &str) -> Result<PathBuf, Failure> {
        let mut rx = match self.start(hash) {
            Ok(rx) => rx,
            Err(done) => return done,
        };
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return Err(Failure {
                    errno: libc::EIO,
                    message: Arc::new("materialisation task ended".into()),
                });
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        hash: String,
        attempts: u32,
        tx: watch::Sender<Option<Result<PathBuf, Failure>>>,
    ) {
        let Some(&idx) = self.by_hash.get(&hash) else {
            let f = Failure {
                errno: libc::ENOENT,
                message: Arc::new(format!("{hash} is not in mirror {}", self.mirror())),
            };
            self.slots.lock().unwrap().remove(&hash);
            let _ = tx.send(Some(Err(f)));
            return;
        };
        let node = self.packages[idx].node.clone();
        let result = self.materialise(&node).await;
        let state = match &result {
            Ok((path, key, timings, signer)) => State::Ready {
                path: path.clone(),
                key: key.clone(),
                timings: timings.clone(),
                signer: signer.clone(),
            },
            Err(e) => {
                let failure = Failure {
                    errno: errno_of(e),
                    message: Arc::new(e.to_string()),
                };
                crate::metrics::Metrics::inc(&crate::metrics::global().packages_failed, 1);
                let delay = self.backoff * 2u32.saturating_pow(attempts.min(6));
                let full = if failure.errno == libc::ENOSPC {
                    format!(
                        "; the cache file system ({}) is full",
                        self.store.root().display()
                    )
                } else {
                    String::new()
                };
                tracing::error!(
                    "{} from mirror {}: {e}{full} (touching processes get {}; retry after {:?})",
                    node.display(),
                    self.mirror(),
                    std::io::Error::from_raw_os_error(failure.errno),
                    delay
                );
                State::Failed {
                    failure,
                    retry_at: Instant::now() + delay,
                    attempts: attempts + 1,
                }
            }
        };
        self.slots
            .lock()
            .unwrap()
            .insert(hash.clone(), Slot::Idle(state.clone()));
        let _ = tx.send(Some(match state {
            State::Ready { path, .. } => Ok(path),
            State::Failed { failure, .. } => Err(failure),
            _ => unreachable!("final state"),
        }));
    }

    async fn materialise(
        self: &Arc<Self>,
        node: &SpecNode,
    ) -> Result<(PathBuf, String, Option<Timings>, Option<String>), CatalogError> {
        let start = Instant::now();
        // A prefix made earlier for this root needs no mirror access (offline remounts).
        let projection = self.target.projection.template().to_string();
        if let Some((path, entry)) = self.store.find(&node.hash, &self.target.root, &projection) {
            match self.store.check(&entry, false) {
                None => {
                    crate::metrics::Metrics::inc(&crate::metrics::global().cache_hits, 1);
                    tracing::info!(
                        "{}: ready from the cache ({})",
                        node.display(),
                        path.display()
                    );
                    self.start_deps(node);
                    return Ok((path, entry.key, None, entry.signer));
                }
                Some(damage) => {
                    tracing::warn!(
                        "{}: cached prefix {} is damaged ({damage}): dropping it and fetching again",
                        node.display(),
                        entry.key
                    );
                    self.store.remove_entry(&entry.key);
                }
            }
        }
        let meta = self.catalog.meta(node).await?;
        self.start_deps(meta.node());
        let key = prefix_key(
            &meta.tarball_sha256,
            &self.target.root,
            &materialise::relocation_targets(&meta, &self.target),
        );
        if let Some((path, _)) = self.store.lookup(&key) {
            crate::metrics::Metrics::inc(&crate::metrics::global().cache_hits, 1);
            tracing::info!(
                "{}: ready from the cache ({})",
                node.display(),
                path.display()
            );
            return Ok((path, key, None, meta.signer.clone()));
        }
        let package = node.display();
        let staging = self
            .store
            .new_staging(&node.hash)
            .map_err(|e| CatalogError::Install {
                package: package.clone(),
                mirror: self.mirror().to_string(),
                source: Box::new(InstallError::Layout {
                    what: package.clone(),
                    message: e.to_string(),
                }),
            })?;
        let entry = EntryMeta {
            key: key.clone(),
            package: package.clone(),
            hash: node.hash.clone(),
            root: self.target.root.clone(),
            projection: self.target.projection.template().to_string(),
            mirror: self.mirror().to_string(),
            tarball_sha256: meta.tarball_sha256.clone(),
            signer: meta.signer.clone(),
            size: 0,
        };
        let store = self.store.clone();
        let done = materialise::materialise(
            &self.catalog,
            &meta,
            &self.target,
            staging,
            Box::new(move |staged| {
                store.publish(staged, entry).map_err(|e| match e {
                    crate::store::StoreError::Io { path, source } => {
                        InstallError::io(&package, path, source)
                    }
                })
            }),
        )
        .await?;
        let dest = self.store.prefix_path(&key);
        let mut timings = done.timings.clone();
        timings.verify = meta.verify_time;
        timings.total = start.elapsed();
        tracing::info!(
            "{}: Successfully materialised {}\n  {}",
            node.name,
            node.stem(),
            timings
        );
        Ok((dest, key, Some(timings), meta.signer.clone()))
    }

    /// A binary needs its libraries next: start the link/run dependencies in the mirror.
    fn start_deps(self: &Arc<Self>, node: &SpecNode) {
        for e in &node.deps {
            if (e.is("link") || e.is("run")) && self.by_hash.contains_key(&e.hash) {
                let _ = self.start(&e.hash);
            }
        }
    }

    /// A Spack database (format doc 3) naming every package at its prefix under the mount
    /// point, so that Spack can use the mount as an upstream.
    pub fn spack_db(&self) -> Vec<u8> {
        let mut refs: HashMap<&str, u64> = HashMap::new();
        for p in &self.packages {
            for d in &p.node.deps {
                if self.by_hash.contains_key(&d.hash) {
                    *refs.entry(d.hash.as_str()).or_default() += 1;
                }
            }
        }
        let time = self
            .mounted_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut installs = serde_json::Map::new();
        for p in &self.packages {
            let mut spec: Value = p.node.raw.clone();
            if let Some(o) = spec.as_object_mut() {
                o.insert("hash".into(), Value::String(p.node.hash.clone()));
            }
            installs.insert(
                p.node.hash.clone(),
                json!({
                    "spec": spec,
                    "ref_count": refs.get(p.node.hash.as_str()).copied().unwrap_or(0),
                    "path": format!("{}/{}", self.target.root, p.rel_path),
                    "installed": true,
                    "explicit": false,
                    "installation_time": time,
                }),
            );
        }
        serde_json::to_vec(&json!({"database": {"version": "8", "installs": installs}}))
            .expect("JSON serialises")
    }
}

/// The errno a process touching a failed package gets.
pub fn errno_of(e: &CatalogError) -> i32 {
    match e {
        CatalogError::Trust { .. } => libc::EACCES,
        CatalogError::NotInMirror { .. } | CatalogError::NoMatch { .. } => libc::ENOENT,
        CatalogError::Install { source, .. } => match source.as_ref() {
            InstallError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                libc::ENOSPC
            }
            _ => libc::EIO,
        },
        _ => libc::EIO,
    }
}
