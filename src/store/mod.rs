//! The on-disk cache of ready prefixes, bounded, persistent and crash-safe.
//!
//! Layout: `prefixes/<key>/` holds a relocated prefix, published by one rename from
//! `staging/`, then `digests/<key>.json` (per-file digests) and only then
//! `meta/<key>.json` (package, install root, size): an entry exists once its meta does.
//! `aliases/<id>` names the key of (package hash, install root, projection), so that a
//! remount finds its prefixes without the mirror. The meta file's mtime is the entry's last
//! use, so the bookkeeping is the directory itself: nothing to rebuild after a crash but
//! orphans to drop. `locks/<key>` is
//! held shared by every process using a prefix (pins); eviction needs it exclusively.
//! `lock` serialises publishing and eviction across processes. The key is derived from
//! what determines the bytes: the tarball's sha256 and the relocation target.

pub mod digest;
pub mod staging;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::buildcache::checksum::Sha256;

pub use digest::FileRecord;
pub use staging::{Published, ReadyPrefix, Relocated, Staging};

/// Errors of the store, naming the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the store knows about a published prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMeta {
    pub key: String,
    /// `name@version/hash7`.
    pub package: String,
    pub hash: String,
    /// The install root it was relocated for, and the projection template.
    pub root: String,
    pub projection: String,
    pub mirror: String,
    pub tarball_sha256: Sha256,
    pub signer: Option<String>,
    /// Disk usage in bytes.
    pub size: u64,
}

/// One entry as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub meta: EntryMeta,
    pub last_use: SystemTime,
    pub pinned: bool,
}

/// Size bound of the cache.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// High watermark: eviction starts past it.
    pub max_bytes: u64,
    /// Eviction frees space down to this.
    pub low_bytes: u64,
    /// A prefix used more recently than this is not evicted (a process may be between its
    /// lookup and its open, or loading libraries): when everything is in use or just used,
    /// the bound is overshot (and logged) rather than a process failed.
    pub grace: Duration,
}

/// How long a used prefix is safe from eviction by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

impl Bound {
    /// A bound with the low watermark at 75 % and the default grace.
    pub fn new(max_bytes: u64) -> Self {
        Bound {
            max_bytes,
            low_bytes: max_bytes / 4 * 3,
            grace: DEFAULT_GRACE,
        }
    }
}

/// A cache directory.
pub struct Store {
    root: PathBuf,
    bound: Option<Bound>,
    /// In-process pins: key → (count, the shared lock held while count > 0).
    pins: Mutex<HashMap<String, (usize, File)>>,
    /// Told about every eviction (the mount forgets the package).
    evict_hooks: Mutex<Vec<EvictHook>>,
    /// The cache is over its bound (logged once until it is not).
    overshoot: Mutex<bool>,
}

/// A pin on a cache entry: it is not evicted while the guard lives.
pub struct Pin {
    store: Arc<Store>,
    key: String,
}

impl Pin {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.store.unpin(&self.key);
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pin").field(&self.key).finish()
    }
}

/// A callback run for every evicted entry.
pub type EvictHook = Box<dyn Fn(&EntryMeta) + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Open (and create) the cache at `root`: remove staging leftovers of dead processes
    /// and prefixes that were never recorded (a crash between rename and bookkeeping).
    pub fn open(root: &Path, bound: Option<Bound>) -> Result<Self, StoreError> {
        for d in [
            "prefixes", "staging", "meta", "digests", "aliases", "locks", "index",
        ] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let store = Store {
            root: std::path::absolute(root).map_err(io(root))?,
            bound,
            pins: Mutex::new(HashMap::new()),
            evict_hooks: Mutex::new(Vec::new()),
            overshoot: Mutex::new(false),
        };
        let _guard = store.global_lock()?;
        let staging = store.staging_dir();
        staging::clean_abandoned(&staging).map_err(io(&staging))?;
        let prefixes = store.root.join("prefixes");
        for e in std::fs::read_dir(&prefixes)
            .map_err(io(&prefixes))?
            .flatten()
        {
            let key = e.file_name().to_string_lossy().into_owned();
            if store.read_meta(&key).is_none() {
                tracing::warn!(
                    "cache: dropping {key}, a prefix without bookkeeping (interrupted publish?)"
                );
                remove_tree(&e.path());
            }
        }
        for e in std::fs::read_dir(store.root.join("meta"))
            .map_err(io(&prefixes))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".json") {
                Some(key) if !name.starts_with('.') && store.prefix_path(key).is_dir() => {}
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Integrity records and aliases of entries that are gone.
        for (dir, key_of) in [
            (
                "digests",
                (|n: &str, _: &Path| n.strip_suffix(".json").map(str::to_string))
                    as fn(&str, &Path) -> Option<String>,
            ),
            ("aliases", |_: &str, p: &Path| {
                std::fs::read_to_string(p)
                    .ok()
                    .map(|k| k.trim().to_string())
            }),
        ] {
            for e in std::fs::read_dir(store.root.join(dir))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                let keep = !name.starts_with('.')
                    && key_of(&name, &e.path()).is_some_and(|k| store.meta_path(&k).is_file());
                if !keep {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Every entry is findable by its alias (repairs a cache whose alias was lost).
        for l in store.list() {
            let alias = store.alias_path(&l.meta.hash, &l.meta.root, &l.meta.projection);
            if !alias.exists() {
                write_atomic(&alias, l.meta.key.as_bytes())?;
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Run `hook` for every entry this process evicts.
    pub fn on_evict(&self, hook: EvictHook) {
        self.evict_hooks.lock().unwrap().push(hook);
    }

    pub fn bound(&self) -> Option<Bound> {
        self.bound
    }

    fn global_lock(&self) -> Result<File, StoreError> {
        let p = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        f.lock().map_err(io(&p))?;
        Ok(f)
    }

    /// A new private staging directory (named after this process, so that a later
    /// `open` by another process knows whether it is abandoned).
    pub fn new_staging(&self, hint: &str) -> Result<Staging, StoreError> {
        let dir = self.staging_dir();
        Staging::new_in(&dir, hint).map_err(io(&dir))
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// The directory of a prefix with this key.
    pub fn prefix_path(&self, key: &str) -> PathBuf {
        self.root.join("prefixes").join(key)
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.root.join("meta").join(format!("{key}.json"))
    }

    /// The kept index of a mirror (for offline mounts).
    pub fn index_path(&self, mirror: &str) -> PathBuf {
        let id = hex::encode(&sha2::Sha256::digest(mirror.as_bytes())[..8]);
        self.root.join("index").join(format!("{id}.json"))
    }

    fn digests_path(&self, key: &str) -> PathBuf {
        self.root.join("digests").join(format!("{key}.json"))
    }

    fn alias_path(&self, hash: &str, root: &str, projection: &str) -> PathBuf {
        let mut h = sha2::Sha256::new();
        for part in [hash, root, projection] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        self.root
            .join("aliases")
            .join(hex::encode(&h.finalize()[..16]))
    }

    fn read_meta(&self, key: &str) -> Option<EntryMeta> {
        let b = std::fs::read(self.meta_path(key)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// The ready prefix with this key, if published (and marks it used).
    pub fn lookup(&self, key: &str) -> Option<(ReadyPrefix, EntryMeta)> {
        let meta = self.read_meta(key)?;
        let p = self.prefix_path(key);
        if !p.is_dir() {
            return None;
        }
        self.touch(key);
        Some((staging::already(p), meta))
    }

    /// The ready prefix of package `hash` relocated for `root` with `projection`, found
    /// without the mirror (offline remounts).
    pub fn find(
        &self,
        hash: &str,
        root: &str,
        projection: &str,
    ) -> Option<(ReadyPrefix, EntryMeta)> {
        let key = std::fs::read_to_string(self.alias_path(hash, root, projection)).ok()?;
        let (path, meta) = self.lookup(key.trim())?;
        (meta.hash == hash && meta.root == root && meta.projection == projection)
            .then_some((path, meta))
    }

    /// Record a use of an entry (its meta file's mtime is its last use).
    pub fn touch(&self, key: &str) {
        if let Ok(f) = File::options().write(true).open(self.meta_path(key)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Publish a finished prefix from staging: make room under the bound, rename it into
    /// place, then record it. Returns false when the key was published meanwhile.
    pub fn publish(
        &self,
        mut relocated: Relocated,
        mut meta: EntryMeta,
    ) -> Result<Published, StoreError> {
        let records = relocated.records();
        let staged = relocated.prefix();
        let (files, size) = records.map_err(io(staged))?;
        meta.size = size;
        let _guard = self.global_lock()?;
        let dest = self.prefix_path(&meta.key);
        if dest.is_dir() && self.read_meta(&meta.key).is_some() {
            return Ok(Published {
                prefix: staging::already(dest),
                fresh: false,
            });
        }
        if let Some(b) = self.bound {
            let target = b.low_bytes.saturating_sub(size);
            let total = self.total_size();
            if total + size > b.max_bytes {
                self.evict_to(target, Some(&meta.key), b.grace);
                self.note_overshoot(self.total_size() + size, b);
            }
            if size > b.max_bytes {
                tracing::warn!(
                    "cache: {} ({} bytes) alone is larger than the cache bound ({} bytes)",
                    meta.package,
                    size,
                    b.max_bytes
                );
            }
        }
        if dest.exists() {
            remove_tree(&dest);
        }
        std::fs::rename(staged, &dest).map_err(io(&dest))?;
        write_atomic(
            &self.digests_path(&meta.key),
            &serde_json::to_vec(&files).expect("digests serialise"),
        )?;
        // The alias before the meta: the meta commits the entry, and a crash before it
        // leaves only orphans that `open` drops.
        write_atomic(
            &self.alias_path(&meta.hash, &meta.root, &meta.projection),
            meta.key.as_bytes(),
        )?;
        write_atomic(
            &self.meta_path(&meta.key),
            &serde_json::to_vec(&meta).expect("meta serialises"),
        )?;
        Ok(Published {
            prefix: staging::already(dest),
            fresh: true,
        })
    }

    /// Every entry, least recently used first.
    pub fn list(&self) -> Vec<Listed> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.root.join("meta")) else {
            return out;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            let Some(meta) = self.read_meta(key) else {
                continue;
            };
            let last_use = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let pinned = self.is_pinned(key);
            out.push(Listed {
                meta,
                last_use,
                pinned,
            });
        }
        out.sort_by_key(|l| l.last_use);
        out
    }

    /// Total disk usage of the recorded entries.
    pub fn total_size(&self) -> u64 {
        self.list().iter().map(|l| l.meta.size).sum()
    }

    fn lock_file(&self, key: &str) -> Result<File, StoreError> {
        let p = self.root.join("locks").join(key);
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))
    }

    /// Is the entry in use by this or another process?
    pub fn is_pinned(&self, key: &str) -> bool {
        if self
            .pins
            .lock()
            .unwrap()
            .get(key)
            .is_some_and(|(n, _)| *n > 0)
        {
            return true;
        }
        match self.lock_file(key) {
            Ok(f) => {
                let free = f.try_lock().is_ok();
                if free {
                    let _ = f.unlock();
                }
                !free
            }
            Err(_) => false,
        }
    }

    /// Keep an entry from eviction (an open file) for as long as the guard lives. Never
    /// waits: an entry being evicted by another process right now is not pinned (`None`;
    /// its files are going, and the caller will see them gone).
    pub fn pin(self: &Arc<Self>, key: &str) -> Option<Pin> {
        let guard = || Pin {
            store: self.clone(),
            key: key.to_string(),
        };
        if let Some((n, _)) = self.pins.lock().unwrap().get_mut(key) {
            *n += 1;
            return Some(guard());
        }
        // The lock file is taken without the pins' mutex held: no thread waits on it.
        let f = self.lock_file(key).ok()?;
        if f.try_lock_shared().is_err() {
            return None;
        }
        let mut pins = self.pins.lock().unwrap();
        match pins.get_mut(key) {
            // Another thread pinned it meanwhile: count on its lock, drop ours.
            Some((n, _)) => *n += 1,
            None => {
                pins.insert(key.to_string(), (1, f));
            }
        }
        Some(guard())
    }

    /// Evict down to the low watermark if the cache is over its bound (entries in use or
    /// just used stay). Run from time to time: pins and uses end without a publish.
    pub fn enforce_bound(&self) -> Result<Vec<EntryMeta>, StoreError> {
        let Some(b) = self.bound else {
            return Ok(Vec::new());
        };
        if self.total_size() <= b.max_bytes {
            *self.overshoot.lock().unwrap() = false;
            return Ok(Vec::new());
        }
        let _guard = self.global_lock()?;
        let evicted = self.evict_to(b.low_bytes, None, b.grace);
        self.note_overshoot(self.total_size(), b);
        Ok(evicted)
    }

    /// Log once when the cache stays over its bound because everything is in use.
    fn note_overshoot(&self, total: u64, b: Bound) {
        let mut over = self.overshoot.lock().unwrap();
        if total > b.max_bytes && !*over {
            tracing::warn!(
                "cache: {total} bytes, over its bound of {} bytes: every other prefix is in use or was used in the last {:?}; it shrinks once they are not",
                b.max_bytes,
                b.grace
            );
        }
        *over = total > b.max_bytes;
    }

    fn unpin(&self, key: &str) {
        let mut pins = self.pins.lock().unwrap();
        if let Some((n, _)) = pins.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                pins.remove(key);
            }
        }
    }

    /// Evict least recently used, unpinned entries until the total is at most `target`.
    /// Returns the evicted entries.
    pub fn evict_to(&self, target: u64, keep: Option<&str>, min_idle: Duration) -> Vec<EntryMeta> {
        let mut evicted = Vec::new();
        let entries = self.list();
        let mut total: u64 = entries.iter().map(|l| l.meta.size).sum();
        let now = SystemTime::now();
        for l in entries {
            if total <= target {
                break;
            }
            if l.pinned || Some(l.meta.key.as_str()) == keep {
                continue;
            }
            // Used just now: a process may be about to open its files.
            if now.duration_since(l.last_use).unwrap_or_default() < min_idle {
                continue;
            }
            let Ok(lock) = self.lock_file(&l.meta.key) else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue;
            }
            self.remove_entry(&l.meta.key);
            total = total.saturating_sub(l.meta.size);
            tracing::info!(
                "cache: evicted {} ({} bytes, {})",
                l.meta.package,
                l.meta.size,
                l.meta.key
            );
            let metrics = crate::metrics::global();
            metrics.cache_evictions.inc();
            metrics.cache_evicted_bytes.inc_by(l.meta.size);
            for hook in self.evict_hooks.lock().unwrap().iter() {
                hook(&l.meta);
            }
            evicted.push(l.meta);
        }
        evicted
    }

    /// Remove an entry: bookkeeping first, then the tree (moved aside, so that no reader
    /// ever sees half of it).
    pub fn remove_entry(&self, key: &str) {
        if let Some(m) = self.read_meta(key) {
            let alias = self.alias_path(&m.hash, &m.root, &m.projection);
            if std::fs::read_to_string(&alias).is_ok_and(|k| k.trim() == key) {
                let _ = std::fs::remove_file(alias);
            }
        }
        let _ = std::fs::remove_file(self.meta_path(key));
        let _ = std::fs::remove_file(self.digests_path(key));
        let p = self.prefix_path(key);
        let aside = self
            .staging_dir()
            .join(format!("{}.evicted.{key}", std::process::id()));
        if std::fs::rename(&p, &aside).is_ok() {
            remove_tree(&aside);
        } else {
            remove_tree(&p);
        }
    }

    /// Evict down to `target` bytes under the global lock (`spackfs cache gc`).
    pub fn gc(&self, target: u64) -> Result<Vec<EntryMeta>, StoreError> {
        let _guard = self.global_lock()?;
        Ok(self.evict_to(target, None, Duration::ZERO))
    }

    /// Recheck every entry (digests when `deep`); remove and return the damaged ones.
    pub fn verify(&self, deep: bool) -> Result<Vec<(EntryMeta, String)>, StoreError> {
        let mut bad = Vec::new();
        for l in self.list() {
            if let Some(reason) = self.check(&l.meta, deep) {
                let _guard = self.global_lock()?;
                self.remove_entry(&l.meta.key);
                bad.push((l.meta, reason));
            }
        }
        Ok(bad)
    }

    /// What is wrong with an entry, if anything.
    pub fn check(&self, meta: &EntryMeta, deep: bool) -> Option<String> {
        let files: Vec<FileRecord> = match std::fs::read(self.digests_path(&meta.key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(f) => f,
            None => return Some("its integrity record is missing or unreadable".into()),
        };
        digest::check(&self.prefix_path(&meta.key), &files, deep)
    }
}

/// The cache key of a prefix: sha256 of the tarball checksum and the relocation target.
pub fn prefix_key(tarball_sha256: &Sha256, root: &str, target_prefixes: &[String]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(tarball_sha256.hex().as_bytes());
    h.update([0]);
    h.update(root.as_bytes());
    for p in target_prefixes {
        h.update([0]);
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Write a file by rename, so that readers see all of it or nothing.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Remove a tree (or a file), making directories writable first if needed.
pub fn remove_tree(p: &Path) {
    if std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()) {
        let _ = std::fs::remove_file(p);
        return;
    }
    if std::fs::remove_dir_all(p).is_ok() {
        return;
    }
    let _ = make_writable(p);
    let _ = std::fs::remove_dir_all(p);
}

fn make_writable(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(p)?;
    if m.is_dir() {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        for e in std::fs::read_dir(p)?.flatten() {
            make_writable(&e.path())?;
        }
    }
    Ok(())
}

/// Parse a cache size: bytes with units (`10GiB`, `500MB`) or a percentage of the file
/// system holding `dir` (`20%`).
pub fn parse_size(s: &str, dir: &Path) -> Result<u64, String> {
    if let Some(p) = s.trim().strip_suffix('%') {
        let pct: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("bad percentage {s:?}"))?;
        if !(0.0..=100.0).contains(&pct) {
            return Err(format!("percentage {s:?} is not between 0 and 100"));
        }
        let mut probe = dir.to_path_buf();
        while !probe.exists() {
            if !probe.pop() {
                break;
            }
        }
        let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: zeroed statvfs is a valid out-parameter; `c` is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above; statvfs only writes into `st`.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(format!("cannot statvfs {}", probe.display()));
        }
        let total = st.f_blocks * st.f_frsize;
        return Ok((total as f64 * pct / 100.0) as u64);
    }
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let d = std::env::temp_dir();
        assert_eq!(parse_size("10MiB", &d).unwrap(), 10 << 20);
        assert_eq!(parse_size("1000", &d).unwrap(), 1000);
        assert!(parse_size("50%", &d).unwrap() > 0);
        assert!(parse_size("150%", &d).is_err());
        assert!(parse_size("lots", &d).is_err());
    }
}
