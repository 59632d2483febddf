//! Mounting: checks of the mount point (empty, not already mounted, stale mounts of a killed
//! daemon cleaned up), the fuser session (always read-only, `nodev`, `nosuid`), the check that
//! a new mount answers through the kernel, a clean unmount, and the hints that turn a refused
//! mount (no `/dev/fuse`, no `fusermount3`, `allow_other` not permitted) into advice.

use std::path::{Path, PathBuf};

use fuser::{Config, MountOption, SessionACL};

use super::SpackFs;

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {0} does not exist or is not a directory")]
    NotADirectory(PathBuf),
    #[error("mount point {0} is not empty")]
    NotEmpty(PathBuf),
    #[error("mount point {0} is already mounted (by a live file system)")]
    AlreadyMounted(PathBuf),
    #[error("cannot clean up the stale mount at {path}: {source}")]
    Stale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The cause is shown inline, before the hint, and is not also a `source` (which
    /// would repeat it after the hint in `{:#}` chains).
    #[error("cannot mount at {path}: {cause}{hint}")]
    Mount {
        path: PathBuf,
        cause: std::io::Error,
        hint: String,
    },
    #[error("the mount at {path} does not answer after {waited:?}: {last}")]
    NotAnswering {
        path: PathBuf,
        waited: std::time::Duration,
        last: String,
    },
}

/// Who may use the mount besides the user who made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Access {
    /// Everyone when mounted by root, else only the mounting user.
    #[default]
    Default,
    /// Every user (`allow_other`: non-root needs `user_allow_other` in /etc/fuse.conf).
    Other,
    /// The mounting user and root (`allow_root`).
    Root,
}

/// `f_type` of a FUSE file system in `statfs(2)`.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Does the FUSE file system at `path` answer? Asked through the kernel: `statfs` must show
/// a FUSE file system (not the directory beneath) and listing its root must work, which
/// needs the daemon to have answered the kernel's INIT. Call it from a thread that is not
/// one of the session's own (it waits for them).
pub fn answers(path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: a zeroed statfs is a valid value of a plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 != FUSE_SUPER_MAGIC {
        return Err(std::io::Error::other(format!(
            "not a FUSE file system (yet): f_type {:#x}",
            st.f_type
        )));
    }
    std::fs::read_dir(path)?.next().transpose()?;
    Ok(())
}

/// Wait (up to `timeout`, polling) until [`answers`] says yes.
pub fn wait_until_answers(path: &Path, timeout: std::time::Duration) -> Result<(), MountError> {
    let start = std::time::Instant::now();
    loop {
        let last = match answers(path) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(MountError::NotAnswering {
                path: path.to_path_buf(),
                waited: timeout,
                last: last.to_string(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Does this process hold CAP_SYS_ADMIN (needed for FUSE passthrough)?
pub fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Is `path` a mount point (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want)
}

/// A mount as /proc/self/mountinfo describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// e.g. `fuse.spackfs`.
    pub fstype: String,
    pub source: String,
    /// The per-mount options (`ro,nosuid,nodev,...`).
    pub mount_options: String,
    /// The super block options (`user_id=0,group_id=0,allow_other,...` for FUSE).
    pub super_options: String,
}

impl MountEntry {
    /// The user who made a FUSE mount (`user_id=`).
    pub fn fuse_owner(&self) -> Option<u32> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|v| v.parse().ok())
    }
}

/// The topmost mount at `path`, if `path` is a mount point.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let (mine, sup) = l.split_once(" - ")?;
        let mine: Vec<&str> = mine.split(' ').collect();
        if unescape(mine.get(4)?) != want {
            return None;
        }
        let mut sup = sup.split(' ');
        Some(MountEntry {
            fstype: sup.next()?.to_string(),
            source: unescape(sup.next()?),
            mount_options: mine.get(5)?.to_string(),
            super_options: sup.next().unwrap_or("").to_string(),
        })
    })
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Unmount `path` (lazily when busy); falls back to `fusermount3 -u -z` without privileges.
pub fn unmount(path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid NUL-terminated path; umount2 reads it only.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(err),
    }
}

/// Check the mount point; clean up a stale mount left by a killed daemon.
pub fn prepare_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    let path = std::path::absolute(path).map_err(|_| MountError::NotADirectory(path.into()))?;
    // A dead FUSE daemon's mount answers ENOTCONN, but `stat` may still succeed from the
    // kernel's attribute cache: ask with a request that always reaches the daemon.
    let dead = std::fs::read_dir(&path)
        .err()
        .and_then(|e| e.raw_os_error())
        == Some(libc::ENOTCONN);
    if dead {
        tracing::warn!(
            "{}: stale mount of a dead daemon, unmounting it",
            path.display()
        );
        unmount(&path).map_err(|source| MountError::Stale {
            path: path.clone(),
            source,
        })?;
    } else if is_mounted(&path) {
        return Err(MountError::AlreadyMounted(path));
    }
    if !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
        return Err(MountError::NotADirectory(path));
    }
    match std::fs::read_dir(&path) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(MountError::NotEmpty(path));
            }
        }
        Err(_) => return Err(MountError::NotADirectory(path)),
    }
    Ok(path)
}

/// Mount `fs` at `path` in the background (`threads` FUSE event loops). The mount is
/// always read-only, `nodev` and `nosuid` (mount.fuse3 adds `dev,suid` to a helper's
/// options: they never reach the kernel).
pub fn spawn(
    fs: SpackFs,
    path: &Path,
    threads: usize,
    access: Access,
) -> Result<fuser::BackgroundSession, MountError> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("spackfs".into()),
        MountOption::Subtype("spackfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::Exec,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    cfg.acl = match access {
        Access::Default if is_root() => SessionACL::All,
        Access::Default => SessionACL::Owner,
        Access::Other => SessionACL::All,
        Access::Root => SessionACL::RootAndOwner,
    };
    cfg.n_threads = Some(threads.max(1));
    cfg.clone_fd = threads > 1;
    fuser::spawn_mount(fs, path, &cfg).map_err(|source| {
        // fusermount3's refusals arrive as its stderr, newline included.
        let source = match source.raw_os_error() {
            None => std::io::Error::new(source.kind(), source.to_string().trim_end().to_string()),
            Some(_) => source,
        };
        let hint = refusal_hint(&source, cfg.acl == SessionACL::All);
        MountError::Mount {
            path: path.to_path_buf(),
            cause: source,
            hint,
        }
    })
}

/// Advice for a refused mount, from the error and the state of this machine.
fn refusal_hint(err: &std::io::Error, allow_other: bool) -> String {
    let dev = Path::new("/dev/fuse");
    if !dev.exists() {
        return " (there is no /dev/fuse: load the fuse module or run on a machine with FUSE)"
            .into();
    }
    if is_root() {
        return String::new();
    }
    let c = c_path(dev).expect("no NUL in /dev/fuse");
    // SAFETY: `c` is a valid NUL-terminated path; access(2) only reads it.
    let openable = unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) } == 0;
    if !openable {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dev).map_or(0, |m| m.permissions().mode() & 0o777);
        // SAFETY: getuid cannot fail and touches no memory.
        let uid = unsafe { libc::getuid() };
        return format!(
            " (/dev/fuse, mode {mode:04o}, cannot be opened by uid {uid}: an administrator can \
             allow users to mount with `chmod 0666 /dev/fuse` (the default of most \
             distributions, e.g. by a udev rule), or mount as root)"
        );
    }
    let msg = err.to_string();
    if msg.contains("user_allow_other") || (allow_other && msg.contains("allow_other")) {
        return " (allow_other: users other than root may set it only when /etc/fuse.conf \
                 has the line `user_allow_other`; ask an administrator, or mount without it)"
            .into();
    }
    if err.kind() == std::io::ErrorKind::NotFound {
        let which = std::env::var("FUSERMOUNT_PATH").unwrap_or_else(|_| "fusermount3".into());
        return format!(
            " ({which} was not found: mounting without root needs fusermount3 from the fuse3 \
             package (`apt-get install fuse3`, `dnf install fuse3`))"
        );
    }
    " (mounting without root goes through fusermount3 from the fuse3 package)".into()
}
