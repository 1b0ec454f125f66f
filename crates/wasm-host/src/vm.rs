//! A plugin VM: one wasmtime instance of a plugin on one worker, with its root context and the
//! stream contexts of the requests and connections it serves.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Instance, Store, Trap, TypedFunc, WasmParams, WasmResults};

use crate::abi::{BufferType, DataAction, FilterAction, HeadersAction, MapType, PeerType, Status};
use crate::error::{Error, TrapKind};
use crate::headers::HeaderMap;
use crate::host::{Host, HttpCallResponse};
use crate::imports::ProcExit;
use crate::plugin::{Plugin, PluginStats};
use crate::properties::{NoProperties, StreamProperties};
use crate::state::{Context, ContextKind, Effect, Phase, VmState};

/// An export, shared: cloning a `TypedFunc` clones its `FuncType` (wasmtime's type registry,
/// ~2.5 % of a worker's CPU with three plugins when done per callback); an `Arc` is one increment.
type Export<P, R> = Arc<TypedFunc<P, R>>;
type F1<R> = Option<Export<i32, R>>;
type F2<R> = Option<Export<(i32, i32), R>>;
type F3<R> = Option<Export<(i32, i32, i32), R>>;
type F5<R> = Option<Export<(i32, i32, i32, i32, i32), R>>;

/// `proxy_on_request_headers` has 2 parameters in 0.1.0 and 3 in 0.2.x.
enum HeadersFn {
    V1(Export<(i32, i32), i32>),
    V2(Export<(i32, i32, i32), i32>),
}

#[derive(Default)]
struct Exports {
    on_context_create: F2<()>,
    on_vm_start: F2<i32>,
    on_configure: F2<i32>,
    on_tick: F1<()>,
    on_queue_ready: F2<()>,
    on_done: F1<i32>,
    on_log: F1<()>,
    on_delete: F1<()>,
    on_new_connection: F1<i32>,
    on_downstream_data: F3<i32>,
    on_upstream_data: F3<i32>,
    on_downstream_close: F2<()>,
    on_upstream_close: F2<()>,
    on_request_headers: Option<HeadersFn>,
    on_request_body: F3<i32>,
    on_request_trailers: F2<i32>,
    on_response_headers: Option<HeadersFn>,
    on_response_body: F3<i32>,
    on_response_trailers: F2<i32>,
    on_http_call_response: F5<()>,
    on_grpc_receive: F3<()>,
    on_grpc_close: F3<()>,
    on_foreign_function: F3<()>,
}

fn typed<P: WasmParams, R: WasmResults>(
    store: &mut Store<VmState>,
    inst: &Instance,
    name: &str,
) -> Result<Option<Export<P, R>>, Error> {
    match inst.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| Error::Link {
                plugin: store.data().plugin_name().to_string(),
                reason: format!("export {name} has the wrong signature: {e}"),
            }),
    }
}

fn headers_fn(
    store: &mut Store<VmState>,
    inst: &Instance,
    name: &str,
) -> Result<Option<HeadersFn>, Error> {
    let Some(f) = inst.get_func(&mut *store, name) else {
        return Ok(None);
    };
    // The signature the declared ABI has (Envoy refuses a module whose headers callbacks
    // do not match its `proxy_abi_version_*` export).
    let v010 = store.data().abi == crate::AbiVersion::V0_1_0;
    let found = if v010 {
        f.typed::<(i32, i32), i32>(&*store)
            .map(|t| HeadersFn::V1(Arc::new(t)))
    } else {
        f.typed::<(i32, i32, i32), i32>(&*store)
            .map(|t| HeadersFn::V2(Arc::new(t)))
    };
    found.map(Some).map_err(|_| {
        let want = if v010 { "i32 i32 -> i32" } else { "i32 i32 i32 -> i32" };
        let ty = f.ty(&*store);
        let params: Vec<String> = ty.params().map(|p| p.to_string()).collect();
        let results: Vec<String> = ty.results().map(|r| r.to_string()).collect();
        Error::Link {
            plugin: store.data().plugin_name().to_string(),
            reason: format!(
                "bad function signature for {name}: ABI {} wants {want}, but the module exports {} -> {}",
                store.data().abi,
                params.join(" "),
                results.join(" ")
            ),
        }
    })
}

impl Exports {
    fn resolve(store: &mut Store<VmState>, inst: &Instance) -> Result<Self, Error> {
        Ok(Self {
            on_context_create: typed(store, inst, "proxy_on_context_create")?,
            on_vm_start: typed(store, inst, "proxy_on_vm_start")?,
            on_configure: typed(store, inst, "proxy_on_configure")?,
            on_tick: typed(store, inst, "proxy_on_tick")?,
            on_queue_ready: typed(store, inst, "proxy_on_queue_ready")?,
            on_done: typed(store, inst, "proxy_on_done")?,
            on_log: typed(store, inst, "proxy_on_log")?,
            on_delete: typed(store, inst, "proxy_on_delete")?,
            on_new_connection: typed(store, inst, "proxy_on_new_connection")?,
            on_downstream_data: typed(store, inst, "proxy_on_downstream_data")?,
            on_upstream_data: typed(store, inst, "proxy_on_upstream_data")?,
            on_downstream_close: typed(store, inst, "proxy_on_downstream_connection_close")?,
            on_upstream_close: typed(store, inst, "proxy_on_upstream_connection_close")?,
            on_request_headers: headers_fn(store, inst, "proxy_on_request_headers")?,
            on_request_body: typed(store, inst, "proxy_on_request_body")?,
            on_request_trailers: typed(store, inst, "proxy_on_request_trailers")?,
            on_response_headers: headers_fn(store, inst, "proxy_on_response_headers")?,
            on_response_body: typed(store, inst, "proxy_on_response_body")?,
            on_response_trailers: typed(store, inst, "proxy_on_response_trailers")?,
            on_http_call_response: typed(store, inst, "proxy_on_http_call_response")?,
            on_grpc_receive: typed(store, inst, "proxy_on_grpc_receive")?,
            on_grpc_close: typed(store, inst, "proxy_on_grpc_close")?,
            on_foreign_function: typed(store, inst, "proxy_on_foreign_function")?,
        })
    }
}

/// One running instance of a plugin.
pub struct PluginVm {
    store: Store<VmState>,
    exports: Exports,
    plugin: Arc<Plugin>,
    root: u32,
    failed: Option<TrapKind>,
}

impl Plugin {
    /// Creates a VM: instantiates the module, runs `_initialize`/`_start`, creates the root
    /// context and calls `on_vm_start` and `on_configure`. A `false` from either is
    /// [`Error::Rejected`]; a trap is [`Error::Trap`].
    pub fn instantiate(self: &Arc<Self>, host: Box<dyn Host>) -> Result<PluginVm, Error> {
        let mut vm = self.instantiate_module(host)?;
        vm.start_root(self.clone(), true)?;
        Ok(vm)
    }

    /// Creates a VM with no root context yet: instantiates the module and runs
    /// `_initialize`/`_start`. Plugins then join it with [`PluginVm::add_root`] (Envoy runs
    /// every plugin whose vm_id, VM configuration and code match in one VM per thread).
    pub fn instantiate_module(self: &Arc<Self>, host: Box<dyn Host>) -> Result<PluginVm, Error> {
        PluginStats::bump(&self.stats.vms_created);
        self.stats
            .vms_active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut store = Store::new(&self.runtime.inner.engine, VmState::new(self.clone(), host));
        store.limiter(|s| &mut s.limiter);
        let mut vm = PluginVm {
            exports: Exports::default(),
            plugin: self.clone(),
            root: 0,
            failed: None,
            store,
        };
        vm.set_deadline(self.config.limits.start_deadline);
        let instance = match self.module.pre.instantiate(&mut vm.store) {
            Ok(i) => i,
            Err(e) => return Err(vm.fail("instantiate", e)),
        };
        let memory = instance
            .get_memory(&mut vm.store, "memory")
            .ok_or(Error::NoMemory)?;
        let allocator = typed::<i32, i32>(&mut vm.store, &instance, "proxy_on_memory_allocate")?
            .or(typed::<i32, i32>(&mut vm.store, &instance, "malloc")?)
            .ok_or(Error::NoAllocator)?;
        vm.store.data_mut().memory = Some(memory);
        vm.store.data_mut().allocator = Some(allocator);
        vm.exports = Exports::resolve(&mut vm.store, &instance)?;
        vm.start(&instance)?;
        Ok(vm)
    }
}

impl Drop for PluginVm {
    fn drop(&mut self) {
        // Envoy keeps a failed VM (it is not reloaded) until the plugin is replaced, and its
        // runtime stats go on counting it as active; ours is freed, and counted the same.
        if self.failed.is_some()
            && self.plugin.config.failure_policy != crate::FailurePolicy::FailReload
        {
            return;
        }
        self.plugin
            .stats
            .vms_active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl PluginVm {
    fn start(&mut self, instance: &Instance) -> Result<(), Error> {
        let init = typed::<(), ()>(&mut self.store, instance, "_initialize")?;
        if let Some(init) = init {
            self.call("_initialize", &init, 0, ())?;
            if let Some(main) = typed::<(i32, i32), i32>(&mut self.store, instance, "main")? {
                self.call("main", &main, 0, (0, 0))?;
            } else if let Some(main) = typed::<(), i32>(&mut self.store, instance, "__main_void")? {
                self.call("__main_void", &main, 0, ())?;
            }
        } else if let Some(start) = typed::<(), ()>(&mut self.store, instance, "_start")? {
            self.call("_start", &start, 0, ())?;
        }
        Ok(())
    }

    /// Starts another plugin in this VM: a new root context (the next context id), then
    /// `proxy_on_context_create`, `proxy_on_vm_start` and `proxy_on_configure` on it with the
    /// plugin's configuration, as Envoy starts each plugin that shares a VM. Returns its root
    /// context id. A `false` from either callback is [`Error::Rejected`] and leaves the VM
    /// (and its other plugins) running; a trap fails the VM.
    pub fn add_root(&mut self, plugin: Arc<Plugin>) -> Result<u32, Error> {
        self.start_root(plugin, false)
    }

    /// Starts a root context for `plugin`; a rejection fails the VM when `only` (the VM was
    /// made for this one plugin).
    fn start_root(&mut self, plugin: Arc<Plugin>, only: bool) -> Result<u32, Error> {
        let (vm_len, cfg_len) = (
            self.plugin.config.vm_configuration.len() as i32,
            plugin.config.configuration.len() as i32,
        );
        let root = self.alloc_context(Context::new(ContextKind::Root, 0, Box::new(NoProperties)));
        let state = self.store.data_mut();
        if let Some(c) = state.contexts.get_mut(&root) {
            c.root = root;
        }
        state.roots.insert(root, plugin);
        if self.root == 0 {
            self.root = root;
        }
        let started = self.start_callbacks(root, vm_len, cfg_len);
        self.store.data_mut().phase = Phase::Running;
        self.set_deadline(self.plugin.config.limits.callback_deadline);
        match started {
            Ok(()) => Ok(root),
            Err(e) => {
                if let Error::Rejected { .. } = e {
                    if only {
                        self.failed = Some(TrapKind::Trap);
                    } else {
                        self.forget_root(root);
                    }
                }
                Err(e)
            }
        }
    }

    fn start_callbacks(&mut self, root: u32, vm_len: i32, cfg_len: i32) -> Result<(), Error> {
        if let Some(f) = self.exports.on_context_create.clone() {
            self.store.data_mut().phase = Phase::Running;
            self.call("proxy_on_context_create", &f, root, (root as i32, 0))?;
        }
        self.store.data_mut().phase = Phase::VmStart;
        if let Some(f) = self.exports.on_vm_start.clone()
            && self.call("proxy_on_vm_start", &f, root, (root as i32, vm_len))? == 0
        {
            return Err(self.rejected(root, "proxy_on_vm_start"));
        }
        self.store.data_mut().phase = Phase::Configure;
        if let Some(f) = self.exports.on_configure.clone()
            && self.call("proxy_on_configure", &f, root, (root as i32, cfg_len))? == 0
        {
            return Err(self.rejected(root, "proxy_on_configure"));
        }
        Ok(())
    }

    /// Drops a root context and everything kept for it.
    fn forget_root(&mut self, root: u32) {
        let state = self.store.data_mut();
        state.contexts.remove(&root);
        state.roots.remove(&root);
        state.tick_period_ms.remove(&root);
        state.effects.retain(|e| e.context_id() != root);
        if self.root == root {
            self.root = self.roots().first().copied().unwrap_or(0);
        }
    }

    fn rejected(&self, root: u32, callback: &'static str) -> Error {
        let plugin = self.store.data().roots.get(&root).unwrap_or(&self.plugin);
        Error::Rejected {
            plugin: plugin.config.name.clone(),
            callback,
        }
    }

    fn set_deadline(&mut self, d: Duration) {
        let tick = self.plugin.runtime.inner.epoch_tick.as_nanos().max(1);
        let ticks = (d.as_nanos() / tick).max(1) as u64 + 1;
        self.store.set_epoch_deadline(ticks);
    }

    fn alloc_context(&mut self, ctx: Context) -> u32 {
        let state = self.store.data_mut();
        let id = state.next_context_id;
        state.next_context_id += 1;
        state.contexts.insert(id, ctx);
        id
    }

    fn fail(&mut self, callback: &'static str, e: wasmtime::Error) -> Error {
        let plugin = self.store.data().current_plugin().clone();
        let stats = &plugin.stats;
        let state = self.store.data_mut();
        let kind = if e.downcast_ref::<ProcExit>().is_some() || state.exited.is_some() {
            TrapKind::Exit
        } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            PluginStats::bump(&stats.deadline_exceeded);
            TrapKind::Deadline
        } else if state.limiter.memory_exceeded {
            PluginStats::bump(&stats.memory_exceeded);
            TrapKind::Memory
        } else {
            TrapKind::Trap
        };
        PluginStats::bump(&stats.traps);
        let reason = match (kind, e.downcast_ref::<Trap>()) {
            (TrapKind::Deadline, _) => format!(
                "exceeded its CPU deadline of {:?} per callback",
                self.plugin.config.limits.callback_deadline
            ),
            (TrapKind::Memory, _) => format!(
                "exceeded its memory limit of {} bytes",
                self.plugin.config.limits.max_memory_bytes
            ),
            (_, Some(trap)) => format!("wasm trap: {trap}"),
            _ => e.to_string(),
        };
        tracing::error!(plugin = %plugin.config.name, callback, reason = %reason, detail = %format!("{e:?}"), "plugin VM failed");
        self.failed = Some(kind);
        Error::Trap {
            plugin: plugin.config.name.clone(),
            callback,
            reason,
            kind,
        }
    }

    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        callback: &'static str,
        f: &TypedFunc<P, R>,
        ctx: u32,
        args: P,
    ) -> Result<R, Error> {
        if self.failed.is_some() {
            return Err(Error::VmFailed {
                plugin: self.plugin.config.name.clone(),
            });
        }
        let state = self.store.data_mut();
        state.current = ctx;
        state.effective = None;
        self.set_deadline(if self.store.data().phase == Phase::Running {
            self.plugin.config.limits.callback_deadline
        } else {
            self.plugin.config.limits.start_deadline
        });
        match f.call(&mut self.store, args) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.fail(callback, e)),
        }
    }

    fn check_context(&self, ctx: u32) -> Result<(), Error> {
        if self.store.data().contexts.contains_key(&ctx) {
            Ok(())
        } else {
            Err(Error::UnknownContext {
                plugin: self.plugin.config.name.clone(),
                context_id: ctx,
            })
        }
    }

    /// The plugin this VM runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The root context id (the first plugin's, in a VM plugins share).
    pub fn root_context_id(&self) -> u32 {
        self.root
    }

    /// Every root context id, oldest first.
    pub fn roots(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.store.data().roots.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The plugin a root context runs.
    pub fn root_plugin(&self, root: u32) -> Option<&Arc<Plugin>> {
        self.store.data().roots.get(&root)
    }

    /// Why the VM failed, if it did. A failed VM takes no more calls.
    pub fn failure(&self) -> Option<TrapKind> {
        self.failed
    }

    /// Whether the VM failed.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Bytes of linear memory.
    pub fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .memory
            .map(|m| m.data_size(&self.store))
            .unwrap_or(0)
    }

    /// Number of live contexts (root included).
    pub fn context_count(&self) -> usize {
        self.store.data().contexts.len()
    }

    /// The tick period the first root context asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        self.tick_period_of(self.root)
    }

    /// The tick period a root context asked for, if any.
    pub fn tick_period_of(&self, root: u32) -> Option<Duration> {
        let ms = self
            .store
            .data()
            .tick_period_ms
            .get(&root)
            .copied()
            .unwrap_or(0);
        (ms > 0).then(|| Duration::from_millis(ms as u64))
    }

    /// Side effects queued by the last calls (continue, close, local reply, clear route cache).
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.store.data_mut().effects)
    }

    /// Whether any side effect is queued.
    pub fn has_effects(&self) -> bool {
        !self.store.data().effects.is_empty()
    }

    /// Outstanding HTTP/gRPC call tokens.
    pub fn pending_calls(&self) -> usize {
        self.store.data().calls.len()
    }

    fn new_stream_context(
        &mut self,
        kind: ContextKind,
        root: u32,
        props: Box<dyn StreamProperties>,
    ) -> Result<u32, Error> {
        self.check_context(root)?;
        let id = self.alloc_context(Context::new(kind, root, props));
        if let Some(f) = self.exports.on_context_create.clone() {
            self.call("proxy_on_context_create", &f, id, (id as i32, root as i32))?;
        }
        Ok(id)
    }

    /// Creates an HTTP stream context of the first root (`proxy_on_context_create(id, root)`).
    pub fn new_http_context(&mut self, props: Box<dyn StreamProperties>) -> Result<u32, Error> {
        self.new_http_context_in(self.root, props)
    }

    /// Creates an HTTP stream context of root context `root`.
    pub fn new_http_context_in(
        &mut self,
        root: u32,
        props: Box<dyn StreamProperties>,
    ) -> Result<u32, Error> {
        self.new_stream_context(ContextKind::Http, root, props)
    }

    /// Creates a TCP connection context of the first root and calls `proxy_on_new_connection`.
    pub fn new_tcp_context(
        &mut self,
        props: Box<dyn StreamProperties>,
    ) -> Result<(u32, FilterAction), Error> {
        self.new_tcp_context_in(self.root, props)
    }

    /// Creates a TCP connection context of root context `root`.
    pub fn new_tcp_context_in(
        &mut self,
        root: u32,
        props: Box<dyn StreamProperties>,
    ) -> Result<(u32, FilterAction), Error> {
        let id = self.new_stream_context(ContextKind::Tcp, root, props)?;
        let action = match self.exports.on_new_connection.clone() {
            Some(f) => {
                FilterAction::from_guest(self.call("proxy_on_new_connection", &f, id, id as i32)?)
            }
            None => FilterAction::Continue,
        };
        Ok((id, action))
    }

    /// Puts a header/trailer map into a stream context.
    pub fn set_map(&mut self, ctx: u32, map_type: MapType, map: HeaderMap) -> Result<(), Error> {
        self.check_context(ctx)?;
        if let (Some(slot), Some(c)) = (
            map_type.stream_slot(),
            self.store.data_mut().contexts.get_mut(&ctx),
        ) {
            c.maps[slot] = Some(map);
            c.maps_lazy[slot] = false;
            c.maps_modified[slot] = false;
            c.maps_released[slot] = false;
        }
        Ok(())
    }

    /// The map's callback continued: the plugin can no longer read or change it (Envoy
    /// forgets a headers or trailers map once its callback returns Continue; one the plugin
    /// paused in stays readable for the rest of the stream). The proxy can still look at it.
    pub fn release_map(&mut self, ctx: u32, map_type: MapType) {
        if let (Some(slot), Some(c)) = (
            map_type.stream_slot(),
            self.store.data_mut().contexts.get_mut(&ctx),
        ) {
            c.maps_released[slot] = true;
        }
    }

    /// Lets the plugin see a map without building it unless it reads it: the map comes from
    /// the stream's [`crate::StreamProperties::headers`] on first use.
    pub fn set_map_lazy(&mut self, ctx: u32, map_type: MapType) -> Result<(), Error> {
        self.check_context(ctx)?;
        if let (Some(slot), Some(c)) = (
            map_type.stream_slot(),
            self.store.data_mut().contexts.get_mut(&ctx),
        ) {
            c.maps[slot] = None;
            c.maps_lazy[slot] = true;
            c.maps_modified[slot] = false;
            c.maps_released[slot] = false;
        }
        Ok(())
    }

    /// Whether the plugin changed a map since [`Self::set_map`] (lets the proxy skip writing
    /// unchanged headers back, and clear the route cache only when request headers changed).
    pub fn map_modified(&self, ctx: u32, map_type: MapType) -> bool {
        let Some(slot) = map_type.stream_slot() else {
            return false;
        };
        self.store
            .data()
            .contexts
            .get(&ctx)
            .is_some_and(|c| c.maps_modified[slot])
    }

    /// The proxy applied the plugin's edits of a map: its current entries become the base
    /// (no change log, not modified), and it stays for later callbacks of the stream.
    pub fn map_applied(&mut self, ctx: u32, map_type: MapType) {
        let Some(slot) = map_type.stream_slot() else {
            return;
        };
        if let Some(c) = self.store.data_mut().contexts.get_mut(&ctx) {
            if let Some(m) = &mut c.maps[slot] {
                m.forget_changes();
            }
            c.maps_modified[slot] = false;
        }
    }

    /// Takes a map back out of a stream context (after the plugin is done with it).
    pub fn take_map(&mut self, ctx: u32, map_type: MapType) -> Option<HeaderMap> {
        let slot = map_type.stream_slot()?;
        self.store.data_mut().contexts.get_mut(&ctx)?.maps[slot].take()
    }

    /// A map of a stream context.
    pub fn map(&self, ctx: u32, map_type: MapType) -> Option<&HeaderMap> {
        let slot = map_type.stream_slot()?;
        self.store.data().contexts.get(&ctx)?.maps[slot].as_ref()
    }

    /// Replaces a body/data buffer of a stream context.
    pub fn set_buffer(&mut self, ctx: u32, buffer: BufferType, data: Vec<u8>) -> Result<(), Error> {
        self.check_context(ctx)?;
        if let (Some(slot), Some(c)) = (
            buffer.stream_slot(),
            self.store.data_mut().contexts.get_mut(&ctx),
        ) {
            c.buffers[slot] = Some(data);
            c.buffers_modified[slot] = false;
        }
        Ok(())
    }

    /// Whether the plugin changed a buffer since [`Self::set_buffer`] or
    /// [`Self::append_buffer`] (lets the proxy keep the data it has when not).
    pub fn buffer_modified(&self, ctx: u32, buffer: BufferType) -> bool {
        let Some(slot) = buffer.stream_slot() else {
            return false;
        };
        self.store
            .data()
            .contexts
            .get(&ctx)
            .is_some_and(|c| c.buffers_modified[slot])
    }

    /// Appends to a body/data buffer (what Envoy does while a plugin buffers).
    pub fn append_buffer(
        &mut self,
        ctx: u32,
        buffer: BufferType,
        data: &[u8],
    ) -> Result<(), Error> {
        self.check_context(ctx)?;
        if let (Some(slot), Some(c)) = (
            buffer.stream_slot(),
            self.store.data_mut().contexts.get_mut(&ctx),
        ) {
            c.buffers[slot]
                .get_or_insert_with(Vec::new)
                .extend_from_slice(data);
            c.buffers_modified[slot] = false;
        }
        Ok(())
    }

    /// Takes a body/data buffer out.
    pub fn take_buffer(&mut self, ctx: u32, buffer: BufferType) -> Option<Vec<u8>> {
        let slot = buffer.stream_slot()?;
        self.store.data_mut().contexts.get_mut(&ctx)?.buffers[slot].take()
    }

    /// A body/data buffer of a stream context.
    pub fn buffer(&self, ctx: u32, buffer: BufferType) -> Option<&[u8]> {
        let slot = buffer.stream_slot()?;
        self.store.data().contexts.get(&ctx)?.buffers[slot].as_deref()
    }

    fn map_len(&self, ctx: u32, slot: usize) -> i32 {
        self.store
            .data()
            .contexts
            .get(&ctx)
            .and_then(|c| c.maps[slot].as_ref())
            .map_or(0, |m| m.len() as i32)
    }

    fn buffer_len(&self, ctx: u32, slot: usize) -> i32 {
        self.store
            .data()
            .contexts
            .get(&ctx)
            .and_then(|c| c.buffers[slot].as_ref())
            .map_or(0, |b| b.len() as i32)
    }

    fn headers(&mut self, request: bool, ctx: u32, eos: bool) -> Result<HeadersAction, Error> {
        self.check_context(ctx)?;
        let (f, name, slot) = if request {
            (
                &self.exports.on_request_headers,
                "proxy_on_request_headers",
                0,
            )
        } else {
            (
                &self.exports.on_response_headers,
                "proxy_on_response_headers",
                2,
            )
        };
        let n = self.map_len(ctx, slot);
        let raw = match f {
            None => return Ok(HeadersAction::Continue),
            Some(HeadersFn::V2(f)) => {
                let f = f.clone();
                self.call(name, &f, ctx, (ctx as i32, n, i32::from(eos)))?
            }
            Some(HeadersFn::V1(f)) => {
                let f = f.clone();
                self.call(name, &f, ctx, (ctx as i32, n))?
            }
        };
        if self.local_reply_pending(ctx) {
            return Ok(HeadersAction::StopAllWatermark);
        }
        Ok(HeadersAction::from_guest(raw))
    }

    fn local_reply_pending(&self, ctx: u32) -> bool {
        self.store
            .data()
            .effects
            .iter()
            .any(|e| matches!(e, Effect::LocalReply { context_id, .. } if *context_id == ctx))
    }

    fn body(&mut self, request: bool, ctx: u32, eos: bool) -> Result<DataAction, Error> {
        self.check_context(ctx)?;
        let (f, name, slot) = if request {
            (
                self.exports.on_request_body.clone(),
                "proxy_on_request_body",
                0,
            )
        } else {
            (
                self.exports.on_response_body.clone(),
                "proxy_on_response_body",
                1,
            )
        };
        let Some(f) = f else {
            return Ok(DataAction::Continue);
        };
        let size = self.buffer_len(ctx, slot);
        let raw = self.call(name, &f, ctx, (ctx as i32, size, i32::from(eos)))?;
        if self.local_reply_pending(ctx) {
            return Ok(DataAction::StopNoBuffer);
        }
        Ok(DataAction::from_guest(raw))
    }

    fn trailers(&mut self, request: bool, ctx: u32) -> Result<FilterAction, Error> {
        self.check_context(ctx)?;
        let (f, name, slot) = if request {
            (
                self.exports.on_request_trailers.clone(),
                "proxy_on_request_trailers",
                1,
            )
        } else {
            (
                self.exports.on_response_trailers.clone(),
                "proxy_on_response_trailers",
                3,
            )
        };
        let Some(f) = f else {
            return Ok(FilterAction::Continue);
        };
        let n = self.map_len(ctx, slot);
        let raw = self.call(name, &f, ctx, (ctx as i32, n))?;
        if self.local_reply_pending(ctx) {
            return Ok(FilterAction::Stop);
        }
        Ok(FilterAction::from_guest(raw))
    }

    /// `proxy_on_request_headers` with the map set by [`Self::set_map`].
    pub fn on_request_headers(
        &mut self,
        ctx: u32,
        end_of_stream: bool,
    ) -> Result<HeadersAction, Error> {
        self.headers(true, ctx, end_of_stream)
    }

    /// `proxy_on_request_body`; `body_size` is the whole buffered request body.
    pub fn on_request_body(&mut self, ctx: u32, end_of_stream: bool) -> Result<DataAction, Error> {
        self.body(true, ctx, end_of_stream)
    }

    /// `proxy_on_request_trailers`.
    pub fn on_request_trailers(&mut self, ctx: u32) -> Result<FilterAction, Error> {
        self.trailers(true, ctx)
    }

    /// `proxy_on_response_headers`.
    pub fn on_response_headers(
        &mut self,
        ctx: u32,
        end_of_stream: bool,
    ) -> Result<HeadersAction, Error> {
        self.headers(false, ctx, end_of_stream)
    }

    /// `proxy_on_response_body`.
    pub fn on_response_body(&mut self, ctx: u32, end_of_stream: bool) -> Result<DataAction, Error> {
        self.body(false, ctx, end_of_stream)
    }

    /// `proxy_on_response_trailers`.
    pub fn on_response_trailers(&mut self, ctx: u32) -> Result<FilterAction, Error> {
        self.trailers(false, ctx)
    }

    /// `proxy_on_downstream_data` with the data set as [`BufferType::DownstreamData`].
    pub fn on_downstream_data(
        &mut self,
        ctx: u32,
        end_of_stream: bool,
    ) -> Result<FilterAction, Error> {
        self.net_data(true, ctx, end_of_stream)
    }

    /// `proxy_on_upstream_data` with the data set as [`BufferType::UpstreamData`].
    pub fn on_upstream_data(
        &mut self,
        ctx: u32,
        end_of_stream: bool,
    ) -> Result<FilterAction, Error> {
        self.net_data(false, ctx, end_of_stream)
    }

    fn net_data(&mut self, downstream: bool, ctx: u32, eos: bool) -> Result<FilterAction, Error> {
        self.check_context(ctx)?;
        let (f, name, slot) = if downstream {
            (
                self.exports.on_downstream_data.clone(),
                "proxy_on_downstream_data",
                2,
            )
        } else {
            (
                self.exports.on_upstream_data.clone(),
                "proxy_on_upstream_data",
                3,
            )
        };
        let Some(f) = f else {
            return Ok(FilterAction::Continue);
        };
        let size = self.buffer_len(ctx, slot);
        Ok(FilterAction::from_guest(self.call(
            name,
            &f,
            ctx,
            (ctx as i32, size, i32::from(eos)),
        )?))
    }

    /// `proxy_on_downstream_connection_close`.
    pub fn on_downstream_close(&mut self, ctx: u32, peer: PeerType) -> Result<(), Error> {
        self.check_context(ctx)?;
        match self.exports.on_downstream_close.clone() {
            Some(f) => self.call(
                "proxy_on_downstream_connection_close",
                &f,
                ctx,
                (ctx as i32, peer as i32),
            ),
            None => Ok(()),
        }
    }

    /// `proxy_on_upstream_connection_close`.
    pub fn on_upstream_close(&mut self, ctx: u32, peer: PeerType) -> Result<(), Error> {
        self.check_context(ctx)?;
        match self.exports.on_upstream_close.clone() {
            Some(f) => self.call(
                "proxy_on_upstream_connection_close",
                &f,
                ctx,
                (ctx as i32, peer as i32),
            ),
            None => Ok(()),
        }
    }

    /// `proxy_on_log` (access-log phase).
    pub fn on_log(&mut self, ctx: u32) -> Result<(), Error> {
        self.check_context(ctx)?;
        match self.exports.on_log.clone() {
            Some(f) => self.call("proxy_on_log", &f, ctx, ctx as i32),
            None => Ok(()),
        }
    }

    /// An access-log plugin's turn (Envoy's Wasm access logger): `proxy_on_log` on root context
    /// `root`, which for the call sees the finished stream: its properties through `props`
    /// and its request and response headers (built from `props` when read).
    pub fn log_on_root(
        &mut self,
        root: u32,
        props: Box<dyn StreamProperties>,
    ) -> Result<(), Error> {
        self.check_context(root)?;
        let saved = self.store.data_mut().contexts.get_mut(&root).map(|c| {
            c.kind = ContextKind::Http;
            c.logging = true;
            c.maps_lazy = [true, false, true, false];
            std::mem::replace(&mut c.props, props)
        });
        let result = self.on_log(root);
        if let (Some(c), Some(saved)) = (self.store.data_mut().contexts.get_mut(&root), saved) {
            c.kind = ContextKind::Root;
            c.logging = false;
            c.maps = Default::default();
            c.maps_lazy = [false; 4];
            c.props = saved;
        }
        result
    }

    /// Ends a stream context: `proxy_on_done` then `proxy_on_delete` (Envoy ignores a stream's
    /// on_done answer). The context is gone afterwards even if the VM failed.
    pub fn finish(&mut self, ctx: u32) -> Result<(), Error> {
        self.check_context(ctx)?;
        let mut result = Ok(());
        if self.failed.is_none() {
            if let Some(f) = self.exports.on_done.clone() {
                result = self.call("proxy_on_done", &f, ctx, ctx as i32).map(|_| ());
            }
            if result.is_ok()
                && let Some(f) = self.exports.on_delete.clone()
            {
                result = self.call("proxy_on_delete", &f, ctx, ctx as i32);
            }
        }
        let state = self.store.data_mut();
        state.contexts.remove(&ctx);
        state.effects.retain(|e| e.context_id() != ctx);
        result
    }

    /// The VM is going away (its config was replaced or removed, or the proxy is stopping):
    /// `proxy_on_done` on the root context, then `proxy_on_delete` if it returned true (a
    /// plugin that answers false asked for time; the VM goes anyway). Envoy does the same when
    /// it tears a plugin down.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        for root in self.roots() {
            self.shutdown_root(root)?;
        }
        Ok(())
    }

    /// One plugin of the VM is going away (the others stay): `proxy_on_done` on its root
    /// context, then `proxy_on_delete` if it returned true; the root context is gone after.
    pub fn shutdown_root(&mut self, root: u32) -> Result<(), Error> {
        if self.failed.is_some() {
            return Ok(());
        }
        self.check_context(root)?;
        let done = match self.exports.on_done.clone() {
            Some(f) => self.call("proxy_on_done", &f, root, root as i32)?,
            None => 1,
        };
        if done != 0
            && let Some(f) = self.exports.on_delete.clone()
        {
            self.call("proxy_on_delete", &f, root, root as i32)?;
        }
        self.forget_root(root);
        Ok(())
    }

    /// Everything at the end of a stream, in Envoy's order: log, done, delete.
    pub fn complete(&mut self, ctx: u32) -> Result<(), Error> {
        if let Some(c) = self.store.data_mut().contexts.get_mut(&ctx) {
            c.logging = true;
        }
        let logged = if self.failed.is_none() {
            self.on_log(ctx)
        } else {
            Ok(())
        };
        let finished = self.finish(ctx);
        logged.and(finished)
    }

    /// `proxy_on_tick` on the first root context.
    pub fn on_tick(&mut self) -> Result<(), Error> {
        self.on_tick_of(self.root)
    }

    /// `proxy_on_tick` on root context `root`.
    pub fn on_tick_of(&mut self, root: u32) -> Result<(), Error> {
        self.check_context(root)?;
        match self.exports.on_tick.clone() {
            Some(f) => self.call("proxy_on_tick", &f, root, root as i32),
            None => Ok(()),
        }
    }

    /// `proxy_on_queue_ready` on the root context that registered the queue.
    pub fn on_queue_ready(&mut self, root_context_id: u32, queue_id: u32) -> Result<(), Error> {
        self.check_context(root_context_id)?;
        match self.exports.on_queue_ready.clone() {
            Some(f) => self.call(
                "proxy_on_queue_ready",
                &f,
                root_context_id,
                (root_context_id as i32, queue_id as i32),
            ),
            None => Ok(()),
        }
    }

    /// Delivers the answer to an HTTP callout (`None`: the call failed or was reset).
    /// Unknown tokens (e.g. already delivered) are ignored.
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        response: Option<HttpCallResponse>,
    ) -> Result<(), Error> {
        let Some(root) = self.store.data_mut().calls.remove(&token) else {
            return Ok(());
        };
        let Some(f) = self.exports.on_http_call_response.clone() else {
            return Ok(());
        };
        let (nh, bl, nt) = response.as_ref().map_or((0, 0, 0), |r| {
            (
                r.headers.len() as i32,
                r.body.len() as i32,
                r.trailers.len() as i32,
            )
        });
        let state = self.store.data_mut();
        state.status = match &response {
            Some(_) => (Status::Ok as u32, Vec::new()),
            None => (Status::BrokenConnection as u32, b"reset".to_vec()),
        };
        state.call.http_response = response;
        let res = self.call(
            "proxy_on_http_call_response",
            &f,
            root,
            (root as i32, token as i32, nh, bl, nt),
        );
        self.store.data_mut().call.http_response = None;
        res
    }

    /// Delivers a gRPC response message, then closes the call with `status`.
    pub fn on_grpc_response(
        &mut self,
        token: u32,
        result: Result<Vec<u8>, (u32, String)>,
    ) -> Result<(), Error> {
        let Some(root) = self.store.data_mut().calls.remove(&token) else {
            return Ok(());
        };
        match result {
            Ok(message) => {
                let Some(f) = self.exports.on_grpc_receive.clone() else {
                    return Ok(());
                };
                let len = message.len() as i32;
                self.store.data_mut().call.grpc_message = Some(message);
                let res = self.call(
                    "proxy_on_grpc_receive",
                    &f,
                    root,
                    (root as i32, token as i32, len),
                );
                self.store.data_mut().call.grpc_message = None;
                res
            }
            Err((code, message)) => {
                let Some(f) = self.exports.on_grpc_close.clone() else {
                    return Ok(());
                };
                self.store.data_mut().status = (code, message.into_bytes());
                self.call(
                    "proxy_on_grpc_close",
                    &f,
                    root,
                    (root as i32, token as i32, code as i32),
                )
            }
        }
    }

    /// `proxy_on_foreign_function` with `args` readable as [`BufferType::CallData`].
    pub fn on_foreign_function(&mut self, function_id: u32, args: Vec<u8>) -> Result<(), Error> {
        let Some(f) = self.exports.on_foreign_function.clone() else {
            return Ok(());
        };
        let len = args.len() as i32;
        self.store.data_mut().call.foreign_args = Some(args);
        let res = self.call(
            "proxy_on_foreign_function",
            &f,
            self.root,
            (self.root as i32, function_id as i32, len),
        );
        self.store.data_mut().call.foreign_args = None;
        res
    }
}
