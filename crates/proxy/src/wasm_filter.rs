//! The proxy-wasm HTTP filter (`envoy.filters.http.wasm`): runs a plugin on each stream with
//! Envoy's semantics. Each worker has its own VM of the plugin ([`worker`]); the module is
//! compiled once, at config time. A plugin that pauses a stream (a callout, a queue, a timer)
//! suspends that stream's task until the plugin resumes, answers or closes it. When the VM
//! fails (trap, CPU deadline, memory cap) the stream gets the plugin's failure policy:
//! FAIL_CLOSED replies 503 `wasm_fail_stream`, FAIL_OPEN skips the plugin, FAIL_RELOAD starts
//! a new VM (with backoff) for later streams.

mod convert;
pub(crate) use convert::MissingStatus;
mod grpc;
mod network;
pub(crate) mod plugin_config;
mod props;
mod remote_code;
mod stats;
mod worker;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm as PbWasm;
use http::{HeaderName, HeaderValue, StatusCode};
use prost::Message;
use wasm_host::{
    BufferType, DataAction, Effect, FilterAction, HeadersAction, MapType, Plugin, StreamType,
};

use crate::config::ConfigError;
use crate::filter::{
    BuildContext, DataStatus, FilterCx, HeadersStatus, HttpFilter, HttpFilterConfig,
    LocalBoxFuture, LocalReply, Registry, StreamInfo, TrailersStatus, WASM_HTTP_TYPE_URL,
    WorkerContext,
};

pub use plugin_config::{runtime, set_compiler, set_default_fail_reload};
use props::{Facts, StreamProps};
use worker::{PluginRef, Unavailable};

/// Registers the HTTP and network Wasm filters.
pub fn register(registry: &mut Registry) {
    registry.register_http(WASM_HTTP_TYPE_URL, Arc::new(build_http));
    network::register(registry);
}

fn decode_error(cx: &BuildContext, e: prost::DecodeError) -> ConfigError {
    ConfigError::Invalid {
        path: format!("{}.typed_config", cx.field_path),
        reason: format!("not a Wasm filter config: {e}"),
    }
}

/// Live filter configs by (typed_config bytes, node id, clusters, stats store): a rebuilt config
/// (an xDS update to anything) reuses an unchanged plugin with its VMs and their state instead of
/// restarting it. The store keeps another proxy in the same process (tests, `wasmesh up`) from
/// taking this one's plugin, whose metrics are registered in this one's store only.
fn reuse(any: &crate::pb::Any, cx: &BuildContext) -> (u64, Option<Arc<WasmFilterConfig>>) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.value.hash(&mut h);
    cx.node.id.hash(&mut h);
    cx.cluster_names.hash(&mut h);
    cx.stats.id().hash(&mut h);
    let key = h.finish();
    let cache = LIVE.get_or_init(Default::default);
    let mut g = cache.lock().unwrap_or_else(|e| e.into_inner());
    g.retain(|_, w| w.strong_count() > 0);
    (key, g.get(&key).and_then(std::sync::Weak::upgrade))
}

type LiveConfigs =
    std::sync::Mutex<std::collections::HashMap<u64, std::sync::Weak<WasmFilterConfig>>>;
static LIVE: std::sync::OnceLock<LiveConfigs> = std::sync::OnceLock::new();
static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

fn build_http(
    any: &crate::pb::Any,
    cx: &BuildContext,
) -> Result<Arc<dyn HttpFilterConfig>, ConfigError> {
    let (key, live) = reuse(any, cx);
    if let Some(live) = live {
        return Ok(live);
    }
    let pb = PbWasm::decode(&*any.value).map_err(|e| decode_error(cx, e))?;
    // Envoy loads remote code after start-up: a module it cannot fetch, or cannot start,
    // leaves the filter in place with the plugin unloaded, and its failure policy decides
    // each stream (local code that fails is a config error, in both).
    let unloaded = |pc: &envoy_types::pb::envoy::extensions::wasm::v3::PluginConfig,
                    reason: &dyn std::fmt::Display|
     -> Arc<dyn HttpFilterConfig> {
        let fail_open = plugin_config::failure_policy(pc) == wasm_host::FailurePolicy::FailOpen;
        tracing::error!(target: "wasm", plugin = %pc.name, %reason, "Plugin {} failed to load", pc.name);
        Arc::new(Unloaded { fail_open })
    };
    let remote = match &pb.config {
        Some(pc) => match plugin_config::prefetch_remote(pc, cx) {
            Ok(remote) => remote,
            Err(reason) => return Ok(unloaded(pc, &reason)),
        },
        None => false,
    };
    let stop_iteration = pb
        .config
        .as_ref()
        .is_some_and(|pc| pc.allow_on_headers_stop_iteration.is_some_and(|b| b.value));
    match new_config(key, pb.config.clone(), cx, stop_iteration) {
        Ok(c) => Ok(c),
        Err(e) if remote => match &pb.config {
            Some(pc) => Ok(unloaded(pc, &e)),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// A plugin whose remote code could not be loaded: FAIL_OPEN skips it, any other policy
/// answers every stream 503 (Envoy's fail-stream filter).
struct Unloaded {
    fail_open: bool,
}

impl HttpFilterConfig for Unloaded {
    fn create_filter(&self, _worker: &WorkerContext) -> Box<dyn HttpFilter> {
        Box::new(UnloadedFilter(self.fail_open))
    }

    fn uses_bodies(&self) -> bool {
        false
    }
}

struct UnloadedFilter(bool);

impl HttpFilter for UnloadedFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        _cx: &'a mut FilterCx,
        _headers: &'a mut http::request::Parts,
        _end_stream: bool,
    ) -> LocalBoxFuture<'a, HeadersStatus> {
        let status = if self.0 {
            HeadersStatus::Continue
        } else {
            HeadersStatus::LocalReply(fail_stream())
        };
        Box::pin(std::future::ready(status))
    }
}

/// A `envoy.bootstrap.wasm` bootstrap extension (`WasmService`): a plugin that has only its
/// root context (timers, queues, callouts), started on the main thread when `singleton`, else
/// on every worker. Returns the config (started by [`HttpFilterConfig::warm`]) and
/// `singleton`.
pub fn build_service(
    any: &crate::pb::Any,
    cx: &BuildContext,
) -> Result<(Arc<dyn HttpFilterConfig>, bool), ConfigError> {
    use envoy_types::pb::envoy::extensions::wasm::v3::WasmService;
    let pb = WasmService::decode(&*any.value).map_err(|e| decode_error(cx, e))?;
    // Unchanged across config rebuilds (an xDS update): the same running service.
    let (key, live) = reuse(any, cx);
    if let Some(live) = live {
        return Ok((live, pb.singleton));
    }
    Ok((new_config(key, pb.config, cx, false)?, pb.singleton))
}

/// Builds a plugin config and registers it as live under `key` (see [`reuse`]).
fn new_config(
    key: u64,
    pc: Option<envoy_types::pb::envoy::extensions::wasm::v3::PluginConfig>,
    cx: &BuildContext,
    stop_iteration: bool,
) -> Result<Arc<WasmFilterConfig>, ConfigError> {
    let Some(pc) = pc else {
        return Err(ConfigError::Invalid {
            path: format!("{}.typed_config.config", cx.field_path),
            reason: "missing".into(),
        });
    };
    let slot = PluginSlot::new(&pc, cx)?;
    let plugin = &slot.plugin;
    tracing::info!(plugin = %plugin.config().name, sha256 = %plugin.module().sha256(), abi = %plugin.module().abi(), "wasm plugin loaded");
    let config = Arc::new(WasmFilterConfig {
        slot,
        stop_iteration,
        continue_on_failure: plugin_config::legacy_fail_open(&pc),
    });
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, Arc::downgrade(&config));
    Ok(config)
}

/// What a filter config (HTTP or network) keeps to find its plugin in each thread's VM.
pub(crate) struct PluginSlot {
    plugin: Arc<Plugin>,
    clusters: Arc<[String]>,
    backoff: wasm_host::Backoff,
    /// Unique per config (a pointer could be reused).
    id: usize,
    /// Dropped with the config: the plugin leaves each thread's VM.
    alive: Arc<()>,
}

impl PluginSlot {
    /// Builds the plugin of `pc` (compiling its module) and registers its stats.
    fn new(
        pc: &envoy_types::pb::envoy::extensions::wasm::v3::PluginConfig,
        cx: &BuildContext,
    ) -> Result<Self, ConfigError> {
        let plugin = plugin_config::build_plugin(pc, cx)?;
        let runtime = match &pc.vm {
            Some(envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm::VmConfig(v)) => {
                v.runtime.as_str()
            }
            _ => "",
        };
        stats::register(&cx.stats, &plugin, runtime);
        Ok(Self {
            plugin,
            clusters: cx.cluster_names.clone(),
            backoff: plugin_config::reload_backoff(pc),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            alive: Arc::new(()),
        })
    }

    /// The plugin's place in `worker`'s VM (joining or starting it the first time): one slot
    /// lookup per stream, as the VM's own key is only hashed when the plugin joins.
    fn join(&self, worker: &WorkerContext) -> PluginRef {
        let r: Rc<PluginRef> = worker.slot(self.id, || {
            PluginRef::join(
                self.plugin.clone(),
                worker,
                self.clusters.clone(),
                self.backoff.clone(),
                Arc::downgrade(&self.alive),
                self.id,
            )
        });
        (*r).clone()
    }
}

/// `envoy.access_loggers.wasm`'s config type.
pub(crate) const WASM_ACCESS_LOG_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.wasm.v3.WasmAccessLog";

/// Envoy's Wasm access logger: a plugin whose root context gets `proxy_on_log` for each
/// finished stream, with the stream's properties and headers readable.
struct WasmAccessLog {
    slot: PluginSlot,
}

/// Builds a Wasm access logger from its `typed_config`.
pub(crate) fn build_access_log(
    any: &crate::pb::Any,
    cx: &BuildContext,
) -> Result<Arc<dyn crate::access_log::PluginLog>, ConfigError> {
    use envoy_types::pb::envoy::extensions::access_loggers::wasm::v3::WasmAccessLog as Pb;
    let pb = Pb::decode(&*any.value).map_err(|e| decode_error(cx, e))?;
    let Some(pc) = pb.config else {
        return Err(ConfigError::Invalid {
            path: format!("{}.config", cx.field_path),
            reason: "missing".into(),
        });
    };
    Ok(Arc::new(WasmAccessLog {
        slot: PluginSlot::new(&pc, cx)?,
    }))
}

impl crate::access_log::PluginLog for WasmAccessLog {
    fn warm(&self, worker: &WorkerContext) {
        let _ = self.slot.join(worker);
    }

    fn log(&self, info: &StreamInfo, worker: &WorkerContext) {
        let vm = self.slot.join(worker);
        let Ok(root) = vm.ensure_ready() else { return };
        let facts = Rc::new(RefCell::new(Facts::default()));
        facts.borrow_mut().refresh(info);
        facts.borrow_mut().wasm_state.clone_from(&info.wasm_state);
        let props = Box::new(StreamProps(facts));
        if let Some(Err(e)) = vm.with_vm(|v| v.log_on_root(root, props)) {
            tracing::debug!(plugin = %self.slot.plugin.config().name, error = %e, "access log plugin failed");
        }
        let effects = vm.with_vm(|v| v.take_effects()).unwrap_or_default();
        if !effects.is_empty() {
            vm.route(effects);
        }
    }
}

/// A configured Wasm HTTP filter.
pub struct WasmFilterConfig {
    slot: PluginSlot,
    /// `allow_on_headers_stop_iteration`: a Pause from a headers callback is Envoy's
    /// `StopIteration` (the body still reaches the plugin) instead of the default
    /// `StopAllIterationAndWatermark` (the stream waits until the plugin resumes it).
    stop_iteration: bool,
    /// The deprecated `fail_open: true`: a stream whose plugin call fails goes on without the
    /// plugin (Envoy hands the flag to proxy-wasm's `fail_open_`); `failure_policy` FAIL_OPEN
    /// still fails that stream with 503 and skips the plugin from the next one.
    continue_on_failure: bool,
}

impl WasmFilterConfig {
    fn worker_vm(&self, worker: &WorkerContext) -> PluginRef {
        self.slot.join(worker)
    }
}

impl HttpFilterConfig for WasmFilterConfig {
    fn warm(&self, worker: &WorkerContext) {
        let _ = self.worker_vm(worker);
    }

    fn create_filter(&self, worker: &WorkerContext) -> Box<dyn HttpFilter> {
        Box::new(WasmFilter {
            vm: self.worker_vm(worker),
            ctx: None,
            skip: false,
            unavailable: None,
            stop_iteration: self.stop_iteration,
            continue_on_failure: self.continue_on_failure,
            facts: Rc::new(RefCell::new(Facts::default())),
        })
    }
}

/// The plugin on one stream.
struct WasmFilter {
    vm: PluginRef,
    /// Context id and the VM generation it lives in.
    ctx: Option<(u32, u64)>,
    /// FAIL_OPEN after a failure: the plugin is skipped for the rest of the stream.
    skip: bool,
    /// The VM could not be used when the stream first asked: the same answer for the rest of
    /// the stream (Envoy decides once, when it creates the stream's context).
    unavailable: Option<Unavailable>,
    /// See [`WasmFilterConfig::stop_iteration`].
    stop_iteration: bool,
    /// See [`WasmFilterConfig::continue_on_failure`].
    continue_on_failure: bool,
    facts: Rc<RefCell<Facts>>,
}

/// What a hook does after the plugin ran.
enum Outcome {
    Continue,
    Reply(LocalReply),
    /// The plugin paused the headers under `allow_on_headers_stop_iteration`, with a body to
    /// come and no call dispatched: they stay held while the body flows through the plugin
    /// (Envoy's `StopIteration`); a body or trailers callback returning Continue releases them.
    Held,
}

fn fail_stream() -> LocalReply {
    LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::new(),
        "wasm_fail_stream",
    )
}

fn convert_reply(r: wasm_host::LocalReply) -> LocalReply {
    let status = StatusCode::from_u16(r.status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut reply = LocalReply::new(status, Bytes::from(r.body), r.details);
    for (k, v) in r.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(&k), HeaderValue::from_bytes(&v)) {
            reply.headers.append(k, v);
        }
    }
    // (used only when the request is gRPC; Envoy ignores it otherwise)
    reply.grpc_status = r.grpc_status;
    reply
}

impl WasmFilter {
    /// The stream's context in the live VM, creating it on first use.
    fn context(&mut self, cx: &mut FilterCx) -> Result<u32, Unavailable> {
        if self.skip {
            return Err(Unavailable::Skip);
        }
        if let Some((ctx, generation)) = self.ctx {
            if generation == self.vm.generation() && self.vm.with_vm(|_| ()).is_some() {
                self.facts.borrow_mut().refresh(cx.stream_info());
                return Ok(ctx);
            }
            return Err(self.unavailable());
        }
        let state = cx.wasm_state();
        self.create_context(cx.stream_info(), Some(state))
    }

    /// Makes the plugin's stream context (`proxy_on_context_create`).
    fn create_context(
        &mut self,
        info: &StreamInfo,
        wasm_state: Option<crate::filter::WasmState>,
    ) -> Result<u32, Unavailable> {
        if let Some(u) = self.unavailable {
            return Err(u);
        }
        let root = self
            .vm
            .ensure_ready()
            .inspect_err(|u| self.unavailable = Some(*u))?;
        {
            let mut f = self.facts.borrow_mut();
            f.refresh(info);
            f.wasm_state = wasm_state;
        }
        let props = Box::new(StreamProps(self.facts.clone()));
        match self.vm.with_vm(|vm| vm.new_http_context_in(root, props)) {
            Some(Ok(ctx)) => {
                self.ctx = Some((ctx, self.vm.generation()));
                Ok(ctx)
            }
            _ => Err(self.unavailable()),
        }
    }

    fn unavailable(&mut self) -> Unavailable {
        let u = self.vm.unavailable();
        if u == Unavailable::Skip {
            self.skip = true;
        }
        u
    }

    /// The plugin failed while handling this stream: like Envoy, this stream gets 503
    /// `wasm_fail_stream` whatever the policy; the policy decides for the rest of the stream
    /// and for later streams (FAIL_OPEN skips the plugin from then on).
    fn on_fail(&mut self) -> Outcome {
        let _ = self.unavailable();
        if self.continue_on_failure {
            self.skip = true;
            return Outcome::Continue;
        }
        Outcome::Reply(fail_stream())
    }

    /// Handles the effects queued for this stream by the call that just returned, and waits
    /// for the plugin when it paused. Returns how the stream goes on.
    async fn settle(
        &mut self,
        cx: &mut FilterCx,
        ctx: u32,
        stopped: bool,
        stream: StreamType,
        hold: bool,
    ) -> Outcome {
        let mut effects = self.vm.with_vm(|vm| vm.take_effects()).unwrap_or_default();
        let mine: Vec<Effect> = effects
            .iter()
            .filter(|e| e.context_id() == ctx)
            .cloned()
            .collect();
        effects.retain(|e| e.context_id() != ctx);
        if !effects.is_empty() {
            self.vm.route(effects);
        }
        let mut resumed = !stopped;
        let mut pending = mine;
        loop {
            for e in pending.drain(..) {
                match e {
                    Effect::LocalReply { reply, .. } => {
                        return Outcome::Reply(convert_reply(reply));
                    }
                    Effect::ClearRouteCache { .. } => cx.clear_route_cache(),
                    // (no HTTP-level filter-state object is implemented)
                    Effect::FilterState { .. } => {}
                    Effect::Continue { stream: s, .. } if s == stream => resumed = true,
                    Effect::Continue { .. } => {}
                    Effect::Close { .. } => {
                        let r = LocalReply::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            Bytes::new(),
                            "wasm_close_stream",
                        );
                        return Outcome::Reply(r);
                    }
                }
            }
            if resumed {
                return Outcome::Continue;
            }
            if hold {
                return Outcome::Held;
            }
            match self.vm.wait(ctx).await {
                Some(more) => pending = more,
                None => return self.on_fail(),
            }
        }
    }

    fn headers_status(o: Outcome) -> HeadersStatus {
        match o {
            Outcome::Continue => HeadersStatus::Continue,
            Outcome::Reply(r) => HeadersStatus::LocalReply(r),
            Outcome::Held => HeadersStatus::StopIteration,
        }
    }
}

impl Drop for WasmFilter {
    fn drop(&mut self) {
        if let Some((ctx, generation)) = self.ctx.take() {
            self.vm.forget(ctx);
            if generation == self.vm.generation() {
                let _ = self.vm.with_vm(|vm| vm.finish(ctx));
            }
        }
    }
}

impl HttpFilter for WasmFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        cx: &'a mut FilterCx,
        headers: &'a mut http::request::Parts,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, HeadersStatus> {
        Box::pin(async move {
            let map = convert::request_map_on(headers, cx.stream_info().downstream_tls);
            let (status, modified) = self
                .headers(cx, map, end_stream, true, &mut |m| {
                    convert::apply_request(m, headers)
                })
                .await;
            if modified {
                // Envoy clears the route cache when a plugin changes request headers.
                cx.clear_route_cache();
            }
            status
        })
    }

    fn on_request_body<'a>(
        &'a mut self,
        cx: &'a mut FilterCx,
        data: &'a mut Bytes,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, DataStatus> {
        Box::pin(async move { self.body(cx, data, end_stream, true).await })
    }

    fn on_request_trailers<'a>(
        &'a mut self,
        cx: &'a mut FilterCx,
        trailers: &'a mut http::HeaderMap,
    ) -> LocalBoxFuture<'a, TrailersStatus> {
        Box::pin(async move { self.trailers(cx, trailers, true).await })
    }

    fn on_response_headers<'a>(
        &'a mut self,
        cx: &'a mut FilterCx,
        headers: &'a mut http::response::Parts,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, HeadersStatus> {
        Box::pin(async move {
            let map = convert::response_map(headers);
            let apply = &mut |m: &wasm_host::HeaderMap| convert::apply_response(m, headers);
            self.headers(cx, map, end_stream, false, apply).await.0
        })
    }

    fn on_response_body<'a>(
        &'a mut self,
        cx: &'a mut FilterCx,
        data: &'a mut Bytes,
        end_stream: bool,
    ) -> LocalBoxFuture<'a, DataStatus> {
        Box::pin(async move { self.body(cx, data, end_stream, false).await })
    }

    fn on_response_trailers<'a>(
        &'a mut self,
        cx: &'a mut FilterCx,
        trailers: &'a mut http::HeaderMap,
    ) -> LocalBoxFuture<'a, TrailersStatus> {
        Box::pin(async move { self.trailers(cx, trailers, false).await })
    }

    fn on_log(&mut self, info: &StreamInfo) {
        // A plugin the stream never reached (an earlier filter replied, or the codec refused
        // the request) still logs it: Envoy creates the context in its access-log call.
        if self.ctx.is_none()
            && !self.skip
            && self.create_context(info, info.wasm_state.clone()).is_err()
        {
            return;
        }
        let Some((ctx, generation)) = self.ctx.take() else {
            return;
        };
        self.vm.forget(ctx);
        if generation != self.vm.generation() {
            return;
        }
        self.facts.borrow_mut().refresh(info);
        let _ = self.vm.with_vm(|vm| {
            // The stream's final headers, built only if the plugin reads them (most plugins
            // do nothing in on_log).
            if info.request_headers.is_some() {
                let _ = vm.set_map_lazy(ctx, MapType::RequestHeaders);
            }
            if info.response_headers.is_some() {
                let _ = vm.set_map_lazy(ctx, MapType::ResponseHeaders);
            }
            vm.complete(ctx)
        });
    }
}

impl WasmFilter {
    /// Runs a headers callback on `map`, then `apply`s the plugin's edits if it made any;
    /// returns the status and whether it did. A plugin that cannot run fails the request with
    /// 503 (response side: continues, as Envoy skips response callbacks once the failure reply
    /// was sent).
    async fn headers(
        &mut self,
        cx: &mut FilterCx,
        map: wasm_host::HeaderMap,
        end_stream: bool,
        request: bool,
        apply: &mut dyn FnMut(&wasm_host::HeaderMap),
    ) -> (HeadersStatus, bool) {
        let ctx = match self.context(cx) {
            Ok(ctx) => ctx,
            Err(Unavailable::FailStream) if request => {
                return (HeadersStatus::LocalReply(fail_stream()), false);
            }
            Err(_) => return (HeadersStatus::Continue, false),
        };
        let (mt, stream) = if request {
            (MapType::RequestHeaders, StreamType::HttpRequest)
        } else {
            (MapType::ResponseHeaders, StreamType::HttpResponse)
        };
        let res = self.vm.with_vm(|vm| {
            vm.set_map(ctx, mt, map)?;
            let calls = vm.pending_calls();
            let action = if request {
                vm.on_request_headers(ctx, end_stream)
            } else {
                vm.on_response_headers(ctx, end_stream)
            }?;
            Ok::<_, wasm_host::Error>((action, vm.pending_calls() > calls))
        });
        let (action, dispatched) = match res {
            Some(Ok(a)) => a,
            _ => return (Self::headers_status(self.on_fail()), false),
        };
        // By default a Pause stops the whole stream until the plugin resumes it (Envoy turns
        // StopIteration into StopAllIterationAndWatermark). With allow_on_headers_stop_iteration
        // and a body to come, the headers are held while the body flows through the plugin;
        // with a call under way the stream still waits for its answer (Envoy would run the body
        // callbacks meanwhile, and a Continue from them would let the request go before the
        // answer: a documented difference).
        let hold = self.stop_iteration && !end_stream && !dispatched;
        let paused = action != HeadersAction::Continue;
        let outcome = self.settle(cx, ctx, paused, stream, hold).await;
        let applied = self.apply_modified(ctx, mt, apply);
        if !paused {
            // Envoy forgets a headers map whose callback continued: later callbacks get
            // BadArgument for it (one the plugin paused in stays readable).
            self.vm.with_vm(|vm| vm.release_map(ctx, mt));
        }
        (Self::headers_status(outcome), applied)
    }

    /// Applies header edits a plugin made from a body or trailers callback while the headers
    /// are still held (a filter stopped iteration on them), as Envoy does: the edit reaches the
    /// upstream (or the client), and a request edit clears the route cache. Once the headers
    /// went on, such edits change only what later callbacks and `on_log` read (Envoy likewise).
    fn apply_held_headers(&self, cx: &mut FilterCx, ctx: u32, request: bool) {
        if request {
            let Some(parts) = cx.request_headers_mut() else {
                return;
            };
            let apply = &mut |m: &wasm_host::HeaderMap| convert::apply_request(m, parts);
            if self.apply_modified(ctx, MapType::RequestHeaders, apply) {
                cx.clear_route_cache();
            }
        } else if let Some(parts) = cx.response_headers_mut() {
            let apply = &mut |m: &wasm_host::HeaderMap| convert::apply_response(m, parts);
            self.apply_modified(ctx, MapType::ResponseHeaders, apply);
        }
    }

    /// Applies the plugin's edits of a map, if it made any; the map stays in the context as
    /// the plugin left it (later callbacks and `on_log` see it). Says whether it did.
    fn apply_modified(
        &self,
        ctx: u32,
        mt: MapType,
        apply: &mut dyn FnMut(&wasm_host::HeaderMap),
    ) -> bool {
        self.vm
            .with_vm(|vm| {
                if !vm.map_modified(ctx, mt) {
                    return false;
                }
                if let Some(m) = vm.map(ctx, mt) {
                    apply(m);
                }
                vm.map_applied(ctx, mt);
                true
            })
            .unwrap_or(false)
    }

    async fn body(
        &mut self,
        cx: &mut FilterCx,
        data: &mut Bytes,
        end_stream: bool,
        request: bool,
    ) -> DataStatus {
        let ctx = match self.context(cx) {
            Ok(ctx) => ctx,
            Err(Unavailable::Skip) => return DataStatus::Continue,
            Err(Unavailable::FailStream) if request => return DataStatus::LocalReply(fail_stream()),
            Err(Unavailable::FailStream) => return DataStatus::Continue,
        };
        let bt = if request {
            BufferType::HttpRequestBody
        } else {
            BufferType::HttpResponseBody
        };
        let res = self.vm.with_vm(|vm| {
            vm.set_buffer(ctx, bt, data.to_vec())?;
            if request {
                vm.on_request_body(ctx, end_stream)
            } else {
                vm.on_response_body(ctx, end_stream)
            }
        });
        let action = match res {
            Some(Ok(a)) => a,
            _ => {
                return match self.on_fail() {
                    Outcome::Continue | Outcome::Held => DataStatus::Continue,
                    Outcome::Reply(r) => DataStatus::LocalReply(r),
                };
            }
        };
        let stream = if request {
            StreamType::HttpRequest
        } else {
            StreamType::HttpResponse
        };
        let outcome = match action {
            DataAction::Continue => self.settle(cx, ctx, false, stream, false).await,
            DataAction::StopAndBuffer => match self.settle(cx, ctx, false, stream, false).await {
                Outcome::Continue => {
                    let _ = self.vm.with_vm(|vm| vm.take_buffer(ctx, bt));
                    self.apply_held_headers(cx, ctx, request);
                    return DataStatus::StopIterationAndBuffer;
                }
                reply => reply,
            },
            DataAction::StopWatermark | DataAction::StopNoBuffer => {
                self.settle(cx, ctx, true, stream, false).await
            }
        };
        if matches!(outcome, Outcome::Continue) {
            self.apply_held_headers(cx, ctx, request);
        }
        match outcome {
            Outcome::Reply(r) => DataStatus::LocalReply(r),
            Outcome::Continue | Outcome::Held => {
                let edited = self.vm.with_vm(|vm| {
                    let modified = vm.buffer_modified(ctx, bt);
                    vm.take_buffer(ctx, bt).filter(|_| modified)
                });
                if let Some(Some(buf)) = edited {
                    *data = Bytes::from(buf);
                }
                DataStatus::Continue
            }
        }
    }

    async fn trailers(
        &mut self,
        cx: &mut FilterCx,
        trailers: &mut http::HeaderMap,
        request: bool,
    ) -> TrailersStatus {
        let ctx = match self.context(cx) {
            Ok(ctx) => ctx,
            Err(Unavailable::Skip) => return TrailersStatus::Continue,
            Err(Unavailable::FailStream) if request => {
                return TrailersStatus::LocalReply(fail_stream());
            }
            Err(Unavailable::FailStream) => return TrailersStatus::Continue,
        };
        let mt = if request {
            MapType::RequestTrailers
        } else {
            MapType::ResponseTrailers
        };
        let map = convert::trailers_map(trailers);
        let res = self.vm.with_vm(|vm| {
            vm.set_map(ctx, mt, map)?;
            if request {
                vm.on_request_trailers(ctx)
            } else {
                vm.on_response_trailers(ctx)
            }
        });
        let action = match res {
            Some(Ok(a)) => a,
            _ => {
                return match self.on_fail() {
                    Outcome::Continue | Outcome::Held => TrailersStatus::Continue,
                    Outcome::Reply(r) => TrailersStatus::LocalReply(r),
                };
            }
        };
        let stream = if request {
            StreamType::HttpRequest
        } else {
            StreamType::HttpResponse
        };
        let outcome = self
            .settle(cx, ctx, action == FilterAction::Stop, stream, false)
            .await;
        self.apply_modified(ctx, mt, &mut |m| convert::apply_trailers(m, trailers));
        if matches!(outcome, Outcome::Continue) {
            self.apply_held_headers(cx, ctx, request);
        }
        match outcome {
            Outcome::Continue | Outcome::Held => TrailersStatus::Continue,
            Outcome::Reply(r) => TrailersStatus::LocalReply(r),
        }
    }
}
