//! The NUL-aware binary rule (format doc 7.5): `(K1|…|Kn)([^\x00]{0,7}\x00)?`, replaced in
//! place keeping the byte length (left-padding with `/`), or shortening a C string when the
//! tails differ and there is room; growing is an error.

use super::map::RelocationMap;

const SUFFIX_WINDOW: usize = 7;

/// Why a binary could not be relocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryError {
    CannotGrow {
        old: Vec<u8>,
        new: Vec<u8>,
    },
    CannotShrink {
        offset: usize,
        old: Vec<u8>,
        new: Vec<u8>,
    },
}

/// Apply the rule to `data` in place; returns the number of replacements.
pub fn relocate_binary(data: &mut [u8], map: &RelocationMap) -> Result<usize, BinaryError> {
    if !map.has_keys() {
        return Ok(0);
    }
    let mut count = 0;
    let mut pos = 0;
    while pos < data.len() {
        let Some(m) = map.find(data, pos) else {
            break;
        };
        let (old, new) = &map.pairs()[m.pattern().as_usize()];
        let start = m.start();
        let key_end = m.end();
        // Group 2: up to 7 non-NUL bytes, then a NUL.
        let nul = (0..=SUFFIX_WINDOW)
            .take_while(|k| key_end + k < data.len())
            .find(|k| data[key_end + k] == 0);
        let match_end = key_end + nul.map_or(0, |k| k + 1);
        if new.len() > old.len() {
            return Err(BinaryError::CannotGrow {
                old: old.clone(),
                new: new.clone(),
            });
        }
        let d = old.len() - new.len();
        let suffix_len = nul.unwrap_or(0);
        let tails_equal = || {
            let n = SUFFIX_WINDOW - suffix_len;
            old[old.len().saturating_sub(n)..] == new[new.len().saturating_sub(n)..]
        };
        if nul.is_none() || suffix_len >= SUFFIX_WINDOW || tails_equal() {
            data[start..start + d].fill(b'/');
            data[start + d..start + old.len()].copy_from_slice(new);
        } else if d > SUFFIX_WINDOW {
            let suffix: Vec<u8> = data[key_end..key_end + suffix_len].to_vec();
            let mut w = start;
            data[w..w + new.len()].copy_from_slice(new);
            w += new.len();
            data[w..w + suffix_len].copy_from_slice(&suffix);
            w += suffix_len;
            data[w] = 0;
        } else {
            return Err(BinaryError::CannotShrink {
                offset: start,
                old: old.clone(),
                new: new.clone(),
            });
        }
        count += 1;
        pos = match_end;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(old: &str, new: &str, input: &[u8]) -> Result<Vec<u8>, BinaryError> {
        let map = RelocationMap::from_pairs([(old.to_string(), new.to_string())], "/");
        let mut data = input.to_vec();
        relocate_binary(&mut data, &map).map(|_| data)
    }

    #[test]
    fn spack_worked_examples() {
        let o = "/old/very/long/prefix";
        let n = "/new/prefix";
        assert_eq!(
            run(o, n, b"xx\0/old/very/long/prefix/lib/libfoo.so\0yy").unwrap(),
            b"xx\0///////////new/prefix/lib/libfoo.so\0yy"
        );
        assert_eq!(
            run(o, n, b"xx\0/old/very/long/prefix/lib\0yy").unwrap(),
            b"xx\0///////////new/prefix/lib\0yy"
        );
        assert_eq!(
            run(o, n, b"xx\0/old/very/long/prefix\0yy").unwrap(),
            b"xx\0///////////new/prefix\0yy"
        );
        assert_eq!(
            run(
                "/old/very/long/aaaaa",
                "/new/bbbbb",
                b"xx\0/old/very/long/aaaaa/x\0yy"
            )
            .unwrap(),
            b"xx\0/new/bbbbb/x\0g/aaaaa/x\0yy"
        );
        assert!(matches!(
            run("/aaaa/xyz", "/bb/qqq", b"xx\0/aaaa/xyz/l\0yy"),
            Err(BinaryError::CannotShrink { .. })
        ));
        assert!(matches!(
            run("/short", "/much/longer", b"xx\0/short\0"),
            Err(BinaryError::CannotGrow { .. })
        ));
    }
}
