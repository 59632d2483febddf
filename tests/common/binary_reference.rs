//! An independent reference of Spack's NUL-aware binary rule (format doc 7.5), written from
//! the document without any of the crate's code: every match is found on the original bytes
//! first (pattern `(K1|…|Kn)([^\x00]{0,7}\x00)?`, keys in map order, scanning resumes after the
//! whole match), then each is written in place at its offset, stopping at the first that
//! cannot be.

use super::reference::Map;

const S: usize = 7;

/// Why the rule refuses a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The new prefix is longer than the old one.
    Grow { old: Vec<u8>, new: Vec<u8> },
    /// A C string whose tail differs cannot be shortened (offset of the match).
    Shrink { offset: usize },
}

struct Match<'a> {
    start: usize,
    old: &'a [u8],
    new: &'a [u8],
    /// Length of group 2 without its NUL, when group 2 matched.
    suffix: Option<usize>,
}

/// Apply the rule to `b`; returns the new bytes and the number of replacements.
pub fn relocate_binary(b: &[u8], m: &Map) -> Result<(Vec<u8>, usize), Refusal> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some((old, new)) = m.iter().find(|(k, _)| b[i..].starts_with(k)) else {
            i += 1;
            continue;
        };
        let key_end = i + old.len();
        // Group 2 (greedy): up to 7 non-NUL bytes, then a NUL.
        let mut suffix = None;
        for n in 0..=S {
            match b.get(key_end + n) {
                Some(0) => {
                    suffix = Some(n);
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        found.push(Match {
            start: i,
            old,
            new,
            suffix,
        });
        i = key_end + suffix.map_or(0, |n| n + 1);
    }
    let mut out = b.to_vec();
    for m in &found {
        if m.new.len() > m.old.len() {
            return Err(Refusal::Grow {
                old: m.old.to_vec(),
                new: m.new.to_vec(),
            });
        }
        let d = m.old.len() - m.new.len();
        let pad = match m.suffix {
            None => true,
            Some(s) if s >= S => true,
            Some(s) => {
                // Python's old[-(S - s):] == new[-(S - s):]
                let n = S - s;
                let tail = |x: &[u8]| x[x.len().saturating_sub(n)..].to_vec();
                tail(m.old) == tail(m.new)
            }
        };
        if pad {
            let mut w = vec![b'/'; d];
            w.extend_from_slice(m.new);
            out[m.start..m.start + m.old.len()].copy_from_slice(&w);
        } else if d > S {
            let s = m.suffix.expect("a C string");
            let key_end = m.start + m.old.len();
            let mut w = m.new.to_vec();
            w.extend_from_slice(&b[key_end..key_end + s]);
            w.push(0);
            out[m.start..m.start + w.len()].copy_from_slice(&w);
        } else {
            return Err(Refusal::Shrink { offset: m.start });
        }
    }
    Ok((out, found.len()))
}
