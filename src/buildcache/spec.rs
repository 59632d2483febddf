//! Spec JSON (specfile formats v2–v5): the DAG of a package and its dependencies.
//!
//! A node holds the fields the engine needs: identity, architecture, compiler and typed
//! dependency edges, read in one lenient pass (a member of an unexpected type counts as
//! absent) from a JSON value or straight from the text of an index record. Where its JSON
//! is kept for the database written at the install root, [`RawSpec`] says.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

pub use super::rawspec::RawSpec;

use super::checksum::Sha256;
use super::FormatError;

/// The kinds of a dependency edge Spack knows (`parameters.deptypes`), as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DepTypes(u8);

impl DepTypes {
    const NAMES: [&'static str; 4] = ["build", "link", "run", "test"];

    fn bit(name: &str) -> u8 {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| 1 << i)
    }

    /// The kinds named in `names` (unknown names are dropped: nothing asks for them).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        DepTypes(names.into_iter().fold(0, |acc, n| acc | Self::bit(n)))
    }

    /// The kinds of both.
    pub fn with(self, other: DepTypes) -> Self {
        DepTypes(self.0 | other.0)
    }

    pub fn has(self, name: &str) -> bool {
        let b = Self::bit(name);
        b != 0 && self.0 & b != 0
    }

    /// The kinds by name, in Spack's order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| n)
    }
}

/// A dependency edge. Names and hashes are shared strings: an index of many packages holds
/// each hash once, whoever depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEdge {
    pub name: Arc<str>,
    pub hash: Arc<str>,
    pub deptypes: DepTypes,
    pub virtuals: Box<[Box<str>]>,
}

impl DepEdge {
    pub fn is(&self, deptype: &str) -> bool {
        self.deptypes.has(deptype)
    }

    /// Does the edge provide virtual `name` (`c`, `cxx`, `mpi`…)?
    pub fn provides(&self, name: &str) -> bool {
        self.virtuals.iter().any(|v| &**v == name)
    }
}

/// One node of a spec DAG: the fields the engine needs. The node's JSON itself (for the
/// database written at the install root) is not held in memory for index records: see
/// [`RawSpec`].
#[derive(Debug, Clone)]
pub struct SpecNode {
    pub name: String,
    pub version: String,
    pub hash: String,
    pub platform: Arc<str>,
    pub platform_os: Arc<str>,
    pub target: Arc<str>,
    pub namespace: Arc<str>,
    /// `compiler` object of specfile ≤ v4 (name, version).
    pub compiler: Option<(String, String)>,
    pub external: bool,
    pub deps: Vec<DepEdge>,
    /// Where the node's JSON is, when it is kept (index records of a mount).
    pub raw: RawSpec,
}

/// The fields that name a package and place its prefix, borrowed from a [`SpecNode`] or a
/// row of an index table.
#[derive(Debug, Clone, Copy)]
pub struct NodeIdent<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub hash: &'a str,
    pub namespace: &'a str,
    pub platform: &'a str,
    pub platform_os: &'a str,
    pub target: &'a str,
}

impl NodeIdent<'_> {
    /// `name@version/hash7`, the way users see a package.
    pub fn display(&self) -> String {
        format!("{}@{}/{}", self.name, self.version, short_hash(self.hash))
    }

    /// Does the node answer to `spec`: `name`, `name@version` or `/hashprefix`?
    pub fn answers_to(&self, spec: &str) -> bool {
        let spec = spec.trim();
        if let Some(prefix) = spec.strip_prefix('/') {
            return self.hash.starts_with(prefix);
        }
        match spec.split_once('@') {
            Some((n, v)) => self.name == n && self.version == v,
            None => self.name == spec,
        }
    }

    /// `name-version-hash`, the stem of manifest names.
    pub fn stem(&self) -> String {
        super::sanitize_component(&format!("{}-{}-{}", self.name, self.version, self.hash))
    }
}

impl SpecNode {
    /// The fields that name and place the node.
    pub fn ident(&self) -> NodeIdent<'_> {
        NodeIdent {
            name: &self.name,
            version: &self.version,
            hash: &self.hash,
            namespace: &self.namespace,
            platform: &self.platform,
            platform_os: &self.platform_os,
            target: &self.target,
        }
    }

    /// The node's fields, borrowed, as its text would give them.
    pub fn text(&self) -> NodeText<'_> {
        NodeText {
            name: Cow::Borrowed(&self.name),
            version: Cow::Borrowed(&self.version),
            hash: Cow::Borrowed(&self.hash),
            platform: Cow::Borrowed(&self.platform),
            platform_os: Cow::Borrowed(&self.platform_os),
            target: Cow::Borrowed(&self.target),
            namespace: Cow::Borrowed(&self.namespace),
            compiler: self
                .compiler
                .as_ref()
                .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str()))),
            external: self.external,
            deps: self
                .deps
                .iter()
                .map(|e| EdgeText {
                    name: Cow::Borrowed(&e.name),
                    hash: Cow::Borrowed(&e.hash),
                    deptypes: e.deptypes,
                    virtuals: e.virtuals.iter().map(|v| Cow::Borrowed(&**v)).collect(),
                })
                .collect(),
        }
    }

    /// `name@version/hash7`, the way users see a package.
    pub fn display(&self) -> String {
        self.ident().display()
    }

    /// Does the node answer to `spec`: `name`, `name@version` or `/hashprefix`?
    pub fn answers_to(&self, spec: &str) -> bool {
        self.ident().answers_to(spec)
    }

    /// `name-version-hash`, the stem of manifest names.
    pub fn stem(&self) -> String {
        self.ident().stem()
    }

    /// Parse a node object (specfile v2–v5, or a database record's `spec`). The node keeps
    /// no JSON ([`RawSpec::None`]).
    pub fn from_json(v: &Value, what: &str) -> Result<Self, FormatError> {
        let fields = NodeFields::deserialize(v).map_err(|source| FormatError::Json {
            what: what.to_string(),
            source,
        })?;
        Ok(fields.check(what)?.into_node(&mut Interner::default()))
    }

    /// Parse a node from its JSON text (an index record's `spec`), sharing strings through
    /// `interner`. Returns the node (without JSON) and the hash the text itself gives.
    pub fn from_text(text: &str, what: &str, interner: &mut Interner) -> Result<Self, FormatError> {
        Ok(NodeText::parse(text, what)?.into_node(interner))
    }
}

/// Shared strings for the nodes of one index (hashes, names, targets…): each distinct
/// string is held once.
#[derive(Default)]
pub struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }
}

/// The fields of a node as found in its JSON, read leniently in one pass: a member of an
/// unexpected type counts as absent (as the engine always read them), a repeated member
/// counts once (the last), and members the engine does not use are skipped unread.
#[derive(Default)]
struct NodeFields<'a> {
    is_object: bool,
    name: Option<Cow<'a, str>>,
    hash: Option<Cow<'a, str>>,
    build_hash: Option<Cow<'a, str>>,
    version: Option<Cow<'a, str>>,
    namespace: Option<Cow<'a, str>>,
    arch: ArchFields<'a>,
    compiler: Option<(Cow<'a, str>, Option<Cow<'a, str>>)>,
    external: bool,
    deps: Vec<(Option<Cow<'a, str>>, EdgeFields<'a>)>,
}

#[derive(Default)]
struct ArchFields<'a> {
    platform: Option<Cow<'a, str>>,
    platform_os: Option<Cow<'a, str>>,
    target: Option<Cow<'a, str>>,
}

#[derive(Default)]
struct EdgeFields<'a> {
    name: Option<Cow<'a, str>>,
    hash: Option<Cow<'a, str>>,
    build_hash: Option<Cow<'a, str>>,
    full_hash: Option<Cow<'a, str>>,
    /// `parameters.deptypes`, when `parameters` is an object with that member.
    param_deptypes: Option<DepTypes>,
    virtuals: Vec<Cow<'a, str>>,
    /// `type` (older specfiles).
    kind: DepTypes,
}

/// A node's fields as its JSON text gives them, checked as every node is (a name, a hash
/// of letters and digits, a name and a hash on every edge), borrowing from the text where
/// it can: what a [`SpecNode`] or a row of an [`super::table::IndexTable`] is made of.
pub struct NodeText<'a> {
    pub name: Cow<'a, str>,
    pub version: Cow<'a, str>,
    pub hash: Cow<'a, str>,
    pub platform: Cow<'a, str>,
    pub platform_os: Cow<'a, str>,
    pub target: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub compiler: Option<(Cow<'a, str>, Cow<'a, str>)>,
    pub external: bool,
    pub deps: Vec<EdgeText<'a>>,
}

/// A dependency edge of a [`NodeText`].
pub struct EdgeText<'a> {
    pub name: Cow<'a, str>,
    pub hash: Cow<'a, str>,
    pub deptypes: DepTypes,
    pub virtuals: Vec<Cow<'a, str>>,
}

impl<'a> NodeText<'a> {
    /// Read a node from its JSON text (an index record's `spec`), leniently (see
    /// [`SpecNode`]), and check it.
    pub fn parse(text: &'a str, what: &str) -> Result<Self, FormatError> {
        let fields: NodeFields<'a> =
            serde_json::from_str(text).map_err(|source| FormatError::Json {
                what: what.to_string(),
                source,
            })?;
        fields.check(what)
    }

    /// [`NodeText::parse`] without the dependencies: they are skipped unread (and
    /// unchecked), `deps` is empty. What a listing needs of each of many nodes; the edges
    /// are read when the package is used.
    pub fn parse_head(text: &'a str, what: &str) -> Result<Self, FormatError> {
        let Obj(Head(fields)) =
            serde_json::from_str::<Obj<Head<'a>>>(text).map_err(|source| FormatError::Json {
                what: what.to_string(),
                source,
            })?;
        fields.check(what)
    }

    /// The node, its strings shared through `interner`.
    pub fn into_node(self, interner: &mut Interner) -> SpecNode {
        let deps = self
            .deps
            .into_iter()
            .map(|e| DepEdge {
                name: interner.get(&e.name),
                hash: interner.get(&e.hash),
                deptypes: e.deptypes,
                virtuals: e.virtuals.iter().map(|v| Box::from(v.as_ref())).collect(),
            })
            .collect();
        SpecNode {
            platform: interner.get(&self.platform),
            platform_os: interner.get(&self.platform_os),
            target: interner.get(&self.target),
            namespace: interner.get(&self.namespace),
            name: self.name.into_owned(),
            version: self.version.into_owned(),
            hash: self.hash.into_owned(),
            compiler: self.compiler.map(|(n, v)| (n.into_owned(), v.into_owned())),
            external: self.external,
            deps,
            raw: RawSpec::None,
        }
    }
}

impl<'a> NodeFields<'a> {
    fn check(self, what: &str) -> Result<NodeText<'a>, FormatError> {
        if !self.is_object {
            return Err(FormatError::invalid(what, "spec node is not an object"));
        }
        let name = self
            .name
            .ok_or_else(|| FormatError::invalid(what, "spec node without name"))?;
        let hash = self
            .hash
            .or(self.build_hash)
            .ok_or_else(|| FormatError::invalid(what, format!("spec node {name} without hash")))?;
        if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FormatError::invalid(
                what,
                format!("spec node {name} has an invalid hash {hash:?}"),
            ));
        }
        let mut deps = Vec::with_capacity(self.deps.len());
        for (key, e) in self.deps {
            let dname = key
                .or(e.name)
                .ok_or_else(|| FormatError::invalid(what, "dependency without name"))?;
            let dhash = e.hash.or(e.build_hash).or(e.full_hash).ok_or_else(|| {
                FormatError::invalid(what, format!("dependency {dname} without hash"))
            })?;
            deps.push(EdgeText {
                name: dname,
                hash: dhash,
                deptypes: e.param_deptypes.unwrap_or(e.kind),
                virtuals: e.virtuals,
            });
        }
        let or_empty = |v: Option<Cow<'a, str>>| v.unwrap_or(Cow::Borrowed(""));
        Ok(NodeText {
            platform: or_empty(self.arch.platform),
            platform_os: or_empty(self.arch.platform_os),
            target: or_empty(self.arch.target),
            namespace: or_empty(self.namespace),
            name,
            version: or_empty(self.version),
            hash,
            compiler: self.compiler.map(|(n, v)| (n, or_empty(v))),
            external: self.external,
            deps,
        })
    }
}

/// Skip the rest of a map or sequence.
fn drain_map<'de, A: MapAccess<'de>>(mut m: A) -> Result<(), A::Error> {
    while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut s: A) -> Result<(), A::Error> {
    while s.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the scalar visits of a lenient visitor as "absent" (`$none`).
macro_rules! lenient_scalars {
    ($none:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// A member read as a string: anything else counts as absent.
struct Str<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            lenient_scalars!(Str(None));
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Owned(v))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Self::Value, A::Error> {
                drain_seq(s).map(|_| Str(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                drain_map(m).map(|_| Str(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A member name, borrowed from the text unless it holds escapes (serde's own `Cow<str>`
/// always copies).
pub(crate) struct Key<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A member read as a list of strings: a string is a list of one, a list keeps its
/// strings, anything else is empty.
struct Strs<'a>(Vec<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Strs<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            lenient_scalars!(Strs(Vec::new()));
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Strs(vec![Cow::Borrowed(v)]))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Strs(vec![Cow::Owned(v.to_string())]))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Strs(vec![Cow::Owned(v)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(Str(x)) = s.next_element::<Str>()? {
                    out.extend(x);
                }
                Ok(Strs(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                drain_map(m).map(|_| Strs(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A member read as dependency kinds: a name, or a list whose strings are names; anything
/// else is none (read as [`Strs`] reads it, without keeping the strings).
struct Kinds(DepTypes);

impl<'de> Deserialize<'de> for Kinds {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kinds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            lenient_scalars!(Kinds(DepTypes::default()));
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Kinds(DepTypes::from_names([v])))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut bits = DepTypes::default();
                while let Some(Str(x)) = s.next_element::<Str>()? {
                    if let Some(x) = x {
                        bits = bits.with(DepTypes::from_names([x.as_ref()]));
                    }
                }
                Ok(Kinds(bits))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                drain_map(m).map(|_| Kinds(DepTypes::default()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a member that is meaningful only as an object: `visit` reads each of its members
/// (by key), anything else gives `T::default()`.
struct Obj<T>(T);

/// What a lenient object reader does with each member of the object.
trait ObjFields<'de>: Default {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
    /// Marks the value as having been an object.
    fn seen_object(&mut self) {}
}

impl<'de, T: ObjFields<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: ObjFields<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            lenient_scalars!(Obj(T::default()));
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Obj(T::default()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Self::Value, A::Error> {
                drain_seq(s).map(|_| Obj(T::default()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut t = T::default();
                t.seen_object();
                while let Some(Key(key)) = m.next_key::<Key>()? {
                    t.member(&key, &mut m)?;
                }
                Ok(Obj(t))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(drop)
}

impl<'de> ObjFields<'de> for NodeFields<'de> {
    fn seen_object(&mut self) {
        self.is_object = true;
    }
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "name" => self.name = map.next_value::<Str>()?.0,
            "hash" => self.hash = map.next_value::<Str>()?.0,
            "build_hash" => self.build_hash = map.next_value::<Str>()?.0,
            "version" => self.version = map.next_value::<Str>()?.0,
            "namespace" => self.namespace = map.next_value::<Str>()?.0,
            "arch" => self.arch = map.next_value::<Obj<ArchFields>>()?.0,
            "compiler" => {
                let c = map.next_value::<Obj<CompilerFields>>()?.0;
                self.compiler = c.name.map(|n| (n, c.version));
            }
            "external" => self.external = map.next_value::<NotNull>()?.0,
            "dependencies" => self.deps = map.next_value::<Deps>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

impl<'de> ObjFields<'de> for ArchFields<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "platform" => self.platform = map.next_value::<Str>()?.0,
            "platform_os" => self.platform_os = map.next_value::<Str>()?.0,
            "target" => self.target = map.next_value::<Target>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct CompilerFields<'a> {
    name: Option<Cow<'a, str>>,
    version: Option<Cow<'a, str>>,
}

impl<'de> ObjFields<'de> for CompilerFields<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "name" => self.name = map.next_value::<Str>()?.0,
            "version" => self.version = map.next_value::<Str>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// `{"name": …}` of a target object.
#[derive(Default)]
struct TargetObject<'a>(Option<Cow<'a, str>>);

impl<'de> ObjFields<'de> for TargetObject<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "name" => self.0 = map.next_value::<Str>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// `arch.target`: a name, or an object with a name (specfile v3+).
struct Target<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Target<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Target<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            lenient_scalars!(Target(None));
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Target(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Target(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Self::Value, A::Error> {
                drain_seq(s).map(|_| Target(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut t = TargetObject::default();
                while let Some(Key(key)) = m.next_key::<Key>()? {
                    t.member(&key, &mut m)?;
                }
                // An object without a string name is the empty target (as before).
                Ok(Target(Some(t.0.unwrap_or(Cow::Borrowed("")))))
            }
        }
        d.deserialize_any(V)
    }
}

/// `external`: present and not null.
struct NotNull(bool);

impl<'de> Deserialize<'de> for NotNull {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(NotNull(!matches!(
            serde::Deserialize::deserialize(d)?,
            NullOr::Null
        )))
    }
}

/// Null, or anything else (skipped).
enum NullOr {
    Null,
    Other,
}

impl<'de> Deserialize<'de> for NullOr {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NullOr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NullOr::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(NullOr::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(NullOr::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(NullOr::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(NullOr::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(NullOr::Null)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(NullOr::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Self::Value, A::Error> {
                drain_seq(s).map(|_| NullOr::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                drain_map(m).map(|_| NullOr::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// `dependencies`: a list of edges, or (specfile v1) a map of names to edges; anything
/// else is no dependencies. Each edge is read leniently; one that is not an object has no
/// name nor hash (an error once the node is made).
struct Deps<'a>(Vec<(Option<Cow<'a, str>>, EdgeFields<'a>)>);

impl<'de> Deserialize<'de> for Deps<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Deps<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            lenient_scalars!(Deps(Vec::new()));
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Deps(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(Obj(e)) = s.next_element::<Obj<EdgeFields>>()? {
                    out.push((None, e));
                }
                Ok(Deps(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                // A repeated name counts once, the last (as a JSON object reads).
                let mut out: Vec<(Option<Cow<'de, str>>, EdgeFields<'de>)> = Vec::new();
                while let Some(Key(key)) = m.next_key::<Key>()? {
                    let Obj(e) = m.next_value::<Obj<EdgeFields>>()?;
                    match out.iter_mut().find(|(k, _)| k.as_deref() == Some(&key)) {
                        Some(slot) => slot.1 = e,
                        None => out.push((Some(key), e)),
                    }
                }
                Ok(Deps(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> ObjFields<'de> for EdgeFields<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "name" => self.name = map.next_value::<Str>()?.0,
            "hash" => self.hash = map.next_value::<Str>()?.0,
            "build_hash" => self.build_hash = map.next_value::<Str>()?.0,
            "full_hash" => self.full_hash = map.next_value::<Str>()?.0,
            "type" => self.kind = map.next_value::<Kinds>()?.0,
            "parameters" => {
                let p = map.next_value::<Obj<ParamFields>>()?.0;
                self.param_deptypes = p.deptypes;
                self.virtuals = p.virtuals;
            }
            _ => skip(map)?,
        }
        Ok(())
    }
}

#[derive(Default)]
struct ParamFields<'a> {
    deptypes: Option<DepTypes>,
    virtuals: Vec<Cow<'a, str>>,
}

impl<'de> ObjFields<'de> for ParamFields<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "deptypes" => self.deptypes = Some(map.next_value::<Kinds>()?.0),
            "virtuals" => self.virtuals = map.next_value::<Strs>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// The fields of a node but its dependencies (skipped).
#[derive(Default)]
struct Head<'a>(NodeFields<'a>);

impl<'de> ObjFields<'de> for Head<'de> {
    fn seen_object(&mut self) {
        self.0.seen_object();
    }
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "dependencies" => skip(map),
            _ => self.0.member(key, map),
        }
    }
}

impl<'de> Deserialize<'de> for NodeFields<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Obj::<NodeFields>::deserialize(d)?.0)
    }
}

/// The compiler of `node`: the `compiler` object of specfiles ≤ v4, else the dependency
/// providing `c`, `cxx` or `fortran` (its name and version found with `lookup` by hash).
pub fn compiler_of(
    node: &SpecNode,
    lookup: impl Fn(&str) -> Option<(String, String)>,
) -> Option<(String, String)> {
    if let Some(c) = &node.compiler {
        return Some(c.clone());
    }
    ["c", "cxx", "fortran"].iter().find_map(|lang| {
        node.deps
            .iter()
            .filter(|e| e.provides(lang))
            .find_map(|e| lookup(&e.hash))
    })
}

/// Is `s` a full Spack DAG hash: 32 characters of Spack's base32 alphabet (`a-z`, `2-7`)?
pub fn is_dag_hash(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// The first 7 characters of a DAG hash.
pub fn short_hash(hash: &str) -> &str {
    hash.get(..7).unwrap_or(hash)
}

/// A whole spec DAG (root first), as found in spec blobs and v2 spec files.
#[derive(Debug, Clone)]
pub struct SpecDag {
    pub nodes: IndexMap<String, SpecNode>,
    pub root: String,
    /// `buildcache_layout_version`, when present.
    pub layout_version: Option<i64>,
    /// `binary_cache_checksum.hash` (v2 spec files and OCI configs).
    pub binary_checksum: Option<Sha256>,
}

impl SpecDag {
    /// Parse `{"spec":{"_meta":…,"nodes":[…]}, …}`.
    pub fn parse(json: &[u8], what: &str) -> Result<Self, FormatError> {
        let v: Value = serde_json::from_slice(json).map_err(|source| FormatError::Json {
            what: what.to_string(),
            source,
        })?;
        Self::from_value(&v, what)
    }

    pub fn from_value(v: &Value, what: &str) -> Result<Self, FormatError> {
        let spec = v
            .get("spec")
            .ok_or_else(|| FormatError::invalid(what, "no \"spec\" member"))?;
        let list: Vec<Value> = match spec {
            Value::Object(o) => o
                .get("nodes")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| FormatError::invalid(what, "spec without nodes"))?,
            // specfile v1: a list of single-key maps {name: node}
            Value::Array(a) => a
                .iter()
                .filter_map(|m| m.as_object())
                .filter_map(|m| {
                    let (name, node) = m.iter().next()?;
                    let mut node = node.clone();
                    node.as_object_mut()?
                        .insert("name".into(), Value::String(name.clone()));
                    Some(node)
                })
                .collect(),
            _ => {
                return Err(FormatError::invalid(
                    what,
                    "\"spec\" is neither map nor list",
                ))
            }
        };
        let mut nodes = IndexMap::new();
        for n in list {
            let mut node = SpecNode::from_json(&n, what)?;
            // A package's own DAG is small: its nodes keep their JSON (a listing of a
            // mirror without index writes it into the database at the install root).
            node.raw = RawSpec::Value(Arc::new(n));
            nodes.entry(node.hash.clone()).or_insert(node);
        }
        let root = nodes
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| FormatError::invalid(what, "spec has no nodes"))?;
        if let Some(lv) = v.get("buildcache_layout_version").and_then(Value::as_i64) {
            if lv > 3 {
                return Err(FormatError::invalid(
                    what,
                    format!("buildcache_layout_version {lv} is newer than supported (3)"),
                ));
            }
        }
        Ok(SpecDag {
            nodes,
            root,
            layout_version: v.get("buildcache_layout_version").and_then(Value::as_i64),
            binary_checksum: match v.get("binary_cache_checksum").and_then(|c| c.get("hash")) {
                None => None,
                Some(h) => Some(h.as_str().and_then(Sha256::parse).ok_or_else(|| {
                    FormatError::invalid(what, format!("binary_cache_checksum {h} is not a sha256"))
                })?),
            },
        })
    }

    pub fn root_node(&self) -> &SpecNode {
        &self.nodes[&self.root]
    }

    /// The compiler of a node for `{compiler.*}` projections: the `compiler` object of old
    /// specfiles, else the dependency providing `c`, `cxx` or `fortran`.
    pub fn compiler_of(&self, node: &SpecNode) -> Option<(String, String)> {
        compiler_of(node, |hash| {
            self.nodes
                .get(hash)
                .map(|n| (n.name.clone(), n.version.clone()))
        })
    }

    /// The nodes whose prefixes relocation maps for the root (format doc 7.1 step 4):
    /// breadth-first over link edges from the root (children by name), then the root's direct
    /// run dependencies; externals removed; each hash once.
    pub fn relocation_set(&self) -> Vec<&SpecNode> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::new();
        queue.push_back(self.root.clone());
        seen.insert(self.root.clone());
        while let Some(h) = queue.pop_front() {
            let Some(node) = self.nodes.get(&h) else {
                continue;
            };
            out.push(node);
            let mut children: Vec<&DepEdge> = node.deps.iter().filter(|e| e.is("link")).collect();
            children.sort_by(|a, b| a.name.cmp(&b.name));
            for e in children {
                if seen.insert(e.hash.to_string()) {
                    queue.push_back(e.hash.to_string());
                }
            }
        }
        let root = self.root_node();
        let mut run: Vec<&DepEdge> = root.deps.iter().filter(|e| e.is("run")).collect();
        run.sort_by(|a, b| a.name.cmp(&b.name));
        for e in run {
            if seen.insert(e.hash.to_string()) {
                if let Some(n) = self.nodes.get(&*e.hash) {
                    out.push(n);
                }
            }
        }
        out.retain(|n| !n.external);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAG: &str = r#"{"spec":{"_meta":{"version":5},"nodes":[
      {"name":"app","version":"1","arch":{"platform":"linux","platform_os":"debian12","target":{"name":"zen3"}},
       "dependencies":[{"name":"zlib","hash":"zzz","parameters":{"deptypes":["build","link"],"virtuals":[]}},
                       {"name":"gcc","hash":"ggg","parameters":{"deptypes":["build"],"virtuals":["c"]}},
                       {"name":"python","hash":"ppp","parameters":{"deptypes":["run"],"virtuals":[]}},
                       {"name":"bzip2","hash":"bbb","parameters":{"deptypes":["link"],"virtuals":[]}}],
       "hash":"aaa"},
      {"name":"zlib","version":"1.3","hash":"zzz","dependencies":[{"name":"glibc","hash":"lll","parameters":{"deptypes":["link"]}}]},
      {"name":"glibc","version":"2.36","hash":"lll","external":{"path":"/usr"}},
      {"name":"gcc","version":"12","hash":"ggg"},
      {"name":"python","version":"3","hash":"ppp"},
      {"name":"bzip2","version":"1","hash":"bbb"}]},"buildcache_layout_version":2}"#;

    #[test]
    fn relocation_set_is_bfs_by_name_then_run_deps_without_externals() {
        let dag = SpecDag::parse(DAG.as_bytes(), "t").unwrap();
        let names: Vec<_> = dag
            .relocation_set()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        assert_eq!(names, ["app", "bzip2", "zlib", "python"]);
        assert_eq!(&*dag.root_node().target, "zen3");
        assert_eq!(
            dag.compiler_of(dag.root_node()),
            Some(("gcc".into(), "12".into()))
        );
    }

    #[test]
    fn newer_layout_is_rejected() {
        let j = r#"{"spec":{"nodes":[{"name":"a","hash":"h"}]},"buildcache_layout_version":4}"#;
        assert!(SpecDag::parse(j.as_bytes(), "t").is_err());
    }
}
