//! The on-disk cache of ready prefixes: `prefixes/<key>/` holds a relocated prefix, published
//! by one rename from `staging/` (wiped at open), so a prefix that exists is complete.
//! The key is derived from everything that determines the bytes: the tarball's sha256 and
//! the relocation target (install root and the new prefixes of the relocation set).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Errors of the store, naming the directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (and create) the cache at `root`; leftovers of interrupted work are removed.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        for d in ["prefixes", "staging"] {
            std::fs::create_dir_all(root.join(d)).map_err(io(&root.join(d)))?;
        }
        let staging = root.join("staging");
        for e in std::fs::read_dir(&staging).map_err(io(&staging))?.flatten() {
            let p = e.path();
            let _ = make_writable(&p);
            let _ = std::fs::remove_dir_all(&p);
        }
        Ok(Store {
            root: std::path::absolute(root).map_err(io(root))?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where work in progress goes (same file system as the prefixes, for the rename).
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// The directory of a ready prefix with this key.
    pub fn prefix_path(&self, key: &str) -> PathBuf {
        self.root.join("prefixes").join(key)
    }

    /// The ready prefix with this key, if published.
    pub fn lookup(&self, key: &str) -> Option<PathBuf> {
        let p = self.prefix_path(key);
        p.is_dir().then_some(p)
    }
}

/// The cache key of a prefix: sha256 of the tarball checksum and the relocation target.
pub fn prefix_key(tarball_sha256: &str, root: &str, target_prefixes: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(tarball_sha256.as_bytes());
    h.update([0]);
    h.update(root.as_bytes());
    for p in target_prefixes {
        h.update([0]);
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Give the owner write permission on a tree so that it can be removed.
fn make_writable(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(p)?;
    if m.is_dir() {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        for e in std::fs::read_dir(p)?.flatten() {
            make_writable(&e.path())?;
        }
    }
    Ok(())
}
