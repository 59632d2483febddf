//! The pipeline for one package, run on a blocking thread: stream the tarball blob through
//! sha256 and an inflater (gzip or zstd, by magic bytes) into a hardened untar, then relocate
//! and finish the prefix. No FUSE, no network types: only a `Read` and a relocation map.

pub mod buffers;
pub mod extract;
pub mod finish;
pub mod handoff;
pub mod hashing;
pub mod inflate;
pub mod relocate;
pub mod writers;

use std::path::PathBuf;

use crate::buildcache::FormatError;

/// Why a package could not be installed. Each variant names the package (`what`) and, where
/// one is at fault, the tar member or file.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what}: tarball sha256 is {actual}, the manifest says {expected} (corrupt or tampered blob)")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: tarball is {actual} bytes, the manifest says {expected} (truncated or corrupt blob)")]
    Length {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: tarball is not compressed with gzip or zstd ({found})")]
    Compression { what: String, found: String },
    #[error("{what}: tarball inflates past the limit of {limit} bytes (decompression bomb?)")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: unsafe tar member {member:?}: {reason}")]
    UnsafeMember {
        what: String,
        member: String,
        reason: String,
    },
    #[error("{what}: cannot read tarball: {message}")]
    Tar { what: String, message: String },
    #[error("{what}: {message}")]
    Layout { what: String, message: String },
    #[error("{what}: relocation list names {path:?}: {reason}")]
    BadRelocationList {
        what: String,
        path: String,
        reason: String,
    },
    #[error("{what}: cannot relocate {file}: the install root is too long: {old:?} would become the longer {new:?}; this package fits under a root of at most {longest_root} characters (this root has {root_len})")]
    RootTooLong {
        what: String,
        file: String,
        old: String,
        new: String,
        longest_root: usize,
        root_len: usize,
    },
    #[error("{what}: cannot relocate {file}: the C string at offset {offset} cannot be shortened from {old:?} to {new:?}")]
    CannotShrink {
        what: String,
        file: String,
        offset: usize,
        old: String,
        new: String,
    },
    #[error("{what}: {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl InstallError {
    pub(crate) fn io(what: &str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        InstallError::Io {
            what: what.to_string(),
            path: path.into(),
            source,
        }
    }
}

/// Limits applied to an untrusted tarball.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum number of bytes the tarball may inflate to.
    pub max_unpacked: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked: 64 << 30,
        }
    }
}
