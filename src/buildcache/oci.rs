//! Spack's OCI build cache format (format doc §6): package tags, image manifests (OCI and
//! Docker schema 2) and image indexes. Pure: bytes in, values or errors naming the thing.
//! The spec of a package is its image config, which [`super::spec::SpecDag::parse`] reads
//! as it reads a v2 spec file.

use serde::Deserialize;

use super::checksum::Sha256;
use super::FormatError;

/// The tag of the index image.
pub const INDEX_TAG: &str = "index.spack";

/// Media types of an image manifest.
pub const IMAGE_MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Media types of an image index (manifest list).
pub const IMAGE_INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The tag Spack gives a package: `NAME-VERSION-HASH.spack`, every character outside
/// `[A-Za-z0-9_.-]` replaced by `_`, and when longer than 128 characters the first 64
/// and the last 64 kept.
pub fn package_tag(name: &str, version: &str, hash: &str) -> String {
    let raw = format!("{name}-{version}-{hash}.spack");
    let tag: String = raw
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let chars: Vec<char> = tag.chars().collect();
    if chars.len() > 128 {
        let head: String = chars[..64].iter().collect();
        let tail: String = chars[chars.len() - 64..].iter().collect();
        format!("{head}{tail}")
    } else {
        tag
    }
}

/// The DAG hash of a package tag (`…-HASH.spack`, HASH 32 base32 characters), or `None`
/// for the index and for tags that are not packages.
pub fn hash_of_tag(tag: &str) -> Option<&str> {
    if tag == INDEX_TAG {
        return None;
    }
    let stem = tag.strip_suffix(".spack")?;
    let (_, hash) = stem.rsplit_once('-')?;
    super::spec::is_dag_hash(hash).then_some(hash)
}

/// A content descriptor: a blob's media type, digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Sha256,
    pub size: u64,
}

/// An entry of an image index: a manifest and its platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub manifest: Descriptor,
    pub architecture: Option<String>,
    pub os: Option<String>,
}

/// What a manifest reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciManifest {
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    Index {
        manifests: Vec<IndexEntry>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

fn descriptor(d: RawDescriptor, what: &str, field: &str) -> Result<Descriptor, FormatError> {
    let hex = d.digest.strip_prefix("sha256:").ok_or_else(|| {
        FormatError::invalid(
            what,
            format!(
                "{field}: digest {:?} is not sha256:<64 hex>",
                d.digest.chars().take(80).collect::<String>()
            ),
        )
    })?;
    let digest = Sha256::parse(hex).ok_or_else(|| {
        FormatError::invalid(what, format!("{field}: digest is not sha256:<64 hex>"))
    })?;
    let size = u64::try_from(d.size)
        .map_err(|_| FormatError::invalid(what, format!("{field}: negative size {}", d.size)))?;
    Ok(Descriptor {
        media_type: d.media_type.unwrap_or_default(),
        digest,
        size,
    })
}

/// Parse an image manifest or image index.
pub fn parse_manifest(json: &[u8], what: &str) -> Result<OciManifest, FormatError> {
    let raw: RawManifest = serde_json::from_slice(json).map_err(|source| FormatError::Json {
        what: what.to_string(),
        source,
    })?;
    if raw.schema_version.is_some_and(|v| v != 2) {
        return Err(FormatError::invalid(
            what,
            format!(
                "schemaVersion {} (only 2 is read)",
                raw.schema_version.unwrap_or(0)
            ),
        ));
    }
    let media = raw.media_type.as_deref().unwrap_or_default();
    let is_index =
        IMAGE_INDEX_TYPES.contains(&media) || (raw.manifests.is_some() && raw.layers.is_none());
    if is_index {
        let manifests = raw
            .manifests
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let (architecture, os) = d
                    .platform
                    .as_ref()
                    .map(|p| (p.architecture.clone(), p.os.clone()))
                    .unwrap_or_default();
                Ok(IndexEntry {
                    manifest: descriptor(d, what, &format!("manifests[{i}]"))?,
                    architecture,
                    os,
                })
            })
            .collect::<Result<Vec<_>, FormatError>>()?;
        return Ok(OciManifest::Index { manifests });
    }
    if !media.is_empty() && !IMAGE_MANIFEST_TYPES.contains(&media) {
        return Err(FormatError::invalid(
            what,
            format!("media type {media:?} is neither an image manifest nor an image index"),
        ));
    }
    let config = raw
        .config
        .ok_or_else(|| FormatError::invalid(what, "no config"))
        .and_then(|c| descriptor(c, what, "config"))?;
    let layers = raw
        .layers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, d)| descriptor(d, what, &format!("layers[{i}]")))
        .collect::<Result<Vec<_>, FormatError>>()?;
    if layers.is_empty() {
        return Err(FormatError::invalid(what, "no layers"));
    }
    Ok(OciManifest::Image { config, layers })
}

/// The OCI name of this machine's architecture (`GOARCH` style).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// The entry of an image index for this machine (Linux, this architecture), else the
/// only entry.
pub fn pick_platform(manifests: &[IndexEntry]) -> Option<&IndexEntry> {
    let arch = host_architecture();
    manifests
        .iter()
        .find(|e| {
            e.architecture.as_deref() == Some(arch) && e.os.as_deref().is_none_or(|o| o == "linux")
        })
        .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "lvktxdbzy5xjz4y42kaknkq7gwcfi4qz";

    #[test]
    fn tags_are_spacks() {
        assert_eq!(
            package_tag("fixture-greet", "1.0", H),
            format!("fixture-greet-1.0-{H}.spack")
        );
        assert_eq!(
            package_tag("a", "1.0+x@y", H),
            format!("a-1.0_x_y-{H}.spack")
        );
        let long = package_tag(&"n".repeat(200), "1", H);
        assert_eq!(long.chars().count(), 128);
        assert!(long.ends_with(&format!("{H}.spack")));
        assert_eq!(
            hash_of_tag(&format!("fixture-greet-1.0-{H}.spack")),
            Some(H)
        );
        assert_eq!(hash_of_tag(INDEX_TAG), None);
        assert_eq!(hash_of_tag("latest"), None);
        assert_eq!(hash_of_tag("x-1-short.spack"), None);
    }

    #[test]
    fn manifests_of_both_families_parse() {
        let d = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        let oci = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":10}},
            "layers":[{{"digest":"{}","size":5}},{{"digest":"{}","size":7}}]}}"#,
            d(1),
            d(2),
            d(3)
        );
        match parse_manifest(oci.as_bytes(), "m").unwrap() {
            OciManifest::Image { config, layers } => {
                assert_eq!(config.size, 10);
                assert_eq!(layers.len(), 2);
                assert_eq!(layers[1].size, 7);
            }
            other => panic!("{other:?}"),
        }
        let docker = oci.replace(
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        );
        assert!(matches!(
            parse_manifest(docker.as_bytes(), "m").unwrap(),
            OciManifest::Image { .. }
        ));
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"digest":"{}","size":1,"platform":{{"architecture":"s390x","os":"linux"}}}},
            {{"digest":"{}","size":2,"platform":{{"architecture":"{}","os":"linux"}}}}]}}"#,
            d(4),
            d(5),
            host_architecture()
        );
        match parse_manifest(index.as_bytes(), "i").unwrap() {
            OciManifest::Index { manifests } => {
                assert_eq!(pick_platform(&manifests).unwrap().manifest.size, 2)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_manifests_are_named() {
        for bad in [
            r#"{"schemaVersion":1}"#,
            r#"{"schemaVersion":2,"config":{"digest":"md5:00","size":1},"layers":[]}"#,
            r#"{"schemaVersion":2,"config":{"digest":"sha256:00","size":1},"layers":[]}"#,
            r#"{"schemaVersion":2,"mediaType":"text/plain","config":{"digest":"sha256:00","size":1}}"#,
            "not json",
        ] {
            let e = parse_manifest(bad.as_bytes(), "manifest of x").unwrap_err();
            assert!(e.to_string().contains("manifest of x"), "{e}");
        }
        let neg = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{}","size":-1}},"layers":[]}}"#,
            "0".repeat(64)
        );
        assert!(parse_manifest(neg.as_bytes(), "m").is_err());
    }
}
