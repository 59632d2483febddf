//! Mirror configuration: which mirrors to read, in order, and how to trust and reach each,
//! from the `mirrors.yaml` admins already write, in Spack's format (`mirrors:`, format doc
//! 9.1) or Stackinator's (`buildcache:`, `sourcemirror:`, 9.2), or from a URL on the command
//! line. Checked as strictly as Spack's schema: a mistake names the file, the entry and the
//! field. Pure: no I/O but reading files; credentials are kept as the names of the
//! environment variables that hold them.

use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use crate::trust::{Keyring, TrustError};

/// Where a credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Written in the configuration.
    Literal(String),
    /// The value of this environment variable.
    Variable(String),
}

impl Credential {
    /// The value, read from the environment when it is a variable; `None` when unset or
    /// empty (Spack then treats the pair as absent).
    pub fn resolve(&self) -> Option<String> {
        let v = match self {
            Credential::Literal(s) => s.clone(),
            Credential::Variable(name) => std::env::var(name).ok()?,
        };
        (!v.is_empty()).then_some(v)
    }
}

/// Spack's `access_pair`: a key id (or user) and a secret (or password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPair {
    pub id: Credential,
    pub secret: Credential,
}

/// Spack's connection fields of a mirror (S3 and OCI use them; HTTP needs none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    pub access_pair: Option<AccessPair>,
    pub access_token_variable: Option<String>,
    /// The deprecated literal `access_token`.
    pub access_token: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    /// A named index view (v3).
    pub view: Option<String>,
}

/// One mirror to read.
#[derive(Debug, Clone, Default)]
pub struct MirrorConfig {
    /// A name for logs (the config's mirror name).
    pub name: String,
    /// `file://…`, a plain path, `http(s)://…`, `s3://…`, `oci://…`, `oci+http://…`.
    pub url: String,
    /// Require signatures (the default for URL mirrors, as in Spack).
    pub signed: bool,
    /// Key files (armored or binary, one or many certificates each).
    pub key_files: Vec<PathBuf>,
    /// Directories whose files are all key files.
    pub keyring_dirs: Vec<PathBuf>,
    /// Keys given inline (Stackinator's base64 `public_key`), with where they came from.
    pub key_data: Vec<(Vec<u8>, PathBuf)>,
    pub connection: Connection,
    /// Where it was configured (`FILE: mirror "NAME"`), for messages.
    pub origin: String,
}

impl MirrorConfig {
    /// A mirror given as a URL or path on the command line.
    pub fn from_url(url: &str) -> Self {
        MirrorConfig {
            name: url.to_string(),
            url: url.to_string(),
            signed: true,
            origin: format!("mirror {url}"),
            ..Default::default()
        }
    }

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

    /// Whether spackfs can read this mirror's kind of URL yet.
    pub fn support(&self) -> Support {
        support(&self.url)
    }
}

/// What spackfs can do with a mirror URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// `file://`, a path, `http://`, `https://`, `s3://`, `oci://`, `oci+http://`.
    Supported,
    /// A Spack mirror kind this version cannot read yet (`gs://`, `sftp://`…).
    NotYet(&'static str),
}

/// See [`Support`].
pub fn support(url: &str) -> Support {
    match url.split_once("://").map(|(s, _)| s) {
        None | Some("file" | "http" | "https" | "s3" | "oci" | "oci+http") => Support::Supported,
        Some("gs") => Support::NotYet("Google Cloud Storage (gs://)"),
        Some(_) => Support::NotYet("this kind of URL"),
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

/// Fields of a connection (`fetch:`/`push:` maps, and a mirror's top level).
const CONNECTION_FIELDS: &[&str] = &[
    "url",
    "view",
    "access_pair",
    "access_token_variable",
    "access_token",
    "profile",
    "endpoint_url",
];
/// Fields of a Spack mirror entry besides the connection fields.
const SPACK_FIELDS: &[&str] = &[
    "fetch", "push", "pull", "binary", "source", "signed", "autopush",
];
/// Fields of Stackinator's `buildcache` besides the connection fields.
const STACKINATOR_FIELDS: &[&str] = &[
    "fetch",
    "push",
    "name",
    "description",
    "mount_specific",
    "source",
    "binary",
    "signed",
    "autopush",
    "private_key",
    "public_key",
];
const STACKINATOR_TOP: &[&str] = &[
    "buildcache",
    "bootstrap",
    "sourcemirror",
    "sourcecache",
    "concretizer",
];

/// Parse a `mirrors.yaml` (see [`load`]); `path` names it and anchors relative key paths.
pub fn parse(text: &str, path: &Path, mount_point: &str) -> Result<Vec<MirrorConfig>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    crate::buildcache::buildinfo::check_yaml_expansion(text.as_bytes()).map_err(invalid)?;
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    let Value::Mapping(top) = &doc else {
        return Err(invalid(format!(
            "expected a mapping at the top (`mirrors:` or Stackinator's `buildcache:`), found {}",
            describe(&doc)
        )));
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let file = path.display().to_string();
    let mut out = Vec::new();
    if let Some(mirrors) = top.get("mirrors") {
        if let Some(other) = top.keys().find(|k| k.as_str() != Some("mirrors")) {
            return Err(invalid(format!(
                "unknown top-level key {} next to `mirrors`",
                describe(other)
            )));
        }
        let Value::Mapping(mirrors) = mirrors else {
            return Err(invalid(format!(
                "`mirrors` must be a mapping of names to mirrors, found {}",
                describe(mirrors)
            )));
        };
        for (name, entry) in mirrors {
            let name = key_name(name).map_err(|m| invalid(format!("mirrors: {m}")))?;
            let at = format!("mirror {name:?}");
            if let Some(mut m) =
                spack_mirror(&name, entry).map_err(|m| invalid(format!("{at}: {m}")))?
            {
                m.origin = format!("{file}: {at}");
                out.push(m);
            }
        }
        return Ok(out);
    }
    for k in top.keys() {
        if !k.as_str().is_some_and(|k| STACKINATOR_TOP.contains(&k)) {
            return Err(invalid(format!(
                "unknown top-level key {}: neither a Spack mirrors.yaml (`mirrors:`) nor a Stackinator one ({})",
                describe(k),
                STACKINATOR_TOP.join(", ")
            )));
        }
    }
    if let Some(bc) = top.get("buildcache") {
        let m = stackinator_mirror(bc, base, mount_point)
            .map_err(|m| invalid(format!("buildcache: {m}")))?;
        out.extend(m.map(|mut m| {
            m.origin = format!("{file}: buildcache {:?}", m.name);
            m
        }));
    }
    match top.get("sourcemirror") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(sm)) => {
            for (name, entry) in sm {
                let name = key_name(name).map_err(|m| invalid(format!("sourcemirror: {m}")))?;
                let at = format!("sourcemirror {name:?}");
                // A source mirror is a binary mirror only when it says so (default false).
                let binary = match entry {
                    Value::Mapping(map) => {
                        opt_bool(map, "binary").map_err(|m| invalid(format!("{at}: {m}")))?
                    }
                    _ => None,
                };
                if binary != Some(true) {
                    continue;
                }
                let m = spack_mirror(&name, entry).map_err(|m| invalid(format!("{at}: {m}")))?;
                out.extend(m.map(|mut m| {
                    m.origin = format!("{file}: {at}");
                    m
                }));
            }
        }
        Some(other) => {
            return Err(invalid(format!(
                "`sourcemirror` must be a mapping of names to mirrors, found {}",
                describe(other)
            )))
        }
    }
    Ok(out)
}

/// How a YAML value looks, for messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn key_name(k: &Value) -> Result<String, String> {
    match k {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!(
            "a mirror name must be a string, found {}",
            describe(other)
        )),
    }
}

fn check_fields(map: &Mapping, allowed: &[&[&str]]) -> Result<(), String> {
    for k in map.keys() {
        let ok = k
            .as_str()
            .is_some_and(|k| allowed.iter().any(|set| set.contains(&k)));
        if !ok {
            let mut all: Vec<&str> = allowed.iter().flat_map(|s| s.iter().copied()).collect();
            all.sort();
            return Err(format!(
                "unknown field {} (known: {})",
                describe(k),
                all.join(", ")
            ));
        }
    }
    Ok(())
}

fn opt_bool(map: &Mapping, key: &str) -> Result<Option<bool>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "field `{key}`: expected true or false, found {}",
            describe(other)
        )),
    }
}

/// A string field; `null` counts as absent where `nullable`.
fn opt_str(map: &Mapping, key: &str, nullable: bool) -> Result<Option<String>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Null) if nullable => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(format!("field `{key}`: must not be empty"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "field `{key}`: expected a string, found {}",
            describe(other)
        )),
    }
}

/// A mirror URL field: a string naming a supported scheme (or a path).
fn opt_url(map: &Mapping, key: &str) -> Result<Option<String>, String> {
    let Some(url) = opt_str(map, key, false)? else {
        return Ok(None);
    };
    if let Some((scheme, rest)) = url.split_once("://") {
        let known = [
            "file", "http", "https", "s3", "gs", "oci", "oci+http", "sftp", "ftp",
        ];
        if !known.contains(&scheme) {
            return Err(format!(
                "field `{key}`: unknown URL scheme {scheme:?} in {url:?}"
            ));
        }
        if rest.is_empty() {
            return Err(format!("field `{key}`: {url:?} names no location"));
        }
    }
    Ok(Some(url))
}

/// Spack's `access_pair`: `{id | id_variable, secret_variable}`, or the deprecated list
/// `[id, secret]`.
fn access_pair(v: &Value) -> Result<AccessPair, String> {
    let field = "field `access_pair`";
    match v {
        Value::Mapping(map) => {
            check_fields(map, &[&["id", "id_variable", "secret_variable"]])
                .map_err(|m| format!("{field}: {m}"))?;
            let id = opt_str(map, "id", false).map_err(|m| format!("{field}: {m}"))?;
            let id_var = opt_str(map, "id_variable", false).map_err(|m| format!("{field}: {m}"))?;
            let id = match (id, id_var) {
                (Some(l), None) => Credential::Literal(l),
                (None, Some(var)) => Credential::Variable(var),
                (Some(_), Some(_)) => {
                    return Err(format!("{field}: give `id` or `id_variable`, not both"))
                }
                (None, None) => return Err(format!("{field}: `id` or `id_variable` is required")),
            };
            let secret = opt_str(map, "secret_variable", false)
                .map_err(|m| format!("{field}: {m}"))?
                .ok_or_else(|| format!("{field}: `secret_variable` is required"))?;
            Ok(AccessPair {
                id,
                secret: Credential::Variable(secret),
            })
        }
        Value::Sequence(items) => match items.as_slice() {
            [Value::String(id), Value::String(secret)] => {
                tracing::warn!(
                    "access_pair as a list [id, secret] is deprecated (Spack 1.2 rejects it): use id_variable and secret_variable"
                );
                Ok(AccessPair {
                    id: Credential::Literal(id.clone()),
                    secret: Credential::Literal(secret.clone()),
                })
            }
            _ => Err(format!(
                "{field}: a list must be [id, secret] (two strings)"
            )),
        },
        other => Err(format!(
            "{field}: expected a mapping with id_variable and secret_variable, found {}",
            describe(other)
        )),
    }
}

/// The connection fields of `map`, each falling back to `fallback`'s (Spack's rule for a
/// `fetch` map under a mirror with top-level fields).
fn connection(map: &Mapping, fallback: Option<&Connection>) -> Result<Connection, String> {
    let access_pair = match map.get("access_pair") {
        None | Some(Value::Null) => None,
        Some(v) => Some(access_pair(v)?),
    };
    let access_token = opt_str(map, "access_token", true)?;
    if access_token.is_some() {
        tracing::warn!(
            "a literal access_token is deprecated (Spack 1.2 rejects it): use access_token_variable"
        );
    }
    let c = Connection {
        access_pair,
        access_token_variable: opt_str(map, "access_token_variable", true)?,
        access_token,
        endpoint_url: opt_str(map, "endpoint_url", true)?,
        profile: opt_str(map, "profile", true)?,
        view: opt_str(map, "view", true)?,
    };
    Ok(match fallback {
        None => c,
        Some(f) => Connection {
            access_pair: c.access_pair.or_else(|| f.access_pair.clone()),
            access_token_variable: c
                .access_token_variable
                .or_else(|| f.access_token_variable.clone()),
            access_token: c.access_token.or_else(|| f.access_token.clone()),
            endpoint_url: c.endpoint_url.or_else(|| f.endpoint_url.clone()),
            profile: c.profile.or_else(|| f.profile.clone()),
            view: c.view.or_else(|| f.view.clone()),
        },
    })
}

/// A Spack mirror entry (short or long form); `None` when it is not a binary mirror.
fn spack_mirror(name: &str, entry: &Value) -> Result<Option<MirrorConfig>, String> {
    let (url, signed, conn) = match entry {
        Value::String(url) if url.trim().is_empty() => return Err("the URL is empty".into()),
        Value::String(url) => (url.clone(), true, Connection::default()),
        Value::Mapping(map) => {
            check_fields(map, &[CONNECTION_FIELDS, SPACK_FIELDS])?;
            for f in ["source", "autopush"] {
                opt_bool(map, f)?;
            }
            if opt_bool(map, "binary")? == Some(false) {
                return Ok(None);
            }
            let top = connection(map, None)?;
            let top_url = opt_url(map, "url")?;
            let fetch = map.get("fetch").or_else(|| map.get("pull"));
            let (url, conn) = match fetch {
                None | Some(Value::Null) => (top_url, top),
                Some(Value::String(u)) => {
                    let m = Mapping::from_iter([(Value::from("url"), Value::from(u.clone()))]);
                    (opt_url(&m, "url").map_err(|e| format!("fetch: {e}"))?, top)
                }
                Some(Value::Mapping(f)) => {
                    check_fields(f, &[CONNECTION_FIELDS]).map_err(|m| format!("fetch: {m}"))?;
                    let url = opt_url(f, "url").map_err(|m| format!("fetch: {m}"))?;
                    (
                        url.or(top_url),
                        connection(f, Some(&top)).map_err(|m| format!("fetch: {m}"))?,
                    )
                }
                Some(other) => {
                    return Err(format!(
                        "field `fetch`: expected a URL or a mapping, found {}",
                        describe(other)
                    ))
                }
            };
            if let Some(push) = map.get("push") {
                match push {
                    Value::String(_) | Value::Null => {}
                    Value::Mapping(p) => {
                        check_fields(p, &[CONNECTION_FIELDS]).map_err(|m| format!("push: {m}"))?
                    }
                    other => {
                        return Err(format!(
                            "field `push`: expected a URL or a mapping, found {}",
                            describe(other)
                        ))
                    }
                }
            }
            let url = url.ok_or("field `url` is missing (or give `fetch` with a `url`)")?;
            (url, opt_bool(map, "signed")?.unwrap_or(true), conn)
        }
        other => {
            return Err(format!(
                "expected a URL or a mapping, found {}",
                describe(other)
            ))
        }
    };
    Ok(Some(MirrorConfig {
        name: name.to_string(),
        // OCI caches are unsigned, but never silently: the mirror layer refuses a signed
        // OCI mirror (`signed: false` or --unsigned is required).
        signed,
        url: expand_path(&url),
        connection: conn,
        ..Default::default()
    }))
}

/// Stackinator's `buildcache`: `fetch` alone when given, `mount_specific` appends the mount
/// point, `public_key` (a path relative to the file, or base64) is the trust anchor.
fn stackinator_mirror(
    bc: &Value,
    base: &Path,
    mount_point: &str,
) -> Result<Option<MirrorConfig>, String> {
    let Value::Mapping(map) = bc else {
        return Err(format!("expected a mapping, found {}", describe(bc)));
    };
    check_fields(map, &[CONNECTION_FIELDS, STACKINATOR_FIELDS])?;
    for f in ["source", "autopush"] {
        opt_bool(map, f)?;
    }
    opt_str(map, "description", true)?;
    opt_str(map, "private_key", true)?;
    let name = opt_str(map, "name", false)?.unwrap_or_else(|| "buildcache".into());
    if opt_bool(map, "binary")? == Some(false) {
        return Ok(None);
    }
    let (url, conn) = match map.get("fetch") {
        None | Some(Value::Null) => (
            opt_url(map, "url")?.ok_or("field `url` is missing (or give `fetch`)")?,
            connection(map, None)?,
        ),
        Some(Value::String(u)) => {
            let m = Mapping::from_iter([(Value::from("url"), Value::from(u.clone()))]);
            (
                opt_url(&m, "url")
                    .map_err(|e| format!("fetch: {e}"))?
                    .ok_or("fetch: empty")?,
                Connection::default(),
            )
        }
        Some(Value::Mapping(f)) => {
            check_fields(f, &[CONNECTION_FIELDS]).map_err(|m| format!("fetch: {m}"))?;
            (
                opt_url(f, "url")
                    .map_err(|m| format!("fetch: {m}"))?
                    .ok_or("fetch: field `url` is missing")?,
                connection(f, None).map_err(|m| format!("fetch: {m}"))?,
            )
        }
        Some(other) => {
            return Err(format!(
                "field `fetch`: expected a URL or a mapping, found {}",
                describe(other)
            ))
        }
    };
    let url = if opt_bool(map, "mount_specific")? == Some(true) {
        format!(
            "{}/{}",
            url.trim_end_matches('/'),
            mount_point.trim_start_matches('/')
        )
    } else {
        url
    };
    let mut m = MirrorConfig {
        name: name.clone(),
        signed: opt_bool(map, "signed")?.unwrap_or(true),
        url: expand_path(&url),
        connection: conn,
        ..Default::default()
    };
    if let Some(key) = opt_str(map, "public_key", true)? {
        let expanded = expand_vars(&key);
        let p = base.join(&expanded);
        if p.is_file() {
            m.key_files.push(p);
        } else {
            use data_encoding::BASE64;
            let data = BASE64.decode(expanded.trim().as_bytes()).map_err(|_| {
                format!(
                    "field `public_key`: {key:?} is neither a file next to the config nor base64"
                )
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
                ("o", "oci://ghcr.io/x/y", true)
            ]
        );
        assert_eq!(m[3].support(), Support::Supported);
        assert_eq!(m[0].origin, "/etc/m.yaml: mirror \"a\"");
    }

    #[test]
    fn connection_fields_fall_back_to_the_top_level() {
        let y = "mirrors:\n  s3:\n    url: s3://bucket/cache\n    access_pair: {id_variable: AK, secret_variable: SK}\n    endpoint_url: http://127.0.0.1:9000\n    fetch:\n      url: s3://bucket/fetch\n      profile: site\n    push: {url: s3://bucket/push, access_pair: {id: me, secret_variable: P}}\n";
        let m = parse(y, Path::new("m.yaml"), "/u").unwrap();
        assert_eq!(m[0].url, "s3://bucket/fetch");
        let c = &m[0].connection;
        assert_eq!(
            c.access_pair,
            Some(AccessPair {
                id: Credential::Variable("AK".into()),
                secret: Credential::Variable("SK".into())
            })
        );
        assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.profile.as_deref(), Some("site"));
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
    }

    /// Each malformed configuration is refused with a message naming the file, the entry
    /// and the field.
    #[test]
    fn mistakes_name_the_file_the_entry_and_the_field() {
        let cases: &[(&str, &[&str])] = &[
            ("mirrors:\n  a: {signed: true}\n", &["\"a\"", "url"]),
            ("mirrors:\n  a: {url: /x, signed: \"yes\"}\n", &["\"a\"", "`signed`", "\"yes\""]),
            ("mirrors:\n  a: {url: /x, binary: 1}\n", &["\"a\"", "`binary`"]),
            ("mirrors:\n  a: {url: /x, sigend: true}\n", &["\"a\"", "sigend"]),
            ("mirrors:\n  a: {url: [/x]}\n", &["\"a\"", "`url`", "list"]),
            ("mirrors:\n  a: {url: htp://host/x}\n", &["\"a\"", "`url`", "htp"]),
            ("mirrors:\n  a: {url: /x, fetch: 3}\n", &["\"a\"", "`fetch`"]),
            ("mirrors:\n  a: {fetch: {profile: p}}\n", &["\"a\"", "url"]),
            ("mirrors:\n  a: {url: s3://b, access_pair: {id_variable: A}}\n", &["\"a\"", "access_pair", "secret_variable"]),
            ("mirrors:\n  a: {url: s3://b, access_pair: {id: x, id_variable: A, secret_variable: S}}\n", &["\"a\"", "access_pair", "not both"]),
            ("mirrors:\n  a: {url: s3://b, endpoint_url: 9000}\n", &["\"a\"", "endpoint_url"]),
            ("mirrors:\n  a: [/x]\n", &["\"a\"", "list"]),
            ("mirrors: [/x]\n", &["`mirrors`", "mapping"]),
            ("buildcache:\n  url: /c\n  mount_specific: \"yes\"\n", &["buildcache", "`mount_specific`"]),
            ("buildcache:\n  url: /c\n  public_key: '!!!'\n", &["buildcache", "`public_key`"]),
            ("buildcach:\n  url: /c\n", &["buildcach", "top-level"]),
            ("buildcache: /c\n", &["buildcache", "mapping"]),
            ("buildcache:\n  url: /c\n  fetch: {ur: /d}\n", &["buildcache", "fetch", "ur"]),
            ("sourcemirror:\n  s: {url: /x, binary: \"no\"}\n", &["sourcemirror \"s\"", "`binary`"]),
            ("mirrors:\n  a: ''\n", &["\"a\"", "empty"]),
        ];
        for (yaml, needles) in cases {
            let e = parse(yaml, Path::new("/etc/spack/mirrors.yaml"), "/u")
                .expect_err(yaml)
                .to_string();
            assert!(e.starts_with("/etc/spack/mirrors.yaml: "), "{yaml}: {e}");
            for n in *needles {
                assert!(e.contains(n), "{yaml}: {e:?} lacks {n:?}");
            }
        }
        let e = parse(": : :", Path::new("m.yaml"), "/u").unwrap_err();
        assert!(e.to_string().starts_with("m.yaml: invalid YAML"), "{e}");
    }

    /// Found by tests/properties.rs (mirrors_yaml): aliases to a long scalar expanded a
    /// 72 KB file to 70 MB of values.
    #[test]
    fn aliases_cannot_expand_a_config_far_past_its_size() {
        let mut y = format!("zz: &big \"{}\"\nmirrors:\n", "a".repeat(16 << 10));
        for i in 0..4096 {
            y.push_str(&format!("  m{i}: *big\n"));
        }
        let e = parse(&y, Path::new("m.yaml"), "/u")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.yaml: its aliases expand"), "{e}");
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
