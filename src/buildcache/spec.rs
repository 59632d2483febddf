//! Spec JSON (specfile formats v2–v5): the DAG of a package and its dependencies.
//!
//! Nodes keep their raw JSON (for the database written at the install root) next to the
//! fields the engine needs: identity, architecture, compiler and typed dependency edges.

use indexmap::IndexMap;
use serde_json::Value;

use super::checksum::Sha256;
use super::FormatError;

/// A dependency edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEdge {
    pub name: String,
    pub hash: String,
    pub deptypes: Vec<String>,
    pub virtuals: Vec<String>,
}

impl DepEdge {
    pub fn is(&self, deptype: &str) -> bool {
        self.deptypes.iter().any(|d| d == deptype)
    }
}

/// One node of a spec DAG.
#[derive(Debug, Clone)]
pub struct SpecNode {
    pub name: String,
    pub version: String,
    pub hash: String,
    pub platform: String,
    pub platform_os: String,
    pub target: String,
    pub namespace: String,
    /// `compiler` object of specfile ≤ v4 (name, version).
    pub compiler: Option<(String, String)>,
    pub external: bool,
    pub deps: Vec<DepEdge>,
    /// The node as it appeared in the file.
    pub raw: Value,
}

impl SpecNode {
    /// `name@version/hash7`, the way users see a package.
    pub fn display(&self) -> String {
        format!("{}@{}/{}", self.name, self.version, short_hash(&self.hash))
    }

    /// Does the node answer to `spec`: `name`, `name@version` or `/hashprefix`?
    pub fn answers_to(&self, spec: &str) -> bool {
        let spec = spec.trim();
        if let Some(prefix) = spec.strip_prefix('/') {
            return self.hash.starts_with(prefix);
        }
        match spec.split_once('@') {
            Some((n, v)) => self.name == n && self.version == v,
            None => self.name == spec,
        }
    }

    /// `name-version-hash`, the stem of manifest names.
    pub fn stem(&self) -> String {
        super::sanitize_component(&format!("{}-{}-{}", self.name, self.version, self.hash))
    }

    /// Parse a node object (specfile v2–v5, or a database record's `spec`).
    pub fn from_json(v: &Value, what: &str) -> Result<Self, FormatError> {
        let obj = v
            .as_object()
            .ok_or_else(|| FormatError::invalid(what, "spec node is not an object"))?;
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let name = s("name").ok_or_else(|| FormatError::invalid(what, "spec node without name"))?;
        let hash = s("hash")
            .or_else(|| s("build_hash"))
            .ok_or_else(|| FormatError::invalid(what, format!("spec node {name} without hash")))?;
        if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FormatError::invalid(
                what,
                format!("spec node {name} has an invalid hash {hash:?}"),
            ));
        }
        let version = s("version").unwrap_or_default();
        let arch = obj.get("arch");
        let arch_s = |k: &str| {
            arch.and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let target = match arch.and_then(|a| a.get("target")) {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Object(t)) => t
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        };
        let compiler = obj.get("compiler").and_then(|c| {
            Some((
                c.get("name")?.as_str()?.to_string(),
                c.get("version")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ))
        });
        let mut deps = Vec::new();
        match obj.get("dependencies") {
            Some(Value::Array(list)) => {
                for d in list {
                    deps.push(parse_edge(d, None, what)?);
                }
            }
            // specfile v1 style: {name: {hash, type}}
            Some(Value::Object(map)) => {
                for (dname, d) in map {
                    deps.push(parse_edge(d, Some(dname), what)?);
                }
            }
            _ => {}
        }
        Ok(SpecNode {
            name,
            version,
            hash,
            platform: arch_s("platform"),
            platform_os: arch_s("platform_os"),
            target,
            namespace: s("namespace").unwrap_or_default(),
            compiler,
            external: obj.get("external").is_some_and(|e| !e.is_null()),
            deps,
            raw: v.clone(),
        })
    }
}

fn parse_edge(d: &Value, name: Option<&String>, what: &str) -> Result<DepEdge, FormatError> {
    let name = name
        .cloned()
        .or_else(|| d.get("name").and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| FormatError::invalid(what, "dependency without name"))?;
    let hash = ["hash", "build_hash", "full_hash"]
        .iter()
        .find_map(|k| d.get(*k).and_then(Value::as_str))
        .ok_or_else(|| FormatError::invalid(what, format!("dependency {name} without hash")))?
        .to_string();
    let strings = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    };
    let params = d.get("parameters");
    let deptypes = match params.and_then(|p| p.get("deptypes")) {
        Some(v) => strings(Some(v)),
        None => strings(d.get("type")),
    };
    let virtuals = strings(params.and_then(|p| p.get("virtuals")));
    Ok(DepEdge {
        name,
        hash,
        deptypes,
        virtuals,
    })
}

/// The compiler of `node`: the `compiler` object of specfiles ≤ v4, else the dependency
/// providing `c`, `cxx` or `fortran` (found with `lookup` by hash).
pub fn compiler_of<'a>(
    node: &SpecNode,
    lookup: impl Fn(&str) -> Option<&'a SpecNode>,
) -> Option<(String, String)> {
    if let Some(c) = &node.compiler {
        return Some(c.clone());
    }
    ["c", "cxx", "fortran"].iter().find_map(|lang| {
        node.deps
            .iter()
            .filter(|e| e.virtuals.iter().any(|v| v == lang))
            .find_map(|e| lookup(&e.hash))
            .map(|n| (n.name.clone(), n.version.clone()))
    })
}

/// Is `s` a full Spack DAG hash: 32 characters of Spack's base32 alphabet (`a-z`, `2-7`)?
pub fn is_dag_hash(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// The first 7 characters of a DAG hash.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..7).unwrap_or(hash)
}

/// A whole spec DAG (root first), as found in spec blobs and v2 spec files.
#[derive(Debug, Clone)]
pub struct SpecDag {
    pub nodes: IndexMap<String, SpecNode>,
    pub root: String,
    /// `buildcache_layout_version`, when present.
    pub layout_version: Option<i64>,
    /// `binary_cache_checksum.hash` (v2 spec files and OCI configs).
    pub binary_checksum: Option<Sha256>,
}

impl SpecDag {
    /// Parse `{"spec":{"_meta":…,"nodes":[…]}, …}`.
    pub fn parse(json: &[u8], what: &str) -> Result<Self, FormatError> {
        let v: Value = serde_json::from_slice(json).map_err(|source| FormatError::Json {
            what: what.to_string(),
            source,
        })?;
        Self::from_value(&v, what)
    }

    pub fn from_value(v: &Value, what: &str) -> Result<Self, FormatError> {
        let spec = v
            .get("spec")
            .ok_or_else(|| FormatError::invalid(what, "no \"spec\" member"))?;
        let list: Vec<Value> = match spec {
            Value::Object(o) => o
                .get("nodes")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| FormatError::invalid(what, "spec without nodes"))?,
            // specfile v1: a list of single-key maps {name: node}
            Value::Array(a) => a
                .iter()
                .filter_map(|m| m.as_object())
                .filter_map(|m| {
                    let (name, node) = m.iter().next()?;
                    let mut node = node.clone();
                    node.as_object_mut()?
                        .insert("name".into(), Value::String(name.clone()));
                    Some(node)
                })
                .collect(),
            _ => {
                return Err(FormatError::invalid(
                    what,
                    "\"spec\" is neither map nor list",
                ))
            }
        };
        let mut nodes = IndexMap::new();
        for n in &list {
            let node = SpecNode::from_json(n, what)?;
            nodes.entry(node.hash.clone()).or_insert(node);
        }
        let root = nodes
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| FormatError::invalid(what, "spec has no nodes"))?;
        if let Some(lv) = v.get("buildcache_layout_version").and_then(Value::as_i64) {
            if lv > 3 {
                return Err(FormatError::invalid(
                    what,
                    format!("buildcache_layout_version {lv} is newer than supported (3)"),
                ));
            }
        }
        Ok(SpecDag {
            nodes,
            root,
            layout_version: v.get("buildcache_layout_version").and_then(Value::as_i64),
            binary_checksum: match v.get("binary_cache_checksum").and_then(|c| c.get("hash")) {
                None => None,
                Some(h) => Some(h.as_str().and_then(Sha256::parse).ok_or_else(|| {
                    FormatError::invalid(what, format!("binary_cache_checksum {h} is not a sha256"))
                })?),
            },
        })
    }

    pub fn root_node(&self) -> &SpecNode {
        &self.nodes[&self.root]
    }

    /// The compiler of a node for `{compiler.*}` projections: the `compiler` object of old
    /// specfiles, else the dependency providing `c`, `cxx` or `fortran`.
    pub fn compiler_of(&self, node: &SpecNode) -> Option<(String, String)> {
        compiler_of(node, |hash| self.nodes.get(hash))
    }

    /// The nodes whose prefixes relocation maps for the root (format doc 7.1 step 4):
    /// breadth-first over link edges from the root (children by name), then the root's direct
    /// run dependencies; externals removed; each hash once.
    pub fn relocation_set(&self) -> Vec<&SpecNode> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::new();
        queue.push_back(self.root.clone());
        seen.insert(self.root.clone());
        while let Some(h) = queue.pop_front() {
            let Some(node) = self.nodes.get(&h) else {
                continue;
            };
            out.push(node);
            let mut children: Vec<&DepEdge> = node.deps.iter().filter(|e| e.is("link")).collect();
            children.sort_by(|a, b| a.name.cmp(&b.name));
            for e in children {
                if seen.insert(e.hash.clone()) {
                    queue.push_back(e.hash.clone());
                }
            }
        }
        let root = self.root_node();
        let mut run: Vec<&DepEdge> = root.deps.iter().filter(|e| e.is("run")).collect();
        run.sort_by(|a, b| a.name.cmp(&b.name));
        for e in run {
            if seen.insert(e.hash.clone()) {
                if let Some(n) = self.nodes.get(&e.hash) {
                    out.push(n);
                }
            }
        }
        out.retain(|n| !n.external);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAG: &str = r#"{"spec":{"_meta":{"version":5},"nodes":[
      {"name":"app","version":"1","arch":{"platform":"linux","platform_os":"debian12","target":{"name":"zen3"}},
       "dependencies":[{"name":"zlib","hash":"zzz","parameters":{"deptypes":["build","link"],"virtuals":[]}},
                       {"name":"gcc","hash":"ggg","parameters":{"deptypes":["build"],"virtuals":["c"]}},
                       {"name":"python","hash":"ppp","parameters":{"deptypes":["run"],"virtuals":[]}},
                       {"name":"bzip2","hash":"bbb","parameters":{"deptypes":["link"],"virtuals":[]}}],
       "hash":"aaa"},
      {"name":"zlib","version":"1.3","hash":"zzz","dependencies":[{"name":"glibc","hash":"lll","parameters":{"deptypes":["link"]}}]},
      {"name":"glibc","version":"2.36","hash":"lll","external":{"path":"/usr"}},
      {"name":"gcc","version":"12","hash":"ggg"},
      {"name":"python","version":"3","hash":"ppp"},
      {"name":"bzip2","version":"1","hash":"bbb"}]},"buildcache_layout_version":2}"#;

    #[test]
    fn relocation_set_is_bfs_by_name_then_run_deps_without_externals() {
        let dag = SpecDag::parse(DAG.as_bytes(), "t").unwrap();
        let names: Vec<_> = dag
            .relocation_set()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        assert_eq!(names, ["app", "bzip2", "zlib", "python"]);
        assert_eq!(dag.root_node().target, "zen3");
        assert_eq!(
            dag.compiler_of(dag.root_node()),
            Some(("gcc".into(), "12".into()))
        );
    }

    #[test]
    fn newer_layout_is_rejected() {
        let j = r#"{"spec":{"nodes":[{"name":"a","hash":"h"}]},"buildcache_layout_version":4}"#;
        assert!(SpecDag::parse(j.as_bytes(), "t").is_err());
    }
}
