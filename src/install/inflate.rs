//! Pick the decompressor by magic bytes and bound how much a tarball may inflate to.

use std::io::{BufRead, Read};

use flate2::{Decompress, FlushDecompress, Status};

/// The compression of a stream, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

/// Sniff the compression; `Err` carries a description of what was found instead.
pub fn sniff(head: &[u8]) -> Result<Compression, String> {
    match head {
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Err("xz is not supported".into()),
        [b'B', b'Z', b'h', ..] => Err("bzip2 is not supported".into()),
        [] => Err("the blob is empty".into()),
        other => Err(format!(
            "first bytes {}",
            hex::encode(&other[..other.len().min(8)])
        )),
    }
}

/// Wrap `input` (buffered, so that its head can be sniffed) in the right decoder.
pub fn decoder<'a, R: BufRead + 'a>(mut input: R) -> Result<Box<dyn Read + 'a>, String> {
    let head = input.fill_buf().map_err(|e| e.to_string())?;
    match sniff(head)? {
        Compression::Gzip => Ok(Box::new(GzipMembers::new(input))),
        Compression::Zstd => Ok(Box::new(
            zstd::stream::read::Decoder::with_buffer(input).map_err(|e| e.to_string())?,
        )),
    }
}

/// The members of a gzip stream one after another (as `gzip` reads concatenated members),
/// inflated without computing the CRC-32 of each member's trailer: the blob's sha256,
/// checked before anything extracted from it is used, covers every compressed byte, and the
/// inflated bytes are a function of those. A truncated stream, a bad header or bytes after
/// the last member that are not another member are errors.
pub struct GzipMembers<R> {
    input: R,
    inflater: Decompress,
    /// At the start of a member (its header not read yet).
    at_header: bool,
    ended: bool,
}

impl<R: BufRead> GzipMembers<R> {
    pub fn new(input: R) -> Self {
        GzipMembers {
            input,
            inflater: Decompress::new(false),
            at_header: true,
            ended: false,
        }
    }

    /// Read a member header (RFC 1952 §2.3): fixed fields, then the optional extra field,
    /// name, comment and header CRC, which are skipped.
    fn read_header(&mut self) -> std::io::Result<()> {
        let mut fixed = [0u8; 10];
        self.input
            .read_exact(&mut fixed)
            .map_err(|e| truncated(e, "header"))?;
        if fixed[..3] != [0x1f, 0x8b, 8] {
            return Err(invalid(format!(
                "bytes {} where a gzip member (deflate) should start",
                hex::encode(&fixed[..3])
            )));
        }
        let flags = fixed[3];
        if flags & 0xe0 != 0 {
            return Err(invalid(format!(
                "gzip header flags {flags:#04x} are reserved"
            )));
        }
        if flags & 0x04 != 0 {
            let mut len = [0u8; 2];
            self.input
                .read_exact(&mut len)
                .map_err(|e| truncated(e, "header"))?;
            self.skip(u16::from_le_bytes(len) as u64)?;
        }
        for flag in [0x08, 0x10] {
            if flags & flag != 0 {
                self.skip_past_nul()?;
            }
        }
        if flags & 0x02 != 0 {
            self.skip(2)?;
        }
        Ok(())
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let skipped = std::io::copy(&mut (&mut self.input).take(n), &mut std::io::sink())?;
        if skipped < n {
            return Err(truncated(
                std::io::ErrorKind::UnexpectedEof.into(),
                "header",
            ));
        }
        Ok(())
    }

    fn skip_past_nul(&mut self) -> std::io::Result<()> {
        loop {
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                return Err(truncated(
                    std::io::ErrorKind::UnexpectedEof.into(),
                    "header",
                ));
            }
            match buf.iter().position(|b| *b == 0) {
                Some(i) => {
                    self.input.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let n = buf.len();
                    self.input.consume(n);
                }
            }
        }
    }
}

fn truncated(e: std::io::Error, part: &str) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return std::io::Error::new(
            e.kind(),
            format!("the gzip stream ends within a member's {part}"),
        );
    }
    e
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.ended {
                return Ok(0);
            }
            if self.at_header {
                self.read_header()?;
                self.inflater.reset(false);
                self.at_header = false;
            }
            let input = self.input.fill_buf()?;
            let eof = input.is_empty();
            let (in_before, out_before) = (self.inflater.total_in(), self.inflater.total_out());
            let status = self
                .inflater
                .decompress(input, out, FlushDecompress::None)
                .map_err(|e| invalid(format!("corrupt deflate data: {e}")))?;
            let used = (self.inflater.total_in() - in_before) as usize;
            let made = (self.inflater.total_out() - out_before) as usize;
            self.input.consume(used);
            if status == Status::StreamEnd {
                // The trailer (CRC-32 and length) is not checked: see the type's comment.
                let mut trailer = [0u8; 8];
                self.input
                    .read_exact(&mut trailer)
                    .map_err(|e| truncated(e, "trailer"))?;
                // Another member follows, or nothing.
                if self.input.fill_buf()?.is_empty() {
                    self.ended = true;
                } else {
                    self.at_header = true;
                }
            } else if made == 0 && used == 0 && eof {
                return Err(truncated(std::io::ErrorKind::UnexpectedEof.into(), "data"));
            }
            if made > 0 {
                return Ok(made);
            }
        }
    }
}

/// Fails reads once more than `limit` bytes came out; `exceeded()` tells why it failed.
pub struct LimitReader<R> {
    inner: R,
    remaining: u64,
    exceeded: bool,
    total: u64,
}

impl<R: Read> LimitReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        LimitReader {
            inner,
            remaining: limit,
            exceeded: false,
            total: 0,
        }
    }

    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            self.exceeded = true;
            return Err(std::io::Error::other("unpacked size limit exceeded"));
        }
        self.remaining -= n as u64;
        self.total += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Ok(Compression::Gzip));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Ok(Compression::Zstd));
        assert!(sniff(b"BZh9").unwrap_err().contains("bzip2"));
        assert!(sniff(b"ustar\0").is_err());
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, data).unwrap();
        e.finish().unwrap()
    }

    fn inflate_all(blob: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzipMembers::new(blob).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn gzip_members_inflate_one_after_another() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"second member".to_vec();
        let mut blob = gzip(&a);
        blob.extend(gzip(&b));
        assert_eq!(inflate_all(&blob).unwrap(), [a.clone(), b].concat());
        // Optional header fields: extra, name, comment, header CRC (FLG 0x1e).
        let mut with_fields = vec![0x1f, 0x8b, 8, 0x1e, 0, 0, 0, 0, 0, 3, 2, 0, b'x', b'y'];
        with_fields.extend(b"name\0comment\0\xab\xcd");
        with_fields.extend(&gzip(&a)[10..]);
        assert_eq!(inflate_all(&with_fields).unwrap(), a);
    }

    #[test]
    fn bad_gzip_streams_are_errors() {
        let a: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let blob = gzip(&a);
        for cut in [5, 20, blob.len() / 2, blob.len() - 4] {
            let e = inflate_all(&blob[..cut]).unwrap_err();
            assert!(e.to_string().contains("ends within"), "cut at {cut}: {e}");
        }
        let mut trailing = blob.clone();
        trailing.extend(b"junk after the member");
        let e = inflate_all(&trailing).unwrap_err();
        assert!(e.to_string().contains("should start"), "{e}");
        let mut reserved = blob.clone();
        reserved[3] = 0x20;
        assert!(inflate_all(&reserved)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        let mut corrupt = blob.clone();
        corrupt[10] = 0xff;
        assert!(inflate_all(&corrupt).is_err());
    }

    #[test]
    fn limit_reader_stops() {
        let data = [0u8; 100];
        let mut r = LimitReader::new(&data[..], 10);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert!(r.exceeded());
    }
}
