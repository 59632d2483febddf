//! `.spack-db/index.json` of the mount: the Spack database naming every listed package at
//! its prefix (so that Spack can use the mount as an upstream). It is written on first use
//! into an unlinked file of the cache, streamed from the kept specs (never held in memory),
//! served by `pread`, and written again after the package list changes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::catalog::live::LiveCatalog;

/// One written database.
pub struct DbFile {
    file: File,
    len: u64,
}

impl DbFile {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Up to `size` bytes at `offset`.
    pub fn read(&self, offset: u64, size: u32) -> std::io::Result<Vec<u8>> {
        let start = offset.min(self.len);
        let end = (start + u64::from(size)).min(self.len);
        let mut buf = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        Ok(buf)
    }
}

/// The database, written when first asked for.
pub struct SpackDb {
    dir: PathBuf,
    current: Mutex<Option<Arc<DbFile>>>,
}

impl SpackDb {
    /// A database to be written in directory `dir`.
    pub fn new(dir: PathBuf) -> Self {
        SpackDb {
            dir,
            current: Mutex::new(None),
        }
    }

    /// The database of the packages `live` lists now (written if the list changed since).
    pub fn get(&self, live: &LiveCatalog) -> std::io::Result<Arc<DbFile>> {
        let mut current = self.current.lock().unwrap();
        if let Some(db) = current.as_ref() {
            return Ok(db.clone());
        }
        std::fs::create_dir_all(&self.dir)?;
        let file = tempfile::tempfile_in(&self.dir)?;
        live.write_spack_db(&file)?;
        let len = file.metadata()?.len();
        let db = Arc::new(DbFile { file, len });
        *current = Some(db.clone());
        Ok(db)
    }

    /// The package list changed: the next use writes the database again.
    pub fn invalidate(&self) {
        *self.current.lock().unwrap() = None;
    }
}
