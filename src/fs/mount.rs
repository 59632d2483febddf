//! Mounting: checks of the mount point (empty, not already mounted, stale mounts of a killed
//! daemon cleaned up), the fuser session, and a clean unmount.

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
    #[error("cannot mount at {path}: {source}{hint}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: String,
    },
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
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
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

/// Mount `fs` at `path` in the background (`threads` FUSE event loops).
pub fn spawn(
    fs: SpackFs,
    path: &Path,
    threads: usize,
) -> Result<fuser::BackgroundSession, MountError> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("spackfs".into()),
        MountOption::Subtype("spackfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::Exec,
    ];
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        cfg.acl = SessionACL::All;
    }
    cfg.n_threads = Some(threads.max(1));
    cfg.clone_fd = threads > 1;
    fuser::spawn_mount(fs, path, &cfg).map_err(|source| {
        let hint = if !Path::new("/dev/fuse").exists() {
            " (there is no /dev/fuse: load the fuse module or run on a machine with FUSE)".into()
        } else if
        // SAFETY: geteuid cannot fail and touches no memory.
        unsafe { libc::geteuid() } != 0 {
            " (mounting needs root, or fusermount3 from the fuse3 package)".into()
        } else {
            String::new()
        };
        MountError::Mount {
            path: path.to_path_buf(),
            source,
            hint,
        }
    })
}
