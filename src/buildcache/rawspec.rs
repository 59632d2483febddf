//! Where the JSON of an index record's spec is kept: not in memory (an index of 200,000
//! packages holds hundreds of MB of it) but appended, as read, to a spool file of the cache,
//! and read back by offset when the database at the install root or the kept index is
//! written. A spool is an unlinked temporary file: it lives as long as the nodes that point
//! into it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

/// The JSON of a node, when it is kept.
#[derive(Debug, Clone, Default)]
pub enum RawSpec {
    /// Not kept (`spackfs ls`, installs, nodes of a package's own DAG).
    #[default]
    None,
    /// Held as a value (few nodes: listings of small mirrors).
    Value(Arc<Value>),
    /// `len` bytes at `offset` of `spool`, as the index gave them. `hash_differs`: the
    /// text's own `hash` is not the record's key (the key wins, format doc 3.2).
    Spooled {
        spool: Arc<Spool>,
        offset: u64,
        len: u32,
        hash_differs: bool,
    },
}

impl RawSpec {
    pub fn is_kept(&self) -> bool {
        !matches!(self, RawSpec::None)
    }

    /// Write the node's JSON with `"hash"` set to `hash`. A node whose JSON was not kept
    /// is written as the least Spack reads: `{"name","version","hash"}`.
    pub fn write_to(
        &self,
        out: &mut dyn Write,
        name: &str,
        version: &str,
        hash: &str,
    ) -> std::io::Result<()> {
        let with_hash = |mut v: Value| {
            if let Some(o) = v.as_object_mut() {
                o.insert("hash".into(), Value::String(hash.to_string()));
            }
            v
        };
        match self {
            RawSpec::None => serde_json::to_writer(
                out,
                &serde_json::json!({"name": name, "version": version, "hash": hash}),
            )
            .map_err(std::io::Error::other),
            RawSpec::Value(v) => serde_json::to_writer(out, &with_hash(v.as_ref().clone()))
                .map_err(std::io::Error::other),
            RawSpec::Spooled {
                spool,
                offset,
                len,
                hash_differs,
            } => {
                let mut buf = vec![0u8; *len as usize];
                spool.file.read_exact_at(&mut buf, *offset)?;
                if *hash_differs {
                    let v: Value = serde_json::from_slice(&buf).map_err(std::io::Error::other)?;
                    serde_json::to_writer(out, &with_hash(v)).map_err(std::io::Error::other)
                } else {
                    out.write_all(&buf)
                }
            }
        }
    }
}

/// An append-only file of spec texts.
#[derive(Debug)]
pub struct Spool {
    file: File,
}

/// Appends to a [`Spool`]; the texts can be read once [`SpoolWriter::flush`] returned.
pub struct SpoolWriter {
    spool: Arc<Spool>,
    out: BufWriter<File>,
    offset: u64,
}

impl SpoolWriter {
    /// A new spool in directory `dir` (an unlinked file: nothing is left behind).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = tempfile::tempfile_in(dir)?;
        let out = BufWriter::with_capacity(1 << 20, file.try_clone()?);
        Ok(SpoolWriter {
            spool: Arc::new(Spool { file }),
            out,
            offset: 0,
        })
    }

    /// Append `text`; returns where it is.
    pub fn append(&mut self, text: &str, hash_differs: bool) -> std::io::Result<RawSpec> {
        let len = u32::try_from(text.len())
            .map_err(|_| std::io::Error::other("a spec of more than 4 GiB"))?;
        self.out.write_all(text.as_bytes())?;
        let at = self.offset;
        self.offset += text.len() as u64;
        Ok(RawSpec::Spooled {
            spool: self.spool.clone(),
            offset: at,
            len,
            hash_differs,
        })
    }

    /// Flush: the texts appended are readable from here on.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spooled_texts_read_back_with_the_key_as_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::new(dir.path()).unwrap();
        let a = w.append(r#"{"name":"a", "hash":"aaa"}"#, false).unwrap();
        let b = w.append(r#"{"name":"b","hash":"zzz"}"#, true).unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let text = |r: &RawSpec, h: &str| {
            let mut out = Vec::new();
            r.write_to(&mut out, "n", "1", h).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(&a, "aaa"), r#"{"name":"a", "hash":"aaa"}"#);
        assert_eq!(text(&b, "bbb"), r#"{"name":"b","hash":"bbb"}"#);
        assert_eq!(
            text(&RawSpec::None, "ccc"),
            r#"{"name":"n","version":"1","hash":"ccc"}"#
        );
    }
}
