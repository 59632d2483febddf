//! One mirror: a transport plus its layout (URL v3, v2) and its trust policy. It answers
//! "the index" ([`index`]), "the verified metadata of package H" and "the tarball blob of
//! that metadata", keeps its health ([`health`]) and what it is known not to hold (a
//! negative cache for direct lookups). [`set::MirrorSet`] orders mirrors and fails over;
//! [`copy`] copies packages of one mirror into a directory, byte for byte.

pub mod copy;
pub mod health;
pub mod index;
pub mod oci;
pub mod set;
pub mod verified;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::buildcache::checksum::Sha256;
use crate::buildcache::layout::{self, Layout};
use crate::buildcache::manifest::{self, Manifest};
use crate::buildcache::spec::{SpecDag, SpecNode};
use crate::buildcache::table::IndexTable;
use crate::buildcache::FormatError;
use crate::transport::{BlobStore, Object, TransportError};
use crate::trust::{Keyring, TrustError};

pub use health::{Backoff, Health, HealthReport};
pub use verified::Verified;

/// The most a manifest, spec file or spec blob may weigh (they are a few kB).
pub const SMALL_LIMIT: u64 = 64 << 20;

/// How manifests are trusted.
#[derive(Debug, Clone)]
pub enum TrustPolicy {
    /// Signatures required, by one of these keys.
    Require(Keyring),
    /// Explicitly unsigned: signatures are not checked (signed manifests are read as text).
    Unsigned,
}

/// Errors of one mirror, naming the mirror and the package at fault.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
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
    #[error("package {package} is not in mirror {mirror}")]
    NotInMirror { package: String, mirror: String },
    #[error("package {package} from mirror {mirror}: {message}")]
    Integrity {
        package: String,
        mirror: String,
        message: String,
    },
    #[error("mirror {mirror}: its index is not trusted: {message}")]
    Index { mirror: String, message: String },
    #[error(
        "mirror {mirror}: neither a v3 nor a v2 build cache (no index and no manifests found)"
    )]
    Empty { mirror: String },
}

/// What a failed attempt at a mirror says, for failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The mirror does not hold it: try the next one, remember the absence.
    NotFound,
    /// The mirror failed as an endpoint (connect error, timeout, 5xx): try the next one,
    /// and skip this one for a back-off period.
    Endpoint,
    /// This package from this mirror is bad (checksum, signature, format): try the next.
    Package,
    /// A local failure (the cache's disk): no other mirror can help.
    Local,
}

impl FailureClass {
    /// The class's name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            FailureClass::NotFound => "not_found",
            FailureClass::Endpoint => "endpoint",
            FailureClass::Package => "package",
            FailureClass::Local => "local",
        }
    }
}

impl MirrorError {
    pub fn class(&self) -> FailureClass {
        match self {
            MirrorError::Transport(t) if t.is_not_found() => FailureClass::NotFound,
            MirrorError::Transport(t) if t.is_endpoint_failure() => FailureClass::Endpoint,
            MirrorError::NotInMirror { .. } => FailureClass::NotFound,
            _ => FailureClass::Package,
        }
    }

    /// A signature or key problem (the touching process gets EACCES).
    pub fn is_trust(&self) -> bool {
        matches!(self, MirrorError::Trust { .. })
    }
}

/// The verified metadata of one package from one mirror.
#[derive(Debug, Clone)]
pub struct PackageMeta {
    pub dag: SpecDag,
    pub layout: Layout,
    pub tarball_path: String,
    pub tarball_sha256: Sha256,
    pub tarball_size: Option<u64>,
    /// Fingerprint of the signer, or `None` when unsigned.
    pub signer: Option<String>,
    /// Time spent checking the signature.
    pub verify_time: Duration,
    /// The mirror it came from.
    pub mirror: String,
}

impl PackageMeta {
    pub fn node(&self) -> &SpecNode {
        self.dag.root_node()
    }
}

/// The metadata files of one package exactly as a mirror stores them, read and checked
/// together with its [`PackageMeta`] (for a byte-for-byte copy of the package).
#[derive(Debug, Clone)]
pub struct StoredFiles {
    /// Mirror-relative path of the v3 manifest or the v2 spec file.
    pub manifest_path: String,
    /// Its bytes as read (clearsigned or not): the text whose signature was checked.
    pub manifest: Vec<u8>,
    /// The spec blob a v3 manifest names, as read (it matched the manifest's sha256).
    pub spec_blob: Option<SpecBlob>,
}

/// A v3 spec blob as read from a mirror.
#[derive(Debug, Clone)]
pub struct SpecBlob {
    pub path: String,
    pub sha256: Sha256,
    pub bytes: Vec<u8>,
}

/// One configured mirror.
pub struct Mirror {
    name: String,
    store: Box<dyn BlobStore>,
    trust: TrustPolicy,
    health: Health,
    meta_cache: Mutex<HashMap<String, Verified<PackageMeta>>>,
    /// Packages this mirror answered "not found" for, and when.
    absent: Mutex<HashMap<String, Instant>>,
    /// How long an absence is believed.
    absent_ttl: Duration,
    /// Where a listing found each package's v2 spec file.
    v2_paths: Mutex<HashMap<String, String>>,
    index_state: Mutex<index::IndexState>,
    /// Where the specs of its index are kept while listed (a mount's cache); unset, the
    /// records keep no JSON.
    spool_dir: std::sync::OnceLock<std::path::PathBuf>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("url", &self.url()).finish()
    }
}

impl Mirror {
    /// A mirror named `name` (its config name) on `store`.
    pub fn new(
        name: &str,
        store: Box<dyn BlobStore>,
        trust: TrustPolicy,
        backoff: Backoff,
        absent_ttl: Duration,
    ) -> Self {
        Mirror {
            name: name.to_string(),
            store,
            trust,
            health: Health::new(backoff),
            meta_cache: Mutex::default(),
            absent: Mutex::default(),
            absent_ttl,
            v2_paths: Mutex::default(),
            index_state: Mutex::default(),
            spool_dir: std::sync::OnceLock::new(),
        }
    }

    /// Keep the copies of this mirror's index (spools: the records' specs point into
    /// them) in `dir`, the cache of a mount; elsewhere they go to the temporary directory.
    pub fn keep_specs_in(&self, dir: std::path::PathBuf) {
        let _ = self.spool_dir.set(dir);
    }

    /// Where copies of this mirror's index go.
    pub(crate) fn spool_dir(&self) -> std::path::PathBuf {
        self.spool_dir
            .get()
            .cloned()
            .unwrap_or_else(std::env::temp_dir)
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn store(&self) -> &dyn BlobStore {
        self.store.as_ref()
    }

    fn format_err(&self, source: FormatError) -> MirrorError {
        MirrorError::Format {
            mirror: self.url().to_string(),
            source,
        }
    }

    /// Is `hash` known to be absent here (a recent "not found")?
    pub fn known_absent(&self, hash: &str) -> bool {
        let mut absent = self.absent.lock().unwrap();
        match absent.get(hash) {
            Some(t) if t.elapsed() < self.absent_ttl => true,
            Some(_) => {
                absent.remove(hash);
                false
            }
            None => false,
        }
    }

    pub fn mark_absent(&self, hash: &str) {
        self.absent
            .lock()
            .unwrap()
            .insert(hash.to_string(), Instant::now());
    }

    /// Forget absences (the index changed).
    pub fn clear_absent(&self) {
        self.absent.lock().unwrap().clear();
    }

    /// A small file (manifest, spec, config) whole, counted in the metrics.
    pub(crate) async fn get_metadata(
        &self,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, TransportError> {
        let asked = Instant::now();
        let body = self.store.get_bytes(path, limit).await?;
        let metrics = crate::metrics::global();
        metrics.fetch_latency(self.url(), "metadata", asked.elapsed());
        metrics.fetched(self.url(), "metadata", body.len() as u64);
        Ok(body)
    }

    async fn get_optional(&self, path: &str) -> Result<Option<Vec<u8>>, MirrorError> {
        match self.get_metadata(path, SMALL_LIMIT).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Open the tarball of a package whose metadata this mirror gave.
    pub async fn tarball(&self, meta: &PackageMeta) -> Result<Object, TransportError> {
        self.store.open(&meta.tarball_path).await
    }

    /// Read signed or unsigned text according to the trust policy.
    fn trusted_text(
        &self,
        package: &str,
        raw: Vec<u8>,
        what: &str,
    ) -> Result<(Vec<u8>, Option<String>), MirrorError> {
        match &self.trust {
            TrustPolicy::Require(ring) => {
                let v =
                    ring.verify_clearsigned(&raw, what)
                        .map_err(|source| MirrorError::Trust {
                            package: package.to_string(),
                            mirror: self.url().to_string(),
                            source,
                        })?;
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

    /// The verified metadata of a package: v3 first, then v2, as Spack does. `compiler`
    /// is the package's compiler (for v2 file names), when the caller knows it.
    pub async fn meta(
        &self,
        node: &SpecNode,
        compiler: Option<&(String, String)>,
    ) -> Result<Verified<PackageMeta>, MirrorError> {
        if let Some(m) = self.meta_cache.lock().unwrap().get(&node.hash) {
            return Ok(m.clone());
        }
        if self.store.is_registry() {
            let tag = crate::buildcache::oci::package_tag(&node.name, &node.version, &node.hash);
            let meta = match self
                .meta_oci(&node.display(), &oci::manifest_path(&tag))
                .await
            {
                Err(MirrorError::Transport(t)) if t.is_not_found() => {
                    return Err(MirrorError::NotInMirror {
                        package: node.display(),
                        mirror: self.url().to_string(),
                    })
                }
                other => other?,
            };
            return self.bind(node, meta);
        }
        let (meta, _) = self.read_meta(node, compiler).await?;
        self.bind(node, meta)
    }

    /// The verified metadata of a package together with its metadata files as stored
    /// (the same bytes that were verified), for copying the package byte for byte. URL
    /// layouts only: an OCI registry holds images, not files.
    pub async fn package_files(
        &self,
        node: &SpecNode,
        compiler: Option<&(String, String)>,
    ) -> Result<Verified<(PackageMeta, StoredFiles)>, MirrorError> {
        if self.store.is_registry() {
            return Err(self.format_err(FormatError::invalid(
                node.display(),
                "an OCI registry holds images, not build cache files",
            )));
        }
        let (meta, files) = self.read_meta(node, compiler).await?;
        let meta = self.bind(node, meta)?;
        Ok(Verified::new((meta.into_inner(), files)))
    }

    /// Read (and check) the metadata of a package in a URL layout: v3 first, then v2.
    async fn read_meta(
        &self,
        node: &SpecNode,
        compiler: Option<&(String, String)>,
    ) -> Result<(PackageMeta, StoredFiles), MirrorError> {
        // Only where the index says (no probing of the other layout for a listed package).
        let hint = self.index_state.lock().unwrap().hint(&node.hash);
        let path = layout::v3_spec_manifest(&node.name, &node.version, &node.hash)
            .map_err(|e| self.format_err(e))?;
        let v3 = match hint {
            index::LayoutHint::V2Only => None,
            _ => self.get_optional(&path).await?,
        };
        match v3 {
            Some(raw) => {
                let (meta, blob) = self.meta_v3(&node.display(), &path, raw.clone()).await?;
                let files = StoredFiles {
                    manifest_path: path,
                    manifest: raw,
                    spec_blob: Some(blob),
                };
                Ok((meta, files))
            }
            None if hint == index::LayoutHint::V3Only => Err(MirrorError::NotInMirror {
                package: node.display(),
                mirror: self.url().to_string(),
            }),
            None => match self.find_v2(node, compiler).await? {
                Some((path, raw)) => {
                    let meta = self.meta_v2(&node.display(), &path, raw.clone()).await?;
                    let files = StoredFiles {
                        manifest_path: path,
                        manifest: raw,
                        spec_blob: None,
                    };
                    Ok((meta, files))
                }
                None => Err(MirrorError::NotInMirror {
                    package: node.display(),
                    mirror: self.url().to_string(),
                }),
            },
        }
    }

    /// The signed metadata must describe the package it was fetched for: then it is
    /// verified (its signature and its spec blob were checked); cache it.
    fn bind(
        &self,
        node: &SpecNode,
        meta: PackageMeta,
    ) -> Result<Verified<PackageMeta>, MirrorError> {
        let root = meta.node();
        if root.hash != node.hash {
            return Err(MirrorError::Integrity {
                package: node.display(),
                mirror: self.url().to_string(),
                message: format!(
                    "the signed metadata found under its name describes another package, {} (a manifest swapped between packages?)",
                    root.display()
                ),
            });
        }
        let meta = Verified::new(meta);
        self.meta_cache
            .lock()
            .unwrap()
            .insert(node.hash.clone(), meta.clone());
        Ok(meta)
    }

    async fn meta_v3(
        &self,
        package: &str,
        path: &str,
        raw: Vec<u8>,
    ) -> Result<(PackageMeta, SpecBlob), MirrorError> {
        let what = format!("manifest {path}");
        let t = Instant::now();
        let (text, signer) = self.trusted_text(package, raw, &what)?;
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
        let blob = self.get_metadata(&spec_rec.path(), SMALL_LIMIT).await?;
        if Sha256::of(&blob) != spec_rec.checksum {
            return Err(MirrorError::Integrity {
                package: package.to_string(),
                mirror: self.url().to_string(),
                message: format!("spec blob {} does not match its sha256", spec_rec.path()),
            });
        }
        let swhat = format!("spec blob {}", spec_rec.path());
        let stored = SpecBlob {
            path: spec_rec.path(),
            sha256: spec_rec.checksum,
            bytes: blob,
        };
        let json = maybe_gunzip(stored.bytes.clone(), &swhat).map_err(|e| self.format_err(e))?;
        let dag = SpecDag::parse(&json, &swhat).map_err(|e| self.format_err(e))?;
        let meta = PackageMeta {
            dag,
            layout: Layout::V3,
            tarball_path: tarball.path(),
            tarball_sha256: tarball.checksum,
            tarball_size: Some(tarball.content_length),
            signer,
            verify_time,
            mirror: self.url().to_string(),
        };
        Ok((meta, stored))
    }

    /// The v2 spec file of a package: where a listing found it, else by its computed name
    /// (signed first).
    async fn find_v2(
        &self,
        node: &SpecNode,
        compiler: Option<&(String, String)>,
    ) -> Result<Option<(String, Vec<u8>)>, MirrorError> {
        let listed = self.v2_paths.lock().unwrap().get(&node.hash).cloned();
        let candidates = match listed {
            Some(p) => vec![p],
            None => {
                let stem = layout::v2_stem(node, compiler);
                vec![
                    layout::v2_spec_file(&stem, true),
                    layout::v2_spec_file(&stem, false),
                ]
            }
        };
        for path in candidates {
            if let Some(raw) = self.get_optional(&path).await? {
                return Ok(Some((path, raw)));
            }
        }
        Ok(None)
    }

    async fn meta_v2(
        &self,
        package: &str,
        path: &str,
        raw: Vec<u8>,
    ) -> Result<PackageMeta, MirrorError> {
        let what = format!("spec file {path}");
        let t = Instant::now();
        let (text, signer) = self.trusted_text(package, raw, &what)?;
        let verify_time = t.elapsed();
        let dag = SpecDag::parse(&text, &what).map_err(|e| self.format_err(e))?;
        let sha = dag.binary_checksum.ok_or_else(|| {
            self.format_err(FormatError::invalid(&what, "no binary_cache_checksum"))
        })?;
        let root = dag.root_node();
        let tarball_path = layout::v2_tarball(root, dag.compiler_of(root).as_ref());
        // v2 spec files carry no size: ask the transport (cheap, and it catches truncation).
        let tarball_size = self.store.head(&tarball_path).await?;
        Ok(PackageMeta {
            dag,
            layout: Layout::V2,
            tarball_path,
            tarball_sha256: sha,
            tarball_size,
            signer,
            verify_time,
            mirror: self.url().to_string(),
        })
    }

    /// Read the metadata of a manifest or spec file found by listing (verified as for a
    /// fetch: a listing lists only what would install).
    async fn meta_listed(
        &self,
        lay: Layout,
        path: &str,
        hash: &str,
    ) -> Result<Verified<PackageMeta>, MirrorError> {
        let package = format!("{path} ({hash})");
        let meta = if self.store.is_registry() {
            self.meta_oci(&package, path).await?
        } else {
            let raw = self.get_metadata(path, SMALL_LIMIT).await?;
            match lay {
                Layout::V3 => self.meta_v3(&package, path, raw).await?.0,
                Layout::V2 => self.meta_v2(&package, path, raw).await?,
            }
        };
        if meta.node().hash != hash {
            return Err(MirrorError::Integrity {
                package,
                mirror: self.url().to_string(),
                message: format!(
                    "its metadata describes another package, {}",
                    meta.node().display()
                ),
            });
        }
        if lay == Layout::V2 {
            self.v2_paths
                .lock()
                .unwrap()
                .insert(hash.to_string(), path.to_string());
        }
        let meta = Verified::new(meta);
        self.meta_cache
            .lock()
            .unwrap()
            .insert(hash.to_string(), meta.clone());
        Ok(meta)
    }

    /// The package list of this mirror's index kept on disk (a Spack database written by
    /// this program from a verified index): vouched for as the cache's own file.
    pub fn kept_index(
        &self,
        mut reader: impl std::io::Read,
    ) -> Result<Verified<IndexTable>, FormatError> {
        let what = format!("kept index of {}", self.url());
        let spool = spool_in(&self.spool_dir(), &mut reader)
            .map_err(|e| FormatError::invalid(&what, e.to_string()))?;
        Ok(Verified::new(crate::buildcache::index::parse_spool(
            &std::sync::Arc::new(spool),
            &what,
        )?))
    }
}

/// Copy an index's JSON to a new spool in `dir`.
pub(crate) fn spool_in(
    dir: &std::path::Path,
    reader: &mut dyn std::io::Read,
) -> std::io::Result<crate::buildcache::rawspec::Spool> {
    crate::buildcache::rawspec::Spool::copy_from(dir, reader).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("copying the index to {}: {e}", dir.display()),
        )
    })
}

/// Gunzip when the bytes start with the gzip magic (Spack sniffs spec blobs the same way);
/// more than [`SMALL_LIMIT`] inflated bytes is an error, never a silent cut.
pub fn maybe_gunzip(blob: Vec<u8>, what: &str) -> Result<Vec<u8>, FormatError> {
    use std::io::Read as _;
    if blob.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let mut d = flate2::read::MultiGzDecoder::new(&blob[..]).take(SMALL_LIMIT + 1);
        d.read_to_end(&mut out)
            .map_err(|e| FormatError::invalid(what, format!("bad gzip: {e}")))?;
        if out.len() as u64 > SMALL_LIMIT {
            return Err(FormatError::invalid(
                what,
                format!("inflates past {SMALL_LIMIT} bytes"),
            ));
        }
        Ok(out)
    } else {
        Ok(blob)
    }
}
