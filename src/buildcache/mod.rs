//! Spack build-cache formats, read-only: manifests, spec JSON, the index database, the
//! `binary_distribution` relocation metadata, layout paths, prefix projections and the
//! hashes of environment lock files.
//!
//! Pure parsing and path computation; no I/O. Every error names the object at fault.

pub mod buildinfo;
pub mod checksum;
pub mod index;
pub mod layout;
pub mod lockfile;
pub mod manifest;
pub mod oci;
pub mod projection;
pub mod rawspec;
pub mod spec;
pub mod table;

/// A malformed or unsupported object in a mirror.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: invalid YAML: {source}")]
    Yaml {
        what: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

impl FormatError {
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        FormatError::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Replace every character outside `[A-Za-z0-9_+.-]` by `_`, as Spack does for file names
/// and projection components.
pub fn sanitize_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    sanitize_into(s, &mut out);
    out
}

/// [`sanitize_component`], appended to `out`.
pub fn sanitize_into(s: &str, out: &mut String) {
    out.extend(s.chars().map(|c| {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '.' | '-') {
            c
        } else {
            '_'
        }
    }));
}
