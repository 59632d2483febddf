//! The ordered old → new prefix map `M` (format doc 7.1) and its multi-pattern matcher.

use aho_corasick::{AhoCorasick, AhoCorasickKind, Anchored, Input, Match, MatchKind, StartKind};
use indexmap::IndexMap;
use memchr::memmem;

use crate::buildcache::buildinfo::BuildInfo;
use crate::buildcache::spec::SpecDag;
use crate::buildcache::FormatError;

/// The most key bytes the matcher may be a DFA for (building one for 1 KiB of the worst keys
/// takes about 0.1 s; real maps have a few hundred bytes of keys).
const DFA_KEY_BYTES: usize = 1024;

/// The shortest prefix common to every key that is searched for first (see [`Lead`]).
const MIN_LEAD: usize = 4;

/// Insertion-ordered map of old prefixes to new ones, identity pairs removed. When several
/// keys match at one position the first in order wins (Spack's regex alternation).
#[derive(Debug, Clone)]
pub struct RelocationMap {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The new (unpadded) install root; used to say which root would fit.
    root: String,
    matcher: Option<AhoCorasick>,
    /// The bytes every key starts with, when there are enough of them.
    lead: Option<Lead>,
}

/// The bytes every key starts with (Spack's keys share their store's root, e.g.
/// `/opt/site/`), searched for with `memmem`: a match can only start where they do, and
/// trying the automaton there, anchored, finds the same leftmost-first match as scanning for
/// it. A binary is full of `/` bytes, where the automaton's own prefilter (the keys' one
/// start byte) stops; the common prefix is rarely there.
#[derive(Debug, Clone)]
struct Lead(memmem::Finder<'static>);

impl Lead {
    fn of(keys: &[(Vec<u8>, Vec<u8>)]) -> Option<Lead> {
        let first = &keys.first()?.0;
        let common = keys.iter().fold(first.len(), |n, (k, _)| {
            first
                .iter()
                .zip(k)
                .take(n)
                .take_while(|(a, b)| a == b)
                .count()
        });
        (common >= MIN_LEAD).then(|| Lead(memmem::Finder::new(&first[..common]).into_owned()))
    }
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
                    .start_kind(StartKind::Both)
                    .kind(kind)
                    .build(pairs.iter().map(|(o, _)| o))
                    .expect("relocation keys form a valid automaton"),
            )
        };
        RelocationMap {
            lead: Lead::of(&pairs),
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

    /// Is there a key to look for at all?
    pub(crate) fn has_keys(&self) -> bool {
        self.matcher.is_some()
    }

    /// The leftmost-first match of a key in `data` starting at or after `from`.
    pub(crate) fn find(&self, data: &[u8], from: usize) -> Option<Match> {
        let ac = self.matcher.as_ref()?;
        let Some(Lead(lead)) = &self.lead else {
            return ac.find(Input::new(data).span(from..data.len()));
        };
        let mut at = from;
        while at < data.len() {
            let start = at + lead.find(&data[at..])?;
            let anchored = Input::new(data)
                .span(start..data.len())
                .anchored(Anchored::Yes);
            if let Some(m) = ac.find(anchored) {
                return Some(m);
            }
            at = start + 1;
        }
        None
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

    /// Searching for the keys' common prefix first finds exactly the matches a plain
    /// leftmost-first scan does: keys that are prefixes of others, keys that overlap, the
    /// prefix alone, and keys at the very end of the data.
    #[test]
    fn the_common_prefix_search_finds_what_a_plain_scan_finds() {
        let keys = [
            "/opt/site/__pad__/__pad__/a-1",
            "/opt/site/__pad__/__pad__/a-1-longer",
            "/opt/site/bin/sbang",
            "/opt/site/__pad__/__pad__",
            "/opt/site/__pad__/__pad__/b-2",
        ];
        let map = RelocationMap::from_pairs(
            keys.iter().map(|k| (k.to_string(), "/new".to_string())),
            "/new",
        );
        assert!(map.lead.is_some(), "the keys share /opt/site/");
        let plain = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(keys)
            .unwrap();
        let pieces: Vec<&[u8]> = vec![
            b"/opt/site/",
            b"/opt/sit",
            b"\0",
            b"/",
            b"xyz",
            b"/opt/site/__pad__/__pad__/a-1",
            b"-longer",
            b"/opt/site/bin/sbang",
            b"/opt/site/__pad__/__pad__/b-2",
            b"__pad__/",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..300 {
            let mut data = Vec::new();
            for _ in 0..(round % 40) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                data.extend_from_slice(pieces[(state % pieces.len() as u64) as usize]);
            }
            for from in 0..=data.len() {
                let want = plain.find(Input::new(&data).span(from..data.len()));
                assert_eq!(
                    map.find(&data, from),
                    want,
                    "data {:?} from {from}",
                    String::from_utf8_lossy(&data)
                );
            }
        }
        let unshared = RelocationMap::from_pairs(
            [
                ("/a/x".to_string(), "/n".to_string()),
                ("/b/y".to_string(), "/n".to_string()),
            ],
            "/n",
        );
        assert!(unshared.lead.is_none());
        assert_eq!(unshared.find(b"../b/y", 0).map(|m| m.start()), Some(2));
    }
}
