//! The package index: a Spack database JSON (`{"database":{"version":"8","installs":{…}}}`).

use serde_json::Value;

use super::spec::SpecNode;
use super::FormatError;

/// One record of a build-cache index.
#[derive(Debug, Clone)]
pub struct IndexRecord {
    pub node: SpecNode,
    pub in_buildcache: bool,
}

/// Parse an index database; records keep index order. Accepts DB versions 6, 7 and 8.
pub fn parse(json: &[u8], what: &str) -> Result<Vec<IndexRecord>, FormatError> {
    let v: Value = serde_json::from_slice(json).map_err(|source| FormatError::Json {
        what: what.to_string(),
        source,
    })?;
    let db = v
        .get("database")
        .ok_or_else(|| FormatError::invalid(what, "no \"database\" member"))?;
    let version = match db.get("version") {
        Some(Value::String(s)) => s.parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .ok_or_else(|| FormatError::invalid(what, "database without version"))?;
    if !(6..=8).contains(&version) {
        return Err(FormatError::invalid(
            what,
            format!("database version {version} is not supported (6 to 8)"),
        ));
    }
    let installs = db
        .get("installs")
        .and_then(Value::as_object)
        .ok_or_else(|| FormatError::invalid(what, "database without installs"))?;
    let mut out = Vec::with_capacity(installs.len());
    for (hash, rec) in installs {
        let spec = rec
            .get("spec")
            .ok_or_else(|| FormatError::invalid(what, format!("record {hash} without spec")))?;
        let mut node = SpecNode::from_json(spec, what)?;
        // The key is authoritative (format doc 3.2).
        node.hash = hash.clone();
        out.push(IndexRecord {
            in_buildcache: rec
                .get("in_buildcache")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            node,
        });
    }
    Ok(out)
}
