//! An independent reference of Spack's relocation map (format doc 7.1, for the default
//! projection) and of its text rule (format doc 7.3), written position by position from
//! the document, without any of the crate's code.

use std::path::Path;

use serde_yaml_ng::Value;

/// The ordered old → new map `M`.
pub type Map = Vec<(Vec<u8>, Vec<u8>)>;

/// Parse a `.spack/binary_distribution` (flow or block YAML).
pub fn parse_buildinfo(yaml: &[u8]) -> Value {
    serde_yaml_ng::from_slice(yaml).expect("binary_distribution is YAML")
}

/// A string list of the buildinfo (`relocate_textfiles`, ...); empty when absent.
pub fn buildinfo_list(info: &Value, key: &str) -> Vec<String> {
    info.get(key)
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .map(|v| v.as_str().expect("list entry is a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn buildinfo_str<'a>(info: &'a Value, key: &str) -> &'a str {
    info.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("binary_distribution has no string {key}"))
}

/// `M` for relocating to `root` with the default projection
/// `{platform}-{target}/{name}-{version}-{hash}` (all packages here are linux/x86_64 and the
/// last component of each old prefix is `name-version-hash`): the sbang path, every
/// `hash_to_prefix` entry, then `buildpath` last; identity pairs dropped.
pub fn relocation_map(info: &Value, root: &str) -> Map {
    let mut m: Map = Vec::new();
    let mut put = |old: &str, new: String| {
        if let Some(e) = m.iter_mut().find(|(k, _)| k == old.as_bytes()) {
            e.1 = new.into_bytes();
        } else {
            m.push((old.as_bytes().to_vec(), new.into_bytes()));
        }
    };
    if let Some(sbang) = info.get("sbang_install_path").and_then(Value::as_str) {
        put(sbang, format!("{root}/bin/sbang"));
    }
    let h2p = info
        .get("hash_to_prefix")
        .and_then(Value::as_mapping)
        .expect("hash_to_prefix");
    for (_, old) in h2p {
        let old = old.as_str().expect("prefix string");
        let base = Path::new(old)
            .file_name()
            .expect("prefix basename")
            .to_str()
            .expect("UTF-8");
        put(old, format!("{root}/linux-x86_64/{base}"));
    }
    put(buildinfo_str(info, "buildpath"), root.to_string());
    m.retain(|(k, v)| k != v);
    m
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'/'
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Format doc 7.3, literally: scan `i` left to right over the original bytes; a match may
/// start at `i` only at the start or after a non-path byte; from `j = i` try the keys in
/// order, stepping `j` over word bytes; on a match emit `b[i..j]`, the new value, and the
/// following run of path bytes unchanged, then continue after that run.
pub fn relocate_text(b: &[u8], m: &Map) -> Vec<u8> {
    // Only a speed-up for big files: a key can only start at a byte some key starts with.
    let mut first = [false; 256];
    for (k, _) in m {
        first[k[0] as usize] = true;
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    'scan: while i < b.len() {
        if i == 0 || !is_path_byte(b[i - 1]) {
            let mut j = i;
            loop {
                let hit = if j < b.len() && first[b[j] as usize] {
                    m.iter().find(|(k, _)| b[j..].starts_with(k))
                } else {
                    None
                };
                if let Some((k, v)) = hit {
                    let mut e = j + k.len();
                    while e < b.len() && is_path_byte(b[e]) {
                        e += 1;
                    }
                    out.extend_from_slice(&b[i..j]);
                    out.extend_from_slice(v);
                    out.extend_from_slice(&b[j + k.len()..e]);
                    i = e;
                    continue 'scan;
                }
                if j < b.len() && is_word_byte(b[j]) {
                    j += 1;
                } else {
                    break;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `M` from string pairs.
pub fn map_of(pairs: &[(&str, &str)]) -> Map {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}
