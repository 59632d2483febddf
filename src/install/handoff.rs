//! The bounded hand-off between the two threads that extract one package: the inflating
//! thread reads the blob (hashing it) and inflates it into chunks; the untar thread reads
//! those chunks as one stream and creates the files. A few chunks are in flight at most, and
//! drained chunks go back to the inflater to be filled again, so memory stays bounded and
//! nothing is allocated per chunk once the pipeline runs.

use std::io::Read;
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
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
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

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.current.len() {
            if self.ended {
                return Ok(0);
            }
            match self.full.recv() {
                Ok(Ok(next)) => {
                    let done = std::mem::replace(&mut self.current, next);
                    self.pos = 0;
                    if done.capacity() > 0 {
                        let _ = self.empty.send(done);
                    }
                }
                Ok(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                Err(_) => {
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
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

    #[test]
    fn every_byte_arrives_in_order() {
        let data = pattern(5 * CHUNK + 12_345);
        let (tx, mut rx) = handoff();
        std::thread::scope(|s| {
            let data = &data;
            let h = s.spawn(move || tx.pump(&mut Trickle { data, fail: false }));
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            assert_eq!(h.join().unwrap(), Pumped::End);
            assert!(got == *data, "the stream arrived changed");
        });
    }

    #[test]
    fn a_source_error_reaches_the_reader_after_the_bytes_before_it() {
        let data = pattern(CHUNK + 10);
        let (tx, mut rx) = handoff();
        std::thread::scope(|s| {
            let data = &data;
            let h = s.spawn(move || tx.pump(&mut Trickle { data, fail: true }));
            let mut got = vec![0u8; data.len()];
            rx.read_exact(&mut got).unwrap();
            assert!(got == *data);
            let err = rx.read(&mut [0u8; 16]).unwrap_err();
            assert_eq!(err.to_string(), "broken source");
            assert_eq!(h.join().unwrap(), Pumped::Failed);
        });
    }

    #[test]
    fn the_inflater_stops_when_the_reader_hangs_up() {
        let data = pattern(64 * CHUNK);
        let (tx, mut rx) = handoff();
        std::thread::scope(|s| {
            let data = &data;
            let h = s.spawn(move || tx.pump(&mut Trickle { data, fail: false }));
            let mut first = [0u8; 100];
            rx.read_exact(&mut first).unwrap();
            drop(rx);
            assert_eq!(h.join().unwrap(), Pumped::HungUp);
        });
    }
}
