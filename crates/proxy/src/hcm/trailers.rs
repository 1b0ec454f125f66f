//! HTTP/1 trailers, as Envoy's HTTP/1 codec treats them by default (`enable_trailers` off in
//! `Http1ProtocolOptions`): dropped where a message crosses an HTTP/1.1 connection, in either
//! direction. A request from an HTTP/1.1 client and a response from an HTTP/1.1 upstream reach
//! the filters without trailers (plugins get no trailers callback; the body ends at its last
//! chunk), and trailers are not sent to an HTTP/1.1 upstream or client. Between h2 peers they
//! pass, and filters see them.
//!
//! A message read from an HTTP/1.1 connection also ends the way Envoy's codec ends it: its
//! last data does not carry the end of stream; an empty end of stream follows (Envoy's
//! `onMessageComplete`), so a plugin sees `on_request_body(5, false)` then
//! `on_request_body(0, true)` for a 5-byte body, with or without `content-length`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

/// A body that ends where its trailers would be, when `drop` is set (as is otherwise).
/// Whether a whole message has been read, and when (`%REQUEST_DURATION%`).
#[derive(Debug, Default)]
pub(crate) struct ReadAll(std::cell::Cell<Option<std::time::Instant>>);

impl ReadAll {
    /// Marks the message read (now, unless it already was) or, with `false`, not read yet.
    pub(crate) fn set(&self, done: bool) {
        match (done, self.0.get()) {
            (true, Some(_)) => {}
            (true, None) => self.0.set(Some(std::time::Instant::now())),
            (false, _) => self.0.set(None),
        }
    }

    /// Whether the whole message has been read.
    pub(crate) fn get(&self) -> bool {
        self.0.get().is_some()
    }

    /// When the whole message had been read.
    pub(crate) fn at(&self) -> Option<std::time::Instant> {
        self.0.get()
    }
}

pub(crate) struct NoTrailers<B> {
    inner: B,
    drop: bool,
    /// Read from an HTTP/1.1 connection: the end of stream is not reported with the last
    /// data but as a separate end (`None`) after it.
    defer_end: bool,
    ended: bool,
    /// Set once the whole message has been read.
    read_all: Option<std::rc::Rc<ReadAll>>,
}

impl<B> NoTrailers<B> {
    pub(crate) fn new(inner: B, drop: bool) -> Self {
        Self {
            inner,
            drop,
            defer_end: false,
            ended: false,
            read_all: None,
        }
    }

    /// Sets `flag` once the whole message has been read.
    pub(crate) fn notify(mut self, flag: std::rc::Rc<ReadAll>) -> Self {
        self.read_all = Some(flag);
        self
    }

    /// A body as read from a connection of `version`: on HTTP/1.1 its trailers are dropped
    /// and, when `filtered` (filters see its frames), its end comes after its last data.
    pub(crate) fn decoded(inner: B, version: http::Version, filtered: bool) -> Self {
        let h1 = dropped_on(version);
        Self {
            inner,
            drop: h1,
            defer_end: h1 && filtered,
            ended: false,
            read_all: None,
        }
    }
}

/// Reads what is left of a body to its end, off the request path, then calls `then` with
/// whether it ended cleanly and the trailers it ended with. For a body the codec stopped reading at its `content-length`
/// (hyper drops it at the last declared byte): an h2 peer's trailers and the end of stream
/// still go through the filters, as in Envoy, whose HTTP/1 codec has written everything it
/// will write but whose filter chain still sees the rest of the stream.
pub(crate) fn drain_rest<B>(mut rest: B, then: impl FnOnce(bool, Option<http::HeaderMap>) + 'static)
where
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
{
    use http_body_util::BodyExt;
    tokio::task::spawn_local(async move {
        let mut trailers = None;
        let ok = loop {
            match rest.frame().await {
                None => break true,
                Some(Err(_)) => break false,
                Some(Ok(f)) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
        };
        then(ok, trailers);
    });
}

/// The `content-length` in `headers`, if any.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A request body sent to an HTTP/1.1 upstream with a `content-length`: when hyper has
/// written the declared length and drops it, the rest (an h2 client's trailers) is drained
/// through the filters ([`drain_rest`]).
pub(crate) struct ToLength<B: http_body::Body<Data = Bytes> + Unpin + 'static> {
    inner: Option<B>,
    length: Option<u64>,
    sent: u64,
    ended: bool,
}

impl<B: http_body::Body<Data = Bytes> + Unpin + 'static> ToLength<B> {
    pub(crate) fn new(inner: B, length: Option<u64>) -> Self {
        Self {
            inner: Some(inner),
            length,
            sent: 0,
            ended: false,
        }
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin + 'static> http_body::Body for ToLength<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.sent += d.len() as u64;
                }
            }
            Poll::Ready(_) => self.ended = true,
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin + 'static> Drop for ToLength<B> {
    fn drop(&mut self) {
        if let Some(rest) = self.inner.take()
            && !self.ended
            && !rest.is_end_stream()
            && self.length == Some(self.sent)
        {
            drain_rest(rest, |_, _| {});
        }
    }
}

/// Whether a message on a connection of this version loses its trailers.
pub(crate) fn dropped_on(version: http::Version) -> bool {
    version < http::Version::HTTP_2
}

impl<B> http_body::Body for NoTrailers<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if self.ended || self.defer_end && self.inner.is_end_stream() {
            self.ended = true;
            if let Some(flag) = &self.read_all {
                flag.set(true);
            }
            return Poll::Ready(None);
        }
        let r = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) if self.drop && f.is_trailers() => {
                self.ended = true;
                Poll::Ready(None)
            }
            other => other,
        };
        if let Some(flag) = &self.read_all
            && match &r {
                Poll::Ready(Some(Ok(f))) => f.is_trailers() || self.inner.is_end_stream(),
                Poll::Ready(None) => true,
                _ => false,
            }
        {
            flag.set(true);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended || !self.defer_end && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::{BodyExt, StreamBody};

    fn body_with_trailers()
    -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        let mut t = http::HeaderMap::new();
        t.insert("x-t", http::HeaderValue::from_static("1"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(t)),
        ];
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn trailers_are_dropped_only_when_asked() {
        let dropped = NoTrailers::new(body_with_trailers(), true)
            .collect()
            .await
            .expect("body");
        assert!(dropped.trailers().is_none());
        assert_eq!(&dropped.to_bytes()[..], b"hello");
        let kept = NoTrailers::new(body_with_trailers(), false)
            .collect()
            .await
            .expect("body");
        assert_eq!(
            kept.trailers()
                .and_then(|t| t.get("x-t"))
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }

    #[tokio::test]
    async fn an_http1_body_ends_after_its_last_data() {
        let body = http_body_util::Full::new(Bytes::from_static(b"hello"));
        let mut h1 = NoTrailers::decoded(body.clone(), http::Version::HTTP_11, true);
        let first = h1.frame().await.and_then(Result::ok);
        assert_eq!(
            first.and_then(|f| f.into_data().ok()).as_deref(),
            Some(&b"hello"[..])
        );
        assert!(!h1.is_end_stream(), "the end is reported separately");
        assert!(h1.frame().await.is_none());
        assert!(h1.is_end_stream());
        let mut h2 = NoTrailers::decoded(body, http::Version::HTTP_2, true);
        assert!(h2.frame().await.is_some());
        assert!(h2.is_end_stream(), "h2: the end comes with the last data");
    }

    #[test]
    fn http1_connections_drop_them_h2_keeps_them() {
        assert!(dropped_on(http::Version::HTTP_11));
        assert!(dropped_on(http::Version::HTTP_10));
        assert!(!dropped_on(http::Version::HTTP_2));
    }
}
