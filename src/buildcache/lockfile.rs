//! Spack environment lock files (`spack.lock`): the DAG hashes of the environment's roots
//! and of every concrete spec it holds. Pure parsing; no I/O.

use super::FormatError;

/// The packages a lock file names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockSpecs {
    /// `roots[].hash`, in file order.
    pub roots: Vec<String>,
    /// The keys of `concrete_specs` (roots and their dependencies), in file order.
    pub all: Vec<String>,
}

fn is_dag_hash(h: &str) -> bool {
    h.len() == 32
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// Parse the lock file `file` (for messages) of bytes `json`.
pub fn lock_hashes(json: &[u8], file: &str) -> Result<LockSpecs, FormatError> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|source| FormatError::Json {
            what: file.to_string(),
            source,
        })?;
    let bad = |m: String| FormatError::invalid(file, m);
    let specs = v
        .get("concrete_specs")
        .and_then(|c| c.as_object())
        .ok_or_else(|| bad("not a Spack lock file (no concrete_specs object)".into()))?;
    let mut out = LockSpecs::default();
    for h in specs.keys() {
        if !is_dag_hash(h) {
            return Err(bad(format!(
                "concrete_specs key {h:?} is not a Spack DAG hash"
            )));
        }
        out.all.push(h.clone());
    }
    for r in v
        .get("roots")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let h = r
            .get("hash")
            .and_then(|h| h.as_str())
            .ok_or_else(|| bad("a root without a hash".into()))?;
        if !specs.contains_key(h) {
            return Err(bad(format!("root {h:?} is not among concrete_specs")));
        }
        out.roots.push(h.to_string());
    }
    Ok(out)
}
