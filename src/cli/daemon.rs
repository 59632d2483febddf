//! Daemonising the mount helper (`mount -t fuse.spackfs`): the process forks before any
//! thread exists; the child detaches (`setsid`, stdin and stdout to /dev/null), mounts,
//! and reports through a pipe once the mount answers (or why it failed); the parent waits
//! for that report, bounded, and exits 0 or non-zero with the child's reason on stderr, so
//! that mount(8) returns only when the mount serves.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use spackfs::control::lifecycle::ParentReport;

/// How long the parent waits for the mount to answer.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The child's end of the pipe: one report, then the child's stderr is redirected.
pub(crate) struct Report {
    pipe: File,
    /// Where stderr goes once the parent has exited (the log file, else /dev/null).
    stderr_to: Option<File>,
}

impl Report {
    fn send(mut self, msg: &str) {
        // The parent may have given up already (timeout): nothing more to tell then.
        let _ = self.pipe.write_all(msg.as_bytes());
        drop(self.pipe);
        let target = self
            .stderr_to
            .take()
            .or_else(|| File::options().write(true).open("/dev/null").ok());
        if let Some(f) = target {
            // SAFETY: dup2 of two valid descriptors; fd 2 is replaced atomically.
            unsafe { libc::dup2(f.as_raw_fd(), 2) };
        }
    }
}

impl ParentReport for Report {
    fn ready(self: Box<Self>) {
        self.send("OK\n");
    }

    fn failed(self: Box<Self>, why: &str) {
        self.send(&format!("ERR {why}"));
    }
}

/// The outcome of [`fork`] in each process.
pub(crate) enum Forked {
    /// The caller is the parent; exit with this code.
    Parent(ExitCode),
    /// The caller is the detached child; mount, then use the report.
    Child(Report),
}

/// The number of threads of this process.
fn threads() -> Option<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Fork: the parent waits up to `timeout` for the child's report; `log` is named in the
/// parent's messages and receives the child's stderr once it is ready.
pub(crate) fn fork(timeout: Duration, log: Option<(PathBuf, File)>) -> Result<Forked> {
    if threads().is_some_and(|n| n != 1) {
        bail!("internal error: the mount helper must fork before any thread exists");
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe for the mount helper");
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process has one thread (checked above; main calls this before the
    // logging, the runtime or anything else could start one), so the child starts in a
    // consistent state.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork of the mount helper");
    }
    let log_path = log.as_ref().map(|(p, _)| p.clone());
    if pid > 0 {
        drop(write_end);
        return Ok(Forked::Parent(wait_for_child(
            pid,
            File::from(read_end),
            timeout,
            log_path,
        )));
    }
    drop(read_end);
    // SAFETY: setsid has no memory effects; it fails only for a group leader, which a
    // freshly forked child is not.
    unsafe { libc::setsid() };
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("/dev/null")?;
    for fd in [0, 1] {
        // SAFETY: dup2 of valid descriptors onto stdin/stdout.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    Ok(Forked::Child(Report {
        pipe: File::from(write_end),
        stderr_to: log.map(|(_, f)| f),
    }))
}

/// The parent's side: read the child's report, bounded by `timeout`.
fn wait_for_child(pid: i32, mut pipe: File, timeout: Duration, log: Option<PathBuf>) -> ExitCode {
    let start = Instant::now();
    let mut report = Vec::new();
    let mut buf = [0u8; 4096];
    let log_note = log.map_or_else(String::new, |p| format!("; its log: {}", p.display()));
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            // SAFETY: kill(2) of our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            eprintln!(
                "spackfs: the mount did not answer within {}s: stopped its daemon (pid {pid}){log_note}",
                timeout.as_secs()
            );
            return ExitCode::FAILURE;
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, as the count says.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!(
                "spackfs: waiting for the mount: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::FAILURE;
        }
        if r == 0 {
            continue;
        }
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => report.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("spackfs: waiting for the mount: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let report = String::from_utf8_lossy(&report);
    if report == "OK\n" {
        return ExitCode::SUCCESS;
    }
    if let Some(why) = report.strip_prefix("ERR ") {
        eprintln!("spackfs: {why}");
        return ExitCode::FAILURE;
    }
    // No report: the child died before it could tell.
    let mut status = 0;
    let mut reaped = false;
    let since = Instant::now();
    while !reaped && since.elapsed() < Duration::from_secs(2) {
        // SAFETY: waitpid of our own child with a valid status pointer.
        reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
        if !reaped {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let how = if !reaped {
        "closed its pipe".to_string()
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    };
    eprintln!("spackfs: the mount daemon (pid {pid}) {how} before the mount answered{log_note}");
    ExitCode::FAILURE
}
