//! Tarballs for the tests: a raw writer that puts any name into a member (including the
//! `..`, absolute and special members that `tar::Builder` refuses to write), and a reader
//! that returns every member of a `.tar.gz` blob in memory.

use std::io::Read;

use tar::{EntryType, Header};

/// Writes a GNU tar byte by byte; names longer than 100 bytes use `././@LongLink` records.
#[derive(Default)]
pub struct TarBuilder {
    buf: Vec<u8>,
}

impl TarBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        let name = format!("{}/", name.trim_end_matches('/'));
        self.raw(name.as_bytes(), EntryType::Directory, 0o755, None, b"")
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Regular, mode, None, data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            0o755,
            Some(target.as_bytes()),
            b"",
        )
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            0o644,
            Some(target.as_bytes()),
            b"",
        )
    }

    /// A character device `major:minor`.
    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = spackfs::writer::tarball::header(EntryType::Char, 0o644, 0);
        h.set_device_major(major).expect("device major");
        h.set_device_minor(minor).expect("device minor");
        self.push(h, name.as_bytes(), None, b"")
    }

    pub fn fifo(&mut self, name: &str) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Fifo, 0o644, None, b"")
    }

    /// A member with exactly these name and link bytes.
    pub fn raw(
        &mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        link: Option<&[u8]>,
        data: &[u8],
    ) -> &mut Self {
        let h = spackfs::writer::tarball::header(kind, mode, data.len() as u64);
        self.push(h, name, link, data)
    }

    fn push(&mut self, mut h: Header, name: &[u8], link: Option<&[u8]>, data: &[u8]) -> &mut Self {
        if name.len() > 100 {
            self.long_record(EntryType::GNULongName, name);
        }
        if let Some(link) = link {
            if link.len() > 100 {
                self.long_record(EntryType::GNULongLink, link);
            }
            let l = link.len().min(100);
            h.as_old_mut().linkname[..l].copy_from_slice(&link[..l]);
        }
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.data(data);
        self
    }

    fn long_record(&mut self, kind: EntryType, value: &[u8]) {
        let mut h = spackfs::writer::tarball::header(kind, 0o644, value.len() as u64 + 1);
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        let mut v = value.to_vec();
        v.push(0);
        self.data(&v);
    }

    fn data(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }

    /// The tar bytes, with the two closing zero blocks.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

/// One member of a tarball as read back.
#[derive(Debug, Clone)]
pub struct TarMember {
    /// Full member name without a trailing `/`.
    pub name: String,
    pub kind: EntryType,
    pub mode: u32,
    pub link: Option<String>,
    pub data: Vec<u8>,
}

/// Every member of a gzip-compressed tarball, in order.
pub fn read_tgz(blob: &[u8]) -> Vec<TarMember> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let name = String::from_utf8(entry.path_bytes().into_owned()).expect("UTF-8 name");
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().expect("mode");
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).expect("UTF-8 link"));
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("member data");
        out.push(TarMember {
            name: name.trim_end_matches('/').to_string(),
            kind,
            mode,
            link,
            data,
        });
    }
    out
}

/// gzip with Spack's settings (level 6, empty header), from the crate's writer.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    spackfs::writer::gzip(data)
}

/// gzip without compression (stored blocks): equal-length inputs give equal-length blobs.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::none());
    e.write_all(data).expect("in-memory write");
    e.finish().expect("in-memory write")
}
