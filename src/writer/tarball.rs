//! Spack-shaped tarballs: parent directories of the prefix first, then a depth-first walk
//! (files before sub-directories, names in byte order), hard links as link members naming the
//! first path, normalised metadata, and `.spack/binary_distribution` last; gzip level 6.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tar::{EntryType, Header};

/// What relocation lists a prefix needs (format doc 5.4 classification).
#[derive(Debug, Default, Clone)]
pub struct BuildInfoLists {
    pub binaries: Vec<String>,
    pub texts: Vec<String>,
    pub links: Vec<String>,
}

/// Entries of `dir` in Spack's walk order: (relative path, metadata).
fn walk(dir: &Path) -> std::io::Result<Vec<(String, std::fs::Metadata)>> {
    fn rec(
        base: &Path,
        rel: &str,
        out: &mut Vec<(String, std::fs::Metadata)>,
    ) -> std::io::Result<()> {
        let here = if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        };
        let mut entries: Vec<(Vec<u8>, std::fs::Metadata)> = std::fs::read_dir(&here)?
            .map(|e| {
                let e = e?;
                Ok((
                    e.file_name().as_bytes().to_vec(),
                    std::fs::symlink_metadata(e.path())?,
                ))
            })
            .collect::<std::io::Result<_>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let join = |n: &[u8]| {
            let n = String::from_utf8_lossy(n);
            if rel.is_empty() {
                n.into_owned()
            } else {
                format!("{rel}/{n}")
            }
        };
        for (name, m) in entries.iter().filter(|(_, m)| !m.is_dir()) {
            out.push((join(name), m.clone()));
        }
        for (name, m) in entries.iter().filter(|(_, m)| m.is_dir()) {
            let r = join(name);
            out.push((r.clone(), m.clone()));
            rec(base, &r, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    rec(dir, "", &mut out)?;
    Ok(out)
}

/// Classify files as Spack does at push time: ELF/Mach-O → binaries; text containing a
/// prefix → texts; absolute symlinks starting with a prefix → links. `.spack/` is skipped.
pub fn classify(dir: &Path, prefixes: &[String]) -> std::io::Result<BuildInfoLists> {
    let mut lists = BuildInfoLists::default();
    let mut seen_inodes = std::collections::HashSet::new();
    for (rel, m) in walk(dir)? {
        if rel == ".spack" || rel.starts_with(".spack/") {
            continue;
        }
        let path = dir.join(&rel);
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(&path)?;
            let t = t.as_os_str().as_bytes();
            if t.starts_with(b"/") && prefixes.iter().any(|p| t.starts_with(p.as_bytes())) {
                lists.links.push(rel);
            }
            continue;
        }
        if !m.is_file() || (m.nlink() > 1 && !seen_inodes.insert((m.dev(), m.ino()))) {
            continue;
        }
        let data = std::fs::read(&path)?;
        if data.len() >= 8 && data.starts_with(b"\x7fELF") {
            lists.binaries.push(rel);
        } else if (std::str::from_utf8(&data).is_ok()
            || !data.iter().any(|&b| b == 0 || (0x7f..=0x9f).contains(&b)))
            && prefixes
                .iter()
                .any(|p| memchr::memmem::find(&data, p.as_bytes()).is_some())
        {
            lists.texts.push(rel);
        }
    }
    Ok(lists)
}

/// A GNU header with Spack's normalised metadata (owner 0, mtime 0).
pub fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Write the gzip-compressed tarball of `dir` as Spack does for the prefix `build_prefix`.
pub fn write_tarball(dir: &Path, build_prefix: &str, buildinfo: &[u8]) -> std::io::Result<Vec<u8>> {
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    let member_prefix = build_prefix.trim_start_matches('/');
    let mut parent = String::new();
    for comp in member_prefix.split('/') {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(comp);
        let mut h = header(EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, format!("{parent}/"), std::io::empty())?;
    }
    let mut first_of_inode: HashMap<(u64, u64), String> = HashMap::new();
    for (rel, m) in walk(dir)? {
        if rel == ".spack/binary_distribution" {
            continue;
        }
        let name = format!("{member_prefix}/{rel}");
        let path = dir.join(&rel);
        let mode = if m.mode() & 0o100 != 0 { 0o755 } else { 0o644 };
        if m.is_dir() {
            let mut h = header(EntryType::Directory, 0o755, 0);
            tar.append_data(&mut h, format!("{name}/"), std::io::empty())?;
        } else if m.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            let mut h = header(EntryType::Symlink, 0o755, 0);
            tar.append_link(&mut h, &name, target)?;
        } else if m.is_file() {
            if m.nlink() > 1 {
                if let Some(first) = first_of_inode.get(&(m.dev(), m.ino())) {
                    let mut h = header(EntryType::Link, mode, 0);
                    tar.append_link(&mut h, &name, first)?;
                    continue;
                }
                first_of_inode.insert((m.dev(), m.ino()), name.clone());
            }
            let mut h = header(EntryType::Regular, mode, m.len());
            tar.append_data(&mut h, &name, std::fs::File::open(&path)?)?;
        }
    }
    let mut h = header(EntryType::Regular, 0o644, buildinfo.len() as u64);
    tar.append_data(
        &mut h,
        format!("{member_prefix}/.spack/binary_distribution"),
        buildinfo,
    )?;
    let gz = tar.into_inner()?;
    let mut gz = gz;
    gz.flush()?;
    gz.finish()
}
