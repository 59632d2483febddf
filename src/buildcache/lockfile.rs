//! Spack environment lock files (`spack.lock`): which packages an environment is made of.
//!
//! A lock file is JSON: `_meta` (with `"file-type": "spack-lockfile"`), `roots` (the specs
//! the user asked for, `[{"hash": H, "spec": "zlib@1.3"}]`) and `concrete_specs` (every node
//! of the environment's DAG, dependencies included, keyed by DAG hash). Only the hashes are
//! read here: what they stand for comes from a mirror's index. Every hash is checked to be
//! a Spack DAG hash, since callers look packages up (and may make paths) by it. Pure.

use serde_json::Value;

use super::spec::is_dag_hash;
use super::FormatError;

/// The hashes a lock file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSpecs {
    /// The environment's roots, in file order (each also a key of `concrete_specs`).
    pub roots: Vec<String>,
    /// Every key of `concrete_specs`, in file order (roots and all their dependencies).
    pub all: Vec<String>,
}

/// Parse lock file `json`; `file` names it in errors (its path).
pub fn lock_hashes(json: &[u8], file: &str) -> Result<LockSpecs, FormatError> {
    let v: Value = serde_json::from_slice(json).map_err(|source| FormatError::Json {
        what: format!("lock file {file}"),
        source,
    })?;
    let not_lock = |why: &str| {
        FormatError::invalid(
            format!("lock file {file}"),
            format!("not a Spack lock file: {why}"),
        )
    };
    let obj = v.as_object().ok_or_else(|| not_lock("not a JSON object"))?;
    let file_type = obj
        .get("_meta")
        .and_then(|m| m.get("file-type"))
        .and_then(Value::as_str);
    if file_type != Some("spack-lockfile") {
        return Err(not_lock("no _meta.file-type \"spack-lockfile\""));
    }
    let specs = obj
        .get("concrete_specs")
        .and_then(Value::as_object)
        .ok_or_else(|| not_lock("no concrete_specs object"))?;
    let bad_hash = |where_: &str, h: &str| {
        FormatError::invalid(
            format!("lock file {file}"),
            format!(
                "{where_}: {:?} is not a Spack DAG hash (32 characters a-z, 2-7)",
                h.chars().take(80).collect::<String>()
            ),
        )
    };
    let mut all = Vec::with_capacity(specs.len());
    for key in specs.keys() {
        if !is_dag_hash(key) {
            return Err(bad_hash("concrete_specs key", key));
        }
        all.push(key.clone());
    }
    let roots_v = obj
        .get("roots")
        .and_then(Value::as_array)
        .ok_or_else(|| not_lock("no roots array"))?;
    let mut roots = Vec::with_capacity(roots_v.len());
    for (i, r) in roots_v.iter().enumerate() {
        let hash = r
            .get("hash")
            .and_then(Value::as_str)
            .ok_or_else(|| not_lock(&format!("root {i} has no hash")))?;
        if !is_dag_hash(hash) {
            return Err(bad_hash(&format!("root {i}"), hash));
        }
        if !specs.contains_key(hash) {
            return Err(FormatError::invalid(
                format!("lock file {file}"),
                format!("root {i} ({hash}) is not among its concrete_specs"),
            ));
        }
        roots.push(hash.to_string());
    }
    Ok(LockSpecs { roots, all })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREET: &str = "lvktxdbzy5xjz4y42kaknkq7gwcfi4qz";
    const LIB: &str = "guhtpijvlvr3tcgzl5zl3c6avrmpy6cw";

    fn lock(roots: &str, specs: &str) -> String {
        format!(
            r#"{{"_meta":{{"file-type":"spack-lockfile","lockfile-version":6,"specfile-version":5}},
            "spack":{{"version":"1.2.0"}},"roots":{roots},"concrete_specs":{specs}}}"#
        )
    }

    #[test]
    fn roots_and_all_keys_in_file_order() {
        let json = lock(
            &format!(r#"[{{"hash":"{GREET}","spec":"fixture-greet"}}]"#),
            &format!(
                r#"{{"{GREET}":{{"name":"fixture-greet"}},"{LIB}":{{"name":"fixture-libgreet"}}}}"#
            ),
        );
        let l = lock_hashes(json.as_bytes(), "spack.lock").unwrap();
        assert_eq!(l.roots, vec![GREET.to_string()]);
        assert_eq!(l.all, vec![GREET.to_string(), LIB.to_string()]);
    }

    #[test]
    fn errors_name_the_file_and_the_fault() {
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "invalid JSON"),
            ("[1,2]".into(), "not a JSON object"),
            (
                r#"{"roots":[],"concrete_specs":{}}"#.into(),
                "spack-lockfile",
            ),
            (
                r#"{"_meta":{"file-type":"spack-lockfile"},"roots":[]}"#.into(),
                "concrete_specs",
            ),
            (
                lock("[]", r#"{"../../etc/passwd0000000000000000":{}}"#),
                "is not a Spack DAG hash",
            ),
            (
                lock("[]", &format!(r#"{{"{}":{{}}}}"#, GREET.to_uppercase())),
                "is not a Spack DAG hash",
            ),
            (
                lock(r#"[{"spec":"x"}]"#, &format!(r#"{{"{GREET}":{{}}}}"#)),
                "root 0 has no hash",
            ),
            (
                lock(
                    &format!(r#"[{{"hash":"{LIB}"}}]"#),
                    &format!(r#"{{"{GREET}":{{}}}}"#),
                ),
                "not among its concrete_specs",
            ),
            (
                lock(r#"[{"hash":"short"}]"#, &format!(r#"{{"{GREET}":{{}}}}"#)),
                "root 0: \"short\" is not a Spack DAG hash",
            ),
        ];
        for (json, needle) in cases {
            let e = lock_hashes(json.as_bytes(), "/env/spack.lock")
                .expect_err(&json)
                .to_string();
            assert!(e.starts_with("lock file /env/spack.lock"), "{e}");
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn dag_hashes_are_32_base32_characters() {
        assert!(is_dag_hash(GREET));
        assert!(!is_dag_hash(&GREET[1..]));
        assert!(!is_dag_hash(&format!("{}1", &GREET[1..])));
        assert!(!is_dag_hash(&format!("{}8", &GREET[1..])));
        assert!(!is_dag_hash(""));
    }
}
