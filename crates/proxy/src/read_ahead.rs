//! Body chunks as Envoy's HTTP/1.1 codec makes them: Envoy reads a socket until it would block
//! (or its buffer limit) and hands everything it read to the codec at once, so a filter sees
//! one `decodeData` / `encodeData` per read event: a 150 KB body sent at once is one
//! `on_request_body` (or `on_response_body`) of 150 KB, not hyper's 8, 16, 32 ... KB reads.
//! [`ReadAhead`] reads a connection (downstream, or an HTTP/1.1 upstream) the same way and
//! says when the codec has decoded all it read; [`Coalesce`] merges the body frames the codec
//! makes of one such read before the filters see them.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::upstream::BoxError;

/// One read's size, as Envoy's raw socket reads.
const READ: usize = 16 * 1024;

/// The most one merged frame holds (Envoy's default connection buffer limit).
const LIMIT: usize = 1024 * 1024;

/// What [`Coalesce`] learns from the connection's reads.
#[derive(Default, Debug)]
pub(crate) struct ReadState {
    /// The codec asked for more input and the socket had none: everything read so far has
    /// been decoded (the codec's own buffer is empty too).
    starved: AtomicBool,
    /// A body waits in `waiter` (the lock is taken only then: most reads have no waiter).
    waiting: AtomicBool,
    /// Woken when the codec gets starved.
    waiter: Mutex<Option<std::task::Waker>>,
    /// The connection's local address, when it is an upstream connection.
    local: Option<std::net::SocketAddr>,
}

impl ReadState {
    /// The state of an upstream connection from `local`.
    pub(crate) fn on(local: Option<std::net::SocketAddr>) -> Self {
        Self {
            local,
            ..Self::default()
        }
    }

    /// The connection's local address, if known.
    pub(crate) fn local(&self) -> Option<std::net::SocketAddr> {
        self.local
    }

    fn set_starved(&self, yes: bool) {
        self.starved.store(yes, Ordering::Relaxed);
        if yes && self.waiting.swap(false, Ordering::AcqRel) {
            let w = self.waiter.lock().map(|mut w| w.take()).unwrap_or_default();
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    fn starved(&self) -> bool {
        self.starved.load(Ordering::Relaxed)
    }

    fn wait(&self, w: &std::task::Waker) {
        if let Ok(mut slot) = self.waiter.lock() {
            *slot = Some(w.clone());
        }
        self.waiting.store(true, Ordering::Release);
    }
}

/// A connection read until it would block (at most `limit` bytes ahead of the codec).
pub(crate) struct ReadAhead<IO> {
    io: IO,
    buf: BytesMut,
    limit: usize,
    state: Arc<ReadState>,
    /// The end of input (or an error) met while reading ahead, reported once `buf` is empty.
    end: Option<std::io::Result<()>>,
}

impl<IO> ReadAhead<IO> {
    pub(crate) fn new(io: IO, limit: usize, state: Arc<ReadState>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            limit: limit.max(READ),
            state,
            end: None,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            if let Some(end) = this.end.take() {
                return Poll::Ready(end);
            }
            // Straight into the codec's buffer; only a read that fills it may have more behind.
            let before = out.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, out) {
                Poll::Pending => {
                    this.state.set_starved(true);
                    return Poll::Pending;
                }
                Poll::Ready(r) => {
                    this.state.set_starved(false);
                    r?;
                }
            }
            if out.remaining() > 0 || out.filled().len() == before {
                return Poll::Ready(Ok(()));
            }
            while this.buf.len() < this.limit {
                let start = this.buf.len();
                this.buf.resize(start + READ, 0);
                let mut rb = ReadBuf::new(&mut this.buf[start..]);
                let r = Pin::new(&mut this.io).poll_read(cx, &mut rb);
                let n = rb.filled().len();
                this.buf.truncate(start + n);
                match r {
                    Poll::Ready(Ok(())) if n == 0 => {
                        this.end = Some(Ok(()));
                        break;
                    }
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        this.end = Some(Err(e));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            return Poll::Ready(Ok(()));
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A body whose data frames are merged while the connection has read-ahead bytes the
/// codec will turn into more of them (one frame per socket read event, as Envoy's codec).
pub(crate) struct Coalesce<B> {
    src: B,
    /// `None`: frames pass as they are (h2, whose frames Envoy's codec also hands on one by
    /// one, or no filter that sees bodies).
    reads: Option<Arc<ReadState>>,
    acc: BytesMut,
    /// A frame that came after merged data (trailers, an error, or the end).
    next: Option<Option<Result<Frame<Bytes>, BoxError>>>,
}

impl<B> Coalesce<B> {
    pub(crate) fn new(src: B, reads: Option<Arc<ReadState>>) -> Self {
        Self {
            src,
            reads,
            acc: BytesMut::new(),
            next: None,
        }
    }

    fn take(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Ok(Frame::data(
            std::mem::take(&mut self.acc).freeze(),
        ))))
    }
}

impl<B> http_body::Body for Coalesce<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(next) = this.next.take() {
            return Poll::Ready(next);
        }
        let Some(reads) = this.reads.clone() else {
            return Pin::new(&mut this.src)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(Into::into)));
        };
        loop {
            match Pin::new(&mut this.src).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => {
                        let done = this.src.is_end_stream() || this.acc.len() >= LIMIT;
                        if this.acc.is_empty() && done {
                            return Poll::Ready(Some(Ok(Frame::data(d))));
                        }
                        this.acc.extend_from_slice(&d);
                        if done {
                            return this.take();
                        }
                    }
                    Err(f) => {
                        if this.acc.is_empty() {
                            return Poll::Ready(Some(Ok(f)));
                        }
                        this.next = Some(Some(Ok(f)));
                        return this.take();
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    if this.acc.is_empty() {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    this.next = Some(Some(Err(e.into())));
                    return this.take();
                }
                Poll::Ready(None) => {
                    if this.acc.is_empty() {
                        return Poll::Ready(None);
                    }
                    this.next = Some(None);
                    return this.take();
                }
                Poll::Pending => {
                    // More of this read is on its way unless the codec has decoded all it read
                    // and found the socket empty.
                    if !this.acc.is_empty() {
                        if reads.starved() {
                            return this.take();
                        }
                        reads.wait(cx.waker());
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.acc.is_empty() && self.next.is_none() && self.src.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut h = self.src.size_hint();
        let held = self.acc.len() as u64;
        h.set_lower(h.lower().saturating_add(held));
        if let Some(u) = h.upper() {
            h.set_upper(u.saturating_add(held));
        }
        h
    }
}
