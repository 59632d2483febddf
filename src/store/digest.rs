//! Per-file integrity records of a published prefix: content digest ([`FileDigest`]), size
//! and change time of every regular file, written at publish and checked by `spackfs cache
//! verify` (digests) and at first use in a process (sizes and change times, cheap). Records
//! written by earlier versions carry a BLAKE3 digest instead: they are still checked.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::buildcache::checksum::{FileDigest, FileHasher};

/// One regular file of a prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    /// [`FileDigest`] of its content (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    /// BLAKE3 of its content (hex): records written before the XXH3 digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Change time (seconds, nanoseconds) at publish: any later write changes it.
    pub ctime: (i64, i64),
}

/// Digest of a file's content.
pub fn file_digest(path: &Path) -> std::io::Result<FileDigest> {
    let mut f = std::fs::File::open(path)?;
    let mut h = FileHasher::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// BLAKE3 of a file's content (records of earlier versions).
fn blake3_digest(path: &Path) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f)?;
    Ok(h.finalize().to_hex().to_string())
}

/// What records need of one inode met on a walk.
#[derive(Debug)]
struct Seen {
    /// Path relative to the walked directory (the first name met, for an inode with more).
    rel: String,
    id: (u64, u64),
    is_file: bool,
    size: u64,
    ctime: (i64, i64),
    usage: u64,
}

impl Seen {
    fn of(rel: String, m: &std::fs::Metadata) -> Seen {
        Seen {
            rel,
            id: (m.dev(), m.ino()),
            is_file: m.is_file(),
            size: m.len(),
            ctime: (m.ctime(), m.ctime_nsec()),
            usage: m.blocks() * 512,
        }
    }
}

/// Every inode below a directory (each once) as a walk saw it. A walk can be taken while
/// the last steps of an install (relocation, final modes) still run beside it, and
/// completed by [`Walk::records`] with the files those steps changed: publishing then does
/// not walk the tree after them.
#[derive(Debug)]
pub struct Walk {
    seen: Vec<Seen>,
}

/// Walk the tree below `dir`.
pub fn walk(dir: &Path) -> std::io::Result<Walk> {
    let mut seen = Vec::new();
    let mut ids = std::collections::HashSet::new();
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
            if !ids.insert((m.dev(), m.ino())) {
                continue;
            }
            if m.is_dir() {
                stack.push(r.clone());
            }
            seen.push(Seen::of(r, &m));
        }
    }
    Ok(Walk { seen })
}

impl Walk {
    /// Records of every regular file and the disk usage of the whole tree, in bytes. The
    /// files at `changed` (relative to `dir`) changed after the walk and are looked at
    /// again. A file whose path is in `known` takes that digest; the others are read and
    /// hashed.
    pub fn records<'a>(
        self,
        dir: &Path,
        changed: impl IntoIterator<Item = &'a str>,
        known: &HashMap<String, FileDigest>,
    ) -> std::io::Result<(Vec<FileRecord>, u64)> {
        // By inode (a change through another name of a hard-linked file) and by name (a
        // symlink replaced by a new one).
        let mut fresh = HashMap::new();
        let mut by_name = HashMap::new();
        for rel in changed {
            let s = Seen::of(rel.to_string(), &std::fs::symlink_metadata(dir.join(rel))?);
            by_name.insert(rel, s.id);
            fresh.insert(s.id, s);
        }
        let mut out = Vec::new();
        let mut usage = 0u64;
        for walked in self.seen {
            let id = by_name.get(walked.rel.as_str()).unwrap_or(&walked.id);
            let now = fresh.get(id);
            let (size, ctime, used) = match now {
                Some(s) => (s.size, s.ctime, s.usage),
                None => (walked.size, walked.ctime, walked.usage),
            };
            usage += used;
            if !walked.is_file {
                continue;
            }
            let digest = match known.get(&walked.rel) {
                Some(d) => *d,
                None => file_digest(&dir.join(&walked.rel))?,
            };
            out.push(FileRecord {
                xxh3: Some(digest.hex()),
                blake3: None,
                path: walked.rel,
                size,
                ctime,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((out, usage))
    }
}

/// Records of every regular file below `dir` (each inode once), and the disk usage of the
/// whole tree in bytes. A file whose path (relative to `dir`) is in `known` takes that
/// digest; the others are read and hashed.
pub fn records(
    dir: &Path,
    known: &HashMap<String, FileDigest>,
) -> std::io::Result<(Vec<FileRecord>, u64)> {
    walk(dir)?.records(dir, [], known)
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
            let same = match (&f.xxh3, &f.blake3) {
                (Some(want), _) => file_digest(&p).map(|d| d.hex() == *want),
                (None, Some(want)) => blake3_digest(&p).map(|d| d == *want),
                (None, None) => return Some(format!("{}: no digest recorded", f.path)),
            };
            match same {
                Ok(true) => {}
                Ok(false) => return Some(format!("{}: content differs from its digest", f.path)),
                Err(e) => return Some(format!("{}: {e}", f.path)),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records carry XXH3 digests; records an earlier version wrote (BLAKE3, no `xxh3`
    /// member) still read and check; either finds a changed content.
    #[test]
    fn new_and_earlier_records_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"hello").unwrap();
        let (recs, _) = records(dir.path(), &HashMap::new()).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].xxh3, Some(FileDigest::of(b"hello").hex()));
        assert_eq!(check(dir.path(), &recs, true), None);
        let (secs, nanos) = recs[0].ctime;
        let earlier = format!(
            r#"[{{"path":"a","size":5,"blake3":"{}","ctime":[{secs},{nanos}]}}]"#,
            blake3::hash(b"hello").to_hex()
        );
        let earlier: Vec<FileRecord> = serde_json::from_str(&earlier).unwrap();
        assert_eq!(earlier[0].xxh3, None);
        assert_eq!(check(dir.path(), &earlier, true), None);
        assert_eq!(check(dir.path(), &earlier, false), None);
        std::fs::write(&a, b"jello").unwrap();
        for r in [&recs, &earlier] {
            let why = check(dir.path(), r, true).expect("a changed file is found");
            assert!(why.contains("differs from its digest"), "{why}");
        }
        let none = vec![FileRecord {
            xxh3: None,
            blake3: None,
            ..recs[0].clone()
        }];
        assert!(check(dir.path(), &none, true).is_some());
    }

    /// A walk taken before files change gives the records a walk after would, once told
    /// which files changed (through another name of a hard-linked inode too); a change it
    /// is not told of shows in the cheap check.
    #[test]
    fn a_walk_completed_with_the_changed_files_matches_a_walk_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("lib/sub")).unwrap();
        std::fs::write(p.join("lib/text"), b"short").unwrap();
        std::fs::write(p.join("lib/sub/bin"), vec![7u8; 10_000]).unwrap();
        std::fs::hard_link(p.join("lib/sub/bin"), p.join("bin2")).unwrap();
        std::fs::write(p.join("same"), b"unchanged").unwrap();
        std::os::unix::fs::symlink("same", p.join("link")).unwrap();
        let walk = walk(p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(p.join("lib/text"), b"a much longer text than before").unwrap();
        std::fs::write(p.join("bin2"), vec![9u8; 5_000]).unwrap();
        let after = records(p, &HashMap::new()).unwrap();
        let told = walk
            .records(p, ["lib/text", "bin2"], &HashMap::new())
            .unwrap();
        assert_eq!(told.1, after.1, "disk usage");
        let key = |r: &FileRecord| (r.size, r.ctime, r.xxh3.clone());
        let told_files: Vec<_> = told.0.iter().map(key).collect();
        let after_files: Vec<_> = after.0.iter().map(key).collect();
        assert_eq!(told_files, after_files);
        assert_eq!(check(p, &told.0, false), None);
        let untold = super::walk(p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(p.join("same"), b"changed!!").unwrap();
        let (recs, _) = untold.records(p, [], &HashMap::new()).unwrap();
        let why = check(p, &recs, false).expect("the untold change shows");
        assert!(why.contains("same"), "{why}");
    }
}
