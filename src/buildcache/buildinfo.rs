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
}
