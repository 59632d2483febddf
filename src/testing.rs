//! Helpers of the library's in-process tests (compiled for `cargo test` only): a generated
//! one-package mirror, and a mount's live catalog over it behind a fault-injecting
//! transport, with no kernel mount involved.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::buildcache::projection::Projection;
use crate::catalog::live::LiveCatalog;
use crate::catalog::materialise::Target;
use crate::catalog::Catalog;
use crate::install::Limits;
use crate::mirror::set::MirrorSet;
use crate::mirror::{Backoff, Mirror, TrustPolicy};
use crate::store::Store;
use crate::transport::fault::{FaultControl, FaultStore};
use crate::writer::{padded_root, MirrorWriter, NodeDef};

/// An unsigned v3 mirror of one package, `tiny@1.0`, whose `bin/hello.sh` names its prefix.
pub struct TinyMirror {
    pub dir: tempfile::TempDir,
    pub hash: String,
    /// Mirror-relative path of its tarball blob.
    pub tarball: String,
}

impl Default for TinyMirror {
    fn default() -> Self {
        Self::new()
    }
}

impl TinyMirror {
    /// A mirror (unsigned, never in back-off) of this directory behind a fault-injecting
    /// transport.
    pub fn faulty_mirror(&self) -> (Mirror, FaultControl) {
        let inner = crate::transport::open(&self.mirror().to_string_lossy(), &Default::default())
            .expect("transport");
        let (store, faults) = FaultStore::new(inner);
        let mirror = Mirror::new(
            "tiny",
            Box::new(store),
            TrustPolicy::Unsigned,
            Backoff {
                initial: Duration::ZERO,
                max: Duration::ZERO,
            },
            Duration::from_secs(60),
        );
        (mirror, faults)
    }

    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let buildpath = padded_root("/opt/tiny-store", 128);
        let node = NodeDef::new("tiny", "1.0").to_json();
        let hash = node["hash"].as_str().expect("hash").to_string();
        let prefix = format!("{buildpath}/linux-x86_64/tiny-1.0-{hash}");
        let content = dir.path().join("content");
        std::fs::create_dir_all(content.join("bin")).expect("content");
        std::fs::write(
            content.join("bin/hello.sh"),
            format!("#!/bin/sh\necho {prefix}\n"),
        )
        .expect("script");
        let mut w = MirrorWriter::new(&dir.path().join("mirror"), None).expect("writer");
        let rec = w
            .add_package(
                &[node],
                &content,
                &buildpath,
                &prefix,
                &[(hash.clone(), prefix.clone())],
            )
            .expect("package");
        w.finish().expect("index");
        TinyMirror {
            dir,
            hash,
            tarball: rec.path(),
        }
    }

    pub fn mirror(&self) -> std::path::PathBuf {
        self.dir.path().join("mirror")
    }

    /// A live catalog of this mirror, behind a fault-injecting transport, caching in
    /// `cache`, placing packages under `root`; failed packages are retried after `retry`.
    pub async fn live(
        &self,
        cache: &Path,
        root: &str,
        retry: Duration,
    ) -> (Arc<LiveCatalog>, FaultControl) {
        let (mirror, faults) = self.faulty_mirror();
        let (catalog, failed) = Catalog::open(MirrorSet::new(vec![mirror])).await;
        assert!(failed.is_empty(), "{failed:?}");
        let target = Target::new(root.to_string(), Projection::default(), Limits::default());
        let store = Arc::new(Store::open(cache, None).expect("store"));
        (
            Arc::new(LiveCatalog::new(Arc::new(catalog), target, store, retry)),
            faults,
        )
    }
}
