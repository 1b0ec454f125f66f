//! Dynamic configuration over ADS (`dynamic_resources.ads_config`): subscribes to CDS and LDS
//! (wildcard), then to the EDS, RDS and ECDS names they reference, and turns the resources it
//! holds into a complete static bootstrap (routes, endpoints and `config_discovery` filter configs
//! inlined), built by the same [`crate::config::build`] as a file. A built config is swapped in
//! atomically: new streams use it, in-flight streams finish on the old one; unchanged Wasm
//! plugins keep their VMs. An update that does not build is NACKed with the reason and the last
//! good config keeps serving. Listeners wait for their RDS and ECDS resources (warming) before
//! the proxy starts serving.
//!
//! Listeners added or removed by a later LDS update are bound or closed live, and a listener
//! whose address changed is rebound (see [`RunningProxy::update`]); a bind failure NACKs the
//! update. ADS runs over TCP or a Unix socket (`pipe`).

mod assemble;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Node, address, grpc_service};
use futures::StreamExt;
use prost::Message;
use wasmesh_xds::client::{AdsClient, Subscription, Update};
use wasmesh_xds::type_url;

use crate::config::{BuildOptions, ConfigError};
use crate::pb::bootstrap::Bootstrap;
use crate::server::{ProxyOptions, RunningProxy, StartError};

pub use assemble::Resources;

/// What the xDS-driven proxy reports once it serves: bound listeners and the admin address.
pub type Started = Result<
    (
        Vec<(String, std::net::SocketAddr)>,
        Option<std::net::SocketAddr>,
    ),
    String,
>;

/// Why the xDS client cannot run.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The bootstrap's ADS settings are unusable.
    #[error("dynamic_resources: {0}")]
    Config(String),
    /// Starting the proxy failed.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Where the ADS server is: a TCP `http://host:port` URI, or a Unix socket (`pipe`, as in the
/// bootstraps istio-agent writes for Envoy: `./etc/istio/proxy/XDS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdsTarget {
    /// `http://host:port`.
    Tcp(String),
    /// A Unix socket path.
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for AdsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdsTarget::Tcp(u) => f.write_str(u),
            AdsTarget::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The ADS server address from `dynamic_resources.ads_config` → its static cluster's endpoint.
pub fn ads_address(b: &Bootstrap) -> Result<AdsTarget, XdsError> {
    let ads = b
        .dynamic_resources
        .as_ref()
        .and_then(|d| d.ads_config.as_ref())
        .ok_or_else(|| XdsError::Config("ads_config is required (only ADS is supported)".into()))?;
    let cluster_name = ads
        .grpc_services
        .first()
        .and_then(|g| match &g.target_specifier {
            Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) => Some(e.cluster_name.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            XdsError::Config(
                "ads_config.grpc_services[0].envoy_grpc.cluster_name is required".into(),
            )
        })?;
    let cluster = b
        .static_resources
        .as_ref()
        .and_then(|s| s.clusters.iter().find(|c| c.name == cluster_name))
        .ok_or_else(|| {
            XdsError::Config(format!(
                "ADS cluster {cluster_name:?} is not a static cluster"
            ))
        })?;
    let addr = cluster
        .load_assignment
        .as_ref()
        .and_then(|la| la.endpoints.first())
        .and_then(|e| e.lb_endpoints.first())
        .and_then(|e| match &e.host_identifier {
            Some(crate::pb::endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                ep.address.clone()
            }
            _ => None,
        })
        .and_then(|a| a.address)
        .ok_or_else(|| XdsError::Config(format!("ADS cluster {cluster_name:?} has no endpoint")))?;
    match addr {
        address::Address::SocketAddress(sa) => {
            let port = match sa.port_specifier {
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                _ => return Err(XdsError::Config(format!("ADS cluster {cluster_name:?}: port_value required"))),
            };
            Ok(AdsTarget::Tcp(format!("http://{}:{port}", sa.address)))
        }
        address::Address::Pipe(p) => Ok(AdsTarget::Unix(std::path::PathBuf::from(p.path))),
        _ => Err(XdsError::Config(format!(
            "ADS cluster {cluster_name:?}: only socket_address and pipe endpoints are supported"
        ))),
    }
}

/// A lazily connecting gRPC channel to the ADS server (TCP or Unix socket).
fn channel(target: &AdsTarget) -> Result<tonic::transport::Channel, XdsError> {
    match target {
        AdsTarget::Tcp(uri) => Ok(tonic::transport::Endpoint::from_shared(uri.clone())
            .map_err(|e| XdsError::Config(format!("bad ADS address {uri}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy()),
        AdsTarget::Unix(path) => {
            let path = path.clone();
            // The URI is required by tonic but unused: the connector dials the socket.
            let endpoint = tonic::transport::Endpoint::from_static("http://xds.local")
                .connect_timeout(Duration::from_secs(2));
            Ok(
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                })),
            )
        }
    }
}

/// Removes the bootstrap's Unix-socket clusters: in istio-agent's layout they serve only the
/// xDS client (`xds-grpc`) and SDS (`sds-grpc`); the data plane has no pipe endpoints, so they
/// are not part of the served config.
pub fn strip_ads_clusters(b: &mut Bootstrap) {
    if let Some(sr) = b.static_resources.as_mut() {
        sr.clusters.retain(|c| !has_pipe_endpoint(c));
    }
}

fn has_pipe_endpoint(c: &envoy_types::pb::envoy::config::cluster::v3::Cluster) -> bool {
    c.load_assignment.iter().flat_map(|la| &la.endpoints).flat_map(|e| &e.lb_endpoints).any(|e| {
        matches!(
            &e.host_identifier,
            Some(crate::pb::endpoint::lb_endpoint::HostIdentifier::Endpoint(ep))
                if matches!(ep.address.as_ref().and_then(|a| a.address.as_ref()), Some(address::Address::Pipe(_)))
        )
    })
}

fn node_proto(b: &Bootstrap) -> Node {
    b.node.clone().unwrap_or_default()
}

struct Subs {
    lds: Subscription,
    cds: Subscription,
    rds: Subscription,
    eds: Subscription,
    ecds: Subscription,
}

/// How long xDS must be quiet before the descriptor pool is released.
const DESCRIPTORS_IDLE: Duration = Duration::from_secs(10);

/// Runs the proxy from ADS until `stop` resolves. Returns once the ADS client ends.
pub async fn run(
    base: Bootstrap,
    opts: ProxyOptions,
    started: tokio::sync::oneshot::Sender<Started>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), XdsError> {
    let uri = ads_address(&base)?;
    let channel = channel(&uri)?;
    let original = base.clone();
    let mut base = base;
    strip_ads_clusters(&mut base);
    let client = AdsClient::new(channel, node_proto(&base));
    tracing::info!(ads = %uri, node = %base.node.as_ref().map(|n| n.id.as_str()).unwrap_or(""), "xDS client started");
    let store = crate::stats::Store::new();
    let quit = Arc::new(tokio::sync::Notify::new());
    let early = EarlyAdmin::start(&base, &store, &quit, &opts)?;
    let subs = Subs {
        cds: client.subscribe(type_url::CLUSTER, vec![]),
        lds: client.subscribe(type_url::LISTENER, vec![]),
        rds: client.subscribe(type_url::ROUTE, vec![]),
        eds: client.subscribe(type_url::ENDPOINT, vec![]),
        ecds: client.subscribe(type_url::EXTENSION_CONFIG, vec![]),
    };
    let mut driver = Driver {
        base,
        original,
        opts,
        res: Resources::default(),
        running: None,
        store,
        started: Some(started),
        early,
        quit: Arc::clone(&quit),
    };
    let mut subs = subs;
    tokio::pin!(stop);
    // The Envoy API descriptors (~50 MiB decoded) are kept while updates arrive and released
    // once xDS has been quiet for a while.
    let mut release_at: Option<tokio::time::Instant> = None;
    loop {
        let (kind, update) = tokio::select! {
            _ = &mut stop => break,
            _ = quit.notified() => {
                tracing::info!("/quitquitquit: draining");
                break;
            }
            _ = tokio::time::sleep_until(release_at.unwrap_or_else(tokio::time::Instant::now)), if release_at.is_some() => {
                release_at = None;
                wasmesh_xds::release_descriptor_pool();
                continue;
            }
            u = subs.cds.next() => (type_url::CLUSTER, u),
            u = subs.lds.next() => (type_url::LISTENER, u),
            u = subs.rds.next() => (type_url::ROUTE, u),
            u = subs.eds.next() => (type_url::ENDPOINT, u),
            u = subs.ecds.next() => (type_url::EXTENSION_CONFIG, u),
        };
        let Some(update) = update else { break };
        driver.apply(kind, update, &subs).await;
        release_at = Some(tokio::time::Instant::now() + DESCRIPTORS_IDLE);
    }
    if let Some(r) = driver.running.take() {
        r.shutdown();
    }
    Ok(())
}

struct Driver {
    base: Bootstrap,
    /// The bootstrap as given (`/config_dump` shows it, ADS clusters included).
    original: Bootstrap,
    opts: ProxyOptions,
    res: Resources,
    running: Option<RunningProxy>,
    store: crate::stats::Store,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
    /// The admin API served while waiting for the first config.
    early: EarlyAdmin,
    quit: Arc<tokio::sync::Notify>,
}

/// What `/config_dump` shows of a proxy configured over xDS: the bootstrap as given and the
/// resources with their versions (Envoy's `dynamic_*` sections).
#[derive(Debug, Clone)]
pub struct XdsDump {
    /// The bootstrap file.
    pub bootstrap: Bootstrap,
    /// The resources the config was assembled from.
    pub resources: Resources,
}

/// The [`XdsDump`] of a live config, refreshed when an update only changes versions.
#[derive(Debug)]
pub struct DynamicDump(std::sync::RwLock<Arc<XdsDump>>);

impl DynamicDump {
    fn new(d: XdsDump) -> Self {
        Self(std::sync::RwLock::new(Arc::new(d)))
    }

    fn set(&self, d: XdsDump) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(d);
    }

    /// The current dump.
    pub fn get(&self) -> Arc<XdsDump> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The admin API before the first config, as Envoy serves it while initializing: `/ready`
/// answers 503 `PRE_INITIALIZING`, `/stats` has `server.state: 2` and the xDS update counters
/// (what istio-agent's readiness probe reads).
struct EarlyAdmin {
    sock: Option<std::net::TcpListener>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EarlyAdmin {
    fn start(
        base: &Bootstrap,
        store: &crate::stats::Store,
        quit: &Arc<tokio::sync::Notify>,
        opts: &ProxyOptions,
    ) -> Result<Self, XdsError> {
        let server = crate::stats::ServerStats::new(store);
        server.set_state(crate::stats::ServerState::PreInitializing);
        server
            .concurrency
            .set(i64::try_from(opts.concurrency.max(1)).unwrap_or(i64::MAX));
        let config = crate::config::ProxyConfig::pre_init(base)
            .map_err(|e| XdsError::Start(StartError::Config(e)))?;
        let Some(addr) = config.admin else {
            return Ok(Self {
                sock: None,
                task: None,
            });
        };
        let sock = crate::server::bind_admin(addr)?;
        let bound = crate::server::admin_bound(&sock, opts)?;
        let listener = sock
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|source| StartError::Bind {
                what: "admin".into(),
                addr: bound,
                source,
            })?;
        let state = crate::admin::AdminState {
            config: Arc::new(arc_swap::ArcSwap::from_pointee(config)),
            store: store.clone(),
            listeners: Arc::default(),
            quit: Arc::clone(quit),
            server,
            workers: Arc::default(),
            drain_time: opts.drain_timeout,
        };
        Ok(Self {
            sock: Some(sock),
            task: Some(tokio::spawn(crate::admin::serve(listener, state))),
        })
    }

    /// A handle on the admin socket for the proxy that takes over.
    fn socket(&self) -> Result<Option<std::net::TcpListener>, String> {
        self.sock
            .as_ref()
            .map(std::net::TcpListener::try_clone)
            .transpose()
            .map_err(|e| format!("admin socket: {e}"))
    }

    /// The proxy serves the admin API now.
    fn stop(&mut self) {
        self.sock = None;
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Driver {
    async fn apply(&mut self, kind: &str, update: Update, subs: &Subs) {
        let server = crate::stats::ServerStats::new(&self.store);
        let counters = match kind {
            type_url::CLUSTER => Some(&server.cds),
            type_url::LISTENER => Some(&server.lds),
            _ => None,
        };
        if let Some(c) = counters {
            c.attempt.inc();
        }
        let count = |ok: bool| {
            if let Some(c) = counters {
                if ok { &c.success } else { &c.rejected }.inc();
            }
        };
        let previous = self.res.clone();
        if let Err(e) = self.res.replace(kind, &update.resources) {
            tracing::warn!(type_url = kind, version = %update.version, error = %e, "xDS update rejected (NACK)");
            count(false);
            update.reply.nack(e);
            return;
        }
        // Follow references: EDS for EDS clusters, RDS for listeners, ECDS for filters.
        let wanted = self.res.wanted();
        subs.eds.set_names(wanted.endpoints);
        subs.rds.set_names(wanted.routes);
        subs.ecds.set_names(wanted.extensions);
        match self.rebuild().await {
            Ok(true) => {
                tracing::info!(type_url = kind, version = %update.version, "xDS config applied");
                count(true);
                self.res.versions.insert(
                    kind.to_string(),
                    (update.version.clone(), std::time::SystemTime::now()),
                );
                self.refresh_dump();
                update.reply.ack();
            }
            Ok(false) => {
                tracing::debug!(type_url = kind, version = %update.version, "xDS config warming (waiting for referenced resources)");
                count(true);
                self.res.versions.insert(
                    kind.to_string(),
                    (update.version.clone(), std::time::SystemTime::now()),
                );
                update.reply.ack();
            }
            Err(e) => {
                tracing::warn!(type_url = kind, version = %update.version, error = %e, "xDS update rejected (NACK); keeping the last good config");
                self.res = previous;
                count(false);
                update.reply.nack(e);
            }
        }
    }

    /// Points the live config's `/config_dump` at the resources as they are now (their
    /// versions are recorded after the config that uses them is swapped in).
    fn refresh_dump(&self) {
        let Some(running) = &self.running else { return };
        let live = running.config().load_full();
        if let Some(d) = &live.dynamic {
            d.set(XdsDump {
                bootstrap: self.original.clone(),
                resources: self.res.clone(),
            });
        }
    }

    /// Builds and swaps in the config; `Ok(false)` while resources are missing.
    async fn rebuild(&mut self) -> Result<bool, String> {
        let Some(bootstrap) = self.res.assemble(&self.base) else {
            return Ok(false);
        };
        let opts = BuildOptions {
            concurrency: self.opts.concurrency.max(1),
            store: self.store.clone(),
            ..BuildOptions::default()
        };
        let mut config =
            crate::config::build(&bootstrap, &opts).map_err(|e: ConfigError| e.to_string())?;
        config.dynamic = Some(Arc::new(DynamicDump::new(XdsDump {
            bootstrap: self.original.clone(),
            resources: self.res.clone(),
        })));
        for c in config.clusters.values() {
            c.resolve().await;
        }
        match &mut self.running {
            None => {
                let admin = self.early.socket()?;
                let running = crate::server::start_prebound(
                    config,
                    self.store.clone(),
                    &self.opts,
                    admin,
                    Arc::clone(&self.quit),
                )
                .map_err(|e| e.to_string())?;
                self.early.stop();
                if let Some(tx) = self.started.take() {
                    let _ = tx.send(Ok((running.listener_addrs(), running.admin_addr())));
                }
                self.running = Some(running);
            }
            Some(running) => running
                .update(config)
                .map_err(|e| format!("Error adding/updating listener(s): {e}"))?,
        }
        Ok(true)
    }
}

/// Decodes an `Any` of the expected message type.
pub(crate) fn decode<M: Message + Default>(any: &crate::pb::Any) -> Result<M, String> {
    M::decode(&*any.value).map_err(|e| format!("cannot decode {}: {e}", any.type_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(endpoint: &str) -> Bootstrap {
        let yaml = format!(
            r#"
dynamic_resources:
  ads_config:
    api_type: GRPC
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {endpoint}}}}}]}}]
"#
        );
        crate::config::bootstrap::parse(&yaml).expect("bootstrap")
    }

    #[test]
    fn ads_target_from_tcp_and_istio_pipe_bootstraps() {
        assert_eq!(
            ads_address(&boot(
                "{socket_address: {address: 127.0.0.1, port_value: 15010}}"
            ))
            .ok(),
            Some(AdsTarget::Tcp("http://127.0.0.1:15010".into()))
        );
        assert_eq!(
            ads_address(&boot("{pipe: {path: ./etc/istio/proxy/XDS}}")).ok(),
            Some(AdsTarget::Unix("./etc/istio/proxy/XDS".into()))
        );
        let no_ads = crate::config::bootstrap::parse("node: {id: x}").expect("bootstrap");
        assert!(
            matches!(ads_address(&no_ads), Err(XdsError::Config(m)) if m.contains("ads_config"))
        );
    }
}
