//! The package index: a Spack database JSON (`{"database":{"version":"8","installs":{…}}}`),
//! read as a stream (indexes of public caches run to hundreds of MB: nothing is held but the
//! records, and nothing is ever cut short).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::rawspec::Spool;
use super::spec::{Key, NodeText};
use super::table::{IndexTable, Interning, PackageRef, RawAt, Rows, TableStrings};
use super::FormatError;

/// Parse an index database held in memory (copied to a spool in the temporary
/// directory first, as [`parse_spool`] reads it).
pub fn parse(json: &[u8], what: &str) -> Result<IndexTable, FormatError> {
    let spool = Spool::copy_from(&std::env::temp_dir(), &mut &json[..])
        .map_err(|e| FormatError::invalid(what, format!("copying the index: {e}")))?;
    parse_spool(&Arc::new(spool), what)
}

/// Parse the index database a spool holds (its whole content); rows keep index order,
/// and each points at its spec's text in the spool, where its dependency edges are read
/// when asked for. Accepts DB versions 6, 7 and 8.
pub fn parse_spool(spool: &Arc<Spool>, what: &str) -> Result<IndexTable, FormatError> {
    if spool.is_empty() {
        return parse_bytes(b"", what, None);
    }
    let map = spool
        .map()
        .map_err(|e| FormatError::invalid(what, format!("mapping the index: {e}")))?;
    parse_bytes(&map, what, Some((spool, &map)))
}

/// Write a Spack database of `records`, in order: each record keyed by its package's hash,
/// its spec as the table keeps it ([`PackageRef::write_spec`]), then the record's other
/// members, which `tail` gives (JSON members without the braces, e.g. `"ref_count":0`)
/// from the record's number, its spec's text and the offset in `out` where the tail goes.
pub fn write_database<'a>(
    records: impl Iterator<Item = &'a PackageRef>,
    mut tail: impl FnMut(usize, &PackageRef, &[u8], u64) -> String,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    // The offset reached in `out`.
    let mut at = 0u64;
    let mut put = |bytes: &[u8], at: &mut u64| {
        *at += bytes.len() as u64;
        out.write_all(bytes)
    };
    put(br#"{"database":{"version":"8","installs":{"#, &mut at)?;
    let mut spec = Vec::new();
    for (i, node) in records.enumerate() {
        if i > 0 {
            put(b",", &mut at)?;
        }
        put(&serde_json::to_vec(node.hash())?, &mut at)?;
        put(br#":{"spec":"#, &mut at)?;
        spec.clear();
        node.write_spec(&mut spec)?;
        put(&spec, &mut at)?;
        put(b",", &mut at)?;
        let rest = tail(i, node, &spec, at);
        put(rest.as_bytes(), &mut at)?;
        put(b"}", &mut at)?;
    }
    put(b"}}}", &mut at)
}

/// Records are handed to the parsing threads in batches of this many.
const BATCH: usize = 256;
/// Below this size an index is parsed on the calling thread alone.
const PARALLEL_FROM: usize = 4 << 20;
/// The mapped bytes more than this far behind the parse are released (the peak memory of
/// a parse does not grow with the index); a multiple of every page size.
const WINDOW: usize = 4 << 20;

/// One pass over the JSON text (never a tree of it): the envelope is walked on the calling
/// thread, each record's spec found as a slice of the text, and the specs are parsed, in
/// batches, on worker threads (one per core, up to 4) while the walk goes on, into rows of
/// one table (strings interned as they are read). Parsed batches are appended in file
/// order as they come back; the first error in file order is the one reported.
fn parse_bytes(
    json: &[u8],
    what: &str,
    keep: Option<(&Arc<Spool>, &memmap2::Mmap)>,
) -> Result<IndexTable, FormatError> {
    let workers = if json.len() < PARALLEL_FROM {
        0
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    };
    let strings = TableStrings::default();
    let specs = Specs {
        what,
        base: json.as_ptr() as usize,
        strings: &strings,
    };
    let failed = AtomicBool::new(false);
    let (done, results) = mpsc::channel::<Done>();
    // A queue per worker (batches dealt in turn): a worker that stopped closes its own.
    let (jobs, queues): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::sync_channel::<Batch>(2)).unzip();
    let rows = std::thread::scope(|scope| {
        for queue in queues {
            let (done, specs, failed) = (done.clone(), &specs, &failed);
            scope.spawn(move || {
                let mut strings = Interning::new(specs.strings);
                for (no, batch) in queue {
                    let r = specs.rows(batch, &mut strings);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if done.send((no, r)).is_err() {
                        return;
                    }
                }
            });
        }
        let mut state = Parse {
            specs: &specs,
            strings: Interning::new(&strings),
            jobs,
            done,
            results,
            batch: Vec::with_capacity(BATCH),
            sent: 0,
            collected: Collected::default(),
            failed: &failed,
            map: keep.map(|k| k.1),
            released: 0,
            error: None,
        };
        let mut de = serde_json::Deserializer::from_slice(json);
        let parsed = EnvelopeSeed(&mut state)
            .deserialize(&mut de)
            .and_then(|head| de.end().map(|()| head));
        // The records before the point reached (an error stops there) are all parsed: a
        // record's own error comes before any later one of the text.
        state.send_batch();
        let Parse {
            jobs,
            done,
            results,
            mut collected,
            error,
            ..
        } = state;
        drop((jobs, done));
        for (no, r) in results.iter() {
            collected.add(no, r, what);
        }
        let rows = collected.finish(what);
        let json_err = |source| FormatError::Json {
            what: what.to_string(),
            source,
        };
        let head = match parsed {
            Ok(h) => h,
            // A record that failed is the error to report, not serde's wrapping of it.
            Err(e) => return Err(error.or(rows.err()).unwrap_or_else(|| json_err(e))),
        };
        let rows = rows?;
        let Some(db) = head else {
            return Err(FormatError::invalid(what, "no \"database\" member"));
        };
        let version = match db.version {
            Some(Value::String(s)) => s.parse::<i64>().ok(),
            Some(Value::Number(n)) => n.as_i64(),
            _ => None,
        }
        .ok_or_else(|| FormatError::invalid(what, "database without version"))?;
        if !(6..=8).contains(&version) {
            return Err(FormatError::invalid(
                what,
                format!("database version {version} is not supported (6 to 8)"),
            ));
        }
        if !db.installs {
            return Err(FormatError::invalid(what, "database without installs"));
        }
        Ok(rows)
    })?;
    let spools = keep.map(|k| vec![k.0.clone()]).unwrap_or_default();
    Ok(IndexTable::assemble(strings, rows, spools, what).of_whole_spool())
}

/// Parsed batches, appended in file order as they come back (a batch that arrives early
/// waits for those before it); the first error in file order is kept.
#[derive(Default)]
struct Collected {
    rows: Rows,
    next: usize,
    waiting: std::collections::BTreeMap<usize, Result<Rows, FormatError>>,
    error: Option<FormatError>,
}

impl Collected {
    fn add(&mut self, no: usize, r: Result<Rows, FormatError>, what: &str) {
        self.waiting.insert(no, r);
        while let Some(r) = self.waiting.remove(&self.next) {
            self.next += 1;
            if self.error.is_some() {
                continue;
            }
            if let Err(e) = r.and_then(|part| self.rows.append(part, what)) {
                self.error = Some(e);
            }
        }
    }

    fn finish(self, what: &str) -> Result<Rows, FormatError> {
        match (self.error, self.waiting.is_empty()) {
            (Some(e), _) => Err(e),
            (None, true) => Ok(self.rows),
            // A batch never came back while a later one did: cannot be, short of a bug.
            (None, false) => Err(FormatError::invalid(what, "a parsing thread stopped")),
        }
    }
}

/// A record as the walk found it: its key, its spec's text, `in_buildcache`.
struct Pending<'a> {
    key: Cow<'a, str>,
    spec: &'a RawValue,
    in_cache: Option<bool>,
}

/// A batch of records and its number (file order).
type Batch<'a> = (usize, Vec<Pending<'a>>);
type Done = (usize, Result<Rows, FormatError>);

/// Makes rows of records' specs.
struct Specs<'a> {
    what: &'a str,
    /// Where the text starts: the spool's (spool 0 of the table) first byte; a spec's
    /// offset in the spool is its distance from here.
    base: usize,
    strings: &'a TableStrings,
}

impl Specs<'_> {
    fn rows<'a>(
        &self,
        batch: Vec<Pending<'a>>,
        strings: &mut Interning<'_>,
    ) -> Result<Rows, FormatError> {
        let mut rows = Rows::default();
        for p in batch {
            self.record(p, &mut rows, strings)?;
        }
        Ok(rows)
    }

    fn record<'a>(
        &self,
        p: Pending<'a>,
        rows: &mut Rows,
        strings: &mut Interning<'_>,
    ) -> Result<(), FormatError> {
        let what = self.what;
        let key = p.key;
        // The key replaces the spec's hash below, so it is held to the same rule.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FormatError::invalid(
                what,
                format!("record keyed {key:?}: not a DAG hash"),
            ));
        }
        let text = p.spec.get();
        // The edges stay in the spool until the package is used.
        let node = NodeText::parse_head(text, what)?;
        let raw = RawAt::Spool {
            spool: 0,
            offset: (text.as_ptr() as usize - self.base) as u64,
            len: text.len(),
            hash_differs: node.hash != key,
            edges_in_spec: true,
        };
        // The key is authoritative (format doc 3.2).
        let in_cache = p.in_cache.unwrap_or(false);
        rows.push(strings, &node, &key, in_cache, raw, what)
    }
}

/// The walk in progress.
struct Parse<'p, 'a> {
    specs: &'p Specs<'a>,
    /// Batches parsed here (no workers) intern through this.
    strings: Interning<'p>,
    /// The workers' queues (none: batches are parsed here).
    jobs: Vec<mpsc::SyncSender<Batch<'a>>>,
    done: mpsc::Sender<Done>,
    results: mpsc::Receiver<Done>,
    batch: Vec<Pending<'a>>,
    sent: usize,
    collected: Collected,
    /// A worker's batch failed: the walk stops.
    failed: &'p AtomicBool,
    /// The mapped text, released behind the walk.
    map: Option<&'p memmap2::Mmap>,
    released: usize,
    /// An error of the walk, reported instead of serde's custom error carrying it.
    error: Option<FormatError>,
}

impl<'a> Parse<'_, 'a> {
    fn push(&mut self, p: Pending<'a>) {
        let at = p.spec.get().as_ptr() as usize - self.specs.base;
        self.batch.push(p);
        if self.batch.len() == BATCH {
            self.send_batch();
        }
        if let Some(map) = self.map {
            if at > self.released + 2 * WINDOW {
                let end = (at - WINDOW) / WINDOW * WINDOW;
                // SAFETY: the map is a private, read-only map of a file no one writes: pages
                // dropped here are read again, the same, from the file by whoever touches
                // them next (a worker still parsing a record there), so no slice of the map
                // changes. The advice only lowers the resident memory.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        self.released,
                        end - self.released,
                    )
                };
                self.released = end;
            }
        }
    }

    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let no = self.sent;
        self.sent += 1;
        match self.jobs.get(no % self.jobs.len().max(1)) {
            Some(jobs) => {
                if jobs.send((no, batch)).is_err() {
                    // Its worker is gone (it cannot be, short of a bug): no short list.
                    self.failed.store(true, Ordering::Relaxed);
                    let _ = self.done.send((
                        no,
                        Err(FormatError::invalid(
                            self.specs.what,
                            "a parsing thread stopped",
                        )),
                    ));
                }
            }
            None => {
                let r = self.specs.rows(batch, &mut self.strings);
                if r.is_err() {
                    self.failed.store(true, Ordering::Relaxed);
                }
                let _ = self.done.send((no, r));
            }
        }
        // Parsed batches are appended as they come back: only a few are ever held apart
        // from the table.
        while let Ok((no, r)) = self.results.try_recv() {
            self.collected.add(no, r, self.specs.what);
        }
    }
}

/// What the database says besides its records.
struct DbHead {
    version: Option<Value>,
    /// `installs` was a map.
    installs: bool,
}

/// `{"database": …}`; returns the database's head (`None`: no `database` member).
struct EnvelopeSeed<'s, 'p, 'a>(&'s mut Parse<'p, 'a>);

impl<'a> DeserializeSeed<'a> for EnvelopeSeed<'_, '_, 'a> {
    type Value = Option<DbHead>;
    fn deserialize<D: de::Deserializer<'a>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V<'s, 'p, 'a>(&'s mut Parse<'p, 'a>);
        impl<'a> Visitor<'a> for V<'_, '_, 'a> {
            type Value = Option<DbHead>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Spack database")
            }
            fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut head = None;
                while let Some(key) = map.next_key::<Key>()?.map(|k| k.0) {
                    if key == "database" && head.is_none() {
                        head = Some(map.next_value_seed(DatabaseSeed(&mut *self.0))?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(head)
            }
        }
        d.deserialize_map(V(self.0))
    }
}

struct DatabaseSeed<'s, 'p, 'a>(&'s mut Parse<'p, 'a>);

impl<'a> DeserializeSeed<'a> for DatabaseSeed<'_, '_, 'a> {
    type Value = DbHead;
    fn deserialize<D: de::Deserializer<'a>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V<'s, 'p, 'a>(&'s mut Parse<'p, 'a>);
        impl<'a> Visitor<'a> for V<'_, '_, 'a> {
            type Value = DbHead;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a database object")
            }
            fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut head = DbHead {
                    version: None,
                    installs: false,
                };
                while let Some(key) = map.next_key::<Key>()?.map(|k| k.0) {
                    match key.as_ref() {
                        "version" => head.version = Some(map.next_value()?),
                        // Records of a second `installs` would be read twice: one only.
                        "installs" if !head.installs => {
                            head.installs = map.next_value_seed(InstallsSeed(&mut *self.0))?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(head)
            }
        }
        d.deserialize_map(V(self.0))
    }
}

/// The `installs` map, record by record in file order (no map of the whole database is
/// built); `false` when it is null.
struct InstallsSeed<'s, 'p, 'a>(&'s mut Parse<'p, 'a>);

impl<'a> DeserializeSeed<'a> for InstallsSeed<'_, '_, 'a> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'a>>(self, d: D) -> Result<bool, D::Error> {
        struct V<'s, 'p, 'a>(&'s mut Parse<'p, 'a>);
        impl<'a> Visitor<'a> for V<'_, '_, 'a> {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of hashes to records")
            }
            fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<bool, A::Error> {
                while let Some(Key(key)) = map.next_key::<Key<'a>>()? {
                    if self.0.failed.load(Ordering::Relaxed) {
                        // A parsed record failed: its error is the one reported.
                        return Err(de::Error::custom("a record failed"));
                    }
                    let rec: RawRecord = map.next_value()?;
                    let spec = rec.spec.ok_or_else(|| {
                        self.0.error = Some(FormatError::invalid(
                            self.0.specs.what,
                            format!("record {key} without spec"),
                        ));
                        de::Error::custom("record without spec")
                    })?;
                    self.0.push(Pending {
                        key,
                        spec,
                        in_cache: rec.in_buildcache,
                    });
                }
                Ok(true)
            }
            fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
                Ok(false)
            }
        }
        d.deserialize_any(V(self.0))
    }
}

/// A record: its spec's text, and `in_buildcache`.
struct RawRecord<'a> {
    spec: Option<&'a RawValue>,
    in_buildcache: Option<bool>,
}

impl<'a> Deserialize<'a> for RawRecord<'a> {
    fn deserialize<D: de::Deserializer<'a>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'a> Visitor<'a> for V {
            type Value = RawRecord<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an index record")
            }
            fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<RawRecord<'a>, A::Error> {
                let mut rec = RawRecord {
                    spec: None,
                    in_buildcache: None,
                };
                while let Some(key) = map.next_key::<Key>()?.map(|k| k.0) {
                    match key.as_ref() {
                        "spec" => rec.spec = Some(map.next_value()?),
                        // As Spack writes it (a boolean); anything else counts as absent.
                        "in_buildcache" => rec.in_buildcache = map.next_value::<Value>()?.as_bool(),
                        // ref_count, path, installed, … are not needed to list packages.
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(rec)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_key_hashes_and_checks_versions() {
        let db = br#"{"database":{"installs":{
            "bbb":{"spec":{"name":"b","version":"1","hash":"zzz"},"ref_count":1,"in_buildcache":true},
            "aaa":{"spec":{"name":"a","version":"2","hash":"aaa"},"in_buildcache":false}
        },"version":"8"}}"#;
        let r = Arc::new(parse(db, "idx").unwrap());
        assert_eq!(r.len(), 2);
        let (b, a) = (IndexTable::package(&r, 0), IndexTable::package(&r, 1));
        assert_eq!((b.name(), b.hash()), ("b", "bbb"));
        assert!(b.in_buildcache() && !a.in_buildcache());
        assert_eq!(r.find("bbb"), Some(0));
        assert_eq!(r.find("zzz"), None);
        assert!(parse(br#"{"database":{"version":"5","installs":{}}}"#, "i").is_err());
        assert!(parse(br#"{"database":{"version":8}}"#, "i").is_err());
        let e = parse(br#"{"database":{"version":"8","installs":{}}} x"#, "idx").unwrap_err();
        assert!(e.to_string().contains("idx"), "{e}");
    }

    /// Found by tests/properties.rs (index_db): the key of a record became its hash unchecked.
    #[test]
    fn a_record_key_that_is_no_hash_is_an_error() {
        for key in ["", "a/b", "..", "h h"] {
            let db = format!(
                r#"{{"database":{{"version":"8","installs":{{{key:?}:{{"spec":{{"name":"app","version":"1.0","hash":"aaaaaaa"}}}}}}}}}}"#
            );
            let e = parse(db.as_bytes(), "idx").expect_err(key).to_string();
            assert!(e.starts_with("idx: record keyed"), "{e}");
        }
    }

    #[test]
    fn a_truncated_index_is_an_error_not_a_short_list() {
        let db = br#"{"database":{"version":"8","installs":{"aaa":{"spec":{"name":"a","version":"2"}},"bbb":{"spec":"#;
        assert!(parse(db, "idx").is_err());
    }
}
