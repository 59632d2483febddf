//! The life of a prefix, for the cache and for `spackfs install` alike: a [`Staging`]
//! directory (private, named `<pid>.<hint>.<random>`, so that a later run tells an
//! abandoned one — its process is dead: a crash, `kill -9` — from one in use, and removes
//! it) where a package is extracted; [`Relocated`] once relocation is done; a
//! [`ReadyPrefix`] once published by one rename — what the mount serves, and only the
//! publishing code (here and the store) makes one. Dropping a `Staging` or a `Relocated`
//! that was not published removes its directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A private work directory, removed when dropped.
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
}

impl Staging {
    /// A new staging directory under `parent` (created if needed; retried once in case
    /// another process removed the empty parent meanwhile).
    pub fn new_in(parent: &Path, hint: &str) -> std::io::Result<Self> {
        let attempt = || {
            std::fs::create_dir_all(parent)?;
            tempfile::Builder::new()
                .prefix(&format!("{}.{hint}.", std::process::id()))
                .tempdir_in(parent)
        };
        Ok(Staging {
            dir: attempt().or_else(|_| attempt())?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Extraction and relocation are done: `prefix` (a directory inside) is the package.
    pub fn relocated(self, prefix: PathBuf) -> Relocated {
        Relocated {
            _staging: self,
            prefix,
            digests: HashMap::new(),
            walk: None,
        }
    }
}

/// A relocated prefix, still in staging: the only thing that can be published.
#[derive(Debug)]
pub struct Relocated {
    _staging: Staging,
    prefix: PathBuf,
    /// Content digests of files of the prefix known from extraction (path relative to the
    /// prefix); publishing computes only the others.
    digests: HashMap<String, crate::buildcache::checksum::FileDigest>,
    /// A walk of the prefix taken beside its last steps, and the files they changed.
    walk: Option<(super::digest::Walk, Vec<String>)>,
}

impl Relocated {
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The digests of files whose final bytes were hashed as they were written.
    pub fn with_digests(
        mut self,
        digests: HashMap<String, crate::buildcache::checksum::FileDigest>,
    ) -> Self {
        self.digests = digests;
        self
    }

    pub fn digests(&self) -> &HashMap<String, crate::buildcache::checksum::FileDigest> {
        &self.digests
    }

    /// A walk of the prefix taken while relocation and the final modes ran, with the files
    /// (relative to the prefix) those changed: publishing completes it instead of walking.
    pub fn with_walk(mut self, walk: super::digest::Walk, changed: Vec<String>) -> Self {
        self.walk = Some((walk, changed));
        self
    }

    /// The records of the prefix's files and its disk usage: from the walk taken beside
    /// its last steps, or from a walk now.
    pub fn records(&mut self) -> std::io::Result<(Vec<super::digest::FileRecord>, u64)> {
        match self.walk.take() {
            Some((walk, changed)) => walk.records(
                &self.prefix,
                changed.iter().map(String::as_str),
                &self.digests,
            ),
            None => super::digest::records(&self.prefix, &self.digests),
        }
    }
}

/// A published prefix: complete, verified, relocated, immutable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPrefix {
    path: PathBuf,
}

impl ReadyPrefix {
    /// For the publishing code only.
    pub(super) fn new(path: PathBuf) -> Self {
        ReadyPrefix { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The outcome of publishing.
#[derive(Debug)]
pub struct Published {
    pub prefix: ReadyPrefix,
    /// False when another process published the same prefix first (this one is dropped).
    pub fresh: bool,
}

/// Publish `relocated` at `dest` (an install's prefix under its root) with one rename.
pub fn publish_at(relocated: Relocated, dest: &Path) -> std::io::Result<Published> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let fresh = match std::fs::rename(relocated.prefix(), dest) {
        Ok(()) => true,
        Err(e) if dest.is_dir() => {
            tracing::debug!("{} appeared meanwhile: {e}", dest.display());
            false
        }
        Err(e) => return Err(e),
    };
    Ok(Published {
        prefix: ReadyPrefix::new(dest.to_path_buf()),
        fresh,
    })
}

/// The same for a prefix already published (found in place).
pub(super) fn already(path: PathBuf) -> ReadyPrefix {
    ReadyPrefix::new(path)
}

/// Remove the staging directories under `parent` whose process is gone (and anything
/// there not named after a process). Returns how many were removed.
pub fn clean_abandoned(parent: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid: Option<i32> = name.split('.').next().and_then(|p| p.parse().ok());
        if pid.is_none_or(|pid| !process_alive(pid)) {
            tracing::debug!("removing abandoned staging {}", e.path().display());
            super::remove_tree(&e.path());
            removed += 1;
        }
    }
    Ok(removed)
}

/// Does process `pid` exist?
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for the process's existence.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // It exists but is not ours to signal.
    std::io::Error::last_os_error().kind() == std::io::ErrorKind::PermissionDenied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_staging_is_removed_and_live_staging_kept() {
        let dir = tempfile::tempdir().unwrap();
        let live = Staging::new_in(dir.path(), "abc").unwrap();
        std::fs::write(live.path().join("f"), "x").unwrap();
        // pid_max is at most 2^22: this process cannot exist.
        let dead = dir.path().join("99999999.abc.xyz");
        std::fs::create_dir_all(dead.join("deep")).unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "x").unwrap();
        assert_eq!(clean_abandoned(dir.path()).unwrap(), 2);
        assert!(live.path().join("f").exists() && !dead.exists() && !junk.exists());
        assert_eq!(clean_abandoned(&dir.path().join("none")).unwrap(), 0);
    }
}
