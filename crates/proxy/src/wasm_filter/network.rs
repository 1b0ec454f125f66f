//! The proxy-wasm network filter (`envoy.filters.network.wasm`): L4 plugins see downstream and
//! upstream bytes and connection closes, and may close the connection.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm as PbWasm;
use prost::Message;
use wasm_host::{BufferType, Effect, FilterAction, PeerType, StreamType};

use super::props::{Facts, StreamProps};
use super::worker::{PluginRef, Unavailable};
use crate::config::ConfigError;
use crate::filter::{BuildContext, LocalBoxFuture, Registry, WASM_NETWORK_TYPE_URL, WorkerContext};
use crate::network_filter::{CloseType, NetStatus, NetworkCx, NetworkFilter, NetworkFilterConfig};

pub(super) fn register(registry: &mut Registry) {
    registry.register_network(WASM_NETWORK_TYPE_URL, Arc::new(build));
}

fn build(
    any: &crate::pb::Any,
    cx: &BuildContext,
) -> Result<Arc<dyn NetworkFilterConfig>, ConfigError> {
    let pb = PbWasm::decode(&*any.value).map_err(|e| super::decode_error(cx, e))?;
    let Some(pc) = pb.config else {
        return Err(ConfigError::Invalid {
            path: format!("{}.typed_config.config", cx.field_path),
            reason: "missing".into(),
        });
    };
    Ok(Arc::new(NetConfig {
        slot: super::PluginSlot::new(&pc, cx)?,
    }))
}

struct NetConfig {
    slot: super::PluginSlot,
}

impl NetConfig {
    fn worker_vm(&self, worker: &WorkerContext) -> PluginRef {
        self.slot.join(worker)
    }
}

impl NetworkFilterConfig for NetConfig {
    fn warm(&self, worker: &WorkerContext) {
        let _ = self.worker_vm(worker);
    }

    fn create_filter(&self, worker: &WorkerContext) -> Box<dyn NetworkFilter> {
        Box::new(NetFilter {
            vm: self.worker_vm(worker),
            ctx: None,
            skip: false,
            facts: Rc::new(RefCell::new(Facts::default())),
        })
    }
}

struct NetFilter {
    vm: PluginRef,
    ctx: Option<(u32, u64)>,
    skip: bool,
    facts: Rc<RefCell<Facts>>,
}

impl NetFilter {
    /// Applies queued effects: a close request closes the connection.
    fn apply(&self, cx: &mut NetworkCx, ctx: u32) {
        let effects = self.vm.with_vm(|vm| vm.take_effects()).unwrap_or_default();
        let (mine, other): (Vec<Effect>, Vec<Effect>) =
            effects.into_iter().partition(|e| e.context_id() == ctx);
        for e in &mine {
            if let Effect::FilterState { key, value, .. } = e
                && key == "envoy.tcp_proxy.cluster"
            {
                cx.stream_info_mut().tcp_proxy_cluster = Some(Arc::from(value.as_str()));
            }
        }
        if mine.iter().any(|e| {
            matches!(
                e,
                Effect::Close {
                    stream: StreamType::Downstream | StreamType::Upstream,
                    ..
                }
            )
        }) {
            cx.close();
        }
        if !other.is_empty() {
            self.vm.route(other);
        }
    }

    fn failed(&mut self, cx: &mut NetworkCx) -> NetStatus {
        match self.vm.unavailable() {
            Unavailable::Skip => {
                self.skip = true;
                NetStatus::Continue
            }
            Unavailable::FailStream => {
                cx.close();
                NetStatus::StopIteration
            }
        }
    }

    fn data(
        &mut self,
        cx: &mut NetworkCx,
        data: &mut BytesMut,
        end_stream: bool,
        downstream: bool,
    ) -> NetStatus {
        if self.skip {
            return NetStatus::Continue;
        }
        let Some((ctx, generation)) = self.ctx else {
            return self.failed(cx);
        };
        if generation != self.vm.generation() {
            return self.failed(cx);
        }
        self.facts.borrow_mut().refresh(cx.stream_info());
        let bt = if downstream {
            BufferType::DownstreamData
        } else {
            BufferType::UpstreamData
        };
        let res = self.vm.with_vm(|vm| {
            vm.set_buffer(ctx, bt, data.to_vec())?;
            if downstream {
                vm.on_downstream_data(ctx, end_stream)
            } else {
                vm.on_upstream_data(ctx, end_stream)
            }
        });
        let action = match res {
            Some(Ok(a)) => a,
            _ => return self.failed(cx),
        };
        self.apply(cx, ctx);
        if let Some(Some(buf)) = self.vm.with_vm(|vm| vm.take_buffer(ctx, bt))
            && buf.as_slice() != &data[..]
        {
            *data = BytesMut::from(&buf[..]);
        }
        match action {
            FilterAction::Continue => NetStatus::Continue,
            FilterAction::Stop => NetStatus::StopIteration,
        }
    }
}

impl NetworkFilter for NetFilter {
    fn on_new_connection<'a>(&'a mut self, cx: &'a mut NetworkCx) -> LocalBoxFuture<'a, NetStatus> {
        Box::pin(async move {
            let root = match self.vm.ensure_ready() {
                Ok(root) => root,
                Err(Unavailable::Skip) => {
                    self.skip = true;
                    return NetStatus::Continue;
                }
                Err(Unavailable::FailStream) => return self.failed(cx),
            };
            self.facts.borrow_mut().refresh(cx.stream_info());
            let props = Box::new(StreamProps(self.facts.clone()));
            match self.vm.with_vm(|vm| vm.new_tcp_context_in(root, props)) {
                Some(Ok((ctx, _))) => {
                    self.ctx = Some((ctx, self.vm.generation()));
                    self.apply(cx, ctx);
                    NetStatus::Continue
                }
                _ => self.failed(cx),
            }
        })
    }

    fn on_downstream_data<'a>(
        &'a mut self,
        cx: &'a mut NetworkCx,
        data: &'a mut BytesMut,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, NetStatus> {
        Box::pin(async move { self.data(cx, data, end_stream, true) })
    }

    fn on_upstream_data<'a>(
        &'a mut self,
        cx: &'a mut NetworkCx,
        data: &'a mut BytesMut,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, NetStatus> {
        Box::pin(async move { self.data(cx, data, end_stream, false) })
    }

    fn on_downstream_close(&mut self, _cx: &mut NetworkCx, close: CloseType) {
        if let Some((ctx, g)) = self.ctx
            && g == self.vm.generation()
        {
            let peer = if close == CloseType::Remote {
                PeerType::Remote
            } else {
                PeerType::Local
            };
            let _ = self.vm.with_vm(|vm| vm.on_downstream_close(ctx, peer));
        }
    }

    fn on_upstream_close(&mut self, _cx: &mut NetworkCx, _close: CloseType) {
        if let Some((ctx, g)) = self.ctx
            && g == self.vm.generation()
        {
            // Envoy only ever reports Unknown for the upstream side.
            let _ = self
                .vm
                .with_vm(|vm| vm.on_upstream_close(ctx, PeerType::Unknown));
        }
    }

    fn on_log(&mut self, info: &crate::filter::StreamInfo) {
        if let Some((ctx, g)) = self.ctx.take()
            && g == self.vm.generation()
        {
            self.facts.borrow_mut().refresh(info);
            let _ = self.vm.with_vm(|vm| vm.complete(ctx));
        }
    }
}

impl Drop for NetFilter {
    fn drop(&mut self) {
        if let Some((ctx, g)) = self.ctx.take()
            && g == self.vm.generation()
        {
            let _ = self.vm.with_vm(|vm| vm.finish(ctx));
        }
    }
}
