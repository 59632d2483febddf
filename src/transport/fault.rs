//! A fault-injecting transport for in-process tests: it wraps a real transport and, for
//! the objects whose path starts with a configured prefix, fails, stalls, truncates,
//! corrupts, trickles or panics, a given number of times or always (the pattern of
//! mountpoint-s3's failure client). Everything else is the real transport's answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{BlobStore, ByteStream, Conditional, TransportError};

/// What happens to a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The request fails with a connection error (transient, the endpoint's fault).
    Connect,
    /// The object is not there.
    NotFound,
    /// The request never answers.
    Stall,
    /// The body ends (with an error) after this many bytes.
    Truncate(usize),
    /// The byte at this offset of the body is flipped.
    Corrupt(usize),
    /// The body arrives at this many bytes per second.
    Trickle(u64),
    /// The transport panics (a bug somewhere below the caller).
    Panic,
}

struct Rule {
    prefix: String,
    fault: Fault,
    /// Applies this many more times (`None`: always).
    remaining: Option<usize>,
}

/// A transport with faults.
pub struct FaultStore {
    inner: Box<dyn BlobStore>,
    rules: Arc<Mutex<Vec<Rule>>>,
    /// Paths requested, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

/// Changes the faults of a [`FaultStore`] after it moved into a mirror.
#[derive(Clone)]
pub struct FaultControl {
    rules: Arc<Mutex<Vec<Rule>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FaultControl {
    /// Apply `fault` to paths starting with `prefix`, `times` times (`None`: always).
    pub fn set(&self, prefix: &str, fault: Fault, times: Option<usize>) {
        self.rules.lock().unwrap().push(Rule {
            prefix: prefix.to_string(),
            fault,
            remaining: times,
        });
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// How many requests had a path starting with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.starts_with(prefix))
            .count()
    }
}

impl FaultStore {
    pub fn new(inner: Box<dyn BlobStore>) -> (Self, FaultControl) {
        let rules = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        (
            FaultStore {
                inner,
                rules: rules.clone(),
                seen: seen.clone(),
            },
            FaultControl { rules, seen },
        )
    }

    /// The fault for `path` now (using one of its remaining times).
    fn fault(&self, path: &str) -> Option<Fault> {
        self.seen.lock().unwrap().push(path.to_string());
        let mut rules = self.rules.lock().unwrap();
        let i = rules
            .iter()
            .position(|r| path.starts_with(&r.prefix) && r.remaining.is_none_or(|n| n > 0))?;
        if let Some(n) = rules[i].remaining.as_mut() {
            *n -= 1;
        }
        Some(rules[i].fault.clone())
    }

    fn error(&self, path: &str, fault: &Fault) -> Option<TransportError> {
        match fault {
            Fault::Connect => Some(TransportError::Connect {
                mirror: self.url().to_string(),
                path: path.to_string(),
                message: "injected connection failure".into(),
            }),
            Fault::NotFound => Some(TransportError::NotFound {
                mirror: self.url().to_string(),
                path: path.to_string(),
            }),
            Fault::Panic => panic!("injected panic reading {path}"),
            _ => None,
        }
    }

    /// Apply a body fault to a stream.
    fn body(&self, stream: ByteStream, path: &str, fault: Fault) -> ByteStream {
        let (mirror, path) = (self.url().to_string(), path.to_string());
        match fault {
            Fault::Truncate(limit) => {
                let mut sent = 0usize;
                stream
                    .map(move |chunk| {
                        let chunk = chunk?;
                        if sent >= limit {
                            return Err(TransportError::Broken {
                                mirror: mirror.clone(),
                                path: path.clone(),
                                message: "injected truncation".into(),
                            }
                            .into_io());
                        }
                        let keep = chunk.len().min(limit - sent);
                        sent += keep;
                        Ok(chunk.slice(..keep))
                    })
                    .boxed()
            }
            Fault::Corrupt(at) => {
                let mut offset = 0usize;
                stream
                    .map(move |chunk| {
                        let chunk = chunk?;
                        let start = offset;
                        offset += chunk.len();
                        if (start..offset).contains(&at) {
                            let mut v = chunk.to_vec();
                            v[at - start] ^= 0x01;
                            return Ok(Bytes::from(v));
                        }
                        Ok(chunk)
                    })
                    .boxed()
            }
            Fault::Trickle(rate) => stream
                .flat_map(move |chunk| {
                    let pieces: Vec<std::io::Result<Bytes>> = match chunk {
                        Ok(b) => (0..b.len())
                            .step_by(rate.max(10) as usize / 10)
                            .map(|i| Ok(b.slice(i..(i + rate.max(10) as usize / 10).min(b.len()))))
                            .collect(),
                        Err(e) => vec![Err(e)],
                    };
                    futures::stream::iter(pieces).then(|p| async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        p
                    })
                })
                .boxed(),
            _ => stream,
        }
    }
}

#[async_trait]
impl BlobStore for FaultStore {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn get(&self, path: &str) -> Result<ByteStream, TransportError> {
        let Some(fault) = self.fault(path) else {
            return self.inner.get(path).await;
        };
        if let Some(e) = self.error(path, &fault) {
            return Err(e);
        }
        if matches!(fault, Fault::Stall) {
            futures::future::pending::<()>().await;
        }
        let stream = self.inner.get(path).await?;
        Ok(self.body(stream, path, fault))
    }

    async fn get_if_changed(
        &self,
        path: &str,
        validator: Option<&str>,
    ) -> Result<Conditional, TransportError> {
        if let Some(fault) = self.fault(path) {
            if let Some(e) = self.error(path, &fault) {
                return Err(e);
            }
        }
        self.inner.get_if_changed(path, validator).await
    }

    async fn head(&self, path: &str) -> Result<Option<u64>, TransportError> {
        self.inner.head(path).await
    }

    async fn probe(&self) -> Result<(), TransportError> {
        self.inner.probe().await
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, TransportError> {
        self.inner.list(prefix).await
    }
}
