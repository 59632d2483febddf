//! Hardened, streaming extraction of a Spack tarball into a staging directory.
//!
//! The tarball is hostile until its sha256 matched, and still checked after: member names are
//! compared component-wise; absolute names, `.`/`..`, empty components and NUL bytes are
//! refused; nothing is written below a symlink member; hard links must name an earlier regular
//! file; only directories, regular files, symlinks and hard links are accepted; modes lose
//! setuid/setgid/sticky and group/world write bits. Members land at their full names under
//! the staging root; when the stream ends, the package prefix is located from the shortest
//! `.spack/binary_distribution` (as Spack does) and every member must lie inside it (or be one
//! of its parent directories).

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::handoff::{handoff, ChunkReader, ChunkSender};
use super::hashing::HashingReader;
use super::inflate::{decoder, LimitReader};
use super::writers::{set_mode_and_times, Writers, MAX_HANDED};
use super::{InstallError, Limits};
use crate::buildcache::buildinfo::BuildInfo;
use crate::buildcache::checksum::{FileDigest, FileHasher, Sha256};

/// Spack leaves untouched entries with mtime 0.
pub fn epoch_times() -> std::fs::FileTimes {
    std::fs::FileTimes::new()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .set_accessed(std::time::SystemTime::UNIX_EPOCH)
}

/// What a member is, once extracted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKind {
    Dir,
    File,
    Symlink,
    /// A hard link to the named earlier member.
    HardLink(String),
}

/// An extracted (not yet relocated) package in staging.
#[derive(Debug)]
pub struct Extracted {
    /// The package prefix inside staging.
    pub prefix_dir: PathBuf,
    /// The member name of the prefix (build-time prefix without the leading `/`).
    pub member_prefix: String,
    /// The relocation metadata.
    pub buildinfo: BuildInfo,
    /// Members below the prefix, by path relative to it, with their kind and tar mode.
    pub members: HashMap<String, (MemberKind, u32)>,
    /// Digest of each regular file below the prefix, by path relative to it, taken
    /// as its bytes were written (no second read). Files that hard links name are left out:
    /// a change through one name would leave the other's digest stale.
    pub digests: HashMap<String, FileDigest>,
    /// sha256 and size of the stored (compressed) blob.
    pub sha256: Sha256,
    pub compressed_bytes: u64,
    /// Bytes of tar data inflated.
    pub unpacked_bytes: u64,
}

/// Extract `input` (the stored blob bytes) into `staging` and check its sha256 (and length,
/// when known) against the manifest; with `digests`, take each file's BLAKE3 digest as it is
/// written. On any error the caller removes `staging`.
pub fn extract(
    input: impl Read + Send,
    expected_sha256: &Sha256,
    expected_len: Option<u64>,
    staging: &Path,
    limits: Limits,
    digests: bool,
    what: &str,
) -> Result<Extracted, InstallError> {
    let (inflated, result) = untar(input, staging, limits, digests, what);
    let inflated = inflated.map_err(|e| InstallError::Tar {
        what: what.to_string(),
        message: format!("reading the blob: {e}"),
    })?;
    let (sha256, compressed_bytes) = (inflated.sha256, inflated.compressed_bytes);
    if let Some(expected) = expected_len {
        if expected != compressed_bytes {
            return Err(InstallError::Length {
                what: what.to_string(),
                expected,
                actual: compressed_bytes,
            });
        }
    }
    if sha256 != *expected_sha256 {
        return Err(InstallError::Checksum {
            what: what.to_string(),
            expected: expected_sha256.to_string(),
            actual: sha256.to_string(),
        });
    }
    let members = inflated.judge(result, limits, what)?;
    locate_prefix(
        members,
        staging,
        sha256,
        compressed_bytes,
        inflated.unpacked_bytes,
        what,
    )
}

/// One member as recorded during the stream (full name, no trailing slash).
struct Member {
    name: String,
    kind: MemberKind,
    mode: u32,
    /// A regular file's content digest.
    digest: Option<FileDigest>,
}

/// Untar `input` (the stored blob) into `staging` on several threads: one reads and hashes
/// the blob, one inflates it, and this thread reads the inflated stream from a bounded
/// hand-off, checks every member and creates directories, links and large files; small
/// files go, with their bytes, to writer threads that create and digest them
/// ([`super::writers`]). A single large package so keeps the cores busy, and the hash is
/// not on the inflater's path. Returns what the reading and inflating threads saw (`Err`:
/// the blob could not be read) and the members extracted.
fn untar(
    input: impl Read + Send,
    staging: &Path,
    limits: Limits,
    digests: bool,
    what: &str,
) -> (std::io::Result<Inflated>, Result<Vec<Member>, InstallError>) {
    std::thread::scope(|scope| {
        let (blob_tx, blob_rx) = handoff();
        let reader = std::thread::Builder::new()
            .name("spackfs-read".into())
            .spawn_scoped(scope, move || {
                let mut hashing = HashingReader::new(input);
                blob_tx.pump(&mut hashing);
                // The inflater may have stopped early: the rest is hashed all the same (a
                // corrupt blob is reported as such).
                hashing.finish()
            });
        let reader = match reader {
            Ok(h) => h,
            Err(e) => return (Err(e), Ok(Vec::new())),
        };
        let (tx, mut rx) = handoff();
        let inflater = std::thread::Builder::new()
            .name("spackfs-inflate".into())
            .spawn_scoped(scope, move || inflate(blob_rx, limits, tx));
        let inflater = match inflater {
            Ok(h) => h,
            Err(e) => return (Err(e), Ok(Vec::new())),
        };
        let writers = Writers::start(scope, writer_threads());
        let result = untar_members(&mut rx, staging, digests, what, writers);
        // Hanging up stops the inflater at its next chunk, which stops the reader's pump.
        drop(rx);
        let decoded = inflater
            .join()
            .map_err(|_| std::io::Error::other("the inflating thread panicked"));
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reading thread panicked")));
        let inflated = read.and_then(|(sha256, compressed_bytes)| {
            let decoded = decoded?;
            Ok(Inflated {
                sha256,
                compressed_bytes,
                unpacked_bytes: decoded.unpacked_bytes,
                compression_error: decoded.compression_error,
                exceeded: decoded.exceeded,
            })
        });
        (inflated, result)
    })
}

/// What the inflating thread saw of the blob.
struct Inflated {
    /// sha256 and length of the whole blob, read to its end even when untar stopped early
    /// (a corrupt blob is reported as such).
    sha256: Sha256,
    compressed_bytes: u64,
    /// Tar bytes inflated.
    unpacked_bytes: u64,
    /// The blob is not gzip or zstd: what it starts with instead.
    compression_error: Option<String>,
    /// It inflated past the limit.
    exceeded: bool,
}

impl Inflated {
    /// The outcome of the untar that read this stream: what went wrong with the stream
    /// (not compressed as expected, too large) explains an untar error it caused.
    fn judge(
        &self,
        result: Result<Vec<Member>, InstallError>,
        limits: Limits,
        what: &str,
    ) -> Result<Vec<Member>, InstallError> {
        if let Some(found) = &self.compression_error {
            return Err(InstallError::Compression {
                what: what.to_string(),
                found: found.clone(),
            });
        }
        if self.exceeded {
            return Err(InstallError::TooLarge {
                what: what.to_string(),
                limit: limits.max_unpacked,
            });
        }
        result
    }
}

/// What the inflating thread saw of the stream.
struct Decoded {
    unpacked_bytes: u64,
    compression_error: Option<String>,
    exceeded: bool,
}

/// The inflating thread: inflate the blob coming through `input`, watching the tar headers
/// as they pass, and hand the tar stream to the untar thread through `tx`. (A failure to
/// read the blob is the reading thread's to report.)
fn inflate(input: ChunkReader, limits: Limits, tx: ChunkSender) -> Decoded {
    let (compression_error, exceeded, unpacked_bytes) = match decoder(input) {
        Err(found) => (Some(found), false, 0),
        Ok(inflated) => {
            let mut limited = LimitReader::new(inflated, limits.max_unpacked);
            tx.pump(&mut HeaderGuard::new(&mut limited));
            (None, limited.exceeded(), limited.total())
        }
    };
    Decoded {
        unpacked_bytes,
        compression_error,
        exceeded,
    }
}

/// The longest extension header (pax `x`/`g`, GNU `L`/`K`) a tarball may have: the `tar`
/// crate reads one whole into memory, so its size field would otherwise decide how much is
/// allocated (a pax header of gigabytes of zeros compresses to almost nothing).
const MAX_EXTENSION_HEADER: u64 = 1 << 20;

/// Watches the headers of the tar stream as they pass, block for block in step with the `tar`
/// crate (a member's data length is its header's size, or the `size` record of a pax header
/// before it), and fails the read that brings the header of an extension member longer than
/// [`MAX_EXTENSION_HEADER`].
struct HeaderGuard<R> {
    inner: R,
    header: [u8; 512],
    filled: usize,
    /// Bytes of the current member's (padded) data still to pass.
    data_left: u64,
    /// The data of the pax header passing, and its length without padding.
    pax: Option<(Vec<u8>, u64)>,
    /// The `size` record of the last pax header, for the next member that is not an
    /// extension.
    pax_size: Option<u64>,
    /// Past the end of the archive, or at a header the `tar` crate refuses or a sparse member
    /// (which extraction refuses): nothing more to watch.
    done: bool,
}

impl<R: Read> HeaderGuard<R> {
    fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            header: [0; 512],
            filled: 0,
            data_left: 0,
            pax: None,
            pax_size: None,
            done: false,
        }
    }

    fn observe(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() && !self.done {
            if self.data_left > 0 {
                let n = self.data_left.min(data.len() as u64) as usize;
                if let Some((p, len)) = &mut self.pax {
                    let want = (*len as usize).saturating_sub(p.len()).min(n);
                    p.extend_from_slice(&data[..want]);
                }
                self.data_left -= n as u64;
                data = &data[n..];
                if self.data_left == 0 {
                    self.end_of_data();
                }
                continue;
            }
            let n = (512 - self.filled).min(data.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == 512 {
                self.filled = 0;
                self.on_header()?;
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> std::io::Result<()> {
        if self.header.iter().all(|b| *b == 0) {
            self.done = true;
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&self.header);
        let kind = header.entry_type();
        let Ok(mut size) = header.entry_size() else {
            self.done = true;
            return Ok(());
        };
        let pax_or_long =
            kind.is_pax_local_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink();
        if !pax_or_long {
            // The member a pax header describes: its size record applies (not to a global
            // header, which takes the pax header up all the same).
            let pending = self.pax_size.take();
            if !kind.is_pax_global_extensions() {
                size = pending.unwrap_or(size);
            }
        }
        if kind.is_gnu_sparse() {
            self.done = true;
            return Ok(());
        }
        if (pax_or_long || kind.is_pax_global_extensions()) && size > MAX_EXTENSION_HEADER {
            return Err(std::io::Error::other(format!(
                "member {:?}: {kind:?} extension header of {size} bytes (at most {MAX_EXTENSION_HEADER})",
                String::from_utf8_lossy(&header.path_bytes())
            )));
        }
        self.pax = kind
            .is_pax_local_extensions()
            .then(|| (Vec::with_capacity(size as usize), size));
        let Some(padded) = size.checked_add(511) else {
            // The `tar` crate refuses it ("size overflow").
            self.done = true;
            return Ok(());
        };
        self.data_left = padded & !511;
        if self.data_left == 0 {
            self.end_of_data();
        }
        Ok(())
    }

    fn end_of_data(&mut self) {
        if let Some((p, _)) = self.pax.take() {
            self.pax_size = pax_size(&p);
        }
    }
}

/// The `size` record of pax data, read as the `tar` crate reads it.
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() == Ok("size") {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

fn untar_members(
    input: &mut (impl Read + std::io::Seek),
    staging: &Path,
    digests: bool,
    what: &str,
    mut writers: Writers,
) -> Result<Vec<Member>, InstallError> {
    let mut members = Vec::new();
    let result = untar_each(input, staging, digests, what, &mut writers, &mut members);
    // A file the writers failed on before the member the untar stopped at (if it did) is
    // the error: the one a member-by-member untar would have met first.
    let reached = if result.is_ok() {
        usize::MAX
    } else {
        members.len()
    };
    match (writers.finish(reached), result) {
        (Err((_, dest, e)), _) => Err(map_copy_err(e, what, &dest)),
        (Ok(_), Err(e)) => Err(e),
        (Ok(written), Ok(())) => {
            for (i, d) in written {
                if let Some(m) = members.get_mut(i) {
                    m.digest = d;
                }
            }
            Ok(members)
        }
    }
}

/// How many writer threads an extraction gets: one per core beside the inflating and
/// untar threads' own, at least one (two cores: the three share them), at most four.
fn writer_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(2))
        .clamp(1, 4)
}

/// The untar loop: members checked and created in order (small files handed to
/// `writers`), each recorded in `members` once done or handed over.
fn untar_each(
    input: &mut (impl Read + std::io::Seek),
    staging: &Path,
    digests: bool,
    what: &str,
    writers: &mut Writers,
    members: &mut Vec<Member>,
) -> Result<(), InstallError> {
    let tar_err = |e: std::io::Error| InstallError::Tar {
        what: what.to_string(),
        message: e.to_string(),
    };
    let mut archive = tar::Archive::new(input);
    // Seeking forward skips padding and unread data without copying it through a buffer.
    // Members by name (every member's ancestors are looked up here: a fast hash).
    let mut kinds: Kinds = Kinds::default();
    let mut symlinks: hashbrown::HashSet<String> = hashbrown::HashSet::default();
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive.entries_with_seek().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let etype = entry.header().entry_type();
        if matches!(etype, EntryType::XGlobalHeader) {
            continue;
        }
        let raw_name = entry.path_bytes().into_owned();
        let name = check_name(&raw_name).map_err(|reason| InstallError::UnsafeMember {
            what: what.to_string(),
            member: String::from_utf8_lossy(&raw_name).into_owned(),
            reason,
        })?;
        let unsafe_member = |reason: String| InstallError::UnsafeMember {
            what: what.to_string(),
            member: name.clone(),
            reason,
        };
        // Nothing may be written below a symlink (or a file). Below a directory member
        // nothing can be: its own ancestors were checked when it came, and none of them
        // can be replaced since (a second member of a name is refused).
        let below_dir = name
            .rsplit_once('/')
            .is_some_and(|(parent, _)| kinds.get(parent) == Some(&MemberKind::Dir));
        for (i, _) in name.match_indices('/').filter(|_| !below_dir) {
            let ancestor = &name[..i];
            if symlinks.contains(ancestor) {
                return Err(unsafe_member(format!(
                    "its parent {ancestor:?} is a symlink: writing through it is refused"
                )));
            }
            if matches!(
                kinds.get(ancestor),
                Some(MemberKind::File | MemberKind::HardLink(_))
            ) {
                return Err(unsafe_member(format!("its parent {ancestor:?} is a file")));
            }
        }
        let mode = entry.header().mode().map_err(tar_err)? & 0o755;
        let dest = staging.join(&name);
        let mut digest = None;
        let kind = match etype {
            EntryType::Directory => {
                match kinds.get(&name) {
                    None | Some(MemberKind::Dir) => {}
                    Some(_) => return Err(unsafe_member("duplicate member".into())),
                }
                create_parent(&name, &dest, &kinds, what)?;
                match std::fs::create_dir(&dest) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(InstallError::io(what, &dest, e))
                    }
                    _ => {}
                }
                MemberKind::Dir
            }
            EntryType::Regular | EntryType::Continuous => {
                if kinds.contains_key(&name) {
                    return Err(unsafe_member("duplicate member".into()));
                }
                create_parent(&name, &dest, &kinds, what)?;
                // Created with its final mode (plus owner read/write, for relocation) and
                // Spack's epoch mtime; relocation's writes give changed files a new one.
                let size = entry.size();
                if writers.enabled() && size <= MAX_HANDED {
                    let len = size as usize;
                    let mut data = super::buffers::take(len);
                    entry
                        .read_exact(&mut data[..len])
                        .map_err(|e| map_copy_err(e, what, &dest))?;
                    writers
                        .write(members.len(), dest, data, len, mode, digests)
                        .map_err(|(p, e)| map_copy_err(e, what, &p))?;
                } else {
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .mode(mode | 0o600)
                        .open(&dest)
                        .map_err(|e| InstallError::io(what, &dest, e))?;
                    digest = copy(&mut entry, &mut f, &mut buf, digests)
                        .map_err(|e| map_copy_err(e, what, &dest))?;
                    set_mode_and_times(&f, mode | 0o600)
                        .map_err(|e| InstallError::io(what, &dest, e))?;
                }
                MemberKind::File
            }
            EntryType::Symlink => {
                if kinds.contains_key(&name) {
                    return Err(unsafe_member("duplicate member".into()));
                }
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_member("symlink without target".into()))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(unsafe_member("empty or NUL-containing symlink target".into()));
                }
                create_parent(&name, &dest, &kinds, what)?;
                let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&target);
                std::os::unix::fs::symlink(target, &dest)
                    .map_err(|e| InstallError::io(what, &dest, e))?;
                symlinks.insert(name.clone());
                MemberKind::Symlink
            }
            EntryType::Link => {
                if kinds.contains_key(&name) {
                    return Err(unsafe_member("duplicate member".into()));
                }
                let raw_target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_member("hard link without target".into()))?;
                let target = check_name(&raw_target)
                    .map_err(|r| unsafe_member(format!("hard link target: {r}")))?;
                if kinds.get(&target) != Some(&MemberKind::File) {
                    return Err(unsafe_member(format!(
                        "hard link to {target:?}, which is not an earlier regular file of the tarball"
                    )));
                }
                create_parent(&name, &dest, &kinds, what)?;
                let src = staging.join(&target);
                // Its target may still be with the writers.
                writers
                    .wait()
                    .map_err(|(p, e)| map_copy_err(e, what, &p))?;
                std::fs::hard_link(&src, &dest).map_err(|e| InstallError::io(what, &dest, e))?;
                MemberKind::HardLink(target)
            }
            other => {
                return Err(unsafe_member(format!(
                    "member type {other:?} is not allowed (only directories, files, symlinks, hard links)"
                )))
            }
        };
        kinds.insert(name.clone(), kind.clone());
        members.push(Member {
            name,
            kind,
            mode,
            digest,
        });
    }
    Ok(())
}

/// The members extracted so far, by name.
type Kinds = hashbrown::HashMap<String, MemberKind>;

/// Create the parent directories of `dest` unless the parent is a directory member already
/// extracted (the common case: Spack lists every directory before its content).
fn create_parent(name: &str, dest: &Path, kinds: &Kinds, what: &str) -> Result<(), InstallError> {
    if name
        .rsplit_once('/')
        .is_some_and(|(parent, _)| kinds.get(parent) == Some(&MemberKind::Dir))
    {
        return Ok(());
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| InstallError::io(what, parent, e))?;
    }
    Ok(())
}

/// Copy a member's data into its file, returning the digest of what was written if `digest`
/// asks for it.
fn copy(
    src: &mut impl Read,
    dst: &mut std::fs::File,
    buf: &mut [u8],
    digest: bool,
) -> std::io::Result<Option<FileDigest>> {
    use std::io::Write;
    let mut hasher = digest.then(FileHasher::new);
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(hasher.map(|h| h.finish())),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        if let Some(h) = &mut hasher {
            h.update(&buf[..n]);
        }
    }
}

fn map_copy_err(e: std::io::Error, what: &str, dest: &Path) -> InstallError {
    if e.raw_os_error().is_some() {
        InstallError::io(what, dest, e)
    } else {
        InstallError::Tar {
            what: what.to_string(),
            message: e.to_string(),
        }
    }
}

/// Check a member name: relative, no NUL, no empty/`.`/`..` components (a trailing `/` is
/// allowed). Returns the name without its trailing slash.
pub fn check_name(raw: &[u8]) -> Result<String, String> {
    let name = std::str::from_utf8(raw).map_err(|_| "name is not UTF-8".to_string())?;
    if name.contains('\0') {
        return Err("NUL byte in name".into());
    }
    if name.starts_with('/') {
        return Err("absolute name".into());
    }
    let name = name.strip_suffix('/').unwrap_or(name);
    if name.is_empty() {
        return Err("empty name".into());
    }
    for c in name.split('/') {
        match c {
            "" => return Err("empty path component".into()),
            "." | ".." => return Err(format!("{c:?} path component")),
            _ => {}
        }
    }
    Ok(name.to_string())
}

/// Is `name` equal to `prefix` or below it, comparing whole components?
fn is_within(name: &str, prefix: &str) -> bool {
    name == prefix
        || (name.len() > prefix.len()
            && name.starts_with(prefix)
            && name.as_bytes()[prefix.len()] == b'/')
}

fn locate_prefix(
    members: Vec<Member>,
    staging: &Path,
    sha256: Sha256,
    compressed_bytes: u64,
    unpacked_bytes: u64,
    what: &str,
) -> Result<Extracted, InstallError> {
    let layout_err = |message: String| InstallError::Layout {
        what: what.to_string(),
        message,
    };
    let info_name = members
        .iter()
        .filter(|m| m.kind == MemberKind::File)
        .map(|m| m.name.as_str())
        .filter(|n| {
            *n == ".spack/binary_distribution" || n.ends_with("/.spack/binary_distribution")
        })
        .min_by_key(|n| n.len())
        .ok_or_else(|| {
            layout_err("not a Spack package: the tarball has no .spack/binary_distribution".into())
        })?
        .to_string();
    let member_prefix = info_name
        .strip_suffix(".spack/binary_distribution")
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    if member_prefix.is_empty() {
        return Err(layout_err(
            ".spack/binary_distribution is at the top of the tarball: no package prefix".into(),
        ));
    }
    let mut has_prefix_dir = false;
    let mut out = HashMap::new();
    let linked: HashSet<&str> = members
        .iter()
        .filter_map(|m| match &m.kind {
            MemberKind::HardLink(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let mut digests = HashMap::new();
    for m in &members {
        if m.name == member_prefix {
            if m.kind != MemberKind::Dir {
                return Err(InstallError::UnsafeMember {
                    what: what.to_string(),
                    member: m.name.clone(),
                    reason: "the package prefix is not a directory".into(),
                });
            }
            has_prefix_dir = true;
            continue;
        }
        if is_within(&m.name, &member_prefix) {
            if let MemberKind::HardLink(target) = &m.kind {
                if !is_within(target, &member_prefix) {
                    return Err(InstallError::UnsafeMember {
                        what: what.to_string(),
                        member: m.name.clone(),
                        reason: format!("hard link to {target:?}, outside the package prefix"),
                    });
                }
            }
            let rel = m.name[member_prefix.len() + 1..].to_string();
            let kind = match &m.kind {
                MemberKind::HardLink(t) => {
                    MemberKind::HardLink(t[member_prefix.len() + 1..].to_string())
                }
                k => k.clone(),
            };
            if let Some(d) = m.digest.filter(|_| !linked.contains(m.name.as_str())) {
                digests.insert(rel.clone(), d);
            }
            out.insert(rel, (kind, m.mode));
        } else if m.kind == MemberKind::Dir && is_within(&member_prefix, &m.name) {
            // A parent directory of the prefix (layout 2 lists them all).
        } else {
            return Err(InstallError::UnsafeMember {
                what: what.to_string(),
                member: m.name.clone(),
                reason: format!("outside the package prefix {member_prefix:?}"),
            });
        }
    }
    if !has_prefix_dir {
        return Err(layout_err(format!(
            "the tarball has no directory member for its prefix {member_prefix:?}"
        )));
    }
    let prefix_dir = staging.join(&member_prefix);
    let info_path = prefix_dir.join(".spack/binary_distribution");
    let info_bytes =
        std::fs::read(&info_path).map_err(|e| InstallError::io(what, &info_path, e))?;
    let buildinfo = BuildInfo::parse(&info_bytes, &format!("{what}: .spack/binary_distribution"))?;
    Ok(Extracted {
        prefix_dir,
        member_prefix,
        buildinfo,
        members: out,
        digests,
        sha256,
        compressed_bytes,
        unpacked_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EntryType, name: &str, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn untar_gz(tar: &[u8]) -> Result<(Vec<Member>, u64), InstallError> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        let blob = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_unpacked: 1 << 30,
        };
        let (inflated, result) = untar(&blob[..], &dir.path().join("s"), limits, true, "pkg");
        let inflated = inflated.expect("the blob is read");
        inflated
            .judge(result, limits, "pkg")
            .map(|m| (m, inflated.unpacked_bytes))
    }

    /// Found by tests/properties.rs (tar_bomb): the `tar` crate reads an extension header
    /// whole into memory, as long as its size field says (16 MiB of pax header, 162 KB of
    /// gzip, held 34 MB).
    #[test]
    fn extension_headers_are_bounded_before_they_are_read() {
        for kind in [
            EntryType::XHeader,
            EntryType::GNULongName,
            EntryType::GNULongLink,
        ] {
            let mut tar = header(kind, "././@LongLink", 2 << 20);
            tar.resize(512 + (2 << 20) + 1024, 0);
            let Err(e) = untar_gz(&tar) else {
                panic!("{kind:?} of 2 MiB accepted")
            };
            let e = e.to_string();
            assert!(
                e.contains("extension header of 2097152 bytes"),
                "{kind:?}: {e}"
            );
        }
        // In step with a pax size record: `size=0` makes the next header start where the
        // file's header says its data is.
        let mut tar = header(EntryType::XHeader, "././@PaxHeader", 10);
        tar.extend_from_slice(b"10 size=0\n");
        tar.resize(1024, 0);
        tar.extend(header(EntryType::Regular, "opt/f", 1536));
        tar.extend(header(EntryType::GNULongName, "././@LongLink", 2 << 20));
        tar.resize(tar.len() + 2048, 0);
        let Err(e) = untar_gz(&tar) else {
            panic!("a long name hidden behind a pax size accepted")
        };
        let e = e.to_string();
        assert!(e.contains("extension header of 2097152 bytes"), "{e}");
        // Long names and pax records of ordinary size pass.
        let mut tar = header(EntryType::XHeader, "././@PaxHeader", 20);
        tar.extend_from_slice(b"20 path=opt/long/nm\n");
        tar.resize(1024, 0);
        tar.extend(header(EntryType::Directory, "opt/", 0));
        tar.resize(tar.len() + 1024, 0);
        let Ok((members, _)) = untar_gz(&tar) else {
            panic!("an ordinary pax header refused")
        };
        assert_eq!(members[0].name, "opt/long/nm");
    }

    /// A gzipped tarball of a package prefix `opt/p` holding `entries` (name, data or a
    /// hard link target) besides its `.spack/binary_distribution`.
    fn package_blob(entries: &[(&str, Result<&[u8], &str>)]) -> Vec<u8> {
        use std::io::Write;
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_ustar();
        dir.set_entry_type(EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        for d in ["opt", "opt/p", "opt/p/.spack"] {
            b.append_data(&mut dir.clone(), d, &[][..]).unwrap();
        }
        let info =
            b"relocate_textfiles: []\nrelocate_binaries: []\nrelocate_links: []\nbuildpath: /opt\n";
        let mut entries = entries.to_vec();
        entries.push((".spack/binary_distribution", Ok(&info[..])));
        for (name, what) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            match what {
                Ok(data) => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, format!("opt/p/{name}"), data)
                        .unwrap();
                }
                Err(target) => {
                    h.set_entry_type(EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, format!("opt/p/{name}"), format!("opt/p/{target}"))
                        .unwrap();
                }
            }
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn digests_are_taken_as_files_are_written_and_hard_linked_files_left_out() {
        let big: Vec<u8> = (0..3 * super::super::handoff::CHUNK + 17)
            .map(|i| (i % 253) as u8)
            .collect();
        let blob = package_blob(&[
            ("small", Ok(b"hello\n")),
            ("big", Ok(&big)),
            ("shared", Ok(b"one inode, two names\n")),
            ("alias", Err("shared")),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("s");
        std::fs::create_dir(&staging).unwrap();
        let limits = Limits {
            max_unpacked: 1 << 30,
        };
        let ex = extract(
            &blob[..],
            &Sha256::of(&blob),
            None,
            &staging,
            limits,
            true,
            "pkg",
        )
        .unwrap();
        for name in ["small", "big", ".spack/binary_distribution"] {
            let on_disk = std::fs::read(ex.prefix_dir.join(name)).unwrap();
            assert_eq!(
                ex.digests.get(name),
                Some(&FileDigest::of(&on_disk)),
                "{name}"
            );
        }
        assert!(!ex.digests.contains_key("shared"), "a hard link names it");
        assert!(!ex.digests.contains_key("alias"));
        assert_eq!(ex.digests.len(), 3);
    }

    #[test]
    fn names_are_checked_component_wise() {
        assert_eq!(check_name(b"opt/x/").unwrap(), "opt/x");
        assert!(check_name(b"/etc/passwd").is_err());
        assert!(check_name(b"opt/../etc").is_err());
        assert!(check_name(b"opt//x").is_err());
        assert!(check_name(b"./opt").is_err());
        assert!(is_within("a/b/c", "a/b"));
        assert!(!is_within("a/bX/c", "a/b"));
        assert!(is_within("a/b", "a/b"));
    }
}
