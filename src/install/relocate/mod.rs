//! Relocation of an extracted prefix (format doc 7): the ELF step on binaries, symlinks, the
//! text rule on text files, then the NUL-aware binary rule, driven by `binary_distribution`
//! and the ordered map. Files are memory-mapped and scanned once for all keys; an empty map
//! opens no file.

pub mod binary;
pub mod elf;
pub mod links;
pub mod map;
pub mod text;

use std::collections::{HashMap, HashSet};

use crate::buildcache::checksum::FileDigest;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use memmap2::MmapOptions;

use super::extract::MemberKind;
use super::InstallError;
use crate::buildcache::buildinfo::BuildInfo;
use binary::{relocate_binary, BinaryError};
use map::RelocationMap;

/// What relocation changed.
#[derive(Debug, Default, Clone)]
pub struct RelocationReport {
    /// Paths (relative to the prefix) whose content or target changed.
    pub changed: HashSet<String>,
    /// Digests of the new content of the regular files that changed.
    pub digests: HashMap<String, FileDigest>,
}

/// Check that every listed path is a plain member of the prefix of the right kind.
fn check_list<'a>(
    list: &'a [String],
    members: &HashMap<String, (MemberKind, u32)>,
    want_link: bool,
    what: &str,
) -> Result<Vec<&'a str>, InstallError> {
    let mut out = Vec::with_capacity(list.len());
    for path in list {
        let bad = |reason: &str| InstallError::BadRelocationList {
            what: what.to_string(),
            path: path.clone(),
            reason: reason.to_string(),
        };
        let name = super::extract::check_name(path.as_bytes())
            .map_err(|r| bad(&format!("{r}: outside the prefix")))?;
        if name.starts_with(".spack/") || name == ".spack" {
            continue;
        }
        for (i, _) in name.match_indices('/') {
            if matches!(members.get(&name[..i]), Some((MemberKind::Symlink, _))) {
                return Err(bad("it lies below a symlink"));
            }
        }
        match (members.get(&name), want_link) {
            (Some((MemberKind::Symlink, _)), true) => {}
            (Some((MemberKind::File | MemberKind::HardLink(_), _)), false) => {}
            (Some((MemberKind::Symlink, _)), false) => {
                return Err(bad("it is a symlink, not a regular file"))
            }
            (Some(_), _) => return Err(bad("it is not a member of the expected kind")),
            (None, _) => return Err(bad("no such member in the tarball")),
        }
        out.push(path.as_str());
    }
    Ok(out)
}

/// Relocate the prefix at `prefix_dir` in place; with `digests`, report the BLAKE3 digest of
/// each file rewritten.
///
/// Listed files are relocated on a few threads (the largest first), each file (inode) by one
/// thread: the text rule, then the binary rule, as listed. A file listed twice, or under two
/// hard-linked names, is relocated once.
pub fn relocate(
    prefix_dir: &Path,
    members: &HashMap<String, (MemberKind, u32)>,
    info: &BuildInfo,
    map: &RelocationMap,
    digests: bool,
    what: &str,
) -> Result<RelocationReport, InstallError> {
    let mut report = RelocationReport::default();
    let mut binaries = check_list(&info.relocate_binaries, members, false, what)?;
    let mut texts = check_list(&info.relocate_textfiles, members, false, what)?;
    let links = check_list(&info.relocate_links, members, true, what)?;
    if map.is_empty() {
        return Ok(report);
    }
    for rel in &links {
        let path = prefix_dir.join(rel);
        if links::relocate_link(&path, map).map_err(|e| InstallError::io(what, &path, e))? {
            report.changed.insert(rel.to_string());
        }
    }
    if !info.hardlinks_deduped {
        // Keep the first path of each inode, over both lists.
        let mut seen = HashSet::new();
        let mut keep = |p: &&str| -> bool {
            match std::fs::symlink_metadata(prefix_dir.join(p)) {
                Ok(m) if m.nlink() > 1 => seen.insert((m.dev(), m.ino())),
                _ => true,
            }
        };
        texts.retain(&mut keep);
        binaries.retain(&mut keep);
    }
    // One job per inode: its steps in list order (texts, then binaries), as Spack runs them.
    let mut jobs: Vec<FileJob> = Vec::new();
    let mut by_inode: HashMap<(u64, u64), usize> = HashMap::new();
    let listed = texts
        .iter()
        .map(|p| (*p, Rule::Text))
        .chain(binaries.iter().map(|p| (*p, Rule::Binary)));
    for (rel, rule) in listed {
        let path = prefix_dir.join(rel);
        let m = std::fs::symlink_metadata(&path).map_err(|e| InstallError::io(what, &path, e))?;
        let i = *by_inode.entry((m.dev(), m.ino())).or_insert_with(|| {
            jobs.push(FileJob {
                size: m.len(),
                steps: Vec::new(),
            });
            jobs.len() - 1
        });
        jobs[i].steps.push((rel.to_string(), rule));
    }
    let results = run_jobs(&jobs, |job| job.run(prefix_dir, map, digests, what));
    for (job, result) in jobs.iter().zip(results) {
        if let Some(digest) = result? {
            // Every name of the file changed with it.
            for (rel, _) in &job.steps {
                report.changed.insert(rel.clone());
                if let Some(d) = digest {
                    report.digests.insert(rel.clone(), d);
                }
            }
        }
    }
    Ok(report)
}

/// The rule a relocation list asks for.
#[derive(Clone, Copy)]
enum Rule {
    Text,
    Binary,
}

/// One file (inode) to relocate: the steps the lists ask for, by the name each listed it
/// under, and its size (to schedule the largest first).
struct FileJob {
    size: u64,
    steps: Vec<(String, Rule)>,
}

impl FileJob {
    /// `Some` if the file changed, with the digest of its new content when asked for.
    fn run(
        &self,
        prefix_dir: &Path,
        map: &RelocationMap,
        digests: bool,
        what: &str,
    ) -> Result<Option<Option<FileDigest>>, InstallError> {
        let mut last = None;
        for (rel, rule) in &self.steps {
            let path = prefix_dir.join(rel);
            let changed = match rule {
                Rule::Text => relocate_text_file(&path, map, digests, what)?,
                Rule::Binary => relocate_binary_file(&path, rel, map, digests, what)?,
            };
            // The last step that changed the file saw its final bytes.
            last = changed.or(last);
        }
        Ok(last)
    }
}

/// Run `f` over `jobs` on up to four threads, the largest jobs first; results in job order.
fn run_jobs<T: Send>(jobs: &[FileJob], f: impl Fn(&FileJob) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(jobs.len());
    if threads <= 1 {
        return jobs.iter().map(&f).collect();
    }
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].size));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<T>> = std::iter::repeat_with(|| None).take(jobs.len()).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&i) = order.get(k) else { break done };
                        done.push((i, f(&jobs[i])));
                    }
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// The text rule on one file; `Some` if it changed, with the digest of its new content when
/// `digests` asks for it.
fn relocate_text_file(
    path: &Path,
    map: &RelocationMap,
    digests: bool,
    what: &str,
) -> Result<Option<Option<FileDigest>>, InstallError> {
    let io = |e| InstallError::io(what, path, e);
    let file = std::fs::File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Ok(None);
    }
    // The whole file is read: its pages are mapped in one call, not one fault at a time.
    // SAFETY: the file lives in our private staging directory; nothing else writes it while
    // the map is alive.
    let data = unsafe { MmapOptions::new().populate().map(&file) }.map_err(io)?;
    let Some(new) = text::relocate_text(&data, map) else {
        return Ok(None);
    };
    drop(data);
    let mut out = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    out.write_all(&new).map_err(io)?;
    Ok(Some(digests.then(|| FileDigest::of(&new))))
}

/// The ELF step and the binary rule on one file; `Some` if it changed, with the digest of its
/// new content (hashed from the map, while it is hot) when `digests` asks for it.
fn relocate_binary_file(
    path: &Path,
    rel: &str,
    map: &RelocationMap,
    digests: bool,
    what: &str,
) -> Result<Option<Option<FileDigest>>, InstallError> {
    let io = |e| InstallError::io(what, path, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: as above, the staging file is ours alone while mapped.
    let mut data = unsafe { MmapOptions::new().populate().map_mut(&file) }.map_err(io)?;
    let edits = elf::elf_edits(&data, map);
    let too_long = |data: &[u8], old: &[u8], new: &[u8]| InstallError::RootTooLong {
        what: what.to_string(),
        file: rel.to_string(),
        old: String::from_utf8_lossy(old).into_owned(),
        new: String::from_utf8_lossy(new).into_owned(),
        longest_root: map.longest_fitting_root(data),
        root_len: map.root().len(),
    };
    if !edits.fits() {
        // Spack would call patchelf here; the binary pass below would still fail on any
        // longer string, so report the root as too long.
        let e = [&edits.rpath, &edits.interp]
            .into_iter()
            .flatten()
            .find(|e| e.new.len() > e.old.len())
            .expect("an edit that does not fit");
        return Err(too_long(&data, &e.old, &e.new));
    }
    edits.apply(&mut data);
    let changed_by_elf = edits.rpath.is_some() || edits.interp.is_some();
    let n = relocate_binary(&mut data, map).map_err(|e| match e {
        BinaryError::CannotGrow { old, new } => too_long(&data, &old, &new),
        BinaryError::CannotShrink { offset, old, new } => InstallError::CannotShrink {
            what: what.to_string(),
            file: rel.to_string(),
            offset,
            old: String::from_utf8_lossy(&old).into_owned(),
            new: String::from_utf8_lossy(&new).into_owned(),
        },
    })?;
    Ok((changed_by_elf || n > 0).then(|| digests.then(|| FileDigest::of(&data))))
}
