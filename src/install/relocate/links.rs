//! Symlink relocation (format doc 7.2): absolute targets starting with a key are re-pointed.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::elf::substitute_prefix;
use super::map::RelocationMap;

/// Re-point the symlink at `path` if its absolute target starts with a key; returns whether
/// it changed.
pub fn relocate_link(path: &Path, map: &RelocationMap) -> std::io::Result<bool> {
    let target = std::fs::read_link(path)?;
    let bytes = target.as_os_str().as_bytes();
    if !bytes.starts_with(b"/") {
        return Ok(false);
    }
    let Some(new) = substitute_prefix(bytes, map) else {
        return Ok(false);
    };
    std::fs::remove_file(path)?;
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&new), path)?;
    Ok(true)
}
