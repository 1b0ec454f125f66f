//! A body that can read ahead of its reader: frames read while a filter holds the headers (a
//! plugin paused them, waiting for a callout) are kept in front and served first. Envoy's codec
//! goes on reading a stopped stream's body into its buffer (StopAllIterationAndWatermark, up
//! to the buffer limit), so a request whose body arrived during the pause is complete when the
//! plugin answers, and its bytes count in `request.size`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use crate::upstream::BoxError;

/// `inner` with the frames already read from it in front; counts the data bytes read from
/// `inner` (the codec's received bytes).
pub(crate) struct Prefixed<B> {
    front: VecDeque<Frame<Bytes>>,
    /// Data bytes in `front`.
    front_bytes: usize,
    inner: Option<B>,
    /// An error `inner` returned while reading ahead, served after `front`.
    failed: Option<BoxError>,
    counter: Option<Rc<std::cell::Cell<u64>>>,
}

impl<B> Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(inner: B) -> Self {
        Self {
            front: VecDeque::new(),
            front_bytes: 0,
            inner: Some(inner),
            failed: None,
            counter: None,
        }
    }

    /// Counts the data bytes read from the inner body into `counter`.
    pub(crate) fn counting(mut self, counter: Rc<std::cell::Cell<u64>>) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Whether reading ahead may go on: the inner body has more and fewer than `limit` bytes
    /// wait in front.
    pub(crate) fn can_read_ahead(&self, limit: usize) -> bool {
        self.inner.is_some() && self.failed.is_none() && self.front_bytes < limit
    }

    /// Reads one more frame from the inner body into the front.
    pub(crate) async fn read_ahead(&mut self) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        match inner.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.front_bytes += d.len();
                    if let Some(c) = &self.counter {
                        c.set(c.get() + d.len() as u64);
                    }
                }
                let ended = f.is_trailers() || inner.is_end_stream();
                self.front.push_back(f);
                if ended {
                    self.inner = None;
                }
            }
            Some(Err(e)) => {
                self.failed = Some(e.into());
                self.inner = None;
            }
            None => self.inner = None,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(f) = this.front.pop_front() {
            // What was read ahead goes on as one chunk, as Envoy's buffer does (data up to the
            // first trailers frame).
            let f = match f.into_data() {
                Ok(first) if this.front.front().is_some_and(|n| n.is_data()) => {
                    let mut all = bytes::BytesMut::from(first);
                    while this.front.front().is_some_and(|n| n.is_data()) {
                        if let Some(Ok(d)) = this.front.pop_front().map(Frame::into_data) {
                            all.extend_from_slice(&d);
                        }
                    }
                    Frame::data(all.freeze())
                }
                Ok(d) => Frame::data(d),
                Err(f) => f,
            };
            if let Some(d) = f.data_ref() {
                this.front_bytes = this.front_bytes.saturating_sub(d.len());
            }
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(c), Some(d)) = (&this.counter, f.data_ref()) {
                    c.set(c.get() + d.len() as u64);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.front.is_empty()
            && self.failed.is_none()
            && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Some(b) if self.front.is_empty() => b.size_hint(),
            Some(_) => http_body::SizeHint::default(),
            None => http_body::SizeHint::with_exact(self.front_bytes as u64),
        }
    }
}
