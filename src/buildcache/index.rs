//! The package index: a Spack database JSON (`{"database":{"version":"8","installs":{…}}}`),
//! read as a stream (indexes of public caches run to hundreds of MB: nothing is held but the
//! records, and nothing is ever cut short).

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::spec::SpecNode;
use super::FormatError;

/// One record of a build-cache index.
#[derive(Debug, Clone)]
pub struct IndexRecord {
    pub node: SpecNode,
    pub in_buildcache: bool,
}

/// Parse an index database held in memory; records keep index order. Accepts DB versions
/// 6, 7 and 8.
pub fn parse(json: &[u8], what: &str) -> Result<Vec<IndexRecord>, FormatError> {
    parse_reader(json, what)
}

/// Parse an index database from a reader, record by record (the reader is read to the end
/// of the JSON document; trailing bytes other than whitespace are an error).
pub fn parse_reader(
    reader: impl std::io::Read,
    what: &str,
) -> Result<Vec<IndexRecord>, FormatError> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let db = Envelope::deserialize(&mut de).map_err(|source| FormatError::Json {
        what: what.to_string(),
        source,
    })?;
    de.end().map_err(|source| FormatError::Json {
        what: what.to_string(),
        source,
    })?;
    let db = db
        .database
        .ok_or_else(|| FormatError::invalid(what, "no \"database\" member"))?;
    let version = match db.version {
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
        .installs
        .ok_or_else(|| FormatError::invalid(what, "database without installs"))?;
    let mut out = Vec::with_capacity(installs.len());
    for (hash, rec) in installs {
        // The key replaces the spec's hash below, so it is held to the same rule.
        if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FormatError::invalid(
                what,
                format!("record keyed {hash:?}: not a DAG hash"),
            ));
        }
        let spec = rec
            .spec
            .ok_or_else(|| FormatError::invalid(what, format!("record {hash} without spec")))?;
        let mut node = SpecNode::from_json(&spec, what)?;
        // The key is authoritative (format doc 3.2).
        node.hash = hash;
        out.push(IndexRecord {
            in_buildcache: rec.in_buildcache.unwrap_or(false),
            node,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Envelope {
    database: Option<Database>,
}

#[derive(Deserialize)]
struct Database {
    version: Option<Value>,
    #[serde(default, deserialize_with = "records")]
    installs: Option<Vec<(String, RawRecord)>>,
}

#[derive(Deserialize)]
struct RawRecord {
    spec: Option<Value>,
    #[serde(default, deserialize_with = "lenient_bool")]
    in_buildcache: Option<bool>,
}

/// `in_buildcache` as Spack writes it (a boolean); anything else counts as absent.
fn lenient_bool<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Value::deserialize(d)?.as_bool())
}

/// The `installs` map as a list in file order (no map of the whole database is built).
fn records<'de, D: de::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<(String, RawRecord)>>, D::Error> {
    struct Records;
    impl<'de> Visitor<'de> for Records {
        type Value = Option<Vec<(String, RawRecord)>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of hashes to records")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let rec = map.next_value_seed(RecordSeed)?;
                out.push((key, rec));
            }
            Ok(Some(out))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Records)
}

struct RecordSeed;

impl<'de> DeserializeSeed<'de> for RecordSeed {
    type Value = RawRecord;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawRecord, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRecord;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an index record")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRecord, A::Error> {
                let mut rec = RawRecord {
                    spec: None,
                    in_buildcache: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "spec" => rec.spec = Some(map.next_value()?),
                        "in_buildcache" => rec.in_buildcache = map.next_value::<Value>()?.as_bool(),
                        // ref_count, path, installed, … are not needed to list packages.
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(rec)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_key_hashes_and_checks_versions() {
        let db = br#"{"database":{"installs":{
            "bbb":{"spec":{"name":"b","version":"1","hash":"zzz"},"ref_count":1,"in_buildcache":true},
            "aaa":{"spec":{"name":"a","version":"2","hash":"aaa"},"in_buildcache":false}
        },"version":"8"}}"#;
        let r = parse(db, "idx").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].node.name.as_str(), r[0].node.hash.as_str()),
            ("b", "bbb")
        );
        assert!(r[0].in_buildcache && !r[1].in_buildcache);
        assert!(parse(br#"{"database":{"version":"5","installs":{}}}"#, "i").is_err());
        assert!(parse(br#"{"database":{"version":8}}"#, "i").is_err());
        let e = parse(br#"{"database":{"version":"8","installs":{}}} x"#, "idx").unwrap_err();
        assert!(e.to_string().contains("idx"), "{e}");
    }

    /// Found by tests/properties.rs (index_db): the key of a record became its hash unchecked.
    #[test]
    fn a_record_key_that_is_no_hash_is_an_error() {
        for key in ["", "a/b", "..", "h h"] {
            let db = format!(
                r#"{{"database":{{"version":"8","installs":{{{key:?}:{{"spec":{{"name":"app","version":"1.0","hash":"aaaaaaa"}}}}}}}}}}"#
            );
            let e = parse(db.as_bytes(), "idx").expect_err(key).to_string();
            assert!(e.starts_with("idx: record keyed"), "{e}");
        }
    }

    #[test]
    fn a_truncated_index_is_an_error_not_a_short_list() {
        let db = br#"{"database":{"version":"8","installs":{"aaa":{"spec":{"name":"a","version":"2"}},"bbb":{"spec":"#;
        assert!(parse(db, "idx").is_err());
    }
}
