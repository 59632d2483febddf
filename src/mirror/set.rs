//! The configured mirrors, in order, and failover between them. A package is asked of the
//! mirrors whose index lists it and of those without an index (unless they recently said
//! they do not hold it), healthy mirrors first in configuration order, then those in
//! back-off by when they are due. An attempt that fails — the mirror as an endpoint, or the
//! package from it (checksum, signature, format) — moves on to the next mirror; only a local
//! failure (the cache's disk) stops early. The log says why each mirror was left.

use std::future::Future;
use std::sync::Arc;

use super::{FailureClass, Mirror, MirrorError, PackageMeta, Verified};
use crate::buildcache::spec::SpecNode;

/// A set of mirrors, by position in the configuration (bit `i` = mirror `i`).
pub type MirrorMask = u64;

/// At most this many mirrors (the width of a [`MirrorMask`]).
pub const MAX_MIRRORS: usize = 64;

/// How an attempt's error is treated for failover.
pub trait Classify {
    fn class(&self) -> FailureClass;
}

impl Classify for MirrorError {
    fn class(&self) -> FailureClass {
        MirrorError::class(self)
    }
}

/// Every mirror that was tried failed (or none could be asked).
#[derive(Debug)]
pub struct Exhausted<E> {
    pub package: String,
    /// (mirror URL, why) in the order tried.
    pub attempts: Vec<(String, E)>,
}

impl<E: std::fmt::Display> std::fmt::Display for Exhausted<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.attempts.as_slice() {
            [] => write!(
                f,
                "package {} is not in any configured mirror",
                self.package
            ),
            [(_, e)] => write!(f, "{e}"),
            many => {
                write!(f, "no mirror could serve {}: ", self.package)?;
                for (i, (m, e)) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "[{}] mirror {m}: {e}", i + 1)?;
                }
                Ok(())
            }
        }
    }
}

/// The mirrors of a mount or a command, in configuration order.
#[derive(Debug)]
pub struct MirrorSet {
    mirrors: Vec<Arc<Mirror>>,
}

impl MirrorSet {
    /// Panics past [`MAX_MIRRORS`] mirrors (the configuration refuses more).
    pub fn new(mirrors: Vec<Mirror>) -> Self {
        assert!(mirrors.len() <= MAX_MIRRORS, "too many mirrors");
        MirrorSet {
            mirrors: mirrors.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn mirrors(&self) -> &[Arc<Mirror>] {
        &self.mirrors
    }

    pub fn len(&self) -> usize {
        self.mirrors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty()
    }

    /// The mirrors to ask for `hash`, in the order to ask them: `listed` are the mirrors
    /// whose index lists it, `unindexed` those without an index (asked directly).
    pub fn candidates(&self, hash: &str, listed: MirrorMask, unindexed: MirrorMask) -> Vec<usize> {
        let mut healthy = Vec::new();
        let mut waiting = Vec::new();
        for (i, m) in self.mirrors.iter().enumerate() {
            let bit = 1u64 << i;
            let eligible = listed & bit != 0 || (unindexed & bit != 0 && !m.known_absent(hash));
            if !eligible {
                continue;
            }
            if m.health().is_healthy() {
                healthy.push(i);
            } else {
                waiting.push(i);
            }
        }
        // Mirrors in back-off are still asked when nothing else is left, soonest due first.
        waiting.sort_by_key(|&i| self.mirrors[i].health().retry_at());
        healthy.extend(waiting);
        healthy
    }

    /// Get package `node` from the first mirror that serves it: its verified metadata, then
    /// `attempt` with that mirror and metadata (which fetches and checks the tarball).
    pub async fn fetch<T, E, F, Fut>(
        &self,
        node: &SpecNode,
        listed: MirrorMask,
        unindexed: MirrorMask,
        compiler: Option<&(String, String)>,
        mut attempt: F,
    ) -> Result<T, Exhausted<E>>
    where
        E: From<MirrorError> + Classify + std::fmt::Display,
        F: FnMut(Arc<Mirror>, Verified<PackageMeta>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let package = node.display();
        let order = self.candidates(&node.hash, listed, unindexed);
        let mut attempts = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let m = self.mirrors[i].clone();
            let result = match m.meta(node, compiler).await {
                Ok(meta) => attempt(m.clone(), meta).await,
                Err(e) => Err(E::from(e)),
            };
            let e = match result {
                Ok(t) => {
                    if m.health().succeeded() {
                        tracing::info!("mirror {} answers again", m.url());
                    }
                    return Ok(t);
                }
                Err(e) => e,
            };
            let class = e.class();
            if class != FailureClass::Local {
                crate::metrics::global().mirror_error(m.url(), class.label());
            }
            if matches!(class, FailureClass::Endpoint | FailureClass::Package) {
                crate::metrics::global().record_error(&format!("mirror {}: {e}", m.url()));
            }
            match class {
                FailureClass::NotFound => m.mark_absent(&node.hash),
                FailureClass::Endpoint => {
                    let delay = m.health().failed(&e.to_string());
                    tracing::warn!(
                        "mirror {} is failing ({e}): it is skipped for {delay:?}",
                        m.url()
                    );
                }
                FailureClass::Package | FailureClass::Local => {}
            }
            let next = order.get(k + 1).map(|&j| self.mirrors[j].url());
            match (class, next) {
                (FailureClass::Local, _) | (_, None) => {}
                (FailureClass::NotFound, Some(n)) => {
                    tracing::debug!("{package}: not on mirror {}; trying mirror {n}", m.url())
                }
                (_, Some(n)) => tracing::warn!(
                    "{package}: leaving mirror {}: {e}; trying mirror {n}",
                    m.url()
                ),
            }
            attempts.push((m.url().to_string(), e));
            if class == FailureClass::Local {
                break;
            }
        }
        Err(Exhausted { package, attempts })
    }
}
