//! Transports: bytes from ONE endpoint of a mirror.
//!
//! A [`BlobStore`] streams the object at a mirror-relative path (or, where the protocol
//! addresses content by digest, a blob by digest), answers `head`, lists a folder where the
//! protocol can, and makes conditional requests for objects that change (the index).
//! Timeouts, the low-speed rule and retries of transient errors live here; failover between
//! mirrors and Spack's formats do not (that is `mirror/`). Errors are typed: not found,
//! transient (worth a retry, and a sign that the endpoint is unhealthy) or fatal.

#[cfg(test)]
pub mod fault;
pub mod file;
pub mod http;
pub mod oci;
pub mod pump;
pub mod s3;
pub mod watchdog;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};

/// A stream of byte chunks read from a mirror. A chunk error that came from the transport
/// carries a [`TransportError`] inside the `io::Error` (see [`TransportError::from_io`]).
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// How a caller should treat a transport error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The object does not exist on this endpoint.
    NotFound,
    /// Connect errors, timeouts, 5xx, 429, broken streams: worth a retry, and a sign that
    /// the endpoint is unhealthy.
    Transient,
    /// Retrying will not help (403, a bad certificate, a bad URL, an object too large).
    Fatal,
}

/// Errors of a transport, naming the mirror and the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{path} not found on mirror {mirror}")]
    NotFound { mirror: String, path: String },
    #[error("mirror {mirror}: {path}: HTTP status {status}")]
    Status {
        mirror: String,
        path: String,
        status: u16,
    },
    #[error("mirror {mirror}: {path}: cannot connect: {message}")]
    Connect {
        mirror: String,
        path: String,
        message: String,
    },
    #[error("mirror {mirror}: {path}: timed out: {message}")]
    Timeout {
        mirror: String,
        path: String,
        message: String,
    },
    #[error("mirror {mirror}: {path}: transfer broken: {message}")]
    Broken {
        mirror: String,
        path: String,
        message: String,
    },
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
    #[error("mirror {mirror}: {path}: {message}")]
    Refused {
        mirror: String,
        path: String,
        message: String,
    },
    #[error("mirror {mirror}: {message}")]
    Config { mirror: String, message: String },
    #[error("unsupported mirror URL {0}")]
    UnsupportedUrl(String),
}

impl TransportError {
    /// True when the object does not exist (as opposed to a failure reading it).
    pub fn is_not_found(&self) -> bool {
        matches!(self, TransportError::NotFound { .. })
    }

    /// How to treat this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            TransportError::NotFound { .. } => ErrorClass::NotFound,
            TransportError::Status { status, .. } => {
                if *status >= 500 || *status == 429 || *status == 408 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Fatal
                }
            }
            TransportError::Connect { .. }
            | TransportError::Timeout { .. }
            | TransportError::Broken { .. }
            | TransportError::Io { .. }
            | TransportError::Unreachable { .. } => ErrorClass::Transient,
            TransportError::TooLarge { .. }
            | TransportError::Refused { .. }
            | TransportError::Config { .. }
            | TransportError::UnsupportedUrl(_) => ErrorClass::Fatal,
        }
    }

    /// True when the failure says something about the endpoint rather than one object:
    /// the mirror should be skipped for a while.
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            TransportError::NotFound { .. } | TransportError::TooLarge { .. } => false,
            TransportError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => true,
        }
    }

    /// Wrap into an `io::Error` for a byte stream (the kind follows the class).
    pub fn into_io(self) -> std::io::Error {
        let kind = match &self {
            TransportError::Timeout { .. } => std::io::ErrorKind::TimedOut,
            TransportError::NotFound { .. } => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, self)
    }

    /// The transport error inside a stream's `io::Error`, if it carries one.
    pub fn from_io(e: &std::io::Error) -> Option<&TransportError> {
        e.get_ref().and_then(|i| i.downcast_ref::<TransportError>())
    }
}

/// An object opened to be read whole: a stream from a remote transport, or a file on a
/// local disk that the blocking pipeline reads itself (no runtime task and no copy per
/// chunk between the disk and the decompressor).
pub enum Object {
    Stream(ByteStream),
    File(std::fs::File),
}

/// The answer to a conditional request.
pub enum Conditional {
    /// The object still carries the validator that was sent.
    Unchanged,
    /// The object (new or changed), with its validator for the next request.
    Changed {
        stream: ByteStream,
        validator: Option<String>,
    },
}

/// Read access to one mirror endpoint.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// A human-readable name of the mirror (its URL, without credentials), used in every
    /// error message.
    fn url(&self) -> &str;

    /// Stream the object at `path` (relative to the mirror root).
    async fn get(&self, path: &str) -> Result<ByteStream, TransportError>;

    /// Stream the object at `path` unless it still has `validator` (an HTTP ETag, or what
    /// the transport uses in its place).
    async fn get_if_changed(
        &self,
        path: &str,
        validator: Option<&str>,
    ) -> Result<Conditional, TransportError>;

    /// Open the object at `path` to be read whole: by default a stream ([`BlobStore::get`]);
    /// a local directory gives the file itself.
    async fn open(&self, path: &str) -> Result<Object, TransportError> {
        self.get(path).await.map(Object::Stream)
    }

    /// Stream a blob by its digest (`algorithm`, lower-case hex), for protocols that address
    /// content by digest (OCI registries). URL layouts address blobs by path instead.
    async fn get_digest(&self, algorithm: &str, hex: &str) -> Result<ByteStream, TransportError> {
        Err(TransportError::Refused {
            mirror: self.url().to_string(),
            path: format!("{algorithm}:{hex}"),
            message: "this transport does not address blobs by digest".into(),
        })
    }

    /// Size of the object at `path`, or `None` when it does not exist.
    async fn head(&self, path: &str) -> Result<Option<u64>, TransportError>;

    /// Check that the endpoint answers at all.
    async fn probe(&self) -> Result<(), TransportError>;

    /// Paths (relative to the mirror root) of every object below `prefix`, recursively, or
    /// `None` when the protocol cannot list (plain HTTP).
    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, TransportError>;

    /// Is [`BlobStore::list`] cheap enough to run on every index read (a local directory
    /// walk, not paginated requests)?
    fn lists_cheaply(&self) -> bool {
        false
    }

    /// Is this an OCI registry (paths are `manifests/REF`, `blobs/DIGEST`; listing `tags`)?
    fn is_registry(&self) -> bool {
        false
    }

    /// Read a small object whole, refusing more than `limit` bytes.
    async fn get_bytes(&self, path: &str, limit: u64) -> Result<Vec<u8>, TransportError> {
        let stream = self.get(path).await?;
        collect(stream, limit, self.url(), path).await
    }
}

/// Read a stream whole, refusing more than `limit` bytes.
pub async fn collect(
    mut stream: ByteStream,
    limit: u64,
    mirror: &str,
    path: &str,
) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| stream_error(source, mirror, path))?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(TransportError::TooLarge {
                mirror: mirror.to_string(),
                path: path.to_string(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The transport error a stream failed with (or an I/O error naming the object).
pub fn stream_error(source: std::io::Error, mirror: &str, path: &str) -> TransportError {
    match source.into_inner() {
        Some(inner) => match inner.downcast::<TransportError>() {
            Ok(t) => *t,
            Err(other) => TransportError::Io {
                mirror: mirror.to_string(),
                path: path.to_string(),
                source: std::io::Error::other(other),
            },
        },
        None => TransportError::Io {
            mirror: mirror.to_string(),
            path: path.to_string(),
            source: std::io::Error::other("read failed"),
        },
    }
}

/// How remote transports behave: timeouts, the low-speed rule, retries, trust roots.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Time to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// A transfer slower than this (bytes per second, averaged over `low_speed_time`)
    /// counts as a timeout. Covers the wait for the first byte too.
    pub low_speed_limit: u64,
    pub low_speed_time: Duration,
    /// Retries of a transient error (connect error, timeout, 5xx, 429) before the request
    /// fails; exponential back-off between them.
    pub retries: usize,
    /// First retry delay (doubled each time, capped at 8×).
    pub retry_delay: Duration,
    /// Extra trusted CA certificates (PEM), added to the system roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for RemoteOptions {
    /// CernVM-FS-like defaults: a dead mirror is given up within seconds, a slow one within
    /// `low_speed_time`.
    fn default() -> Self {
        RemoteOptions {
            connect_timeout: Duration::from_secs(5),
            low_speed_limit: 1024,
            low_speed_time: Duration::from_secs(10),
            retries: 1,
            retry_delay: Duration::from_millis(250),
            ca_file: None,
        }
    }
}

/// The credentials and endpoint of a mirror (Spack's connection fields, resolved: values,
/// not variable names). S3 uses all of them; OCI registries the access pair as user and
/// password; file and HTTP mirrors none.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Key id (user) and secret (password): `access_pair`.
    pub access_key: Option<(String, String)>,
    /// S3 session token (`access_token_variable`'s value).
    pub session_token: Option<String>,
    /// An AWS profile of `~/.aws/credentials` and `~/.aws/config`.
    pub profile: Option<String>,
    /// An S3-compatible endpoint (else `S3_ENDPOINT_URL`, else AWS).
    pub endpoint_url: Option<String>,
}

/// Open the transport for a mirror URL without credentials.
pub fn open(url: &str, opts: &RemoteOptions) -> Result<Box<dyn BlobStore>, TransportError> {
    open_with(url, opts, &Access::default())
}

/// Open the transport for a mirror URL: `file://…` or a plain path, `http://…`,
/// `https://…`, `s3://bucket/prefix`, `oci://…` and `oci+http://…`.
pub fn open_with(
    url: &str,
    opts: &RemoteOptions,
    access: &Access,
) -> Result<Box<dyn BlobStore>, TransportError> {
    if url.starts_with("s3://") {
        return Ok(Box::new(s3::S3Store::new(url, opts, access)?));
    }
    if url.starts_with("oci://") || url.starts_with("oci+http://") {
        return Ok(Box::new(oci::OciStore::new(url, opts, access)?));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        return Ok(Box::new(file::FileStore::new(rest, url)));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Box::new(http::HttpStore::new(url, opts)?));
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

/// The display form of a mirror URL (as its transport names it), without opening it.
pub fn display_url(url: &str) -> String {
    if url.contains("://") {
        strip_credentials(url)
    } else {
        let path = std::path::absolute(url).unwrap_or_else(|_| url.into());
        format!("file://{}", path.display())
    }
}

/// A URL without `user:password@`, for logs.
pub fn strip_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        _ => url.trim_end_matches('/').to_string(),
    }
}
