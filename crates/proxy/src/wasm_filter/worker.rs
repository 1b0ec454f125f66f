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

pub(crate) struct WorkerVm {
    plugin: Arc<Plugin>,
    policy: FailurePolicy,
    worker: WorkerContext,
    clusters: Arc<[String]>,
    slot: RefCell<Slot>,
    /// Bumped on every new VM: a stream whose context lives in an older VM is orphaned.
    generation: Cell<u64>,
    backoff: RefCell<Backoff>,
    waiters: RefCell<HashMap<u32, oneshot::Sender<Vec<Effect>>>>,
    queue_tx: mpsc::UnboundedSender<(u32, u32)>,
    me: Weak<WorkerVm>,
    tick_running: Cell<bool>,
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
    clusters: Arc<[String]>,
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
fn timeout_response() -> HttpCallResponse {
    HttpCallResponse {
        headers: HeaderMap::from_entries([(":status", "504"), ("content-type", "text/plain")]),
        body: b"upstream request timeout".to_vec(),
        trailers: HeaderMap::new(),
    }
}

impl Host for WorkerHost {
    fn log(&mut self, plugin: &str, level: LogLevel, message: &str) {
        let worker = self.worker.index();
        match level {
            LogLevel::Trace => tracing::trace!(target: "wasm", plugin, worker, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "wasm", plugin, worker, "{message}"),
            LogLevel::Info => tracing::info!(target: "wasm", plugin, worker, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "wasm", plugin, worker, "{message}"),
            LogLevel::Error | LogLevel::Critical => {
                tracing::error!(target: "wasm", plugin, worker, "{message}")
            }
        }
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
        if !self.clusters.contains(&call.upstream) {
            return Err(Status::BadArgument);
        }
        let request = to_http_request(&call).ok_or(Status::BadArgument)?;
        let (vm, worker, token) = (self.vm.clone(), self.worker.clone(), call.token);
        tokio::task::spawn_local(async move {
            let answer = match worker
                .http_call(&call.upstream, request, call.timeout)
                .await
            {
                Ok(resp) => Some(to_call_response(resp)),
                Err(CalloutError::Timeout) => Some(timeout_response()),
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
        if !self.clusters.contains(&cluster) {
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
    /// The VM state for `plugin` on this worker.
    pub(crate) fn new(
        plugin: Arc<Plugin>,
        worker: WorkerContext,
        clusters: Arc<[String]>,
        backoff: Backoff,
        alive: std::sync::Weak<()>,
        key: usize,
    ) -> Rc<Self> {
        let (queue_tx, mut queue_rx) = mpsc::unbounded_channel::<(u32, u32)>();
        let policy = plugin.config().failure_policy;
        let this = Rc::new_cyclic(|me| WorkerVm {
            plugin,
            policy,
            worker,
            clusters,
            slot: RefCell::new(Slot::Failed {
                retry_at: Instant::now(),
            }),
            generation: Cell::new(0),
            backoff: RefCell::new(backoff),
            waiters: RefCell::new(HashMap::new()),
            queue_tx,
            me: me.clone(),
            tick_running: Cell::new(false),
        });
        let weak = Rc::downgrade(&this);
        tokio::task::spawn_local(async move {
            while let Some((root, queue)) = queue_rx.recv().await {
                let Some(vm) = weak.upgrade() else { break };
                vm.deliver(|v| v.on_queue_ready(root, queue));
            }
        });
        // When the filter config is gone (replaced by an xDS update), drop this worker's VM once
        // the streams still using it end: the slot would otherwise keep it forever.
        let worker = this.worker.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if alive.strong_count() == 0 {
                    worker.remove_slot::<Rc<WorkerVm>>(key);
                    break;
                }
            }
        });
        this.create_vm();
        this
    }

    fn create_vm(&self) {
        let host = WorkerHost {
            vm: self.me.clone(),
            worker: self.worker.clone(),
            clusters: self.clusters.clone(),
            queue: Arc::new(Notifier(self.queue_tx.clone())),
        };
        let name = &self.plugin.config().name;
        match self.plugin.instantiate(Box::new(host)) {
            Ok(vm) => {
                self.generation.set(self.generation.get() + 1);
                tracing::debug!(plugin = %name, worker = self.worker.index(), "plugin VM started");
                let tick = vm.tick_period();
                *self.slot.borrow_mut() = Slot::Ready(Box::new(vm));
                self.backoff.borrow_mut().reset();
                if tick.is_some() {
                    self.start_ticker();
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

    fn start_ticker(&self) {
        if self.tick_running.replace(true) {
            return;
        }
        let weak = self.me.clone();
        tokio::task::spawn_local(async move {
            loop {
                let period = match weak.upgrade() {
                    Some(vm) => vm.with_vm(|v| v.tick_period()).flatten(),
                    None => break,
                };
                tokio::time::sleep(period.unwrap_or(Duration::from_millis(200))).await;
                let Some(vm) = weak.upgrade() else { break };
                if period.is_some() {
                    vm.deliver(PluginVm::on_tick);
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

    /// Whether streams can use the VM now; re-creates a failed VM for FAIL_RELOAD after its
    /// backoff. Otherwise says what the stream must do.
    pub(crate) fn ensure_ready(&self) -> Result<(), Unavailable> {
        let state = match &*self.slot.borrow() {
            Slot::Ready(vm) if !vm.is_failed() => return Ok(()),
            Slot::Ready(_) => None,
            Slot::Failed { retry_at } => Some(*retry_at),
        };
        let never_started = self.generation.get() == 0;
        let may_retry = self.policy == FailurePolicy::FailReload || never_started;
        if may_retry && state.is_none_or(|at| Instant::now() >= at) {
            if !never_started {
                wasm_host_restart(&self.plugin);
            }
            self.create_vm();
            if self.with_vm(|_| ()).is_some() {
                return Ok(());
            }
        }
        if state.is_none() {
            // just failed: schedule the next reload
            let delay = self.backoff.borrow_mut().next_delay();
            *self.slot.borrow_mut() = Slot::Failed {
                retry_at: Instant::now() + delay,
            };
        }
        Err(self.unavailable())
    }

    /// What a stream does when the VM is unusable, per policy.
    pub(crate) fn unavailable(&self) -> Unavailable {
        match self.policy {
            FailurePolicy::FailOpen => Unavailable::Skip,
            _ => Unavailable::FailStream,
        }
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

fn wasm_host_restart(plugin: &Plugin) {
    plugin
        .stats()
        .restarts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(plugin = %plugin.config().name, "reloading failed plugin VM (FAIL_RELOAD)");
}

impl Drop for WorkerVm {
    /// The plugin is told it is going away (its root context's `on_done`), as Envoy tells
    /// it when a config is replaced or the proxy stops.
    fn drop(&mut self) {
        if let Slot::Ready(vm) = &mut *self.slot.borrow_mut()
            && !vm.is_failed()
            && let Err(e) = vm.shutdown()
        {
            tracing::debug!(plugin = %self.plugin.config().name, error = %e, "plugin shutdown failed");
        }
    }
}
