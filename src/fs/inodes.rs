//! The inode table of the mount: virtual nodes (the root, projection directories, package
//! directories, `.spack-db/index.json`, `bin/sbang`) and nodes backed by files of ready
//! prefixes in the cache. Backed nodes are keyed by the cache file's (device, inode), so
//! hard links keep one inode.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

/// What an inode is.
#[derive(Debug, Clone)]
pub enum Node {
    /// A directory made of other nodes (root, projection levels, `bin`, `.spack-db`).
    /// Shared, so that reading a node never copies a large directory.
    Dir { dir: Arc<Dir> },
    /// A file held in memory.
    File { data: Arc<Vec<u8>>, mode: u16 },
    /// `.spack-db/index.json` (written on first use, see `fs::spack_db`).
    SpackDb,
    /// The top directory of a package (index into the live catalog's packages).
    Package { pkg: usize },
    /// A file, directory or symlink inside a ready package.
    Backed { path: PathBuf, pkg: usize },
}

impl Node {
    fn empty_dir() -> Node {
        Node::Dir {
            dir: Arc::default(),
        }
    }

    /// The kind of entry it makes in a listing.
    fn kind(&self) -> fuser::FileType {
        match self {
            Node::File { .. } | Node::SpackDb => fuser::FileType::RegularFile,
            _ => fuser::FileType::Directory,
        }
    }
}

/// A virtual directory: its children by name (each name held once, shared with the
/// package table), and its listing, made on the first `opendir` and kept until the
/// directory changes (a copy made to change it starts without one).
#[derive(Debug, Default)]
pub struct Dir {
    children: BTreeMap<Arc<OsStr>, u64>,
    listing: OnceLock<Listing>,
}

impl Clone for Dir {
    fn clone(&self) -> Self {
        Dir {
            children: self.children.clone(),
            listing: OnceLock::new(),
        }
    }
}

impl Dir {
    pub fn child(&self, name: &OsStr) -> Option<u64> {
        self.children.get(name).copied()
    }
}

/// The leaf of a path being added.
enum Leaf {
    New(Node),
    Existing(u64),
}

/// The entries of a directory: (inode, kind, name).
pub type Listing = Arc<Vec<(u64, fuser::FileType, Arc<OsStr>)>>;

/// Where a package's directory sits: (parent inode, name, inode).
pub type PackagePlace = (u64, Arc<OsStr>, u64);

/// The inode table.
#[derive(Default)]
pub struct Inodes {
    nodes: RwLock<Vec<Node>>,
    /// Backed inodes by (package, device, disk inode).
    backed: RwLock<HashMap<(usize, u64, u64), u64>>,
    /// Listings of package directories (immutable while the package is cached), by inode,
    /// with the package they belong to.
    listings: RwLock<HashMap<u64, (usize, Listing)>>,
    /// Where each package's directory sits, by package number.
    packages: RwLock<Vec<Option<PackagePlace>>>,
}

pub const ROOT: u64 = 1;

impl Inodes {
    /// A table with an empty root directory.
    pub fn new() -> Self {
        let t = Inodes::default();
        {
            let mut n = t.nodes.write().unwrap();
            n.push(Node::empty_dir()); // index 0: unused
            n.push(Node::empty_dir()); // ROOT
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
    fn add_path_at(&self, path: &str, leaf: Leaf) -> (u64, Option<(u64, Arc<OsStr>)>) {
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
                (_, false) => self.push(Node::empty_dir()),
            };
            let name: Arc<OsStr> = Arc::from(OsStr::new(comp));
            if let Some(Node::Dir { dir }) = self.nodes.write().unwrap().get_mut(parent as usize) {
                Arc::make_mut(dir).children.insert(name.clone(), ino);
            }
            first_new.get_or_insert((parent, name));
            parent = ino;
        }
        (parent, first_new)
    }

    /// The directory `path` (made with its parents where missing).
    fn dir_at(&self, path: &str) -> u64 {
        let mut dir = ROOT;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            dir = match self.child(dir, OsStr::new(comp)) {
                Some(c) => c,
                None => {
                    let ino = self.push(Node::empty_dir());
                    if let Some(Node::Dir { dir: d }) =
                        self.nodes.write().unwrap().get_mut(dir as usize)
                    {
                        Arc::make_mut(d)
                            .children
                            .insert(Arc::from(OsStr::new(comp)), ino);
                    }
                    ino
                }
            };
        }
        dir
    }

    /// Put the directories of many packages, new to the table, at their paths (a mount's
    /// first tree): grouped by parent directory, each group's names sorted and its map
    /// built in one go, without a lock taken per package.
    pub fn add_packages<'a>(&self, packages: impl Iterator<Item = (&'a str, usize)>) {
        let mut by_dir: HashMap<&str, Vec<(&str, usize)>> = HashMap::new();
        let mut most = 0;
        for (path, pkg) in packages {
            let path = path.trim_matches('/');
            let (dir, leaf) = path.rsplit_once('/').unwrap_or(("", path));
            by_dir.entry(dir).or_default().push((leaf, pkg));
            most = most.max(pkg + 1);
        }
        let mut places = self.packages.write().unwrap();
        if places.len() < most {
            places.resize(most, None);
        }
        for (dir, mut leaves) in by_dir {
            let parent = self.dir_at(dir);
            leaves.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut nodes = self.nodes.write().unwrap();
            let first = nodes.len() as u64;
            nodes.extend(leaves.iter().map(|&(_, pkg)| Node::Package { pkg }));
            let Some(Node::Dir { dir }) = nodes.get_mut(parent as usize) else {
                continue;
            };
            let dir = Arc::make_mut(dir);
            let named = leaves.iter().enumerate().map(|(k, &(leaf, pkg))| {
                let name: Arc<OsStr> = Arc::from(OsStr::new(leaf));
                let ino = first + k as u64;
                places[pkg] = Some((parent, name.clone(), ino));
                (name, ino)
            });
            if dir.children.is_empty() {
                // Sorted: the map is built in one pass.
                dir.children = named.collect();
            } else {
                dir.children.extend(named);
            }
        }
    }

    /// Put package `pkg`'s directory at `path` (again, with its old inode, if it was there
    /// before). Returns the first new entry, as [`Inodes::add_path_at`].
    pub fn add_package(&self, path: &str, pkg: usize) -> Option<(u64, Arc<OsStr>)> {
        let known = self.package_entry(pkg).map(|e| e.2);
        let leaf = match known {
            Some(ino) => Leaf::Existing(ino),
            None => Leaf::New(Node::Package { pkg }),
        };
        let (ino, first_new) = self.add_path_at(path, leaf);
        let name: Arc<OsStr> = Arc::from(OsStr::new(path.rsplit('/').next().unwrap_or(path)));
        let parent = self.parent_of(path);
        let mut places = self.packages.write().unwrap();
        if places.len() <= pkg {
            places.resize(pkg + 1, None);
        }
        places[pkg] = Some((parent, name, ino));
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
    pub fn remove_package(&self, pkg: usize) -> Option<PackagePlace> {
        let (parent, name, ino) = self.package_entry(pkg)?;
        if let Some(Node::Dir { dir }) = self.nodes.write().unwrap().get_mut(parent as usize) {
            if dir.child(&name) == Some(ino) {
                Arc::make_mut(dir).children.remove(&name);
            }
        }
        Some((parent, name, ino))
    }

    /// Where package `pkg`'s directory sits: (parent inode, name, inode).
    pub fn package_entry(&self, pkg: usize) -> Option<PackagePlace> {
        self.packages.read().unwrap().get(pkg).cloned().flatten()
    }

    /// A virtual directory's child.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        match self.nodes.read().unwrap().get(parent as usize) {
            Some(Node::Dir { dir }) => dir.child(name),
            _ => None,
        }
    }

    /// The listing of virtual directory `ino`, made once (the kind of each child looked up
    /// then) and kept until the directory changes.
    pub fn dir_listing(&self, ino: u64) -> Option<Listing> {
        let dir = match self.get(ino)? {
            Node::Dir { dir } => dir,
            _ => return None,
        };
        let listing = dir.listing.get_or_init(|| {
            let nodes = self.nodes.read().unwrap();
            Arc::new(
                dir.children
                    .iter()
                    .map(|(name, &child)| {
                        let kind = nodes
                            .get(child as usize)
                            .map_or(fuser::FileType::Directory, Node::kind);
                        (child, kind, name.clone())
                    })
                    .collect(),
            )
        });
        Some(listing.clone())
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
