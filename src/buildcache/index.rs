//! The package index: a Spack database JSON (`{"database":{"version":"8","installs":{…}}}`),
//! read as a stream (indexes of public caches run to hundreds of MB: nothing is held but the
//! records, and nothing is ever cut short).

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::rawspec::SpoolWriter;
use super::spec::{Interner, SpecNode};
use super::FormatError;

/// One record of a build-cache index.
#[derive(Debug, Clone)]
pub struct IndexRecord {
    pub node: SpecNode,
    pub in_buildcache: bool,
}

/// Parse an index database held in memory; records keep index order. Accepts DB versions
/// 6, 7 and 8. The nodes keep no JSON.
pub fn parse(json: &[u8], what: &str) -> Result<Vec<IndexRecord>, FormatError> {
    parse_reader(json, what, None)
}

/// Parse an index database from a reader in one pass, record by record (the reader is read
/// to the end of the JSON document; trailing bytes other than whitespace are an error).
/// Each record's spec is read as text, its fields taken from that text (strings shared
/// across records), and the text appended to `spool` when one is given (the node then
/// points at it); nothing else of the record is held.
pub fn parse_reader(
    reader: impl std::io::Read,
    what: &str,
    spool: Option<&mut SpoolWriter>,
) -> Result<Vec<IndexRecord>, FormatError> {
    let mut state = Parse {
        what,
        out: Vec::new(),
        interner: Interner::default(),
        spool,
        error: None,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = EnvelopeSeed(&mut state).deserialize(&mut de);
    let json_err = |source| FormatError::Json {
        what: what.to_string(),
        source,
    };
    let version = match parsed {
        Ok(v) => v,
        // A record that failed is the error to report, not serde's wrapping of it.
        Err(e) => return Err(state.error.take().unwrap_or_else(|| json_err(e))),
    };
    de.end().map_err(json_err)?;
    let Some(db) = version else {
        return Err(FormatError::invalid(what, "no \"database\" member"));
    };
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
    if !db.installs {
        return Err(FormatError::invalid(what, "database without installs"));
    }
    if let Some(spool) = state.spool.take() {
        spool
            .flush()
            .map_err(|e| FormatError::invalid(what, format!("keeping the specs: {e}")))?;
    }
    Ok(state.out)
}

/// The parse in progress.
struct Parse<'w, 's> {
    what: &'w str,
    out: Vec<IndexRecord>,
    interner: Interner,
    spool: Option<&'s mut SpoolWriter>,
    /// The error of a record, reported instead of serde's custom error carrying it.
    error: Option<FormatError>,
}

impl Parse<'_, '_> {
    fn record(
        &mut self,
        key: String,
        spec: &RawValue,
        in_cache: Option<bool>,
    ) -> Result<(), FormatError> {
        let what = self.what;
        // The key replaces the spec's hash below, so it is held to the same rule.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FormatError::invalid(
                what,
                format!("record keyed {key:?}: not a DAG hash"),
            ));
        }
        let mut node = SpecNode::from_text(spec.get(), what, &mut self.interner)?;
        let differs = node.hash != key;
        if let Some(spool) = self.spool.as_deref_mut() {
            node.raw = spool
                .append(spec.get(), differs)
                .map_err(|e| FormatError::invalid(what, format!("keeping the specs: {e}")))?;
        }
        // The key is authoritative (format doc 3.2).
        node.hash = key;
        self.out.push(IndexRecord {
            in_buildcache: in_cache.unwrap_or(false),
            node,
        });
        Ok(())
    }
}

/// What the database says besides its records.
struct DbHead {
    version: Option<Value>,
    /// `installs` was a map.
    installs: bool,
}

/// `{"database": …}`; returns the database's head (`None`: no `database` member).
struct EnvelopeSeed<'p, 'w, 's>(&'p mut Parse<'w, 's>);

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_, '_, '_> {
    type Value = Option<DbHead>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V<'p, 'w, 's>(&'p mut Parse<'w, 's>);
        impl<'de> Visitor<'de> for V<'_, '_, '_> {
            type Value = Option<DbHead>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Spack database")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut head = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<str>>()? {
                    if key == "database" && head.is_none() {
                        head = Some(map.next_value_seed(DatabaseSeed(&mut *self.0))?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(head)
            }
        }
        d.deserialize_map(V(self.0))
    }
}

struct DatabaseSeed<'p, 'w, 's>(&'p mut Parse<'w, 's>);

impl<'de> DeserializeSeed<'de> for DatabaseSeed<'_, '_, '_> {
    type Value = DbHead;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V<'p, 'w, 's>(&'p mut Parse<'w, 's>);
        impl<'de> Visitor<'de> for V<'_, '_, '_> {
            type Value = DbHead;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a database object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut head = DbHead {
                    version: None,
                    installs: false,
                };
                while let Some(key) = map.next_key::<std::borrow::Cow<str>>()? {
                    match key.as_ref() {
                        "version" => head.version = Some(map.next_value()?),
                        // Records of a second `installs` would be read twice: one only.
                        "installs" if !head.installs => {
                            head.installs = map.next_value_seed(InstallsSeed(&mut *self.0))?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(head)
            }
        }
        d.deserialize_map(V(self.0))
    }
}

/// The `installs` map, record by record in file order (no map of the whole database is
/// built); `false` when it is null.
struct InstallsSeed<'p, 'w, 's>(&'p mut Parse<'w, 's>);

impl<'de> DeserializeSeed<'de> for InstallsSeed<'_, '_, '_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        struct V<'p, 'w, 's>(&'p mut Parse<'w, 's>);
        impl<'de> Visitor<'de> for V<'_, '_, '_> {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of hashes to records")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
                while let Some(key) = map.next_key::<String>()? {
                    let rec: RawRecord = map.next_value()?;
                    let spec = rec.spec.ok_or_else(|| {
                        self.0.error = Some(FormatError::invalid(
                            self.0.what,
                            format!("record {key} without spec"),
                        ));
                        de::Error::custom("record without spec")
                    })?;
                    if let Err(e) = self.0.record(key, &spec, rec.in_buildcache) {
                        let msg = e.to_string();
                        self.0.error = Some(e);
                        return Err(de::Error::custom(msg));
                    }
                }
                Ok(true)
            }
            fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
                Ok(false)
            }
        }
        d.deserialize_any(V(self.0))
    }
}

/// A record: its spec's text, and `in_buildcache`.
struct RawRecord {
    spec: Option<Box<RawValue>>,
    in_buildcache: Option<bool>,
}

impl<'de> Deserialize<'de> for RawRecord {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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
                while let Some(key) = map.next_key::<std::borrow::Cow<str>>()? {
                    match key.as_ref() {
                        "spec" => rec.spec = Some(map.next_value()?),
                        // As Spack writes it (a boolean); anything else counts as absent.
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
