//! The file system that presents the live catalog under the mount point: `core` holds the
//! logic (the tree, lookups that make packages ready, handles and pins, listings,
//! attributes, ESTALE) as plain methods that tests drive in-process; `fuse` is the thin
//! fuser adapter (decode, call, reply; parked replies; passthrough backing ids); `errno`
//! is where failures become errno; `inodes` is the inode table; `spack_db` the database at the
//! root, written on first use; `mount` the session and the mount point's checks.

pub mod core;
pub mod errno;
pub mod fuse;
pub mod inodes;
pub mod mount;
pub mod spack_db;

pub use self::core::{FsCore, ObserverParts, ReadMode};
pub use self::fuse::SpackFs;
