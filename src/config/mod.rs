//! Mirror configuration: which mirror to read and how to trust it, from CLI flags (Spack's
//! and Stackinator's `mirrors.yaml` come later). Pure: no I/O but reading key files.

use std::path::PathBuf;

use crate::trust::{Keyring, TrustError};

/// One mirror to read.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// `file://…` URL or a plain path.
    pub url: String,
    /// Require signatures (the default for URL mirrors, as in Spack).
    pub signed: bool,
    /// Key files (armored or binary, one or many certificates each).
    pub key_files: Vec<PathBuf>,
    /// Directories whose files are all key files.
    pub keyring_dirs: Vec<PathBuf>,
}

impl MirrorConfig {
    /// Load the trusted keys.
    pub fn keyring(&self) -> Result<Keyring, TrustError> {
        let mut ring = Keyring::default();
        for f in &self.key_files {
            ring.add_file(f)?;
        }
        for d in &self.keyring_dirs {
            ring.add_dir(d)?;
        }
        Ok(ring)
    }
}
