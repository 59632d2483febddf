//! The fuser adapter: decodes kernel requests, calls [`FsCore`], sends the replies. A
//! request whose answer must wait (a lookup or opendir inside a package being
//! materialised) is polled once on the FUSE thread and, when it is not ready, parked on
//! the tokio runtime with its reply, so FUSE threads never wait on the network. Everything
//! is read-only and immutable, so entries and attributes carry long TTLs; passthrough
//! backing ids (which need the reply object) live here too.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use futures::FutureExt;

use super::core::{FsCore, KernelCache, ObserverParts, Opened, ReadMode};
use crate::catalog::live::LiveCatalog;

/// Entries and attributes never change while mounted.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Directory contents never change: let the kernel cache them.
const DIR_FLAGS: FopenFlags = FopenFlags::FOPEN_CACHE_DIR.union(FopenFlags::FOPEN_KEEP_CACHE);

/// The file system as fuser sees it.
pub struct SpackFs {
    core: Arc<FsCore>,
    rt: tokio::runtime::Handle,
    /// One passthrough backing id per inode, shared by its open handles.
    backing_ids: Mutex<HashMap<u64, Weak<BackingId>>>,
}

impl SpackFs {
    /// Build the tree of a live catalog; parked requests run on `rt`. `read_mode` is the
    /// wish; passthrough falls back to pread when the kernel or our privileges refuse it.
    pub fn new(live: Arc<LiveCatalog>, rt: tokio::runtime::Handle, read_mode: ReadMode) -> Self {
        SpackFs {
            core: Arc::new(FsCore::new(live, read_mode)),
            rt,
            backing_ids: Mutex::new(HashMap::new()),
        }
    }

    /// What the catalog's observer needs, taken before the file system moves into the
    /// session (the kernel notifier comes from the session).
    pub fn observer_parts(&self) -> ObserverParts {
        self.core.observer_parts()
    }

    /// The read mode in use.
    pub fn read_mode(&self) -> ReadMode {
        self.core.read_mode()
    }

    /// The logic behind the adapter (shared), for the mount's status.
    pub fn core(&self) -> Arc<FsCore> {
        self.core.clone()
    }

    /// Answer `reply` with `answer` of `work`: at once when it is ready after one poll on
    /// this thread, else from a task on the runtime when it is.
    fn respond<T, R, W, F>(&self, work: W, reply: R, answer: fn(R, Result<T, Errno>))
    where
        T: Send + 'static,
        R: Send + 'static,
        W: FnOnce(Arc<FsCore>) -> F,
        F: Future<Output = Result<T, Errno>> + Send + 'static,
    {
        // The work may start tasks (a materialisation): it runs in the runtime's context.
        let _enter = self.rt.enter();
        let mut fut = Box::pin(work(self.core.clone()));
        match (&mut fut).now_or_never() {
            Some(result) => answer(reply, result),
            None => {
                self.rt.spawn(async move { answer(reply, fut.await) });
            }
        }
    }
}

/// What the kernel is to forget.
enum Note {
    Entry(u64, std::ffi::OsString),
    Inode(u64),
    /// Answered once every note before it was sent to the kernel.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The kernel's caches, through the session's notifier, from a thread of its own: an
/// invalidation waits for the kernel's lock on the directory, which a process in the middle
/// of a lookup there holds until a FUSE thread answers it — so it must never be sent from
/// a FUSE thread, nor while holding a lock a FUSE thread may wait for (the cache's, during
/// an eviction). Notes are sent in order.
pub struct Notifier {
    tx: std::sync::mpsc::Sender<Note>,
}

impl Notifier {
    pub fn new(notifier: fuser::Notifier) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Note>();
        std::thread::Builder::new()
            .name("spackfs-notify".into())
            .spawn(move || {
                for note in rx {
                    match note {
                        Note::Entry(parent, name) => {
                            let r = notifier.inval_entry(INodeNo(parent), &name);
                            tracing::debug!("kernel told to forget {name:?} in {parent}: {r:?}");
                        }
                        Note::Inode(ino) => {
                            let r = notifier.inval_inode(INodeNo(ino), 0, 0);
                            tracing::debug!("kernel told to drop inode {ino}: {r:?}");
                        }
                        Note::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .expect("notifier thread");
        Notifier { tx }
    }

    fn send(&self, note: Note) {
        // The thread ends only with the session: a closed channel means nothing to tell.
        let _ = self.tx.send(note);
    }
}

impl KernelCache for Notifier {
    fn forget_entry(&self, parent: u64, name: &OsStr) {
        self.send(Note::Entry(parent, name.to_os_string()));
    }

    fn forget_inode(&self, ino: u64) {
        self.send(Note::Inode(ino));
    }

    fn flush(&self, limit: std::time::Duration) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Note::Flush(tx));
        if rx.recv_timeout(limit).is_err() {
            tracing::debug!("the kernel has not forgotten the entries within {limit:?}");
        }
    }
}

/// Answer a lookup. Names that do not exist get a negative entry with the long TTL, so
/// that the kernel remembers them: everything here is immutable (an evicted package's
/// entries are invalidated as a whole, new packages' names too), and loaders probe many
/// absent names.
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

fn answer_opendir(reply: ReplyOpen, opened: Result<u64, Errno>) {
    match opened {
        Ok(fh) => reply.opened(FileHandle(fh), DIR_FLAGS),
        Err(e) => reply.error(e),
    }
}

/// Answer an xattr request: the size when asked for it, the value when it fits.
fn answer_xattr(reply: ReplyXattr, data: Result<Vec<u8>, Errno>, size: u32) {
    match data {
        Err(e) => reply.error(e),
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(data) => reply.data(&data),
    }
}

impl Filesystem for SpackFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Listings carry the entries' attributes where the kernel finds they pay: in the
        // first reply of a listing, and in the next ones of a directory whose entries are
        // being looked up (`find`, `du`). Always (without AUTO), a plain `ls` of 40,000
        // packages took 2.3 times as long (the kernel makes an inode per entry) while
        // `ls -l` stayed bound by its three getxattr requests per entry.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(InitFlags::FUSE_READDIRPLUS_AUTO);
        if self.core.read_mode() == ReadMode::Passthrough {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !ok {
                tracing::warn!("the kernel does not offer FUSE passthrough: reads go through the daemon (pread)");
                self.core.disable_passthrough();
            }
        }
        tracing::info!("read mode: {:?}", self.core.read_mode());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Lookup);
        let name = name.to_os_string();
        self.respond(
            move |core| async move { core.lookup(parent.0, &name).await },
            reply,
            answer_lookup,
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Getattr);
        match self.core.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Readlink);
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Open);
        let (fh, opened) = match self.core.open(ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        let file = match opened {
            Opened::Memory => {
                return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Opened::Backed(file) => file,
        };
        if self.core.read_mode() == ReadMode::Passthrough {
            let mut ids = self.backing_ids.lock().unwrap();
            let id = match ids.get(&ino.0).and_then(Weak::upgrade) {
                Some(id) => Ok(id),
                None => reply.open_backing(file.as_ref()).map(Arc::new),
            };
            match id {
                Ok(id) => {
                    ids.insert(ino.0, Arc::downgrade(&id));
                    drop(ids);
                    self.core.keep_with(fh, id.clone());
                    // The kernel refuses FOPEN_KEEP_CACHE with passthrough (EIO); the
                    // backing file's own page cache serves repeat reads anyway.
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                    return;
                }
                Err(e) => {
                    tracing::warn!("FUSE passthrough refused ({e}): reads go through the daemon (pread) from now on");
                    self.core.disable_passthrough();
                }
            }
        }
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
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
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Read);
        match self.core.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
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
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Release);
        self.core.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Opendir);
        self.respond(
            move |core| async move { core.opendir(ino.0).await },
            reply,
            answer_opendir,
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Readdir);
        let listed = self
            .core
            .readdir(ino.0, fh.0, offset, |child, kind, name, next| {
                reply.add(INodeNo(child), next, kind, name)
            });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Readdir);
        let listed =
            self.core
                .readdir_plus(ino.0, fh.0, offset, |_kind, name, next, attr, cached| {
                    let ttl = if cached { TTL } else { Duration::ZERO };
                    reply.add(attr.ino, next, name, &ttl, attr, Generation(0))
                });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Releasedir);
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Statfs);
        match self.core.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, 255, s.frsize,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Getxattr);
        answer_xattr(reply, self.core.getxattr(ino.0, name), size);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        crate::metrics::global().fuse_op(crate::metrics::FuseOp::Listxattr);
        answer_xattr(reply, Ok(self.core.listxattr(ino.0)), size);
    }
}
