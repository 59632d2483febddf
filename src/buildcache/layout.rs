//! Mirror-relative paths of the URL layouts v3 and v2.

use super::spec::SpecNode;
use super::{sanitize_component, FormatError};

/// Which URL layout a package was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V3,
    V2,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::V3 => "v3",
            Layout::V2 => "v2",
        })
    }
}

pub const V3_INDEX_MANIFEST: &str = "v3/manifests/index/index.manifest.json";
pub const V3_SPEC_DIR: &str = "v3/manifests/spec/";
pub const V3_KEY_DIR: &str = "v3/manifests/key/";
pub const V2_DIR: &str = "build_cache/";
pub const V2_INDEX: &str = "build_cache/index.json";

/// `v3/manifests/spec/<name>/<name>-<version>-<hash>.spec.manifest.json`; a name that
/// would make an empty or dot component (a hostile index) is refused.
pub fn v3_spec_manifest(name: &str, version: &str, hash: &str) -> Result<String, FormatError> {
    let mut path = String::with_capacity(V3_SPEC_DIR.len() + 2 * name.len() + 80);
    if v3_spec_manifest_into(&mut path, name, version, hash) {
        Ok(path)
    } else {
        Err(FormatError::invalid(
            format!(
                "package {:?}",
                format!("{name}@{version}/{}", super::spec::short_hash(hash))
            ),
            "its name cannot be a path component: refused",
        ))
    }
}

/// [`v3_spec_manifest`] into `path` (cleared first); `false` when the name is refused.
pub fn v3_spec_manifest_into(path: &mut String, name: &str, version: &str, hash: &str) -> bool {
    path.clear();
    path.push_str(V3_SPEC_DIR);
    super::sanitize_into(name, path);
    let dir = &path[V3_SPEC_DIR.len()..];
    if dir.is_empty() || dir == "." || dir == ".." {
        return false;
    }
    path.push('/');
    for (i, part) in [name, version, hash].into_iter().enumerate() {
        if i > 0 {
            path.push('-');
        }
        super::sanitize_into(part, path);
    }
    path.push_str(".spec.manifest.json");
    true
}

/// Parse `(name, version, hash)` from a v3 manifest path found by listing.
pub fn parse_v3_spec_manifest(path: &str) -> Option<(String, String, String)> {
    let rest = path.strip_prefix(V3_SPEC_DIR)?;
    let (name, file) = rest.split_once('/')?;
    let stem = file.strip_suffix(".spec.manifest.json")?;
    let (name_version, hash) = stem.rsplit_once('-')?;
    let version = name_version.strip_prefix(name)?.strip_prefix('-')?;
    Some((name.to_string(), version.to_string(), hash.to_string()))
}

/// The v2 `<stem>`: `<platform>-<os>-<target>-<compiler>-<cversion>-<name>-<version>-<hash>`.
pub fn v2_stem(node: &SpecNode, compiler: Option<&(String, String)>) -> String {
    let (cname, cver) = compiler
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .unwrap_or(("none", "none"));
    sanitize_component(&format!(
        "{}-{}-{}-{}-{}-{}-{}-{}",
        node.platform,
        node.platform_os,
        node.target,
        cname,
        cver,
        node.name,
        node.version,
        node.hash
    ))
}

/// `build_cache/<stem>.spec.json.sig` (signed) or `.spec.json` (unsigned).
pub fn v2_spec_file(stem: &str, signed: bool) -> String {
    format!(
        "{V2_DIR}{stem}.spec.json{}",
        if signed { ".sig" } else { "" }
    )
}

/// `build_cache/<arch>/<compiler>-<cversion>/<name>-<version>/<stem>.spack`
pub fn v2_tarball(node: &SpecNode, compiler: Option<&(String, String)>) -> String {
    let (cname, cver) = compiler
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .unwrap_or(("none", "none"));
    let arch = format!("{}-{}-{}", node.platform, node.platform_os, node.target);
    format!(
        "{V2_DIR}{}/{}/{}/{}.spack",
        sanitize_component(&arch),
        sanitize_component(&format!("{cname}-{cver}")),
        sanitize_component(&format!("{}-{}", node.name, node.version)),
        v2_stem(node, compiler)
    )
}

/// Parse `hash` from a v2 spec file name found by listing (`…-<hash>.spec.json[.sig]`).
pub fn parse_v2_spec_file(path: &str) -> Option<(String, bool)> {
    let file = path.strip_prefix(V2_DIR)?;
    if file.contains('/') {
        return None;
    }
    let (stem, signed) = match file.strip_suffix(".spec.json.sig") {
        Some(s) => (s, true),
        None => (file.strip_suffix(".spec.json")?, false),
    };
    let (_, hash) = stem.rsplit_once('-')?;
    Some((hash.to_string(), signed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_names_round_trip_including_git_versions() {
        let p = v3_spec_manifest("zlib", "git.0123abcd=1.2.3", "abc").unwrap();
        assert_eq!(
            p,
            "v3/manifests/spec/zlib/zlib-git.0123abcd_1.2.3-abc.spec.manifest.json"
        );
        let p = v3_spec_manifest("gcc-runtime", "12.2.0", "qyu").unwrap();
        assert!(v3_spec_manifest("..", "1", "h").is_err());
        assert!(v3_spec_manifest("", "1", "h").is_err());
        assert_eq!(
            v3_spec_manifest("a/b", "1", "h").unwrap(),
            "v3/manifests/spec/a_b/a_b-1-h.spec.manifest.json"
        );
        assert_eq!(
            parse_v3_spec_manifest(&p),
            Some(("gcc-runtime".into(), "12.2.0".into(), "qyu".into()))
        );
    }

    #[test]
    fn v2_names() {
        assert_eq!(
            parse_v2_spec_file(
                "build_cache/linux-debian12-x86_64-gcc-12.2.0-demo-1.0-ms5p.spec.json.sig"
            ),
            Some(("ms5p".into(), true))
        );
        assert_eq!(parse_v2_spec_file("build_cache/index.json"), None);
    }
}
