//! The catalog: the packages the configured mirrors offer, merged by DAG hash (each entry
//! knows which mirrors' indexes list it), where each package's prefix lies under an install
//! root, the install closure of a request, and index refresh (a changed index is parsed
//! beside the namespace in use and swapped in). Verified metadata and failover come from
//! `mirror`; `materialise` drives the install pipeline, `live` is the mount's state.

pub mod live;
pub mod materialise;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::buildcache::projection::Projection;
use crate::buildcache::spec::{SpecDag, SpecNode};
use crate::buildcache::table::{IndexTable, PackageRef};
use crate::buildcache::FormatError;
use crate::install::InstallError;
use crate::mirror::index::{IndexRead, IndexSource};
use crate::mirror::set::{Classify, Exhausted, MirrorMask, MirrorSet};
use crate::mirror::{FailureClass, Mirror, MirrorError};
use crate::transport::TransportError;

pub use crate::mirror::{PackageMeta, TrustPolicy, Verified};

/// Errors naming the mirror and package at fault.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("mirror {mirror}: {source}")]
    Install {
        package: String,
        mirror: String,
        #[source]
        source: Box<InstallError>,
    },
    #[error("package {package}: tarball: {source}")]
    Blob {
        package: String,
        mirror: String,
        #[source]
        source: Box<TransportError>,
    },
    #[error("no package matches {spec:?} in {mirrors}")]
    NoMatch { spec: String, mirrors: String },
    #[error("{spec:?} is ambiguous in {mirrors}: {candidates}")]
    Ambiguous {
        spec: String,
        mirrors: String,
        candidates: String,
    },
    #[error("{0}")]
    Exhausted(Box<Exhausted<CatalogError>>),
    #[error("package {package}: internal error: {message}")]
    Internal { package: String, message: String },
}

impl From<Exhausted<CatalogError>> for CatalogError {
    fn from(e: Exhausted<CatalogError>) -> Self {
        CatalogError::Exhausted(Box::new(e))
    }
}

impl Classify for CatalogError {
    fn class(&self) -> FailureClass {
        match self {
            CatalogError::Mirror(e) => e.class(),
            CatalogError::Install { source, .. } => match source.as_ref() {
                InstallError::Io { .. } => FailureClass::Local,
                _ => FailureClass::Package,
            },
            // The manifest names the blob: a missing blob is the mirror's defect, not an
            // absence of the package.
            CatalogError::Blob { source, .. } if source.is_endpoint_failure() => {
                FailureClass::Endpoint
            }
            CatalogError::Exhausted(e) => e
                .attempts
                .last()
                .map_or(FailureClass::NotFound, |(_, e)| e.class()),
            _ => FailureClass::Package,
        }
    }
}

impl CatalogError {
    /// The failures of every attempt (a single error is its own only attempt).
    pub fn attempts(&self) -> Vec<&CatalogError> {
        match self {
            CatalogError::Exhausted(e) => {
                e.attempts.iter().flat_map(|(_, e)| e.attempts()).collect()
            }
            other => vec![other],
        }
    }

    /// No mirror holds the package (as opposed to mirrors failing to serve it).
    pub fn is_absent(&self) -> bool {
        match self {
            CatalogError::Exhausted(e) => e.attempts.iter().all(|(_, e)| e.is_absent()),
            CatalogError::NoMatch { .. } => true,
            other => other.class() == FailureClass::NotFound,
        }
    }
}

/// A package the mirrors offer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The package, as the first index that lists it gives it.
    pub node: PackageRef,
    /// Some mirror has its tarball (the index says `in_buildcache`).
    pub in_buildcache: bool,
    /// The mirrors whose index lists it as in the build cache.
    pub mirrors: MirrorMask,
    /// The mirrors whose index lists it as in the build cache but which do not hold its
    /// metadata file (partial copies): not counted in `mirrors` nor `in_buildcache`.
    pub lacking: MirrorMask,
}

/// The merged package list of all mirrors, as of one reading of their indexes: an entry
/// per package (forty bytes: its row in an index table and what the mirrors say of it) and
/// a lookup by hash.
#[derive(Debug, Default)]
pub struct Namespace {
    entries: Vec<Entry>,
    /// Entry numbers by hash.
    by_hash: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Mirrors without an index (asked directly for any package).
    unindexed: MirrorMask,
}

impl Namespace {
    /// Packages available for install (in a build cache, not external), index order.
    pub fn available(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| e.in_buildcache && !e.node.is_external())
    }

    /// Packages some index lists as in the build cache, available or lacking (see
    /// [`Entry::lacking`]), index order: what `spackfs ls` shows.
    pub fn indexed(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| (e.in_buildcache || e.lacking != 0) && !e.node.is_external())
    }

    pub fn entry(&self, hash: &str) -> Option<&Entry> {
        let h = self.hasher.hash_one(hash);
        self.by_hash
            .find(h, |&e| self.entries[e as usize].node.hash() == hash)
            .map(|&e| &self.entries[e as usize])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Mirrors whose index lists `hash`.
    pub fn listed(&self, hash: &str) -> MirrorMask {
        self.entry(hash).map_or(0, |e| e.mirrors)
    }

    pub fn unindexed(&self) -> MirrorMask {
        self.unindexed
    }

    /// The compiler of a package (for `{compiler.*}` projections and v2 file names): its
    /// own `compiler` object, else the listed package its `c`, `cxx` or `fortran` edge
    /// names.
    pub fn compiler_of(&self, node: &PackageRef) -> Option<(String, String)> {
        if let Some((n, v)) = node.own_compiler() {
            return Some((n.to_string(), v.to_string()));
        }
        // The edges, read from the index (none when they cannot be: the package's first
        // use says why).
        let deps = node.deps().unwrap_or_default();
        ["c", "cxx", "fortran"].iter().find_map(|lang| {
            deps.iter()
                .filter(|e| e.provides(lang))
                .find_map(|e| self.entry(&e.hash))
                .map(|d| (d.node.name().to_string(), d.node.version().to_string()))
        })
    }

    /// [`Namespace::compiler_of`] for a node made in full.
    pub fn compiler_of_node(&self, node: &SpecNode) -> Option<(String, String)> {
        crate::buildcache::spec::compiler_of(node, |hash| {
            self.entry(hash)
                .map(|e| (e.node.name().to_string(), e.node.version().to_string()))
        })
    }

    /// Add mirror `mirror`'s `row` of `table`: a new entry, or what it says merged into the
    /// entry of the same hash (the same package).
    fn add(
        &mut self,
        table: &Arc<IndexTable>,
        row: u32,
        in_cache: bool,
        lacks: bool,
        mirror: usize,
    ) {
        let hash = table.hash(row);
        let bit = if in_cache { 1u64 << mirror } else { 0 };
        let lacks = if lacks { 1u64 << mirror } else { 0 };
        let h = self.hasher.hash_one(hash);
        let entries = &mut self.entries;
        match self
            .by_hash
            .find(h, |&e| entries[e as usize].node.hash() == hash)
        {
            Some(&e) => {
                let e = &mut entries[e as usize];
                e.in_buildcache |= in_cache;
                e.mirrors |= bit;
                e.lacking |= lacks;
            }
            None => {
                entries.push(Entry {
                    node: IndexTable::package(table, row),
                    in_buildcache: in_cache,
                    mirrors: bit,
                    lacking: lacks,
                });
                let hasher = &self.hasher;
                self.by_hash
                    .insert_unique(h, (entries.len() - 1) as u32, |&e| {
                        hasher.hash_one(entries[e as usize].node.hash())
                    });
            }
        }
    }
}

/// What is known of one mirror's package list.
#[derive(Debug, Default, Clone)]
struct Source {
    /// The packages of its index (or listing, or kept index); `None` when none was read.
    records: Option<Arc<IndexTable>>,
    /// It has no index and cannot be listed: asked directly.
    unindexed: bool,
    /// The records came from the index kept on disk (the mirror was unreachable).
    kept: bool,
    /// Records listed as in the build cache whose metadata file the mirror lacks.
    lacking: Arc<HashSet<String>>,
}

impl Source {
    /// Is `row` of its table in the build cache (as its index says, and the mirror holds
    /// its metadata)? And does the mirror lack it?
    fn says(&self, table: &IndexTable, row: u32) -> (bool, bool) {
        let lacks = !self.lacking.is_empty() && self.lacking.contains(table.hash(row));
        (table.in_buildcache(row) && !lacks, lacks)
    }
}

/// What the last reads of one mirror's index found, for `spackfs status` and metrics.
#[derive(Debug, Default, Clone)]
pub struct IndexCheck {
    /// When the index was last read or confirmed unchanged.
    pub checked_at: Option<std::time::SystemTime>,
    /// Where its package list came from (`None`: no list, or a kept one).
    pub source: Option<IndexSource>,
    /// Packages it lists (available ones).
    pub packages: usize,
    /// The list is the index kept on disk: the mirror was unreachable.
    pub kept: bool,
    /// The last read failed, and why.
    pub error: Option<String>,
}

/// The packages of the configured mirrors.
pub struct Catalog {
    set: MirrorSet,
    namespace: RwLock<Arc<Namespace>>,
    sources: Mutex<Vec<Source>>,
    checks: Mutex<Vec<IndexCheck>>,
}

impl Catalog {
    /// Read the index of every mirror (in parallel). Mirrors that cannot be read are
    /// returned with their error; the catalog holds what the others list.
    pub async fn open(set: MirrorSet) -> (Catalog, Vec<(usize, MirrorError)>) {
        let n = set.len();
        let cat = Catalog {
            set,
            namespace: RwLock::default(),
            sources: Mutex::new(vec![Source::default(); n]),
            checks: Mutex::new(vec![IndexCheck::default(); n]),
        };
        let reads = futures::future::join_all(
            cat.set
                .mirrors()
                .iter()
                .map(|m| async move { m.read_index().await }),
        )
        .await;
        let mut failed = Vec::new();
        for (i, r) in reads.into_iter().enumerate() {
            if let Err(e) = cat.apply(i, r) {
                failed.push((i, e));
            }
        }
        cat.rebuild();
        (cat, failed)
    }

    /// Record the outcome of reading mirror `i`'s index; returns whether its list changed.
    fn apply(&self, i: usize, read: Result<IndexRead, MirrorError>) -> Result<bool, MirrorError> {
        let m = &self.set.mirrors()[i];
        {
            let mut checks = self.checks.lock().unwrap();
            let c = &mut checks[i];
            match &read {
                Ok(r) => {
                    c.checked_at = Some(std::time::SystemTime::now());
                    c.error = None;
                    c.kept = false;
                    match r {
                        IndexRead::Fresh {
                            records, source, ..
                        } => {
                            c.source = Some(*source);
                            c.packages = (0..records.len() as u32)
                                .filter(|&r| records.in_buildcache(r))
                                .count();
                        }
                        IndexRead::Unlisted => {
                            c.source = None;
                            c.packages = 0;
                        }
                        IndexRead::Unchanged => {}
                    }
                }
                Err(e) => {
                    c.error = Some(e.to_string());
                    crate::metrics::global().mirror_error(m.url(), "index");
                    crate::metrics::global().record_error(&format!("mirror {}: {e}", m.url()));
                }
            }
        }
        match read {
            Ok(IndexRead::Unchanged) => Ok(false),
            Ok(IndexRead::Unlisted) => {
                tracing::info!(
                    "mirror {}: no index, and it cannot be listed: packages are looked up there directly",
                    m.url()
                );
                let mut sources = self.sources.lock().unwrap();
                let changed = !sources[i].unindexed || sources[i].records.is_some();
                sources[i] = Source {
                    records: None,
                    unindexed: true,
                    kept: false,
                    lacking: Arc::default(),
                };
                Ok(changed)
            }
            Ok(IndexRead::Fresh {
                records,
                source,
                lacking,
            }) => {
                let available = (0..records.len() as u32)
                    .filter(|&r| records.in_buildcache(r))
                    .count()
                    .saturating_sub(lacking.len());
                tracing::info!(
                    "mirror {}: {available} packages ({source}{})",
                    m.url(),
                    if source == IndexSource::Listing {
                        ", no index"
                    } else {
                        ""
                    }
                );
                self.set_records(i, *records, false, lacking);
                Ok(true)
            }
            Err(e) => {
                if e.class() == FailureClass::Endpoint {
                    m.health().failed(&e.to_string());
                }
                Err(e)
            }
        }
    }

    fn set_records(
        &self,
        i: usize,
        records: Verified<IndexTable>,
        kept: bool,
        lacking: HashSet<String>,
    ) {
        self.sources.lock().unwrap()[i] = Source {
            records: Some(Arc::new(records.into_inner())),
            unindexed: false,
            kept,
            lacking: Arc::new(lacking),
        };
    }

    /// Make the merged namespace from every mirror's records.
    fn rebuild(&self) {
        let started = std::time::Instant::now();
        let sources = self.sources.lock().unwrap().clone();
        let mut ns = Namespace::default();
        if let Some(t) = sources.iter().find_map(|s| s.records.as_ref()) {
            ns.entries.reserve_exact(t.len());
            ns.by_hash.reserve(t.len(), |_| 0);
        }
        for (i, s) in sources.iter().enumerate() {
            if s.unindexed {
                ns.unindexed |= 1u64 << i;
            }
            let Some(table) = &s.records else { continue };
            for row in 0..table.len() as u32 {
                let (in_cache, lacks) = s.says(table, row);
                ns.add(table, row, in_cache, lacks, i);
            }
        }
        tracing::debug!(
            "namespace of {} packages made in {:?}",
            ns.len(),
            started.elapsed()
        );
        *self.namespace.write().unwrap() = Arc::new(ns);
    }

    /// List mirror `i` from an index kept on disk (a Spack database), because the mirror
    /// cannot be read now. Its packages are still fetched from it (and verified) on use.
    pub fn adopt_kept(&self, i: usize, json: impl std::io::Read) -> Result<usize, FormatError> {
        let records = self.set.mirrors()[i].kept_index(json)?;
        let n = (0..records.len() as u32)
            .filter(|&r| records.in_buildcache(r))
            .count();
        {
            let mut checks = self.checks.lock().unwrap();
            checks[i].kept = true;
            checks[i].packages = n;
        }
        self.set_records(i, records, true, HashSet::new());
        self.rebuild();
        Ok(n)
    }

    /// Write mirror `i`'s package list as a Spack database, to keep for offline use;
    /// `None` when nothing verified was read from it (a kept index is never re-kept as
    /// fresh).
    pub fn write_kept_index(
        &self,
        i: usize,
        out: &mut dyn std::io::Write,
    ) -> Option<std::io::Result<()>> {
        let source = {
            let sources = self.sources.lock().unwrap();
            let s = sources.get(i)?;
            if s.kept {
                return None;
            }
            s.clone()
        };
        let table = source.records.as_ref()?;
        // The verified index itself, when the table is all of it and says nothing the
        // mirror contradicts (no package it lacks): a copy, not a rewrite.
        if let (Some(spool), true) = (table.whole_spool(), source.lacking.is_empty()) {
            return Some(spool.copy_to(out));
        }
        let packages: Vec<(PackageRef, bool)> = IndexTable::packages(table)
            .enumerate()
            .map(|(row, p)| (p, source.says(table, row as u32).0))
            .collect();
        Some(write_database(packages.iter().map(|(p, c)| (p, *c)), out))
    }

    /// Read every mirror's index again (conditional requests): returns whether the merged
    /// namespace changed. A mirror that fails keeps the list it had.
    pub async fn refresh(&self) -> bool {
        let reads = futures::future::join_all(
            self.set
                .mirrors()
                .iter()
                .map(|m| async move { m.read_index().await }),
        )
        .await;
        let mut changed = false;
        for (i, r) in reads.into_iter().enumerate() {
            match self.apply(i, r) {
                Ok(c) => changed |= c,
                Err(e) => tracing::warn!(
                    "index refresh of mirror {}: {e}; keeping the package list it had",
                    self.set.mirrors()[i].url()
                ),
            }
        }
        if changed {
            self.rebuild();
        }
        changed
    }

    /// What the last index reads of each mirror found, in mirror order.
    pub fn index_checks(&self) -> Vec<IndexCheck> {
        self.checks.lock().unwrap().clone()
    }

    /// The current package list.
    pub fn namespace(&self) -> Arc<Namespace> {
        self.namespace.read().unwrap().clone()
    }

    pub fn set(&self) -> &MirrorSet {
        &self.set
    }

    /// The mirrors, for messages: `mirror URL` or `mirrors URL1, URL2`.
    pub fn describe(&self) -> String {
        let urls: Vec<&str> = self.set.mirrors().iter().map(|m| m.url()).collect();
        match urls.as_slice() {
            [one] => format!("mirror {one}"),
            many => format!("mirrors {}", many.join(", ")),
        }
    }

    /// The first mirror's URL (or all of them), for logs and attributes.
    pub fn mirror(&self) -> String {
        self.set
            .mirrors()
            .iter()
            .map(|m| m.url())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Resolve `name`, `name@version` or `/hashprefix` to available packages.
    pub fn resolve(&self, spec: &str) -> Result<Vec<Entry>, CatalogError> {
        let ns = self.namespace();
        let spec_t = spec.trim();
        let matches: Vec<&Entry> = ns.available().filter(|e| e.node.answers_to(spec)).collect();
        match matches.len() {
            0 => Err(CatalogError::NoMatch {
                spec: spec.to_string(),
                mirrors: self.describe(),
            }),
            1 => Ok(matches.into_iter().cloned().collect()),
            _ if spec_t.starts_with('/') => Err(CatalogError::Ambiguous {
                spec: spec.to_string(),
                mirrors: self.describe(),
                candidates: matches
                    .iter()
                    .map(|e| e.node.display())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            // Several builds of one name: install them all, like naming each.
            _ => Ok(matches.into_iter().cloned().collect()),
        }
    }

    /// Get package `node` from the first mirror that serves it: its verified metadata, then
    /// `attempt` with that mirror and metadata (see [`MirrorSet::fetch`]), asking the
    /// mirrors the current namespace routes it to.
    pub async fn fetch<T, F, Fut>(&self, node: &SpecNode, attempt: F) -> Result<T, CatalogError>
    where
        F: FnMut(Arc<Mirror>, Verified<PackageMeta>) -> Fut,
        Fut: std::future::Future<Output = Result<T, CatalogError>>,
    {
        let ns = self.namespace();
        let compiler = ns.compiler_of_node(node);
        self.set
            .fetch(
                node,
                ns.listed(&node.hash),
                ns.unindexed(),
                compiler.as_ref(),
                attempt,
            )
            .await
            .map_err(CatalogError::from)
    }

    /// The verified metadata of a package from the first mirror that gives it.
    pub async fn meta(&self, node: &SpecNode) -> Result<Verified<PackageMeta>, CatalogError> {
        self.fetch(node, |_, meta| async move { Ok(meta) }).await
    }

    /// The install closure of the requested packages: each one and its link/run dependencies
    /// that some mirror has. Externals and absent dependencies are returned separately (to
    /// be reported, not fatal). The metadata of each wave of the walk is read concurrently
    /// (16 requests at a time), so a remote mirror costs a few round trips, not one per
    /// package.
    pub async fn closure(&self, requested: &[Arc<SpecNode>]) -> Closure {
        use futures::StreamExt;
        let ns = self.namespace();
        let mut out = Closure::default();
        let mut seen = HashSet::new();
        let mut wave: Vec<(Arc<SpecNode>, Option<String>)> =
            requested.iter().map(|n| (n.clone(), None)).collect();
        while !wave.is_empty() {
            let mut todo = Vec::new();
            for (node, parent) in wave.drain(..) {
                if !seen.insert(node.hash.clone()) {
                    continue;
                }
                if node.external {
                    out.skipped
                        .push((node.display(), parent, "external".into()));
                    continue;
                }
                let in_mirror =
                    ns.unindexed() != 0 || ns.entry(&node.hash).is_some_and(|e| e.in_buildcache);
                if !in_mirror {
                    out.skipped
                        .push((node.display(), parent, "not in the mirrors".into()));
                    continue;
                }
                todo.push((node, parent));
            }
            let metas: Vec<_> =
                futures::stream::iter(todo.into_iter().map(|(node, parent)| async {
                    let meta = self.meta(&node).await;
                    (node, parent, meta)
                }))
                .buffered(16)
                .collect()
                .await;
            for (node, parent, meta) in metas {
                // Dependencies come from the package's own spec DAG.
                let dag = match meta {
                    Ok(m) => {
                        let m = m.into_inner();
                        if let Some(size) = m.tarball_size {
                            out.sizes.insert(node.hash.clone(), size);
                        }
                        m.dag
                    }
                    Err(e) if parent.is_some() && e.is_absent() => {
                        out.skipped
                            .push((node.display(), parent, "not in the mirrors".into()));
                        continue;
                    }
                    Err(e) => {
                        out.failed.push((node.as_ref().clone(), e));
                        continue;
                    }
                };
                for e in &dag.root_node().deps {
                    if e.is("link") || e.is("run") {
                        if let Some(dep) = dag.nodes.get(&*e.hash) {
                            wave.push((Arc::new(dep.clone()), Some(node.display())));
                        }
                    }
                }
                out.order.push(node.hash.clone());
                out.nodes.insert(node.hash.clone(), node);
            }
        }
        out
    }

    /// The prefix of `node` under `root`.
    pub fn prefix_of(
        root: &str,
        projection: &Projection,
        node: &SpecNode,
        dag: Option<&SpecDag>,
    ) -> Result<PathBuf, FormatError> {
        Ok(PathBuf::from(format!(
            "{}/{}",
            root.trim_end_matches('/'),
            projection.format(node, dag)?
        )))
    }
}

/// Write a Spack database (`{"database":{"version":"8","installs":{…}}}`) of index
/// records, record by record (each spec read back from where it is kept); a hash listed
/// twice is written once.
pub fn write_database<'a>(
    records: impl Iterator<Item = (&'a PackageRef, bool)>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut seen = HashSet::new();
    let records: Vec<(&PackageRef, bool)> = records
        .filter(|(node, _)| seen.insert(node.hash()))
        .collect();
    crate::buildcache::index::write_database(
        records.iter().map(|(node, _)| *node),
        |i, _, _, _| format!(r#""ref_count":0,"in_buildcache":{}"#, records[i].1),
        out,
    )
}

/// The packages to install for a request.
#[derive(Debug, Default)]
pub struct Closure {
    /// Hashes to install.
    pub order: Vec<String>,
    pub nodes: HashMap<String, Arc<SpecNode>>,
    /// Tarball sizes (compressed), where the metadata gives them.
    pub sizes: HashMap<String, u64>,
    /// (package, needed by, why) for externals and dependencies the mirrors lack.
    pub skipped: Vec<(String, Option<String>, String)>,
    /// Packages whose metadata could not be read or trusted.
    pub failed: Vec<(SpecNode, CatalogError)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file:// mirror whose index names a package whose manifest is gone (a partial
    /// copy): the namespace does not offer it, lists it as lacking, and a refresh of the
    /// unchanged index keeps it so; once the index changes, the listing is made again.
    #[tokio::test]
    async fn a_package_whose_manifest_is_absent_is_not_offered() {
        use crate::writer::{MirrorWriter, NodeDef};
        let dir = tempfile::tempdir().unwrap();
        let mut w = MirrorWriter::new(dir.path(), None).unwrap();
        let a = NodeDef::new("a", "1").to_json();
        let b = NodeDef::new("b", "2").to_json();
        w.add_raw(std::slice::from_ref(&a), b"tarball a").unwrap();
        w.add_raw(std::slice::from_ref(&b), b"tarball b").unwrap();
        w.finish().unwrap();
        let (ha, hb) = (a["hash"].as_str().unwrap(), b["hash"].as_str().unwrap());
        let manifest_b = dir
            .path()
            .join(crate::buildcache::layout::v3_spec_manifest("b", "2", hb).unwrap());
        let saved = std::fs::read(&manifest_b).unwrap();
        std::fs::remove_file(&manifest_b).unwrap();
        let store =
            crate::transport::open(&dir.path().to_string_lossy(), &Default::default()).unwrap();
        let mirror = Mirror::new(
            "t",
            store,
            TrustPolicy::Unsigned,
            crate::mirror::Backoff::default(),
            std::time::Duration::from_secs(60),
        );
        let (cat, failed) = Catalog::open(MirrorSet::new(vec![mirror])).await;
        assert!(failed.is_empty());
        let check = |cat: &Catalog, lacking: bool| {
            let ns = cat.namespace();
            let available: Vec<&str> = ns.available().map(|e| e.node.hash()).collect();
            let indexed: Vec<&str> = ns.indexed().map(|e| e.node.hash()).collect();
            assert_eq!(indexed, vec![ha, hb]);
            let e = ns.entry(hb).unwrap();
            if lacking {
                assert_eq!(available, vec![ha]);
                assert!(!e.in_buildcache && e.lacking == 1 && e.mirrors == 0);
                assert!(cat.resolve("b").is_err());
            } else {
                assert_eq!(available, vec![ha, hb]);
                assert!(e.in_buildcache && e.lacking == 0 && e.mirrors == 1);
            }
        };
        check(&cat, true);
        assert!(
            !cat.refresh().await,
            "an unchanged index changed the namespace"
        );
        check(&cat, true);
        // The manifest is back and the index rewritten (a copy completed): offered again.
        std::fs::write(&manifest_b, saved).unwrap();
        let mut w = MirrorWriter::new(dir.path(), None).unwrap();
        w.add_raw(std::slice::from_ref(&a), b"tarball a").unwrap();
        w.add_raw(std::slice::from_ref(&b), b"tarball b").unwrap();
        w.add_raw(&[NodeDef::new("c", "3").to_json()], b"tarball c")
            .unwrap();
        w.finish().unwrap();
        assert!(cat.refresh().await);
        let ns = cat.namespace();
        assert_eq!(ns.available().count(), 3);
        assert_eq!(ns.indexed().count(), 3);
    }

    /// A database written from spooled records parses back to the same records, with
    /// the record keys as hashes and each spec's other members kept.
    #[test]
    fn a_written_database_round_trips_through_the_index_parser() {
        let db = br#"{"database":{"version":"8","installs":{
            "aaa":{"spec":{"name":"a","version":"1","hash":"aaa","arch":{"target":{"name":"zen3"}}},"in_buildcache":true},
            "bbb":{"spec":{"name":"b","version":"2","hash":"zzz"},"in_buildcache":false}}}}"#;
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(
            crate::buildcache::rawspec::Spool::copy_from(dir.path(), &mut &db[..]).unwrap(),
        );
        let recs = Arc::new(crate::buildcache::index::parse_spool(&spool, "t").unwrap());
        let packages: Vec<PackageRef> = IndexTable::packages(&recs).collect();
        let mut json = Vec::new();
        write_database(
            packages
                .iter()
                .chain(packages.iter())
                .map(|p| (p, p.in_buildcache())),
            &mut json,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let installs = v["database"]["installs"].as_object().unwrap();
        assert_eq!(installs.len(), 2);
        assert_eq!(installs["aaa"]["spec"]["arch"]["target"]["name"], "zen3");
        assert_eq!(installs["bbb"]["spec"]["hash"], "bbb");
        let again = crate::buildcache::index::parse(&json, "t").unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.in_buildcache(0) && !again.in_buildcache(1));
        assert_eq!((again.ident(1).name, again.hash(1)), ("b", "bbb"));
    }
}
