//! Where the JSON of an index record's spec is kept: not in memory (an index of 200,000
//! packages holds hundreds of MB of it) but in a spool, a private copy of the index made as
//! it is fetched, parsed from a read-only map and read back by offset when the database at
//! the install root or the kept index is written. A spool is an unlinked temporary file: it
//! lives as long as the nodes that point into it.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
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

/// A private copy of an index's JSON (decompressed), which the records' specs point into.
#[derive(Debug)]
pub struct Spool {
    file: File,
    len: u64,
}

/// The most bytes an index may hold once inflated (a gzip bomb stops here, with an error).
pub const SPOOL_LIMIT: u64 = 8 << 30;

impl Spool {
    /// Copy `reader` to a new spool in `dir` (an unlinked file: nothing is left behind),
    /// up to [`SPOOL_LIMIT`] bytes.
    pub fn copy_from(dir: &Path, reader: &mut dyn Read) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let file = tempfile::tempfile_in(dir)?;
        let mut out = BufWriter::with_capacity(1 << 20, file.try_clone()?);
        let len = std::io::copy(&mut reader.take(SPOOL_LIMIT + 1), &mut out)?;
        out.flush()?;
        if len > SPOOL_LIMIT {
            return Err(std::io::Error::other(format!(
                "more than {SPOOL_LIMIT} bytes once inflated"
            )));
        }
        Ok(Spool { file, len })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The spool's bytes, mapped read-only.
    pub fn map(&self) -> std::io::Result<Mmap> {
        if self.len == 0 {
            // An empty file cannot be mapped; its (invalid) JSON is read as empty.
            return Err(std::io::Error::other("empty"));
        }
        // SAFETY: the file is an unlinked temporary file of this process, written to the
        // end before the map is made and never written again: no other writer can change or
        // shorten the mapped bytes.
        unsafe {
            memmap2::MmapOptions::new()
                .len(self.len as usize)
                .map(&self.file)
        }
    }

    /// The `len` bytes at `offset`.
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Write all its bytes to `out`.
    pub fn copy_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < self.len {
            let n = buf.len().min((self.len - at) as usize);
            self.file.read_exact_at(&mut buf[..n], at)?;
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// A spec text of `len` bytes at `offset`.
    pub fn spec_at(self: &Arc<Self>, offset: u64, len: usize, hash_differs: bool) -> RawSpec {
        RawSpec::Spooled {
            spool: self.clone(),
            offset,
            len: len as u32,
            hash_differs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spooled_texts_read_back_with_the_key_as_hash() {
        let dir = tempfile::tempdir().unwrap();
        let text = br#"{"name":"a", "hash":"aaa"}{"name":"b","hash":"zzz"}"#;
        let spool = Arc::new(Spool::copy_from(dir.path(), &mut &text[..]).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(&spool.map().unwrap()[..], &text[..]);
        let a = spool.spec_at(0, 26, false);
        let b = spool.spec_at(26, 25, true);
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
