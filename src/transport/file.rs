//! `file://` transport: a mirror on a local or mounted disk (air-gapped nodes).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures::StreamExt;
use tokio_util::io::ReaderStream;

use super::{BlobStore, ByteStream, Conditional, Object, TransportError};

/// A mirror in a local directory.
pub struct FileStore {
    root: PathBuf,
    url: String,
}

impl FileStore {
    pub fn new(root: &str, url: &str) -> Self {
        FileStore {
            root: PathBuf::from(root),
            url: url.trim_end_matches('/').to_string(),
        }
    }

    fn resolve(&self, path: &str) -> Result<PathBuf, TransportError> {
        // Mirror-relative paths come from manifests we parse; never let one escape the root.
        let rel = Path::new(path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(self.not_found(path));
        }
        Ok(self.root.join(rel))
    }

    /// "Not found", unless the whole mirror is gone (a disk not mounted, a directory
    /// moved away): then the mirror is unreachable, not the object absent.
    fn not_found(&self, path: &str) -> TransportError {
        if !self.root.is_dir() {
            return TransportError::Unreachable {
                mirror: self.url.clone(),
                reason: format!("{} is not a directory", self.root.display()),
            };
        }
        TransportError::NotFound {
            mirror: self.url.clone(),
            path: path.to_string(),
        }
    }

    /// Open the regular file at `path`.
    async fn open_file(
        &self,
        path: &str,
    ) -> Result<(tokio::fs::File, std::fs::Metadata), TransportError> {
        let full = self.resolve(path)?;
        let file = tokio::fs::File::open(&full)
            .await
            .map_err(|e| self.io(path, e))?;
        let meta = file.metadata().await.map_err(|e| self.io(path, e))?;
        if !meta.is_file() {
            return Err(self.not_found(path));
        }
        Ok((file, meta))
    }

    fn io(&self, path: &str, source: std::io::Error) -> TransportError {
        if source.kind() == std::io::ErrorKind::NotFound {
            return self.not_found(path);
        }
        TransportError::Io {
            mirror: self.url.clone(),
            path: path.to_string(),
            source,
        }
    }
}

#[async_trait]
impl BlobStore for FileStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn get(&self, path: &str) -> Result<ByteStream, TransportError> {
        let (file, _) = self.open_file(path).await?;
        Ok(ReaderStream::with_capacity(file, 256 * 1024).boxed())
    }

    async fn open(&self, path: &str) -> Result<Object, TransportError> {
        let (file, _) = self.open_file(path).await?;
        Ok(Object::File(file.into_std().await))
    }

    async fn get_if_changed(
        &self,
        path: &str,
        validator: Option<&str>,
    ) -> Result<Conditional, TransportError> {
        let (file, meta) = self.open_file(path).await?;
        // A file's identity and change time stand in for an ETag.
        use std::os::unix::fs::MetadataExt;
        let tag = format!(
            "{}-{}.{}-{}",
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.len()
        );
        if validator == Some(tag.as_str()) {
            return Ok(Conditional::Unchanged);
        }
        Ok(Conditional::Changed {
            stream: ReaderStream::with_capacity(file, 256 * 1024).boxed(),
            validator: Some(tag),
        })
    }

    async fn head(&self, path: &str) -> Result<Option<u64>, TransportError> {
        let full = self.resolve(path)?;
        match tokio::fs::metadata(&full).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.not_found(path) {
                TransportError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
            Err(e) => Err(self.io(path, e)),
        }
    }

    async fn probe(&self) -> Result<(), TransportError> {
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(TransportError::Unreachable {
                mirror: self.url.clone(),
                reason: "not a directory".into(),
            }),
            Err(e) => Err(TransportError::Unreachable {
                mirror: self.url.clone(),
                reason: e.to_string(),
            }),
        }
    }

    fn lists_cheaply(&self) -> bool {
        true
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, TransportError> {
        if !self.root.is_dir() {
            return Err(self.not_found(prefix));
        }
        let base = self.resolve(prefix.trim_end_matches('/'))?;
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![base];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(TransportError::Io {
                            mirror: url.clone(),
                            path: prefix.clone(),
                            source,
                        })
                    }
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    match entry.file_type() {
                        Ok(t) if t.is_dir() => stack.push(path),
                        Ok(t) if t.is_file() => {
                            if let Ok(rel) = path.strip_prefix(&root) {
                                out.push(rel.to_string_lossy().into_owned());
                            }
                        }
                        _ => {}
                    }
                }
            }
            out.sort();
            Ok(Some(out))
        })
        .await
        .map_err(|e| TransportError::Unreachable {
            mirror: self.url.clone(),
            reason: format!("listing failed: {e}"),
        })?
    }
}
