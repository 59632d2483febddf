//! The file writers of an extraction: the untar thread hands each small regular file, its
//! bytes read already, to writer threads that create it, write it, give it its times and
//! digest it. File creation (system calls, the kernel's copy) so runs beside the untar
//! and inflate threads instead of after each member on the untar thread. Files go over in
//! batches (one wake-up of a writer for many small files), a bounded queue keeps the bytes
//! in flight few, and the buffers the bytes were read into go back to [`super::buffers`] to
//! be filled again (no allocation, zeroing or page fault per file once the pipeline runs).
//! Large files are written by the untar thread itself, streamed.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Scope;

use crate::buildcache::checksum::{FileDigest, FileHasher};

/// Files up to this size are handed to the writers.
pub const MAX_HANDED: u64 = 256 * 1024;
/// A batch is sent once it holds this many bytes...
const BATCH_BYTES: usize = 256 * 1024;
/// ... or this many files.
const BATCH_FILES: usize = 32;
/// Batches queued at most: with the batch being filled, at most about
/// `(QUEUED + 2) × (BATCH_BYTES + MAX_HANDED)` bytes (5 MiB) in flight per extraction.
const QUEUED: usize = 3;

/// One file to write.
struct Job {
    /// Its number among the members.
    index: usize,
    dest: PathBuf,
    /// Its bytes: the first `len` of the buffer.
    data: Vec<u8>,
    len: usize,
    mode: u32,
    digest: bool,
}

/// What became of a file: its digest (when asked), or the error and the file.
type Outcome = (usize, Result<Option<FileDigest>, (PathBuf, std::io::Error)>);

/// What a writer sends back for a batch.
type Report = Vec<Outcome>;

/// The writer threads of one extraction.
pub struct Writers {
    jobs: Option<SyncSender<Vec<Job>>>,
    reports: Receiver<Report>,
    /// The batch being filled, and its bytes.
    batch: Vec<Job>,
    batch_bytes: usize,
    /// Files handed over and not reported yet.
    pending: usize,
    /// Digests of the files written, by member number.
    done: Vec<(usize, Option<FileDigest>)>,
    /// The failure of the earliest member that failed.
    failed: Option<(usize, PathBuf, std::io::Error)>,
}

impl Writers {
    /// Start `threads` writers in `scope` (none: [`Writers::enabled`] is false).
    pub fn start<'scope>(scope: &'scope Scope<'scope, '_>, threads: usize) -> Writers {
        let (jobs, queue) = sync_channel::<Vec<Job>>(QUEUED);
        let (report, reports) = channel();
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for _ in 0..threads {
            let (queue, report): (_, Sender<Report>) = (queue.clone(), report.clone());
            let spawned = std::thread::Builder::new()
                .name("spackfs-write".into())
                .spawn_scoped(scope, move || loop {
                    let batch = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok(batch) = batch else { return };
                    let mut outcomes = Vec::with_capacity(batch.len());
                    for job in batch {
                        let written = write_file(&job).map_err(|e| (job.dest, e));
                        outcomes.push((job.index, written));
                        super::buffers::give(job.data);
                    }
                    if report.send(outcomes).is_err() {
                        return;
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        Writers {
            jobs: (started > 0).then_some(jobs),
            reports,
            batch: Vec::new(),
            batch_bytes: 0,
            pending: 0,
            done: Vec::new(),
            failed: None,
        }
    }

    /// Are there writers to hand files to?
    pub fn enabled(&self) -> bool {
        self.jobs.is_some()
    }

    /// Hand file `index` over: created at `dest` with the first `len` bytes of `data` (a
    /// [`super::buffers::take`]), `mode`. Waits while the queue is full. Returns the failure of
    /// an earlier file, if one was reported.
    pub fn write(
        &mut self,
        index: usize,
        dest: PathBuf,
        data: Vec<u8>,
        len: usize,
        mode: u32,
        digest: bool,
    ) -> Result<(), (PathBuf, std::io::Error)> {
        self.collect(false);
        self.check()?;
        if self.jobs.is_none() {
            return Err((dest, std::io::Error::other("no file writer is running")));
        }
        let len = len.min(data.len());
        self.batch.push(Job {
            index,
            dest,
            data,
            len,
            mode,
            digest,
        });
        self.batch_bytes += len;
        self.pending += 1;
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.send_batch();
        }
        self.check()
    }

    /// Send the batch being filled; if no writer takes it, its first file is the failure.
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(batch).map_err(|e| e.0),
            None => Err(batch),
        };
        if let Err(batch) = sent {
            self.pending -= batch.len();
            if let Some(first) = batch.into_iter().next() {
                let e = std::io::Error::other("the file writers stopped");
                self.fail(first.index, first.dest, e);
            }
        }
    }

    /// Wait until every file handed over is written (before a hard link to one of them).
    pub fn wait(&mut self) -> Result<(), (PathBuf, std::io::Error)> {
        self.send_batch();
        while self.pending > 0 && self.collect(true) {}
        self.check()
    }

    /// Stop the writers once they are done, and return the digests of the files they
    /// wrote, by member number; or the failure of the earliest file that failed, if it came
    /// before member `before` (the untar stopped there with an error of its own).
    #[allow(clippy::type_complexity)]
    pub fn finish(
        mut self,
        before: usize,
    ) -> Result<Vec<(usize, Option<FileDigest>)>, (usize, PathBuf, std::io::Error)> {
        self.send_batch();
        self.jobs = None;
        while self.pending > 0 && self.collect(true) {}
        match self.failed.take() {
            Some(f) if f.0 < before => Err(f),
            _ => Ok(std::mem::take(&mut self.done)),
        }
    }

    /// Take the reports that came (waiting for one when `block`); false when no more can.
    fn collect(&mut self, block: bool) -> bool {
        loop {
            let next = if block {
                self.reports.recv().ok()
            } else {
                self.reports.try_recv().ok()
            };
            let Some(outcomes) = next else {
                return false;
            };
            for (index, r) in outcomes {
                self.pending -= 1;
                match r {
                    Ok(d) => self.done.push((index, d)),
                    Err((dest, e)) => self.fail(index, dest, e),
                }
            }
            if block {
                return true;
            }
        }
    }

    /// Keep the failure of file `index` if no earlier file failed.
    fn fail(&mut self, index: usize, dest: PathBuf, e: std::io::Error) {
        if self.failed.as_ref().is_none_or(|f| index < f.0) {
            self.failed = Some((index, dest, e));
        }
    }

    fn check(&self) -> Result<(), (PathBuf, std::io::Error)> {
        match &self.failed {
            Some((_, dest, e)) => Err((dest.clone(), std::io::Error::new(e.kind(), e.to_string()))),
            None => Ok(()),
        }
    }
}

/// Create, write and close one file, with its final mode (plus owner read/write, for
/// relocation) and Spack's epoch times.
fn write_file(job: &Job) -> std::io::Result<Option<FileDigest>> {
    let mode = job.mode | 0o600;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&job.dest)?;
    let data = &job.data[..job.len];
    f.write_all(data)?;
    set_mode_and_times(&f, mode)?;
    Ok(job.digest.then(|| {
        let mut h = FileHasher::new();
        h.update(data);
        h.finish()
    }))
}

/// Give a new file `mode` (unless the creation mask left it whole) and Spack's epoch times.
pub fn set_mode_and_times(f: &std::fs::File, mode: u32) -> std::io::Result<()> {
    if umask().is_none_or(|m| mode & m != 0) {
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    f.set_times(super::extract::epoch_times())
}

/// The process's file mode creation mask, read once from `/proc/self/status` (asking
/// umask(2) would change it for a moment under the other threads); `None` when unknown.
fn umask() -> Option<u32> {
    static MASK: OnceLock<Option<u32>> = OnceLock::new();
    *MASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files handed over are all written, with their modes and digests; a failure (here:
    /// a file that exists) is reported with the file, and only when it came before the
    /// member the untar stopped at.
    #[test]
    fn files_are_written_and_failures_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("taken"), b"old").unwrap();
        std::thread::scope(|scope| {
            let mut w = Writers::start(scope, 2);
            assert!(w.enabled());
            for i in 0..100 {
                let text = format!("file {i}").repeat(i * 97 + 1);
                let mut data = super::super::buffers::take(text.len());
                data[..text.len()].copy_from_slice(text.as_bytes());
                w.write(
                    i,
                    dir.path().join(format!("f{i}")),
                    data,
                    text.len(),
                    0o750,
                    true,
                )
                .unwrap();
            }
            w.wait().unwrap();
            let done = w.finish(usize::MAX).unwrap();
            assert_eq!(done.len(), 100);
            for (i, d) in done {
                let path = dir.path().join(format!("f{i}"));
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(bytes, format!("file {i}").repeat(i * 97 + 1).into_bytes());
                assert_eq!(d, Some(FileDigest::of(&bytes)));
                let meta = std::fs::metadata(&path).unwrap();
                assert_eq!(meta.permissions().mode() & 0o777, 0o750);
                assert_eq!(meta.modified().unwrap(), std::time::SystemTime::UNIX_EPOCH);
            }
            // File `index` over one that exists, with a writer of its own.
            let taken = |index| {
                let mut w = Writers::start(scope, 1);
                let dest = dir.path().join("taken");
                w.write(index, dest, b"new".to_vec(), 3, 0o644, false)
                    .unwrap();
                w
            };
            let (index, path, e) = taken(7).finish(8).unwrap_err();
            assert_eq!((index, path), (7, dir.path().join("taken")));
            assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
            assert!(
                taken(9).finish(9).is_ok(),
                "a failure after the untar's own is not it"
            );
        });
        assert_eq!(std::fs::read(dir.path().join("taken")).unwrap(), b"old");
    }
}
