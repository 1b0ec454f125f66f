//! The control plane as a whole: config source (directory, or Kubernetes with the `kubernetes`
//! feature) → pusher → ADS server.

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
#[cfg(feature = "kubernetes")]
use crate::source::kubernetes::{KubernetesError, KubernetesSettings, KubernetesSource};
use crate::source::{ConfigSource, DirectorySource, SourceError};

/// Errors starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Config source.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Kubernetes config source.
    #[cfg(feature = "kubernetes")]
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
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

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    /// A directory of YAML files, watched.
    Directory(PathBuf),
    /// The Kubernetes API server: Istio CRDs and pull secrets, watched.
    #[cfg(feature = "kubernetes")]
    Kubernetes(KubernetesSettings),
}

/// Control plane settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Config source.
    pub source: SourceSettings,
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
    /// A directory source with defaults: istiod's 100 ms debounce, `istio-system`.
    pub fn new(config_dir: impl Into<PathBuf>, xds_addr: SocketAddr) -> Self {
        Self::with_source(SourceSettings::Directory(config_dir.into()), xds_addr)
    }

    /// Any source, with the same defaults as [`Settings::new`].
    pub fn with_source(source: SourceSettings, xds_addr: SocketAddr) -> Self {
        Self {
            source,
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
    /// The config source (status per file or object).
    pub source: Arc<dyn ConfigSource>,
    /// Snapshots and ACK/NACK status per node.
    pub cache: Arc<SnapshotCache>,
    /// Bound status endpoint address, if enabled.
    pub status_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    /// Binds the ADS (and status) port, loads the config (the directory, or the first complete
    /// list from the Kubernetes API server) and starts watching and serving.
    pub async fn start(settings: Settings) -> Result<Self, ServeError> {
        // Bind first: no source task is left running when a port is taken.
        let listener = wasmesh_xds::server::bind(settings.xds_addr).await?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: settings.xds_addr,
            source,
        })?;
        let status_listener = match settings.status_addr {
            Some(addr) => Some(
                crate::status::bind(addr)
                    .await
                    .map_err(|source| ServeError::Status { addr, source })?,
            ),
            None => None,
        };
        let status_addr = status_listener.as_ref().and_then(|l| l.local_addr().ok());
        let (quiet, max) = (settings.debounce, settings.debounce_max);
        let mut tasks = Vec::new();
        let (source, configs): (Arc<dyn ConfigSource>, _) = match &settings.source {
            SourceSettings::Directory(dir) => {
                let (source, configs) = DirectorySource::load(dir)?;
                let watcher = source.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = watcher.watch(quiet, max).await {
                        warn!(error = %e, "config directory watch stopped; config will not be reloaded");
                    }
                }));
                (source, configs)
            }
            #[cfg(feature = "kubernetes")]
            SourceSettings::Kubernetes(k) => {
                let (source, configs) = KubernetesSource::connect(k).await?;
                tasks.push(tokio::spawn(source.clone().run(quiet, max)));
                // Serve only once every type is listed, so proxies never see a partial config.
                source.wait_synced().await;
                (source, configs)
            }
        };
        for e in source.status().errors() {
            warn!(error = %e, "invalid config at start-up; not applied");
        }
        let (cache, events) = SnapshotCache::new();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let pusher = Pusher::new(
            cache.clone(),
            Options {
                root_namespace: settings.root_namespace.clone(),
            },
        );
        tasks.push(tokio::spawn(pusher.run(events, configs)));
        if let Some(l) = status_listener {
            tasks.push(tokio::spawn(crate::status::serve(
                l,
                source.clone(),
                cache.clone(),
            )));
        }
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
