//! Per-file integrity records of a published prefix: BLAKE3 digest, size and change time of
//! every regular file, written at publish and checked by `spackfs cache verify` (digests)
//! and at first use in a process (sizes and change times, cheap).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One regular file of a prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub blake3: String,
    /// Change time (seconds, nanoseconds) at publish: any later write changes it.
    pub ctime: (i64, i64),
}

/// Digest of a file's content.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    // blake3's own reader loop (a stack buffer): no zeroed heap buffer per file.
    let mut h = blake3::Hasher::new();
    h.update_reader(f)?;
    Ok(h.finalize().to_hex().to_string())
}

/// Records of every regular file below `dir` (each inode once), and the disk usage of the
/// whole tree in bytes. A file whose path (relative to `dir`) is in `known` takes that
/// digest; the others are read and hashed.
pub fn records(
    dir: &Path,
    known: &HashMap<String, blake3::Hash>,
) -> std::io::Result<(Vec<FileRecord>, u64)> {
    let mut out = Vec::new();
    let mut usage = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let here = if rel.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(&rel)
        };
        for e in std::fs::read_dir(&here)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = e.metadata()?;
            if !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            usage += m.blocks() * 512;
            if m.is_dir() {
                stack.push(r);
            } else if m.is_file() {
                let blake3 = match known.get(&r) {
                    Some(d) => d.to_hex().to_string(),
                    None => file_digest(&e.path())?,
                };
                out.push(FileRecord {
                    blake3,
                    path: r,
                    size: m.len(),
                    ctime: (m.ctime(), m.ctime_nsec()),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((out, usage))
}

/// What is wrong with a prefix, if anything. `deep` recomputes digests; otherwise only
/// presence, size and change time are checked.
pub fn check(dir: &Path, files: &[FileRecord], deep: bool) -> Option<String> {
    for f in files {
        let p = dir.join(&f.path);
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => return Some(format!("{}: {e}", f.path)),
        };
        if !m.is_file() || m.len() != f.size {
            return Some(format!(
                "{}: size {} instead of {}",
                f.path,
                m.len(),
                f.size
            ));
        }
        if (m.ctime(), m.ctime_nsec()) != f.ctime && !deep {
            return Some(format!("{}: changed after it was published", f.path));
        }
        if deep {
            match file_digest(&p) {
                Ok(d) if d == f.blake3 => {}
                Ok(_) => return Some(format!("{}: content differs from its digest", f.path)),
                Err(e) => return Some(format!("{}: {e}", f.path)),
            }
        }
    }
    None
}
