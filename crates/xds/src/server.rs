//! ADS server (state of the world): serves each node the [`Snapshot`] set for it in the
//! [`SnapshotCache`], with per-type versions and nonces, ACK/NACK tracking and Envoy's push order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::snapshot::{Snapshot, type_url};

/// Errors of the ADS server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listener could not be bound or the gRPC server failed.
    #[error("ADS server on {addr} failed: {source}")]
    Transport {
        /// Listen address.
        addr: SocketAddr,
        /// Underlying error.
        source: tonic::transport::Error,
    },
    /// Binding the listen socket failed.
    #[error("cannot listen on {addr} for ADS: {source}")]
    Bind {
        /// Listen address.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// What happens on ADS streams, reported to the owner of the cache (the control plane).
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A stream opened; `node` is the first request's node (id, metadata).
    Connected {
        /// Stream id, unique per process.
        stream: u64,
        /// The node as sent by the proxy.
        node: Box<Node>,
    },
    /// A stream closed.
    Disconnected {
        /// Stream id.
        stream: u64,
        /// Node id.
        node_id: String,
    },
    /// The node applied `version` of `type_url`.
    Ack {
        /// Node id.
        node_id: String,
        /// Type URL.
        type_url: String,
        /// Version acknowledged.
        version: String,
    },
    /// The node rejected `version` of `type_url`; it keeps its previous config.
    Nack {
        /// Node id.
        node_id: String,
        /// Type URL.
        type_url: String,
        /// Version rejected.
        version: String,
        /// The proxy's error detail.
        message: String,
    },
}

/// Per-node ACK/NACK state as last reported by the node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStatus {
    /// Last acknowledged version per type URL.
    pub acked: HashMap<String, String>,
    /// Last rejected (version, error) per type URL, cleared by a later ACK.
    pub nacked: HashMap<String, (String, String)>,
    /// Open streams (a node is forgotten when its last stream closes).
    pub streams: usize,
}

type SnapshotSlot = watch::Sender<Option<Arc<Snapshot>>>;

/// Snapshots per node id, shared between the control plane (writer) and ADS streams (readers).
#[derive(Debug)]
pub struct SnapshotCache {
    slots: Mutex<HashMap<String, SnapshotSlot>>,
    status: Mutex<HashMap<String, NodeStatus>>,
    events: mpsc::UnboundedSender<NodeEvent>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these short, non-reentrant locks cannot leave the maps half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SnapshotCache {
    /// A new cache and the receiver of its [`NodeEvent`]s.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<NodeEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                slots: Mutex::new(HashMap::new()),
                status: Mutex::new(HashMap::new()),
                events,
            }),
            rx,
        )
    }

    /// Sets the snapshot of `node_id`. Streams of that node push the types whose version changed;
    /// setting an equal snapshot pushes nothing.
    pub fn set(&self, node_id: &str, snapshot: Arc<Snapshot>) {
        let mut slots = lock(&self.slots);
        let slot = slots
            .entry(node_id.to_string())
            .or_insert_with(|| watch::channel(None).0);
        slot.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|c| c.same_versions(&snapshot)) {
                false
            } else {
                *cur = Some(snapshot);
                true
            }
        });
    }

    /// The current snapshot of `node_id`.
    pub fn get(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        lock(&self.slots)
            .get(node_id)
            .and_then(|s| s.borrow().clone())
    }

    /// Forgets `node_id`; its open streams are closed (the proxy reconnects).
    pub fn remove(&self, node_id: &str) {
        lock(&self.slots).remove(node_id);
    }

    /// Forgets `node_id` unless a stream still watches it (a reconnect racing the disconnect).
    pub fn remove_if_unused(&self, node_id: &str) {
        let mut slots = lock(&self.slots);
        if slots.get(node_id).is_some_and(|s| s.receiver_count() == 0) {
            slots.remove(node_id);
        }
    }

    /// The ACK/NACK state of every node seen, sorted by node id.
    pub fn statuses(&self) -> Vec<(String, NodeStatus)> {
        let mut v: Vec<_> = lock(&self.status)
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The ACK/NACK state of `node_id`.
    pub fn status(&self, node_id: &str) -> Option<NodeStatus> {
        lock(&self.status).get(node_id).cloned()
    }

    pub(crate) fn watch(&self, node_id: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        lock(&self.slots)
            .entry(node_id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    pub(crate) fn emit(&self, ev: NodeEvent) {
        {
            let mut st = lock(&self.status);
            match &ev {
                NodeEvent::Connected { node, .. } => {
                    st.entry(node.id.clone()).or_default().streams += 1;
                }
                NodeEvent::Disconnected { node_id, .. } => {
                    // Forget nodes without streams, so churn does not grow the map.
                    if let Some(s) = st.get_mut(node_id) {
                        s.streams = s.streams.saturating_sub(1);
                        if s.streams == 0 {
                            st.remove(node_id);
                        }
                    }
                }
                NodeEvent::Ack {
                    node_id,
                    type_url,
                    version,
                } => {
                    let s = st.entry(node_id.clone()).or_default();
                    s.acked.insert(type_url.clone(), version.clone());
                    s.nacked.remove(type_url);
                }
                NodeEvent::Nack {
                    node_id,
                    type_url,
                    version,
                    message,
                } => {
                    let s = st.entry(node_id.clone()).or_default();
                    s.nacked
                        .insert(type_url.clone(), (version.clone(), message.clone()));
                }
            }
        }
        // The receiver may be gone (e.g. a test that does not watch events); that is fine.
        let _ = self.events.send(ev);
    }
}

/// The ADS gRPC service over a [`SnapshotCache`].
#[derive(Debug, Clone)]
pub struct AdsServer {
    cache: Arc<SnapshotCache>,
}

pub(crate) static NONCE: AtomicU64 = AtomicU64::new(1);
pub(crate) static STREAM_ID: AtomicU64 = AtomicU64::new(1);

impl AdsServer {
    /// A server over `cache`.
    pub fn new(cache: Arc<SnapshotCache>) -> Self {
        Self { cache }
    }

    /// The tonic service, to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// Serves ADS on an already bound listener until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        info!(%addr, "ADS server listening");
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|source| ServerError::Transport { addr, source })
    }
}

/// Bind `addr` (e.g. `127.0.0.1:15010`, port 0 for tests).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let cache = self.cache.clone();
        tokio::spawn(async move {
            let mut stream = AdsStream {
                cache,
                tx,
                node_id: String::new(),
                subs: HashMap::new(),
            };
            if let Err(status) = stream.run(inbound).await {
                debug!(node = %stream.node_id, %status, "ADS stream ended with error");
                let _ = stream.tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let mut stream = crate::delta::DeltaStream::new(self.cache.clone(), tx);
        tokio::spawn(async move {
            if let Err(status) = stream.run(inbound).await {
                debug!(node = %stream.node_id, %status, "delta ADS stream ended with error");
                let _ = stream.tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Debug, Default)]
struct Subscription {
    /// Sorted resource names; empty = wildcard for LDS/CDS.
    names: Vec<String>,
    /// Version and nonce of the last response sent.
    sent_version: Option<String>,
    nonce: String,
    /// Respond even if the version did not change (new subscription or changed names).
    force: bool,
}

struct AdsStream {
    cache: Arc<SnapshotCache>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    node_id: String,
    subs: HashMap<String, Subscription>,
}

impl AdsStream {
    async fn run(&mut self, mut inbound: Streaming<DiscoveryRequest>) -> Result<(), Status> {
        let Some(first) = inbound.message().await? else {
            return Ok(());
        };
        let node = first.node.clone().ok_or_else(|| {
            Status::invalid_argument(
                "the first DiscoveryRequest on an ADS stream must carry a node",
            )
        })?;
        self.node_id = node.id.clone();
        let stream_id = STREAM_ID.fetch_add(1, Ordering::Relaxed);
        debug!(node = %self.node_id, stream = stream_id, "ADS stream opened");
        self.cache.emit(NodeEvent::Connected {
            stream: stream_id,
            node: Box::new(node),
        });
        let mut snap_rx = self.cache.watch(&self.node_id);
        self.on_request(first);
        let result = loop {
            let snap = snap_rx.borrow_and_update().clone();
            if let Some(snap) = snap
                && let Err(status) = self.flush(&snap).await
            {
                break Err(status);
            }
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.on_request(req),
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status),
                },
                changed = snap_rx.changed() => {
                    if changed.is_err() {
                        // The node was removed from the cache: close the stream so it reconnects.
                        break Err(Status::unavailable("node removed from the control plane"));
                    }
                }
            }
        };
        debug!(node = %self.node_id, stream = stream_id, "ADS stream closed");
        // Release our view of the slot first, so the owner may drop an unused slot on this event.
        drop(snap_rx);
        self.cache.emit(NodeEvent::Disconnected {
            stream: stream_id,
            node_id: self.node_id.clone(),
        });
        result
    }

    fn on_request(&mut self, req: DiscoveryRequest) {
        let sub = self.subs.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce != sub.nonce {
            debug!(node = %self.node_id, type_url = %req.type_url, nonce = %req.response_nonce,
                "ignoring request with a stale nonce");
            return;
        }
        let mut names = req.resource_names;
        names.sort();
        names.dedup();
        if let Some(err) = req.error_detail {
            let rejected = sub.sent_version.clone().unwrap_or_default();
            warn!(node = %self.node_id, type_url = %req.type_url, rejected_version = %rejected,
                kept_version = %req.version_info, error = %err.message,
                "proxy rejected config (NACK); it keeps its previous config");
            self.cache.emit(NodeEvent::Nack {
                node_id: self.node_id.clone(),
                type_url: req.type_url.clone(),
                version: rejected,
                message: err.message,
            });
        } else if !req.response_nonce.is_empty() {
            self.cache.emit(NodeEvent::Ack {
                node_id: self.node_id.clone(),
                type_url: req.type_url.clone(),
                version: req.version_info.clone(),
            });
        }
        if req.response_nonce.is_empty() || names != sub.names {
            sub.force = true;
        }
        sub.names = names;
    }

    /// Sends, in Envoy's push order, every subscribed type whose version changed.
    async fn flush(&mut self, snap: &Snapshot) -> Result<(), Status> {
        let mut order: Vec<String> = type_url::PUSH_ORDER.iter().map(|s| s.to_string()).collect();
        let mut others: Vec<String> = self
            .subs
            .keys()
            .filter(|t| !type_url::PUSH_ORDER.contains(&t.as_str()))
            .cloned()
            .collect();
        others.sort();
        order.extend(others);
        for t in order {
            let Some(sub) = self.subs.get_mut(&t) else {
                continue;
            };
            let Some(res) = snap.get(&t) else { continue };
            if !sub.force && sub.sent_version.as_deref() == Some(res.version()) {
                continue;
            }
            let resources = if sub.names.is_empty() {
                if type_url::is_wildcard_type(&t) {
                    res.items().values().cloned().collect()
                } else {
                    Vec::new()
                }
            } else {
                sub.names
                    .iter()
                    .filter_map(|n| res.get(n).cloned())
                    .collect()
            };
            let nonce = NONCE.fetch_add(1, Ordering::Relaxed).to_string();
            sub.force = false;
            sub.sent_version = Some(res.version().to_string());
            sub.nonce = nonce.clone();
            debug!(node = %self.node_id, type_url = %t, version = %res.version(),
                resources = resources.len(), "push");
            let resp = DiscoveryResponse {
                version_info: res.version().to_string(),
                resources,
                type_url: t.clone(),
                nonce,
                ..Default::default()
            };
            if self.tx.send(Ok(resp)).await.is_err() {
                return Err(Status::cancelled("client went away"));
            }
        }
        Ok(())
    }
}
