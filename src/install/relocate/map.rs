//! The ordered old → new prefix map `M` (format doc 7.1) and its multi-pattern matcher.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use indexmap::IndexMap;

use crate::buildcache::buildinfo::BuildInfo;
use crate::buildcache::spec::SpecDag;
use crate::buildcache::FormatError;

/// The most key bytes the matcher may be a DFA for (building one for 1 KiB of the worst keys
/// takes about 0.1 s; real maps have a few hundred bytes of keys).
const DFA_KEY_BYTES: usize = 1024;

/// Insertion-ordered map of old prefixes to new ones, identity pairs removed. When several
/// keys match at one position the first in order wins (Spack's regex alternation).
#[derive(Debug, Clone)]
pub struct RelocationMap {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The new (unpadded) install root; used to say which root would fit.
    root: String,
    matcher: Option<AhoCorasick>,
}

impl RelocationMap {
    /// Build `M` from ordered pairs (later duplicates of a key update it in place).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>, root: &str) -> Self {
        let mut ordered: IndexMap<String, String> = IndexMap::new();
        for (old, new) in pairs {
            ordered.insert(old, new);
        }
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = ordered
            .into_iter()
            .filter(|(o, n)| o != n && !o.is_empty())
            .map(|(o, n)| (o.into_bytes(), n.into_bytes()))
            .collect();
        let matcher = if pairs.is_empty() {
            None
        } else {
            // Keys come from the tarball's binary_distribution: past a few of the usual
            // length, a contiguous NFA rather than the DFA the builder would pick, whose
            // construction takes time quadratic in a key's length (minutes for one of 64 KiB).
            let key_bytes: usize = pairs.iter().map(|(o, _)| o.len()).sum();
            let kind = (key_bytes > DFA_KEY_BYTES).then_some(AhoCorasickKind::ContiguousNFA);
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
                    .kind(kind)
                    .build(pairs.iter().map(|(o, _)| o))
                    .expect("relocation keys form a valid automaton"),
            )
        };
        RelocationMap {
            pairs,
            root: root.to_string(),
            matcher,
        }
    }

    /// Format doc 7.1: sbang, the relocation set (link closure BFS, direct run deps), then
    /// `buildpath` last. `target_prefix` gives the new prefix of a node.
    pub fn for_package(
        info: &BuildInfo,
        dag: &SpecDag,
        root: &str,
        what: &str,
        mut target_prefix: impl FnMut(&crate::buildcache::spec::SpecNode) -> Result<String, FormatError>,
    ) -> Result<Self, FormatError> {
        let hash_to_old = info.hash_to_old_prefix(what)?;
        let mut pairs = Vec::new();
        if let Some(sbang) = &info.sbang_install_path {
            pairs.push((sbang.clone(), format!("{root}/bin/sbang")));
        }
        for node in dag.relocation_set() {
            if let Some(old) = hash_to_old.get(&node.hash) {
                pairs.push((old.clone(), target_prefix(node)?));
            }
        }
        if let Some(bp) = &info.buildpath {
            pairs.push((bp.clone(), root.to_string()));
        }
        Ok(Self::from_pairs(pairs, root))
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn pairs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.pairs
    }

    pub(crate) fn matcher(&self) -> Option<&AhoCorasick> {
        self.matcher.as_ref()
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The longest root under which every key of this map that occurs in `data` keeps or
    /// shrinks its length (new prefixes are the root plus a fixed suffix).
    pub fn longest_fitting_root(&self, data: &[u8]) -> usize {
        self.pairs
            .iter()
            .filter(|(o, _)| memchr::memmem::find(data, o).is_some())
            .map(|(o, n)| {
                let suffix = n.len().saturating_sub(self.root.len());
                o.len().saturating_sub(suffix)
            })
            .min()
            .unwrap_or(usize::MAX)
    }

    /// A stable digest of the map (for cache keys).
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (o, n) in &self.pairs {
            h.update((o.len() as u64).to_le_bytes());
            h.update(o);
            h.update((n.len() as u64).to_le_bytes());
            h.update(n);
        }
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by tests/properties.rs (buildinfo_yaml): a binary_distribution whose buildpath
    /// is 64 KiB of `a` took 495 s to become a map (building the DFA).
    #[test]
    fn a_long_key_makes_a_map_quickly_and_still_matches() {
        let long = format!("/{}", "a".repeat(64 << 10));
        let t = std::time::Instant::now();
        let map = RelocationMap::from_pairs([(long.clone(), "/r".to_string())], "/r");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
        let text = format!("x {long}/lib y");
        let out = super::super::text::relocate_text(text.as_bytes(), &map).unwrap();
        assert_eq!(out, b"x /r/lib y");
    }
}
