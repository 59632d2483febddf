//! The inode table of the mount: virtual nodes (the root, projection directories, package
//! directories, `.spack-db/index.json`, `bin/sbang`) and nodes backed by files of ready
//! prefixes in the cache. Backed nodes are keyed by the cache file's (device, inode), so
//! hard links keep one inode.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// What an inode is.
#[derive(Debug, Clone)]
pub enum Node {
    /// A directory made of other nodes (root, projection levels, `bin`, `.spack-db`).
    /// Shared, so that reading a node never copies a large directory.
    Dir {
        children: Arc<BTreeMap<OsString, u64>>,
    },
    /// A file held in memory.
    File { data: Arc<Vec<u8>>, mode: u16 },
    /// `.spack-db/index.json` (written on first use, see `fs::spack_db`).
    SpackDb,
    /// The top directory of a package (index into the live catalog's packages).
    Package { pkg: usize },
    /// A file, directory or symlink inside a ready package.
    Backed { path: PathBuf, pkg: usize },
}

/// The leaf of a path being added.
enum Leaf {
    New(Node),
    Existing(u64),
}

/// The entries of a directory: (inode, kind, name).
pub type Listing = Arc<Vec<(u64, fuser::FileType, OsString)>>;

/// The inode table.
#[derive(Default)]
pub struct Inodes {
    nodes: RwLock<Vec<Node>>,
    /// Backed inodes by (package, device, disk inode).
    backed: RwLock<HashMap<(usize, u64, u64), u64>>,
    /// Listings of package directories (immutable while the package is cached), by inode,
    /// with the package they belong to.
    listings: RwLock<HashMap<u64, (usize, Listing)>>,
    /// Where each package's directory sits: (parent inode, name, inode).
    packages: RwLock<HashMap<usize, (u64, OsString, u64)>>,
}

pub const ROOT: u64 = 1;

impl Inodes {
    /// A table with an empty root directory.
    pub fn new() -> Self {
        let t = Inodes::default();
        {
            let mut n = t.nodes.write().unwrap();
            n.push(Node::Dir {
                children: Arc::default(),
            }); // index 0: unused
            n.push(Node::Dir {
                children: Arc::default(),
            }); // ROOT
        }
        t
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.nodes.read().unwrap().get(ino as usize).cloned()
    }

    fn push(&self, node: Node) -> u64 {
        let mut n = self.nodes.write().unwrap();
        n.push(node);
        (n.len() - 1) as u64
    }

    /// Add a virtual child under a virtual directory, creating intermediate directories.
    pub fn add_path(&self, path: &str, leaf: Node) -> u64 {
        self.add_path_at(path, Leaf::New(leaf)).0
    }

    /// Add `path` ending in `leaf`; returns the leaf's inode and the first entry that did
    /// not exist before as (parent inode, name) — what the kernel may have cached as absent.
    fn add_path_at(&self, path: &str, leaf: Leaf) -> (u64, Option<(u64, OsString)>) {
        let mut parent = ROOT;
        let mut first_new = None;
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for (i, comp) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            if let Some(existing) = self.child(parent, OsStr::new(comp)) {
                if !last {
                    parent = existing;
                    continue;
                }
            }
            let ino = match (&leaf, last) {
                (Leaf::Existing(ino), true) => *ino,
                (Leaf::New(node), true) => self.push(node.clone()),
                (_, false) => self.push(Node::Dir {
                    children: Arc::default(),
                }),
            };
            if let Some(Node::Dir { children }) =
                self.nodes.write().unwrap().get_mut(parent as usize)
            {
                Arc::make_mut(children).insert(OsString::from(comp), ino);
            }
            first_new.get_or_insert((parent, OsString::from(comp)));
            parent = ino;
        }
        (parent, first_new)
    }

    /// Put package `pkg`'s directory at `path` (again, with its old inode, if it was there
    /// before). Returns the first new entry, as [`Inodes::add_path_at`].
    pub fn add_package(&self, path: &str, pkg: usize) -> Option<(u64, OsString)> {
        let known = self.packages.read().unwrap().get(&pkg).map(|e| e.2);
        let leaf = match known {
            Some(ino) => Leaf::Existing(ino),
            None => Leaf::New(Node::Package { pkg }),
        };
        let (ino, first_new) = self.add_path_at(path, leaf);
        let name = path.rsplit('/').next().unwrap_or(path);
        let parent = self.parent_of(path);
        self.packages
            .write()
            .unwrap()
            .insert(pkg, (parent, OsString::from(name), ino));
        first_new
    }

    fn parent_of(&self, path: &str) -> u64 {
        let mut dir = ROOT;
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for comp in &comps[..comps.len().saturating_sub(1)] {
            match self.child(dir, OsStr::new(comp)) {
                Some(c) => dir = c,
                None => break,
            }
        }
        dir
    }

    /// Take package `pkg`'s directory out of its parent (its inode stays valid for whoever
    /// holds it). Returns (parent inode, name, inode).
    pub fn remove_package(&self, pkg: usize) -> Option<(u64, OsString, u64)> {
        let (parent, name, ino) = self.packages.read().unwrap().get(&pkg).cloned()?;
        if let Some(Node::Dir { children }) = self.nodes.write().unwrap().get_mut(parent as usize) {
            if children.get(&name) == Some(&ino) {
                Arc::make_mut(children).remove(&name);
            }
        }
        Some((parent, name, ino))
    }

    /// Where package `pkg`'s directory sits: (parent inode, name, inode).
    pub fn package_entry(&self, pkg: usize) -> Option<(u64, OsString, u64)> {
        self.packages.read().unwrap().get(&pkg).cloned()
    }

    /// A virtual directory's child.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        match self.nodes.read().unwrap().get(parent as usize) {
            Some(Node::Dir { children }) => children.get(name).copied(),
            _ => None,
        }
    }

    /// Forget which cache files the inodes of package `pkg` stand for (after eviction: the
    /// next copy of the prefix may reuse the disk's inode numbers for other paths).
    pub fn forget_package(&self, pkg: usize) {
        self.listings.write().unwrap().retain(|_, (p, _)| *p != pkg);
        self.backed.write().unwrap().retain(|k, _| k.0 != pkg);
    }

    /// The cached listing of directory `ino`.
    pub fn listing(&self, ino: u64) -> Option<Listing> {
        self.listings
            .read()
            .unwrap()
            .get(&ino)
            .map(|(_, l)| l.clone())
    }

    /// Remember the listing of directory `ino` of package `pkg`.
    pub fn set_listing(&self, ino: u64, pkg: usize, listing: Listing) {
        self.listings.write().unwrap().insert(ino, (pkg, listing));
    }

    /// The inode of the backed file at `path` (cache file `(dev, ino)` of package `pkg`),
    /// allocated on first sight. A known inode is reused only while it still stands for
    /// the same file: its path is `path`, or a hard link to the same disk inode. A disk
    /// inode number freed by an eviction this mount has not noticed yet (another process
    /// ran `cache gc`) and reused by a new file is never taken for the old file.
    pub fn backed(&self, dev: u64, ino: u64, path: PathBuf, pkg: usize) -> u64 {
        let key = (pkg, dev, ino);
        if let Some(i) = self.backed.read().unwrap().get(&key).copied() {
            if self.stands_for(i, &path, dev, ino) {
                return i;
            }
        }
        let mut map = self.backed.write().unwrap();
        if let Some(i) = map.get(&key).copied() {
            if self.stands_for(i, &path, dev, ino) {
                return i;
            }
        }
        let i = self.push(Node::Backed { path, pkg });
        map.insert(key, i);
        i
    }

    /// Is backed inode `i` the file at `path`, disk inode `(dev, ino)`?
    fn stands_for(&self, i: u64, path: &Path, dev: u64, ino: u64) -> bool {
        let known = match self.nodes.read().unwrap().get(i as usize) {
            Some(Node::Backed { path: p, .. }) if p == path => return true,
            Some(Node::Backed { path: p, .. }) => p.clone(),
            _ => return false,
        };
        std::fs::symlink_metadata(known).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn disk(path: &Path) -> (u64, u64) {
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn hard_links_share_an_inode() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"x").unwrap();
        std::fs::hard_link(&a, &b).unwrap();
        let t = Inodes::new();
        let (dev, ino) = disk(&a);
        let ia = t.backed(dev, ino, a.clone(), 0);
        assert_eq!(t.backed(dev, ino, b.clone(), 0), ia);
        assert_eq!(t.backed(dev, ino, a, 0), ia);
    }

    #[test]
    fn a_reused_disk_inode_is_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        std::fs::write(&old, b"old").unwrap();
        let t = Inodes::new();
        let (dev, ino) = disk(&old);
        let i_old = t.backed(dev, ino, old.clone(), 0);
        // Another package's file with the same disk numbers is another inode.
        let other = t.backed(dev, ino, new.clone(), 1);
        assert_ne!(other, i_old);
        // The old file is gone and its disk inode stands for a new path now (the cache
        // removed the prefix behind the mount's back and a new copy took the numbers).
        std::fs::remove_file(&old).unwrap();
        std::fs::write(&new, b"new").unwrap();
        let i_new = t.backed(dev, ino, new.clone(), 0);
        assert_ne!(
            i_new, i_old,
            "the old file's inode was handed out for a new file"
        );
        match t.get(i_new) {
            Some(Node::Backed { path, pkg }) => assert_eq!((path, pkg), (new, 0)),
            n => panic!("unexpected node {n:?}"),
        }
    }
}
