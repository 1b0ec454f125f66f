//! One plugin VM per worker (like Envoy): created when the config is installed (and one more on the main thread, as Envoy has), fed HTTP callout answers,
//! timer ticks and queue notifications from tasks on the same worker, and replaced after a
//! failure when the policy says so. Streams waiting on the plugin (a paused request) park a
//! oneshot here and are woken by the effect that resumes, closes or answers them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use wasm_host::{
    Backoff, Effect, FailurePolicy, GrpcCall, HeaderMap, Host, HttpCall, HttpCallResponse,
    LogLevel, Plugin, PluginVm, QueueNotifier, Status,
};

use crate::filter::{CalloutError, WorkerContext};

/// A VM slot's state.
enum Slot {
    Ready(Box<PluginVm>),
    /// Failed; for FAIL_RELOAD, a new VM may be made after `retry_at`.
    Failed {
        retry_at: Instant,
    },
}

/// A plugin (one filter or service config) running in a thread's VM.
struct Member {
    /// The config's id (see [`super::WasmFilterConfig`]).
    id: usize,
    plugin: Arc<Plugin>,
    policy: FailurePolicy,
    /// Dropped with the config: the plugin leaves the VM.
    alive: std::sync::Weak<()>,
    /// Its root context in the current VM; `None` when its start was rejected.
    root: Cell<Option<u32>>,
    /// A rejected start is retried after this (FAIL_RELOAD).
    retry_at: Cell<Option<Instant>>,
    ticking: Cell<bool>,
}

impl Member {
    fn unavailable(&self) -> Unavailable {
        match self.policy {
            FailurePolicy::FailOpen => Unavailable::Skip,
            _ => Unavailable::FailStream,
        }
    }
}

/// One thread's VM of a module: every plugin whose `vm_id`, VM configuration and code are the
/// same runs in it with a root context of its own, as in Envoy (their globals are shared).
pub(crate) struct WorkerVm {
    /// The plugin the VM was made for (its module, limits and VM configuration).
    plugin: Arc<Plugin>,
    worker: WorkerContext,
    /// The clusters callouts may use (the newest config's).
    clusters: Rc<RefCell<Arc<[String]>>>,
    slot: RefCell<Slot>,
    /// Bumped on every new VM: a stream whose context lives in an older VM is orphaned.
    generation: Cell<u64>,
    /// When the VM (or a member's root) was last loaded: FAIL_RELOAD reloads a failed one only
    /// a backoff interval after it (Envoy's `maybeReloadHandleIfNeeded`).
    last_load: Cell<Instant>,
    /// Whether a VM was ever tried.
    attempted: Cell<bool>,
    backoff: RefCell<Backoff>,
    waiters: RefCell<HashMap<u32, oneshot::Sender<Vec<Effect>>>>,
    queue_tx: mpsc::UnboundedSender<(u32, u32)>,
    me: Weak<WorkerVm>,
    members: RefCell<Vec<Rc<Member>>>,
}

/// A plugin's place in its thread's VM: what a filter holds.
#[derive(Clone)]
pub(crate) struct PluginRef {
    vm: Rc<WorkerVm>,
    member: Rc<Member>,
}

/// The key plugins share a VM by: Envoy's `vm_id`, VM configuration and code.
fn vm_key(plugin: &Plugin) -> usize {
    use std::hash::{Hash, Hasher};
    let c = plugin.config();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&c.vm_id, &c.vm_configuration, plugin.module().sha256()).hash(&mut h);
    h.finish() as usize
}

impl PluginRef {
    /// The plugin's place in this thread's VM for its `vm_id`, VM configuration and code,
    /// joining (or starting) the VM.
    pub(crate) fn join(
        plugin: Arc<Plugin>,
        worker: &WorkerContext,
        clusters: Arc<[String]>,
        backoff: Backoff,
        alive: std::sync::Weak<()>,
        id: usize,
    ) -> Self {
        let key = vm_key(&plugin);
        let vm: Rc<Rc<WorkerVm>> = {
            let (p, w, c, b) = (plugin.clone(), worker.clone(), clusters.clone(), backoff);
            worker.slot(key, move || WorkerVm::new(p, w, c, b, key))
        };
        let vm: Rc<WorkerVm> = (*vm).clone();
        let member = vm.member(plugin, clusters, alive, id);
        PluginRef { vm, member }
    }

    /// Current VM generation (0: none yet).
    pub(crate) fn generation(&self) -> u64 {
        self.vm.generation()
    }

    /// Runs `f` on the live VM, or `None` if it failed.
    pub(crate) fn with_vm<R>(&self, f: impl FnOnce(&mut PluginVm) -> R) -> Option<R> {
        self.vm.with_vm(f)
    }

    /// The plugin's root context when streams can use it now (see [`WorkerVm::ensure_ready`]).
    pub(crate) fn ensure_ready(&self) -> Result<u32, Unavailable> {
        self.vm.ensure_ready(&self.member)
    }

    /// What a stream does when the plugin is unusable, per its policy.
    pub(crate) fn unavailable(&self) -> Unavailable {
        self.member.unavailable()
    }

    /// See [`WorkerVm::route`].
    pub(crate) fn route(&self, effects: Vec<Effect>) {
        self.vm.route(effects)
    }

    /// See [`WorkerVm::wait`].
    pub(crate) async fn wait(&self, ctx: u32) -> Option<Vec<Effect>> {
        self.vm.wait(ctx).await
    }

    /// See [`WorkerVm::forget`].
    pub(crate) fn forget(&self, ctx: u32) {
        self.vm.forget(ctx)
    }
}

/// What a stream is told when it cannot use the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// Skip the plugin (FAIL_OPEN).
    Skip,
    /// Reply 503 `wasm_fail_stream`.
    FailStream,
}

struct WorkerHost {
    vm: Weak<WorkerVm>,
    worker: WorkerContext,
    clusters: Rc<RefCell<Arc<[String]>>>,
    queue: Arc<Notifier>,
}

struct Notifier(mpsc::UnboundedSender<(u32, u32)>);

impl QueueNotifier for Notifier {
    fn notify(&self, root: u32, queue: u32) {
        let _ = self.0.send((root, queue));
    }
}

fn to_http_request(call: &HttpCall) -> Option<http::Request<Bytes>> {
    let mut b = http::Request::builder()
        .method(call.headers.get_str(":method")?)
        .uri(call.headers.get_str(":path")?);
    call.headers.get(b":authority")?;
    // `:authority` becomes `host` where it stands (Envoy's header map keeps the order).
    for (k, v) in call.headers.iter() {
        match k {
            b":authority" => b = b.header(http::header::HOST, v),
            _ if k.first() == Some(&b':') => {}
            _ => b = b.header(k, v),
        }
    }
    b.body(Bytes::from(call.body.clone())).ok()
}

fn to_call_response(resp: http::Response<Bytes>) -> HttpCallResponse {
    let (parts, body) = resp.into_parts();
    let mut headers = HeaderMap::new();
    headers.add(b":status", parts.status.as_str().as_bytes());
    for (k, v) in &parts.headers {
        headers.add(k.as_str().as_bytes(), v.as_bytes());
    }
    let mut trailers = HeaderMap::new();
    if let Some(crate::filter::CalloutTrailers(t)) = parts.extensions.get() {
        for (k, v) in t {
            trailers.add(k.as_str().as_bytes(), v.as_bytes());
        }
    }
    HttpCallResponse {
        headers,
        body: body.to_vec(),
        trailers,
    }
}

/// Envoy answers a timed-out callout with a synthesized 504, delivered as a success.
/// The router's local reply to a call, as Envoy's async client hands it to the plugin:
/// `:status`, `content-length`, `content-type: text/plain` and the text.
fn local_response(status: u16, body: &str) -> HttpCallResponse {
    HttpCallResponse {
        headers: HeaderMap::from_entries([
            (":status", status.to_string().as_str()),
            ("content-length", body.len().to_string().as_str()),
            ("content-type", "text/plain"),
        ]),
        body: body.as_bytes().to_vec(),
        trailers: HeaderMap::new(),
    }
}

impl Host for WorkerHost {
    /// Envoy's shape, `wasm log <name> <root_id> <vm_id>: <message>` (the host's default), so
    /// the lines people grep for in Envoy's log are found in ours.
    fn log(&mut self, prefix: &str, level: LogLevel, message: &str) {
        wasm_host::log_plugin_line(prefix, level, message);
    }

    fn log_level(&self) -> LogLevel {
        if tracing::enabled!(target: "wasm", tracing::Level::TRACE) {
            LogLevel::Trace
        } else if tracing::enabled!(target: "wasm", tracing::Level::DEBUG) {
            LogLevel::Debug
        } else if tracing::enabled!(target: "wasm", tracing::Level::INFO) {
            LogLevel::Info
        } else if tracing::enabled!(target: "wasm", tracing::Level::WARN) {
            LogLevel::Warn
        } else {
            LogLevel::Error
        }
    }

    fn dispatch_http_call(&mut self, call: HttpCall) -> Result<(), Status> {
        if !self.clusters.borrow().contains(&call.upstream) {
            return Err(Status::BadArgument);
        }
        let request = to_http_request(&call).ok_or(Status::BadArgument)?;
        // (Envoy: the router's no-healthy-upstream reply comes while the call is sent; its
        // async client then returns no request, and the plugin gets InternalFailure and no
        // callback)
        if !self.worker.cluster_has_hosts(&call.upstream) {
            return Err(Status::InternalFailure);
        }
        let (vm, worker, token) = (self.vm.clone(), self.worker.clone(), call.token);
        tokio::task::spawn_local(async move {
            let answer = match worker
                .http_call(&call.upstream, request, call.timeout)
                .await
            {
                Ok(resp) => Some(to_call_response(resp)),
                Err(CalloutError::Timeout) => Some(local_response(504, "upstream request timeout")),
                Err(CalloutError::Local { status, body }) => Some(local_response(status, &body)),
                Err(e) => {
                    tracing::debug!(cluster = %call.upstream, error = %e, "plugin callout failed");
                    None
                }
            };
            if let Some(vm) = vm.upgrade() {
                vm.deliver(|v| v.on_http_call_response(token, answer));
            }
        });
        Ok(())
    }

    fn dispatch_grpc_call(&mut self, call: GrpcCall) -> Result<(), Status> {
        let cluster = super::grpc::cluster(&call.upstream).ok_or(Status::ParseFailure)?;
        if !self.clusters.borrow().contains(&cluster) {
            return Err(Status::ParseFailure);
        }
        let request = super::grpc::request(&call, &cluster).ok_or(Status::BadArgument)?;
        let (vm, worker, token) = (self.vm.clone(), self.worker.clone(), call.token);
        let timeout = super::grpc::timeout(&call);
        tokio::task::spawn_local(async move {
            let answer = worker.http_call(&cluster, request, timeout).await;
            let result = super::grpc::outcome(answer);
            if let Some(vm) = vm.upgrade() {
                vm.deliver(|v| v.on_grpc_response(token, result));
            }
        });
        Ok(())
    }

    fn queue_notifier(&self) -> Option<Arc<dyn QueueNotifier>> {
        Some(self.queue.clone())
    }
}

impl WorkerVm {
    /// The VM state for `plugin`'s module on this worker; plugins join with [`Self::member`].
    fn new(
        plugin: Arc<Plugin>,
        worker: WorkerContext,
        clusters: Arc<[String]>,
        backoff: Backoff,
        key: usize,
    ) -> Rc<Self> {
        let (queue_tx, mut queue_rx) = mpsc::unbounded_channel::<(u32, u32)>();
        let this = Rc::new_cyclic(|me| WorkerVm {
            plugin,
            worker,
            clusters: Rc::new(RefCell::new(clusters)),
            slot: RefCell::new(Slot::Failed {
                retry_at: Instant::now(),
            }),
            generation: Cell::new(0),
            last_load: Cell::new(Instant::now()),
            attempted: Cell::new(false),
            backoff: RefCell::new(backoff),
            waiters: RefCell::new(HashMap::new()),
            queue_tx,
            me: me.clone(),
            members: RefCell::new(Vec::new()),
        });
        let weak = Rc::downgrade(&this);
        tokio::task::spawn_local(async move {
            while let Some((root, queue)) = queue_rx.recv().await {
                let Some(vm) = weak.upgrade() else { break };
                vm.deliver(|v| v.on_queue_ready(root, queue));
            }
        });
        // A plugin whose config is gone (replaced by an xDS update) leaves the VM once the
        // streams still using it end (its root context's `on_done`); the VM goes with its last
        // plugin, else the slot would keep it forever.
        let weak = Rc::downgrade(&this);
        let worker = this.worker.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let Some(vm) = weak.upgrade() else { break };
                if vm.drop_gone_members() {
                    drop(vm);
                    worker.remove_slot::<Rc<WorkerVm>>(key);
                    break;
                }
            }
        });
        this
    }

    /// Adds a plugin (once per config id) and starts its root context, or the VM itself
    /// when it was never tried.
    fn member(
        &self,
        plugin: Arc<Plugin>,
        clusters: Arc<[String]>,
        alive: std::sync::Weak<()>,
        id: usize,
    ) -> Rc<Member> {
        if let Some(m) = self.members.borrow().iter().find(|m| m.id == id) {
            return m.clone();
        }
        *self.clusters.borrow_mut() = clusters;
        let member = Rc::new(Member {
            id,
            policy: plugin.config().failure_policy,
            plugin,
            alive,
            root: Cell::new(None),
            retry_at: Cell::new(None),
            ticking: Cell::new(false),
        });
        self.members.borrow_mut().push(member.clone());
        if !self.attempted.get() {
            self.create_vm();
        } else if self.with_vm(|_| ()).is_some() {
            self.start_member(&member);
        }
        member
    }

    /// Members whose config is gone leave (their root's `on_done`); true when none is left.
    fn drop_gone_members(&self) -> bool {
        let gone: Vec<Rc<Member>> = {
            let mut members = self.members.borrow_mut();
            let (gone, kept) = members.drain(..).partition(|m| m.alive.strong_count() == 0);
            *members = kept;
            gone
        };
        for m in gone {
            // (the config's cached place in this VM goes too)
            self.worker.remove_slot::<PluginRef>(m.id);
            if let Some(root) = m.root.take() {
                self.deliver(|v| v.shutdown_root(root));
            }
        }
        self.members.borrow().is_empty()
    }

    /// Starts a member's root context in the live VM.
    fn start_member(&self, m: &Rc<Member>) {
        let started = self.with_vm(|vm| vm.add_root(m.plugin.clone()));
        match started {
            Some(Ok(root)) => {
                m.root.set(Some(root));
                m.retry_at.set(None);
                if self
                    .with_vm(|vm| vm.tick_period_of(root))
                    .flatten()
                    .is_some()
                {
                    self.start_ticker(m);
                }
            }
            Some(Err(e)) => {
                let delay = self.backoff.borrow_mut().next_delay();
                tracing::error!(plugin = %m.plugin.config().name, worker = self.worker.index(), error = %e, "plugin failed to start");
                m.root.set(None);
                m.retry_at.set(Some(Instant::now() + delay));
            }
            None => m.root.set(None),
        }
        // Effects of start-up callbacks belong to no stream.
        let _ = self.with_vm(|vm| vm.take_effects());
    }

    fn create_vm(&self) {
        self.attempted.set(true);
        self.last_load.set(Instant::now());
        let host = WorkerHost {
            vm: self.me.clone(),
            worker: self.worker.clone(),
            clusters: self.clusters.clone(),
            queue: Arc::new(Notifier(self.queue_tx.clone())),
        };
        let name = &self.plugin.config().name;
        match self.plugin.instantiate_module(Box::new(host)) {
            Ok(vm) => {
                self.generation.set(self.generation.get() + 1);
                tracing::debug!(plugin = %name, worker = self.worker.index(), "plugin VM started");
                *self.slot.borrow_mut() = Slot::Ready(Box::new(vm));
                let members: Vec<Rc<Member>> = self.members.borrow().clone();
                for m in &members {
                    self.start_member(m);
                }
                if self.with_vm(|_| ()).is_some() {
                    self.backoff.borrow_mut().reset();
                }
            }
            Err(e) => {
                let delay = self.backoff.borrow_mut().next_delay();
                tracing::error!(plugin = %name, worker = self.worker.index(), error = %e, retry_in = ?delay, "plugin VM failed to start");
                *self.slot.borrow_mut() = Slot::Failed {
                    retry_at: Instant::now() + delay,
                };
            }
        }
    }

    /// Ticks a member's root context at the period it asked for, in whatever VM is current.
    fn start_ticker(&self, m: &Rc<Member>) {
        if m.ticking.replace(true) {
            return;
        }
        let (weak, member) = (self.me.clone(), Rc::downgrade(m));
        tokio::task::spawn_local(async move {
            loop {
                let (Some(vm), Some(m)) = (weak.upgrade(), member.upgrade()) else {
                    break;
                };
                let root = m.root.get();
                let period = root.and_then(|r| vm.with_vm(|v| v.tick_period_of(r)).flatten());
                drop((vm, m));
                tokio::time::sleep(period.unwrap_or(Duration::from_millis(200))).await;
                let Some(vm) = weak.upgrade() else { break };
                if let (Some(_), Some(root)) = (period, root) {
                    vm.deliver(|v| v.on_tick_of(root));
                }
            }
        });
    }

    /// Current VM generation (0: none yet).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Runs `f` on the live VM, or `None` if it failed.
    pub(crate) fn with_vm<R>(&self, f: impl FnOnce(&mut PluginVm) -> R) -> Option<R> {
        match &mut *self.slot.borrow_mut() {
            Slot::Ready(vm) if !vm.is_failed() => Some(f(vm)),
            _ => None,
        }
    }

    /// Envoy's FAIL_RELOAD rule: a failed VM is reloaded only once the backoff's base interval
    /// has passed since it was last loaded (Envoy draws the interval from [base, 1.5 base); we
    /// take base). Counts `vm_reload_backoff` when it is too early.
    fn may_reload(&self, m: &Member) -> bool {
        let due = self.last_load.get().elapsed() >= self.backoff.borrow().base();
        if !due {
            bump(&m.plugin.stats().reload_backoff);
        }
        due
    }

    /// The member's root context when streams can use it now; re-creates a failed VM (or
    /// retries a rejected start) for FAIL_RELOAD after its backoff. Otherwise says what the
    /// stream must do.
    fn ensure_ready(&self, m: &Rc<Member>) -> Result<u32, Unavailable> {
        let unavailable = || m.unavailable();
        let state = match &*self.slot.borrow() {
            Slot::Ready(vm) if !vm.is_failed() => Ok(()),
            Slot::Ready(_) => Err(None),
            Slot::Failed { retry_at } => Err(Some(*retry_at)),
        };
        if state.is_ok() {
            if let Some(root) = m.root.get() {
                return Ok(root);
            }
            if m.policy == FailurePolicy::FailReload && self.may_reload(m) {
                self.last_load.set(Instant::now());
                wasm_host_restart(&m.plugin);
                self.start_member(m);
                reloaded(&m.plugin, m.root.get().is_some());
            }
            return m.root.get().ok_or_else(unavailable);
        }
        let state = state.err().flatten();
        let never_started = self.generation.get() == 0;
        if !never_started && m.policy == FailurePolicy::FailReload {
            if !self.may_reload(m) {
                return Err(unavailable());
            }
            wasm_host_restart(&m.plugin);
            self.create_vm();
            let root = m.root.get().filter(|_| self.with_vm(|_| ()).is_some());
            reloaded(&m.plugin, root.is_some());
            return root.ok_or_else(unavailable);
        }
        if never_started && state.is_none_or(|at| Instant::now() >= at) {
            self.create_vm();
            if self.with_vm(|_| ()).is_some()
                && let Some(root) = m.root.get()
            {
                return Ok(root);
            }
        }
        if state.is_none() && self.with_vm(|_| ()).is_none() {
            // just failed: schedule the next reload
            let delay = self.backoff.borrow_mut().next_delay();
            *self.slot.borrow_mut() = Slot::Failed {
                retry_at: Instant::now() + delay,
            };
        }
        Err(unavailable())
    }

    /// Runs a callback that is not tied to a waiting stream (callout answer, tick, queue), then
    /// hands the effects it queued to the streams they are for.
    pub(crate) fn deliver(&self, f: impl FnOnce(&mut PluginVm) -> Result<(), wasm_host::Error>) {
        let effects = self.with_vm(|vm| {
            if let Err(e) = f(vm) {
                tracing::debug!(plugin = %self.plugin.config().name, error = %e, "plugin callback failed");
            }
            vm.take_effects()
        });
        match effects {
            Some(effects) => self.route(effects),
            None => self.fail_waiters(),
        }
    }

    /// Sends each effect to the stream waiting for it.
    pub(crate) fn route(&self, effects: Vec<Effect>) {
        let mut by_ctx: HashMap<u32, Vec<Effect>> = HashMap::new();
        for e in effects {
            by_ctx.entry(e.context_id()).or_default().push(e);
        }
        let mut waiters = self.waiters.borrow_mut();
        for (ctx, effects) in by_ctx {
            if let Some(tx) = waiters.remove(&ctx) {
                let _ = tx.send(effects);
            }
        }
        drop(waiters);
        if self.with_vm(|_| ()).is_none() {
            self.fail_waiters();
        }
    }

    /// The VM died: wake every waiting stream (their channel closes; they apply the policy).
    fn fail_waiters(&self) {
        self.waiters.borrow_mut().clear();
    }

    /// Parks a stream until effects for `ctx` arrive. `None` when the VM failed meanwhile.
    pub(crate) async fn wait(&self, ctx: u32) -> Option<Vec<Effect>> {
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(ctx, tx);
        rx.await.ok()
    }

    /// Forgets a stream's waiter (the stream went away).
    pub(crate) fn forget(&self, ctx: u32) {
        self.waiters.borrow_mut().remove(&ctx);
    }
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Counts how a reload ended (Envoy's `vm_reload_success` / `vm_reload_failure`).
fn reloaded(plugin: &Plugin, ok: bool) {
    let s = plugin.stats();
    bump(if ok {
        &s.reload_success
    } else {
        &s.reload_failure
    });
}

fn wasm_host_restart(plugin: &Plugin) {
    plugin
        .stats()
        .restarts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(plugin = %plugin.config().name, "reloading failed plugin VM (FAIL_RELOAD)");
}

impl Drop for WorkerVm {
    /// Its plugins are told they are going away (their root contexts' `on_done`), as Envoy
    /// tells them when a config is replaced or the proxy stops.
    fn drop(&mut self) {
        if let Slot::Ready(vm) = &mut *self.slot.borrow_mut()
            && !vm.is_failed()
            && let Err(e) = vm.shutdown()
        {
            tracing::debug!(plugin = %self.plugin.config().name, error = %e, "plugin shutdown failed");
        }
    }
}
