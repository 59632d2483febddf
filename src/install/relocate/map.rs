//! The ordered old → new prefix map `M` (format doc 7.1) and its multi-pattern matcher.

use aho_corasick::{AhoCorasick, MatchKind};
use indexmap::IndexMap;

use crate::buildcache::buildinfo::BuildInfo;
use crate::buildcache::spec::SpecDag;
use crate::buildcache::FormatError;

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
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
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
