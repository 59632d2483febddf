//! The FUSE adapter (fuser): presents the live catalog under the mount point. Lookups that
//! need a package materialised park their reply in a task on the runtime, so FUSE threads
//! never wait on the network. Ready files are served from the cache by kernel passthrough
//! when allowed, else by `pread` with `FOPEN_KEEP_CACHE`. Everything is read-only and
//! immutable, so entries and attributes carry long TTLs.

pub mod inodes;
pub mod mount;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::catalog::live::{LiveCatalog, NamespaceChange, Observer, State};
use inodes::{Inodes, Node, ROOT};

/// Entries and attributes never change while mounted.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Directory contents never change: let the kernel cache them.
const DIR_FLAGS: FopenFlags = FopenFlags::FOPEN_CACHE_DIR.union(FopenFlags::FOPEN_KEEP_CACHE);

/// A reply that can carry an errno (what a parked request answers when its package fails).
trait ErrorReply {
    fn fail(self, e: Errno);
}

impl ErrorReply for ReplyEntry {
    fn fail(self, e: Errno) {
        self.error(e)
    }
}

impl ErrorReply for ReplyOpen {
    fn fail(self, e: Errno) {
        self.error(e)
    }
}

/// How file reads are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Kernel passthrough to the cached file (needs CAP_SYS_ADMIN and kernel support).
    Passthrough,
    /// The daemon reads (`pread`) and the kernel keeps the pages.
    Pread,
}

/// The entries of an open directory.
type DirEntries = inodes::Listing;

/// An open file.
enum Handle {
    Backed {
        file: Arc<File>,
        _backing: Option<Arc<BackingId>>,
        /// The store entry pinned while the file is open.
        pin: Option<String>,
    },
    Memory(Arc<Vec<u8>>),
}

/// The filesystem.
pub struct SpackFs {
    live: Arc<LiveCatalog>,
    inodes: Arc<Inodes>,
    rt: tokio::runtime::Handle,
    passthrough: AtomicBool,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Arc<Mutex<HashMap<u64, DirEntries>>>,
    backing_ids: Mutex<HashMap<u64, Weak<BackingId>>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    /// The inode of `.spack-db/index.json` (rewritten when the namespace changes).
    db_ino: u64,
}

impl SpackFs {
    /// Build the tree of a live catalog. `read_mode` is the wish; passthrough falls back to
    /// pread when the kernel or our privileges do not allow it.
    pub fn new(live: Arc<LiveCatalog>, rt: tokio::runtime::Handle, read_mode: ReadMode) -> Self {
        let inodes = Arc::new(Inodes::new());
        for (i, p) in live.packages().iter().enumerate() {
            if p.is_listed() {
                inodes.add_package(&p.rel_path, i);
            }
        }
        let db_ino = inodes.add_path(
            ".spack-db/index.json",
            Node::File {
                data: Arc::new(live.spack_db()),
                mode: 0o644,
            },
        );
        if inodes.child(ROOT, OsStr::new("bin")).is_none()
            || matches!(
                inodes.get(inodes.child(ROOT, OsStr::new("bin")).unwrap_or(0)),
                Some(Node::Dir { .. })
            )
        {
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
        SpackFs {
            live,
            inodes,
            rt,
            passthrough: AtomicBool::new(read_mode == ReadMode::Passthrough),
            handles: Mutex::new(HashMap::new()),
            dirs: Arc::new(Mutex::new(HashMap::new())),
            backing_ids: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid,
            gid,
            db_ino,
        }
    }

    /// What the catalog's observer needs from the file system, taken before it moves into
    /// the session (the kernel notifier comes from the session).
    pub fn observer_parts(&self) -> ObserverParts {
        ObserverParts {
            inodes: self.inodes.clone(),
            db_ino: self.db_ino,
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
            Node::Backed { path, .. } => {
                let m = std::fs::symlink_metadata(path).map_err(|e| io_errno(&e))?;
                backed_attr(ino, &m)
            }
        })
    }

    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Look `name` up in a ready package directory `dir` (a cache path).
    fn lookup_backed(
        inodes: &Inodes,
        dir: &Path,
        name: &OsStr,
        pkg: usize,
    ) -> Result<FileAttr, Errno> {
        let path = dir.join(name);
        let m = std::fs::symlink_metadata(&path).map_err(|e| io_errno(&e))?;
        let ino = inodes.backed(m.dev(), m.ino(), path, pkg);
        Ok(backed_attr(ino, &m))
    }

    /// Answer `reply` with `f` and the ready path of package `pkg`: now, or (parked on
    /// the runtime) once the package is ready; with its errno if it fails.
    fn with_ready<R, F>(&self, pkg: usize, reply: R, f: F)
    where
        R: ErrorReply + Send + 'static,
        F: FnOnce(&Path, R) + Send + 'static,
    {
        let Some(hash) = self.live.package(pkg).map(|p| p.node.hash.clone()) else {
            return reply.fail(Errno::ENOENT);
        };
        if let Some(path) = self.live.ready_path(&hash) {
            if !self.live.lost(pkg) {
                self.live.note_use(pkg);
                f(&path, reply);
                return;
            }
        }
        let live = self.live.clone();
        self.rt.spawn(async move {
            match live.ensure(&hash).await {
                Ok(path) => f(&path, reply),
                Err(failure) => reply.fail(Errno::from_i32(failure.errno)),
            }
        });
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

    fn package_xattrs(&self, pkg: usize) -> Vec<(String, Vec<u8>)> {
        let Some(p) = self.live.package(pkg) else {
            return Vec::new();
        };
        let state = self.live.state(&p.node.hash);
        let mut out = vec![
            ("user.spackfs.hash".into(), p.node.hash.clone().into_bytes()),
            (
                "user.spackfs.state".into(),
                state.name().as_bytes().to_vec(),
            ),
        ];
        if !matches!(state, State::Ready { .. }) {
            // Not fetched yet: the mirrors that list it, in the order they are asked.
            let listing = self.live.listing_mirrors(&p.node.hash);
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

    fn xattrs(&self, ino: u64) -> Vec<(String, Vec<u8>)> {
        match self.inodes.get(ino) {
            Some(Node::Package { pkg }) => self.package_xattrs(pkg),
            _ if ino == ROOT => self.root_xattrs(),
            _ => Vec::new(),
        }
    }
}

/// The file system's side of the catalog's changes: forgets evicted packages, adds and
/// removes package directories after an index refresh, and tells the kernel to drop what it
/// cached of them (entries, negative entries, directory listings, `.spack-db`).
pub struct ObserverParts {
    inodes: Arc<Inodes>,
    db_ino: u64,
}

impl ObserverParts {
    /// The observer for the live catalog, given the session's notifier.
    pub fn with_notifier(self, notifier: fuser::Notifier) -> Box<dyn Observer> {
        Box::new(KernelObserver {
            inodes: self.inodes,
            db_ino: self.db_ino,
            notifier,
        })
    }
}

struct KernelObserver {
    inodes: Arc<Inodes>,
    db_ino: u64,
    notifier: fuser::Notifier,
}

impl KernelObserver {
    fn forget_entry(&self, parent: u64, name: &OsStr) {
        let r1 = self.notifier.inval_entry(INodeNo(parent), name);
        // The parent's cached listing (FOPEN_CACHE_DIR) and attributes.
        let r2 = self.notifier.inval_inode(INodeNo(parent), 0, 0);
        tracing::debug!("kernel told to forget {name:?} in {parent}: {r1:?} {r2:?}");
    }
}

impl Observer for KernelObserver {
    fn evicted(&self, pkg: usize) {
        self.inodes.forget_package(pkg);
        if let Some((parent, name, ino)) = self.inodes.package_entry(pkg) {
            let r1 = self.notifier.inval_entry(INodeNo(parent), &name);
            let r2 = self.notifier.inval_inode(INodeNo(ino), 0, -1);
            tracing::debug!(
                "kernel told to forget {name:?} (parent {parent}, inode {ino}): {r1:?} {r2:?}"
            );
        }
    }

    fn changed(&self, change: &NamespaceChange, live: &LiveCatalog) {
        for &pkg in &change.removed {
            if let Some((parent, name, _)) = self.inodes.remove_package(pkg) {
                self.forget_entry(parent, &name);
            }
        }
        for &pkg in &change.added {
            let Some(p) = live.package(pkg) else { continue };
            if let Some((parent, name)) = self.inodes.add_package(&p.rel_path, pkg) {
                self.forget_entry(parent, &name);
            }
        }
        self.inodes.set_file(self.db_ino, Arc::new(live.spack_db()));
        let r = self.notifier.inval_inode(INodeNo(self.db_ino), 0, 0);
        tracing::debug!("kernel told to drop .spack-db/index.json: {r:?}");
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
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
fn listing(inodes: &Inodes, ino: u64, dir: &Path, pkg: usize) -> Result<inodes::Listing, Errno> {
    if let Some(l) = inodes.listing(ino) {
        return Ok(l);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io_errno(&e))? {
        let e = e.map_err(|e| io_errno(&e))?;
        let m = e.metadata().map_err(|e| io_errno(&e))?;
        let child = inodes.backed(m.dev(), m.ino(), e.path(), pkg);
        out.push((child, file_type(&m), e.file_name()));
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    let out = Arc::new(out);
    inodes.set_listing(ino, pkg, out.clone());
    Ok(out)
}

/// Answer a lookup. Names that do not exist get a negative entry with the long TTL, so
/// that the kernel remembers them: everything here is immutable (an evicted package's
/// entries are invalidated as a whole), and loaders probe many absent names.
fn answer_lookup(reply: ReplyEntry, found: Result<FileAttr, Errno>) {
    match found {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) if e == Errno::ENOENT => {
            let negative = FileAttr {
                ino: INodeNo(0),
                size: 0,
                blocks: 0,
                atime: UNIX_EPOCH,
                mtime: UNIX_EPOCH,
                ctime: UNIX_EPOCH,
                crtime: UNIX_EPOCH,
                kind: FileType::RegularFile,
                perm: 0,
                nlink: 0,
                uid: 0,
                gid: 0,
                rdev: 0,
                blksize: 0,
                flags: 0,
            };
            reply.entry(&TTL, &negative, Generation(0));
        }
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(values: Vec<(String, Vec<u8>)>, name: Option<&OsStr>, size: u32, reply: ReplyXattr) {
    let data = match name {
        Some(n) => match values
            .into_iter()
            .find(|(k, _)| k.as_bytes() == n.as_bytes())
        {
            Some((_, v)) => v,
            None => return reply.error(Errno::from_i32(libc::ENODATA)),
        },
        None => values
            .into_iter()
            .flat_map(|(k, _)| k.into_bytes().into_iter().chain([0]))
            .collect(),
    };
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(&data);
    }
}

impl Filesystem for SpackFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        if self.passthrough.load(Ordering::Relaxed) {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !ok {
                tracing::warn!("the kernel does not offer FUSE passthrough: reads go through the daemon (pread)");
                self.passthrough.store(false, Ordering::Relaxed);
            }
        }
        tracing::info!("read mode: {:?}", self.read_mode());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.inodes.get(parent.0) {
            Some(Node::Dir { .. }) => {
                let found = self
                    .inodes
                    .child(parent.0, name)
                    .ok_or(Errno::ENOENT)
                    .and_then(|ino| match self.inodes.get(ino) {
                        Some(n) => self.attr_of(ino, &n),
                        None => Err(Errno::ENOENT),
                    });
                answer_lookup(reply, found);
            }
            Some(Node::Package { pkg }) => {
                let inodes = self.inodes.clone();
                let live = self.live.clone();
                let name = name.to_os_string();
                self.with_ready(pkg, reply, move |dir, reply| {
                    let found = match Self::lookup_backed(&inodes, dir, &name, pkg) {
                        Err(e) if e == Errno::ENOENT && live.lost(pkg) => Err(Errno::ESTALE),
                        r => r,
                    };
                    answer_lookup(reply, found)
                });
            }
            Some(Node::Backed { path, pkg }) => {
                let found = Self::lookup_backed(&self.inodes, &path, name, pkg)
                    .map_err(|e| self.stale_or(pkg, e));
                answer_lookup(reply, found)
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inodes.get(ino.0) {
            Some(node) => match self.attr_of(ino.0, &node) {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => match node {
                    Node::Backed { pkg, .. } => reply.error(self.stale_or(pkg, e)),
                    _ => reply.error(e),
                },
            },
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inodes.get(ino.0) {
            Some(Node::Backed { path, pkg }) => match std::fs::read_link(&path) {
                Ok(t) => reply.data(t.as_os_str().as_bytes()),
                Err(e) => reply.error(self.stale_or(pkg, io_errno(&e))),
            },
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.inodes.get(ino.0) {
            Some(Node::File { data, .. }) => {
                let fh = self.next_fh();
                self.handles
                    .lock()
                    .unwrap()
                    .insert(fh, Handle::Memory(data));
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Some(Node::Backed { path, pkg }) => {
                // Open files keep their prefix from eviction.
                let pin = self.live.pin(pkg);
                self.live.note_use(pkg);
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        if let Some(k) = pin {
                            self.live.unpin(&k);
                        }
                        return reply.error(self.stale_or(pkg, io_errno(&e)));
                    }
                };
                let fh = self.next_fh();
                if self.passthrough.load(Ordering::Relaxed) {
                    // One backing id per inode, shared by all its open handles.
                    let mut ids = self.backing_ids.lock().unwrap();
                    let id = match ids.get(&ino.0).and_then(Weak::upgrade) {
                        Some(id) => Ok(id),
                        None => reply.open_backing(&file).map(Arc::new),
                    };
                    match id {
                        Ok(id) => {
                            ids.insert(ino.0, Arc::downgrade(&id));
                            drop(ids);
                            // Registered before the reply: the release may come at once,
                            // on another thread, and must find the handle (and its pin).
                            self.handles.lock().unwrap().insert(
                                fh,
                                Handle::Backed {
                                    file: Arc::new(file),
                                    _backing: Some(id.clone()),
                                    pin,
                                },
                            );
                            // The kernel refuses FOPEN_KEEP_CACHE with passthrough (EIO); the
                            // backing file's own page cache serves repeat reads anyway.
                            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("FUSE passthrough refused ({e}): reads go through the daemon (pread) from now on");
                            self.passthrough.store(false, Ordering::Relaxed);
                        }
                    }
                }
                self.handles.lock().unwrap().insert(
                    fh,
                    Handle::Backed {
                        file: Arc::new(file),
                        _backing: None,
                        pin,
                    },
                );
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handles = self.handles.lock().unwrap();
        match handles.get(&fh.0) {
            Some(Handle::Memory(data)) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
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
                        Err(e) => return reply.error(io_errno(&e)),
                    }
                }
                reply.data(&buf[..n]);
            }
            None => reply.error(Errno::EBADF),
        }
    }

    /// No ioctls (isatty() and friends get ENOTTY, quietly).
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(Handle::Backed { pin: Some(key), .. }) =
            self.handles.lock().unwrap().remove(&fh.0)
        {
            self.live.unpin(&key);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.next_fh();
        match self.inodes.get(ino.0) {
            Some(Node::Dir { children }) => {
                let entries = children
                    .iter()
                    .map(|(name, &child)| {
                        let kind = match self.inodes.get(child) {
                            Some(Node::File { .. }) => FileType::RegularFile,
                            _ => FileType::Directory,
                        };
                        (child, kind, name.clone())
                    })
                    .collect();
                self.dirs.lock().unwrap().insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), DIR_FLAGS);
            }
            Some(Node::Backed { path, pkg }) => match listing(&self.inodes, ino.0, &path, pkg) {
                Ok(entries) => {
                    self.dirs.lock().unwrap().insert(fh, entries);
                    reply.opened(FileHandle(fh), DIR_FLAGS);
                }
                Err(e) => reply.error(self.stale_or(pkg, e)),
            },
            Some(Node::Package { pkg }) => {
                let inodes = self.inodes.clone();
                let dirs = self.dirs.clone();
                self.with_ready(pkg, reply, move |dir, reply| {
                    match listing(&inodes, ino.0, dir, pkg) {
                        Ok(entries) => {
                            dirs.lock().unwrap().insert(fh, entries);
                            reply.opened(FileHandle(fh), DIR_FLAGS);
                        }
                        Err(e) => reply.error(e),
                    }
                });
            }
            Some(Node::File { .. }) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.dirs.lock().unwrap().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let mut all = vec![
            (ino.0, FileType::Directory, std::ffi::OsString::from(".")),
            (ino.0, FileType::Directory, std::ffi::OsString::from("..")),
        ];
        all.extend(entries.iter().cloned());
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path = std::ffi::CString::new(self.live.store().root().as_os_str().as_bytes())
            .unwrap_or_default();
        // SAFETY: `path` is a valid C string and `st` a properly sized out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above; statvfs writes only into `st`.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(Errno::EIO);
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            255,
            st.f_frsize as u32,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(self.xattrs(ino.0), Some(name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.xattrs(ino.0), None, size, reply);
    }
}
