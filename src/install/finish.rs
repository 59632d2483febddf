//! Finishing a relocated prefix: final modes and Spack's times (epoch for untouched entries).

use std::collections::HashMap;
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::extract::MemberKind;
use super::InstallError;

/// Set the modes that extraction could not (directories, files without owner rw) and
/// Spack's epoch mtime on directories. Modes are already stripped of special and
/// group/world-write bits. Returns the files whose mode changed (relative to the prefix).
pub fn finish(
    prefix_dir: &Path,
    members: &HashMap<String, (MemberKind, u32)>,
    what: &str,
) -> Result<Vec<String>, InstallError> {
    let mut dirs = Vec::new();
    let mut changed = Vec::new();
    for (rel, (kind, mode)) in members {
        let path = prefix_dir.join(rel);
        match kind {
            // Files got their mode (plus owner rw) and epoch times when extracted.
            MemberKind::File if mode & 0o600 != 0o600 => {
                std::fs::set_permissions(&path, Permissions::from_mode(*mode))
                    .map_err(|e| InstallError::io(what, &path, e))?;
                changed.push(rel.clone());
            }
            MemberKind::Dir => dirs.push((path, *mode)),
            MemberKind::File | MemberKind::Symlink | MemberKind::HardLink(_) => {}
        }
    }
    dirs.push((prefix_dir.to_path_buf(), 0o755));
    for (path, mode) in dirs {
        std::fs::set_permissions(&path, Permissions::from_mode(mode | 0o700))
            .map_err(|e| InstallError::io(what, &path, e))?;
        if let Ok(d) = std::fs::File::open(&path) {
            let _ = d.set_times(super::extract::epoch_times());
        }
    }
    Ok(changed)
}
