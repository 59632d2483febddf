//! The bounded hand-off between two threads of one extraction, as a stream of chunks: the
//! reading thread hands the blob (hashed as it passes) to the inflating thread, which hands
//! the inflated tar stream to the untar thread that creates the files. A few chunks are in
//! flight at most, and drained chunks go back to the inflater to be filled again, so memory
//! stays bounded and nothing is allocated per chunk once the pipeline runs; at the end they
//! are kept for the next extraction ([`super::buffers`]).

use std::io::{BufRead, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

/// Bytes per chunk.
pub const CHUNK: usize = 256 * 1024;
/// Chunks inflated ahead of the untar thread at most.
pub const IN_FLIGHT: usize = 8;

/// The inflating end: fills chunks from a reader and hands them over.
pub struct ChunkSender {
    full: SyncSender<std::io::Result<Vec<u8>>>,
    empty: Receiver<Vec<u8>>,
}

/// The untar end: reads the handed-over chunks as one stream; the end of the stream is the
/// inflater finishing (or giving up, which its own result then says).
pub struct ChunkReader {
    full: Receiver<std::io::Result<Vec<u8>>>,
    empty: Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    ended: bool,
    /// Bytes of the stream consumed so far.
    consumed: u64,
}

/// A connected pair.
pub fn handoff() -> (ChunkSender, ChunkReader) {
    let (full_tx, full_rx) = sync_channel(IN_FLIGHT);
    let (empty_tx, empty_rx) = channel();
    (
        ChunkSender {
            full: full_tx,
            empty: empty_rx,
        },
        ChunkReader {
            full: full_rx,
            empty: empty_tx,
            current: Vec::new(),
            pos: 0,
            ended: false,
            consumed: 0,
        },
    )
}

/// How pumping ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// The source reached its end; every byte was handed over.
    End,
    /// The reader hung up (untar is done, or failed): the rest of the source was not read.
    HungUp,
    /// Reading the source failed; the error was handed over in its place.
    Failed,
}

impl ChunkSender {
    /// Hand over `e` in place of the stream: the reader fails with it.
    pub fn fail(self, e: std::io::Error) {
        let _ = self.full.send(Err(e));
    }

    /// Read `src` to its end in chunks and hand them over. A read error is handed over as
    /// such (the untar thread reports it as it would its own). The reader sees the end of
    /// the stream once this returns.
    pub fn pump(self, src: &mut impl Read) -> Pumped {
        loop {
            let mut buf = self
                .empty
                .try_recv()
                .unwrap_or_else(|_| super::buffers::take(CHUNK));
            buf.resize(CHUNK, 0);
            let mut filled = 0;
            // Fill the chunk (decoders return little at a time), stopping at the end.
            let end = loop {
                match src.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(true),
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break Ok(false);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            buf.truncate(filled);
            match end {
                Ok(end) => {
                    if filled > 0 && self.full.send(Ok(buf)).is_err() {
                        return Pumped::HungUp;
                    }
                    if end {
                        return Pumped::End;
                    }
                }
                Err(e) => {
                    if filled > 0 && self.full.send(Ok(buf)).is_err() {
                        return Pumped::HungUp;
                    }
                    let _ = self.full.send(Err(e));
                    return Pumped::Failed;
                }
            }
        }
    }
}

/// Chunks not needed any more are kept for the next extraction.
impl Drop for ChunkSender {
    fn drop(&mut self) {
        while let Ok(chunk) = self.empty.try_recv() {
            super::buffers::give(chunk);
        }
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        super::buffers::give(std::mem::take(&mut self.current));
        while let Ok(Ok(chunk)) = self.full.try_recv() {
            super::buffers::give(chunk);
        }
    }
}

impl ChunkReader {
    /// Make the current chunk one with bytes left, unless the stream ended.
    fn next_chunk(&mut self) -> std::io::Result<()> {
        while self.pos == self.current.len() && !self.ended {
            match self.full.recv() {
                Ok(Ok(next)) => {
                    let done = std::mem::replace(&mut self.current, next);
                    self.pos = 0;
                    if done.capacity() > 0 {
                        if let Err(back) = self.empty.send(done) {
                            super::buffers::give(back.0);
                        }
                    }
                }
                Ok(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                Err(_) => self.ended = true,
            }
        }
        Ok(())
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let n = {
            let available = self.fill_buf()?;
            let n = out.len().min(available.len());
            out[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

/// The chunks are the buffer: a decoder reading through `BufRead` takes its input straight
/// from them.
impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.next_chunk()?;
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.current.len() - self.pos);
        self.pos += amt;
        self.consumed += amt as u64;
    }
}

/// Seeking forward skips bytes without copying them (the `tar` crate skips a member's
/// padding, or data nobody read, so); the position is the bytes consumed. Nothing else can
/// be sought: the stream goes one way.
impl std::io::Seek for ChunkReader {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let mut skip = match to {
            std::io::SeekFrom::Current(n) if n >= 0 => n as u64,
            std::io::SeekFrom::Start(n) if n >= self.consumed => n - self.consumed,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "the inflated stream can only be skipped forward",
                ))
            }
        };
        while skip > 0 {
            let available = self.fill_buf()?.len();
            if available == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the stream ended within a skip",
                ));
            }
            let n = available.min(usize::try_from(skip).unwrap_or(usize::MAX));
            self.consume(n);
            skip -= n as u64;
        }
        Ok(self.consumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that yields `data` a few bytes at a time, then fails if `fail` is set.
    struct Trickle<'a> {
        data: &'a [u8],
        fail: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.data.is_empty() {
                return match self.fail {
                    true => Err(std::io::Error::other("broken source")),
                    false => Ok(0),
                };
            }
            let n = buf.len().min(self.data.len()).min(7_919);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Pump `data` (failing at its end with `fail`) on a thread while `read` reads the other
    /// end (and may drop it); returns what `read` gave and how pumping ended.
    fn pumped<T>(data: &[u8], fail: bool, read: impl FnOnce(ChunkReader) -> T) -> (T, Pumped) {
        let (tx, rx) = handoff();
        std::thread::scope(|s| {
            let h = s.spawn(move || tx.pump(&mut Trickle { data, fail }));
            let got = read(rx);
            (got, h.join().unwrap())
        })
    }

    #[test]
    fn every_byte_arrives_in_order() {
        let data = pattern(5 * CHUNK + 12_345);
        let (got, pumped) = pumped(&data, false, |mut rx| {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        assert_eq!(pumped, Pumped::End);
        assert!(got == data, "the stream arrived changed");
    }

    #[test]
    fn skipping_forward_drops_bytes_and_keeps_the_position() {
        use std::io::{Seek, SeekFrom};
        let data = pattern(3 * CHUNK + 777);
        let ((), pumped) = pumped(&data, false, |mut rx| {
            let mut head = [0u8; 10];
            rx.read_exact(&mut head).unwrap();
            assert_eq!(rx.stream_position().unwrap(), 10);
            let to = CHUNK as u64 * 2 + 5;
            assert_eq!(rx.seek(SeekFrom::Current(to as i64 - 10)).unwrap(), to);
            let mut next = [0u8; 100];
            rx.read_exact(&mut next).unwrap();
            assert!(next[..] == data[to as usize..to as usize + 100]);
            assert!(rx.seek(SeekFrom::Current(-1)).is_err());
            assert!(rx.seek(SeekFrom::Start(0)).is_err());
            let left = data.len() as u64 - to - 100;
            let err = rx.seek(SeekFrom::Current(left as i64 + 1)).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        });
        assert_eq!(pumped, Pumped::End);
    }

    #[test]
    fn a_source_error_reaches_the_reader_after_the_bytes_before_it() {
        let data = pattern(CHUNK + 10);
        let ((), pumped) = pumped(&data, true, |mut rx| {
            let mut got = vec![0u8; data.len()];
            rx.read_exact(&mut got).unwrap();
            assert!(got == data);
            let err = rx.read(&mut [0u8; 16]).unwrap_err();
            assert_eq!(err.to_string(), "broken source");
        });
        assert_eq!(pumped, Pumped::Failed);
    }

    #[test]
    fn the_inflater_stops_when_the_reader_hangs_up() {
        let data = pattern(64 * CHUNK);
        let ((), pumped) = pumped(&data, false, |mut rx| {
            let mut first = [0u8; 100];
            rx.read_exact(&mut first).unwrap();
        });
        assert_eq!(pumped, Pumped::HungUp);
    }
}
