//! A reader that hashes (sha256) and counts every byte that passes through it.

use std::io::Read;

use sha2::Digest;

use crate::buildcache::checksum::Sha256;

pub struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    count: u64,
    /// The first read error (what it was, and its message): the input is not read again.
    failed: Option<(std::io::ErrorKind, String)>,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
            failed: None,
        }
    }

    /// Read the rest of the input, then return (sha256, total bytes); or the error reading
    /// it failed with, now or before.
    pub fn finish(mut self) -> std::io::Result<(Sha256, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((Sha256::from_hasher(self.hasher), self.count))
    }

    fn failure(&self) -> Option<std::io::Error> {
        let (kind, message) = self.failed.as_ref()?;
        Some(std::io::Error::new(*kind, message.clone()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let n = self.inner.read(buf).inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.failed = Some((e.kind(), e.to_string()));
            }
        })?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// sha256 of a byte slice, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::of(data).hex()
}
