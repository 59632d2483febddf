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
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use memmap2::{Mmap, MmapMut};

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

/// Relocate the prefix at `prefix_dir` in place.
pub fn relocate(
    prefix_dir: &Path,
    members: &HashMap<String, (MemberKind, u32)>,
    info: &BuildInfo,
    map: &RelocationMap,
    what: &str,
) -> Result<RelocationReport, InstallError> {
    let mut report = RelocationReport::default();
    let mut binaries = check_list(&info.relocate_binaries, members, false, what)?;
    let mut texts = check_list(&info.relocate_textfiles, members, false, what)?;
    let links = check_list(&info.relocate_links, members, true, what)?;
    if map.is_empty() {
        return Ok(report);
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
    for rel in &links {
        let path = prefix_dir.join(rel);
        if links::relocate_link(&path, map).map_err(|e| InstallError::io(what, &path, e))? {
            report.changed.insert(rel.to_string());
        }
    }
    for rel in &texts {
        if relocate_text_file(&prefix_dir.join(rel), map, what)? {
            report.changed.insert(rel.to_string());
        }
    }
    for rel in &binaries {
        if relocate_binary_file(&prefix_dir.join(rel), rel, map, what)? {
            report.changed.insert(rel.to_string());
        }
    }
    Ok(report)
}

fn relocate_text_file(path: &Path, map: &RelocationMap, what: &str) -> Result<bool, InstallError> {
    let io = |e| InstallError::io(what, path, e);
    let file = std::fs::File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Ok(false);
    }
    // SAFETY: the file lives in our private staging directory; nothing else writes it while
    // the map is alive.
    let data = unsafe { Mmap::map(&file) }.map_err(io)?;
    let Some(new) = text::relocate_text(&data, map) else {
        return Ok(false);
    };
    drop(data);
    let mut out = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    out.write_all(&new).map_err(io)?;
    Ok(true)
}

fn relocate_binary_file(
    path: &Path,
    rel: &str,
    map: &RelocationMap,
    what: &str,
) -> Result<bool, InstallError> {
    let io = |e| InstallError::io(what, path, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Ok(false);
    }
    // SAFETY: as above, the staging file is ours alone while mapped.
    let mut data = unsafe { MmapMut::map_mut(&file) }.map_err(io)?;
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
    Ok(changed_by_elf || n > 0)
}
