//! Spack's OCI layout over a registry transport (format doc §6): the index is the single
//! layer of the `index.spack` image (its digest and size checked as it streams); a package
//! is the image tagged `NAME-VERSION-HASH.spack` (an image index is resolved to this
//! machine's platform), its spec is the image config (checked against its digest, and
//! its `binary_cache_checksum` against the last layer), and its tarball is the last layer.
//! Nothing in an OCI cache is signed: such a mirror must be configured unsigned.

use super::index::{IndexRead, IndexSource};
use super::{Mirror, MirrorError, PackageMeta, TrustPolicy, SMALL_LIMIT};
use crate::buildcache::checksum::Sha256;
use crate::buildcache::layout::Layout;
use crate::buildcache::oci::{self, Descriptor, OciManifest};
use crate::buildcache::spec::SpecDag;
use crate::buildcache::FormatError;
use crate::transport::{self, Conditional};

/// The path of a manifest in a registry transport.
pub(super) fn manifest_path(reference: &str) -> String {
    format!("manifests/{reference}")
}

/// The transport path of a blob.
fn blob_path(digest: &Sha256) -> String {
    format!("blobs/sha256:{digest}")
}

/// Why an OCI mirror cannot be signed, for messages.
pub const UNSIGNED_ONLY: &str = "OCI build caches are unsigned (Spack cannot sign them): configure this mirror with `signed: false` or pass --unsigned";

impl Mirror {
    fn require_unsigned(&self, package: &str) -> Result<(), MirrorError> {
        match self.trust {
            TrustPolicy::Unsigned => Ok(()),
            TrustPolicy::Require(_) => Err(MirrorError::Integrity {
                package: package.to_string(),
                mirror: self.url().to_string(),
                message: UNSIGNED_ONLY.into(),
            }),
        }
    }

    /// The index image, conditionally; a registry without one is listed by its tags.
    pub(super) async fn read_index_oci(
        &self,
        validator: Option<&str>,
        last: Option<Sha256>,
    ) -> Result<(IndexRead, Option<String>, Option<Sha256>), MirrorError> {
        if let TrustPolicy::Require(_) = self.trust {
            return Err(self.index_err(UNSIGNED_ONLY));
        }
        let path = manifest_path(oci::INDEX_TAG);
        let (stream, validator) = match self.store().get_if_changed(&path, validator).await {
            Err(e) if e.is_not_found() => return Ok((self.read_listing().await?, None, None)),
            Err(e) => return Err(e.into()),
            Ok(Conditional::Unchanged) => return Ok((IndexRead::Unchanged, None, None)),
            Ok(Conditional::Changed { stream, validator }) => (stream, validator),
        };
        let what = format!("{}/{path}", self.url());
        let raw = transport::collect(stream, SMALL_LIMIT, self.url(), &path).await?;
        let layer = match oci::parse_manifest(&raw, &what)
            .map_err(|e| self.index_err(e.to_string()))?
        {
            OciManifest::Image { layers, .. } => layers[0].clone(),
            OciManifest::Index { .. } => {
                return Err(self.index_err(format!("{what} is an image index, not the index image")))
            }
        };
        if last == Some(layer.digest) {
            return Ok((IndexRead::Unchanged, validator, last));
        }
        let blob = blob_path(&layer.digest);
        let body = self.store().get(&blob).await?;
        let (records, sum) = self
            .parse_index_stream(body, &blob, Some(layer.digest), Some(layer.size))
            .await?;
        Ok((
            IndexRead::Fresh {
                records: Box::new(super::Verified::new(records)),
                source: IndexSource::Oci,
                lacking: Default::default(),
            },
            validator,
            Some(sum),
        ))
    }

    /// The verified metadata of the package whose image is at manifest path `path`.
    pub(super) async fn meta_oci(
        &self,
        package: &str,
        path: &str,
    ) -> Result<PackageMeta, MirrorError> {
        self.require_unsigned(package)?;
        let what = format!("{}/{path}", self.url());
        let raw = self.get_metadata(path, SMALL_LIMIT).await?;
        let (config, layers) =
            match oci::parse_manifest(&raw, &what).map_err(|e| self.format_err(e))? {
                OciManifest::Image { config, layers } => (config, layers),
                OciManifest::Index { manifests } => {
                    let entry = oci::pick_platform(&manifests).ok_or_else(|| {
                        self.format_err(FormatError::invalid(
                            &what,
                            format!(
                                "an image index with no image for linux/{}",
                                oci::host_architecture()
                            ),
                        ))
                    })?;
                    // Fetched by digest: the transport checks it.
                    let child = manifest_path(&format!("sha256:{}", entry.manifest.digest));
                    let cwhat = format!("{}/{child}", self.url());
                    let raw = self.get_metadata(&child, SMALL_LIMIT).await?;
                    match oci::parse_manifest(&raw, &cwhat).map_err(|e| self.format_err(e))? {
                        OciManifest::Image { config, layers } => (config, layers),
                        OciManifest::Index { .. } => {
                            return Err(self.format_err(FormatError::invalid(
                                &cwhat,
                                "an image index inside an image index",
                            )))
                        }
                    }
                }
            };
        let tarball: Descriptor = layers
            .last()
            .cloned()
            .expect("parse_manifest refuses no layers");
        let cpath = blob_path(&config.digest);
        let blob = self
            .get_metadata(&cpath, SMALL_LIMIT.min(config.size.max(1) + 1))
            .await?;
        if Sha256::of(&blob) != config.digest || blob.len() as u64 != config.size {
            return Err(MirrorError::Integrity {
                package: package.to_string(),
                mirror: self.url().to_string(),
                message: format!("image config {cpath} does not match its digest and size"),
            });
        }
        let cwhat = format!("image config {cpath}");
        let dag = SpecDag::parse(&blob, &cwhat).map_err(|e| self.format_err(e))?;
        match dag.binary_checksum {
            Some(sum) if sum == tarball.digest => {}
            Some(sum) => {
                return Err(MirrorError::Integrity {
                    package: package.to_string(),
                    mirror: self.url().to_string(),
                    message: format!(
                        "its image config names tarball sha256 {sum}, its last layer is {}",
                        tarball.digest
                    ),
                })
            }
            None => {
                return Err(
                    self.format_err(FormatError::invalid(&cwhat, "no binary_cache_checksum"))
                )
            }
        }
        Ok(PackageMeta {
            dag,
            layout: Layout::V3,
            tarball_path: blob_path(&tarball.digest),
            tarball_sha256: tarball.digest,
            tarball_size: Some(tarball.size),
            signer: None,
            verify_time: std::time::Duration::ZERO,
            mirror: self.url().to_string(),
        })
    }

    /// The packages a registry holds, by tag: (hash, manifest path).
    pub(super) async fn oci_tags(&self) -> Result<Vec<(String, String)>, MirrorError> {
        let tags = self.store().list("tags").await?.unwrap_or_default();
        Ok(tags
            .iter()
            .filter_map(|t| oci::hash_of_tag(t).map(|h| (h.to_string(), manifest_path(t))))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use async_trait::async_trait;
    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::buildcache::spec::SpecNode;
    use crate::mirror::Backoff;
    use crate::transport::{BlobStore, ByteStream, TransportError};
    use crate::trust::Keyring;
    use crate::writer::NodeDef;

    /// A registry held in memory (the HTTP side has its own tests against docker-registry).
    #[derive(Default, Clone)]
    struct MemRegistry {
        objects: HashMap<String, Vec<u8>>,
    }

    impl MemRegistry {
        fn blob(&mut self, bytes: Vec<u8>) -> Sha256 {
            let d = Sha256::of(&bytes);
            self.objects.insert(blob_path(&d), bytes);
            d
        }
        fn manifest(&mut self, reference: &str, m: serde_json::Value) -> Sha256 {
            let bytes = serde_json::to_vec(&m).unwrap();
            let d = Sha256::of(&bytes);
            self.objects
                .insert(manifest_path(&format!("sha256:{d}")), bytes.clone());
            self.objects.insert(manifest_path(reference), bytes);
            d
        }
    }

    #[async_trait]
    impl BlobStore for MemRegistry {
        fn url(&self) -> &str {
            "oci+http://mem/test"
        }
        async fn get(&self, path: &str) -> Result<ByteStream, TransportError> {
            match self.objects.get(path) {
                Some(b) => {
                    let b = bytes::Bytes::from(b.clone());
                    Ok(futures::stream::once(async move { Ok(b) }).boxed())
                }
                None => Err(TransportError::NotFound {
                    mirror: self.url().into(),
                    path: path.into(),
                }),
            }
        }
        async fn get_if_changed(
            &self,
            path: &str,
            _validator: Option<&str>,
        ) -> Result<Conditional, TransportError> {
            Ok(Conditional::Changed {
                stream: self.get(path).await?,
                validator: None,
            })
        }
        async fn head(&self, path: &str) -> Result<Option<u64>, TransportError> {
            Ok(self.objects.get(path).map(|b| b.len() as u64))
        }
        async fn probe(&self) -> Result<(), TransportError> {
            Ok(())
        }
        async fn list(&self, _prefix: &str) -> Result<Option<Vec<String>>, TransportError> {
            Ok(Some(
                self.objects
                    .keys()
                    .filter_map(|k| k.strip_prefix("manifests/"))
                    .filter(|k| !k.starts_with("sha256:"))
                    .map(str::to_string)
                    .collect(),
            ))
        }
        fn is_registry(&self) -> bool {
            true
        }
    }

    fn desc(media: &str, d: &Sha256, size: usize) -> serde_json::Value {
        json!({"mediaType": media, "digest": format!("sha256:{d}"), "size": size})
    }

    /// A registry holding package `tiny@1.0` (its config naming `named` as the tarball,
    /// the real tarball digest when `None`), behind an image index when `indexed`.
    fn registry(named: Option<Sha256>, indexed: bool) -> (MemRegistry, SpecNode, Sha256) {
        let node = NodeDef::new("tiny", "1.0").to_json();
        let mut reg = MemRegistry::default();
        let tarball = reg.blob(b"not really a tarball".to_vec());
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "spec": {"_meta": {"version": 5}, "nodes": [node]},
            "buildcache_layout_version": 3,
            "binary_cache_checksum": {"hash_algorithm": "sha256", "hash": named.unwrap_or(tarball).to_string()},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_len = config.len();
        let config_d = reg.blob(config);
        let dag = SpecDag::parse(
            &serde_json::to_vec(&json!({"spec": {"nodes": [node]}})).unwrap(),
            "t",
        )
        .unwrap();
        let n = dag.root_node().clone();
        let tag = oci::package_tag(&n.name, &n.version, &n.hash);
        let image = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc("application/vnd.oci.image.config.v1+json", &config_d, config_len),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &tarball, 20)],
        });
        if indexed {
            let image_d = reg.manifest("unused-image", image);
            reg.objects.remove(&manifest_path("unused-image"));
            let index = json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{image_d}"), "size": 1,
                     "platform": {"architecture": oci::host_architecture(), "os": "linux"}},
                ],
            });
            reg.manifest(&tag, index);
        } else {
            reg.manifest(&tag, image);
        }
        (reg, n, tarball)
    }

    fn mirror(reg: MemRegistry, trust: TrustPolicy) -> Mirror {
        Mirror::new(
            "mem",
            Box::new(reg),
            trust,
            Backoff {
                initial: Duration::ZERO,
                max: Duration::ZERO,
            },
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn a_package_is_its_image_and_its_tarball_the_last_layer() {
        for indexed in [false, true] {
            let (reg, node, tarball) = registry(None, indexed);
            let m = mirror(reg, TrustPolicy::Unsigned);
            let meta = m.meta(&node, None).await.expect("meta");
            assert_eq!(meta.tarball_sha256, tarball);
            assert_eq!(meta.tarball_path, format!("blobs/sha256:{tarball}"));
            assert_eq!(meta.signer, None);
            // Without an index image, the tags list the package.
            match m.read_index().await.expect("listing") {
                IndexRead::Fresh {
                    records, source, ..
                } => {
                    assert_eq!(source, IndexSource::Listing);
                    let row = records.find(&node.hash).expect("listed");
                    assert!(records.in_buildcache(row));
                }
                _ => panic!("no listing"),
            }
        }
    }

    #[tokio::test]
    async fn a_config_naming_another_tarball_is_refused() {
        let (reg, node, _) = registry(Some(Sha256::of(b"other")), false);
        let e = mirror(reg, TrustPolicy::Unsigned)
            .meta(&node, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("its last layer is"), "{e}");
        assert!(e.to_string().contains("oci+http://mem/test"), "{e}");
    }

    #[tokio::test]
    async fn a_config_that_does_not_match_its_digest_is_refused() {
        let (mut reg, node, _) = registry(None, false);
        let key = reg
            .objects
            .keys()
            .find(|k| k.starts_with("blobs/") && reg.objects[*k].starts_with(b"{"))
            .cloned()
            .unwrap();
        reg.objects.get_mut(&key).unwrap()[1] = b' ';
        let e = mirror(reg, TrustPolicy::Unsigned)
            .meta(&node, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not match its digest"), "{e}");
    }

    #[tokio::test]
    async fn a_signed_policy_is_an_error_never_a_downgrade() {
        let (reg, node, _) = registry(None, false);
        let m = mirror(reg, TrustPolicy::Require(Keyring::default()));
        let e = m.meta(&node, None).await.unwrap_err();
        assert!(e.to_string().contains("unsigned"), "{e}");
        let e = m.read_index().await.err().expect("index refused");
        assert!(e.to_string().contains("unsigned"), "{e}");
    }
}
