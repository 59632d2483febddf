//! `.spack/binary_distribution`: the relocation metadata inside each tarball (format doc 5.4).

use indexmap::IndexMap;
use serde::Deserialize;

use super::FormatError;

/// The parsed `binary_distribution` YAML.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BuildInfo {
    pub sbang_install_path: Option<String>,
    pub buildpath: Option<String>,
    pub relative_prefix: Option<String>,
    #[serde(default)]
    pub hardlinks_deduped: bool,
    pub hash_to_prefix: Option<IndexMap<String, String>>,
    pub prefix_to_hash: Option<IndexMap<String, String>>,
    #[serde(default)]
    pub relocate_binaries: Vec<String>,
    #[serde(default)]
    pub relocate_textfiles: Vec<String>,
    #[serde(default)]
    pub relocate_links: Vec<String>,
}

impl BuildInfo {
    pub fn parse(yaml: &[u8], what: &str) -> Result<Self, FormatError> {
        check_yaml_expansion(yaml).map_err(|m| FormatError::invalid(what, m))?;
        let info: BuildInfo =
            serde_yaml_ng::from_slice(yaml).map_err(|source| FormatError::Yaml {
                what: what.to_string(),
                source,
            })?;
        if info.buildpath.is_none() {
            return Err(FormatError::invalid(what, "no buildpath"));
        }
        Ok(info)
    }

    /// `hash → old prefix`, from `hash_to_prefix` or the inverted `prefix_to_hash`.
    pub fn hash_to_old_prefix(&self, what: &str) -> Result<IndexMap<String, String>, FormatError> {
        if let Some(m) = &self.hash_to_prefix {
            return Ok(m.clone());
        }
        if let Some(m) = &self.prefix_to_hash {
            return Ok(m.iter().map(|(p, h)| (h.clone(), p.clone())).collect());
        }
        Err(FormatError::invalid(
            what,
            "neither hash_to_prefix nor prefix_to_hash: created from an install prefix with a different directory layout, cannot be relocated",
        ))
    }
}

/// How many bytes a YAML document may come to through its aliases, per byte of its own:
/// plenty for anchors reused a few times, not for a "billion laughs" of long scalars
/// (serde_yaml_ng bounds how often aliases are followed, not how much each one copies).
const YAML_EXPANSION: u64 = 16;

/// Refuse YAML whose aliases would make its value far larger than its text (`binary_distribution`
/// comes from the mirror; `mirrors.yaml` uses it too). Counts the bytes of every scalar, and
/// one per node, as the deserializer hands them out, keeping none; any other error of the
/// document is left to the real parse.
pub(crate) fn check_yaml_expansion(yaml: &[u8]) -> Result<(), String> {
    use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess};
    use std::cell::Cell;

    #[derive(Clone, Copy)]
    struct Count<'a> {
        left: &'a Cell<u64>,
        exceeded: &'a Cell<bool>,
    }

    impl Count<'_> {
        fn charge<E: de::Error>(self, n: usize) -> Result<(), E> {
            let n = n as u64 + 1;
            if n > self.left.get() {
                self.exceeded.set(true);
                return Err(E::custom("expands too far"));
            }
            self.left.set(self.left.get() - n);
            Ok(())
        }
    }

    impl<'de> DeserializeSeed<'de> for Count<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> de::Visitor<'de> for Count<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any YAML value")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            self.charge(0)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            self.charge(0)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            self.charge(0)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            self.charge(0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
            self.charge(v.len())
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
            self.charge(v.len())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            self.charge(0)
        }
        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            self.charge(0)
        }
        fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            self.deserialize(d)
        }
        fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            self.deserialize(d)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            self.charge(0)?;
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.charge(0)?;
            while map.next_key_seed(self)?.is_some() {
                map.next_value_seed(self)?;
            }
            Ok(())
        }
        fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
            // A tagged value.
            self.charge(0)?;
            let ((), v) = data.variant_seed(self)?;
            v.newtype_variant_seed(self)
        }
    }

    let limit = YAML_EXPANSION * yaml.len() as u64 + (64 << 10);
    let (left, exceeded) = (Cell::new(limit), Cell::new(false));
    let count = Count {
        left: &left,
        exceeded: &exceeded,
    };
    let _ = count.deserialize(serde_yaml_ng::Deserializer::from_slice(yaml));
    if exceeded.get() {
        return Err(format!(
            "its aliases expand its {} bytes past {limit} bytes: refused",
            yaml.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_and_block_style() {
        let flow = b"{sbang_install_path: /s/bin/sbang, buildpath: /s/pad, relative_prefix: l/p-1-h, hardlinks_deduped: true, hash_to_prefix: {h: /s/pad/l/p-1-h}, relocate_binaries: [bin/x], relocate_links: [], relocate_textfiles: [a b.txt]}";
        let b = BuildInfo::parse(flow, "t").unwrap();
        assert_eq!(b.relocate_textfiles, ["a b.txt"]);
        assert!(b.hardlinks_deduped);
        let block = b"buildpath: /s\nprefix_to_hash:\n  /s/p: h\nrelocate_textfiles:\n- x\n";
        let b = BuildInfo::parse(block, "t").unwrap();
        assert_eq!(b.hash_to_old_prefix("t").unwrap()["h"], "/s/p");
        assert!(BuildInfo::parse(b"relocate_textfiles: []", "t").is_err());
    }

    /// Found by tests/properties.rs (buildinfo_yaml, mirrors_yaml): aliases to one long
    /// scalar made a small file allocate quadratically much (16 KiB x 4096 = 64 MiB from
    /// 53 KB).
    #[test]
    fn aliases_cannot_expand_a_document_far_past_its_size() {
        let mut y = format!(
            "zz: &big \"{}\"\nrelocate_textfiles:\n",
            "a".repeat(16 << 10)
        );
        for _ in 0..4096 {
            y.push_str("- *big\n");
        }
        y.push_str("buildpath: /x\n");
        let e = BuildInfo::parse(y.as_bytes(), "t").unwrap_err().to_string();
        assert!(e.starts_with("t: its aliases expand"), "{e}");
        // Anchors reused a few times are fine.
        let ok = "p: &p /opt/store/linux-x86_64/pkg-1.0-abc\nbuildpath: /opt/store\nhash_to_prefix: {a: *p}\nrelocate_textfiles: [*p, *p, *p]\n";
        assert_eq!(
            BuildInfo::parse(ok.as_bytes(), "t")
                .unwrap()
                .relocate_textfiles
                .len(),
            3
        );
    }
}
