//! Copying packages of one mirror into a local directory exactly as the mirror stores them
//! (`spackfs mirror copy`, air-gapped seeding): each package's manifest (v3) or spec file
//! (v2) and the blobs it names, the mirror's index and its published public keys, byte for
//! byte at the same mirror-relative paths, so that the directory is a `file://` mirror for
//! spackfs and for Spack. Nothing is rewritten or re-signed.
//!
//! Every byte is checked before it is in place: a package's manifest is verified as a mount
//! verifies it ([`Mirror::package_files`]: signature per the trust policy, spec blob, bound
//! to the package); a blob streams into a temporary file beside its final place while it is
//! hashed, and is renamed there only when its sha256 (and size) match what the checked
//! manifest says. A package's blobs are written before its manifest, so a manifest in the
//! copy implies its blobs are there. Files already in place with the right content are left
//! alone (blobs are re-hashed), so an interrupted copy is resumed by running it again.
//!
//! Paths written come only from validated names and parsed digests
//! ([`crate::buildcache::layout`], [`BlobRecord::path`]); [`Dest`] refuses anything else.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use super::index::V2_INDEX_HASH;
use super::{Mirror, MirrorError, SMALL_LIMIT};
use crate::buildcache::checksum::Sha256;
use crate::buildcache::layout;
use crate::buildcache::manifest::{self, BlobRecord, Manifest};
use crate::buildcache::spec::SpecNode;
use crate::install::hashing::HashingReader;
use crate::transport::{self, TransportError};

const V3_LAYOUT_FILE: &str = "v3/layout.json";
const V3_KEY_INDEX: &str = "v3/manifests/key/keys.manifest.json";
const V2_KEY_DIR: &str = "build_cache/_pgp/";
const V2_KEY_INDEX: &str = "build_cache/_pgp/index.json";

/// Errors of a copy, naming the package, the file and the mirror at fault.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Mismatch(Box<Mismatch>),
    #[error("{package}: blob {path} from mirror {mirror} is {actual} bytes, its verified manifest says {expected}: not copied")]
    Length {
        package: String,
        path: String,
        mirror: String,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to write {path:?} into the copy: not a plain relative path")]
    BadPath { path: String },
    #[error("copying from an OCI registry is not supported: {mirror} (copy from a file://, http(s):// or s3:// build cache)")]
    Oci { mirror: String },
    #[error("mirror {mirror}: {what}: {message}")]
    Invalid {
        mirror: String,
        what: String,
        message: String,
    },
}

/// A blob whose sha256 is not the one its checked manifest gives.
#[derive(Debug, thiserror::Error)]
#[error("{package}: blob {path} from mirror {mirror} does not match the sha256 its verified manifest gives (expected {expected}, got {actual}): not copied")]
pub struct Mismatch {
    pub package: String,
    pub path: String,
    pub mirror: String,
    pub expected: Sha256,
    pub actual: Sha256,
}

impl From<TransportError> for CopyError {
    fn from(e: TransportError) -> Self {
        CopyError::Mirror(MirrorError::Transport(e))
    }
}

/// Told of the tarball bytes a copy has dealt with (written, or found already in place).
pub trait Progress: Send + Sync {
    fn bytes(&self, n: u64);
}

/// What became of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written, this many bytes.
    New(u64),
    /// Already in place with the right content, this many bytes.
    Present(u64),
}

/// Tally of the files a copy dealt with.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub files_written: usize,
    pub bytes_written: u64,
    pub files_present: usize,
    pub bytes_present: u64,
}

impl Tally {
    fn add(&mut self, w: Written) {
        match w {
            Written::New(n) => {
                self.files_written += 1;
                self.bytes_written += n;
            }
            Written::Present(n) => {
                self.files_present += 1;
                self.bytes_present += n;
            }
        }
    }

    pub fn merge(&mut self, o: Tally) {
        self.files_written += o.files_written;
        self.bytes_written += o.bytes_written;
        self.files_present += o.files_present;
        self.bytes_present += o.bytes_present;
    }
}

/// The directory a copy is written to.
#[derive(Debug, Clone)]
pub struct Dest {
    root: PathBuf,
}

impl Dest {
    /// The copy at `root` (created if needed).
    pub fn new(root: &Path) -> Result<Self, CopyError> {
        std::fs::create_dir_all(root).map_err(|source| CopyError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(Dest {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where mirror-relative `rel` goes: only plain relative paths (no `..`, `.`, root).
    fn path(&self, rel: &str) -> Result<PathBuf, CopyError> {
        let p = Path::new(rel);
        let plain = !rel.is_empty()
            && p.components().all(|c| matches!(c, Component::Normal(_)))
            && !rel.contains("/./")
            && !rel.ends_with('/');
        if !plain {
            return Err(CopyError::BadPath {
                path: rel.to_string(),
            });
        }
        Ok(self.root.join(p))
    }

    /// A temporary file in the directory of `path` (created as needed).
    fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile, CopyError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let io = |source| CopyError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        tempfile::Builder::new()
            .prefix(".spackfs-copy-")
            .tempfile_in(dir)
            .map_err(io)
    }

    fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<(), CopyError> {
        tmp.persist(path).map_err(|e| CopyError::Io {
            path: path.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Put `bytes` (already checked) at `rel`, unless the same bytes are there.
    pub fn write_bytes(&self, rel: &str, bytes: &[u8]) -> Result<Written, CopyError> {
        let path = self.path(rel)?;
        if std::fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(Written::Present(bytes.len() as u64));
        }
        let mut tmp = Self::temp_beside(&path)?;
        let io = |source| CopyError::Io {
            path: tmp_path_of(&path),
            source,
        };
        tmp.write_all(bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        Self::persist(tmp, &path)?;
        tracing::debug!("wrote {}", path.display());
        Ok(Written::New(bytes.len() as u64))
    }

    /// The size of the file at `path` when it exists and has sha256 `expected`.
    async fn present(&self, path: &Path, expected: Sha256) -> Result<Option<u64>, CopyError> {
        let p = path.to_path_buf();
        let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<(Sha256, u64)> {
            HashingReader::new(std::fs::File::open(&p)?).finish()
        })
        .await
        .map_err(|e| CopyError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        match hashed {
            Ok((sum, len)) if sum == expected => Ok(Some(len)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CopyError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Stream blob `rel` of `mirror` to the same place here: hashed while it is written to
    /// a temporary file, renamed into place only when its sha256 is `expected` (and its
    /// size `size`, when known). A file already there with that sha256 is kept.
    pub async fn copy_blob(
        &self,
        mirror: &Mirror,
        package: &str,
        rel: &str,
        expected: Sha256,
        size: Option<u64>,
        progress: Option<&dyn Progress>,
    ) -> Result<Written, CopyError> {
        let path = self.path(rel)?;
        if let Some(len) = self.present(&path, expected).await? {
            if let Some(p) = progress {
                p.bytes(len);
            }
            return Ok(Written::Present(len));
        }
        let tmp = Self::temp_beside(&path)?;
        let io = |source| CopyError::Io {
            path: tmp_path_of(&path),
            source,
        };
        let mut file = tokio::fs::File::from_std(tmp.as_file().try_clone().map_err(io)?);
        let mut stream = mirror.store().get(rel).await?;
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        let length_err = |actual| CopyError::Length {
            package: package.to_string(),
            path: rel.to_string(),
            mirror: mirror.url().to_string(),
            expected: size.unwrap_or_default(),
            actual,
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport::stream_error(e, mirror.url(), rel))?;
            len += chunk.len() as u64;
            if size.is_some_and(|s| len > s) {
                return Err(length_err(len));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
            if let Some(p) = progress {
                p.bytes(chunk.len() as u64);
            }
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        if size.is_some_and(|s| len != s) {
            return Err(length_err(len));
        }
        let actual = Sha256::from_hasher(hasher);
        if actual != expected {
            return Err(CopyError::Mismatch(Box::new(Mismatch {
                package: package.to_string(),
                path: rel.to_string(),
                mirror: mirror.url().to_string(),
                expected,
                actual,
            })));
        }
        Self::persist(tmp, &path)?;
        tracing::debug!("wrote {}", path.display());
        Ok(Written::New(len))
    }
}

/// For messages about a temporary file: the directory it is in.
fn tmp_path_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// Refuse a mirror a copy cannot read file by file.
pub fn check_source(mirror: &Mirror) -> Result<(), CopyError> {
    if mirror.store().is_registry() {
        return Err(CopyError::Oci {
            mirror: mirror.url().to_string(),
        });
    }
    Ok(())
}

/// Copy package `node` (not its dependencies): its tarball, its spec blob (v3), then its
/// manifest or spec file. `compiler` is its compiler, for v2 file names.
pub async fn copy_package(
    mirror: &Mirror,
    dest: &Dest,
    node: &SpecNode,
    compiler: Option<&(String, String)>,
    progress: Option<&dyn Progress>,
) -> Result<Tally, CopyError> {
    check_source(mirror)?;
    let (meta, files) = mirror.package_files(node, compiler).await?.into_inner();
    let package = node.display();
    let mut tally = Tally::default();
    tally.add(
        dest.copy_blob(
            mirror,
            &package,
            &meta.tarball_path,
            meta.tarball_sha256,
            meta.tarball_size,
            progress,
        )
        .await?,
    );
    if let Some(blob) = &files.spec_blob {
        // Read and checked against the verified manifest by `package_files`.
        tally.add(dest.write_bytes(&blob.path, &blob.bytes)?);
    }
    tally.add(dest.write_bytes(&files.manifest_path, &files.manifest)?);
    Ok(tally)
}

/// Copy the mirror's indexes: the v3 index manifest and its blob (checked against it), the
/// v2 `index.json` (checked against `index.json.hash`, copied too) and `v3/layout.json`,
/// each where the mirror has one. Returns the paths copied.
pub async fn copy_index(mirror: &Mirror, dest: &Dest) -> Result<(Vec<String>, Tally), CopyError> {
    check_source(mirror)?;
    let mut copied = Vec::new();
    let mut tally = Tally::default();
    let what = "index";
    if let Some(raw) = mirror.get_optional(layout::V3_INDEX_MANIFEST).await? {
        let rec = mirror.index_manifest_record(raw.clone())?;
        tally.add(copy_record(mirror, dest, what, &rec).await?);
        tally.add(dest.write_bytes(layout::V3_INDEX_MANIFEST, &raw)?);
        copied.push(layout::V3_INDEX_MANIFEST.to_string());
    }
    if let Some(raw) = mirror.get_optional(V2_INDEX_HASH).await? {
        let sum = mirror.v2_index_hash(&raw)?;
        tally.add(
            dest.copy_blob(mirror, what, layout::V2_INDEX, sum, None, None)
                .await?,
        );
        tally.add(dest.write_bytes(V2_INDEX_HASH, &raw)?);
        copied.push(layout::V2_INDEX.to_string());
    } else if let Some(raw) = mirror.get_optional(layout::V2_INDEX).await? {
        // No hash file: nothing to check it against (as for a mount, which reads it as is).
        tally.add(dest.write_bytes(layout::V2_INDEX, &raw)?);
        copied.push(layout::V2_INDEX.to_string());
    }
    if let Some(raw) = mirror.get_optional(V3_LAYOUT_FILE).await? {
        tally.add(dest.write_bytes(V3_LAYOUT_FILE, &raw)?);
    }
    Ok((copied, tally))
}

/// Copy the public keys the mirror publishes: v3 key manifests and key blobs (named by the
/// key index, and found by listing where that is cheap), the v3 key index, and v2's
/// `build_cache/_pgp/`. Keys are copied, never trusted. Returns the fingerprints copied.
pub async fn copy_keys(
    mirror: &Mirror,
    dest: &Dest,
) -> Result<(BTreeSet<String>, Tally), CopyError> {
    check_source(mirror)?;
    let mut tally = Tally::default();
    let mut v3 = BTreeSet::new();
    if let Some(raw) = mirror.get_optional(V3_KEY_INDEX).await? {
        let rec = unsigned_record(mirror, V3_KEY_INDEX, &raw, manifest::MEDIA_KEY_INDEX)?;
        let blob = checked_small_blob(mirror, "key index", &rec).await?;
        v3.extend(fingerprints(mirror, &rec.path(), &blob)?);
        tally.add(dest.write_bytes(&rec.path(), &blob)?);
        tally.add(dest.write_bytes(V3_KEY_INDEX, &raw)?);
    }
    if mirror.store().lists_cheaply() {
        for p in mirror
            .store()
            .list(layout::V3_KEY_DIR)
            .await?
            .unwrap_or_default()
        {
            let fpr = p
                .strip_prefix(layout::V3_KEY_DIR)
                .and_then(|f| f.strip_suffix(".key.manifest.json"));
            if let Some(fpr) = fpr.filter(|f| is_fingerprint(f)) {
                v3.insert(fpr.to_string());
            }
        }
    }
    let mut copied = BTreeSet::new();
    for fpr in &v3 {
        let path = format!("{}{fpr}.key.manifest.json", layout::V3_KEY_DIR);
        let Some(raw) = mirror.get_optional(&path).await? else {
            tracing::warn!(
                "mirror {}: its key index names key {fpr}, but {path} is absent",
                mirror.url()
            );
            continue;
        };
        let rec = unsigned_record(mirror, &path, &raw, manifest::MEDIA_KEY)?;
        tally.add(copy_record(mirror, dest, &format!("key {fpr}"), &rec).await?);
        tally.add(dest.write_bytes(&path, &raw)?);
        copied.insert(fpr.clone());
    }
    // v2: `_pgp/index.json` names the keys, each `_pgp/<FPR>.pub` (no checksums to check).
    let mut v2 = BTreeSet::new();
    let v2_index = mirror.get_optional(V2_KEY_INDEX).await?;
    if let Some(raw) = &v2_index {
        v2.extend(fingerprints(mirror, V2_KEY_INDEX, raw)?);
    }
    if mirror.store().lists_cheaply() {
        for p in mirror.store().list(V2_KEY_DIR).await?.unwrap_or_default() {
            let fpr = p
                .strip_prefix(V2_KEY_DIR)
                .and_then(|f| f.strip_suffix(".pub"));
            if let Some(fpr) = fpr.filter(|f| is_fingerprint(f)) {
                v2.insert(fpr.to_string());
            }
        }
    }
    for fpr in &v2 {
        let path = format!("{V2_KEY_DIR}{fpr}.pub");
        if let Some(raw) = mirror.get_optional(&path).await? {
            tally.add(dest.write_bytes(&path, &raw)?);
            copied.insert(fpr.clone());
        }
    }
    if let Some(raw) = &v2_index {
        tally.add(dest.write_bytes(V2_KEY_INDEX, raw)?);
    }
    Ok((copied, tally))
}

/// Copy the blob of record `rec` (checked against it).
async fn copy_record(
    mirror: &Mirror,
    dest: &Dest,
    what: &str,
    rec: &BlobRecord,
) -> Result<Written, CopyError> {
    dest.copy_blob(
        mirror,
        what,
        &rec.path(),
        rec.checksum,
        Some(rec.content_length),
        None,
    )
    .await
}

/// A small blob read whole, checked against its record.
async fn checked_small_blob(
    mirror: &Mirror,
    what: &str,
    rec: &BlobRecord,
) -> Result<Vec<u8>, CopyError> {
    let path = rec.path();
    let blob = mirror.store().get_bytes(&path, SMALL_LIMIT).await?;
    let actual = Sha256::of(&blob);
    if actual != rec.checksum {
        return Err(CopyError::Mismatch(Box::new(Mismatch {
            package: what.to_string(),
            path,
            mirror: mirror.url().to_string(),
            expected: rec.checksum,
            actual,
        })));
    }
    Ok(blob)
}

/// The record of `media` in a manifest Spack never signs (key manifests): its text is read
/// out of a clearsigned wrapper unchecked, if it has one.
fn unsigned_record(
    mirror: &Mirror,
    path: &str,
    raw: &[u8],
    media: &str,
) -> Result<BlobRecord, CopyError> {
    let what = format!("{}/{path}", mirror.url());
    let text = if manifest::is_clearsigned(raw) {
        manifest::clearsigned_text_unverified(raw).ok_or_else(|| CopyError::Invalid {
            mirror: mirror.url().to_string(),
            what: path.to_string(),
            message: "malformed clearsigned text".into(),
        })?
    } else {
        raw.to_vec()
    };
    let format_err = |source| MirrorError::Format {
        mirror: mirror.url().to_string(),
        source,
    };
    let man = Manifest::parse(&text, &what).map_err(format_err)?;
    Ok(man.find(media, &what).map_err(format_err)?.clone())
}

/// The fingerprints a key index (`{"keys": {FPR: {}}}`) names; one that is not 40 hex
/// digits is an error (it would become a file name).
fn fingerprints(mirror: &Mirror, path: &str, json: &[u8]) -> Result<Vec<String>, CopyError> {
    let invalid = |message: String| CopyError::Invalid {
        mirror: mirror.url().to_string(),
        what: path.to_string(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
    let keys = v
        .get("keys")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| invalid("no \"keys\" object".into()))?;
    keys.keys()
        .map(|k| match is_fingerprint(k) {
            true => Ok(k.clone()),
            false => Err(invalid(format!(
                "{:?} is not a key fingerprint (40 hex digits)",
                k.chars().take(80).collect::<String>()
            ))),
        })
        .collect()
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_refuses_paths_that_are_not_plain() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Dest::new(tmp.path()).unwrap();
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a/", "./a"] {
            assert!(
                matches!(d.path(bad), Err(CopyError::BadPath { .. })),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            d.path("blobs/sha256/ab/abc").unwrap(),
            tmp.path().join("blobs/sha256/ab/abc")
        );
    }

    #[test]
    fn write_bytes_is_idempotent_and_replaces_other_content() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Dest::new(tmp.path()).unwrap();
        assert_eq!(d.write_bytes("a/b.json", b"one").unwrap(), Written::New(3));
        assert_eq!(
            d.write_bytes("a/b.json", b"one").unwrap(),
            Written::Present(3)
        );
        assert_eq!(d.write_bytes("a/b.json", b"two!").unwrap(), Written::New(4));
        assert_eq!(std::fs::read(tmp.path().join("a/b.json")).unwrap(), b"two!");
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("a"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    }

    #[test]
    fn fingerprints_must_be_40_hex_digits() {
        assert!(is_fingerprint("3B013CE4DA967E28C2F5EB993B65F4B5EC0AB260"));
        assert!(!is_fingerprint("../../../../../../../../../../../../../a"));
        assert!(!is_fingerprint("3B013CE4DA967E28C2F5EB993B65F4B5EC0AB26"));
    }
}
