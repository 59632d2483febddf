//! spackfs: serve the packages of a Spack binary build cache (a mirror) as installed prefixes.
//!
//! The library holds the engine (read a mirror, verify, extract, relocate) that both the eager
//! `spackfs install` command and the FUSE mount use. See `DESIGN.md` in the shared folder for
//! the map; each module's top comment says its one job.

pub mod buildcache;
pub mod catalog;
pub mod config;
pub mod control;
pub mod fs;
pub mod install;
pub mod metrics;
pub mod mirror;
pub mod store;
#[cfg(test)]
pub mod testing;
pub mod transport;
pub mod trust;
pub mod writer;

/// Spack's `sbang` script, installed at `<root>/bin/sbang` as Spack does.
pub const SBANG_SCRIPT: &[u8] = include_bytes!("../assets/sbang");
