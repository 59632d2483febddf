//! The file system's logic, without a kernel: the tree (inodes of the catalog's packages,
//! `.spack-db/index.json`, `bin/sbang`, files of ready prefixes), lookups that make a
//! package ready (async: the adapter parks them), open handles with the pins that keep
//! their prefix in the cache, listings, extended attributes, and ESTALE for a prefix that
//! left the cache under the mount. Every method answers `Result<_, Errno>`, so tests drive
//! it in-process; `fuse.rs` only decodes requests and sends replies.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::errno::ToErrno;
use super::inodes::{Inodes, Listing, Node, ROOT};
use super::spack_db::{DbFile, SpackDb};
use crate::catalog::live::{LiveCatalog, NamespaceChange, Observer, State};
use crate::store::ReadyPrefix;

/// How file reads are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Kernel passthrough to the cached file (needs CAP_SYS_ADMIN and kernel support).
    Passthrough,
    /// The daemon reads (`pread`) and the kernel keeps the pages.
    Pread,
}

/// An open file.
enum Handle {
    Backed {
        file: Arc<File>,
        /// Kept alive while the file is open (the kernel's passthrough backing id).
        keep: Option<Arc<dyn Send + Sync>>,
        /// The store entry pinned while the file is open (unpinned when dropped).
        _pin: Option<crate::store::Pin>,
    },
    Memory(Arc<Vec<u8>>),
    /// The database at the root, as written when the file was opened.
    Db(Arc<DbFile>),
}

/// What `open` gives the adapter.
pub enum Opened {
    /// A file the daemon serves (`.spack-db/index.json`, `bin/sbang`).
    Memory,
    /// A file of a ready prefix, for the kernel to read directly when it can.
    Backed(Arc<File>),
}

/// Figures of the cache's file system, for `statfs`.
pub struct FsStats {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub frsize: u32,
}

/// The file system, without the kernel.
pub struct FsCore {
    live: Arc<LiveCatalog>,
    inodes: Arc<Inodes>,
    passthrough: AtomicBool,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, Listing>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    /// The inode of `.spack-db/index.json` (rewritten when the namespace changes).
    db_ino: u64,
    db: Arc<SpackDb>,
}

impl FsCore {
    /// Build the tree of a live catalog. `read_mode` is the wish; passthrough falls back to
    /// pread when the kernel or our privileges do not allow it.
    pub fn new(live: Arc<LiveCatalog>, read_mode: ReadMode) -> Self {
        let started = std::time::Instant::now();
        let inodes = Arc::new(Inodes::new());
        let packages = live.packages();
        inodes.add_packages(
            (packages.iter().enumerate())
                .filter(|(_, p)| p.is_listed())
                .map(|(i, p)| (&*p.rel_path, i)),
        );
        tracing::debug!("directory tree made in {:?}", started.elapsed());
        let db_ino = inodes.add_path(".spack-db/index.json", Node::SpackDb);
        let db = Arc::new(SpackDb::new(live.store().root().join("index")));
        let bin = inodes.child(ROOT, OsStr::new("bin"));
        if bin.is_none_or(|b| matches!(inodes.get(b), Some(Node::Dir { .. }))) {
            inodes.add_path(
                "bin/sbang",
                Node::File {
                    data: Arc::new(crate::SBANG_SCRIPT.to_vec()),
                    mode: 0o755,
                },
            );
        }
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let passthrough = read_mode == ReadMode::Passthrough && {
            let allowed = super::mount::has_cap_sys_admin();
            if !allowed {
                tracing::info!(
                    "reads go through the daemon (pread): FUSE passthrough needs CAP_SYS_ADMIN"
                );
            }
            allowed
        };
        FsCore {
            live,
            inodes,
            passthrough: AtomicBool::new(passthrough),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid,
            gid,
            db_ino,
            db,
        }
    }

    /// The read mode in use.
    pub fn read_mode(&self) -> ReadMode {
        if self.passthrough.load(Ordering::Relaxed) {
            ReadMode::Passthrough
        } else {
            ReadMode::Pread
        }
    }

    /// Reads go through the daemon from now on (the kernel refused passthrough).
    pub fn disable_passthrough(&self) {
        self.passthrough.store(false, Ordering::Relaxed);
    }

    /// What the catalog's observer needs, before the kernel's notifier exists.
    pub fn observer_parts(&self) -> ObserverParts {
        ObserverParts {
            inodes: self.inodes.clone(),
            db_ino: self.db_ino,
            db: self.db.clone(),
        }
    }

    pub fn live(&self) -> &LiveCatalog {
        &self.live
    }

    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn virtual_attr(&self, ino: u64, kind: FileType, perm: u16, size: u64) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr_of(&self, ino: u64, node: &Node) -> Result<FileAttr, Errno> {
        Ok(match node {
            Node::Dir { .. } | Node::Package { .. } => {
                self.virtual_attr(ino, FileType::Directory, 0o755, 0)
            }
            Node::File { data, mode } => {
                self.virtual_attr(ino, FileType::RegularFile, *mode, data.len() as u64)
            }
            Node::SpackDb => {
                let db = self.spack_db()?;
                self.virtual_attr(ino, FileType::RegularFile, 0o644, db.len())
            }
            Node::Backed { path, .. } => {
                let m = std::fs::symlink_metadata(path).map_err(|e| e.errno())?;
                backed_attr(ino, &m)
            }
        })
    }

    /// The database at the root, written now if the package list changed since.
    fn spack_db(&self) -> Result<Arc<DbFile>, Errno> {
        self.db.get(&self.live).map_err(|e| {
            tracing::error!("cannot write .spack-db/index.json: {e}");
            e.errno()
        })
    }

    /// The attributes of inode `ino`.
    pub fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.inodes.get(ino).ok_or(Errno::ENOENT)?;
        self.attr_of(ino, &node).map_err(|e| match node {
            Node::Backed { pkg, .. } => self.stale_or(pkg, e),
            _ => e,
        })
    }

    /// The ready prefix of package `pkg`: now, or once it is materialised (or its failure).
    /// Only a published [`ReadyPrefix`] is ever served.
    async fn ready_dir(&self, pkg: usize) -> Result<ReadyPrefix, Errno> {
        let hash = self
            .live
            .package(pkg)
            .map(|p| p.node.hash().to_string())
            .ok_or(Errno::ENOENT)?;
        if let Some(path) = self.live.ready_path(&hash) {
            if !self.live.lost(pkg) {
                self.live.note_use(pkg);
                return Ok(path);
            }
        }
        self.live
            .ensure(&hash)
            .await
            .map_err(|failure| failure.kind.errno())
    }

    /// Look `name` up in directory `parent`. Inside a package that is not ready, this
    /// materialises it first (the future waits; the adapter parks the reply).
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        match self.inodes.get(parent) {
            Some(Node::Dir { .. }) => {
                let ino = self.inodes.child(parent, name).ok_or(Errno::ENOENT)?;
                let node = self.inodes.get(ino).ok_or(Errno::ENOENT)?;
                self.attr_of(ino, &node)
            }
            Some(Node::Package { pkg }) => {
                let dir = self.ready_dir(pkg).await?;
                // A prefix that left the cache since (even before its waiters were
                // answered) is stale for every one of them, never absent.
                if !dir.path().is_dir() {
                    self.live.lost(pkg);
                    return Err(Errno::ESTALE);
                }
                self.lookup_backed(dir.path(), name, pkg)
                    .map_err(|e| self.stale_or(pkg, e))
            }
            Some(Node::Backed { path, pkg }) => self
                .lookup_backed(&path, name, pkg)
                .map_err(|e| self.stale_or(pkg, e)),
            _ => Err(Errno::ENOENT),
        }
    }

    /// Look `name` up in a ready package directory `dir` (a cache path).
    fn lookup_backed(&self, dir: &Path, name: &OsStr, pkg: usize) -> Result<FileAttr, Errno> {
        let path = dir.join(name);
        let m = std::fs::symlink_metadata(&path).map_err(|e| e.errno())?;
        let ino = self.inodes.backed(m.dev(), m.ino(), path, pkg);
        Ok(backed_attr(ino, &m))
    }

    /// An error met on a node inside a package: when it is ENOENT because the whole prefix
    /// left the cache (evicted, even by us, since the kernel looked the node up), the
    /// package is forgotten and the process gets ESTALE, on which the kernel walks the path
    /// again (and the package is materialised again).
    fn stale_or(&self, pkg: usize, e: Errno) -> Errno {
        if e == Errno::ENOENT && (self.live.lost(pkg) || !self.live.is_ready(pkg)) {
            Errno::ESTALE
        } else {
            e
        }
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        match self.inodes.get(ino) {
            Some(Node::Backed { path, pkg }) => match std::fs::read_link(&path) {
                Ok(t) => Ok(t.as_os_str().as_bytes().to_vec()),
                Err(e) => Err(self.stale_or(pkg, e.errno())),
            },
            _ => Err(Errno::EINVAL),
        }
    }

    /// Open file `ino` read-only; returns the handle and what it is. A file of a ready
    /// prefix pins the prefix until it is released.
    pub fn open(&self, ino: u64, flags: i32) -> Result<(u64, Opened), Errno> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Errno::EROFS);
        }
        match self.inodes.get(ino) {
            Some(Node::File { data, .. }) => {
                let fh = self.next_fh();
                self.handles
                    .lock()
                    .unwrap()
                    .insert(fh, Handle::Memory(data));
                Ok((fh, Opened::Memory))
            }
            Some(Node::SpackDb) => {
                let db = self.spack_db()?;
                let fh = self.next_fh();
                self.handles.lock().unwrap().insert(fh, Handle::Db(db));
                Ok((fh, Opened::Memory))
            }
            Some(Node::Backed { path, pkg }) => {
                // Open files keep their prefix from eviction.
                let pin = self.live.pin(pkg);
                self.live.note_use(pkg);
                let file = match File::open(&path) {
                    Ok(f) => Arc::new(f),
                    Err(e) => return Err(self.stale_or(pkg, e.errno())),
                };
                let fh = self.next_fh();
                // Registered before the reply: the release may come at once, on another
                // thread, and must find the handle (and its pin).
                self.handles.lock().unwrap().insert(
                    fh,
                    Handle::Backed {
                        file: file.clone(),
                        keep: None,
                        _pin: pin,
                    },
                );
                Ok((fh, Opened::Backed(file)))
            }
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Keep `object` alive while handle `fh` is open (the kernel's backing id).
    pub fn keep_with(&self, fh: u64, object: Arc<dyn Send + Sync>) {
        if let Some(Handle::Backed { keep, .. }) = self.handles.lock().unwrap().get_mut(&fh) {
            *keep = Some(object);
        }
    }

    /// Read `size` bytes at `offset` of open file `fh`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let handles = self.handles.lock().unwrap();
        match handles.get(&fh) {
            Some(Handle::Memory(data)) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                Ok(data[start..end].to_vec())
            }
            Some(Handle::Db(db)) => {
                let db = db.clone();
                drop(handles);
                db.read(offset, size).map_err(|e| e.errno())
            }
            Some(Handle::Backed { file, .. }) => {
                let file = file.clone();
                drop(handles);
                let mut buf = vec![0u8; size as usize];
                let mut n = 0;
                while n < buf.len() {
                    match file.read_at(&mut buf[n..], offset + n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.errno()),
                    }
                }
                buf.truncate(n);
                Ok(buf)
            }
            None => Err(Errno::EBADF),
        }
    }

    /// Close handle `fh` (its pin goes with it).
    pub fn release(&self, fh: u64) {
        let handle = self.handles.lock().unwrap().remove(&fh);
        drop(handle);
    }

    /// Open directory `ino`: its listing is taken now (a package is made ready first).
    pub async fn opendir(&self, ino: u64) -> Result<u64, Errno> {
        let entries = match self.inodes.get(ino) {
            Some(Node::Dir { .. }) => self.inodes.dir_listing(ino).ok_or(Errno::ENOENT)?,
            Some(Node::Backed { path, pkg }) => {
                listing(&self.inodes, ino, &path, pkg).map_err(|e| self.stale_or(pkg, e))?
            }
            Some(Node::Package { pkg }) => {
                let dir = self.ready_dir(pkg).await?;
                listing(&self.inodes, ino, dir.path(), pkg)?
            }
            Some(Node::File { .. } | Node::SpackDb) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        };
        let fh = self.next_fh();
        self.dirs.lock().unwrap().insert(fh, entries);
        Ok(fh)
    }

    /// The entries of open directory `fh` (inode `ino`) from position `offset` on, with `.`
    /// and `..` first, given to `add` with the position after each (its index + 1) until
    /// `add` says the reply is full: a call costs what it returns, not the directory's size.
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, FileType, &OsStr, u64) -> bool,
    ) -> Result<(), Errno> {
        let entries = self
            .dirs
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let mut pos = offset;
        while pos < 2 {
            let name = if pos == 0 { "." } else { ".." };
            pos += 1;
            if add(ino, FileType::Directory, OsStr::new(name), pos) {
                return Ok(());
            }
        }
        let start = usize::try_from(pos - 2).unwrap_or(usize::MAX);
        for (child, kind, name) in entries.iter().skip(start) {
            pos += 1;
            if add(*child, *kind, name, pos) {
                break;
            }
        }
        Ok(())
    }

    /// [`FsCore::readdir`] with each entry's attributes (`readdirplus`: `ls -l` of a large
    /// directory then needs no lookup per entry). `add` also gets whether the attributes
    /// may be cached (the database at the root is sized when it is written, on its own
    /// lookup: it is never written for a listing).
    pub fn readdir_plus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(FileType, &OsStr, u64, &FileAttr, bool) -> bool,
    ) -> Result<(), Errno> {
        let here = self.getattr(ino)?;
        let mut added = false;
        let mut failed = None;
        self.readdir(ino, fh, offset, |child, kind, name, next| {
            let attr = if child == ino || name == ".." {
                // The kernel links no entry for `.` and `..`: any valid attributes do.
                Ok((here, true))
            } else {
                match self.inodes.get(child) {
                    Some(Node::SpackDb) => Ok((
                        self.virtual_attr(child, FileType::RegularFile, 0o644, 0),
                        false,
                    )),
                    Some(node) => self.attr_of(child, &node).map(|a| (a, true)),
                    None => Err(Errno::ENOENT),
                }
            };
            match attr {
                Ok((attr, cached)) => {
                    let full = add(kind, name, next, &attr, cached);
                    added |= !full;
                    full
                }
                Err(e) => {
                    failed = Some(e);
                    true
                }
            }
        })?;
        match failed {
            // What was added is answered; the next call starts at the entry that failed.
            Some(e) if !added => Err(match self.inodes.get(ino) {
                Some(Node::Backed { pkg, .. } | Node::Package { pkg }) => self.stale_or(pkg, e),
                _ => e,
            }),
            _ => Ok(()),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// Figures of the cache's file system.
    pub fn statfs(&self) -> Result<FsStats, Errno> {
        let path = std::ffi::CString::new(self.live.store().root().as_os_str().as_bytes())
            .map_err(|_| Errno::EIO)?;
        // SAFETY: `st` is a properly sized out-parameter, zeroed before the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string; statvfs writes only into `st`.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error().errno());
        }
        Ok(FsStats {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            frsize: st.f_frsize as u32,
        })
    }

    fn package_xattrs(&self, pkg: usize) -> Vec<(String, Vec<u8>)> {
        let Some(p) = self.live.package(pkg) else {
            return Vec::new();
        };
        let state = self.live.state(p.node.hash());
        let mut out = vec![
            (
                "user.spackfs.hash".into(),
                p.node.hash().to_string().into_bytes(),
            ),
            (
                "user.spackfs.state".into(),
                state.name().as_bytes().to_vec(),
            ),
        ];
        if !matches!(state, State::Ready { .. }) {
            // Not fetched yet: the mirrors that list it, in the order they are asked.
            let listing = self.live.listing_mirrors(p.node.hash());
            if !listing.is_empty() {
                out.push(("user.spackfs.mirror".into(), listing.into_bytes()));
            }
        }
        match state {
            State::Ready {
                timings,
                signer,
                mirror,
                ..
            } => {
                out.push(("user.spackfs.mirror".into(), mirror.into_bytes()));
                out.push((
                    "user.spackfs.signer".into(),
                    signer.unwrap_or_else(|| "unsigned".into()).into_bytes(),
                ));
                if let Some(t) = timings {
                    out.push(("user.spackfs.timings".into(), t.to_string().into_bytes()));
                }
            }
            State::Failed { failure, .. } => {
                out.push((
                    "user.spackfs.error".into(),
                    failure.message.as_bytes().to_vec(),
                ));
            }
            _ => {}
        }
        out
    }

    fn root_xattrs(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = crate::metrics::global()
            .snapshot()
            .into_iter()
            .map(|(k, v)| {
                (
                    format!("user.spackfs.metrics.{k}"),
                    v.to_string().into_bytes(),
                )
            })
            .collect();
        out.push((
            "user.spackfs.read_mode".into(),
            format!("{:?}", self.read_mode())
                .to_lowercase()
                .into_bytes(),
        ));
        out.push((
            "user.spackfs.mirror".into(),
            self.live.mirror().into_bytes(),
        ));
        out
    }

    /// The extended attributes of inode `ino`, by name (each begins with [`XATTR_PREFIX`]).
    pub fn xattrs(&self, ino: u64) -> Vec<(String, Vec<u8>)> {
        match self.inodes.get(ino) {
            Some(Node::Package { pkg }) => self.package_xattrs(pkg),
            _ if ino == ROOT => self.root_xattrs(),
            _ => Vec::new(),
        }
    }

    /// The value of attribute `name` of `ino` (ENODATA when it has none).
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        // `ls -l` asks every entry for `security.selinux` and the POSIX ACLs: answered
        // without working out the attributes this file system has.
        if !name.as_bytes().starts_with(XATTR_PREFIX.as_bytes()) {
            return Err(Errno::from_i32(libc::ENODATA));
        }
        self.xattrs(ino)
            .into_iter()
            .find(|(k, _)| k.as_bytes() == name.as_bytes())
            .map(|(_, v)| v)
            .ok_or(Errno::from_i32(libc::ENODATA))
    }

    /// The names of the attributes of `ino`, NUL-terminated, as `listxattr` returns them.
    pub fn listxattr(&self, ino: u64) -> Vec<u8> {
        self.xattrs(ino)
            .into_iter()
            .flat_map(|(k, _)| k.into_bytes().into_iter().chain([0]))
            .collect()
    }
}

/// What the name of every extended attribute of this file system begins with.
pub const XATTR_PREFIX: &str = "user.spackfs.";

/// The file system's side of the catalog's changes: forgets evicted packages, adds and
/// removes package directories after an index refresh, and tells the kernel (through
/// `notify`) to drop what it cached of them (entries, negative entries, directory
/// listings, `.spack-db`).
pub struct ObserverParts {
    inodes: Arc<Inodes>,
    db_ino: u64,
    db: Arc<SpackDb>,
}

/// What the kernel is told to forget.
pub trait KernelCache: Send + Sync {
    /// Drop the entry `name` of directory `parent` (and any negative entry).
    fn forget_entry(&self, parent: u64, name: &OsStr);
    /// Drop what is cached of inode `ino` (attributes, pages, a directory's listing).
    fn forget_inode(&self, ino: u64);
    /// Wait, up to `limit`, until everything asked so far is done.
    fn flush(&self, limit: std::time::Duration);
}

impl ObserverParts {
    /// The observer for the live catalog, given the kernel's cache.
    pub fn with_kernel(self, kernel: Box<dyn KernelCache>) -> Box<dyn Observer> {
        Box::new(TreeObserver {
            inodes: self.inodes,
            db_ino: self.db_ino,
            db: self.db,
            kernel,
        })
    }
}

struct TreeObserver {
    inodes: Arc<Inodes>,
    db_ino: u64,
    db: Arc<SpackDb>,
    kernel: Box<dyn KernelCache>,
}

impl TreeObserver {
    fn forget_entry_and_listing(&self, parent: u64, name: &OsStr) {
        self.kernel.forget_entry(parent, name);
        self.kernel.forget_inode(parent);
    }
}

impl Observer for TreeObserver {
    fn evicted(&self, pkg: usize, wait: Option<std::time::Duration>) {
        self.inodes.forget_package(pkg);
        if let Some((parent, name, ino)) = self.inodes.package_entry(pkg) {
            self.kernel.forget_inode(ino);
            self.kernel.forget_entry(parent, &name);
            if let Some(limit) = wait {
                self.kernel.flush(limit);
            }
        }
    }

    fn changed(&self, change: &NamespaceChange, live: &LiveCatalog) {
        for &pkg in &change.removed {
            if let Some((parent, name, _)) = self.inodes.remove_package(pkg) {
                self.forget_entry_and_listing(parent, &name);
            }
        }
        for &pkg in &change.added {
            let Some(p) = live.package(pkg) else { continue };
            if let Some((parent, name)) = self.inodes.add_package(&p.rel_path, pkg) {
                self.forget_entry_and_listing(parent, &name);
            }
        }
        self.db.invalidate();
        self.kernel.forget_inode(self.db_ino);
    }
}

fn file_type(m: &std::fs::Metadata) -> FileType {
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn to_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

fn backed_attr(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: to_time(m.atime(), m.atime_nsec()),
        mtime: to_time(m.mtime(), m.mtime_nsec()),
        ctime: to_time(m.ctime(), m.ctime_nsec()),
        crtime: to_time(m.mtime(), m.mtime_nsec()),
        kind: file_type(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// The entries of cache directory `dir` (inode `ino` of package `pkg`), listed once and
/// then kept: a cached prefix never changes.
fn listing(inodes: &Inodes, ino: u64, dir: &Path, pkg: usize) -> Result<Listing, Errno> {
    if let Some(l) = inodes.listing(ino) {
        return Ok(l);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| e.errno())? {
        let e = e.map_err(|e| e.errno())?;
        let m = e.metadata().map_err(|e| e.errno())?;
        let child = inodes.backed(m.dev(), m.ino(), e.path(), pkg);
        out.push((child, file_type(&m), Arc::<OsStr>::from(e.file_name())));
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    let out = Arc::new(out);
    inodes.set_listing(ino, pkg, out.clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::TinyMirror;
    use crate::transport::fault::Fault;

    const ROOT_DIR: &str = "/tmp/spackfs-tiny";

    async fn core_over(
        m: &TinyMirror,
        cache: &Path,
    ) -> (Arc<FsCore>, crate::transport::fault::FaultControl) {
        let (live, faults) = m.live(cache, ROOT_DIR, Duration::from_millis(100)).await;
        (Arc::new(FsCore::new(live, ReadMode::Pread)), faults)
    }

    /// Walk `path` from the root as the kernel does, one lookup per component.
    async fn walk(core: &FsCore, path: &str) -> Result<FileAttr, Errno> {
        let mut attr = core.getattr(ROOT)?;
        for comp in path.split('/') {
            attr = core.lookup(attr.ino.0, OsStr::new(comp)).await?;
        }
        Ok(attr)
    }

    fn read_all(core: &FsCore, ino: u64) -> Vec<u8> {
        let (fh, _) = core.open(ino, libc::O_RDONLY).expect("open");
        let data = core.read(fh, 0, 1 << 20).expect("read");
        core.release(fh);
        data
    }

    fn package(m: &TinyMirror) -> String {
        format!("linux-x86_64/tiny-1.0-{}", m.hash)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_lookup_materialises_and_the_file_is_relocated() {
        let m = TinyMirror::new();
        let cache = tempfile::tempdir().unwrap();
        let (core, faults) = core_over(&m, cache.path()).await;
        let fh = core.opendir(ROOT).await.unwrap();
        // Read in pages of two entries, each call resuming where the last one stopped.
        let (mut names, mut offset) = (Vec::new(), 0);
        loop {
            let mut page = Vec::new();
            core.readdir(ROOT, fh, offset, |_, _, name, next| {
                page.push((name.to_os_string(), next));
                page.len() == 2
            })
            .unwrap();
            let Some(&(_, last)) = page.last() else { break };
            offset = last;
            names.extend(page.into_iter().map(|(n, _)| n));
        }
        assert_eq!(names, [".", "..", ".spack-db", "bin", "linux-x86_64"]);
        // Listing fetched nothing.
        assert_eq!(faults.count("blobs/"), 1, "only the index blob");
        let script = walk(&core, &format!("{}/bin/hello.sh", package(&m)))
            .await
            .unwrap();
        let text = String::from_utf8(read_all(&core, script.ino.0)).unwrap();
        assert_eq!(
            text,
            format!("#!/bin/sh\necho {ROOT_DIR}/{}\n", package(&m))
        );
        assert_eq!(
            walk(&core, "linux-x86_64/nothing").await.unwrap_err(),
            Errno::ENOENT
        );
        let pkg = walk(&core, &package(&m)).await.unwrap();
        assert_eq!(
            core.getxattr(pkg.ino.0, OsStr::new("user.spackfs.state"))
                .unwrap(),
            b"ready"
        );
        assert_eq!(
            core.getxattr(pkg.ino.0, OsStr::new("user.spackfs.nope"))
                .unwrap_err(),
            Errno::from_i32(libc::ENODATA)
        );
        assert_eq!(
            core.open(script.ino.0, libc::O_WRONLY).err(),
            Some(Errno::EROFS)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transport_failures_and_corrupt_bytes_give_eio_and_a_retry_heals() {
        let m = TinyMirror::new();
        let cache = tempfile::tempdir().unwrap();
        let (core, faults) = core_over(&m, cache.path()).await;
        let script = format!("{}/bin/hello.sh", package(&m));
        for fault in [Fault::Connect, Fault::Corrupt(100), Fault::Truncate(50)] {
            faults.clear();
            faults.set(&m.tarball, fault.clone(), None);
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert_eq!(
                walk(&core, &script).await.unwrap_err(),
                Errno::EIO,
                "{fault:?}"
            );
            let pkg = walk(&core, &package(&m)).await.unwrap();
            let error = core
                .getxattr(pkg.ino.0, OsStr::new("user.spackfs.error"))
                .unwrap();
            assert!(!error.is_empty(), "{fault:?}");
            // Nothing half-made is served or kept.
            assert!(core.live().store().list().is_empty(), "{fault:?}");
        }
        faults.clear();
        tokio::time::sleep(Duration::from_millis(400)).await;
        walk(&core, &script)
            .await
            .expect("served once the mirror is well again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prefix_removed_under_the_mount_is_stale_then_fetched_again() {
        let m = TinyMirror::new();
        let cache = tempfile::tempdir().unwrap();
        let (core, faults) = core_over(&m, cache.path()).await;
        let bin = walk(&core, &format!("{}/bin", package(&m))).await.unwrap();
        let key = core.live().store().list()[0].meta.key.clone();
        core.live().store().remove_entry(&key);
        assert_eq!(
            core.lookup(bin.ino.0, OsStr::new("hello.sh"))
                .await
                .unwrap_err(),
            Errno::ESTALE
        );
        // The kernel walks the path again: the package is fetched again.
        walk(&core, &format!("{}/bin/hello.sh", package(&m)))
            .await
            .unwrap();
        assert_eq!(faults.count(&m.tarball), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_files_pin_their_prefix_until_released() {
        let m = TinyMirror::new();
        let cache = tempfile::tempdir().unwrap();
        let (core, _) = core_over(&m, cache.path()).await;
        let script = walk(&core, &format!("{}/bin/hello.sh", package(&m)))
            .await
            .unwrap();
        let key = core.live().store().list()[0].meta.key.clone();
        let (fh, _) = core.open(script.ino.0, libc::O_RDONLY).unwrap();
        assert!(core.live().store().is_pinned(&key));
        core.release(fh);
        assert!(!core.live().store().is_pinned(&key));
        assert_eq!(core.read(fh, 0, 10).unwrap_err(), Errno::EBADF);
    }
}
