//! Running `spackfs mount` as a child process for the FUSE tests: a guard that always
//! unmounts (SIGTERM, then SIGKILL and `umount -l`), a watchdog that kills a daemon that
//! hangs so that no test blocks forever on the mount, the daemon's log, and the extended
//! attributes the mount publishes.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    expected_greet_output, path_str, run_program, strip_ansi, FixtureCache, GREET_PROGRAMS,
};

/// How long a daemon may live before the watchdog kills it (a hung mount must fail the
/// test, not block it).
pub const WATCHDOG: Duration = Duration::from_secs(60);
/// Proxy settings a test's environment may carry: removed from every daemon's.
pub const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// How long a mount may take to appear.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Is `path` a mount point (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    mount_count(path) > 0
}

/// How many mounts are stacked on `path`.
pub fn mount_count(path: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path_str(path);
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| unescape_mountinfo(m) == want)
        .count()
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Is `path` the mount of a dead FUSE daemon ("Transport endpoint is not connected")?
/// Asked with `opendir`, which always reaches the daemon: `stat` may be answered from the
/// kernel's attribute cache even after the daemon died.
pub fn is_stale(path: &Path) -> bool {
    matches!(std::fs::read_dir(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// `umount -l path` (detach even when busy).
pub fn lazy_unmount(path: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// An extended attribute of `path`.
pub fn xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let n = CString::new(name).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// An extended attribute as text; panics when it is absent.
#[track_caller]
pub fn xattr_str(path: &Path, name: &str) -> String {
    match xattr(path, name) {
        Ok(v) => String::from_utf8(v).expect("xattr is UTF-8"),
        Err(e) => panic!("getxattr {} {name}: {e}", path.display()),
    }
}

/// A counter of the mount root (`user.spackfs.metrics.<name>`).
#[track_caller]
pub fn metric(mountpoint: &Path, name: &str) -> u64 {
    let v = xattr_str(mountpoint, &format!("user.spackfs.metrics.{name}"));
    v.trim()
        .parse()
        .unwrap_or_else(|_| panic!("metric {name} is not a number: {v:?}"))
}

/// `user.spackfs.state` of a package directory.
#[track_caller]
pub fn state(pkg_dir: &Path) -> String {
    xattr_str(pkg_dir, "user.spackfs.state")
}

/// A temporary directory holding an empty mount point `mnt/` and a cache path `cache/`;
/// whatever is still mounted on `mnt` is detached before the directory is removed.
pub struct MountDirs {
    pub mnt: PathBuf,
    pub cache: PathBuf,
    pub tmp: tempfile::TempDir,
}

impl MountDirs {
    pub fn new() -> Self {
        let tmp = super::short_tempdir();
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        MountDirs {
            mnt,
            cache: tmp.path().join("cache"),
            tmp,
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
}

impl Default for MountDirs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MountDirs {
    fn drop(&mut self) {
        for _ in 0..4 {
            if !is_mounted(&self.mnt) {
                break;
            }
            lazy_unmount(&self.mnt);
        }
    }
}

struct Inner {
    child: Mutex<Child>,
    watchdog_fired: AtomicBool,
}

/// A running (or finished) `spackfs mount` child. Dropping it stops the daemon (SIGTERM,
/// up to 5 s, then SIGKILL) and detaches its mount if it is still there.
pub struct Daemon {
    inner: Arc<Inner>,
    pub mountpoint: PathBuf,
    pub log_path: PathBuf,
    pub cmdline: String,
    _log_dir: tempfile::TempDir,
    /// The mount became ready: it is ours to clean up.
    ours: bool,
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Daemon {
    /// Start `spackfs mount MIRROR MOUNTPOINT --cache-dir CACHE ARGS...` without waiting.
    pub fn spawn(mirror: &Path, mountpoint: &Path, cache: &Path, args: &[&str]) -> Daemon {
        Daemon::spawn_with(&[path_str(mirror)], mountpoint, cache, args, &[])
    }

    /// Start `spackfs mount MIRRORS... MOUNTPOINT --cache-dir CACHE ARGS...` with extra
    /// environment variables (`HTTP_PROXY`…; the proxy variables of the test's own
    /// environment are removed) without waiting.
    pub fn spawn_with(
        mirrors: &[&str],
        mountpoint: &Path,
        cache: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let log_dir = tempfile::Builder::new()
            .prefix("sfslog")
            .tempdir_in("/tmp")
            .expect("log dir");
        let log_path = log_dir.path().join("spackfs-mount.log");
        let log = File::create(&log_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spackfs"));
        cmd.arg("mount")
            .args(mirrors)
            .arg(mountpoint)
            .arg("--cache-dir")
            .arg(cache)
            .args(args)
            .env_remove("LD_LIBRARY_PATH");
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        cmd.envs(env.iter().copied())
            .env("NO_COLOR", "1")
            // SPACKFS_TEST_LOG (e.g. `debug`) sets the daemons' log level when hunting a bug.
            .env(
                "SPACKFS_LOG",
                std::env::var("SPACKFS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let cmdline = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
        let inner = Arc::new(Inner {
            child: Mutex::new(child),
            watchdog_fired: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel::<()>();
        let (w_inner, w_mnt) = (inner.clone(), mountpoint.to_path_buf());
        let handle = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
                let mut child = w_inner.child.lock().unwrap();
                if child.try_wait().ok().flatten().is_none() {
                    w_inner.watchdog_fired.store(true, Ordering::SeqCst);
                    eprintln!(
                        "WATCHDOG: spackfs daemon for {} still running after {WATCHDOG:?}: killing it",
                        w_mnt.display()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    lazy_unmount(&w_mnt);
                }
            }
        });
        Daemon {
            inner,
            mountpoint: mountpoint.to_path_buf(),
            log_path,
            cmdline,
            _log_dir: log_dir,
            ours: false,
            watchdog: Some((tx, handle)),
        }
    }

    /// Start the daemon and wait until its mount serves.
    #[track_caller]
    pub fn mount(mirror: &Path, mountpoint: &Path, cache: &Path, args: &[&str]) -> Daemon {
        let mut d = Daemon::spawn(mirror, mountpoint, cache, args);
        d.wait_ready();
        d
    }

    /// [`Daemon::spawn_with`], then wait until the mount serves.
    #[track_caller]
    pub fn mount_with(
        mirrors: &[&str],
        mountpoint: &Path,
        cache: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut d = Daemon::spawn_with(mirrors, mountpoint, cache, args, env);
        d.wait_ready();
        d
    }

    /// Wait until the mount point is mounted and lists `.spack-db` (a stale mount of a
    /// killed daemon at the same place does not count: `opendir` always reaches the daemon,
    /// where a `stat` could be answered from the kernel's cache).
    #[track_caller]
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        let lists_db = |p: &Path| {
            std::fs::read_dir(p).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.file_name() == std::ffi::OsStr::new(".spack-db"))
            })
        };
        loop {
            if let Some(status) = self.try_wait() {
                panic!("spackfs mount exited ({status}) before the mount was ready\n{self}");
            }
            if is_mounted(&self.mountpoint) && lists_db(&self.mountpoint) {
                self.ours = true;
                return;
            }
            if start.elapsed() > READY_TIMEOUT {
                panic!(
                    "{} not mounted after {READY_TIMEOUT:?}\n{self}",
                    self.mountpoint.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.child.lock().unwrap().id()
    }

    /// The exit status, if the daemon has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.inner.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Wait up to `timeout` for the daemon to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `sig` to the daemon (unless it has exited).
    pub fn signal(&self, sig: i32) {
        let mut child = self.inner.child.lock().unwrap();
        // Only a child not yet reaped: its pid cannot have been reused.
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// SIGKILL the daemon and reap it; its mount stays behind, stale.
    pub fn kill9(&self) -> ExitStatus {
        let mut child = self.inner.child.lock().unwrap();
        let _ = child.kill();
        child.wait().expect("wait for the killed daemon")
    }

    /// Did the watchdog have to kill the daemon?
    pub fn watchdog_fired(&self) -> bool {
        self.inner.watchdog_fired.load(Ordering::SeqCst)
    }

    /// The daemon's log so far (stderr and stdout), ANSI codes removed.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// Log lines at ERROR level.
    pub fn error_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }

    /// Log lines that contain every needle.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }
}

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = self.log();
        // fuser's multi-line "[Not Implemented] ioctl" warnings (isatty() on a file of the
        // mount) would drown the rest.
        let is_noise = |l: &&str| {
            l.contains("[Not Implemented] ioctl")
                || l.starts_with("    0x")
                || l.starts_with("), fh:")
        };
        let all: Vec<&str> = log.lines().collect();
        let lines: Vec<&str> = all.iter().filter(|l| !is_noise(l)).copied().collect();
        let tail = &lines[lines.len().saturating_sub(120)..];
        write!(
            f,
            "$ {}\nwatchdog fired: {}\n--- daemon log ({} lines, {} of ioctl warnings left out, last {} shown) ---\n{}",
            self.cmdline,
            self.watchdog_fired(),
            all.len(),
            all.len() - lines.len(),
            tail.len(),
            tail.join("\n")
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.watchdog.take() {
            drop(tx);
            let _ = handle.join();
        }
        {
            let mut child = self.inner.child.lock().unwrap();
            if child.try_wait().ok().flatten().is_none() {
                // SAFETY: kill(2) on our own, not yet reaped, child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let start = Instant::now();
                while child.try_wait().ok().flatten().is_none()
                    && start.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if child.try_wait().ok().flatten().is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        for _ in 0..4 {
            if is_mounted(&self.mountpoint) && (self.ours || is_stale(&self.mountpoint)) {
                lazy_unmount(&self.mountpoint);
            } else {
                break;
            }
        }
    }
}

/// The errno of an I/O result that must have failed.
#[track_caller]
pub fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str, d: &Daemon) -> i32 {
    match r {
        Ok(v) => panic!("{what} succeeded ({v:?}) but must fail\n{d}"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: no errno in {e}")),
    }
}

/// The five greet entry points of fixture cache `cache` print the greeting with the
/// prefixes under `root`.
#[track_caller]
pub fn check_greet_programs(cache: &FixtureCache, root: &Path, d: &Daemon) {
    let greet = cache.greet_prefix(root);
    let expected = expected_greet_output(&greet, &cache.libgreet_prefix(root));
    for program in GREET_PROGRAMS {
        let run = run_program(greet.join(program), [] as [&str; 0]);
        assert_eq!(run.code, Some(0), "{program} failed:\n{run}\n{d}");
        assert_eq!(run.stdout, expected, "output of {program}:\n{run}\n{d}");
    }
}
