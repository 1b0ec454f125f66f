//! The running agent: module cache + purger, ADS proxy server, metrics endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::cache::{CacheError, CacheOptions, ModuleCache};
use crate::convert::Converter;
use crate::metrics::{self, Metrics, MetricsError};
use crate::xds_proxy::{AdsProxy, Backoff, ProxyError, ProxyOptions};

/// istio-agent's xDS proxy port (`--listen` default).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:15011";
/// istiod's plaintext xDS port (`--discovery-address` default).
pub const DEFAULT_DISCOVERY_ADDRESS: &str = "127.0.0.1:15010";

/// Where the agent listens for the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// Local TCP.
    Tcp(SocketAddr),
    /// A Unix socket (`unix:/path`), as istio-agent's `./etc/istio/proxy/XDS`.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(Self::Unix(PathBuf::from(p)));
        }
        s.parse()
            .map(Self::Tcp)
            .map_err(|e| format!("{s} is neither host:port nor unix:/path: {e}"))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Everything the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the proxy's bootstrap points.
    pub listen: ListenAddr,
    /// The control plane's ADS address (`host:port` or `http://host:port`).
    pub discovery_address: String,
    /// Module cache settings.
    pub cache: CacheOptions,
    /// Prometheus endpoint, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Reconnection backoff to the control plane.
    pub reconnect: Backoff,
    /// Background retry backoff of failed module fetches.
    pub fetch_retry: Backoff,
    /// Rewrite remote Wasm code in ECDS (istio-agent's
    /// `ISTIO_AGENT_ENABLE_WASM_REMOTE_LOAD_CONVERSION`, on by default).
    pub convert_remote_wasm: bool,
}

impl AgentConfig {
    /// Defaults as istio-agent, with the cache in `cache_dir`.
    pub fn new(
        listen: ListenAddr,
        discovery_address: impl Into<String>,
        cache_dir: impl Into<PathBuf>,
    ) -> Self {
        let discovery_address = discovery_address.into();
        let p = ProxyOptions::new(discovery_address.clone());
        Self {
            listen,
            discovery_address,
            cache: CacheOptions::new(cache_dir),
            metrics_addr: None,
            reconnect: p.reconnect,
            fetch_retry: p.fetch_retry,
            convert_remote_wasm: true,
        }
    }
}

/// Why the agent cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot open the module cache: {0}")]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the xDS server on {addr} failed: {reason}")]
    Serve { addr: String, reason: String },
}

/// A started agent. Dropping it does not stop it; call [`Agent::shutdown`].
#[derive(Debug)]
pub struct Agent {
    listen: ListenAddr,
    metrics_addr: Option<SocketAddr>,
    cache: ModuleCache,
    metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), AgentError>>,
    background: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Opens the cache, binds the listeners and starts serving.
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let mut registry = metrics::registry();
        let metrics = Metrics::register(&mut registry);
        let cache = ModuleCache::open(config.cache.clone(), metrics.clone())?;
        let mut background = vec![cache.spawn_purger()];
        let proxy = AdsProxy::new(
            ProxyOptions {
                upstream: config.discovery_address.clone(),
                reconnect: config.reconnect,
                fetch_retry: config.fetch_retry,
            },
            Converter::new(cache.clone()).with_conversion(config.convert_remote_wasm),
        )?;
        let metrics_addr = match config.metrics_addr {
            Some(addr) => {
                let (bound, task) = metrics::serve(addr, Arc::new(registry)).await?;
                background.push(task);
                Some(bound)
            }
            None => None,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let svc = proxy.into_service();
        let router = tonic::transport::Server::builder().add_service(svc);
        let shutdown = async move {
            let _ = rx.await;
        };
        let (listen, server) = match &config.listen {
            ListenAddr::Tcp(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Listen {
                        addr: addr.to_string(),
                        source,
                    })?;
                let bound = l.local_addr().map_err(|source| AgentError::Listen {
                    addr: addr.to_string(),
                    source,
                })?;
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                let name = bound.to_string();
                (
                    ListenAddr::Tcp(bound),
                    tokio::spawn(async move {
                        router
                            .serve_with_incoming_shutdown(incoming, shutdown)
                            .await
                            .map_err(|e| AgentError::Serve {
                                addr: name,
                                reason: e.to_string(),
                            })
                    }),
                )
            }
            ListenAddr::Unix(path) => {
                let _ = std::fs::remove_file(path);
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let l =
                    tokio::net::UnixListener::bind(path).map_err(|source| AgentError::Listen {
                        addr: config.listen.to_string(),
                        source,
                    })?;
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                let name = config.listen.to_string();
                (
                    config.listen.clone(),
                    tokio::spawn(async move {
                        router
                            .serve_with_incoming_shutdown(incoming, shutdown)
                            .await
                            .map_err(|e| AgentError::Serve {
                                addr: name,
                                reason: e.to_string(),
                            })
                    }),
                )
            }
        };
        info!(listen = %listen, upstream = %config.discovery_address, cache = %config.cache.dir.display(),
            metrics = ?metrics_addr, "wasmesh agent started");
        Ok(Self {
            listen,
            metrics_addr,
            cache,
            metrics,
            shutdown: Some(tx),
            server,
            background,
        })
    }

    /// The bound proxy-facing address (the real port when started on port 0).
    pub fn listen_addr(&self) -> &ListenAddr {
        &self.listen
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The module cache.
    pub fn cache(&self) -> &ModuleCache {
        &self.cache
    }

    /// The metric families.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves until the server stops (it stops only on error or shutdown).
    pub async fn wait(mut self) -> Result<(), AgentError> {
        let r = self.stopped().await;
        self.stop_background();
        r
    }

    /// Resolves when the xDS server stops (on error); the agent can still be shut down after.
    pub async fn stopped(&mut self) -> Result<(), AgentError> {
        let addr = self.listen.to_string();
        (&mut self.server).await.unwrap_or_else(|e| {
            Err(AgentError::Serve {
                addr,
                reason: e.to_string(),
            })
        })
    }

    /// Stops serving and the background tasks.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.abort();
        let _ = (&mut self.server).await;
        self.stop_background();
        if let ListenAddr::Unix(p) = &self.listen {
            let _ = std::fs::remove_file(p);
        }
    }

    fn stop_background(&mut self) {
        for t in self.background.drain(..) {
            t.abort();
        }
    }
}
