//! A mirror's index: the v3 index (manifest → blob; the blob's sha256 checked against the
//! manifest, the manifest's signature checked when it is signed), the v2 `index.json`
//! (checked against `index.json.hash`), or, for a mirror with neither, a listing of its
//! manifests, each verified as a fetch would (file:// only: plain HTTP cannot list). Index
//! blobs are read as a stream, hashed and inflated (when gzipped) into a private copy (a
//! spool) as they arrive, and parsed from it once verified; never cut short. A refresh costs one conditional request per part when nothing changed.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};

use futures::StreamExt;

use super::{Mirror, MirrorError, TrustPolicy, Verified, SMALL_LIMIT};
use crate::buildcache::checksum::Sha256;
use crate::buildcache::index;
use crate::buildcache::layout::{self, Layout};
use crate::buildcache::manifest::{self, Manifest};
use crate::buildcache::spec::SpecNode;
use crate::buildcache::table::IndexTable;
use crate::install::hashing::HashingReader;
use crate::transport::{self, pump, ByteStream, Conditional, TransportError};

pub(super) const V2_INDEX_HASH: &str = "build_cache/index.json.hash";

/// What the last successful read saw, for conditional refreshes.
#[derive(Debug, Default)]
pub struct IndexState {
    v3_validator: Option<String>,
    v3_checksum: Option<Sha256>,
    v2_validator: Option<String>,
    v2_checksum: Option<Sha256>,
    /// The last read found no v2 index beside the v3 one: while the v3 index does not
    /// change, it is not asked for again (an unchanged refresh is one request).
    v2_absent: bool,
    /// Packages the v2 index lists (looked up in the v2 layout only).
    v2_listed: std::collections::HashSet<String>,
    /// Manifest paths of the last listing, with the nodes each one gave (the package, in
    /// the build cache, then the other nodes of its DAG).
    listed: Option<HashMap<String, Vec<SpecNode>>>,
}

/// Where a mirror's package list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSource {
    V3,
    V2,
    /// Both layouts, each with its index.
    V3AndV2,
    /// No index: the manifests were listed.
    Listing,
    /// An OCI registry's index image.
    Oci,
}

impl std::fmt::Display for IndexSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexSource::V3 => "v3 index",
            IndexSource::V2 => "v2 index",
            IndexSource::V3AndV2 => "v3 and v2 indexes",
            IndexSource::Listing => "listing of its manifests",
            IndexSource::Oci => "OCI index image",
        })
    }
}

/// The outcome of reading a mirror's index.
pub enum IndexRead {
    /// Nothing changed since the last read.
    Unchanged,
    /// The (new) package list.
    Fresh {
        records: Box<Verified<IndexTable>>,
        source: IndexSource,
        /// Hashes the index lists as in the build cache whose metadata file the mirror
        /// does not hold (a partial copy); see [`Mirror::lacking`].
        lacking: HashSet<String>,
    },
    /// No index, and the protocol cannot list: packages are looked up directly.
    Unlisted,
}

/// The metadata files a mirror holds, per layout.
struct MetadataListing {
    v3: bool,
    v2: bool,
    v3_paths: HashSet<String>,
    v2_hashes: HashSet<String>,
}

/// One part of the index (v3 or v2) as a conditional request found it.
enum Part {
    Absent,
    Same,
    Changed(Changed),
}

/// A part that changed: its new validator, the blob to read (and its checksum and size when
/// a manifest gives them), and the body when it was already fetched.
struct Changed {
    validator: Option<String>,
    checksum: Option<Sha256>,
    body: Option<ByteStream>,
    blob_path: String,
    size: Option<u64>,
}

/// Where to look a package up, as the index says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LayoutHint {
    V3Only,
    V2Only,
    /// v3 first, then v2 (no index says).
    Both,
}

impl IndexState {
    pub(super) fn hint(&self, hash: &str) -> LayoutHint {
        if self.v2_listed.contains(hash) {
            LayoutHint::V2Only
        } else if self.v3_checksum.is_some() && self.v2_absent {
            LayoutHint::V3Only
        } else {
            LayoutHint::Both
        }
    }
}

impl Mirror {
    /// Read the index, or tell that it did not change since the last successful read. The
    /// state is updated only once everything read was verified.
    pub async fn read_index(&self) -> Result<IndexRead, MirrorError> {
        if self.store().is_registry() {
            let (validator, last) = {
                let s = self.index_state.lock().unwrap();
                (s.v3_validator.clone(), s.v3_checksum)
            };
            let (read, validator, sum) = self.read_index_oci(validator.as_deref(), last).await?;
            if let IndexRead::Fresh {
                source: IndexSource::Oci,
                ..
            } = &read
            {
                let mut s = self.index_state.lock().unwrap();
                s.v3_validator = validator;
                s.v3_checksum = sum;
                s.v2_absent = true;
                drop(s);
                self.clear_absent();
            } else if let (IndexRead::Unchanged, Some(v)) = (&read, validator) {
                self.index_state.lock().unwrap().v3_validator = Some(v);
            }
            return Ok(read);
        }
        let (v3_validator, v3_checksum, v2_validator, v2_checksum, v2_absent) = {
            let s = self.index_state.lock().unwrap();
            (
                s.v3_validator.clone(),
                s.v3_checksum,
                s.v2_validator.clone(),
                s.v2_checksum,
                s.v2_absent,
            )
        };
        let v3 = self.v3_part(v3_validator.as_deref(), v3_checksum).await?;
        let v2 = if v2_absent && matches!(v3, Part::Same) {
            Part::Absent
        } else {
            self.v2_part(v2_validator.as_deref(), v2_checksum).await?
        };
        match (&v3, &v2) {
            (Part::Absent, Part::Absent) => return self.read_listing().await,
            (Part::Same | Part::Absent, Part::Same | Part::Absent) => {
                return Ok(IndexRead::Unchanged)
            }
            _ => {}
        }
        // Something changed: read every part anew (a part that did not change is read again
        // only in the rare mirror that holds both layouts).
        let mut tables = Vec::new();
        let mut state = IndexState {
            v2_absent: matches!(v2, Part::Absent),
            ..IndexState::default()
        };
        let source = match (&v3, &v2) {
            (Part::Absent, _) => IndexSource::V2,
            (_, Part::Absent) => IndexSource::V3,
            _ => IndexSource::V3AndV2,
        };
        // The mirror's metadata files are listed while the index is fetched and parsed.
        let listing = self.metadata_listing(source != IndexSource::V2, source != IndexSource::V3);
        let parts = async {
            for (layout, part) in [(Layout::V3, v3), (Layout::V2, v2)] {
                let changed = match part {
                    Part::Absent => continue,
                    Part::Changed(c) => c,
                    Part::Same => {
                        // Unchanged, but needed whole: fetch it unconditionally.
                        let fresh = match layout {
                            Layout::V3 => self.v3_part(None, None).await?,
                            Layout::V2 => self.v2_part(None, None).await?,
                        };
                        match fresh {
                            Part::Changed(c) => c,
                            _ => continue,
                        }
                    }
                };
                let Changed {
                    validator,
                    checksum,
                    body,
                    blob_path,
                    size,
                } = changed;
                let body = match body {
                    Some(b) => b,
                    None => self.store().get(&blob_path).await?,
                };
                let (recs, sum) = self
                    .parse_index_stream(body, &blob_path, checksum, size)
                    .await?;
                if layout == Layout::V2 {
                    state.v2_listed = (0..recs.len() as u32)
                        .filter(|&r| recs.in_buildcache(r))
                        .map(|r| recs.hash(r).to_string())
                        .collect();
                }
                tables.push(std::sync::Arc::new(recs));
                match layout {
                    Layout::V3 => {
                        state.v3_validator = validator;
                        state.v3_checksum = Some(sum);
                    }
                    Layout::V2 => {
                        state.v2_validator = validator;
                        state.v2_checksum = Some(sum);
                    }
                }
            }
            Ok::<_, MirrorError>(())
        };
        let (parsed, listing) = futures::join!(parts, listing);
        parsed?;
        // One table (a mirror with both layouts and indexes: both, v3's first).
        let records = match tables.len() {
            1 => std::sync::Arc::try_unwrap(tables.pop().expect("one table"))
                .unwrap_or_else(|t| IndexTable::concat(&[t]).unwrap_or_default()),
            _ => IndexTable::concat(&tables).map_err(|source| MirrorError::Format {
                mirror: self.url().to_string(),
                source,
            })?,
        };
        let lacking = self.lacking(&records, listing);
        *self.index_state.lock().unwrap() = state;
        self.clear_absent();
        // Every part's checksum (and signature, when signed) matched.
        Ok(IndexRead::Fresh {
            records: Box::new(Verified::new(records)),
            source,
            lacking,
        })
    }

    /// The metadata files of this mirror in the layouts whose index is read (`v3`, `v2`):
    /// one listing of the manifest folders (O(packages), no request per package), on
    /// transports that list cheaply (file://) only; `None` elsewhere, or when the listing
    /// fails.
    async fn metadata_listing(&self, v3: bool, v2: bool) -> Option<MetadataListing> {
        if !self.store().lists_cheaply() {
            return None;
        }
        let list = |prefix: &'static str| async move {
            match self.store().list(prefix).await {
                Ok(paths) => Some(paths.unwrap_or_default()),
                Err(e) => {
                    tracing::warn!(
                        "mirror {}: cannot list {prefix} to find the packages it lacks: {e}",
                        self.url()
                    );
                    None
                }
            }
        };
        let v3_paths: HashSet<String> = match v3 {
            true => list(layout::V3_SPEC_DIR).await?.into_iter().collect(),
            false => HashSet::new(),
        };
        let v2_hashes: HashSet<String> = match v2 {
            true => list(layout::V2_DIR)
                .await?
                .iter()
                .filter_map(|p| layout::parse_v2_spec_file(p).map(|(h, _)| h))
                .collect(),
            false => HashSet::new(),
        };
        Some(MetadataListing {
            v3,
            v2,
            v3_paths,
            v2_hashes,
        })
    }

    /// The packages `records` list as in the build cache whose metadata file this mirror
    /// does not hold (a partial copy: they would fail at first touch), as `listing` found
    /// them; nothing when there is no listing.
    fn lacking(&self, table: &IndexTable, listing: Option<MetadataListing>) -> HashSet<String> {
        let Some(MetadataListing {
            v3,
            v2,
            v3_paths,
            v2_hashes,
        }) = listing
        else {
            return HashSet::new();
        };
        let mut path = String::new();
        let lacking: HashSet<String> = (0..table.len() as u32)
            .filter(|&r| table.in_buildcache(r))
            .map(|r| table.ident(r))
            .filter(|n| {
                // A record whose manifest path cannot even be made (a name that would
                // leave the mirror) is not "lacking": it stays offered, so that its first
                // touch is refused naming why.
                let in_v3 = v3
                    && (!layout::v3_spec_manifest_into(&mut path, n.name, n.version, n.hash)
                        || v3_paths.contains(&path));
                let in_v2 = v2 && v2_hashes.contains(n.hash);
                !(in_v3 || in_v2)
            })
            .map(|n| n.hash.to_string())
            .collect();
        if !lacking.is_empty() {
            tracing::warn!(
                "mirror {}: {} package(s) its index lists have no metadata file here (a partial copy?): they are not offered",
                self.url(),
                lacking.len()
            );
        }
        lacking
    }

    pub(super) fn index_err(&self, message: impl Into<String>) -> MirrorError {
        MirrorError::Index {
            mirror: self.url().to_string(),
            message: message.into(),
        }
    }

    /// The v3 index manifest, conditionally.
    async fn v3_part(
        &self,
        validator: Option<&str>,
        last_checksum: Option<Sha256>,
    ) -> Result<Part, MirrorError> {
        let path = layout::V3_INDEX_MANIFEST;
        let (stream, validator) = match self.store().get_if_changed(path, validator).await {
            Err(e) if e.is_not_found() => return Ok(Part::Absent),
            Err(e) => return Err(e.into()),
            Ok(Conditional::Unchanged) => return Ok(Part::Same),
            Ok(Conditional::Changed { stream, validator }) => (stream, validator),
        };
        let raw = transport::collect(stream, SMALL_LIMIT, self.url(), path).await?;
        let rec = self.index_manifest_record(raw)?;
        let checksum = rec.checksum;
        if last_checksum == Some(checksum) {
            // A new manifest for the same blob: remember its validator only.
            self.index_state.lock().unwrap().v3_validator = validator;
            return Ok(Part::Same);
        }
        Ok(Part::Changed(Changed {
            validator,
            blob_path: rec.path(),
            size: Some(rec.content_length),
            checksum: Some(checksum),
            body: None,
        }))
    }

    /// The index blob record of the v3 index manifest `raw` (checked as a mount checks it).
    pub(super) fn index_manifest_record(
        &self,
        raw: Vec<u8>,
    ) -> Result<manifest::BlobRecord, MirrorError> {
        let what = format!("{}/{}", self.url(), layout::V3_INDEX_MANIFEST);
        // Spack never signs the index manifest; a signed one is checked like a spec
        // manifest, and a bad signature makes the whole index untrusted.
        let text = if manifest::is_clearsigned(&raw) {
            match &self.trust {
                TrustPolicy::Require(ring) => {
                    let v = ring
                        .verify_clearsigned(&raw, &what)
                        .map_err(|e| self.index_err(e.to_string()))?;
                    tracing::debug!(
                        "mirror {}: index manifest signed by {}",
                        self.url(),
                        v.signer
                    );
                    v.text
                }
                TrustPolicy::Unsigned => manifest::clearsigned_text_unverified(&raw)
                    .ok_or_else(|| self.index_err("malformed clearsigned index manifest"))?,
            }
        } else {
            raw
        };
        let man = Manifest::parse(&text, &what).map_err(|e| self.index_err(e.to_string()))?;
        man.find(manifest::MEDIA_INDEX, &what)
            .cloned()
            .map_err(|e| self.index_err(e.to_string()))
    }

    /// The sha256 a v2 `index.json.hash` holds.
    pub(super) fn v2_index_hash(&self, raw: &[u8]) -> Result<Sha256, MirrorError> {
        // The hash file may end with a newline: read 64 hex digits.
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        Sha256::parse(text).ok_or_else(|| {
            self.index_err(format!(
                "{V2_INDEX_HASH} does not hold a sha256 ({:?})",
                text.chars().take(80).collect::<String>()
            ))
        })
    }

    /// The v2 `index.json` (via `index.json.hash` when there is one), conditionally.
    async fn v2_part(
        &self,
        validator: Option<&str>,
        last_checksum: Option<Sha256>,
    ) -> Result<Part, MirrorError> {
        match self.store().get_if_changed(V2_INDEX_HASH, validator).await {
            Ok(Conditional::Unchanged) => return Ok(Part::Same),
            Ok(Conditional::Changed { stream, validator }) => {
                let raw = transport::collect(stream, 4096, self.url(), V2_INDEX_HASH).await?;
                let sum = self.v2_index_hash(&raw)?;
                if last_checksum == Some(sum) {
                    self.index_state.lock().unwrap().v2_validator = validator;
                    return Ok(Part::Same);
                }
                return Ok(Part::Changed(Changed {
                    validator,
                    checksum: Some(sum),
                    body: None,
                    blob_path: layout::V2_INDEX.to_string(),
                    size: None,
                }));
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        // No hash file: the index itself, conditionally.
        match self
            .store()
            .get_if_changed(layout::V2_INDEX, validator)
            .await
        {
            Err(e) if e.is_not_found() => Ok(Part::Absent),
            Err(e) => Err(e.into()),
            Ok(Conditional::Unchanged) => Ok(Part::Same),
            Ok(Conditional::Changed { stream, validator }) => Ok(Part::Changed(Changed {
                validator,
                checksum: None,
                body: Some(stream),
                blob_path: layout::V2_INDEX.to_string(),
                size: None,
            })),
        }
    }

    /// Hash, inflate (when gzipped) and parse an index blob in one pass; the sha256 (and
    /// size) must match. Returns the records and the blob's sha256.
    pub(super) async fn parse_index_stream(
        &self,
        body: ByteStream,
        path: &str,
        expected: Option<Sha256>,
        size: Option<u64>,
    ) -> Result<(IndexTable, Sha256), MirrorError> {
        let (reader, failure) = pump::pump(body, self.url(), path);
        let dir = self.spool_dir();
        let started = std::time::Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            // Never more than the manifest announces (one byte more tells it lied).
            let reader = std::io::Read::take(reader, size.map_or(u64::MAX, |s| s + 1));
            let mut hashing = HashingReader::new(reader);
            // This thread reads, hashes (and inflates); another writes the spool.
            let (chunks, mut written) = crate::install::handoff::handoff();
            let copied = std::thread::scope(|scope| {
                let writer = scope.spawn(move || super::spool_in(&dir, &mut written));
                let mut buf = BufReader::with_capacity(256 * 1024, &mut hashing);
                match buf.fill_buf() {
                    Ok([0x1f, 0x8b, ..]) => {
                        chunks.pump(&mut flate2::bufread::MultiGzDecoder::new(buf));
                    }
                    Ok(_) => {
                        chunks.pump(&mut buf);
                    }
                    Err(e) => {
                        chunks.fail(e);
                    }
                }
                writer
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("the spool writer panicked")))
            });
            // Every byte is hashed, even after an error: a corrupt blob says so.
            let finished = hashing.finish();
            (copied, finished)
        })
        .await;
        let (copied, finished) =
            joined.map_err(|e| self.index_err(format!("reading {path}: {e}")))?;
        if let Some(t) = failure.take() {
            return Err(t.into());
        }
        let (sum, len) = finished.map_err(|source| TransportError::Io {
            mirror: self.url().to_string(),
            path: path.to_string(),
            source,
        })?;
        if let Some(expected) = expected {
            if sum != expected {
                return Err(self.index_err(format!(
                    "index blob {path} does not match its sha256 (expected {expected}, got {sum}): altered or corrupt"
                )));
            }
        }
        if let Some(size) = size.filter(|&s| s != len) {
            return Err(self.index_err(format!(
                "index blob {path} is {len} bytes, its manifest says {size}"
            )));
        }
        let spool = std::sync::Arc::new(
            copied.map_err(|e| self.index_err(format!("reading {path}: {e}")))?,
        );
        let copied_in = started.elapsed();
        // Only verified bytes are parsed.
        let what = format!("{}/{path}", self.url());
        let records = tokio::task::spawn_blocking(move || index::parse_spool(&spool, &what))
            .await
            .map_err(|e| self.index_err(format!("parsing {path}: {e}")))?
            .map_err(|source| MirrorError::Format {
                mirror: self.url().to_string(),
                source,
            })?;
        tracing::debug!(
            "index {path} of {}: {len} bytes fetched and checked in {copied_in:?}, {} records parsed in {:?}",
            self.url(),
            records.len(),
            started.elapsed() - copied_in
        );
        Ok((records, sum))
    }

    /// No index: list `v3/manifests/spec/` and `build_cache/`, reading (and verifying) each
    /// new package's metadata; unchanged listings answer `Unchanged`.
    pub(super) async fn read_listing(&self) -> Result<IndexRead, MirrorError> {
        let mut found: Vec<(String, Layout, String)> = Vec::new();
        let (v3_paths, v2_paths) = if self.store().is_registry() {
            for (hash, path) in self.oci_tags().await? {
                found.push((hash, Layout::V3, path));
            }
            (Vec::new(), Vec::new())
        } else {
            let Some(v3_paths) = self.store().list(layout::V3_SPEC_DIR).await? else {
                return Ok(IndexRead::Unlisted);
            };
            let v2_paths = self.store().list(layout::V2_DIR).await?.unwrap_or_default();
            (v3_paths, v2_paths)
        };
        for path in v3_paths {
            if let Some((_, _, hash)) = layout::parse_v3_spec_manifest(&path) {
                found.push((hash, Layout::V3, path));
            }
        }
        for path in v2_paths {
            if let Some((hash, _)) = layout::parse_v2_spec_file(&path) {
                found.push((hash, Layout::V2, path));
            }
        }
        // v3 before v2 for a hash found in both.
        let mut seen = std::collections::HashSet::new();
        found.retain(|(hash, _, _)| seen.insert(hash.clone()));
        let previous = self.index_state.lock().unwrap().listed.take();
        let mut previous = previous.unwrap_or_default();
        if !previous.is_empty()
            && previous.len() == found.len()
            && found.iter().all(|(_, _, p)| previous.contains_key(p))
        {
            self.index_state.lock().unwrap().listed = Some(previous);
            return Ok(IndexRead::Unchanged);
        }
        let mut listed: HashMap<String, Vec<SpecNode>> = HashMap::new();
        let mut todo = Vec::new();
        for (hash, lay, path) in found {
            match previous.remove(&path) {
                Some(recs) => {
                    listed.insert(path, recs);
                }
                None => todo.push((hash, lay, path)),
            }
        }
        let this = self;
        let peeked: Vec<_> =
            futures::stream::iter(todo.into_iter().map(|(hash, lay, path)| async move {
                let meta = this.meta_listed(lay, &path, &hash).await;
                (hash, path, meta)
            }))
            .buffered(16)
            .collect()
            .await;
        for (hash, path, meta) in peeked {
            let meta = match meta {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("mirror {}: not listing {hash}: {e}", self.url());
                    continue;
                }
            };
            // The package, and the other nodes of its DAG (in the cache or not: their own
            // manifests, if any, say so).
            let mut nodes = vec![meta.node().clone()];
            nodes.extend(meta.dag.nodes.values().filter(|n| n.hash != hash).cloned());
            listed.insert(path, nodes);
        }
        if listed.is_empty() {
            return Err(MirrorError::Empty {
                mirror: self.url().to_string(),
            });
        }
        // Packages first (in listing order), then the DAG nodes they name.
        let mut paths: Vec<&String> = listed.keys().collect();
        paths.sort();
        let packages = paths.iter().map(|p| (&listed[*p][0], true));
        let others = paths
            .iter()
            .flat_map(|p| listed[*p][1..].iter().map(|n| (n, false)));
        let records = IndexTable::from_nodes(packages.chain(others)).map_err(|source| {
            MirrorError::Format {
                mirror: self.url().to_string(),
                source,
            }
        })?;
        self.index_state.lock().unwrap().listed = Some(listed);
        // Each package's metadata was verified as a fetch verifies it.
        Ok(IndexRead::Fresh {
            records: Box::new(Verified::new(records)),
            source: IndexSource::Listing,
            lacking: HashSet::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mirror::Backoff;

    fn mirror_of(dir: &std::path::Path) -> Mirror {
        let store = crate::transport::open(&dir.to_string_lossy(), &Default::default()).unwrap();
        Mirror::new(
            "t",
            store,
            TrustPolicy::Unsigned,
            Backoff::default(),
            Duration::from_secs(60),
        )
    }

    /// A v2 `index.json.hash` that is not a sha256 (here: text cut inside a character when
    /// quoted) is an error naming it, never a panic.
    #[tokio::test]
    async fn a_v2_index_hash_that_is_no_sha256_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("build_cache")).unwrap();
        let text = format!("{}é and more", "x".repeat(79));
        std::fs::write(dir.path().join(V2_INDEX_HASH), text).unwrap();
        std::fs::write(
            dir.path().join(layout::V2_INDEX),
            r#"{"database":{"version":"8","installs":{}}}"#,
        )
        .unwrap();
        let err = match mirror_of(dir.path()).read_index().await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(err.contains("index.json.hash"), "{err}");
    }

    /// An index blob that does not match its manifest is refused, and a later read of the
    /// same (still bad) index is refused again: nothing unverified is ever remembered.
    #[tokio::test]
    async fn an_index_blob_that_does_not_match_is_refused_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let w = crate::writer::MirrorWriter::new(&dir.path().join("m"), None).unwrap();
        w.finish().unwrap();
        let m = dir.path().join("m");
        let manifest = std::fs::read(m.join(layout::V3_INDEX_MANIFEST)).unwrap();
        let man = Manifest::parse(&manifest, "t").unwrap();
        let blob = m.join(man.data[0].path());
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&blob, bytes).unwrap();
        let mirror = mirror_of(&m);
        for _ in 0..2 {
            let err = match mirror.read_index().await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted"),
            };
            assert!(err.contains("does not match its sha256"), "{err}");
        }
    }
}
