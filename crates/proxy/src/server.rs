//! Starting and stopping the proxy: bind listeners (one `SO_REUSEPORT` socket per worker),
//! run the workers and the main thread (admin server, DNS refresh), drain on request.
//! [`RunningProxy::update`] swaps in a new config: listeners it adds are bound and handed to the
//! workers, listeners it removes stop accepting and drain their connections, and a listener
//! whose address changed is rebound, as Envoy does for an LDS update.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::config::{BuildOptions, ConfigError, ProxyConfig};
use crate::filter::StreamInfo;
use crate::listener::{ConnFacts, FilterChain, ListenerConfig, Terminal};
use crate::network_filter::NetworkCx;
use crate::pb::bootstrap::Bootstrap;
use crate::stats::Store;
use crate::worker::Worker;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid or unsupported.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener or the admin address could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Listener name or `admin`.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A thread or runtime could not be created.
    #[error("cannot start {what}: {source}")]
    Runtime {
        /// Which thread.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How to run the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Number of workers (`--concurrency`).
    pub concurrency: usize,
    /// How long a drain waits for connections to finish.
    pub drain_timeout: Duration,
    /// Run on a worker's thread when its last connection closes, at most every 100 ms (the
    /// binary returns the allocator's free pages to the OS with it).
    pub on_idle: Option<fn()>,
    /// Envoy's `--admin-address-path`: the bound admin address (`ip:port`) is written there
    /// as soon as the admin API listens.
    pub admin_address_path: Option<std::path::PathBuf>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            concurrency: std::thread::available_parallelism().map_or(1, usize::from),
            drain_timeout: Duration::from_secs(5),
            on_idle: None,
            admin_address_path: None,
        }
    }
}

/// Bound listener addresses by name, in config order (port 0 resolved).
pub(crate) type BoundListeners = Arc<ArcSwap<Vec<(Arc<str>, SocketAddr)>>>;

/// A change to a worker's listeners after start.
pub(crate) enum ListenerCmd {
    /// Start accepting on this worker's socket for the listener.
    Add(Arc<str>, std::net::TcpListener),
    /// Stop accepting for the listener (open connections finish).
    Remove(Arc<str>),
    /// A new config is live: start the per-worker state of its filters (Wasm VMs).
    Warm,
}

/// Starts the per-worker state of every filter in the current config on `worker` (Envoy
/// creates each worker's Wasm VMs when the config is loaded, not on the first request).
fn warm(worker: &Worker, main: bool) {
    let config = worker.config.load_full();
    // Wasm services: a singleton on the main thread, the others on every worker.
    for service in &config.services {
        if service.singleton == main {
            service.config.warm(&worker.ctx);
        }
    }
    for l in &config.listeners {
        for chain in l.all_chains() {
            for f in &chain.network_filters {
                f.config.warm(&worker.ctx);
            }
            let logs = match &chain.terminal {
                crate::listener::Terminal::Http(h) => {
                    for f in &h.filters {
                        f.config.warm(&worker.ctx);
                    }
                    &h.access_logs
                }
                crate::listener::Terminal::Tcp(t) => &t.access_logs,
            };
            for log in logs {
                if let crate::access_log::Sink::Plugin(p) = &log.sink {
                    p.warm(&worker.ctx);
                }
            }
        }
    }
}

/// A running proxy.
pub struct RunningProxy {
    listeners: BoundListeners,
    workers: Vec<mpsc::UnboundedSender<ListenerCmd>>,
    /// The main thread's: only [`ListenerCmd::Warm`].
    main_cmds: Option<mpsc::UnboundedSender<ListenerCmd>>,
    admin: Option<SocketAddr>,
    drain: watch::Sender<bool>,
    quit: Arc<Notify>,
    threads: Vec<JoinHandle<()>>,
    main_thread: Option<JoinHandle<()>>,
    main_stop: Option<tokio::sync::oneshot::Sender<()>>,
    config: Arc<ArcSwap<ProxyConfig>>,
    store: Store,
}

impl RunningProxy {
    /// Bound address of the listener `name` (port 0 resolved).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .load()
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| *a)
    }

    /// Bound addresses of every listener, in config order.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .load()
            .iter()
            .map(|(n, a)| (n.to_string(), *a))
            .collect()
    }

    /// Bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The metric store.
    pub fn stats(&self) -> &Store {
        &self.store
    }

    /// The live config (the xDS client swaps it).
    pub fn config(&self) -> &Arc<ArcSwap<ProxyConfig>> {
        &self.config
    }

    /// Swaps in `config`: binds the listeners it adds (or whose address changed) and hands them
    /// to the workers, stops accepting on the ones it removes. New streams use the new config,
    /// in-flight streams finish on the old one. If a new listener cannot be bound nothing
    /// changes and the error names it.
    pub fn update(&mut self, config: ProxyConfig) -> Result<(), StartError> {
        // Listeners are told apart by name and configured address (before port 0 is resolved).
        let old = self.config.load_full();
        let unchanged = |name: &str, addr: SocketAddr| {
            old.listeners
                .iter()
                .any(|l| &*l.name == name && l.address == addr)
        };
        let mut added = Vec::new();
        for l in &config.listeners {
            if !unchanged(&l.name, l.address) {
                let (actual, socks) = bind_all(l, self.workers.len())?;
                added.push((Arc::clone(&l.name), actual, socks));
            }
        }
        let removed: Vec<Arc<str>> = old
            .listeners
            .iter()
            .filter(|o| {
                !config
                    .listeners
                    .iter()
                    .any(|l| l.name == o.name && l.address == o.address)
            })
            .map(|o| Arc::clone(&o.name))
            .collect();
        let old_bound = self.listeners.load_full();
        let bound: Vec<(Arc<str>, SocketAddr)> = config
            .listeners
            .iter()
            .filter_map(|l| {
                let fresh = added
                    .iter()
                    .find(|(n, _, _)| *n == l.name)
                    .map(|(_, a, _)| *a);
                let kept = || {
                    old_bound
                        .iter()
                        .find(|(n, _)| *n == l.name)
                        .map(|(_, a)| *a)
                };
                fresh.or_else(kept).map(|a| (Arc::clone(&l.name), a))
            })
            .collect();
        crate::stats::ServerStats::new(&self.store).set_sizes(bound.len(), config.clusters.len());
        self.config.store(Arc::new(config));
        for w in self.workers.iter().chain(&self.main_cmds) {
            let _ = w.send(ListenerCmd::Warm);
        }
        for name in &removed {
            tracing::info!(listener = %name, "listener removed: no longer accepting");
            for w in &self.workers {
                let _ = w.send(ListenerCmd::Remove(Arc::clone(name)));
            }
        }
        for (name, actual, socks) in added {
            tracing::info!(listener = %name, address = %actual, "listener added");
            for (w, s) in self.workers.iter().zip(socks) {
                let _ = w.send(ListenerCmd::Add(Arc::clone(&name), s));
            }
        }
        self.listeners.store(Arc::new(bound));
        Ok(())
    }

    /// Resolves when `/quitquitquit` is called.
    pub fn quit_requested(&self) -> Arc<Notify> {
        Arc::clone(&self.quit)
    }

    /// Stops accepting, lets in-flight streams finish (up to the drain timeout), then stops.
    pub fn shutdown(mut self) {
        crate::stats::ServerStats::new(&self.store).set_state(crate::stats::ServerState::Draining);
        let _ = self.drain.send(true);
        // The workers first, then the main thread (it stops on `stop`).
        let main = self.main_thread.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(stop) = self.main_stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = main {
            let _ = t.join();
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        let _ = self.drain.send(true);
        if let Some(stop) = self.main_stop.take() {
            let _ = stop.send(());
        }
    }
}

fn bind(addr: SocketAddr, what: &str) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Bind {
        what: what.to_string(),
        addr,
        source,
    };
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.set_tcp_nodelay(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(1024).map_err(err)?;
    Ok(s.into())
}

/// Binds listener `l` once per worker (the first socket resolves port 0, the others join it with
/// `SO_REUSEPORT`).
fn bind_all(
    l: &ListenerConfig,
    workers: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    let first = bind(l.address, &l.name)?;
    let err = |addr, source| StartError::Bind {
        what: l.name.to_string(),
        addr,
        source,
    };
    let actual = first.local_addr().map_err(|e| err(l.address, e))?;
    let mut socks = Vec::with_capacity(workers);
    for i in 0..workers.max(1) {
        socks.push(if i == 0 {
            first.try_clone().map_err(|e| err(actual, e))?
        } else {
            bind(actual, &l.name)?
        });
    }
    Ok((actual, socks))
}

/// Builds the config from `bootstrap` and starts the proxy.
pub fn start(bootstrap: &Bootstrap, opts: &ProxyOptions) -> Result<RunningProxy, StartError> {
    let build = BuildOptions {
        concurrency: opts.concurrency.max(1),
        ..BuildOptions::default()
    };
    let config = crate::config::build(bootstrap, &build)?;
    start_with(config, build.store, opts)
}

/// Starts the proxy with a built config (and the store it was built with).
pub fn start_with(
    config: ProxyConfig,
    store: Store,
    opts: &ProxyOptions,
) -> Result<RunningProxy, StartError> {
    let admin = match config.admin {
        Some(a) => Some(bind_admin(a)?),
        None => None,
    };
    start_prebound(config, store, opts, admin, Arc::new(Notify::new()))
}

/// Binds the admin address (non-blocking, for tokio).
pub(crate) fn bind_admin(a: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Bind {
        what: "admin".into(),
        addr: a,
        source,
    };
    let s = std::net::TcpListener::bind(a).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    Ok(s)
}

/// The bound admin address, written to `--admin-address-path` if asked.
pub(crate) fn admin_bound(
    sock: &std::net::TcpListener,
    opts: &ProxyOptions,
) -> Result<SocketAddr, StartError> {
    let addr = sock.local_addr().map_err(|source| StartError::Runtime {
        what: "admin address".into(),
        source,
    })?;
    if let Some(path) = &opts.admin_address_path {
        std::fs::write(path, addr.to_string()).map_err(|source| StartError::Runtime {
            what: format!("writing {}", path.display()),
            source,
        })?;
    }
    Ok(addr)
}

/// Starts the proxy on an admin socket bound earlier (the xDS client serves the admin API
/// while it waits for the first config), with the `/quitquitquit` notifier already handed out.
pub(crate) fn start_prebound(
    config: ProxyConfig,
    store: Store,
    opts: &ProxyOptions,
    admin_sock: Option<std::net::TcpListener>,
    quit: Arc<Notify>,
) -> Result<RunningProxy, StartError> {
    let concurrency = opts.concurrency.max(1);
    let server = crate::stats::ServerStats::new(&store);
    server
        .concurrency
        .set(i64::try_from(concurrency).unwrap_or(i64::MAX));
    server.set_state(crate::stats::ServerState::Initializing);
    // Bind everything first so errors surface before any thread starts.
    let mut sockets: Vec<Vec<(Arc<str>, std::net::TcpListener)>> =
        (0..concurrency).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let (actual, socks) = bind_all(l, concurrency)?;
        bound.push((Arc::clone(&l.name), actual));
        for (per_worker, s) in sockets.iter_mut().zip(socks) {
            per_worker.push((Arc::clone(&l.name), s));
        }
    }
    server.set_sizes(bound.len(), config.clusters.len());
    let bound: BoundListeners = Arc::new(ArcSwap::from_pointee(bound));
    let admin = match &admin_sock {
        Some(s) => Some(admin_bound(s, opts)?),
        None => None,
    };
    let config = Arc::new(ArcSwap::from_pointee(config));
    let (drain_tx, drain_rx) = watch::channel(false);
    let (drain_timeout, on_idle) = (opts.drain_timeout, opts.on_idle);
    let mut threads = Vec::new();
    let mut workers = Vec::new();
    // The main thread: admin, DNS.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_cmds: crate::admin::WorkerCmds = Arc::default();
    let state = crate::admin::AdminState {
        config: Arc::clone(&config),
        store: store.clone(),
        listeners: Arc::clone(&bound),
        quit: Arc::clone(&quit),
        server: server.clone(),
        workers: Arc::clone(&worker_cmds),
        drain_time: opts.drain_timeout,
    };
    let main_cfg = Arc::clone(&config);
    let (init_tx, init_rx) = std::sync::mpsc::channel::<()>();
    let (warm_tx, warm_rx) = std::sync::mpsc::channel::<()>();
    let (main_tx, mut main_rx) = mpsc::unbounded_channel::<ListenerCmd>();
    let main_index = concurrency;
    let main_thread = std::thread::Builder::new()
        .name("wasmesh-main".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                // Filters' main-thread state (Envoy's main-thread Wasm VMs: their root contexts
                // tick, call out and read queues like the workers').
                let main_worker = Worker::new(main_index, Arc::clone(&main_cfg));
                warm(&main_worker, true);
                let _ = warm_tx.send(());
                let main_ctx = main_worker.ctx.clone();
                tokio::task::spawn_local(async move {
                    while let Some(cmd) = main_rx.recv().await {
                        if let ListenerCmd::Warm = cmd {
                            warm(&main_worker, true);
                        }
                    }
                });
                let cfg = main_cfg.load_full();
                for c in cfg.clusters.values() {
                    c.resolve().await;
                }
                state.server.set_state(crate::stats::ServerState::Live);
                let _ = init_tx.send(());
                for c in cfg.clusters.values() {
                    if let crate::cluster::Discovery::StrictDns { refresh, .. } = &c.discovery {
                        let c = Arc::clone(c);
                        let every = (*refresh).max(Duration::from_millis(100));
                        tokio::spawn(async move {
                            loop {
                                tokio::time::sleep(every).await;
                                c.resolve().await;
                            }
                        });
                    }
                }
                if let Some(sock) = admin_sock
                    && let Ok(l) = TcpListener::from_std(sock)
                {
                    tokio::spawn(crate::admin::serve(l, state));
                }
                let _ = stop_rx.await;
                main_ctx.clear_slots();
            });
        })
        .map_err(|source| StartError::Runtime {
            what: "main thread".into(),
            source,
        })?;
    // Its plugin VMs first, as Envoy creates the main thread's before the workers' (the last
    // root context to register a shared queue is the one notified).
    let _ = warm_rx.recv_timeout(Duration::from_secs(120));
    for (index, socks) in sockets.into_iter().enumerate() {
        let cfg = Arc::clone(&config);
        let drain = drain_rx.clone();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        worker_cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cmd_tx.clone());
        workers.push(cmd_tx);
        let t = std::thread::Builder::new()
            .name(format!("wrk:worker_{index}"))
            .spawn(move || run_worker(index, cfg, socks, cmd_rx, drain, (drain_timeout, on_idle)))
            .map_err(|source| StartError::Runtime {
                what: format!("worker {index}"),
                source,
            })?;
        threads.push(t);
    }
    // Clusters are initialized (DNS resolved once) before start returns, like Envoy's init.
    let _ = init_rx.recv_timeout(Duration::from_secs(10));
    server.workers_started.set(1);
    Ok(RunningProxy {
        listeners: bound,
        workers,
        admin,
        drain: drain_tx,
        quit,
        threads,
        main_thread: Some(main_thread),
        main_cmds: Some(main_tx),
        main_stop: Some(stop_tx),
        config,
        store,
    })
}

fn run_worker(
    index: usize,
    config: Arc<ArcSwap<ProxyConfig>>,
    sockets: Vec<(Arc<str>, std::net::TcpListener)>,
    mut cmds: mpsc::UnboundedReceiver<ListenerCmd>,
    drain: watch::Receiver<bool>,
    (drain_timeout, on_idle): (Duration, Option<fn()>),
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot create worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let worker = Worker::new(index, Arc::clone(&config));
        let pools = worker.pools.clone();
        let active = Rc::new(crate::idle::Active::new(crate::idle::QuietActions {
            trim: Box::new(move || pools.trim_idle(crate::idle::KEPT_WHEN_QUIET)),
            hook: on_idle,
        }));
        let idle = Rc::new(Notify::new());
        let mut accepting: std::collections::HashMap<Arc<str>, Accepting> =
            std::collections::HashMap::new();
        let start = |name: Arc<str>, sock: std::net::TcpListener| {
            let lcfg = config
                .load()
                .listeners
                .iter()
                .find(|l| l.name == name)
                .cloned()?;
            let l = match TcpListener::from_std(sock) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "cannot register listener socket");
                    return None;
                }
            };
            let (drain_tx, drain_rx) = watch::channel(false);
            let task = tokio::task::spawn_local(accept_loop(
                l,
                lcfg,
                Rc::clone(&worker),
                drain_rx,
                Rc::clone(&active),
                Rc::clone(&idle),
            ));
            Some(Accepting {
                task,
                drain: drain_tx,
            })
        };
        for (name, sock) in sockets {
            if let Some(a) = start(Arc::clone(&name), sock) {
                accepting.insert(name, a);
            }
        }
        warm(&worker, false);
        let mut d = drain;
        while !*d.borrow() {
            tokio::select! {
                changed = d.changed() => if changed.is_err() { break },
                Some(cmd) = cmds.recv() => match cmd {
                    ListenerCmd::Add(name, sock) => {
                        if let Some(a) = start(Arc::clone(&name), sock)
                            && let Some(old) = accepting.insert(name, a)
                        {
                            old.stop();
                        }
                    }
                    ListenerCmd::Remove(name) => {
                        if let Some(a) = accepting.remove(&name) {
                            a.stop();
                        }
                    }
                    ListenerCmd::Warm => warm(&worker, false),
                },
            }
        }
        for (_, a) in accepting.drain() {
            a.stop();
        }
        let deadline = tokio::time::Instant::now() + drain_timeout;
        while active.count() > 0 {
            if tokio::time::timeout_at(deadline, idle.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        worker.ctx.clear_slots();
    });
}

/// A listener a worker accepts on, and the drain signal of the connections it accepted.
struct Accepting {
    task: tokio::task::JoinHandle<()>,
    drain: watch::Sender<bool>,
}

impl Accepting {
    /// Stops accepting and drains the listener's connections (h1 `Connection: close` on the next
    /// response, h2 GOAWAY), as Envoy drains a listener that LDS removed.
    fn stop(self) {
        self.task.abort();
        let _ = self.drain.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    lcfg: Arc<ListenerConfig>,
    worker: Rc<Worker>,
    drain: watch::Receiver<bool>,
    active: Rc<crate::idle::Active>,
    idle: Rc<Notify>,
) {
    loop {
        let (sock, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        // The listener as the current config has it (a config swap applies to new connections).
        let lcfg = worker
            .config
            .load()
            .listeners
            .iter()
            .find(|l| l.name == lcfg.name)
            .cloned()
            .unwrap_or_else(|| Arc::clone(&lcfg));
        let local = sock.local_addr().unwrap_or(lcfg.address);
        let cx_guard = lcfg.stats.open();
        let (worker, drain) = (Rc::clone(&worker), drain.clone());
        let (active, idle) = (Rc::clone(&active), Rc::clone(&idle));
        active.opened();
        tokio::task::spawn_local(async move {
            handle_connection(sock, local, remote, lcfg, worker, drain).await;
            drop(cx_guard);
            if active.closed() {
                idle.notify_waiters();
            }
        });
    }
}

/// What a connection is served with: its filter chain, the stream (TLS terminated if the chain
/// says so), whether ALPN chose h2, the SNI, and the certificate chain the client presented.
type Accepted = (
    Arc<FilterChain>,
    crate::hcm::ServerIo,
    Option<bool>,
    Option<String>,
    Option<Arc<Vec<Vec<u8>>>>,
);

/// Chooses the filter chain for a new connection and runs its TLS handshake. `None` closes the
/// connection (no chain matches, a handshake fails or times out), as Envoy does.
async fn accept_chain(
    sock: tokio::net::TcpStream,
    local: SocketAddr,
    lcfg: &ListenerConfig,
) -> Option<Accepted> {
    const HANDSHAKE: Duration = Duration::from_secs(10);
    let mut facts = ConnFacts {
        local: Some(local),
        transport: "raw_buffer",
        ..ConnFacts::default()
    };
    if lcfg.inspects_tls() {
        // tls_inspector: a TLS record starts with 0x16 (handshake).
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(HANDSHAKE, sock.peek(&mut first))
            .await
            .ok()?
            .ok()?;
        if n == 1 && first[0] == 0x16 {
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), sock);
            let start = tokio::time::timeout(HANDSHAKE, acceptor).await.ok()?.ok()?;
            let hello = start.client_hello();
            facts.transport = "tls";
            facts.server_name = hello.server_name().map(str::to_ascii_lowercase);
            facts.alpn = hello
                .alpn()
                .map(|a| a.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                .unwrap_or_default();
            let Some(chain) = lcfg.select(&facts).cloned() else {
                tracing::debug!(listener = %lcfg.name, sni = ?facts.server_name, "no filter chain matches; closing");
                return None;
            };
            // A plaintext chain chosen for a TLS client (passthrough is rejected at build time).
            let tls = chain.tls.clone()?;
            let s = tokio::time::timeout(HANDSHAKE, start.into_stream(tls))
                .await
                .ok()?
                .ok()?;
            return Some(tls_accepted(chain, s));
        }
    }
    let Some(chain) = lcfg.select(&facts).cloned() else {
        tracing::debug!(listener = %lcfg.name, "no filter chain matches; closing");
        return None;
    };
    match chain.tls.clone() {
        None => Some((chain, crate::hcm::ServerIo::Plain(sock), None, None, None)),
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            let s = tokio::time::timeout(HANDSHAKE, acceptor.accept(sock))
                .await
                .ok()?
                .ok()?;
            Some(tls_accepted(chain, s))
        }
    }
}

/// A finished handshake: whether ALPN chose h2, and the SNI.
fn tls_accepted(
    chain: Arc<FilterChain>,
    s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> Accepted {
    let conn = s.get_ref().1;
    let h2 = conn.alpn_protocol().map(|p| p == b"h2");
    let sni = conn.server_name().map(str::to_string);
    let peer_cert = conn
        .peer_certificates()
        .filter(|c| !c.is_empty())
        .map(|c| Arc::new(c.iter().map(|d| d.as_ref().to_vec()).collect::<Vec<_>>()));
    (
        chain,
        crate::hcm::ServerIo::Tls(Box::new(s)),
        h2,
        sni,
        peer_cert,
    )
}

async fn handle_connection(
    sock: tokio::net::TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    lcfg: Arc<ListenerConfig>,
    worker: Rc<Worker>,
    drain: watch::Receiver<bool>,
) {
    let node = Arc::clone(&worker.config.load().node);
    let mut info = StreamInfo::new(
        Arc::clone(&lcfg.name),
        local,
        remote,
        http::Version::HTTP_11,
        node,
    );
    // Filter chain choice (peeking at the TLS ClientHello when a chain match needs it) and the
    // TLS handshake.
    let Some((chain, io, alpn_h2, sni, peer_cert)) = accept_chain(sock, local, &lcfg).await else {
        return;
    };
    info.downstream_tls = chain.tls.is_some();
    if lcfg.tls_inspector {
        info.requested_server_name = sni.clone();
    }
    let tls_facts = chain.tls.as_ref().map(|_| {
        Arc::new(crate::xfcc::TlsFacts {
            version: io.tls_version().unwrap_or_default(),
            peer: peer_cert
                .as_ref()
                .and_then(|c| c.first())
                .and_then(|d| crate::xfcc::CertFacts::from_der(d)),
            local: chain.local_cert.clone(),
        })
    });
    info.tls.clone_from(&tls_facts);
    let filters: Vec<_> = chain
        .network_filters
        .iter()
        .map(|f| f.config.create_filter(&worker.ctx))
        .collect();
    let mut cx = NetworkCx::new(info, worker.ctx.clone());
    match &chain.terminal {
        Terminal::Tcp(tcp) => crate::tcp::serve(io, Arc::clone(tcp), filters, cx, worker).await,
        Terminal::Http(hcm) => {
            let mut filters = filters;
            for f in filters.iter_mut() {
                f.on_new_connection(&mut cx).await;
                if cx.close_requested() {
                    return;
                }
            }
            let conn = Rc::new(crate::hcm::Conn {
                hcm: Arc::clone(hcm),
                worker,
                listener: Arc::clone(&lcfg.name),
                chain: chain.index,
                chain_name: Arc::from(chain.name.as_str()),
                direction: lcfg.direction,
                listener_metadata: lcfg.metadata.clone(),
                local,
                remote,
                tls: chain.tls.is_some(),
                sni: sni.filter(|_| lcfg.tls_inspector),
                peer_cert,
                tls_facts,
                read_ahead: Arc::default(),
            });
            if chain
                .network_filters
                .iter()
                .any(|f| !f.config.connection_only())
            {
                // Data-level network filters see the raw bytes: they sit between the socket and
                // the connection manager, which serves the other end of an in-memory pipe.
                let (near, far) = tokio::io::duplex(64 * 1024);
                let hcm = crate::hcm::serve(far, conn, alpn_h2, drain);
                let relay = crate::tcp::relay(io, near, &mut filters, &mut cx, None);
                tokio::join!(hcm, relay);
            } else {
                crate::hcm::serve(io, conn, alpn_h2, drain).await;
            }
            let info = cx.stream_info();
            for f in filters.iter_mut() {
                f.on_log(info);
            }
        }
    }
}
