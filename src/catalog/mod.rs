//! The catalog: which packages a mirror offers (from its index, or by listing manifests),
//! where each one's prefix lies under an install root, and the verified metadata of each
//! package (trusted manifest bound to its spec). `materialise` drives the install pipeline.

pub mod live;
pub mod materialise;

use std::collections::{HashMap, HashSet, VecDeque};

use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Mutex;

use indexmap::IndexMap;

use crate::buildcache::layout::{self, Layout};
use crate::buildcache::manifest::{self, Manifest};
use crate::buildcache::projection::Projection;
use crate::buildcache::spec::{SpecDag, SpecNode};
use crate::buildcache::{index, FormatError};
use crate::install::hashing::sha256_hex;
use crate::install::InstallError;
use crate::transport::{BlobStore, TransportError};
use crate::trust::{Keyring, TrustError};

const SMALL_LIMIT: u64 = 64 << 20;

/// Errors naming the mirror and package at fault.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("package {package} from mirror {mirror}: {source}")]
    Trust {
        package: String,
        mirror: String,
        #[source]
        source: TrustError,
    },
    #[error("mirror {mirror}: {source}")]
    Format {
        mirror: String,
        #[source]
        source: FormatError,
    },
    #[error("mirror {mirror}: {source}")]
    Install {
        package: String,
        mirror: String,
        #[source]
        source: Box<InstallError>,
    },
    #[error("package {package}: {source}")]
    Blob {
        package: String,
        #[source]
        source: TransportError,
    },
    #[error("no package matches {spec:?} in mirror {mirror}")]
    NoMatch { spec: String, mirror: String },
    #[error("{spec:?} is ambiguous in mirror {mirror}: {candidates}")]
    Ambiguous {
        spec: String,
        mirror: String,
        candidates: String,
    },
    #[error("package {package} is not in mirror {mirror}")]
    NotInMirror { package: String, mirror: String },
    #[error("package {package} from mirror {mirror}: {message}")]
    Integrity {
        package: String,
        mirror: String,
        message: String,
    },
    #[error(
        "mirror {mirror}: neither a v3 nor a v2 build cache (no index and no manifests found)"
    )]
    Empty { mirror: String },
}

/// How manifests are trusted.
#[derive(Debug, Clone)]
pub enum TrustPolicy {
    /// Signatures required, by one of these keys.
    Require(Keyring),
    /// Explicitly unsigned: signatures are not checked (signed manifests are read as text).
    Unsigned,
}

/// A package the mirror offers.
#[derive(Debug, Clone)]
pub struct Entry {
    pub node: SpecNode,
    pub in_buildcache: bool,
    /// v2 spec file name found by listing (when known).
    v2_spec_path: Option<String>,
}

/// The verified metadata of one package.
#[derive(Debug, Clone)]
pub struct PackageMeta {
    pub dag: SpecDag,
    pub layout: Layout,
    pub tarball_path: String,
    pub tarball_sha256: String,
    pub tarball_size: Option<u64>,
    /// Fingerprint of the signer, or `None` when unsigned.
    pub signer: Option<String>,
    /// Time spent checking the signature.
    pub verify_time: std::time::Duration,
}

impl PackageMeta {
    pub fn node(&self) -> &SpecNode {
        self.dag.root_node()
    }
}

/// The packages of one mirror.
pub struct Catalog {
    store: Box<dyn BlobStore>,
    trust: TrustPolicy,
    entries: IndexMap<String, Entry>,
    /// True when `entries` is the complete list (an index or a listing).
    complete: bool,
    meta_cache: Mutex<HashMap<String, PackageMeta>>,
    /// Built from a kept index because the mirror is unreachable: nothing can be fetched.
    offline: bool,
}

impl Catalog {
    /// Open a mirror: read its v3 index, else its v2 index, else list its manifests.
    pub async fn open(store: Box<dyn BlobStore>, trust: TrustPolicy) -> Result<Self, CatalogError> {
        store.probe().await?;
        let mut cat = Catalog {
            store,
            trust,
            entries: IndexMap::new(),
            complete: false,
            meta_cache: Mutex::new(HashMap::new()),
            offline: false,
        };
        // A mirror may hold both layouts: read both indexes (v3 first, as Spack does).
        let has_v3 = cat.load_v3_index().await?;
        let has_v2 = cat.load_v2_index().await?;
        if has_v3 || has_v2 {
            cat.complete = true;
        } else {
            cat.list_manifests().await?;
            cat.complete = true;
            if cat.entries.is_empty() {
                return Err(CatalogError::Empty {
                    mirror: cat.mirror().to_string(),
                });
            }
        }
        Ok(cat)
    }

    /// A catalog from a kept index (a Spack database), for a mirror that is unreachable:
    /// it lists packages, and every fetch fails at once.
    pub fn offline(store: Box<dyn BlobStore>, index_json: &[u8]) -> Result<Self, CatalogError> {
        let mut cat = Catalog {
            store,
            trust: TrustPolicy::Unsigned,
            entries: IndexMap::new(),
            complete: true,
            meta_cache: Mutex::new(HashMap::new()),
            offline: true,
        };
        let what = format!("kept index of {}", cat.mirror());
        let records = index::parse(index_json, &what).map_err(|e| cat.format_err(e))?;
        cat.add_records(records);
        Ok(cat)
    }

    /// The package list as a Spack database, to keep for offline use.
    pub fn index_json(&self) -> Vec<u8> {
        let mut installs = serde_json::Map::new();
        for (h, e) in &self.entries {
            installs.insert(
                h.clone(),
                serde_json::json!({"spec": e.node.raw, "ref_count": 0, "in_buildcache": e.in_buildcache}),
            );
        }
        serde_json::to_vec(&serde_json::json!({"database": {"version": "8", "installs": installs}}))
            .expect("JSON serialises")
    }

    pub fn is_offline(&self) -> bool {
        self.offline
    }

    pub fn mirror(&self) -> &str {
        self.store.url()
    }

    pub fn store(&self) -> &dyn BlobStore {
        self.store.as_ref()
    }

    fn format_err(&self, source: FormatError) -> CatalogError {
        CatalogError::Format {
            mirror: self.mirror().to_string(),
            source,
        }
    }

    async fn get_optional(&self, path: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        match self.store.get_bytes(path, SMALL_LIMIT).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn add_records(&mut self, records: Vec<index::IndexRecord>) {
        for r in records {
            match self.entries.get_mut(&r.node.hash) {
                // The same hash from two indexes is the same package.
                Some(e) => e.in_buildcache |= r.in_buildcache,
                None => {
                    self.entries.insert(
                        r.node.hash.clone(),
                        Entry {
                            node: r.node,
                            in_buildcache: r.in_buildcache,
                            v2_spec_path: None,
                        },
                    );
                }
            }
        }
    }

    async fn load_v3_index(&mut self) -> Result<bool, CatalogError> {
        let Some(m) = self.get_optional(layout::V3_INDEX_MANIFEST).await? else {
            return Ok(false);
        };
        let what = format!("{}/{}", self.mirror(), layout::V3_INDEX_MANIFEST);
        let json = if manifest::is_clearsigned(&m) {
            manifest::clearsigned_text_unverified(&m)
                .ok_or_else(|| self.format_err(FormatError::invalid(&what, "bad armour")))?
        } else {
            m
        };
        let man = Manifest::parse(&json, &what).map_err(|e| self.format_err(e))?;
        let rec = man
            .find(manifest::MEDIA_INDEX, &what)
            .map_err(|e| self.format_err(e))?
            .clone();
        let blob = self.store.get_bytes(&rec.path(), 1 << 30).await?;
        if sha256_hex(&blob) != rec.checksum {
            return Err(self.format_err(FormatError::invalid(
                &what,
                format!("index blob {} does not match its sha256", rec.path()),
            )));
        }
        let blob = maybe_gunzip(blob, &what).map_err(|e| self.format_err(e))?;
        let records = index::parse(&blob, &what).map_err(|e| self.format_err(e))?;
        self.add_records(records);
        Ok(true)
    }

    async fn load_v2_index(&mut self) -> Result<bool, CatalogError> {
        let Some(blob) = self.get_optional(layout::V2_INDEX).await? else {
            return Ok(false);
        };
        let what = format!("{}/{}", self.mirror(), layout::V2_INDEX);
        if let Some(h) = self.get_optional("build_cache/index.json.hash").await? {
            let h = String::from_utf8_lossy(&h[..h.len().min(64)]).to_string();
            if h.len() == 64 && h != sha256_hex(&blob) {
                return Err(self.format_err(FormatError::invalid(
                    &what,
                    "does not match index.json.hash",
                )));
            }
        }
        let records = index::parse(&blob, &what).map_err(|e| self.format_err(e))?;
        self.add_records(records);
        Ok(true)
    }

    /// No index: list `v3/manifests/spec/` and `build_cache/`, reading each package's spec.
    async fn list_manifests(&mut self) -> Result<(), CatalogError> {
        let mut found: Vec<(String, Layout, String)> = Vec::new();
        for path in self.store.list(layout::V3_SPEC_DIR).await? {
            if let Some((_, _, hash)) = layout::parse_v3_spec_manifest(&path) {
                found.push((hash, Layout::V3, path));
            }
        }
        for path in self.store.list(layout::V2_DIR).await? {
            if let Some((hash, _)) = layout::parse_v2_spec_file(&path) {
                found.push((hash, Layout::V2, path));
            }
        }
        // Read every package's spec (unverified here: only to list), a few at a time, in
        // listing order; v3 before v2 for a hash found in both.
        let mut seen = HashSet::new();
        found.retain(|(hash, _, _)| seen.insert(hash.clone()));
        let this = &*self;
        let peeked: Vec<_> =
            futures::stream::iter(found.into_iter().map(|(hash, lay, path)| async move {
                let dag = match lay {
                    Layout::V3 => this.peek_v3(&path).await,
                    Layout::V2 => this.peek_v2(&path).await,
                };
                (hash, lay, path, dag)
            }))
            .buffered(16)
            .collect()
            .await;
        for (hash, lay, path, dag) in peeked {
            let dag = match dag {
                Ok(Some(dag)) => dag,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("mirror {}: skipping {hash}: {e}", self.mirror());
                    continue;
                }
            };
            // The other nodes of its DAG are known too (in the cache or not: their own
            // manifests, if any, say so).
            for n in dag.nodes.values() {
                if n.hash != hash {
                    self.entries.entry(n.hash.clone()).or_insert(Entry {
                        node: n.clone(),
                        in_buildcache: false,
                        v2_spec_path: None,
                    });
                }
            }
            self.entries.insert(
                hash,
                Entry {
                    node: dag.root_node().clone(),
                    in_buildcache: true,
                    v2_spec_path: (lay == Layout::V2).then_some(path),
                },
            );
        }
        Ok(())
    }

    async fn peek_v3(&self, path: &str) -> Result<Option<SpecDag>, CatalogError> {
        let raw = self.store.get_bytes(path, SMALL_LIMIT).await?;
        let text = if manifest::is_clearsigned(&raw) {
            manifest::clearsigned_text_unverified(&raw).unwrap_or_default()
        } else {
            raw
        };
        let man = Manifest::parse(&text, path).map_err(|e| self.format_err(e))?;
        let rec = man
            .find(manifest::MEDIA_SPEC, path)
            .map_err(|e| self.format_err(e))?;
        let blob = self.store.get_bytes(&rec.path(), SMALL_LIMIT).await?;
        let blob = maybe_gunzip(blob, path).map_err(|e| self.format_err(e))?;
        Ok(Some(
            SpecDag::parse(&blob, path).map_err(|e| self.format_err(e))?,
        ))
    }

    async fn peek_v2(&self, path: &str) -> Result<Option<SpecDag>, CatalogError> {
        let raw = self.store.get_bytes(path, SMALL_LIMIT).await?;
        let text = if manifest::is_clearsigned(&raw) {
            manifest::clearsigned_text_unverified(&raw).unwrap_or_default()
        } else {
            raw
        };
        Ok(Some(
            SpecDag::parse(&text, path).map_err(|e| self.format_err(e))?,
        ))
    }

    /// Packages available for install (in the build cache, not external), index order.
    pub fn available(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .values()
            .filter(|e| e.in_buildcache && !e.node.external)
    }

    pub fn entry(&self, hash: &str) -> Option<&Entry> {
        self.entries.get(hash)
    }

    /// Resolve `name`, `name@version` or `/hashprefix` to available packages.
    pub fn resolve(&self, spec: &str) -> Result<Vec<&Entry>, CatalogError> {
        let spec_t = spec.trim();
        let matches: Vec<&Entry> = if let Some(prefix) = spec_t.strip_prefix('/') {
            self.available()
                .filter(|e| e.node.hash.starts_with(prefix))
                .collect()
        } else {
            let (name, version) = match spec_t.split_once('@') {
                Some((n, v)) => (n, Some(v)),
                None => (spec_t, None),
            };
            self.available()
                .filter(|e| e.node.name == name && version.is_none_or(|v| e.node.version == v))
                .collect()
        };
        match matches.len() {
            0 => Err(CatalogError::NoMatch {
                spec: spec.to_string(),
                mirror: self.mirror().to_string(),
            }),
            1 => Ok(matches),
            _ if spec_t.starts_with('/') => Err(CatalogError::Ambiguous {
                spec: spec.to_string(),
                mirror: self.mirror().to_string(),
                candidates: matches
                    .iter()
                    .map(|e| e.node.display())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            // Several builds of one name: install them all, like naming each.
            _ => Ok(matches),
        }
    }

    fn package_err(&self, node: &SpecNode, source: TrustError) -> CatalogError {
        CatalogError::Trust {
            package: node.display(),
            mirror: self.mirror().to_string(),
            source,
        }
    }

    /// Read signed or unsigned text according to the trust policy.
    fn trusted_text(
        &self,
        node: &SpecNode,
        raw: Vec<u8>,
        what: &str,
    ) -> Result<(Vec<u8>, Option<String>), CatalogError> {
        match &self.trust {
            TrustPolicy::Require(ring) => {
                let v = ring
                    .verify_clearsigned(&raw, what)
                    .map_err(|e| self.package_err(node, e))?;
                Ok((v.text, Some(v.signer)))
            }
            TrustPolicy::Unsigned => {
                if manifest::is_clearsigned(&raw) {
                    let t = manifest::clearsigned_text_unverified(&raw).ok_or_else(|| {
                        self.format_err(FormatError::invalid(what, "malformed clearsigned text"))
                    })?;
                    Ok((t, None))
                } else {
                    Ok((raw, None))
                }
            }
        }
    }

    /// The verified metadata of a package (cached): v3 first, then v2, as Spack does.
    pub async fn meta(&self, node: &SpecNode) -> Result<PackageMeta, CatalogError> {
        if let Some(m) = self.meta_cache.lock().unwrap().get(&node.hash) {
            return Ok(m.clone());
        }
        if self.offline {
            return Err(CatalogError::Transport(TransportError::Unreachable {
                mirror: self.mirror().to_string(),
                reason: format!("{} is not in the local cache", node.display()),
            }));
        }
        let meta = match self.meta_v3(node).await? {
            Some(m) => m,
            None => match self.meta_v2(node).await? {
                Some(m) => m,
                None => {
                    return Err(CatalogError::NotInMirror {
                        package: node.display(),
                        mirror: self.mirror().to_string(),
                    })
                }
            },
        };
        let root = meta.node();
        if root.hash != node.hash {
            return Err(CatalogError::Integrity {
                package: node.display(),
                mirror: self.mirror().to_string(),
                message: format!(
                    "the signed metadata found under its name describes another package, {} (a manifest swapped between packages?)",
                    root.display()
                ),
            });
        }
        self.meta_cache
            .lock()
            .unwrap()
            .insert(node.hash.clone(), meta.clone());
        Ok(meta)
    }

    async fn meta_v3(&self, node: &SpecNode) -> Result<Option<PackageMeta>, CatalogError> {
        let path = layout::v3_spec_manifest(&node.name, &node.version, &node.hash);
        let Some(raw) = self.get_optional(&path).await? else {
            return Ok(None);
        };
        let what = format!("manifest {path}");
        let t = std::time::Instant::now();
        let (text, signer) = self.trusted_text(node, raw, &what)?;
        let verify_time = t.elapsed();
        let man = Manifest::parse(&text, &what).map_err(|e| self.format_err(e))?;
        let tarball = man
            .find(manifest::MEDIA_TARBALL, &what)
            .map_err(|e| self.format_err(e))?
            .clone();
        let spec_rec = man
            .find(manifest::MEDIA_SPEC, &what)
            .map_err(|e| self.format_err(e))?
            .clone();
        let blob = self.store.get_bytes(&spec_rec.path(), SMALL_LIMIT).await?;
        if sha256_hex(&blob) != spec_rec.checksum {
            return Err(CatalogError::Integrity {
                package: node.display(),
                mirror: self.mirror().to_string(),
                message: format!("spec blob {} does not match its sha256", spec_rec.path()),
            });
        }
        let swhat = format!("spec blob {}", spec_rec.path());
        let blob = maybe_gunzip(blob, &swhat).map_err(|e| self.format_err(e))?;
        let dag = SpecDag::parse(&blob, &swhat).map_err(|e| self.format_err(e))?;
        Ok(Some(PackageMeta {
            dag,
            layout: Layout::V3,
            tarball_path: tarball.path(),
            tarball_sha256: tarball.checksum.clone(),
            tarball_size: Some(tarball.content_length),
            signer,
            verify_time,
        }))
    }

    fn v2_compiler(&self, node: &SpecNode) -> Option<(String, String)> {
        crate::buildcache::spec::compiler_of(node, |hash| self.entries.get(hash).map(|e| &e.node))
    }

    async fn meta_v2(&self, node: &SpecNode) -> Result<Option<PackageMeta>, CatalogError> {
        let listed = self
            .entries
            .get(&node.hash)
            .and_then(|e| e.v2_spec_path.clone());
        let candidates = match listed {
            Some(p) => vec![p],
            None => {
                let stem = layout::v2_stem(node, self.v2_compiler(node).as_ref());
                vec![
                    layout::v2_spec_file(&stem, true),
                    layout::v2_spec_file(&stem, false),
                ]
            }
        };
        let mut found = None;
        for path in candidates {
            if let Some(raw) = self.get_optional(&path).await? {
                found = Some((path, raw));
                break;
            }
        }
        let Some((path, raw)) = found else {
            return Ok(None);
        };
        let what = format!("spec file {path}");
        let t = std::time::Instant::now();
        let (text, signer) = self.trusted_text(node, raw, &what)?;
        let verify_time = t.elapsed();
        let dag = SpecDag::parse(&text, &what).map_err(|e| self.format_err(e))?;
        let sha = dag.binary_checksum.clone().ok_or_else(|| {
            self.format_err(FormatError::invalid(&what, "no binary_cache_checksum"))
        })?;
        let root = dag.root_node();
        let tarball_path = layout::v2_tarball(root, dag.compiler_of(root).as_ref());
        // v2 spec files carry no size: ask the transport (cheap, and it catches truncation).
        let tarball_size = self.store.head(&tarball_path).await?;
        Ok(Some(PackageMeta {
            dag,
            layout: Layout::V2,
            tarball_path,
            tarball_sha256: sha,
            tarball_size,
            signer,
            verify_time,
        }))
    }

    /// The install closure of the requested packages: each one and its link/run dependencies
    /// that the mirror has, dependencies first. Externals and absent dependencies are
    /// returned separately (to be reported, not fatal).
    pub async fn closure(&self, requested: &[SpecNode]) -> Result<Closure, CatalogError> {
        let mut out = Closure::default();
        let mut seen = HashSet::new();
        let mut queue: VecDeque<(SpecNode, Option<String>)> =
            requested.iter().map(|n| (n.clone(), None)).collect();
        let mut nodes: HashMap<String, SpecNode> = HashMap::new();
        while let Some((node, parent)) = queue.pop_front() {
            if !seen.insert(node.hash.clone()) {
                continue;
            }
            if node.external {
                out.skipped
                    .push((node.display(), parent, "external".into()));
                continue;
            }
            let in_mirror = match self.entries.get(&node.hash) {
                Some(e) => e.in_buildcache,
                None => !self.complete,
            };
            if !in_mirror {
                out.skipped
                    .push((node.display(), parent, "not in the mirror".into()));
                continue;
            }
            // Dependencies come from the package's own spec DAG.
            let dag = match self.meta(&node).await {
                Ok(m) => m.dag,
                Err(CatalogError::NotInMirror { .. }) if parent.is_some() => {
                    out.skipped
                        .push((node.display(), parent, "not in the mirror".into()));
                    continue;
                }
                Err(e) => {
                    out.failed.push((node.clone(), e));
                    continue;
                }
            };
            for e in &dag.root_node().deps {
                if e.is("link") || e.is("run") {
                    if let Some(dep) = dag.nodes.get(&e.hash) {
                        queue.push_back((dep.clone(), Some(node.display())));
                    }
                }
            }
            out.order.push(node.hash.clone());
            nodes.insert(node.hash.clone(), node);
        }
        out.nodes = nodes;
        Ok(out)
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

/// The packages to install for a request.
#[derive(Debug, Default)]
pub struct Closure {
    /// Hashes to install.
    pub order: Vec<String>,
    pub nodes: HashMap<String, SpecNode>,
    /// (package, needed by, why) for externals and dependencies the mirror lacks.
    pub skipped: Vec<(String, Option<String>, String)>,
    /// Packages whose metadata could not be read or trusted.
    pub failed: Vec<(SpecNode, CatalogError)>,
}

/// Gunzip when the bytes start with the gzip magic (Spack sniffs spec blobs the same way).
pub fn maybe_gunzip(blob: Vec<u8>, what: &str) -> Result<Vec<u8>, FormatError> {
    if blob.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let mut d = flate2::read::MultiGzDecoder::new(&blob[..]).take(SMALL_LIMIT);
        std::io::Read::read_to_end(&mut d, &mut out)
            .map_err(|e| FormatError::invalid(what, format!("bad gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(blob)
    }
}

use std::io::Read as _;
