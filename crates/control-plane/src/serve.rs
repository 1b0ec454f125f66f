//! The control plane as a whole: directory source → pusher → ADS server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;
use wasmesh_xds::{AdsServer, ServerError, SnapshotCache};

use crate::generate::Options;
use crate::push::Pusher;
use crate::source::{DirectorySource, SourceError};

/// Errors starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Config source.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// xDS server.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Status endpoint.
    #[error("cannot listen on {addr} for the status endpoint: {source}")]
    Status {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Control plane settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory of YAML files.
    pub config_dir: PathBuf,
    /// ADS listen address (port 0 picks one).
    pub xds_addr: SocketAddr,
    /// Istio root namespace.
    pub root_namespace: String,
    /// Debounce: quiet period.
    pub debounce: Duration,
    /// Debounce: maximum delay.
    pub debounce_max: Duration,
    /// Debug status endpoint (`/debug/config_status`, `/debug/syncz`); `None` = off.
    pub status_addr: Option<SocketAddr>,
}

impl Settings {
    /// Defaults: istiod's 100 ms debounce, `istio-system`.
    pub fn new(config_dir: impl Into<PathBuf>, xds_addr: SocketAddr) -> Self {
        Self {
            config_dir: config_dir.into(),
            xds_addr,
            root_namespace: "istio-system".into(),
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_secs(1),
            status_addr: None,
        }
    }
}

/// A running control plane. Dropping it stops it.
#[derive(Debug)]
pub struct ControlPlane {
    /// Bound ADS address.
    pub addr: SocketAddr,
    /// The config source (status per file).
    pub source: Arc<DirectorySource>,
    /// Snapshots and ACK/NACK status per node.
    pub cache: Arc<SnapshotCache>,
    /// Bound status endpoint address, if enabled.
    pub status_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    /// Loads the directory, binds the ADS port and starts watching and serving.
    pub async fn start(settings: Settings) -> Result<Self, ServeError> {
        let (source, configs) = DirectorySource::load(&settings.config_dir)?;
        for e in source.status().errors() {
            warn!(error = %e, "invalid config at start-up; the file is not applied");
        }
        let (cache, events) = SnapshotCache::new();
        let listener = wasmesh_xds::server::bind(settings.xds_addr).await?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: settings.xds_addr,
            source,
        })?;
        let (stop, stop_rx) = oneshot::channel::<()>();
        let pusher = Pusher::new(
            cache.clone(),
            Options {
                root_namespace: settings.root_namespace.clone(),
            },
        );
        let status_listener = match settings.status_addr {
            Some(addr) => Some(
                crate::status::bind(addr)
                    .await
                    .map_err(|source| ServeError::Status { addr, source })?,
            ),
            None => None,
        };
        let status_addr = status_listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut tasks = vec![tokio::spawn(pusher.run(events, configs))];
        if let Some(l) = status_listener {
            tasks.push(tokio::spawn(crate::status::serve(
                l,
                source.clone(),
                cache.clone(),
            )));
        }
        let watcher = source.clone();
        let (quiet, max) = (settings.debounce, settings.debounce_max);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = watcher.watch(quiet, max).await {
                warn!(error = %e, "config directory watch stopped; config will not be reloaded");
            }
        }));
        let server = AdsServer::new(cache.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server
                .serve(listener, async {
                    let _ = stop_rx.await;
                })
                .await
            {
                warn!(error = %e, "ADS server stopped");
            }
        }));
        Ok(Self {
            addr,
            source,
            cache,
            status_addr,
            stop: Some(stop),
            tasks,
        })
    }

    /// Waits until the ADS server stops.
    pub async fn wait(mut self) {
        if let Some(t) = self.tasks.pop() {
            let _ = t.await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}
