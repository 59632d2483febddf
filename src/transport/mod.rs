//! Transports: "give me the bytes at this path of a mirror".
//!
//! A [`BlobStore`] streams a mirror-relative path, tells whether it exists and lists a folder.
//! Only `file://` (and plain paths) exist so far; HTTP, S3 and OCI come later behind the same
//! trait. Retries, timeouts and failover belong here and nowhere else.

pub mod file;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};

/// A stream of byte chunks read from a mirror.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Errors of a transport, naming the mirror and the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{path} not found on mirror {mirror}")]
    NotFound { mirror: String, path: String },
    #[error("cannot read {path} from mirror {mirror}: {source}")]
    Io {
        mirror: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} on mirror {mirror} is larger than {limit} bytes")]
    TooLarge {
        mirror: String,
        path: String,
        limit: u64,
    },
    #[error("mirror {mirror} is unreachable: {reason}")]
    Unreachable { mirror: String, reason: String },
    #[error("unsupported mirror URL {0}")]
    UnsupportedUrl(String),
}

impl TransportError {
    /// True when the object does not exist (as opposed to a failure reading it).
    pub fn is_not_found(&self) -> bool {
        matches!(self, TransportError::NotFound { .. })
    }
}

/// Read access to one mirror.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// A human-readable name of the mirror (its URL), used in every error message.
    fn url(&self) -> &str;
    /// Stream the object at `path` (relative to the mirror root).
    async fn get(&self, path: &str) -> Result<ByteStream, TransportError>;
    /// Size of the object at `path`, or `None` when it does not exist.
    async fn head(&self, path: &str) -> Result<Option<u64>, TransportError>;
    /// Check that the mirror can be reached at all (its root exists / answers).
    async fn probe(&self) -> Result<(), TransportError>;
    /// Paths (relative to the mirror root) of every object below `prefix`, recursively.
    /// Transports that cannot list return an empty list.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, TransportError>;

    /// Read a small object whole, refusing more than `limit` bytes.
    async fn get_bytes(&self, path: &str, limit: u64) -> Result<Vec<u8>, TransportError> {
        let mut stream = self.get(path).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| TransportError::Io {
                mirror: self.url().to_string(),
                path: path.to_string(),
                source,
            })?;
            if out.len() as u64 + chunk.len() as u64 > limit {
                return Err(TransportError::TooLarge {
                    mirror: self.url().to_string(),
                    path: path.to_string(),
                    limit,
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// Open the transport for a mirror URL (`file://…` or a plain path).
pub fn open(url: &str) -> Result<Box<dyn BlobStore>, TransportError> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Ok(Box::new(file::FileStore::new(rest, url)));
    }
    if url.contains("://") {
        return Err(TransportError::UnsupportedUrl(url.to_string()));
    }
    let path = std::path::absolute(url).unwrap_or_else(|_| url.into());
    let display = format!("file://{}", path.display());
    Ok(Box::new(file::FileStore::new(
        path.to_string_lossy().as_ref(),
        &display,
    )))
}
