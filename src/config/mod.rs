//! Mirror configuration: which mirror to read and how to trust it, from CLI flags or from
//! the `mirrors.yaml` admins already write, in Spack's format (`mirrors:`) or Stackinator's
//! (`buildcache:`, `sourcemirror:`; format doc 9). Pure: no I/O but reading files.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use crate::trust::{Keyring, TrustError};

/// One mirror to read.
#[derive(Debug, Clone, Default)]
pub struct MirrorConfig {
    /// A name for logs (the config's mirror name).
    pub name: String,
    /// `file://…` URL or a plain path.
    pub url: String,
    /// Require signatures (the default for URL mirrors, as in Spack).
    pub signed: bool,
    /// Key files (armored or binary, one or many certificates each).
    pub key_files: Vec<PathBuf>,
    /// Directories whose files are all key files.
    pub keyring_dirs: Vec<PathBuf>,
    /// Keys given inline (Stackinator's base64 `public_key`), with where they came from.
    pub key_data: Vec<(Vec<u8>, PathBuf)>,
}

impl MirrorConfig {
    /// Load the trusted keys.
    pub fn keyring(&self) -> Result<Keyring, TrustError> {
        let mut ring = Keyring::default();
        for f in &self.key_files {
            ring.add_file(f)?;
        }
        for d in &self.keyring_dirs {
            ring.add_dir(d)?;
        }
        for (data, origin) in &self.key_data {
            ring.add_bytes(data, origin)?;
        }
        Ok(ring)
    }
}

/// A configuration file that cannot be used, naming the file and the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Read the binary mirrors of a Spack or Stackinator `mirrors.yaml`, in file order.
/// `mount_point` is the install root, for Stackinator's `mount_specific`.
pub fn load(path: &Path, mount_point: &str) -> Result<Vec<MirrorConfig>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, mount_point)
}

/// Parse a `mirrors.yaml` (see [`load`]); `path` names it and anchors relative key paths.
pub fn parse(text: &str, path: &Path, mount_point: &str) -> Result<Vec<MirrorConfig>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    let Value::Mapping(top) = &doc else {
        return Err(invalid("expected a mapping at the top".into()));
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    if let Some(mirrors) = top.get("mirrors") {
        let Value::Mapping(mirrors) = mirrors else {
            return Err(invalid(
                "`mirrors` must be a mapping of names to mirrors".into(),
            ));
        };
        for (name, entry) in mirrors {
            let name = name.as_str().unwrap_or_default().to_string();
            if let Some(m) =
                spack_mirror(&name, entry).map_err(|m| invalid(format!("mirror {name:?}: {m}")))?
            {
                out.push(m);
            }
        }
        return Ok(out);
    }
    let known = [
        "buildcache",
        "bootstrap",
        "sourcemirror",
        "sourcecache",
        "concretizer",
    ];
    if !top
        .keys()
        .any(|k| k.as_str().is_some_and(|k| known.contains(&k)))
    {
        return Err(invalid(
            "neither a Spack mirrors.yaml (`mirrors:`) nor a Stackinator one (`buildcache:`)"
                .into(),
        ));
    }
    if let Some(bc) = top.get("buildcache") {
        let name = str_of(bc, "name").unwrap_or("buildcache").to_string();
        let m = stackinator_mirror(&name, bc, base, mount_point)
            .map_err(|m| invalid(format!("buildcache: {m}")))?;
        out.extend(m);
    }
    if let Some(Value::Mapping(sm)) = top.get("sourcemirror") {
        for (name, entry) in sm {
            let name = name.as_str().unwrap_or_default().to_string();
            if entry.get("binary").and_then(Value::as_bool) == Some(true) {
                let m = spack_mirror(&name, entry)
                    .map_err(|m| invalid(format!("sourcemirror {name:?}: {m}")))?;
                out.extend(m);
            }
        }
    }
    Ok(out)
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A Spack mirror entry (short or long form); `None` when it is not a binary mirror.
fn spack_mirror(name: &str, entry: &Value) -> Result<Option<MirrorConfig>, String> {
    let (url, signed) = match entry {
        Value::String(url) => (url.clone(), true),
        Value::Mapping(_) => {
            if entry.get("binary").and_then(Value::as_bool) == Some(false) {
                return Ok(None);
            }
            let url = match entry.get("fetch") {
                Some(Value::String(u)) => Some(u.clone()),
                Some(f @ Value::Mapping(_)) => str_of(f, "url").map(str::to_string),
                _ => None,
            }
            .or_else(|| str_of(entry, "url").map(str::to_string))
            .ok_or("no `url` (or `fetch`)")?;
            (
                url,
                entry.get("signed").and_then(Value::as_bool).unwrap_or(true),
            )
        }
        _ => return Err("expected a URL or a mapping".into()),
    };
    Ok(Some(MirrorConfig {
        name: name.to_string(),
        signed: signed && !url.starts_with("oci"),
        url: expand_path(&url),
        ..Default::default()
    }))
}

/// Stackinator's `buildcache`: `fetch` alone when given, `mount_specific` appends the mount
/// point, `public_key` (a path relative to the file, or base64) is the trust anchor.
fn stackinator_mirror(
    name: &str,
    bc: &Value,
    base: &Path,
    mount_point: &str,
) -> Result<Option<MirrorConfig>, String> {
    if bc.get("binary").and_then(Value::as_bool) == Some(false) {
        return Ok(None);
    }
    let url = match bc.get("fetch") {
        Some(Value::String(u)) => u.clone(),
        Some(f @ Value::Mapping(_)) => str_of(f, "url").ok_or("`fetch` without `url`")?.to_string(),
        _ => str_of(bc, "url")
            .ok_or("no `url` (or `fetch`)")?
            .to_string(),
    };
    let url = if bc.get("mount_specific").and_then(Value::as_bool) == Some(true) {
        format!(
            "{}/{}",
            url.trim_end_matches('/'),
            mount_point.trim_start_matches('/')
        )
    } else {
        url
    };
    let mut m = MirrorConfig {
        name: name.to_string(),
        signed: bc.get("signed").and_then(Value::as_bool).unwrap_or(true),
        url: expand_path(&url),
        ..Default::default()
    };
    if let Some(key) = str_of(bc, "public_key") {
        let expanded = expand_vars(key);
        let p = base.join(&expanded);
        if p.is_file() {
            m.key_files.push(p);
        } else {
            use data_encoding::BASE64;
            let data = BASE64.decode(expanded.trim().as_bytes()).map_err(|_| {
                format!("public_key {key:?} is neither a file next to the config nor base64")
            })?;
            m.key_data
                .push((data, PathBuf::from(format!("public_key of {name}"))));
        }
    }
    Ok(Some(m))
}

/// Spack expands `~` and `$VAR` in bare paths; `file://` URLs are used verbatim.
fn expand_path(url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    expand_vars(url)
}

fn expand_vars(s: &str) -> String {
    let s = match (s.strip_prefix('~'), std::env::var("HOME")) {
        (Some(rest), Ok(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{home}{rest}")
        }
        _ => s.to_string(),
    };
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(b) = after.strip_prefix('{') {
            match b.find('}') {
                Some(j) => (&b[..j], &b[j + 1..]),
                None => ("", after),
            }
        } else {
            let j = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..j], &after[j..])
        };
        match std::env::var(name) {
            Ok(v) if !name.is_empty() => out.push_str(&v),
            _ => {
                out.push('$');
                out.push_str(&after[..after.len() - tail.len()]);
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spack_format_short_and_long_forms() {
        let y = "mirrors:\n  a: /srv/cache\n  b:\n    url: file:///x\n    signed: false\n  src:\n    url: file:///s\n    binary: false\n  c:\n    url: file:///ignored\n    fetch: {url: file:///f}\n  o: oci://ghcr.io/x/y\n";
        let m = parse(y, Path::new("/etc/m.yaml"), "/user-environment").unwrap();
        let got: Vec<_> = m
            .iter()
            .map(|m| (m.name.as_str(), m.url.as_str(), m.signed))
            .collect();
        assert_eq!(
            got,
            [
                ("a", "/srv/cache", true),
                ("b", "file:///x", false),
                ("c", "file:///f", true),
                ("o", "oci://ghcr.io/x/y", false)
            ]
        );
    }

    #[test]
    fn stackinator_format_mount_specific_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.asc"), "k").unwrap();
        let y = "buildcache:\n  url: file:///cache/\n  mount_specific: true\n  public_key: key.asc\n  private_key: secret.gpg\nsourcemirror:\n  bin: {url: /m, binary: true}\n  src: {url: /s}\nbootstrap: {url: /b}\n";
        let m = parse(y, &dir.path().join("mirrors.yaml"), "/user-environment").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].url, "file:///cache/user-environment");
        assert_eq!(m[0].key_files, [dir.path().join("key.asc")]);
        assert_eq!(m[1].url, "/m");
        let b64 = "buildcache:\n  url: /c\n  public_key: aGVsbG8=\n";
        let m = parse(b64, &dir.path().join("m.yaml"), "/u").unwrap();
        assert_eq!(m[0].key_data[0].0, b"hello");
        assert!(parse(
            "buildcache:\n  url: /c\n  public_key: '!!!'\n",
            &dir.path().join("m.yaml"),
            "/u"
        )
        .is_err());
    }

    #[test]
    fn errors_name_the_entry() {
        let e = parse("mirrors:\n  a: {signed: true}\n", Path::new("m.yaml"), "/u").unwrap_err();
        assert!(
            e.to_string().contains("\"a\"") && e.to_string().contains("url"),
            "{e}"
        );
        assert!(parse("other: 1\n", Path::new("m.yaml"), "/u").is_err());
        assert!(parse(": : :", Path::new("m.yaml"), "/u").is_err());
    }

    #[test]
    fn variables_expand_in_paths_only() {
        std::env::set_var("SPACKFS_TEST_VAR", "v");
        assert_eq!(
            expand_path("/a/$SPACKFS_TEST_VAR/${SPACKFS_TEST_VAR}x"),
            "/a/v/vx"
        );
        assert_eq!(
            expand_path("file:///a/$SPACKFS_TEST_VAR"),
            "file:///a/$SPACKFS_TEST_VAR"
        );
        assert_eq!(
            expand_path("/a/$SPACKFS_UNSET_VAR_X/b"),
            "/a/$SPACKFS_UNSET_VAR_X/b"
        );
    }
}
