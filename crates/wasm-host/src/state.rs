//! Per-VM state living in the wasmtime `Store`: contexts, the buffers and maps each callback
//! may touch, queued side effects, limits.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use crate::abi::{AbiVersion, StreamType};
use crate::headers::HeaderMap;
use crate::host::{Host, HttpCallResponse};
use crate::metrics::Metric;
use crate::plugin::Plugin;
use crate::properties::StreamProperties;

/// Context ids are small sequential integers: hashing them with SipHash costs more than the
/// rest of a host call, so the context table uses them as their own hash.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// A side effect a plugin asked for, carried out by the proxy after the VM call returns
/// (as cpp-host defers them).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// `proxy_continue_stream` (or 0.1.0 `proxy_continue_request/response`).
    Continue { context_id: u32, stream: StreamType },
    /// `proxy_close_stream`: reset the HTTP stream, or close a connection.
    Close { context_id: u32, stream: StreamType },
    /// `proxy_send_local_response`.
    LocalReply { context_id: u32, reply: LocalReply },
    /// Route must be re-selected (0.1.0 `proxy_clear_route_cache` or the foreign function).
    ClearRouteCache { context_id: u32 },
    /// The `set_envoy_filter_state` foreign function: a stream filter-state object Envoy
    /// knows by `key` (e.g. `envoy.tcp_proxy.cluster`), made from `value`.
    FilterState {
        context_id: u32,
        key: String,
        value: String,
    },
}

impl Effect {
    /// The context the effect is for.
    pub fn context_id(&self) -> u32 {
        match self {
            Effect::Continue { context_id, .. }
            | Effect::Close { context_id, .. }
            | Effect::LocalReply { context_id, .. }
            | Effect::ClearRouteCache { context_id }
            | Effect::FilterState { context_id, .. } => *context_id,
        }
    }
}

/// A local reply a plugin sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Response code details, whitespace replaced by `_` as Envoy does.
    pub details: String,
    pub body: Vec<u8>,
    /// Additional headers, keys lower-cased.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// `None` when the plugin passed -1 (not gRPC).
    pub grpc_status: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContextKind {
    Root,
    Http,
    Tcp,
}

pub(crate) struct Context {
    pub(crate) kind: ContextKind,
    pub(crate) root: u32,
    /// Request headers/trailers, response headers/trailers.
    pub(crate) maps: [Option<HeaderMap>; 4],
    /// Whether the plugin changed each map since it was set.
    pub(crate) maps_modified: [bool; 4],
    /// Maps to ask `props` for when the plugin first reads them.
    pub(crate) maps_lazy: [bool; 4],
    /// Maps the proxy took back after their callback continued: no longer readable or
    /// writable (Envoy forgets a headers map once its callback returns Continue).
    pub(crate) maps_released: [bool; 4],
    /// In `on_log` (and the callbacks after it): a map that is not there is reported as
    /// NotFound instead of BadArgument (Envoy's access-log phase).
    pub(crate) logging: bool,
    /// Request body, response body, downstream data, upstream data.
    pub(crate) buffers: [Option<Vec<u8>>; 4],
    /// Whether the plugin changed each buffer since it was set.
    pub(crate) buffers_modified: [bool; 4],
    pub(crate) props: Box<dyn StreamProperties>,
    /// Values set with `proxy_set_property` (Envoy: filter state `wasm.<path>`).
    pub(crate) filter_state: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Context {
    pub(crate) fn new(kind: ContextKind, root: u32, props: Box<dyn StreamProperties>) -> Self {
        Self {
            kind,
            root,
            maps: Default::default(),
            maps_modified: [false; 4],
            maps_lazy: [false; 4],
            maps_released: [false; 4],
            logging: false,
            buffers: Default::default(),
            buffers_modified: [false; 4],
            props,
            filter_state: Vec::new(),
        }
    }
}

/// Which configuration buffer is readable now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `_initialize` / `main` / `_start`: only logging and WASI.
    Startup,
    VmStart,
    Configure,
    Running,
}

/// Data readable only during one callback (call responses, gRPC messages, foreign args).
#[derive(Default)]
pub(crate) struct CallData {
    pub(crate) http_response: Option<HttpCallResponse>,
    pub(crate) grpc_metadata: Option<HeaderMap>,
    pub(crate) grpc_message: Option<Vec<u8>>,
    pub(crate) foreign_args: Option<Vec<u8>>,
}

/// Memory limiter that remembers why growth was refused.
pub(crate) struct Limiter {
    pub(crate) max_memory: usize,
    pub(crate) memory_exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory || maximum.is_some_and(|m| desired > m) {
            self.memory_exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The store's data.
pub struct VmState {
    /// The plugin the VM was made for: its module, `vm_id`, VM configuration and limits are
    /// every plugin's in the VM (Envoy shares a VM between plugins whose vm_id, VM
    /// configuration and code are the same).
    pub(crate) plugin: Arc<Plugin>,
    /// Each root context's plugin (its name, root_id and configuration).
    pub(crate) roots: IdMap<Arc<Plugin>>,
    pub(crate) abi: AbiVersion,
    pub(crate) host: Box<dyn Host>,
    pub(crate) limiter: Limiter,
    pub(crate) memory: Option<Memory>,
    pub(crate) allocator: Option<std::sync::Arc<TypedFunc<i32, i32>>>,
    pub(crate) contexts: IdMap<Context>,
    pub(crate) next_context_id: u32,
    pub(crate) current: u32,
    pub(crate) effective: Option<u32>,
    pub(crate) phase: Phase,
    pub(crate) call: CallData,
    pub(crate) effects: Vec<Effect>,
    pub(crate) next_token: u32,
    /// Outstanding HTTP/gRPC call tokens and the root context that owns each.
    pub(crate) calls: HashMap<u32, u32>,
    /// Tick period per root context (Envoy keeps one timer per root context).
    pub(crate) tick_period_ms: IdMap<u32>,
    /// Last call status for `proxy_get_status`.
    pub(crate) status: (u32, Vec<u8>),
    pub(crate) metric_cache: HashMap<u32, Arc<Metric>>,
    /// Set when the guest called `proc_exit`.
    pub(crate) exited: Option<i32>,
    /// Roots whose `on_done` returned false, waiting for `proxy_done`.
    pub(crate) pending_done: Vec<u32>,
    /// Expressions made with the `expr_create` foreign function.
    pub(crate) expressions: crate::expr::Expressions,
}

impl VmState {
    pub(crate) fn new(plugin: Arc<Plugin>, host: Box<dyn Host>) -> Self {
        let abi = plugin.module.abi();
        let max_memory = plugin.config.limits.max_memory_bytes;
        Self {
            plugin,
            roots: IdMap::default(),
            abi,
            host,
            limiter: Limiter {
                max_memory,
                memory_exceeded: false,
            },
            memory: None,
            allocator: None,
            contexts: IdMap::default(),
            next_context_id: 1,
            current: 0,
            effective: None,
            phase: Phase::Startup,
            call: CallData::default(),
            effects: Vec::new(),
            next_token: 0,
            calls: HashMap::new(),
            tick_period_ms: IdMap::default(),
            status: (0, Vec::new()),
            metric_cache: HashMap::new(),
            exited: None,
            pending_done: Vec::new(),
            expressions: Default::default(),
        }
    }

    /// The context host calls act on: the effective one if set and alive, else the current.
    pub(crate) fn context_id(&self) -> u32 {
        match self.effective {
            Some(id) if self.contexts.contains_key(&id) => id,
            _ => self.current,
        }
    }

    pub(crate) fn context(&self) -> Option<&Context> {
        self.contexts.get(&self.context_id())
    }

    pub(crate) fn context_mut(&mut self) -> Option<&mut Context> {
        let id = self.context_id();
        self.contexts.get_mut(&id)
    }

    /// Builds the current context's lazy maps (before a host call reads or edits a map).
    pub(crate) fn materialize_maps(&mut self) {
        let Some(ctx) = self.context_mut() else {
            return;
        };
        for slot in 0..4 {
            if std::mem::take(&mut ctx.maps_lazy[slot]) {
                ctx.maps[slot] = ctx.props.headers(crate::MapType::of_stream_slot(slot));
            }
        }
    }

    pub(crate) fn root_of_current(&self) -> u32 {
        self.context().map(|c| c.root).unwrap_or(self.current)
    }

    /// The plugin of the current context's root (the VM's own outside any context).
    pub(crate) fn current_plugin(&self) -> &Arc<Plugin> {
        self.roots
            .get(&self.root_of_current())
            .unwrap_or(&self.plugin)
    }

    /// Envoy's log prefix for a line from the current context: the root prefix in a root
    /// context (or outside any), the plugin's in a stream context.
    pub(crate) fn log_prefix(&self) -> String {
        let cfg = &self.current_plugin().config;
        let id = self.context_id();
        if self.roots.contains_key(&id) || !self.contexts.contains_key(&id) {
            cfg.root_log_prefix()
        } else {
            cfg.log_prefix()
        }
    }

    pub(crate) fn plugin_name(&self) -> &str {
        &self.current_plugin().config.name
    }
}
