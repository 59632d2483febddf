//! A small writer of Spack-format v3 mirrors (signed with a key it generates, or unsigned),
//! from directory trees built for a (padded) build prefix. `spackfs demo`, the benchmarks and
//! the tests that need hostile mirrors use it; the reader treats its output and Spack's alike.

pub mod signing;
pub mod tarball;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::buildcache::layout;
use crate::buildcache::manifest::{
    BlobRecord, Manifest, MEDIA_INDEX, MEDIA_KEY, MEDIA_KEY_INDEX, MEDIA_SPEC, MEDIA_TARBALL,
};
pub use signing::SigningKey;
pub use tarball::{classify, write_tarball, BuildInfoLists};

/// Errors of the writer.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signing: {0}")]
    Signing(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Spack's DAG hash of a node object without its `hash` member: base32 of the SHA-1 of the
/// compact JSON, lower case.
pub fn dag_hash(node_without_hash: &Value) -> String {
    use sha1::{Digest, Sha1};
    let text = serde_json::to_string(node_without_hash).expect("JSON serialises");
    data_encoding::BASE32_NOPAD
        .encode(&Sha1::digest(text.as_bytes()))
        .to_lowercase()
}

/// A package to describe: its node is built in Spack's v5 shape and hashed.
#[derive(Debug, Clone)]
pub struct NodeDef {
    pub name: String,
    pub version: String,
    pub target: String,
    /// (name, hash, deptypes)
    pub deps: Vec<(String, String, Vec<String>)>,
}

impl NodeDef {
    pub fn new(name: &str, version: &str) -> Self {
        NodeDef {
            name: name.into(),
            version: version.into(),
            target: "x86_64".into(),
            deps: Vec::new(),
        }
    }

    pub fn dep(mut self, name: &str, hash: &str, deptypes: &[&str]) -> Self {
        self.deps.push((
            name.into(),
            hash.into(),
            deptypes.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// The node JSON with its `hash` member last.
    pub fn to_json(&self) -> Value {
        let mut deps = self.deps.clone();
        deps.sort_by(|a, b| a.0.cmp(&b.0));
        let mut node = json!({
            "name": self.name,
            "version": self.version,
            "arch": {"platform": "linux", "platform_os": "debian12", "target": self.target},
            "namespace": "builtin",
        });
        let obj = node.as_object_mut().expect("object");
        if !deps.is_empty() {
            obj.insert(
                "dependencies".into(),
                Value::Array(
                    deps.iter()
                        .map(|(n, h, t)| {
                            json!({"name": n, "hash": h, "parameters": {"deptypes": t, "virtuals": [], "direct": true}})
                        })
                        .collect(),
                ),
            );
        }
        obj.insert(
            "annotations".into(),
            json!({"original_specfile_version": 5}),
        );
        let hash = dag_hash(&node);
        node.as_object_mut()
            .expect("object")
            .insert("hash".into(), Value::String(hash));
        node
    }
}

/// Writes a v3 mirror into a directory.
pub struct MirrorWriter {
    root: PathBuf,
    key: Option<SigningKey>,
    index: Vec<(String, Value)>,
}

impl MirrorWriter {
    /// Start a mirror at `root`; with `key`, manifests are clearsigned and the key published.
    pub fn new(root: &Path, key: Option<SigningKey>) -> Result<Self, WriteError> {
        std::fs::create_dir_all(root.join("v3")).map_err(io(root))?;
        let layout_json = root.join("v3/layout.json");
        std::fs::write(&layout_json, br#"{"signing": "gpg"}"#).map_err(io(&layout_json))?;
        Ok(MirrorWriter {
            root: root.to_path_buf(),
            key,
            index: Vec::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn key(&self) -> Option<&SigningKey> {
        self.key.as_ref()
    }

    /// Store bytes as a content-addressed blob; return its record.
    pub fn write_blob(
        &self,
        data: &[u8],
        media_type: &str,
        compression: &str,
    ) -> Result<BlobRecord, WriteError> {
        let rec = BlobRecord {
            content_length: data.len() as u64,
            media_type: media_type.into(),
            compression: compression.into(),
            checksum_algorithm: "sha256".into(),
            checksum: crate::buildcache::checksum::Sha256::of(data),
        };
        let path = self.root.join(rec.path());
        std::fs::create_dir_all(path.parent().expect("blob dir")).map_err(io(&path))?;
        std::fs::write(&path, data).map_err(io(&path))?;
        Ok(rec)
    }

    /// Serialise a manifest as Spack does (one token per line), signed when a key is set.
    pub fn manifest_bytes(&self, records: Vec<BlobRecord>) -> Result<Vec<u8>, WriteError> {
        let m = Manifest {
            version: 3,
            data: records,
        };
        let text = serde_json::to_string_pretty(&m)
            .expect("manifest serialises")
            .lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        match &self.key {
            Some(k) => k.clearsign(text.as_bytes(), None),
            None => Ok(text.into_bytes()),
        }
    }

    /// Write manifest bytes for `name-version-hash`.
    pub fn write_spec_manifest(
        &self,
        name: &str,
        version: &str,
        hash: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, WriteError> {
        let path = self
            .root
            .join(
                layout::v3_spec_manifest(name, version, hash).map_err(|e| WriteError::Io {
                    path: self.root.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?,
            );
        std::fs::create_dir_all(path.parent().expect("manifest dir")).map_err(io(&path))?;
        std::fs::write(&path, bytes).map_err(io(&path))?;
        Ok(path)
    }

    /// Add a package from an already made tarball and spec DAG (`nodes[0]` is the package).
    /// Returns the tarball record.
    pub fn add_raw(&mut self, nodes: &[Value], tarball: &[u8]) -> Result<BlobRecord, WriteError> {
        let root = &nodes[0];
        let s = |k: &str| root[k].as_str().unwrap_or_default().to_string();
        let spec_json = json!({"spec": {"_meta": {"version": 5}, "nodes": nodes}, "buildcache_layout_version": 2});
        let spec_gz = gzip(serde_json::to_string(&spec_json).expect("JSON").as_bytes());
        let tar_rec = self.write_blob(tarball, MEDIA_TARBALL, "gzip")?;
        let spec_rec = self.write_blob(&spec_gz, MEDIA_SPEC, "gzip")?;
        let manifest = self.manifest_bytes(vec![tar_rec.clone(), spec_rec])?;
        self.write_spec_manifest(&s("name"), &s("version"), &s("hash"), &manifest)?;
        for (i, n) in nodes.iter().enumerate() {
            let h = n["hash"].as_str().unwrap_or_default().to_string();
            if let Some(pos) = self.index.iter().position(|(k, _)| *k == h) {
                if i == 0 {
                    self.index[pos].1["in_buildcache"] = Value::Bool(true);
                }
                continue;
            }
            self.index.push((
                h,
                json!({"spec": n, "ref_count": 0, "in_buildcache": i == 0}),
            ));
        }
        Ok(tar_rec)
    }

    /// Add a package built into `content_dir` for the build-time prefix `build_prefix`
    /// (under `buildpath`). `relocation_set` lists (hash, old prefix) of the package and
    /// its link dependencies, the package first.
    pub fn add_package(
        &mut self,
        nodes: &[Value],
        content_dir: &Path,
        buildpath: &str,
        build_prefix: &str,
        relocation_set: &[(String, String)],
    ) -> Result<BlobRecord, WriteError> {
        let mut prefixes: Vec<String> = relocation_set.iter().map(|(_, p)| p.clone()).collect();
        let sbang = sbang_install_path(buildpath);
        prefixes.push(sbang.clone());
        prefixes.push(buildpath.to_string());
        let lists = classify(content_dir, &prefixes).map_err(io(content_dir))?;
        let rel_prefix = build_prefix
            .strip_prefix(buildpath)
            .unwrap_or(build_prefix)
            .trim_start_matches('/');
        let mut info = format!(
            "{{sbang_install_path: {sbang}, buildpath: {buildpath}, spackprefix: /opt/spack, relative_prefix: {rel_prefix}, hardlinks_deduped: true, hash_to_prefix: {{"
        );
        info.push_str(
            &relocation_set
                .iter()
                .map(|(h, p)| format!("{h}: {p}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let list = |v: &[String]| v.iter().map(|s| yaml_str(s)).collect::<Vec<_>>().join(", ");
        info.push_str(&format!(
            "}}, relocate_binaries: [{}], relocate_links: [{}], relocate_textfiles: [{}]}}\n",
            list(&lists.binaries),
            list(&lists.links),
            list(&lists.texts)
        ));
        let tarball =
            write_tarball(content_dir, build_prefix, info.as_bytes()).map_err(io(content_dir))?;
        self.add_raw(nodes, &tarball)
    }

    /// Write the index (and, when signing, the public key and the key index).
    pub fn finish(&self) -> Result<(), WriteError> {
        let mut installs = serde_json::Map::new();
        for (h, rec) in &self.index {
            installs.insert(h.clone(), rec.clone());
        }
        let db = json!({"database": {"version": "8", "installs": installs}});
        let rec = self.write_blob(
            serde_json::to_string(&db).expect("JSON").as_bytes(),
            MEDIA_INDEX,
            "none",
        )?;
        let m = self.manifest_unsigned(vec![rec]);
        let path = self.root.join(layout::V3_INDEX_MANIFEST);
        std::fs::create_dir_all(path.parent().expect("dir")).map_err(io(&path))?;
        std::fs::write(&path, m).map_err(io(&path))?;
        if let Some(k) = &self.key {
            let fpr = k.fingerprint();
            let rec = self.write_blob(&k.public_armored()?, MEDIA_KEY, "none")?;
            let p = self
                .root
                .join(format!("{}{fpr}.key.manifest.json", layout::V3_KEY_DIR));
            std::fs::create_dir_all(p.parent().expect("dir")).map_err(io(&p))?;
            std::fs::write(&p, self.manifest_unsigned(vec![rec])).map_err(io(&p))?;
            let keys = format!("{{\"keys\":{{\"{fpr}\":{{}}}}}}");
            let rec = self.write_blob(keys.as_bytes(), MEDIA_KEY_INDEX, "none")?;
            let p = self
                .root
                .join(format!("{}keys.manifest.json", layout::V3_KEY_DIR));
            std::fs::write(&p, self.manifest_unsigned(vec![rec])).map_err(io(&p))?;
        }
        Ok(())
    }

    fn manifest_unsigned(&self, records: Vec<BlobRecord>) -> Vec<u8> {
        serde_json::to_vec(&Manifest {
            version: 3,
            data: records,
        })
        .expect("JSON")
    }
}

fn yaml_str(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+ ".contains(c))
        && !s.starts_with(' ')
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Spack's `sbang_install_path` for a (possibly padded) build root: `<unpadded root>/bin/sbang`.
pub fn sbang_install_path(buildpath: &str) -> String {
    let unpadded = buildpath
        .split("/__spack_path_placeholder__")
        .next()
        .unwrap_or(buildpath);
    format!("{unpadded}/bin/sbang")
}

/// gzip at level 6 with an empty header, as Spack writes its blobs.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).expect("in-memory write");
    e.finish().expect("in-memory write")
}

/// The padded build root Spack makes for `root` with `padded_length` (format doc 4.6).
pub fn padded_root(root: &str, length: usize) -> String {
    let pad_len = length.saturating_sub(root.len() + 1);
    if pad_len == 0 {
        return root.to_string();
    }
    let unit = "__spack_path_placeholder__";
    let mut pad = String::new();
    while pad.len() < pad_len {
        if !pad.is_empty() {
            pad.push('/');
        }
        pad.push_str(unit);
    }
    pad.truncate(pad_len);
    if pad.ends_with('/') {
        pad.pop();
        pad.push('_');
    }
    format!("{root}/{pad}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dag_hash_matches_spack_observed_value() {
        let node = json!({"name":"dep","version":"2.0","arch":{"platform":"linux","platform_os":"debian12","target":"x86_64"},"namespace":"builtin","annotations":{"original_specfile_version":5}});
        assert_eq!(dag_hash(&node), "hyki3qktactouk6ljutnwtpaqnmzlvep");
    }

    #[test]
    fn padding_matches_spack() {
        assert_eq!(
            padded_root("/tmp/sx/store", 128),
            "/tmp/sx/store/__spack_path_placeholder__/__spack_path_placeholder__/__spack_path_placeholder__/__spack_path_placeholder__/__spac"
        );
        assert_eq!(
            padded_root("/opt/fixture-store", 128),
            "/opt/fixture-store/__spack_path_placeholder__/__spack_path_placeholder__/__spack_path_placeholder__/__spack_path_placeholder__/_"
        );
        assert_eq!(padded_root("/opt/fixture-store", 128).len(), 128);
    }
}
