//! The low-speed rule over a byte stream, CernVM-FS style.
//!
//! HTTP clients bound the connect and the wait for each read, but a mirror (or a caching
//! proxy in front of it) that trickles a few bytes every second keeps both happy while a
//! multi-GB blob would take days. [`low_speed`] wraps a [`ByteStream`] and fails it when
//! fewer than `limit × window` bytes arrived during a window; the count starts again with
//! each window. The rule also fires when the inner stream is merely pending (no bytes at
//! all), and is checked on every poll, so a stream that keeps delivering small chunks cannot
//! starve the check.
//!
//! Time the *consumer* keeps a chunk before asking for the next one does not count: a slow
//! reader (decompression, a FUSE client that stopped reading) applies back-pressure, and
//! that is not the mirror's fault.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

use super::{ByteStream, TransportError};

/// Builds the error a too-slow stream fails with, from the bytes seen in the failed window
/// and the window's length.
type OnSlow = Box<dyn Fn(u64, Duration) -> TransportError + Send + Sync>;

/// `stream` under the low-speed rule of `opts`, a slow transfer failing as a `Timeout`
/// naming `mirror` and `path` (what every remote transport does with a body).
pub fn guard(
    stream: ByteStream,
    opts: &super::RemoteOptions,
    mirror: &str,
    path: &str,
) -> ByteStream {
    let limit = opts.low_speed_limit;
    let mirror = mirror.to_string();
    let path = path.to_string();
    low_speed(stream, limit, opts.low_speed_time, move |bytes, window| {
        TransportError::Timeout {
            mirror: mirror.clone(),
            path: path.clone(),
            message: format!(
                "slower than {limit} B/s: {bytes} bytes in {:.1}s",
                window.as_secs_f64()
            ),
        }
    })
}

/// Fail `stream` with `on_slow(bytes_in_window, window).into_io()` when fewer than
/// `limit * window` bytes (limit in bytes per second) arrive during a window. A `limit` of
/// 0 (or a zero window) disables the rule. After the error the stream ends.
pub fn low_speed(
    stream: ByteStream,
    limit: u64,
    window: Duration,
    on_slow: impl Fn(u64, Duration) -> TransportError + Send + Sync + 'static,
) -> ByteStream {
    if limit == 0 || window.is_zero() {
        return stream;
    }
    let min_bytes = (u128::from(limit) * window.as_nanos()).div_ceil(1_000_000_000);
    Box::pin(LowSpeed {
        inner: stream,
        min_bytes: u64::try_from(min_bytes).unwrap_or(u64::MAX),
        window,
        on_slow: Box::new(on_slow),
        deadline: None,
        bytes: 0,
        yielded_at: None,
        done: false,
    })
}

/// The stream adapter behind [`low_speed`].
struct LowSpeed {
    inner: ByteStream,
    /// Bytes a window must see.
    min_bytes: u64,
    window: Duration,
    on_slow: OnSlow,
    /// The end of the current window; created on the first poll, so the window starts when
    /// the consumer starts reading.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes seen in the current window.
    bytes: u64,
    /// When the last chunk was handed to the consumer (the time until the next poll is the
    /// consumer's, not the mirror's).
    yielded_at: Option<Instant>,
    done: bool,
}

impl Stream for LowSpeed {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin (the closure is boxed), so the adapter is too.
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        let window = this.window;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(now + window)));
        if let Some(at) = this.yielded_at.take() {
            let held = now.saturating_duration_since(at);
            if !held.is_zero() {
                let moved = deadline.deadline() + held;
                deadline.as_mut().reset(moved);
            }
        }
        // Check the window on every poll, whether or not bytes are flowing. Polling the
        // sleep also registers the waker, so a pending inner stream still wakes us.
        while deadline.as_mut().poll(cx).is_ready() {
            if this.bytes < this.min_bytes {
                this.done = true;
                let err = (this.on_slow)(this.bytes, window);
                return Poll::Ready(Some(Err(err.into_io())));
            }
            this.bytes = 0;
            deadline.as_mut().reset(Instant::now() + window);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.bytes = this.bytes.saturating_add(chunk.len() as u64);
                this.yielded_at = Some(Instant::now());
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real time with short windows and wide margins (the crate's tokio has no `test-util`,
    //! so time cannot be paused): rates are 10× above or below the limit.

    use std::time::Duration;

    use futures::StreamExt;
    use tokio::time::Instant;

    use super::*;

    const WINDOW: Duration = Duration::from_millis(300);

    fn slow_error(bytes: u64, window: Duration) -> TransportError {
        TransportError::Timeout {
            mirror: "test".into(),
            path: "blob".into(),
            message: format!("{bytes} bytes in {window:?}"),
        }
    }

    /// `chunks` chunks of `size` bytes, one every `every`.
    fn paced(size: usize, every: Duration, chunks: usize) -> ByteStream {
        futures::stream::unfold(0usize, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from(vec![b'x'; size])), i + 1))
        })
        .boxed()
    }

    /// Drain a stream: bytes read and the error it ended with, if any.
    async fn drain(mut s: ByteStream) -> (u64, Option<std::io::Error>) {
        let mut n = 0;
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => n += b.len() as u64,
                Err(e) => {
                    // After an error the stream ends.
                    assert!(s.next().await.is_none());
                    return (n, Some(e));
                }
            }
        }
        (n, None)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn fast_enough_stream_passes() {
        // 1000 B every 10 ms = 100 kB/s against a limit of 10 kB/s, for 1 s (3+ windows).
        let s = low_speed(
            paced(1000, Duration::from_millis(10), 100),
            10_000,
            WINDOW,
            slow_error,
        );
        let (n, err) = tokio::time::timeout(Duration::from_secs(10), drain(s))
            .await
            .unwrap();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(n, 100_000);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn slow_stream_fails_after_one_window() {
        // 10 B every 10 ms = 1 kB/s against a limit of 10 kB/s: bytes keep arriving, yet
        // the deadline is checked.
        let s = low_speed(
            paced(10, Duration::from_millis(10), 100_000),
            10_000,
            WINDOW,
            slow_error,
        );
        let t = Instant::now();
        let (n, err) = tokio::time::timeout(Duration::from_secs(10), drain(s))
            .await
            .unwrap();
        let elapsed = t.elapsed();
        let err = err.expect("the slow stream must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let inner = TransportError::from_io(&err).expect("carries a TransportError");
        assert!(matches!(inner, TransportError::Timeout { .. }), "{inner}");
        assert!(n > 0 && n < 3000, "{n}");
        assert!(elapsed >= WINDOW, "{elapsed:?}");
        assert!(elapsed < WINDOW * 2, "{elapsed:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pending_stream_fails_after_one_window() {
        let s = low_speed(futures::stream::pending().boxed(), 1024, WINDOW, slow_error);
        let t = Instant::now();
        let (n, err) = tokio::time::timeout(Duration::from_secs(10), drain(s))
            .await
            .unwrap();
        let elapsed = t.elapsed();
        assert_eq!(n, 0);
        let err = err.expect("a silent stream must fail");
        let inner = TransportError::from_io(&err).expect("carries a TransportError");
        assert!(inner.to_string().contains("0 bytes"), "{inner}");
        assert!(elapsed >= WINDOW && elapsed < WINDOW * 2, "{elapsed:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn limit_zero_never_fails() {
        // 1 B every 200 ms with a 50 ms window: would fail at once with any limit.
        let s = low_speed(
            paced(1, Duration::from_millis(200), 4),
            0,
            Duration::from_millis(50),
            slow_error,
        );
        let (n, err) = tokio::time::timeout(Duration::from_secs(10), drain(s))
            .await
            .unwrap();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(n, 4);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_slow_consumer_is_not_a_slow_mirror() {
        // The mirror is fast; the consumer holds each chunk for 2 windows.
        let mut s = low_speed(
            paced(100, Duration::from_millis(1), 3),
            1000,
            Duration::from_millis(100),
            slow_error,
        );
        let mut n = 0;
        for _ in 0..10 {
            match tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .unwrap()
            {
                Some(Ok(b)) => n += b.len(),
                Some(Err(e)) => panic!("{e}"),
                None => break,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(n, 300);
    }
}
