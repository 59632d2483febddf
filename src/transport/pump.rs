//! A byte stream read from blocking code with read-ahead: a task on the runtime pulls chunks
//! from the transport into a bounded channel while the install pipeline (sync code on a
//! blocking thread) reads the other end, so the network and decompression overlap and no
//! blob is ever held whole in memory. A transport failure is kept for the caller, which
//! needs its class (was it the mirror, or the bytes?) whatever the layers above made of it.
//! A local file needs no pump: the blocking pipeline reads it directly ([`reader`]).

use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{stream_error, ByteStream, Object, TransportError};

/// Chunks read ahead of the consumer.
const DEPTH: usize = 32;

/// The blocking end of a pumped stream.
pub struct PumpReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    done: bool,
}

/// Where the pump leaves the transport error that ended the stream, if any.
#[derive(Clone, Default)]
pub struct PumpFailure(Arc<Mutex<Option<TransportError>>>);

impl PumpFailure {
    /// The transport error that broke the stream (taken: the second call returns `None`).
    pub fn take(&self) -> Option<TransportError> {
        self.0.lock().unwrap().take()
    }

    /// Keep the transport error `e` (reading `path` from `mirror`) stands for, and return
    /// the error the reader gets in its place.
    fn keep(&self, e: std::io::Error, mirror: &str, path: &str) -> std::io::Error {
        let t = stream_error(e, mirror, path);
        let msg = std::io::Error::other(t.to_string());
        *self.0.lock().unwrap() = Some(t);
        msg
    }
}

/// Start pumping `stream` (from mirror `mirror`, object `path`) on the current runtime.
pub fn pump(mut stream: ByteStream, mirror: &str, path: &str) -> (PumpReader, PumpFailure) {
    let (tx, rx) = mpsc::channel(DEPTH);
    let failure = PumpFailure::default();
    let slot = failure.clone();
    let (mirror, path) = (mirror.to_string(), path.to_string());
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let item = match item {
                Ok(b) => Ok(b),
                Err(e) => Err(slot.keep(e, &mirror, &path)),
            };
            let failed = item.is_err();
            // The reader went away (the pipeline stopped early): drop the connection.
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    (
        PumpReader {
            rx,
            current: Bytes::new(),
            done: false,
        },
        failure,
    )
}

/// The blocking reader of an opened object: a pumped stream, or a local file read directly.
pub enum BlobReader {
    Pumped(PumpReader),
    File(FileReader),
}

/// A local file read by the pipeline itself; a read error is kept as the mirror's, like a
/// broken stream's.
pub struct FileReader {
    file: std::fs::File,
    failure: PumpFailure,
    mirror: String,
    path: String,
}

/// The blocking reader of `object` (from mirror `mirror`, object `path`); a stream is pumped
/// on the current runtime.
pub fn reader(object: Object, mirror: &str, path: &str) -> (BlobReader, PumpFailure) {
    match object {
        Object::Stream(stream) => {
            let (r, failure) = pump(stream, mirror, path);
            (BlobReader::Pumped(r), failure)
        }
        Object::File(file) => {
            let failure = PumpFailure::default();
            let r = FileReader {
                file,
                failure: failure.clone(),
                mirror: mirror.to_string(),
                path: path.to_string(),
            };
            (BlobReader::File(r), failure)
        }
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failure.keep(e, &self.mirror, &self.path)),
                Ok(n) => return Ok(n),
            }
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BlobReader::Pumped(r) => r.read(buf),
            BlobReader::File(r) => r.read(buf),
        }
    }
}

impl Read for PumpReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_every_byte_in_order_and_keeps_the_failure() {
        let chunks: Vec<std::io::Result<Bytes>> = (0..100u8)
            .map(|i| Ok(Bytes::from(vec![i; 1000])))
            .chain([Err(TransportError::Timeout {
                mirror: "m".into(),
                path: "p".into(),
                message: "slow".into(),
            }
            .into_io())])
            .collect();
        let stream: ByteStream = futures::stream::iter(chunks).boxed();
        let (mut reader, failure) = pump(stream, "m", "p");
        let (data, err) = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let err = reader.read_to_end(&mut out).unwrap_err();
            (out, err)
        })
        .await
        .unwrap();
        assert_eq!(data.len(), 100_000);
        assert!(data
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        assert!(err.to_string().contains("slow"), "{err}");
        assert!(matches!(
            failure.take(),
            Some(TransportError::Timeout { .. })
        ));
    }
}
