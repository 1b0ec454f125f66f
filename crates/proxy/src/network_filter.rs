//! The network (L4) filter API: filters that see the raw bytes of a TCP connection in both
//! directions and its closes, in front of a terminal filter (`tcp_proxy`).
//!
//! Downstream data runs through the filters in order, upstream data in reverse order (like
//! Envoy's read and write filter chains). [`NetStatus::StopIteration`] keeps the data in the
//! connection's buffer: later data is appended and the filter is called again with the whole
//! buffer (Envoy's read buffer semantics).

use std::sync::Arc;

use bytes::BytesMut;

use crate::filter::{LocalBoxFuture, StreamInfo, WorkerContext};

/// What the chain does after a network hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetStatus {
    /// Pass the data (or the new connection) on.
    Continue,
    /// Hold the data in the connection buffer; call again with it and what follows.
    StopIteration,
}

/// Who closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseType {
    /// The peer closed (FIN or error).
    Remote,
    /// The proxy closed it (a filter asked, or the other side went away).
    Local,
}

/// Per-connection context handed to every network hook.
pub struct NetworkCx {
    info: StreamInfo,
    worker: WorkerContext,
    close_requested: bool,
}

impl NetworkCx {
    /// Context for one connection (made by the proxy; public for filter tests).
    pub fn new(info: StreamInfo, worker: WorkerContext) -> Self {
        Self {
            info,
            worker,
            close_requested: false,
        }
    }

    /// Addresses, bytes, upstream host and cluster of the connection.
    pub fn stream_info(&self) -> &StreamInfo {
        &self.info
    }

    /// Mutable connection info.
    pub fn stream_info_mut(&mut self) -> &mut StreamInfo {
        self.info.version += 1;
        &mut self.info
    }

    /// The worker this connection runs on.
    pub fn worker(&self) -> &WorkerContext {
        &self.worker
    }

    /// Close both sides of the connection once the current hook returns (data held so far is
    /// dropped).
    pub fn close(&mut self) {
        self.close_requested = true;
    }

    /// Whether a filter asked to close the connection.
    pub fn close_requested(&self) -> bool {
        self.close_requested
    }

    /// Consumes the context, returning the connection info.
    pub fn into_stream_info(self) -> StreamInfo {
        self.info
    }
}

/// One network filter instance on one connection. Every hook defaults to `Continue`.
pub trait NetworkFilter {
    /// A new downstream connection (before the upstream connection is made).
    /// `StopIteration` here is treated as `Continue` (a hook that must wait simply awaits).
    fn on_new_connection<'a>(&'a mut self, cx: &'a mut NetworkCx) -> LocalBoxFuture<'a, NetStatus> {
        let _ = cx;
        Box::pin(std::future::ready(NetStatus::Continue))
    }

    /// Bytes from downstream (the accumulated buffer after `StopIteration`).
    fn on_downstream_data<'a>(
        &'a mut self,
        cx: &'a mut NetworkCx,
        data: &'a mut BytesMut,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, NetStatus> {
        let _ = (cx, data, end_stream);
        Box::pin(std::future::ready(NetStatus::Continue))
    }

    /// Bytes from upstream.
    fn on_upstream_data<'a>(
        &'a mut self,
        cx: &'a mut NetworkCx,
        data: &'a mut BytesMut,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, NetStatus> {
        let _ = (cx, data, end_stream);
        Box::pin(std::future::ready(NetStatus::Continue))
    }

    /// The downstream side closed.
    fn on_downstream_close(&mut self, cx: &mut NetworkCx, close: CloseType) {
        let _ = (cx, close);
    }

    /// The upstream side closed.
    fn on_upstream_close(&mut self, cx: &mut NetworkCx, close: CloseType) {
        let _ = (cx, close);
    }

    /// End of the connection: access logging.
    fn on_log(&mut self, info: &StreamInfo) {
        let _ = info;
    }
}

/// A configured network filter, shared by every worker.
pub trait NetworkFilterConfig: Send + Sync {
    /// A filter instance for one new connection on `worker`.
    fn create_filter(&self, worker: &WorkerContext) -> Box<dyn NetworkFilter>;

    /// Prepares `worker`'s per-worker state when the config is installed
    /// ([`crate::filter::HttpFilterConfig::warm`]). Default: nothing.
    fn warm(&self, worker: &WorkerContext) {
        let _ = worker;
    }

    /// True if the filter only looks at new connections (RBAC): in front of the HTTP connection
    /// manager, the proxy then skips the byte relay that data-level filters need.
    fn connection_only(&self) -> bool {
        false
    }
}

/// A shared network filter config.
pub type SharedNetworkFilterConfig = Arc<dyn NetworkFilterConfig>;
