//! Buffers kept for reuse: a small file's buffer comes back here once the file is written,
//! and the hand-offs' chunks once an extraction is done with them; the next file or
//! extraction takes them again, so extracting does not allocate, zero and fault in fresh
//! pages for each. Buffers are powers of two from 4 KiB to 256 KiB; at most
//! [`KEPT`] bytes are kept.

use std::sync::Mutex;

/// The smallest buffer.
pub const MIN: usize = 4096;
/// The largest buffer.
pub const MAX: usize = 256 * 1024;
/// Bytes kept at most.
const KEPT: usize = 32 << 20;
/// Size classes: `MIN << k` for k in 0..CLASSES.
const CLASSES: usize = (MAX / MIN).trailing_zeros() as usize + 1;

struct Kept {
    classes: [Vec<Vec<u8>>; CLASSES],
    bytes: usize,
}

static KEPT_BUFFERS: Mutex<Kept> = Mutex::new(Kept {
    classes: [const { Vec::new() }; CLASSES],
    bytes: 0,
});

/// The size class of a buffer for `len` bytes (`None`: larger than [`MAX`]).
fn class_of(len: usize) -> Option<usize> {
    let size = len.max(MIN).next_power_of_two();
    (size <= MAX).then(|| (size / MIN).trailing_zeros() as usize)
}

/// A buffer whose length is at least `len` (the power of two at or above it, at least
/// [`MIN`]), all of it initialised: a kept one when there is one.
pub fn take(len: usize) -> Vec<u8> {
    let Some(k) = class_of(len) else {
        return vec![0; len];
    };
    if let Ok(mut kept) = KEPT_BUFFERS.lock() {
        if let Some(b) = kept.classes[k].pop() {
            kept.bytes -= b.len();
            return b;
        }
    }
    // Zeroed pages from the allocator: no pass over them here.
    vec![0; MIN << k]
}

/// Keep `buf` for a later [`take`], unless it is not of a size class or enough are kept.
pub fn give(buf: Vec<u8>) {
    let len = buf.len();
    let Some(k) = class_of(len).filter(|k| MIN << k == len) else {
        return;
    };
    if let Ok(mut kept) = KEPT_BUFFERS.lock() {
        if kept.bytes + len <= KEPT {
            kept.bytes += len;
            kept.classes[k].push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_sized_by_class_and_kept_within_the_bound() {
        assert_eq!(take(1).len(), MIN);
        assert_eq!(take(MIN + 1).len(), 2 * MIN);
        assert_eq!(take(MAX).len(), MAX);
        assert_eq!(take(MAX + 1).len(), MAX + 1);
        // A kept buffer comes back (with its bytes: they are overwritten by the taker).
        let mut b = take(3 * MIN);
        b[0] = 42;
        give(b);
        let again = take(4 * MIN - 1);
        assert_eq!(again.len(), 4 * MIN);
        // Odd sizes are not kept; the bound holds however many are given.
        give(vec![0; 1000]);
        for _ in 0..2 * KEPT / MAX {
            give(vec![0; MAX]);
        }
        assert!(KEPT_BUFFERS.lock().unwrap().bytes <= KEPT);
    }
}
