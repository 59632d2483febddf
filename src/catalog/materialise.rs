//! Materialisation: turn a package of the catalog into a ready prefix under an install root.
//! The manifest is verified (catalog), the tarball streamed from the transport into the
//! blocking install pipeline (hash → inflate → hardened untar → relocate), then the staged
//! prefix is published by one rename. Packages run in parallel, `jobs` at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Catalog, CatalogError, PackageMeta, Verified};
use crate::buildcache::projection::Projection;
use crate::buildcache::spec::SpecNode;
use crate::install::relocate::map::RelocationMap;
use crate::install::{self, InstallError, Limits};
use crate::mirror::{Mirror, MirrorError};
use crate::store::staging::{self, Published, ReadyPrefix, Relocated, Staging};
use crate::transport::pump;

/// Where packages already have their place under the root (a mount's listing): relocation
/// must point at exactly those places, so they are looked up, not formatted again.
pub trait Placements: Send + Sync {
    /// The path of package `hash` relative to the root, if it is placed.
    fn rel_path(&self, hash: &str) -> Option<String>;
}

/// Where and how to install.
#[derive(Clone)]
pub struct Target {
    /// The install root (unpadded).
    pub root: String,
    pub projection: Projection,
    pub limits: Limits,
    /// Places already given (the mount's); other packages are placed by the projection.
    pub placements: Option<Arc<dyn Placements>>,
    /// Take each file's digest as it is written (for a cache that records them); without it
    /// nothing is hashed but the blob.
    pub digests: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("root", &self.root)
            .field("projection", &self.projection)
            .field("limits", &self.limits)
            .field("placements", &self.placements.is_some())
            .field("digests", &self.digests)
            .finish()
    }
}

impl Target {
    /// A target that places every package by its projection.
    pub fn new(root: String, projection: Projection, limits: Limits) -> Self {
        Target {
            root,
            projection,
            limits,
            placements: None,
            digests: false,
        }
    }

    /// The same target, taking file digests on the way (see [`Target::digests`]).
    pub fn with_digests(mut self) -> Self {
        self.digests = true;
        self
    }

    /// The prefix of `node`: where the mount placed it, else by the projection (`dag`
    /// supplies its compiler for `{compiler.*}`).
    pub fn prefix_of(
        &self,
        node: &SpecNode,
        dag: Option<&crate::buildcache::spec::SpecDag>,
    ) -> Result<PathBuf, crate::buildcache::FormatError> {
        if let Some(rel) = self
            .placements
            .as_ref()
            .and_then(|p| p.rel_path(&node.hash))
        {
            return Ok(PathBuf::from(format!(
                "{}/{rel}",
                self.root.trim_end_matches('/')
            )));
        }
        Catalog::prefix_of(&self.root, &self.projection, node, dag)
    }
}

/// Time spent in each phase, as Spack reports them.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Reading the manifest and spec.
    pub fetch: Duration,
    /// Signature check (part of reading the manifest).
    pub verify: Duration,
    /// Streaming the tarball: download, sha256, inflate, untar.
    pub extract: Duration,
    pub relocate: Duration,
    /// Handing the finished prefix over: into the cache (digests of what relocation
    /// rewrote, bookkeeping) or into place under the install root.
    pub publish: Duration,
    pub total: Duration,
}

impl Timings {
    /// Record the phases in the metrics.
    pub fn observe(&self, m: &crate::metrics::Metrics) {
        m.phase("fetch", self.fetch);
        m.phase("verify", self.verify);
        m.phase("extract", self.extract);
        m.phase("relocate", self.relocate);
        m.phase("publish", self.publish);
        m.phase("total", self.total);
    }
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |d: Duration| format!("{:.3}s", d.as_secs_f64());
        write!(
            f,
            "Fetch: {}.  Verify: {}.  Extract: {}.  Relocate: {}.  Publish: {}.  Total: {}",
            s(self.fetch),
            s(self.verify),
            s(self.extract),
            s(self.relocate),
            s(self.publish),
            s(self.total)
        )
    }
}

/// The outcome of one package.
#[derive(Debug)]
pub enum Outcome {
    Installed {
        prefix: PathBuf,
        timings: Timings,
        unpacked_bytes: u64,
        compressed_bytes: u64,
    },
    AlreadyInstalled {
        prefix: PathBuf,
    },
}

/// Install one package into `target` (its prefix under the install root), from the first
/// mirror that serves it whole and verified.
pub async fn install_one(
    catalog: &Catalog,
    node: &SpecNode,
    target: &Target,
) -> Result<Outcome, CatalogError> {
    let start = Instant::now();
    catalog
        .fetch(node, |mirror, meta| async move {
            let fetched = start.elapsed();
            let prefix = target
                .prefix_of(meta.node(), Some(&meta.dag))
                .map_err(|e| format_error(&mirror, e))?;
            if prefix.exists() {
                return Ok(Outcome::AlreadyInstalled { prefix });
            }
            let staging_parent = PathBuf::from(&target.root).join(STAGING);
            let staging = Staging::new_in(&staging_parent, &node.hash).map_err(|e| {
                CatalogError::Install {
                    package: node.display(),
                    mirror: mirror.url().to_string(),
                    source: Box::new(InstallError::io(&node.display(), &staging_parent, e)),
                }
            })?;
            let dest = prefix.clone();
            let what = node.display();
            let done = materialise(
                &mirror,
                &meta,
                target,
                staging,
                Box::new(move |relocated| {
                    staging::publish_at(relocated, &dest)
                        .map_err(|e| InstallError::io(&what, &dest, e))
                }),
                Priority::Foreground,
            )
            .await?;
            let mut timings = done.timings.clone();
            timings.verify = meta.verify_time;
            timings.fetch = fetched.saturating_sub(meta.verify_time);
            timings.total = start.elapsed();
            tracing::debug!(
                "{}: Successfully installed {} at {} from {}\n  {}",
                node.name,
                node.stem(),
                prefix.display(),
                mirror.url(),
                timings
            );
            Ok(done.outcome(prefix, timings))
        })
        .await
}

/// A format error of metadata from `mirror`.
pub fn format_error(mirror: &Mirror, source: crate::buildcache::FormatError) -> CatalogError {
    CatalogError::Mirror(MirrorError::Format {
        mirror: mirror.url().to_string(),
        source,
    })
}

/// Where `install` stages packages, under the install root (on the file system of the
/// prefixes, so that publishing is a rename).
pub const STAGING: &str = ".spackfs-staging";

/// How urgently a package is wanted: by a process waiting for it (first), or because a
/// package being made needs it (on the CPU time the waiting ones leave).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Foreground,
    Background,
}

impl Priority {
    /// Run blocking `work` at this priority: on the blocking pool, or on a thread of its
    /// own whose scheduling priority is lowered first (nice ~10: it takes what the
    /// foreground work leaves, and all of the CPU when nothing else runs; the threads it
    /// starts inherit the priority). A thread whose priority cannot be changed runs it as
    /// it is.
    async fn run<T: Send + 'static>(
        self,
        what: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        match self {
            Priority::Foreground => tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| e.to_string()),
            Priority::Background => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name("spackfs-deps".into())
                    .spawn(move || {
                        use thread_priority::{
                            set_thread_priority_and_policy, thread_native_id,
                            NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue,
                            ThreadSchedulePolicy,
                        };
                        // 23 of 0..=99 maps to a niceness of 9.
                        if let Ok(low) = ThreadPriorityValue::try_from(23u8) {
                            let _ = set_thread_priority_and_policy(
                                thread_native_id(),
                                ThreadPriority::Crossplatform(low),
                                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
                            );
                        }
                        let _ = tx.send(work());
                    })
                    .map_err(|e| format!("{what}: cannot start a thread: {e}"))?;
                rx.await
                    .map_err(|_| format!("{what}: the install thread ended without a result"))
            }
        }
    }
}

/// Publishes a relocated prefix (into the cache, or at its place under an install root).
pub type Publish = Box<dyn FnOnce(Relocated) -> Result<Published, InstallError> + Send>;

/// Stream, verify, extract and relocate a package from `mirror` for `target` in `staging`
/// (on the file system of its destination), then hand the finished prefix to `publish`.
/// The tarball is pumped from a remote transport into the blocking pipeline with read-ahead
/// (a local file is read by the pipeline itself); when the stream breaks, the error is the
/// transport's (the mirror's), whatever the pipeline made of the missing bytes.
pub async fn materialise(
    mirror: &Mirror,
    meta: &Verified<PackageMeta>,
    target: &Target,
    staging: Staging,
    publish: Publish,
    priority: Priority,
) -> Result<Done, CatalogError> {
    let package = meta.node().display();
    tracing::debug!(
        "{package}: fetching blob {} from {}",
        meta.tarball_path,
        mirror.url()
    );
    let blob_err = |source| CatalogError::Blob {
        package: package.clone(),
        mirror: mirror.url().to_string(),
        source: Box::new(source),
    };
    let asked = std::time::Instant::now();
    let object = mirror.tarball(meta).await.map_err(blob_err)?;
    let metrics = crate::metrics::global();
    metrics.fetch_latency(mirror.url(), "tarball", asked.elapsed());
    metrics.blobs_fetched.inc();
    let (reader, failure) = pump::reader(object, mirror.url(), &meta.tarball_path);
    let job = Job {
        meta: meta.clone(),
        target: target.clone(),
        staging,
        publish,
        what: package.clone(),
    };
    let result = match priority.run(&package, move || job.run(reader)).await {
        Ok(r) => r,
        Err(e) => Err(InstallError::Layout {
            what: package.clone(),
            message: format!("the install task failed: {e}"),
        }),
    };
    if let Some(t) = failure.take() {
        return Err(blob_err(t));
    }
    let done = result.map_err(|source| CatalogError::Install {
        package: package.clone(),
        mirror: mirror.url().to_string(),
        source: Box::new(source),
    })?;
    metrics.fetched(mirror.url(), "tarball", done.compressed);
    if done.fresh {
        metrics.packages_materialised.inc();
    }
    Ok(done)
}

/// The new prefixes of a package's relocation set: with the tarball's sha256 they determine
/// the relocated bytes (the store's cache key).
pub fn relocation_targets(meta: &PackageMeta, target: &Target) -> Vec<String> {
    meta.dag
        .relocation_set()
        .iter()
        .filter_map(|n| target.prefix_of(n, Some(&meta.dag)).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

struct Job {
    meta: Verified<PackageMeta>,
    target: Target,
    staging: Staging,
    publish: Publish,
    what: String,
}

/// What materialisation did.
#[derive(Debug)]
pub struct Done {
    pub timings: Timings,
    pub unpacked: u64,
    pub compressed: u64,
    /// The published prefix.
    pub prefix: ReadyPrefix,
    /// False when another process published the same prefix first.
    pub fresh: bool,
}

impl Done {
    fn outcome(self, prefix: PathBuf, timings: Timings) -> Outcome {
        if self.fresh {
            Outcome::Installed {
                prefix,
                timings,
                unpacked_bytes: self.unpacked,
                compressed_bytes: self.compressed,
            }
        } else {
            Outcome::AlreadyInstalled { prefix }
        }
    }
}

impl Job {
    /// Relocate the extracted prefix and give it its final modes; returns what relocation
    /// changed and the files whose mode changed.
    fn relocate_and_finish(
        &self,
        ex: &install::extract::Extracted,
        what: &str,
    ) -> Result<(install::relocate::RelocationReport, Vec<String>), InstallError> {
        let map = RelocationMap::for_package(
            &ex.buildinfo,
            &self.meta.dag,
            &self.target.root,
            what,
            |n| {
                self.target
                    .prefix_of(n, Some(&self.meta.dag))
                    .map(|p| p.to_string_lossy().into_owned())
            },
        )?;
        let report = install::relocate::relocate(
            &ex.prefix_dir,
            &ex.members,
            &ex.buildinfo,
            &map,
            self.target.digests,
            what,
        )?;
        tracing::debug!(
            "{what}: relocation map has {} keys, changed {} files",
            map.pairs().len(),
            report.changed.len()
        );
        let mode_changed = install::finish::finish(&ex.prefix_dir, &ex.members, what)?;
        Ok((report, mode_changed))
    }

    fn run(self, reader: impl std::io::Read + Send) -> Result<Done, InstallError> {
        let what = &self.what;
        let t = Instant::now();
        let ex = install::extract::extract(
            reader,
            &self.meta.tarball_sha256,
            self.meta.tarball_size,
            self.staging.path(),
            self.target.limits,
            self.target.digests,
            what,
        )?;
        let extract = t.elapsed();
        let t = Instant::now();
        // A store records every file: its walk of the prefix runs beside relocation and
        // the final modes, and is completed with the files those change.
        let (finished, walk) = std::thread::scope(|scope| {
            let walker = self.target.digests.then(|| {
                std::thread::Builder::new()
                    .name("spackfs-walk".into())
                    .spawn_scoped(scope, || crate::store::digest::walk(&ex.prefix_dir))
            });
            let finished = self.relocate_and_finish(&ex, what);
            let walk = walker
                .and_then(Result::ok)
                .and_then(|h| h.join().ok())
                .and_then(Result::ok);
            (finished, walk)
        });
        let (report, mode_changed) = finished?;
        let relocate = t.elapsed();
        // Digests as extracted, or as relocation rewrote them. A file known by more names
        // than one (hard links) has none here and is hashed when published.
        let mut digests = ex.digests;
        for rel in &report.changed {
            match (digests.get_mut(rel), report.digests.get(rel)) {
                (Some(slot), Some(new)) => *slot = *new,
                (Some(_), None) => {
                    digests.remove(rel);
                }
                (None, _) => {}
            }
        }
        let mut relocated = self.staging.relocated(ex.prefix_dir).with_digests(digests);
        if let Some(walk) = walk {
            let changed = report.changed.iter().cloned().chain(mode_changed).collect();
            relocated = relocated.with_walk(walk, changed);
        }
        let t = Instant::now();
        let published = (self.publish)(relocated)?;
        let publish = t.elapsed();
        Ok(Done {
            timings: Timings {
                extract,
                relocate,
                publish,
                ..Default::default()
            },
            unpacked: ex.unpacked_bytes,
            compressed: ex.compressed_bytes,
            prefix: published.prefix,
            fresh: published.fresh,
        })
    }
}

/// Put Spack's `sbang` at `<root>/bin/sbang`, as a Spack install does.
pub fn install_sbang(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    let path = bin.join("sbang");
    if std::fs::read(&path).is_ok_and(|b| b == crate::SBANG_SCRIPT) {
        return Ok(());
    }
    let tmp = tempfile::NamedTempFile::new_in(&bin)?;
    std::fs::write(tmp.path(), crate::SBANG_SCRIPT)?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// Told about each package as it starts (`None`) and as it ends (its outcome).
pub type Report = Arc<dyn Fn(&SpecNode, Option<&Result<Outcome, CatalogError>>) + Send + Sync>;

/// Install several packages, `jobs` at a time; `report` hears of each as it starts and
/// ends. Results come back in input order.
pub async fn install_many(
    catalog: Arc<Catalog>,
    nodes: Vec<Arc<SpecNode>>,
    target: Target,
    jobs: usize,
    report: Report,
) -> Vec<(Arc<SpecNode>, Result<Outcome, CatalogError>)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    // Staging left by an earlier run that crashed goes, as the cache's does at open.
    let staging = Path::new(&target.root).join(STAGING);
    match crate::store::staging::clean_abandoned(&staging) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "removed {n} abandoned staging director(ies) in {}",
            staging.display()
        ),
        Err(e) => tracing::warn!("cannot clean {}: {e}", staging.display()),
    }
    let target = Arc::new(target);
    let mut handles = Vec::new();
    for node in nodes {
        let (catalog, target, sem) = (catalog.clone(), target.clone(), sem.clone());
        let report = report.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.expect("semaphore open");
            report(&node, None);
            let r = install_one(&catalog, &node, &target).await;
            report(&node, Some(&r));
            (node, r)
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("install task panicked"));
    }
    // Leave no empty staging directory behind (fails harmlessly while another run uses it).
    let _ = std::fs::remove_dir(Path::new(&target.root).join(STAGING));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::set::MirrorSet;
    use crate::testing::TinyMirror;
    use crate::transport::fault::Fault;

    /// Two mirrors of the same package: whatever the first does wrong (an endpoint failure,
    /// bytes that do not match, a stream cut short, an absence), the install comes from the
    /// second, and the first is asked once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn install_fails_over_on_every_kind_of_fault() {
        let m = TinyMirror::new();
        for fault in [
            Fault::Connect,
            Fault::Corrupt(10),
            Fault::Truncate(100),
            Fault::NotFound,
        ] {
            let (first, f1) = m.faulty_mirror();
            let (second, f2) = m.faulty_mirror();
            f1.set(&m.tarball, fault.clone(), None);
            let (catalog, failed) = Catalog::open(MirrorSet::new(vec![first, second])).await;
            assert!(failed.is_empty());
            let root = tempfile::tempdir().unwrap();
            let target = Target::new(
                root.path().to_string_lossy().into_owned(),
                Projection::default(),
                Limits::default(),
            );
            let node = catalog
                .namespace()
                .entry(&m.hash)
                .unwrap()
                .node
                .spec()
                .unwrap();
            let outcome = install_one(&catalog, &node, &target).await;
            let Ok(Outcome::Installed { prefix, .. }) = outcome else {
                panic!("{fault:?}: {outcome:?}");
            };
            assert!(prefix.join("bin/hello.sh").is_file(), "{fault:?}");
            assert_eq!(f1.count(&m.tarball), 1, "{fault:?}");
            assert_eq!(f2.count(&m.tarball), 1, "{fault:?}");
            // Nothing of the failed attempt is left in staging.
            let staging = root.path().join(STAGING);
            assert!(
                std::fs::read_dir(&staging).map_or(true, |mut d| d.next().is_none()),
                "{fault:?}"
            );
        }
    }
}
