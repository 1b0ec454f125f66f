//! HTTP/1 trailers, as Envoy's HTTP/1 codec treats them by default (`enable_trailers` off in
//! `Http1ProtocolOptions`): dropped where a message crosses an HTTP/1.1 connection, in either
//! direction. A request from an HTTP/1.1 client and a response from an HTTP/1.1 upstream reach
//! the filters without trailers (plugins get no trailers callback; the body ends at its last
//! chunk), and trailers are not sent to an HTTP/1.1 upstream or client. Between h2 peers they
//! pass, and filters see them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

/// A body that ends where its trailers would be, when `drop` is set (as is otherwise).
pub(crate) struct NoTrailers<B> {
    inner: B,
    drop: bool,
    ended: bool,
}

impl<B> NoTrailers<B> {
    pub(crate) fn new(inner: B, drop: bool) -> Self {
        Self {
            inner,
            drop,
            ended: false,
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
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) if self.drop && f.is_trailers() => {
                self.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn http1_connections_drop_them_h2_keeps_them() {
        assert!(dropped_on(http::Version::HTTP_11));
        assert!(dropped_on(http::Version::HTTP_10));
        assert!(!dropped_on(http::Version::HTTP_2));
    }
}
