//! Envoy's delayed close for downstream connections the proxy closes: after the last response
//! (`connection: close`), the write side is shut and what the client still sends (the rest of
//! a request body a filter answered early) is read and discarded until the client closes or
//! 1 s passes (`delayed_close_timeout`'s default). Closing a socket with unread input makes
//! the kernel send a reset, and a client still writing would get `EPIPE` and lose the response.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Envoy's `delayed_close_timeout` default.
const DELAYED_CLOSE: Duration = Duration::from_secs(1);

/// A connection that lingers after the proxy shuts it down.
pub(crate) struct Linger<IO: AsyncRead + Unpin + 'static> {
    io: Option<IO>,
    /// The proxy shut the write side.
    shut: bool,
    /// The client closed its side (a read returned nothing).
    eof: bool,
}

impl<IO: AsyncRead + Unpin + 'static> Linger<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Self {
            io: Some(io),
            shut: false,
            eof: false,
        }
    }
}

fn gone() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotConnected)
}

impl<IO: AsyncRead + Unpin + 'static> AsyncRead for Linger<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let r = Pin::new(io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before {
            self.eof = true;
        }
        r
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + 'static> AsyncWrite for Linger<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.shut = true;
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
}

impl<IO: AsyncRead + Unpin + 'static> Drop for Linger<IO> {
    fn drop(&mut self) {
        if !self.shut || self.eof {
            return;
        }
        let Some(mut io) = self.io.take() else { return };
        tokio::task::spawn_local(async move {
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(DELAYED_CLOSE, async {
                while let Ok(n) = io.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
}
