//! Envoy's answers to requests its HTTP/1 codec cannot parse. hyper answers a malformed
//! request itself, before any service runs, with an empty `400` (or `431`, `414`) and closes;
//! Envoy sends `Bad Request` (`Upgrade Required` for an unknown HTTP version, `Request Header
//! Fields Too Large`) with `content-type`, `server` and `connection: close`, and its
//! connection manager counts and logs the stream (`DPE`, `http1.codec_error`, ...).
//! [`CodecReplies`] sits under hyper on an HTTP/1 connection, recognises hyper's own error
//! head as it is written and writes Envoy's reply in its place; the connection manager then
//! logs it ([`Caught`]). It also writes `HTTP/1.1` on the `426` an HTTP/1.0 client gets (hyper
//! answers a 1.0 request in 1.0; Envoy's codec answers in 1.1).
//!
//! hyper has no hook for its error replies, hence the recognition: its error head is the only
//! head we write that has `connection: close` followed directly by `content-length: 0` and
//! `date`, with no `server` (every response of the connection manager carries `server`).

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much of each read is kept to tell why hyper refused it.
const KEEP: usize = 1024;

/// hyper's error head: `HTTP/1.1 <code> <reason>` then exactly these headers.
const HYPER_ERROR_HEADERS: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\ndate: ";

/// What the connection manager logs of a request the codec refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caught {
    pub(crate) status: http::StatusCode,
    pub(crate) details: &'static str,
    /// Bytes of the reply's body.
    pub(crate) body_len: u64,
}

/// State shared by [`CodecReplies`] and the connection manager.
#[derive(Default)]
pub(crate) struct CodecState {
    /// The start of the last read (what hyper was parsing).
    last_read: RefCell<Vec<u8>>,
    /// Bytes read since the proxy last wrote (the size of the head hyper refused).
    read_since_write: Cell<usize>,
    caught: Cell<Option<Caught>>,
}

impl CodecState {
    /// The request the codec refused, if it did.
    pub(crate) fn take(&self) -> Option<Caught> {
        self.caught.take()
    }
}

/// An HTTP/1 downstream connection whose codec replies are Envoy's.
pub(crate) struct CodecReplies<IO> {
    io: IO,
    state: Rc<CodecState>,
    server: HeaderValue,
    /// Envoy's reply being written in place of hyper's, and the length of hyper's.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<IO> CodecReplies<IO> {
    pub(crate) fn new(io: IO, state: Rc<CodecState>, server: HeaderValue) -> Self {
        Self {
            io,
            state,
            server,
            pending: None,
        }
    }
}

/// Whether `buf` is hyper's error head (the whole of it).
fn hyper_error_head(buf: &[u8]) -> Option<http::StatusCode> {
    if buf.len() > 160 || !buf.starts_with(b"HTTP/1.1 4") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    if !buf[line_end..].starts_with(HYPER_ERROR_HEADERS) {
        return None;
    }
    // Only the date header follows.
    let rest = &buf[line_end + HYPER_ERROR_HEADERS.len()..];
    if rest.len() != "Tue, 08 Dec 2026 06:41:45 GMT\r\n\r\n".len() {
        return None;
    }
    std::str::from_utf8(buf.get(9..12)?)
        .ok()?
        .parse::<u16>()
        .ok()
        .and_then(|c| http::StatusCode::from_u16(c).ok())
}

/// Envoy's status and details for the request hyper refused with `hyper_status`, from the
/// bytes it was parsing.
fn classify(
    hyper_status: http::StatusCode,
    read: &[u8],
    head_len: usize,
) -> (http::StatusCode, &'static str) {
    let head = read
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(read, |end| &read[..end]);
    let lines: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
    match hyper_status.as_u16() {
        // (past 60 KiB the head is too large; under it, hyper refused its 101st header)
        431 if head_len < 60 * 1024 || lines.len() > 101 => (
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "http1.too_many_headers",
        ),
        431 | 414 => (
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "http1.headers_too_large",
        ),
        _ => {
            // A well-formed request line with a version other than 1.x: Envoy's `426`.
            let request_line = lines.first().map_or(&b""[..], |l| l.trim_ascii_end());
            let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
            if let [method, target, version] = parts[..]
                && !method.is_empty()
                && method.iter().all(u8::is_ascii_alphabetic)
                && !target.is_empty()
                && version.starts_with(b"HTTP/")
                && !version.starts_with(b"HTTP/1.")
            {
                return (http::StatusCode::UPGRADE_REQUIRED, "low_version");
            }
            // A control character in a header value.
            let invalid = lines.iter().skip(1).any(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                line.iter().position(|&b| b == b':').is_some_and(|colon| {
                    line[colon + 1..]
                        .iter()
                        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
                })
            });
            let details = if invalid {
                "http1.invalid_characters"
            } else {
                "http1.codec_error"
            };
            (http::StatusCode::BAD_REQUEST, details)
        }
    }
}

/// Envoy's reply bytes for `status` (its reason as body), with hyper's `date`.
fn envoy_reply(status: http::StatusCode, date: &[u8], server: &HeaderValue) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or_default();
    let mut out = Vec::with_capacity(160 + reason.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(reason.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ndate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nserver: ");
    out.extend_from_slice(server.as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(reason.as_bytes());
    out
}

impl<IO: AsyncWrite + Unpin> CodecReplies<IO> {
    /// Replaces hyper's error head `buf` (or the `HTTP/1.0` of a `426`), if it is one.
    fn replace(&mut self, buf: &[u8]) -> bool {
        if buf.starts_with(b"HTTP/1.0 426 ") {
            let mut fixed = buf.to_vec();
            fixed[7] = b'1';
            self.pending = Some((fixed, 0, buf.len()));
            return true;
        }
        let Some(hyper_status) = hyper_error_head(buf) else {
            return false;
        };
        let (status, details) = classify(
            hyper_status,
            &self.state.last_read.borrow(),
            self.state.read_since_write.get(),
        );
        let date = &buf[buf.len() - "Tue, 08 Dec 2026 06:41:45 GMT\r\n\r\n".len()..buf.len() - 4];
        let reply = envoy_reply(status, date, &self.server);
        let body_len = status.canonical_reason().map_or(0, str::len) as u64;
        self.state.caught.set(Some(Caught {
            status,
            details,
            body_len,
        }));
        self.pending = Some((reply, 0, buf.len()));
        true
    }

    /// Writes the replacement; hyper is told its own bytes were written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let Some((out, written, theirs)) = self.pending.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while *written < out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &out[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let theirs = *theirs;
        self.pending = None;
        Poll::Ready(Ok(theirs))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for CodecReplies<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            let mut last = self.state.last_read.borrow_mut();
            last.clear();
            last.extend_from_slice(&read[..read.len().min(KEEP)]);
            let since = &self.state.read_since_write;
            since.set(since.get() + read.len());
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CodecReplies<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let replaced = this.pending.is_some() || this.replace(buf);
        this.state.read_since_write.set(0);
        if replaced {
            return this.poll_pending(cx);
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let first = bufs.iter().find(|b| !b.is_empty());
        let replaced = this.pending.is_some() || first.is_some_and(|b| this.replace(b));
        this.state.read_since_write.set(0);
        if replaced {
            return this.poll_pending(cx);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 08 Dec 2026 06:41:45 GMT\r\n\r\n";

    #[test]
    fn recognises_only_hyper_error_heads() {
        assert_eq!(
            hyper_error_head(HYPER_400),
            Some(http::StatusCode::BAD_REQUEST)
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 08 Dec 2026 06:41:45 GMT\r\nserver: envoy\r\nconnection: close\r\n\r\n";
        assert_eq!(hyper_error_head(ours), None);
        assert_eq!(hyper_error_head(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    }

    #[test]
    fn classifies_as_envoy_does() {
        let bad = http::StatusCode::BAD_REQUEST;
        let c = |read: &[u8]| classify(bad, read, read.len());
        assert_eq!(
            c(b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n"),
            (bad, "http1.codec_error")
        );
        assert_eq!(
            c(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n"),
            (bad, "http1.invalid_characters")
        );
        assert_eq!(
            c(b"GET / HTTP/9.1\r\nHost: x\r\n\r\n"),
            (http::StatusCode::UPGRADE_REQUIRED, "low_version")
        );
        let many: Vec<u8> = [&b"GET / HTTP/1.1\r\n"[..]]
            .into_iter()
            .chain(std::iter::repeat_n(&b"a: b\r\n"[..], 101))
            .flatten()
            .copied()
            .collect();
        assert_eq!(
            classify(
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &many,
                2000
            )
            .1,
            "http1.too_many_headers"
        );
        assert_eq!(
            classify(
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                b"GET",
                300_000
            )
            .1,
            "http1.headers_too_large"
        );
    }

    #[test]
    fn writes_envoys_reply() {
        let out = envoy_reply(
            http::StatusCode::BAD_REQUEST,
            b"Tue, 08 Dec 2026 06:41:45 GMT",
            &HeaderValue::from_static("envoy"),
        );
        assert_eq!(
            out,
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\ndate: Tue, 08 Dec 2026 06:41:45 GMT\r\nserver: envoy\r\nconnection: close\r\n\r\nBad Request"
        );
    }
}
