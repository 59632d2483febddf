//! The packages of one index, compact: every string (names, versions, hashes, targets…)
//! held once in the table's interner, each package a fixed-size row of string keys, the
//! dependency edges of all packages in one array, and each spec's JSON left where the index
//! keeps it (a spool). A mount of 200,000 packages holds a few hundred bytes per package
//! here, not a tree of owned strings. A [`PackageRef`] is one package of a table; the full
//! [`SpecNode`] of a package is made from its row when a package is used (touched,
//! fetched, installed), never for listing or lookup.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};
use lasso::{RodeoResolver, Spur, ThreadedRodeo};
use serde_json::Value;

use super::rawspec::{RawSpec, Spool};
use super::spec::{DepEdge, DepTypes, NodeIdent, NodeText, SpecNode};
use super::FormatError;

/// A string of a table.
type Sym = Spur;

const EXTERNAL: u8 = 1;
const IN_CACHE: u8 = 2;
const HASH_DIFFERS: u8 = 4;
const RAW_SPOOL: u8 = 8;
const RAW_VALUE: u8 = 16;
/// The row's dependency edges are not in the table: they are read from its spec's JSON
/// when asked for.
const EDGES_IN_SPEC: u8 = 32;

/// A spooled spec's place: the spool's number in the table above this bit, its offset in
/// the spool below (spools are at most [`super::rawspec::SPOOL_LIMIT`] bytes).
const SPOOL_SHIFT: u32 = 40;

/// Virtual names of an edge are kept as one string, joined by this.
const VIRTUALS_SEP: char = '\n';

/// One package.
#[derive(Debug, Clone, Copy)]
struct Row {
    name: Sym,
    version: Sym,
    hash: Sym,
    platform: Sym,
    platform_os: Sym,
    target: Sym,
    namespace: Sym,
    /// The `compiler` object of specfiles up to v4 (name, version).
    compiler: Option<(Sym, Sym)>,
    /// The row's edges end here in the edge array; they start where the previous row's end.
    edges_end: u32,
    /// The spec's JSON: its length in the spool (with `RAW_SPOOL`).
    raw_len: u32,
    /// The spec's JSON: spool and offset (`RAW_SPOOL`), or number among the values
    /// (`RAW_VALUE`).
    raw_at: u64,
    flags: u8,
}

/// One dependency edge.
#[derive(Debug, Clone, Copy)]
struct Edge {
    name: Sym,
    hash: Sym,
    /// The virtual names it provides, joined by [`VIRTUALS_SEP`]; `None` when none.
    virtuals: Option<Sym>,
    deptypes: DepTypes,
}

/// Where a spec's JSON is, for a row being added.
pub enum RawAt {
    /// Not kept.
    None,
    /// In spool `spool` (a number given by [`TableBuilder::add_spool`]) at `offset`.
    /// `edges_in_spec`: the node's edges were not read (see [`NodeText::parse_head`]):
    /// they are read from there when asked for.
    Spool {
        spool: usize,
        offset: u64,
        len: usize,
        hash_differs: bool,
        edges_in_spec: bool,
    },
    /// Held as a value.
    Value(Arc<Value>),
}

/// The strings of a table being made, shared by the threads that parse its parts.
pub struct TableStrings(ThreadedRodeo<Spur, DefaultHashBuilder>);

impl Default for TableStrings {
    fn default() -> Self {
        TableStrings(ThreadedRodeo::with_hasher(DefaultHashBuilder::default()))
    }
}

impl TableStrings {
    fn get(&self, s: &str, what: &str) -> Result<Sym, FormatError> {
        self.0
            .try_get_or_intern(s)
            .map_err(|e| FormatError::invalid(what, format!("too many strings: {e}")))
    }
}

/// One thread's way into a table's strings: a small cache of the strings it met last (a
/// fixed number of slots, each holding a short string and its key; a slot is overwritten
/// by the next string that falls into it) answers most lookups without the shared
/// interner and its locks. Names, versions and targets recur thousands of times in an
/// index, the hashes of common dependencies hundreds.
pub struct Interning<'s> {
    strings: &'s TableStrings,
    hasher: DefaultHashBuilder,
    slots: Box<[Slot]>,
}

/// Strings up to this long are cached.
const SLOT_BYTES: usize = 47;
/// Cache slots per thread (a power of two): about 200 KiB.
const SLOTS: usize = 4096;

#[derive(Clone, Copy)]
struct Slot {
    key: Option<Sym>,
    len: u8,
    bytes: [u8; SLOT_BYTES],
}

impl<'s> Interning<'s> {
    pub fn new(strings: &'s TableStrings) -> Self {
        let empty = Slot {
            key: None,
            len: 0,
            bytes: [0; SLOT_BYTES],
        };
        Interning {
            strings,
            hasher: DefaultHashBuilder::default(),
            slots: vec![empty; SLOTS].into_boxed_slice(),
        }
    }

    /// Without a cache (a few nodes added one by one).
    pub fn uncached(strings: &'s TableStrings) -> Self {
        Interning {
            strings,
            hasher: DefaultHashBuilder::default(),
            slots: Box::default(),
        }
    }

    fn get(&mut self, s: &str, what: &str) -> Result<Sym, FormatError> {
        if s.len() > SLOT_BYTES || self.slots.is_empty() {
            return self.strings.get(s, what);
        }
        let slot = &mut self.slots[self.hasher.hash_one(s) as usize & (SLOTS - 1)];
        if let Some(k) = slot.key {
            if &slot.bytes[..slot.len as usize] == s.as_bytes() {
                return Ok(k);
            }
        }
        let k = self.strings.get(s, what)?;
        slot.key = Some(k);
        slot.len = s.len() as u8;
        slot.bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(k)
    }
}

/// Rows made by one thread, in order; appended to a table by [`TableBuilder::append`].
#[derive(Default)]
pub struct Rows {
    rows: Vec<Row>,
    edges: Vec<Edge>,
    values: Vec<Arc<Value>>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Append the rows of `part` (made with the same strings), in order.
    pub fn append(&mut self, mut part: Rows, what: &str) -> Result<(), FormatError> {
        let edge_base = u32::try_from(self.edges.len())
            .map_err(|_| FormatError::invalid(what, "too many dependency edges"))?;
        let value_base = self.values.len() as u64;
        if self.rows.is_empty() && self.edges.is_empty() && self.values.is_empty() {
            // The first part moves in whole.
            std::mem::swap(self, &mut part);
            return Ok(());
        }
        for mut r in part.rows {
            r.edges_end = r
                .edges_end
                .checked_add(edge_base)
                .ok_or_else(|| FormatError::invalid(what, "too many dependency edges"))?;
            if r.flags & RAW_VALUE != 0 {
                r.raw_at += value_base;
            }
            self.rows.push(r);
        }
        self.edges.extend(part.edges);
        self.values.extend(part.values);
        Ok(())
    }

    /// Add a package: `node` under `hash` (the index's key for it, which wins over the
    /// node's own), with its JSON at `raw`.
    pub fn push(
        &mut self,
        strings: &mut Interning<'_>,
        node: &NodeText<'_>,
        hash: &str,
        in_buildcache: bool,
        raw: RawAt,
        what: &str,
    ) -> Result<(), FormatError> {
        let mut s = |v: &str| strings.get(v, what);
        for e in &node.deps {
            let virtuals = match e.virtuals.as_slice() {
                [] => None,
                [one] => Some(s(one)?),
                many => {
                    let joined = many.join(VIRTUALS_SEP.encode_utf8(&mut [0; 4]));
                    Some(s(&joined)?)
                }
            };
            self.edges.push(Edge {
                name: s(&e.name)?,
                hash: s(&e.hash)?,
                virtuals,
                deptypes: e.deptypes,
            });
        }
        let compiler = match &node.compiler {
            Some((n, v)) => Some((s(n)?, s(v)?)),
            None => None,
        };
        let mut flags = 0;
        if node.external {
            flags |= EXTERNAL;
        }
        if in_buildcache {
            flags |= IN_CACHE;
        }
        let (raw_at, raw_len) = match raw {
            RawAt::None => (0, 0),
            RawAt::Spool {
                spool,
                offset,
                len,
                hash_differs,
                edges_in_spec,
            } => {
                let len = u32::try_from(len).map_err(|_| {
                    FormatError::invalid(what, format!("the spec of {hash} is over 4 GiB"))
                })?;
                if spool >= 1 << (64 - SPOOL_SHIFT) || offset >= 1 << SPOOL_SHIFT {
                    return Err(FormatError::invalid(what, "index too large"));
                }
                flags |= RAW_SPOOL;
                if hash_differs {
                    flags |= HASH_DIFFERS;
                }
                if edges_in_spec {
                    flags |= EDGES_IN_SPEC;
                }
                (((spool as u64) << SPOOL_SHIFT) | offset, len)
            }
            RawAt::Value(v) => {
                flags |= RAW_VALUE;
                self.values.push(v);
                ((self.values.len() - 1) as u64, 0)
            }
        };
        let edges_end = u32::try_from(self.edges.len())
            .map_err(|_| FormatError::invalid(what, "too many dependency edges"))?;
        self.rows.push(Row {
            name: s(&node.name)?,
            version: s(&node.version)?,
            hash: s(hash)?,
            platform: s(&node.platform)?,
            platform_os: s(&node.platform_os)?,
            target: s(&node.target)?,
            namespace: s(&node.namespace)?,
            compiler,
            edges_end,
            raw_len,
            raw_at,
            flags,
        });
        Ok(())
    }
}

/// Makes a table: rows appended in order (parsed in parts by several threads, or added one
/// node at a time), then [`TableBuilder::finish`].
#[derive(Default)]
pub struct TableBuilder {
    strings: TableStrings,
    rows: Rows,
    spools: Vec<Arc<Spool>>,
}

impl TableBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The strings, to make [`Rows`] with.
    pub fn strings(&self) -> &TableStrings {
        &self.strings
    }

    /// Use `spool` for spooled JSON; returns its number for [`RawAt::Spool`].
    pub fn add_spool(&mut self, spool: &Arc<Spool>) -> usize {
        match self.spools.iter().position(|s| Arc::ptr_eq(s, spool)) {
            Some(i) => i,
            None => {
                self.spools.push(spool.clone());
                self.spools.len() - 1
            }
        }
    }

    pub fn len(&self) -> usize {
        self.rows.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.rows.is_empty()
    }

    /// Add `node` (the package list of a mirror without an index, an OCI listing…), its
    /// JSON as the node keeps it.
    pub fn push_node(&mut self, node: &SpecNode, in_buildcache: bool) -> Result<(), FormatError> {
        let raw = match &node.raw {
            RawSpec::None => RawAt::None,
            RawSpec::Value(v) => RawAt::Value(v.clone()),
            RawSpec::Spooled {
                spool,
                offset,
                len,
                hash_differs,
            } => RawAt::Spool {
                spool: self.add_spool(spool),
                offset: *offset,
                len: *len as usize,
                hash_differs: *hash_differs,
                edges_in_spec: false,
            },
        };
        let text = node.text();
        let what = node.display();
        let mut strings = Interning::uncached(&self.strings);
        self.rows
            .push(&mut strings, &text, &node.hash, in_buildcache, raw, &what)
    }

    /// The table.
    pub fn finish(self) -> IndexTable {
        IndexTable::assemble(self.strings, self.rows, self.spools, "package list")
    }
}

/// The packages of one index (see the module's documentation).
pub struct IndexTable {
    strings: RodeoResolver<Spur>,
    rows: Vec<Row>,
    edges: Vec<Edge>,
    /// Row numbers, by their hash.
    by_hash: HashTable<u32>,
    hasher: DefaultHashBuilder,
    spools: Vec<Arc<Spool>>,
    values: Vec<Arc<Value>>,
    /// What the rows were read from, for errors (the index's URL).
    what: Box<str>,
    /// The rows are the whole of spool 0, parsed (see [`IndexTable::whole_spool`]).
    whole: bool,
}

impl std::fmt::Debug for IndexTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexTable")
            .field("rows", &self.rows.len())
            .field("edges", &self.edges.len())
            .field("strings", &self.strings.len())
            .finish()
    }
}

impl Default for IndexTable {
    fn default() -> Self {
        TableBuilder::new().finish()
    }
}

impl IndexTable {
    /// The table of `rows` (made with `strings`, their spooled JSON in `spools`), with its
    /// lookup by hash (the first row of a hash listed twice).
    pub fn assemble(
        strings: TableStrings,
        rows: Rows,
        spools: Vec<Arc<Spool>>,
        what: &str,
    ) -> Self {
        let Rows {
            mut rows,
            mut edges,
            mut values,
        } = rows;
        rows.shrink_to_fit();
        edges.shrink_to_fit();
        values.shrink_to_fit();
        let strings = strings.0.into_resolver();
        let hasher = DefaultHashBuilder::default();
        let mut by_hash = HashTable::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let hash = strings.resolve(&r.hash);
            let h = hasher.hash_one(hash);
            let eq = |&j: &u32| strings.resolve(&rows[j as usize].hash) == hash;
            if by_hash.find(h, eq).is_none() {
                by_hash.insert_unique(h, i as u32, |&j: &u32| {
                    hasher.hash_one(strings.resolve(&rows[j as usize].hash))
                });
            }
        }
        IndexTable {
            strings,
            rows,
            edges,
            by_hash,
            hasher,
            spools,
            values,
            what: what.into(),
            whole: false,
        }
    }

    /// The table of a whole index database the spool holds ([`super::index::parse_spool`]).
    pub(super) fn of_whole_spool(mut self) -> Self {
        self.whole = self.spools.len() == 1;
        self
    }

    /// The spool this table was parsed from in full, if it was: a Spack database whose
    /// records are exactly this table's rows.
    pub fn whole_spool(&self) -> Option<&Arc<Spool>> {
        self.spools.first().filter(|_| self.whole)
    }

    /// A table of `nodes` (with whether each is in the build cache), in order.
    pub fn from_nodes<'a>(
        nodes: impl IntoIterator<Item = (&'a SpecNode, bool)>,
    ) -> Result<Self, FormatError> {
        let mut b = TableBuilder::new();
        for (node, in_cache) in nodes {
            b.push_node(node, in_cache)?;
        }
        Ok(b.finish())
    }

    /// The rows of `tables`, in order, in one table.
    pub fn concat(tables: &[Arc<IndexTable>]) -> Result<Self, FormatError> {
        let mut b = TableBuilder::new();
        for t in tables {
            for p in IndexTable::packages(t) {
                b.push_node(&p.spec()?, p.in_buildcache())?;
            }
        }
        Ok(b.finish())
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The row of `hash` (the first, if the index lists it twice).
    pub fn find(&self, hash: &str) -> Option<u32> {
        let h = self.hasher.hash_one(hash);
        self.by_hash
            .find(h, |&j| self.str(self.rows[j as usize].hash) == hash)
            .copied()
    }

    /// Package `row`.
    pub fn package(this: &Arc<Self>, row: u32) -> PackageRef {
        debug_assert!((row as usize) < this.rows.len());
        PackageRef {
            table: this.clone(),
            row,
        }
    }

    /// Every package, in order.
    pub fn packages(this: &Arc<Self>) -> impl Iterator<Item = PackageRef> + '_ {
        (0..this.rows.len() as u32).map(move |row| IndexTable::package(this, row))
    }

    /// The hash of `row`.
    pub fn hash(&self, row: u32) -> &str {
        self.str(self.rows[row as usize].hash)
    }

    /// The fields that name and place `row`.
    pub fn ident(&self, row: u32) -> NodeIdent<'_> {
        let r = &self.rows[row as usize];
        NodeIdent {
            name: self.str(r.name),
            version: self.str(r.version),
            hash: self.str(r.hash),
            namespace: self.str(r.namespace),
            platform: self.str(r.platform),
            platform_os: self.str(r.platform_os),
            target: self.str(r.target),
        }
    }

    /// Does the index list `row` as in the build cache?
    pub fn in_buildcache(&self, row: u32) -> bool {
        self.rows[row as usize].flags & IN_CACHE != 0
    }

    /// Is `row` an external package?
    pub fn is_external(&self, row: u32) -> bool {
        self.rows[row as usize].flags & EXTERNAL != 0
    }

    fn str(&self, s: Sym) -> &str {
        self.strings.resolve(&s)
    }

    fn edges(&self, row: u32) -> &[Edge] {
        let end = self.rows[row as usize].edges_end as usize;
        let start = match row {
            0 => 0,
            r => self.rows[r as usize - 1].edges_end as usize,
        };
        &self.edges[start..end]
    }
}

/// One package of a table (sixteen bytes: the table and a row number).
#[derive(Clone)]
pub struct PackageRef {
    table: Arc<IndexTable>,
    row: u32,
}

impl std::fmt::Debug for PackageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackageRef({})", self.display())
    }
}

impl PackageRef {
    fn r(&self) -> &Row {
        &self.table.rows[self.row as usize]
    }

    fn s(&self, s: Sym) -> &str {
        self.table.str(s)
    }

    pub fn name(&self) -> &str {
        self.s(self.r().name)
    }

    pub fn version(&self) -> &str {
        self.s(self.r().version)
    }

    /// The DAG hash (the index's key for the package).
    pub fn hash(&self) -> &str {
        self.s(self.r().hash)
    }

    pub fn is_external(&self) -> bool {
        self.r().flags & EXTERNAL != 0
    }

    /// Does its index list it as in the build cache?
    pub fn in_buildcache(&self) -> bool {
        self.r().flags & IN_CACHE != 0
    }

    /// The `compiler` object of old specfiles (name, version).
    pub fn own_compiler(&self) -> Option<(&str, &str)> {
        self.r().compiler.map(|(n, v)| (self.s(n), self.s(v)))
    }

    /// The fields that name and place the package.
    pub fn ident(&self) -> NodeIdent<'_> {
        self.table.ident(self.row)
    }

    /// `name@version/hash7`.
    pub fn display(&self) -> String {
        self.ident().display()
    }

    /// `name-version-hash`, the stem of manifest names.
    pub fn stem(&self) -> String {
        self.ident().stem()
    }

    /// Does the package answer to `spec`: `name`, `name@version` or `/hashprefix`?
    pub fn answers_to(&self, spec: &str) -> bool {
        self.ident().answers_to(spec)
    }

    /// Where its JSON is kept.
    fn raw(&self) -> RawSpec {
        let r = self.r();
        if r.flags & RAW_SPOOL != 0 {
            let spool = (r.raw_at >> SPOOL_SHIFT) as usize;
            RawSpec::Spooled {
                spool: self.table.spools[spool].clone(),
                offset: r.raw_at & ((1 << SPOOL_SHIFT) - 1),
                len: r.raw_len,
                hash_differs: r.flags & HASH_DIFFERS != 0,
            }
        } else if r.flags & RAW_VALUE != 0 {
            RawSpec::Value(self.table.values[r.raw_at as usize].clone())
        } else {
            RawSpec::None
        }
    }

    /// Write its spec's JSON, with `"hash"` its hash ([`RawSpec::write_to`]).
    pub fn write_spec(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.raw()
            .write_to(out, self.name(), self.version(), self.hash())
    }

    /// The full node: made from the row, or (when its edges were left in its JSON) read
    /// from its JSON, whose dependency edges are checked now. The index's key is its hash.
    pub fn spec(&self) -> Result<SpecNode, FormatError> {
        if self.r().flags & EDGES_IN_SPEC == 0 {
            return Ok(self.spec_of_row());
        }
        let what = format!("{}, record {}", self.table.what, self.hash());
        let RawSpec::Spooled {
            spool, offset, len, ..
        } = self.raw()
        else {
            return Err(FormatError::invalid(what, "its spec is not kept"));
        };
        let bytes = spool
            .read_at(offset, len as usize)
            .map_err(|e| FormatError::invalid(&what, format!("reading its spec: {e}")))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| FormatError::invalid(&what, format!("its spec: {e}")))?;
        let mut node = NodeText::parse(text, &what)?.into_node(&mut Default::default());
        node.hash = self.hash().to_string();
        node.raw = self.raw();
        Ok(node)
    }

    /// Its dependency edges (see [`PackageRef::spec`]).
    pub fn deps(&self) -> Result<Vec<DepEdge>, FormatError> {
        if self.r().flags & EDGES_IN_SPEC != 0 {
            return Ok(self.spec()?.deps);
        }
        Ok(self.edges_of_row().collect())
    }

    fn edges_of_row(&self) -> impl Iterator<Item = DepEdge> + '_ {
        self.table.edges(self.row).iter().map(|e| DepEdge {
            name: Arc::from(self.s(e.name)),
            hash: Arc::from(self.s(e.hash)),
            deptypes: e.deptypes,
            virtuals: match e.virtuals.map_or("", |v| self.s(v)) {
                "" => Box::default(),
                v => v.split(VIRTUALS_SEP).map(Box::from).collect(),
            },
        })
    }

    fn spec_of_row(&self) -> SpecNode {
        let r = *self.r();
        let arc = |s: Sym| Arc::<str>::from(self.s(s));
        SpecNode {
            name: self.s(r.name).to_string(),
            version: self.s(r.version).to_string(),
            hash: self.s(r.hash).to_string(),
            platform: arc(r.platform),
            platform_os: arc(r.platform_os),
            target: arc(r.target),
            namespace: arc(r.namespace),
            compiler: self
                .own_compiler()
                .map(|(n, v)| (n.to_string(), v.to_string())),
            external: self.is_external(),
            deps: self.edges_of_row().collect(),
            raw: self.raw(),
        }
    }

    /// Is it a row of `table`?
    pub fn is_in(&self, table: &Arc<IndexTable>) -> bool {
        Arc::ptr_eq(&self.table, table)
    }

    /// Are both rows of the same table?
    pub fn same_table(&self, other: &PackageRef) -> bool {
        Arc::ptr_eq(&self.table, &other.table)
    }

    /// The same package in a table of its own, its JSON held as a value (so that a package
    /// kept after its index was replaced keeps neither the old table nor the old index's
    /// copy on disk); itself when its spec cannot be read.
    pub fn detached(&self) -> PackageRef {
        if self.table.len() == 1 && self.table.spools.is_empty() {
            return self.clone();
        }
        let mut b = TableBuilder::new();
        let copied = self.spec().and_then(|mut node| {
            if let RawSpec::Spooled { .. } = node.raw {
                let mut json = Vec::new();
                self.write_spec(&mut json)
                    .map_err(|e| FormatError::invalid(self.display(), e.to_string()))?;
                let value: Value =
                    serde_json::from_slice(&json).map_err(|source| FormatError::Json {
                        what: self.display(),
                        source,
                    })?;
                node.raw = RawSpec::Value(Arc::new(value));
            }
            b.push_node(&node, self.in_buildcache())
        });
        match copied {
            Ok(()) => IndexTable::package(&Arc::new(b.finish()), 0),
            Err(_) => self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> SpecNode {
        let mut n = SpecNode::from_json(&json, "t").unwrap();
        n.raw = RawSpec::Value(Arc::new(json));
        n
    }

    /// A row gives back every field of the node it was made of, its edges in order, and
    /// its JSON; lookups by hash find the first row of a hash.
    #[test]
    fn rows_round_trip_nodes() {
        let a = node(
            serde_json::json!({"name":"app","version":"1.0","hash":"aaa","namespace":"builtin",
            "arch":{"platform":"linux","platform_os":"debian12","target":{"name":"zen3"}},
            "compiler":{"name":"gcc","version":"12"},
            "dependencies":[{"name":"zlib","hash":"zzz","parameters":{"deptypes":["build","link"],"virtuals":[]}},
                            {"name":"gcc","hash":"ggg","parameters":{"deptypes":"build","virtuals":["c","cxx"]}}]}),
        );
        let z = node(
            serde_json::json!({"name":"zlib","version":"1.3","hash":"zzz","external":{"path":"/usr"}}),
        );
        let t = Arc::new(IndexTable::from_nodes([(&a, true), (&z, false), (&a, false)]).unwrap());
        assert_eq!(t.len(), 3);
        assert_eq!(t.find("aaa"), Some(0));
        assert_eq!(t.find("zzz"), Some(1));
        assert_eq!(t.find("aa"), None);
        let p = IndexTable::package(&t, 0);
        assert!(p.in_buildcache() && !p.is_external());
        let back = p.spec().unwrap();
        assert_eq!(
            (
                back.name.as_str(),
                back.version.as_str(),
                back.hash.as_str()
            ),
            ("app", "1.0", "aaa")
        );
        assert_eq!((&*back.platform, &*back.target), ("linux", "zen3"));
        assert_eq!(back.compiler, Some(("gcc".into(), "12".into())));
        assert_eq!(back.deps, a.deps);
        let edges: Vec<_> = p
            .deps()
            .unwrap()
            .iter()
            .map(|e| (e.name.to_string(), e.provides("c"), e.is("link")))
            .collect();
        assert_eq!(
            edges,
            [("zlib".into(), false, true), ("gcc".into(), true, false)]
        );
        let zp = IndexTable::package(&t, 1);
        assert!(zp.is_external() && !zp.in_buildcache());
        let mut out = Vec::new();
        zp.write_spec(&mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["external"]["path"], "/usr");
        let d = p.detached();
        assert_eq!(d.spec().unwrap().deps, a.deps);
        assert!(!d.is_in(&t));
    }

    /// A package of an index's table, detached, keeps neither the table nor the index's
    /// spool, and writes the same JSON; its edges, read from its spec, come along.
    #[test]
    fn a_detached_package_keeps_nothing_of_its_index() {
        let db = br#"{"database":{"version":"8","installs":{
            "aaa":{"spec":{"name":"a","version":"1","hash":"zzz","dependencies":[{"name":"b","hash":"bbb","parameters":{"deptypes":["link"],"virtuals":[]}}]},"in_buildcache":true},
            "bbb":{"spec":{"name":"b","version":"2","hash":"bbb"},"in_buildcache":true}}}}"#;
        let t = Arc::new(super::super::index::parse(db, "t").unwrap());
        let a = IndexTable::package(&t, 0);
        let d = a.detached();
        assert!(!d.is_in(&t) && d.table.spools.is_empty() && d.table.len() == 1);
        let json = |p: &PackageRef| {
            let mut out = Vec::new();
            p.write_spec(&mut out).unwrap();
            serde_json::from_slice::<Value>(&out).unwrap()
        };
        assert_eq!(json(&d), json(&a));
        assert_eq!(json(&d)["hash"], "aaa");
        assert_eq!(d.deps().unwrap(), a.deps().unwrap());
        assert_eq!(d.deps().unwrap()[0].hash.as_ref(), "bbb");
    }
}
