//! Mutations of valid inputs for the property tests (`tests/properties.rs`).
//!
//! Three kinds, each a value that proptest generates and shrinks (a shorter list of edits,
//! smaller positions), applied to a named sample:
//! - byte edits: flip a bit, set a byte, insert bytes or a token of the format's dictionary,
//!   delete, duplicate or repeat a range, truncate, splice in a piece of another sample,
//!   write an "interesting" integer (0, -1, 2^31, u64::MAX…) at any width and endianness;
//! - edits of a JSON/YAML tree: replace a node by another kind of value (including deep
//!   nesting and long strings), remove, duplicate, rename or wrap it, copy one node over
//!   another;
//! - edits of a tar stream's members: name, link name, type, size, mode, magic, a pax record
//!   in front, drop, duplicate or swap members, with header checksums fixed afterwards (or
//!   not) so that an edit reaches the parser behind the checksum test.
//!
//! Applying a mutation also writes a log of what it did at which offset, so that a failure
//! names the sample and the edits that broke it.

use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};

/// A valid input taken from the fixtures (or written by a test).
#[derive(Clone)]
pub struct Sample {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Sample {
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        Sample {
            name: name.into(),
            bytes,
        }
    }
}

/// Integers that break length fields and offsets.
pub const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x10,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x200,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x10_0000,
    0x4000_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 8,
    u64::MAX - 1,
    u64::MAX,
];

fn interesting() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        3 => prop::sample::select(INTERESTING),
        1 => any::<u64>(),
    ]
}

/// One edit of a byte string. Positions are [`Index`]es, resolved against the current length.
#[derive(Clone, Debug)]
pub enum ByteOp {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    /// Insert a token of the dictionary.
    Token(Index, Index),
    Delete(Index, usize),
    Duplicate {
        from: Index,
        len: usize,
        to: Index,
    },
    /// Insert `times` copies of a range right after it.
    Repeat {
        at: Index,
        len: usize,
        times: usize,
    },
    Truncate(Index),
    /// Insert a piece of another sample.
    Splice {
        other: Index,
        from: Index,
        len: usize,
        to: Index,
    },
    Integer {
        at: Index,
        width: u8,
        value: u64,
        big_endian: bool,
    },
}

pub fn byte_op() -> impl Strategy<Value = ByteOp> + Clone {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| ByteOp::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteOp::Set(i, b)),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| ByteOp::Insert(i, b)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| ByteOp::Token(i, t)),
        2 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| ByteOp::Delete(i, n)),
        1 => (any::<Index>(), 1usize..256, any::<Index>())
            .prop_map(|(from, len, to)| ByteOp::Duplicate { from, len, to }),
        1 => (any::<Index>(), 1usize..32, 2usize..64)
            .prop_map(|(at, len, times)| ByteOp::Repeat { at, len, times }),
        1 => any::<Index>().prop_map(ByteOp::Truncate),
        1 => (any::<Index>(), any::<Index>(), 1usize..512, any::<Index>())
            .prop_map(|(other, from, len, to)| ByteOp::Splice { other, from, len, to }),
        2 => (
            any::<Index>(),
            prop::sample::select(&[1u8, 2, 4, 8][..]),
            interesting(),
            any::<bool>(),
        )
            .prop_map(|(at, width, value, big_endian)| ByteOp::Integer {
                at,
                width,
                value,
                big_endian,
            }),
    ]
}

/// A position in `0..=len`.
fn pos(i: &Index, len: usize) -> usize {
    i.index(len + 1)
}

fn show(bytes: &[u8]) -> String {
    const MAX: usize = 48;
    let cut = &bytes[..bytes.len().min(MAX)];
    let mut s = format!("{:?}", String::from_utf8_lossy(cut));
    if bytes.len() > MAX {
        s.push_str(&format!("…({} bytes)", bytes.len()));
    }
    s
}

impl ByteOp {
    /// Apply to `data`; `others` are the samples a splice may take from, `dict` the tokens.
    pub fn apply(&self, data: &mut Vec<u8>, others: &[Sample], dict: &[&[u8]], log: &mut String) {
        let len = data.len();
        match self {
            ByteOp::Flip(i, bit) => {
                if len > 0 {
                    let at = i.index(len);
                    data[at] ^= 1 << bit;
                    let _ = write!(log, "flip bit {bit} at {at}; ");
                }
            }
            ByteOp::Set(i, b) => {
                if len > 0 {
                    let at = i.index(len);
                    data[at] = *b;
                    let _ = write!(log, "set {at} to {b:#04x}; ");
                }
            }
            ByteOp::Insert(i, bytes) => {
                let at = pos(i, len);
                data.splice(at..at, bytes.iter().copied());
                let _ = write!(log, "insert {} at {at}; ", show(bytes));
            }
            ByteOp::Token(i, t) => {
                if !dict.is_empty() {
                    let at = pos(i, len);
                    let tok = dict[t.index(dict.len())];
                    data.splice(at..at, tok.iter().copied());
                    let _ = write!(log, "insert token {} at {at}; ", show(tok));
                }
            }
            ByteOp::Delete(i, n) => {
                if len > 0 {
                    let at = i.index(len);
                    let end = (at + n).min(len);
                    data.drain(at..end);
                    let _ = write!(log, "delete {at}..{end}; ");
                }
            }
            ByteOp::Duplicate { from, len: n, to } => {
                if len > 0 {
                    let at = from.index(len);
                    let end = (at + n).min(len);
                    let piece = data[at..end].to_vec();
                    let dest = pos(to, len);
                    data.splice(dest..dest, piece);
                    let _ = write!(log, "copy {at}..{end} to {dest}; ");
                }
            }
            ByteOp::Repeat { at, len: n, times } => {
                if len > 0 {
                    let at = at.index(len);
                    let end = (at + n).min(len);
                    let piece = data[at..end].to_vec();
                    let rep: Vec<u8> = piece
                        .iter()
                        .copied()
                        .cycle()
                        .take(piece.len() * times)
                        .collect();
                    data.splice(end..end, rep);
                    let _ = write!(log, "repeat {at}..{end} {times} times; ");
                }
            }
            ByteOp::Truncate(i) => {
                let at = pos(i, len);
                data.truncate(at);
                let _ = write!(log, "truncate to {at}; ");
            }
            ByteOp::Splice {
                other,
                from,
                len: n,
                to,
            } => {
                if !others.is_empty() {
                    let o = &others[other.index(others.len())];
                    if !o.bytes.is_empty() {
                        let at = from.index(o.bytes.len());
                        let end = (at + n).min(o.bytes.len());
                        let dest = pos(to, len);
                        data.splice(dest..dest, o.bytes[at..end].iter().copied());
                        let _ = write!(log, "splice {}[{at}..{end}] in at {dest}; ", o.name);
                    }
                }
            }
            ByteOp::Integer {
                at,
                width,
                value,
                big_endian,
            } => {
                let w = *width as usize;
                if len >= w {
                    let at = at.index(len - w + 1);
                    let bytes = if *big_endian {
                        value.to_be_bytes()
                    } else {
                        value.to_le_bytes()
                    };
                    let src = if *big_endian {
                        &bytes[8 - w..]
                    } else {
                        &bytes[..w]
                    };
                    data[at..at + w].copy_from_slice(src);
                    let _ = write!(
                        log,
                        "write {value:#x} as {w} bytes {} at {at}; ",
                        if *big_endian { "BE" } else { "LE" }
                    );
                }
            }
        }
    }
}

/// Apply a list of byte edits.
pub fn apply_bytes(
    base: &[u8],
    ops: &[ByteOp],
    others: &[Sample],
    dict: &[&[u8]],
    log: &mut String,
) -> Vec<u8> {
    let mut data = base.to_vec();
    for op in ops {
        op.apply(&mut data, others, dict, log);
    }
    data
}

/// Tokens for JSON inputs.
pub const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"0",
    b"-1",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"9223372036854775807",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"\\",
    b"\"version\"",
    b"\"spec\"",
    b"\"nodes\"",
    b"\"hash\"",
    b"\"name\"",
    b"\"dependencies\"",
    b"\"database\"",
    b"\"installs\"",
    b"\"data\"",
    b"\"checksum\"",
    b"\"..\"",
    b"\"\"",
    b"[[[[[[[[[[[[[[[[",
    b"\xff",
    b"\xc3",
    b" ",
    b"\n",
    b"\r\n",
];

/// Tokens for YAML inputs.
pub const YAML_TOKENS: &[&[u8]] = &[
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!binary ",
    b"!custom ",
    b"!!str ",
    b"!!int ",
    b"---\n",
    b"...\n",
    b"? ",
    b"- ",
    b"{",
    b"}",
    b"[",
    b"]",
    b": ",
    b":",
    b",",
    b"\t",
    b"\n",
    b"  ",
    b"#",
    b"|\n",
    b">-\n",
    b"'",
    b"\"",
    b"~",
    b"null",
    b"true",
    b"0x10",
    b"1e999",
    b"..",
    b"buildpath: ",
    b"hash_to_prefix: ",
    b"relocate_textfiles: ",
    b"mirrors:\n",
    b"url: ",
    b"fetch: ",
    b"%YAML 1.2\n",
    b"\xff",
    b"\xef\xbb\xbf",
];

/// Tokens for clearsigned documents.
pub const ARMOR_TOKENS: &[&[u8]] = &[
    b"-----BEGIN PGP SIGNED MESSAGE-----",
    b"-----BEGIN PGP SIGNATURE-----",
    b"-----END PGP SIGNATURE-----",
    b"Hash: SHA512\n",
    b"Hash: SHA1\n",
    b"\n\n",
    b"\r\n\r\n",
    b"- ",
    b"-",
    b"\n",
    b"=",
    b"==\n",
    b"Comment: x\n",
    b"\xff",
];

/// A JSON value to put somewhere in a tree.
#[derive(Clone, Debug)]
pub enum Leaf {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    EmptyArray,
    EmptyObject,
    /// Arrays nested this deep.
    Deep(usize),
    /// A string of this many `a`.
    Long(usize),
}

/// Strings that mean something to the parsers: names, paths, hashes, media types.
pub const STRINGS: &[&str] = &[
    "",
    ".",
    "..",
    "../../etc",
    "/",
    "a/b",
    "x",
    "\u{0}",
    "é",
    " ",
    "sha256",
    "sha512",
    "none",
    "gzip",
    "link",
    "run",
    "build",
    "c",
    "cxx",
    "linux",
    "x86_64",
    "8",
    "3",
    "abcdefghijklmnopqrstuvwxyz234567",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "application/vnd.spack.install.v2.tar+gzip",
    "application/vnd.spack.spec.v5+json",
    "-----BEGIN PGP SIGNATURE-----",
    "/opt/fixture-store",
    "$HOME",
    "~",
];

pub fn leaf() -> impl Strategy<Value = Leaf> + Clone {
    prop_oneof![
        Just(Leaf::Null),
        any::<bool>().prop_map(Leaf::Bool),
        prop_oneof![
            prop::sample::select(&[0i64, -1, 1, 2, 3, 5, 6, 7, 8, 9, i64::MAX, i64::MIN][..]),
            any::<i64>()
        ]
        .prop_map(Leaf::Int),
        interesting().prop_map(Leaf::Uint),
        prop::sample::select(&[0.5f64, -0.0, 1e308, 3.0, f64::MIN_POSITIVE][..])
            .prop_map(Leaf::Float),
        prop_oneof![
            3 => prop::sample::select(STRINGS).prop_map(str::to_string),
            1 => any::<String>(),
        ]
        .prop_map(Leaf::Str),
        Just(Leaf::EmptyArray),
        Just(Leaf::EmptyObject),
        (1usize..300).prop_map(Leaf::Deep),
        prop::sample::select(&[1usize << 10, 1 << 16][..]).prop_map(Leaf::Long),
    ]
}

impl Leaf {
    pub fn value(&self) -> Value {
        match self {
            Leaf::Null => Value::Null,
            Leaf::Bool(b) => Value::Bool(*b),
            Leaf::Int(i) => Value::from(*i),
            Leaf::Uint(u) => Value::from(*u),
            Leaf::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Leaf::Str(s) => Value::String(s.clone()),
            Leaf::EmptyArray => Value::Array(Vec::new()),
            Leaf::EmptyObject => Value::Object(Map::new()),
            Leaf::Deep(n) => {
                let mut v = Value::Array(Vec::new());
                for _ in 0..*n {
                    v = Value::Array(vec![v]);
                }
                v
            }
            Leaf::Long(n) => Value::String("a".repeat(*n)),
        }
    }
}

/// One edit of a JSON tree; nodes are numbered in pre-order.
#[derive(Clone, Debug)]
pub enum TreeOp {
    Replace(Index, Leaf),
    Remove(Index),
    Duplicate(Index),
    Rename(Index, String),
    Wrap(Index, bool),
    /// Copy the subtree at the first node over the second.
    CopyOver(Index, Index),
    /// Add a member to an object node.
    Add(Index, String, Leaf),
}

pub fn tree_op() -> impl Strategy<Value = TreeOp> + Clone {
    let key = prop_oneof![
        3 => prop::sample::select(&[
            "", "name", "hash", "version", "spec", "nodes", "dependencies", "parameters",
            "deptypes", "virtuals", "arch", "target", "platform", "compiler", "external",
            "database", "installs", "in_buildcache", "data", "checksum", "contentLength",
            "mediaType", "checksumAlgorithm", "buildpath", "hash_to_prefix", "prefix_to_hash",
            "relocate_textfiles", "relocate_binaries", "relocate_links", "sbang_install_path",
            "url", "fetch", "push", "signed", "binary", "access_pair", "buildcache_layout_version",
            "..", "a/b",
        ][..]).prop_map(str::to_string),
        1 => any::<String>(),
    ];
    prop_oneof![
        4 => (any::<Index>(), leaf()).prop_map(|(i, l)| TreeOp::Replace(i, l)),
        2 => any::<Index>().prop_map(TreeOp::Remove),
        2 => any::<Index>().prop_map(TreeOp::Duplicate),
        1 => (any::<Index>(), key.clone()).prop_map(|(i, k)| TreeOp::Rename(i, k)),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(i, b)| TreeOp::Wrap(i, b)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TreeOp::CopyOver(a, b)),
        2 => (any::<Index>(), key, leaf()).prop_map(|(i, k, l)| TreeOp::Add(i, k, l)),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Idx(usize),
}

fn paths(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    // Bounded: deep leaves are not walked into (their nodes would dominate the choice).
    if out.len() > 100_000 || here.len() > 64 {
        return;
    }
    out.push(here.clone());
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                here.push(Seg::Idx(i));
                paths(x, here, out);
                here.pop();
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                here.push(Seg::Key(k.clone()));
                paths(x, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(o)) => o.get_mut(k)?,
            (Seg::Idx(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn describe_path(path: &[Seg]) -> String {
    let mut s = String::from("$");
    for p in path {
        match p {
            Seg::Key(k) => {
                let _ = write!(s, ".{k:?}");
            }
            Seg::Idx(i) => {
                let _ = write!(s, "[{i}]");
            }
        }
    }
    s
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        let mut cut = 60;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…({} bytes)", &s[..cut], s.len())
    } else {
        s
    }
}

impl TreeOp {
    pub fn apply(&self, root: &mut Value, log: &mut String) {
        let mut all = Vec::new();
        paths(root, &mut Vec::new(), &mut all);
        let pick = |i: &Index| all[i.index(all.len())].clone();
        match self {
            TreeOp::Replace(i, l) => {
                let p = pick(i);
                let v = l.value();
                let _ = write!(log, "{} = {}; ", describe_path(&p), short(&v));
                if let Some(n) = node_mut(root, &p) {
                    *n = v;
                }
            }
            TreeOp::Remove(i) => {
                let p = pick(i);
                if let Some((last, parent)) = p.split_last() {
                    let _ = write!(log, "remove {}; ", describe_path(&p));
                    match (node_mut(root, parent), last) {
                        (Some(Value::Object(o)), Seg::Key(k)) => {
                            o.shift_remove(k);
                        }
                        (Some(Value::Array(a)), Seg::Idx(i)) if *i < a.len() => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
            TreeOp::Duplicate(i) => {
                let p = pick(i);
                if let Some((last, parent)) = p.split_last() {
                    let Some(copy) = node_mut(root, &p).map(|n| n.clone()) else {
                        return;
                    };
                    let _ = write!(log, "duplicate {}; ", describe_path(&p));
                    match (node_mut(root, parent), last) {
                        (Some(Value::Object(o)), Seg::Key(k)) => {
                            o.insert(format!("{k}2"), copy);
                        }
                        (Some(Value::Array(a)), Seg::Idx(i)) => {
                            a.insert((*i).min(a.len()), copy);
                        }
                        _ => {}
                    }
                }
            }
            TreeOp::Rename(i, new) => {
                let p = pick(i);
                if let Some((Seg::Key(k), parent)) = p.split_last() {
                    if let Some(Value::Object(o)) = node_mut(root, parent) {
                        let _ = write!(log, "rename {} to {new:?}; ", describe_path(&p));
                        if let Some(v) = o.shift_remove(k) {
                            o.insert(new.clone(), v);
                        }
                    }
                }
            }
            TreeOp::Wrap(i, array) => {
                let p = pick(i);
                if let Some(n) = node_mut(root, &p) {
                    let _ = write!(
                        log,
                        "wrap {} in an {}; ",
                        describe_path(&p),
                        if *array { "array" } else { "object" }
                    );
                    let inner = n.take();
                    *n = if *array {
                        Value::Array(vec![inner])
                    } else {
                        Value::Object(Map::from_iter([("x".to_string(), inner)]))
                    };
                }
            }
            TreeOp::CopyOver(a, b) => {
                let (pa, pb) = (pick(a), pick(b));
                if pb.starts_with(&pa) {
                    return;
                }
                let Some(copy) = node_mut(root, &pa).map(|n| n.clone()) else {
                    return;
                };
                let _ = write!(
                    log,
                    "{} = copy of {}; ",
                    describe_path(&pb),
                    describe_path(&pa)
                );
                if let Some(n) = node_mut(root, &pb) {
                    *n = copy;
                }
            }
            TreeOp::Add(i, k, l) => {
                let p = pick(i);
                if let Some(Value::Object(o)) = node_mut(root, &p) {
                    let v = l.value();
                    let _ = write!(log, "{}.{k:?} = {}; ", describe_path(&p), short(&v));
                    o.insert(k.clone(), v);
                }
            }
        }
    }
}

/// Header fields a tar edit may set.
#[derive(Clone, Debug)]
pub enum TarField {
    Name(TarName),
    Link(TarName),
    Type(u8),
    Size(u64),
    Mode(u32),
    /// 0: POSIX ustar, 1: GNU, 2: none (v7).
    Magic(u8),
    /// Leave the checksum wrong.
    BadChecksum,
}

/// Member names for tar edits: hostile forms, and names relative to existing members.
#[derive(Clone, Debug)]
pub enum TarName {
    Literal(&'static [u8]),
    /// The name of another member.
    SameAs(Index),
    /// Below another member.
    Below(Index, &'static str),
    /// Its parent directory's name.
    ParentOf(Index),
    Long(usize),
}

pub const TAR_NAMES: &[&[u8]] = &[
    b"..",
    b"../x",
    b"/etc/passwd",
    b"/",
    b"a//b",
    b"./a",
    b"a/./b",
    b"a/../b",
    b"",
    b"a\0b",
    b"\xff\xfe",
    b"opt",
    b"opt/",
    b".spack/binary_distribution",
    b"x/.spack/binary_distribution",
    b"../sentinel",
    b"../../sentinel",
];

fn tar_name() -> impl Strategy<Value = TarName> + Clone {
    prop_oneof![
        3 => prop::sample::select(TAR_NAMES).prop_map(TarName::Literal),
        3 => any::<Index>().prop_map(TarName::SameAs),
        2 => (
            any::<Index>(),
            prop::sample::select(&["x", "..", "bin/x", ".spack/binary_distribution"][..]),
        )
            .prop_map(|(i, s)| TarName::Below(i, s)),
        1 => any::<Index>().prop_map(TarName::ParentOf),
        1 => (90usize..300).prop_map(TarName::Long),
    ]
}

fn tar_field() -> impl Strategy<Value = TarField> + Clone {
    prop_oneof![
        3 => tar_name().prop_map(TarField::Name),
        2 => tar_name().prop_map(TarField::Link),
        3 => prop_oneof![
            prop::sample::select(&b"0125x gLKS34 67\x00"[..]),
            any::<u8>()
        ]
        .prop_map(TarField::Type),
        3 => interesting().prop_map(TarField::Size),
        1 => prop::sample::select(&[0o7777u32, 0o4755, 0o2755, 0o1777, 0o666, 0o000, 0o777][..])
            .prop_map(TarField::Mode),
        1 => (0u8..3).prop_map(TarField::Magic),
        1 => Just(TarField::BadChecksum),
    ]
}

const PAX_KEYS: &[&str] = &[
    "path",
    "linkpath",
    "size",
    "uid",
    "mtime",
    "GNU.sparse.size",
    "x",
];

/// One edit of a tar stream.
#[derive(Clone, Debug)]
pub enum TarOp {
    Field(Index, TarField),
    /// Put a pax header with one record in front of a member.
    Pax(Index, &'static str, PaxValue),
    Drop(Index),
    Dup(Index),
    Swap(Index, Index),
    Bytes(ByteOp),
}

#[derive(Clone, Debug)]
pub enum PaxValue {
    Name(TarName),
    Number(u64),
    Text(&'static str),
}

pub fn tar_op() -> impl Strategy<Value = TarOp> + Clone {
    let pax_value = prop_oneof![
        tar_name().prop_map(PaxValue::Name),
        interesting().prop_map(PaxValue::Number),
        prop::sample::select(&["", "x", "-1", "1e3", "00", "\u{0}"][..]).prop_map(PaxValue::Text),
    ];
    prop_oneof![
        8 => (any::<Index>(), tar_field()).prop_map(|(i, f)| TarOp::Field(i, f)),
        2 => (
            any::<Index>(),
            prop::sample::select(PAX_KEYS),
            pax_value,
        )
            .prop_map(|(i, k, v)| TarOp::Pax(i, k, v)),
        1 => any::<Index>().prop_map(TarOp::Drop),
        1 => any::<Index>().prop_map(TarOp::Dup),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TarOp::Swap(a, b)),
        2 => byte_op().prop_map(TarOp::Bytes),
    ]
}

/// A member of a tar stream as found by walking its headers: the header offset and the
/// length of header plus padded data.
#[derive(Clone, Debug)]
pub struct Block {
    pub offset: usize,
    pub len: usize,
}

fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v = 0u64;
        for b in &field[field.len().saturating_sub(8)..] {
            v = (v << 8) | *b as u64;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    u64::from_str_radix(s, 8).ok()
}

/// Walk the header blocks of a tar stream (stops at the end marker or anything unparsable).
pub fn tar_blocks(tar: &[u8]) -> Vec<Block> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 512 <= tar.len() {
        let h = &tar[at..at + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let Some(size) = octal(&h[124..136]) else {
            break;
        };
        let Some(len) = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(511))
            .map(|s| 512 + (s & !511))
        else {
            break;
        };
        if at + len > tar.len() {
            break;
        }
        out.push(Block { offset: at, len });
        at += len;
    }
    out
}

/// The (full) name of the member whose header is at `h`.
fn header_name(h: &[u8]) -> Vec<u8> {
    let name = &h[..100];
    let end = name.iter().position(|b| *b == 0).unwrap_or(100);
    let prefix = &h[345..500];
    let pend = prefix.iter().position(|b| *b == 0).unwrap_or(155);
    let is_ustar = &h[257..263] == b"ustar\0";
    if is_ustar && pend > 0 {
        let mut v = prefix[..pend].to_vec();
        v.push(b'/');
        v.extend_from_slice(&name[..end]);
        v
    } else {
        name[..end].to_vec()
    }
}

/// Fix the checksum of a header block.
pub fn fix_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

fn set_octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() <= digits {
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        // base-256
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        field[0] |= 0x80;
    }
}

fn set_str(field: &mut [u8], s: &[u8]) {
    field.fill(0);
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s[..n]);
}

/// A pax extended header (`x`) with one record, as its own member bytes.
pub fn pax_member(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut total = body_len + 1;
    while format!("{total}").len() + body_len != total {
        total += 1;
    }
    let mut rec = format!("{total} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(rec.len() as u64);
    h.set_mode(0o644);
    set_str(&mut h.as_mut_bytes()[..100], b"././@PaxHeader");
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(&rec);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn resolve_name(n: &TarName, tar: &[u8], blocks: &[Block]) -> Vec<u8> {
    let name_of = |i: &Index| -> Vec<u8> {
        if blocks.is_empty() {
            return b"x".to_vec();
        }
        let b = &blocks[i.index(blocks.len())];
        let mut n = header_name(&tar[b.offset..b.offset + 512]);
        while n.last() == Some(&b'/') {
            n.pop();
        }
        n
    };
    match n {
        TarName::Literal(s) => s.to_vec(),
        TarName::SameAs(i) => name_of(i),
        TarName::Below(i, s) => {
            let mut v = name_of(i);
            v.push(b'/');
            v.extend_from_slice(s.as_bytes());
            v
        }
        TarName::ParentOf(i) => {
            let v = name_of(i);
            match v.iter().rposition(|b| *b == b'/') {
                Some(p) => v[..p].to_vec(),
                None => v,
            }
        }
        TarName::Long(n) => {
            let mut v = b"opt/".to_vec();
            v.extend(std::iter::repeat_n(b'L', *n));
            v
        }
    }
}

/// Apply tar edits; `fix` recomputes the checksum of every header an edit touched.
pub fn apply_tar(base: &[u8], ops: &[TarOp], others: &[Sample], log: &mut String) -> Vec<u8> {
    let mut tar = base.to_vec();
    for op in ops {
        let blocks = tar_blocks(&tar);
        if blocks.is_empty() {
            if let TarOp::Bytes(b) = op {
                b.apply(&mut tar, others, &[], log);
            }
            continue;
        }
        let pick = |i: &Index| blocks[i.index(blocks.len())].clone();
        match op {
            TarOp::Field(i, f) => {
                let b = pick(i);
                let name = String::from_utf8_lossy(&header_name(&tar[b.offset..b.offset + 512]))
                    .into_owned();
                let value = match f {
                    TarField::Name(n) | TarField::Link(n) => Some(resolve_name(n, &tar, &blocks)),
                    _ => None,
                };
                let h = &mut tar[b.offset..b.offset + 512];
                let mut fix = true;
                match f {
                    TarField::Name(_) => {
                        let v = value.expect("name");
                        set_str(&mut h[..100], &v);
                        if &h[257..263] == b"ustar\0" {
                            h[345..500].fill(0);
                        }
                        let _ = write!(log, "member {name:?}: name {}; ", show(&v));
                    }
                    TarField::Link(_) => {
                        let v = value.expect("link");
                        set_str(&mut h[157..257], &v);
                        let _ = write!(log, "member {name:?}: link {}; ", show(&v));
                    }
                    TarField::Type(t) => {
                        h[156] = *t;
                        let _ = write!(log, "member {name:?}: type {:?}; ", *t as char);
                    }
                    TarField::Size(s) => {
                        set_octal(&mut h[124..136], *s);
                        let _ = write!(log, "member {name:?}: size {s}; ");
                    }
                    TarField::Mode(m) => {
                        set_octal(&mut h[100..108], *m as u64);
                        let _ = write!(log, "member {name:?}: mode {m:o}; ");
                    }
                    TarField::Magic(k) => {
                        let (magic, version): (&[u8], &[u8]) = match k {
                            0 => (b"ustar\0", b"00"),
                            1 => (b"ustar ", b" \0"),
                            _ => (b"\0\0\0\0\0\0", b"\0\0"),
                        };
                        h[257..263].copy_from_slice(magic);
                        h[263..265].copy_from_slice(version);
                        let _ = write!(log, "member {name:?}: magic {k}; ");
                    }
                    TarField::BadChecksum => {
                        h[148] ^= 1;
                        fix = false;
                        let _ = write!(log, "member {name:?}: bad checksum; ");
                    }
                }
                if fix {
                    fix_checksum(h);
                }
            }
            TarOp::Pax(i, key, v) => {
                let b = pick(i);
                let value = match v {
                    PaxValue::Name(n) => resolve_name(n, &tar, &blocks),
                    PaxValue::Number(n) => n.to_string().into_bytes(),
                    PaxValue::Text(t) => t.as_bytes().to_vec(),
                };
                let _ = write!(
                    log,
                    "pax {key}={} before the member at {}; ",
                    show(&value),
                    b.offset
                );
                let m = pax_member(key, &value);
                tar.splice(b.offset..b.offset, m);
            }
            TarOp::Drop(i) => {
                let b = pick(i);
                let _ = write!(log, "drop the member at {}; ", b.offset);
                tar.drain(b.offset..b.offset + b.len);
            }
            TarOp::Dup(i) => {
                let b = pick(i);
                let _ = write!(log, "duplicate the member at {}; ", b.offset);
                let m = tar[b.offset..b.offset + b.len].to_vec();
                tar.splice(b.offset..b.offset, m);
            }
            TarOp::Swap(x, y) => {
                let (a, b) = (pick(x), pick(y));
                let (a, b) = if a.offset <= b.offset { (a, b) } else { (b, a) };
                if a.offset == b.offset {
                    continue;
                }
                let _ = write!(log, "swap the members at {} and {}; ", a.offset, b.offset);
                let ma = tar[a.offset..a.offset + a.len].to_vec();
                let mb = tar[b.offset..b.offset + b.len].to_vec();
                let mut out = tar[..a.offset].to_vec();
                out.extend_from_slice(&mb);
                out.extend_from_slice(&tar[a.offset + a.len..b.offset]);
                out.extend_from_slice(&ma);
                out.extend_from_slice(&tar[b.offset + b.len..]);
                tar = out;
            }
            TarOp::Bytes(b) => b.apply(&mut tar, others, &[], log),
        }
    }
    tar
}
