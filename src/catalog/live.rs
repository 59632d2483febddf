//! The catalog of a mount: every available package at its path under the mount point, its
//! state (remote, fetching, ready, failed), single-flight materialisation into the store
//! with DAG-aware prefetch and mirror failover, and the index refresh that makes new
//! packages appear (and unused vanished ones leave) without a remount. Callers never block:
//! `ensure` is a future that the FUSE adapter awaits on the runtime while its threads keep
//! serving. Package numbers are stable for the life of the mount.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use hashbrown::{DefaultHashBuilder, HashTable};
use tokio::sync::watch;

use super::materialise::{self, Priority, Target, Timings};
use super::{Catalog, CatalogError};
use crate::buildcache::spec::{NodeText, SpecNode};
use crate::buildcache::table::PackageRef;
use crate::install::InstallError;
use crate::store::{prefix_key, EntryMeta, ReadyPrefix, Store};

/// Why a package cannot be served: what kind of failure (the file system turns it into
/// the errno the touching process gets) and the message the log and `user.spackfs.error`
/// carry.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: Arc<String>,
}

/// The kinds of failure a touching process can tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No mirror holds the package.
    NotFound,
    /// Every mirror failed its trust check.
    Untrusted,
    /// The cache's file system is full.
    NoSpace,
    /// Anything else: mirrors down, corrupt bytes, a bug.
    Failed,
}

impl FailureKind {
    /// The kind's name in metrics (one of `metrics::FAILURE_KINDS`).
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::NotFound => "not_found",
            FailureKind::Untrusted => "untrusted",
            FailureKind::NoSpace => "no_space",
            FailureKind::Failed => "failed",
        }
    }

    /// Words for the log.
    pub fn describe(self) -> &'static str {
        match self {
            FailureKind::NotFound => "ENOENT (not found)",
            FailureKind::Untrusted => "EACCES (not trusted)",
            FailureKind::NoSpace => "ENOSPC (no space left)",
            FailureKind::Failed => "EIO (input/output error)",
        }
    }
}

/// A package's state, for extended attributes and logs.
#[derive(Debug, Clone)]
pub enum State {
    Remote,
    Fetching,
    Ready {
        prefix: ReadyPrefix,
        /// The store key of the prefix.
        key: String,
        timings: Option<Timings>,
        signer: Option<String>,
        /// The mirror it came from.
        mirror: String,
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

/// The listed packages by state (see [`LiveCatalog::census`]).
#[derive(Debug, Default)]
pub struct Census {
    pub listed: usize,
    pub remote: usize,
    pub fetching: usize,
    pub ready: usize,
    pub failed: Vec<FailedPackage>,
}

/// A package whose last materialisation failed.
#[derive(Debug)]
pub struct FailedPackage {
    pub package: Arc<LivePackage>,
    pub failure: Failure,
    /// Until the next attempt is allowed.
    pub retry_in: Duration,
    pub attempts: u32,
}

/// A materialisation in flight: its result once known.
pub type Flight = watch::Receiver<Option<Result<ReadyPrefix, Failure>>>;

enum Slot {
    Idle(State),
    InFlight(Flight),
}

/// A package at its place under the mount point.
#[derive(Debug)]
pub struct LivePackage {
    pub node: PackageRef,
    /// Path relative to the mount point (the projection).
    pub rel_path: Box<str>,
    /// Listed under the mount point now (a package that left every index, unused, is not).
    listed: AtomicBool,
}

impl LivePackage {
    pub fn is_listed(&self) -> bool {
        self.listed.load(Ordering::Relaxed)
    }
}

/// Packages that appeared under the mount point, or left it, after an index refresh.
#[derive(Debug, Default, Clone)]
pub struct NamespaceChange {
    pub added: Vec<usize>,
    pub removed: Vec<usize>,
}

/// What the mount (the file system) is told about changes of the catalog.
pub trait Observer: Send + Sync {
    /// Package `pkg` left the cache: forget its inodes and the kernel's entries. `wait`:
    /// the caller (a request that found the prefix gone, about to answer ESTALE so that
    /// the kernel walks the path again) waits for the kernel to have forgotten them, up to
    /// that long; evictions (under the cache's locks) never wait.
    fn evicted(&self, pkg: usize, wait: Option<Duration>);
    /// Packages appeared or left the mount's listing (`live` answers what they are).
    fn changed(&self, change: &NamespaceChange, live: &LiveCatalog);
}

/// The packages of a mount, by stable number.
#[derive(Default)]
struct Packages {
    list: Vec<Arc<LivePackage>>,
    /// Package numbers by hash.
    by_hash: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Packages {
    fn find(&self, hash: &str) -> Option<usize> {
        let h = self.hasher.hash_one(hash);
        self.by_hash
            .find(h, |&i| self.list[i as usize].node.hash() == hash)
            .map(|&i| i as usize)
    }

    /// Add a package (its hash not yet known); returns its number.
    fn push(&mut self, p: LivePackage) -> usize {
        let h = self.hasher.hash_one(p.node.hash());
        self.list.push(Arc::new(p));
        let (list, hasher) = (&self.list, &self.hasher);
        self.by_hash
            .insert_unique(h, (list.len() - 1) as u32, |&i| {
                hasher.hash_one(list[i as usize].node.hash())
            });
        self.list.len() - 1
    }

    /// Room for `n` more packages.
    fn reserve(&mut self, n: usize) {
        self.list.reserve(n);
        let (list, hasher) = (&self.list, &self.hasher);
        self.by_hash
            .reserve(n, |&i| hasher.hash_one(list[i as usize].node.hash()));
    }

    /// Package `i` with `node` in place of its node (same hash): the old one's table can go.
    fn renode(&mut self, i: usize, node: PackageRef) {
        let old = &self.list[i];
        self.list[i] = Arc::new(LivePackage {
            node,
            rel_path: old.rel_path.clone(),
            listed: AtomicBool::new(old.is_listed()),
        });
    }
}

/// The mount's places of its packages, for relocation: one computation of where a package
/// sits, whoever asks.
struct MountPlacements(Arc<RwLock<Packages>>);

impl materialise::Placements for MountPlacements {
    fn rel_path(&self, hash: &str) -> Option<String> {
        let pk = self.0.read().unwrap();
        pk.find(hash).map(|i| pk.list[i].rel_path.to_string())
    }
}

/// The mount's view of its mirrors.
pub struct LiveCatalog {
    catalog: Arc<Catalog>,
    target: Target,
    store: Arc<Store>,
    packages: Arc<RwLock<Packages>>,
    slots: Mutex<HashMap<String, Slot>>,
    backoff: Duration,
    mounted_at: SystemTime,
    /// The prefix whose use was recorded last, and when.
    last_use: Mutex<(Option<String>, Option<Instant>)>,
    /// The file system's side of evictions and namespace changes (set by the mount).
    observer: std::sync::OnceLock<Box<dyn Observer>>,
}

impl LiveCatalog {
    pub fn new(
        catalog: Arc<Catalog>,
        mut target: Target,
        store: Arc<Store>,
        backoff: Duration,
    ) -> Self {
        let packages = Arc::new(RwLock::new(Packages::default()));
        target.placements = Some(Arc::new(MountPlacements(packages.clone())));
        let live = LiveCatalog {
            catalog,
            target,
            store,
            packages,
            slots: Mutex::new(HashMap::new()),
            backoff,
            mounted_at: SystemTime::now(),
            observer: std::sync::OnceLock::new(),
            last_use: Mutex::new((None, None)),
        };
        live.sync_namespace();
        live
    }

    /// Bring the package list in line with the catalog's namespace: new packages are added
    /// (numbers are never reused), packages that left every index are unlisted unless they
    /// are ready or being fetched (in use, or just used: they never vanish under a user).
    fn sync_namespace(&self) -> NamespaceChange {
        let started = Instant::now();
        let ns = self.catalog.namespace();
        let mut change = NamespaceChange::default();
        let mut pk = self.packages.write().unwrap();
        // Which of the packages known before are still available.
        let known = pk.list.len();
        let mut available = vec![false; known];
        let compilers = self.target.projection.uses_compiler();
        if known == 0 {
            pk.reserve(ns.len());
        }
        for e in ns.available() {
            if let Some(i) = (known > 0).then(|| pk.find(e.node.hash())).flatten() {
                if i < known {
                    available[i] = true;
                }
                if !pk.list[i].listed.swap(true, Ordering::Relaxed) {
                    change.added.push(i);
                }
                // Its row in the new index: the old index's table is not kept for it.
                pk.renode(i, e.node.clone());
                continue;
            }
            // Its compiler (for `{compiler.*}`) from the index, as an install finds it in
            // the package's DAG.
            let compiler = if compilers {
                ns.compiler_of(&e.node)
            } else {
                None
            };
            let rel = match self
                .target
                .projection
                .format_with(e.node.ident(), compiler.as_ref())
            {
                Ok(rel) => rel,
                Err(err) => {
                    tracing::warn!("not listing a package of the index: {err}");
                    continue;
                }
            };
            let i = pk.push(LivePackage {
                node: e.node.clone(),
                rel_path: rel.into_boxed_str(),
                listed: AtomicBool::new(true),
            });
            change.added.push(i);
        }
        let mut slots = self.slots.lock().unwrap();
        for (i, &still) in available.iter().enumerate() {
            if still {
                continue;
            }
            // Gone from every index: kept with its own copy of its row, whether it stays
            // listed (in use) or not.
            let node = pk.list[i].node.detached();
            pk.renode(i, node);
            let p = &pk.list[i];
            if !p.is_listed() {
                continue;
            }
            let busy = matches!(
                slots.get(p.node.hash()),
                Some(Slot::InFlight(_)) | Some(Slot::Idle(State::Ready { .. }))
            );
            if !busy {
                p.listed.store(false, Ordering::Relaxed);
                slots.remove(p.node.hash());
                change.removed.push(i);
            }
        }
        tracing::debug!(
            "mount's packages placed in {:?}: {} added, {} removed",
            started.elapsed(),
            change.added.len(),
            change.removed.len()
        );
        change
    }

    /// Refresh the mirrors' indexes every `ttl` (conditional requests), apply what changed
    /// to the mount, and keep the new indexes for offline use.
    pub fn start_refresh(self: &Arc<Self>, ttl: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.refresh().await;
            }
        });
    }

    /// One index refresh; returns what changed under the mount point.
    pub async fn refresh(self: &Arc<Self>) -> NamespaceChange {
        if !self.catalog.refresh().await {
            tracing::debug!("index refresh: nothing changed");
            return NamespaceChange::default();
        }
        let change = self.sync_namespace();
        tracing::info!(
            "index refresh: {} package(s) appeared, {} left the mount",
            change.added.len(),
            change.removed.len()
        );
        self.keep_indexes_in_background();
        if let Some(o) = self.observer.get() {
            if !change.added.is_empty() || !change.removed.is_empty() {
                o.changed(&change, self);
            }
        }
        change
    }

    /// [`LiveCatalog::keep_indexes`] on a blocking thread (indexes can be large).
    pub fn keep_indexes_in_background(self: &Arc<Self>) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.keep_indexes());
    }

    /// Keep each mirror's verified index in the cache, for mounts while it is unreachable.
    pub fn keep_indexes(&self) {
        for (i, m) in self.catalog.set().mirrors().iter().enumerate() {
            let kept = self.store.index_path(m.url());
            // A file of its own, renamed into place: a concurrent keeper never mixes in.
            let written = kept
                .parent()
                .ok_or_else(|| std::io::Error::other("no index directory"))
                .and_then(tempfile::NamedTempFile::new_in)
                .and_then(|tmp| {
                    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp);
                    match self.catalog.write_kept_index(i, &mut out) {
                        None => return Ok(()),
                        Some(r) => r?,
                    }
                    let tmp = out.into_inner().map_err(|e| e.into_error())?;
                    tmp.persist(&kept).map(drop).map_err(|e| e.error)
                });
            if let Err(e) = written {
                tracing::warn!(
                    "cannot keep the index of {} at {}: {e}",
                    m.url(),
                    kept.display()
                );
            }
        }
    }

    /// Follow the store's evictions: an evicted package goes back to "remote" and the
    /// kernel forgets its entries, so that its next touch materialises it again.
    /// The store's bound is also enforced every few seconds: prefixes kept past it while
    /// in use or just used go once they are not.
    pub fn watch_evictions(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.store.on_evict(Box::new(move |meta| {
            if let Some(this) = weak.upgrade() {
                this.evicted(meta);
            }
        }));
        if self.store.bound().is_none() {
            return;
        }
        let store = Arc::downgrade(&self.store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                let r = tokio::task::spawn_blocking(move || store.enforce_bound()).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!("enforcing the cache bound: {e}");
                }
            }
        });
    }

    fn evicted(&self, meta: &EntryMeta) {
        let Some(idx) = self.index_of(&meta.hash) else {
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
                if let Some(o) = self.observer.get() {
                    o.evicted(idx, None);
                }
            }
        }
    }

    /// Set the file system's side of evictions and namespace changes.
    pub fn set_observer(&self, o: Box<dyn Observer>) {
        let _ = self.observer.set(o);
    }

    fn index_of(&self, hash: &str) -> Option<usize> {
        self.packages.read().unwrap().find(hash)
    }

    /// Package number `pkg`.
    pub fn package(&self, pkg: usize) -> Option<Arc<LivePackage>> {
        self.packages.read().unwrap().list.get(pkg).cloned()
    }

    /// Every package (listed or not), by number.
    pub fn packages(&self) -> Vec<Arc<LivePackage>> {
        self.packages.read().unwrap().list.clone()
    }

    /// Pin the ready prefix of package `pkg` against eviction, while the guard lives.
    pub fn pin(&self, pkg: usize) -> Option<crate::store::Pin> {
        let p = self.package(pkg)?;
        let hash = p.node.hash();
        let key = match self.slots.lock().unwrap().get(hash) {
            Some(Slot::Idle(State::Ready { key, .. })) => key.clone(),
            _ => return None,
        };
        self.store.pin(&key)
    }

    /// The mirrors, space-separated, for logs and attributes.
    pub fn mirror(&self) -> String {
        self.catalog.mirror()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The mirrors whose index lists `hash`, in the order they are asked (space-separated).
    pub fn listing_mirrors(&self, hash: &str) -> String {
        let mask = self.catalog.namespace().listed(hash);
        self.catalog
            .set()
            .mirrors()
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1u64 << i) != 0)
            .map(|(_, m)| m.url())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn root(&self) -> &str {
        &self.target.root
    }

    /// When the mount was made.
    pub fn mounted_at(&self) -> SystemTime {
        self.mounted_at
    }

    /// How many listed packages are in each state, and which failed.
    pub fn census(&self) -> Census {
        let pk = self.packages.read().unwrap();
        let slots = self.slots.lock().unwrap();
        let mut c = Census::default();
        for p in pk.list.iter().filter(|p| p.is_listed()) {
            c.listed += 1;
            match slots.get(p.node.hash()) {
                None => c.remote += 1,
                Some(Slot::InFlight(_)) => c.fetching += 1,
                Some(Slot::Idle(State::Ready { .. })) => c.ready += 1,
                Some(Slot::Idle(State::Remote | State::Fetching)) => c.remote += 1,
                Some(Slot::Idle(State::Failed {
                    failure,
                    retry_at,
                    attempts,
                })) => c.failed.push(FailedPackage {
                    package: p.clone(),
                    failure: failure.clone(),
                    retry_in: retry_at.saturating_duration_since(Instant::now()),
                    attempts: *attempts,
                }),
            }
        }
        c
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
    pub fn ready_path(&self, hash: &str) -> Option<ReadyPrefix> {
        match self.slots.lock().unwrap().get(hash) {
            Some(Slot::Idle(State::Ready { prefix, .. })) => Some(prefix.clone()),
            _ => None,
        }
    }

    /// Package `pkg` was found ready but its prefix is gone from the cache (evicted or
    /// removed by another process, e.g. `spackfs cache gc|verify`): forget it, so that its
    /// next touch materialises it again. Returns whether it was lost.
    pub fn lost(&self, pkg: usize) -> bool {
        let Some(p) = self.package(pkg) else {
            return false;
        };
        let mut slots = self.slots.lock().unwrap();
        let gone = matches!(
            slots.get(p.node.hash()),
            Some(Slot::Idle(State::Ready { prefix, .. })) if !prefix.path().is_dir()
        );
        if gone {
            slots.remove(p.node.hash());
            drop(slots);
            tracing::info!(
                "{}: its cached prefix was removed; it will be fetched again",
                p.node.display()
            );
            if let Some(o) = self.observer.get() {
                // The kernel retries the walk once on ESTALE: it must not find the old
                // entries then. Bounded, so that a kernel lock held by a process waiting
                // for a busy FUSE thread cannot hold this one forever.
                o.evicted(pkg, Some(Duration::from_millis(500)));
            }
        }
        gone
    }

    /// Is package `pkg` ready (as far as this mount knows)?
    pub fn is_ready(&self, pkg: usize) -> bool {
        self.package(pkg)
            .is_some_and(|p| self.ready_path(p.node.hash()).is_some())
    }

    /// Record a use of package `pkg` for the cache's LRU order (and its grace from
    /// eviction). A prefix used again and again with no other use in between is recorded
    /// at most once a second (no syscall in hot loops).
    pub fn note_use(&self, pkg: usize) {
        let Some(p) = self.package(pkg) else {
            return;
        };
        let key = match self.slots.lock().unwrap().get(p.node.hash()) {
            Some(Slot::Idle(State::Ready { key, .. })) => key.clone(),
            _ => return,
        };
        let now = Instant::now();
        let mut last = self.last_use.lock().unwrap();
        let (latest, at) = &mut *last;
        if latest.as_deref() == Some(key.as_str())
            && at.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        *latest = Some(key.clone());
        *at = Some(now);
        drop(last);
        self.store.touch(&key);
    }

    /// Start materialising a package unless it is ready, in flight, or failed recently;
    /// returns the flight to wait on, or the final result.
    pub fn start(self: &Arc<Self>, hash: &str) -> Result<Flight, Result<ReadyPrefix, Failure>> {
        self.start_as(hash, Priority::Foreground)
    }

    /// [`LiveCatalog::start`], the work done at `priority` (a flight keeps the priority it
    /// started with).
    fn start_as(
        self: &Arc<Self>,
        hash: &str,
        priority: Priority,
    ) -> Result<Flight, Result<ReadyPrefix, Failure>> {
        let mut slots = self.slots.lock().unwrap();
        let attempts = match slots.get(hash) {
            Some(Slot::Idle(State::Ready { prefix, .. })) => return Err(Ok(prefix.clone())),
            Some(Slot::Idle(State::Failed {
                failure, retry_at, ..
            })) if Instant::now() < *retry_at => return Err(Err(failure.clone())),
            // A flight whose task is gone without an answer (it cannot be, but if it were,
            // the package must not stay in flight forever): start again.
            Some(Slot::InFlight(rx)) if rx.has_changed().is_ok() => return Ok(rx.clone()),
            Some(Slot::InFlight(_)) => 0,
            Some(Slot::Idle(State::Failed { attempts, .. })) => *attempts,
            _ => 0,
        };
        let (tx, rx) = watch::channel(None);
        slots.insert(hash.to_string(), Slot::InFlight(rx.clone()));
        let this = self.clone();
        let hash = hash.to_string();
        tokio::spawn(async move { this.run(hash, attempts, priority, tx).await });
        Ok(rx)
    }

    /// Make a package ready (joining a materialisation in flight); its link/run
    /// dependencies in the mirror start in the background.
    pub async fn ensure(self: &Arc<Self>, hash: &str) -> Result<ReadyPrefix, Failure> {
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
                    kind: FailureKind::Failed,
                    message: Arc::new("materialisation task ended".into()),
                });
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        hash: String,
        attempts: u32,
        priority: Priority,
        tx: watch::Sender<Option<Result<ReadyPrefix, Failure>>>,
    ) {
        let package = self.index_of(&hash).and_then(|i| self.package(i));
        let Some(package) = package.filter(|p| p.is_listed()) else {
            let f = Failure {
                kind: FailureKind::NotFound,
                message: Arc::new(format!("{hash} is not in {}", self.catalog.describe())),
            };
            self.slots.lock().unwrap().remove(&hash);
            let _ = tx.send(Some(Err(f)));
            return;
        };
        let shown = package.node.display();
        // Its spec in full (the dependency edges are read from its index now).
        let node = package.node.spec().map_err(|source| {
            CatalogError::Mirror(crate::mirror::MirrorError::Format {
                mirror: self.catalog.mirror(),
                source,
            })
        });
        // A panic below (a bug, or a library misbehaving on hostile input) is a failure of
        // this package like any other: it must not leave the package in flight forever.
        let materialised = async {
            match &node {
                Ok(node) => self.materialise(node, priority).await,
                Err(_) => Err(CatalogError::Internal {
                    package: shown.clone(),
                    message: "no spec".into(),
                }),
            }
        };
        let result = match std::panic::AssertUnwindSafe(materialised)
            .catch_unwind()
            .await
        {
            Ok(r) => node.and(r),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                Err(CatalogError::Internal {
                    package: shown.clone(),
                    message: format!("materialisation panicked: {what}"),
                })
            }
        };
        let state = match &result {
            Ok(ready) => ready.clone(),
            Err(e) => {
                let failure = Failure {
                    kind: failure_kind(e),
                    message: Arc::new(e.to_string()),
                };
                crate::metrics::global()
                    .package_failed(failure.kind.label(), &format!("{shown}: {e}"));
                let delay = self.backoff * 2u32.saturating_pow(attempts.min(6));
                let full = if failure.kind == FailureKind::NoSpace {
                    format!(
                        "; the cache file system ({}) is full",
                        self.store.root().display()
                    )
                } else {
                    String::new()
                };
                tracing::error!(
                    "{}: {e}{full} (touching processes get {}; retry after {:?})",
                    shown,
                    failure.kind.describe(),
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
            State::Ready { prefix, .. } => Ok(prefix),
            State::Failed { failure, .. } => Err(failure),
            _ => unreachable!("final state"),
        }));
    }

    async fn materialise(
        self: &Arc<Self>,
        node: &SpecNode,
        priority: Priority,
    ) -> Result<State, CatalogError> {
        let start = Instant::now();
        // A prefix made earlier for this root needs no mirror access (offline remounts).
        let projection = self.target.projection.template().to_string();
        if let Some((prefix, entry)) = self.store.find(&node.hash, &self.target.root, &projection) {
            match self.store.check(&entry, false) {
                None => {
                    crate::metrics::global().cache_hits.inc();
                    tracing::info!(
                        "{}: ready from the cache ({})",
                        node.display(),
                        prefix.path().display()
                    );
                    self.start_deps(node);
                    return Ok(State::Ready {
                        prefix,
                        key: entry.key,
                        timings: None,
                        signer: entry.signer,
                        mirror: entry.mirror,
                    });
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
        self.catalog
            .fetch(node, |mirror, meta| async move {
                let fetched = start.elapsed();
                self.start_deps(meta.node());
                let key = prefix_key(
                    &meta.tarball_sha256,
                    &self.target.root,
                    &materialise::relocation_targets(&meta, &self.target),
                );
                if let Some((prefix, _)) = self.store.lookup(&key) {
                    crate::metrics::global().cache_hits.inc();
                    tracing::info!(
                        "{}: ready from the cache ({})",
                        node.display(),
                        prefix.path().display()
                    );
                    return Ok(State::Ready {
                        prefix,
                        key,
                        timings: None,
                        signer: meta.signer.clone(),
                        mirror: mirror.url().to_string(),
                    });
                }
                let package = node.display();
                let staging = self.store.new_staging(&node.hash).map_err(|e| {
                    let crate::store::StoreError::Io { path, source } = e;
                    CatalogError::Install {
                        package: package.clone(),
                        mirror: mirror.url().to_string(),
                        source: Box::new(InstallError::io(&package, path, source)),
                    }
                })?;
                let entry = EntryMeta {
                    key: key.clone(),
                    package: package.clone(),
                    hash: node.hash.clone(),
                    root: self.target.root.clone(),
                    projection: self.target.projection.template().to_string(),
                    mirror: mirror.url().to_string(),
                    tarball_sha256: meta.tarball_sha256,
                    signer: meta.signer.clone(),
                    size: 0,
                };
                let store = self.store.clone();
                let done = materialise::materialise(
                    &mirror,
                    &meta,
                    &self.target,
                    staging,
                    Box::new(move |relocated| {
                        store.publish(relocated, entry).map_err(|e| match e {
                            crate::store::StoreError::Io { path, source } => {
                                InstallError::io(&package, path, source)
                            }
                        })
                    }),
                    priority,
                )
                .await?;
                let mut timings = done.timings.clone();
                timings.verify = meta.verify_time;
                timings.fetch = fetched.saturating_sub(meta.verify_time);
                timings.total = start.elapsed();
                timings.observe(crate::metrics::global());
                tracing::info!(
                    "{}: Successfully materialised {} from {}\n  {}",
                    node.name,
                    node.stem(),
                    mirror.url(),
                    timings
                );
                Ok(State::Ready {
                    prefix: done.prefix,
                    key,
                    timings: Some(timings),
                    signer: meta.signer.clone(),
                    mirror: mirror.url().to_string(),
                })
            })
            .await
    }

    /// A binary needs its libraries next: start the link/run dependencies in the mirror.
    fn start_deps(self: &Arc<Self>, node: &SpecNode) {
        for e in &node.deps {
            if (e.is("link") || e.is("run")) && self.index_of(&e.hash).is_some() {
                let _ = self.start_as(&e.hash, Priority::Background);
            }
        }
    }

    /// Write a Spack database (format doc 3) naming every package at its prefix under the
    /// mount point, so that Spack can use the mount as an upstream, to `file`. Streamed
    /// record by record: each spec is read back from where its index kept it, and its
    /// dependency edges read from that text as it goes by. A record's `ref_count` (how many
    /// listed packages depend on it) is known only once every record is written: each is
    /// written as a number right-aligned in a field of spaces (JSON allows spaces before a
    /// value), filled in at the end.
    pub fn write_spack_db(&self, file: &std::fs::File) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        const REF_FIELD: &str = r#""ref_count":"#;
        const REF_WIDTH: usize = 10;
        let listed: Vec<(usize, Arc<LivePackage>)> = {
            let pk = self.packages.read().unwrap();
            (pk.list.iter().enumerate())
                .filter(|(_, p)| p.is_listed())
                .map(|(i, p)| (i, p.clone()))
                .collect()
        };
        let time = self
            .mounted_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let time = serde_json::to_string(&time)?;
        // Dependents (listed) per hash, and where each record's count goes.
        let mut refs: hashbrown::HashMap<Box<str>, u64, DefaultHashBuilder> =
            hashbrown::HashMap::default();
        let mut fields: Vec<u64> = Vec::with_capacity(listed.len());
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        crate::buildcache::index::write_database(
            listed.iter().map(|(_, p)| &p.node),
            |i, _, spec, at| {
                // A spec whose edges cannot be read counts for none: the package's own
                // first touch says why.
                let edges = std::str::from_utf8(spec)
                    .ok()
                    .and_then(|t| NodeText::parse(t, "").ok());
                for d in edges.iter().flat_map(|e| &e.deps) {
                    *refs.entry_ref(d.hash.as_ref()).or_default() += 1;
                }
                fields.push(at + REF_FIELD.len() as u64);
                let path = serde_json::Value::from(format!(
                    "{}/{}",
                    self.target.root, listed[i].1.rel_path
                ));
                format!(
                    r#"{REF_FIELD}{:>REF_WIDTH$},"path":{path},"installed":true,"explicit":false,"installation_time":{time}"#,
                    0
                )
            },
            &mut out,
        )?;
        out.flush()?;
        drop(out);
        for ((_, p), at) in listed.iter().zip(&fields) {
            if let Some(n) = refs.get(p.node.hash()) {
                file.write_all_at(format!("{n:>REF_WIDTH$}").as_bytes(), *at)?;
            }
        }
        Ok(())
    }
}

/// What kind of failure an error is for a touching process: no space when the cache is
/// full, untrusted when every mirror failed the trust check, not found when no mirror has
/// the package, else failed.
pub fn failure_kind(e: &CatalogError) -> FailureKind {
    let attempts = e.attempts();
    let full = attempts.iter().any(|a| {
        matches!(a, CatalogError::Install { source, .. }
            if matches!(source.as_ref(), InstallError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull))
    });
    if full {
        FailureKind::NoSpace
    } else if !attempts.is_empty()
        && attempts
            .iter()
            .all(|a| matches!(a, CatalogError::Mirror(m) if m.is_trust()))
    {
        FailureKind::Untrusted
    } else if e.is_absent() {
        FailureKind::NotFound
    } else {
        FailureKind::Failed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::testing::TinyMirror;
    use crate::transport::fault::Fault;

    /// A materialisation that panics is a failure like any other: the touching process
    /// gets EIO, the state says why, and the next touch after the back-off succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_materialisation_fails_and_is_retried() {
        let m = TinyMirror::new();
        let cache = tempfile::tempdir().unwrap();
        let (live, faults) = m
            .live(
                cache.path(),
                "/tmp/spackfs-tiny",
                Duration::from_millis(100),
            )
            .await;
        faults.set(&m.tarball, Fault::Panic, Some(1));
        let failure = tokio::time::timeout(Duration::from_secs(10), live.ensure(&m.hash))
            .await
            .expect("no hang")
            .expect_err("the panic is a failure");
        assert_eq!(failure.kind, super::FailureKind::Failed);
        assert!(failure.message.contains("panic"), "{}", failure.message);
        assert_eq!(live.state(&m.hash).name(), "failed");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let path = tokio::time::timeout(Duration::from_secs(10), live.ensure(&m.hash))
            .await
            .expect("no hang")
            .expect("retried after the back-off");
        assert!(path.path().join("bin/hello.sh").is_file());
        assert_eq!(faults.count(&m.tarball), 2);
    }
}
