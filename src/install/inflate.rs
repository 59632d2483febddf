//! Pick the decompressor by magic bytes and bound how much a tarball may inflate to.

use std::io::{BufRead, Read};

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
        Compression::Gzip => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(input))),
        Compression::Zstd => Ok(Box::new(
            zstd::stream::read::Decoder::with_buffer(input).map_err(|e| e.to_string())?,
        )),
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

    #[test]
    fn limit_reader_stops() {
        let data = [0u8; 100];
        let mut r = LimitReader::new(&data[..], 10);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert!(r.exceeded());
    }
}
