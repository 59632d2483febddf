//! The text rule (format doc 7.3): Spack's regex
//! `(?<![\w\-_/])([\w\-_]*?)(K1|…|Kn)([\w\-_/]*)`, computed with one multi-pattern scan.

use super::map::RelocationMap;

/// "Path byte" `[A-Za-z0-9_/-]`.
pub fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/')
}

/// "Word byte" `[A-Za-z0-9_-]`.
pub fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
}

/// Apply the text rule; `None` when nothing matched (the file is left untouched).
pub fn relocate_text(data: &[u8], map: &RelocationMap) -> Option<Vec<u8>> {
    if !map.has_keys() {
        return None;
    }
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut pos = 0;
    while pos < data.len() {
        let Some(m) = map.find(data, pos) else {
            break;
        };
        let j = m.start();
        // The match starts at the beginning of the run of word bytes before the key, which
        // must be the start of the data or follow a non-path byte.
        let mut i = j;
        while i > copied && is_word_byte(data[i - 1]) {
            i -= 1;
        }
        if i > 0 && is_path_byte(data[i - 1]) {
            pos = j + 1;
            continue;
        }
        let mut end = m.end();
        while end < data.len() && is_path_byte(data[end]) {
            end += 1;
        }
        let buf = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
        buf.extend_from_slice(&data[copied..j]);
        buf.extend_from_slice(&map.pairs()[m.pattern().as_usize()].1);
        buf.extend_from_slice(&data[m.end()..end]);
        copied = end;
        pos = end;
    }
    let mut buf = out?;
    buf.extend_from_slice(&data[copied..]);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spack_observed_example() {
        let map = RelocationMap::from_pairs(
            [
                (
                    "/opt/spack/linux-x86_64/zlib-1.3-abc".to_string(),
                    "/u/linux-x86_64/zlib-1.3-abc".to_string(),
                ),
                ("/opt/spack".to_string(), "/u".to_string()),
            ],
            "/u",
        );
        let input = b"a=/opt/spack/linux-x86_64/zlib-1.3-abc/lib b=/opt/spack/other c=/opt/spackle d=x/opt/spack e=-L/opt/spack/lib f=:/opt/spack";
        let out = relocate_text(input, &map).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a=/u/linux-x86_64/zlib-1.3-abc/lib b=/u/other c=/ule d=x/u e=-L/u/lib f=:/u"
        );
        // Keys preceded by a path byte are not replaced; glued keys replaced once.
        let out =
            relocate_text(b"/srv/opt/spack //opt/spack /opt/spack/a/opt/spack/b", &map).unwrap();
        assert_eq!(out, b"/srv/opt/spack //opt/spack /u/a/opt/spack/b");
        assert!(relocate_text(b"nothing here", &map).is_none());
    }
}
