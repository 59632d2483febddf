//! Finishing a relocated prefix: final modes and Spack's times (epoch for untouched entries).

use std::collections::HashMap;
use std::fs::{FileTimes, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use super::extract::MemberKind;
use super::relocate::RelocationReport;
use super::InstallError;

/// Set member modes (already stripped of special and group/world-write bits) and mtimes:
/// epoch for files relocation did not change, as a Spack install leaves them.
pub fn finish(
    prefix_dir: &Path,
    members: &HashMap<String, (MemberKind, u32)>,
    report: &RelocationReport,
    what: &str,
) -> Result<(), InstallError> {
    let epoch = FileTimes::new()
        .set_modified(SystemTime::UNIX_EPOCH)
        .set_accessed(SystemTime::UNIX_EPOCH);
    let mut dirs = Vec::new();
    for (rel, (kind, mode)) in members {
        let path = prefix_dir.join(rel);
        match kind {
            MemberKind::File => {
                let f = std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .map_err(|e| InstallError::io(what, &path, e))?;
                f.set_permissions(Permissions::from_mode(*mode))
                    .map_err(|e| InstallError::io(what, &path, e))?;
                if !report.changed.contains(rel) {
                    f.set_times(epoch)
                        .map_err(|e| InstallError::io(what, &path, e))?;
                }
            }
            MemberKind::Dir => dirs.push((path, *mode)),
            MemberKind::Symlink | MemberKind::HardLink(_) => {}
        }
    }
    dirs.push((prefix_dir.to_path_buf(), 0o755));
    for (path, mode) in dirs {
        std::fs::set_permissions(&path, Permissions::from_mode(mode | 0o700))
            .map_err(|e| InstallError::io(what, &path, e))?;
        if let Ok(d) = std::fs::File::open(&path) {
            let _ = d.set_times(epoch);
        }
    }
    Ok(())
}
