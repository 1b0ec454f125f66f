//! Driving the filter chain: header, body and trailer hooks over a range of filters in one
//! direction (request: filter order; response: reverse order), per-filter buffering for
//! `StopIterationAndBuffer`, and the filtered body that runs the rest of a body through the
//! chain as the codec reads it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;
use smallvec::{SmallVec, smallvec};

use crate::filter::{
    DataStatus, FilterCx, HeadersStatus, HttpFilter, LocalBoxFuture, LocalReply, TrailersStatus,
};
use crate::upstream::{Body, BoxError};

/// The per-stream filter state.
pub(crate) struct Stream {
    pub(crate) cx: FilterCx,
    pub(crate) filters: Vec<Box<dyn HttpFilter>>,
}

/// Which way data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Request,
    Response,
}

/// Headers of either direction.
pub(crate) enum Hdrs<'a> {
    Req(&'a mut http::request::Parts),
    Resp(&'a mut http::response::Parts),
}

/// Result of running header hooks.
pub(crate) enum Flow {
    /// Every filter in range continued.
    Done,
    /// The filter at this position stopped iteration.
    Stopped(usize),
    /// A filter at this position asked for a local reply.
    Reply(LocalReply, usize),
}

/// Frames in flight through the hooks: almost always one (a chunk) or two (held data and
/// trailers), kept inline (this runs for every body chunk).
pub(crate) type Frames = SmallVec<[Frame<Bytes>; 2]>;

/// Result of running a frame through hooks.
pub(crate) enum FrameFlow {
    /// Frames that came out past the end of the range.
    Out(Frames),
    /// A filter asked for a local reply.
    Reply(LocalReply),
    /// A filter buffer went over the limit.
    TooLarge,
}

/// A chain direction over the first `len` filters (request: filter order; response: reverse
/// order) and the per-position buffers, allocated only once a filter buffers (this is made
/// several times per request).
pub(crate) struct Pass {
    pub(crate) dir: Dir,
    len: usize,
    bufs: Vec<Option<BytesMut>>,
    pub(crate) limit: usize,
}

impl Pass {
    pub(crate) fn new(dir: Dir, len: usize, limit: usize) -> Self {
        Self {
            dir,
            len,
            bufs: Vec::new(),
            limit,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The index of the filter at position `pos`.
    fn filter_at(&self, pos: usize) -> Option<usize> {
        (pos < self.len).then(|| match self.dir {
            Dir::Request => pos,
            Dir::Response => self.len - 1 - pos,
        })
    }

    /// Takes what the filter at `pos` was holding.
    fn take_held(&mut self, pos: usize) -> Option<BytesMut> {
        self.bufs.get_mut(pos).and_then(Option::take)
    }

    /// Holds `buf` for the filter at `pos`.
    fn hold(&mut self, pos: usize, buf: BytesMut) {
        if self.bufs.len() < self.len {
            self.bufs.resize_with(self.len, || None);
        }
        if let Some(slot) = self.bufs.get_mut(pos) {
            *slot = Some(buf);
        }
    }
}

/// Runs header hooks for positions `from..` of `pass`.
pub(crate) async fn headers(
    st: &mut Stream,
    pass: &Pass,
    from: usize,
    h: &mut Hdrs<'_>,
    end: bool,
) -> Flow {
    let Stream { cx, filters } = st;
    for pos in from..pass.len() {
        let Some(f) = pass.filter_at(pos).and_then(|i| filters.get_mut(i)) else {
            continue;
        };
        let status = match h {
            Hdrs::Req(p) => f.on_request_headers(cx, p, end).await,
            Hdrs::Resp(p) => f.on_response_headers(cx, p, end).await,
        };
        if let Some(r) = cx.take_local_reply() {
            return Flow::Reply(r, pos);
        }
        match status {
            HeadersStatus::Continue => {}
            HeadersStatus::StopIteration => return Flow::Stopped(pos),
            HeadersStatus::LocalReply(r) => return Flow::Reply(r, pos),
        }
    }
    Flow::Done
}

/// Runs one frame through positions `from..to` of `pass`.
pub(crate) async fn frame(
    st: &mut Stream,
    pass: &mut Pass,
    from: usize,
    to: usize,
    frame: Frame<Bytes>,
    end: bool,
) -> FrameFlow {
    let mut items: SmallVec<[(Frame<Bytes>, bool); 2]> = smallvec![(frame, end)];
    for pos in from..to.min(pass.len()) {
        let mut next = SmallVec::new();
        for (fr, end) in items {
            match fr.into_data() {
                Ok(data) => match data_at(st, pass, pos, data, end).await {
                    Step::Out(d) => next.push((Frame::data(d), end)),
                    Step::Held => {}
                    Step::Reply(r) => return FrameFlow::Reply(r),
                    Step::TooLarge => return FrameFlow::TooLarge,
                },
                Err(fr) => {
                    let Ok(mut trailers) = fr.into_trailers() else {
                        continue;
                    };
                    // Data a filter was holding goes on before the trailers.
                    if let Some(buf) = pass.take_held(pos)
                        && !buf.is_empty()
                    {
                        next.push((Frame::data(buf.freeze()), false));
                    }
                    match trailers_at(st, pass, pos, &mut trailers).await {
                        Some(r) => return FrameFlow::Reply(r),
                        None => next.push((Frame::trailers(trailers), true)),
                    }
                }
            }
        }
        items = next;
    }
    FrameFlow::Out(items.into_iter().map(|(f, _)| f).collect())
}

enum Step {
    Out(Bytes),
    Held,
    Reply(LocalReply),
    TooLarge,
}

async fn data_at(st: &mut Stream, pass: &mut Pass, pos: usize, data: Bytes, end: bool) -> Step {
    let Some(idx) = pass.filter_at(pos) else {
        return Step::Out(data);
    };
    let mut data = match pass.take_held(pos) {
        Some(mut buf) => {
            buf.extend_from_slice(&data);
            buf.freeze()
        }
        None => data,
    };
    let Stream { cx, filters } = st;
    let Some(f) = filters.get_mut(idx) else {
        return Step::Out(data);
    };
    let status = match pass.dir {
        Dir::Request => f.on_request_body(cx, &mut data, end).await,
        Dir::Response => f.on_response_body(cx, &mut data, end).await,
    };
    if let Some(r) = cx.take_local_reply() {
        return Step::Reply(r);
    }
    match status {
        DataStatus::Continue => Step::Out(data),
        DataStatus::StopIterationAndBuffer if end => {
            // Nothing more will come: Envoy would wait for the filter to resume; a filter that
            // needs to wait awaits inside the hook here, so continue with what it has.
            Step::Out(data)
        }
        DataStatus::StopIterationAndBuffer => {
            if data.len() > pass.limit {
                return Step::TooLarge;
            }
            pass.hold(pos, BytesMut::from(data));
            Step::Held
        }
        DataStatus::StopIterationNoBuffer => Step::Held,
        DataStatus::LocalReply(r) => Step::Reply(r),
    }
}

async fn trailers_at(
    st: &mut Stream,
    pass: &Pass,
    pos: usize,
    trailers: &mut HeaderMap,
) -> Option<LocalReply> {
    let idx = pass.filter_at(pos)?;
    let Stream { cx, filters } = st;
    let f = filters.get_mut(idx)?;
    let status = match pass.dir {
        Dir::Request => f.on_request_trailers(cx, trailers).await,
        Dir::Response => f.on_response_trailers(cx, trailers).await,
    };
    if let Some(r) = cx.take_local_reply() {
        return Some(r);
    }
    match status {
        TrailersStatus::Continue | TrailersStatus::StopIteration => None,
        TrailersStatus::LocalReply(r) => Some(r),
    }
}

/// How a filtered body ended abnormally.
pub(crate) enum PumpStop {
    /// A filter replied; `false` when it did so at once in a callback of a body frame before
    /// the end of stream (Envoy's codec has not delivered the request's end by then: the
    /// reply closes an HTTP/1.1 connection).
    Reply(LocalReply, bool),
    TooLarge,
}

type Hook = LocalBoxFuture<'static, (Pass, FrameFlow)>;

/// A body run through the filter chain as it is read: frames queued before it started (read
/// while a filter held the headers), then each frame of `src` through positions `from..` of
/// `pass`. The hooks run inline when the codec polls the body (no task, no channel): a small
/// body that arrived with the headers goes through the filters and out in the same write as
/// the headers, and a slow reader slows the source down (backpressure). A local reply or
/// overflow is reported through `on_stop`, then the body ends with an error (which resets
/// whatever reads it).
pub(crate) struct FilterBody<B> {
    pending: VecDeque<Frame<Bytes>>,
    src: Option<B>,
    stream: Rc<super::local_lock::LocalLock<Stream>>,
    pass: Option<Pass>,
    from: usize,
    on_stop: Option<Box<dyn FnOnce(PumpStop)>>,
    hook: Option<Hook>,
    /// The source gave its last frame.
    src_ended: bool,
    /// A frame read right after the one in the hooks (at most one).
    ahead: Option<Result<Frame<Bytes>, BoxError>>,
    /// The source ended right after the frame in the hooks: its end of stream goes through
    /// the hooks before that frame goes out (a codec that wrote a `content-length` body
    /// stops reading it at its last byte).
    end_due: bool,
    /// Nothing more will come out of the hooks.
    done: bool,
    /// The frame in the hooks is the end of stream.
    hook_end: bool,
    /// The hooks had to wait for that frame (a filter paused it).
    hook_waited: bool,
    /// A response that a filter ended after its headers went out: the error that resets it,
    /// held for one poll so the codec writes what it has first.
    reset: Option<BoxError>,
    /// The first frame carries the end of stream when the end is already there (no separate
    /// empty end callback): what a filter holding the headers made Envoy buffer.
    merge_end: bool,
}

impl<B> FilterBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// The body; `src: None` for a body that is all in `pending`.
    pub(crate) fn new(
        pending: Vec<Frame<Bytes>>,
        src: Option<B>,
        stream: Rc<super::local_lock::LocalLock<Stream>>,
        pass: Pass,
        from: usize,
    ) -> Self {
        let done = src.is_none();
        Self {
            pending: pending
                .into_iter()
                .filter(|f| f.data_ref().is_none_or(|d| !d.is_empty()))
                .collect(),
            src,
            stream,
            pass: Some(pass),
            from,
            on_stop: None,
            hook: None,
            src_ended: done,
            ahead: None,
            end_due: false,
            done,
            hook_end: false,
            hook_waited: false,
            reset: None,
            merge_end: false,
        }
    }

    /// The body arrived while a filter held the headers: Envoy buffered it, end of stream
    /// included, and the next filters get it in one callback with `end_of_stream` set (not the
    /// HTTP/1.1 codec's separate empty end).
    pub(crate) fn buffered_while_held(mut self, yes: bool) -> Self {
        self.merge_end = yes;
        self
    }

    /// Tells `on_stop` how the body ended when a filter ends it.
    pub(crate) fn on_stop(mut self, f: Box<dyn FnOnce(PumpStop)>) -> Self {
        self.on_stop = Some(f);
        self
    }

    pub(crate) fn boxed(self) -> Body {
        Box::pin(self)
    }

    fn run_hooks(&mut self, fr: Frame<Bytes>, end: bool) {
        let Some(mut pass) = self.pass.take() else {
            return;
        };
        let stream = Rc::clone(&self.stream);
        let from = self.from;
        self.hook_end = end;
        self.hook_waited = false;
        self.hook = Some(Box::pin(async move {
            let flow = {
                let mut st = stream.lock().await;
                let to = pass.len();
                frame(&mut st, &mut pass, from, to, fr, end).await
            };
            (pass, flow)
        }));
    }

    fn stop(&mut self, why: PumpStop) -> BoxError {
        self.done = true;
        self.src = None;
        let msg = match why {
            PumpStop::Reply(..) => "stream ended by a filter",
            PumpStop::TooLarge => "buffer limit exceeded",
        };
        if let Some(f) = self.on_stop.take() {
            f(why);
        }
        msg.into()
    }
}

impl<B> http_body::Body for FilterBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(e) = this.reset.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if this.hook.is_none() && this.end_due {
                this.end_due = false;
                this.src_ended = true;
                this.run_hooks(Frame::data(Bytes::new()), true);
            }
            if this.hook.is_none()
                && let Some(f) = this.pending.pop_front()
            {
                // Empty data frames (an end-of-stream marker from the hooks) are not sent:
                // the end of the body is the end of the stream.
                return Poll::Ready(Some(Ok(f)));
            }
            if let Some(hook) = this.hook.as_mut() {
                let Poll::Ready((pass, flow)) = hook.as_mut().poll(cx) else {
                    this.hook_waited = true;
                    return Poll::Pending;
                };
                this.hook = None;
                this.pass = Some(pass);
                match flow {
                    FrameFlow::Out(frames) => this.pending.extend(
                        frames
                            .into_iter()
                            .filter(|f| f.data_ref().is_none_or(|d| !d.is_empty())),
                    ),
                    FrameFlow::Reply(r) => {
                        let at_end = this.hook_end || this.hook_waited;
                        let e = this.stop(PumpStop::Reply(r, at_end));
                        if this.pass.as_ref().is_some_and(|p| p.dir == Dir::Response) {
                            // The response headers went out already: like Envoy, the client
                            // gets them, then the stream is reset (the reply cannot be sent).
                            // Pending once lets the codec flush them before the error (h2 too:
                            // a reset in the same poll would drop the queued HEADERS, while
                            // Envoy sends HEADERS, then RST_STREAM).
                            this.reset = Some(e);
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        return Poll::Ready(Some(Err(e)));
                    }
                    FrameFlow::TooLarge => {
                        return Poll::Ready(Some(Err(this.stop(PumpStop::TooLarge))));
                    }
                }
                if this.src_ended && !this.end_due {
                    this.done = true;
                }
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            let Some(src) = this.src.as_mut() else {
                // The source ended without saying so on its last frame: the hooks still get
                // their end of stream.
                this.src_ended = true;
                this.run_hooks(Frame::data(Bytes::new()), true);
                continue;
            };
            let next = match this.ahead.take() {
                Some(r) => Some(r),
                None => std::task::ready!(Pin::new(&mut *src).poll_frame(cx))
                    .map(|r| r.map_err(Into::into)),
            };
            match next {
                Some(Ok(f)) => {
                    let mut end = f.is_trailers() || src.is_end_stream();
                    let merge_end = std::mem::take(&mut this.merge_end);
                    if end {
                        this.src = None;
                        this.src_ended = true;
                    } else {
                        // One frame of look-ahead: an end that is already there runs through
                        // the hooks before this frame is handed on.
                        match Pin::new(&mut *src).poll_frame(cx) {
                            Poll::Ready(None) if merge_end && f.is_data() => {
                                this.src = None;
                                this.src_ended = true;
                                end = true;
                            }
                            Poll::Ready(None) => {
                                this.src = None;
                                this.end_due = true;
                            }
                            Poll::Ready(Some(r)) => this.ahead = Some(r.map_err(Into::into)),
                            Poll::Pending => {}
                        }
                    }
                    this.run_hooks(f, end);
                }
                Some(Err(e)) => {
                    this.done = true;
                    this.src = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.src = None;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty() && self.hook.is_none()
    }
}
